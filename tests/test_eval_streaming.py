"""The streaming instance evaluator (``InstanceAP``, ``score_instances``) against the dense
implementation it replaced, kept here as the reference: the scores must be identical."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import cocoeval_stats
from pipelines.progress import Progress
from pipelines.stages.eval_pseudo import score_instances
from wsis.coco import annotation, coco_evaluate, image_entries, write_instances
from wsis.data.base import Dataset, InstanceGT
from wsis.metrics import InstanceAP, average_precision, mask_iou


def dense_instance_ap(predictions, ground_truths, num_classes, iou_thresholds):
    """The evaluator before streaming (every mask of the split in memory), verbatim."""
    per_class = {}
    for c in range(num_classes):
        ranked = []
        n_gt = 0
        for k, ((pm, pc, ps), (gm, gc)) in enumerate(zip(predictions, ground_truths)):
            g = gm[gc == c]
            n_gt += len(g)
            sel = pc == c
            if not sel.any():
                continue
            ious = mask_iou(pm[sel], g) if len(g) else np.zeros((int(sel.sum()), 0))
            for score, row in zip(ps[sel], ious):
                ranked.append((float(score), k, row))
        ranked.sort(key=lambda t: -t[0])
        per_class[c] = (ranked, n_gt)
    out = {}
    for t in iou_thresholds:
        aps = np.full(num_classes, np.nan)
        for c, (ranked, n_gt) in per_class.items():
            if n_gt == 0:
                continue
            matched = set()
            tp = np.zeros(len(ranked))
            for i, (_, k, row) in enumerate(ranked):
                if len(row) == 0:
                    continue
                j = int(row.argmax())
                if row[j] >= t and (k, j) not in matched:
                    matched.add((k, j))
                    tp[i] = 1
            ctp = np.cumsum(tp)
            recall = ctp / n_gt
            precision = ctp / np.arange(1, len(ranked) + 1)
            aps[c] = average_precision(recall, precision) if len(ranked) else 0.0
        out[t] = aps
    return out


def dense_ground_truth_coco(ds, ids, path):
    """The ground-truth writer before streaming: returns every image's dense masks."""
    images = image_entries(ds, ids)
    anns, truths = [], []
    for entry, image_id in zip(images, ids):
        gt = ds.instance_gt(image_id)
        truths.append((gt.masks, gt.classes))
        for m, cls in zip(gt.masks, gt.classes):
            anns.append(annotation(m, cls, entry["id"], len(anns) + 1))
    write_instances(path, images, anns, ds.class_names)
    return path, images, truths


def random_masks(rng, n, h, w):
    """n random blobs: rectangles and discs of random size, some overlapping, a few empty."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w), bool)
    for i in range(n):
        if rng.random() < 0.05:
            continue                                  # an empty mask
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(1, h // 2 + 1), rng.integers(1, w // 2 + 1)
        if rng.random() < 0.5:
            out[i] = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        else:
            out[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out


def perturb(rng, masks):
    """Predictions near the ground truth: each mask shifted by a few pixels (IoU spread)."""
    out = np.zeros_like(masks)
    for i, m in enumerate(masks):
        dy, dx = rng.integers(-3, 4, size=2)
        out[i] = np.roll(m, (dy, dx), axis=(0, 1))
    return out


def random_case(seed, num_images=12, num_classes=4):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(num_images):
        h, w = rng.integers(8, 40, size=2)
        m = int(rng.integers(0, 6))
        gm, gc = random_masks(rng, m, h, w), rng.integers(0, num_classes, m)
        # near-GT detections (some with the wrong class), duplicates and pure false positives
        keep = rng.random(m) < 0.8
        pm = np.concatenate([perturb(rng, gm[keep]), perturb(rng, gm[keep][:1]),
                             random_masks(rng, int(rng.integers(0, 4)), h, w)])
        pc = np.concatenate([np.where(rng.random(int(keep.sum())) < 0.85, gc[keep],
                                      rng.integers(0, num_classes, int(keep.sum()))),
                             gc[keep][:1], rng.integers(0, num_classes, len(pm) - int(keep.sum()) - len(gc[keep][:1]))])
        # scores on a coarse grid so that ties across images and classes are common
        ps = np.round(rng.random(len(pm)), 1).astype(np.float32)
        preds.append((pm, pc.astype(np.int64), ps))
        gts.append((gm, gc.astype(np.int64)))
    return preds, gts


THRESHOLDS = (0.25, 0.5, 0.7, 0.75)


@pytest.mark.parametrize("seed", range(25))
def test_streaming_ap_equals_the_dense_evaluator_on_random_cases(seed):
    preds, gts = random_case(seed)
    acc = InstanceAP(4, THRESHOLDS)
    for (pm, pc, ps), (gm, gc) in zip(preds, gts):
        acc.add(pm, pc, ps, gm, gc)
        del pm, gm                 # the accumulator keeps no reference to the masks
    new, old = acc.result(), dense_instance_ap(preds, gts, 4, THRESHOLDS)
    assert set(new) == set(old)
    for t in THRESHOLDS:
        np.testing.assert_array_equal(new[t], old[t])    # bit-identical, NaN where no GT
    assert any(np.isfinite(old[t]).any() for t in THRESHOLDS)


def test_streaming_ap_keeps_no_masks():
    preds, gts = random_case(3)
    acc = InstanceAP(4, THRESHOLDS)
    for (pm, pc, ps), (gm, gc) in zip(preds, gts):
        acc.add(pm, pc, ps, gm, gc)
    kept = [row for per_class in acc.detections for (_, _, row) in per_class]
    assert len(kept) == sum(int((p[1] < 4).sum()) for p in preds)
    # each detection keeps one IoU per ground truth of its class in its image, nothing more
    assert all(row.ndim == 1 and row.base is None for row in kept)
    assert sum(row.size for row in kept) <= sum(len(p[1]) * len(g[1]) for p, g in zip(preds, gts))


def test_hand_case_with_a_tie_keeps_the_order_of_arrival():
    # two detections of equal score: the first added (image 0) is ranked first
    g = np.zeros((1, 4, 4), bool)
    g[0, :2, :2] = True
    acc = InstanceAP(1, (0.5,))
    acc.add(g, np.array([0]), np.array([0.5]), g, np.array([0]))                  # TP
    acc.add(g, np.array([0]), np.array([0.5]), np.zeros((0, 4, 4), bool), np.array([], np.int64))  # FP
    # ranked TP, FP over 1 ground truth: precision 1 at recall 1 -> AP 1
    assert acc.result()[0.5][0] == pytest.approx(1.0)
    acc = InstanceAP(1, (0.5,))
    acc.add(g, np.array([0]), np.array([0.5]), np.zeros((0, 4, 4), bool), np.array([], np.int64))
    acc.add(g, np.array([0]), np.array([0.5]), g, np.array([0]))
    # FP first: precision 1/2 at recall 1
    assert acc.result()[0.5][0] == pytest.approx(0.5)


class ListDataset(Dataset):
    """Images on disk, ground truth from memory: enough for the evaluator."""

    def image_path(self, image_id):
        return self.root / f"{image_id}.png"

    def instance_gt(self, image_id):
        return self.truth[image_id]


def test_score_instances_matches_the_dense_stage_code(tmp_path):
    preds, gts = random_case(7, num_images=8, num_classes=3)
    ids = tuple(f"im{k}" for k in range(len(gts)))
    ds = ListDataset("test", tmp_path, ("a", "b", "c"), {"all": ids}, {i: () for i in ids}, has_masks=True)
    ds.truth = {i: InstanceGT(gm, gc) for i, (gm, gc) in zip(ids, gts)}
    for i, (gm, _) in zip(ids, gts):
        Image.fromarray(np.zeros(gm.shape[1:], np.uint8)).save(tmp_path / f"{i}.png")
    by_id = dict(zip(ids, preds))

    # the stage code before: every mask kept, then scored
    old_path, old_images, truths = dense_ground_truth_coco(ds, ids, tmp_path / "old_gt.json")
    old_results = [annotation(m, c, e["id"], 0, s) for e, i in zip(old_images, ids) for m, c, s in zip(*by_id[i])]
    old_aps = dense_instance_ap([by_id[i] for i in ids], truths, 3, THRESHOLDS)

    new_results = []

    def predict(entry, image_id):
        masks, classes, scores = by_id[image_id]
        new_results.extend(annotation(m, c, entry["id"], 0, s) for m, c, s in zip(masks, classes, scores))
        return masks, classes, scores

    new_aps = score_instances(ds, ids, predict, THRESHOLDS, tmp_path / "new_gt.json", Progress("test", len(ids)))
    for t in THRESHOLDS:
        np.testing.assert_array_equal(new_aps[t], old_aps[t])
    assert json.loads((tmp_path / "new_gt.json").read_text()) == json.loads(old_path.read_text())
    assert new_results == old_results
    coco = coco_evaluate(tmp_path / "new_gt.json", new_results)
    assert coco == coco_evaluate(old_path, old_results) and 0 < coco["AP"] <= 1


def all_categories_cocoeval(gt_path, results):
    """pycocotools' usual single pass over every category."""
    stats = cocoeval_stats(gt_path, results)
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2]}


@pytest.mark.parametrize("seed", range(4))
def test_coco_ap_category_by_category_equals_one_pass(tmp_path, seed):
    preds, gts = random_case(seed, num_images=10, num_classes=4)
    images = [{"id": k + 1, "file_name": f"{k}.png", "height": g[0].shape[1], "width": g[0].shape[2]}
              for k, g in enumerate(gts)]
    anns = []
    for k, (gm, gc) in enumerate(gts):
        for m, c in zip(gm, gc):
            anns.append(annotation(m, c, k + 1, len(anns) + 1))
    write_instances(tmp_path / "gt.json", images, anns, ("a", "b", "c", "d"))
    results = [annotation(m, c, k + 1, 0, s) for k, (pm, pc, ps) in enumerate(preds) for m, c, s in zip(pm, pc, ps)]
    ours, reference = coco_evaluate(tmp_path / "gt.json", results), all_categories_cocoeval(tmp_path / "gt.json", results)
    assert ours == reference and 0 < reference["AP"] < 1
