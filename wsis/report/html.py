"""The static HTML report: ``index.html`` (metrics, plots, the first gallery page) and
``page-N.html`` (further gallery pages), with every image a file beside them. No script, no
style sheet or font from elsewhere: it opens from a disk, a share or a plain web server."""

from __future__ import annotations

from html import escape
from pathlib import Path

from wsis.io import write_bytes

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{margin-top:0} table.metrics{border-collapse:collapse;font-size:13px}
table.metrics td,table.metrics th{border:1px solid #ccc;padding:2px 8px;text-align:left}
table.metrics td.v{text-align:right;font-variant-numeric:tabular-nums}
.plots img{margin:4px;border:1px solid #ddd;max-width:100%}
table.gallery{border-collapse:collapse} table.gallery td,table.gallery th{border-top:1px solid #ddd;
padding:4px;vertical-align:top;font-size:12px} figure{display:inline-block;margin:0 4px 0 0;text-align:center}
figcaption{font-size:11px;color:#555} table.gallery img{height:120px;width:auto;image-rendering:pixelated} .nav a{margin-right:.6em} .low{color:#b03a2e;font-weight:bold}
"""


NOTE_KEYS = ("scored_on",)   # text that qualifies a stage's numbers (eval_seg: held-out or training images)


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


def metric_rows(metrics: dict) -> list[tuple[str, str, str, str]]:
    """(stage, split, key, formatted value) for every number a stage reported."""
    return [(s, sp, k, f"{v:.4f}" if isinstance(v, float) else str(v)) for s, sp, k, v in metric_items(metrics)]


def _page(title: str, body: str) -> bytes:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n").encode()


def _nav(page: int, pages: int) -> str:
    links = []
    for p in range(1, pages + 1):
        name = "index.html" if p == 1 else f"page-{p}.html"
        links.append(f"<b>{p}</b>" if p == page else f"<a href=\"{name}\">{p}</a>")
    return f"<p class=\"nav\">Gallery pages: {' '.join(links)}</p>" if pages > 1 else ""


def gallery_row(row: dict) -> str:
    """``row``: rank, id, confidence, note, cells [(src, width, height, caption)]."""
    figures = "".join(
        f"<figure><img src=\"{escape(src)}\" width=\"{w}\" height=\"{h}\" loading=\"lazy\" alt=\"{escape(cap)}\">"
        f"<figcaption>{escape(cap)}</figcaption></figure>" for src, w, h, cap in row["cells"])
    cls = " class=\"low\"" if row["confidence"] < 0.5 else ""
    return (f"<tr class=\"row\"><th>#{row['rank']}<br>{escape(row['id'])}<br>"
            f"<span{cls}>conf {row['confidence']:.3f}</span><br>{escape(row['note'])}</th><td>{figures}</td></tr>")


def write_report(out_dir: Path, title: str, summary: str, metrics: dict, plots: list[tuple[str, str]],
                 rows: list[dict], rows_per_page: int = 50) -> Path:
    """Write index.html and the further gallery pages; ``plots`` are (file, caption)."""
    pages = max(1, -(-len(rows) // rows_per_page))
    table = "".join(f"<tr><td>{escape(s)}</td><td>{escape(sp)}</td><td>{escape(k)}</td><td class=\"v\">{v}</td></tr>"
                    for s, sp, k, v in metric_rows(metrics))
    head = (f"<h1>{escape(title)}</h1><p>{summary}</p>"
            f"<h2>Metrics</h2><table class=\"metrics\"><tr><th>stage</th><th>split</th><th>metric</th>"
            f"<th>value</th></tr>{table}</table>"
            f"<h2>Plots</h2><div class=\"plots\">"
            + "".join(f"<figure><img class=\"plot\" src=\"{escape(f)}\" alt=\"{escape(c)}\"><figcaption>{escape(c)}"
                      f"</figcaption></figure>" for f, c in plots) + "</div>")
    for page in range(1, pages + 1):
        chunk = rows[(page - 1) * rows_per_page: page * rows_per_page]
        body = (head if page == 1 else f"<h1>{escape(title)}</h1><p><a href=\"index.html\">metrics and plots</a></p>")
        body += (f"<h2>Gallery, least confident first (page {page} of {pages})</h2>{_nav(page, pages)}"
                 f"<table class=\"gallery\">{''.join(gallery_row(r) for r in chunk)}</table>{_nav(page, pages)}")
        write_bytes(out_dir / ("index.html" if page == 1 else f"page-{page}.html"), _page(title, body))
    return out_dir / "index.html"
