"""The reliability gate (falcon/reliability.py) on synthetic timings: each reason fires on its own inconsistency,
consistent figures pass; the CLI's JSON carries the verdict."""
from __future__ import annotations

import copy
import json
import math

import pytest
from conftest import run_cli

from falcon.reliability import (AGREEMENT, SPREAD_LIMIT, assess_layer, assess_model, ceiling_at,
                                others_load_change, relative_spread)


def model_result() -> dict:
    """A consistent whole-model result: MAC ratio 4, eager 10 ms → 4 ms (2.5×), replaced convs 8 of the 10 ms with
    a MAC ratio of 5 (Amdahl ceiling 10 / (2 + 8/5) = 2.78×), parts adding up to the timed medians, a quiet load."""
    def timing(model, layout, median, iqr=0.4, samples=20, runtime="eager"):
        return {"model": model, "role": "original" if model == "original" else "converted", "runtime": runtime,
                "layout": layout, "median_ms": median, "iqr_ms": iqr, "samples": samples, "status": "ok"}

    breakdown = {"layout": "contiguous", "original_total_ms": 10.0, "converted_total_ms": 4.0,
                 "original_ms": {"replaced_convs": 8.0, "unreplaced_convs": 0.5, "bn_act_pool": 1.0, "classifier": 0.3,
                                 "other": 0.2},
                 "original_timed_ms": 10.0, "converted_timed_ms": 4.0, "replaced_mac_ratio": 5.0,
                 "amdahl_ceiling": 10 / (2 + 8 / 5),
                 "layers": [{"name": "features.3", "original_ms": 4.0, "converted_ms": 1.2, "speedup": 4.0 / 1.2,
                             "mac_ratio": 5.0}]}
    return {
        "model": "m", "threads": 2, "seconds": 40.0, "load_average": [0.3, 1.3], "cache_bytes": 32 << 20,
        "original_macs": 4000, "original_deploy": {"weight_bytes": 4 << 20},
        "timings": [timing("original", "contiguous", 10.0), timing("original", "channels_last", 12.0),
                    timing("FALCON k=1", "contiguous", 4.0, 0.2), timing("FALCON k=1", "channels_last", 5.0, 0.2),
                    timing("original", "contiguous", 8.0, runtime="onnxruntime"),
                    timing("FALCON k=1", "contiguous", 3.0, 0.1, runtime="onnxruntime")],
        "conversions": [{
            "label": "FALCON k=1", "conv": "falcon", "macs": 1000, "mac_ratio": 4.0, "deploy": {"weight_bytes": 1 << 20},
            "speedups": [{"runtime": "eager", "layout": "best", "speedup": 2.5, "converted_layout": "contiguous",
                          "converted_ms": 4.0, "original_ms": 10.0},
                         {"runtime": "onnxruntime", "layout": "best", "speedup": 8.0 / 3.0, "converted_layout": "contiguous",
                          "converted_ms": 3.0, "original_ms": 8.0},
                         {"runtime": "any", "layout": "best", "speedup": 10 / 3.0}],
            "breakdown": breakdown}],
    }


def set_speedup(r: dict, runtime: str, converted_ms: float) -> None:
    """Make ``runtime``'s converted model take ``converted_ms`` everywhere the result records it."""
    c = r["conversions"][0]
    s = next(s for s in c["speedups"] if s["runtime"] == runtime)
    old = s["converted_ms"]
    s["converted_ms"], s["speedup"] = converted_ms, s["original_ms"] / converted_ms
    for t in r["timings"]:
        if t["model"] == c["label"] and t["runtime"] == runtime and t["median_ms"] == old:
            t["median_ms"], t["iqr_ms"] = converted_ms, converted_ms * 0.05
    if runtime == "eager":
        c["breakdown"]["converted_timed_ms"] = c["breakdown"]["converted_total_ms"] = converted_ms


def reasons(r: dict) -> list[str]:
    return assess_model(r).reasons


def test_a_consistent_model_result_is_reliable():
    r = model_result()
    v = assess_model(r)
    assert v.reliable and v.reasons == [] and v.as_dict()["reliable"] is True
    eager = v.figure("FALCON k=1, eager")
    assert eager.value == 2.5 and eager.load == 1.3 and eager.group == "FALCON k=1"
    assert eager.spread == pytest.approx(math.hypot(0.4 / 10, 0.2 / 4))  # root-sum-square of IQR / median
    assert [f.name for f in v.figures] == ["FALCON k=1, eager", "FALCON k=1, onnxruntime"]  # not "any"
    assert ceiling_at(r["conversions"][0]["breakdown"]) == pytest.approx(r["conversions"][0]["breakdown"]["amdahl_ceiling"])


def test_a_speedup_above_its_amdahl_ceiling():
    r = model_result()
    set_speedup(r, "eager", 10 / 3.5)  # 3.5×: under 1.25 × the MAC ratio (5×), above 1.1 × the ceiling (3.06×)
    [reason] = reasons(r)
    assert reason.startswith("FALCON k=1, eager: 3.50× is above its Amdahl ceiling 2.78×")


def test_the_issues_resnet18_figures_cannot_all_be_true():
    """resnet18 on a busy machine: 4.92× measured, MAC ratio 4.59×, Amdahl ceiling 2.17×; one layer at 86×."""
    r = model_result()
    c = r["conversions"][0]
    c["mac_ratio"] = 4.59
    c["breakdown"].update(original_ms={**c["breakdown"]["original_ms"], "replaced_convs": 6.0}, replaced_mac_ratio=4.59)
    c["breakdown"]["layers"][0].update(speedup=86.0, mac_ratio=9.0)
    set_speedup(r, "eager", 10 / 4.92)
    assert ceiling_at(c["breakdown"]) == pytest.approx(10 / (4 + 6 / 4.59))
    got = reasons(r)
    assert any("4.92× is above its Amdahl ceiling 1.88×" in x for x in got)
    assert any("layer features.3 ran 86.00× faster for a MAC ratio of 9.00×" in x for x in got)
    assert not assess_model(r).figure("FALCON k=1, eager").reliable
    assert assess_model(r).figure("FALCON k=1, onnxruntime").reliable  # the other runtime's figure is fine


def test_far_above_the_mac_ratio_unless_the_cache_explains_it():
    r = model_result()
    set_speedup(r, "onnxruntime", 8.0 / 5.5)  # 5.5× for a MAC ratio of 4: more than 1.25×
    [reason] = reasons(r)
    assert reason.startswith("FALCON k=1, onnxruntime: 5.50× faster for a MAC ratio of 4.00×: more than 1.25× it")
    # the original's weights do not fit the 32 MiB cache and the converted model's do: a cache effect, up to 3×
    r["original_deploy"]["weight_bytes"] = 64 << 20
    assert reasons(r) == []
    set_speedup(r, "onnxruntime", 8.0 / 13)  # 13×: more than 3× the MAC ratio even so
    assert "even though its weights drop into the last-level cache" in reasons(r)[0]


def test_a_headline_that_disagrees_with_the_sum_of_its_layers():
    """digits-vgg on a busy machine: the timed rounds said 0.08×, the breakdown's parts 1.51×."""
    r = model_result()
    b = r["conversions"][0]["breakdown"]
    b["converted_total_ms"] = 10 / 1.51  # the parts say 1.51×, the timed rounds 2.5×
    [reason] = reasons(r)
    assert "the timed rounds say 2.50× and the sum of the layers' times says 1.51× (eager, NCHW)" in reason
    b["converted_total_ms"] = 4.0 * 1.2  # within 25%
    assert reasons(r) == []


def test_a_spread_too_wide_or_unknown():
    r = model_result()
    r["timings"][2]["iqr_ms"] = 1.2  # the converted eager timing: 30% of its median
    [reason] = reasons(r)
    assert reason == f"FALCON k=1, eager: spread {math.hypot(0.04, 0.3):.0%} (IQR / median of the timings) is above 25%"
    assert relative_spread((4.0, 1.2), (10.0, 0.4)) > SPREAD_LIMIT
    r = model_result()
    r["timings"][0]["samples"] = 1
    assert reasons(r) == ["FALCON k=1, eager: only 1 timed block: too few to know the spread (use more rounds)"]


def test_a_load_that_changed_during_the_run():
    # 60 s with 2 threads of our own lift a quiet 0.5 to about 0.5 + 2 × (1 − e⁻¹) = 1.76: no change of the others
    assert others_load_change([0.5, 1.8], 60, 2) == pytest.approx((1.8 - 0.5 / math.e) / (1 - 1 / math.e) - 2 - 0.5)
    assert abs(others_load_change([0.5, 1.8], 60, 2)) < 0.1
    assert others_load_change([0.5, 3.0], 60, 2) > 1.9  # another process came: about two more runnable threads
    assert others_load_change([3.0, 1.0], 60, 2) < -2  # a competitor left
    assert others_load_change([0.5, 3.0], 5, 2) is None  # too short for the 1-minute average to tell
    r = model_result()
    r.update(load_average=[0.5, 3.0], seconds=60)
    [reason] = reasons(r)
    assert reason.startswith("the machine's load changed during the run (the other processes' load rose by about 2.0")
    assert assess_model(r).figure("FALCON k=1, eager").reliable  # run-wide: in the reasons, not one figure's
    assert not assess_model(r).reliable
    # the samples a worker took while it ran take the place of the result's before/after
    assert assess_model(r, load_samples=[0.5, 1.0, 1.8], seconds=60).reliable


def layer_report(speedup: float = 2.0, iqr: float = 0.02, samples: int = 12) -> dict:
    std = {"conv": "standard", "label": "StConv", "memory_format": "contiguous", "median_ms": 1.0, "iqr_ms": 0.05,
           "samples": 12, "speedup": 1.0, "theoretical_speedup": 1.0}
    falcon = {"conv": "falcon", "label": "FALCON (k=1)", "memory_format": "contiguous", "median_ms": 1.0 / speedup,
              "iqr_ms": iqr, "samples": samples, "speedup": speedup, "theoretical_speedup": 5.76}
    return {"threads": 1, "seconds": 3.0, "load_average": [0.2, 0.3], "results": [std, falcon]}


def test_the_layer_gate():
    v = assess_layer(layer_report())
    assert v.reliable and [f.name for f in v.figures] == ["FALCON (k=1) (contiguous)"]
    assert v.figures[0].spread == pytest.approx(math.hypot(0.05, 0.04))
    [reason] = assess_layer(layer_report(speedup=8.0, iqr=0.005)).reasons
    assert reason == ("FALCON (k=1) (contiguous): 8.00× faster for a MAC ratio of 5.76×: more than 1.25× it, and "
                      "nothing the result records (the cache) explains that")
    assert "spread" in assess_layer(layer_report(iqr=0.2)).reasons[0]
    assert "only 2 timed blocks" in assess_layer(layer_report(samples=2)).reasons[0]


def test_the_cli_json_carries_the_verdict():
    out = run_cli("bench", "-M", "8", "-N", "8", "-D", "3", "-H", "8", "-B", "1", "--conv", "standard,falcon",
                  "--memory-format", "contiguous", "--rounds", "2", "--min-run-time", "0.01", "--threads", "1",
                  "--device", "cpu", "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data["reliable"], bool) and isinstance(data["unreliable_reasons"], list)
    again = assess_layer(copy.deepcopy(data))
    assert (data["reliable"], data["unreliable_reasons"]) == (again.reliable, again.reasons)
    assert data["figures"][0]["name"] == "FALCON (k=1) (contiguous)" and data["seconds"] > 0
    assert AGREEMENT == 1.25  # the documented thresholds


@pytest.mark.slow
def test_the_model_cli_json_carries_the_verdict():
    out = run_cli("bench", "--model", "digits-vgg", "--rounds", "1", "--min-run-time", "0.01", "--threads", "1",
                  "--memory-format", "contiguous", "--no-breakdown", "--device", "cpu", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    again = assess_model(copy.deepcopy(data))
    assert (data["reliable"], data["unreliable_reasons"]) == (again.reliable, again.reasons)
    assert [f["name"] for f in data["figures"]] == ["FALCON k=1, eager"]
