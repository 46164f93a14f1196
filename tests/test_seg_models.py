"""Each instance head learns: it overfits two images to AP50 > 0.9, and handles empty images."""

import numpy as np
import pytest
import torch

from wsis.config import load_config
from wsis.data.synthetic import render
from wsis.inference import predict_image
from wsis.metrics import instance_ap
from wsis.models.registry import MODELS, build_instance_model
from wsis.data.seg_data import canvas_target
from wsis.transforms import letterbox

CLASSES = ["disc", "square", "triangle", "star", "cross"]
SIZE = 128
# CPU-sized heads for 128 px inputs
OVERRIDES = ["yolact.anchor_scales=[8, 16, 32, 64, 128]", "centermask.shape_size=16", "centermask.head_channels=64"]


def make_model(name):
    cfg = load_config("synthetic", overrides=OVERRIDES)
    heads = {k: cfg[k] for k in ("solo", "yolact", "centermask")}
    return build_instance_model(name, len(CLASSES), cfg["backbone"], heads, "none", fpn_channels=64)


def two_images():
    """Two generated images with 3 and 1 instances (several classes, one touching pair)."""
    out = []
    for index in (4, 1):
        img, _, obj, inst = render(index, 0, "train", CLASSES, (112, 160), 4)
        masks = np.array([m for _, m in inst])
        out.append((img, masks, np.array([c for c, _ in inst])))
    return out


def batch(samples):
    images, targets = [], []
    for img, masks, labels in samples:
        canvas, _, valid = letterbox(img, SIZE)
        images.append(torch.from_numpy(canvas).permute(2, 0, 1))
        targets.append(canvas_target(masks, labels, SIZE, valid))
    return torch.stack(images).float(), targets


def overfit_ap50(name, steps=150, warmup=30):
    """AP50 on the two training images after ``steps`` Adam steps; the learning rate ramps up
    linearly over ``warmup`` steps, as train_seg's does (without it a from-scratch SOLOv2 can
    saturate one instance's dynamic kernel in the first steps and never recover from it)."""
    torch.manual_seed(0)
    model = make_model(name)
    samples = two_images()
    x, targets = batch(samples)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / warmup)
        loss = sum(model.loss(model(x), targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35)
        opt.step()
    model.eval()
    preds = []
    for img, _, _ in samples:
        p = predict_image(model, img, SIZE, "cpu", 0.05)
        preds.append((p["masks"], p["labels"], p["scores"]))
    ap = instance_ap(preds, [(m, c) for _, m, c in samples], len(CLASSES), (0.5,))[0.5]
    return float(np.nanmean(ap))


def test_solov2_overfits_two_images():
    assert overfit_ap50("solov2") > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("name", ["solo", "yolact", "centermask"])
def test_other_heads_overfit_two_images(name):
    assert overfit_ap50(name) > 0.9


@pytest.mark.parametrize("name", MODELS)
def test_an_image_without_instances_gives_finite_losses(name):
    torch.manual_seed(0)
    model = make_model(name).train()
    samples = two_images()
    x, targets = batch(samples)
    empty = {"masks": torch.zeros(0, SIZE, SIZE, dtype=torch.bool), "labels": torch.zeros(0, dtype=torch.long),
             "boxes": torch.zeros(0, 4)}
    for tg in ([targets[0], empty], [empty, empty]):
        losses = model.loss(model(x), tg)
        total = sum(losses.values())
        assert all(torch.isfinite(v) for v in losses.values()), losses
        total.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
    model.eval()
    pred = predict_image(model, samples[1][0], SIZE)
    assert pred["masks"].shape[1:] == samples[1][0].shape[:2]
    assert len(pred["masks"]) == len(pred["labels"]) == len(pred["scores"])


@pytest.mark.parametrize("name", MODELS)
def test_targets_prepared_where_batches_are_made_give_the_same_losses(name):
    """prepare_target runs in DataLoader workers; the loss must not depend on where the
    assignment was computed."""
    torch.manual_seed(0)
    model = make_model(name).train()
    x, targets = batch(two_images())
    out = model(x)
    prepared = [model.prepare_target(t, SIZE) for t in targets]
    assert any(k not in targets[0] for k in prepared[0])
    # the prepared targets fit this input's outputs, so the loss uses them
    if name == "yolact":
        assert len(prepared[0]["state"]) == len(out["anchors"])
    if name == "centermask":
        assert prepared[0]["centre_targets"]["heat"].shape[-2:] == out["heat"].shape[-2:]
    on_the_fly = model.loss(out, targets)
    from_workers = model.loss(out, prepared)
    assert on_the_fly.keys() == from_workers.keys()
    for k in on_the_fly:
        torch.testing.assert_close(on_the_fly[k], from_workers[k], rtol=0, atol=0)


@pytest.mark.parametrize("seg_frozen, backbone_frozen, expected", [(1, 0, 1), (-1, 2, 1), (-1, 0, 0), (2, 0, 2)])
def test_seg_frozen_stages_stop_the_gradient_of_the_stem_and_first_layers(seg_frozen, backbone_frozen, expected):
    """seg.frozen_stages: N freezes the stem and layer1..N of a loaded backbone; -1 takes
    backbone.frozen_stages capped at 1. Frozen weights get no gradient; the rest do."""
    from wsis.models.backbone import LOAD_LATER
    cfg = load_config("synthetic", overrides=OVERRIDES + [f"backbone.frozen_stages={backbone_frozen}"])
    heads = {k: cfg[k] for k in ("solo", "yolact", "centermask")}
    model = build_instance_model("solov2", len(CLASSES), cfg["backbone"], heads, LOAD_LATER, 64, seg_frozen)
    stages = model.neck.body.stages
    x, targets = batch(two_images())
    sum(model.loss(model(x), targets).values()).backward()
    for i, stage in enumerate(stages):
        frozen = i <= expected if expected else False
        for p in stage.parameters():
            assert p.requires_grad is not frozen
            assert (p.grad is None) is frozen, f"stage {i}"
