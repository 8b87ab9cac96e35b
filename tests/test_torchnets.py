import pytest
import torch

import netspecs
import torchnets
from helpers import REFERENCE, VERY_DEEP, small_size, variants
from initcheck import check as check_init
from netspecs import counts


@pytest.mark.parametrize("name", variants(sorted(REFERENCE)))
def test_state_dict_matches_torchvision(name):
    with torch.device("meta"):
        model = torchnets.build(name)
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    ref = REFERENCE[name]
    assert got == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    assert sum(b.numel() for b in model.buffers()) == ref["num_buffers"]


@pytest.mark.parametrize("name", variants())
def test_param_count_matches_analytic(name):
    with torch.device("meta"):
        model = torchnets.build(name)
    assert sum(p.numel() for p in model.parameters()) == counts.count(netspecs.get(name)).params


@pytest.mark.parametrize("name,overrides", [("resnet50", {}), ("resnext50_32x4d", {}), ("vgg11_bn", {}),
                                            ("resnet20", {}), ("resnet18", {"zero_init_residual": True}),
                                            ("resnet50", {"zero_init_residual": True}), ("vgg11_lrn", {})])
def test_init_follows_torchvision(name, overrides):
    torch.manual_seed(0)
    spec = netspecs.get(name, **overrides)
    for key, t in torchnets.build(name, **overrides).state_dict().items():
        if not key.endswith("num_batches_tracked"):
            check_init(key, t.numpy(), spec)


@pytest.mark.parametrize("name", variants())
def test_forward_shapes_and_backward(name):
    torch.manual_seed(0)
    spec = netspecs.get(name)
    model = torchnets.build(name, num_classes=7)
    s = small_size(name)
    x = torch.randn(2, 3, s, s)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    if name in VERY_DEEP:
        return
    model.train()
    y = model(x)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert spec.name == name


def test_option_a_shortcut_has_no_parameters_and_pads_zeros():
    model = torchnets.build("resnet20")
    block = model.layer2[0]
    assert isinstance(block.downsample, torchnets.layers.ShortcutA)
    assert not list(block.downsample.parameters())
    assert not [k for k in model.state_dict() if "downsample" in k]
    x = torch.randn(2, 16, 32, 32)
    y = block.downsample(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and torch.all(y[:, 16:] == 0)


def test_option_c_projects_every_block():
    model = torchnets.build("resnet34", shortcut="C")
    blocks = [b for stage in model.stages() for b in stage]
    assert all(isinstance(b.downsample, torchnets.resnet.Downsample) for b in blocks)
    b_model = torchnets.build("resnet34")
    assert sum(b.downsample is not None for s in b_model.stages() for b in s) == 3


def test_stride_on_1x1_moves_the_stride():
    v15 = torchnets.build("resnet50").layer2[0]
    v1 = torchnets.build("resnet50", stride_on="1x1").layer2[0]
    assert v15.conv1.stride == (1, 1) and v15.conv2.stride == (2, 2)
    assert v1.conv1.stride == (2, 2) and v1.conv2.stride == (1, 1)


def test_plain_nets_have_no_shortcut():
    model = torchnets.build("plain18")
    assert all(b.downsample is None and not b.residual for s in model.stages() for b in s)


def test_groups_and_widths():
    m = torchnets.build("resnext50_32x4d")
    assert m.layer1[0].conv2.groups == 32 and m.layer1[0].conv2.out_channels == 128
    assert torchnets.build("wide_resnet50_2").layer1[0].conv2.out_channels == 128


def test_double_model_takes_double_input():
    model = torchnets.build("resnet20").double().eval()
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("x,match", [
    (torch.randn(3, 32, 32), "rank 3"),
    (torch.randn(2, 1, 32, 32), "3 channels"),
    (torch.randn(2, 32, 32, 3), "looks like NHWC"),
    (torch.randn(2, 3, 16, 16), "spatial size >= 32x32, got 16x16"),
    (torch.ones(2, 3, 32, 32, dtype=torch.uint8), "floating-point input"),
    (torch.randn(2, 3, 32, 32, dtype=torch.float64), "expected input dtype float32.*got float64"),
])
def test_bad_input_is_a_clear_value_error(vgg11, x, match):
    with pytest.raises(ValueError, match=match):
        vgg11(x)


@pytest.fixture(scope="module")
def vgg11():
    return torchnets.build("vgg11").eval()


def test_cifar_min_size_and_numpy_input():
    model = torchnets.build("resnet20").eval()
    with pytest.raises(ValueError, match=">= 4x4, got 2x2"):
        model(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="torch.Tensor"):
        model([[1.0]])


def test_unknown_override_raises():
    with pytest.raises(TypeError, match="valid overrides"):
        torchnets.build("resnet18", dropout=0.1)
