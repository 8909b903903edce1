"""`hcl analyze`: final collapse metrics of runs side by side, as a table, JSON and figures.

A thin shell over `hcl_array.analysis` (numbers, streamed from the files in chunks) and `hcl_array.plots`
(figures): parse options, call, print. Problems with an input file become one line on stderr naming the file
and the key, exit code 2.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

EXIT_BAD_INPUT = 2


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf" if value > 0 else str(value)
    return f"{value:.4g}"


def _table(reports, rows) -> Table:
    table = Table(title="Final collapse metrics (train embeddings; test accuracies use the train class means)")
    table.add_column("metric", style="bold")
    table.add_column("NC target", style="dim", justify="right")
    for report in reports:
        table.add_column(report.name, justify="right")
    table.add_row("classes x dim", "", *(f"{r.num_classes} x {r.dim}" for r in reports))
    epochs = (str(r.epochs_recorded) if r.source == "checkpoint" else "-" for r in reports)
    table.add_row("epochs recorded", "", *epochs)
    for label, target, values in rows:
        table.add_row(label, target, *(_format(value) for value in values))
    return table


def _fail(console: Console, message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_BAD_INPUT)


class _RowsPerSecond(ProgressColumn):
    """The reading speed of the current task, in rows per second."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} rows/s", style="cyan")


def _reports(loaded, options, console: Console):
    """final_report of each run under one progress bar over all the chunks; returns the reports."""
    from ..analysis import StreamOptions, final_report, rows_to_read

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RowsPerSecond())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("reading embeddings", total=sum(rows_to_read(run) for run in loaded))
        stream = StreamOptions(**options, progress=lambda rows: progress.advance(task, rows))
        reports = [final_report(run, stream) for run in loaded]
        rate = progress.tasks[0].finished_speed or progress.tasks[0].speed or 0.0
    console.print(f"read {progress.tasks[0].completed:,.0f} rows ({rate:,.0f} rows/s)", highlight=False)
    return reports


def _write(errors: Console, console: Console, path: str, text: str, what: str) -> None:
    from ..analysis import write_text_atomic

    if path == "-":
        sys.stdout.write(text)
        return
    try:
        write_text_atomic(path, text)
    except OSError as error:
        raise _fail(errors, f"{path}: cannot write {what} ({error.strerror or error})") from None
    console.print(f"{what} written to {path}", highlight=False, soft_wrap=True)


def _write_json(errors: Console, console: Console, path: str, reports) -> None:
    from ..analysis import reports_to_json

    try:
        text = json.dumps(reports_to_json(reports), indent=2, allow_nan=False)
    except ValueError as error:  # a NaN/inf inside a run's saved config; metrics are already made finite
        raise _fail(errors, f"cannot write strict JSON ({error}); check the runs' config") from None
    _write(errors, console, path, text + "\n", "JSON")


def _write_plots(errors: Console, console: Console, loaded, plots: Path, epoch: int | None) -> None:
    from ..checkpoint import CheckpointError
    from ..plots import write_plots

    try:
        result = write_plots(loaded, plots, epoch=epoch)
    except (CheckpointError, OSError) as error:
        raise _fail(errors, str(error)) from None
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for path in result.files:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)


def _files_option(name: str, text: str) -> Any:
    return typer.Option(name, help=text, show_default=False, metavar="FILE", dir_okay=False)


_RUNS_HELP = "Checkpoints of `hcl train` or embeddings files: .npz, .npy, .safetensors, .pt (docs/analyze.md)."
_Runs = Annotated[list[Path], typer.Argument(help=_RUNS_HELP, show_default=False)]
_Json = Annotated[
    Optional[str], typer.Option("--json", help="Write the numbers as JSON to PATH ('-' for stdout).", metavar="PATH")
]
_Csv = Annotated[
    Optional[str],
    typer.Option(
        "--csv", help="Write the checkpoints' per-epoch history as CSV to PATH ('-': stdout).", metavar="PATH"
    ),
]
_PLOTS_HELP = "Write PNG figures (spectrum, conditions, accuracy, NC1/ETF) into DIR."
_Plots = Annotated[Optional[Path], typer.Option("--plots", help=_PLOTS_HELP, metavar="DIR", file_okay=False)]
_Epoch = Annotated[
    Optional[int],
    typer.Option("--epoch", help="Also plot the class-mean spectrum at recorded epoch E.", metavar="E", min=0),
]
_Labels = Annotated[
    Optional[list[Path]], _files_option("--labels", "Labels of each run (.npy or by --labels-key), in order.")
]
_Test = Annotated[Optional[list[Path]], _files_option("--test", "Test embeddings of each run, in order.")]
_TestLabels = Annotated[Optional[list[Path]], _files_option("--test-labels", "Labels of each --test file, in order.")]
_EmbeddingsKey = Annotated[
    Optional[str], typer.Option("--embeddings-key", help="Name of the embeddings array (default: embeddings).")
]
_LabelsKey = Annotated[Optional[str], typer.Option("--labels-key", help="Name of the labels array (default: labels).")]
_ChunkRows = Annotated[
    Optional[int], typer.Option("--chunk-rows", help="Rows read at a time (default: 128 MiB of float64 rows).", min=1)
]
_Backend = Annotated[str, typer.Option("--backend", help="numpy, torch, jax or cupy: where the metrics run.")]
_Device = Annotated[Optional[str], typer.Option("--device", help="Device of the backend, e.g. cuda:0.")]


def analyze(
    runs: _Runs,
    json_path: _Json = None,
    csv_path: _Csv = None,
    plots: _Plots = None,
    epoch: _Epoch = None,
    labels: _Labels = None,
    test: _Test = None,
    test_labels: _TestLabels = None,
    embeddings_key: _EmbeddingsKey = None,
    labels_key: _LabelsKey = None,
    chunk_rows: _ChunkRows = None,
    backend: _Backend = "numpy",
    device: _Device = None,
) -> None:
    """Compare runs: neural collapse (the simplex ETF) or dimensional collapse (a spectrum cliff)?"""
    from ..analysis import comparison_rows, history_csv, load_runs
    from ..checkpoint import CheckpointError

    # With --json - or --csv -, stdout carries only that; the table, progress and notes go to stderr.
    console = Console(stderr="-" in (json_path, csv_path))
    errors = Console(stderr=True)
    files = {"labels": labels, "test": test, "test_labels": test_labels}
    options = {"chunk_rows": chunk_rows, "backend": backend, "device": device}
    try:
        loaded = load_runs(runs, per_run=files, embeddings_key=embeddings_key, labels_key=labels_key)
        reports = _reports(loaded, options, console)
    except (CheckpointError, FileNotFoundError, ImportError, ValueError) as error:  # ImportError: a backend
        raise _fail(errors, str(error)) from None
    console.print(_table(reports, comparison_rows(reports)))
    if json_path is not None:
        _write_json(errors, console, json_path, reports)
    if csv_path is not None:
        _write(errors, console, csv_path, history_csv(loaded), "CSV")
    if plots is not None:
        _write_plots(errors, console, loaded, plots, epoch)
    elif epoch is not None:
        console.print("[yellow]note:[/] --epoch only affects --plots; no figures were requested")
