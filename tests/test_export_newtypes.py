"""The deployable form of Tucker-2, CP and spatial low-rank blocks: a BatchNorm that follows one folds into the block's
last linear op (the registry's ``bn_into``), the output stays the same, the parameters are the block's plus one
bias; ONNX files of converted models of each type run in ONNX Runtime and match eager PyTorch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from falcon.convtypes import CONV_TYPES
from falcon.export import (
    PARITY_RTOL,
    deploy_form,
    export_onnx,
    onnx_predict,
    onnx_session,
    parity,
)
from falcon.spec import LayerSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

M, N, D = 5, 7, 3
#: per type: its hyper-parameters and its weights counted by hand (the papers' layouts: Tucker-2 M→R₃, D×D R₃→R₄,
#: R₄→N; CP M→R, D×1 and 1×D depthwise on R, R→N; spatial D×1 M→K, 1×D K→N)
CASES = {
    "tucker2": ({"rank_in": 3, "rank_out": 4}, M * 3 + D * D * 3 * 4 + 4 * N),
    "cp": ({"rank": 6}, M * 6 + D * 6 + D * 6 + 6 * N),
    "spatial": ({"rank": 4}, D * M * 4 + D * 4 * N),
}
#: the conv a following BN must end up in, and its out-channels
LAST = {"tucker2": "last", "cp": "last", "spatial": "horizontal"}


def _random_bn(bn: nn.BatchNorm2d, gen: torch.Generator) -> nn.BatchNorm2d:
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.7)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) * 2 + 0.3)
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.5)
    return bn


def _net(conv: str, bias: bool, stride: int, seed: int = 0) -> nn.Sequential:
    """A stem conv, its BN and ReLU, then the block of ``conv``, its BN and ReLU, with random non-trivial BN stats."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    spec = LayerSpec(M, N, D, 9, 8, stride)
    block = CONV_TYPES[conv].block(spec, bias=bias, **CASES[conv][0])
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
    return nn.Sequential(nn.Conv2d(2, M, 3, padding=1, bias=False), _random_bn(nn.BatchNorm2d(M), gen), nn.ReLU(),
                         block, _random_bn(nn.BatchNorm2d(N), gen), nn.ReLU()).eval()


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("conv", sorted(CASES))
def test_bn_after_a_new_type_folds_into_its_last_linear_op(conv, bias, stride):
    model = _net(conv, bias, stride)
    x = torch.randn(3, 2, 9, 8, generator=torch.Generator().manual_seed(1))
    deployed, info = deploy_form(model, x)
    with torch.no_grad():
        error = parity(model(x), deployed(x)).relative_error
    assert error < 1e-5, error
    assert info.folded_bn == 2 and info.kept_bn == 0 and info.fused_falcon == 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    block = deployed[3]
    assert type(block) is type(model[3]) and getattr(block, LAST[conv]).bias is not None
    weights, stem = CASES[conv][1], 2 * M * D * D
    assert _count(model[3]) == weights + (N if bias else 0)  # the block as built: its weights (+ a bias)
    assert _count(model) == stem + 2 * M + _count(model[3]) + 2 * N
    # folding: each BN's 2 parameters per channel gone; the conv it went into has a bias of its channels
    assert _count(deployed[3]) == weights + N and _count(deployed) == stem + M + weights + N


@pytest.mark.parametrize("conv", sorted(CASES))
def test_the_registry_says_where_a_bn_folds(conv):
    ct = CONV_TYPES[conv]
    assert ct.deployable and ct.bn_into == LAST[conv] and ct.fused_name is None
    block = ct.block(LayerSpec(M, N, D, 9, 8), **CASES[conv][0])
    assert getattr(block, ct.bn_into).out_channels == N
    assert ct.deploy(block) is block  # no BN: the block is already its deployable form


@pytest.mark.parametrize("conv", sorted(CASES))
def test_onnx_of_a_converted_model_of_each_new_type(conv, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from falcon.conversion import convert_model
    from falcon.sources import load_model

    loaded = load_model("digits-vgg")
    result = convert_model(loaded, conv, 4)
    converted = result.model.eval()
    blocks = [m for m in converted.modules() if getattr(m, "conv_type", "") == conv]
    assert len(blocks) == len(result.layers) >= 4
    images = loaded.eval_data.tensors[0][:64]
    deployed, info = deploy_form(converted, images[:2], portable=True)
    assert info.folded_bn == 5 and info.kept_bn == 0  # each of digits-vgg's 5 convs has its BN
    assert all(getattr(m, CONV_TYPES[conv].bn_into).bias is not None
               for m in deployed.modules() if getattr(m, "conv_type", "") == conv)
    session = onnx_session(export_onnx(deployed, images[:2], tmp_path / f"{conv}.onnx"), threads=1)
    with torch.no_grad():
        check = parity(converted(images), onnx_predict(session, images))
    assert check.ok and check.tolerance == PARITY_RTOL, check.describe()
    print(f"{conv}: onnx vs eager {check.describe()}")


@pytest.mark.parametrize("conv", [n for n, c in CONV_TYPES.items() if c.bn_into])
def test_every_bn_into_names_convs_with_the_blocks_output_channels(conv):
    """Any entry's ``bn_into`` path finds convs (several for a block of summed branches) with N outputs."""
    from falcon.folding import convs_at

    ct = CONV_TYPES[conv]
    spec = LayerSpec(M, N, D, 9, 8)
    block = ct.block(spec, **ct.rank_hparams(2))
    convs = convs_at(block, ct.bn_into)
    assert convs and all(c.out_channels == N for c in convs)
    assert len(convs) == (2 if "*" in ct.bn_into else 1)
