"""`hcl analyze`: final collapse metrics of runs side by side, as a table, JSON and figures.

A thin shell over `hcl_array.analysis` (numbers) and `hcl_array.plots` (figures): parse options, call,
print. Problems with an input file become one line on stderr naming the file and the key, exit code 2.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

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


_RunsArgument = Annotated[
    list[Path],
    typer.Argument(
        help="Checkpoints of `hcl train` or plain embeddings .npz files (embeddings, labels).", show_default=False
    ),
]
_JsonPathArgument = Annotated[
    Optional[str],
    typer.Option("--json", help="Write the numbers as JSON to PATH ('-' for stdout).", metavar="PATH"),
]
_PlotsArgument = Annotated[
    Optional[Path],
    typer.Option(
        "--plots",
        help="Write PNG figures (spectrum, conditions, accuracy, NC1/ETF) into DIR.",
        metavar="DIR",
        file_okay=False,
    ),
]
_EpochArgument = Annotated[
    Optional[int],
    typer.Option("--epoch", help="Also plot the class-mean spectrum at recorded epoch E.", metavar="E", min=0),
]


def analyze(
    runs: _RunsArgument,
    json_path: _JsonPathArgument = None,
    plots: _PlotsArgument = None,
    epoch: _EpochArgument = None,
) -> None:
    """Compare runs: neural collapse (the simplex ETF) or dimensional collapse (a spectrum cliff)?"""
    from ..analysis import comparison_rows, final_report, load_runs, reports_to_json
    from ..checkpoint import CheckpointError

    # With --json -, stdout carries only JSON; the table and notes go to stderr.
    console = Console(stderr=json_path == "-")
    errors = Console(stderr=True)
    try:
        loaded = load_runs(runs)
        reports = [final_report(run) for run in loaded]
    except (CheckpointError, FileNotFoundError) as error:
        raise _fail(errors, str(error)) from None
    console.print(_table(reports, comparison_rows(reports)))
    if json_path is not None:
        try:
            text = json.dumps(reports_to_json(reports), indent=2, allow_nan=False)
        except ValueError as error:  # a NaN/inf inside a run's saved config; metrics are already made finite
            raise _fail(errors, f"cannot write strict JSON ({error}); check the runs' config") from None
        if json_path == "-":
            sys.stdout.write(text + "\n")
        else:
            try:
                Path(json_path).write_text(text + "\n")
            except OSError as error:
                raise _fail(errors, f"{json_path}: cannot write JSON ({error.strerror or error})") from None
            console.print(f"JSON written to {json_path}", highlight=False, soft_wrap=True)
    if plots is not None:
        from ..plots import write_plots

        try:
            result = write_plots(loaded, plots, epoch=epoch)
        except (CheckpointError, OSError) as error:
            raise _fail(errors, str(error)) from None
        for note in result.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        for path in result.files:
            console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    elif epoch is not None:
        console.print("[yellow]note:[/] --epoch only affects --plots; no figures were requested")
