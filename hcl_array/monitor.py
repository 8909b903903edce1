"""Watch collapse inside any training loop: a streaming monitor over the class statistics of hcl_array.metrics.

`CollapseMonitor` follows the torchmetrics / clu.metrics convention: `update(embeddings, labels)` per batch,
`compute()` at the end of an epoch, `reset()` before the next. Its state is `metrics.CollapseState`
(counts, class means, within-class scatter, per-class scatter: O(C d + d^2), whatever the number of rows), so
`compute()` equals `collapse_report` on the concatenated batches. The statistics are sums over rows, so the
states of several processes or devices merge into the global one (`merge_states`): two rounds of sums,
torch.distributed.all_reduce under DDP, jax.lax.psum inside shard_map / pmap.

For JAX the same state is a pytree of arrays and every step is a pure function: `collapse_init`,
`collapse_update` and `collapse_compute` (from hcl_array.metrics, re-exported here) run inside a jitted train step.
See docs/monitoring.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from array_api_compat import is_jax_array

from ._array_api import device, namespace, stop_gradient
from .metrics import (
    CollapseState,
    ProbeState,
    collapse_compute,
    collapse_init,
    collapse_result,
    collapse_update,
    metrics_to_host,
    probe_init,
    probe_update,
)

__all__ = [
    "AllSum",
    "CollapseMonitor",
    "collapse_compute",
    "collapse_init",
    "collapse_update",
    "jax_all_sum",
    "merge_probes",
    "merge_states",
    "torch_all_sum",
]

Array = Any
#: all_sum(x) returns the elementwise sum of x over every participant (process or device); every participant
#: calls it with an array of the same shape, in the same order.
AllSum = Callable[[Array], Array]


def _positive(counts: Array) -> Array:
    """counts with zeros replaced by ones: a denominator that never divides by zero."""
    xp = namespace(counts)
    return xp.where(counts > 0, counts, xp.ones_like(counts))


def merge_states(state: CollapseState, all_sum: AllSum, /) -> CollapseState:
    r"""The global class statistics from each participant's own, with two rounds of `all_sum`.

    Round 1 sums $n_c$ and the class sums $n_c \mu_c$, giving the global means $\mu_c$. Round 2 sums each
    participant's scatter about the global means (Chan et al., all terms positive semi-definite, so nothing
    cancels), with $D_r = M_r - M$:

    $$S = \sum_r \bigl[S_r + D_r^\top \operatorname{diag}(n_r)\, D_r\bigr], \qquad
      s_c = \sum_r \bigl[s_{c,r} + n_{c,r} \lVert \mu_{c,r} - \mu_c \rVert^2\bigr].$$

    Every participant gets the same result.
    """
    xp = namespace(state.means)
    num_classes, dim = state.means.shape
    first = all_sum(xp.concat([state.counts, xp.reshape(state.means * state.counts[:, None], (-1,))]))
    counts = first[:num_classes]
    means = xp.reshape(first[num_classes:], (num_classes, dim)) / _positive(counts)[:, None]
    delta = state.means - means  # rows of classes absent here carry weight n_{c,r} = 0 below
    within = state.within_scatter + (delta * state.counts[:, None]).T @ delta
    per_class = state.class_scatter + state.counts * xp.sum(delta * delta, axis=1)
    second = all_sum(xp.concat([xp.reshape(within, (-1,)), per_class]))
    return CollapseState(
        counts=counts,
        means=means,
        within_scatter=xp.reshape(second[: dim * dim], (dim, dim)),
        class_scatter=second[dim * dim :],
    )


def merge_probes(probe: ProbeState, all_sum: AllSum, /) -> ProbeState:
    """The global second-pass statistics (counts, distance sums, hits), with one round of `all_sum`.

    The probes must have been started from the merged state (`probe_init(merge_states(...))`), so that every
    participant measures distances to the same global class means.
    """
    xp = namespace(probe.counts)
    num_classes = probe.counts.shape[0]
    hits = xp.stack([probe.mean_classifier_hits, probe.ncc_hits])
    total = all_sum(xp.concat([probe.counts, probe.distance_sums, hits]))
    return probe._replace(
        counts=total[:num_classes],
        distance_sums=total[num_classes : 2 * num_classes],
        mean_classifier_hits=total[2 * num_classes],
        ncc_hits=total[2 * num_classes + 1],
    )


def torch_all_sum(x: Array, /) -> Array:
    """Sum over the processes of the default torch.distributed group (all_reduce on a copy; x is unchanged)."""
    dist = sys.modules["torch"].distributed  # x is a tensor: torch is imported already, the core never imports it
    total = x.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def jax_all_sum(axis_name: Any) -> AllSum:
    """Sum over the devices of a named mapped axis (jax.lax.psum), for use inside shard_map or pmap."""
    # called on traced JAX arrays, so jax is imported by then; the core never imports it itself
    return lambda x: sys.modules["jax"].lax.psum(x, axis_name)


def _torch_distributed_sum(like: Array) -> AllSum | None:
    """torch_all_sum when `like` is a torch tensor and more than one process is in the default group."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.is_tensor(like):
        return None
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return torch_all_sum
    return None


class CollapseMonitor:
    """Collapse metrics of every row seen since the last `reset()`, accumulated batch by batch.

        monitor = CollapseMonitor(num_classes=100)
        for embeddings, labels in batches:      # any array-API namespace and device, any batch size
            monitor.update(embeddings, labels)
        report = monitor.compute()              # == collapse_report(concat(embeddings), concat(labels))
        monitor.reset()

    `compute()` gives the one-pass keys of `collapse_report` (all but within_class_variation, ncc_accuracy,
    mean_classifier_accuracy). Those three need the final class means first: a second pass,
    `start_probe()` then `update_probe(embeddings, labels)` per batch, after which `compute()` gives every key.

    sync: how the state merges across participants. "auto" (default) sums over the torch.distributed
    default group when the state is a torch tensor and the group has more than one process; None keeps it
    local; any `AllSum` callable is used as given. Merging is collective: under DDP every process must call
    `compute()` (and `start_probe()`) together. Embeddings are detached: no gradient flows into the monitor.
    """

    def __init__(self, num_classes: int, *, dtype: Any = None, sync: AllSum | str | None = "auto") -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not (sync is None or sync == "auto" or callable(sync)):
            raise ValueError(f"sync must be 'auto', None or a callable all_sum(array) -> array, got {sync!r}")
        self.num_classes = num_classes
        self.dtype = dtype
        self.sync = sync
        self.reset()

    def reset(self) -> None:
        """Forget every row seen: the next `update` starts a new accumulation."""
        self._state: CollapseState | None = None
        self._merged: CollapseState | None = None
        self._probe: ProbeState | None = None

    @property
    def state(self) -> CollapseState | None:
        """This participant's own class statistics (None before the first update)."""
        return self._state

    def update(self, embeddings: Array, labels: Array) -> None:
        """Add a batch: embeddings (B, d) of any floating dtype, labels (B,) integers in [0, num_classes)."""
        if self._probe is not None:
            raise RuntimeError("update() after start_probe(): call reset() to start a new accumulation")
        embeddings, labels = stop_gradient(embeddings), stop_gradient(labels)
        namespace(embeddings, labels)  # a TypeError naming the mix when they come from different libraries
        if self._state is None:
            xp, dim = namespace(embeddings), embeddings.shape[-1]
            self._state = collapse_init(self.num_classes, dim, xp=xp, dtype=self.dtype, device=device(embeddings))
        _check_traced_values(embeddings, labels, self.num_classes)
        self._state = _compiled(collapse_update, embeddings)(self._state, embeddings, labels)
        self._merged = None

    def global_state(self) -> CollapseState:
        """The class statistics of every participant's rows (collective when syncing)."""
        if self._state is None:
            raise ValueError("the monitor has seen no rows: call update(embeddings, labels) first")
        if self._merged is None:
            all_sum = self._all_sum()
            self._merged = self._state if all_sum is None else merge_states(self._state, all_sum)
        return self._merged

    def start_probe(self, reference: CollapseMonitor | CollapseState | None = None) -> None:
        """Begin the second pass against the current class means (the classifiers use `reference`'s, if given)."""
        if isinstance(reference, CollapseMonitor):
            reference = reference.global_state()
        self._probe = probe_init(self.global_state(), reference=reference)

    def update_probe(self, embeddings: Array, labels: Array) -> None:
        """Second pass: add a batch's distances to its class mean and its classifier hits."""
        if self._probe is None:
            raise RuntimeError("update_probe() before start_probe(): finish the first pass, then call start_probe()")
        embeddings, labels = stop_gradient(embeddings), stop_gradient(labels)
        _check_traced_values(embeddings, labels, self.num_classes)
        self._probe = _compiled(probe_update, embeddings)(self._probe, embeddings, labels)

    def compute(self) -> dict[str, Any]:
        """The collapse report of the rows seen (Python floats, `spectrum` a NumPy float64 array)."""
        state = self.global_state()
        probe, all_sum = self._probe, self._all_sum()
        if probe is not None and all_sum is not None:
            probe = merge_probes(probe, all_sum)
        if is_jax_array(state.means):  # jitted: eager JAX compiles each operation apart; jit sorts the keys
            return metrics_to_host(_compiled(collapse_compute, state.means)(state, probe))
        return collapse_result(state, probe)

    def _all_sum(self) -> AllSum | None:
        if self.sync == "auto":
            return None if self._state is None else _torch_distributed_sum(self._state.means)
        return self.sync


_JIT_CACHE: dict[Callable[..., Any], Callable[..., Any]] = {}


def _compiled(function: Callable[..., Any], like: Array) -> Callable[..., Any]:
    """`function` itself, or jax.jit(function) for JAX arrays: eager JAX would compile every operation apart."""
    if not is_jax_array(like):
        return function
    if function not in _JIT_CACHE:
        _JIT_CACHE[function] = sys.modules["jax"].jit(function)
    return _JIT_CACHE[function]


def _batch_summary(embeddings: Array, labels: Array) -> Array:
    """[all rows finite (0 or 1), smallest label, largest label]: one array, so one read by the host."""
    xp = namespace(embeddings)
    finite = xp.astype(xp.all(xp.isfinite(embeddings)), labels.dtype)
    return xp.stack([finite, xp.min(labels), xp.max(labels)])


def _check_traced_values(embeddings: Array, labels: Array, num_classes: int) -> None:
    """The value checks collapse_update skips under jax.jit (finite rows, labels in range), run for JAX input."""
    if not is_jax_array(embeddings) or embeddings.ndim != 2 or embeddings.shape[0] == 0 or labels.ndim != 1:
        return  # other backends check eagerly inside collapse_update; shape errors are raised there too
    finite, lowest, highest = _compiled(_batch_summary, embeddings)(embeddings, labels).tolist()
    if not finite:
        raise ValueError("batch_embeddings contains NaN or infinite values")
    if lowest < 0 or highest >= num_classes:
        raise ValueError(f"batch_labels must lie in [0, num_classes={num_classes})")
