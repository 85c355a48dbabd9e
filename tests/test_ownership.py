"""Jobs owned by the session that started them (falcon/ownership.py, issue #20): another session learns only that
the machine is busy, cannot read or stop the job, cannot start a second one; a job whose session is gone is ended."""
from __future__ import annotations

import time

import pytest

from falcon.errors import FalconError
from falcon.jobs import Job
from falcon.ownership import OwnedSlot, Owners, fmt_left, left_seconds


def looping(job: Job) -> str:
    """A job that reports progress and runs until it is asked to stop."""
    step = 0
    while not job.should_stop():
        step += 1
        job.report(min(step / 1000, 0.5), f"step {step}")
        time.sleep(0.01)
    return "stopped"


def test_others_see_busy_only_and_cannot_stop_or_start():
    slot = OwnedSlot("an experiment", owner_timeout=60)
    job = slot.start("A", Job(looping, name="sweep"))
    assert job.owner == "A" and slot.job("A") is job and slot.running()
    # B: nothing of A's job, no stop, no second job while it runs
    assert slot.job("B") is None
    with pytest.raises(FalconError, match="belongs to another session"):
        slot.stop("B")
    with pytest.raises(FalconError, match="busy with an experiment of another session"):
        slot.start("B", Job(looping))
    with pytest.raises(FalconError, match="you already have an experiment running"):
        slot.start("A", Job(looping))
    assert job.running and not job.should_stop()
    time.sleep(0.3)
    busy = slot.busy("B")
    assert busy.startswith("machine busy (an experiment by another session, ") and busy.endswith(")")
    left = left_seconds(job)  # from its progress: seconds × (1 - p) / p
    assert left is not None and left == pytest.approx(job.seconds * (1 - job.progress) / job.progress, rel=0.2)
    assert slot.busy("A") is None
    assert slot.foreign("B") is job and slot.foreign("A") is None  # for B's page to leave A's traces out
    # A stops its own job; then B may start
    slot.stop("A")
    assert job.wait(5) and job.status == "stopped" and job.result == "stopped"
    assert slot.busy("B") is None and not slot.running()
    other = slot.start("B", Job(looping))
    assert slot.job("B") is other and slot.job("A") is job  # A still reads its own finished job
    other.stop()
    assert other.wait(5)


def test_a_job_whose_session_is_gone_is_ended():
    # liveness unknown: heartbeats decide
    slot = OwnedSlot("an experiment", owner_timeout=0.5, poll_s=0.05)
    job = slot.start("A", Job(looping))
    for _ in range(10):  # A polls: it stays
        slot.seen("A")
        time.sleep(0.1)
    assert job.running
    t0 = time.monotonic()  # A stops polling
    assert job.wait(5) and job.status == "stopped" and job.ended_because == "its session ended"
    assert 0.3 < time.monotonic() - t0 < 3
    # a session the server knows to be closed: ended once it has stayed closed for the grace (a reconnect within
    # it keeps the job); its result is forgotten
    alive = {"C": True}
    slot = OwnedSlot("an experiment", alive=lambda owner: alive.get(owner, False), poll_s=0.05, grace=0.5)
    job = slot.start("C", Job(looping))
    time.sleep(0.2)
    assert job.running
    alive["C"] = False
    time.sleep(0.3)
    alive["C"] = True  # the websocket reconnected
    time.sleep(0.5)
    assert job.running
    alive["C"] = False
    t0 = time.monotonic()
    assert job.wait(5) and job.ended_because == "its session ended"
    assert 0.4 < time.monotonic() - t0 < 3
    time.sleep(0.1)
    assert slot.job("C") is None


def test_owners_and_words():
    owners = Owners(timeout=0.2)
    owners.seen("A")
    assert not owners.gone("A")
    time.sleep(0.3)
    assert owners.gone("A")
    assert Owners(alive=lambda o: None, timeout=60).gone("never seen") is False  # counts from now
    assert [fmt_left(s) for s in (0.2, 40, 150, 7200)] == ["1 s", "40 s", "2 min", "2.0 h"]


def test_one_experiment_at_a_time_across_processes(tmp_path):
    """Two servers' slots (here: two slots with their own locks on one file, as two processes would have): the
    second is refused while the first runs, and can start once the first job has ended and let go."""
    from falcon.machinelock import MachineLock

    path = tmp_path / "experiment.lock"
    first = OwnedSlot("an experiment", owner_timeout=60, machine=MachineLock(path))
    second = OwnedSlot("an experiment", owner_timeout=60, machine=MachineLock(path))
    job = first.start("A", Job(looping, name="sweep"))
    with pytest.raises(FalconError, match="another FALCON Explorer process"):
        second.start("B", Job(looping, name="sweep"))
    first.stop("A")
    assert job.wait(10)
    deadline = time.monotonic() + 10
    while first.machine.held and time.monotonic() < deadline:  # the watcher lets go once the job has ended
        time.sleep(0.05)
    again = second.start("B", Job(looping, name="sweep"))
    # and the first slot's next job, started while its previous one's lock is gone, works (no stale release)
    with pytest.raises(FalconError, match="another FALCON Explorer process"):
        first.start("A", Job(looping, name="sweep"))
    second.stop("B")
    assert again.wait(10)
