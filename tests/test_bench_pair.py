"""``parity bench --pair/--port`` and ``parity.bench_pair``: users' pairs and saved ports raced through the
twins' machinery (each framework in a fresh interpreter, the same weights and batch, the same-work check,
FLOPs from torch and XLA), planted bugs refused with both figures, and bad input refused clearly."""

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import parity
from parity.__main__ import main
from parity.bench import jobs, pairs, runs

ROOT = Path(__file__).resolve().parents[1]
CONVNET = "examples.convnet:TorchConvNet,examples.convnet:FlaxConvNet"
TINY = {"steps": 2, "warmup": 1, "frameworks": ("jax", "torch-eager")}

# a user's module of factories and losses, importable by the workers (PYTHONPATH)
USER = '''
import flax.linen as fnn
from torch import nn

from examples.convnet import FlaxConvNet


class TorchTwo(nn.Module):  # two arguments
    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(8, 4), nn.Linear(6, 4)

    def forward(self, x, y):
        return self.fc(x) + self.fc2(y)


class FlaxTwo(fnn.Module):
    @fnn.compact
    def __call__(self, x, y):
        return fnn.Dense(4, name="fc")(x) + fnn.Dense(4, name="fc2")(y)


def flax_flatten_bug(**kw):
    return FlaxConvNet(bug="flatten_order", **kw)


def flax_five_classes(**kw):
    return FlaxConvNet(num_classes=5)


def torch_sq(out, target):
    return (out ** 2).mean()


def flax_sq(out, target):
    return (out ** 2).mean()


def torch_rows(out, target):  # one value per row: not a scalar
    return (out ** 2).mean(1)


def flax_rows(out, target):
    return (out ** 2).mean(1)
'''


@pytest.fixture
def user(tmp_path, monkeypatch):
    (tmp_path / "userbench.py").write_text(textwrap.dedent(USER))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{ROOT}")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_convnet_pair_through_the_command(tmp_path, capsys):
    """The README's line: a pair by import strings, train mode, every report of the twins' bench."""
    code = main(["bench", "--pair", CONVNET, "--input-shape", "2,3,32,32", "--steps", "2", "--warmup", "1",
                 "--frameworks", "jax,torch-eager", "--profile", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "FLOPs examples.convnet:TorchConvNet:" in out and "by XLA's cost analysis" in out
    assert "first-step losses jax" in out and "first-step logits, relative L2 distance to jax" in out
    assert "where the time goes, examples.convnet:TorchConvNet 2,3,32,32 jax" in out
    data = json.loads((tmp_path / "throughput.json").read_text())
    rows = {r["framework"]: r for r in data["results"]}
    assert set(rows) == {"jax", "torch-eager"} and not data["refused"]
    for r in rows.values():
        assert r["model"] == "examples.convnet:TorchConvNet" and r["batch"] == 2 and r["images_per_s"] > 0
        assert r["flops_source"] == "torch FlopCounterMode" and r["torch_flops"] > 0 and r["xla_flops"] > 0
        # MFU from torch's count: its FLOP rate is that count per step over the median step
        assert r["tflops"] == pytest.approx(r["torch_flops"] / (r["median_ms"] / 1e3) / 1e12)
    # a convolution's multiply-adds (2 FLOPs each) dominate both counts: the two agree within a factor 2
    t, x = rows["jax"]["torch_flops"], rows["jax"]["xla_flops"]
    assert 0.5 < x / t < 2, (t, x)
    assert (tmp_path / "throughput.md").exists() and (tmp_path / "throughput.png").exists()


# inference in the default tier, an AdamW train step (mean squared error on a 3-D output) in the slow one
@pytest.mark.parametrize("options", [{"mode": "infer"},
                                     pytest.param({"mode": "train", "optimizer": "adamw"}, marks=pytest.mark.slow)])
def test_transformer_pair_token_inputs(options):
    """Token ids, no images, a (batch, length, classes) output (mean squared error), from Python."""
    pair = ("examples.transformer:TorchTransformer", "examples.transformer:FlaxTransformer", (2, 16))
    rows = parity.bench_pair(*pair, tokens=50, images=False, **options, **TINY)
    assert {r["framework"] for r in rows} == {"jax", "torch-eager"}
    assert all(r["mode"] == options["mode"] and r["images_per_s"] > 0 and r["torch_flops"] > 0
               and math.isfinite(r["first_loss"]) for r in rows)


def test_saved_port_in_train_and_inference(tmp_path):
    torch.manual_seed(0)
    p = parity.port(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
                    torch.randn(2, 3, 8, 8), samples=1)
    p.save(tmp_path / "port")
    for mode in ("train", "infer"):
        rows = parity.bench_pair(port=str(tmp_path / "port"), mode=mode, **TINY)
        assert {r["model"] for r in rows} == {"port:port"} and all(r["batch"] == 2 for r in rows)
        assert all(r["images_per_s"] > 0 for r in rows), rows


@pytest.mark.parametrize("through", ["python", pytest.param("command", marks=pytest.mark.slow)])
def test_a_planted_bug_is_refused_with_both_figures(user, capsys, tmp_path, through):
    """A Flax side whose flatten order differs (examples.convnet's planted bug) computes other logits."""
    if through == "python":
        with pytest.raises(runs.NotSameWorkError) as e:
            parity.bench_pair("examples.convnet:TorchConvNet", "userbench:flax_flatten_bug", (2, 3, 32, 32),
                              **TINY)
        text = str(e.value)
        assert "did not do the same work" in text and "first-step losses jax" in text and "torch-eager" in text
        assert "relative L2 distance to jax: torch-eager" in text
        return
    code = main(["bench", "--pair", "examples.convnet:TorchConvNet,userbench:flax_flatten_bug", "--input-shape",
                 "2,3,32,32", "--steps", "1", "--warmup", "0", "--frameworks", "jax,torch-eager", "--out",
                 str(tmp_path / "out")])
    assert code == 1
    assert "REFUSED examples.convnet:TorchConvNet" in capsys.readouterr().err
    assert not json.loads((tmp_path / "out" / "throughput.json").read_text())["results"]


def test_a_pair_of_two_arguments(user, tmp_path):
    code = main(["bench", "--pair", "userbench:TorchTwo,userbench:FlaxTwo", "--input-shape", "2,8;2,6",
                 "--steps", "2", "--warmup", "1", "--frameworks", "jax,torch-eager", "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "throughput.json").read_text())["results"]
    assert len(rows) == 2 and all(r["batch"] == 2 and r["torch_flops"] > 0 for r in rows)


def test_a_users_loss_in_both_frameworks(user):
    rows = parity.bench_pair("examples.convnet:TorchConvNet", "examples.convnet:FlaxConvNet", (2, 3, 32, 32),
                             loss=("userbench:torch_sq", "userbench:flax_sq"), **TINY)
    assert len({round(r["first_loss"], 5) for r in rows}) == 1


# each refusal built in a fresh interpreter costs about 9 s: two in the default tier, two in the slow one
@pytest.mark.parametrize("args,message", [
    (["--pair", "nomodule:Net,examples.convnet:FlaxConvNet", "--input-shape", "2,3,32,32"], "cannot import 'nomodule'"),
    pytest.param(["--pair", CONVNET, "--input-shape", "2,3,16,16"],
                 "the torch module rejects inputs of shapes [(2, 3, 16, 16)]", marks=pytest.mark.slow),
    pytest.param(["--pair", "examples.convnet:TorchConvNet,userbench:flax_five_classes", "--input-shape",
                  "2,3,32,32"], "head.weight (10, 4096) -> params/head/kernel (4096, 5): shapes differ",
                 marks=pytest.mark.slow),
    (["--pair", CONVNET, "--input-shape", "2,3,32,32", "--loss", "userbench:torch_rows,userbench:flax_rows"],
     "loss must return a scalar, got an array of shape (2,)"),
    (["--pair", CONVNET], "--input-shape is needed"),
    (["--pair", CONVNET, "--input-shape", "2,3,32,32", "--dtype", "bf16"], "a pair is benched in fp32"),
    (["--pair", "examples.convnet:TorchConvNet", "--input-shape", "2,3,32,32"], "TORCH_SPEC,FLAX_SPEC"),
    (["--pair", CONVNET, "--input-shape", "2,3,32,32", "--frameworks", "jax-xla"], "a pair runs in"),
    (["--pair", CONVNET, "--port", "x"], "give one"),
])
def test_bad_input_is_refused_before_timing(user, capsys, tmp_path, args, message):
    assert main(["bench", *args, "--steps", "1", "--warmup", "0", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_python_api_refuses_bad_input_with_the_same_errors(user):
    with pytest.raises(jobs.JobError, match="cannot import 'nomodule'"):
        parity.bench_pair("nomodule:Net", "examples.convnet:FlaxConvNet", (2, 3, 32, 32), **TINY)
    with pytest.raises(ValueError, match="both sides"):
        parity.bench_pair("examples.convnet:TorchConvNet", "", (2, 3, 32, 32), **TINY)
    with pytest.raises(ValueError, match="mode: expected one of"):
        parity.bench_pair(*CONVNET.split(","), (2, 3, 32, 32), mode="eval")
    with pytest.raises(ValueError, match="input shape"):
        parity.bench_pair(*CONVNET.split(","), (2, 3, 32, 32), batch=4)


def test_spec_rows_and_targets():
    spec = pairs.PairSpec("a:B", "a:C", input_shapes=[[4, 3, 8, 8], [4, 2]])
    assert pairs.PairSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec and spec.batch == 4
    with pytest.raises(ValueError, match="positive sizes"):
        pairs.PairSpec("a:B", "a:C", input_shapes=[[4, 0]])
    with pytest.raises(ValueError, match="a torch and a Flax spec"):
        pairs.PairSpec("a:B", "a:C", input_shapes=[[1]], port="somewhere")
    kind, labels = pairs.targets([(4, 10)])
    assert kind == "cross_entropy" and labels.shape == (4,) and labels.max() < 10
    kind, t = pairs.targets([(4, 8, 8, 3)])
    assert kind == "mse" and t.shape == (4, 8, 8, 3) and t.dtype == np.float32
    kind, (a, b) = pairs.targets([(4, 10), (4, 2)])  # several outputs: a target each, mean squared error
    assert kind == "mse" and a.shape == (4, 10) and b.shape == (4, 2)
    # the first rows of every output, flattened and cut, side by side; never more rows than a rank holds
    rows = pairs.output_rows([np.ones((10, 3)), np.zeros((10, 2, 2))], batch=16)
    assert np.asarray(rows).shape == (8, 7)
    assert np.asarray(pairs.output_rows([np.ones((10, 3000))], batch=2)).shape == (2, pairs.ROW_VALUES)


def test_twin_rows_keep_their_analytic_flops():
    """The twins' rows through the same group code: no pair count, netspecs' analytic count."""
    flops, counts = runs.step_flops({"jax": jobs.Measurement(jobs.Job("resnet20", "jax").__dict__, 1.0, 1.0,
                                                            [0.1], 1)})
    assert flops is None and counts == {}
    m = jobs.Measurement(jobs.Job("p", "jax", batch=4).__dict__, 1.0, 1.0, [0.5], 1, flops={"xla": 8e9})
    flops, counts = runs.step_flops({"jax": m})
    assert flops == 8e9 and counts["flops_source"] == "XLA cost analysis" and math.isnan(counts["torch_flops"])

