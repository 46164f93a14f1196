"""The review loop: polygons, confidence, export to CVAT / Label Studio / COCO, import, merge."""

import json
import shutil
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from conftest import REVIEW_PARTS_OFF, snapshot, tiny_args, wsis
from test_faults import one_line_error
from wsis.data.synthetic import shape_mask
from wsis.io import read_npz
from wsis.algorithms.margins import instance_margins
from wsis.review.confidence import (first_last_fraction, image_confidence, instance_confidence, match_instances,
                                    matched_quality, review_order, label_agreement)
from wsis.review.polygons import mask_to_polygons, polygons_to_mask

SHAPES = ("disc", "ring", "square", "triangle", "star", "cross")


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("kind", SHAPES)
def test_polygon_round_trip_keeps_holes_and_parts(kind):
    for r, angle in [(5, 0.0), (9, 0.4), (17, 1.1), (30, 2.0)]:
        one = shape_mask(kind, 100, 120, 50.3, 60.7, r, angle)
        two = one | shape_mask(kind, 100, 120, 18, 20, min(r, 12), 1.0)   # a second, separate part
        for mask in (one, two):
            rings = mask_to_polygons(mask)
            back = polygons_to_mask(rings, 100, 120)
            assert iou(mask, back) >= 0.95, (kind, r, angle)
    ring = shape_mask("ring", 100, 120, 50, 60, 30, 0.0)
    assert not polygons_to_mask(mask_to_polygons(ring), 100, 120)[50, 60]   # the hole stays a hole


def test_instance_synthesis_does_not_climb_into_the_review_package():
    """instance_margins is array math of instance synthesis (issue 21, point 8): the ins_seg
    stage imports nothing of wsis.review."""
    import subprocess
    import sys
    code = ("import sys, pipelines.stages.ins_seg; "
            "print([m for m in sys.modules if m.startswith('wsis.review')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_instance_margins_by_hand():
    # two channels over a 1x3 strip; background 0.5
    scores = np.array([[[0.9, 0.6, 0.2]], [[0.1, 0.55, 0.3]]], np.float32)
    inst = np.array([[1, 1, 0]])
    # pixel 0: 0.9 - 0.5 = 0.4; pixel 1: 0.6 - 0.55 = 0.05 -> mean 0.225
    assert np.allclose(instance_margins(scores, inst, 0.5), [0.225])


def test_matching_and_quality_by_hand():
    a = np.zeros((2, 4, 4), bool)
    a[0, :2, :2] = True        # 4 px
    a[1, 2:, 2:] = True
    b = np.zeros((2, 4, 4), bool)
    b[0, :2, :1] = True        # 2 px inside a[0]: IoU 0.5
    b[1, 2:, 2:] = True        # same as a[1] but another class
    pairs = match_instances(a, [0, 1], b, [0, 2])
    assert pairs == [(0, 0, 0.5)]
    assert matched_quality(pairs, 2, 2) == pytest.approx(0.5 / 3)
    assert matched_quality([], 0, 0) == 1.0


def test_label_agreement_and_order_by_hand():
    sem = np.array([[1, 1, 0, 0]], np.uint8)
    masks = np.array([[[True, True, True, False]]])
    per, image = label_agreement(masks, [0], sem)
    assert per[0] == pytest.approx(2 / 3) and image == pytest.approx(2 / 3)
    assert image_confidence(np.array([0.9, 0.2]), {"semantic": 0.8}) == pytest.approx(0.5)
    assert image_confidence(np.zeros(0), {"semantic": 1.0}) == 0.0
    assert review_order({"a": 0.7, "b": 0.1, "c": 0.7}) == ["b", "a", "c"]
    assert first_last_fraction(list(range(20)), 0.1) == (0.5, 18.5)


# ------------------------------------------------------------------- export on a real run
@pytest.fixture(scope="module")
def queue(tiny_run):
    return json.loads((tiny_run / "report" / "queue.json").read_text())


def ins_masks(tiny_run, image_id):
    """The instances the review export should show: those the COCO export keeps (score at
    least export.score_threshold = 1e-5, at least one pixel), by their ins_seg number."""
    z = read_npz(tiny_run / "ins_seg" / f"{image_id}.npz")
    return {n + 1: (z["instances"] == n + 1, int(c)) for n, (c, score) in enumerate(zip(z["classes"], z["scores"]))
            if score >= 1e-5 and (z["instances"] == n + 1).any()}


def test_queue_is_sorted_and_covers_the_infer_split(queue):
    conf = [e["confidence"] for e in queue["images"]]
    assert conf == sorted(conf) and len(conf) == 16
    assert {"score", "margin", "semantic", "cam", "model"} <= set(queue["signals"])


def test_cvat_zip_loads_with_pycocotools(tiny_data, tiny_run, queue, tmp_path):
    out = tmp_path / "cvat.zip"
    wsis("review", "export", "--format", "cvat", "--top", "5", "--out", out, *tiny_args(tiny_data, tiny_run))
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "x")
    from pycocotools.coco import COCO
    coco = COCO(str(tmp_path / "x" / "annotations" / "instances_default.json"))
    images = sorted(coco.dataset["images"], key=lambda im: im["id"])
    assert [im["wsis_id"] for im in images] == [e["id"] for e in queue["images"][:5]]
    for im in images:
        assert f"images/{im['file_name']}" in names
        anns = coco.loadAnns(coco.getAnnIds(imgIds=im["id"]))
        truth = ins_masks(tiny_run, im["wsis_id"])
        assert len(anns) == sum(m.any() for m, _ in truth.values())
        for ann in anns:
            assert isinstance(ann["segmentation"], list)          # CVAT edits polygons
            m = coco.annToMask(ann).astype(bool)
            best = max(iou(m, t) for t, c in truth.values() if c == ann["category_id"] - 1)
            assert best >= 0.95


def test_labelstudio_tasks_have_the_documented_fields(tiny_data, tiny_run, queue, tmp_path):
    out = tmp_path / "ls.json"
    wsis("review", "export", "--format", "labelstudio", "--out", out, *tiny_args(tiny_data, tiny_run))
    tasks = json.loads(out.read_text())
    config = ET.parse(tmp_path / "ls_config.xml").getroot()
    poly = config.find("PolygonLabels")
    image_tag = config.find("Image")
    labels = [lab.get("value") for lab in poly.findall("Label")]
    assert labels == ["disc", "square", "triangle", "star", "cross"]
    assert image_tag.get("value") == "$image" and poly.get("toName") == image_tag.get("name")
    assert [t["data"]["wsis_id"] for t in tasks] == [e["id"] for e in queue["images"]]
    n_regions = 0
    for task, entry in zip(tasks, queue["images"]):
        assert task["data"]["image"].endswith(f"{entry['id']}.jpg")
        (pred,) = task["predictions"]
        assert pred["score"] == pytest.approx(entry["confidence"])
        truth = ins_masks(tiny_run, entry["id"])
        # exactly the exported instances, numbered 1.. in ins_seg order: no zero-scored fragment
        # that a reviewer could delete without changing the training data
        truth = dict(enumerate(truth.values(), start=1))
        assert {int(r["id"][4:].split("_")[0]) for r in pred["result"]} == set(truth)
        for region in pred["result"]:
            n_regions += 1
            assert region["type"] == "polygonlabels"
            assert region["from_name"] == poly.get("name") and region["to_name"] == image_tag.get("name")
            h, w = next(iter(truth.values()))[0].shape
            assert (region["original_width"], region["original_height"]) == (w, h)
            pts = np.array(region["value"]["points"])
            assert pts.shape[1] == 2 and (pts >= 0).all() and (pts <= 100).all()
            assert region["value"]["polygonlabels"][0] in labels
            assert 0.0 <= region["score"] <= 1.0
            n = int(region["id"][4:].split("_")[0])
            mask = polygons_to_mask([(pts * [w / 100, h / 100]).ravel().tolist()], h, w)
            assert iou(mask, truth[n][0]) >= 0.95
    assert n_regions > 0


def test_coco_export_is_exact_rle(tiny_data, tiny_run, queue, tmp_path):
    out = tmp_path / "sub.json"
    wsis("review", "export", "--format", "coco", "--top", "3", "--out", out, *tiny_args(tiny_data, tiny_run))
    doc = json.loads(out.read_text())
    assert [im["wsis_id"] for im in doc["images"]] == [e["id"] for e in queue["images"][:3]]
    for ann in doc["annotations"]:
        im = doc["images"][ann["image_id"] - 1]
        m = mask_utils.decode(ann["segmentation"]).astype(bool)
        assert any(np.array_equal(m, t) for t, _ in ins_masks(tiny_run, im["wsis_id"]).values())


def test_random_order_export_is_a_seeded_draw_of_the_queue(tiny_data, tiny_run, queue, tmp_path):
    """--order random: the same seed draws the same images, another seed others, every one from
    the queue, each with the instances the queue order exports for it."""
    def export(*extra):
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
        wsis("review", "export", "--format", "coco", "--out", out, *extra, *tiny_args(tiny_data, tiny_run))
        doc = json.loads(out.read_text())
        per_image = {im["id"]: im["wsis_id"] for im in doc["images"]}
        anns = {}
        for a in doc["annotations"]:
            anns.setdefault(per_image[a["image_id"]], []).append((a["category_id"], a["segmentation"]["counts"]))
        return [im["wsis_id"] for im in doc["images"]], anns

    in_queue, queue_anns = export()
    assert in_queue == [e["id"] for e in queue["images"]]
    first, first_anns = export("--order", "random", "--seed", "3")
    assert sorted(first) == sorted(in_queue) and first != in_queue     # all of them, not in queue order
    assert export("--order", "random", "--seed", "3")[0] == first
    assert export("--order", "random", "--seed", "4")[0] != first
    assert {i: sorted(a) for i, a in first_anns.items()} == {i: sorted(a) for i, a in queue_anns.items()}
    top, _ = export("--order", "random", "--seed", "3", "--top", "4")
    assert top == first[:4]


# --------------------------------------------------------------------------- import errors
@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dst = tmp_path / "work"
    shutil.copytree(tiny_run, dst)
    return dst


def import_error(tiny_data, work, doc, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    proc = wsis("review", "import", path, *tiny_args(tiny_data, work), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_bad_review_files_name_the_entry(tiny_data, run_copy, tmp_path):
    out = tmp_path / "sub.json"
    wsis("review", "export", "--format", "cvat", "--top", "2", "--out", tmp_path / "c.zip",
         *tiny_args(tiny_data, run_copy))
    good = json.loads(zipfile.ZipFile(tmp_path / "c.zip").read("annotations/instances_default.json"))
    good["annotations"].append({"id": 99, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                "segmentation": [[1, 1, 10, 1, 10, 10]]})
    doc = json.loads(json.dumps(good))
    doc["images"][0]["file_name"] = "JPEGImages/nope.jpg"
    assert "image 1: unknown image 'JPEGImages/nope.jpg'" in import_error(tiny_data, run_copy, doc, tmp_path)
    doc = json.loads(json.dumps(good))
    doc["categories"].append({"id": 7, "name": "dog"})
    assert "unknown category 'dog'" in import_error(tiny_data, run_copy, doc, tmp_path)
    doc = json.loads(json.dumps(good))
    doc["annotations"][-1]["segmentation"] = [[1, 1, 10, 1]]
    assert "annotation 99: invalid polygon" in import_error(tiny_data, run_copy, doc, tmp_path)
    doc = json.loads(json.dumps(good))
    doc["annotations"][-1]["image_id"] = 42
    assert "annotation 99: unknown image_id 42" in import_error(tiny_data, run_copy, doc, tmp_path)
    assert not (run_copy / "review" / "reviewed.json").exists()      # nothing stored from bad files
    assert not out.exists()


# ------------------------------------------------------------------------------- full loop
def rasterise(points_percent, w, h):
    ring = (np.asarray(points_percent) * [w / 100, h / 100]).ravel().tolist()
    rle = mask_utils.frPyObjects([ring], h, w)
    return mask_utils.decode(mask_utils.merge(rle)).astype(bool)


def test_full_review_loop(tiny_data, run_copy, tmp_path):
    """Export the least confident images for Label Studio, edit them as a reviewer would
    (delete an instance, fix a mask, add one), import: the training input (merge_review's
    file, read as train_seg reads it) holds exactly the corrected masks on those images and
    the pseudo-labels on the others. (The tiny run has 16 images, so the top 6, not 20.)"""
    top = 6
    out = tmp_path / "ls.json"
    wsis("review", "export", "--format", "labelstudio", "--top", top, "--out", out, *tiny_args(tiny_data, run_copy))
    tasks = json.loads(out.read_text())
    expected = {}           # wsis id -> list of (mask, class name)
    edits = {"deleted": 0, "fixed": 0, "added": 0}
    from PIL import Image
    with_regions = [t for t, task in enumerate(tasks) if task["predictions"][0]["result"]]
    delete_at, fix_at = with_regions[:2]
    add_at = next(t for t in range(len(tasks)) if t not in (delete_at, fix_at))
    for t, task in enumerate(tasks):
        regions = task["predictions"][0]["result"]
        with Image.open(tiny_data / "JPEGImages" / f"{task['data']['wsis_id']}.jpg") as im:
            w, h = im.size
        if t == delete_at:                           # delete one instance (all its parts)
            gone = regions[0]["id"].split("_")[0]
            regions = [r for r in regions if r["id"].split("_")[0] != gone]
            edits["deleted"] += 1
        if t == fix_at:                              # fix a mask: the reviewer redraws it as a box
            big = max(regions, key=lambda r: len(r["value"]["points"]))   # around it, a little larger
            points = np.array(big["value"]["points"], float)
            (x0, y0), (x1, y1) = np.clip(points.min(0) - 4, 0, 100), np.clip(points.max(0) + 4, 0, 100)
            big["value"]["points"] = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
            edits["fixed"] += 1
        if t == add_at:                              # add a missed object
            regions = regions + [{"id": "Xk3v9", "type": "polygonlabels", "from_name": "label", "to_name": "image",
                                  "original_width": w, "original_height": h,
                                  "value": {"points": [[70, 70], [95, 70], [82, 95]], "polygonlabels": ["star"]}}]
            edits["added"] += 1
        task["annotations"] = [{"id": t + 1, "result": regions, "was_cancelled": False}]
        # regions wsis<n>_<part> are parts of instance n; any other region is an instance of its own
        instances = {}
        for r in regions:
            key = r["id"].split("_")[0]
            m, name = instances.get(key, (np.zeros((h, w), bool), r["value"]["polygonlabels"][0]))
            instances[key] = (m | rasterise(r["value"]["points"], w, h), name)
        expected[task["data"]["wsis_id"]] = [v for v in instances.values() if v[0].any()]
    assert edits == {"deleted": 1, "fixed": 1, "added": 1}
    edited = tmp_path / "ls_export.json"
    edited.write_text(json.dumps(tasks))

    wsis("review", "import", edited, *tiny_args(tiny_data, run_copy))
    status = wsis("status", *tiny_args(tiny_data, run_copy)).stdout
    # the stages that learn from reviews (issue 27) and merge_review see the import
    assert "train_cam    stale (reviewed images changed (" in status
    assert "merge_review stale (" in status and "file review/reviewed.json changed" in status
    assert "train_seg    stale (upstream merge_review changed" in status
    # today's loop (issue 20): corrections reach train_seg only, so the pseudo-labels stay those
    # the reviewer edited and merge_review's counts are the edits (with the review parts on,
    # tests/test_review_upstream.py, they compare with the retrained pipeline's)
    wsis("run", "--stage", "merge_review", *tiny_args(tiny_data, run_copy), *REVIEW_PARTS_OFF)

    from wsis.data.seg_data import CocoInstances
    merged_path = run_copy / "merge_review" / "train.json"
    data = CocoInstances(merged_path, tiny_data / "JPEGImages")   # what train_seg reads
    merged = json.loads(merged_path.read_text())
    pseudo = json.loads((run_copy / "export" / "pseudo_labels.json").read_text())
    names = list(data.class_names)
    by_file = {im["file_name"]: im for im in merged["images"]}
    assert len(by_file) == 16
    for k, image_key in enumerate(data.ids):
        gt = data.dataset.instance_gt(image_key)
        entry = by_file[data.dataset.files[image_key]]
        anns = [a for a in merged["annotations"] if a["image_id"] == entry["id"]]
        if entry["wsis_id"] in expected:
            want = expected[entry["wsis_id"]]
            assert {a["source"] for a in anns} <= {"reviewed"}
            assert len(gt.masks) == len(want)
            for (m, name), got, cls in zip(want, gt.masks, gt.classes):
                assert np.array_equal(m, got) and names[cls] == name
        else:
            want = [(mask_utils.decode(a["segmentation"]).astype(bool), a["category_id"])
                    for a in pseudo["annotations"] if a["image_id"] == entry["id"]]
            assert {a["source"] for a in anns} <= {"pseudo"}
            assert len(gt.masks) == len(want)
            for (m, cat), got, cls in zip(want, gt.masks, gt.classes):
                assert np.array_equal(m, got) and cls == cat - 1
    metrics = json.loads((run_copy / "merge_review" / "metrics.json").read_text())["train"]
    assert metrics["reviewed_images"] == top
    assert metrics["instances_removed"] >= 1 and metrics["instances_added"] >= 1
    # unchanged polygons round-trip exactly, so only the fixed mask lowers the mean IoU
    assert 0.0 < metrics["mean_iou_pseudo_vs_reviewed"] < 1.0


def test_a_walk_flood_past_the_cam_ranks_first():
    """The failure the CAM signal is for: an instance that floods the image ranks before a
    tight one, though both have the top score and sem_seg floods with them."""
    cam = np.zeros((40, 40), np.uint8)
    cam[10:20, 10:20] = 1                         # the CAM's support of class 0
    tight = cam[None] == 1
    flood = np.ones((1, 40, 40), bool)
    conf = {}
    for name, masks in (("tight", tight), ("flood", flood)):
        sem = masks[0].astype(np.uint8)           # sem_seg agrees with the instances either way
        sem_per, sem_img = label_agreement(masks, [0], sem)
        cam_per, cam_img = label_agreement(masks, [0], cam)
        inst = instance_confidence({"score": np.ones(1), "semantic": sem_per, "cam": cam_per})
        conf[name] = image_confidence(inst, {"semantic": sem_img, "cam": cam_img})
    # flood: instance (score 1, semantic 1, cam 100/1600) -> 0.6875; image: mean(0.6875, 1, 0.0625)
    assert conf["flood"] == pytest.approx((0.6875 + 1 + 0.0625) / 3)
    assert conf["tight"] == pytest.approx(1.0)
    assert review_order(conf) == ["flood", "tight"]


# ------------------------------------------------------- untrusted import files (issue 21.6)
def one_line(proc):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def exported_coco(tiny_data, work, tmp_path, top=2):
    out = tmp_path / f"export_{top}.json"
    wsis("review", "export", "--format", "coco", "--top", top, "--out", out, *tiny_args(tiny_data, work))
    return json.loads(out.read_text())


def test_malformed_import_files_name_the_entry(tiny_data, run_copy, tmp_path):
    good = exported_coco(tiny_data, run_copy, tmp_path)

    def edited(change):
        doc = json.loads(json.dumps(good))
        change(doc)
        return doc

    cases = [
        (edited(lambda d: d["images"][0].pop("id")), "image #0 (", "id must be a number or string"),
        (edited(lambda d: d["images"][0].pop("height")), f"image {good['images'][0]['id']}: has width but not height"),
        (edited(lambda d: d.update(images=7)), "images must be a list, got int"),
        (edited(lambda d: d["annotations"].append("a polygon")), "annotations #", 'must be an object, got "a polygon"'),
        (edited(lambda d: d["categories"][0].pop("id")), "category #0 (", "id must be a number or string"),
        (edited(lambda d: d["images"][0].update(file_name=3)), "file name must be a non-empty string, got 3"),
        (edited(lambda d: d["images"][0].update(height=-5)), "width and height must be positive whole numbers"),
        (["a.jpg", "b.jpg"], 'task #0 must be an object, got "a.jpg"'),
        ([{"data": "x", "annotations": [{"result": []}]}], "task 0: data must be an object"),
        ([{"data": {"image": "x"}, "annotations": ["done"]}], "task 0: annotations #0 must be an object"),
    ]
    for doc, *fragments in cases:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(doc))
        line = one_line(wsis("review", "import", path, *tiny_args(tiny_data, run_copy), check=False))
        assert str(path) in line, line
        for f in fragments:
            assert f in line, (f, line)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert "JSON nested too deeply" in one_line(wsis("review", "import", deep, *tiny_args(tiny_data, run_copy),
                                                    check=False))
    assert not (run_copy / "review" / "reviewed.json").exists()


def zip_bomb(path, doc, padding_mib):
    """A CVAT zip whose JSON member is ``doc`` followed by ``padding_mib`` MiB of spaces: valid
    JSON that inflates from well under a MiB."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("annotations/instances_default.json", "w") as member:
            member.write(json.dumps(doc).encode())
            block = b" " * 2**20
            for _ in range(padding_mib):
                member.write(block)
    return path


def test_a_failed_import_leaves_the_store_byte_identical(tiny_data, run_copy, tmp_path):
    store = run_copy / "review" / "reviewed.json"
    first = tmp_path / "first.json"
    first.write_text(json.dumps(exported_coco(tiny_data, run_copy, tmp_path, top=2)))
    # the reviewer confirmed these images as they are, said so (the least confident ones may have
    # no pseudo-instance)
    wsis("review", "import", first, "--empty-images", "reviewed", "--unchanged-images", "reviewed",
         *tiny_args(tiny_data, run_copy))
    before = store.read_bytes()
    later = exported_coco(tiny_data, run_copy, tmp_path, top=4)

    # a bad entry after good ones: nothing of the good ones is stored
    bad = json.loads(json.dumps(later))
    bad["annotations"].append({"id": 999, "image_id": later["images"][-1]["id"], "category_id": 1,
                               "segmentation": [[1, 2, 3]]})
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    line = one_line(wsis("review", "import", tmp_path / "bad.json", *tiny_args(tiny_data, run_copy), check=False))
    assert "annotation 999: invalid polygon" in line
    assert store.read_bytes() == before

    # a zip bomb: refused from its declared size, before inflating
    bomb = zip_bomb(tmp_path / "bomb.zip", later, 300)
    assert bomb.stat().st_size < 2**20
    line = one_line(wsis("review", "import", bomb, *tiny_args(tiny_data, run_copy), check=False))
    assert f"{bomb}: annotations/instances_default.json inflates to more than 256 MiB (review.max_member_mb)" in line
    assert store.read_bytes() == before
    from wsis.review.formats import read_review
    from wsis.data import open_dataset
    from wsis.config import load_config
    from conftest import TINY
    cfg = load_config("synthetic", TINY)
    ds = open_dataset("synthetic", cfg, tiny_data)
    small = zip_bomb(tmp_path / "small.zip", later, 2)
    with pytest.raises(Exception, match="inflates to more than 1 MiB"):
        read_review(small, ds, ds.ids("train"), max_member_mb=1)
    found = read_review(small, ds, ds.ids("train"), max_member_mb=3, empty_images="reviewed")
    assert len(found.images) == 4                                  # the same file under a higher limit


def test_a_full_disk_during_an_import_leaves_the_store_as_it_was(tiny_data, run_copy, tmp_path, monkeypatch):
    import errno
    from pathlib import Path
    from wsis.errors import DiskFullError
    from wsis.review.formats import store_review
    store = run_copy / "review" / "reviewed.json"
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps({"images": {"a": {"height": 1, "width": 1, "source": "x", "instances": []}}}))
    before = store.read_bytes()
    real = Path.write_bytes

    def half_then_full(self, data):   # the file system fills up halfway through every write
        real(self, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(DiskFullError):
        store_review({"b": (2, 2, [(np.ones((2, 2), bool), 0)])}, store, tmp_path / "src.json")
    monkeypatch.undo()
    assert store.read_bytes() == before
    assert [p.name for p in store.parent.iterdir()] in (["reviewed.json"], ["reviewed.json", "reviewed.previous.json"])


def test_a_truncated_store_is_one_line_naming_the_last_good_one(tiny_data, run_copy, tmp_path):
    store = run_copy / "review" / "reviewed.json"
    for top in (2, 4):
        path = tmp_path / f"r{top}.json"
        path.write_text(json.dumps(exported_coco(tiny_data, run_copy, tmp_path, top=top)))
        wsis("review", "import", path, "--empty-images", "reviewed", "--unchanged-images", "reviewed",
             *tiny_args(tiny_data, run_copy))
        if top == 2:
            after_first = store.read_bytes()
    backup = run_copy / "review" / "reviewed.previous.json"
    assert backup.read_bytes() == after_first            # the store as it was before the last import
    truncated = store.read_bytes()[:100]
    store.write_bytes(truncated)
    merged = snapshot(run_copy / "merge_review")
    confirmed = ("--empty-images", "reviewed", "--unchanged-images", "reviewed")
    for args in (("review", "import", tmp_path / "r2.json", *confirmed),
                 ("run", "--stage", "merge_review")):
        proc = wsis(*args, *tiny_args(tiny_data, run_copy), check=False)
        one_line_error(proc, f"{store}: the stored reviews are truncated", f"the last good one is {backup}")
    assert store.read_bytes() == truncated and backup.read_bytes() == after_first
    assert snapshot(run_copy / "merge_review") == merged      # checked before merge_review was cleared


# ------------------------------------------- the store belongs to its dataset (issue 29.2, 29.7)
def imported_store(tiny_data, work, tmp_path) -> dict:
    """The store after one import of the two least confident images, confirmed as they are."""
    first = tmp_path / "first.json"
    first.write_text(json.dumps(exported_coco(tiny_data, work, tmp_path, top=2)))
    wsis("review", "import", first, "--empty-images", "reviewed", "--unchanged-images", "reviewed",
         *tiny_args(tiny_data, work))
    return json.loads((work / "review" / "reviewed.json").read_text())


def test_the_store_records_its_dataset_and_adopts_an_old_store(tiny_data, run_copy, tmp_path):
    store_path = run_copy / "review" / "reviewed.json"
    store = imported_store(tiny_data, run_copy, tmp_path)
    assert store["dataset"] == {"kind": "synthetic", "root": str(tiny_data.resolve()),
                                "classes": ["disc", "square", "triangle", "star", "cross"]}
    assert len(store["images"]) == 2
    # a store written before stores recorded their dataset is read as it is, and adopted on the next import
    old = {"images": store["images"]}
    store_path.write_text(json.dumps(old))
    wsis("run", "--stage", "merge_review", *tiny_args(tiny_data, run_copy))
    assert json.loads(store_path.read_text()) == old
    later = tmp_path / "later.json"
    later.write_text(json.dumps(exported_coco(tiny_data, run_copy, tmp_path, top=3)))
    wsis("review", "import", later, "--empty-images", "reviewed", "--unchanged-images", "reviewed",
         *tiny_args(tiny_data, run_copy))
    adopted = json.loads(store_path.read_text())
    assert adopted["dataset"] == store["dataset"] and old["images"].items() <= adopted["images"].items()


def test_a_store_from_another_dataset_is_refused_before_anything_is_merged(tiny_data, run_copy, tmp_path):
    """A reviewed.json copied from another work dir: an image this dataset lacks, an entry at
    another size than its image, another dataset's record. Each stops run, report, review
    export and review import with one line naming the store and the entry; merge_review is not
    touched and the store stays as it was."""
    from wsis.coco import rle_encode
    store_path = run_copy / "review" / "reviewed.json"
    good = imported_store(tiny_data, run_copy, tmp_path)
    wsis("run", "--stage", "merge_review", *tiny_args(tiny_data, run_copy))
    merged = snapshot(run_copy / "merge_review")
    image_id, entry = next(iter(good["images"].items()))
    h, w = entry["height"], entry["width"]
    twice = {"height": 2 * h, "width": 2 * w, "source": "elsewhere.json",
             "instances": [{"class": 0, "segmentation": rle_encode(np.ones((2 * h, 2 * w), bool))}]}
    unknown = dict(good, images=dict(good["images"], **{"train_9999": entry}))
    cases = [
        (unknown, "image 'train_9999' is not an image of this dataset"),
        (dict(good, images=dict(good["images"], **{image_id: twice})),
         f"image '{image_id}' was reviewed at {2 * w}x{2 * h}, but the image is {w}x{h} here"),
        ({"images": dict(good["images"], **{image_id: twice})},             # an old store: its entries are checked
         f"image '{image_id}' was reviewed at {2 * w}x{2 * h}"),
        (dict(good, dataset=dict(good.get("dataset", {}), classes=["cat", "dog"])), "the reviews of another dataset (classes"),
        (dict(good, images=dict(good["images"], **{image_id: dict(entry, instances=[
            {"class": 7, "segmentation": rle_encode(np.ones((h, w), bool))}])})), f"image '{image_id}': instance 0 has class 7"),
    ]
    again = tmp_path / "again.json"
    again.write_text(json.dumps(exported_coco(tiny_data, run_copy, tmp_path, top=3)))
    for doc, fragment in cases:
        store_path.write_text(json.dumps(doc))
        before = store_path.read_bytes()
        for args in (("run", "--stage", "merge_review"), ("report",), ("review", "export", "--format", "coco"),
                     ("review", "import", again, "--empty-images", "reviewed", "--unchanged-images", "reviewed")):
            line = one_line_error(wsis(*args, *tiny_args(tiny_data, run_copy), check=False))
            assert f"{store_path}: " in line and fragment in line, (args, line)
        assert store_path.read_bytes() == before
        assert snapshot(run_copy / "merge_review") == merged


def test_review_import_takes_the_work_dir_lock(tiny_data, run_copy, tmp_path):
    """Two imports at once on one work dir: the second waits for nothing and writes nothing, it
    stops with one line; so does an import while a run holds the work dir."""
    from pipelines.cache import WorkDirLock
    doc = tmp_path / "first.json"
    doc.write_text(json.dumps(exported_coco(tiny_data, run_copy, tmp_path, top=2)))
    args = ("review", "import", doc, "--empty-images", "reviewed", "--unchanged-images", "reviewed",
            *tiny_args(tiny_data, run_copy))
    store = run_copy / "review" / "reviewed.json"
    with WorkDirLock(run_copy / ".lock"):           # what another import, or a run, holds
        line = one_line_error(wsis(*args, check=False))
        assert f"{run_copy}: another wsis run is using this work dir" in line
        assert not store.exists()
    wsis(*args)
    assert store.is_file()
