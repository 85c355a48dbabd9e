"""Bring your own model (issue #12): a model defined outside the project, sized and converted through the
Python API (``falcon.size``, ``falcon.convert``) and through ``--model file.py:factory``; timm models; budgets
(``--target-crr``); energy-chosen ranks; include/exclude patterns; one-line errors for every bad model."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

import falcon
from conftest import REPO, run_cli
from falcon.convtypes import CONV_TYPES, RANKED
from falcon.errors import FalconError
from falcon.sizing import size_for_target, size_model

OWN = REPO / "tests" / "own" / "tinynet.py"
SPEC = f"{OWN}:tiny_net"
CHW = (3, 16, 16)


def _tiny():
    spec = importlib.util.spec_from_file_location("tinynet_for_tests", OWN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_net()


def _brute_force_counts(model: nn.Module, chw) -> tuple[int, int]:
    """Params from the module itself; conv and linear MACs (with bias) by hand from the shapes a real pass sees."""
    macs = 0

    def conv_hook(m, inputs, out):
        nonlocal macs
        macs += out[0].numel() * (m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                                  + (m.bias is not None))

    hs = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, *chw))
    for h in hs:
        h.remove()
    head = model.head  # the functional linear head: in·out MACs, no bias
    macs += head.numel()
    return sum(p.numel() for p in model.parameters()), macs


def test_size_a_model_of_your_own_matches_a_brute_force_count():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = falcon.size(model, input_size=CHW, conv="standard")
    params, macs = _brute_force_counts(model, CHW)
    assert (r.params, r.macs) == (params, macs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left untouched
    assert not any(p.is_meta for p in model.parameters())


def test_size_with_every_conv_type_replaces_the_kernel_convs_but_not_the_stem():
    model = _tiny()
    for conv in CONV_TYPES:
        if conv == "standard":
            continue
        r = falcon.size(model, input_size=CHW, conv=conv)
        assert r.replaced == ["body.0", "body.2"], conv  # the default policy: 3×3 groups=1, the stem stays
        assert r.macs < r.standard.macs, conv
        rows = r.frame().set_index("name")
        assert rows.loc["body.0", "kind"] == conv and rows.loc["stem", "kind"] == "standard"
    assert falcon.size(model, input_size=CHW, conv="falcon", include="stem").replaced == ["stem"]
    assert falcon.size(model, input_size=CHW, conv="falcon", exclude=["body.2"]).replaced == ["body.0"]
    assert falcon.size(model, input_size=CHW, conv="falcon", include_stem=True).replaced == ["stem", "body.0", "body.2"]
    csv = r.csv().decode().splitlines()
    assert csv[0].startswith("name,kind,shape") and csv[-1].startswith("TOTAL standard")


def test_convert_at_full_rank_is_the_same_function_and_rank_1_is_smaller():
    model = _tiny()
    x = torch.randn(5, *CHW)
    with torch.no_grad():
        expected = model(x)
    for conv in ("falcon", "dsconv"):
        full = falcon.convert(model, conv, rank=9, example_input=x)
        assert isinstance(full.model, nn.Module) and full.model is not model
        assert [layer.name for layer in full.layers] == ["body.0", "body.2"]
        with torch.no_grad():
            assert torch.allclose(full.model(x), expected, atol=1e-4), conv
        one = falcon.convert(model, conv, rank=1, example_input=x)
        assert all(layer.rank == 1 and layer.relative_error > 0 for layer in one.layers)
        with torch.no_grad():
            assert one.model(x).shape == expected.shape
        ours = sum(p.numel() for p in one.model.parameters())
        assert ours < sum(p.numel() for p in model.parameters())
        report = one.as_dict()
        assert {"layer", "rank", "full_rank", "relative_error"} <= set(report[0])
    # the converted module trains with a plain loop
    opt = torch.optim.SGD(one.model.parameters(), lr=0.01)
    one.model.train()
    loss = one.model(x).pow(2).mean()
    loss.backward()
    opt.step()


def test_energy_chooses_each_layers_rank():
    model = _tiny()
    low = falcon.convert(model, "falcon", energy=0.5, input_size=CHW)
    high = falcon.convert(model, "falcon", energy=1.0, input_size=CHW)
    assert all(a.rank <= b.rank for a, b in zip(low.layers, high.layers))
    assert all(b.rank == b.full_rank and b.relative_error < 1e-5 for b in high.layers)
    from falcon.ehp import rank_for_energy

    kernel = model.get_submodule("body.0").weight.detach()
    assert low.layers[0].rank == int(rank_for_energy(kernel, "output", 0.5).max())
    with pytest.raises(FalconError, match="energy"):
        falcon.convert(model, "falcon", energy=1.5, input_size=CHW)


def test_cli_sizes_and_converts_a_file_factory(tmp_path):
    r = run_cli("size", "--model", SPEC, "--input-size", "16", "--conv", "falcon", "--rank", "1", "--convention",
                "clean", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    api = falcon.size(_tiny(), input_size=CHW, conv="falcon", rank=1)
    assert (d["params"], d["macs"], d["standard_macs"]) == (api.params, api.macs, api.standard.macs)
    out = tmp_path / "tiny.pt"
    r = run_cli("convert", "--model", SPEC, "--conv", "falcon", "--rank", "9", "--output", str(out), "--json",
                cwd=REPO)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["replaced_layers"] == 2 and d["max_relative_error"] < 1e-5
    from falcon.sources import load_model

    loaded = load_model(SPEC, out)  # the saved file names the factory: it rebuilds
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), _tiny()(x), atol=1e-4)
    r = run_cli("convert", "--model", "tests.own.tinynet:tiny_net", "--conv", "dsconv", "--rank", "1", cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "2 convs replaced" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "tests/own/missing.py:tiny_net"], "does not exist"),
    (["--model", "tests/own/tinynet.py:broken"], "raised ValueError: this factory is broken on purpose"),
    (["--model", "tests/own/tinynet.py:not_a_model"], "returned a str, not a torch.nn.Module"),
    (["--model", "tests/own/tinynet.py:nothing"], "has no 'nothing'"),
    (["--model", "no_such_package.models:net"], "cannot import no_such_package.models"),
    (["--model", "timm:no_such_net_at_all"], "timm"),
    (["--model", "tests/own/tinynet.py:tiny_net", "--include", "layer9.*"], "matches no conv"),
    (["--model", "vit_b_16", "--input-size", "256"], "vit_b_16 does not run at 256×256"),
    (["--model", "resnet50", "--target-crr", "2", "--conv", "mobilev2"], "has none"),
])
def test_bad_models_are_one_line_and_exit_2(args, message):
    r = run_cli("size", "--conv", "falcon", *args, cwd=REPO) if "--conv" not in args else run_cli("size", *args, cwd=REPO)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_budget_resnet18_falcon_and_resnet50_unreachable():
    b = size_for_target("resnet18", "falcon", crr=4)
    ranks = [r["rank"] for r in b.as_dict()["neighbours"]]
    assert b.rank == 1 and ranks == [1, 2]
    assert b.result.computation_reduction_rate >= 4 > b.neighbours[-1].computation_reduction_rate
    # cross-check against a direct sizing
    assert size_model("resnet18", "falcon", rank=2).computation_reduction_rate == b.neighbours[-1].computation_reduction_rate
    v = size_for_target("vgg19-cifar", "dsconv", crr=3)
    assert v.rank is not None and v.result.computation_reduction_rate >= 3
    above = size_model("vgg19-cifar", "dsconv", rank=v.rank + 1).computation_reduction_rate
    assert above < 3
    none = size_for_target("resnet50", "falcon", crr=4)
    assert none.rank is None and "no rank" in none.summary()
    assert none.ceiling < 4  # 1×1 convs hold most of resnet50's MACs: even free 3×3 convs do not reach 4×
    r = run_cli("size", "--model", "resnet50", "--conv", "falcon", "--target-crr", "4")
    assert r.returncode == 1 and "no rank of FALCON" in r.stdout
    with pytest.raises(FalconError, match="has none"):
        size_for_target("resnet18", "shuffle", crr=2)
    assert set(RANKED) >= {"falcon", "dsconv"}


def test_torchvision_models_default_to_their_eval_crop():
    r = size_model("efficientnet_b7", "standard", convention="clean")
    assert r.input_size == 600 and "eval crop" in r.input_size_from
    assert size_model("resnet18", "standard").input_size == 224


TIMM_MODELS = ["resnet18", "resnet50d", "mobilenetv3_small_100", "efficientnet_b0", "convnext_atto", "regnetx_002",
               "densenet121", "vgg11", "ghostnet_100", "rexnet_100", "mixnet_s", "dla34", "cspresnet50",
               "dpn68", "hrnet_w18_small", "res2net50_14w_8s", "selecsls42b", "tf_mobilenetv3_small_075",
               "vit_tiny_patch16_224", "deit_tiny_patch16_224", "resnest14d", "repvgg_a0"]


def _replaceable_convs(model: nn.Module) -> list[str]:
    """Independently of falcon.surgery: groups=1 square k>1 convs, dilation 1, symmetric stride and padding."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1
            and m.kernel_size[0] == m.kernel_size[1] > 1 and m.dilation == (1, 1) and m.stride[0] == m.stride[1]
            and isinstance(m.padding, tuple) and m.padding[0] == m.padding[1] and m.padding_mode == "zeros"]


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is an optional extra (pip install -e .[timm])")
@pytest.mark.parametrize("arch", TIMM_MODELS)
def test_timm_models_size_with_every_conv_type(arch):
    name = f"timm:{arch}"
    standard = size_model(name, "standard", convention="clean")
    assert standard.params > 0 and standard.macs > 0
    import timm

    with torch.device("meta"):
        candidates = _replaceable_convs(timm.create_model(arch))
    for conv in CONV_TYPES:
        if conv == "standard":
            continue
        r = size_model(name, conv, convention="clean")
        kept = [n for n in candidates if n not in r.replaced]
        assert set(r.replaced) <= set(candidates), conv
        # what is not replaced is the stem (the first conv the image meets) or named in a note, with the reason
        assert len(kept) <= 1 or any("kept standard" in note for note in r.notes), (conv, kept)
        if r.replaced:
            assert r.macs != standard.macs, conv
