"""`parity convert`: its guards, what it reads from the checkpoint, and its refusal to write."""

import pytest
import torch

import helpers
import torchnets
from parity import convert
from parity.__main__ import main
from parity.convert import files


@pytest.fixture(scope="module")
def resnet18_10(tmp_path_factory):
    """A fine-tuned-looking torchvision checkpoint: resnet18 with a 10-class fc."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "r18.safetensors"
    files.save(path, torchnets.build("resnet18", num_classes=10).state_dict())
    return path


def test_reads_the_variant_and_the_classifier_size(resnet18_10, tmp_path, capsys):
    out = tmp_path / "r18.msgpack"
    assert main(["convert", str(resnet18_10), str(out)]) == 0
    text = capsys.readouterr().out
    assert "identified as resnet18" in text and "classifier has 10 classes" in text
    variables = files.load(out)
    assert variables["params"]["fc"]["kernel"].shape == (512, 10)
    # and back, the classifier size read from the Flax file
    back = tmp_path / "back.safetensors"
    assert main(["convert", str(out), str(back), "--model", "resnet18"]) == 0
    assert "classifier has 10 classes" in capsys.readouterr().out
    sd, orig = files.load(back), files.load(resnet18_10)
    assert all(torch.equal(sd[k], orig[k]) for k in orig)


def test_wrong_model_is_named_and_nothing_written(resnet18_10, tmp_path, capsys):
    out = tmp_path / "x.msgpack"
    assert main(["convert", str(resnet18_10), str(out), "--model", "resnet50"]) == 1
    err = capsys.readouterr().err
    assert "does not fit resnet50" in err and "resnet18 (num_classes=10)" in err and "--model resnet18" in err
    assert not out.exists()


def test_ambiguous_and_unknown_checkpoints_keep_the_full_error(tmp_path, capsys):
    # resnet20 (option A shortcuts have no weights) and plain20 have the same state_dict
    path = tmp_path / "r20.safetensors"
    files.save(path, torchnets.build("resnet20").state_dict())
    assert main(["convert", str(path), str(tmp_path / "o.msgpack")]) == 1
    assert "fits 2 variants" in capsys.readouterr().err
    sd = torchnets.build("resnet20").state_dict()
    sd.pop("fc.bias")
    files.save(tmp_path / "cut.safetensors", sd)
    assert main(["convert", str(tmp_path / "cut.safetensors"), str(tmp_path / "o.msgpack")]) == 1
    assert "no variant has exactly" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "cut.safetensors"), str(tmp_path / "o.msgpack"), "--model",
                 "resnet20"]) == 1
    assert "missing 'fc.bias'" in capsys.readouterr().err
    assert not (tmp_path / "o.msgpack").exists()


def test_force_and_same_file_guards(resnet18_10, tmp_path, capsys):
    out = tmp_path / "r18.msgpack"
    out.write_bytes(b"precious")
    assert main(["convert", str(resnet18_10), str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert main(["convert", str(resnet18_10), str(resnet18_10), "--force"]) == 2
    assert "must differ" in capsys.readouterr().err
    assert main(["convert", str(resnet18_10), str(out), "--force"]) == 0
    assert files.load(out)["params"]["fc"]["kernel"].shape == (512, 10)


def test_to_torch_rewrites_a_torch_file_in_another_format(resnet18_10, tmp_path):
    out = tmp_path / "r18.pt"
    assert main(["convert", str(resnet18_10), str(out), "--to", "torch"]) == 0
    sd, orig = files.load(out), files.load(resnet18_10)
    assert list(sd) == list(orig) and all(torch.equal(sd[k], orig[k]) for k in orig)


def test_refuses_to_write_when_the_converted_model_disagrees(resnet18_10, tmp_path, capsys, monkeypatch):
    """A converter bug (BatchNorm's running mean and variance crossed) is caught by verify."""
    helpers.swap_mean_var(monkeypatch)
    sd = files.load(resnet18_10)
    g = torch.Generator().manual_seed(0)
    for k in sd:  # statistics that differ, so the swap changes the output (as weights.randomize draws them)
        if k.endswith("running_mean"):
            sd[k] = 0.4 * torch.rand(sd[k].shape, generator=g) - 0.2
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(sd[k].shape, generator=g)
    files.save(tmp_path / "in.safetensors", sd)
    out = tmp_path / "out.msgpack"
    assert main(["convert", str(tmp_path / "in.safetensors"), str(out)]) == 1
    assert "nothing written" in capsys.readouterr().err and not out.exists()


def test_verify_measures_the_disagreement():
    torch.manual_seed(0)
    sd = torchnets.build("resnet20").state_dict()
    v = convert.torch_to_flax(sd, "resnet20")
    diff, scale = convert.verify(sd, v, "resnet20")
    assert diff < 1e-5 * scale and scale > 0
    v["params"]["fc"]["bias"] = v["params"]["fc"]["bias"] + 1.0
    diff, _ = convert.verify(sd, v, "resnet20")
    assert diff == pytest.approx(1.0, rel=1e-5)


def test_identify_every_variant_from_its_own_state_dict():
    """Each default variant identifies as itself (plain/residual CIFAR pairs share state_dicts)."""
    import netspecs

    for name in netspecs.list_models():
        shapes = {k: s for k, (s, _) in convert.expected_state_dict(name).items()}
        found = [m for m, ov in convert.identify(shapes) if not ov]
        assert name in found, name
        assert len(found) == 1 or {n.replace("plain", "resnet") for n in found} == {name.replace("plain", "resnet")}
