"""Sampled negatives in the fused kernel: the same draws, values and gradients as the array-API code and the loops.

Every case runs in float64 through three independent routes for the same (N, k) uniforms: the kernel
(`kernel="fused"`, which raises rather than fall back), the array-API code (`kernel="array_api"`, whose
draws are `formulas.counts_from_uniforms`), and the naive loops of tests/reference.py (values; gradients
by central differences of those loops).
"""

from __future__ import annotations

import numpy as np
import pytest

import hcl_array as hcl
from tests.reference import naive_loss

torch = pytest.importorskip("torch")

# (name, hcl options, tests.reference options)
CASES = [
    ("hscl", {"beta": 2.0}, {"hardening": ("exp", 2.0)}),
    ("scl", {}, {}),
    ("hscl-paper", {"beta": 5.0, "include_self": True, "negative_reduction": "mean"}, {"hardening": ("exp", 5.0)}),
    ("hucl", {"beta": 1.5}, {"candidates": "all", "hardening": ("exp", 1.5)}),
    ("hucl-self", {"beta": 0.5, "include_self": True}, {"candidates": "all", "hardening": ("exp", 0.5)}),
    ("ucl", {"reduction": "anchor_mean"}, {"candidates": "all"}),
    ("hscl-sphere", {"beta": 3.0, "normalize": "sphere", "temperature": 0.2}, {"hardening": ("exp", 3.0)}),
    (
        "supcon",
        {"temperature": 0.5},
        {"form": "supcon", "normalize": "sphere", "candidates": "all", "reduction": "anchor_mean"},
    ),
]
LOSSES = {"hscl": hcl.hscl, "scl": hcl.scl, "hucl": hcl.hucl, "ucl": hcl.ucl, "supcon": hcl.supcon}
REFERENCE_KEYS = ("include_self", "negative_reduction", "reduction", "temperature", "normalize")


def _batch(n: int, d: int, classes: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, classes, n), rng.random((n, k))


def _call(name: str, z, ids, uniforms, options: dict, **extra):
    loss = LOSSES[name.split("-")[0]]
    return loss(z, ids, negatives="sampled", k=uniforms.shape[1], uniforms=uniforms, **options, **extra)


def _reference(name: str, z, ids, uniforms, options: dict, reference: dict) -> float:
    shared = {key: options[key] for key in REFERENCE_KEYS if key in options}
    return naive_loss(z, ids, k=uniforms.shape[1], uniforms=uniforms, **{**shared, **reference})


@pytest.mark.parametrize(("name", "options", "reference"), CASES, ids=[case[0] for case in CASES])
@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_kernel_matches_array_api_path_and_loops(name, options, reference, framework):
    z, ids, uniforms = _batch(23, 5, 4, 9, seed=len(name))
    wrap = np.asarray if framework == "numpy" else torch.tensor
    value, grad = _call(name, wrap(z), wrap(ids), uniforms, options, kernel="fused", return_grad=True)
    array_value, array_grad = _call(name, z, ids, uniforms, options, kernel="array_api", return_grad=True)
    np.testing.assert_allclose(float(value), _reference(name, z, ids, uniforms, options, reference), rtol=1e-10)
    np.testing.assert_allclose(float(value), float(array_value), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(grad), array_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("tile", [1, 4, 7, 23])
def test_blocks_that_do_not_divide_the_batch_give_the_same_numbers(tile):
    z, ids, uniforms = _batch(23, 4, 3, 16, seed=3)
    options = {"beta": 4.0, "tile": tile}
    value, grad = _call("hscl", torch.tensor(z), torch.tensor(ids), uniforms, options, return_grad=True)
    array_value, array_grad = _call("hscl", z, ids, uniforms, {"beta": 4.0}, kernel="array_api", return_grad=True)
    np.testing.assert_allclose(float(value), float(array_value), rtol=1e-10)
    np.testing.assert_allclose(grad.numpy(), array_grad, rtol=1e-10, atol=1e-14)


def test_autograd_gradient_matches_central_differences_of_the_loops():
    """The draws are fixed by the uniforms, so the loss is smooth in z away from the CDF boundaries."""
    z, ids, uniforms = _batch(10, 3, 3, 6, seed=11)
    z_torch = torch.tensor(z, requires_grad=True)
    value = hcl.hscl(z_torch, torch.tensor(ids), beta=2.0, negatives="sampled", k=6, uniforms=uniforms)
    assert type(value.grad_fn).__name__ == "FusedLossBackward"
    value.backward()
    step = 1e-6
    numeric = np.zeros_like(z)
    for index in np.ndindex(z.shape):
        shifted = [z.copy(), z.copy()]
        shifted[0][index] += step
        shifted[1][index] -= step
        plus, minus = (naive_loss(s, ids, hardening=("exp", 2.0), k=6, uniforms=uniforms) for s in shifted)
        numeric[index] = (plus - minus) / (2 * step)
    np.testing.assert_allclose(z_torch.grad.numpy(), numeric, rtol=1e-6, atol=1e-8)


def test_same_seed_gives_the_same_draws_on_both_paths():
    z, ids, _ = _batch(40, 6, 5, 1, seed=5)
    kernel = hcl.hscl(torch.tensor(z), torch.tensor(ids), beta=1.0, **hcl.PAPER_PRESET, rng=17)
    array = hcl.hscl(z, ids, beta=1.0, **hcl.PAPER_PRESET, rng=17, kernel="array_api")
    np.testing.assert_allclose(float(kernel), float(array), rtol=1e-10)


def test_a_negative_drawn_many_times_counts_each_time():
    """Two candidates per anchor and k = 64: every column is drawn dozens of times (repeated scatter indices)."""
    z, _, uniforms = _batch(6, 3, 1, 64, seed=2)
    ids = np.array([0, 0, 0, 0, 1, 1])
    value, grad = hcl.hscl(z, ids, beta=1.0, negatives="sampled", k=64, uniforms=uniforms, return_grad=True)
    expected = naive_loss(z, ids, hardening=("exp", 1.0), k=64, uniforms=uniforms)
    array_value, array_grad = hcl.hscl(
        z, ids, beta=1.0, negatives="sampled", k=64, uniforms=uniforms, return_grad=True, kernel="array_api"
    )
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    np.testing.assert_allclose(grad, array_grad, rtol=1e-10, atol=1e-14)


def test_float32_takes_the_kernel_and_stays_close():
    z, ids, uniforms = _batch(64, 16, 6, 32, seed=9)
    value = hcl.hscl(
        torch.tensor(z, dtype=torch.float32),
        torch.tensor(ids),
        beta=1.0,
        negatives="sampled",
        k=32,
        uniforms=uniforms,
        kernel="fused",
    )
    assert value.dtype == torch.float32
    np.testing.assert_allclose(
        float(value), naive_loss(z, ids, hardening=("exp", 1.0), k=32, uniforms=uniforms), rtol=1e-5
    )


@pytest.mark.parametrize("row", [0, 7, 22])
def test_a_non_finite_row_is_reported_not_returned(row):
    z, ids, uniforms = _batch(23, 4, 3, 8, seed=4)
    z[row, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        hcl.hscl(torch.tensor(z), torch.tensor(ids), beta=1.0, negatives="sampled", k=8, uniforms=uniforms)


def test_one_class_batch_is_zero_with_zero_gradient():
    z, _, uniforms = _batch(8, 3, 1, 5, seed=6)
    value, grad = hcl.hscl(
        z,
        np.zeros(8, dtype=int),
        beta=1.0,
        negatives="sampled",
        k=5,
        uniforms=uniforms,
        return_grad=True,
        kernel="fused",
    )
    assert value == 0.0 and not grad.any()


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_uniform_next_to_one_draws_the_last_column_with_weight(framework, dtype):
    """Inverse CDF at the edges: u = 0 takes the first column with weight, u just below 1 (which rounds to
    1 in float32) the last one, never the weightless columns after it; u = W_n / total starts column n + 1.
    The second row's positions in the flattened block start at N = 6."""
    cumulative = np.tile(np.array([0.0, 1.0, 2.0, 3.0, 3.0, 3.0], dtype=dtype), (2, 1))
    uniforms = np.tile([0.0, 1 / 3, 0.5, np.nextafter(1.0, 0.0), 1 - 2.0**-25], (2, 1))
    if framework == "numpy":
        from hcl_array.fused import NumpyOps

        positions = NumpyOps(np).draw_positions(cumulative.copy(), uniforms)
    else:
        from hcl_array.backends._torch_fused import TorchOps

        positions = TorchOps.draw_positions(torch.tensor(cumulative), torch.tensor(uniforms)).numpy()
    np.testing.assert_array_equal(positions, [[1, 2, 2, 3, 3], [7, 8, 8, 9, 9]])


@pytest.mark.parametrize("bad", [1.0, -0.25, np.nan])
def test_uniforms_outside_the_unit_interval_are_refused(bad):
    z, ids, uniforms = _batch(12, 4, 3, 6, seed=8)
    uniforms[3, 2] = bad
    with pytest.raises(ValueError, match=r"uniforms must lie in \[0, 1\)"):
        hcl.hscl(torch.tensor(z), torch.tensor(ids), beta=1.0, negatives="sampled", k=6, uniforms=uniforms)
