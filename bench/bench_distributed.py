"""Benchmark of cross-device negatives (not a test): 2 gloo processes against 1 process at the same global batch.

Run from the repository root (about 2 minutes on 2 CPU cores):

    .venv/bin/python bench/bench_distributed.py                  # prints a markdown table
    .venv/bin/python bench/bench_distributed.py --sizes 1024,4096,8192 --reps 5

For each global batch N (hscl, beta = 5, d = 128, float32, torch CPU, 10 classes):

- step ratio: the median forward + backward of `hscl(z_local, labels_local, group=WORLD)` on 2 gloo
  processes (the slower rank, after a barrier), divided by the median forward + backward of `hscl(z, labels)`
  on the whole batch in one process (the default path, the fused kernel) measured in the same run; one
  thread per process, as each rank would have its own device; and divided by one process running the
  same row-block code (kernel="array_api", integer tile) on the whole batch;
- bytes sent per rank and step, counted at the collectives (all_gather, all_reduce, reduce_scatter);
- peak memory per rank: the ru_maxrss high-water mark over the steps minus the resident size before them,
  next to one (B_local x N) float32 block and the (N x N) float32 matrix that no rank forms.

Each measurement runs in fresh processes (spawned), one configuration at a time; the machine's load is printed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from typing import Any

import numpy as np

DIM, CLASSES, BETA = 128, 10, 5.0


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def _batch(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, DIM)).astype(np.float32), rng.integers(0, CLASSES, n)


def _counting_collectives(dist: Any, sent: list[int]) -> None:
    """Wrap the collectives the loss calls so that they add the bytes this rank sends to `sent`."""
    for name in ("all_gather", "all_reduce", "reduce_scatter"):
        original = getattr(dist, name)

        def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            payload = args[1] if _name != "all_reduce" else args[0]
            tensors = payload if isinstance(payload, list) else [payload]
            sent[0] += sum(t.numel() * t.element_size() for t in tensors)
            return _original(*args, **kwargs)

        setattr(dist, name, counted)


def _timed_steps(step: Any, reps: int, barrier: Any = None) -> tuple[float, int]:
    """(median seconds of `step`, peak resident KiB it added), after one warm-up."""
    step()
    before, times = _rss_kib(), []
    for _ in range(reps):
        if barrier is not None:
            barrier()
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times), max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, 0)


def single_worker(n: int, reps: int, results: Any) -> None:
    import torch

    torch.set_num_threads(1)  # one core per process, as each rank would have its own device

    import hcl_array as hcl
    from hcl_array.tiled import auto_tile

    z, labels = _batch(n)
    z, labels = torch.tensor(z), torch.tensor(labels)

    def step(**options: Any) -> None:
        leaf = z.clone().requires_grad_(True)
        hcl.hscl(leaf, labels, beta=BETA, **options).backward()

    blocks = {"kernel": "array_api", "tile": auto_tile(n)}  # the row-block code the distributed path runs
    results.put((*_timed_steps(step, reps), _timed_steps(lambda: step(**blocks), reps)[0]))


def rank_worker(rank: int, n: int, reps: int, init: str, results: Any) -> None:
    import torch
    import torch.distributed as dist

    import hcl_array as hcl

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    z, labels = _batch(n)
    rows = slice(rank * n // 2, (rank + 1) * n // 2)
    z, labels = torch.tensor(z[rows]), torch.tensor(labels[rows])
    sent = [0]

    def step() -> None:
        leaf = z.clone().requires_grad_(True)
        hcl.hscl(leaf, labels, beta=BETA, group=dist.group.WORLD).backward()

    step()  # loads the kernels before the collectives are wrapped
    _counting_collectives(dist, sent)
    step()
    per_step = sent[0]
    seconds, peak = _timed_steps(step, reps, barrier=dist.barrier)
    results.put((rank, seconds, peak, per_step))
    dist.destroy_process_group()


def measure(n: int, reps: int) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    single = context.Process(target=single_worker, args=(n, reps, results))
    single.start()
    one_seconds, one_peak, one_blocks_seconds = results.get()
    single.join()
    with tempfile.TemporaryDirectory() as folder:
        init = f"file://{folder}/rendezvous"
        ranks = [context.Process(target=rank_worker, args=(r, n, reps, init, results)) for r in range(2)]
        for process in ranks:
            process.start()
        measured = [results.get() for _ in ranks]
        for process in ranks:
            process.join()
    return {
        "n": n,
        "one_seconds": one_seconds,
        "one_peak_mib": one_peak / 1024,
        "one_blocks_seconds": one_blocks_seconds,
        "two_seconds": max(m[1] for m in measured),
        "two_peak_mib": max(m[2] for m in measured) / 1024,
        "bytes_sent": max(m[3] for m in measured),
    }


def table(records: list[dict[str, float]]) -> str:
    lines = [
        "| N (global) | B_local | 1 process (kernel) | 1 process (row blocks) | 2 gloo processes "
        "| ratio to kernel | ratio to row blocks | bytes sent per rank and step | peak per rank "
        "| one (B_local x N) block | (N x N) matrix |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        n = int(r["n"])
        block, full = (n // 2) * n * 4 / 2**20, n * n * 4 / 2**20
        lines.append(
            f"| {n} | {n // 2} | {r['one_seconds'] * 1e3:.1f} ms | {r['one_blocks_seconds'] * 1e3:.1f} ms "
            f"| {r['two_seconds'] * 1e3:.1f} ms | {r['two_seconds'] / r['one_seconds']:.2f}x "
            f"| {r['two_seconds'] / r['one_blocks_seconds']:.2f}x | {r['bytes_sent'] / 2**20:.2f} MiB "
            f"| {r['two_peak_mib']:.0f} MiB | {block:.0f} MiB | {full:.0f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096", help="global batch sizes, comma-separated")
    parser.add_argument("--reps", type=int, default=5, help="timed steps per configuration (median)")
    args = parser.parse_args()
    records = [measure(int(n), args.reps) for n in args.sizes.split(",")]
    print(f"load average before/after: {os.getloadavg()[0]:.1f} (2 CPU cores shared)")
    print(table(records))


if __name__ == "__main__":
    main()
