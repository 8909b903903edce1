"""Image readers on fabricated files in the real layouts: exact pixels and labels, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from hcl_array import image_data

from .fabricate import write_image_folder, write_stl10, write_tiny_imagenet

pytestmark = pytest.mark.vision
pytest.importorskip("PIL", reason="the PNG/JPEG readers need Pillow (the images extra)")


def _one_line(error: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("point_at", ["parent", "folder"])
@pytest.mark.parametrize(
    "write, read, folder, classes",
    [
        (write_stl10, image_data.stl10, "stl10_binary", 10),  # column-major planes, labels 1..10
        (write_tiny_imagenet, image_data.tiny_imagenet, "tiny-imagenet-200", 3),  # wnids order, val as test
    ],
    ids=["stl10", "tiny-imagenet"],
)
def test_readers_give_the_exact_pixels_and_labels(tmp_path, point_at, write, read, folder, classes) -> None:
    written = write(tmp_path)
    dataset = read(tmp_path if point_at == "parent" else tmp_path / folder)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(dataset, key), written[key], err_msg=key)
    assert dataset.x_train.dtype == np.uint8 and dataset.is_image and dataset.num_classes == classes
    assert dataset.y_train.min() >= 0 and dataset.y_train.max() < classes


def test_stl10_missing_and_truncated_files_are_named(tmp_path) -> None:
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "test_y.bin").unlink()
    with pytest.raises(FileNotFoundError) as error:
        image_data.stl10(tmp_path)
    _one_line(error, "test_y.bin", "nothing is downloaded")
    write_stl10(tmp_path / "other")
    path = tmp_path / "other" / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError) as error:
        image_data.stl10(tmp_path / "other")
    _one_line(error, "train_X.bin", "27648-byte")


def test_tiny_imagenet_resizes_to_image_size(tmp_path) -> None:
    write_tiny_imagenet(tmp_path)
    dataset = image_data.tiny_imagenet(tmp_path, image_size=32)
    assert dataset.x_train.shape == (6, 3, 32, 32) and dataset.x_test.shape == (3, 3, 32, 32)


def test_tiny_imagenet_empty_class_and_unreadable_image_are_named(tmp_path) -> None:
    write_tiny_imagenet(tmp_path)
    class_images = sorted((tmp_path / "tiny-imagenet-200" / "train").iterdir())[1] / "images"
    for path in class_images.iterdir():
        path.unlink()
    with pytest.raises(ValueError) as error:
        image_data.tiny_imagenet(tmp_path)
    _one_line(error, str(class_images), "no PNG or JPEG images")
    write_tiny_imagenet(tmp_path / "b")
    broken = tmp_path / "b" / "tiny-imagenet-200" / "val" / "images" / "val_2.JPEG"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError) as error:
        image_data.tiny_imagenet(tmp_path / "b")
    _one_line(error, str(broken), "not a readable PNG/JPEG image")
    (tmp_path / "b" / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    with pytest.raises(FileNotFoundError) as error:
        image_data.tiny_imagenet(tmp_path / "b")
    _one_line(error, "val_annotations.txt")


def test_folder_numbers_classes_in_name_order_and_splits_every_class(tmp_path) -> None:
    written = write_image_folder(tmp_path, classes=("dog", "cat", "emu"), per_class=5, side=12)
    dataset = image_data.image_folder(tmp_path, image_size=12, test_fraction=0.2, seed=0)
    assert dataset.num_classes == 3 and dataset.x_train.shape == (12, 3, 12, 12) and dataset.x_test.shape[0] == 3
    assert sorted(np.bincount(dataset.y_test)) == [1, 1, 1]
    # written in the order dog, cat, emu: labels are by sorted name, cat 0, dog 1, emu 2
    relabel = np.array([1, 0, 2])
    by_bytes = {image.tobytes(): relabel[label] for image, label in zip(written["x"], written["y"], strict=True)}
    images, labels = np.concatenate([dataset.x_train, dataset.x_test]), np.r_[dataset.y_train, dataset.y_test]
    for image, label in zip(images, labels, strict=True):
        assert by_bytes[image.tobytes()] == label  # exact pixels, right label


def test_folder_with_train_and_test_subfolders_keeps_that_split(tmp_path) -> None:
    write_image_folder(tmp_path / "train", per_class=3, side=10)
    write_image_folder(tmp_path / "test", per_class=2, side=10, seed=1)
    dataset = image_data.image_folder(tmp_path, image_size=10)
    assert dataset.x_train.shape[0] == 6 and dataset.x_test.shape[0] == 4
    np.testing.assert_array_equal(dataset.y_test, [0, 0, 1, 1])


def test_folder_resizes_the_shorter_side_then_crops_the_centre(tmp_path) -> None:
    from PIL import Image

    (tmp_path / "a").mkdir()
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, 10:30] = (200, 100, 50)  # a centred square of colour on black
    Image.fromarray(wide).save(tmp_path / "a" / "wide.png")
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(tmp_path / "a" / "small.png")
    dataset = image_data.image_folder(tmp_path, image_size=10, test_fraction=0.0)
    assert dataset.x_train.shape == (2, 3, 10, 10)
    square, small = dataset.x_train[1], dataset.x_train[0]  # sorted file names: small.png, wide.png
    np.testing.assert_array_equal(square[:, 1:-1, 1:-1], np.broadcast_to([[[200]], [[100]], [[50]]], (3, 8, 8)))
    np.testing.assert_array_equal(small, np.full((3, 10, 10), 7))  # upscaled constant stays constant


@pytest.mark.parametrize(
    "breakage, needles",
    [
        ("empty class", ["dog", "no PNG or JPEG images"]),
        ("unreadable", ["0.png", "not a readable PNG/JPEG image"]),
        ("no classes", ["no class subfolders"]),
    ],
)
def test_folder_errors_name_the_class_or_file(tmp_path, breakage: str, needles: list[str]) -> None:
    write_image_folder(tmp_path, classes=("cat", "dog"), per_class=2, side=8)
    if breakage == "empty class":
        for path in (tmp_path / "dog").iterdir():
            path.unlink()
    elif breakage == "unreadable":
        (tmp_path / "cat" / "0.png").write_bytes(b"\x89PNG broken")
    else:
        for folder in ("cat", "dog"):
            for path in (tmp_path / folder).iterdir():
                path.unlink()
            (tmp_path / folder).rmdir()
    with pytest.raises(ValueError) as error:
        image_data.image_folder(tmp_path, image_size=8)
    _one_line(error, *needles)


def test_images_of_different_sizes_need_an_image_size(tmp_path) -> None:
    from PIL import Image

    write_tiny_imagenet(tmp_path)
    path = next((tmp_path / "tiny-imagenet-200" / "train").glob("*/images/*_0.JPEG"))
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path, format="PNG")
    with pytest.raises(ValueError) as error:
        image_data.tiny_imagenet(tmp_path)
    _one_line(error, "different sizes", "--image-size")
    assert image_data.tiny_imagenet(tmp_path, image_size=16).x_train.shape == (6, 3, 16, 16)


def test_load_images_needs_the_folder_and_the_size(tmp_path) -> None:
    with pytest.raises(ValueError) as error:
        image_data.load_images("stl10", None)
    _one_line(error, "--data stl10 needs --data-dir")
    with pytest.raises(ValueError) as error:
        image_data.load_images("folder", tmp_path)
    _one_line(error, "--data folder needs --image-size")
    with pytest.raises(FileNotFoundError) as error:
        image_data.load_images("tiny-imagenet", tmp_path / "nowhere")
    _one_line(error, "nowhere", "is not a directory")
