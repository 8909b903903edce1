"""The loss tests' one table: the named losses, the option rows, the batches, and how to call a loss
through a chosen path on a chosen backend, with the gradient by that backend's own means.

A path is forced with the per-call options `kernel=` and `tile=` (docs/architecture.md):

    dense   kernel="array_api", tile=None      every configuration, every namespace
    tiled   kernel="array_api", tile=<int>     expected negatives with a row-wise hardening function
    fused   kernel="fused", tile=<int>|None    NumPy, torch, CuPy, JAX; uniform or exponential weights,
                                               the infonce and supcon forms, a scalar reduction

Gradients come from each backend's own machinery, so that agreement is a check, not an identity:
NumPy, array-api-strict and CuPy from `return_grad` (the analytic VJP), torch from autograd (through
the array-API code on the dense path, through the registered Function on the tiled and fused paths),
JAX from jax.grad (through the array-API code on the dense path, the custom VJPs on the tiled and fused
paths).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from array_api_compat import array_namespace

import hcl_array as hcl
from hcl_array import dispatch
from hcl_array._array_api import to_numpy
from tests.conftest import load_backend, selected_backends
from tests.reference import naive_loss


@dataclass(frozen=True)
class Loss:
    """A named loss: its function, the options it takes beyond the common ones, the same loss for
    `tests.reference.naive_loss`, and whether the fused kernel computes it."""

    function: Callable[..., Any]
    extra: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    fused: bool = True


LOSSES: dict[str, Loss] = {
    "scl": Loss(hcl.scl, {}, {"candidates": "other-ids"}),
    "hscl": Loss(hcl.hscl, {"beta": 2.5}, {"candidates": "other-ids", "hardening": ("exp", 2.5)}),
    "ucl": Loss(hcl.ucl, {}, {"candidates": "all"}),
    "hucl": Loss(hcl.hucl, {"beta": 2.5}, {"candidates": "all", "hardening": ("exp", 2.5)}),
    "supcon": Loss(
        hcl.supcon,
        {},
        {"candidates": "all", "form": "supcon", "temperature": 0.1, "normalize": "sphere", "reduction": "anchor_mean"},
    ),
    "ntxent": Loss(hcl.ntxent, {}, {"candidates": "other-ids", "temperature": 0.5, "normalize": "sphere"}),
    "debiased_hcl": Loss(
        hcl.debiased_hcl,
        {"beta": 1.5, "tau_plus": 0.1},
        {
            "candidates": "other-ids",
            "form": "debiased",
            "hardening": ("exp", 1.5),
            "tau_plus": 0.1,
            "temperature": 0.5,
            "normalize": "sphere",
        },
        fused=False,
    ),
}
NAMES = sorted(LOSSES)
FUSED_NAMES = [name for name in NAMES if LOSSES[name].fused]

#: Option rows over the named losses: every option value, and the combinations that once broke a path.
#: Sampled rows draw k negatives per anchor from `uniforms(n, k)`.
OPTIONS: list[dict[str, Any]] = [
    {},
    {"normalize": "sphere"},
    {"normalize": "sphere", "temperature": 0.1},
    {"normalize": "none", "temperature": 3.0},
    {"temperature": 0.3},
    {"include_self": True},
    {"reduction": "anchor_mean"},
    {"reduction": "anchor_mean", "k": 7},
    {"reduction": "none"},
    {"k": 7},
    {"negative_reduction": "mean"},
    {"include_self": True, "negative_reduction": "mean", "normalize": "ball"},
    {"detach_weights": False},
    {"negative_reduction": "mean", "detach_weights": False},
    {"normalize": "none", "temperature": 3.0, "detach_weights": False, "reduction": "anchor_mean"},
    {"reduction": "none", "detach_weights": False, "include_self": True},
    {"negatives": "sampled", "k": 9},
    {"negatives": "sampled", "k": 9, "negative_reduction": "mean"},
]

#: The path each way of calling takes, and the options that force it (tile: rows per block or None).
PATHS: dict[str, tuple[str, str, bool]] = {
    # name: (the path dispatch runs, kernel=, blocks of `tile` rows rather than one block)
    "dense": ("dense", "array_api", False),
    "tiled": ("tiled", "array_api", True),
    "fused": ("fused", "fused", True),
    "fused-one-block": ("fused", "fused", False),
}
#: The backends each path serves (docs/architecture.md): the array-API paths every namespace.
SERVES = {
    "dense": ("numpy", "array_api_strict", "torch", "jax", "cupy"),
    "tiled": ("numpy", "array_api_strict", "torch", "jax", "cupy"),
    "fused": ("numpy", "torch", "cupy", "jax"),
}
#: The module whose implementation computes a (path, backend); the array-API code where none is registered.
IMPLEMENTED_IN = {
    ("fused", "numpy"): "hcl_array.fused",
    ("fused", "torch"): "hcl_array.backends._torch_fused",
    ("fused", "cupy"): "hcl_array.backends._cupy_kernels",
    ("fused", "jax"): "hcl_array.backends._jax_fused",
    ("tiled", "torch"): "hcl_array.backends._torch_autograd",
    ("tiled", "jax"): "hcl_array.backends._jax_vjp",
}


def implemented_in(path: str, backend: str) -> str:
    """The module expected to compute `path` (a dispatch path) for arrays of `backend`."""
    return IMPLEMENTED_IN.get((path, backend), f"hcl_array.{path}")


def option_id(row: dict[str, Any]) -> str:
    """A test id for an option row: key=value pairs, or "defaults"."""
    return ",".join(f"{k}={v}" for k, v in row.items()) or "defaults"


def batch(n: int = 14, seed: int = 0, *, d: int = 5, classes: int = 4, scale: float = 1.3):
    """(z, ids): rows with norms on both sides of 1 (the ball clip's two branches), and two anchors,
    the first and the last, whose ids nobody else has (no positives: they must contribute nothing)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)) * scale
    ids = rng.integers(0, classes, size=n)
    ids[0], ids[-1] = classes + 3, classes + 9
    return z, ids


def sizes(seed: int) -> tuple[int, int]:
    """A random batch size and a tile that does not divide it: 2 or 3 blocks, the last one short."""
    rng = np.random.default_rng(seed)
    tile = int(rng.integers(4, 9))
    n = int(rng.integers(1, 3)) * tile + int(rng.integers(1, tile))
    return n, tile


def uniforms(n: int, k: int, seed: int = 11) -> np.ndarray:
    """(n, k) U(0, 1) draws for sampled negatives, the same on every backend."""
    return np.random.default_rng(seed).random((n, k))


def cotangent(n: int) -> np.ndarray:
    """Weights of per-anchor values (reduction="none"): the gradient of their weighted sum is checked."""
    return np.random.default_rng(0).normal(size=n)


def loss_options(name: str, row: dict[str, Any]) -> dict[str, Any]:
    """The options of the named loss with an option row on top."""
    options = {**LOSSES[name].extra, **row}
    if name == "debiased_hcl" and row.get("normalize") == "none":
        options["temperature"] = 10.0  # keeps the reference's direct exponentials finite
    return options


def reference_value(name: str, z: np.ndarray, ids: np.ndarray, row: dict[str, Any], draws: Any = None) -> Any:
    """The naive float64 loops of tests/reference.py for the named loss with an option row."""
    options = {**LOSSES[name].reference, **loss_options(name, row)}
    for option in ("beta", "detach_weights", "negatives"):  # the reference has no such knob
        options.pop(option, None)
    return naive_loss(z, ids, **options, uniforms=draws)


def namespace(backend: str) -> Any:
    """The array namespace of a backend; the test is skipped with the reason when it is missing."""
    loaded = load_backend(backend)
    if isinstance(loaded, str):
        pytest.skip(loaded)
    return loaded[0]


def available(backends: tuple[str, ...]) -> list[str]:
    """Those of `backends` selected for this run (HCL_BACKENDS, tests/conftest.py)."""
    return [backend for backend in backends if backend in selected_backends()]


def path_options(path: str, tile: int) -> dict[str, Any]:
    """kernel= and tile= that force `path` ("dense", "tiled", "fused", "fused-one-block")."""
    _, kernel, blocks = PATHS[path]
    return {"kernel": kernel, "tile": tile if blocks else None}


def record_paths(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(path, module of the implementation) for each implementation that runs from now on (a lookup
    that only asks whether an entry exists, as `dispatch.choose_path` does, records nothing)."""
    ran: list[tuple[str, str]] = []
    original = dispatch.implementation

    def recording(path: str, family: str) -> Any:
        implementation = original(path, family)
        if implementation is None:
            return None

        def run(*args: Any, **kwargs: Any) -> Any:
            ran.append((path, implementation.__module__))
            return implementation(*args, **kwargs)

        return run

    monkeypatch.setattr(dispatch, "implementation", recording)
    return ran


def value_and_gradient(
    backend: str, function: Callable[..., Any], z: np.ndarray, ids: np.ndarray, *, jit: bool = False, **options: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """(value, gradient) as float64 NumPy, each computed on `backend` by its own means: NumPy,
    array-api-strict and CuPy by return_grad, torch by autograd, JAX by jax.grad (under jax.jit when `jit`).

    With reduction="none" the gradient is that of the values weighted by `cotangent(n)`, and None for
    the return_grad backends (the analytic VJP needs a scalar loss). Draws in `options["uniforms"]`
    are moved to the backend.
    """
    xp = namespace(backend)
    per_anchor = options.get("reduction") == "none"
    if options.get("uniforms") is not None:
        options["uniforms"] = xp.asarray(options["uniforms"])
    weights = cotangent(z.shape[0])
    if backend == "torch":
        return _torch_value_and_gradient(function, z, ids, weights if per_anchor else None, **options)
    if backend == "jax":
        import jax

        def loss(x: Any) -> Any:
            value = function(x, xp.asarray(ids), **options)
            return ((value * xp.asarray(weights)).sum() if per_anchor else value), value

        step = jax.value_and_grad(loss, has_aux=True)
        (_, value), grad = (jax.jit(step) if jit else step)(xp.asarray(z))
        return np.asarray(value), np.asarray(grad)
    z_, ids_ = xp.asarray(z), xp.asarray(ids)
    if per_anchor:
        value = function(z_, ids_, **options)
        assert array_namespace(value) is array_namespace(z_), "the loss left the input's namespace"
        return to_numpy(value), None
    value, grad = hcl.value_and_grad(function)(z_, ids_, **options)
    assert array_namespace(value, grad) is array_namespace(z_), "the loss left the input's namespace"
    assert tuple(grad.shape) == z.shape
    plain = function(z_, ids_, **options)  # the value-only pass skips the gradient: the same number
    np.testing.assert_allclose(to_numpy(plain), to_numpy(value), rtol=1e-14)
    return to_numpy(value), to_numpy(grad)


def _torch_value_and_gradient(function: Callable[..., Any], z, ids, weights, **options: Any):
    import torch

    tensor = torch.tensor(z, requires_grad=True)
    value = function(tensor, torch.tensor(ids), **options)
    (value if weights is None else (value * torch.tensor(weights)).sum()).backward()
    return value.detach().numpy(), tensor.grad.numpy()


@functools.cache
def dense_reference(name: str, row_index: int) -> dict[str, Any]:
    """The batch of (name, option row) and its references: the naive loops' value, and the dense
    path's value and gradient (NumPy's analytic VJP; with reduction="none", torch autograd through
    the dense array-API code of the cotangent-weighted values, None without torch)."""
    row = OPTIONS[row_index]
    n, tile = sizes(len(name))  # one shape per loss: eager JAX compiles each operation once per shape
    z, ids = batch(n, seed=len(name) + 7 * row_index)
    draws = uniforms(n, row["k"]) if row.get("negatives") == "sampled" else None
    options = {**loss_options(name, row), "uniforms": draws, "kernel": "array_api", "tile": None}
    function = LOSSES[name].function
    if row.get("reduction") != "none":
        value, grad = value_and_gradient("numpy", function, z, ids, **options)
    elif isinstance(load_backend("torch"), str):
        value, grad = to_numpy(function(z, ids, **options)), None
    else:
        value, grad = value_and_gradient("torch", function, z, ids, **options)
    naive = reference_value(name, z, ids, row, draws)
    return {"z": z, "ids": ids, "tile": tile, "uniforms": draws, "naive": naive, "value": value, "grad": grad}
