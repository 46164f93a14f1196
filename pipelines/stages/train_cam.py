"""Stage 1: train the CAM classifier on image-level labels (Ahn et al., CVPR 2019)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wsis.models.backbone import LOAD_LATER, backbone_from_section
from wsis.models.cam import CAMNet
from wsis.checkpoint import load_checkpoint
from wsis.transforms import cam_train_augment

from ..job import Job
from ..trainer import finish_training, run_training, sgd, stack_samples

MODEL_FILE = "model.pt"


def build_model(num_classes: int, backbone: dict) -> CAMNet:
    return CAMNet(backbone_from_section(backbone), num_classes)


def load_trained(model_dir, device: str) -> CAMNet:
    """The trained CAM net; its checkpoint's ``arch`` names the backbone (``arch``, ``depth``;
    files from before ``backbone.arch`` hold a ResNet)."""
    ckpt = load_checkpoint(model_dir / MODEL_FILE, device)
    arch = ckpt["arch"]
    backbone = backbone_from_section(arch, LOAD_LATER, freeze_bn=True, frozen_stages=0)
    model = CAMNet(backbone, arch["num_classes"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def run(job: Job) -> None:
    c, b = job.cfg["train_cam"], job.cfg["backbone"]
    torch.manual_seed(c["seed"])
    model = build_model(job.dataset.num_classes, b).to(job.device)
    backbone_params, head_params = model.param_groups()
    optimizer = sgd([(backbone_params, c["lr"]), (head_params, c["lr"] * c["head_lr_mult"])],
                    c["momentum"], c["weight_decay"])

    fill = model.backbone.pad_colour          # the colour the backbone normalises to zero

    def make_sample(index, epoch):
        """An augmented crop (uint8, CHW) and its labels; the RNG depends only on (seed, epoch,
        image index), so a resumed run sees exactly the batches an uninterrupted one would."""
        image_id = job.ids[index]
        rng = np.random.default_rng([c["seed"], epoch, int(index)])
        img = cam_train_augment(job.dataset.load_image(image_id), rng, tuple(c["resize_long"]),
                                c["crop_size"], c["hflip"], fill)
        return (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1),
                torch.from_numpy(job.dataset.label_vector(image_id)))

    def compute_loss(logits, batch):
        return F.multilabel_soft_margin_loss(logits, batch[1]), {}

    run_training(job, model, optimizer, epochs=c["epochs"], num_samples=len(job.ids),
                 batch_size=c["batch_size"], seed=c["seed"], make_sample=make_sample, collate=stack_samples,
                 forward=lambda net, batch: net(batch[0].float()), compute_loss=compute_loss)
    finish_training(job, MODEL_FILE, arch={"num_classes": job.dataset.num_classes, **model.backbone.spec},
                    state_dict=model.state_dict(), class_names=list(job.dataset.class_names))
