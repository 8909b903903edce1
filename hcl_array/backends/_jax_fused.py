"""The fused kernel for JAX: value and gradient of the common losses in one pass over blocks of anchor rows.

The dispatcher's ("fused", "jax") entry: the configurations `fused.supports` accepts (uniform or exponential
weights, expected or sampled negatives, the infonce and supcon forms, a scalar reduction), as a
`jax.custom_vjp` whose forward rule computes dL/dz in the same pass as the value, block by block in a
`lax.scan`: the gradient of a scalar loss is known once a block has been seen (up to the global divisor),
so the backward rule only scales it by the cotangent. Memory O(tile x N + N d); nothing of size (N, N).
The formulas are `fused.py`'s (its docstring has them); here they run on masks of the block instead of
in-place buffers and pair lists, which XLA fuses into a few passes over the block:

    x = (1 + beta) s = u[a:b] ((1 + beta) u / tau)^T, -inf off the candidates, E = exp(x - max x)
    c_i = log lambda_i + log sum E + max x - LSE(beta s)          (beta s = x beta / (1 + beta))
    l_ij = softplus(c_i - s_ij) (supcon: c_i - s_ij) on the positives
    G = (1 + slope) r_i E / sum E - slope r_i q_i - w_ij dl/dc_ij [j in P(i)],  r_i = sum_j w_ij dl/dc_ij
    dL/du[a:b] += G u,  dL/du += G^T u[a:b]                        (/ tau and the divisor at the end)

Sampled negatives (the paper's estimator): per block, the weights eta(s_in) on the candidates; each
anchor's k uniforms pick the first n with W_in > u W_iN, W its running sums (`draw_columns`: on the CPU
NumPy's kernel's guide table through a host callback on the block, elsewhere `tree_draw_columns`, a
descent of a tree of the weights' pairwise sums), c_i = log lambda_i - log k + LSE_t s_{i n_t}, and G
gets r_i softmax_t(s_{i n_t}) at the drawn columns (a column drawn twice counts twice). No running sum of
the whole batch exists, only the block's (on the host).

`segment` is also the distributed path's block loop on a mesh (`_jax_distributed.py`): local anchors
against the gathered global batch, with their global positions for the self-pairs. Nothing here needs a
concrete value, so the whole computation runs under `jax.jit` and inside `shard_map`.
"""

from __future__ import annotations

import math
import threading
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hcl_array import dispatch, fused, inverse_cdf
from hcl_array.config import LossConfig
from hcl_array.formulas import normalize_embeddings, normalize_vjp
from hcl_array.hardening import ExponentialTilt
from hcl_array.tiled import AUTO_BLOCK_ENTRIES, block_rows

__all__ = ["MATMUL_PRECISION", "draw_columns", "fused_loss", "rows_per_block_request", "segment", "tree_draw_columns"]

#: The precision of the kernel's three products per block: None, the precision in effect when they are
#: traced, which is `_array_api.full_precision`'s (the one place for that choice; dispatch enters it around
#: the kernel): full float32 instead of a GPU's TF32 default, or the precision the user chose.
MATMUL_PRECISION = None


def _rows_by_columns(rows: jax.Array, columns: jax.Array) -> jax.Array:
    """rows @ columns^T: (r, d) x (N, d) -> (r, N)."""
    return jax.lax.dot_general(rows, columns, (((1,), (1,)), ((), ())), precision=MATMUL_PRECISION)


def _times(matrix: jax.Array, rows: jax.Array) -> jax.Array:
    """matrix @ rows: (r, N) x (N, d) -> (r, d)."""
    return jax.lax.dot_general(matrix, rows, (((1,), (0,)), ((), ())), precision=MATMUL_PRECISION)


def _transposed_times(matrix: jax.Array, rows: jax.Array) -> jax.Array:
    """matrix^T @ rows: (r, N) x (r, d) -> (N, d)."""
    return jax.lax.dot_general(matrix, rows, (((0,), (0,)), ((), ())), precision=MATMUL_PRECISION)


def _beta(config: LossConfig) -> float:
    return config.hardening.beta if isinstance(config.hardening, ExponentialTilt) else 0.0


def draw_columns(weights: jax.Array, uniforms: jax.Array) -> jax.Array:
    """(rows, k) columns by inverse CDF: for each draw u_t the first n with W_in > u_t W_i, W_in the running sum
    of row i's nonnegative weights up to column n and W_i its total; never a weightless column.

    On the CPU, NumPy's kernel finds them (`inverse_cdf.draw_columns`, a guide table, through a host
    callback on the block): XLA's gathers cost about 20 ns each there, so a search in XLA took six times
    as long. When JAX's default backend is another (a GPU), `tree_draw_columns` does, in XLA. Each row's
    columns come back sorted (the loss does not depend on the order of the draws).
    """
    if not _draws_on_host():
        return tree_draw_columns(weights, uniforms)
    return jax.pure_callback(_host_draw_columns, jax.ShapeDtypeStruct(uniforms.shape, jnp.int32), weights, uniforms)


def _draws_on_host() -> bool:
    """Whether the program being traced runs on the CPU (JAX's default backend), where the host draws."""
    return jax.default_backend() == "cpu"


_host_scratch = threading.local()


def _host_draw_columns(weights: Any, uniforms: Any) -> np.ndarray:
    """`draw_columns` in NumPy: the running sums (in a buffer kept per thread for the next block of the same
    shape, under NumPy's kernel's limit: a fresh one page-faults), then the guide table; the comparison runs
    in the wider dtype, as NumPy's kernel's does."""
    weights, uniforms = np.asarray(weights), np.asarray(uniforms)
    buffer = getattr(_host_scratch, "running_sums", None)
    if buffer is None or buffer.shape != weights.shape or buffer.dtype != weights.dtype:
        buffer = np.empty_like(weights)
        _host_scratch.running_sums = buffer if buffer.nbytes <= fused.SCRATCH_LIMIT_BYTES else None
    np.cumsum(weights, axis=1, out=buffer)
    return inverse_cdf.draw_columns(buffer, uniforms).astype(np.int32)


def tree_draw_columns(weights: jax.Array, uniforms: jax.Array) -> jax.Array:
    """`draw_columns` in XLA, without running sums (XLA's cumulative sum on the CPU cost twelve passes of
    exp): pairwise sums of the weights, level by level, are a binary tree over each row (zeros pad N to a
    power of two), and each draw descends it from the root, going right when its remainder reaches the
    left child's sum and the rest of the node has weight: log2(N) gathers over (rows, k).

    In exact arithmetic these are a binary search's columns; the tree's sums round differently from a
    left-to-right running sum, which moves a few draws in a thousand in float32 (tests/test_draws.py).
    """
    rows, n = weights.shape
    uniforms = jnp.sort(uniforms, axis=1)  # each row's columns then come out sorted, as NumPy's do
    width = 1 << max(n - 1, 1).bit_length()  # a power of two >= n, at least 2
    level = jnp.pad(weights, ((0, 0), (0, width - n)))
    levels = [level]
    while level.shape[1] > 1:
        level = level[:, 0::2] + level[:, 1::2]
        levels.append(level)
    node_sum = levels[-1][:, :1] + jnp.zeros(uniforms.shape, weights.dtype)
    remainder = uniforms * node_sum  # u W
    node = jnp.zeros(uniforms.shape, dtype=jnp.int32)
    for children in reversed(levels[:-1]):
        left_child = 2 * node
        left = jnp.take_along_axis(children, left_child, axis=1)
        # the right child has weight whenever the node's sum exceeds the left one's; the test also keeps
        # a remainder that rounding carried past the node's weight out of weightless columns
        go_right = (remainder >= left) & (node_sum > left)
        remainder = jnp.where(go_right, remainder - left, remainder)
        node_sum = jnp.where(go_right, node_sum - left, left)
        node = left_child + go_right
    return node


def _anchor_constants(row_ids: jax.Array, ids: jax.Array, config: LossConfig, dtype: Any) -> dict[str, jax.Array]:
    """Per anchor: |P(i)|, the weight w_i of its pairs before the divisor (0 without candidates), log lambda_i
    and log |N(i)|, from the sorted ids (O(N log N), no (N, N) mask)."""
    n = ids.shape[0]
    sorted_ids = jnp.sort(ids)
    group = jnp.searchsorted(sorted_ids, row_ids, side="right") - jnp.searchsorted(sorted_ids, row_ids, side="left")
    not_self = 0 if config.include_self else 1
    pair_count = group - not_self
    candidates = n - group if config.candidates == "other-ids" else jnp.full_like(group, n - not_self)
    log_candidates = jnp.log(jnp.maximum(candidates, 1).astype(dtype))
    if config.negative_reduction == "mean":
        log_lambda = jnp.zeros_like(log_candidates)
    else:
        log_lambda = log_candidates if config.k is None else jnp.full_like(log_candidates, math.log(config.k))
    row_weight = jnp.ones_like(log_candidates) if config.reduction == "mean" else 1.0 / jnp.maximum(pair_count, 1)
    return {
        "pair_count": pair_count,
        "weight": jnp.where(candidates > 0, row_weight.astype(dtype), 0.0),
        "log_lambda": log_lambda,
        "log_candidates": log_candidates,
    }


def _masks(row_ids: jax.Array, positions: jax.Array, ids: jax.Array, config: LossConfig) -> tuple[Any, Any]:
    """(positives, candidates) of a block of anchors (global `positions`) against every row; None: all."""
    same = row_ids[:, None] == ids[None, :]
    if config.include_self and config.candidates == "all":
        return same, None
    is_self = positions[:, None] == jnp.arange(ids.shape[0])[None, :]
    positives = same if config.include_self else same & ~is_self
    return positives, (~same if config.candidates == "other-ids" else ~is_self)


def _pair_terms(anchor_term: jax.Array, similarity: jax.Array, positives: jax.Array, form: str) -> tuple:
    """(sum over each anchor's positives of l_ij, dl/dc_ij on the positives and 0 elsewhere); the pairs run
    along the last axis, the anchors along the others."""
    margin = anchor_term[..., None] - similarity
    if form == "supcon":  # l = c - s
        return jnp.sum(jnp.where(positives, margin, 0.0), axis=-1), positives.astype(similarity.dtype)
    # softplus and sigmoid from one exponential: e = exp(-|m|) <= 1 never overflows
    e = jnp.exp(-jnp.abs(margin))
    softplus = jnp.maximum(margin, 0.0) + jnp.log1p(e)
    sigmoid = jnp.where(margin >= 0, 1.0, e) / (1.0 + e)
    return jnp.sum(jnp.where(positives, softplus, 0.0), axis=-1), jnp.where(positives, sigmoid, 0.0)


def _expected_negatives(u_rows, columns, candidates, constants, config: LossConfig) -> tuple:
    """(c_i, s, G's candidate part as a function of r_i) of a block for expected negatives;
    `columns` = (1 + beta) u / tau."""
    beta = _beta(config)
    tilted = _rows_by_columns(u_rows, columns)  # x = (1 + beta) s
    masked = tilted if candidates is None else jnp.where(candidates, tilted, -jnp.inf)
    has_candidates = constants["weight"] > 0
    peak = jnp.where(has_candidates, jnp.max(masked, axis=1), 0.0)  # finite where the row has candidates
    shifted = masked - peak[:, None]
    exponentials = jnp.exp(shifted)
    tilted_sum = jnp.where(has_candidates, jnp.sum(exponentials, axis=1), 1.0)
    slope = config.slope
    if beta:
        ratio = beta / (1.0 + beta)
        weights = jnp.exp(shifted * ratio)
        weights_sum = jnp.where(has_candidates, jnp.sum(weights, axis=1), 1.0)
        log_normalizer = jnp.log(weights_sum) + peak * ratio
    else:
        log_normalizer = constants["log_candidates"]
    anchor_term = constants["log_lambda"] + jnp.log(tilted_sum) + peak - log_normalizer

    def gradient(anchor_grad: jax.Array) -> jax.Array:  # (1 + slope) r_i p_in - slope r_i q_in
        candidate_part = ((anchor_grad * (1.0 + slope)) / tilted_sum)[:, None] * exponentials
        if slope:
            candidate_part = candidate_part - ((anchor_grad * slope) / weights_sum)[:, None] * weights
        return candidate_part

    return anchor_term, tilted * (1.0 / (1.0 + beta)), gradient


def _sampled_negatives(u_rows, columns, candidates, constants, uniforms, config: LossConfig) -> tuple:
    """(c_i, s, G's candidate part as a function of r_i) of a block for k sampled negatives per anchor;
    `columns` = u / tau."""
    beta = _beta(config)
    similarity = _rows_by_columns(u_rows, columns)
    has_candidates = constants["weight"] > 0
    if beta:  # eta = exp(beta s), shifted by the row max of the candidates (detached: the draws are constants)
        log_eta = beta * jax.lax.stop_gradient(similarity)
        log_eta = log_eta if candidates is None else jnp.where(candidates, log_eta, -jnp.inf)
        peak = jnp.where(has_candidates, jnp.max(log_eta, axis=1), 0.0)
        eta = jnp.exp(log_eta - peak[:, None])
    else:
        eta = jnp.ones_like(similarity) if candidates is None else candidates.astype(similarity.dtype)
    drawn_columns = draw_columns(eta, uniforms)
    rows, n = similarity.shape
    drawn_at = (jnp.arange(rows, dtype=jnp.int32)[:, None] * n + drawn_columns).reshape(-1)  # sorted, as drawn
    drawn = jnp.take(similarity.reshape(-1), drawn_at).reshape(drawn_columns.shape)
    drawn_peak = jnp.max(drawn, axis=1)
    drawn_exponentials = jnp.exp(drawn - drawn_peak[:, None])
    drawn_sum = jnp.sum(drawn_exponentials, axis=1)
    log_lambda = 0.0 if config.negative_reduction == "mean" else math.log(config.k)
    anchor_term = (log_lambda - math.log(uniforms.shape[1])) + jnp.log(drawn_sum) + drawn_peak

    def gradient(anchor_grad: jax.Array) -> jax.Array:  # r_i softmax_t(s_{i n_t}) at the drawn columns
        drawn_grad = ((anchor_grad / drawn_sum)[:, None] * drawn_exponentials).reshape(-1)
        zeros = jnp.zeros(rows * n, similarity.dtype)
        return zeros.at[drawn_at].add(drawn_grad, indices_are_sorted=True).reshape(rows, n)

    return anchor_term, similarity, gradient


def segment(
    u: jax.Array,
    ids: jax.Array,
    uniforms: Any,
    start: Any,
    count: int,
    config: LossConfig,
    scan: Any = None,
    *,
    need_grad: bool = True,
) -> tuple:
    """Anchors start .. start + count - 1 of the batch u (rows g(z)) against every row, in blocks of rows.

    Returns (the column part of tau D dL/du (N, d), its anchors' own part (count, d), each anchor's
    sum_j w_ij l_ij, each anchor's |P(i)|), D the global divisor: `distributed._segment`'s contract.
    uniforms: (N, k) U(0, 1) draws of every row (sampled negatives), else unused. `scan` is ignored: the
    kernel loops over its blocks with `scan_blocks`.
    """
    del scan
    positions = start + jnp.arange(count)
    constants = _anchor_constants(jnp.take(ids, positions), ids, config, u.dtype)
    # blocks of equal size, at most `tile` rows: fewer pad rows than blocks, and one compiled block body
    blocks = -(-count // rows_per_block_request(config.tile, u.shape[0], count))
    rows_per_block = -(-count // blocks)
    row_arrays = [jnp.take(u, positions, axis=0), jnp.take(ids, positions), positions]
    row_arrays += [constants[key] for key in ("weight", "log_lambda", "log_candidates")]
    if config.negatives == "sampled":
        row_arrays.append(jnp.take(uniforms, positions, axis=0))
    # pad rows are zeros, so their weight is 0: they contribute nothing, and their outputs are dropped
    pad = blocks * rows_per_block - count
    row_arrays = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in row_arrays]
    body = partial(_block, u=u, ids=ids, config=config, need_grad=need_grad)
    carry = jnp.zeros_like(u) if need_grad else jnp.zeros_like(u[:0])
    column_grad, (loss_sums, row_grad) = scan_blocks(body, carry, tuple(row_arrays), rows_per_block)
    return column_grad, row_grad[:count], loss_sums[:count], constants["pair_count"]


def rows_per_block_request(tile: int | str | None, n: int, count: int) -> int:
    """At most this many of the count anchors per block of (rows, N) entries.

    tile="auto" asks for half the tiled path's entries per block (`AUTO_BLOCK_ENTRIES` / 2 / N rows, 64 to
    4096): XLA keeps several (rows, N) float32 temporaries of a block live at once, where the array-API
    blocks free theirs (N = 65,536: 557 MiB at 256 rows, 405 MiB at 128). Sized by the N columns, not
    the count anchors: a device's share of a global batch has the global batch's columns.
    """
    rows = min(max(AUTO_BLOCK_ENTRIES // 2 // max(n, 1), 64), 4096) if tile == "auto" else block_rows(tile, n)
    return max(min(rows, count), 1)


def _block(column_grad: Any, first_row: Any, rows: tuple, *, u, ids, config: LossConfig, need_grad: bool) -> tuple:
    """One block of anchors: its negatives' terms, its positive pairs, G and the two products. Returns the
    column gradient so far and the block's (loss sums, row gradient)."""
    u_rows, row_ids, row_positions, weight, log_lambda, log_candidates, *row_uniforms = rows
    constants = {"weight": weight, "log_lambda": log_lambda, "log_candidates": log_candidates}
    positives, candidates = _masks(row_ids, row_positions, ids, config)
    if config.negatives == "sampled":
        columns = u * (1.0 / config.temperature)
        negatives = _sampled_negatives(u_rows, columns, candidates, constants, row_uniforms[0], config)
    else:
        columns = u * ((1.0 + _beta(config)) / config.temperature)
        negatives = _expected_negatives(u_rows, columns, candidates, constants, config)
    anchor_term, similarity, candidate_gradient = negatives
    loss_rows, dl_dc = _pair_terms(anchor_term, similarity, positives, config.form)
    if not need_grad:
        return column_grad, (weight * loss_rows, jnp.zeros_like(u_rows[:, :0]))
    # G = r_i p_in (the candidates' part) - w_i dl/dc_ij at the positives, r_i = w_i sum_j dl/dc_ij
    gradient = candidate_gradient(weight * jnp.sum(dl_dc, axis=1)) - weight[:, None] * dl_dc
    return column_grad + _transposed_times(gradient, u_rows), (weight * loss_rows, _times(gradient, u))


def scan_blocks(body: Any, carry: Any, row_arrays: tuple[jax.Array, ...], rows_per_block: int) -> tuple[Any, tuple]:
    """body(carry, first_row, rows) over the blocks of `rows_per_block` rows (which divide the rows) in one
    `lax.scan`, so that the block body is compiled once; the outputs, one entry per row, are concatenated."""
    n = row_arrays[0].shape[0]
    blocks = n // rows_per_block

    def step(carry: Any, first_row: jax.Array) -> tuple[Any, tuple]:
        rows = tuple(jax.lax.dynamic_slice_in_dim(a, first_row, rows_per_block) for a in row_arrays)
        return body(carry, first_row, rows)

    if blocks == 1:  # one block: no loop at all
        return step(carry, 0)
    carry, stacked = jax.lax.scan(step, carry, jnp.arange(blocks) * rows_per_block)
    return carry, tuple(out.reshape((n, *out.shape[2:])) for out in stacked)


def _divisor(pair_counts: jax.Array, reduction: str) -> jax.Array:
    """#pairs ("mean") or #anchors with pairs ("anchor_mean"), at least 1."""
    count = jnp.sum(pair_counts) if reduction == "mean" else jnp.sum(pair_counts > 0)
    return jnp.maximum(count, 1)


@partial(jax.jit, static_argnums=(3, 4))  # eager JAX would dispatch every small operation of every block
def _value_and_grad(z: jax.Array, ids: jax.Array, uniforms: Any, config: LossConfig, need_grad: bool) -> tuple:
    """(loss, dL/dz or None) of `config` on (N, d) rows z in the compute dtype."""
    u = normalize_embeddings(z, config.normalize)
    n = z.shape[0]
    column_grad, row_grad, loss_sums, pair_counts = segment(u, ids, uniforms, 0, n, config, need_grad=need_grad)
    divisor = _divisor(pair_counts, config.reduction).astype(z.dtype)
    # 0 * sum(z): a NaN or Inf anywhere in z makes the value NaN, which the dispatcher's one scalar test reports
    value = jnp.sum(loss_sums) / divisor + 0.0 * jnp.sum(z)
    if not need_grad:
        return value, None
    grad_u = (row_grad + column_grad) / (divisor * config.temperature)
    return value, normalize_vjp(z, u, grad_u, config.normalize)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(z: jax.Array, ids: jax.Array, uniforms: Any, config: LossConfig) -> jax.Array:
    return _value_and_grad(z, ids, uniforms, config, False)[0]


def _fused_forward(z: jax.Array, ids: jax.Array, uniforms: Any, config: LossConfig) -> tuple:
    return _value_and_grad(z, ids, uniforms, config, True)  # (value, residuals = dL/dz)


def _fused_backward(config: LossConfig, grad: jax.Array, cotangent: jax.Array) -> tuple:
    return grad * cotangent, None, None  # integer ids and the draws get no cotangent


_fused.defvjp(_fused_forward, _fused_backward)


def fused_loss(
    z: jax.Array, ids: jax.Array, config: LossConfig, *, uniforms: Any = None, return_grad: bool = False
) -> Any:
    """The fused path's entry for JAX arrays: the loss (differentiable by jax.grad through the custom VJP),
    or (loss, dL/dz) in one jitted pass with return_grad."""
    if return_grad:
        return _value_and_grad(z, ids, uniforms, config, True)
    return _fused(z, ids, uniforms, config)


dispatch.register("fused", "jax", fused_loss)
