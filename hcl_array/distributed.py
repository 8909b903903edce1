"""Cross-device negatives: each device's anchors against the gathered global batch.

The global batch is the concatenation of every rank's local batch, ranks in order (rows, or samples of
(B, V, d) views). Flattened view-major as one process would (row v * B_global + b), rank r's anchors
are the V segments of rows v * B_global + offset_r + (0 .. B_r - 1). Each rank computes, in row
blocks of its own anchors against every global candidate (memory O(tile x N_global), never
N_global x N_global),

    S_r = sum over its anchors i of sum_{j in P(i)} l_ij          (the dense path's formulas)
    D_r = its share of the divisor: sum |P(i)| ("mean") or #{i : |P(i)| > 0} ("anchor_mean")

and the loss is (sum_r S_r) / max(sum_r D_r, 1): the single-process value, on every rank. The
gradient with respect to g(z) splits as in `tiled.py`: a block's G = dL/ds gives its own rows
G u / tau (local) and every global row G^T u_rows / tau (the column part). The column parts of all
ranks are summed and each rank keeps its rows (one reduce-scatter), then g's VJP runs on local rows.

Communication per step: one small all-gather of shapes (which also catches ranks that disagree), one
all-gather of the embeddings as contiguous (B, V * d) samples and one of the ids, one all-reduce of
two scalars, and with a gradient one reduce-scatter of an (N_global, d) array. The framework's
collectives are a `Collectives` object (`backends/_torch_distributed.py`, `backends/_jax_distributed.py`).

Sampled negatives draw the global (N_global, k) uniforms on every rank (from the same seed, or the
same `uniforms=`) and take their anchors' rows: the same draws as one process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from . import _array_api as aa
from . import tiled
from .config import LossConfig, check_inputs, reject_non_finite, restore_views
from .formulas import (
    hardening_weights,
    normalize_embeddings,
    normalize_vjp,
    pair_masks,
    sampled_log_weights,
    scaled_gram,
)

Array = Any
Scan = Callable[..., Any]

__all__ = ["Collectives", "unsupported", "check_agreement", "value_and_grad"]

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
    """Why the distributed path cannot compute `config`, or None when it can."""
    if config.reduction == "none":
        return "reduction='none' (per-anchor values) is not distributed: use reduction='mean' or 'anchor_mean'"
    if config.kernel == "fused":
        return "kernel='fused' runs in one process: pass kernel='auto' (the distributed path blocks by tile)"
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


def _block(u: Array, ids: Array, first_row: Any, rows: tuple, config: LossConfig) -> tuple:
    """Similarity, positives, candidates and (log weights, support) of a block of anchors against every row.

    With sampled negatives the weights are the log-counts of the block's draws (detached), as in the dense path.
    """
    u_rows, row_ids, row_uniforms = rows
    similarity = scaled_gram(u_rows, u, config.temperature)
    positives, candidate_mask = pair_masks(
        row_ids, ids, first_row, candidates=config.candidates, include_self=config.include_self
    )
    sampled = config.negatives == "sampled"
    log_weights, support = hardening_weights(config.hardening, similarity, candidate_mask, detach=sampled)
    if sampled:
        log_weights, support = sampled_log_weights(log_weights, support, row_uniforms)
    return similarity, positives, candidate_mask, log_weights, support


def _segment(u: Array, ids: Array, uniforms: Array, start: Any, count: int, config: LossConfig, scan: Scan) -> tuple:
    """One contiguous run of anchors (rows start .. start + count - 1) against every row, in blocks.

    Returns (column part of dL/du (N, d), its rows' part (count, d), per-row loss sums, per-row |P(i)|),
    all unscaled by the global divisor.
    """
    xp = aa.namespace(u, ids)
    rows = start + xp.arange(count, device=aa.device(u))
    slope = 0.0 if config.negatives == "sampled" else config.slope

    def body(column_grad: Array, first_row: Any, block: tuple) -> tuple:
        terms = _block(u, ids, start + first_row, block, config)
        return tiled.block_step(column_grad, block[0], u, terms, config, slope)

    block_arrays = tuple(xp.take(a, rows, axis=0) for a in (u, ids, uniforms))
    # a block is (rows, N_global): "auto" sizes it for N_global columns, as the tiled path does for N
    rows_per_block = min(tiled.block_rows(config.tile, u.shape[0]), count)
    column_grad, (pair_counts, loss_sums, row_grad) = scan(body, xp.zeros_like(u), block_arrays, rows_per_block)
    return column_grad, row_grad, loss_sums, pair_counts


def _divisor_share(pair_counts: Array, reduction: str) -> Array:
    """This rank's part of the global divisor: sum |P(i)| ("mean") or #anchors with pairs ("anchor_mean")."""
    xp = aa.namespace(pair_counts)
    return xp.sum(pair_counts if reduction == "mean" else xp.astype(pair_counts > 0, pair_counts.dtype))


def _gather_batch(embeddings: Array, ids: Array | None, config: LossConfig, comm: Collectives, grad: bool) -> tuple:
    """The global batch as one process would see it: (rows, ids, this rank's first sample, sizes, views,
    whether any rank needs the gradient).

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
    return rows, row_ids, comm.offset(sizes), sizes, max(views, 1), any(shape[6] for shape in shapes)


def value_and_grad(
    embeddings: Array,
    ids: Array | None,
    config: LossConfig,
    comm: Collectives,
    *,
    draw: Callable[[tuple[int, int]], Array] | None = None,
    need_grad: bool = True,
    scan: Scan = tiled.scan_blocks,
    segment: Callable[..., tuple] | None = None,
) -> tuple[Array, Array | None]:
    """The loss of the global batch and dL/d(this rank's embeddings), in the embeddings' layout.

        L = (sum_r S_r) / max(sum_r D_r, 1)

    embeddings: this rank's (N_r, d) rows (with ids) or (B_r, V, d) views; draw(shape): the global
    U(0, 1) draws of sampled negatives. The gradient is None when no rank needs it (no reduce-scatter).
    segment: a backend's kernel for one run of anchors, with `_segment`'s signature and results (JAX: its fused kernel).
    """
    xp = aa.namespace(embeddings)
    rows, row_ids, offset, sizes, views, need_grad = _gather_batch(embeddings, ids, config, comm, int(need_grad))
    rows = xp.astype(rows, aa.accumulation_dtype(xp, rows.dtype), copy=False)
    u = normalize_embeddings(rows, config.normalize)
    batch, total = embeddings.shape[0], sum(sizes)
    uniforms = draw((rows.shape[0], config.k)) if config.negatives == "sampled" else xp.zeros_like(row_ids)
    segments = range(views) if batch else ()  # a rank with no samples still takes part in every collective
    segment = _segment if segment is None else segment
    parts = [segment(u, row_ids, uniforms, v * total + offset, batch, config, scan) for v in segments]
    column_grad = sum(part[0] for part in parts[1:]) + parts[0][0] if batch else xp.zeros_like(u)
    loss_sum = sum(xp.sum(part[2]) for part in parts) if batch else xp.sum(u[:0, 0])
    divisor = sum(_divisor_share(part[3], config.reduction) for part in parts) if batch else loss_sum
    totals = comm.all_sum(xp.stack([loss_sum, divisor]))
    divisor = xp.maximum(totals[1], xp.ones_like(totals[1]))
    value = totals[0] / divisor
    if not need_grad:
        return value, None
    dim = rows.shape[1]
    local_columns = comm.sum_scatter(_as_samples(column_grad, total, views, dim, xp), sizes)
    grad_u = _as_rows(local_columns, batch, views, dim, xp)
    if batch:
        grad_u = grad_u + xp.concat([part[1] for part in parts])
    local_rows = _as_rows(xp.reshape(embeddings, (batch, views * dim)), batch, views, dim, xp)
    local_rows = xp.astype(local_rows, rows.dtype, copy=False)
    grad = normalize_vjp(local_rows, normalize_embeddings(local_rows, config.normalize), grad_u, config.normalize)
    return value, restore_views(embeddings, value, grad / (divisor * config.temperature), xp)[1]


def _as_samples(rows: Array, batch: int, views: int, dim: int, xp: Any) -> Array:
    """(V * B, d) view-major rows -> (B, V * d) samples."""
    return xp.reshape(xp.permute_dims(xp.reshape(rows, (views, batch, dim)), (1, 0, 2)), (batch, views * dim))


def _as_rows(samples: Array, batch: int, views: int, dim: int, xp: Any) -> Array:
    """(B, V * d) samples -> (V * B, d) view-major rows."""
    return xp.reshape(xp.permute_dims(xp.reshape(samples, (batch, views, dim)), (1, 0, 2)), (views * batch, dim))
