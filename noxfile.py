"""nox sessions: each backend alone, the backends against each other, peers, docs and benchmarks.

    nox                      # default: ruff, the tests on each CPU backend, then the crosscheck
    nox -s cupy              # on a machine with a CUDA GPU (skips cleanly without one)
    nox -s lightly           # lightly's NTXentLoss parity (needs torch 2.14.1 + torchvision 0.29.1)
    nox -s docs              # mkdocs build --strict
    nox -s bench             # the benchmark tables in docs/performance.md
    nox -s reproduce         # hcl reproduce digits --check: the paper's claims on real data, 3 seeds

The CPU build of PyTorch is pinned by constraints-cpu.txt; the project's own ranges stay loose.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests", "crosscheck"]

CONSTRAINTS = ("-c", "constraints-cpu.txt")
BACKEND_EXTRAS = {"numpy": "", "array_api_strict": "", "torch": ",torch", "jax": ",jax"}


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: the lint rules and the format configured in pyproject.toml, nothing suppressed by hand."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


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
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors."""
    session.install(*CONSTRAINTS, "-e", ".[docs]")
    session.run("mkdocs", "build", "--strict")


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
