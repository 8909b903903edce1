"""Image data sets from local files: STL-10, Tiny ImageNet, and any folder of class subfolders (PNG / JPEG).

Every reader returns a `data.Dataset` whose x holds uint8 pixels of shape (N, 3, H, W) (RGB planes, 0..255):
the training pipeline moves them to the device as bytes and builds normalized float views there
(`image_pipeline.py`). Nothing is downloaded and nothing is unpickled. STL-10 is raw bytes read with
NumPy; PNG and JPEG files are decoded with Pillow (the `images` extra), imported only by the readers that
need it. Every missing file, empty class folder or unreadable image is a one-line error naming it.
See docs/data.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import Dataset, stratified_split

__all__ = ["IMAGE_DATASETS", "IMAGE_SUFFIXES", "stl10", "tiny_imagenet", "image_folder", "load_images", "resized"]

#: Data set names read by this module (`hcl train --data NAME --data-dir DIR`).
IMAGE_DATASETS = ("stl10", "tiny-imagenet", "folder")
#: File endings read as images by `image_folder` (compared in lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_STL10_SIDE = 96
_STL10_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def _folder_with(data_dir: Path, name: str, expected: Sequence[str]) -> Path:
    """data_dir itself or data_dir/name, whichever holds every expected entry; FileNotFoundError naming them."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data_dir={str(data_dir)!r} is not a directory (nothing is downloaded)")
    for folder in (data_dir, data_dir / name):
        if all((folder / entry).exists() for entry in expected):
            return folder
    folder = data_dir / name if (data_dir / name).is_dir() else data_dir
    missing = [entry for entry in expected if not (folder / entry).exists()]
    raise FileNotFoundError(
        f"{folder / missing[0]} does not exist: expected {name}/ with {', '.join(expected)} in data_dir or "
        "directly inside it (nothing is downloaded)"
    )


# ----------------------------------------------------------------------------------------------------
# STL-10: the binary version (stl10_binary/), its labelled train and test sets.


def _read_stl10_images(path: Path) -> np.ndarray:
    raw = np.fromfile(path, dtype=np.uint8)
    image_bytes = 3 * _STL10_SIDE * _STL10_SIDE
    if raw.size == 0 or raw.size % image_bytes:
        raise ValueError(f"{path}: size {raw.size} bytes is not a whole number of {image_bytes}-byte STL-10 images")
    # Each image is three 96x96 planes stored column-major (MATLAB order): transpose to rows first.
    return np.ascontiguousarray(raw.reshape(-1, 3, _STL10_SIDE, _STL10_SIDE).transpose(0, 1, 3, 2))


def _read_stl10_labels(path: Path, count: int) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if labels.size != count:
        raise ValueError(f"{path}: {labels.size} labels for {count} images")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise ValueError(f"{path}: labels must be 1..10 (STL-10 numbers its classes from 1), found {labels.min()}..")
    return labels - 1


def stl10(data_dir: str | Path) -> Dataset:
    """STL-10's labelled sets (5000 train, 8000 test, 10 classes, 96x96) from `stl10_binary` or its parent.

    Reads train_X.bin / train_y.bin and test_X.bin / test_y.bin; labels 1..10 become 0..9.
    """
    folder = _folder_with(Path(data_dir).expanduser(), "stl10_binary", _STL10_FILES)
    x_train = _read_stl10_images(folder / "train_X.bin")
    y_train = _read_stl10_labels(folder / "train_y.bin", x_train.shape[0])
    x_test = _read_stl10_images(folder / "test_X.bin")
    y_test = _read_stl10_labels(folder / "test_y.bin", x_test.shape[0])
    return Dataset(x_train, y_train, x_test, y_test, 10, "stl10")


# ----------------------------------------------------------------------------------------------------
# PNG / JPEG files, decoded with Pillow.


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            "reading PNG/JPEG images needs Pillow, which is not installed: pip install hcl-array[images]"
        ) from error
    return Image


def read_image(path: Path, image_size: int | None) -> np.ndarray:
    """One image file as uint8 (3, S, S): RGB, the shorter side resized to S (bilinear, antialiased), centre crop.

    image_size None keeps the file's size. ValueError naming the file when Pillow cannot decode it.
    """
    image_module = _pillow()
    try:
        with image_module.open(path) as image:
            image = image.convert("RGB")
            if image_size is not None and image.size != (image_size, image_size):
                image = _resize_and_crop(image, image_size, image_module)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: not a readable PNG/JPEG image ({type(error).__name__}: {error})") from None
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _resize_and_crop(image: Any, size: int, image_module: Any) -> Any:
    width, height = image.size
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(resized, image_module.Resampling.BILINEAR)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def _read_images(paths: Sequence[Path], image_size: int | None) -> np.ndarray:
    images = [read_image(path, image_size) for path in paths]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"images of different sizes {sorted(shapes)[:3]} (e.g. {paths[0]}): give --image-size to resize them"
        )
    return np.stack(images) if images else np.zeros((0, 3, 1, 1), dtype=np.uint8)


def _image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


# ----------------------------------------------------------------------------------------------------
# Tiny ImageNet: tiny-imagenet-200/ with wnids.txt, train/<wnid>/images/*.JPEG, val/images + val_annotations.txt.


def tiny_imagenet(data_dir: str | Path, image_size: int | None = None) -> Dataset:
    """Tiny ImageNet (200 classes, 64x64): its train set for training, its labelled val set as the test set.

    Labels follow the order of wnids.txt. image_size resizes (default: the files' 64).
    """
    folder = _folder_with(Path(data_dir).expanduser(), "tiny-imagenet-200", ("wnids.txt", "train", "val"))
    wnids = [line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()]
    if not wnids:
        raise ValueError(f"{folder / 'wnids.txt'}: no class ids (one WordNet id per line expected)")
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        class_folder = folder / "train" / wnid / "images"
        if not class_folder.is_dir():
            raise FileNotFoundError(f"{class_folder} does not exist (class {wnid} of wnids.txt)")
        files = _image_files(class_folder)
        if not files:
            raise ValueError(f"{class_folder}: class {wnid} has no PNG or JPEG images")
        train_paths += files
        train_labels += [label_of[wnid]] * len(files)
    test_paths, test_labels = _tiny_val(folder / "val", label_of)
    return Dataset(
        _read_images(train_paths, image_size),
        np.asarray(train_labels, dtype=np.int64),
        _read_images(test_paths, image_size),
        np.asarray(test_labels, dtype=np.int64),
        len(wnids),
        "tiny-imagenet",
    )


def _tiny_val(val: Path, label_of: dict[str, int]) -> tuple[list[Path], list[int]]:
    annotations = val / "val_annotations.txt"
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations} does not exist (file name and class id of every val image)")
    paths, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in label_of:
            raise ValueError(f"{annotations}:{number}: expected 'file<TAB>wnid' with a wnid of wnids.txt, got {line!r}")
        path = val / "images" / fields[0]
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (listed in {annotations}:{number})")
        paths.append(path)
        labels.append(label_of[fields[1]])
    return paths, labels


# ----------------------------------------------------------------------------------------------------
# Any folder of class subfolders (torchvision's ImageFolder layout), optionally split in train/ and test/.


def _class_folders(root: Path) -> list[Path]:
    classes = sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class subfolders (expected {root}/<class>/<image>.png|.jpg)")
    return classes


def _labelled_files(root: Path, class_names: Sequence[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_folder = root / name
        files = _image_files(class_folder) if class_folder.is_dir() else []
        if not files:
            raise ValueError(f"{class_folder}: class {name!r} has no PNG or JPEG images")
        paths += files
        labels += [label] * len(files)
    return paths, labels


def image_folder(data_dir: str | Path, image_size: int, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Images in DIR/<class>/*.png|jpg|jpeg, classes numbered in sorted name order, resized to image_size.

    With DIR/train/<class>/ and DIR/test/<class>/ (or val/) those are the splits; otherwise a seeded
    stratified split keeps test_fraction of every class for testing.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir={str(root)!r} is not a directory")
    test_root = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if (root / "train").is_dir() and test_root is not None:
        class_names = [path.name for path in _class_folders(root / "train")]
        train_paths, train_labels = _labelled_files(root / "train", class_names)
        test_paths, test_labels = _labelled_files(test_root, class_names)
        x_train, x_test = _read_images(train_paths, image_size), _read_images(test_paths, image_size)
        y_train, y_test = np.asarray(train_labels, np.int64), np.asarray(test_labels, np.int64)
        return Dataset(x_train, y_train, x_test, y_test, len(class_names), "folder")
    class_names = [path.name for path in _class_folders(root)]
    paths, labels = _labelled_files(root, class_names)
    images, labels_array = _read_images(paths, image_size), np.asarray(labels, dtype=np.int64)
    train_index, test_index = stratified_split(labels_array, test_fraction, seed)
    x_train, x_test = images[train_index], images[test_index]
    return Dataset(x_train, labels_array[train_index], x_test, labels_array[test_index], len(class_names), "folder")


def load_images(name: str, data_dir: str | Path | None, image_size: int | None = None, seed: int = 0) -> Dataset:
    """The image data set `name` (one of IMAGE_DATASETS) from data_dir; ValueError naming what is missing."""
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image data set {name!r}; choose one of {', '.join(IMAGE_DATASETS)}")
    if data_dir is None:
        raise ValueError(f"--data {name} needs --data-dir, the folder holding its files (nothing is downloaded)")
    if name == "stl10":
        dataset = stl10(data_dir)
        return dataset if image_size is None else resized(dataset, image_size)
    if name == "tiny-imagenet":
        return tiny_imagenet(data_dir, image_size)
    if image_size is None:
        raise ValueError("--data folder needs --image-size S: its images are resized to S x S")
    return image_folder(data_dir, image_size, seed=seed)


def resized(dataset: Dataset, image_size: int) -> Dataset:
    """Every image of an in-memory data set resized (shorter side, centre crop) as the file readers do."""
    image_module = _pillow()

    def resize(images: np.ndarray) -> np.ndarray:
        out = [
            np.asarray(_resize_and_crop(image_module.fromarray(image.transpose(1, 2, 0)), image_size, image_module))
            for image in images
        ]
        return np.stack(out).transpose(0, 3, 1, 2).copy() if out else images[:, :, :image_size, :image_size]

    x_train, x_test = resize(dataset.x_train), resize(dataset.x_test)
    return Dataset(x_train, dataset.y_train, x_test, dataset.y_test, dataset.num_classes, dataset.name)
