"""The guide-table inverse CDF (`hcl_array.inverse_cdf`, the sampled kernel's draws on the CPU) against
NumPy's binary search row by row: the same columns for every draw, whatever the weights."""

from __future__ import annotations

import numpy as np
import pytest

from hcl_array import inverse_cdf

WEIGHT_KINDS = ("smooth", "heavy-tailed", "masked", "ties", "one-hot", "tilted")


def _weights(kind: str, rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Nonnegative weights of each kind; every row keeps at least one positive weight."""
    if kind == "smooth":
        return np.exp(0.2 * rng.normal(size=(rows, n)))
    if kind == "heavy-tailed":
        return np.exp(6.0 * rng.normal(size=(rows, n)))
    if kind == "masked":  # weightless columns anywhere, the last ones included
        weights = np.exp(rng.normal(size=(rows, n))) * (rng.random((rows, n)) < 0.4)
        weights[:, rng.integers(n)] = 1.0
        return weights
    if kind == "ties":  # integer weights: running sums hit u W exactly
        return np.floor(3 * rng.random((rows, n))) + (np.arange(n) == 0)
    if kind == "one-hot":
        weights = np.zeros((rows, n))
        weights[np.arange(rows), rng.integers(0, n, rows)] = 1.0
        return weights
    s = rng.normal(size=(rows, n))  # exp(beta s - max) with a large beta: a few columns hold the mass
    return np.exp(50.0 * (s - s.max(axis=1, keepdims=True)))


def _searchsorted_rows(cumulative: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """#{n : F_n <= u W} row by row by binary search, in the wider dtype, at most N - 1, sorted per row."""
    dtype = np.result_type(cumulative.dtype, uniforms.dtype)
    sums = cumulative.astype(dtype)
    draws = uniforms.astype(dtype) * sums[:, -1:]
    columns = np.stack([np.searchsorted(row, q, side="right") for row, q in zip(sums, draws, strict=True)])
    return np.sort(np.minimum(columns, cumulative.shape[1] - 1), axis=1)


@pytest.mark.parametrize("seed", range(48))
def test_columns_match_a_binary_search_per_row(seed):
    """Random shapes (odd and power-of-two N, k below and above N, several blocks of rows), every weight
    kind, float32 and float64 sums and uniforms."""
    rng = np.random.default_rng(seed)
    rows, n, k = int(rng.integers(1, 600)), int(rng.choice([1, 2, 7, 64, 255, 512, 700])), int(rng.integers(1, 400))
    kind = WEIGHT_KINDS[seed % len(WEIGHT_KINDS)]
    sums_dtype, uniform_dtype = [(np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float64)][seed % 3]
    cumulative = np.cumsum(_weights(kind, rows, n, rng), axis=1).astype(sums_dtype)
    uniforms = rng.random((rows, k)).astype(uniform_dtype)
    expected = _searchsorted_rows(cumulative, uniforms)
    np.testing.assert_array_equal(inverse_cdf.draw_columns(cumulative, uniforms), expected)


def test_blocks_of_rows_join_up():
    """700 rows of 256 draws: blocks of 256 rows (`BLOCK_DRAWS` // k), the last one partial."""
    rng = np.random.default_rng(7)
    cumulative = np.cumsum(_weights("tilted", 700, 300, rng), axis=1).astype(np.float32)
    uniforms = rng.random((700, 256), dtype=np.float32)
    assert inverse_cdf.BLOCK_DRAWS // 256 < 700
    expected = _searchsorted_rows(cumulative, uniforms)
    np.testing.assert_array_equal(inverse_cdf.draw_columns(cumulative, uniforms), expected)
    positions = inverse_cdf.draw_columns(cumulative, uniforms, flat=True)  # i N + column, across the blocks
    np.testing.assert_array_equal(positions, expected + 300 * np.arange(700)[:, None])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_edges_of_the_unit_interval(dtype):
    """u = 0 takes the first column with weight; u = F_n / W exactly starts column n + 1; the largest u
    below 1 takes the last column with weight, never the weightless ones after it."""
    cumulative = np.array([[0.0, 1.0, 2.0, 3.0, 3.0, 3.0]], dtype=dtype)
    below_one = np.nextafter(dtype(1), dtype(0))
    uniforms = np.array([[0.0, 1 / 3, 0.5, below_one, 2 / 3]], dtype=dtype)
    np.testing.assert_array_equal(inverse_cdf.draw_columns(cumulative, uniforms), [[1, 2, 2, 3, 3]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_totals_from_subnormal_to_near_the_largest_finite(dtype):
    """Where B / W overflows (a subnormal total) or W nears the dtype's largest number, the same columns."""
    rng = np.random.default_rng(11)
    info = np.finfo(dtype)
    scales = np.array([info.smallest_subnormal * 8, info.tiny / 4, info.tiny * 1e3, 1.0, info.max / 200], dtype)
    cumulative = np.cumsum(rng.random((5, 64)).astype(dtype) * scales[:, None], axis=1, dtype=dtype)
    assert np.isfinite(cumulative[:, -1]).all() and (cumulative[:, -1] > 0).all()
    uniforms = rng.random((5, 100)).astype(dtype)
    expected = _searchsorted_rows(cumulative, uniforms)
    np.testing.assert_array_equal(inverse_cdf.draw_columns(cumulative, uniforms), expected)


def test_a_row_without_a_finite_total_stays_in_its_row_and_leaves_the_others_alone():
    rng = np.random.default_rng(3)
    cumulative = np.cumsum(np.exp(rng.normal(size=(5, 40))), axis=1)
    cumulative[1, 7:] = np.nan
    cumulative[3] = 0.0
    cumulative[4, 20:] = np.inf
    uniforms = rng.random((5, 30))
    columns = inverse_cdf.draw_columns(cumulative, uniforms)
    assert ((columns >= 0) & (columns < 40)).all()
    good = [0, 2]
    np.testing.assert_array_equal(columns[good], _searchsorted_rows(cumulative[good], uniforms[good]))


@pytest.mark.parametrize(
    ("columns", "draws", "expected"), [(512, 256, 2), (2048, 256, 8), (2048, 4096, 1), (700, 64, 4)]
)
def test_stride_is_about_one_boundary_per_draw_and_divides_the_row(columns, draws, expected):
    assert inverse_cdf.stride(columns, draws) == expected
