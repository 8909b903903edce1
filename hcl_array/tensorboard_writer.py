"""TensorBoard event files from any backend: the `tensorboard` package's own writer and protocol buffers.

No torch and no TensorFlow: NumPy and JAX runs log with `pip install hcl-array[tensorboard]` alone.
`TensorBoardWriter` writes scalars, histograms, text and PNG images; `TrainingLogger` is the per-epoch
callback of `hcl_array.training.train` behind `hcl train --tensorboard DIR` (tags: train/loss,
collapse/<metric>, test/<metric>, collapse/spectrum, config). tensorboard is imported when a writer is made.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TensorBoardWriter", "TrainingLogger", "config_markdown", "scalar_tag"]

#: Histogram buckets of the class-mean spectrum (log eigenvalue ratios, from 2 log(rtol) ~ -70 up to 0).
SPECTRUM_BUCKETS = 64


def _protos() -> Any:
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
        from tensorboard.plugins.text import metadata as text_metadata
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as error:
        raise ImportError(
            "TensorBoard logging needs the tensorboard package: pip install 'hcl-array[tensorboard]'"
        ) from error
    return event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, text_metadata, EventFileWriter


class TensorBoardWriter:
    """One event file in `logdir` (created if missing); use as a context manager or call `close()`."""

    def __init__(self, logdir: str | Path) -> None:
        protos = _protos()
        self._event, self._summary, self._tensor, self._shape, self._text, writer_class = protos
        Path(logdir).mkdir(parents=True, exist_ok=True)
        self.logdir = Path(logdir)
        self._writer = writer_class(str(logdir))

    def _write(self, values: list[Any], step: int) -> None:
        summary = self._summary.Summary(value=values)
        self._writer.add_event(self._event.Event(wall_time=time.time(), step=step, summary=summary))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Each finite value as a scalar under its tag (NaN, e.g. an accuracy without a test set, is skipped)."""
        entries = [
            self._summary.Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in values.items()
            if math.isfinite(value)
        ]
        if entries:
            self._write(entries, step)

    def histogram(self, tag: str, values: np.ndarray, step: int, *, buckets: int = SPECTRUM_BUCKETS) -> None:
        r"""The distribution of `values` in `buckets` equal-width buckets between their minimum and maximum.

        TensorBoard's bucket $k$ holds $\mathrm{limit}_{k-1} < v \le \mathrm{limit}_k$ (right-closed, unlike
        np.histogram).
        """
        values = np.asarray(values, dtype=np.float64).ravel()
        low, high = float(values.min()), float(values.max())
        limits = np.linspace(low, high if high > low else low + 1.0, buckets + 1)[1:]
        counts = np.bincount(np.searchsorted(limits, values, side="left"), minlength=buckets)
        histogram = self._summary.HistogramProto(
            min=low,
            max=high,
            num=float(values.size),
            sum=float(values.sum()),
            sum_squares=float(values @ values),
            bucket_limit=limits.tolist(),
            bucket=counts.astype(np.float64).tolist(),
        )
        self._write([self._summary.Summary.Value(tag=tag, histo=histogram)], step)

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """A Markdown text shown by TensorBoard's Text dashboard."""
        shape = self._shape.TensorShapeProto(dim=[self._shape.TensorShapeProto.Dim(size=1)])
        tensor = self._tensor.TensorProto(dtype="DT_STRING", string_val=[markdown.encode()], tensor_shape=shape)
        metadata = self._text.create_summary_metadata(display_name=tag, description="")
        self._write([self._summary.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)], step)

    def image(self, tag: str, png: bytes, step: int) -> None:
        """A PNG image (width and height are read from its header)."""
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        image = self._summary.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self._write([self._summary.Summary.Value(tag=tag, image=image)], step)

    def flush(self) -> None:
        """Write the pending events to disk."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def scalar_tag(key: str) -> str:
    """TensorBoard tag of an `hcl train` history key: loss -> train/loss, test_x -> test/x, else collapse/key."""
    if key == "loss":
        return "train/loss"
    if key.startswith("test_"):
        return "test/" + key.removeprefix("test_")
    return "collapse/" + key


def config_markdown(config: Any) -> str:
    """A run's configuration (a dataclass or mapping) as a two-column Markdown table."""
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    rows = [f"| {name} | {value!r} |" for name, value in fields.items()]
    return "\n".join(["| option | value |", "| --- | --- |", *rows])


def _spectrum_png(spectrum: np.ndarray, epoch: int) -> bytes:
    from .plots import spectrum_figure

    figure = spectrum_figure({"class means": spectrum}, num_classes=None, title=f"class-mean spectrum, epoch {epoch}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


class TrainingLogger:
    """The per-epoch callback of `train()` that writes TensorBoard events (step = the completed epoch).

    Every epoch: each history metric as a scalar (`scalar_tag`), the class-mean spectrum as the histogram
    collapse/spectrum. At the last epoch: the spectrum as a figure (collapse/spectrum_figure; rendering one
    costs ~0.1 s, so not every epoch). Once, at creation: the configuration as the text `config`.
    """

    def __init__(self, writer: TensorBoardWriter, config: Any) -> None:
        self.writer = writer
        writer.text("config", config_markdown(config))

    def __call__(self, report: Any) -> None:
        """Log one `EpochReport` (fields epoch, epochs, metrics, spectrum)."""
        self.writer.scalars({scalar_tag(key): value for key, value in report.metrics.items()}, report.epoch)
        if report.spectrum is not None:
            self.writer.histogram("collapse/spectrum", report.spectrum, report.epoch)
            if report.epoch == report.epochs:
                png = _spectrum_png(report.spectrum, report.epoch)
                self.writer.image("collapse/spectrum_figure", png, report.epoch)
        self.writer.flush()
