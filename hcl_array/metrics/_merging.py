"""Merging: two states of disjoint rows into the state of their union (batches, ranks, devices)."""

from __future__ import annotations

from typing import Any

from .._array_api import namespace
from ._common import _nonzero
from ._probe import ProbeState
from ._state import CollapseState

Array = Any


def _merge(old: CollapseState, new: CollapseState) -> CollapseState:
    """Chan et al.'s pairwise update, per class and summed for the within-class scatter.

    n = n_a + n_b, delta = mu_b - mu_a, mu = mu_a + delta n_b / n, S = S_a + S_b + (n_a n_b / n) delta delta^T;
    summing S over classes gives the within-class scatter update Delta^T diag(n_a n_b / n) Delta.
    """
    xp = namespace(old.means)
    counts = old.counts + new.counts
    delta = new.means - old.means
    pair_weight = old.counts * new.counts / _nonzero(counts)
    return CollapseState(
        counts=counts,
        means=old.means + delta * (new.counts / _nonzero(counts))[:, None],
        within_scatter=old.within_scatter + new.within_scatter + (delta * pair_weight[:, None]).T @ delta,
        class_scatter=old.class_scatter + new.class_scatter + pair_weight * xp.sum(delta * delta, axis=1),
    )


def _add_probes(old: ProbeState, new: ProbeState) -> ProbeState:
    return old._replace(
        counts=old.counts + new.counts,
        distance_sums=old.distance_sums + new.distance_sums,
        mean_classifier_hits=old.mean_classifier_hits + new.mean_classifier_hits,
        ncc_hits=old.ncc_hits + new.ncc_hits,
    )
