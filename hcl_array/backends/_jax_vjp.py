"""The tiled loss as a `jax.custom_vjp`: no (tile, N) block is stored for the backward pass.

Registered as the tiled path for JAX in the dispatch table; `hcl_array.backends` loads it on the
first call with a JAX array, so the core never imports jax.
Works under `jax.jit` and `jax.grad`. The blocks run in a `lax.scan` (one compiled block body, whatever
N / tile), plus one short block for the remainder; the forward and backward passes are jitted
themselves, since eager JAX would dispatch (and trace for autodiff) every small operation separately.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax

from hcl_array import dispatch, tiled
from hcl_array._array_api import full_precision
from hcl_array.config import LossConfig


def scan_blocks(body: Any, carry: Any, row_arrays: tuple[jax.Array, ...], tile: int) -> tuple[Any, tuple]:
    """`tiled.scan_blocks` as a `lax.scan` over the full blocks, then the short last block in Python."""
    n = row_arrays[0].shape[0]
    full = n // tile
    outputs = []
    if full:

        def step(carry: Any, first_row: jax.Array) -> tuple[Any, tuple]:
            rows = tuple(jax.lax.dynamic_slice_in_dim(a, first_row, tile) for a in row_arrays)
            return body(carry, first_row, rows)

        carry, stacked = jax.lax.scan(step, carry, jax.numpy.arange(full) * tile)
        outputs.append(tuple(out.reshape((full * tile, *out.shape[2:])) for out in stacked))
    if n % tile:
        carry, last = body(carry, full * tile, tuple(a[full * tile :] for a in row_arrays))
        outputs.append(last)
    return carry, tuple(jax.numpy.concatenate([out[i] for out in outputs]) for i in range(len(outputs[0])))


_forward = jax.jit(partial(tiled.forward, scan=scan_blocks), static_argnums=2)
_backward = jax.jit(partial(tiled.backward, scan=scan_blocks), static_argnums=4)
_value_and_grad = jax.jit(partial(tiled.value_and_grad, scan=scan_blocks), static_argnums=2)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _tiled(z: jax.Array, ids: jax.Array, config: LossConfig) -> jax.Array:
    return _forward(z, ids, config)[0]


def _tiled_forward(z: jax.Array, ids: jax.Array, config: LossConfig) -> tuple[jax.Array, Any]:
    if config.reduction != "none":  # the gradient in the same pass; the backward rule only scales it
        return _value_and_grad(z, ids, config)  # (value, residuals = dL/dz)
    value, stats = _forward(z, ids, config)
    return value, (z, ids, stats)


def _tiled_backward(config: LossConfig, residuals: Any, cotangent: jax.Array) -> tuple[jax.Array, None]:
    if config.reduction != "none":
        return residuals * cotangent, None
    z, ids, stats = residuals
    with full_precision(z):  # traced after the forward call's context has closed: full float32 products again
        return _backward(z, ids, stats, cotangent, config), None  # integer ids get no cotangent


_tiled.defvjp(_tiled_forward, _tiled_backward)


def tiled_loss(
    z: jax.Array, ids: jax.Array, config: LossConfig, *, uniforms: Any = None, return_grad: bool = False
) -> Any:
    """The tiled loss with its analytic gradient registered as the VJP; (loss, dL/dz) in one jitted pass
    with return_grad. Jitted: eager JAX would dispatch every small operation of every block."""
    del uniforms  # expected negatives only (`tiled.unsupported`)
    return _value_and_grad(z, ids, config) if return_grad else _tiled(z, ids, config)


dispatch.register("tiled", "jax", tiled_loss)
