"""Pixel pairs within a radius and the grid cells on the path between them (IRNet).

Ahn et al. (CVPR 2019) relate each pixel to every pixel less than ``radius`` cells away on the
stride-4 grid. Pairs are enumerated over a half disc of directions (the other half is the same
pairs seen from the other end); the path of a direction is every grid cell whose distance to
the segment is below 1. Directions are grouped by path length so that the maximum of the
boundary map along each path can be computed for a whole group at once.
Radius 10 gives 152 directions in 20 path-length groups; radius 5 gives 34 in 9.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


def half_disc_directions(radius: int) -> list[tuple[int, int]]:
    """(dy, dx) with 0 < |d| < radius and (dy > 0, or dy == 0 and dx > 0)."""
    dirs = [(0, dx) for dx in range(1, radius)]
    dirs += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius)
             if dy * dy + dx * dx < radius * radius]
    return dirs


def path_cells(dy: int, dx: int) -> np.ndarray:
    """Cells (y, x) in the bounding box of (0, 0)-(dy, dx) within distance < 1 of the segment."""
    length_sq = dy * dy + dx * dx
    cells = [(y, x)
             for y in range(min(0, dy), max(0, dy) + 1)
             for x in range(min(0, dx), max(0, dx) + 1)
             if (dy * x - dx * y) ** 2 < length_sq]
    return np.array(cells, np.int64)


@dataclass(frozen=True)
class PathIndex:
    radius: int
    directions: np.ndarray          # (D, 2) (dy, dx), ordered by group
    groups: tuple[np.ndarray, ...]  # per path length L: (n_dirs, L, 2) cell offsets
    group_of: np.ndarray            # (D,) group of each direction

    @property
    def margin(self) -> int:
        """How far a pair can reach left, right or down: radius - 1."""
        return self.radius - 1


@lru_cache(maxsize=None)
def path_index(radius: int) -> PathIndex:
    by_length: dict[int, list[np.ndarray]] = {}
    dirs_by_length: dict[int, list[tuple[int, int]]] = {}
    for d in half_disc_directions(radius):
        cells = path_cells(*d)
        by_length.setdefault(len(cells), []).append(cells)
        dirs_by_length.setdefault(len(cells), []).append(d)
    lengths = sorted(by_length)
    groups = tuple(np.stack(by_length[n]) for n in lengths)
    directions = np.array([d for n in lengths for d in dirs_by_length[n]], np.int64)
    group_of = np.concatenate([np.full(len(by_length[n]), i) for i, n in enumerate(lengths)])
    return PathIndex(radius, directions, groups, group_of)
