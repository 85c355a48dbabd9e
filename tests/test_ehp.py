"""The EHP math: Theorems 1 and 2, the SVD optimum, the gradient-descent fit, installing fits in blocks."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, run_cli
from torch import nn

from falcon.convtypes import get_conv_type
from falcon.ehp import (
    GD_DEFAULTS,
    GDStep,
    attach_bias,
    block_kernel,
    clamp_rank,
    ehp_kernel,
    error_by_rank,
    fit_kernel,
    fit_module,
    full_rank,
    gd_fit,
    load_fit_into,
    rank_for_energy,
    run_gd,
    singular_energy,
    singular_values,
    svd_fit,
)
from falcon.errors import FalconError
from falcon.spec import LayerSpec

AXIS = {"falcon": "output", "dsconv": "input"}


def randomize(block: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return block


# --- Theorems 1 and 2 ---------------------------------------------------------------------------
THEOREM_CASES = list(itertools.product(["falcon", "dsconv"], [1, 2], [0, 1], [3, 5], [1, 3]))


@pytest.mark.parametrize("conv,stride,padding,kernel,rank", THEOREM_CASES)
def test_block_equals_standard_conv_with_ehp_kernel(conv, stride, padding, kernel, rank):
    """Running the two sub-convolutions = one standard conv with the EHP kernel (float64)."""
    spec = LayerSpec(5, 7, kernel, 11, 9, stride=stride, padding=padding)  # odd sizes, non-square input
    block = randomize(get_conv_type(conv).build(spec, rank=rank).double(), seed=stride * 10 + padding)
    x = torch.randn(2, spec.M, spec.height, spec.width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = F.conv2d(x, block_kernel(block), stride=stride, padding=padding)
    out = block(x)
    assert out.shape == expected.shape == (2, spec.N, *spec.output_size)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axis", ["output", "input"])
def test_ehp_kernel_is_the_elementwise_formula(axis):
    g = torch.Generator().manual_seed(0)
    k, n, m, d = 2, 4, 3, 3
    p = torch.randn(k, n, m, generator=g, dtype=torch.float64)
    c = n if axis == "output" else m
    dw = torch.randn(k, c, d, d, generator=g, dtype=torch.float64)
    kernel = ehp_kernel(p, dw, axis)
    for nn_, mm, i, j in itertools.product(range(n), range(m), range(d), range(d)):
        ch = nn_ if axis == "output" else mm
        want = sum(p[r, nn_, mm] * dw[r, ch, i, j] for r in range(k))
        assert kernel[nn_, mm, i, j].item() == pytest.approx(want.item(), abs=1e-12)
    # rank 1 also takes unstacked factors
    torch.testing.assert_close(ehp_kernel(p[0], dw[0], axis), ehp_kernel(p[:1], dw[:1], axis))


def test_ehp_kernel_rejects_bad_shapes():
    with pytest.raises(FalconError, match="channels"):
        ehp_kernel(torch.zeros(1, 4, 3), torch.zeros(1, 5, 3, 3), "output")
    with pytest.raises(FalconError, match="same k"):
        ehp_kernel(torch.zeros(2, 4, 3), torch.zeros(1, 4, 3, 3), "output")
    with pytest.raises(FalconError, match="axis"):
        ehp_kernel(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3, 3), "channels")


# --- the SVD optimum ---------------------------------------------------------------------------
def kernel(n=12, m=10, d=3, seed=0, dtype=torch.float64):
    return torch.randn(n, m, d, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("axis", ["output", "input"])
def test_full_rank_is_exact(axis):
    for shape in [(12, 10, 3, 3), (5, 4, 3, 3), (3, 20, 3, 3), (7, 6, 5, 5)]:
        k = kernel(*shape[:3])
        top = full_rank(k.shape, axis)
        assert top == min(shape[1] if axis == "output" else shape[0], shape[2] ** 2)
        fit = svd_fit(k, top, axis)
        assert fit.relative_error < 1e-12
        torch.testing.assert_close(fit.kernel_hat, k, rtol=0, atol=1e-12)
        assert fit.rank_used == top and not fit.clamped


@pytest.mark.parametrize("axis", ["output", "input"])
def test_rank_above_full_is_clamped_and_reported(axis):
    k = kernel(4, 3, 3)  # falcon full rank min(3, 9) = 3; dsconv min(4, 9) = 4
    top = full_rank(k.shape, axis)
    fit = svd_fit(k, 50, axis)
    assert fit.clamped and fit.rank_used == top and fit.rank_requested == 50
    assert fit.P.shape[0] == fit.D.shape[0] == top
    assert clamp_rank(k.shape, top, axis) == (top, False)
    with pytest.raises(FalconError, match="rank"):
        svd_fit(k, 0, axis)


@pytest.mark.parametrize("axis", ["output", "input"])
def test_error_falls_as_rank_grows(axis):
    k = kernel(16, 12, 3)
    errors = [svd_fit(k, r, axis).relative_error for r in range(1, full_rank(k.shape, axis) + 1)]
    assert all(a >= b - 1e-12 for a, b in zip(errors, errors[1:]))
    assert errors[0] > 0.3 and errors[-1] < 1e-12
    # Eckart–Young: the error is the dropped singular-value energy
    assert np.allclose(errors, error_by_rank(k, axis), atol=1e-10)


@pytest.mark.parametrize("axis", ["output", "input"])
def test_svd_matches_an_independent_numpy_computation(axis):
    k = kernel(20, 16, 3, seed=3, dtype=torch.float32)
    a = k.numpy().astype(np.float64).reshape(20, 16, 9)
    mats = a if axis == "output" else a.transpose(1, 0, 2)
    for rank in (1, 2, 5):
        approx = np.empty_like(mats)
        for c in range(mats.shape[0]):
            u, s, vt = np.linalg.svd(mats[c], full_matrices=False)
            approx[c] = (u[:, :rank] * s[:rank]) @ vt[:rank]
        ref = np.linalg.norm(mats - approx) / np.linalg.norm(mats)
        assert abs(svd_fit(k, rank, axis).relative_error - ref) < 1e-4


def test_svd_factors_are_balanced():
    fit = svd_fit(kernel(8, 6, 3), 2, "output")
    # ‖P_r[n, :]‖ = ‖D_r[n]‖ = √σ_r
    pn = fit.P.norm(dim=2)
    dn = fit.D.flatten(2).norm(dim=2)
    torch.testing.assert_close(pn, dn)


@pytest.mark.parametrize("axis", ["output", "input"])
def test_singular_energy_and_rank_for_energy(axis):
    k = kernel(6, 5, 3)
    s = singular_values(k, axis)
    assert s.shape == (6 if axis == "output" else 5, full_rank(k.shape, axis))
    cum = singular_energy(k, axis)
    assert torch.all(cum[:, 1:] >= cum[:, :-1] - 1e-12)
    torch.testing.assert_close(cum[:, -1], torch.ones_like(cum[:, -1]))
    need = rank_for_energy(k, axis, 0.9)
    for c in range(cum.shape[0]):
        r = int(need[c])
        assert cum[c, r - 1] >= 0.9 - 1e-12
        assert r == 1 or cum[c, r - 2] < 0.9
    assert torch.all(rank_for_energy(k, axis, 1.0) <= full_rank(k.shape, axis))
    with pytest.raises(FalconError):
        rank_for_energy(k, axis, 0.0)


def test_a_channel_of_rank_one_needs_rank_one():
    k = torch.zeros(2, 4, 3, 3, dtype=torch.float64)
    k[0] = torch.randn(4, dtype=torch.float64)[:, None, None] * torch.randn(3, 3, dtype=torch.float64)  # rank 1
    assert rank_for_energy(k, "output", 0.999).tolist() == [1, 1]  # the zero channel needs nothing more
    assert svd_fit(k, 1, "output").relative_error < 1e-12


def test_zero_kernel():
    fit = svd_fit(torch.zeros(3, 3, 3, 3), 1, "output")
    assert fit.relative_error == 0.0
    assert error_by_rank(torch.zeros(3, 3, 3, 3), "output") == [0.0] * 3


def test_bad_kernels_are_refused():
    with pytest.raises(FalconError, match="4-d"):
        svd_fit(torch.zeros(3, 3, 3), 1, "output")
    with pytest.raises(FalconError, match="square"):
        svd_fit(torch.zeros(3, 3, 1, 3), 1, "output")


# --- gradient descent ----------------------------------------------------------------------------
@pytest.mark.parametrize("axis,rank", [("output", 1), ("input", 2), ("output", 4)])
def test_svd_is_never_worse_than_gd(axis, rank):
    k = kernel(24, 16, 3, dtype=torch.float32)
    best = svd_fit(k, rank, axis).relative_error
    for steps in (0, 50, 300):
        gd = run_gd(k, rank, axis, steps=steps).fit
        assert best <= gd.relative_error + 1e-6


def test_gd_generator_yields_steps_and_returns_the_fit():
    k = kernel(8, 6, 3, dtype=torch.float32)
    gen = gd_fit(k, 2, "output", steps=5)
    records = []
    with pytest.raises(StopIteration) as stop:
        while True:
            records.append(next(gen))
    assert [r.step for r in records] == list(range(6))
    assert all(isinstance(r, GDStep) and r.loss >= 0 and r.relative_error >= 0 for r in records)
    fit = stop.value.value
    assert fit.method == "gd" and fit.rank_used == 2
    assert records[-1].relative_error == pytest.approx(fit.relative_error)
    # the loss of the default (relative) objective is the squared relative error
    assert records[0].loss == pytest.approx(records[0].relative_error ** 2, rel=1e-4)


def test_gd_can_be_stopped_and_snapshotted():
    k = kernel(8, 6, 3, dtype=torch.float32)
    seen = []
    res = run_gd(k, 1, "output", steps=1000, callback=lambda r: (seen.append(r.step), r.step >= 9)[1])
    assert seen[-1] == 9 and len(res.history) == 10
    assert res.fit.relative_error == pytest.approx(res.history[-1].relative_error, rel=1e-4)
    # closing the generator mid-way is clean
    gen = gd_fit(k, 1, "output", steps=100)
    first = next(gen)
    gen.close()
    assert first.snapshot().P.shape == (1, 8, 6)


def test_gd_is_seeded():
    k = kernel(8, 6, 3, dtype=torch.float32)
    a = run_gd(k, 2, "input", steps=20, seed=3)
    b = run_gd(k, 2, "input", steps=20, seed=3)
    c = run_gd(k, 2, "input", steps=20, seed=4)
    assert [r.loss for r in a.history] == [r.loss for r in b.history]
    assert torch.equal(a.fit.P, b.fit.P)
    assert a.history[0].loss != c.history[0].loss


@pytest.mark.parametrize("shape,axis,rank", [((256, 256, 3, 3), "output", 1), ((128, 128, 3, 3), "input", 3),
                                             pytest.param((512, 512, 3, 3), "output", 2, marks=pytest.mark.slow)])
def test_gd_defaults_reach_the_optimum_within_two_percent(shape, axis, rank):
    """ResNet-18-sized layers, Gaussian kernels (flat spectra: the hard case for gradient descent)."""
    k = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.02
    best = svd_fit(k, rank, axis).relative_error
    gd = run_gd(k, rank, axis).fit
    assert gd.relative_error <= 1.02 * best


def test_gd_at_full_rank_gets_close_to_exact():
    k = kernel(16, 16, 3, dtype=torch.float32)
    gd = run_gd(k, 9, "output").fit
    assert gd.relative_error < 5e-3


def test_the_papers_sgd_barely_moves():
    """lr 0.01 on the mean squared error: gradients ~1/numel, the fit stays near its random start."""
    assert GD_DEFAULTS["sgd"] == {"lr": 1e-2, "loss": "mse", "scale": None}
    k = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.05
    res = run_gd(k, 1, "output", steps=300, optimizer="sgd")
    start, end = res.history[0].relative_error, res.fit.relative_error
    assert end > 1.3 and abs(start - end) < 0.01
    assert end > 1.3 * svd_fit(k, 1, "output").relative_error


def test_gd_rejects_bad_options():
    k = kernel(4, 4, 3, dtype=torch.float32)
    for kwargs, word in [({"optimizer": "rmsprop"}, "optimizer"), ({"lr": -1.0}, "learning rate"),
                         ({"loss": "l1"}, "loss"), ({"steps": -3}, "steps")]:
        with pytest.raises(FalconError, match=word):
            next(gd_fit(k, 1, "output", **kwargs))


def test_gd_divergence_is_a_clear_error():
    k = kernel(4, 4, 3, dtype=torch.float32)
    with pytest.raises(FalconError, match="diverged"):
        run_gd(k, 1, "output", steps=200, optimizer="sgd", lr=10.0, loss="mse", scale=10.0)  # lr at limits' top
    with pytest.raises(FalconError, match=r"learning rate must be a finite number in \(0, 10\]"):
        run_gd(k, 1, "output", steps=200, optimizer="sgd", lr=1e6, loss="relative")


# --- installing fits in blocks -------------------------------------------------------------------
@pytest.mark.parametrize("conv", ["falcon", "dsconv"])
@pytest.mark.parametrize("stride", [1, 2])
def test_load_fit_into_makes_the_block_compute_the_fit(conv, stride):
    spec = LayerSpec(6, 8, 3, 9, stride=stride)
    k = kernel(8, 6, 3)
    fit = svd_fit(k, 2, AXIS[conv])
    block = get_conv_type(conv).build(spec, rank=3).double()  # one spare branch: zeroed
    load_fit_into(block, fit)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(block(x), F.conv2d(x, fit.kernel_hat, stride=stride, padding=1), rtol=1e-10, atol=1e-10)
    with pytest.raises(FalconError, match="branches"):
        load_fit_into(get_conv_type(conv).build(spec, rank=1).double(), fit)
    other = "dsconv" if conv == "falcon" else "falcon"
    with pytest.raises(FalconError, match="axis|channels"):
        load_fit_into(get_conv_type(other).build(spec, rank=2).double(), fit)


def test_load_fit_refuses_dsconv_with_inner_bn():
    spec = LayerSpec(6, 8, 3, 9)
    fit = svd_fit(kernel(8, 6, 3), 1, "input")
    with pytest.raises(FalconError, match="bare"):
        load_fit_into(get_conv_type("dsconv").block(spec, rank=1), fit)


@pytest.mark.parametrize("conv", ["falcon", "dsconv"])
@pytest.mark.parametrize("bias", [False, True])
def test_fit_module_replaces_a_conv(conv, bias):
    torch.manual_seed(0)
    std = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=bias).double()
    top = full_rank(std.weight.shape, AXIS[conv])
    block, fit = fit_module(std, conv, rank=top + 5)
    assert fit.clamped and fit.rank_used == top
    x = torch.randn(2, 6, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(block(x), std(x), rtol=1e-9, atol=1e-9)
    low, fit1 = fit_module(std, conv, rank=1)
    err = (low(x) - std(x)).norm() / std(x).norm()
    assert 0 < fit1.relative_error and err > 1e-3


@pytest.mark.parametrize("method", ["svd", "gd", "random"])
def test_fit_kernel_methods(method):
    k = kernel(8, 6, 3, dtype=torch.float32)
    fit = fit_kernel(k, "falcon", 2, method, **({"steps": 30} if method == "gd" else {}))
    assert fit.method == method and fit.P.shape == (2, 8, 6) and fit.D.shape == (2, 8, 3, 3)
    torch.testing.assert_close(fit.kernel_hat, ehp_kernel(fit.P, fit.D, "output"))
    if method == "random":
        assert fit.relative_error > 0.9
    with pytest.raises(FalconError):
        fit_kernel(k, "mobilev2", 1)
    with pytest.raises(FalconError, match="method"):
        fit_kernel(k, "falcon", 1, "magic")


def test_attach_bias_goes_where_it_acts_on_outputs():
    spec = LayerSpec(3, 5, 3, 8)
    for conv, where in (("falcon", "depthwise"), ("dsconv", "pointwise")):
        block = get_conv_type(conv).build(spec, rank=2)
        attach_bias(block, torch.arange(5.0))
        assert getattr(block.branches[0], where).bias.tolist() == list(range(5))
        x = torch.zeros(1, 3, 8, 8)
        torch.testing.assert_close(block(x)[0, :, 0, 0], torch.arange(5.0))


# --- the layers and fit commands ----------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory, resnet18_state):
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pt"
    torch.save(resnet18_state, path)
    return path


def falcon_cli(*args: str) -> dict:
    import json

    r = run_cli(*args, "--json", timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def numpy_optimum(weight: torch.Tensor, rank: int, axis: str) -> float:
    a = weight.detach().double().numpy()
    n, m, d, _ = a.shape
    mats = a.reshape(n, m, d * d) if axis == "output" else a.reshape(n, m, d * d).transpose(1, 0, 2)
    dropped = sum(float((np.linalg.svd(x, compute_uv=False)[rank:] ** 2).sum()) for x in mats)
    return math.sqrt(dropped / float((a ** 2).sum()))


@pytest.mark.parametrize("layer,conv,rank", [("layer1.0.conv1", "falcon", 2), ("layer3.1.conv2", "dsconv", 3)])
def test_cli_fit_on_a_resnet18_checkpoint(capsys, resnet18_checkpoint, layer, conv, rank):
    """Done-when: svd matches an independent SVD to 1e-4; gd with defaults lands within 2% of it.

    The first case runs the command in a real process; the second in this one (same code, faster)."""
    import json

    weight = torch.load(resnet18_checkpoint, weights_only=True)[f"{layer}.weight"]
    args = ("fit", "--model", "resnet18", "--weights", str(resnet18_checkpoint), "--layer", layer,
            "--conv", conv, "--rank", str(rank), "--method", "svd")
    if conv == "falcon":
        svd = falcon_cli(*args)
    else:
        code, out, err = cli_inprocess(capsys, *args, "--json")
        assert code == 0, err
        svd = json.loads(out)
    assert abs(svd["relative_error"] - numpy_optimum(weight, rank, AXIS[conv])) < 1e-4
    assert svd["relative_error"] == svd["optimum_relative_error"] and svd["steps"] == 0 and svd["loss_history"] == []
    assert svd["rank_used"] == rank and svd["clamped"] is False and svd["full_rank"] == 9
    assert svd["kernel_shape"] == list(weight.shape) and svd["seconds"] >= 0
    if layer == "layer1.0.conv1":
        gd = falcon_cli("fit", "--model", "resnet18", "--weights", str(resnet18_checkpoint), "--layer", layer,
                        "--conv", conv, "--rank", str(rank), "--method", "gd")
        assert gd["relative_error"] <= 1.02 * svd["relative_error"]
        assert gd["optimum_relative_error"] == pytest.approx(svd["relative_error"], abs=1e-6)
        assert gd["steps"] == 600 and gd["optimizer"] == "adam" and gd["lr"] == 1e-3 and gd["seconds"] > 0
        hist = gd["loss_history"]
        assert len(hist) == len(gd["loss_history_steps"]) <= 201 and gd["loss_history_steps"][-1] == 600
        assert hist[-1] < hist[0] and gd["loss_history_every"] == 4
        assert gd["relative_error_history"][-1] == pytest.approx(gd["relative_error"])


def cli_inprocess(capsys, *args: str) -> tuple[int, str, str]:
    from falcon.cli import main

    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_fit_clamps_and_the_papers_sgd(capsys):
    import json

    code, out, err = cli_inprocess(capsys, "fit", "--model", "digits-vgg", "--layer", "features.0", "--rank", "4", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["clamped"] and d["rank_used"] == 1 and d["full_rank"] == 1 and d["relative_error"] < 1e-6
    code, out, err = cli_inprocess(capsys, "fit", "--model", "digits-vgg", "--layer", "features.7", "--method", "gd",
                                   "--optimizer", "sgd", "--steps", "50", "--json")
    d = json.loads(out)
    assert d["loss"] == "mse" and d["lr"] == 0.01 and d["steps"] == 50 and len(d["loss_history"]) == 51
    assert d["relative_error"] > 1.3 * d["optimum_relative_error"]
    code, out, err = cli_inprocess(capsys, "fit", "--model", "digits-vgg", "--layer", "features.10", "--method", "gd",
                                   "--steps", "100")
    assert code == 0 and "relative error" in out and "optimum (SVD)" in out


def test_cli_layers(capsys):
    import json

    code, out, err = cli_inprocess(capsys, "layers", "--model", "resnet18", "--json")
    assert code == 0, err
    d = json.loads(out)
    rows = {r["name"]: r for r in d["layers"]}
    assert len(rows) == 20 and d["input_size"] == [3, 224, 224] and d["weights"] == "random"
    assert rows["conv1"]["stem"] and rows["conv1"]["kernel"] == "7×7" and rows["conv1"]["input"] == "224×224"
    assert rows["layer2.0.conv1"]["stride"] == 2 and rows["layer2.0.conv1"]["output"] == "28×28"
    assert rows["layer2.0.downsample.0"]["fittable"] is False
    assert rows["layer4.1.conv2"]["falcon_full_rank"] == 9
    code, out, err = cli_inprocess(capsys, "layers", "--model", "digits-vgg")
    assert code == 0 and "features.14" in out and "64→128" in out


@pytest.mark.parametrize("args,words", [
    (["--layer", "layer9.conv"], "no layer 'layer9.conv'"),
    (["--layer", "layer1.0.con1"], "did you mean layer1.0.conv1"),
    (["--layer", "layer1.0.bn1"], "BatchNorm2d, not a conv layer"),
    (["--layer", "layer2.0.downsample.0"], "cannot be fitted"),
    (["--layer", "conv1", "--rank", "0"], "--rank: must be an integer in 1..65536"),
    (["--layer", "conv1", "--method", "gd", "--lr", "-1"], "learning rate"),
    (["--layer", "conv1", "--weights", "/nonexistent.pt"], "does not exist"),
    (["--layer", "conv1", "--conv", "mobilev2"], "invalid choice"),
    (["--layer", "conv1", "--steps", "5"], "--method gd"),  # gd's flags with the SVD fit: refused, not ignored
    (["--layer", "conv1", "--conv", "cp", "--lr", "0.1", "--loss", "mse"], "--lr, --loss only tune --method gd"),
])
def test_cli_fit_errors_are_one_line(capsys, args, words):
    code, out, err = cli_inprocess(capsys, "fit", "--model", "resnet18", *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert words in err


@pytest.mark.parametrize("axis", ["output", "input"])
@pytest.mark.parametrize("rank", [1, 3])
def test_numpy_ehp_is_the_torch_ehp(axis, rank):
    """falcon.ehp_numpy (einsum, what the overview draws) and falcon.ehp.ehp_kernel (bmm) agree."""
    from falcon.ehp import ehp_kernel
    from falcon.ehp_numpy import ehp_kernel_np

    g = torch.Generator().manual_seed(rank)
    n, m = 5, 4
    p = torch.randn(rank, n, m, generator=g, dtype=torch.float64)
    d = torch.randn(rank, n if axis == "output" else m, 3, 3, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(ehp_kernel_np(p.numpy(), d.numpy(), axis), ehp_kernel(p, d, axis).numpy(), rtol=1e-12)
    if rank == 1:
        np.testing.assert_allclose(ehp_kernel_np(p[0].numpy(), d[0].numpy(), axis), ehp_kernel(p[0], d[0], axis).numpy(),
                                   rtol=1e-12)
    with pytest.raises(FalconError):
        ehp_kernel_np(p.numpy(), d[:, :2].numpy(), axis)
