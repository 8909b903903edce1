"""Benchmark (not a test): the cost of watching collapse, as a fraction of a training epoch, d = 128, C = 100, CPU.

The monitor's time is measured where it is spent, in the same epochs as the training it watches, so that
other processes on a shared machine slow both alike: the main thread's CPU time (time.thread_time, which
does not count time the thread waits for a core; torch runs with one intra-op thread) of

* Lightning: `CollapseCallback`'s hooks (update per batch from training_step's outputs, compute and logging
  at the epoch end) against the rest of the epoch, from on_train_epoch_start to on_train_epoch_end;
* plain torch loop: `CollapseMonitor.update` per batch plus one `compute()` against the training steps.

The overhead is monitor time / (epoch time without it), the median over epochs (the first epoch of each
run is a warm-up and is not counted). The default model is an MLP 3072 -> 512 -> 128 (a CIFAR-sized input)
trained with SupCon by Adam, batch 256, C = 100 classes: the lightest encoder, the worst case for the
monitor's share; `--model cnn` is a small CIFAR convnet (four conv stages). Usage:

    .venv/bin/python bench/bench_monitor.py [--model mlp|cnn] [--rows 8192] [--batch 256] [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import lightning
import torch
from torch.utils.data import DataLoader, TensorDataset

from hcl_array import supcon
from hcl_array.integrations.lightning import CollapseCallback
from hcl_array.monitor import CollapseMonitor

INPUT_DIM, HIDDEN, DIM, CLASSES = 3072, 512, 128, 100


def mlp() -> torch.nn.Module:
    """The lightest encoder worth the name (the worst case for the monitor's share): 3072 -> 512 -> 128."""
    return torch.nn.Sequential(torch.nn.Linear(INPUT_DIM, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, DIM))


def cnn() -> torch.nn.Module:
    """A small CIFAR convnet: four 3x3 conv + ReLU + 2x2 max-pool stages (32 to 256 channels), then 4096 -> 128."""
    layers, channels = [torch.nn.Unflatten(1, (3, 32, 32))], 3
    for width in (32, 64, 128, 256):
        layers += [torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        channels = width
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(256 * 2 * 2, DIM))


ENCODERS = {"mlp": mlp, "cnn": cnn}


class Module(lightning.LightningModule):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def training_step(self, batch, batch_idx):
        x, y = batch
        z = self.encoder(x)
        return {"loss": supcon(z, y), "embeddings": z.detach(), "labels": y}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class TimedCollapseCallback(CollapseCallback):
    """CollapseCallback that adds up the CPU time of its own hooks, per epoch."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.spent = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        start = time.thread_time()
        super().on_train_epoch_start(trainer, pl_module)
        self.spent = time.thread_time() - start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        start = time.thread_time()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.spent += time.thread_time() - start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        start = time.thread_time()
        super().on_train_epoch_end(trainer, pl_module)
        self.spent += time.thread_time() - start


class EpochTimer(lightning.Callback):
    """CPU time of each epoch and the monitor's share; listed after the monitor, so its epoch end comes last."""

    def __init__(self, monitor: TimedCollapseCallback) -> None:
        self.monitor, self.epochs = monitor, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.thread_time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = time.thread_time() - self._start
        self.epochs.append((epoch - self.monitor.spent, self.monitor.spent))


def data(rows: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(rows) % CLASSES
    centres = torch.randn(CLASSES, INPUT_DIM, generator=generator)
    return TensorDataset(centres[labels] + torch.randn(rows, INPUT_DIM, generator=generator), labels)


def lightning_epochs(dataset: TensorDataset, batch: int, epochs: int, encoder: Callable) -> list[tuple[float, float]]:
    """(training seconds, monitor seconds) of each epoch after the first."""
    monitor = TimedCollapseCallback(CLASSES)
    timer = EpochTimer(monitor)
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=[monitor, timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(encoder()), DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True))
    return timer.epochs[1:]


def plain_epochs(dataset: TensorDataset, batch: int, epochs: int, encoder: Callable) -> list[tuple[float, float]]:
    """(training seconds, monitor seconds) of each epoch after the first."""
    model = encoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
    monitor, measured = CollapseMonitor(CLASSES), []
    for _ in range(epochs):
        training = watching = 0.0
        monitor.reset()
        for x, y in loader:
            start = time.thread_time()
            z = model(x)
            loss = supcon(z, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            middle = time.thread_time()
            monitor.update(z, y)
            training, watching = training + middle - start, watching + time.thread_time() - middle
        start = time.thread_time()
        monitor.compute()
        measured.append((training, watching + time.thread_time() - start))
    return measured[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--model", choices=tuple(ENCODERS), default="mlp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = data(args.rows)
    setting = f"{args.model} encoder, d = {DIM}, C = {CLASSES}, {args.rows} rows, batch {args.batch}"
    print(f"{setting}, 1 torch thread, CPU time of the main thread")
    for name, run in (("plain torch loop", plain_epochs), ("Lightning callback", lightning_epochs)):
        epochs = run(dataset, args.batch, args.epochs, ENCODERS[args.model])
        training = statistics.median(train for train, _ in epochs)
        watching = statistics.median(watch for _, watch in epochs)
        ratio = statistics.median(watch / train for train, watch in epochs)
        line = f"epoch {training:.3f} s, monitor {1e3 * watching:.1f} ms: overhead {100 * ratio:.2f}% of an epoch"
        print(f"{name:20s} {line}", flush=True)


if __name__ == "__main__":
    main()
