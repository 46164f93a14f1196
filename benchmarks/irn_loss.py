"""IRNet loss forward + backward at the training size: batch 8, crop 512 -> 128 x 128 stride-4
grid, radius 10 (152 directions), CPU, one thread; also path_max alone.

Times are the median of --repeats (wall and process CPU). To compare with another revision,
run the same script against that tree, e.g. for the code before path_max was vectorised:

    python benchmarks/irn_loss.py
    git archive c2dca7c | tar -x -C /tmp/before && PYTHONPATH=/tmp/before python benchmarks/irn_loss.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

if not any(Path(p, "wsis").is_dir() for p in sys.path if p):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsis.algorithms.affinity import path_max  # noqa: E402
from wsis.models.irn import irn_losses  # noqa: E402

BATCH, GRID, RADIUS = 8, 128, 10


def timed(fn, repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return float(np.median(walls)), float(np.median(cpus))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    logits = torch.randn(BATCH, 1, GRID, GRID)
    displacement = torch.randn(BATCH, 2, GRID, GRID)
    labels = torch.randint(0, 3, (BATCH, GRID, GRID))
    labels[:, :12] = 255

    def loss_step():
        lg, dp = logits.clone().requires_grad_(), displacement.clone().requires_grad_()
        losses = irn_losses(lg, dp, labels, RADIUS)
        (losses["boundary"] + losses["displacement"]).backward()
        return losses["boundary"].item(), losses["displacement"].item()

    def path_max_step():
        b = torch.sigmoid(logits[:, 0]).requires_grad_()
        path_max(b, RADIUS).sum().backward()

    values = loss_step()
    print(f"IRNet loss, batch {BATCH}, {GRID}x{GRID} grid, radius {RADIUS}, 1 thread, median of {args.repeats} "
          f"(code from {Path(sys.modules['wsis'].__file__).parent.parent})")
    print(f"  loss values: boundary {values[0]:.6f}, displacement {values[1]:.6f}")
    wall, cpu = timed(loss_step, args.repeats)
    print(f"  loss forward + backward: {wall:.3f} s wall / {cpu:.3f} s CPU")
    wall, cpu = timed(path_max_step, args.repeats)
    print(f"  path_max forward + backward: {wall:.3f} s wall / {cpu:.3f} s CPU")


if __name__ == "__main__":
    main()
