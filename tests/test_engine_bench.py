"""scripts/engine_bench.py on the smallest transformer-shaped pair: the check passes and its report
carries the check's cost, whole and per phase (the figures docs/results.md quotes for large models)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_engine_bench_reports_time_and_memory_per_phase(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/engine_bench.py", "--models", "", "--transformer", "tiny",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "engine.json").read_text())
    assert row["name"] == "tiny" and row["verdict"].startswith("PASS") and row["params"] == 27749
    cost = row["cost"]
    assert [p["name"] for p in cost["phases"]][:3] == ["torch float64", "torch float64, one-ulp start",
                                                        "flax float64"]
    assert cost["peak_bytes"] >= row["process_base_bytes"] > 0 and cost["seconds"] > 0
    assert "| tiny | 0.0M | PASS" in (tmp_path / "engine.md").read_text()
    bad = subprocess.run([sys.executable, "scripts/engine_bench.py", "--models", "", "--transformer", "huge",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown transformer size 'huge'" in bad.stderr
