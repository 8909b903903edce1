"""The fused kernel for the common members of the family: value and gradient in one pass, in place.

It covers the losses most runs use (scl, hscl, ucl, hucl, supcon, ntxent: uniform or exponential
weights, expected negatives, a scalar reduction) on NumPy, CuPy and torch, and computes exactly the
array-API code's formulas (`hcl_array.losses`, which runs everything, on every backend, and is what
the tests hold this kernel to). JAX keeps the array-API code: XLA fuses it already.

Why a second implementation exists (measured: docs/performance.md):

- The array API has no in-place `exp`, no `out=`, no gather or scatter. Written with it, the loss
  makes about 30 fresh (N, N) temporaries; on a CPU each one is a page-faulting allocation and a
  memory pass, which cost more than the arithmetic. Here two (rows, N) buffers are allocated once
  and everything happens in them.
- Only the |P| positive pairs need l_ij = softplus(c_i - s_ij). The standard cannot gather a
  data-dependent set, so it evaluates the softplus over all N^2 pairs; this kernel enumerates the
  same-id pairs from the sorted ids (O(N log N + |P|), no (N, N) mask) and uses them both for the
  positives and to mask the non-candidates.
- The gradient of a scalar loss is fixed once a block has been seen: G_block = dL/ds_block, up to one
  global factor. So each block's share of dL/du is accumulated while the block is in memory, and an
  autograd backward pass only scales it by the incoming gradient: three matrix products per block,
  as for cross-entropy, and no (N, N) matrix kept for autograd.

Block by block (rows a:b of the anchors against all N columns; one block of N rows is the dense case):

    x = (1 + beta) s = u[a:b] ((1 + beta) u / tau)^T, -inf off the candidates;  E = exp(x - max x)
    (and beta s = x beta / (1 + beta) in the second buffer, for the normalizer)
    c_i = log lambda_i + log sum E + max x - LSE(beta s)        (LSE(beta s) = log |N(i)| when beta = 0)
    l_ij = softplus(c_i - s_ij) (or c_i - s_ij for supcon) on the positive pairs only
    G = (1 + slope) r_i E / sum E - slope r_i q_i,  G[i, j] -= w_ij dl/dc_ij at the positives
    dL/du[a:b] += G u / tau,  dL/du += G^T u[a:b] / tau

The few operations that differ between NumPy-like modules and torch are an `ops` object: `NumpyOps`
here (NumPy, or CuPy passed as the module), `TorchOps` in `backends/_torch_fused.py`.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import is_cupy_array, is_numpy_array, is_torch_array

from .hardening import ExponentialTilt, Uniform
from .losses import _normalize_vjp, normalize_embeddings
from .tiled import TiledConfig

Array = Any

__all__ = ["supports", "value_and_grad", "fused_loss", "NumpyOps"]


def supports(config: TiledConfig) -> str | None:
    """Why the kernel cannot compute `config` (the array-API code then does), or None when it can."""
    if type(config.hardening) not in (Uniform, ExponentialTilt):
        return "only uniform and exponential weights are fused"
    if config.form not in ("infonce", "supcon"):
        return "the debiased form is not fused"
    if config.reduction == "none":
        return "per-anchor values need the cotangent inside the sum over anchors"
    return None


class NumpyOps:
    """The kernel's framework-specific operations for NumPy, or CuPy (`NumpyOps(cupy)`)."""

    def __init__(self, module: ModuleType) -> None:
        self.np = module

    def empty(self, shape: tuple[int, ...], like: Array) -> Array:
        return self.np.empty(shape, dtype=like.dtype)

    def zeros(self, shape: tuple[int, ...], like: Array) -> Array:
        return self.np.zeros(shape, dtype=like.dtype)

    def on_cpu(self, like: Array) -> bool:
        return self.np is np

    def gram_into(self, rows: Array, columns: Array, out: Array) -> Array:
        return self.np.matmul(rows, columns.T, out=out)

    def scale_into(self, x: Array, factor: float, out: Array) -> Array:
        return self.np.multiply(x, factor, out=out)

    def exp_shifted_(self, x: Array) -> tuple[Array, Array]:
        shift = self.np.maximum(x.max(axis=1, keepdims=True), self.np.finfo(x.dtype).min)
        x -= shift
        self.np.exp(x, out=x)
        return shift, self.np.maximum(x.sum(axis=1, keepdims=True), 1.0)

    def add_matmul_(self, out: Array, a: Array, b: Array) -> None:
        out += a @ b

    def add_transpose_into(self, x: Array, out: Array) -> Array:
        return self.np.add(x, x.T, out=out)

    def sum_by_row(self, values: Array, rows: Array, num_rows: int) -> Array:
        return self.np.bincount(rows, weights=values, minlength=num_rows).astype(values.dtype)

    def log(self, x: Array) -> Array:
        return self.np.log(x)

    def softplus(self, x: Array) -> Array:
        return self.np.logaddexp(x, 0.0)

    def sigmoid(self, x: Array) -> Array:
        return self.np.exp(x - self.np.logaddexp(x, 0.0))

    def astype(self, x: Array, like: Array) -> Array:
        return x.astype(like.dtype)

    def same_id_groups(self, ids: Array) -> tuple[Array, Array, Array]:
        """(rows sorted by id, each row's first sorted position of its id, each row's id count)."""
        order = self.np.argsort(ids, kind="stable")
        _, group, counts = self.np.unique(ids[order], return_inverse=True, return_counts=True)
        start, size = self.np.empty_like(order), self.np.empty_like(order)
        start[order], size[order] = (self.np.cumsum(counts) - counts)[group], counts[group]
        return order, start, size

    def repeat_rows(self, sizes: Array, total: int) -> Array:
        """[0] * sizes[0] + [1] * sizes[1] + ... (by search: CuPy's repeat takes no array of counts)."""
        return self.np.searchsorted(self.np.cumsum(sizes), self.np.arange(total), side="right")

    def arange(self, start: int, stop: int, like: Array) -> Array:
        return self.np.arange(start, stop)

    def cumsum(self, x: Array) -> Array:
        return self.np.cumsum(x)

    def to_list(self, x: Array) -> list[int]:
        return [int(v) for v in x.tolist()]


@dataclass
class _Batch:
    """Per-row facts of the batch, found once in O(N log N) from the sorted ids (no (N, N) mask)."""

    log_num_candidates: Array  # (N, 1): log max(|N(i)|, 1)
    row_weight: Array  # (N,): the weight of each of anchor i's pairs, before the global scale
    scale: Array  # 1 / #pairs ("mean") or 1 / #anchors with pairs ("anchor_mean")
    order: Array  # rows sorted by id (stable)
    group_size: Array  # (N,): rows sharing row i's id, i itself included
    pair_base: Array  # (N,): pair p of row i (pairs numbered row by row) is with row order[p + pair_base[i]]
    pair_offsets: list[int]  # row i's pairs are numbers pair_offsets[i] ... pair_offsets[i + 1] - 1

    @classmethod
    def of(cls, ids: Array, config: TiledConfig, like: Array, ops: Any) -> _Batch:
        n = ids.shape[0]
        order, group_start, group_size = ops.same_id_groups(ids)
        pair_end = ops.cumsum(group_size)
        if config.candidates == "other-ids":
            num_candidates = ops.astype(n - group_size, like)
        else:
            num_candidates = ops.astype(group_size * 0 + (n if config.include_self else n - 1), like)
        pair_counts = ops.astype(group_size if config.include_self else group_size - 1, like)
        # Only uniform and exponential weights come here: eta > 0, so every candidate is in the support.
        row_weight = ops.astype(num_candidates > 0, like)
        if config.reduction == "mean":
            count = pair_counts.sum()
        else:  # anchor_mean: 1 / |P(i)| in the rows, 1 / #anchors with pairs outside
            row_weight = row_weight / (pair_counts + (pair_counts == 0))
            count = ops.astype(pair_counts > 0, like).sum()
        return cls(
            log_num_candidates=ops.log(num_candidates + (num_candidates == 0))[:, None], row_weight=row_weight,
            scale=1.0 / (count + (count == 0)), order=order, group_size=group_size,
            pair_base=group_start - (pair_end - group_size), pair_offsets=[0, *ops.to_list(pair_end)],
        )

    def same_id_pairs(self, first_row: int, last_row: int, ops: Any) -> tuple[Array, Array]:
        """(row within the block, column) of every pair of rows sharing an id, the pair (i, i) included."""
        number = ops.arange(self.pair_offsets[first_row], self.pair_offsets[last_row], self.order)
        local_row = ops.repeat_rows(self.group_size[first_row:last_row], number.shape[0])
        return local_row, self.order[number + self.pair_base[first_row:last_row][local_row]]


#: Per thread, the kernel keeps its (rows, N) block buffers for the next call of the same shape when
#: they take at most this many bytes together, on the CPU (GPU allocators pool memory themselves).
#: A fresh buffer pays a page fault per 4 KiB on first touch: at N = 512 that was 0.6 of 3.6 ms of
#: hscl forward + backward on torch. 0 turns the reuse off; larger batches always allocate afresh.
SCRATCH_LIMIT_BYTES = 64 * 2**20
_scratch = threading.local()
#: Up to this N, a batch in one block takes dL/du from one product with G + G^T instead of two (G and
#: G^T): measured on torch CPU, 0.61 vs 0.72 ms at N = 512 and 1.05 vs 1.56 ms at 768, but 3.2 vs
#: 3.0 ms at 1024 and 18 vs 13 ms at 2048, where the transposed read no longer stays in cache.
SYMMETRIC_MAX_N = 768


def _block_buffers(shape: tuple[int, int], count: int, like: Array, ops: Any) -> list[Array]:
    """`count` uninitialized arrays of `shape` and like's dtype: last call's, when they fit the reuse rule."""
    key = (shape, count, like.dtype, type(like))
    cached = getattr(_scratch, "buffers", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    buffers = [ops.empty(shape, like) for _ in range(count)]
    if ops.on_cpu(like) and sum(buffer.nbytes for buffer in buffers) <= SCRATCH_LIMIT_BYTES:
        _scratch.buffers = (key, buffers)
    return buffers


def _blocks(u: Array, batch: _Batch, config: TiledConfig, want_grad: bool, ops: Any) -> tuple[Array, Array | None]:
    """sum_i w_i sum_{j in P(i)} l_ij, and tau * sum over blocks of (G u + G^T u) (both before the global scale)."""
    n = u.shape[0]
    beta = config.hardening.beta if isinstance(config.hardening, ExponentialTilt) else 0.0
    slope = config.slope  # beta through undetached weights, else 0
    tilt = 1.0 + beta
    scaled = u * (tilt / config.temperature)  # the product gives (1 + beta) s directly: no pass to scale it
    rows_per_block = min(config.tile, n)
    # One small block: dL/du = (G + G^T) u / tau in one product; the transposed sum is cheap in cache.
    symmetric = rows_per_block == n <= SYMMETRIC_MAX_N and want_grad
    tilted_buffer, *spare = _block_buffers((rows_per_block, n), 2 if beta or symmetric else 1, u, ops)
    weights_buffer = spare[0] if spare else None
    total = ops.zeros((), u)
    grad_u = ops.zeros(u.shape, u) if want_grad else None
    for a in range(0, n, rows_per_block):
        b = min(a + rows_per_block, n)
        tilted = ops.gram_into(u[a:b], scaled, tilted_buffer[: b - a])
        same_row, same_col = batch.same_id_pairs(a, b, ops)
        if config.candidates == "other-ids":
            excluded = (same_row, same_col)
        elif not config.include_self:
            rows = ops.arange(0, b - a, u)
            excluded = (rows, rows + a)
        else:
            excluded = None
        similarity = tilted[same_row, same_col] / tilt  # s_ij on the same-id pairs, before the masking
        if excluded is not None:
            tilted[excluded] = -math.inf  # exp gives exact zeros off the candidates
        # In place: x <- exp(x - shift), with the row sums. The ops pick the shift (the row max, or the
        # log-sum-exp when the softmax kernel is faster); a row without candidates gets a finite shift
        # and sum 1, so -inf stays -inf and nothing becomes NaN or log 0.
        if beta:  # beta s = (1 + beta) s scaled: the -inf carry over
            weights = ops.scale_into(tilted, beta / tilt, weights_buffer[: b - a])
            weights_shift, weights_total = ops.exp_shifted_(weights)
            log_normalizer = ops.log(weights_total) + weights_shift
        else:
            log_normalizer = batch.log_num_candidates[a:b]
        tilted_shift, tilted_total = ops.exp_shifted_(tilted)
        if config.negative_reduction == "mean":
            log_lambda = 0.0
        elif config.k is not None:
            log_lambda = math.log(config.k)
        else:
            log_lambda = batch.log_num_candidates[a:b]
        anchor_term = (log_lambda + ops.log(tilted_total) + tilted_shift - log_normalizer)[:, 0]

        pair_weight = batch.row_weight[a:b][same_row]
        if not config.include_self:  # (i, i) is not a positive: weight 0 (cheaper than filtering the pairs out)
            pair_weight = pair_weight * ops.astype(same_row + a != same_col, u)
        margin = anchor_term[same_row] - similarity
        if config.form == "supcon":  # l = c - s
            total += (pair_weight * margin).sum()
            dl_dc = pair_weight
        else:  # l = softplus(c - s)
            total += (pair_weight * ops.softplus(margin)).sum()
            dl_dc = pair_weight * ops.sigmoid(margin)
        if grad_u is None:
            continue
        # G = (1 + slope) r_i p_in - slope r_i q_in on the candidates, then -w_ij dl/dc_ij at the positives
        anchor_grad = ops.sum_by_row(dl_dc, same_row, b - a)[:, None]
        tilted *= anchor_grad * ((1.0 + slope) / tilted_total)
        if slope:
            weights *= anchor_grad * (slope / weights_total)
            tilted -= weights
        tilted[same_row, same_col] -= dl_dc  # pairs are unique: no accumulation needed
        if symmetric:
            ops.add_matmul_(grad_u, ops.add_transpose_into(tilted, weights_buffer), u)
        else:
            ops.add_matmul_(grad_u[a:b], tilted, u)
            ops.add_matmul_(grad_u, tilted.T, u[a:b])
    return total, grad_u


def value_and_grad(z: Array, ids: Array, config: TiledConfig, ops: Any, *, want_grad: bool = True) -> tuple[Array, Array | None]:
    """(loss, dL/dz) of `config` on (N, d) rows z in the compute dtype; the gradient only when want_grad."""
    u = normalize_embeddings(z, config.normalize)
    batch = _Batch.of(ids, config, u, ops)
    total, grad_u = _blocks(u, batch, config, want_grad, ops)
    if grad_u is None:
        return total * batch.scale, None
    grad_u *= batch.scale / config.temperature
    return total * batch.scale, _normalize_vjp(z, u, grad_u, config.normalize)


def fused_loss(z: Array, ids: Array, config: TiledConfig, *, return_grad: bool) -> Any:
    """The loss (or (loss, gradient) with return_grad) through the kernel, or None for a namespace it
    does not serve (JAX, array-api-strict). Torch goes through its autograd Function."""
    if is_torch_array(z):
        return importlib.import_module("hcl_array.backends._torch_fused").fused_loss(z, ids, config, return_grad=return_grad)
    if is_numpy_array(z):
        module, place = np, contextlib.nullcontext()
    elif is_cupy_array(z):
        module, place = sys.modules["cupy"], z.device  # imported already: z is a CuPy array; buffers go to its GPU
    else:
        return None
    with place:
        value, grad = value_and_grad(z, ids, config, NumpyOps(module), want_grad=return_grad)
    return (value, grad) if return_grad else value
