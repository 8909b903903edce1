"""The tiled path (kernel="array_api", an integer tile): what tests/test_paths.py's table does not hold.

The tiled path against the dense one and the naive loops for every named loss, option row and backend
(torch autograd through TiledLoss, JAX's custom VJP) is tests/test_paths.py; here: hardening functions,
batches without positives or negatives, views, half precision, memory, and how the path is chosen.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import hcl_array as hcl
from hcl_array import dispatch, tiled
from hcl_array import hardening as hd
from hcl_array._array_api import to_numpy
from tests import cases


@pytest.fixture(autouse=True)
def array_api_code(monkeypatch):
    """These tests are about the array-API tiled path: the global alias of kernel="array_api" keeps
    NumPy and torch off the fused kernel (tests/test_paths.py holds the kernel to this path)."""
    monkeypatch.setattr(hcl.losses, "USE_FUSED_KERNEL", False)


batch = cases.batch


@pytest.mark.parametrize(
    "hardening",
    [hd.threshold(1.3), hd.top_k(3), lambda s: 1.0 + np.tanh(s) if isinstance(s, np.ndarray) else None],
    ids=["threshold", "top_k", "callable"],
)
@pytest.mark.parametrize("candidates", ["other-ids", "all"])
def test_row_wise_hardening_functions_tile_exactly(hardening, candidates):
    """Path: tiled against dense on NumPy (return_grad).

    Threshold leaves some anchors without any negative: they must contribute 0 in both paths."""
    n, tile = 23, 4
    z, ids = batch(n, seed=5)
    options = {"hardening": hardening, "candidates": candidates, "normalize": "sphere", "temperature": 0.5}
    dense = hcl.contrastive_loss(z, ids, tile=None, return_grad=True, **options)
    tiled_ = hcl.contrastive_loss(z, ids, tile=tile, return_grad=True, **options)
    np.testing.assert_allclose(tiled_[0], dense[0], rtol=1e-10)
    np.testing.assert_allclose(tiled_[1], dense[1], rtol=1e-10, atol=1e-13)


def test_threshold_leaves_rows_without_negatives():
    """No path: the batch of the test above has anchors with and without negatives."""
    z, ids = batch(23, seed=5)
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    s = u @ u.T / 0.5
    other = ids[:, None] != ids[None, :]
    for candidates in (other, ~np.eye(23, dtype=bool)):
        without = ~np.any(candidates & (s >= 1.3), axis=1)
        assert 0 < np.sum(without) < 23, "the threshold test needs some anchors with and some without negatives"


def test_batch_without_negatives_or_positives_is_zero_with_zero_gradient(xp):
    """Path: tiled (tile=4) on every backend, return_grad."""
    z = np.random.default_rng(1).normal(size=(11, 3))
    for ids in (np.zeros(11, dtype=np.int64), np.arange(11)):
        value, grad = hcl.hscl(xp.asarray(z), xp.asarray(ids), beta=2.0, tile=4, return_grad=True)
        assert float(to_numpy(value)) == 0.0 and not np.any(to_numpy(grad))


def test_views_keep_their_layout():
    """Path: tiled (tile=5) against dense on NumPy (B, V, d) views."""
    views = np.random.default_rng(2).normal(size=(9, 2, 4))
    dense = hcl.ntxent(views, tile=None, return_grad=True)
    value, grad = hcl.ntxent(views, tile=5, return_grad=True)
    assert grad.shape == views.shape
    np.testing.assert_allclose(value, dense[0], rtol=1e-12)
    np.testing.assert_allclose(grad, dense[1], rtol=1e-10, atol=1e-13)


# --- precision and memory -----------------------------------------------------------------------------


def test_half_precision_accumulates_in_float32():
    """Path: tiled (TiledLoss autograd) against dense autograd on torch half precision; NumPy float16."""
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
    """Path: tiled on NumPy, float64, N = 2000, 16 rows per block.

    The peak is a dozen (16, N) blocks, not one (N, N) matrix."""
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
    """No path: validation of tile= before dispatch."""
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
    """Path: tiled refused (integer tile raises); tile="auto" above the threshold falls back to dense."""
    z, ids = batch(12, seed=8)
    with pytest.raises(ValueError, match=f"tile=4 .*{reason}"):
        hcl.contrastive_loss(z, ids, tile=4, **options)
    monkeypatch.setattr(tiled, "AUTO_THRESHOLD", 4)
    assert float(hcl.contrastive_loss(z, ids, tile="auto", **options)) == float(
        hcl.contrastive_loss(z, ids, tile=None, **options)
    )


def test_auto_tiles_only_above_the_threshold(monkeypatch):
    """Path: dispatch.choose_path with kernel="array_api": dense up to the threshold, tiled above."""
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
    """Path: tiled on JAX (return_grad: the jitted custom VJP).

    It runs full blocks in lax.scan and the remainder in Python: exact multiples and N < tile too."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    z, ids = batch(12, seed=11)
    dense_value, dense_grad = hcl.hscl(z, ids, beta=2.0, tile=None, return_grad=True)
    for tile_ in (4, 12, 50):
        value, grad = hcl.hscl(jax.numpy.asarray(z), jax.numpy.asarray(ids), beta=2.0, tile=tile_, return_grad=True)
        np.testing.assert_allclose(float(value), dense_value, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), dense_grad, rtol=1e-10, atol=1e-13)


def test_the_core_imports_no_framework():
    """Path: tiled on NumPy in a fresh interpreter: torch/jax come only through backends/, for their arrays."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, hcl_array, hcl_array.tiled, hcl_array.backends;"
        "hcl_array.hscl(np.ones((5, 3)), np.array([0, 0, 1, 1, 2]), tile=2, return_grad=True);"
        "print('torch' in sys.modules, 'jax' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
