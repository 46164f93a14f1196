"""benchmarks/report.py --quick (issue 28 part 4): 12 small generated images, the real pipeline
with light training (every stage but the report's two), then the timed first build of the
report and its refresh after one reviewed image (about 65 s on the 2-core machine, two thirds
of it the setup). The figures' keys are checked, not the times: they are positive and finite,
and the refresh draws only the pictures that changed."""

import json
import math
import subprocess
import sys

from conftest import ROOT


def test_report_bench_quick(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--quick", "--work",
                           str(tmp_path / "work"), "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["images"] == 12 and result["reviewed"] == 1
    for key in ("first_build_s_per_image", "refresh_fraction", "first_build_seconds", "refresh_seconds"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["first_build_s_per_image"] == result["first_build_seconds"] / 12
    assert result["refresh_fraction"] == result["refresh_seconds"] / result["first_build_seconds"]
    assert {"report_rows", "report"} <= set(result["first_build_stage_seconds"])
    # one reviewed image: its reviewed-masks picture, and its pseudo-instances picture when its
    # label marks change; plus "review these first" pictures of images entering that list
    assert 1 <= result["refresh_pictures_drawn"] < result["refresh_pictures_unchanged"]
    assert "first_build_s_per_image" in proc.stdout and "refresh_fraction" in proc.stdout
