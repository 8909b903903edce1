"""Input checks and the one frozen description of a loss call, `LossConfig`, built once per call.

Every path (dense, tiled, fused, and their backend versions) reads its options from a `LossConfig`;
nothing passes the options again as keywords. It is hashable, so JAX takes it as a static argument.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import numpy as np

from . import _array_api as aa
from .hardening import Hardening, as_hardening

Array = Any
Normalize = Literal["sphere", "ball", "none"]
Candidates = Literal["other-ids", "all"]
Negatives = Literal["expected", "sampled"]
NegativeReduction = Literal["sum", "mean"]
Reduction = Literal["mean", "anchor_mean", "none"]
Form = Literal["infonce", "supcon", "debiased"]
Kernel = Literal["auto", "fused", "array_api"]
Tile = int | Literal["auto"] | None
AxisName = str | tuple[str, ...] | None

__all__ = [
    "LossConfig",
    "loss_config",
    "check_inputs",
    "all_finite",
    "reject_non_finite",
    "check_scalar",
]

# The accepted strings are the Literal types' own arguments: the signatures and the checks cannot drift apart.
_CHOICES: dict[str, tuple[str, ...]] = {
    "candidates": get_args(Candidates),
    "normalize": get_args(Normalize),
    "negatives": get_args(Negatives),
    "negative_reduction": get_args(NegativeReduction),
    "reduction": get_args(Reduction),
    "form": get_args(Form),
    "kernel": get_args(Kernel),
}


@dataclass(frozen=True)
class LossConfig:
    """Every option of `contrastive_loss` but the arrays and the random source (see its docstring).

    `tile` keeps the request ("auto", None or rows per block); the dispatcher turns it into a path
    and each path into its block rows for the batch at hand.
    """

    candidates: Candidates = "other-ids"
    hardening: Hardening = None  # type: ignore[assignment]  # loss_config always sets one
    temperature: float = 1.0
    normalize: Normalize = "ball"
    negatives: Negatives = "expected"
    k: int | None = None
    negative_reduction: NegativeReduction = "sum"
    include_self: bool = False
    reduction: Reduction = "mean"
    detach_weights: bool = True
    tau_plus: float = 0.0
    form: Form = "infonce"
    tile: Tile = "auto"
    kernel: Kernel = "auto"
    check_finite: bool = True
    axis_name: AxisName = None  # the JAX mesh axis the batch is split over (hcl_array.distributed)

    @property
    def slope(self) -> float:
        """d log eta / ds when the gradient flows through the weights; 0 when they are detached."""
        return 0.0 if self.detach_weights else float(getattr(self.hardening, "slope", None) or 0.0)


OPTION_NAMES = frozenset(field.name for field in fields(LossConfig))


def choice(name: str, value: Any, allowed: tuple[str, ...] | None = None) -> str:
    """value when it is one of the allowed strings for option `name`, else ValueError listing them."""
    allowed = _CHOICES[name] if allowed is None else allowed
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(repr(a) for a in allowed)}")
    return value


def check_scalar(name: str, value: float, *, positive: bool) -> float:
    """A finite float (> 0 when `positive`, else >= 0), or an error naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return value


def _check_tile(tile: Any) -> int | str | None:
    if tile is None or tile == "auto":
        return tile
    if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 1:
        raise ValueError(f"tile={tile!r} is not 'auto', None (dense) or a positive integer (rows per block)")
    return int(tile)


def _check_k(k: Any, negatives: str) -> int | None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
        raise ValueError(f"k must be a positive integer or None (all candidates), got {k!r}")
    if negatives == "sampled" and k is None:
        raise ValueError("negatives='sampled' needs k, the number of negatives drawn per anchor (the paper uses 256)")
    return None if k is None else int(k)


def _check_axis_name(axis_name: Any) -> None:
    if axis_name is not None and not isinstance(axis_name, str | tuple):
        raise TypeError(f"axis_name must be a mesh axis name (a string, or a tuple of them), got {axis_name!r}")


def loss_config(hardening: Hardening | Callable[[Array], Array] | None = None, **options: Any) -> LossConfig:
    """A validated `LossConfig`: every error names the option and what it accepts."""
    unknown = set(options) - OPTION_NAMES
    if unknown:
        raise TypeError(
            f"unknown loss option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(OPTION_NAMES))}"
        )
    for name in _CHOICES.keys() & options.keys():
        choice(name, options[name])
    if "temperature" in options:
        options["temperature"] = check_scalar("temperature", options["temperature"], positive=True)
    tau_plus = options.get("tau_plus", 0.0)
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must be in [0, 1) (the class prior of a false negative), got {tau_plus}")
    options["tau_plus"] = float(tau_plus)
    options["k"] = _check_k(options.get("k"), options.get("negatives", "expected"))
    options["tile"] = _check_tile(options.get("tile", "auto"))
    _check_axis_name(options.get("axis_name"))
    return LossConfig(hardening=as_hardening(hardening), **options)


# --------------------------------------------------------------------------------------------------
# The arrays


def _flatten_views(z: Array, ids: Array | None, xp: Any) -> tuple[Array, Array]:
    """(B, V, d) views -> (V*B, d) rows, view-major (all first views, then all second views...)."""
    if z.ndim == 3:
        batch, views, dim = z.shape
        rows = xp.reshape(xp.permute_dims(z, (1, 0, 2)), (views * batch, dim))
        if ids is None:
            ids = xp.arange(batch, device=aa.device(z))
        elif ids.ndim != 1 or ids.shape[0] != batch:
            raise ValueError(
                f"with (B, V, d) embeddings, ids/labels must have shape (B,) = ({batch},), got {tuple(ids.shape)}"
            )
        return rows, xp.concat([ids] * views)
    if z.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, d) or (B, V, d), got {z.ndim} dimensions {tuple(z.shape)}")
    if ids is None:
        raise ValueError("labels/ids are required with (N, d) embeddings (pass (B, V, d) views to use instance ids)")
    return z, ids


def check_inputs(z: Array, ids: Array | None) -> tuple[Any, Array, Array]:
    """(namespace, (N, d) rows, (N,) ids) from (N, d) rows with ids, or (B, V, d) views (ids optional)."""
    if not aa.is_array(z):
        raise TypeError(f"embeddings must be an array-API array (numpy, torch, jax, cupy), got {type(z).__name__}")
    if ids is not None and not aa.is_array(ids):
        raise TypeError(f"labels/ids must be an array of integers, got {type(ids).__name__}")
    xp = aa.namespace(z) if ids is None else aa.namespace(z, ids)
    if not xp.isdtype(z.dtype, "real floating"):
        raise TypeError(f"embeddings must be a real floating array, got dtype {z.dtype}")
    if ids is not None and not xp.isdtype(ids.dtype, "integral"):
        raise TypeError(f"labels/ids must be integers, got dtype {ids.dtype} (cast class labels with astype)")
    z, ids = _flatten_views(z, ids, xp)
    if ids.ndim != 1 or ids.shape[0] != z.shape[0]:
        raise ValueError(
            f"labels/ids must have shape (N,) = ({z.shape[0]},) to match embeddings, got {tuple(ids.shape)}"
        )
    return xp, z, ids


def restore_views(embeddings: Array, value: Array, grad: Array, xp: Any) -> tuple[Array, Array]:
    """(value, gradient) with the gradient in the embeddings' own layout and dtype ((B, V, d) views un-flattened)."""
    if embeddings.ndim == 3:
        batch, views, dim = embeddings.shape
        grad = xp.permute_dims(xp.reshape(grad, (views, batch, dim)), (1, 0, 2))
    # NumPy warns when the cast overflows (float16): the caller's test of the gradient reports it instead
    with np.errstate(over="ignore") if isinstance(grad, np.ndarray) else contextlib.nullcontext():
        return value, xp.astype(grad, embeddings.dtype, copy=False)


def reject_non_finite(z: Array, xp: Any) -> None:
    """ValueError when z holds a NaN or an Inf."""
    if not all_finite(z, xp):
        raise ValueError("embeddings contain NaN or Inf; check the encoder output (or pass check_finite=False)")


def all_finite(z: Array, xp: Any) -> bool:
    """False when z holds a NaN or an Inf (True under jax.jit, where values are not concrete).

    One sum decides almost always (NaN and Inf propagate into it); only a non-finite sum, which a huge
    but finite z can also give, pays for the elementwise check. The sum is four times cheaper.
    """
    # NumPy warns when a huge finite z overflows the sum (the slow path then decides); nothing else does
    with np.errstate(over="ignore", invalid="ignore") if isinstance(z, np.ndarray) else contextlib.nullcontext():
        total = aa.concrete_bool(xp.isfinite(xp.sum(z, dtype=aa.accumulation_dtype(xp, z.dtype))))
    return total is not False or aa.concrete_bool(xp.all(xp.isfinite(z))) is not False
