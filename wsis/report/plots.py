"""The report's plots, drawn with matplotlib's headless Agg backend into PNG files.

Each function draws one figure from plain data and returns the file written, or None when
there is nothing to draw."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from wsis.io import write_bytes


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _pyplot().close(fig)
    write_bytes(path, buf.getvalue())
    return path


def ap_bars(ap_per_class: dict[str, float | None], path: Path, title: str) -> Path | None:
    names = [n for n, v in ap_per_class.items() if v is not None]
    if not names:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    values = [100 * ap_per_class[n] for n in names]
    ax.bar(names, values, color="#3b75af")
    for x, v in enumerate(values):
        ax.text(x, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("AP at IoU 0.5 (%)")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45 if len(names) > 6 else 0)
    return _save(fig, path)


def coco_pr_curves(gt_path: Path, detections: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{class name: (recall, precision)} at IoU 0.5 from pycocotools' accumulated evaluation
    (101 recall points; classes without ground truth left out)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    results = [{k: d[k] for k in ("image_id", "category_id", "segmentation", "score")} for d in detections]
    if not results:
        return {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(results), iouType="segm")
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, -1]      # IoU 0.5, all recalls, classes, all areas, max dets
    recall = np.asarray(ev.params.recThrs)
    curves = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, k]
        if (p >= 0).any():                                  # -1: no ground truth
            curves[gt.cats[cat_id]["name"]] = (recall, np.where(p < 0, 0.0, p))
    return curves


def pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path | None:
    if not curves:
        return None
    plt = _pyplot()
    # the legend goes beside the axes, so that with VOC's 20 classes it covers neither the
    # curves nor the title; past the colour cycle's 10 colours the line style tells classes apart
    columns = 1 if len(curves) <= 12 else 2
    fig, ax = plt.subplots(figsize=(5 + 1.6 * columns, 3.6))
    for k, (name, (r, p)) in enumerate(curves.items()):
        ax.plot(r, p, label=name, ls=("-", "--", ":", "-.")[k // 10 % 4])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, ncol=columns)
    return _save(fig, path)


def cam_sweep(sweeps: dict[str, dict[str, float]], chosen: float | None, path: Path) -> Path | None:
    """mIoU against the background threshold, one line per split."""
    if not sweeps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for split, sweep in sweeps.items():
        ts = sorted(float(t) for t in sweep)
        ax.plot(ts, [100 * sweep[f"{t:.2f}"] for t in ts], marker="o", ms=3, label=split)
    if chosen is not None:
        ax.axvline(chosen, color="grey", ls="--", lw=1, label=f"bg_threshold {chosen}")
    ax.set_xlabel("CAM background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("CAM threshold sweep")
    ax.legend(fontsize=8)
    return _save(fig, path)


def loss_curves(histories: dict[str, list[dict]], path: Path) -> Path | None:
    """One panel per training stage: the mean loss per epoch and its logged terms."""
    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(histories), figsize=(4 * len(histories), 3.2), squeeze=False)
    for ax, (stage, hist) in zip(axes[0], histories.items()):
        epochs = [h["epoch"] for h in hist]
        for key in hist[0]:
            if key == "epoch":
                continue
            ax.plot(epochs, [h.get(key, np.nan) for h in hist], marker="o", ms=3,
                    lw=2 if key == "loss" else 1, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(f"{stage} loss")
        ax.legend(fontsize=7)
    return _save(fig, path)


def histograms(instances_per_image: list[int], scores: list[float], path: Path) -> Path | None:
    if not instances_per_image:
        return None
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    top = max(instances_per_image)
    a.hist(instances_per_image, bins=np.arange(-0.5, top + 1.5, 1), color="#3b75af", rwidth=0.9)
    a.set_xlabel("instances per image")
    a.set_ylabel("images")
    b.hist(scores, bins=np.linspace(0, 1, 21), color="#e07b39", rwidth=0.9)
    b.set_xlabel("instance score")
    b.set_ylabel("instances")
    return _save(fig, path)


def iou_vs_rank(quality_in_order: list[float], path: Path) -> Path | None:
    """Ground-truth IoU of each image against its rank in the review queue, with a running mean."""
    if not quality_in_order:
        return None
    plt = _pyplot()
    q = np.asarray(quality_in_order, np.float64)
    ranks = np.arange(1, len(q) + 1)
    window = max(1, len(q) // 10)
    running = np.convolve(q, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.scatter(ranks, q, s=8, alpha=0.5, label="image")
    ax.plot(ranks[window - 1:], running, color="#c0392b", lw=2, label=f"mean of {window}")
    ax.set_xlabel("rank in the review queue (1 = least confident)")
    ax.set_ylabel("matched mask IoU vs ground truth")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return _save(fig, path)
