"""Fabricated image data sets in the real file layouts: CIFAR (python and binary), STL-10, Tiny ImageNet, folders.

Every writer returns what it wrote, so a test can hold a reader to the exact pixels and labels.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------------------------------
# Fabricated CIFAR files, laid out and encoded like the distributed archives.


def _fake_cifar_arrays(count: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    fine = rng.integers(0, num_classes, size=count)
    coarse = fine // 5
    return pixels, fine, coarse


def write_python_cifar(root: Path, num_classes: int, per_batch: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The python version: pickled dicts (protocol 2) of b"data" uint8 (N, 3072) and list-of-int labels."""
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if num_classes == 10 else ["train", "test"]
    folder = root / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True)
    written = {}
    for index, name in enumerate(files):
        pixels, fine, coarse = _fake_cifar_arrays(per_batch, num_classes, seed=index)
        if num_classes == 10:
            batch = {
                b"batch_label": b"training batch",
                b"labels": fine.tolist(),
                b"data": pixels,
                b"filenames": [b"img_%d.png" % i for i in range(per_batch)],
            }
        else:
            batch = {
                b"filenames": [b"x.png"] * per_batch,
                b"batch_label": b"training batch 1 of 1",
                b"fine_labels": fine.tolist(),
                b"coarse_labels": coarse.tolist(),
                b"data": pixels,
            }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
        written[name] = (pixels, fine)
    return written


def write_binary_cifar(root: Path, num_classes: int, per_batch: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The binary version: records of label byte(s) then 3072 pixel bytes (CIFAR-100: coarse, fine)."""
    if num_classes == 10:
        files, folder = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"], "cifar-10-batches-bin"
    else:
        files, folder = ["train.bin", "test.bin"], "cifar-100-binary"
    (root / folder).mkdir(parents=True)
    written = {}
    for index, name in enumerate(files):
        pixels, fine, coarse = _fake_cifar_arrays(per_batch, num_classes, seed=100 + index)
        labels = fine[:, None] if num_classes == 10 else np.stack([coarse, fine], axis=1)
        records = np.concatenate([labels.astype(np.uint8), pixels], axis=1)
        (root / folder / name).write_bytes(records.tobytes())
        written[name] = (pixels, fine)
    return written


def write_stl10(root: Path, train: int = 6, test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin: 96x96 images stored column-major
    (each channel plane transposed, MATLAB order), labels 1..10 as bytes. Returns the row-major images."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in (("train", train), ("test", test)):
        images = rng.integers(0, 256, size=(count, 3, 96, 96), dtype=np.uint8)
        labels = rng.integers(1, 11, size=count).astype(np.uint8)
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
        written[f"x_{split}"], written[f"y_{split}"] = images, labels.astype(np.int64) - 1
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    return written


def _save(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.transpose(1, 2, 0)).save(path, format="PNG")  # lossless, whatever the file ending


def write_tiny_imagenet(root: Path, classes: int = 3, per_class: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """tiny-imagenet-200/ with wnids.txt, train/<wnid>/images/<wnid>_<i>.JPEG (and the boxes file), and
    val/images/val_<i>.JPEG listed in val/val_annotations.txt. Images are PNG-coded (lossless) despite the
    .JPEG ending, as Pillow reads either, so the test can compare exact pixels; one val image is grayscale."""
    folder = root / "tiny-imagenet-200"
    rng = np.random.default_rng(seed)
    wnids = [f"n{1000 + index:08d}" for index in range(classes)]
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in wnids))
    train_images, train_labels = [], []
    for label, wnid in enumerate(wnids):
        for number in range(per_class):
            image = rng.integers(0, 256, size=(3, 64, 64), dtype=np.uint8)
            _save(image, folder / "train" / wnid / "images" / f"{wnid}_{number}.JPEG")
            train_images.append(image)
            train_labels.append(label)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines, val_images, val_labels = [], [], []
    for number in range(classes):
        image = rng.integers(0, 256, size=(3, 64, 64), dtype=np.uint8)
        if number == 0:  # a grayscale file: read as RGB with three equal planes
            image = np.repeat(image[:1], 3, axis=0)
            from PIL import Image

            (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0]).save(folder / "val" / "images" / f"val_{number}.JPEG", format="PNG")
        else:
            _save(image, folder / "val" / "images" / f"val_{number}.JPEG")
        label = (number + 1) % classes
        lines.append(f"val_{number}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
        val_images.append(image)
        val_labels.append(label)
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {
        "x_train": np.stack(train_images),
        "y_train": np.array(train_labels),
        "x_test": np.stack(val_images),
        "y_test": np.array(val_labels),
    }


def write_image_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 5, side: int = 12, seed: int = 0
) -> dict[str, np.ndarray]:
    """root/<class>/<i>.png (PNG, lossless) with square images of `side` pixels; returns images and labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(classes):
        for number in range(per_class):
            image = rng.integers(0, 256, size=(3, side, side), dtype=np.uint8)
            _save(image, root / name / f"{number}.png")
            images.append(image)
            labels.append(label)
    return {"x": np.stack(images), "y": np.array(labels)}
