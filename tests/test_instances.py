import numpy as np
import pytest
from skimage.measure import label

from wsis.algorithms.instances import (cluster_endpoints, cluster_instances, detections, find_centroids,
                                       instance_seeds, synthesize_instances)
from wsis.algorithms.labels import upsample_normalised


def two_centre_field(h=20, w=30, centres=((10, 7), (10, 22))):
    """Displacement pointing from every pixel to the nearer of two centres; pixel labels."""
    ys, xs = np.mgrid[0:h, 0:w].astype(float)
    d = [np.hypot(ys - cy, xs - cx) for cy, cx in centres]
    owner = np.argmin(d, axis=0)
    cy = np.choose(owner, [c[0] for c in centres])
    cx = np.choose(owner, [c[1] for c in centres])
    return np.stack([cy - ys, cx - xs]), owner


def bilinear_sample(field, ys, xs):
    """Sample (C, h, w) ``field`` at float coordinates inside the grid -> (C, n), by the formula."""
    h, w = field.shape[1:]
    y0 = np.clip(np.floor(ys).astype(np.int64), 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(np.int64), 0, w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = ys - y0, xs - x0
    return (field[:, y0, x0] * (1 - fy) * (1 - fx) + field[:, y0, x1] * (1 - fy) * fx
            + field[:, y1, x0] * fy * (1 - fx) + field[:, y1, x1] * fy * fx)


def reference_centroids(displacement, iterations):
    """Every pixel moved one bilinear step at a time, clipped to the grid, then rounded."""
    _, h, w = displacement.shape
    ys, xs = (a.ravel() for a in np.mgrid[0:h, 0:w].astype(np.float64))
    for _ in range(iterations):
        dy, dx = bilinear_sample(displacement, ys, xs)
        ys, xs = np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)
    return np.stack([np.round(ys), np.round(xs)]).astype(np.int64).reshape(2, h, w)


def test_bilinear_sample_hand_case():
    f = np.array([[[0.0, 1.0], [2.0, 3.0]]])
    np.testing.assert_allclose(bilinear_sample(f, np.array([0.5, 0, 1]), np.array([0.5, 1, 1])), [[1.5, 1.0, 3.0]])


def test_centroids_match_the_step_by_step_reference():
    rng = np.random.default_rng(0)
    field, _ = two_centre_field(37, 51, centres=((5, 6), (30, 44)))
    noisy = 0.4 * field + rng.uniform(-0.7, 0.7, field.shape)     # smooth enough not to be chaotic
    for f, iterations in ((noisy, 300), (0.9 * field, 50), (rng.uniform(-3, 3, (2, 6, 5)), 40),
                          (rng.uniform(-3, 3, (2, 1, 9)), 20), (rng.uniform(-3, 3, (2, 7, 1)), 20),
                          (np.full((2, 1, 1), 0.7), 5)):
        np.testing.assert_array_equal(find_centroids(f, iterations), reference_centroids(f, iterations))


def test_centroids_and_clusters_split_two_instances():
    field, owner = two_centre_field()
    # a displacement that only moves halfway still converges to the centres
    cents = find_centroids(0.5 * field, iterations=60)
    assert set(map(tuple, cents.reshape(2, -1).T.tolist())) == {(10, 7), (10, 22)}
    inst = cluster_instances(0.5 * field, cents, threshold=2.5)
    assert inst.max() == 2
    # each instance is exactly one owner region
    for k in (1, 2):
        assert len(np.unique(owner[inst == k])) == 1
    assert (inst > 0).all()


def test_no_weak_region_means_one_instance_of_everything():
    """As in the reference code, pixels landing in no cluster form one instance."""
    field = np.full((2, 8, 8), 5.0)
    inst = cluster_instances(field, find_centroids(field, 10), 2.5)
    assert (inst == 1).all()
    assert instance_seeds(np.ones((2, 8, 8), np.float32), inst).shape == (2, 8, 8)


def test_pixels_landing_in_no_cluster_are_the_first_instance():
    # one row: weak (|D| < 2.5) at columns 1 and 5 only -> components 1 and 2
    field = np.zeros((2, 1, 7))
    field[1] = [3, 0, 3, 3, 3, 0, 3]
    at = lambda cols: np.stack([np.zeros(7, np.int64), np.array(cols)]).reshape(2, 1, 7)
    # landed components [1, 1, 2, 2, 0, 2, 0]: distinct {0, 1, 2} -> instances {1, 2, 3}
    assert cluster_instances(field, at([1, 1, 5, 5, 3, 5, 0])).tolist() == [[2, 2, 3, 3, 1, 3, 1]]
    # every pixel lands in a cluster: the clusters are instances 1 and 2
    assert cluster_instances(field, at([1, 1, 5, 5, 5, 5, 1])).tolist() == [[1, 1, 2, 2, 2, 2, 1]]
    # only the second cluster is reached: it is the only instance
    assert cluster_instances(field, at([5] * 7)).tolist() == [[1] * 7]
    # component 2 reached, and no cluster: no-cluster first
    assert cluster_instances(field, at([5, 5, 0, 0, 5, 5, 5])).tolist() == [[2, 2, 1, 1, 2, 2, 2]]


def test_instance_seeds_layout():
    inst = np.array([[1, 1, 2], [0, 2, 2]])
    cams = np.stack([np.full((2, 3), 0.5), np.full((2, 3), 0.8)]).astype(np.float32)
    seeds = instance_seeds(cams, inst)
    assert seeds.shape == (4, 2, 3)        # channel k * I + i
    np.testing.assert_allclose(seeds[0], 0.5 * (inst == 1))
    np.testing.assert_allclose(seeds[3], 0.8 * (inst == 2))


def test_detections_components_classes_scores():
    h, w = 20, 20
    scores = np.zeros((4, h, w), np.float32)   # classes [3, 7] x 2 instances
    scores[0, 2:8, 2:8] = 0.9                  # class 3, instance 1
    scores[0, 12:18, 12:18] = 0.6              # same channel, second component
    scores[3, 2:8, 12:18] = 1.0                # class 7, instance 2
    scores[3, 19, 0] = 0.7                     # a 1-pixel speck: under 1% of the image
    inst, cls, sc = detections(scores, [3, 7], 2, bg_threshold=0.25)
    assert cls.tolist() == [3, 3, 7, 7]
    np.testing.assert_allclose(sc, [0.9, 0.6, 1.0, 0.0])
    assert (inst[2:8, 2:8] == 1).all() and (inst[12:18, 12:18] == 2).all() and inst[19, 0] == 4
    assert (inst == 0).sum() == h * w - 36 * 3 - 1
    empty = detections(np.zeros((0, 5, 5), np.float32), [], 0, 0.25)
    assert empty[0].shape == (5, 5) and len(empty[1]) == 0 and len(empty[2]) == 0


def test_detections_split_with_4_connectivity():
    """Two squares of one channel touching only at a corner are two detections."""
    scores = np.zeros((1, 12, 12), np.float32)
    scores[0, 1:5, 1:5] = 0.8
    scores[0, 5:9, 5:9] = 0.5          # shares only the corner (4, 4)-(5, 5)
    inst, cls, sc = detections(scores, [2], 1, bg_threshold=0.25, min_area_fraction=0.0)
    assert cls.tolist() == [2, 2]
    np.testing.assert_allclose(sc, [0.8, 0.5])
    assert (inst[1:5, 1:5] == 1).all() and (inst[5:9, 5:9] == 2).all()


def test_detections_scored_by_their_mean_rank_a_spilled_mask_lower():
    """score="mean": two whole instances both peak at 1 (the normalised walk), but the one
    that spills over pixels where its channel is low has the lower mean. By hand: 16 pixels
    at 1 -> 1.0; 16 at 1 and 16 at 0.5 -> 0.75."""
    scores = np.zeros((2, 12, 12), np.float32)
    scores[0, 1:5, 1:5] = 1.0
    scores[1, 6:10, 1:5] = 1.0
    scores[1, 6:10, 5:9] = 0.5                  # the spill
    _, _, peak = detections(scores, [1], 2, bg_threshold=0.25, min_area_fraction=0.0)
    _, _, mean = detections(scores, [1], 2, bg_threshold=0.25, min_area_fraction=0.0, score="mean")
    np.testing.assert_allclose(peak, [1.0, 1.0])
    np.testing.assert_allclose(mean, [1.0, 0.75])
    # under the area floor a detection still scores 0
    _, _, floor = detections(scores, [1], 2, bg_threshold=0.25, min_area_fraction=20 / 144, score="mean")
    np.testing.assert_allclose(floor, [0.0, 0.75])
    with pytest.raises(ValueError, match="'median'"):
        detections(scores, [1], 2, 0.25, score="median")


def reference_detections(scores, classes, n_instances, bg_threshold, min_area_fraction=0.01, score="peak"):
    """Channel by channel: label its winning pixels (4-connected), one detection per part."""
    h, w = scores.shape[1:]
    out = np.zeros((h, w), np.int32)
    det_classes, det_scores = [], []
    winner = np.concatenate([np.full((1, h, w), bg_threshold, scores.dtype), scores]).argmax(0)
    for ch in np.unique(winner[winner > 0]):
        parts = label(winner == ch, connectivity=1)
        for part in range(1, parts.max() + 1):
            mask = parts == part
            big = mask.sum() >= min_area_fraction * h * w
            det_classes.append(classes[(ch - 1) // n_instances])
            reduce = np.max if score == "peak" else np.mean
            det_scores.append(reduce(scores[ch - 1][mask].astype(np.float64)) if big else 0.0)
            out[mask] = len(det_scores)
    return out, det_classes, det_scores


def test_detections_match_the_channel_by_channel_reference():
    rng = np.random.default_rng(3)
    for k, i, h, w in ((2, 3, 40, 50), (3, 1, 31, 17), (1, 4, 64, 64)):
        # blocky scores (from a coarse grid) make components of many sizes, with ties
        coarse = rng.random((k * i, h // 4 + 1, w // 4 + 1)).astype(np.float32) * 0.6
        scores = np.ascontiguousarray(coarse.repeat(4, 1).repeat(4, 2)[:, :h, :w])
        scores[:, rng.random((h, w)) < 0.05] = 0.25          # some ties with the background
        classes = [int(c) for c in rng.choice(20, k, replace=False)]
        for score in ("peak", "mean"):
            got = detections(scores, classes, i, 0.25, 0.01, score)
            want = reference_detections(scores, classes, i, 0.25, 0.01, score)
            np.testing.assert_array_equal(got[0], want[0])
            assert got[1].tolist() == want[1]
            np.testing.assert_allclose(got[2], np.array(want[2], np.float32), rtol=1e-6)


def test_upsample_normalised():
    s = np.zeros((2, 3, 4), np.float32)
    s[1, 1, 2] = 4.0
    up = upsample_normalised(s, (10, 15))
    assert up.shape == (2, 10, 15) and abs(up.max() - 1.0) < 1e-6
    assert (upsample_normalised(np.zeros((1, 3, 4), np.float32), (10, 15)) == 0).all()


def test_endpoint_clusters_split_small_touching_objects_the_weak_region_joins():
    # Two 5-cell-wide objects side by side (columns 0-4 and 5-9), each field pointing at its
    # own centre. Every |D| is at most 2 * sqrt(2) < 3, so at threshold 3 the weak region is
    # the whole grid: one cluster. Their end points (2, 2) and (2, 7) are 5 cells apart.
    ys, xs = np.mgrid[0:5, 0:10]
    cx = np.where(xs < 5, 2, 7)
    field = np.stack([2 - ys, cx - xs]).astype(float)
    centroids = find_centroids(field, 10)
    assert (centroids[0] == 2).all() and (centroids[1] == cx).all()
    assert cluster_instances(field, centroids, 3.0).max() == 1
    clusters = cluster_endpoints(centroids, np.ones((5, 10), bool))
    np.testing.assert_array_equal(clusters, np.where(xs < 5, 1, 2))


def test_endpoint_clusters_non_voters_and_8_connectivity():
    # voters land on (1, 1) and (2, 2): diagonal neighbours, one cluster (8-connected); a
    # non-voter landing on (0, 4), where no voter ends, is the first instance, as in
    # cluster_instances; a non-voter landing on a voter's cell joins that cluster.
    centroids = np.zeros((2, 3, 5), np.int64)
    centroids[:, 0, 0] = (1, 1)
    centroids[:, 0, 1] = (2, 2)
    centroids[:, 0, 2] = (0, 4)
    centroids[:, 1:, :] = np.array([1, 1])[:, None, None]
    centroids[:, 0, 3:] = np.array([2, 2])[:, None]
    voters = np.zeros((3, 5), bool)
    voters[0, :2] = True
    expected = np.full((3, 5), 2)
    expected[0, 2] = 1
    np.testing.assert_array_equal(cluster_endpoints(centroids, voters), expected)
    # with no voter at all, every pixel lands outside every cluster: one instance
    assert (cluster_endpoints(centroids, np.zeros((3, 5), bool)) == 1).all()


def synthesis_config(**changes):
    ins_seg = {"bg_threshold": 0.25, "centroid_iterations": 50, "cluster_threshold": 2.5,
               "min_area_fraction": 0.01, "clustering": "weak_region", "exp_times": -1, "score": "peak"}
    walk = {"radius": 3, "beta": 10.0, "exp_times": 3, "tolerance": 0.0}
    return {"ins_seg": ins_seg | changes, "random_walk": walk}


def test_synthesize_instances_is_the_paper_composition():
    # The reference path (weak regions, the walk's own exp_times), step by step.
    from wsis.algorithms.random_walk import random_walk
    rng = np.random.default_rng(3)
    field, _ = two_centre_field(12, 16, ((6, 4), (6, 11)))
    cams = rng.random((2, 12, 16)).astype(np.float32)
    boundary = (rng.random((12, 16)) * 0.3).astype(np.float32)
    centroids = find_centroids(field, 50)
    instance_map = cluster_instances(field, centroids, 2.5)
    walked = random_walk(instance_seeds(cams, instance_map), boundary, 3, 10.0, 3, 0.0)
    scores = upsample_normalised(walked, (45, 62))
    expected = detections(scores, [1, 4], int(instance_map.max()), 0.25, 0.01)
    got = synthesize_instances(cams, [1, 4], boundary, field, synthesis_config(), "cpu", (45, 62))
    for a, b in zip(got, expected + (scores, instance_map, centroids)):
        np.testing.assert_array_equal(a, b)
    # exp_times 3 on the instance side is the same walk; 1 is a different one
    same = synthesize_instances(cams, [1, 4], boundary, field, synthesis_config(exp_times=3), "cpu", (45, 62))
    np.testing.assert_array_equal(same.score_maps, scores)
    shorter = synthesize_instances(cams, [1, 4], boundary, field, synthesis_config(exp_times=1), "cpu", (45, 62))
    assert not np.allclose(shorter.score_maps, scores)
    # ins_seg.score reaches the detections: the same masks, scored by their mean
    mean = synthesize_instances(cams, [1, 4], boundary, field, synthesis_config(score="mean"), "cpu", (45, 62))
    np.testing.assert_array_equal(mean.instances, got.instances)
    np.testing.assert_array_equal(mean.scores, detections(scores, [1, 4], int(instance_map.max()), 0.25, 0.01, "mean")[2])
    assert not np.allclose(mean.scores, got.scores)


def test_synthesize_instances_with_endpoint_clusters():
    # the two-object row of the test above, with CAMs foreground everywhere: the end-point
    # clusters are the objects, whereas the weak region is one cluster
    ys, xs = np.mgrid[0:5, 0:10]
    field = np.stack([2 - ys, np.where(xs < 5, 2, 7) - xs]).astype(float)
    cams = np.ones((1, 5, 10), np.float32)
    boundary = np.zeros((5, 10), np.float32)
    weak = synthesize_instances(cams, [0], boundary, field, synthesis_config(), "cpu", (20, 40))
    ends = synthesize_instances(cams, [0], boundary, field, synthesis_config(clustering="endpoints"), "cpu", (20, 40))
    assert weak.clusters.max() == 1
    np.testing.assert_array_equal(ends.clusters, np.where(xs < 5, 1, 2))
    np.testing.assert_array_equal(ends.clusters, cluster_endpoints(ends.centroids, cams[0] > 0.25))
