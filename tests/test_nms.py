import math

import torch
from torchvision.ops import batched_nms

from wsis.algorithms.nms import fast_nms, matrix_nms


def strip_masks(*spans, width=12):
    m = torch.zeros(len(spans), 1, width)
    for k, (a, b) in enumerate(spans):
        m[k, 0, a:b] = 1
    return m


def test_matrix_nms_hand_worked_three_masks():
    # A = [0,4), B = [2,6), C = [4,8): IoU(A,B) = IoU(B,C) = 2/6, IoU(A,C) = 0
    masks = strip_masks((0, 4), (2, 6), (4, 8))
    scores = torch.tensor([0.9, 0.8, 0.7])
    same = torch.tensor([0, 0, 0])
    out = matrix_nms(masks, same, scores, "gaussian", sigma=2.0)
    # B: decayed by A: exp(-2 (1/3)^2) / exp(0). C: by B: exp(-2/9) / exp(-2 * compensate_B^2)
    # with compensate_B = IoU(A, B) = 1/3, so 1: B's own suppression compensates. By A: 1.
    torch.testing.assert_close(out, torch.tensor([0.9, 0.8 * math.exp(-2 / 9), 0.7]))
    out = matrix_nms(masks, same, scores, "linear")
    torch.testing.assert_close(out, torch.tensor([0.9, 0.8 * 2 / 3, 0.7]))
    # different classes never decay each other
    torch.testing.assert_close(matrix_nms(masks, torch.tensor([0, 1, 2]), scores), scores)


def boxes(*b):
    return torch.tensor(b, dtype=torch.float32)


def test_fast_nms_agrees_with_greedy_without_chains():
    b = boxes([0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40], [0, 0, 10, 10])
    s = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 0, 1])
    fast = fast_nms(b, s, labels, 0.5)
    greedy = batched_nms(b, s, labels, 0.5)
    assert sorted(fast.tolist()) == sorted(greedy.tolist()) == [0, 2, 3]


def test_fast_nms_differs_from_greedy_on_a_chain():
    # A-B and B-C overlap (IoU 0.6), A-C do not (IoU 0.25): greedy drops B and keeps C;
    # Fast NMS lets the dropped B still suppress C.
    b = boxes([0, 0, 10, 10], [2.5, 0, 12.5, 10], [5, 0, 15, 10])
    s = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.zeros(3, dtype=torch.long)
    assert batched_nms(b, s, labels, 0.5).tolist() == [0, 2]
    assert fast_nms(b, s, labels, 0.5).tolist() == [0]


def test_fast_nms_limits():
    b = torch.tensor([[i * 20.0, 0, i * 20 + 10, 10] for i in range(10)])
    s = torch.linspace(1, 0.1, 10)
    keep = fast_nms(b, s, torch.zeros(10, dtype=torch.long), top_k=5, max_detections=3)
    assert keep.tolist() == [0, 1, 2]
    assert len(fast_nms(b[:0], s[:0], torch.zeros(0, dtype=torch.long))) == 0
