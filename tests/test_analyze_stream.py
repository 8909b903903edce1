"""`hcl analyze` streaming from disk: every format equals the in-memory collapse_report, bad files fail clearly.

The streamed report (chunks that do not divide N, classes missing from whole chunks) is held to
`collapse_report` on the whole arrays at 1e-10 in float64; the segment sums to naive per-class loops; the
torch and JAX backends to NumPy float64 at 1e-6 on float32 input.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("typer")

from typer.testing import CliRunner

from hcl_array import analysis, metrics
from hcl_array.checkpoint import CheckpointError, save_embeddings
from hcl_array.cli.app import app
from hcl_array.embeddings_io import open_embeddings
from hcl_array.metrics import _probe, _state

NUM_CLASSES, DIM = 5, 4


def _problem(seed: int, rows: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by label (so most chunks miss most classes) around random centres, offset from 0."""
    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, NUM_CLASSES, size=rows))
    labels[:NUM_CLASSES] = np.arange(NUM_CLASSES)  # every class present
    labels = np.sort(labels)
    centres = 3.0 * rng.normal(size=(NUM_CLASSES, DIM)) + 2.0
    return (centres[labels] + rng.normal(size=(rows, DIM))).astype(dtype), labels


def _write(kind: str, directory: Path, x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> dict:
    """The same train/test arrays in one format; returns load_run's arguments."""
    if kind in ("npz", "npz-compressed"):
        path = directory / "run.npz"
        writer = np.savez if kind == "npz" else np.savez_compressed
        writer(path, embeddings=x, labels=y, test_embeddings=tx, test_labels=ty)
        return {"path": path}
    if kind == "npy":
        np.save(directory / "train_embeddings.npy", x)
        np.save(directory / "train_labels.npy", y)  # the sibling of train_embeddings.npy
        np.save(directory / "test.npy", tx)
        np.save(directory / "test_y.npy", ty)
        return {
            "path": directory / "train_embeddings.npy",
            "test": directory / "test.npy",
            "test_labels": directory / "test_y.npy",
        }
    if kind == "safetensors":
        from safetensors.numpy import save_file

        arrays = {"feats": x, "targets": y, "test_embeddings": tx, "test_labels": ty}
        save_file(arrays, str(directory / "run.safetensors"))
        return {"path": directory / "run.safetensors", "embeddings_key": "feats", "labels_key": "targets"}
    torch = pytest.importorskip("torch")
    arrays = {"embeddings": x, "labels": y, "test_embeddings": tx, "test_labels": ty}
    torch.save({key: torch.from_numpy(value) for key, value in arrays.items()}, directory / "run.pt")
    return {"path": directory / "run.pt"}


def _assert_reports_equal(got: dict, expected: dict, rtol: float) -> None:
    for key, value in expected.items():
        if key == "spectrum":
            continue
        assert got[key] == pytest.approx(value, rel=rtol, abs=rtol * 1e-2), key


@pytest.mark.parametrize("kind", ["npz", "npz-compressed", "npy", "safetensors", "pt"])
@pytest.mark.parametrize("chunk_rows", [7, 1000])
def test_every_format_streams_to_the_in_memory_report(kind: str, chunk_rows: int, tmp_path: Path) -> None:
    x, y = _problem(1, 61)
    tx, ty = _problem(2, 23)
    arguments = _write(kind, tmp_path, x, y, tx, ty)
    run = analysis.load_run(arguments.pop("path"), **arguments)
    report = analysis.final_report(run, analysis.StreamOptions(chunk_rows=chunk_rows))
    expected = metrics.collapse_report(x, y, num_classes=NUM_CLASSES)
    expected_test = metrics.collapse_report(tx, ty, num_classes=NUM_CLASSES, reference=(x, y))
    _assert_reports_equal(report.train, expected, 1e-10)
    _assert_reports_equal(report.test, expected_test, 1e-10)
    np.testing.assert_allclose(report.spectrum, expected["spectrum"], rtol=1e-10)
    assert analysis.spectrum_at_epoch(run)[1] == pytest.approx(expected["spectrum"], rel=1e-10)


def test_npy_reads_by_chunks_without_keeping_the_file(tmp_path: Path) -> None:
    x, y = _problem(3, 50)
    np.save(tmp_path / "h.npy", x)
    np.save(tmp_path / "h_labels.npy", y.astype(np.int32))
    opened = open_embeddings(tmp_path / "h.npy")
    pieces = list(opened.chunks(16))
    assert [block.shape[0] for block, _ in pieces] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([block for block, _ in pieces]), x)
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in pieces]), y)


# ----------------------------------------------------------------------------------------------------
# The metric kernels the stream relies on


def _naive_segment_sums(values: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    sums = np.zeros((num_classes, *values.shape[1:]))
    for row, label in zip(values, labels, strict=True):
        sums[label] += row
    return sums


@pytest.mark.parametrize("route", ["dispatch", "portable"])
def test_segment_sums_match_a_loop(xp, route: str) -> None:
    rng = np.random.default_rng(4)
    values, labels = rng.normal(size=(40, 3)) + 100.0, rng.integers(0, 7, size=40).astype(np.uint8)
    labels[labels == 3] = 4  # an empty class in the middle
    kernel = _state._segment_sums if route == "dispatch" else _state._sorted_segment_sums
    for array in (values, values[:, 0]):
        got = kernel(xp.asarray(array), xp.asarray(labels), 7)
        np.testing.assert_allclose(np.asarray(got), _naive_segment_sums(array, labels, 7), rtol=1e-13)


def test_blocked_probe_equals_the_unblocked_one(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _problem(5, 90)
    x = x + np.random.default_rng(5).normal(scale=4.0, size=x.shape)  # misclassified rows
    expected = metrics.collapse_report(x, y)
    monkeypatch.setattr(_probe, "PROBE_BLOCK_ENTRIES", 3 * NUM_CLASSES + 1)  # blocks of 3 rows, 90 = 30 blocks
    blocked = metrics.collapse_report(x, y)
    means = np.array([x[y == c].mean(0) for c in range(NUM_CLASSES)])
    nearest = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert 0.2 < expected["ncc_accuracy"] < 1.0
    assert blocked["ncc_accuracy"] == expected["ncc_accuracy"] == pytest.approx(np.mean(nearest == y), rel=1e-15)
    assert blocked["mean_classifier_accuracy"] == expected["mean_classifier_accuracy"]


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_backends_give_the_numpy_float64_numbers(backend: str, tmp_path: Path) -> None:
    pytest.importorskip(backend)
    x, y = _problem(6, 70, dtype=np.float32)
    tx, ty = _problem(7, 20, dtype=np.float32)
    path = save_embeddings(tmp_path / "f32.npz", x, y, tx, ty)
    run = analysis.load_run(path)
    expected = analysis.final_report(run, analysis.StreamOptions(chunk_rows=10))  # one chunk shape: few compiles
    got = analysis.final_report(run, analysis.StreamOptions(chunk_rows=10, backend=backend, device="cpu"))
    _assert_reports_equal(got.train, expected.train, 1e-6)
    _assert_reports_equal(got.test, expected.test, 1e-6)
    np.testing.assert_allclose(got.spectrum, expected.spectrum, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# The command line


def _invoke(*args: str):
    return CliRunner().invoke(app, ["analyze", *args])


def test_cli_streams_npy_with_labels_and_test_and_shows_progress(tmp_path: Path) -> None:
    x, y = _problem(8, 45)
    tx, ty = _problem(9, 17)
    for name, array in {"x": x, "y": y, "tx": tx, "ty": ty}.items():
        np.save(tmp_path / f"{name}.npy", array)
    out = tmp_path / "report.json"
    files = ["--labels", str(tmp_path / "y.npy"), "--test", str(tmp_path / "tx.npy")]
    result = _invoke(
        str(tmp_path / "x.npy"),
        *files,
        "--test-labels",
        str(tmp_path / "ty.npy"),
        "--chunk-rows",
        "8",
        "--json",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "rows/s" in result.output and f"read {2 * (45 + 17)} rows" in result.output
    run = json.loads(out.read_text())["runs"][0]
    expected = metrics.collapse_report(tx, ty, num_classes=NUM_CLASSES, reference=(x, y))
    assert run["test"]["ncc_accuracy"] == pytest.approx(expected["ncc_accuracy"], rel=1e-12)
    assert run["train"]["nc1"] == pytest.approx(metrics.collapse_report(x, y)["nc1"], rel=1e-10)


def test_csv_exports_the_history(tmp_path: Path) -> None:
    from tests.test_analyze import EPOCHS, _checkpoint

    path = _checkpoint(tmp_path / "hscl.npz", loss="hscl", beta=5.0, seed=2)
    out = tmp_path / "history.csv"
    result = _invoke(str(path), "--csv", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    history = analysis.metric_history(analysis.load_run(path))
    assert [int(row["epoch"]) for row in rows] == list(range(1, EPOCHS + 1))
    assert {row["run"] for row in rows} == {"HSCL beta=5"}
    for key, (_, values) in history.items():
        np.testing.assert_allclose([float(row[key]) for row in rows], values, rtol=1e-15)
    assert set(rows[0]) == {"run", "epoch", *history}


class Holder:
    """A plain class instance: saving it needs the pickle machinery that weights_only=True refuses."""


def _bad_files(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    x, y = _problem(10, 12)
    np.savez(tmp_path / "short.npz", embeddings=x, labels=y[:-1])
    np.savez(tmp_path / "nokey.npz", features=x, labels=y)
    np.savez(tmp_path / "ints.npz", embeddings=(x * 10).astype(np.int64), labels=y)
    poisoned = x.copy()
    poisoned[[7, 9], 1] = np.nan
    np.savez(tmp_path / "nan.npz", embeddings=poisoned, labels=y)
    np.savez(tmp_path / "many.npz", embeddings=x, labels=np.where(y == 0, 40, y))
    np.save(tmp_path / "alone.npy", x)
    with zipfile.ZipFile(tmp_path / "pickle.pt", "w") as archive:  # not a torch zip: the unpickler refuses it
        archive.writestr("archive/data.pkl", b"\x80\x04cos\nsystem\n.")
    return {
        "short": (["short.npz"], ["'labels'", "11 labels for 12 rows"]),
        "no key": (["nokey.npz"], ["'embeddings'", "is missing", "--embeddings-key", "features"]),
        "ints": (["ints.npz"], ["'embeddings'", "must be a float", "int64"]),
        "nan": (["nan.npz"], ["NaN", "row 7"]),
        "C > N": (["many.npz"], ["41 classes", "only 12 rows"]),
        "no labels": (["alone.npy"], ["--labels", "alone_labels.npy"]),
        "pickle": (["pickle.pt"], ["pickle.pt"]),
        "key option": (["nokey.npz", "--embeddings-key", "missing"], ["'missing'", "is missing"]),
    }


@pytest.mark.parametrize("case", ["short", "no key", "ints", "nan", "C > N", "no labels", "pickle", "key option"])
def test_bad_files_give_one_clear_line(case: str, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    arguments, fragments = _bad_files(tmp_path)[case]
    result = _invoke(str(tmp_path / arguments[0]), *arguments[1:])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and "error" in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


def test_pt_that_needs_pickle_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    holder = Holder()
    holder.embeddings = torch.zeros(3, 2)
    torch.save({"embeddings": torch.zeros(3, 2), "labels": torch.zeros(3), "extra": holder}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        open_embeddings(tmp_path / "obj.pt")
