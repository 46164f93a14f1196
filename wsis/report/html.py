"""The static HTML report: ``index.html`` and ``page-N.html``, with every image a file beside them.
No script, no style sheet or font from elsewhere: it opens from a disk, a share or a plain web
server.

``index.html`` leads with what to fix: a headline (pseudo-label quality in percentages where
there is ground truth, else instance counts and the confidence distribution), then "review
these first" (the least confident images not yet reviewed, each with its least confident
instance marked), the plots, every figure the stages recorded (folded), and the first gallery
page. ``page-N.html`` holds the further gallery pages."""

from __future__ import annotations

from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np

from wsis.io import write_bytes

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1600px}
h1{margin:0 0 .2em} h2{margin:1.2em 0 .4em;font-size:1.25em} p.summary{margin:0;color:#444}
.tiles{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin-bottom:8px}
.tiles .group{width:7em;font-size:13px;font-weight:600;color:#555}
.tile{border:1px solid #ccc;border-radius:6px;padding:6px 12px;min-width:8em;background:#fafafa}
.tile .value{display:block;font-size:1.7em;font-weight:600;
font-variant-numeric:tabular-nums} .tile .what{display:block;font-size:13px} .tile .where{display:block;
font-size:11px;color:#666} p.counts{font-size:13px;color:#444;margin:.6em 0 0}
ol.first{display:flex;flex-wrap:wrap;gap:12px;list-style:none;padding:0;margin:0}
ol.first li{width:240px;font-size:12px;line-height:1.35} ol.first img{display:block;border:1px solid #ccc;
height:180px;width:auto;max-width:240px;object-fit:contain;image-rendering:pixelated} ol.first .id{font-weight:600}
table.metrics{border-collapse:collapse;font-size:13px;margin-top:.5em}
table.metrics td,table.metrics th{border:1px solid #ccc;padding:2px 8px;text-align:left}
table.metrics td.v{text-align:right;font-variant-numeric:tabular-nums} details summary{cursor:pointer;font-weight:600}
.plots figure{margin:4px;vertical-align:top} .plots img{border:1px solid #ddd;max-width:100%}
table.gallery{border-collapse:collapse} table.gallery td,table.gallery th{border-top:1px solid #ddd;
padding:4px;vertical-align:top;font-size:12px;text-align:left;font-weight:normal} table.gallery th{width:11em}
table.gallery th .id{font-weight:600} tr.reviewed{background:#eef7ee}
.badge{display:inline-block;border-radius:3px;padding:0 5px;font-size:11px;color:#fff;background:#2e7d32}
figure{display:inline-block;margin:0 4px 0 0;text-align:center} figcaption{font-size:11px;color:#555}
table.gallery img{height:120px;width:auto;image-rendering:pixelated} .nav a{margin-right:.6em}
.low{color:#b03a2e;font-weight:bold} :target{outline:3px solid #e0a000}
"""

LOW_CONFIDENCE = 0.5   # confidences under it are red (text and gallery labels): the objects to look at
NOTE_KEYS = ("scored_on",)   # text that qualifies a stage's numbers (eval_seg: held-out or training images)

# the headline with ground truth: (stage, key, what it is); a pseudo-label stage's figures on
# the split the pipeline labels, the trained model's on every split it was scored on
HEADLINE = (("eval_cam", "miou", "CAM mIoU"),
            ("eval_sem_seg", "miou", "semantic pseudo-labels mIoU"),
            ("eval_ins_seg", "mAP50", "pseudo-instances mAP50"),
            ("eval_ins_seg", "mAP70", "pseudo-instances mAP70"),
            ("eval_ins_seg", "coco_AP", "pseudo-instances COCO AP"),
            ("eval_seg", "mAP50", "mAP50"),
            ("eval_seg", "coco_AP", "COCO AP"))
MODEL_STAGES = ("eval_seg",)     # scored on the splits it names (scored_on), not on the labelled split


def metric_items(metrics: dict):
    """(stage, split, key, value) for every number in ``{stage: {split: {key: value}}}``, and
    the notes of ``NOTE_KEYS``."""
    for stage, per_split in metrics.items():
        for split, values in per_split.items():
            if isinstance(values, dict):
                for key, v in values.items():
                    if (isinstance(v, (int, float)) and not isinstance(v, bool)) or \
                            (key in NOTE_KEYS and isinstance(v, str)):
                        yield stage, split, key, v


def figure_kind(key: str, value) -> str:
    """What a recorded figure is: "score" (a fraction, shown in %), "setting" (a threshold
    the run used), "count" (an integer or a mean count) or "note" (text)."""
    if isinstance(value, str):
        return "note"
    if isinstance(value, int):
        return "count"
    if key.endswith("threshold"):
        return "setting"
    return "count" if key.endswith("per_image") else "score"


def shown_value(key: str, value) -> str:
    """A figure as the report and the command line show it: scores in percent with one
    decimal, settings and mean counts with two decimals, counts and notes as they are."""
    kind = figure_kind(key, value)
    if kind == "score":
        return f"{100 * value:.1f}"
    if kind in ("setting", "count") and isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def metric_rows(metrics: dict) -> list[tuple[str, str, str, str, str]]:
    """(stage, split, key, shown value, kind) for every figure a stage recorded."""
    return [(s, sp, k, shown_value(k, v), figure_kind(k, v)) for s, sp, k, v in metric_items(metrics)]


def quality_figures(metrics: dict, split: str) -> list[dict]:
    """The headline with ground truth: each of ``HEADLINE`` that the stages recorded, as
    {"value" (in %), "what", "where", "group" (pseudo-labels or trained model),
    "source": (stage, split, key)}."""
    figures = []
    for stage, key, what in HEADLINE:
        per_split = metrics.get(stage, {})
        splits = [s for s in per_split if isinstance(per_split[s], dict)] if stage in MODEL_STAGES else [split]
        for sp in splits:
            values = per_split.get(sp, {})
            value = values.get(key)
            if isinstance(value, float):
                where = values.get("scored_on", f"split '{sp}'")
                if "model" in values:
                    where = f"{values['model']}, {where}"
                figures.append({"value": f"{shown_value(key, value)} %", "what": what, "where": where,
                                "group": "trained model" if stage in MODEL_STAGES else "pseudo-labels",
                                "source": (stage, sp, key)})
    return figures


def count_figures(queue: dict) -> list[dict]:
    """The headline without ground truth: images, instances, instances per image, how many
    images and instances are under ``LOW_CONFIDENCE``, the image confidence quartiles, and
    how many images were reviewed."""
    images = queue["images"]
    n_images = len(images)
    image_conf = np.array([e["confidence"] for e in images], np.float64)
    instance_conf = [i["confidence"] for e in images for i in e["instances"]]
    reviewed = sum(bool(e.get("reviewed")) for e in images)
    figures = [
        {"value": str(n_images), "what": "images", "where": "in the review queue"},
        {"value": str(len(instance_conf)), "what": "pseudo-instances", "where": "before review"},
        {"value": f"{len(instance_conf) / max(n_images, 1):.2f}", "what": "instances per image", "where": "mean"},
        {"value": f"{int((image_conf < LOW_CONFIDENCE).sum())} of {n_images}",
         "what": f"images under confidence {LOW_CONFIDENCE}", "where": "their confidence in red below"},
        {"value": f"{sum(c < LOW_CONFIDENCE for c in instance_conf)} of {len(instance_conf)}",
         "what": f"instances under confidence {LOW_CONFIDENCE}", "where": "red labels in the gallery"}]
    if n_images:
        q1, q2, q3 = np.percentile(image_conf, [25, 50, 75])
        figures.append({"value": f"{q1:.2f} / {q2:.2f} / {q3:.2f}", "what": "image confidence quartiles",
                        "where": "25 / 50 / 75 % of images below"})
    figures.append({"value": f"{reviewed} of {n_images}", "what": "images reviewed", "where": "wsis review import"})
    return figures


def headline(metrics: dict, split: str, queue: dict) -> dict:
    """{"title", "figures", "counts"}: pseudo-label quality where the stages measured it against
    ground truth (with the counts as one line of text), else the counts as figures."""
    quality = quality_figures(metrics, split)
    counts = count_figures(queue)
    if quality:
        return {"title": "Pseudo-label quality", "figures": quality,
                "counts": "; ".join(f"{f['what']}: {f['value']}" for f in counts)}
    return {"title": "Pseudo-labels (no ground truth to score them)", "figures": counts, "counts": ""}


def least_confident_instance(entry: dict) -> dict | None:
    """The queue entry's instance with the lowest confidence (the one its image's confidence
    comes from); None for an image without instances."""
    return min(entry["instances"], key=lambda i: (i["confidence"], i["index"]), default=None)


def _page(title: str, body: str) -> bytes:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n").encode()


def page_name(page: int) -> str:
    return "index.html" if page == 1 else f"page-{page}.html"


def row_anchor(image_id: str) -> str:
    """The id attribute of an image's gallery row."""
    return f"img-{image_id}"


def _nav(page: int, pages: int) -> str:
    links = [f"<b>{p}</b>" if p == page else f"<a href=\"{page_name(p)}\">{p}</a>" for p in range(1, pages + 1)]
    return f"<p class=\"nav\">Gallery pages: {' '.join(links)}</p>" if pages > 1 else ""


def _confidence(value: float) -> str:
    cls = " class=\"low\"" if value < LOW_CONFIDENCE else ""
    return f"<span{cls}>{value:.2f}</span>"


def gallery_row(row: dict) -> str:
    """``row``: rank, id, confidence, note, cells [(src, width, height, caption)], and
    optionally reviewed (bool) and worst (text on its least confident instance)."""
    figures = "".join(
        f"<figure><img src=\"{escape(src)}\" width=\"{w}\" height=\"{h}\" loading=\"lazy\" alt=\"{escape(cap)}\">"
        f"<figcaption>{escape(cap)}</figcaption></figure>" for src, w, h, cap in row["cells"])
    reviewed = row.get("reviewed", False)
    badge = "<br><span class=\"badge\">reviewed</span>" if reviewed else ""
    worst = f"<br>least confident: {escape(row['worst'])}" if row.get("worst") else ""
    return (f"<tr class=\"row{' reviewed' if reviewed else ''}\" id=\"{escape(row_anchor(row['id']))}\">"
            f"<th>#{row['rank']} <span class=\"id\">{escape(row['id'])}</span>{badge}<br>"
            f"confidence {_confidence(row['confidence'])}{worst}<br>{escape(row['note'])}</th>"
            f"<td>{figures}</td></tr>")


def _tile(figure: dict) -> str:
    source = f" data-source=\"{escape(' '.join(figure['source']))}\"" if "source" in figure else ""
    return (f"<div class=\"tile\"{source}><span class=\"value\">{escape(figure['value'])}</span>"
            f"<span class=\"what\">{escape(figure['what'])}</span>"
            f"<span class=\"where\">{escape(figure['where'])}</span></div>")


def _headline_section(head: dict) -> str:
    groups: dict[str, list[dict]] = {}
    for f in head["figures"]:
        groups.setdefault(f.get("group", ""), []).append(f)
    rows = "".join(f"<div class=\"tiles\">" + (f"<span class=\"group\">{escape(g)}</span>" if g else "")
                   + "".join(_tile(f) for f in figures) + "</div>" for g, figures in groups.items())
    counts = f"<p class=\"counts\">{escape(head['counts'])}</p>" if head["counts"] else ""
    return f"<section id=\"headline\"><h2>{escape(head['title'])}</h2>{rows}{counts}</section>"


def _review_first_section(first: list[dict], rows_per_page: int) -> str:
    """``first``: gallery rows (rank, id, confidence, worst: text or None) with their
    first_picture (src, width, height)."""
    items = []
    for f in first:
        href = f"{page_name((f['rank'] - 1) // rows_per_page + 1)}#{quote(row_anchor(f['id']))}"
        src, w, h = f["first_picture"]
        worst = (f"least confident: <span class=\"worst\">{escape(f['worst'])}</span> (outlined)"
                 if f["worst"] else "no instance found: is something missing?")
        items.append(f"<li><a href=\"{escape(href)}\"><img class=\"first\" src=\"{escape(src)}\" width=\"{w}\" "
                     f"height=\"{h}\" alt=\"{escape(f['id'])}\"></a>"
                     f"<span class=\"id\">#{f['rank']} {escape(f['id'])}</span> "
                     f"confidence {_confidence(f['confidence'])}<br>{worst}<br>"
                     f"<a href=\"{escape(href)}\">its gallery row</a></li>")
    body = (f"<ol class=\"first\">{''.join(items)}</ol>" if items
            else "<p>No image is waiting for review: every image in the queue has been reviewed.</p>")
    return (f"<section id=\"review-first\"><h2>Review these first</h2><p class=\"summary\">The least confident "
            f"images not yet reviewed; each image's least confident instance is outlined in white and black, "
            f"its label red. Labels: class and confidence, red under {LOW_CONFIDENCE}.</p>{body}</section>")


def write_report(out_dir: Path, title: str, summary: str, metrics: dict, plots: list[tuple[str, str]],
                 rows: list[dict], rows_per_page: int = 50, head: dict | None = None,
                 first: list[dict] | None = None) -> Path:
    """Write index.html and the further gallery pages; ``plots`` are (file, caption), ``head``
    is ``headline``'s, ``first`` the "review these first" images (see _review_first_section)."""
    pages = max(1, -(-len(rows) // rows_per_page))
    figures = metric_rows(metrics)
    table = "".join(f"<tr><td>{escape(s)}</td><td>{escape(sp)}</td><td>{escape(k)}</td><td class=\"v\">"
                    f"{escape(v)}</td><td>{kind}</td></tr>" for s, sp, k, v, kind in figures)
    lead = f"<h1>{escape(title)}</h1><p class=\"summary\">{summary}</p>"
    if head is not None:
        lead += _headline_section(head)
    if first is not None:
        lead += _review_first_section(first, rows_per_page)
    lead += ("<section id=\"plots\"><h2>Plots</h2><div class=\"plots\">"
             + "".join(f"<figure><img class=\"plot\" src=\"{escape(f)}\" alt=\"{escape(c)}\"><figcaption>{escape(c)}"
                       f"</figcaption></figure>" for f, c in plots) + "</div></section>"
             f"<details id=\"all-figures\"><summary>Every figure the stages recorded ({len(figures)}): "
             f"scores in %, settings and counts as they are</summary><table class=\"metrics\"><tr><th>stage</th>"
             f"<th>split</th><th>figure</th><th>value</th><th>kind</th></tr>{table}</table></details>")
    for page in range(1, pages + 1):
        chunk = rows[(page - 1) * rows_per_page: page * rows_per_page]
        body = (lead if page == 1 else
                f"<h1>{escape(title)}</h1><p><a href=\"index.html\">headline, review first, plots and figures</a></p>")
        body += (f"<h2 id=\"gallery\">Gallery, least confident first (page {page} of {pages})</h2>"
                 f"<p class=\"summary\">Pseudo-instance labels: class and confidence, red under {LOW_CONFIDENCE}; "
                 f"each image's least confident instance outlined in white and black. Reviewed images: green rows."
                 f"</p>{_nav(page, pages)}"
                 f"<table class=\"gallery\">{''.join(gallery_row(r) for r in chunk)}</table>{_nav(page, pages)}")
        write_bytes(out_dir / page_name(page), _page(title, body))
    return out_dir / "index.html"
