"""The latency harness: structure of its reports, guards, progress/stop and the CLI. No timed assertions:
the machines are shared and noisy; tiny layers and short run times keep this file to a few seconds."""
from __future__ import annotations

import json
import math

import pytest
import torch

from falcon import bench
from falcon.bench import BenchEntry, bench_entries, estimate_memory, measure
from falcon.cli import main
from falcon.convtypes import compare
from falcon.errors import FalconError
from falcon.spec import LayerSpec

SPEC = LayerSpec(8, 8, 3, 6)
FAST = dict(batch_size=1, device="cpu", threads=1, rounds=2, min_run_time=0.002)
CLI_SIZES = ["-M", "8", "-N", "8", "-D", "3", "-H", "6", "-B", "1", "--threads", "1",
             "--rounds", "1", "--min-run-time", "0.002"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_entries_put_standard_first_and_resolve_fused():
    entries = bench_entries(SPEC, ["falcon", "falcon-fused", ("falcon", {"rank": 2, "fused": True}), "dsconv", "falcon"])
    assert [e.conv for e in entries] == ["standard", "falcon", "falcon-fused", "falcon-fused", "dsconv"]
    assert entries[2].hp == {"rank": 1} and entries[3].hp == {"rank": 2}
    assert entries[3].fused and entries[3].conv_type == "falcon"
    assert entries[3].label == "FALCON fused (k=2)"
    assert bench_entries(SPEC, ["standard"]) == [BenchEntry("standard", "standard", ())]


@pytest.mark.parametrize("convs,match", [
    (["nope"], "unknown conv type"),
    ([("dsconv", {"fused": True})], "only falcon"),
    ([("falcon", {"groups": 2})], "no hyper-parameter"),
    ([("falcon", {"rank": 0})], "rank"),
    ([], "no conv type"),
    ([("shuffle", {"width_mult": 2.0})], "width multiplier"),
])
def test_entry_errors(convs, match):
    with pytest.raises(FalconError, match=match):
        bench_entries(SPEC, convs)


def test_report_structure_both_layouts():
    convs = ["falcon", ("falcon", {"rank": 2, "fused": True}), "dsconv"]
    report = measure(SPEC, convs, memory_format="auto", **FAST)
    assert report.device == "cpu" and report.threads == 1 and report.torch_version == torch.__version__
    assert report.device_name and report.memory_formats == ["contiguous", "channels_last"]
    assert report.clock == "wall" and not report.stopped
    assert len(report.results) == 4 * 2
    keys = {(r.conv, tuple(sorted(r.hparams.items()))) for r in report.results}
    assert len(keys) == 4
    for key in keys:  # exactly one best layout per conv type and hyper-parameters
        rows = [r for r in report.results if (r.conv, tuple(sorted(r.hparams.items()))) == key]
        assert {r.memory_format for r in rows} == {"contiguous", "channels_last"}
        assert sum(r.best for r in rows) == 1
        best = next(r for r in rows if r.best)
        assert best.median_ms == min(r.median_ms for r in rows)
    std = {r.memory_format: r for r in report.results if r.conv == "standard"}
    std_best = min(r.median_ms for r in std.values())
    for r in report.results:
        assert r.median_ms > 0 and r.iqr_ms >= 0 and r.samples >= 1
        assert r.speedup == pytest.approx(std[r.memory_format].median_ms / r.median_ms)
        assert r.speedup_vs_best_standard == pytest.approx(std_best / r.median_ms)
        conv_type = "falcon" if r.conv == "falcon-fused" else r.conv
        c = compare(SPEC, conv_type, **r.hparams)
        assert r.theoretical_speedup == pytest.approx(c.computation_reduction_rate)
        assert r.macs == c.cost.macs * FAST["batch_size"]
        assert r.gmacs_per_s == pytest.approx(r.macs / (r.median_ms / 1e3) / 1e9)
        assert r.peak_memory_bytes > 0 and r.peak_memory_source == "estimate"
    assert all(r.speedup == 1 for r in std.values())
    d = report.as_dict()
    json.dumps(d)  # plain data
    assert {"device", "device_name", "threads", "torch_version", "results", "stopped"} <= set(d)
    assert {"conv", "memory_format", "median_ms", "iqr_ms", "macs", "gmacs_per_s", "speedup",
            "theoretical_speedup", "peak_memory_bytes", "best", "fraction_of_theoretical"} <= set(d["results"][0])
    assert report.best("falcon-fused", rank=2).hparams == {"rank": 2}


def test_every_registered_conv_type_runs():
    """Every conv type of the registry (a new entry included, without touching this test), and every inference
    form (the fused FALCON)."""
    from falcon.convtypes import CONV_TYPES, parse_variant, variant_names

    spec = LayerSpec(8, 16, 3, 6)
    names = list(variant_names())
    assert len(names) > len(CONV_TYPES)  # at least one inference form
    report = measure(spec, names, memory_format="channels_last", **{**FAST, "rounds": 1})
    assert [r.conv for r in report.results] == names  # standard first, as given
    for r in report.results:
        assert r.median_ms > 0 and math.isfinite(r.median_ms), r.conv
        conv_type = parse_variant(r.conv)[0].name  # the fused form does its type's MACs
        assert r.theoretical_speedup == pytest.approx(compare(spec, conv_type).computation_reduction_rate), r.conv


def test_one_layout_and_standard_added():
    report = measure(SPEC, [("falcon", {"rank": 1})], memory_format="channels_last", **FAST)
    assert [(r.conv, r.memory_format) for r in report.results] == [("standard", "channels_last"), ("falcon", "channels_last")]
    assert all(r.best for r in report.results)


def test_cpu_clock():
    report = measure(SPEC, ["falcon"], memory_format="contiguous", clock="cpu", **FAST)
    assert report.clock == "cpu" and len(report.results) == 2
    with pytest.raises(FalconError, match="1 thread"):
        measure(SPEC, ["falcon"], clock="cpu", **{**FAST, "threads": 2})


def test_retained_memory_is_reported_and_restored():
    import sys
    report = measure(SPEC, ["falcon"], memory_format="contiguous", **FAST)
    assert report.allocator == ("retain" if sys.platform.startswith("linux") else "default")
    report = measure(SPEC, ["falcon"], memory_format="contiguous", retain_memory=False, **FAST)
    assert report.allocator == "default"
    with bench.retained_memory(False) as on:
        assert on is False


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc only")
def test_retained_memory_stops_page_faults():
    """Inside the context a freed 16 MiB block is reused, not faulted back in page by page."""
    import resource

    def faults_per_round() -> float:
        for _ in range(3):
            torch.empty(4 << 20).fill_(1.0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            torch.empty(4 << 20).fill_(1.0)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

    with bench.retained_memory() as on:
        if not on:
            pytest.skip("mallopt not available")
        assert faults_per_round() < 100  # 16 MiB = 4096 pages when each round faults them in


def test_progress_counts_every_step():
    calls = []
    measure(SPEC, ["falcon"], progress=lambda done, total, label: calls.append((done, total, label)), **FAST)
    tasks = 2 * 2  # standard + falcon, two layouts
    total = tasks * (FAST["rounds"] + 1)  # a warm-up and one visit per round each
    assert [c[0] for c in calls] == list(range(1, total + 1))
    assert {c[1] for c in calls} == {total}
    assert all(isinstance(c[2], str) and c[2] for c in calls)


def test_stop_returns_partial_report():
    calls = []
    stop_after = 4 + 3  # all warm-ups, then three timed visits
    report = measure(SPEC, ["falcon"], progress=lambda *a: calls.append(a),
                     should_stop=lambda: len(calls) >= stop_after, **FAST)
    assert report.stopped
    assert len(calls) == stop_after
    assert 1 <= len(report.results) <= 3
    report = measure(SPEC, ["falcon"], should_stop=lambda: True, **FAST)
    assert report.stopped and report.results == []


def test_memory_estimate_counts_the_tensors():
    spec = LayerSpec(4, 6, 3, 5, stride=2)
    entry = bench_entries(spec, ["falcon"])[1]
    est = estimate_memory(spec, entry, batch_size=3)
    f = 4  # float32
    assert est.input_bytes == 3 * 4 * 5 * 5 * f
    assert est.weight_bytes == (4 * 6 + 9 * 6) * f
    assert est.intermediate_bytes == 3 * 6 * 5 * 5 * f  # the pointwise output, at input resolution
    assert est.output_bytes == 3 * 6 * 3 * 3 * f
    assert est.total_bytes == est.input_bytes + est.weight_bytes + est.intermediate_bytes + est.output_bytes


def test_memory_guard_refuses_before_allocating(monkeypatch):
    devices = []
    real_build = BenchEntry.build

    def build(self, spec):
        module = real_build(self, spec)
        devices.append(next(module.parameters()).device.type)
        return module

    monkeypatch.setattr(BenchEntry, "build", build)
    with pytest.raises(FalconError, match="not enough memory"):
        measure(SPEC, ["falcon"], memory_budget_bytes=1000, **FAST)
    with pytest.raises(FalconError, match="not enough memory.*batch size"):
        measure(LayerSpec(512, 512, 3, 1024), ["falcon"], **{**FAST, "batch_size": 4096})
    assert devices and set(devices) == {"meta"}  # shapes only: nothing real was built


def test_memory_guard_uses_meminfo_budget(monkeypatch):
    monkeypatch.setattr(bench, "_available_ram", lambda: (10_000, "test RAM"))
    budget, source = bench.memory_budget(torch.device("cpu"))
    assert budget == int(10_000 * bench.CPU_MEMORY_FRACTION) and "test RAM" in source
    with pytest.raises(FalconError, match="test RAM"):
        measure(SPEC, ["falcon"], **FAST)
    monkeypatch.setattr(bench, "_available_ram", lambda: (None, "unknown"))
    report = measure(SPEC, ["falcon"], memory_format="contiguous", **FAST)
    assert any("memory guard was skipped" in n for n in report.notes)


def test_real_meminfo_is_read():
    available, source = bench._available_ram()
    assert available is None or available > 0
    budget, _ = bench.memory_budget(torch.device("cpu"))
    assert budget is None or budget > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_cuda():
    with pytest.raises(FalconError, match="^no CUDA device: "):
        measure(SPEC, ["falcon"], device="cuda")
    with pytest.raises(FalconError, match="no CUDA device"):
        measure(SPEC, ["falcon"], device="cuda:1")
    assert bench.resolve_device("auto").type == "cpu"


@pytest.mark.parametrize("kwargs,match", [
    ({"dtype": "float16", "device": "cpu"}, "CUDA only"),
    ({"dtype": "bfloat16", "device": "cpu"}, "CUDA only"),
    ({"dtype": "int8"}, "dtype"),
    ({"device": "tpu"}, "device"),
    ({"memory_format": "nhwc"}, "memory format"),
    ({"batch_size": 0}, "batch size"),
    ({"threads": 0}, "threads"),
    ({"rounds": 0}, "rounds"),
    ({"min_run_time": -1.0}, "min run time"),
    ({"clock": "sundial"}, "clock"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(FalconError, match=match):
        measure(SPEC, ["falcon"], **{**FAST, **kwargs})


def test_fmt_bytes():
    assert bench.fmt_bytes(512) == "512 B"
    assert bench.fmt_bytes(3 * 1024**2) == "3.0 MiB"


# ----------------------------------------------------------------------------------------------
# CLI
def test_cli_json(capsys):
    assert main(["bench", *CLI_SIZES, "--conv", "falcon,falcon-fused", "--rank", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["threads"] == 1
    rows = out["results"]
    assert [(r["conv"], r["memory_format"]) for r in rows] == [
        (c, m) for c in ("standard", "falcon", "falcon-fused") for m in ("contiguous", "channels_last")]
    for r in rows:
        for key in ("conv", "memory_format", "median_ms", "iqr_ms", "macs", "gmacs_per_s", "speedup",
                    "theoretical_speedup"):
            assert key in r
        assert math.isfinite(r["median_ms"])
    assert {r["hparams"].get("rank") for r in rows if r["conv"] != "standard"} == {2}


def test_cli_table(capsys):
    assert main(["bench", *CLI_SIZES, "--memory-format", "channels_last", "--conv", "standard,falcon-fused"]) == 0
    text = capsys.readouterr().out
    assert "median_ms" in text and "FALCON fused (k=1)" in text and "of theoretical" in text


def test_report_rows_are_the_table_the_cli_and_the_calculator_print(capsys, monkeypatch):
    """BenchReport.rows(): one row per timing, from the results; the CLI prints them (its text columns)."""
    import falcon.cli.bench as cli_bench

    report = measure(SPEC, ["falcon"], **FAST)
    rows = report.rows()
    assert len(rows) == len(report.results) == 4
    for row, r in zip(rows, report.results):
        assert (row["conv"], row["layout"], row["median_ms"], row["iqr_ms"], row["GMAC/s"]) == (
            r.label, r.memory_format, r.median_ms, r.iqr_ms, r.gmacs_per_s)
        assert (row["speedup"], row["theory"], row["best vs best"], row["of theoretical"], row["best"]) == (
            r.speedup, r.theoretical_speedup, r.speedup_vs_best_standard, r.fraction_of_theoretical, r.best)
        assert row["memory"] == bench.fmt_bytes(r.peak_memory_bytes) + " (est.)"  # CPU: estimated
    assert [row["speedup"] for row in rows[:2]] == [1.0, 1.0]  # the standard conv against itself
    monkeypatch.setattr(cli_bench, "measure", lambda *a, **k: report)
    assert main(["bench", *CLI_SIZES, "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("conv "))
    assert lines[head].split() == ["conv", "layout", "median_ms", "iqr_ms", "GMAC/s", "speedup", "theory", "best",
                                   "memory"]
    for line, row in zip(lines[head + 2:], rows):
        assert line.startswith(row["conv"]) and row["layout"] in line and line.endswith(row["memory"])
        assert ("*" in line.split(row["layout"])[1]) == row["best"]


@pytest.mark.parametrize("extra,message", [
    (["--conv", "falcon,bogus"], "unknown conv type"),
    (["--dtype", "float16", "--device", "cpu"], "CUDA only"),
])
def test_cli_errors_exit_2(capsys, extra, message):
    assert main(["bench", *CLI_SIZES, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
