"""Held-out evaluation: eval_seg on a separate labelled COCO file (--eval-annotations), in
``wsis run`` and ``wsis train-seg``, and the metrics saying which images were scored."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import TINY, tiny_args, wsis
from test_eval_streaming import dense_instance_ap
from wsis.inference import predict_image
from wsis.io import read_rgb
from wsis.metrics import mean_ap
from wsis.models.registry import load_instance_model

NAMES = ["disc", "square", "triangle", "star", "cross"]


def table_rows(stdout):
    return [line.split(None, 3) for line in stdout.splitlines()]


def test_eval_split_says_whether_it_holds_training_images(tiny_data, tiny_run, tmp_path):
    val = json.loads((tiny_run / "eval_seg" / "metrics.json").read_text())["val"]
    assert val["scored_on"] == "held-out split 'val'"          # synthetic: train and val are disjoint
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work)
    proc = wsis("run", "--stage", "eval_seg", *tiny_args(tiny_data, work, "--set", "data.eval_split=train"))
    train = json.loads((work / "eval_seg" / "metrics.json").read_text())["train"]
    assert train["scored_on"] == "training images" and train["images"] == 16
    assert ["eval_seg", "train", "scored_on", "training images"] in table_rows(proc.stdout)
    assert "(scored on training images)" in proc.stdout


def test_a_missing_eval_file_stops_the_run_before_any_stage(tiny_data, tiny_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work)
    missing = tmp_path / "val.json"
    proc = wsis("run", *tiny_args(tiny_data, work, "--eval-annotations", missing), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        f"wsis: error: {missing}: eval annotations JSON not found (eval_seg.annotations)"
    assert "eval_seg:" not in proc.stderr


def own_predictions(model_path, images_dir, image_infos, score_threshold):
    model, arch, names = load_instance_model(model_path)
    out = []
    for info in image_infos:
        pred = predict_image(model, read_rgb(images_dir / info["file_name"]), arch["input_size"], "cpu",
                             score_threshold)
        out.append((pred["masks"], [names[c] for c in pred["labels"]], pred["scores"]))
    return out


def rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def test_train_seg_scores_a_held_out_file(tiny_data, tiny_run, tmp_path):
    images_dir = tiny_data / "JPEGImages"
    val_gt = tiny_run / "eval_seg" / "ground_truth_coco.json"      # the val split's ground truth
    work = tmp_path / "w"
    args = ["train-seg", "--coco", tiny_run / "eval_ins_seg" / "ground_truth_coco.json", "--images", images_dir,
            "--work-dir", work, "--config", TINY, "--set", "backbone.arch=resnet", "--set", "backbone.depth=18", "--set", "backbone.weights=none",
            "--set", "seg.model=centermask", "--set", "centermask.shape_size=8", "--set", "seg.epochs=4",
            "--set", "seg.score_threshold=0.0", "--device", "cpu"]
    proc = wsis(*args, "--eval-annotations", val_gt)
    held_out = json.loads((work / "metrics.json").read_text())["eval_seg"]["held-out"]
    assert held_out["images"] == 8 and held_out["scored_on"] == "held-out images"
    assert held_out["annotations"] == str(val_gt)
    assert ["eval_seg", "held-out", "scored_on", "held-out images"] in table_rows(proc.stdout)
    assert f"metrics: {work / 'metrics.json'}" in proc.stdout

    # A held-out file with a known answer: the model's own detections as ground truth (every
    # other non-empty one, so the rest are false positives or duplicates), COCO-style category
    # ids with gaps, listed in another order than the model's classes.
    infos = json.loads(val_gt.read_text())["images"]
    preds = own_predictions(work / "train_seg" / "model.pt", images_dir, infos, 0.0)
    cat_id = {name: 10 * (len(NAMES) - i) + 3 for i, name in enumerate(NAMES)}    # cross 13 ... disc 53
    anns = []
    for info, (masks, names, _) in zip(infos, preds):
        nonempty = [k for k in range(len(masks)) if masks[k].any()]
        for k in nonempty[::2]:
            r = rle(masks[k])
            anns.append({"id": 1000 + len(anns), "image_id": 100 + info["id"], "category_id": cat_id[names[k]],
                         "segmentation": r, "area": int(masks[k].sum()),
                         "bbox": [float(v) for v in mask_utils.toBbox(r)], "iscrowd": 0})
    assert len(anns) >= 4
    heldout_file = tmp_path / "heldout.json"
    heldout_file.write_text(json.dumps({
        "images": [dict(info, id=100 + info["id"]) for info in infos], "annotations": anns,
        "categories": [{"id": cat_id[n], "name": n, "supercategory": "shape"} for n in NAMES]}))

    # expected: pycocotools on the file as written, and the dense VOC evaluator
    dets = [{"image_id": 100 + info["id"], "category_id": cat_id[n], "segmentation": rle(m), "score": float(s)}
            for info, (masks, names, scores) in zip(infos, preds) for m, n, s in zip(masks, names, scores)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(heldout_file))
        ev = COCOeval(gt, gt.loadRes(dets), iouType="segm")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    classes = sorted(NAMES, key=lambda n: cat_id[n])                 # the reader's class order
    voc_truth, voc_preds = [], []
    for info, (masks, names, scores) in zip(infos, preds):
        mine = [a for a in anns if a["image_id"] == 100 + info["id"]]
        gm = np.array([mask_utils.decode(a["segmentation"]).astype(bool) for a in mine]).reshape(
            -1, info["height"], info["width"])
        gc = np.array([classes.index(next(n for n in NAMES if cat_id[n] == a["category_id"])) for a in mine], np.int64)
        voc_truth.append((gm, gc))
        voc_preds.append((masks, np.array([classes.index(n) for n in names], np.int64), scores))
    map50 = mean_ap(dense_instance_ap(voc_preds, voc_truth, len(NAMES), (0.5,))[0.5])
    assert 0 < map50 < 1 and 0 < ev.stats[0] < 1

    proc = wsis(*args, "--eval-annotations", heldout_file)
    assert "train_seg: up to date" in proc.stderr                  # only the evaluation reruns
    held_out = json.loads((work / "metrics.json").read_text())["eval_seg"]["held-out"]
    assert held_out["images"] == 8 and held_out["annotations"] == str(heldout_file)
    assert held_out["mAP50"] == pytest.approx(map50, abs=1e-9)
    assert held_out["coco_AP"] == pytest.approx(ev.stats[0], abs=1e-9)
    assert held_out["coco_AP50"] == pytest.approx(ev.stats[1], abs=1e-9)
    assert held_out["coco_AP75"] == pytest.approx(ev.stats[2], abs=1e-9)


def test_run_and_status_take_the_held_out_file(tiny_data, tiny_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work)
    val_gt = tiny_run / "eval_seg" / "ground_truth_coco.json"
    status = wsis("status", *tiny_args(tiny_data, work, "--eval-annotations", val_gt)).stdout
    assert ("eval_seg     stale (config [eval_seg] changed, image list, labels or files changed, "
            "ground truth changed)") in status
    proc = wsis("run", "--stage", "eval_seg", *tiny_args(tiny_data, work, "--eval-annotations", val_gt,
                                                         "--eval-images", tiny_data / "JPEGImages"))
    metrics = json.loads((work / "eval_seg" / "metrics.json").read_text())
    # the val split given as a separate file: the same images and scores as eval_split = val
    val = json.loads((tiny_run / "eval_seg" / "metrics.json").read_text())["val"]
    held_out = metrics["held-out"]
    for key in ("images", "mAP50", "coco_AP", "coco_AP50", "coco_AP75"):
        assert held_out[key] == val[key]
    assert ["eval_seg", "held-out", "scored_on", "held-out images"] in table_rows(proc.stdout)
    assert json.loads((work / "eval_seg" / "ground_truth_coco.json").read_text()) == json.loads(val_gt.read_text())
    assert "eval_seg     done" in wsis("status", *tiny_args(tiny_data, work, "--eval-annotations", val_gt,
                                                           "--eval-images", tiny_data / "JPEGImages")).stdout
