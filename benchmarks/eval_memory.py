"""Peak memory and time of instance evaluation (VOC AP + COCO AP) as the number of images grows.

Synthetic 500x375 images with 10 ground-truth instances each (5 classes, rectangles and
ellipses) and 10 detections each (the ground truth shifted by a few pixels, random scores) are
generated on the fly and scored exactly as the eval_seg stage scores them: ``score_instances``
(IoU rows per image, ground truth written as an RLE COCO file), detections RLE-encoded as they
are made, then pycocotools COCOeval on RLE. Each size runs in its own process, which prints
its peak traced Python/numpy memory (tracemalloc) and its peak resident size (ru_maxrss,
including the interpreter, numpy and pycocotools). The only file written is the ground-truth
COCO JSON (and one blank PNG whose header gives the image size), in a temporary directory.

    python benchmarks/eval_memory.py                  # 200 and 2,000 images
    python benchmarks/eval_memory.py --sizes 200 500 2000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

H, W = 375, 500
INSTANCES = 10
CLASSES = ("a", "b", "c", "d", "e")


def ground_truth(seed: int):
    """One image's instances: masks (10, H, W) bool and classes (10,)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[0:H, 0:W]
    masks = np.zeros((INSTANCES, H, W), bool)
    for i in range(INSTANCES):
        cy, cx = rng.integers(0, H), rng.integers(0, W)
        ry, rx = rng.integers(10, 80), rng.integers(10, 100)
        if i % 2:
            masks[i] = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        else:
            masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return masks, rng.integers(0, len(CLASSES), INSTANCES)


def detections(seed: int, masks: np.ndarray, classes: np.ndarray):
    rng = np.random.default_rng(seed + 10**6)
    shifted = np.stack([np.roll(m, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1)) for m in masks])
    return shifted, classes, rng.random(len(masks)).astype(np.float32)


def measure(num_images: int) -> dict:
    """Score ``num_images`` synthetic images in this process; returns the figures."""
    from PIL import Image

    from pipelines.progress import Progress
    from pipelines.stages.eval_pseudo import score_instances
    from wsis.coco import annotation, coco_evaluate
    from wsis.data.base import Dataset, InstanceGT
    from wsis.metrics import mean_ap

    class SyntheticEval(Dataset):
        def image_path(self, image_id):
            return self.root / "blank.png"          # only its header (the size) is read

        def instance_gt(self, image_id):
            return InstanceGT(*ground_truth(int(image_id)))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Image.new("L", (W, H)).save(tmp / "blank.png")
        ids = tuple(str(k) for k in range(num_images))
        ds = SyntheticEval("bench", tmp, CLASSES, {"all": ids}, {i: () for i in ids}, has_masks=True)
        results = []

        def predict(entry, image_id):
            gt = ds.instance_gt(image_id)
            masks, classes, scores = detections(int(image_id), gt.masks, gt.classes)
            for m, c, s in zip(masks, classes, scores):
                results.append(annotation(m, c, entry["id"], len(results) + 1, s))
            return masks, classes, scores

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tracemalloc.start()
        t0, cpu0 = time.perf_counter(), time.process_time()
        aps = score_instances(ds, ids, predict, (0.5,), tmp / "gt.json",
                              Progress("eval", num_images, stream=sys.stderr, min_interval=30))
        t_voc, cpu_voc = time.perf_counter() - t0, time.process_time() - cpu0
        _, voc_peak = tracemalloc.get_traced_memory()
        held = tracemalloc.get_traced_memory()[0]         # what the images leave behind: RLE and IoU rows
        tracemalloc.reset_peak()
        coco = coco_evaluate(tmp / "gt.json", results)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        _, coco_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    mb = 2 ** 20
    return {"images": num_images, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "seconds_voc_ap": round(t_voc, 1), "cpu_seconds_voc_ap": round(cpu_voc, 1),
            "traced_peak_mb": round(max(voc_peak, coco_peak) / mb, 1), "voc_peak_mb": round(voc_peak / mb, 1),
            "held_after_images_mb": round(held / mb, 1), "cocoeval_peak_mb": round(coco_peak / mb, 1),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_mb": round(rss_before, 1),
            "mAP50": round(mean_ap(aps[0.5]), 4), "coco_AP": round(coco["AP"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        dense_mb = 2 * n * INSTANCES * H * W / 2**20     # bool GT + prediction masks the dense evaluator held
        print(f"{n:>6} images: {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU "
              f"(per image and VOC AP: {r['seconds_voc_ap']:.1f} s wall, {r['cpu_seconds_voc_ap']:.1f} s CPU; "
              f"the rest is pycocotools COCOeval)\n"
              f"        peak traced {r['traced_peak_mb']:.1f} MB (scoring the images {r['voc_peak_mb']:.1f} MB, "
              f"of which {r['held_after_images_mb']:.1f} MB RLE + IoU rows held at the end; COCOeval "
              f"{r['cocoeval_peak_mb']:.1f} MB), peak RSS {r['max_rss_mb']:.1f} MB (process before scoring "
              f"{r['rss_before_mb']:.1f} MB)\n"
              f"        mAP50 {r['mAP50']:.3f}, COCO AP {r['coco_AP']:.3f}; "
              f"the dense evaluator held {dense_mb:,.0f} MB of masks", flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"{b['images'] / a['images']:.0f}x the images: peak traced x{b['traced_peak_mb'] / a['traced_peak_mb']:.2f}, "
              f"peak RSS x{b['max_rss_mb'] / a['max_rss_mb']:.2f}, CPU time x{b['cpu_seconds'] / a['cpu_seconds']:.2f}")


if __name__ == "__main__":
    main()
