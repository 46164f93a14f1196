"""Stage 4: train IRNet's boundary and displacement branches on the relation labels."""

from __future__ import annotations

import sys

import numpy as np
import torch

from wsis.errors import ConfigError
from wsis.io import read_label_png
from wsis.models.backbone import LOAD_LATER, ResNetStages
from wsis.models.irn import IRNet, irn_losses
from wsis.training import load_checkpoint
from wsis.transforms import irn_train_augment

from ..engine import Job
from ..training import finish_training, run_training, sgd
from . import train_cam

MODEL_FILE = "model.pt"


def make_backbone(init: str, backbone_cfg: dict, cam_dir) -> ResNetStages:
    """"pretrained": a fresh backbone with ``backbone.weights`` (ImageNet in the paper);
    "cam": the CAM classifier's trained backbone (for data with no pretrained weights)."""
    if init == "pretrained" and backbone_cfg["weights"] in ("", "none"):
        # IRNet never trains its backbone: a random one would teach it nothing
        print("train_irn: backbone.weights = none, so IRNet uses the CAM net's trained backbone "
              "(as train_irn.backbone_init = 'cam')", file=sys.stderr, flush=True)
        init = "cam"
    if init == "pretrained":
        return ResNetStages(backbone_cfg["depth"], backbone_cfg["weights"], freeze_bn=True)
    if init == "cam":
        return train_cam.load_trained(cam_dir, "cpu").backbone
    raise ConfigError(f"train_irn.backbone_init: '{init}' is not 'pretrained' or 'cam'")


def load_trained(model_dir, device: str) -> IRNet:
    ckpt = load_checkpoint(model_dir / MODEL_FILE, device)
    model = IRNet(ResNetStages(ckpt["arch"]["depth"], LOAD_LATER, freeze_bn=True))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def run(job: Job) -> None:
    c = job.cfg["train_irn"]
    torch.manual_seed(c["seed"])
    model = IRNet(make_backbone(c["backbone_init"], job.cfg["backbone"], job.inputs["train_cam"])).to(job.device)
    edge_params, dp_params = model.trainable_groups()
    optimizer = sgd([(edge_params, c["lr"]), (dp_params, c["lr"] * c["displacement_lr_mult"])],
                    c["momentum"], c["weight_decay"])
    labels_dir = job.inputs["ir_label"]

    def make_batch(indices, epoch):
        images, labels = [], []
        for index in indices:
            image_id = job.ids[index]
            rng = np.random.default_rng([c["seed"], epoch, int(index)])
            img, lab = irn_train_augment(job.dataset.load_image(image_id),
                                         read_label_png(labels_dir / f"{image_id}.png"), rng,
                                         tuple(c["scale_range"]), c["crop_size"], c["hflip"])
            images.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
            labels.append(torch.from_numpy(np.ascontiguousarray(lab[::4, ::4])))  # stride-4 labels
        return torch.stack(images).float().to(job.device), torch.stack(labels).long().to(job.device)

    def compute_loss(batch):
        x, y = batch
        logits, disp = model(x)
        losses = irn_losses(logits, disp, y, c["radius"])
        return losses["boundary"] + losses["displacement"], losses

    run_training(job, model, optimizer, epochs=c["epochs"], num_samples=len(job.ids),
                 batch_size=c["batch_size"], seed=c["seed"], make_batch=make_batch, compute_loss=compute_loss)
    model.mean_displacement.copy_(mean_displacement(model, job))
    finish_training(job, MODEL_FILE, arch={"depth": job.cfg["backbone"]["depth"]},
                    state_dict=model.state_dict())


@torch.no_grad()
def mean_displacement(model: IRNet, job: Job) -> torch.Tensor:
    """Mean of D over the training images at scale 1; subtracted at inference to centre the
    field (the reference code's "mean shift")."""
    model.eval()
    total, count = torch.zeros(2, dtype=torch.float64), 0
    for image_id in job.ids:
        x = torch.from_numpy(job.dataset.load_image(image_id)).permute(2, 0, 1)[None].float().to(job.device)
        _, disp = model(x)
        total += disp[0].sum(dim=(1, 2)).double().cpu()
        count += disp.shape[-1] * disp.shape[-2]
    return (total / max(count, 1)).float().to(job.device)
