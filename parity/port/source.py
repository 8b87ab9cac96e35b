"""From traced modules to one ``model.py``: each instance's body (``parity.port.emit``), instances grouped
into classes (one per torch class and graph; hyperparameters that differ between instances become
dataclass fields), the helper layers the classes use, children before parents (docs/port.md)."""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.port.emit import CLASS, KWARGS, SLOT, Body, Emitter, OpTable
from parity.port.trace import PortError, Traced

if TYPE_CHECKING:
    import torch

_SLOT = re.compile(r"⟦(\w+)⟧")

# helper -> (module, top-level definitions in dependency order, statements after them)
_JAXNETS = "jaxnets.layers"
_RUNTIME = "parity.port.runtime"
HELPERS: dict[str, list[tuple[str, str]]] = {
    "BatchNorm": [(_JAXNETS, "_batch_moments"), (_JAXNETS, "batch_norm_train"), (_JAXNETS, "_batch_norm_train_jvp"),
                  (_JAXNETS, "BatchNorm")],
    "max_pool2d": [(_JAXNETS, "_pair"), (_JAXNETS, "_pads"), (_JAXNETS, "_pool_windows"), (_JAXNETS, "max_pool"),
                   (_JAXNETS, "_max_pool"), (_JAXNETS, "_max_pool_fwd"), (_JAXNETS, "_max_pool_bwd"),
                   (_JAXNETS, "_max_pool.defvjp"), (_RUNTIME, "pool_padding"), (_RUNTIME, "max_pool2d")],
    "avg_pool2d": [(_RUNTIME, "pool_padding"), (_RUNTIME, "avg_pool2d")],
    "global_mean": [(_JAXNETS, "ynnpack_fence"), (_RUNTIME, "global_mean")],
    "fast_conv": [(_JAXNETS, "xla_would_swap"), (_JAXNETS, "strided_pointwise"), (_JAXNETS, "_out_sizes"),
                  (_JAXNETS, "conv_taps"), (_JAXNETS, "_ones"), (_JAXNETS, "_channels_last"),
                  (_JAXNETS, "conv_general_dilated"), (_RUNTIME, "fast_conv")],
    "adaptive_avg_pool": [(_JAXNETS, "_adaptive_matrix"), (_JAXNETS, "adaptive_avg_pool")],
    "local_response_norm": [(_JAXNETS, "local_response_norm")],
    "hard_sigmoid": [(_RUNTIME, "hard_sigmoid"), (_RUNTIME, "_hard_sigmoid_jvp")],
    "MultiheadAttention": [(_RUNTIME, "packed_attention"), (_RUNTIME, "MultiheadAttention")],
    **{n: [(_RUNTIME, n)] for n in ("adaptive_max_pool2d", "interpolate", "mish", "layer_norm", "conv",
                                    "scaled_dot_product_attention", "stochastic_depth",
                                    "embed_padding")},
}
_RUNTIME_NNX = "parity.port.runtime_nnx"
# api="nnx": the helper layers as NNX modules, the functions as they are
HELPERS_NNX: dict[str, list[tuple[str, str]]] = {
    **HELPERS,
    "BatchNorm": [(_JAXNETS, "_batch_moments"), (_JAXNETS, "batch_norm_train"), (_JAXNETS, "_batch_norm_train_jvp"),
                  (_RUNTIME_NNX, "BatchNorm")],
    "MultiheadAttention": [(_RUNTIME, "packed_attention"), (_RUNTIME_NNX, "MultiheadAttention")],
    "stochastic_depth": [(_RUNTIME_NNX, "StochasticDepth")],
}
# module-level names the copied definitions read
_CONSTANTS = {"BatchNorm": ["Dtype = Any", "BN_EPS = 1e-5", "BN_MOMENTUM = 0.1"],
              "local_response_norm": ["LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)"]}
_CONSTANTS_NNX = {"local_response_norm": _CONSTANTS["local_response_norm"]}


def _definitions(module: str) -> dict[str, str]:
    """Top-level definitions (with their decorators) and ``x.y(...)`` statements of a module, as source."""
    import importlib.util

    path = Path(importlib.util.find_spec(module).origin)  # read, not imported: flax need not load for this
    text = path.read_text()
    lines = text.splitlines()
    out = {}
    for node in ast.parse(text).body:
        start = min([node.lineno, *[d.lineno for d in getattr(node, "decorator_list", [])]])
        seg = "\n".join(lines[start - 1:node.end_lineno])
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = seg
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Attribute) and isinstance(node.value.func.value, ast.Name):
            out[f"{ast.unparse(node.value.func.value)}.{node.value.func.attr}"] = seg
    return out


def helper_source(names: set[str], api: str = "linen") -> str:
    """The source of the helpers ``names`` need, each once, in dependency order."""
    helpers, constants = (HELPERS, _CONSTANTS) if api == "linen" else (HELPERS_NNX, _CONSTANTS_NNX)
    cache: dict[str, dict[str, str]] = {}
    seen, parts, consts = set(), [], []
    for name in sorted(names, key=list(HELPERS).index):
        consts += [c for c in constants.get(name, []) if c not in consts]
        for module, definition in helpers[name]:
            if (module, definition) in seen:
                continue
            seen.add((module, definition))
            # a name defined in another module here is defined beside it in the port: its noqa goes
            text = cache.setdefault(module, _definitions(module))[definition]
            parts.append(re.sub(r"\s+# noqa: F821[^\n]*", "", text))
    return "\n".join(consts) + ("\n\n\n" if consts else "") + "\n\n\n".join(parts)


@dataclasses.dataclass
class ClassDef:
    name: str
    base: str  # the torch class (or container attribute) it ports
    torch_class: str
    fields: dict[str, Any]  # field -> default (the first instance's value)
    lines: list[str]  # the body with fields as self.<field> and the rest as literals
    instances: list[str]
    init: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # NNX: (attribute, constructor)


def _literal(v: Any) -> str:
    return repr(v)


def _type(values: list[Any]) -> str:
    kinds = sorted({type(v).__name__ for v in values if v is not None})
    t = " | ".join(kinds) if kinds else "Any"
    return f"{t} | None" if any(v is None for v in values) and kinds else t


def _camel(text: str) -> str:
    parts = re.split(r"[^0-9a-zA-Z]+", text)
    name = "".join(p[:1].upper() + p[1:] for p in parts if p)
    return name if name and not name[0].isdigit() else f"Block{name}"


def class_base(path: str, module: torch.nn.Module) -> str:
    """A generated class's name: the torch class's, or for a plain container the attribute's in CamelCase."""
    import torch

    if type(module) in (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict):
        parts = path.split(".") if path else ["sequential"]
        i = max((j for j, q in enumerate(parts) if not q.isdigit()), default=0)
        return _camel(parts[i]) + "".join(parts[i + 1:])
    return re.sub(r"\W", "_", type(module).__name__)


RESERVED = {"BatchNorm", "MultiheadAttention", "StochasticDepth", "nn", "nnx", "jnp", "jax", "np", "math", "functools",
            "Any"}
_INIT = "⟨init⟩ "  # marks the NNX constructor lines among a class's lines while classes are grouped


def assemble(bodies: dict[str, Body], train_bodies: dict[str, Body],
             modules: dict[str, torch.nn.Module], api: str = "linen") -> tuple[str, list[ClassDef], dict[str, str]]:
    """(the classes' source, the classes, instance path -> class name). ``train_bodies``: the instances
    whose train-mode graph differs (a forward that reads ``self.training``)."""
    resolved: dict[str, tuple[str, dict[str, Any]]] = {}  # path -> (class name, field values)
    texts: dict[str, list[str]] = {}
    slots: dict[str, dict[str, Any]] = {p: dict(b.slots) for p, b in bodies.items()}
    for p, b in train_bodies.items():
        slots[p].update({f"{k}": v for k, v in b.slots.items()})
    classes: list[ClassDef] = []
    names_used: set[str] = set(RESERVED)
    height: dict[str, int] = {}

    def tall(p: str) -> int:  # generated descendants' depth: a container nested in one of its own class
        if p not in height:
            kids = bodies[p].children + (train_bodies[p].children if p in train_bodies else [])
            height[p] = 1 + max((tall(c) for c in kids), default=0)
        return height[p]

    pending = dict(bodies)
    while pending:
        ready = [p for p, b in pending.items()
                 if all(c in resolved for c in b.children + (train_bodies[p].children if p in train_bodies else []))]
        bases: dict[tuple[str, int], list[str]] = {}
        for p in pending:
            bases.setdefault((bodies[p].class_base, tall(p)), []).append(p)
        progress = False
        for (base, _), members in bases.items():
            if not all(m in ready for m in members):
                continue
            progress = True
            for p in members:
                texts[p] = _resolve(p, bodies[p], train_bodies.get(p), resolved, slots[p], api)
            groups: dict[tuple, list[str]] = {}
            for p in members:
                groups.setdefault(tuple(texts[p]), []).append(p)
            for key, group in groups.items():
                name, k = base, 1
                while name in names_used:  # another graph (or another depth) of the same torch class
                    name, k = f"{base}_{k}", k + 1
                names_used.add(name)
                keys = [k for k in slots[group[0]] if any(_SLOT.search(line) and f"⟦{k}⟧" in line for line in key)]
                differ = [k for k in keys if any(slots[q][k] != slots[group[0]][k] for q in group)]
                # slots equal in every instance are one field (a block's width read by two convs)
                alias: dict[str, str] = {}
                for k in differ:
                    alias[k] = next((a for a in alias.values() if all(slots[q][a] == slots[q][k] for q in group)), k)
                differ = [k for k in differ if alias[k] == k]
                fields = {k: slots[group[0]][k] for k in differ}

                def fill(line: str, group: list[str] = group, alias: dict[str, str] = alias) -> str:
                    init = line.startswith(_INIT)  # NNX's __init__ reads a field as its argument

                    def one(match: re.Match) -> str:
                        k = match.group(1)
                        if k in alias:
                            return alias[k] if init else f"self.{alias[k]}"
                        return _literal(slots[group[0]][k])
                    return _SLOT.sub(one, line)

                kind = type(modules[group[0]])
                filled = [fill(line) for line in key]
                init = [tuple(x[len(_INIT):].split(" ", 1)) for x in filled if x.startswith(_INIT)]
                cls = ClassDef(name, base, f"{kind.__module__}.{kind.__qualname__}", fields,
                               [x for x in filled if not x.startswith(_INIT)], group, init)
                classes.append(cls)
                for q in group:
                    values = {k: slots[q][k] for k in differ}
                    resolved[q] = (name, values)
            for p in members:
                pending.pop(p)
        if not progress:
            raise PortError([f"{p}: its class contains itself" for p in pending], "cannot order the classes")
    text = "\n\n\n".join(_class_text(c) if api == "linen" else _nnx_class_text(c) for c in classes)
    return text, classes, {p: n for p, (n, _) in resolved.items()}


def _resolve(path: str, body: Body, train: Body | None, resolved: dict[str, tuple[str, dict]],
             slots: dict[str, Any], api: str = "linen") -> list[str]:
    """The body's lines with each child's class and field values filled in (as slots of this body);
    NNX: the constructor lines first, each as ``_INIT + "attribute constructor"``."""
    def child(line: str) -> str:
        for cp in re.findall(r"⟪C:([^⟫]*)⟫", line):
            name, values = resolved[cp]
            kw = ""
            for field, value in values.items():
                key = re.sub(r"\W", "_", f"{cp[len(path) + 1 if path else 0:]}_{field}")
                key = key if not key[0].isdigit() else f"m{key}"
                slots[key] = value
                kw += f"{field}={SLOT.format(key)}, "
            line = line.replace(CLASS.format(cp), name).replace(KWARGS.format(cp), kw)
        return line

    if api == "linen":
        sig = f"def __call__(self, {', '.join([*body.args, 'train: bool = False'])}):"
        lines = [child(x) for x in body.lines]
        if train is None:
            return [sig, *lines]
        return [sig, "if train:", *["    " + child(x) for x in train.lines], *lines]
    init = dict(body.init)
    for key, ctor in train.init if train is not None else []:
        init.setdefault(key, ctor)
    head = [f"{_INIT}{key} {child(ctor)}" for key, ctor in init.items()]
    lines = [child(x) for x in body.lines]
    if train is not None:
        lines = ["if train:", *["    " + child(x) for x in train.lines], *lines]
    return [*head, f"def __call__(self, {', '.join(body.args)}):", *lines]


def _class_text(c: ClassDef) -> str:
    head = [f"class {c.name}(nn.Module):", f'    """Port of {c.torch_class}."""', ""]
    for k, v in c.fields.items():
        head.append(f"    {k}: {_type([v])} = {_literal(v)}")
    if c.fields:
        head.append("")
    sig, *body = c.lines
    return "\n".join([*head, "    @nn.compact", f"    {sig}", *["        " + x for x in body]])


def _nnx_class_text(c: ClassDef) -> str:
    """An NNX class: the fields are ``__init__``'s arguments (kept as attributes where ``__call__`` reads
    them), every layer an attribute; an all-index container (``nn.Sequential``) is an ``nnx.List``, so its
    layers keep torch's indices. A ``__call__`` that reads the mode gets it from ``deterministic``, the
    attribute NNX's ``train()`` / ``eval()`` set."""
    sig, *body = c.lines
    uses_train = any(re.search(r"\btrain\b", x) for x in body)
    digits = [k for k, _ in c.init if k.isdigit()]
    if digits and len(digits) != len(c.init):
        named = [k for k, _ in c.init if not k.isdigit()]
        raise PortError([f"{c.name}: both indexed children ({', '.join(digits)}) and named ones "
                         f"({', '.join(named)}); NNX keeps a module's children one way or the other"],
                        "cannot write the NNX class")
    args = [f"{k}: {_type([v])} = {_literal(v)}" for k, v in c.fields.items()]
    head = [f"class {c.name}({'nnx.List' if digits else 'nnx.Module'}):", f'    """Port of {c.torch_class}."""', "",
            f"    def __init__(self, {', '.join([*args, '*', 'rngs: nnx.Rngs'])}):"]
    init = []
    if digits:
        ctors = dict(c.init)
        # torch's indices kept: a stateless layer (an activation, a pool) is written inline, None here
        items = [f"    {ctors[str(i)]}," if str(i) in ctors else f"    None,  # {i}: written inline in __call__"
                 for i in range(max(map(int, digits)) + 1)]
        init += ["super().__init__([", *items, "])"]
    init += [f"self.{k} = {k}" for k in c.fields if any(f"self.{k}" in x for x in body)]
    init += [f"self.{k.replace('.', '_')} = {ctor}" for k, ctor in c.init if not k.isdigit()]
    if uses_train:
        init.append("self.deterministic = False")
    if not init:
        init = ["pass"]
    call = ["    train = not self.deterministic"] if uses_train else []
    return "\n".join([*head, *["        " + x for x in init], "", f"    {sig}", *[f"    {x}" for x in call],
                      *["        " + x for x in body]])


class _ZeroDropout(ast.NodeTransformer):
    def visit_Call(self, node: ast.Call) -> ast.Call:  # noqa: N802 - ast's visitor naming
        self.generic_visit(node)
        func = ast.unparse(node.func)
        if func in ("nn.Dropout", "flax.linen.Dropout", "nnx.Dropout"):
            node.keywords = [k for k in node.keywords if k.arg != "rate"] + [ast.keyword("rate", ast.Constant(0.0))]
        elif func == "stochastic_depth" and len(node.args) >= 3:
            node.args[2] = ast.Constant(0.0)
        elif func == "StochasticDepth":
            node.keywords = [k for k in node.keywords if k.arg != "p"] + [ast.keyword("p", ast.Constant(0.0))]
        return node


def zero_dropout(source: str) -> str:
    """``source`` with every dropout and stochastic-depth rate 0 (the proof's model: the frameworks
    cannot draw the same masks); nothing else changes."""
    return ast.unparse(_ZeroDropout().visit(ast.parse(source)))


def module_file(classes_source: str, helpers: set[str], root: str, note: str, api: str = "linen") -> str:
    """The whole ``model.py``: only the imports it uses."""
    body = (helper_source(helpers, api) + "\n\n\n" if helpers else "") + classes_source
    if api == "nnx":  # flax.linen's activation functions are nnx's (jax.nn's) under another prefix
        body = re.sub(r"(?<![\w.])nn\.(?=[a-z_0-9]+\()", "nnx.", body)
    imports = [line for line, used in (("import functools", "functools."), ("import math", "math."))
               if re.search(rf"\b{re.escape(used)}", body)]
    abc = [n for n in ("Callable", "Sequence") if re.search(rf"\b{n}\b", body)]
    imports += [f"from collections.abc import {', '.join(abc)}"] if abc else []
    imports += ["from typing import Any"] if re.search(r"\bAny\b", body) else []
    libs = (["import flax.linen as nn"] if api == "linen" else []) + ["import jax", "import jax.numpy as jnp"]
    if re.search(r"\bnp\.", body):
        libs.append("import numpy as np")
    if api == "nnx":
        libs.append("from flax import nnx")
    return (f'"""{note}"""\n\nfrom __future__ import annotations\n\n' + "\n".join(imports) + ("\n\n" if imports else "")
            + "\n".join(libs) + f"\n\n__all__ = [{root!r}]\n\n\n" + body + "\n")


def emit_all(traced: dict[str, Traced], train_traced: dict[str, Traced],
             ops: OpTable, rules: Callable, api: str = "linen") -> tuple[dict[str, Body], dict[str, Body], list[str]]:
    """Every traced instance's body, the train-mode bodies where they differ, and every problem."""
    bodies, train_bodies, problems = {}, {}, []
    for path, t in traced.items():
        em = Emitter(t, traced, path, class_base(path, t.module), ops, rules, api)
        bodies[path] = em.emit()
        problems += em.problems
        tt = train_traced.get(path)
        if tt is not None and tt.graph.python_code("self").src != t.graph.python_code("self").src:
            et = Emitter(tt, traced, path, class_base(path, t.module), ops, rules, api)
            train_bodies[path] = et.emit()
            problems += [p for p in et.problems if p not in problems]
    return bodies, train_bodies, problems


__all__ = ["assemble", "emit_all", "module_file", "helper_source", "ClassDef", "HELPERS", "SLOT"]
