"""Thumbnails of one image's pipeline outputs for the report's gallery row.

Each is written at most ``size`` pixels on its long side: JPEG for photos and overlays, PNG
for label maps (exact colours)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wsis.io import voc_palette, write_bytes
from wsis.predict import PALETTE

_VOC = np.array(voc_palette(), np.uint8).reshape(256, 3)


def _thumb(rgb: np.ndarray, size: int, nearest: bool = False) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(rgb, np.uint8))
    img.thumbnail((size, size), Image.NEAREST if nearest else Image.BILINEAR)
    return img


def save_thumb(rgb: np.ndarray, path: Path, size: int, nearest: bool = False) -> tuple[int, int]:
    """Write a thumbnail; returns its (width, height) for the page's img attributes."""
    img = _thumb(rgb, size, nearest)
    buf = io.BytesIO()
    img.save(buf, format="PNG" if path.suffix == ".png" else "JPEG", quality=85)
    write_bytes(path, buf.getvalue())
    return img.size


def heatmap(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """A CAM (H, W) in [0, 1] over the darkened photo, with matplotlib's jet colour map."""
    from matplotlib import colormaps
    colour = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
    return (0.5 * image + 0.5 * colour).astype(np.uint8)


def label_colours(label: np.ndarray) -> np.ndarray:
    """A label map (0 background, c + 1 class c, 255 unsure) in the VOC palette."""
    return _VOC[label]


def grey(values: np.ndarray) -> np.ndarray:
    v = (np.clip(values, 0, 1) * 255).astype(np.uint8)
    return np.repeat(v[..., None], 3, axis=2)


def instance_overlay(image: np.ndarray, masks, labels, texts, outline: bool = True) -> np.ndarray:
    """Each instance in its own colour (by instance, not class), outlined, with its text."""
    out = image.astype(np.float32)
    for k, m in enumerate(masks):
        out[m] = 0.45 * out[m] + 0.55 * PALETTE[k % len(PALETTE)]
    if outline:
        from scipy import ndimage
        for k, m in enumerate(masks):
            edge = m & ~ndimage.binary_erosion(m)
            out[edge] = PALETTE[k % len(PALETTE)]
    img = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for m, text in zip(masks, texts):
        ys, xs = np.nonzero(m)
        if len(ys):
            x, y = int(xs.min()), max(0, int(ys.min()) - 10)
            draw.rectangle([x, y, x + 6 * len(text), y + 10], fill=(0, 0, 0))
            draw.text((x + 1, y - 1), text, fill=(255, 255, 255))
    return np.array(img)
