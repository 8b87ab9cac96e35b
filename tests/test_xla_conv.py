"""XLA:CPU's slow convolution paths and how jaxnets avoids them: swapped convolutions computed as
dots (jaxnets.layers.conv_taps), and eval-mode convolutions kept out of YNNPACK's reduce fusion
(jaxnets.layers.global_avg_pool).

Structural, not timed: the optimised HLO of the bench's jitted train step and inference holds no
convolution with window reversal, the mark of XLA's operand swap, and no convolution inside a
YNNPACK fusion under the bench's XLA flags (docs/benchmark.md).
"""

import functools
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxnets
import netspecs
from jaxnets import layers
from parity import training, xla_cpu
from parity.bench import jobs, profiling, worker

# one variant per family: basic, bottleneck, grouped, wide, plain, CIFAR, VGG with BN, LRN and 1x1 convs
FAMILIES = ["resnet18", "resnet20", "vgg11", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "plain18",
            "plain20", "vgg11_bn", "vgg11_lrn", "vgg16_c"]
DEFAULT = {"resnet18", "resnet20", "vgg11"}
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
REVERSED = re.compile(r"convolution\(.*rhs_reversal")


@functools.cache
def compiled(name: str, size: int, conv_impl: str, mode: str, jit=jax.jit) -> str:
    """The optimised HLO of the bench's jitted train step (mode "train") or inference ("infer"),
    batch 2, under this process's XLA_FLAGS (PROBE runs it under others), jitted by ``jit``."""
    model = jaxnets.build(name, conv_impl=conv_impl, **training.overrides(name))
    x = jnp.zeros((2, size, size, 3), jnp.float32)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    tx, train, infer = worker.jax_programs(model, 0.1)
    if mode == "infer":
        return jit(infer).lower(v["params"], v.get("batch_stats", {}), x).compile().as_text()
    state = jax.eval_shape(lambda v: training.flax_state(v, tx), v)
    return jit(train).lower(state, x, jnp.zeros((2,), jnp.int32)).compile().as_text()


# compiled() in a fresh interpreter, whose XLA_FLAGS the caller sets: argv = out dir, then
# name:size:conv_impl:mode per program, each written to <out>/<name>_<size>_<conv_impl>_<mode>.hlo
PROBE = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_xla_conv import compiled
for arg in sys.argv[2:]:
    name, size, impl, mode = arg.split(":")
    open(f"{{sys.argv[1]}}/{{name}}_{{size}}_{{impl}}_{{mode}}.hlo", "w").write(compiled(name, int(size), impl, mode))
"""


def probe(out: Path, env: dict[str, str], programs: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *programs], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def reversed_convs(name: str, size: int, conv_impl: str) -> dict[str, int]:
    return {mode: sum(1 for line in compiled(name, size, conv_impl, mode).splitlines() if REVERSED.search(line))
            for mode in ("train", "infer")}


def instructions(hlo: str) -> list[str]:
    """The instructions alone: metadata (source lines) and backend configs dropped."""
    return [re.sub(r", metadata=\{[^}]*\}|, backend_config=.*", "", line) for line in hlo.splitlines()
            if re.match(r"^\s*(ROOT )?%", line)]


def sizes(name: str) -> list[int]:
    return sorted({netspecs.get(name).min_size, 64})


@pytest.mark.parametrize("name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in FAMILIES])
def test_no_reversed_convolution(name):
    for size in sizes(name):
        assert reversed_convs(name, size, "auto") == {"train": 0, "infer": 0}, (name, size)


def primitives(name: str, size: int, conv_impl: str, train: bool) -> list[str]:
    """The primitives of the model's traced forward, in order (nested jaxprs included)."""
    model = jaxnets.build(name, conv_impl=conv_impl)
    x = jnp.zeros((2, size, size, 3), jnp.float32)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"]))(v, x)
    out = []

    def walk(jx):
        for eqn in jx.eqns:
            out.append(eqn.primitive.name)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return out


def test_same_program_where_nothing_is_swapped():
    """resnet20 at 32x32 (last stage 8x8): both forms compile the train step to the same
    instructions, so a timing difference between them there is run-to-run noise; in eval mode the
    only difference is the identity before the pool (test_no_convolution_in_ynnpack_fusions)."""
    auto, xla = (compiled("resnet20", 32, impl, "train") for impl in ("auto", "xla"))
    assert instructions(auto) == instructions(xla)
    a, b = primitives("resnet20", 32, "auto", False), primitives("resnet20", 32, "xla", False)
    assert a.count("reduce_precision") == 1 and "reduce_precision" not in b
    assert [p for p in a if p != "reduce_precision"] == b


def test_stock_form_has_them():
    """The stock formulation (conv_impl="xla") shows the swap the test above looks for."""
    got = reversed_convs("resnet18", 64, "xla")
    assert got["train"] > 0 and got["infer"] > 0


# eval mode, where YNNPACK's reduce fusion took the last stage's convolutions (measured, batch 2):
# resnet18 at 224x224 (6 of 20), resnet20 and plain20 at 32x32 (6 of 19), resnet50 at 64x64 (1 of 18)
YNN_CASES = [("resnet18", 224), ("resnet20", 32), ("plain20", 32), ("resnet50", 64)]

def ynnpack_convolutions(hlo: str) -> int:
    """Convolutions inside YNNPACK fusions (parity.profiling.fused_ops)."""
    return sum(ops.get("convolution", 0) for library, ops in profiling.fused_ops(hlo).values()
               if library == "__ynn_fusion")


def test_no_convolution_in_ynnpack_fusions(tmp_path):
    """Under the bench's XLA flags, eval-mode ResNets keep every convolution in XLA's own kernels;
    the stock form shows the YNNPACK fusion that takes them, so the check can see it."""
    if not jobs.tuned_flags_supported():
        pytest.skip(f"this jaxlib does not know {jobs.tuned_cpu_flags('train')}")
    env = jobs.worker_env(jobs.Job("resnet18", "jax", mode="infer"))
    probe(tmp_path, env, [f"{n}:{s}:auto:infer" for n, s in YNN_CASES] + ["resnet18:224:xla:infer"])
    for name, size in YNN_CASES:
        assert ynnpack_convolutions((tmp_path / f"{name}_{size}_auto_infer.hlo").read_text()) == 0, (name, size)
    assert ynnpack_convolutions((tmp_path / "resnet18_224_xla_infer.hlo").read_text()) > 0


TRANSPOSE_FUSION = re.compile(r"^\s*%transpose\w*fusion[.\d]* = \S+ fusion\(([^)]*)\)", re.M)


def test_train_flag_reaches_the_compiler(tmp_path):
    """The bench's train-step option (xla_cpu_flatten_after_fusion) goes through
    --xla_backend_extra_options, which a jaxlib that dropped it would ignore silently. Its effect, in
    resnet20's train step at 32x32: the fusions that transpose for the weight gradients read fewer
    operands (less of BatchNorm's backward copied in; measured 20 -> 8 at most, 298 -> 171 in all)."""
    if not jobs.tuned_flags_supported():
        pytest.skip(f"this jaxlib does not know {jobs.tuned_cpu_flags('train')}")
    widest = {}
    for flags in ("infer", "train"):  # the same train step, under the inference flags and the train flags
        (tmp_path / flags).mkdir()
        probe(tmp_path / flags, jobs.worker_env(jobs.Job("resnet20", "jax", mode=flags)),
              ["resnet20:32:auto:train"])
        hlo = (tmp_path / flags / "resnet20_32_auto_train.hlo").read_text()
        widest[flags] = max(len(m.group(1).split(", ")) for m in TRANSPOSE_FUSION.finditer(hlo))
    assert widest["train"] < widest["infer"], widest


def test_per_compile_options_give_the_flags_program(tmp_path, monkeypatch):
    """``training.jit`` (parity.xla_cpu.TUNED_OPTIONS, one compile's options) compiles the program the
    bench's convolution flag gives a whole process: resnet18's train step and inference, where jaxlib's
    defaults compile another (a jaxlib whose default list of YNNPACK fusions changed fails here)."""
    if not jobs.tuned_flags_supported():
        pytest.skip(f"this jaxlib does not know {jobs.tuned_cpu_flags('train')}")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the user's flags would win over the options
    assert training.compiler_options() == xla_cpu.TUNED_OPTIONS
    env = {k: v for k, v in jobs.worker_env(jobs.Job("resnet18", "jax")).items() if k != "XLA_FLAGS"}
    programs = ["resnet18:64:auto:train", "resnet18:64:auto:infer"]
    (tmp_path / "flags").mkdir()
    (tmp_path / "stock").mkdir()
    probe(tmp_path / "flags", {**env, "XLA_FLAGS": " ".join(xla_cpu.TUNED_FLAGS)}, programs)
    probe(tmp_path / "stock", env, programs)
    for mode in ("train", "infer"):
        flags = instructions((tmp_path / "flags" / f"resnet18_64_auto_{mode}.hlo").read_text())
        stock = instructions((tmp_path / "stock" / f"resnet18_64_auto_{mode}.hlo").read_text())
        assert instructions(compiled("resnet18", 64, "auto", mode, training.jit)) == flags, mode
        assert stock != flags, mode  # else this test could not tell the options had any effect
    assert training.compiler_options("gpu") == {}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert training.compiler_options() == {}  # a user's own setting wins


def test_ynnpack_reproducer_shows_the_fusion_and_the_fence():
    """scripts/xla_ynn_reduce_fusion.py, the stand-alone reproducer users can run on their jaxlib."""
    if not jobs.tuned_flags_supported():
        pytest.skip(f"this jaxlib does not know {jobs.tuned_cpu_flags('train')}")
    env = {k: v for k, v in jobs.worker_env(jobs.Job("resnet18", "jax")).items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, str(SCRIPTS / "xla_ynn_reduce_fusion.py"), "--batch", "2"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^plain: .* 3 of 3 convolutions inside YNNPACK", proc.stdout, re.M), proc.stdout
    assert re.search(r"^fenced: .* 0 of 3 convolutions inside YNNPACK", proc.stdout, re.M), proc.stdout


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
def test_ynnpack_fence_is_an_exact_identity(dtype):
    """No bit changes, jitted: normals, subnormals, signed zeros, infinities and NaN."""
    with jax.enable_x64(True):
        info = jnp.finfo(dtype)
        special = [0.0, -0.0, np.inf, -np.inf, np.nan, float(info.tiny), float(info.tiny) / 4,
                   float(info.max), -float(info.max), float(info.eps)]
        vals = np.concatenate([special, np.random.default_rng(0).standard_normal(1000) * 1e3])
        x = jnp.asarray(vals, dtype)
        bits = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize]
        got = jax.jit(layers.ynnpack_fence)(x)
        assert got.dtype == x.dtype
        assert np.array_equal(np.asarray(jax.lax.bitcast_convert_type(got, bits)),
                              np.asarray(jax.lax.bitcast_convert_type(x, bits)))


@pytest.mark.parametrize("k,h,stride,groups", [(3, 1, 1, 1), (3, 2, 1, 1), (3, 2, 2, 1), (3, 3, 2, 1), (3, 4, 2, 1),
                                               (3, 2, 1, 4), (3, 4, 2, 4), (3, 2, 1, 8), (1, 4, 2, 1), (1, 5, 2, 1),
                                               (1, 5, 2, 4)])
def test_conv_taps_matches_torch(k, h, stride, groups):
    """conv_taps against torch's conv2d in float64, forward and both gradients (depthwise: groups 8;
    1x1 stride 2: ResNet's downsample)."""
    rng = np.random.default_rng(h * 10 + stride + groups + k)
    cin, cout, p = 8, 16, k // 2
    x = rng.standard_normal((2, h, h + 1, cin))
    w = rng.standard_normal((k, k, cin // groups, cout))
    g_out = None
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=p, groups=groups)
    g_out = rng.standard_normal(ty.shape)
    ty.backward(torch.from_numpy(g_out))
    with jax.enable_x64(True):
        def f(x, w):
            return layers.conv_taps(x, w, (stride, stride), ((p, p), (p, p)), feature_group_count=groups)

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


def test_strided_pointwise_rule():
    assert layers.strided_pointwise((1, 1), (2, 2))
    assert not layers.strided_pointwise((1, 1), (1, 1))
    assert not layers.strided_pointwise((3, 3), (2, 2))


DILATED_POINTWISE = re.compile(r"convolution\(.*window=\{size=1x1[^}]*lhs_dilate")


def test_strided_pointwise_gradient_is_a_dot():
    """resnet18 at 64x64: the twin differentiates its strided 1x1 downsample convs into dots and pads;
    the stock form into 1x1 convolutions over the zero-dilated gradient (4x the work)."""
    def count(hlo: str) -> int:
        return sum(1 for line in hlo.splitlines() if DILATED_POINTWISE.search(line))

    assert count(compiled("resnet18", 64, "auto", "train")) == 0
    assert count(compiled("resnet18", 64, "xla", "train")) > 0


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


def test_the_cpu_workarounds_are_cpu_only():
    """conv_taps replaces XLA:CPU's swapped and strided-1x1 convolutions on CPU only: lowered for
    CUDA the same call is lax's convolution (the choice is made at lowering)."""
    f = layers.conv_general_dilated("auto")
    x, w = jnp.ones((2, 2, 2, 8)), jnp.ones((3, 3, 8, 8))  # a 3x3 kernel on a 2x2 map: XLA:CPU would swap
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def g(x, w):
        return f(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)

    lowered = {p: jax.jit(g).trace(x, w).lower(lowering_platforms=(p,)).as_text() for p in ("cpu", "cuda")}
    assert "dot_general" in lowered["cpu"] and "convolution" not in lowered["cpu"]
    assert "convolution" in lowered["cuda"] and "dot_general" not in lowered["cuda"]
