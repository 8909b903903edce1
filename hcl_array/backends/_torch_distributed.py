"""Cross-device negatives on `torch.distributed`: the "distributed_fused" and "distributed" paths for torch,
and for NumPy and CuPy arrays over a torch ProcessGroup.

`hcl_array.distributed` does the math against a `Collectives` object; this module gives it the
collectives of a ProcessGroup (gloo on the CPU, NCCL on CUDA), the fused kernel's operations (`TorchOps`,
`fused.NumpyOps`) and autograd Functions. The gradient of a scalar loss is computed in the forward pass
(one reduce-scatter), and the backward pass scales it:

    sum over ranks r of cotangent_r dL_r/dz_local = world_size cotangent dL/dz_local

Each rank's loss is the same global value, and depends on every rank's rows, so autograd through it
gives each rank world_size times its share of the global gradient; DDP then averages the parameter
gradients over the ranks, which is the single-process gradient. The backward pass assumes that every
rank backpropagates the same cotangent (loss.backward(), or one loss scale), as DDP training does, and
so needs no collective: a rank that skips backward() leaves no other rank waiting.

Per-anchor values (reduction="none") differ from rank to rank: their backward pass is
d(sum_r cotangent_r . values_r)/dz_local, one reduce-scatter that every rank joins (`PerAnchorLoss`).

NumPy and CuPy arrays (no autograd: `return_grad=True` gives the gradient) go over the same group as
zero-copy tensor views (`torch.from_numpy`, DLPack), gloo for NumPy, NCCL for CuPy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from hcl_array import dispatch, distributed, fused
from hcl_array.backends._torch_fused import TorchOps
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


class ArrayCollectives:
    """`TorchCollectives` for NumPy or CuPy arrays: each collective runs on a zero-copy tensor view of its array."""

    def __init__(self, group: Any, like: Any) -> None:
        self.cupy = type(like).__module__.startswith("cupy")
        device = torch.device("cuda", like.device.id) if self.cupy else torch.device("cpu")
        self.torch = TorchCollectives(group, device)
        self.size = self.torch.size

    def _tensor(self, x: Any) -> torch.Tensor:
        return torch.from_dlpack(x) if self.cupy else torch.from_numpy(np.ascontiguousarray(x))

    def _array(self, x: torch.Tensor) -> Any:
        return _cupy().from_dlpack(x) if self.cupy else x.numpy()

    def gather_shapes(self, shape: list[int]) -> list[list[int]]:
        return self.torch.gather_shapes(shape)

    def offset(self, sizes: Sequence[int]) -> int:
        return self.torch.offset(sizes)

    def all_gather(self, x: Any, sizes: Sequence[int]) -> Any:
        return self._array(self.torch.all_gather(self._tensor(x), sizes))

    def all_sum(self, x: Any) -> Any:
        return self._array(self.torch.all_sum(self._tensor(x)))

    def sum_scatter(self, x: Any, sizes: Sequence[int]) -> Any:
        return self._array(self.torch.sum_scatter(self._tensor(x), sizes))


def _cupy() -> Any:
    import cupy  # only for CuPy arrays, which the caller already has

    return cupy


class DistributedLoss(torch.autograd.Function):
    """The global loss in the forward pass, with its gradient when needed; backward scales that gradient."""

    @staticmethod
    def forward(
        ctx: Any, embeddings: torch.Tensor, ids: Any, config: LossConfig, comm: Any, draw: Any, ops: Any
    ) -> Any:
        value, grad = distributed.value_and_grad(
            embeddings.detach(), ids, config, comm, draw=draw, need_grad=ctx.needs_input_grad[0], ops=ops
        )
        ctx.comm = comm
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, cotangent: torch.Tensor) -> tuple:
        (grad,) = ctx.saved_tensors
        # every rank's copy of the loss depends on this rank's rows
        return grad * (cotangent * ctx.comm.size), None, None, None, None, None


class PerAnchorLoss(torch.autograd.Function):
    """reduction="none": this rank's per-anchor terms of the global loss; backward is a collective every rank joins."""

    @staticmethod
    def forward(ctx: Any, embeddings: torch.Tensor, ids: Any, config: LossConfig, comm: Any, draw: Any) -> Any:
        local = embeddings.detach()
        values, residuals = distributed.per_anchor_values(
            local, ids, config, comm, draw=draw, need_grad=ctx.needs_input_grad[0]
        )
        ctx.residuals, ctx.local, ctx.config, ctx.comm = residuals, local, config, comm
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, cotangent: torch.Tensor) -> tuple:
        grad = distributed.per_anchor_grad(ctx.residuals, cotangent, ctx.local, ctx.config, ctx.comm)
        return grad, None, None, None, None


def _torch_entry(ops: Any) -> Callable[..., Any]:
    """The entry for torch tensors: the fused kernel on each rank's anchors with `ops`, the row blocks with None."""

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
        if config.reduction == "none":
            return PerAnchorLoss.apply(embeddings, ids, config, comm, draw)
        if return_grad:
            return distributed.value_and_grad(embeddings.detach(), ids, config, comm, draw=draw, ops=ops)
        return DistributedLoss.apply(embeddings, ids, config, comm, draw, ops)

    return distributed_loss


def _array_entry(kernel: bool) -> Callable[..., Any]:
    """The entry for NumPy and CuPy arrays over a torch ProcessGroup: the kernel (`fused.NumpyOps`) or row blocks."""

    def distributed_loss(
        embeddings: Any,
        ids: Any,
        config: LossConfig,
        *,
        group: Any,
        draw: Callable[[tuple[int, int]], Any],
        return_grad: bool = False,
    ) -> Any:
        """The global loss on every rank; (loss, dL/d(local embeddings)) with return_grad."""
        comm = ArrayCollectives(group, embeddings)
        module = _cupy() if comm.cupy else np
        ops = fused.NumpyOps(module) if kernel else None
        # a NaN or Inf is refused before the pass; with check_finite=False it stays silent, as in one process
        with np.errstate(invalid="ignore", over="ignore") if module is np else embeddings.device:
            if config.reduction == "none":
                return distributed.per_anchor_values(embeddings, ids, config, comm, draw=draw, need_grad=False)[0]
            value, grad = distributed.value_and_grad(
                embeddings, ids, config, comm, draw=draw, need_grad=return_grad, ops=ops
            )
        return (value, grad) if return_grad else value

    return distributed_loss


dispatch.register("distributed_fused", "torch", _torch_entry(TorchOps))
dispatch.register("distributed", "torch", _torch_entry(None))
for _family in ("numpy", "cupy"):
    dispatch.register("distributed_fused", _family, _array_entry(kernel=True))
    dispatch.register("distributed", _family, _array_entry(kernel=False))
