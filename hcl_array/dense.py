"""The dense path: the whole (N, N) similarity matrix at once, forward and analytic backward.

It computes every member of the family, on every array-API namespace, and is the reference the
tiled path and the fused kernel are held to. Autodiff frameworks differentiate its forward pass
directly; NumPy and CuPy take the analytic backward pass (`value_and_grad`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _array_api as aa
from .config import LossConfig
from .formulas import (
    anchor_scale,
    anchor_terms,
    hardening_weights,
    normalize_embeddings,
    normalize_vjp,
    pair_losses,
    pair_masks,
    sampled_log_weights,
    scaled_gram,
    similarity_grad,
)

Array = Any

__all__ = ["forward", "backward", "loss"]


@dataclass
class Pieces:
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


def forward(
    z: Array, ids: Array, config: LossConfig, uniforms: Array | None, *, need_grad: bool
) -> tuple[Array, Pieces]:
    """The loss of (N, d) rows z (compute dtype) and the pieces the backward pass reuses.

    uniforms: the (N, k) U(0, 1) draws of sampled negatives (None for expected negatives).
    """
    xp = aa.namespace(z, ids)
    u = normalize_embeddings(z, config.normalize)
    similarity = scaled_gram(u, u, config.temperature)
    positives, candidate_mask = pair_masks(ids, ids, 0, candidates=config.candidates, include_self=config.include_self)
    log_weights, support = hardening_weights(config.hardening, similarity, candidate_mask, config.detach_weights)
    if config.negatives == "sampled":
        log_weights, support = sampled_log_weights(log_weights, support, uniforms)
    anchor_term, log_lambda, log_normalizer, log_tilted, has_negatives = anchor_terms(
        log_weights, support, similarity, candidate_mask, k=config.k, negative_reduction=config.negative_reduction
    )
    pair_loss, dl_dc, dl_ds = pair_losses(
        config.form,
        anchor_term,
        similarity,
        log_lambda,
        config.tau_plus,
        config.temperature,
        part="both" if need_grad else "value",
    )
    pair_counts = xp.sum(xp.astype(positives, similarity.dtype), axis=1)
    # An anchor without negatives has l = 0: a zero weight (l_ij is finite everywhere, so no NaN).
    scale = anchor_scale(pair_counts, config.reduction) * xp.astype(has_negatives, similarity.dtype)
    pair_weights = xp.astype(positives, similarity.dtype) * scale[:, None]
    weighted = pair_loss * pair_weights
    value = xp.sum(weighted, axis=1) if config.reduction == "none" else xp.sum(weighted)
    pieces = Pieces(u, similarity, support, log_weights, log_normalizer, log_tilted, pair_weights, dl_dc, dl_ds)
    return value, pieces


def backward(z: Array, pieces: Pieces, config: LossConfig) -> Array:
    """dL/dz from the forward pieces: the analytic VJP of the whole family, in the array API.

    dL/ds_ij = w_ij dl/ds_ij (positives) + r_i p_in (candidates), r_i = sum_j w_ij dl/dc_ij,
    p_i = softmax over the support of (log w_in + s_in); with undetached exponential weights the
    candidate term gains beta r_i (p_in - q_in). Then dL/du = (G + G^T) u / tau, pulled back through g.
    """
    p = pieces
    slope = 0.0 if config.negatives == "sampled" else _analytic_slope(config)
    dl_dsim = similarity_grad(
        p.pair_weights, p.dl_dc, p.dl_ds, p.log_weights, p.similarity, p.support, p.log_tilted, p.log_normalizer, slope
    )
    grad_u = ((dl_dsim + dl_dsim.T) @ p.u) / config.temperature
    return normalize_vjp(z, p.u, grad_u, config.normalize)


def _analytic_slope(config: LossConfig) -> float:
    """d log eta / ds for the gradient through undetached weights (0 when detached), or a clear error."""
    if config.detach_weights:
        return 0.0
    slope = getattr(config.hardening, "slope", None)
    if slope is None:
        raise NotImplementedError(
            f"analytic gradient through the weights of {config.hardening!r} is unknown: use detach_weights=True"
        )
    return slope


def loss(z: Array, ids: Array, config: LossConfig, *, uniforms: Array | None = None, return_grad: bool = False) -> Any:
    """The loss, or (loss, dL/dz) with return_grad: the dense path's entry in the dispatch table."""
    value, pieces = forward(z, ids, config, uniforms, need_grad=return_grad)
    return (value, backward(z, pieces, config)) if return_grad else value
