"""An independent float64 reference for every loss: plain Python loops over anchors and pairs.

It shares no code with hcl_array; it follows docs/reference/loss-semantics.md word for word, with direct
exponentials (fine for the moderate similarities the comparisons use).
"""

from __future__ import annotations

import math

import numpy as np


def normalize_rows(z: np.ndarray, mode: str) -> np.ndarray:
    rows = []
    for row in np.asarray(z, dtype=np.float64):
        norm = math.sqrt(sum(v * v for v in row))
        if mode == "sphere":
            rows.append(row / norm)
        elif mode == "ball":
            rows.append(row / max(1.0, norm))
        else:
            rows.append(row)
    return np.array(rows)


def eta_weights(similarities: list[float], hardening: tuple) -> list[float]:
    """eta(s_in) for one anchor's candidates.

    hardening = ("uniform",) | ("exp", beta) | ("threshold", kappa) | ("topk", k).
    """
    kind = hardening[0]
    if kind == "uniform":
        return [1.0] * len(similarities)
    if kind == "exp":
        top = max(similarities) if similarities else 0.0  # a common factor cancels in q
        return [math.exp(hardening[1] * (s - top)) for s in similarities]
    if kind == "threshold":
        return [1.0 if s >= hardening[1] else 0.0 for s in similarities]
    if kind == "topk":
        ranked = sorted(similarities, reverse=True)
        kth = ranked[min(hardening[1], len(ranked)) - 1] if ranked else 0.0
        return [1.0 if s >= kth else 0.0 for s in similarities]
    raise ValueError(kind)


def draw_counts(weights: list[float], uniforms: np.ndarray) -> list[float]:
    """How often each candidate is drawn by inverse-CDF sampling with the given U(0,1) numbers."""
    total = sum(weights)
    counts = [0.0] * len(weights)
    for u in uniforms:
        running = 0.0
        for n, w in enumerate(weights):
            running += w / total
            if u < running and w > 0:
                counts[n] += 1
                break
        else:  # round-off: the last candidate with weight
            last = max(n for n, w in enumerate(weights) if w > 0)
            counts[last] += 1
    return counts


def naive_loss(
    z,
    ids,
    *,
    form: str = "infonce",
    candidates: str = "other-ids",
    hardening: tuple = ("uniform",),
    temperature: float = 1.0,
    normalize: str = "ball",
    k: int | None = None,
    negative_reduction: str = "sum",
    include_self: bool = False,
    reduction: str = "mean",
    tau_plus: float = 0.0,
    uniforms: np.ndarray | None = None,
):
    """The loss by loops: per anchor, its positives, its candidates, q, and each pair's l_ij."""
    u = normalize_rows(z, normalize)
    ids = [int(i) for i in ids]
    n_rows = len(ids)
    s = [[float(np.dot(u[i], u[j])) / temperature for j in range(n_rows)] for i in range(n_rows)]
    per_anchor_losses: list[list[float]] = []
    for i in range(n_rows):
        positives = [j for j in range(n_rows) if ids[j] == ids[i] and (j != i or include_self)]
        if candidates == "other-ids":
            cands = [n for n in range(n_rows) if ids[n] != ids[i]]
        else:
            cands = [n for n in range(n_rows) if n != i or include_self]
        weights = eta_weights([s[i][n] for n in cands], hardening)
        if uniforms is not None and sum(weights) > 0:
            weights = draw_counts(weights, uniforms[i])
        lam = 1.0 if negative_reduction == "mean" else float(k if k is not None else len(cands))
        losses = []
        for j in positives:
            if sum(weights) == 0:
                losses.append(0.0)
                continue
            expectation = sum(w * math.exp(s[i][n]) for w, n in zip(weights, cands, strict=False)) / sum(weights)
            if form == "infonce":
                losses.append(math.log1p(lam * expectation * math.exp(-s[i][j])))
            elif form == "supcon":
                losses.append(math.log(lam * expectation) - s[i][j])
            else:
                m = lam
                ng = (m * expectation - tau_plus * m * math.exp(s[i][j])) / (1 - tau_plus)
                ng = max(ng, m * math.exp(-1 / temperature))
                losses.append(-math.log(math.exp(s[i][j]) / (math.exp(s[i][j]) + ng)))
        per_anchor_losses.append(losses)
    if reduction == "none":
        return np.array([sum(ls) / len(ls) if ls else 0.0 for ls in per_anchor_losses])
    if reduction == "mean":
        pairs = [v for ls in per_anchor_losses for v in ls]
        return sum(pairs) / len(pairs) if pairs else 0.0
    means = [sum(ls) / len(ls) for ls in per_anchor_losses if ls]
    return sum(means) / len(means) if means else 0.0
