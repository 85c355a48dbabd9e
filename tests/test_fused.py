"""The fused inference FALCON computes exactly what the k-branch module (and its BN) computes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from falcon.convtypes import compare, get_conv_type
from falcon.errors import FalconError
from falcon.fused import FusedFalconConv, fuse_falcon
from falcon.spec import LayerSpec

LAYOUTS = (torch.contiguous_format, torch.channels_last)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny convs, one thread


def _falcon(spec: LayerSpec, rank: int, dtype=torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return get_conv_type("falcon").build(spec, rank=rank).to(dtype).eval()


def _bn(n: int, dtype=torch.float64, seed: int = 1) -> nn.BatchNorm2d:
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(n).to(dtype)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return bn.eval()


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("with_bn", [False, True])
@pytest.mark.parametrize("strategy", ["auto", "grouped", "depthwise"])
def test_fused_equals_branches_float64(rank, stride, with_bn, strategy):
    spec = LayerSpec(5, 6, 3, 9, stride=stride)
    block = _falcon(spec, rank)
    bn = _bn(spec.N) if with_bn else None
    fused = fuse_falcon(block, bn, strategy=strategy)
    x = torch.randn(2, spec.M, spec.height, spec.width, dtype=torch.float64)
    with torch.no_grad():
        ref = block(x) if bn is None else bn(block(x))
        for layout in LAYOUTS:
            out = fused.to(memory_format=layout)(x.contiguous(memory_format=layout))
            assert out.shape == ref.shape == (2, spec.N, *spec.output_size)
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel,padding,size,stride", [(5, 2, 7, 1), (3, 0, 8, 2), (1, 0, 4, 1), (5, 1, 9, 3)])
@pytest.mark.parametrize("rank", [2, 3])
def test_fused_other_kernels_padding_and_shapes(kernel, padding, size, stride, rank):
    spec = LayerSpec(4, 3, kernel, size, width=size + 2, stride=stride, padding=padding)
    block = _falcon(spec, rank)
    x = torch.randn(3, spec.M, spec.height, spec.width, dtype=torch.float64)
    with torch.no_grad():
        ref = block(x)
        for strategy in ("grouped", "depthwise"):
            for layout in LAYOUTS:
                fused = fuse_falcon(block, strategy=strategy).to(memory_format=layout)
                torch.testing.assert_close(fused(x.contiguous(memory_format=layout)), ref, rtol=0, atol=1e-12)


def test_branch_biases_are_kept_exact_at_the_borders():
    """A pointwise bias passes through a zero-padded depthwise conv differently at the borders, so it
    must stay a bias of the fused 1×1 conv, not be folded into the output bias."""
    spec = LayerSpec(3, 4, 3, 6, stride=2)
    block = _falcon(spec, 3)
    torch.manual_seed(3)
    for branch in block.branches[:2]:  # the third branch keeps no bias
        branch.pointwise.bias = nn.Parameter(torch.randn(spec.N, dtype=torch.float64))
        branch.depthwise.bias = nn.Parameter(torch.randn(spec.N, dtype=torch.float64))
    bn = _bn(spec.N)
    fused = fuse_falcon(block, bn)
    assert fused.pointwise.bias is not None and fused.grouped.bias is not None
    x = torch.randn(2, spec.M, spec.height, spec.width, dtype=torch.float64)
    with torch.no_grad():
        for strategy in ("grouped", "depthwise"):
            fused.strategy = strategy
            torch.testing.assert_close(fused(x), bn(block(x)), rtol=0, atol=1e-12)


def test_structure_two_convs_and_counts():
    spec = LayerSpec(16, 8, 3, 10)
    rank = 3
    fused = fuse_falcon(_falcon(spec, rank, torch.float32))
    assert isinstance(fused, FusedFalconConv) and not fused.training
    assert fused.conv_type == "falcon-fused" and fused.hparams == {"rank": rank}
    assert fused.conv_type == get_conv_type("falcon").fused_name  # the block's name is the registry's
    pw, g = fused.pointwise, fused.grouped
    assert (pw.in_channels, pw.out_channels, pw.kernel_size, pw.groups) == (16, rank * 8, (1, 1), 1)
    assert (g.in_channels, g.out_channels, g.kernel_size, g.groups) == (rank * 8, 8, (3, 3), 8)
    assert pw.bias is None and g.bias is None
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2
    weights = sum(c.weight.numel() for c in convs)
    assert weights == compare(spec, "falcon", rank=rank).cost.params  # k(MN + D²N): same weights, two convs


def test_channel_order_is_n_major():
    """Channel n·k + r of the fused 1×1 conv is branch r's pointwise row n (group n reads k channels)."""
    spec = LayerSpec(4, 5, 3, 6)
    block = _falcon(spec, 2)
    fused = fuse_falcon(block)
    k = 2
    for r, branch in enumerate(block.branches):
        for n in range(spec.N):
            assert torch.equal(fused.pointwise.weight[n * k + r], branch.pointwise.weight[n])
            assert torch.equal(fused.grouped.weight[n, r], branch.depthwise.weight[n, 0])


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_inference_fast_path_matches(rank, layout):
    spec = LayerSpec(32, 24, 3, 12, stride=2)
    block = _falcon(spec, rank, torch.float32)
    bn = _bn(spec.N, torch.float32)
    fused = fuse_falcon(block, bn).to(memory_format=layout)
    x = torch.randn(2, spec.M, spec.height, spec.width).contiguous(memory_format=layout)
    with torch.inference_mode():
        out = fused(x)
        ref = bn(block(x))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert out.is_contiguous(memory_format=layout)


def test_gradients_flow_when_grad_is_enabled():
    spec = LayerSpec(6, 4, 3, 5)
    fused = fuse_falcon(_falcon(spec, 2, torch.float32)).train()
    x = torch.randn(1, 6, 5, 5, requires_grad=True)
    fused(x).square().sum().backward()
    assert x.grad is not None and fused.pointwise.weight.grad is not None and fused.grouped.weight.grad is not None


def test_fuse_keeps_device_and_dtype_and_does_not_touch_the_block():
    spec = LayerSpec(4, 4, 3, 5)
    block = _falcon(spec, 2, torch.float64)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    fused = fuse_falcon(block, _bn(4))
    assert fused.pointwise.weight.dtype == torch.float64
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())


def test_errors():
    spec = LayerSpec(4, 6, 3, 5)
    with pytest.raises(FalconError, match="FalconConv"):
        fuse_falcon(get_conv_type("standard").build(spec))
    with pytest.raises(FalconError, match="FalconConv"):
        fuse_falcon(nn.Conv2d(4, 6, 3))
    block = _falcon(spec, 1)
    with pytest.raises(FalconError, match="features"):
        fuse_falcon(block, _bn(5))
    with pytest.raises(FalconError, match="running statistics"):
        fuse_falcon(block, nn.BatchNorm2d(6, track_running_stats=False).double())
    with pytest.raises(FalconError, match="BatchNorm2d"):
        fuse_falcon(block, nn.LayerNorm(6))
    with pytest.raises(FalconError, match="strategy"):
        FusedFalconConv(spec, 1, strategy="fast")
    block.branches[0].depthwise = nn.Conv2d(6, 6, 3, padding=1, groups=6, stride=2, bias=False).double()
    with pytest.raises(FalconError, match="depthwise"):
        fuse_falcon(block)


def test_derived_weights_follow_parameter_updates():
    """Inference caches the re-ordered weights; an in-place update or a new state dict must show."""
    spec = LayerSpec(6, 5, 3, 7)
    block = _falcon(spec, 3)
    fused = fuse_falcon(block).to(memory_format=torch.channels_last)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        first = fused(x)
        torch.testing.assert_close(fused(x), first, rtol=0, atol=0)
        fused.pointwise.weight.mul_(2)
        torch.testing.assert_close(fused(x), 2 * first, rtol=0, atol=1e-12)
        other = _falcon(spec, 3, seed=7)
        fused.load_state_dict(fuse_falcon(other).state_dict())
        torch.testing.assert_close(fused(x), other(x), rtol=0, atol=1e-12)
        fused.grouped.weight.zero_()
        assert fused(x).abs().max() == 0


@pytest.mark.parametrize("rank", [1, 3])
def test_built_and_fused_under_inference_mode(rank):
    """Parameters made under torch.inference_mode have no version counter: the block still runs (its
    derived weights are not cached then), inside and outside inference mode, and matches the branches."""
    spec = LayerSpec(16, 8, 3, 10)
    block = _falcon(spec, rank, torch.float32)
    bn = _bn(spec.N, torch.float32)
    x = torch.randn(2, spec.M, 10, 10).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fused = fuse_falcon(block, bn)
        assert fused.pointwise.weight.is_inference()
        out = fused(x)
        ref = bn(block(x))
        again = fused(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(out, again)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref, rtol=1e-4, atol=1e-4)
