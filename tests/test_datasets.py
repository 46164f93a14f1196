import json
import shutil

import numpy as np
import pytest
from PIL import Image

from wsis.config import load_config
from wsis.data import open_dataset
from wsis.data.folder import open_folder
from wsis.data.synthetic import ensure_synthetic, render
from wsis.errors import ConfigError, DataError
from wsis.io import read_label_png, read_rgb

from conftest import TINY

CLASSES = ["disc", "square", "triangle", "star", "cross"]


def tiny_cfg(**overrides):
    return load_config("synthetic", TINY, [f"{k}={v}" for k, v in overrides.items()])


def test_generator_is_deterministic_and_seeded():
    a = render(3, 0, "train", CLASSES, (48, 64), 4)
    b = render(3, 0, "train", CLASSES, (48, 64), 4)
    c = render(3, 1, "train", CLASSES, (48, 64), 4)
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3]))
    assert not np.array_equal(a[0], c[0]) or a[0].shape != c[0].shape


def test_synthetic_has_the_hard_cases():
    """Repeated classes, several instances, and touching/overlapping instances occur often."""
    repeated = touching = 0
    n = 120
    for i in range(n):
        _, cls_map, obj_map, inst = render(i, 0, "train", CLASSES, (112, 160), 4)
        classes = [c for c, _ in inst]
        assert 1 <= len(inst) <= 4
        repeated += len(classes) != len(set(classes))
        # two instances touch if a pixel of one is 4-adjacent to a pixel of the other
        a, b = obj_map[:, :-1], obj_map[:, 1:]
        c, d = obj_map[:-1], obj_map[1:]
        touching += bool(((a != b) & (a > 0) & (b > 0)).any() or ((c != d) & (c > 0) & (d > 0)).any())
        # the class map agrees with the instance map
        for k, (cls, m) in enumerate(inst):
            assert (obj_map[m] == k + 1).all() and (cls_map[m] == cls + 1).all()
        assert ((cls_map > 0) == (obj_map > 0)).all()
    assert repeated > 0.25 * n
    assert touching > 0.15 * n


def test_voc_reader_on_synthetic_matches_ground_truth(tiny_data):
    ds = open_dataset("synthetic", tiny_cfg(), tiny_data)
    assert ds.class_names == tuple(CLASSES)
    assert len(ds.ids("train")) == 16 and len(ds.ids("val")) == 8
    for image_id in ds.ids("val"):
        gt = ds.semantic_gt(image_id)
        inst = ds.instance_gt(image_id)
        present = sorted(set(np.unique(gt)) - {0, 255})
        assert [c + 1 for c in ds.labels[image_id]] == present
        assert sorted(set(inst.classes.tolist())) == list(ds.labels[image_id])
        assert inst.masks.shape[1:] == gt.shape == read_rgb(ds.image_path(image_id)).shape[:2]


def test_synthetic_config_that_contradicts_the_data_on_disk(tiny_data):
    with pytest.raises(ConfigError, match=r"synthetic.json: dataset was generated with different settings \(seed"):
        ensure_synthetic(tiny_data, tiny_cfg(**{"synthetic.seed": 7}))
    with pytest.raises(ConfigError, match="synthetic class 'dog' unknown"):
        ensure_synthetic(tiny_data.parent / "other", tiny_cfg(**{"data.classes": '["dog"]'}))


def test_wrong_data_root(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: not a VOC devkit root"):
        open_dataset("voc2012", load_config("voc2012"), tmp_path)


def test_missing_unknown_and_empty(data_copy):
    cfg = tiny_cfg()
    (data_copy / "JPEGImages" / "val_00003.jpg").unlink()
    with pytest.raises(DataError, match=r"val_00003.jpg: image is listed but missing"):
        open_dataset("synthetic", cfg, data_copy)
    shutil.copy(data_copy / "JPEGImages" / "val_00002.jpg", data_copy / "JPEGImages" / "val_00003.jpg")
    xml = data_copy / "Annotations" / "train_00001.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>zebra", 1))
    with pytest.raises(DataError, match=r"train_00001.xml: unknown class 'zebra"):
        open_dataset("synthetic", cfg, data_copy)
    xml.write_text(xml.read_text().replace("<name>zebra", "<name>", 1))
    (data_copy / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DataError, match=r"val.txt: split 'val' is empty"):
        open_dataset("synthetic", cfg, data_copy)


def test_corrupt_and_truncated_images(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="bad.jpg: not a readable image"):
        read_rgb(bad)
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:400])
    with pytest.raises(DataError, match="cut.jpg: corrupt image"):
        read_rgb(cut)


def test_voc_packaged_lists_and_labels_agree_with_cls_labels():
    """The shipped lists are the standard ones; cls_labels.npy covers train_aug and val."""
    from importlib import resources
    from wsis.data.voc import read_split_list
    base = resources.files("wsis.data") / "voc12"
    ids, _ = read_split_list(base, "train_aug")   # no devkit list there: packaged one
    assert len(ids) == 10582
    val, _ = read_split_list(base, "val")
    assert len(val) == 1449 and not set(ids) & set(val)
    labels = np.load(str(base / "cls_labels.npy"), allow_pickle=True).item()
    assert len(labels) >= 10582 + 1449 - 1


def test_folder_dataset(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    csv = tmp_path / "labels.csv"
    csv.write_text("file,labels\na.jpg,cat;person\nb.jpg;dog\n")
    ds = open_folder(tmp_path, csv, [])
    assert ds.class_names == ("cat", "dog", "person")
    assert ds.labels == {"a": (0, 2), "b": (1,)} and ds.ids("all") == ("a", "b")
    assert not ds.has_masks
    csv.write_text("a.jpg,cat\nb.jpg\n")
    with pytest.raises(DataError, match=r"labels.csv line 2: no class names after the file name 'b.jpg'"):
        open_folder(tmp_path, csv, [])
    csv.write_text("a.jpg,cat\nc.jpg,dog\n")
    with pytest.raises(DataError, match=r"c.jpg: image is listed but missing"):
        open_folder(tmp_path, csv, [])
    csv.write_text("a.jpg,cat\n")
    with pytest.raises(DataError, match=r"labels.csv line 1: unknown class 'cat'"):
        open_folder(tmp_path, csv, ["dog"])
    csv.write_text("")
    with pytest.raises(DataError, match="labels.csv: no labelled images"):
        open_folder(tmp_path, csv, [])


def test_coco_dataset_labels_and_masks(tiny_data, tmp_path):
    """A COCO file made from the synthetic GT gives the same labels and masks."""
    from pycocotools import mask as mask_utils
    voc = open_dataset("synthetic", tiny_cfg(), tiny_data)
    images, anns = [], []
    for k, image_id in enumerate(voc.ids("val")):
        inst = voc.instance_gt(image_id)
        h, w = inst.masks.shape[1:]
        images.append({"id": 100 + k, "file_name": f"{image_id}.jpg", "height": h, "width": w})
        for m, c in zip(inst.masks, inst.classes):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": len(anns) + 1, "image_id": 100 + k, "category_id": 10 + int(c),
                         "segmentation": rle, "iscrowd": 0, "area": int(m.sum()), "bbox": [0, 0, 1, 1]})
    cats = [{"id": 10 + i, "name": n} for i, n in enumerate(CLASSES)]
    path = tmp_path / "inst.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    coco = open_dataset("coco", load_config("coco"), tiny_data / "JPEGImages", path)
    assert coco.class_names == tuple(CLASSES)
    for image_id in voc.ids("val"):
        assert coco.labels[image_id] == voc.labels[image_id]
        np.testing.assert_array_equal(coco.semantic_gt(image_id), voc.semantic_gt(image_id))
    anns[0]["category_id"] = 99
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    with pytest.raises(DataError, match="inst.json: annotation 1 has unknown category id 99"):
        open_dataset("coco", load_config("coco"), tiny_data / "JPEGImages", path)


def test_label_png_round_trip(tmp_path):
    from wsis.io import write_label_png
    lab = np.array([[0, 1, 255], [20, 3, 0]], np.uint8)
    write_label_png(tmp_path / "l.png", lab)
    np.testing.assert_array_equal(read_label_png(tmp_path / "l.png"), lab)
    assert not list(tmp_path.glob("*.tmp-*"))
