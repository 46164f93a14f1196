"""The metrics table printed at the end of a run."""

from __future__ import annotations

def metrics_table(metrics: dict) -> str:
    rows = []
    for stage, per_split in metrics.items():
        for split, m in per_split.items():
            if not isinstance(m, dict):
                continue
            for key, value in m.items():
                is_score = isinstance(value, float) and not key.endswith("threshold")
                if is_score or key == "scored_on":      # scored_on: eval_seg's held-out or training images
                    rows.append((stage, split, key, value))
    if not rows:
        return ""
    w = [max(len(r[i]) for r in rows + [("stage", "split", "metric", 0)]) for i in range(3)]
    lines = [f"{'stage':<{w[0]}}  {'split':<{w[1]}}  {'metric':<{w[2]}}  value",
             "-" * (sum(w) + 13)]
    for stage, split, key, value in rows:
        shown = value if isinstance(value, str) else f"{100 * value:5.1f}"
        lines.append(f"{stage:<{w[0]}}  {split:<{w[1]}}  {key:<{w[2]}}  {shown}")
    return "\n".join(lines)
