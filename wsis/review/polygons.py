"""Masks <-> polygons for labelling tools that edit polygons (CVAT, Label Studio).

A mask becomes one ring per connected part. A part's holes are kept inside its ring by a
"keyhole" cut: the ring runs from the outer boundary to the hole along a zero-width bridge,
around the hole the other way, and back. Filled with pycocotools (as COCO polygons are) the
bridge covers no area, so a ring with its holes rasterises back to the part with its holes,
and the union of an instance's rings to the whole instance. Coordinates are COCO's: x right,
y down, pixel (r, c) spans [c, c + 1] x [r, r + 1].
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..geometry import check_polygon, shoelace  # noqa: F401  (also this module's API)


def _ring(region: np.ndarray, tolerance: float) -> np.ndarray:
    """The boundary of a hole-free, 8-connected region as (n, 2) (x, y) vertices,
    counter-clockwise on screen (positive shoelace area with y down)."""
    # imported here: skimage.measure takes about a second to import (scipy.signal, scipy.stats),
    # and every reader of the review store (wsis report, merge_review) imports this module
    # through wsis.review.formats without drawing a polygon
    from skimage.measure import approximate_polygon, find_contours
    padded = np.pad(region.astype(np.float32), 1)
    contours = find_contours(padded, 0.5, fully_connected="high")
    ring = max(contours, key=len)              # one region: one outer contour
    if tolerance > 0:
        ring = approximate_polygon(ring, tolerance)
    xy = ring[:, ::-1] - 1 + 0.5               # (row, col) of the padded grid -> pixel-edge coords
    if np.array_equal(xy[0], xy[-1]):
        xy = xy[:-1]
    return xy if shoelace(xy) >= 0 else xy[::-1]


def _bridge(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Splice ``hole`` (opposite orientation) into ``outer`` at their closest vertices."""
    d = ((outer[:, None] - hole[None]) ** 2).sum(-1)
    i, j = np.unravel_index(int(d.argmin()), d.shape)
    hole_loop = np.concatenate([hole[j:], hole[:j + 1]])
    return np.concatenate([outer[:i + 1], hole_loop, outer[i:]])


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.25) -> list[list[float]]:
    """COCO polygons (flat [x0, y0, x1, y1, ...] lists) of a boolean mask: one per 8-connected
    part, holes bridged in. Parts too thin to enclose area are dropped. With ``tolerance``
    (pixels of vertex simplification) at most 0.25, pycocotools fills the polygons back to
    exactly the mask on the synthetic shapes (tested); 0.5 loses corners of small shapes."""
    rings = []
    parts, n = ndimage.label(mask, structure=np.ones((3, 3)))
    for k in range(1, n + 1):
        part = parts == k
        filled = ndimage.binary_fill_holes(part)
        outer = _ring(filled, tolerance)
        if len(outer) < 3:
            continue
        holes, n_holes = ndimage.label(filled & ~part)   # 4-connected holes of an 8-connected part
        for h in range(1, n_holes + 1):
            hole = _ring(holes == h, tolerance)
            if len(hole) >= 3:
                outer = _bridge(outer, hole[::-1])
        rings.append([round(float(v), 2) for v in outer.ravel()])
    return rings


def polygons_to_mask(rings: list[list[float]], height: int, width: int) -> np.ndarray:
    """The union of COCO polygons as a boolean (height, width) mask (pycocotools' fill)."""
    from pycocotools import mask as mask_utils
    if not rings:
        return np.zeros((height, width), bool)
    rles = mask_utils.frPyObjects([list(map(float, r)) for r in rings], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
