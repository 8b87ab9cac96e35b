"""scripts/gpu_check.sh rehearsed on CPU (GPU_CHECK_CPU=1): the same steps at tiny sizes, so that the one
GPU run a session may get works on its first try: every step within one time budget, its log and report
written as it runs, at most 8 files back (docs/benchmark.md, "The GPU check")."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def rehearse(out: Path, budget: int, steps: str = "") -> tuple[int, str, dict[str, str]]:
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_CPU": "1", "GPU_CHECK_BUDGET": str(budget),
           "GPU_CHECK_STEPS": steps, "PY": sys.executable}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          env=env, timeout=budget + 120, cwd=ROOT)
    summary = (out / "summary.md").read_text()
    rows = {cells[1].strip(): cells[2].strip() for line in summary.splitlines()
            if line.startswith("| ") and not line.startswith("| step") and (cells := line.split("|"))}
    return proc.returncode, proc.stdout + proc.stderr, rows


def unpacked(out: Path, tmp: Path) -> Path:
    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        names = tar.getnames()
        assert all(n.count("/") <= 2 for n in names), names  # at most 2 folders below $OUT
        tar.extractall(tmp, filter="data")
    return tmp / "work"


@pytest.mark.parametrize("steps", [
    "preflight bench-resnet20-bf16",  # a check step is `parity check` as test_check.py runs it
    pytest.param("", marks=pytest.mark.slow, id="every step"),
], ids=["check and bench", "every step"])
def test_rehearsal_runs_its_steps_and_packs_three_files(tmp_path, steps):
    out = tmp_path / "out"
    code, log, rows = rehearse(out, 420, steps)
    assert code == 0, log
    assert {p.name for p in out.iterdir()} == {"summary.md", "preflight.txt", "gpu-check.tar.gz"}
    assert (out / "preflight.txt").read_text().rstrip().endswith("preflight: ok")
    want = steps.split() or ["preflight", "check-fp32-highest", "bench-resnet20-bf16", "check-bf16-default",
                             "bench-resnet20-fp32"]
    assert {k: v for k, v in rows.items() if k != "check-dp"} == dict.fromkeys(want, "ok"), rows
    work = unpacked(out, tmp_path / "x")
    if "check-fp32-highest" in want:
        check = json.loads((work / "check-fp32-highest" / "report.json").read_text())
        assert check["results"]["resnet20"]["ok"]
    bench = json.loads((work / "bench-resnet20-bf16" / "throughput.json").read_text())
    assert {r["framework"] for r in bench["results"]} == {"jax", "torch-eager"} and not bench["refused"]


def test_a_spent_budget_skips_steps_says_so_and_still_packs(tmp_path):
    out = tmp_path / "out"
    code, log, rows = rehearse(out, 30)  # 15 s after the packing reserve: under the preflight's 20
    assert code == 1, log
    assert rows["preflight"].startswith("skipped (") and "check-fp32-highest" not in rows
    assert {p.name for p in out.iterdir()} <= {"summary.md", "preflight.txt", "gpu-check.tar.gz"}
    assert (out / "gpu-check.tar.gz").exists()
