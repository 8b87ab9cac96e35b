"""Test-run options of this repository (not of the pytest plugin users get): ``--shard K/N`` keeps
every N-th collected test starting at the K-th, so that CI runs the default tier as two processes
side by side (.ci/run). Neighbours in collection order are mostly cases of one test function, and
alternating them balances the shards' time."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shard", default=None, metavar="K/N",
                     help="run only the tests whose collection index is K-1 modulo N (1 <= K <= N)")


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--shard expects K/N with integers, e.g. 1/2; got {text!r}") from None
    if not 1 <= k <= n:
        raise pytest.UsageError(f"--shard expects 1 <= K <= N; got {text!r}")
    return k, n


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected theirs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    text = config.getoption("--shard")
    if text is None:
        return
    k, n = _shard(text)
    keep = [it for i, it in enumerate(items) if i % n == k - 1]
    config.hook.pytest_deselected(items=[it for i, it in enumerate(items) if i % n != k - 1])
    items[:] = keep
