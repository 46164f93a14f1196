"""The HTML report: its files, its pages, and how it renders in headless Chromium."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

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
        elif tag == "tr" and a.get("class") == "row":
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
    gallery = [img for img in page.imgs if img.get("class") != "plot"]
    assert gallery and all(img.get("loading") == "lazy" and img.get("width") and img.get("height")
                           for img in gallery)
    queue = json.loads((report / "queue.json").read_text())
    ids = re.findall(r"<tr class=\"row\"><th>#\d+<br>([^<]+)<br>", (report / "index.html").read_text())
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
    assert dom.stdout.count('<tr class="row">') == 16
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
