"""IRNet's losses against a pair-by-pair reference written here, and its shapes."""

import math

import numpy as np
import pytest
import torch

from wsis.algorithms.affinity import path_max, shifted_targets
from wsis.algorithms.path_index import half_disc_directions, path_cells
from wsis.models.backbone import ResNetStages
from wsis.models.irn import IRNet, irn_inference, irn_losses


def reference_losses(b, d, lab, radius):
    """Loop over every source pixel and direction, as the definition reads."""
    h, w = lab.shape
    m = radius - 1
    sums = {"bg": [], "fg": [], "neg": [], "dp_fg": [], "dp_bg": []}
    for y in range(0, h - m):
        for x in range(m, w - m):
            for dy, dx in half_disc_directions(radius):
                ty, tx = y + dy, x + dx
                li, lj = lab[y, x], lab[ty, tx]
                if li == 255 or lj == 255:
                    continue
                a = 1 - max(b[y + cy, x + cx] for cy, cx in path_cells(dy, dx))
                diff = d[:, y, x] - d[:, ty, tx]
                if li == lj == 0:
                    sums["bg"].append(-math.log(a + 1e-5))
                    sums["dp_bg"].append(np.abs(diff).mean())
                elif li == lj:
                    sums["fg"].append(-math.log(a + 1e-5))
                    sums["dp_fg"].append(np.abs(diff - np.array([dy, dx])).mean())
                else:
                    sums["neg"].append(-math.log(1 + 1e-5 - a))
    mean = {k: (np.mean(v) if v else 0.0) for k, v in sums.items()}
    boundary = ((mean["bg"] + mean["fg"]) / 2 + mean["neg"]) / 2
    return boundary, (mean["dp_fg"] + mean["dp_bg"]) / 2


def test_losses_match_pairwise_reference():
    rng = np.random.default_rng(0)
    h, w, radius = 9, 12, 4
    lab = np.zeros((h, w), np.int64)
    lab[2:7, 3:8] = 2
    lab[0:3, 8:12] = 5
    lab[5, :] = 255
    b_logit = rng.normal(size=(h, w))
    disp = rng.normal(size=(2, h, w))
    got = irn_losses(torch.tensor(b_logit)[None, None], torch.tensor(disp)[None], torch.tensor(lab)[None], radius)
    want_b, want_d = reference_losses(1 / (1 + np.exp(-b_logit)), disp, lab, radius)
    assert got["boundary"].item() == pytest.approx(want_b, rel=1e-6)
    assert got["displacement"].item() == pytest.approx(want_d, rel=1e-6)


def test_path_max_and_shifts_layout():
    v = torch.arange(6 * 9, dtype=torch.float64).reshape(6, 9)
    src, dst = shifted_targets(v, 3)
    assert src.shape == (4, 5) and dst.shape[-2:] == (4, 5)
    # the max of increasing values along a path is at its far end (largest y, then x)
    pm = path_max(v, 3)
    assert torch.equal(pm.max(dim=0).values, dst.max(dim=0).values)


def test_irnet_shapes_and_frozen_backbone():
    torch.manual_seed(0)
    model = IRNet(ResNetStages(18, freeze_bn=True))
    x = torch.rand(2, 3, 70, 90) * 255
    logits, disp = model(x)
    assert logits.shape == (2, 1, 18, 23) and disp.shape == (2, 2, 18, 23)
    labels = torch.zeros(2, 18, 23, dtype=torch.long)
    labels[:, 4:12, 5:15] = 1
    loss = sum(irn_losses(logits, disp, labels, 5)[k] for k in ("boundary", "displacement"))
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    edge, dp = model.trainable_groups()
    assert all(p.grad is not None for p in edge + dp)
    model.train()
    assert not any(m.training for m in model.backbone.modules())


def test_inference_subtracts_mean_displacement():
    torch.manual_seed(0)
    model = IRNet(ResNetStages(18, freeze_bn=True)).eval()
    img = np.random.default_rng(1).integers(0, 255, (40, 52, 3), np.uint8)
    b0, d0 = irn_inference(model, img)
    model.mean_displacement.copy_(torch.tensor([1.5, -2.0]))
    b1, d1 = irn_inference(model, img)
    assert b0.shape == (10, 13) and d0.shape == (2, 10, 13) and 0 <= b0.min() and b0.max() <= 1
    np.testing.assert_allclose(d0 - d1, np.array([1.5, -2.0])[:, None, None] * np.ones_like(d0), atol=1e-5)
    np.testing.assert_allclose(b0, b1)


def test_inference_pads_to_the_training_crop_like_the_reference():
    # Padding the normalised input with zeros equals padding the raw image with the exact
    # ImageNet mean colour; the outputs are then cropped to the image's stride-4 grid.
    from wsis.models.backbone import IMAGENET_MEAN
    torch.manual_seed(0)
    model = IRNet(ResNetStages(18, freeze_bn=True), crop_size=64).eval()
    img = np.random.default_rng(2).integers(0, 255, (37, 50, 3), np.uint8)
    b, d = irn_inference(model, img)
    canvas = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).mul(255).repeat(1, 64, 64)
    x = torch.from_numpy(img).permute(2, 0, 1).float()
    canvas[:, :37, :50] = x
    flipped = canvas.clone()
    flipped[:, :37, :50] = x.flip(-1)
    with torch.no_grad():
        logits, disp = model(torch.stack([canvas, flipped]))
    expected_b = torch.sigmoid(logits[0, 0, :10, :13] / 2 + logits[1, 0, :10, :13].flip(-1) / 2)
    np.testing.assert_allclose(b, expected_b.numpy(), atol=1e-5)
    np.testing.assert_allclose(d, disp[0, :, :10, :13].numpy(), atol=1e-5)
    # and the padding matters (GroupNorm sees the canvas): unpadded inference differs
    b0, _ = irn_inference(model, img, pad_to=0)
    assert b0.shape == b.shape and np.abs(b0 - b).max() > 1e-4
    # images larger than the crop are not cropped
    big = np.zeros((90, 70, 3), np.uint8)
    assert irn_inference(model, big)[0].shape == (23, 18)


def masked_irn_losses(boundary_logits, displacement, labels, radius):
    """The former implementation (masks multiplied over every pair and direction), kept as
    the reference for the gathered one."""
    from wsis.algorithms.affinity import path_max, shifted_targets
    from wsis.algorithms.path_index import path_index
    boundary = torch.sigmoid(boundary_logits[:, 0])
    aff = 1.0 - path_max(boundary, radius)
    src, dst = shifted_targets(labels, radius)
    src = src.unsqueeze(1)
    valid = (src < 255) & (dst < 255)
    bg_pos = (valid & (src == 0) & (dst == 0)).float()
    fg_pos = (valid & (src == dst) & (src > 0)).float()
    neg = (valid & (src != dst)).float()

    def mean_over(loss, mask):
        return (loss * mask).sum() / (mask.sum() + 1e-5)

    pos_loss = -torch.log(aff + 1e-5)
    bg, fg = mean_over(pos_loss, bg_pos), mean_over(pos_loss, fg_pos)
    ng = mean_over(-torch.log(1.0 + 1e-5 - aff), neg)
    d_src, d_dst = shifted_targets(displacement, radius)
    diff = d_src.unsqueeze(2) - d_dst
    offset = torch.as_tensor(path_index(radius).directions, dtype=diff.dtype).T.reshape(1, 2, -1, 1, 1)
    dp_fg = mean_over(torch.abs(diff - offset), fg_pos.unsqueeze(1)) / 2
    dp_bg = mean_over(torch.abs(diff), bg_pos.unsqueeze(1)) / 2
    return {"boundary": ((bg + fg) / 2 + ng) / 2, "displacement": (dp_fg + dp_bg) / 2}


@pytest.mark.parametrize("radius", [5, 10])
def test_gathered_losses_equal_the_masked_ones_forward_and_backward(radius):
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 30, 34, dtype=torch.float64)
    disp = torch.randn(3, 2, 30, 34, dtype=torch.float64)
    labels = torch.randint(0, 3, (3, 30, 34))
    labels[:, 10:18, 5:20] = 2                          # regions, not only noise
    labels[:, :4] = 255
    labels[2] = 0                                       # an image with background only
    results = []
    for fn in (irn_losses, masked_irn_losses):
        lg, dp = logits.clone().requires_grad_(), disp.clone().requires_grad_()
        out = fn(lg, dp, labels, radius)
        (out["boundary"] + 3 * out["displacement"]).backward()
        results.append((out["boundary"], out["displacement"], lg.grad, dp.grad))
    # the former code counted pairs in float32 masks, so its count + 1e-5 was rounded to float32:
    # a relative difference of about 1e-5 / count (here ~5e-10)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)
