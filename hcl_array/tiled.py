"""Memory-efficient (tiled) evaluation of the expected-negative losses, forward and backward.

The dense path holds the whole (N, N) similarity matrix and a dozen masks and weights of that size.
Here the anchors are processed in blocks of `tile` rows, each against every column:

    s_block = g(z)[rows] g(z)^T / tau                                   (tile, N)
    c_i = log lambda_i + LSE_n(log w_in + s_in) - LSE_n(log w_in)       (complete: row i is whole)
    S_i = sum_{j in P(i)} l_ij,  |P(i)|

so one pass gives every per-anchor quantity, and the loss is a reduction of the (N,) vectors S and
|P(i)|. Peak memory is O(tile * N + N * d), never O(N^2). The gradient needs each block's

    G_block = dL/ds_block                                               (tile, N)
    dL/du[rows] += G_block u / tau,    dL/du += G_block^T u[rows] / tau

pulled back through g exactly as the dense path does. For a scalar loss G_block is final once the
block is seen (up to one global factor), so `value_and_grad` accumulates dL/du in the same pass as the
value; per-anchor values (reduction="none") weigh G by the cotangent, so `backward` recomputes the
blocks from (N,) statistics. Every formula is the dense path's own, from `formulas` (masks,
hardening weights, c_i, l_ij, dL/ds): the two paths cannot drift apart.

Why row blocks and not column tiles with an online log-sum-exp: a block of whole rows sees every
candidate of its anchors, so c_i is exact after one pass (a column-tiled stream needs a second pass
for l_ij, which needs c_i first), the hardening functions that look at a whole row (top-k) work
unchanged, and the memory bound is the same O(tile * N).

Torch and JAX register this gradient as their custom one (`backends/_torch_autograd.py`,
`backends/_jax_vjp.py`) in the dispatch table; NumPy and CuPy call `value_and_grad` directly
(`return_grad=True`). NumPy, CuPy, torch and JAX inputs of the common configurations take the fused
kernel instead (`hcl_array.fused`, `backends/_jax_fused.py`), which follows the same plan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _array_api as aa
from .config import LossConfig
from .formulas import (
    anchor_scale,
    anchor_terms,
    batch_divisor,
    hardening_weights,
    normalize_embeddings,
    normalize_vjp,
    pair_losses,
    pair_masks,
    row_weight,
    scaled_gram,
    similarity_grad,
)
from .hardening import ExponentialTilt, FromCallable, Threshold, TopK, Uniform

Array = Any

__all__ = [
    "AUTO_THRESHOLD",
    "auto_tile",
    "block_rows",
    "unsupported",
    "scan_blocks",
    "block_step",
    "forward_step",
    "backward_step",
    "forward",
    "backward",
    "value_and_grad",
    "loss",
]

#: tile="auto" switches to the tiled path above this many rows (the dense (N, N) matrices then pass ~1 GiB).
AUTO_THRESHOLD = 8192  # measured faster dense than with a recomputing backward pass; above, memory wins
#: tile="auto" picks rows per block so that one (tile, N) block holds about this many entries (64 MiB in float32).
AUTO_BLOCK_ENTRIES = 2**24

# Hardening functions whose log eta for an anchor depends on that anchor's row alone: a block of rows
# computes exactly what the dense matrix would. A user's Hardening class may look across rows, so it stays dense.
_ROW_WISE = (Uniform, ExponentialTilt, Threshold, TopK, FromCallable)


def auto_tile(n: int) -> int:
    """Rows per block for tile="auto": about AUTO_BLOCK_ENTRIES entries per (tile, N) block, 64 to 4096 rows."""
    return int(min(max(AUTO_BLOCK_ENTRIES // max(n, 1), 64), 4096))


def block_rows(tile: int | str | None, n: int) -> int:
    """Anchor rows per block for a `tile` request, at most n: auto_tile(n) for "auto", n for None, else tile."""
    if tile is None:
        return n
    return min(auto_tile(n) if tile == "auto" else int(tile), n)


def unsupported(config: LossConfig) -> str | None:
    """Why the tiled path cannot compute `config` (then only the dense path can), or None when it can."""
    if config.negatives != "expected":
        return "sampled negatives draw from the whole (N, N) matrix of weights: use negatives='expected'"
    if not isinstance(config.hardening, _ROW_WISE):
        return f"hardening {config.hardening!r} is not a built-in row-wise hardening function"
    if not config.detach_weights and getattr(config.hardening, "slope", None) is None:
        return f"the gradient through the weights of {config.hardening!r} is unknown: use detach_weights=True"
    return None


def scan_blocks(body: Callable[..., Any], carry: Any, row_arrays: tuple[Array, ...], tile: int) -> tuple[Any, tuple]:
    """Run body(carry, first_row, rows) -> (carry, outputs) over consecutive blocks of `tile` rows.

    `rows` holds each of `row_arrays` restricted to the block; the outputs (arrays with one entry per
    row) are concatenated over blocks. A Python loop: JAX swaps in a `lax.scan` (backends/_jax_vjp.py),
    so that its compiled program does not grow with N / tile.
    """
    xp = aa.namespace(*row_arrays)
    n = row_arrays[0].shape[0]
    outputs = []
    for start in range(0, n, tile):
        stop = min(start + tile, n)  # the array API leaves out-of-bounds slice stops unspecified
        carry, out = body(carry, start, tuple(a[start:stop, ...] for a in row_arrays))
        outputs.append(out)
    return carry, tuple(xp.concat([out[i] for out in outputs]) for i in range(len(outputs[0])))


def _block(u: Array, ids: Array, first_row: Any, u_rows: Array, row_ids: Array, config: LossConfig) -> tuple:
    """Similarity, masks and weights of one block of anchors (rows first_row, ...) against every column."""
    similarity = scaled_gram(u_rows, u, config.temperature)
    positives, candidate_mask = pair_masks(
        row_ids, ids, first_row, candidates=config.candidates, include_self=config.include_self
    )
    log_weights, support = hardening_weights(config.hardening, similarity, candidate_mask, detach=False)
    return similarity, positives, candidate_mask, log_weights, support


def forward(z: Array, ids: Array, config: LossConfig, *, scan: Callable[..., Any] = scan_blocks) -> tuple[Array, tuple]:
    """The loss, block by block, and the (N,) per-anchor statistics the backward pass needs.

    Statistics: (c_i, log lambda_i, LSE(log w), LSE(log w + s), has negatives, |P(i)|).
    """
    xp = aa.namespace(z, ids)
    u = normalize_embeddings(z, config.normalize)

    def body(carry: Any, first_row: Any, rows: tuple[Array, Array]) -> tuple[Any, tuple]:
        return carry, forward_step(_block(u, ids, first_row, *rows, config), config)

    _, (*stats, pair_counts, loss_sums) = scan(body, (), (u, ids), block_rows(config.tile, z.shape[0]))
    per_anchor = loss_sums * anchor_scale(pair_counts, config.reduction)
    value = per_anchor if config.reduction == "none" else xp.sum(per_anchor)
    return value, (*stats, pair_counts)


def value_and_grad(
    z: Array, ids: Array, config: LossConfig, *, scan: Callable[..., Any] = scan_blocks
) -> tuple[Array, Array]:
    """The loss and dL/dz in one pass over the blocks, for the scalar reductions.

    A block's G = dL/ds is final once the block is seen, up to one global factor (1 / #pairs, or
    1 / #anchors with pairs), so dL/du accumulates while the block is in memory: three matrix
    products per block and no block computed twice. (`backward` recomputes instead: it serves the
    per-anchor values of reduction="none", whose gradient depends on the cotangent inside the sum.)
    """
    if config.reduction == "none":
        raise ValueError("value_and_grad needs a scalar loss: reduction='mean' or 'anchor_mean'")
    xp = aa.namespace(z, ids)
    u = normalize_embeddings(z, config.normalize)

    def body(column_grad: Array, first_row: Any, rows: tuple[Array, Array]) -> tuple[Array, tuple]:
        u_rows, row_ids = rows
        block = _block(u, ids, first_row, u_rows, row_ids, config)
        return block_step(column_grad, u_rows, u, block, config, config.slope)

    column_grad, (pair_counts, loss_sums, row_grad) = scan(
        body, xp.zeros_like(u), (u, ids), block_rows(config.tile, z.shape[0])
    )
    scale = 1.0 / batch_divisor(pair_counts, config.reduction)
    grad_u = (row_grad + column_grad) * (scale / config.temperature)
    return xp.sum(loss_sums) * scale, normalize_vjp(z, u, grad_u, config.normalize)


def block_step(
    column_grad: Array, u_rows: Array, u: Array, block: tuple, config: LossConfig, slope: float
) -> tuple[Array, tuple[Array, Array, Array]]:
    """One block of anchor rows in a pass that accumulates dL/du (this path's and `distributed.py`'s).

    block: (s, positives, candidates, log weights, support) of the rows against all columns. Returns
    column_grad + G^T u_rows and (|P(i)|, sum_j w_ij l_ij, G u) for the rows, with G = dL/ds before the
    global scale and slope the weights' own derivative (0 when they are detached or drawn).
    """
    xp = aa.namespace(u)
    similarity, positives, candidate_mask, log_weights, support = block
    anchor_term, log_lambda, log_normalizer, log_tilted, has_negatives = anchor_terms(
        log_weights, support, similarity, candidate_mask, k=config.k, negative_reduction=config.negative_reduction
    )
    pair_loss, dl_dc, dl_ds = pair_losses(
        config.form, anchor_term, similarity, log_lambda, config.tau_plus, config.temperature, part="both"
    )
    positive = xp.astype(positives, similarity.dtype)
    pair_count = xp.sum(positive, axis=1)
    # l_ij is finite: the zeros make no NaN
    weight = xp.astype(has_negatives, similarity.dtype) * row_weight(pair_count, config.reduction)
    pair_weights = positive * weight[:, None]
    grad_similarity = similarity_grad(
        pair_weights, dl_dc, dl_ds, log_weights, similarity, support, log_tilted, log_normalizer, slope
    )
    loss_sum = xp.sum(pair_loss * pair_weights, axis=1)
    return column_grad + grad_similarity.T @ u_rows, (pair_count, loss_sum, grad_similarity @ u)


def forward_step(block: tuple, config: LossConfig) -> tuple[Array, ...]:
    """One block of anchor rows in a value pass (this path's and `distributed.py`'s per-anchor values).

    block: (s, positives, candidates, log weights, support) of the rows against all columns. Returns the rows'
    (c_i, log lambda_i, LSE(log w), LSE(log w + s), has negatives, |P(i)|, the sum of l_ij over j in P(i)).
    """
    similarity, positives, candidate_mask, log_weights, support = block
    xp = aa.namespace(similarity)
    anchor_term, log_lambda, log_normalizer, log_tilted, has_negatives = anchor_terms(
        log_weights, support, similarity, candidate_mask, k=config.k, negative_reduction=config.negative_reduction
    )
    pair_loss, _, _ = pair_losses(
        config.form, anchor_term, similarity, log_lambda, config.tau_plus, config.temperature, part="value"
    )
    pair_count = xp.sum(xp.astype(positives, similarity.dtype), axis=1)
    loss_sum = xp.sum(pair_loss * xp.astype(positives, similarity.dtype), axis=1)
    loss_sum = loss_sum * xp.astype(has_negatives, similarity.dtype)  # l_ij is finite: no NaN from the zeros
    return anchor_term, log_lambda, log_normalizer, log_tilted, has_negatives, pair_count, loss_sum


def backward_step(
    column_grad: Array,
    u_rows: Array,
    u: Array,
    block: tuple,
    stats: tuple[Array, ...],
    scale: Array,
    config: LossConfig,
    slope: float,
) -> tuple[Array, tuple[Array]]:
    """One block of a recomputing backward pass: column_grad + G^T u_rows and (G u,) for the rows, with
    G = dL/ds weighted by each row's `scale` (its pairs' weight times the cotangent).

    block: as in `forward_step`; stats: the rows' first five statistics from `forward_step`.
    """
    xp = aa.namespace(u)
    similarity, positives, _, log_weights, support = block
    anchor_term, log_lambda, log_normalizer, log_tilted, has_negative = stats
    _, dl_dc, dl_ds = pair_losses(
        config.form, anchor_term, similarity, log_lambda, config.tau_plus, config.temperature, part="grad"
    )
    pair_weights = xp.astype(positives, similarity.dtype) * (scale * xp.astype(has_negative, scale.dtype))[:, None]
    grad_similarity = similarity_grad(
        pair_weights, dl_dc, dl_ds, log_weights, similarity, support, log_tilted, log_normalizer, slope
    )
    return column_grad + grad_similarity.T @ u_rows, (grad_similarity @ u,)


def backward(
    z: Array,
    ids: Array,
    stats: tuple[Array, ...],
    cotangent: Array,
    config: LossConfig,
    *,
    scan: Callable[..., Any] = scan_blocks,
) -> Array:
    """dL/dz for the cotangent of the loss (a scalar, or (N,) with reduction="none"), recomputing each block.

    G_block = dL/ds_block (the dense path's `similarity_grad`); dL/du = (G u + G^T u) / tau summed over
    blocks; then the normalization VJP.
    """
    xp = aa.namespace(z, ids)
    anchor_terms, log_lambdas, log_normalizers, log_tilteds, has_negatives, pair_counts = stats
    u = normalize_embeddings(z, config.normalize)
    pair_scale = anchor_scale(pair_counts, config.reduction) * xp.astype(cotangent, z.dtype)

    def body(column_grad: Array, first_row: Any, rows: tuple[Array, ...]) -> tuple[Array, tuple[Array]]:
        u_rows, row_ids, *stats, scale = rows
        block = _block(u, ids, first_row, u_rows, row_ids, config)
        return backward_step(column_grad, u_rows, u, block, tuple(stats), scale, config, config.slope)

    row_arrays = (u, ids, anchor_terms, log_lambdas, log_normalizers, log_tilteds, has_negatives, pair_scale)
    column_grad, (row_grad,) = scan(body, xp.zeros_like(u), row_arrays, block_rows(config.tile, z.shape[0]))
    grad_u = (row_grad + column_grad) / config.temperature
    return normalize_vjp(z, u, grad_u, config.normalize)


def loss(z: Array, ids: Array, config: LossConfig, *, uniforms: Array | None = None, return_grad: bool = False) -> Any:
    """The loss, or (loss, dL/dz) in one pass with return_grad: the tiled path's array-API entry.

    Torch and JAX register their own entries (a custom gradient around these functions), so that
    autograd never stores a (tile, N) block.
    """
    del uniforms  # expected negatives only (`unsupported`)
    return value_and_grad(z, ids, config) if return_grad else forward(z, ids, config)[0]
