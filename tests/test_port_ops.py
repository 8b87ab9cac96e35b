"""Every entry of the port's op table against torch: a small module using it, ported and proven
(float64 structure of eval and train outputs, statistics, gradients of every parameter and the
input, one SGD step; one sample: the gradients' precision needs five, their structure does not)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from parity import port
from parity.port import PortError


def proven(module: nn.Module, *inputs: torch.Tensor, **options):
    torch.manual_seed(0)
    p = port(module, inputs, samples=options.pop("samples", 1), **options)
    assert p.passed, p.report
    return p


def image(n=2, c=4, h=8, w=8):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(3))


class Seq(nn.Sequential):
    """A Sequential subclass: a class of its own, children named 0, 1, ..."""


CONVS = {
    "conv2d int padding": nn.Conv2d(4, 6, 3, padding=1),
    "conv2d tuple padding, stride, groups": nn.Conv2d(4, 6, (3, 1), stride=(2, 1), padding=(1, 0), groups=2),
    "conv2d dilation": nn.Conv2d(4, 4, 3, padding=2, dilation=2, bias=False),
    "conv2d padding same (odd pixel at the end)": nn.Conv2d(4, 4, 4, padding="same"),
    "conv2d padding valid": nn.Conv2d(4, 4, 3, padding="valid"),
    "conv2d depthwise": nn.Conv2d(4, 4, 3, padding=1, groups=4),
    "conv2d reflect padding": nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
    "conv transpose 2d": nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1),
    "conv transpose output padding": nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
}


@pytest.mark.parametrize("layer", list(CONVS.values()), ids=list(CONVS))
def test_convolutions(layer):
    proven(Seq(layer, nn.ReLU()), image())


def test_conv1d_on_sequences():
    """(N, C, L) moves channels-last for the conv and back for the output."""
    proven(Seq(nn.Conv1d(4, 6, 3, stride=2, padding=1), nn.BatchNorm1d(6), nn.GELU()), torch.randn(2, 4, 9))


NORMS = {
    "batch norm 2d": nn.BatchNorm2d(4),
    "batch norm momentum 0.3, eps 1e-3": nn.BatchNorm2d(4, momentum=0.3, eps=1e-3),
    "batch norm cumulative (momentum None)": nn.BatchNorm2d(4, momentum=None),
    "batch norm without affine": nn.BatchNorm2d(4, affine=False),
    "group norm": nn.GroupNorm(2, 4),
    "local response norm": nn.LocalResponseNorm(3, alpha=1e-3, beta=0.5, k=1.5),
}


@pytest.mark.parametrize("layer", list(NORMS.values()), ids=list(NORMS))
def test_normalisations(layer):
    proven(Seq(nn.Conv2d(4, 4, 1), layer), image())


def test_batch_norm_1d_and_linear():
    proven(Seq(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU6(), nn.Linear(8, 3)), torch.randn(4, 6))


class ChannelsLastLayerNorm(nn.Module):
    """ConvNeXt's pattern: permute to (N, H, W, C), LayerNorm over C, permute back: no transpose in Flax."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.ln = nn.LayerNorm(4, eps=1e-6)

    def forward(self, x):
        return self.ln(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    """torchvision's pattern: a LayerNorm subclass whose forward normalises channels functionally."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def test_layer_norms():
    p = proven(ChannelsLastLayerNorm(), image())
    assert "jnp.transpose" not in p.source  # the permutes cancel
    proven(Seq(nn.Conv2d(4, 4, 1), LayerNorm2d(4)), image())
    proven(Seq(nn.Linear(5, 6), nn.LayerNorm(6, elementwise_affine=False)), torch.randn(3, 5))
    proven(Seq(nn.Conv2d(4, 4, 1), nn.LayerNorm((4, 8, 8))), image())


ACTIVATIONS = [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.2), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish(),
               nn.Hardswish(), nn.Hardsigmoid(), nn.Sigmoid(), nn.Tanh(), nn.Softmax(dim=1), nn.ELU(0.5)]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=[repr(a) for a in ACTIVATIONS])
def test_activations(act):
    proven(Seq(nn.Conv2d(4, 4, 1), act), image())


POOLS = {
    "max pool 3x3/2 pad 1": nn.MaxPool2d(3, 2, 1),
    "max pool ceil mode": nn.MaxPool2d(3, 2, ceil_mode=True),
    "avg pool count_include_pad": nn.AvgPool2d(3, 2, 1),
    "avg pool without count_include_pad": nn.AvgPool2d(3, 2, 1, count_include_pad=False),
    "avg pool ceil mode": nn.AvgPool2d(3, 2, 1, ceil_mode=True),
    "adaptive avg 1x1": nn.AdaptiveAvgPool2d(1),
    "adaptive avg 3x5 (uneven bins)": nn.AdaptiveAvgPool2d((3, 5)),
    "adaptive max 3": nn.AdaptiveMaxPool2d(3),
    "upsample nearest": nn.Upsample(scale_factor=2),
    "upsample bilinear": nn.Upsample(scale_factor=2, mode="bilinear"),
    "upsample bilinear align corners": nn.Upsample(size=(11, 13), mode="bilinear", align_corners=True),
}


@pytest.mark.parametrize("layer", list(POOLS.values()), ids=list(POOLS))
def test_pooling_and_resizing(layer):
    proven(Seq(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), layer), image(h=9, w=9))


class Functional(nn.Module):
    """add, sub, mul, div, cat, chunk, split, indexing, unsqueeze, squeeze, expand, mean, sum, amax, pad,
    interpolate, the functional pools and a shape read with size() and .shape."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        y = self.a(x)
        p, q = y.chunk(2, dim=1)
        r, s = torch.split(y, [3, 5], dim=1)
        z = torch.cat([p * q, p - q / 2, (p + 1) * 2], dim=1)
        z = z[:, :4] + self.b(x) + s[:, 1:, ::2].mean(dim=2, keepdim=True)
        z = F.pad(z, (1, 0, 2, 1))
        z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
        g = F.adaptive_avg_pool2d(z, 1).squeeze(-1).squeeze(-1)  # (N, C)
        m = z.amax(dim=(2, 3)) + z.sum(dim=(2, 3)) / (h * w)
        e = g.unsqueeze(1).expand(n, 3, c)  # (N, 3, C)
        return torch.stack([e.sum(1), m], dim=1).flatten(1) + F.max_pool2d(z, 2).mean() + r.size(1)


def test_functional_ops():
    proven(Functional(), image())


class Reshapes(nn.Module):
    """view, reshape, permute, transpose and flatten: kept in Flax's layout where they only merge and split
    neighbours, torch's order where they mix channels with space (a flatten before a Linear)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 5)
        self.tok = nn.Linear(6, 7)

    def forward(self, x):
        y = self.conv(x)
        t = y.flatten(2).transpose(1, 2)  # (N, HW, C): no data moves in Flax
        t = self.tok(t).reshape(x.size(0), 8, 8, 7).permute(0, 3, 1, 2).contiguous()
        return self.fc(y.view(y.size(0), -1)), t.mean((2, 3))


def test_reshapes():
    p = proven(Reshapes(), image())
    assert p.source.count("jnp.transpose") == 1, p.source  # only the flatten before the Linear


class Attention(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.q = nn.Linear(8, 8)

    def forward(self, x):
        out, weights = self.mha(x, x, x)
        q = self.q(x).reshape(*x.shape[:2], 2, 4).transpose(1, 2)
        s = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        return out + s.transpose(1, 2).reshape(x.shape), weights


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention(batch_first):
    proven(Attention(batch_first), torch.randn(2, 5, 8))


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6, padding_idx=0)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(6, 3)

    def forward(self, ids):
        x = self.emb(ids)
        x = torch.cat([self.cls.expand(ids.shape[0], -1, -1), x], dim=1)
        return self.out(self.drop(x)).mean(1)


def test_tokens_embedding_parameters_and_dropout():
    ids = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(0))
    p = proven(Tokens(), ids)
    assert "nn.Dropout(rate=0.1" in p.source and "embed_padding" in p.source


class LayerScale(nn.Module):
    """ConvNeXt's layer scale: raw parameters of torch shape (C, 1, 1) and (1, C, 1, 1) broadcast against
    an NCHW map, one of them on the left."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.gamma = nn.Parameter(torch.randn(6, 1, 1))
        self.beta = nn.Parameter(torch.randn(1, 6, 1, 1))

    def forward(self, x):
        return self.beta + self.gamma * self.conv(x)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_parameters_that_broadcast_against_channels_are_stored_channels_last(api):
    from parity.convert import rules

    model = LayerScale()
    p = proven(model, image(), api=api)
    # stored as they broadcast against the channels-last map: no transpose at run time
    assert "(1, 1, 6)" in p.source and "(1, 1, 1, 6)" in p.source and "jnp.transpose" not in p.source
    layouts = {e.torch_key: e.layout for e in p.weight_map.entries}
    assert layouts["gamma"] == rules.Layout("permute", axes=(1, 2, 0))
    assert layouts["beta"] == rules.Layout("permute", axes=(0, 2, 3, 1))
    assert "gamma: torch's (6, 1, 1) stored as (1, 1, 6)" in p.report
    # the map both ways, bit-exact, and through its JSON form
    again = rules.WeightMap.from_json(p.weight_map.to_json())
    back = again.to_torch(p.weight_map.to_flax({k: v.numpy() for k, v in model.state_dict().items()}))
    for k, v in model.state_dict().items():
        assert torch.equal(torch.from_numpy(back[k]), v), k


class Shared(nn.Module):
    """One module called twice (its parameters shared), and a ModuleList indexed in forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Conv2d(4, 4, 1) for _ in range(2)])

    def forward(self, x):
        x = self.conv(torch.relu(self.conv(x)))
        for b in self.blocks:
            x = x + b(x)
        return x


def test_shared_modules_and_module_lists():
    p = proven(Shared(), image())
    assert "name='blocks_0'" in p.source


class Training(nn.Module):
    """A forward that reads self.training: both graphs written."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.conv(x)
        return x * 0.5 if self.training else x * 2.0


def test_a_forward_that_reads_training():
    p = proven(Training(), image())
    assert "if train:" in p.source


class ShapeDependent(nn.Module):
    """Python that depends on the input's shape: traced with the example's concrete shapes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[-2:]
        if h != w:
            x = F.pad(x, (0, max(h - w, 0), 0, max(w - h, 0)))
        return self.conv(x) * math.sqrt(2)


def test_python_that_depends_on_shapes():
    p = proven(ShapeDependent(), image(h=6, w=8))
    assert "concrete shapes" in p.report


class Unportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.rnn = nn.GRU(4, 4)

    def forward(self, x):
        y = torch.fft.fft(self.conv(x))
        return y.real + torch.cumsum(x, 1)


def test_everything_unsupported_is_listed_with_where_it_is():
    with pytest.raises(PortError) as e:
        port(Unportable(), image())
    msg = str(e.value)
    assert "torch._C._fft.fft_fft" in msg or "fft" in msg
    assert "cumsum" in msg and "rnn (GRU): never called" in msg
    assert "y = torch.fft.fft(self.conv(x))" in msg  # the source line of torch's forward
