"""A fused torch kernel for the common members of the family: value and gradient in one pass.

Imported by `hcl_array.losses` only when the input is a torch tensor, so the core never imports torch.
It covers the losses most runs use (scl, hscl, ucl, hucl, supcon, ntxent: uniform or exponential
weights, expected negatives, a scalar reduction) and computes exactly the array-API path's formulas
(`hcl_array.losses`, the reference that every backend runs): the tests hold the two together.

Why a second implementation exists, for torch alone (measured: docs/performance.md):

- The array API has no in-place `exp`, no `out=`, no gather or scatter-add. Written with it, the loss
  makes about 30 fresh (N, N) temporaries; on the CPU each one is a page-faulting allocation, which
  costs more than the arithmetic. Here three (rows, N) buffers are allocated once and reused.
- Only the |P| positive pairs need l_ij = softplus(c_i - s_ij). The standard cannot gather a
  data-dependent set, so it evaluates the softplus over all N^2 pairs; this kernel enumerates the
  same-id pairs from the sorted ids (O(N log N + |P|), no (N, N) mask) and uses them both for the
  positives and to mask the non-candidates.
- The gradient of a scalar loss is fixed once the forward pass has seen a block: G_block = dL/ds_block.
  So each block's contribution to dL/du is accumulated while the block is still in memory, and the
  backward pass only scales it by the incoming gradient: three matrix products per block, as for
  cross-entropy, not four (a recomputing backward) and no (N, N) matrix kept for autograd.

Block by block (rows a:b of the anchors, all N columns; one block of N rows is the dense case):

    s = u[a:b] u^T / tau;  x = (1 + beta) s, -inf off the candidates;  E = exp(x - max x)
    c_i = log lambda_i + log sum E + max x - LSE(beta s)        (LSE(beta s) = log |N(i)| when beta = 0)
    l_ij = softplus(c_i - s_ij) (or c_i - s_ij for supcon) on the positive pairs only
    G = E r_i / sum E (+ beta r_i (p - q) through undetached weights), G[i, j] += w_ij dl/ds_ij
    dL/du[a:b] += G u / tau,  dL/du += G^T u[a:b] / tau
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from hcl_array import losses, tiled
from hcl_array.hardening import ExponentialTilt, Uniform

__all__ = ["supports", "fused_loss"]


def supports(config: tiled.TiledConfig) -> str | None:
    """Why this kernel cannot compute `config` (the array-API path then does), or None when it can."""
    if type(config.hardening) not in (Uniform, ExponentialTilt):
        return "only uniform and exponential weights are fused"
    if config.form not in ("infonce", "supcon"):
        return "the debiased form is not fused"
    if config.reduction == "none":
        return "per-anchor values need the cotangent inside the sum over anchors"
    return None


@dataclass
class _Batch:
    """Per-row facts of the batch, found once in O(N log N) from the sorted ids (no (N, N) mask)."""

    log_num_candidates: torch.Tensor  # (N, 1): log max(|N(i)|, 1)
    row_weight: torch.Tensor  # (N,): the weight of each of anchor i's pairs, before the global scale
    scale: torch.Tensor  # 1 / #pairs ("mean") or 1 / #anchors with pairs ("anchor_mean")
    order: torch.Tensor  # rows sorted by id (stable)
    group_size: torch.Tensor  # (N,): rows sharing row i's id, i itself included
    pair_base: torch.Tensor  # (N,): pair p of row i (pairs numbered row by row) is with row order[p + pair_base[i]]
    pair_offsets: list[int]  # row i's pairs are numbers pair_offsets[i] ... pair_offsets[i + 1] - 1

    @classmethod
    def of(cls, ids: torch.Tensor, config: tiled.TiledConfig, dtype: torch.dtype) -> _Batch:
        n = ids.shape[0]
        sorted_ids, order = torch.sort(ids, stable=True)
        _, group, counts = torch.unique_consecutive(sorted_ids, return_inverse=True, return_counts=True)
        group_start, group_size = torch.empty_like(order), torch.empty_like(order)
        group_start[order], group_size[order] = (torch.cumsum(counts, 0) - counts)[group], counts[group]
        pair_end = torch.cumsum(group_size, 0)
        if config.candidates == "other-ids":
            num_candidates = n - group_size
        else:
            num_candidates = torch.full_like(group_size, n if config.include_self else n - 1)
        pair_counts = (group_size if config.include_self else group_size - 1).to(dtype)
        # Only uniform and exponential weights come here: eta > 0, so every candidate is in the support.
        row_weight = (num_candidates > 0).to(dtype)
        if config.reduction == "mean":
            scale = 1.0 / pair_counts.sum().clamp_min(1.0)
        else:  # anchor_mean
            row_weight = row_weight / pair_counts.clamp_min(1.0)
            scale = 1.0 / (pair_counts > 0).sum().to(dtype).clamp_min(1.0)
        return cls(
            log_num_candidates=torch.log(num_candidates.to(dtype).clamp_min(1.0))[:, None], row_weight=row_weight,
            scale=scale, order=order, group_size=group_size, pair_base=group_start - (pair_end - group_size),
            pair_offsets=[0, *pair_end.tolist()],
        )

    def same_id_pairs(self, first_row: int, last_row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row within the block, column) of every pair of rows sharing an id, the pair (i, i) included."""
        device = self.order.device
        number = torch.arange(self.pair_offsets[first_row], self.pair_offsets[last_row], device=device)
        local_row = torch.repeat_interleave(torch.arange(last_row - first_row, device=device),
                                            self.group_size[first_row:last_row], output_size=number.numel())  # fmt: skip
        return local_row, self.order[number + self.pair_base[first_row:last_row][local_row]]


def _exp_over_candidates(x: torch.Tensor, excluded: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """x <- exp(x - m) on the candidates (0 elsewhere), in place, m the row max; returns (m, row sums).

    A row without candidates gets m = -max float (so -inf - m stays -inf, never NaN) and sum 1 (no
    log 0); every other row's sum is >= 1, since its largest entry contributes exp(0).
    """
    if excluded is not None:
        x.index_put_(excluded, x.new_full((), -math.inf))
    shift = x.amax(dim=1, keepdim=True).clamp_min_(torch.finfo(x.dtype).min)
    return shift, x.sub_(shift).exp_().sum(dim=1, keepdim=True).clamp_min_(1.0)


def _blocks(u: torch.Tensor, batch: _Batch, config: tiled.TiledConfig, want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """sum_i w_i sum_{j in P(i)} l_ij, and tau * sum over blocks of (G u + G^T u) (both before the global scale)."""
    n = u.shape[0]
    beta = config.hardening.beta if isinstance(config.hardening, ExponentialTilt) else 0.0
    slope = config.slope  # beta through undetached weights, else 0
    tilt = 1.0 + beta
    scaled = u * (tilt / config.temperature)  # the product gives (1 + beta) s directly: no pass to scale it
    rows_per_block = min(config.tile, n)
    tilted_buffer = u.new_empty((rows_per_block, n))
    weights_buffer = u.new_empty((rows_per_block, n)) if beta else None
    total = u.new_zeros(())
    grad_u = torch.zeros_like(u) if want_grad else None
    for a in range(0, n, rows_per_block):
        b = min(a + rows_per_block, n)
        tilted = torch.mm(u[a:b], scaled.T, out=tilted_buffer[: b - a])
        same_row, same_col = batch.same_id_pairs(a, b)
        if config.candidates == "other-ids":
            excluded = (same_row, same_col)
        elif not config.include_self:
            rows = torch.arange(b - a, device=u.device)
            excluded = (rows, rows + a)
        else:
            excluded = None
        if not config.include_self:
            positive = same_row + a != same_col
            same_row, same_col = same_row[positive], same_col[positive]
        similarity = tilted[same_row, same_col] / tilt  # s_ij on the positive pairs, before the masking

        if beta:
            weights = torch.mul(tilted, beta / tilt, out=weights_buffer[: b - a])
            weights_shift, weights_total = _exp_over_candidates(weights, excluded)
            log_normalizer = torch.log(weights_total) + weights_shift
        else:
            log_normalizer = batch.log_num_candidates[a:b]
        tilted_shift, tilted_total = _exp_over_candidates(tilted, excluded)
        if config.negative_reduction == "mean":
            log_lambda = 0.0
        elif config.k is not None:
            log_lambda = math.log(config.k)
        else:
            log_lambda = batch.log_num_candidates[a:b]
        anchor_term = (log_lambda + torch.log(tilted_total) + tilted_shift - log_normalizer).squeeze(1)

        pair_weight = batch.row_weight[a:b][same_row]
        margin = anchor_term[same_row] - similarity
        if config.form == "supcon":  # l = c - s
            total += torch.dot(pair_weight, margin)
            dl_dc = pair_weight
        else:  # l = softplus(c - s)
            total += torch.dot(pair_weight, torch.nn.functional.softplus(margin))
            dl_dc = pair_weight * torch.sigmoid(margin)
        if grad_u is None:
            continue
        # G = (1 + slope) r_i p_in - slope r_i q_in on the candidates, then -w_ij dl/dc_ij at the positives
        anchor_grad = u.new_zeros((b - a, 1)).index_add_(0, same_row, dl_dc[:, None])
        grad_similarity = tilted.mul_(anchor_grad * ((1.0 + slope) / tilted_total))
        if slope:
            grad_similarity.sub_(weights.mul_(anchor_grad * (slope / weights_total)))
        grad_similarity.index_put_((same_row, same_col), -dl_dc, accumulate=True)
        grad_u[a:b].addmm_(grad_similarity, u)
        grad_u.addmm_(grad_similarity.T, u[a:b])
    return total, grad_u


def value_and_grad(z: torch.Tensor, ids: torch.Tensor, config: tiled.TiledConfig, want_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss, dL/dz) of the configuration on (N, d) rows z; the gradient only when want_grad."""
    u = losses.normalize_embeddings(z, config.normalize)
    batch = _Batch.of(ids, config, z.dtype)
    total, grad_u = _blocks(u, batch, config, want_grad)
    if grad_u is None:
        return total * batch.scale, None
    grad_u *= batch.scale / config.temperature
    return total * batch.scale, losses._normalize_vjp(z, u, grad_u, config.normalize)


class FusedLoss(torch.autograd.Function):
    """Forward: the value, and dL/dz when z needs a gradient. Backward: that gradient times the cotangent."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, ids: torch.Tensor, config: tiled.TiledConfig) -> torch.Tensor:
        value, grad = value_and_grad(z, ids, config, want_grad=ctx.needs_input_grad[0])
        if grad is not None:
            ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, cotangent: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (grad,) = ctx.saved_tensors
        return grad * cotangent, None, None


def fused_loss(z: torch.Tensor, ids: torch.Tensor, config: tiled.TiledConfig, *, return_grad: bool = False) -> Any:
    """The loss (with autograd through `FusedLoss`), or (loss, gradient) when return_grad."""
    if return_grad:
        with torch.no_grad():
            return value_and_grad(z, ids, config)
    return FusedLoss.apply(z, ids, config)
