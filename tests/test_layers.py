"""Each framework difference in jaxnets/layers.py against its torch counterpart, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxnets import layers as jl
from torchnets import layers as tl


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("h", [7, 8, 13, 32])
def test_local_response_norm_matches_torch(x64, h):
    x = np.random.default_rng(h).standard_normal((2, h, h, 9)) * 3
    want = nhwc(tl.local_response_norm()(nchw(x)))
    np.testing.assert_allclose(np.asarray(jl.local_response_norm(jnp.asarray(x))), want, rtol=1e-13)


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (5, 5), (7, 7), (9, 14), (16, 16)])
def test_adaptive_avg_pool_matches_torch(x64, h, w):
    x = np.random.default_rng(h * w).standard_normal((2, h, w, 4))
    want = nhwc(torch.nn.AdaptiveAvgPool2d((7, 7))(nchw(x)))
    # atol: a bin mean near zero carries float64 rounding of its O(1) summands (~1e-16)
    np.testing.assert_allclose(np.asarray(jl.adaptive_avg_pool(jnp.asarray(x), 7)), want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("h", [7, 8, 15, 16])
def test_stem_max_pool_matches_torch(x64, h):
    x = np.random.default_rng(h).standard_normal((2, h, h, 3)) - 5  # all negative: padding must be -inf
    want = nhwc(tl.max_pool_3x3()(nchw(x)))
    np.testing.assert_array_equal(np.asarray(jl.max_pool_3x3(jnp.asarray(x))), want)


@pytest.mark.parametrize("pool,k,stride,pad", [("max_pool_3x3", 3, 2, 1), ("max_pool_2x2", 2, 2, 0)])
@pytest.mark.parametrize("h,w", [(7, 7), (8, 9), (13, 16)])
def test_max_pool_gradient_goes_where_torch_sends_it(x64, pool, k, stride, pad, h, w):
    """Ties included (values drawn from 4 integers, half of them ReLU zeros): each window's gradient
    goes to its first maximum in row-major order, as torch's max_pool2d backward does."""
    rng = np.random.default_rng(h * w)
    x = np.maximum(rng.integers(-3, 4, (2, h, w, 3)), 0).astype(np.float64)
    tx = nchw(x).requires_grad_(True)
    ty = torch.nn.functional.max_pool2d(tx, k, stride, pad)
    g = rng.standard_normal(ty.shape)
    ty.backward(torch.from_numpy(g))
    y, vjp = jax.vjp(getattr(jl, pool), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), nhwc(ty))
    # overlapping windows (3x3/2) add their gradients in another order: 1 ulp; a misrouted one is O(1)
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g.transpose(0, 2, 3, 1)))[0]), nhwc(tx.grad), rtol=1e-14)


@pytest.mark.parametrize("h,stride", [(7, 2), (8, 2), (8, 1)])
def test_shortcut_a_matches_torch(x64, h, stride):
    x = np.random.default_rng(h).standard_normal((2, h, h, 4))
    want = nhwc(tl.ShortcutA(4, 8, stride)(nchw(x)))
    np.testing.assert_array_equal(np.asarray(jl.shortcut_a(jnp.asarray(x), 8, stride)), want)


def test_batch_norm_train_update_matches_torch(x64):
    x = np.random.default_rng(0).standard_normal((3, 5, 5, 4)) * 2 + 1
    bn_t = tl.batch_norm(4).double().train()
    y_t = nhwc(bn_t(nchw(x)))
    bn_j = jl.BatchNorm(param_dtype=jnp.float64)
    v = bn_j.init(jax.random.key(0), jnp.asarray(x), train=False)
    y_j, upd = bn_j.apply(v, jnp.asarray(x), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y_j), y_t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["mean"]), bn_t.running_mean.numpy(), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["var"]), bn_t.running_var.numpy(), rtol=1e-13)
    assert int(upd["batch_stats"]["num_batches_tracked"]) == int(bn_t.num_batches_tracked) == 1


def test_batch_norm_train_gradients_match_torch(x64):
    """layers.batch_norm_train's own derivative against torch's batch_norm backward."""
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((3, 5, 5, 4)) * 2 + 1, rng.standard_normal((3, 5, 5, 4))
    scale, bias = rng.standard_normal(4), rng.standard_normal(4)
    bn_t = tl.batch_norm(4).double().train()
    with torch.no_grad():
        bn_t.weight.copy_(torch.from_numpy(scale))
        bn_t.bias.copy_(torch.from_numpy(bias))
    xt = nchw(x).requires_grad_(True)
    (bn_t(xt) * nchw(g)).sum().backward()
    bn_j = jl.BatchNorm(param_dtype=jnp.float64)
    stats = bn_j.init(jax.random.key(0), jnp.asarray(x), train=False)["batch_stats"]

    def loss(params, x):
        y, _ = bn_j.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(y * g)

    gp, gx = jax.grad(loss, argnums=(0, 1))({"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)},
                                            jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(gx), nhwc(xt.grad), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gp["scale"]), bn_t.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gp["bias"]), bn_t.bias.grad.numpy(), rtol=1e-12)


def test_batch_norm_train_derivative_is_autodiffs(x64):
    """The custom JVP rule against autodiff through the plain formula: forward mode, reverse mode
    (cotangents on y, mean and variance) and a Hessian-vector product."""
    def plain(x, s, b):
        m = x.mean(axis=(0, 1, 2))
        v = jnp.square(x - m).mean(axis=(0, 1, 2))
        return (x - m) * jax.lax.rsqrt(v + 1e-5) * s + b, m, v

    def custom(x, s, b):
        return jl.batch_norm_train(x, s, b, 1e-5)

    rng = np.random.default_rng(2)
    x, dx, g, u = (jnp.asarray(rng.standard_normal((2, 3, 4, 5))) for _ in range(4))
    s, b, ds, db, gm, gv = (jnp.asarray(rng.standard_normal(5)) for _ in range(6))
    got = []
    for f in (plain, custom):
        y, t = jax.jvp(f, (x, s, b), (dx, ds, db))
        back = jax.vjp(f, x, s, b)[1]((g, gm, gv))
        hvp = jax.grad(lambda x: jnp.vdot(jax.grad(lambda x: jnp.sum(f(x, s, b)[0] * g))(x), u))(x)  # noqa: B023
        got.append([*y, *t, *back, hvp])
    for a, c in zip(*got, strict=True):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-10, atol=1e-12)


def test_local_response_norm_gradient_matches_torch_under_jit(x64):
    x = np.random.default_rng(3).standard_normal((2, 5, 5, 9))
    xt = nchw(x).requires_grad_(True)
    tl.local_response_norm()(xt).square().sum().backward()
    g = jax.jit(jax.grad(lambda a: jnp.sum(jnp.square(jl.local_response_norm(a)))))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(g), nhwc(xt.grad), rtol=1e-12)
