"""The port's front end: a torch module's tree, each module that is no known layer traced on its own
(its children as leaves) with ``torch.fx``, and every graph value's example shape from one forward
pass of the example inputs (docs/port.md, "How a model is read").

Python that depends on shapes (padding computed from ``x.size()``, ``if h != w``) makes symbolic
tracing fail; such a module is traced again with the example's concrete shapes (``MetaTracer``), and
the report says so: its port holds those shapes.
"""

from __future__ import annotations

import dataclasses
import inspect
import linecache
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    import torch.fx as fx


class PortError(ValueError):
    """A module that cannot be ported: every unsupported operation, each with where it is."""

    def __init__(self, problems: list[str], what: str = "cannot port this model"):
        self.problems = problems
        super().__init__(f"{what} ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))


@dataclasses.dataclass
class Traced:
    """One traced module: its graph (children as leaves), its example inputs' and every node's example
    value (``meta``: node name -> tensor, tuple, int...), and how it was traced."""

    path: str  # in the root's named_modules ("" for the root)
    module: torch.nn.Module
    graph: fx.Graph
    meta: dict[str, Any]
    concrete: bool  # traced with the example's concrete shapes
    lists: dict[str, int] = dataclasses.field(default_factory=dict)  # argument -> length, for list arguments


def _user_line() -> str:
    """The innermost frame outside torch and this module, as a traceback line with its source: where a
    node was made. (fx's ``record_stack_traces`` would do it too, but imports torch._dynamo: 5 s.)"""
    f = sys._getframe(2)
    while f is not None:
        file = f.f_code.co_filename
        if "/torch/" not in file and file != __file__:
            return f'File "{file}", line {f.f_lineno}, in {f.f_code.co_name}\n    ' \
                   f"{linecache.getline(file, f.f_lineno).strip()}"
        f = f.f_back
    return ""


class _Where:
    """A tracer mixin: each node's ``meta["stack_trace"]`` is the user's line that made it."""

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta["stack_trace"] = _user_line()
        return node


def _qualname(root: torch.nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in root.named_modules(remove_duplicate=False)}


def _snapshot(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_snapshot(v) for v in x)
    return x


def example_inputs(root: torch.nn.Module, args: tuple) -> dict[str, tuple]:
    """Module path -> the positional arguments of its first call, from one forward pass of ``args``."""
    import torch

    seen: dict[str, tuple] = {}
    handles = []
    for name, m in root.named_modules():
        def hook(_m: torch.nn.Module, a: tuple, kw: dict, name: str = name) -> None:
            if name not in seen:  # copies: a caller may go on appending to a list it passed (DenseNet)
                seen[name] = tuple(_snapshot(x) for x in a)
                if kw:
                    seen[name + "\0kwargs"] = kw
        handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            root(*args)
    finally:
        for h in handles:
            h.remove()
    return seen


def trace_module(module: torch.nn.Module, inputs: tuple, is_layer: Callable[[torch.nn.Module], bool],
                 path: str) -> Traced:
    """``module``'s forward as an fx graph in which every submodule is a leaf, every node's example
    value recorded (a ShapeProp-style pass on the example inputs)."""
    import torch.fx as fx

    class Tracer(_Where, fx.Tracer):
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return m is not module

    # a list of tensors (DenseNet's layers take their block's features so far): one placeholder each
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    lists = {p.name: len(a) for p, a in zip(params, inputs, strict=False) if isinstance(a, (list, tuple))}
    concrete_args = {name: [fx.PH] * n for name, n in lists.items()} or None
    concrete = False
    try:
        tracer = Tracer()
        graph = tracer.trace(module, concrete_args=concrete_args)
    except Exception as symbolic:  # Python that depends on shapes: trace with the example's shapes
        graph = _concrete_trace(module, inputs, path, symbolic)
        concrete = True
    gm = fx.GraphModule(module, graph)
    return Traced(path, module, graph, _run(gm, inputs), concrete, lists)


def _concrete_trace(module: torch.nn.Module, inputs: tuple, path: str, error: Exception) -> fx.Graph:
    import torch
    from torch.fx.experimental import meta_tracer

    class Tracer(_Where, meta_tracer.MetaTracer):
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return m is not module

    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    meta_args = {p.name: a.to("meta") for p, a in zip(params, inputs, strict=False) if isinstance(a, torch.Tensor)}
    try:
        tracer = Tracer()
        with warnings.catch_warnings():  # the meta tracer says where it could not propagate shapes: _run does
            warnings.simplefilter("ignore")
            return tracer.trace(module, meta_args=meta_args)
    except Exception as e:
        where = path or type(module).__name__
        raise PortError([f"{where} ({type(module).__name__}): its forward could not be traced symbolically "
                         f"({type(error).__name__}: {error}) nor with the example's shapes ({type(e).__name__}: "
                         f"{e}); Python in it depends on tensor values"]) from e


def _run(gm: fx.GraphModule, inputs: tuple) -> dict[str, Any]:
    """Every node's example value, by executing the graph on the example inputs."""
    import torch
    import torch.fx as fx

    meta: dict[str, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            meta[n.name] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(*inputs)
    return meta


def walk(root: torch.nn.Module, args: tuple, is_layer: Callable[[torch.nn.Module], bool]) -> dict[str, Traced]:
    """Every module of ``root`` that is no layer, traced (forward order of first calls)."""
    calls = example_inputs(root, args)
    out: dict[str, Traced] = {}
    for path, m in root.named_modules():
        if is_layer(m) and path:
            continue
        if path not in calls:
            continue  # never called as a whole (a ModuleList indexed in its parent's forward)
        out[path] = trace_module(m, calls[path], is_layer, path)
    return out
