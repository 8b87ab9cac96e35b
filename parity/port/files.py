"""A saved port: ``model.py``, the converted weights, ``weight_map.json`` (both directions), ``port.json``
(how to rebuild the torch side and the proof's settings), ``test_port.py`` (the proof again, through the
pytest plugin) and ``report.md``. Written into a temporary folder beside ``out`` and renamed into place,
so a failed save leaves nothing half written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parity.port import Port

FORMATS = {"safetensors": "variables.safetensors", "msgpack": "variables.msgpack"}

TEST = '''"""The port proven again against the torch module it came from (`pytest test_port.py`): parity's
pytest plugin, the same weight map, dropout rates 0 on both sides (the frameworks cannot draw the
same masks). Written by parity port."""

import json
from pathlib import Path

import torch
from parity.port import load_weight_map, proof_module, without_dropout

HERE = Path(__file__).parent
META = json.loads((HERE / "port.json").read_text())


def torch_module():
{torch_module}


def example_inputs():
    torch.manual_seed(0)
    return tuple(torch.randn(s) if d.startswith(("float", "bfloat")) else torch.randint(0, META["token_high"], s)
                 for s, d in zip(META["input_shapes"], META["input_dtypes"]))


def test_port(parity):
    flax_module = getattr(proof_module(HERE / "model.py"), META["root"])()
    result = parity(without_dropout(torch_module()), flax_module, example_inputs(),
                    weight_map=load_weight_map(HERE), **META["proof"])
    assert result.passed
'''

FROM_SPEC = '''    import importlib
    import sys

    sys.path.insert(0, META["cwd"])
    module, name = META["spec"].split(":")
    m = getattr(importlib.import_module(module), name)(**META["kwargs"])
    if META.get("weights"):
        from parity.convert import files

        m.load_state_dict(files.load(META["weights"]), strict=True)
    return m'''

FROM_PICKLE = '''    # the module as the Python API received it (pickled: its classes must be importable)
    return torch.load(HERE / "torch_module.pt", weights_only=False)'''


def save(p: Port, out: Path, force: bool = False, fmt: str = "safetensors") -> Path:
    import torch

    from parity.convert import files

    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {sorted(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass force=True (--force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "model.py").write_text(p.source)
        files.save(tmp / FORMATS[fmt], p.variables)
        (tmp / "weight_map.json").write_text(json.dumps(p.weight_map.to_json(), indent=1))
        spec = p.spec or {}
        meta = {"root": p.root, "input_shapes": [list(s) for s in p.input_shapes], "input_dtypes": p.input_dtypes,
                "token_high": spec.get("token_high", 2), "proof": p.proof, "weights_file": FORMATS[fmt],
                "verdict": p.result.verdict(), **{k: v for k, v in spec.items() if k != "token_high"}}
        (tmp / "port.json").write_text(json.dumps(meta, indent=1))
        if not spec.get("spec"):
            torch.save(p.torch_module, tmp / "torch_module.pt")
        build = FROM_SPEC if spec.get("spec") else FROM_PICKLE
        (tmp / "test_port.py").write_text(TEST.replace("{torch_module}", build))
        (tmp / "report.md").write_text(p.report)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
