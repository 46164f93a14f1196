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


def _running_max(boundary: torch.Tensor, radius: int, winners: torch.Tensor | None = None) -> torch.Tensor:
    """(..., D, hs, ws) path maxima as a running maximum over shifted views of ``boundary``,
    one direction at a time: nothing is gathered, and a direction's running maximum (a few
    hundred kB at training size) stays in cache. If ``winners`` (uint8, same shape) is given,
    it receives the index of the first maximal cell of each path (the order of ``max(dim)``)."""
    m, hs, ws = _window(boundary.shape, radius)
    pi = path_index(radius)
    out = boundary.new_empty(*boundary.shape[:-2], len(pi.directions), hs, ws)
    # winner bookkeeping in contiguous scratch, without masked_fill_ (40x slower on uint8 here):
    # cell indices only grow, so the last cell that beat the running maximum is the largest
    # index * (cell > best) over the cells
    win = mask = scratch = None
    if winners is not None:
        win = torch.empty(out.shape[:-3] + out.shape[-2:], dtype=torch.uint8, device=out.device)
        mask = torch.empty(win.shape, dtype=torch.bool, device=out.device)
        scratch = torch.empty_like(win)
    k = 0
    for group in pi.groups:
        for cells in group.tolist():
            best = out[..., k, :, :]
            best.copy_(boundary[..., cells[0][0]:cells[0][0] + hs, m + cells[0][1]:m + cells[0][1] + ws])
            if win is not None:
                win.zero_()
            for index, (py, px) in enumerate(cells[1:], start=1):
                cell = boundary[..., py:py + hs, m + px:m + px + ws]
                if win is not None:
                    torch.gt(cell, best, out=mask)                 # strictly: the first maximum wins
                    torch.maximum(win, torch.mul(mask.view(torch.uint8), index, out=scratch), out=win)
                torch.maximum(best, cell, out=best)
            if win is not None:
                winners[..., k, :, :] = win
            k += 1
    return out


class _PathMax(torch.autograd.Function):
    """``_running_max`` keeping only which cell won (uint8); the backward pass sends each
    path's gradient to its winning cell, one ``scatter_add`` per direction, instead of one
    full-size slice gradient per path cell (~1,200 at radius 10) and a full-size max mask."""

    @staticmethod
    def forward(ctx, boundary: torch.Tensor, radius: int) -> torch.Tensor:
        m, hs, ws = _window(boundary.shape, radius)
        winners = torch.empty(*boundary.shape[:-2], len(path_index(radius).directions), hs, ws,
                              dtype=torch.uint8, device=boundary.device)
        out = _running_max(boundary, radius, winners)
        ctx.save_for_backward(winners)
        ctx.radius, ctx.shape = radius, boundary.shape
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (winners,) = ctx.saved_tensors
        radius, shape = ctx.radius, ctx.shape
        m, hs, ws = _window(shape, radius)
        h, w = shape[-2:]
        batch = math.prod(shape[:-2])
        device = grad_out.device
        sources = (torch.arange(hs, device=device)[:, None] * w
                   + torch.arange(m, m + ws, device=device)[None, :]).reshape(1, -1)
        grad_in = torch.zeros(batch, h * w, dtype=grad_out.dtype, device=device)
        grad_out = grad_out.reshape(batch, -1, hs * ws)
        winners = winners.reshape(batch, -1, hs * ws)
        k = 0
        for group in path_index(radius).groups:
            for cells in group:
                shift = torch.from_numpy(cells[:, 0] * w + cells[:, 1]).to(device)
                target = shift[winners[:, k].long()] + sources
                grad_in.scatter_add_(1, target, grad_out[:, k])
                k += 1
        return grad_in.view(shape), None


def path_max(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """Max of ``boundary`` (..., H, W) along every direction's path from every source in the
    window rows [0, H - m), columns [m, W - m), m = radius - 1 (so every target is inside).

    Returns (..., D, H - m, W - 2m) with directions in ``path_index(radius).directions`` order.
    Differentiable; a path's gradient goes to its first maximal cell in path-cell order.
    """
    if boundary.requires_grad and torch.is_grad_enabled():
        return _PathMax.apply(boundary, radius)
    return _running_max(boundary, radius)


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
