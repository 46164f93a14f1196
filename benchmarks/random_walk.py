"""Random walk: sparse (wsis) vs dense (the reference code's method) on a 500x375 image.

The stride-4 grid is 94 x 125 (N = 11,750) with 5 seed channels, radius 5, beta 10,
exp_times 8. The sparse walk runs on one thread (the target: under 0.5 s and 200 MB); the dense
one builds the N x N transition matrix and squares it exp_times times, on all threads. Each
method runs in its own process so that its peak memory (max RSS above the process's state just
before the call) is its own. Prints both, their ratio and the largest difference.

    python benchmarks/random_walk.py                 # dense on the full grid (~2-3 min on 2 cores)
    python benchmarks/random_walk.py --dense-grid 47x63   # a smaller dense comparison
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

H, W, C = 94, 125, 5           # ceil(375 / 4), ceil(500 / 4)
RADIUS, BETA, EXP_TIMES = 5, 10.0, 8


def make_input(h: int, w: int, seed: int = 0):
    """A boundary map with a few closed outlines (objects) plus noise, and 5 seed channels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    boundary = 0.05 * rng.random((h, w))
    seeds = np.zeros((C, h, w), np.float32)
    for c in range(C):
        cy, cx, r = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.08, 0.2) * min(h, w)
        d = np.hypot(yy - cy, xx - cx)
        boundary = np.maximum(boundary, np.exp(-((d - r) ** 2) / 2.0))
        seeds[c] = np.clip(1 - d / r, 0, 1) * rng.uniform(0.5, 1.0)
    return seeds, boundary.astype(np.float32)


def result_path(method: str, h: int, w: int) -> str:
    import tempfile
    return f"{tempfile.gettempdir()}/wsis_bench_{method}_{h}x{w}.npy"


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_sparse(h: int, w: int, repeats: int) -> dict:
    import torch
    from wsis.algorithms.random_walk import random_walk
    torch.set_num_threads(1)
    seeds, boundary = make_input(h, w)
    before = max_rss_mb()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = random_walk(seeds, boundary, RADIUS, BETA, EXP_TIMES)
        times.append(time.perf_counter() - t0)
    np.save(result_path("sparse", h, w), out)
    return {"seconds": float(np.median(times)), "peak_mb": max_rss_mb() - before, "threads": 1}


def run_dense(h: int, w: int) -> dict:
    """The reference method: dense symmetric A with unit diagonal, A^beta, column-normalised,
    squared exp_times times, then x @ T."""
    import torch
    from wsis.algorithms.random_walk import pair_affinities
    seeds, boundary = make_input(h, w)
    n = h * w
    before = max_rss_mb()
    t0 = time.perf_counter()
    src, dst, aff = pair_affinities(boundary, RADIUS)
    a = torch.eye(n)
    a[torch.from_numpy(src), torch.from_numpy(dst)] = torch.from_numpy(aff)
    a[torch.from_numpy(dst), torch.from_numpy(src)] = torch.from_numpy(aff)
    a = a.pow_(BETA)
    t = a / a.sum(0, keepdim=True)
    del a
    for _ in range(EXP_TIMES):
        t = t @ t
    x = torch.from_numpy((seeds * (1 - boundary)[None]).reshape(C, n))
    out = (x @ t).reshape(C, h, w).numpy()
    seconds = time.perf_counter() - t0
    np.save(result_path("dense", h, w), out)
    return {"seconds": seconds, "peak_mb": max_rss_mb() - before, "threads": torch.get_num_threads()}


def child(method: str, h: int, w: int, repeats: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, "--grid", f"{h}x{w}",
                          "--repeats", str(repeats)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dense-grid", default=f"{H}x{W}", help="grid for the dense run (HxW); 'none' to skip")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", choices=["sparse", "dense"], help=argparse.SUPPRESS)
    p.add_argument("--grid", default=f"{H}x{W}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        h, w = map(int, args.grid.split("x"))
        res = run_sparse(h, w, args.repeats) if args.child == "sparse" else run_dense(h, w)
        print(json.dumps(res))
        return
    print(f"random walk on a {H}x{W} stride-4 grid (500x375 image), {C} seed channels, "
          f"radius {RADIUS}, beta {BETA}, t = 2^{EXP_TIMES}")
    sparse = child("sparse", H, W, args.repeats)
    print(f"sparse: {sparse['seconds']:.3f} s (median of {args.repeats}, {sparse['threads']} thread), "
          f"peak memory {sparse['peak_mb']:.0f} MB   [target: < 0.5 s, < 200 MB]")
    if args.dense_grid == "none":
        return
    dh, dw = map(int, args.dense_grid.split("x"))
    if (dh, dw) != (H, W):
        sparse_small = child("sparse", dh, dw, args.repeats)
        print(f"sparse on {dh}x{dw}: {sparse_small['seconds']:.3f} s, peak memory {sparse_small['peak_mb']:.0f} MB")
    else:
        sparse_small = sparse
    dense = child("dense", dh, dw, 1)
    print(f"dense on {dh}x{dw}: {dense['seconds']:.1f} s ({dense['threads']} threads), "
          f"peak memory {dense['peak_mb']:.0f} MB")
    a, b = np.load(result_path("sparse", dh, dw)), np.load(result_path("dense", dh, dw))
    rel = float(np.abs(a - b).max() / np.abs(b).max())
    print(f"ratio dense / sparse: time x{dense['seconds'] / sparse_small['seconds']:.0f}, "
          f"memory x{dense['peak_mb'] / max(sparse_small['peak_mb'], 1e-3):.0f}; "
          f"max |sparse - dense| / max |dense| = {rel:.2e}")


if __name__ == "__main__":
    main()
