"""The variant table: every model name -> a frozen spec. Standard library only.

Both twins (``torchnets``, ``jaxnets``), the analytic counter (``netspecs.counts``) and the tools
(``parity``) are built from the plans these specs produce (``VGGSpec.features``,
``ResNetSpec.stages``, ``ResNetSpec.stem``, ``ResNetSpec.strides``), so an architecture is described
exactly once, in a package that imports neither framework nor the tools.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = [
    "VGGSpec", "ResNetSpec", "Spec", "Layer", "Block", "Stem",
    "get", "list_models", "names", "check_input",
]

# --------------------------------------------------------------------------- VGG

# torchvision's cfgs plus the paper's C: an int is a 3x3 conv, (c, 1) a 1x1 conv, "M" a pool.
_VGG_CFGS: dict[str, tuple] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "C": (64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M",
          512, 512, (512, 1), "M", 512, 512, (512, 1), "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


@dataclass(frozen=True)
class Layer:
    """One entry of a torch-style Sequential: its index is its name in both frameworks."""

    kind: str  # "conv" | "bn" | "relu" | "lrn" | "pool" | "linear" | "dropout"
    out: int = 0  # conv / linear output channels
    kernel: int = 0  # conv kernel size
    inp: int = 0  # linear input features


@dataclass(frozen=True)
class VGGSpec:
    """A VGG configuration (paper Table 1) with torchvision's head."""

    name: str
    config: str
    batch_norm: bool = False
    lrn: bool = False
    num_classes: int = 1000
    dropout: float = 0.5
    family: str = "vgg"
    input_size: int = 224
    min_size: int = 32  # five 2x2 floor-mode pools
    in_channels: int = 3

    OVERRIDES = ("num_classes", "dropout")
    POOL_OUT = 7  # torchvision's AdaptiveAvgPool2d((7, 7))
    HIDDEN = 4096

    def features(self) -> list[Layer]:
        """The ``features`` Sequential, index for index as torchvision builds it."""
        layers: list[Layer] = []
        for item in _VGG_CFGS[self.config]:
            if item == "M":
                layers.append(Layer("pool"))
                continue
            out, k = item if isinstance(item, tuple) else (item, 3)
            layers.append(Layer("conv", out, k))
            if self.batch_norm:
                layers.append(Layer("bn", out))
            layers.append(Layer("relu"))
            # A-LRN: LRN after the first conv's ReLU, before the first pool (paper Sec. 2.3).
            if self.lrn and len([la for la in layers if la.kind == "conv"]) == 1:
                layers.append(Layer("lrn"))
        return layers

    def classifier(self) -> list[Layer]:
        """The ``classifier`` Sequential: Linear, ReLU, Dropout x2, then the last Linear."""
        flat = self.last_channels * self.POOL_OUT**2
        return [Layer("linear", self.HIDDEN, inp=flat), Layer("relu"), Layer("dropout"),
                Layer("linear", self.HIDDEN, inp=self.HIDDEN), Layer("relu"), Layer("dropout"),
                Layer("linear", self.num_classes, inp=self.HIDDEN)]

    @property
    def last_channels(self) -> int:
        return [la.out for la in self.features() if la.kind == "conv"][-1]


# --------------------------------------------------------------------------- ResNet


@dataclass(frozen=True)
class Block:
    """One residual (or plain) block of a stage, fully resolved."""

    in_ch: int
    width: int  # inner width (bottleneck: of the grouped 3x3)
    out_ch: int
    stride: int
    shortcut: str  # "identity" | "A" (subsample + zero-pad) | "proj" (1x1 conv + BN) | "none"


@dataclass(frozen=True)
class Stem:
    """A ResNet's first convolution (kernel, stride) and whether a 3x3/2 max pool follows it."""

    kernel: int
    stride: int
    pool: bool


@dataclass(frozen=True)
class ResNetSpec:
    """A ResNet / ResNeXt / Wide ResNet / plain net, ImageNet or CIFAR stem."""

    name: str
    family: str  # "resnet" | "plain" | "cifar-resnet" | "cifar-plain"
    block: str  # "basic" | "bottleneck"
    depths: tuple[int, ...]
    widths: tuple[int, ...] = (64, 128, 256, 512)
    groups: int = 1
    width_per_group: int = 64
    shortcut: str = "B"
    stride_on: str = "3x3"
    zero_init_residual: bool = False
    num_classes: int = 1000
    in_channels: int = 3

    @property
    def cifar(self) -> bool:
        return self.family.startswith("cifar")

    @property
    def residual(self) -> bool:
        return not self.family.endswith("plain")

    @property
    def input_size(self) -> int:
        return 32 if self.cifar else 224

    @property
    def min_size(self) -> int:
        # The total downsampling: below it the last stage would see less than one window.
        return 4 if self.cifar else 32

    @property
    def stem_width(self) -> int:
        return self.widths[0] if self.cifar else 64

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def last_channels(self) -> int:
        return self.widths[-1] * self.expansion

    @property
    def OVERRIDES(self) -> tuple[str, ...]:  # noqa: N802 - mirrors VGGSpec.OVERRIDES
        names = ["num_classes"]
        if self.residual:
            names += ["shortcut", "zero_init_residual"]
        if self.block == "bottleneck":
            names.append("stride_on")
        return tuple(names)

    def stem(self) -> Stem:
        """The first convolution and pool: CIFAR 3x3/1 without a pool, ImageNet 7x7/2 and a 3x3/2 max pool."""
        return Stem(3, 1, False) if self.cifar else Stem(7, 2, True)

    def strides(self, b: Block) -> tuple[int, ...]:
        """The strides of ``b``'s convolutions in order: basic (3x3, 3x3); bottleneck (1x1, 3x3, 1x1)
        with the block's stride on the 3x3 (torchvision v1.5) or on the first 1x1 (paper v1)."""
        if self.block == "basic":
            return (b.stride, 1)
        return (b.stride, 1, 1) if self.stride_on == "1x1" else (1, b.stride, 1)

    def stages(self) -> list[list[Block]]:
        """Every block of every stage, with torchvision's width and stride rules."""
        stages, in_ch = [], self.stem_width
        for i, (depth, planes) in enumerate(zip(self.depths, self.widths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                out_ch = planes * self.expansion
                if self.block == "bottleneck":
                    width = int(planes * (self.width_per_group / 64.0)) * self.groups
                else:
                    width = planes
                blocks.append(Block(in_ch, width, out_ch, stride, self._shortcut(in_ch, out_ch, stride)))
                in_ch = out_ch
            stages.append(blocks)
        return stages

    def _shortcut(self, in_ch: int, out_ch: int, stride: int) -> str:
        if not self.residual:
            return "none"
        changes = stride != 1 or in_ch != out_ch
        if self.shortcut == "C" or (self.shortcut == "B" and changes):
            return "proj"
        if self.shortcut == "A" and changes:
            return "A"
        return "identity"


Spec = VGGSpec | ResNetSpec

# --------------------------------------------------------------------------- the table


def _table() -> dict[str, Spec]:
    t: dict[str, Spec] = {}
    for name, cfg in [("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E"), ("vgg16_c", "C")]:
        t[name] = VGGSpec(name, cfg)
        t[name + "_bn"] = VGGSpec(name + "_bn", cfg, batch_norm=True)
    t["vgg11_lrn"] = VGGSpec("vgg11_lrn", "A", lrn=True)

    imagenet = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
                152: ("bottleneck", (3, 8, 36, 3))}
    for d, (blk, depths) in imagenet.items():
        t[f"resnet{d}"] = ResNetSpec(f"resnet{d}", "resnet", blk, depths)
    for name, d, groups, wpg in [("resnext50_32x4d", 50, 32, 4), ("resnext101_32x8d", 101, 32, 8),
                                 ("resnext101_64x4d", 101, 64, 4), ("wide_resnet50_2", 50, 1, 128),
                                 ("wide_resnet101_2", 101, 1, 128)]:
        blk, depths = imagenet[d]
        t[name] = ResNetSpec(name, "resnet", blk, depths, groups=groups, width_per_group=wpg)
    for d in (18, 34):
        t[f"plain{d}"] = ResNetSpec(f"plain{d}", "plain", *imagenet[d])
    for d in (20, 32, 44, 56, 110, 1202):
        n = (d - 2) // 6
        for kind in ("resnet", "plain"):
            t[f"{kind}{d}"] = ResNetSpec(f"{kind}{d}", f"cifar-{kind}", "basic", (n, n, n),
                                         widths=(16, 32, 64), shortcut="A", num_classes=10)
    return t


_TABLE = _table()

_CHOICES = {"shortcut": ("A", "B", "C"), "stride_on": ("3x3", "1x1")}


def list_models() -> list[str]:
    """Every model name, in table order (VGG, ImageNet ResNets, plain, CIFAR)."""
    return list(_TABLE)


def names(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """Model names from a comma or space separated list (or several), in order; unknown names raise
    one ``KeyError`` that lists them all and every valid name."""
    items = [text] if isinstance(text, str) else list(text)
    out = [n.strip() for item in items for n in item.replace(",", " ").split() if n.strip()]
    unknown = [n for n in out if n not in _TABLE]
    if unknown:
        raise KeyError(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(_TABLE)}")
    return out


def get(name: str, **overrides) -> Spec:
    """The spec for ``name`` with ``overrides`` applied; unknown names or values raise."""
    if name not in _TABLE:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(_TABLE)}")
    spec = _TABLE[name]
    bad = sorted(set(overrides) - set(spec.OVERRIDES))
    if bad:
        raise TypeError(f"{name} takes no override {', '.join(map(repr, bad))}; "
                        f"valid overrides: {', '.join(spec.OVERRIDES)}")
    for key, value in overrides.items():
        _check_value(name, key, value)
    return dataclasses.replace(spec, **overrides)


def _check_value(name: str, key: str, value) -> None:
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ValueError(f"{name}: {key} must be one of {_CHOICES[key]}, got {value!r}")
    if key == "num_classes" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}: num_classes must be a positive int, got {value!r}")
    if key == "dropout" and not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"{name}: dropout must be a float in [0, 1), got {value!r}")
    if key == "zero_init_residual" and not isinstance(value, bool):
        raise ValueError(f"{name}: zero_init_residual must be a bool, got {value!r}")


def check_input(spec: Spec, shape: tuple[int, ...], dtype: str, param_dtype: str,
                layout: str, compute_dtype: str | None = None) -> None:
    """Raise ValueError naming expected vs got for an input the model cannot take.

    ``layout`` is "NCHW" (torch) or "NHWC" (Flax); dtypes are given by name ("float32").
    """
    shape = tuple(int(s) for s in shape)
    c_axis = 1 if layout == "NCHW" else 3
    want = f"a rank-4 {layout} array with {spec.in_channels} channels"
    if len(shape) != 4:
        raise ValueError(f"{spec.name}: expected {want}, got rank {len(shape)} shape {shape}")
    if shape[c_axis] != spec.in_channels:
        other = 3 if layout == "NCHW" else 1
        hint = ""
        if shape[other] == spec.in_channels:
            hint = f" (this looks like {'NHWC' if layout == 'NCHW' else 'NCHW'}: " \
                   f"{'torchnets takes NCHW' if layout == 'NCHW' else 'jaxnets takes NHWC'})"
        raise ValueError(f"{spec.name}: expected {want} at axis {c_axis}, got shape {shape}{hint}")
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    if min(h, w) < spec.min_size:
        raise ValueError(f"{spec.name}: expected spatial size >= {spec.min_size}x{spec.min_size}, "
                         f"got {h}x{w}")
    if "float" not in dtype:
        raise ValueError(f"{spec.name}: expected floating-point input ({param_dtype}), got {dtype}")
    allowed = {param_dtype} | ({compute_dtype} if compute_dtype else set())
    if dtype not in allowed:
        raise ValueError(f"{spec.name}: expected input dtype {' or '.join(sorted(allowed))} "
                         f"(the parameters' dtype), got {dtype}")
