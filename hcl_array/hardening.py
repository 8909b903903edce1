r"""Sample-hardening functions $\eta$: how the negatives of an anchor are weighted,

$$q_i(n) = \frac{\eta(s_{in})}{\sum_{m \in N(i)} \eta(s_{im})}, \qquad n \in N(i).$$

$\eta$ is non-negative and non-decreasing. Every hardening function supplies $\log \eta(s)$ (with $-\infty$
where $\eta = 0$), so that $q_i$ is a masked softmax and nothing is ever exponentiated outside log space.
The functions act on the scaled similarity $s = g(z_i)^\top g(z_j) / \tau$.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ._array_api import array_namespace, device

Array = Any

__all__ = [
    "Hardening",
    "Uniform",
    "ExponentialTilt",
    "Threshold",
    "TopK",
    "FromCallable",
    "uniform",
    "exponential",
    "threshold",
    "top_k",
    "as_hardening",
]


@runtime_checkable
class Hardening(Protocol):
    r"""$\log \eta(s)$ for the similarities `s`, given the boolean candidate mask of the same shape."""

    def log_weights(self, similarity: Array, candidates: Array) -> Array: ...


@dataclass(frozen=True)
class Uniform:
    r"""$\eta = 1$: the plain (unhardened) losses SCL and UCL."""

    positive: ClassVar[bool] = True  # eta > 0 everywhere: no candidate drops out of the support
    slope: float = 0.0  # d log eta / ds, used by the analytic gradient when weights are not detached

    def log_weights(self, similarity: Array, candidates: Array) -> Array:
        xp = array_namespace(similarity)
        return xp.zeros_like(similarity)


@dataclass(frozen=True)
class ExponentialTilt:
    r"""$\log \eta(s) = \beta s$ (the paper; Robinson et al. 2021). $\beta = 0$ is uniform."""

    beta: float
    positive: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not np.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"beta must be a finite number >= 0 (eta must be non-decreasing), got {self.beta}")

    @property
    def slope(self) -> float:
        return float(self.beta)

    def log_weights(self, similarity: Array, candidates: Array) -> Array:
        return self.beta * similarity


@dataclass(frozen=True)
class Threshold:
    r"""$\eta(s) = \mathbf{1}[s \ge \kappa]$: only negatives at least as similar as $\kappa$ (on the scaled similarity).

    An anchor none of whose candidates reaches $\kappa$ has no negatives and contributes zero loss.
    """

    kappa: float
    slope: float = 0.0

    def log_weights(self, similarity: Array, candidates: Array) -> Array:
        xp = array_namespace(similarity)
        return xp.where(similarity >= self.kappa, xp.zeros_like(similarity), xp.full_like(similarity, -xp.inf))


@dataclass(frozen=True)
class TopK:
    r"""$\eta = 1$ on the $k$ most similar candidates of each anchor (the $\beta \to \infty$ limit of tilting).

    Ties with the $k$-th largest similarity are all kept; anchors with fewer than $k$ candidates keep all.
    """

    k: int
    slope: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.k, int | np.integer) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"top_k hardening needs an integer k >= 1, got {self.k!r}")

    def log_weights(self, similarity: Array, candidates: Array) -> Array:
        xp = array_namespace(similarity, candidates)
        masked = xp.where(candidates, similarity, xp.full_like(similarity, -xp.inf))
        k = min(int(self.k), similarity.shape[-1])
        kth_largest = xp.sort(masked, axis=-1, descending=True)[:, k - 1 : k]
        return xp.where(masked >= kth_largest, xp.zeros_like(similarity), xp.full_like(similarity, -xp.inf))


_VALIDATION_GRID = np.linspace(-100.0, 100.0, 2001)


class FromCallable:
    r"""A user's $\eta$: any callable mapping an array to an array of non-negative, non-decreasing values.

    It is checked on a grid of similarities in $[-100, 100]$ (with NumPy when it accepts NumPy arrays,
    otherwise on the first call in the caller's namespace) and rejected with a clear error otherwise.
    """

    slope = None  # unknown derivative: analytic gradients need detached weights

    def __init__(self, eta: Callable[[Array], Array]) -> None:
        if not callable(eta):
            raise TypeError(f"hardening must be a Hardening object or a callable eta(s), got {type(eta).__name__}")
        self.eta = eta
        self._checked = False
        try:
            values = np.asarray(eta(_VALIDATION_GRID.copy()), dtype=np.float64)
        except Exception:  # noqa: BLE001 - a torch/jax-only callable: check it on first use instead
            return
        self._check(values)

    def _check(self, values: Any) -> None:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != _VALIDATION_GRID.shape:
            raise ValueError(f"hardening callable must map an array to an array of the same shape, got {values.shape}")
        if np.any(np.isnan(values)) or np.any(values < 0):
            raise ValueError("hardening callable eta must be non-negative (it weights negatives)")
        if np.any(np.diff(values) < -1e-12 * np.maximum(1.0, np.abs(values[1:]))):
            raise ValueError("hardening callable eta must be non-decreasing in the similarity (checked on [-100, 100])")
        self._checked = True

    def log_weights(self, similarity: Array, candidates: Array) -> Array:
        xp = array_namespace(similarity)
        if not self._checked:
            from ._array_api import to_numpy

            # on the similarities' device: an eta that closes over GPU arrays cannot take a CPU grid
            grid = xp.asarray(_VALIDATION_GRID, dtype=similarity.dtype, device=device(similarity))
            self._check(to_numpy(self.eta(grid)))
        weights = self.eta(similarity)
        positive = weights > 0
        safe = xp.where(positive, weights, xp.ones_like(weights))
        return xp.where(positive, xp.log(safe), xp.full_like(safe, -xp.inf))

    def __repr__(self) -> str:
        return f"FromCallable({self.eta!r})"


def uniform() -> Uniform:
    r"""$\eta = 1$ (no hardening)."""
    return Uniform()


def exponential(beta: float) -> ExponentialTilt:
    r"""Exponential tilting, $\eta(s) = e^{\beta s}$."""
    return ExponentialTilt(float(beta))


def threshold(kappa: float) -> Threshold:
    r"""$\eta(s) = \mathbf{1}[s \ge \kappa]$."""
    return Threshold(float(kappa))


def top_k(k: int) -> TopK:
    r"""$\eta = 1$ on the $k$ hardest candidates of each anchor."""
    return TopK(k)


def as_hardening(hardening: Hardening | Callable[[Array], Array] | None) -> Hardening:
    r"""None $\to$ uniform, a Hardening object $\to$ itself, a callable $\eta$ $\to$ FromCallable (validated)."""
    if hardening is None:
        return Uniform()
    if isinstance(hardening, (Uniform, ExponentialTilt, Threshold, TopK, FromCallable)) or isinstance(
        hardening, Hardening
    ):
        return hardening  # the tuple first: a runtime Protocol check inspects attributes (~10 us a call)
    return FromCallable(hardening)
