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
    r"""RankMe (Garrido et al. 2023), the effective rank of $H$:

    $$\exp\Bigl(-\sum_k p_k \log p_k\Bigr), \qquad p_k = \frac{\sigma_k}{\sum_j \sigma_j} + \varepsilon,$$

    with $\sigma_k$ the singular values of $H$ (uncentred).
    """
    return _rankme(_singular_values(embeddings), eps)


def numerical_rank(embeddings: Array, /, *, rtol: float | None = None) -> Array:
    r"""The number of singular values of $H$ with $\sigma_k > \mathrm{rtol}\, \sigma_1$.

    rtol defaults to $\max(N, d)\, \varepsilon$.
    """
    singular_values = _singular_values(embeddings)
    xp = namespace(singular_values)
    if rtol is None:
        rtol = max(embeddings.shape) * float(xp.finfo(singular_values.dtype).eps)
    return xp.sum(xp.astype(singular_values > rtol * xp.max(singular_values), xp.int64))


def stable_rank(embeddings: Array, /) -> Array:
    r"""$\sum_k \sigma_k^2 / \sigma_1^2 = \lVert H \rVert_F^2 / \lVert H \rVert_2^2$ (0 for an all-zero $H$)."""
    singular_values = _singular_values(embeddings)
    xp = namespace(singular_values)
    return xp.sum(singular_values**2) / _nonzero(xp.max(singular_values) ** 2)


def embedding_spectrum(embeddings: Array, /) -> Array:
    r"""The log eigenvalues of the covariance of the sphere-normalized rows (Jing et al. 2022), descending.

    The covariance is $\tilde Z^\top \tilde Z / N$ with $\tilde Z$ the centred normalized rows, computed as
    $\sigma_k(\tilde Z)^2 / N$; values below $(\max(N, d)\, \varepsilon)^2$ (rounding noise) are floored there.
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
    r"""Wang & Isola alignment $\frac{1}{N} \sum_i \lVert z_i - z_i^+ \rVert^2$ on sphere-normalized rows.

    Row $i$ of `embeddings` and row $i$ of `positive_embeddings` are a positive pair.
    """
    anchors = _normalize_rows(_check_embeddings(embeddings))
    positives = _normalize_rows(_check_embeddings(positive_embeddings, "positive_embeddings"))
    if positives.shape != anchors.shape:
        raise ValueError(f"positive_embeddings has shape {tuple(positives.shape)}, embeddings {tuple(anchors.shape)}")
    xp = namespace(anchors)
    difference = anchors - xp.astype(positives, anchors.dtype)
    return xp.mean(xp.sum(difference * difference, axis=1))


def uniformity(embeddings: Array, /, *, t: float = 2.0, chunk_size: int = 1024) -> Array:
    r"""Wang & Isola uniformity $\log \operatorname{mean}_{i < j} e^{-t \lVert z_i - z_j \rVert^2}$ (unit rows).

    Chunks of `chunk_size` rows against all rows (memory $O(\text{chunk\_size} \cdot N)$); each chunk is a
    max-shifted log-sum-exp, and the chunks are combined with a second shift.
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
