"""A PyTorch Lightning callback that watches neural and dimensional collapse during `Trainer.fit`.

    from hcl_array.integrations.lightning import CollapseCallback
    trainer = lightning.Trainer(callbacks=[CollapseCallback(num_classes=100)])

Needs `pip install 'hcl-array[lightning]'`. See docs/monitoring.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("hcl_array.integrations.lightning needs lightning: pip install 'hcl-array[lightning]'") from error

from ..monitor import CollapseMonitor
from ..training import significant_directions

__all__ = ["CollapseCallback"]

#: embed(module, batch) -> (embeddings (B, d), labels (B,)) of one training batch.
EmbedFunction = Callable[[LightningModule, Any], tuple[Any, Any]]


class CollapseCallback(Callback):
    """Feed a `CollapseMonitor` every training batch's embeddings; log its report at the end of each epoch.

    The embeddings of a batch come from the first of:

    1. `embed(module, batch)`, when given;
    2. the dict that `training_step` returns, keys "embeddings" and "labels" (no second forward pass: cheapest);
    3. the module's method `collapse_embeddings(batch) -> (embeddings, labels)`.

    At each epoch end (every `every_n_epochs`) every scalar of the one-pass report, plus
    significant_directions (class-mean spectrum values above log 1e-3), is logged as `prefix + key` with
    `module.log_dict`, so the trainer's loggers, progress bar and ModelCheckpoint(monitor=...) see it; a
    logger with a TensorBoard `experiment` also gets the spectrum as the histogram `prefix + "spectrum"`.
    `report` holds the last full report (float64). Under DDP the monitor sums its state over the processes
    (torch.distributed all_reduce), so every rank logs the same global numbers.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        embed: EmbedFunction | None = None,
        prefix: str = "collapse/",
        every_n_epochs: int = 1,
    ) -> None:
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}")
        self.monitor = CollapseMonitor(num_classes)
        self.embed, self.prefix, self.every_n_epochs = embed, prefix, every_n_epochs
        self.report: dict[str, Any] | None = None

    def _active(self, trainer: Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.monitor.reset()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._active(trainer):
            self.monitor.update(*self._embeddings(pl_module, outputs, batch))

    def _embeddings(self, pl_module: LightningModule, outputs: Any, batch: Any) -> tuple[Any, Any]:
        if self.embed is not None:
            return self.embed(pl_module, batch)
        if isinstance(outputs, Mapping) and "embeddings" in outputs and "labels" in outputs:
            return outputs["embeddings"], outputs["labels"]
        method = getattr(pl_module, "collapse_embeddings", None)
        if method is None:
            raise ValueError(
                "CollapseCallback found no embeddings: return {'loss', 'embeddings', 'labels'} from training_step, "
                "define collapse_embeddings(batch) on the module, or pass embed=function(module, batch)"
            )
        return method(batch)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active(trainer) or self.monitor.state is None:
            return
        self.report = self.monitor.compute()  # collective under DDP: every rank reaches it
        scalars = {self.prefix + key: value for key, value in self.report.items() if key != "spectrum"}
        scalars[self.prefix + "significant_directions"] = float(significant_directions(self.report["spectrum"]))
        # Every rank holds the same global values, so no further reduction (sync_dist) is needed.
        pl_module.log_dict(scalars, on_step=False, on_epoch=True, sync_dist=False)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_histogram"):
                    spectrum = self.report["spectrum"]
                    experiment.add_histogram(self.prefix + "spectrum", spectrum, global_step=trainer.current_epoch)
