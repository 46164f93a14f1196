"""COCO ids survive: the export and ``wsis predict`` use the user's image ids, category ids,
names and supercategories, and pycocotools evaluates the results against the user's file."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from conftest import TINY, cocoeval_stats, wsis
from wsis.config import load_config
from wsis.data import open_dataset
from wsis.io import read_npz

CATEGORIES = [{"id": 90, "name": "disc", "supercategory": "round"},
              {"id": 1, "name": "square", "supercategory": "angular"},
              {"id": 7, "name": "triangle", "supercategory": "angular"},
              {"id": 23, "name": "star", "supercategory": "pointed"},
              {"id": 55, "name": "cross", "supercategory": "pointed"}]


def users_coco_file(voc, split, path, image_ids, categories):
    """The synthetic ground truth of ``split`` as a COCO file with the given ids."""
    by_name = {c["name"]: c["id"] for c in categories}
    images, anns = [], []
    for coco_id, image_id in zip(image_ids, voc.ids(split)):
        inst = voc.instance_gt(image_id)
        h, w = inst.masks.shape[1:]
        images.append({"id": coco_id, "file_name": f"{image_id}.jpg", "height": h, "width": w})
        for m, c in zip(inst.masks, inst.classes):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": 500 + len(anns), "image_id": coco_id, "category_id": by_name[voc.class_names[c]],
                         "segmentation": rle, "iscrowd": 0, "area": int(m.sum()),
                         "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


def evaluate(gt_path, results):
    return cocoeval_stats(gt_path, results)


@pytest.fixture(scope="module")
def voc(tiny_data):
    return open_dataset("synthetic", load_config("synthetic", TINY), tiny_data)


@pytest.fixture(scope="module")
def user_file(voc, tmp_path_factory):
    """Training images with non-contiguous image ids and gapped category ids, in shuffled order."""
    ids = [42, 1000] + [1001 + 37 * k for k in range(len(voc.ids("train")) - 2)]
    return users_coco_file(voc, "train", tmp_path_factory.mktemp("user") / "instances.json", ids, CATEGORIES)


def test_export_keeps_the_users_ids(tiny_data, user_file, tmp_path):
    work = tmp_path / "w"
    wsis("run", "--dataset", "coco", "--data-root", tiny_data / "JPEGImages", "--annotations", user_file,
         "--config", TINY, "--set", "backbone.arch=resnet", "--set", "backbone.depth=18", "--set", "backbone.weights=none",
         "--set", "train_irn.radius=5", "--work-dir", work,
         "--stage", "export", "--device", "cpu")
    user = json.loads(user_file.read_text())
    exported = json.loads((work / "export" / "pseudo_labels.json").read_text())
    assert exported["categories"] == sorted(CATEGORIES, key=lambda c: c["id"])
    assert [{k: im[k] for k in ("id", "file_name", "height", "width")} for im in exported["images"]] == user["images"]
    assert exported["annotations"], "the tiny run exports some instances"
    # each exported instance carries the category whose *name* is the class ins_seg gave it
    ds = open_dataset("coco", load_config("coco"), tiny_data / "JPEGImages", user_file)
    name_to_id = {c["name"]: c["id"] for c in CATEGORIES}
    wsis_id = {im["id"]: im["wsis_id"] for im in exported["images"]}
    for ann in exported["annotations"]:
        z = read_npz(work / "ins_seg" / f"{wsis_id[ann['image_id']]}.npz")
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        n = int(np.bincount(z["instances"][mask]).argmax())
        assert (z["instances"] == n).sum() == mask.sum()
        assert ann["category_id"] == name_to_id[ds.class_names[z["classes"][n - 1]]]
    results = [{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")} for a in exported["annotations"]]
    stats = evaluate(user_file, results)
    assert len(stats) == 12 and -1 <= min(stats) and max(stats) <= 1


def test_predict_results_evaluate_against_the_users_file(tiny_data, voc, user_file, tmp_path):
    work = tmp_path / "w"
    wsis("train-seg", "--coco", user_file, "--images", tiny_data / "JPEGImages", "--work-dir", work,
         "--config", TINY, "--set", "backbone.arch=resnet", "--set", "backbone.depth=18", "--set", "backbone.weights=none",
         "--set", "seg.model=centermask", "--set", "centermask.shape_size=8", "--device", "cpu")
    model = work / "train_seg" / "model.pt"
    # a held-out file: other image ids, the same names under other category ids
    val_cats = [dict(c, id=i) for c, i in zip(CATEGORIES, (3, 11, 4, 77, 2))]
    val_file = users_coco_file(voc, "val", tmp_path / "val.json", [5000 + 3 * k for k in range(8)], val_cats)
    out = tmp_path / "p"
    proc = wsis("predict", "--checkpoint", model, "--coco", val_file, "--images", tiny_data / "JPEGImages",
                "--out", out, "--score-threshold", "0.0", "--device", "cpu")
    assert f"results (COCO loadRes list): {out / 'results.json'}" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results and all(set(r) == {"image_id", "category_id", "segmentation", "score"} for r in results)
    assert {r["image_id"] for r in results} <= {5000 + 3 * k for k in range(8)}
    stats = evaluate(val_file, results)
    assert len(stats) == 12 and -1 <= min(stats) and max(stats) <= 1
    full = COCO(str(out / "predictions.json"))          # the full file loads on its own too
    assert sorted(full.getCatIds()) == sorted({c["id"] for c in val_cats})

    # the same images given as a directory: image ids 1..N in name order, the training file's category ids
    plain = tmp_path / "q"
    images = sorted((tiny_data / "JPEGImages").glob("val_*.jpg"))
    wsis("predict", "--checkpoint", model, tiny_data / "JPEGImages", "--out", plain, "--score-threshold", "0.0",
         "--device", "cpu")
    full_plain = json.loads((plain / "predictions.json").read_text())
    files = sorted((tiny_data / "JPEGImages").glob("*.jpg"))
    assert [im["id"] for im in full_plain["images"]] == list(range(1, len(files) + 1))
    assert full_plain["categories"] == sorted(CATEGORIES, key=lambda c: c["id"])
    # detection by detection, the two runs agree once ids are translated through the names
    train_name = {c["id"]: c["name"] for c in CATEGORIES}
    val_id = {c["name"]: c["id"] for c in val_cats}
    plain_image = {im["id"]: im["file_name"] for im in full_plain["images"]}
    val_image = {im["id"]: str(tiny_data / "JPEGImages" / im["file_name"])
                 for im in json.loads(val_file.read_text())["images"]}
    as_val = sorted((plain_image[a["image_id"]], val_id[train_name[a["category_id"]]], round(a["score"], 5))
                    for a in full_plain["annotations"] if plain_image[a["image_id"]] in map(str, images))
    got = sorted((val_image[r["image_id"]], r["category_id"], round(r["score"], 5)) for r in results)
    assert got == as_val


def test_renumbered_ids_make_the_export_stale(voc, tiny_data, tmp_path):
    """Issue 21, point 7: the export writes the input's ids, so they are in its fingerprint."""
    path = users_coco_file(voc, "train", tmp_path / "instances.json", list(range(1, 17)), CATEGORIES)
    args = ("--dataset", "coco", "--data-root", tiny_data / "JPEGImages", "--annotations", path, "--config", TINY,
            "--set", "backbone.arch=resnet", "--set", "backbone.depth=18", "--set", "backbone.weights=none", "--set", "train_irn.radius=5",
            "--work-dir", tmp_path / "w", "--device", "cpu")
    wsis("run", "--stage", "export", *args)
    renumbered = [dict(c, id=c["id"] + 10, supercategory=c["supercategory"] + "!") for c in CATEGORIES]
    users_coco_file(voc, "train", path, list(range(1001, 1017)), renumbered)
    status = {line.split()[0]: line.split(None, 1)[1] for line in wsis("status", *args).stdout.splitlines()}
    assert status["export"] == "stale (COCO image or category ids changed)", status
    assert status["train_cam"] == status["ins_seg"] == "done"
    wsis("run", "--stage", "export", *args)
    exported = json.loads((tmp_path / "w" / "export" / "pseudo_labels.json").read_text())
    assert exported["categories"] == sorted(renumbered, key=lambda c: c["id"])
    assert [im["id"] for im in exported["images"]] == list(range(1001, 1017))
    assert {a["category_id"] for a in exported["annotations"]} <= {c["id"] for c in renumbered}
