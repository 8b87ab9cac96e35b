"""A user's test of a port, as ``parity``'s pytest plugin makes it: the fixture fails with the first
bad layer and both distances."""

import pytest
import torch

from examples.convnet import FlaxConvNet, TorchConvNet


@pytest.mark.precision
def test_convnet_port(parity):
    torch.manual_seed(0)
    result = parity(TorchConvNet(), FlaxConvNet(), torch.randn(4, 3, 32, 32), steps=2)
    assert result.findings == []  # the doctor sees no convention mismatch
