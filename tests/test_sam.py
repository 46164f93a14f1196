"""Optional SAM refinement (sam_refine): prompt construction against hand-computed values and
SAM's own transform, the agreement fallback with a stub decoder, a tiny random SAM end to end,
the stage's cache, resume and fingerprint, and the offline error. Nothing is downloaded."""

import dataclasses
import json
import shutil
import types

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from conftest import TINY, snapshot, tiny_args, wsis
from test_cli import one_line_error, stage_lines
from wsis.algorithms import sam_prompts as sp
from wsis.errors import ConfigError, WsisError

segment_anything = pytest.importorskip("segment_anything")
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

from wsis.models import sam as sam_model  # noqa: E402


# ------------------------------------------------------------------ prompt geometry
def test_resize_and_pad_frame_is_sams():
    # 500 x 375 (VOC's usual size), long side 1024: scale 2.048, 375 * 2.048 = 768.0
    assert sp.resized_shape(375, 500, 1024) == (768, 1024)
    assert sp.resized_shape(500, 375, 1024) == (1024, 768)
    assert sp.resized_shape(333, 500, 1024) == (682, 1024)      # 681.98 rounds half up
    points = np.array([[100.0, 50.0], [499.0, 374.0]])             # (x, y)
    assert np.allclose(sp.to_model_frame(points, (375, 500), 1024), [[204.8, 102.4], [1021.952, 765.952]])
    rng = np.random.default_rng(0)
    for h, w in [(375, 500), (333, 500), (48, 64), (1200, 90)]:
        xy = rng.uniform(0, [w, h], size=(7, 2))
        assert np.allclose(sp.to_model_frame(xy, (h, w), 1024), ResizeLongestSide(1024).apply_coords(xy, (h, w)))
        boxes = rng.uniform(0, [w, h, w, h], size=(3, 4))
        assert np.allclose(sp.to_model_frame(boxes.reshape(-1, 2, 2), (h, w), 1024).reshape(-1, 4),
                           ResizeLongestSide(1024).apply_boxes(boxes, (h, w)))
        image = np.zeros((h, w, 3), np.uint8)
        assert ResizeLongestSide(1024).apply_image(image).shape[:2] == sp.resized_shape(h, w, 1024)


def test_boxes_are_the_masks_inclusive_extremes():
    masks = np.zeros((2, 10, 12), bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 7, 0] = masks[1, 9, 11] = True
    assert sp.mask_boxes(masks).tolist() == [[3, 2, 8, 4], [0, 7, 11, 9]]
    # in the model frame of a 10 x 12 image at long side 1024: x and y scale by 1024 / 12 (853.33 -> 853)
    framed = sp.to_model_frame(sp.mask_boxes(masks).reshape(-1, 2, 2), (10, 12), 1024).reshape(-1, 4)
    assert np.allclose(framed[0], [3 * 1024 / 12, 2 * 853 / 10, 8 * 1024 / 12, 4 * 853 / 10])


def test_mask_prompt_is_a_quarter_size_logit_map_of_the_padded_frame():
    masks = np.zeros((3, 375, 500), bool)
    masks[0] = True                    # the whole image: rows < 768 of 1024 in the model frame
    masks[1, :, :250] = True           # the left half: columns < 512
    logits = sp.mask_prompt_logits(masks, 1024)
    assert logits.shape == (3, 1, 256, 256) and logits.dtype == np.float32
    L = sp.MASK_PROMPT_LOGIT
    expected_full = np.where(np.arange(256)[:, None] < 192, L, -L) * np.ones((1, 256))
    assert np.array_equal(logits[0, 0], expected_full)
    expected_left = np.where((np.arange(256)[:, None] < 192) & (np.arange(256)[None] < 128), L, -L)
    assert np.array_equal(logits[1, 0], expected_left)
    assert np.all(logits[2] == -L)
    # partial cover: a 512 x 512 image is scaled by 2, one pixel covers 2 x 2 of a 4 x 4 cell: f = 1/4
    one = np.zeros((1, 512, 512), bool)
    one[0, 0, 0] = True
    small = sp.mask_prompt_logits(one, 1024, logit=10.0)
    assert small[0, 0, 0, 0] == pytest.approx((2 * 0.25 - 1) * 10.0) and np.all(small[0, 0].ravel()[1:] == -10.0)
    # the tiny model's frame: long side 128, 32 x 32 logits
    assert sp.mask_prompt_logits(masks[:1, :48, :64], 128).shape == (1, 1, 32, 32)


def test_centroid_follows_the_displacement_end_points():
    h4, w4 = 8, 12                                     # stride-4 grid of a 32 x 48 image
    endpoints = np.zeros((2, h4, w4), np.int64)
    endpoints[0], endpoints[1] = 3, 5                  # every cell lands in cell (3, 5)
    mask = np.zeros((32, 48), bool)
    mask[8:24, 12:36] = True
    # cell (3, 5) is processing pixels [12, 16) x [20, 24), centre (14, 22)
    assert sp.displacement_centroid(mask, endpoints, (32, 48)) == (14, 22)
    # processed at half size (data.max_side): the same cell is at (28, 44) in the original 64 x 96
    big = np.zeros((64, 96), bool)
    big[20:40, 30:60] = True
    big[28, 44] = True
    assert sp.displacement_centroid(big, endpoints, (32, 48)) == (28, 44)
    # the end point off the mask: its most interior pixel instead
    ring = np.zeros((32, 48), bool)
    ring[0:7, 1:8] = True                               # 7 x 7 block, centre (3, 4)
    assert sp.displacement_centroid(ring, endpoints, (32, 48)) == (3, 4)
    # the majority wins: a third of the instance's cells land elsewhere
    endpoints[:, :, :4] = [[[1]], [[1]]]
    mask = np.zeros((32, 48), bool)
    mask[:, :] = True
    assert sp.displacement_centroid(mask, endpoints, (32, 48)) == (14, 22)


def test_positive_points_take_the_best_cam_pixels_spread_apart():
    mask = np.zeros((20, 20), bool)
    mask[0:16, 0:16] = True                      # area 256: spacing sqrt(256) / 4 = 4
    cam = np.zeros((20, 20))
    cam[1, 1], cam[1, 2], cam[10, 12], cam[2, 9], cam[19, 19] = 0.9, 0.95, 0.7, 0.8, 1.0   # (19, 19) off the mask
    points = sp.positive_points(mask, (8, 8), cam, extra=3)
    # (1, 2) first; (1, 1) is within 4 of it; then (2, 9), then (10, 12): all as (x, y)
    assert points.tolist() == [[8, 8], [2, 1], [9, 2], [12, 10]]
    assert sp.positive_points(mask, (8, 8), cam, extra=0).tolist() == [[8, 8]]
    assert sp.positive_points(mask, (8, 8), None, extra=2).tolist() == [[8, 8]]
    tiny = np.zeros((5, 5), bool)
    tiny[2, 2] = True                            # nothing else on the mask: only the centroid
    assert sp.positive_points(tiny, (2, 2), np.ones((5, 5)), extra=2).tolist() == [[2, 2]]


def test_point_prompts_put_negatives_on_the_other_instances_and_pad():
    positives = [np.array([[1.0, 1.0], [2.0, 2.0]]), np.array([[5.0, 5.0]]), np.array([[9.0, 9.0], [8.0, 8.0]])]
    coords, labels = sp.point_prompts(positives, negatives_each=1)
    assert labels.tolist() == [[1, 1, 0, 0], [1, 0, 0, -1], [1, 1, 0, 0]]
    assert coords[0].tolist() == [[1, 1], [2, 2], [5, 5], [9, 9]]
    assert coords[1, :3].tolist() == [[5, 5], [1, 1], [9, 9]]
    assert coords[2].tolist() == [[9, 9], [8, 8], [1, 1], [5, 5]]
    coords, labels = sp.point_prompts(positives, negatives_each=2, give_negatives=np.array([True, False, True]))
    assert labels.tolist() == [[1, 1, 0, 0, -1], [1, 0, 0, 0, 0], [1, 1, 0, 0, -1]]
    assert coords[1].tolist() == [[5, 5], [1, 1], [2, 2], [9, 9], [8, 8]]
    coords, labels = sp.point_prompts(positives, negatives_each=0)
    assert labels.tolist() == [[1, 1], [1, -1], [1, 1]]


# ------------------------------------------------------------------ choosing and painting
def test_selection_takes_the_best_rated_agreeing_candidate_else_none():
    ref = np.zeros((2, 4, 4), bool)
    ref[0, :2] = True                                     # top half
    ref[1, :, :1] = True                                  # left column
    cands = np.zeros((2, 3, 4, 4), bool)
    cands[0, 0] = True                                    # IoU 0.5
    cands[0, 1, :2] = True                                # IoU 1
    cands[0, 2, 2:] = True                                # IoU 0
    cands[1, :, :, 3] = True                              # IoU 0 for all three
    predicted = np.array([[0.9, 0.8, 0.99], [0.9, 0.9, 0.9]])
    chosen, agreement = sp.select_masks(cands, predicted, ref, 0.5)
    assert chosen.tolist() == [0, -1]                     # 0.5 agrees and is rated higher than the exact one
    assert np.allclose(agreement, [[0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert sp.select_masks(cands, predicted, ref, 0.6)[0].tolist() == [1, -1]
    # a candidate SAM rates at 0 or below is never taken
    assert sp.select_masks(cands, np.array([[0.0, -0.1, 0.9], [0.9] * 3]), ref, 0.5)[0].tolist() == [-1, -1]


def test_scores_mix_irn_and_predicted_iou():
    chosen = np.array([0, -1, 2, 1])
    predicted = np.array([[0.81, 0.1, 0.1], [0.9, 0.9, 0.9], [0.1, 0.1, 1.7], [0.2, 0.5, 0.2]])
    irn = np.array([0.64, 0.3, 0.5, 0.0])
    out = sp.combine_scores(irn, predicted, chosen, 0.5)
    assert np.allclose(out, [np.sqrt(0.64 * 0.81), 0.3, np.sqrt(0.5 * 1.0), 0.0])
    assert np.allclose(sp.combine_scores(irn, predicted, chosen, 0.0), irn)


def test_painting_gives_overlaps_to_the_irn_owner_then_the_higher_score():
    irn = np.array([[1, 1, 0, 2, 2]])
    final = np.array([[[1, 1, 1, 1, 0]],        # instance 1 grows over background and instance 2's pixel
                      [[0, 1, 1, 1, 1]]], bool)  # instance 2 grows over instance 1's pixel and the background
    assert sp.paint_instances(final, irn, np.array([0.2, 0.9])).tolist() == [[1, 1, 2, 2, 2]]
    assert sp.paint_instances(final, irn, np.array([0.9, 0.2])).tolist() == [[1, 1, 1, 2, 2]]
    assert sp.paint_instances(final, irn, np.array([0.5, 0.5])).tolist() == [[1, 1, 1, 2, 2]]   # tie: lower index


class StubModel:
    """Just what refine_image reads of a model; the decoder is replaced by ``stub_decoder``."""
    image_encoder = types.SimpleNamespace(img_size=64)


def test_refinement_keeps_the_irn_mask_where_sam_disagrees(monkeypatch):
    irn = np.zeros((16, 16), np.int32)
    irn[2:8, 2:8] = 1
    irn[10:14, 9:15] = 2
    z = {"instances": irn, "classes": np.array([0, 1]), "scores": np.array([0.64, 0.5], np.float32),
         "margins": np.array([0.3, 0.2], np.float32)}
    agreeing = np.zeros((16, 16), bool)
    agreeing[1:8, 2:9] = True                                          # IoU 36 / 49 with instance 1
    disagreeing = np.zeros((16, 16), bool)
    disagreeing[0:3, 12:16] = True
    seen = {}

    def stub_decoder(model, embedding, input_size, original_size, boxes, points, labels, mask_logits):
        seen.update(boxes=boxes, points=points, labels=labels, mask_logits=mask_logits)
        cands = np.stack([[agreeing, disagreeing, disagreeing], [disagreeing, disagreeing, ~disagreeing]])
        return cands, np.array([[0.81, 0.99, 0.99], [0.9, 0.9, 0.9]])

    monkeypatch.setattr(sam_model, "encode_image", lambda model, image: (None, (64, 64)))
    monkeypatch.setattr(sam_model, "decode_masks", stub_decoder)
    from pipelines.stages.sam_refine import refine_image
    endpoints = np.zeros((2, 4, 4), np.int64)                         # every cell lands in cell (1, 1)
    endpoints[:] = 1
    c = {"positive_points": 0, "negative_points": 1, "mask_prompt": True, "min_agreement": 0.5, "score_weight": 0.5}
    out = refine_image(StubModel(), np.zeros((16, 16, 3), np.uint8), z, endpoints, (16, 16), None, [], c)
    assert out["refined"].tolist() == [True, False]
    assert np.array_equal(out["instances"] == 1, agreeing)
    assert np.array_equal(out["instances"] == 2, irn == 2)
    assert np.allclose(out["scores"], [np.sqrt(0.64 * 0.81), 0.5])
    assert np.allclose(out["sam_iou"], [0.81, 0.0])
    assert out["margins"].tolist() == z["margins"].tolist() and out["classes"].tolist() == [0, 1]
    # the prompts, in the 64 x 64 frame of a 16 x 16 image (x 4): boxes, positive points, each
    # instance's first point as the other's negative; the mask prompt at 16 x 16
    assert seen["boxes"].tolist() == [[8, 8, 28, 28], [36, 40, 56, 52]]
    assert seen["labels"].tolist() == [[1, 0], [1, 0]]
    assert seen["points"][0].tolist() == [[24, 24], [40, 44]]          # (6, 6) is on instance 1
    # (6, 6) is off instance 2: its interior point, the first pixel 2 from its outside, (11, 10)
    assert seen["points"][1].tolist() == [[40, 44], [24, 24]]
    assert seen["mask_logits"].shape == (2, 1, 16, 16)


# ------------------------------------------------------------------ the model
def test_tiny_sam_decodes_a_batch_and_survives_a_checkpoint_round_trip(tmp_path):
    model, arch = sam_model.tiny_sam(seed=0)
    path = tmp_path / "tiny.pth"
    sam_model.save_sam(model, arch, path)
    loaded = sam_model.load_sam(str(path))
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    masks = np.zeros((3, 48, 64), bool)
    masks[0, 5:20, 5:30] = masks[1, 25:40, 30:60] = masks[2, 0:4, 0:4] = True
    boxes = sp.to_model_frame(sp.mask_boxes(masks).reshape(-1, 2, 2), (48, 64), 128).reshape(-1, 4)
    points, labels = sp.point_prompts([np.array([[10.0, 10.0]]), np.array([[40.0, 30.0]]), np.array([[1.0, 1.0]])], 1)
    outs = []
    for m in (model, loaded):
        embedding, input_size = sam_model.encode_image(m, image)
        assert input_size == (96, 128) and embedding.shape == (1, 32, 8, 8)
        outs.append(sam_model.decode_masks(m, embedding, input_size, (48, 64), boxes,
                                           sp.to_model_frame(points, (48, 64), 128), labels,
                                           sp.mask_prompt_logits(masks, 128)))
    cands, iou = outs[0]
    assert cands.shape == (3, 3, 48, 64) and cands.dtype == bool and iou.shape == (3, 3)
    assert np.array_equal(cands, outs[1][0]) and np.allclose(iou, outs[1][1])


def test_official_checkpoints_get_their_architecture_from_the_name_or_the_width():
    state = {sam_model.PATCH_EMBED: torch.zeros(1024, 3, 16, 16)}
    assert sam_model.architecture_of(state, "f.pth")[0]["encoder_depth"] == 24            # ViT-L by its width
    assert sam_model.architecture_of(state, "vit_h", name="vit_h")[0]["encoder_dim"] == 1280
    with pytest.raises(WsisError, match="width 96 is none of SAM's ViT-B/L/H"):
        sam_model.architecture_of({sam_model.PATCH_EMBED: torch.zeros(96, 3, 16, 16)}, "f.pth")
    with pytest.raises(WsisError, match="f.pth: not a SAM checkpoint"):
        sam_model.architecture_of({"fc.weight": torch.zeros(1)}, "f.pth")


def test_a_checkpoint_of_another_size_says_it_does_not_fit(tmp_path):
    model, arch = sam_model.tiny_sam()
    path = tmp_path / "wrong.pth"
    sam_model.save_sam(model, dict(arch, encoder_depth=3), path)
    with pytest.raises(WsisError, match="wrong.pth: does not fit SAM with a 32-wide, 3-block image encoder"):
        sam_model.load_sam(str(path))


def test_offline_name_says_how_to_pass_a_local_file(monkeypatch, tmp_path):
    def offline(url, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))      # the download lock goes there
    with pytest.raises(WsisError) as e:
        sam_model.load_sam("vit_b")
    message = str(e.value)
    assert "\n" not in message and sam_model.CHECKPOINT_URLS["vit_b"] in message
    assert "could not download the SAM checkpoint vit_b" in message
    assert "--set sam.checkpoint=/path/to/file.pth" in message
    with pytest.raises(ConfigError, match="sam.checkpoint: nowhere.pth: file not found"):
        sam_model.load_sam("nowhere.pth")


def test_missing_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    from wsis.config import load_config
    monkeypatch.setitem(__import__("sys").modules, "segment_anything", None)      # import fails
    with pytest.raises(ConfigError, match=r"pip install 'wsis\[sam\]'"):
        sam_model.require_package()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"sam.enabled = true needs .*pip install 'wsis\[sam\]'"):
        load_config("synthetic", overrides=["sam.enabled=true"])
    load_config("synthetic")                                   # off: the package is not needed


@pytest.mark.parametrize("override, message", [
    ("sam.min_agreement=0", "sam.min_agreement = 0.0: must be > 0"),
    ("sam.checkpoint=nowhere.pth", "sam.checkpoint = 'nowhere.pth': must be one of vit_b, vit_l, vit_h or the path"),
    ("sam.model_type=vit_l", "sam.model_type = 'vit_l' contradicts sam.checkpoint = 'vit_b'"),
    ("sam.score_weight=1.5", "sam.score_weight = 1.5: must be in [0.0, 1.0]"),
    ("sam.positive_points=-1", "sam.positive_points = -1: must be >= 0"),
])
def test_config_rules(override, message):
    from wsis.config import load_config
    with pytest.raises(ConfigError) as e:
        load_config("synthetic", overrides=[override])
    assert message in str(e.value)


# ------------------------------------------------------------------ the stage
def test_sam_off_leaves_the_pipeline_as_it_was(tiny_data, tmp_path):
    """With sam.enabled = false the stages, their upstream and fingerprints are those of the
    DAG without sam_refine (export, eval_ins_seg and report on ins_seg): caches stay valid."""
    from pipelines.dag import STAGES
    from pipelines.engine import Pipeline
    from wsis.config import load_config
    from wsis.data import open_dataset
    cfg = load_config("synthetic", TINY)
    ds = open_dataset("synthetic", cfg, tiny_data)
    old = {n: s for n, s in STAGES.items() if n != "sam_refine"}
    old["export"] = dataclasses.replace(old["export"], upstream=("ins_seg",))
    old["eval_ins_seg"] = dataclasses.replace(old["eval_ins_seg"], upstream=("ins_seg", "export"))
    old["report"] = dataclasses.replace(old["report"], upstream=old["report"].upstream[:-1])
    now = Pipeline(STAGES, cfg, ds, tmp_path)
    before = Pipeline(old, cfg, ds, tmp_path)
    assert list(now.stages) == list(before.stages) and "sam_refine" not in now.stages
    for name in now.stages:
        assert now.stages[name].upstream == before.stages[name].upstream, name
        assert now.fingerprint(now.stages[name]) == before.fingerprint(before.stages[name]), name
    with pytest.raises(WsisError, match="stage 'sam_refine' is off in this config: set sam.enabled = true"):
        now.order("sam_refine")
    on = Pipeline(STAGES, load_config("synthetic", TINY, ["sam.enabled=true"]), ds, tmp_path)
    assert on.stages["export"].upstream == ("sam_refine",)
    assert on.stages["eval_ins_seg"].upstream == ("sam_refine", "export")
    assert {"sam_refine", "ins_seg"} <= set(on.stages["report"].upstream)
    assert [s.name for s in on.order("export")][-2:] == ["sam_refine", "export"]
    assert on.fingerprint(on.stages["export"]) != now.fingerprint(now.stages["export"])
    assert on.fingerprint(on.stages["ins_seg"]) == now.fingerprint(now.stages["ins_seg"])


@pytest.fixture(scope="module")
def pseudo_run(tiny_data, tmp_path_factory):
    """A work dir with the tiny pipeline run up to export, without SAM."""
    work = tmp_path_factory.mktemp("sam") / "work"
    wsis("run", "--stage", "export", *tiny_args(tiny_data, work))
    return work


def sam_copy(pseudo_run, tmp_path, seed=0):
    """A copy of the work dir and a tiny random SAM checkpoint file, with the --set options
    that turn SAM on (a low agreement threshold, so that random weights refine some masks)."""
    work = tmp_path / "work"
    shutil.copytree(pseudo_run, work)
    checkpoint = tmp_path / "tiny_sam.pth"
    sam_model.save_sam(*sam_model.tiny_sam(seed), checkpoint)
    return work, checkpoint, ["--set", "sam.enabled=true", "--set", f"sam.checkpoint={checkpoint}",
                              "--set", "sam.min_agreement=0.05"]


def test_sam_refine_end_to_end_then_cached_and_resumed(tiny_data, pseudo_run, tmp_path):
    from wsis.io import read_npz
    work, _, sam_on = sam_copy(pseudo_run, tmp_path)
    proc = wsis("run", "--stage", "eval_ins_seg", *tiny_args(tiny_data, work, *sam_on))
    ran = stage_lines(proc.stderr)
    assert ran["ins_seg"] == "up to date" and ran["sam_refine"] == "ran" and ran["export"] == "ran"
    ids = sorted(p.stem for p in (work / "ins_seg").glob("*.npz"))
    refined = 0
    for image_id in ids:
        irn, sam = read_npz(work / "ins_seg" / f"{image_id}.npz"), read_npz(work / "sam_refine" / f"{image_id}.npz")
        n = len(irn["classes"])
        # the same instances in the same order, each still there; only masks and scores change
        assert sam["instances"].shape == irn["instances"].shape and sam["instances"].max() <= n
        assert sam["classes"].tolist() == irn["classes"].tolist() and np.array_equal(sam["margins"], irn["margins"])
        assert all((sam["instances"] == k + 1).any() for k in range(n))
        kept = ~sam["refined"]
        assert np.array_equal(sam["scores"][kept], irn["scores"][kept])
        for k in np.flatnonzero(kept):
            assert np.array_equal(sam["instances"] == k + 1, irn["instances"] == k + 1)
        refined += int(sam["refined"].sum())
    assert refined > 0
    # the export: valid COCO, the same images and categories; instances fewer only where export's
    # score threshold drops them (score 0: a fragment under ins_seg.min_area_fraction, as without SAM)
    base = COCO(str(pseudo_run / "export" / "pseudo_labels.json"))
    coco = COCO(str(work / "export" / "pseudo_labels.json"))
    assert coco.getImgIds() == base.getImgIds() and coco.loadCats(coco.getCatIds()) == base.loadCats(base.getCatIds())
    for img in coco.loadImgs(coco.getImgIds()):
        z = read_npz(work / "sam_refine" / f"{img['wsis_id']}.npz")
        keep = [k for k in range(len(z["classes"])) if z["scores"][k] >= 1e-5]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert len(anns) == len(keep) <= len(base.getAnnIds(imgIds=[img["id"]]))
        for k, ann in zip(keep, anns):
            assert np.array_equal(coco.annToMask(ann).astype(bool), z["instances"] == k + 1)
            assert ann["score"] == pytest.approx(float(z["scores"][k]), abs=1e-6)
    summary = json.loads((work / "export" / "summary.json").read_text())
    assert summary["sam_refined"] == refined and summary["sam_kept_irn"] == sum(
        len(read_npz(work / "ins_seg" / f"{i}.npz")["classes"]) for i in ids) - refined
    assert f"(SAM refined {refined} masks, kept {summary['sam_kept_irn']} IRN masks)" in proc.stdout
    metrics = json.loads((work / "eval_ins_seg" / "metrics.json").read_text())["train"]
    assert 0.0 <= metrics["mAP50"] <= 1.0 and 0.0 <= metrics["coco_AP50"] <= 1.0
    # the review queue shows the refined masks
    out = tmp_path / "review.json"
    wsis("review", "export", "--format", "coco", "--out", out, *tiny_args(tiny_data, work, *sam_on))
    doc = json.loads(out.read_text())
    assert len(doc["images"]) == len(ids)
    from pycocotools import mask as mask_utils
    for im in doc["images"]:
        z = read_npz(work / "sam_refine" / f"{im['wsis_id']}.npz")
        got = [mask_utils.decode(a["segmentation"]).astype(bool)
               for a in doc["annotations"] if a["image_id"] == im["id"]]
        exported = [k for k in range(len(z["classes"]))       # what the COCO export keeps
                    if z["scores"][k] >= 1e-5 and (z["instances"] == k + 1).any()]
        assert len(got) == len(exported)
        assert all(any(np.array_equal(m, z["instances"] == k + 1) for k in exported) for m in got)
    # cached: nothing recomputed, no stage output touched (the run's metrics.json is rewritten)
    before = {k: v for k, v in snapshot(work).items() if k != "metrics.json"}
    proc = wsis("run", "--stage", "eval_ins_seg", *tiny_args(tiny_data, work, *sam_on))
    assert set(stage_lines(proc.stderr).values()) == {"up to date"}
    assert {k: v for k, v in snapshot(work).items() if k != "metrics.json"} == before
    # interrupted: two images missing, the others kept as they are
    manifest = work / "sam_refine" / "manifest.json"
    man = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(dict(man, status="running")))
    gone = {i: read_npz(work / "sam_refine" / f"{i}.npz") for i in ids[:2]}
    for i in gone:
        (work / "sam_refine" / f"{i}.npz").unlink()
    kept_files = {i: snapshot(work / "sam_refine").get(f"{i}.npz") for i in ids[2:]}
    proc = wsis("run", "--stage", "sam_refine", *tiny_args(tiny_data, work, *sam_on))
    assert f"sam_refine: computing 2 of {len(ids)} images ({len(ids) - 2} already done)" in proc.stderr
    after = snapshot(work / "sam_refine")
    assert all(after[f"{i}.npz"] == kept_files[i] for i in ids[2:])
    for i, z in gone.items():
        again = read_npz(work / "sam_refine" / f"{i}.npz")
        assert all(np.array_equal(again[k], z[k]) for k in z)


def test_sam_checkpoint_content_is_in_the_fingerprint_and_off_restores_the_ins_seg_export(
        tiny_data, pseudo_run, tmp_path):
    work, checkpoint, sam_on = sam_copy(pseudo_run, tmp_path)
    wsis("run", "--stage", "export", *tiny_args(tiny_data, work, *sam_on))
    status = wsis("status", *tiny_args(tiny_data, work, *sam_on)).stdout
    assert "sam_refine   done" in status and "export       done" in status
    sam_model.save_sam(*sam_model.tiny_sam(seed=1), checkpoint)              # same path, other weights
    status = wsis("status", *tiny_args(tiny_data, work, *sam_on)).stdout
    assert "sam_refine   stale (file sam.checkpoint changed)" in status
    proc = wsis("run", "--stage", "export", *tiny_args(tiny_data, work, *sam_on))
    assert stage_lines(proc.stderr)["sam_refine"] == "ran"
    # SAM off again: export reads ins_seg, with the fingerprint and content it had before SAM
    status = wsis("status", *tiny_args(tiny_data, work)).stdout
    assert "sam_refine" not in status
    wsis("run", "--stage", "export", *tiny_args(tiny_data, work))
    fingerprint = json.loads((pseudo_run / "export" / "manifest.json").read_text())["fingerprint"]
    assert json.loads((work / "export" / "manifest.json").read_text())["fingerprint"] == fingerprint
    assert (json.loads((work / "export" / "pseudo_labels.json").read_text())["annotations"]
            == json.loads((pseudo_run / "export" / "pseudo_labels.json").read_text())["annotations"])
    one_line_error(wsis("run", "--stage", "sam_refine", *tiny_args(tiny_data, work), check=False),
                   "stage 'sam_refine' is off in this config: set sam.enabled = true")


def test_offline_named_checkpoint_stops_the_run_with_one_line(tiny_data, pseudo_run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(pseudo_run, work)
    proc = wsis("run", "--stage", "export", *tiny_args(tiny_data, work, "--set", "sam.enabled=true"), check=False,
                env={"TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": "http://127.0.0.1:9",
                     "https_proxy": "http://127.0.0.1:9"})
    one_line_error(proc, "could not download the SAM checkpoint vit_b", "--set sam.checkpoint=/path/to/file.pth")
    assert not list((work / "sam_refine").glob("*.npz"))
    exported = "export/pseudo_labels.json"
    assert (work / exported).read_bytes() == (pseudo_run / exported).read_bytes()
