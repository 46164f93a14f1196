"""Training-time augmentation on HxWx3 uint8 arrays (pure functions of an RNG)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .models.backbone import IMAGENET_MEAN


def rescale_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    s = long_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                fill=tuple(round(255 * m) for m in IMAGENET_MEAN)) -> np.ndarray:
    """A size x size window at a random place; smaller images are placed at a random offset in a
    canvas of the ImageNet mean colour (zero after normalisation, as in the reference code)."""
    h, w = image.shape[:2]
    out = np.empty((size, size) + image.shape[2:], image.dtype)
    out[...] = fill
    ch, cw = min(h, size), min(w, size)
    y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))      # source
    oy, ox = int(rng.integers(size - ch + 1)), int(rng.integers(size - cw + 1))  # destination
    out[oy:oy + ch, ox:ox + cw] = image[y0:y0 + ch, x0:x0 + cw]
    return out


def cam_train_augment(image: np.ndarray, rng: np.random.Generator, resize_long: tuple[int, int],
                      crop_size: int, hflip: bool) -> np.ndarray:
    """Random rescale of the long side, horizontal flip, random crop (Ahn et al. 2019, step 1)."""
    image = rescale_long_side(image, int(rng.integers(resize_long[0], resize_long[1] + 1)))
    if hflip and rng.random() < 0.5:
        image = image[:, ::-1]
    return random_crop(image, crop_size, rng)
