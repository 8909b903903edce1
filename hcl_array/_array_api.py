"""Namespace helpers shared by every module: one place for what the array API standard lacks.

Nothing here imports a framework. Framework-specific behaviour (stop-gradient, "is this a tracer?")
is reached through the array object itself or through modules the caller has already imported.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any

import array_api_compat
from array_api_compat import array_namespace, device, is_jax_array, is_torch_array

__all__ = [
    "array_namespace",
    "device",
    "namespace",
    "accumulation_dtype",
    "supports_float64",
    "masked_logsumexp",
    "softplus",
    "stop_gradient",
    "concrete_bool",
    "one_hot",
    "searchsorted_rows",
    "full_precision",
]

Array = Any


def namespace(*arrays: Array) -> ModuleType:
    """The array-API namespace of the inputs (array-api-compat wraps numpy, torch, jax, cupy)."""
    return array_namespace(*arrays)


def _is_dtype(xp: ModuleType, dtype: Any, kind: str) -> bool:
    return bool(xp.isdtype(dtype, kind))


def accumulation_dtype(xp: ModuleType, dtype: Any) -> Any:
    """The dtype to compute in: float32 for float16/bfloat16 input, otherwise the input's own float dtype."""
    if not _is_dtype(xp, dtype, "real floating"):
        raise TypeError(f"expected a real floating dtype, got {dtype}")
    if dtype == xp.float64 or dtype == xp.float32:
        return dtype
    return xp.float32  # float16, bfloat16: exp and sums lose too much in half precision


def supports_float64(xp: ModuleType, dev: Any = None) -> bool:
    """Whether float64 arrays can be made here (JAX needs jax_enable_x64; some devices lack float64)."""
    try:
        with warnings.catch_warnings():  # JAX without x64 warns, then silently makes float32
            warnings.simplefilter("ignore")
            probe = xp.zeros(1, dtype=xp.float64, device=dev) if dev is not None else xp.zeros(1, dtype=xp.float64)
    except Exception:  # noqa: BLE001 - any backend refusal means "no"
        return False
    return probe.dtype == xp.float64


def masked_logsumexp(x: Array, mask: Array, /, *, axis: int = -1, empty: float = 0.0) -> tuple[Array, Array]:
    """log sum_{mask} exp(x) along `axis`, max-shifted, and whether any entry was selected.

    Rows with no selected entry get the finite value `empty` (never -inf), so that a later
    `where` that discards them cannot turn into a NaN gradient. `x` must be finite where `mask` is set.
    """
    xp = array_namespace(x, mask)
    # -inf outside the mask: exp gives exact zeros there, and its derivative (0) never meets an inf.
    filled = xp.where(mask, x, -math.inf)
    shift = xp.max(filled, axis=axis, keepdims=True)
    any_selected = shift > -math.inf
    shift = stop_gradient(xp.where(any_selected, shift, 0.0))
    total = xp.sum(xp.exp(filled - shift), axis=axis, keepdims=True)
    total = xp.where(any_selected, total, 1.0)  # log(0) would poison the gradient of discarded rows
    lse = xp.where(any_selected, xp.log(total) + shift, empty)
    return xp.squeeze(lse, axis=axis), xp.squeeze(any_selected, axis=axis)


def softplus(x: Array, /) -> Array:
    """log(1 + exp(x)) = logaddexp(x, 0), without overflow."""
    xp = array_namespace(x)
    return xp.logaddexp(x, 0.0)


def stop_gradient(x: Array, /) -> Array:
    """x as a constant for autodiff: torch detach, jax.lax.stop_gradient, identity elsewhere."""
    if is_torch_array(x):
        return x.detach()
    if is_jax_array(x):
        # A JAX array (or tracer) exists only once jax is imported, so this never imports it.
        return sys.modules["jax"].lax.stop_gradient(x)
    return x


def full_precision(like: Array, /) -> AbstractContextManager[Any]:
    """A context in which like's framework multiplies float32 matrices in float32, where by default it would not.

    torch under `torch.autocast` runs matrix products in float16 / bfloat16 (a float16 sum of N exp terms
    overflows; bfloat16 keeps 3 digits): autocast is switched off inside. JAX runs float32 products in
    TF32 on Ampere and Hopper GPUs by default (about 5e-4 relative error in s): "float32" precision
    inside (`jax.default_matmul_precision`, read when the products are traced, so it holds under jit and
    for their transposes), unless the user chose a precision (jax.default_matmul_precision, or the
    jax_default_matmul_precision flag), which then holds. The one place for this choice: the loss entry
    points and the JAX kernels use it.
    torch's own TF32 switch (`torch.backends.cuda.matmul.allow_tf32`, off by default) is the user's to set.
    """
    if is_torch_array(like):
        torch = sys.modules["torch"]  # like is a tensor: torch is imported; the core never imports it
        device_type = like.device.type
        # entering autocast(enabled=False) costs ~10 us; asking costs ~0.3 us
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            return torch.autocast(device_type, enabled=False)
    elif is_jax_array(like):
        jax = sys.modules["jax"]
        if jax.config.jax_default_matmul_precision is None:  # JAX's default; a precision the user set stays
            return jax.default_matmul_precision("float32")
    return contextlib.nullcontext()


def concrete_bool(condition: Array) -> bool | None:
    """bool(condition), or None under tracing (jax.jit), where data-dependent checks cannot run."""
    try:
        return bool(condition)
    except Exception:  # jax raises TracerBoolConversionError, a ConcretizationTypeError
        if is_jax_array(condition):
            return None
        raise


def one_hot(labels: Array, num_classes: int, /, *, dtype: Any) -> Array:
    """(N, C) matrix with 1 where labels == c: built by broadcasting, so it works under jit."""
    xp = array_namespace(labels)
    if xp.iinfo(labels.dtype).max < num_classes:  # a small label dtype (uint8) cannot hold every class index
        labels = xp.astype(labels, xp.int64)
    classes = xp.arange(num_classes, dtype=labels.dtype, device=device(labels))
    return xp.astype(labels[:, None] == classes[None, :], dtype)


def searchsorted_rows(sorted_rows: Array, values: Array, /, *, side: str = "left") -> Array:
    """searchsorted row by row: out[i, j] = #{m : sorted_rows[i, m] < values[i, j]} ("left"; "right": <=).

    The standard's searchsorted takes one 1-D array. torch's takes rows (one call), JAX's is mapped over
    them (`jax.vmap`), NumPy's runs once per row (a C search per value, cheaper than whole-array passes);
    any other namespace gets a branch-free binary search over every row at once: bit_length(M) passes of
    a gather (`take_along_axis`), a comparison and an add. All are exact in any dtype (no row offsets
    that would cost the values their resolution) and JAX's runs under jax.jit.
    (rows, M) `sorted_rows`, each row ascending; (rows, K) `values`.
    """
    if is_torch_array(sorted_rows):
        return sys.modules["torch"].searchsorted(sorted_rows.contiguous(), values.contiguous(), side=side)
    if is_jax_array(sorted_rows):
        jax = sys.modules["jax"]
        return jax.vmap(lambda row, row_values: jax.numpy.searchsorted(row, row_values, side=side))(sorted_rows, values)
    if array_api_compat.is_numpy_array(sorted_rows):
        import numpy as np  # a core dependency, not a framework

        return np.stack([np.searchsorted(row, v, side=side) for row, v in zip(sorted_rows, values, strict=True)])
    return _binary_search_rows(sorted_rows, values, side)


def _binary_search_rows(sorted_rows: Array, values: Array, side: str) -> Array:
    """`searchsorted_rows` in the standard alone."""
    xp = array_namespace(sorted_rows, values)
    columns = sorted_rows.shape[-1]
    found = xp.zeros(values.shape, dtype=xp.arange(1).dtype, device=device(values))  # the default index dtype
    step = 1 << (columns.bit_length() - 1) if columns else 0  # the largest power of two <= M
    while step:
        # invariant: the first `found` entries of the row are below the value; try `step` more
        probe = found + (step - 1)
        entries = xp.take_along_axis(sorted_rows, xp.minimum(probe, columns - 1), axis=-1)
        below = entries < values if side == "left" else entries <= values
        found = found + xp.astype(below & (probe < columns), found.dtype) * step
        step //= 2
    return found


def is_array(x: Any) -> bool:
    return array_api_compat.is_array_api_obj(x)


def to_numpy(x: Array, /) -> Any:
    """A NumPy copy of any array-API array (host transfer for device arrays)."""
    import numpy as np  # numpy is a core dependency, not a framework

    if is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_numpy_array(x) or is_jax_array(x):
        return np.asarray(x)
    return np.from_dlpack(x)
