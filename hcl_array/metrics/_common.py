"""Input checks, compute dtypes and the small numerical helpers every metric module shares."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from array_api_compat import is_jax_array

from .._array_api import concrete_bool, device, namespace, supports_float64

Array = Any


# --------------------------------------------------------------------------------------------------
# Input checks and dtypes
# --------------------------------------------------------------------------------------------------


def _linalg(xp: ModuleType) -> ModuleType:
    linalg = getattr(xp, "linalg", None)
    if linalg is None or not hasattr(linalg, "svdvals"):
        raise NotImplementedError(f"{xp.__name__} lacks the array-API linalg extension (linalg.svdvals, linalg.svd)")
    return linalg


def _compute_dtype(xp: ModuleType, like: Array) -> Any:
    """float64 where the backend has it (JAX needs jax_enable_x64), otherwise float32."""
    return xp.float64 if supports_float64(xp, device(like)) else xp.float32


def _check_embeddings(embeddings: Array, name: str = "embeddings", *, values: bool = True) -> Array:
    """Validate an (N, d) real floating array without NaN/inf; return it in the compute dtype.

    values=False checks the shape and dtype only (the caller tests the values, with `_values_plausible`)."""
    xp = namespace(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, d) array, got shape {tuple(embeddings.shape)}")
    if not xp.isdtype(embeddings.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {embeddings.dtype}")
    if embeddings.shape[0] < 1 or embeddings.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(embeddings.shape)}")
    # A NaN/inf makes its row sum non-finite: one cheap pass, the exact check only when that fails.
    if values and concrete_bool(xp.all(xp.isfinite(xp.sum(embeddings, axis=1)))) is False:
        if concrete_bool(xp.all(xp.isfinite(embeddings))) is False:
            raise ValueError(f"{name} contains NaN or infinite values")
    return xp.astype(embeddings, _compute_dtype(xp, embeddings), copy=False)


def _eager_num_classes(labels: Array, name: str) -> int:
    xp = namespace(labels)
    try:
        return int(xp.max(labels)) + 1
    except Exception as error:  # a tracer under jax.jit cannot be read
        if is_jax_array(labels):
            message = "num_classes=None reads max(labels) + 1 eagerly; under jax.jit pass num_classes"
            raise ValueError(message) from error
        raise


def _check_labels(
    labels: Array, num_rows: int, num_classes: int | None, name: str = "labels", *, values: bool = True
) -> tuple[Array, int]:
    """Validate 1-D integer labels matching N rows; return them and the number of classes.

    values=False skips the range test (the caller makes it, with `_values_plausible`)."""
    xp = namespace(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {tuple(labels.shape)}")
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape[0] != num_rows:
        raise ValueError(f"{name} has {labels.shape[0]} entries but the embeddings have {num_rows} rows")
    if num_classes is None:
        num_classes = _eager_num_classes(labels, name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if values and concrete_bool(xp.all((labels >= 0) & (labels < num_classes))) is False:
        raise ValueError(f"{name} must lie in [0, num_classes={num_classes})")
    return labels, num_classes


def _values_plausible(data: Array, labels: Array, num_classes: int) -> bool:
    """Whether every row sum is finite and every label in [0, num_classes): both in one read by the host (on a
    GPU each read waits for the device). False calls for the checks above, which say what is wrong; True
    under jax.jit, where nothing can be read."""
    xp = namespace(data)
    finite = xp.all(xp.isfinite(xp.sum(data, axis=1)))
    return concrete_bool(finite & xp.all((labels >= 0) & (labels < num_classes))) is not False


def _prepare(embeddings: Array, labels: Array, num_classes: int | None) -> tuple[Array, Array, int]:
    data = _check_embeddings(embeddings)
    labels, num_classes = _check_labels(labels, data.shape[0], num_classes)
    return data, labels, num_classes


# --------------------------------------------------------------------------------------------------
# Small numerical helpers
# --------------------------------------------------------------------------------------------------


def _nonzero(x: Array) -> Array:
    """x with zeros replaced by ones: a denominator that never divides by zero."""
    xp = namespace(x)
    return xp.where(x > 0, x, xp.ones_like(x))


def _safe_ratio(numerator: Array, denominator: Array, tiny: Array, *, undefined: float) -> Array:
    """numerator / denominator; where the denominator is below `tiny`: 0 if the numerator is too, else `undefined`."""
    xp = namespace(numerator, denominator)
    defined = denominator > tiny
    ratio = numerator / xp.where(defined, denominator, xp.ones_like(denominator))
    fallback = xp.where(xp.abs(numerator) > tiny, xp.full_like(ratio, undefined), xp.zeros_like(ratio))
    return xp.where(defined, ratio, fallback)


def _squared_row_norms(x: Array) -> Array:
    """sum_j x_ij^2 per row, by vecdot (no (N, d) temporary of squares: three times faster than sum(x * x))."""
    return namespace(x).vecdot(x, x, axis=-1)


def _row_norms(x: Array) -> Array:
    return namespace(x).sqrt(_squared_row_norms(x))


def _normalize_rows(x: Array) -> Array:
    """Rows scaled to unit norm; all-zero rows stay zero."""
    norms = _row_norms(x)
    return x / _nonzero(norms)[:, None]


def _masked_mean(values: Array, mask: Array) -> Array:
    """Mean of values where mask holds; 0 when nothing is selected."""
    xp = namespace(values)
    count = xp.sum(xp.astype(mask, values.dtype))
    return xp.sum(xp.where(mask, values, xp.zeros_like(values))) / _nonzero(count)


def _masked_std(values: Array, mask: Array) -> Array:
    """Population standard deviation of values where mask holds; 0 when nothing is selected."""
    xp = namespace(values)
    centre = _masked_mean(values, mask)
    return xp.sqrt(_masked_mean((values - centre) ** 2, mask))


def _distinct_pairs(present: Array) -> Array:
    """(C, C) mask of ordered pairs a != b of non-empty classes."""
    xp = namespace(present)
    index = xp.arange(present.shape[0], device=device(present))
    return present[:, None] & present[None, :] & (index[:, None] != index[None, :])
