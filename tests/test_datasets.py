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


def write_images(root, names, size=(8, 8)):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros(size + (3,), np.uint8)).save(root / name)


def test_labels_csv_written_by_the_csv_module(tmp_path):
    """Quoted fields (as csv.writer writes them), a byte-order mark and mixed separators."""
    import csv as csv_module
    import io as io_module
    write_images(tmp_path, ["a.jpg", "b.jpg", "my, photo.jpg"])
    buf = io_module.StringIO()
    writer = csv_module.writer(buf)
    writer.writerows([["file", "labels"], ["a.jpg", "bowl, broccoli, orange"], ["b.jpg", "dog"],
                      ["my, photo.jpg", "bowl", "dog"]])
    assert '"bowl, broccoli, orange"' in buf.getvalue()
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode())   # with a UTF-8 BOM, as Excel saves
    ds = open_folder(tmp_path, labels, [])
    assert ds.class_names == ("bowl", "broccoli", "dog", "orange")
    assert ds.labels == {"a": (0, 1, 3), "b": (2,), "my, photo": (0, 2)}
    labels.write_text('\ufeffa.jpg,"bowl, broccoli"\n')    # no header: the BOM must not stick to 'a.jpg'
    assert open_folder(tmp_path, labels, []).ids("all") == ("a",)


def test_labels_csv_problems_are_one_line(tmp_path):
    write_images(tmp_path, ["a.jpg", "b.jpg"])
    labels = tmp_path / "labels.csv"
    labels.write_text('a.jpg,"bowl, orange\nb.jpg,dog\n')       # unbalanced quote swallows the next row
    with pytest.raises(DataError, match=r"labels.csv line \d: odd class name"):
        open_folder(tmp_path, labels, [])
    labels.write_text('a.jpg,bowl"\n')
    with pytest.raises(DataError, match=r"labels.csv line 1: odd class name 'bowl\"'"):
        open_folder(tmp_path, labels, [])
    labels.write_bytes("a.jpg,cat\ncaf\u00e9.jpg,dog\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"labels.csv line 2: not UTF-8 text \(byte 0xe9\)"):
        open_folder(tmp_path, labels, [])
    labels.write_text("a.jpg,cat\nb.jpg,zebra\n")
    with pytest.raises(DataError, match=r"labels.csv line 2: unknown class 'zebra'"):
        open_folder(tmp_path, labels, ["cat", "dog"])
    labels.write_text("../a.jpg,cat\n")
    with pytest.raises(DataError, match=r"labels.csv line 1: file name '../a.jpg' must be a path inside"):
        open_folder(tmp_path, labels, [])


def test_folder_ids_are_relative_paths(tmp_path):
    """Same stem in two sub-folders: two images, two ids, outputs in matching sub-folders."""
    write_images(tmp_path, ["x/img.jpg", "y/img.jpg", "img.png"])
    labels = tmp_path / "labels.csv"
    labels.write_text("x/img.jpg,cat\ny\\img.jpg,dog\nimg.png,cat\n")
    ds = open_folder(tmp_path, labels, [])
    assert ds.ids("all") == ("x/img", "y/img", "img")
    assert ds.image_path("y/img") == tmp_path / "y" / "img.jpg"
    labels.write_text("x/img.jpg,cat\nx/img.jpg,dog\n")
    with pytest.raises(DataError, match=r"line 2: 'x/img.jpg' is listed twice"):
        open_folder(tmp_path, labels, [])
    write_images(tmp_path, ["x/img.png"])
    labels.write_text("x/img.jpg,cat\nx/img.png,dog\n")
    with pytest.raises(DataError, match=r"line 2: 'x/img.png' and 'x/img.jpg' would share the output name 'x/img'"):
        open_folder(tmp_path, labels, [])


def coco_file(tmp_path, images, categories, annotations=()):
    path = tmp_path / "inst.json"
    path.write_text(json.dumps({"images": images, "annotations": list(annotations), "categories": categories}))
    return path


def test_coco_json_problems_are_one_line(tmp_path):
    write_images(tmp_path, ["a.jpg", "b.jpg"])
    good_images = [{"id": 42, "file_name": "a.jpg", "height": 8, "width": 8},
                   {"id": 1000, "file_name": "b.jpg", "height": 8, "width": 8}]
    cats = [{"id": 7, "name": "cat"}, {"id": 90, "name": "dog"}]
    cases = [
        ([{"id": 42, "file_name": "a.jpg", "width": 8}], cats, r"inst.json: image #1 \(id 42\) has no 'height'"),
        ([{"id": 42, "height": 8, "width": 8}], cats, r"inst.json: image #1 \(id 42\) has no 'file_name'"),
        (good_images, [{"id": 7, "name": "cat"}, {"id": 90}], r"inst.json: category #2 \(id 90\) has no 'name'"),
        (good_images, [{"id": 7, "name": "cat"}, {"id": 90, "name": "cat"}],
         r"inst.json: categories 7 and 90 have the same name 'cat'"),
        (good_images, [{"id": 7, "name": "cat"}, {"id": 7, "name": "dog"}], r"inst.json: category id 7 is listed twice"),
        (good_images + [{"id": 42, "file_name": "b.jpg", "height": 8, "width": 8}], cats,
         r"inst.json: image id 42 is listed twice"),
    ]
    for images, categories, message in cases:
        with pytest.raises(DataError, match=message):
            open_dataset("coco", load_config("coco"), tmp_path, coco_file(tmp_path, images, categories))


def test_coco_reader_keeps_the_files_ids(tmp_path):
    write_images(tmp_path, ["a.jpg", "sub/b.jpg"])
    cats = [{"id": 90, "name": "toothbrush", "supercategory": "indoor"},
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 7, "name": "train", "supercategory": "vehicle"}]
    images = [{"id": 1000, "file_name": "sub/b.jpg", "height": 8, "width": 8},
              {"id": 42, "file_name": "a.jpg", "height": 8, "width": 8}]
    ds = open_dataset("coco", load_config("coco"), tmp_path, coco_file(tmp_path, images, cats))
    assert ds.class_names == ("person", "train", "toothbrush")            # id order
    assert ds.coco_categories() == sorted(cats, key=lambda c: c["id"])
    assert ds.coco_category_ids() == [1, 7, 90]
    assert ds.ids("all") == ("sub/b", "a")
    assert [ds.coco_image_id(i, k) for k, i in enumerate(ds.ids("all"))] == [1000, 42]
