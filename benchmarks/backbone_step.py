"""CPU seconds per training step of the CAM classifier and of IRNet, for each backbone, at a
preset's crop size and batch: what ``backbone.arch`` costs train_cam and train_irn.

Issue 19 asks whether ``make demo`` (the synthetic preset, a ResNet-18 trained from scratch)
should start from the pretrained EfficientNet-Lite0 instead; this prints the two stages' step
cost for both. Figures are process CPU seconds (robust on a shared machine) with one thread,
after one warm-up step; the backbone's weights do not change the cost, so none are loaded.
The CAM step trains what the preset trains (``backbone.frozen_stages``, ``freeze_bn``); the
IRNet step trains the two branches over a frozen backbone, as train_irn does.

    python benchmarks/backbone_step.py                                  # synthetic preset
    python benchmarks/backbone_step.py --archs resnet efficientnet_lite0 --steps 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_per_step(step, steps: int) -> float:
    step()                                    # the first step allocates and picks kernels
    start = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - start) / steps


def step_costs(preset: str, arch: str, steps: int, overrides: list[str]) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    from wsis.config import load_config
    from wsis.models.backbone import backbone_from_section
    from wsis.models.cam import CAMNet
    from wsis.models.irn import IRNet, irn_losses

    cfg = load_config(preset, overrides=[f"backbone.arch={arch}", "backbone.weights=none", *overrides])
    num_classes = len(cfg["data"]["classes"]) if cfg["data"].get("classes") else 20
    torch.manual_seed(0)

    c = cfg["train_cam"]
    cam = CAMNet(backbone_from_section(cfg["backbone"]), num_classes)
    images = torch.rand(c["batch_size"], 3, c["crop_size"], c["crop_size"]) * 255
    targets = (torch.rand(c["batch_size"], num_classes) < 0.3).float()
    optimizer = torch.optim.SGD([p for p in cam.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    cam.train()

    def cam_step():
        loss = F.multilabel_soft_margin_loss(cam(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    r = cfg["train_irn"]
    irn = IRNet(backbone_from_section(cfg["backbone"]), r["crop_size"])
    crops = torch.rand(r["batch_size"], 3, r["crop_size"], r["crop_size"]) * 255
    grid = -(-r["crop_size"] // 4)
    # relation labels: background, two classes and unsure cells, in blocks as CRF labels come
    labels = torch.randint(0, 3, (r["batch_size"], grid // 8 + 1, grid // 8 + 1))
    labels = labels.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :grid, :grid].contiguous()
    labels[:, ::7] = 255
    edge, dp = irn.trainable_groups()
    irn_opt = torch.optim.SGD(edge + dp, lr=1e-3, momentum=0.9)
    irn.train()

    def irn_step():
        logits, disp = irn(crops)
        loss = sum(irn_losses(logits, disp, labels, r["radius"]).values())
        irn_opt.zero_grad()
        loss.backward()
        irn_opt.step()

    return cpu_per_step(cam_step, steps), cpu_per_step(irn_step, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="synthetic")
    ap.add_argument("--archs", nargs="+", default=["resnet", "efficientnet_lite0"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="config override, as wsis --set")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    print(f"preset {args.preset}; CPU seconds per training step, 1 thread, mean of {args.steps}")
    print(f"{'backbone.arch':<20} {'train_cam step':>15} {'train_irn step':>15}")
    for arch in args.archs:
        cam, irn = step_costs(args.preset, arch, args.steps, args.set)
        print(f"{arch:<20} {cam:15.2f} {irn:15.2f}", flush=True)


if __name__ == "__main__":
    main()
