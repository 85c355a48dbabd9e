"""Tucker-2, CP and spatial low-rank: their fits against independent computations, their blocks against the
original convolution, and EVBMF's ranks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from falcon.convtypes import CONV_TYPES
from falcon.errors import FalconError
from falcon.fits import block_kernel, fit_kernel, fit_module, fitter_of
from falcon.fits import cp as cp_fit
from falcon.fits.evbmf import evbmf_rank
from falcon.fits.tucker import evbmf_ranks
from falcon.spec import LayerSpec

NEW = ("tucker2", "cp", "spatial")
# (M, N, D, stride, padding, H, W): odd kernels, strides, paddings, non-square inputs, a 1×1 conv
LAYERS = [(6, 5, 3, 2, 1, 9, 7), (4, 7, 5, 1, 2, 8, 11), (3, 4, 1, 2, 0, 5, 6), (5, 3, 3, 3, 0, 10, 8)]


def _kernel(n, m, d, seed=0, dtype=torch.float64):
    return torch.randn(n, m, d, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("conv", NEW)
@pytest.mark.parametrize("layer", LAYERS)
def test_full_rank_block_reproduces_the_convolution(conv, layer):
    """At full ranks the fitted block computes the original conv (bias included), float32, 1e-4 relative."""
    m, n, d, s, p, h, w = layer
    torch.manual_seed(1)
    original = nn.Conv2d(m, n, d, stride=s, padding=p, bias=True)
    spec = LayerSpec(m, n, d, h, w, stride=s, padding=p)
    full = CONV_TYPES[conv].full_ranks(n, m, d)
    block, fit = fit_module(original, conv, full, spec=spec)
    assert fit.hparams == full and not fit.clamped
    x = torch.randn(3, m, h, w)
    with torch.no_grad():
        y, y_hat = original(x), block(x)
    assert y_hat.shape == y.shape
    assert ((y - y_hat).norm() / y.norm()).item() < 1e-4
    # a rank above the full rank is clamped to it
    _, clamped = fit_module(original, conv, 10**4, spec=spec)
    assert clamped.hparams == full and clamped.clamped


@pytest.mark.parametrize("conv", NEW)
def test_the_block_computes_the_fitted_kernel(conv):
    """Below full rank the block's output is the conv with K̂ (the fit's kernel_hat), and kernel_of reads it back."""
    m, n, d, s, p, h, w = 6, 8, 3, 2, 1, 9, 7
    original = nn.Conv2d(m, n, d, stride=s, padding=p, bias=False).double()
    block, fit = fit_module(original, conv, 3, spec=LayerSpec(m, n, d, h, w, stride=s, padding=p))
    x = torch.randn(2, m, h, w, dtype=torch.float64)
    with torch.no_grad():
        expected = nn.functional.conv2d(x, fit.kernel_hat, stride=s, padding=p)
        torch.testing.assert_close(block(x), expected)
    torch.testing.assert_close(block_kernel(block), fit.kernel_hat)
    assert 0 < fit.relative_error < 1


def test_spatial_error_is_the_eckart_young_optimum():
    """The spatial fit's error equals the dropped singular energy of W[(m,i),(n,j)] = K[n,m,i,j], built here with
    numpy's own reshape and SVD, at every rank."""
    k = _kernel(7, 5, 3, seed=3)
    w = np.transpose(k.numpy(), (1, 2, 0, 3)).reshape(5 * 3, 7 * 3)  # rows (m, i), columns (n, j)
    s = np.linalg.svd(w, compute_uv=False)
    for rank in range(1, 16):
        optimum = np.sqrt((s[rank:] ** 2).sum() / (s**2).sum())
        fit = fit_kernel(k, "spatial", rank)
        assert fit.relative_error == pytest.approx(optimum, abs=1e-12)
        # and K̂ is a rank-K matrix in that layout
        w_hat = np.transpose(fit.kernel_hat.numpy(), (1, 2, 0, 3)).reshape(15, 21)
        assert np.linalg.matrix_rank(w_hat, tol=1e-9) == min(rank, 15)
    assert fitter_of("spatial").error_by_rank(k) == pytest.approx(
        [np.sqrt((s[r:] ** 2).sum() / (s**2).sum()) for r in range(1, 16)], abs=1e-12)


def _independent_hosvd_error(k: np.ndarray, r_in: int, r_out: int) -> float:
    n, m = k.shape[:2]
    u_out = np.linalg.svd(k.reshape(n, -1), full_matrices=False)[0][:, :r_out]
    u_in = np.linalg.svd(np.moveaxis(k, 1, 0).reshape(m, -1), full_matrices=False)[0][:, :r_in]
    p_out, p_in = u_out @ u_out.T, u_in @ u_in.T
    k_hat = np.einsum("an,bm,nmij->abij", p_out, p_in, k)  # the kernel projected on both subspaces
    return float(np.linalg.norm(k - k_hat) / np.linalg.norm(k))


@pytest.mark.parametrize("ranks", [(2, 3), (4, 4), (1, 6), (5, 2)])
def test_tucker_hooi_is_never_worse_than_hosvd(ranks):
    r_in, r_out = ranks
    for seed in range(3):
        k = _kernel(8, 7, 3, seed=seed)
        hosvd = fit_kernel(k, "tucker2", {"rank_in": r_in, "rank_out": r_out}, "hosvd")
        hooi = fit_kernel(k, "tucker2", {"rank_in": r_in, "rank_out": r_out}, "hooi")
        assert hosvd.relative_error == pytest.approx(_independent_hosvd_error(k.numpy(), r_in, r_out), abs=1e-12)
        assert hooi.relative_error <= hosvd.relative_error + 1e-12
        assert fit_kernel(k, "tucker2", {"rank_in": r_in, "rank_out": r_out}).method == "hooi"  # the default
    # on a random kernel HOOI does improve (it is not just the HOSVD returned)
    k = _kernel(8, 7, 3, seed=9)
    assert fit_kernel(k, "tucker2", 3, "hooi").relative_error < fit_kernel(k, "tucker2", 3, "hosvd").relative_error - 1e-4


def test_evbmf_finds_a_planted_rank_and_is_at_least_one():
    rng = np.random.default_rng(0)
    for rows, cols, rank in [(60, 200, 5), (200, 60, 3), (30, 30, 4), (64, 576, 10)]:
        signal = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols))
        noise = 0.3 * rng.standard_normal((rows, cols))
        assert evbmf_rank(signal + noise) == rank
        assert evbmf_rank(noise) == 1  # nothing above the noise: clamped to 1
    assert evbmf_rank(np.zeros((5, 7))) == 1 and evbmf_rank(np.ones((1, 9))) == 1


def test_tucker_ranks_by_evbmf_on_the_two_unfoldings():
    """A kernel with Tucker ranks (R₃, R₄) = (3, 5) plus noise: EVBMF on the unfoldings finds them, and a fit
    with no ranks uses them."""
    g = torch.Generator().manual_seed(0)
    core = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)
    u_out = torch.randn(40, 5, generator=g, dtype=torch.float64)
    u_in = torch.randn(32, 3, generator=g, dtype=torch.float64)
    k = torch.einsum("nb,baij,ma->nmij", u_out, core, u_in) + 0.05 * torch.randn(40, 32, 3, 3, generator=g, dtype=torch.float64)
    assert evbmf_ranks(k) == {"rank_in": 3, "rank_out": 5}
    fit = fit_kernel(k, "tucker2", None)
    assert fit.hparams == {"rank_in": 3, "rank_out": 5} and fit.relative_error < 0.05
    with pytest.raises(FalconError, match="give a rank"):
        fit_kernel(k, "spatial", None)


def test_cp_als_is_seeded_and_recovers_a_low_rank_kernel():
    g = torch.Generator().manual_seed(0)
    a, b, v, h = (torch.randn(s, 4, generator=g, dtype=torch.float64) for s in (9, 7, 3, 3))
    k = torch.einsum("nr,mr,ir,jr->nmij", a, b, v, h)
    fit = fit_kernel(k, "cp", 4)
    assert fit.method == "als" and fit.relative_error < 1e-6
    noisy = k + 0.1 * torch.randn(k.shape, generator=g, dtype=torch.float64)
    one, two = fit_kernel(noisy, "cp", 6, seed=5), fit_kernel(noisy, "cp", 6, seed=5)
    torch.testing.assert_close(one.kernel_hat, two.kernel_hat, rtol=0, atol=0)  # same seed, same fit
    # each component's scale is split evenly: the four factors of a component have one norm
    norms = torch.stack([fit.factors["last"].norm(dim=0), fit.factors["first"].norm(dim=1),
                         fit.factors["vertical"].norm(dim=1), fit.factors["horizontal"].norm(dim=1)])
    torch.testing.assert_close(norms, norms[:1].expand_as(norms))


def test_cp_refuses_degenerate_fits_and_impractical_als(monkeypatch):
    k = _kernel(6, 5, 3)
    # two huge components that cancel: what a degenerate ALS returns
    big = 1e4
    first = torch.tensor([[1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0]], dtype=torch.float64) * big
    line = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64)
    last = torch.zeros(6, 2, dtype=torch.float64)
    last[0] = torch.tensor([1.0, -1.0 + 1e-6])
    degenerate = {"first": first, "vertical": line, "horizontal": line, "last": last * big}
    assert cp_fit.cancellation(degenerate, fitter_of("cp").compose(degenerate)) > cp_fit.MAX_CANCELLATION
    monkeypatch.setattr(cp_fit, "als_factors", lambda *a, **kw: degenerate)
    with pytest.raises(FalconError, match="degenerate"):
        fit_kernel(k, "cp", 2)
    nan = {key: torch.full_like(v, float("nan")) for key, v in degenerate.items()}
    monkeypatch.setattr(cp_fit, "als_factors", lambda *a, **kw: nan)
    with pytest.raises(FalconError, match="NaN"):
        fit_kernel(k, "cp", 2)
    monkeypatch.undo()
    monkeypatch.setattr(cp_fit, "MAX_ALS_WORK", 100)
    with pytest.raises(FalconError, match="multiply-adds per iteration"):
        fit_kernel(k, "cp", 2)


@pytest.mark.parametrize("conv", NEW)
def test_methods_random_and_errors(conv):
    k = _kernel(6, 5, 3, dtype=torch.float32)
    rand = fit_kernel(k, conv, 2, "random", seed=3)
    assert rand.method == "random" and rand.relative_error > 0.5
    torch.testing.assert_close(rand.kernel_hat, fit_kernel(k, conv, 2, "random", seed=3).kernel_hat)
    assert fit_kernel(k, conv, 2).kernel_hat.dtype == torch.float32
    with pytest.raises(FalconError, match="method must be one of"):
        fit_kernel(k, conv, 2, "gd")
    with pytest.raises(FalconError, match="positive integer"):
        fit_kernel(k, conv, 0)
    bad = k.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(FalconError, match="NaN"):
        fit_kernel(bad, conv, 2)
    with pytest.raises(FalconError, match="cannot be fitted"):
        fit_kernel(k, "mobilev2", 2)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from falcon.cli import main

    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    state = resnet18().state_dict()
    path = tmp_path_factory.mktemp("r18") / "r18.pt"
    torch.save(state, path)
    return path, state["layer3.0.conv1.weight"]


@pytest.mark.parametrize("conv, flags, ranks", [
    ("tucker2", ("--rank", "8", "--rank-out", "12"), {"rank_in": 8, "rank_out": 12}),
    ("cp", ("--rank", "6"), {"rank": 6}),
    ("spatial", ("--rank", "8"), {"rank": 8}),
])
def test_cli_fit_prints_the_error_and_time_of_each_new_type(capsys, resnet18_file, conv, flags, ranks):
    """`python -m falcon fit --model resnet18 --layer layer3.0.conv1 --conv TYPE --rank …`: the error it prints is
    the library's fit of that kernel, with the method and its time."""
    import re

    path, kernel = resnet18_file
    code, out, err = _cli(capsys, "fit", "--model", "resnet18", "--weights", str(path), "--layer", "layer3.0.conv1",
                          "--conv", conv, *flags)
    assert code == 0, err
    method = fitter_of(conv).methods[0]
    again = fit_kernel(kernel, conv, ranks)
    printed = re.search(rf"relative error +([0-9.]+)  \({method}, ([0-9.]+) s\)", out)
    assert printed and float(printed.group(1)) == pytest.approx(again.relative_error, abs=2e-6)
    assert float(printed.group(2)) > 0
    assert ", ".join(f"{k}={v}" for k, v in ranks.items()) in out


@pytest.fixture(scope="module")
def digits():
    from falcon.sources import load_model

    return load_model("digits-vgg")


@pytest.mark.parametrize("conv", NEW)
def test_converting_digits_at_full_rank_keeps_the_network(digits, conv, tmp_path):
    """convert_model with each new type at full rank: the network's logits within 1e-4; saved and loaded
    (the sites keep their ranked hyper-parameters) it computes the same."""
    from falcon.conversion import convert_model, load_converted, save_converted

    converted = convert_model(digits, conv, 10**4)
    x = digits.eval_data.tensors[0][:64]
    with torch.no_grad():
        y, y_hat = digits.model.eval()(x), converted.model(x)
    assert ((y - y_hat).norm() / y.norm()).item() < 1e-4
    for layer in converted.layers:
        block = converted.model.get_submodule(layer.name)
        assert block.conv_type == conv and layer.hparams == block.hparams and layer.clamped
        assert layer.relative_error < 1e-5
    loaded = load_converted(save_converted(converted, tmp_path / f"{conv}.pt"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), y_hat)


def test_converting_with_tucker_ranks_given_or_by_evbmf(digits):
    from falcon.conversion import convert_model

    given = convert_model(digits, "tucker2", {"rank_in": 4, "rank_out": 6}, "hosvd")
    assert all(layer.hparams == {"rank_in": min(4, layer.spec.M), "rank_out": min(6, layer.spec.N)}
               for layer in given.layers)
    auto = convert_model(digits, "tucker2", None)
    for layer in auto.layers:  # EVBMF's ranks per layer, as the fit of that kernel alone gives them
        kernel = digits.model.get_submodule(layer.name).weight.detach()
        assert layer.hparams == {k: min(v, layer.spec.M if k == "rank_in" else layer.spec.N)
                                 for k, v in evbmf_ranks(kernel).items()}
    with pytest.raises(FalconError, match="ranks by energy"):
        convert_model(digits, "cp", None, energy=0.9)
    with pytest.raises(FalconError, match="init must be one of"):
        convert_model(digits, "spatial", 2, "gd")


def test_an_experiment_run_with_tucker2_keeps_both_ranks(tmp_path):
    """The pipeline converts with the type's ranked hyper-parameters (both of Tucker-2's) and records the run."""
    from falcon.experiments.pipeline import ExperimentConfig, run_experiment

    cfg = ExperimentConfig(conv="tucker2", hparams={"rank_in": 3, "rank_out": 5}, limit_train=64, limit_test=32,
                           epochs=1, batch_size=32, latency=False)
    assert cfg.resolved().rank == 5 and cfg.resolved().init == "svd"
    record = run_experiment(cfg, store=False, db=tmp_path / "runs.sqlite")
    assert record["status"] == "completed" and record["conv"] == "tucker2" and record["rank"] == 5
    layers = record["layers"] if "layers" in record else record["metrics"]["layers"]
    assert all(layer["hparams"] == {"rank_in": min(3, int(layer["shape"].split("→")[0])), "rank_out": 5}
               for layer in layers)
