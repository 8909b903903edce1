"""The formulas every path of the loss shares, written once against the Python array API.

    s_ij = g(z_i) . g(z_j) / tau
    q_i(n) = eta(s_in) / sum_{m in N(i)} eta(s_im)                   (hardening, n in N(i))
    c_i = log lambda_i + log E_{n ~ q_i} exp(s_in)                   (one masked log-sum-exp per anchor)
    l_ij = softplus(c_i - s_ij) = log(1 + lambda_i * E_q[exp(s_in - s_ij)]),   j in P(i)

The dense path (`dense.py`) applies them to the whole (N, N) matrix, the tiled path (`tiled.py`) to
blocks of anchor rows; both call these functions, so the two cannot drift apart. The fused kernel
(`fused.py`) computes the same formulas in place and is tested against them.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Literal

import numpy as np

from . import _array_api as aa
from .config import LossConfig, Normalize, choice
from .hardening import Hardening

Array = Any

__all__ = [
    "anchor_scale",
    "anchor_terms",
    "batch_divisor",
    "check_similarity_range",
    "counts_from_uniforms",
    "hardening_weights",
    "norm_floor",
    "normalize_embeddings",
    "normalize_vjp",
    "overflow_error",
    "pair_losses",
    "pair_masks",
    "row_norms",
    "row_weight",
    "sampled_log_weights",
    "scaled_gram",
    "similarity_grad",
    "softplus_and_slope",
    "uniform_draws",
]


def norm_floor(mode: str, dtype: Any, xp: Any) -> float:
    """The norm below which g leaves a row unscaled: 1 for the ball clip, a tiny guard against 0 for the sphere."""
    return 1.0 if mode == "ball" else 1e-12 if dtype == xp.float64 else 1e-6


def row_norms(z: Array) -> Array:
    """||z_i|| as a (N, 1) column, = m_i ||z_i / m_i|| with m_i = max_d |z_id|: no overflow and no underflow
    (a float32 row of 1e20 entries has a finite norm, though its sum of squares overflows)."""
    xp = aa.namespace(z)
    peak = xp.max(xp.abs(z), axis=-1, keepdims=True)
    peak = xp.where(peak > 0, peak, xp.ones_like(peak))
    # an Inf entry makes its row NaN (inf / inf), which the callers report as a bad input; NumPy would warn
    with np.errstate(invalid="ignore") if isinstance(z, np.ndarray) else contextlib.nullcontext():
        return peak * xp.linalg.vector_norm(z / peak, axis=-1, keepdims=True)


def normalize_embeddings(z: Array, mode: Normalize = "ball") -> Array:
    """g(z): "sphere" z/||z||, "ball" z/max(1, ||z||) (the paper's unit-ball clip), "none" z."""
    xp = aa.namespace(z)
    choice("normalize", mode)
    if mode == "none":
        return z
    norm = row_norms(z)
    floor = norm_floor(mode, z.dtype, xp)
    return z / xp.maximum(norm, xp.full_like(norm, floor))


def normalize_vjp(z: Array, u: Array, grad_u: Array, mode: str) -> Array:
    """Pull a gradient with respect to u = g(z) back to z.

    (v - u (u.v)) / ||z|| on the rows g projects, v / floor on the rows it leaves unscaled.
    """
    if mode == "none":
        return grad_u
    xp = aa.namespace(z)
    norm = row_norms(z)
    floor = norm_floor(mode, z.dtype, xp)
    # rows that g leaves unscaled (norm <= floor) have no radial part to remove: their factor is 0
    radial = xp.sum(u * grad_u, axis=-1, keepdims=True) * xp.astype(norm > floor, u.dtype)
    return (grad_u - u * radial) / xp.maximum(norm, xp.full_like(norm, floor))


def counts_from_uniforms(weights: Array, support: Array, uniforms: Array) -> Array:
    """Counts c_in of k draws per anchor from q_i (proportional to `weights` on `support`), by inverse CDF.

    c_in = F_i(cdf_in) - F_i(cdf_i,n-1) with F_i(t) = #{m : u_im < t}: each row's CDF is searched in
    that row's own sorted uniforms (`searchsorted_rows`), so every row keeps its dtype's resolution. (One
    global search with row i shifted by 2i lost it in float32: beyond row 4096 of N = 8192, 43% of the
    draws fell in another column.) Draw m lands in the first column n with cdf_in > u_im.
    """
    xp = aa.namespace(weights, uniforms)
    n, _ = uniforms.shape
    columns = weights.shape[1]  # N, or the global batch for a block of anchors (hcl_array.distributed)
    # float64 where the device has it: the running sums then round less
    dtype = xp.float64 if aa.supports_float64(xp, aa.device(uniforms)) else uniforms.dtype
    uniforms = xp.astype(uniforms, dtype, copy=False)
    q = xp.where(support, xp.astype(weights, dtype), xp.zeros((n, columns), dtype=dtype, device=aa.device(weights)))
    cdf = xp.cumulative_sum(q, axis=1)
    total = cdf[:, -1:]
    cdf = cdf / xp.where(total > 0, total, xp.ones_like(total))
    below = aa.searchsorted_rows(xp.sort(uniforms, axis=1), cdf, side="left")
    previous = xp.concat([xp.zeros_like(below[:, :1]), below[:, :-1]], axis=1)
    return xp.where(total > 0, below - previous, xp.zeros_like(below))


def sampled_log_weights(log_weights: Array, support: Array, uniforms: Array) -> tuple[Array, Array]:
    """log c_in, the draw counts of k negatives per anchor from the detached q_i (`uniforms`: (rows, k)),
    and their support {n : c_in > 0}; the dense, distributed and naive paths share these draws."""
    xp = aa.namespace(log_weights)
    log_weights = aa.stop_gradient(log_weights)
    log_norm, _ = aa.masked_logsumexp(log_weights, support)
    # -inf (exp: 0) off the support, before exp: there log w may be anything (beta s_ii of an anchor
    # without candidates, say), even beyond the range of exp
    probabilities = xp.exp(xp.where(support, log_weights - log_norm[:, None], -math.inf))
    counts = counts_from_uniforms(probabilities, support, uniforms)
    support = counts > 0
    log_counts = xp.log(xp.where(support, xp.astype(counts, log_weights.dtype), xp.ones_like(log_weights)))
    return log_counts, support


def uniform_draws(rng: Any, uniforms: Array | None, shape: tuple[int, int], xp: Any, like: Array) -> Array:
    """U(0, 1) draws for sampled negatives: given, or from a NumPy generator (same numbers on every backend).

    Given uniforms keep float64 where the device has it. Drawn ones come in float64 for float64 input and
    in float32 otherwise (the kernel's inverse CDF sorts and compares them in that dtype; float32 numbers
    lie in [0, 1 - 2^-24], so u W stays below W).
    """
    wide = xp.float64 if aa.supports_float64(xp, aa.device(like)) else xp.float32
    if uniforms is not None:
        if tuple(uniforms.shape) != shape:
            raise ValueError(f"uniforms must have shape (N, k) = {shape}, got {tuple(uniforms.shape)}")
        uniforms = xp.asarray(uniforms, dtype=wide, device=aa.device(like))  # also takes NumPy draws
        if aa.concrete_bool(xp.all((uniforms >= 0) & (uniforms < 1))) is False:  # NaN fails both
            raise ValueError("uniforms must lie in [0, 1), like numpy's Generator.random; got a value outside or NaN")
        return uniforms
    if rng is None:
        raise ValueError("negatives='sampled' needs a random source: pass rng=<seed or numpy Generator> or uniforms=")
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    host_dtype = np.float64 if like.dtype == xp.float64 else np.float32  # float64 input: the device has it
    return xp.asarray(generator.random(shape, dtype=host_dtype), device=aa.device(like))


def pair_losses(
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
        return softplus_and_slope(c - similarity, part, 1.0, -1.0)
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
    return softplus_and_slope(log_ng - similarity, part, dg_dc, dg_ds - 1.0)


def softplus_and_slope(x: Array, part: str, dx_dc: Any, dx_ds: Any) -> tuple[Array | None, Array | None, Array | None]:
    """softplus(x) and, by the chain rule through x(c, s), its derivatives sigmoid(x) dx/dc and sigmoid(x) dx/ds."""
    xp = aa.namespace(x)
    value = aa.softplus(x)
    if part == "value":
        return value, None, None
    sig = xp.exp(x - value)  # sigmoid(x) = exp(x - softplus(x)): one pass, and x - softplus(x) <= 0
    return (value if part == "both" else None), sig * dx_dc, sig * dx_ds


def pair_masks(
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


def hardening_weights(
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


def anchor_terms(
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


def similarity_grad(
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


def scaled_gram(rows: Array, columns: Array, temperature: float) -> Array:
    """s = rows @ columns^T / tau (the division skipped at the paper's tau = 1: one pass less over N x N)."""
    gram = rows @ columns.T
    return gram if temperature == 1.0 else gram / temperature


def anchor_scale(pair_counts: Array, reduction: str) -> Array:
    """The weight of each of anchor i's pairs in the loss: 1/#pairs ("mean"), 1/(|P(i)| #anchors) ("anchor_mean"),
    1/|P(i)| ("none", per-anchor values). `pair_counts` holds |P(i)| for every anchor of the batch."""
    return row_weight(pair_counts, reduction) / batch_divisor(pair_counts, reduction)


def row_weight(pair_counts: Array, reduction: str) -> Array:
    """The part of `anchor_scale` an anchor's own |P(i)| decides: 1 ("mean"), else 1/|P(i)|."""
    xp = aa.namespace(pair_counts)
    if reduction == "mean":
        return xp.ones_like(pair_counts)
    return 1.0 / xp.maximum(pair_counts, xp.ones_like(pair_counts))


def batch_divisor(pair_counts: Array, reduction: str) -> Array | float:
    """The part of `anchor_scale` the whole batch decides: #pairs ("mean"), #anchors with pairs
    ("anchor_mean"), 1 ("none"), at least 1. A blocked pass applies it once, after the last block."""
    xp = aa.namespace(pair_counts)
    if reduction == "none":
        return 1.0
    count = xp.sum(pair_counts) if reduction == "mean" else xp.sum(xp.astype(pair_counts > 0, pair_counts.dtype))
    return xp.maximum(count, xp.ones_like(count))


#: The loss forms exp((1 + beta) s - max), c_i - s_ij and sums of a few such terms: it stays finite while
#: (1 + beta) max |s| is below the dtype's largest number divided by this margin.
OVERFLOW_MARGIN = 8.0


def _tilt(config: LossConfig) -> float:
    """1 + beta for exponential weights (the largest exponent the loss forms is (1 + beta) s), else 1."""
    return 1.0 + float(getattr(config.hardening, "beta", 0.0) or 0.0)


def check_similarity_range(z: Array, config: LossConfig) -> None:
    """ValueError before computing when (1 + beta) max |s_ij| OVERFLOW_MARGIN would overflow z's (compute) dtype.

    |s_ij| <= R^2 / tau with R = max_i ||g(z_i)||: at most 1 for "sphere" and "ball" (no pass over z), the
    largest row norm for "none" (one pass). Skipped under jax.jit, where values are not concrete.
    """
    xp = aa.namespace(z)
    largest_radius = math.sqrt(float(xp.finfo(z.dtype).max) * config.temperature / (_tilt(config) * OVERFLOW_MARGIN))
    if config.normalize != "none":
        if largest_radius < 1.0:
            raise overflow_error("the similarities", z, config)
        return
    if z.shape[0] == 0:
        return
    radius = xp.max(row_norms(aa.stop_gradient(z)))
    # a NaN or Inf in z is not an overflow: the paths report it as a bad input
    if aa.concrete_bool((radius > largest_radius) & xp.isfinite(radius)):
        raise overflow_error("the similarities", z, config)


def overflow_error(what: str, z: Array, config: LossConfig, dtype: Any = None) -> ValueError:
    """The error for finite embeddings whose loss or gradient overflows `dtype` (default: z's): what, how
    large the similarities are, and the fixes."""
    xp = aa.namespace(z)
    dtype = z.dtype if dtype is None else dtype
    radius = float(xp.max(row_norms(aa.stop_gradient(z)))) if z.shape[0] and config.normalize == "none" else 1.0
    return ValueError(
        f"{what} overflowed {dtype} (largest finite {float(xp.finfo(dtype).max):.3g}): similarities "
        f"s = g(z_i).g(z_j) / temperature reach {radius * radius / config.temperature:.3g} "
        f"(normalize={config.normalize!r}, temperature={config.temperature:g}, 1 + beta = {_tilt(config):g}). "
        "Fix: normalize the embeddings (normalize='sphere' or 'ball'), lower their scale (or raise the "
        "temperature, lower beta), or use a wider dtype (float64)"
    )
