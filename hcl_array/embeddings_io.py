"""Read embeddings files of any size in row chunks, in the formats models are saved in, never unpickling.

`open_embeddings` opens one (N, d) float array with its (N,) integer labels and checks names, dtypes and
shapes before a row is read; `EmbeddingsFile.chunks` then yields (rows, labels) pieces of a fixed number of
rows, so memory is O(chunk x d) whatever N is (the labels, N integers, are read once). Formats:

* `.npz` (an `hcl train` checkpoint or any archive): each member is streamed from the zip, stored or
  deflated, with its .npy header parsed and object (pickled) members refused;
* `.npy`: memory-mapped one chunk at a time (the mapping is dropped after each chunk, so resident memory
  stays at one chunk); labels from `labels=` or a sibling file (`X.labels.npy`, `X_labels.npy`, or
  `labels.npy` next to `embeddings.npy`);
* `.safetensors`: `safe_open` slices;
* `.pt` / `.pth`: `torch.load(weights_only=True, mmap=True)` of a dict of tensors; anything that would need
  pickle is refused.

Errors are `CheckpointError`s (a ValueError) that name the file, the key, and the fix.
"""

from __future__ import annotations

import json
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import CheckpointError, _parse_json

__all__ = [
    "EMBEDDINGS_KEYS",
    "LABELS_KEYS",
    "EmbeddingsFile",
    "RunFiles",
    "open_embeddings",
    "open_run",
]

EMBEDDINGS_KEYS = ("embeddings", "train_embeddings")
LABELS_KEYS = ("labels", "train_labels")
TEST_KEYS = ("test_embeddings", "test_labels")
_PICKLE_HINT = "refused because loading pickles can run code"


@dataclass(frozen=True)
class _Array:
    """One array in a file: its shape and dtype (read from the header) and a reader of row blocks."""

    where: str  # "file: 'key'" for messages
    shape: tuple[int, ...]
    dtype: np.dtype
    blocks: Callable[[int], Iterator[np.ndarray]]  # rows per block -> the blocks, in order

    def read(self) -> np.ndarray:
        rows = max(1, self.shape[0])
        return np.concatenate(list(self.blocks(rows))) if self.shape[0] else np.zeros(self.shape, self.dtype)


# ----------------------------------------------------------------------------------------------------
# Formats.


#: What a damaged file makes the readers raise: NumPy's header parser (ast.literal_eval after tokenize: a garbled
#: header gives SyntaxError or tokenize.TokenError; an impossible dtype TypeError), zipfile and zlib (a damaged
#: archive or compressed stream), and the file itself.
_UNREADABLE = (
    ValueError,
    TypeError,
    SyntaxError,
    tokenize.TokenError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
)


def _first_line(error: BaseException) -> str:
    """The error's message on one line (SyntaxError and TokenError carry the garbled text on more)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _npy_header(handle: Any, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an .npy stream positioned at its start; object dtypes and Fortran order refused."""
    try:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
    except _UNREADABLE as error:
        raise CheckpointError(f"{where} is unreadable ({_first_line(error)})") from error
    if dtype.hasobject:
        raise CheckpointError(f"{where} is a pickled object array; {_PICKLE_HINT}")
    if fortran and len(shape) > 1:
        fix = "save it with np.ascontiguousarray to read it by rows"
        raise CheckpointError(f"{where} is stored in Fortran order; {fix}")
    return tuple(shape), dtype


def _read_exact(handle: Any, count: int, dtype: np.dtype, where: str) -> np.ndarray:
    data = handle.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise CheckpointError(f"{where} is truncated: the file ends inside the array")
    return np.frombuffer(data, dtype=dtype)  # read-only, over the bytes just read


def _stored_offset(path: Path, info: zipfile.ZipInfo, where: str) -> int:
    """Where an uncompressed member's bytes start in the file: after its local header, name and extra field."""
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{where} is unreadable (bad zip local header)")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _npz_member(path: Path, archive: zipfile.ZipFile, key: str) -> _Array:
    """A member read like an .npy at its offset when stored (np.savez), else streamed through the inflater."""
    where = f"{path}: array {key!r}"
    info = archive.getinfo(f"{key}.npy")
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:  # not encrypted
        return _npy_array(path, where, start=_stored_offset(path, info, where), checksum=(info.CRC, info.file_size))
    with archive.open(f"{key}.npy") as handle:
        shape, dtype = _npy_header(handle, where)
    row_items = int(np.prod(shape[1:], dtype=np.int64))

    def blocks(rows: int) -> Iterator[np.ndarray]:
        try:
            with zipfile.ZipFile(path) as again, again.open(f"{key}.npy") as handle:
                _npy_header(handle, where)
                for start in range(0, shape[0], rows):
                    count = min(rows, shape[0] - start)
                    yield _read_exact(handle, count * row_items, dtype, where).reshape((count, *shape[1:]))
                handle.read()  # to the member's end, where zipfile compares the CRC-32
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:  # a damaged compressed stream
            raise CheckpointError(f"{where} is corrupted ({_first_line(error)})") from error

    return _Array(where, shape, dtype, blocks)


def _npz_arrays(path: Path) -> dict[str, _Array]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")]
            return {key: _npz_member(path, archive, key) for key in names}
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(f"{path}: not an .npz archive ({error})") from error


def _npy_array(
    path: Path, where: str | None = None, *, start: int = 0, checksum: tuple[int, int] | None = None
) -> _Array:
    """The .npy array beginning at byte `start` of the file, memory-mapped one block of rows at a time.

    checksum: (CRC-32, size) of a stored zip member that holds exactly this .npy: the blocks are checked
    against it as they are read, and reading past the last one raises when they differ (a flipped byte
    in the data would otherwise be analyzed as if it were the data).
    """
    where = where or f"{path}"
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            shape, dtype = _npy_header(handle, where)
            offset = handle.tell()
            handle.seek(start)
            header = handle.read(offset - start)
    except OSError as error:
        raise CheckpointError(f"{where} is unreadable ({error})") from error
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if shape and path.stat().st_size < offset + shape[0] * row_bytes:
        raise CheckpointError(f"{where} is truncated: the file ends inside the array")
    if checksum is not None and checksum[1] != len(header) + (shape[0] if shape else 1) * row_bytes:
        checksum = None  # the member holds more than the array: its CRC covers bytes not read here

    def blocks(rows: int) -> Iterator[np.ndarray]:
        crc = zlib.crc32(header)
        for start in range(0, shape[0], rows):
            count = min(rows, shape[0] - start)
            mapped = np.memmap(path, dtype, "r", offset=offset + start * row_bytes, shape=(count, *shape[1:]))
            block = np.array(mapped)  # a copy; dropping the mapping releases its pages
            del mapped
            crc = crc if checksum is None else zlib.crc32(block, crc)
            yield block
        if checksum is not None and crc != checksum[0]:
            raise CheckpointError(f"{where} is corrupted: its bytes do not match the archive's CRC-32")

    return _Array(where, shape, dtype, blocks)


def _safetensors_arrays(path: Path) -> dict[str, _Array]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            keys = list(handle.keys())
            headers = {key: handle.get_slice(key) for key in keys}
            layout = {key: (tuple(s.get_shape()), s.get_dtype()) for key, s in headers.items()}
    except Exception as error:  # safetensors has its own error types
        raise CheckpointError(f"{path}: not a safetensors file ({error})") from error
    return {key: _safetensors_member(path, key, *layout[key]) for key in keys}


_SAFETENSORS_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I8": "int8", "I16": "int16"}
_SAFETENSORS_DTYPES |= {"I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32"}


def _safetensors_member(path: Path, key: str, shape: tuple[int, ...], code: str) -> _Array:
    where = f"{path}: array {key!r}"
    if code not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f"{where} has dtype {code}, which NumPy cannot read; save it as float32")

    def blocks(rows: int) -> Iterator[np.ndarray]:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            sliced = handle.get_slice(key)
            for start in range(0, shape[0], rows):
                yield np.asarray(sliced[start : min(start + rows, shape[0])])

    return _Array(where, shape, np.dtype(_SAFETENSORS_DTYPES[code]), blocks)


def _torch_arrays(path: Path) -> dict[str, _Array]:
    try:
        import torch
    except ImportError as error:
        raise CheckpointError(f"{path}: reading .pt files needs torch: pip install 'hcl-array[torch]'") from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # the unpickler refuses with several types
        text = str(error)
        if "weights_only" in text or "Unpickl" in type(error).__name__ or "GLOBAL" in text:
            reason = "it needs pickle beyond plain tensors (weights_only=True refused it)"
            fix = "save a dict of tensors, or convert to .npy / .safetensors"
            raise CheckpointError(f"{path}: {reason}; {_PICKLE_HINT}; {fix}") from error
        raise CheckpointError(f"{path}: not a readable torch file ({text.splitlines()[0]})") from error
    if isinstance(loaded, torch.Tensor):
        loaded = {"embeddings": loaded}
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}; save a dict of tensors (embeddings, labels)")
    tensors = {str(key): value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    return {key: _torch_member(path, key, tensor) for key, tensor in tensors.items()}


def _torch_member(path: Path, key: str, tensor: Any) -> _Array:
    import torch

    where = f"{path}: array {key!r}"
    readable = tensor.float() if tensor.dtype == torch.bfloat16 else tensor  # NumPy has no bfloat16
    dtype = np.dtype(str(readable.dtype).removeprefix("torch."))

    def blocks(rows: int) -> Iterator[np.ndarray]:
        for start in range(0, tensor.shape[0], rows):
            piece = tensor[start : min(start + rows, tensor.shape[0])]
            yield (piece.float() if piece.dtype == torch.bfloat16 else piece).numpy().copy()

    return _Array(where, tuple(tensor.shape), dtype, blocks)


# ----------------------------------------------------------------------------------------------------
# Files and keys.


def _container(path: Path) -> dict[str, _Array]:
    """Every array of an .npz / .safetensors / .pt file, by name (headers only; nothing is read yet)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint/embeddings file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _safetensors_arrays(path)
    if suffix in (".pt", ".pth"):
        return _torch_arrays(path)
    if suffix == ".npy":
        return {"embeddings": _npy_array(path)}
    if suffix != ".npz" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not an .npz archive, .npy, .safetensors or .pt file (suffix {suffix!r})")
    return _npz_arrays(path)


def _pick(arrays: Mapping[str, _Array], path: Path, keys: Sequence[str], option: str) -> _Array:
    for key in keys:
        if key in arrays:
            return arrays[key]
    named = " (nor ".join(repr(key) for key in keys) + ")" * (len(keys) - 1)
    raise CheckpointError(f"{path}: {named} is missing; this file has {sorted(arrays)}; choose one with {option}")


def _sibling_labels(path: Path) -> Path | None:
    """X.labels.npy, X_labels.npy, or labels.npy beside embeddings.npy: the first that exists."""
    candidates = [path.with_name(f"{path.stem}.labels.npy"), path.with_name(f"{path.stem}_labels.npy")]
    if path.stem.endswith("embeddings"):
        candidates.append(path.with_name(path.stem[: -len("embeddings")] + "labels.npy"))
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def _labels_array(path: Path, arrays: Mapping[str, _Array], labels: Path | None, keys: Sequence[str]) -> _Array:
    if labels is not None:
        if labels.suffix.lower() == ".npy":
            return _npy_array(labels)
        return _pick(_container(labels), labels, keys, "--labels-key")
    if path.suffix.lower() == ".npy":
        sibling = _sibling_labels(path)
        if sibling is None:
            raise CheckpointError(f"{path}: a .npy holds no labels; pass --labels FILE or save {path.stem}_labels.npy")
        return _npy_array(sibling)
    return _pick(arrays, path, keys, "--labels-key")


@dataclass(frozen=True)
class EmbeddingsFile:
    """(N, d) float embeddings read in row chunks, with their (N,) int64 labels (read once, checked)."""

    path: Path
    embeddings: _Array
    labels: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def chunks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(embeddings[a:b], labels[a:b]) for consecutive blocks of `rows` rows; a NaN/inf row names its index."""
        if rows < 1:
            raise ValueError(f"chunk rows must be >= 1, got {rows}")
        start = 0
        for block in self.embeddings.blocks(rows):
            # A NaN/inf makes its row sum non-finite: one cheap pass, the exact check only when that fails.
            if not np.isfinite(block.sum(axis=1)).all() and not (finite := np.isfinite(block).all(axis=1)).all():
                row = start + int(np.argmin(finite))
                raise CheckpointError(f"{self.embeddings.where} has NaN or infinite values (first in row {row})")
            yield block, self.labels[start : start + block.shape[0]]
            start += block.shape[0]


def _checked(path: Path, embeddings: _Array, labels: _Array) -> EmbeddingsFile:
    if len(embeddings.shape) != 2 or embeddings.dtype.kind != "f":
        got = f"{embeddings.dtype} {embeddings.shape}"
        raise CheckpointError(f"{embeddings.where} must be a float (N, d) array, got {got}; cast it to float32")
    if len(labels.shape) != 1 or labels.dtype.kind not in "iu":
        got = f"{labels.dtype} {labels.shape}"
        raise CheckpointError(f"{labels.where} must be an integer (N,) array, got {got}")
    if labels.shape[0] != embeddings.shape[0]:
        rows = f"{labels.shape[0]} labels for {embeddings.shape[0]} rows"
        raise CheckpointError(f"{labels.where} has {rows}; the labels must match the embeddings row for row")
    values = labels.read().astype(np.int64)
    if values.size and int(values.min()) < 0:
        raise CheckpointError(f"{labels.where} has negative labels; classes are 0..C-1")
    return EmbeddingsFile(path, embeddings, values)


def open_embeddings(
    path: str | Path,
    *,
    labels: str | Path | None = None,
    embeddings_key: str | None = None,
    labels_key: str | None = None,
    test: bool = False,
) -> EmbeddingsFile:
    """One embeddings array and its labels, checked, nothing but the labels read yet.

    Keys default to embeddings/labels (or train_embeddings/train_labels); test=True reads test_embeddings/
    test_labels of the same container. `labels` names a separate file (a .npy, or a container read by key).
    """
    path = Path(path)
    arrays = _container(path)
    x_keys = (embeddings_key,) if embeddings_key else (TEST_KEYS[:1] if test else EMBEDDINGS_KEYS)
    y_keys = (labels_key,) if labels_key else (TEST_KEYS[1:] if test else LABELS_KEYS)
    embeddings = _pick(arrays, path, x_keys, "--embeddings-key")
    return _checked(path, embeddings, _labels_array(path, arrays, None if labels is None else Path(labels), y_keys))


@dataclass(frozen=True)
class RunFiles:
    """What `hcl analyze` reads of one run: train (and test) embeddings, and a checkpoint's history."""

    train: EmbeddingsFile
    test: EmbeddingsFile | None
    class_means: np.ndarray | None  # (epochs, C, d) for an `hcl train` checkpoint
    history: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    source: str = "embeddings"  # or "checkpoint"


def _checkpoint_extras(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]] | None:
    """(class_means, history, config) of an `hcl train` checkpoint, read by key; None for any other file."""
    if path.suffix.lower() != ".npz":
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "format_version" not in archive.files:
                return None
            config = _parse_json(archive["config"], path, "config") if "config" in archive.files else {}
            names = [key for key in archive.files if key.startswith("history/")]
            history = {key.removeprefix("history/"): archive[key] for key in names}
            means = archive["class_means"] if "class_means" in archive.files else None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable checkpoint metadata ({error})") from error
    if means is not None and (means.ndim != 3 or means.dtype.kind != "f"):
        got = f"{means.dtype} {means.shape}"
        raise CheckpointError(f"{path}: 'class_means' must be float (epochs, classes, d), got {got}")
    return means, {key: np.asarray(value, dtype=np.float64) for key, value in history.items()}, config


def open_run(
    path: str | Path,
    *,
    labels: str | Path | None = None,
    test: str | Path | None = None,
    test_labels: str | Path | None = None,
    embeddings_key: str | None = None,
    labels_key: str | None = None,
) -> RunFiles:
    """A run's train embeddings, its test embeddings (from `test`, or test_* keys in the same file) and history."""
    path = Path(path)
    keys = {"embeddings_key": embeddings_key, "labels_key": labels_key}
    train = open_embeddings(path, labels=labels, **keys)
    if test is not None:
        test_file = open_embeddings(test, labels=test_labels, **keys)
    elif path.suffix.lower() != ".npy" and TEST_KEYS[0] in _container(path):  # a test set in the same file
        test_file = open_embeddings(path, test=True)
    else:
        test_file = None
    if test_file is not None and test_file.dim != train.dim:
        raise CheckpointError(f"{test_file.embeddings.where} has dimension {test_file.dim}, the training {train.dim}")
    extras = _checkpoint_extras(path)
    if extras is None:
        return RunFiles(train, test_file, None)
    means, history, config = extras
    return RunFiles(train, test_file, means, history, config, "checkpoint")
