"""A measured-latency plan (:mod:`falcon.latency_plan`) as a measurement of the worker queue (:mod:`falcon.worker`):
its estimate before it starts (an :class:`falcon.worker.Estimate`, with how busy the machine is now, refused above
the limits) and the function a worker process runs (plain data back: the plan's JSON with its latency section).

The app's Model sizing page queues it like any measurement: one at a time per machine, owned by the session,
Stop kills the worker. No Streamlit here.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from falcon.errors import FalconError
from falcon.latency_plan import CHECK_ROUNDS, ROUNDS

#: seconds of work before the first timing, per conv site: the kernel proxy's fits of every rank of its grid
#: (digits-vgg's five sites fit in about 1 s on a shared 2-core machine; the data proxy runs each fitted block)
FIT_S_PER_SITE = 0.2
DATA_FIT_S_PER_SITE = 0.6


def measure_limit() -> float:
    """The longest estimated measurement started here, read now (env ``FALCON_MEASURE_MAX_S``, else the
    worker's :data:`falcon.worker.MAX_SECONDS`): a worker started now reads the same environment."""
    from falcon import worker

    return worker._env_float("FALCON_MEASURE_MAX_S", worker.MAX_SECONDS)


def site_keys(prob) -> tuple[list, int]:
    """The timing keys of every site (keep, and each option MAC-cheaper than keeping: what
    :func:`falcon.planning.layer_options` offers, without fitting anything) and the number of options."""
    from falcon.latency_plan import key_of
    from falcon.planning import KEEP, _cost, _rank_options

    keys, options = [], 0
    for s in prob.sites:
        conv = prob.module.get_submodule(s.name)
        types = prob.types[s.name]
        keys.append(key_of(conv, s.spec, KEEP, {}))
        options += KEEP in types
        m0 = _cost(KEEP, s.spec, {})[1]
        for t in (t for t in types if t != KEEP):
            for hp in _rank_options(t, s.spec):
                if KEEP not in types or _cost(t, s.spec, hp)[1] < m0:
                    keys.append(key_of(conv, s.spec, t, hp))
                    options += 1
    return keys, options


def estimate_latency_plan(model: str, types: Sequence[str], proxy: str = "kernel", include_stem: bool | None = None,
                          batch_size: int = 1, rounds: int = ROUNDS, threads: int | None = None,
                          max_seconds: float | None = None):
    """Seconds and peak memory of :func:`run_latency_plan` here, as a :class:`falcon.worker.Estimate`: the worker's
    start, the fits (per site), every unique block and the model timed ``rounds`` times and the check
    (:func:`falcon.latency_plan.estimate_seconds`), all times how busy the machine is now
    (:func:`falcon.worker.busy_factor`). Built on the model's shapes with random weights (nothing downloaded)."""
    from falcon import worker
    from falcon.latency_plan import estimate_seconds
    from falcon.limits import parse_int
    from falcon.modelbench import plan_memory
    from falcon.planning import problem
    from falcon.sources import load_model

    batch_size, rounds = parse_int(batch_size, "batch_size", "batch size"), parse_int(rounds, "rounds")
    loaded = load_model(model, "random")
    prob = problem(loaded, types, "kernel", include_stem=include_stem)  # the sites and types; no fit yet
    keys, options = site_keys(prob)
    timing = estimate_seconds(keys, prob.original["macs"], options, model_modules=sum(1 for _ in prob.module.modules()),
                              batch_size=batch_size, rounds=rounds, threads=threads)
    busy = worker.busy_factor("cpu")
    fits = len(prob.sites) * (DATA_FIT_S_PER_SITE if proxy == "data" else FIT_S_PER_SITE)
    seconds = worker.WORKER_START_S + busy * (fits + timing.seconds)
    from falcon.bench import resolve_device

    memory = plan_memory(model, batch_size, copies=3)  # the original, the planned model, the blocks (at most one more)
    limit, source = worker._memory_limit(resolve_device("cpu"))
    return worker.Estimate(
        f"planning {prob.name} for a measured speedup at batch {batch_size}", seconds, memory.total_bytes,
        measure_limit() if max_seconds is None else max_seconds, limit, source,
        tuple(_advice(busy, types, rounds, batch_size, timing.timings)),
        f"{timing.timings} blocks timed ({options} options) × {rounds} rounds", busy)


def _advice(busy: float, types: Sequence[str], rounds: int, batch_size: int, timings: int) -> list[str]:
    from falcon import worker

    advice = worker._busy_advice(busy)
    if len([t for t in types if t != "standard"]) > 1:
        advice.append("allow fewer conv types")
    if rounds > 1:
        advice.append("use fewer rounds")
    if batch_size > 1:
        advice.append("use a smaller batch")
    if timings > 100:
        advice.append(f"choose a model with fewer layer shapes ({timings} blocks to time)")
    return advice


def _load(model) -> tuple[Any, list[str]]:
    """The model with the weights a plan should be fitted to: digits-vgg's bundled ones, else pretrained when they
    can be had within 5 s, else random (with a note saying what that means)."""
    from falcon.sources import load_model

    if getattr(model, "name", model) == "digits-vgg":
        return load_model(model), []
    try:
        return load_model(model, "pretrained", timeout=5.0), []
    except FalconError as e:
        return load_model(model, "random"), [
            f"no pretrained weights here ({e}); this plan is fitted to random weights, whose kernels have flat "
            "spectra: use it for latencies, not for which layers fit well"]


def run_latency_plan(model, target_speedup: float, types: Sequence[str], proxy: str = "kernel",
                     include_stem: bool | None = None, batch_size: int = 1, rounds: int = ROUNDS,
                     threads: int | None = None, check_rounds: int = CHECK_ROUNDS, timer=None, progress=None,
                     should_stop=None) -> dict | None:
    """The worker's task: :func:`falcon.latency_plan.latency_problem` (progress over its timings), the plan for
    ``target_speedup`` and the planned model timed against the original. Returns None when stopped, else plain
    data: ``plan`` (the JSON ``convert --plan`` reads, with its ``latency`` section), ``notes``, ``weights``.
    ``timer``: a :data:`falcon.latency_plan.Timer` (default the layer bench's)."""
    from falcon.latency_plan import (CHECK_MIN_RUN_TIME, Stopped, bench_timer, check_plan, latency_problem,
                                     parse_target, solve_latency)

    target = parse_target(target_speedup=target_speedup)
    say = progress or (lambda fraction, label: None)
    say(0.0, "loading the model and fitting every layer at every rank")
    loaded, notes = _load(model)
    share = 0.85  # of the progress bar: the timings; the rest is the check

    def timings(done: int, total: int, label: str) -> None:
        say(share * done / total, f"timing {done}/{total}: {label}")

    try:
        lp = latency_problem(loaded, types=types, proxy=proxy, include_stem=include_stem, batch_size=batch_size,
                             rounds=rounds, timer=timer, threads=threads, should_stop=should_stop, progress=timings,
                             max_seconds=measure_limit())
        result = solve_latency(lp, target)
        say(share, f"timing the planned model against the original ({check_rounds} interleaved rounds)")
        result.check = check_plan(lp.prob.module, result.plan.as_dict(), lp.prob.chw, batch_size=batch_size,
                                  timer=timer or bench_timer(threads, CHECK_MIN_RUN_TIME), rounds=check_rounds,
                                  should_stop=should_stop)
    except Stopped:  # Stop was pressed: nothing to show (as a stopped measurement with nothing finished)
        return None
    return {"plan": result.as_dict(), "notes": notes, "weights": loaded.weights}
