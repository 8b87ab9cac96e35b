"""A saved port: ``model.py``, the converted weights, ``weight_map.json`` (both directions), ``port.json``
(how to rebuild the torch side and the proof's settings), ``test_port.py`` (the proof again, through the
pytest plugin) and ``report.md``. Written into a temporary folder beside ``out`` and renamed into place,
so a failed save leaves nothing half written."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import flax.linen as fnn
    import torch
    from flax import nnx

    from parity.port import Port

# format -> the weights' name in the folder (Orbax's is a checkpoint directory)
FORMATS = {"safetensors": "variables.safetensors", "msgpack": "variables.msgpack", "orbax": "variables"}

TEST = '''"""The port proven again against the torch module it came from (`pytest test_port.py`): parity's
pytest plugin, the same weight map, dropout rates 0 on both sides (the frameworks cannot draw the
same masks). Written by parity port."""

import json
from pathlib import Path

from parity.port import build, files, load_weight_map, proof_module, without_dropout

HERE = Path(__file__).parent
META = json.loads((HERE / "port.json").read_text())


def torch_module():
    # built from port.json's spec (module:callable, kwargs, weights), or torch_module.pt if the port was
    # made from Python
    return files.torch_module(HERE)


def test_port(parity):
    flax_module = build(proof_module(HERE / "model.py"), META["root"], META.get("api", "linen"))
    result = parity(without_dropout(torch_module()), flax_module, files.example_inputs(HERE),
                    weight_map=load_weight_map(HERE), **META["proof"])
    assert result.passed
'''

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
        files.save(tmp / FORMATS[fmt], p.variables, fmt=fmt)
        (tmp / "weight_map.json").write_text(json.dumps(p.weight_map.to_json(), indent=1))
        spec = p.spec or {}
        meta = {"root": p.root, "input_shapes": [list(s) for s in p.input_shapes], "input_dtypes": p.input_dtypes,
                "token_high": spec.get("token_high", 2), "proof": p.proof, "weights_file": FORMATS[fmt],
                "verdict": p.result.verdict(), "api": p.api, **{k: v for k, v in spec.items() if k != "token_high"}}
        (tmp / "port.json").write_text(json.dumps(meta, indent=1))
        if not spec.get("spec"):
            torch.save(p.torch_module, tmp / "torch_module.pt")
        (tmp / "test_port.py").write_text(TEST)
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


def meta(folder: str | Path) -> dict:
    """A saved port's ``port.json``; ``ValueError`` naming the folder if it is not a saved port."""
    path = Path(folder) / "port.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder}: not a saved port (expected port.json written by parity port): {e}") from e


def torch_module(folder: str | Path) -> torch.nn.Module:
    """The torch module a saved port came from: built from port.json's spec (and weights), or unpickled
    from torch_module.pt when the port was made from Python (its classes must be importable)."""
    import torch

    from parity import imports
    from parity.convert import files

    folder, info = Path(folder), meta(folder)
    if not info.get("spec"):
        return torch.load(folder / "torch_module.pt", weights_only=False)  # the user's own folder
    sys.path.insert(0, info["cwd"])
    try:
        m = imports.build(info["spec"], info.get("kwargs", {}))
    finally:
        sys.path.remove(info["cwd"])
    if info.get("weights"):
        m.load_state_dict(files.load(info["weights"]), strict=True)
    return m


def flax_module(folder: str | Path) -> fnn.Module | nnx.Module:
    """The root module of a saved port's ``model.py`` (an NNX port's built with ``rngs=nnx.Rngs(0)``)."""
    from parity.port import _load, build

    info = meta(folder)
    return build(_load((Path(folder) / "model.py").read_text(), "ported_model"), info["root"],
                 info.get("api", "linen"))


def example_inputs(folder: str | Path, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the saved port's example shapes and dtypes (integers below its token bound)."""
    import torch

    info = meta(folder)
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=g) if d.startswith(("float", "bfloat"))
                 else torch.randint(0, info["token_high"], s, generator=g)
                 for s, d in zip(info["input_shapes"], info["input_dtypes"], strict=True))


def convert(folder: str | Path, obj: dict) -> tuple[str, dict]:
    """(target framework, converted checkpoint) for a checkpoint of a saved port's model: a torch
    state_dict becomes Flax variables and Flax variables a state_dict, by its ``weight_map.json``.
    ``MappingError`` listing every key or shape that does not fit the map."""
    from collections import OrderedDict

    from parity.convert import arrays, twins
    from parity.convert.rules import TORCH_ONLY, MappingError
    from parity.port import load_weight_map

    meta(folder)  # a saved port, or a clear error
    wmap = load_weight_map(folder)
    kind, shapes = twins.checkpoint_shapes(obj)
    if kind == "torch":
        want = dict(wmap.torch_shapes)
        have = {k: s for k, s in shapes.items() if k.rpartition(".")[2] not in TORCH_ONLY or k in want}
    else:
        want, have = dict(wmap.flax_shapes), shapes
    name = (lambda k: k) if kind == "torch" else (lambda k: "/".join(k))
    problems = [f"{name(k)}: missing (expected shape {tuple(s)})" for k, s in want.items() if k not in have]
    problems += [f"{name(k)}: not in the port's weight map" for k in have if k not in want]
    problems += [f"{name(k)}: shape {tuple(have[k])}, the port has {tuple(want[k])}"
                 for k in want if k in have and tuple(have[k]) != tuple(want[k])]
    if problems:
        raise MappingError(f"the checkpoint does not fit the port in {folder} ({len(problems)} problem(s)):\n  "
                           + "\n  ".join(problems))
    if kind == "torch":
        return "flax", wmap.to_flax({k: arrays.to_numpy(v, copy=False) if hasattr(v, "detach") else np.asarray(v)
                                     for k, v in obj.items() if k in want})
    return "torch", OrderedDict((k, arrays.to_torch(a)) for k, a in wmap.to_torch(obj).items())


def verify(folder: str | Path, state_dict: dict, variables: dict) -> tuple[float, float]:
    """(max |torch - flax|, max |torch|) of the port's torch module holding ``state_dict`` and its
    model.py holding ``variables``, eval mode, on random inputs of the port's example shapes, float32."""
    import jax
    import torch

    from parity import layout
    from parity.check import nnx, pairs
    from parity.convert import arrays

    tm = torch_module(folder).float().eval()
    tm.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}, strict=True)
    args = example_inputs(folder)
    with torch.no_grad():
        yt = [np.asarray(y.detach().numpy(), np.float32) for y in jax.tree_util.tree_leaves(tm(*args))]
    v32 = jax.tree_util.tree_map(arrays.as_float32, variables)
    fargs = pairs.flax_args(tuple(a.numpy() for a in args), True)
    fm = flax_module(folder)
    fm = nnx.LinenView(fm) if nnx.is_nnx(fm) else fm
    yj = [np.asarray(y) for y in jax.tree_util.tree_leaves(fm.apply(v32, *fargs))]
    if len(yt) != len(yj):
        raise ValueError(f"the torch module returned {len(yt)} arrays, the port {len(yj)}")
    # an image output is channels-last on the Flax side
    yt = [t if t.shape == j.shape else layout.channels_last(t, True) for t, j in zip(yt, yj, strict=True)]
    return (max(float(np.abs(t - j).max()) for t, j in zip(yt, yj, strict=True)),
            max(float(np.abs(t).max()) for t in yt))
