"""Contrastive losses with hard negatives, written once against the Python array API.

Every loss is one member of a single family (see docs/losses.md and shared/spec/losses.md):

    s_ij = g(z_i) . g(z_j) / tau
    q_i(n) = eta(s_in) / sum_{m in N(i)} eta(s_im)                   (hardening, n in N(i))
    c_i = log lambda_i + log E_{n ~ q_i} exp(s_in)                   (one masked log-sum-exp per anchor)
    l_ij = softplus(c_i - s_ij) = log(1 + lambda_i * E_q[exp(s_in - s_ij)]),   j in P(i)

and the loss is a mean of l_ij over positive pairs. Sampled negatives replace q_i by the empirical
distribution of k draws, which is the same formula with log-counts as weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from . import _array_api as aa
from .hardening import ExponentialTilt, Hardening, Uniform, as_hardening

Array = Any
Normalize = Literal["sphere", "ball", "none"]
Candidates = Literal["other-ids", "all"]
Reduction = Literal["mean", "anchor_mean", "none"]

__all__ = [
    "contrastive_loss",
    "scl",
    "hscl",
    "ucl",
    "hucl",
    "supcon",
    "ntxent",
    "debiased_hcl",
    "value_and_grad",
    "normalize_embeddings",
    "PAPER_PRESET",
]

#: The semantics of the paper's released code (github.com/rjiang03/HCL): unit-ball clip, tau = 1, the
#: anchor is its own positive (and, for UCL, one of its negatives), k = 256 negatives drawn with
#: replacement from the detached tilted distribution and averaged (lambda = 1), mean over all pairs.
PAPER_PRESET: dict[str, Any] = {
    "normalize": "ball",
    "temperature": 1.0,
    "include_self": True,
    "negatives": "sampled",
    "k": 256,
    "negative_reduction": "mean",
    "reduction": "mean",
    "detach_weights": True,
}

#: NumPy, CuPy and torch inputs of the common configurations (uniform or exponential weights, expected
#: negatives, a scalar reduction) go through the fused kernel `hcl_array.fused`: the same values in a
#: fraction of the time and memory. On torch it is differentiable once; set this to False to run the
#: array-API code instead (autograd through it allows double backward, forward mode, functorch).
USE_FUSED_KERNEL = True

_NORMALIZE = ("sphere", "ball", "none")
_CANDIDATES = ("other-ids", "all")
_REDUCTIONS = ("mean", "anchor_mean", "none")
_NEGATIVES = ("expected", "sampled")
_NEGATIVE_REDUCTIONS = ("sum", "mean")
_FORMS = ("infonce", "supcon", "debiased")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(repr(a) for a in allowed)}")
    return value


# --------------------------------------------------------------------------------------------------
# Input checks


def _flatten_views(z: Array, ids: Array | None, xp: Any) -> tuple[Array, Array]:
    """(B, V, d) views -> (V*B, d) rows, view-major (all first views, then all second views...)."""
    if z.ndim == 3:
        batch, views, dim = z.shape
        rows = xp.reshape(xp.permute_dims(z, (1, 0, 2)), (views * batch, dim))
        if ids is None:
            ids = xp.arange(batch, device=aa.device(z))
        elif ids.ndim != 1 or ids.shape[0] != batch:
            raise ValueError(
                f"with (B, V, d) embeddings, ids/labels must have shape (B,) = ({batch},), got {tuple(ids.shape)}"
            )
        return rows, xp.concat([ids] * views)
    if z.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, d) or (B, V, d), got {z.ndim} dimensions {tuple(z.shape)}")
    if ids is None:
        raise ValueError("labels/ids are required with (N, d) embeddings (pass (B, V, d) views to use instance ids)")
    return z, ids


def _check_inputs(z: Array, ids: Array | None) -> tuple[Any, Array, Array]:
    if not aa.is_array(z):
        raise TypeError(f"embeddings must be an array-API array (numpy, torch, jax, cupy), got {type(z).__name__}")
    if ids is not None and not aa.is_array(ids):
        raise TypeError(f"labels/ids must be an array of integers, got {type(ids).__name__}")
    xp = aa.namespace(z) if ids is None else aa.namespace(z, ids)
    if not xp.isdtype(z.dtype, "real floating"):
        raise TypeError(f"embeddings must be a real floating array, got dtype {z.dtype}")
    if ids is not None and not xp.isdtype(ids.dtype, "integral"):
        raise TypeError(f"labels/ids must be integers, got dtype {ids.dtype} (cast class labels with astype)")
    z, ids = _flatten_views(z, ids, xp)
    if ids.ndim != 1 or ids.shape[0] != z.shape[0]:
        raise ValueError(
            f"labels/ids must have shape (N,) = ({z.shape[0]},) to match embeddings, got {tuple(ids.shape)}"
        )
    return xp, z, ids


def _reject_non_finite(z: Array, xp: Any) -> None:
    if not _all_finite(z, xp):
        raise ValueError("embeddings contain NaN or Inf; check the encoder output (or pass check_finite=False)")


def _all_finite(z: Array, xp: Any) -> bool:
    """False when z holds a NaN or an Inf (True under jax.jit, where values are not concrete).

    One sum decides almost always (NaN and Inf propagate into it); only a non-finite sum, which a huge
    but finite z can also give, pays for the elementwise check. The sum is four times cheaper.
    """
    # NumPy warns when a huge finite z overflows the sum (the slow path then decides); nothing else does
    with np.errstate(over="ignore", invalid="ignore") if isinstance(z, np.ndarray) else contextlib.nullcontext():
        total = aa.concrete_bool(xp.isfinite(xp.sum(z, dtype=aa.accumulation_dtype(xp, z.dtype))))
    return total is not False or aa.concrete_bool(xp.all(xp.isfinite(z))) is not False


def _check_scalar(name: str, value: float, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return value


# --------------------------------------------------------------------------------------------------
# Building blocks


def _norm_floor(mode: str, dtype: Any, xp: Any) -> float:
    """The norm below which g leaves a row unscaled: 1 for the ball clip, a tiny guard against 0 for the sphere."""
    return 1.0 if mode == "ball" else 1e-12 if dtype == xp.float64 else 1e-6


def normalize_embeddings(z: Array, mode: Normalize = "ball") -> Array:
    """g(z): "sphere" z/||z||, "ball" z/max(1, ||z||) (the paper's unit-ball clip), "none" z."""
    xp = aa.namespace(z)
    _choice("normalize", mode, _NORMALIZE)
    if mode == "none":
        return z
    norm = xp.linalg.vector_norm(z, axis=-1, keepdims=True)
    floor = _norm_floor(mode, z.dtype, xp)
    return z / xp.maximum(norm, xp.full_like(norm, floor))


def _normalize_vjp(z: Array, u: Array, grad_u: Array, mode: str) -> Array:
    """Pull a gradient with respect to u = g(z) back to z.

    (v - u (u.v)) / ||z|| on the rows g projects, v / floor on the rows it leaves unscaled.
    """
    if mode == "none":
        return grad_u
    xp = aa.namespace(z)
    norm = xp.linalg.vector_norm(z, axis=-1, keepdims=True)
    floor = _norm_floor(mode, z.dtype, xp)
    # rows that g leaves unscaled (norm <= floor) have no radial part to remove: their factor is 0
    radial = xp.sum(u * grad_u, axis=-1, keepdims=True) * xp.astype(norm > floor, u.dtype)
    return (grad_u - u * radial) / xp.maximum(norm, xp.full_like(norm, floor))


def _counts_from_uniforms(weights: Array, support: Array, uniforms: Array) -> Array:
    """Counts c_in of k draws per anchor from q_i (proportional to `weights` on `support`), by inverse CDF.

    c_in = F_i(cdf_in) - F_i(cdf_i,n-1) with F_i(t) = #{m : u_im < t}. One global 1-D searchsorted
    does every row at once: row i is shifted by 2i, so rows never overlap (cdf and u lie in [0, 1]).
    """
    xp = aa.namespace(weights, uniforms)
    n, k = uniforms.shape
    dtype = uniforms.dtype
    q = xp.where(support, xp.astype(weights, dtype), xp.zeros((n, n), dtype=dtype, device=aa.device(weights)))
    cdf = xp.cumulative_sum(q, axis=1)
    total = cdf[:, -1:]
    cdf = cdf / xp.where(total > 0, total, xp.ones_like(total))
    offsets = 2.0 * xp.astype(xp.arange(n, device=aa.device(uniforms)), dtype)[:, None]
    draws = xp.reshape(xp.sort(uniforms, axis=1) + offsets, (-1,))
    below = xp.searchsorted(draws, xp.reshape(cdf + offsets, (-1,)), side="left")
    below = xp.reshape(below, (n, n)) - xp.astype(xp.arange(n, device=aa.device(uniforms)), below.dtype)[:, None] * k
    previous = xp.concat([xp.zeros_like(below[:, :1]), below[:, :-1]], axis=1)
    return xp.where(total > 0, below - previous, xp.zeros_like(below))


def _uniforms(rng: Any, uniforms: Array | None, shape: tuple[int, int], xp: Any, like: Array) -> Array:
    """U(0, 1) draws for sampled negatives: given, or from a NumPy generator (same numbers on every backend)."""
    dtype = xp.float64 if aa.supports_float64(xp, aa.device(like)) else xp.float32
    if uniforms is not None:
        if tuple(uniforms.shape) != shape:
            raise ValueError(f"uniforms must have shape (N, k) = {shape}, got {tuple(uniforms.shape)}")
        return xp.asarray(uniforms, dtype=dtype, device=aa.device(like))  # also takes NumPy draws
    if rng is None:
        raise ValueError("negatives='sampled' needs a random source: pass rng=<seed or numpy Generator> or uniforms=")
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return xp.asarray(generator.random(shape), dtype=dtype, device=aa.device(like))


@dataclass
class _Pieces:
    """Everything the forward pass computed that the analytic backward pass reuses."""

    u: Array
    similarity: Array
    support: Array
    log_weights: Array
    log_normalizer: Array  # LSE(log w) per anchor
    log_tilted: Array  # LSE(log w + s) per anchor
    pair_weights: Array  # dL/dl_ij from the reduction
    dl_dc: Array
    dl_ds: Array


def _pair_losses(
    form: str,
    anchor_term: Array,
    similarity: Array,
    log_lambda: Array,
    tau_plus: float,
    temperature: float,
    part: Literal["both", "value", "grad"] = "both",
) -> tuple[Array | None, Array | None, Array | None]:
    """l_ij from c_i and s_ij, with dl/dc_i and dl/ds_ij (direct), for each loss form.

    `part` skips what the caller does not use (None in its place): the tiled forward pass needs only
    l_ij, its backward pass only the derivatives, and each is an elementwise pass over a (tile, N) block.
    """
    xp = aa.namespace(similarity)
    c = anchor_term[:, None]
    if form == "supcon":  # l = c - s (a log-softmax: no "1 +", the positive is among the candidates)
        if part == "value":
            return c - similarity, None, None
        ones = xp.ones_like(similarity)
        return (c - similarity if part == "both" else None), ones, -ones
    if form == "infonce":
        return _softplus_and_slope(c - similarity, part, 1.0, -1.0)
    # Robinson et al.: Ng = max((M E_q[e^s] - tau+ M e^{s_pos}) / (1 - tau+), M e^{-1/tau});
    # l = softplus(log Ng - s_pos)
    floor = log_lambda[:, None] - 1.0 / temperature
    if tau_plus > 0:
        ratio_log = math.log(tau_plus) + log_lambda[:, None] + similarity - c  # log(tau+ M e^{s_pos} / e^c)
        debiasable = ratio_log < 0
        ratio = xp.exp(xp.where(debiasable, ratio_log, -1.0))  # the placeholder keeps log1p(-ratio) finite
        unclamped = c + xp.log1p(-ratio) - math.log1p(-tau_plus)
        use = debiasable & (unclamped > floor)
        log_ng = xp.where(use, unclamped, floor)
        dg_dc = xp.where(use, 1.0 / (1.0 - ratio), 0.0)
        dg_ds = xp.where(use, -ratio / (1.0 - ratio), 0.0)
    else:
        use = c > floor
        log_ng = xp.where(use, c, floor) + xp.zeros_like(similarity)
        dg_dc = xp.astype(use, similarity.dtype) + xp.zeros_like(similarity)
        dg_ds = 0.0
    return _softplus_and_slope(log_ng - similarity, part, dg_dc, dg_ds - 1.0)


def _softplus_and_slope(x: Array, part: str, dx_dc: Any, dx_ds: Any) -> tuple[Array | None, Array | None, Array | None]:
    """softplus(x) and, by the chain rule through x(c, s), its derivatives sigmoid(x) dx/dc and sigmoid(x) dx/ds."""
    xp = aa.namespace(x)
    value = aa.softplus(x)
    if part == "value":
        return value, None, None
    sig = xp.exp(x - value)  # sigmoid(x) = exp(x - softplus(x)): one pass, and x - softplus(x) <= 0
    return (value if part == "both" else None), sig * dx_dc, sig * dx_ds


def _pair_masks(
    row_ids: Array, col_ids: Array, first_row: Any, *, candidates: str, include_self: bool
) -> tuple[Array, Array]:
    """Positives P(i) and negative candidates N(i) of anchors first_row, first_row + 1, ... against every column.

    The dense path passes all rows (first_row = 0); the tiled path one block of anchor rows at a time.
    """
    xp = aa.namespace(row_ids, col_ids)
    same = row_ids[:, None] == col_ids[None, :]
    rows = first_row + xp.arange(row_ids.shape[0], device=aa.device(row_ids))  # first_row may be traced (lax.scan)
    not_self = rows[:, None] != xp.arange(col_ids.shape[0], device=aa.device(col_ids))[None, :]
    positives = same if include_self else same & not_self
    if candidates == "other-ids":
        candidate_mask = ~same
    else:
        candidate_mask = xp.ones_like(same) if include_self else not_self
    return positives, candidate_mask


def _hardening_weights(
    hardening: Hardening, similarity: Array, candidate_mask: Array, detach: bool
) -> tuple[Array, Array]:
    """log eta on the support {n in N(i) : eta(s_in) > 0}, and the support.

    Off the support log eta is 0, not -inf, so no -inf enters a gradient.
    """
    xp = aa.namespace(similarity)
    log_eta = hardening.log_weights(similarity, candidate_mask)
    if getattr(hardening, "positive", False):  # eta > 0 everywhere: every candidate is in the support
        support, log_weights = candidate_mask, log_eta
    else:
        support = candidate_mask & (log_eta > -math.inf)
        log_weights = xp.where(support, log_eta, 0.0)
    return (aa.stop_gradient(log_weights) if detach else log_weights), support


def _anchor_terms(
    log_weights: Array,
    support: Array,
    similarity: Array,
    candidate_mask: Array,
    *,
    k: int | None,
    negative_reduction: str,
) -> tuple[Array, Array, Array, Array, Array]:
    """c_i = log lambda_i + LSE_n(log w_in + s_in) - LSE_n(log w_in), from one anchor's full row of candidates.

    Returns (c, log lambda, LSE(log w), LSE(log w + s), has negatives), each of shape (rows,).
    """
    xp = aa.namespace(similarity)
    log_normalizer, has_negatives = aa.masked_logsumexp(log_weights, support)
    log_tilted, _ = aa.masked_logsumexp(log_weights + similarity, support)
    num_candidates = xp.sum(xp.astype(candidate_mask, similarity.dtype), axis=1)
    if negative_reduction == "mean":
        log_lambda = xp.zeros_like(num_candidates)
    elif k is not None:
        log_lambda = xp.full_like(num_candidates, math.log(k))
    else:
        log_lambda = xp.log(xp.maximum(num_candidates, xp.ones_like(num_candidates)))
    return log_lambda + log_tilted - log_normalizer, log_lambda, log_normalizer, log_tilted, has_negatives


def _similarity_grad(
    pair_weights: Array,
    dl_dc: Array,
    dl_ds: Array,
    log_weights: Array,
    similarity: Array,
    support: Array,
    log_tilted: Array,
    log_normalizer: Array | None,
    slope: float | None,
) -> Array:
    """dL/ds_in = w_in dl/ds_in + r_i p_in (+ slope r_i (p_in - q_in)),  r_i = sum_j w_ij dl/dc_ij.

    p_i is the tilted softmax over the support of (log w_in + s_in), q_i the weights' own softmax; the
    slope term is the gradient through undetached exponential weights (d log eta / ds = slope).
    """
    xp = aa.namespace(similarity)
    anchor_grad = xp.sum(pair_weights * dl_dc, axis=1)
    # -inf (exp: 0) off the support, before exp: there log w + s may be anything, even overflow.
    tilted = xp.exp(xp.where(support, log_weights + similarity - log_tilted[:, None], -math.inf))
    dl_dsim = pair_weights * dl_ds + anchor_grad[:, None] * tilted
    if slope:
        weights = xp.exp(xp.where(support, log_weights - log_normalizer[:, None], -math.inf))
        dl_dsim = dl_dsim + slope * anchor_grad[:, None] * (tilted - weights)
    return dl_dsim


def _scaled_gram(rows: Array, columns: Array, temperature: float) -> Array:
    """s = rows @ columns^T / tau (the division skipped at the paper's tau = 1: one pass less over N x N)."""
    gram = rows @ columns.T
    return gram if temperature == 1.0 else gram / temperature


def _forward(
    z: Array,
    ids: Array,
    xp: Any,
    *,
    form: str,
    candidates: str,
    hardening: Hardening,
    temperature: float,
    normalize: str,
    negatives: str,
    k: int | None,
    negative_reduction: str,
    include_self: bool,
    reduction: str,
    detach_weights: bool,
    tau_plus: float,
    rng: Any,
    uniforms: Array | None,
    need_grad: bool,
) -> tuple[Array, _Pieces]:
    n = z.shape[0]
    u = normalize_embeddings(z, normalize)
    similarity = _scaled_gram(u, u, temperature)

    positives, candidate_mask = _pair_masks(ids, ids, 0, candidates=candidates, include_self=include_self)
    log_weights, support = _hardening_weights(hardening, similarity, candidate_mask, detach_weights)
    if negatives == "sampled":
        log_norm, _ = aa.masked_logsumexp(aa.stop_gradient(log_weights), support)
        probabilities = xp.exp(aa.stop_gradient(log_weights) - log_norm[:, None])
        counts = _counts_from_uniforms(probabilities, support, _uniforms(rng, uniforms, (n, k), xp, z))
        support = counts > 0
        log_weights = xp.log(xp.where(support, xp.astype(counts, similarity.dtype), xp.ones_like(similarity)))

    anchor_term, log_lambda, log_normalizer, log_tilted, has_negatives = _anchor_terms(
        log_weights, support, similarity, candidate_mask, k=k, negative_reduction=negative_reduction
    )
    pair_loss, dl_dc, dl_ds = _pair_losses(
        form, anchor_term, similarity, log_lambda, tau_plus, temperature, part="both" if need_grad else "value"
    )
    pair_counts = xp.sum(xp.astype(positives, similarity.dtype), axis=1)
    # An anchor without negatives has l = 0: a zero weight (l_ij is finite everywhere, so no NaN).
    anchor_scale = _anchor_scale(pair_counts, reduction) * xp.astype(has_negatives, similarity.dtype)
    pair_weights = xp.astype(positives, similarity.dtype) * anchor_scale[:, None]
    weighted = pair_loss * pair_weights
    value = xp.sum(weighted, axis=1) if reduction == "none" else xp.sum(weighted)

    pieces = _Pieces(
        u=u,
        similarity=similarity,
        support=support,
        log_weights=log_weights,
        log_normalizer=log_normalizer,
        log_tilted=log_tilted,
        pair_weights=pair_weights,
        dl_dc=dl_dc,
        dl_ds=dl_ds,
    )
    return value, pieces


def _anchor_scale(pair_counts: Array, reduction: str) -> Array:
    """The weight of each of anchor i's pairs in the loss: 1/#pairs ("mean"), 1/(|P(i)| #anchors) ("anchor_mean"),
    1/|P(i)| ("none", per-anchor values). `pair_counts` holds |P(i)| for every anchor of the batch."""
    return _row_weight(pair_counts, reduction) / _batch_divisor(pair_counts, reduction)


def _row_weight(pair_counts: Array, reduction: str) -> Array:
    """The part of `_anchor_scale` an anchor's own |P(i)| decides: 1 ("mean"), else 1/|P(i)|."""
    xp = aa.namespace(pair_counts)
    if reduction == "mean":
        return xp.ones_like(pair_counts)
    return 1.0 / xp.maximum(pair_counts, xp.ones_like(pair_counts))


def _batch_divisor(pair_counts: Array, reduction: str) -> Array | float:
    """The part of `_anchor_scale` the whole batch decides: #pairs ("mean"), #anchors with pairs
    ("anchor_mean"), 1 ("none"), at least 1. A blocked pass applies it once, after the last block."""
    xp = aa.namespace(pair_counts)
    if reduction == "none":
        return 1.0
    count = xp.sum(pair_counts) if reduction == "mean" else xp.sum(xp.astype(pair_counts > 0, pair_counts.dtype))
    return xp.maximum(count, xp.ones_like(count))


def _backward(z: Array, pieces: _Pieces, *, normalize: str, temperature: float, slope: float | None) -> Array:
    """dL/dz from the forward pieces: the analytic VJP of the whole family, in the array API.

    dL/ds_ij = w_ij dl/ds_ij (positives) + r_i p_in (candidates), r_i = sum_j w_ij dl/dc_ij,
    p_i = softmax over the support of (log w_in + s_in); with undetached exponential weights the
    candidate term gains beta r_i (p_in - q_in). Then dL/du = (G + G^T) u / tau, pulled back through g.
    """
    p = pieces
    dl_dsim = _similarity_grad(
        p.pair_weights, p.dl_dc, p.dl_ds, p.log_weights, p.similarity, p.support, p.log_tilted, p.log_normalizer, slope
    )
    grad_u = ((dl_dsim + dl_dsim.T) @ p.u) / temperature
    return _normalize_vjp(z, p.u, grad_u, normalize)


# --------------------------------------------------------------------------------------------------
# Public API


def contrastive_loss(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    candidates: Candidates = "other-ids",
    hardening: Hardening | Callable[[Array], Array] | None = None,
    temperature: float = 1.0,
    normalize: Normalize = "ball",
    negatives: Literal["expected", "sampled"] = "expected",
    k: int | None = None,
    negative_reduction: Literal["sum", "mean"] = "sum",
    include_self: bool = False,
    reduction: Reduction = "mean",
    detach_weights: bool = True,
    rng: int | np.random.Generator | None = None,
    uniforms: Array | None = None,
    return_grad: bool = False,
    check_finite: bool = True,
    tau_plus: float = 0.0,
    form: Literal["infonce", "supcon", "debiased"] = "infonce",
    tile: int | Literal["auto"] | None = "auto",
) -> Array | tuple[Array, Array]:
    """The general hard-negative contrastive loss that every named loss is one call of.

        l_ij = log(1 + lambda_i * E_{n ~ q_i}[exp(s_in - s_ij)]),   j in P(i),  q_i(n) ~ eta(s_in), n in N(i)

    computed as softplus(log lambda_i + LSE_n(log q_i(n) + s_in) - s_ij) in log space.

    Args:
        embeddings: (N, d) rows, or (B, V, d) views flattened view-major (row v*B + b is view v of b).
        ids: (N,) integer labels or instance ids ((B,) with views; None with views means instance ids).
        candidates: negatives N(i): "other-ids" (rows whose id differs) or "all" (every other row,
            the unsupervised losses; with include_self also the anchor itself).
        hardening: eta, a `hcl_array.hardening` object or a callable eta(s) (None: eta = 1).
        temperature: tau > 0; s_ij = g(z_i).g(z_j) / tau.
        normalize: g: "sphere", "ball" (unit-ball clip) or "none".
        negatives: "expected" (exact expectation under q) or "sampled" (k draws per anchor with
            replacement, shared by that anchor's positive pairs).
        k: number of negatives: None = all candidates. lambda = k (or |N(i)| when None).
        negative_reduction: "sum" (lambda as above) or "mean" (lambda = 1, the paper's code).
        include_self: the anchor is its own positive (and a candidate when candidates="all").
        reduction: "mean" over all positive pairs, "anchor_mean" (mean over anchors with positives of
            the mean over their pairs), or "none" (per-anchor mean over its pairs, 0 without pairs).
        detach_weights: treat q as a constant in the backward pass (the paper's code).
        rng: random source for sampled negatives: a seed or a NumPy Generator (the same draws on
            every backend).
        uniforms: instead of rng, an (N, k) array of U(0, 1) numbers (use this under jax.jit).
        return_grad: also return dL/dembeddings from the analytic VJP (for NumPy and CuPy training).
        check_finite: reject NaN/Inf embeddings (skipped automatically under jax.jit).
        tau_plus: the class prior of false negatives, for `debiased_hcl`.
        form: "infonce" (softplus, the family above), "supcon" (log-softmax, l = c_i - s_ij) or
            "debiased" (Robinson et al.); the named losses choose it.
        tile: memory-efficient evaluation: blocks of `tile` anchor rows against all columns, O(tile * N)
            memory instead of O(N^2), same values and gradients. "auto" (default): the fused kernel
            (`hcl_array.fused`: NumPy, CuPy, torch) in blocks of about 2^24 entries at every N; the
            array-API code (`hcl_array.tiled`) tiled above N = 8192 rows when the configuration allows
            it (expected negatives, a built-in hardening function), dense otherwise. None: one block
            (dense); an integer: that many rows per block (ValueError when the configuration needs
            the dense path).

    Returns:
        The loss (a 0-d array, or (N,) with reduction="none") in float32 for half-precision input,
        else in the input's dtype; with return_grad, (loss, gradient shaped like embeddings).
    """
    xp, z, ids = _check_inputs(embeddings, ids)
    temperature = _check_scalar("temperature", temperature, positive=True)
    _choice("candidates", candidates, _CANDIDATES)
    _choice("normalize", normalize, _NORMALIZE)
    _choice("negatives", negatives, _NEGATIVES)
    _choice("negative_reduction", negative_reduction, _NEGATIVE_REDUCTIONS)
    _choice("reduction", reduction, _REDUCTIONS)
    _choice("form", form, _FORMS)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
        raise ValueError(f"k must be a positive integer or None (all candidates), got {k!r}")
    if negatives == "sampled" and k is None:
        raise ValueError("negatives='sampled' needs k, the number of negatives drawn per anchor (the paper uses 256)")
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must be in [0, 1) (the class prior of a false negative), got {tau_plus}")
    hardening = as_hardening(hardening)
    dtype = aa.accumulation_dtype(xp, z.dtype)
    z_compute = xp.astype(z, dtype, copy=False)  # nothing below writes into it
    if return_grad and reduction == "none":
        raise ValueError("return_grad needs a scalar loss: use reduction='mean' or 'anchor_mean'")

    from . import fused, tiled  # here, not at the top: both build on this module's helpers

    n = z.shape[0]
    rows_per_tile = tiled.resolve_tile(tile, n, hardening=hardening, negatives=negatives, detach_weights=detach_weights)
    config = tiled.TiledConfig(
        # the kernel's blocks beat one (N, N) block at every N: tile="auto" means cache-sized blocks there
        tile=tiled.auto_tile(n) if tile == "auto" else rows_per_tile or n,
        form=form,
        candidates=candidates,
        hardening=hardening,
        temperature=temperature,
        normalize=normalize,
        k=None if k is None else int(k),
        negative_reduction=negative_reduction,
        include_self=include_self,
        reduction=reduction,
        tau_plus=float(tau_plus),
        slope=0.0 if detach_weights else float(getattr(hardening, "slope", None) or 0.0),
    )
    if USE_FUSED_KERNEL and n > 0 and negatives == "expected" and fused.supports(config) is None:
        result = fused.fused_loss(z_compute, ids, config, return_grad=return_grad)
        if result is not None:
            # A NaN or Inf in z always reaches the kernel's value (fused.value_and_grad), so one scalar
            # test replaces a pass over z; only a non-finite value pays for the full check.
            if check_finite and not bool(xp.isfinite(result[0] if return_grad else result)):
                _reject_non_finite(z, xp)
            return _restore_views(embeddings, *result, xp) if return_grad else result
    if check_finite:
        _reject_non_finite(z, xp)
    if rows_per_tile is not None:
        result = tiled.tiled_loss(z_compute, ids, config, return_grad=return_grad)
        return _restore_views(embeddings, *result, xp) if return_grad else result

    value, pieces = _forward(
        z_compute,
        ids,
        xp,
        form=form,
        candidates=candidates,
        hardening=hardening,
        temperature=temperature,
        normalize=normalize,
        negatives=negatives,
        k=None if k is None else int(k),
        negative_reduction=negative_reduction,
        include_self=include_self,
        reduction=reduction,
        detach_weights=detach_weights,
        tau_plus=float(tau_plus),
        rng=rng,
        uniforms=uniforms,
        need_grad=return_grad,
    )
    if not return_grad:
        return value
    slope = 0.0
    if not detach_weights and negatives == "expected":
        slope = getattr(hardening, "slope", None)
        if slope is None:
            raise NotImplementedError(
                f"analytic gradient through the weights of {hardening!r} is unknown: use detach_weights=True"
            )
    grad = _backward(z_compute, pieces, normalize=normalize, temperature=temperature, slope=slope)
    return _restore_views(embeddings, value, grad, xp)


def _restore_views(embeddings: Array, value: Array, grad: Array, xp: Any) -> tuple[Array, Array]:
    """(value, gradient) with the gradient in the embeddings' own layout and dtype ((B, V, d) views un-flattened)."""
    if embeddings.ndim == 3:
        batch, views, dim = embeddings.shape
        grad = xp.permute_dims(xp.reshape(grad, (views, batch, dim)), (1, 0, 2))
    return value, xp.astype(grad, embeddings.dtype, copy=False)


def scl(
    embeddings: Array, labels: Array, /, *, temperature: float = 1.0, normalize: Normalize = "ball", **options: Any
) -> Any:
    """Supervised contrastive loss (the paper's SCL): negatives are the other classes, eta = 1.

    l_ij = log(1 + lambda * mean_{n: y_n != y_i} exp(s_in - s_ij)),  j != i with y_j = y_i.
    """
    return contrastive_loss(
        embeddings, labels, candidates="other-ids", temperature=temperature, normalize=normalize, **options
    )


def hscl(
    embeddings: Array,
    labels: Array,
    /,
    *,
    beta: float = 1.0,
    temperature: float = 1.0,
    normalize: Normalize = "ball",
    hardening: Hardening | Callable[[Array], Array] | None = None,
    **options: Any,
) -> Any:
    """Hard-negative supervised contrastive loss (HSCL).

    l_ij = log(1 + lambda * E_{n ~ q_i} exp(s_in - s_ij)),  q_i(n) proportional to exp(beta * s_in)
    over the anchor's other-class rows (or to `hardening`'s eta when one is given).
    """
    return contrastive_loss(
        embeddings,
        labels,
        candidates="other-ids",
        hardening=_tilt(beta, hardening),
        temperature=temperature,
        normalize=normalize,
        **options,
    )


def ucl(
    embeddings: Array, ids: Array, /, *, temperature: float = 1.0, normalize: Normalize = "ball", **options: Any
) -> Any:
    """Unsupervised contrastive loss (UCL): positives share the id, negatives are every other row.

    l_ij = log(1 + lambda * mean_{n != i} exp(s_in - s_ij)); negatives may share the anchor's class.
    """
    return contrastive_loss(embeddings, ids, candidates="all", temperature=temperature, normalize=normalize, **options)


def hucl(
    embeddings: Array,
    ids: Array,
    /,
    *,
    beta: float = 1.0,
    temperature: float = 1.0,
    normalize: Normalize = "ball",
    hardening: Hardening | Callable[[Array], Array] | None = None,
    **options: Any,
) -> Any:
    """Hard-negative unsupervised contrastive loss (HUCL): UCL with q_i(n) ~ exp(beta * s_in), n != i."""
    return contrastive_loss(
        embeddings,
        ids,
        candidates="all",
        hardening=_tilt(beta, hardening),
        temperature=temperature,
        normalize=normalize,
        **options,
    )


def supcon(
    embeddings: Array,
    labels: Array,
    /,
    *,
    temperature: float = 0.1,
    normalize: Normalize = "sphere",
    reduction: Reduction = "anchor_mean",
    **options: Any,
) -> Any:
    """SupCon "L_out" (Khosla et al. 2020), as pytorch-metric-learning's SupConLoss.

    l_i = -(1/|P(i)|) sum_{j in P(i)} log( exp(s_ij) / sum_{a != i} exp(s_ia) ), mean over anchors.
    """
    return contrastive_loss(
        embeddings,
        labels,
        candidates="all",
        form="supcon",
        temperature=temperature,
        normalize=normalize,
        reduction=reduction,
        **options,
    )


def ntxent(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    temperature: float = 0.5,
    normalize: Normalize = "sphere",
    **options: Any,
) -> Any:
    """NT-Xent (SimCLR): l_ij = -log( e^{s_ij} / (e^{s_ij} + sum_{n: id_n != id_i} e^{s_in}) ).

    Pass (B, 2, d) views (instance ids implied) or (N, d) rows with instance ids.
    """
    return contrastive_loss(
        embeddings, ids, candidates="other-ids", temperature=temperature, normalize=normalize, **options
    )


def debiased_hcl(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    temperature: float = 0.5,
    normalize: Normalize = "sphere",
    **options: Any,
) -> Any:
    """Debiased hard-negative loss of Robinson et al. (2021).

    Ng = max((M E_q[e^s] - tau_plus M e^{s_pos}) / (1 - tau_plus), M e^{-1/tau}),  M = |N(i)| (2B - 2),
    q ~ exp(beta s);  l = -log(e^{s_pos} / (e^{s_pos} + Ng)).
    """
    return contrastive_loss(
        embeddings,
        ids,
        candidates="other-ids",
        form="debiased",
        hardening=_tilt(beta, None),
        tau_plus=tau_plus,
        temperature=temperature,
        normalize=normalize,
        **options,
    )


def _tilt(beta: float, hardening: Hardening | Callable[[Array], Array] | None) -> Hardening:
    if hardening is not None:
        return as_hardening(hardening)
    beta = _check_scalar("beta", beta, positive=False)
    return Uniform() if beta == 0 else ExponentialTilt(beta)


def value_and_grad(loss: Callable[..., Any]) -> Callable[..., tuple[Array, Array]]:
    """`loss` returning (value, dL/dembeddings) from the analytic VJP: how NumPy and CuPy users train.

    >>> value, grad = value_and_grad(hscl)(z, labels, beta=5.0)
    """

    def wrapped(embeddings: Array, ids: Array | None = None, /, **options: Any) -> tuple[Array, Array]:
        return loss(embeddings, ids, return_grad=True, **options)

    wrapped.__name__ = f"value_and_grad_{getattr(loss, '__name__', 'loss')}"
    wrapped.__doc__ = f"(value, gradient) of {getattr(loss, '__name__', 'loss')}."
    return wrapped
