"""`hcl reproduce PRESET`: run the preset's grid over seeds, show progress, print the verdicts (no computation here)."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .train import USER_ERRORS, fail

EXIT_INTERRUPTED = 130

_OutOption = Annotated[
    Optional[Path],
    typer.Option(
        help=(
            "Output folder: runs/<setting>-seed<k>.npz, report.json, report.md, figures/. Rerunning into the "
            "same folder reuses finished runs and resumes unfinished ones. \\[default: reproduce-<PRESET>]"
        ),
        file_okay=False,
    ),
]
_SettingsOption = Annotated[
    Optional[str],
    typer.Option(
        help=(
            "Comma-separated setting names (e.g. scl,hscl-beta5) to run only that part of the grid, seeds x "
            "settings runs; claims that compare a setting not run are reported as not checked. "
            "\\[default: the whole grid]"
        ),
    ),
]


def reproduce_command(
    preset: str = typer.Argument(
        ..., help="digits (real data, CPU, minutes), synthetic (CPU), or cifar100 (the paper's GPU setting)."
    ),
    seeds: int = typer.Option(3, help="Seeds per setting: 0, 1, ..., N-1.", min=1),
    jobs: Optional[int] = typer.Option(
        None,
        help="Parallel worker processes, each single-threaded. \\[default: the CPU count; 1 for cifar100]",
        min=1,
    ),
    out: _OutOption = None,
    epochs: Optional[int] = typer.Option(None, help="Epochs of every run. \\[default: the preset's]", min=1),
    data_dir: Optional[Path] = typer.Option(
        None, help="cifar100: the folder holding the CIFAR-100 files (nothing is downloaded). \\[default: none]"
    ),
    settings: _SettingsOption = None,
    check: bool = typer.Option(
        False, "--check", help="Exit with status 1 when a checked claim does not hold (not checked ones pass)."
    ),
) -> None:
    """Reproduce the paper's claims over seeds: train the preset's grid, test each claim, write the report."""
    from ..reproduce import reproduce

    target = out or Path(f"reproduce-{preset}")
    progress = _RunProgress()
    try:
        result = reproduce(
            preset,
            target,
            seeds=seeds,
            jobs=jobs,
            epochs=epochs,
            data_dir=data_dir,
            settings=settings,
            on_plan=progress.planned,
            on_run=progress.finished,
            on_epoch=progress.epoch,
        )
    except USER_ERRORS as error:
        raise fail(str(error)) from None
    except BrokenProcessPool:
        message = "a worker process stopped abruptly (killed, or out of memory); run the command again to resume"
        raise fail(f"{message}, perhaps with fewer --jobs") from None
    except KeyboardInterrupt:
        progress.stop()
        done = sum(progress.counts.values())
        message = f"interrupted after {done} finished runs; run the same command again to resume the rest"
        Console(stderr=True).print(f"[yellow]{escape(message)}[/]", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        progress.stop()
    _print_summary(result, target, progress.counts)
    if check and not result.all_hold:
        raise typer.Exit(1)


class _RunProgress:
    """A rich bar of the runs done out of the total, started once the grid is planned (not on a setup error)."""

    def __init__(self) -> None:
        columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
        self.bar = Progress(TextColumn("[bold]runs"), *columns)
        self.task: Any = None
        self.counts = {"reused": 0, "resumed": 0, "trained": 0}

    def planned(self, specs: list[Any]) -> None:
        self.bar.start()
        self.task = self.bar.add_task("", total=len(specs))

    def finished(self, outcome: Any) -> None:
        self.counts[outcome.status] += 1
        self.bar.update(self.task, advance=1, description=f"{outcome.status} {outcome.spec.path.name}")

    def epoch(self, spec: Any, epoch: int) -> None:
        self.bar.update(self.task, description=f"{spec.path.stem}: epoch {epoch}/{spec.config.epochs}")

    def stop(self) -> None:
        self.bar.stop()


def _print_summary(result: Any, target: Path, counts: dict[str, int]) -> None:
    from ..reproduce.report import claim_verdict, format_summary

    console = Console()
    report = result.report
    table = Table(
        title=f"hcl reproduce {report['preset']}: mean ± std over {len(report['settings'][0]['seeds'])} seeds"
    )
    for column in ("setting", "test acc. %", "eq. inner", "ETF dist.", "zero-sum", "directions"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for setting in report["settings"]:
        final = setting["final"]
        table.add_row(
            setting["label"],
            *(
                format_summary(final[key], scale)
                for key, scale in (
                    ("test_mean_classifier_accuracy", 100.0),
                    ("equal_inner_product", 1.0),
                    ("etf_distance", 1.0),
                    ("zero_sum", 1.0),
                    ("significant_directions", 1.0),
                )
            ),
        )
    console.print(table)
    colours = {"holds": "green", "does not hold": "red", "not checked": "yellow"}
    for claim in report["claims"]:
        verdict = claim_verdict(claim)
        needs = f" (needs: {', '.join(claim['missing'])})" if claim["holds"] is None else ""
        console.print(f"[{colours[verdict]}]{verdict:<13}[/]  {claim['id']}{escape(needs)}", highlight=False)
    runs = ", ".join(f"{count} {status}" for status, count in counts.items())
    console.print(f"runs: {runs}   report: [bold]{target / 'report.md'}[/]", highlight=False)
