"""Real-photo benchmark: the pseudo-label pipeline on coco-mini's 260 VOC-class photos with the
real-photo preset (EfficientNet-Lite0 from the installed wheel), on this machine's CPU.

Prints one table:
  - CAM mIoU at the preset's background threshold and at the best one, and the all-background
    baseline;
  - random-walk semantic mIoU;
  - instance pseudo-labels: VOC mAP25/50/70/75, COCO AP/AP50/AP75 (pycocotools), instances per
    image against the ground truth's;
  - the same instance scores for (a) CAM only: the 4-connected components of each class's
    region in the CAM label map (at the preset's threshold), scored by the CAM's mean over each;
    (b) the paper's IRN settings, run on a copy of the work dir, when the preset differs;
    (c) ground-truth CAMs with this run's IRNet outputs (boundary map, displacement field):
    ``wsis diagnose --oracles cam --figures 0`` on the work dir (its "cam" row; it replaces an
    earlier diagnosis in ``<work>/diagnose``), what IRNet contributes when the CAMs are ideal;
  - seconds per photo for each stage and all together, and peak RSS.
With ``--json FILE`` the figures are also written under fixed keys (percentages, 0-100).

Each stage runs as its own ``wsis run --stage X`` process, so its time and peak RSS are its own.
A rerun with the same ``--work`` reuses what is done (use ``--force`` to time everything).

    python benchmarks/real_photos.py                             # ../shared/data/coco-mini
    python benchmarks/real_photos.py --data DIR --json out.json  # any folder with images/ and instances_voc20.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import child   # benchmarks/pipeline.py: one wsis command, then its peak RSS

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["train_cam", "make_cam", "eval_cam", "ir_label", "train_irn", "irn_infer", "sem_seg", "eval_sem_seg",
          "ins_seg", "export", "eval_ins_seg"]
EVALUATION = {"eval_cam", "eval_sem_seg", "eval_ins_seg"}     # scoring, not part of making pseudo-labels
# The paper's VOC settings for the stages after the CAMs (Ahn et al., CVPR 2019; base.toml)
PAPER_IRN = {"ir_label.fg_thres": 0.30, "ir_label.bg_thres": 0.05, "ir_label.crf_scale": 1.0, "sem_seg.bg_threshold": 0.25,
             "ins_seg.bg_threshold": 0.25, "random_walk.exp_times": 8, "ins_seg.exp_times": -1,
             "ins_seg.clustering": "weak_region", "ins_seg.score": "peak"}
PAPER_DOWNSTREAM = ["ir_label", "train_irn", "irn_infer", "sem_seg", "ins_seg", "export", "eval_ins_seg"]


def run_stage(stage: str, common: list[str], *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "run", "--stage", stage, *common, *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"{stage} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    done = re.search(rf"^{stage}: done in ([0-9.]+) s", proc.stderr, re.M)
    up_to_date = re.search(rf"^{stage}: up to date", proc.stderr, re.M)
    return {"seconds": float(done.group(1)) if done else (0.0 if up_to_date else wall),
            "cached": bool(up_to_date and not done),
            "peak_rss_mb": json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]}


def cam_oracle(common: list[str], work: Path) -> dict:
    """(c): ``wsis diagnose --oracles cam --figures 0`` on the run's work dir, in its own
    process. Its "cam" row re-synthesises the instances with ground-truth CAMs and the cached
    irn_infer outputs; its baseline row, with the cached CAMs, is the run's pseudo-labels again."""
    from pipelines.stages.diagnosis import DIAGNOSE_DIR, RESULT_FILE
    result = work / DIAGNOSE_DIR / RESULT_FILE
    result.unlink(missing_ok=True)          # an earlier diagnosis of this work dir is not this one
    cmd = [sys.executable, __file__, "--child", "diagnose", "--oracles", "cam", "--figures", "0", *common]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        sys.exit(f"wsis diagnose failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rows = json.loads(result.read_text())["rows"]
    return {"map50": 100 * rows["cam"]["mAP50"], "map70": 100 * rows["cam"]["mAP70"],
            "baseline_map50": 100 * rows["baseline"]["mAP50"], "seconds": time.monotonic() - t0,
            "peak_rss_mb": json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]}


def cam_only_instances(high_res: np.ndarray, classes: np.ndarray, bg_threshold: float):
    """Baseline (a): the CAM label map (a constant background channel at ``bg_threshold``,
    argmax), each class's region split into 4-connected components; each component is one
    detection scored by that class's CAM mean over it."""
    from scipy import ndimage
    label = np.concatenate([np.full((1,) + high_res.shape[1:], bg_threshold, np.float32), high_res]).argmax(0)
    masks, out_classes, scores = [], [], []
    for k, c in enumerate(classes):
        components, n = ndimage.label(label == k + 1)     # default structure: 4-connectivity
        for i in range(1, n + 1):
            m = components == i
            masks.append(m)
            out_classes.append(int(c))
            scores.append(float(high_res[k][m].mean()))
    h, w = high_res.shape[1:]
    return np.array(masks, bool).reshape(-1, h, w), np.array(out_classes, np.int64), np.array(scores, np.float64)


def score_cam_only(cfg: dict, dataset, work: Path) -> dict:
    from wsis.algorithms.labels import resize_scores
    from wsis.io import read_npz
    from wsis.metrics import InstanceAP, mean_ap
    ap = InstanceAP(dataset.num_classes)
    for image_id in dataset.ids(cfg["data"]["infer_split"]):
        gt = dataset.instance_gt(image_id)
        z = read_npz(work / "make_cam" / f"{image_id}.npz")
        high = resize_scores(z["high_res"].astype(np.float32), gt.masks.shape[1:]) if len(z["classes"]) else \
            np.zeros((0,) + gt.masks.shape[1:], np.float32)
        ap.add(*cam_only_instances(high, z["classes"], cfg["eval_cam"]["bg_threshold"]), gt.masks, gt.classes)
    return {f"map{round(100 * t)}": 100 * mean_ap(v) for t, v in ap.result().items()}


def instance_counts(cfg: dict, dataset, work: Path) -> tuple[float, float]:
    """Exported pseudo-instances per image, and ground-truth (non-crowd) instances per image."""
    export = json.loads((work / "export" / "pseudo_labels.json").read_text())
    ids = dataset.ids(cfg["data"]["infer_split"])
    gt = sum(len(dataset.instance_gt(i).classes) for i in ids)
    return len(export["annotations"]) / len(ids), gt / len(ids)


def instance_figures(work: Path, split: str) -> dict:
    m = json.loads((work / "eval_ins_seg" / "metrics.json").read_text())[split]
    return {"map25": 100 * m["mAP25"], "map50": 100 * m["mAP50"], "map70": 100 * m["mAP70"],
            "map75": 100 * m["mAP75"], "coco_ap": 100 * m["coco_AP"], "coco_ap50": 100 * m["coco_AP50"],
            "coco_ap75": 100 * m["coco_AP75"],
            "ap50_per_class": {k: (None if v is None else 100 * v) for k, v in m["ap50_per_class"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "coco-mini"),
                    help="a folder with images/ and instances_voc20.json")
    ap.add_argument("--work", default=None, help="work dir (default: a temp dir); a rerun reuses its cache")
    ap.add_argument("--preset", default="coco")
    ap.add_argument("--config", default=str(ROOT / "configs" / "photos.toml"), help="the recipe (default: photos)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override, repeatable")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--force", action="store_true", help="recompute every stage")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "images").is_dir() or not (data / "instances_voc20.json").is_file():
        sys.exit(f"{data}: needs images/ and instances_voc20.json (see ../shared/data/coco-mini/README.md)")
    work = Path(args.work or tempfile.mkdtemp(prefix="wsis-real-"))
    sets = [a for o in args.overrides for a in ("--set", o)]
    common = ["--dataset", args.preset, "--config", args.config, "--data-root", str(data / "images"),
              "--annotations", str(data / "instances_voc20.json"), "--work-dir", str(work), *sets]

    sys.path.insert(0, str(ROOT))
    from wsis.config import load_config
    from wsis.data import open_dataset
    cfg = load_config(args.preset, args.config, overrides=["data.annotations=" + str(data / "instances_voc20.json"),
                                              *args.overrides])
    dataset = open_dataset(args.preset, cfg, data / "images", None)
    split = cfg["data"]["infer_split"]
    photos = len(dataset.ids(split))
    print(f"{photos} photos from {data}, preset {args.preset} + {Path(args.config).name} ({cfg['backbone']['arch']}), "
          f"{os.cpu_count()} CPU cores, work dir {work}", flush=True)

    t_start = time.monotonic()
    timings = {}
    for stage in STAGES:
        timings[stage] = run_stage(stage, common, *(["--force"] if args.force else []))
        r = timings[stage]
        print(f"  {stage:<13} {r['seconds']:8.1f} s  {r['seconds'] / photos:6.3f} s/photo  "
              f"{r['peak_rss_mb']:6.0f} MB{'  (cached)' if r['cached'] else ''}", flush=True)

    cam = json.loads((work / "eval_cam" / "metrics.json").read_text())[split]
    sem = json.loads((work / "eval_sem_seg" / "metrics.json").read_text())[split]
    ins = instance_figures(work, split)
    per_image, gt_per_image = instance_counts(cfg, dataset, work)
    cam_only = score_cam_only(cfg, dataset, work)
    oracle = cam_oracle(common, work)
    print(f"  {'diagnose cam':<13} {oracle['seconds']:8.1f} s  {oracle['seconds'] / photos:6.3f} s/photo  "
          f"{oracle['peak_rss_mb']:6.0f} MB  (ground-truth CAMs, not a pseudo-label stage)", flush=True)

    paper = None
    differs = {k: v for k, v in PAPER_IRN.items() if cfg[k.split(".")[0]][k.split(".")[1]] != v}
    if differs:
        paper_work = work.parent / (work.name + "-paper-irn")
        if not paper_work.exists():
            shutil.copytree(work, paper_work, ignore=shutil.ignore_patterns(".lock"))   # the engine recomputes what the settings change
        paper_common = [str(paper_work) if a == str(work) else a for a in common]
        for k, v in differs.items():
            paper_common += ["--set", f"{k}={json.dumps(v)}"]
        for stage in PAPER_DOWNSTREAM:
            run_stage(stage, paper_common)
        paper = instance_figures(paper_work, split)

    making = [s for s in STAGES if s not in EVALUATION]
    seconds = sum(timings[s]["seconds"] for s in making)
    figures = {
        "cam_miou": 100 * cam["miou"], "cam_miou_best": 100 * cam["best_miou"],
        "cam_best_threshold": cam["best_bg_threshold"], "all_background_miou": 100 * cam["all_background_miou"],
        "sem_miou": 100 * sem["miou"],
        **{k: v for k, v in ins.items() if k != "ap50_per_class"},
        "instances_per_image": per_image, "gt_instances_per_image": gt_per_image,
        "cam_only_map50": cam_only["map50"], "cam_only": cam_only,
        "cam_oracle_map50": oracle["map50"], "cam_oracle": oracle,
        "paper_irn": None if paper is None else {k: v for k, v in paper.items() if k != "ap50_per_class"},
        "paper_irn_overrides": differs,
        "seconds_per_photo": seconds / photos,
        "stage_seconds_per_photo": {s: timings[s]["seconds"] / photos for s in STAGES},
        "peak_rss_mb": max(t["peak_rss_mb"] for t in timings.values()),
        "ap50_per_class": ins["ap50_per_class"],
        "photos": photos, "benchmark_minutes": (time.monotonic() - t_start) / 60,
    }

    print(f"\n{'figure':<44} {'value':>8}")
    rows = [("CAM mIoU at bg " + str(cam["bg_threshold"]), figures["cam_miou"]),
            (f"CAM mIoU at its best bg ({cam['best_bg_threshold']})", figures["cam_miou_best"]),
            ("all-background mIoU", figures["all_background_miou"]),
            ("random-walk semantic mIoU", figures["sem_miou"])]
    rows += [(f"pseudo-labels {k}", ins[k]) for k in ("map25", "map50", "map70", "map75", "coco_ap",
                                                        "coco_ap50", "coco_ap75")]
    rows += [("pseudo-instances per image (GT %.2f)" % gt_per_image, per_image)]
    rows += [(f"(a) CAM only {k}", v) for k, v in cam_only.items()]
    if paper is not None:
        rows += [(f"(b) paper IRN settings {k}", paper[k]) for k in ("map25", "map50", "map70", "map75", "coco_ap")]
    else:
        rows += [("(b) paper IRN settings", "= preset")]
    rows += [(f"(c) GT CAMs + this run's IRNet {k}", oracle[k]) for k in ("map50", "map70")]
    rows += [("seconds per photo, all pseudo-label stages", figures["seconds_per_photo"]),
             ("peak RSS (MB)", figures["peak_rss_mb"]),
             ("benchmark minutes", figures["benchmark_minutes"])]
    for name, value in rows:
        print(f"{name:<44} {value:>8.2f}" if isinstance(value, float) else f"{name:<44} {value:>8}")
    print("\nAP50 per class: " + ", ".join(f"{k} {v:.1f}" for k, v in ins["ap50_per_class"].items() if v is not None))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(ROOT))
        child(sys.argv[2:])
    else:
        main()
