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
                      crop_size: int, hflip: bool, fill=MEAN_RGB, maps: np.ndarray | None = None):
    """Random rescale of the long side, horizontal flip, random crop (Ahn et al. 2019, step 1),
    padded with ``fill``, the colour the backbone normalises to zero (``Backbone.pad_colour``).

    ``maps`` (H, W, K) uint8, e.g. a reviewed image's class masks, get the same rescale
    (nearest), flip and crop (padded with 0), and the result is (image, maps); the random
    draws are the same with or without them."""
    image = rescale_long_side(image, int(rng.integers(resize_long[0], resize_long[1] + 1)))
    flip = hflip and rng.random() < 0.5
    if flip:
        image = image[:, ::-1]
    if maps is None:
        return random_crop([image], [fill], crop_size, rng)[0]
    size = image.shape[1], image.shape[0]
    maps = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(maps[..., k])).resize(size, Image.NEAREST))
                     for k in range(maps.shape[2])], axis=-1)
    if flip:
        maps = maps[:, ::-1]
    return tuple(random_crop([image, maps], [fill, 0], crop_size, rng))


def rescale(image: np.ndarray, factor: float, resample) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, resample))


def irn_train_augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                      scale_range: tuple[float, float], crop_size: int, hflip: bool,
                      ignore: int = 255, fill=MEAN_RGB, displacements: np.ndarray | None = None):
    """Random rescale (bilinear image, nearest label), flip and crop of an image and its
    relation labels; the label is padded with ``ignore``, the image with ``fill`` (Ahn et al.
    2019, step 4).

    ``displacements`` (H, W, 2) float32, (dy, dx) in pixels to each pixel's instance centroid
    (NaN: none), follow the same geometry: nearest rescale with their values scaled by the
    image's, dx negated by the flip, a crop moves pixel and centroid alike; padding is NaN. The
    result is then (image, label, displacements); the random draws are the same."""
    factor = float(rng.uniform(*scale_range))
    h, w = image.shape[:2]
    image, label = rescale(image, factor, Image.BILINEAR), rescale(label, factor, Image.NEAREST)
    flip = hflip and rng.random() < 0.5
    if flip:
        image, label = image[:, ::-1], label[:, ::-1]
    if displacements is None:
        return tuple(random_crop([image, label], [fill, ignore], crop_size, rng))
    size = image.shape[1], image.shape[0]
    scale = (image.shape[0] / h, image.shape[1] / w)
    displacements = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(displacements[..., k], np.float32))
                                         .resize(size, Image.NEAREST)) * scale[k] for k in range(2)], axis=-1)
    if flip:
        displacements = displacements[:, ::-1] * np.array([1.0, -1.0], np.float32)
    return tuple(random_crop([image, label, displacements], [fill, ignore, np.nan], crop_size, rng))


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
