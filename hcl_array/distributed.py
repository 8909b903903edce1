"""Cross-device negatives: each device's anchors against the gathered global batch.

The global batch is the concatenation of every rank's local batch, ranks in order (rows, or samples of
(B, V, d) views). Flattened view-major as one process would (row v * B_global + b), rank r's anchors
are the V segments of rows v * B_global + offset_r + (0 .. B_r - 1). Each rank computes its own anchors
against every global candidate, in blocks of rows (memory O(rows per block x N_global), never
N_global x N_global),

    S_r = sum over its anchors i of w_i sum_{j in P(i)} l_ij
    D_r = its share of the divisor: sum |P(i)| ("mean") or #{i : |P(i)| > 0} ("anchor_mean")

and the loss is (sum_r S_r) / max(sum_r D_r, 1): the single-process value, on every rank. A block's
G = dL/ds gives its own rows G u / tau and every global row G^T u_rows / tau (the column part). The
column parts of all ranks are summed and each rank keeps its rows (one reduce-scatter), then g's VJP
runs on local rows.

Two passes compute S_r, D_r and the column parts, and give the same numbers (tests: 1e-10 in float64):

- the fused kernel (`fused.anchor_sums`, with the `ops` of NumPy, CuPy or torch): value and gradient in one
  in-place pass, for the configurations `fused.supports`; the default where it serves the call;
- the array-API row blocks (`tiled.block_step`): every row-wise hardening, the debiased form, any
  namespace (JAX), and per-anchor values (reduction="none", below).

Communication per step: one small all-gather of shapes (which also catches ranks that disagree), one
all-gather of the embeddings as contiguous (B, V * d) samples and one of the ids, one all-reduce of
two scalars, and with a gradient one reduce-scatter of an (N_global, d) array. The framework's
collectives are a `Collectives` object (`backends/_torch_distributed.py`, `backends/_jax_distributed.py`).

Sampled negatives draw the global (N_global, k) uniforms on every rank (from the same seed, or the
same `uniforms=`) and take their anchors' rows: the same draws as one process.

reduction="none" gives each rank the per-anchor terms of the global loss for its own rows
(`per_anchor_values`); their gradient depends on every rank's cotangents, so `per_anchor_grad` recomputes
the blocks weighted by this rank's cotangents and sums the column parts in one reduce-scatter: every rank
must take part in it (call backward), as every rank takes part in DistributedDataParallel's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from . import _array_api as aa
from . import fused, tiled
from .config import LossConfig, check_inputs, reject_non_finite, restore_views
from .formulas import (
    anchor_scale,
    hardening_weights,
    normalize_embeddings,
    normalize_vjp,
    pair_masks,
    sampled_log_weights,
    scaled_gram,
)

Array = Any
Scan = Callable[..., Any]

__all__ = [
    "Collectives",
    "unsupported",
    "check_agreement",
    "value_and_grad",
    "per_anchor_values",
    "per_anchor_grad",
    "PerAnchorResiduals",
]

_DTYPE_CODES = ("float16", "bfloat16", "float32", "float64")


class Collectives(Protocol):
    """The four collectives the distributed loss needs, over the ranks of one group (or mesh axis)."""

    def gather_shapes(self, shape: list[int]) -> list[list[int]]:
        """Every rank's list of small integers (Python ints), ranks in order."""

    def offset(self, sizes: Sequence[int]) -> Any:
        """sum(sizes[:rank]): where this rank's samples start in the global batch (may be traced)."""

    def all_gather(self, x: Array, sizes: Sequence[int]) -> Array:
        """Every rank's x (sizes[r] rows each) concatenated along axis 0, ranks in order."""

    def all_sum(self, x: Array) -> Array:
        """The elementwise sum of x over the ranks."""

    def sum_scatter(self, x: Array, sizes: Sequence[int]) -> Array:
        """The sum over the ranks of x (sum(sizes) rows), restricted to this rank's rows."""


def unsupported(config: LossConfig) -> str | None:
    """Why the row-block pass cannot compute `config` across ranks, or None when it can."""
    # Sampled draws are row-wise and detached: what matters is that the hardening is row-wise.
    sampled = config.negatives == "sampled"
    expected = replace(config, negatives="expected", detach_weights=config.detach_weights or sampled)
    reason = tiled.unsupported(expected)
    return None if reason is None else f"cross-device negatives need row blocks: {reason}"


def check_agreement(shapes: list[list[int]]) -> None:
    """ValueError, raised on every rank alike, when a rank rejected its batch or ranks disagree.

    Each entry is [samples, views (0 for (N, d) rows), d, dtype code, has ids, batch accepted, needs the
    gradient] of one rank.
    """
    rejected = [rank for rank, shape in enumerate(shapes) if not shape[5]]
    if rejected:
        raise ValueError(f"rank(s) {rejected} rejected their local batch (their own error says why); no rank computes")
    described = {
        1: ("the layout (0: (N, d) rows, V: (B, V, d) views)", str),
        2: ("the embedding dimension d", str),
        3: ("the dtype", lambda code: _DTYPE_CODES[code]),
        4: ("labels/ids", lambda given: "given" if given else "missing"),
    }
    for index, (name, show) in described.items():
        values = [shape[index] for shape in shapes]
        if len(set(values)) > 1:
            ranks = ", ".join(f"rank {rank}: {show(value)}" for rank, value in enumerate(values))
            raise ValueError(f"ranks disagree on {name} ({ranks}): every rank must pass the same kind of batch")


def _local_problem(embeddings: Array, ids: Array | None, config: LossConfig) -> Exception | None:
    """The error this rank's own batch raises in one process, or None (raised only after every rank knows)."""
    try:
        xp, rows, _ = check_inputs(embeddings, ids)
        if config.check_finite:
            reject_non_finite(rows, xp)
    except (TypeError, ValueError) as error:
        return error
    return None


@dataclass
class _Global:
    """The global batch as one process would see it, and where this rank's rows lie in it."""

    rows: Array  # (V * N_global, d) view-major, in the compute dtype
    ids: Array  # (V * N_global,)
    local_rows: Array  # this rank's (V * B_r, d) rows, view-major, in the compute dtype
    offset: Any  # this rank's first sample (a traced number under JAX)
    sizes: list[int]  # every rank's number of samples
    views: int  # V (1 for (N, d) rows)
    grad_flags: list[bool]  # which ranks need the gradient: when any does, every rank joins the reduce-scatter

    @property
    def need_grad(self) -> bool:
        return any(self.grad_flags)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def segments(self) -> list[tuple[Any, int]]:
        """(first row, number of rows) of this rank's anchors in each view; none for a rank without samples."""
        count = self.local_rows.shape[0] // self.views
        return [(v * self.total + self.offset, count) for v in range(self.views)] if count else []

    def scatter_columns(self, columns: Array, comm: Collectives) -> Array:
        """This rank's (V * B_r, d) rows of the sum over the ranks of (V * N_global, d) view-major columns."""
        xp, dim = aa.namespace(columns), columns.shape[1]
        local = comm.sum_scatter(_as_samples(columns, self.total, self.views, dim, xp), self.sizes)
        return _as_rows(local, self.local_rows.shape[0] // self.views, self.views, dim, xp)


def _gather_batch(embeddings: Array, ids: Array | None, config: LossConfig, comm: Collectives, grad: bool) -> _Global:
    """The global batch, after every rank has said whether it accepts its own.

    The shapes go first, with whether this rank accepts its batch: a bad batch on one rank then
    raises on every rank instead of leaving the others waiting in a collective. Likewise every rank
    joins the gradient's reduce-scatter when any rank needs it.
    """
    xp = aa.namespace(embeddings)
    problem = _local_problem(embeddings, ids, config)
    views = embeddings.shape[1] if embeddings.ndim == 3 else 0
    name = str(embeddings.dtype).rsplit(".", 1)[-1]
    dtype_code = _DTYPE_CODES.index(name) if name in _DTYPE_CODES else 0
    dim = embeddings.shape[-1] if embeddings.ndim else 0
    accepted = int(problem is None)
    shapes = comm.gather_shapes([embeddings.shape[0], views, dim, dtype_code, int(ids is not None), accepted, grad])
    if problem is not None:
        raise problem
    check_agreement(shapes)
    sizes = [shape[0] for shape in shapes]
    # One contiguous (B, V * d) array per rank: gathering the (B, V, d) views themselves gave wrong
    # gradients on gloo (torch.distributed.nn.functional.all_gather), the reshape exact ones.
    samples = comm.all_gather(xp.reshape(embeddings, (embeddings.shape[0], max(views, 1) * dim)), sizes)
    global_ids = None if ids is None else comm.all_gather(ids, sizes)
    if views:
        samples = xp.reshape(samples, (sum(sizes), views, dim))
    _, rows, row_ids = check_inputs(samples, global_ids)
    compute_dtype = aa.accumulation_dtype(xp, rows.dtype)
    local_rows = xp.astype(check_inputs(embeddings, ids)[1], compute_dtype, copy=False)
    return _Global(
        rows=xp.astype(rows, compute_dtype, copy=False),
        ids=row_ids,
        local_rows=local_rows,
        offset=comm.offset(sizes),
        sizes=sizes,
        views=max(views, 1),
        grad_flags=[bool(shape[6]) for shape in shapes],
    )


@dataclass
class _LocalPass:
    """This rank's anchors against every row: the parts the ranks sum, and what makes dL/d(local rows) of them."""

    loss: Array  # S_r (0-d)
    divisor: Array  # D_r (0-d)
    columns: Array | None  # (V * N_global, d): this rank's sum over blocks, summed over the ranks by reduce-scatter
    finish: Callable[[Array, Array], Array]  # (this rank's rows of the summed columns, 1 / D) -> dL/d(local rows)


def _kernel_pass(batch: _Global, config: LossConfig, uniforms: Array | None, ops: Any) -> _LocalPass | None:
    """The fused kernel on this rank's anchors (`fused.anchor_sums`); None when the global batch has no anchor
    with both a positive and a candidate (every rank sees the same ids, so every rank returns None)."""
    xp = aa.namespace(batch.rows)
    segments = [(first, first + count) for first, count in batch.segments()]
    sums = fused.anchor_sums(batch.rows, batch.ids, config, ops, segments, want_grad=batch.need_grad, uniforms=uniforms)
    if sums is None:
        return None
    device = aa.device(batch.rows)
    runs = [xp.arange(first, last, device=device) for first, last in segments]
    local = xp.concat(runs) if runs else xp.arange(0, device=device)
    divisor = xp.asarray(sums.divisor, dtype=batch.rows.dtype, device=device)

    def finish(summed: Array, scale: Array) -> Array:
        # the kernel's grad_u holds G u and G^T u alike (tau / scale times this rank's share): one pull-back
        return sums.gradient(summed, scale, local)

    return _LocalPass(xp.asarray(sums.loss), divisor, sums.grad_u, finish)


def _block(u: Array, ids: Array, first_row: Any, rows: tuple, config: LossConfig) -> tuple:
    """Similarity, positives, candidates and (log weights, support) of a block of anchors against every row.

    With sampled negatives the weights are the log-counts of the block's draws (detached), as in the dense path.
    """
    u_rows, row_ids, row_uniforms = rows[:3]
    similarity = scaled_gram(u_rows, u, config.temperature)
    positives, candidate_mask = pair_masks(
        row_ids, ids, first_row, candidates=config.candidates, include_self=config.include_self
    )
    sampled = config.negatives == "sampled"
    log_weights, support = hardening_weights(config.hardening, similarity, candidate_mask, detach=sampled)
    if sampled:
        log_weights, support = sampled_log_weights(log_weights, support, row_uniforms)
    return similarity, positives, candidate_mask, log_weights, support


def _segment_arrays(u: Array, ids: Array, uniforms: Array, start: Any, count: int) -> tuple[Array, ...]:
    """u, ids and uniforms at the rows start .. start + count - 1 of one segment of anchors."""
    xp = aa.namespace(u, ids)
    rows = start + xp.arange(count, device=aa.device(u))
    return tuple(xp.take(a, rows, axis=0) for a in (u, ids, uniforms))


def _rows_per_block(config: LossConfig, n: int, count: int) -> int:
    """A block is (rows, N_global): "auto" sizes it for N_global columns, as the tiled path does for N."""
    return max(min(tiled.block_rows(config.tile, n), count), 1)


def _segment(u: Array, ids: Array, uniforms: Array, start: Any, count: int, config: LossConfig, scan: Scan) -> tuple:
    """One contiguous run of anchors (rows start .. start + count - 1) against every row, in blocks.

    Returns (column part of dL/du (N, d), its rows' part (count, d), per-row loss sums, per-row |P(i)|),
    all unscaled by the global divisor.
    """
    xp = aa.namespace(u, ids)
    slope = 0.0 if config.negatives == "sampled" else config.slope

    def body(column_grad: Array, first_row: Any, block: tuple) -> tuple:
        terms = _block(u, ids, start + first_row, block, config)
        return tiled.block_step(column_grad, block[0], u, terms, config, slope)

    block_arrays = _segment_arrays(u, ids, uniforms, start, count)
    rows_per_block = _rows_per_block(config, u.shape[0], count)
    column_grad, (pair_counts, loss_sums, row_grad) = scan(body, xp.zeros_like(u), block_arrays, rows_per_block)
    return column_grad, row_grad, loss_sums, pair_counts


def _divisor_share(pair_counts: Array, reduction: str) -> Array:
    """This rank's part of the global divisor: sum |P(i)| ("mean") or #anchors with pairs ("anchor_mean")."""
    xp = aa.namespace(pair_counts)
    return xp.sum(pair_counts if reduction == "mean" else xp.astype(pair_counts > 0, pair_counts.dtype))


def _row_block_pass(
    batch: _Global, config: LossConfig, uniforms: Array, scan: Scan, segment: Callable[..., tuple]
) -> _LocalPass:
    """This rank's anchors through `segment` (`_segment`: the array-API row blocks of `tiled.block_step`)."""
    xp = aa.namespace(batch.rows)
    u = normalize_embeddings(batch.rows, config.normalize)
    parts = [segment(u, batch.ids, uniforms, start, count, config, scan) for start, count in batch.segments()]
    if not parts:  # a rank with no samples still takes part in every collective
        zero = xp.sum(u[:0, 0])
        return _LocalPass(zero, zero, xp.zeros_like(u), lambda summed, scale: summed * scale)
    columns = sum(part[0] for part in parts[1:]) + parts[0][0]
    loss = sum(xp.sum(part[2]) for part in parts)
    divisor = sum(_divisor_share(part[3], config.reduction) for part in parts)
    own_rows = xp.concat([part[1] for part in parts])

    def finish(summed: Array, scale: Array) -> Array:
        local_u = normalize_embeddings(batch.local_rows, config.normalize)
        grad_u = (summed + own_rows) * (scale / config.temperature)
        return normalize_vjp(batch.local_rows, local_u, grad_u, config.normalize)

    return _LocalPass(loss, divisor, columns, finish)


def _uniforms(batch: _Global, config: LossConfig, draw: Callable[[tuple[int, int]], Array] | None) -> Array:
    """The (V * N_global, k) draws of sampled negatives for every global row (ids as placeholders otherwise)."""
    if config.negatives != "sampled":
        return aa.namespace(batch.ids).zeros_like(batch.ids)
    return draw((batch.rows.shape[0], config.k))


def value_and_grad(
    embeddings: Array,
    ids: Array | None,
    config: LossConfig,
    comm: Collectives,
    *,
    draw: Callable[[tuple[int, int]], Array] | None = None,
    need_grad: bool = True,
    scan: Scan = tiled.scan_blocks,
    ops: Any = None,
    segment: Callable[..., tuple] | None = None,
) -> tuple[Array, Array | None]:
    """The loss of the global batch and dL/d(this rank's embeddings), in the embeddings' layout.

        L = (sum_r S_r) / max(sum_r D_r, 1)

    embeddings: this rank's (N_r, d) rows (with ids) or (B_r, V, d) views; draw(shape): the global
    U(0, 1) draws of sampled negatives. The gradient is None when no rank needs it (no reduce-scatter).
    ops: the fused kernel's operations for these arrays (`fused.NumpyOps`, `TorchOps`): this rank's anchors
    then run through the kernel, which must support `config` (`fused.supports`); None: the row blocks.
    segment: a backend's kernel for one run of anchors in the row-block pass, with `_segment`'s signature
    and results (JAX: its fused kernel); None: `_segment`.
    """
    xp = aa.namespace(embeddings)
    batch = _gather_batch(embeddings, ids, config, comm, int(need_grad))
    uniforms = _uniforms(batch, config, draw)
    if ops is None:
        local = _row_block_pass(batch, config, uniforms, scan, segment or _segment)
    else:
        local = _kernel_pass(batch, config, uniforms, ops)
        if local is None:  # every rank alike: no anchor of the global batch has a positive and a candidate
            return xp.sum(batch.local_rows * 0.0), (xp.zeros_like(embeddings) if batch.need_grad else None)
    totals = comm.all_sum(xp.stack([local.loss, local.divisor]))
    divisor = xp.maximum(totals[1], xp.ones_like(totals[1]))
    value = totals[0] / divisor
    if not batch.need_grad:
        return value, None
    grad = local.finish(batch.scatter_columns(local.columns, comm), 1.0 / divisor)
    return value, restore_views(embeddings, value, grad, xp)[1]


def _as_samples(rows: Array, batch: int, views: int, dim: int, xp: Any) -> Array:
    """(V * B, d) view-major rows -> (B, V * d) samples."""
    if views == 1:
        return rows
    return xp.reshape(xp.permute_dims(xp.reshape(rows, (views, batch, dim)), (1, 0, 2)), (batch, views * dim))


def _as_rows(samples: Array, batch: int, views: int, dim: int, xp: Any) -> Array:
    """(B, V * d) samples -> (V * B, d) view-major rows."""
    if views == 1:
        return samples
    return xp.reshape(xp.permute_dims(xp.reshape(samples, (batch, views, dim)), (1, 0, 2)), (views * batch, dim))


# --------------------------------------------------------------------------------------------------
# reduction="none": each rank's per-anchor terms of the global loss, and their gradient


@dataclass
class PerAnchorResiduals:
    """What `per_anchor_grad` needs from `per_anchor_values`: O(N_global d), no (rows, N) block."""

    batch: _Global
    uniforms: Array
    stats: list[tuple[Array, ...]]  # per segment: the rows' (c, log lambda, LSE(log w), LSE(log w + s), has negatives)
    pair_counts: Array  # (V * B_r,) |P(i)| of this rank's anchors


def per_anchor_values(
    embeddings: Array,
    ids: Array | None,
    config: LossConfig,
    comm: Collectives,
    *,
    draw: Callable[[tuple[int, int]], Array] | None = None,
    need_grad: bool = True,
    scan: Scan = tiled.scan_blocks,
) -> tuple[Array, PerAnchorResiduals]:
    """reduction="none": this rank's anchors' terms of the global loss, (V * B_r,) view-major as one process
    orders its own rows: the mean of l_ij over j in P(i) (0 without pairs); and the residuals of their gradient.

    Rank r's entry v * B_r + b is the global entry v * B_global + offset_r + b of one process on the whole batch.
    """
    xp = aa.namespace(embeddings)
    batch = _gather_batch(embeddings, ids, config, comm, int(need_grad))
    if batch.need_grad and not all(batch.grad_flags):
        raise ValueError(
            "reduction='none' across ranks: either every rank or no rank needs the gradient "
            "(its backward pass is a collective every rank joins)"
        )
    uniforms = _uniforms(batch, config, draw)
    u = normalize_embeddings(batch.rows, config.normalize)
    stats, counts, sums = [], [], []
    for start, count in batch.segments():

        def body(carry: Any, first_row: Any, block: tuple, start: Any = start) -> tuple:
            return carry, tiled.forward_step(_block(u, batch.ids, start + first_row, block, config), config)

        arrays = _segment_arrays(u, batch.ids, uniforms, start, count)
        _, (*segment_stats, pair_counts, loss_sums) = scan(body, (), arrays, _rows_per_block(config, u.shape[0], count))
        stats.append(tuple(segment_stats))
        counts.append(pair_counts)
        sums.append(loss_sums)
    empty = xp.zeros((0,), dtype=batch.rows.dtype, device=aa.device(batch.rows))
    pair_counts = xp.concat(counts) if counts else empty
    values = (xp.concat(sums) if sums else empty) * anchor_scale(pair_counts, "none")
    return values, PerAnchorResiduals(batch, uniforms, stats, pair_counts)


def per_anchor_grad(
    residuals: PerAnchorResiduals,
    cotangent: Array,
    embeddings: Array,
    config: LossConfig,
    comm: Collectives,
    *,
    scan: Scan = tiled.scan_blocks,
) -> Array:
    """d(sum over the ranks r of cotangent_r . values_r)/d(this rank's embeddings), in their layout.

    Each rank recomputes its blocks with G weighted by its own cotangents; the column parts are summed over
    the ranks (one reduce-scatter, which every rank must join) and each rank adds its rows' part.
    """
    batch = residuals.batch
    xp = aa.namespace(batch.rows)
    u = normalize_embeddings(batch.rows, config.normalize)
    scale = anchor_scale(residuals.pair_counts, "none") * xp.astype(cotangent, batch.rows.dtype)
    slope = 0.0 if config.negatives == "sampled" else config.slope
    columns, own_rows, done = xp.zeros_like(u), [], 0
    for (start, count), stats in zip(batch.segments(), residuals.stats, strict=True):

        def body(carry: Array, first_row: Any, block: tuple, start: Any = start) -> tuple:
            terms = _block(u, batch.ids, start + first_row, block, config)
            return tiled.backward_step(carry, block[0], u, terms, tuple(block[3:8]), block[8], config, slope)

        arrays = (*_segment_arrays(u, batch.ids, residuals.uniforms, start, count), *stats)
        arrays = (*arrays, scale[done : done + count])
        columns, (row_grad,) = scan(body, columns, arrays, _rows_per_block(config, u.shape[0], count))
        own_rows.append(row_grad)
        done += count
    grad_u = batch.scatter_columns(columns, comm)
    if own_rows:
        grad_u = grad_u + xp.concat(own_rows)
    local_u = normalize_embeddings(batch.local_rows, config.normalize)
    grad = normalize_vjp(batch.local_rows, local_u, grad_u / config.temperature, config.normalize)
    return restore_views(embeddings, cotangent, grad, xp)[1]
