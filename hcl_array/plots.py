"""Figures of `hcl analyze --plots`: each run a labelled line, the neural-collapse target dashed.

Figures are `matplotlib.figure.Figure` objects built without pyplot, so nothing needs a display and no
global figure state leaks between calls (headless by construction, the Agg canvas renders the PNGs).
Every figure function returns its Figure, so tests can inspect the lines; `write_plots` saves them.
matplotlib is imported inside the functions: `import hcl_array` and `hcl --help` do not pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .analysis import HISTORY_METRICS, MetricInfo, Run, metric_history, spectrum_at_epoch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "PlotResult",
    "accuracy_figure",
    "conditions_figure",
    "history_figure",
    "nc1_etf_figure",
    "run_styles",
    "spectrum_figure",
    "write_plots",
]

Series = Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]  # run name -> metric key -> (epochs, values)

_TARGET_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2, "label": "neural collapse"}
_METRICS = {info.key: info for info in HISTORY_METRICS}
CONDITIONS = ("unit_norm", "zero_sum", "equal_inner_product", "within_class_variation")
ACCURACIES = ("test_mean_classifier_accuracy", "mean_classifier_accuracy")


def _new_figure(columns: int, rows: int = 1, *, width: float = 5.0, height: float = 4.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width * columns, height * rows), layout="constrained")


def run_styles(names: Sequence[str]) -> dict[str, dict[str, object]]:
    """Colour and line style per run, stable across figures; the style changes with the colour so that
    runs whose curves coincide (SCL and UCL often do) stay distinguishable. Dashed is kept for targets."""
    patterns = ("-", "-.", ":")
    return {
        name: {"color": f"C{index % 10}", "linestyle": patterns[index % 3], "linewidth": 1.6}
        for index, name in enumerate(names)
    }


def _integer_x(axes) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _line(axes, x: np.ndarray, values: np.ndarray, label: str, style: Mapping[str, object], **options: object) -> None:
    """values (n,): one line; (seeds, n): the mean over seeds, in a band of mean ± one standard deviation."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        axes.plot(x, values, label=label, **style, **options)
        return
    mean, std = values.mean(axis=0), values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1])
    axes.plot(x, mean, label=label, **style, **options)
    axes.fill_between(x, mean - std, mean + std, color=style.get("color"), alpha=0.2, linewidth=0)


def spectrum_figure(
    spectra: Mapping[str, np.ndarray],
    *,
    num_classes: int | None,
    title: str,
    styles: Mapping[str, Mapping[str, object]] | None = None,
) -> Figure:
    """Class-mean spectrum log(s_k/s_max) against k, one line per run; dashed: flat 0 over C-1 values.

    A (seeds, k) array draws the mean over seeds with a band of one standard deviation.

    `num_classes` sets the target (the simplex ETF has C-1 equal singular values); None omits it.
    """
    styles = styles or run_styles(list(spectra))
    figure = _new_figure(1, width=6.0)
    axes = figure.add_subplot()
    for name, spectrum in spectra.items():
        length = np.shape(spectrum)[-1]
        _line(axes, np.arange(1, length + 1), spectrum, name, styles[name], marker="." if length <= 30 else None)
    if num_classes is not None and num_classes > 1:
        axes.plot([1, num_classes - 1], [0.0, 0.0], **_TARGET_STYLE)
    axes.set(
        title=title,
        xlabel="index k (singular values of cov(class means), descending)",
        ylabel=r"$\log(\sigma_k / \sigma_{\max})$",
    )
    _integer_x(axes)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def history_figure(
    series: Series, metrics: Sequence[str], *, title: str, styles: Mapping[str, Mapping[str, object]] | None = None
) -> Figure:
    """One panel per metric key: its value over epochs for each run that has it, dashed at its NC target.

    Values of shape (seeds, epochs) draw the mean over seeds with a band of one standard deviation.
    """
    styles = styles or run_styles(list(series))
    # Four panels read better as a 2 x 2 grid than as one wide strip.
    columns = 2 if len(metrics) == 4 else len(metrics)
    rows = -(-len(metrics) // columns)
    figure = _new_figure(columns, rows, width=5.0, height=3.8)
    for position, key in enumerate(metrics, start=1):
        info: MetricInfo = _METRICS[key]
        axes = figure.add_subplot(rows, columns, position)
        for name, run_series in series.items():
            if key in run_series:
                epochs, values = run_series[key]
                _line(axes, epochs, values, name, styles[name])
        if info.target is not None:
            axes.axhline(info.target, **_TARGET_STYLE)
        if key == "nc1":  # NC1 spans decades on its way to 0; symlog shows both the decay and the target
            axes.set_yscale("symlog", linthresh=1e-2)
            axes.set_ylim(bottom=0.0)  # NC1 >= 0; symlog would otherwise mirror empty negative decades
        if not any(key in run_series for run_series in series.values()):
            axes.text(0.5, 0.5, "not recorded by training", transform=axes.transAxes, ha="center", color="gray")
        axes.set(title=info.label, xlabel="epoch", ylabel=info.label)
        _integer_x(axes)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(title)
    return figure


def conditions_figure(series: Series, styles: Mapping[str, Mapping[str, object]] | None = None) -> Figure:
    """The paper's four neural-collapse conditions over epochs (targets 0)."""
    title = "Neural-collapse conditions of the class means (train)"
    return history_figure(series, CONDITIONS, title=title, styles=styles)


def accuracy_figure(series: Series, styles: Mapping[str, Mapping[str, object]] | None = None) -> Figure:
    """Mean-classifier accuracy over epochs, test and train panels as recorded (higher is better, no target)."""
    keys = [key for key in ACCURACIES if any(key in s for s in series.values())]
    return history_figure(
        series, keys or [ACCURACIES[0]], title="Mean-classifier accuracy (training class means)", styles=styles
    )


def nc1_etf_figure(series: Series, styles: Mapping[str, Mapping[str, object]] | None = None) -> Figure:
    """NC1 (within-class variability relative to between-class) and distance to the simplex ETF over epochs."""
    keys = [key for key in ("nc1", "etf_distance") if any(key in s for s in series.values())]
    return history_figure(series, keys or ["etf_distance"], title="NC1 and ETF distance over epochs", styles=styles)


@dataclass
class PlotResult:
    """The PNG files written and the notes on what was skipped (for the CLI to print)."""

    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _save(figure: Figure, path: Path, result: PlotResult) -> None:
    figure.savefig(path, dpi=120)
    result.files.append(path)


def _common_num_classes(runs: Sequence[Run]) -> int | None:
    counts = {run.num_classes for run in runs}
    return counts.pop() if len(counts) == 1 else None


def write_plots(runs: Sequence[Run], directory: str | Path, *, epoch: int | None = None) -> PlotResult:
    """Write the figures for `runs` into `directory` (created) as PNG files; return files and notes.

    spectrum_final.png always; spectrum_epoch_<E>.png when `epoch` is given (runs that did not record
    it are noted and left out); conditions.png, accuracy.png and nc1_etf.png from the runs that carry a
    history (plain embeddings files do not, and are noted).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result = PlotResult()
    num_classes = _common_num_classes(runs)
    styles = run_styles([run.name for run in runs])
    final = {run.name: spectrum_at_epoch(run)[1] for run in runs}
    _save(
        spectrum_figure(final, num_classes=num_classes, title="Class-mean spectrum, final embeddings", styles=styles),
        directory / "spectrum_final.png",
        result,
    )
    if epoch is not None:
        at_epoch = {}
        for run in runs:
            try:
                at_epoch[run.name] = spectrum_at_epoch(run, epoch)[1]
            except ValueError as error:  # CheckpointError: that epoch was not recorded
                result.notes.append(f"{run.name}: no spectrum at epoch {epoch}: {error}")
        if at_epoch:
            _save(
                spectrum_figure(
                    at_epoch, num_classes=num_classes, title=f"Class-mean spectrum, epoch {epoch}", styles=styles
                ),
                directory / f"spectrum_epoch_{epoch}.png",
                result,
            )
    series = {}
    for run in runs:
        history = metric_history(run)
        if history:
            series[run.name] = history
        else:
            result.notes.append(
                f"{run.name}: {run.path} has no per-epoch history (plain embeddings file); history plots skip it"
            )
    if not series:
        result.notes.append("no run has a history: conditions, accuracy and NC1/ETF plots were not drawn")
        return result
    _save(conditions_figure(series, styles), directory / "conditions.png", result)
    if any(key in s for s in series.values() for key in ACCURACIES):
        _save(accuracy_figure(series, styles), directory / "accuracy.png", result)
    else:
        result.notes.append("no run recorded an accuracy history: accuracy.png was not drawn")
    _save(nc1_etf_figure(series, styles), directory / "nc1_etf.png", result)
    return result
