"""The deployable form (BN folded, FALCON fused) and `python -m falcon export`: the ONNX file of a converted
digits-vgg, run in ONNX Runtime, gives the held-out accuracy of eager PyTorch; TorchScript loads back and matches."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from falcon.blocks import FalconConv
from falcon.conversion import accuracy, convert_model
from falcon.errors import FalconError
from falcon.deploy import export_model
from falcon.export import (PARITY_RTOL, PortableFalconConv, deploy_form, export_onnx,
                           export_torchscript, parity)
from falcon.fused import FusedFalconConv
from falcon.sources import load_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RANK = 4  # digits-vgg keeps most of its accuracy at rank 4 without fine-tuning: a meaningful comparison


@pytest.fixture(scope="module")
def digits():
    return load_model("digits-vgg")


@pytest.fixture(scope="module")
def converted(digits):
    return convert_model(digits, "falcon", RANK)


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that a wrong fold shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
    return model.eval()


def test_parity_errors():
    ref = torch.tensor([[1.0, -4.0]])
    p = parity(ref, ref + torch.tensor([[0.0, 0.002]]))
    assert p.max_abs_error == pytest.approx(0.002, rel=1e-4) and p.relative_error == pytest.approx(0.0005, rel=1e-4)
    assert p.ok
    assert not parity(ref, ref * 1.01).ok
    assert not parity(ref, torch.zeros(1, 3)).ok and not parity(ref, ref * float("nan")).ok
    assert parity(ref, ref.numpy()).relative_error == 0 and PARITY_RTOL == 1e-3


def test_deploy_form_fuses_falcon_and_folds_bn(converted, digits):
    x = torch.randn(3, 1, 32, 32)
    deployed, info = deploy_form(converted.model, x)
    assert info.fused_falcon == 5 and info.folded_bn == 5 and info.kept_bn == 0 and info.parity.ok
    assert sum(isinstance(m, FusedFalconConv) for m in deployed.modules()) == 5
    assert not any(isinstance(m, (FalconConv, nn.BatchNorm2d)) for m in deployed.modules())
    assert any(isinstance(m, FalconConv) for m in converted.model.modules())  # the original is left alone
    portable, info = deploy_form(converted.model, x, portable=True)
    assert sum(isinstance(m, PortableFalconConv) for m in portable.modules()) == 5 and info.parity.ok
    original, info = deploy_form(digits.model, x)
    assert info.folded_bn == 5 and info.fused_falcon == 0 and info.parity.relative_error < 1e-5


@pytest.mark.parametrize("conv", ["falcon", "dsconv"])
def test_deploy_form_on_a_resnet_with_real_bn_statistics(conv):
    loaded = load_model("resnet34-cifar")
    _randomize_bn(loaded.model)
    model = convert_model(loaded, conv, 2).model
    x = torch.randn(2, 3, 32, 32)
    deployed, info = deploy_form(model, x)
    assert info.folded_bn == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) and info.kept_bn == 0
    with torch.no_grad():
        assert parity(model(x), deployed(x)).relative_error < 1e-5
    assert deployed(x).shape == (2, 10)


def test_deploy_form_keeps_a_bn_whose_conv_output_is_used_twice():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv's raw output is needed too: folding the BN would change it

    model = _randomize_bn(Odd())
    deployed, info = deploy_form(model, torch.randn(1, 3, 8, 8))
    assert info.folded_bn == 0 and any("BN kept" in n for n in info.notes) and info.parity.ok


def test_onnx_round_trip_gives_the_held_out_accuracy_of_eager(converted, digits, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from falcon.export import onnx_predict, onnx_session

    images, labels = digits.eval_data.tensors[:2]
    deployed, _ = deploy_form(converted.model, images[:2], portable=True)
    path = export_onnx(deployed, images[:2], tmp_path / "digits.onnx")
    session = onnx_session(path, threads=1)
    assert session.get_providers()[0] == "CPUExecutionProvider"
    logits = onnx_predict(session, images, batch_size=128)  # the batch axis is dynamic
    eager = accuracy(converted.model, digits.eval_data)
    assert eager > 0.5  # a meaningful model, not chance
    assert int((logits.argmax(1) == labels).sum()) / labels.numel() == pytest.approx(eager, abs=1e-12)
    with torch.no_grad():
        assert parity(converted.model(images), logits).ok
    assert ort.__version__


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_model_onnx_and_torchscript(tmp_path):
    pytest.importorskip("onnxruntime")
    r = export_model("digits-vgg", tmp_path / "m.onnx", "onnx", conv="falcon", rank=RANK)
    assert r.parity.ok and r.bytes > 0 and r.replaced_layers == 5 and r.runtime.startswith("onnxruntime")
    assert r.accuracy["eager"] == r.accuracy["exported"] and r.accuracy["samples"] > 100
    assert r.deploy.fused_falcon == 5
    r = export_model("digits-vgg", tmp_path / "m.pt", "torchscript", conv="falcon", rank=2)
    assert r.parity.ok and r.accuracy["eager"] == r.accuracy["exported"]
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(2, 1, 32, 32)
    reference = convert_model(load_model("digits-vgg"), "falcon", 2).model
    with torch.no_grad():
        assert parity(reference(x), loaded(x)).ok


def test_torchscript_of_a_deployable_form_matches(converted):
    x = torch.randn(2, 1, 32, 32)
    deployed, _ = deploy_form(converted.model, x, portable=True)
    traced = export_torchscript(deployed, x)
    with torch.no_grad():
        assert parity(converted.model(x), traced(torch.randn(2, 1, 32, 32) * 0 + x)).ok


def test_export_errors(tmp_path):
    with pytest.raises(FalconError, match="format"):
        export_model("digits-vgg", tmp_path / "m.x", "tflite")
    with pytest.raises(FalconError, match="directory"):
        export_model("digits-vgg", tmp_path, "torchscript")


def test_cli_export_prints_the_errors(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "digits.onnx"
    done = subprocess.run([sys.executable, "-m", "falcon", "export", "--model", "digits-vgg", "--conv", "falcon",
                           "--rank", "2", "--format", "onnx", "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "max abs error" in done.stdout and "relative" in done.stdout
    assert "held-out accuracy" in done.stdout


@pytest.mark.parametrize("strategy", ["depthwise", "grouped"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_portable_falcon_computes_the_block_and_its_bn(strategy, rank):
    from falcon.fused import fuse_falcon
    from falcon.spec import LayerSpec

    torch.manual_seed(rank)
    for stride, d, h, w in ((1, 3, 9, 7), (2, 3, 8, 8), (1, 5, 10, 11), (3, 3, 13, 9), (1, 1, 5, 5)):
        spec = LayerSpec(6, 5, d, h, w, stride)
        block = FalconConv(spec, rank).double().eval()
        bn = _randomize_bn(nn.BatchNorm2d(5)).double()
        x = torch.randn(2, 6, h, w, dtype=torch.double)
        portable = PortableFalconConv(fuse_falcon(block, bn), strategy)
        with torch.no_grad():
            assert (portable(x) - bn(block(x))).abs().max() < 1e-12
