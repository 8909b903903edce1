"""NumPy backend: no autodiff, so gradients come from the analytic VJPs (losses, encoders) the objective supplies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat.numpy as xp_numpy
import numpy as np

from .base import BackendBase, Params, check_dtype, float_dtype

__all__ = ["NumpyBackend", "analytic_value_and_grad"]


def analytic_value_and_grad(
    backend_name: str, fn: Callable[..., Any], params: Params, *args: Any
) -> tuple[Any, Params]:
    """fn.value_and_grad(params, *args): the analytic gradient a function without autodiff must carry."""
    analytic = getattr(fn, "value_and_grad", None)
    if analytic is None:
        raise NotImplementedError(
            f"the {backend_name} backend has no autodiff: {getattr(fn, '__name__', fn)!r} must provide an analytic "
            "`value_and_grad(params, *args)` (hcl_array.training.ContrastiveObjective does), or use torch/jax"
        )
    return analytic(params, *args)


class NumpyBackend(BackendBase):
    """NumPy on the CPU; trains through the analytic value-and-grad of the losses and encoders."""

    name = "numpy"
    xp = xp_numpy

    def value_and_grad(self, fn: Callable[..., Any], params: Params, *args: Any) -> tuple[Any, Params]:
        """(value, grads) from fn.value_and_grad: NumPy cannot differentiate an arbitrary function."""
        return analytic_value_and_grad(self.name, fn, params, *args)

    def stop_gradient(self, x: Any) -> Any:
        """x itself: nothing is traced."""
        return x

    def generator(self, seed: int) -> np.random.Generator:
        """np.random.default_rng(seed)."""
        return np.random.default_rng(seed)

    def from_numpy(self, array: np.ndarray, dtype: str | None = None, device: str | None = None) -> np.ndarray:
        """A NumPy copy, floats cast to dtype; only device "cpu" exists."""
        check_dtype(dtype)
        if device not in (None, "cpu"):
            raise ValueError(f"the numpy backend has only device 'cpu', not {device!r}")
        target = float_dtype(self.xp, np.asarray(array), dtype)
        return np.array(array, dtype=target, copy=True)

    def devices(self) -> list[str]:
        """["cpu"]."""
        return ["cpu"]

    def version(self) -> str:
        """numpy.__version__."""
        return np.__version__
