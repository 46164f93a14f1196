"""path_max (one gather and max per path-length group) against the direction-by-direction
definition it replaced, forward and gradient."""

import pytest
import torch

from wsis.algorithms.affinity import path_max
from wsis.algorithms.path_index import path_index


def reference_path_max(boundary, radius):
    """One direction at a time: stack the path cells' shifted windows, max over them."""
    pi = path_index(radius)
    m = pi.margin
    h, w = boundary.shape[-2:]
    hs, ws = h - m, w - 2 * m
    out = []
    for group in pi.groups:
        for cells in group:
            stacked = torch.stack([boundary[..., py:py + hs, m + px:m + px + ws] for py, px in cells.tolist()])
            out.append(stacked.max(dim=0).values)
    return torch.stack(out, dim=-3)


@pytest.mark.parametrize("radius, shape", [(2, (6, 7)), (3, (2, 9, 11)), (5, (2, 3, 14, 17)), (10, (1, 25, 30))])
def test_path_max_equals_reference_forward_and_gradient(radius, shape):
    torch.manual_seed(radius)
    b = torch.rand(shape, dtype=torch.float64)
    b[..., 3:5, :] = 1.0                       # saturated rows: ties inside paths
    b[..., :, 2] = 0.5
    got_in, want_in = b.clone().requires_grad_(), b.clone().requires_grad_()
    got, want = path_max(got_in, radius), reference_path_max(want_in, radius)
    assert got.shape == want.shape and torch.equal(got, want)
    # integer upstream gradients: every sum is exact, whatever the order of accumulation
    upstream = torch.randint(-4, 5, want.shape).double()
    got.backward(upstream)
    want.backward(upstream)
    assert torch.equal(got_in.grad, want_in.grad)
    with torch.no_grad():                      # the values-only path of the random walk
        assert torch.equal(path_max(b, radius), want.detach())


def test_path_max_gradient_goes_to_the_first_maximal_cell():
    # radius 2, direction (0, 1): cells (0, 0), (0, 1) from the source; equal values -> the
    # first cell (the source itself) wins
    b = torch.full((2, 3), 0.7, dtype=torch.float64, requires_grad=True)
    out = path_max(b, 2)                       # window: the source (0, 1) only
    dirs = path_index(2).directions.tolist()
    k = dirs.index([0, 1])
    out[k].sum().backward()
    assert b.grad.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


def test_path_max_rejects_a_grid_too_small():
    with pytest.raises(ValueError, match="too small"):
        path_max(torch.zeros(3, 4), 5)
