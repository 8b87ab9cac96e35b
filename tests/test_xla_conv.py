"""XLA:CPU's slow swapped convolutions: jaxnets computes them as dots (jaxnets.layers.conv_taps).

Structural, not timed: the optimised HLO of the bench's jitted train step and inference holds no
convolution with window reversal, the mark of XLA's operand swap (docs/benchmark.md).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxnets
from jaxnets import layers
from parity import specs, throughput, training

# one variant per family: basic, bottleneck, grouped, wide, plain, CIFAR, VGG with BN, LRN and 1x1 convs
FAMILIES = ["resnet18", "resnet20", "vgg11", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "plain18",
            "plain20", "vgg11_bn", "vgg11_lrn", "vgg16_c"]
DEFAULT = {"resnet18", "resnet20", "vgg11"}
REVERSED = re.compile(r"convolution\(.*rhs_reversal")


def compiled(name: str, size: int, conv_impl: str) -> dict[str, str]:
    """The optimised HLO of the bench's jitted train step and inference."""
    model = jaxnets.build(name, conv_impl=conv_impl, **training.overrides(name))
    x = jnp.zeros((2, size, size, 3), jnp.float32)
    y = jnp.zeros((2,), jnp.int32)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    tx, train, infer = throughput.jax_programs(model, 0.1)
    state = jax.eval_shape(lambda v: training.flax_state(v, tx), v)
    return {"train": jax.jit(train).lower(state, x, y).compile().as_text(),
            "infer": jax.jit(infer).lower(v["params"], v.get("batch_stats", {}), x).compile().as_text()}


def reversed_convs(name: str, size: int, conv_impl: str) -> dict[str, int]:
    texts = compiled(name, size, conv_impl)
    return {k: sum(1 for line in t.splitlines() if REVERSED.search(line)) for k, t in texts.items()}


def instructions(hlo: str) -> list[str]:
    """The instructions alone: metadata (source lines) and backend configs dropped."""
    return [re.sub(r", metadata=\{[^}]*\}|, backend_config=.*", "", line) for line in hlo.splitlines()
            if re.match(r"^\s*(ROOT )?%", line)]


def sizes(name: str) -> list[int]:
    return sorted({specs.get(name).min_size, 64})


@pytest.mark.parametrize("name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in FAMILIES])
def test_no_reversed_convolution(name):
    for size in sizes(name):
        assert reversed_convs(name, size, "auto") == {"train": 0, "infer": 0}, (name, size)


def test_same_program_where_nothing_is_swapped():
    """resnet20 at 32x32 (last stage 8x8): both forms compile to the same instructions, so a
    timing difference between them there is run-to-run noise."""
    auto, xla = compiled("resnet20", 32, "auto"), compiled("resnet20", 32, "xla")
    for k in auto:
        assert instructions(auto[k]) == instructions(xla[k]), k


def test_stock_form_has_them():
    """The stock formulation (conv_impl="xla") shows the swap the test above looks for."""
    got = reversed_convs("resnet18", 64, "xla")
    assert got["train"] > 0 and got["infer"] > 0


@pytest.mark.parametrize("h,stride,groups", [(1, 1, 1), (2, 1, 1), (2, 2, 1), (3, 2, 1), (4, 2, 1), (2, 1, 4),
                                             (4, 2, 4), (2, 1, 8)])
def test_conv_taps_matches_torch(h, stride, groups):
    """conv_taps against torch's conv2d in float64, forward and both gradients (depthwise: groups 8)."""
    rng = np.random.default_rng(h * 10 + stride + groups)
    cin, cout = 8, 16
    x = rng.standard_normal((2, h, h + 1, cin))
    w = rng.standard_normal((3, 3, cin // groups, cout))
    g_out = None
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=1, groups=groups)
    g_out = rng.standard_normal(ty.shape)
    ty.backward(torch.from_numpy(g_out))
    with jax.enable_x64(True):
        def f(x, w):
            return layers.conv_taps(x, w, (stride, stride), ((1, 1), (1, 1)), feature_group_count=groups)

        y, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(w))
        dx, dw = vjp(jnp.asarray(g_out.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(y), ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dx), tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dw), tw.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-12, atol=1e-12)


def test_taps_chosen_exactly_where_xla_swaps():
    """The rule: the window has more elements than the input's or the output's spatial area."""
    assert layers.xla_would_swap((3, 3), (2, 2), (2, 2))      # layer4 at 64x64: forward swapped
    assert layers.xla_would_swap((3, 3), (4, 4), (2, 2))      # stride 2 onto 2x2: backward-data swapped
    assert not layers.xla_would_swap((3, 3), (4, 4), (4, 4))
    assert not layers.xla_would_swap((1, 1), (1, 1), (1, 1))  # 1x1 convs are never swapped
    assert not layers.xla_would_swap((7, 7), (224, 224), (112, 112))


def test_conv_impl_is_checked():
    with pytest.raises(ValueError, match="conv_impl: expected one of"):
        jaxnets.build("resnet18", conv_impl="fast")


def test_conv_impls_give_the_same_model():
    """Same parameters (names, shapes), same outputs in float64, in train mode too."""
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3))
    with jax.enable_x64(True):
        outs = []
        for impl in layers.CONV_IMPLS:
            m = jaxnets.build("resnet18", conv_impl=impl, param_dtype=jnp.float64)
            v = m.init(jax.random.key(0), jnp.asarray(x))
            y, upd = m.apply(v, jnp.asarray(x), train=True, mutable=["batch_stats"])
            outs.append((jax.tree_util.tree_map(np.asarray, v), np.asarray(y), upd))
    (v0, y0, u0), (v1, y1, u1) = outs
    assert jax.tree_util.tree_structure(v0) == jax.tree_util.tree_structure(v1)
    # 1e-10, the parity suite's float64 structure bound: train-mode BatchNorm over 2 values at 1x1
    # maps amplifies the summation-order difference (1e-12 absolute seen)
    np.testing.assert_allclose(y0, y1, rtol=1e-10, atol=1e-10)
    for a, b in zip(jax.tree_util.tree_leaves(u0), jax.tree_util.tree_leaves(u1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-10)
