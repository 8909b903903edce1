"""Neural-collapse and dimensional-collapse diagnostics, written once against the Python array API.

Embeddings H (N x d), integer labels y in {0..C-1}. Every class-mean metric is built from the same class
statistics: counts n_c, means mu_c (sum_{y_i = c} h_i / n_c, a scatter-add: `_segment_sums`), the within-class
scatter sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T and per-class squared deviations. The same statistics
merge batch by batch (Chan et al.), so `collapse_update` streams data that does not fit in memory and
`collapse_result` reproduces `collapse_report`. Formulas and conventions: docs/metrics.md.

Conventions shared by every function (documented once here, see docs/metrics.md for details):

* mu_G is the unweighted mean of the class means of the non-empty classes; C' is their number. Empty
  classes (no row with that label) are left out of every class-mean metric, and C' replaces C.
* Computation runs in float64 where the backend has it (`supports_float64`); JAX without
  jax_enable_x64 computes in float32 (about 1e-6 relative precision). Results are 0-d arrays of the
  input's namespace; `collapse_report` turns them into Python floats.
* Magnitudes below rounding noise (rtol = max(C, d) * eps relative to the data's scale) count as zero, so
  0/0 ratios have defined values: nc1_quotient and cdnv are 0 for 0/0 and inf for x/0; cosines with a
  zero vector are 0; the ETF distance of all-equal means is 1. No metric returns NaN.
* Metrics do not need d >= C - 1: when the simplex ETF is infeasible they keep their formulas and simply
  cannot reach 0.
* `num_classes=None` reads max(labels) + 1 eagerly; under jax.jit pass it as a static int (checks on
  data values, such as NaN or label range, are skipped under tracing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import is_jax_array, is_numpy_array, is_torch_array

from ._array_api import concrete_bool, device, namespace, one_hot, supports_float64, to_numpy

__all__ = [
    "CollapseState",
    "ProbeState",
    "alignment",
    "cdnv",
    "class_mean_spectrum",
    "class_means",
    "collapse_init",
    "collapse_metrics",
    "collapse_report",
    "collapse_compute",
    "collapse_result",
    "metrics_to_host",
    "collapse_update",
    "embedding_spectrum",
    "equal_inner_product",
    "equiangularity",
    "equinorm",
    "etf_distance",
    "knn_accuracy",
    "max_angle",
    "mean_classifier_accuracy",
    "nc1",
    "nc1_quotient",
    "ncc_accuracy",
    "numerical_rank",
    "orthogonal_frame_distance",
    "probe_init",
    "probe_update",
    "rankme",
    "stable_rank",
    "streaming_collapse_report",
    "uniformity",
    "unit_norm",
    "within_class_variation",
    "zero_sum",
]

Array = Any

# --------------------------------------------------------------------------------------------------
# Input checks and dtypes
# --------------------------------------------------------------------------------------------------


def _linalg(xp: ModuleType) -> ModuleType:
    linalg = getattr(xp, "linalg", None)
    if linalg is None or not hasattr(linalg, "svdvals"):
        raise NotImplementedError(f"{xp.__name__} lacks the array-API linalg extension (linalg.svdvals, linalg.svd)")
    return linalg


def _compute_dtype(xp: ModuleType, like: Array) -> Any:
    """float64 where the backend has it (JAX needs jax_enable_x64), otherwise float32."""
    return xp.float64 if supports_float64(xp, device(like)) else xp.float32


def _check_embeddings(embeddings: Array, name: str = "embeddings") -> Array:
    """Validate an (N, d) real floating array without NaN/inf; return it in the compute dtype."""
    xp = namespace(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, d) array, got shape {tuple(embeddings.shape)}")
    if not xp.isdtype(embeddings.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {embeddings.dtype}")
    if embeddings.shape[0] < 1 or embeddings.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(embeddings.shape)}")
    # A NaN/inf makes its row sum non-finite: one cheap pass, the exact check only when that fails.
    if concrete_bool(xp.all(xp.isfinite(xp.sum(embeddings, axis=1)))) is False:
        if concrete_bool(xp.all(xp.isfinite(embeddings))) is False:
            raise ValueError(f"{name} contains NaN or infinite values")
    return xp.astype(embeddings, _compute_dtype(xp, embeddings), copy=False)


def _eager_num_classes(labels: Array, name: str) -> int:
    xp = namespace(labels)
    try:
        return int(xp.max(labels)) + 1
    except Exception as error:  # a tracer under jax.jit cannot be read
        if is_jax_array(labels):
            message = "num_classes=None reads max(labels) + 1 eagerly; under jax.jit pass num_classes"
            raise ValueError(message) from error
        raise


def _check_labels(labels: Array, num_rows: int, num_classes: int | None, name: str = "labels") -> tuple[Array, int]:
    """Validate 1-D integer labels matching N rows; return them and the number of classes."""
    xp = namespace(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {tuple(labels.shape)}")
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape[0] != num_rows:
        raise ValueError(f"{name} has {labels.shape[0]} entries but the embeddings have {num_rows} rows")
    if num_classes is None:
        num_classes = _eager_num_classes(labels, name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if concrete_bool(xp.all((labels >= 0) & (labels < num_classes))) is False:
        raise ValueError(f"{name} must lie in [0, num_classes={num_classes})")
    return labels, num_classes


def _prepare(embeddings: Array, labels: Array, num_classes: int | None) -> tuple[Array, Array, int]:
    data = _check_embeddings(embeddings)
    labels, num_classes = _check_labels(labels, data.shape[0], num_classes)
    return data, labels, num_classes


# --------------------------------------------------------------------------------------------------
# Small numerical helpers
# --------------------------------------------------------------------------------------------------


def _nonzero(x: Array) -> Array:
    """x with zeros replaced by ones: a denominator that never divides by zero."""
    xp = namespace(x)
    return xp.where(x > 0, x, xp.ones_like(x))


def _safe_ratio(numerator: Array, denominator: Array, tiny: Array, *, undefined: float) -> Array:
    """numerator / denominator; where the denominator is below `tiny`: 0 if the numerator is too, else `undefined`."""
    xp = namespace(numerator, denominator)
    defined = denominator > tiny
    ratio = numerator / xp.where(defined, denominator, xp.ones_like(denominator))
    fallback = xp.where(xp.abs(numerator) > tiny, xp.full_like(ratio, undefined), xp.zeros_like(ratio))
    return xp.where(defined, ratio, fallback)


def _squared_row_norms(x: Array) -> Array:
    """sum_j x_ij^2 per row, by vecdot (no (N, d) temporary of squares: three times faster than sum(x * x))."""
    return namespace(x).vecdot(x, x, axis=-1)


def _row_norms(x: Array) -> Array:
    return namespace(x).sqrt(_squared_row_norms(x))


def _normalize_rows(x: Array) -> Array:
    """Rows scaled to unit norm; all-zero rows stay zero."""
    norms = _row_norms(x)
    return x / _nonzero(norms)[:, None]


def _masked_mean(values: Array, mask: Array) -> Array:
    """Mean of values where mask holds; 0 when nothing is selected."""
    xp = namespace(values)
    count = xp.sum(xp.astype(mask, values.dtype))
    return xp.sum(xp.where(mask, values, xp.zeros_like(values))) / _nonzero(count)


def _masked_std(values: Array, mask: Array) -> Array:
    """Population standard deviation of values where mask holds; 0 when nothing is selected."""
    xp = namespace(values)
    centre = _masked_mean(values, mask)
    return xp.sqrt(_masked_mean((values - centre) ** 2, mask))


def _distinct_pairs(present: Array) -> Array:
    """(C, C) mask of ordered pairs a != b of non-empty classes."""
    xp = namespace(present)
    index = xp.arange(present.shape[0], device=device(present))
    return present[:, None] & present[None, :] & (index[:, None] != index[None, :])


# --------------------------------------------------------------------------------------------------
# Class statistics: the state every class-mean metric (and the streaming accumulator) is built from
# --------------------------------------------------------------------------------------------------


class CollapseState(NamedTuple):
    """Class statistics of the rows seen so far; memory O(C d + d^2). A checkpoint is just these arrays.

    counts (C,): rows per class; means (C, d): class means mu_c (zero rows for empty classes);
    within_scatter (d, d): sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T; class_scatter (C,):
    sum_{i in c} norm(h_i - mu_c)^2. within_scatter is None where a one-shot metric does not need it.
    The uncentred Gram H^T H (RankMe when streaming) is not stored: it equals
    within_scatter + M^T diag(counts) M, a sum of positive semi-definite terms (no cancellation).
    """

    counts: Array
    means: Array
    within_scatter: Array | None
    class_scatter: Array


def _index_labels(labels: Array) -> Array:
    """Labels in a dtype that can index every class (a uint8 label array cannot count past 255)."""
    xp = namespace(labels)
    return labels if xp.iinfo(labels.dtype).max >= 2**31 - 1 else xp.astype(labels, xp.int64)


def _sorted_segment_sums(values: Array, labels: Array, num_classes: int) -> Array:
    """Segment sums through the standard alone: sort rows by label, prefix sums, differences at the class edges.

    S_c = P[e_{c+1}] - P[e_c] with P the prefix sums of the sorted rows minus their column mean m (added back as
    n_c m): removing the common offset keeps the prefix sums, and so their rounding, at the size of the spread.
    """
    xp = namespace(values)
    labels = _index_labels(labels)
    order = xp.argsort(labels, stable=True)
    sorted_labels = xp.take(labels, order)
    classes = xp.arange(num_classes + 1, dtype=sorted_labels.dtype, device=device(labels))
    edges = xp.searchsorted(sorted_labels, classes)
    shift = xp.mean(values, axis=0)
    prefix = xp.cumulative_sum(xp.take(values, order, axis=0) - shift, axis=0, include_initial=True)
    counts = xp.astype(edges[1:] - edges[:-1], values.dtype)
    sums = xp.take(prefix, edges[1:], axis=0) - xp.take(prefix, edges[:-1], axis=0)
    return sums + xp.reshape(counts, (num_classes,) + (1,) * (values.ndim - 1)) * shift


def _numpy_segment_sums(values: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """np.bincount for 1-D values; for rows, sorted segments: one vectorized sum per class's block of rows.

    A loop over the non-empty classes, each a single `sum(axis=0)` (pairwise summation, about 20 us): ten times
    faster than `np.add.reduceat`, whose axis-0 loop does not vectorize along the rows, and than `np.add.at`.
    """
    if values.ndim == 1:
        return np.bincount(labels, weights=values, minlength=num_classes).astype(values.dtype, copy=False)
    order = np.argsort(labels, kind="stable")
    sorted_labels, sorted_values = labels[order], values[order]
    edges = np.flatnonzero(np.concatenate(([True], sorted_labels[1:] != sorted_labels[:-1], [True])))
    sums = np.zeros((num_classes, *values.shape[1:]), dtype=values.dtype)
    for start, stop in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        sums[sorted_labels[start]] = sorted_values[start:stop].sum(axis=0)
    return sums


def _segment_sums(values: Array, labels: Array, num_classes: int) -> Array:
    """(C, ...) per-class sums S_c = sum_{i: y_i = c} values_i: a scatter-add in O(N d), not a one-hot product.

    The standard has no scatter-add, so each namespace uses its own where it has one (torch index_add_,
    JAX .at[].add, which also runs under jit; NumPy sums over sorted segments), reached through the
    array's own methods or NumPy (no framework import); every other namespace (CuPy, array-api-strict) takes
    the portable sorted-segment prefix sums.
    """
    xp = namespace(values)
    shape = (num_classes, *values.shape[1:])
    if values.shape[0] == 0:
        return xp.zeros(shape, dtype=values.dtype, device=device(values))
    if is_torch_array(values):
        return values.new_zeros(shape).index_add_(0, labels.long(), values)
    if is_jax_array(values):
        return xp.zeros(shape, dtype=values.dtype, device=device(values)).at[labels].add(values)
    if is_numpy_array(values):
        return _numpy_segment_sums(values, labels, num_classes)
    return _sorted_segment_sums(values, labels, num_classes)


def _class_counts(labels: Array, num_classes: int, dtype: Any) -> Array:
    """n_c = number of rows with label c, in `dtype`."""
    xp = namespace(labels)
    return _segment_sums(xp.ones(labels.shape[0], dtype=dtype, device=device(labels)), labels, num_classes)


def _class_statistics(data: Array, labels: Array, num_classes: int, *, scatter: bool = False) -> CollapseState:
    """One pass over (N, d) rows: counts and class sums as segment sums, then centred scatters."""
    xp = namespace(data)
    counts = _class_counts(labels, num_classes, data.dtype)
    means = _segment_sums(data, labels, num_classes) / _nonzero(counts)[:, None]
    residual = data - xp.take(means, labels, axis=0)  # h_i - mu_{y_i}: a gather, O(N d)
    class_scatter = _segment_sums(_squared_row_norms(residual), labels, num_classes)
    return CollapseState(
        counts=counts,
        means=means,
        within_scatter=residual.T @ residual if scatter else None,
        class_scatter=class_scatter,
    )


def _merge(old: CollapseState, new: CollapseState) -> CollapseState:
    """Chan et al.'s pairwise update, per class and summed for the within-class scatter.

    n = n_a + n_b, delta = mu_b - mu_a, mu = mu_a + delta n_b / n, S = S_a + S_b + (n_a n_b / n) delta delta^T;
    summing S over classes gives the within-class scatter update Delta^T diag(n_a n_b / n) Delta.
    """
    xp = namespace(old.means)
    counts = old.counts + new.counts
    delta = new.means - old.means
    pair_weight = old.counts * new.counts / _nonzero(counts)
    return CollapseState(
        counts=counts,
        means=old.means + delta * (new.counts / _nonzero(counts))[:, None],
        within_scatter=old.within_scatter + new.within_scatter + (delta * pair_weight[:, None]).T @ delta,
        class_scatter=old.class_scatter + new.class_scatter + pair_weight * xp.sum(delta * delta, axis=1),
    )


class _ClassGeometry(NamedTuple):
    """The class means in the form the metrics use, with empty classes masked out."""

    present: Array  # (C,) bool: class has at least one row
    weight: Array  # (C,) 1.0 for present classes, 0.0 for empty ones
    num_present: Array  # C'
    means: Array  # (C, d) mu_c, zero rows for empty classes
    centred: Array  # (C, d) mu_c - mu_G, zero rows for empty classes
    num_rows: Array  # N
    tiny2: Array  # squared lengths below this are rounding noise: (max(C, d) eps)^2 mean_i norm(h_i)^2
    rtol: float  # max(C, d) * eps, the array-API default relative cut-off


def _geometry(state: CollapseState) -> _ClassGeometry:
    xp = namespace(state.means)
    num_classes, dim = state.means.shape
    present = state.counts > 0
    weight = xp.astype(present, state.means.dtype)
    num_present = xp.sum(weight)
    means = state.means * weight[:, None]
    global_mean = xp.sum(means, axis=0) / _nonzero(num_present)
    num_rows = xp.sum(state.counts)
    # mean_i norm(h_i)^2 = (sum_c n_c norm(mu_c)^2 + sum_c S_c) / N, from the statistics alone
    sq_norm_sum = xp.sum(state.counts * xp.sum(means * means, axis=1)) + xp.sum(state.class_scatter)
    mean_sq_norm = sq_norm_sum / _nonzero(num_rows)
    rtol = max(num_classes, dim) * float(xp.finfo(state.means.dtype).eps)
    return _ClassGeometry(
        present=present,
        weight=weight,
        num_present=num_present,
        means=means,
        centred=(means - global_mean[None, :]) * weight[:, None],
        num_rows=num_rows,
        tiny2=rtol**2 * mean_sq_norm,
        rtol=rtol,
    )


def _cosines(vectors: Array, tiny2: Array) -> Array:
    """(C, C) cosine similarities of the rows; 0 where a row is (numerically) zero."""
    norms = _row_norms(vectors)
    return _safe_ratio(vectors @ vectors.T, norms[:, None] * norms[None, :], tiny2, undefined=0.0)


def _simplex_offset(geometry: _ClassGeometry) -> Array:
    """1 / (C' - 1), the ETF's cosine magnitude (1 when C' < 2, where there are no pairs anyway)."""
    xp = namespace(geometry.num_present)
    return 1.0 / xp.where(geometry.num_present > 1, geometry.num_present - 1, xp.ones_like(geometry.num_present))


def _singular_value_cut(geometry: _ClassGeometry, singular_values: Array) -> Array:
    """Keep sigma_k > max(rtol sigma_1, rtol sqrt(C' mean norm(h)^2)): relative cut plus a rounding floor."""
    xp = namespace(singular_values)
    floor = xp.sqrt(geometry.num_present * geometry.tiny2)
    return xp.maximum(geometry.rtol * xp.max(singular_values), floor)


# --------------------------------------------------------------------------------------------------
# Metric kernels on class statistics (shared by the one-shot functions and the streaming result)
# --------------------------------------------------------------------------------------------------


def _unit_norm(g: _ClassGeometry) -> Array:
    xp = namespace(g.means)
    return xp.sum(g.weight * xp.abs(_row_norms(g.means) - 1.0)) / _nonzero(g.num_present)


def _zero_sum(g: _ClassGeometry) -> Array:
    xp = namespace(g.means)
    global_mean = xp.sum(g.means, axis=0) / _nonzero(g.num_present)
    return xp.sqrt(xp.sum(global_mean * global_mean))


def _equal_inner_product(g: _ClassGeometry) -> Array:
    xp = namespace(g.means)
    deviation = xp.abs(_cosines(g.means, g.tiny2) + _simplex_offset(g))
    return _masked_mean(deviation, _distinct_pairs(g.present))


class _MeanSpectrum(NamedTuple):
    """The one decomposition the class-mean spectrum and NC1 share: the thin SVD M~ = U diag(sigma) V^T."""

    singular_values: Array  # sigma, descending
    right: Array | None  # V^T (rows v_k); None when only the values were computed
    keep: Array  # sigma_k above the numerical-rank cut


def _mean_spectrum(g: _ClassGeometry, *, vectors: bool = True) -> _MeanSpectrum:
    """SVD of the small (C, d) matrix M~, once per report (svdvals alone when V is not needed)."""
    linalg = _linalg(namespace(g.centred))
    if vectors:
        _, singular_values, right = linalg.svd(g.centred, full_matrices=False)
    else:
        singular_values, right = linalg.svdvals(g.centred), None
    return _MeanSpectrum(singular_values, right, singular_values > _singular_value_cut(g, singular_values))


def _class_mean_spectrum(g: _ClassGeometry, spectrum: _MeanSpectrum) -> Array:
    xp = namespace(g.means)
    singular_values, keep = spectrum.singular_values, spectrum.keep
    largest = _nonzero(xp.max(singular_values))
    # cov(M) has eigenvalues sigma_k^2 / (C'-1): the log ratio is 2 log(sigma_k / sigma_1)
    log_ratio = 2.0 * xp.log(xp.where(keep, singular_values, largest) / largest)
    return xp.where(keep, log_ratio, xp.full_like(log_ratio, 2.0 * math.log(g.rtol)))


def _nc1(g: _ClassGeometry, state: CollapseState, spectrum: _MeanSpectrum) -> Array:
    """sum_k v_k^T Sigma_W v_k / sigma_k^2 over the kept right singular vectors of M~ = tr(Sigma_W Sigma_B^+) / C'."""
    xp = namespace(g.means)
    singular_values, right, keep = spectrum
    projected = xp.sum((right @ state.within_scatter) * right, axis=1) / _nonzero(g.num_rows)
    squared = xp.where(keep, singular_values * singular_values, xp.ones_like(singular_values))
    return xp.sum(xp.where(keep, projected / squared, xp.zeros_like(projected)))


def _nc1_quotient(g: _ClassGeometry, state: CollapseState) -> Array:
    xp = namespace(g.means)
    trace_within = xp.sum(state.class_scatter) / _nonzero(g.num_rows)
    trace_between = xp.sum(g.centred * g.centred) / _nonzero(g.num_present)
    return _safe_ratio(trace_within, trace_between, g.tiny2, undefined=math.inf)


def _cdnv(g: _ClassGeometry, state: CollapseState) -> Array:
    xp = namespace(g.means)
    variances = state.class_scatter / _nonzero(state.counts)
    sq_norms = xp.sum(g.centred * g.centred, axis=1)
    distances = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (g.centred @ g.centred.T)
    distances = xp.where(distances > 0, distances, xp.zeros_like(distances))
    ratio = _safe_ratio(variances[:, None] + variances[None, :], 2.0 * distances, 2.0 * g.tiny2, undefined=math.inf)
    return _masked_mean(ratio, _distinct_pairs(g.present))


def _equinorm(g: _ClassGeometry) -> Array:
    xp = namespace(g.means)
    norms = _row_norms(g.centred)
    mean = _masked_mean(norms, g.present)
    return _safe_ratio(_masked_std(norms, g.present), mean, xp.sqrt(g.tiny2), undefined=0.0)


def _equiangularity(g: _ClassGeometry) -> Array:
    return _masked_std(_cosines(g.centred, g.tiny2), _distinct_pairs(g.present))


def _max_angle(g: _ClassGeometry) -> Array:
    xp = namespace(g.means)
    deviation = xp.abs(_cosines(g.centred, g.tiny2) + _simplex_offset(g))
    return _masked_mean(deviation, _distinct_pairs(g.present))


def _normalized_gram_distance(vectors: Array, target: Array, g: _ClassGeometry) -> Array:
    """norm_F(V V^T / norm_F(V V^T) - target); an all-zero V V^T counts as 0 after normalizing."""
    xp = namespace(vectors)
    gram = vectors @ vectors.T
    gram_norm = xp.sqrt(xp.sum(gram * gram))
    normalized = _safe_ratio(gram, gram_norm, g.num_present * g.tiny2, undefined=0.0)
    difference = normalized - target
    return xp.sqrt(xp.sum(difference * difference))


def _class_identity(g: _ClassGeometry) -> tuple[Array, Array]:
    """(I restricted to present classes, mask of present pairs) as float (C, C) matrices."""
    xp = namespace(g.means)
    index = xp.arange(g.means.shape[0], device=device(g.means))
    identity = xp.astype(index[:, None] == index[None, :], g.means.dtype) * g.weight[None, :]
    return identity, g.weight[:, None] * g.weight[None, :]


def _etf_distance(g: _ClassGeometry) -> Array:
    xp = namespace(g.means)
    identity, pairs = _class_identity(g)
    centring = identity - pairs / _nonzero(g.num_present)  # I - 11^T/C' on the present classes
    target = centring / xp.sqrt(_nonzero(g.num_present - 1.0))
    return _normalized_gram_distance(g.centred, target, g)


def _orthogonal_frame_distance(g: _ClassGeometry) -> Array:
    xp = namespace(g.means)
    identity, _ = _class_identity(g)
    return _normalized_gram_distance(g.means, identity / xp.sqrt(_nonzero(g.num_present)), g)


# --------------------------------------------------------------------------------------------------
# Row-level statistics against fixed means: within-class variation and the two class-mean classifiers
# --------------------------------------------------------------------------------------------------


class ProbeState(NamedTuple):
    """Second-pass accumulator: statistics of rows against class means fixed in advance.

    class_means (C, d): the data's own class means (from a first pass), for the within-class variation;
    classifier_means (C, d) and classifier_present (C,): the means the mean-classifier and NCC use (a
    reference set's, or class_means); counts (C,), distance_sums (C,) = sum_{i in c} norm(h_i - mu_c),
    mean_classifier_hits and ncc_hits: numbers of correctly classified rows.
    """

    class_means: Array
    classifier_means: Array
    classifier_present: Array
    counts: Array
    distance_sums: Array
    mean_classifier_hits: Array
    ncc_hits: Array


# The (rows, C) score block of the classifiers holds about this many entries (64 MiB in float64).
PROBE_BLOCK_ENTRIES = 2**23


def _classifier_hits(data: Array, labels: Array, means: Array, present: Array) -> tuple[Array, Array]:
    """Correct predictions of the mean classifier argmax_c <h, mu_c> and the NCC argmin_c norm(h - mu_c)^2.

    norm(h - mu_c)^2 = norm(h)^2 - 2 <h, mu_c> + norm(mu_c)^2 and norm(h)^2 does not depend on c, so the NCC is
    argmax_c <h, mu_c> - norm(mu_c)^2 / 2 (the same numbers halved, exactly). Both read one product H mu^T, taken
    over blocks of rows so that it never holds N x C entries; a bias of -inf keeps absent classes out.
    """
    xp = namespace(data)
    zeros = xp.zeros(means.shape[0], dtype=data.dtype, device=device(data))
    absent = xp.full_like(zeros, -math.inf)
    mean_bias = xp.where(present, zeros, absent)[None, :]
    ncc_bias = xp.where(present, -0.5 * xp.sum(means * means, axis=1), absent)[None, :]
    mean_hits = ncc_hits = xp.zeros((), dtype=data.dtype, device=device(data))
    rows = max(1, PROBE_BLOCK_ENTRIES // means.shape[0])
    for start in range(0, data.shape[0], rows):  # blocks of rows bound memory; not a loop over classes
        stop = min(start + rows, data.shape[0])
        scores = data[start:stop, :] @ means.T  # <h, mu_c>
        block_labels = labels[start:stop]
        mean_hits = mean_hits + xp.sum(xp.astype(xp.argmax(scores + mean_bias, axis=1) == block_labels, data.dtype))
        ncc_hits = ncc_hits + xp.sum(xp.astype(xp.argmax(scores + ncc_bias, axis=1) == block_labels, data.dtype))
    return mean_hits, ncc_hits


def _row_probe(data: Array, labels: Array, probe: ProbeState) -> ProbeState:
    """The probe statistics of one batch (counts and sums only, means unchanged)."""
    xp = namespace(data)
    num_classes = probe.class_means.shape[0]
    distances = _row_norms(data - xp.take(probe.class_means, labels, axis=0))
    mean_hits, ncc_hits = _classifier_hits(data, labels, probe.classifier_means, probe.classifier_present)
    return probe._replace(
        counts=_class_counts(labels, num_classes, data.dtype),
        distance_sums=_segment_sums(distances, labels, num_classes),
        mean_classifier_hits=mean_hits,
        ncc_hits=ncc_hits,
    )


def _empty_probe(class_means: Array, classifier_means: Array, classifier_present: Array) -> ProbeState:
    xp = namespace(class_means)
    zeros = xp.zeros(class_means.shape[0], dtype=class_means.dtype, device=device(class_means))
    zero = xp.sum(zeros)
    return ProbeState(class_means, classifier_means, classifier_present, zeros, zeros, zero, zero)


def _add_probes(old: ProbeState, new: ProbeState) -> ProbeState:
    return old._replace(
        counts=old.counts + new.counts,
        distance_sums=old.distance_sums + new.distance_sums,
        mean_classifier_hits=old.mean_classifier_hits + new.mean_classifier_hits,
        ncc_hits=old.ncc_hits + new.ncc_hits,
    )


def _probe_metrics(probe: ProbeState) -> dict[str, Array]:
    xp = namespace(probe.counts)
    num_rows = _nonzero(xp.sum(probe.counts))
    mean_distances = probe.distance_sums / _nonzero(probe.counts)
    return {
        "within_class_variation": _masked_mean(mean_distances, probe.counts > 0),
        "mean_classifier_accuracy": probe.mean_classifier_hits / num_rows,
        "ncc_accuracy": probe.ncc_hits / num_rows,
    }


# --------------------------------------------------------------------------------------------------
# One-shot entry points
# --------------------------------------------------------------------------------------------------


def _statistics(embeddings: Array, labels: Array, num_classes: int | None, **needs: bool) -> CollapseState:
    data, labels, num_classes = _prepare(embeddings, labels, num_classes)
    return _class_statistics(data, labels, num_classes, **needs)


def _class_geometry(embeddings: Array, labels: Array, num_classes: int | None) -> _ClassGeometry:
    return _geometry(_statistics(embeddings, labels, num_classes))


def _reference_classifier(
    reference: tuple[Array, Array] | None, own: CollapseState, dim: int, num_classes: int
) -> tuple[Array, Array]:
    """(means, present) of the reference set, or of the data itself when reference is None."""
    if reference is None:
        return own.means, own.counts > 0
    if not isinstance(reference, tuple) or len(reference) != 2:
        raise TypeError("reference must be a tuple (reference_embeddings, reference_labels)")
    data = _check_embeddings(reference[0], "reference embeddings")
    if data.shape[1] != dim:
        raise ValueError(f"reference embeddings have dimension {data.shape[1]}, the embeddings {dim}")
    labels, _ = _check_labels(reference[1], data.shape[0], num_classes, "reference labels")
    stats = _class_statistics(data, labels, num_classes)  # data is already in the compute dtype
    return stats.means, stats.counts > 0


def _probe(
    embeddings: Array, labels: Array, num_classes: int | None, reference: tuple[Array, Array] | None
) -> ProbeState:
    data, labels, num_classes = _prepare(embeddings, labels, num_classes)
    own = _class_statistics(data, labels, num_classes)
    classifier_means, classifier_present = _reference_classifier(reference, own, data.shape[1], num_classes)
    return _row_probe(data, labels, _empty_probe(own.means, classifier_means, classifier_present))


def class_means(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """(C, d) class means mu_c = sum_{y_i = c} h_i / n_c; rows of empty classes are 0."""
    return _statistics(embeddings, labels, num_classes).means


def unit_norm(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """(1/C') sum_c abs(norm(mu_c) - 1): 0 when every class mean lies on the unit sphere."""
    return _unit_norm(_class_geometry(embeddings, labels, num_classes))


def zero_sum(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """norm((1/C') sum_c mu_c) = norm(mu_G): 0 when the class means sum to zero."""
    return _zero_sum(_class_geometry(embeddings, labels, num_classes))


def equal_inner_product(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """mean over a != b of abs(cos(mu_a, mu_b) + 1/(C'-1)), uncentred means (the paper's condition)."""
    return _equal_inner_product(_class_geometry(embeddings, labels, num_classes))


def within_class_variation(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """(1/C') sum_c mean_{i in c} norm(h_i - mu_c): 0 when every class collapses to its mean."""
    return _probe_metrics(_probe(embeddings, labels, num_classes, None))["within_class_variation"]


def class_mean_spectrum(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """log(s_k / s_1) for the min(C, d) singular values s_k of cov(M) (classes as observations), descending.

    Computed as 2 log(sigma_k / sigma_1) from svdvals of the centred means M~. Flat at 0 over C-1 values at
    neural collapse; values below the numerical-rank cut-off are reported as 2 log(rtol) (finite, not -inf).
    """
    geometry = _class_geometry(embeddings, labels, num_classes)
    return _class_mean_spectrum(geometry, _mean_spectrum(geometry, vectors=False))


def nc1(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """NC1 = tr(Sigma_W Sigma_B^+) / C', Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(.)^T, Sigma_B = M~^T M~ / C'.

    Evaluated in class space: with the thin SVD M~ = U diag(sigma) V^T, NC1 = sum_k v_k^T Sigma_W v_k / sigma_k^2
    over sigma_k above the cut-off max(C, d) eps sigma_1 (array-API default rtol; plus a rounding floor).
    No between-class spread (all means equal) gives 0, as the pseudo-inverse of 0 is 0.
    """
    state = _statistics(embeddings, labels, num_classes, scatter=True)
    geometry = _geometry(state)
    return _nc1(geometry, state, _mean_spectrum(geometry))


def nc1_quotient(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """tr(Sigma_W) / tr(Sigma_B); 0 when both are 0 (e.g. all rows identical), inf when only Sigma_B is 0."""
    state = _statistics(embeddings, labels, num_classes)
    return _nc1_quotient(_geometry(state), state)


def cdnv(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """Class-distance normalized variance: mean over a < b of (Var_a + Var_b) / (2 norm(mu_a - mu_b)^2).

    Var_c = mean_{i in c} norm(h_i - mu_c)^2 (0 for a single-row class). A pair with equal means counts 0 if
    both variances are 0, inf otherwise.
    """
    state = _statistics(embeddings, labels, num_classes)
    return _cdnv(_geometry(state), state)


def equinorm(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """NC2 equinorm: std_c norm(mu_c - mu_G) / mean_c norm(mu_c - mu_G) (population std; 0 if all means equal)."""
    return _equinorm(_class_geometry(embeddings, labels, num_classes))


def equiangularity(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """NC2 equiangularity: std over a != b of cos(mu_a - mu_G, mu_b - mu_G) (population std)."""
    return _equiangularity(_class_geometry(embeddings, labels, num_classes))


def max_angle(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """NC2 max-angle: mean over a != b of abs(cos(mu_a - mu_G, mu_b - mu_G) + 1/(C'-1)) (centred means)."""
    return _max_angle(_class_geometry(embeddings, labels, num_classes))


def etf_distance(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """norm_F(M~M~^T / norm_F(M~M~^T) - (I - 11^T/C') / sqrt(C'-1)), in [0, 2]; 1 when all means are equal."""
    return _etf_distance(_class_geometry(embeddings, labels, num_classes))


def orthogonal_frame_distance(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    """norm_F(MM^T / norm_F(MM^T) - I / sqrt(C')), uncentred means: 0 at an orthogonal frame."""
    return _orthogonal_frame_distance(_class_geometry(embeddings, labels, num_classes))


def mean_classifier_accuracy(
    embeddings: Array, labels: Array, /, *, num_classes: int | None = None, reference: tuple[Array, Array] | None = None
) -> Array:
    """Fraction of rows with argmax_c <h, mu_c> = y; means of `reference` = (embeddings, labels), else of the data."""
    return _probe_metrics(_probe(embeddings, labels, num_classes, reference))["mean_classifier_accuracy"]


def ncc_accuracy(
    embeddings: Array, labels: Array, /, *, num_classes: int | None = None, reference: tuple[Array, Array] | None = None
) -> Array:
    """Nearest-class-centre accuracy: argmin_c norm(h - mu_c) = y; means from `reference` or the data itself."""
    return _probe_metrics(_probe(embeddings, labels, num_classes, reference))["ncc_accuracy"]


def knn_accuracy(
    embeddings: Array,
    labels: Array,
    reference_embeddings: Array,
    reference_labels: Array,
    /,
    *,
    num_classes: int | None = None,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Array:
    """Weighted kNN accuracy (the usual SSL monitor): cosine similarity s to the reference rows, the k most
    similar vote for their class with weight exp(s / tau); predict the class with the largest total.

    k is clipped to the reference size; ties at the k-th similarity all vote. Queries run in chunks of
    `chunk_size` rows, so memory is O(chunk_size * N_ref).
    """
    data, labels, num_classes = _prepare(embeddings, labels, num_classes)
    reference = _check_embeddings(reference_embeddings, "reference_embeddings")
    if reference.shape[1] != data.shape[1]:
        raise ValueError(f"reference_embeddings have dimension {reference.shape[1]}, the embeddings {data.shape[1]}")
    reference_labels, _ = _check_labels(reference_labels, reference.shape[0], num_classes, "reference_labels")
    if k < 1 or temperature <= 0 or chunk_size < 1:
        got = f"k={k}, temperature={temperature}, chunk_size={chunk_size}"
        raise ValueError(f"need k >= 1, temperature > 0, chunk_size >= 1; got {got}")
    xp = namespace(data)
    k = min(k, reference.shape[0])
    queries, keys = _normalize_rows(data), _normalize_rows(xp.astype(reference, data.dtype))
    votes_per_class = one_hot(reference_labels, num_classes, dtype=data.dtype)
    hits = xp.zeros((), dtype=data.dtype, device=device(data))
    for start in range(0, data.shape[0], chunk_size):  # chunks of rows bound memory; not a loop over classes
        stop = min(start + chunk_size, data.shape[0])
        similarity = queries[start:stop, :] @ keys.T
        kth_largest = -xp.sort(-similarity, axis=1)[:, k - 1 : k]
        weights = xp.exp((similarity - 1.0) / temperature)  # cosines <= 1: shifted by the largest possible
        weights = xp.where(similarity >= kth_largest, weights, xp.zeros_like(weights))
        prediction = xp.argmax(weights @ votes_per_class, axis=1)
        hits = hits + xp.sum(xp.astype(prediction == labels[start:stop], data.dtype))
    return hits / data.shape[0]


def _singular_values(embeddings: Array) -> Array:
    data = _check_embeddings(embeddings)
    return _linalg(namespace(data)).svdvals(data)


def _rankme(singular_values: Array, eps: float) -> Array:
    xp = namespace(singular_values)
    p = singular_values / _nonzero(xp.sum(singular_values)) + eps
    return xp.exp(-xp.sum(p * xp.log(p)))


def rankme(embeddings: Array, /, *, eps: float = 1e-7) -> Array:
    """RankMe = exp(-sum_k p_k log p_k), p_k = sigma_k / sum(sigma) + eps, sigma = singular values of H (uncentred)."""
    return _rankme(_singular_values(embeddings), eps)


def numerical_rank(embeddings: Array, /, *, rtol: float | None = None) -> Array:
    """Number of singular values of H with sigma_k > rtol * sigma_1; rtol defaults to max(N, d) * eps."""
    singular_values = _singular_values(embeddings)
    xp = namespace(singular_values)
    if rtol is None:
        rtol = max(embeddings.shape) * float(xp.finfo(singular_values.dtype).eps)
    return xp.sum(xp.astype(singular_values > rtol * xp.max(singular_values), xp.int64))


def stable_rank(embeddings: Array, /) -> Array:
    """sum_k sigma_k^2 / sigma_1^2 = norm_F(H)^2 / norm_2(H)^2 (0 for an all-zero H)."""
    singular_values = _singular_values(embeddings)
    xp = namespace(singular_values)
    return xp.sum(singular_values**2) / _nonzero(xp.max(singular_values) ** 2)


def embedding_spectrum(embeddings: Array, /) -> Array:
    """log of the singular values of the covariance of the sphere-normalized rows (Jing et al. 2022), descending.

    Covariance = Z~^T Z~ / N with Z~ the centred normalized rows, computed as sigma_k(Z~)^2 / N from svdvals;
    values below (max(N, d) eps)^2 (rounding noise; the normalized rows have norm <= 1) are floored there.
    """
    data = _check_embeddings(embeddings)
    xp = namespace(data)
    rows = _normalize_rows(data)
    centred = rows - xp.mean(rows, axis=0)[None, :]
    singular_values = _linalg(xp).svdvals(centred)
    floor = (max(data.shape) * float(xp.finfo(data.dtype).eps)) ** 2
    variances = singular_values**2 / data.shape[0]
    return xp.log(xp.where(variances > floor, variances, xp.full_like(variances, floor)))


def alignment(embeddings: Array, positive_embeddings: Array, /) -> Array:
    """Wang & Isola alignment: mean_i norm(f(x_i) - f(x_i^+))^2 on sphere-normalized rows (row i pairs with row i)."""
    anchors = _normalize_rows(_check_embeddings(embeddings))
    positives = _normalize_rows(_check_embeddings(positive_embeddings, "positive_embeddings"))
    if positives.shape != anchors.shape:
        raise ValueError(f"positive_embeddings has shape {tuple(positives.shape)}, embeddings {tuple(anchors.shape)}")
    xp = namespace(anchors)
    difference = anchors - xp.astype(positives, anchors.dtype)
    return xp.mean(xp.sum(difference * difference, axis=1))


def uniformity(embeddings: Array, /, *, t: float = 2.0, chunk_size: int = 1024) -> Array:
    """Wang & Isola uniformity: log mean_{i<j} exp(-t norm(z_i - z_j)^2) on sphere-normalized rows.

    Chunks of `chunk_size` rows against all rows (memory O(chunk_size * N)); each chunk is a max-shifted
    log-sum-exp and the chunks are combined with a second shift.
    """
    rows = _normalize_rows(_check_embeddings(embeddings))
    num_rows = rows.shape[0]
    if num_rows < 2:
        raise ValueError("uniformity needs at least two rows in embeddings")
    xp = namespace(rows)
    column = xp.arange(num_rows, device=device(rows))
    chunk_max, chunk_sum = [], []
    for start in range(0, num_rows, chunk_size):  # chunks of rows bound memory
        block = rows[start : min(start + chunk_size, num_rows), :]
        row = xp.arange(start, start + block.shape[0], device=device(rows))
        sq_distance = xp.clip(2.0 - 2.0 * (block @ rows.T), 0.0, 4.0)  # unit rows: norm(a - b)^2 = 2 - 2 cos
        pairs = column[None, :] > row[:, None]  # j > i
        logits = xp.where(pairs, -t * sq_distance, xp.full_like(sq_distance, -4.0 * t))  # fill = the minimum
        shift = xp.max(logits)
        chunk_max.append(shift)
        chunk_sum.append(xp.sum(xp.where(pairs, xp.exp(logits - shift), xp.zeros_like(logits))))
    maxima, sums = xp.stack(chunk_max), xp.stack(chunk_sum)
    shift = xp.max(maxima)
    total = xp.sum(sums * xp.exp(maxima - shift))
    return xp.log(total) + shift - math.log(num_rows * (num_rows - 1) / 2)


# --------------------------------------------------------------------------------------------------
# Reports: one-shot and streaming
# --------------------------------------------------------------------------------------------------


def _gram_rankme(state: CollapseState) -> Array:
    """RankMe from sigma_k(H) = sqrt(eigvalsh(H^T H)), H^T H = S_W + M^T diag(n) M: a (d, d) eigenproblem, no SVD
    of the (N, d) rows. Exact for well-conditioned H; sigma_k below ~sqrt(eps) sigma_1 are resolved only to that.
    """
    xp = namespace(state.means)
    gram = state.within_scatter + (state.means * state.counts[:, None]).T @ state.means
    eigenvalues = _linalg(xp).eigvalsh(gram)
    singular_values = xp.sqrt(xp.where(eigenvalues > 0, eigenvalues, xp.zeros_like(eigenvalues)))
    return _rankme(singular_values, 1e-7)


def _class_mean_metrics(state: CollapseState) -> dict[str, Array]:
    """Every metric computable from the class statistics alone (the streamable ones)."""
    g = _geometry(state)
    spectrum = _mean_spectrum(g)
    return {
        "unit_norm": _unit_norm(g),
        "zero_sum": _zero_sum(g),
        "equal_inner_product": _equal_inner_product(g),
        "nc1": _nc1(g, state, spectrum),
        "nc1_quotient": _nc1_quotient(g, state),
        "cdnv": _cdnv(g, state),
        "equinorm": _equinorm(g),
        "equiangularity": _equiangularity(g),
        "max_angle": _max_angle(g),
        "etf_distance": _etf_distance(g),
        "orthogonal_frame_distance": _orthogonal_frame_distance(g),
        "spectrum": _class_mean_spectrum(g, spectrum),
    }


def collapse_metrics(
    embeddings: Array, labels: Array, /, *, num_classes: int | None = None, reference: tuple[Array, Array] | None = None
) -> dict[str, Array]:
    """`collapse_report` as arrays of the input's namespace (runs under jax.jit with a static num_classes)."""
    data, labels, num_classes = _prepare(embeddings, labels, num_classes)
    state = _class_statistics(data, labels, num_classes, scatter=True)
    classifier_means, classifier_present = _reference_classifier(reference, state, data.shape[1], num_classes)
    probe = _row_probe(data, labels, _empty_probe(state.means, classifier_means, classifier_present))
    metrics = _class_mean_metrics(state) | _probe_metrics(probe)
    metrics["rankme"] = _gram_rankme(state)
    return _ordered(metrics)


REPORT_KEYS = (
    "unit_norm",
    "zero_sum",
    "equal_inner_product",
    "within_class_variation",
    "nc1",
    "nc1_quotient",
    "cdnv",
    "equinorm",
    "equiangularity",
    "max_angle",
    "etf_distance",
    "orthogonal_frame_distance",
    "rankme",
    "ncc_accuracy",
    "mean_classifier_accuracy",
    "spectrum",
)
PROBE_KEYS = ("within_class_variation", "ncc_accuracy", "mean_classifier_accuracy")


def _ordered(metrics: dict[str, Array]) -> dict[str, Array]:
    return {key: metrics[key] for key in REPORT_KEYS if key in metrics}


def metrics_to_host(metrics: dict[str, Array]) -> dict[str, Any]:
    """Python floats, and the spectrum as a NumPy float64 array, in the report's key order (jax.jit sorts keys)."""
    host = {key: float(to_numpy(value)) for key, value in metrics.items() if key != "spectrum"}
    host["spectrum"] = np.asarray(to_numpy(metrics["spectrum"]), dtype=np.float64)
    return _ordered(host)


def collapse_report(
    embeddings: Array, labels: Array, /, *, num_classes: int | None = None, reference: tuple[Array, Array] | None = None
) -> dict[str, Any]:
    """Every collapse metric of (H, y) at once, as Python floats (and `spectrum` as a NumPy float64 array).

    Keys: unit_norm, zero_sum, equal_inner_product, within_class_variation, nc1, nc1_quotient, cdnv, equinorm,
    equiangularity, max_angle, etf_distance, orthogonal_frame_distance, rankme, ncc_accuracy,
    mean_classifier_accuracy, spectrum. The accuracies use the class means of `reference` =
    (reference_embeddings, reference_labels) when given, else those of `embeddings`. RankMe is read from
    eigvalsh of the (d, d) Gram, as in `collapse_result` (the `rankme` function takes svdvals of the rows).
    """
    return metrics_to_host(collapse_metrics(embeddings, labels, num_classes=num_classes, reference=reference))


def collapse_init(
    num_classes: int, dim: int, *, xp: ModuleType | None = None, dtype: Any = None, device: Any = None
) -> CollapseState:
    """Empty class statistics for streaming: counts, means (C, d) and the scatters, all zero.

    xp defaults to array_api_compat.numpy; dtype to float64 where the backend has it (else float32).
    Memory O(C d + d^2), independent of the number of rows.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if xp is None:
        import array_api_compat.numpy as xp
    if dtype is None:
        dtype = xp.float64 if supports_float64(xp, device) else xp.float32
    where = {} if device is None else {"device": device}
    return CollapseState(
        counts=xp.zeros(num_classes, dtype=dtype, **where),
        means=xp.zeros((num_classes, dim), dtype=dtype, **where),
        within_scatter=xp.zeros((dim, dim), dtype=dtype, **where),
        class_scatter=xp.zeros(num_classes, dtype=dtype, **where),
    )


def _batch(state_means: Array, batch_embeddings: Array, batch_labels: Array) -> tuple[Array, Array] | None:
    """A validated batch in the state's dtype, or None for a batch with no rows."""
    if batch_embeddings.ndim == 2 and batch_embeddings.shape[0] == 0:
        return None
    data = _check_embeddings(batch_embeddings, "batch_embeddings")
    num_classes, dim = state_means.shape
    if data.shape[1] != dim:
        raise ValueError(f"batch_embeddings have dimension {data.shape[1]}, the state was initialized with dim={dim}")
    labels, _ = _check_labels(batch_labels, data.shape[0], num_classes, "batch_labels")
    return namespace(data).astype(data, state_means.dtype, copy=False), labels


def collapse_update(state: CollapseState, batch_embeddings: Array, batch_labels: Array, /) -> CollapseState:
    """Merge one batch into the class statistics (Chan et al.: exact, order-independent up to rounding)."""
    batch = _batch(state.means, batch_embeddings, batch_labels)
    if batch is None:
        return state
    return _merge(state, _class_statistics(*batch, state.means.shape[0], scatter=True))


def probe_init(state: CollapseState, /, *, reference: CollapseState | None = None) -> ProbeState:
    """Start the second pass: distances to the class means of `state`, classifiers with `reference`'s means
    (the class statistics of a reference set, accumulated the same way) or, when None, with `state`'s."""
    classifier = state if reference is None else reference
    return _empty_probe(state.means, classifier.means, classifier.counts > 0)


def probe_update(probe: ProbeState, batch_embeddings: Array, batch_labels: Array, /) -> ProbeState:
    """Add one batch's distances to its class mean and its mean-classifier / NCC hits."""
    batch = _batch(probe.class_means, batch_embeddings, batch_labels)
    if batch is None:
        return probe
    return _add_probes(probe, _row_probe(*batch, probe))


def collapse_compute(state: CollapseState, probe: ProbeState | None = None, /) -> dict[str, Array]:
    """`collapse_result` as 0-d arrays (and the spectrum as a 1-D array) of the state's namespace.

    A pure function of the state, so it runs under jax.jit (the state must have seen at least one row:
    under tracing that cannot be checked). Same keys and formulas as `collapse_result`.
    """
    metrics = _class_mean_metrics(state) | {"rankme": _gram_rankme(state)}
    if probe is not None:
        metrics |= _probe_metrics(probe)
    return _ordered(metrics)


def collapse_result(state: CollapseState, probe: ProbeState | None = None, /) -> dict[str, Any]:
    """The streaming `collapse_report`, as Python floats (and `spectrum` as a NumPy float64 array).

    From `state` alone (one pass): unit_norm, zero_sum, equal_inner_product, nc1, nc1_quotient, cdnv, equinorm,
    equiangularity, max_angle, etf_distance, orthogonal_frame_distance, rankme, spectrum. With a `probe`
    (second pass, seeded by `probe_init(state)`): also within_class_variation, ncc_accuracy and
    mean_classifier_accuracy, i.e. every key of `collapse_report`. RankMe here uses sigma_k = sqrt(eigvalsh(H^T H))
    of the streamed uncentred Gram (no N x d matrix to take svdvals of): exact for well-conditioned H, but
    singular values below ~sqrt(eps) sigma_1 are resolved only to ~sqrt(eps) sigma_1.
    """
    xp = namespace(state.means)
    if concrete_bool(xp.sum(state.counts) > 0) is False:
        raise ValueError("state has seen no rows: call collapse_update first")
    return metrics_to_host(collapse_compute(state, probe))


def streaming_collapse_report(
    batches: Callable[[], Iterable[tuple[Array, Array]]],
    num_classes: int,
    /,
    *,
    reference_batches: Callable[[], Iterable[tuple[Array, Array]]] | None = None,
    second_pass: bool = True,
) -> dict[str, Any]:
    """`collapse_report` for data given as batches: `batches()` returns a fresh iterable of (H_b, y_b).

    Pass 1 accumulates the class statistics; pass 2 (second_pass=True, calls `batches()` again) adds the
    within-class variation and the accuracies, against the class means of `reference_batches()` if given.
    """
    state = _accumulate(batches(), num_classes)
    if not second_pass:
        return collapse_result(state)
    reference = None if reference_batches is None else _accumulate(reference_batches(), num_classes)
    probe = probe_init(state, reference=reference)
    for batch_embeddings, batch_labels in batches():
        probe = probe_update(probe, batch_embeddings, batch_labels)
    return collapse_result(state, probe)


def _accumulate(batches: Iterable[tuple[Array, Array]], num_classes: int) -> CollapseState:
    state = None
    for batch_embeddings, batch_labels in batches:
        if state is None:  # the namespace, device and dimension come from the first batch
            xp = namespace(batch_embeddings)
            state = collapse_init(num_classes, batch_embeddings.shape[1], xp=xp, device=device(batch_embeddings))
        state = collapse_update(state, batch_embeddings, batch_labels)
    if state is None:
        raise ValueError("batches() yielded no batch")
    return state
