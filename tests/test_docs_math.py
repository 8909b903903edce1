"""The built documentation typesets its math: headless Chromium loads every page, KaTeX renders each formula.

`nox -s docs` builds the site (mkdocs --strict) and runs this file on it (HCL_DOCS_SITE); alone, the test builds
the site itself. Without mkdocs or Debian's chromium it skips, unless HCL_REQUIRE_CHROMIUM=1 (the docs session
sets it where chromium is installed), when a missing browser is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Pages that hold formulas: each must show at least this many typeset ones.
MATH_PAGES = {
    "losses": 8,
    "metrics": 15,
    "reference/loss-semantics": 5,
    "reference/metric-semantics": 10,
    "api": 40,
    "internals": 1,
}
#: Text a page may show only inside code or a typeset formula: TeX delimiters and sub/superscript groups left raw.
RAW_MATH = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\frac|\\sum|[A-Za-z)]_\{|\^\{")
HIDDEN = re.compile(
    r"<(script|style|pre|code|annotation|textarea)\b[^>]*>.*?</\1>|<span class=\"katex\b.*?</annotation>", re.S
)


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site: HCL_DOCS_SITE when the docs session built it, else a strict build into a temporary folder."""
    required = os.environ.get("HCL_REQUIRE_CHROMIUM") == "1"
    if _browser() is None:
        if required:
            pytest.fail("HCL_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH: the math check needs Debian's chromium (nox -s docs runs it)")
    if os.environ.get("HCL_DOCS_SITE"):
        return Path(os.environ["HCL_DOCS_SITE"]).resolve()
    if importlib.util.find_spec("mkdocs") is None and not required:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]'; nox -s docs runs this check)")
    built = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(built)]
    subprocess.run(command, cwd=ROOT, check=True)
    return built


def rendered(page: Path) -> str:
    """The page's DOM after its scripts ran (KaTeX included), as headless Chromium serializes it."""
    command = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    result = subprocess.run([*command, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def raw_math(dom: str) -> list[str]:
    """Fragments of visible text that look like untypeset math (code, scripts and KaTeX's own source excluded)."""
    visible = re.sub(r"<[^>]+>", " ", HIDDEN.sub(" ", dom))
    return [visible[max(0, m.start() - 40) : m.end() + 40].strip() for m in RAW_MATH.finditer(visible)]


def test_the_check_itself_finds_raw_and_broken_math():
    """The detectors can fail: raw TeX, an ASCII sum_{...} and a KaTeX error are found; code and KaTeX are not."""
    assert raw_math("<p>the loss $$\\ell_{ij}$$ here</p>") and raw_math("<p>q = eta / sum_{m in N(i)} eta</p>")
    assert not raw_math("<pre>s_{ij} = $$</pre><code>\\(x\\)</code><p>plain text, a_1 and x^2</p>")
    katex = '<span class="katex"><math><semantics><annotation encoding="application/x-tex">s_{ij}</annotation>'
    assert not raw_math(katex + "</semantics></math></span>")


def _pages(site: Path) -> list[Path]:
    pages = sorted(site.rglob("index.html"))
    return [page for page in pages if "assets" not in page.parts and page.parent.name != "404"]


def test_every_page_typesets_its_math_and_shows_no_raw_formula(site: Path):
    problems, counts = [], {}
    for page in _pages(site):
        name = str(page.parent.relative_to(site)) if page.parent != site else "index"
        dom = rendered(page)
        counts[name] = len(re.findall(r'<span class="katex"', dom))
        if "katex-error" in dom:
            problems.append(f"{name}: KaTeX could not parse {re.findall(r'katex-error[^>]*>([^<]*)', dom)[:3]}")
        if fragments := raw_math(dom):
            problems.append(f"{name}: raw math left in the text: {fragments[:3]}")
    for name, least in MATH_PAGES.items():
        if counts.get(name, 0) < least:
            problems.append(f"{name}: {counts.get(name, 0)} typeset formulas, expected at least {least}")
    assert not problems, "\n".join(problems)
