"""VOC-scale pipeline benchmark: every stage on N generated 500x375 images with the voc2012
preset's models (ResNet-50, random init), training stages cut to a fixed number of iterations.

Prints per stage: images/s (or iterations/s for training), peak RSS, and the device; then
  - the training data path: DataLoader workers (run.loader_workers = the number of cores) against
    batches built in the training process (loader_workers = 0, the old synchronous path), in
    the same run, as train_cam iterations/s and their ratio;
  - ir_label with 1 vs 2 local Dask workers (images/s and the scaling ratio);
  - on CUDA, train_cam with run.amp = bf16 against off.
Each stage runs as its own `wsis run --stage X --force` process, so its peak RSS is its own.

    python benchmarks/pipeline.py                   # 32 images, CPU
    python benchmarks/pipeline.py --images 64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["train_cam", "make_cam", "ir_label", "train_irn", "irn_infer", "sem_seg", "ins_seg", "export"]
TRAINING = {"train_cam", "train_irn"}


def bench_config(images: int, batch: int, iterations: int) -> str:
    """voc2012-preset models on a synthetic 500x375 dataset: epochs x (images / batch) = iterations."""
    epochs = max(1, round(iterations * batch / images))
    return f"""
[data]
classes = ["disc", "square", "triangle", "star", "cross"]
train_split = "train"
irn_split = "train"
infer_split = "train"
eval_split = "val"
[backbone]
weights = "none"
[synthetic]
num_train = {images}
num_val = 2
image_size = [375, 500]
max_instances = 4
[train_cam]
epochs = {epochs}
batch_size = {batch}
[train_irn]
epochs = {epochs}
batch_size = {batch}
[make_cam]
scales = [1.0, 0.5, 1.5, 2.0]
"""


def child(argv: list[str]) -> None:
    """Run one `wsis` command in this process; print its peak RSS (this process and its
    reaped children, i.e. Dask workers and loader workers) as the last line."""
    from wsis.cli import main
    try:
        main(argv, standalone_mode=False)
    finally:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(json.dumps({"peak_rss_mb": max(own, kids) / 1024}), flush=True)


def run_stage(stage: str, common: list[str], *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "run", "--stage", stage, "--force", *common, *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"{stage} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    done = re.search(rf"{stage}: done in ([0-9.]+) s", proc.stderr)
    unit = "iterations" if stage in TRAINING else "images"
    iters = re.findall(rf"{stage}: (\d+)/(\d+) ({unit})", proc.stderr)
    return {"seconds": float(done.group(1)) if done else wall,
            "count": int(iters[-1][1]) if iters else 0, "unit": iters[-1][2] if iters else "",
            "peak_rss_mb": json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=8, help="per training stage")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default=None, help="keep data and outputs here (default: a temp dir)")
    args = ap.parse_args()
    base = Path(args.work or tempfile.mkdtemp(prefix="wsis-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    (base / "bench.toml").write_text(bench_config(args.images, args.batch, args.iterations))
    common = ["--dataset", "synthetic", "--config", str(base / "bench.toml"), "--data-root", str(base / "data"),
              "--work-dir", str(base / "work"), "--device", args.device]
    subprocess.run([sys.executable, "-m", "wsis.cli", "synth", *common[:6]], check=True, capture_output=True)
    print(f"{args.images} images of 500x375, ResNet-50 (random init), {args.iterations} iterations of "
          f"batch {args.batch} per training stage, device {args.device}, {os.cpu_count()} cores")
    print(f"{'stage':<12} {'seconds':>8} {'rate':>18} {'peak RSS':>10}")
    results = {}
    for stage in STAGES:
        r = results[stage] = run_stage(stage, common)
        # stages without per-image progress (export writes one file) have no rate
        rate = f"{r['count'] / r['seconds']:10.2f} {r['unit'] + '/s':>7}" if r["count"] else f"{'-':>18}"
        print(f"{stage:<12} {r['seconds']:8.1f} {rate} {r['peak_rss_mb']:8.0f} MB", flush=True)

    print("\ntraining data path (train_cam):")
    sync = run_stage("train_cam", common, "--set", "run.loader_workers=0")
    # explicit: the automatic setting builds batches in-process when training on the CPU
    loader = run_stage("train_cam", common, "--set", f"run.loader_workers={os.cpu_count() or 1}")
    for name, r in (("in-process batches (old path)", sync), ("DataLoader, one worker per core", loader)):
        print(f"  {name:<34} {r['count'] / r['seconds']:.3f} iterations/s")
    print(f"  ratio: x{(loader['count'] / loader['seconds']) / (sync['count'] / sync['seconds']):.2f}")

    print("\nir_label Dask scaling:")
    one = run_stage("ir_label", common, "--workers", "1")
    two = run_stage("ir_label", common, "--workers", "2")
    for name, r in (("1 worker", one), ("2 workers", two)):
        print(f"  {name:<10} {r['count'] / r['seconds']:.2f} images/s")
    print(f"  scaling: x{one['seconds'] / two['seconds']:.2f}")

    if args.device.startswith("cuda"):
        print("\nAMP (train_cam):")
        amp = run_stage("train_cam", common, "--set", "run.amp=bf16")
        off = results["train_cam"]
        print(f"  off  {off['count'] / off['seconds']:.3f} iterations/s")
        print(f"  bf16 {amp['count'] / amp['seconds']:.3f} iterations/s (x{off['seconds'] / amp['seconds']:.2f})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(ROOT))
        child(sys.argv[2:])
    else:
        main()
