"""The outputs of `hcl reproduce`: report.json, report.md and figures/, from the grid's checkpoints.

Final values are the last entries of each run's `history/<metric>` (what `hcl train` recorded after its
last epoch); the final class-mean spectrum is recomputed from the run's training embeddings. Each setting
is summarized over its seeds (claims.summarize). report.md is rendered from the JSON report alone, so the
tables in docs/reproducing.md can be regenerated from a saved report.json.

A report covers the settings that were run (all of the grid, or those of `--settings`); `not_run` lists
the others, and a claim that needs one of them is "not checked" (`checked` false, `holds` null, `missing`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import library_versions, load_checkpoint, write_atomically
from .claims import Claim, summarize
from .presets import PAPER_REFERENCE, Preset, Setting, preset_fields
from .runner import RunSpec

__all__ = [
    "FINAL_METRICS",
    "NOT_REPORTED",
    "SettingResult",
    "build_report",
    "claim_verdict",
    "claims_hold",
    "collect_results",
    "format_summary",
    "report_markdown",
    "write_outputs",
]

#: The final metrics summarized per setting (keys of the checkpoint's history).
FINAL_METRICS = (
    "test_mean_classifier_accuracy",
    "mean_classifier_accuracy",
    "equal_inner_product",
    "etf_distance",
    "zero_sum",
    "unit_norm",
    "within_class_variation",
    "nc1",
    "significant_directions",
    "loss",
)
_CONDITIONS = ("unit_norm", "zero_sum", "equal_inner_product", "within_class_variation")
#: The paper's cells of a setting its table has no numbers for (PAPER_REFERENCE has no entry).
NOT_REPORTED = "not reported"
_PAPER_COLUMNS = ("test_acc", "equal_inner_product", "directions")


@dataclass(frozen=True)
class SettingResult:
    """One setting over its seeds: final summaries, final spectra (seeds, d) and per-epoch histories."""

    setting: Setting
    seeds: list[int]
    finals: dict[str, dict[str, Any]]
    spectra: np.ndarray
    histories: dict[str, tuple[np.ndarray, np.ndarray]]  # metric -> (epochs, values (seeds, epochs))
    num_classes: int
    dim: int


def _read_run(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """(final class-mean spectrum, history, config) of one run's checkpoint."""
    from ..metrics import class_mean_spectrum

    run = load_checkpoint(path)
    num_classes = int(run.config["num_classes"])
    spectrum = class_mean_spectrum(run.train_embeddings, run.train_labels, num_classes=num_classes)
    return np.asarray(spectrum, dtype=np.float64), run.history, run.config


def collect_results(preset: Preset, specs: Sequence[RunSpec]) -> list[SettingResult]:
    """Read every finished run of `specs` and group them by setting, in the preset's order."""
    results = []
    for setting in preset.settings:
        runs = [spec for spec in specs if spec.setting == setting.name]
        if not runs:
            continue
        spectra, histories, configs = zip(*(_read_run(spec.path) for spec in runs), strict=True)
        finals = {metric: summarize([h[metric][-1] for h in histories]) for metric in FINAL_METRICS}
        epochs = np.arange(1, len(histories[0]["loss"]) + 1)
        curves = {key: (epochs, np.stack([h[key] for h in histories])) for key in _CONDITIONS}
        seeds = [spec.seed for spec in runs]
        num_classes, dim = int(configs[0]["num_classes"]), int(configs[0]["dim"])
        results.append(SettingResult(setting, seeds, finals, np.stack(spectra), curves, num_classes, dim))
    return results


def _json_safe(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null (a metric a run could not measure)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def build_report(
    preset: Preset, results: Sequence[SettingResult], claims: Sequence[Claim], *, epochs: int, data_dir: str | None
) -> dict[str, Any]:
    """The report.json object: preset, shared configuration, per-setting summaries, claims and verdicts."""
    config = preset_fields(preset) | {"epochs": epochs, "data_dir": data_dir}
    first = results[0]
    run = {result.setting.name for result in results}
    settings = [
        {
            "name": result.setting.name,
            "label": result.setting.label,
            "loss": result.setting.loss,
            "beta": result.setting.beta,
            "seeds": result.seeds,
            "final": result.finals,
            "paper": PAPER_REFERENCE.get(result.setting.name),
        }
        for result in results
    ]
    report = {
        "preset": preset.name,
        "description": preset.description,
        "epochs": epochs,
        "num_classes": first.num_classes,
        "dim": first.dim,
        "config": config,
        "settings": settings,
        "not_run": [setting.name for setting in preset.settings if setting.name not in run],
        "claims": [
            {
                "id": claim.id,
                "statement": claim.statement,
                "checked": claim.checked,
                "holds": claim.holds,
                "missing": list(claim.missing),
                "evidence": claim.evidence,
            }
            for claim in claims
        ],
        "versions": library_versions(),
    }
    return _json_safe(report)


def claim_verdict(claim: Mapping[str, Any]) -> str:
    """'holds', 'does not hold', or 'not checked' (holds null: a setting the claim compares was not run)."""
    if claim["holds"] is None:
        return "not checked"
    return "holds" if claim["holds"] else "does not hold"


def claims_hold(report: Mapping[str, Any]) -> bool:
    """True when no checked claim fails: claims not checked (settings not run) neither pass nor fail."""
    return all(claim["holds"] is not False for claim in report["claims"])


def _claims_title(claims: Sequence[Mapping[str, Any]]) -> str:
    """'5 of 6 claims hold', or '2 of 3 checked claims hold, 4 not checked' when settings were not run."""
    checked = [claim for claim in claims if claim["holds"] is not None]
    held = sum(bool(claim["holds"]) for claim in checked)
    if len(checked) == len(claims):
        return f"{held} of {len(claims)} claims hold"
    return f"{held} of {len(checked)} checked claims hold, {len(claims) - len(checked)} not checked"


def format_summary(summary: Mapping[str, Any] | None, scale: float = 1.0) -> str:
    """'mean ± std' of a summary times `scale` (3 significant digits, the std to 1); '-' when it is missing."""
    if summary is None or summary.get("mean") is None:
        return "-"
    return f"{summary['mean'] * scale:.3g} ± {(summary['std'] or 0.0) * scale:.1g}"


def _settings_table(report: Mapping[str, Any]) -> list[str]:
    lines = [
        f"| setting | test acc. (%) | equal inner product | ETF distance | zero-sum | directions (of {report['dim']}) "
        "| paper: test acc. (%) | paper: equal inner product | paper: directions (of 99) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for setting in report["settings"]:
        final, paper = setting["final"], setting.get("paper") or dict.fromkeys(_PAPER_COLUMNS, NOT_REPORTED)
        cells = [
            setting["label"],
            format_summary(final["test_mean_classifier_accuracy"], 100.0),
            format_summary(final["equal_inner_product"]),
            format_summary(final["etf_distance"]),
            format_summary(final["zero_sum"]),
            format_summary(final["significant_directions"]),
            *(paper.get(column, "-") for column in _PAPER_COLUMNS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _claim_lines(report: Mapping[str, Any]) -> list[str]:
    lines = []
    for claim in report["claims"]:
        verdict = f"**{claim_verdict(claim)}**"
        if claim["holds"] is None:
            verdict += f" (needs: {', '.join(claim['missing'])})"
        lines.append(f"- `{claim['id']}`: {verdict}. {claim['statement']}")
        lines += [f"    - {line}" for line in claim["evidence"]]
    return lines


def report_markdown(report: Mapping[str, Any], *, level: int = 1, figures: str | None = "figures") -> str:
    """report.md from the JSON report: the mean ± std table beside the paper's numbers, then each claim's verdict.

    level: the heading level of the title (sections are one deeper); figures: the folder the figure links
    point to (None: no figures section).
    """
    title, section = "#" * level, "#" * (level + 1)
    seeds = len(report["settings"][0]["seeds"])
    not_run = report.get("not_run") or []  # absent from reports written before --settings
    skipped = f" Not run (`--settings`): {', '.join(not_run)}." if not_run else ""
    lines = [
        f"{title} `hcl reproduce {report['preset']}`: {_claims_title(report['claims'])}",
        "",
        f"{report['description']}. {seeds} seeds, {report['epochs']} epochs; "
        "each cell is the mean ± standard deviation over the seeds of the final epoch's value (geometry of the "
        "training embeddings; test accuracy of the mean classifier with the training class means). The paper's "
        f"columns are its CIFAR-100 numbers (ResNet-50, d = 99, end of training).{skipped}",
        "",
        f"{section} Final values",
        "",
        *_settings_table(report),
        "",
        f"{section} Claims",
        "",
        *_claim_lines(report),
    ]
    if figures is not None:
        lines += [
            "",
            f"{section} Figures",
            "",
            f"![Class-mean spectrum, final epoch, mean and band over seeds]({figures}/spectrum.png)",
            "",
            f"![The four neural-collapse conditions over epochs, mean and band over seeds]({figures}/conditions.png)",
        ]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (`checkpoint.write_atomically`)."""
    return write_atomically(path, lambda handle: handle.write(data))


def _figure_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_figures(results: Sequence[SettingResult], directory: Path) -> list[Path]:
    """spectrum.png and conditions.png in `directory`: each setting's mean over seeds, in a band of one std."""
    from ..plots import conditions_figure, run_styles, spectrum_figure

    labels = [result.setting.label for result in results]
    styles = run_styles(labels)
    spectra = {result.setting.label: result.spectra for result in results}
    title = "Class-mean spectrum, final epoch (mean ± std over seeds)"
    spectrum = spectrum_figure(spectra, num_classes=results[0].num_classes, title=title, styles=styles)
    series = {result.setting.label: result.histories for result in results}
    return [
        _write_atomic(directory / "spectrum.png", _figure_bytes(spectrum)),
        _write_atomic(directory / "conditions.png", _figure_bytes(conditions_figure(series, styles))),
    ]


def write_outputs(out: str | Path, report: Mapping[str, Any], results: Sequence[SettingResult]) -> list[Path]:
    """DIR/report.json, DIR/report.md and DIR/figures/*.png, each written atomically; the paths written."""
    out = Path(out)
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    files = [
        _write_atomic(out / "report.json", text.encode()),
        _write_atomic(out / "report.md", report_markdown(report).encode()),
    ]
    return files + write_figures(results, out / "figures")
