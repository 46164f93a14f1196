"""What ``wsis diagnose`` writes that others read (its folder, its result file, the kinds of
lost instances) and the report's section of it. A module of its own, apart from diagnose.py:
the report reads the result file only, and importing diagnose.py would cost it PyTorch and
the instance synthesis (seconds on 2 cores, most of a ``wsis report`` after an import)."""

from __future__ import annotations

import os
from pathlib import Path

from wsis.io import read_json_or_none

DIAGNOSE_DIR = "diagnose"
RESULT_FILE = "oracles.json"
# how a ground-truth instance is lost, in the order of the table's columns
LOSSES = ("missed", "merged_touching", "merged_apart", "merged_other_class")

REPORT_KEYS = ("mAP50", "mAP70", "instances_per_image", "gt_instances_per_image", "under_segmented",
               "over_segmented") + LOSSES


def report_section(work_dir: Path, report_dir: Path) -> tuple[dict, list[tuple[str, str]]]:
    """What the HTML report shows of ``wsis diagnose`` when it has run: the table as metrics
    ({"diagnose": {row: {figure: value}}}) and the worst images' figures as plots (paths
    relative to ``report_dir``); ({}, []) otherwise."""
    result = read_json_or_none(work_dir / DIAGNOSE_DIR / RESULT_FILE)
    if not isinstance(result, dict) or not isinstance(result.get("rows"), dict):
        return {}, []
    order = result.get("order") or list(result["rows"])      # write_json sorts the keys
    metrics = {"diagnose": {row: {k: v for k, v in result["rows"][row].items() if k in REPORT_KEYS}
                            for row in order if row in result["rows"]}}
    plots = []
    for rank, worst in enumerate(result.get("worst_images", []), start=1):
        path = work_dir / DIAGNOSE_DIR / worst["figure"]
        if path.is_file():
            plots.append((os.path.relpath(path, report_dir),
                          f"Oracle ablation, worst image #{rank} of the baseline: {worst['id']} "
                          f"(GT IoU {worst['gt_iou']:.2f}): boundary, displacement, clusters"))
    return metrics, plots
