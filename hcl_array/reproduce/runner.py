"""The run grid of `hcl reproduce`: one checkpoint per (setting, seed), trained in worker processes, resumable.

Each run is `DIR/runs/<setting>-seed<k>.npz`, the checkpoint `hcl_array.training.train` writes atomically
after every epoch. Before training, each file is read: a run whose checkpoint has all its epochs is reused
as it is, one with fewer is resumed from its last epoch (train's resume gives the same numbers as an
uninterrupted run), a missing one is trained from the start. So a command killed at any point and run
again trains nothing that had finished.

Workers are `spawn`ed processes, each single-threaded (BLAS/OpenMP thread counts set to 1 in the
environment they start with, before they import NumPy or torch), so that J jobs use J cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ..checkpoint import load_checkpoint
from ..training import RESUMABLE_CHANGES, TrainConfig, train
from .presets import Preset, Setting

__all__ = [
    "RunOutcome",
    "RunSpec",
    "THREAD_VARIABLES",
    "completed_epochs",
    "plan_runs",
    "run_grid",
    "single_threaded_pool",
]

#: Environment variables that fix the thread pools of OpenMP, MKL, OpenBLAS, Accelerate and numexpr.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: its setting name, seed, full configuration and checkpoint path."""

    setting: str
    seed: int
    config: TrainConfig
    path: Path


@dataclass(frozen=True)
class RunOutcome:
    """What happened to a run: 'reused' (finished before), 'resumed' (from epoch `start_epoch`) or 'trained'."""

    spec: RunSpec
    status: str
    start_epoch: int
    seconds: float


def plan_runs(
    preset: Preset,
    out: str | Path,
    seeds: int,
    *,
    epochs: int | None = None,
    data_dir: str | None = None,
    settings: Sequence[Setting] | None = None,
) -> list[RunSpec]:
    """Every (setting, seed), seeds 0..seeds-1, in the given order, seed-major within a setting.

    settings: a subset of the preset's grid (presets.select_settings); None: the whole grid.
    """
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    runs = Path(out) / "runs"
    specs = []
    for setting in preset.settings if settings is None else settings:
        for seed in range(seeds):
            config = preset.config(setting, seed, epochs=epochs, data_dir=data_dir)
            config.validate()
            specs.append(RunSpec(setting.name, seed, config, runs / f"{setting.name}-seed{seed}.npz"))
    return specs


def completed_epochs(spec: RunSpec) -> int:
    """Epochs already in the run's checkpoint (0 when there is none).

    Raises ValueError when the file holds another configuration (fields other than epochs and device
    differ) or more epochs than the run asks for, and CheckpointError when it is not a checkpoint.
    """
    if not spec.path.exists():
        return 0
    saved = load_checkpoint(spec.path)
    saved_config = saved.config.get("train_config")
    current = dataclasses.asdict(spec.config)
    if not isinstance(saved_config, dict):
        raise ValueError(f"{spec.path}: not an `hcl train` checkpoint; remove it or choose another --out")
    differing = sorted(
        key
        for key in current.keys() | saved_config.keys()
        if key not in RESUMABLE_CHANGES and current.get(key) != saved_config.get(key)
    )
    if differing:
        raise ValueError(
            f"{spec.path} was trained with other settings ({', '.join(differing)} differ); "
            "choose another --out or remove the file"
        )
    if saved.epoch > spec.config.epochs:
        raise ValueError(
            f"{spec.path} has {saved.epoch} epochs, more than --epochs {spec.config.epochs}; "
            f"pass --epochs {saved.epoch} or choose another --out"
        )
    return saved.epoch


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Set the thread variables to 1 while workers start (they inherit the environment), then restore it."""
    previous = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: "1" for name in THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_EPOCHS: Any = None  # in a worker: the queue that carries (checkpoint path, epoch) to the main process


def _start_worker(backend: str, epochs: Any = None) -> None:
    """Worker initializer: keep the epoch queue; torch keeps its own thread pools besides OpenMP's, pin both to 1."""
    global _EPOCHS
    _EPOCHS = epochs
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
        with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel work
            torch.set_num_interop_threads(1)


def _train_run(config: TrainConfig, path: Path, resume: bool) -> float:
    """Train (or resume) one run into `path`; the seconds it took. Runs in a worker process."""
    started = time.perf_counter()
    epochs = _EPOCHS
    callback = None if epochs is None else lambda report: epochs.put((str(path), report.epoch))
    train(config, out=path, resume_from=path if resume else None, callback=callback)
    return time.perf_counter() - started


def run_grid(
    specs: Sequence[RunSpec],
    *,
    jobs: int,
    on_plan: Callable[[list[RunSpec]], None] | None = None,
    on_done: Callable[[RunOutcome], None] | None = None,
    on_epoch: Callable[[RunSpec, int], None] | None = None,
) -> list[RunOutcome]:
    """Bring every run to its last epoch with `jobs` worker processes; one outcome per spec, in spec order.

    Every existing checkpoint is checked first (completed_epochs); then on_plan(specs) is called,
    on_epoch(spec, epoch) as a worker completes an epoch, and on_done(outcome) as each run finishes (reused
    runs first), all in this process. An error in a run, or an interrupt, stops the workers (their
    checkpoints are complete up to their last epoch) and is raised.
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    starts = [completed_epochs(spec) for spec in specs]
    if on_plan is not None:
        on_plan(list(specs))
    done = on_done or (lambda outcome: None)
    outcomes: dict[int, RunOutcome] = {}
    pending = []
    for index, (spec, start) in enumerate(zip(specs, starts, strict=True)):
        if start == spec.config.epochs:
            outcomes[index] = RunOutcome(spec, "reused", start, 0.0)
            done(outcomes[index])
        else:
            pending.append((index, spec, start))
    if pending:
        _run_in_workers(pending, jobs, outcomes, done, on_epoch or (lambda spec, epoch: None))
    return [outcomes[index] for index in range(len(specs))]


@contextlib.contextmanager
def single_threaded_pool(jobs: int, backend: str = "", epochs: Any = None) -> Iterator[ProcessPoolExecutor]:
    """A pool of `jobs` spawned worker processes, each single-threaded; submit inside the `with` block.

    Workers start at submission and inherit the environment, in which the block sets THREAD_VARIABLES to
    1 (restored after); torch workers also set torch's own pools to one thread. `epochs`: a queue of the
    spawn context, on which the runs put (checkpoint path, epoch) after every epoch. On an error or
    interrupt in the block, runs not started are cancelled and the workers terminated.
    """
    executor = ProcessPoolExecutor(
        max_workers=jobs, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(backend, epochs)
    )
    try:
        with _single_threaded_children():
            yield executor
    except BaseException:
        _stop_workers(executor)
        raise
    executor.shutdown(wait=True)


def _run_in_workers(
    pending: list[tuple[int, RunSpec, int]],
    jobs: int,
    outcomes: dict[int, RunOutcome],
    done: Callable[[RunOutcome], None],
    on_epoch: Callable[[RunSpec, int], None],
) -> None:
    """Submit the pending runs, pass on their epochs, and record each run as it completes."""
    backends = {spec.config.backend for _, spec, _ in pending}
    by_path = {str(spec.path): spec for _, spec, _ in pending}

    def forward(path: str, epoch: int) -> None:
        on_epoch(by_path[path], epoch)

    epochs = get_context("spawn").Queue()
    with single_threaded_pool(min(jobs, len(pending)), backends.pop() if len(backends) == 1 else "", epochs) as pool:
        futures: dict[Future[float], tuple[int, RunSpec, int]] = {
            pool.submit(_train_run, spec.config, spec.path, start > 0): (index, spec, start)
            for index, spec, start in pending
        }
        waiting = set(futures)
        while waiting:
            finished, waiting = wait(waiting, timeout=0.25, return_when=FIRST_COMPLETED)
            _drain(epochs, forward)
            for future in finished:
                index, spec, start = futures[future]
                seconds = future.result()
                outcomes[index] = RunOutcome(spec, "resumed" if start > 0 else "trained", start, seconds)
                done(outcomes[index])
    _drain(epochs, forward)  # the workers have exited, so every epoch they reported is in the queue now


def _drain(epochs: Any, report: Callable[[str, int], None]) -> None:
    """Pass every (path, epoch) waiting in the queue to `report`."""
    while True:
        try:
            path, epoch = epochs.get_nowait()
        except queue.Empty:
            return
        report(path, epoch)


def _stop_workers(executor: ProcessPoolExecutor) -> None:
    """Cancel the runs not started and terminate the workers mid-run.

    A worker would otherwise finish its whole run; its checkpoint is complete up to its last epoch, so
    stopping it loses at most that epoch. ProcessPoolExecutor has no public terminate before Python 3.14.
    """
    terminate = getattr(executor, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    workers = list((getattr(executor, "_processes", None) or {}).values())  # before shutdown clears it
    executor.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        process.terminate()
