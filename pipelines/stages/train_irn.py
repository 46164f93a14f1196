"""Stage 4: train IRNet's boundary and displacement branches on the relation labels."""

from __future__ import annotations

import sys

import numpy as np
import torch

from wsis.errors import ConfigError
from wsis.io import read_label_png, read_uint16_png
from wsis.models.backbone import LOAD_LATER, Backbone, backbone_from_section
from wsis.algorithms.supervision import centroid_displacements, instance_map, region_labels, reviewed_instances
from wsis.models.irn import IRNet, centroid_loss, irn_losses
from wsis.checkpoint import load_checkpoint
from wsis.transforms import irn_train_augment

from .. import distributed
from ..job import Job
from ..trainer import finish_training, run_training, sgd, stack_samples
from . import train_cam
from .ir_label import instance_map_path
from .reviews import reviewed_entries

MODEL_FILE = "model.pt"


def make_backbone(init: str, backbone_cfg: dict, cam_dir) -> Backbone:
    """"pretrained": a fresh backbone with ``backbone.weights`` (ImageNet in the paper);
    "cam": the CAM classifier's trained backbone (for data with no pretrained weights)."""
    if init == "pretrained" and backbone_cfg["weights"] in ("", "none"):
        # IRNet never trains its backbone: a random one would teach it nothing
        print("train_irn: backbone.weights = none, so IRNet uses the CAM net's trained backbone "
              "(as train_irn.backbone_init = 'cam')", file=sys.stderr, flush=True)
        init = "cam"
    if init == "pretrained":
        return backbone_from_section(backbone_cfg, freeze_bn=True, frozen_stages=0)
    if init == "cam":
        return train_cam.load_trained(cam_dir, "cpu").backbone
    raise ConfigError(f"train_irn.backbone_init: '{init}' is not 'pretrained' or 'cam'")


def load_trained(model_dir, device: str) -> IRNet:
    ckpt = load_checkpoint(model_dir / MODEL_FILE, device)
    backbone = backbone_from_section(ckpt["arch"], LOAD_LATER, freeze_bn=True, frozen_stages=0)
    model = IRNet(backbone, ckpt["arch"].get("crop_size", 0))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def run(job: Job) -> None:
    c = job.cfg["train_irn"]
    torch.manual_seed(c["seed"])
    model = IRNet(make_backbone(c["backbone_init"], job.cfg["backbone"], job.inputs["train_cam"]),
                  c["crop_size"]).to(job.device)
    # The reference trains IRNet on train_aug and measures the mean displacement on train
    # (run_sample.py): data.irn_split and data.infer_split.
    train_ids = job.dataset.ids(job.cfg["data"]["irn_split"])
    edge_params, dp_params = model.trainable_groups()
    optimizer = sgd([(edge_params, c["lr"]), (dp_params, c["lr"] * c["displacement_lr_mult"])],
                    c["momentum"], c["weight_decay"])
    labels_dir = job.inputs["ir_label"]
    # Reviewed images (review.irn_targets): the displacement of each cell to its instance's
    # true centroid is learned directly, beside the pair losses; every sample carries its
    # targets, NaN (none) for an image nobody reviewed
    reviews = reviewed_entries(job, "irn_targets")
    weight = job.cfg["review"]["centroid_weight"]
    grid = (-(-c["crop_size"] // 4),) * 2
    no_targets = torch.full((2,) + grid, float("nan"))

    fill = model.backbone.pad_colour          # the colour the backbone normalises to zero

    def make_sample(index, epoch):
        image_id = train_ids[index]
        rng = np.random.default_rng([c["seed"], epoch, int(index)])
        image = job.dataset.load_image(image_id)
        # a reviewed image's relation labels are its instances (ir_label, review.relation_labels):
        # pairs in two instances are negative even of one class
        instances = instance_map_path(labels_dir, image_id)
        labels = (region_labels(read_uint16_png(instances)) if instances.is_file()
                  else read_label_png(labels_dir / f"{image_id}.png"))
        augment = (rng, tuple(c["scale_range"]), c["crop_size"], c["hflip"])
        targets = no_targets
        if image_id in reviews:
            masks, _ = reviewed_instances(reviews[image_id], image.shape[:2])
            img, lab, disp = irn_train_augment(image, labels, *augment, fill=fill,
                                               displacements=centroid_displacements(instance_map(masks)))
            targets = torch.from_numpy(np.ascontiguousarray(disp[::4, ::4].transpose(2, 0, 1) / 4))  # stride-4 cells
        else:
            img, lab = irn_train_augment(image, labels, *augment, fill=fill)
        sample = (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1),
                  torch.from_numpy(np.ascontiguousarray(lab[::4, ::4])).long())  # stride-4 labels
        return (*sample, targets) if reviews else sample

    def compute_loss(outputs, batch):
        logits, disp = outputs
        losses = irn_losses(logits, disp, batch[1], c["radius"])
        loss = losses["boundary"] + losses["displacement"]
        if reviews:
            losses["centroid"] = centroid_loss(disp, batch[2])
            loss = loss + weight * losses["centroid"]
        return loss, losses

    run_training(job, model, optimizer, epochs=c["epochs"], num_samples=len(train_ids),
                 batch_size=c["batch_size"], seed=c["seed"], make_sample=make_sample,
                 collate=stack_samples, forward=lambda net, batch: net(batch[0].float()), compute_loss=compute_loss)
    model.mean_displacement.copy_(mean_displacement(model, job, job.dataset.ids(job.cfg["data"]["infer_split"])))
    finish_training(job, MODEL_FILE, arch={**model.backbone.spec, "crop_size": c["crop_size"]},
                    state_dict=model.state_dict())


@torch.no_grad()
def mean_displacement(model: IRNet, job: Job, ids) -> torch.Tensor:
    """Mean of D over the top-left ``crop_size`` crop of each image of ``ids``, zero-padded to
    the crop as in training; subtracted at inference to centre the field (the reference
    code's "mean shift", measured on train with top-left crops). The crop bounds the cost of
    large photos. Every padded crop has the same size, so they go through the backbone and the
    displacement branch ``train_irn.batch_size`` at a time (the boundary branch is not needed)."""
    model.eval()
    crop, batch = job.cfg["train_irn"]["crop_size"], job.cfg["train_irn"]["batch_size"]
    world, rank = distributed.world_size(), distributed.rank()
    total = torch.zeros(2, dtype=torch.float64, device=job.device)
    mine = list(ids)[rank::world]          # data-parallel ranks share the images
    progress = job.progress(len(mine)) if rank == 0 else None
    for start in range(0, len(mine), batch):
        chunk = mine[start:start + batch]
        canvases = []
        for image_id in chunk:
            image = job.dataset.load_image(image_id)[:crop, :crop]
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().to(job.device)
            canvases.append(model.canvas(x, pad_to=crop))
        disp = model.displacement(model.canvas_features(torch.cat(canvases)))
        total += disp.mean(dim=(2, 3)).sum(0).double()
        if progress:
            progress.update(len(chunk), "mean displacement")
    if world > 1:
        torch.distributed.all_reduce(total)
    return (total / max(len(ids), 1)).float()
