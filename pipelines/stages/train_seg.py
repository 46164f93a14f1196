"""Train an instance-segmentation model (SOLOv2, SOLO, YOLACT, CenterMask) on a COCO JSON:
the pseudo-labels with the reviewed images merged in (merge_review) by default, or
``seg.train_json`` / ``seg.train_images``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsis.errors import ConfigError
from wsis.models.backbone import LOAD_LATER
from wsis.models.registry import build_instance_model, load_instance_model
from wsis.data.seg_data import CocoInstances

from ..job import Job
from ..trainer import finish_training, make_optimizer, run_training
from . import train_cam
from .merge_review import MERGED_FILE

MODEL_FILE = "model.pt"
HEAD_SECTIONS = ("solo", "yolact", "centermask")


def training_data(job: Job) -> CocoInstances:
    s = job.cfg["seg"]
    if s["train_json"]:
        if not s["train_images"]:
            raise ConfigError("seg.train_json is set but seg.train_images is not")
        return CocoInstances(Path(s["train_json"]), Path(s["train_images"]))
    return CocoInstances(job.inputs["merge_review"] / MERGED_FILE, job.dataset.image_dir)


def run(job: Job) -> None:
    s = job.cfg["seg"]
    data = training_data(job)
    torch.manual_seed(s["seed"])
    heads = {k: job.cfg[k] for k in HEAD_SECTIONS}
    init = s["backbone_init"]
    if init not in ("pretrained", "cam"):
        raise ConfigError(f"seg.backbone_init: '{init}' is not 'pretrained' or 'cam'")
    model = build_instance_model(s["model"], len(data.class_names), job.cfg["backbone"], heads,
                                 None if init == "pretrained" else LOAD_LATER, s["fpn_channels"], s["frozen_stages"])
    if init == "cam":
        if "train_cam" not in job.inputs:
            raise ConfigError("seg.backbone_init = 'cam' needs the CAM stage; use 'pretrained' with train-seg")
        cam = train_cam.load_trained(job.inputs["train_cam"], "cpu")
        model.neck.body.load_state_dict(cam.backbone.state_dict())   # strides are not weights
    model.to(job.device)
    head = job.cfg["solo" if s["model"] in ("solo", "solov2") else s["model"]]
    optimizer = make_optimizer(head["optimizer"], [p for p in model.parameters() if p.requires_grad], head["lr"],
                               s["momentum"], head["weight_decay"])
    size = s["input_size"]

    fill = model.neck.body.pad_colour          # the colour the backbone normalises to zero

    def make_sample(index, epoch):
        rng = np.random.default_rng([s["seed"], epoch, int(index)])
        canvas, target = data.sample(int(index), size, flip=s["hflip"] and rng.random() < 0.5,
                                     fill=fill)
        return torch.from_numpy(canvas).permute(2, 0, 1), model.prepare_target(target, size)

    def collate(samples):
        return torch.stack([image for image, _ in samples]), [target for _, target in samples]

    def compute_loss(outputs, batch):
        losses = model.loss(outputs, batch[1])
        return sum(losses.values()), losses

    run_training(job, model, optimizer, epochs=s["epochs"], num_samples=len(data), batch_size=s["batch_size"],
                 seed=s["seed"], make_sample=make_sample,
                 collate=collate, forward=lambda net, batch: net(batch[0].float()), compute_loss=compute_loss,
                 warmup_iters=s["warmup_iters"], grad_clip=s["grad_clip"], find_unused_parameters=True)
    arch = {"model": s["model"], "backbone": dict(job.cfg["backbone"]), "heads": heads, "input_size": size,
            "fpn_channels": s["fpn_channels"], "categories": data.dataset.coco_categories()}  # predict's ids
    # the layout load_instance_model reads
    finish_training(job, MODEL_FILE, arch=arch, class_names=list(data.class_names), state_dict=model.state_dict())


def load_trained(model_dir: Path, device: str):
    return load_instance_model(model_dir / MODEL_FILE, device)
