"""Regenerate the tables of docs/reproducing.md from `hcl reproduce` outputs (nothing in them is typed by hand).

    hcl reproduce digits --out reproduce-digits
    hcl reproduce synthetic --out reproduce-synthetic
    python scripts/reproducing_docs.py digits=reproduce-digits synthetic=reproduce-synthetic

For each PRESET=DIR: DIR/report.json is copied to docs/reports/PRESET.json, DIR/figures/*.png to
docs/figures/reproduce-PRESET/, and the block between `<!-- report:PRESET -->` and `<!-- /report:PRESET -->`
in docs/reproducing.md is replaced by report_markdown of that report. The block `<!-- paper-reference -->`
is rendered from hcl_array.reproduce.PAPER_REFERENCE over the cifar100 grid, and `<!-- claim-needs -->`
from the claims' settings in that grid. tests/test_reproduce.py checks that the page matches the stored
reports and the code.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from hcl_array.reproduce import PAPER_REFERENCE, PRESETS, check_claims, report_markdown
from hcl_array.reproduce.report import NOT_REPORTED

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGE = DOCS / "reproducing.md"


def report_block(preset: str, report: dict) -> str:
    """The generated text of one preset's block (its heading level fits the page's sections)."""
    return report_markdown(report, level=3, figures=f"figures/reproduce-{preset}")


def paper_block() -> str:
    """The paper's numbers for each setting of the cifar100 grid, from PAPER_REFERENCE ('not reported' if none)."""
    lines = [
        "| setting | mean-classifier test acc. (%) | equal inner product | significant directions (of 99) |",
        "| --- | --- | --- | --- |",
    ]
    for setting in PRESETS["cifar100"].settings:
        numbers = PAPER_REFERENCE.get(setting.name)
        columns = ("test_acc", "equal_inner_product", "directions")
        cells = [setting.label, *(NOT_REPORTED if numbers is None else numbers[key] for key in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def needs_block(preset: str = "cifar100", seeds: int = 3) -> str:
    """Each claim's settings in the preset's grid and its runs (settings x seeds): what `--settings` must name."""
    grid = PRESETS[preset].settings
    lines = [f"| claim | settings it compares (`--settings`) | runs at {seeds} seeds |", "| --- | --- | ---: |"]
    for claim in check_claims(PRESETS[preset], {}):  # with no finals every claim lists all it needs
        lines.append(f"| `{claim.id}` | {','.join(claim.missing)} | {len(claim.missing) * seeds} |")
    lines.append(f"| every claim: the whole grid | {len(grid)} settings | {len(grid) * seeds} |")
    return "\n".join(lines) + "\n"


def replace_block(page: str, name: str, text: str) -> str:
    """`page` with the text between <!-- NAME --> and <!-- /NAME --> replaced by `text`."""
    pattern = re.compile(rf"(<!-- {re.escape(name)} -->\n).*?(<!-- /{re.escape(name)} -->)", re.DOTALL)
    if not pattern.search(page):
        raise SystemExit(f"{PAGE}: no block <!-- {name} --> ... <!-- /{name} -->")
    return pattern.sub(lambda match: match.group(1) + "\n" + text + "\n" + match.group(2), page)


def main(arguments: list[str]) -> None:
    page = replace_block(PAGE.read_text(), "paper-reference", paper_block())
    page = replace_block(page, "claim-needs", needs_block())
    for argument in arguments:
        preset, _, folder = argument.partition("=")
        if preset not in PRESETS or not folder:
            raise SystemExit(f"expected PRESET=DIR with PRESET one of {', '.join(PRESETS)}, got {argument!r}")
        report = json.loads((Path(folder) / "report.json").read_text())
        (DOCS / "reports").mkdir(exist_ok=True)
        (DOCS / "reports" / f"{preset}.json").write_text(json.dumps(report, indent=2) + "\n")
        figures = DOCS / "figures" / f"reproduce-{preset}"
        figures.mkdir(parents=True, exist_ok=True)
        for png in sorted((Path(folder) / "figures").glob("*.png")):
            shutil.copyfile(png, figures / png.name)
        page = replace_block(page, f"report:{preset}", report_block(preset, report))
    PAGE.write_text(page)


if __name__ == "__main__":
    main(sys.argv[1:])
