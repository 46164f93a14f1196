"""Atomic file output and checked image input.

Every output is written to a temporary file in the destination directory and renamed into
place, so a run killed at any instant leaves either the old file, the new file, or a stray
``*.tmp-*`` file that readers ignore - never a truncated file that a rerun would trust.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError, DiskFullError

TMP_MARK = ".tmp-"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success, fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + TMP_MARK, dir=path.parent)
    except OSError as e:
        raise _disk_full(path, e) or e
    tmp_path = Path(tmp)
    try:
        try:   # mkstemp creates the file 0600; an output gets the mode open() would give it
            os.fchmod(fd, 0o666 & ~current_umask())
        finally:
            os.close(fd)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as e:
        # torch.save reports a full disk as a RuntimeError ("file write failed"), so the
        # free space decides; checked before the partial file is deleted.
        full = _disk_full(path, e, tmp_path)
        if full is None:
            raise
        raise full from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux's
    /proc/self/status); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_full(path: Path, error: BaseException, tmp: Path | None = None) -> DiskFullError | None:
    """A ``DiskFullError`` if ``error`` came from a full file system, else None."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = -1
    if getattr(error, "errno", None) not in (errno.ENOSPC, errno.EDQUOT) and not (
            isinstance(error, RuntimeError) and 0 <= free < 1 << 20):
        return None
    written = tmp.stat().st_size if tmp is not None and tmp.exists() else 0
    return DiskFullError(path, written, max(free, 0))


def write_bytes(path, data: bytes) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except DiskFullError as e:
        raise DiskFullError(path, len(data), e.free) from None


def link_file(src, dst) -> None:
    """``dst`` becomes the file ``src`` (a hard link: no copy; a copy where the file system
    has none), replaced atomically."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + TMP_MARK + "link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        write_bytes(dst, Path(src).read_bytes())
        return
    os.replace(tmp, dst)


def write_json(path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path) -> Any:
    with open(path) as f:
        return json.load(f)


def read_json_or_none(path) -> Any:
    """A JSON file's content, or None when it is missing, truncated or not JSON (a cache
    file that cannot be read is treated as absent)."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError):   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


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
        with open_image(path) as img:
            if img.mode not in ("P", "L"):
                raise DataError(f"{path}: expected a palette or greyscale label PNG, got mode {img.mode}")
            return np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot read label image ({e})") from None


def write_uint16_png(path, array: np.ndarray) -> None:
    """Write a (H, W) uint16 map (an instance map) as a 16-bit greyscale PNG, values exact;
    the folder is made if needed."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16)).save(buf, format="PNG")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buf.getvalue())


def read_uint16_png(path) -> np.ndarray:
    """Read what ``write_uint16_png`` wrote, as uint16."""
    path = Path(path)
    try:
        with open_image(path) as img:
            if img.mode not in ("I;16", "I", "L"):
                raise DataError(f"{path}: expected a 16-bit greyscale PNG, got mode {img.mode}")
            return np.array(img).astype(np.uint16)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot read instance map ({e})") from None


# PIL's own limit, which it enforces with a warning above it and an exception at twice it; wsis
# enforces ``data.max_pixels`` (default: the same) itself in ``open_image``, with a one-line error
# naming the file, so PIL's check is off. Every image wsis reads is opened by ``open_image``.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
Image.MAX_IMAGE_PIXELS = None


@contextmanager
def open_image(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """``Image.open`` (header only) refusing an image of more than ``max_pixels`` pixels before
    it is decoded: a small PNG can declare 20000 x 10000 pixels and take gigabytes to decode."""
    with Image.open(path) as img:
        if max_pixels and img.width * img.height > max_pixels:
            raise DataError(f"{path}: {img.width}x{img.height} = {img.width * img.height} pixels, over "
                            f"data.max_pixels = {max_pixels} (a decompression bomb? raise data.max_pixels "
                            f"if the image is genuine)")
        yield img


EXIF_ORIENTATION = 0x0112
SWAPS_AXES = {5, 6, 7, 8}     # EXIF orientations that rotate by 90 degrees


def processing_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) with the long side at most ``max_side`` (0: unchanged), aspect ratio kept."""
    if max_side <= 0 or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_image_size(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) as displayed, i.e. after the EXIF orientation, from the header only."""
    path = Path(path)
    try:
        with open_image(path, max_pixels) as img:
            w, h = img.size
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: image is listed but missing") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt image ({e})") from None
    return (w, h) if orientation in SWAPS_AXES else (h, w)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, 8 bits per channel. 16-bit greyscale (PNG "I;16*", or "I") is scaled by 255/65535:
    Pillow's own conversion clips it at 255, which turns most images all white."""
    if img.mode.startswith("I"):
        values = np.asarray(img).astype(np.float64)
        grey = np.clip(np.round(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode == "F":     # floating point: assume 0..1
        grey = np.clip(np.round(np.asarray(img) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return img.convert("RGB")


def read_rgb(path, max_side: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image fully as HxWx3 uint8, with a one-line error naming the file.

    The EXIF orientation is applied (as every viewer does), so masks line up with the image the
    user sees. ``max_side`` > 0 downscales (antialiased) so the long side is at most that.
    An image of more than ``max_pixels`` pixels is refused before decoding."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image is listed but missing")
    try:
        with open_image(path, max_pixels) as img:
            if max_side > 0 and img.format == "JPEG":
                # decode at a reduced DCT scale, still at least the target size: much faster
                h, w = processing_size(img.height, img.width, max_side)
                img.draft("RGB", (w, h))
            img.load()  # force a full decode: truncated files fail here, not later
            img = _to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt image ({e})") from None
    h, w = processing_size(img.height, img.width, max_side)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), Image.BILINEAR)   # Pillow's downscale filter is antialiased
    return np.array(img)


HASH_SPAN = 1 << 20


def quick_hash(path) -> str:
    """A cheap content hash: sha256 of the size, the first and the last MiB. It tells a
    truncated, zero-filled or replaced model file from the one recorded, without reading
    hundreds of MB on every ``status``."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(HASH_SPAN))
        if size > HASH_SPAN:
            f.seek(max(HASH_SPAN, size - HASH_SPAN))
            h.update(f.read(HASH_SPAN))
    return h.hexdigest()[:16]


def file_sha256(path) -> str:
    """sha256 of a whole file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def unreadable_reason(path) -> str | None:
    """Why an output file cannot be what its suffix says, from a cheap structural check (a
    few small reads): ``.npz``/``.pt`` need a zip central directory listing members, ``.png``
    its signature and final IEND chunk. None when it looks whole (other suffixes: exists)."""
    path = Path(path)
    try:
        if path.suffix in (".npz", ".pt"):
            with zipfile.ZipFile(path) as z:
                if not z.namelist():
                    return "empty zip archive"
        elif path.suffix == ".png":
            with open(path, "rb") as f:
                head = f.read(8)
                f.seek(max(0, path.stat().st_size - len(PNG_END)))
                tail = f.read()
            if head != PNG_SIGNATURE:
                return "not a PNG"
            if tail != PNG_END:
                return "PNG is truncated (no IEND)"
        elif not path.is_file():
            return "missing"
    except FileNotFoundError:
        return "missing"
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        return f"unreadable ({e})"
    return None


def remove_stray_temps(directory: Path) -> None:
    """Delete temporary files left by a killed writer."""
    if directory.is_dir():
        for p in directory.iterdir():
            if TMP_MARK in p.name:
                p.unlink(missing_ok=True)
