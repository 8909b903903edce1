"""torch.nn encoders for `hcl train`: the released code's CIFAR ResNets, run as pure functions of their parameters.

The released code (github.com/rjiang03/HCL, main/SCL/model.py and main/UCL/model.py) trains

    f: torchvision's resnet50 children, conv1 = Conv2d(3, 64, 3, stride 1, padding 1, no bias), no max-pool, no fc
    g: Linear(2048, 512, no bias) -> BatchNorm1d(512) -> ReLU -> Linear(512, d)
    out / max(1, ||out||)

`resnet_encoder` builds f and g under the same attribute names and in the same order of random draws, so
with the same torch seed it holds the released `Model`'s initial weights and its state_dict keys. The
unit-ball clip is the loss's `normalize="ball"`, not part of the module.

`ModuleEncoder` runs such a module with `torch.func.functional_call`: the trainable parameters are the
training loop's (placed and updated by the backend), the BatchNorm running statistics live here on the
same device, are updated in place by the training forward, saved in the checkpoint and restored on
resume. Evaluation runs the module in eval mode (the running statistics), as the released code does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .base import BackendUnavailable

__all__ = ["RESNET_ENCODERS", "HEAD_WIDTH", "CifarResNet", "ModuleEncoder", "resnet_encoder", "torchvision_models"]

#: Encoder names: the released architecture (projection head), and the same trunk with a plain linear head.
RESNET_ENCODERS = ("resnet18", "resnet50", "resnet18-linear", "resnet50-linear")
#: Width of the released projection head's hidden layer.
HEAD_WIDTH = 512
_TRUNK_FEATURES = {"resnet18": 512, "resnet50": 2048}


class CifarResNet(nn.Module):
    """f (the ResNet trunk with the CIFAR stem) then g (the head); forward gives g(flatten(f(x))), unclipped."""

    def __init__(self, trunk: nn.Sequential, head: nn.Module) -> None:
        super().__init__()
        self.f = trunk
        self.g = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, d) head outputs (any H, W >= 8: the trunk ends in adaptive pooling)."""
        return self.g(torch.flatten(self.f(x), start_dim=1))


def torchvision_models(kind: str = "resnet50") -> Any:
    """torchvision.models, or BackendUnavailable naming the fix (torchvision missing, or built for another torch)."""
    try:
        import torchvision.models
    except (ImportError, RuntimeError) as error:  # RuntimeError: "operator torchvision::nms does not exist"
        raise BackendUnavailable(
            f"--encoder {kind} needs torchvision, which is not installed or does not load here ({error}): "
            "pip install hcl-array[vision] (a torchvision built for the installed torch)"
        ) from error
    return torchvision.models


def resnet_encoder(kind: str, output_dim: int, seed: int) -> nn.Module:
    """The released CIFAR ResNet with d outputs, initialized from `seed` (torch's global generator is untouched).

    kind "resnet18" / "resnet50": trunk f, then the released head g = Linear(F, 512, no bias), BatchNorm1d(512),
    ReLU, Linear(512, d), with F = 512 / 2048 trunk features (24,600,739 parameters for resnet50 at d = 99).
    kind "resnet18-linear" / "resnet50-linear": the same trunk with a plain Linear(F, d) head.
    """
    if kind not in RESNET_ENCODERS:
        raise ValueError(f"unknown ResNet {kind!r}; choose one of {', '.join(RESNET_ENCODERS)}")
    if output_dim < 1:
        raise ValueError(f"output_dim must be >= 1, got {output_dim}")
    models = torchvision_models(kind)
    trunk_name = kind.removesuffix("-linear")
    features = _TRUNK_FEATURES[trunk_name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # The released order of draws: the whole torchvision ResNet, then the new conv1, then the head.
        children = []
        for name, module in getattr(models, trunk_name)().named_children():
            if name == "conv1":
                module = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            if not isinstance(module, nn.Linear | nn.MaxPool2d):
                children.append(module)
        trunk = nn.Sequential(*children)
        if kind.endswith("-linear"):
            head: nn.Module = nn.Linear(features, output_dim)
        else:
            head = nn.Sequential(
                nn.Linear(features, HEAD_WIDTH, bias=False),
                nn.BatchNorm1d(HEAD_WIDTH),
                nn.ReLU(inplace=True),
                nn.Linear(HEAD_WIDTH, output_dim, bias=True),
            )
        return CifarResNet(trunk, head)


class ModuleEncoder:
    """An nn.Module as f(params, x, train): parameters passed in, BatchNorm running statistics kept here.

    precision "bf16" runs the module under torch.autocast(bfloat16) and returns float32 (the loss stays in
    float32); channels_last stores 4-D weights and the input in NHWC, the layout cuDNN and oneDNN convolve fastest.
    """

    def __init__(
        self, module: nn.Module, *, dtype: str, device: str | None, precision: str = "fp32", channels_last: bool = True
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={precision!r} is not one of fp32, bf16")
        self.module = module
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        self.device = torch.device(device or "cpu")
        self.precision = precision
        self.channels_last = channels_last
        self.buffers: dict[str, torch.Tensor] = {}
        self.load_buffers({name: value.numpy() for name, value in module.named_buffers()})

    def initial_params(self) -> dict[str, np.ndarray]:
        """The module's initial trainable parameters, float64 NumPy (the training loop places them)."""
        return {name: value.detach().numpy().astype(np.float64) for name, value in self.module.named_parameters()}

    def place(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Parameters in the layout the forward wants (4-D convolution weights channels_last when asked)."""
        if not self.channels_last:
            return dict(params)
        return {name: _channels_last(value) for name, value in params.items()}

    def load_buffers(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Running statistics from host arrays (a checkpoint's), placed on this encoder's device and dtype."""
        expected = {name for name, _ in self.module.named_buffers()}
        if set(arrays) != expected:
            missing, unknown = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
            raise ValueError(f"module buffers do not match: missing {missing[:3]}, unknown {unknown[:3]}")
        self.buffers = {}
        for name, array in arrays.items():
            array = np.asarray(array)
            dtype = self.dtype if np.issubdtype(array.dtype, np.floating) else None
            self.buffers[name] = torch.tensor(array, dtype=dtype, device=self.device)

    def buffer_arrays(self) -> dict[str, np.ndarray]:
        """The running statistics as host arrays (for the checkpoint)."""
        return {name: value.detach().cpu().numpy() for name, value in self.buffers.items()}

    def __call__(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, train: bool = True) -> torch.Tensor:
        """(B, d) outputs; train=True uses batch statistics and updates the running ones, False uses them."""
        self.module.train(train)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            return functional_call(self.module, {**params, **self.buffers}, (x,))
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            out = functional_call(self.module, {**params, **self.buffers}, (x,))
        return out.float()


def _channels_last(value: torch.Tensor) -> torch.Tensor:
    return value.contiguous(memory_format=torch.channels_last) if value.ndim == 4 else value
