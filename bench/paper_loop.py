"""hcl-array's hscl against the paper's own loss loop, at the paper's configuration (not a test).

The baseline is a CPU transcription of `nce_supervised_hard` in the released code of Jiang, Nguyen, Aeron
and Ishwar (github.com/rjiang03/HCL, main/SCL/train_mean_classifier.py, the uncommented definition):
a Python loop over the anchors of the batch that, for each anchor, builds its positive and negative
masks, the tilted weights exp(beta s) on the negatives, draws num_pos * K negatives with
`np.random.choice` from them (K = 256: K draws for each positive pair), and sums
-log(e^{s_ij} / (e^{s_ij} + mean_K e^{s_in})) over the anchor's positives (the anchor itself included);
the loss is that sum over anchors divided by the number of pairs. Only `.cuda()` became the CPU device;
the embeddings are clipped to the unit ball as the released model's `forward` does.

hcl-array computes the same loss with `PAPER_PRESET` (unit-ball clip, tau = 1, the anchor its own positive,
k = 256 draws from the detached tilted distribution, averaged), except that its k draws per anchor are
shared by the anchor's positive pairs (the released loop draws K per pair); both estimate the same
expectation.

    .venv/bin/python bench/paper_loop.py                  # B = 512, d = 99, 100 classes, beta = 1
    .venv/bin/python bench/paper_loop.py --reps 5 --beta 5

Both run forward + backward on torch CPU in the same process, interleaved; the result is the ratio of
their median times.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def paper_nce_supervised_hard(out: torch.Tensor, label: torch.Tensor, beta: float, k: int = 256) -> torch.Tensor:
    """The released code's `nce_supervised_hard` (github.com/rjiang03/HCL), transcribed for the CPU."""
    similarity = torch.mm(out, out.t().contiguous())
    batch = label.shape[0]
    pair_count = 0
    total = 0
    for i in range(batch):
        positive = torch.zeros(batch)
        positive[torch.where(label == label[i])[0]] = 1
        negative = 1 - positive
        positive_exp = torch.exp(similarity[i]) * positive
        negative_exp = torch.exp(similarity[i]) * negative
        tilted = torch.exp(beta * similarity[i]) * negative
        q = (tilted / tilted.sum()).detach()
        num_pos = len(torch.where(positive_exp != 0)[0])
        drawn = np.random.choice(q.shape[0], num_pos * k, p=q.cpu().numpy())
        negative_mean = negative_exp[drawn].reshape((num_pos, k)).mean(1)
        pairs = torch.where(positive_exp != 0)
        pair_count += len(pairs[0])
        total += (-torch.log(positive_exp[pairs] / (positive_exp[pairs] + negative_mean))).sum()
    return total / pair_count


def unit_ball(x: torch.Tensor) -> torch.Tensor:
    """The released model's output clip: rows of norm above 1 scaled onto the sphere."""
    norms = x.norm(p=2, dim=1, keepdim=True)
    return x * torch.where(norms > 1, 1.0 / norms, torch.ones_like(norms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=99)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=5, help="timed runs of the paper's loop (hcl: 20 per run)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import hcl_array as hcl

    rng = np.random.default_rng(0)
    np.random.seed(0)  # the released loop draws from NumPy's global generator
    z0 = torch.tensor(rng.normal(size=(args.batch, args.dim)), dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, args.classes, args.batch))
    draws = np.random.default_rng(1)

    def paper() -> float:
        z = z0.clone().requires_grad_()
        loss = paper_nce_supervised_hard(unit_ball(z), labels, args.beta)
        loss.backward()
        return float(loss.detach())

    def library() -> float:
        z = z0.clone().requires_grad_()
        loss = hcl.hscl(z, labels, beta=args.beta, **hcl.PAPER_PRESET, rng=draws)
        loss.backward()
        return float(loss.detach())

    values = {"paper": paper(), "hcl": library()}
    times: dict[str, list[float]] = {"paper": [], "hcl": []}
    for _ in range(args.reps):
        for name, step, repeat in (("paper", paper, 1), ("hcl", library, 20)):
            start = time.perf_counter()
            for _ in range(repeat):
                step()
            times[name].append((time.perf_counter() - start) / repeat)
    paper_time, hcl_time = (statistics.median(times[name]) for name in ("paper", "hcl"))
    load = os.getloadavg()
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    print(f"B = {args.batch}, d = {args.dim}, {args.classes} classes, beta = {args.beta}, K = 256, forward + backward")
    print("| loss | value (one draw) | time | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| released `nce_supervised_hard` loop | {values['paper']:.4f} | {paper_time * 1e3:.1f} ms | 1x |")
    print(
        f"| `hcl.hscl(..., **PAPER_PRESET)` | {values['hcl']:.4f} | {hcl_time * 1e3:.2f} ms | "
        f"{paper_time / hcl_time:.0f}x |"
    )


if __name__ == "__main__":
    main()
