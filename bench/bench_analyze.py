"""Benchmark (not a test): `hcl analyze`'s final report on a synthetic embeddings file, as ratios to one X^T X pass.

    python bench/bench_analyze.py write FILE --rows 200000 --dim 512 --classes 500   # .npz or .npy (+ _labels.npy)
    python bench/bench_analyze.py run FILE [--chunk-rows 65536]

`write` streams noisy copies of a rotated simplex ETF into FILE chunk by chunk (float32, never all in memory;
an .npz member is written straight into the zip). `run` times `analysis.final_report(analysis.load_run(FILE))`
(the code `hcl analyze FILE` runs) and then, in the same process, one X^T X pass over the same rows (float32,
as the data are stored, and float64, as the metrics compute), and prints the time as ratios to those passes
and the peak memory: the process's maximum resident set size (which also counts the X^T X pass's own
reading, so it is read before that pass) and tracemalloc's peak. The same `run` works on the code before
streaming: point PYTHONPATH at a checkout of it. On a shared machine set OPENBLAS_NUM_THREADS to the cores.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np


def _chunks(rows: int, dim: int, classes: int, chunk: int, seed: int = 0):
    from hcl_array.geometry import simplex_etf

    centres = np.asarray(simplex_etf(classes, dim, seed=seed), dtype=np.float32)
    for index, start in enumerate(range(0, rows, chunk)):
        rng = np.random.default_rng([seed, index])
        size = min(chunk, rows - start)
        labels = rng.integers(0, classes, size=size)
        yield centres[labels] + 0.3 * rng.standard_normal((size, dim), dtype=np.float32), labels


def write(path: Path, rows: int, dim: int, classes: int, chunk: int = 32_768) -> None:
    """FILE as .npy (memory-mapped, labels in FILE_labels.npy) or .npz (embeddings, labels members)."""
    labels = np.empty(rows, dtype=np.int64)
    if path.suffix == ".npy":
        target = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
        for start, (block, block_labels) in zip(range(0, rows, chunk), _chunks(rows, dim, classes, chunk), strict=True):
            target[start : start + block.shape[0]] = block
            labels[start : start + block.shape[0]] = block_labels
        target.flush()
        del target
        np.save(path.with_name(f"{path.stem}_labels.npy"), labels)
        return
    with zipfile.ZipFile(path, "w", allowZip64=True) as archive:
        with archive.open("embeddings.npy", "w", force_zip64=True) as member:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
            np.lib.format.write_array_header_2_0(member, header | {"shape": (rows, dim)})
            for start, (block, block_labels) in zip(
                range(0, rows, chunk), _chunks(rows, dim, classes, chunk), strict=True
            ):
                member.write(block.tobytes())
                labels[start : start + block.shape[0]] = block_labels
        with archive.open("labels.npy", "w") as member:
            np.lib.format.write_array(member, labels)


def _gram_pass(path: Path, dtype) -> tuple[float, float]:
    """(wall, CPU) seconds of X^T X over FILE's rows in blocks (the reading is not timed)."""
    if path.suffix == ".npy":
        data = np.load(path, mmap_mode="r")
    else:
        with np.load(path) as archive:
            data = archive["embeddings"]
    elapsed, cpu, gram = 0.0, 0.0, np.zeros((data.shape[1], data.shape[1]), dtype=dtype)
    for start in range(0, data.shape[0], 65_536):
        block = np.asarray(data[start : start + 65_536], dtype=dtype)
        begin, cpu_begin = time.perf_counter(), time.process_time()
        gram += block.T @ block
        elapsed, cpu = elapsed + time.perf_counter() - begin, cpu + time.process_time() - cpu_begin
    return elapsed, cpu


def run(path: Path) -> None:
    from hcl_array import analysis

    tracemalloc.start()
    start, cpu = time.perf_counter(), time.process_time()
    report = analysis.final_report(analysis.load_run(path))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (gram32, cpu32), (gram64, cpu64) = _gram_pass(path, np.float32), _gram_pass(path, np.float64)
    print(f"{path.name}: {report.num_classes} classes x dim {report.dim}")
    memory = f"max RSS {max_rss / 2**30:.2f} GiB, traced {traced / 2**30:.2f} GiB"
    print(f"analysis: {elapsed:.1f} s wall, {cpu:.1f} s CPU; {memory}")
    print(f"X^T X pass: float32 {gram32:.2f} s ({cpu32:.2f} s CPU), float64 {gram64:.2f} s ({cpu64:.2f} s CPU)")
    print(f"wall ratio: {elapsed / gram32:.1f}x the float32 pass, {elapsed / gram64:.1f}x the float64 pass")
    print(f"CPU ratio: {cpu / cpu32:.1f}x the float32 pass, {cpu / cpu64:.1f}x the float64 pass")
    train = report.train
    print(f"nc1 {train['nc1']:.6g}, ncc accuracy {train['ncc_accuracy']:.6g}, rankme {train['rankme']:.6g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("write", "run"))
    parser.add_argument("file", type=Path)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=500)
    args = parser.parse_args()
    if args.action == "write":
        write(args.file, args.rows, args.dim, args.classes)
    else:
        run(args.file)


if __name__ == "__main__":
    main()
