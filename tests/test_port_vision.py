"""torchvision's architectures ported and proven, random weights (no download): each traced, written
and checked against torch at a small input. torchvision needs the CUDA build of torch (it fails to
import with the CPU build), so these run in their own environment: `make test-vision`."""

import pytest

torchvision = pytest.importorskip("torchvision")

import torch  # noqa: E402

from parity import port  # noqa: E402

models = torchvision.models


def small_vit() -> torch.nn.Module:
    """vit_b_16's structure (class token, position embedding, pre-LN encoder blocks, MLP head) at two
    layers, width 64, on 32x32 images."""
    return models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64,
                                    mlp_dim=128, num_classes=10)


# name -> (builder, input size, tier). One sample per side: the float64 structure of everything (what a
# port gets right or wrong) and the forward passes' precision; at these sizes the last stages' BatchNorms
# see few values and their gradients' precision is reported "not judged", never guessed.
MODELS = {
    "squeezenet1_1": (models.squeezenet1_1, 64, ()),
    "mnasnet0_5": (models.mnasnet0_5, 64, ()),
    "vit (2 layers)": (small_vit, 32, ()),
    "mobilenet_v3_small": (models.mobilenet_v3_small, 64, pytest.mark.slow),
    "shufflenet_v2_x0_5": (models.shufflenet_v2_x0_5, 64, pytest.mark.slow),
    "mobilenet_v2": (models.mobilenet_v2, 64, pytest.mark.slow),
    "efficientnet_b0": (models.efficientnet_b0, 64, pytest.mark.slow),
    "regnet_y_400mf": (models.regnet_y_400mf, 64, pytest.mark.slow),
    "resnet50": (models.resnet50, 64, pytest.mark.slow),
    "resnext50_32x4d": (models.resnext50_32x4d, 64, pytest.mark.slow),
    "convnext_tiny": (models.convnext_tiny, 64, pytest.mark.slow),
    "densenet121": (models.densenet121, 64, pytest.mark.slow),
}


# the NNX ports of those that hold what NNX writes apart: attention, class token and position embedding
# (vit), stochastic depth (efficientnet), layer scale and LayerNorm on channels-last maps (convnext)
NNX = {"vit (2 layers)": (), "efficientnet_b0": pytest.mark.slow, "convnext_tiny": pytest.mark.slow}
CASES = [pytest.param(b, s, "linen", marks=m, id=n) for n, (b, s, m) in MODELS.items()]
CASES += [pytest.param(*MODELS[n][:2], "nnx", marks=m, id=f"{n} nnx") for n, m in NNX.items()]


@pytest.mark.vision
@pytest.mark.parametrize("build,size,api", CASES)
def test_torchvision_model_ports_and_passes(build, size, api):
    torch.manual_seed(0)
    model = build()
    p = port(model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)), samples=1, api=api)
    assert p.passed, p.report
    assert f"class {type(model).__name__}({'nnx' if api == 'nnx' else 'nn'}.Module)" in p.source
    assert set(p.weight_map.by_torch) == set(model.state_dict())
