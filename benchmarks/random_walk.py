"""Random walk on a 500x375 image: exact sparse, fast (Chebyshev) and dense, on the same input.

The stride-4 grid is 94 x 125 (N = 11,750), radius 5, beta 10, exp_times 8 (t = 256), with 5
and with 20 seed channels. Each method runs in its own process so that its peak memory (max
RSS above the process's state just before the call) is its own:

* exact: the t sparse products (``random_walk.tolerance = 0``), one thread;
* fast: the Chebyshev form at the configured tolerance (and a looser one), one thread;
* dense: the reference code's method (N x N transition matrix squared exp_times times), all
  threads; its matrix power serves both channel counts.

For each it prints the wall time (median of --repeats) and the process CPU time (robust when
other jobs share the cores), the peak memory, max |x - exact| / max |exact|, and the agreement
of the semantic labels (upsampled x4 to 375 x 500, divided by the global max, background 0.25,
argmax) with the exact walk's. Then it times one product alone: CSR against a stencil form
(every channel at once, a sum of shifted weighted copies) in float32 and bfloat16.

    python benchmarks/random_walk.py                 # everything (the dense run takes minutes)
    python benchmarks/random_walk.py --skip-dense    # without the dense method
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

H, W = 94, 125                 # ceil(375 / 4), ceil(500 / 4)
IMAGE = (375, 500)
RADIUS, BETA, EXP_TIMES = 5, 10.0, 8
BG_THRESHOLD = 0.25            # sem_seg_bg_thres
TOLERANCES = (1e-3, 1e-2)      # the default (configs/base.toml) and a looser one


def make_input(h: int, w: int, channels: int, seed: int = 0):
    """A boundary map with 5 closed outlines (objects) plus noise, the same for every channel
    count, and one seed blob per channel, each inside one of the outlines."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    boundary = 0.05 * rng.random((h, w))
    objects = []
    for _ in range(5):
        cy, cx, r = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.08, 0.2) * min(h, w)
        boundary = np.maximum(boundary, np.exp(-((np.hypot(yy - cy, xx - cx) - r) ** 2) / 2.0))
        objects.append((cy, cx, r))
    seeds = np.zeros((channels, h, w), np.float32)
    blobs = np.random.default_rng(seed + 1)
    for c in range(channels):
        cy, cx, r = objects[c % 5]
        dy, dx = blobs.uniform(-0.4, 0.4, 2) * r          # off-centre for the channels after the 5th
        d = np.hypot(yy - cy - (dy if c >= 5 else 0), xx - cx - (dx if c >= 5 else 0))
        seeds[c] = np.clip(1 - d / (0.8 * r), 0, 1) * blobs.uniform(0.5, 1.0)
    return seeds, boundary.astype(np.float32)


def result_path(name: str) -> str:
    return f"{tempfile.gettempdir()}/wsis_bench_rw_{name}.npy"


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_sparse(channels: int, tolerance: float, repeats: int) -> dict:
    import torch
    from wsis.algorithms.random_walk import random_walk
    torch.set_num_threads(1)
    seeds, boundary = make_input(H, W, channels)
    before = max_rss_mb()
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = random_walk(seeds, boundary, RADIUS, BETA, EXP_TIMES, tolerance)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    np.save(result_path(f"sparse_{channels}_{tolerance}"), out)
    return {"seconds": float(np.median(walls)), "cpu_seconds": float(np.median(cpus)),
            "peak_mb": max_rss_mb() - before, "threads": 1}


def run_dense() -> dict:
    """The reference method: dense symmetric A with unit diagonal, A^beta, column-normalised,
    squared exp_times times, then x @ T for both channel counts."""
    import torch
    from wsis.algorithms.random_walk import pair_affinities
    _, boundary = make_input(H, W, 1)
    n = H * W
    before = max_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    src, dst, aff = pair_affinities(boundary, RADIUS)
    a = torch.eye(n)
    a[torch.from_numpy(src), torch.from_numpy(dst)] = torch.from_numpy(aff)
    a[torch.from_numpy(dst), torch.from_numpy(src)] = torch.from_numpy(aff)
    a = a.pow_(BETA)
    t = a / a.sum(0, keepdim=True)
    del a
    for _ in range(EXP_TIMES):
        t = t @ t
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    for channels in (5, 20):
        seeds, _ = make_input(H, W, channels)
        x = torch.from_numpy((seeds * (1 - boundary)[None]).reshape(channels, n))
        np.save(result_path(f"dense_{channels}"), (x @ t).reshape(channels, H, W).numpy())
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": max_rss_mb() - before,
            "threads": torch.get_num_threads()}


def stencil_product(offsets, weights, x):
    """y = A x on the grid for x (C, h, w): the sum over the disc's offsets of the weight times
    the shifted x, all channels at once (the competitor of the CSR product)."""
    import torch.nn.functional as F
    m = RADIUS - 1
    h, w = x.shape[1:]
    padded = F.pad(x, (m, m, m, m))
    y = x * weights[len(weights) // 2]            # the centre offset (0, 0) is in the middle
    for k, (dy, dx) in enumerate(offsets):
        if dy or dx:
            y.addcmul_(weights[k], padded[:, m + dy:m + dy + h, m + dx:m + dx + w])
    return y


def run_products(repeats: int = 30) -> dict:
    """Seconds per product y = A x, CSR vs stencil, float32 vs bfloat16, 5 and 20 channels."""
    import torch
    from wsis.algorithms.random_walk import affinity_stencil, transition_operator
    torch.set_num_threads(1)
    _, boundary = make_input(H, W, 1)
    offsets, weights = affinity_stencil(boundary, RADIUS, BETA)
    matrix, _ = transition_operator(boundary, RADIUS, BETA)
    res = {}

    def per_call(fn):
        fn()
        c0 = time.process_time()
        for _ in range(repeats):
            fn()
        return (time.process_time() - c0) / repeats

    for channels in (5, 20):
        x = torch.rand(channels, H, W)
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).split(".")[1]
            wt, xt = torch.from_numpy(weights).to(dtype), x.to(dtype)
            res[f"stencil {name} {channels}"] = per_call(lambda: stencil_product(offsets.tolist(), wt, xt))
            try:
                m_t, cols = matrix.to(dtype), xt.reshape(channels, -1).T.contiguous()
                res[f"CSR {name} {channels}"] = per_call(lambda: m_t @ cols)
            except RuntimeError as e:          # no bfloat16 sparse kernel on this build
                res[f"CSR {name} {channels}"] = str(e).splitlines()[0][:60]
        # the two forms compute the same product
        got = stencil_product(offsets.tolist(), torch.from_numpy(weights), x)
        want = (matrix @ x.reshape(channels, -1).T.contiguous()).T.reshape(channels, H, W)
        res[f"max |stencil - CSR| {channels}"] = float((got - want).abs().max() / want.abs().max())
    return res


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"benchmark child {args} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def labels(scores: np.ndarray) -> np.ndarray:
    from wsis.algorithms.labels import scores_to_label, upsample_normalised
    return scores_to_label(upsample_normalised(scores, IMAGE), range(len(scores)), BG_THRESHOLD)


def compare(got: np.ndarray, want: np.ndarray) -> str:
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    agree = float((labels(got) == labels(want)).mean())
    return f"max|diff|/max|exact| {rel:.1e}, labels {100 * agree:.3f} % agree"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--skip-dense", action="store_true", help="leave out the dense method (minutes)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "sparse":
            res = run_sparse(int(rest[0]), float(rest[1]), args.repeats)
        else:
            res = run_dense() if kind == "dense" else run_products()
        print(json.dumps(res))
        return
    print(f"random walk on a {H}x{W} stride-4 grid (500x375 image), radius {RADIUS}, beta {BETA}, "
          f"t = 2^{EXP_TIMES}; sparse on 1 thread, times = median of {args.repeats} (wall / process CPU)")
    dense = None if args.skip_dense else child("dense")
    if dense:
        print(f"dense: {dense['seconds']:.1f} s wall, {dense['cpu_seconds']:.1f} s CPU "
              f"({dense['threads']} threads), peak memory {dense['peak_mb']:.0f} MB")
    for channels in (5, 20):
        print(f"\n{channels} channels")
        exact_run = child("sparse", str(channels), "0", "--repeats", str(max(1, args.repeats // 2)))
        exact = np.load(result_path(f"sparse_{channels}_0.0"))
        runs = [("exact (t products)", exact_run, exact)]
        for tol in TOLERANCES:
            run = child("sparse", str(channels), str(tol), "--repeats", str(args.repeats))
            runs.append((f"fast, tolerance {tol:g}", run, np.load(result_path(f"sparse_{channels}_{tol}"))))
        for name, run, out in runs:
            line = (f"  {name:<24} {run['seconds']:.3f} s / {run['cpu_seconds']:.3f} s CPU, "
                    f"peak {run['peak_mb']:.0f} MB")
            if out is not exact:
                line += "; vs exact: " + compare(out, exact)
            if dense:
                line += (f"; dense / this: x{dense['seconds'] / run['seconds']:.0f} wall, "
                         f"x{dense['cpu_seconds'] / run['cpu_seconds']:.0f} CPU")
            print(line)
        if dense:
            print(f"  exact vs dense: {compare(exact, np.load(result_path(f'dense_{channels}')))}")
    print("\none product y = A x (process CPU seconds per call, 1 thread):")
    for name, value in child("products").items():
        print(f"  {name:<28} " + (f"{value * 1e3:.3f} ms" if isinstance(value, float) and "max" not in name
                                  else f"{value:.1e}" if isinstance(value, float) else value))
    print("\ntargets (5 channels): fast <= 0.08 s, <= 100 MB, >= 99.9 % labels, >= x1500 vs dense; "
          "20 channels <= 0.25 s")


if __name__ == "__main__":
    main()
