"""Guards on the test tiers themselves: a slow or huge test that nothing runs in the default tier rots
unseen (a huge test once called an engine function with an argument list it no longer took). Every
test function that has slow or huge cases must also have a case in the default tier, its smallest."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def collected(marks: str) -> set[str]:
    """Test functions (file::name, parameters dropped) collected under ``-m marks``."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m",
                           marks], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 5), proc.stdout[-3000:] + proc.stderr[-3000:]  # 5: nothing collected
    return {re.sub(r"\[.*$", "", line) for line in proc.stdout.splitlines() if "::" in line}


def test_every_slow_or_huge_test_also_runs_a_small_case_in_the_default_tier():
    heavy = collected("slow or huge")
    default = collected("not slow and not huge")
    assert heavy, "no slow or huge test collected"
    missing = sorted(heavy - default)
    assert not missing, f"slow/huge tests without a default-tier case: {missing}"


def test_shards_balance_by_measured_seconds():
    """CI's two lanes (conftest.py --shard): the measured tests longest first to the least loaded
    shard; the others every N-th."""
    import conftest

    assert conftest.assign(["a", "b", "c", "d"], 2, {"a": 10, "b": 1, "c": 1, "d": 8}) == [0, 1, 1, 1]
    assert conftest.assign(["a", "b", "c", "d", "e"], 2, {}) == [0, 1, 0, 1, 0]
    assert conftest.assign(["a", "new", "b", "new2"], 2, {"a": 5, "b": 1, "c": 3}) == [0, 0, 1, 1]
