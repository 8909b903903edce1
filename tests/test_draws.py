"""The drawn columns of sampled negatives, column for column, in float32 and float64, at N = 8192 and beyond.

Three routes turn an anchor's weights and k uniforms into columns: the array-API paths' counts
(`formulas.counts_from_uniforms`, the dense and distributed paths), the JAX kernel's descent of a tree of partial sums
(`backends/_jax_fused.draw_columns`), and NumPy's kernel (`inverse_cdf.draw_columns`). Each is held to a
row-by-row binary search (`np.searchsorted`) in float64:

- exactly, on weights whose CDF every dtype holds exactly (integers summing to 2^14 per row, and in
  float64 columns of probability 2^-44 with a draw inside), so that any loss of resolution in the search
  shows as a different column (one global search with row i shifted by 2i put 43% of the float32 draws
  beyond row 4096 in another column);
- on the paper's tilted weights, where float32 running sums round differently from float64 ones: the share
  of draws in another column stays at that rounding's level in every band of rows.
"""

from __future__ import annotations

import numpy as np
import pytest

from hcl_array import formulas, inverse_cdf
from tests.conftest import load_backend

#: (rows, columns, k): the issue's measurement, more rows than that, and a smaller one for float64
SHAPES = [(8192, 1024, 256), (16384, 256, 64), (8192, 256, 32)]
TOTAL = 2**14


def _exact_weights(rows: int, columns: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(weights, support): integer weights on the support summing to 2^14 per row (so cdf = W / 2^14 is
    exact in float32), about a tenth of the supported columns weightless, and junk off the support."""
    support = rng.random((rows, columns)) < 0.9
    support[:, 0] = True
    weightless = (rng.random((rows, columns)) < 0.1) & support
    weightless[:, 0] = False
    weights = rng.integers(0, 8, (rows, columns)) * (support & ~weightless)
    carriers = support & ~weightless  # the rest of 2^14, spread over them: q each, one more for the first r
    deficit = TOTAL - weights.sum(axis=1)
    share, rest = np.divmod(deficit, carriers.sum(axis=1))
    weights = weights + carriers * share[:, None] + (carriers & (np.cumsum(carriers, axis=1) <= rest[:, None]))
    assert np.all(weights.sum(axis=1, where=support) == TOTAL)
    return np.where(support, weights, 99.0), support


def _tiny_columns(weights: np.ndarray, support: np.ndarray, uniforms: np.ndarray, rows: range) -> None:
    """In these rows (in place): a weightless column gets 2^-30 from its supported right neighbour
    (probability 2^-44, exact in float64) and one uniform lands inside it."""
    for row in rows:
        row_weights = np.where(support[row], weights[row], 0.0)
        movable = support[row, 1:-1] & (row_weights[1:-1] == 0) & support[row, 2:] & (row_weights[2:] >= 1)
        column = int(np.flatnonzero(movable)[0]) + 1
        weights[row, column] += 2.0**-30
        weights[row, column + 1] -= 2.0**-30
        uniforms[row, 0] = row_weights[:column].sum() / TOTAL + 2.0**-45


def _reference_counts(weights: np.ndarray, support: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """c_in = #{t : column of u_it is n}, the column found by np.searchsorted on the row's float64 CDF."""
    q = np.where(support, weights, 0.0)
    cdf = np.cumsum(q, axis=1) / q.sum(axis=1, keepdims=True)
    rows, columns = weights.shape
    drawn = np.stack(
        [np.searchsorted(c, u, side="right") for c, u in zip(cdf, uniforms.astype(np.float64), strict=True)]
    )
    return np.bincount((np.arange(rows)[:, None] * columns + drawn).ravel(), minlength=rows * columns).reshape(
        rows, columns
    )


def _namespace(backend: str):
    loaded = load_backend(backend)
    if isinstance(loaded, str):
        pytest.skip(loaded)
    return loaded[0]


def _counts(backend: str, dtype: str, weights: np.ndarray, support: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """counts_from_uniforms on `backend` in `dtype`; JAX under jax.jit, in float32 with x64 off (no float64
    to widen to)."""
    xp = _namespace(backend)
    float_dtype = getattr(xp, dtype)

    def arrays() -> tuple:
        return xp.asarray(weights, dtype=float_dtype), xp.asarray(support), xp.asarray(uniforms, dtype=float_dtype)

    if backend != "jax":
        return np.asarray(formulas.counts_from_uniforms(*arrays()))
    import jax

    with jax.enable_x64(dtype == "float64"):
        counts = jax.jit(formulas.counts_from_uniforms)(*arrays())
        assert dtype == "float64" or counts.dtype == xp.int32  # x64 off: nothing of 64 bits was made
        return np.asarray(counts)


#: (backend, dtype, shape): JAX without x64 (float32 only, where the shifted search lost the CDF's
#: resolution), and float64 everywhere, with draws in columns of probability 2^-44
COUNT_CASES = [
    ("jax", "float32", SHAPES[0]),
    ("jax", "float32", SHAPES[1]),
    ("jax", "float64", SHAPES[2]),
    ("numpy", "float64", SHAPES[2]),
    ("torch", "float64", SHAPES[2]),
    ("array_api_strict", "float64", SHAPES[2]),
]


@pytest.mark.parametrize(
    ("backend", "dtype", "shape"), COUNT_CASES, ids=[f"{b}-{d}-{r}x{c}" for b, d, (r, c, _) in COUNT_CASES]
)
def test_the_array_api_counts_are_a_binary_search_per_row(backend, dtype, shape):
    """Path: the array-API draws (`counts_from_uniforms`, the dense and distributed paths' draws)."""
    rows, columns, k = shape
    rng = np.random.default_rng(rows + k)
    weights, support = _exact_weights(rows, columns, rng)
    uniforms = rng.random((rows, k), dtype=np.float32).astype(np.float64)  # exact in both dtypes
    if dtype == "float64":  # draws inside columns of probability 2^-44, beyond row 4096 too
        _tiny_columns(weights, support, uniforms, range(0, rows, rows // 16))
    counts = _counts(backend, dtype, weights, support, uniforms)
    expected = _reference_counts(weights, support, uniforms)
    assert counts.sum() == rows * k
    mismatched_rows = np.flatnonzero(np.any(counts != expected, axis=1))
    assert mismatched_rows.size == 0, f"rows {mismatched_rows[:10]} ... of {mismatched_rows.size} draw other columns"


def _tilted_weights(rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's weights: exp(beta (s - max s)) with beta = 5, s in [-1, 1], about 1% of columns masked."""
    similarity = np.clip(rng.normal(scale=0.4, size=(rows, columns)), -1.0, 1.0)
    weights = np.exp(5.0 * (similarity - similarity.max(axis=1, keepdims=True)))
    return weights * (rng.random((rows, columns)) > 0.01)


def _counts_of(columns: np.ndarray, width: int) -> np.ndarray:
    """(rows, width) counts of each row's drawn columns."""
    rows = columns.shape[0]
    flat = (np.arange(rows)[:, None] * width + columns).ravel()
    return np.bincount(flat, minlength=rows * width).reshape(rows, width)


KERNEL_CASES = [("float32", SHAPES[0]), ("float32", SHAPES[1]), ("float64", SHAPES[0])]


@pytest.mark.parametrize(("dtype", "shape"), KERNEL_CASES, ids=[f"{d}-{r}x{c}" for d, (r, c, _) in KERNEL_CASES])
def test_the_jax_kernel_and_numpys_draw_a_binary_searchs_columns(dtype, shape):
    """Paths: the JAX kernel's draws under jax.jit, float32 with x64 off (`_jax_fused.draw_columns`: NumPy's
    guide table through a host callback on the CPU, and `tree_draw_columns`, the descent of a tree of
    partial sums that other devices run), and NumPy's kernel (`inverse_cdf.draw_columns` on the running
    sums), from the same weights and uniforms."""
    jax = pytest.importorskip("jax")
    _namespace("jax")
    from hcl_array.backends._jax_fused import draw_columns, tree_draw_columns

    rows, columns, k = shape
    rng = np.random.default_rng(rows + columns)
    weights, support = _exact_weights(rows, columns, rng)
    uniforms = rng.random((rows, k), dtype=np.float32).astype(np.float64)
    if dtype == "float64":
        _tiny_columns(weights, support, uniforms, range(0, rows, rows // 16))
    expected = _reference_counts(weights, support, uniforms)
    eta = np.where(support, weights, 0.0).astype(dtype)
    with jax.enable_x64(dtype == "float64"):
        jnp = jax.numpy
        arguments = (jnp.asarray(eta), jnp.asarray(uniforms.astype(dtype)))
        drawn, tree_drawn = (np.asarray(jax.jit(draw)(*arguments)) for draw in (draw_columns, tree_draw_columns))
    numpy_kernel = inverse_cdf.draw_columns(np.cumsum(eta, axis=1), uniforms.astype(dtype))
    for found in (drawn, tree_drawn, numpy_kernel):
        mismatched_rows = np.flatnonzero(np.any(_counts_of(found, columns) != expected, axis=1))
        assert mismatched_rows.size == 0, f"rows {mismatched_rows[:10]} of {mismatched_rows.size} draw other columns"


def _share_elsewhere(counts: np.ndarray, reference: np.ndarray, bands: int = 4) -> list[float]:
    """For each band of rows, the share of its draws that landed in another column than the reference's."""
    moved = np.abs(counts.astype(np.int64) - reference).sum(axis=1) / 2
    per_band = np.array_split(moved, bands)
    return [float(band.sum() / (band.size * counts[0].sum())) for band in per_band]


def test_float32_draws_differ_from_float64_only_by_the_running_sums_rounding():
    """Paths: the array-API counts with JAX in float32 (x64 off) and the JAX kernel's tree descent from
    float32 weights (on the CPU the kernel draws NumPy's float32 columns), against float64 draws of the
    same uniforms, N = 8192 rows of 1024 tilted weights and k = 256: a few draws in a thousand move, as
    many in the last band of rows as in the first (a global search with row shifts moved 20% of those
    beyond row 4096)."""
    jax = pytest.importorskip("jax")
    _namespace("jax")
    from hcl_array.backends._jax_fused import tree_draw_columns

    rows, columns, k = SHAPES[0]
    rng = np.random.default_rng(5)
    weights = _tilted_weights(rows, columns, rng)
    support = weights > 0
    uniforms = rng.random((rows, k), dtype=np.float32)
    reference = _reference_counts(weights, support, uniforms)
    with jax.enable_x64(False):
        jnp = jax.numpy
        counts = jax.jit(formulas.counts_from_uniforms)(
            jnp.asarray(weights, jnp.float32), jnp.asarray(support), jnp.asarray(uniforms)
        )
        kernel_columns = jax.jit(tree_draw_columns)(jnp.asarray(weights, jnp.float32), jnp.asarray(uniforms))
    kernel_counts = _counts_of(np.asarray(kernel_columns), columns)
    for shares in (_share_elsewhere(np.asarray(counts), reference), _share_elsewhere(kernel_counts, reference)):
        assert max(shares) < 0.01, shares
        assert shares[-1] < 3 * shares[0] + 1e-3, shares
