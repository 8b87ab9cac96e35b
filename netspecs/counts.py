"""Analytic parameter and MAC counts per variant, from the same plans the twins are built from.

MACs count multiply-accumulates of convolutions and linear layers only, as torchvision's
"GFLOPS" metadata does (it is really GMACs). One training step costs about 3 forward passes,
so FLOPs per image per train step = 6 x MACs less the first conv's input gradient (never
computed: the images need no gradient), per inference = 2 x MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

import netspecs

__all__ = ["Count", "count", "first_conv_macs", "train_flops", "infer_flops"]


@dataclass(frozen=True)
class Count:
    params: int
    macs: int  # per image, at the size given to count()


def _out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _conv(h: int, w: int, cin: int, cout: int, k: int, stride: int = 1,
          groups: int = 1) -> tuple[int, int, int, int]:
    """(params without bias, MACs, out height, out width) of a torch-padded (k // 2) conv."""
    oh, ow = _out(h, k, stride, k // 2), _out(w, k, stride, k // 2)
    weights = cout * (cin // groups) * k * k
    return weights, weights * oh * ow, oh, ow


def _vgg(spec: netspecs.VGGSpec, h: int, w: int) -> Count:
    params = macs = 0
    c = spec.in_channels
    for layer in spec.features():
        if layer.kind == "conv":
            p, m, h, w = _conv(h, w, c, layer.out, layer.kernel)
            params, macs, c = params + p + layer.out, macs + m, layer.out
        elif layer.kind == "bn":
            params += 2 * layer.out
        elif layer.kind == "pool":
            h, w = h // 2, w // 2
    for layer in spec.classifier():
        if layer.kind == "linear":
            params += layer.out * layer.inp + layer.out
            macs += layer.out * layer.inp
    return Count(params, macs)


def _resnet(spec: netspecs.ResNetSpec, h: int, w: int) -> Count:
    c, stem = spec.stem_width, spec.stem()
    params, macs, h, w = _conv(h, w, spec.in_channels, c, stem.kernel, stem.stride)
    params += 2 * c
    if stem.pool:
        h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)
    for stage in spec.stages():
        for b in stage:
            strides = spec.strides(b)
            if spec.block == "basic":
                convs = [(b.in_ch, b.width, 3, strides[0], 1), (b.width, b.out_ch, 3, strides[1], 1)]
            else:
                convs = [(b.in_ch, b.width, 1, strides[0], 1), (b.width, b.width, 3, strides[1], spec.groups),
                         (b.width, b.out_ch, 1, strides[2], 1)]
            bh, bw = h, w
            for cin, cout, kk, s, g in convs:
                p, m, bh, bw = _conv(bh, bw, cin, cout, kk, s, g)
                params, macs = params + p + 2 * cout, macs + m
            if b.shortcut == "proj":
                p, m, _, _ = _conv(h, w, b.in_ch, b.out_ch, 1, b.stride)
                params, macs = params + p + 2 * b.out_ch, macs + m
            h, w = bh, bw
    params += spec.last_channels * spec.num_classes + spec.num_classes
    macs += spec.last_channels * spec.num_classes
    return Count(params, macs)


def count(spec: netspecs.Spec, size: int | None = None) -> Count:
    """Parameters and per-image MACs of ``spec`` at ``size`` x ``size`` (default: its family's)."""
    size = spec.input_size if size is None else size
    if isinstance(spec, netspecs.VGGSpec):
        return _vgg(spec, size, size)
    return _resnet(spec, size, size)


def first_conv_macs(spec: netspecs.Spec, size: int | None = None) -> int:
    """MACs per image of the first convolution, whose input gradient no train step computes."""
    size = spec.input_size if size is None else size
    if isinstance(spec, netspecs.VGGSpec):
        first = next(layer for layer in spec.features() if layer.kind == "conv")
        return _conv(size, size, spec.in_channels, first.out, first.kernel)[1]
    stem = spec.stem()
    return _conv(size, size, spec.in_channels, spec.stem_width, stem.kernel, stem.stride)[1]


def train_flops(spec: netspecs.Spec, size: int | None = None) -> int:
    """FLOPs per image of one training step: forward, weight gradient and input gradient, 2 FLOPs
    per MAC each (6 x MACs), less the first conv's input gradient, which is never computed."""
    return 6 * count(spec, size).macs - 2 * first_conv_macs(spec, size)


def infer_flops(spec: netspecs.Spec, size: int | None = None) -> int:
    """FLOPs per image of one forward pass."""
    return 2 * count(spec, size).macs
