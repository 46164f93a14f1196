import numpy as np
import pytest

from wsis.metrics import average_precision, instance_ap, mask_iou


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_average_precision_hand_worked():
    # TP, FP, TP over 2 ground truths: P = 1, .5, .667 at R = .5, .5, 1
    ap = average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert average_precision(np.array([1.0]), np.array([1.0])) == pytest.approx(1.0)
    # precision is made monotone: a later higher precision lifts earlier recall levels
    assert average_precision(np.array([0.25, 0.5]), np.array([0.5, 1.0])) == pytest.approx(0.5)


def test_mask_iou():
    a = np.stack([box(4, 4, 0, 2, 0, 2), box(4, 4, 0, 4, 0, 4)])
    b = np.stack([box(4, 4, 0, 2, 0, 4)])
    np.testing.assert_allclose(mask_iou(a, b), [[0.5], [0.5]])


def test_instance_ap_hand_case():
    h = w = 10
    g1, g2 = box(h, w, 0, 5, 0, 5), box(h, w, 5, 10, 5, 10)
    gts = [(np.stack([g1]), np.array([0])), (np.stack([g2]), np.array([0]))]
    near_g1 = box(h, w, 0, 5, 0, 4)          # IoU 0.8 with g1
    preds = [
        (np.stack([g1, near_g1]), np.array([0, 0]), np.array([0.9, 0.8])),  # TP, duplicate -> FP
        (np.stack([box(h, w, 5, 10, 5, 7)]), np.array([0]), np.array([0.7])),  # IoU 0.4 with g2
    ]
    aps = instance_ap(preds, gts, num_classes=2, iou_thresholds=(0.25, 0.5))
    # t = 0.25: TP, FP, TP -> 0.5 * 1 + 0.5 * 2/3 ; t = 0.5: TP, FP, FP -> 0.5
    assert aps[0.25][0] == pytest.approx(0.5 + 1 / 3)
    assert aps[0.5][0] == pytest.approx(0.5)
    assert np.isnan(aps[0.5][1])            # no ground truth of class 1


def test_predictions_of_a_class_without_gt_are_ignored_and_missing_predictions_score_zero():
    h = w = 6
    gts = [(np.stack([box(h, w, 0, 3, 0, 3)]), np.array([1]))]
    preds = [(np.stack([box(h, w, 0, 3, 0, 3)]), np.array([0]), np.array([0.9]))]
    aps = instance_ap(preds, gts, num_classes=2, iou_thresholds=(0.5,))
    assert np.isnan(aps[0.5][0]) and aps[0.5][1] == 0.0
