"""One test, every backend: the `xp` fixture runs a test on each installed array namespace.

HCL_BACKENDS (comma-separated: numpy,array_api_strict,torch,jax,cupy) restricts the set; nox uses it
to give each backend its own session.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np
import pytest

from hcl_array._array_api import to_numpy

ALL_BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")


def load_backend(name: str) -> tuple[Any, Any] | str:
    """(namespace, device) for a backend, or the reason it is unavailable."""
    try:
        if name == "numpy":
            import array_api_compat.numpy as xp

            return xp, None
        if name == "array_api_strict":
            import array_api_strict as xp

            xp.set_array_api_strict_flags(data_dependent_shapes=False, boolean_indexing=False)
            return xp, None
        if name == "torch":
            import array_api_compat.torch as xp

            return xp, None
        if name == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)
            import jax.numpy as xp

            return xp, None
        if name == "cupy":
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "cupy: no CUDA device"
            import array_api_compat.cupy as xp

            return xp, None
    except Exception as error:  # noqa: BLE001 - any import failure means "not installed here"
        return f"{name} unavailable: {error}"
    raise ValueError(name)


def selected_backends() -> list[str]:
    chosen = os.environ.get("HCL_BACKENDS")
    if not chosen:
        return [b for b in ALL_BACKENDS if b != "cupy" or importlib.util.find_spec("cupy")]
    return [b.strip() for b in chosen.split(",") if b.strip()]


@pytest.fixture(params=selected_backends())
def xp(request: pytest.FixtureRequest) -> Any:
    """An array-API namespace; the test is skipped with the reason when the backend is missing."""
    loaded = load_backend(request.param)
    if isinstance(loaded, str):
        pytest.skip(loaded)
    namespace, _ = loaded
    return namespace


def assert_close(actual: Any, desired: Any, *, rtol: float = 1e-10, atol: float = 1e-12, xp: Any = None) -> None:
    """Values (as float64 NumPy) and, when `xp` is given, the namespace of `actual` agree."""
    if xp is not None:
        from array_api_compat import array_namespace

        assert array_namespace(actual) is array_namespace(xp.asarray(0.0)), "result left the input's namespace"
    np.testing.assert_allclose(
        np.asarray(to_numpy(actual), dtype=np.float64), np.asarray(desired), rtol=rtol, atol=atol
    )
