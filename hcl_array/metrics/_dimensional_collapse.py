"""Dimensional-collapse metrics: the spectrum of the embeddings themselves (RankMe, ranks, uniformity)."""

from __future__ import annotations

import math
from typing import Any

from .._array_api import device, namespace
from ._common import _check_embeddings, _linalg, _nonzero, _normalize_rows
from ._state import CollapseState

Array = Any


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


def _gram_rankme(state: CollapseState) -> Array:
    """RankMe from sigma_k(H) = sqrt(eigvalsh(H^T H)), H^T H = S_W + M^T diag(n) M: a (d, d) eigenproblem, no SVD
    of the (N, d) rows. Exact for well-conditioned H; sigma_k below ~sqrt(eps) sigma_1 are resolved only to that.
    """
    xp = namespace(state.means)
    gram = state.within_scatter + (state.means * state.counts[:, None]).T @ state.means
    eigenvalues = _linalg(xp).eigvalsh(gram)
    singular_values = xp.sqrt(xp.where(eigenvalues > 0, eigenvalues, xp.zeros_like(eigenvalues)))
    return _rankme(singular_values, 1e-7)
