"""Reference geometries of neural collapse and the loss value they attain.

`simplex_etf` and `orthogonal_frame` build the class-mean configurations that the collapse metrics in
`hcl_array.metrics` measure distances to; `neural_collapse_loss` is the closed-form minimum of the
paper's (hard-negative) contrastive losses at the simplex ETF. The matrices are built in NumPy float64
(they are small, C x d) and then moved to the requested namespace, dtype and device.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["simplex_etf", "orthogonal_frame", "neural_collapse_loss"]

Array = Any


def _default_namespace() -> ModuleType:
    import array_api_compat.numpy as numpy_compat

    return numpy_compat


def _helmert_basis(num_classes: int) -> np.ndarray:
    """C x (C-1) orthonormal basis of the vectors orthogonal to the all-ones vector (Helmert contrasts).

    Column k (k = 1..C-1) is (1, ..., 1, -k, 0, ..., 0) / sqrt(k (k+1)) with k ones.
    """
    rows = np.arange(num_classes)[:, None]
    k = np.arange(1, num_classes)[None, :]
    basis = np.where(rows < k, 1.0, 0.0) - np.where(rows == k, k, 0.0)
    return basis / np.sqrt(k * (k + 1.0))


def _random_rotation(dim: int, seed: int) -> np.ndarray:
    """A d x d orthogonal matrix drawn from the Haar measure (QR of a Gaussian matrix, signs fixed)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))[None, :]


def _place(rows: np.ndarray, dim: int, *, xp: ModuleType | None, dtype: Any, device: Any, seed: int | None) -> Array:
    """Pad C x k rows with zero columns to C x dim, rotate when a seed is given, move to the namespace."""
    padded = np.zeros((rows.shape[0], dim))
    padded[:, : rows.shape[1]] = rows
    if seed is not None:
        padded = padded @ _random_rotation(dim, seed)
    xp = _default_namespace() if xp is None else xp
    dtype = xp.float64 if dtype is None else dtype
    if device is None:
        return xp.asarray(padded, dtype=dtype)
    return xp.asarray(padded, dtype=dtype, device=device)


def _check_sizes(num_classes: int, dim: int, *, min_dim: int, why: str) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not isinstance(dim, int) or dim < min_dim:
        raise ValueError(f"dim must be an integer >= {why} = {min_dim} for num_classes={num_classes}, got dim={dim!r}")


def simplex_etf(
    num_classes: int,
    dim: int,
    *,
    xp: ModuleType | None = None,
    dtype: Any = None,
    device: Any = None,
    seed: int | None = None,
) -> Array:
    r"""$C \times d$ simplex ETF: unit rows, $\mu_a^\top \mu_b = -\frac{1}{C-1}$, $\sum_c \mu_c = 0$.

    Canonical embedding (seed=None): rows $\sqrt{C/(C-1)}$ times the Helmert basis of $\mathbf{1}^\perp$, padded
    with zeros to $d$ columns; seed=int: the same frame times a Haar-random $d \times d$ rotation drawn with NumPy.
    Needs $d \ge C - 1$. xp defaults to array_api_compat.numpy and dtype to xp.float64.
    """
    _check_sizes(num_classes, dim, min_dim=num_classes - 1, why="num_classes - 1")
    rows = math.sqrt(num_classes / (num_classes - 1)) * _helmert_basis(num_classes)
    return _place(rows, dim, xp=xp, dtype=dtype, device=device, seed=seed)


def orthogonal_frame(
    num_classes: int,
    dim: int,
    *,
    xp: ModuleType | None = None,
    dtype: Any = None,
    device: Any = None,
    seed: int | None = None,
) -> Array:
    r"""$C \times d$ orthonormal rows ($\mu_a^\top \mu_b = \delta_{ab}$): the first $C$ basis vectors, or rotated.

    The configuration SupCon with ReLU heads collapses to. Needs $d \ge C$.
    """
    _check_sizes(num_classes, dim, min_dim=num_classes, why="num_classes")
    return _place(np.eye(num_classes), dim, xp=xp, dtype=dtype, device=device, seed=seed)


def neural_collapse_loss(num_classes: int, *, temperature: float = 1.0, negatives_per_anchor: float = 1.0) -> float:
    r"""Loss of the paper's contrastive losses at neural collapse (unit-norm simplex ETF, collapsed classes):

    $$\ell^\star = \log\Bigl(1 + \lambda \exp\Bigl(-\frac{C}{(C-1)\,\tau}\Bigr)\Bigr).$$

    At the ETF a positive pair has similarity 1 and every negative $-\frac{1}{C-1}$, so
    $s_{in} - s_{ij} = -\frac{C}{C-1}$ for every negative and the hardening weights are uniform.
    For $C = 100$, $\tau = 1$, $\lambda = 1$ this is 0.3106.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    if negatives_per_anchor < 0:
        raise ValueError(f"negatives_per_anchor must be non-negative, got {negatives_per_anchor!r}")
    gap = num_classes / ((num_classes - 1) * temperature)
    return math.log1p(negatives_per_anchor * math.exp(-gap))
