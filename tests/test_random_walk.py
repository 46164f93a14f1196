"""The sparse random walk against a dense implementation written here (the reference's way)."""

import numpy as np
import pytest
import torch
from numpy.polynomial import chebyshev

from wsis.algorithms.path_index import half_disc_directions, path_cells, path_index
from wsis.algorithms.random_walk import (pair_affinities, power_chebyshev_coefficients, random_walk,
                                         transition_operator)
from wsis.errors import ConfigError


def test_path_index_counts():
    for radius, n_dirs, n_groups in ((10, 152, 20), (5, 34, 9)):
        pi = path_index(radius)
        assert len(pi.directions) == n_dirs and len(pi.groups) == n_groups
        assert sum(len(g) for g in pi.groups) == n_dirs
        # every pair within the disc is covered exactly once (d or -d)
        disc = {(y, x) for y in range(-radius, radius + 1) for x in range(-radius, radius + 1)
                if 0 < y * y + x * x < radius * radius}
        half = set(map(tuple, pi.directions.tolist()))
        assert half | {(-y, -x) for y, x in half} == disc and not half & {(-y, -x) for y, x in half}


def test_path_cells_hand_worked():
    assert path_cells(0, 3).tolist() == [[0, 0], [0, 1], [0, 2], [0, 3]]
    # (2, 2): |2x - 2y| / sqrt(8) < 1 keeps the diagonal and its 4-neighbours, not the corners
    assert sorted(path_cells(2, 2).tolist()) == [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2], [2, 1], [2, 2]]
    # (3, 2): keep (y, x) in [0,3]x[0,2] with (2y - 3x)^2 < 13 (squared distance < 1):
    # drops (0,2): 36, (1,2): 16, (2,0): 16, (3,0): 36
    assert sorted(path_cells(3, 2).tolist()) == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 1], [2, 2], [3, 1], [3, 2]]
    assert len(half_disc_directions(2)) == 4   # (0,1), (1,-1), (1,0), (1,1)


def dense_affinity(boundary, radius):
    """Dense symmetric affinity with unit diagonal, straight from the definition."""
    h, w = boundary.shape
    n = h * w
    a = np.eye(n)
    for y in range(h):
        for x in range(w):
            for dy, dx in half_disc_directions(radius):
                ty, tx = y + dy, x + dx
                if 0 <= ty < h and 0 <= tx < w:
                    cells = path_cells(dy, dx)
                    m = max(boundary[y + cy, x + cx] for cy, cx in cells)
                    a[y * w + x, ty * w + tx] = a[ty * w + tx, y * w + x] = 1 - m
    return a


def dense_random_walk(seeds, boundary, radius, beta, exp_times):
    c, h, w = seeds.shape
    a = dense_affinity(boundary.astype(np.float64), radius) ** beta
    t = a / a.sum(0, keepdims=True)
    for _ in range(exp_times):
        t = t @ t
    x = (seeds * (1 - boundary)[None]).reshape(c, -1)
    return (x @ t).reshape(c, h, w)


def test_pair_affinities_match_dense_definition():
    rng = np.random.default_rng(0)
    b = rng.random((6, 7)).astype(np.float32)
    src, dst, aff = pair_affinities(b, 3)
    dense = dense_affinity(b.astype(np.float64), 3)
    sparse = np.eye(42)
    sparse[src, dst] = aff
    sparse[dst, src] = aff
    np.testing.assert_allclose(sparse, dense, atol=1e-6)
    assert len(src) == len(set(zip(src.tolist(), dst.tolist())))


@pytest.mark.parametrize("shape, radius, beta, exp_times", [
    ((9, 11), 5, 10.0, 8), ((12, 10), 3, 10.0, 6), ((7, 13), 5, 2.0, 8), ((5, 5), 5, 10.0, 4),
])
def test_sparse_walk_matches_dense(shape, radius, beta, exp_times):
    rng = np.random.default_rng(sum(shape) + radius)
    h, w = shape
    # a boundary map with a wall across the grid plus noise, and 3 seed channels
    b = 0.1 * rng.random((h, w))
    b[:, w // 2] = 0.9
    seeds = rng.random((3, h, w)) * (rng.random((3, h, w)) > 0.7)
    got = random_walk(seeds.astype(np.float32), b.astype(np.float32), radius, beta, exp_times)
    want = dense_random_walk(seeds, b, radius, beta, exp_times)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_constant_field_is_fixed_and_walls_block():
    """Columns of T sum to one, so x = 1 is a fixed point of x -> x T; a wall of B = 1 blocks."""
    h, w = 8, 12
    ones = random_walk(np.ones((1, h, w), np.float32), np.zeros((h, w), np.float32), 5, 10, 6)
    np.testing.assert_allclose(ones, 1.0, atol=1e-5)
    b = np.zeros((h, w), np.float32)
    b[:, 6] = 1.0
    seeds = np.zeros((1, h, w), np.float32)
    seeds[0, 4, 2] = 1.0
    out = random_walk(seeds, b, radius=5, beta=10, exp_times=6)
    assert out[0, :, 6:].max() < 1e-6 and out[0, :, :6].min() > 0


def test_no_seeds():
    for tolerance in (0.0, 1e-3):
        out = random_walk(np.zeros((0, 4, 4), np.float32), np.zeros((4, 4), np.float32), tolerance=tolerance)
        assert out.shape == (0, 4, 4)


def test_chebyshev_coefficients_of_a_power():
    # lambda^2 = (T0 + T2) / 2; lambda^4 = (3 T0 + 4 T2 + T4) / 8
    np.testing.assert_allclose(power_chebyshev_coefficients(2, 1e-12), [0.5, 0, 0.5])
    np.testing.assert_allclose(power_chebyshev_coefficients(4, 1e-12), [3 / 8, 0, 4 / 8, 0, 1 / 8])
    # dropping T4 (weight 1/8 <= 0.2) keeps (3 T0 + 4 T2) / 7, which is exact at lambda = 1
    np.testing.assert_allclose(power_chebyshev_coefficients(4, 0.2), [3 / 7, 0, 4 / 7])
    lam = np.linspace(-1, 1, 101)
    for t in (1, 7, 64, 256):
        np.testing.assert_allclose(chebyshev.chebval(lam, power_chebyshev_coefficients(t, 1e-300)), lam ** t,
                                   atol=1e-12)
    for tol in (1e-2, 1e-3, 1e-4):
        c = power_chebyshev_coefficients(256, tol)
        assert np.abs(chebyshev.chebval(lam, c) - lam ** 256).max() <= 2 * tol / (1 - tol)
    # about sqrt(2 t ln(2 / tol)) products instead of t
    assert len(power_chebyshev_coefficients(256, 1e-3)) - 1 == 52


def walk_cases():
    rng = np.random.default_rng(7)
    wall = np.full((9, 11), 0.05, np.float32)
    wall[:, 5] = 0.95
    yield "random", rng.random((3, 12, 15)).astype(np.float32), rng.random((12, 15)).astype(np.float32)
    yield "wall", (rng.random((2, 9, 11)) * (rng.random((2, 9, 11)) > 0.8)).astype(np.float32), wall
    yield "flat", np.ones((1, 10, 10), np.float32), np.zeros((10, 10), np.float32)
    yield "1x1", np.array([[[2.0]]], np.float32), np.array([[0.25]], np.float32)
    yield "1x7", rng.random((2, 1, 7)).astype(np.float32), rng.random((1, 7)).astype(np.float32)
    yield "under radius", rng.random((2, 3, 4)).astype(np.float32), rng.random((3, 4)).astype(np.float32)


@pytest.mark.parametrize("tolerance", [1e-2, 1e-3, 1e-5])
def test_fast_walk_within_its_tolerance_of_the_exact_one(tolerance):
    """With y = x D^1/2 and S symmetric, |p(S) y - S^t y| <= max |p - lambda^t| |y|, per channel."""
    bound = 2 * tolerance / (1 - tolerance)
    for name, seeds, boundary in walk_cases():
        exact = random_walk(seeds, boundary, 5, 10.0, 8)
        fast = random_walk(seeds, boundary, 5, 10.0, 8, tolerance=tolerance)
        root = np.sqrt(transition_operator(boundary, 5, 10.0)[1].numpy()).reshape(boundary.shape)
        x0 = seeds * (1 - boundary)
        for c in range(len(seeds)):
            err = np.linalg.norm(((fast[c] - exact[c]) * root).astype(np.float64))
            assert err <= bound * np.linalg.norm(x0[c] * root) + 1e-5 * np.abs(exact[c]).max() * root.max(), name


def test_fast_walk_keeps_constants_and_zero_channels():
    h, w = 8, 12
    ones = random_walk(np.ones((1, h, w), np.float32), np.zeros((h, w), np.float32), 5, 10, 8, tolerance=1e-2)
    np.testing.assert_allclose(ones, 1.0, atol=1e-5)
    rng = np.random.default_rng(1)
    seeds = rng.random((3, h, w)).astype(np.float32)
    seeds[1] = 0
    b = rng.random((h, w)).astype(np.float32)
    out = random_walk(seeds, b, 5, 10, 8, tolerance=1e-3)
    assert (out[1] == 0).all()
    np.testing.assert_allclose(out[[0, 2]], random_walk(seeds[[0, 2]], b, 5, 10, 8, tolerance=1e-3), rtol=1e-6)


def test_tolerance_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="random_walk.tolerance"):
        random_walk(np.ones((1, 4, 4), np.float32), np.zeros((4, 4), np.float32), tolerance=-0.1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_walk_on_device(device):
    rng = np.random.default_rng(2)
    seeds = rng.random((4, 20, 23)).astype(np.float32)
    b = rng.random((20, 23)).astype(np.float32)
    for tolerance in (0.0, 1e-3):
        on_device = random_walk(seeds, b, 5, 10, 6, tolerance, device=device)
        np.testing.assert_allclose(on_device, random_walk(seeds, b, 5, 10, 6, tolerance), rtol=1e-4, atol=1e-6)
        assert on_device.dtype == np.float32 and on_device.shape == seeds.shape
