"""The pipeline's stages and how they connect.

Stage functions are named as "module:function" in ``pipelines.stages`` and imported only when
a stage runs, so that checking an up-to-date pipeline does not import PyTorch."""

from __future__ import annotations

from .engine import Stage


def train_split(cfg: dict) -> list[str]:
    return [cfg["data"]["train_split"]]


def infer_split(cfg: dict) -> list[str]:
    return [cfg["data"]["infer_split"]]


def eval_split(cfg: dict) -> list[str]:
    return [cfg["data"]["eval_split"]]


def infer_and_eval_splits(cfg: dict) -> list[str]:
    return [cfg["data"]["infer_split"], cfg["data"]["eval_split"]]


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("train_cam", "train the CAM classifier", upstream=(),
          sections=("backbone", "train_cam"), version=2, image_splits=train_split,
          run="train_cam:run"),
    Stage("make_cam", "multi-scale CAMs per image", upstream=("train_cam",),
          sections=("make_cam",), version=1, image_splits=infer_and_eval_splits,
          per_image="make_cam:process"),
    Stage("eval_cam", "CAM mIoU against ground truth", upstream=("make_cam",),
          sections=("eval_cam",), version=2, image_splits=infer_and_eval_splits,
          run="eval_cam:run", needs_masks=True, reads_images=False),
    Stage("ir_label", "relation labels from CAMs with a dense CRF", upstream=("make_cam",),
          sections=("ir_label",), version=1, image_splits=infer_split,
          per_image="ir_label:process", output_name="{id}.png"),
    Stage("train_irn", "train IRNet (boundary and displacement)", upstream=("ir_label", "train_cam"),
          sections=("backbone", "train_irn"), version=1, image_splits=infer_split,
          run="train_irn:run"),
    Stage("sem_seg", "semantic pseudo-labels by random walk", upstream=("make_cam", "train_irn"),
          sections=("random_walk", "sem_seg"), version=1, image_splits=infer_split,
          per_image="sem_seg:process", output_name="{id}.png"),
    Stage("ins_seg", "instance pseudo-labels", upstream=("make_cam", "train_irn"),
          sections=("random_walk", "ins_seg"), version=2, image_splits=infer_split,
          per_image="ins_seg:process"),
    Stage("export", "COCO JSON of the instance pseudo-labels", upstream=("ins_seg",),
          sections=("export",), version=1, image_splits=infer_split, run="export:run", reads_images=False),
    Stage("merge_review", "reviewed annotations over the pseudo-labels (wsis review import)",
          upstream=("export",), sections=(), version=1, image_splits=infer_split, run="merge_review:run",
          reads_images=False, input_files=("review/reviewed.json",)),
    Stage("eval_sem_seg", "semantic pseudo-label mIoU", upstream=("sem_seg",),
          sections=(), version=1, image_splits=infer_split,
          run="eval_pseudo:run_semantic", needs_masks=True, reads_images=False),
    Stage("eval_ins_seg", "instance pseudo-label mAP and COCO AP", upstream=("ins_seg", "export"),
          sections=("eval_ins_seg",), version=1, image_splits=infer_split,
          run="eval_pseudo:run_instance", needs_masks=True, reads_images=False),
    Stage("train_seg", "train the instance-segmentation model on the pseudo-labels",
          upstream=("merge_review", "train_cam"), sections=("backbone", "seg", "solo", "yolact", "centermask"),
          version=1, image_splits=infer_split, run="train_seg:run"),
    Stage("eval_seg", "instance-segmentation model: COCO AP and VOC mAP50", upstream=("train_seg",),
          sections=("seg",), version=1, image_splits=eval_split, run="eval_seg:run", needs_masks=True),
    Stage("report", "review queue and HTML report of every finished stage",
          upstream=("make_cam", "eval_cam", "ir_label", "train_irn", "sem_seg", "ins_seg", "export", "eval_sem_seg",
                    "eval_ins_seg", "merge_review", "train_seg", "eval_seg"),
          sections=("report", "ins_seg", "eval_cam"), version=1, image_splits=infer_split, run="report:run"),
]}
