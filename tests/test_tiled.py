"""The tiled path against the dense one: values and gradients, on every backend, through every autodiff."""

from __future__ import annotations

import tracemalloc
from functools import partial

import numpy as np
import pytest

import hcl_array as hcl
from hcl_array import dispatch, tiled
from hcl_array import hardening as hd
from hcl_array._array_api import to_numpy
from tests.conftest import assert_close


def _call(function, x, *, ids, options):
    return function(x, ids, **options)


NAMED = {
    "scl": (hcl.scl, {}),
    "hscl": (hcl.hscl, {"beta": 2.5}),
    "ucl": (hcl.ucl, {}),
    "hucl": (hcl.hucl, {"beta": 2.5}),
    "supcon": (hcl.supcon, {}),
    "ntxent": (hcl.ntxent, {}),
    "debiased_hcl": (hcl.debiased_hcl, {"beta": 1.5, "tau_plus": 0.1}),
}
OPTIONS = [
    {},
    {"normalize": "sphere", "temperature": 0.3},
    {"normalize": "none", "temperature": 4.0, "include_self": True},
    {"reduction": "anchor_mean", "k": 7},
    {"negative_reduction": "mean", "detach_weights": False},
]
option_id = lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults"  # noqa: E731


@pytest.fixture(autouse=True)
def array_api_code(monkeypatch):
    """These tests are about the array-API tiled path: keep NumPy and torch off the fused kernel
    (tests/test_fused.py holds the kernel to this path)."""
    monkeypatch.setattr(hcl.losses, "USE_FUSED_KERNEL", False)


def batch(n: int, seed: int, d: int = 5, classes: int = 4):
    """Rows with norms on both sides of 1, and two anchors whose ids nobody else has (no positives)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)) * 1.3
    ids = rng.integers(0, classes, size=n)
    ids[0], ids[-1] = classes + 3, classes + 9
    return z, ids


def sizes(seed: int) -> tuple[int, int]:
    """A random batch size and a tile that does not divide it: 2 or 3 blocks, the last one short."""
    rng = np.random.default_rng(seed)
    tile = int(rng.integers(4, 9))
    n = int(rng.integers(1, 3)) * tile + int(rng.integers(1, tile))
    return n, tile


def check_tiled_equals_dense(xp, name, overrides):
    function, extra = NAMED[name]
    n, tile = sizes(len(name) + 7 * len(overrides))
    z, ids = batch(n, seed=n)
    options = {**extra, **overrides}
    dense_value, dense_grad = function(z, ids, tile=None, return_grad=True, **options)
    value, grad = function(xp.asarray(z), xp.asarray(ids), tile=tile, return_grad=True, **options)
    assert_close(value, dense_value, xp=xp)
    assert_close(grad, dense_grad, rtol=1e-10, atol=1e-13, xp=xp)
    if "jax" in xp.__name__:
        return  # each option set is one more compiled program; reduction="none" is checked on the others
    options["reduction"] = "none"
    per_anchor = function(xp.asarray(z), xp.asarray(ids), tile=tile, **options)
    assert_close(per_anchor, function(z, ids, tile=None, **options), xp=xp)


@pytest.mark.parametrize("name", sorted(NAMED))
def test_tiled_equals_dense_values_and_analytic_gradients(xp, name):
    """Every backend, every named loss; each loss with another row of options (JAX compiles each one)."""
    check_tiled_equals_dense(xp, name, OPTIONS[sorted(NAMED).index(name) % len(OPTIONS)])


@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("overrides", OPTIONS, ids=option_id)
def test_tiled_equals_dense_for_every_option(name, overrides):
    import array_api_compat.numpy as xp

    check_tiled_equals_dense(xp, name, overrides)


@pytest.mark.parametrize(
    "hardening",
    [hd.threshold(1.3), hd.top_k(3), lambda s: 1.0 + np.tanh(s) if isinstance(s, np.ndarray) else None],
    ids=["threshold", "top_k", "callable"],
)
@pytest.mark.parametrize("candidates", ["other-ids", "all"])
def test_row_wise_hardening_functions_tile_exactly(hardening, candidates):
    """Threshold leaves some anchors without any negative: they must contribute 0 in both paths."""
    n, tile = 23, 4
    z, ids = batch(n, seed=5)
    options = {"hardening": hardening, "candidates": candidates, "normalize": "sphere", "temperature": 0.5}
    dense = hcl.contrastive_loss(z, ids, tile=None, return_grad=True, **options)
    tiled_ = hcl.contrastive_loss(z, ids, tile=tile, return_grad=True, **options)
    np.testing.assert_allclose(tiled_[0], dense[0], rtol=1e-10)
    np.testing.assert_allclose(tiled_[1], dense[1], rtol=1e-10, atol=1e-13)


def test_threshold_leaves_rows_without_negatives():
    z, ids = batch(23, seed=5)
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    s = u @ u.T / 0.5
    other = ids[:, None] != ids[None, :]
    for candidates in (other, ~np.eye(23, dtype=bool)):
        without = ~np.any(candidates & (s >= 1.3), axis=1)
        assert 0 < np.sum(without) < 23, "the threshold test needs some anchors with and some without negatives"


def test_batch_without_negatives_or_positives_is_zero_with_zero_gradient(xp):
    z = np.random.default_rng(1).normal(size=(11, 3))
    for ids in (np.zeros(11, dtype=np.int64), np.arange(11)):
        value, grad = hcl.hscl(xp.asarray(z), xp.asarray(ids), beta=2.0, tile=4, return_grad=True)
        assert float(to_numpy(value)) == 0.0 and not np.any(to_numpy(grad))


def test_views_keep_their_layout():
    views = np.random.default_rng(2).normal(size=(9, 2, 4))
    dense = hcl.ntxent(views, tile=None, return_grad=True)
    value, grad = hcl.ntxent(views, tile=5, return_grad=True)
    assert grad.shape == views.shape
    np.testing.assert_allclose(value, dense[0], rtol=1e-12)
    np.testing.assert_allclose(grad, dense[1], rtol=1e-10, atol=1e-13)


# --- autodiff: torch.autograd.Function and jax.custom_vjp -------------------------------------------


@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("overrides", [{}, {"detach_weights": False, "include_self": True}], ids=option_id)
def test_torch_autograd_through_the_tiled_function_equals_dense_autodiff(name, overrides):
    torch = pytest.importorskip("torch")
    function, extra = NAMED[name]
    n, tile = sizes(3 * len(name))
    z, ids = batch(n, seed=n + 1)
    options = {**extra, **overrides}
    cotangent = torch.tensor(np.random.default_rng(0).normal(size=n))
    for reduction, weigh in (("mean", lambda v: v), ("none", lambda v: (v * cotangent).sum())):
        grads = []
        for tile_ in (None, tile):
            tensor = torch.tensor(z, requires_grad=True)
            value = function(tensor, torch.tensor(ids), tile=tile_, **{**options, "reduction": reduction})
            weigh(value).backward()
            grads.append((value.detach().numpy(), tensor.grad.numpy()))
        np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(grads[1][1], grads[0][1], rtol=1e-10, atol=1e-13)


def test_torch_tiled_graph_uses_the_registered_function():
    torch = pytest.importorskip("torch")
    z, ids = batch(10, seed=3)
    value = hcl.hscl(torch.tensor(z, requires_grad=True), torch.tensor(ids), tile=3)
    assert type(value.grad_fn).__name__ == "TiledLossBackward"


def test_jax_grad_through_custom_vjp_equals_dense_autodiff():
    """jax.grad under jit and eagerly, every named loss; the reference is torch autograd of the dense path
    (one compiled program per loss is what this test can afford; tests/test_gradients.py ties jax to torch)."""
    jax = pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    for name, (function, extra) in sorted(NAMED.items()):
        n, tile = sizes(5 * len(name))
        z, ids = batch(n, seed=n + 2)
        options = {**extra, "detach_weights": name != "hscl", "tile": tile}  # hscl: through the weights too
        tensor = torch.tensor(z, requires_grad=True)
        dense_value = function(tensor, torch.tensor(ids), **{**options, "tile": None})
        dense_value.backward()
        step = jax.value_and_grad(partial(_call, function, ids=jnp.asarray(ids), options=options))
        value, grad = (jax.jit(step) if name != "hscl" else step)(jnp.asarray(z))
        np.testing.assert_allclose(float(value), float(dense_value.detach()), rtol=1e-10, err_msg=name)
        np.testing.assert_allclose(np.asarray(grad), tensor.grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=name)


def test_jax_per_anchor_values_recompute_blocks_in_the_backward_pass():
    """reduction="none" under jax.grad: the custom VJP's recomputing branch, weighted by a cotangent."""
    jax = pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    jax.config.update("jax_enable_x64", True)
    z, ids = batch(11, seed=12)
    weights = np.random.default_rng(3).normal(size=11)
    value, grad = jax.value_and_grad(
        lambda x: (hcl.hscl(x, jax.numpy.asarray(ids), beta=2.0, tile=4, reduction="none") * weights).sum()
    )(jax.numpy.asarray(z))
    tensor = torch.tensor(z, requires_grad=True)
    reference = (
        hcl.hscl(tensor, torch.tensor(ids), beta=2.0, tile=None, reduction="none") * torch.tensor(weights)
    ).sum()
    reference.backward()
    np.testing.assert_allclose(float(value), reference.item(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grad), tensor.grad.numpy(), rtol=1e-10, atol=1e-13)


# --- precision and memory -----------------------------------------------------------------------------


def test_half_precision_accumulates_in_float32():
    torch = pytest.importorskip("torch")
    z, ids = batch(29, seed=4, d=8)
    for dtype in (torch.float16, torch.bfloat16):
        results = []
        for tile_ in (None, 6):
            half = torch.tensor(z, dtype=dtype, requires_grad=True)
            value = hcl.hscl(half, torch.tensor(ids), beta=5.0, temperature=0.05, tile=tile_)
            assert value.dtype == torch.float32
            value.backward()
            assert half.grad.dtype == dtype
            results.append((float(value.detach()), half.grad.float().numpy()))
        assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
        np.testing.assert_allclose(results[1][1], results[0][1], rtol=2e-2, atol=1e-3)
    value32 = hcl.hscl(z.astype(np.float16), ids, tile=6)
    assert value32.dtype == np.float32
    assert float(value32) == pytest.approx(float(hcl.hscl(z.astype(np.float16), ids, tile=None)), rel=1e-5)


def test_tiled_memory_is_a_block_not_the_matrix():
    """NumPy, float64, N = 2000, 16 rows per block: the peak is a dozen (16, N) blocks, not one (N, N) matrix."""
    n, tile = 2000, 16
    z, ids = batch(n, seed=6, d=16, classes=40)
    hcl.hscl(z, ids, tile=tile, return_grad=True)  # warm up caches outside the measurement
    tracemalloc.start()
    try:
        hcl.hscl(z, ids, tile=tile, return_grad=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    block = tile * n * 8
    assert peak < 16 * block + 8 * z.nbytes, f"peak {peak / 2**20:.1f} MiB, one block {block / 2**20:.2f} MiB"
    assert peak < n * n * 8 / 4


# --- choosing the path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tile", ["big", 0, -3, 2.5, True, "AUTO"])
def test_bad_tile_values_name_the_argument(tile):
    z, ids = batch(8, seed=7)
    with pytest.raises(ValueError, match="tile="):
        hcl.hscl(z, ids, tile=tile)


class _CustomHardening:
    slope = 0.0

    def log_weights(self, similarity, candidates):
        return 0.0 * similarity


@pytest.mark.parametrize(
    "options, reason",
    [
        ({"negatives": "sampled", "k": 4, "rng": 0}, "sampled negatives"),
        ({"hardening": _CustomHardening()}, "row-wise"),
        ({"hardening": lambda s: 1.0 + 0.0 * s, "detach_weights": False}, "detach_weights=True"),
    ],
    ids=["sampled", "custom-hardening", "callable-undetached"],
)
def test_unsupported_configurations_refuse_an_integer_tile_and_auto_stays_dense(options, reason, monkeypatch):
    z, ids = batch(12, seed=8)
    with pytest.raises(ValueError, match=f"tile=4 .*{reason}"):
        hcl.contrastive_loss(z, ids, tile=4, **options)
    monkeypatch.setattr(tiled, "AUTO_THRESHOLD", 4)
    assert float(hcl.contrastive_loss(z, ids, tile="auto", **options)) == float(
        hcl.contrastive_loss(z, ids, tile=None, **options)
    )


def test_auto_tiles_only_above_the_threshold(monkeypatch):
    config = hcl.LossConfig(hardening=hd.exponential(1.0), kernel="array_api")
    assert dispatch.choose_path(config, "numpy", tiled.AUTO_THRESHOLD) == "dense"
    assert dispatch.choose_path(config, "numpy", tiled.AUTO_THRESHOLD + 1) == "tiled"
    assert tiled.block_rows("auto", 65536) == tiled.auto_tile(65536) == 256
    assert tiled.block_rows(10_000, 50) == 50
    z, ids = batch(30, seed=9)
    calls = []
    monkeypatch.setattr(tiled, "AUTO_THRESHOLD", 16)
    monkeypatch.setattr(tiled, "forward", lambda *a, _f=tiled.forward: calls.append(1) or _f(*a))
    assert float(hcl.hscl(z, ids)) == pytest.approx(float(hcl.hscl(z, ids, tile=None)), rel=1e-12)
    assert calls, "tile='auto' above the threshold should take the tiled path"


def test_jax_scan_over_blocks_with_and_without_a_short_last_block():
    """The JAX path runs full blocks in lax.scan and the remainder in Python: exact multiples and N < tile too."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    z, ids = batch(12, seed=11)
    dense_value, dense_grad = hcl.hscl(z, ids, beta=2.0, tile=None, return_grad=True)
    for tile_ in (4, 12, 50):
        value, grad = hcl.hscl(jax.numpy.asarray(z), jax.numpy.asarray(ids), beta=2.0, tile=tile_, return_grad=True)
        np.testing.assert_allclose(float(value), dense_value, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), dense_grad, rtol=1e-10, atol=1e-13)


def test_the_core_imports_no_framework():
    """The tiled path reaches torch/jax only through backends/, and only for their arrays."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, hcl_array, hcl_array.tiled, hcl_array.backends;"
        "hcl_array.hscl(np.ones((5, 3)), np.array([0, 0, 1, 1, 2]), tile=2, return_grad=True);"
        "print('torch' in sys.modules, 'jax' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
