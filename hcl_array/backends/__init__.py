"""Backend adapters: one file per framework, one interface (`Backend`, in base.py).

    backend = get_backend("torch")          # imports torch now, not before
    value, grads = backend.value_and_grad(objective, params, *batch)

Nothing here imports a framework until its backend is requested, so a missing framework costs
nothing until it is used, and then gives a message naming the pip extra that installs it.

This package also registers each framework's loss kernels into the loss dispatcher
(`hcl_array.dispatch`): a loader per array family, run on the first loss call with such arrays.
Adding a backend's kernels is one module here that calls `dispatch.register`, and one loader below.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from .. import dispatch
from .base import DTYPES, Backend, BackendBase, BackendUnavailable, check_dtype

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendBase",
    "BackendUnavailable",
    "DTYPES",
    "check_dtype",
    "get_backend",
    "available_backends",
]

# name -> (module in this package, class, the import that must succeed, pip extra)
BACKENDS: dict[str, tuple[str, str, str, str]] = {
    "numpy": ("numpy", "NumpyBackend", "numpy", "hcl-array"),
    "torch": ("torch", "TorchBackend", "torch", "hcl-array[torch]"),
    "jax": ("jax", "JaxBackend", "jax", "hcl-array[jax]"),
    "cupy": ("cupy", "CupyBackend", "cupy", "hcl-array[cupy]"),
}

_CACHE: dict[str, Any] = {}


def get_backend(name: str) -> Backend:
    """The adapter for `name` (numpy, torch, jax, cupy); BackendUnavailable says what is missing."""
    if name in _CACHE:
        return _CACHE[name]
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module_name, class_name, requirement, extra = BACKENDS[name]
    if importlib.util.find_spec(requirement) is None:
        raise BackendUnavailable(f"backend {name!r} needs {requirement}, which is not installed: pip install '{extra}'")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as error:
        message = f"backend {name!r} could not be loaded ({error}); reinstall with pip install '{extra}'"
        raise BackendUnavailable(message) from error
    _CACHE[name] = backend = getattr(module, class_name)()
    return backend


def available_backends() -> dict[str, str | None]:
    """Each backend name with the reason it is unusable, or None when its framework imports."""
    status: dict[str, str | None] = {}
    for name in BACKENDS:
        try:
            get_backend(name)
            status[name] = None
        except BackendUnavailable as error:
            status[name] = str(error)
    return status


def _load_torch_kernels() -> None:
    from . import _torch_autograd, _torch_distributed, _torch_fused  # noqa: F401  (each registers its entries on import)


def _load_jax_kernels() -> None:
    from . import _jax_distributed, _jax_fused, _jax_vjp  # noqa: F401


def _load_cupy_kernels() -> None:
    from . import _cupy_kernels  # noqa: F401


dispatch.register_loader("torch", _load_torch_kernels)
dispatch.register_loader("jax", _load_jax_kernels)
dispatch.register_loader("cupy", _load_cupy_kernels)
