"""The voc2012 preset follows the reference recipe's splits (official run_sample.py): CAMs,
relation labels and IRNet training on train_aug; mean displacement, pseudo-labels and their
evaluation on train; held-out evaluation on val."""

from pathlib import Path

from pipelines.dag import STAGES
from pipelines.engine import Pipeline
from wsis.config import load_config
from wsis.data import Dataset


def voc_like_pipeline(tmp_path: Path) -> Pipeline:
    cfg = load_config("voc2012")
    cfg["run"]["image_hash"] = "off"     # no image files here: ids and labels identify the images
    splits = {"train_aug": ("a1", "a2", "t1", "t2"), "train": ("t1", "t2"), "val": ("v1",)}
    labels = {i: (0,) for ids in splits.values() for i in ids}
    ds = Dataset("voc2012", tmp_path, tuple(cfg["data"]["classes"]), splits, labels, has_masks=True)
    return Pipeline(STAGES, cfg, ds, tmp_path / "work")


def test_voc2012_preset_splits():
    d = load_config("voc2012")["data"]
    assert (d["train_split"], d["irn_split"], d["infer_split"], d["eval_split"]) == \
        ("train_aug", "train_aug", "train", "val")


def test_each_stage_sees_the_reference_images(tmp_path):
    p = voc_like_pipeline(tmp_path)
    ids = {name: set(p.stage_ids(stage)) for name, stage in p.stages.items()}
    train_aug, train, val = {"a1", "a2", "t1", "t2"}, {"t1", "t2"}, {"v1"}
    assert ids["train_cam"] == train_aug
    assert ids["make_cam"] == train_aug | val          # relation labels, pseudo-labels, CAM eval
    assert ids["eval_cam"] == train | val
    assert ids["ir_label"] == train_aug
    assert ids["train_irn"] == train_aug                # trains on train_aug, mean on train
    for name in ("sem_seg", "ins_seg", "export", "eval_sem_seg", "eval_ins_seg"):
        assert ids[name] == train, name
    assert ids["eval_seg"] == val


def test_changing_the_irn_split_reruns_relation_labels_and_irnet_only(tmp_path):
    p = voc_like_pipeline(tmp_path)
    before = {n: p.fingerprint(s)[0] for n, s in p.stages.items()}
    p2 = voc_like_pipeline(tmp_path)
    p2.cfg["data"]["irn_split"] = "train"
    after = {n: p2.fingerprint(s)[0] for n, s in p2.stages.items()}
    changed = {n for n in before if before[n] != after[n]}
    assert {"make_cam", "ir_label", "train_irn", "sem_seg", "ins_seg"} <= changed
    assert "train_cam" not in changed


def test_mean_displacement_uses_top_left_crops_of_the_given_images(tmp_path):
    """Hand-computed with a stub whose displacement is (mean, max) of each padded crop; the
    same for any batch size; and for a real IRNet, the batched means equal one image at a time
    through its own forward pass (as inference pads it)."""
    import numpy as np
    import torch

    from pipelines.job import Job
    from pipelines.stages.train_irn import mean_displacement
    from wsis.models.backbone import ResNetStages
    from wsis.models.irn import IRNet

    images = {"t1": np.full((40, 30, 3), 10, np.uint8), "t2": np.zeros((20, 50, 3), np.uint8),
              "t3": np.full((12, 12, 3), 4, np.uint8), "other": np.full((8, 8, 3), 200, np.uint8)}
    images["t2"][:, 32:] = 255          # outside the 32 x 32 top-left crop

    class Stub(torch.nn.Module):
        """Displacement (y, x) = (mean, max) of the padded crop it was given."""
        def canvas(self, x, pad_to=None):
            assert pad_to == 32
            return torch.nn.functional.pad(x, (0, 32 - x.shape[-1], 0, 32 - x.shape[-2]))

        def canvas_features(self, x):
            return [x]

        def displacement(self, feats):
            x = feats[0]
            assert x.shape[-2:] == (32, 32)
            stats = torch.stack([x.mean(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], dim=1)   # (B, 2)
            return stats[:, :, None, None].expand(-1, -1, 8, 8)

    class DS(Dataset):
        def load_image(self, image_id):
            return images[image_id]

    ds = DS("toy", tmp_path, ("a",), {"all": tuple(images)}, {i: (0,) for i in images})
    ids = ["t1", "t2", "t3"]
    expected = [(10 * 32 * 30 / 32 ** 2 + 0 + 4 * 12 * 12 / 32 ** 2) / 3, (10 + 0 + 4) / 3]
    for batch in (1, 2, 16):
        job = Job("train_irn", {"train_irn": {"crop_size": 32, "batch_size": batch}}, ds, tuple(images), tmp_path, {})
        np.testing.assert_allclose(mean_displacement(Stub(), job, ids).numpy(), expected, rtol=1e-6)

    torch.manual_seed(0)
    model = IRNet(ResNetStages(18, freeze_bn=True), crop_size=32).eval()
    rng = np.random.default_rng(0)
    images.update({k: rng.integers(0, 256, size, dtype=np.uint8)
                   for k, size in (("r1", (40, 30, 3)), ("r2", (20, 50, 3)), ("r3", (32, 32, 3)))})
    ids = ["r1", "r2", "r3"]
    job = Job("train_irn", {"train_irn": {"crop_size": 32, "batch_size": 2}}, ds, tuple(images), tmp_path, {})
    with torch.no_grad():
        one_by_one = torch.stack([model(torch.from_numpy(np.ascontiguousarray(images[i][:32, :32])).permute(2, 0, 1)[None]
                                        .float(), pad_to=32, crop_output=False)[1][0].mean(dim=(1, 2)) for i in ids])
    np.testing.assert_allclose(mean_displacement(model, job, ids).numpy(), one_by_one.mean(0).numpy(), rtol=1e-4, atol=1e-6)
