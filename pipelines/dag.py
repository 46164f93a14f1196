"""The pipeline's stages and how they connect."""

from __future__ import annotations

from .engine import Stage
from .stages import eval_cam, make_cam, train_cam


def train_split(cfg: dict) -> list[str]:
    return [cfg["data"]["train_split"]]


def infer_and_eval_splits(cfg: dict) -> list[str]:
    return [cfg["data"]["infer_split"], cfg["data"]["eval_split"]]


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("train_cam", "train the CAM classifier", upstream=(),
          sections=("backbone", "train_cam"), version=2, image_splits=train_split,
          run=train_cam.run),
    Stage("make_cam", "multi-scale CAMs per image", upstream=("train_cam",),
          sections=("make_cam",), version=1, image_splits=infer_and_eval_splits,
          per_image=make_cam.process),
    Stage("eval_cam", "CAM mIoU against ground truth", upstream=("make_cam",),
          sections=("eval_cam",), version=1, image_splits=infer_and_eval_splits,
          run=eval_cam.run, needs_masks=True, reads_images=False),
]}
