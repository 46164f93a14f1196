"""Ground-truth-derived ideal inputs ("oracles") for the instance synthesis
(wsis.algorithms.instances.synthesize_instances).

Each oracle stands in for one upstream output of the pipeline, on the grid that output lives
on: the stride-4 grid ceil(H/4) x ceil(W/4) of the processing-size image (H, W) for the CAMs,
the boundary map and the displacement field, and the full processing size for the relation
labels. Cell (i, j) of the grid covers pixels [4i, 4i + 4) x [4j, 4j + 4) (as train_irn's
``labels[::4, ::4]`` and the x4 upsampling of ``upsample_normalised`` place it); a cell takes
the ground-truth instance (or background) covering most of its pixels, and all grid oracles
are read from that one map, so they agree cell by cell.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..algorithms.relations import IGNORE
from ..io import processing_size

STRIDE = 4

# The relation labels' 255 band. relation_labels has no band width of its own: the band is
# where the two CRF passes (ir_label.fg_thres / bg_thres) disagree. Measured on the synthetic
# default's cached ir_label (60 train images): 1.4 ignored pixels per ground-truth boundary
# pixel, their median distance to that boundary 1.4 px. The nearest whole width is one pixel
# on each side of a label change: every pixel with a 4-neighbour of another label.
RELATION_BAND = 1


def grid_shape(height: int, width: int) -> tuple[int, int]:
    """The stride-4 grid of an (height, width) image: make_cam's ``cam`` and irn_infer's maps."""
    return -(-height // STRIDE), -(-width // STRIDE)


def instance_map(masks: np.ndarray) -> np.ndarray:
    """(H, W) int32: 0 background, n on the pixels of masks[n - 1] (a later mask wins where
    masks overlap)."""
    out = np.zeros(masks.shape[1:], np.int32)
    for n, m in enumerate(masks, start=1):
        out[m] = n
    return out


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map (H, W) resized to ``size`` (h, w) by nearest neighbour; unchanged if equal."""
    if label.shape == tuple(size):
        return label
    img = Image.fromarray(label.astype(np.int32), mode="I")
    return np.asarray(img.resize((size[1], size[0]), Image.NEAREST)).astype(label.dtype)


def processing_ground_truth(dataset, image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instance map (H, W), instance classes (N,), semantic labels (H, W)) at the image's
    processing size (``data.max_side``), where the CAMs and IRNet outputs are computed."""
    gt = dataset.instance_gt(image_id)
    semantic = dataset.semantic_gt(image_id)
    size = processing_size(*semantic.shape, dataset.max_side)
    return (resize_nearest(instance_map(gt.masks), size), np.asarray(gt.classes, np.int64),
            resize_nearest(semantic, size))


def grid_instances(ids: np.ndarray) -> np.ndarray:
    """(h, w) int32: for each stride-4 cell, the id of ``ids`` (H, W; 0 background) covering
    most of the cell's pixels inside the image (ties: the lowest id, background first)."""
    height, width = ids.shape
    h, w = grid_shape(height, width)
    n = int(ids.max()) + 1
    padded = np.full((h * STRIDE, w * STRIDE), n, np.int64)     # n: outside the image, not counted
    padded[:height, :width] = ids
    blocks = padded.reshape(h, STRIDE, w, STRIDE).transpose(0, 2, 1, 3).reshape(h, w, -1)
    counts = (blocks[..., None] == np.arange(n)).sum(2)          # (h, w, n)
    return counts.argmax(2).astype(np.int32)


def oracle_cams(grid_ids: np.ndarray, instance_classes, cam_classes) -> np.ndarray:
    """(K, h, w) float32 CAMs: 1 on the cells of class ``cam_classes[k]``, 0 elsewhere, in the
    channel order of the cached CAMs (make_cam's ``classes``)."""
    lut = np.concatenate([[-1], np.asarray(instance_classes, np.int64)])
    cell_class = lut[grid_ids]
    return np.stack([cell_class == c for c in cam_classes]).astype(np.float32).reshape(
        len(cam_classes), *grid_ids.shape)


def oracle_boundary(grid_ids: np.ndarray) -> np.ndarray:
    """(h, w) float32: 1 on the cells that have a 4-neighbour with a higher id, 0 elsewhere.

    Every border between two instances, or between an instance and background, is marked
    one cell wide, on its background (or lower-numbered instance) side. One 4-connected or
    diagonal line of cells is enough to stop the walk: a path between two cells is every cell
    within distance < 1 of their segment, so no path crosses the line without touching it.
    Marking the outer side keeps each instance's own cells, since the walk zeroes the seeds on
    boundary cells (seeds x (1 - B))."""
    out = np.zeros(grid_ids.shape, bool)
    out[:-1] |= grid_ids[:-1] < grid_ids[1:]
    out[1:] |= grid_ids[1:] < grid_ids[:-1]
    out[:, :-1] |= grid_ids[:, :-1] < grid_ids[:, 1:]
    out[:, 1:] |= grid_ids[:, 1:] < grid_ids[:, :-1]
    return out.astype(np.float32)


def oracle_displacement(grid_ids: np.ndarray) -> np.ndarray:
    """(2, h, w) float32 in stride-4 cells, (dy, dx) as irn_infer's: on each instance cell, the
    vector to the centroid of its instance's cells (cell + D = centroid, the fixed point IRNet's
    fg-positive loss |D(i) - D(j) - (x_j - x_i)| trains towards); 0 on background (the
    bg-positive loss asks for a constant field there, which the mean shift centres at 0)."""
    h, w = grid_ids.shape
    n = int(grid_ids.max()) + 1
    flat = grid_ids.ravel()
    count = np.maximum(np.bincount(flat, minlength=n), 1)
    yy, xx = np.mgrid[0:h, 0:w]
    cy = np.bincount(flat, yy.ravel(), minlength=n) / count
    cx = np.bincount(flat, xx.ravel(), minlength=n) / count
    out = np.stack([cy[grid_ids] - yy, cx[grid_ids] - xx]).astype(np.float32)
    out[:, grid_ids == 0] = 0.0
    return out


def oracle_clusters(grid_ids: np.ndarray) -> np.ndarray:
    """(h, w) int class-agnostic instance map as ``cluster_instances`` makes it (every cell in
    one of 1..I): the ground-truth instances 1..N, and background as instance N + 1."""
    n = int(grid_ids.max())
    return np.where(grid_ids > 0, grid_ids, n + 1).astype(np.int64)


def oracle_relation_labels(semantic: np.ndarray, band: int = RELATION_BAND) -> np.ndarray:
    """(H, W) uint8 relation labels from the ground-truth semantic labels (0 background, c + 1
    class c, 255 void): 255 on every pixel within ``band`` pixels (4-neighbour steps: a
    diamond) of a pixel with another label, as ir_label's PNG."""
    if band <= 0:
        return semantic.astype(np.uint8)
    diamond = ndimage.generate_binary_structure(2, 1)
    footprint = ndimage.iterate_structure(diamond, band)
    mixed = ndimage.maximum_filter(semantic, footprint=footprint, mode="nearest") != \
        ndimage.minimum_filter(semantic, footprint=footprint, mode="nearest")
    out = semantic.astype(np.uint8)
    out[mixed] = IGNORE
    return out
