"""Benchmarks of the losses (not tests): time and peak memory of forward + backward.

Run from the repository root (default: about 5 minutes on 2 CPU cores, sizes up to N = 8192):

    .venv/bin/python bench/bench_losses.py                       # writes the tables into docs/performance.md
    .venv/bin/python bench/bench_losses.py --max-n 65536         # adds N = 16k, 32k, 64k (tiled only; ~30 min)
    .venv/bin/python bench/bench_losses.py --section scaling --sizes 65536 --backends torch,jax,numpy \\
        --kinds tiled,matmul --marker large                      # the 64k target alone (~10 min), own block
    .venv/bin/python bench/bench_losses.py --out -               # print the tables, write nothing

Sections:

1. `peers` (issues 2 and 13): hscl forward + backward on torch CPU at N = 512, 2048, 8192, d = 128, as a
   ratio to `F.cross_entropy(z @ z.T / tau, arange(N))` forward + backward and to pytorch-metric-learning's
   `SupConLoss`, both measured in the same run; with expected negatives and with the paper's sampled
   ones (`PAPER_PRESET`), each as called by default (the fused kernel) and through the array-API code
   (`USE_FUSED_KERNEL = False`).
2. `scaling`: forward + backward of hscl at N = 1k, 2k, 4k, ... (d = 128) on torch, jax and numpy,
   dense (N <= --max-dense, default 8192) and tiled (`tile="auto"` block size), each as a ratio to the
   matrix products alone (z z^T and its two backward products, G z and G^T z, computed block by block
   with the same blocks), and SupConLoss where it still runs (N <= 8192).
3. `gpu`: torch CUDA, cupy and jax on a GPU at N = 64k and 256k (--gpu-sizes), each library's default path and
   torch's tiled array-API path, as ratios to the matrix products alone; only when a GPU answers, and only
   what starts within --gpu-budget seconds (scripts/gpu_check.py runs it this way, within its 8 minutes).

Every configuration runs in its own subprocess. Time: median over --reps runs (10 x --reps for
N <= 2048; one run beyond N = 8192), after one untimed warm-up run (where JAX compiles; skipped beyond
N = 8192 except for JAX); the peers section instead times its four steps interleaved in one process,
in --processes processes, and reports the median and range of their ratios. Peak memory: the child's
ru_maxrss high-water mark after the runs minus its resident size just before them (inputs already
built, framework imported), so it counts what the loss allocates; on a GPU, the framework's
peak-allocation counter. The machine's other load is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIM, TAU, BETA, CLASSES = 128, 1.0, 1.0, 100
JAX_BETA = 5.0  # the jax section's tilt (issue 24's measurement)


# --------------------------------------------------------------------------------------------------
# The worker: one configuration, in its own process


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _make_step(
    kind: str, backend: str, n: int, tile: int | str | None, device: str, kernel: bool = True, beta: float = BETA
):
    """A zero-argument function running one forward + backward, and a function that waits for it."""
    import numpy as np

    rng = np.random.default_rng(0)
    z_host = rng.normal(size=(n, DIM)).astype(np.float32)
    labels_host = rng.integers(0, CLASSES, size=n)

    def sync() -> None:
        return None

    if backend == "torch":
        import torch
        import torch.nn.functional as F

        import hcl_array as hcl

        z0 = torch.tensor(z_host, device=device)
        labels = torch.tensor(labels_host, device=device)
        targets = torch.arange(n, device=device)
        if device.startswith("cuda"):
            sync = torch.cuda.synchronize
        if kind == "ce":

            def step():
                z = z0.clone().requires_grad_()
                F.cross_entropy(z @ z.T / TAU, targets).backward()
        elif kind == "supcon":
            from pytorch_metric_learning.losses import SupConLoss

            loss = SupConLoss(temperature=0.1)

            def step():
                z = z0.clone().requires_grad_()
                loss(z, labels).backward()
        elif kind == "matmul":

            def step():
                _blocked_products(z0, tile, lambda a: a.T)
        else:
            # "paper": the released code's semantics (PAPER_PRESET: k = 256 sampled negatives, tau = 1)
            options = {**hcl.PAPER_PRESET, "rng": np.random.default_rng(1)} if kind == "paper" else {"temperature": TAU}

            def step():
                hcl.losses.USE_FUSED_KERNEL = kernel  # False: autograd through the array-API code
                try:
                    z = z0.clone().requires_grad_()
                    hcl.hscl(z, labels, beta=beta, tile=tile, **options).backward()
                finally:
                    hcl.losses.USE_FUSED_KERNEL = True

        return step, sync

    if backend == "jax":
        import jax
        import jax.numpy as jnp

        import hcl_array as hcl

        z0 = jax.device_put(jnp.asarray(z_host))
        labels = jnp.asarray(labels_host)
        if kind == "matmul":
            products = jax.jit(lambda z: _scanned_products(z, tile))
            return (lambda: jax.block_until_ready(products(z0))), sync
        if kind == "ce":
            import optax

            targets = jnp.arange(n)

            def cross_entropy(z, labels, uniforms):
                return optax.softmax_cross_entropy_with_integer_labels(z @ z.T / TAU, targets).mean()

            loss = cross_entropy
        else:
            # "paper": PAPER_PRESET with the (N, k) uniforms given, as a jitted training step passes them
            options = {**hcl.PAPER_PRESET} if kind == "paper" else {"temperature": TAU}
            options["kernel"] = "auto" if kernel else "array_api"

            def loss(z, labels, uniforms):
                return hcl.hscl(z, labels, beta=beta, tile=tile, uniforms=uniforms, **options)

        uniforms = jnp.asarray(rng.random((n, hcl.PAPER_PRESET["k"]), dtype=np.float32)) if kind == "paper" else None
        grad = jax.jit(jax.value_and_grad(loss))  # labels an argument, as in a training step (not folded in)
        return (lambda: jax.block_until_ready(grad(z0, labels, uniforms))), sync

    if backend in ("numpy", "cupy"):
        import hcl_array as hcl

        if backend == "cupy":
            import cupy as xp

            sync = xp.cuda.Device().synchronize
        else:
            import numpy as xp
        z0, labels = xp.asarray(z_host), xp.asarray(labels_host)
        if kind == "matmul":
            return (lambda: _blocked_products(z0, tile, lambda a: a.T)), sync
        return (lambda: hcl.hscl(z0, labels, beta=BETA, temperature=TAU, tile=tile, return_grad=True)), sync
    raise ValueError(backend)


def _blocked_products(z, tile, transpose):
    """The matrix products of forward + backward alone: s = z_b z^T, then G z and G^T z_b (G = s), per block."""
    n = z.shape[0]
    tile = n if tile is None else tile
    rows, columns = [], 0.0
    for start in range(0, n, tile):
        block = z[start : start + tile] @ transpose(z)
        rows.append(block @ z)
        columns = columns + transpose(block) @ z[start : start + tile]
    return rows, columns


def _scanned_products(z, tile):
    """`_blocked_products` for JAX, as a lax.scan like the tiled loss (an unrolled loop lets XLA keep every block)."""
    import jax

    tile = z.shape[0] if tile is None else tile
    full = z.shape[0] // tile  # the sizes benchmarked are multiples of the tile

    def step(columns, start):
        rows = jax.lax.dynamic_slice_in_dim(z, start, tile)
        block = rows @ z.T
        return columns + block.T @ rows, block @ z

    return jax.lax.scan(step, jax.numpy.zeros_like(z), jax.numpy.arange(full) * tile)


def _peak_device_bytes(backend: str, device: str) -> int | None:
    if backend == "torch" and device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated())
    if backend == "cupy":
        import cupy

        return int(cupy.get_default_memory_pool().total_bytes())  # the pool keeps what the peak needed
    if backend == "jax" and device != "cpu":
        import jax

        return int(jax.devices()[0].memory_stats().get("peak_bytes_in_use", 0))
    return None


def interleaved_worker(spec: dict) -> dict:
    """Median seconds of several CPU steps (torch, or JAX with "backend": "jax") timed in one process, in
    rotating round-robin order, so that the baseline and the loss share the allocator, caches and machine
    load of the same moments; also each step's median CPU seconds of the process (all its threads), as
    "<name> cpu", which other processes' load disturbs less than the wall clock."""
    backend = spec.get("backend", "torch")
    if backend == "jax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    steps = {
        name: _make_step(kind, backend, spec["n"], tile, "cpu", kernel, spec.get("beta", BETA))[0]
        for name, (kind, tile, kernel) in spec["steps"].items()
    }
    for step in steps.values():  # warm-up: allocator, thread pool, imports
        step()
        step()
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(spec["reps"]):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start, cpu_start = time.perf_counter(), time.process_time()
            steps[name]()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {**medians, **{f"{name} cpu": statistics.median(values) for name, values in cpu_times.items()}}


def worker(spec: dict) -> dict:
    kind, backend, n, tile, device, reps = (spec[key] for key in ("kind", "backend", "n", "tile", "device", "reps"))
    if backend == "jax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu" if device == "cpu" else "")
    step, sync = _make_step(kind, backend, n, tile, device, spec.get("kernel", True), spec.get("beta", BETA))
    if backend == "torch" and device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    before = _rss_kib()
    times = []
    warmup = spec.get("warmup", True)
    for index in range(reps + int(warmup)):  # the warm-up run (JAX compiles there) is not timed; its memory counts
        start = time.perf_counter()
        step()
        sync()
        if index or not warmup:
            times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    device_bytes = _peak_device_bytes(backend, device)
    return {
        **spec,
        "seconds": statistics.median(times),
        "peak_bytes": device_bytes if device_bytes is not None else max(peak_kib, 0) * 1024,
    }


# --------------------------------------------------------------------------------------------------
# The driver: subprocesses, ratios, markdown


def run_raw(spec: dict, timeout: float) -> dict | None:
    """A worker's JSON answer, from its own process; None (and a line on stderr) when it fails."""
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        print(f"  timeout: {spec}", file=sys.stderr)
        return None
    if result.returncode != 0:
        print(f"  failed ({result.returncode}): {spec}\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(spec: dict, timeout: float) -> dict | None:
    record = run_raw(spec, timeout)
    if record is None:
        return None
    print(
        f"  {record['backend']:6} {record['kind']:8} N={record['n']:>7} tile={record['tile']!s:>5}: "
        f"{record['seconds']:.4f} s, {record['peak_bytes'] / 2**20:.0f} MiB",
        file=sys.stderr,
        flush=True,
    )
    return record


def _fmt_time(record: dict | None) -> str:
    return (
        "-"
        if record is None
        else f"{record['seconds'] * 1e3:.1f} ms"
        if record["seconds"] < 1
        else f"{record['seconds']:.2f} s"
    )


def _fmt_mem(record: dict | None) -> str:
    return "-" if record is None else f"{record['peak_bytes'] / 2**20:.0f} MiB"


def _ratio(record: dict | None, base: dict | None, key: str) -> str:
    if record is None or base is None or base[key] <= 0:
        return "-"
    return f"{record[key] / base[key]:.2f}x"


def _ratio_spread(timings: list[dict], step: str, base: str) -> str:
    """The median over processes of each process's time ratio, with their range when there are several."""
    ratios = sorted(timing[step] / timing[base] for timing in timings)
    if not ratios:
        return "-"
    spread = f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
    return f"{statistics.median(ratios):.2f}x{spread}"


def _reps(args: argparse.Namespace, n: int) -> int:
    """More runs where they are cheap: at N <= 2048 a run takes milliseconds, and a median of 30 is
    robust to the shared machine's bursts; a median of 3 is what the large sizes can afford."""
    return args.reps * 10 if n <= 2048 else args.reps


def _interleaved_steps(args: argparse.Namespace, spec: dict, steps: dict, reps: int) -> tuple[list[dict], dict]:
    """The steps timed interleaved in each of args.processes processes (their per-process medians), and
    each step's memory alone in its own process (a peak resident size cannot be reset), with the median
    time over processes beside it: None where a run failed."""
    timings = [
        timing
        for _ in range(args.processes)
        if (timing := run_raw({**spec, "reps": reps, "steps": steps}, args.timeout))
    ]
    for timing in timings:
        print(
            f"  {spec['backend']} interleaved N={spec['n']}: "
            + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in timing.items()),
            file=sys.stderr,
            flush=True,
        )
    memory = {
        name: run({**spec, "kind": kind, "tile": tile, "kernel": kernel, "device": "cpu", "reps": 1}, args.timeout)
        for name, (kind, tile, kernel) in steps.items()
    }
    timed = {
        name: None
        if not timings or memory[name] is None
        else {**memory[name], "seconds": statistics.median(timing[name] for timing in timings)}
        for name in steps
    }
    return timings, timed


def peers_section(args: argparse.Namespace) -> list[str]:
    lines = [
        "### Issue 2: hscl vs cross-entropy and SupConLoss (torch CPU, d = 128, forward + backward)",
        "",
        '`default` is `hcl.hscl(z, labels)` as users call it (`tile="auto"`: the fused torch kernel);',
        "`array-API code` is the same call with `hcl_array.losses.USE_FUSED_KERNEL = False` (autograd",
        "through the portable code that every other backend runs). `PAPER_PRESET (sampled)` is",
        "`hcl.hscl(z, labels, **PAPER_PRESET, rng=...)`, the released code's semantics (k = 256 negatives",
        "sampled per anchor, tau = 1), through the kernel, and then through the array-API code.",
        "Times: the six steps run interleaved in",
        f"one process, repeated in {args.processes} processes; a time is the median over processes of each",
        "process's median, a ratio the median of the per-process ratios with their range in brackets (a",
        "process's ratio varies by about 10% on this shared machine). Memory: each step alone in its own",
        "process (a process's peak resident size cannot be reset, so the baselines cannot share it).",
        "",
        "| N | path | hscl time | CE time | SupCon time | time / CE | time / SupCon | hscl mem | CE mem | "
        "SupCon mem | mem / CE | mem / SupCon |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    paths = {
        "default": ("hscl", True),
        "array-API code": ("hscl", False),
        "PAPER_PRESET (sampled)": ("paper", True),
        "PAPER_PRESET, array-API code": ("paper", False),
    }
    for n in args.peer_sizes:
        steps = {
            "ce": ("ce", None, True),
            "supcon": ("supcon", None, True),
            **{label: (kind, "auto", kernel) for label, (kind, kernel) in paths.items()},
        }
        timings, timed = _interleaved_steps(args, {"backend": "torch", "n": n}, steps, 3 * _reps(args, n))
        ce, supcon = timed["ce"], timed["supcon"]
        for label in paths:
            hscl = timed[label]
            lines.append(
                f"| {n} | {label} | {_fmt_time(hscl)} | {_fmt_time(ce)} | {_fmt_time(supcon)} | "
                f"{_ratio_spread(timings, label, 'ce')} | {_ratio_spread(timings, label, 'supcon')} | "
                f"{_fmt_mem(hscl)} | "
                f"{_fmt_mem(ce)} | {_fmt_mem(supcon)} | {_ratio(hscl, ce, 'peak_bytes')} | "
                f"{_ratio(hscl, supcon, 'peak_bytes')} |"
            )
    return lines


def jax_section(args: argparse.Namespace) -> list[str]:
    """hscl under jit(value_and_grad) on JAX (CPU, float32, beta = 5) against optax's cross-entropy."""
    lines = [
        f"### JAX: hscl vs optax cross-entropy (CPU, float32, d = {DIM}, {CLASSES} classes, beta = {JAX_BETA:g})",
        "",
        "Each step is `jax.jit(jax.value_and_grad(loss))(z, uniforms)`. The baseline is",
        "`optax.softmax_cross_entropy_with_integer_labels(z @ z.T, arange(N)).mean()`. `expected` is",
        "`hcl.hscl(z, labels, beta=5)` as users call it. `sampled` is the same with `**PAPER_PRESET`",
        "(k = 256 negatives drawn per anchor) and the (N, k) uniforms given as an argument of the jitted step.",
        '`array-API code` passes `kernel="array_api"`. Times: the steps run interleaved in one process, repeated in',
        f"{args.processes} processes; a ratio is the median of the per-process ratios, with their range in",
        "brackets; `CPU time / CE` compares the CPU seconds of the process (all its threads), which other",
        "processes' load disturbs less than the wall clock on a shared machine. Memory: each step alone in its",
        "own process (growth of the peak resident size, compilation included).",
        "",
        "| N | step | time | CE time | time / CE | CPU time / CE | mem | CE mem | mem / CE |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    labelled = {
        "expected": ("hscl", True),
        "expected, array-API code": ("hscl", False),
        "sampled": ("paper", True),
        "sampled, array-API code": ("paper", False),
    }
    for n in args.jax_sizes:
        steps = {
            "ce": ("ce", "auto", True),
            **{label: (kind, "auto", kernel) for label, (kind, kernel) in labelled.items()},
        }
        reps = 3 * _reps(args, n) if n <= 2048 else args.reps
        timings, timed = _interleaved_steps(args, {"backend": "jax", "n": n, "beta": JAX_BETA}, steps, reps)
        for label in labelled:
            record, ce = timed[label], timed["ce"]
            lines.append(
                f"| {n} | {label} | {_fmt_time(record)} | {_fmt_time(ce)} | {_ratio_spread(timings, label, 'ce')} | "
                f"{_ratio_spread(timings, f'{label} cpu', 'ce cpu')} | "
                f"{_fmt_mem(record)} | {_fmt_mem(ce)} | {_ratio(record, ce, 'peak_bytes')} |"
            )
    return lines


def _auto_rows(backend: str, n: int) -> int:
    """The rows per block tile="auto" gives a backend's kernel at N = n (JAX's blocks are half the others')."""
    if backend == "jax":
        from hcl_array.backends._jax_fused import rows_per_block_request

        return rows_per_block_request("auto", n, n)
    from hcl_array.tiled import auto_tile

    return min(auto_tile(n), n)


def scaling_section(args: argparse.Namespace) -> list[str]:
    lines = [
        "### Scaling: hscl forward + backward, d = 128, dense and tiled, vs the matrix products alone",
        "",
        "Torch, NumPy and JAX rows run the fused kernel (`dense`: one block of N rows). The products are",
        "z_b z^T, G z and G^T z_b per block of the same size.",
        "",
        "| backend | N | path | tile | time | memory | time / products | products time | products mem | "
        "time / SupCon | mem / SupCon |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for backend in args.backends:
        for n in args.sizes:
            tile = _auto_rows(backend, n)
            large = n > 8192  # minutes per run: one timed run, no warm-up except for JAX's compilation
            spec = {
                "backend": backend,
                "n": n,
                "device": "cpu",
                "reps": 1 if large else _reps(args, n),
                "warmup": backend == "jax" or not large,
            }
            products = run({**spec, "kind": "matmul", "tile": tile}, args.timeout) if "matmul" in args.kinds else None
            supcon = None
            if backend == "torch" and n <= 8192 and "supcon" in args.kinds:
                supcon = run({**spec, "kind": "supcon", "tile": None}, args.timeout)
            if products is not None and not {"dense", "tiled"} & set(args.kinds):  # a products-only run
                lines.append(
                    f"| {backend} | {n} | products | {tile} | {_fmt_time(products)} | {_fmt_mem(products)} | "
                    f"1.00x | {_fmt_time(products)} | {_fmt_mem(products)} | - | - |"
                )
            for path, path_tile in (("dense", None), ("tiled", tile)):
                if path not in args.kinds or (path == "dense" and n > args.max_dense):
                    continue
                record = run({**spec, "kind": "hscl", "tile": path_tile}, args.timeout)
                lines.append(
                    f"| {backend} | {n} | {path} | {path_tile or '-'} | {_fmt_time(record)} | {_fmt_mem(record)} | "
                    f"{_ratio(record, products, 'seconds')} | {_fmt_time(products)} | {_fmt_mem(products)} | "
                    f"{_ratio(record, supcon, 'seconds')} | {_ratio(record, supcon, 'peak_bytes')} |"
                )
    return lines


def gpu_backends() -> list[tuple[str, str]]:
    """(backend, device) pairs that have a GPU here; probed in subprocesses so nothing lingers."""
    probes = {
        ("torch", "cuda"): "import torch; assert torch.cuda.is_available()",
        ("cupy", "cuda"): "import cupy; assert cupy.cuda.runtime.getDeviceCount() > 0",
        ("jax", "gpu"): "import jax; assert jax.devices()[0].platform == 'gpu'",
    }
    found = []
    for pair, probe in probes.items():
        if subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120).returncode == 0:
            found.append(pair)
    return found


#: (label, backend, kernel) rows of the GPU section: each library's default path (the fused kernel on torch,
#: CuPy and JAX), and torch's tiled array-API path at the smallest size for comparison
GPU_ROWS = (
    ("torch", "torch", True),
    ("cupy", "cupy", True),
    ("jax", "jax", True),
    ("torch, array API", "torch", False),
)


def gpu_section(args: argparse.Namespace) -> list[str]:
    """hscl forward + backward per GPU backend, as a ratio to the same blocks' matrix products, within a budget.

    Each configuration runs in its own process (a clean allocator for the peak memory): one warm-up and
    --reps timed runs. Configurations that would start after --gpu-budget seconds are listed as not run.
    """
    from hcl_array.tiled import auto_tile

    pairs = dict(gpu_backends())
    lines = ["### GPU: hscl forward + backward, float32, d = 128", ""]
    if not pairs:
        return lines + ["No GPU answered on this machine: these numbers are pending (run with a GPU present)."]
    lines += [
        "| backend | N | tile | time | GPU peak memory | products alone | time / products |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    started = time.monotonic()
    for label, backend, kernel in GPU_ROWS:
        sizes = args.gpu_sizes if kernel else args.gpu_sizes[:1]
        for n in sizes if backend in pairs else []:
            tile = min(4 * auto_tile(n), n)
            spec = {"backend": backend, "n": n, "device": pairs[backend], "reps": args.reps, "tile": tile}
            if time.monotonic() - started > args.gpu_budget:
                lines.append(f"| {label} | {n} | {tile} | not run: past the {args.gpu_budget:g} s budget | | | |")
                continue
            products = run({**spec, "kind": "matmul"}, args.timeout)
            record = run({**spec, "kind": "hscl", "kernel": kernel}, args.timeout)
            lines.append(
                f"| {label} | {n} | {tile} | {_fmt_time(record)} | {_fmt_mem(record)} | {_fmt_time(products)} | "
                f"{_ratio(record, products, 'seconds')} |"
            )
    return lines


def environment() -> str:
    import numpy
    import torch

    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {numpy.__version__}, Python {platform.python_version()}; "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)"
    )


def write(tables: list[str], command: str, out: str, marker: str) -> None:
    """Replace this run's block (between its markers) in `out`, keeping everything else of the page."""
    start, end = f"<!-- bench:{marker}:start -->", f"<!-- bench:{marker}:end -->"
    block = "\n".join([start, "", f"Command: `{command}`", "", f"Machine: {environment()}.", "", *tables, "", end])
    if out == "-":
        print(block)
        return
    path = ROOT / out
    text = path.read_text() if path.exists() else "# Performance\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--section", default="peers,jax,scaling,gpu", help="comma-separated: peers, jax, scaling, gpu")
    parser.add_argument("--sizes", default=None, help="scaling sizes (default: 1024 doubling to --max-n)")
    parser.add_argument("--max-n", type=int, default=8192, help="largest scaling size (65536 for the full run)")
    parser.add_argument("--max-dense", type=int, default=8192, help="largest N for the dense path (memory)")
    parser.add_argument("--peer-sizes", default="512,2048,8192")
    parser.add_argument("--jax-sizes", default="512,2048,8192", help="jax section: batch sizes")
    parser.add_argument("--gpu-sizes", default="65536,262144", help="GPU section: N per backend (1M: ~1 min a run)")
    parser.add_argument("--gpu-budget", type=float, default=240.0, help="GPU section: seconds before it stops starting")
    parser.add_argument("--backends", default="torch,jax,numpy")
    parser.add_argument("--kinds", default="dense,tiled,matmul,supcon", help="scaling rows to run")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per configuration (after one warm-up)")
    parser.add_argument(
        "--processes",
        type=int,
        default=5,
        help="peers section: interleaved timing processes per N (their median ratio and range)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per configuration")
    parser.add_argument("--out", default="docs/performance.md", help="markdown file to update, or - for stdout")
    parser.add_argument("--marker", default="default", help="name of this run's block in --out (others are kept)")
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(interleaved_worker(spec) if "steps" in spec else worker(spec)))
        return
    sys.path.insert(0, str(ROOT))
    args.backends = args.backends.split(",")
    args.kinds = args.kinds.split(",")
    args.peer_sizes = [int(n) for n in args.peer_sizes.split(",")]
    args.gpu_sizes = [int(n) for n in args.gpu_sizes.split(",")]
    args.jax_sizes = [int(n) for n in args.jax_sizes.split(",")]
    args.sizes = (
        [int(n) for n in args.sizes.split(",")]
        if args.sizes
        else [1024 * 2**i for i in range(20) if 1024 * 2**i <= args.max_n]
    )
    sections = {"peers": peers_section, "jax": jax_section, "scaling": scaling_section, "gpu": gpu_section}
    tables: list[str] = []
    for name in args.section.split(","):
        print(f"section {name}", file=sys.stderr)
        tables += [*sections[name](args), ""]
    write(tables, "python " + " ".join(["bench/bench_losses.py", *sys.argv[1:]]), args.out, args.marker)


if __name__ == "__main__":
    main()
