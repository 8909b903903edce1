"""Measurement (not a test): what TF32 matrix products would cost hscl in accuracy, emulated on the CPU.

JAX runs float32 matrix products in TF32 on Ampere and Hopper GPUs unless told otherwise; TF32 keeps 10 of
float32's 23 mantissa bits of each operand (products and sums stay float32). Rounding u = g(z) to TF32 and
computing s = u u^T and the hscl loss and gradient from it, against float64, shows the error the loss would
carry; the same in plain float32 is the baseline. The library asks JAX for full float32 products
(`hcl_array._array_api.full_precision`); docs/performance.md records these numbers.

    .venv/bin/python bench/tf32_error.py [--n 4096] [--dim 128] [--beta 5]
"""

from __future__ import annotations

import argparse

import numpy as np

import hcl_array as hcl
from hcl_array.formulas import normalize_embeddings


def to_tf32(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32's 10 mantissa bits (to nearest, ties away from zero: as close as needed)."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--beta", type=float, default=5.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    z, ids = rng.normal(size=(args.n, args.dim)), rng.integers(0, 100, args.n)
    u = normalize_embeddings(z, "ball")  # the rows the loss multiplies; "none" below keeps them as they are
    operands = {"float64": u, "float32": u.astype(np.float32), "TF32 operands": to_tf32(u)}
    reference_s = u @ u.T
    reference_value, reference_grad = hcl.hscl(u, ids, beta=args.beta, normalize="none", return_grad=True)
    print(f"N = {args.n}, d = {args.dim}, hscl beta = {args.beta}: error against float64")
    print("| operands | max abs error of s / max abs s | loss, relative | gradient, max abs error / max abs |")
    print("| --- | ---: | ---: | ---: |")
    for name, rows in list(operands.items())[1:]:
        s = rows.astype(np.float32) @ rows.astype(np.float32).T
        value, grad = hcl.hscl(rows, ids, beta=args.beta, normalize="none", return_grad=True)
        s_error = np.abs(s - reference_s).max() / np.abs(reference_s).max()
        grad_error = np.abs(grad - reference_grad).max() / np.abs(reference_grad).max()
        print(f"| {name} | {s_error:.1e} | {abs(value / reference_value - 1):.1e} | {grad_error:.1e} |")


if __name__ == "__main__":
    main()
