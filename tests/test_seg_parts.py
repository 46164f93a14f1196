"""Hand-made cases for the instance heads' label assignment and geometry."""


import pytest
import torch

from wsis.models.centermask import centermask_targets, gaussian_radius
from wsis.models.instance_common import boxes_from_masks, paste_masks
from wsis.models.solo import center_region, solo_targets
from wsis.models.yolact import crop, cxcywh_to_xyxy, decode, encode, make_anchors, match_anchors


def test_solo_center_region_hand_worked():
    # 100x100 image, S = 10 (10 px cells). Box 40 x 20 around a centre of mass (40, 40):
    # half extents 0.2 * (20, 40) / 2 = (2, 4) -> rows 38..42 -> cells 3..4, cols 36..44 -> 3..4
    assert center_region((20, 30, 60, 50), (40, 40), (100, 100), 10, 0.2) == (3, 4, 3, 4)
    # 100 x 100 box, sigma 0.1: half extent 5 around (55, 55) -> 50..60 -> cells 5..6
    assert center_region((0, 0, 100, 100), (55, 55), (100, 100), 10, 0.1) == (5, 6, 5, 6)
    # sigma 0.2: half extent 10 -> 45..65 -> cells 4..6
    assert center_region((0, 0, 100, 100), (55, 55), (100, 100), 10, 0.2) == (4, 6, 4, 6)
    # a huge region is clamped to the 3 x 3 cells around the centre cell
    assert center_region((0, 0, 100, 100), (50, 50), (100, 100), 10, 1.0) == (4, 6, 4, 6)
    # at the border the region stays on the grid
    # half extent 15 around (1, 1): rows -14..16 -> cells 0..1 (never below 0)
    assert center_region((0, 0, 30, 30), (1, 1), (100, 100), 10, 1.0) == (0, 1, 0, 1)


def test_solo_targets_levels_and_cells():
    masks = torch.zeros(2, 100, 100, dtype=torch.bool)
    masks[0, 30:50, 20:60] = True        # 40 x 20: sqrt(wh) = 28.3
    masks[1, 0:90, 0:90] = True          # 90 x 90: sqrt(wh) = 90
    boxes = boxes_from_masks(masks)
    assert boxes.tolist() == [[20, 30, 60, 50], [0, 0, 90, 90]]
    levels = solo_targets(masks, torch.tensor([3, 1]), boxes, grids=[10, 5], scale_ranges=[(1, 50), (40, 200)],
                          sigma=0.2)
    cate0, cells0, owner0 = levels[0]
    # instance 0 only on level 0; centre of mass (39.5, 39.5) -> cells rows 3..4, cols 3..4
    assert sorted(cells0.tolist()) == [33, 34, 43, 44] and set(owner0.tolist()) == {0}
    assert (cate0 == 3).sum() == 4 and (cate0 == -1).sum() == 96
    cate1, cells1, owner1 = levels[1]
    # instance 1 on level 1: centre of mass (44.5, 44.5), S = 5 (20 px cells) -> cell 2;
    # half extent 0.2 * 90 / 2 = 9 -> 35.5..53.5 -> cells 1..2
    assert sorted(cells1.tolist()) == [6, 7, 11, 12] and set(owner1.tolist()) == {1}
    assert (cate1 == 1).sum() == 4


def test_yolact_anchor_layout():
    a = make_anchors([(2, 3)], 60, [10], [1.0, 4.0])
    assert a.shape == (2 * 3 * 2, 4)
    # cell (row 0, col 1), ratio 4 (w / h = 4, w h = 100): centre (30, 15), 20 x 5
    assert a[3].tolist() == [30.0, 15.0, 20.0, 5.0]


def test_yolact_matching_hand_worked():
    anchors = torch.tensor([[10, 10, 20, 20], [30, 10, 20, 20], [20, 10, 20, 20],
                            [100, 100, 20, 20], [104, 100, 20, 20], [60, 60, 20, 20]], dtype=torch.float)
    gt = torch.tensor([[0, 0, 20, 20],       # A0 IoU 1; A2 1/3
                       [22, 0, 42, 20],      # A1 IoU 0.82; A2 0.25
                       [97, 90, 117, 110],   # A4 IoU 0.74; A3 0.48 (neutral)
                       [50, 50, 90, 90]], dtype=torch.float)  # best A5 with IoU 0.25: forced
    matched, state = match_anchors(anchors, gt, 0.5, 0.4)
    assert state.tolist() == [1, 1, -1, 0, 1, 1]
    assert matched[[0, 1, 4, 5]].tolist() == [0, 1, 2, 3]
    empty_matched, empty_state = match_anchors(anchors, torch.zeros(0, 4))
    assert (empty_state == -1).all()


def test_box_encoding_round_trip_and_crop():
    anchors = torch.tensor([[50.0, 40, 20, 10], [5, 5, 8, 8]])
    boxes = torch.tensor([[45.0, 30, 61, 52], [0, 1, 9, 7]])
    torch.testing.assert_close(decode(encode(boxes, anchors), anchors), boxes)
    assert encode(cxcywh_to_xyxy(anchors), anchors).abs().max() < 1e-6
    m = crop(torch.ones(1, 4, 5), torch.tensor([[1.0, 1, 3, 2]]))
    assert m[0].tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]


@pytest.mark.parametrize("h, w", [(10, 10), (40, 20), (7, 55)])
def test_gaussian_radius_keeps_the_overlap_in_all_three_cases(h, w):
    o = 0.7
    r = gaussian_radius(h, w, o)
    assert r > 0
    shifted = (h - r) * (w - r) / (2 * h * w - (h - r) * (w - r))
    shrunk = (h - 2 * r) * (w - 2 * r) / (h * w)
    grown = h * w / ((h + 2 * r) * (w + 2 * r))
    assert min(shifted, shrunk, grown) == pytest.approx(o, abs=1e-9)
    assert all(v >= o - 1e-9 for v in (shifted, shrunk, grown))


def test_centermask_targets():
    t = centermask_targets(torch.tensor([[8.0, 4, 40, 28]]), torch.tensor([2]), 3, (10, 12))
    # centre (24, 16) px -> (6, 4) cells on the stride-4 grid, size (6, 8) cells
    assert t["centres"].tolist() == [[4, 6]] and t["offsets"].tolist() == [[0.0, 0.0]]
    assert t["sizes"].tolist() == [[6.0, 8.0]]
    assert t["heat"][2, 4, 6] == 1.0 and t["heat"][:2].sum() == 0 and t["heat"].max() == 1.0


def test_paste_masks_to_original_size():
    soft = torch.zeros(1, 8, 8)
    soft[0, :4, :4] = 1.0        # top-left quarter of a 32 px canvas -> 16 px
    out = paste_masks(soft, 32, valid=(16, 32), original=(32, 64))
    # the image filled the canvas' top half; its top-left 16x16 px are 32x32 px of the original
    assert out.shape == (1, 32, 64)
    assert out[0, :30, :30].all() and not out[0, :, 34:].any()
