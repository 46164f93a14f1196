"""Stage 1: train the CAM classifier on image-level labels (Ahn et al., CVPR 2019)."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from wsis.io import write_json
from wsis.models.cam import CAMNet
from wsis.training import load_checkpoint, poly_lr, save_checkpoint
from wsis.transforms import cam_train_augment

from ..engine import PROGRESS, Job

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"


def build_model(num_classes: int, backbone: dict) -> CAMNet:
    return CAMNet(num_classes, backbone["depth"], backbone["weights"], backbone["freeze_bn"],
                  backbone["frozen_stages"])


def load_trained(model_dir, device: str) -> CAMNet:
    ckpt = load_checkpoint(model_dir / MODEL_FILE, device)
    arch = ckpt["arch"]
    model = CAMNet(arch["num_classes"], arch["depth"], "none", freeze_bn=True, frozen_stages=0)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def batch_of(job: Job, indices, epoch: int, c: dict):
    """Augmented crops and label vectors of ``job.ids[indices]``; the RNG depends only on
    (seed, epoch, image index), so a resumed run sees exactly the batches an uninterrupted
    one would."""
    images, labels = [], []
    for index in indices:
        image_id = job.ids[index]
        rng = np.random.default_rng([c["seed"], epoch, int(index)])
        img = cam_train_augment(job.dataset.load_image(image_id), rng, tuple(c["resize_long"]),
                                c["crop_size"], c["hflip"])
        images.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        labels.append(torch.from_numpy(job.dataset.label_vector(image_id)))
    return torch.stack(images).float(), torch.stack(labels)


def run(job: Job) -> None:
    c, b = job.cfg["train_cam"], job.cfg["backbone"]
    device = job.device
    torch.manual_seed(c["seed"])
    model = build_model(job.dataset.num_classes, b).to(device)
    backbone_params, head_params = model.param_groups()
    optimizer = torch.optim.SGD(
        [{"params": backbone_params, "lr": c["lr"], "base_lr": c["lr"]},
         {"params": head_params, "lr": c["lr"] * c["head_lr_mult"], "base_lr": c["lr"] * c["head_lr_mult"]}],
        lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"])
    ids = list(job.ids)
    batch = min(c["batch_size"], len(ids))
    steps_per_epoch = len(ids) // batch
    max_step = steps_per_epoch * c["epochs"]
    start_epoch = 0
    ckpt_path = job.out_dir / CHECKPOINT_FILE
    if ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = ckpt["epoch"] + 1
        print(f"train_cam: resuming after epoch {start_epoch} of {c['epochs']}", flush=True)
    progress = job.progress(max_step - start_epoch * steps_per_epoch, unit="iterations")
    model.train()
    for epoch in range(start_epoch, c["epochs"]):
        order = np.random.default_rng([c["seed"], epoch]).permutation(len(ids))
        for it in range(steps_per_epoch):
            step = epoch * steps_per_epoch + it
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], step, max_step)
            t0 = time.monotonic()
            x, y = batch_of(job, order[it * batch:(it + 1) * batch], epoch, c)
            logits = model(x.to(device))
            loss = F.multilabel_soft_margin_loss(logits, y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            rate = batch / max(time.monotonic() - t0, 1e-9)
            progress.update(1, f"epoch {epoch + 1}/{c['epochs']}, loss {loss.item():.4f}, {rate:.1f} img/s")
        save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch)
        write_json(job.out_dir / PROGRESS, {"done": epoch + 1, "total": c["epochs"], "unit": "epochs"})
    arch = {"num_classes": job.dataset.num_classes, "depth": b["depth"]}
    save_checkpoint(job.out_dir / MODEL_FILE, arch=arch, state_dict=model.state_dict(),
                    class_names=list(job.dataset.class_names))
    ckpt_path.unlink(missing_ok=True)
