"""Review-loop benchmark: a simulated reviewer on real photos, and how the masks of the photos
nobody reviewed improve as reviews accumulate (issue 27).

A seeded draw (seed 0) of 30 % of the photos is never offered for review; every figure of every
round and every baseline is scored on those photos only, so a round cannot look better merely
because its hard photos were reviewed away. The reviewed percentages count all photos.

Each round of the loop (``--rounds 0,10,40``, cumulative) continues from a copy of the previous
round's work dir: it asks wsis for its own review queue (``wsis review export --format coco``,
least confident first), keeps the first photos that are neither reviewed nor scoring photos,
replaces their annotations with the ground-truth masks (the non-crowd annotations of the
dataset's file), imports that file with ``wsis review import`` - the path a person's file takes
- and reruns the stages the figures need (``wsis run --stage sem_seg``, ``export``,
``seg_infer``: the engine recomputes what the import changed; seg_infer's predictions give the
next round's queue its model agreement, as ``wsis run`` gives a user's). Per round, on the
scoring photos:

  - cam_miou: CAM mIoU (make_cam's high-res CAMs against a constant background at
    eval_cam.bg_threshold, argmax, against the ground-truth semantic masks, as eval_cam);
  - sem_miou: the random walk's semantic mIoU (sem_seg's label PNGs);
  - map25 / map50 / map70: VOC mask AP of the exported pseudo-labels (export/pseudo_labels.json,
    wsis.metrics.InstanceAP), coco_ap: pycocotools' segm AP of the same;
  - model_map50: VOC mask AP at IoU 0.5 of the instance model that train_seg trains, predicting
    on the scoring photos as eval_seg and ``wsis predict`` do (wsis.inference.predict_image at
    seg.score_threshold, 0.05), scored with InstanceAP in this process. Not seg_infer's stored
    predictions: they keep scores of at least 0.3 only (the review queue's cut), and the
    briefly trained model of round 0 has at most one such detection a photo (0.5 on average),
    so every method would score 0;
  - rerun_seconds: the wall time of the round's ``wsis run`` commands.

Baselines at the same reviewed percentages, scored on the same photos:
  - random: the same loop, the photos to review drawn at random (seeded) among the non-scoring
    photos; map50 of its pseudo-labels (its other pseudo-label figures are kept too);
  - seg_only: today's loop, where corrections reach train_seg only: the loop's reviewed photos,
    imported the same way, with review.cam_loss / relation_labels / irn_targets / export off;
    map50 of its model;
  - supervised_only: the same instance model and backbone trained on the reviewed photos'
    ground truth alone (seg.train_json), for as many training steps as the loop's model gets;
    map50 of its model.

``--ablation P`` reruns the loop's round at P % once per upstream part switched off
(review.cam_loss, relation_labels, irn_targets, export; each from a copy of that round's work
dir, so the engine recomputes what the switch changes) and reports its pseudo-label figures
under ``ablation``: what each part adds on its own.

``reviewed_exact`` is the share of the loop's reviewed photos (last round) whose exported
instances equal the imported masks exactly (as multisets of (class, mask)).

Every train_seg of every method uses the one light recipe in SEG_SETTINGS below (CPU budget).
The work root holds a work dir per method and round (loop-010, random-010, seg_only-010, ...)
and, under benchmark/, each round's selection, the file it imported and its figures; a rerun
with the same --work reuses what is finished.

    python benchmarks/review_loop.py                                   # ../shared/data/coco-mini
    python benchmarks/review_loop.py --json loop.json --plot loop.png  # also the figures and the curve
    python benchmarks/review_loop.py --photos 24 --rounds 0,20 --work /tmp/rl \\
        --set train_cam.epochs=1 --set train_irn.epochs=1              # a quick development run
    python benchmarks/review_loop.py --quick --data DIR --work /tmp/q  # tiny settings (CI smoke run)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WSIS = [sys.executable, "-m", "wsis.cli"]
SCORING_SHARE, SCORING_SEED = 0.30, 0     # the photos never offered for review
RANDOM_SEED = 1                           # the random baseline's draw (another stream than the scoring draw)
BASELINES = ("random", "seg_only", "supervised_only")
REVIEW_OFF = {"review.cam_loss": False, "review.relation_labels": False, "review.irn_targets": False,
              "review.export": False}     # seg_only: reviews reach merge_review and train_seg only
THRESHOLDS = (0.25, 0.5, 0.7)
ROUND_KEYS = ("reviewed_percent", "cam_miou", "sem_miou", "map25", "map50", "map70", "coco_ap", "model_map50",
              "rerun_seconds")

# The benchmark's train_seg recipe, applied to every method alike (the loop's model at every
# round, seg_only, supervised_only): SOLOv2 with the preset's backbone (EfficientNet-Lite0,
# ImageNet, stages past the first trained, as seg.frozen_stages = -1 gives) and the CPU-sized
# head of configs/synthetic.toml (2 convs of 64 channels, 64-channel neck and kernels), at 320 px
# with SOLO's scale ranges scaled by 320 / 512, 4 epochs of batch 8 (128 steps on 260 photos).
# Chosen for the 2-hour budget of the default run on this 2-core CPU (AMD EPYC, 2 vCPUs), which
# trains seven such models (loop rounds 0, 10, 40; seg_only and supervised_only at 10 and 40)
# beside five runs of the pseudo-label pipeline (loop rounds 0, 10, 40; random at 10 and 40;
# 15-17 min each, ~80 min in all). Measured 2026-12-06: a step of 8 photos costs 1.42 s wall
# (2 threads; the faster half of 8 steps, at nice -20 beside other work) at 320 px, 1.08 s at
# 256, 2.08 s at 384, 1.04 s at 320 with the whole backbone frozen; train_seg on the 260 photos
# took 180 s (~190 s with the process's start), seg_infer on them 41 s (the loop's rounds only),
# scoring a model on the 78 scoring photos ~15 s. Seven models: ~25 min; with the pipeline runs,
# the queue exports and imports (~10 s and ~2 s) the default run should take ~105-115 min.
SEG_SETTINGS = {
    "seg.model": "solov2",
    "seg.input_size": 320,
    "seg.fpn_channels": 64,
    "seg.epochs": 4,
    "seg.batch_size": 8,
    "seg.warmup_iters": 50,
    "solo.head_convs": 2,
    "solo.head_channels": 64,
    "solo.kernel_channels": 64,
    "solo.scale_ranges": [[1, 35], [18, 70], [35, 140], [70, 280], [140, 560]],
}

# --quick: tiny settings for a smoke run (CI): every stage runs, on small images, for one epoch
QUICK_SETTINGS = {
    "train_cam.epochs": 1, "train_cam.batch_size": 4, "train_cam.resize_long": [64, 96], "train_cam.crop_size": 64,
    "train_cam.cached_views": 1,
    "make_cam.scales": [1.0], "make_cam.flip": False,
    "ir_label.iterations": 2,
    "train_irn.epochs": 1, "train_irn.batch_size": 4, "train_irn.crop_size": 96, "train_irn.radius": 5,
    "random_walk.exp_times": 4,
    "seg.input_size": 64, "seg.epochs": 1, "seg.batch_size": 4, "seg.warmup_iters": 1,
    "run.chunk_size": 4, "run.workers": 1,
}


def setting(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"      # a JSON scalar or list is a TOML literal


class Bench:
    """The benchmark's fixed inputs: data, options, the dataset as wsis reads it, the scoring photos."""

    def __init__(self, args):
        self.data = Path(args.data).resolve()
        self.images = self.data / "images"
        source = self.data / "instances_voc20.json"
        if not self.images.is_dir() or not source.is_file():
            sys.exit(f"{self.data}: needs images/ and instances_voc20.json (see ../shared/data/coco-mini/README.md)")
        self.root = Path(args.work).resolve()
        (self.root / "benchmark").mkdir(parents=True, exist_ok=True)
        self.coco = json.loads(source.read_text())
        if args.photos:
            keep = self.coco["images"][:args.photos]
            ids = {im["id"] for im in keep}
            self.coco = dict(self.coco, images=keep, annotations=[a for a in self.coco["annotations"]
                                                                  if a["image_id"] in ids])
            self.annotations = self.root / f"instances_voc20_first{args.photos}.json"
            write_json_if_changed(self.annotations, self.coco)
        else:
            self.annotations = source
        self.config = str(Path(args.config).resolve())
        self.sets = {**SEG_SETTINGS, **(QUICK_SETTINGS if args.quick else {})}
        self.user_sets = list(args.overrides)
        self.device = args.device

        from wsis.config import load_config
        from wsis.data import open_dataset
        overrides = [setting(k, v) for k, v in self.sets.items()] + self.user_sets
        self.cfg = load_config("coco", self.config, overrides=["data.annotations=" + str(self.annotations),
                                                               *overrides])
        self.ds = open_dataset("coco", self.cfg, self.images, None)
        self.ids = list(self.ds.ids(self.cfg["data"]["infer_split"]))
        n = len(self.ids)
        draw = np.random.default_rng(SCORING_SEED).choice(n, size=round(SCORING_SHARE * n), replace=False)
        self.scoring = [self.ids[i] for i in sorted(draw)]
        scoring = set(self.scoring)
        self.reviewable = [i for i in self.ids if i not in scoring]
        self.coco_id = {k: self.ds.image_ids[k] for k in self.ids}        # wsis id -> the file's image id
        self.by_file = {self.ds.files[k]: k for k in self.ids}
        self.entries = {im["id"]: im for im in self.coco["images"]}
        self.gt_anns: dict[int, list[dict]] = {}
        for a in self.coco["annotations"]:
            if not a.get("iscrowd", 0):
                self.gt_anns.setdefault(a["image_id"], []).append(a)
        self.state_check(args)

    def state_check(self, args) -> None:
        """A work root serves one benchmark: other data or settings would mix rounds of both."""
        state = {"data": str(self.data), "photos": args.photos, "config": self.config,
                 "sets": [setting(k, v) for k, v in self.sets.items()] + self.user_sets,
                 "scoring": self.scoring}
        path = self.root / "benchmark" / "settings.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if old != state:
                diff = [k for k in state if old.get(k) != state[k]]
                sys.exit(f"{self.root}: holds a benchmark run with other {', '.join(diff)}; use another --work "
                         f"(or delete it)")
        else:
            path.write_text(json.dumps(state, indent=1))

    def common(self, work: Path, extra_sets: dict | None = None) -> list[str]:
        sets = [setting(k, v) for k, v in self.sets.items()] + self.user_sets + \
               [setting(k, v) for k, v in (extra_sets or {}).items()]
        return ["--dataset", "coco", "--config", self.config, "--data-root", str(self.images),
                "--annotations", str(self.annotations), "--work-dir", str(work), "--device", self.device,
                *[a for s in sets for a in ("--set", s)]]

    def gt_document(self, ids: list[str], images: list[dict] | None = None) -> dict:
        """A COCO file of ``ids`` with their ground-truth masks (non-crowd annotations): the
        given image entries (a review export's, matched by file name) or the dataset's, and
        the dataset's categories."""
        images = images or [self.entries[self.coco_id[i]] for i in ids]
        anns = []
        for im, image_id in zip(images, ids):
            for a in self.gt_anns.get(self.coco_id[image_id], []):
                anns.append(dict(a, id=len(anns) + 1, image_id=im["id"]))
        return {"info": {"description": "review_loop.py: ground truth as a simulated reviewer's corrections"},
                "images": [{k: im[k] for k in ("id", "file_name", "height", "width")} for im in images],
                "annotations": anns, "categories": self.coco["categories"]}


def write_json_if_changed(path: Path, doc) -> None:
    data = json.dumps(doc)
    if not path.is_file() or path.read_text() != data:
        path.write_text(data)


def wsis(bench: Bench, label: str, args: list[str], log: Path) -> tuple[float, list[str]]:
    """Run one wsis command; its output goes to ``log``. Returns (wall seconds, stages it computed)."""
    t0 = time.monotonic()
    proc = subprocess.run(WSIS + args, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.monotonic() - t0
    with log.open("a") as f:
        f.write(f"$ wsis {' '.join(args)}\n{proc.stdout}{proc.stderr}(exit {proc.returncode}, {wall:.1f} s)\n\n")
    if proc.returncode != 0:
        sys.exit(f"{label}: wsis {' '.join(args[:3])} failed (exit {proc.returncode}); log: {log}\n"
                 f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    ran = re.findall(r"^(\w+): done in [0-9.]+ s", proc.stderr + proc.stdout, re.M)
    return wall, ran


class Method:
    """One work dir of the benchmark (a method at a reviewed percentage)."""

    def __init__(self, bench: Bench, method: str, percent: int, extra_sets: dict | None = None):
        self.bench, self.method, self.percent = bench, method, percent
        self.name = f"{method}-{percent:03d}"
        self.work = bench.root / self.name
        self.meta = bench.root / "benchmark" / self.name
        self.meta.mkdir(parents=True, exist_ok=True)
        self.log = self.meta / "wsis.log"
        self.extra_sets = extra_sets or {}

    def common(self) -> list[str]:
        return self.bench.common(self.work, self.extra_sets)

    def start_from(self, previous: "Method | None") -> None:
        """A copy of the previous round's work dir (outputs stay inspectable per round)."""
        if self.work.exists() or previous is None:
            return
        partial = self.work.with_name(self.work.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(previous.work, partial, ignore=shutil.ignore_patterns(".lock"))
        partial.rename(self.work)

    def reviewed(self) -> set[str]:
        store = self.work / "review" / "reviewed.json"
        return set(json.loads(store.read_text())["images"]) if store.is_file() else set()

    def review(self, ids: list[str], images: list[dict] | None = None) -> None:
        """Import the ground truth of ``ids`` (those not in the store yet) as reviewed."""
        todo = [i for i in ids if i not in self.reviewed()]
        if not todo:
            return
        keep = [k for k, i in enumerate(ids) if i in todo]
        doc = self.bench.gt_document([ids[k] for k in keep], [images[k] for k in keep] if images else None)
        path = self.meta / "review_import.json"
        path.write_text(json.dumps(doc))
        seconds, _ = wsis(self.bench, self.name, ["review", "import", str(path), "--empty-images", "reviewed",
                                                  "--unchanged-images", "reviewed", *self.common()], self.log)
        print(f"  {self.name}: wsis review import ({len(todo)} photos) {seconds:.1f} s", flush=True)
        missing = set(ids) - self.reviewed()
        if missing:
            sys.exit(f"{self.name}: {len(missing)} photos were not stored as reviewed, e.g. {sorted(missing)[0]}")

    def run(self, stages: list[str]) -> float:
        """``wsis run --stage X`` for each stage; the wall time of those that computed something
        (a rerun of a finished round reports the time recorded when it was computed)."""
        timing = self.meta / "timing.json"
        total, ran = 0.0, []
        for stage in stages:
            seconds, done = wsis(self.bench, self.name, ["run", "--stage", stage, *self.common()], self.log)
            total += seconds
            ran += done
            print(f"  {self.name}: wsis run --stage {stage:<9} {seconds:7.1f} s"
                  + (f"  (ran {', '.join(done)})" if done else "  (up to date)"), flush=True)
        if ran or not timing.is_file():
            timing.write_text(json.dumps({"seconds": total, "stages": ran}))
        return json.loads(timing.read_text())["seconds"]


def queue_pick(bench: Bench, previous: Method, count: int, into: Path) -> tuple[list[str], list[dict]]:
    """The next ``count`` photos of wsis's own review queue in ``previous``'s work dir, least
    confident first, that are neither reviewed nor scoring photos; with their image entries
    in the export file."""
    top = count + len(bench.scoring)     # enough that ``count`` non-scoring photos are in it
    out = into / "review_export.json"
    seconds, _ = wsis(bench, previous.name, ["review", "export", "--format", "coco", "--top", str(top), "--out",
                                             str(out), *previous.common()], into / "wsis.log")
    print(f"  {previous.name}: wsis review export --top {top}: {seconds:.1f} s", flush=True)
    return pick_from_queue(bench, json.loads(out.read_text()), count, previous.reviewed(), out)


def pick_from_queue(bench: Bench, doc: dict, count: int, done: set[str], where: Path) -> tuple[list[str], list[dict]]:
    """The first ``count`` images of a review export ``doc`` (queue order) that are neither
    scoring photos nor in ``done``, and their image entries there."""
    scoring = set(bench.scoring)
    ids, images = [], []
    for im in doc["images"]:
        image_id = bench.by_file.get(im["file_name"])
        if image_id is None:
            sys.exit(f"{where}: image '{im['file_name']}' is not a photo of the benchmark")
        if image_id in scoring or image_id in done:
            continue
        ids.append(image_id)
        images.append(im)
        if len(ids) == count:
            break
    if len(ids) < count:
        sys.exit(f"{where}: the review queue holds only {len(ids)} of the {count} photos this round needs")
    return ids, images


def selection(method: Method, pick) -> tuple[list[str], list[dict] | None]:
    """This round's newly reviewed photos: chosen once and recorded, so that a rerun imports
    the same ones."""
    path = method.meta / "selection.json"
    if path.is_file():
        doc = json.loads(path.read_text())
        return doc["ids"], doc["images"]
    ids, images = pick()
    path.write_text(json.dumps({"ids": ids, "images": images}))
    return ids, images


# ---------------------------------------------------------------------------------------------
# Scoring, on the scoring photos only


class NoProgress:
    def update(self, n: int = 1) -> None:
        pass


def gt_file(bench: Bench) -> Path:
    """The scoring photos' ground truth as a COCO file in the dataset's numbering (written
    once, by ``score_instances``)."""
    return bench.root / "benchmark" / "scoring_ground_truth.json"


def decode_export(bench: Bench, work: Path, only: list[str]) -> tuple[dict[str, list], dict]:
    """The instances of export/pseudo_labels.json on the photos ``only``, per wsis image id:
    [(mask, class index, score)]; and the whole file."""
    from wsis.coco import rle_decode
    doc = json.loads((work / "export" / "pseudo_labels.json").read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    image_of = {im["id"]: bench.by_file[im["file_name"]] for im in doc["images"]}
    wanted = set(only)
    out: dict[str, list] = {i: [] for i in image_of.values() if i in wanted}
    for a in doc["annotations"]:
        image_id = image_of[a["image_id"]]
        if image_id in wanted:
            out[image_id].append((rle_decode(a["segmentation"]), bench.ds.class_names.index(names[a["category_id"]]),
                                  float(a.get("score", 1.0))))
    return out, doc


def score(bench: Bench, method: "Method", model: bool) -> dict:
    from pipelines.stages.eval_pseudo import score_instances
    from wsis.algorithms.labels import resize_scores, scores_to_label
    from wsis.coco import coco_evaluate
    from wsis.io import read_label_png, read_npz
    from wsis.metrics import confusion_matrix, mean_ap, mean_iou
    ds, ids, work = bench.ds, bench.scoring, method.work
    n = ds.num_classes + 1
    cam, sem = np.zeros((n, n), np.int64), np.zeros((n, n), np.int64)
    threshold = bench.cfg["eval_cam"]["bg_threshold"]
    for image_id in ids:
        gt = ds.semantic_gt(image_id)
        z = read_npz(work / "make_cam" / f"{image_id}.npz")
        cams = resize_scores(z["high_res"].astype(np.float32), gt.shape)
        cam += confusion_matrix(gt, scores_to_label(cams, z["classes"], threshold), n)
        sem += confusion_matrix(gt, read_label_png(work / "sem_seg" / f"{image_id}.png"), n)
    pseudo, doc = decode_export(bench, work, ids)

    def predict(entry, image_id):
        found = pseudo.get(image_id, [])
        h, w = entry["height"], entry["width"]
        return (np.array([m for m, _, _ in found], bool).reshape(-1, h, w),
                np.array([c for _, c, _ in found], np.int64), np.array([s for _, _, s in found], np.float64))

    aps = score_instances(ds, ids, predict, THRESHOLDS, gt_file(bench), NoProgress())
    keep = {bench.coco_id[i] for i in ids}
    coco = coco_evaluate(gt_file(bench), [a for a in doc["annotations"] if a["image_id"] in keep])
    figures = {"cam_miou": 100 * mean_iou(cam), "sem_miou": 100 * mean_iou(sem),
               **{f"map{round(100 * t)}": 100 * mean_ap(aps[t]) for t in THRESHOLDS},
               "coco_ap": 100 * coco["AP"], "model_map50": model_map50(bench, method) if model else None}
    return figures


def model_map50(bench: Bench, method: "Method") -> float:
    """VOC mask AP at IoU 0.5 of the model train_seg trained in ``method``'s work dir,
    predicting on the scoring photos as eval_seg and ``wsis predict`` do (wsis.inference.
    predict_image at seg.score_threshold), scored with InstanceAP. Cached beside the work dir
    by the model file's size and mtime."""
    from pipelines.stages import train_seg
    from wsis.device import resolve_device
    from wsis.inference import predict_image
    from wsis.metrics import InstanceAP, mean_ap
    model_file = method.work / "train_seg" / train_seg.MODEL_FILE
    stat = model_file.stat()
    key = [stat.st_size, stat.st_mtime_ns, bench.cfg["seg"]["score_threshold"], bench.scoring]
    cache = method.meta / "model_map50.json"
    if cache.is_file():
        doc = json.loads(cache.read_text())
        if doc["key"] == key:
            return doc["map50"]
    device = resolve_device(bench.device)
    model, arch, names = train_seg.load_trained(method.work / "train_seg", device)
    to_dataset = np.array([bench.ds.class_names.index(n) if n in bench.ds.class_names else -1 for n in names],
                          np.int64)
    ap = InstanceAP(bench.ds.num_classes, (0.5,))
    for image_id in bench.scoring:
        pred = predict_image(model, bench.ds.load_image(image_id, original=True), arch["input_size"], device,
                             bench.cfg["seg"]["score_threshold"])
        gt = bench.ds.instance_gt(image_id)
        ap.add(pred["masks"], to_dataset[pred["labels"]], pred["scores"], gt.masks, gt.classes)
    value = 100 * mean_ap(ap.result()[0.5])
    cache.write_text(json.dumps({"key": key, "map50": value}))
    return value


def mask_key(mask: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(mask.astype(bool)).tobytes() + str(mask.shape).encode()).hexdigest()


def reviewed_exact(bench: Bench, work: Path, reviewed: list[str]) -> tuple[float, list[str]]:
    """The share of ``reviewed`` whose exported instances equal their imported masks (the
    ground-truth annotations the simulated reviewer handed in, decoded with pycocotools), as
    multisets of (class, mask); and the photos that differ."""
    from wsis.review.polygons import polygons_to_mask
    from wsis.coco import rle_decode
    from pycocotools import mask as mask_utils
    exported, _ = decode_export(bench, work, reviewed)
    cat_index = {c["id"]: bench.ds.class_names.index(c["name"]) for c in bench.coco["categories"]}
    differ = []
    for image_id in reviewed:
        im = bench.entries[bench.coco_id[image_id]]
        h, w = im["height"], im["width"]
        imported = []
        for a in bench.gt_anns.get(bench.coco_id[image_id], []):
            seg = a["segmentation"]
            if isinstance(seg, list):
                m = polygons_to_mask(seg, h, w)
            else:
                m = rle_decode(mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg)
            if m.any():             # an empty mask is not an instance (wsis review import drops it)
                imported.append((cat_index[a["category_id"]], mask_key(m)))
        got = [(c, mask_key(m)) for m, c, _ in exported.get(image_id, [])]
        if sorted(imported) != sorted(got):
            differ.append(image_id)
    return (1 - len(differ) / len(reviewed) if reviewed else 1.0), differ


# ---------------------------------------------------------------------------------------------


def count_for(percent: int, photos: int) -> int:
    return round(percent * photos / 100)


def supervised_epochs(bench: Bench, reviewed: int) -> int:
    """Epochs that give the supervised-only model as many training steps as the loop's model
    (steps per epoch = photos // batch, as the trainer counts them)."""
    s = bench.cfg["seg"]
    batch = s["batch_size"]
    loop_steps = s["epochs"] * max(1, len(bench.ids) // min(batch, len(bench.ids)))
    return max(1, round(loop_steps / max(1, reviewed // min(batch, reviewed))))


def table(rounds: list[dict], baselines: dict) -> str:
    head = (f"{'reviewed %':>10} {'CAM mIoU':>9} {'sem mIoU':>9} {'mAP25':>6} {'mAP50':>6} {'mAP70':>6} "
            f"{'COCO AP':>8} {'model50':>8} {'rerun s':>8} | {'random':>7} {'seg_only':>9} {'sup_only':>9}")
    lines = [head, "-" * len(head)]

    def cell(v, width):
        return f"{v:>{width}.1f}" if isinstance(v, (int, float)) else f"{'-':>{width}}"

    for r in rounds:
        b = {m: next((e["map50"] for e in baselines.get(m, []) if e["reviewed_percent"] == r["reviewed_percent"]), None)
             for m in BASELINES}
        lines.append(f"{r['reviewed_percent']:>10.1f} {cell(r['cam_miou'], 9)} {cell(r['sem_miou'], 9)} "
                     f"{cell(r['map25'], 6)} {cell(r['map50'], 6)} {cell(r['map70'], 6)} {cell(r['coco_ap'], 8)} "
                     f"{cell(r['model_map50'], 8)} {cell(r['rerun_seconds'], 8)} | {cell(b['random'], 7)} "
                     f"{cell(b['seg_only'], 9)} {cell(b['supervised_only'], 9)}")
    lines.append("random: mAP50 of its pseudo-labels; seg_only, supervised_only: mAP50 of their models "
                 "(model50: the loop's model)")
    return "\n".join(lines)


def ablation_table(rows: list[dict]) -> str:
    """The loop at one round with each upstream part off in turn: what each part adds."""
    head = f"{'switched off':<22} {'CAM mIoU':>9} {'sem mIoU':>9} {'mAP25':>6} {'mAP50':>6} {'mAP70':>6} {'COCO AP':>8}"
    return "\n".join([head, "-" * len(head)] + [
        f"{r['off']:<22} {r['cam_miou']:>9.1f} {r['sem_miou']:>9.1f} {r['map25']:>6.1f} {r['map50']:>6.1f} "
        f"{r['map70']:>6.1f} {r['coco_ap']:>8.1f}" for r in rows])


def plot(path: Path, result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rounds = result["rounds"]
    zero = next((r for r in rounds if r["reviewed_percent"] == 0), None)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines = [("loop: pseudo-labels", [(r["reviewed_percent"], r["map50"]) for r in rounds], "o-"),
             ("loop: its model", [(r["reviewed_percent"], r["model_map50"]) for r in rounds], "s-")]
    # at 0 % the random loop is the loop, and seg_only's model is the loop's model
    start = {"random": zero and zero["map50"], "seg_only": zero and zero["model_map50"]}
    style = {"random": "o--", "seg_only": "s--", "supervised_only": "^:"}
    label = {"random": "random picks: pseudo-labels", "seg_only": "seg_only (today): model",
             "supervised_only": "supervised only: model"}
    for m, entries in result["baselines"].items():
        if not entries:
            continue
        pts = ([(0.0, start[m])] if start.get(m) is not None else []) + \
              [(e["reviewed_percent"], e["map50"]) for e in entries]
        lines.append((label[m], pts, style[m]))
    for name, pts, fmt in lines:
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], fmt, label=name)
    ax.set_xlabel("photos reviewed (% of all)")
    ax.set_ylabel(f"mAP50 on the {result['eval_photos']} photos never reviewed")
    ax.set_title("Review loop: the unreviewed photos' masks")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "coco-mini"),
                    help="a folder with images/ and instances_voc20.json")
    ap.add_argument("--rounds", default="0,10,40", help="cumulative percent of all photos reviewed")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--plot", default=None, help="also draw the mAP50 curve here (PNG)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "review_loop"),
                    help="work root; a rerun reuses its finished work dirs")
    ap.add_argument("--config", default=str(ROOT / "configs" / "photos.toml"), help="the recipe (default: photos)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override for every wsis command, repeatable")
    ap.add_argument("--baselines", default=",".join(BASELINES), help="which baselines to run ('' for none)")
    ap.add_argument("--photos", type=int, default=None, help="only the first N photos of the set")
    ap.add_argument("--quick", action="store_true", help="tiny settings, for a smoke run")
    ap.add_argument("--ablation", type=int, default=None, metavar="PERCENT",
                    help="also rerun the loop's round at PERCENT with each upstream part off in turn")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t_start = time.monotonic()
    try:
        percents = sorted({int(p) for p in args.rounds.split(",") if p.strip()} | {0})
    except ValueError:
        sys.exit(f"--rounds {args.rounds}: expected whole percentages separated by commas")
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        sys.exit(f"--baselines: unknown '{unknown[0]}' (have: {', '.join(BASELINES)})")
    if args.ablation is not None and args.ablation not in percents[1:]:
        sys.exit(f"--ablation {args.ablation}: not one of the reviewed rounds ({', '.join(map(str, percents[1:]))})")
    if args.photos is not None and args.photos < 4:
        sys.exit("--photos: at least 4")

    bench = Bench(args)
    total = len(bench.ids)
    counts = {p: count_for(p, total) for p in percents}
    if any(p < 0 for p in percents) or counts[percents[-1]] > len(bench.reviewable):
        sys.exit(f"--rounds: at most {100 * len(bench.reviewable) / total:.0f} % of the photos can be reviewed "
                 f"({len(bench.reviewable)} of {total}; the other {len(bench.scoring)} are the scoring photos)")
    print(f"{total} photos from {bench.data}" + (f" (the first {args.photos})" if args.photos else "")
          + f"; {len(bench.scoring)} scoring photos (seed {SCORING_SEED}, never reviewed); rounds "
          + ", ".join(f"{p} % ({counts[p]} photos)" for p in percents)
          + f"; baselines: {', '.join(baselines) or 'none'}; work root {bench.root}; {os.cpu_count()} CPU cores",
          flush=True)
    print("train_seg, every method alike: " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in SEG_SETTINGS.items()
                                                        if not (args.quick and k in QUICK_SETTINGS)), flush=True)
    if args.quick:
        print("--quick: " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in QUICK_SETTINGS.items()), flush=True)
    if args.overrides:
        print("--set: " + ", ".join(args.overrides), flush=True)

    loop_stages = ["sem_seg", "export", "seg_infer"]
    rounds, details, chosen = [], {}, {}
    previous, reviewed = None, []
    for p in percents:
        m = Method(bench, "loop", p)
        print(f"loop, {p} % reviewed:", flush=True)
        m.start_from(previous)
        if counts[p] > len(reviewed):
            new, images = selection(m, lambda: queue_pick(bench, previous, counts[p] - len(reviewed), m.meta))
            reviewed = reviewed + new
            m.review(reviewed[-len(new):], images)
        chosen[p] = list(reviewed)
        seconds = m.run(loop_stages)
        t0 = time.monotonic()
        f = score(bench, m, model=True)
        print(f"  {m.name}: scored in {time.monotonic() - t0:.1f} s", flush=True)
        rounds.append({"reviewed_percent": 100 * counts[p] / total, **{k: f[k] for k in ROUND_KEYS[1:-1]},
                       "rerun_seconds": seconds})
        details[m.name] = {**f, "reviewed_photos": len(reviewed), "rerun_seconds": seconds}
        previous = m
    first = Method(bench, "loop", 0)
    exact, differ = reviewed_exact(bench, previous.work, reviewed)
    details["reviewed_exact_differ"] = differ

    results: dict[str, list] = {b: [] for b in BASELINES}
    later = [p for p in percents if p > 0]
    if "random" in baselines:
        order = list(np.random.default_rng(RANDOM_SEED).permutation(len(bench.reviewable)))
        shuffled = [bench.reviewable[i] for i in order]
        prev = first
        for p in later:
            m = Method(bench, "random", p)
            print(f"random, {p} % reviewed:", flush=True)
            m.start_from(prev)
            m.review(shuffled[:counts[p]])
            seconds = m.run(["sem_seg", "export"])
            f = score(bench, m, model=False)
            results["random"].append({"reviewed_percent": 100 * counts[p] / total, "map50": f["map50"]})
            details[m.name] = {k: v for k, v in f.items() if not k.startswith("model")} | {"rerun_seconds": seconds}
            prev = m
    if "seg_only" in baselines:
        for p in later:
            m = Method(bench, "seg_only", p, REVIEW_OFF)
            print(f"seg_only, {p} % reviewed:", flush=True)
            m.start_from(first)
            m.review(chosen[p])
            seconds = m.run(["export", "train_seg"])
            f = {"model_map50": model_map50(bench, m)}
            same = (m.work / "export" / "pseudo_labels.json").read_bytes() == \
                   (first.work / "export" / "pseudo_labels.json").read_bytes()
            results["seg_only"].append({"reviewed_percent": 100 * counts[p] / total, "map50": f["model_map50"]})
            details[m.name] = {**f, "pseudo_labels_as_round_0": same, "rerun_seconds": seconds}
    if "supervised_only" in baselines:
        for p in later:
            train = bench.root / "benchmark" / f"supervised_only-{p:03d}" / "train.json"
            train.parent.mkdir(parents=True, exist_ok=True)
            write_json_if_changed(train, bench.gt_document(chosen[p]))
            epochs = supervised_epochs(bench, counts[p])
            m = Method(bench, "supervised_only", p, {"seg.train_json": str(train),
                                                           "seg.train_images": str(bench.images),
                                                           "seg.epochs": epochs})
            print(f"supervised_only, {p} % reviewed ({counts[p]} photos, {epochs} epochs):", flush=True)
            m.start_from(first)
            seconds = m.run(["train_seg"])
            f = {"model_map50": model_map50(bench, m)}
            results["supervised_only"].append({"reviewed_percent": 100 * counts[p] / total, "map50": f["model_map50"]})
            details[m.name] = {**f, "train_photos": counts[p], "epochs": epochs, "rerun_seconds": seconds}

    ablation = []
    if args.ablation is not None:
        loop = Method(bench, "loop", args.ablation)
        for key in REVIEW_OFF:
            part = key.split(".")[1]
            m = Method(bench, f"without_{part}", args.ablation, {key: False})
            print(f"loop without {key}, {args.ablation} % reviewed:", flush=True)
            m.start_from(loop)           # the engine recomputes what the switch changes
            seconds = m.run(["sem_seg", "export"])
            f = score(bench, m, model=False)
            ablation.append({"off": key, "reviewed_percent": 100 * counts[args.ablation] / total,
                             **{k: f[k] for k in ROUND_KEYS[1:-2]}, "rerun_seconds": seconds})
        print("\n" + ablation_table(ablation))

    result = {"rounds": rounds, "baselines": results, "ablation": ablation, "reviewed_exact": exact, "eval_photos": len(bench.scoring),
              "seconds": time.monotonic() - t_start,
              "photos": total, "seg_settings": {**SEG_SETTINGS, **({k: v for k, v in QUICK_SETTINGS.items()
                                                                    if k.startswith(("seg.", "solo."))}
                                                                 if args.quick else {})},
              "overrides": args.overrides, "details": details}
    print("\n" + table(rounds, results))
    print(f"reviewed_exact: {exact:.3f} ({len(reviewed) - len(differ)} of {len(reviewed)} reviewed photos export "
          f"exactly their imported masks)" + (f"; differ: {', '.join(differ[:5])}" if differ else ""))
    print(f"scored on {len(bench.scoring)} photos never reviewed; benchmark {result['seconds'] / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(Path(args.plot), result)
        print(f"curve: {args.plot}")


if __name__ == "__main__":
    main()
