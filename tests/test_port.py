"""``parity port`` end to end: the built-in twins' families and both examples ported and proven, emitter
bugs planted and located, the saved folder (its own test, checkpoints both ways through ``parity
convert --port``), and the command's refusals. The op table's unit tests are in test_port_ops.py."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchnets
from examples.convnet import TorchConvNet
from examples.transformer import TorchTransformer
from parity import port
from parity.__main__ import main
from parity.convert import files, rules
from parity.port import files as files_port
from parity.port import ops

ROOT = Path(__file__).resolve().parents[1]


def images(n: int = 2, c: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(0))


# (batch, samples). Five samples judge the gradients' precision (docs/parity.md); one judges the float64
# structure of everything, which is what a port gets right or wrong, and the forward passes' precision.
# Batch 8 keeps the last stage's BatchNorm well-conditioned; bottlenecks and VGG are heavy in float64.
SLOW, HUGE = pytest.mark.slow, pytest.mark.huge
FAMILIES = [("resnet20", 8, 5, ()), ("plain20", 8, 1, SLOW), ("resnet18", 8, 1, SLOW), ("resnet50", 8, 5, SLOW),
            ("plain18", 8, 5, SLOW), ("wide_resnet50_2", 8, 1, HUGE), ("resnext50_32x4d", 8, 1, HUGE),
            ("vgg11_bn", 4, 1, HUGE)]


@pytest.mark.precision
@pytest.mark.parametrize("name,batch,samples", [pytest.param(n, b, s, marks=m, id=n) for n, b, s, m in FAMILIES])
def test_torchnets_families_port_and_pass(name, batch, samples):
    torch.manual_seed(0)
    model = torchnets.build(name)
    p = port(model, images(batch), samples=samples)
    assert p.passed, p.report
    # one class per torch class, torch's names: the root class is the twin's, the parameters torch's keys
    assert f"class {type(model).__name__}(nn.Module)" in p.source
    assert set(p.weight_map.by_torch) == set(model.state_dict())


@pytest.mark.parametrize("model,inputs,options", [
    (TorchConvNet, lambda: images(4), {}),
    (TorchTransformer, lambda: torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0)),
     {"images": False}),
], ids=["convnet", "transformer"])
def test_examples_port_and_pass(model, inputs, options):
    torch.manual_seed(0)
    p = port(model(), inputs(), **options)
    assert p.passed, p.report


class Planted(nn.Module):
    """conv -> exact GELU -> LayerNorm over channels -> cat with a branch -> squeeze-excite gate (a mean over
    space) -> conv: sites for the planted bugs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.GELU()
        self.ln = nn.LayerNorm(8)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        x = self.act(self.a(x))
        x = self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = torch.cat([x, self.b(x)], dim=1)
        return self.c(x * torch.sigmoid(x.mean((2, 3), keepdim=True)))


def gelu_flag_dropped(monkeypatch):
    monkeypatch.setitem(ops.ACTIVATIONS, "GELU", lambda em, m, x: f"nn.gelu({x.expr})")  # Flax's default: tanh


def layer_norm_eps_defaulted(monkeypatch):
    real = ops.layer_norm

    def planted(em, node, m, name, x):
        m = nn.LayerNorm(m.normalized_shape, eps=1e-6)  # Flax's default epsilon, not torch's 1e-5
        return real(em, node, m, name, x)
    monkeypatch.setattr(ops, "layer_norm", planted)


def channel_dim_not_rewritten(monkeypatch):
    real = ops.METHODS["mean"]

    def planted(em, node, x, dim, *rest, **kw):
        # torch's dims used as Flax's axes: (2, 3) is W and C channels-last, and the gate still broadcasts
        return real(em, node, x, ops.const(tuple(x.perm.index(d) for d in ops._py(dim))), *rest, **kw)
    monkeypatch.setitem(ops.METHODS, "mean", planted)


def test_the_unplanted_port_passes():
    torch.manual_seed(0)
    # 8 channels on an 8x8 map: the proof reads each activation's layout from the port, not from shapes
    p = port(Planted(), images(2, size=8), samples=1)
    assert p.passed, p.report


# An activation is a function in Flax, not a layer with an output of its own: the first compared layer
# after it is where the proof sees the GELU, and the doctor names the module itself.
@pytest.mark.parametrize("plant,layer,named", [(gelu_flag_dropped, "ln", "act: gelu"),
                                               (layer_norm_eps_defaulted, "ln", None),
                                               (channel_dim_not_rewritten, "c", None)],
                         ids=["gelu flag dropped", "layernorm eps defaulted", "mean dims not rewritten"])
def test_planted_emitter_bugs_fail_their_proof_at_the_layer(monkeypatch, plant, layer, named):
    torch.manual_seed(0)
    plant(monkeypatch)
    p = port(Planted(), images(2, size=8), samples=1)
    assert not p.passed and p.result.first_bad_layer == layer, p.report
    assert named is None or any(str(f).startswith(named) for f in p.result.findings), p.result.findings


MYNET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(x, 1))
'''


@pytest.fixture
def mynet(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(textwrap.dedent(MYNET))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mynet", None)
    yield tmp_path
    sys.modules.pop("mynet", None)


def test_cli_port_writes_a_folder_whose_test_passes_and_whose_map_moves_checkpoints(mynet, capsys):
    out = mynet / "port"
    assert main(["port", "mynet:Net", "--input-shape", "2,3,8,8", "--out", str(out), "--samples", "5"]) == 0
    assert {p.name for p in out.iterdir()} == {"model.py", "variables.safetensors", "weight_map.json", "port.json",
                                               "test_port.py", "report.md"}
    text = (out / "model.py").read_text()
    assert "class Net(nn.Module)" in text and "import torch" not in text
    # the flatten before the Linear of a 4x4 map: back to torch's order there, said in the source and report
    assert "jnp.transpose(" in text and "torch's order" in text
    assert "torch's order first" in (out / "report.md").read_text()
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", str(out / "model.py")],
                          capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(out / "test_port.py")],
                         capture_output=True, text=True, timeout=600, cwd=mynet)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr
    # a checkpoint of the user's model, both ways, bit-exact
    import mynet as user

    torch.manual_seed(1)
    sd = user.Net().state_dict()
    torch.save(sd, mynet / "ckpt.pt")
    assert main(["convert", str(mynet / "ckpt.pt"), str(mynet / "ckpt.msgpack"), "--port", str(out)]) == 0
    assert main(["convert", str(mynet / "ckpt.msgpack"), str(mynet / "back.pt"), "--port", str(out)]) == 0
    back = files.load(mynet / "back.pt")
    assert set(back) == set(sd)
    for k, v in back.items():
        assert torch.equal(torch.as_tensor(v), sd[k]), k
    assert "max |torch - flax|" in capsys.readouterr().out


def test_cli_port_refusals(mynet, capsys):
    def err(args, code):
        assert main(["port", *args]) == code
        return capsys.readouterr().err

    shape = ["--input-shape", "2,3,8,8"]
    assert "nomodule" in err(["nomodule:Net", *shape, "--out", "a"], 2)
    assert "Nope" in err(["mynet:Nope", *shape, "--out", "a"], 2)
    e = err(["mynet:Net", "--input-shape", "2,5,8,8", "--out", "a"], 2)
    assert "rejects inputs of shapes [(2, 5, 8, 8)]" in e
    assert "expected" in err(["mynet:Net", "--input-shape", "2,x,8", "--out", "a"], 2)
    assert "JSON object" in err(["mynet:Net", *shape, "--kwargs", "[1]", "--out", "a"], 2)
    import mynet as user

    torch.save(user.Net(width=4).state_dict(), mynet / "w.pt")  # another width: every mis-shaped key listed
    e = err(["mynet:Net", *shape, "--weights", str(mynet / "w.pt"), "--out", "a"], 2)
    assert "does not fit mynet:Net" in e and "conv.weight" in e and "fc.weight" in e
    (mynet / "taken").mkdir()
    (mynet / "taken" / "keep.txt").write_text("mine")
    assert "exists" in err(["mynet:Net", *shape, "--out", str(mynet / "taken")], 2)
    assert (mynet / "taken" / "keep.txt").read_text() == "mine"
    assert not (mynet / "a").exists()


def test_convert_port_refuses_a_checkpoint_that_does_not_fit(mynet, capsys):
    out = mynet / "port"
    assert main(["port", "mynet:Net", "--input-shape", "2,3,8,8", "--out", str(out), "--samples", "1"]) == 0
    import mynet as user

    torch.save(user.Net(width=4).state_dict(), mynet / "small.pt")
    assert main(["convert", str(mynet / "small.pt"), str(mynet / "x.msgpack"), "--port", str(out)]) == 1
    e = capsys.readouterr().err
    assert "does not fit the port" in e and "conv.weight: shape (4, 3, 3, 3), the port has (8, 3, 3, 3)" in e
    assert not (mynet / "x.msgpack").exists()
    assert main(["convert", str(mynet / "small.pt"), str(mynet / "x.msgpack"), "--port", str(out),
                 "--model", "resnet18"]) == 2
    assert main(["convert", str(mynet / "small.pt"), str(mynet / "x.msgpack"), "--port", str(mynet)]) == 1
    assert "not a saved port" in capsys.readouterr().err


def test_python_port_saves_and_refuses_to_overwrite(tmp_path):
    torch.manual_seed(0)
    p = port(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), images(2, size=8), samples=1)
    assert p.passed
    p.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "port.json").read_text())
    assert meta["root"] == p.root and (tmp_path / "p" / "torch_module.pt").exists()
    with pytest.raises(FileExistsError, match="exists"):
        p.save(tmp_path / "p")
    restored = files.load(tmp_path / "p" / "variables.safetensors")
    np.testing.assert_array_equal(np.asarray(restored["params"]["0"]["kernel"]),
                                  p.variables["params"]["0"]["kernel"])


MIXER = '''
import torch
from torch import nn


class Mixer(nn.Module):
    """A Sequential with stateless layers between its convolutions, a raw parameter (a class token),
    attention, LayerNorm, a Dropout module and a functional dropout that reads self.training: what an NNX
    port writes apart from a Linen one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.GELU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, 16))
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.ln = nn.LayerNorm(16)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        t = x.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        t = torch.nn.functional.dropout(self.ln(t), 0.2, self.training)
        return self.head(self.drop(t[:, 0]))
'''


def test_nnx_port_is_native_nnx_with_the_linen_ports_paths_and_passes(tmp_path, monkeypatch):
    import jax
    import jax.numpy as jnp

    from parity.check import nnx as nnx_check
    from parity.port import _load, build, load_weight_map, write

    (tmp_path / "mixmod.py").write_text(MIXER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mixmod", None)
    out = tmp_path / "p"
    assert main(["port", "mixmod:Mixer", "--input-shape", "4,3,16,16", "--api", "nnx", "--out", str(out),
                 "--samples", "5"]) == 0
    text = (out / "model.py").read_text()
    assert "flax.linen" not in text and "nn.Module" not in text
    assert "class Mixer(nnx.Module)" in text and "class Stem(nnx.List)" in text  # torch's indices kept
    assert "self.cls_token = nnx.Param(" in text and json.loads((out / "port.json").read_text())["api"] == "nnx"
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", str(out / "model.py")],
                          capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout
    import mixmod

    torch.manual_seed(0)
    model, x = mixmod.Mixer().eval(), images(4, size=16)
    # the same Flax paths as the Linen port's, so checkpoints move by the same rules
    linen, _, root, _ = write(model, x, "linen")
    xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
    shapes = jax.eval_shape(lambda: build(_load(linen, "linen_mixer"), root).init(jax.random.key(0), xj))
    assert {e.flax_key for e in load_weight_map(out).entries} == set(rules.flatten(shapes))
    # a checkpoint moved by the weight map into the NNX model, run as any NNX model is (model.eval())
    kind, variables = files_port.convert(out, model.state_dict())
    flax_model = files_port.flax_module(out)
    nnx_check.load(flax_model, variables)
    flax_model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(flax_model(xj)), model(x).numpy(), rtol=1e-4, atol=1e-5)
    # its own test passes
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(out / "test_port.py")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr
    sys.modules.pop("mixmod", None)


def test_nnx_port_of_the_transformer_example_passes():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    p = port(TorchTransformer(), ids, api="nnx", images=False)
    assert p.passed, p.report
    assert "nnx.Embed(" in p.source and "nnx.LayerNorm(" in p.source
