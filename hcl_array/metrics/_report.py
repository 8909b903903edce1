"""The one-shot report: every collapse metric of (H, y) at once, in a fixed key order."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._array_api import to_numpy
from ._common import _prepare
from ._dimensional_collapse import _gram_rankme
from ._neural_collapse import (
    _cdnv,
    _class_mean_spectrum,
    _equal_inner_product,
    _equiangularity,
    _equinorm,
    _etf_distance,
    _geometry,
    _max_angle,
    _mean_spectrum,
    _nc1,
    _nc1_quotient,
    _orthogonal_frame_distance,
    _unit_norm,
    _zero_sum,
)
from ._probe import _empty_probe, _probe_metrics, _reference_classifier, _row_probe
from ._state import CollapseState, _class_statistics

Array = Any


def _class_mean_metrics(state: CollapseState) -> dict[str, Array]:
    """Every metric computable from the class statistics alone (the streamable ones)."""
    g = _geometry(state)
    spectrum = _mean_spectrum(g)
    return {
        "unit_norm": _unit_norm(g),
        "zero_sum": _zero_sum(g),
        "equal_inner_product": _equal_inner_product(g),
        "nc1": _nc1(g, state, spectrum),
        "nc1_quotient": _nc1_quotient(g, state),
        "cdnv": _cdnv(g, state),
        "equinorm": _equinorm(g),
        "equiangularity": _equiangularity(g),
        "max_angle": _max_angle(g),
        "etf_distance": _etf_distance(g),
        "orthogonal_frame_distance": _orthogonal_frame_distance(g),
        "spectrum": _class_mean_spectrum(g, spectrum),
    }


def collapse_metrics(
    embeddings: Array, labels: Array, /, *, num_classes: int | None = None, reference: tuple[Array, Array] | None = None
) -> dict[str, Array]:
    """`collapse_report` as arrays of the input's namespace (runs under jax.jit with a static num_classes)."""
    data, labels, num_classes = _prepare(embeddings, labels, num_classes)
    state = _class_statistics(data, labels, num_classes, scatter=True)
    classifier_means, classifier_present = _reference_classifier(reference, state, data.shape[1], num_classes)
    probe = _row_probe(data, labels, _empty_probe(state.means, classifier_means, classifier_present))
    metrics = _class_mean_metrics(state) | _probe_metrics(probe)
    metrics["rankme"] = _gram_rankme(state)
    return _ordered(metrics)


REPORT_KEYS = (
    "unit_norm",
    "zero_sum",
    "equal_inner_product",
    "within_class_variation",
    "nc1",
    "nc1_quotient",
    "cdnv",
    "equinorm",
    "equiangularity",
    "max_angle",
    "etf_distance",
    "orthogonal_frame_distance",
    "rankme",
    "ncc_accuracy",
    "mean_classifier_accuracy",
    "spectrum",
)
"""The keys of `collapse_report`, `collapse_result` (with a probe) and `CollapseMonitor.compute`, in order."""
PROBE_KEYS = ("within_class_variation", "ncc_accuracy", "mean_classifier_accuracy")
"""The keys of `collapse_report` that need the final class means: a streaming second pass (`probe_update`)."""


def _ordered(metrics: dict[str, Array]) -> dict[str, Array]:
    return {key: metrics[key] for key in REPORT_KEYS if key in metrics}


def metrics_to_host(metrics: dict[str, Array]) -> dict[str, Any]:
    """Python floats, and the spectrum as a NumPy float64 array, in the report's key order (jax.jit sorts keys)."""
    host = {key: float(to_numpy(value)) for key, value in metrics.items() if key != "spectrum"}
    host["spectrum"] = np.asarray(to_numpy(metrics["spectrum"]), dtype=np.float64)
    return _ordered(host)


def collapse_report(
    embeddings: Array, labels: Array, /, *, num_classes: int | None = None, reference: tuple[Array, Array] | None = None
) -> dict[str, Any]:
    r"""Every collapse metric of $(H, y)$ at once, as Python floats (and `spectrum` as a NumPy float64 array).

    Keys: unit_norm, zero_sum, equal_inner_product, within_class_variation, nc1, nc1_quotient, cdnv, equinorm,
    equiangularity, max_angle, etf_distance, orthogonal_frame_distance, rankme, ncc_accuracy,
    mean_classifier_accuracy, spectrum. The accuracies use the class means of `reference` =
    (reference_embeddings, reference_labels) when given, else those of `embeddings`. RankMe is read from
    eigvalsh of the $(d, d)$ Gram, as in `collapse_result` (the `rankme` function takes svdvals of the rows).
    """
    return metrics_to_host(collapse_metrics(embeddings, labels, num_classes=num_classes, reference=reference))
