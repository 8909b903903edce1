"""The image input of `hcl train`: pixels kept on the training device as uint8, views built there in a batch.

The training and test images are placed once, as bytes (a quarter of float32), on the backend's device.
For a batch, the rows are gathered there, converted to floats in [0, 1], augmented with parameters drawn
on the host from (seed, epoch, batch) (`augmentations.py`), and normalized with the released code's mean
and std. Evaluation takes the same path without augmentation. Nothing here imports a framework: the
backend adapter places arrays, the array API does the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _array_api as aa
from . import augmentations as aug
from .data import Dataset

__all__ = ["AUGMENT_CHOICES", "NOISE_STD", "MAX_SHIFT", "ImageInputs", "resolve_augment", "check_augment"]

Array = Any

#: `hcl train --augment`: "auto" picks what the data set's released run used (see `resolve_augment`).
AUGMENT_CHOICES = ("auto", *aug.AUGMENTATIONS)
NOISE_STD = 0.1  # "noise": N(0, 0.1^2) on pixels in [0, 1] (or on the features of vector data)
MAX_SHIFT = 4  # "shift": CIFAR's pad-4 random crop
_RELEASED_SIMCLR = ("cifar10", "stl10")  # the released UCL passes train_transform for these (utils_2.py:117, :125)
_UNSUPERVISED = ("ucl", "hucl")


def resolve_augment(augment: str, data: str, loss: str, views: int, images: bool) -> str:
    """The augmentation a run applies: "auto" is the released run's for one view, a random shift (images) or
    noise (vectors) for two or more views, as before; any other choice is taken as given.

    The released runs: CIFAR-100 trains on the plain normalized image (test_transform) in SCL and UCL; UCL on
    CIFAR-10 and STL-10 applies train_transform (simclr) to its one view; SCL never augments.
    """
    if augment != "auto":
        return augment
    if views >= 2:
        return "shift" if images else "noise"
    if data in _RELEASED_SIMCLR and loss in _UNSUPERVISED:
        return "simclr"
    return "none"


def check_augment(augment: str, views: int, input_shape: tuple[int, ...], images: bool) -> None:
    """ValueError (one line) when the resolved augmentation cannot apply to this data or number of views."""
    if augment not in aug.AUGMENTATIONS:
        raise ValueError(f"augment={augment!r} is not one of {', '.join(AUGMENT_CHOICES)}")
    if augment == "none" and views >= 2:
        raise ValueError(f"--views {views} with --augment none makes identical views; choose simclr, shift or noise")
    if augment in ("simclr", "shift") and not images:
        raise ValueError(f"--augment {augment} needs image data (N, 3, H, W); these samples have shape {input_shape}")
    if augment == "simclr" and input_shape[-1] != input_shape[-2]:
        raise ValueError(f"--augment simclr crops square views; these images are {input_shape[-2]}x{input_shape[-1]}")


class ImageInputs:
    """A data set's images on the training device (uint8), and the batch views and evaluation inputs made there."""

    def __init__(self, backend: Any, dataset: Dataset, *, augment: str, dtype: str, device: str | None, seed: int):
        self.backend, self.device, self.seed, self.augment = backend, device, seed, augment
        self.train = backend.from_numpy(dataset.x_train, None, device)
        self.test = backend.from_numpy(dataset.x_test, None, device)
        xp = aa.namespace(self.train)
        self.xp, self.float_dtype = xp, getattr(xp, dtype)

    def _pixels(self, store: Array, rows: np.ndarray) -> Array:
        """Rows of a store as floats in [0, 1] (gathered on the device, then converted)."""
        index = self.backend.from_numpy(np.asarray(rows, dtype=np.int64), None, self.device)
        chosen = self.xp.take(store, index, axis=0)
        return self.xp.astype(chosen, self.float_dtype) / 255.0

    def _augmented(self, pixels: Array, rng: np.random.Generator) -> Array:
        count, height, width = pixels.shape[0], pixels.shape[-2], pixels.shape[-1]
        if self.augment == "simclr":
            return aug.simclr(pixels, aug.draw_simclr(rng, count, height, width), height)
        if self.augment == "shift":
            return aug.shift(pixels, aug.draw_shift(rng, count, MAX_SHIFT))
        if self.augment == "noise":
            noise = self.backend.from_numpy(NOISE_STD * rng.standard_normal(pixels.shape), None, self.device)
            return pixels + self.xp.astype(noise, self.float_dtype)
        return pixels

    def views(self, indices: np.ndarray, views: int, epoch: int, batch_number: int) -> Array:
        """Normalized views of training rows `indices`: (B, C, H, W) for one view, (B, V, C, H, W) for V.

        The random parameters of every view come from np.random.default_rng([seed, epoch, batch, 1]), view 0
        first, as `data.augment` draws them.
        """
        pixels = self._pixels(self.train, indices)
        rng = np.random.default_rng([self.seed, epoch, batch_number, 1])
        made = [aug.normalize(self._augmented(pixels, rng)) for _ in range(views)]
        return made[0] if views == 1 else self.xp.stack(made, axis=1)

    def plain(self, split: str, rows: np.ndarray) -> Array:
        """Normalized, unaugmented images of rows of the "train" or "test" split (what evaluation embeds)."""
        return aug.normalize(self._pixels(self.train if split == "train" else self.test, rows))
