"""The losses on their default path (kernel="auto", tile="auto": the fused kernel on NumPy and torch
where it serves, else dense): hardening functions, sampled draws, views, edge cases, numerics, bad input,
and the facts the theory proves, against the naive float64 loops and closed forms.

Every named loss and option row on every path and backend against the naive loops is tests/test_paths.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hcl_array as hcl
from hcl_array import config
from hcl_array import hardening as hd
from hcl_array._array_api import to_numpy
from tests import cases
from tests.conftest import assert_close
from tests.reference import naive_loss

RNG = np.random.default_rng(20231105)
batch = cases.batch


@pytest.mark.parametrize(
    "hardening, reference",
    [
        (hd.threshold(0.2), ("threshold", 0.2)),
        (hd.top_k(3), ("topk", 3)),
        (hd.exponential(4.0), ("exp", 4.0)),
        (lambda s: 1.0 + 0.0 * s, ("uniform",)),
    ],
    ids=["threshold", "top_k", "exponential", "callable"],
)
@pytest.mark.parametrize("candidates", ["other-ids", "all"])
def test_hardening_functions_match_naive_loops(xp, hardening, reference, candidates):
    """Path: the default on every backend (dense; exponential: fused on NumPy and torch)."""
    z, ids = batch(n=16, seed=3)
    value = hcl.contrastive_loss(
        xp.asarray(z), xp.asarray(ids), hardening=hardening, candidates=candidates, normalize="sphere"
    )
    expected = naive_loss(z, ids, hardening=reference, candidates=candidates, normalize="sphere")
    assert_close(value, expected, rtol=1e-11, xp=xp)


def test_threshold_leaving_anchor_without_negatives_contributes_zero():
    """Path: dense on NumPy (the kernel has no threshold)."""
    z, ids = batch(n=10, seed=4)
    value = hcl.contrastive_loss(z, ids, hardening=hd.threshold(0.95), normalize="sphere")
    expected = naive_loss(z, ids, hardening=("threshold", 0.95), normalize="sphere")
    assert value == pytest.approx(expected, rel=1e-12)


def test_sampled_negatives_are_reproducible_and_seeded():
    """Path: dense on NumPy (the only path with sampled negatives)."""
    z, ids = batch(n=20, seed=6)
    first = hcl.hscl(z, ids, beta=3.0, negatives="sampled", k=16, rng=7)
    assert hcl.hscl(z, ids, beta=3.0, negatives="sampled", k=16, rng=7) == first
    assert hcl.hscl(z, ids, beta=3.0, negatives="sampled", k=16, rng=8) != first


def test_sampled_negatives_approach_expected_form_as_k_grows():
    """Path: dense (sampled) against the fused kernel (expected) on NumPy."""
    z, ids = batch(n=24, seed=8)
    options = {"beta": 2.0, "negative_reduction": "mean"}
    expected = float(hcl.hscl(z, ids, **options))
    errors = []
    for k in (4, 64, 1024):
        draws = [float(hcl.hscl(z, ids, **options, negatives="sampled", k=k, rng=seed)) for seed in range(24)]
        errors.append(abs(np.mean(draws) - expected))
    assert errors[2] < errors[0]
    assert errors[2] < 2e-3 * expected


def test_paper_preset_reproduces_the_paper_code_semantics():
    """Path: dense on NumPy (the preset samples negatives)."""
    z, ids = batch(n=12, seed=9)
    uniforms = np.random.default_rng(1).random((12, 256))
    value = hcl.hscl(z, ids, beta=5.0, **{**hcl.PAPER_PRESET, "rng": None}, uniforms=uniforms)
    expected = naive_loss(
        z, ids, hardening=("exp", 5.0), include_self=True, k=256, negative_reduction="mean", uniforms=uniforms
    )
    assert value == pytest.approx(expected, rel=1e-11)
    # the paper's UCL: negatives from every row, the anchor and its positives included
    value = hcl.ucl(z, ids, **{**hcl.PAPER_PRESET, "rng": None}, uniforms=uniforms)
    expected = naive_loss(
        z, ids, candidates="all", include_self=True, k=256, negative_reduction="mean", uniforms=uniforms
    )
    assert value == pytest.approx(expected, rel=1e-11)


def test_views_are_flattened_view_major(xp):
    """Path: the default on every backend, (B, V, d) views."""
    rng = np.random.default_rng(10)
    views = rng.normal(size=(6, 2, 4))
    rows = np.concatenate([views[:, 0], views[:, 1]])
    ids = np.concatenate([np.arange(6), np.arange(6)])
    assert_close(hcl.ntxent(xp.asarray(views)), naive_loss(rows, ids, temperature=0.5, normalize="sphere"), xp=xp)
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert_close(
        hcl.hscl(xp.asarray(views), xp.asarray(labels), beta=2.0),
        naive_loss(rows, np.concatenate([labels, labels]), hardening=("exp", 2.0)),
        xp=xp,
    )


# --- edge cases --------------------------------------------------------------------------------------


def test_batch_without_positive_pairs_is_zero_with_zero_gradient():
    """Path: fused on NumPy (return_grad)."""
    z = RNG.normal(size=(5, 3))
    value, grad = hcl.hscl(z, np.arange(5), beta=2.0, return_grad=True)
    assert value == 0.0 and not np.any(grad)


def test_anchor_without_negatives_contributes_zero():
    """Path: fused on NumPy (return_grad)."""
    z = RNG.normal(size=(4, 3))
    value, grad = hcl.scl(z, np.zeros(4, dtype=np.int64), return_grad=True)
    assert value == 0.0 and not np.any(grad)


def test_single_row():
    """Path: fused on NumPy."""
    assert hcl.ucl(RNG.normal(size=(1, 3)), np.array([0])) == 0.0


# --- numerics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", cases.NAMES)
def test_no_overflow_at_small_temperature_and_large_beta(xp, name):
    """Path: the default on every backend, float64 and float32."""
    function, extra = cases.LOSSES[name].function, cases.LOSSES[name].extra
    z, ids = batch(n=16, seed=12)
    options = {**extra, "temperature": 0.01}
    if "beta" in extra:
        options["beta"] = 1000.0
    value = function(xp.asarray(z), xp.asarray(ids), **options)
    assert np.isfinite(to_numpy(value))
    value32 = function(xp.asarray(z.astype(np.float32)), xp.asarray(ids), **options)
    assert np.isfinite(to_numpy(value32))
    assert float(to_numpy(value32)) == pytest.approx(float(to_numpy(value)), rel=1e-3)


def test_half_precision_accumulates_in_float32():
    """Path: fused on torch half precision and NumPy float16, against the same path in float64."""
    torch = pytest.importorskip("torch")

    z, ids = batch(n=16, seed=13)
    reference = float(hcl.hscl(z, ids, beta=5.0, temperature=0.05))
    for dtype in (torch.float16, torch.bfloat16):
        half = torch.tensor(z, dtype=dtype, requires_grad=True)
        value = hcl.hscl(half, torch.tensor(ids), beta=5.0, temperature=0.05)
        assert value.dtype == torch.float32
        value.backward()
        assert half.grad.dtype == dtype and torch.isfinite(half.grad.float()).all()
        exact = float(hcl.hscl(half.detach().double().numpy(), ids, beta=5.0, temperature=0.05))
        assert float(value.detach()) == pytest.approx(exact, rel=1e-5)
        assert float(value.detach()) == pytest.approx(reference, rel=5e-2)
    np16 = hcl.hscl(z.astype(np.float16), ids, beta=5.0, temperature=0.05)
    assert np16.dtype == np.float32 and np.isfinite(np16)


# --- bad input --------------------------------------------------------------------------------------


def test_finite_check_decides_by_the_sum_but_never_misreads_an_overflow():
    """No path: config.all_finite.

    Huge finite embeddings overflow the checking sum to inf: the elementwise check then clears them."""
    import array_api_compat.numpy as xp

    huge = np.full((5, 3), 3e38, dtype=np.float32)
    assert config.all_finite(huge, xp)
    for bad in (np.nan, np.inf, -np.inf):
        poisoned = huge.copy()
        poisoned[2, 1] = bad
        assert not config.all_finite(poisoned, xp)
        assert not config.all_finite(np.where(huge > 0, bad, 1.0), xp)  # the sum alone decides


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda z, y: hcl.scl(z[0], y), ValueError, "embeddings must have shape"),
        (lambda z, y: hcl.scl(z, y[:-1]), ValueError, "labels/ids must have shape"),
        (lambda z, y: hcl.scl(z, y.astype(float)), TypeError, "labels/ids must be integers"),
        (lambda z, y: hcl.scl(z.astype(int), y), TypeError, "embeddings must be a real floating"),
        (lambda z, y: hcl.scl(np.where(z > 1, np.nan, z), y), ValueError, "NaN or Inf"),
        (lambda z, y: hcl.scl(np.where(z > 1, np.inf, z), y), ValueError, "NaN or Inf"),
        (lambda z, y: hcl.hscl(z, y, beta=-1.0), ValueError, "beta must be"),
        (lambda z, y: hcl.scl(z, y, temperature=0.0), ValueError, "temperature must be"),
        (lambda z, y: hcl.scl(z, y, temperature=float("nan")), ValueError, "temperature must be"),
        (lambda z, y: hcl.scl(z, y, normalize="unit"), ValueError, "normalize='unit'"),
        (lambda z, y: hcl.scl(z, y, reduction="sum"), ValueError, "reduction='sum'"),
        (lambda z, y: hcl.scl(z, y, negatives="hard"), ValueError, "negatives='hard'"),
        (lambda z, y: hcl.scl(z, y, negatives="sampled"), ValueError, "needs k"),
        (lambda z, y: hcl.scl(z, y, negatives="sampled", k=4), ValueError, "rng="),
        (lambda z, y: hcl.scl(z, y, k=0), ValueError, "k must be"),
        (lambda z, y: hcl.scl(z, y, negatives="sampled", k=4, uniforms=np.zeros((3, 4))), ValueError, "uniforms"),
        (lambda z, y: hcl.scl(z.tolist(), y), TypeError, "embeddings must be an array"),
        (lambda z, y: hcl.scl(z, None), ValueError, "labels/ids are required"),
        (lambda z, y: hcl.debiased_hcl(z, y, tau_plus=1.0), ValueError, "tau_plus"),
        (lambda z, y: hcl.contrastive_loss(z, y, hardening=lambda s: -s), ValueError, "non-negative"),
        (lambda z, y: hcl.contrastive_loss(z, y, hardening=lambda s: np.exp(-s)), ValueError, "non-decreasing"),
        (lambda z, y: hcl.contrastive_loss(z, y, hardening=3), TypeError, "hardening"),
        (lambda z, y: hcl.contrastive_loss(z, y, hardening=hd.top_k(0)), ValueError, "top_k"),
        (lambda z, y: hcl.scl(z, y, reduction="none", return_grad=True), ValueError, "scalar loss"),
        (
            lambda z, y: hcl.hscl(z, y, hardening=np.exp, detach_weights=False, return_grad=True),
            NotImplementedError,
            "detach_weights=True",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, message):
    """No path: validation before dispatch (and the finiteness test after the kernel)."""
    z, ids = batch(n=6, seed=14)
    with pytest.raises(error, match=message):
        call(z, ids)


# --- theory -----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(3, 24),
    classes=st.integers(1, 5),
    temperature=st.floats(0.05, 5.0),
    betas=st.lists(st.floats(0.0, 50.0), min_size=2, max_size=4),
    normalize=st.sampled_from(["ball", "sphere", "none"]),
)
def test_hardening_never_lowers_the_loss(seed, n, classes, temperature, betas, normalize):
    """Path: the default (fused) on NumPy.

    Harris inequality: eta non-decreasing puts q's mass on larger s, so the loss grows with beta."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    ids = rng.integers(0, classes, size=n)
    options = {"temperature": temperature, "normalize": normalize}
    for plain, hard in ((hcl.scl, hcl.hscl), (hcl.ucl, hcl.hucl)):
        values = [float(hard(z, ids, beta=b, **options)) for b in sorted(betas)]
        assert values[0] >= float(plain(z, ids, **options)) * (1 - 1e-12) - 1e-12
        assert all(b >= a * (1 - 1e-12) - 1e-12 for a, b in zip(values, values[1:], strict=False))


def simplex_etf(classes: int, dim: int, seed: int = 0) -> np.ndarray:
    """C unit vectors with pairwise inner product -1/(C-1), randomly rotated into R^dim."""
    centred = np.eye(classes) - 1.0 / classes
    frame = centred / np.linalg.norm(centred, axis=1, keepdims=True)  # C x C, rank C - 1
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    _, _, vt = np.linalg.svd(frame)
    coordinates = frame @ vt[: classes - 1].T  # C x (C - 1)
    return coordinates @ basis[:, : classes - 1].T


@pytest.mark.parametrize("classes, per_class, temperature", [(100, 2, 1.0), (5, 3, 0.5), (10, 4, 0.2)])
@pytest.mark.parametrize("negative_reduction", ["sum", "mean"])
def test_neural_collapse_attains_the_closed_form(classes, per_class, temperature, negative_reduction):
    """Path: fused on NumPy (return_grad), against the closed form at the simplex ETF."""
    means = simplex_etf(classes, classes - 1 if classes > 5 else classes + 2)
    z = np.repeat(means, per_class, axis=0)
    labels = np.repeat(np.arange(classes), per_class)
    lam = 1.0 if negative_reduction == "mean" else (classes - 1) * per_class
    closed_form = math.log1p(lam * math.exp(-classes / ((classes - 1) * temperature)))
    if classes == 100 and negative_reduction == "mean":
        assert closed_form == pytest.approx(0.3106, abs=5e-5)
    for beta in (0.0, 1.0, 30.0):
        value, grad = hcl.hscl(
            z, labels, beta=beta, temperature=temperature, negative_reduction=negative_reduction, return_grad=True
        )
        assert value == pytest.approx(closed_form, rel=1e-12)
        tangent = grad - np.sum(grad * z, axis=1, keepdims=True) * z
        assert np.max(np.abs(tangent)) < 1e-13


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    classes=st.integers(2, 6),
    per_class=st.integers(1, 4),
    temperature=st.floats(0.1, 3.0),
)
def test_random_unit_configurations_never_beat_the_simplex(seed, classes, per_class, temperature):
    """Path: fused on NumPy, against the closed-form lower bound."""
    labels = np.repeat(np.arange(classes), per_class)
    z = np.random.default_rng(seed).normal(size=(classes * per_class, classes + 1))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    lam = 1.0
    bound = math.log1p(lam * math.exp(-classes / ((classes - 1) * temperature)))
    value = float(hcl.scl(z, labels, temperature=temperature, negative_reduction="mean", include_self=True))
    assert value >= bound * (1 - 1e-12)
