"""The Segment Anything Model (Kirillov et al., ICCV 2023) through Meta's ``segment-anything``
package: building it from a checkpoint, encoding an image, decoding a batch of prompts.

Why that package (``pip install 'wsis[sam]'``) and not ``transformers``' SamModel: it is pure
PyTorch with no dependencies of its own (transformers would bring huggingface_hub, tokenizers,
safetensors, regex, ... for one vision model); it is the paper's own code, with its exact
ResizeLongestSide(1024) + pad transform; and its checkpoints are single .pth files, which suits
offline use from a local file.

``sam.checkpoint`` is a local .pth file or one of the names of Meta's released checkpoints
(``CHECKPOINT_URLS``), downloaded once into torch's hub cache. A file holds either an official
state dict (architecture from ``sam.model_type``, or from the width of its patch embedding) or
a dict ``{"architecture": {...}, "model": state_dict}`` written by ``save_sam`` for another
size, such as ``tiny_sam`` in the tests.
"""

from __future__ import annotations

import fcntl
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, WsisError
from ..schema import SAM_MODEL_TYPES, SAM_PACKAGE_MISSING
from .backbone import download_failed, load_weights_file

# Meta's released checkpoints (github.com/facebookresearch/segment-anything, "Model Checkpoints")
CHECKPOINT_URLS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}

# The released architectures (the paper's ViT-B/L/H image encoders; the prompt encoder and
# mask decoder are the same for all three).
_COMMON = dict(image_size=1024, patch_size=16, window_size=14, prompt_dim=256, decoder_mlp_dim=2048,
               decoder_heads=8, iou_hidden_dim=256, mask_in_chans=16)
ARCHITECTURES = {
    "vit_b": dict(_COMMON, encoder_dim=768, encoder_depth=12, encoder_heads=12, global_attention=[2, 5, 8, 11]),
    "vit_l": dict(_COMMON, encoder_dim=1024, encoder_depth=24, encoder_heads=16, global_attention=[5, 11, 17, 23]),
    "vit_h": dict(_COMMON, encoder_dim=1280, encoder_depth=32, encoder_heads=16, global_attention=[7, 15, 23, 31]),
}
PATCH_EMBED = "image_encoder.patch_embed.proj.weight"
DECODER_BATCH = 16    # prompts per decoder call: the upsampled candidates are (B, 3, H, W) float


def require_package():
    try:
        import segment_anything
    except ImportError:
        raise ConfigError(SAM_PACKAGE_MISSING) from None
    return segment_anything


def build_sam(architecture: dict):
    """A SAM with random weights, in eval mode, of the given architecture (``ARCHITECTURES``)."""
    require_package()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    a = architecture
    grid = a["image_size"] // a["patch_size"]
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=a["image_size"], patch_size=a["patch_size"], embed_dim=a["encoder_dim"],
            depth=a["encoder_depth"], num_heads=a["encoder_heads"], mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=list(a["global_attention"]), window_size=a["window_size"], out_chans=a["prompt_dim"]),
        prompt_encoder=PromptEncoder(embed_dim=a["prompt_dim"], image_embedding_size=(grid, grid),
                                     input_image_size=(a["image_size"], a["image_size"]),
                                     mask_in_chans=a["mask_in_chans"]),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=a["prompt_dim"], mlp_dim=a["decoder_mlp_dim"],
                                          num_heads=a["decoder_heads"]),
            transformer_dim=a["prompt_dim"], iou_head_depth=3, iou_head_hidden_dim=a["iou_hidden_dim"]),
    )
    return model.eval()


TINY = dict(image_size=128, patch_size=16, window_size=4, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2,
            iou_hidden_dim=32, mask_in_chans=4, encoder_dim=32, encoder_depth=2, encoder_heads=2,
            global_attention=[1])


def tiny_sam(seed: int = 0):
    """A SAM of a few layers and small widths with random weights (tests, no download):
    (model, architecture)."""
    torch.manual_seed(seed)
    return build_sam(TINY), dict(TINY)


def save_sam(model, architecture: dict, path: Path) -> None:
    """A checkpoint that carries its own architecture (for sizes other than Meta's)."""
    import io

    from ..io import write_bytes
    buffer = io.BytesIO()
    torch.save({"architecture": dict(architecture), "model": model.state_dict()}, buffer)
    write_bytes(path, buffer.getvalue())


def checkpoint_state(checkpoint: str) -> tuple[dict, str | None]:
    """(state dict or self-describing checkpoint, the name when a released one was named)."""
    path = Path(checkpoint).expanduser()
    if path.is_file():       # as the stage fingerprint decides: an existing file is a file
        return load_weights_file(path), None
    if checkpoint not in CHECKPOINT_URLS:
        raise ConfigError(f"sam.checkpoint: {checkpoint}: file not found "
                          f"(use {', '.join(CHECKPOINT_URLS)} or a local .pth path)")
    url = CHECKPOINT_URLS[checkpoint]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # every Dask worker loads the model: one downloads, the others wait and read the cache
        with open(cache / f".{checkpoint}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True)
    except Exception as e:   # urllib/socket/SSL errors all mean: could not download
        raise download_failed(f"the SAM checkpoint {checkpoint}", url, e, "sam.checkpoint") from None
    return state, checkpoint


def architecture_of(state, checkpoint: str, model_type: str = "", name: str | None = None) -> tuple[dict, dict]:
    """(architecture, state dict) of a loaded checkpoint: its own architecture when it carries
    one; else ``model_type``, the released name it was downloaded by, or the released model
    whose image encoder has the width of its patch embedding (768 B, 1024 L, 1280 H)."""
    if isinstance(state, dict) and "architecture" in state and "model" in state:
        return state["architecture"], state["model"]
    if not isinstance(state, dict) or PATCH_EMBED not in state:
        raise WsisError(f"{checkpoint}: not a SAM checkpoint (no {PATCH_EMBED})")
    width = state[PATCH_EMBED].shape[0]
    found = next((t for t, a in ARCHITECTURES.items() if a["encoder_dim"] == width), None)
    model_type = model_type or name or found
    if model_type not in SAM_MODEL_TYPES:
        raise WsisError(f"{checkpoint}: image encoder width {width} is none of SAM's ViT-B/L/H; set sam.model_type")
    return ARCHITECTURES[model_type], state


def load_sam(checkpoint: str, model_type: str = "", device: str = "cpu"):
    """The model of ``sam.checkpoint`` on ``device``, in eval mode."""
    require_package()
    state, name = checkpoint_state(checkpoint)
    architecture, state = architecture_of(state, checkpoint, model_type, name)
    model = build_sam(architecture)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise WsisError(f"{checkpoint}: does not fit SAM with a {architecture['encoder_dim']}-wide, "
                        f"{architecture['encoder_depth']}-block image encoder "
                        f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    return model.to(device)


@torch.no_grad()
def encode_image(model, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """The image embedding (1, C, g, g) of an RGB uint8 image (H, W, 3), resized with SAM's
    own ResizeLongestSide, normalised and padded by the model; and the resized (h, w)."""
    from segment_anything.utils.transforms import ResizeLongestSide
    resized = ResizeLongestSide(model.image_encoder.img_size).apply_image(image)
    x = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None].float()
    return model.image_encoder(model.preprocess(x)), resized.shape[:2]


@torch.no_grad()
def decode_masks(model, embedding: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int],
                 boxes: np.ndarray, points: np.ndarray | None, labels: np.ndarray | None,
                 mask_logits: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """SAM's three candidate masks per prompt: (N, 3, H, W) bool at the original size and
    their predicted IoU (N, 3). Prompts are in the model's frame (``sam_prompts.to_model_frame``),
    ``DECODER_BATCH`` at a time."""
    device = model.device
    masks, ious = [], []
    for start in range(0, len(boxes), DECODER_BATCH):
        part = slice(start, start + DECODER_BATCH)
        pts = None
        if points is not None and points.shape[1] > 0:
            pts = (torch.as_tensor(points[part], dtype=torch.float32, device=device),
                   torch.as_tensor(labels[part], dtype=torch.int64, device=device))
        dense_in = None if mask_logits is None else torch.as_tensor(mask_logits[part], device=device)
        sparse, dense = model.prompt_encoder(points=pts, boxes=torch.as_tensor(boxes[part], dtype=torch.float32,
                                                                                device=device), masks=dense_in)
        low_res, iou = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=True)
        up = model.postprocess_masks(low_res, input_size, original_size)
        masks.append((up > model.mask_threshold).cpu().numpy())
        ious.append(iou.float().cpu().numpy())
    return np.concatenate(masks), np.concatenate(ious)
