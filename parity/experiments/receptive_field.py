"""VGG's 3x3-stack argument (paper Sec. 2.3) from real torch layers, and the A-E totals from the
variant table."""

from __future__ import annotations

import netspecs
from netspecs import counts


def stack_table(channels: int = 256, size: int = 56) -> list[list[str]]:
    """n stacked 3x3 convs vs one (2n+1)x(2n+1) conv, from real torch layers: receptive field
    measured by back-propagating from the centre output, weights counted, MACs at size x size."""
    import torch
    from torch import nn

    from torchnets import layers

    rows = [["layers", "receptive field", "weights", "weights / C^2", "GMACs", "nonlinearities"]]
    for n in (2, 3):
        for stack in (True, False):
            mods = [layers.conv(channels, channels, 3) for _ in range(n)] if stack else \
                [layers.conv(channels, channels, 2 * n + 1)]
            net = nn.Sequential(*[m for conv in mods for m in (conv, nn.ReLU())])
            x = torch.randn(1, channels, 31, 31, requires_grad=True)
            net(x)[0, :, 15, 15].sum().backward()
            touched = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero()
            rf = int(touched[:, 0].max() - touched[:, 0].min() + 1)
            weights = sum(m.weight.numel() for m in mods)
            macs = sum(m.weight.numel() for m in mods) * size * size
            label = f"{n} x 3x3" if stack else f"1 x {2 * n + 1}x{2 * n + 1}"
            rows.append([label, f"{rf}x{rf}", f"{weights:,}", f"{weights / channels**2:.0f}", f"{macs / 1e9:.2f}",
                         str(n if stack else 1)])
    return rows


def vgg_table() -> list[list[str]]:
    rows = [["config", "model", "conv layers", "params", "paper (M)", "GMACs @224"]]
    paper = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}
    for cfg, name in [("A", "vgg11"), ("A-LRN", "vgg11_lrn"), ("B", "vgg13"), ("C", "vgg16_c"), ("D", "vgg16"),
                      ("E", "vgg19")]:
        spec = netspecs.get(name)
        c = counts.count(spec)
        convs = sum(1 for la in spec.features() if la.kind == "conv")
        rows.append([cfg, name, str(convs), f"{c.params:,}", str(paper[cfg]), f"{c.macs / 1e9:.2f}"])
    return rows
