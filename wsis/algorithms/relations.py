"""Relation mining: CAMs -> inter-pixel relation labels with a dense CRF (Ahn et al. 2019, step 3).

Two CRF-refined maps are made from the full-resolution CAMs: one with a high background score
(conf_fg_thres, only confident foreground survives) and one with a low one (conf_bg_thres, only
confident background survives). Foreground comes from the first, background from pixels both
call background, and everything else is 255 (no relation is learned there).

``crf_scale`` < 1 runs the CRF on the image and CAMs shrunk by that factor (its kernels' pixel
widths shrunk alike, so they cover the same part of the image) and enlarges the result back
(nearest). The CRF's cost goes with the pixels: 0.5 is about a quarter of it. IRNet learns its
relations at a quarter of the image's resolution (stride 4), coarser than a half-size CRF.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .sam_prompts import resample_nearest

IGNORE = 255


def crf_refine_labels(image: np.ndarray, label_maps: list[np.ndarray], n_labels: int, gt_prob: float = 0.7,
                      iterations: int = 10, gauss_sxy: float = 3, gauss_compat: float = 3,
                      bilateral_sxy: float = 50, bilateral_srgb: float = 5,
                      bilateral_compat: float = 10, pixel_scale: float = 1.0) -> list[np.ndarray]:
    """Each hard label map of ``image`` refined by a dense CRF (unary from its labels with
    confidence ``gt_prob``). The kernels' widths ``*_sxy`` are in pixels of the full-size
    image, of which ``image`` is ``pixel_scale`` times the size.

    The pairwise terms depend on the image alone, so they are built once for all the maps (the
    bilateral one is a third of a CRF's cost); mean-field inference starts afresh from each
    map's unary, so each result is the one a CRF of its own would give. Defaults are the
    reference code's: Gaussian sxy 3 compat 3, bilateral sxy 50 srgb 5 compat 10, 10
    mean-field iterations."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels
    h, w = image.shape[:2]
    if n_labels < 2:
        return [np.zeros((h, w), np.int64) for _ in label_maps]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.addPairwiseGaussian(sxy=gauss_sxy * pixel_scale, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy * pixel_scale, srgb=bilateral_srgb,
                             rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=bilateral_compat)
    refined = []
    for labels in label_maps:
        crf.setUnaryEnergy(np.ascontiguousarray(unary_from_labels(labels, n_labels, gt_prob=gt_prob,
                                                                  zero_unsure=False)))
        refined.append(np.argmax(np.array(crf.inference(iterations)).reshape(n_labels, h, w), axis=0))
    return refined


def confident_labels(image: np.ndarray, cams: np.ndarray, classes, bg_scores, crf_scale: float = 1.0,
                     **crf) -> list[np.ndarray]:
    """For each background score: argmax of [bg_score, cams], CRF-refined (at ``crf_scale``
    of the image's size, see the module's note), as labels 0 (background) / c + 1 at the
    image's size."""
    if not 0 < crf_scale <= 1:
        raise ValueError(f"crf_scale {crf_scale}: expected a factor in (0, 1]")
    lut = np.array([0] + [c + 1 for c in classes], np.uint8)
    full = image.shape[:2]
    cams = cams.astype(np.float32)
    if crf_scale < 1:
        size = (max(1, round(full[1] * crf_scale)), max(1, round(full[0] * crf_scale)))   # PIL: (w, h)
        image = np.array(Image.fromarray(np.ascontiguousarray(image, np.uint8)).resize(size, Image.BILINEAR))
        cams = np.stack([np.asarray(Image.fromarray(cam, mode="F").resize(size, Image.BILINEAR)) for cam in cams]
                        ) if len(cams) else np.zeros((0, size[1], size[0]), np.float32)
    h, w = image.shape[:2]
    maps = [np.concatenate([np.full((1, h, w), bg, np.float32), cams]).argmax(0) for bg in bg_scores]
    refined = crf_refine_labels(image, maps, len(lut), pixel_scale=min(h / full[0], w / full[1]), **crf)
    return [lut[resample_nearest(r, full) if (h, w) != full else r] for r in refined]


def relation_labels(image: np.ndarray, cams: np.ndarray, classes, fg_thres: float = 0.30,
                    bg_thres: float = 0.05, crf_scale: float = 1.0, **crf) -> np.ndarray:
    """uint8 map: 0 confident background, c + 1 confident class c, 255 unsure."""
    fg, bg = confident_labels(image, cams, classes, (fg_thres, bg_thres), crf_scale, **crf)
    out = fg.copy()
    out[fg == 0] = IGNORE
    out[(fg == 0) & (bg == 0)] = 0
    return out
