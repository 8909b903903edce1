"""`TrainConfig`: every choice of an `hcl train` run, validated with one-line errors before any data loads.

The losses, encoders, data sets and precisions a run may name live here too; `hcl_array.training` runs a
config (and re-exports these names).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import data as datasets
from . import encoders, image_data, losses, optim
from .image_pipeline import AUGMENT_CHOICES

__all__ = [
    "LOSSES",
    "HARDENED",
    "INSTANCE_ID_LOSSES",
    "TORCH_ENCODERS",
    "DATASETS",
    "PRECISIONS",
    "DEFAULT_BETA",
    "DEFAULT_SAMPLED_K",
    "TrainConfig",
]

LOSSES: dict[str, Callable[..., Any]] = {
    "scl": losses.scl,
    "hscl": losses.hscl,
    "ucl": losses.ucl,
    "hucl": losses.hucl,
    "supcon": losses.supcon,
    "ntxent": losses.ntxent,
    "debiased_hcl": losses.debiased_hcl,
}
HARDENED = ("hscl", "hucl", "debiased_hcl")
INSTANCE_ID_LOSSES = ("ucl", "hucl", "ntxent", "debiased_hcl")  # with --views >= 2 positives are the other views
#: torch.nn encoders (--backend torch): the released CIFAR ResNets, and their plain-linear-head variants.
TORCH_ENCODERS = ("resnet18", "resnet50", "resnet18-linear", "resnet50-linear")
DATASETS = (*datasets.DATASET_NAMES, *image_data.IMAGE_DATASETS)
PRECISIONS = ("fp32", "bf16")
DEFAULT_BETA = 5.0
DEFAULT_SAMPLED_K = 256


@dataclass(frozen=True)
class TrainConfig:
    """Every choice of a run (all JSON-serializable; saved in the checkpoint as `config`)."""

    data: str = "synthetic"
    data_dir: str | None = None
    data_path: str | None = None
    classes: int = 10
    per_class: int = 100
    input_dim: int = 32
    separation: float = 3.0
    noise: float = 1.0
    encoder: str = "mlp"
    hidden: int = encoders.DEFAULT_HIDDEN
    loss: str = "hscl"
    beta: float | None = None  # None: DEFAULT_BETA for the hardened losses
    temperature: float | None = None  # None: the loss's own default (1 for the paper's losses)
    normalize: str | None = None  # None: the loss's own default ("ball" for the paper's losses)
    negatives: str = "expected"
    k: int | None = None
    dim: int | None = None  # None: num_classes - 1
    batch_size: int = 128
    epochs: int = 100
    lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    dtype: str = "float32"
    device: str | None = None
    backend: str = "numpy"
    views: int = 1
    paper: bool = False
    augment: str = "auto"  # image_pipeline.resolve_augment: the data set's released run for one view
    image_size: int | None = None  # image data: resize to S x S (required by --data folder)
    precision: str = "fp32"  # "bf16": the ResNet under torch.autocast(bfloat16), the loss in float32
    weight_decay: float = 0.0  # L2 added to the gradient, as torch.optim.Adam(weight_decay=...)

    def validate(self) -> None:
        """ValueError with a one-line message for any value that cannot work (checked before any data loads)."""
        _check_choice("loss", self.loss, tuple(LOSSES))
        _check_choice("encoder", self.encoder, encoders.ENCODERS + TORCH_ENCODERS)
        _check_choice("negatives", self.negatives, ("expected", "sampled"))
        _check_choice("optimizer", self.optimizer, tuple(optim.OPTIMIZERS))
        _check_choice("dtype", self.dtype, ("float32", "float64"))
        _check_choice("data", self.data, DATASETS)
        _check_choice("augment", self.augment, AUGMENT_CHOICES)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.normalize is not None:
            _check_choice("normalize", self.normalize, ("ball", "sphere", "none"))
        if self.beta is not None:
            if self.loss not in HARDENED:
                raise ValueError(f"beta applies to the hardened losses ({', '.join(HARDENED)}), not {self.loss!r}")
            if not (math.isfinite(self.beta) and self.beta >= 0):
                raise ValueError(f"beta must be a finite number >= 0, got {self.beta}")
        for name in ("classes", "per_class", "input_dim", "hidden", "batch_size", "epochs", "views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("temperature", "lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 (a ResNet halves it three times), got {self.image_size}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.encoder == "free" and self.views > 1:
            raise ValueError("--views >= 2 needs an encoder of the input (linear, mlp, resnet): free rows ignore x")
        if self.encoder in TORCH_ENCODERS and self.backend != "torch":
            raise ValueError(f"encoder {self.encoder!r} exists only with --backend torch")
        if self.precision == "bf16" and (self.encoder not in TORCH_ENCODERS or self.dtype != "float32"):
            raise ValueError("--precision bf16 runs a ResNet (--backend torch) in bfloat16: needs --dtype float32")

    def loss_options(self) -> dict[str, Any]:
        """Keyword options of the loss function: hardness, temperature, normalization, negatives, preset."""
        options: dict[str, Any] = dict(losses.PAPER_PRESET) if self.paper else {}
        if self.loss in HARDENED:
            options["beta"] = DEFAULT_BETA if self.beta is None else self.beta
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.normalize is not None:
            options["normalize"] = self.normalize
        if not self.paper or self.negatives == "sampled":
            options["negatives"] = self.negatives
        if self.k is not None:
            options["k"] = self.k
        if options.get("negatives") == "sampled":
            options.setdefault("k", DEFAULT_SAMPLED_K)
        return options

    def normalization(self) -> str:
        """The g the loss applies (saved embeddings are g(z), the representation the loss sees)."""
        if self.normalize is not None:
            return self.normalize
        default = "sphere" if self.loss in ("supcon", "ntxent", "debiased_hcl") else "ball"
        return "ball" if self.paper else default


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
