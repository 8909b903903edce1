"""The table of loss calls that tests/test_distributed_{torch,jax}.py run across ranks and in one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import hcl_array as hcl
from hcl_array.hardening import Threshold, TopK

DIM, VIEWS = 5, 2
#: global labels: the two members of a class are 4 rows apart, so a rank of at most 4 rows has no local positives
LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 3])

# name -> (loss, keyword options, layout): "views" passes (B, V, d) with implicit instance ids,
# "rows" (N, d) with LABELS
CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "ntxent": ("ntxent", {}, "views"),
    "ntxent_tile1": ("ntxent", {"tile": 1}, "views"),
    "ucl": ("ucl", {}, "views"),
    "hucl": ("hucl", {"beta": 2.0}, "views"),
    "hucl_undetached": ("hucl", {"beta": 1.5, "detach_weights": False, "tile": 3}, "views"),
    "scl": ("scl", {}, "rows"),
    "hscl_anchor_mean": ("hscl", {"beta": 3.0, "reduction": "anchor_mean", "temperature": 0.5}, "rows"),
    "hscl_topk": ("hscl", {"hardening": TopK(3), "normalize": "sphere"}, "rows"),
    "hucl_threshold": ("hucl", {"hardening": Threshold(0.1), "normalize": "none"}, "views"),
    "supcon": ("supcon", {}, "rows"),
    "debiased": ("debiased_hcl", {"tau_plus": 0.1}, "views"),
    "self_all_mean": ("ucl", {"include_self": True, "negative_reduction": "mean", "k": 4}, "views"),
    "sampled_rng": ("hscl", {"beta": 1.0, "negatives": "sampled", "k": 7, "rng": 3}, "rows"),
    "paper_preset": ("hucl", {"beta": 1.0, **hcl.PAPER_PRESET, "k": 5, "rng": 11}, "views"),
}


def global_batch(layout: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """The global batch every test computes on: (B, V, d) views, or (N, d) rows with LABELS."""
    z = np.random.default_rng(seed).normal(size=(len(LABELS), VIEWS, DIM))
    return (z, None) if layout == "views" else (z[:, 0], LABELS)


def error_messages(uses: dict[str, Callable[[], Any]]) -> dict[str, str]:
    """Each wrong use's error as "Type: message" ("no error" when it raised none), for the parent to assert."""
    messages = {}
    for name, use in uses.items():
        try:
            use()
            messages[name] = "no error"
        except (TypeError, ValueError) as error:
            messages[name] = f"{type(error).__name__}: {error}"
    return messages
