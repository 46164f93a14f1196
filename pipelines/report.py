"""The metrics table printed at the end of a run."""

from __future__ import annotations

from wsis.report.html import metric_items, shown_value


def metrics_table(metrics: dict) -> str:
    rows = [(stage, split, key, value) for stage, split, key, value in metric_items(metrics)
            # scored_on: whether eval_seg scored held-out or training images
            if (isinstance(value, float) and not key.endswith("threshold")) or key == "scored_on"]
    if not rows:
        return ""
    w = [max(len(r[i]) for r in rows + [("stage", "split", "metric", 0)]) for i in range(3)]
    lines = [f"{'stage':<{w[0]}}  {'split':<{w[1]}}  {'metric':<{w[2]}}  value",
             "-" * (sum(w) + 13)]
    for stage, split, key, value in rows:
        # as the HTML report shows it: scores in %, mean counts as they are
        lines.append(f"{stage:<{w[0]}}  {split:<{w[1]}}  {key:<{w[2]}}  {shown_value(key, value):>5}")
    return "\n".join(lines)
