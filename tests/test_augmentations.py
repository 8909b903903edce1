"""The batched augmentations against torchvision.transforms.v2.functional, image by image, same parameters.

References: torchvision's v2 functional ops on float32 images (the vision session; skipped with the
reason where torchvision does not load), torch.nn.functional.interpolate for the resized crop (runs
everywhere torch does), `data.augment` for the shift, and the NumPy result for every other namespace.
Tolerance: 2e-6 absolute on [0, 1] pixels in float32 (the float32 rounding of a few dozen operations;
a wrong parameter or formula moves pixels by 1e-3 or more). In float64 the namespaces agree to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest

from hcl_array import augmentations as aug
from hcl_array import data

from .conftest import assert_close
from .vision import require_torchvision

pytestmark = pytest.mark.vision

TOLERANCE = 2e-6  # float32, pixels in [0, 1]
BATCH = 48


def _images(seed: int, count: int = BATCH, side: int = 32) -> np.ndarray:
    """Random float32 images with flat patches and saturated pixels (where HSV and clipping have edge cases)."""
    rng = np.random.default_rng(seed)
    images = rng.random((count, 3, side, side)).astype(np.float32)
    images[:, :, :4, :4] = rng.random((count, 1, 1, 1))  # gray patches: max == min, hue undefined
    images[:, 0, 5, :] = 1.0
    images[:, 1, 6, :] = 0.0
    return images


def _params(seed: int, count: int = BATCH, side: int = 32) -> aug.SimclrParams:
    return aug.draw_simclr(np.random.default_rng(seed), count, side, side)


def _torch(array: np.ndarray):
    torch = pytest.importorskip("torch")
    return torch.tensor(array)


# ----------------------------------------------------------------------------------------------------
# Parameters.


def test_drawn_parameters_follow_the_released_distributions() -> None:
    params = _params(0, count=20000)
    top, left, height, width = params.boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 32).all() and (left + width <= 32).all()
    area = height * width / 1024
    assert area.min() >= 0.05 and area.max() <= 1.0  # scale (0.08, 1) before rounding to whole pixels
    ratio = width / height
    assert ratio.min() > 0.6 and ratio.max() < 1.6
    assert abs(params.flip.mean() - 0.5) < 0.02 and abs(params.jitter.mean() - 0.8) < 0.02
    assert abs(params.gray.mean() - 0.2) < 0.02 and abs((params.sigma > 0).mean() - 0.5) < 0.02
    assert params.sigma[params.sigma > 0].min() >= 0.1 and params.sigma.max() <= 2.0
    assert params.factors[:, :3].min() >= 0.6 and params.factors[:, :3].max() <= 1.4
    assert np.abs(params.factors[:, 3]).max() <= 0.1
    assert (np.sort(params.order, axis=1) == np.arange(4)).all()  # each row a permutation
    again = _params(0, count=20000)
    for name, value in params._asdict().items():
        np.testing.assert_array_equal(getattr(again, name), value, err_msg=name)


def test_crop_falls_back_to_the_centre_when_no_try_fits() -> None:
    # The whole area at a tall ratio never fits an 8x32 image: torchvision's fallback clips the ratio, centred.
    boxes = aug.draw_simclr(np.random.default_rng(1), 5, 8, 32, scale=(1.0, 1.0), ratio=(0.5, 0.6)).boxes
    np.testing.assert_array_equal(boxes, np.tile([0, 13, 8, 5], (5, 1)))  # width = round(8 * 0.6)
    boxes = aug.draw_simclr(np.random.default_rng(1), 5, 32, 32, scale=(1.0, 1.0), ratio=(2.0, 3.0)).boxes
    np.testing.assert_array_equal(boxes, np.tile([8, 0, 16, 32], (5, 1)))  # height = round(32 / 2)


# ----------------------------------------------------------------------------------------------------
# Every namespace gives the NumPy result (float64).


def test_the_chain_runs_on_every_namespace(xp) -> None:
    images = _images(2).astype(np.float64)
    params = _params(3)
    expected = aug.normalize(aug.simclr(images, params, 24))
    actual = aug.normalize(aug.simclr(xp.asarray(images), params, 24))
    assert actual.shape == (BATCH, 3, 24, 24)
    assert_close(actual, expected, rtol=1e-12, atol=1e-12, xp=xp)


def test_shift_equals_the_host_shift_of_data_augment(xp) -> None:
    images = _images(4).astype(np.float64)
    expected = data.augment(images, np.random.default_rng(7), "shift", max_shift=4)
    offsets = aug.draw_shift(np.random.default_rng(7), BATCH, 4)
    assert_close(aug.shift(xp.asarray(images), offsets), expected, rtol=0, atol=0, xp=xp)


def test_identity_parameters_leave_images_unchanged() -> None:
    images = _images(5)
    ones, zeros = np.ones(BATCH), np.zeros(BATCH)
    for operation, factors in [
        (aug.adjust_brightness, ones),
        (aug.adjust_contrast, ones),
        (aug.adjust_saturation, ones),
        (aug.adjust_hue, zeros),
    ]:
        np.testing.assert_allclose(operation(images, factors), images, atol=TOLERANCE, err_msg=operation.__name__)
    np.testing.assert_array_equal(aug.gaussian_blur(images, zeros), images)
    whole = np.tile([0, 0, 32, 32], (BATCH, 1))
    np.testing.assert_allclose(aug.resized_crop(images, whole, 32), images, atol=TOLERANCE)


def test_resized_crop_equals_torch_interpolate_with_antialiasing() -> None:
    """torchvision's resized_crop on float tensors is crop + interpolate(bilinear, antialias=True)."""
    torch = pytest.importorskip("torch")
    for side, size in [(32, 32), (96, 32), (20, 40)]:  # upscaling crops, shrinking crops, both
        images = _images(6, side=side)
        params = _params(7, side=side)
        ours = aug.resized_crop(_torch(images), params.boxes, size)
        for index, (top, left, height, width) in enumerate(params.boxes):
            crop = torch.tensor(images[index : index + 1, :, top : top + height, left : left + width])
            reference = torch.nn.functional.interpolate(
                crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )[0]
            torch.testing.assert_close(ours[index], reference, rtol=0, atol=TOLERANCE)


# ----------------------------------------------------------------------------------------------------
# torchvision.transforms.v2.functional, image by image, with the same parameters.


def _functional():
    require_torchvision()
    import torchvision.transforms.v2.functional as functional

    return functional


def _jitter_reference(functional, image, factors, order):
    operations = (functional.adjust_brightness, functional.adjust_contrast, functional.adjust_saturation)
    for number in order:
        if number < 3:
            image = operations[number](image, float(factors[number]))
        else:
            image = functional.adjust_hue(image, float(factors[3]))
    return image


@pytest.mark.parametrize("operation", ["brightness", "contrast", "saturation", "hue"])
def test_each_colour_operation_equals_torchvision(operation: str) -> None:
    functional = _functional()
    images, params = _images(8), _params(9)
    column = ("brightness", "contrast", "saturation", "hue").index(operation)
    ours = getattr(aug, f"adjust_{operation}")(_torch(images), params.factors[:, column])
    reference = getattr(functional, f"adjust_{operation}")
    for index in range(BATCH):
        expected = reference(_torch(images[index]), float(params.factors[index, column]))
        np.testing.assert_allclose(ours[index].numpy(), expected.numpy(), rtol=0, atol=TOLERANCE)


def test_geometry_grayscale_and_blur_equal_torchvision() -> None:
    functional = _functional()
    images, params = _images(10, side=40), _params(11, side=40)
    crops = aug.resized_crop(_torch(images), params.boxes, 32)
    flipped = aug.horizontal_flip(_torch(images), params.flip)
    gray = aug.to_grayscale(_torch(images), params.gray)
    blurred = aug.gaussian_blur(_torch(images), params.sigma)
    for index in range(BATCH):
        image = _torch(images[index])
        expected = functional.resized_crop(image, *map(int, params.boxes[index]), [32, 32], antialias=True)
        np.testing.assert_allclose(crops[index].numpy(), expected.numpy(), atol=TOLERANCE)
        expected = functional.horizontal_flip(image) if params.flip[index] else image
        np.testing.assert_array_equal(flipped[index].numpy(), expected.numpy())
        expected = functional.rgb_to_grayscale(image, num_output_channels=3) if params.gray[index] else image
        np.testing.assert_allclose(gray[index].numpy(), expected.numpy(), atol=TOLERANCE)
        sigma = float(params.sigma[index])
        expected = functional.gaussian_blur(image, [3, 3], [sigma, sigma]) if sigma > 0 else image
        np.testing.assert_allclose(blurred[index].numpy(), expected.numpy(), atol=TOLERANCE)


def test_color_jitter_applies_each_images_own_order() -> None:
    functional = _functional()
    images, params = _images(12), _params(13)
    ours = aug.color_jitter(_torch(images), params.factors, params.order, params.jitter)
    for index in range(BATCH):
        expected = _torch(images[index])
        if params.jitter[index]:
            expected = _jitter_reference(functional, expected, params.factors[index], params.order[index])
        np.testing.assert_allclose(ours[index].numpy(), expected.numpy(), atol=TOLERANCE)


def test_the_whole_simclr_chain_equals_torchvision() -> None:
    """The released train_transform, op by op, as torchvision v2 runs it on one float image at a time."""
    functional = _functional()
    images, params = _images(14), _params(15)
    ours = aug.normalize(aug.simclr(_torch(images), params, 32))
    for index in range(BATCH):
        image = functional.resized_crop(_torch(images[index]), *map(int, params.boxes[index]), [32, 32])
        if params.flip[index]:
            image = functional.horizontal_flip(image)
        if params.jitter[index]:
            image = _jitter_reference(functional, image, params.factors[index], params.order[index])
        if params.gray[index]:
            image = functional.rgb_to_grayscale(image, num_output_channels=3)
        if params.sigma[index] > 0:
            image = functional.gaussian_blur(image, [3, 3], [float(params.sigma[index])] * 2)
        image = functional.normalize(image, list(aug.IMAGE_MEAN), list(aug.IMAGE_STD))
        # normalized units: divide by the smallest std to compare at the pixel tolerance
        np.testing.assert_allclose(ours[index].numpy(), image.numpy(), atol=TOLERANCE / min(aug.IMAGE_STD))


def test_fixed_shape_jitter_equals_the_regrouped_one() -> None:
    """JAX's jitter (every step on the whole batch) and the eager one (regrouped) give the same images."""
    images, params = _images(16).astype(np.float64), _params(17)
    operations = [np.where(params.jitter, params.order[:, step], 4) for step in range(4)]
    fixed = aug._jitter_fixed_shapes(images, params.factors, operations)
    regrouped = aug._jitter_regrouped(images, params.factors, operations)
    np.testing.assert_allclose(fixed, regrouped, rtol=0, atol=1e-12)
