"""Does the review queue put the worst pseudo-labels first? Figures on a finished run.

Reads a work dir where ins_seg (and sem_seg, and train_seg if you want the model signal) are
done, on a dataset with ground truth (the synthetic one), and prints, for the combined
confidence and for each signal alone: the mean ground-truth IoU (confidence.matched_quality
of the image's instances against its ground truth) of the first and last 10 % of the queue and
the Spearman rank correlation between confidence and that IoU.

    python benchmarks/review_order.py --work-dir runs/synthetic            # the synthetic default
    python benchmarks/review_order.py --work-dir W --config C.toml --data-root D
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--no-model", action="store_true", help="leave the trained model's agreement out")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(1)
    from wsis.cli import Session
    from wsis.review import confidence as conf
    from pipelines.stages.report import _finished_job, queue_of

    session = Session(args.work_dir, "synthetic", args.data_root, None, None, args.config, (), "cpu")
    pipeline = session.pipeline()
    job = _finished_job(pipeline)
    if args.no_model:
        job.inputs.pop("seg_infer", None)
    queue = queue_of(job)
    quality = {e["id"]: e["gt_quality"] for e in queue["images"]}

    def figures(name: str, image_conf: dict[str, float]) -> None:
        order = conf.review_order(image_conf)
        first, last = conf.first_last_fraction([quality[i] for i in order], 0.1)
        rho = spearmanr([image_conf[i] for i in order], [quality[i] for i in order]).statistic
        print(f"{name:<12} first 10 %: {first:.3f}   last 10 %: {last:.3f}   Spearman {rho:+.3f}")

    n = len(queue["images"])
    print(f"{n} images, mean ground-truth IoU {np.mean(list(quality.values())):.3f}; signals {queue['signals']}")
    figures("combined", {e["id"]: e["confidence"] for e in queue["images"]})
    for signal in queue["signals"]:
        # the signal alone: its least confident instance (0 for an image without instances)
        figures(signal, {e["id"]: min((i["signals"][signal] for i in e["instances"]), default=0.0)
                         for e in queue["images"]})
    for signal in sorted({k for e in queue["images"] for k in e["signals"]}):
        figures(f"image {signal}", {e["id"]: e["signals"][signal] for e in queue["images"]})


if __name__ == "__main__":
    main()
