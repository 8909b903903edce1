"""`hcl train`: parse options, call hcl_array.training.train, show progress and a summary (no computation here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

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


def train_command(
    ctx: typer.Context,
    data: str = typer.Option(
        "synthetic",
        help=(
            "Data set: synthetic, digits, cifar10, cifar100, npz, or a path to an .npz file (arrays x, y; "
            "optional x_test, y_test)."
        ),
    ),
    data_dir: Optional[Path] = typer.Option(
        None, help="Folder with the CIFAR files (python or binary version); nothing is downloaded. \\[default: none]"
    ),
    data_path: Optional[Path] = typer.Option(None, help="The .npz file for --data npz. \\[default: none]"),
    classes: int = typer.Option(10, help="synthetic: number of latent classes C."),
    per_class: int = typer.Option(100, help="synthetic: samples per class (80% train, 20% test)."),
    input_dim: int = typer.Option(32, help="synthetic: input dimension."),
    separation: float = typer.Option(
        3.0, help="synthetic: RMS distance between class centres, in noise standard deviations."
    ),
    noise: float = typer.Option(1.0, help="synthetic: noise standard deviation."),
    encoder: str = typer.Option(
        "mlp",
        help=(
            "Encoder: free (one trainable vector per sample), linear, mlp; with --backend torch also "
            "resnet18, resnet50 (needs torchvision)."
        ),
    ),
    hidden: int = typer.Option(128, help="mlp: hidden width."),
    loss: str = typer.Option("hscl", help=f"Loss: {', '.join(LOSSES)}."),
    beta: Optional[float] = typer.Option(None, help="Hardness beta >= 0 of hscl, hucl, debiased_hcl. \\[default: 5]"),
    temperature: Optional[float] = typer.Option(
        None,
        help=(
            "Temperature tau > 0. \\[default: the loss's own: 1 for scl/hscl/ucl/hucl, 0.1 supcon, 0.5 "
            "ntxent/debiased_hcl]"
        ),
    ),
    normalize: Optional[str] = typer.Option(
        None,
        help=(
            "Normalization g: ball (unit-ball clip, the paper), sphere, none. \\[default: ball; sphere for "
            "supcon, ntxent, debiased_hcl]"
        ),
    ),
    negatives: str = typer.Option(
        "expected", help="expected (exact expectation over the hardened distribution) or sampled (k draws per anchor)."
    ),
    k: Optional[int] = typer.Option(
        None,
        help=(
            "Number of negatives: sampled draws per anchor, or lambda with expected. \\[default: all "
            "candidates; 256 when sampled]"
        ),
    ),
    dim: Optional[int] = typer.Option(None, help="Embedding dimension d. \\[default: C - 1]"),
    batch_size: int = typer.Option(128, help="Batch size (the last short batch of an epoch is dropped)."),
    epochs: int = typer.Option(100, help="Number of epochs (the total, also when resuming)."),
    lr: float = typer.Option(1e-3, help="Learning rate (the paper: Adam, 1e-3)."),
    optimizer: str = typer.Option("adam", help="Optimizer: adam or sgd (momentum 0.9)."),
    seed: int = typer.Option(0, help="Seed of data, initialization, batches, views and sampled negatives."),
    dtype: str = typer.Option("float32", help="Parameter and computation dtype: float32 or float64."),
    device: Optional[str] = typer.Option(
        None, help="Device, e.g. cpu, cuda:0 (torch/cupy), gpu:0 (jax); see `hcl backends`. \\[default: the backend's]"
    ),
    backend: str = typer.Option("numpy", help="Backend: numpy, torch, jax, cupy."),
    views: int = typer.Option(
        1,
        help=(
            "Views per sample: 1 (positives share the label, the paper's model), or >= 2 augmented views "
            "(ucl, hucl, ntxent, debiased_hcl then use instance positives)."
        ),
    ),
    paper: bool = typer.Option(
        False,
        "--paper",
        help=(
            "Use the paper code's loss semantics (PAPER_PRESET: ball, tau 1, anchor as own positive, k=256 "
            "sampled negatives averaged). \\[default: off]"
        ),
    ),
    out: Optional[Path] = typer.Option(
        None,
        help=(
            "Checkpoint file, rewritten atomically every epoch. \\[default: "
            "runs/<loss>-<data>-seed<seed>.npz; with --resume, that file]"
        ),
    ),
    resume: Optional[Path] = typer.Option(
        None,
        help=(
            "Continue the run saved in this checkpoint from its last completed epoch (options not given are "
            "taken from it). \\[default: none: a new run]"
        ),
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bar or summary: print only the checkpoint path. \\[default: off]"
    ),
    tensorboard: Optional[Path] = typer.Option(
        None,
        help=(
            "Write TensorBoard events to this folder: every epoch's metrics (train/loss, collapse/..., test/...), "
            "the class-mean spectrum, the configuration (needs the tensorboard package). \\[default: none]"
        ),
    ),
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
