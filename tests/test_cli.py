"""The CLI contract of `python -m falcon layer|size|models` (issue #2), run as a user runs it."""
from __future__ import annotations

import json
import subprocess

import pytest
from conftest import run_cli

from falcon.convtypes import compare
from falcon.sizing import size_model
from falcon.spec import LayerSpec


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=120)


def test_layer_json_contract():
    out = cli("layer", "--conv", "falcon", "--in-channels", "256", "--out-channels", "256", "--kernel-size", "3",
              "--input-size", "32", "--rank", "2", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    c = compare(LayerSpec(256, 256, 3, 32), "falcon", rank=2)
    assert d["params"] == c.cost.params == 2 * (256 * 256 + 9 * 256)
    assert d["macs"] == c.cost.macs
    assert (d["standard_params"], d["standard_macs"]) == (c.standard.params, c.standard.macs)
    assert d["compression_rate"] == pytest.approx(c.compression_rate)
    assert d["computation_reduction_rate"] == pytest.approx(c.computation_reduction_rate)
    assert d["output_size"] == [32, 32]


def test_layer_defaults_and_rectangular_input():
    out = cli("layer", "--conv", "shuffle", "--in-channels", "64", "--out-channels", "128", "--kernel-size", "3",
              "--input-size", "16", "--input-width", "10", "--stride", "2", "--json")
    d = json.loads(out.stdout)
    assert d["output_size"] == [8, 5] and d["hparams"] == {"groups": 2, "width_mult": 1.0}
    assert d["spec"]["padding"] == 1


def test_layer_table_output():
    out = cli("layer", "--conv", "mobilev2", "-M", "32", "-N", "64", "-D", "3", "-H", "16")
    assert out.returncode == 0 and "compression rate" in out.stdout and "pointwise M→T" in out.stdout


def test_size_json_contract():
    out = cli("size", "--model", "vgg19-cifar", "--num-classes", "10", "--conv", "falcon", "--convention", "paper", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    r = size_model("vgg19-cifar", "falcon", num_classes=10)
    assert (d["params"], d["macs"]) == (r.params, r.macs)
    assert d["input_size"] == 32
    assert sum(row["macs"] for row in d["layers"]) == d["macs"]
    assert all({"name", "kind", "shape", "params", "macs"} <= set(row) for row in d["layers"])


def test_size_default_input_is_224_for_imagenet_models():
    d = json.loads(cli("size", "--model", "resnet18", "--num-classes", "1000", "--conv", "standard", "--json").stdout)
    assert d["input_size"] == 224 and d["params"] == 11_689_512


def test_size_table_output():
    out = cli("size", "--model", "resnet34-cifar", "--conv", "dsconv", "--convention", "clean")
    assert out.returncode == 0 and "CRR" in out.stdout and "layer1.0.conv1" in out.stdout


def test_models_lists_paper_and_torchvision_models():
    names = json.loads(cli("models", "--json").stdout)
    assert {"vgg19-cifar", "resnet34-cifar", "vgg16_bn", "resnet18", "digits-vgg", "mobilenet_v3_large"} <= set(names)


@pytest.mark.parametrize("args", [
    ("layer", "--conv", "falcon", "-M", "0", "-N", "8", "-D", "3", "-H", "8"),
    ("layer", "--conv", "falcon", "-M", "8", "-N", "8", "-D", "9", "-H", "4", "--padding", "0"),
    ("layer", "--conv", "falcon", "-M", "8", "-N", "8", "-D", "3", "-H", "8", "--rank", "0"),
    ("layer", "--conv", "shuffle", "-M", "6", "-N", "8", "-D", "3", "-H", "8", "--groups", "4"),
    ("layer", "--conv", "mobilev2", "-M", "4", "-N", "8", "-D", "3", "-H", "8", "--expansion", "0.1"),
    ("layer", "--conv", "nope", "-M", "4", "-N", "8", "-D", "3", "-H", "8"),
    ("layer", "--conv", "falcon", "-M", "four", "-N", "8", "-D", "3", "-H", "8"),
    ("size", "--model", "not-a-model", "--conv", "falcon"),
    ("size", "--model", "vgg19-cifar", "--conv", "falcon", "--input-size", "2"),
    ("size", "--model", "resnet18", "--conv", "falcon", "--num-classes", "-3"),
])
def test_invalid_input_one_line_on_stderr(args):
    out = cli(*args)
    assert out.returncode != 0
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("args,words", [
    (("export", "--model", "digits-vgg", "--conv", "tucker2", "--rank", "4", "-o", "{tmp}/never.onnx"),
     "--rank does not apply to tucker2 (its flags are --rank-in, --rank-out)"),
    (("layer", "--conv", "standard", "--rank", "2", "-M", "8", "-N", "8", "-D", "3", "-H", "8"),
     "--rank does not apply to standard (it has no hyper-parameters)"),
    (("layer", "--conv", "falcon", "--expansion", "2", "-M", "8", "-N", "8", "-D", "3", "-H", "8"),
     "--expansion does not apply to falcon"),
    (("bench", "-M", "8", "-N", "8", "-D", "3", "-H", "8", "-B", "1", "--conv", "falcon", "--rank-in", "2"),
     "--rank-in does not apply to falcon"),
    (("size", "--model", "digits-vgg", "--conv", "falcon", "--rank", "2", "--target-crr", "3"), "not both"),
])
def test_a_flag_the_type_does_not_have_is_refused_not_ignored(args, words, tmp_path):
    out = run_cli(*(a.format(tmp=tmp_path) for a in args))
    assert out.returncode == 2 and out.stdout == "" and not list(tmp_path.iterdir())
    assert out.stderr.strip().splitlines() == [f"error: {out.stderr.strip()[7:]}"] and words in out.stderr


def test_a_flag_of_one_of_several_benched_types_is_used():
    out = cli("bench", "-M", "8", "-N", "8", "-D", "3", "-H", "8", "-B", "1", "--conv", "falcon,tucker2",
              "--rank-in", "2", "--rounds", "1", "--min-run-time", "0.01", "--json")
    assert out.returncode == 0, out.stderr
    assert any(r.get("hparams", {}).get("rank_in") == 2 for r in json.loads(out.stdout)["results"])
