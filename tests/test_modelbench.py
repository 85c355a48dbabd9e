"""The whole-model benchmark: what its results record, its guards, runtimes that cannot run, parity, progress and
stop, the breakdown. No timed assertions (the machines are shared and noisy): behaviour only, on small models
(digits-vgg, vgg19-cifar at 32×32), batch 1, one round of short blocks."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from falcon import modelbench
from falcon.errors import FalconError
from falcon.export import Parity
from falcon.modelbench import CATEGORIES, measure_model, parse_conversions, profile_model, runtime_info

FAST = dict(batch_size=1, device="cpu", threads=1, rounds=1, min_run_time=0.01)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits_result():
    return measure_model("digits-vgg", conv="falcon", rank=2, runtimes=("eager",), breakdown=True, **FAST)


def test_both_models_eager_both_layouts_with_what_was_measured(digits_result):
    r = digits_result
    assert {(t.model, t.layout) for t in r.timings if t.runtime == "eager"} == {
        ("original", "contiguous"), ("original", "channels_last"), ("FALCON k=2", "contiguous"),
        ("FALCON k=2", "channels_last")}
    for t in r.timings:
        assert t.status == "ok" and t.median_ms > 0 and t.iqr_ms >= 0 and t.samples >= 1
        assert t.relative_error is not None and t.relative_error <= 1e-3
    assert r.device == "cpu" and r.threads == 1 and r.torch_version == torch.__version__
    assert r.device_name and r.cpu_count
    assert [(i.name, i.available, i.version) for i in r.runtimes] == [("eager", True, f"torch {torch.__version__}")]
    c = r.conversion
    assert c.conv == "falcon" and c.hparams == {"rank": 2} and c.init == "svd" and c.replaced_layers == 5
    assert c.mac_ratio > 1 and r.original_macs > c.macs
    assert c.deploy["fused_falcon"] == 5 and c.deploy["folded_bn"] == 5 and r.original_deploy["folded_bn"] == 5
    assert c.best["runtime"] == "eager" and c.best["speedup"] > 0
    assert c.speedup("eager") == c.best["speedup"]
    d = r.as_dict()
    json.dumps(d, allow_nan=False)
    assert d["conversions"][0]["breakdown"]["amdahl_ceiling"] > 0
    assert d["runtimes"][0]["version"].startswith("torch")


def test_breakdown_parts_cover_every_category_and_the_replaced_layers(digits_result):
    b = digits_result.conversion.breakdown
    assert set(b.original_ms) == set(CATEGORIES) == set(b.converted_ms)
    assert b.original_ms["replaced_convs"] > 0 and b.converted_ms["replaced_convs"] > 0
    assert b.original_ms["classifier"] > 0 and b.original_ms["bn_act_pool"] > 0
    assert abs(sum(b.original_ms.values()) - b.original_total_ms) < 1e-6
    assert [lt.name for lt in b.layers] == ["features.0", "features.3", "features.7", "features.10", "features.14"]
    assert all(lt.mac_ratio and lt.speedup for lt in b.layers)
    assert 1 < b.replaced_mac_ratio and 1 < b.amdahl_ceiling < b.replaced_mac_ratio
    assert "MAC ratio" in b.explanation and "\n" not in b.explanation


def test_breakdown_adds_up_to_the_unprofiled_total_within_ten_percent():
    """The parts (profiler overhead calibrated and removed) against unprofiled passes interleaved with them. On a
    shared machine one burst of another process can spoil one try: up to three tries."""
    prepared = modelbench.prepare_models("vgg19-cifar", conv="falcon")
    x = torch.randn(1, 3, 32, 32)
    from falcon.export import deploy_form

    for pm in (prepared.original, prepared.converted[0]):
        module, _ = deploy_form(pm.module, x)
        ratios = []
        for _ in range(3):
            p = profile_model(module, x, prepared.converted[0].replaced, 40, torch.device("cpu"))
            assert abs(sum(p.categories.values()) - p.total_ms) < 1e-6
            ratios.append(p.total_ms / p.unprofiled_ms)
            if abs(ratios[-1] - 1) <= modelbench.BREAKDOWN_TOLERANCE:
                break
        assert abs(ratios[-1] - 1) <= modelbench.BREAKDOWN_TOLERANCE, (pm.label, ratios)


@pytest.mark.parametrize("model,size,batch", [("resnet18", 4096, 4096), ("vgg11", 2048, 4096)])
def test_a_terabyte_configuration_is_refused_fast_in_one_line(model, size, batch):  # within falcon.limits' bounds
    t0 = time.perf_counter()
    with pytest.raises(FalconError) as e:
        measure_model(model, batch_size=batch, input_size=size, device="cpu", threads=1)
    assert time.perf_counter() - t0 < 5
    message = str(e.value)
    assert message.startswith("not enough memory") and "TiB" in message and "\n" not in message


def test_a_batch_beyond_the_limit_is_refused_before_planning():
    with pytest.raises(FalconError, match=r"^batch size must be an integer in 1\.\.4096 \(.*\); got 1000000$"):
        measure_model("resnet18", batch_size=10**6, device="cpu", threads=1)


def test_an_unavailable_runtime_is_one_line_and_the_rest_is_measured(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    info = runtime_info("onnxruntime", torch.device("cpu"))
    assert not info.available and "not installed" in info.reason and "\n" not in info.reason
    r = measure_model("digits-vgg", conv="falcon", runtimes=("eager", "onnxruntime"), breakdown=False, **FAST)
    assert [t.runtime for t in r.timings] == ["eager"] * 4
    assert any("onnxruntime unavailable" in n for n in r.notes)
    assert next(i for i in r.runtimes if i.name == "onnxruntime").available is False


def test_compile_without_a_cpp_compiler_is_one_line(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    info = runtime_info("compile", torch.device("cpu"))
    assert not info.available and "C++ compiler" in info.reason and "\n" not in info.reason


def test_unknown_runtime_and_conv_are_user_errors():
    with pytest.raises(FalconError, match="unknown runtime"):
        measure_model("digits-vgg", runtimes=("tensorrt",), **FAST)
    with pytest.raises(FalconError):
        measure_model("digits-vgg", conv="nope", **FAST)
    with pytest.raises(FalconError, match="width"):
        parse_conversions([("shuffle", {"width_mult": 2.0})])


def test_a_runtime_beyond_the_tolerance_is_failed_not_timed(monkeypatch):
    real, calls = modelbench.tasks.parity, []

    def spoiled(reference, output, tolerance=1e-3):  # the third entry: the converted model, contiguous
        calls.append(1)
        p = real(reference, output, tolerance)
        return Parity(p.max_abs_error + 1.0, 0.5, tolerance) if len(calls) == 3 else p

    monkeypatch.setattr(modelbench.tasks, "parity", spoiled)  # where the tasks are checked
    r = measure_model("digits-vgg", conv="falcon", runtimes=("eager",), breakdown=False, **FAST)
    failed = [t for t in r.timings if t.status == "failed"]
    assert len(failed) == 1 and failed[0].median_ms is None and failed[0].samples == 0
    assert failed[0].relative_error == 0.5 and "not timed" in failed[0].message
    assert sum(t.status == "ok" for t in r.timings) == 3


def test_progress_goes_up_to_one_and_stop_returns_what_there_is():
    seen = []
    r = measure_model("digits-vgg", conv="falcon", breakdown=False, progress=lambda f, m: seen.append((f, m)), **FAST)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and all(isinstance(m, str) for _, m in seen)
    assert not r.stopped
    calls = []
    r = measure_model("digits-vgg", conv="falcon", should_stop=lambda: calls.append(1) is None and len(calls) > 8,
                      **FAST)
    assert r.stopped and r.conversion.breakdown is None


def test_several_conversions_share_one_original():
    r = measure_model("digits-vgg", conv=["falcon", ("falcon", {"rank": 2}), "dsconv", "mobilev2"], breakdown=False,
                      memory_format="channels_last", **FAST)
    assert [c.label for c in r.conversions] == ["FALCON k=1", "FALCON k=2", "DSConv k=1", "MobileConvV2 (t=0.5)"]
    assert sum(t.model == "original" for t in r.timings) == 1
    assert all(c.best is not None for c in r.conversions)
    assert r.conversions[3].init == "random" and any("not fittable" in n for n in r.notes)


def test_onnxruntime_runtime_is_measured_and_checked():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    r = measure_model("digits-vgg", conv="falcon", runtimes=("onnxruntime",), breakdown=False, **FAST)
    assert [(t.model, t.runtime, t.status) for t in r.timings] == [("original", "onnxruntime", "ok"),
                                                                   ("FALCON k=1", "onnxruntime", "ok")]
    assert all(t.relative_error < 1e-3 for t in r.timings)
    assert r.runtimes[0].version.startswith("onnxruntime ")


def test_models_built_elsewhere_are_measured_as_given():
    """prepared_from_modules: a conversion made (and e.g. fine-tuned) elsewhere is timed as it is, not rebuilt."""
    from falcon.conversion import convert_model
    from falcon.sources import load_model

    loaded = load_model("digits-vgg", None)
    done = convert_model(loaded, "falcon", 2, "svd")
    prepared = modelbench.prepared_from_modules("digits-vgg", loaded.model, [
        ("falcon", {"rank": 2}, done.model, [layer.name for layer in done.layers])], loaded.input_size,
        weights="trained", init="trained")
    assert prepared.converted[0].module is done.model
    r = measure_model(prepared=prepared, runtimes=("eager",), breakdown=False, **FAST)
    assert r.model == "digits-vgg" and r.weights == "trained"
    assert [c.label for c in r.conversions] == ["FALCON k=2"]
    assert r.conversion.replaced_layers == len(done.layers) and r.conversion.init == "trained"
    assert r.conversion.mac_ratio > 1
    assert all(t.status == "ok" for t in r.timings)
    with pytest.raises(FalconError, match="C, H, W"):
        modelbench.prepared_from_modules("x", loaded.model, [], (28, 28))


def test_a_speedup_above_the_mac_ratio_is_explained_by_mac_rates_and_the_cache(digits_result):
    import copy as _copy

    r = _copy.deepcopy(digits_result)
    c = r.conversion
    assert c.deploy["weight_bytes"] > 0 and r.original_deploy["weight_bytes"] > c.deploy["weight_bytes"]
    assert modelbench._why_above(r, c) == "" or c.best["speedup"] > c.mac_ratio
    o_ms = 10.0
    c.best = {"runtime": "onnxruntime", "layout": "contiguous", "original_ms": o_ms,
              "converted_ms": o_ms / (c.mac_ratio * 1.2), "speedup": c.mac_ratio * 1.2}
    r.original_deploy["weight_bytes"], c.deploy["weight_bytes"], r.cache_bytes = 80 << 20, 10 << 20, 32 << 20
    why = modelbench._why_above(r, c)
    rate_o, rate_c = r.original_macs / (o_ms * 1e6), c.macs / (c.best["converted_ms"] * 1e6)
    assert f"{rate_c:.1f} GMAC/s" in why and f"{rate_o:.1f} GMAC/s" in why
    assert "do not fit" in why and "32.0 MiB" in why
    assert any(line.strip() == why for line in r.summary_lines())
    r.cache_bytes = 1 << 30  # everything fits: no cache story, the sizes only
    assert "do not fit" not in modelbench._why_above(r, c)
    c.best["speedup"] = c.mac_ratio * 0.9
    assert modelbench._why_above(r, c) == ""


def test_last_level_cache_is_read_or_none():
    n = modelbench.last_level_cache_bytes(torch.device("cpu"))
    assert n is None or n >= 1 << 16


def test_cli_json_and_text():
    cmd = [sys.executable, "-m", "falcon.modelbench", "--model", "digits-vgg", "--conv", "falcon", "--rank", "1",
           "--threads", "1", "--rounds", "1", "--min-run-time", "0.01", "--memory-format", "contiguous"]
    done = subprocess.run([*cmd, "--json", "--no-breakdown"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["model"] == "digits-vgg" and d["conversions"][0]["best"]["speedup"] > 0
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "where the time goes" in done.stdout and "MAC ratio" in done.stdout and "Amdahl ceiling" in done.stdout
    done = subprocess.run([*cmd, "--batch-size", "4096", "--input-size", "4096"], capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in done.stderr.splitlines() if " site-packages/torch/" not in line]  # torch's own warnings
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: not enough memory")
    done = subprocess.run([*cmd, "--batch-size", str(10**8)], capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if " site-packages/torch/" not in line]
    assert done.returncode == 2 and len(lines) == 1 and "--batch-size/-B: must be an integer in 1..4096" in lines[0]


def test_the_library_does_not_import_streamlit():
    code = "import sys, falcon.modelbench, falcon.export; assert 'streamlit' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


def test_the_profilers_native_lines_do_not_reach_stderr(capfd):
    """torch's native tracer writes "USDT: ... profiler_start/stop" to file descriptor 2: muted inside the profile
    block only, so a CLI's own messages still get through."""
    import os

    from falcon.modelbench.profile import quiet_profile

    os.write(2, b"before\n")
    with quiet_profile(record_shapes=False):
        torch.ones(3).add_(1)
        os.write(2, b"inside\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "before" in err and "after" in err and "inside" not in err and "USDT" not in err
