"""Diagnostic figures of one image's instance synthesis: the boundary map, the displacement
field as a colour wheel with arrows, the displacement clusters, and the detections against
the ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..predict import PALETTE
from ..report.gallery import instance_overlay
from ..report.plots import _pyplot, _save


def displacement_colours(displacement: np.ndarray, scale: float | None = None) -> np.ndarray:
    """(h, w, 3) uint8: hue = the direction of (dy, dx), value = its length / ``scale``
    (default: the longest vector), saturation 1. Zero vectors are black."""
    from matplotlib.colors import hsv_to_rgb
    dy, dx = displacement
    length = np.hypot(dy, dx)
    scale = float(length.max()) if scale is None else scale
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    value = np.clip(length / scale, 0, 1) if scale > 0 else np.zeros_like(length)
    return (hsv_to_rgb(np.stack([hue, np.ones_like(hue), value], -1)) * 255).astype(np.uint8)


def colour_wheel(size: int = 64) -> np.ndarray:
    """The legend of ``displacement_colours``: (size, size, 3), the vector from the centre to
    each pixel in the colour that vector gets."""
    r = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size] - r
    out = displacement_colours(np.stack([yy, xx]), r)
    out[np.hypot(yy, xx) > r] = 255
    return out


def cluster_colours(clusters: np.ndarray, centroid_region: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8: each cluster in its own colour, the cells it was grown from (the
    centroid region) darkened."""
    colours = np.asarray(PALETTE, np.float32)[(clusters - 1) % len(PALETTE)]
    colours[centroid_region] *= 0.45
    return colours.astype(np.uint8)


def diagnostic_figure(image: np.ndarray, boundary: np.ndarray, displacement: np.ndarray, synthesis,
                      gt, class_names, ins_seg: dict, title: str, path: Path,
                      arrows: bool = True) -> Path:
    """One row of five panels: the image with its ground truth; the boundary map; the
    displacement field (colour wheel, arrows every few cells); the clusters with their
    centroid regions dark and the centroids' end points as dots; the detections."""
    plt = _pyplot()
    h, w = boundary.shape
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)     # grid panels in cell coordinates
    axes[0].imshow(instance_overlay(image, gt.masks, gt.classes, [class_names[c] for c in gt.classes]))
    axes[0].set_title(f"ground truth ({len(gt.classes)})", fontsize=9)
    axes[1].imshow(boundary, cmap="gray", vmin=0, vmax=1, extent=extent)
    axes[1].set_title("boundary map", fontsize=9)
    axes[2].imshow(displacement_colours(displacement), extent=extent)
    if arrows:
        step = max(1, min(h, w) // 12)
        yy, xx = np.mgrid[0:h:step, 0:w:step]
        axes[2].quiver(xx, yy, displacement[1, ::step, ::step], displacement[0, ::step, ::step],
                       angles="xy", scale_units="xy", scale=1, color="white", width=0.004)
    inset = axes[2].inset_axes([0.78, 0.78, 0.2, 0.2])
    inset.imshow(colour_wheel())
    inset.axis("off")
    axes[2].set_title(f"displacement (max {np.hypot(*displacement).max():.1f} cells)", fontsize=9)
    ends = np.unique(synthesis.centroids.reshape(2, -1), axis=1)
    if ins_seg["clustering"] == "endpoints":     # clusters grow from the cells end points land on
        region = np.zeros((h, w), bool)
        region[ends[0], ends[1]] = True
        region_name = "end-point cells"
    else:
        region = np.hypot(displacement[0], displacement[1]) < ins_seg["cluster_threshold"]
        region_name = f"|D| < {ins_seg['cluster_threshold']:g}"
    axes[3].imshow(cluster_colours(synthesis.clusters, region), extent=extent)
    axes[3].scatter(ends[1], ends[0], s=6, c="white", edgecolors="black", linewidths=0.3)
    axes[3].set_title(f"clusters: {int(synthesis.clusters.max())} (dark: {region_name})", fontsize=9)
    keep = np.flatnonzero(synthesis.scores > 0)
    masks = synthesis.instances[None] == (keep + 1)[:, None, None]
    axes[4].imshow(instance_overlay(image, masks, synthesis.classes[keep],
                                    [class_names[c] for c in synthesis.classes[keep]]))
    axes[4].set_title(f"pseudo-instances ({len(keep)} with score > 0)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
