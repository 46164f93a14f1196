"""Boundary -> inter-pixel affinity along paths, shared by IRNet training and the random walk.

For a source pixel s and a direction d of the half disc (see ``path_index``), the affinity of
the pair (s, s + d) is 1 - max(B over the path cells of d, placed at s) (Ahn et al. 2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .path_index import path_index


def path_max(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """Max of ``boundary`` (..., H, W) along every direction's path from every source in the
    window rows [0, H - m), columns [m, W - m), m = radius - 1 (so every target is inside).

    Returns (..., D, H - m, W - 2m) with directions in ``path_index(radius).directions`` order.
    Differentiable; only argmax indices are kept for the backward pass.
    """
    pi = path_index(radius)
    m = pi.margin
    h, w = boundary.shape[-2:]
    hs, ws = h - m, w - 2 * m
    if hs <= 0 or ws <= 0:
        raise ValueError(f"a {h}x{w} grid is too small for radius {radius}")
    out = []
    for group in pi.groups:
        for cells in group:
            stacked = torch.stack([boundary[..., py:py + hs, m + px:m + px + ws] for py, px in cells.tolist()])
            out.append(stacked.max(dim=0).values)
    return torch.stack(out, dim=-3)


def shifted_targets(values: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The values at the sources and at each direction's targets, in ``path_max`` layout.

    ``values`` is (..., H, W); returns (source (..., H-m, W-2m), targets (..., D, H-m, W-2m))."""
    pi = path_index(radius)
    m = pi.margin
    h, w = values.shape[-2:]
    hs, ws = h - m, w - 2 * m
    src = values[..., :hs, m:m + ws]
    dst = torch.stack([values[..., dy:dy + hs, m + dx:m + dx + ws] for dy, dx in pi.directions.tolist()], dim=-3)
    return src, dst


def pad_for_all_sources(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """Pad (..., h, w) with B = 1 (left, right and bottom by radius - 1) so that ``path_max``
    covers every pixel of the original grid as a source; paths that leave the grid get
    affinity 0, as in the reference code."""
    m = radius - 1
    return F.pad(boundary, (m, m, 0, m), value=1.0)
