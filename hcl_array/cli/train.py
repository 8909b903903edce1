"""`hcl train`: parse options, call hcl_array.training.train, show progress and a summary (no computation here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..backends import BackendUnavailable
from ..checkpoint import CheckpointError, load_checkpoint
from ..data import DATASET_NAMES
from ..tensorboard_writer import TensorBoardWriter, TrainingLogger
from ..training import LOSSES, EpochReport, TrainConfig, TrainResult, train

#: Errors a user can fix: shown as one line, never as a traceback.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    BackendUnavailable,
    CheckpointError,
    NotImplementedError,
    ImportError,
    OSError,
)
_CONFIG_FIELDS = {field.name for field in dataclasses.fields(TrainConfig)}


def fail(message: str) -> typer.Exit:
    """Print a one-line error to stderr and give the exit to raise (status 1)."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


_DataOption = Annotated[
    str,
    typer.Option(
        help="Data set: synthetic, digits, cifar10, cifar100, npz, or a path to an .npz file (arrays x, y; "
        "optional x_test, y_test)."
    ),
]
_DataDirOption = Annotated[
    Optional[Path],
    typer.Option(
        help="Folder with the CIFAR files (python or binary version); nothing is downloaded. \\[default: none]"
    ),
]
_DataPathOption = Annotated[Optional[Path], typer.Option(help="The .npz file for --data npz. \\[default: none]")]
_ClassesOption = Annotated[int, typer.Option(help="synthetic: number of latent classes C.")]
_PerClassOption = Annotated[int, typer.Option(help="synthetic: samples per class (80% train, 20% test).")]
_InputDimOption = Annotated[int, typer.Option(help="synthetic: input dimension.")]
_SeparationOption = Annotated[
    float, typer.Option(help="synthetic: RMS distance between class centres, in noise standard deviations.")
]
_NoiseOption = Annotated[float, typer.Option(help="synthetic: noise standard deviation.")]
_EncoderOption = Annotated[
    str,
    typer.Option(
        help="Encoder: free (one trainable vector per sample), linear, mlp; with --backend torch also "
        "resnet18, resnet50 (needs torchvision)."
    ),
]
_HiddenOption = Annotated[int, typer.Option(help="mlp: hidden width.")]
_LossOption = Annotated[str, typer.Option(help=f"Loss: {', '.join(LOSSES)}.")]
_BetaOption = Annotated[
    Optional[float], typer.Option(help="Hardness beta >= 0 of hscl, hucl, debiased_hcl. \\[default: 5]")
]
_TemperatureOption = Annotated[
    Optional[float],
    typer.Option(
        help="Temperature tau > 0. \\[default: the loss's own: 1 for scl/hscl/ucl/hucl, 0.1 supcon, 0.5 "
        "ntxent/debiased_hcl]"
    ),
]
_NormalizeOption = Annotated[
    Optional[str],
    typer.Option(
        help="Normalization g: ball (unit-ball clip, the paper), sphere, none. \\[default: ball; sphere for "
        "supcon, ntxent, debiased_hcl]"
    ),
]
_NegativesOption = Annotated[
    str,
    typer.Option(help="expected (exact expectation over the hardened distribution) or sampled (k draws per anchor)."),
]
_KOption = Annotated[
    Optional[int],
    typer.Option(
        help="Number of negatives: sampled draws per anchor, or lambda with expected. \\[default: all "
        "candidates; 256 when sampled]"
    ),
]
_DimOption = Annotated[Optional[int], typer.Option(help="Embedding dimension d. \\[default: C - 1]")]
_BatchSizeOption = Annotated[int, typer.Option(help="Batch size (the last short batch of an epoch is dropped).")]
_EpochsOption = Annotated[int, typer.Option(help="Number of epochs (the total, also when resuming).")]
_LrOption = Annotated[float, typer.Option(help="Learning rate (the paper: Adam, 1e-3).")]
_OptimizerOption = Annotated[str, typer.Option(help="Optimizer: adam or sgd (momentum 0.9).")]
_SeedOption = Annotated[int, typer.Option(help="Seed of data, initialization, batches, views and sampled negatives.")]
_DtypeOption = Annotated[str, typer.Option(help="Parameter and computation dtype: float32 or float64.")]
_DeviceOption = Annotated[
    Optional[str],
    typer.Option(
        help="Device, e.g. cpu, cuda:0 (torch/cupy), gpu:0 (jax); see `hcl backends`. \\[default: the backend's]"
    ),
]
_BackendOption = Annotated[str, typer.Option(help="Backend: numpy, torch, jax, cupy.")]
_ViewsOption = Annotated[
    int,
    typer.Option(
        help="Views per sample: 1 (positives share the label, the paper's model), or >= 2 augmented views "
        "(ucl, hucl, ntxent, debiased_hcl then use instance positives)."
    ),
]
_PaperOption = Annotated[
    bool,
    typer.Option(
        "--paper",
        help="Use the paper code's loss semantics (PAPER_PRESET: ball, tau 1, anchor as own positive, k=256 "
        "sampled negatives averaged). \\[default: off]",
    ),
]
_OutOption = Annotated[
    Optional[Path],
    typer.Option(
        help="Checkpoint file, rewritten atomically every epoch. \\[default: "
        "runs/<loss>-<data>-seed<seed>.npz; with --resume, that file]"
    ),
]
_ResumeOption = Annotated[
    Optional[Path],
    typer.Option(
        help="Continue the run saved in this checkpoint from its last completed epoch (options not given are "
        "taken from it). \\[default: none: a new run]"
    ),
]
_QuietOption = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bar or summary: print only the checkpoint path. \\[default: off]"),
]

_TensorboardOption = Annotated[
    Optional[Path],
    typer.Option(
        help="Write TensorBoard events to this folder: every epoch's metrics (train/loss, collapse/..., test/...), "
        "the class-mean spectrum, the configuration (needs the tensorboard package). \\[default: none]"
    ),
]


def train_command(
    ctx: typer.Context,
    data: _DataOption = "synthetic",
    data_dir: _DataDirOption = None,
    data_path: _DataPathOption = None,
    classes: _ClassesOption = 10,
    per_class: _PerClassOption = 100,
    input_dim: _InputDimOption = 32,
    separation: _SeparationOption = 3.0,
    noise: _NoiseOption = 1.0,
    encoder: _EncoderOption = "mlp",
    hidden: _HiddenOption = 128,
    loss: _LossOption = "hscl",
    beta: _BetaOption = None,
    temperature: _TemperatureOption = None,
    normalize: _NormalizeOption = None,
    negatives: _NegativesOption = "expected",
    k: _KOption = None,
    dim: _DimOption = None,
    batch_size: _BatchSizeOption = 128,
    epochs: _EpochsOption = 100,
    lr: _LrOption = 1e-3,
    optimizer: _OptimizerOption = "adam",
    seed: _SeedOption = 0,
    dtype: _DtypeOption = "float32",
    device: _DeviceOption = None,
    backend: _BackendOption = "numpy",
    views: _ViewsOption = 1,
    paper: _PaperOption = False,
    out: _OutOption = None,
    resume: _ResumeOption = None,
    quiet: _QuietOption = False,
    tensorboard: _TensorboardOption = None,
) -> None:
    """Train an encoder with a (hard-negative) contrastive loss and record the collapse geometry every epoch."""
    given = {name: value for name, value in ctx.params.items() if name in _CONFIG_FIELDS}
    try:
        config = _config(ctx, given, resume)
        target = out or resume or Path("runs") / f"{config.loss}-{Path(config.data).stem}-seed{config.seed}.npz"
        result = _run(config, target, resume, quiet, tensorboard)
    except USER_ERRORS as error:
        raise fail(str(error)) from None
    if quiet:
        typer.echo(str(result.path))
    else:
        _summary(result, config)


def _config(ctx: typer.Context, given: dict[str, Any], resume: Path | None) -> TrainConfig:
    """TrainConfig from the options; with --resume, options left at their defaults come from the checkpoint."""
    if resume is not None:
        saved = load_checkpoint(resume).config.get("train_config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{resume}: not an `hcl train` checkpoint (no train_config)")
        for name, value in saved.items():
            if name in given and _source(ctx, name) != "COMMANDLINE":
                given[name] = value
    data = given["data"]
    if data.endswith(".npz") or (data not in DATASET_NAMES and Path(data).is_file()):
        given["data"], given["data_path"] = "npz", data
    for name in ("data_dir", "data_path"):
        if given.get(name) is not None:
            given[name] = str(given[name])
    return TrainConfig(**given)


def _source(ctx: typer.Context, name: str) -> str:
    """Where an option's value came from ("COMMANDLINE", "DEFAULT", ...): by name, as typer may vendor click."""
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", "DEFAULT")


def _run(config: TrainConfig, target: Path, resume: Path | None, quiet: bool, tensorboard: Path | None) -> TrainResult:
    if tensorboard is None:
        return _train_with_progress(config, target, resume, quiet, [])
    config.validate()  # a bad option fails before the event file is made
    with TensorBoardWriter(tensorboard) as writer:
        return _train_with_progress(config, target, resume, quiet, [TrainingLogger(writer, config)])


def _train_with_progress(
    config: TrainConfig, target: Path, resume: Path | None, quiet: bool, loggers: list[Callable[[EpochReport], None]]
) -> TrainResult:
    """train() with the epoch callbacks `loggers`, plus a progress bar unless quiet."""
    if quiet:
        return train(config, out=target, resume_from=resume, callback=lambda report: _each(loggers, report))
    # Started at the first epoch's report, so that a setup error (bad data dir, backend) prints no bar.
    progress = Progress(
        TextColumn("[bold]{task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    tasks: list[Any] = []

    def show(report: EpochReport) -> None:
        if not tasks:
            progress.start()
            name = f"{config.loss} on {config.backend}"
            tasks.append(progress.add_task("", total=report.epochs, completed=report.epoch - 1, name=name))
        progress.update(tasks[0], completed=report.epoch, description=_epoch_line(report.metrics))
        _each(loggers, report)

    try:
        return train(config, out=target, resume_from=resume, callback=show)
    finally:
        progress.stop()


def _each(callbacks: list[Callable[[EpochReport], None]], report: EpochReport) -> None:
    for callback in callbacks:
        callback(report)


def _epoch_line(metrics: dict[str, float]) -> str:
    return (
        f"loss {metrics['loss']:.4f}  eq-inner {metrics['equal_inner_product']:.3f}  "
        f"etf {metrics['etf_distance']:.3f}  dirs {metrics['significant_directions']:.0f}  "
        f"test acc {metrics['test_mean_classifier_accuracy']:.3f}"
    )


def _summary(result: TrainResult, config: TrainConfig) -> None:
    checkpoint = result.checkpoint
    table = Table(title=f"hcl train: {config.loss} on {config.data} ({config.backend}, {config.encoder} encoder)")
    table.add_column("metric")
    table.add_column("final", justify="right")
    rows = [
        ("epochs completed", f"{checkpoint.epoch} / {config.epochs}"),
        ("loss", "loss"),
        ("equal inner product (0 at ETF)", "equal_inner_product"),
        ("ETF distance", "etf_distance"),
        ("NC1", "nc1"),
        ("unit norm", "unit_norm"),
        ("zero sum", "zero_sum"),
        ("significant class-mean directions", "significant_directions"),
        ("train mean-classifier accuracy", "mean_classifier_accuracy"),
        ("test mean-classifier accuracy", "test_mean_classifier_accuracy"),
    ]
    for label, key in rows:
        values = checkpoint.history.get(key)
        text = key if values is None else f"{float(values[-1]):.4g}"
        table.add_row(label, text)
    table.add_row("embedding dimension", str(checkpoint.train_embeddings.shape[1]))
    table.add_row("wall time", f"{result.seconds:.1f} s")
    console = Console()
    console.print(table)
    console.print(f"checkpoint: [bold]{result.path}[/]   next: hcl analyze {result.path}", highlight=False)
