from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from conftest import TINY
from pipelines.job import Job
from pipelines.stages import train_cam as train_cam_stage
from wsis.config import load_config
from wsis.data import open_dataset
from wsis.errors import ConfigError
from wsis.models.backbone import LOAD_LATER, ResNetStages
from wsis.models.cam import CAMNet, multiscale_cam


def test_backbone_strides_and_freezing():
    net = ResNetStages(18, LOAD_LATER, freeze_bn=True, frozen_stages=2)   # random weights would unfreeze
    feats = net(torch.zeros(1, 3, 64, 96))
    # strides 4, 4, 8, 16, 16
    assert [f.shape[-2:] for f in feats] == [(16, 24), (16, 24), (8, 12), (4, 6), (4, 6)]
    assert net.channels == [64, 64, 128, 256, 512]
    trainable = {n.split(".")[1] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"3", "4"}  # layer3 and layer4 only
    # every BatchNorm (20 in resnet18) is torchvision's FrozenBatchNorm2d: buffers, no parameters
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in net.modules()) == 20
    assert not any(True for m in net.modules() if isinstance(m, FrozenBatchNorm2d) for _ in m.parameters())
    with pytest.raises(ConfigError, match="backbone.depth: 19"):
        ResNetStages(19)


def test_frozen_batchnorm_computes_what_batchnorm_in_eval_mode_does():
    # the same random statistics in a plain (unfrozen) backbone and a frozen one: in train()
    # mode the frozen one still normalises with the stored statistics, and the state dict of
    # the plain one (num_batches_tracked included) loads into it
    torch.manual_seed(0)
    plain = ResNetStages(18, "none", freeze_bn=False)
    for m in plain.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    frozen = ResNetStages(18, LOAD_LATER, freeze_bn=True)
    frozen.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    expected = plain.eval()(x)[-1]
    got = frozen.train()(x)[-1]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_bottleneck_backbone_output_stride_16():
    net = ResNetStages(50, freeze_bn=True)
    assert net(torch.zeros(1, 3, 64, 64))[-1].shape == (1, 2048, 4, 4)


def test_local_weights_file(tmp_path):
    net = ResNetStages(18)
    path = tmp_path / "w.pth"
    torch.save({k.replace("stages.", "X"): v for k, v in net.state_dict().items()}, path)
    from wsis.errors import WsisError
    with pytest.raises(WsisError, match="does not fit resnet18"):
        ResNetStages(18, weights=str(path))
    with pytest.raises(ConfigError, match="nothere.pth: file not found"):
        ResNetStages(18, weights=str(tmp_path / "nothere.pth"))


def test_multiscale_cam_shapes_and_normalisation():
    torch.manual_seed(0)
    model = CAMNet(ResNetStages(18, "none", freeze_bn=True, frozen_stages=0), 5).eval()
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8)
    low, high = multiscale_cam(model, img, [4, 1], scales=(1.0, 0.5))
    assert low.shape == (2, 13, 18) and high.shape == (2, 50, 70)
    assert low.min() >= 0 and high.min() >= 0
    np.testing.assert_allclose(low.reshape(2, -1).max(1), 1.0, atol=1e-4)
    np.testing.assert_allclose(high.reshape(2, -1).max(1), 1.0, atol=1e-4)
    # flipping the image flips the (flip-averaged) CAM
    low_f, _ = multiscale_cam(model, img[:, ::-1], [4, 1], scales=(1.0,))
    low_1, _ = multiscale_cam(model, img, [4, 1], scales=(1.0,))
    np.testing.assert_allclose(low_f[:, :, ::-1], low_1, atol=1e-4)
    # an image without classes gives empty CAMs
    e_low, e_high = multiscale_cam(model, img, [], scales=(1.0,))
    assert e_low.shape == (0, 13, 18) and e_high.shape == (0, 50, 70)


class OneHotCAM:
    """A stand-in CAM net: its stride-16 map (ceil(H/16) x ceil(W/16)) is 1 at one cell."""

    def __init__(self, cell):
        self.cell, self.inputs = cell, []

    def cam(self, batch):
        self.inputs.append(batch)
        b, _, h, w = batch.shape
        out = torch.zeros(b, 1, -(-h // 16), -(-w // 16))
        out[:, 0, self.cell[0], self.cell[1]] = 1.0
        out[1:] = out[1:].flip(-1)   # so that flipping back puts every copy at ``cell``
        return out


def test_high_res_cam_lines_up_with_its_stride16_cell():
    # A 375 x 500 image has a 24 x 32 stride-16 map; cell (22, 30) covers rows 352..367 and
    # columns 480..495, so its peak after bilinear upsampling by exactly 16 is at the cell's
    # centre (359.5, 487.5). Resizing 24 -> 375 rows directly would put it near row 351.
    img = np.zeros((375, 500, 3), np.uint8)
    _, high = multiscale_cam(OneHotCAM((22, 30)), img, [0], scales=(1.0,), flip=True)
    assert high.shape == (1, 375, 500)
    rows, cols = np.nonzero(high[0] == high[0].max())
    assert set(rows) == {359, 360} and set(cols) == {487, 488}


def test_downscaled_cam_input_is_antialiased_bicubic():
    import torch.nn.functional as F
    from PIL import Image
    # vertical stripes of period 3 are above the Nyquist rate once shrunk by 2: a resize
    # without a low-pass filter keeps much of their contrast as aliasing, an antialiased one
    # blurs them towards grey
    stripes = np.tile(np.array([0, 255, 255], np.uint8), (32, 22))[:, :64]
    img = np.repeat(stripes[:, :, None], 3, axis=2)
    stub = OneHotCAM((0, 0))
    multiscale_cam(stub, img, [0], scales=(0.5,), flip=False)
    fed = stub.inputs[0][0].permute(1, 2, 0).numpy()
    expected = np.asarray(Image.fromarray(img).resize((32, 16), Image.BICUBIC))
    np.testing.assert_array_equal(fed, expected)
    aliased = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(16, 32),
                            mode="bicubic", align_corners=False, antialias=False).clamp(0, 255)
    assert fed.std() < 0.5 * aliased.numpy().std()


def _train_cam(tiny_data, out: Path, weights: Path, frozen_stages: int = 4, **train_cam) -> dict:
    """train_cam on the tiny synthetic set with a ResNet-18 from ``weights``, its stem and first
    ``frozen_stages`` stages frozen (4: all)."""
    cfg = load_config("synthetic", TINY, overrides=[f"backbone.weights={weights}", f"backbone.frozen_stages={frozen_stages}",
                                                    "backbone.freeze_bn=true"])
    cfg["train_cam"].update(train_cam)
    ds = open_dataset("synthetic", cfg, tiny_data)
    out.mkdir(parents=True)
    train_cam_stage.run(Job("train_cam", cfg, ds, ds.ids(cfg["data"]["train_split"]), out, {}, "cpu", 1))
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture()
def resnet18_file(tmp_path):
    """A 'pretrained' ResNet-18 file (seeded random filters): freezing applies to it."""
    import torchvision
    torch.manual_seed(3)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_cached_views_train_the_head_as_per_step_crops_do(tiny_data, tmp_path, resnet18_file):
    """With a backbone that learns nothing, pooling each crop once (train_cam.cached_views) gives
    the classifier that running the backbone at every step gives, when every epoch has its own
    view; fewer views reuse crops (a different head), and the backbone is never touched."""
    plain = _train_cam(tiny_data, tmp_path / "plain", resnet18_file, epochs=3, cached_views=0)
    cached = _train_cam(tiny_data, tmp_path / "cached", resnet18_file, epochs=3, cached_views=3)
    fewer = _train_cam(tiny_data, tmp_path / "fewer", resnet18_file, epochs=3, cached_views=1)
    assert plain.keys() == cached.keys()
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(fewer["classifier.weight"], plain["classifier.weight"], atol=1e-4)
    start = torchvision_state(resnet18_file)
    for key in ("backbone.stages.0.0.weight", "backbone.stages.4.0.conv1.weight"):
        torch.testing.assert_close(fewer[key], start[key], rtol=0, atol=0)
    assert not (tmp_path / "cached" / "checkpoint.pt").exists()


def torchvision_state(path) -> dict:
    """The ResNet file's filters under our backbone's keys."""
    net = ResNetStages(18, weights=str(path), freeze_bn=True, frozen_stages=4)
    return {f"backbone.{k}": v for k, v in net.state_dict().items()}


def test_cached_views_leave_a_backbone_that_trains_to_per_step_crops(tiny_data, tmp_path, resnet18_file, capsys):
    """A backbone that learns (here stages 3-4) cannot have its crops pooled once: one line says
    so, and training runs the backbone every step, as with cached_views = 0."""
    trained = _train_cam(tiny_data, tmp_path / "cached", resnet18_file, frozen_stages=2, epochs=1, cached_views=2)
    assert "cached_views = 2 applies to a backbone that learns nothing" in capsys.readouterr().err
    plain = _train_cam(tiny_data, tmp_path / "plain", resnet18_file, frozen_stages=2, epochs=1, cached_views=0)
    start = torchvision_state(resnet18_file)
    key = "backbone.stages.4.0.conv1.weight"
    assert not torch.allclose(trained[key], start[key])
    for k in plain:
        torch.testing.assert_close(trained[k], plain[k], rtol=1e-5, atol=1e-6)


def test_cached_views_with_reviews_train_the_head_as_per_step_crops_do(tiny_data, tmp_path, resnet18_file):
    """Reviewed images (issue 27) add the per-pixel loss on both paths: pooling each crop once,
    its feature maps and class targets kept, trains the classifier that running the backbone at
    every step does; and the reviews change it."""
    import json

    from wsis.coco import rle_encode
    cfg = load_config("synthetic", TINY)
    ds = open_dataset("synthetic", cfg, tiny_data)
    entries = {}
    for image_id in ds.ids(cfg["data"]["train_split"])[:4]:
        gt = ds.instance_gt(image_id)
        entries[image_id] = {"height": gt.masks.shape[1], "width": gt.masks.shape[2], "source": "test",
                             "instances": [{"class": int(c), "segmentation": rle_encode(m)}
                                           for m, c in zip(gt.masks, gt.classes)]}
    reviewed = tmp_path / "reviewed"
    (reviewed / "review").mkdir(parents=True)
    (reviewed / "review" / "reviewed.json").write_text(json.dumps({"images": entries}))
    plain = _train_cam(tiny_data, reviewed / "plain", resnet18_file, epochs=2, cached_views=0)
    cached = _train_cam(tiny_data, reviewed / "cached", resnet18_file, epochs=2, cached_views=2)
    unreviewed = _train_cam(tiny_data, tmp_path / "unreviewed", resnet18_file, epochs=2, cached_views=2)
    torch.testing.assert_close(cached["classifier.weight"], plain["classifier.weight"], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(cached["classifier.weight"], unreviewed["classifier.weight"], atol=1e-4)
    history = json.loads((reviewed / "cached" / "loss_history.json").read_text())
    assert all(e["pixel"] > 0 for e in history)
