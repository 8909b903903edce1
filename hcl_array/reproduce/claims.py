"""The paper's claims as tests over seeds: each compares means, and asks that a difference exceed the spread.

A setting's final value of a metric is summarized over its seeds as mean, standard deviation (sample,
ddof = 1; 0 with one seed) and the values. "a is below b beyond the spread" means

    mean(b) - mean(a) > std(a) + std(b),

so two settings whose one-standard-deviation intervals overlap never count as different. The tests and
thresholds are documented in docs/reproducing.md ("The claims and their tests").

A claim is tested only when every setting it compares was run (`hcl reproduce --settings` runs a part of
the grid); otherwise it is reported as not checked, with the settings it still needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .presets import Preset, Setting

__all__ = ["ZERO_SUM_HIGH", "Claim", "check_claims", "summarize"]

#: HUCL "breaks" when the norm of the mean of its class means stays at least this high (0 at the ETF; the
#: class means lie in the unit ball, so 1 is the most it can be).
ZERO_SUM_HIGH = 0.1
#: The two measures of distance to the simplex ETF the first and third claims use.
ETF_METRICS = ("equal_inner_product", "etf_distance")
_LABELS = {
    "equal_inner_product": "equal inner product",
    "etf_distance": "ETF distance",
    "significant_directions": "significant directions",
    "zero_sum": "zero-sum",
}

Summary = Mapping[str, Any]  # {"mean", "std", "values"}
Finals = Mapping[str, Mapping[str, Summary]]  # setting name -> metric -> summary


@dataclass(frozen=True)
class Claim:
    """One claim of a preset: `holds` is the verdict, `evidence` the numbers behind it.

    A claim some of whose settings were not run is not checked: `holds` is None, `missing` names those
    settings and `evidence` is empty.
    """

    id: str
    statement: str
    holds: bool | None
    evidence: list[str]
    missing: tuple[str, ...] = ()

    @property
    def checked(self) -> bool:
        """Whether every setting the claim compares was run, so that it has a verdict."""
        return self.holds is not None


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """{"mean", "std", "values"} of one metric over seeds: std = sqrt(sum (v - mean)^2 / (n - 1)), 0 if n = 1."""
    array = np.asarray(values, dtype=np.float64)
    std = float(np.std(array, ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(np.mean(array)), "std": std, "values": [float(v) for v in array]}


def _text(summary: Summary) -> str:
    return f"{summary['mean']:.3g} ± {summary['std']:.2g}"


def _gap(finals: Finals, metric: str, first: Setting, second: Setting) -> tuple[float, float, str]:
    """(mean(second) - mean(first), std(first) + std(second), the numbers as text)."""
    a, b = finals[first.name][metric], finals[second.name][metric]
    numbers = f"{_LABELS.get(metric, metric)}: {first.label} {_text(a)}, {second.label} {_text(b)}"
    return b["mean"] - a["mean"], a["std"] + b["std"], numbers


def _below(finals: Finals, metric: str, low: Setting, high: Setting) -> tuple[bool, str]:
    """Whether `low`'s mean is below `high`'s by more than the sum of their standard deviations."""
    gap, spread, numbers = _gap(finals, metric, low, high)
    holds = math.isfinite(gap) and gap > spread
    return holds, f"{numbers}; gap {gap:.3g} > spread {spread:.2g}? {'yes' if holds else 'no'}"


def _no_rise(finals: Finals, metric: str, before: Setting, after: Setting) -> tuple[bool, str]:
    """Whether `after`'s mean exceeds `before`'s by no more than the sum of their standard deviations."""
    rise, spread, numbers = _gap(finals, metric, before, after)
    holds = math.isfinite(rise) and rise <= spread
    return holds, f"{numbers}; rise {rise:.3g} <= spread {spread:.2g}? {'yes' if holds else 'no'}"


Checks = list[tuple[bool, str]]  # (holds, evidence line) of each comparison


def _claim(
    claim_id: str, statement: str, needed: Sequence[Setting], finals: Finals, compare: Callable[[], Checks]
) -> Claim:
    """The claim's verdict from compare() when every needed setting has finals, else a claim not checked."""
    missing = tuple(setting.name for setting in needed if setting.name not in finals)
    if missing:
        return Claim(claim_id, statement, None, [], missing)
    checks = compare()
    return Claim(claim_id, statement, all(holds for holds, _ in checks), [line for _, line in checks])


def _moderate(preset: Preset, loss: str) -> list[Setting]:
    """The preset's settings of `loss` at the moderate betas, in increasing beta."""
    found = [preset.setting(loss, beta) for beta in sorted(preset.moderate_betas)]
    return [setting for setting in found if setting is not None]


def _nearer_etf(preset: Preset, finals: Finals, hard: str, baseline: str) -> Claim | None:
    base = preset.setting(baseline)
    settings = _moderate(preset, hard)
    if base is None or not settings:
        return None
    statement = (
        f"Hard negatives bring the class means nearer the simplex ETF than {baseline.upper()}: at every moderate "
        f"beta, {hard.upper()} is below {baseline.upper()} beyond the spread, by equal inner product and by ETF "
        "distance."
    )
    return _claim(
        f"{hard}-nearer-etf",
        statement,
        [base, *settings],
        finals,
        lambda: [_below(finals, metric, setting, base) for setting in settings for metric in ETF_METRICS],
    )


def _fewer_directions(preset: Preset, finals: Finals, hard: str, baseline: str) -> Claim | None:
    base = preset.setting(baseline)
    settings = _moderate(preset, hard)
    if base is None or not settings:
        return None
    statement = (
        f"{baseline.upper()} keeps fewer significant class-mean directions (dimensional collapse): its count is "
        f"below that of {hard.upper()} at every moderate beta, beyond the spread."
    )
    return _claim(
        f"{baseline}-fewer-directions",
        statement,
        [base, *settings],
        finals,
        lambda: [_below(finals, "significant_directions", base, setting) for setting in settings],
    )


def _beta_nearer_etf(preset: Preset, finals: Finals, loss: str) -> Claim | None:
    settings = _moderate(preset, loss)
    if len(settings) < 2:
        return None

    def compare() -> Checks:
        checks = []
        for metric in ETF_METRICS:
            steps = zip(settings, settings[1:], strict=False)
            checks += [_no_rise(finals, metric, before, after) for before, after in steps]
            checks.append(_below(finals, metric, settings[-1], settings[0]))
        return checks

    statement = (
        f"Raising beta through the moderate range ({', '.join(f'{s.beta:g}' for s in settings)}) brings "
        f"{loss.upper()}'s class means nearer the ETF: no step raises the equal inner product or the ETF distance "
        "beyond the spread, and the largest moderate beta is below the smallest beyond the spread."
    )
    return _claim(f"{loss}-beta-nearer-etf", statement, settings, finals, compare)


def _hucl_breaks(preset: Preset, finals: Finals) -> Claim | None:
    large = None if preset.large_beta is None else preset.setting("hucl", preset.large_beta)
    others = [s for s in (preset.setting("ucl"), *_moderate(preset, "hucl")) if s is not None]
    if large is None or not others:
        return None

    def compare() -> Checks:
        value = finals[large.name]["zero_sum"]["mean"]
        high = value >= ZERO_SUM_HIGH
        checks = [(high, f"zero-sum of {large.label}: {value:.3g} >= {ZERO_SUM_HIGH}? {'yes' if high else 'no'}")]
        return checks + [_below(finals, "zero_sum", other, large) for other in others]

    statement = (
        f"HUCL breaks at a large beta: at beta = {preset.large_beta:g} its zero-sum stays high (at least "
        f"{ZERO_SUM_HIGH}) and above that of UCL and of HUCL at moderate beta, beyond the spread."
    )
    return _claim("hucl-breaks-at-large-beta", statement, [*others, large], finals, compare)


def check_claims(preset: Preset, finals: Finals) -> list[Claim]:
    """Every claim the preset's grid can test, in the order of the paper's argument.

    `finals` has the settings that were run; a claim that compares a setting not among them is returned
    not checked (holds None, `missing` the settings it lacks), so check_claims(preset, {}) lists what every
    claim needs.
    """
    claims = [
        _nearer_etf(preset, finals, "hscl", "scl"),
        _nearer_etf(preset, finals, "hucl", "ucl"),
        _fewer_directions(preset, finals, "hscl", "scl"),
        _fewer_directions(preset, finals, "hucl", "ucl"),
        _beta_nearer_etf(preset, finals, "hscl"),
        _beta_nearer_etf(preset, finals, "hucl"),
        _hucl_breaks(preset, finals),
    ]
    return [claim for claim in claims if claim is not None]
