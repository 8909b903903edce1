"""The fused kernel for the common members of the family: value and gradient in one pass, in place.

It covers the losses most runs use (scl, hscl, ucl, hucl, supcon, ntxent: uniform or exponential
weights, expected or sampled negatives, a scalar reduction) on NumPy, CuPy and torch, and computes exactly the
array-API code's formulas (`hcl_array.losses`, which runs everything, on every backend, and is what
the tests hold this kernel to). JAX has its own form of it (`backends/_jax_fused.py`: no in-place buffers there).

Why a second implementation exists (measured: docs/performance.md):

- The array API has no in-place `exp`, no `out=`, no gather or scatter. Written with it, the loss
  makes about 30 fresh (N, N) temporaries; on a CPU each one is a page-faulting allocation and a
  memory pass, which cost more than the arithmetic. Here everything happens in place in two
  (rows, N) buffers, and u and dL/du have (N, d) buffers; all of them are reused from call to call.
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

`anchor_sums` runs these blocks over runs of anchor rows: every row in one process (`value_and_grad`), a
rank's anchors of the gathered batch (`hcl_array.distributed`: one all-reduce, one reduce-scatter of dL/du).

Sampled negatives (`_SampledPass`, the paper's own estimator): per block, the running sums of the
weights along each row are the unnormalized CDF of q_i; each anchor's k uniforms (drawn once per call by
`dispatch.compute`, the same numbers the array-API code turns into counts) pick their columns by
inverse CDF, and the loss and G need only the k gathered similarities per anchor.

The few operations that differ between NumPy-like modules and torch are an `ops` object: `NumpyOps`
here (NumPy, or CuPy passed as the module), `TorchOps` in `backends/_torch_fused.py`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from . import inverse_cdf
from .config import LossConfig
from .formulas import norm_floor
from .hardening import ExponentialTilt, Uniform
from .tiled import block_rows

Array = Any
Segments = Sequence[tuple[int, int]]  # runs of anchor rows: (first, one past the last)

__all__ = ["supports", "value_and_grad", "anchor_sums", "AnchorSums", "numpy_like_loss", "numpy_loss", "NumpyOps"]


def supports(config: LossConfig) -> str | None:
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
        self.np = self.module = module

    def empty(self, shape: tuple[int, ...], like: Array) -> Array:
        return self.np.empty(shape, dtype=like.dtype)

    def zeros(self, shape: tuple[int, ...], like: Array) -> Array:
        return self.np.zeros(shape, dtype=like.dtype)

    def on_cpu(self, like: Array) -> bool:
        return self.np is np

    def row_norms(self, x: Array) -> Array:
        return self.np.sqrt(self.np.einsum("ij,ij->i", x, x))[:, None]  # einsum: no (N, d) temporary

    def maximum(self, x: Array, floor: float) -> Array:
        return self.np.maximum(x, floor)

    def divide_into(self, x: Array, divisor: Array, out: Array) -> Array:
        return self.np.divide(x, divisor, out=out)

    def gram_operands(self, u: Array, factor: float) -> tuple[Array, float]:
        """(columns, alpha) with gram_into(rows, columns, alpha) = factor * rows u^T: NumPy's matmul takes
        no alpha, so the (N, d) columns are scaled once (cheaper than scaling every (rows, N) block)."""
        return u * factor, 1.0

    def gram_into(self, rows: Array, columns: Array, alpha: float, out: Array) -> Array:
        self.np.matmul(rows, columns.T, out=out)
        if alpha != 1.0:  # not from gram_operands, which scales the columns instead
            out *= alpha
        return out

    def matmul_into(self, a: Array, b: Array, out: Array) -> Array:
        return self.np.matmul(a, b, out=out)

    def add_matmul_(self, out: Array, a: Array, b: Array) -> None:
        out += a @ b

    def row_max(self, x: Array) -> Array:
        return x.max(axis=1, keepdims=True)

    def exp_shifted_(self, x: Array, peak: Array) -> tuple[Array, Array]:
        x -= peak
        self.np.exp(x, out=x)
        sums = x.sum(axis=1, keepdims=True)
        return self.np.log(sums) + peak, sums

    def exp_rows_(self, x: Array) -> None:
        """x <- exp(x - max) row by row, in place: weights up to a factor per row (for a CDF)."""
        x -= x.max(axis=1, keepdims=True)
        self.np.exp(x, out=x)

    def scale_into(self, x: Array, factor: float, out: Array) -> Array:
        return self.np.multiply(x, factor, out=out)

    def fill_diagonal_(self, x: Array, offset: int, value: float) -> None:
        self.np.fill_diagonal(x[:, offset:], value)

    def add_transpose_into(self, x: Array, out: Array) -> Array:
        return self.np.add(x, x.T, out=out)

    def pull_back(self, grad_u: Array, u: Array, keep_radial: Array, divisor: Array) -> Array:
        """A fresh (grad_u - u (u . grad_u) keep_radial) / divisor, row by row (keep_radial: booleans)."""
        out = u * (self.np.einsum("ij,ij->i", u, grad_u)[:, None] * keep_radial)
        self.np.subtract(grad_u, out, out=out)
        out /= divisor
        return out

    def take(self, x: Array, index: Array) -> Array:
        return x[index]

    def fill_at_(self, x: Array, index: Array, value: float) -> None:
        x[index] = value

    def subtract_at_(self, x: Array, index: Array, values: Array) -> None:
        x[index] -= values  # unique indices: nothing to accumulate

    def sum_by_row(self, values: Array, rows: Array, num_rows: int) -> Array:
        if self.np is np:  # bincount: NumPy's fastest scatter-add
            return np.bincount(rows, weights=values, minlength=num_rows).astype(values.dtype)
        total = self.np.zeros(num_rows, dtype=values.dtype)  # cupy.bincount reads rows' min and max on the host
        self.np.add.at(total, rows, values)
        return total

    def log(self, x: Array) -> Array:
        return self.np.log(x)

    def softplus(self, x: Array) -> Array:
        return self.np.logaddexp(x, 0.0)

    def sigmoid(self, x: Array) -> Array:
        return self.np.exp(x - self.np.logaddexp(x, 0.0))

    def astype(self, x: Array, like: Array) -> Array:
        return x.astype(like.dtype)

    def same_id_groups(self, ids: Array) -> tuple[Array, Array, Array]:
        """(rows sorted by id, and for each row the first and one-past-last sorted position of its id)."""
        order = self.np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        return (
            order,
            self.np.searchsorted(sorted_ids, ids, side="left"),
            self.np.searchsorted(sorted_ids, ids, side="right"),
        )

    def repeat_rows(self, sizes: Array, total: int) -> Array:
        """[0] * sizes[0] + [1] * sizes[1] + ... (by search: CuPy's repeat takes no array of counts)."""
        return self.np.searchsorted(self.np.cumsum(sizes), self.np.arange(total), side="right")

    def arange(self, start: int, stop: int, like: Array) -> Array:
        return self.np.arange(start, stop)

    def cumsum(self, x: Array) -> Array:
        return self.np.cumsum(x)

    def host_ints(self, *arrays: Array) -> list[int]:
        """The integers of several arrays, flattened and concatenated, in one read by the host."""
        return [int(v) for v in self.np.concatenate([a.reshape(-1) for a in arrays]).tolist()]

    def fill_(self, x: Array, value: float) -> None:
        x.fill(value)

    def cumsum_rows_(self, x: Array) -> Array:
        return self.np.cumsum(x, axis=1, out=x)

    def add_at_(self, x: Array, index: Array, values: Array) -> None:
        self.np.add.at(x, index, values)  # repeated indices accumulate (a negative drawn twice)

    def draw_positions(self, cumulative: Array, uniforms: Array) -> Array:
        """Position i N + n_t in the flattened block of each draw's column n_t: the first n with
        cumulative[i, n] > u_t * total (inverse CDF), row by row.

        NumPy: `inverse_cdf.draw_columns` (a guide table; each row's draws come back sorted). CuPy: one 1-D
        search for the whole block, as `formulas.counts_from_uniforms` does: row r's CDF and draws are
        shifted by 2r (both lie in [0, 1]), in float64 so that the shift costs no resolution.
        """
        xp = self.np
        if xp is np:
            return inverse_cdf.draw_columns(cumulative, uniforms, flat=True)
        rows, n = cumulative.shape
        total = cumulative[:, -1:].astype(xp.float64)
        cdf = cumulative / xp.where(total > 0, total, 1.0)
        offsets = 2.0 * xp.arange(rows, dtype=xp.float64)[:, None]
        found = xp.searchsorted((cdf + offsets).reshape(-1), (uniforms + offsets).reshape(-1), side="right")
        row_start = n * xp.arange(rows)[:, None]
        last = (cdf < 1.0).sum(axis=1, keepdims=True)  # the last column with weight (its CDF is exactly 1)
        # round-off (and NaN rows) stay in the row
        return xp.clip(found.reshape(uniforms.shape), row_start, row_start + xp.minimum(last, n - 1))


@dataclass
class _Batch:
    """Per-row facts of the batch, found once in O(N log N) from the sorted ids (no (N, N) mask).

    Anchors without candidates exist only batch-wide (one id for every row with candidates="other-ids";
    a single row without include_self for "all"): then `empty` is set and the loss is 0. Otherwise every
    row has a candidate, so every row of a block has a finite maximum."""

    empty: bool  # no anchor has both a positive and a candidate: the loss and its gradient are 0
    log_num_candidates: Array | float  # log |N(i)|: (N, 1), or one number when every row has as many
    row_weight: Array | None  # (N,): the weight of each of anchor i's pairs before the scale (None: 1)
    order: Array  # rows sorted by id (stable)
    group_size: Array  # (N,): rows sharing row i's id, i itself included
    pair_base: Array  # (N,): pair p of row i (pairs numbered row by row) is with row order[p + pair_base[i]]
    pair_offsets: dict[int, int]  # at each block's first row a (and at n): the number of the pairs of rows < a
    divisor: int  # the segments' share of the loss's divisor (`_divisor_share`)

    @classmethod
    def of(
        cls, ids: Array, config: LossConfig, like: Array, ops: Any, rows_per_block: int, segments: Segments
    ) -> _Batch:
        n = ids.shape[0]
        order, group_start, group_end = ops.same_id_groups(ids)
        group_size = group_end - group_start
        pair_end = ops.cumsum(group_size)
        not_self = 0 if config.include_self else 1
        # One read by the host per call (on a GPU each read waits for the device): the pair numbers at the block
        # bounds and at n, and for anchor_mean without self-pairs the rows alone with their id in each span.
        bounds, pieces = _block_bounds(pair_end, rows_per_block, segments)
        spans = list(dict.fromkeys(((0, n), *segments)))  # the batch's, then the segments' (once each)
        alone = []
        if config.reduction != "mean" and not config.include_self:
            alone = [(_rows(group_size, *span) == 1).sum() for span in spans]
        read = ops.host_ints(*pieces, *alone)
        pair_offsets = dict(zip([0, *bounds], [0, *read[: len(bounds)]], strict=True))
        alone_in = dict(zip(spans, read[len(bounds) :] or [0] * len(spans), strict=True))
        if config.candidates == "other-ids":
            empty = pair_offsets[n] == n * n  # one id for every row
            log_num_candidates = 0.0 if empty else ops.log(ops.astype(n - group_size, like))[:, None]
        else:
            empty = n - not_self == 0
            log_num_candidates = math.log(max(n - not_self, 1))
        row_weight = None  # "mean": every pair weighs 1
        if config.reduction == "anchor_mean":  # 1 / |P(i)| in the rows, 1 / #anchors with pairs outside
            pair_counts = group_size - not_self
            row_weight = 1.0 / ops.astype(pair_counts + (pair_counts == 0), like)
        share = {span: _divisor_share(config, pair_offsets, *span, alone_in[span]) for span in spans}
        return cls(
            empty=empty or share[0, n] == 0,
            log_num_candidates=log_num_candidates,
            row_weight=row_weight,
            order=order,
            group_size=group_size,
            pair_base=group_end - pair_end,
            pair_offsets=pair_offsets,
            divisor=sum(share[tuple(segment)] for segment in segments),
        )

    def log_candidates(self, first_row: int, last_row: int) -> Array | float:
        return (
            self.log_num_candidates
            if isinstance(self.log_num_candidates, float)
            else _rows(self.log_num_candidates, first_row, last_row)
        )

    def same_id_pairs(self, first_row: int, last_row: int, ops: Any) -> tuple[Array, Array]:
        """(row within the block, column) of every pair of rows sharing an id, the pair (i, i) included."""
        number = ops.arange(self.pair_offsets[first_row], self.pair_offsets[last_row], self.order)
        local_row = ops.repeat_rows(_rows(self.group_size, first_row, last_row), number.shape[0])
        return local_row, ops.take(self.order, number + ops.take(_rows(self.pair_base, first_row, last_row), local_row))


def _block_bounds(pair_end: Array, rows_per_block: int, segments: Segments) -> tuple[list[int], list[Array]]:
    """The rows a > 0 where a block of the segments starts or ends (n among them), in order, and slices of
    pair_end (the pair numbers of rows <= i) whose elements are the pair numbers of the rows < a."""
    n = pair_end.shape[0]
    bounds, pieces = [], []
    for first, last in [*segments, (n, n)]:
        if first > 0 and (not bounds or bounds[-1] != first):
            bounds.append(first)
            pieces.append(pair_end[first - 1 : first])
        if first + rows_per_block < last:
            bounds.extend(range(first + rows_per_block, last, rows_per_block))
            pieces.append(pair_end[first + rows_per_block - 1 : last - 1 : rows_per_block])
        if last > first:
            bounds.append(last)
            pieces.append(pair_end[last - 1 : last])
    return bounds, pieces


def _divisor_share(config: LossConfig, pair_offsets: dict[int, int], first: int, last: int, alone: int) -> int:
    """Anchors first .. last - 1's share of the divisor: sum |P(i)| ("mean") or #{i : |P(i)| > 0} (`alone`: not)."""
    not_self = 0 if config.include_self else 1
    if config.reduction == "mean":  # row i has group_size[i] same-id pairs, (i, i) included
        return pair_offsets[last] - pair_offsets[first] - not_self * (last - first)
    return last - first - alone


def _rows(x: Array, first: int, last: int) -> Array:
    """x[first:last], or x itself when that is all of it: one tensor operation fewer per array in the
    common one-block call, where each costs a few microseconds of dispatch."""
    return x if first == 0 and last == x.shape[0] else x[first:last]


def _over(x: Array, sums: Array | None) -> Array:
    """x / sums, for the row sums of `exp_shifted_` (None: the rows were normalized already)."""
    return x if sums is None else x / sums


#: Per thread, the kernel keeps its scratch buffers (the (rows, N) blocks, and u and dL/du) for the
#: next call of the same shapes when they take at most this many bytes together, on the CPU (GPU
#: allocators pool memory themselves). A fresh buffer pays a page fault per 4 KiB on first touch: at
#: N = 512 that was 0.6 of 3.6 ms of hscl forward + backward on torch. 0 turns the reuse off; larger
#: batches always allocate afresh.
SCRATCH_LIMIT_BYTES = 64 * 2**20
_scratch = threading.local()
#: Up to this N, a batch in one block takes dL/du from one product with G + G^T instead of two (G and
#: G^T): measured on torch CPU, 0.61 vs 0.72 ms at N = 512 and 1.05 vs 1.56 ms at 768, but 3.2 vs
#: 3.0 ms at 1024 and 18 vs 13 ms at 2048, where the transposed read no longer stays in cache.
SYMMETRIC_MAX_N = 768


def _symmetric(rows_per_block: int, n: int, want_grad: bool) -> bool:
    """Whether dL/du comes from one product with G + G^T (one block of at most SYMMETRIC_MAX_N rows)."""
    return want_grad and rows_per_block == n <= SYMMETRIC_MAX_N


def _beta(config: LossConfig) -> float:
    return config.hardening.beta if isinstance(config.hardening, ExponentialTilt) else 0.0


def _scratch_buffers(shapes: tuple[tuple[int, ...], ...], like: Array, ops: Any) -> list[Array]:
    """Uninitialized arrays of these shapes and like's dtype: the last call's, when they fit the reuse rule.

    The device is part of the key: a call on a GPU after a CPU call of the same shapes would otherwise get
    the CPU buffers as `out=` (a device error)."""
    key = (shapes, like.dtype, type(like), str(getattr(like, "device", "cpu")))
    cached = getattr(_scratch, "buffers", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    buffers = [ops.empty(shape, like) for shape in shapes]
    if ops.on_cpu(like) and sum(buffer.nbytes for buffer in buffers) <= SCRATCH_LIMIT_BYTES:
        _scratch.buffers = (key, buffers)
    return buffers


class _Pass:
    """One call's constants and buffers; its methods are the steps applied to each block of anchors.

    `run(segments)` returns the sum of w_i l_ij over the positive pairs (i, j in P(i)) of the segments'
    anchors before the global scale and, when grad_u is given, sets it to tau / scale times their share of
    dL/du: the sum over their blocks of G u (at rows a:b) and G^T u[a:b] (every row); all of dL/du when the
    segments hold every row.
    """

    def __init__(
        self, u: Array, batch: _Batch, config: LossConfig, buffers: list[Array], grad_u: Array | None, ops: Any
    ) -> None:
        self.u, self.batch, self.config, self.grad_u, self.ops = u, batch, config, grad_u, ops
        self.n = u.shape[0]
        self.beta = _beta(config)
        self.slope = config.slope  # beta through undetached weights, else 0
        self.tilt = 1.0 + self.beta
        # the product gives (1 + beta) s directly (sampled negatives: s, which the draws gather)
        self.similarity_scale = 1.0 if config.negatives == "sampled" else 1.0 / self.tilt
        self.columns, self.alpha = ops.gram_operands(u, 1.0 / (self.similarity_scale * config.temperature))
        self.tilted_buffer, *spare = buffers
        self.weights_buffer = spare[0] if spare else None
        self.rows_per_block = self.tilted_buffer.shape[0]
        # One small block: dL/du = (G + G^T) u / tau in one product; the transposed sum is cheap in cache.
        self.symmetric = _symmetric(self.rows_per_block, self.n, grad_u is not None)
        if config.negative_reduction == "mean":
            self.log_lambda = 0.0
        else:
            self.log_lambda = None if config.k is None else math.log(config.k)  # None: log |N(i)|

    def run(self, segments: Segments) -> Array | None:
        """The anchors' loss sum, block by block over each (first, last) run of rows; None when there are none."""
        if self.grad_u is not None and not self.symmetric:
            self.grad_u[...] = 0.0
        total = None
        for first, last in segments:
            for a in range(first, last, self.rows_per_block):
                block_total = self.block(a, min(a + self.rows_per_block, last))
                total = block_total if total is None else total + block_total
        return total

    def block(self, a: int, b: int) -> Array:
        """Rows a:b: the tilted similarities, exponentiated in place, then the pair terms and G."""
        ops, n = self.ops, self.n
        tilted = ops.gram_into(_rows(self.u, a, b), self.columns, self.alpha, _rows(self.tilted_buffer, 0, b - a))
        same_row, same_col = self.batch.same_id_pairs(a, b, ops)
        pairs, flat = same_row * n + same_col, tilted.reshape(-1)  # 1-D gathers are the fastest on torch
        similarity = ops.take(flat, pairs) * self.similarity_scale  # s_ij on the same-id pairs, before the masking
        if self.config.candidates == "other-ids":
            ops.fill_at_(flat, pairs, -math.inf)  # exp gives exact zeros off the candidates
        elif not self.config.include_self:
            ops.fill_diagonal_(tilted, a, -math.inf)
        anchor_term, weights, tilted_total, weights_total = self.exponentiate(tilted, a, b)
        total, dl_dc = self.pair_terms(anchor_term, similarity, same_row, same_col, a, b)
        if self.grad_u is not None:
            self.accumulate_gradient(tilted, weights, tilted_total, weights_total, dl_dc, same_row, flat, pairs, a, b)
        return total

    def exponentiate(self, tilted: Array, a: int, b: int) -> tuple[Array, Array | None, Any, Any]:
        """tilted <- exp(x - shift) in place (and the weights exp(beta s - shift)); c_i for each anchor.

        The ops pick the shift: the row max, or the log-sum-exp when the softmax kernel is faster (then
        the row sums are 1, returned as None).
        """
        ops = self.ops
        peak = ops.row_max(tilted)  # finite: every row has a candidate (batch.empty is False)
        weights = weights_total = None
        if self.beta:  # beta s = (1 + beta) s scaled: the -inf carry over
            weights = ops.scale_into(tilted, self.beta / self.tilt, _rows(self.weights_buffer, 0, b - a))
            log_normalizer, weights_total = ops.exp_shifted_(weights, peak * (self.beta / self.tilt))
        else:
            log_normalizer = self.batch.log_candidates(a, b)
        log_sum, tilted_total = ops.exp_shifted_(tilted, peak)
        log_lambda = self.batch.log_candidates(a, b) if self.log_lambda is None else self.log_lambda
        return (log_sum + (log_lambda - log_normalizer))[:, 0], weights, tilted_total, weights_total

    def pair_terms(
        self, anchor_term: Array, similarity: Array, same_row: Array, same_col: Array, a: int, b: int
    ) -> tuple[Array, Array | None]:
        """The block's sum of w_ij l_ij over its pairs, and w_ij dl/dc_ij (None: every weight 1, supcon)."""
        ops, batch = self.ops, self.batch
        pair_weight = None if batch.row_weight is None else ops.take(_rows(batch.row_weight, a, b), same_row)
        if not self.config.include_self:  # (i, i) is not a positive: weight 0 (cheaper than filtering the pairs out)
            not_self = ops.astype((same_row + a if a else same_row) != same_col, self.u)
            pair_weight = not_self if pair_weight is None else pair_weight * not_self
        margin = ops.take(anchor_term, same_row) - similarity
        if self.config.form == "supcon":  # l = c - s
            loss, dl_dc = margin, pair_weight
            if dl_dc is None and self.grad_u is not None:
                dl_dc = ops.module.ones_like(margin)
        else:  # l = softplus(c - s)
            loss, dl_dc = ops.softplus(margin), ops.sigmoid(margin)
            dl_dc = dl_dc if pair_weight is None else pair_weight * dl_dc
        return (loss.sum() if pair_weight is None else pair_weight @ loss), dl_dc

    def accumulate_gradient(
        self,
        tilted: Array,
        weights: Array | None,
        tilted_total: Any,
        weights_total: Any,
        dl_dc: Array,
        same_row: Array,
        flat: Array,
        pairs: Array,
        a: int,
        b: int,
    ) -> None:
        """G = (1 + slope) r_i p_in - slope r_i q_in on the candidates, -w_ij dl/dc_ij at the positives
        (in tilted's memory); then dL/du += G u + G^T u[a:b]."""
        ops = self.ops
        anchor_grad = ops.sum_by_row(dl_dc, same_row, b - a)[:, None]
        if self.slope:
            tilted *= _over(anchor_grad, tilted_total) * (1.0 + self.slope)
            weights *= _over(anchor_grad, weights_total) * self.slope
            tilted -= weights
        else:
            tilted *= _over(anchor_grad, tilted_total)
        ops.subtract_at_(flat, pairs, dl_dc)
        self.accumulate_products(tilted, self.weights_buffer, a, b)

    def accumulate_products(self, gradient: Array, spare: Array | None, a: int, b: int) -> None:
        """dL/du += G u and G^T u[a:b] for the block's G (one product with G + G^T, made in `spare`, when symmetric)."""
        ops = self.ops
        if self.symmetric:
            ops.matmul_into(ops.add_transpose_into(gradient, spare), self.u, self.grad_u)
        else:
            ops.add_matmul_(_rows(self.grad_u, a, b), gradient, self.u)
            ops.add_matmul_(self.grad_u, gradient.T, _rows(self.u, a, b))


class _SampledPass(_Pass):
    """`_Pass` for sampled negatives: k draws per anchor from q_i ~ eta(s_in) on the candidates, by inverse CDF.

    Block by block, in the two (rows, N) buffers (the first keeps s, the second the weights, then G):

        s = u[a:b] u^T / tau;  W = cumsum_n eta(s_in) on the candidates (exp(beta s - max) or 1, else 0)
        n_it = first n with W_in > u_it W_iN  (the uniforms of `dispatch.compute`: the array-API code's draws)
        c_i = log lambda_i - log k + LSE_t s_{i n_it},  p_it = softmax_t s_{i n_it}
        G = r_i p_it added at (i, n_it) (a negative drawn twice counts twice), -w_ij dl/dc_ij at the positives

    The weights are detached, as in the array-API code: there is no slope term.
    """

    def __init__(self, *args: Any, uniforms: Array) -> None:
        super().__init__(*args)
        self.uniforms = uniforms
        self.log_draw_factor = (0.0 if self.log_lambda is None else self.log_lambda) - math.log(uniforms.shape[1])

    def block(self, a: int, b: int) -> Array:
        """Rows a:b: s, the CDF of the weights, the draws and their log-sum-exp, then the pair terms and G."""
        ops, n = self.ops, self.n
        rows = b - a
        similarities = ops.gram_into(_rows(self.u, a, b), self.columns, self.alpha, _rows(self.tilted_buffer, 0, rows))
        weights = _rows(self.weights_buffer, 0, rows)
        same_row, same_col = self.batch.same_id_pairs(a, b, ops)
        pairs, flat = same_row * n + same_col, similarities.reshape(-1)
        self.cumulative_weights(similarities, weights, pairs, a)
        drawn_at = ops.draw_positions(weights, _rows(self.uniforms, a, b))
        drawn = ops.take(flat, drawn_at.reshape(-1)).reshape(drawn_at.shape)
        peak = ops.row_max(drawn)
        log_sum, sums = ops.exp_shifted_(drawn, peak)  # drawn <- its softmax times sums
        anchor_term = (log_sum + self.log_draw_factor)[:, 0]
        similarity = ops.take(flat, pairs)
        total, dl_dc = self.pair_terms(anchor_term, similarity, same_row, same_col, a, b)
        if self.grad_u is not None:
            anchor_grad = ops.sum_by_row(dl_dc, same_row, rows)[:, None]
            ops.fill_(weights, 0.0)
            gradient = weights.reshape(-1)
            ops.add_at_(gradient, drawn_at.reshape(-1), (drawn * _over(anchor_grad, sums)).reshape(-1))
            ops.subtract_at_(gradient, pairs, dl_dc)
            self.accumulate_products(weights, similarities, a, b)
        return total

    def cumulative_weights(self, similarities: Array, weights: Array, pairs: Array, a: int) -> None:
        """weights <- the running sums along each row of eta(s_in) on the candidates (0 elsewhere)."""
        ops = self.ops
        off_candidates = -math.inf if self.beta else 0.0
        if self.beta:  # eta = exp(beta s), shifted by the row max of the candidates
            ops.scale_into(similarities, self.beta, weights)
        else:
            ops.fill_(weights, 1.0)
        if self.config.candidates == "other-ids":
            ops.fill_at_(weights.reshape(-1), pairs, off_candidates)
        elif not self.config.include_self:
            ops.fill_diagonal_(weights, a, off_candidates)
        if self.beta:
            ops.exp_rows_(weights)
        ops.cumsum_rows_(weights)


def _row_norms(z: Array, ops: Any) -> Array:
    """||z_i||: the plain sum of squares, or, where it overflowed, m_i ||z_i / m_i|| with m_i = max |z_id|
    (as `formulas.row_norms`).

    On the CPU the rescaled pass runs only when a test of the (N, 1) norms finds an overflow. On a GPU that
    test would make the host wait for the device, so both are computed (two more passes over (N, d), small
    beside the (N, N) work) and the rescaled norms taken where the plain ones are not finite.
    """
    norm = ops.row_norms(z)
    if ops.on_cpu(z) and math.isfinite(float(norm.max())):
        return norm
    peak = ops.row_max(abs(z))
    peak = peak + (peak == 0)  # a zero row stays zero
    rescaled = ops.row_norms(z / peak) * peak
    return rescaled if ops.on_cpu(z) else ops.module.where(ops.module.isfinite(norm), norm, rescaled)


@dataclass
class AnchorSums:
    """The kernel's pass over some anchors (runs of rows of the batch) against every row: the parts that ranks
    holding different anchors of one batch add up (`hcl_array.distributed`), and what turns their sum into dL/dz.

    loss: the sum of w_i l_ij over the anchors i and their positives j in P(i);  divisor: their share of the
    loss's divisor (sum |P(i)| for "mean", #{i : |P(i)| > 0} for "anchor_mean");  grad_u: (N, d), the sum over
    their blocks of G u (at the anchors' rows) and G^T u[a:b] (at every row), i.e. tau / scale times their
    share of dL/du; None without the gradient. Summed over all anchors of the batch: L = loss / max(divisor, 1).
    """

    loss: Array
    divisor: int
    grad_u: Array | None
    u: Array
    norm: Array | None  # ||z_i|| (N, 1), None when normalize="none"
    floor: float
    temperature: float
    ops: Any

    def gradient(self, grad_u: Array, scale: Any, rows: Array | None = None) -> Array:
        """dL/dz of `rows` (every row when None) from grad_u, the sum over all anchors' passes at those rows, and
        scale = 1 / max(divisor, 1) of the whole batch: with v = grad_u scale / tau and u = g(z),
        dL/dz = (v - u (u . v) [||z|| > floor]) / max(||z||, floor)."""
        ops, factor = self.ops, scale / self.temperature
        if self.norm is None:
            return grad_u * factor
        u, norm = (self.u, self.norm) if rows is None else (ops.take(self.u, rows), ops.take(self.norm, rows))
        # rows that g leaves unscaled have no radial part
        return ops.pull_back(grad_u, u, norm > self.floor, ops.maximum(norm, self.floor) * (1.0 / factor))


def anchor_sums(
    z: Array,
    ids: Array,
    config: LossConfig,
    ops: Any,
    segments: Segments,
    *,
    want_grad: bool = True,
    uniforms: Array | None = None,
) -> AnchorSums | None:
    """The kernel's pass over the anchors of `segments` against every row of z, in blocks of at most
    `tile` rows (memory O(rows per block x N)); None when no anchor of the whole batch has both a
    positive and a candidate (the loss and its gradient are then 0).

    z: (N, d) rows in the compute dtype; uniforms: the (N, k) draws of sampled negatives, for every row.
    """
    n, d = z.shape
    longest = max((last - first for first, last in segments), default=1)
    rows_per_block = max(min(block_rows(config.tile, n), longest), 1)
    batch = _Batch.of(ids, config, z, ops, rows_per_block, segments)
    if batch.empty:
        return None
    sampled = config.negatives == "sampled"
    # a second block: the weights (tilt, or sampled: the CDF, then G), or G + G^T
    two_blocks = sampled or _beta(config) or _symmetric(rows_per_block, n, want_grad)
    normalizing = config.normalize != "none"
    block_shapes = ((rows_per_block, n),) * (2 if two_blocks else 1)
    buffers = iter(_scratch_buffers(block_shapes + ((n, d),) * (normalizing + want_grad), z, ops))
    block_buffers = [next(buffers) for _ in block_shapes]
    norm, floor, u = None, 0.0, z
    if normalizing:
        norm = _row_norms(z, ops)
        floor = norm_floor(config.normalize, z.dtype, ops.module)
        u = ops.divide_into(z, ops.maximum(norm, floor), next(buffers))
    grad_u = next(buffers) if want_grad else None
    arguments = (u, batch, config, block_buffers, grad_u, ops)
    loss = (_SampledPass(*arguments, uniforms=uniforms) if sampled else _Pass(*arguments)).run(segments)
    loss = ops.zeros((), z) if loss is None else loss  # no anchors here: a rank without samples
    return AnchorSums(loss, batch.divisor, grad_u, u, norm, floor, config.temperature, ops)


def value_and_grad(
    z: Array, ids: Array, config: LossConfig, ops: Any, *, want_grad: bool = True, uniforms: Array | None = None
) -> tuple[Array, Array | None]:
    """(loss, dL/dz) of `config` on (N, d) rows z in the compute dtype; the gradient only when want_grad.

    uniforms: the (N, k) U(0, 1) draws of sampled negatives (`dispatch.compute` makes them), else None.

    With u = g(z) = z / max(||z||, floor) (floor: 1 for "ball", ~0 for "sphere") and v = dL/du:
    dL/dz = (v - u (u.v) [||z|| > floor]) / max(||z||, floor).

    A NaN or Inf anywhere in z makes the value NaN, which `contrastive_loss` relies on to test one
    scalar instead of all of z: a bad row i makes its own (i, i) pair's term NaN (s_ii, or c_i, whose
    log-sum-exp then sees NaN or inf - inf), and that term is always evaluated, with weight 0 when i
    is not its own positive (0 * NaN = 0 * inf = NaN).
    """
    sums = anchor_sums(z, ids, config, ops, ((0, z.shape[0]),), want_grad=want_grad, uniforms=uniforms)
    if sums is None:  # 0 * z: the loss 0, or NaN when z holds a NaN or Inf (the caller's finiteness test sees it)
        return (z * 0.0).sum(), (ops.zeros(z.shape, z) if want_grad else None)
    scale = 1.0 / max(sums.divisor, 1)
    return sums.loss * scale, (None if sums.grad_u is None else sums.gradient(sums.grad_u, scale))


def numpy_like_loss(
    z: Array, ids: Array, config: LossConfig, module: ModuleType, *, uniforms: Array | None, return_grad: bool
) -> Any:
    """The loss, or (loss, gradient) with return_grad, through the kernel on NumPy or CuPy (`module`)."""
    # a NaN or Inf in z is reported by the caller's test of the value, not by warnings from in here
    with np.errstate(invalid="ignore", over="ignore") if module is np else z.device:  # CuPy: buffers on z's GPU
        value, grad = value_and_grad(z, ids, config, NumpyOps(module), want_grad=return_grad, uniforms=uniforms)
    return (value, grad) if return_grad else value


def numpy_loss(
    z: Array, ids: Array, config: LossConfig, *, uniforms: Array | None = None, return_grad: bool = False
) -> Any:
    """The fused path's entry for NumPy arrays in the dispatch table."""
    return numpy_like_loss(z, ids, config, np, uniforms=uniforms, return_grad=return_grad)
