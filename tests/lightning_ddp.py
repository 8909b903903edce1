"""A tiny LightningModule for tests/test_lightning.py, and its 2-process DDP run on gloo:

python tests/lightning_ddp.py OUT   # Lightning starts the second process itself; each rank writes OUT/rank<r>.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from hcl_array import supcon
from hcl_array.integrations.lightning import CollapseCallback

NUM_CLASSES, DIM, INPUT_DIM, ROWS, BATCH = 5, 4, 8, 160, 20


class TinyEncoder(lightning.LightningModule):
    """A linear encoder trained with SupCon; `seen` keeps the (embeddings, labels) of the current epoch."""

    def __init__(self, return_embeddings: bool = True) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(INPUT_DIM, DIM)
        self.return_embeddings = return_embeddings
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def on_train_epoch_start(self) -> None:
        self.seen = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        z = self.encoder(x)
        self.seen.append((z.detach().double().numpy(), y.numpy()))
        loss = supcon(z, y)
        return {"loss": loss, "embeddings": z.detach(), "labels": y} if self.return_embeddings else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(ROWS) % NUM_CLASSES
    centres = torch.randn(NUM_CLASSES, INPUT_DIM, generator=generator) * 3.0
    inputs = centres[labels] + torch.randn(ROWS, INPUT_DIM, generator=generator)
    return DataLoader(TensorDataset(inputs, labels), batch_size=BATCH, shuffle=True, generator=generator)


def make_trainer(out: Path, callback: CollapseCallback, logger=None, **options) -> lightning.Trainer:
    return lightning.Trainer(
        accelerator="cpu",
        max_epochs=2,
        callbacks=[callback],
        logger=lightning.pytorch.loggers.CSVLogger(out) if logger is None else logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **options,
    )


def seen_rows(module: TinyEncoder) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([z for z, _ in module.seen]), np.concatenate([y for _, y in module.seen])


if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.manual_seed(0)  # the same initial weights on both ranks (DDP also broadcasts rank 0's)
    module, callback = TinyEncoder(), CollapseCallback(NUM_CLASSES)
    trainer = make_trainer(out, callback, strategy="ddp", devices=2)
    trainer.fit(module, loader())
    embeddings, labels = seen_rows(module)
    logged = {f"logged_{key.split('/')[-1]}": float(value) for key, value in trainer.logged_metrics.items()}
    report = {f"report_{key}": value for key, value in callback.report.items()}
    np.savez(out / f"rank{trainer.global_rank}.npz", embeddings=embeddings, labels=labels, **report, **logged)
