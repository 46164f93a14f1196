"""The IRN stages end to end on the tiny dataset: outputs, COCO export, metrics, edge cases."""

import json

import numpy as np
from pycocotools.coco import COCO

from conftest import tiny_args, wsis
from pipelines.job import Job
from pipelines.stages import export, ins_seg, ir_label, irn_infer, sem_seg
from wsis.config import load_config
from wsis.data import open_dataset
from wsis.io import read_label_png, read_npz, write_npz

from conftest import TINY


def test_all_stages_write_their_outputs(tiny_data, tiny_run):
    ds = open_dataset("synthetic", load_config("synthetic", TINY), tiny_data)
    train = ds.ids("train")
    for image_id in train:
        ir = read_label_png(tiny_run / "ir_label" / f"{image_id}.png")
        sem = read_label_png(tiny_run / "sem_seg" / f"{image_id}.png")
        z = read_npz(tiny_run / "ins_seg" / f"{image_id}.npz")
        h, w = ds.semantic_gt(image_id).shape
        assert ir.shape == sem.shape == z["instances"].shape == (h, w)
        allowed = {0} | {c + 1 for c in ds.labels[image_id]}
        assert set(np.unique(ir)) <= allowed | {255}
        assert set(np.unique(sem)) <= allowed
        assert set(z["classes"].tolist()) <= set(ds.labels[image_id])
        assert z["instances"].max() == len(z["classes"]) == len(z["scores"])
    assert (tiny_run / "train_irn" / "model.pt").is_file()


def test_export_loads_with_pycocotools_and_decodes_to_the_pseudo_masks(tiny_data, tiny_run):
    path = tiny_run / "export" / "pseudo_labels.json"
    coco = COCO(str(path))
    ds = open_dataset("synthetic", load_config("synthetic", TINY), tiny_data)
    assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == [1, 2, 3, 4, 5]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(ds.class_names)
    n_total = 0
    for img in coco.loadImgs(coco.getImgIds()):
        image_id = img["wsis_id"]
        assert (ds.image_dir / img["file_name"]) == ds.image_path(image_id)
        z = read_npz(tiny_run / "ins_seg" / f"{image_id}.npz")
        assert (img["height"], img["width"]) == z["instances"].shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        # the default score threshold (1e-5) drops the zero-scored fragments, keeps the rest
        kept = [n for n in range(1, len(z["classes"]) + 1) if z["scores"][n - 1] >= 1e-5]
        assert len(anns) == len(kept)
        for n, ann in zip(kept, anns):
            mask = z["instances"] == n
            assert np.array_equal(coco.annToMask(ann).astype(bool), mask)
            assert ann["category_id"] == z["classes"][n - 1] + 1
            assert ann["area"] == mask.sum() and abs(ann["score"] - z["scores"][n - 1]) < 1e-6
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        n_total += len(anns)
    assert n_total > 0


def test_metrics_table_and_export_path_are_printed(tiny_data, tiny_run):
    proc = wsis("run", "--stage", "all", *tiny_args(tiny_data, tiny_run))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics) == {"eval_cam", "eval_sem_seg", "eval_ins_seg", "merge_review", "eval_seg", "report"}
    seg = metrics["eval_seg"]["val"]
    assert seg["model"] == "solov2" and seg["images"] == 8
    for key in ("mAP50", "coco_AP", "coco_AP50", "coco_AP75"):
        assert 0.0 <= seg[key] <= 1.0
    ins = metrics["eval_ins_seg"]["train"]
    for key in ("mAP25", "mAP50", "mAP70", "mAP75", "coco_AP", "coco_AP50", "coco_AP75"):
        assert 0.0 <= ins[key] <= 1.0
    assert ins["mAP25"] >= ins["mAP50"] >= ins["mAP70"] >= ins["mAP75"]
    # one table: the model's val mAP50 beside the pseudo-labels' mAP50
    table = [line.split() for line in proc.stdout.splitlines()]
    assert ["eval_ins_seg", "train", "mAP50"] in [row[:3] for row in table]
    assert ["eval_seg", "val", "mAP50"] in [row[:3] for row in table]
    assert f"pseudo-labels (COCO JSON): {tiny_run / 'export' / 'pseudo_labels.json'}" in proc.stdout


def test_export_thresholds(tiny_data, tiny_run, tmp_path):
    import shutil
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work)
    wsis("run", "--stage", "export", *tiny_args(tiny_data, work, "--set", "export.min_area=60",
                                                "--set", "export.score_threshold=0.5"))
    anns = json.loads((work / "export" / "pseudo_labels.json").read_text())["annotations"]
    assert all(a["area"] >= 60 and a["score"] >= 0.5 for a in anns)


def test_export_skips_zero_scored_fragments_by_default(tmp_path):
    """The reference's make_cocoann.py skips score < 1e-5: the fragments under 1 % of the image
    that instance synthesis scores 0."""
    from pipelines.stages.export import pseudo_label_annotations
    cfg = load_config("synthetic")
    instances = np.zeros((20, 30), np.int32)
    instances[0:5, 0:5], instances[10:20, 0:20], instances[0:3, 25:30] = 1, 2, 3
    write_npz(tmp_path / "a.npz", instances=instances, classes=np.array([0, 1, 2]),
              scores=np.array([0.0, 0.5, 5e-6], np.float32))
    anns = pseudo_label_annotations(tmp_path, ["a"], [{"id": 7}], cfg["export"])
    assert cfg["export"]["score_threshold"] == 1e-5
    assert [(a["category_id"], a["area"], a["image_id"]) for a in anns] == [(2, 200, 7)]
    # min_area drops by pixel count: the 200-pixel instance goes at 201
    anns = pseudo_label_annotations(tmp_path, ["a"], [{"id": 7}], dict(cfg["export"], min_area=201))
    assert anns == []


def test_images_without_foreground_or_instances_give_valid_empty_outputs(tiny_data, tiny_run, tmp_path):
    """No class at all, CAMs with no confident foreground, and no instance found."""
    cfg = load_config("synthetic", TINY)
    ds = open_dataset("synthetic", cfg, tiny_data)
    image_id = ds.ids("train")[0]
    h, w = ds.semantic_gt(image_id).shape
    cams_dir = tmp_path / "make_cam"
    cases = {
        "no_class": dict(classes=np.zeros(0, np.int64), cam=np.zeros((0, (h + 3) // 4, (w + 3) // 4), np.float16),
                         high_res=np.zeros((0, h, w), np.float16)),
        "weak_cam": dict(classes=np.array([1]), cam=np.zeros((1, (h + 3) // 4, (w + 3) // 4), np.float16),
                         high_res=np.zeros((1, h, w), np.float16)),
    }
    for name, arrays in cases.items():
        write_npz(cams_dir / f"{image_id}.npz", **arrays)
        for stage, module in (("ir_label", ir_label), ("irn_infer", irn_infer), ("sem_seg", sem_seg),
                              ("ins_seg", ins_seg)):
            out = tmp_path / name / stage
            out.mkdir(parents=True)
            job = Job(stage, cfg, ds, (image_id,), out, {"make_cam": cams_dir, "train_irn": tiny_run / "train_irn",
                                                         "irn_infer": tmp_path / name / "irn_infer"})
            module.process(job, [image_id])
        ir = read_label_png(tmp_path / name / "ir_label" / f"{image_id}.png")
        assert set(np.unique(ir)) <= {0, 255} and ir.shape == (h, w)
        assert (read_label_png(tmp_path / name / "sem_seg" / f"{image_id}.png") == 0).all()
        z = read_npz(tmp_path / name / "ins_seg" / f"{image_id}.npz")
        assert z["instances"].shape == (h, w) and len(z["classes"]) == len(z["scores"])
        out = tmp_path / name / "export"
        out.mkdir()
        export.run(Job("export", cfg, ds, (image_id,), out, {"ins_seg": tmp_path / name / "ins_seg"}))
        assert COCO(str(out / "pseudo_labels.json")).getImgIds() == [1]
    assert (read_label_png(tmp_path / "no_class" / "ir_label" / f"{image_id}.png") == 0).all()
    assert len(read_npz(tmp_path / "no_class" / "ins_seg" / f"{image_id}.npz")["classes"]) == 0
