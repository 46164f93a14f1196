import numpy as np
import pytest
import torch

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
    assert not any(p.requires_grad for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)
                   for p in m.parameters())
    net.train()
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ConfigError, match="backbone.depth: 19"):
        ResNetStages(19)


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
    model = CAMNet(5, depth=18, freeze_bn=True, frozen_stages=0).eval()
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
