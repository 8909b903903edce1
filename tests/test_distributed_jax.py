"""axis_name= over a JAX mesh of 4 host devices: the shard_map'ed loss and its jax.grad against one process.

Each device's anchors go through the fused kernel (`backends/_jax_fused.segment`) for the configurations it
serves, else through the array-API blocks of `distributed.py`; each case records which one ran.

JAX fixes its device count when it starts, so one subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=4)
computes every case of the table under jax.jit and returns the numbers; the tests hold them
to the single-process loss on NumPy (the analytic gradient, return_grad=True) at 1e-10 in float64.
Each device holds 2 of the 8 samples, so no device has its anchors' positives locally.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hcl_array as hcl
from hcl_array.training import TrainConfig, train
from tests.distributed_cases import CASES, error_messages, global_batch

DEVICES = 4
#: the torch tests run every case; here each costs an XLA compilation. Through the fused kernel
#: (`_jax_fused.segment`), every loss it serves and its options: views and rows, several row blocks,
#: weights with a gradient, the supcon form, anchor_mean, include_self, negative_reduction="mean", k,
#: sampled negatives from a seed and the paper preset; kernel="fused" asks for the kernel (it raised across
#: devices, as if JAX had none there).
KERNEL_CASES = [
    "ntxent_tile1",
    "hucl_undetached",
    "hscl_anchor_mean",
    "supcon",
    "sampled_rng",
    "paper_preset",
    "self_all_mean",
    "scl",
    "hscl_anchor_mean:fused",
]
#: Through the array-API blocks of `distributed.py`: a hardening the kernel does not serve, and a kernel
#: case with kernel="array_api" (the debiased form runs on torch)
ARRAY_API_CASES = ["hscl_topk", "ntxent_tile1:array_api"]
JAX_CASES = KERNEL_CASES + ARRAY_API_CASES


def _mapped(mesh: Any, loss: Any, layout: str) -> Any:
    """loss on each device's shard, over the mesh axis "batch", returning the replicated global value."""
    import jax
    from jax.sharding import PartitionSpec

    shard = PartitionSpec("batch")
    in_specs = shard if layout == "views" else (shard, shard)
    return jax.shard_map(loss, mesh=mesh, in_specs=in_specs, out_specs=PartitionSpec())


def _case_options(name: str) -> tuple[str, dict[str, Any], str]:
    """CASES[name], with kernel="array_api" ("fused") for a name ending in ":array_api" (":fused")."""
    case, _, kernel = name.partition(":")
    loss_name, options, layout = CASES[case]
    return loss_name, {**options, "kernel": kernel} if kernel else options, layout


def _kernel_segments() -> list[int]:
    """A counter of the fused kernel's segments traced from now on (each device's anchors, per view)."""
    from hcl_array.backends import _jax_fused

    traced = [0]
    segment = _jax_fused.segment

    def counting(*args: Any, **kwargs: Any) -> Any:
        traced[0] += 1
        return segment(*args, **kwargs)

    _jax_fused.segment = counting
    return traced


def _case(mesh: Any, name: str, traced: list[int]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    loss_name, options, layout = _case_options(name)
    z, ids = global_batch(layout)
    loss = getattr(hcl, loss_name)
    mapped = _mapped(mesh, lambda *arrays: loss(*arrays, axis_name="batch", **options), layout)
    args = (jnp.asarray(z),) if ids is None else (jnp.asarray(z), jnp.asarray(ids))
    before = traced[0]
    value, grad = jax.jit(jax.value_and_grad(mapped))(*args)
    return {"value": float(value), "grad": np.asarray(grad).tolist(), "kernel": traced[0] > before}


def _uniforms_case(mesh: Any, traced: list[int]) -> dict[str, Any]:
    """Sampled negatives from given global uniforms, replicated on every device."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec

    z, ids = global_batch("rows")
    uniforms = jnp.asarray(np.random.default_rng(2).random((z.shape[0], 6)))
    shard = PartitionSpec("batch")

    def loss(rows: Any, labels: Any, draws: Any) -> Any:
        return hcl.hscl(rows, labels, negatives="sampled", k=6, uniforms=draws, axis_name="batch")

    mapped = jax.shard_map(loss, mesh=mesh, in_specs=(shard, shard, PartitionSpec()), out_specs=PartitionSpec())
    before = traced[0]
    value, grad = jax.value_and_grad(mapped)(jnp.asarray(z), jnp.asarray(ids), uniforms)
    return {"value": float(value), "grad": np.asarray(grad).tolist(), "kernel": traced[0] > before}


def _errors(mesh: Any) -> dict[str, str]:
    import jax.numpy as jnp

    z = jnp.asarray(global_batch("views")[0])
    uses = {
        "outside": lambda: hcl.ntxent(z, axis_name="batch"),
        "unknown_axis": lambda: _mapped(mesh, lambda v: hcl.ntxent(v, axis_name="other"), "views")(z),
        "group": lambda: hcl.ntxent(z, group=object()),
        "reduction": lambda: _mapped(mesh, lambda v: hcl.ntxent(v, axis_name="batch", reduction="none"), "views")(z),
    }
    return error_messages(uses)


#: views, instance ids, augmentations, sampled negatives, plain SGD (a gradient off by the device count would show)
TRAIN = TrainConfig(
    loss="hucl",
    encoder="mlp",
    hidden=6,
    classes=3,
    per_class=10,
    input_dim=4,
    views=2,
    negatives="sampled",
    k=5,
    batch_size=8,
    epochs=2,
    optimizer="sgd",
    lr=0.5,
    backend="jax",
    dtype="float64",
    seed=3,
)


def _train_on_devices() -> dict[str, Any]:
    """One run on one device and one with every batch split over the mesh."""
    one, spread = train(TRAIN), train(TRAIN, devices=DEVICES)
    return {
        name: {
            "history": {k: v.tolist() for k, v in run.history.items()},
            "params": {k: v.tolist() for k, v in run.checkpoint.params.items()},
        }
        for name, run in (("one", one), ("spread", spread))
    }


def main(path: str) -> None:
    """Run in the subprocess: every case on a mesh of DEVICES host devices, written to `path` as JSON."""
    import jax

    jax.config.update("jax_enable_x64", True)
    mesh = jax.sharding.Mesh(jax.devices(), ("batch",))
    assert len(jax.devices()) == DEVICES
    traced = _kernel_segments()
    out = {name: _case(mesh, name, traced) for name in JAX_CASES}
    out["uniforms"] = _uniforms_case(mesh, traced)
    out["errors"] = _errors(mesh)
    out["train"] = _train_on_devices()
    Path(path).write_text(json.dumps(out))


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("jax")
    path = tmp_path_factory.mktemp("jax") / "results.json"
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}", "JAX_PLATFORMS": "cpu"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-m", "tests.test_distributed_jax", str(path)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(path.read_text())


def single_process(loss_name: str, options: dict[str, Any], layout: str) -> tuple[float, np.ndarray]:
    """The loss of the whole batch in one NumPy process on the dense path (the array-API code, which
    tests/test_paths.py holds to the naive float64 loops) and its analytic gradient: an independent
    reference for the kernel the devices run."""
    z, ids = global_batch(layout)
    dense = {**options, "kernel": "array_api", "tile": None}
    value, grad = getattr(hcl, loss_name)(z, ids, return_grad=True, **dense)
    return float(value), grad


@pytest.mark.parametrize("name", JAX_CASES)
def test_shard_mapped_value_and_grad_equal_one_device(mapped: dict[str, Any], name: str) -> None:
    """Path: distributed, each device's anchors through the fused kernel (KERNEL_CASES) or the array-API blocks."""
    assert mapped[name]["kernel"] == (name in KERNEL_CASES)
    loss_name, options, layout = _case_options(name)
    expected_value, expected_grad = single_process(
        loss_name, {k: v for k, v in options.items() if k != "kernel"}, layout
    )
    assert np.abs(expected_grad).max() > 0
    assert mapped[name]["value"] == pytest.approx(expected_value, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(np.array(mapped[name]["grad"]), expected_grad, atol=1e-10)


def test_given_uniforms_draw_what_one_process_draws(mapped: dict[str, Any]) -> None:
    """Path: distributed through the fused kernel, the uniforms given and replicated, against NumPy's dense path."""
    assert mapped["uniforms"]["kernel"]
    z, ids = global_batch("rows")
    uniforms = np.random.default_rng(2).random((z.shape[0], 6))
    value, grad = hcl.hscl(z, ids, negatives="sampled", k=6, uniforms=uniforms, return_grad=True, kernel="array_api")
    assert mapped["uniforms"]["value"] == pytest.approx(float(value), rel=1e-10)
    np.testing.assert_allclose(np.array(mapped["uniforms"]["grad"]), grad, atol=1e-10)


@pytest.mark.parametrize(
    ("use", "message"),
    [
        ("outside", "axis_name='batch' is not a mapped axis here: call the loss inside jax.shard_map"),
        ("unknown_axis", "axis_name='other' is not a mapped axis here"),
        ("group", "group= needs torch arrays, got jax"),
        ("reduction", "reduction='none'"),
    ],
)
def test_wrong_use_names_the_argument(mapped: dict[str, Any], use: str, message: str) -> None:
    assert message in mapped["errors"][use]


def test_training_on_four_devices_follows_the_one_device_trajectory(mapped: dict[str, Any]) -> None:
    one, spread = mapped["train"]["one"], mapped["train"]["spread"]
    for key, values in one["history"].items():
        np.testing.assert_allclose(spread["history"][key], values, rtol=1e-6, atol=1e-9, err_msg=key)
    for name, value in one["params"].items():
        np.testing.assert_allclose(spread["params"][name], value, rtol=1e-6, atol=1e-9, err_msg=name)
    assert one["history"]["loss"][0] != one["history"]["loss"][1]  # the parameters moved


if __name__ == "__main__":
    main(sys.argv[1])
