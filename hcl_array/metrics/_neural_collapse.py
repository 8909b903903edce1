"""Neural-collapse metrics: the geometry of the class means (NC1, NC2, the simplex ETF and its distances).

Each public function validates its input, builds the class statistics once and reads one kernel on them; the
kernels (`_unit_norm`, `_nc1`, ...) are shared with the streaming result, so both give the same numbers.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._array_api import device, namespace
from ._common import (
    _distinct_pairs,
    _linalg,
    _masked_mean,
    _masked_std,
    _nonzero,
    _prepare,
    _row_norms,
    _safe_ratio,
)
from ._state import CollapseState, _class_statistics

Array = Any


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


def _statistics(embeddings: Array, labels: Array, num_classes: int | None, **needs: bool) -> CollapseState:
    data, labels, num_classes = _prepare(embeddings, labels, num_classes)
    return _class_statistics(data, labels, num_classes, **needs)


def _class_geometry(embeddings: Array, labels: Array, num_classes: int | None) -> _ClassGeometry:
    return _geometry(_statistics(embeddings, labels, num_classes))


def class_means(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""The $(C, d)$ class means $\mu_c = \frac{1}{n_c} \sum_{i:\, y_i = c} h_i$; rows of empty classes are 0."""
    return _statistics(embeddings, labels, num_classes).means


def unit_norm(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""Unit-norm condition $\frac{1}{C'} \sum_c \bigl\lvert \lVert \mu_c \rVert - 1 \bigr\rvert$.

    0 when every class mean lies on the unit sphere (at neural collapse).
    """
    return _unit_norm(_class_geometry(embeddings, labels, num_classes))


def zero_sum(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""Zero-sum condition $\lVert \mu_G \rVert = \bigl\lVert \frac{1}{C'} \sum_c \mu_c \bigr\rVert$.

    0 when the class means sum to zero (at neural collapse).
    """
    return _zero_sum(_class_geometry(embeddings, labels, num_classes))


def equal_inner_product(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""The paper's equal-inner-product condition, on the uncentred means:

    $$\operatorname{mean}_{a \ne b} \Bigl\lvert \cos(\mu_a, \mu_b) + \frac{1}{C' - 1} \Bigr\rvert,$$

    0 at a simplex ETF.
    """
    return _equal_inner_product(_class_geometry(embeddings, labels, num_classes))


def class_mean_spectrum(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""$\log(s_k / s_1)$ for the $\min(C, d)$ eigenvalues $s_k$ of $\operatorname{cov}(M)$ (classes as observations).

    Descending; computed as $2 \log(\sigma_k / \sigma_1)$ from the singular values of the centred means $\tilde M$.
    Flat at 0 over $C - 1$ values at neural collapse; values below the numerical-rank cut-off are reported as
    $2 \log(\mathrm{rtol})$ (finite, not $-\infty$).
    """
    geometry = _class_geometry(embeddings, labels, num_classes)
    return _class_mean_spectrum(geometry, _mean_spectrum(geometry, vectors=False))


def nc1(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""Within-class variability relative to the between-class spread (Papyan et al. 2020):

    $$\mathrm{NC1} = \frac{1}{C'} \operatorname{tr}\bigl(\Sigma_W \Sigma_B^{+}\bigr), \qquad
      \Sigma_W = \frac{1}{N} \sum_i (h_i - \mu_{y_i})(h_i - \mu_{y_i})^\top, \qquad
      \Sigma_B = \frac{1}{C'} \tilde M^\top \tilde M.$$

    Evaluated in class space, $\sum_k v_k^\top \Sigma_W v_k / \sigma_k^2$ over the thin SVD of $\tilde M$, keeping
    $\sigma_k$ above $\max(C, d)\, \varepsilon\, \sigma_1$. 0 at neural collapse, and 0 without between-class
    spread (the pseudo-inverse of 0 is 0).
    """
    state = _statistics(embeddings, labels, num_classes, scatter=True)
    geometry = _geometry(state)
    return _nc1(geometry, state, _mean_spectrum(geometry))


def nc1_quotient(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""$\operatorname{tr}(\Sigma_W) / \operatorname{tr}(\Sigma_B)$: 0 at neural collapse.

    0 when both traces are 0 (e.g. all rows identical), $+\infty$ when only $\Sigma_B$ is 0.
    """
    state = _statistics(embeddings, labels, num_classes)
    return _nc1_quotient(_geometry(state), state)


def cdnv(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""Class-distance normalized variance (Galanti et al. 2022):

    $$\operatorname{mean}_{a < b} \frac{\sigma_a^2 + \sigma_b^2}{2 \lVert \mu_a - \mu_b \rVert^2}, \qquad
      \sigma_c^2 = \operatorname{mean}_{i \in c} \lVert h_i - \mu_c \rVert^2,$$

    0 at neural collapse. A pair with equal means counts 0 if both variances are 0, $+\infty$ otherwise.
    """
    state = _statistics(embeddings, labels, num_classes)
    return _cdnv(_geometry(state), state)


def equinorm(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""NC2 equinorm: $\operatorname{std}_c r_c / \operatorname{mean}_c r_c$, $r_c = \lVert \mu_c - \mu_G \rVert$.

    Population std; 0 at neural collapse, and 0 if all means are equal.
    """
    return _equinorm(_class_geometry(embeddings, labels, num_classes))


def equiangularity(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""NC2 equiangularity: $\operatorname{std}_{a \ne b} \cos(\mu_a - \mu_G, \mu_b - \mu_G)$ (population std).

    0 at neural collapse.
    """
    return _equiangularity(_class_geometry(embeddings, labels, num_classes))


def max_angle(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""NC2 max-angle, on the centred means:

    $$\operatorname{mean}_{a \ne b} \Bigl\lvert \cos(\mu_a - \mu_G, \mu_b - \mu_G) + \frac{1}{C' - 1} \Bigr\rvert,$$

    0 at neural collapse.
    """
    return _max_angle(_class_geometry(embeddings, labels, num_classes))


def etf_distance(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""Distance of the centred means' Gram to the simplex ETF's, in $[0, 2]$:

    $$\Bigl\lVert \frac{\tilde M \tilde M^\top}{\lVert \tilde M \tilde M^\top \rVert_F}
      - \frac{I - \mathbf{1}\mathbf{1}^\top / C'}{\sqrt{C' - 1}} \Bigr\rVert_F,$$

    0 at neural collapse, 1 when all means are equal.
    """
    return _etf_distance(_class_geometry(embeddings, labels, num_classes))


def orthogonal_frame_distance(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""Distance of the uncentred means' Gram to an orthogonal frame's:

    $$\Bigl\lVert \frac{M M^\top}{\lVert M M^\top \rVert_F} - \frac{I}{\sqrt{C'}} \Bigr\rVert_F,$$

    0 at an orthogonal frame, $\sqrt{2 - 2\sqrt{1 - 1/C}}$ at a simplex ETF.
    """
    return _orthogonal_frame_distance(_class_geometry(embeddings, labels, num_classes))
