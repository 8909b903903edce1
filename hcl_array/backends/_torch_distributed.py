"""Cross-device negatives on `torch.distributed`: the "distributed" path of the dispatch table for torch.

`hcl_array.distributed` does the math against a `Collectives` object; this module gives it the
collectives of a ProcessGroup (gloo on the CPU, NCCL on CUDA) and an autograd Function. The gradient
is computed in the forward pass (one reduce-scatter), and the backward pass scales it:

    sum over ranks r of cotangent_r dL_r/dz_local = world_size cotangent dL/dz_local

Each rank's loss is the same global value, and depends on every rank's rows, so autograd through it
gives each rank world_size times its share of the global gradient; DDP then averages the parameter
gradients over the ranks, which is the single-process gradient. The backward pass assumes that every
rank backpropagates the same cotangent (loss.backward(), or one loss scale), as DDP training does, and
so needs no collective: a rank that skips backward() leaves no other rank waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from hcl_array import dispatch, distributed
from hcl_array.config import LossConfig


class TorchCollectives:
    """`distributed.Collectives` over a ProcessGroup; uneven local batches are padded to the largest."""

    def __init__(self, group: Any, device: torch.device) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "group= needs torch.distributed initialised: call init_process_group first (or torchrun)"
            )
        if not isinstance(group, dist.ProcessGroup):
            raise TypeError(f"group must be a torch.distributed ProcessGroup (e.g. group.WORLD), got {group!r}")
        self.group, self.device = group, device
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)

    def gather_shapes(self, shape: list[int]) -> list[list[int]]:
        mine = torch.tensor(shape, dtype=torch.int64, device=self.device)
        every = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(every, mine, group=self.group)
        return [t.tolist() for t in every]

    def offset(self, sizes: Sequence[int]) -> int:
        return sum(sizes[: self.rank])

    def all_gather(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        mine = _padded(x, max(sizes))
        every = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(every, mine, group=self.group)
        return torch.cat([t[:n] for t, n in zip(every, sizes, strict=True)])

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        total = x.detach().clone()
        dist.all_reduce(total, group=self.group)
        return total

    def sum_scatter(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        chunks = [_padded(chunk, max(sizes)) for chunk in torch.split(x, list(sizes))]
        mine = torch.empty_like(chunks[0])
        dist.reduce_scatter(mine, chunks, group=self.group)
        return mine[: sizes[self.rank]]


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x with zero rows appended up to `rows`, contiguous (collectives need equal, dense buffers)."""
    if x.shape[0] == rows:
        return x.detach().contiguous()
    padded = torch.zeros((rows, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x.detach()
    return padded


class DistributedLoss(torch.autograd.Function):
    """The global loss in the forward pass, with its gradient when needed; backward scales that gradient."""

    @staticmethod
    def forward(ctx: Any, embeddings: torch.Tensor, ids: Any, config: LossConfig, comm: Any, draw: Any) -> Any:
        value, grad = distributed.value_and_grad(
            embeddings.detach(), ids, config, comm, draw=draw, need_grad=ctx.needs_input_grad[0]
        )
        ctx.comm = comm
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, cotangent: torch.Tensor) -> tuple:
        (grad,) = ctx.saved_tensors
        # every rank's copy of the loss depends on this rank's rows
        return grad * (cotangent * ctx.comm.size), None, None, None, None


def distributed_loss(
    embeddings: torch.Tensor,
    ids: torch.Tensor | None,
    config: LossConfig,
    *,
    group: Any,
    draw: Callable[[tuple[int, int]], Any],
    return_grad: bool = False,
) -> Any:
    """The global loss on every rank; (loss, dL/d(local embeddings)) with return_grad (no world-size factor)."""
    comm = TorchCollectives(group, embeddings.device)
    if return_grad:
        return distributed.value_and_grad(embeddings.detach(), ids, config, comm, draw=draw)
    return DistributedLoss.apply(embeddings, ids, config, comm, draw)


dispatch.register("distributed", "torch", distributed_loss)
