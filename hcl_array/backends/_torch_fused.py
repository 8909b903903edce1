"""The fused kernel (`hcl_array.fused`) on torch: its operations, and an autograd Function around it.

Registered as the fused path for torch in the dispatch table; `hcl_array.backends` loads it on the
first call with a torch tensor, so the core never imports torch.
The forward pass computes the value and, when z needs a gradient, dL/dz in the same pass over the
blocks; the backward pass scales that (N, d) gradient by the cotangent. Nothing of size (N, N)
outlives the forward pass. Differentiable once (no double backward): pass kernel="array_api" to
differentiate the array-API code instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from hcl_array import dispatch, fused, inverse_cdf
from hcl_array.backends._torch_autograd import saved_gradient_times
from hcl_array.config import LossConfig

__all__ = ["TorchOps", "FusedLoss", "fused_loss"]


class TorchOps:
    """The kernel's framework-specific operations, in place where torch allows it."""

    module = torch

    @staticmethod
    def empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return like.new_empty(shape)

    @staticmethod
    def zeros(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(shape)

    @staticmethod
    def on_cpu(like: torch.Tensor) -> bool:
        return like.device.type == "cpu"

    @staticmethod
    def row_norms(x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(x, dim=1, keepdim=True)

    maximum = staticmethod(torch.clamp_min)

    @staticmethod
    def divide_into(x: torch.Tensor, divisor: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.div(x, divisor, out=out)

    @staticmethod
    def gram_operands(u: torch.Tensor, factor: float) -> tuple[torch.Tensor, float]:
        return u, factor  # the factor rides on the product's alpha

    @staticmethod
    def gram_into(rows: torch.Tensor, columns: torch.Tensor, alpha: float, out: torch.Tensor) -> torch.Tensor:
        return out.addmm_(rows, columns.T, beta=0.0, alpha=alpha)  # beta = 0: out's old contents are never read

    @staticmethod
    def matmul_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.mm(a, b, out=out)

    @staticmethod
    def add_matmul_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        out.addmm_(a, b)

    @staticmethod
    def row_max(x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=1, keepdim=True)

    @staticmethod
    def exp_shifted_(x: torch.Tensor, peak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x <- exp(x - shift) row by row, in place, for finite row maxima `peak`; returns (log-sum-exp, row sums)."""
        return (TorchOps.softmax_in_place if x.device.type == "cpu" else TorchOps.exp_in_place)(x, peak)

    @staticmethod
    def exp_in_place(x: torch.Tensor, peak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """shift = the row max."""
        sums = x.sub_(peak).exp_().sum(dim=1, keepdim=True)
        return peak + torch.log(sums), sums

    @staticmethod
    def softmax_in_place(x: torch.Tensor, peak: torch.Tensor) -> tuple[torch.Tensor, None]:
        """shift = the log-sum-exp, so x becomes softmax(x) and the sums are 1 (None): on the CPU torch's softmax
        kernel exponentiates about twice as fast as exp_ (measured: 90 vs 165 us per 512 x 512 pass)."""
        torch.softmax(x, dim=1, out=x)  # in place: the CPU kernel reads each element before writing it
        return peak - torch.log(x.amax(dim=1, keepdim=True)), None  # softmax at the max is exp(max - LSE)

    @staticmethod
    def exp_rows_(x: torch.Tensor) -> None:
        """x <- exp(x - shift) row by row, in place, up to a factor per row (for a CDF): the softmax kernel on the
        CPU (no log-sum-exp needed), else the row max."""
        if x.device.type == "cpu":
            torch.softmax(x, dim=1, out=x)
        else:
            x.sub_(x.amax(dim=1, keepdim=True)).exp_()

    @staticmethod
    def scale_into(x: torch.Tensor, factor: float, out: torch.Tensor) -> torch.Tensor:
        return torch.mul(x, factor, out=out)

    @staticmethod
    def fill_diagonal_(x: torch.Tensor, offset: int, value: float) -> None:
        x.diagonal(offset).fill_(value)

    @staticmethod
    def add_transpose_into(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # copy_ of a transposed matrix takes torch's cache-blocked transpose, which add(x, x.T) does not:
        # measured on the CPU at N = 512, about 0.08 ms less per call
        return out.copy_(x.T).add_(x)

    @staticmethod
    def pull_back(
        grad_u: torch.Tensor, u: torch.Tensor, keep_radial: torch.Tensor, divisor: torch.Tensor
    ) -> torch.Tensor:
        out = torch.mul(u, grad_u)  # the result's own fresh memory holds the products for the row dots first
        radial = out.sum(dim=1, keepdim=True).mul_(keep_radial)
        return torch.addcmul(grad_u, u, radial, value=-1.0, out=out).div_(divisor)

    @staticmethod
    def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x.index_select(0, index)

    @staticmethod
    def fill_at_(x: torch.Tensor, index: torch.Tensor, value: float) -> None:
        x.index_fill_(0, index, value)

    @staticmethod
    def subtract_at_(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
        x.index_add_(0, index, values, alpha=-1)

    @staticmethod
    def sum_by_row(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
        return values.new_zeros(num_rows).index_add_(0, rows, values)

    log = staticmethod(torch.log)
    softplus = staticmethod(torch.nn.functional.softplus)
    sigmoid = staticmethod(torch.sigmoid)

    @staticmethod
    def astype(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)

    @staticmethod
    def same_id_groups(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sorted_ids, order = torch.sort(ids, stable=True)
        return (
            order,
            torch.searchsorted(sorted_ids, ids, side="left"),
            torch.searchsorted(sorted_ids, ids, side="right"),
        )

    @staticmethod
    def repeat_rows(sizes: torch.Tensor, total: int) -> torch.Tensor:
        return torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes, output_size=total)

    @staticmethod
    def arange(start: int, stop: int, like: torch.Tensor) -> torch.Tensor:
        return torch.arange(start, stop, device=like.device)

    @staticmethod
    def cumsum(x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, 0)

    @staticmethod
    def host_ints(*arrays: torch.Tensor) -> list[int]:
        """The integers of several tensors, flattened and concatenated, in one read by the host."""
        return torch.cat([a.reshape(-1) for a in arrays]).tolist()

    @staticmethod
    def fill_(x: torch.Tensor, value: float) -> None:
        x.fill_(value)

    @staticmethod
    def cumsum_rows_(x: torch.Tensor) -> torch.Tensor:
        return x.cumsum_(1)

    @staticmethod
    def add_at_(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
        x.index_add_(0, index, values)  # repeated indices accumulate (a negative drawn twice)

    @staticmethod
    def draw_positions(cumulative: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Position i N + n_t in the flattened block of each draw's column n_t: the first n with
        cumulative[i, n] > u_t * total (inverse CDF), row by row.

        On the CPU, `inverse_cdf.draw_columns` on the same memory (a guide table: torch.searchsorted's binary
        search per draw costs about 80 ns there; each row's draws come back in ascending order, which the
        kernel does not depend on). On a GPU, torch.searchsorted: u <= 1 - eps/2 (the largest number below
        1 in the dtype) makes u * total < total after rounding, so the draw never passes the last column
        with weight; float64 uniforms cast to float32 may round up to 1, hence the clamp there. A NaN row
        (bad input, reported by the value) stays in the row.
        """
        if cumulative.device.type == "cpu":
            return torch.from_numpy(inverse_cdf.draw_columns(cumulative.numpy(), uniforms.numpy(), flat=True))
        rows, n = cumulative.shape
        total = cumulative[:, -1:]
        below_one = 1.0 - torch.finfo(cumulative.dtype).eps / 2
        if uniforms.dtype != cumulative.dtype:
            uniforms = uniforms.clamp_max(below_one).to(cumulative.dtype)
        columns = torch.searchsorted(cumulative, uniforms * total, right=True).clamp_max_(n - 1)
        return columns.add_(torch.arange(0, rows * n, n, device=columns.device)[:, None])


class FusedLoss(torch.autograd.Function):
    """Forward: the value, and dL/dz when z needs a gradient. Backward: that gradient times the cotangent."""

    @staticmethod
    def forward(
        ctx: Any, z: torch.Tensor, ids: torch.Tensor, config: LossConfig, uniforms: torch.Tensor | None
    ) -> torch.Tensor:
        want_grad = ctx.needs_input_grad[0]
        value, grad = fused.value_and_grad(z, ids, config, TorchOps, want_grad=want_grad, uniforms=uniforms)
        if grad is not None:
            ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, cotangent: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        return (*saved_gradient_times(ctx, cotangent), None)


def fused_loss(
    z: torch.Tensor,
    ids: torch.Tensor,
    config: LossConfig,
    *,
    uniforms: torch.Tensor | None = None,
    return_grad: bool = False,
) -> Any:
    """The loss with autograd through `FusedLoss`, or (loss, gradient) when return_grad."""
    if return_grad:
        with torch.no_grad():
            return fused.value_and_grad(z, ids, config, TorchOps, uniforms=uniforms)
    return FusedLoss.apply(z, ids, config, uniforms)


class GradientGuard(torch.autograd.Function):
    """Identity forward; the backward pass raises error() when the gradient holds NaN or Inf (an overflow)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, error: Any) -> torch.Tensor:
        ctx.error = error
        return z.view_as(z)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if not bool(torch.isfinite(grad).all()):
            raise ctx.error()
        return grad, None


def guard_gradient(z: torch.Tensor, error: Any) -> torch.Tensor:
    """z behind `GradientGuard` when autograd will differentiate the loss with respect to it."""
    return GradientGuard.apply(z, error) if z.requires_grad and torch.is_grad_enabled() else z


dispatch.register("fused", "torch", fused_loss)
dispatch.register_gradient_guard("torch", guard_gradient)
