"""The parity suite over every variant, and planted porting bugs that it must catch and locate."""

import re
import tempfile

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import helpers
import jaxnets.layers
import netspecs
import torchnets
from helpers import GRADIENT_CHECK, VERY_DEEP, check_suite_tier
from parity import check
from parity.__main__ import main
from parity.check import engine, judgement, reference, runners, statistics, weights
from parity.check.config import Config
from parity.check.tolerances import STRUCT_RTOL, Tolerance
from parity.convert import twins
from parity.precision import jax_precision, torch_precision

# Which tier runs each net's full check: helpers.FULL_CHECK. Default and slow suites: 5 samples, so
# that the rank test judges the gradient-derived quantities. The rest is "huge" (hours on 2 cores:
# VGG's 120M-weight classifier in float64 XLA on CPU, the 100+-layer nets, resnet34, plain34,
# resnet56 and plain56 at 2-7 minutes each, resnet50 and resnext50_32x4d at 3-4): `make test-huge`.


# plain1202 is chaotic even in float64 with calibrated statistics: weights one ulp apart move
# torch's own train output by 0.29 of its scale (measured), so no comparison of outputs means anything.
# Its layers are compared up to where that chaos grows (test_chaotic_nets_agree_layer_by_layer).
CHAOTIC = pytest.mark.skip(reason="plain1202 is chaotic in float64: one ulp moves torch's own train "
                           "output by 0.29 of its scale (measured)")


def tier(name: str):
    where = check_suite_tier(name)
    if where == "default":
        return name
    marks = [pytest.mark.slow if where == "slow" else pytest.mark.huge]
    marks += [CHAOTIC] if name == "plain1202" else []
    return pytest.param(name, marks=marks)


def config(name: str, **kw) -> Config:
    kw.setdefault("samples", 5)
    if check_suite_tier(name) == "default":  # CI: 3-step trajectories (docs/results.md has the 10-step table)
        kw.setdefault("steps", 3)
    if name in VERY_DEEP:  # as the CLI runs them (cli.check.steps_for): no trajectory; batch 2 for time
        kw.update(steps=0, batch=2)
    return Config(name, **kw)


@pytest.mark.precision
@pytest.mark.parametrize("name", [tier(n) for n in netspecs.list_models()])
def test_every_variant_passes_structure_and_precision(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the float64 reference's large tensors go
    monkeypatch.setattr(tempfile, "tempdir", None)
    r = check.check(config(name))
    assert not list(tmp_path.glob("parity-reference-*"))  # and nothing of it is left
    assert r.passed, r.failures()
    got = {v.quantity for v in r.verdicts}
    assert {"eval", "train", "stats", "grads", "input_grad", "sgd_step1"} <= got
    if name not in VERY_DEEP:
        assert {"adamw_step1", "sgd_losses", "adamw_losses", "sgd_final", "adamw_final"} <= got
    assert len(r.layers) > 3 and r.first_bad_layer is None
    # what it cost, whole and per phase: every run of the engine, in order
    names = [p["name"] for p in r.cost["phases"]]
    assert names == ["torch float64", "torch float64, one-ulp start", "flax float64",
                     "torch float64, more one-ulp starts", "torch fp32 x5",
                     "flax fp32 x5", "judgement"]
    assert sum(p["seconds"] for p in r.cost["phases"]) <= r.cost["seconds"]
    assert r.cost["peak_bytes"] == max(p["peak_bytes"] for p in r.cost["phases"]) >= r.cost["base_bytes"] > 0
    assert r.report().splitlines()[-1].startswith("cost: ")


def test_twins_build_on_the_meta_device():
    """The check builds its torch modules on the meta device and loads every tensor after
    (pairs.twin): right only while no twin has a buffer outside its state_dict."""
    for name in netspecs.list_models():
        with torch.device("meta"):
            m = torchnets.build(name)
        sd = m.state_dict()
        assert not [b for b, _ in m.named_buffers() if b not in sd], name


@pytest.mark.parametrize("name", [pytest.param("resnet1202", marks=pytest.mark.huge), "resnet20"])
def test_calibrated_statistics_keep_deep_nets_well_conditioned(name):
    """weights.calibrate (what initial_weights uses for very deep nets): resnet1202's float64 eval and
    train outputs stay near 1 in scale (random statistics gave 1.6e122), one ulp moves them by under
    1e-12, and float32 stays within 1e-5. plain1202 stays chaotic (see CHAOTIC). resnet20 is the same
    code on the smallest net."""
    cfg = config(name)
    assert config("resnet1202").calibrates and not config("resnet110").calibrates
    x = torch.from_numpy(weights.make_batches(cfg)[0][0])
    w64 = weights.initial_weights(cfg) if cfg.calibrates else weights.calibrate(torchnets.build(name), x.numpy(), 0)

    def out(w, dtype, train):
        m = torchnets.build(cfg.name).to(dtype)
        m.load_state_dict(w)
        with torch.no_grad():
            return m.train(train)(x.to(dtype)).double().numpy()

    w32 = {k: v.float() if v.is_floating_point() else v for k, v in w64.items()}
    for train in (False, True):
        y = out(w64, torch.float64, train)
        scale = np.abs(y).max()
        assert 0.1 < scale < 1e3, scale
        assert np.abs(out(weights.perturbed(w64, 0), torch.float64, train) - y).max() / scale < 1e-12
        assert np.abs(out(w32, torch.float32, train) - y).max() / scale < 1e-5


@pytest.mark.parametrize("name, min_layers, min_tight", [pytest.param("plain1202", 3000, 100, marks=pytest.mark.huge),
                                                         ("plain20", 30, 30)])
def test_chaotic_nets_agree_layer_by_layer(name, min_layers, min_tight):
    """plain1202's outputs cannot judge it (CHAOTIC), but its first layers can. Measured: torch's own
    float64 one-ulp spread grows about 100x every 20 blocks (3e-16 at conv1, 2.5e-10 at layer1.39,
    2e-2 at layer1.119) and is of order 1, all correlation gone, from layer1.140 on. So: every
    layer is held to 1e-10 while torch's spread allows it (the first 155 of 3006 captured layers),
    then to 3x that spread until it reaches 1e-2; past that no comparison means anything. plain20 is
    the same code on the smallest plain net, every layer within 1e-10."""
    pair, cfg, w64, batches = engine.twin_run(config(name, samples=1, steps=0, batch=2))
    with torch_precision("cpu", "highest"):
        t64 = reference.Reference.collect(runners.run_torch(pair, cfg, w64, batches, "fp64", "cpu"))
        spread = statistics.reduce(runners.run_torch(pair, cfg, weights.perturbed(w64, 0), batches, "fp64", "cpu"),
                                   t64, "struct").layers
    with jax_precision("highest", True):
        layers = statistics.reduce(runners.flax_runner(pair, cfg, "fp64", "cpu")(w64, batches), t64, "struct").layers
    names = [n for n in t64.layers if n in layers]  # Flax captures modules only (no ReLU, no Sequential)
    assert len(names) > min_layers
    tight = next((i for i, n in enumerate(names) if 3 * spread[n] > STRUCT_RTOL), len(names))
    assert tight >= min_tight, f"torch's own spread passes 1e-10/3 at layer {tight} ({names[tight]})"
    judged = [n for n in names if spread[n] < 1e-2]
    bad = [(n, layers[n], spread[n]) for n in judged if not layers[n] <= max(STRUCT_RTOL, 3 * spread[n])]
    assert not bad, bad[:5]


def same_conv(cout, k, stride=1, groups=1, bias=False, *, name, dtype=None, param_dtype=None, conv_impl="auto"):
    """The classic porting bug: Flax's 'SAME' pads a stride-2 conv (0, 1) where torch pads (1, 1)."""
    return nn.Conv(cout, (k, k), strides=(stride, stride), padding="SAME", feature_group_count=groups,
                   use_bias=bias, dtype=dtype, param_dtype=param_dtype or jnp.float32, name=name)


def quick(name: str, **kw) -> judgement.Result:
    kw.setdefault("batch", 2)
    return check.check(Config(name, steps=kw.pop("steps", 2), samples=1, **kw))


@pytest.mark.parametrize("name", [n if t == "default" else pytest.param(n, marks=pytest.mark.slow)
                                  for t, names in GRADIENT_CHECK.items() for n in sorted(names)])
@pytest.mark.precision
def test_gradients_and_optimizer_steps(name):
    """CI's check of the block kinds whose full check is in the huge tier (helpers.GRADIENT_CHECK):
    gradients of every parameter and of the input and one SGD step at 32x32; resnet50 also an AdamW
    step and a one-step trajectory. The VGGs stop at SGD: 133M weights in float64 are 1 GB per quantity,
    and AdamW's trajectory quantities took the default tier past this machine's 24 GB. Sizes where
    BatchNorm is well conditioned: resnet50's layer4 is 1x1 at 32x32, so a batch of 8 gives it 8 values
    per channel (at batch 2, measured: torch float32's train output 5.7e-1 and gradients 1.2 from
    float64, no correct digit; at batch 8: 1.2e-4 and 2.3e-2). One sample: the gradients' precision
    is not judged (the rank test needs 5), their float64 structure is."""
    r = quick(name, steps=1 if name == "resnet50" else 0, batch=8 if name == "resnet50" else 2)
    assert r.passed, r.failures()
    assert all(v.precision == "pass" for v in r.verdicts if v.quantity in ("eval", "train", "stats")), r.report()
    want = {"eval", "train", "stats", "grads", "input_grad", "sgd_step1"} | (
        {"adamw_step1", "sgd_final", "adamw_final"} if name == "resnet50" else set())
    assert want <= {v.quantity for v in r.verdicts}
    assert r.first_bad_layer is None


def test_planted_bn_mean_var_swap_is_caught_and_located(monkeypatch):
    helpers.swap_mean_var(monkeypatch)
    r = quick("resnet20", steps=0)
    assert not r.passed and r.first_bad_layer == "bn1"
    assert any(v.quantity == "eval" and not v.struct_ok for v in r.verdicts)


def test_cli_check_passes_writes_reports_and_runs_very_deep_nets_op_by_op(monkeypatch, tmp_path, capsys):
    """Very deep nets (parity.tiers) run Flax without jax.jit (resnet1202's gradient did not compile
    in 20 min) and, unless --steps is given, without a trajectory. Forced on plain20 here, that
    path (trajectories included) must judge as the compiled one does, and the report must say per
    model what ran."""
    import argparse
    import json

    assert config("resnet152").jits and not config("resnet1202").jits
    monkeypatch.setattr(Config, "jits", property(lambda cfg: cfg.name != "plain20"))
    from parity.cli import check as cli_check

    default, given = argparse.Namespace(steps=None), argparse.Namespace(steps=2)
    assert [cli_check.steps_for(n, a) for n in ("resnet20", "plain20") for a in (default, given)] == [10, 2, 0, 2]
    code = main(["check", "--models", "resnet20,plain20", "--steps", "1", "--samples", "1", "--batch", "2",
                 "--report", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 passed, 0 failed" in out and "jax_default_matmul_precision=highest" in out
    assert "settings for plain20: flax execution=op by op" in out
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["results"]["resnet20"]["ok"] and data["settings"]["tolerance"]["factor"] == 3.0
    assert data["settings"]["steps"] == 1
    assert data["results"]["resnet20"]["settings"] == {"flax execution": "jax.jit"}
    verdicts = {v["quantity"] for v in data["results"]["plain20"]["verdicts"]}
    assert {"sgd_losses", "adamw_losses", "sgd_final", "adamw_final"} <= verdicts
    assert (tmp_path / "resnet20_layers.png").stat().st_size > 1000
    helpers.swap_mean_var(monkeypatch)
    monkeypatch.setattr(Config, "jits", property(lambda cfg: False))
    r = quick("resnet20", steps=0)
    assert r.settings["flax execution"].startswith("op by op")
    assert not r.passed and r.first_bad_layer == "bn1"


def test_estimate_prints_time_and_memory_before_running(tmp_path, capsys):
    from parity.check import cost

    code = main(["check", "--models", "resnet20,vgg11_bn", "--estimate", "--report", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert not (tmp_path / "r").exists()  # nothing ran
    assert main(["check", "--models", "vgg11_bn", "--size", "8", "--estimate"]) == 2  # too small for VGG
    assert "vgg11_bn takes inputs of at least 32x32, got 8" in capsys.readouterr().err
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    peak = {n: float(re.search(r"peak about ([\d.]+) GiB", v).group(1)) for n, v in lines.items()}
    # 133M parameters against 0.27M: the printed peaks differ by the per-parameter constant's share
    assert peak["vgg11_bn"] - peak["resnet20"] == pytest.approx(cost.PEAK_BYTES_PER_PARAM * 132.6e6 / 2**30, abs=0.15)
    # linear in the parameters, the constant stated; the time grows with the steps and samples
    one, two = cost.estimate(10**6, 1e9, 50, 10, 5), cost.estimate(2 * 10**6, 1e9, 50, 10, 5)
    assert two.peak_bytes - one.peak_bytes == pytest.approx(cost.PEAK_BYTES_PER_PARAM * 10**6)
    assert cost.estimate(10**6, 1e9, 50, 0, 5).seconds < one.seconds < cost.estimate(10**6, 1e9, 50, 10, 9).seconds


# stride-1 3x3 'SAME' equals torch's padding; the first stride-2 conv is where it breaks
@pytest.mark.parametrize("name,layer", [("resnet20", "layer2.0.conv1"),
                                        pytest.param("resnet18", "conv1", marks=pytest.mark.slow)])
def test_planted_same_padding_is_caught_and_located(monkeypatch, name, layer):
    monkeypatch.setattr(jaxnets.layers, "conv", same_conv)
    r = quick(name, steps=0)
    assert not r.passed and r.first_bad_layer == layer


# The torchvision head (4096 wide) is huge: about a minute and a half for VGG's 120M-weight classifier
# in float64. CI runs the same network with a 64-wide head: the flatten order is the same bug.
@pytest.mark.parametrize("hidden", [pytest.param(4096, marks=pytest.mark.huge), 64])
def test_planted_missing_flatten_permutation_is_caught_and_located(monkeypatch, hidden):
    monkeypatch.setattr(netspecs.VGGSpec, "HIDDEN", hidden)
    monkeypatch.setattr(twins, "variant_layouts", lambda spec: {})
    r = quick("vgg11_bn", steps=0)
    assert not r.passed and r.first_bad_layer == "classifier.0"


def test_planted_biased_running_variance_is_caught_and_located(monkeypatch):
    monkeypatch.setattr(jaxnets.layers.BatchNorm, "running_var", staticmethod(lambda var, n: var))
    r = quick("resnet20", steps=0)
    assert not r.passed and r.first_bad_layer == "bn1"
    bad = {v.quantity for v in r.verdicts if not v.ok}
    assert "stats" in bad and "eval" not in bad  # eval mode is untouched: only running stats differ


# the CLI's exit code and message for one plant; the engine locates the others (tests above)
@pytest.mark.parametrize("planted", ["swap", pytest.param("same", marks=pytest.mark.slow)])
def test_cli_check_exits_nonzero_and_names_the_layer(monkeypatch, tmp_path, capsys, planted):
    if planted == "swap":
        helpers.swap_mean_var(monkeypatch)
        args, layer = ["--models", "resnet20"], "bn1"
    else:
        monkeypatch.setattr(jaxnets.layers, "conv", same_conv)
        args, layer = ["--models", "resnet20"], "layer2.0.conv1"
    code = main(["check", *args, "--steps", "0", "--samples", "1", "--batch", "4", "--report", str(tmp_path)])
    assert code == 1
    out = capsys.readouterr()
    assert "FAIL" in out.out and layer in out.out
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.md").exists()


def test_unknown_tolerance_setting_is_refused():
    with pytest.raises(ValueError, match="no tolerance"):
        Config("resnet20", device="tpu")


def test_rank_test_exact_null_distribution():
    tol = Tolerance(3.0, 0.0)
    # Flax beyond the bound in all 25 pairings of 5 against 5: the rarest ordering, 1 in C(10, 5)
    assert statistics.rank_p([1.0] * 5, [0.1] * 5, tol) == pytest.approx(1 / 252)
    assert statistics.rank_p([1.0] * 3, [0.1] * 3, tol) == pytest.approx(1 / 20)
    # the counts over all u sum to C(n + m, n)
    assert sum(statistics._u_count(u, 4, 6) for u in range(25)) == 210


def test_precision_rule_accepts_the_relu_flip_lottery_and_rejects_a_shift():
    tol = Tolerance(3.0, 1e-5)
    verdict = judgement.precision_verdict
    # resnet56's measured gradient distances: both bimodal (flip or not), medians 6x apart by chance
    torch_d, flax_d = [4.7e-4, 4.7e-4, 1.8e-6, 1.9e-6, 9.1e-4], [2.9e-3, 6.0e-3, 4.7e-4, 1.7e-6, 1.6e-6]
    assert verdict(flax_d, torch_d, tol, gradient=True) == ("pass", "rank")
    # without flips (resnet20's gradients), every start 10x worse is a precision bug: caught
    smooth = [1.7e-6, 1.9e-6, 1.8e-6, 2.0e-6, 1.6e-6]
    assert verdict([10 * d for d in smooth], smooth, Tolerance(3.0, 0.0), gradient=True) == ("fail", "rank")
    # the price, said in precision_verdict: within torch's own 500x flip spread a 10x slip can hide
    assert verdict([10 * d for d in torch_d], torch_d, tol, gradient=True).status == "pass"
    assert verdict([5e-5] * 5, [1e-6] * 5, tol, gradient=False) == ("fail", "median")


def test_no_verdict_from_fewer_samples_than_the_rank_test_needs():
    """With 3 (or 1) samples the rank test cannot reach p < 0.01, and a median of a bimodal quantity
    is a coin toss (measured on resnet20 at batch 2: torch's own five gradient distances 8.6e-7,
    9.1e-4, 9.1e-4, 9.1e-4, 1.1e-6), so a gradient quantity is not judged; a forward one is."""
    tol = Tolerance(3.0, 1e-5)
    one = judgement.precision_verdict([9.1e-4], [8.6e-7], tol, gradient=True)
    assert one == ("not judged", "needs 5 samples, ran 1")
    assert judgement.precision_verdict([9.1e-4] * 4, [8.6e-7] * 5, tol, gradient=True).rule == "needs 5 samples, ran 4"
    assert judgement.precision_verdict([2e-6], [1e-6], tol, gradient=False) == ("pass", "median")


def test_no_verdict_where_torch_has_no_correct_digit():
    """resnet50 at batch 2, 32x32 (layer4's BatchNorm normalises 2 values per channel), measured:
    torch float32's train output 5.7e-1 and gradients 1.2 from float64, Flax's 6.0e-1 and 14. Neither
    has a correct digit: not judged, whatever Flax's figure; at the bound and above, not below it."""
    tol = Tolerance(3.0, 1e-5)
    for gradient in (False, True):
        v = judgement.precision_verdict([14.0] * 5, [1.2] * 5, tol, gradient=gradient)
        assert v.status == "not judged" and v.rule.startswith("ill-conditioned: torch's own distance 1.2e+00")
    bound = judgement.ILL_CONDITIONED
    assert judgement.precision_verdict([bound] * 5, [bound] * 5, tol, gradient=False).status == "not judged"
    assert judgement.precision_verdict([0.9 * bound], [0.9 * bound], tol, gradient=False).status == "pass"
    assert judgement.precision_verdict([10 * bound], [0.9 * bound], tol, gradient=False).status == "fail"
    # a Flax run that overflows where torch's does not is a failure, not a case for "not judged"
    assert judgement.precision_verdict([float("nan")], [0.5], tol, gradient=False).status == "fail"


@pytest.mark.precision
def test_planted_precision_bug_fails_precision_and_not_structure(monkeypatch):
    """A dtype-policy slip: the convs of a float32 model compute in bfloat16. float64 is untouched."""
    conv = jaxnets.layers.conv

    def bf16_conv(*args, dtype=None, param_dtype=jnp.float32, **kw):
        return conv(*args, dtype=jnp.bfloat16 if param_dtype == jnp.float32 else dtype,
                    param_dtype=param_dtype, **kw)

    monkeypatch.setattr(jaxnets.layers, "conv", bf16_conv)
    r = check.check(Config("resnet20", steps=1, samples=5, batch=4))
    assert not r.passed and r.first_bad_layer == "conv1"
    assert all(v.struct_ok for v in r.verdicts)
    bad = {v.quantity: v.rule for v in r.verdicts if not v.precision_ok}
    assert bad.get("eval") == "median" and bad.get("grads") == "rank"
