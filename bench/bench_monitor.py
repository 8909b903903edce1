"""Benchmark (not a test): the cost of watching collapse, as a fraction of a training epoch, d = 128, C = 100, CPU.

Two measurements in the same process, each epoch timed with and without the monitor, alternating, median of
`--repeats` (the first epoch of every fit is a warm-up and is not timed):

* Lightning: `Trainer.fit` with `CollapseCallback` (embeddings from training_step's outputs) against the same
  fit without it; an epoch is timed from on_train_epoch_start to on_train_epoch_end (after the callback's
  compute, which runs at the epoch end).
* plain torch loop: `CollapseMonitor.update` per batch plus one `compute()` against the bare loop.

Both the wall time and the process's CPU time are measured; the CPU-time ratio is the one to quote on a
shared machine, where other processes stretch the wall time of whichever epoch they happen to overlap.

The model is an MLP 3072 -> 512 -> 128 (a CIFAR-sized input) trained with SupCon, batch 256, C = 100 classes.
On a shared machine run it with OMP_NUM_THREADS=1 and few other processes. Usage:

    .venv/bin/python bench/bench_monitor.py [--rows 8192] [--batch 256] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning
import torch
from torch.utils.data import DataLoader, TensorDataset

from hcl_array import supcon
from hcl_array.integrations.lightning import CollapseCallback
from hcl_array.monitor import CollapseMonitor

INPUT_DIM, HIDDEN, DIM, CLASSES = 3072, 512, 128, 100


def encoder() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(INPUT_DIM, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, DIM))


class Module(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = encoder()

    def training_step(self, batch, batch_idx):
        x, y = batch
        z = self.encoder(x)
        return {"loss": supcon(z, y), "embeddings": z.detach(), "labels": y}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since `start`."""
    now = clock()
    return now[0] - start[0], now[1] - start[1]


class EpochTimer(lightning.Callback):
    """(wall, CPU) time of each training epoch; listed last, so its epoch end follows every other callback's."""

    def __init__(self) -> None:
        self.seconds: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = clock()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(since(self._start))


def data(rows: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(rows) % CLASSES
    centres = torch.randn(CLASSES, INPUT_DIM, generator=generator)
    return TensorDataset(centres[labels] + torch.randn(rows, INPUT_DIM, generator=generator), labels)


def lightning_epoch(dataset: TensorDataset, batch: int, monitored: bool) -> tuple[float, float]:
    timer = EpochTimer()
    callbacks = [CollapseCallback(CLASSES), timer] if monitored else [timer]
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
    trainer.fit(Module(), loader)
    return timer.seconds[-1]


def plain_epoch(dataset: TensorDataset, batch: int, monitored: bool) -> tuple[float, float]:
    model = encoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
    monitor = CollapseMonitor(CLASSES)
    seconds = (0.0, 0.0)
    for _ in range(2):  # the first epoch warms up
        monitor.reset()
        start = clock()
        for x, y in loader:
            z = model(x)
            loss = supcon(z, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if monitored:
                monitor.update(z, y)
        if monitored:
            monitor.compute()
        seconds = since(start)
    return seconds


def overhead(epoch, dataset: TensorDataset, batch: int, repeats: int) -> dict[str, tuple[float, float, float]]:
    """For wall and CPU time: (median epoch without, median with, median per-repeat ratio with / without - 1)."""
    bare, watched = [], []
    for _ in range(repeats):
        bare.append(epoch(dataset, batch, False))
        watched.append(epoch(dataset, batch, True))
    result = {}
    for index, clock_name in enumerate(("wall", "CPU")):
        plain, monitored = [b[index] for b in bare], [w[index] for w in watched]
        ratios = [w / b - 1.0 for w, b in zip(monitored, plain, strict=True)]
        result[clock_name] = (statistics.median(plain), statistics.median(monitored), statistics.median(ratios))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = data(args.rows)
    print(f"d = {DIM}, C = {CLASSES}, {args.rows} rows, batch {args.batch}, {args.threads} torch thread(s)")
    for name, epoch in (("plain torch loop", plain_epoch), ("Lightning callback", lightning_epoch)):
        for clock_name, (bare, watched, ratio) in overhead(epoch, dataset, args.batch, args.repeats).items():
            line = f"epoch {bare:.3f} s, monitored {watched:.3f} s: overhead {100 * ratio:+.1f}% of an epoch"
            print(f"{name:20s} {clock_name:4s} {line}", flush=True)


if __name__ == "__main__":
    main()
