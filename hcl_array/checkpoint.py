"""The `hcl train` checkpoint: one `.npz` of plain arrays, written atomically, read without pickle.

Key layout (flat, '/' separates namespaces; full description in docs/checkpoint.md):

    format_version                  int64 ()        FORMAT_VERSION
    epoch                           int64 ()        completed epochs
    train_embeddings, test_embeddings   float (N, d), (M, d)
    train_labels, test_labels       int64 (N,), (M,)
    class_means                     float (E, C, d) train-set class means after each recorded epoch
    history/<name>                  float64 (E,)    per-epoch metrics, e.g. history/loss
    config, versions                unicode ()      JSON objects: the run's config; library versions
    params/<name>, optimizer/<name>, rng/<name>, extra/<name>   arrays to resume from
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "Embeddings",
    "save_checkpoint",
    "load_checkpoint",
    "load_embeddings",
    "save_embeddings",
    "save_npz_atomic",
    "write_atomically",
    "library_versions",
]

FORMAT_VERSION = 1
_GROUPS = {"history": "history", "params": "params", "optimizer": "optimizer_state", "rng": "rng", "extra": "extra"}
_REQUIRED = (
    "format_version",
    "epoch",
    "train_embeddings",
    "train_labels",
    "test_embeddings",
    "test_labels",
    "class_means",
    "config",
)


class CheckpointError(ValueError):
    """A checkpoint or embeddings file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Checkpoint:
    """Everything `hcl train` saves after an epoch: embeddings, history, and the state to resume from."""

    train_embeddings: np.ndarray
    train_labels: np.ndarray
    test_embeddings: np.ndarray
    test_labels: np.ndarray
    class_means: np.ndarray
    history: dict[str, np.ndarray]
    config: dict[str, Any]
    params: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    epoch: int
    rng: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # filled by load_checkpoint; save writes the current ones


@dataclass(frozen=True)
class Embeddings:
    """What `hcl analyze` needs, from a checkpoint or from a plain embeddings file of any model.

    test_* are None when the file has no test set; class_means is None and history/config are empty
    for plain files.
    """

    train_embeddings: np.ndarray
    train_labels: np.ndarray
    test_embeddings: np.ndarray | None
    test_labels: np.ndarray | None
    class_means: np.ndarray | None
    history: dict[str, np.ndarray]
    config: dict[str, Any]
    source: str  # "checkpoint" or "embeddings"


def library_versions() -> dict[str, str]:
    """Versions of Python, numpy, hcl-array and any framework already imported (none is imported here)."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        versions["hcl-array"] = metadata.version("hcl-array")
    except metadata.PackageNotFoundError:
        versions["hcl-array"] = "unknown (not installed)"
    for module in ("torch", "jax", "cupy", "array_api_compat"):
        if module in sys.modules:
            versions[module] = str(getattr(sys.modules[module], "__version__", "unknown"))
    return versions


# ----------------------------------------------------------------------------------------------------
# Writing.


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Create `path` (parent folders too) from `write(file)`, atomically.

    The data go to a temporary file in the same directory, are flushed and fsync'ed, and then
    os.replace puts them in place: a crash at any point leaves either the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def save_npz_atomic(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `arrays` as an uncompressed .npz at exactly `path` (parent folders created), atomically."""
    for key, value in arrays.items():
        if np.asarray(value).dtype.hasobject:
            raise CheckpointError(f"{path}: array {key!r} has an object dtype; only plain arrays are saved")
    return write_atomically(path, lambda handle: np.savez(handle, **arrays))


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; Windows cannot open directories, and does not need it.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _json_array(value: Mapping[str, Any], path: Path, key: str) -> np.ndarray:
    try:
        return np.array(json.dumps(dict(value), sort_keys=True, allow_nan=True))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {key!r} is not JSON-serializable ({error})") from error


def _checkpoint_arrays(checkpoint: Checkpoint, path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "epoch": np.array(checkpoint.epoch, dtype=np.int64),
        "train_embeddings": np.asarray(checkpoint.train_embeddings),
        "train_labels": np.asarray(checkpoint.train_labels),
        "test_embeddings": np.asarray(checkpoint.test_embeddings),
        "test_labels": np.asarray(checkpoint.test_labels),
        "class_means": np.asarray(checkpoint.class_means),
        "config": _json_array(checkpoint.config, path, "config"),
        "versions": _json_array(library_versions(), path, "versions"),
    }
    for prefix, attribute in _GROUPS.items():
        for name, value in getattr(checkpoint, attribute).items():
            if not isinstance(name, str) or not name or name.startswith("/"):
                raise CheckpointError(f"{path}: {attribute} name {name!r} must be a non-empty str, not starting '/'")
            value = np.asarray(value)
            if prefix == "history" and value.dtype.kind in "biuf":  # metrics are stored as float64
                value = value.astype(np.float64)
            arrays[f"{prefix}/{name}"] = value
    return arrays


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Validate `checkpoint` and write it atomically to `path` (the name is used as given)."""
    path = Path(path)
    arrays = _checkpoint_arrays(checkpoint, path)
    _validate(arrays, path)
    for key in ("train_labels", "test_labels"):
        arrays[key] = arrays[key].astype(np.int64)
    return save_npz_atomic(path, arrays)


# ----------------------------------------------------------------------------------------------------
# Reading.


def _read_archive(path: str | Path) -> tuple[Path, dict[str, np.ndarray]]:
    """All arrays of an .npz, loaded with allow_pickle=False; CheckpointError naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint/embeddings file {str(path)!r} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(f"{path}: not an .npz archive ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: a single .npy array, not an .npz archive of named arrays")
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as error:
                if "allow_pickle" in str(error) or "Object arrays" in str(error):
                    raise CheckpointError(
                        f"{path}: array {key!r} is a pickled object array; refused because loading pickles can run code"
                    ) from error
                raise CheckpointError(f"{path}: array {key!r} is unreadable ({error})") from error
            except (OSError, zipfile.BadZipFile, EOFError) as error:
                raise CheckpointError(f"{path}: array {key!r} is unreadable ({error})") from error
    return path, arrays


def _expect(condition: bool, path: Path, key: str, problem: str) -> None:
    if not condition:
        raise CheckpointError(f"{path}: {key!r} {problem}")


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def _is_int(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.integer)


def _check_pair(arrays: Mapping[str, np.ndarray], path: Path, x_key: str, y_key: str) -> None:
    x, y = arrays[x_key], arrays[y_key]
    _expect(_is_float(x) and x.ndim == 2, path, x_key, f"must be a float (N, d) array, got {x.dtype} {x.shape}")
    _expect(_is_int(y) and y.ndim == 1, path, y_key, f"must be an integer (N,) array, got {y.dtype} {y.shape}")
    _expect(y.shape[0] == x.shape[0], path, y_key, f"has {y.shape[0]} labels for {x.shape[0]} rows of {x_key!r}")
    _expect(y.size == 0 or int(y.min()) >= 0, path, y_key, "has negative labels")


def _validate(arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """Every key, dtype and shape a checkpoint needs; the first problem found is raised."""
    for key in _REQUIRED:
        _expect(key in arrays, path, key, f"is missing; this file has {sorted(arrays)}")
    for key in ("format_version", "epoch"):
        value = arrays[key]
        problem = f"must be an int scalar, not {value.dtype} {value.shape}"
        _expect(_is_int(value) and value.ndim == 0, path, key, problem)
    version = int(arrays["format_version"])
    _expect(version <= FORMAT_VERSION, path, "format_version", f"is {version}; this version reads <= {FORMAT_VERSION}")
    _expect(int(arrays["epoch"]) >= 0, path, "epoch", "must be >= 0")
    _check_pair(arrays, path, "train_embeddings", "train_labels")
    _check_pair(arrays, path, "test_embeddings", "test_labels")
    dim, test_dim = arrays["train_embeddings"].shape[1], arrays["test_embeddings"].shape[1]
    _expect(test_dim == dim, path, "test_embeddings", f"has dimension {test_dim}, train_embeddings {dim}")
    means = arrays["class_means"]
    _expect(
        _is_float(means) and means.ndim == 3 and means.shape[2] == dim,
        path,
        "class_means",
        f"must be float (epochs, classes, {dim}), got {means.dtype} {means.shape}",
    )
    if means.shape[0] > 0:  # an empty history (0, C, d) may not know C yet
        for key in ("train_labels", "test_labels"):
            top = int(arrays[key].max(initial=-1))
            _expect(top < means.shape[1], path, key, f"has label {top} but class_means has {means.shape[1]} classes")
    epochs = means.shape[0]
    for key, value in arrays.items():
        if key.startswith("history/"):
            problem = f"must be float ({epochs},), one value per class_means epoch; got {value.dtype} {value.shape}"
            _expect(_is_float(value) and value.shape == (epochs,), path, key, problem)
    for key in ("config", "versions"):
        if key in arrays:
            _parse_json(arrays[key], path, key)


def _parse_json(array: np.ndarray, path: Path, key: str) -> dict[str, Any]:
    _expect(
        array.dtype.kind == "U" and array.ndim == 0,
        path,
        key,
        f"must be a 0-d unicode array holding JSON, got {array.dtype} {array.shape}",
    )
    try:
        value = json.loads(str(array))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: {key!r} is not valid JSON ({error})") from error
    _expect(isinstance(value, dict), path, key, f"must hold a JSON object, got {type(value).__name__}")
    return value


def _group(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {key[len(prefix) + 1 :]: value for key, value in arrays.items() if key.startswith(prefix + "/")}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint written by save_checkpoint (np.load with allow_pickle=False)."""
    return _checkpoint_from_arrays(*_read_archive(path))


def _checkpoint_from_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> Checkpoint:
    _validate(arrays, path)
    groups = {attribute: _group(arrays, prefix) for prefix, attribute in _GROUPS.items()}
    return Checkpoint(
        train_embeddings=arrays["train_embeddings"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_embeddings=arrays["test_embeddings"],
        test_labels=arrays["test_labels"].astype(np.int64),
        class_means=arrays["class_means"],
        config=_parse_json(arrays["config"], path, "config"),
        versions=_parse_json(arrays["versions"], path, "versions") if "versions" in arrays else {},
        epoch=int(arrays["epoch"]),
        **groups,
    )


# ----------------------------------------------------------------------------------------------------
# Plain embeddings files, for models trained elsewhere.


def save_embeddings(
    path: str | Path,
    embeddings: np.ndarray,
    labels: np.ndarray,
    test_embeddings: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
) -> Path:
    """Write a plain embeddings file (`embeddings`, `labels`, optional `test_*`) that load_embeddings reads."""
    arrays = {"embeddings": np.asarray(embeddings), "labels": np.asarray(labels)}
    if (test_embeddings is None) != (test_labels is None):
        raise ValueError("give test_embeddings and test_labels together, or neither")
    if test_embeddings is not None:
        arrays |= {"test_embeddings": np.asarray(test_embeddings), "test_labels": np.asarray(test_labels)}
    _validate_plain({**arrays, "train_embeddings": arrays["embeddings"], "train_labels": arrays["labels"]}, Path(path))
    return save_npz_atomic(path, arrays)


def _validate_plain(arrays: Mapping[str, np.ndarray], path: Path) -> None:
    _check_pair(arrays, path, "train_embeddings", "train_labels")
    if "test_embeddings" in arrays:
        _check_pair(arrays, path, "test_embeddings", "test_labels")
        train_dim, test_dim = arrays["train_embeddings"].shape[1], arrays["test_embeddings"].shape[1]
        _expect(test_dim == train_dim, path, "test_embeddings", f"has dimension {test_dim}, training {train_dim}")


def load_embeddings(path: str | Path) -> Embeddings:
    """Embeddings and labels from an `hcl train` checkpoint or a plain file of any model.

    A plain file holds `embeddings` (N, d) and integer `labels` (N,) (or the checkpoint names
    `train_embeddings`/`train_labels`), optionally `test_embeddings` (M, d) and `test_labels` (M,).
    """
    path, arrays = _read_archive(path)
    if "format_version" in arrays:
        run = _checkpoint_from_arrays(path, arrays)
        return Embeddings(
            run.train_embeddings,
            run.train_labels,
            run.test_embeddings,
            run.test_labels,
            run.class_means,
            run.history,
            run.config,
            "checkpoint",
        )
    plain = dict(arrays)
    for name in ("embeddings", "labels"):
        if name in plain:
            plain.setdefault(f"train_{name}", plain[name])
    for key in ("train_embeddings", "train_labels"):
        short = key.removeprefix("train_")
        _expect(key in plain, path, short, f"is missing (nor {key!r}); this file has {sorted(arrays)}")
    has_test = "test_embeddings" in plain
    _expect(has_test == ("test_labels" in plain), path, "test_labels", "and 'test_embeddings' must be given together")
    _validate_plain(plain, path)
    return Embeddings(
        plain["train_embeddings"],
        plain["train_labels"].astype(np.int64),
        plain["test_embeddings"] if has_test else None,
        plain["test_labels"].astype(np.int64) if has_test else None,
        None,
        {},
        {},
        "embeddings",
    )
