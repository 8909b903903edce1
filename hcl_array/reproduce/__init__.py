"""`hcl reproduce PRESET`: the paper's claims as one command, over seeds, with a verdict.

    result = reproduce("digits", out="repro", seeds=3, jobs=2)
    result.report["claims"]        # [{"id", "statement", "checked", "holds", "missing", "evidence"}, ...]
    reproduce("cifar100", out="c100", data_dir="data", settings="scl,hscl-beta5")  # a part of the grid

A preset (presets.py) is a grid of losses on one training setup; every (setting, seed) is an `hcl train`
run with its own resumable checkpoint (runner.py); the final values are summarized over seeds and the
claims tested against the spread (claims.py); report.json, report.md and figures are written (report.py).
See docs/reproducing.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .claims import Claim, check_claims, summarize
from .presets import PAPER_REFERENCE, PRESETS, Preset, Setting, check_requirements, get_preset, select_settings
from .report import build_report, claims_hold, collect_results, report_markdown, write_outputs
from .runner import RunOutcome, RunSpec, plan_runs, run_grid

__all__ = [
    "PAPER_REFERENCE",
    "PRESETS",
    "Claim",
    "Preset",
    "ReproduceResult",
    "RunOutcome",
    "RunSpec",
    "Setting",
    "check_claims",
    "default_jobs",
    "get_preset",
    "plan_runs",
    "report_markdown",
    "reproduce",
    "run_grid",
    "select_settings",
    "summarize",
]


@dataclass(frozen=True)
class ReproduceResult:
    """The report (the report.json object), what happened to each run, and the files written."""

    report: dict[str, Any]
    outcomes: list[RunOutcome]
    files: list[Path]

    @property
    def all_hold(self) -> bool:
        """True when every claim checked holds (claims not checked, for settings not run, do not count)."""
        return claims_hold(self.report)


def default_jobs(preset: Preset) -> int:
    """The preset's own default (1 for the GPU preset), else the number of CPUs this process may use."""
    if preset.default_jobs is not None:
        return preset.default_jobs
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return len(usable) if usable else os.cpu_count() or 1


def reproduce(
    preset: str | Preset,
    out: str | Path,
    *,
    seeds: int = 3,
    jobs: int | None = None,
    epochs: int | None = None,
    data_dir: str | Path | None = None,
    settings: str | Sequence[str] | None = None,
    on_plan: Callable[[list[RunSpec]], None] | None = None,
    on_run: Callable[[RunOutcome], None] | None = None,
    on_epoch: Callable[[RunSpec, int], None] | None = None,
) -> ReproduceResult:
    """Train (or reuse, or resume) every run of the preset's grid, test the claims, write the report to `out`.

    settings: setting names (`Setting.name`, a sequence or one comma-separated string) to run a part of the
    grid; the report covers those, and a claim comparing a setting not run is reported as not checked.
    on_plan(specs) is called once the existing checkpoints are checked, on_epoch(spec, epoch) as a run
    completes an epoch, on_run(outcome) as each run finishes.
    Raises ValueError / FileNotFoundError / BackendUnavailable / CheckpointError with one-line messages.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    data_dir = None if data_dir is None else str(Path(data_dir).resolve())  # the same folder, however it is named
    selected = select_settings(preset, settings)
    check_requirements(preset, data_dir)
    specs = plan_runs(preset, out, seeds, epochs=epochs, data_dir=data_dir, settings=selected)
    jobs = jobs or default_jobs(preset)
    outcomes = run_grid(specs, jobs=jobs, on_plan=on_plan, on_done=on_run, on_epoch=on_epoch)
    results = collect_results(preset, specs)
    finals = {result.setting.name: result.finals for result in results}
    claims = check_claims(preset, finals)
    report = build_report(preset, results, claims, epochs=specs[0].config.epochs, data_dir=data_dir)
    return ReproduceResult(report, outcomes, write_outputs(out, report, results))
