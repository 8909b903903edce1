"""Benchmark (not a test): the streaming collapse report on N = 1,000,000 rows, d = 128, C = 100, float32, CPU.

The rows are generated chunk by chunk (never all in memory): noisy copies of a rotated simplex ETF.
Reports the wall time of the two streaming passes, the time spent generating data alone, and the peak
memory: tracemalloc's peak of traced allocations (NumPy reports its buffers to tracemalloc) and the
growth of the process's maximum resident set size. CPU time is printed too: on a shared machine the
wall time depends on the other processes, and OpenBLAS worker threads that wait on busy cores waste
most of it: on a shared machine run it with OPENBLAS_NUM_THREADS=1. Usage:

    .venv/bin/python bench/bench_metrics.py [--rows 1000000] [--dim 128] [--classes 100] [--chunk 16384]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np

from hcl_array.geometry import simplex_etf
from hcl_array.metrics import streaming_collapse_report


def chunks(rows: int, dim: int, classes: int, chunk: int, seed: int = 0):
    """A fresh iterator of (embeddings float32, labels int64) chunks; the same data on every call."""
    centres = np.asarray(simplex_etf(classes, dim, seed=seed))

    def generate():
        for index, start in enumerate(range(0, rows, chunk)):
            rng = np.random.default_rng([seed, index])
            size = min(chunk, rows - start)
            labels = rng.integers(0, classes, size=size)
            noise = rng.standard_normal((size, dim), dtype=np.float32)
            yield (centres[labels] + 0.3 * noise).astype(np.float32), labels

    return generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=16_384)
    args = parser.parse_args()
    batches = chunks(args.rows, args.dim, args.classes, args.chunk)

    start = time.perf_counter()
    for _ in batches():
        pass
    generation = time.perf_counter() - start

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    report = streaming_collapse_report(batches, args.classes)  # two passes: statistics, then probe
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before

    input_mib = args.rows * args.dim * 4 / 2**20
    print(
        f"N={args.rows:,} d={args.dim} C={args.classes} float32, chunks of {args.chunk:,} rows "
        f"(input {input_mib:.0f} MiB if materialized; never materialized here)"
    )
    print(
        f"streaming report (2 passes, includes generating the data twice): {elapsed:.1f} s wall, "
        f"{cpu:.1f} s CPU (all threads; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    print(f"generating the data once alone: {generation:.1f} s -> metrics about {elapsed - 2 * generation:.1f} s")
    print(f"peak traced memory: {peak / 2**20:.0f} MiB; max RSS growth: {rss_growth / 1024:.0f} MiB")
    for key, value in report.items():
        if key != "spectrum":
            print(f"  {key:28s} {value:.6g}")
    print(f"  spectrum (first 3, last 2)   {report['spectrum'][:3]} ... {report['spectrum'][-2:]}")


if __name__ == "__main__":
    main()
