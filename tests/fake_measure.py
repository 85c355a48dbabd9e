"""Stand-ins for the measurement functions, importable by a worker process (tests/ is on its sys.path too):
a measurement that waits until it is asked to stop, one that never checks, and a whole-model result whose
figures cannot all be true (the issue's resnet18 on a busy machine)."""
from __future__ import annotations

import time


def patient(seconds: float = 600.0, progress=None, should_stop=None) -> str:
    """Reports progress and checks should_stop every 50 ms: a measurement between two timings."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if should_stop():
            return "stopped"
        progress(min((time.perf_counter() - t0) / seconds, 1.0), "waiting")
        time.sleep(0.05)
    return "finished"


def stubborn(seconds: float = 600.0, progress=None, should_stop=None) -> str:
    """Never checks should_stop: a kernel that runs for minutes."""
    progress(0.1, "in a long kernel")
    time.sleep(seconds)
    return "finished"


def inconsistent_model_result(model=None, progress=None, should_stop=None, **kwargs):
    """A ModelBenchResult as digits-vgg's measurement would give it, with resnet18's busy-machine figures: a 4.92×
    eager speedup for a 4.59× MAC ratio and a 2.17× Amdahl ceiling, one layer 86× faster for 9× fewer MACs."""
    from falcon.modelbench import Breakdown, Conversion, LayerTime, ModelBenchResult, RuntimeInfo, Timing

    progress(0.5, "pretending")
    parts = {"replaced_convs": 6.9, "unreplaced_convs": 0.4, "bn_act_pool": 1.5, "classifier": 0.4, "other": 0.8}
    conv_parts = {**parts, "replaced_convs": 6.9 / 4.59}
    conv_total = sum(conv_parts.values())
    b = Breakdown("contiguous", 50, parts, conv_parts, 10.0, conv_total, 10.0, conv_total, 10.0, 10 / 4.92,
                  [LayerTime("features.3", 4.3, 0.05, 86.0, 9.0)], 4.59, 4.59, 10 / (3.1 + 6.9 / 4.59))
    c = Conversion("FALCON k=1", "falcon", {"rank": 1}, 1000, 4.59, 5, "svd", 0.1,
                   speedups=[{"runtime": "eager", "layout": "best", "speedup": 4.92, "converted_layout": "contiguous",
                              "converted_ms": 10 / 4.92, "original_ms": 10.0}],
                   best={"runtime": "eager", "layout": "contiguous", "speedup": 4.92, "converted_ms": 10 / 4.92,
                         "original_ms": 10.0}, breakdown=b)
    return ModelBenchResult(
        model="digits-vgg", weights="bundled", input_size=[1, 28, 28], batch_size=1, device="cpu",
        device_name="test CPU", threads=1, torch_version="2.x", cpu_count=2, rounds=1, min_run_time=0.01,
        memory_formats=["contiguous"], runtimes=[RuntimeInfo("eager", True, "torch 2.x")], original_macs=4590,
        conversions=[c],
        timings=[Timing("original", "original", "eager", "contiguous", median_ms=10.0, iqr_ms=0.3, samples=30),
                 Timing("FALCON k=1", "converted", "eager", "contiguous", median_ms=10 / 4.92, iqr_ms=0.05,
                        samples=30)],
        load_average=[0.4, 0.5], seconds=2.0)
