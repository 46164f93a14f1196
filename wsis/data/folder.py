"""A folder of the user's own images with a labels CSV; no masks.

Each line of the CSV is ``file name, class, class...``; class names may be separated by commas
or semicolons. An optional first line ``file,labels`` (or ``filename``/``image``) is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataError
from .base import Dataset, safe_id

HEADER_WORDS = {"file", "filename", "file_name", "image", "image_name"}


class FolderDataset(Dataset):
    files: dict[str, str]

    def image_path(self, image_id: str) -> Path:
        return self.root / self.files[image_id]


def parse_labels_csv(path: Path) -> list[tuple[int, str, list[str]]]:
    if not path.is_file():
        raise DataError(f"{path}: labels CSV not found; pass --labels labels.csv")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in re.split(r"[,;]", line)]
        if lineno == 1 and fields[0].lower() in HEADER_WORDS:
            continue
        names = [f for f in fields[1:] if f]
        if not fields[0]:
            raise DataError(f"{path} line {lineno}: empty file name")
        if not names:
            raise DataError(f"{path} line {lineno}: no class names after the file name '{fields[0]}'")
        rows.append((lineno, fields[0], names))
    if not rows:
        raise DataError(f"{path}: no labelled images (empty split)")
    return rows


def open_folder(root: Path, labels_csv: Path, class_names: list[str]) -> FolderDataset:
    root, labels_csv = Path(root), Path(labels_csv)
    if not root.is_dir():
        raise DataError(f"{root}: image directory not found; pass --data-root IMAGES")
    rows = parse_labels_csv(labels_csv)
    names = list(class_names) or sorted({n for _, _, ns in rows for n in ns})
    index = {n: i for i, n in enumerate(names)}
    ds = FolderDataset("folder", root, tuple(names), {}, {}, has_masks=False)
    ds.files = {}
    for lineno, fname, ns in rows:
        for n in ns:
            if n not in index:
                raise DataError(f"{labels_csv} line {lineno}: unknown class '{n}'")
        key = safe_id(fname)
        if key in ds.files:
            raise DataError(f"{labels_csv} line {lineno}: '{fname}' is listed twice")
        ds.files[key] = fname
        ds.labels[key] = tuple(sorted({index[n] for n in ns}))
    ds.splits["all"] = tuple(ds.files)
    ds.check_images_exist(ds.splits["all"])
    return ds
