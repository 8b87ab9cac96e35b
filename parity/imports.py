"""Objects named by import strings, ``package.module:name`` (a user's ``mynet:TorchNet``, or
``torchvision.models:resnet50``), for the commands that take users' models."""

from __future__ import annotations

import importlib
import sys
from typing import Any


class SpecError(ValueError):
    """An import string that does not name an importable object."""


def load(spec: str) -> Any:
    """The object ``spec`` names; the current folder is importable, as for ``python -m``."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise SpecError(f"expected MODULE:NAME (e.g. examples.convnet:TorchConvNet), got {spec!r}")
    module, name = spec.split(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        obj = importlib.import_module(module)
    except Exception as e:  # a module that fails while importing is the user's to see, whole
        raise SpecError(f"cannot import {module!r} (from {spec}): {type(e).__name__}: {e}") from e
    for part in name.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{module!r} has no attribute {name!r} (from {spec})")
        obj = getattr(obj, part)
    return obj


def build(spec: str, kwargs: dict | None = None) -> Any:
    """``load(spec)(**kwargs)``: a class or a factory called with the given keyword arguments."""
    factory = load(spec)
    if not callable(factory):
        raise SpecError(f"{spec} is a {type(factory).__name__}, not a class or function to call")
    try:
        return factory(**(kwargs or {}))
    except TypeError as e:
        raise SpecError(f"{spec}(**{kwargs or {}}) failed: {e}") from e


def torch_module(spec: str, kwargs: dict | None = None, weights: str | None = None) -> Any:
    """``build(spec, kwargs)``, checked to be a ``torch.nn.Module``, with the state_dict file ``weights``
    loaded strictly (every missing, unexpected and mis-shaped key named in one ``ValueError``)."""
    import torch

    from parity.convert import files

    model = build(spec, kwargs)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{spec} built a {type(model).__name__}, not a torch.nn.Module")
    if weights:
        state = files.load(weights)
        if not files.is_state_dict(state):
            raise files.CheckpointError(f"{weights}: expected a torch state_dict, got Flax variables")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:  # torch lists every missing, unexpected and mis-shaped key
            raise ValueError(f"{weights} does not fit {spec}: {e}") from e
    return model
