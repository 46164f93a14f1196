"""Random walk propagation of seeds over boundary-aware affinities, without an N x N matrix.

Ahn et al. (CVPR 2019), step 5: between every pair of stride-4 pixels less than ``radius``
apart, the affinity is a = 1 - max(B along the path) for the boundary map B; A = a^beta with
A symmetric and A_ii = 1; the transition matrix T = A D^-1 is A with its columns normalised
(D = diag of the column sums); seeds x (one row per channel, times 1 - B) are propagated as
x T^t with t = 2^exp_times.

The reference squares a dense N x N T ``exp_times`` times (N = 11,750 for a 500x375 image:
527 MiB per matrix, ~26 TFLOP). Here A is a sparse CSR matrix (~70 non-zeros per row) and:

* exact (``tolerance = 0``): t products, x T = ((A x^T) / d)^T by the symmetry of A;
* fast (``tolerance > 0``): x T^t = (x D^1/2) S^t D^-1/2 with S = D^-1/2 A D^-1/2 symmetric,
  eigenvalues in [-1, 1]. On [-1, 1], lambda^t = 2^-t sum_m C(t, m) T_|t-2m|(lambda) (T_j the
  Chebyshev polynomials): binomial weights, concentrated within a few sqrt(t) of degree 0.
  Dropping the degrees whose total weight is under ``tolerance`` leaves a degree k of about
  sqrt(2 t ln(2 / tolerance)) (52 products instead of 256 at t = 256, tolerance 1e-3), and
  since |T_j| <= 1 there, it moves every eigenvalue's factor by at most about 2 * tolerance
  (2 tol / (1 - tol) once the kept weights are rescaled to sum to 1).

The product itself stays a CSR sparse-dense product: benchmarks/random_walk.py measures it
against a stencil form (a sum of 69 shifted, weighted copies of the (C, h, w) seeds) and
against bfloat16, and CSR in float32 wins on CPU.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..errors import ConfigError
from .affinity import pad_for_all_sources, path_max
from .path_index import path_index


def pair_affinities(boundary: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j) inside the grid with 0 < |x_i - x_j| < radius, once each.

    Returns flat indices ``src``, ``dst`` and affinities ``1 - max(boundary along the path)``.
    """
    h, w = boundary.shape
    aff = half_disc_affinities(boundary, radius)
    dirs = path_index(radius).directions
    yy, xx = np.mgrid[0:h, 0:w]
    ty = yy[None] + dirs[:, 0, None, None]
    tx = xx[None] + dirs[:, 1, None, None]
    inside = (ty < h) & (tx >= 0) & (tx < w)
    src = np.broadcast_to((yy * w + xx)[None], inside.shape)[inside]
    return src, (ty * w + tx)[inside], aff[inside]


def half_disc_affinities(boundary: np.ndarray, radius: int) -> np.ndarray:
    """(D, h, w): 1 - max(boundary along the path) from every pixel in each half-disc
    direction (``path_index(radius).directions``); 0 where the target leaves the grid."""
    with torch.no_grad():
        padded = pad_for_all_sources(torch.from_numpy(np.ascontiguousarray(boundary, np.float32)), radius)
        return (1.0 - path_max(padded, radius)).numpy()


def affinity_stencil(boundary: np.ndarray, radius: int = 5, beta: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """The symmetric A = a^beta (A_ii = 1) as a stencil over the whole disc.

    Returns ``offsets`` (K, 2), every (dy, dx) with |d| < radius in (dy, dx) order (the centre
    included), and ``weights`` (K, h, w) with weights[k, y, x] = A between (y, x) and
    (y, x) + offsets[k], 0 where that target is outside the grid."""
    h, w = boundary.shape
    half = path_index(radius).directions
    a = np.power(np.clip(half_disc_affinities(boundary, radius), 0.0, 1.0), beta, dtype=np.float32)
    # the reverse direction -d at p is the pair (p - d, p), stored at source p - d
    mirrored = np.zeros_like(a)
    for k, (dy, dx) in enumerate(half.tolist()):
        if dy >= h or abs(dx) >= w:
            continue                        # no pair of the grid is this far apart
        mirrored[k, dy:, max(dx, 0):w + min(dx, 0)] = a[k, :h - dy, max(-dx, 0):w - max(dx, 0)]
    offsets = np.concatenate([half, -half, np.zeros((1, 2), np.int64)])
    weights = np.concatenate([a, mirrored, np.ones((1, h, w), np.float32)])
    order = np.lexsort((offsets[:, 1], offsets[:, 0]))
    return offsets[order], weights[order]


def transition_operator(boundary: np.ndarray, radius: int = 5, beta: float = 10.0, device="cpu",
                        symmetric: bool = False):
    """The sparse symmetric affinity A, or S = D^-1/2 A D^-1/2 if ``symmetric``, as an (N, N)
    CSR tensor on ``device``, and the row (= column) sums d of A, N = h * w. Only non-zero
    entries are stored (a zero adds nothing to a product), each row's columns sorted."""
    h, w = boundary.shape
    offsets, weights = affinity_stencil(boundary, radius, beta)
    degree = weights.sum(0, dtype=np.float64).astype(np.float32)             # (h, w)
    if symmetric:
        m = radius - 1
        root = np.pad(1.0 / np.sqrt(degree), m)        # weights are 0 wherever this pads
        for k, (dy, dx) in enumerate(offsets.tolist()):
            weights[k] *= root[m:m + h, m:m + w] * root[m + dy:m + dy + h, m + dx:m + dx + w]
    per_pixel = np.ascontiguousarray(weights.reshape(len(offsets), -1).T)       # (N, K)
    stored = per_pixel != 0
    # a non-zero weight's target is inside the grid, so its flat index is p + dy * w + dx,
    # and (dy, dx) order is column order
    flat_offsets = (offsets[:, 0] * w + offsets[:, 1]).astype(np.int32)
    cols = (np.arange(h * w, dtype=np.int32)[:, None] + flat_offsets)[stored]
    crow = np.zeros(h * w + 1, np.int32)
    np.cumsum(stored.sum(1), out=crow[1:])
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols),
                                         torch.from_numpy(per_pixel[stored]), size=(h * w, h * w))
    return matrix.to(device), torch.from_numpy(degree.reshape(-1)).to(device)


def power_chebyshev_coefficients(t: int, tolerance: float) -> np.ndarray:
    """c_0..c_k with lambda^t ~ sum_j c_j T_j(lambda) on [-1, 1].

    Exactly, c_j = 2^(1-t) C(t, (t - j) / 2) for j = t mod 2 (half that for j = 0), summing to 1.
    k is the lowest degree whose dropped weight sum_{j>k} c_j is at most ``tolerance``; the
    kept ones are rescaled to sum to 1, so that lambda = 1 (a constant field, a fixed point of
    the walk) stays exact."""
    j = np.arange(t + 1)
    half = (t - j) // 2
    log_c = (math.lgamma(t + 1) - np.vectorize(math.lgamma)(half + 1.0)
             - np.vectorize(math.lgamma)(t - half + 1.0) - t * math.log(2.0))
    c = np.where((t - j) % 2 == 0, np.exp(log_c) * np.where(j > 0, 2.0, 1.0), 0.0)
    dropped = np.concatenate([np.cumsum(c[::-1])[::-1][1:], [0.0]])   # weight above each degree
    k = int(np.argmax(dropped <= tolerance))
    return c[:k + 1] / c[:k + 1].sum()


def random_walk(seeds: np.ndarray, boundary: np.ndarray, radius: int = 5, beta: float = 10.0,
                exp_times: int = 8, tolerance: float = 0.0, device="cpu") -> np.ndarray:
    """Propagate (C, h, w) seeds over the (h, w) boundary map: (seeds * (1 - B)) T^(2^exp_times).

    ``tolerance`` 0 makes the t products exactly; above 0, the Chebyshev form (module
    docstring) whose dropped weight is at most ``tolerance`` (if that needs fewer products).
    Runs on ``device`` (a torch device: "cpu", "cuda", ...); all-zero channels are not walked
    (they stay zero). Returns (C, h, w) float32 numpy.
    Memory is O(h * w * radius^2); no N x N matrix is formed.
    """
    if not 0.0 <= tolerance < 1.0:
        raise ConfigError(f"random_walk.tolerance: {tolerance} is not in [0, 1)")
    c, h, w = seeds.shape
    x = (seeds * (1.0 - boundary)[None]).astype(np.float32).reshape(c, h * w)
    active = np.flatnonzero((x != 0).any(axis=1))
    out = np.zeros((c, h * w), np.float32)
    if len(active) == 0:                    # the walk is linear: zero seeds stay zero
        return out.reshape(c, h, w)
    t = 2 ** exp_times
    coeffs = power_chebyshev_coefficients(t, tolerance) if tolerance > 0 else None
    fast = coeffs is not None and len(coeffs) - 1 < t
    matrix, degree = transition_operator(boundary, radius, beta, device, symmetric=fast)
    x = torch.from_numpy(np.ascontiguousarray(x[active].T)).to(device)
    if fast:
        root = degree.sqrt()[:, None]
        x = chebyshev_series(matrix, x * root, coeffs) / root
    else:
        inv_degree = (1.0 / degree)[:, None]
        for _ in range(t):
            x = (matrix @ x) * inv_degree   # x^T T = ((A x) / d)^T since A = A^T
    out[active] = x.T.cpu().numpy()
    return out.reshape(c, h, w)


def chebyshev_series(matrix: torch.Tensor, x: torch.Tensor, coeffs: np.ndarray) -> torch.Tensor:
    """sum_j coeffs[j] T_j(M) x for a symmetric sparse M with spectrum in [-1, 1] and x (N, C):
    len(coeffs) - 1 products, by the recurrence T_{j+1}(M) x = 2 M T_j(M) x - T_{j-1}(M) x."""
    prev, cur = x, None
    out = x * float(coeffs[0])
    for j, cj in enumerate(coeffs[1:], start=1):
        prev, cur = (prev, matrix @ prev) if j == 1 else (cur, torch.addmm(prev, matrix, cur, beta=-1.0, alpha=2.0))
        if cj:
            out.add_(cur, alpha=float(cj))
    return out
