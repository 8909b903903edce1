"""The presets of `hcl reproduce`: which data, which encoder, which losses, and the paper's reference numbers.

A preset is a shared `TrainConfig` (everything but the loss, beta and seed), options that differ by loss
(`per_loss`), and a list of settings (loss, beta). Every run of the grid is
`TrainConfig(**preset.base, **preset.per_loss[loss], loss=..., beta=..., seed=k)`, trained by
`hcl_array.training.train` exactly as `hcl train` would train it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..training import TrainConfig

__all__ = [
    "PAPER_REFERENCE",
    "PRESETS",
    "Preset",
    "Setting",
    "check_requirements",
    "get_preset",
    "preset_fields",
    "select_settings",
]


@dataclass(frozen=True)
class Setting:
    """One loss of the grid: `name` labels files and rows (e.g. 'hscl-beta5'), beta None for SCL and UCL."""

    loss: str
    beta: float | None = None

    @property
    def name(self) -> str:
        """File-safe label: the loss, then '-beta<b>' for the hardened losses."""
        return self.loss if self.beta is None else f"{self.loss}-beta{self.beta:g}"

    @property
    def label(self) -> str:
        """Label for tables and figures, e.g. 'HSCL beta = 5'."""
        return self.loss.upper() if self.beta is None else f"{self.loss.upper()} beta = {self.beta:g}"


@dataclass(frozen=True)
class Preset:
    """A grid of settings on one training setup, and the hardness ranges the claims talk about.

    base: TrainConfig fields shared by every run (loss, beta and seed are set per run).
    moderate_betas: the betas of the "moderate range" (hard negatives without breaking HUCL).
    large_beta: the beta at which the paper reports HUCL breaking (None: the claim is not checked).
    default_jobs: worker processes when --jobs is not given (None: the CPU count).
    per_loss: TrainConfig fields of the runs of one loss (e.g. the released UCL's Adam weight decay).
    """

    name: str
    description: str
    base: dict[str, Any]
    settings: tuple[Setting, ...]
    moderate_betas: tuple[float, ...]
    large_beta: float | None
    needs_gpu: bool = False
    default_jobs: int | None = None
    per_loss: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def config(
        self, setting: Setting, seed: int, *, epochs: int | None = None, data_dir: str | None = None
    ) -> TrainConfig:
        """The TrainConfig of one run (epochs and data_dir override the preset's when given)."""
        fields = dict(self.base, **self.per_loss.get(setting.loss, {}), loss=setting.loss, beta=setting.beta, seed=seed)
        if epochs is not None:
            fields["epochs"] = epochs
        if data_dir is not None:
            fields["data_dir"] = data_dir
        return TrainConfig(**fields)

    def setting(self, loss: str, beta: float | None = None) -> Setting | None:
        """The preset's setting with this loss and beta, or None when the grid does not have it."""
        wanted = Setting(loss, beta)
        return wanted if wanted in self.settings else None


_PAPER_GRID = (  # the paper's table: the settings PAPER_REFERENCE has numbers for, less HSCL beta = 30
    Setting("scl"),
    Setting("hscl", 2.0),
    Setting("hscl", 5.0),
    Setting("hscl", 10.0),
    Setting("ucl"),
    Setting("hucl", 5.0),
    Setting("hucl", 30.0),
)

#: The betas of the released runs, of HSCL and of HUCL alike (the notebooks' `hard2.0` ... `hard30.0` files).
_RELEASED_BETAS = (2.0, 5.0, 10.0, 30.0)

PRESETS: dict[str, Preset] = {
    "digits": Preset(
        name="digits",
        description=(
            "Scikit-learn's bundled 8x8 digits (real data, 10 classes, 1437 train / 360 test), MLP encoder to "
            "d = 9, unit ball, tau 1, exact expectation over negatives, Adam 1e-3, batch 128: the defaults of "
            "`hcl train --data digits`"
        ),
        base={"data": "digits", "encoder": "mlp", "batch_size": 128, "lr": 1e-3, "epochs": 100, "backend": "numpy"},
        settings=_PAPER_GRID,
        moderate_betas=(2.0, 5.0, 10.0),
        large_beta=30.0,
    ),
    "synthetic": Preset(
        name="synthetic",
        description=(
            "The latent-class model: 20 Gaussian classes in 32 dimensions (RMS centre distance 6 noise "
            "standard deviations), 50 per class (40 train / 10 test), MLP encoder to d = 19, unit ball, tau 1, "
            "Adam 3e-3, batch 256"
        ),
        base={
            "data": "synthetic",
            "classes": 20,
            "per_class": 50,
            "separation": 6.0,
            "encoder": "mlp",
            "batch_size": 256,
            "lr": 3e-3,
            "epochs": 100,
            "backend": "numpy",
        },
        settings=_PAPER_GRID,
        moderate_betas=(2.0, 5.0, 10.0),
        large_beta=30.0,
    ),
    "cifar100": Preset(
        name="cifar100",
        description=(
            "The released run (github.com/rjiang03/HCL, option by option: docs/reproducing.md): CIFAR-100, one "
            "plain normalized view per image with label positives, the released ResNet-50 (CIFAR stem, "
            "Linear-BN-ReLU-Linear head) to d = 99, the released loss (--paper: unit ball, tau 1, anchor among its "
            "positives, k = 256 sampled negatives averaged; UCL's negatives every row), Adam 1e-3 (UCL: weight "
            "decay 1e-6), batch 512, 400 epochs, PyTorch on a CUDA GPU"
        ),
        base={
            "data": "cifar100",
            "encoder": "resnet50",
            "backend": "torch",
            "device": "cuda",
            "dim": 99,
            "batch_size": 512,
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 0.0,
            "paper": True,
            "views": 1,
            "augment": "none",
            "epochs": 400,
        },
        # the released notebooks' grid: main/SCL and main/UCL Visualization.ipynb load easy0.0, hard2.0 ... hard30.0
        settings=(
            Setting("scl"),
            *(Setting("hscl", beta) for beta in _RELEASED_BETAS),
            Setting("ucl"),
            *(Setting("hucl", beta) for beta in _RELEASED_BETAS),
        ),
        moderate_betas=(2.0, 5.0, 10.0),
        large_beta=30.0,
        needs_gpu=True,
        default_jobs=1,  # one GPU: concurrent ResNet-50 runs would only share it
        per_loss={"ucl": {"weight_decay": 1e-6}, "hucl": {"weight_decay": 1e-6}},  # main/UCL/...:333
    ),
}

#: The paper's numbers (CIFAR-100, ResNet-50, d = 99, from its released notebooks; end of training), by
#: setting name: mean-classifier test accuracy (%), equal inner product, significant class-mean directions.
#: The paper's table has HUCL at beta = 5 and 30 only: the report shows HUCL at 2 and 10 as not reported.
PAPER_REFERENCE: dict[str, dict[str, str]] = {
    "scl": {"test_acc": "10.4", "equal_inner_product": "about 0.23", "directions": "about 9"},
    "hscl-beta2": {"test_acc": "31.9", "equal_inner_product": "about 0.045", "directions": "about 45"},
    "hscl-beta5": {"test_acc": "58.4", "equal_inner_product": "about 0", "directions": "flat to about 97"},
    "hscl-beta10": {"test_acc": "57.1", "equal_inner_product": "about 0", "directions": "flat, all 99"},
    "hscl-beta30": {"test_acc": "54.6", "equal_inner_product": "about 0", "directions": "flat"},
    "ucl": {"test_acc": "about 9", "equal_inner_product": "about 0.24", "directions": "about 8"},
    "hucl-beta5": {"test_acc": "about 56", "equal_inner_product": "about 0.01", "directions": "flat to about 96"},
    "hucl-beta30": {
        "test_acc": "about 54",
        "equal_inner_product": "about 0.66 (zero-sum about 0.80)",
        "directions": "decays: large beta breaks HUCL",
    },
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; ValueError listing the presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"PRESET {name!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[name]


def select_settings(preset: Preset, names: str | Sequence[str] | None) -> tuple[Setting, ...]:
    """The settings of the preset's grid named in `names` (a comma-separated string or a sequence), in grid order.

    None: the whole grid. Raises ValueError naming the valid names when a name is not in the grid, or when
    none is given.
    """
    if names is None:
        return preset.settings
    wanted = [name.strip() for name in (names.split(",") if isinstance(names, str) else names)]
    wanted = [name for name in wanted if name]
    valid = [setting.name for setting in preset.settings]
    unknown = [name for name in wanted if name not in valid]
    if unknown or not wanted:
        problem = (
            f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not in"
            if unknown
            else "names no setting of"
        )
        raise ValueError(f"--settings: {problem} the {preset.name} grid; choose from {', '.join(valid)}")
    return tuple(setting for setting in preset.settings if setting.name in wanted)


def check_requirements(preset: Preset, data_dir: str | Path | None) -> None:
    """Fail before any training when the preset cannot run here: its data files, torchvision, a CUDA GPU.

    Raises ValueError / FileNotFoundError / BackendUnavailable with a one-line message naming the fix.
    """
    data = preset.base.get("data")
    if data not in ("cifar10", "cifar100") and data_dir is not None:
        raise ValueError(f"--data-dir is for the cifar100 preset; {preset.name} reads no data files, leave it out")
    if data in ("cifar10", "cifar100"):
        if data_dir is None:
            raise ValueError(f"preset {preset.name} needs --data-dir, the folder holding the {data} files")
        from ..data import _CIFAR_LAYOUTS, _find_cifar_files

        directory = Path(data_dir)
        if not directory.is_dir():
            raise FileNotFoundError(f"--data-dir {str(directory)!r} is not a folder")
        _find_cifar_files(directory, _CIFAR_LAYOUTS[100 if data == "cifar100" else 10])
    if preset.needs_gpu:
        _check_cuda(preset)
    if preset.base.get("encoder", "").startswith("resnet"):
        from ..backends._torch_modules import torchvision_models

        torchvision_models(preset.base["encoder"])  # BackendUnavailable naming the fix when it does not load


def _check_cuda(preset: Preset) -> None:
    from ..backends import BackendUnavailable, get_backend

    devices = get_backend(preset.base.get("backend", "torch")).devices()
    if not any(device.startswith("cuda") for device in devices):
        raise BackendUnavailable(
            f"preset {preset.name} needs a CUDA GPU, and PyTorch sees none (devices: {', '.join(devices)}); "
            "run it on a machine with one, or use the digits or synthetic preset here"
        )


def preset_fields(preset: Preset) -> dict[str, Any]:
    """The full shared TrainConfig of the preset (defaults filled in), for the report."""
    config = preset.config(preset.settings[0], 0)
    return {key: value for key, value in dataclasses.asdict(config).items() if key not in ("loss", "beta", "seed")}
