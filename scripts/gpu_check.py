"""The GPU check: the GPU tests, the GPU bench section and the cifar100 preset's step, as one summary table.

Runs with the machine's own python3 and the repository's source, no registry and no nox (the machines we are
lent have torch, CuPy, JAX and pytest but no array-api-compat and no network):

    python3 scripts/gpu_check.py                     # from the repository root; within 8 minutes on an H100
    python3 scripts/gpu_check.py --out DIR           # also keeps the junit XML, the bench tables and the summary

array-api-compat, the one pure-Python requirement those machines lack, is taken from the wheel carried in
scripts/wheels/ (a wheel of pure Python imports from its zip on sys.path). It was fetched with

    pip download --no-deps --only-binary=:all: array-api-compat==1.16.0 -d scripts/wheels

(sha256 in scripts/wheels/SHA256SUMS). Without a CUDA device the script says so in one line and exits 0;
`--force` runs it anyway (every GPU test then skips), to try the script itself. `nox -s gpu` installs the
CUDA builds where a registry is reachable and runs this same script. Exit status: 1 when a test failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "scripts" / "wheels"
#: seconds: the whole check must end within 8 minutes on one H100 or H200
TOTAL_BUDGET, TESTS_LIMIT, TRAIN_LIMIT = 470.0, 240.0, 120.0


def cuda_device() -> str | None:
    """The first GPU as nvidia-smi names it, or None when this machine has no CUDA device."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = probe.stdout.strip().splitlines()
    return lines[0] if probe.returncode == 0 and lines else None


def environment() -> dict[str, str]:
    """The child processes' environment: the source and, where missing, the carried wheels on PYTHONPATH.

    JAX would take 75% of the GPU's memory when it starts, leaving torch and CuPy in the same tests little.
    """
    paths = [str(ROOT)]
    probe = subprocess.run([sys.executable, "-c", "import array_api_compat"], capture_output=True, cwd=ROOT)
    if probe.returncode != 0:
        paths += [str(wheel) for wheel in sorted(WHEELS.glob("*.whl"))]
    existing = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths + ([existing] if existing else [])),
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "PYTHONUNBUFFERED": "1",
    }


def junit_counts(path: Path) -> tuple[int, int, int, list[str]]:
    """(passed, failed, skipped, names of the failed tests) from a pytest junit XML report."""
    root = ElementTree.parse(path).getroot()
    failed = []
    passed = skipped = 0
    for case in root.iter("testcase"):
        outcome = {child.tag for child in case}
        if outcome & {"failure", "error"}:
            failed.append(case.get("name", "?"))
        elif "skipped" in outcome:
            skipped += 1
        else:
            passed += 1
    return passed, len(failed), skipped, failed


def run_tests(env: dict[str, str], work: Path) -> tuple[list[str], bool]:
    """tests/test_gpu.py under pytest: summary rows, and whether every test passed or skipped."""
    report = work / "gpu-tests.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    started = time.monotonic()
    try:
        subprocess.run([*command, "tests/test_gpu.py"], cwd=ROOT, env=env, timeout=TESTS_LIMIT, check=False)
    except subprocess.TimeoutExpired:
        return [f"| GPU tests | stopped after {TESTS_LIMIT:g} s | | | |"], False
    if not report.exists():
        return ["| GPU tests | pytest wrote no report (see its output above) | | | |"], False
    passed, failed, skipped, names = junit_counts(report)
    rows = [f"| GPU tests (tests/test_gpu.py) | {passed} | {failed} | {skipped} | {time.monotonic() - started:.0f} s |"]
    rows += [f"| failed: {name} | | | | |" for name in names]
    return rows, failed == 0


def run_bench(env: dict[str, str], work: Path, budget: float) -> list[str]:
    """The GPU section of bench/bench_losses.py: its table lines, started configurations within `budget` s."""
    out = work / "gpu-bench.md"
    command = [sys.executable, "bench/bench_losses.py", "--section", "gpu", "--reps", "2", "--timeout", "120"]
    command += ["--gpu-budget", f"{max(budget - 60.0, 0.0):.0f}", "--out", str(out)]
    try:
        subprocess.run(command, cwd=ROOT, env=env, timeout=budget + 150.0, check=False)
    except subprocess.TimeoutExpired:
        return [f"GPU bench stopped after {budget + 150.0:.0f} s"]
    if not out.exists():
        return ["GPU bench: bench/bench_losses.py wrote no table (see its output above)"]
    lines = out.read_text().splitlines()
    machine = [line for line in lines if line.startswith("Machine:")]
    first = next((index for index, line in enumerate(lines) if line.startswith("###")), len(lines))
    table = [line for line in lines[first:] if not line.startswith("<!--")]
    return machine + [""] + "\n".join(table).strip().splitlines()


def run_train_bench(env: dict[str, str]) -> list[str]:
    """bench/bench_train.py --preset cifar100 (the preset's step on CUDA), where that benchmark exists."""
    script = ROOT / "bench" / "bench_train.py"
    if not script.exists():
        return ["bench/bench_train.py is not in this checkout: the cifar100 preset's step is not timed"]
    command = [sys.executable, str(script), "--preset", "cifar100", "--repeats", "2"]
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, timeout=TRAIN_LIMIT, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return [f"bench_train.py --preset cifar100 stopped after {TRAIN_LIMIT:g} s"]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    last = (result.stderr.strip() or result.stdout.strip() or "?").splitlines()[-1]
    return table or [f"bench_train.py --preset cifar100 gave no table: {last}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the junit XML, the bench tables and the summary")
    parser.add_argument("--force", action="store_true", help="run without a CUDA device (the GPU tests skip)")
    parser.add_argument("--probe", action="store_true", help="only say which CUDA device there is, if any")
    args = parser.parse_args()
    device = cuda_device()
    if device is None and not args.force:
        print("gpu_check: no CUDA device on this machine (nvidia-smi finds none): nothing to run")
        return 0
    if args.probe:
        print(f"gpu_check: {device}")
        return 0
    started = time.monotonic()
    env = environment()
    work = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    tests, passed = run_tests(env, work)
    bench = run_bench(env, work, TOTAL_BUDGET - TRAIN_LIMIT - (time.monotonic() - started))
    train = run_train_bench(env) if TOTAL_BUDGET - (time.monotonic() - started) > TRAIN_LIMIT / 2 else []
    summary = [
        f"## GPU check on {device or 'no CUDA device (--force)'}, {time.monotonic() - started:.0f} s",
        "",
        "| check | passed | failed | skipped | time |",
        "| --- | ---: | ---: | ---: | ---: |",
        *tests,
        "",
        *bench,
        "",
        *train,
    ]
    text = "\n".join(summary).rstrip() + "\n"
    print(text)
    (work / "summary.md").write_text(text)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
