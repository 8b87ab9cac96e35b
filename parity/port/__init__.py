"""``parity.port``: a PyTorch model written as readable Flax source, with its weights and the proof that it
computes the same thing (docs/port.md).

    p = parity.port(torch_module, example_inputs)      # -> Port; raises PortError listing what it cannot write
    p.passed, p.source, p.flax_module, p.variables, p.result
    p.save("out/")                                       # model.py, weights, weight_map.json, test_port.py, report.md
"""

from __future__ import annotations

import copy
import dataclasses
import json
import resource
import sys
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.port.trace import PortError

if TYPE_CHECKING:
    import flax.linen as fnn
    import torch

    from parity.check.judgement import Result
    from parity.convert.rules import WeightMap

__all__ = ["port", "Port", "PortError", "build", "load_weight_map", "proof_module", "without_dropout"]

APIS = ("linen", "nnx")
PROOF = {"samples": 5, "steps": 0}  # the proof's check: 5 runs per side, one SGD step (docs/port.md)


@dataclasses.dataclass
class Port:
    """A written port: ``source`` (model.py), its root class ``flax_module`` (Linen; NNX: built, holding the
    weights) with ``variables`` (the torch module's weights, moved by ``weight_map``), and ``result``, the
    proof (``check_pair``)."""

    source: str
    root: str  # the root class's name in ``source``
    flax_module: fnn.Module
    variables: dict
    weight_map: WeightMap
    result: Result
    report: str
    torch_module: torch.nn.Module
    input_shapes: list[tuple[int, ...]]
    input_dtypes: list[str]
    proof: dict  # the check_pair options the proof ran with
    spec: dict = dataclasses.field(default_factory=dict)  # how to build the torch module again (the CLI's)
    api: str = "linen"

    @property
    def passed(self) -> bool:
        return self.result.passed

    def save(self, out: str | Path, force: bool = False, fmt: str = "safetensors") -> Path:
        """Write the port into folder ``out`` (refused if it exists, unless ``force``)."""
        from parity.port import files

        return files.save(self, Path(out), force=force, fmt=fmt)


def _inputs(example_inputs: Any) -> tuple:
    import torch

    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"example input {i}: expected a torch.Tensor, got {type(a).__name__}")
    return args


def is_layer(m: torch.nn.Module) -> bool:
    """A module the op table writes as a Flax layer (everything else is traced into)."""
    from parity.port import ops

    return ops.layer_handler(m) is not None


def rule_for(module: torch.nn.Module, leaf: str) -> tuple[str, str]:
    """(Flax leaf name, layout kind) of a raw parameter, by the weight rules (``parity.convert.rules``)."""
    from parity.convert import rules

    for cls in type(module).__mro__:
        r = rules.RULES.get((cls.__name__, leaf))
        if r is not None:
            return r.leaf, r.layout.kind
    return leaf, "copy"


def without_dropout(module: torch.nn.Module) -> torch.nn.Module:
    """A copy with every dropout and stochastic-depth rate 0: the frameworks cannot draw the same masks."""
    import torch

    m = copy.deepcopy(module)
    for sub in m.modules():
        if isinstance(sub, torch.nn.modules.dropout._DropoutNd) or type(sub).__name__ == "StochasticDepth":
            sub.p = 0.0
    return m


_LOADED = [0]


def _load(source: str, name: str) -> types.ModuleType:
    """``source`` as a module (registered: dataclasses read its annotations through sys.modules)."""
    _LOADED[0] += 1
    name = f"{name}_{_LOADED[0]}"
    mod = types.ModuleType(name)
    sys.modules[name] = mod
    exec(compile(source, f"<port {name}>", "exec"), mod.__dict__)  # the source this run just wrote
    return mod


def write(torch_module: torch.nn.Module, example_inputs: Any, api: str = "linen") -> tuple[str, str, str, dict]:
    """(model.py, the proof's model.py with dropout rates 0, the root class, notes) for ``torch_module``;
    ``PortError`` listing every operation that cannot be written, before anything is."""
    import torch

    from parity.port import ops, source, trace

    if api not in APIS:
        raise ValueError(f"api: expected one of {APIS}, got {api!r}")
    if not isinstance(torch_module, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(torch_module).__name__}")
    args = _inputs(example_inputs)
    work = copy.deepcopy(torch_module).float()
    try:
        with torch.no_grad():
            work.eval()(*args)
    except Exception as e:
        raise ValueError(f"the torch module rejects inputs of shapes {[tuple(a.shape) for a in args]}: "
                         f"{type(e).__name__}: {e}") from e
    traced = trace.walk(work.eval(), args, is_layer)
    train_traced = trace.walk(work.train(), args, is_layer)
    work.eval()
    modules = dict(work.named_modules())
    bodies, train_bodies, problems = source.emit_all(traced, train_traced, ops.table(), rule_for, api)
    unused = [p for p, m in modules.items() if p and p not in traced and not is_layer(m)
              and not any(q.startswith(p + ".") for q in traced) and list(m.parameters(recurse=False))]
    problems += [f"{p} ({type(modules[p]).__name__}): never called in forward; its weights could not be ported"
                 for p in unused]
    if problems:
        raise PortError(problems)
    classes_text, classes, names = source.assemble(bodies, train_bodies, modules, api)
    helpers = set().union(*(b.helpers for b in [*bodies.values(), *train_bodies.values()]))
    root = names[""]
    note = (f"Flax {'NNX' if api == 'nnx' else 'Linen'} port of {type(torch_module).__module__}."
            f"{type(torch_module).__qualname__}, written by parity port (docs/port.md).\n\nImages and volumes are "
            f"channels-last; parameter paths are torch's keys with Flax's leaf names (weight_map.json moves the "
            f"weights both ways)."
            + ("\nBuild with rngs=nnx.Rngs(0); model.eval() for inference, model.train() for training (a dropout "
               "needs a 'dropout' stream)." if api == "nnx" else ""))
    notes = {
        "classes": [f"{c.name}: {c.torch_class} ({len(c.instances)} instance(s)"
                    + (f"; fields {', '.join(c.fields)}" if c.fields else "") + ")" for c in classes],
        "suffixed": [f"{c.name}: instances of {c.base} that run another graph than {c.base}'s" for c in classes
                     if c.name != c.base],
        "layouts": sorted({x for b in bodies.values() for x in b.layouts}),
        "concrete": [f"{p or '(root)'}: traced with the example's concrete shapes (its Python depends on them)"
                     for p, t in traced.items() if t.concrete],
        "train_graphs": [f"{p or '(root)'}: its forward reads self.training; both graphs written (if train: ...)"
                         for p in train_bodies],
        "layer_layouts": {k: v for b in bodies.values() for k, v in b.layer_layouts.items()},
        # raw parameters stored in the order in which they broadcast against channels-last maps
        "param_axes": {f"{p}.{k}" if p else k: axes for p, b in [*bodies.items(), *train_bodies.items()]
                       for k, axes in b.param_axes.items()},
    }
    for k, a in notes["param_axes"].items():
        shape = tuple(work.get_parameter(k).shape)
        notes["layouts"].append(f"{k}: torch's {shape} stored as {tuple(shape[i] for i in a)} (it broadcasts "
                                f"against a channels-last map; the weight map permutes it)")
    text = source.module_file(classes_text, helpers, root, note, api)
    return text, source.zero_dropout(text), root, notes


def port(torch_module: torch.nn.Module, example_inputs: Any, *, api: str = "linen", **check_options: Any) -> Port:
    """Write ``torch_module`` as Flax source and prove it on ``example_inputs`` (torch's layout):
    ``check_pair`` of the torch module and the port (dropout rates 0 on both sides), float64 structure
    and working-dtype precision, eval and train mode, every gradient, an optimizer step;
    ``check_options`` as ``check_pair``'s (default samples=5, steps=0). ``api``: "linen" (``flax.linen``
    modules) or "nnx" (native ``flax.nnx`` modules, the same names and the same proof)."""
    import jax
    import numpy as np

    from parity.check import nnx as nnx_check
    from parity.check import pairs
    from parity.check.engine import check_pair
    from parity.convert import rules

    start = time.perf_counter()
    text, proof_text, root, notes = write(torch_module, example_inputs, api)
    written = time.perf_counter() - start
    final, proof = _load(text, "ported_model"), _load(proof_text, "ported_model_proof")
    args = _inputs(example_inputs)
    arrays = tuple(a.detach().cpu().numpy() for a in args)
    images = check_options.get("images", True)
    fargs = pairs.flax_args(tuple(a.astype(np.float32) if a.dtype.kind == "f" else a for a in arrays), images)
    flax_root, proof_root = build(final, root, api), build(proof, root, api)
    if api == "linen":
        shapes = jax.eval_shape(lambda *a: flax_root.init(jax.random.key(0), *a), *fargs)
    else:
        shapes = nnx_check.variables(flax_root)
    flax_shapes = {k: tuple(v.shape) for k, v in rules.flatten(shapes).items()}
    sd = torch_module.state_dict()
    wmap = rules.WeightMap.match({k: tuple(v.shape) for k, v in sd.items()}, rules.module_types(torch_module),
                                 flax_shapes, layouts={k: rules.Layout("permute", axes=tuple(a))
                                                       for k, a in notes["param_axes"].items()})
    options = {**PROOF, **check_options}
    layouts = notes["layer_layouts"]
    result = check_pair(without_dropout(torch_module), proof_root, args, weight_map=wmap,
                        layer_layouts=layouts, **options)
    proof_s = time.perf_counter() - start - written
    variables = wmap.to_flax({k: v.detach().cpu().numpy() for k, v in sd.items()})
    if api == "nnx":  # an NNX module holds its weights
        nnx_check.load(flax_root, variables)
    report = _report(torch_module, result, notes, written, proof_s, options)
    high = max([int(a.max()) + 1 for a in args if not a.is_floating_point()], default=2)
    return Port(text, root, flax_root, variables, wmap, result, report, torch_module,
                [tuple(a.shape) for a in args], [str(a.dtype).removeprefix("torch.") for a in args],
                {**{k: v for k, v in options.items() if k in ("samples", "steps", "images", "seed")},
                 "layer_layouts": layouts},
                {"token_high": high}, api)


def build(module: types.ModuleType, root: str, api: str = "linen") -> Any:
    """The root class of a written ``model.py``, built: a Linen module, or an NNX one (``rngs=nnx.Rngs(0)``)."""
    cls = getattr(module, root)
    if api == "linen":
        return cls()
    from flax import nnx

    return cls(rngs=nnx.Rngs(0))


def _report(torch_module: torch.nn.Module, result: Result, notes: dict, written_s: float, proof_s: float,
            options: dict) -> str:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    lines = [f"# Port of {type(torch_module).__module__}.{type(torch_module).__qualname__}", "",
             f"Verdict: {result.verdict()}"
             + ("" if result.passed else f" (first bad layer: {result.first_bad_layer})"),
             "", f"Cost: traced and written in {written_s:.1f} s; proof {proof_s:.1f} s ({options}), peak RSS "
             f"{peak:.2f} GiB.", "", "Dropout and stochastic-depth rates were 0 on both sides for the proof: the "
             "frameworks cannot draw the same masks. model.py holds the real rates.", "",
             "## The proof (check_pair)", "", "```", result.report(), "```", ""]
    for title, key in (("Classes", "classes"), ("Classes with a suffix", "suffixed"),
                       ("Where the port chose a layout", "layouts"), ("Traced with concrete shapes", "concrete"),
                       ("Modules with a train-mode graph of their own", "train_graphs")):
        if notes[key]:
            lines += [f"## {title}", "", *[f"- {x}" for x in notes[key]], ""]
    if result.findings:
        lines += ["## Doctor", "", *[f"- {f}" for f in result.findings], ""]
    return "\n".join(lines)


def proof_module(model_py: str | Path) -> types.ModuleType:
    """A saved port's ``model.py`` as the proof runs it: every dropout and stochastic-depth rate 0."""
    from parity.port import source

    return _load(source.zero_dropout(Path(model_py).read_text()), "ported_model_proof")


def load_weight_map(folder: str | Path) -> WeightMap:
    """A saved port's weight map (``weight_map.json``)."""
    from parity.convert.rules import WeightMap

    return WeightMap.from_json(json.loads((Path(folder) / "weight_map.json").read_text()))


class _CallableModule(types.ModuleType):
    """``parity.port`` is this package and, called, ``port()`` (as ``parity.check``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Port:
        return port(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
