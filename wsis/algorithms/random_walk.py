"""Random walk propagation of seeds over boundary-aware affinities, without an N x N matrix.

Ahn et al. (CVPR 2019), step 5: between every pair of stride-4 pixels less than ``radius``
apart, the affinity is a = 1 - max(B along the path) for the boundary map B; A = a^beta with
A symmetric and A_ii = 1; the transition matrix T = A D^-1 is A with its columns normalised;
seeds x (one row per channel, times 1 - B) are propagated as x T^t with t = 2^exp_times.

The reference squares a dense N x N T ``exp_times`` times (N = 11,750 for a 500x375 image:
527 MiB per matrix, ~26 TFLOP). Here x T^t is computed as t products with the sparse T
(~70 non-zeros per column): x T = ((A x^T) / d)^T by the symmetry of A, in a few MB.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .affinity import pad_for_all_sources, path_max
from .path_index import path_index


def pair_affinities(boundary: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j) inside the grid with 0 < |x_i - x_j| < radius, once each.

    Returns flat indices ``src``, ``dst`` and affinities ``1 - max(boundary along the path)``.
    """
    h, w = boundary.shape
    with torch.no_grad():
        padded = pad_for_all_sources(torch.from_numpy(np.ascontiguousarray(boundary)), radius)
        aff = (1.0 - path_max(padded, radius)).numpy()          # (D, h, w)
    dirs = path_index(radius).directions
    yy, xx = np.mgrid[0:h, 0:w]
    ty = yy[None] + dirs[:, 0, None, None]
    tx = xx[None] + dirs[:, 1, None, None]
    inside = (ty < h) & (tx >= 0) & (tx < w)
    src = np.broadcast_to((yy * w + xx)[None], inside.shape)[inside]
    return src, (ty * w + tx)[inside], aff[inside]


def transition_operator(boundary: np.ndarray, radius: int = 5, beta: float = 10.0):
    """The sparse symmetric affinity A = a^beta (A_ii = 1) as a CSR tensor, and 1 / column sums."""
    h, w = boundary.shape
    n = h * w
    src, dst, aff = pair_affinities(boundary.astype(np.float32), radius)
    aff = np.power(np.clip(aff, 0.0, 1.0), beta, dtype=np.float32)
    diag = np.arange(n)
    rows = np.concatenate([src, dst, diag])
    cols = np.concatenate([dst, src, diag])
    vals = np.concatenate([aff, aff, np.ones(n, np.float32)])
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    crow = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=crow[1:])
    inv_colsum = 1.0 / np.bincount(cols, weights=vals, minlength=n).astype(np.float32)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(torch.from_numpy(crow.astype(np.int32)),
                                         torch.from_numpy(cols.astype(np.int32)),
                                         torch.from_numpy(vals), size=(n, n))
    return matrix, torch.from_numpy(inv_colsum)


def random_walk(seeds: np.ndarray, boundary: np.ndarray, radius: int = 5, beta: float = 10.0,
                exp_times: int = 8) -> np.ndarray:
    """Propagate (C, h, w) seeds over the (h, w) boundary map: (seeds * (1 - B)) T^(2^exp_times).

    Returns (C, h, w) float32. Memory is O(h * w * radius^2); no N x N matrix is formed.
    """
    c, h, w = seeds.shape
    if c == 0:
        return np.zeros_like(seeds, dtype=np.float32)
    matrix, inv_colsum = transition_operator(boundary, radius, beta)
    x = torch.from_numpy((seeds * (1.0 - boundary)[None]).reshape(c, h * w).T.astype(np.float32))
    x = x.contiguous()
    scale = inv_colsum[:, None]
    for _ in range(2 ** exp_times):
        x = (matrix @ x) * scale   # x^T T = ((A x) / d)^T since A = A^T
    return x.T.reshape(c, h, w).numpy()
