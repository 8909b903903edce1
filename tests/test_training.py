"""The training loop: the same trajectory on every backend, exact resume, the checkpoint, and the paper in miniature."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hcl_array.checkpoint import load_checkpoint
from hcl_array.training import TrainConfig, significant_directions, train

#: Small enough that a jax compile dominates; big enough that every metric is defined (d = C - 1 = 4).
SMALL = TrainConfig(classes=5, per_class=20, input_dim=8, hidden=16, batch_size=32, epochs=3, lr=1e-2, dtype="float64")


class Interrupted(Exception):
    """Raised from the callback to kill a run after an epoch, as Ctrl-C or a crash would."""


def _trajectory(config: TrainConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    result = train(config)
    return result.history, result.checkpoint.train_embeddings


@pytest.mark.parametrize("loss", ["scl", "hscl"])
def test_cross_backend_trajectories_agree_in_float64(loss: str) -> None:
    """numpy (analytic VJPs), torch (autograd) and jax (grad under jit): same loss and metrics for 3 epochs."""
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    config = dataclasses.replace(SMALL, loss=loss, beta=5.0 if loss == "hscl" else None)
    reference_history, reference_embeddings = _trajectory(config)
    assert reference_history["loss"].shape == (3,)
    assert reference_history["loss"][-1] < reference_history["loss"][0]
    for backend in ("torch", "jax"):
        history, embeddings = _trajectory(dataclasses.replace(config, backend=backend))
        assert history.keys() == reference_history.keys()
        for key, values in reference_history.items():
            np.testing.assert_allclose(history[key], values, rtol=1e-8, atol=1e-8, err_msg=f"{backend}: {key}")
        np.testing.assert_allclose(embeddings, reference_embeddings, rtol=1e-8, atol=1e-8, err_msg=backend)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"loss": "hucl", "views": 2, "negatives": "sampled", "k": 16, "encoder": "linear"},  # random views and draws
        {"encoder": "free", "optimizer": "sgd", "loss": "scl"},
    ],
    ids=["mlp-hscl", "views-sampled", "free-sgd"],
)
def test_a_killed_run_resumes_exactly(tmp_path, changes: dict) -> None:
    config = dataclasses.replace(SMALL, epochs=4, **changes)
    uninterrupted = train(config, out=tmp_path / "full.npz")

    def kill_after_two(report):
        if report.epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(config, out=tmp_path / "killed.npz", callback=kill_after_two)
    assert load_checkpoint(tmp_path / "killed.npz").epoch == 2
    resumed = train(config, resume_from=tmp_path / "killed.npz")
    assert resumed.path == tmp_path / "killed.npz"
    for key, values in uninterrupted.history.items():
        np.testing.assert_array_equal(resumed.history[key], values, err_msg=key)
    full, again = uninterrupted.checkpoint, load_checkpoint(tmp_path / "killed.npz")
    np.testing.assert_array_equal(again.train_embeddings, full.train_embeddings)
    np.testing.assert_array_equal(again.class_means, full.class_means)
    for name, value in full.params.items():
        np.testing.assert_array_equal(again.params[name], value)


def test_checkpoint_holds_everything_the_issue_lists(tmp_path) -> None:
    result = train(dataclasses.replace(SMALL, dtype="float32"), out=tmp_path / "run.npz")
    saved = load_checkpoint(tmp_path / "run.npz")
    classes, dim = 5, 4
    assert saved.epoch == 3
    assert saved.class_means.shape == (3, classes, dim)
    assert saved.train_embeddings.shape == (80, dim) and saved.test_embeddings.shape == (20, dim)
    assert saved.train_labels.shape == (80,) and saved.test_labels.shape == (20,)
    expected_keys = {
        "loss",
        "unit_norm",
        "zero_sum",
        "equal_inner_product",
        "within_class_variation",
        "nc1",
        "nc1_quotient",
        "cdnv",
        "equinorm",
        "equiangularity",
        "etf_distance",
        "rankme",
        "ncc_accuracy",
        "mean_classifier_accuracy",
        "test_mean_classifier_accuracy",
        "significant_directions",
    }
    assert expected_keys <= saved.history.keys()
    assert all(values.shape == (3,) for values in saved.history.values())
    assert saved.config["train_config"] == dataclasses.asdict(dataclasses.replace(SMALL, dtype="float32"))
    assert saved.config["dim"] == dim and saved.config["num_classes"] == classes
    assert {"python", "numpy", "hcl-array"} <= saved.versions.keys()
    assert saved.params["weight1"].dtype == np.float32
    assert {"count", "mu/weight1", "nu/bias2"} <= saved.optimizer_state.keys()
    norms = np.linalg.norm(saved.train_embeddings, axis=1)
    assert norms.max() <= 1 + 1e-6, "saved embeddings are g(z), inside the unit ball"
    np.testing.assert_array_equal(result.checkpoint.train_embeddings, saved.train_embeddings)


def test_resume_refuses_a_different_configuration(tmp_path) -> None:
    train(dataclasses.replace(SMALL, epochs=1), out=tmp_path / "run.npz")
    with pytest.raises(ValueError, match=r"cannot resume with a different configuration \(loss: 'hscl' -> 'scl'"):
        train(dataclasses.replace(SMALL, loss="scl"), resume_from=tmp_path / "run.npz")
    finished = train(dataclasses.replace(SMALL, epochs=1), resume_from=tmp_path / "run.npz")
    assert finished.checkpoint.epoch == 1, "resuming a finished run trains nothing"


def test_free_encoder_has_no_test_embeddings() -> None:
    result = train(dataclasses.replace(SMALL, encoder="free", epochs=1))
    assert result.checkpoint.test_embeddings.shape == (0, 4)
    assert np.isnan(result.history["test_mean_classifier_accuracy"]).all()


def test_other_data_sets_and_losses_run(tmp_path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "points.npz", x=rng.normal(size=(60, 2, 3)), y=np.repeat(np.arange(3), 20))
    npz_run = train(
        TrainConfig(data="npz", data_path=str(tmp_path / "points.npz"), encoder="linear", batch_size=16, epochs=1)
    )
    assert npz_run.checkpoint.train_embeddings.shape[1] == 2
    digits_run = train(TrainConfig(data="digits", encoder="linear", loss="supcon", batch_size=256, epochs=1))
    assert digits_run.checkpoint.train_embeddings.shape[1] == 9 and digits_run.checkpoint.test_embeddings.shape[0] > 300
    for loss in ("ntxent", "debiased_hcl"):
        run = train(dataclasses.replace(SMALL, loss=loss, views=2, epochs=1, beta=None, paper=loss == "ntxent"))
        assert np.isfinite(run.history["loss"]).all()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"beta": -1.0}, "beta must be a finite number >= 0"),
        ({"loss": "scl", "beta": 2.0}, "beta applies to the hardened losses"),
        ({"dtype": "float16"}, "dtype='float16' is not one of float32, float64"),
        ({"loss": "triplet"}, "loss='triplet' is not one of"),
        ({"encoder": "free", "views": 2}, "free rows ignore x"),
        ({"encoder": "resnet18"}, "only with --backend torch"),
        ({"data": "cifar10"}, "needs --data-dir"),
        ({"batch_size": 1000}, "exceeds the 80 training samples"),
    ],
)
def test_bad_configurations_fail_with_one_line(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        train(dataclasses.replace(SMALL, **changes))
    assert "\n" not in str(error.value)


def test_significant_directions_counts_above_the_ratio() -> None:
    assert significant_directions(np.log([1.0, 0.5, 1e-2, 1e-5, 1e-9])) == 3


def test_hard_negatives_avoid_dimensional_collapse_in_miniature() -> None:
    """The paper's Figure in miniature (docs/training.md): C = 100, d = 99, MLP encoder, Adam.

    SCL ends in dimensional collapse (a spectrum cliff after a few directions, large equal-inner-product
    metric); HSCL with beta = 10 keeps many more class-mean directions and is closer to the ETF.
    """
    base = TrainConfig(classes=100, per_class=10, encoder="mlp", batch_size=400, epochs=30, lr=1e-2, dim=99)
    scl_run = train(dataclasses.replace(base, loss="scl"))
    hscl_run = train(dataclasses.replace(base, loss="hscl", beta=10.0))
    scl, hscl = scl_run.history, hscl_run.history
    assert hscl["equal_inner_product"][-1] < 0.75 * scl["equal_inner_product"][-1]
    assert hscl["significant_directions"][-1] >= 2 * scl["significant_directions"][-1]
    assert scl["significant_directions"][-1] < 50, "SCL shows the cliff of dimensional collapse"


def test_sampled_negative_uniforms_stay_below_one_in_float32() -> None:
    """(seed 2, epoch 49, batch 2) of a 512-row batch holds a float64 draw that rounds to 1.0 in float32: the
    draws of the run come in the training dtype, so none reaches 1 and the paper's loss trains on that batch."""
    from hcl_array import training

    key, shape = [2, 49, 2, 2], (512, 256)
    assert np.any(np.random.default_rng(key).random(shape).astype(np.float32) == 1.0)  # the case this test is for
    config = TrainConfig(
        loss="hscl", paper=True, negatives="sampled", seed=2, classes=8, per_class=100, input_dim=8, batch_size=512
    )
    run = training._setup(config)
    indices = np.arange(512, dtype=np.int64)
    x, ids, placed, uniforms = training._batch_arguments(run, indices, epoch=49, batch_number=2)
    assert uniforms.dtype == np.float32 and uniforms.shape == shape
    assert 0 <= uniforms.min() and uniforms.max() < 1
    value = run.objective.value_and_grad(run.params, x, ids, placed, uniforms)[0]
    assert np.isfinite(value) and value > 0
