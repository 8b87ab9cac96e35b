import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict

import jaxnets
import netspecs
import torchnets
from helpers import VERY_DEEP, small_size, variants
from initcheck import check as check_init
from netspecs import counts
from parity import convert

# The documented rule, written out here independently of parity.convert:
# torch leaf -> (collection, flax leaf), and how the shape changes.
LEAF = {"weight": ("params", None), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
        "running_var": ("batch_stats", "var"), "num_batches_tracked": ("batch_stats", "num_batches_tracked")}


def flax_layout_from_torch(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        sd = torchnets.build(name).state_dict()
    out = {}
    for key, t in sd.items():
        *path, leaf = key.split(".")
        collection, new = LEAF[leaf]
        shape = tuple(t.shape)
        if leaf == "weight":
            new = {4: "kernel", 2: "kernel", 1: "scale"}[t.dim()]
            shape = {4: lambda s: (s[2], s[3], s[1], s[0]), 2: lambda s: s[::-1], 1: lambda s: s}[t.dim()](shape)
        out["/".join([collection, *path, new])] = shape
    return out


def abstract_init(name: str, size: int | None = None, **kw):
    model = jaxnets.build(name, **kw)
    s = size or small_size(name)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, s, s, 3)), train=False))


@pytest.mark.parametrize("name", variants())
def test_paths_and_shapes_follow_torch_keys(name):
    shapes = {k: tuple(v.shape) for k, v in flatten_dict(abstract_init(name), sep="/").items()}
    assert shapes == flax_layout_from_torch(name)


@pytest.mark.parametrize("name", variants())
def test_param_count_equals_torchnets(name):
    params = abstract_init(name)["params"]
    assert sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params)) == \
        counts.count(netspecs.get(name)).params


# resnet50's init at the default tier's cost: zero_init_residual's gammas are resnet18's, the rest
# resnet20's and vgg11_bn's rules
@pytest.mark.parametrize("name,overrides", [pytest.param("resnet50", {}, marks=pytest.mark.slow), ("vgg11_bn", {}),
                                            pytest.param("resnext50_32x4d", {}, marks=pytest.mark.slow),
                                            ("resnet20", {}), ("resnet18", {"zero_init_residual": True}),
                                            pytest.param("resnet50", {"zero_init_residual": True},
                                                         marks=pytest.mark.slow)])
def test_init_follows_torchvision(name, overrides):
    spec = netspecs.get(name, **overrides)
    model = jaxnets.build(name, **overrides)
    s = small_size(name)
    variables = model.init(jax.random.key(0), jnp.zeros((1, s, s, 3)), train=False)
    for key, t in convert.flax_to_torch(variables, name, **overrides).items():
        if not key.endswith("num_batches_tracked"):
            check_init(key, t.numpy(), spec)


def _init(model, s, key=0, dtype=jnp.float32):
    return model.init(jax.random.key(key), jnp.zeros((2, s, s, 3), dtype), train=False)


# The ImageNet bottlenecks and VGG compile shapes of their own op by op (40-50 s each in CI): slow;
# their gradients are checked against torch in the default tier (test_check.py, test_port.py). LRN's
# shapes and gradient: test_layers.py; resnet18's blocks are resnet20's, its stem test_xla_conv.py's.
SHAPES_SLOW = {"vgg11_bn", "vgg11_lrn", "resnet18", "resnet50", "resnext50_32x4d"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SHAPES_SLOW else v
                                  for v in variants() if (n := getattr(v, "values", [v])[0]) not in VERY_DEEP])
def test_forward_shapes_and_grads(name):
    model = jaxnets.build(name, num_classes=7)
    s = small_size(name)
    x = jax.random.normal(jax.random.key(1), (2, s, s, 3))
    variables = _init(model, s)
    assert model.apply(variables, x, train=False).shape == (2, 7)

    def loss(params):
        y, upd = model.apply({"params": params, "batch_stats": variables.get("batch_stats", {})}, x, train=True,
                             mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
        return jnp.mean(y**2), (y, upd)

    grads, (y, upd) = jax.grad(loss, has_aux=True)(variables["params"])
    assert y.shape == (2, 7) and bool(jnp.all(jnp.isfinite(y)))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(variables["params"])
    # the running statistics moved, and the batch counters counted one step
    counters = [v for k, v in flatten_dict(upd.get("batch_stats", {})).items() if k[-1] == "num_batches_tracked"]
    if isinstance(netspecs.get(name), netspecs.ResNetSpec) or netspecs.get(name).batch_norm:
        assert counters and all(int(c) == 1 for c in counters)


# 15 s each for the very deep nets (tracing 1202 layers); resnet110 is the same code in the default tier
@pytest.mark.parametrize("name", ["resnet110", *(pytest.param(n, marks=pytest.mark.slow) for n in sorted(VERY_DEEP))])
def test_very_deep_variants_trace_with_eval_shape(name):
    model = jaxnets.build(name)
    variables = abstract_init(name, 32)
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3)), train=True,
                                               mutable=["batch_stats"]), variables)
    assert out[0].shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "vgg11_bn"])
def test_jit_train_step(name):
    import optax

    model = jaxnets.build(name, num_classes=10)
    s = 32
    variables = _init(model, s)
    tx = optax.sgd(0.01, momentum=0.9)
    opt_state = tx.init(variables["params"])
    x = jax.random.normal(jax.random.key(1), (4, s, s, 3))
    labels = jnp.arange(4) % 10

    @jax.jit
    def step(params, stats, opt_state, key):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"], rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), upd
        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), upd["batch_stats"], opt_state, loss

    params, stats = variables["params"], variables.get("batch_stats", {})
    start = jax.tree_util.tree_map(np.asarray, params)
    for i in range(3):
        params, stats, opt_state, loss = step(params, stats, opt_state, jax.random.key(i))
        assert np.isfinite(float(loss))
    moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != b)), params, start)
    assert all(jax.tree_util.tree_leaves(moved))


def test_float64_under_x64():
    with jax.enable_x64(True):
        model = jaxnets.build("resnet20")
        variables = _init(model, 32)
        v64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a,
                                     variables)
        x = jnp.ones((2, 32, 32, 3), jnp.float64)
        y, upd = model.apply(v64, x, train=True, mutable=["batch_stats"])
        assert y.dtype == jnp.float64
        assert upd["batch_stats"]["bn1"]["var"].dtype == jnp.float64
        with pytest.raises(ValueError, match="expected input dtype float64"):
            model.apply(v64, x.astype(jnp.float32), train=False)


def test_bfloat16_compute():
    model = jaxnets.build("resnet20", dtype=jnp.bfloat16)
    variables = _init(model, 32)
    assert variables["params"]["conv1"]["kernel"].dtype == jnp.float32
    y, upd = model.apply(variables, jnp.ones((2, 32, 32, 3), jnp.bfloat16), train=True, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16
    assert upd["batch_stats"]["bn1"]["mean"].dtype == jnp.float32
    # float32 input to a bf16-compute model is fine too (cast at the first conv)
    assert model.apply(variables, jnp.ones((2, 32, 32, 3)), train=False).shape == (2, 10)


@pytest.fixture(scope="module")
def vgg11_lrn():
    model = jaxnets.build("vgg11_lrn")
    return model, jax.eval_shape(lambda: _init(model, 32))


@pytest.mark.parametrize("shape,dtype,match", [
    ((3, 32, 32), jnp.float32, "rank 3"),
    ((2, 32, 32, 1), jnp.float32, "3 channels"),
    ((2, 3, 32, 32), jnp.float32, "looks like NCHW"),
    ((2, 16, 16, 3), jnp.float32, "spatial size >= 32x32, got 16x16"),
    ((2, 32, 32, 3), jnp.int32, "floating-point input"),
    ((2, 32, 32, 3), jnp.float16, "expected input dtype float32.*got float16"),
])
def test_bad_input_is_a_clear_value_error(vgg11_lrn, shape, dtype, match):
    model, variables = vgg11_lrn
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape, dtype), train=False), variables)


def test_bad_input_inside_jit_and_at_init():
    model = jaxnets.build("resnet20")
    with pytest.raises(ValueError, match="looks like NCHW"):
        model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)), train=False)
    variables = _init(model, 32)
    with pytest.raises(ValueError, match=">= 4x4"):
        jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.zeros((1, 2, 2, 3)))


def test_modules_are_named_explicitly():
    # no automatic Linen names (Conv_0, BatchNorm_1, Dense_0) anywhere
    for name in ["resnet50", "vgg16_c_bn", "resnet20"]:
        for path in flatten_dict(abstract_init(name), sep="/"):
            assert "_" not in path.split("/")[-2] or path.split("/")[-2].startswith(("layer", "num")), path
    assert isinstance(jaxnets.build("vgg11"), nn.Module)
