"""The image input of `hcl train`: what --augment auto picks, views built on the device, evaluation inputs,
exact resume with random views, and the one-line errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hcl_array import augmentations as aug
from hcl_array import data, training
from hcl_array.checkpoint import load_checkpoint
from hcl_array.image_pipeline import resolve_augment

from .fabricate import write_binary_cifar

pytestmark = pytest.mark.vision


@pytest.fixture
def cifar10(tmp_path) -> training.TrainConfig:
    write_binary_cifar(tmp_path / "data", 10, per_batch=8)  # 40 training images, 8 test images
    return training.TrainConfig(
        data="cifar10", data_dir=str(tmp_path / "data"), encoder="linear", batch_size=16, epochs=2, loss="scl"
    )


@pytest.mark.parametrize(
    "data_name, loss, views, images, expected",
    [
        ("cifar100", "scl", 1, True, "none"),  # the released CIFAR-100 runs: test_transform in SCL and UCL
        ("cifar100", "hucl", 1, True, "none"),
        ("cifar10", "ucl", 1, True, "simclr"),  # the released UCL's CIFAR-10 and STL-10: train_transform
        ("stl10", "hucl", 1, True, "simclr"),
        ("cifar10", "hscl", 1, True, "none"),  # the released SCL never augments
        ("folder", "ucl", 1, True, "none"),
        ("cifar100", "ntxent", 2, True, "shift"),  # two or more views: as before
        ("synthetic", "hucl", 2, False, "noise"),
        ("synthetic", "hscl", 1, False, "none"),
    ],
)
def test_auto_is_the_released_run_for_one_view(data_name, loss, views, images, expected) -> None:
    assert resolve_augment("auto", data_name, loss, views, images) == expected
    assert resolve_augment("shift", data_name, loss, views, images) == "shift"


def test_views_are_built_from_bytes_on_the_device_as_the_host_shift_and_normalize(cifar10) -> None:
    config = dataclasses.replace(cifar10, views=2, loss="ntxent")
    run = training._setup(config)
    assert run.images.train.dtype == np.uint8 and run.augment == "shift"
    indices = np.arange(3, 19)
    x, ids, _, _ = training._batch_arguments(run, indices, epoch=1, batch_number=2)
    pixels = run.dataset.x_train[indices].astype(np.float32) / np.float32(255)
    rng = np.random.default_rng([config.seed, 1, 2, 1])
    expected = [aug.normalize(data.augment(pixels, rng, "shift", max_shift=4)) for _ in range(2)]
    assert ids is None and x.shape == (16, 2, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x, np.stack(expected, axis=1))


def test_torch_builds_the_same_views_as_numpy(cifar10) -> None:
    torch = pytest.importorskip("torch")
    config = dataclasses.replace(cifar10, augment="simclr", loss="ucl")
    numpy_x = training._batch_arguments(training._setup(config), np.arange(16), epoch=0, batch_number=0)[0]
    run = training._setup(dataclasses.replace(config, backend="torch"))
    torch_x = training._batch_arguments(run, np.arange(16), epoch=0, batch_number=0)[0]
    assert run.images.train.dtype == torch.uint8
    np.testing.assert_allclose(torch_x.numpy(), numpy_x, rtol=0, atol=1e-5)


def test_evaluation_embeds_the_plain_normalized_images(cifar10, tmp_path) -> None:
    config = dataclasses.replace(cifar10, augment="simclr", loss="ucl", dtype="float64")
    result = training.train(config, out=tmp_path / "run.npz")
    saved, dataset = result.checkpoint, training.load_dataset(config)
    for inputs, embeddings in [(dataset.x_train, saved.train_embeddings), (dataset.x_test, saved.test_embeddings)]:
        x = aug.normalize(inputs.astype(np.float64) / 255).reshape(inputs.shape[0], -1)
        z = x @ saved.params["weight"] + saved.params["bias"]
        expected = z / np.maximum(1.0, np.linalg.norm(z, axis=1, keepdims=True))  # the unit-ball clip
        np.testing.assert_allclose(embeddings, expected, rtol=1e-10, atol=1e-12)


def test_a_killed_run_with_random_views_resumes_exactly(cifar10, tmp_path) -> None:
    config = dataclasses.replace(cifar10, augment="simclr", loss="hucl", epochs=3, negatives="sampled", k=8)
    full = training.train(config, out=tmp_path / "full.npz")
    training.train(dataclasses.replace(config, epochs=1), out=tmp_path / "part.npz")
    resumed = training.train(config, resume_from=tmp_path / "part.npz")
    for key, values in full.history.items():
        np.testing.assert_array_equal(resumed.history[key], values, err_msg=key)
    np.testing.assert_array_equal(
        load_checkpoint(tmp_path / "part.npz").params["weight"], full.checkpoint.params["weight"]
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"augment": "sharpen"}, "augment='sharpen' is not one of auto, none, simclr, shift, noise"),
        ({"augment": "none", "views": 2}, "--views 2 with --augment none makes identical views"),
        ({"data": "synthetic", "augment": "simclr"}, "--augment simclr needs image data"),
        ({"image_size": 4}, "image_size must be >= 8"),
    ],
)
def test_bad_image_options_fail_with_one_line(cifar10, changes, message) -> None:
    with pytest.raises(ValueError, match=message) as error:
        training.train(dataclasses.replace(cifar10, **changes))
    assert "\n" not in str(error.value)


def test_old_checkpoints_without_the_new_fields_still_resume(cifar10, tmp_path) -> None:
    """A checkpoint written before --augment and friends existed holds no such keys: they take their defaults."""
    from hcl_array.checkpoint import save_checkpoint

    config = dataclasses.replace(cifar10, epochs=1)
    training.train(config, out=tmp_path / "old.npz")
    old = load_checkpoint(tmp_path / "old.npz")
    for key in ("augment", "image_size", "precision", "weight_decay"):
        del old.config["train_config"][key]
    save_checkpoint(tmp_path / "old.npz", old)
    assert training.train(dataclasses.replace(config, epochs=2), resume_from=tmp_path / "old.npz").checkpoint.epoch == 2
