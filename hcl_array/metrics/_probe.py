"""The probe: rows measured against class means fixed in advance (within-class variation, NCC, mean
classifier, kNN), in one pass for a one-shot report or as a second streaming pass.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._array_api import device, namespace, one_hot
from ._common import (
    _check_embeddings,
    _check_labels,
    _masked_mean,
    _nonzero,
    _normalize_rows,
    _prepare,
    _row_norms,
)
from ._state import CollapseState, _class_counts, _class_statistics, _segment_sums

Array = Any


class ProbeState(NamedTuple):
    r"""Second-pass accumulator: statistics of rows against class means fixed in advance.

    class_means $(C, d)$: the data's own class means (from a first pass), for the within-class variation;
    classifier_means $(C, d)$ and classifier_present $(C,)$: the means the mean-classifier and NCC use (a
    reference set's, or class_means); counts $(C,)$, distance_sums $(C,)$ $= \sum_{i \in c} \lVert h_i - \mu_c \rVert$,
    mean_classifier_hits and ncc_hits: numbers of correctly classified rows.
    """

    class_means: Array
    classifier_means: Array
    classifier_present: Array
    counts: Array
    distance_sums: Array
    mean_classifier_hits: Array
    ncc_hits: Array


# The (rows, C) score block of the classifiers holds about this many entries (64 MiB in float64).
PROBE_BLOCK_ENTRIES = 2**23


def _classifier_hits(data: Array, labels: Array, means: Array, present: Array) -> tuple[Array, Array]:
    """Correct predictions of the mean classifier argmax_c <h, mu_c> and the NCC argmin_c norm(h - mu_c)^2.

    norm(h - mu_c)^2 = norm(h)^2 - 2 <h, mu_c> + norm(mu_c)^2 and norm(h)^2 does not depend on c, so the NCC is
    argmax_c <h, mu_c> - norm(mu_c)^2 / 2 (the same numbers halved, exactly). Both read one product H mu^T, taken
    over blocks of rows so that it never holds N x C entries; a bias of -inf keeps absent classes out.
    """
    xp = namespace(data)
    zeros = xp.zeros(means.shape[0], dtype=data.dtype, device=device(data))
    absent = xp.full_like(zeros, -math.inf)
    mean_bias = xp.where(present, zeros, absent)[None, :]
    ncc_bias = xp.where(present, -0.5 * xp.sum(means * means, axis=1), absent)[None, :]
    mean_hits = ncc_hits = xp.zeros((), dtype=data.dtype, device=device(data))
    rows = max(1, PROBE_BLOCK_ENTRIES // means.shape[0])
    for start in range(0, data.shape[0], rows):  # blocks of rows bound memory; not a loop over classes
        stop = min(start + rows, data.shape[0])
        scores = data[start:stop, :] @ means.T  # <h, mu_c>
        block_labels = labels[start:stop]
        mean_hits = mean_hits + xp.sum(xp.astype(xp.argmax(scores + mean_bias, axis=1) == block_labels, data.dtype))
        ncc_hits = ncc_hits + xp.sum(xp.astype(xp.argmax(scores + ncc_bias, axis=1) == block_labels, data.dtype))
    return mean_hits, ncc_hits


def _row_probe(data: Array, labels: Array, probe: ProbeState) -> ProbeState:
    """The probe statistics of one batch (counts and sums only, means unchanged)."""
    xp = namespace(data)
    num_classes = probe.class_means.shape[0]
    distances = _row_norms(data - xp.take(probe.class_means, labels, axis=0))
    mean_hits, ncc_hits = _classifier_hits(data, labels, probe.classifier_means, probe.classifier_present)
    return probe._replace(
        counts=_class_counts(labels, num_classes, data.dtype),
        distance_sums=_segment_sums(distances, labels, num_classes),
        mean_classifier_hits=mean_hits,
        ncc_hits=ncc_hits,
    )


def _empty_probe(class_means: Array, classifier_means: Array, classifier_present: Array) -> ProbeState:
    xp = namespace(class_means)
    zeros = xp.zeros(class_means.shape[0], dtype=class_means.dtype, device=device(class_means))
    zero = xp.sum(zeros)
    return ProbeState(class_means, classifier_means, classifier_present, zeros, zeros, zero, zero)


def _probe_metrics(probe: ProbeState) -> dict[str, Array]:
    xp = namespace(probe.counts)
    num_rows = _nonzero(xp.sum(probe.counts))
    mean_distances = probe.distance_sums / _nonzero(probe.counts)
    return {
        "within_class_variation": _masked_mean(mean_distances, probe.counts > 0),
        "mean_classifier_accuracy": probe.mean_classifier_hits / num_rows,
        "ncc_accuracy": probe.ncc_hits / num_rows,
    }


def _reference_classifier(
    reference: tuple[Array, Array] | None, own: CollapseState, dim: int, num_classes: int
) -> tuple[Array, Array]:
    """(means, present) of the reference set, or of the data itself when reference is None."""
    if reference is None:
        return own.means, own.counts > 0
    if not isinstance(reference, tuple) or len(reference) != 2:
        raise TypeError("reference must be a tuple (reference_embeddings, reference_labels)")
    data = _check_embeddings(reference[0], "reference embeddings")
    if data.shape[1] != dim:
        raise ValueError(f"reference embeddings have dimension {data.shape[1]}, the embeddings {dim}")
    labels, _ = _check_labels(reference[1], data.shape[0], num_classes, "reference labels")
    stats = _class_statistics(data, labels, num_classes)  # data is already in the compute dtype
    return stats.means, stats.counts > 0


def _one_shot_probe(
    embeddings: Array, labels: Array, num_classes: int | None, reference: tuple[Array, Array] | None
) -> ProbeState:
    data, labels, num_classes = _prepare(embeddings, labels, num_classes)
    own = _class_statistics(data, labels, num_classes)
    classifier_means, classifier_present = _reference_classifier(reference, own, data.shape[1], num_classes)
    return _row_probe(data, labels, _empty_probe(own.means, classifier_means, classifier_present))


def within_class_variation(embeddings: Array, labels: Array, /, *, num_classes: int | None = None) -> Array:
    r"""Within-class variation $\frac{1}{C'} \sum_c \operatorname{mean}_{i \in c} \lVert h_i - \mu_c \rVert$.

    0 when every class collapses to its mean (at neural collapse).
    """
    return _probe_metrics(_one_shot_probe(embeddings, labels, num_classes, None))["within_class_variation"]


def mean_classifier_accuracy(
    embeddings: Array, labels: Array, /, *, num_classes: int | None = None, reference: tuple[Array, Array] | None = None
) -> Array:
    r"""Share of rows with $\arg\max_c \langle h, \mu_c \rangle = y$: 1 at neural collapse.

    The means are those of `reference` = (embeddings, labels) when given, else of the data itself.
    """
    return _probe_metrics(_one_shot_probe(embeddings, labels, num_classes, reference))["mean_classifier_accuracy"]


def ncc_accuracy(
    embeddings: Array, labels: Array, /, *, num_classes: int | None = None, reference: tuple[Array, Array] | None = None
) -> Array:
    r"""Nearest-class-centre accuracy, the share of rows with $\arg\min_c \lVert h - \mu_c \rVert = y$.

    1 at neural collapse; the means come from `reference` or the data itself.
    """
    return _probe_metrics(_one_shot_probe(embeddings, labels, num_classes, reference))["ncc_accuracy"]


def knn_accuracy(
    embeddings: Array,
    labels: Array,
    reference_embeddings: Array,
    reference_labels: Array,
    /,
    *,
    num_classes: int | None = None,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Array:
    r"""Weighted kNN accuracy (the usual self-supervised monitor).

    With $s$ the cosine similarity to the reference rows, the $k$ most similar vote for their class with weight
    $e^{s / \tau}$, and the class with the largest total is predicted. $k$ is clipped to the reference size;
    ties at the $k$-th similarity all vote. Queries run in chunks of `chunk_size` rows, so memory is
    $O(\text{chunk\_size} \cdot N_{\mathrm{ref}})$.
    """
    data, labels, num_classes = _prepare(embeddings, labels, num_classes)
    reference = _check_embeddings(reference_embeddings, "reference_embeddings")
    if reference.shape[1] != data.shape[1]:
        raise ValueError(f"reference_embeddings have dimension {reference.shape[1]}, the embeddings {data.shape[1]}")
    reference_labels, _ = _check_labels(reference_labels, reference.shape[0], num_classes, "reference_labels")
    if k < 1 or temperature <= 0 or chunk_size < 1:
        got = f"k={k}, temperature={temperature}, chunk_size={chunk_size}"
        raise ValueError(f"need k >= 1, temperature > 0, chunk_size >= 1; got {got}")
    xp = namespace(data)
    k = min(k, reference.shape[0])
    queries, keys = _normalize_rows(data), _normalize_rows(xp.astype(reference, data.dtype))
    votes_per_class = one_hot(reference_labels, num_classes, dtype=data.dtype)
    hits = xp.zeros((), dtype=data.dtype, device=device(data))
    for start in range(0, data.shape[0], chunk_size):  # chunks of rows bound memory; not a loop over classes
        stop = min(start + chunk_size, data.shape[0])
        similarity = queries[start:stop, :] @ keys.T
        kth_largest = -xp.sort(-similarity, axis=1)[:, k - 1 : k]
        weights = xp.exp((similarity - 1.0) / temperature)  # cosines <= 1: shifted by the largest possible
        weights = xp.where(similarity >= kth_largest, weights, xp.zeros_like(weights))
        prediction = xp.argmax(weights @ votes_per_class, axis=1)
        hits = hits + xp.sum(xp.astype(prediction == labels[start:stop], data.dtype))
    return hits / data.shape[0]
