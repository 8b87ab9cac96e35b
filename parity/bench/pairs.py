"""A user's torch/Flax pair, or a saved port, as the bench runs it (docs/benchmark.md, "Your own
models"). ``PairSpec`` travels in a ``Job``'s JSON, so that each framework builds the pair in its own
fresh interpreter, as the twins are: the modules from import strings, one set of weights (the torch
module's, moved to Flax by the mapping rules), a seeded batch, a loss for any output, and the FLOP
count of one step in each framework's own terms.

The standard library and numpy at import; each function imports the framework it builds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from parity.check.pairs import Pair

# rows of the first step's outputs kept for the same-work check, and values per row: enough to see
# a wrong layout or class order, small enough for an image output
ROWS, ROW_VALUES = 8, 1024


@dataclass
class PairSpec:
    """What to build. ``torch``/``flax``: MODULE:NAME of a class or factory, both called with ``kwargs``;
    or ``port``: a folder written by ``parity port`` (its torch module, model.py and weight map).
    ``input_shapes``: torch's layout, one per argument; ``tokens``: integer inputs below this instead
    of random floats. ``weights``: a state_dict file loaded strictly into the torch module (else its
    initialisation, seeded). ``loss``: [torch MODULE:FN, flax MODULE:FN], each ``fn(outputs, target)``
    -> a scalar; None: cross-entropy or mean squared error (``target_kind``). ``images``: 4-D/5-D float
    inputs and outputs move channels-last for Flax (as ``check_pair``)."""

    torch: str = ""
    flax: str = ""
    kwargs: dict = field(default_factory=dict)
    input_shapes: list[list[int]] = field(default_factory=list)
    tokens: int | None = None
    weights: str | None = None
    loss: list[str] | None = None
    port: str | None = None
    images: bool = True

    def __post_init__(self) -> None:
        if bool(self.port) == bool(self.torch or self.flax):
            raise ValueError("a pair is a torch and a Flax spec (MODULE:NAME each) or a saved port's folder, "
                             f"got torch={self.torch!r}, flax={self.flax!r}, port={self.port!r}")
        if not self.port and not (self.torch and self.flax):
            raise ValueError(f"a pair needs both sides, got torch={self.torch!r}, flax={self.flax!r}")
        if self.loss is not None and (len(self.loss) != 2 or not all(isinstance(s, str) for s in self.loss)):
            raise ValueError(f"loss: expected [torch MODULE:FN, flax MODULE:FN], got {self.loss!r}")
        if self.port:
            self.port = str(Path(self.port).resolve())
            if not self.input_shapes:
                from parity.port import files

                info = files.meta(self.port)
                self.input_shapes = [list(s) for s in info["input_shapes"]]
                if self.tokens is None and not any(d.startswith(("float", "bfloat")) for d in info["input_dtypes"]):
                    self.tokens = int(info["token_high"])
        if not self.input_shapes or any(not s or any(int(d) < 1 for d in s) for s in self.input_shapes):
            raise ValueError(f"input shapes: expected positive sizes per input, got {self.input_shapes!r}")
        self.input_shapes = [[int(d) for d in s] for s in self.input_shapes]
        if self.tokens is not None and self.tokens < 1:
            raise ValueError(f"tokens: expected a positive bound, got {self.tokens}")

    @property
    def label(self) -> str:
        return f"port:{Path(self.port).name}" if self.port else self.torch

    @property
    def batch(self) -> int:
        return self.input_shapes[0][0]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> PairSpec:
        return cls(**data)


def _port_meta(spec: PairSpec) -> dict:
    from parity.port import files

    return files.meta(spec.port)


def torch_module(spec: PairSpec, seed: int = 0) -> torch.nn.Module:
    """The torch side, float32 on CPU, with its weights: the port's, the ``weights`` file's, or its own
    initialisation under ``seed``. A port's dropout rates are 0 (as its proof runs it)."""
    import torch

    from parity import imports

    torch.manual_seed(seed)
    if spec.port:
        from parity.port import files as port_files
        from parity.port import without_dropout

        return without_dropout(port_files.torch_module(spec.port)).float()
    return imports.torch_module(spec.torch, spec.kwargs, spec.weights).float()


def flax_module(spec: PairSpec) -> Any:
    """The Flax side (Linen, or NNX seen as Linen): ``flax(**kwargs)``, or the port's model.py with its
    dropout rates 0."""
    from parity import imports
    from parity.check import nnx

    if spec.port:
        from parity.port import build, proof_module

        m = build(proof_module(Path(spec.port) / "model.py"), _port_meta(spec)["root"],
                  _port_meta(spec).get("api", "linen"))
    else:
        m = imports.build(spec.flax, spec.kwargs)
    return nnx.LinenView(m) if nnx.is_nnx(m) else m


def inputs(spec: PairSpec, seed: int = 0) -> tuple[np.ndarray, ...]:
    """One seeded batch in torch's layout, the same in every worker: float32 standard normals, or
    integers below ``tokens``."""
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(0, spec.tokens, s) if spec.tokens else rng.standard_normal(s, dtype=np.float32)
                 for s in spec.input_shapes)


def pair(spec: PairSpec, torch_side: torch.nn.Module, flax_side: Any, args: tuple[np.ndarray, ...]) -> Pair:
    """The engine's ``Pair`` of the two sides: how the torch weights move to Flax (the port's weight map,
    or matched by the rules: a ``MappingError`` lists what does not map)."""
    from parity.check import pairs

    wmap = None
    if spec.port:
        from parity.port import load_weight_map

        wmap = load_weight_map(spec.port)
    t, f = pairs.sides(torch_side, flax_side)
    return pairs.modules(t, f, args, images=spec.images, weight_map=wmap, name=spec.label)


def flax_shape(shape: tuple[int, ...], images: bool) -> tuple[int, ...]:
    """An output's shape as the Flax side has it: an image (4-D/5-D) channels-last."""
    from parity import layout

    return tuple(layout.channels_last(np.empty(shape, np.uint8), images).shape)


def targets(out_shapes: list[tuple[int, ...]], seed: int = 0) -> tuple[str, Any]:
    """(kind, target) for outputs of ``out_shapes`` (the Flax side's layout): one (batch, classes) output
    -> ("cross_entropy", seeded labels); otherwise ("mse", a seeded float32 standard normal of each
    output's shape: one array, or a tuple for several outputs), in the Flax layout; the torch worker
    moves them back."""
    rng = np.random.default_rng(seed + 7)
    if len(out_shapes) == 1 and len(out_shapes[0]) == 2:
        n, classes = out_shapes[0]
        return "cross_entropy", rng.integers(0, classes, n)
    drawn = tuple(rng.standard_normal(s, dtype=np.float32) for s in out_shapes)
    return "mse", drawn if len(drawn) > 1 else drawn[0]


def losses(spec: PairSpec, kind: str) -> tuple[Callable | None, Callable | None]:
    """(torch loss, Flax loss), each ``fn(outputs, target)``: the user's (``spec.loss``), or None for
    cross-entropy (the engine's default), or mean squared error."""
    from parity import imports, training

    if spec.loss:
        return imports.load(spec.loss[0]), imports.load(spec.loss[1])
    if kind == "cross_entropy":
        return None, None
    return training.mse_loss_torch, training.mse_loss_flax


def check_scalar(side: str, shape: tuple[int, ...]) -> None:
    if tuple(shape) != ():
        raise ValueError(f"the {side} loss must return a scalar, got an array of shape {tuple(shape)}")


def output_rows(outs: list[np.ndarray], batch: int) -> list[list[float]]:
    """The first ``ROWS`` rows (at most ``batch``: a data-parallel rank holds that many) of the outputs
    (Flax layout), each output's row flattened and cut to ``ROW_VALUES``, side by side: the same-work
    check's view of the first step. A scalar output is one row of one value."""
    if not outs:
        return []
    if any(np.ndim(o) == 0 for o in outs):
        return [[float(np.asarray(o, np.float64).ravel()[0]) for o in outs]]
    n = min(ROWS, batch, *(len(o) for o in outs))
    return np.concatenate([np.asarray(o[:n], np.float64).reshape(n, -1)[:, :ROW_VALUES] for o in outs],
                          axis=1).tolist()


def torch_flops(model: torch.nn.Module, step: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step`` (a train step's forward and backward, or an inference) by torch's
    ``FlopCounterMode`` (matmuls and convolutions, 2 per multiply-add): run on the eager module."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def xla_flops(compiled: Any) -> float:
    """FLOPs of one call of a compiled JAX program by XLA's cost analysis (every operation XLA counts,
    elementwise ones included); NaN where this jaxlib reports none."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jaxlibs: one dict per device program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def describe(spec: PairSpec) -> str:
    return json.dumps({k: v for k, v in spec.to_json().items() if v not in (None, {}, [], "")})
