"""Data sets for `hcl train`: synthetic latent classes, scikit-learn digits, CIFAR-10/100, any `.npz`.

Everything here is NumPy and returns NumPy arrays; a backend moves them to its device. Nothing is
ever downloaded: CIFAR is read from files the user already has. STL-10, Tiny ImageNet and folders of
PNG/JPEG images are read by `image_data.py`. See docs/data.md.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "Dataset",
    "DATASET_NAMES",
    "synthetic",
    "digits",
    "cifar",
    "npz",
    "load",
    "stratified_split",
    "batches",
    "augment",
]

DATASET_NAMES = ("synthetic", "digits", "cifar10", "cifar100", "npz")


@dataclass(frozen=True)
class Dataset:
    """A labelled train/test split: y int64 of shape (N,) in [0, num_classes); x float32 of shape (N, ...), or
    for image data sets uint8 pixels 0..255 of shape (N, 3, H, W) (`is_image`), normalized on the device."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (32,) for vectors or (3, 32, 32) for CIFAR images."""
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        """True for uint8 (N, C, H, W) pixels, which training normalizes and augments on the device."""
        return self.x_train.dtype == np.uint8 and self.x_train.ndim == 4


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices (each sorted) holding round(test_fraction * n_c) of every class c in the test part.

    A class with at least two samples keeps at least one in each part when 0 < test_fraction < 1, so every
    class has a training mean and appears in the test set.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(test_fraction * members.size))
        if test_fraction > 0 and members.size >= 2:
            count = min(max(count, 1), members.size - 1)
        test_parts.append(rng.permutation(members)[:count])
    test_index = np.sort(np.concatenate(test_parts)) if test_parts else np.zeros(0, dtype=np.int64)
    is_test = np.zeros(labels.shape[0], dtype=bool)
    is_test[test_index] = True
    return np.flatnonzero(~is_test).astype(np.int64), test_index.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, num_classes: int, name: str, test_fraction: float, seed: int) -> Dataset:
    train_index, test_index = stratified_split(y, test_fraction, seed)
    return Dataset(x[train_index], y[train_index], x[test_index], y[test_index], num_classes, name)


def synthetic(
    num_classes: int = 10,
    per_class: int = 100,
    input_dim: int = 32,
    separation: float = 3.0,
    noise: float = 1.0,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """The latent-class model: x = mu_c + noise * N(0, I), with class centres mu_c ~ N(0, s^2 I).

    s = separation * noise / sqrt(2 * input_dim), so that E ||mu_c - mu_c'||^2 = (separation * noise)^2:
    the root-mean-square distance between two centres is `separation` noise standard deviations.
    Centres, then samples (class by class), then the stratified split all come from one
    `np.random.default_rng(seed)`; the same arguments always give the same arrays.
    """
    if num_classes < 2 or per_class < 2 or input_dim < 1:
        raise ValueError(
            f"need num_classes >= 2, per_class >= 2, input_dim >= 1; got {num_classes}, {per_class}, {input_dim}"
        )
    if separation < 0 or noise <= 0:
        raise ValueError(f"need separation >= 0 and noise > 0; got {separation}, {noise}")
    rng = np.random.default_rng(seed)
    centre_scale = separation * noise / np.sqrt(2.0 * input_dim)
    centres = centre_scale * rng.standard_normal((num_classes, input_dim))
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    x = centres[labels] + noise * rng.standard_normal((labels.size, input_dim))
    split_seed = int(rng.integers(2**63 - 1))
    return _split(x.astype(np.float32), labels, num_classes, "synthetic", test_fraction, split_seed)


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 samples, 10 classes; no download), scaled to [0, 1], 64 features."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the 'digits' data set needs scikit-learn: pip install scikit-learn (or hcl-array[cli])"
        ) from error
    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)  # pixel values are 0..16
    y = np.asarray(bunch.target, dtype=np.int64)
    return _split(x, y, 10, "digits", test_fraction, seed)


# ----------------------------------------------------------------------------------------------------
# CIFAR, read from the user's files in either distributed format.

_CIFAR_LAYOUTS: dict[int, dict[str, Any]] = {
    10: {
        "python_folder": "cifar-10-batches-py",
        "python_train": [f"data_batch_{i}" for i in range(1, 6)],
        "python_test": ["test_batch"],
        "label_key": b"labels",
        "binary_folder": "cifar-10-batches-bin",
        "binary_train": [f"data_batch_{i}.bin" for i in range(1, 6)],
        "binary_test": ["test_batch.bin"],
        "label_bytes": 1,  # one label byte per record
        "archives": ["cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"],
    },
    100: {
        "python_folder": "cifar-100-python",
        "python_train": ["train"],
        "python_test": ["test"],
        "label_key": b"fine_labels",
        "binary_folder": "cifar-100-binary",
        "binary_train": ["train.bin"],
        "binary_test": ["test.bin"],
        "label_bytes": 2,  # coarse label byte, then fine label byte; the fine one is used
        "archives": ["cifar-100-python.tar.gz", "cifar-100-binary.tar.gz"],
    },
}
_IMAGE_BYTES = 3 * 32 * 32


def _reconstruct_function() -> Callable[..., Any]:
    # The function numpy itself pickles arrays with; reached without naming a private module.
    return np.zeros(1).__reduce__()[0]


def _checked_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object dtypes are refused: they would unpickle arbitrary objects")
    return dtype


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1"); only that use is allowed.
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed as latin1 encoding of a str")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_function(),  # original (Python 2) CIFAR files
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_function(),  # pickles written by numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _checked_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that builds only builtin containers, bytes, str, numbers and plain numpy arrays.

    A pickle can name any importable callable and have it called while loading, so a tampered file
    in a data directory could run code. Every global must be one of `_ALLOWED_GLOBALS`.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: CIFAR batches need only numpy arrays"
            ) from None


def _read_python_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            # encoding="bytes": the original files are Python 2 pickles whose str objects are raw bytes.
            batch = _CifarUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a safe CIFAR python batch ({error})") from error
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a dict with keys b'data' and {label_key!r}, found {found}")
    pixels = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != _IMAGE_BYTES:
        raise ValueError(f"{path}: b'data' must be uint8 (N, {_IMAGE_BYTES}), got {pixels.dtype} {pixels.shape}")
    if labels.shape != (pixels.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {label_key!r} must be {pixels.shape[0]} integers, got {labels.dtype} {labels.shape}")
    return pixels, labels.astype(np.int64)


def _read_binary_batch(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + _IMAGE_BYTES
    if raw.size == 0 or raw.size % record:
        raise ValueError(f"{path}: size {raw.size} bytes is not a whole number of {record}-byte CIFAR records")
    records = raw.reshape(-1, record)
    return records[:, label_bytes:], records[:, label_bytes - 1].astype(np.int64)  # last label byte = fine label


def _find_cifar_files(data_dir: Path, layout: dict[str, Any]) -> tuple[str, Path]:
    """The format ("python" or "binary") and folder holding a complete set of CIFAR files."""
    for kind in ("python", "binary"):
        expected = layout[f"{kind}_train"] + layout[f"{kind}_test"]
        for folder in (data_dir, data_dir / layout[f"{kind}_folder"]):
            if all((folder / file).is_file() for file in expected):
                return kind, folder
    archives = [name for name in layout["archives"] if (data_dir / name).is_file()]
    hint = f" Found {archives[0]}: extract it there first (tar -xzf {archives[0]})." if archives else ""
    raise FileNotFoundError(
        f"no CIFAR files in data_dir={str(data_dir)!r}. Expected either {layout['python_folder']}/ with "
        f"{', '.join(layout['python_train'] + layout['python_test'])} (python version), or "
        f"{layout['binary_folder']}/ with {', '.join(layout['binary_train'] + layout['binary_test'])} "
        f"(binary version), in data_dir or directly inside it. Nothing is downloaded.{hint}"
    )


def cifar(data_dir: str | Path, num_classes: Literal[10, 100] = 10) -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels) from local files: uint8 pixels 0..255, shape (N, 3, 32, 32).

    `data_dir` is the extracted folder (e.g. cifar-10-batches-py) or its parent; both the python
    (pickle) and the binary version are read. Pickles go through a restricted unpickler.
    """
    if num_classes not in _CIFAR_LAYOUTS:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data_dir={str(data_dir)!r} is not a directory (CIFAR is never downloaded)")
    layout = _CIFAR_LAYOUTS[num_classes]
    kind, folder = _find_cifar_files(data_dir, layout)

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if kind == "python":
            parts = [_read_python_batch(folder / file, layout["label_key"]) for file in files]
        else:
            parts = [_read_binary_batch(folder / file, layout["label_bytes"]) for file in files]
        pixels = np.concatenate([p for p, _ in parts])
        labels = np.concatenate([y for _, y in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{folder}: labels outside [0, {num_classes}) in {files}; is this CIFAR-{num_classes}?")
        # Rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
        return np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32)), labels

    x_train, y_train = read(layout[f"{kind}_train"])
    x_test, y_test = read(layout[f"{kind}_test"])
    return Dataset(x_train, y_train, x_test, y_test, num_classes, f"cifar{num_classes}")


# ----------------------------------------------------------------------------------------------------
# Any .npz the user exported.


def _npz_array(archive: Any, path: Path, key: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as error:  # numpy refuses object arrays when allow_pickle=False
        raise ValueError(
            f"{path}: array {key!r} is an object (pickled) array; save numeric arrays instead ({error})"
        ) from error


def _checked_pair(path: Path, x: np.ndarray, y: np.ndarray, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim < 2:
        raise ValueError(f"{path}: {x_key!r} must have shape (N, features...), got {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        raise ValueError(f"{path}: {x_key!r} must be numeric, got dtype {x.dtype}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{path}: {y_key!r} must have shape ({x.shape[0]},) to match {x_key!r}, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: {y_key!r} must hold integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{path}: {y_key!r} has negative labels (min {y.min()}); labels must be 0..C-1")
    return x.astype(np.float32), y.astype(np.int64)


def npz(path: str | Path, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A data set from an .npz with `x` (N, ...) and integer `y` (N,), optionally `x_test` and `y_test`.

    Without `x_test`/`y_test` a seeded stratified split is made. num_classes = largest label + 1.
    Loaded with allow_pickle=False.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"npz data file {str(path)!r} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, expected an .npz archive with keys 'x' and 'y'")
    with archive:
        keys = set(archive.files)
        for key in ("x", "y"):
            if key not in keys:
                raise ValueError(f"{path}: missing array {key!r} (found {sorted(keys)}); expected 'x' and 'y'")
        if ("x_test" in keys) != ("y_test" in keys):
            raise ValueError(f"{path}: 'x_test' and 'y_test' must be given together (found {sorted(keys)})")
        x, y = _checked_pair(path, _npz_array(archive, path, "x"), _npz_array(archive, path, "y"), "x", "y")
        if "x_test" not in keys:
            num_classes = int(y.max()) + 1 if y.size else 0
            dataset = _split(x, y, num_classes, "npz", test_fraction, seed)
        else:
            x_test, y_test = _checked_pair(
                path, _npz_array(archive, path, "x_test"), _npz_array(archive, path, "y_test"), "x_test", "y_test"
            )
            if x_test.shape[1:] != x.shape[1:]:
                raise ValueError(f"{path}: 'x_test' samples have shape {x_test.shape[1:]}, 'x' samples {x.shape[1:]}")
            num_classes = int(max(y.max(initial=-1), y_test.max(initial=-1))) + 1
            dataset = Dataset(x, y, x_test, y_test, num_classes, "npz")
    missing = np.setdiff1d(np.arange(num_classes), dataset.y_train)
    if missing.size:
        raise ValueError(
            f"{path}: classes {missing.tolist()[:10]} have no training samples; labels must be 0..C-1 without gaps"
        )
    return dataset


def load(name: str, **options: Any) -> Dataset:
    """Load a data set by name: "synthetic", "digits", "cifar10", "cifar100" (data_dir=...), "npz" (path=...)."""
    if name == "synthetic":
        return synthetic(**options)
    if name == "digits":
        return digits(**options)
    if name in ("cifar10", "cifar100"):
        if "data_dir" not in options:
            raise ValueError(f"{name} needs data_dir=<folder holding the CIFAR files>; nothing is downloaded")
        return cifar(num_classes=10 if name == "cifar10" else 100, **options)
    if name == "npz":
        if "path" not in options:
            raise ValueError("npz needs path=<file.npz> holding arrays 'x' and 'y'")
        return npz(**options)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")


# ----------------------------------------------------------------------------------------------------
# Batches and views.


def batches(num_samples: int, batch_size: int, *, seed: int, epoch: int, drop_last: bool = True) -> list[np.ndarray]:
    """Index arrays (int64) of one epoch's batches, a permutation drawn from (seed, epoch) alone.

    Depending on nothing but (seed, epoch) lets a resumed run draw exactly the batches an
    uninterrupted run would have drawn. With drop_last the final short batch is skipped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if drop_last and batch_size > num_samples:
        raise ValueError(
            f"batch_size {batch_size} exceeds the {num_samples} training samples: with drop_last no batch "
            "would be drawn; lower the batch size"
        )
    order = np.random.default_rng([seed, epoch]).permutation(num_samples).astype(np.int64)
    stop = num_samples - num_samples % batch_size if drop_last else num_samples
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]


def augment(
    x: np.ndarray,
    rng: np.random.Generator,
    kind: Literal["auto", "noise", "shift"] = "auto",
    *,
    noise_std: float = 0.1,
    max_shift: int = 4,
) -> np.ndarray:
    """One random view of a batch, for instance-level (unsupervised) positives.

    "noise": x + noise_std * N(0, I). "shift": every image moved by its own (dy, dx) in
    [-max_shift, max_shift] over its last two axes, uncovered pixels zero (= CIFAR's pad-4 random crop).
    "auto": shift for inputs with two or more sample axes (images), noise otherwise.
    """
    x = np.asarray(x)
    if kind == "auto":
        kind = "shift" if x.ndim >= 3 else "noise"
    if kind == "noise":
        return (x + noise_std * rng.standard_normal(x.shape)).astype(x.dtype, copy=False)
    if kind == "shift":
        if x.ndim < 3:
            raise ValueError(f"shift augmentation needs images (N, ..., H, W), got shape {x.shape}")
        return _random_shift(x, rng, max_shift)
    raise ValueError(f"unknown augmentation {kind!r}; choose 'auto', 'noise' or 'shift'")


def _random_shift(x: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    count, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    images = x.reshape(count, -1, height, width)
    padding = ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift))
    padded = np.pad(images, padding)
    # A crop starting at max_shift + s shows the image moved by -s; crops span every shift in range.
    top = rng.integers(0, 2 * max_shift + 1, size=count)
    left = rng.integers(0, 2 * max_shift + 1, size=count)
    rows = top[:, None] + np.arange(height)
    cols = left[:, None] + np.arange(width)
    crops = padded[
        np.arange(count)[:, None, None, None],
        np.arange(images.shape[1])[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return crops.reshape(x.shape)
