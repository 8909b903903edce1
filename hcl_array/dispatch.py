"""Which path computes a loss call: decided in one function, `choose_path`, from one table.

Three paths compute the same numbers (tests hold each to the others at 1e-10 in float64):

    fused    value and gradient in one in-place pass over cache-sized blocks (`fused.py`): the
             common configurations on NumPy, CuPy and torch; the fastest, memory linear in N
    tiled    the array-API formulas on blocks of anchor rows (`tiled.py`): memory O(tile * N)
    dense    the array-API formulas on the whole (N, N) matrix (`dense.py`): every configuration,
             every namespace, and double backward / forward mode through autodiff

and a fourth spans processes: "distributed" (`distributed.py`), chosen by `group=` (torch) or
`axis_name=` (JAX); its entries take this rank's own arrays, in their layout, and the collectives:

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

from array_api_compat import is_cupy_array, is_jax_array, is_numpy_array, is_torch_array

from . import _array_api as aa
from . import dense, distributed, fused, tiled
from .config import LossConfig, check_inputs, reject_non_finite, restore_views
from .formulas import uniform_draws

Array = Any
Implementation = Callable[..., Any]

__all__ = ["ANY_FAMILY", "array_family", "choose_path", "compute", "implementation", "register", "register_loader"]

#: The family of an entry that serves every namespace (the array-API code).
ANY_FAMILY = "*"

_TABLE: dict[tuple[str, str], Implementation] = {
    ("dense", ANY_FAMILY): dense.loss,
    ("tiled", ANY_FAMILY): tiled.loss,
    ("fused", "numpy"): fused.numpy_loss,
}
_LOADERS: dict[str, Callable[[], object]] = {}


def register(path: str, family: str, implementation: Implementation) -> None:
    """Serve `path` for arrays of `family` ("numpy", "cupy", "torch", "jax", ...) with `implementation`."""
    _TABLE[(path, family)] = implementation


def register_loader(family: str, loader: Callable[[], object]) -> None:
    """Run `loader` (which imports the modules that `register` this family's entries) on first use."""
    _LOADERS[family] = loader


def array_family(z: Array) -> str:
    """ "numpy", "cupy", "torch", "jax", or "array_api" for any other namespace (array-api-strict, ...)."""
    for family, test in (("numpy", is_numpy_array), ("torch", is_torch_array), ("jax", is_jax_array)):
        if test(z):
            return family
    return "cupy" if is_cupy_array(z) else "array_api"


def implementation(path: str, family: str) -> Implementation | None:
    """The table's entry for (path, family), else its entry for every family; None when there is none."""
    loader = _LOADERS.pop(family, None)
    if loader is not None:
        loader()
    return _TABLE.get((path, family)) or _TABLE.get((path, ANY_FAMILY))


def _fused_refusal(config: LossConfig, family: str, n: int) -> str | None:
    """Why the fused kernel cannot take this call, or None when it can."""
    if implementation("fused", family) is None:
        return f"the kernel serves NumPy, CuPy and torch arrays, not {family}"
    return "the batch is empty" if n == 0 else fused.supports(config)


def choose_path(config: LossConfig, family: str, n: int, *, group: Any = None) -> str:
    """The path for a call on n rows of `family`: "distributed", "fused", "tiled" or "dense".

    group= (a torch ProcessGroup) or axis_name= (a JAX mesh axis): distributed, whatever the rest.

    kernel="auto": fused when the kernel serves the call (it then blocks by `tile`); otherwise tiled
    when tile is an integer, or "auto" with n > tiled.AUTO_THRESHOLD and a configuration the tiled path
    computes; otherwise dense. kernel="fused" raises instead of falling back; kernel="array_api"
    never takes the kernel. An integer tile the tiled path cannot honour raises ValueError.
    """
    if group is not None or config.axis_name is not None:
        return "distributed"
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
    if group is not None or config.axis_name is not None:  # the "distributed" path of choose_path
        return _compute_distributed(embeddings, ids, config, rng, uniforms, return_grad, group)
    xp, z, ids = check_inputs(embeddings, ids)
    if return_grad and config.reduction == "none":
        raise ValueError("return_grad needs a scalar loss: use reduction='mean' or 'anchor_mean'")
    if config.negatives == "sampled":
        uniforms = uniform_draws(rng, uniforms, (z.shape[0], config.k), xp, z)
    family = array_family(z)
    path = choose_path(config, family, z.shape[0])
    z_compute = xp.astype(z, aa.accumulation_dtype(xp, z.dtype), copy=False)  # nothing below writes into it
    if path != "fused" and config.check_finite:
        reject_non_finite(z, xp)
    result = implementation(path, family)(z_compute, ids, config, uniforms=uniforms, return_grad=return_grad)
    value = result[0] if return_grad else result
    # A NaN or Inf in z always reaches the kernel's value (fused.value_and_grad), so one scalar test
    # replaces a pass over z; only a non-finite value pays for the full check.
    if path == "fused" and config.check_finite and not bool(xp.isfinite(value)):
        reject_non_finite(z, xp)
    return restore_views(embeddings, *result, xp) if return_grad else result


def _compute_distributed(
    embeddings: Array, ids: Array | None, config: LossConfig, rng: Any, uniforms: Any, return_grad: bool, group: Any
) -> Any:
    """The distributed entry for the embeddings' family, after the checks every rank makes alike.

    Checks that could fail on one rank only (the batch itself) run inside the entry, after every rank
    has said whether it accepts its batch, so that no rank is left waiting in a collective.
    """
    option, family = ("group", "torch") if group is not None else ("axis_name", "jax")
    if group is not None and config.axis_name is not None:
        raise ValueError("pass group= (torch.distributed) or axis_name= (a JAX mesh axis), not both")
    given = array_family(embeddings) if aa.is_array(embeddings) else type(embeddings).__name__
    if given != family:
        raise TypeError(f"{option}= needs {family} arrays, got {given} embeddings (torch: group=, JAX: axis_name=)")
    reason = distributed.unsupported(config)
    if reason is not None:
        raise ValueError(f"{option}= cannot compute this configuration: {reason}")
    if config.negatives == "sampled" and rng is None and uniforms is None:
        raise ValueError("negatives='sampled' needs a random source: the same rng=<seed> or uniforms= on every rank")

    def draw(shape: tuple[int, int]) -> Array:
        xp = aa.namespace(embeddings)
        return uniform_draws(rng, uniforms, shape, xp, embeddings)

    entry = implementation("distributed", family)
    return entry(embeddings, ids, config, group=group, draw=draw, return_grad=return_grad)
