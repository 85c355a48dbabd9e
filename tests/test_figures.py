"""The app's figure builders (falcon.views) and the library calls its pages make, on their data."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from falcon.views import figures
from falcon import costs, counting, jobs, paper, probe
from falcon.views import explain, tables
from falcon.experiments import store
from falcon.convtypes import CONV_TYPES, break_even_rank, compare
from falcon.errors import FalconError
from falcon.paper import load_paper_results
from falcon.spec import LayerSpec

SPEC = LayerSpec(256, 256, 3, 32)


def _traces(fig: go.Figure, type_: str | None = None) -> list:
    return [t for t in fig.data if type_ is None or t.type == type_]


# ---------------------------------------------------------------------------------------------- pure helpers
def test_tile_places_each_kernel_between_nan_gaps():
    k = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    img = figures.tile(k)
    assert img.shape == (2 * 3 - 1, 3 * 3 - 1)
    np.testing.assert_array_equal(img[0:2, 0:2], k[0, 0])
    np.testing.assert_array_equal(img[3:5, 6:8], k[1, 2])
    assert np.isnan(img[2]).all() and np.isnan(img[:, 2]).all()
    assert figures.tile(np.ones((4, 3, 3))).shape == (4 * 4 - 1, 3)  # a column of tiles
    with pytest.raises(ValueError):
        figures.tile(np.ones((1, 1, 1, 1, 1)))


def test_symmetric_range_is_one_scale_for_every_panel():
    assert figures.symmetric_range(np.array([-3.0, 1.0]), np.array([2.0, np.nan])) == 3.0
    assert figures.symmetric_range(np.zeros(3)) == 1.0


@pytest.mark.parametrize("x,y,front", [
    ([1, 2, 3], [1, 2, 3], [True, True, True]),  # each costs more and is more accurate
    ([1, 2, 3], [3, 2, 1], [True, False, False]),  # the cheapest is also the best
    ([1, 1, 2], [1, 2, 2], [False, True, False]),  # ties: equal cost, better accuracy wins
    ([1, np.nan, 2], [1, 5, 0], [True, False, False]),
])
def test_pareto_front(x, y, front):
    assert figures.pareto_front(x, y).tolist() == front


def test_pareto_front_on_a_paper_panel():
    df = load_paper_results()
    d = df[(df["model"] == "vgg19") & (df["dataset"] == "cifar10")]
    on = d[figures.pareto_front(d["params_m"], d["top1"])]
    # FALCON rank 1 (2.56M, 93.23%) and rank 2 (4.84M, 93.82%) beat every other point of Table 3a/6a
    assert set(zip(on["method"], on["rank"].astype("float"))) == {("falcon", 1.0), ("falcon", 2.0)}


def test_conv_colors_come_from_the_registry():
    for name, ct in CONV_TYPES.items():
        assert figures.conv_color(name) == ct.color
    assert figures.conv_color("falcon-fused") == CONV_TYPES["falcon"].color
    assert figures.conv_color("linear") == figures.NEUTRAL


# ---------------------------------------------------------------------------------------------- figures
def test_ehp_figure_draws_the_library_product():
    from falcon.ehp import ehp_kernel

    g = torch.Generator().manual_seed(0)
    p, d_out, d_in = torch.randn(3, 4, generator=g), torch.randn(3, 3, 3, generator=g), torch.randn(4, 3, 3, generator=g)
    falcon = {"P": p.numpy(), "D": d_out.numpy(), "K": ehp_kernel(p, d_out, "output").numpy()}
    dsconv = {"P": p.numpy(), "D": d_in.numpy(), "K": ehp_kernel(p, d_in, "input").numpy()}
    fig = figures.ehp_figure(falcon, dsconv)
    heat = _traces(fig, "heatmap")
    assert len(heat) == 4
    zmax = figures.symmetric_range(*falcon.values(), *dsconv.values())
    assert all(h.zmin == -zmax and h.zmax == zmax and h.zmid == 0 for h in heat)  # one diverging scale
    right = np.asarray(heat[1].z, dtype=float)  # D[n] | gap | K
    np.testing.assert_allclose(right[:, 3 + 2:], figures.tile(falcon["K"]))
    np.testing.assert_allclose(right[0:3, 0:3], falcon["D"][0])
    below = np.asarray(heat[3].z, dtype=float)  # D[m] row, gap, K
    np.testing.assert_allclose(below[3 + 2:], figures.tile(dsconv["K"]))
    np.testing.assert_allclose(below[0:3, 4:7], dsconv["D"][1])
    # FALCON: tile (n, m) is P[n, m] · D[n]
    np.testing.assert_allclose(falcon["K"][1, 2], falcon["P"][1, 2] * falcon["D"][1], rtol=1e-6)
    np.testing.assert_allclose(dsconv["K"][1, 2], dsconv["P"][1, 2] * dsconv["D"][2], rtol=1e-6)


def test_kernel_figure_uses_one_scale_and_crops():
    k = np.random.default_rng(0).normal(size=(10, 12, 3, 3))
    kh = k * 0.5
    fig = figures.kernel_figure(k, kh, max_out=4, max_in=5)
    heat = _traces(fig, "heatmap")
    assert len(heat) == 3
    assert len({(h.zmin, h.zmax) for h in heat}) == 1
    assert np.asarray(heat[0].z).shape == (4 * 4 - 1, 5 * 4 - 1)
    np.testing.assert_allclose(np.asarray(heat[2].z, dtype=float), figures.tile(k[:4, :5] - kh[:4, :5]))
    with pytest.raises(ValueError):
        figures.kernel_figure(k, kh[:, :3])


def test_rank_sweep_and_break_even():
    sweep = costs.rank_sweep(SPEC, "falcon")
    be = break_even_rank(SPEC, "falcon", "params")
    assert sweep["rank"].max() >= be
    row = sweep[sweep["rank"] == be].iloc[0]
    assert row["compression_rate"] <= 1 < sweep[sweep["rank"] == be - 1].iloc[0]["compression_rate"]


def test_speedup_figure():
    results = [
        {"conv": "standard", "label": "StConv", "memory_format": "contiguous", "speedup": 1.0, "theoretical_speedup": 1.0},
        {"conv": "falcon", "label": "FALCON (k=1)", "memory_format": "contiguous", "speedup": 3.0, "theoretical_speedup": 8.69},
        {"conv": "falcon", "label": "FALCON (k=1)", "memory_format": "channels_last", "speedup": 7.0, "theoretical_speedup": 8.69},
    ]
    fig = figures.speedup_figure(results)
    bars = _traces(fig, "bar")
    assert [b.name for b in bars] == ["theoretical (MAC ratio)", "measured, contiguous (light)", "measured, channels_last"]
    assert list(bars[0].y) == [8.69] and list(bars[1].y) == [3.0] and list(bars[2].y) == [7.0]


def test_per_layer_figure_matches_the_sizing_table():
    from falcon.sizing import size_model

    r = size_model("resnet18", "falcon")
    table = pd.DataFrame(r.count.table())
    fig = figures.per_layer_figure(table, r.standard.table(), what="macs")
    bars = _traces(fig, "bar")
    assert bars[0].name == "standard model"
    drawn = sum(sum(b.y) for b in bars[1:])
    assert drawn == r.macs  # every MAC of the model is in exactly one bar
    falcon_bar = next(b for b in bars if b.name == "FALCON")
    assert falcon_bar.marker.color == CONV_TYPES["falcon"].color


def test_loss_energy_and_error_figures():
    fig = figures.loss_figure([0, 1, 2], [1.0, 0.5, 0.3], optimum=0.25)
    assert list(fig.data[0].y) == [1.0, 0.5, 0.3]
    assert fig.layout.shapes[0].y0 == 0.25
    energy = np.array([[0.5, 0.9, 1.0], [0.7, 0.95, 1.0]])
    fig = figures.energy_figure(energy, rank=2)
    np.testing.assert_allclose(fig.data[2].y, np.median(energy, axis=0))
    fig = figures.error_by_rank_figure([0.5, 0.2, 0.0], rank=2)
    assert list(fig.data[0].y) == [0.5, 0.2, 0.0]


def test_accuracy_figure_panels_and_traces():
    df = load_paper_results()
    fig = figures.accuracy_figure(df, x="macs_m", log_x=True)
    panels = list(dict.fromkeys(zip(df["model"], df["dataset"])))
    assert len(fig.layout.annotations) == len(panels) == 8
    assert fig.layout.xaxis.type == "log"
    falcon = [t for t in fig.data if t.name == "FALCON rank 1–3"]
    assert len(falcon) == len(panels) and all(len(t.x) == 3 for t in falcon)  # ranks joined by a line
    first = df[(df["model"] == "vgg19") & (df["dataset"] == "cifar10") & (df["method"] == "falcon")].sort_values("rank")
    assert list(falcon[0].x) == list(first["macs_m"]) and list(falcon[0].y) == list(first["top1"])
    standard = [t for t in fig.data if t.name == "StConv"]
    assert standard[0].marker.symbol == "star"
    assert sum(t.showlegend is not False for t in fig.data if t.name == "FALCON rank 1–3") == 1  # one legend entry


def test_accuracy_figure_marks_our_runs():
    df = load_paper_results()
    ours = pd.DataFrame([{"model": "digits-vgg", "dataset": "digits", "method": "falcon", "rank": 1, "top1": 97.5,
                          "params_m": 0.02, "macs_m": 3.4},
                         {"model": "vgg19", "dataset": "cifar10", "method": "falcon", "rank": 1, "top1": 92.0,
                          "params_m": 2.56, "macs_m": 47.2}])
    fig = figures.accuracy_figure(df, ours)
    assert "digits-vgg<br>digits" in [a.text for a in fig.layout.annotations]  # model over data set
    mine = [t for t in fig.data if t.name == "FALCON (ours)"]
    assert len(mine) == 2 and all(t.marker.symbol == "circle-open" for t in mine)


def test_accuracy_table_is_what_the_figure_plots():
    """The accuracy page's table and CSV (tables.accuracy_table) are the figure's points: per panel, the
    markers of each (source, method) and the dashed frontier through the rows marked ``pareto``."""
    df = load_paper_results()
    ours = pd.DataFrame([{"model": "resnet18", "dataset": "imagenet", "method": "falcon", "rank": 2, "top1": 71.0,
                          "params_m": 3.0, "macs_m": 500.0, "source": "ours"},
                         {"model": "digits-vgg", "dataset": "digits", "method": "dsconv", "rank": 1, "top1": 97.0,
                          "params_m": 0.02, "macs_m": 3.0, "source": "ours"},
                         {"model": "digits-vgg", "dataset": "digits", "method": "standard", "rank": None,
                          "top1": float("nan"), "params_m": 0.1, "macs_m": 9.0, "source": "ours"}])  # not plotted
    for x, panels in (("params_m", None), ("macs_m", [("resnet18", "imagenet"), ("digits-vgg", "digits")])):
        points = tables.accuracy_table(df, ours, x=x, panels=panels)
        fig = figures.accuracy_figure(df, ours, x=x, panels=panels)
        assert fig.to_json() == figures.points_figure(points, x=x, panels=panels).to_json()
        in_panels = len(df) if panels is None else int(((df["model"] == "resnet18") & (df["dataset"] == "imagenet")).sum())
        assert len(points) == in_panels + 2  # the NaN accuracy is left out
        axes = {"x" if i == 0 else f"x{i + 1}": p for i, p in enumerate(panels or dict.fromkeys(zip(points["model"], points["dataset"])))}
        drawn = sorted((axes[t.xaxis], float(px), float(py)) for t in fig.data if t.name != "Pareto frontier"
                       for px, py in zip(t.x, t.y))
        listed = sorted(((m, d), float(px), float(py)) for m, d, px, py in zip(points["model"], points["dataset"],
                                                                               points[x], points["top1"]))
        assert drawn == listed
        front = sorted((axes[t.xaxis], float(px), float(py)) for t in fig.data if t.name == "Pareto frontier"
                       for px, py in zip(t.x, t.y))
        on = points[points["pareto"]]
        assert front == sorted(((m, d), float(px), float(py)) for m, d, px, py in zip(on["model"], on["dataset"], on[x], on["top1"]))
        assert set(points["method_label"]) <= {c.label for c in CONV_TYPES.values()}


# ---------------------------------------------------------------------------------------------- page helpers
def test_layer_rows_are_the_registry_numbers():
    hp = {"falcon": {"rank": 2}, "mobilev2": {"expansion": 1.0}}
    rows = tables.with_formulas(costs.layer_rows(SPEC, hp))
    assert [r["conv"] for r in rows] == list(CONV_TYPES)
    for r in rows:
        c = compare(SPEC, r["conv"], **hp.get(r["conv"], {}))
        assert (r["params"], r["macs"]) == (c.cost.params, c.cost.macs)
        assert r["compression_rate"] == c.compression_rate
        assert r["params_sum"].endswith(tables.latex_int(c.cost.params))
    table = tables.layer_table(rows)
    assert table.loc["falcon", "params"] == 2 * (256 * 256 + 9 * 256)


def test_layer_rows_keep_going_past_a_bad_type():
    bad = {"shuffle": {"groups": 3}}
    with pytest.raises(FalconError):
        costs.layer_rows(SPEC, bad)
    rows = costs.layer_rows(SPEC, bad, keep_going=True)
    shuffle = next(r for r in rows if r["conv"] == "shuffle")
    assert "groups g=3" in shuffle["error"] and "params" not in shuffle
    assert "shuffle" not in tables.layer_table(rows).index


def test_thop_agrees_with_the_closed_form():
    check = counting.thop_check(LayerSpec(32, 48, 3, 16, stride=2), {"falcon": {"rank": 3}})
    assert check["agree"].all()
    assert check.loc["falcon", "thop params"] == compare(LayerSpec(32, 48, 3, 16, stride=2), "falcon", rank=3).cost.params


def test_paper_rows_match_only_the_papers_settings():
    rows = paper.paper_rows("vgg19-cifar", "falcon", {"rank": 2}, 10, 32)
    assert set(rows["dataset"]) == {"cifar10", "svhn"} and set(rows["rank"]) == {2}
    assert paper.paper_rows("vgg19-cifar", "falcon", {"rank": 4}, 10, 32).empty
    assert paper.paper_rows("vgg19-cifar", "shuffle", {"groups": 2, "width_mult": 1.0}, 10, 32).empty
    assert len(paper.paper_rows("vgg19-cifar", "shuffle", {"groups": 2, "width_mult": 2.0}, 100, 32)) == 1
    assert paper.paper_rows("mobilenet_v2", "falcon", {"rank": 1}, 1000, 224).empty
    cmp = paper.paper_comparison(paper.paper_rows("resnet18", "falcon", {"rank": 1}, 1000, 224), 1_966_888, 395_398_120)
    assert cmp["paper (M)"].tolist() == [1.97, 395.40]
    assert abs(cmp["difference (M)"].iloc[0] - (1.966888 - 1.97)) < 1e-12


def test_background_job_reports_stops_and_catches():
    def work(job):
        for i in range(1000):
            if job.should_stop():
                return i
            job.records.append(i)
            job.report(i / 1000, f"step {i}")
            time.sleep(0.001)
        return 1000

    job = jobs.Job(work).start()
    time.sleep(0.05)
    job.stop()
    assert job.wait(5) and job.result < 1000 and job.error is None
    assert job.records == list(range(len(job.records)))

    def bad(job):
        raise FalconError("use a smaller batch")

    job = jobs.Job(bad).start()
    assert job.wait(5) and job.error == "use a smaller batch" and job.trace is None

    def bug(job):
        return 1 / 0

    job = jobs.Job(bug).start()
    assert job.wait(5) and job.error.startswith("ZeroDivisionError") and "Traceback" in job.trace


def test_describe_device():
    """The machine the sidebar names: the GPU torch sees, else this CPU, by the name /proc/cpuinfo gives it,
    with torch's current thread count (read when asked: a change of threads shows)."""
    import os
    from pathlib import Path

    from falcon.bench import describe_device

    dev = describe_device()
    assert dev.kind == ("cuda" if torch.cuda.is_available() else "cpu")
    assert dev.threads == torch.get_num_threads() and dev.cpu_count == os.cpu_count()
    assert dev.name.strip() and dev.name in dev.sentence
    if dev.kind == "cuda":
        assert dev.name == torch.cuda.get_device_name(0) == dev.short
    else:
        cpuinfo = Path("/proc/cpuinfo")
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")] if cpuinfo.is_file() else []
        if models:
            assert dev.name == models[0]
        saved = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            assert describe_device().threads == 1
        finally:
            torch.set_num_threads(saved)


def test_digits_fit_effect_and_summary():
    from falcon.ehp import fit_kernel

    loaded = probe.load_for_fit("digits-vgg")
    assert [r["name"] for r in loaded.layers][:2] == ["features.0", "features.3"]
    layer = "features.10"
    full = fit_kernel(loaded.kernel(layer), "falcon", 9, "svd")
    effect = probe.fit_effect(loaded, layer, "falcon", full)
    assert effect["output_error"] < 1e-5  # full rank is exact
    assert effect["accuracy"] == pytest.approx(loaded.baseline_accuracy)
    low = fit_kernel(loaded.kernel(layer), "dsconv", 1, "svd")
    worse = probe.fit_effect(loaded, layer, "dsconv", low)
    assert worse["output_error"] > 0.05
    info = probe.kernel_info(loaded.kernel(layer), "dsconv")
    assert info["error_by_rank"][0] == pytest.approx(low.relative_error, rel=1e-5)
    text = explain.fit_summary(loaded, layer, "dsconv", low, low, info, worse, "SVD optimum")
    assert "Rank-1 DSConv" in text and f"{low.relative_error:.3f}" in text


def test_own_runs_reads_the_results_store(tmp_path):
    from falcon.experiments import store

    db = tmp_path / "runs.sqlite"
    assert store.own_runs(str(db)).empty
    store.save_run({"model": "digits-vgg", "dataset": "digits", "conv": "falcon", "rank": 1, "finetuned_accuracy": 0.975,
                    "baseline_accuracy": 0.99, "params": 20106, "macs": 3450122, "baseline_params": 100000,
                    "baseline_macs": 9000000}, db)
    runs = store.own_runs(str(db))
    assert set(runs["method"]) == {"falcon", "standard"}
    assert runs.loc[runs["method"] == "falcon", "top1"].item() == pytest.approx(97.5)
    json.dumps(runs.astype(str).to_dict())  # plain data


def test_checkpoint_source_for_the_fit_page():
    import io

    from falcon.models.digits import DigitsVGG

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(DigitsVGG().state_dict(), buf)
    loaded = probe.load_for_fit("checkpoint", "digits-vgg", buf.getvalue())
    assert loaded.key.startswith("checkpoint:digits-vgg:") and loaded.dataset is None
    assert [r["name"] for r in loaded.layers] == ["features.0", "features.3", "features.7", "features.10", "features.14"]
    fit = probe.kernel_info(loaded.kernel("features.3"), "falcon")
    assert len(fit["error_by_rank"]) == 9
    with pytest.raises(FalconError, match="the uploaded checkpoint"):
        probe.load_for_fit("checkpoint", "digits-vgg", b"not a checkpoint")
    with pytest.raises(FalconError, match="unknown model source"):
        probe.load_for_fit("somewhere", "digits-vgg")


def test_training_figure_draws_each_runs_curves():
    from falcon.views.figures import conv_color, training_figure

    curves = {1: {"conv": "falcon", "label": "FALCON k=1", "step": [5, 10], "loss": [1.0, 0.5],
                  "epoch_step": [10], "accuracy": [0.9]},
              2: {"conv": "falcon", "label": "FALCON k=2", "step": [5], "loss": [2.0], "epoch_step": [], "accuracy": []},
              3: {"conv": "dsconv", "label": "DSConv k=1", "step": [5], "loss": [0.7], "epoch_step": [5], "accuracy": [0.5]}}
    fig = training_figure(curves, baseline_accuracy=0.99)
    loss = [t for t in fig.data if t.xaxis in (None, "x")]
    acc = [t for t in fig.data if t.xaxis == "x2"]
    assert [t.name for t in loss] == ["FALCON k=1", "FALCON k=2", "DSConv k=1"]
    assert list(loss[0].y) == [1.0, 0.5] and list(acc[0].y) == [90.0] and list(acc[2].y) == [50.0]
    assert loss[0].line.color == loss[1].line.color == conv_color("falcon") != loss[2].line.color
    assert loss[0].line.dash != loss[1].line.dash  # ranks of one type differ by dash
    assert fig.layout.yaxis.type == "log" and fig.layout.shapes[0].y0 == pytest.approx(99.0)
    assert any("baseline 99.00%" in a.text for a in fig.layout.annotations)


def test_registry_and_overview_figure_do_not_import_torch():
    """The app's first page draws the EHP figure in the registry's colours before torch (~2 s to
    import) is loaded; the registry and the figure builders must not pull it in."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from falcon.convtypes import CONV_TYPES, compare\n"
            "from falcon.spec import LayerSpec\n"
            "from falcon.views.figures import ehp_figure\n"
            "from falcon.ehp_numpy import ehp_kernel_np\n"
            "p, d = np.ones((3, 4), np.float32), np.ones((3, 3, 3), np.float32)\n"
            "parts = {'P': p, 'D': d, 'K': ehp_kernel_np(p, d, 'output')}\n"
            "ehp_figure(parts, {'P': p, 'D': np.ones((4, 3, 3), np.float32), 'K': ehp_kernel_np(p, np.ones((4, 3, 3), np.float32), 'input')})\n"
            "assert CONV_TYPES['falcon'].color and compare(LayerSpec(256, 256, 3, 32), 'falcon').compression_rate > 8\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------- issue #20
def test_log_ticks_inside_every_range():
    """1-2-5 where it fits, else 1..9, else round steps: vgg16_bn's 125-138 M parameters had no tick at all."""
    assert figures.log_tickvals(2, 25) == [2, 5, 10, 20]
    assert figures.log_tickvals(0.8, 0.95) == pytest.approx([0.8, 0.9])
    for lo, hi in ((124.3, 139.5), (1000, 1100), (3.01, 3.09), (0.0123, 0.0125)):
        ticks = figures.log_tickvals(lo, hi)
        assert len(ticks) >= 2 and all(lo <= t <= hi for t in ticks), (lo, hi, ticks)
    fig = figures.accuracy_figure(load_paper_results(), log_x=True)
    for name in (k for k in fig.layout.to_plotly_json() if k.startswith("xaxis")):
        axis = fig.layout[name]
        lo, hi = (10 ** v for v in axis.range)
        assert len([t for t in axis.tickvals if lo <= t <= hi]) >= 2, name


def test_accuracy_points_sit_inside_their_panels():
    fig = figures.accuracy_figure(load_paper_results(), log_x=True)
    for t in fig.data:
        xa, ya = fig.layout["xaxis" + t.xaxis[1:]], fig.layout["yaxis" + t.yaxis[1:]]
        x0, x1 = xa.range
        assert all(x0 < np.log10(v) < x1 for v in t.x) and all(ya.range[0] < v < ya.range[1] for v in t.y)


def test_scale_fonts_scales_every_font_and_leaves_the_figure():
    fig = figures.energy_figure(np.cumsum(np.full((4, 9), 1 / 9), axis=1), rank=2)
    big = figures.scale_fonts(fig, 1.5)
    assert big.layout.font.size == pytest.approx(1.5 * fig.layout.font.size)
    assert [a.font.size for a in big.layout.annotations] == pytest.approx([1.5 * a.font.size for a in fig.layout.annotations])
    assert figures.scale_fonts(go.Figure(), 2).layout.font.size == 2 * figures.PLOTLY_FONT_SIZE
    assert fig.layout.font.size == 13  # unchanged


def test_energy_rank_is_the_first_rank_over_the_share():
    e = np.array([[0.5, 0.96, 1.0], [0.2, 0.9, 1.0], [0.97, 0.99, 1.0]])
    assert figures.energy_rank(e, 0.95) == {"median": 2, "worst": 3}  # median curve 0.5, 0.96, 1
    assert figures.energy_rank(e, 0.5) == {"median": 1, "worst": 2}
