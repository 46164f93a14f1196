"""Training-step time of the synthetic preset's instance model (SOLOv2 by default) under each
``run.amp`` setting, on the CPU: what ``make demo``'s longest stage costs per iteration.

Prints whether this CPU computes bf16 in hardware (what ``run.amp = "auto"`` decides), then
seconds per step (forward under autocast, loss in float32, backward, SGD step) for float32 and
bf16, and, with --emulated, both again in a child process with oneDNN limited to AVX2: how a
CPU without native bf16 would fare, the reason "auto" exists.

    python benchmarks/train_step.py                        # SOLOv2, batch 8 at 160 px
    python benchmarks/train_step.py --emulated --steps 4
    python benchmarks/train_step.py --set solo.head_channels=128
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def step_seconds(model_name: str, amp: str, steps: int, overrides: list[str]) -> float:
    import numpy as np
    import torch

    from pipelines.trainer import Precision, as_float32
    from wsis.config import load_config
    from wsis.data.seg_data import canvas_target
    from wsis.data.synthetic import render
    from wsis.models.registry import build_instance_model
    from wsis.transforms import letterbox

    cfg = load_config("synthetic", overrides=overrides)
    s, classes = cfg["seg"], cfg["data"]["classes"]
    size, batch = s["input_size"], s["batch_size"]
    torch.manual_seed(0)
    heads = {k: cfg[k] for k in ("solo", "yolact", "centermask")}
    model = build_instance_model(model_name, len(classes), cfg["backbone"], heads, "none", s["fpn_channels"])
    images, targets = [], []
    gen = cfg["synthetic"]
    for index in range(batch):    # generated photos of the preset's kind
        img, _, _, inst = render(index, gen["seed"], "train", classes, tuple(gen["image_size"]), gen["max_instances"])
        masks = np.array([m for _, m in inst]) if inst else np.zeros((0,) + img.shape[:2], bool)
        labels = np.array([c for c, _ in inst], np.int64)
        canvas, _, valid = letterbox(img, size)
        images.append(torch.from_numpy(canvas).permute(2, 0, 1))
        targets.append(model.prepare_target(canvas_target(masks, labels, size, valid), size))
    x = torch.stack(images).float()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    precision = Precision(amp, "cpu")     # the trainer's autocast and float32 losses

    def step():
        with precision.autocast():
            out = model(x)
        loss = sum(model.loss(as_float32(out), targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()                          # the first step allocates and picks kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="solov2")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--set", action="append", default=[], help="config override, as wsis --set")
    ap.add_argument("--emulated", action="store_true", help="also time bf16 with oneDNN limited to AVX2")
    ap.add_argument("--child", help=argparse.SUPPRESS)       # one amp setting, printed as a number
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    if args.child:
        print(step_seconds(args.model, args.child, args.steps, args.set))
        return
    from wsis.device import native_bf16
    native = native_bf16("cpu")
    print(f"{args.model}, synthetic preset {' '.join(args.set)}, {args.threads} threads; "
          f"native bf16 on this CPU: {native} (run.amp = auto trains in {'bf16' if native else 'float32'})")
    rows = [("float32", step_seconds(args.model, "off", args.steps, args.set)),
            ("bf16", step_seconds(args.model, "bf16", args.steps, args.set))]
    emulated = []
    if args.emulated:   # both precisions again, with oneDNN limited to AVX2 (no bf16 instructions)
        for amp, name in (("off", "float32"), ("bf16", "bf16")):
            out = subprocess.run([sys.executable, __file__, "--child", amp, "--model", args.model,
                                  "--steps", str(args.steps), "--threads", str(args.threads),
                                  *[a for s in args.set for a in ("--set", s)]],
                                 env=os.environ | {"ONEDNN_MAX_CPU_ISA": "AVX2"}, capture_output=True, text=True,
                                 check=True)
            emulated.append((f"{name}, oneDNN limited to AVX2", float(out.stdout.strip().splitlines()[-1])))
    for group in (rows, emulated):
        for name, seconds in group:
            print(f"  {name:<30} {seconds:7.3f} s/step  (x{group[0][1] / seconds:.2f} against float32 alike)")


if __name__ == "__main__":
    main()
