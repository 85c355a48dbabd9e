"""Files are checked before they are used (#19 item 2): every hostile file of :mod:`hostile` (made here, never
checked in) fed through the library (``load_model``), the app's upload (``load_for_app``) and the CLI
(``fit --weights``) ends in one FalconError line; a file that would run code never does (the canary); a file
that asks for gigabytes is refused before they are allocated (peak RSS measured in a fresh process). Weights in
another float dtype load, converted, with a note; models given through the API are checked the same way."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import hostile
from falcon.checkpoints import MAX_CLASSES, read_checkpoint
from falcon.cli import main
from falcon.errors import FalconError
from falcon.sources import load_for_app, load_model

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "digits-vgg"  # bundled: no download; its budget is 4 × 0.5 MB + 64 MiB


@pytest.fixture(scope="module")
def digits_state():
    return {k: v.clone() for k, v in load_model(MODEL).model.state_dict().items()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def canary(folder):
    return folder / "CANARY"


@pytest.fixture(scope="module")
def corpus(folder, canary, digits_state):
    """name → (path, what the one-line error must say)."""
    d, st = folder, digits_state
    mk, fac = hostile.make_converted_naming_code(d, canary)
    stored, legacy = d / "stored.pt", d / "legacy.pt"
    torch.save({"x": torch.zeros(20_000_000)}, stored)  # 80 MB: more than a digits-vgg checkpoint can need
    torch.save({"x": torch.zeros(20_000_000)}, legacy, _use_new_zipfile_serialization=False)
    return {
        "empty": (hostile.make_empty(d), "is empty"),
        "text": (hostile.make_text(d), "not a PyTorch checkpoint (it is a text file"),
        "random": (hostile.make_random(d), "not a PyTorch checkpoint"),
        "truncated": (hostile.make_truncated(d, st), "truncated or damaged zip archive"),
        "list": (hostile.make_list(d), "holds a list, not a state_dict"),
        "strings": (hostile.make_strings(d), "a dict without tensors, not a state_dict"),
        "code-pickle": (hostile.make_code_pickle(d, canary), "holds Python objects (posix.system)"),
        "code-zip": (hostile.make_code_zip(d, canary), "holds Python objects (posix.system)"),
        "zip-bomb": (hostile.make_zip_bomb(d), "is a zip bomb: its entry bomb/data/0 expands from 5.1 MiB to 5.0 GiB"),
        "stored-too-big": (stored, "unpacks to more than 66.1 MiB"),
        "legacy-too-big": (legacy, "is 76.3 MiB, more than the 66.1 MiB"),
        "expanded": (hostile.make_expanded(d, st),
                     "classifier.0.weight has shape (16777216, 128) (a stride-0 view of 4 bytes): 8.0 GiB"),
        "nan-inf": (hostile.make_nonfinite(d, st, "features.3.weight"), "features.3.weight has 12 NaN and 3 inf values"),
        "int64": (hostile.make_retyped(d, st, torch.int64), "features.0.weight holds integers (int64)"),
        "bool": (hostile.make_retyped(d, st, torch.bool, "features.3.weight"), "features.3.weight holds booleans"),
        "complex": (hostile.make_retyped(d, st, torch.complex64, "features.0.weight"), "features.0.weight is complex64"),
        "converted-mkdtemp": (mk, None),
        "converted-factory": (fac, None),
    }


def expanded_classes(folder, digits_state, classes: int):
    """A digits-vgg state_dict whose classifier is a stride-0 view with ``classes`` rows (within the byte budget)."""
    state = dict(digits_state, **{"classifier.0.bias": torch.zeros(1).expand(classes)})
    return hostile.make_expanded(folder, state, rows=classes, cols=128, name=f"classes_{classes}.pt")


NAMES = ["empty", "text", "random", "truncated", "list", "strings", "code-pickle", "code-zip", "zip-bomb",
         "stored-too-big", "legacy-too-big", "expanded", "nan-inf", "int64", "bool", "complex", "converted-mkdtemp",
         "converted-factory"]
APP_REFUSES_CONVERTED = "the uploaded file is a converted model"


@pytest.mark.parametrize("name", NAMES)
def test_each_hostile_file_is_one_line_through_the_library_the_app_and_the_cli(name, corpus, canary, capsys):
    path, expected = corpus[name]
    with pytest.raises(FalconError) as e:
        load_model(MODEL, path)
    assert "\n" not in str(e.value) and (expected is None or expected in str(e.value)), str(e.value)

    with pytest.raises(FalconError) as e:
        load_for_app("checkpoint", MODEL, path.read_bytes())
    message = str(e.value)
    app_expects = {"empty": "upload a checkpoint file"}.get(name, APP_REFUSES_CONVERTED if expected is None else expected)
    assert "\n" not in message and app_expects in message, message

    assert main(["fit", "--model", MODEL, "--weights", str(path), "--layer", "features.3"]) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and out.out == "", out
    assert expected is None or expected in lines[0], lines[0]
    assert not canary.exists()


def test_a_classifier_of_more_than_the_class_limit_is_refused_before_it_is_built(folder, digits_state):
    path = expanded_classes(folder, digits_state, MAX_CLASSES + 1)  # 51 MB claimed: within the byte budget
    with pytest.raises(FalconError, match=r"class count of the checkpoint's classifier classifier.0.weight "
                                          r"\(100001, 128\) must be an integer in 1..100000"):
        load_model(MODEL, path)


def test_a_file_for_an_unknown_model_is_bounded_by_the_global_cap(corpus):
    """read_checkpoint without a model (load_converted's path): 4 GiB at most; a caller's bound wins."""
    path, _ = corpus["stored-too-big"]
    assert read_checkpoint(path)["x"].shape == (20_000_000,)
    with pytest.raises(FalconError, match="unpacks to more than 10.0 MiB"):
        read_checkpoint(path, max_bytes=10 << 20)
    with pytest.raises(FalconError, match="zip bomb"):
        read_checkpoint(corpus["zip-bomb"][0])


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from falcon.errors import FalconError
    from falcon.sources import load_for_app, load_model

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)

    load_model("digits-vgg")  # warm: imports, the bundled weights, the held-out set
    load_for_app("digits-vgg", "digits-vgg")
    growth = {}
    for path in sys.argv[1:]:
        data, before = Path(path).read_bytes(), peak()
        for load in (lambda: load_model("digits-vgg", path), lambda: load_for_app("checkpoint", "digits-vgg", data)):
            try:
                load()
                growth[path] = "loaded"
            except FalconError:
                pass
        growth.setdefault(path, peak() - before)
    print(json.dumps(growth))
""")


def test_files_that_ask_for_gigabytes_get_none(corpus, folder, digits_state):
    """Peak RSS in a fresh process grows by less than 100 MiB while each is refused (unchecked, the zip bomb
    takes 5 GiB and the stride-0 classifier 8 GiB)."""
    paths = [corpus[n][0] for n in ("zip-bomb", "expanded")] + [expanded_classes(folder, digits_state, 2 * MAX_CLASSES)]
    paths.append(hostile.make_converted_classes(folder))
    run = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *map(str, paths)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    growth = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(growth) == set(map(str, paths))
    assert all(g != "loaded" and g < 100 for g in growth.values()), growth


# ----------------------------------------------------------------------------------------------
# what is fine still loads
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_load_converted_to_float32_with_a_note(dtype, folder, digits_state, capsys):
    path = hostile.make_retyped(folder, digits_state, dtype)
    loaded = load_model(MODEL, path)
    assert f"float tensors converted" not in loaded.description
    assert f"27 {str(dtype)[6:]} tensors converted to float32, the model's dtype" in loaded.description
    for key, value in loaded.model.state_dict().items():
        expected = digits_state[key].to(dtype).to(digits_state[key].dtype) if value.is_floating_point() else digits_state[key]
        assert value.dtype == digits_state[key].dtype and torch.equal(value, expected), key
    model, _ = load_for_app("checkpoint", MODEL, path.read_bytes())
    assert torch.equal(model.state_dict()["features.3.weight"], loaded.model.state_dict()["features.3.weight"])
    assert main(["fit", "--model", MODEL, "--weights", str(path), "--layer", "features.3"]) == 0
    assert f"{str(dtype)[6:]} tensors converted to float32" in capsys.readouterr().out


def test_legacy_unaligned_and_deflated_checkpoints_still_load(folder, digits_state):
    import io
    import zipfile

    legacy = folder / "ok_legacy.pt"
    torch.save(digits_state, legacy, _use_new_zipfile_serialization=False)
    buf = io.BytesIO()
    torch.save(digits_state, buf)
    deflated = folder / "ok_deflated.pt"  # re-zipped by hand: compressed, unaligned entries
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    for path in (legacy, deflated):
        state = load_model(MODEL, path).model.state_dict()
        assert all(torch.equal(state[k], digits_state[k]) for k in digits_state), path


# ----------------------------------------------------------------------------------------------
# models given through the API
def small_net(lazy: bool = False) -> nn.Module:
    torch.manual_seed(0)
    middle = nn.LazyConv2d(16, 3, padding=1) if lazy else nn.Conv2d(8, 16, 3, padding=1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), middle, nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_api_models_of_other_dtypes_are_sized_and_refused_for_convert_with_the_reason(dtype):
    import falcon

    net = small_net().to(dtype)
    with pytest.raises(FalconError, match=rf"holds {str(dtype)[6:]} weights \(0.weight\); FALCON fits float32 "
                                          r"models: pass model.float\(\)"):
        falcon.convert(net, input_size=(3, 16, 16))
    sized, reference = falcon.size(net, (3, 16, 16)), falcon.size(small_net(), (3, 16, 16))
    assert (sized.params, sized.macs) == (reference.params, reference.macs)
    assert next(net.parameters()).dtype == dtype  # the caller's model is untouched


def test_lazy_modules_are_refused_until_a_forward_pass_has_run():
    import falcon

    for call in (lambda m: falcon.size(m, (3, 16, 16)), lambda m: falcon.convert(m, input_size=(3, 16, 16))):
        with pytest.raises(FalconError, match=r"uninitialized lazy parameters \(2.weight, 2.bias\).*run one "
                                              r"forward pass first"):
            call(small_net(lazy=True))
    net = small_net(lazy=True)
    net(torch.zeros(1, 3, 16, 16))
    assert falcon.size(net, (3, 16, 16)).params == falcon.size(small_net(), (3, 16, 16)).params


def test_nonfinite_weights_are_named_before_a_fit():
    import falcon
    from falcon.ehp import svd_fit

    net = small_net()
    with torch.no_grad():
        net[2].weight.view(-1)[:12] = float("nan")
        net[2].weight.view(-1)[12:15] = float("inf")
    with pytest.raises(FalconError, match=r"2.weight has 12 NaN and 3 inf values; a model's weights must be finite"):
        falcon.convert(net, input_size=(3, 16, 16))
    for value in (float("nan"), float("inf")):  # the fit itself: no LinAlgError, no error of 0
        kernel = torch.randn(4, 4, 3, 3)
        kernel[0, 0, 0, 0] = value
        with pytest.raises(FalconError, match=r"the conv kernel has \d NaN and \d inf values"):
            svd_fit(kernel, 1, "output")


class ReadsItsWeight(nn.Module):
    """A forward that reads a conv's weight itself (weight-scaled output), as some models do."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.conv1(x)) * self.conv2.weight.abs().mean()


def test_convert_names_a_layer_whose_weight_the_models_forward_reads():
    import falcon

    model = ReadsItsWeight()
    with pytest.raises(FalconError, match=r"the model's own forward reads conv2.weight, which a falcon block does "
                                          r"not have .*exclude=\['conv2'\]"):
        falcon.convert(model, input_size=(3, 16, 16), include_stem=True)
    converted = falcon.convert(model, input_size=(3, 16, 16), include_stem=True, exclude=["conv2"], rank=3)
    x = torch.randn(2, 3, 16, 16)
    assert [layer.name for layer in converted.layers] == ["conv1"]
    assert torch.allclose(converted.model(x), model(x), atol=1e-5)  # rank 3 = full rank for 3 input channels
