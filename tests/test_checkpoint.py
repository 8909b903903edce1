"""Checkpoint: exact round trip, atomic writes, no pickle, and a clear message for every bad file."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest

from hcl_array import checkpoint as ckpt
from hcl_array.checkpoint import Checkpoint, CheckpointError


def _checkpoint(epochs: int = 3, classes: int = 4, dim: int = 5, **changes) -> Checkpoint:
    rng = np.random.default_rng(0)
    fields = dict(
        train_embeddings=rng.normal(size=(12, dim)).astype(np.float32),
        train_labels=np.arange(12) % classes,
        test_embeddings=rng.normal(size=(6, dim)).astype(np.float32),
        test_labels=np.arange(6) % classes,
        class_means=rng.normal(size=(epochs, classes, dim)),
        history={"loss": rng.random(epochs), "unit_norm": rng.random(epochs), "test_accuracy": rng.random(epochs)},
        config={"loss": "hscl", "beta": 5.0, "batch_size": 512, "data": {"name": "synthetic", "seed": 0}},
        params={"encoder/w1": rng.normal(size=(5, 7)), "encoder/b1": np.zeros(7, np.float32)},
        optimizer_state={"step": np.array(30), "m/encoder/w1": np.ones((5, 7)), "v/encoder/w1": np.ones((5, 7))},
        epoch=epochs,
        rng={"numpy_state": np.arange(4, dtype=np.uint64)},
        extra={"note_codes": np.array([1, 2], np.int8)},
    )
    fields.update(changes)
    return Checkpoint(**fields)


def _assert_same(loaded: Checkpoint, original: Checkpoint) -> None:
    for field in dataclasses.fields(Checkpoint):
        got, want = getattr(loaded, field.name), getattr(original, field.name)
        if field.name == "versions":
            continue
        if isinstance(want, dict) and field.name != "config":
            assert sorted(got) == sorted(want), field.name
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{field.name}/{key}")
                assert got[key].dtype == np.asarray(want[key]).dtype or field.name == "history"
        elif isinstance(want, np.ndarray):
            np.testing.assert_array_equal(got, want, err_msg=field.name)
        else:
            assert got == want, field.name


def test_round_trip_is_exact(tmp_path):
    original = _checkpoint()
    path = ckpt.save_checkpoint(tmp_path / "run.npz", original)
    loaded = ckpt.load_checkpoint(path)
    _assert_same(loaded, original)
    assert loaded.train_labels.dtype == np.int64 and loaded.train_embeddings.dtype == np.float32
    assert all(value.dtype == np.float64 for value in loaded.history.values())
    assert loaded.params["encoder/b1"].dtype == np.float32 and loaded.rng["numpy_state"].dtype == np.uint64
    assert loaded.versions["numpy"] == np.__version__ and "python" in loaded.versions


def test_file_layout_is_the_documented_flat_namespace(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "run.npz", _checkpoint())
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        assert keys == {
            "format_version",
            "epoch",
            "train_embeddings",
            "train_labels",
            "test_embeddings",
            "test_labels",
            "class_means",
            "config",
            "versions",
            "history/loss",
            "history/unit_norm",
            "history/test_accuracy",
            "params/encoder/w1",
            "params/encoder/b1",
            "optimizer/step",
            "optimizer/m/encoder/w1",
            "optimizer/v/encoder/w1",
            "rng/numpy_state",
            "extra/note_codes",
        }
        assert archive["config"].dtype.kind == "U" and archive["config"].shape == ()
        assert json.loads(str(archive["config"]))["data"]["name"] == "synthetic"
        assert archive["epoch"].dtype == np.int64 and archive["epoch"].shape == ()
        assert archive["train_labels"].dtype == np.int64


def test_config_json_round_trips_types(tmp_path):
    config = {"beta": 1e-300, "nested": {"list": [1, 2.5, None, True, "x"]}, "unicode": "β-δ", "empty": {}}
    path = ckpt.save_checkpoint(tmp_path / "c.npz", _checkpoint(config=config))
    assert ckpt.load_checkpoint(path).config == config


def test_unserializable_config_is_rejected_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="'config' is not JSON-serializable"):
        ckpt.save_checkpoint(tmp_path / "c.npz", _checkpoint(config={"array": np.zeros(2)}))
    assert list(tmp_path.iterdir()) == []


def test_empty_history_at_epoch_zero(tmp_path):
    start = _checkpoint(epochs=0, history={}, class_means=np.zeros((0, 4, 5)))
    loaded = ckpt.load_checkpoint(ckpt.save_checkpoint(tmp_path / "c.npz", start))
    assert loaded.epoch == 0 and loaded.class_means.shape == (0, 4, 5) and loaded.history == {}


def test_integer_history_is_stored_as_float64(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "c.npz", _checkpoint(history={"steps": np.array([10, 20, 30])}))
    assert ckpt.load_checkpoint(path).history["steps"].dtype == np.float64


def test_write_is_atomic_when_it_fails_midway(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    ckpt.save_checkpoint(path, _checkpoint(epochs=2))
    before = path.read_bytes()
    real_savez = np.savez

    def savez_that_crashes(file, **arrays):
        real_savez(file, **arrays)  # the whole archive is written out ...
        file.seek(file.tell() // 2)
        file.truncate()  # ... then half is lost, as in a crash
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", savez_that_crashes)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, _checkpoint(epochs=3))
    assert path.read_bytes() == before
    assert ckpt.load_checkpoint(path).epoch == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]  # the temporary file is cleaned up


def test_write_replaces_previous_checkpoint(tmp_path):
    path = tmp_path / "run.npz"
    ckpt.save_checkpoint(path, _checkpoint(epochs=2))
    ckpt.save_checkpoint(path, _checkpoint(epochs=3))
    assert ckpt.load_checkpoint(path).epoch == 3
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]


def test_interrupted_write_before_replace_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    ckpt.save_checkpoint(path, _checkpoint(epochs=1))

    def replace_interrupted(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.os, "replace", replace_interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, _checkpoint(epochs=2))
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path).epoch == 1
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]


# ----------------------------------------------------------------------------------------------------
# Bad files: each gives a CheckpointError (a ValueError) naming the file and the key.


def _save_arrays(path, checkpoint: Checkpoint | None = None, drop=(), **replace):
    """A checkpoint's arrays written without validation, with keys dropped or replaced."""
    arrays = ckpt._checkpoint_arrays(checkpoint or _checkpoint(), path)
    for key in drop:
        del arrays[key]
    arrays.update(replace)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "key",
    [
        "train_embeddings",
        "train_labels",
        "test_embeddings",
        "test_labels",
        "class_means",
        "config",
        "epoch",
        "format_version",
    ],
)
def test_missing_required_key(tmp_path, key):
    path = _save_arrays(tmp_path / "bad.npz", drop=[key])
    with pytest.raises(CheckpointError, match=f"bad.npz: '{key}' is missing"):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize(
    "replace, message",
    [
        ({"train_labels": np.zeros(11, np.int64)}, "'train_labels' has 11 labels for 12 rows"),
        ({"train_labels": np.zeros(12)}, "'train_labels' must be an integer"),
        ({"train_labels": -np.ones(12, np.int64)}, "'train_labels' has negative labels"),
        ({"test_labels": np.full(6, 9)}, "'test_labels' has label 9 but class_means has 4 classes"),
        ({"train_embeddings": np.zeros((12, 5, 1))}, r"'train_embeddings' must be a float \(N, d\)"),
        ({"train_embeddings": np.zeros((12, 5), np.int32)}, "'train_embeddings' must be a float"),
        ({"test_embeddings": np.zeros((6, 3))}, "'test_embeddings' has dimension 3, train_embeddings 5"),
        ({"class_means": np.zeros((3, 4, 2))}, r"'class_means' must be float \(epochs, classes, 5\)"),
        ({"history/loss": np.zeros(2)}, r"'history/loss' must be float \(3,\)"),
        ({"epoch": np.array([3])}, "'epoch' must be an int scalar"),
        ({"epoch": np.array(-1)}, "'epoch' must be >= 0"),
        ({"format_version": np.array(99)}, "'format_version' is 99"),
        ({"config": np.array("{not json")}, "'config' is not valid JSON"),
        ({"config": np.array("[1, 2]")}, "'config' must hold a JSON object"),
        ({"config": np.frombuffer(b"{}", np.uint8)}, "'config' must be a 0-d unicode array"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, replace, message):
    path = _save_arrays(tmp_path / "bad.npz", **replace)
    with pytest.raises(CheckpointError, match=f"bad.npz: {message}"):
        ckpt.load_checkpoint(path)


def test_invalid_checkpoint_is_not_written(tmp_path):
    with pytest.raises(CheckpointError, match="'test_labels' has 5 labels for 6 rows"):
        ckpt.save_checkpoint(tmp_path / "c.npz", _checkpoint(test_labels=np.zeros(5, int)))
    with pytest.raises(CheckpointError, match="params name '' must be a non-empty str"):
        ckpt.save_checkpoint(tmp_path / "c.npz", _checkpoint(params={"": np.zeros(1)}))
    assert list(tmp_path.iterdir()) == []


def test_pickled_object_array_is_refused(tmp_path):
    path = _save_arrays(tmp_path / "evil.npz", **{"params/w": np.array([{"a": 1}, None], dtype=object)})
    with pytest.raises(CheckpointError, match="evil.npz: array 'params/w' is a pickled object array"):
        ckpt.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="evil.npz: array 'params/w' is a pickled object array"):
        ckpt.load_embeddings(path)


def test_object_arrays_are_never_written(tmp_path):
    with pytest.raises(CheckpointError, match="'params/w' has an object dtype"):
        ckpt.save_checkpoint(tmp_path / "c.npz", _checkpoint(params={"w": np.array([None])}))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(tmp_path / "run.npz", _checkpoint())
    real_load = np.load
    calls = []

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", recording_load)
    ckpt.load_checkpoint(path)
    ckpt.load_embeddings(path)
    assert calls and all(flag is False for flag in calls)


def test_not_an_npz(tmp_path):
    (tmp_path / "notes.npz").write_text("definitely not a zip")
    with pytest.raises(CheckpointError, match="notes.npz: not an .npz archive"):
        ckpt.load_checkpoint(tmp_path / "notes.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="array.npy: a single .npy array"):
        ckpt.load_checkpoint(tmp_path / "array.npy")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        ckpt.load_checkpoint(tmp_path / "missing.npz")


def test_truncated_file_from_a_non_atomic_writer(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "run.npz", _checkpoint())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="run.npz: not an .npz archive"):
        ckpt.load_checkpoint(path)


def test_corrupted_member_names_the_key(tmp_path):
    path = tmp_path / "run.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in ckpt._checkpoint_arrays(_checkpoint(), path).items():
            if key != "class_means":
                with archive.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, value)
        archive.writestr("class_means.npy", b"\x93NUMPY garbage")  # a broken array header
    with pytest.raises(CheckpointError, match="run.npz: array 'class_means' is unreadable"):
        ckpt.load_checkpoint(path)


# ----------------------------------------------------------------------------------------------------
# load_embeddings: checkpoints and plain files of any model.


def test_load_embeddings_from_checkpoint(tmp_path):
    original = _checkpoint()
    loaded = ckpt.load_embeddings(ckpt.save_checkpoint(tmp_path / "run.npz", original))
    assert loaded.source == "checkpoint" and loaded.config == original.config
    np.testing.assert_array_equal(loaded.train_embeddings, original.train_embeddings)
    np.testing.assert_array_equal(loaded.test_labels, original.test_labels)
    np.testing.assert_array_equal(loaded.class_means, original.class_means)
    np.testing.assert_array_equal(loaded.history["loss"], original.history["loss"])


def test_load_embeddings_from_plain_file(tmp_path):
    path = tmp_path / "model.npz"
    np.savez(path, embeddings=np.ones((4, 3)), labels=np.array([0, 1, 0, 1], np.int32))
    loaded = ckpt.load_embeddings(path)
    assert loaded.source == "embeddings" and loaded.test_embeddings is None and loaded.test_labels is None
    assert loaded.class_means is None and loaded.history == {} and loaded.config == {}
    assert loaded.train_labels.dtype == np.int64 and loaded.train_embeddings.shape == (4, 3)


def test_save_embeddings_round_trip_with_test_set(tmp_path):
    path = ckpt.save_embeddings(tmp_path / "e.npz", np.ones((4, 3)), [0, 1, 0, 1], np.zeros((2, 3)), [1, 0])
    loaded = ckpt.load_embeddings(path)
    np.testing.assert_array_equal(loaded.test_labels, [1, 0])
    np.testing.assert_array_equal(loaded.test_embeddings, np.zeros((2, 3)))


def test_load_embeddings_accepts_checkpoint_names_in_plain_file(tmp_path):
    path = tmp_path / "e.npz"
    np.savez(path, train_embeddings=np.ones((2, 3)), train_labels=np.array([0, 1]))
    assert ckpt.load_embeddings(path).train_embeddings.shape == (2, 3)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"labels": np.zeros(3, int)}, "'embeddings' is missing"),
        ({"embeddings": np.zeros((3, 2))}, "'labels' is missing"),
        ({"embeddings": np.zeros((3, 2)), "labels": np.zeros(2, int)}, "has 2 labels for 3 rows"),
        ({"embeddings": np.zeros((3, 2)), "labels": np.zeros(3)}, "must be an integer"),
        (
            {"embeddings": np.zeros((3, 2)), "labels": np.zeros(3, int), "test_embeddings": np.zeros((1, 2))},
            "must be given together",
        ),
        (
            {
                "embeddings": np.zeros((3, 2)),
                "labels": np.zeros(3, int),
                "test_embeddings": np.zeros((1, 4)),
                "test_labels": np.zeros(1, int),
            },
            "'test_embeddings' has dimension 4",
        ),
    ],
)
def test_load_embeddings_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=f"bad.npz: .*{message}"):
        ckpt.load_embeddings(path)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_path_is_used_as_given_and_parents_are_created(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "runs" / "hscl" / "latest", _checkpoint())
    assert path.is_file() and path.name == "latest"  # np.savez would have added ".npz"
    assert ckpt.load_checkpoint(path).epoch == 3
