"""Streaming: the report of data that does not fit in memory, accumulated batch by batch.

Pass 1 merges each batch's class statistics into a `CollapseState`; pass 2 (optional) feeds a `ProbeState`
seeded with the final means. `collapse_result` then equals `collapse_report` on the concatenated batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from .._array_api import concrete_bool, device, namespace, supports_float64
from ._common import _check_embeddings, _check_labels, _values_plausible
from ._dimensional_collapse import _gram_rankme
from ._merging import _add_probes, _merge
from ._probe import ProbeState, _empty_probe, _probe_metrics, _row_probe
from ._report import _class_mean_metrics, _ordered, metrics_to_host
from ._state import CollapseState, _class_statistics

Array = Any


def collapse_init(
    num_classes: int, dim: int, *, xp: ModuleType | None = None, dtype: Any = None, device: Any = None
) -> CollapseState:
    r"""Empty class statistics for streaming: counts, means $(C, d)$ and the scatters, all zero.

    xp defaults to array_api_compat.numpy; dtype to float64 where the backend has it (else float32).
    Memory $O(C d + d^2)$, independent of the number of rows.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if xp is None:
        import array_api_compat.numpy as xp
    if dtype is None:
        dtype = xp.float64 if supports_float64(xp, device) else xp.float32
    where = {} if device is None else {"device": device}
    return CollapseState(
        counts=xp.zeros(num_classes, dtype=dtype, **where),
        means=xp.zeros((num_classes, dim), dtype=dtype, **where),
        within_scatter=xp.zeros((dim, dim), dtype=dtype, **where),
        class_scatter=xp.zeros(num_classes, dtype=dtype, **where),
    )


def _batch(state_means: Array, batch_embeddings: Array, batch_labels: Array) -> tuple[Array, Array] | None:
    """A validated batch in the state's dtype, or None for a batch with no rows."""
    if batch_embeddings.ndim == 2 and batch_embeddings.shape[0] == 0:
        return None
    data = _check_embeddings(batch_embeddings, "batch_embeddings", values=False)
    num_classes, dim = state_means.shape
    if data.shape[1] != dim:
        raise ValueError(f"batch_embeddings have dimension {data.shape[1]}, the state was initialized with dim={dim}")
    labels, _ = _check_labels(batch_labels, data.shape[0], num_classes, "batch_labels", values=False)
    if not _values_plausible(data, labels, num_classes):  # the value checks, for the message of what is wrong
        _check_embeddings(batch_embeddings, "batch_embeddings")
        _check_labels(batch_labels, data.shape[0], num_classes, "batch_labels")
    return namespace(data).astype(data, state_means.dtype, copy=False), labels


def collapse_update(state: CollapseState, batch_embeddings: Array, batch_labels: Array, /) -> CollapseState:
    """Merge one batch into the class statistics (Chan et al.: exact, order-independent up to rounding)."""
    batch = _batch(state.means, batch_embeddings, batch_labels)
    if batch is None:
        return state
    return _merge(state, _class_statistics(*batch, state.means.shape[0], scatter=True))


def probe_init(state: CollapseState, /, *, reference: CollapseState | None = None) -> ProbeState:
    """Start the second pass: distances to the class means of `state`, classifiers with `reference`'s means
    (the class statistics of a reference set, accumulated the same way) or, when None, with `state`'s."""
    classifier = state if reference is None else reference
    return _empty_probe(state.means, classifier.means, classifier.counts > 0)


def probe_update(probe: ProbeState, batch_embeddings: Array, batch_labels: Array, /) -> ProbeState:
    """Add one batch's distances to its class mean and its mean-classifier / NCC hits."""
    batch = _batch(probe.class_means, batch_embeddings, batch_labels)
    if batch is None:
        return probe
    return _add_probes(probe, _row_probe(*batch, probe))


def collapse_compute(state: CollapseState, probe: ProbeState | None = None, /) -> dict[str, Array]:
    """`collapse_result` as 0-d arrays (and the spectrum as a 1-D array) of the state's namespace.

    A pure function of the state, so it runs under jax.jit (the state must have seen at least one row:
    under tracing that cannot be checked). Same keys and formulas as `collapse_result`.
    """
    metrics = _class_mean_metrics(state) | {"rankme": _gram_rankme(state)}
    if probe is not None:
        metrics |= _probe_metrics(probe)
    return _ordered(metrics)


def collapse_result(state: CollapseState, probe: ProbeState | None = None, /) -> dict[str, Any]:
    r"""The streaming `collapse_report`, as Python floats (and `spectrum` as a NumPy float64 array).

    From `state` alone (one pass): unit_norm, zero_sum, equal_inner_product, nc1, nc1_quotient, cdnv, equinorm,
    equiangularity, max_angle, etf_distance, orthogonal_frame_distance, rankme, spectrum. With a `probe`
    (second pass, seeded by `probe_init(state)`): also within_class_variation, ncc_accuracy and
    mean_classifier_accuracy, i.e. every key of `collapse_report`. RankMe here uses
    $\sigma_k = \sqrt{\operatorname{eigvalsh}(H^\top H)}$ of the streamed uncentred Gram (no $N \times d$ matrix
    to take svdvals of): exact for well-conditioned $H$, but singular values below about
    $\sqrt{\varepsilon}\, \sigma_1$ are resolved only to that.
    """
    xp = namespace(state.means)
    if concrete_bool(xp.sum(state.counts) > 0) is False:
        raise ValueError("state has seen no rows: call collapse_update first")
    return metrics_to_host(collapse_compute(state, probe))


def streaming_collapse_report(
    batches: Callable[[], Iterable[tuple[Array, Array]]],
    num_classes: int,
    /,
    *,
    reference_batches: Callable[[], Iterable[tuple[Array, Array]]] | None = None,
    second_pass: bool = True,
) -> dict[str, Any]:
    r"""`collapse_report` for data given as batches: `batches()` returns a fresh iterable of $(H_b, y_b)$.

    Pass 1 accumulates the class statistics; pass 2 (second_pass=True, calls `batches()` again) adds the
    within-class variation and the accuracies, against the class means of `reference_batches()` if given.
    """
    state = _accumulate(batches(), num_classes)
    if not second_pass:
        return collapse_result(state)
    reference = None if reference_batches is None else _accumulate(reference_batches(), num_classes)
    probe = probe_init(state, reference=reference)
    for batch_embeddings, batch_labels in batches():
        probe = probe_update(probe, batch_embeddings, batch_labels)
    return collapse_result(state, probe)


def _accumulate(batches: Iterable[tuple[Array, Array]], num_classes: int) -> CollapseState:
    state = None
    for batch_embeddings, batch_labels in batches:
        if state is None:  # the namespace, device and dimension come from the first batch
            xp = namespace(batch_embeddings)
            state = collapse_init(num_classes, batch_embeddings.shape[1], xp=xp, device=device(batch_embeddings))
        state = collapse_update(state, batch_embeddings, batch_labels)
    if state is None:
        raise ValueError("batches() yielded no batch")
    return state
