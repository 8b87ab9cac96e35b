import pytest

import netspecs
from helpers import REFERENCE
from netspecs import counts

PAPER_VGG_M = {"vgg11": 133, "vgg11_lrn": 133, "vgg13": 133, "vgg16_c": 134, "vgg16": 138, "vgg19": 144}
PAPER_CIFAR_M = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85,
                 "resnet110": 1.7, "resnet1202": 19.4}
# torchvision's "GFLOPS" metadata (really GMACs) at 224x224, as torchvision's model metadata lists them.
TORCHVISION_GMACS = {"resnet18": 1.814, "resnet34": 3.664, "resnet50": 4.089, "resnet101": 7.801,
                     "resnet152": 11.514, "vgg11": 7.609, "vgg13": 11.308, "vgg16": 15.470,
                     "vgg19": 19.632}


def test_every_design_name_is_in_the_table():
    names = set(netspecs.list_models())
    expected = {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    expected |= {"vgg11_lrn", "vgg16_c", "vgg16_c_bn", "plain18", "plain34"}
    expected |= {f"resnet{d}" for d in (18, 34, 50, 101, 152)}
    expected |= {"resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
                 "wide_resnet50_2", "wide_resnet101_2"}
    expected |= {f"{k}{d}" for k in ("resnet", "plain") for d in (20, 32, 44, 56, 110, 1202)}
    assert names == expected
    assert set(REFERENCE) <= names


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_analytic_param_count_matches_torchvision(name):
    assert counts.count(netspecs.get(name)).params == REFERENCE[name]["num_params"]


@pytest.mark.parametrize("name,millions", PAPER_VGG_M.items())
def test_vgg_paper_param_counts(name, millions):
    assert abs(counts.count(netspecs.get(name)).params / 1e6 - millions) < 0.5


@pytest.mark.parametrize("name,millions", PAPER_CIFAR_M.items())
def test_cifar_resnet_paper_param_counts(name, millions):
    assert abs(counts.count(netspecs.get(name)).params / 1e6 / millions - 1) < 0.02


@pytest.mark.parametrize("name,gmacs", TORCHVISION_GMACS.items())
def test_macs_match_torchvision_metadata(name, gmacs):
    got = counts.count(netspecs.get(name), 224).macs / 1e9
    assert f"{got:.4g}" == f"{gmacs:.4g}"


def test_resnet_paper_flops_table1():
    # Paper Table 1 (v1, stride on 1x1): 3.8 / 7.6 / 11.3 GFLOPs for 50/101/152.
    for d, paper in [(50, 3.8), (101, 7.6), (152, 11.3)]:
        got = counts.count(netspecs.get(f"resnet{d}", stride_on="1x1"), 224).macs / 1e9
        assert abs(got - paper) / paper < 0.05


def test_train_and_infer_flops_are_6x_and_2x_macs_less_the_stem_input_gradient():
    spec = netspecs.get("resnet50")
    stem = 7 * 7 * 3 * 64 * 112 * 112  # the 7x7/2 stem's MACs at 224x224, by hand
    assert counts.first_conv_macs(spec) == stem
    assert counts.train_flops(spec) == 6 * counts.count(spec).macs - 2 * stem
    assert counts.infer_flops(spec, 64) == 2 * counts.count(spec, 64).macs
    assert counts.first_conv_macs(netspecs.get("vgg11"), 32) == 3 * 3 * 3 * 64 * 32 * 32


def test_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError, match="resnet50"):
        netspecs.get("resnet51")


def test_unknown_override_lists_valid_ones():
    with pytest.raises(TypeError, match="valid overrides: num_classes, dropout"):
        netspecs.get("vgg11", shortcut="A")
    with pytest.raises(TypeError, match="stride_on"):
        netspecs.get("resnet50", width=3)
    with pytest.raises(TypeError, match="valid overrides: num_classes$"):
        netspecs.get("plain18", shortcut="A")


@pytest.mark.parametrize("key,value", [("shortcut", "D"), ("stride_on", "2x2"), ("num_classes", 0),
                                       ("num_classes", 2.5), ("zero_init_residual", 1)])
def test_bad_override_values(key, value):
    with pytest.raises(ValueError, match=key):
        netspecs.get("resnet50", **{key: value})


def test_bad_dropout():
    with pytest.raises(ValueError, match="dropout"):
        netspecs.get("vgg16", dropout=1.5)


def test_defaults_per_family():
    assert netspecs.get("resnet20").shortcut == "A" and netspecs.get("resnet20").num_classes == 10
    assert netspecs.get("resnet50").shortcut == "B" and netspecs.get("resnet50").stride_on == "3x3"
    assert netspecs.get("vgg16").dropout == 0.5
    assert not netspecs.get("plain56").residual


def test_shortcut_plans():
    a = netspecs.get("resnet20").stages()
    assert [b.shortcut for b in a[1]] == ["A", "identity", "identity"]
    c = netspecs.get("resnet18", shortcut="C").stages()
    assert all(b.shortcut == "proj" for s in c for b in s)
    b = netspecs.get("resnet18").stages()
    assert [b_.shortcut for s in b for b_ in s].count("proj") == 3
    assert all(b_.shortcut == "none" for s in netspecs.get("plain34").stages() for b_ in s)


def test_list_cli(capsys):
    from parity.__main__ import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "resnet50" in out and "25,557,032" in out and "4.089" in out
    assert len(out.strip().splitlines()) == len(netspecs.list_models()) + 2
