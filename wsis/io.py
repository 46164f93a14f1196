"""Atomic file output and checked image input.

Every output is written to a temporary file in the destination directory and renamed into
place, so a run killed at any instant leaves either the old file, the new file, or a stray
``*.tmp-*`` file that readers ignore - never a truncated file that a rerun would trust.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

TMP_MARK = ".tmp-"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success, fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + TMP_MARK, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_npz(path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def read_npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# VOC palette: colour of label i is given by the bits of i spread over R, G, B.
def voc_palette() -> list[int]:
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_label_png(path, label: np.ndarray) -> None:
    """Write a uint8 label map as a VOC-palette PNG (values are kept exactly)."""
    img = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def read_label_png(path) -> np.ndarray:
    """Read a palette (or grey) PNG as its raw uint8 indices."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label image is missing")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DataError(f"{path}: expected a palette or greyscale label PNG, got mode {img.mode}")
            return np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot read label image ({e})") from None


def read_rgb(path) -> np.ndarray:
    """Decode an image fully as HxWx3 uint8, with a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image is listed but missing")
    try:
        with Image.open(path) as img:
            img.load()  # force a full decode: truncated files fail here, not later
            return np.array(img.convert("RGB"))
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt image ({e})") from None


def remove_stray_temps(directory: Path) -> None:
    """Delete temporary files left by a killed writer."""
    if directory.is_dir():
        for p in directory.iterdir():
            if TMP_MARK in p.name:
                p.unlink(missing_ok=True)
