"""Reference geometries: the simplex ETF and orthogonal frame properties, and the closed-form collapse loss."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hcl_array._array_api import to_numpy
from hcl_array.geometry import neural_collapse_loss, orthogonal_frame, simplex_etf


@pytest.mark.parametrize(("num_classes", "dim", "seed"), [(2, 1, None), (5, 4, None), (5, 9, 3), (10, 16, 0)])
def test_simplex_etf_properties(xp, num_classes, dim, seed):
    frame = simplex_etf(num_classes, dim, xp=xp, seed=seed)
    assert frame.shape == (num_classes, dim) and frame.dtype == xp.float64
    rows = np.asarray(to_numpy(frame))
    gram = rows @ rows.T
    expected = np.where(np.eye(num_classes, dtype=bool), 1.0, -1.0 / (num_classes - 1))
    np.testing.assert_allclose(gram, expected, atol=1e-14)  # unit norm and mu_a . mu_b = -1/(C-1)
    np.testing.assert_allclose(rows.sum(axis=0), 0.0, atol=1e-14)


def test_simplex_etf_float32_and_seeds(xp):
    frame = simplex_etf(4, 6, xp=xp, dtype=xp.float32, seed=1)
    assert frame.dtype == xp.float32
    same, other = to_numpy(simplex_etf(4, 6, seed=1)), to_numpy(simplex_etf(4, 6, seed=2))
    np.testing.assert_allclose(to_numpy(frame), same, atol=1e-6)
    assert np.abs(same - other).max() > 1e-3
    canonical = to_numpy(simplex_etf(4, 6))
    np.testing.assert_array_equal(canonical[:, 3:], 0.0)  # canonical embedding: the first C - 1 coordinates


def test_simplex_etf_needs_dim_at_least_c_minus_1():
    with pytest.raises(ValueError, match="dim"):
        simplex_etf(10, 8)
    with pytest.raises(ValueError, match="num_classes"):
        simplex_etf(1, 8)


def test_orthogonal_frame(xp):
    frame = orthogonal_frame(5, 7, xp=xp, seed=4)
    rows = np.asarray(to_numpy(frame))
    np.testing.assert_allclose(rows @ rows.T, np.eye(5), atol=1e-14)
    with pytest.raises(ValueError, match="dim"):
        orthogonal_frame(5, 4)


def naive_loss_at_collapse(num_classes, temperature, negatives_per_anchor):
    """l = log(1 + lambda * mean_n exp((s_n - s_p) / tau)) evaluated on an explicit ETF, pair by pair."""
    rows = np.asarray(to_numpy(simplex_etf(num_classes, num_classes + 2, seed=0)))
    anchor, positive = rows[0], rows[0]  # collapsed: the positive view equals the anchor's class mean
    terms = [np.exp((anchor @ rows[n] - anchor @ positive) / temperature) for n in range(1, num_classes)]
    return math.log(1 + negatives_per_anchor * np.mean(terms))


@pytest.mark.parametrize(("num_classes", "temperature", "negatives"), [(100, 1.0, 1.0), (10, 0.5, 4.0), (2, 0.1, 1.0)])
def test_neural_collapse_loss(num_classes, temperature, negatives):
    value = neural_collapse_loss(num_classes, temperature=temperature, negatives_per_anchor=negatives)
    assert value == pytest.approx(naive_loss_at_collapse(num_classes, temperature, negatives), rel=1e-12)


def test_neural_collapse_loss_paper_value_and_errors():
    assert round(neural_collapse_loss(100), 4) == 0.3106
    with pytest.raises(ValueError, match="temperature"):
        neural_collapse_loss(10, temperature=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        neural_collapse_loss(1)
