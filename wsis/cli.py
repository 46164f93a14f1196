"""The ``wsis`` command line."""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

from .threads import busy_note, cpu_snapshot, set_wait_policy, usable_cpus

# Before anything imports PyTorch, here and in the processes wsis spawns (which import this
# module again): its OpenMP runtime reads the wait policy once, when it is loaded (issue 28).
set_wait_policy()

import click  # noqa: E402

from .config import load_config  # noqa: E402
from .data.registry import DATASET_KINDS  # noqa: E402
from .errors import ConfigError, WsisError  # noqa: E402


def common_options(f):
    """Options every command takes (before or after the command name's own options)."""
    options = [
        click.option("--work-dir", type=click.Path(path_type=Path), default=None,
                     help="Where stage outputs are cached [default: runs/<dataset>]."),
        click.option("--dataset", type=click.Choice(DATASET_KINDS), default="synthetic", show_default=True,
                     help="Dataset kind; also selects the config preset configs/<dataset>.toml."),
        click.option("--data-root", type=click.Path(path_type=Path), default=None,
                     help="Dataset location [default: the preset's data.root]."),
        click.option("--annotations", type=click.Path(path_type=Path), default=None,
                     help="coco: the instances JSON."),
        click.option("--labels", type=click.Path(path_type=Path), default=None,
                     help="folder: the labels CSV (file name, class names separated by , or ;)."),
        click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                     help="A TOML file overriding the preset."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override one config value, e.g. --set train_cam.epochs=3 (repeatable)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    ]
    f = eval_set_options(f)
    for option in reversed(options):
        f = option(f)
    return f


def eval_set_options(f):
    """--eval-annotations and --eval-images: a separate labelled COCO file that eval_seg scores."""
    f = click.option("--eval-images", type=click.Path(path_type=Path), default=None,
                     help="Directory the --eval-annotations file names are relative to (eval_seg.images) "
                          "[default: the training images' directory].")(f)
    return click.option("--eval-annotations", type=click.Path(path_type=Path), default=None,
                        help="A labelled COCO instances JSON of held-out images for eval_seg (eval_seg.annotations) "
                             "[default: score data.eval_split; for coco, the training images].")(f)


def eval_set_overrides(eval_annotations, eval_images) -> tuple[str, ...]:
    return tuple(f"eval_seg.{key}={json_string(value)}"
                 for key, value in (("annotations", eval_annotations), ("images", eval_images)) if value)


def user_errors(f):
    """Turn WsisError into a one-line message and exit status 2; an interrupt (Ctrl-C,
    SIGTERM, SIGHUP) unwinds normally, so temporary files are removed, and exits 130."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        import signal

        def interrupt(signum, frame):
            # An exception raised while a __del__ runs is printed and dropped by Python, so
            # the interrupt is also made sticky: progress updates raise it again.
            from pipelines.progress import request_interrupt
            request_interrupt()
            raise KeyboardInterrupt
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)
        try:
            return f(*args, **kwargs)
        except WsisError as e:
            click.echo(f"wsis: error: {e}", err=True)
            sys.exit(2)
        except OSError as e:
            # a read-only mount or a file without permission is the user's, not a bug: one line
            # naming it (the work dir's own writes say so themselves, before anything is written)
            import errno
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not e.filename:
                raise
            click.echo(f"wsis: error: {e.filename}: {e.strerror}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("wsis: interrupted; finished outputs are kept, rerun to resume", err=True)
            sys.exit(130)
    return wrapper


def capped_workers(workers: int) -> int:
    """Local Dask workers: at most one per CPU (each is a process with its own memory; more
    only compete for the same cores), with a line when ``workers`` asked for more."""
    cpus = usable_cpus()
    if workers > cpus:
        click.echo(f"wsis: note: {workers} workers asked for (--workers or run.workers), but this machine has "
                   f"{cpus} CPUs; using {cpus}", err=True)
        return cpus
    return workers


def note_busy_cpus(snapshot) -> None:
    """At the start of a long command: one line on stderr when other programs keep the CPUs
    busy (measured since ``snapshot``, taken as the command started; wsis.threads.busy_note)."""
    line = busy_note(snapshot)
    if line:
        click.echo(line, err=True)


def check_directory(path: Path, option: str) -> None:
    """``path`` can be a directory: neither it nor a directory above it is a file."""
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            where = "is a file" if p == path else f"is below {p}, which is a file"
            raise ConfigError(f"{option} {path}: {where}, not a directory")


@contextlib.contextmanager
def locked_work_dir(work_dir: Path):
    """Hold the work dir's lock (the one ``wsis run`` holds while it writes), so that two
    commands never write its files at once: a second one stops with one line."""
    from pipelines.cache import WorkDirLock
    lock = WorkDirLock(work_dir / ".lock")
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        lock.__enter__()
    except OSError as e:
        raise ConfigError(f"{work_dir}: cannot write to this work dir ({e.strerror or e})") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def check_review_store(pipeline) -> None:
    """The work dir's review store, if it parses, must be of this dataset (one line otherwise,
    before anything runs or is merged). One that does not parse is left to the stages that
    read it, whose line names its backup."""
    from pipelines.stages.merge_review import REVIEW_STORE
    from .io import read_json_or_none
    from .review.formats import check_store_dataset
    store = pipeline.work_dir / REVIEW_STORE
    doc = read_json_or_none(store) if store.is_file() else None
    if isinstance(doc, dict) and isinstance(doc.get("images"), dict):
        check_store_dataset(doc, store, pipeline.dataset)


class Session:
    """The resolved config, dataset and work dir of one command."""

    def __init__(self, work_dir, dataset, data_root, annotations, labels, config_file, overrides, device,
                 eval_annotations=None, eval_images=None):
        self.kind = dataset
        overrides = tuple(overrides) + eval_set_overrides(eval_annotations, eval_images)
        self.cfg = load_config(dataset, config_file, overrides)
        if annotations and labels:
            raise ConfigError("--annotations (coco) and --labels (folder) are exclusive")
        self.annotations = annotations or labels
        self.data_root = Path(data_root) if data_root else Path(self.cfg["data"]["root"])
        self.work_dir = Path(work_dir) if work_dir else Path("runs") / dataset
        check_directory(self.work_dir, "--work-dir")
        self.device_request = device

    def open_dataset(self):
        from .data import open_dataset

        def note_generation(split, i, n):
            if i == 1:
                click.echo(f"synthetic: generating {n} {split} images in {self.data_root}", err=True)

        ds = open_dataset(self.kind, self.cfg, self.data_root, self.annotations, progress=note_generation)
        for note in ds.notes:
            click.echo(f"wsis: note: {note}", err=True)
        return ds

    def check_work_dir(self, record: bool):
        """A work dir holds one dataset's cache; refuse to mix another into it. ``record``
        writes this run's identity into a new work dir."""
        from .io import read_json_or_none, write_json
        path = self.work_dir / "run.json"
        identity = {"dataset": self.kind, "data_root": str(self.data_root.resolve())}
        old = read_json_or_none(path)    # a truncated or unreadable run.json counts as missing
        if isinstance(old, dict):
            for key in identity:
                if old.get(key) != identity[key]:
                    raise ConfigError(f"{path}: this work dir caches {key} '{old.get(key)}', not "
                                      f"'{identity[key]}'; pass another --work-dir")
        elif record:
            try:
                write_json(path, identity)
            except OSError as e:
                raise ConfigError(f"{self.work_dir}: cannot write to the work dir ({e.strerror or e})") from None

    def check_eval_set(self, dataset) -> None:
        """Open the held-out eval set now, so that a bad file stops a run before training."""
        if self.cfg["eval_seg"]["annotations"]:
            from pipelines.stages.eval_seg import held_out_dataset
            held_out_dataset(self.cfg, dataset.image_dir)

    def pipeline(self, scheduler=None, workers=0, record=False):
        from pipelines.dag import STAGES
        from pipelines.engine import Pipeline
        dataset = self.open_dataset()
        self.check_work_dir(record)
        if record:
            self.check_eval_set(dataset)
        workers = capped_workers(workers or self.cfg["run"]["workers"])
        return Pipeline(STAGES, self.cfg, dataset, self.work_dir, self.device_request,
                        scheduler, workers)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wsis")
def main():
    """wsis: instance pseudo-masks from image-level tags (IRNet), as COCO JSON."""


@main.command()
@click.option("--stage", default="all", show_default=True, help="Stage to run (with what it needs), or 'all'.")
@click.option("--force", is_flag=True, help="Recompute the stage even if its cache is up to date.")
@click.option("--workers", type=int, default=0, help="Local Dask workers [default: one per core].")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Use an existing dask.distributed scheduler (the work dir must be on a shared filesystem).")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train data-parallel in N processes (torchrun, DDP): one per GPU with --device cuda; "
                   "with --device cpu, N gloo processes.")
@common_options
@user_errors
def run(stage, force, workers, scheduler, gpus, **common):
    """Run STAGE after whatever it needs that is missing or stale."""
    busy = cpu_snapshot()
    from pipelines.engine import check_scheduler_address
    from pipelines.report import metrics_table
    if workers < 0:
        raise ConfigError(f"--workers {workers}: must be >= 0 (0: one per CPU core)")
    if scheduler is not None:
        check_scheduler_address(scheduler)
    session = Session(**common)
    pipeline = session.pipeline(scheduler, workers, record=True)
    check_review_store(pipeline)
    note_busy_cpus(busy)
    pipeline.processes = gpus
    pipeline.run(stage, force=force)
    metrics = pipeline.collect_metrics()
    if metrics:
        click.echo(metrics_table(metrics))
        click.echo(f"metrics: {session.work_dir / 'metrics.json'}")
    for what, path in pipeline.result_files():
        click.echo(f"{what}: {path}")


@main.command()
@click.option("--verify", is_flag=True,
              help="Hash the whole content of every output and input file (slow: reads everything); without it, "
                   "outputs are checked by size, and hashed only where their mtime moved.")
@common_options
@user_errors
def status(verify, **common):
    """Print each stage's state: done / stale (why) / partial (n of N) / damaged (what) / missing."""
    session = Session(**common)
    pipeline = session.pipeline()
    pipeline.verify = verify
    for stage in pipeline.stages.values():
        st = pipeline.state(stage)
        detail = f" ({st.detail})" if st.detail else ""
        click.echo(f"{stage.name:<12} {st.status}{detail}")


@main.command()
@click.option("--seed", type=int, default=None, help="Generator seed [default: synthetic.seed].")
@common_options
@user_errors
def synth(seed, **common):
    """Generate the synthetic dataset (VOC layout) at --data-root."""
    if seed is not None:
        common["overrides"] = tuple(common["overrides"]) + (f"synthetic.seed={seed}",)
    common["dataset"] = "synthetic"
    session = Session(**common)
    from .data.synthetic import ensure_synthetic
    made = ensure_synthetic(session.data_root, session.cfg)
    click.echo(f"{'wrote' if made else 'already present:'} {session.data_root}")


@main.command("train-seg")
@click.option("--coco", "coco_json", type=click.Path(path_type=Path), required=True,
              help="COCO instances JSON to train on.")
@click.option("--images", type=click.Path(path_type=Path), required=True,
              help="Directory the JSON's file names are relative to.")
@click.option("--force", is_flag=True, help="Retrain even if an up-to-date model exists.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="Where the model is written [default: runs/train-seg-<json name>].")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@eval_set_options
@user_errors
def train_seg(coco_json, images, force, work_dir, config_file, overrides, device, eval_annotations, eval_images):
    """Train the instance-segmentation model (seg.model) on your own COCO JSON; with
    --eval-annotations, then score it on those held-out images."""
    busy = cpu_snapshot()
    import dataclasses
    from pipelines.dag import STAGES
    from pipelines.engine import Pipeline
    overrides = tuple(overrides) + (f"seg.train_json={json_string(coco_json)}", f"seg.train_images={json_string(images)}")
    session = Session(work_dir or Path("runs") / f"train-seg-{Path(coco_json).stem}", "coco", images, coco_json,
                      None, config_file, overrides, device, eval_annotations, eval_images)
    if session.cfg["seg"]["backbone_init"] == "cam":
        raise ConfigError("train-seg: seg.backbone_init = 'cam' needs the CAM stage, which train-seg does not run; "
                          "use seg.backbone_init = 'pretrained' (it starts from backbone.weights: imagenet, "
                          "a .pth file, or none for random initialisation)")
    weights = session.cfg["backbone"]["weights"]
    start = "random initialisation" if weights in ("", "none") else f"backbone.weights = {weights}"
    stage = dataclasses.replace(STAGES["train_seg"], upstream=(),
                                description=f"train {session.cfg['seg']['model']} on {coco_json} (backbone from {start})")
    stages = {"train_seg": stage}
    dataset = session.open_dataset()
    session.check_eval_set(dataset)
    if session.cfg["eval_seg"]["annotations"]:
        stages["eval_seg"] = STAGES["eval_seg"]
    pipeline = Pipeline(stages, session.cfg, dataset, session.work_dir, session.device_request)
    note_busy_cpus(busy)
    pipeline.run("all", force=force)
    click.echo(f"model: {pipeline.out_dir(stage) / 'model.pt'}")
    if "eval_seg" in stages:
        from pipelines.report import metrics_table
        click.echo(metrics_table(pipeline.collect_metrics()))
        click.echo(f"metrics: {session.work_dir / 'metrics.json'}")


def json_string(value) -> str:
    import json
    return json.dumps(str(value))


@main.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="A model.pt written by train_seg / train-seg.")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--coco", "coco_json", type=click.Path(path_type=Path), default=None,
              help="Predict the images of this COCO file, with its image and category ids (needs --images).")
@click.option("--images", "image_dir", type=click.Path(path_type=Path), default=None,
              help="With --coco: the directory its file names are relative to.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("predictions"), show_default=True,
              help="Output directory: results.json, predictions.json and overlays/.")
@click.option("--score-threshold", type=float, default=0.3, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@user_errors
def predict(checkpoint, images, coco_json, image_dir, out, score_threshold, device):
    """Segment IMAGES (files or directories) with a trained model: a COCO results list, a full
    COCO file of the detections, and overlay PNGs."""
    from .predict import coco_file_images, gather_images, predict_images
    from .device import resolve_device
    if coco_json is not None:
        if images or image_dir is None:
            raise ConfigError("predict: --coco FILE takes its images from the file; pass --images DIR, not IMAGES")
        inputs, file_categories = coco_file_images(coco_json, image_dir)
    else:
        if not images:
            raise ConfigError("predict: pass IMAGES (files or directories), or --coco FILE --images DIR")
        inputs, file_categories = gather_images(list(images)), None
    if not Path(checkpoint).is_file():
        raise ConfigError(f"{checkpoint}: checkpoint not found")
    check_directory(out, "--out")
    results, predictions = predict_images(checkpoint, inputs, out, score_threshold, resolve_device(device),
                                          file_categories, coco_json)
    click.echo(f"results (COCO loadRes list): {results}")
    click.echo(f"predictions: {predictions}")
    click.echo(f"overlays: {out / 'overlays'}")


@main.group()
def review():
    """The review loop: export the least confident images to a labelling tool, import corrections."""


@review.command("export")
@click.option("--format", "fmt", type=click.Choice(["cvat", "labelstudio", "coco"]), required=True,
              help="cvat: COCO 1.0 zip with images; labelstudio: tasks JSON + labelling config; coco: plain JSON.")
@click.option("--top", type=int, default=None, help="Only the N least confident images [default: all].")
@click.option("--order", type=click.Choice(["queue", "random"]), default="queue", show_default=True,
              help="queue: least confident first, to fix what is wrong; random: a seeded draw of the images not "
                   "reviewed, to teach the pipeline (on real photos 26 random photos taught the others more than "
                   "the 26 least confident: docs/results.md).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="--order random: the draw's seed.")
@click.option("--include-reviewed", is_flag=True,
              help="Also export images already reviewed (wsis review import), with their reviewed masks "
                   "[default: left out].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file [default: <work-dir>/review/export/review_<format>.zip|json].")
@click.option("--image-url-prefix", default=None,
              help="labelstudio: prefix of data.image before the image's URL-encoded path relative to the dataset's "
                   "image folder [default: /data/local-files/?d=<image folder name>/, Label Studio local files "
                   "with the folder above the image folder as document root and the image folder as storage].")
@common_options
@user_errors
def review_export(fmt, top, order, seed, include_reviewed, out, image_url_prefix, **common):
    """Write the review queue (least confident first, or --order random) for CVAT, Label Studio
    or as COCO; images already reviewed are left out unless --include-reviewed."""
    from pipelines.stages.merge_review import REVIEW_STORE
    from pipelines.stages.report import current_queue
    from .review.formats import export_review, local_files_setup, read_store, review_items
    from .review.queue import mark_reviewed
    session = Session(**common)
    pipeline = session.pipeline()
    if top is not None and top < 1:
        raise ConfigError("--top must be at least 1")
    reviewed = read_store(session.work_dir / REVIEW_STORE)["images"]
    check_review_store(pipeline)
    queue = mark_reviewed(current_queue(pipeline), reviewed)
    left_out = 0
    if not include_reviewed:
        left_out = sum(e["reviewed"] for e in queue["images"])
        queue = dict(queue, images=[e for e in queue["images"] if not e["reviewed"]])
    if order == "random":
        # over the images in id order, not the queue's: a retrained pipeline reorders the queue,
        # and a seed must still draw the same photos from the same unreviewed ones
        import numpy as np
        by_id = sorted(queue["images"], key=lambda e: e["id"])
        queue = dict(queue, images=[by_id[i] for i in np.random.default_rng(seed).permutation(len(by_id))])
    from pipelines.dag import pseudo_masks
    items = review_items(queue, pipeline.dataset, pipeline.out_dir(pipeline.stages[pseudo_masks(pipeline.cfg)]), top,
                         reviewed)
    suffix = "zip" if fmt == "cvat" else "json"
    out = out or session.work_dir / "review" / "export" / f"review_{fmt}.{suffix}"
    setup = None
    if fmt == "labelstudio" and image_url_prefix is None:
        image_url_prefix, *setup = local_files_setup(pipeline.dataset.image_dir)
    paths = export_review(items, pipeline.dataset.class_names, fmt, out, image_url_prefix or "")
    n = sum(len(i["instances"]) for i in items)
    again = sum(i["reviewed"] for i in items)
    ordered = "least confident first" if order == "queue" else f"in random order (seed {seed})"
    click.echo((f"review queue: {len(items)} images, {n} instances, {ordered} "
                f"(confidence {items[0]['confidence']:.3f} .. {items[-1]['confidence']:.3f})" if items
                else "review queue: no images")
               + (f"; {left_out} reviewed images left out (--include-reviewed exports them)" if left_out else "")
               + (f"; {again} of them reviewed, with their reviewed masks" if again else ""))
    for p in paths:
        click.echo(f"wrote {p}")
    if setup:
        root, storage = setup
        click.echo(f"Label Studio: start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
                   f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}, add a Local Files storage with path {storage} "
                   f"(image URLs: {image_url_prefix}<file>)")


@review.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--empty-images", type=click.Choice(["skip", "reviewed"]), default="skip", show_default=True,
              help="COCO files and CVAT zips: an image listed without annotations is not reviewed (skip: it keeps "
                   "its pseudo-labels), or reviewed with every object removed (reviewed). Label Studio JSON says "
                   "which tasks were annotated.")
@click.option("--unchanged-images", type=click.Choice(["skip", "reviewed"]), default="skip", show_default=True,
              help="CVAT zips and COCO files: an image whose annotations are still the exported pseudo-labels is "
                   "not reviewed (skip), or reviewed and confirmed (reviewed).")
@common_options
@user_errors
def review_import(file, empty_images, unchanged_images, **common):
    """Store corrected annotations (COCO JSON, CVAT zip, Label Studio JSON export or COCO zip) for
    training. Only images a human reviewed replace their pseudo-labels."""
    from pipelines.dag import pseudo_masks
    from pipelines.stages.merge_review import REVIEW_STORE
    from .review.formats import DEFAULT_MAX_MEMBER_MB, read_review, store_review
    session = Session(**common)
    pipeline = session.pipeline()
    ds = pipeline.dataset
    limit = session.cfg.get("review", {}).get("max_member_mb", DEFAULT_MAX_MEMBER_MB)
    store = session.work_dir / REVIEW_STORE
    with locked_work_dir(session.work_dir):     # no run, and no other import, writes the work dir meanwhile
        found = read_review(file, ds, ds.ids(session.cfg["data"]["infer_split"]), limit, empty_images,
                            pipeline.out_dir(pipeline.stages[pseudo_masks(pipeline.cfg)]), pipeline.cfg["export"],
                            unchanged_images)
        doc = store_review(found.images, store, Path(file).resolve(), ds)
    n = sum(len(v[2]) for v in found.images.values())
    skipped = ""
    if found.skipped:
        skipped = f"; {len(found.skipped)} {found.skipped_what} skipped as not reviewed (they keep their pseudo-labels)"
        if found.skipped_what.startswith("images"):
            skipped += "; --empty-images reviewed counts them as reviewed with every object removed"
    if found.unchanged:
        skipped += (f"; {len(found.unchanged)} images with their exported pseudo-labels unchanged skipped as not "
                    f"reviewed (--unchanged-images reviewed counts them as reviewed)")
    click.echo(f"imported {len(found.images)} reviewed images ({n} instances) from {file}{skipped}; "
               f"{len(doc['images'])} reviewed images in {store}")
    for note in found.notes:
        click.echo(f"note: {note}")
    # the stages that read the reviews in this config (review.*): they and all after them rerun
    readers = [s.name for s in pipeline.stages.values() if s.image_inputs and s.image_inputs.active(pipeline.cfg)]
    click.echo(f"next: wsis run ({', '.join(readers + ['merge_review'])} learn from the reviewed images; "
               f"the stages after them rerun)")


@main.command()
@click.option("--oracles", "oracle_rows", default="cam,boundary,displacement,all", show_default=True,
              help="Rows of the ablation besides the baseline: cam, relations (retrains IRNet on ground-truth "
                   "semantic relation labels), instance_relations (... on instance labels), boundary, "
                   "displacement, clusters (GT instances for the displacement clusters), all (cam + boundary + "
                   "displacement); a row may join several with + "
                   "(cam+displacement).")
@click.option("--limit", type=int, default=None, help="Score only the first N images of the infer split.")
@click.option("--figures", type=click.IntRange(min=0), default=6, show_default=True,
              help="Diagnostic figures of the N worst images of the baseline.")
@common_options
@user_errors
def diagnose(oracle_rows, limit, figures, **common):
    """Oracle ablation: replace one upstream input at a time with its ground-truth ideal and
    score the re-synthesised instance pseudo-labels (datasets with masks)."""
    busy = cpu_snapshot()
    from pipelines.stages.diagnose import DIAGNOSE_DIR, RESULT_FILE, parse_oracles, run_diagnose
    rows = parse_oracles(oracle_rows)
    session = Session(**common)
    pipeline = session.pipeline()
    if not pipeline.dataset.has_masks:
        click.echo(f"diagnose: skipped: dataset '{session.kind}' has no ground-truth masks to make oracles from")
        return
    session.check_work_dir(record=True)
    note_busy_cpus(busy)
    result = run_diagnose(pipeline, rows, limit, figures)
    click.echo(result["table"])
    click.echo(f"diagnose: {session.work_dir / DIAGNOSE_DIR / RESULT_FILE}")


@main.command("report")
@common_options
@user_errors
def report(**common):
    """Write the HTML report of the finished stages to <work-dir>/report/index.html."""
    from pipelines.stages.report import report_from_finished
    session = Session(**common)
    pipeline = session.pipeline()
    check_review_store(pipeline)
    path = report_from_finished(pipeline)
    click.echo(f"report: {path}")


if __name__ == "__main__":
    main()
