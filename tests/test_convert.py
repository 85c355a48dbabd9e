"""Converting pretrained models: the BN kept, full rank exact, saving and rebuilding, the convert CLI."""
from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
import torch
from conftest import REPO, run_cli
from torch import nn
from torch.utils.data import TensorDataset

from falcon.blocks import DSConv, FalconConv
from falcon.conversion import (FORMAT, accuracy, convert_model, load_converted, model_full_rank, parse_ranks,
                            convert_ranks, report, save_converted)
from falcon.counting import count_model
from falcon.errors import FalconError
from falcon.models import ModelEntry
from falcon.models.cifar import VGGCifar
from falcon.checkpoints import LoadedModel
from falcon.sources import load_model


@pytest.fixture(scope="module")
def digits():
    return load_model("digits-vgg")


@pytest.fixture(scope="module")
def baseline(digits):
    return accuracy(digits.model, digits.eval_data)


def logits(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("conv", ["falcon", "dsconv"])
def test_full_rank_conversion_gives_exactly_the_baseline_accuracy(digits, baseline, conv):
    converted = convert_model(digits, conv, 9)
    assert accuracy(converted.model, digits.eval_data) == baseline
    x = digits.eval_data.tensors[0][:64]
    torch.testing.assert_close(logits(converted.model, x), logits(digits.model, x), rtol=1e-4, atol=1e-4)
    assert all(layer.relative_error < 1e-5 for layer in converted.layers)


@pytest.mark.parametrize("conv,rank", [("falcon", 8), ("dsconv", 8)])
def test_high_rank_keeps_the_output_close(digits, conv, rank):
    """Measured on all 450 held-out digits: logits within 10% (falcon) and 6% (dsconv), accuracy 98.9% and 99.3%."""
    converted = convert_model(digits, conv, rank)
    x, y = (t[:150] for t in digits.eval_data.tensors)
    out, out_hat = logits(digits.model, x), logits(converted.model, x)
    assert (out_hat - out).norm() / out.norm() < 0.15
    assert (out_hat.argmax(1) == y).float().mean() >= (out.argmax(1) == y).float().mean() - 0.02


def test_the_pretrained_bn_is_kept_and_the_original_untouched(digits):
    before = {k: v.clone() for k, v in digits.model.state_dict().items()}
    converted = convert_model(digits, "falcon", 2)
    for name, module in digits.model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            kept = converted.model.get_submodule(name)
            assert isinstance(kept, nn.BatchNorm2d)
            for attr in ("weight", "bias", "running_mean", "running_var"):
                assert torch.equal(getattr(kept, attr), getattr(module, attr))
    for k, v in digits.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert isinstance(digits.model.features[0], nn.Conv2d)
    assert isinstance(converted.model.features[0], FalconConv)


def test_replacement_policy_and_clamping(digits):
    falcon = convert_model(digits, "falcon", 3)
    assert [layer.name for layer in falcon.layers] == ["features.0", "features.3", "features.7", "features.10", "features.14"]
    stem = falcon.layers[0]
    assert stem.full_rank == 1 and stem.rank == 1 and stem.clamped  # 1 input channel: min(M, D²) = 1
    assert all(layer.rank == 3 and not layer.clamped for layer in falcon.layers[1:])
    dsconv = convert_model(digits, "dsconv", 3)
    assert [layer.name for layer in dsconv.layers][0] == "features.3"  # dsconv keeps the stem standard
    assert isinstance(dsconv.model.features[3], DSConv)
    assert model_full_rank(digits, "falcon") == model_full_rank(digits, "dsconv") == 9


def test_error_and_accuracy_improve_with_rank(digits):
    table = convert_ranks(digits, "falcon", [1, 3, 5, 9])
    errors = [r["mean_relative_error"] for r in table["rows"]]
    params = [r["params"] for r in table["rows"]]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5
    assert params == sorted(params)
    assert "accuracy" not in table["rows"][0]
    assert table["standard_params"] == sum(p.numel() for p in digits.model.parameters())
    few = TensorDataset(*(t[:120] for t in digits.eval_data.tensors))
    small = dataclasses.replace(digits, eval_data=few)
    table = convert_ranks(small, "dsconv", [1, 9], evaluate=True)
    accs = [r["accuracy"] for r in table["rows"]]
    assert accs[0] < accs[1] == table["baseline_accuracy"] == accuracy(digits.model, few)


@pytest.mark.parametrize("init", ["gd", "random"])
def test_other_inits(digits, init):
    svd = convert_model(digits, "dsconv", 2)
    other = convert_model(digits, "dsconv", 2, init, steps=40) if init == "gd" else convert_model(digits, "dsconv", 2, init)
    for a, b in zip(svd.layers, other.layers):
        assert a.relative_error <= b.relative_error + 1e-6
    if init == "random":
        assert min(layer.relative_error for layer in other.layers) > 0.9


def test_counts_are_those_of_the_converted_model(digits):
    converted = convert_model(digits, "falcon", 2)
    r = report(converted)
    real = count_model(converted.model, (1, 32, 32), "clean")
    assert (r["params"], r["macs"]) == (real.params, real.macs)
    assert r["params"] == sum(p.numel() for p in converted.model.parameters())
    assert r["standard_params"] == 135_674 and r["compression_rate"] > 3
    with pytest.raises(FalconError, match="held-out"):
        report(converted, evaluate=True, eval_data=None)


def test_conv_bias_moves_into_the_block():
    """vgg19-cifar's convs have biases; a tiny model of the same family converts exactly at full rank."""
    entry = ModelEntry("tiny-vgg", lambda n: VGGCifar(n, cfg=(8, "M", 16, "M")), 4, default_classes=10,
                       family="vgg", stem_replaced_by=frozenset({"falcon"}))
    torch.manual_seed(0)
    model = entry.build().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    loaded = LoadedModel(model, entry, None, "tiny", "random", 10)
    x = torch.randn(5, 3, 4, 4)
    for conv in ("falcon", "dsconv"):
        converted = convert_model(loaded, conv, 9)
        assert all(layer.bias for layer in converted.layers)
        torch.testing.assert_close(logits(converted.model, x), logits(model, x), rtol=1e-4, atol=1e-5)


def test_save_and_load_are_weights_only_safe(digits, baseline, tmp_path):
    converted = convert_model(digits, "dsconv", 4)
    path = save_converted(converted, tmp_path / "sub" / "digits-dsconv4.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["model"] == "digits-vgg" and raw["conv"] == "dsconv" and raw["rank"] == 4

    def plain(v):
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return isinstance(v, (str, int, float, bool, torch.Tensor))

    assert plain(raw)
    loaded = load_converted(path)
    assert loaded.converted["rank"] == 4 and loaded.eval_data is not None
    x = digits.eval_data.tensors[0][:32]
    torch.testing.assert_close(logits(loaded.model, x), logits(converted.model, x))
    # the one interface takes it too
    again = load_model("digits-vgg", path)
    torch.testing.assert_close(logits(again.model, x), logits(converted.model, x))
    with pytest.raises(FalconError, match="converted digits-vgg, not resnet18"):
        load_model("resnet18", path)
    with pytest.raises(FalconError, match="already converted"):
        convert_model(again, "falcon", 1)
    with pytest.raises(FalconError, match="not a converted model"):
        torch.save(digits.model.state_dict(), tmp_path / "plain.pt")
        load_converted(tmp_path / "plain.pt")
    with pytest.raises(FalconError, match="directory"):
        save_converted(converted, tmp_path)


def test_bad_arguments(digits):
    with pytest.raises(FalconError, match="cannot be fitted"):
        convert_model(digits, "mobilev2", 1)
    with pytest.raises(FalconError, match="unknown conv type"):
        convert_model(digits, "winograd", 1)
    with pytest.raises(FalconError, match="init"):
        convert_model(digits, "falcon", 1, "kaiming")
    with pytest.raises(FalconError, match="rank"):
        convert_model(digits, "falcon", 0)


def test_parse_ranks():
    assert parse_ranks("all", 9) == list(range(1, 10))
    assert parse_ranks("full", 9) == [9]
    assert parse_ranks("1-3,7", 9) == [1, 2, 3, 7]
    assert parse_ranks("4,2", 9) == [2, 4]
    for bad in ("", "x", "0", "3-a"):
        with pytest.raises(FalconError, match="rank"):
            parse_ranks(bad, 9)


# --- CLI ------------------------------------------------------------------------------------------
def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=timeout, cwd=REPO)


def main_inprocess(capsys, *args: str) -> tuple[int, str, str]:
    from falcon.cli import main

    try:
        code = main(list(args))
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_convert_evaluate_and_save(tmp_path):
    out = tmp_path / "falcon2.pt"
    r = cli("convert", "--model", "digits-vgg", "--conv", "falcon", "--rank", "2", "--evaluate",
            "--output", str(out), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["baseline_accuracy"] >= 0.97 and 0.1 < d["accuracy"] < d["baseline_accuracy"]
    assert d["eval_images"] == 450 and d["rank"] == 2 and d["compression_rate"] > 3
    assert d["params"] > 0 and d["macs"] > 0 and d["convention"] == "clean"
    assert d["standard_params"] == 135_674 and d["replaced_layers"] == 5
    assert d["output"] == str(out) and out.is_file()


def test_cli_layers_of_a_saved_converted_model(capsys, tmp_path):
    path = save_converted(convert_model(load_model("digits-vgg"), "falcon", 2), tmp_path / "c.pt")
    code, out, err = main_inprocess(capsys, "layers", "--model", "digits-vgg", "--weights", str(path), "--json")
    assert code == 0, err
    names = [row["name"] for row in json.loads(out)["layers"]]
    assert "features.3.branches.0.pointwise" in names and "features.3.branches.1.depthwise" in names


def test_cli_convert_rank_table(capsys):
    code, out, err = main_inprocess(capsys, "convert", "--model", "digits-vgg", "--conv", "dsconv", "--rank", "1,3", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert [row["rank"] for row in d["rows"]] == [1, 3]
    assert d["rows"][0]["params"] < d["rows"][1]["params"]
    code, out, err = main_inprocess(capsys, "convert", "--model", "digits-vgg", "--conv", "dsconv", "--rank", "1-2")
    assert code == 0 and out.splitlines()[1].split()[:2] == ["rank", "params"]


@pytest.mark.parametrize("args,words", [
    (["--model", "resnet18", "--conv", "falcon", "--evaluate"], "no held-out set"),
    (["--model", "digits-vgg", "--conv", "mobilev2"], "invalid choice"),
    (["--model", "digits-vgg", "--conv", "falcon", "--rank", "zero"], "rank must be"),
    (["--model", "digits-vgg", "--conv", "falcon", "--rank", "1-3", "--output", "x.pt"], "single --rank"),
    (["--model", "digits-vgg", "--conv", "falcon", "--steps", "10"], "--init gd only"),
    (["--model", "digits-vgg", "--conv", "falcon", "--weights", "/nonexistent.pt"], "does not exist"),
])
def test_cli_convert_errors_are_one_line(capsys, args, words):
    code, out, err = main_inprocess(capsys, "convert", *args)
    assert code == 2 and out == ""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert words in err


def test_cli_convert_error_in_a_real_process():
    r = cli("convert", "--model", "digits-vgg", "--conv", "falcon", "--rank", "0")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1  # argparse's one line, no torch warning before it
    assert "argument --rank: rank must be an integer in 1..65536" in r.stderr and r.stderr.strip().endswith("got '0'")
