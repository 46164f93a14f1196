"""Instance synthesis without the network, step by step, on one VOC-sized image (375 x 500).

A crafted stride-4 scene (94 x 125): 3 classes, each a row of 4 instances touching side by
side; the boundary map is high on every instance outline; the displacement field points from
each instance pixel to its instance's centre (background: small noise); each class's CAM is a
bump over its row, zero elsewhere. Synthesis then runs as the ins_seg stage does (Ahn et al.
2019, step 6): centroids (300 steps), clusters, seeds, random walk (the configured tolerance),
upsampling, detections. Times are the median of --repeats on one thread, wall and process CPU.

    python benchmarks/instance_synthesis.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsis.algorithms.instances import (cluster_endpoints, cluster_instances, detections,  # noqa: E402
                                       find_centroids, instance_seeds)
from wsis.algorithms.labels import upsample_normalised  # noqa: E402
from wsis.algorithms.random_walk import random_walk  # noqa: E402
from wsis.config import load_config  # noqa: E402

IMAGE = (375, 500)
H, W = 94, 125
CLASSES = [4, 11, 14]                   # any three VOC classes
ROWS = ((8, 32), (36, 60), (64, 88))    # one row of instances per class (grid rows)
COLUMNS = ((12, 37), (37, 62), (62, 87), (87, 112))   # 4 instances touching side by side


def make_scene(seed: int = 0):
    """(cams (3, h, w), boundary (h, w), displacement (2, h, w), truth (h, w): 0 bg, 1..12)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    truth = np.zeros((H, W), np.int64)
    displacement = rng.uniform(-0.3, 0.3, (2, H, W))
    cams = np.zeros((len(CLASSES), H, W))
    for k, (y0, y1) in enumerate(ROWS):
        for i, (x0, x1) in enumerate(COLUMNS):
            inside = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
            truth[inside] = 4 * k + i + 1
            cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
            displacement[0][inside] = (cy - yy)[inside]
            displacement[1][inside] = (cx - xx)[inside]
        cy, half = (y0 + y1 - 1) / 2, (y1 - y0) / 2 + 1     # reaches into the gaps, not the next row
        bump = np.clip(1 - ((yy - cy) / half) ** 2, 0, 1) * np.clip(1 - np.abs(xx - 61.5) / 54, 0, 1)
        cams[k] = bump * rng.uniform(0.8, 1.0, (H, W))
    edge = np.zeros((H, W), bool)
    edge[:-1] |= truth[:-1] != truth[1:]
    edge[1:] |= truth[1:] != truth[:-1]
    edge[:, :-1] |= truth[:, :-1] != truth[:, 1:]
    edge[:, 1:] |= truth[:, 1:] != truth[:, :-1]
    boundary = np.where(edge, 0.9, 0.05 * rng.random((H, W)))
    cams /= cams.max(axis=(1, 2), keepdims=True)
    return cams.astype(np.float32), boundary.astype(np.float32), displacement.astype(np.float32), truth


def synthesise(cams, boundary, displacement, cfg):
    """The ins_seg stage's steps, each timed: {step: (wall s, CPU s)} and the results."""
    rw, c = cfg["random_walk"], cfg["ins_seg"]
    times, out = {}, {}

    def step(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times[name] = (time.perf_counter() - t0, time.process_time() - c0)
        return result

    centroids = step("centroids", lambda: find_centroids(displacement, c["centroid_iterations"]))
    if c["clustering"] == "endpoints":     # as synthesize_instances chooses
        instance_map = step("clusters", lambda: cluster_endpoints(centroids, cams.max(0) > c["bg_threshold"]))
    else:
        instance_map = step("clusters", lambda: cluster_instances(displacement, centroids, c["cluster_threshold"]))
    n_instances = int(instance_map.max())
    seeds = step("seeds", lambda: instance_seeds(cams, instance_map))
    walked = step("walk", lambda: random_walk(seeds, boundary, rw["radius"], rw["beta"], rw["exp_times"],
                                              rw["tolerance"]))
    scores = step("upsample", lambda: upsample_normalised(walked, IMAGE))
    out["detections"] = step("detections", lambda: detections(scores, CLASSES, n_instances, c["bg_threshold"],
                                                            c["min_area_fraction"], c["score"]))
    out["n_instances"] = n_instances
    out["walked"] = int((seeds != 0).any(axis=(1, 2)).sum())
    out["channels"] = len(seeds)
    return times, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--clustering", choices=("weak_region", "endpoints"), default="weak_region",
                   help="ins_seg.clustering (the voc2012 preset: weak_region)")
    p.add_argument("--score", choices=("peak", "mean"), default="peak",
                   help="ins_seg.score (the voc2012 preset: peak)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("voc2012", overrides=[f"ins_seg.clustering={args.clustering}", f"ins_seg.score={args.score}"])
    cams, boundary, displacement, truth = make_scene()
    runs = [synthesise(cams, boundary, displacement, cfg) for _ in range(args.repeats + 1)][1:]
    out = runs[-1][1]
    inst, det_classes, det_scores = out["detections"]
    print(f"instance synthesis on a {IMAGE[1]}x{IMAGE[0]} image ({H}x{W} grid), 3 classes x 4 touching "
          f"instances, ins_seg.clustering = {args.clustering}, ins_seg.score = {args.score},\n"
          f"random_walk.tolerance = {cfg['random_walk']['tolerance']:g}, 1 thread, "
          f"median of {args.repeats} (wall / process CPU)")
    print(f"{out['n_instances']} clusters (12 instances + background) -> {out['channels']} seed channels, "
          f"{out['walked']} not all zero (walked)")
    total_wall = total_cpu = 0.0
    for name in runs[0][0]:
        wall = float(np.median([r[0][name][0] for r in runs]))
        cpu = float(np.median([r[0][name][1] for r in runs]))
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        print(f"  {name:<11} {wall:.3f} s / {cpu:.3f} s CPU")
    print(f"  {'total':<11} {total_wall:.3f} s / {total_cpu:.3f} s CPU   [target <= 0.3 s]")
    kept = det_scores > 0
    truth_up = truth.repeat(4, 0).repeat(4, 1)[:IMAGE[0], :IMAGE[1]]
    found = [np.bincount(truth_up[inst == n + 1], minlength=13).argmax() for n in np.flatnonzero(kept)]
    print(f"{int(kept.sum())} detections with a score > 0 (of {len(det_scores)}), classes "
          f"{sorted(det_classes[kept].tolist())}; distinct true instances covered: "
          f"{len(set(found) - {0})} of 12")


if __name__ == "__main__":
    main()
