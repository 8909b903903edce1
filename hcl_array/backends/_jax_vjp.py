"""The tiled loss as a `jax.custom_vjp`: its backward pass recomputes blocks instead of storing them.

Imported by `hcl_array.tiled` only when the input is a jax array, so the core never imports jax.
Works under `jax.jit` (the blocks are a Python loop over static shapes) and `jax.grad`. The forward and
backward passes are jitted themselves: eager JAX would dispatch (and trace for autodiff) every small
operation of every block separately, which costs seconds even for tiny batches.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax

from hcl_array import tiled


_forward = jax.jit(tiled.forward, static_argnums=2)
_backward = jax.jit(tiled.backward, static_argnums=4)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _tiled(z: jax.Array, ids: jax.Array, config: tiled.TiledConfig) -> jax.Array:
    return _forward(z, ids, config)[0]


def _tiled_forward(z: jax.Array, ids: jax.Array, config: tiled.TiledConfig) -> tuple[jax.Array, Any]:
    value, stats = _forward(z, ids, config)
    return value, (z, ids, stats)


def _tiled_backward(config: tiled.TiledConfig, residuals: Any, cotangent: jax.Array) -> tuple[jax.Array, None]:
    z, ids, stats = residuals
    return _backward(z, ids, stats, cotangent, config), None  # integer ids get no cotangent


_tiled.defvjp(_tiled_forward, _tiled_backward)


def tiled_loss(z: jax.Array, ids: jax.Array, config: tiled.TiledConfig) -> jax.Array:
    """The tiled loss with its analytic, recomputing backward pass registered as the VJP."""
    return _tiled(z, ids, config)


@partial(jax.jit, static_argnums=2)
def value_and_grad(z: jax.Array, ids: jax.Array, config: tiled.TiledConfig) -> tuple[jax.Array, jax.Array]:
    """(loss, dL/dz) from the analytic backward pass directly (the `return_grad=True` path), jitted."""
    value, stats = tiled.forward(z, ids, config)
    return value, tiled.backward(z, ids, stats, jax.numpy.ones_like(value), config)
