"""pytest plugin (registered through the ``pytest11`` entry point): the ``parity`` fixture.

    def test_my_port(parity):
        parity(TorchNet(), FlaxNet(), torch.randn(4, 3, 32, 32))

fails with the first bad layer and both frameworks' distances, and returns the ``Result`` when it
passes; what it could not judge (too few samples, an ill-conditioned quantity) is a
``NotJudgedWarning``. Importing this plugin imports neither torch nor jax.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest


class NotJudgedWarning(UserWarning):
    """A parity check passed with some quantity not judged (docs/parity.md, "When nothing is judged")."""


def failure_message(result: Any) -> str:
    """What a failed check says first: the first bad layer with its float64 structure error and each
    framework's working-dtype distance to float64, then the failures, the doctor and the table."""
    from parity.check.judgement import fmt

    head = "parity: FAIL"
    bad = next((la for la in result.layers if la["name"] == result.first_bad_layer), None)
    if bad:
        head += (f" at layer {bad['name']!r}: float64 structure {fmt(bad['struct'])}, torch "
                 f"{fmt(bad['torch_dist'])} vs flax {fmt(bad['flax_dist'])} from float64")
    elif result.first_bad_layer:
        head += f" at layer {result.first_bad_layer!r}"
    return f"{head}\n{result.report()}"


def assert_parity(torch_module: Any, flax_module: Any, inputs: Any, **options: Any) -> Any:
    """``parity.check_pair``, raising AssertionError (``failure_message``) unless it passes."""
    from parity.check.engine import check_pair

    result = check_pair(torch_module, flax_module, inputs, **options)
    if not result.passed:
        raise AssertionError(failure_message(result))
    if not result.complete:
        warnings.warn("parity: passed, but not judged: " + "; ".join(result.not_judged()), NotJudgedWarning,
                      stacklevel=2)
    return result


@pytest.fixture
def parity() -> Callable[..., Any]:
    """``parity(torch_module, flax_module, inputs, **options)``: see ``parity.check_pair``."""
    return assert_parity
