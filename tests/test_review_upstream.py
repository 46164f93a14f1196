"""Reviewed masks teach the stages that make the pseudo-labels (issue 27): the CAM classifier's
per-pixel loss, relation labels and centroid targets from the reviewer's instances, an export
that holds exactly what the reviewer drew, and a rerun that recomputes only what an import
changed. The pure parts are checked against hand-computed cases; the stages on the tiny set."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from conftest import REVIEW_PARTS_OFF, TINY, snapshot, tiny_args, wsis
from wsis.coco import annotation
from wsis.config import load_config
from wsis.data import open_dataset
from wsis.io import read_label_png, read_uint16_png
from wsis.models.irn import centroid_loss
from wsis.algorithms.supervision import (INSTANCE_IGNORE, centroid_displacements, class_channels, class_targets,
                                     instance_relation_labels, pixel_class_loss, region_labels)
from wsis.transforms import cam_train_augment, irn_train_augment



# ------------------------------------------------------------------ pure functions
def two_touching_instances():
    """A 6 x 8 image: instance 1 (class 2) columns 1-3 of rows 1-4, instance 2 (class 2 too)
    columns 4-6 of the same rows, touching; instance 3 (class 0) overlaps instance 2 at (4, 6)."""
    masks = np.zeros((3, 6, 8), bool)
    masks[0, 1:5, 1:4] = True
    masks[1, 1:5, 4:7] = True
    masks[2, 4:6, 6:8] = True
    return masks, np.array([2, 2, 0])


def test_relation_labels_from_instances_by_hand():
    masks, classes = two_touching_instances()
    labels, instances = instance_relation_labels(masks, classes)
    expected = np.zeros((6, 8), np.uint8)
    expected[1:5, 1:7] = 3                 # class 2 -> label 3, both instances
    expected[4:6, 6:8] = 1                 # class 0 -> label 1
    expected[4, 6] = 255                   # in instances 2 and 3: no relation learned
    assert (labels == expected).all()
    assert instances[2, 3] == 1 and instances[2, 4] == 2 and instances[5, 7] == 3 and instances[0, 0] == 0
    assert instances[4, 6] == INSTANCE_IGNORE
    # the pair-loss labels keep the two class-2 instances apart (their boundary is learned)
    regions = region_labels(instances)
    assert regions[2, 3] != regions[2, 4] and regions[2, 3] > 0 and regions[4, 6] == 255 and regions[0, 0] == 0


def test_region_labels_of_many_instances_stay_distinct_between_neighbours():
    instances = np.arange(600, dtype=np.uint16).reshape(20, 30)   # 599 instances, 0 in the corner
    regions = region_labels(instances)
    assert regions.dtype == np.uint8 and regions.max() == 254 and (regions[instances > 0] > 0).all()
    # horizontal and vertical neighbours never share a label
    assert (regions[:, 1:] != regions[:, :-1]).all() and (regions[1:] != regions[:-1]).all()


def test_centroid_displacements_by_hand():
    masks, _ = two_touching_instances()
    instances = instance_relation_labels(masks, np.array([2, 2, 0]))[1]
    d = centroid_displacements(instances)
    # instance 1: rows 1-4, columns 1-3 -> centroid (2.5, 2); instance 2 without the overlap
    # pixel (4, 6): 11 pixels, centroid (sum of rows / 11, sum of columns / 11)
    assert np.allclose(d[1, 1], [1.5, 1.0]) and np.allclose(d[4, 3], [-1.5, -1.0])
    rows2, cols2 = np.nonzero(instances == 2)
    assert np.allclose(d[1, 4], [rows2.mean() - 1, cols2.mean() - 4])
    assert (d[0, 0] == 0).all() and np.isnan(d[4, 6]).all()
    # every pixel of an instance lands on the same point, its centroid
    ys, xs = np.nonzero(instances == 1)
    assert np.allclose(ys + d[ys, xs, 0], 2.5) and np.allclose(xs + d[ys, xs, 1], 2.0)


def test_augmented_displacements_still_point_to_the_centroid():
    """After rescale and flip, every pixel + its target lands within a pixel of its instance's
    centroid in the augmented image (nearest resampling moves pixels by under one); a crop
    copies the targets unchanged, so the pixels of a cut instance still land on one point."""
    masks = np.zeros((2, 60, 80), bool)
    masks[0, 10:30, 5:25] = True
    masks[1, 20:55, 40:78] = True
    instances = instance_relation_labels(masks, np.array([0, 1]))[1]
    image = np.zeros((60, 80, 3), np.uint8)
    flipped = 0
    for seed in range(8):
        # crop 200: the whole rescaled image, padded (NaN targets outside it)
        _, lab, disp = irn_train_augment(image, instances.astype(np.int32), np.random.default_rng(seed), (0.7, 1.5),
                                         200, True, ignore=0, displacements=centroid_displacements(instances))
        assert np.isnan(disp[lab == 0]).all() == (lab == 0).all() and not np.isnan(disp[lab > 0]).any()
        for k in (1, 2):
            ys, xs = np.nonzero(lab == k)
            land = np.stack([ys + disp[ys, xs, 0], xs + disp[ys, xs, 1]], 1)
            assert np.abs(land - [ys.mean(), xs.mean()]).max() < 1.5, (seed, k)
        # instance 1 lies left of instance 2 unless the image was flipped
        flipped += np.nonzero(lab == 1)[1].mean() > np.nonzero(lab == 2)[1].mean()
        # a 24-pixel crop cuts the instances: the targets are those of the same pixels
        _, lab_c, disp_c = irn_train_augment(image, instances.astype(np.int32), np.random.default_rng(seed),
                                             (0.7, 1.5), 24, True, ignore=0,
                                             displacements=centroid_displacements(instances))
        for k in (1, 2):
            ys, xs = np.nonzero(lab_c == k)
            if len(ys):
                land = np.stack([ys + disp_c[ys, xs, 0], xs + disp_c[ys, xs, 1]], 1)
                assert np.ptp(land, axis=0).max() < 2.0, (seed, k)
    assert 0 < flipped < 8


def test_pixel_loss_is_zero_without_reviews_and_moves_class_maps_to_the_mask():
    torch.manual_seed(0)
    features = torch.randn(2, 8, 6, 6)
    classifier = torch.nn.Conv2d(8, 3, 1, bias=False)
    no_review = torch.zeros(2, 4, 6, 6)
    loss = pixel_class_loss(classifier(features), no_review)
    assert loss.item() == 0.0
    loss.backward()
    assert classifier.weight.grad.abs().max().item() == 0.0

    # image 0 reviewed: class 1 covers the left half of its grid (a crop's class channels)
    mask = np.zeros((1, 24, 24), bool)
    mask[0, :, :12] = True
    channels, present = class_channels(mask, np.array([1]), 3)
    targets = torch.stack([class_targets(channels, present, 3, (6, 6)), torch.zeros(4, 6, 6)])
    assert targets[0, 1, :, :3].eq(1).all() and targets[0, 1, :, 3:].eq(0).all() and targets[0, 3].eq(1).all()

    def inside_minus_outside(weight_of_pixel_loss):
        torch.manual_seed(0)
        net = torch.nn.Conv2d(8, 3, 1, bias=False)
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        for _ in range(50):
            maps = net(features)
            logits = maps.mean(dim=(2, 3))
            loss = torch.nn.functional.multilabel_soft_margin_loss(logits, torch.tensor([[0., 1, 0], [0, 1, 0]]))
            loss = loss + weight_of_pixel_loss * pixel_class_loss(maps, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
        maps = net(features).detach()[0, 1]
        return (maps[:, :3].mean() - maps[:, 3:].mean()).item()

    with_loss, without = inside_minus_outside(1.0), inside_minus_outside(0.0)
    assert with_loss > 0.5 and with_loss > without + 0.5, (with_loss, without)


def test_cam_augment_moves_maps_with_the_image_and_draws_the_same():
    image = np.zeros((40, 60, 3), np.uint8)
    image[5:15, 10:30] = 255
    maps = (image[..., :1] > 0).astype(np.uint8)
    for seed in range(5):
        a = cam_train_augment(image, np.random.default_rng(seed), (30, 80), 48, True)
        b, m = cam_train_augment(image, np.random.default_rng(seed), (30, 80), 48, True, maps=maps)
        assert (a == b).all()
        assert ((b[..., 0] > 127) == (m[..., 0] > 0)).mean() > 0.97


def test_centroid_loss_by_hand():
    disp = torch.zeros(1, 2, 2, 2)
    targets = torch.full((1, 2, 2, 2), float("nan"))
    assert centroid_loss(disp, targets).item() == 0.0
    targets[0, :, 0, 0] = torch.tensor([1.0, -3.0])
    assert centroid_loss(disp, targets).item() == pytest.approx(2.0)     # (1 + 3) / 2 coordinates


# ------------------------------------------------------------------ the stages, on the tiny set
@pytest.fixture(scope="module")
def ds(tiny_data):
    return open_dataset("synthetic", load_config("synthetic", TINY), tiny_data)


def gt_review(ds, work, tmp_path, ids, name):
    """A COCO review file giving ``ids`` their ground-truth masks, as a reviewer would: the
    images as wsis exports them, the dataset's categories."""
    doc = json.loads((work / "export" / "pseudo_labels.json").read_text())
    entries = {e["wsis_id"]: e for e in doc["images"]}
    images, anns = [], []
    for image_id in ids:
        entry = entries[image_id]
        images.append(entry)
        gt = ds.instance_gt(image_id)
        for m, c in zip(gt.masks, gt.classes):
            anns.append(annotation(m, c, entry["id"], len(anns) + 1, category_ids=ds.coco_category_ids()))
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": doc["categories"]}))
    return path


def computed(proc) -> dict[str, str]:
    """{stage: what the run said of it}: "up to date", or the "computing N of M" line."""
    out = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"^(\w+): (up to date|computing \d+ of \d+ images|done in)", line)
        if m and m.group(1) not in out or (m and m.group(2).startswith("computing")):
            out[m.group(1)] = m.group(2)
    return out


@pytest.fixture
def work(tiny_run, tmp_path):
    dst = tmp_path / "work"
    shutil.copytree(tiny_run, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def infer_ids(ds):
    return list(ds.ids(load_config("synthetic", TINY)["data"]["infer_split"]))


def test_import_changes_exactly_the_reviewed_relation_labels_and_export(ds, tiny_data, work, tmp_path):
    ids = infer_ids(ds)
    first, second = ids[1:3], ids[5:6]
    before = snapshot(work / "ir_label")
    args = tiny_args(tiny_data, work, "--set", "review.cam_loss=false")
    wsis("review", "import", gt_review(ds, work, tmp_path, first, "r1.json"), *args)
    proc = wsis("run", "--stage", "export", *args)
    said = computed(proc)
    # the CAM side does not read reviews here: untouched; ir_label recomputes the reviewed images only
    assert said["train_cam"] == "up to date" and said["make_cam"] == "up to date", said
    assert said["ir_label"] == f"computing 2 of {len(ids)} images", said
    after = snapshot(work / "ir_label")
    changed = {k for k in after if before.get(k) != after[k]} - {"manifest.json"}
    assert changed == {f"{i}.png" for i in first} | {f"instances/{i}.png" for i in first}

    for image_id in first:
        gt = ds.instance_gt(image_id)
        # derived independently: class c + 1 where exactly one instance is, 0 where none, 255 in two
        count = gt.masks.sum(0)
        expected = np.zeros(count.shape, np.uint8)
        for m, c in zip(gt.masks, gt.classes):
            expected[m] = c + 1
        expected[count > 1] = 255
        assert (read_label_png(work / "ir_label" / f"{image_id}.png") == expected).all()
        instances = read_uint16_png(work / "ir_label" / "instances" / f"{image_id}.png")
        for k, m in enumerate(gt.masks, start=1):
            assert (instances[m & (count == 1)] == k).all()

    # the export holds exactly the reviewer's masks on the reviewed images (pycocotools IoU 1)
    export = json.loads((work / "export" / "pseudo_labels.json").read_text())
    stored = json.loads((work / "review" / "reviewed.json").read_text())["images"]
    wsis_id = {e["id"]: e["wsis_id"] for e in export["images"]}
    for image_id in first:
        exported = [a for a in export["annotations"] if wsis_id[a["image_id"]] == image_id]
        imported = [r["segmentation"] for r in stored[image_id]["instances"]]
        assert len(exported) == len(imported) and all(a["source"] == "reviewed" for a in exported)
        iou = mask_utils.iou([a["segmentation"] for a in exported], imported, [0] * len(imported))
        assert np.allclose(np.diag(iou), 1.0)
        assert [a["category_id"] for a in exported] == [ds.coco_category_ids()[r["class"]]
                                                        for r in stored[image_id]["instances"]]
    assert all(a.get("source") != "reviewed" for a in export["annotations"] if wsis_id[a["image_id"]] not in first)

    # a second import recomputes the newly reviewed image only
    before = snapshot(work / "ir_label")
    wsis("review", "import", gt_review(ds, work, tmp_path, second, "r2.json"), *args)
    said = computed(wsis("run", "--stage", "export", *args))
    assert said["ir_label"] == f"computing 1 of {len(ids)} images" and said["train_cam"] == "up to date", said
    after = snapshot(work / "ir_label")
    assert {k for k in after if before.get(k) != after[k]} - {"manifest.json"} == \
        {f"{second[0]}.png", f"instances/{second[0]}.png"}


def test_with_every_part_on_an_import_retrains_the_cam_classifier(ds, tiny_data, work, tmp_path):
    args = tiny_args(tiny_data, work)
    wsis("review", "import", gt_review(ds, work, tmp_path, infer_ids(ds)[:2], "r.json"), *args)
    said = computed(wsis("run", "--stage", "train_irn", *args))
    assert said["train_cam"] == "done in" and said["make_cam"].startswith("computing") and said["train_irn"] == "done in"
    # both stages trained with their review losses, which a batch without reviews logs as zero
    cam = json.loads((work / "train_cam" / "loss_history.json").read_text())
    irn = json.loads((work / "train_irn" / "loss_history.json").read_text())
    assert all(e["pixel"] > 0 for e in cam) and all(e["centroid"] > 0 for e in irn), (cam, irn)


def test_switching_every_part_off_restores_the_outputs_without_reviews(ds, tiny_data, tiny_run, work, tmp_path):
    """Reviews imported, every part off: each stage's fingerprint is the one it had before any
    review, and a run computes exactly the run without reviews (the export byte for byte)."""
    args = tiny_args(tiny_data, work, *REVIEW_PARTS_OFF)
    wsis("review", "import", gt_review(ds, work, tmp_path, infer_ids(ds)[:3], "r.json"), *args)
    wsis("run", "--stage", "export", *tiny_args(tiny_data, work))          # parts on: everything changes
    assert (work / "export" / "pseudo_labels.json").read_bytes() != (tiny_run / "export" / "pseudo_labels.json").read_bytes()
    wsis("run", "--stage", "export", *args)
    for stage in ("train_cam", "make_cam", "ir_label", "train_irn", "irn_infer", "ins_seg", "export"):
        old = json.loads((tiny_run / stage / "manifest.json").read_text())
        new = json.loads((work / stage / "manifest.json").read_text())
        assert new["fingerprint"] == old["fingerprint"], stage
    assert (work / "export" / "pseudo_labels.json").read_bytes() == (tiny_run / "export" / "pseudo_labels.json").read_bytes()
    assert not (work / "ir_label" / "instances").exists() or not any((work / "ir_label" / "instances").iterdir())


@pytest.mark.parametrize("key, stage", [("cam_loss", "train_cam"), ("relation_labels", "ir_label"),
                                        ("irn_targets", "train_irn"), ("export", "export")])
def test_each_part_off_gives_its_stage_the_fingerprint_without_reviews(ds, tiny_data, tmp_path, key, stage):
    """Reviews stored: with its key off, a stage's fingerprint is the one it has with no review
    at all (the same cache, the same outputs), while the stages of the parts still on differ."""
    from pipelines.dag import STAGES
    from pipelines.engine import Pipeline
    work = tmp_path / "work"
    (work / "review").mkdir(parents=True)
    ids = infer_ids(ds)[:2]
    entries = {}
    for image_id in ids:
        gt = ds.instance_gt(image_id)
        entries[image_id] = {"height": gt.masks.shape[1], "width": gt.masks.shape[2], "source": "test",
                             "instances": [{"class": int(c), "segmentation": annotation(m, c, 1, 1)["segmentation"]}
                                           for m, c in zip(gt.masks, gt.classes)]}
    (work / "review" / "reviewed.json").write_text(json.dumps({"images": entries}))

    def components(work_dir, *overrides):
        cfg = load_config("synthetic", TINY, list(overrides))
        pipeline = Pipeline(STAGES, cfg, open_dataset("synthetic", cfg, tiny_data), work_dir)
        return {name: pipeline.fingerprint(s)[1] for name, s in pipeline.stages.items()}

    without = components(tmp_path / "no-reviews")
    part_off = components(work, f"review.{key}=false")
    all_on = components(work)
    # off: the stage reads no review, and its fingerprint is made of what it is without them
    # (equal to the run without reviews once its upstream is: train_cam has none)
    assert "image_inputs" not in part_off[stage] and "image_inputs" in all_on[stage]
    assert all_on[stage]["image_inputs"]["entries"].keys() == set(ids)
    if stage == "train_cam":
        assert part_off[stage] == without[stage]
    for other in {"train_cam", "ir_label", "train_irn", "export"} - {stage}:
        assert part_off[other]["image_inputs"] == all_on[other]["image_inputs"]
