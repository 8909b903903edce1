"""JAX backend: `jax.value_and_grad`, with the whole training step compiled by `jax.jit`.

float64 needs jax_enable_x64; asking this backend for float64 arrays switches it on (process-wide),
as a float64 run would silently compute in float32 otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .base import BackendBase, BackendUnavailable, Params, check_dtype

try:
    import jax
    import jax.numpy as jnp
except ImportError as error:  # the registry turns this into "pip install hcl-array[jax]"
    raise BackendUnavailable(f"jax is not importable ({error})") from error

__all__ = ["JaxBackend"]


class JaxBackend(BackendBase):
    """JAX on "cpu", "gpu:<i>"/"cuda:<i>" or "tpu:<i>"; jax.value_and_grad under jax.jit."""

    name = "jax"
    xp = jnp  # jax.numpy implements the array API standard itself (jax >= 0.4.32)

    def value_and_grad(self, fn: Callable[..., Any], params: Params, *args: Any) -> tuple[Any, Params]:
        """jax.value_and_grad(fn)(params, *args)."""
        return jax.value_and_grad(fn)(params, *args)

    def stop_gradient(self, x: Any) -> Any:
        """jax.lax.stop_gradient(x)."""
        return jax.lax.stop_gradient(x)

    def generator(self, seed: int) -> Any:
        """jax.random.key(seed): split it for each draw."""
        return jax.random.key(seed)

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """jax.jit(fn)."""
        return jax.jit(fn)

    def from_numpy(self, array: np.ndarray, dtype: str | None = None, device: str | None = None) -> Any:
        """A jax array on `device` (default: jax's default device), floats cast to dtype."""
        check_dtype(dtype)
        array = np.asarray(array)
        if dtype == "float64" and not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
        if dtype is not None and np.issubdtype(array.dtype, np.floating):
            array = array.astype(dtype)
        return jax.device_put(jnp.asarray(array), self._device(device))

    def devices(self) -> list[str]:
        """Every jax device as "<platform>:<id>", e.g. ["cpu:0"]."""
        return [f"{device.platform}:{device.id}" for device in jax.devices()]

    def version(self) -> str:
        """jax.__version__."""
        return str(jax.__version__)

    def _device(self, device: str | None) -> Any:
        if device is None:
            return None
        platform, _, index = device.partition(":")
        platform = {"cuda": "gpu"}.get(platform, platform)
        try:
            candidates = jax.devices(platform)
            return candidates[int(index or 0)]
        except (RuntimeError, ValueError, IndexError) as error:
            raise ValueError(f"jax has no device {device!r}; available: {', '.join(self.devices())}") from error
