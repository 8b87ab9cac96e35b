"""Test-run options of this repository (not of the pytest plugin users get), for CI's two lanes
(.ci/run):

- ``--shard K/N`` runs the K-th of N shards of the collected tests. With a durations file (measured
  seconds per test, ``tests/data/test_durations.json``) the shards are balanced by those times
  (longest first, each to the least loaded shard); the tests without a figure, every N-th.
- ``--record-durations FILE`` writes each test's measured seconds (setup, call and teardown) into
  FILE, merged with what FILE already holds: the next shards' balance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DURATIONS = Path(__file__).parent / "tests" / "data" / "test_durations.json"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shard", default=None, metavar="K/N", help="run only the K-th of N shards (1 <= K <= N)")
    parser.addoption("--durations-file", default=str(DURATIONS), metavar="FILE",
                     help="measured seconds per test, to balance the shards (default: %(default)s)")
    parser.addoption("--record-durations", default=None, metavar="FILE",
                     help="write each test's measured seconds into FILE (merged with its contents)")


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--shard expects K/N with integers, e.g. 1/2; got {text!r}") from None
    if not 1 <= k <= n:
        raise pytest.UsageError(f"--shard expects 1 <= K <= N; got {text!r}")
    return k, n


def _read(path: str) -> dict[str, float]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}


def assign(ids: list[str], n: int, seconds: dict[str, float]) -> list[int]:
    """The shard (0..n-1) of each test: those with a figure in ``seconds`` longest first, each to the
    least loaded shard; the others (many short ones) every n-th, so that their unknown times split
    evenly."""
    load = [0.0] * n
    out = [0] * len(ids)
    for i in sorted((i for i in range(len(ids)) if ids[i] in seconds), key=lambda i: -seconds[ids[i]]):
        out[i] = min(range(n), key=lambda j: load[j])
        load[out[i]] += seconds[ids[i]]
    for j, i in enumerate(i for i in range(len(ids)) if ids[i] not in seconds):
        out[i] = j % n
    return out


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected theirs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    text = config.getoption("--shard")
    if text is None:
        return
    k, n = _shard(text)
    shards = assign([it.nodeid for it in items], n, _read(config.getoption("--durations-file")))
    config.hook.pytest_deselected(items=[it for it, s in zip(items, shards, strict=True) if s != k - 1])
    items[:] = [it for it, s in zip(items, shards, strict=True) if s == k - 1]


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--record-durations")
    if path and _measured:
        merged = {**_read(path), **{k: round(v, 2) for k, v in _measured.items()}}
        Path(path).write_text(json.dumps(dict(sorted(merged.items())), indent=0) + "\n")
