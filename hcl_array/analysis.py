"""The data behind `hcl analyze`: load runs, compute their final collapse metrics, compare them.

A run is an `hcl train` checkpoint or a plain embeddings file of any model (see `load_embeddings`).
Final metrics are `collapse_report` on the training embeddings (the geometry the loss shapes) and, when
the file has a test set, `collapse_report` on the test embeddings with the training class means as the
classifier (`reference`), which is the paper's mean-classifier test accuracy. Histories over epochs
come from the checkpoint: `history/<name>` arrays where training recorded them, and the class-mean
conditions recomputed from the `class_means` array (C rows per epoch) where it did not.

Everything here is NumPy and plain Python; the figures are in `hcl_array.plots`, the terminal table in
`hcl_array.cli.analyze`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._array_api import device, namespace
from .checkpoint import CheckpointError, write_atomically
from .embeddings_io import EmbeddingsFile, RunFiles, open_run

__all__ = [
    "HISTORY_METRICS",
    "TABLE_METRICS",
    "MetricInfo",
    "Run",
    "RunReport",
    "comparison_rows",
    "final_report",
    "load_run",
    "load_runs",
    "metric_history",
    "recorded_epochs",
    "reports_to_json",
    "run_name",
    "spectrum_at_epoch",
    "StreamOptions",
    "history_csv",
    "rows_to_read",
    "write_text_atomic",
]


@dataclass(frozen=True)
class MetricInfo:
    """How one metric is shown: its report key, a human label, and its value at neural collapse."""

    key: str
    label: str
    target: float | None  # None: no fixed target (accuracies: higher is better; rankme: C - 1)


# Rows of the comparison table, in the order the paper discusses them: its four conditions, the
# standard NC metrics, then dimensional collapse and the probes.
TABLE_METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("unit_norm", "unit-norm", 0.0),
    MetricInfo("zero_sum", "zero-sum", 0.0),
    MetricInfo("equal_inner_product", "equal inner product", 0.0),
    MetricInfo("within_class_variation", "within-class variation", 0.0),
    MetricInfo("nc1", "NC1", 0.0),
    MetricInfo("nc1_quotient", "tr(Sw)/tr(Sb)", 0.0),
    MetricInfo("cdnv", "CDNV", 0.0),
    MetricInfo("equinorm", "equinorm", 0.0),
    MetricInfo("equiangularity", "equiangularity", 0.0),
    MetricInfo("etf_distance", "ETF distance", 0.0),
    MetricInfo("rankme", "RankMe", None),
    MetricInfo("ncc_accuracy", "NCC accuracy (train)", None),
    MetricInfo("mean_classifier_accuracy", "mean-classifier acc. (train)", None),
)
TEST_METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("ncc_accuracy", "NCC accuracy (test)", None),
    MetricInfo("mean_classifier_accuracy", "mean-classifier acc. (test)", None),
)

# The class-mean metrics that can be recomputed for any epoch from the checkpoint's class_means.
_FROM_CLASS_MEANS = ("unit_norm", "zero_sum", "equal_inner_product", "etf_distance")
# Per-epoch curves `hcl analyze --plots` draws; history/<key> is used when training recorded it.
HISTORY_METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("unit_norm", "unit-norm", 0.0),
    MetricInfo("zero_sum", "zero-sum", 0.0),
    MetricInfo("equal_inner_product", "equal inner product", 0.0),
    MetricInfo("within_class_variation", "within-class variation", 0.0),
    MetricInfo("nc1", "NC1", 0.0),
    MetricInfo("etf_distance", "ETF distance", 0.0),
    MetricInfo("test_mean_classifier_accuracy", "mean-classifier accuracy (test)", None),
    MetricInfo("mean_classifier_accuracy", "mean-classifier accuracy (train)", None),
    MetricInfo("loss", "training loss", None),
)
# Other names a trainer may have used for the same per-epoch quantity (first match wins).
_HISTORY_ALIASES: dict[str, tuple[str, ...]] = {
    "test_mean_classifier_accuracy": ("test_mean_classifier_accuracy", "test_accuracy"),
    "mean_classifier_accuracy": ("mean_classifier_accuracy", "train_mean_classifier_accuracy"),
}
_EPOCH_KEYS = ("epoch", "epochs")


@dataclass(frozen=True)
class Run:
    """One opened run: its files (read in chunks), the name it is shown under, and its class count."""

    path: Path
    name: str
    data: RunFiles
    num_classes: int
    # the training set's class statistics once final_report has streamed them (the final spectrum reads them)
    statistics: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class StreamOptions:
    """How final_report reads the embeddings and where it computes: rows per chunk, backend and device.

    progress, when given, is called with the number of rows of each chunk as it is processed.
    """

    chunk_rows: int | None = None  # None: CHUNK_BYTES of float64 rows
    backend: str = "numpy"
    device: str | None = None
    progress: Callable[[int], None] | None = None


@dataclass(frozen=True)
class RunReport:
    """Final metrics of one run: `train` and `test` are collapse_report dicts without the spectrum."""

    path: Path
    name: str
    source: str
    config: dict[str, Any]
    num_classes: int
    dim: int
    epochs_recorded: int
    train: dict[str, float]
    test: dict[str, float] | None
    spectrum: np.ndarray
    significant_directions: int  # spectrum values above log(1e-3), as `hcl train` records them


def _format_number(value: Any) -> str:
    number = float(value)
    return f"{number:g}" if number != int(number) or abs(number) >= 1e6 else str(int(number))


def _loss_and_beta(config: Mapping[str, Any]) -> tuple[str | None, Any]:
    """The loss name and the hardness the loss actually used, from `hcl train`'s config or a flat one."""
    settings = config.get("train_config", config)
    options = config.get("loss_options", {})
    loss = settings.get("loss") if isinstance(settings, Mapping) else None
    # loss_options holds the resolved beta (a default filled in); train_config may say None.
    beta = options.get("beta") if isinstance(options, Mapping) and "beta" in options else None
    if beta is None and isinstance(settings, Mapping):
        beta = settings.get("beta")
    return loss, beta


def run_name(config: Mapping[str, Any], path: str | Path) -> str:
    """A short run label from its config, e.g. 'HSCL beta=5' or 'SCL'; the file stem when there is no loss."""
    loss, beta = _loss_and_beta(config)
    if not loss:
        return Path(path).stem
    name = str(loss).upper()
    # beta only matters for the hard-negative losses; SCL/UCL may carry a value that would read as a setting.
    is_hard = name.startswith("H") or "HCL" in name
    if beta is not None and is_hard:
        name += f" beta={_format_number(beta)}"
    return name


def _unique_names(names: Sequence[str], paths: Sequence[Path]) -> list[str]:
    """Names, with the file name appended where two runs would otherwise share a label."""
    return [
        f"{name} ({path.name})" if names.count(name) > 1 else name for name, path in zip(names, paths, strict=False)
    ]


def _num_classes(data: RunFiles, path: Path) -> int:
    """C from the checkpoint's class_means, else max label + 1; C > N is refused (most classes would be empty)."""
    if data.class_means is not None and data.class_means.shape[0] > 0:
        num_classes = int(data.class_means.shape[1])
    else:
        labels = [data.train.labels] + ([data.test.labels] if data.test is not None else [])
        num_classes = max(int(y.max(initial=-1)) for y in labels) + 1
    if data.train.num_rows == 0 or num_classes < 1:
        raise CheckpointError(f"{data.train.embeddings.where} has no rows; nothing to analyze")
    if num_classes > data.train.num_rows:
        problem = f"the labels name {num_classes} classes but there are only {data.train.num_rows} rows"
        raise CheckpointError(f"{data.train.embeddings.where}: {problem}; C must not exceed N (check the labels)")
    return num_classes


def load_run(path: str | Path, name: str | None = None, **files: Any) -> Run:
    """Open a checkpoint or embeddings file (any format of `open_run`, whose keyword options `files` takes).

    Only the labels and a checkpoint's history are read here; CheckpointError/FileNotFoundError name the file.
    """
    path = Path(path)
    data = open_run(path, **files)
    return Run(path, name or run_name(data.config, path), data, _num_classes(data, path))


def load_runs(
    paths: Sequence[str | Path], *, per_run: Mapping[str, Sequence[Any]] | None = None, **shared: Any
) -> list[Run]:
    """load_run for each path, named so that no two runs share a label.

    per_run maps an open_run option (labels, test, test_labels) to one value per path; shared options
    (embeddings_key, labels_key) apply to every run.
    """
    per_run = {key: list(values) for key, values in (per_run or {}).items() if values}
    for key, values in per_run.items():
        if len(values) != len(paths):
            raise CheckpointError(f"--{key.replace('_', '-')} was given {len(values)} times for {len(paths)} runs")
    runs = [
        load_run(path, **shared, **{key: values[index] for key, values in per_run.items()})
        for index, path in enumerate(paths)
    ]
    names = _unique_names([run.name for run in runs], [run.path for run in runs])
    return [Run(run.path, name, run.data, run.num_classes) for run, name in zip(runs, names, strict=False)]


def _scalars(report: Mapping[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in report.items() if key != "spectrum"}


def _placement(options: StreamOptions) -> Callable[[np.ndarray], Any]:
    """NumPy chunks as they are, or placed on the backend's device (float64 enabled there, e.g. JAX x64)."""
    if options.backend == "numpy" and options.device in (None, "cpu"):
        return lambda array: array
    from .backends import get_backend

    adapter = get_backend(options.backend)
    adapter.from_numpy(np.zeros(1), dtype="float64", device=options.device)  # checks the device early
    return lambda array: adapter.from_numpy(array, device=options.device)


# Default chunk: 128 MiB of float64 rows (32,768 rows at d = 512); the metrics hold a few such copies at once.
CHUNK_BYTES = 2**27


def _chunks(file: EmbeddingsFile, options: StreamOptions, place: Callable) -> Iterator[tuple[Any, Any]]:
    chunk_rows = options.chunk_rows or max(1024, CHUNK_BYTES // (8 * file.dim))
    for rows, labels in file.chunks(chunk_rows):
        yield place(rows), place(labels)
        if options.progress is not None:
            options.progress(rows.shape[0])


def _stream_report(
    file: EmbeddingsFile, num_classes: int, options: StreamOptions, place: Callable, reference: Any = None
) -> tuple[Any, dict[str, Any]]:
    """Two passes over the file: class statistics, then the probe (against `reference`'s means if given)."""
    from .metrics import collapse_init, collapse_result, collapse_update, probe_init, probe_update

    try:
        state = None
        for rows, labels in _chunks(file, options, place):
            if state is None:  # namespace and device of the placed chunks
                state = collapse_init(num_classes, file.dim, xp=namespace(rows), device=device(rows))
            state = collapse_update(state, rows, labels)
        probe = probe_init(state, reference=reference)
        for rows, labels in _chunks(file, options, place):
            probe = probe_update(probe, rows, labels)
        return state, collapse_result(state, probe)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as error:  # e.g. labels out of range for a checkpoint's classes
        raise CheckpointError(f"{file.path}: cannot compute metrics ({error})") from error


def rows_to_read(run: Run) -> int:
    """Rows final_report reads: two passes over the training set, two over the test set."""
    test = 0 if run.data.test is None else run.data.test.num_rows
    return 2 * (run.data.train.num_rows + test)


def _significant_directions(spectrum: np.ndarray) -> int:
    from .training import significant_directions  # the same cut-off as training's history

    return significant_directions(np.asarray(spectrum))


def final_report(run: Run, options: StreamOptions | None = None) -> RunReport:
    """collapse_report of the training embeddings, and of the test embeddings with the training class means,
    streamed from the files in chunks (memory O(chunk d + C d + d^2)); equal to the in-memory report."""
    options = options or StreamOptions()
    data, place = run.data, _placement(options)
    state, train = _stream_report(data.train, run.num_classes, options, place)
    run.statistics["train"] = state
    test = None
    if data.test is not None and data.test.num_rows > 0:
        test = _scalars(_stream_report(data.test, run.num_classes, options, place, reference=state)[1])
    epochs = 0 if data.class_means is None else int(data.class_means.shape[0])
    return RunReport(
        path=run.path,
        name=run.name,
        source=data.source,
        config=dict(data.config),
        num_classes=run.num_classes,
        dim=data.train.dim,
        epochs_recorded=epochs,
        train=_scalars(train),
        test=test,
        spectrum=np.asarray(train["spectrum"], dtype=np.float64),
        significant_directions=_significant_directions(train["spectrum"]),
    )


def _json_number(value: float) -> float | None:
    # Strict JSON has no inf/NaN; the metrics never return NaN, so null means an infinite ratio.
    return value if math.isfinite(value) else None


def reports_to_json(reports: Sequence[RunReport]) -> dict[str, Any]:
    """The numbers of `hcl analyze --json`: one object per run, non-finite values as null."""

    def numbers(metrics: Mapping[str, float] | None) -> dict[str, float | None] | None:
        return None if metrics is None else {key: _json_number(value) for key, value in metrics.items()}

    return {
        "runs": [
            {
                "file": str(report.path),
                "name": report.name,
                "source": report.source,
                "config": report.config,
                "num_classes": report.num_classes,
                "dim": report.dim,
                "epochs_recorded": report.epochs_recorded,
                "train": numbers(report.train),
                "test": numbers(report.test),
                "significant_directions": report.significant_directions,
                "spectrum": [_json_number(float(value)) for value in report.spectrum],
            }
            for report in reports
        ]
    }


def comparison_rows(reports: Sequence[RunReport]) -> list[tuple[str, str, list[float | None]]]:
    """Rows (label, target, one value per run) of the side-by-side table; None where a run lacks the value."""
    num_classes = {report.num_classes for report in reports}
    rankme_target = f"C-1 = {num_classes.pop() - 1}" if len(num_classes) == 1 else "C-1"
    rows: list[tuple[str, str, list[float | None]]] = []
    for info in TABLE_METRICS:
        target = rankme_target if info.key == "rankme" else ("high" if info.target is None else f"{info.target:g}")
        rows.append((info.label, target, [report.train.get(info.key) for report in reports]))
    rows.append(("significant directions", rankme_target, [float(r.significant_directions) for r in reports]))
    for info in TEST_METRICS:
        rows.append((info.label, "high", [None if r.test is None else r.test.get(info.key) for r in reports]))
    return rows


# ----------------------------------------------------------------------------------------------------
# Histories over epochs.


def recorded_epochs(data: RunFiles) -> np.ndarray:
    """The epoch number of each row of class_means (history/epoch when recorded, else 1, 2, ..., E)."""
    count = 0 if data.class_means is None else int(data.class_means.shape[0])
    for key in _EPOCH_KEYS:
        epochs = data.history.get(key)
        if epochs is not None and epochs.shape == (count,):
            return np.asarray(epochs).astype(np.int64)
    return np.arange(1, count + 1, dtype=np.int64)


def _means_metric(name: str, means: np.ndarray) -> float:
    """A class-mean metric of one (C, d) matrix: each class is its single mean row."""
    from . import metrics

    labels = np.arange(means.shape[0], dtype=np.int64)
    return float(getattr(metrics, name)(means, labels, num_classes=means.shape[0]))


def _finite_class_means(data: RunFiles, epoch_index: int) -> np.ndarray | None:
    means = np.asarray(data.class_means[epoch_index], dtype=np.float64)
    return means if np.all(np.isfinite(means)) else None


def metric_history(run: Run) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-epoch (epochs, values) for each metric of HISTORY_METRICS the run has; empty for a plain file.

    A recorded history/<key> (or an alias such as test_accuracy) wins; the class-mean conditions are
    otherwise recomputed from class_means. Metrics the run has no way to provide are left out.
    """
    data = run.data
    if data.class_means is None or data.class_means.shape[0] == 0:
        return {}
    epochs = recorded_epochs(data)
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for info in HISTORY_METRICS:
        for key in _HISTORY_ALIASES.get(info.key, (info.key,)):
            values = np.asarray(data.history.get(key, []), dtype=np.float64)
            # An all-NaN history is a quantity the run could not measure (no test set with a free encoder).
            if values.size and not np.all(np.isnan(values)):
                series[info.key] = (epochs, values)
                break
    missing = [name for name in _FROM_CLASS_MEANS if name not in series]
    if missing:
        columns: dict[str, list[float]] = {name: [] for name in missing}
        for index in range(len(epochs)):
            means = _finite_class_means(data, index)
            for name in missing:
                columns[name].append(math.nan if means is None else _means_metric(name, means))
        series |= {name: (epochs, np.asarray(values)) for name, values in columns.items()}
    return series


def spectrum_at_epoch(run: Run, epoch: int | None = None) -> tuple[int | None, np.ndarray]:
    """(epoch, log(s_k/s_1)) of the class means: the recorded epoch `epoch`, or the final embeddings if None.

    The class-mean spectrum of the means M equals that of any embeddings with those class means, so a
    recorded epoch needs only class_means[epoch]. Raises CheckpointError when that epoch was not recorded.
    """
    from .metrics import class_mean_spectrum, collapse_result

    data = run.data
    if epoch is None:
        if "train" not in run.statistics:  # streams the training set once; final_report leaves it here
            final_report(run)
        return None, np.asarray(collapse_result(run.statistics["train"])["spectrum"], dtype=np.float64)
    epochs = recorded_epochs(data)
    matches = np.flatnonzero(epochs == epoch)
    if data.class_means is None or matches.size == 0:
        have = f"recorded epochs {epochs.min()}..{epochs.max()}" if epochs.size else "no recorded epochs"
        raise CheckpointError(f"{run.path}: 'class_means' has no epoch {epoch} ({have})")
    means = _finite_class_means(data, int(matches[-1]))
    if means is None:
        raise CheckpointError(f"{run.path}: 'class_means' at epoch {epoch} has NaN or infinite values")
    labels = np.arange(means.shape[0], dtype=np.int64)
    return epoch, np.asarray(class_mean_spectrum(means, labels, num_classes=means.shape[0]), dtype=np.float64)


def history_csv(runs: Sequence[Run]) -> str:
    """The per-epoch history of each checkpoint as CSV: columns run, epoch, then every metric some run has
    (the keys of metric_history, in HISTORY_METRICS order); empty where a run lacks a metric, nan where a
    recorded value is NaN. Plain embeddings files have no history and add no rows."""
    series = {run.name: metric_history(run) for run in runs}
    keys = [info.key for info in HISTORY_METRICS if any(info.key in history for history in series.values())]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "epoch", *keys])
    for name, history in series.items():
        if not history:
            continue
        epochs = next(iter(history.values()))[0]
        for index, epoch in enumerate(epochs):
            values = [repr(float(history[key][1][index])) if key in history else "" for key in keys]
            writer.writerow([name, int(epoch), *values])
    return buffer.getvalue()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically (`checkpoint.write_atomically`)."""
    return write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))
