"""A folder of the user's own images with a labels CSV; no masks.

Each row of the CSV is ``file name, class, class...``, read with Python's csv module (so quoted
fields work: ``a.jpg,"bowl, broccoli, orange"``). Within a field, class names may be separated
by commas or semicolons, and ``file;class;class`` rows are accepted too. An optional first row
``file,labels`` (or ``filename``/``image``) is skipped; a UTF-8 byte-order mark is ignored.
File names are relative to the image directory and may name sub-directories.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ..errors import DataError
from .base import Dataset, image_id_of

HEADER_WORDS = {"file", "filename", "file_name", "image", "image_name"}
# A class name is printable text without quotes: a quote left in a name means the row was
# quoted wrongly (e.g. '"bowl' from an unbalanced quote), which would silently invent classes.
CLASS_NAME = re.compile(r"[^\"'\x00-\x1f\x7f]+")


class FolderDataset(Dataset):
    files: dict[str, str]

    def image_path(self, image_id: str) -> Path:
        return self.root / self.files[image_id]


def read_text_utf8(path: Path) -> str:
    """The file's text as UTF-8 (a byte-order mark is dropped), or one line naming the place
    where it is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                        f"save the CSV as UTF-8") from None


def parse_labels_csv(path: Path) -> list[tuple[int, str, list[str]]]:
    """Rows (line number, file name, class names)."""
    if not path.is_file():
        raise DataError(f"{path}: labels CSV not found; pass --labels labels.csv")
    reader = csv.reader(io.StringIO(read_text_utf8(path), newline=""), skipinitialspace=True)
    rows = []
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if ";" in row[0]:   # a "file;class;class" row
                first, _, rest = row[0].partition(";")
                row = [first, rest] + row[1:]
            fname = row[0].strip().replace("\\", "/")     # Windows separators
            if not rows and fname.lower() in HEADER_WORDS:
                continue
            names = [n.strip() for field in row[1:] for n in re.split(r"[,;]", field) if n.strip()]
            if not fname:
                raise DataError(f"{path} line {lineno}: empty file name")
            if not names:
                raise DataError(f"{path} line {lineno}: no class names after the file name '{fname}'")
            for n in names:
                if not CLASS_NAME.fullmatch(n):
                    raise DataError(f"{path} line {lineno}: odd class name {n!r} (unbalanced quotes?)")
            rows.append((lineno, fname, names))
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: not a valid CSV row ({e})") from None
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
                raise DataError(f"{labels_csv} line {lineno}: unknown class '{n}' "
                                f"(data.classes lists {', '.join(names)})")
        key = image_id_of(fname, f"{labels_csv} line {lineno}")
        if key in ds.files:
            if ds.files[key] == fname:
                raise DataError(f"{labels_csv} line {lineno}: '{fname}' is listed twice")
            raise DataError(f"{labels_csv} line {lineno}: '{fname}' and '{ds.files[key]}' would share the "
                            f"output name '{key}' (outputs are named by path without extension); rename one")
        ds.files[key] = fname
        ds.labels[key] = tuple(sorted({index[n] for n in ns}))
    ds.splits["all"] = tuple(ds.files)
    ds.check_images_exist(ds.splits["all"])
    return ds
