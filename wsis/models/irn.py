"""IRNet: boundary and displacement branches on a frozen backbone (Ahn et al., CVPR 2019, step 4)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..algorithms.affinity import path_max, shifted_targets
from ..algorithms.path_index import path_index
from .backbone import Backbone

IGNORE = 255
IGNORED, BG_POS, FG_POS, NEG = 0, 1, 2, 3   # kinds of pairs in the IRNet losses


def conv_gn_relu(cin: int, cout: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))


def crop_to_grid(x: torch.Tensor, image_size) -> torch.Tensor:
    """A stride-4 map cropped to the grid of an image of ``image_size`` (H, W): ceil(H/4) x ceil(W/4)."""
    return x[..., :-(-image_size[0] // 4), :-(-image_size[1] // 4)]


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    return x if x.shape[-2:] == tuple(size) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class IRNet(nn.Module):
    """Boundary map B and displacement field D at stride 4, from a frozen backbone.

    Boundary branch: each of the five backbone stages -> 1x1 conv to 32 ch + GroupNorm(4) + ReLU,
    resized to the stride-4 grid, concatenated (160 ch), 1x1 conv to 1 logit.
    Displacement branch: stages 3-5 -> 256 ch each, fused at stride 8 and brought to stride 4,
    concatenated with stages 1-2 reduced to 64 and 128 ch, then convs to 2 channels.
    The stride-4 grid is that of the first stage at stride 4 (a ResNet's stem; an
    EfficientNet-Lite's second stage, its first at stride 2 being resized down to it).
    """

    def __init__(self, backbone: Backbone, crop_size: int = 0):
        super().__init__()
        self.backbone = backbone
        self.crop_size = crop_size   # training crop; inference pads to it (0: no padding)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        ch = backbone.channels
        self.edge = nn.ModuleList([conv_gn_relu(c, 32, 4) for c in ch])
        self.edge_out = nn.Conv2d(32 * len(ch), 1, 1, bias=True)
        self.dp_low = nn.ModuleList([conv_gn_relu(ch[0], 64, 8), conv_gn_relu(ch[1], 128, 16)])
        self.dp_high = nn.ModuleList([conv_gn_relu(c, 256, 16) for c in ch[2:]])
        self.dp_fuse = conv_gn_relu(256 * 3, 256, 16)
        self.dp_out = nn.Sequential(conv_gn_relu(64 + 128 + 256, 256, 16), nn.Conv2d(256, 2, 1, bias=False))
        self.register_buffer("mean_displacement", torch.zeros(2))
        self.grid_stage = backbone.strides.index(4)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # fully frozen, BatchNorm included
        return self

    def forward(self, images: torch.Tensor, pad_to: int | None = None,
                crop_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in 0..255 -> boundary logits (B, 1, h, w), displacement (B, 2, h, w),
        h, w = ceil(H/4), ceil(W/4). Displacements are in stride-4 grid cells.

        ``pad_to``: zero-pad the normalised input (bottom and right) to at least pad_to x pad_to
        first, as the reference's ``EdgeDisplacement`` pads to its 512 training crop. GroupNorm
        then sees the same kind of canvas as in training, where crops are padded with the
        mean colour (zero after normalisation). The outputs are cropped back to the image's
        grid unless ``crop_output`` is false."""
        feats = self.features(images, pad_to)
        edge, disp = self.boundary_logits(feats), self.displacement(feats)
        if pad_to and crop_output:
            edge, disp = crop_to_grid(edge, images.shape[-2:]), crop_to_grid(disp, images.shape[-2:])
        return edge, disp

    def features(self, images: torch.Tensor, pad_to: int | None = None) -> list[torch.Tensor]:
        """The frozen backbone's five feature maps of ``images`` (normalised, then padded as
        ``forward`` says)."""
        return self.canvas_features(self.canvas(images, pad_to))

    def canvas(self, images: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
        """``images`` normalised, then zero-padded (bottom and right) to at least pad_to x pad_to:
        the backbone's input. Images of different sizes padded to one size stack into a batch."""
        x = self.backbone.normalize(images)
        h, w = x.shape[-2:]
        if pad_to:
            x = F.pad(x, (0, max(0, pad_to - w), 0, max(0, pad_to - h)))
        return x

    def canvas_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [f.detach() for f in self.backbone(x)]

    def boundary_logits(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[self.grid_stage].shape[-2:]
        return self.edge_out(torch.cat([resize_to(m(f), size) for m, f in zip(self.edge, feats)], dim=1))

    def displacement(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size, mid = feats[self.grid_stage].shape[-2:], feats[2].shape[-2:]
        high = torch.cat([resize_to(m(f), mid) for m, f in zip(self.dp_high, feats[2:])], dim=1)
        high = resize_to(self.dp_fuse(high), size)
        low = [resize_to(m(f), size) for m, f in zip(self.dp_low, feats[:2])]
        return self.dp_out(torch.cat(low + [high], dim=1))

    def trainable_groups(self):
        edge = list(self.edge.parameters()) + list(self.edge_out.parameters())
        dp = [p for n, p in self.named_parameters() if n.startswith("dp_")]
        return edge, dp


def irn_losses(boundary_logits: torch.Tensor, displacement: torch.Tensor, labels: torch.Tensor,
               radius: int) -> dict[str, torch.Tensor]:
    """The four IRNet losses from stride-4 relation labels (B, h, w) (0 bg, c fg, 255 ignore).

    Pairs less than ``radius`` apart with both labels valid are bg-positive (both 0),
    fg-positive (equal, > 0) or negative (different). With affinity a = 1 - max(B on the path):
    boundary loss = (pos + neg) / 2, pos = (mean -log a over bg-pos + same over fg-pos) / 2,
    neg = mean -log(1 - a) over negatives; displacement: fg-pos |D(i) - D(j) - (x_j - x_i)|_1,
    bg-pos |D(i) - D(j)|_1, each averaged over pairs and both coordinates.

    The pairs are sorted into four kinds (ignored, bg-positive, fg-positive, negative) once,
    and each loss is one full-size elementwise pass summed per kind with ``scatter_add``: one
    log over every pair (of a or of 1 - a, by kind) and one |difference| pass, instead of a
    mask multiplied over every (pair, direction) for each term.
    """
    boundary = torch.sigmoid(boundary_logits[:, 0])
    aff = 1.0 - path_max(boundary, radius)                           # (B, D, hs, ws)
    src, dst = shifted_targets(labels.to(torch.uint8), radius)      # labels are 0..C and 255
    src = src.unsqueeze(1)
    valid = (src != IGNORE) & (dst != IGNORE)
    differ = src != dst
    # bg-positive 1, fg-positive 2 (equal and > 0), negative 3, ignored 0
    kind = valid * (differ * NEG + ~differ * (BG_POS + (src > 0)))
    kind = kind.flatten().long()
    counts = torch.bincount(kind, minlength=4).to(aff.dtype) + 1e-5

    def mean_per_kind(values: torch.Tensor) -> torch.Tensor:
        """(4,) mean of ``values`` (one per pair) over the pairs of each kind."""
        return torch.zeros(4, dtype=values.dtype, device=values.device).scatter_add(0, kind, values.flatten()) / counts

    is_neg = (kind == NEG).view_as(aff)
    affinity_loss = -mean_per_kind(torch.log(torch.where(is_neg, (1.0 + 1e-5) - aff, aff + 1e-5)))
    bg_pos_loss, fg_pos_loss, neg_loss = affinity_loss[BG_POS], affinity_loss[FG_POS], affinity_loss[NEG]

    # |D(i) - D(j) - (x_j - x_i)| for fg-positive pairs, |D(i) - D(j)| for the others, summed
    # over the two coordinates; direction by direction, so no (B, 2, D, hs, ws) copy is made
    m, hs, ws = path_index(radius).margin, aff.shape[-2], aff.shape[-1]
    fg = (kind == FG_POS).view_as(aff).to(displacement.dtype)
    d_src = displacement[..., :hs, m:m + ws]

    def coordinate_error(c: int, k: int, dy: int, dx: int, step: int) -> torch.Tensor:
        diff = d_src[:, c] - displacement[:, c, dy:dy + hs, m + dx:m + dx + ws]
        return torch.abs(torch.sub(diff, fg[:, k], alpha=step) if step else diff)   # one fused kernel

    error = torch.stack([coordinate_error(0, k, dy, dx, dy) + coordinate_error(1, k, dy, dx, dx)
                         for k, (dy, dx) in enumerate(path_index(radius).directions.tolist())], dim=1)
    dp = mean_per_kind(error)
    dp_fg, dp_bg = dp[FG_POS] / 2, dp[BG_POS] / 2
    pos = (bg_pos_loss + fg_pos_loss) / 2
    return {"boundary": (pos + neg_loss) / 2, "displacement": (dp_fg + dp_bg) / 2,
            "bg_pos": bg_pos_loss, "fg_pos": fg_pos_loss, "neg": neg_loss, "dp_fg": dp_fg, "dp_bg": dp_bg}


def centroid_loss(displacement: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """|D - T|_1 averaged over the cells with a target and both coordinates: D (B, 2, h, w)
    against the displacement to each cell's instance centroid T (B, 2, h, w, stride-4 cells;
    NaN: no target), as given by reviewed instances; zero when no cell has a target."""
    valid = ~torch.isnan(targets[:, :1])
    n = valid.sum()
    if n == 0:
        return displacement.sum() * 0.0
    error = torch.abs(displacement - torch.nan_to_num(targets)) * valid
    return error.sum() / (2 * n)


@torch.no_grad()
def irn_inference(model: IRNet, image: np.ndarray, device: str = "cpu",
                  pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boundary map (h, w) in [0, 1] (averaged with the flipped image's) and mean-centred
    displacement field (2, h, w) at stride 4, for one HxWx3 uint8 image.

    ``pad_to`` (default: the model's training crop size, ``model.crop_size``): the input is
    zero-padded to it after normalisation, as in the reference's ``EdgeDisplacement`` (crop
    512); images larger than it are not cropped (the reference's padding breaks there)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    feats = model.features(torch.cat([x, x.flip(-1)]), pad_to=pad_to if pad_to is not None else model.crop_size)
    logits = crop_to_grid(model.boundary_logits(feats), image.shape[:2])
    boundary = torch.sigmoid(logits[0, 0] / 2 + logits[1, 0].flip(-1) / 2)
    # the reference keeps the unflipped image's displacement only, so only it is computed
    # (GroupNorm normalises each image alone: the same field as from the pair)
    disp = crop_to_grid(model.displacement([f[:1] for f in feats]), image.shape[:2])
    disp = disp[0] - model.mean_displacement.view(2, 1, 1)
    return boundary.cpu().numpy(), disp.cpu().numpy()
