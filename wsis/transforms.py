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


# ImageNet's mean colour: zero after a ResNet's normalisation; the default padding
MEAN_RGB = tuple(round(255 * m) for m in IMAGENET_MEAN)


def random_crop(arrays: list[np.ndarray], fills: list, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The same random size x size window of each array (all of one height and width). Arrays
    smaller than the window are placed at a random offset in a canvas of their fill value (the
    ImageNet mean colour for images, which is zero after normalisation, as in the reference)."""
    h, w = arrays[0].shape[:2]
    ch, cw = min(h, size), min(w, size)
    y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))      # source
    oy, ox = int(rng.integers(size - ch + 1)), int(rng.integers(size - cw + 1))  # destination
    out = []
    for a, fill in zip(arrays, fills):
        canvas = np.empty((size, size) + a.shape[2:], a.dtype)
        canvas[...] = fill
        canvas[oy:oy + ch, ox:ox + cw] = a[y0:y0 + ch, x0:x0 + cw]
        out.append(canvas)
    return out


def cam_train_augment(image: np.ndarray, rng: np.random.Generator, resize_long: tuple[int, int],
                      crop_size: int, hflip: bool, fill=MEAN_RGB) -> np.ndarray:
    """Random rescale of the long side, horizontal flip, random crop (Ahn et al. 2019, step 1),
    padded with ``fill``, the colour the backbone normalises to zero (``Backbone.pad_colour``)."""
    image = rescale_long_side(image, int(rng.integers(resize_long[0], resize_long[1] + 1)))
    if hflip and rng.random() < 0.5:
        image = image[:, ::-1]
    return random_crop([image], [fill], crop_size, rng)[0]


def rescale(image: np.ndarray, factor: float, resample) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, resample))


def irn_train_augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                      scale_range: tuple[float, float], crop_size: int, hflip: bool,
                      ignore: int = 255, fill=MEAN_RGB) -> tuple[np.ndarray, np.ndarray]:
    """Random rescale (bilinear image, nearest label), flip and crop of an image and its
    relation labels; the label is padded with ``ignore``, the image with ``fill`` (Ahn et al.
    2019, step 4)."""
    factor = float(rng.uniform(*scale_range))
    image, label = rescale(image, factor, Image.BILINEAR), rescale(label, factor, Image.NEAREST)
    if hflip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    image, label = random_crop([image, label], [fill, ignore], crop_size, rng)
    return image, label


def letterbox(image: np.ndarray, size: int, fill=MEAN_RGB) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Scale the long side to ``size`` and pad (bottom, right) to size x size with ``fill``
    (the backbone's mean colour). Returns (canvas, scale, (height, width) of the image inside
    the canvas)."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[...] = fill
    canvas[:nh, :nw] = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    return canvas, scale, (nh, nw)
