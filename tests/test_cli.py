"""The command line's own promises: help and list stay light."""

import subprocess
import sys

import pytest

PROBE = """
import sys
from parity.__main__ import main
try:
    main({argv!r})
except SystemExit:
    pass
print("HEAVY", sorted(m for m in ("torch", "jax", "flax", "optax") if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["bench", "--help"], ["experiment", "degradation", "--help"]])
def test_help_and_list_import_neither_torch_nor_jax(argv):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                         timeout=120).stdout
    assert "HEAVY []" in out, out[-500:]
