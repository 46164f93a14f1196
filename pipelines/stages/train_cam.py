"""Stage 1: train the CAM classifier on image-level labels (Ahn et al., CVPR 2019)."""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from wsis.models.backbone import LOAD_LATER, backbone_from_section
from wsis.models.cam import CAMNet
from wsis.checkpoint import load_checkpoint
from wsis.algorithms.supervision import class_channels, class_targets, pixel_class_loss, reviewed_instances
from wsis.transforms import cam_train_augment

from .. import distributed
from ..job import Job
from ..trainer import Precision, finish_training, run_training, sgd, stack_samples
from .reviews import reviewed_entries

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

    # Reviewed images (wsis review import) add a per-pixel loss on the class maps at their
    # masks (review.cam_loss): their samples carry the share of each class in each cell of the
    # class-map grid, every other sample zeros (no cell counts)
    reviews = reviewed_entries(job, "cam_loss")
    num_classes = job.dataset.num_classes
    grid = (-(-c["crop_size"] // model.backbone.strides[-1]),) * 2
    no_targets = torch.zeros((num_classes + 1,) + grid)

    def make_sample(index, epoch):
        """An augmented crop (uint8, CHW) and its labels (and with reviews, its class
        targets); the RNG depends only on (seed, epoch, image index), so a resumed run sees
        exactly the batches an uninterrupted one would."""
        image_id = job.ids[index]
        rng = np.random.default_rng([c["seed"], epoch, int(index)])
        image = job.dataset.load_image(image_id)
        augment = (rng, tuple(c["resize_long"]), c["crop_size"], c["hflip"], fill)
        targets = no_targets
        if image_id in reviews:
            maps, present = class_channels(*reviewed_instances(reviews[image_id], image.shape[:2]), num_classes)
            img, maps = cam_train_augment(image, *augment, maps=maps)
            targets = class_targets(maps, present, num_classes, grid)
        else:
            img = cam_train_augment(image, *augment)
        sample = (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1),
                  torch.from_numpy(job.dataset.label_vector(image_id)))
        return (*sample, targets) if reviews else sample

    weight = job.cfg["review"]["cam_loss_weight"]

    def compute_loss(outputs, batch):
        if not reviews:
            return F.multilabel_soft_margin_loss(outputs, batch[1]), {}
        logits, class_maps = outputs
        image_loss, pixel_loss = F.multilabel_soft_margin_loss(logits, batch[1]), pixel_class_loss(class_maps, batch[2])
        return image_loss + weight * pixel_loss, {"image": image_loss, "pixel": pixel_loss}

    views = c["cached_views"]
    if views and not backbone_is_frozen(model):
        # as backbone.freeze_bn and frozen_stages, which apply to pretrained weights only
        print(f"train_cam.cached_views = {views} applies to a backbone that learns nothing (pretrained weights, "
              f"backbone.freeze_bn = true, frozen_stages = {len(model.backbone.stages) - 1}); this one learns, so "
              f"every step runs it on its crop", file=sys.stderr, flush=True)
        views = 0
    if views:
        # The backbone learns nothing, so a crop's pooled features never change: each image's
        # crops of the first ``views`` epochs are pooled once, and every epoch trains the head
        # on one of them. With views >= epochs this is exactly the uncached training. A
        # reviewed image's crops keep their feature maps and class targets too.
        keep = {n for n, i in enumerate(job.ids) if i in reviews}
        pooled, kept = pooled_views(job, model, make_sample, views, c["batch_size"], keep)
        no_maps = torch.zeros((model.backbone.channels[-1],) + grid)

        def make_pooled_sample(index, epoch):
            """(pooled features, labels), and with reviews (class targets, feature maps): the
            targets stand third in every sample, as ``compute_loss`` reads them."""
            sample = pooled[epoch % views, index], torch.from_numpy(job.dataset.label_vector(job.ids[index]))
            if not reviews:
                return sample
            feature_maps, targets = kept.get((epoch % views, index), (no_maps, no_targets))
            return (*sample, targets, feature_maps)

        trained, sample = PooledHead(model.classifier), make_pooled_sample
        forward = lambda net, batch: net(batch[0], batch[3] if reviews else None)   # noqa: E731
    else:
        trained, sample = model, make_sample
        forward = lambda net, batch: net(batch[0].float(), class_maps=bool(reviews))   # noqa: E731
    run_training(job, trained, optimizer, epochs=c["epochs"], num_samples=len(job.ids), batch_size=c["batch_size"],
                 seed=c["seed"], make_sample=sample, collate=stack_samples, forward=forward, compute_loss=compute_loss)
    finish_training(job, MODEL_FILE, arch={"num_classes": job.dataset.num_classes, **model.backbone.spec},
                    state_dict=model.state_dict(), class_names=list(job.dataset.class_names))


class PooledHead(torch.nn.Module):
    """The CAM net's classifier on pooled features: (B, D) -> (B, C) logits, as ``CAMNet``
    computes them after its global average pooling."""

    def __init__(self, classifier: torch.nn.Conv2d):
        super().__init__()
        self.classifier = classifier

    def forward(self, pooled: torch.Tensor, feature_maps: torch.Tensor | None = None):
        """Logits; with the (B, D, h, w) ``feature_maps`` the pooled features came from, also
        the class maps (B, C, h, w), as ``CAMNet.forward(..., class_maps=True)``."""
        logits = self.classifier(pooled[:, :, None, None]).flatten(1)
        return logits if feature_maps is None else (logits, self.classifier(feature_maps))


def backbone_is_frozen(model: CAMNet) -> bool:
    """Whether the backbone's output is a fixed function of its input during training: no
    parameter trains, and no BatchNorm uses batch statistics."""
    return (not any(p.requires_grad for p in model.backbone.parameters())
            and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.backbone.modules()))


def pooled_views(job: Job, model: CAMNet, make_sample, views: int, batch_size: int,
                 keep: set[int] = frozenset()) -> tuple[torch.Tensor, dict]:
    """(views, N, D) float32 on the CPU: the globally pooled backbone features of image n's
    training crop in epoch v (``make_sample(n, v)``), for v < ``views``; and for the images n
    in ``keep``, {(v, n): (feature maps (D, h, w), the rest of the sample after its labels)}.
    Under ``--gpus N`` each rank pools every N-th image and the ranks sum their shares (and
    gather what they keep)."""
    world, rank = distributed.world_size(), distributed.rank()
    keys = [(v, n) for v in range(views) for n in range(rank, len(job.ids), world)]
    pooled = torch.zeros(views, len(job.ids), model.backbone.channels[-1], device=job.device)
    kept: dict[tuple[int, int], tuple] = {}
    precision = Precision(job.cfg["run"]["amp"], job.device)
    progress = job.progress(len(keys), unit="crops pooled") if rank == 0 else None
    model.eval()
    with torch.no_grad():
        for start in range(0, len(keys), batch_size):
            chunk = keys[start:start + batch_size]
            samples = [make_sample(n, v) for v, n in chunk]
            images = torch.stack([s[0] for s in samples]).to(job.device).float()
            with precision.autocast():
                features = model.features(images)
            v_index, n_index = (torch.tensor(k, device=job.device) for k in zip(*chunk))
            pooled[v_index, n_index] = features.float().mean(dim=(2, 3))
            for j, (v, n) in enumerate(chunk):
                if n in keep:
                    kept[v, n] = (features[j].float().cpu(), *samples[j][2:])
            if progress:
                progress.update(len(chunk))
    if world > 1:
        torch.distributed.all_reduce(pooled)
        if keep:
            shares = [None] * world
            torch.distributed.all_gather_object(shares, kept)
            kept = {k: v for share in shares for k, v in share.items()}
    return pooled.cpu(), kept
