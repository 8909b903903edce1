"""PyTorch backend (autograd), the `nn.Module` wrappers of every loss, and the CIFAR ResNet encoders (re-exported
from `_torch_modules`).

Importing this module imports torch; `hcl_array.backends` imports it only when asked for
(`get_backend("torch")` or `from hcl_array.backends.torch import HSCLLoss`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import losses
from ._torch_modules import ModuleEncoder, resnet_encoder
from .base import BackendBase, BackendUnavailable, Params, check_dtype

try:
    import array_api_compat.torch as xp_torch
    import torch
    from torch import nn
except ImportError as error:  # the registry turns this into "pip install hcl-array[torch]"
    raise BackendUnavailable(f"torch is not importable ({error})") from error

__all__ = [
    "TorchBackend",
    "SCLLoss",
    "HSCLLoss",
    "UCLLoss",
    "HUCLLoss",
    "SupConLoss",
    "NTXentLoss",
    "DebiasedHCLLoss",
    "ModuleEncoder",
    "resnet_encoder",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TorchBackend(BackendBase):
    """PyTorch on "cpu", "cuda:<i>" or "mps"; gradients by torch.autograd."""

    name = "torch"
    xp = xp_torch

    def value_and_grad(self, fn: Callable[..., Any], params: Params, *args: Any) -> tuple[Any, Params]:
        """(fn(params, *args), grads) by autograd; params stay plain tensors (fresh leaves are made here)."""
        leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
        value = fn(leaves, *args)
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        zero_if_unused = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves.values(), grads, strict=False)]
        return value.detach(), dict(zip(leaves, zero_if_unused, strict=False))

    def stop_gradient(self, x: Any) -> Any:
        """x.detach()."""
        return x.detach()

    def generator(self, seed: int) -> torch.Generator:
        """torch.Generator seeded with seed (on the CPU)."""
        return torch.Generator().manual_seed(seed)

    def from_numpy(self, array: np.ndarray, dtype: str | None = None, device: str | None = None) -> torch.Tensor:
        """A tensor copy on `device` (default "cpu"), floats cast to dtype.

        To a CUDA device the copy goes through pinned memory and does not block: the host goes on preparing
        the next batch while the GPU works (a copy from pageable memory waits for the device first).
        """
        check_dtype(dtype)
        array = np.asarray(array)
        target = _DTYPES[dtype] if dtype is not None and np.issubdtype(array.dtype, np.floating) else None
        try:
            if device is not None and torch.device(device).type == "cuda":
                return torch.tensor(array, dtype=target).pin_memory().to(device, non_blocking=True)
            return torch.tensor(array, dtype=target, device=device or "cpu")
        except (RuntimeError, AssertionError) as error:  # unknown or unavailable device
            raise ValueError(f"torch cannot place arrays on device {device!r} ({error})") from error

    def devices(self) -> list[str]:
        """["cpu"] plus every visible "cuda:<i>" and "mps" when available."""
        found = ["cpu"]
        if torch.cuda.is_available():
            found += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            found.append("mps")
        return found

    def version(self) -> str:
        """torch.__version__."""
        return str(torch.__version__)


# ----------------------------------------------------------------------------------------------------
# nn.Module wrappers: the functional losses, with their options fixed at construction.


class _ContrastiveLossModule(nn.Module):
    """forward(embeddings, labels=None, **call_options) = loss(embeddings, labels, **options, **call_options)."""

    function: Callable[..., Any] = staticmethod(losses.contrastive_loss)

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, **call_options: Any
    ) -> torch.Tensor:
        """The loss of (N, d) embeddings with labels/ids, or of (B, V, d) views (instance ids if labels is None)."""
        return type(self).function(embeddings, labels, **{**self.options, **call_options})

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.options.items())


def _wrapper(name: str, function: Callable[..., Any]) -> type[_ContrastiveLossModule]:
    doc = f"`hcl_array.losses.{function.__name__}` as an nn.Module; keyword options as in that function.\n\n"
    namespace = {"function": staticmethod(function), "__doc__": doc + (function.__doc__ or "")}
    return type(name, (_ContrastiveLossModule,), namespace)


SCLLoss = _wrapper("SCLLoss", losses.scl)
HSCLLoss = _wrapper("HSCLLoss", losses.hscl)
UCLLoss = _wrapper("UCLLoss", losses.ucl)
HUCLLoss = _wrapper("HUCLLoss", losses.hucl)
SupConLoss = _wrapper("SupConLoss", losses.supcon)
NTXentLoss = _wrapper("NTXentLoss", losses.ntxent)
DebiasedHCLLoss = _wrapper("DebiasedHCLLoss", losses.debiased_hcl)
