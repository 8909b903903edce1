"""The tiled loss as a `torch.autograd.Function`: autograd never stores a (tile, N) block.

Registered as the tiled path for torch in the dispatch table; `hcl_array.backends` loads it on the
first call with a torch tensor, so the core never imports torch.
Serves the configurations the fused kernel (`_torch_fused`) does not cover: hardening by threshold,
top-k or a callable, the debiased form, and per-anchor values (reduction="none").
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from hcl_array import dispatch, tiled
from hcl_array._array_api import full_precision
from hcl_array.config import LossConfig


def saved_gradient_times(ctx: Any, cotangent: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
    """The backward pass of a scalar loss whose forward pass saved dL/dz: that gradient times the cotangent."""
    if not ctx.needs_input_grad[0]:
        return None, None, None
    (grad,) = ctx.saved_tensors
    return grad * cotangent, None, None


class TiledLoss(torch.autograd.Function):
    """Scalar losses: `tiled.value_and_grad` in the forward pass (one pass over the blocks), the backward
    pass scales that gradient. Per-anchor values: `tiled.forward` keeps (N,) statistics and the backward
    pass (`tiled.backward`) recomputes the blocks, since its gradient depends on the cotangent."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, ids: torch.Tensor, config: LossConfig) -> torch.Tensor:
        ctx.config = config
        if ctx.needs_input_grad[0] and config.reduction != "none":
            value, grad = tiled.value_and_grad(z, ids, config)
            ctx.save_for_backward(grad)
            return value
        value, stats = tiled.forward(z, ids, config)
        ctx.save_for_backward(z, ids, *stats)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, cotangent: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if ctx.config.reduction != "none" or not ctx.needs_input_grad[0]:
            return saved_gradient_times(ctx, cotangent)
        z, ids, *stats = ctx.saved_tensors
        with full_precision(z):  # a backward pass called inside autocast recomputes the blocks in float32 too
            return tiled.backward(z, ids, tuple(stats), cotangent, ctx.config), None, None


def tiled_loss(
    z: torch.Tensor, ids: torch.Tensor, config: LossConfig, *, uniforms: Any = None, return_grad: bool = False
) -> Any:
    """The tiled loss with its analytic gradient registered for autograd; (loss, dL/dz) with return_grad."""
    del uniforms  # expected negatives only (`tiled.unsupported`)
    if return_grad:
        return tiled.value_and_grad(z, ids, config)
    return TiledLoss.apply(z, ids, config)


dispatch.register("tiled", "torch", tiled_loss)
