"""Inverse-CDF draws on the CPU through a guide table: k columns per row from each row's running sums.

    column_t = #{n : F_n <= u_t W}     (F: a row's running sums of its weights, W = F_{N-1} its total)

is the first column whose running sum exceeds u_t W, what `searchsorted(F, u W, side="right")` returns row
by row. A binary search per draw is the slow part of sampled negatives on a CPU (about 80 ns per draw in
torch, mostly mispredicted branches), so this module finds the same columns in a few whole-array passes
(Chen and Asau's guide table, vectorized):

1. Bins. H(x) = floor(x * B / W) with B a power of two >= twice the row's boundaries. Every C-th running
   sum is a boundary (C = `stride(N, k)`; C = 1 is every column), and each boundary gets its bin H(F).
2. The table. A histogram of the boundaries' bins, summed: E[b] = #{boundaries with H < b}.
3. The bracket. H is nondecreasing (rounding is monotone), so for a draw with bin b = H(u W) every
   boundary with H < b lies at or below u W, every one with H > b above it: the column lies in
   [C * E[b], C * E[b + 1] + C - 1], and the fullest bin of the table bounds every draw's bracket.
4. The search. A branch-free binary search inside the bracket: log2(widest bracket) passes of gather,
   compare and add over all draws at once. Probes past the bracket read larger sums and never move it;
   a window that would pass the row's end is moved back to end there, so no probe leaves the row.

Each row's draws are sorted first (the loss does not depend on their order), so every pass walks each
row forward, which the memory prefetches; rows go in blocks of `BLOCK_DRAWS` draws, whose scratch
arrays stay in the caches. With the paper's weights a bracket holds a few columns (two or three passes);
very uneven weights widen some brackets, and the search then takes up to log2(N) passes, never more.
The columns are exactly a binary search's, for any weights (tests: `test_inverse_cdf.py`). u W < W for
u < 1 in the comparison's dtype, so a draw never passes the last column with weight; a row whose total
is not a finite positive number (a NaN in the input, reported by the loss's value) draws uniformly.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["draw_columns", "stride"]

#: Draws per block of rows: the block's scratch arrays (a few MiB, kept per thread for the next block)
#: stay in the caches through all the passes, and each pass is long enough that the Python between
#: passes costs little (measured inside the torch kernel at N = 512 and 2048: 16k to 128k draws, 65,536
#: the fastest).
BLOCK_DRAWS = 65536
_workspace = threading.local()


def stride(columns: int, draws: int) -> int:
    """C: the largest power of two <= columns / draws dividing `columns` (1 when draws >= columns / 2).

    About one boundary per draw balances the table's passes (over rows * N / C entries) against the
    search's (one more per doubling of C, over rows * k draws).
    """
    c = 1
    while 2 * c * draws <= columns and columns % (2 * c) == 0:
        c *= 2
    return c


def draw_columns(cumulative: np.ndarray, uniforms: np.ndarray, *, flat: bool = False) -> np.ndarray:
    """(rows, k) int64 columns #{n : F_in <= u W_i} (at most N - 1) of row i's uniforms sorted ascending.

    The order of a row's draws is not kept (a loss over draws with replacement does not depend on it).
    cumulative: (rows, N) running sums of nonnegative weights, read only (a bad row is replaced in a copy).
    uniforms: (rows, k) numbers in [0, 1); the comparison runs in the wider of the two dtypes.
    flat: positions i N + column in cumulative.reshape(-1) instead (what a gather from the block takes).
    One thread: inside torch's kernel a second (Python) thread only contends with torch's own.
    """
    rows, k = uniforms.shape
    cumulative = _with_good_totals(cumulative)
    dtype = np.result_type(cumulative.dtype, uniforms.dtype)
    columns = np.empty((rows, k), np.int64)
    block = max(1, min(rows, BLOCK_DRAWS // k))
    for a in range(0, rows, block):
        b = min(a + block, rows)
        _draw_block(cumulative[a:b], uniforms[a:b], columns[a:b], block, dtype, flat)
        if flat and a:
            columns[a:b] += a * cumulative.shape[1]
    return columns


def _draw_block(
    cumulative: np.ndarray, uniforms: np.ndarray, out: np.ndarray, capacity: int, dtype: np.dtype, flat: bool
) -> None:
    """draw_columns on one block of rows, into out, with this thread's scratch arrays (for `capacity` rows)."""
    rows, n = cumulative.shape
    c = stride(n, uniforms.shape[1])
    bins = 2 << max(n // c - 1, 1).bit_length()  # B >= twice the row's boundaries: few bins hold two
    work = _buffers(capacity, n, uniforms.shape[1], c, bins, (cumulative.dtype, dtype), rows)
    draws = work["draws"]
    np.copyto(draws, uniforms)
    draws.sort(axis=1)  # each pass's probes then walk each row forward, which the memory prefetches
    totals = cumulative[:, -1:].astype(dtype)
    draws *= totals  # u W, in the comparison's dtype
    # H(x) = floor(x * bin_scale): any finite positive scale keeps H monotone and H(W) <= B; the floor on
    # the totals keeps it finite for subnormal ones (bins / W would overflow to inf, and inf * 0 is NaN)
    bin_scale = bins / np.maximum(totals, bins / np.finfo(dtype).max)
    table, fullest_bin = _guide_table(cumulative[:, c - 1 :: c], bin_scale, work)
    start = _brackets(table, draws, bin_scale, work)
    if c > 1:
        start *= c
    _search(cumulative.reshape(-1), draws, start, fullest_bin * c + c - 1, n, work)
    np.minimum(start, work["row_last"], out=out)  # past it only when u W rounded up to W
    if not flat:
        out -= work["row_first"]


def _with_good_totals(cumulative: np.ndarray) -> np.ndarray:
    """The running sums, with every row whose total is not a finite positive number made uniform (in a copy)."""
    totals = cumulative[:, -1]
    good = np.isfinite(totals) & (totals > 0)
    if good.all():
        return cumulative
    repaired = cumulative.copy()
    repaired[~good] = np.arange(1, cumulative.shape[1] + 1, dtype=cumulative.dtype)
    return repaired


def _guide_table(boundaries: np.ndarray, bin_scale: np.ndarray, work: dict) -> tuple[np.ndarray, int]:
    """E with E[i (B + 1) + b] = i * boundaries per row + #{boundaries of row i with H < b}, and the most
    boundaries sharing one bin."""
    keys = work["keys"]
    np.multiply(boundaries, bin_scale, out=work["scaled_keys"])
    np.copyto(keys, work["scaled_keys"], casting="unsafe")  # floor: the values are >= 0
    keys += work["row_bins"]
    table = work["table"]
    table.fill(0)
    np.add.at(table[1:], keys.reshape(-1), 1)  # table[j + 1]: boundaries in global bin j
    fullest_bin = int(table.max())
    np.cumsum(table, out=table)
    return table, fullest_bin


def _brackets(table: np.ndarray, draws: np.ndarray, bin_scale: np.ndarray, work: dict) -> np.ndarray:
    """For each draw, the boundaries strictly below its bin (global count: row i starts at i * boundaries).

    H(u W) <= B: u W < W, and W * fl(B / W) rounds to less than B + 1."""
    draw_keys = work["draw_keys"]
    np.multiply(draws, bin_scale, out=work["scaled_draws"])
    np.copyto(draw_keys, work["scaled_draws"], casting="unsafe")
    draw_keys += work["row_bins"]
    return np.take(table, draw_keys, out=work["start"], mode="clip")


def _search(flat: np.ndarray, draws: np.ndarray, start: np.ndarray, widest: int, n: int, work: dict) -> None:
    """start <- each draw's position in the block: a binary search over [start, start + widest], in place.

    The window of 2^m >= widest + 1 columns is moved back to end at the row's last column where it would
    pass it, so that no probe leaves the row (the column lies in the window either way)."""
    span = 1 << widest.bit_length()
    whole_row = span > n  # a bracket as wide as the row: search the whole row, clamping the probes to it
    if whole_row:
        span = 1 << (n - 1).bit_length()
        start[...] = work["row_first"]
    else:
        np.minimum(start, work["row_last"] - (span - 1), out=start)
    probe, values, below = work["probe"], work["values"], work["below"]
    step = span // 2
    while step:
        np.add(start, step - 1, out=probe)
        if whole_row:
            np.minimum(probe, work["row_last"], out=probe)
        np.take(flat, probe, out=values, mode="clip")
        np.less_equal(values, draws, out=below)
        if step == 1:
            start += below
        else:
            np.multiply(below, step, out=probe)
            start += probe
        step //= 2


def _buffers(capacity: int, n: int, k: int, c: int, bins: int, dtypes: tuple[np.dtype, np.dtype], rows: int) -> dict:
    """This thread's scratch arrays for blocks of up to `capacity` rows (dtypes: the sums' and the comparison's),
    kept from its last block of the same shapes; returned as views of the first `rows` rows."""
    key = (capacity, n, k, c, bins, dtypes)
    cached = getattr(_workspace, "arrays", None)
    if cached is None or cached[0] != key:
        cached = (key, _new_buffers(capacity, n, k, n // c, bins, dtypes))
        _workspace.arrays = cached
    work = cached[1]
    if rows == capacity:
        return work
    view = {name: array[:rows] for name, array in work.items() if name != "table"}
    return {**view, "table": work["table"][: rows * (bins + 1) + 1]}


def _new_buffers(rows: int, n: int, k: int, boundaries: int, bins: int, dtypes: tuple[np.dtype, np.dtype]) -> dict:
    row = np.arange(rows, dtype=np.int64)[:, None]
    sums_dtype, dtype = dtypes
    return {
        "draws": np.empty((rows, k), dtype),
        "scaled_draws": np.empty((rows, k), dtype),
        "draw_keys": np.empty((rows, k), np.int64),
        "start": np.empty((rows, k), np.int64),
        "probe": np.empty((rows, k), np.int64),
        "values": np.empty((rows, k), sums_dtype),
        "below": np.empty((rows, k), bool),
        "scaled_keys": np.empty((rows, boundaries), dtype),
        "keys": np.empty((rows, boundaries), np.int64),
        "table": np.empty(rows * (bins + 1) + 1, np.int64),
        "row_bins": row * (bins + 1),
        "row_first": row * n,
        "row_last": row * n + (n - 1),
    }
