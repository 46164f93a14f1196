"""Training from scratch or offline: backbone.weights = none unfreezes what the preset froze,
and the download error names the way out."""

import pytest
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from wsis.errors import WsisError
from wsis.models import backbone
from wsis.models.backbone import LOAD_LATER, ResNetStages


def frozen_parts(net: ResNetStages):
    """(parameters without gradient, frozen BatchNorm layers: torchvision's FrozenBatchNorm2d,
    or BatchNorm2d still in eval mode after .train())."""
    net.train()
    no_grad = sum(not p.requires_grad for p in net.parameters())
    bn_eval = sum(isinstance(m, FrozenBatchNorm2d) or (isinstance(m, nn.BatchNorm2d) and not m.training)
                  for m in net.modules())
    return no_grad, bn_eval


def test_random_weights_are_not_frozen(capsys):
    net = ResNetStages(18, "none", freeze_bn=True, frozen_stages=2)
    assert frozen_parts(net) == (0, 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["backbone.weights = none: training all of resnet18 from scratch (freeze_bn = True and "
                   "frozen_stages = 2 apply to pretrained weights only)"]
    # nothing frozen asked: nothing said
    ResNetStages(18, "none", freeze_bn=False, frozen_stages=0)
    assert capsys.readouterr().err == ""


def test_a_backbone_loaded_from_a_checkpoint_keeps_its_freezing(capsys):
    net = ResNetStages(18, LOAD_LATER, freeze_bn=True, frozen_stages=1)
    no_grad, bn_eval = frozen_parts(net)
    stem_and_layer1 = sum(1 for m in list(net.stages)[:2] for _ in m.parameters())
    assert bn_eval == 20                                   # every BatchNorm of resnet18
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert no_grad == stem_and_layer1                      # the frozen ones have no parameters
    assert capsys.readouterr().err == ""


def test_download_error_names_the_offline_options(monkeypatch):
    class Offline:
        url = "https://example.invalid/resnet18.pth"

        def get_state_dict(self, progress=True):
            raise OSError("Name or service not known")

    monkeypatch.setattr(backbone, "_weights_enum", lambda depth: Offline())
    with pytest.raises(WsisError) as e:
        ResNetStages(18, "imagenet")
    message = str(e.value)
    assert "\n" not in message
    assert "--set backbone.weights=/path/to/file.pth" in message and "--set backbone.weights=none" in message
