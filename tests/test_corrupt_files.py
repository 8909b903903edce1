"""`hcl analyze` on corrupted files: a clear one-line error or a correct analysis, never a traceback.

Each format (.npz, .npy, .safetensors, .pt) is written once from the same rows, then damaged three ways:
its header garbled, the file truncated, single bytes flipped at seeded positions. A run that succeeds must
report the metrics of the rows the file now holds: those the format's own reader finds in it (np.load,
safetensors, torch.load), or, when that reader refuses the file, the original rows (the damage was in bytes
the streaming reader does not need, such as a zip CRC). A garbled .npy header ended in a
tokenize.TokenError traceback from NumPy's header parser.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("typer")
from typer.testing import CliRunner

from hcl_array.cli.app import app
from hcl_array.metrics import collapse_report

ROWS, DIM, CLASSES = 40, 4, 4
FLIPS = 10


def _rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    labels = np.arange(ROWS) % CLASSES
    return (rng.normal(size=(CLASSES, DIM))[labels] + 0.3 * rng.normal(size=(ROWS, DIM))).astype(np.float32), labels


def _write(fmt: str, path: Path, embeddings: np.ndarray, labels: np.ndarray) -> None:
    if fmt == "npz":
        np.savez(path, embeddings=embeddings, labels=labels)
    elif fmt == "npz-deflated":
        np.savez_compressed(path.with_suffix(".npz"), embeddings=embeddings, labels=labels)
    elif fmt == "npy":
        np.save(path, embeddings)
        np.save(path.with_name(f"{path.stem}_labels.npy"), labels)  # the sibling stays intact
    elif fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file({"embeddings": embeddings, "labels": labels}, str(path))
    else:
        import torch

        torch.save({"embeddings": torch.from_numpy(embeddings), "labels": torch.from_numpy(labels)}, path)


def _native_read(fmt: str, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(embeddings, labels) as the format's own library reads them, or None when it refuses the file."""
    try:
        if fmt.startswith("npz"):
            with np.load(path, allow_pickle=False) as archive:
                return archive["embeddings"], archive["labels"]
        if fmt == "npy":
            return np.load(path, allow_pickle=False), np.load(path.with_name(f"{path.stem}_labels.npy"))
        if fmt == "safetensors":
            from safetensors.numpy import load_file

            loaded = load_file(str(path))
            return loaded["embeddings"], loaded["labels"]
        import torch

        loaded = torch.load(path, weights_only=True)
        return loaded["embeddings"].numpy(), loaded["labels"].numpy()
    except Exception:  # noqa: BLE001 - any refusal: the file is unreadable to its own library
        return None


def _header_span(fmt: str, data: bytes) -> tuple[int, int]:
    """Where the format's header lies: the .npy dict, the first member's .npy dict, the JSON, the pickle."""
    if fmt in ("npy", "npz"):
        start = data.index(b"{'descr'")
        return start, data.index(b"}", start) + 1
    if fmt == "npz-deflated":  # the compressed stream of the first member, after its name
        start = data.index(b".npy") + len(b".npy")
        return start, start + 64
    if fmt == "safetensors":
        return 8, 8 + int.from_bytes(data[:8], "little")
    start = data.index(b"data.pkl") + len(b"data.pkl")
    return start, data.index(b"\x2e", start + 20) + 1  # the pickle's STOP opcode


def _corruptions(fmt: str, data: bytes) -> dict[str, bytes]:
    """Name -> damaged bytes: three garbled headers, six truncations, FLIPS single-byte flips."""
    start, end = _header_span(fmt, data)
    damaged = {}
    for index, junk in enumerate((b"('\"{", b"\x00\xff\x00\xff", b"'''")):
        position = start + (index + 1) * (end - start) // 4
        damaged[f"garbled header {index}"] = data[:position] + junk + data[position + len(junk) :]
    for length in (0, 5, len(data) // 4, len(data) // 2, 3 * len(data) // 4, len(data) - 1):
        damaged[f"truncated to {length} bytes"] = data[:length]
    rng = np.random.default_rng(11)
    for position, mask in zip(rng.integers(0, len(data), FLIPS), rng.integers(1, 256, FLIPS), strict=True):
        flipped = bytearray(data)
        flipped[position] ^= int(mask)
        damaged[f"byte {position} flipped"] = bytes(flipped)
    return damaged


def _analysis(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The metrics `hcl analyze` reports for these rows (classes: the largest label + 1, as it counts them)."""
    labels = labels.astype(np.int64)
    report = collapse_report(embeddings.astype(np.float64), labels, num_classes=int(labels.max()) + 1)
    return {key: float(value) for key, value in report.items() if key != "spectrum"}


def _agrees(run: dict, expected: dict[str, float]) -> bool:
    got = run["train"]
    return all(np.isclose(got[key], value, rtol=1e-6, atol=1e-9) for key, value in expected.items() if key in got)


FORMATS = ["npz", "npz-deflated", "npy", "safetensors", "pt"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_corruption_gives_a_clear_error_or_a_correct_analysis(fmt: str, tmp_path: Path) -> None:
    if fmt in ("safetensors", "pt"):
        pytest.importorskip("safetensors" if fmt == "safetensors" else "torch")
    embeddings, labels = _rows()
    suffix = fmt.split("-")[0]
    original = tmp_path / f"original.{suffix}"
    _write(fmt, original, embeddings, labels)
    data = original.read_bytes()
    runner = CliRunner()
    outcomes: dict[str, str] = {}
    for name, damaged in _corruptions(fmt, data).items():
        path = tmp_path / f"damaged.{suffix}"
        path.write_bytes(damaged)
        if fmt == "npy":
            (tmp_path / "damaged_labels.npy").write_bytes(original.with_name("original_labels.npy").read_bytes())
        result = runner.invoke(app, ["analyze", str(path), "--json", "-"])
        outcomes[name] = _judge(result, fmt, path, (embeddings, labels))
    wrong = {name: outcome for name, outcome in outcomes.items() if outcome not in ("error", "analysis")}
    assert not wrong, wrong
    assert "error" in outcomes.values(), "the damage was never noticed: the corruptions are too mild"


def _judge(result, fmt: str, path: Path, original: tuple[np.ndarray, np.ndarray]) -> str:
    """ "error" for one clear line naming the file, "analysis" for a correct one, else what went wrong."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"traceback: {type(result.exception).__module__}.{type(result.exception).__name__}: {result.exception}"
    if result.exit_code != 0:
        message = result.stderr.strip().splitlines()[-1]  # after the progress bar, when the damage is met mid-read
        clear = result.exit_code == 2 and message.startswith("error:")
        return "error" if clear and path.name in message and "Traceback" not in result.output else message
    read = _native_read(fmt, path)
    expected = _analysis(*(original if read is None else read))
    run = json.loads(result.stdout)["runs"][0]
    return "analysis" if _agrees(run, expected) else f"wrong analysis: {run['train']} != {expected}"


@pytest.mark.parametrize("junk", [b"('", b"'''", b'"{'])
def test_a_garbled_npy_header_is_one_line_naming_the_file(junk: bytes, tmp_path: Path) -> None:
    """NumPy's header parser raised tokenize.TokenError (an unterminated string), which escaped as a traceback."""
    from hcl_array.checkpoint import CheckpointError
    from hcl_array.embeddings_io import open_embeddings

    embeddings, labels = _rows()
    path = tmp_path / "x.npy"
    _write("npy", path, embeddings, labels)
    data = path.read_bytes()
    start = data.index(b"'descr'")
    path.write_bytes(data[:start] + junk + data[start + len(junk) :])
    with pytest.raises(CheckpointError, match="x.npy is unreadable"):
        open_embeddings(path)


def test_the_corpus_holds_every_kind_of_damage_distinct_from_the_file() -> None:
    """3 garbled headers, 6 truncations and FLIPS flips, each a different file, none the original."""
    data = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (40, 4), }" + bytes(700)
    damaged = _corruptions("npy", data)
    assert len(damaged) == 3 + 6 + FLIPS and len(set(damaged.values())) == len(damaged)
    assert all(value != data for value in damaged.values())
