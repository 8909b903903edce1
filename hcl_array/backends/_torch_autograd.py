"""The tiled loss as a `torch.autograd.Function`: its backward pass recomputes blocks instead of storing them.

Imported by `hcl_array.tiled` only when the input is a torch tensor, so the core never imports torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from hcl_array import tiled


class TiledLoss(torch.autograd.Function):
    """Forward: `tiled.forward` (keeps only (N,) statistics). Backward: `tiled.backward`."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, ids: torch.Tensor, config: tiled.TiledConfig) -> torch.Tensor:
        value, stats = tiled.forward(z, ids, config)
        ctx.config = config
        ctx.save_for_backward(z, ids, *stats)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_value: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        z, ids, *stats = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return tiled.backward(z, ids, tuple(stats), grad_value, ctx.config), None, None


def tiled_loss(z: torch.Tensor, ids: torch.Tensor, config: tiled.TiledConfig) -> torch.Tensor:
    """The tiled loss with its analytic, recomputing backward pass registered for autograd."""
    return TiledLoss.apply(z, ids, config)
