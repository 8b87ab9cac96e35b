"""Parity of a torch module and a Flax module, judged against float64 (docs/parity.md): the engine
(``engine``), what it runs (``config``, ``tolerances``, ``weights``, ``pairs``), each side's runs
(``runners``), distances (``statistics``), verdicts (``judgement``), the ``doctor``, ``nnx`` and the
pytest plugin (``pytest_plugin``, loaded by pytest in every session: it must stay light, so nothing
here is imported before it is used).

``parity.check`` is this package and, called, the twins' check: ``parity.check("resnet20", steps=2)``
is ``parity.check.check(Config("resnet20", steps=2))``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

_API = {"Config": "parity.check.config", "Result": "parity.check.judgement", "check": "parity.check.engine",
        "check_pair": "parity.check.engine", "run_pair": "parity.check.engine"}
__all__ = sorted(_API)

if TYPE_CHECKING:
    from parity.check.config import Config as Config
    from parity.check.engine import check as check
    from parity.check.engine import check_pair as check_pair
    from parity.check.engine import run_pair as run_pair
    from parity.check.judgement import Result as Result


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'parity.check' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return importlib.import_module("parity.check.engine").check(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
