"""CollapseMonitor against the one-shot collapse_report: chunked updates, reset, the second pass, jax.jit,
2 torch.distributed processes on gloo and 4 JAX host devices under shard_map."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hcl_array import metrics
from hcl_array.monitor import CollapseMonitor, collapse_compute, collapse_init, collapse_update

from .distributed_monitor import NUM_CLASSES, problem

ROOT = Path(__file__).resolve().parent.parent
FIRST_PASS_KEYS = [key for key in metrics.REPORT_KEYS if key not in metrics.PROBE_KEYS]


def assert_report(actual: dict, expected: dict, keys: list[str]) -> None:
    assert sorted(actual) == sorted(keys)  # jax.jit returns dicts in sorted key order
    for key in keys:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-10, atol=1e-10, err_msg=key)


def chunks(xp, h: np.ndarray, y: np.ndarray, sizes: tuple[int, ...]) -> list[tuple]:
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == len(y)
    return [(xp.asarray(h[a:b]), xp.asarray(y[a:b])) for a, b in zip(bounds[:-1], bounds[1:], strict=False)]


def test_chunked_updates_and_second_pass_equal_the_one_shot_report(xp):
    h, y = problem()
    one_shot = metrics.collapse_report(h, y, num_classes=NUM_CLASSES)
    batches = chunks(xp, h, y, (80, 0, 80, 80))  # an empty batch; one size, as jax compiles each
    monitor = CollapseMonitor(NUM_CLASSES)
    for batch in batches:
        monitor.update(*batch)
    assert_report(monitor.compute(), one_shot, FIRST_PASS_KEYS)
    monitor.start_probe()
    for batch in batches:
        monitor.update_probe(*batch)
    report = monitor.compute()
    assert list(report) == list(one_shot)
    assert_report(report, one_shot, list(metrics.REPORT_KEYS))


def test_reset_forgets_every_row_and_the_probe():
    h, y = problem()
    other_h, other_y = np.cos(h[:100]) * 4.0, (y[:100] + 3) % NUM_CLASSES  # different data, same shapes
    monitor = CollapseMonitor(NUM_CLASSES)
    monitor.update(h, y)
    monitor.start_probe()
    monitor.update_probe(h, y)
    monitor.reset()
    with pytest.raises(ValueError, match="seen no rows"):
        monitor.compute()
    for start in range(0, 100, 30):
        monitor.update(other_h[start : start + 30], other_y[start : start + 30])
    expected = metrics.collapse_report(other_h, other_y, num_classes=NUM_CLASSES)
    assert_report(monitor.compute(), expected, FIRST_PASS_KEYS)


def test_reference_monitor_supplies_the_classifier_means():
    h, y = problem()
    train_h, train_y, test_h, test_y = h[:160], y[:160], h[160:], y[160:]
    train, test = CollapseMonitor(NUM_CLASSES), CollapseMonitor(NUM_CLASSES)
    train.update(train_h, train_y)
    test.update(test_h, test_y)
    test.start_probe(reference=train)
    test.update_probe(test_h, test_y)
    expected = metrics.collapse_report(test_h, test_y, num_classes=NUM_CLASSES, reference=(train_h, train_y))
    assert_report(test.compute(), expected, list(metrics.REPORT_KEYS))


def test_torch_embeddings_are_detached_and_float32_is_accumulated_in_float64():
    torch = pytest.importorskip("torch")
    h, y = problem()
    weights = torch.eye(h.shape[1], dtype=torch.float32, requires_grad=True)
    embeddings = torch.as_tensor(h, dtype=torch.float32) @ weights
    monitor = CollapseMonitor(NUM_CLASSES)
    monitor.update(embeddings, torch.as_tensor(y))
    assert monitor.state.means.dtype == torch.float64 and not monitor.state.means.requires_grad
    expected = metrics.collapse_report(h.astype(np.float32).astype(np.float64), y, num_classes=NUM_CLASSES)
    assert_report(monitor.compute(), expected, FIRST_PASS_KEYS)


def test_pure_functions_run_under_jax_jit():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    h, y = problem()
    update, compute = jax.jit(collapse_update), jax.jit(collapse_compute)
    state = collapse_init(NUM_CLASSES, h.shape[1], xp=jnp)
    for batch in chunks(jnp, h, y, (120, 120)):  # one shape: one compilation
        state = update(state, *batch)
    report = {key: np.asarray(value) for key, value in compute(state).items()}
    assert_report(report, metrics.collapse_report(h, y, num_classes=NUM_CLASSES), FIRST_PASS_KEYS)


def test_misuse_is_refused_with_the_fix():
    h, y = problem()
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        CollapseMonitor(0)
    with pytest.raises(ValueError, match="sync must be"):
        CollapseMonitor(3, sync="nccl")
    monitor = CollapseMonitor(NUM_CLASSES)
    with pytest.raises(RuntimeError, match="start_probe"):
        monitor.update_probe(h, y)
    monitor.update(h, y)
    with pytest.raises(ValueError, match="dimension"):
        monitor.update(h[:, :3], y)
    monitor.start_probe()
    with pytest.raises(RuntimeError, match="reset"):
        monitor.update(h, y)


def _run_worker(kind: str, out: Path, **env: str) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    command = [sys.executable, str(ROOT / "tests" / "distributed_monitor.py"), kind, str(out)]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_two_gloo_processes_merge_into_the_global_report(tmp_path):
    pytest.importorskip("torch")
    _run_worker("torch", tmp_path)
    h, y = problem()
    expected = metrics.collapse_report(h, y, num_classes=NUM_CLASSES)
    assert_report(dict(np.load(tmp_path / "torch_first.npz")), expected, FIRST_PASS_KEYS)
    assert_report(dict(np.load(tmp_path / "torch.npz")), expected, list(metrics.REPORT_KEYS))


def test_four_jax_devices_merge_with_psum_inside_shard_map(tmp_path):
    pytest.importorskip("jax")
    _run_worker("jax", tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    h, y = problem()
    expected = metrics.collapse_report(h, y, num_classes=NUM_CLASSES)
    assert_report(dict(np.load(tmp_path / "jax.npz")), expected, FIRST_PASS_KEYS)


def test_jax_batches_with_bad_values_are_refused_although_the_update_is_jitted():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    h, y = problem()
    monitor = CollapseMonitor(NUM_CLASSES)
    with pytest.raises(ValueError, match="NaN or infinite"):
        monitor.update(jnp.asarray(h).at[3, 2].set(jnp.nan), jnp.asarray(y))
    with pytest.raises(ValueError, match="num_classes=7"):
        monitor.update(jnp.asarray(h), jnp.asarray(y).at[0].set(NUM_CLASSES))
