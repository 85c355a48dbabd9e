"""The bundled digits data set and the pretrained digits-vgg model."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import REPO
from torch import nn

from falcon import datasets
from falcon.errors import FalconError
from falcon.datasets import DIGITS_MEAN, DIGITS_STD, load_digits
from falcon.models.digits import (
    DIGITS_WEIGHTS,
    DigitsVGG,
    digits_vgg,
    evaluate_accuracy,
    random_shift,
    train_digits_model,
)

NPZ = REPO / "falcon" / "data" / "digits.npz"


@pytest.fixture(scope="module")
def npz():
    with np.load(NPZ) as f:
        return {k: f[k] for k in f.files}


# --- the data file -----------------------------------------------------------

def test_data_path_is_the_package_data_dir():
    assert datasets.DIGITS_FILE == NPZ
    assert NPZ.is_file()
    assert NPZ.stat().st_size < 200_000


def test_npz_shapes_and_dtypes(npz):
    assert set(npz) == {"images", "labels", "train_idx", "test_idx"}
    assert npz["images"].shape == (1797, 8, 8) and npz["images"].dtype == np.uint8
    assert npz["labels"].shape == (1797,) and npz["labels"].dtype == np.uint8
    assert npz["train_idx"].dtype == np.int16 and npz["test_idx"].dtype == np.int16
    assert npz["images"].min() == 0 and npz["images"].max() == 16
    assert set(np.unique(npz["labels"])) == set(range(10))


def test_split_is_a_disjoint_partition(npz):
    train, test = npz["train_idx"], npz["test_idx"]
    assert len(train) == 1347 and len(test) == 450
    assert len(np.unique(train)) == len(train) and len(np.unique(test)) == len(test)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))


def test_split_is_stratified(npz):
    labels = npz["labels"]
    total = np.bincount(labels, minlength=10)
    test = np.bincount(labels[npz["test_idx"]], minlength=10)
    # every class sends round(25 %) of its images to the test split
    assert np.all(np.abs(test - 0.25 * total) <= 1)


def test_split_matches_the_generator(npz):
    spec = importlib.util.spec_from_file_location("train_digits_script",
                                                  REPO / "scripts" / "train_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    train, test = mod.stratified_split(npz["labels"])
    assert np.array_equal(train, npz["train_idx"])
    assert np.array_equal(test, npz["test_idx"])


def test_npz_matches_sklearn_copy(npz):
    sk = pytest.importorskip("sklearn.datasets")
    bunch = sk.load_digits()
    assert np.array_equal(npz["images"], bunch.images.astype(np.uint8))
    assert np.array_equal(npz["labels"], bunch.target.astype(np.uint8))


# --- load_digits -------------------------------------------------------------

@pytest.mark.parametrize("split,n", [("train", 1347), ("test", 450), ("all", 1797)])
def test_load_digits_shapes(split, n):
    ds = load_digits(split)
    x, y = ds.tensors
    assert x.shape == (n, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert len(ds) == n
    assert int(y.min()) == 0 and int(y.max()) == 9


def test_load_digits_default_is_test_split():
    x, y = load_digits().tensors
    assert x.shape[0] == 450


@pytest.mark.parametrize("size", [8, 16, 28])
def test_load_digits_size(size):
    x, _ = load_digits("test", size=size).tensors
    assert x.shape == (450, 1, size, size)


def test_load_digits_normalisation():
    x, _ = load_digits("train").tensors
    # the constants were computed on exactly this tensor (train split, 32x32)
    assert abs(x.mean().item()) < 1e-3
    assert abs(x.std().item() - 1.0) < 1e-3
    # background (raw 0) and full ink (raw 16) map to the expected values
    assert x.min().item() == pytest.approx((0 - DIGITS_MEAN) / DIGITS_STD, abs=1e-5)
    assert x.max().item() == pytest.approx((1 - DIGITS_MEAN) / DIGITS_STD, abs=1e-5)


def test_load_digits_at_native_size_is_the_raw_data(npz):
    x, y = load_digits("test", size=8).tensors
    raw = x.squeeze(1) * DIGITS_STD + DIGITS_MEAN
    expected = npz["images"][npz["test_idx"]].astype(np.float32) / 16
    assert np.allclose(raw.numpy(), expected, atol=1e-6)
    assert np.array_equal(y.numpy(), npz["labels"][npz["test_idx"]])


def test_load_digits_returns_fresh_tensors():
    a = load_digits("test")
    a.tensors[0].fill_(0.0)
    a.tensors[1].fill_(0)
    b = load_digits("test")
    assert b.tensors[0].abs().sum() > 0 and b.tensors[1].sum() > 0


@pytest.mark.parametrize("split", ["val", "", "TEST", None])
def test_load_digits_bad_split(split):
    with pytest.raises(ValueError, match="split") as exc:
        load_digits(split)
    assert isinstance(exc.value, FalconError)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_load_digits_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        load_digits("test", size=size)


# --- the model ---------------------------------------------------------------

def test_architecture():
    m = DigitsVGG()
    convs = [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)]
    assert convs == ["features.0", "features.3", "features.7", "features.10", "features.14"]
    for n in convs:
        conv = m.get_submodule(n)
        assert conv.kernel_size == (3, 3) and conv.bias is None
        idx = int(n.split(".")[1])
        assert isinstance(m.features[idx + 1], nn.BatchNorm2d)
    assert isinstance(m.classifier[0], nn.Linear)
    assert m.classifier[0].in_features == 128 and m.classifier[0].out_features == 10
    assert sum(p.numel() for p in m.parameters()) < 200_000
    assert m(torch.zeros(3, 1, 32, 32)).shape == (3, 10)


def test_weights_file_is_small_and_plain():
    assert DIGITS_WEIGHTS == REPO / "falcon" / "data" / "digits_vgg.pt"
    assert DIGITS_WEIGHTS.stat().st_size < 1_000_000
    state = torch.load(DIGITS_WEIGHTS, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)
    assert set(state) == set(DigitsVGG().state_dict())
    for k, v in state.items():
        assert type(v) is torch.Tensor, k
        if v.is_floating_point():
            assert v.dtype == torch.float32, k


@pytest.fixture(scope="module")
def pretrained():
    return digits_vgg(pretrained=True)


def test_pretrained_accuracy(pretrained):
    assert not pretrained.training
    acc = evaluate_accuracy(pretrained, load_digits("test"))
    assert acc >= 0.97


def test_pretrained_is_deterministic_in_eval_mode(pretrained):
    x, _ = load_digits("test").tensors
    with torch.no_grad():
        assert torch.equal(pretrained(x[:16]), pretrained(x[:16]))


def test_untrained_and_bad_num_classes():
    m = digits_vgg(pretrained=False, num_classes=3)
    assert m.classifier[0].out_features == 3
    with pytest.raises(FalconError):
        digits_vgg(pretrained=True, num_classes=3)


def test_random_shift_keeps_shape_and_content():
    x = torch.randn(5, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    y = random_shift(x, 2, fill=-1.0, generator=g)
    assert y.shape == x.shape
    assert torch.equal(random_shift(x, 0, fill=-1.0), x)


def test_train_one_epoch_on_a_tiny_subset():
    model, history = train_digits_model(epochs=1, seed=0, train_subset=64,
                                        batch_size=32, evaluate=False)
    assert isinstance(model, DigitsVGG) and not model.training
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    assert "test_acc" not in history[0]
    # reproducible from the seed
    model2, history2 = train_digits_model(epochs=1, seed=0, train_subset=64,
                                          batch_size=32, evaluate=False)
    assert history2[0]["loss"] == history[0]["loss"]
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k


def test_script_is_a_thin_cli(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_digits_cli",
                                                  REPO / "scripts" / "train_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = {}

    def fake_train(epochs, seed, verbose):
        calls.update(epochs=epochs, seed=seed)
        return DigitsVGG().eval(), [{"epoch": 1, "loss": 0.0, "train_acc": 0.0,
                                     "test_acc": 0.0}]

    import falcon.models.digits as digits_mod
    monkeypatch.setattr(digits_mod, "train_digits_model", fake_train)
    threads = torch.get_num_threads()
    try:
        out = tmp_path / "w.pt"
        assert mod.main(["--epochs", "1", "--seed", "3", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert calls == {"epochs": 1, "seed": 3}
    state = torch.load(out, weights_only=True)
    DigitsVGG().load_state_dict(state)
