import numpy as np

from wsis.algorithms.labels import scores_to_label
from wsis.metrics import confusion_matrix, iou_from_confusion, mean_iou


def test_confusion_and_iou_on_a_hand_worked_case():
    gt = np.array([[0, 0, 1, 1],
                   [0, 2, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 0, 2]], np.uint8)
    conf = confusion_matrix(gt, pred, 3)
    # rows gt, cols pred; the 255 pixel is ignored
    assert conf.tolist() == [[2, 1, 0],
                             [0, 2, 0],
                             [1, 0, 1]]
    iou = iou_from_confusion(conf)
    # bg: TP 2, FP 1 (gt 2 -> 0), FN 1 -> 2/4; class1: 2/(2+1) ; class2: 1/(1+1)
    np.testing.assert_allclose(iou, [0.5, 2 / 3, 0.5])
    assert abs(mean_iou(conf) - (0.5 + 2 / 3 + 0.5) / 3) < 1e-12


def test_labels_absent_everywhere_do_not_count():
    gt = np.zeros((2, 2), np.uint8)
    conf = confusion_matrix(gt, gt, 4)
    assert np.isnan(iou_from_confusion(conf)[1:]).all()
    assert mean_iou(conf) == 1.0


def test_scores_to_label_prepends_background_and_maps_classes():
    cams = np.array([[[0.9, 0.1], [0.2, 0.0]],      # class 3
                     [[0.5, 0.6], [0.1, 0.0]]], np.float32)  # class 0
    out = scores_to_label(cams, [3, 0], bg_threshold=0.15)
    assert out.tolist() == [[4, 1], [4, 0]]
