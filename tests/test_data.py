"""Data sets: shapes, dtypes, values, determinism, stratified splits, CIFAR in both real file formats."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from hcl_array import data

from .fabricate import write_binary_cifar, write_python_cifar


def _expected(written: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.concatenate([written[n][0] for n in names]).reshape(-1, 3, 32, 32)
    return pixels, np.concatenate([written[n][1] for n in names])


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("writer", [write_python_cifar, write_binary_cifar])
@pytest.mark.parametrize("point_at", ["parent", "folder"])
@pytest.mark.vision
def test_cifar_reads_both_formats_from_folder_or_parent(tmp_path, num_classes, writer, point_at):
    written = writer(tmp_path, num_classes)
    data_dir = tmp_path if point_at == "parent" else next(tmp_path.iterdir())
    dataset = data.cifar(data_dir, num_classes=num_classes)

    names = sorted(written)  # data_batch_1..5 < test_batch; test < train for CIFAR-100
    train_names = [n for n in names if not n.startswith("test")]
    test_names = [n for n in names if n.startswith("test")]
    x_train, y_train = _expected(written, train_names)
    x_test, y_test = _expected(written, test_names)
    assert dataset.x_train.shape == (4 * len(train_names), 3, 32, 32) and dataset.x_train.dtype == np.uint8
    assert dataset.is_image and dataset.x_train.flags.c_contiguous
    assert dataset.y_train.dtype == np.int64 and dataset.y_test.dtype == np.int64
    np.testing.assert_array_equal(dataset.x_train, x_train)
    np.testing.assert_array_equal(dataset.y_train, y_train)  # fine labels for CIFAR-100
    np.testing.assert_array_equal(dataset.x_test, x_test)
    np.testing.assert_array_equal(dataset.y_test, y_test)
    assert dataset.num_classes == num_classes and dataset.name == f"cifar{num_classes}"


@pytest.mark.vision
def test_cifar_channel_layout_is_red_green_blue_planes(tmp_path):
    write_binary_cifar(tmp_path, 10, per_batch=1)
    record = bytearray((tmp_path / "cifar-10-batches-bin" / "test_batch.bin").read_bytes())
    record[1 : 1 + 3072] = bytes([0] * 1024 + [255] * 1024 + [51] * 1024)  # red 0, green 1, blue 0.2
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(bytes(record))
    image = data.cifar(tmp_path).x_test[0]
    np.testing.assert_array_equal(image.reshape(3, -1).mean(axis=1), [0, 255, 51])


@pytest.mark.vision
def test_cifar_reads_python2_pickles_naming_numpy_core(tmp_path):
    # The original files were written by Python 2 and name numpy.core.multiarray, not numpy._core.
    write_python_cifar(tmp_path, 10)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert data.cifar(tmp_path).x_test.shape == (4, 3, 32, 32)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.vision
def test_cifar_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    write_python_cifar(tmp_path, 10)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": _RunsCode(), b"labels": []}, handle, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_3.*refusing to load global __builtin__.print"):
        data.cifar(tmp_path)
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.vision
def test_cifar_object_array_in_pickle_is_refused(tmp_path):
    write_python_cifar(tmp_path, 10)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.array([1, "a"], dtype=object), b"labels": [0]}, handle, protocol=2)
    with pytest.raises(ValueError, match="test_batch.*object dtypes are refused"):
        data.cifar(tmp_path)


@pytest.mark.vision
def test_cifar_missing_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*never downloaded"):
        data.cifar(tmp_path / "nowhere")


@pytest.mark.parametrize("num_classes, expected", [(10, "data_batch_1.*test_batch"), (100, "cifar-100-python.*train")])
@pytest.mark.vision
def test_cifar_missing_files_lists_what_is_expected(tmp_path, num_classes, expected):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*{expected}.*Nothing is downloaded"):
        data.cifar(tmp_path, num_classes=num_classes)


@pytest.mark.vision
def test_cifar_incomplete_set_and_unextracted_archive(tmp_path):
    write_binary_cifar(tmp_path, 10)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="data_batch_4.bin.*extract it"):
        data.cifar(tmp_path)


@pytest.mark.vision
def test_cifar_truncated_binary_file(tmp_path):
    write_binary_cifar(tmp_path, 100)
    path = tmp_path / "cifar-100-binary" / "test.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="test.bin.*3074-byte"):
        data.cifar(tmp_path, num_classes=100)


@pytest.mark.vision
def test_cifar10_files_read_as_cifar100_are_rejected(tmp_path):
    write_binary_cifar(tmp_path, 10)
    with pytest.raises(FileNotFoundError, match="cifar-100"):
        data.cifar(tmp_path, num_classes=100)
    with pytest.raises(ValueError, match="10 or 100"):
        data.cifar(tmp_path, num_classes=20)


# ----------------------------------------------------------------------------------------------------
# Synthetic and digits.


def test_synthetic_default_shapes_and_determinism():
    first, second = data.synthetic(), data.synthetic()
    assert first.x_train.shape == (800, 32) and first.x_test.shape == (200, 32)
    assert first.x_train.dtype == np.float32 and first.y_train.dtype == np.int64
    assert first.num_classes == 10 and first.name == "synthetic" and first.input_shape == (32,)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.x_train, data.synthetic(seed=1).x_train)


def test_synthetic_split_is_stratified():
    dataset = data.synthetic(num_classes=7, per_class=30, test_fraction=0.2)
    assert np.bincount(dataset.y_test).tolist() == [6] * 7
    assert np.bincount(dataset.y_train).tolist() == [24] * 7


def test_synthetic_centre_distance_is_separation_times_noise():
    # Class means of many samples estimate the centres; their RMS pairwise distance is separation * noise.
    dataset = data.synthetic(num_classes=40, per_class=400, input_dim=64, separation=3.0, noise=2.0, test_fraction=0)
    means = np.stack([dataset.x_train[dataset.y_train == c].mean(0) for c in range(40)]).astype(np.float64)
    gaps = ((means[:, None] - means[None]) ** 2).sum(-1)[np.triu_indices(40, 1)]
    assert np.sqrt(gaps.mean()) == pytest.approx(6.0, rel=0.1)
    within = dataset.x_train[dataset.y_train == 0] - means[0]
    assert within.std() == pytest.approx(2.0, rel=0.05)


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        data.synthetic(num_classes=1)
    with pytest.raises(ValueError, match="noise"):
        data.synthetic(noise=0)
    with pytest.raises(ValueError, match="test_fraction"):
        data.synthetic(test_fraction=1.0)


def test_digits_scaled_flattened_stratified():
    pytest.importorskip("sklearn")
    dataset = data.digits()
    assert dataset.x_train.shape[1:] == (64,) and dataset.x_train.dtype == np.float32
    assert len(dataset.y_train) + len(dataset.y_test) == 1797
    assert dataset.x_train.min() == 0.0 and dataset.x_train.max() == 1.0
    counts = np.bincount(dataset.y_test, minlength=10) / np.bincount(np.concatenate([dataset.y_train, dataset.y_test]))
    np.testing.assert_allclose(counts, 0.2, atol=0.01)
    np.testing.assert_array_equal(dataset.x_test, data.digits().x_test)


def test_stratified_split_keeps_every_class_on_both_sides():
    labels = np.array([0] * 2 + [1] * 3 + [2] * 50)
    train, test = data.stratified_split(labels, 0.1, seed=0)
    assert set(labels[train]) == set(labels[test]) == {0, 1, 2}
    assert np.intersect1d(train, test).size == 0 and train.size + test.size == labels.size
    assert np.bincount(labels[test]).tolist() == [1, 1, 5]


# ----------------------------------------------------------------------------------------------------
# npz files.


def test_npz_with_explicit_test_set(tmp_path):
    path = tmp_path / "d.npz"
    x = np.arange(24, dtype=np.float64).reshape(6, 2, 2)
    np.savez(path, x=x, y=np.array([0, 1, 2, 0, 1, 2], dtype=np.int32), x_test=x[:2], y_test=np.array([2, 0]))
    dataset = data.npz(path)
    assert dataset.x_train.dtype == np.float32 and dataset.y_train.dtype == np.int64
    assert dataset.x_test.shape == (2, 2, 2) and dataset.num_classes == 3
    np.testing.assert_array_equal(dataset.x_train, x.astype(np.float32))


def test_npz_without_test_set_is_split_by_seed(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 3)), y=np.repeat([0, 1], 20))
    dataset = data.npz(path, test_fraction=0.25, seed=3)
    assert np.bincount(dataset.y_test).tolist() == [5, 5]
    np.testing.assert_array_equal(dataset.x_test, data.load("npz", path=path, test_fraction=0.25, seed=3).x_test)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"y": np.zeros(3, int)}, "missing array 'x'"),
        ({"x": np.zeros((3, 2))}, "missing array 'y'"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(4, int)}, r"'y' must have shape \(3,\)"),
        ({"x": np.zeros((3, 2)), "y": np.array([0.0, 1.0, 1.5])}, "'y' must hold integer class labels"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 1])}, "'y' has negative labels"),
        ({"x": np.zeros(3), "y": np.zeros(3, int)}, "'x' must have shape"),
        ({"x": np.array([["a"]] * 3), "y": np.zeros(3, int)}, "'x' must be numeric"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 2, 2])}, r"classes \[1\] have no training samples"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(3, int), "x_test": np.zeros((1, 2))}, "given together"),
        (
            {"x": np.zeros((3, 2)), "y": np.zeros(3, int), "x_test": np.zeros((1, 5)), "y_test": np.zeros(1, int)},
            r"'x_test' samples have shape \(5,\)",
        ),
    ],
)
def test_npz_errors_name_file_and_key(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=f"bad.npz.*{message}"):
        data.npz(path)


def test_npz_object_array_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([[1], ["a"], [None]], dtype=object), y=np.zeros(3, int))
    with pytest.raises(ValueError, match="obj.npz.*'x' is an object"):
        data.npz(path)


def test_npz_missing_or_not_an_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        data.npz(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="text.npz.*not a readable"):
        data.npz(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single.npy.*single .npy"):
        data.npz(tmp_path / "single.npy")


def test_load_dispatches_and_lists_names(tmp_path):
    assert data.load("synthetic", num_classes=3, per_class=10).num_classes == 3
    write_binary_cifar(tmp_path, 100)
    assert data.load("cifar100", data_dir=tmp_path).num_classes == 100
    with pytest.raises(ValueError, match="data_dir"):
        data.load("cifar10")
    with pytest.raises(ValueError, match="path="):
        data.load("npz")
    with pytest.raises(ValueError, match="synthetic, digits, cifar10, cifar100, npz"):
        data.load("mnist")


# ----------------------------------------------------------------------------------------------------
# Batches and augmentation.


def test_batches_reproducible_from_seed_and_epoch():
    first = data.batches(103, 10, seed=5, epoch=2)
    again = data.batches(103, 10, seed=5, epoch=2)
    assert len(first) == 10 and all(b.shape == (10,) and b.dtype == np.int64 for b in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=False))
    assert np.unique(np.concatenate(first)).size == 100  # no repeats within an epoch
    assert not np.array_equal(np.concatenate(first), np.concatenate(data.batches(103, 10, seed=5, epoch=3)))
    assert not np.array_equal(np.concatenate(first), np.concatenate(data.batches(103, 10, seed=6, epoch=2)))


def test_batches_keep_last_and_errors():
    kept = data.batches(25, 10, seed=0, epoch=0, drop_last=False)
    assert [b.size for b in kept] == [10, 10, 5]
    np.testing.assert_array_equal(np.sort(np.concatenate(kept)), np.arange(25))
    with pytest.raises(ValueError, match="exceeds the 25 training samples"):
        data.batches(25, 30, seed=0, epoch=0)
    with pytest.raises(ValueError, match="positive"):
        data.batches(25, 0, seed=0, epoch=0)


def test_augment_noise_for_vectors():
    x = np.ones((500, 8), dtype=np.float32)
    view = data.augment(x, np.random.default_rng(0), "auto", noise_std=0.5)
    assert view.dtype == np.float32 and view.shape == x.shape
    assert (view - x).std() == pytest.approx(0.5, rel=0.05)
    np.testing.assert_array_equal(view, data.augment(x, np.random.default_rng(0), "noise", noise_std=0.5))


def test_augment_shift_moves_images_with_zero_padding():
    images = np.zeros((200, 3, 12, 12), dtype=np.float32)
    images[:, :, 5, 6] = 1.0  # one lit pixel per channel at row 5, column 6
    view = data.augment(images, np.random.default_rng(1), "auto", max_shift=4)
    assert view.shape == images.shape and view.dtype == np.float32
    lit = np.argwhere(view[:, 0] == 1.0)  # (image, row, column)
    assert lit.shape[0] == 200  # a shift of <= 4 keeps the pixel inside a 12x12 image
    shifts = lit[:, 1:] - [5, 6]
    assert np.abs(shifts).max() == 4 and len({tuple(s) for s in shifts}) > 40
    np.testing.assert_array_equal(view[:, 0], view[:, 2])  # all channels move together
    assert view.sum() == 600.0  # nothing but the lit pixels; padding is zero


def test_augment_shift_fills_uncovered_border_with_zeros():
    images = np.ones((50, 1, 8, 8))
    view = data.augment(images, np.random.default_rng(2), "shift", max_shift=2)
    zero_rows = (view[:, 0] == 0).all(axis=2).sum(axis=1)
    zero_cols = (view[:, 0] == 0).all(axis=1).sum(axis=1)
    assert set(zero_rows.tolist()) <= {0, 1, 2} and zero_rows.max() == 2 and zero_cols.max() == 2
    assert ((view == 0) | (view == 1)).all()


def test_augment_errors():
    with pytest.raises(ValueError, match="needs images"):
        data.augment(np.zeros((3, 4)), np.random.default_rng(0), "shift")
    with pytest.raises(ValueError, match="unknown augmentation"):
        data.augment(np.zeros((3, 4)), np.random.default_rng(0), "rotate")


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        data.digits()
