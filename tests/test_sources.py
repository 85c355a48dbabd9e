"""Model sources: the bundled digits-vgg, torchvision pretrained weights (offline), checkpoint files."""
from __future__ import annotations

import io
import pickle
import subprocess
import sys
import threading
import time
import urllib.error

import pytest
import torch
import torchvision
from conftest import REPO
from torch import nn

from falcon import sources
from falcon.errors import FalconError
from falcon.sources import load_for_app, load_model, read_checkpoint


class Custom:  # a pickled custom object is not a checkpoint
    def __init__(self):
        self.weights = [1, 2, 3]


@pytest.fixture()
def resnet18_file(tmp_path, resnet18_state):
    path = tmp_path / "resnet18.pt"
    torch.save(resnet18_state, path)
    return path


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


# --- the bundled model ---------------------------------------------------------------------------
def test_digits_vgg_loads_bundled_with_its_held_out_set():
    loaded = load_model("digits-vgg")
    assert loaded.weights == "bundled" and loaded.num_classes == 10
    assert loaded.input_size == (1, 32, 32)
    assert len(loaded.eval_data) == 450
    assert not loaded.model.training
    assert "bundled" in loaded.description
    assert load_model("digits-vgg", "pretrained").weights == "bundled"


def test_random_init_and_unknown_models():
    loaded = load_model("resnet18")
    assert loaded.weights == "random" and loaded.eval_data is None and loaded.input_size == (3, 224, 224)
    assert load_model("digits-vgg", "random").weights == "random"
    with pytest.raises(FalconError, match="unknown model"):
        load_model("resnet-eighteen")
    with pytest.raises(FalconError, match="no pretrained"):
        load_model("vgg19-cifar", "pretrained")
    with pytest.raises(FalconError, match="classes"):
        load_model("resnet18", num_classes=0)


# --- checkpoint files ------------------------------------------------------------------------------
def test_checkpoint_state_dict_loads(resnet18_file, resnet18_state):
    loaded = load_model("resnet18", resnet18_file)
    assert loaded.weights == str(resnet18_file)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, resnet18_state[k]), k


def test_checkpoint_wrappers_and_data_parallel_prefix(tmp_path, resnet18_state):
    path = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}}, path)
    model = load_model("resnet18", path).model
    assert torch.equal(model.conv1.weight, resnet18_state["conv1.weight"])


def test_checkpoint_classifier_size_sets_the_classes(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    path = tmp_path / "cifar10-resnet18.pt"
    torch.save(state, path)
    loaded = load_model("resnet18", path)
    assert loaded.num_classes == 10 and loaded.model.fc.out_features == 10
    # an explicit number of classes that contradicts the file is a mismatch
    with pytest.raises(FalconError, match="fc.weight"):
        load_model("resnet18", path, num_classes=100)


def test_old_checkpoints_without_num_batches_tracked_load(tmp_path, resnet18_state):
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in resnet18_state.items() if not k.endswith("num_batches_tracked")}, path)
    load_model("resnet18", path)


def test_mismatched_keys_are_named(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    for k in ("layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer2.0.conv1.weight"):
        state.pop(k)
    state["extra.weight"] = torch.zeros(3)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "mismatch.pt"
    torch.save(state, path)
    with pytest.raises(FalconError) as e:
        load_model("resnet18", path)
    msg = one_line(e)
    assert "does not fit resnet18" in msg
    assert "missing layer1.0.conv1.weight" in msg and "(4 in all)" in msg
    assert "unexpected extra.weight" in msg
    assert "conv1.weight (64, 3, 3, 3) vs (64, 3, 7, 7)" in msg


def test_a_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "vgg.pt"
    torch.save(load_model("digits-vgg").model.state_dict(), path)
    with pytest.raises(FalconError, match="does not fit resnet18: missing .*unexpected features"):
        load_model("resnet18", path)


@pytest.mark.parametrize("kind", ["custom", "custom-torch", "module", "text", "empty", "npz", "tensor", "list", "dict"])
def test_files_that_are_not_checkpoints_are_refused(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "custom":
        path.write_bytes(pickle.dumps(Custom()))
    elif kind == "custom-torch":
        torch.save(Custom(), path)
    elif kind == "module":
        torch.save(nn.Linear(2, 2), path)
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "npz":
        import numpy as np

        np.savez(path.with_suffix(".npz"), a=np.zeros(3))
        path = path.with_suffix(".npz")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "list":
        torch.save([torch.zeros(3)], path)
    elif kind == "dict":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    t0 = time.perf_counter()
    with pytest.raises(FalconError) as e:
        load_model("resnet18", path)
    msg = one_line(e)
    assert time.perf_counter() - t0 < 10
    expected = {
        "custom": "holds Python objects", "custom-torch": "holds Python objects", "module": "holds Python objects",
        "text": "not a PyTorch checkpoint", "empty": "is empty", "npz": "not a PyTorch checkpoint",
        "tensor": "holds a single tensor, not a state_dict", "list": "holds a list, not a state_dict",
        "dict": "a dict without tensors, not a state_dict",
    }[kind]
    assert expected in msg
    if kind.startswith("custom"):
        assert "Custom" in msg and "state_dict" in msg


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FalconError, match="does not exist"):
        load_model("resnet18", tmp_path / "nope.pt")
    with pytest.raises(FalconError, match="not a file"):
        load_model("resnet18", tmp_path)


def test_read_checkpoint_takes_bytes(resnet18_state):
    buf = io.BytesIO()
    torch.save(resnet18_state, buf)
    assert set(read_checkpoint(buf.getvalue())) == set(resnet18_state)
    with pytest.raises(FalconError, match="the uploaded file"):
        read_checkpoint(b"garbage")


def test_load_for_app(resnet18_state):
    buf = io.BytesIO()
    torch.save(resnet18_state, buf)
    model, size = load_for_app("checkpoint", "resnet18", buf.getvalue())
    assert size == (3, 224, 224) and torch.equal(model.conv1.weight, resnet18_state["conv1.weight"])
    with pytest.raises(FalconError, match="upload"):
        load_for_app("checkpoint", "resnet18", None)
    with pytest.raises(FalconError, match="source"):
        load_for_app("web", "resnet18")


# --- torchvision pretrained weights, offline ---------------------------------------------------------
@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_cache_file_is_named_after_torchvisions_url(torch_home):
    path = sources.torchvision_cache_file("resnet18")
    assert path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


def test_offline_download_fails_fast_naming_the_cache_file(torch_home, monkeypatch):
    calls = []

    def offline(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    t0 = time.perf_counter()
    with pytest.raises(FalconError) as e:
        load_model("resnet18", "pretrained")
    assert time.perf_counter() - t0 < 5
    msg = one_line(e)
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert "resnet18-f37072fd.pth" in msg and str(torch_home / "hub" / "checkpoints") in msg
    assert "$TORCH_HOME/hub/checkpoints" in msg and "Name or service not known" in msg


def test_a_hanging_download_is_cut_by_the_watchdog(tmp_path, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: release.wait(30))
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        sources.download("https://example.invalid/x-0123abcd.pth", tmp_path / "x-0123abcd.pth", timeout=0.5)
    release.set()
    assert time.perf_counter() - t0 < 5


def test_an_unreachable_address_fails_within_the_timeout(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(Exception):
        sources.download("http://10.255.255.1/resnet18-f37072fd.pth", tmp_path / "resnet18-f37072fd.pth", timeout=1.0)
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "resnet18-f37072fd.pth").exists()


def test_cached_pretrained_weights_load_without_network(torch_home, monkeypatch, resnet18_state):
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(resnet18_state, cache / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("no download expected"))
    loaded = load_model("resnet18", "pretrained")
    assert loaded.weights == "pretrained" and "IMAGENET1K_V1" in loaded.description
    assert torch.equal(loaded.model.conv1.weight, resnet18_state["conv1.weight"])


def test_a_corrupt_cache_file_is_reported(torch_home):
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_text("truncated")
    with pytest.raises(FalconError, match="could not be read.*delete the file"):
        load_model("resnet18", "pretrained")


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(pickle.dumps(Custom()))
    r = subprocess.run([sys.executable, "-m", "falcon", "layers", "--model", "resnet18", "--weights", str(bad)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert "Python objects" in lines[0]
