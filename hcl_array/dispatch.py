"""Which path computes a loss call: decided in one function, `choose_path`, from one table.

Three paths compute the same numbers (tests hold each to the others at 1e-10 in float64):

    fused    value and gradient in one pass over cache-sized blocks (`fused.py`; JAX:
             `backends/_jax_fused.py`): the common configurations on NumPy, CuPy, torch and JAX; the
             fastest, memory linear in N
    tiled    the array-API formulas on blocks of anchor rows (`tiled.py`): memory O(tile * N)
    dense    the array-API formulas on the whole (N, N) matrix (`dense.py`): every configuration,
             every namespace, and double backward / forward mode through autodiff

and two span processes, chosen by `group=` (torch) or `axis_name=` (JAX) (`distributed.py`): "distributed_fused"
(the fused kernel on each rank's anchors) and "distributed" (the array-API row blocks, for the rest); their
entries take this rank's own arrays, in their layout, and the collectives:

    implementation(embeddings, ids, config, *, group, draw, return_grad) -> value | (value, dL/dembeddings)

The table maps (path, array family) to an implementation with the signature

    implementation(z, ids, config, *, uniforms=None, return_grad=False) -> value | (value, dL/dz)

on (N, d) rows in the compute dtype. The core fills in its array-API entries below; a backend adds
its own with `register` (a custom autograd Function, a JAX custom VJP, a kernel for its arrays), from
a module that `register_loader` names for its family and that runs on the first call with such arrays.
The core never imports a backend module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat
from array_api_compat import is_cupy_array, is_jax_array, is_numpy_array, is_torch_array

from . import _array_api as aa
from . import dense, distributed, fused, tiled
from .config import LossConfig, check_inputs, reject_non_finite, restore_views
from .formulas import check_similarity_range, overflow_error, uniform_draws

Array = Any
Implementation = Callable[..., Any]

__all__ = [
    "ANY_FAMILY",
    "array_family",
    "choose_path",
    "choose_distributed_path",
    "compute",
    "implementation",
    "register",
    "register_loader",
]

#: The family of an entry that serves every namespace (the array-API code).
ANY_FAMILY = "*"

_TABLE: dict[tuple[str, str], Implementation] = {
    ("dense", ANY_FAMILY): dense.loss,
    ("tiled", ANY_FAMILY): tiled.loss,
    ("fused", "numpy"): fused.numpy_loss,
}
_LOADERS: dict[str, Callable[[], object]] = {}
#: family -> guard(embeddings, error) -> embeddings: for autodiff frameworks, an identity whose backward
#: pass raises error() when the gradient reaching half-precision embeddings overflowed their dtype
_GRADIENT_GUARDS: dict[str, Callable[[Array, Callable[[], Exception]], Array]] = {}


def register(path: str, family: str, implementation: Implementation) -> None:
    """Serve `path` for arrays of `family` ("numpy", "cupy", "torch", "jax", ...) with `implementation`."""
    _TABLE[(path, family)] = implementation


def register_gradient_guard(family: str, guard: Callable[[Array, Callable[[], Exception]], Array]) -> None:
    """Guard the autodiff gradient of float16 embeddings of `family` (see `_GRADIENT_GUARDS`)."""
    _GRADIENT_GUARDS[family] = guard


def register_loader(family: str, loader: Callable[[], object]) -> None:
    """Run `loader` (which imports the modules that `register` this family's entries) on first use."""
    _LOADERS[family] = loader


def array_family(z: Array) -> str:
    """ "numpy", "cupy", "torch", "jax", or "array_api" for any other namespace (array-api-strict, ...)."""
    for family, test in (("numpy", is_numpy_array), ("torch", is_torch_array), ("jax", is_jax_array)):
        if test(z):
            return family
    return "cupy" if is_cupy_array(z) else "array_api"


def _load(family: str) -> None:
    """Run the family's loader once (it registers the family's entries)."""
    loader = _LOADERS.pop(family, None)
    if loader is not None:
        loader()


def implementation(path: str, family: str) -> Implementation | None:
    """The table's entry for (path, family), else its entry for every family; None when there is none."""
    _load(family)
    return _TABLE.get((path, family)) or _TABLE.get((path, ANY_FAMILY))


def _fused_refusal(config: LossConfig, family: str, n: int) -> str | None:
    """Why the fused kernel cannot take this call, or None when it can."""
    if implementation("fused", family) is None:
        return f"the kernel serves NumPy, CuPy, torch and JAX arrays, not {family}"
    return "the batch is empty" if n == 0 else fused.supports(config)


def _distributed(config: LossConfig, group: Any) -> bool:
    """Whether the call spans devices: a torch ProcessGroup (group=) or a JAX mesh axis (axis_name=)."""
    return group is not None or config.axis_name is not None


def choose_path(config: LossConfig, family: str, n: int, *, group: Any = None) -> str:
    """The path for a call on n rows of `family`: "distributed_fused", "distributed", "fused", "tiled" or "dense".

    group= (a torch ProcessGroup) or axis_name= (a JAX mesh axis): `choose_distributed_path`.

    kernel="auto": fused when the kernel serves the call (it then blocks by `tile`); otherwise tiled
    when tile is an integer, or "auto" with n > tiled.AUTO_THRESHOLD and a configuration the tiled path
    computes; otherwise dense. kernel="fused" raises instead of falling back; kernel="array_api"
    never takes the kernel. An integer tile the tiled path cannot honour raises ValueError.
    """
    if _distributed(config, group):
        return choose_distributed_path(config, family)
    refusal = None if config.kernel == "array_api" else _fused_refusal(config, family, n)
    if config.kernel != "array_api" and refusal is None:
        return "fused"
    if config.kernel == "fused":
        raise ValueError(f"kernel='fused' cannot compute this call: {refusal} (pass kernel='auto')")
    if config.tile is None or n == 0:
        return "dense"
    reason = tiled.unsupported(config)
    if config.tile == "auto":
        return "tiled" if n > tiled.AUTO_THRESHOLD and reason is None else "dense"
    if reason is not None:
        raise ValueError(f"tile={config.tile} is not available for this configuration: {reason} (or pass tile=None)")
    return "tiled"


def choose_distributed_path(config: LossConfig, family: str) -> str:
    """The path across ranks: "distributed_fused" (the kernel on each rank's anchors) or "distributed" (row blocks).

    It reads only the options and the array family, never the local batch, so every rank takes the same path.
    kernel="auto": the kernel when the family has its entry and `fused.supports` the configuration;
    kernel="array_api": the row blocks; kernel="fused": the kernel, or a ValueError naming why not. The row
    blocks raise ValueError for what they cannot compute (`distributed.unsupported`).
    """
    if implementation("distributed_fused", family) is None:
        refusal = f"the kernel serves NumPy, CuPy, torch and JAX arrays across ranks, not {family}"
    else:
        refusal = fused.supports(config)
    if config.kernel != "array_api" and refusal is None:
        return "distributed_fused"
    if config.kernel == "fused":
        raise ValueError(f"kernel='fused' cannot compute this call across ranks: {refusal} (pass kernel='auto')")
    reason = distributed.unsupported(config)
    if reason is not None:
        raise ValueError(f"{'axis_name' if family == 'jax' else 'group'}= cannot compute this configuration: {reason}")
    return "distributed"


def compute(
    embeddings: Array,
    ids: Array | None,
    config: LossConfig,
    *,
    rng: Any = None,
    uniforms: Array | None = None,
    return_grad: bool = False,
    group: Any = None,
) -> Any:
    """The loss of `config` on (N, d) rows with ids or (B, V, d) views, through the chosen path.

    Returns the value, or (value, dL/dembeddings) in the embeddings' layout and dtype with return_grad.
    """
    if _distributed(config, group):  # before the local checks: every rank must agree on them first
        return _compute_distributed(embeddings, ids, config, rng, uniforms, return_grad, group)
    embeddings = _guard_gradient(embeddings, config, return_grad)
    xp, z, ids = check_inputs(embeddings, ids)
    ids = _on_device_of(z, ids)
    if return_grad and config.reduction == "none":
        raise ValueError("return_grad needs a scalar loss: use reduction='mean' or 'anchor_mean'")
    if config.negatives == "sampled":
        uniforms = uniform_draws(rng, uniforms, (z.shape[0], config.k), xp, z)
    family = array_family(z)
    path = choose_path(config, family, z.shape[0])
    z_compute = xp.astype(z, aa.accumulation_dtype(xp, z.dtype), copy=False)  # nothing below writes into it
    if path != "fused" and config.check_finite:
        reject_non_finite(z, xp)
    if config.check_finite:
        check_similarity_range(z_compute, config)
    with aa.full_precision(z_compute):  # no autocast, no TF32: the loss computes in z_compute's dtype
        result = implementation(path, family)(z_compute, ids, config, uniforms=uniforms, return_grad=return_grad)
    if return_grad:
        result = restore_views(embeddings, *result, xp)
    if config.check_finite:
        _reject_overflow(result, return_grad, z_compute, config, xp, checked=path != "fused")
    return result


def _on_device_of(z: Array, ids: Array) -> Array:
    """ids on z's device: moved, as pytorch-metric-learning moves labels, since labels often come from a CPU
    data loader while the embeddings live on the GPU (N integers: a small copy). Otherwise the kernel's
    gathers would fail with an obscure device error."""
    target = aa.device(z)
    if target is None or aa.device(ids) == target:  # None: a JAX tracer, which jit places itself
        return ids
    return array_api_compat.to_device(ids, target)


def _compute_distributed(
    embeddings: Array, ids: Array | None, config: LossConfig, rng: Any, uniforms: Any, return_grad: bool, group: Any
) -> Any:
    """The distributed entry for the embeddings' family, after the checks every rank makes alike.

    Checks that could fail on one rank only (the batch itself) run inside the entry, after every rank
    has said whether it accepts its batch, so that no rank is left waiting in a collective.
    """
    if group is not None and config.axis_name is not None:
        raise ValueError("pass group= (torch.distributed) or axis_name= (a JAX mesh axis), not both")
    family = array_family(embeddings) if aa.is_array(embeddings) else type(embeddings).__name__
    if group is not None:
        _load("torch")  # a ProcessGroup is torch's: torch's module also serves NumPy and CuPy arrays over it
        if family not in ("torch", "numpy", "cupy"):
            raise TypeError(
                f"group= needs torch arrays, got {family} embeddings (NumPy and CuPy arrays also go over a torch "
                "ProcessGroup; JAX: axis_name=)"
            )
    elif family != "jax":
        raise TypeError(f"axis_name= needs jax arrays, got {family} embeddings (torch: group=, JAX: axis_name=)")
    elif config.reduction == "none":
        raise ValueError("axis_name= cannot compute reduction='none' (per-anchor values go over group=, torch)")
    if return_grad and config.reduction == "none":
        raise ValueError("return_grad needs a scalar loss: use reduction='mean' or 'anchor_mean'")
    path = choose_distributed_path(config, family)
    if config.negatives == "sampled" and rng is None and uniforms is None:
        raise ValueError("negatives='sampled' needs a random source: the same rng=<seed> or uniforms= on every rank")

    def draw(shape: tuple[int, int]) -> Array:
        xp = aa.namespace(embeddings)
        return uniform_draws(rng, uniforms, shape, xp, embeddings)

    entry = implementation(path, family)
    with aa.full_precision(embeddings):
        return entry(embeddings, ids, config, group=group, draw=draw, return_grad=return_grad)


def _guard_gradient(embeddings: Array, config: LossConfig, return_grad: bool) -> Array:
    """embeddings, behind the family's gradient guard when autodiff will cast a float32 gradient to float16.

    The loss computes in float32; the gradient autodiff hands to float16 embeddings can exceed 65504
    (tiny rows on the sphere at a low temperature), where the cast gives Inf. Only float16 pays.
    """
    family = array_family(embeddings) if aa.is_array(embeddings) else None
    if return_grad or not config.check_finite or family is None or str(embeddings.dtype).split(".")[-1] != "float16":
        return embeddings
    implementation("dense", family)  # runs the family's loader, which registers its guard
    guard = _GRADIENT_GUARDS.get(family)
    if guard is None:
        return embeddings

    def error() -> Exception:
        xp = aa.namespace(embeddings)
        rows = xp.astype(aa.stop_gradient(embeddings), xp.float32)
        return overflow_error("the gradient", xp.reshape(rows, (-1, rows.shape[-1])), config, embeddings.dtype)

    return guard(embeddings, error)


def _reject_overflow(result: Any, return_grad: bool, z: Array, config: LossConfig, xp: Any, *, checked: bool) -> None:
    """ValueError when the value (or the gradient returned) is NaN or Inf: a bad z, or an overflow.

    A NaN or Inf in z always reaches the kernel's value (fused.value_and_grad), so there one scalar test
    replaces a pass over z (`checked`: the array-API paths tested z before computing); only a
    non-finite value pays for the full check. Under jax.jit nothing is concrete: no test.
    """
    value, grad = result if return_grad else (result, None)
    finite = xp.all(xp.isfinite(value))
    if grad is not None:  # one read by the host for both (on a GPU each read waits for the device)
        finite = finite & xp.all(xp.isfinite(grad))
    if aa.concrete_bool(finite) is not False:
        return
    if aa.concrete_bool(xp.all(xp.isfinite(value))) is False:
        if not checked:
            reject_non_finite(z, xp)
        raise overflow_error("the loss", z, config)
    raise overflow_error("the gradient", z, config, grad.dtype)
