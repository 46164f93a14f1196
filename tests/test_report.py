"""The HTML report: its files, its pages, and how it renders in headless Chromium."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from wsis.report.html import write_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLOTS = ("ap50_per_class.png", "pr_curves.png", "cam_sweep.png", "loss.png", "histograms.png", "iou_vs_rank.png")


class Sources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.rows, self.scripts = [], [], 0, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag in ("a", "link"):
            self.links.append(a.get("href", ""))
        elif tag == "tr" and "row" in a.get("class", "").split():
            self.rows += 1
        elif tag == "script":
            self.scripts += 1


def parse(path):
    p = Sources()
    p.feed(path.read_text())
    return p


def test_report_files_are_local_and_complete(tiny_run):
    report = tiny_run / "report"
    page = parse(report / "index.html")
    assert page.rows == 16                                   # every infer image, one page (50 rows)
    for img in page.imgs:
        src = img["src"]
        assert not re.match(r"^[a-z]+://|^//", src), src      # nothing from the internet
        assert (report / src).is_file(), src
    plots = {img["src"] for img in page.imgs if img.get("class") == "plot"}
    assert plots == {f"plots/{p}" for p in PLOTS}
    gallery = [img for img in page.imgs if img.get("class") not in ("plot", "first")]
    assert gallery and all(img.get("loading") == "lazy" and img.get("width") and img.get("height")
                           for img in gallery)
    queue = json.loads((report / "queue.json").read_text())
    ids = re.findall(r"<tr class=\"row[^\"]*\" id=\"img-([^\"]+)\">", (report / "index.html").read_text())
    assert ids == [e["id"] for e in queue["images"]]         # gallery sorted by the review order


def test_gallery_is_paginated(tmp_path):
    rows = [{"rank": k, "id": f"img{k}", "confidence": k / 12, "note": "", "cells": []} for k in range(1, 13)]
    write_report(tmp_path, "t", "", {"s": {"train": {"m": 0.5}}}, [], rows, rows_per_page=5)
    assert [parse(tmp_path / n).rows for n in ("index.html", "page-2.html", "page-3.html")] == [5, 5, 2]
    assert not (tmp_path / "page-4.html").exists()
    assert "page-3.html" in parse(tmp_path / "index.html").links


def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    url = (tiny_run / "report" / "index.html").as_uri()

    def browse(*args):
        return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                               "--enable-logging=stderr", "--v=0", *args, url],
                              capture_output=True, text=True, timeout=120)

    dom = browse("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the page has no script, so any console line is an error (a failed load or a parse error)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == []
    assert len(re.findall(r'<tr class="row[ "]', dom.stdout)) == 16
    assert all(f"plots/{p}" in dom.stdout for p in PLOTS)

    shot = tmp_path / "shot.png"
    proc = browse(f"--screenshot={shot}", "--window-size=1280,2000")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.std() > 20                                 # not a blank page
    assert (pixels < 128).mean() > 0.01                      # text, tables and plots drawn


def test_training_stages_record_their_loss_per_epoch(tiny_run):
    import tomllib
    from conftest import TINY
    cfg = tomllib.loads(TINY.read_text())
    for stage, section, terms in [("train_cam", "train_cam", set()), ("train_irn", "train_irn", {"boundary", "displacement"}),
                                  ("train_seg", "seg", set())]:
        history = json.loads((tiny_run / stage / "loss_history.json").read_text())
        assert [h["epoch"] for h in history] == list(range(1, cfg[section]["epochs"] + 1))
        assert all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in history)
        assert terms <= set(history[0])


def sections(html: str) -> list[str]:
    """The index page's parts in the order they appear."""
    marks = {"headline": '<section id="headline">', "review-first": '<section id="review-first">',
             "plots": '<section id="plots">', "all-figures": '<details id="all-figures">',
             "gallery": '<h2 id="gallery">'}
    found = {name: html.find(mark) for name, mark in marks.items()}
    assert all(at >= 0 for at in found.values()), found
    return sorted(found, key=found.get)


def tiles(html: str) -> list[tuple[str, str, str]]:
    """The headline's figures: (data-source or "", value, what)."""
    return re.findall(r'<div class="tile"(?: data-source="([^"]*)")?><span class="value">([^<]*)</span>'
                      r'<span class="what">([^<]*)</span>', html)


def test_index_leads_with_what_to_fix(tiny_run):
    """Headline, then the images to review first, the plots, every figure folded away, the gallery."""
    html = (tiny_run / "report" / "index.html").read_text()
    assert sections(html) == ["headline", "review-first", "plots", "all-figures", "gallery"]
    folded = html[html.index('<details id="all-figures">'):html.index("</details>")]
    assert '<table class="metrics">' in folded and html.count('<table class="metrics">') == 1


def test_headline_shows_pseudo_label_quality_in_percent(tiny_run):
    """With ground truth the headline is the eval stages' scores, each 100 x its metrics.json
    value with one decimal, and nothing else (no settings such as thresholds)."""
    html = (tiny_run / "report" / "index.html").read_text()
    headline = html[html.index('<section id="headline">'):html.index('<section id="review-first">')]
    shown = {tuple(source.split()): value for source, value, _ in tiles(headline)}
    assert set(shown) == {("eval_cam", "train", "miou"), ("eval_sem_seg", "train", "miou"),
                          ("eval_ins_seg", "train", "mAP50"), ("eval_ins_seg", "train", "mAP70"),
                          ("eval_ins_seg", "train", "coco_AP"), ("eval_seg", "val", "mAP50"),
                          ("eval_seg", "val", "coco_AP")}
    for (stage, split, key), value in shown.items():
        recorded = json.loads((tiny_run / stage / "metrics.json").read_text())[split][key]
        assert value == f"{100 * recorded:.1f} %", (stage, key, value, recorded)
    assert any(value != "0.0 %" for value in shown.values())   # the CAM and sem_seg mIoU are not 0 here
    assert "threshold" not in headline


def test_all_figures_table_shows_scores_in_percent_and_settings_as_set(tiny_run):
    html = (tiny_run / "report" / "index.html").read_text()
    folded = html[html.index('<details id="all-figures">'):html.index("</details>")]
    cell = r"<td>([^<]*)</td>"
    rows = {tuple(r[:3]): r[3:] for r in re.findall(
        rf"<tr>{cell}{cell}{cell}<td class=\"v\">([^<]*)</td>{cell}</tr>", folded)}
    cam = json.loads((tiny_run / "eval_cam" / "metrics.json").read_text())["train"]
    assert rows["eval_cam", "train", "miou"] == (f"{100 * cam['miou']:.1f}", "score")
    assert rows["eval_cam", "train", "bg_threshold"] == (f"{cam['bg_threshold']:.2f}", "setting")
    assert rows["eval_cam", "train", "images"] == ("16", "count")


def test_review_first_marks_each_images_least_confident_instance(tiny_run):
    """The first ten images of the queue not yet reviewed, each named with its least confident
    instance (the lowest confidence in queue.json) and linked to its gallery row."""
    report = tiny_run / "report"
    html = (report / "index.html").read_text()
    queue = json.loads((report / "queue.json").read_text())
    names = [c["name"] for c in json.loads((tiny_run / "export" / "pseudo_labels.json").read_text())["categories"]]
    section = html[html.index('<section id="review-first">'):html.index('<section id="plots">')]
    items = re.findall(r"<li>.*?</li>", section)
    expected = [e for e in queue["images"] if not e["reviewed"]][:10]
    assert len(items) == len(expected) == 10
    for item, entry in zip(items, expected):
        href, image_id = re.match(
            r'<li><a href="([^"]+)"><img class="first".*?<span class="id">#\d+ ([^<]+)</span>', item).groups()
        assert image_id == entry["id"]
        assert href == f"index.html#img-{image_id}" and f'id="img-{image_id}"' in html
        worst = re.search(r'<span class="worst">([^<]+)</span>', item)
        if not entry["instances"]:
            assert worst is None and "no instance found" in item
            continue
        lowest = min(entry["instances"], key=lambda i: i["confidence"])
        assert worst.group(1) == f"{names[lowest['class']]} {lowest['confidence']:.2f}"
        assert all(lowest["confidence"] <= i["confidence"] for i in entry["instances"])
    assert any(e["instances"] for e in expected)     # some image has instances to name


def test_headline_without_ground_truth_shows_counts(tmp_path):
    """No eval stage ran (e.g. a folder dataset): the headline counts images and instances and
    gives the confidence distribution."""
    from wsis.report.html import headline

    def image(k, confidence, instance_confidences, reviewed=False):
        return {"id": f"im{k}", "confidence": confidence, "reviewed": reviewed,
                "instances": [{"index": n + 1, "class": 0, "score": 0.5, "confidence": c}
                              for n, c in enumerate(instance_confidences)]}
    queue = {"signals": ["score"], "images": [image(1, 0.2, [0.2, 0.9]), image(2, 0.4, [0.4]),
                                              image(3, 0.6, [0.6, 0.7, 0.8], reviewed=True), image(4, 0.8, [])]}
    head = headline({"merge_review": {"train": {"images": 4}}}, "train", queue)
    rows = [{"rank": k, "id": e["id"], "confidence": e["confidence"], "note": "", "cells": []}
            for k, e in enumerate(queue["images"], start=1)]
    write_report(tmp_path, "t", "", {}, [], rows, head=head, first=[])
    shown = {what: value for _, value, what in tiles((tmp_path / "index.html").read_text())}
    assert shown == {"images": "4", "pseudo-instances": "6", "instances per image": "1.50",
                     "images under confidence 0.5": "2 of 4", "instances under confidence 0.5": "2 of 6",
                     "image confidence quartiles": "0.35 / 0.50 / 0.65", "images reviewed": "1 of 4"}


def test_label_near_the_image_edge_stays_inside_and_whole():
    """A label of an object in a corner is moved inside the image: drawn whole, the same size as
    the label of the same object in the middle."""
    from wsis.report import gallery

    def red_box(y, x):
        masks = np.zeros((1, 40, 60), bool)
        masks[0, y:y + 4, x:x + 4] = True
        out = gallery.instance_overlay(np.full((40, 60, 3), 128, np.uint8), masks, [0], ["triangle 0.12"],
                                       size=180, doubtful=[True])
        ys, xs = np.nonzero((out == gallery.DOUBTFUL_COLOUR).all(-1))
        return ys.min(), ys.max(), xs.min(), xs.max(), out.shape

    y0, y1, x0, x1, _ = red_box(18, 28)
    for corner in [(0, 0), (0, 56), (36, 0), (36, 56)]:
        cy0, cy1, cx0, cx1, _ = red_box(*corner)
        assert (cy1 - cy0, cx1 - cx0) == (y1 - y0, x1 - x0), corner    # not cut by the edge
    for corners in [gallery.place_labels([(50, 12)], [(55, 0, 59, 3)], 60, 40),
                    gallery.place_labels([(50, 12), (50, 12)], [(0, 36, 3, 39), (1, 36, 4, 39)], 60, 40)]:
        for x, y in corners:
            assert 0 <= x <= 60 - 50 and 0 <= y <= 40 - 12


def test_labels_of_crowded_objects_do_not_overlap_where_there_is_room():
    from wsis.report import gallery
    boxes = [(10, 10, 20, 20), (12, 12, 22, 22), (14, 14, 24, 24)]     # three overlapping objects
    corners = gallery.place_labels([(40, 10)] * 3, boxes, 120, 100)
    placed = [(x, y, x + 40, y + 10) for x, y in corners]
    assert all(gallery._overlap(a, b) == 0 for i, a in enumerate(placed) for b in placed[i + 1:])


def test_the_marked_instance_is_outlined_in_the_mark_colours():
    from scipy import ndimage

    from wsis.report import gallery
    masks = np.zeros((2, 30, 40), bool)
    masks[0, 5:15, 5:15] = True
    masks[1, 12:26, 20:36] = True
    out = gallery.instance_overlay(np.full((30, 40, 3), 100, np.uint8), masks, [0, 0], ["a", "b"], marked=1)
    edge = [m & ~ndimage.binary_erosion(m) for m in masks]
    white = (out == 255).all(-1)
    assert white[edge[1]].mean() > 0.6       # the marked one's edge, where no label covers it
    assert not white[edge[0]].any()          # the other keeps its palette outline


def test_the_report_runs_no_model_and_orders_the_queue_as_a_live_forward_does(tiny_data, tiny_run, tmp_path,
                                                                                monkeypatch):
    """The report reads seg_infer's predictions and report_rows' entries: with the model's
    loading and forward made to fail it still writes the queue, and that queue is the one the
    serial path gives with the model run on every image (same order, same confidences)."""
    import shutil as sh

    from conftest import TINY, snapshot
    from pipelines.dag import STAGES
    from pipelines.engine import Pipeline
    from pipelines.stages import report, train_seg
    from wsis.config import load_config
    from wsis.data import open_dataset
    from wsis.inference import predict_image
    from wsis.review.queue import MODEL_SCORE_THRESHOLD, build_queue, mark_reviewed

    work = tmp_path / "work"
    sh.copytree(tiny_run, work)
    cfg = load_config("synthetic", TINY)
    ds = open_dataset("synthetic", cfg, tiny_data)
    ids = ds.ids(cfg["data"]["infer_split"])
    model, arch, names = train_seg.load_trained(work / "train_seg", "cpu")
    to_dataset = np.array([ds.class_names.index(n) for n in names])

    def live(image_id):
        pred = predict_image(model, ds.load_image(image_id, original=True), arch["input_size"], "cpu",
                             MODEL_SCORE_THRESHOLD)
        return pred["masks"], to_dataset[pred["labels"]]
    serial = mark_reviewed(build_queue(ds, ids, work / "ins_seg", cfg["export"], work / "sem_seg",
                                       cfg["ins_seg"]["bg_threshold"], live, None, work / "make_cam",
                                       cfg["eval_cam"]["bg_threshold"]), {})
    assert "model" in serial["signals"]

    def refuse(*args, **kwargs):
        raise AssertionError("the report ran the model")
    monkeypatch.setattr("wsis.inference.predict_image", refuse)
    monkeypatch.setattr("wsis.models.registry.load_instance_model", refuse)
    monkeypatch.setattr(train_seg, "load_trained", refuse)
    before = {s: snapshot(work / s) for s in ("seg_infer", "report_rows")}
    (work / "report" / "manifest.json").unlink()
    (work / "report" / "queue.json").unlink()
    report.report_from_finished(Pipeline(STAGES, cfg, ds, work))
    assert json.loads((work / "report" / "queue.json").read_text()) == serial
    assert {s: snapshot(work / s) for s in before} == before      # read, not recomputed


# ------------------------------------------------- the report shows what the COCO export holds
def hand_built_run(tiny_data, work):
    """A work dir built by hand on two images of the tiny dataset: ins_seg with, on the first
    image, instances 1 and 3 and between them a zero-score fragment (2); on the second, a real
    instance and one of 10 pixels under export.min_area = 20; seg_infer predicting exactly the
    real instances; report_rows and export made from them. Returns (job of the report, cfg,
    the instances the export must hold: {image id: {number: (mask, class)}})."""
    from conftest import TINY
    from pipelines.job import Job
    from pipelines.stages import export, report_rows
    from wsis.config import load_config
    from wsis.data import open_dataset
    from wsis.io import write_npz
    from wsis.review.queue import write_predictions

    cfg = load_config("synthetic", TINY)
    cfg["export"]["min_area"] = 20
    ds = open_dataset("synthetic", cfg, tiny_data)
    a, b = ds.ids(cfg["data"]["infer_split"])[:2]

    def boxes(image_id, *spec):       # (number, top, left, height, width) -> instance map
        m = np.zeros(ds.original_size(image_id), np.int32)
        for n, y, x, bh, bw in spec:
            m[y:y + bh, x:x + bw] = n
        return m
    maps = {a: boxes(a, (1, 2, 2, 10, 10), (2, 20, 20, 2, 2), (3, 30, 30, 10, 16)),
            b: boxes(b, (1, 5, 30, 5, 10), (2, 30, 5, 2, 5))}
    classes = {a: [0, 1, 2], b: [3, 4]}
    scores = {a: [0.8, 0.0, 0.6], b: [0.7, 0.9]}
    margins = {a: [0.3, 0.9, 0.2], b: [0.5, 0.4]}
    real = {a: (1, 3), b: (1,)}
    truth = {i: {n: (maps[i] == n, classes[i][n - 1]) for n in real[i]} for i in (a, b)}
    for i in (a, b):
        write_npz(work / "ins_seg" / f"{i}.npz", instances=maps[i], classes=np.array(classes[i], np.int64),
                  scores=np.array(scores[i], np.float32), margins=np.array(margins[i], np.float32))
        masks = np.array([m for m, _ in truth[i].values()])
        write_predictions(work / "seg_infer" / f"{i}.npz", masks, np.array([c for _, c in truth[i].values()]),
                          np.ones(len(masks), np.float32))
    ids = (a, b)
    inputs = {"ins_seg": work / "ins_seg"}
    for stage in ("report_rows", "export"):
        (work / stage).mkdir()
    report_rows.process(Job("report_rows", cfg, ds, ids, work / "report_rows", inputs), list(ids))
    export.run(Job("export", cfg, ds, ids, work / "export", inputs))
    job = Job("report", cfg, ds, ids, work / "report",
              {**inputs, "seg_infer": work / "seg_infer", "report_rows": work / "report_rows", "export": work / "export"})
    (work / "report").mkdir()
    return job, cfg, truth


def test_the_queue_and_the_headline_count_exactly_the_exported_instances(tiny_data, tmp_path):
    """The fragment (score 0) and the instance under export.min_area are in no queue entry, no
    confidence and no count: the headline counts the COCO export's annotations (read as JSON),
    each instance keeps its number in the ins_seg map, the model's agreement is perfect (it
    predicts exactly the exported instances; the fragment would lower it to 2/3), the marked
    instance is the least confident of those shown, and the review export holds the COCO
    export's masks."""
    from pipelines.stages import report, report_gallery
    from wsis.review.formats import review_items

    job, cfg, truth = hand_built_run(tiny_data, tmp_path)
    report.run(job)
    queue = json.loads((tmp_path / "report" / "queue.json").read_text())
    entries = {e["id"]: e for e in queue["images"]}
    assert {i: [inst["index"] for inst in e["instances"]] for i, e in entries.items()} == \
        {i: list(t) for i, t in truth.items()}
    a, b = job.ids
    over = 1 - cfg["ins_seg"]["bg_threshold"]          # the margin's largest value
    expected = {a: {1: (0.8 + 0.3 / over + 1) / 3, 3: (0.6 + 0.2 / over + 1) / 3}, b: {1: (0.7 + 0.5 / over + 1) / 3}}
    for i, e in entries.items():
        assert e["signals"]["model"] == pytest.approx(1.0)
        got = {inst["index"]: inst["confidence"] for inst in e["instances"]}
        assert got == pytest.approx(expected[i])
        assert e["confidence"] == pytest.approx((min(expected[i].values()) + 1.0) / 2)
    coco = json.loads((tmp_path / "export" / "pseudo_labels.json").read_text())
    assert len(coco["annotations"]) == 3
    shown = {what: value for _, value, what in tiles((tmp_path / "report" / "index.html").read_text())}
    assert shown["pseudo-instances"] == str(len(coco["annotations"]))
    assert shown["instances per image"] == f"{len(coco['annotations']) / 2:.2f}"
    # the least confident shown instance of the first image is instance 3, the second shown
    marked, texts, _ = report_gallery.instance_labels(entries[a], job.dataset.class_names)
    assert marked == 1 and len(texts) == 2
    # the review export: exactly the COCO export's masks and classes, image by image
    wsis_id = {im["id"]: im["wsis_id"] for im in coco["images"]}
    exported = {i: sorted((mask_utils.decode(ann["segmentation"]).astype(bool).tobytes(), ann["category_id"] - 1)
                          for ann in coco["annotations"] if wsis_id[ann["image_id"]] == i) for i in job.ids}
    for item in review_items(queue, job.dataset, tmp_path / "ins_seg", None):
        assert sorted((m.tobytes(), c) for m, c, _, _ in item["instances"]) == exported[item["id"]]
        assert exported[item["id"]] == sorted((m.tobytes(), c) for m, c in truth[item["id"]].values())


def test_the_report_reads_the_masks_from_report_rows(tiny_data, tmp_path):
    """The confidences (model agreement) and the gallery pictures come from report_rows' rows
    and seg_infer: with the instance maps gone the report is the same."""
    from pipelines.stages import report

    job, _, _ = hand_built_run(tiny_data, tmp_path)
    report.run(job)
    queue = (tmp_path / "report" / "queue.json").read_text()
    shutil.rmtree(tmp_path / "report")
    shutil.rmtree(tmp_path / "ins_seg")
    (tmp_path / "ins_seg").mkdir()
    (tmp_path / "report").mkdir()
    report.run(job)
    assert (tmp_path / "report" / "queue.json").read_text() == queue


def test_the_export_rule_is_in_the_fingerprints_of_report_rows_and_report(tiny_data):
    """report_rows holds only the exported instances: a change of export.score_threshold or
    export.min_area makes it (and the report) stale."""
    from conftest import TINY
    from pipelines.cache import stale_reason
    from pipelines.dag import STAGES
    from pipelines.engine import Pipeline
    from wsis.config import load_config
    from wsis.data import open_dataset

    def fingerprints(**export):
        cfg = load_config("synthetic", TINY)
        cfg["export"].update(export)
        pipeline = Pipeline(STAGES, cfg, open_dataset("synthetic", cfg, tiny_data), tiny_data / "no-work-dir")
        return {s: pipeline.fingerprint(pipeline.stages[s]) for s in ("report_rows", "report")}

    before = fingerprints()
    for change in ({"score_threshold": 0.5}, {"min_area": 7}):
        after = fingerprints(**change)
        for stage in ("report_rows", "report"):
            assert after[stage][0] != before[stage][0], (stage, change)
            assert "config [export] changed" in stale_reason(before[stage][1], after[stage][1])


# ------------------------------------------------------- the report's per-image work on Dask
def finished_report_job(tiny_data, work):
    """The report stage's job on the finished stages of ``work`` (a copy of the tiny run)."""
    from conftest import TINY
    from pipelines.dag import STAGES
    from pipelines.engine import Pipeline
    from pipelines.stages.report import _finished_job
    from wsis.config import load_config
    from wsis.data import open_dataset
    cfg = load_config("synthetic", TINY)
    return _finished_job(Pipeline(STAGES, cfg, open_dataset("synthetic", cfg, tiny_data), work))


def report_files(report_dir):
    """{name: bytes} of every file of the report (pages, queue, plots, pictures)."""
    return {p.relative_to(report_dir).as_posix(): p.read_bytes() for p in sorted(report_dir.rglob("*"))
            if p.is_file()}


def test_the_report_drawn_on_dask_workers_is_the_one_drawn_here(tiny_data, tiny_run, tmp_path, capsys, monkeypatch):
    """The report's per-image work (confidences, gallery rows, their pictures) as tasks on Dask
    workers (``Job.map_ids`` on the engine's runner: 8 chunks of 2 images) writes the report
    that the same work in this process writes, byte for byte: queue, pages, picture names and
    pictures; each draws every picture once, from an empty report folder."""
    import dataclasses

    from pipelines import runner as runner_module
    from pipelines.runner import DaskRunner
    from pipelines.stages import report

    monkeypatch.setattr(runner_module, "COLD_START_MIN_IMAGES", 0)   # 16 images start the workers
    built = {}
    for where in ("here", "dask"):
        work = tmp_path / where
        shutil.copytree(tiny_run, work)
        shutil.rmtree(work / "report")
        job = finished_report_job(tiny_data, work)
        (work / "report").mkdir()
        capsys.readouterr()
        if where == "here":
            report.run(job)
        else:
            runner = DaskRunner(None, 2, "cpu")
            try:
                report.run(dataclasses.replace(job, mapper=runner.map_ids))
                assert runner.client is not None             # the tasks went to the workers
            finally:
                runner.close()
        built[where] = report_files(work / "report")
        pictures = [n for n in built[where] if n.startswith("cache/")]
        assert f"report: {len(pictures)} pictures drawn, 0 unchanged" in capsys.readouterr().out
    assert built["here"].keys() == built["dask"].keys()
    assert {n for n in built["here"] if n.startswith("cache/")}            # pictures were drawn
    for name in built["here"]:
        assert built["here"][name] == built["dask"][name], name


def test_a_kept_picture_that_is_damaged_or_of_another_size_is_drawn_again(tiny_data, tiny_run, tmp_path, capsys):
    """The report trusts a picture kept from an earlier build only when it decodes whole at the
    size it should have: a rebuild draws nothing; a truncated picture and one of another size
    are drawn again, the same bytes as before."""
    from pipelines.stages import report

    work = tmp_path / "work"
    shutil.copytree(tiny_run, work)
    job = finished_report_job(tiny_data, work)
    cache = work / "report" / "cache"
    good = {p.name: p.read_bytes() for p in sorted(cache.iterdir())}
    capsys.readouterr()
    report.run(job)
    assert f"report: 0 pictures drawn, {len(good)} unchanged" in capsys.readouterr().out
    truncated, resized = sorted(good)[:2]
    (cache / truncated).write_bytes(good[truncated][:len(good[truncated]) // 2])
    with Image.open(cache / resized) as im:
        im.resize((im.width + 1, im.height)).save(cache / resized, format="JPEG")
    report.run(job)
    assert f"report: 2 pictures drawn, {len(good) - 2} unchanged" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in sorted(cache.iterdir())} == good


def test_a_rebuild_keeps_its_plots_and_imports_neither_pytorch_nor_matplotlib(tiny_data, tiny_run, tmp_path):
    """``wsis report`` when nothing a plot shows changed (a refresh after a review import):
    every plot is the file drawn before, untouched, and the command imports neither PyTorch
    (the report runs no model; the tiny config trains in float32, so no stage needs PyTorch to
    resolve run.amp) nor matplotlib. A plot whose file is damaged, or whose recorded data
    differs, is drawn again, the same bytes as before."""
    import sys

    from conftest import snapshot, tiny_args
    from pipelines.cache import MANIFEST

    work = tmp_path / "work"
    shutil.copytree(tiny_run, work)
    plots_dir = work / "report" / "plots"
    good = {p.name: p.read_bytes() for p in plots_dir.glob("*.png")}
    assert set(good) == set(PLOTS)

    def rebuild():
        (work / "report" / MANIFEST).unlink(missing_ok=True)   # not up to date: wsis report builds it again
        code = ("import sys\nfrom wsis.cli import main\nmain(sys.argv[1:], standalone_mode=False)\n"
                "print('imported:', *[m for m in ('torch', 'matplotlib') if m in sys.modules])")
        proc = subprocess.run([sys.executable, "-c", code, "report", *map(str, tiny_args(tiny_data, work))],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    before = {n: v for n, v in snapshot(plots_dir).items() if n.endswith(".png")}
    out = rebuild()
    assert "imported:\n" in out                     # neither module
    assert {n: v for n, v in snapshot(plots_dir).items() if n.endswith(".png")} == before

    (plots_dir / "loss.png").write_bytes(good["loss.png"][:100])
    keys = json.loads((plots_dir / "keys.json").read_text())
    keys["histograms.png"] = "0" * 64
    (plots_dir / "keys.json").write_text(json.dumps(keys))
    assert "matplotlib" in rebuild()
    assert {p.name: p.read_bytes() for p in plots_dir.glob("*.png")} == good
    assert json.loads((plots_dir / "keys.json").read_text())["histograms.png"] != "0" * 64


def test_the_pr_legend_of_twenty_classes_covers_neither_the_curves_nor_the_title(tmp_path, monkeypatch):
    """VOC's 20 classes: the legend sits beside the axes, inside the picture, and every class
    has its own (colour, line style)."""
    from wsis.report import plots
    seen = {}
    save = plots._save

    def measuring_save(fig, path):
        fig.tight_layout()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        seen.update(legend=ax.get_legend().get_window_extent(renderer), axes=ax.get_window_extent(renderer),
                    title=ax.title.get_window_extent(renderer), figure=fig.bbox,
                    styles={(line.get_color(), line.get_linestyle()) for line in ax.lines})
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", measuring_save)
    recall = np.linspace(0, 1, 20)
    curves = {f"class {k}": (recall, 1 - recall * k / 20) for k in range(20)}
    assert plots.pr_curves(curves, tmp_path / "pr.png", "pseudo-labels [train]: PR at IoU 0.5").is_file()
    assert not seen["legend"].overlaps(seen["axes"]) and not seen["legend"].overlaps(seen["title"])
    assert seen["figure"].x0 <= seen["legend"].x0 and seen["legend"].x1 <= seen["figure"].x1
    assert seen["figure"].y0 <= seen["legend"].y0 and seen["legend"].y1 <= seen["figure"].y1
    assert len(seen["styles"]) == 20
