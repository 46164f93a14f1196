"""Report benchmark (issue 20 point 13, issue 28 part 4): how long the report takes to build
the first time, and how long it takes to refresh after a review import.

Setup (not timed): ``wsis synth`` generates N photo-sized images (``--images``, default 200;
each side drawn from 375..500 px: about the pixels of a 500x375 photo on average), and the real
pipeline (the synthetic preset) runs on them with light training (``review_loop.QUICK_SETTINGS``
without its Dask settings: the benchmark times the report, not the pseudo-labels' quality) up
to every stage the report reads except its own two: pseudo-labels (ins_seg, sem_seg, export),
the evaluations, a trained model (train_seg) and its predictions (seg_infer, which gives the
report its model agreement: the report runs no model). That work dir is kept under ``--work``
and copied for each measurement, so a rerun measures again without redoing the setup.

Timed, each as the wall time of its wsis command (process start included, as a user waits
for it):

  - first build: ``wsis run --stage report``, which runs report_rows (each image's queue
    signals and gallery pictures, on Dask) and the report stage (confidences with the model
    agreement from seg_infer, the queue, plots, gallery rows and the pictures that show
    confidences) - the report's per-image work without the model pass;
  - refresh: after ``wsis review import`` of K reviewed images (``--reviewed``, default 1 as
    issue 28 asks; issue 20 said 10), the ground-truth masks of the K least confident images of
    ``wsis review export``, ``wsis report``. An import leaves report_rows as it is, so the
    refresh should redraw only the rows that changed; the number of pictures it drew is printed
    and written (``refresh_pictures_drawn``).

Printed, and with ``--json FILE`` written: ``images``, ``first_build_seconds``,
``refresh_seconds``, ``first_build_s_per_image`` (target <= 0.25 on 2 cores),
``refresh_fraction`` (refresh / first build, target <= 0.10), ``reviewed``,
``refresh_pictures_drawn``, ``instances_per_image`` and the stages' own seconds.

    python benchmarks/report.py                          # 200 images, work root runs/report_bench
    python benchmarks/report.py --images 1000 --reviewed 10 --json report.json
    python benchmarks/report.py --quick --work /tmp/rq   # 12 small images (CI smoke run)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from review_loop import QUICK_SETTINGS, setting, wsis, write_json_if_changed  # noqa: E402

PHOTO_SIZE = [375, 500]         # synthetic.image_size: each side drawn from this range
QUICK_SIZE = [96, 128]
VAL_IMAGES = 4                  # the eval split, which eval_cam and eval_seg score (setup only)
REPORT_STAGES = ("report_rows", "report")      # what the first build computes
TARGETS = {"first_build_s_per_image": 0.25, "refresh_fraction": 0.10}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=None, help="generated images (default 200; --quick: 12)")
    ap.add_argument("--reviewed", type=int, default=1, help="images reviewed before the refresh (default 1)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "report_bench"),
                    help="work root; a rerun reuses its data and setup run")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--quick", action="store_true", help="12 small images, for a smoke run")
    args = ap.parse_args(argv)
    if args.images is None:
        args.images = 12 if args.quick else 200
    if args.images < 2 or not 1 <= args.reviewed < args.images:
        ap.error("--images must be at least 2, --reviewed at least 1 and below --images")
    return args


class Setup:
    """The benchmark's data and its finished setup run under the work root; ``common(work)``
    gives a wsis command's options for a work dir of this setup."""

    def __init__(self, args):
        self.root = Path(args.work).resolve()
        size = QUICK_SIZE if args.quick else PHOTO_SIZE
        # light training, but the run's own Dask settings (a worker per core, chunks of 8), as a
        # user's report runs on them
        light = {k: v for k, v in QUICK_SETTINGS.items() if not k.startswith("run.")}
        self.sets = {**light, "synthetic.num_train": args.images, "synthetic.num_val": VAL_IMAGES,
                     "synthetic.image_size": size}
        # one data folder per setting: another --images is another dataset, not a mix
        self.name = f"{args.images}x{size[0]}-{size[1]}"
        self.data = self.root / "data" / self.name
        self.setup = self.root / "setup" / self.name
        self.log = self.root / f"{self.name}.log"

    def common(self, work: Path) -> list[str]:
        return ["--dataset", "synthetic", "--data-root", str(self.data), "--work-dir", str(work),
                *[a for k, v in self.sets.items() for a in ("--set", setting(k, v))]]

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        seconds, _ = wsis(None, "synth", ["synth", *self.common(self.setup)], self.log)   # None: see run_logged
        print(f"  data: {self.data} ({seconds:.1f} s)", flush=True)
        # every stage in one process (a process per stage would start PyTorch and the Dask
        # workers each time); then the report's own two are removed: never built, as before
        # a user's first report
        seconds, ran = wsis(None, "setup", ["run", "--stage", "all", *self.common(self.setup)], self.log)
        for stage in REPORT_STAGES:
            shutil.rmtree(self.setup / stage, ignore_errors=True)
        print(f"  setup: wsis run --stage all {seconds:.1f} s (ran {', '.join(ran) or 'nothing'}); without "
              f"{' and '.join(REPORT_STAGES)}", flush=True)

    def copy(self, name: str) -> Path:
        """A fresh copy of the setup run: nothing of the report in it yet."""
        work = self.root / name
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(self.setup, work, ignore=shutil.ignore_patterns(".lock"))
        return work


def stage_seconds(log_text: str) -> dict[str, float]:
    """{stage: seconds} from a wsis command's "<stage>: done in X s" lines."""
    return {m[0]: float(m[1]) for m in re.findall(r"^(\w+): done in ([0-9.]+) s", log_text, re.M)}


def run_logged(label: str, args: list[str], log: Path) -> tuple[float, str]:
    """``wsis`` (review_loop's runner: wall seconds, output appended to ``log``) and what this
    command printed."""
    before = log.stat().st_size if log.is_file() else 0
    seconds, _ = wsis(None, label, args, log)     # its first argument (the review-loop bench) is unused
    with log.open() as f:
        f.seek(before)
        return seconds, f.read()


def reviewed_document(data: Path, sets: dict, export: dict, count: int) -> dict:
    """The first ``count`` images of a review export (the least confident), with their
    ground-truth masks in place of the pseudo-labels: a reviewer's corrections."""
    from wsis.coco import annotation
    from wsis.config import load_config
    from wsis.data import open_dataset
    cfg = load_config("synthetic", overrides=[setting(k, v) for k, v in sets.items()])
    ds = open_dataset("synthetic", cfg, data)
    by_file = {ds.image_path(i).name: i for i in ds.ids(cfg["data"]["infer_split"])}
    images = export["images"][:count]
    anns = []
    for im in images:
        gt = ds.instance_gt(by_file[Path(im["file_name"]).name])
        for m, c in zip(gt.masks, gt.classes):
            anns.append(annotation(m, int(c), im["id"], len(anns) + 1, category_ids=ds.coco_category_ids()))
    return {"images": [{k: im[k] for k in ("id", "file_name", "height", "width")} for im in images],
            "annotations": anns, "categories": export["categories"]}


def measure(setup: Setup, args) -> dict:
    work = setup.copy("measure")
    log = setup.root / "measure.log"
    log.unlink(missing_ok=True)
    first, out = run_logged("first build", ["run", "--stage", "report", *setup.common(work)], log)
    stages = stage_seconds(out)
    if set(stages) != set(REPORT_STAGES):
        sys.exit(f"wsis run --stage report computed {', '.join(stages) or 'nothing'}, not the report alone; "
                 f"log: {log}")
    print(f"  first build: wsis run --stage report {first:.1f} s (stages: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()) + ")", flush=True)

    export_file = setup.root / "review_export.json"
    run_logged("review export", ["review", "export", "--format", "coco", "--top", str(args.reviewed),
                                 "--out", str(export_file), *setup.common(work)], log)
    doc = reviewed_document(setup.data, setup.sets, json.loads(export_file.read_text()), args.reviewed)
    reviewed_file = setup.root / "reviewed.json"
    write_json_if_changed(reviewed_file, doc)
    seconds, out = run_logged("review import", ["review", "import", str(reviewed_file), "--empty-images",
                                                "reviewed", *setup.common(work)], log)
    print(f"  wsis review import ({args.reviewed} images): {seconds:.1f} s (not timed)", flush=True)

    refresh, out = run_logged("refresh", ["report", *setup.common(work)], log)
    drawn = re.search(r"report: (\d+) pictures drawn, (\d+) unchanged", out)
    if drawn is None:
        sys.exit(f"wsis report did not rebuild the report; log: {log}")
    print(f"  refresh: wsis report {refresh:.1f} s ({drawn[1]} pictures drawn, {drawn[2]} unchanged)", flush=True)

    pseudo = json.loads((work / "export" / "pseudo_labels.json").read_text())
    return {"images": args.images, "reviewed": args.reviewed,
            "first_build_seconds": first, "refresh_seconds": refresh,
            "first_build_s_per_image": first / args.images, "refresh_fraction": refresh / first,
            "refresh_pictures_drawn": int(drawn[1]), "refresh_pictures_unchanged": int(drawn[2]),
            "instances_per_image": len(pseudo["annotations"]) / args.images,
            "first_build_stage_seconds": stages}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup = Setup(args)
    print(f"report benchmark: {args.images} images, {args.reviewed} reviewed before the refresh; work root "
          f"{setup.root}; {os.cpu_count()} CPU cores", flush=True)
    setup.prepare()
    result = measure(setup, args)
    for key, target in TARGETS.items():
        value = result[key]
        print(f"{key:<24} {value:.4f}  (target <= {target}: {'met' if value <= target else 'missed'})")
    print(f"first build {result['first_build_seconds']:.1f} s, refresh {result['refresh_seconds']:.1f} s, "
          f"{result['instances_per_image']:.2f} pseudo-instances per image")
    if not all(math.isfinite(result[k]) and result[k] > 0 for k in TARGETS):
        sys.exit("the measurements are not positive")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
