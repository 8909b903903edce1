"""Benchmark (not a test): the image training step of `hcl train`, and the share of it spent outside the encoder.

Each row times, in one process and interleaved (repeat r runs every row once before r + 1 starts), on a
fabricated CIFAR-100 (uint8 32x32 images kept on the device, as `hcl train` keeps them):

* input pipeline: the batch's views built on the device (`image_pipeline.ImageInputs.views`: gather,
  floats, augmentation with host-drawn parameters, normalization) - what the GPU must never wait for;
* encoder: forward and backward of the ResNet alone on those views (the baseline);
* whole step: `hcl train`'s step as it runs (views, ResNet forward, loss, backward, Adam);
* outside the encoder: 1 - encoder / whole step (pipeline, loss, optimizer and glue).

With torchvision loaded, one more row times the alternative to the batched array-API augmentations:
torchvision.transforms.v2.functional image by image (v2 ops take one set of parameters per call).

    .nox/vision/bin/python bench/bench_train.py                      # resnet18, CPU, batch 128, simclr and none
    .nox/vision/bin/python bench/bench_train.py --preset cifar100    # CUDA: ResNet-50, batch 512, fp32 and bf16

--preset cifar100 times the preset's step (ResNet-50, batch 512, HSCL beta 5 with the released loss options,
no augmentation) in fp32 and bf16 on the first CUDA device; without CUDA it prints one line and exits 0.
Needs torchvision (the `vision` extra, e.g. the `nox -s vision` venv); numbers are medians over repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the fabricated-data writer of the tests


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _run(config_fields: dict, data_dir: str):
    from hcl_array import training

    config = training.TrainConfig(data="cifar100", data_dir=data_dir, backend="torch", **config_fields)
    config.validate()
    run = training._setup(config)
    step = training.make_step(run.backend, run.objective, training._optimizer(run))
    return training, run, step


def _timers(config_fields: dict, data_dir: str, batch: int) -> dict[str, Callable[[int], None]]:
    """name -> f(batch_number): one timed unit of work each, synchronized."""
    import torch

    training, run, step = _run(config_fields, data_dir)
    device = config_fields.get("device") or "cpu"
    indices = np.arange(batch)

    def pipeline(number: int) -> None:
        run.images.views(indices, 1, 0, number)
        _sync(device)

    def encoder(number: int) -> None:
        x = run.images.views(indices, 1, 0, 0)  # the same views each time: only the encoder is timed
        leaves = {name: value.detach().requires_grad_(True) for name, value in run.params.items()}
        z = run.objective.encode(leaves, x, None)
        torch.autograd.grad(z.float().square().sum(), list(leaves.values()))
        _sync(device)

    def whole_step(number: int) -> None:
        arguments = training._batch_arguments(run, indices, 0, number)
        run.params, run.opt_state, value = step(run.params, run.opt_state, *arguments)
        float(value)  # hcl train reads every step's loss: this synchronizes

    return {"input pipeline": pipeline, "encoder forward + backward": encoder, "whole step": whole_step}


def _torchvision_views(data_dir: str, batch: int) -> Callable[[int], None] | None:
    """The released augmentation through torchvision v2 functional, one image at a time (host loop)."""
    try:
        import torch
        import torchvision.transforms.v2.functional as functional
    except (ImportError, RuntimeError):
        return None
    from hcl_array import augmentations as aug
    from hcl_array.data import cifar

    images = torch.tensor(cifar(data_dir, 100).x_train[:batch]).float() / 255
    operations = (functional.adjust_brightness, functional.adjust_contrast, functional.adjust_saturation)

    def views(number: int) -> None:
        params = aug.draw_simclr(np.random.default_rng(number), batch, 32, 32)
        out = []
        for index in range(batch):
            image = functional.resized_crop(images[index], *map(int, params.boxes[index]), [32, 32])
            if params.flip[index]:
                image = functional.horizontal_flip(image)
            if params.jitter[index]:
                for op in params.order[index]:
                    factor = float(params.factors[index, op])
                    image = functional.adjust_hue(image, factor) if op == 3 else operations[op](image, factor)
            if params.gray[index]:
                image = functional.rgb_to_grayscale(image, num_output_channels=3)
            if params.sigma[index] > 0:
                image = functional.gaussian_blur(image, [3, 3], [float(params.sigma[index])] * 2)
            out.append(functional.normalize(image, list(aug.IMAGE_MEAN), list(aug.IMAGE_STD)))
        torch.stack(out)

    return views


def _measure(timers: dict[str, Callable[[int], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each timer, interleaved over repeats after one warm-up call each."""
    for timer in timers.values():
        timer(0)
    seconds: dict[str, list[float]] = {name: [] for name in timers}
    for repeat in range(repeats):
        for name, timer in timers.items():
            started = time.perf_counter()
            timer(repeat + 1)
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def _write_data(folder: str, count: int) -> str:
    from tests.fabricate import write_binary_cifar

    write_binary_cifar(Path(folder), 100, per_batch=count)
    return folder


def cpu_table(batch: int, repeats: int, threads: int) -> list[str]:
    import torch

    torch.set_num_threads(threads)
    rows = ["| resnet18, CPU | images/s | ms per batch | share of the step |", "| --- | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as folder:
        data_dir = _write_data(folder, batch)
        for augment in ("simclr", "none"):
            fields = {"encoder": "resnet18", "batch_size": batch, "augment": augment, "loss": "hscl", "paper": True}
            timers = _timers(fields, data_dir, batch)
            if augment == "simclr" and (reference := _torchvision_views(data_dir, batch)) is not None:
                timers["input pipeline, torchvision v2 per image (host loop)"] = reference
            times = _measure(timers, repeats)
            step = times["whole step"]
            for name, seconds in times.items():
                rows.append(
                    f"| {augment}: {name} | {batch / seconds:,.0f} | {1e3 * seconds:,.1f} | {seconds / step:.1%} |"
                )
            outside = 1 - times["encoder forward + backward"] / step
            rows.append(f"| {augment}: **outside the encoder** (1 - encoder / step) | | | **{outside:.1%}** |")
    return rows


def gpu_table(repeats: int) -> list[str] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    batch = 512
    rows = [
        f"| cifar100 preset step, {torch.cuda.get_device_name(0)} | images/s | ms per step | vs fp32 |",
        "| --- | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as folder:
        data_dir = _write_data(folder, batch)
        timers = {}
        for precision in ("fp32", "bf16"):
            fields = {
                "encoder": "resnet50", "batch_size": batch, "augment": "none", "loss": "hscl", "beta": 5.0,
                "paper": True, "device": "cuda", "precision": precision, "dim": 99,
            }  # fmt: skip
            timers[precision] = _timers(fields, data_dir, batch)["whole step"]
        times = _measure(timers, repeats)
    for precision, seconds in times.items():
        speedup = times["fp32"] / seconds
        rows.append(f"| {precision} | {batch / seconds:,.0f} | {1e3 * seconds:,.1f} | {speedup:.2f}x |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["cifar100"], help="time the cifar100 preset's step on CUDA")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: the same as --preset cifar100")
    parser.add_argument("--batch", type=int, default=128, help="CPU batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    load = os.getloadavg()
    if args.preset or args.device == "cuda":
        rows = gpu_table(args.repeats)
        if rows is None:
            print("bench_train: no CUDA device (torch.cuda.is_available() is False): the preset step is not timed")
            return 0
    else:
        rows = cpu_table(args.batch, args.repeats, args.threads)
    print("\n".join(rows))
    print(f"\nload average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
