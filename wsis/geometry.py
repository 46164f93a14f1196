"""Plain polygon geometry, read by the dataset readers (``wsis.data``) and the review package
(``wsis.review``) alike: both sit above this module, so neither imports the other for it.
NumPy only. Coordinates are COCO's: a polygon is a flat [x0, y0, x1, y1, ...] list."""

from __future__ import annotations

import numpy as np


def shoelace(xy: np.ndarray) -> float:
    """The signed area of the (n, 2) polygon ``xy``: positive counter-clockwise on screen (y down)."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def check_polygon(ring) -> str | None:
    """Why ``ring`` is not a usable COCO polygon, or None."""
    if not isinstance(ring, (list, tuple)) or len(ring) < 6 or len(ring) % 2:
        return "a polygon needs at least 3 (x, y) points as a flat list"
    try:
        xy = np.asarray(ring, np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        return "polygon coordinates must be numbers"
    if not np.isfinite(xy).all():
        return "polygon coordinates must be finite"
    if abs(shoelace(xy)) == 0:
        return "polygon encloses no area"
    return None
