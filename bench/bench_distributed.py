"""Benchmark of cross-device negatives (not a test): 2 gloo ranks against 1 process at the same global batch.

Run from the repository root (defaults: N = 2048, 8192, 16384, 3 rounds; about 10 minutes on 2 quiet cores):

    .venv/bin/python bench/bench_distributed.py
    .venv/bin/python bench/bench_distributed.py --sizes 2048 --rounds 5 --paths kernel,row_blocks,pml

For each global batch N (hscl, beta = 5, d = 128, float32, torch CPU, 10 classes), every configuration runs in
fresh spawned processes, one thread per process (as each rank would have its own device):

- `1 process`: `hscl(z, labels)` forward + backward on the whole batch (its default path, the fused kernel);
- `kernel`: `hscl(z_local, labels_local, group=WORLD)` on 2 ranks, each holding half the batch (the default
  path across ranks: the fused kernel on the rank's anchors against the gathered batch);
- `row_blocks`: the same with `kernel="array_api"` (the array-API row blocks, the path group= ran before);
- `pml`: pytorch-metric-learning's `DistributedLossWrapper(SupConLoss())` on the same 2 local batches.

A step is one forward + backward; its time is the median over --reps steps after one warm-up, each started
after a barrier, on the slower rank. Rounds run every configuration in turn, so that one round's ratios share
the machine's load; the table gives each time's median over rounds, each ratio's median and range over rounds:

- strong scaling: the 2-rank step over the 1-process step of the same round (ideal: 0.5 plus the traffic);
  beside it the same ratio of CPU time (the slower rank's process, gloo's threads included), which other jobs
  on the machine inflate less than the wall time;
- the ratio to PML's distributed SupCon step of the same round;
- bytes sent per rank and step: the payload this rank hands to all_gather, all_reduce and reduce_scatter;
- peak memory per rank: the ru_maxrss high-water mark over the steps minus the resident size before them,
  next to one (B_local x N) float32 block (the rows per block of `tile="auto"` bound it further).

Each process starts a session of its own (`_own_session`): on a machine shared with other jobs, Linux's
autogroup scheduler would otherwise give the two ranks one session's share of the CPUs between them, and the
1-process baseline a whole one. On a quiet machine this changes nothing.

PML forms several (N, N) matrices on every rank (3.0 GiB per rank at N = 8192, so about 12 GiB at 16384): it
runs up to --pml-max-n only, so that 2 ranks fit in the memory of a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

DIM, CLASSES, BETA = 128, 10, 5.0
PATHS = ("kernel", "row_blocks", "pml")


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def _batch(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, DIM)).astype(np.float32), rng.integers(0, CLASSES, n)


def _counting_collectives(dist: Any, sent: list[int]) -> None:
    """Wrap the collectives so that they add the bytes this rank hands them to `sent`."""
    for name in ("all_gather", "all_reduce", "reduce_scatter"):
        original = getattr(dist, name)

        def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            payload = args[1] if _name != "all_reduce" else args[0]
            tensors = payload if isinstance(payload, list) else [payload]
            sent[0] += sum(t.numel() * t.element_size() for t in tensors)
            return _original(*args, **kwargs)

        setattr(dist, name, counted)


def _timed_steps(
    step: Callable[[], None], reps: int, barrier: Callable[[], Any] | None = None
) -> tuple[float, float, int]:
    """(median seconds of `step`, median CPU seconds of this process in it, peak resident KiB it added),
    after one warm-up."""
    before = _rss_kib()
    step()
    times, cpu_times = [], []
    for _ in range(reps):
        if barrier is not None:
            barrier()
        started, cpu_started = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, 0)
    return statistics.median(times), statistics.median(cpu_times), peak


def _own_session() -> None:
    """Start a session of this process's own: Linux's autogroup scheduler shares the CPUs between sessions, so
    ranks spawned into one session would split one share while other jobs run (as no ranks on devices of
    their own do), where the 1-process baseline has a whole share. Each process, baseline included, gets one."""
    if hasattr(os, "setsid"):
        os.setsid()


def single_worker(n: int, reps: int, results: Any) -> None:
    _own_session()
    import torch

    torch.set_num_threads(1)  # one core per process, as each rank would have its own device

    import hcl_array as hcl

    z, labels = (torch.tensor(a) for a in _batch(n))

    def step() -> None:
        leaf = z.clone().requires_grad_(True)
        hcl.hscl(leaf, labels, beta=BETA).backward()

    results.put(("single", 0, *_timed_steps(step, reps), 0))


def _rank_step(path: str, z: Any, labels: Any, group: Any) -> Callable[[], None]:
    """One forward + backward of this rank's share on `path`."""
    import hcl_array as hcl

    if path == "pml":
        from pytorch_metric_learning.losses import SupConLoss
        from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

        loss = DistributedLossWrapper(SupConLoss())

        def step() -> None:
            leaf = z.clone().requires_grad_(True)
            loss(leaf, labels).backward()

        return step
    kernel = "auto" if path == "kernel" else "array_api"

    def step() -> None:
        leaf = z.clone().requires_grad_(True)
        hcl.hscl(leaf, labels, beta=BETA, group=group, kernel=kernel).backward()

    return step


def rank_worker(rank: int, path: str, n: int, reps: int, init: str, results: Any) -> None:
    _own_session()
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    z, labels = _batch(n)
    rows = slice(rank * n // 2, (rank + 1) * n // 2)
    step = _rank_step(path, torch.tensor(z[rows]), torch.tensor(labels[rows]), dist.group.WORLD)
    sent = [0]
    seconds, cpu_seconds, peak = _timed_steps(step, reps, barrier=dist.barrier)
    _counting_collectives(dist, sent)
    step()
    results.put((path, rank, seconds, cpu_seconds, peak, sent[0]))
    dist.destroy_process_group()


def _run(context: Any, target: Callable[..., None], arguments: list[tuple]) -> list[tuple]:
    """Start one process per argument tuple (with the results queue last), wait, return their results."""
    results = context.Queue()
    processes = [context.Process(target=target, args=(*args, results)) for args in arguments]
    for process in processes:
        process.start()
    measured = [results.get() for _ in processes]
    for process in processes:
        process.join()
    return measured


def measure_round(n: int, reps: int, paths: list[str]) -> dict[str, dict[str, float]]:
    """One round at global batch n: the 1-process step, then each 2-rank path, each in fresh processes."""
    context = multiprocessing.get_context("spawn")
    record = {}
    (_, _, seconds, cpu_seconds, peak, _), *_ = _run(context, single_worker, [(n, reps)])
    record["single"] = {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_kib": peak, "bytes": 0}
    for path in paths:
        with tempfile.TemporaryDirectory() as folder:
            init = f"file://{folder}/rendezvous"
            measured = _run(context, rank_worker, [(rank, path, n, reps, init) for rank in range(2)])
        record[path] = {
            "seconds": max(m[2] for m in measured),  # the slower rank
            "cpu_seconds": max(m[3] for m in measured),
            "peak_kib": max(m[4] for m in measured),
            "bytes": max(m[5] for m in measured),
        }
    return record


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def table(n: int, rounds: list[dict[str, dict[str, float]]], paths: list[str]) -> list[str]:
    """The table rows of one N: one per 2-rank path."""
    single = [r["single"]["seconds"] for r in rounds]
    block_mib = (n // 2) * n * 4 / 2**20
    lines = []
    for path in paths:
        if path not in rounds[0]:
            continue
        seconds = [r[path]["seconds"] for r in rounds]
        scaling = [r[path]["seconds"] / r["single"]["seconds"] for r in rounds]
        cpu_scaling = [r[path]["cpu_seconds"] / r["single"]["cpu_seconds"] for r in rounds]
        pml = _spread([r[path]["seconds"] / r["pml"]["seconds"] for r in rounds]) if "pml" in rounds[0] else "-"
        lines.append(
            f"| {n} | {path} | {statistics.median(single) * 1e3:.1f} ms | {statistics.median(seconds) * 1e3:.1f} ms "
            f"| {_spread(scaling)} | {_spread(cpu_scaling)} | {pml} | {rounds[0][path]['bytes'] / 2**20:.2f} MiB "
            f"| {max(r[path]['peak_kib'] for r in rounds) / 1024:.0f} MiB | {block_mib:.0f} MiB |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2048,8192,16384", help="global batch sizes, comma-separated")
    parser.add_argument("--reps", type=int, default=5, help="timed steps per configuration (median)")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of every configuration, interleaved")
    parser.add_argument("--paths", default="kernel,pml", help=f"2-rank paths, comma-separated: {', '.join(PATHS)}")
    parser.add_argument("--pml-max-n", type=int, default=8192, help="largest N at which PML runs (memory)")
    args = parser.parse_args()
    paths = [path for path in args.paths.split(",") if path]
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"--paths: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PATHS)}")
    print(f"load average before: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} CPU cores")
    lines = [
        "| N (global) | 2-rank path | 1 process (kernel) | 2 ranks | 2 ranks / 1 process | CPU time ratio "
        "| 2 ranks / PML | bytes sent per rank and step | peak per rank | one (B_local x N) block |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in (int(size) for size in args.sizes.split(",")):
        run_paths = [path for path in paths if path != "pml" or n <= args.pml_max_n]
        rounds = [measure_round(n, args.reps, run_paths) for _ in range(args.rounds)]
        lines += table(n, rounds, paths)
        print(f"N = {n} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
