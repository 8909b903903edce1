"""The one interface every backend adapter fills in (Keras-3 style: one file per backend, same members).

An adapter supplies only what the Python array API lacks: gradients, stop-gradient, a seeded random
generator, optimizers, parameter placement (dtype, device), compilation, and conversion to NumPy.
Everything else (losses, encoders, optimizer arithmetic, metrics) is written once against `xp`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import _array_api as aa
from .. import optim

Array = Any
Params = dict[str, Array]

__all__ = ["Backend", "BackendBase", "BackendUnavailable", "Params", "DTYPES", "check_dtype"]

DTYPES = ("float32", "float64")


class BackendUnavailable(ImportError):
    """A backend that is unknown, not installed, or lacks something it was asked for (the message says which)."""


@runtime_checkable
class Backend(Protocol):
    """What training needs from a framework; `xp` is its array-API namespace."""

    name: str
    xp: ModuleType

    def value_and_grad(self, fn: Callable[..., Array], params: Params, *args: Any) -> tuple[Array, Params]:
        """(fn(params, *args), d fn / d params) for a scalar-valued fn."""

    def stop_gradient(self, x: Array) -> Array:
        """x treated as a constant by autodiff."""

    def generator(self, seed: int) -> Any:
        """The framework's own seeded random generator (numpy Generator, torch.Generator, jax key)."""

    def optimizer(self, name: str, params: Params, **hyper: float) -> optim.Optimizer:
        """An optax-style (init, update) pair for "adam" or "sgd"."""

    def to_numpy(self, x: Array) -> np.ndarray:
        """A host NumPy copy of x."""

    def from_numpy(self, array: np.ndarray, dtype: str | None = None, device: str | None = None) -> Array:
        """array placed on `device` (None: the default one), floats cast to `dtype` ("float32"/"float64")."""

    def devices(self) -> list[str]:
        """Names of the devices this backend can place arrays on, e.g. ["cpu", "cuda:0"]."""

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn compiled where the framework can (jax.jit); fn itself elsewhere."""

    def version(self) -> str:
        """The framework's version string."""


def check_dtype(dtype: str | None) -> str | None:
    """The dtype name, or ValueError naming the valid ones."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    return dtype


class BackendBase:
    """Defaults shared by the adapters: the array-API optimizers, NumPy conversion, no compilation."""

    name: str = "base"
    xp: ModuleType

    def optimizer(self, name: str, params: Params, **hyper: float) -> optim.Optimizer:
        """An optimizer from hcl_array.optim: written in the array API, so every backend shares the arithmetic."""
        del params  # the pure optimizers need no parameter list up front; init(params) receives it
        return optim.get(name, **hyper)

    def to_numpy(self, x: Array) -> np.ndarray:
        """A host NumPy copy of x."""
        return aa.to_numpy(x)

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """No compiler: fn itself."""
        return fn

    def params_to_numpy(self, params: Mapping[str, Array]) -> dict[str, np.ndarray]:
        """Every array of a flat dict on the host (for checkpoints)."""
        return {key: self.to_numpy(value) for key, value in params.items()}

    def params_from_numpy(
        self, arrays: Mapping[str, np.ndarray], dtype: str | None = None, device: str | None = None
    ) -> Params:
        """Every array of a flat dict placed on this backend (floats cast to dtype, integers kept)."""
        return {key: self.from_numpy(np.asarray(value), dtype, device) for key, value in arrays.items()}

    def _missing(self, what: str) -> BackendUnavailable:
        return BackendUnavailable(f"the {self.name} backend cannot {what}")

    def __repr__(self) -> str:
        return f"<hcl_array backend {self.name!r}>"


def float_dtype(xp: ModuleType, array: np.ndarray, dtype: str | None) -> Any:
    """The namespace dtype for `array`: `dtype` for floating arrays, the array's own for the rest."""
    if dtype is None or not np.issubdtype(array.dtype, np.floating):
        return None
    return getattr(xp, check_dtype(dtype))
