"""A user's test of a port with token-id inputs (they pass as they are, no layout change)."""

import torch

from examples.transformer import FlaxTransformer, TorchTransformer


def test_transformer_port(parity):
    torch.manual_seed(0)
    parity(TorchTransformer(), FlaxTransformer(), torch.randint(0, 50, (4, 16)), images=False, steps=2)
