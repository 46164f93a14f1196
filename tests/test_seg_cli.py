"""``wsis predict`` and ``wsis train-seg`` on the tiny dataset."""

from PIL import Image
from pycocotools.coco import COCO

from conftest import TINY, wsis
from wsis.models.registry import load_instance_model


def test_predict_writes_coco_json_and_overlays(tiny_data, tiny_run, tmp_path):
    images = sorted((tiny_data / "JPEGImages").glob("val_*.jpg"))[:3]
    out = tmp_path / "pred"
    proc = wsis("predict", "--checkpoint", tiny_run / "train_seg" / "model.pt", *images, "--out", out,
                "--score-threshold", "0.0", "--device", "cpu")
    assert f"predictions: {out / 'predictions.json'}" in proc.stdout
    coco = COCO(str(out / "predictions.json"))
    infos = coco.loadImgs(coco.getImgIds())
    assert [i["file_name"] for i in infos] == [str(p) for p in images]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["disc", "square", "triangle", "star", "cross"]
    for info, path in zip(infos, images):
        w, h = Image.open(path).size
        assert (info["width"], info["height"]) == (w, h)
        overlay = out / "overlays" / f"{path.stem}.png"
        assert Image.open(overlay).size == (w, h)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]])):
            assert coco.annToMask(ann).shape == (h, w) and 0 <= ann["score"] <= 1
            assert 1 <= ann["category_id"] <= 5


def test_predict_bad_checkpoint(tmp_path, tiny_data):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"nonsense")
    image = next((tiny_data / "JPEGImages").glob("*.jpg"))
    proc = wsis("predict", "--checkpoint", bad, image, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "model.pt: not a wsis instance-segmentation checkpoint" in proc.stderr


def one_line_error(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("wsis: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_predict_checks_its_inputs_before_the_model(tmp_path, tiny_data):
    """The checkpoint here is not even readable: each message must be about the input."""
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"nonsense")
    image = next((tiny_data / "JPEGImages").glob("*.jpg"))
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    cases = [((image, tmp_path / "gone.jpg"), "gone.jpg: no such image or directory"),
             ((empty,), "empty: no images in this directory"),
             ((broken,), "broken.jpg: not a readable image"),
             (("--coco", tmp_path / "none.json", "--images", tiny_data), "none.json: annotations JSON not found"),
             ((), "predict: pass IMAGES")]
    for args, message in cases:
        line = one_line_error(wsis("predict", "--checkpoint", bad, *args, "--out", tmp_path / "o", check=False))
        assert message in line
    assert not (tmp_path / "o").exists()


def test_predict_refuses_a_cam_checkpoint_and_reads_directories(tiny_data, tiny_run, tmp_path):
    image = next((tiny_data / "JPEGImages").glob("*.jpg"))
    for stage in ("train_cam", "train_irn"):
        line = one_line_error(wsis("predict", "--checkpoint", tiny_run / stage / "model.pt", image,
                                   "--out", tmp_path / "o", check=False))
        assert "model.pt: a CAM or IRNet checkpoint (train_cam / train_irn), not an instance-segmentation model" in line
    images = tmp_path / "photos"
    images.mkdir()
    for p in sorted((tiny_data / "JPEGImages").glob("val_*.jpg"))[:3]:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"
    wsis("predict", "--checkpoint", tiny_run / "train_seg" / "model.pt", images, "--out", out, "--device", "cpu")
    coco = COCO(str(out / "predictions.json"))
    assert [i["file_name"] for i in coco.loadImgs(coco.getImgIds())] == [str(p) for p in sorted(images.glob("*.jpg"))]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["val_00000.png", "val_00001.png", "val_00002.png"]


def test_train_seg_on_a_users_coco_file(tiny_data, tiny_run, tmp_path):
    gt = tiny_run / "eval_ins_seg" / "ground_truth_coco.json"   # ground truth of the train split
    work = tmp_path / "w"
    args = ["train-seg", "--coco", gt, "--images", tiny_data / "JPEGImages", "--work-dir", work,
            "--config", TINY, "--set", "backbone.arch=resnet", "--set", "backbone.depth=18", "--set", "backbone.weights=none",
            "--set", "seg.model=centermask", "--set", "centermask.shape_size=8", "--device", "cpu"]
    proc = wsis(*args)
    assert f"model: {work / 'train_seg' / 'model.pt'}" in proc.stdout
    # the banner says what it trains on and from what; nothing about pseudo-labels
    assert f"train_seg: train centermask on {gt} (backbone from random initialisation)" in proc.stderr
    assert "pseudo-labels" not in proc.stderr
    model, arch, names = load_instance_model(work / "train_seg" / "model.pt")
    assert arch["model"] == "centermask" and names == ["disc", "square", "triangle", "star", "cross"]
    assert "train_seg: up to date" in wsis(*args).stderr
    proc = wsis("train-seg", "--coco", tmp_path / "none.json", "--images", tiny_data / "JPEGImages",
                "--work-dir", work, check=False)
    assert proc.returncode == 2 and "none.json: annotations JSON not found" in proc.stderr


def tiny_checkpoint(path, change=None):
    """A train_seg model file of the tiny preset's model (untrained), its tensors edited by ``change``."""
    import torch
    from wsis.config import load_config
    from wsis.models.registry import build_instance_model
    cfg = load_config("synthetic", TINY)
    heads = {k: cfg[k] for k in ("solo", "yolact", "centermask")}
    backbone = dict(cfg["backbone"], weights="none")
    model = build_instance_model(cfg["seg"]["model"], 5, backbone, heads, "none", cfg["seg"]["fpn_channels"])
    state = model.state_dict()
    if change:
        change(state)
    arch = {"model": cfg["seg"]["model"], "backbone": backbone, "heads": heads, "input_size": cfg["seg"]["input_size"],
            "fpn_channels": cfg["seg"]["fpn_channels"]}
    torch.save({"arch": arch, "class_names": ["disc", "square", "triangle", "star", "cross"], "state_dict": state}, path)
    return path


def test_a_checkpoint_that_does_not_fit_its_model_is_one_line(tmp_path):
    """One extra tensor, one missing, one of another shape: refused before anything is
    written, naming the file and the first keys that differ, not PyTorch's multi-line error."""
    import torch
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (120, 80, 40)).save(image)
    good = tiny_checkpoint(tmp_path / "good.pt")
    keys = list(torch.load(good, weights_only=True)["state_dict"])
    cases = {
        "extra": (lambda s: s.update({"extra.weight": torch.zeros(3)}), "1 unexpected key: extra.weight"),
        "missing": (lambda s: s.pop(keys[-1]), f"1 missing key: {keys[-1]}"),
        "shape": (lambda s: s.update({keys[0]: torch.zeros(1, 2)}), f"1 of another shape: {keys[0]} [1, 2]"),
    }
    for name, (change, fragment) in cases.items():
        path = tiny_checkpoint(tmp_path / f"{name}.pt", change)
        out = tmp_path / f"out_{name}"
        line = one_line_error(wsis("predict", "--checkpoint", path, image, "--out", out, "--device", "cpu",
                                   check=False))
        assert f"{path}: does not fit the solov2 model" in line and fragment in line, line
        assert not (out / "results.json").exists()
    proc = wsis("predict", "--checkpoint", good, image, "--out", tmp_path / "out", "--device", "cpu")
    assert (tmp_path / "out" / "results.json").is_file(), proc.stderr
