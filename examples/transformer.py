"""A small sequence model that is not one of the twins, written in both frameworks: token and
position embeddings, pre-LayerNorm self-attention, a GELU MLP and a Linear head over tokens.
Flax names mirror torch's (``attn.qkv``, ``mlp.0``), so ``parity.check_pair`` moves the weights by
rule; its inputs are token ids, which pass as they are.

``FlaxTransformer(bug=...)`` plants one classic porting bug (``BUGS``) for the tests.
"""

from __future__ import annotations

import flax.linen as fnn
import jax
import jax.numpy as jnp
import torch
from torch import nn

BUGS = ("layernorm_eps", "gelu_tanh")


class TorchAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, t, d))


class TorchTransformer(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4, length: int = 16, num_classes: int = 5):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = TorchAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return self.head(x)


class FlaxAttention(fnn.Module):
    dim: int
    heads: int

    @fnn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, t, d = x.shape
        qkv = fnn.Dense(3 * self.dim, name="qkv")(x).reshape(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        a = jax.nn.softmax(q @ k.swapaxes(-1, -2) / (d // self.heads) ** 0.5, axis=-1)
        return fnn.Dense(self.dim, name="proj")((a @ v).swapaxes(1, 2).reshape(b, t, d))


class FlaxTransformer(fnn.Module):
    vocab: int = 50
    dim: int = 32
    heads: int = 4
    length: int = 16
    num_classes: int = 5
    bug: str | None = None

    @fnn.compact
    def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
        eps = 1e-6 if self.bug == "layernorm_eps" else 1e-5
        x = fnn.Embed(self.vocab, self.dim, name="tok")(ids) + \
            fnn.Embed(self.length, self.dim, name="pos")(jnp.arange(ids.shape[1]))
        x = x + FlaxAttention(self.dim, self.heads, name="attn")(fnn.LayerNorm(epsilon=eps, name="ln1")(x))
        h = fnn.LayerNorm(epsilon=eps, name="ln2")(x)
        h = fnn.Dense(4 * self.dim, name="mlp_0")(h)
        h = fnn.Dense(self.dim, name="mlp_2")(fnn.gelu(h, approximate=self.bug == "gelu_tanh"))
        return fnn.Dense(self.num_classes, name="head")(x + h)
