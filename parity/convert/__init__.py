"""Weights between frameworks: the one weight-mapping engine (``rules``), the twins' maps and
conversion (``twins``), checkpoint files (``files``) and exact array moves (``arrays``)."""

from parity.convert.rules import RULES, Layout, MappingError, WeightMap
from parity.convert.twins import (
    ConversionError,
    checkpoint_shapes,
    classifier_size,
    expected_state_dict,
    fits,
    flax_to_torch,
    identify,
    torch_to_flax,
    twin_map,
    verify,
)

__all__ = ["RULES", "Layout", "MappingError", "WeightMap", "ConversionError", "checkpoint_shapes",
           "classifier_size", "expected_state_dict", "fits", "flax_to_torch", "identify", "torch_to_flax",
           "twin_map", "verify"]
