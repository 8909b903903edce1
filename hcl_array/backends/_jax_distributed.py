"""Cross-device negatives over a JAX mesh axis: the "distributed" path of the dispatch table for JAX.

Inside `jax.shard_map` (or `pmap`) each device holds its shard of the batch; `hcl_array.distributed`
gathers the global batch with `lax.all_gather`, sums the loss with `lax.psum` (the value is replicated:
`out_specs=P()` works) and sums the column gradients with `lax.psum_scatter`. A `jax.custom_vjp`
computes the gradient in the forward rule, so `jax.grad` of the shard_map'ed loss is the gradient of
the single-device loss of the whole batch, and no (tile, N) block is stored. Each device's blocks of
anchors run through the fused kernel (`_jax_fused.segment`) for the configurations it serves, and
through the array-API blocks of `distributed.py` otherwise (or with kernel="array_api").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax

from hcl_array import dispatch, distributed, fused
from hcl_array.backends import _jax_fused
from hcl_array.backends._jax_vjp import scan_blocks
from hcl_array.config import LossConfig


class JaxCollectives:
    """`distributed.Collectives` over one mesh axis; shard_map gives every device the same local shape."""

    def __init__(self, axis_name: Any) -> None:
        try:
            self.size = jax.lax.axis_size(axis_name)
        except NameError as error:
            raise ValueError(
                f"axis_name={axis_name!r} is not a mapped axis here: call the loss inside jax.shard_map "
                f"(or pmap) over a mesh with that axis, or pass axis_name=None for one device"
            ) from error
        self.axis_name = axis_name

    def gather_shapes(self, shape: list[int]) -> list[list[int]]:
        return [shape] * self.size  # one program: every shard has this shape, dtype and ids

    def offset(self, sizes: Sequence[int]) -> jax.Array:
        return jax.lax.axis_index(self.axis_name) * sizes[0]

    def all_gather(self, x: jax.Array, sizes: Sequence[int]) -> jax.Array:
        return jax.lax.all_gather(x, self.axis_name, tiled=True)

    def all_sum(self, x: jax.Array) -> jax.Array:
        return jax.lax.psum(x, self.axis_name)

    def sum_scatter(self, x: jax.Array, sizes: Sequence[int]) -> jax.Array:
        return jax.lax.psum_scatter(x, self.axis_name, scatter_dimension=0, tiled=True)


@partial(jax.jit, static_argnums=(3, 4))  # eager JAX would dispatch every small operation on every device
def _value_and_grad(embeddings: jax.Array, ids: Any, uniforms: Any, config: LossConfig, need_grad: bool) -> tuple:
    comm = JaxCollectives(config.axis_name)
    segment = _jax_fused.segment if uses_kernel(config) else None
    return distributed.value_and_grad(
        embeddings,
        ids,
        config,
        comm,
        draw=lambda shape: uniforms,
        need_grad=need_grad,
        scan=scan_blocks,
        segment=segment,
    )


def uses_kernel(config: LossConfig) -> bool:
    """Whether each device's anchors go through the fused kernel (`_jax_fused.segment`) rather than the
    array-API blocks: the kernel's configurations, unless kernel="array_api" asks for the portable code."""
    return config.kernel != "array_api" and fused.supports(config) is None


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _loss(embeddings: jax.Array, ids: Any, uniforms: Any, config: LossConfig) -> jax.Array:
    return _value_and_grad(embeddings, ids, uniforms, config, need_grad=False)[0]


def _loss_forward(embeddings: jax.Array, ids: Any, uniforms: Any, config: LossConfig) -> tuple:
    return _value_and_grad(embeddings, ids, uniforms, config, need_grad=True)


def _loss_backward(config: LossConfig, grad: jax.Array, cotangent: jax.Array) -> tuple:
    return grad * cotangent, None, None  # integer ids and the draws get no cotangent


_loss.defvjp(_loss_forward, _loss_backward)


def distributed_loss(
    embeddings: jax.Array,
    ids: jax.Array | None,
    config: LossConfig,
    *,
    group: Any = None,
    draw: Callable[[tuple[int, int]], Any],
    return_grad: bool = False,
) -> Any:
    """The global loss, replicated over the axis; (loss, dL/d(local embeddings)) with return_grad."""
    del group  # torch only (dispatch rejects it with JAX arrays)
    uniforms = None
    if config.negatives == "sampled":  # the global draws, from the same seed or uniforms on every device
        views = embeddings.shape[1] if embeddings.ndim == 3 else 1
        uniforms = draw((views * embeddings.shape[0] * JaxCollectives(config.axis_name).size, config.k))
    if return_grad:
        return _value_and_grad(embeddings, ids, uniforms, config, need_grad=True)
    return _loss(embeddings, ids, uniforms, config)


# One entry for both paths: `uses_kernel` makes the same choice as `dispatch.choose_distributed_path` inside
# the jitted step, whose cache key is the configuration.
dispatch.register("distributed_fused", "jax", distributed_loss)
dispatch.register("distributed", "jax", distributed_loss)
