"""Image augmentations, batched, written once against the Python array API (NumPy, torch, JAX, CuPy).

Random parameters are drawn per image on the host, with NumPy, from a generator the caller seeds (training
seeds it from (seed, epoch, batch)), so a run draws the same views on every backend and after a resume.
The pixel work then runs on the images' device, the whole batch at once, each image with its own
parameters: every geometric operation is a per-image separable linear map (a (B, S, H) and a (B, S, W)
weight matrix, two batched matmuls), every colour operation an elementwise one.

`simclr` is the released code's `train_transform` (github.com/rjiang03/HCL, main/UCL/utils_2.py:100-107):

    RandomResizedCrop(S, scale=(0.08, 1), ratio=(3/4, 4/3))  bilinear, antialiased
    RandomHorizontalFlip(0.5)
    RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)    brightness, contrast, saturation, hue in random order
    RandomGrayscale(0.2)                                      0.2989 R + 0.587 G + 0.114 B
    GaussianBlur(kernel 3, sigma ~ U(0.1, 2)) with p 0.5      reflected borders (OpenCV's default)
    Normalize(mean, std)

Each operation equals torchvision.transforms.v2.functional's on float images given the same parameters
(tests/test_augmentations.py). Images are float (B, C, H, W) in [0, 1] until `normalize`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _array_api as aa

Array = Any

__all__ = [
    "AUGMENTATIONS",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "SimclrParams",
    "draw_simclr",
    "draw_shift",
    "resized_crop",
    "shift",
    "horizontal_flip",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "color_jitter",
    "to_grayscale",
    "gaussian_blur",
    "normalize",
    "simclr",
]

#: What `hcl train --augment` accepts besides "auto".
AUGMENTATIONS = ("none", "simclr", "shift", "noise")
#: The released code's Normalize (main/SCL/utils_2.py:107 and :112): every image data set is normalized with it.
IMAGE_MEAN = (0.4914, 0.4822, 0.4465)
IMAGE_STD = (0.2023, 0.1994, 0.2010)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's (and PIL's "L") luma weights
_IDENTITY_JITTER = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation factors; hue shift


class SimclrParams(NamedTuple):
    """Per-image parameters of one SimCLR view (NumPy, host): B rows each."""

    boxes: np.ndarray  # (B, 4) int64 crop top, left, height, width
    flip: np.ndarray  # (B,) bool
    jitter: np.ndarray  # (B,) bool: colour jitter applied
    factors: np.ndarray  # (B, 4) float64 brightness, contrast, saturation in [0.6, 1.4]; hue in [-0.1, 0.1]
    order: np.ndarray  # (B, 4) int64 a permutation of 0..3 (brightness, contrast, saturation, hue)
    gray: np.ndarray  # (B,) bool
    sigma: np.ndarray  # (B,) float64 blur sigma, 0 where the image is not blurred


# ----------------------------------------------------------------------------------------------------
# Parameters, drawn on the host.


def _crop_boxes(
    rng: np.random.Generator,
    count: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params for `count` images at once: up to 10 tries, then the centre."""
    area = height * width
    target = area * rng.uniform(scale[0], scale[1], size=(count, 10))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(count, 10)))
    crop_w = np.round(np.sqrt(target * aspect)).astype(np.int64)
    crop_h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = np.argmax(fits, axis=1)
    found = fits[np.arange(count), first]
    crop_w, crop_h = crop_w[np.arange(count), first], crop_h[np.arange(count), first]
    # Fallback: the whole image clipped to the ratio range, centred (torchvision's, after 10 misses).
    in_ratio = width / height
    fallback_w = width if in_ratio <= max(ratio) else int(round(height * max(ratio)))
    fallback_h = height if in_ratio >= min(ratio) else int(round(width / min(ratio)))
    crop_w, crop_h = np.where(found, crop_w, fallback_w), np.where(found, crop_h, fallback_h)
    top = np.where(found, rng.integers(0, height - crop_h + 1), (height - crop_h) // 2)
    left = np.where(found, rng.integers(0, width - crop_w + 1), (width - crop_w) // 2)
    return np.stack([top, left, crop_h, crop_w], axis=1).astype(np.int64)


def draw_simclr(
    rng: np.random.Generator,
    count: int,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    jitter_strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    jitter_probability: float = 0.8,
    gray_probability: float = 0.2,
    blur_probability: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
) -> SimclrParams:
    """The random parameters of `count` SimCLR views of (height, width) images, the released code's defaults."""
    boxes = _crop_boxes(rng, count, height, width, scale, ratio)
    flip = rng.random(count) < 0.5
    jitter = rng.random(count) < jitter_probability
    brightness, contrast, saturation, hue = jitter_strength
    low = np.array([1 - brightness, 1 - contrast, 1 - saturation, -hue])
    high = np.array([1 + brightness, 1 + contrast, 1 + saturation, hue])
    factors = low + (high - low) * rng.random((count, 4))
    order = np.argsort(rng.random((count, 4)), axis=1).astype(np.int64)
    gray = rng.random(count) < gray_probability
    blur = rng.random(count) < blur_probability
    sigma = np.where(blur, rng.uniform(blur_sigma[0], blur_sigma[1], size=count), 0.0)
    return SimclrParams(boxes, flip, jitter, factors, order, gray, sigma)


def draw_shift(rng: np.random.Generator, count: int, max_shift: int) -> np.ndarray:
    """(count, 2) int64 offsets (dy, dx) in [-max_shift, max_shift], drawn as `data.augment` draws them."""
    top = rng.integers(0, 2 * max_shift + 1, size=count)
    left = rng.integers(0, 2 * max_shift + 1, size=count)
    return np.stack([top, left], axis=1).astype(np.int64) - max_shift


# ----------------------------------------------------------------------------------------------------
# Geometry: per-image separable linear maps.


def _on_device(images: Array, values: np.ndarray, dtype: Any = None) -> Array:
    xp = aa.namespace(images)
    return xp.asarray(values, dtype=dtype, device=aa.device(images))


def _resize_weights(start: Array, length: Array, in_size: int, out_size: int, dtype: Any) -> Array:
    """(B, out, in): row i averages input positions of the window [start, start + length) with the antialiased
    bilinear (triangle) filter of torch's interpolate(antialias=True), normalized to sum 1."""
    xp = aa.namespace(start)
    dev = aa.device(start)
    start = xp.astype(start, dtype)[:, None, None]
    length = xp.astype(length, dtype)[:, None, None]
    scale = length / out_size
    widen = xp.where(scale > 1.0, scale, xp.ones_like(scale))  # the filter spans `scale` inputs when shrinking
    centre = start + (xp.arange(out_size, dtype=dtype, device=dev)[None, :, None] + 0.5) * scale
    position = xp.arange(in_size, dtype=dtype, device=dev)[None, None, :]
    distance = xp.abs(position + 0.5 - centre) / widen
    inside = (position >= start) & (position < start + length)
    weights = xp.where(inside & (distance < 1.0), 1.0 - distance, xp.zeros_like(distance))
    return weights / xp.sum(weights, axis=-1, keepdims=True)


def _separable(images: Array, rows: Array, cols: Array) -> Array:
    """rows (B, S, H) @ image (B, C, H, W) @ cols^T (B, W, T) for every image and channel."""
    xp = aa.namespace(images)
    return xp.matmul(xp.matmul(rows[:, None, ...], images), xp.permute_dims(cols, (0, 2, 1))[:, None, ...])


def resized_crop(images: Array, boxes: np.ndarray, size: int) -> Array:
    """Each image's box (top, left, height, width) resized to size x size (bilinear, antialiased when shrinking)."""
    boxes = _on_device(images, np.asarray(boxes), dtype=None)
    height, width = images.shape[-2], images.shape[-1]
    rows = _resize_weights(boxes[:, 0], boxes[:, 2], height, size, images.dtype)
    cols = _resize_weights(boxes[:, 1], boxes[:, 3], width, size, images.dtype)
    return _separable(images, rows, cols)


def _shift_weights(offsets: Array, size: int, dtype: Any) -> Array:
    """(B, size, size) 0/1: output position r takes input r + offset (zero where that falls outside)."""
    xp = aa.namespace(offsets)
    dev = aa.device(offsets)
    output = xp.arange(size, device=dev)[None, :, None]
    source = xp.arange(size, device=dev)[None, None, :]
    return xp.astype(source == output + offsets[:, None, None], dtype)


def shift(images: Array, offsets: np.ndarray) -> Array:
    """Each image moved by its (dy, dx) with zero fill: the pad-and-crop of `data.augment(kind="shift")`."""
    offsets = _on_device(images, np.asarray(offsets), dtype=None)
    xp = aa.namespace(images)
    offsets = xp.astype(offsets, xp.int64)
    rows = _shift_weights(offsets[:, 0], images.shape[-2], images.dtype)
    cols = _shift_weights(offsets[:, 1], images.shape[-1], images.dtype)
    return _separable(images, rows, cols)


def horizontal_flip(images: Array, flags: np.ndarray) -> Array:
    """Images mirrored left-right where flags (B,) is set."""
    xp = aa.namespace(images)
    mask = _on_device(images, np.asarray(flags, dtype=bool))[:, None, None, None]
    return xp.where(mask, xp.flip(images, axis=-1), images)


# ----------------------------------------------------------------------------------------------------
# Colour: torchvision.transforms.v2.functional's float formulas, one factor per image.


def _per_image(images: Array, values: Array | np.ndarray) -> Array:
    """(B,) values (host or device) as a (B, 1, 1, 1) array of the images' dtype on their device."""
    xp = aa.namespace(images)
    return xp.reshape(xp.asarray(values, dtype=images.dtype, device=aa.device(images)), (-1, 1, 1, 1))


def _blend(images: Array, other: Array, ratio: Array) -> Array:
    xp = aa.namespace(images)
    return xp.clip(ratio * images + (1.0 - ratio) * other, 0.0, 1.0)


def _luma(images: Array) -> Array:
    """(B, 1, H, W) grayscale 0.2989 R + 0.587 G + 0.114 B."""
    red, green, blue = (images[:, channel : channel + 1, ...] for channel in range(3))
    return red * _GRAY_WEIGHTS[0] + green * _GRAY_WEIGHTS[1] + blue * _GRAY_WEIGHTS[2]


def adjust_brightness(images: Array, factors: Array | np.ndarray) -> Array:
    """clip(f x, 0, 1) per image."""
    xp = aa.namespace(images)
    return xp.clip(_per_image(images, factors) * images, 0.0, 1.0)


def adjust_contrast(images: Array, factors: Array | np.ndarray) -> Array:
    """clip(f x + (1 - f) mean(luma(x)), 0, 1): blended with the image's mean gray level."""
    xp = aa.namespace(images)
    mean = xp.mean(_luma(images), axis=(1, 2, 3), keepdims=True)
    return _blend(images, mean, _per_image(images, factors))


def adjust_saturation(images: Array, factors: Array | np.ndarray) -> Array:
    """clip(f x + (1 - f) luma(x), 0, 1): blended with its own grayscale."""
    return _blend(images, _luma(images), _per_image(images, factors))


def _rgb_to_hsv(images: Array) -> tuple[Array, Array, Array]:
    xp = aa.namespace(images)
    red, green, blue = images[:, 0, ...], images[:, 1, ...], images[:, 2, ...]
    maxc = xp.max(images, axis=1)
    minc = xp.min(images, axis=1)
    equal = maxc == minc
    ones = xp.ones_like(maxc)
    spread = maxc - minc
    saturation = spread / xp.where(equal, ones, maxc)
    divisor = xp.where(equal, ones, spread)
    rc, gc, bc = (maxc - red) / divisor, (maxc - green) / divisor, (maxc - blue) / divisor
    hue = xp.where(
        maxc == red,
        bc - gc,
        xp.where(maxc == green, 2.0 + rc - bc, 4.0 + gc - rc),
    )
    hue = xp.where(equal, xp.zeros_like(hue), hue)
    return xp.remainder(hue / 6.0 + 1.0, 1.0), saturation, maxc


def _hsv_to_rgb(hue: Array, saturation: Array, value: Array) -> Array:
    xp = aa.namespace(hue)
    sector = xp.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = xp.remainder(sector, 6.0)
    p = xp.clip((1.0 - saturation) * value, 0.0, 1.0)
    q = xp.clip((1.0 - saturation * fraction) * value, 0.0, 1.0)
    t = xp.clip((saturation * fraction + 1.0 - saturation) * value, 0.0, 1.0)
    candidates = {"v": value, "p": p, "q": q, "t": t}
    # Sector 0..5 -> (R, G, B) from (v, p, q, t), as torchvision's select table.
    table = ("vtp", "qvp", "pvt", "pqv", "tpv", "vpq")

    def channel(position: int) -> Array:
        result = candidates[table[5][position]]
        for number in range(4, -1, -1):
            result = xp.where(sector == float(number), candidates[table[number][position]], result)
        return result

    return xp.stack([channel(0), channel(1), channel(2)], axis=1)


def adjust_hue(images: Array, shifts: Array | np.ndarray) -> Array:
    """Hue rotated by h (a fraction of the circle, |h| <= 0.5) per image, through HSV."""
    hue, saturation, value = _rgb_to_hsv(images)
    xp = aa.namespace(images)
    hue = xp.remainder(hue + _per_image(images, shifts)[:, 0, ...], 1.0)
    return _hsv_to_rgb(hue, saturation, value)


_JITTER_OPERATIONS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(images: Array, factors: np.ndarray, order: np.ndarray, applied: np.ndarray) -> Array:
    """ColorJitter per image: its four operations in its own order, where `applied`; others unchanged.

    Eager namespaces regroup the images at each step (one gather) so that each operation runs once on
    the images that take it then; JAX, which compiles per shape, keeps every shape fixed instead.
    """
    factors, order, applied = np.asarray(factors), np.asarray(order), np.asarray(applied, dtype=bool)
    operations = [np.where(applied, order[:, step], 4) for step in range(4)]  # 4: not jittered
    if aa.is_jax_array(images):
        return _jitter_fixed_shapes(images, factors, operations)
    return _jitter_regrouped(images, factors, operations)


def _jitter_regrouped(images: Array, factors: np.ndarray, operations: list[np.ndarray]) -> Array:
    xp = aa.namespace(images)
    current = np.arange(images.shape[0])  # original index of each row as the rows are regrouped
    for operation in operations:
        regroup = np.argsort(operation[current], kind="stable")
        images = xp.take(images, _on_device(images, regroup), axis=0)
        current = current[regroup]
        counts = np.bincount(operation[current], minlength=5)
        parts, start = [], 0
        for number, count in enumerate(counts):
            part = images[start : start + count, ...]
            if number < 4 and count:
                part = _JITTER_OPERATIONS[number](part, factors[current[start : start + count], number])
            parts.append(part)
            start += count
        images = xp.concat(parts, axis=0)
    return xp.take(images, _on_device(images, np.argsort(current)), axis=0)


def _jitter_fixed_shapes(images: Array, factors: np.ndarray, operations: list[np.ndarray]) -> Array:
    """Every step on the whole batch: brightness, contrast and saturation as one blend with a per-image
    partner (0, the mean gray level, the grayscale image) and ratio 1 for the others; hue where it is due."""
    xp = aa.namespace(images)
    rows = np.arange(images.shape[0])
    for operation in operations:
        factor = np.where(operation < 4, factors[rows, np.minimum(operation, 3)], 1.0)
        number = _per_image(images, operation)
        luma = _luma(images)
        mean = xp.mean(luma, axis=(1, 2, 3), keepdims=True) * xp.ones_like(luma)
        partner = xp.where(number == 0.0, xp.zeros_like(luma), xp.where(number == 1.0, mean, luma))
        blended = _blend(images, partner, _per_image(images, np.where(operation < 3, factor, 1.0)))
        rotated = adjust_hue(images, np.where(operation == 3, factor, 0.0))
        images = xp.where(number == 3.0, rotated, blended)
    return images


def to_grayscale(images: Array, flags: np.ndarray) -> Array:
    """Images replaced by their luma, on three channels, where flags (B,) is set."""
    xp = aa.namespace(images)
    mask = _on_device(images, np.asarray(flags, dtype=bool))[:, None, None, None]
    gray = xp.broadcast_to(_luma(images), images.shape)
    return xp.where(mask, gray, images)


def _reflect_neighbours(images: Array, axis: int) -> tuple[Array, Array]:
    """The previous and next pixel along axis (-1 or -2), mirrored at the border without repeating it."""
    xp = aa.namespace(images)
    size = images.shape[axis]

    def take(start: int, stop: int) -> Array:
        return images[..., start:stop] if axis == -1 else images[..., start:stop, :]

    previous = xp.concat([take(1, 2), take(0, size - 1)], axis=axis)
    following = xp.concat([take(1, size), take(size - 2, size - 1)], axis=axis)
    return previous, following


def gaussian_blur(images: Array, sigmas: np.ndarray) -> Array:
    """3x3 Gaussian blur with each image's sigma (0: unchanged), reflected borders: separable, two passes."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    safe = np.where(sigmas > 0, sigmas, 1.0)
    side = np.where(sigmas > 0, np.exp(-0.5 / safe**2), 0.0)  # exp(-x^2 / (2 sigma^2)) at x = +-1
    outer = _per_image(images, side / (1.0 + 2.0 * side))
    centre = _per_image(images, 1.0 / (1.0 + 2.0 * side))
    for axis in (-1, -2):
        previous, following = _reflect_neighbours(images, axis)
        images = centre * images + outer * (previous + following)
    return images


def normalize(images: Array, mean: tuple[float, ...] = IMAGE_MEAN, std: tuple[float, ...] = IMAGE_STD) -> Array:
    """(x - mean_c) / std_c per channel."""
    shape = (1, len(mean), 1, 1)
    xp = aa.namespace(images)
    mean_array = xp.reshape(_on_device(images, np.asarray(mean), images.dtype), shape)
    std_array = xp.reshape(_on_device(images, np.asarray(std), images.dtype), shape)
    return (images - mean_array) / std_array


def simclr(images: Array, params: SimclrParams, size: int) -> Array:
    """The released train_transform without its Normalize: crop, flip, jitter, grayscale, blur (floats in [0, 1])."""
    images = resized_crop(images, params.boxes, size)
    images = horizontal_flip(images, params.flip)
    images = color_jitter(images, params.factors, params.order, params.jitter)
    images = to_grayscale(images, params.gray)
    return gaussian_blur(images, params.sigma)
