"""The doctor's findings on layers beyond the examples: pooling, transposed convolutions, and a layer
it cannot read (named in one finding while the rest of the model is still read)."""

import flax.linen as fnn
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from parity.check import doctor


def diagnose(torch_module, flax_module, shape=(2, 4, 6, 6)):
    x = np.zeros(shape, np.float32)
    return doctor.diagnose(torch_module, flax_module, (torch.from_numpy(x),),
                           (jnp.asarray(np.moveaxis(x, 1, -1)),), lambda train: {})


def where_kinds(findings) -> set[tuple[str, str]]:
    return {(f.where, f.kind) for f in findings}


class TorchPools(nn.Module):
    def __init__(self, dims=2, ceil_mode=False):
        super().__init__()
        pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims]
        self.avg = pool(3, 1, padding=1, count_include_pad=False)
        self.max = nn.MaxPool2d(2, ceil_mode=ceil_mode) if dims == 2 else nn.Identity()

    def forward(self, x):
        return self.max(self.avg(x))


class FlaxPools(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return x


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_padded_average_pooling_is_named_in_every_dimension(dims):
    shape = {1: (2, 4, 6), 2: (2, 4, 6, 6), 3: (2, 4, 6, 6, 6)}[dims]
    found = diagnose(TorchPools(dims), FlaxPools(), shape)
    assert ("avg", "avgpool") in where_kinds(found), found
    assert "count_include_pad=False" in next(str(f) for f in found if f.kind == "avgpool")


def test_ceil_mode_pooling_is_named():
    assert ("max", "pool") in where_kinds(diagnose(TorchPools(2, ceil_mode=True), FlaxPools()))
    assert ("max", "pool") not in where_kinds(diagnose(TorchPools(2), FlaxPools()))


class TorchUp(nn.Module):
    def __init__(self, groups=1):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=groups)
        self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(self.up(x))


class FlaxUp(fnn.Module):
    padding: object = ((2, 2), (2, 2))
    conv_padding: object = ((1, 1), (1, 1))

    @fnn.compact
    def __call__(self, x):
        x = fnn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=self.padding, name="up")(x)
        return fnn.Conv(4, (3, 3), strides=(2, 2), padding=self.conv_padding, name="conv")(x)


def test_conv_transpose_is_read_and_its_padding_checked():
    """torch's ConvTranspose2d(k=4, s=2, p=1) is Flax's padding the dilated input (2, 2): also what
    Flax's 'SAME' gives here. (1, 1) is the classic slip (torch's p copied over)."""
    assert diagnose(TorchUp(), FlaxUp()) == []
    assert diagnose(TorchUp(), FlaxUp(padding="SAME")) == []
    found = diagnose(TorchUp(), FlaxUp(padding=((1, 1), (1, 1))))
    assert where_kinds(found) == {("up", "padding")}, found
    assert "[(2, 2), (2, 2)]" in str(found[0])
    assert ("up", "groups") in where_kinds(diagnose(TorchUp(groups=2), FlaxUp()))


class OddConv(fnn.Module):
    """A user's own layer under a torch conv's name, with a padding the doctor cannot read."""

    padding: object = 1.5
    strides: object = 1
    feature_group_count: int = 1

    @fnn.compact
    def __call__(self, x):
        return x


class FlaxOdd(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = OddConv(name="up")(x)
        return fnn.Conv(4, (3, 3), strides=(2, 2), padding="SAME", name="conv")(x)


def test_the_rest_of_the_model_is_read_past_a_layer_the_doctor_cannot_read():
    """One unreadable layer is one finding naming it; 'SAME' on the strided conv after it is still found."""
    class TorchOdd(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Conv2d(4, 4, 3, padding=1)
            self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)

        def forward(self, x):
            return self.conv(self.up(x))

    found = diagnose(TorchOdd(), FlaxOdd())
    assert where_kinds(found) == {("up", "doctor"), ("conv", "padding")}, found
    assert "could not read this layer (Conv2d against OddConv)" in str(next(f for f in found if f.where == "up"))
