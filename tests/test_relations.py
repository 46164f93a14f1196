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


def three_regions(scale: int = 1):
    """Grey background | green unsure band | blue object (CAM 1.0), ``scale`` times 40 x 60."""
    img = np.zeros((40 * scale, 60 * scale, 3), np.uint8)
    img[:, :20 * scale] = (120, 120, 120)
    img[:, 20 * scale:40 * scale] = (30, 160, 30)
    img[:, 40 * scale:] = (30, 30, 200)
    cam = np.zeros((1,) + img.shape[:2], np.float32)
    cam[0, :, 40 * scale:] = 1.0
    cam[0, :, 20 * scale:40 * scale] = 0.15
    return img, cam


def test_half_size_crf_gives_full_size_labels_that_agree_with_the_full_size_crf():
    img, cam = three_regions(scale=2)                   # 80 x 120: the CRF runs on 40 x 60
    full = relation_labels(img, cam, [4])
    half = relation_labels(img, cam, [4], crf_scale=0.5)
    assert half.shape == full.shape == (80, 120) and half.dtype == np.uint8
    assert (half[:, 84:] == 5).all() and (half[:, :36] == 0).all() and (half[:, 44:76] == IGNORE).all()
    # they may differ only within a pixel or two of the region edges (x = 40, 80)
    differ = np.nonzero(half != full)[1]
    assert all(min(abs(x - 40), abs(x - 80)) <= 2 for x in differ)


def test_crf_kernels_keep_their_width_in_full_size_pixels():
    """At pixel_scale 0.5 the CRF on the half-size image uses kernels of half the pixel width:
    the same as pydensecrf with sxy halved (the dense reference)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (30, 50, 3), np.uint8)
    labels = rng.integers(0, 2, (30, 50))
    (got,) = crf_refine_labels(img, [labels], 2, iterations=4, pixel_scale=0.5)
    crf = dcrf.DenseCRF2D(50, 30, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_labels(labels, 2, gt_prob=0.7, zero_unsure=False)))
    crf.addPairwiseGaussian(sxy=1.5, compat=3)
    crf.addPairwiseBilateral(sxy=25, srgb=5, rgbim=np.ascontiguousarray(img), compat=10)
    np.testing.assert_array_equal(got, np.argmax(np.array(crf.inference(4)).reshape(2, 30, 50), axis=0))


def test_crf_scale_outside_zero_to_one_is_refused():
    import pytest
    img, cam = three_regions()
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="crf_scale"):
            relation_labels(img, cam, [4], crf_scale=bad)
