"""`hcl train`: parse options, call hcl_array.training.train, show progress and a summary (no computation here)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..backends import BackendUnavailable
from ..checkpoint import CheckpointError, load_checkpoint
from ..tensorboard_writer import TensorBoardWriter, TrainingLogger
from ..train_config import DATASETS
from ..training import LOSSES, EpochReport, TrainConfig, TrainResult, init_distributed, train

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
        help="Data set: synthetic, digits, cifar10, cifar100, stl10, tiny-imagenet, folder (DIR/<class>/*.png|jpg), "
        "npz, or a path to an .npz file (arrays x, y; optional x_test, y_test)."
    ),
]
_DataDirOption = Annotated[
    Optional[Path],
    typer.Option(
        help="Folder with the image files: CIFAR (python or binary version), stl10_binary, tiny-imagenet-200, or "
        "class subfolders for --data folder; nothing is downloaded. \\[default: none]"
    ),
]
_ImageSizeOption = Annotated[
    Optional[int],
    typer.Option(
        help="Resize images to S x S (shorter side, then centre crop); needed by --data folder. \\[default: the "
        "files' own size]"
    ),
]
_AugmentOption = Annotated[
    str,
    typer.Option(
        help="Augmentation of every view: none, simclr (the released train_transform), shift (pad-4 crop), noise, "
        "or auto: the data set's released run for one view (cifar10/stl10 with ucl, hucl: simclr; else none), "
        "shift (images) or noise (vectors) for two or more."
    ),
]
_PrecisionOption = Annotated[
    str,
    typer.Option(help="fp32, or bf16: the ResNet under autocast(bfloat16), the loss in float32 (--backend torch)."),
]
_WeightDecayOption = Annotated[
    float, typer.Option(help="L2 weight decay added to the gradient, as torch.optim.Adam (the released UCL: 1e-6).")
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
        help="Encoder: free (one trainable vector per sample), linear, mlp; with --backend torch also resnet18, "
        "resnet50 (the released CIFAR ResNet and projection head) and resnet18-linear, resnet50-linear (a linear "
        "head); the ResNets need torchvision."
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
_NprocOption = Annotated[
    int,
    typer.Option(
        help="Processes (--backend torch): relaunches through torch.distributed.run (as torchrun --nproc-per-node "
        "N); each trains on its share of every batch, gloo on the CPU, NCCL on CUDA. \\[default: 1]"
    ),
]
_RankTimeoutOption = Annotated[
    float,
    typer.Option(help="Seconds a process waits for the others before it gives up (several processes only)."),
]
_DevicesOption = Annotated[
    int,
    typer.Option(
        help="Local devices (--backend jax): each batch is split over a mesh of N devices by shard_map; on a CPU "
        "N host devices are made (XLA_FLAGS). \\[default: 1]"
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
    weight_decay: _WeightDecayOption = 0.0,
    optimizer: _OptimizerOption = "adam",
    seed: _SeedOption = 0,
    dtype: _DtypeOption = "float32",
    precision: _PrecisionOption = "fp32",
    device: _DeviceOption = None,
    backend: _BackendOption = "numpy",
    views: _ViewsOption = 1,
    augment: _AugmentOption = "auto",
    image_size: _ImageSizeOption = None,
    paper: _PaperOption = False,
    out: _OutOption = None,
    resume: _ResumeOption = None,
    quiet: _QuietOption = False,
    tensorboard: _TensorboardOption = None,
    nproc: _NprocOption = 1,
    rank_timeout: _RankTimeoutOption = 300.0,
    devices: _DevicesOption = 1,
) -> None:
    """Train an encoder with a (hard-negative) contrastive loss and record the collapse geometry every epoch."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet launched: start nproc copies of this command
        raise typer.Exit(_launch(nproc, backend, _launch_target(ctx, out, resume)))
    _host_devices(devices)
    config, result = _train_here(ctx, resume, out, quiet, tensorboard, devices, rank_timeout)
    if _rank() > 0:
        return
    if quiet:
        typer.echo(str(result.path))
    else:
        _summary(result, config)


def _train_here(
    ctx: typer.Context,
    resume: Path | None,
    out: Path | None,
    quiet: bool,
    tensorboard: Path | None,
    devices: int,
    rank_timeout: float,
) -> tuple[TrainConfig, TrainResult]:
    """This process's part of the run (all of it, or one rank's under torchrun); errors become one line."""
    given = {name: value for name, value in ctx.params.items() if name in _CONFIG_FIELDS}
    group = target = None
    try:
        config = _config(ctx, given, resume)
        target = _checkpoint_path(config, out, resume)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            config, group = _join_processes(config, rank_timeout)
        launch = {"group": group, "devices": devices}
        tensorboard = None if _rank() > 0 else tensorboard
        return config, _run(config, target, resume, quiet or _rank() > 0, tensorboard, launch)
    except USER_ERRORS as error:
        raise fail(str(error)) from None
    except RuntimeError as error:  # torch.distributed: a rank died or stopped answering
        if group is None:
            raise
        _lost_rank(error, rank_timeout, target)


def _checkpoint_path(config: TrainConfig, out: Path | None, resume: Path | None) -> Path:
    return out or resume or Path("runs") / f"{config.loss}-{Path(config.data).stem}-seed{config.seed}.npz"


def _launch_target(ctx: typer.Context, out: Path | None, resume: Path | None) -> Path:
    """The checkpoint the launched processes will write (named when one of them fails)."""
    given = {name: value for name, value in ctx.params.items() if name in _CONFIG_FIELDS}
    try:
        return _checkpoint_path(_config(ctx, given, resume), out, resume)
    except USER_ERRORS as error:
        raise fail(str(error)) from None


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
    if data.endswith(".npz") or (data not in DATASETS and Path(data).is_file()):
        given["data"], given["data_path"] = "npz", data
    for name in ("data_dir", "data_path"):
        if given.get(name) is not None:
            given[name] = str(given[name])
    return TrainConfig(**given)


def _source(ctx: typer.Context, name: str) -> str:
    """Where an option's value came from ("COMMANDLINE", "DEFAULT", ...): by name, as typer may vendor click."""
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", "DEFAULT")


def _launch(nproc: int, backend: str, target: Path) -> int:
    """Run this command line in nproc processes under torch.distributed.run (torchrun); 0 when all succeed.

    When a process fails, the launcher stops the others and this prints one line: the first failure and the
    last intact checkpoint (the processes themselves leave the report of a lost peer to it, `_lost_rank`).
    """
    if backend != "torch":
        raise fail(f"--nproc {nproc} needs --backend torch (JAX spreads a batch over devices instead, see the docs)")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in ("torch.distributed.run", "torch.distributed.elastic"):  # their log lines would bury the one line
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, set here without its warning
    os.environ[_LAUNCHED] = "1"
    launcher = ["--standalone", f"--nproc-per-node={nproc}", "-m", "hcl_array.cli.app"]
    started = time.time()
    try:
        run(get_args_parser().parse_args([*launcher, *_without_nproc(sys.argv[1:])]))
    except ChildFailedError as error:
        first = min(error.failures.values(), key=lambda failure: failure.timestamp)
        raise fail(
            f"process {first.local_rank} of {nproc} failed (exit code {first.exitcode}) and the launcher stopped "
            f"the others; {_checkpoint_note(target, started)}"
        ) from None
    return 0


#: Set by `_launch` for the processes it starts: a process that loses a peer then exits without a line of its own.
_LAUNCHED = "HCL_TRAIN_LAUNCHED"


def _checkpoint_note(target: Path, started: float) -> str:
    """Where a failed run can continue from: the last intact checkpoint it wrote, or that it wrote none."""
    if not target.is_file() or target.stat().st_mtime < started:
        return f"no epoch completed, so there is no checkpoint of this run to resume ({target}): start it again"
    try:
        epoch = load_checkpoint(target).epoch
    except (CheckpointError, OSError) as error:
        return f"the checkpoint {target} cannot be read ({error})"
    return f"the last intact checkpoint is {target} (epoch {epoch}): continue with --resume {target}"


def _without_nproc(arguments: list[str]) -> list[str]:
    """The command line without --nproc N: the launcher would take it for its own --nproc-per-node."""
    kept: list[str] = []
    for previous, argument in zip(["", *arguments], arguments, strict=False):
        if previous != "--nproc" and argument != "--nproc" and not argument.startswith("--nproc="):
            kept.append(argument)
    return kept


def _join_processes(config: TrainConfig, timeout: float) -> tuple[TrainConfig, Any]:
    """Join the process group torchrun set up; with CUDA, each process takes the GPU of its local rank."""
    if config.device is not None and config.device.startswith("cuda"):
        config = dataclasses.replace(config, device=f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    return config, init_distributed(config.device, timeout)


def _lost_rank(error: RuntimeError, timeout: float, target: Path) -> NoReturn:
    """Exit a process whose peers died or stopped answering, with one line (none under `hcl train --nproc`,
    whose launcher reports the failed process and the checkpoint itself).

    Not a normal exit: its C++ destructors would meet gloo's threads still waiting on the dead peer, and
    libstdc++ would print "terminate called without an active exception" and abort after the line.
    """
    if not os.environ.get(_LAUNCHED):
        first_line = (str(error).strip() or type(error).__name__).splitlines()[0]
        message = f"process {_rank()} stopped: another process died or did not answer within {timeout:g} s"
        fail(f"{message} ({first_line}); the last checkpoint {target} is intact: continue with --resume")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _host_devices(devices: int) -> None:
    """Ask XLA for `devices` CPU devices (it reads the flag once, when jax starts; GPUs ignore it)."""
    if devices > 1 and "jax" not in sys.modules:
        flag = f"--xla_force_host_platform_device_count={devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def _run(
    config: TrainConfig, target: Path, resume: Path | None, quiet: bool, tensorboard: Path | None, launch: dict
) -> TrainResult:
    """train() with a progress bar unless quiet, TensorBoard events when asked; `launch`: group and devices."""
    if tensorboard is None:
        return _train_with_progress(config, target, resume, quiet, [], launch)
    config.validate()  # a bad option fails before the event file is made
    with TensorBoardWriter(tensorboard) as writer:
        return _train_with_progress(config, target, resume, quiet, [TrainingLogger(writer, config)], launch)


def _train_with_progress(
    config: TrainConfig,
    target: Path,
    resume: Path | None,
    quiet: bool,
    loggers: list[Callable[[EpochReport], None]],
    launch: dict,
) -> TrainResult:
    """train() with the epoch callbacks `loggers`, plus a progress bar unless quiet."""
    if quiet:
        callback = (lambda report: _each(loggers, report)) if loggers else None
        return train(config, out=target, resume_from=resume, callback=callback, **launch)
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
        return train(config, out=target, resume_from=resume, callback=show, **launch)
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
