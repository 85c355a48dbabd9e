"""The other processes' CPU use, measured (falcon/cpuload.py), and the reliability gate's load-change reason from it:
synthetic samples for the verdicts, a real busy-loop process for the counters."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from test_reliability import model_result

from falcon.cpuload import (
    Sampler,
    cpu_sample,
    others_cores,
    process_cpu_seconds,
    windows,
)
from falcon.reliability import assess_model, load_change_limit, others_cores_change

linux = pytest.mark.skipif(cpu_sample() is None, reason="needs Linux's /proc CPU counters")


def samples(others: list[float], own: float | list[float] = 2.0) -> list[list[float]]:
    """One sample a second: the others keep ``others[i]`` cores busy in second ``i``, the measurement ``own`` (or
    ``own[i]``)."""
    out, machine, mine = [[100.0, 5000.0, 10.0]], 5000.0, 10.0
    for i, o in enumerate(others):
        mi = own[i] if isinstance(own, list) else own
        machine, mine = machine + o + mi, mine + mi
        out.append([101.0 + i, machine, mine])
    return out


def test_others_cores_and_windows():
    a, b = [10.0, 100.0, 5.0], [14.0, 108.0, 11.0]  # 8 busy CPU seconds in 4 s, 6 of them ours: 0.5 core of others
    assert others_cores(a, b) == pytest.approx(0.5)
    s = samples([0.2] * 7 + [1.5] * 5 + [0.2] * 3)  # 15 s: windows 0–5, 5–10, 10–15
    w = windows(s, 5.0)
    assert [(round(x), round(y)) for x, y, _ in w] == [(0, 5), (5, 10), (10, 15)]
    assert [c for _, _, c in w] == pytest.approx([0.2, (2 * 0.2 + 3 * 1.5) / 5, (2 * 1.5 + 3 * 0.2) / 5])
    assert windows(samples([0.3] * 12), 5.0)[-1][:2] == pytest.approx((5, 12))  # a 2-s tail joins the last window
    assert windows(samples([0.3] * 3), 5.0) == [(0.0, 3.0, pytest.approx(0.3))]  # shorter than a window: one
    assert others_cores_change(samples([0.3] * 3)) is None  # nothing to compare


def test_a_quiet_machine_is_reliable_whatever_the_load_average_does():
    # the case: 25 s, 2 threads, the load average 0.76 → 1.04 (still decaying from an earlier busy period),
    # which the load-average inference reads as "the others' load fell by about 1.2 runnable threads"
    r = model_result()
    r.update(load_average=[0.76, 1.04], seconds=25, threads=2)
    assert not assess_model(r).reliable  # without CPU samples (old results): the fallback's inference
    # the measured truth: the others kept a steady 0.3 core while the measurement went 1 → 2 → 1 cores
    cpu = samples([0.3] * 25, own=[1.0] * 5 + [2.0] * 15 + [0.5] * 5)  # worker start, rounds, profiler
    assert assess_model(r, cpu_samples=cpu).reliable
    r["cpu_samples"] = samples([0.25, 0.35] * 12)
    verdict = assess_model(r)
    assert verdict.reliable and verdict.load == [0.76, 1.04]  # the load average is still shown


def test_a_burst_of_another_process_mid_run_is_unreliable():
    r = model_result()
    r.update(load_average=[0.5, 1.3], seconds=30, threads=2)  # the load average alone would pass it
    assert assess_model(r).reliable
    r["cpu_samples"] = samples([0.2] * 10 + [1.6] * 10 + [0.2] * 10)
    assert others_cores_change(r["cpu_samples"]) == pytest.approx((0.2, 1.6))
    [reason] = assess_model(r).reasons
    assert reason.startswith("the machine's load changed during the run (other processes used 0.2 → 1.6 cores, "
                             "in 5-s intervals over 30 s; load average 0.5 → 1.3)")
    r["cpu_samples"] = samples([1.8] * 10 + [0.4] * 20)  # a competitor that left counts too
    assert "other processes used 1.8 → 0.4 cores" in assess_model(r).reasons[0]
    r["cpu_samples"] = samples([0.2] * 10 + [1.0] * 20)  # 0.8 core more: within one core on 4 cores or more
    r["cpu_count"] = 8
    assert assess_model(r).reliable and load_change_limit(8) == 1.0
    # on 2 cores a whole competing thread shows as 2/3 core beside 2 measuring threads: a quarter of the cores
    r["cpu_count"] = 2
    assert load_change_limit(2) == 0.5 and not assess_model(r).reliable
    r["cpu_samples"] = samples([0.67] * 10 + [1.0] * 20, own=[2.0] * 10 + [1.0] * 20)  # a steady competitor
    assert assess_model(r).reliable


@linux
def test_a_busy_loop_shows_as_the_others_cores():
    """A sleeping process stands for the measurement; a busy loop started a second into a 3.5-s window must show
    as about one more core of the other processes (asserted > 0.5: the machine is shared)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    busy = None
    try:
        time.sleep(0.3)
        sampler = Sampler(pid=sleeper.pid, every=0.0)
        time.sleep(1.5)
        sampler.tick()
        busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 10: pass"])
        time.sleep(0.5)
        sampler.tick()
        time.sleep(2.0)
        sampler.finish()
        quiet_s, start_s, busy_s = sampler.samples[0], sampler.samples[1], sampler.samples[-1]
        rise = others_cores(sampler.samples[2], busy_s) - others_cores(quiet_s, start_s)
        assert rise > 0.5, sampler.samples
        assert busy_s[2] - quiet_s[2] < 0.2  # the sleeper itself used (almost) nothing
    finally:
        for p in (busy, sleeper):
            if p is not None:
                p.kill()
                p.wait()


@linux
def test_a_processes_own_children_count_as_its_own():
    before = process_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    try:
        time.sleep(1.2)
        assert process_cpu_seconds() - before > 0.5  # the live child's CPU seconds are ours
    finally:
        child.wait()


def test_the_busy_note_is_measured_when_samples_exist():
    """The bench's busy note: from the cores other processes kept busy during the run when the samples exist (a
    quiet run with a high load average gets none; others using a core beside 2 threads on 2 CPUs get one), from
    the load average before the run otherwise."""
    import os

    import torch

    from falcon.bench import busy_notes

    cpu = torch.device("cpu")
    cores = os.cpu_count()
    quiet = [[0.0, 100.0, 50.0], [20.0, 100.0 + 20 * cores, 50.0 + 20 * cores]]  # all the busy time was ours
    crowded = [[0.0, 100.0, 50.0], [20.0, 100.0 + 20 * cores, 50.0 + 20 * (cores - 1.0)]]  # others: 1 core
    assert busy_notes(cpu, cores, load_before=cores + 3.0, cpu_samples=quiet) == []
    note = busy_notes(cpu, cores, load_before=0.0, cpu_samples=crowded)
    assert len(note) == 1 and "kept 1.0 cores busy" in note[0]
    assert busy_notes(cpu, cores, load_before=cores + 3.0) and not busy_notes(cpu, cores, load_before=0.0)
