import numpy as np

from wsis.algorithms.relations import IGNORE, crf_refine_labels, relation_labels


def two_region_image():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = (200, 30, 30)
    img[:, 30:] = (30, 30, 200)
    return img


def test_crf_snaps_labels_to_colour_edges():
    img = two_region_image()
    labels = np.zeros((40, 60), np.int64)
    labels[:, 26:] = 1                       # boundary off by 4 pixels
    noisy = labels.copy()
    noisy[5:8, 40:43] = 0                    # a speck of wrong label
    (out,) = crf_refine_labels(img, [noisy], 2)
    assert (out[:, :28] == 0).mean() > 0.95 and (out[:, 32:] == 1).all()


def test_relation_labels_three_way_split():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :20] = (120, 120, 120)
    img[:, 20:40] = (30, 160, 30)
    img[:, 40:] = (30, 30, 200)
    cam = np.zeros((1, 40, 60), np.float32)
    cam[0, :, 40:] = 1.0     # above conf_fg_thres: confident class 4
    cam[0, :, 20:40] = 0.15  # between the thresholds: unsure
    out = relation_labels(img, cam, [4])
    assert set(np.unique(out)) <= {0, 5, IGNORE}
    assert (out[:, 42:] == 5).all()
    assert (out[:, :18] == 0).all()
    assert (out[:, 22:38] == IGNORE).all()


def test_no_classes_is_all_background():
    img = two_region_image()
    out = relation_labels(img, np.zeros((0, 40, 60), np.float32), [])
    assert out.dtype == np.uint8 and (out == 0).all()


def test_maps_refined_together_equal_each_refined_by_its_own_crf():
    """The pairwise terms are shared between the maps of one image; each result must still be
    what a CRF built for that map alone (pydensecrf directly, the reference's recipe) gives."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 50, 3), np.uint8)
    img[:, 25:] //= 3
    maps = [rng.integers(0, 3, (30, 50)), np.repeat(np.arange(50)[None] * 3 // 50, 30, 0)]
    together = crf_refine_labels(img, maps, 3, gt_prob=0.7, iterations=5)
    for labels, got in zip(maps, together):
        crf = dcrf.DenseCRF2D(50, 30, 3)
        crf.setUnaryEnergy(np.ascontiguousarray(unary_from_labels(labels, 3, gt_prob=0.7, zero_unsure=False)))
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(img), compat=10)
        alone = np.argmax(np.array(crf.inference(5)).reshape(3, 30, 50), axis=0)
        np.testing.assert_array_equal(got, alone)
    assert not np.array_equal(together[0], together[1])
