from collections import OrderedDict

import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict, unflatten_dict

import torchnets
from helpers import REFERENCE, variants
from parity import convert


def random_state_dict(name: str, dtype=torch.float32, seed: int = 0) -> OrderedDict:
    """Every key of the variant, random values (BN statistics and affine included)."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for k, (shape, dt) in convert.expected_state_dict(name).items():
        out[k] = torch.randint(0, 10**6, shape, generator=g) if not dt.is_floating_point else \
            torch.randn(shape, generator=g, dtype=dtype)
    return out


def assert_bits_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def name_dtype(dtypes, heavy_dtype, heavy_mark=None):
    """Light variants in every dtype; heavy ones (slow, or ``heavy_mark``) in ``heavy_dtype`` only,
    to bound CI time."""
    out = []
    for v in variants():
        name, marks = getattr(v, "values", [v])[0], getattr(v, "marks", ())
        marks = (heavy_mark,) if marks and heavy_mark else marks
        # a VGG's 133M weights in float32 and float64 move by the same rules: the other dtype is slow
        vgg = name.startswith("vgg") and not marks
        out += [pytest.param(name, dt, marks=marks or ((pytest.mark.slow,) if vgg and dt != heavy_dtype else ()))
                for dt in dtypes if not marks or dt == heavy_dtype]
    return out


@pytest.mark.parametrize("name,dtype", name_dtype([torch.float32, torch.float64], torch.float32))
def test_torch_flax_torch_is_bit_exact(name, dtype):
    sd = random_state_dict(name, dtype)
    assert_bits_equal(sd, convert.flax_to_torch(convert.torch_to_flax(sd, name), name))


# heavy variants: huge (170 s of float64 copies in CI); CI round-trips them torch->flax->torch above
@pytest.mark.parametrize("name,dtype", name_dtype([np.float32, np.float64], np.float64, pytest.mark.huge))
def test_flax_torch_flax_is_bit_exact(name, dtype):
    flat = flatten_dict(convert.torch_to_flax(random_state_dict(name, seed=1), name))
    flat = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in flat.items()}
    variables = unflatten_dict(flat)
    back = flatten_dict(convert.torch_to_flax(convert.flax_to_torch(variables, name), name))
    assert set(back) == set(flat)
    for k in flat:
        assert back[k].dtype == flat[k].dtype and back[k].shape == flat[k].shape, k
        assert back[k].tobytes() == flat[k].tobytes(), k


def test_num_batches_tracked_survives_round_trip():
    sd = torchnets.build("resnet20").state_dict()
    sd["bn1.num_batches_tracked"].fill_(12345)
    v = convert.torch_to_flax(sd, "resnet20")
    assert int(v["batch_stats"]["bn1"]["num_batches_tracked"]) == 12345
    assert int(convert.flax_to_torch(v, "resnet20")["bn1.num_batches_tracked"]) == 12345


@pytest.mark.parametrize("name", variants(sorted(REFERENCE)))
def test_converted_weights_load_strictly_into_torchnets(name):
    with torch.device("meta"):
        model = torchnets.build(name)
    sd = convert.flax_to_torch(convert.torch_to_flax(random_state_dict(name), name), name)
    result = model.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert [k for k, *_ in REFERENCE[name]["state_dict"]] == list(sd)


def test_every_mismatch_is_reported_in_one_error():
    sd = random_state_dict("resnet18")
    del sd["layer1.0.conv1.weight"]
    sd["layer9.extra.weight"] = torch.zeros(3)
    sd["fc.weight"] = torch.zeros(10, 512)
    sd["bn1.running_var"] = sd["bn1.running_var"].half()
    sd["layer2.0.bn1.num_batches_tracked"] = torch.tensor(1.5)
    with pytest.raises(convert.ConversionError) as e:
        convert.torch_to_flax(sd, "resnet18")
    msg = str(e.value)
    assert "5 problem(s)" in msg
    assert "missing 'layer1.0.conv1.weight': expected shape (64, 64, 3, 3)" in msg
    assert "unexpected 'layer9.extra.weight': shape (3,)" in msg
    assert "wrong shape 'fc.weight': expected (1000, 512), got (10, 512)" in msg
    assert "wrong dtype 'bn1.running_var': expected float32 like the other weights, got float16" in msg
    assert "expected an integer counter, got float32" in msg


def test_non_strict_skips_and_returns_what_was_skipped():
    sd = random_state_dict("resnet18")
    sd["fc.weight"] = torch.zeros(10, 512)
    sd["fc.bias"] = torch.zeros(10)
    variables, problems = convert.torch_to_flax(sd, "resnet18", strict=False)
    assert len(problems) == 2 and all("fc." in p for p in problems)
    assert "fc" not in variables["params"] and "conv1" in variables["params"]
    # or convert for the right head size
    assert convert.torch_to_flax(sd, "resnet18", num_classes=10)["params"]["fc"]["kernel"].shape == (512, 10)


def test_checkpoint_of_another_variant_is_refused_with_every_key():
    with pytest.raises(convert.ConversionError) as e:
        convert.torch_to_flax(random_state_dict("resnet18"), "resnet34")
    assert "missing 'layer1.2.conv1.weight'" in str(e.value) and "layer4.2" in str(e.value)


def test_flax_side_mismatches_name_flax_paths():
    variables = convert.torch_to_flax(random_state_dict("resnet20"), "resnet20")
    variables["params"]["conv1"]["kernel"] = variables["params"]["conv1"]["kernel"][..., :8]
    del variables["batch_stats"]["bn1"]["var"]
    with pytest.raises(convert.ConversionError) as e:
        convert.flax_to_torch(variables, "resnet20")
    msg = str(e.value)
    assert "wrong shape 'params/conv1/kernel': expected (3, 3, 3, 16), got (3, 3, 3, 8)" in msg
    assert "missing 'batch_stats/bn1/var'" in msg


def test_vgg_classifier_rows_are_permuted_not_transposed():
    sd = random_state_dict("vgg11")
    w = sd["classifier.0.weight"].numpy()
    k = convert.torch_to_flax(sd, "vgg11")["params"]["classifier"]["0"]["kernel"]
    # Flax row (h, w, c) is torch column (c, h, w)
    c, h, ww, out = 5, 3, 6, 7
    assert k[(h * 7 + ww) * 512 + c, out] == w[out, c * 49 + h * 7 + ww]


# One of each kind of block and stem in the default suite (VGG's head: the bit-exact round trips and
# test_check's planted flatten order); the other light variants are slow, the heavy ones
# `make test-huge` (about 20 min on 2 cores).
OUTPUT_DEFAULT = {"resnet20", "resnet50"}  # a basic block and a bottleneck; the rest: slow


def huge_if_heavy():
    out = []
    for v in variants():
        name = getattr(v, "values", [v])[0]
        mark = pytest.mark.huge if getattr(v, "marks", ()) else None if name in OUTPUT_DEFAULT else pytest.mark.slow
        out.append(pytest.param(name, marks=mark) if mark else name)
    return out


@pytest.mark.parametrize("name", huge_if_heavy())
def test_converted_weights_give_the_same_outputs(name):
    """Issue 4's bound on converted weights, with BatchNorm statistics and affine randomised:
    float64 eval and train outputs (and running stats) agree to 1e-10 relative, float32 eval
    outputs to 1e-5 of the output scale."""
    import jax
    import jax.numpy as jnp

    import jaxnets
    import netspecs
    from parity import training
    from parity.check import weights
    from parity.check.config import Config

    if name == "plain1202":
        pytest.skip("plain1202 is chaotic even in float64: weights one ulp apart move torch's own eval "
                    "output by 27x its scale (measured), so no output comparison means anything; its "
                    "rules are those of plain20-110, and its round trips are bit-exact (tested above)")
    ov = training.overrides(name)
    # ImageNet nets at 64x64: at 32x32 their last BatchNorm normalises 2 values per channel
    # (batch 2, 1x1), where train mode is ill-conditioned even in float64
    size = 32 if netspecs.get(name).input_size == 32 else 64
    x = np.random.default_rng(0).standard_normal((2, 3, size, size))
    torch.manual_seed(0)
    if Config(name).calibrates:  # the parity check's rule: random statistics
        # would compound to 1e12 (float32: NaN) through 600 blocks
        sd64 = weights.calibrate(torchnets.build(name), x, 0)
    else:
        sd64 = weights.randomize(OrderedDict((k, v.double() if v.is_floating_point() else v) for k, v in
                                             torchnets.build(name, **ov).state_dict().items()), 0)
    x_nhwc = x.transpose(0, 2, 3, 1)

    def rel(a, b):
        return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / np.abs(b).max())

    tm = torchnets.build(name, **ov).double()
    tm.load_state_dict(weights.perturbed(sd64, 0))
    with torch.no_grad():
        t_train_ulp = tm.train()(torch.from_numpy(x)).numpy()
    tm.load_state_dict(sd64)
    with torch.no_grad():
        t_eval = tm.eval()(torch.from_numpy(x)).numpy()
        t_train = tm.train()(torch.from_numpy(x)).numpy()
    # Deep plain nets in train mode are ill-conditioned even in float64: weights one ulp apart move
    # torch's own output by 2.5e-8 (plain110) and 0.3 (plain1202). The twins must then agree to 3x
    # that spread, as in parity.judgement's trajectory bound; every other variant stays at 1e-10.
    train_bound = max(1e-10, 3 * rel(t_train_ulp, t_train))
    with jax.enable_x64(True):
        jm = jaxnets.build(name, param_dtype=jnp.float64, **ov)
        v = jax.tree_util.tree_map(jnp.asarray, convert.torch_to_flax(sd64, name, **ov))
        assert rel(jm.apply(v, x_nhwc, train=False), t_eval) <= 1e-10
        y, upd = jm.apply(v, x_nhwc, train=True, mutable=["batch_stats"])
        assert rel(y, t_train) <= train_bound
        back = convert.flax_to_torch({"params": v["params"], **upd}, name, **ov)
        for k, t in tm.state_dict().items():
            if "running" in k:
                assert rel(back[k].numpy(), t.numpy()) <= train_bound, k
    sd32 = OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in sd64.items())
    tm32 = torchnets.build(name, **ov)
    tm32.load_state_dict(sd32)
    with torch.no_grad():
        t32 = tm32.eval()(torch.from_numpy(x.astype(np.float32))).numpy()
    j32 = jaxnets.build(name, **ov).apply(convert.torch_to_flax(sd32, name, **ov), x_nhwc.astype(np.float32))
    assert rel(j32, t32) <= 1e-5
