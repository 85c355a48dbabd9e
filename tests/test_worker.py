"""Measurements in a worker process (falcon/worker.py): estimated and refused up front, stopped within a second
whatever kernel runs (the process is gone), one at a time, owned by a session."""
from __future__ import annotations

import os
import time

import pytest
import torch

import fake_measure
from falcon.bench import BenchEntry, bench_entries, measure
from falcon.errors import FalconError
from falcon.spec import LayerSpec
from falcon.worker import (MAX_SECONDS, STOP_GRACE_S, MeasurementQueue, WorkerTask, estimate_layer, estimate_model,
                           machine_rate)

BIG = LayerSpec(1024, 1024, 3, 256)  # the layer: minutes per pass on a CPU, gigabytes


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_estimate_follows_the_macs_and_the_rate():
    rate = machine_rate("cpu")
    assert rate.gmacs > 0 and rate.gbytes > 0 and machine_rate("cpu") is rate  # calibrated once per process
    e = estimate_layer(BIG, ["standard", "falcon"], batch_size=8, memory_format="auto", rounds=3, min_run_time=0.1,
                       device="cpu")
    # at least the standard conv's warm-up and timed calls (3 + 2 per round, two layouts) at the calibrated rate
    std_macs = 1024 * 1024 * 9 * 256 * 256 * 8
    assert BenchEntry("standard", "standard", ()).macs(BIG, 8) == std_macs
    assert e.seconds >= 2 * (3 + 2 * 3) * std_macs / rate.scaled(None)[0]
    assert e.peak_bytes >= 2 * 8 * 1024 * 256 * 256 * 4  # an input per layout
    assert e.refused and e.too_long
    small = estimate_layer(LayerSpec(16, 16, 3, 8), ["standard", "falcon"], 1, "contiguous", 1, 0.01, device="cpu")
    assert not small.refused and small.seconds < 30 and small.refusal() is None
    # more rounds take longer: each adds a visit of at least the min run time per block
    longer = estimate_layer(LayerSpec(16, 16, 3, 8), ["standard", "falcon"], 1, "contiguous", 11, 0.01, device="cpu")
    assert longer.seconds - small.seconds >= 10 * 2 * 0.01


def test_a_job_over_the_limit_is_refused_up_front_with_its_estimate():
    e = estimate_layer(BIG, ["standard", "falcon"], 8, "auto", 3, 0.1, device="cpu")
    q = MeasurementQueue()
    task = WorkerTask(measure, dict(spec=BIG, convs=["standard", "falcon"], batch_size=8, device="cpu"))
    with pytest.raises(FalconError) as info:
        q.submit("A", task, e)
    message = str(info.value)
    assert e.describe() in message and f"the limit is {MAX_SECONDS / 60:.0f} min" in message
    assert "use a smaller input size H, batch size or channel count" in message and "\n" not in message
    assert q.job("A") is None and q.running() is None  # nothing was started
    tight = estimate_layer(LayerSpec(16, 16, 3, 8), ["standard"], 1, "contiguous", 1, 0.01, device="cpu",
                           max_seconds=0.001)
    with pytest.raises(FalconError, match="is refused: it would take about"):
        q.submit("A", WorkerTask(measure, {}), tight)


def busy(monkeypatch, factor: float | None) -> None:
    """Fake how busy the machine is now: the probe's calls take ``factor`` × the best time (None: the real probe)."""
    import falcon.worker as w

    w._SLOWDOWN.clear()
    if factor is not None:
        best = w.CALIBRATION_MACS / (machine_rate("cpu").gmacs * 1e9)
        monkeypatch.setattr(w, "_probe_times", lambda dev, seconds: [factor * best] * 5)


def test_estimates_follow_how_busy_the_machine_is(monkeypatch):
    """A busy machine gives a measurement only its share: the calls' seconds grow by the probe's slowdown (the
    calibration conv's median time now over its best), the worker's start and a visit's wall-clock minimum do not."""
    import falcon.worker as w

    machine_rate("cpu")
    monkeypatch.setattr(w, "_RATES", dict(w._RATES))  # the fake probes below change a copy of the rate
    spec, rounds = LayerSpec(256, 256, 3, 32), 2  # every call (FALCON: 70 M MACs) longer than the 1 ms min run time
    args = (spec, ["standard", "falcon"], 1, "contiguous", rounds, 0.001)
    busy(monkeypatch, 1.0)
    quiet = estimate_layer(*args, device="cpu", threads=1)
    busy(monkeypatch, 2.5)
    loaded = estimate_layer(*args, device="cpu", threads=1)
    assert quiet.slowdown == 1.0 and loaded.slowdown == pytest.approx(2.5)
    # per call: 3 warm-ups + rounds × (2 calls + 2 ms): all but the worker's start and the 2 ms scale by 2.5
    fixed = w.WORKER_START_S + 2 * rounds * 0.002
    assert loaded.seconds - fixed == pytest.approx(2.5 * (quiet.seconds - fixed), rel=1e-6)
    assert "(2.5× for the load now)" in loaded.describe() and "load now" not in quiet.describe()
    # the case: resnet18 on a machine running it at half speed took about twice the quiet estimate
    busy(monkeypatch, 1.0)
    model_quiet = estimate_model("resnet18", [("falcon", {"rank": 1})], device="cpu")
    busy(monkeypatch, 2.0)
    model_busy = estimate_model("resnet18", [("falcon", {"rank": 1})], device="cpu")
    assert model_busy.slowdown == 2.0
    # the passes take twice as long, a visit's wall-clock minimum does not: more, but under 2× (how much more
    # depends on this machine's rate: a fast machine's passes are short beside the fixed visits)
    assert model_quiet.seconds < model_busy.seconds < 2.0 * model_quiet.seconds
    # a probe faster than the calibration improves the rate (the machine at a quieter moment); never below 1×
    before = machine_rate("cpu").gmacs
    busy(monkeypatch, 0.5)
    assert w.busy_factor("cpu") == 1.0 and machine_rate("cpu").gmacs == pytest.approx(2 * before)
    # never a probe while a worker of this process measures (it would disturb the timings): the last answer stands
    busy(monkeypatch, 3.0)
    assert w.busy_factor("cpu") == pytest.approx(3.0)
    monkeypatch.setattr(w, "_LIVE", {object()})
    monkeypatch.setattr(w, "_probe_times", lambda dev, seconds: pytest.fail("probed during a measurement"))
    monkeypatch.setattr(w, "PROBE_EVERY_S", 0.0)
    assert w.busy_factor("cpu") == pytest.approx(3.0)
    # the real probe: at least 1×, probed once per PROBE_EVERY_S
    busy(monkeypatch, None)
    monkeypatch.undo()
    w._SLOWDOWN.clear()
    first = w.busy_factor("cpu")
    assert first >= 1.0 and w.busy_factor("cpu") == first


def test_model_estimates_grow_with_the_model():
    small = estimate_model("digits-vgg", [("falcon", {"rank": 1})], device="cpu")
    big = estimate_model("resnet18", [("falcon", {"rank": 1})], device="cpu")
    assert 0 < small.seconds < big.seconds and small.peak_bytes < big.peak_bytes
    compiled = estimate_model("resnet18", [("falcon", {"rank": 1})], runtimes=("eager", "compile"), device="cpu")
    assert compiled.seconds > big.seconds


def test_stop_kills_a_running_kernel_and_others_cannot_touch_the_job():
    """The issue's 1024→1024, 3×3, 256×256 layer (batch 1, one layout): one standard conv takes many seconds here.
    Stop during it ends the worker within 2 s; its process is gone. Meanwhile session B sees "machine busy" only,
    cannot read or stop A's job, and its own job waits in line."""
    q = MeasurementQueue()
    task = WorkerTask(measure, dict(spec=BIG, convs=["standard"], batch_size=1, memory_format="contiguous", rounds=1,
                                    min_run_time=0.1, device="cpu", threads=1))
    job = q.submit("A", task, check=False)
    wait_until(lambda: job.pid is not None and job.label.startswith("measuring"), 120)
    pid = job.pid
    time.sleep(1.0)  # building the blocks, or inside the first warm-up call (a kill: see the stubborn worker below)
    assert job.running and job.progress == 0.0 and not gone(pid)
    # another session
    with pytest.raises(FalconError, match="another session"):
        q.job("B", job.id)
    with pytest.raises(FalconError, match="another session"):
        q.stop("B", job.id)
    assert q.job("B") is None and job.running and not job.should_stop()
    busy = q.busy("B")
    assert busy.startswith("machine busy (a measurement by another session, ~") and busy.endswith(" left)")
    assert q.busy("A") is None
    waiting = q.submit("B", WorkerTask(fake_measure.patient, {"seconds": 600}), check=False)
    assert waiting.queued and waiting.position == 1 and waiting.label.startswith("waiting: 1st in line")
    with pytest.raises(FalconError, match="already have a measurement"):
        q.submit("B", WorkerTask(fake_measure.patient, {}), check=False)
    # A stops its own job: killed in the kernel
    t0 = time.perf_counter()
    q.stop("A", job.id)
    assert job.wait(5)
    took = time.perf_counter() - t0
    assert took < 2.0 and job.status == "stopped" and job.error is None
    assert job.result is None or job.result.stopped  # killed in a kernel, or it saw the stop between two steps
    assert gone(pid)
    # B's job runs next, and stops within the grace when it can (it checks between steps): its own result
    wait_until(lambda: waiting.pid is not None and waiting.label == "waiting", 120)
    t0 = time.perf_counter()
    waiting.stop()
    assert waiting.wait(5) and time.perf_counter() - t0 < STOP_GRACE_S + 1.0
    assert waiting.result == "stopped" and waiting.status == "stopped"


def test_stubborn_workers_are_killed_and_gone_owners_ended():
    q = MeasurementQueue(owner_timeout=5.0)  # generous: a loaded CI machine can stall this test for a second
    job = q.submit("A", WorkerTask(fake_measure.stubborn, {"seconds": 600}), check=False)
    wait_until(lambda: job.label == "in a long kernel", 120)
    pid = job.pid
    q.seen("A")
    time.sleep(0.3)
    assert job.running
    # A stops polling: after owner_timeout its job is ended, though the worker never checks should_stop
    assert job.wait(5.0 + STOP_GRACE_S + 5.0)
    assert job.status == "stopped" and "its session ended" in job.label and gone(pid)
    # a session the app knows to be closed: ended once it has stayed closed for the grace (ABSENT_GRACE_S)
    closed = MeasurementQueue(alive=lambda owner: owner != "C")
    queued = closed.submit("C", WorkerTask(fake_measure.patient, {}), check=False)
    assert queued.wait(10) and queued.status == "stopped"


def test_a_worker_measures_and_sends_the_report_back():
    q = MeasurementQueue()
    spec = LayerSpec(8, 8, 3, 8)
    job = q.submit("A", WorkerTask(measure, dict(spec=spec, convs=["standard", "falcon"], batch_size=1,
                                                 memory_format="contiguous", rounds=1, min_run_time=0.01,
                                                 device="cpu", threads=1)), check=False)
    assert job.wait(120) and job.status == "completed", job.error
    report = job.result
    assert [r.conv for r in report.results] == ["standard", "falcon"] and report.threads == 1
    assert report.results[1].theoretical_speedup == bench_entries(spec, ["falcon"])[1].theoretical_speedup(spec)
    assert job.loads and job.progress == 1.0 and job.seconds > 0
    assert torch.get_num_threads() >= 1  # this process's torch settings were not touched by the worker
    # errors come back as one line
    bad = q.submit("A", WorkerTask(measure, dict(spec=spec, convs=["nope"], device="cpu")), check=False)
    assert bad.wait(120) and bad.status == "failed" and bad.error.startswith("unknown conv type 'nope'")


def test_one_measurement_at_a_time_across_processes(tmp_path, monkeypatch):
    """Another process on this machine holds the measurement lock (a second app server): a job waits in line and
    says why, and starts once that process lets go (here: exits, as a killed server would)."""
    import subprocess
    import sys

    lock = tmp_path / "shared.lock"
    monkeypatch.setenv("FALCON_MEASURE_LOCK", str(lock))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.readline()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        q = MeasurementQueue()
        job = q.submit("A", WorkerTask(fake_measure.patient, {"seconds": 0.2}), check=False)
        deadline = time.monotonic() + 10
        while "another FALCON Explorer process" not in (job.label or "") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.queued and "another FALCON Explorer process on this machine" in job.label
        assert not job.ran
    finally:
        holder.stdin.close()  # the holder reads EOF and exits: the kernel releases its lock
        holder.wait(10)
    assert job.wait(60) and job.status == "completed", (job.status, job.error)
