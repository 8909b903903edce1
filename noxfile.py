"""nox sessions: each backend alone, the backends against each other, peers, docs and benchmarks.

    nox                      # default: ruff, the tests on each CPU backend, then the crosscheck
    nox -s cupy              # on a machine with a CUDA GPU (skips cleanly without one)
    nox -s gpu               # CUDA machine with a registry: scripts/gpu_check.py (GPU tests + bench, < 8 min)
    nox -s hypothesis        # the overflow property with thousands of examples (-- N to choose)
    nox -s lightly           # lightly's NTXentLoss parity (needs torch 2.14.1 + torchvision 0.29.1)
    nox -s vision            # every image test with torchvision (torch 2.14.1 + torchvision 0.29.1)
    nox -s docs              # mkdocs build --strict, then the math of every page rendered in headless Chromium
    nox -s package           # sdist + wheel: twine check, then installed outside the repo and run
    nox -s bench             # the benchmark tables in docs/performance.md
    nox -s reproduce         # hcl reproduce digits --check: the paper's claims on real data, 3 seeds

The CPU build of PyTorch is pinned by constraints-cpu.txt; the project's own ranges stay loose.
"""

from __future__ import annotations

import json
import math
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests", "crosscheck"]

CONSTRAINTS = ("-c", "constraints-cpu.txt")
BACKEND_EXTRAS = {"numpy": "", "array_api_strict": "", "torch": ",torch", "jax": ",jax"}


#: The least share of the public symbols whose types pyright knows (`pyright --verifytypes`).
TYPE_COMPLETENESS_GOAL = 0.95


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (the rules and format of pyproject.toml, nothing suppressed by hand), then the type completeness of the
    public API: `pyright --verifytypes hcl_array` (pyright from the npm registry, through PyPI's wrapper) must know
    the types of at least TYPE_COMPLETENESS_GOAL of the exported symbols. It prints the score and the symbols it lacks.
    """
    session.install("ruff>=0.6", "pyright")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # pyright reads an installed package: an editable install is an import hook it cannot follow
    session.install("--force-reinstall", "--no-deps", ".")
    session.install("numpy", "array-api-compat")
    session.run("pyright", "--verifytypes", "hcl_array", "--ignoreexternal", success_codes=[0, 1])
    report = session.run(
        "pyright", "--verifytypes", "hcl_array", "--ignoreexternal", "--outputjson", silent=True, success_codes=[0, 1]
    )
    score = json.loads(report)["typeCompleteness"]["completenessScore"]
    session.log(f"type completeness of hcl_array: {score:.1%} (goal {TYPE_COMPLETENESS_GOAL:.0%})")
    if score < TYPE_COMPLETENESS_GOAL:
        session.error(f"pyright knows the types of {score:.1%} of hcl_array's public symbols, below the goal")


@nox.session
@nox.parametrize("backend", list(BACKEND_EXTRAS))
def tests(session: nox.Session, backend: str) -> None:
    """The whole suite with one backend installed: proves the core needs no other framework."""
    session.install(*CONSTRAINTS, "-e", f".[test-core,cli{BACKEND_EXTRAS[backend]}]")
    session.run("pytest", "-q", *session.posargs, env={"HCL_BACKENDS": backend})


@nox.session
def crosscheck(session: nox.Session) -> None:
    """One seeded batch and one seeded training run through every installed backend, compared in float64."""
    session.install(*CONSTRAINTS, "-e", ".[test]")
    session.run("pytest", "-q", "tests/test_crosscheck.py", "tests/test_paths.py", *session.posargs)


@nox.session(default=False)
def cupy(session: nox.Session) -> None:
    """CuPy on a CUDA GPU; without one the tests skip with the reason."""
    session.install(*CONSTRAINTS, "-e", ".[test,cupy]")
    session.run(
        "pytest",
        "-q",
        "tests/test_crosscheck.py",
        "tests/test_paths.py",
        "tests/test_losses.py",
        *session.posargs,
        env={"HCL_BACKENDS": "numpy,cupy"},
    )


@nox.session(default=False)
def lightly(session: nox.Session) -> None:
    """lightly imports torchvision, which needs the torch build it was made for (not the CPU pin)."""
    session.install("torch==2.14.1", "torchvision==0.29.1", "lightly")
    session.install("-e", ".[test-core]")
    session.run(
        "pytest", "-q", "tests/test_peers.py", "-k", "lightly", *session.posargs, env={"HCL_REQUIRE_LIGHTLY": "1"}
    )


@nox.session(default=False)
def vision(session: nox.Session) -> None:
    """Every image test (marker `vision`) with torchvision, which needs the torch build it was made for.

    HCL_REQUIRE_VISION=1 turns the "torchvision is not installed" skips into failures, so a test that
    silently skipped here would show up as failed.
    """
    session.install("torch==2.14.1", "torchvision==0.29.1")
    session.install("-e", ".[test-core,cli,images]")
    env = {"HCL_REQUIRE_VISION": "1", "HCL_BACKENDS": "numpy,array_api_strict,torch"}  # the namespaces installed
    # Only the files that hold image tests: the others would be collected just to skip on jax, lightning, ...
    files = sorted(str(path) for path in Path("tests").glob("test_*.py") if "mark.vision" in path.read_text())
    session.run("pytest", "-q", "-rs", "-m", "vision", *files, *session.posargs, env=env)


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors; then headless Chromium loads every page and the check fails on
    a formula KaTeX did not typeset (tests/test_docs_math.py). Without Debian's chromium the check is skipped
    with its reason (`apt-get install chromium`); where chromium is installed, a failure to run it fails."""
    session.install(*CONSTRAINTS, "-e", ".[docs]", "pytest")
    site = Path(session.create_tmp()).resolve() / "site"
    session.run("mkdocs", "build", "--strict", "--site-dir", str(site))
    env = {"HCL_DOCS_SITE": str(site), "HCL_REQUIRE_CHROMIUM": "1" if shutil.which("chromium") else "0"}
    session.run("pytest", "-q", "-p", "no:cacheprovider", "tests/test_docs_math.py", env=env)


#: What the built distributions must carry besides the code.
WHEEL_FILES = ("hcl_array/py.typed", "licenses/LICENSE")
SDIST_FILES = ("LICENSE", "CITATION.cff", "README.md", "pyproject.toml", "hcl_array/py.typed")


def _missing_members(archive: Path, required: tuple[str, ...]) -> list[str]:
    """The required paths (matched at the end of a member's name) that a wheel or an sdist does not hold."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            names = wheel.namelist()
    else:
        with tarfile.open(archive) as sdist:
            names = sdist.getnames()
    return [path for path in required if not any(name.endswith(path) for name in names)]


@nox.session(default=False)
def package(session: nox.Session) -> None:
    """The sdist and the wheel: built, `twine check`-ed, CITATION.cff validated, then the wheel installed into a
    fresh venv outside the repository, where `hcl train --backend numpy` and `hcl analyze` must run from the
    installed copy (not the source tree)."""
    session.install("build", "twine", "cffconvert")
    session.run("cffconvert", "--validate", "-i", "CITATION.cff")
    outside = Path(tempfile.mkdtemp(prefix="hcl-array-package-"))
    try:
        _build_install_and_run(session, outside)
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def _build_install_and_run(session: nox.Session, outside: Path) -> None:
    """The package session's work, in the folder `outside` (not under the repository)."""
    dist = outside / "dist"
    session.run("python", "-m", "build", "--outdir", str(dist))
    wheel, sdist = next(dist.glob("*.whl")), next(dist.glob("*.tar.gz"))
    session.run("twine", "check", "--strict", str(wheel), str(sdist))
    for archive, required in ((wheel, WHEEL_FILES), (sdist, SDIST_FILES)):
        if missing := _missing_members(archive, required):
            session.error(f"{archive.name} lacks {', '.join(missing)}")
    venv = outside / "venv"
    session.run("python", "-m", "venv", str(venv))
    bin_dir = venv / "bin"
    session.run(str(bin_dir / "pip"), "install", "-q", f"{wheel}[cli]", external=True)
    with session.chdir(outside):  # away from the source tree: `import hcl_array` can only find the installed copy
        where = f"import hcl_array; assert hcl_array.__file__.startswith({str(venv)!r}), hcl_array.__file__"
        session.run(str(bin_dir / "python"), "-c", where, external=True)
        train = ["train", "--backend", "numpy", "--epochs", "3", "--out", "run.npz", "--quiet"]
        session.run(str(bin_dir / "hcl"), *train, external=True)
        session.run(str(bin_dir / "hcl"), "analyze", "run.npz", "--json", "report.json", external=True)
        report = json.loads((outside / "report.json").read_text())
        if not 0.0 <= report["runs"][0]["train"]["equal_inner_product"] < math.inf:
            session.error(f"hcl analyze reported no finite equal_inner_product: {report['runs'][0]['train']}")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks: ratios against baselines measured in the same process, written to docs/."""
    session.install(*CONSTRAINTS, "-e", ".[test]")
    session.run("python", "bench/bench_losses.py", *session.posargs)


@nox.session(default=False)
def reproduce(session: nox.Session) -> None:
    """The paper's claims on real data: `hcl reproduce digits --check` in full (3 seeds, a few minutes).

    Extra arguments go to the command, e.g. `nox -s reproduce -- --jobs 4 --out repro`.
    """
    session.install(*CONSTRAINTS, "-e", ".[cli]")
    out = ["--out", str(Path(session.create_tmp()) / "reproduce-digits")]
    args = session.posargs if "--out" in session.posargs else [*out, *session.posargs]
    session.run("hcl", "reproduce", "digits", "--check", *args)


@nox.session(default=False)
def hypothesis(session: nox.Session) -> None:
    """The overflow property (tests/test_overflow.py) with many examples: `nox -s hypothesis -- 10000`."""
    session.install(*CONSTRAINTS, "-e", ".[test-core,torch]")
    examples = session.posargs[0] if session.posargs else "3000"
    env = {"HCL_HYPOTHESIS_PROFILE": "many", "HCL_HYPOTHESIS_EXAMPLES": examples}
    session.run("pytest", "-q", "tests/test_overflow.py", "--hypothesis-show-statistics", env=env)


@nox.session(default=False)
def gpu(session: nox.Session) -> None:
    """CUDA machine with a registry: installs the CUDA builds, then runs scripts/gpu_check.py (the GPU tests,
    the GPU bench section and the cifar100 preset's step, one summary table, < 8 min). The lent machines have
    no registry and no nox: there run `python3 scripts/gpu_check.py` itself. Without a CUDA device the script
    says so in one line and the session ends (exit 0)."""
    probe = session.run("python", "scripts/gpu_check.py", "--probe", silent=True) or ""
    if probe.startswith("gpu_check: no CUDA device"):  # before installing gigabytes of CUDA wheels
        session.log(probe.strip())
        return
    # the CUDA 12 builds (drivers >= 525); [ctk] brings CuPy's CUDA libraries, which it does not load from torch
    session.install("-e", ".[test-core,cli,safetensors]", "torch", "cupy-cuda12x[ctk]>=14", "jax[cuda12]")
    session.run("python", "scripts/gpu_check.py", *session.posargs)
