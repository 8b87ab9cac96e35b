"""Kept from 0.1 for ``from parity.config import Config``: what a check runs now lives in
``parity.check.config`` and the tolerances in ``parity.check.tolerances``."""

from parity.check.config import Config
from parity.check.tolerances import STRUCT_RTOL, TOLERANCES, Tolerance

__all__ = ["Config", "STRUCT_RTOL", "TOLERANCES", "Tolerance"]
