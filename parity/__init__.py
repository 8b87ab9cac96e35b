"""torch-flax-parity: parity of PyTorch and Flax models judged against float64, checkpoint conversion,
a fair throughput benchmark, and the twin VGG/ResNet nets (docs/architecture.md).

The public API, imported on first use (``import parity`` imports neither torch nor jax)::

    parity.check("resnet20", steps=2)            # the built-in twins (a Config works too)
    parity.check_pair(torch_module, flax_module, inputs)
    parity.torch_to_flax(state_dict, "resnet50"); parity.flax_to_torch(variables, "resnet50")
    parity.load(path); parity.save(path, obj)    # safetensors, .pt/.pth, msgpack, Orbax
    parity.port(torch_module, example_inputs)    # a torch model as Flax source, proven (parity.port.Port)
    parity.bench_pair("mynet:TorchNet", "mynet:FlaxNet", (16, 3, 64, 64))  # throughput rows, same work checked
    parity.Config, parity.Result, parity.CheckpointError, parity.ConversionError, parity.MappingError
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None: the module itself
_API: dict[str, tuple[str, str | None]] = {
    "check": ("parity.check", None),  # a package that is also callable: parity.check(...) runs its check()
    "check_pair": ("parity.check.engine", "check_pair"),
    "Config": ("parity.check.config", "Config"),
    "Result": ("parity.check.judgement", "Result"),
    "torch_to_flax": ("parity.convert.twins", "torch_to_flax"),
    "flax_to_torch": ("parity.convert.twins", "flax_to_torch"),
    "ConversionError": ("parity.convert.twins", "ConversionError"),
    "MappingError": ("parity.convert.rules", "MappingError"),
    "load": ("parity.convert.files", "load"),
    "save": ("parity.convert.files", "save"),
    "CheckpointError": ("parity.convert.files", "CheckpointError"),
    "port": ("parity.port", None),  # a package that is also callable: parity.port(...) runs its port()
    "bench_pair": ("parity.bench.runs", "bench_pair"),
    "PortError": ("parity.port.trace", "PortError"),
    # module names kept from 0.1 (``from parity import specs, io``)
    "specs": ("netspecs", None),
    "io": ("parity.convert.files", None),
}
__all__ = sorted(_API)

if TYPE_CHECKING:
    from parity.bench.runs import bench_pair as bench_pair
    from parity.check.config import Config as Config
    from parity.check.engine import check as check
    from parity.check.engine import check_pair as check_pair
    from parity.check.judgement import Result as Result
    from parity.convert.files import CheckpointError as CheckpointError
    from parity.convert.files import load as load
    from parity.convert.files import save as save
    from parity.convert.rules import MappingError as MappingError
    from parity.convert.twins import ConversionError as ConversionError
    from parity.convert.twins import flax_to_torch as flax_to_torch
    from parity.convert.twins import torch_to_flax as torch_to_flax
    from parity.port import port as port
    from parity.port.trace import PortError as PortError


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'parity' has no attribute {name!r}")
    module, attr = _API[name]
    obj = importlib.import_module(module)
    return obj if attr is None else getattr(obj, attr)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
