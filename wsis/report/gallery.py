"""Thumbnails of one image's pipeline outputs for the report's gallery row.

Each is written at most ``size`` pixels on its long side: JPEG for photos and overlays, PNG
for label maps (exact colours)."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsis.errors import DataError
from wsis.io import open_image, voc_palette, write_bytes
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


LABEL_COLOUR = (25, 25, 25)      # label boxes: white text on a filled box, legible on any photo
DOUBTFUL_COLOUR = (176, 32, 32)  # the box of a doubtful or marked instance's label
MARK_COLOURS = ((0, 0, 0), (255, 255, 255))   # the marked instance's outline: white on its edge, black
                                              # inside that: seen on light and dark photos and palette colours


@lru_cache(maxsize=None)
def _font(pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(pixels)    # Pillow's own font: nothing read from the system


def label_font_size(width: int, height: int) -> int:
    """Label text height for an image of this size: a fixed share of its height (the report
    shows its pictures at a common height, so text is the same size on every picture), less
    on a narrow image so a label fits across it; at least 9 pixels."""
    return max(9, round(min(height / 11, width / 7)))


def _overlap(a, b) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def place_labels(sizes, boxes, width: int, height: int) -> list[tuple[int, int]]:
    """Top-left corners of label boxes ``sizes`` [(w, h)], one per object bounding box ``boxes``
    [(x0, y0, x1, y1), inclusive], in the order given (the first gets the best place).

    Every label lies inside the image (a label wider or taller than the image starts at its
    left or top edge). Each goes just above its object, else just below, else inside its top
    or bottom edge, left- or right-aligned with it, else in another row of the same column:
    the first of these places that overlaps the labels placed before it least, then its own
    object least, then the other objects least."""
    objects = [(x0, y0, x1 + 1, y1 + 1) for x0, y0, x1, y1 in boxes]
    placed: list[tuple[int, int, int, int]] = []
    corners = []
    for k, ((w, h), (x0, y0, x1, y1)) in enumerate(zip(sizes, boxes)):
        def clamp(x, y):
            return min(max(x, 0), max(width - w, 0)), min(max(y, 0), max(height - h, 0))
        candidates = [clamp(x, y) for y in (y0 - h, y1 + 1, y0, y1 + 1 - h) for x in (x0, x1 + 1 - w)]
        candidates += [clamp(x0, y) for y in range(0, max(height - h, 0) + 1, max(h, 1))]

        def cost(corner):
            box = (corner[0], corner[1], corner[0] + w, corner[1] + h)
            return (sum(_overlap(box, other) for other in placed), _overlap(box, objects[k]),
                    sum(_overlap(box, o) for j, o in enumerate(objects) if j != k))
        x, y = min(candidates, key=cost)     # min keeps the first of equals: the preferred place
        placed.append((x, y, x + w, y + h))
        corners.append((x, y))
    return corners


def _edges(mask: np.ndarray, width: int = 1) -> np.ndarray:
    from scipy import ndimage
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def overlay_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of ``instance_overlay(..., size=size)`` of a ``width`` x ``height``
    image: its long side scaled to ``size``."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def intact_picture(path: Path, size: tuple[int, int] | None) -> bool:
    """Whether ``path`` decodes whole as an image of ``size`` (width, height; None: any): a
    picture kept from an earlier report is trusted only then."""
    try:
        with open_image(path) as img:   # as every image wsis reads: a declared decompression bomb is refused
            if size is not None and img.size != tuple(size):
                return False
            img.load()      # a truncated file fails here, not at the header
    except (OSError, SyntaxError, ValueError, DataError):   # FileNotFoundError and PIL's errors included
        return False
    return True


def instance_overlay(image: np.ndarray, masks, labels, texts, outline: bool = True, *, size: int | None = None,
                     doubtful=None, marked: int | None = None) -> np.ndarray:
    """Each instance in its own colour (by instance, not class; ``labels`` are not used for
    it), outlined, with its text in a label box inside the image.

    ``size``: the result's long side in pixels (the photo scaled up or down first, so outlines
    and text are drawn at the size they are seen); ``doubtful``: per instance, whether its
    label box is red; ``marked``: the index of the instance to outline boldly (the one to
    review), whose label also goes first."""
    masks = np.asarray(masks, bool).reshape(-1, *image.shape[:2])
    img = Image.fromarray(np.ascontiguousarray(image, np.uint8))
    if size is not None and max(img.size) != size:
        out_size = overlay_size(img.width, img.height, size)
        img = img.resize(out_size, Image.BILINEAR)
        masks = np.array([np.asarray(Image.fromarray(m).resize(out_size, Image.NEAREST)) for m in masks],
                         bool).reshape(-1, out_size[1], out_size[0])
    out = np.asarray(img, np.float32).copy()
    for k, m in enumerate(masks):
        out[m] = 0.45 * out[m] + 0.55 * PALETTE[k % len(PALETTE)]
    if outline:
        for k, m in enumerate(masks):
            out[_edges(m)] = PALETTE[k % len(PALETTE)]
    if marked is not None and masks[marked].any():
        band = max(1, round(max(img.size) / 100))
        outer, inner = _edges(masks[marked], 2 * band), _edges(masks[marked], band)
        out[outer], out[inner] = MARK_COLOURS
    img = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = _font(label_font_size(*img.size))
    pad = max(1, font.size // 6)
    doubtful = [False] * len(masks) if doubtful is None else list(doubtful)
    order = sorted((k for k in range(len(masks)) if masks[k].any()),
                   key=lambda k: (k != marked, not doubtful[k]))
    sizes, boxes = [], []
    for k in order:
        left, top, right, bottom = draw.textbbox((0, 0), texts[k], font=font)
        sizes.append((right - left + 2 * pad, bottom - top + 2 * pad))
        ys, xs = np.nonzero(masks[k])
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
    for k, (w, h), (x, y) in zip(order, sizes, place_labels(sizes, boxes, *img.size)):
        fill = DOUBTFUL_COLOUR if doubtful[k] or k == marked else LABEL_COLOUR
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=fill)
        left, top, _, _ = draw.textbbox((0, 0), texts[k], font=font)
        draw.text((x + pad - left, y + pad - top), texts[k], fill=(255, 255, 255), font=font)
    return np.array(img)
