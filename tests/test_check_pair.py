"""check_pair on users' own models: the rule-based weight mapping, the doctor, planted porting bugs
in the two example models (each must fail and be located), and clear errors for bad input."""

import flax.linen as fnn
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import parity
from examples import convnet, transformer
from parity.check import judgement
from parity.check.pytest_plugin import assert_parity
from parity.convert import rules as mapping


def kinds(result) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in result.findings:
        out.setdefault(f.where, set()).add(f.kind)
    return out


def quick(torch_module, flax_module, inputs, **kw):
    torch.manual_seed(0)
    return parity.check_pair(torch_module, flax_module, inputs, samples=1, **kw)


IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
IDS = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))

# planted bug -> (first bad layer, where the doctor sees it or None)
CONVNET = {"layernorm_eps": ("ln", "ln"), "gelu_tanh": ("ln", "act"), "same_padding": ("stem", "stem"),
           "flatten_order": ("head", "flatten"), "stock_batchnorm": ("bn", "bn")}
TRANSFORMER = {"layernorm_eps": ("ln1", "ln1"), "gelu_tanh": ("mlp.2", "mlp.1")}


@pytest.mark.parametrize("bug", sorted(CONVNET))
def test_convnet_planted_bug_fails_at_its_layer_and_the_doctor_names_it(bug):
    torch.manual_seed(0)
    r = quick(convnet.TorchConvNet(), convnet.FlaxConvNet(bug=bug), IMAGES)
    layer, seen = CONVNET[bug]
    assert not r.passed and r.first_bad_layer == layer, r.report()
    assert seen in kinds(r), r.findings
    if bug == "stock_batchnorm":  # eval mode uses the loaded statistics: only the running statistics differ
        assert {v.quantity for v in r.verdicts if not v.ok} == {"stats"}


def test_convnet_depthwise_groups_bug_is_a_mapping_error_naming_the_layer():
    with pytest.raises(mapping.MappingError, match=r"dw\.weight \(32, 1, 7, 7\) -> params/dw/kernel \(7, 7, 32, 32\)"):
        quick(convnet.TorchConvNet(), convnet.FlaxConvNet(bug="depthwise_groups"), IMAGES)


@pytest.mark.parametrize("bug", sorted(TRANSFORMER))
def test_transformer_planted_bug_fails_at_its_layer_and_the_doctor_names_it(bug):
    r = quick(transformer.TorchTransformer(), transformer.FlaxTransformer(bug=bug), IDS, images=False)
    layer, seen = TRANSFORMER[bug]
    assert not r.passed and r.first_bad_layer == layer, r.report()
    assert seen in kinds(r), r.findings


def test_failure_message_names_the_layer_and_both_distances():
    torch.manual_seed(0)
    with pytest.raises(AssertionError, match=r"at layer 'stem': float64 structure .*, torch .* vs flax .* from "
                                             r"float64"):
        assert_parity(convnet.TorchConvNet(), convnet.FlaxConvNet(bug="same_padding"), IMAGES, samples=1)


# --------------------------------------------------------------------------- the mapping rules


class TorchRules(nn.Module):
    """Grouped Conv2d, ConvTranspose2d (stride 2), GroupNorm, Conv3d-free image path."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.norm = nn.GroupNorm(2, 4)

    def forward(self, x):
        return self.norm(self.up(torch.relu(self.conv(x))))


class FlaxRules(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = fnn.relu(fnn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=2, name="conv")(x))
        # torch's ConvTranspose2d(k=4, s=2, p=1) is a conv over the stride-dilated input padded k-1-p
        x = fnn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), name="up")(x)
        return fnn.GroupNorm(num_groups=2, epsilon=1e-5, name="norm")(x)


class TorchSeq(nn.Module):
    """Two inputs (token ids and a float signal), Embedding, Conv1d, LayerNorm, Linear."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.conv = nn.Conv1d(3, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 2)

    def forward(self, ids, sig):
        return self.out(self.norm(self.emb(ids) + self.conv(sig).transpose(1, 2)))


class FlaxSeq(fnn.Module):
    @fnn.compact
    def __call__(self, ids, sig):
        h = fnn.Embed(20, 6, name="emb")(ids) + fnn.Conv(6, (3,), padding=((1, 1),), name="conv")(sig.swapaxes(1, 2))
        return fnn.Dense(2, name="out")(fnn.LayerNorm(epsilon=1e-5, name="norm")(h))


@pytest.mark.precision
def test_rules_grouped_conv_conv_transpose_and_group_norm():
    r = quick(TorchRules(), FlaxRules(), torch.randn(2, 4, 6, 6), steps=1)
    assert r.passed, r.report()
    assert {"grads", "input_grad", "adamw_step1"} <= {v.quantity for v in r.verdicts}


@pytest.mark.precision
def test_rules_embedding_conv1d_layer_norm_and_two_inputs():
    ids, sig = torch.randint(0, 20, (2, 5)), torch.randn(2, 3, 5)
    r = quick(TorchSeq(), FlaxSeq(), (ids, sig), images=False)
    assert r.passed, r.report()
    assert "conv" in {la["name"] for la in r.layers}  # (N, C, L) against (N, L, C): compared, not skipped


class TorchVolume(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.out = nn.Linear(4 * 4 * 4 * 4, 3)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x)).permute(0, 2, 3, 4, 1).flatten(1))


class FlaxVolume(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        h = fnn.relu(fnn.Conv(4, (3, 3, 3), padding=((1, 1),) * 3, name="conv")(x))
        return fnn.Dense(3, name="out")(h.reshape(h.shape[0], -1))


def test_volumes_move_to_channels_last_like_images():
    """A 5-D float input (N, C, D, H, W) reaches Flax as (N, D, H, W, C), as a 4-D image does."""
    r = quick(TorchVolume(), FlaxVolume(), torch.randn(2, 2, 4, 4, 4))
    assert r.passed, r.report()
    assert "conv" in {la["name"] for la in r.layers}


class TorchGrid(nn.Module):
    """A 4-D integer input (a map of token ids): it must reach Flax as it is, not as an image."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 2)
        self.out = nn.Linear(3 * 4 * 5 * 2, 2)

    def forward(self, ids):
        return self.out(self.emb(ids).flatten(1))


class FlaxGrid(fnn.Module):
    @fnn.compact
    def __call__(self, ids):
        h = fnn.Embed(10, 2, name="emb")(ids)
        return fnn.Dense(2, name="out")(h.reshape(h.shape[0], -1))


def test_four_dimensional_integer_inputs_pass_as_they_are():
    ids = torch.randint(0, 10, (2, 3, 4, 5), generator=torch.Generator().manual_seed(2))
    r = quick(TorchGrid(), FlaxGrid(), ids)
    assert r.passed, r.report()
    assert max(v.struct for v in r.verdicts) <= 1e-10


def test_key_map_places_what_the_rules_cannot():
    class Renamed(fnn.Module):
        @fnn.compact
        def __call__(self, ids, sig):
            h = fnn.Embed(20, 6, name="embedding")(ids) + fnn.Conv(6, (3,), padding=((1, 1),), name="conv")(
                sig.swapaxes(1, 2))
            return fnn.Dense(2, name="out")(fnn.LayerNorm(epsilon=1e-5, name="norm")(h))

    ids, sig = torch.randint(0, 20, (2, 5)), torch.randn(2, 3, 5)
    with pytest.raises(mapping.MappingError) as e:
        quick(TorchSeq(), Renamed(), (ids, sig), images=False)
    # one error listing every unmatched key on each side, with shapes
    assert "emb.weight (20, 6)" in str(e.value) and "params/embedding/embedding (20, 6)" in str(e.value)
    r = quick(TorchSeq(), Renamed(), (ids, sig), images=False, key_map={"emb.weight": "params/embedding/embedding"})
    assert r.passed, r.report()
    r = quick(TorchSeq(), Renamed(), (ids, sig), images=False,
              key_map=lambda k: "params/embedding/embedding" if k == "emb.weight" else None)
    assert r.passed


class TorchCancel(nn.Module):
    """(h + 1e8) - 1e8: float32 keeps no digit of h (its ulp at 1e8 is 8), float64 keeps eight."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.offset = nn.Parameter(torch.full((1, 8), 1e8))
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2((self.fc1(x) + self.offset) - self.offset)


class FlaxCancel(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        offset = self.param("offset", lambda key, shape: jnp.full(shape, 1e8), (1, 8))
        return fnn.Dense(3, name="fc2")((fnn.Dense(8, name="fc1")(x) + offset) - offset)


@pytest.mark.precision
def test_ill_conditioned_quantities_are_not_judged():
    """torch float32's own output has no correct digit against float64: 'ill-conditioned: not judged'
    with the numbers and a hint, never a verdict; the float64 structure step still judges, and so does
    the precision step where torch has digits (fc1's activation)."""
    torch.manual_seed(0)
    r = parity.check_pair(TorchCancel(), FlaxCancel(), torch.randn(2, 6), samples=5, images=False)
    ev = next(v for v in r.verdicts if v.quantity == "eval")
    assert ev.torch_dist >= judgement.ILL_CONDITIONED, r.report()
    assert ev.precision == "not judged" and ev.rule.startswith("ill-conditioned"), r.report()
    assert ev.structure == "pass"
    assert r.passed and not r.complete
    line = next(n for n in r.not_judged() if n.startswith("eval precision"))
    assert "larger batch" in line and f"torch {judgement.fmt(ev.torch_dist)}" in line
    layers = {la["name"]: la for la in r.layers}
    assert layers["fc1"]["precision"] == "pass" and layers["fc2"]["precision"] == "not judged"


# --------------------------------------------------------------------------- bad input


def test_bad_modules_and_inputs_are_refused_with_what_was_expected():
    with pytest.raises(TypeError, match="torch.nn.Module, got str"):
        parity.check_pair("net", FlaxRules(), torch.randn(2, 4, 6, 6))
    with pytest.raises(TypeError, match="flax.linen.Module or a flax.nnx.Module, got TorchRules"):
        parity.check_pair(TorchRules(), TorchRules(), torch.randn(2, 4, 6, 6))
    with pytest.raises(ValueError, match=r"torch module rejects inputs of shapes \[\(2, 5, 6, 6\)\]"):
        parity.check_pair(TorchRules(), FlaxRules(), torch.randn(2, 5, 6, 6))
    with pytest.raises(TypeError, match="float or integer"):
        parity.check_pair(TorchRules(), FlaxRules(), np.array([["a"]]))


def test_doctor_reads_flax_attributes_and_torch_modules():
    from parity.check import doctor

    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.drop = nn.Dropout(0.1)

        def forward(self, x):
            return self.drop(self.bn(x))

    class F(fnn.Module):
        @fnn.compact
        def __call__(self, x, train: bool = False):
            return fnn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3, name="bn")(x)

    x = np.zeros((2, 3, 4, 4), np.float32)
    found = doctor.diagnose(T(), F(), (torch.from_numpy(x),), (jnp.asarray(x.transpose(0, 2, 3, 1)),),
                            lambda train: {"train": train})
    text = "\n".join(map(str, found))
    assert "bn: batchnorm: epsilon: torch 1e-05, Flax 0.001" in text
    assert "biased" in text and "momentum" not in text  # 0.9 is torch's 0.1 in Flax's convention
    assert "drop: dropout" in text


def test_doctor_reads_nnx_attributes():
    from flax import nnx as fnnx

    from parity.check import doctor, nnx

    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(x)

    class F(fnnx.Module):
        def __init__(self):
            self.bn = fnnx.BatchNorm(3, epsilon=1e-3, momentum=0.9, rngs=fnnx.Rngs(0))

        def __call__(self, x):
            return self.bn(x)

    x = np.zeros((2, 3, 4, 4), np.float32)
    found = doctor.diagnose(T(), nnx.LinenView(F()), (torch.from_numpy(x),), (jnp.asarray(x.transpose(0, 2, 3, 1)),),
                            lambda train: {"train": train})
    assert "bn: batchnorm: epsilon: torch 1e-05, Flax 0.001" in "\n".join(map(str, found))


# --------------------------------------------------------------------------- NNX


@pytest.mark.precision
def test_nnx_twin_state_round_trips_and_checks_against_torch():
    """Bit-exact both ways from random statistics (torch's initial 0 and 1 equal NNX's own, and
    would hide a load that drops them); then checked against torch. With one sample the gradients'
    precision is not judged (the rank test needs 5): their structure is."""
    import torchnets
    from parity.check import nnx, weights

    torch.manual_seed(0)
    tm = torchnets.build("resnet20")
    tm.load_state_dict(weights.randomize(tm.state_dict(), 0))
    m = nnx.torch_to_nnx(tm.state_dict(), nnx.twin("resnet20"), "resnet20")
    back = nnx.nnx_to_torch(m, "resnet20")
    assert all(torch.equal(back[k], v) for k, v in tm.state_dict().items())  # bit-exact both ways
    r = quick(tm, m, torch.randn(2, 3, 32, 32), steps=0)  # trajectories: the same engine, test_check.py
    assert r.passed, r.report()
    assert {"stats", "grads", "sgd_step1"} <= {v.quantity for v in r.verdicts} and r.counters_ok
    grads = next(v for v in r.verdicts if v.quantity == "grads")
    assert grads.structure == "pass" and grads.precision == "not judged" and grads.rule == "needs 5 samples, ran 1"
    assert any(line.startswith("grads precision: needs 5 samples, ran 1; not judged") for line in r.not_judged())
    assert r.verdict().startswith("PASS (") and "not judged: grads precision" in r.report()


@pytest.mark.precision
def test_native_nnx_module_is_checked_layer_by_layer():
    from flax import nnx

    class TorchNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.ln = nn.LayerNorm(4)
            self.fc = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 2)])

        def forward(self, x):
            h = self.ln(self.conv(x).permute(0, 2, 3, 1)).mean((1, 2))
            return self.fc[1](self.fc[0](h))

    class NNXNet(nnx.Module):
        def __init__(self, rngs, eps=1e-5):
            self.conv = nnx.Conv(3, 4, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
            self.ln = nnx.LayerNorm(4, epsilon=eps, rngs=rngs)
            self.fc = nnx.List([nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])

        def __call__(self, x):
            return self.fc[1](self.fc[0](self.ln(self.conv(x)).mean((1, 2))))

    x = torch.randn(2, 3, 8, 8)
    r = quick(TorchNet(), NNXNet(nnx.Rngs(0)), x, steps=1)
    assert r.passed, r.report()
    assert {"conv", "ln", "fc.0", "fc.1"} <= {la["name"] for la in r.layers}
    r = quick(TorchNet(), NNXNet(nnx.Rngs(0), eps=1e-6), x)
    assert not r.passed and r.first_bad_layer == "ln" and "ln" in kinds(r)
