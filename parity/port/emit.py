"""The port's back end for one traced module: its graph, node by node, as the body of a Flax ``__call__``
(Linen; or NNX, whose layers are built in ``__init__``: ``Body.init``) (docs/port.md, "The op table").
Hyperparameters are slots (``⟦name⟧``) that become literals
where every instance of the class agrees and dataclass fields where they differ; a generated child is
``⟪C:path⟫(⟪K:path⟫)``, filled in once that child's class is known (``parity.port.source``)."""

from __future__ import annotations

import builtins
import dataclasses
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from parity.port.values import V, axes_to, canonical, channels_last, const, identity, inverse, renumber, reshape_groups

if TYPE_CHECKING:
    import torch
    import torch.fx as fx

    from parity.port.trace import Traced


class UnsupportedError(Exception):
    """One operation the port cannot write, with what it is."""


@dataclasses.dataclass
class Body:
    """One instance's ``__call__``: template lines, slot values, children, raw parameters, helpers."""

    path: str
    class_base: str  # the torch class's name (a container: its attribute's, in CamelCase)
    args: list[str]
    lines: list[str] = dataclasses.field(default_factory=list)
    slots: dict[str, Any] = dataclasses.field(default_factory=dict)
    helpers: set[str] = dataclasses.field(default_factory=set)
    children: list[str] = dataclasses.field(default_factory=list)  # paths of generated children, in order
    layouts: list[str] = dataclasses.field(default_factory=list)  # where the port chose a layout
    concrete: bool = False
    dropout_slots: set[str] = dataclasses.field(default_factory=set)  # rates: 0 for the proof
    layer_layouts: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # module path -> perm
    # NNX: (attribute, constructor) of each layer, child and parameter, in the order forward first uses them
    init: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # raw parameter (torch key below this module) -> its dimensions' order as stored (Layout "permute")
    param_axes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)


SLOT, CLASS, KWARGS = "⟦{}⟧", "⟪C:{}⟫", "⟪K:{}⟫"


def _ident(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    return name if name.isidentifier() and not name[0].isdigit() else f"m{name}"


def _fmt(expr: str) -> str:
    return expr


def _tup(items: Any) -> str:
    items = list(items)
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


@dataclasses.dataclass(frozen=True)
class OpTable:
    """What the emitter writes each node with (``parity.port.ops.table()``): the handler of a layer (None:
    not a layer), of a function, of a tensor method, of ``getattr`` on a value."""

    layer: Callable[[torch.nn.Module], Callable | None]
    functions: Mapping[Any, Callable]
    methods: Mapping[str, Callable]
    attribute: Callable


class Emitter:
    """Writes one traced module; ``children``: path -> Traced for the submodules that get classes of
    their own; ``ops``: the op table."""

    def __init__(self, traced: Traced, children: dict[str, Traced], root_path: str, class_base: str,
                 ops: OpTable, rules: Callable[[object, str], Any], api: str = "linen"):
        self.t = traced
        self.api = api
        self.children = children
        self.ops = ops
        self.rules = rules  # (torch module, leaf) -> (flax leaf, layout kind)
        self.body = Body(traced.path, class_base, [], concrete=traced.concrete)
        self.env: dict[str, V] = {}
        self.names: set[str] = {"self", "train", "nn", "nnx", "jnp", "jax", "np", "math", "rngs"}
        self.created: dict[str, str] = {}  # child name -> local variable holding it (called more than once)
        self.calls: dict[str, int] = {}
        self.problems: list[str] = []
        self.slot_names: set[str] = set()
        # raw parameters not yet used: variable -> (torch leaf, the declaration as written, its shape text)
        self.raw: dict[str, tuple[str, str, str]] = {}
        self.param_vars: set[str] = set()  # a parameter's variable is not renamed to a result's

    # ------------------------------------------------------------------ helpers for handlers

    def line(self, text: str) -> None:
        self.body.lines.append(text)

    def var(self, hint: str) -> str:
        base = _ident(hint)
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def slot(self, owner: str, what: str, value: Any, dropout: bool = False) -> str:
        """A hyperparameter of child ``owner``: a token the class assembly fills with a literal or a field."""
        name = _ident(f"{owner}_{what}" if owner else what)
        base, i = name, 1
        while name in self.slot_names:
            name, i = f"{base}_{i}", i + 1
        self.slot_names.add(name)
        self.body.slots[name] = value
        if dropout:
            self.body.dropout_slots.add(name)
        return SLOT.format(name)

    def helper(self, name: str) -> str:
        self.body.helpers.add(name)
        return name

    def assign(self, hint: str, expr: str, **v: Any) -> V:
        node = self.nodes.get(hint)
        # a value read once starts (or continues) a chain, ``out = f(out)`` as torchvision writes it
        fresh = "out" if node is not None and len(node.users) == 1 and "out" not in self.names else hint
        name = self._reuse(hint) or self.var(fresh)
        self.line(f"{name} = {expr}")
        return V(name, **v)

    def _reuse(self, hint: str) -> str | None:
        """The variable of node ``hint``'s first input when nothing reads it later: a chain of layers
        reads ``x = f(x)`` as a person writes it."""
        node = self.nodes.get(hint)
        if node is None or not node.all_input_nodes:
            return None
        cand = self.env.get(node.all_input_nodes[0].name)
        if cand is None or not cand.expr.isidentifier() or cand.expr not in self.names or cand.expr in self.param_vars:
            return None
        here = self.order[node.name]
        for other, v in self.env.items():
            if v.expr == cand.expr and any(self.order[u.name] > here for u in self.nodes[other].users):
                return None
        return cand.expr

    def to(self, v: V, perm: tuple[int, ...], why: str = "") -> str:
        """``v``'s expression moved to ``perm``."""
        axes = axes_to(v, perm)
        if axes is None:
            return v.expr
        if why:
            self.body.layouts.append(f"{self.t.path or '(root)'}: {why}")
            name = self.var(f"{v.expr}_t")
            self.line(f"# {why}")
            self.line(f"{name} = jnp.transpose({v.expr}, {axes})")
            return name
        return f"jnp.transpose({v.expr}, {axes})"

    def place(self, v: V, like: V) -> V:
        """``v``, a raw parameter at its first use, stored in the layout in which it broadcasts against
        ``like`` as torch broadcasts it (torch's (C, 1, 1) against a channels-last map: (1, 1, C)); the
        weight map records the permutation. Any other value as it is."""
        if v.expr not in self.raw or not like.tensor or like.ndim < v.ndim:
            return v
        target, decl, shape = self.raw.pop(v.expr)
        lead = like.ndim - v.ndim
        if tuple(like.perm[:lead]) != identity(lead):
            return v
        perm = tuple(p - lead for p in like.perm[lead:])
        if perm == identity(v.ndim):
            return v
        stored = V(v.expr, v.shape, perm)
        new = decl.replace(shape, repr(stored.flax_shape))
        if self.linen:
            self.body.lines[self.body.lines.index(decl)] = new
        else:
            self.body.init = [(k, new if c == decl else c) for k, c in self.body.init]
        self.body.param_axes[target] = inverse(perm)
        for k, x in self.env.items():
            if x.expr == v.expr:
                self.env[k] = stored
        return stored

    def channels_last(self, v: V) -> str:
        return self.to(v, channels_last(v.ndim))

    def torch_order(self, v: V, why: str = "") -> str:
        return self.to(v, identity(v.ndim), why)

    def meta(self, node: fx.Node) -> Any:
        return self.t.meta.get(node.name)

    def tensor(self, node: fx.Node, expr: str, perm: tuple[int, ...], kernel: str = "") -> V:
        import torch

        m = self.meta(node)
        if not isinstance(m, torch.Tensor):
            raise UnsupportedError(f"{node.format_node()}: expected a tensor result")
        return V(expr, tuple(m.shape), tuple(perm), not m.is_floating_point(), kernel=kernel)

    def value(self, a: Any) -> Any:
        """An argument of a node as V (nodes), tuples of those, or the constant itself."""
        import torch.fx as fx

        if isinstance(a, fx.Node):
            return self.env[a.name]
        if isinstance(a, (tuple, list)):
            vals = [self.value(x) for x in a]
            if all(isinstance(x, V) and not x.tensor for x in vals):
                py = [x.py for x in vals] if all(x.known for x in vals) else None
                return V(_tup(x.expr for x in vals), py=tuple(py) if py is not None else None,
                         items=tuple(vals)) if py is not None else V(_tup(x.expr for x in vals), items=tuple(vals))
            return vals
        return const(a)

    # ------------------------------------------------------------------ the graph

    def emit(self) -> Body:
        graph = self.t.graph
        self.nodes = {n.name: n for n in graph.nodes}
        self.order = {n.name: i for i, n in enumerate(graph.nodes)}
        for node in graph.nodes:
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1
        for node in graph.nodes:
            try:
                self._node(node)
            except Exception as e:  # every problem listed, the rest of the graph still read
                what = str(e) if isinstance(e, UnsupportedError) else \
                    f"{node.format_node()}: could not be written ({type(e).__name__}: {e})"
                self.problems.append(f"{self.t.path or '(root)'} ({type(self.t.module).__name__}): {what}"
                                     + _where(node))
                self.env[node.name] = V(node.name)
        return self.body

    def _node(self, node: fx.Node) -> None:
        import torch

        if node.op == "placeholder":
            m = self.meta(node)
            owner = next((a for a in self.t.lists if re.fullmatch(rf"{a}_\d+", node.name)), None)
            if owner is not None:  # one element of a list argument: the signature takes the list
                name = _ident(f"{owner}s" if owner == "input" else owner)
                if name not in self.body.args:
                    self.names.add(name)
                    self.body.args.append(name)
                i = sum(1 for v in self.env.values() if v.expr.startswith(f"{name}["))
                self.env[node.name] = V(f"{name}[{i}]", tuple(m.shape), canonical(m.shape, not m.is_floating_point()),
                                        not m.is_floating_point())
                return
            name = self.var("x" if node.name.startswith("input") else node.name)
            self.body.args.append(name)
            if isinstance(m, torch.Tensor):
                self.env[node.name] = V(name, tuple(m.shape), canonical(m.shape, not m.is_floating_point()),
                                        not m.is_floating_point())
            else:
                self.env[node.name] = V(name, py=m)
            return
        if node.op == "output":
            out = node.args[0]
            # traced with list arguments, fx flattens the output as a pytree: one tensor comes as [tensor]
            info = getattr(getattr(self.t.graph, "_codegen", None), "pytree_info", None)
            spec = getattr(info, "out_spec", None)
            if spec is not None and spec.is_leaf() and isinstance(out, (list, tuple)) and len(out) == 1:
                out = out[0]
            self.line(f"return {self._out(out)}")
            return
        if node.op == "get_attr":
            self.env[node.name] = self._attr(node)
            return
        if node.op == "call_module":
            self.env[node.name] = self._call_module(node)
            return
        if node.op == "call_function":
            handler = self.ops.functions.get(node.target)
            if node.target is builtins.getattr:
                handler = self.ops.attribute
            if handler is None:
                raise UnsupportedError(f"function {_name(node.target)} is not in the op table")
            args, kwargs = self._arguments(node)
            self.env[node.name] = handler(self, node, *args, **kwargs)
            return
        if node.op == "call_method":
            handler = self.ops.methods.get(node.target)
            if handler is None:
                raise UnsupportedError(f"tensor method .{node.target}() is not in the op table")
            args, kwargs = self._arguments(node)
            self.env[node.name] = handler(self, node, *args, **kwargs)
            return
        raise UnsupportedError(f"graph node {node.op}")

    def _arguments(self, node: fx.Node) -> tuple[list, dict]:
        """A node's arguments as values; torch's ``input``/``other`` keywords as the leading positions."""
        args = [self.value(a) for a in node.args]
        kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
        for key in ("input", "other"):
            if key in kwargs and len(args) == ("input", "other").index(key):
                args.append(kwargs.pop(key))
        try:
            return args, kwargs
        except TypeError as e:
            raise UnsupportedError(f"{node.format_node()}: {e}") from e

    def _out(self, a: Any) -> str:
        import torch.fx as fx

        if isinstance(a, fx.Node):
            v = self.env[a.name]
            if v.items is not None:
                return _tup(self._item_out(x) for x in v.items)
            return self._item_out(v)
        if isinstance(a, (tuple, list)):
            return _tup(self._out(x) for x in a)
        if a is None:
            return "None"
        raise UnsupportedError(f"output of type {type(a).__name__}")

    def _item_out(self, v: V) -> str:
        return self.to(v, canonical(v.shape, v.integer)) if v.tensor else v.expr

    def _attr(self, node: fx.Node) -> V:
        import torch

        target = node.target
        if "." in target:
            raise UnsupportedError(f"self.{target}: a parameter of a submodule read directly (use the submodule)")
        obj = getattr(self.t.module, target)
        if not isinstance(obj, torch.nn.Parameter):
            if isinstance(obj, torch.Tensor) and target in dict(self.t.module.named_buffers(recurse=False)):
                raise UnsupportedError(f"buffer self.{target} used in forward (only parameters are ported)")
            raise UnsupportedError(f"self.{target}: a {type(obj).__name__}")
        leaf, kind = self.rules(self.t.module, target)
        from parity.convert.rules import Layout

        fshape = Layout(kind).flax_shape(tuple(obj.shape))
        name = self.var(target)
        self.param_vars.add(name)
        if self.linen:
            decl = f"{name} = self.param({leaf!r}, nn.initializers.zeros_init(), {fshape})"
            self.line(decl)
        else:
            decl = f"nnx.Param(jnp.zeros({fshape}))"
            self.line(f"{name} = {self.attribute(leaf, decl)}[...]")
        if kind == "copy" and obj.ndim >= 2:  # stored as its first use broadcasts it (``place``)
            self.raw[name] = (target, decl, repr(fshape))
        perm = identity(obj.ndim)
        return V(name, tuple(obj.shape), perm, False, kernel="" if kind == "copy" else kind)

    def _call_module(self, node: fx.Node) -> V:
        target = node.target
        sub = self.t.module.get_submodule(target)
        path = f"{self.t.path}.{target}" if self.t.path else target
        flax_name = target.replace(".", "_")  # Linen's list naming: blocks.0 -> blocks_0 (read back as blocks.0)
        args = [self.value(a) for a in node.args]
        kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
        if path in self.children:
            return self._record(path, self._call_child(node, path, flax_name, args, kwargs))
        handler = self.ops.layer(sub)
        if handler is None:
            kind = f"{type(sub).__module__}.{type(sub).__name__}"
            raise UnsupportedError(f"module {target} ({kind}) is not in the op table")
        return self._record(path, handler(self, node, sub, flax_name, *args, **kwargs))

    def _record(self, path: str, out: V) -> V:
        """``out``, its layout noted under the module's path (the proof compares activations by it)."""
        if isinstance(out, V) and out.tensor and out.perm is not None:
            self.body.layer_layouts[path] = tuple(out.perm)
        return out

    @property
    def linen(self) -> bool:
        return self.api == "linen"

    def layer(self, target: str, linen: str, linen_args: str, nnx: str, nnx_args: str) -> str:
        """The expression that calls layer ``target`` (a submodule path; a node's name for an unnamed
        layer): Linen builds ``linen(linen_args, name=...)`` where it is called, NNX holds
        ``nnx(nnx_args, rngs=rngs)`` as an attribute set in ``__init__``."""
        if self.linen:
            name = target.replace(".", "_")
            return self.module(target, f"{linen}({linen_args}, name={name!r})" if target in self.calls
                               else f"{linen}({linen_args})")
        return self.attribute(target, f"{nnx}({nnx_args}, rngs=rngs)")

    def attribute(self, key: str, constructor: str) -> str:
        """NNX: ``self.<key>`` (``self[i]`` for a list's index) set once in ``__init__``."""
        if key not in (k for k, _ in self.body.init):
            self.body.init.append((key, constructor))
        return f"self[{key}]" if key.isdigit() else f"self.{key.replace('.', '_')}"

    def module(self, name: str, constructor: str) -> str:
        """The expression that calls child ``name`` (created once; a local when called again)."""
        if self.calls.get(name, 1) <= 1 and name.replace(".", "_") == name:
            return constructor
        key = name.replace(".", "_")
        if key not in self.created:
            local = self.var(key)
            self.line(f"{local} = {constructor}")
            self.created[key] = local
        return self.created[key]

    def _call_child(self, node: fx.Node, path: str, flax_name: str, args: list, kwargs: dict) -> V:
        import torch

        self.body.children.append(path)

        def arg(a: Any) -> str:
            if isinstance(a, V) and a.tensor:
                return self.to(a, canonical(a.shape, a.integer))
            if isinstance(a, V):
                return a.expr
            if isinstance(a, list):
                return "[" + ", ".join(arg(x) for x in a) + "]"
            raise UnsupportedError(f"{node.target}: an argument of type {type(a).__name__}")

        exprs = [arg(a) for a in args]
        exprs += [f"{k}={v.expr}" for k, v in kwargs.items()]
        if self.linen:
            ctor = f"{CLASS.format(path)}({KWARGS.format(path)}name={node.target.replace('.', '_')!r})"
            expr = f"{self.module(node.target, ctor)}({', '.join([*exprs, 'train=train'])})"
        else:  # NNX: the child follows model.train() / model.eval() itself
            expr = f"{self.attribute(node.target, f'{CLASS.format(path)}({KWARGS.format(path)}rngs=rngs)')}" \
                   f"({', '.join(exprs)})"
        m = self.meta(node)
        if isinstance(m, torch.Tensor):
            integer = not m.is_floating_point()
            return self.assign(node.name, expr, shape=tuple(m.shape), perm=canonical(m.shape, integer), integer=integer)
        if isinstance(m, (tuple, list)) and all(isinstance(x, torch.Tensor) for x in m):
            name = self.var(node.name)
            self.line(f"{name} = {expr}")
            return V(name, items=tuple(V(f"{name}[{i}]", tuple(x.shape), canonical(x.shape, not x.is_floating_point()),
                                         not x.is_floating_point()) for i, x in enumerate(m)))
        raise UnsupportedError(f"{node.target} returns a {type(m).__name__}")


def _name(target: Any) -> str:
    mod = getattr(target, "__module__", None) or ""
    return f"{mod}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def _where(node: fx.Node) -> str:
    """`` [file:line: source]`` of the user's line that made ``node`` (the last frame outside torch)."""
    lines = (node.meta.get("stack_trace") or "").splitlines()
    found = ""
    for i, ln in enumerate(lines):
        m = re.match(r'\s*File "([^"]+)", line (\d+), in (\S+)', ln)
        if m and "/torch/" not in m.group(1) and i + 1 < len(lines):
            found = f" [{m.group(1).rsplit('/', 1)[-1]}:{m.group(2)}: {lines[i + 1].strip()}]"
    return found


__all__ = ["Body", "Emitter", "UnsupportedError", "SLOT", "CLASS", "KWARGS", "math", "operator", "inverse", "renumber",
           "reshape_groups"]
