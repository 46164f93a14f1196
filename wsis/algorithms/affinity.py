"""Boundary -> inter-pixel affinity along paths, shared by IRNet training and the random walk.

For a source pixel s and a direction d of the half disc (see ``path_index``), the affinity of
the pair (s, s + d) is 1 - max(B over the path cells of d, placed at s) (Ahn et al. 2019).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .path_index import path_index


def _window(shape, radius: int) -> tuple[int, int, int]:
    """(margin m, source rows hs, source columns ws): the sources are rows [0, H - m) and
    columns [m, W - m) of the (..., H, W) map, so that every target of the half disc is inside."""
    m = path_index(radius).margin
    h, w = shape[-2:]
    hs, ws = h - m, w - 2 * m
    if hs <= 0 or ws <= 0:
        raise ValueError(f"a {h}x{w} grid is too small for radius {radius}")
    return m, hs, ws


class _PathMax(torch.autograd.Function):
    """Max along every path, one path-length group at a time.

    The (m + 1) x (2m + 1) patches under every source are unfolded once; a group's cells are
    rows of that unfolded tensor, so the group is one row gather and one ``max`` over the
    path cells. Only the argmax (which cell won) is kept; the backward pass sends each output
    gradient to its winning cell with one ``scatter_add`` instead of one full-size slice
    gradient per path cell (~1,200 at radius 10)."""

    @staticmethod
    def forward(ctx, boundary: torch.Tensor, radius: int) -> torch.Tensor:
        m, hs, ws = _window(boundary.shape, radius)
        h, w = boundary.shape[-2:]
        lead = boundary.shape[:-2]
        flat = boundary.reshape(-1, 1, h, w)
        # (cells (m+1)(2m+1), B, hs*ws): a group's cells are then whole contiguous blocks
        patches = F.unfold(flat, (m + 1, 2 * m + 1)).transpose(0, 1).contiguous()
        values, winners = [], []
        for group in path_index(radius).groups:                       # (n_dirs, L, 2)
            n, length = group.shape[:2]
            rows = torch.from_numpy(group[..., 0] * (2 * m + 1) + group[..., 1] + m).reshape(-1)
            cells = patches.index_select(0, rows.to(boundary.device)).view(n, length, len(flat), hs * ws)
            best, which = cells.max(dim=1)                            # first maximal cell wins
            values.append(best)
            winners.append(which.to(torch.uint8))
        ctx.save_for_backward(*winners)
        ctx.radius, ctx.shape = radius, boundary.shape
        return torch.cat(values).transpose(0, 1).reshape(*lead, -1, hs, ws)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        radius, shape = ctx.radius, ctx.shape
        m, hs, ws = _window(shape, radius)
        h, w = shape[-2:]
        batch = math.prod(shape[:-2])
        grad_out = grad_out.reshape(batch, -1, hs * ws)
        device = grad_out.device
        sources = (torch.arange(hs, device=device)[:, None] * w
                   + torch.arange(m, m + ws, device=device)[None, :]).reshape(-1)
        grad_in = torch.zeros(batch, h * w, dtype=grad_out.dtype, device=device)
        start = 0
        for group, which in zip(path_index(radius).groups, ctx.saved_tensors):
            n = group.shape[0]
            shift = torch.from_numpy(group[..., 0] * w + group[..., 1]).to(device)   # (n, L)
            target = shift[torch.arange(n, device=device)[:, None, None], which.long()] + sources
            grad_in.scatter_add_(1, target.transpose(0, 1).reshape(batch, -1),
                                 grad_out[:, start:start + n].reshape(batch, -1))
            start += n
        return grad_in.view(shape), None


def path_max(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """Max of ``boundary`` (..., H, W) along every direction's path from every source in the
    window rows [0, H - m), columns [m, W - m), m = radius - 1 (so every target is inside).

    Returns (..., D, H - m, W - 2m) with directions in ``path_index(radius).directions`` order.
    Differentiable; a path's gradient goes to its first maximal cell in path-cell order.
    """
    if boundary.requires_grad and torch.is_grad_enabled():
        return _PathMax.apply(boundary, radius)
    # values only (the random walk): a running maximum over views, nothing gathered
    m, hs, ws = _window(boundary.shape, radius)
    pi = path_index(radius)
    out = boundary.new_empty(*boundary.shape[:-2], len(pi.directions), hs, ws)
    k = 0
    for group in pi.groups:
        for cells in group.tolist():
            acc = out[..., k, :, :]
            (py, px), rest = cells[0], cells[1:]
            acc.copy_(boundary[..., py:py + hs, m + px:m + px + ws])
            for py, px in rest:
                torch.maximum(acc, boundary[..., py:py + hs, m + px:m + px + ws], out=acc)
            k += 1
    return out


def shifted_targets(values: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The values at the sources and at each direction's targets, in ``path_max`` layout.

    ``values`` is (..., H, W); returns (source (..., H-m, W-2m), targets (..., D, H-m, W-2m))."""
    m, hs, ws = _window(values.shape, radius)
    src = values[..., :hs, m:m + ws]
    dst = torch.stack([values[..., dy:dy + hs, m + dx:m + dx + ws] for dy, dx in path_index(radius).directions.tolist()], dim=-3)
    return src, dst


def pad_for_all_sources(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """Pad (..., h, w) with B = 1 (left, right and bottom by radius - 1) so that ``path_max``
    covers every pixel of the original grid as a source; paths that leave the grid get
    affinity 0, as in the reference code."""
    m = radius - 1
    return F.pad(boundary, (m, m, 0, m), value=1.0)
