"""CuPy backend: NumPy's adapter on a CUDA device; gradients from the analytic VJPs, like NumPy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .base import BackendBase, BackendUnavailable, Params, check_dtype, float_dtype
from .numpy import analytic_value_and_grad

try:
    import array_api_compat.cupy as xp_cupy
    import cupy
except ImportError as error:  # the registry turns this into "pip install hcl-array[cupy]"
    raise BackendUnavailable(f"cupy is not importable ({error})") from error

__all__ = ["CupyBackend"]


class CupyBackend(BackendBase):
    """CuPy on CUDA devices "cuda:<i>"; trains through the analytic value-and-grad, as NumPy does."""

    name = "cupy"
    xp = xp_cupy

    def value_and_grad(self, fn: Callable[..., Any], params: Params, *args: Any) -> tuple[Any, Params]:
        """(value, grads) from fn.value_and_grad: CuPy has no autodiff."""
        return analytic_value_and_grad(self.name, fn, params, *args)

    def stop_gradient(self, x: Any) -> Any:
        """x itself: nothing is traced."""
        return x

    def generator(self, seed: int) -> Any:
        """cupy.random.default_rng(seed)."""
        return cupy.random.default_rng(seed)

    def from_numpy(self, array: np.ndarray, dtype: str | None = None, device: str | None = None) -> Any:
        """A copy on the CUDA device `device` ("cuda:<i>", default the current one), floats cast to dtype.

        That device becomes the current one: CuPy allocates (optimizer state, metric sums, the kernel's
        buffers) and launches on the current device, so a run on cuda:1 would otherwise work on cuda:0.
        """
        check_dtype(dtype)
        target = float_dtype(self.xp, np.asarray(array), dtype)
        cupy.cuda.Device(self._device_index(device)).use()
        return cupy.array(array, dtype=target)

    def devices(self) -> list[str]:
        """["cuda:0", ...]; empty without a CUDA device."""
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError:
            return []
        return [f"cuda:{index}" for index in range(count)]

    def version(self) -> str:
        """cupy.__version__."""
        return str(cupy.__version__)

    def _device_index(self, device: str | None) -> int:
        if device in (None, "cuda"):
            return cupy.cuda.runtime.getDevice()
        if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
            return int(device[5:])
        raise ValueError(f"cupy devices are 'cuda' or 'cuda:<index>', not {device!r}")
