"""Plans for a measured-latency target: per-layer conv type and rank that meet "2× faster on this machine" or
"at most 3 ms" (``python -m falcon plan --target-speedup 2`` / ``--target-ms 3``).

The MAC planner (:mod:`falcon.planning`) counts; this one times, on this machine's CPU:

* every option of every conv site (keep, and each allowed type at each rank of the plan's grid) is built as the
  block a plan puts there and timed **alone** on a random input of the shape the site sees (batch ``batch_size``).
  Blocks of the same shape (channels, kernel, stride, padding, groups, H, W, type, ranks, bias) are timed once;
* the whole original model is timed once; ``overhead = model − Σ kept convs`` is what no plan changes (pooling,
  activations, the classifier, Python between layers);
* predicted latency of a plan = ``overhead + Σ chosen blocks``; :func:`falcon.allocate.solve` picks, per layer,
  the option with the least total error (the same proxy as the MAC planner) whose predicted latency meets the
  budget (``original / speedup`` or the absolute figure);
* the planned model is then built (:func:`falcon.planning.apply_plan`) and timed interleaved with the original,
  so that the prediction is checked against a measurement, not asserted.

Timing follows the layer bench (:mod:`falcon.bench`): ``torch.utils.benchmark.Timer`` at a fixed thread count,
``inference_mode``, two warm-up runs, then ``blocked_autorange`` visits, glibc asked to keep freed memory. Before
anything is timed the run's seconds are estimated from this machine's rate (:func:`falcon.worker.machine_rate`)
and a run above ``max_seconds`` is refused; ``should_stop()`` is asked before every timing.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from falcon.allocate import Option, cheapest, greedy, solve
from falcon.cpuload import Sampler
from falcon.cpuload import loadavg as _loadavg
from falcon.errors import FalconError
from falcon.limits import parse_float, parse_int
from falcon.planning import (
    DEFAULT_TYPES,
    KEEP,
    Plan,
    apply_plan,
    layer_options,
    problem,
)

#: ``timer(module, x, visits)``: seconds per call of ``module(x)``, one figure per visit (after a warm-up)
Timer = Callable[[nn.Module, torch.Tensor, int], "list[float]"]
StopFn = Callable[[], bool]
ProgressFn = Callable[[int, int, str], None]

#: defaults: few rounds of short visits (a plan times hundreds of blocks)
ROUNDS = 3
MIN_RUN_TIME = 0.02
#: interleaved rounds of the original and the planned model when the plan is checked
CHECK_ROUNDS = 7
CHECK_MIN_RUN_TIME = 0.1


class Stopped(FalconError):
    """``should_stop()`` said stop: the plan was not made."""


# ----------------------------------------------------------------------------------------------
# what is timed
@dataclass(frozen=True)
class TimingKey:
    """One block shape: everything its latency depends on here (the batch, threads and timer are the run's)."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    groups: int
    height: int
    width: int
    conv: str
    hparams: tuple[tuple[str, int], ...]
    bias: bool

    @property
    def spec(self):
        from falcon.spec import LayerSpec

        return LayerSpec(self.in_channels, self.out_channels, self.kernel_size, self.height, self.width,
                         self.stride, self.padding)

    def label(self) -> str:
        hp = ",".join(f"{k}={v}" for k, v in self.hparams)
        return f"{self.in_channels}→{self.out_channels} {self.kernel_size}×{self.kernel_size}/{self.stride} " \
               f"{self.height}×{self.width} {self.conv}{' ' + hp if hp else ''}"


def key_of(conv_module: nn.Conv2d, spec, conv: str, hparams: dict) -> TimingKey:
    return TimingKey(spec.M, spec.N, spec.D, spec.stride, spec.padding, int(conv_module.groups), spec.height,
                     spec.width, conv, tuple(sorted((k, int(v)) for k, v in hparams.items())),
                     conv_module.bias is not None)


def build_block(key: TimingKey) -> nn.Module:
    """The module a plan puts at a site of this shape: the original conv (keep) or the type's bare block with the
    conv's bias attached, as :func:`falcon.fits.fit_module` builds it (random weights: the time does not depend
    on them)."""
    from falcon.convtypes import get_conv_type
    from falcon.fits import attach_bias

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if key.conv == KEEP:
            return nn.Conv2d(key.in_channels, key.out_channels, key.kernel_size, key.stride, key.padding,
                             groups=key.groups, bias=key.bias).eval()
        block = get_conv_type(key.conv).build(key.spec, **dict(key.hparams))
        if key.bias:
            attach_bias(block, torch.zeros(key.out_channels))
    return block.eval()


def key_macs(key: TimingKey) -> int:
    from falcon.convtypes import get_conv_type

    if key.conv == KEEP:
        return int(get_conv_type(KEEP).cost(key.spec).macs) // key.groups
    return int(get_conv_type(key.conv).cost(key.spec, **dict(key.hparams)).macs)


# ----------------------------------------------------------------------------------------------
# the timer
def bench_timer(threads: int | None = None, min_run_time: float = MIN_RUN_TIME) -> Timer:
    """The layer bench's timing (``torch.utils.benchmark.Timer`` at ``threads`` threads, inference mode, a
    warm-up) as a :data:`Timer`. A visit is one block of calls lasting about ``min_run_time`` (its size from the
    warm-up's time per call: ``blocked_autorange``'s own block sizing costs ~0.1 s a visit, too much for hundreds
    of blocks), reported per call."""
    from falcon.bench import (
        benchmark,  # torch.utils.benchmark, with cpp_extension's CUDA warning quieted
    )

    threads = torch.get_num_threads() if threads is None else parse_int(threads, "threads")
    min_run_time = parse_float(min_run_time, "min_run_time", "min run time")

    def timer(module: nn.Module, x: torch.Tensor, visits: int) -> list[float]:
        t = benchmark.Timer(stmt="module(x)", globals={"module": module.eval(), "x": x}, num_threads=threads)
        with torch.inference_mode():
            t.timeit(1)  # warm-up: oneDNN primitives, caches
            number = max(1, int(min_run_time / max(t.timeit(2).median, 1e-7)))
            return [t.timeit(number).median for _ in range(visits)]

    timer.threads = threads  # type: ignore[attr-defined]
    return timer


MODEL = "the whole model"  # the model's entry in a table's rotation


class LatencyTable:
    """Seconds per call of each :class:`TimingKey` (and of the whole model), each block built once and timed in
    ``rounds`` rounds that visit every block once, in an order rotated every round (a burst of another process
    then slows one visit of many blocks, not every visit of one); the median of its visits."""

    def __init__(self, timer: Timer, batch_size: int = 1, rounds: int = ROUNDS,
                 should_stop: StopFn | None = None, progress: ProgressFn | None = None):
        self.timer, self.batch_size, self.rounds = timer, batch_size, rounds
        self.should_stop, self.progress = should_stop, progress
        self.seconds: dict[TimingKey, float] = {}
        self.model_seconds: float | None = None

    def measure(self, keys: Sequence[TimingKey], model: tuple[nn.Module, torch.Tensor] | None = None) -> None:
        """Time every key not timed yet (and ``model``: (module, input)); :class:`Stopped` when ``should_stop()``
        says so before a visit."""
        todo: list = [k for k in dict.fromkeys(keys) if k not in self.seconds] + ([MODEL] if model else [])
        blocks, inputs, samples = {MODEL: model}, {}, {k: [] for k in todo}
        total = len(todo) * self.rounds
        for r in range(self.rounds):
            for i, key in enumerate(todo[r % len(todo):] + todo[:r % len(todo)] if todo else []):
                done = r * len(todo) + i
                if self.should_stop is not None and self.should_stop():
                    raise Stopped(f"the latency plan was stopped after {done} of {total} timings; nothing was planned")
                if key not in blocks:
                    blocks[key] = (build_block(key), self._input(inputs, key))
                samples[key].extend(self.timer(*blocks[key], 1))
                if self.progress is not None:
                    self.progress(done + 1, total, MODEL if key is MODEL else key.label())
        for key, times in samples.items():
            if key is MODEL:
                self.model_seconds = statistics.median(times)
            else:
                self.seconds[key] = statistics.median(times)

    def _input(self, inputs: dict, key: TimingKey) -> torch.Tensor:
        """One random input per shape (shared by every block that reads it)."""
        shape = (self.batch_size, key.in_channels, key.height, key.width)
        if shape not in inputs:
            inputs[shape] = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        return inputs[shape]


# ----------------------------------------------------------------------------------------------
# the estimate
@dataclass(frozen=True)
class TimingEstimate:
    """Seconds a latency plan is expected to take here, before anything is timed."""

    timings: int  # unique blocks
    options: int  # options over all sites (what timing each one would cost without the cache)
    seconds: float
    max_seconds: float

    def check(self) -> TimingEstimate:
        if self.seconds > self.max_seconds:
            raise FalconError(
                f"timing {self.timings} blocks ({self.options} options, shapes repeated once) and the model would "
                f"take about {self.seconds:.0f} s on this machine, and the limit is {self.max_seconds:.0f} s "
                "(--max-seconds): allow fewer types (--types), use fewer --rounds or a model with fewer layer shapes")
        return self


#: seconds a visit costs besides its calls (the Timer, its warm-up bookkeeping, Python)
VISIT_OVERHEAD_S = 0.002


def _visit(call: float, min_run_time: float) -> float:
    """A :func:`bench_timer` visit: 3 warm-up calls, then a block of about ``min_run_time`` (at least one call)."""
    return 3 * call + max(min_run_time, call) + VISIT_OVERHEAD_S


def estimate_seconds(keys: Sequence[TimingKey], model_macs: int, options: int, *, model_modules: int = 1,
                     batch_size: int = 1, rounds: int = ROUNDS, min_run_time: float = MIN_RUN_TIME,
                     threads: int | None = None, check_rounds: int = CHECK_ROUNDS,
                     check_min_run_time: float = CHECK_MIN_RUN_TIME, max_seconds: float | None = None) -> TimingEstimate:
    """``rounds`` visits (:func:`_visit`) of every unique block and of the model, then ``check_rounds`` visits of
    the model and of the planned model (at most as slow as the model). A call takes its MACs at this machine's
    conv rate (:func:`falcon.worker.machine_rate`) plus the per-call overhead (once per module for the model)."""
    from falcon.worker import CALL_OVERHEAD_S, MAX_SECONDS, machine_rate

    mac_rate, _ = machine_rate("cpu").scaled(threads)
    unique = list(dict.fromkeys(keys))
    seconds = sum(rounds * _visit(key_macs(k) * batch_size / mac_rate + CALL_OVERHEAD_S, min_run_time) for k in unique)
    model_call = model_macs * batch_size / mac_rate + CALL_OVERHEAD_S * model_modules
    seconds += rounds * _visit(model_call, min_run_time) + 2 * check_rounds * _visit(model_call, check_min_run_time)
    limit = MAX_SECONDS if max_seconds is None else parse_float(max_seconds, "max_seconds", "max seconds")
    return TimingEstimate(len(unique), options, seconds, limit)


# ----------------------------------------------------------------------------------------------
# the problem: options with measured latencies
@dataclass
class LatencyProblem:
    """A model's sites with their options costed in seconds, and what the model takes as a whole."""

    prob: Any  # falcon.planning._Problem
    proxy: str
    layers: list[list[Option]]  # cost: seconds per call of the option's block
    keep_seconds: list[float]  # per site: the original conv alone
    model_seconds: float  # the whole original model
    table: LatencyTable
    estimate: TimingEstimate
    seconds: float  # how long building it took
    notes: list[str] = field(default_factory=list)

    @property
    def overhead(self) -> float:
        """What no plan changes: the model less its replaceable convs, timed alone (may be negative when the
        convs alone sum to more than the model: then the prediction says so in a note)."""
        return self.model_seconds - sum(self.keep_seconds)

    @property
    def best_reachable(self) -> float:
        return self.overhead + cheapest(self.layers)


def latency_problem(model, *, types: Sequence[str] = DEFAULT_TYPES, proxy: str = "kernel", weights=None,
                    include_stem: bool | None = None, batch_size: int = 1, rounds: int = ROUNDS,
                    timer: Timer | None = None, threads: int | None = None, min_run_time: float = MIN_RUN_TIME,
                    max_seconds: float | None = None, should_stop: StopFn | None = None,
                    progress: ProgressFn | None = None, seed: int = 0, data: str | None = None,
                    data_dir=None) -> LatencyProblem:
    """Every site's options (:func:`falcon.planning.layer_options`, MAC-cheaper than keeping) with their measured
    seconds, after the estimate is checked against ``max_seconds`` (``seed``, ``data``, ``data_dir``: the data
    proxy's calibration images, as :func:`falcon.planning.problem`)."""
    t0 = time.perf_counter()
    batch_size, rounds = parse_int(batch_size, "batch_size", "batch size"), parse_int(rounds, "rounds")
    prob = problem(model, types, proxy, weights, include_stem, seed=seed, data=data, data_dir=data_dir)
    options, keys = _site_options(prob, proxy)
    flat = [k for ks in keys for k in ks]
    estimate = estimate_seconds(flat, prob.original["macs"], sum(map(len, options)),
                                model_modules=sum(1 for _ in prob.module.modules()), batch_size=batch_size,
                                rounds=rounds, min_run_time=min_run_time, threads=threads,
                                max_seconds=max_seconds).check()
    timer = timer or bench_timer(threads, min_run_time)
    busy = _busy_note(getattr(timer, "threads", None))
    table = LatencyTable(timer, batch_size, rounds, should_stop, progress)
    from falcon.bench import retained_memory

    with retained_memory():
        table.measure(flat, (prob.module, _model_input(prob.chw, batch_size)))
    model_s = table.model_seconds
    layers = [[Option(table.seconds[k], o.error, o.label, o.data) for o, k in zip(opts, ks[1:])]
              for opts, ks in zip(options, keys)]
    out = LatencyProblem(prob, proxy, layers, [table.seconds[ks[0]] for ks in keys], model_s, table, estimate,
                         time.perf_counter() - t0)
    out.notes.extend(busy)
    if out.overhead < 0:
        out.notes.append(f"the replaceable convs timed alone sum to {sum(out.keep_seconds) * 1e3:.3g} ms, more than "
                         f"the whole model's {model_s * 1e3:.3g} ms: predictions carry that difference")
    return out


def _site_options(prob, proxy: str) -> tuple[list[list[Option]], list[list[TimingKey]]]:
    """Per site: the MAC planner's options (costs in MACs, errors by ``proxy``) and the timing keys of keeping the
    conv and of each option (keep first)."""
    options, keys = [], []
    for s in prob.sites:
        conv = prob.module.get_submodule(s.name)
        opts = layer_options(s.name, conv, s.spec, prob.types[s.name], "macs", proxy, prob.inputs.get(s.name))
        options.append(opts)
        keys.append([key_of(conv, s.spec, KEEP, {})] + [key_of(conv, s.spec, o.data.conv, o.data.hparams) for o in opts])
    return options, keys


def _busy_note(threads: int | None) -> list[str]:
    """The layer bench's warning (:func:`falcon.bench.busy_notes`, from the load average before timing): more
    runnable processes than cores left free makes every timing noisy (an OpenMP barrier waits for a thread the
    scheduler paused)."""
    from falcon.bench import busy_notes

    if threads is None:
        return []
    advice = "; one thread is steadier" if threads > 1 else ""
    return [note + advice for note in busy_notes(torch.device("cpu"), threads, _loadavg())]


def _model_input(chw, batch_size: int) -> torch.Tensor:
    return torch.randn(batch_size, *chw, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------------------------
# the plan
def parse_target(target_speedup: float | None = None, target_ms: float | None = None) -> dict[str, float]:
    """``{"speedup": x}`` or ``{"ms": x}``, bounded (before anything is timed)."""
    if (target_speedup is None) == (target_ms is None):
        raise FalconError("give one latency target: a speedup (times faster) or milliseconds per forward pass")
    if target_speedup is not None:
        return {"speedup": parse_float(target_speedup, "target_speedup", "target speedup")}
    return {"ms": parse_float(target_ms, "target_ms", "target ms")}


def budget_seconds(target: dict[str, float], model_seconds: float) -> float:
    return model_seconds / target["speedup"] if "speedup" in target else target["ms"] / 1e3


def _unreachable(lp: LatencyProblem, target: dict, budget: float, types: Sequence[str]) -> FalconError:
    best, model = lp.best_reachable, lp.model_seconds
    want = (f"a {target['speedup']:g}× speedup ({budget * 1e3:.4g} ms)" if "speedup" in target
            else f"{target['ms']:g} ms")
    return FalconError(f"no plan of {lp.prob.name} with {', '.join(types)} reaches {want} (the model takes "
                       f"{model * 1e3:.4g} ms here): the best reachable is {best * 1e3:.4g} ms "
                       f"({model / best:.3g}× by this machine's timings)")


@dataclass
class LatencyPlan:
    """A plan for a latency target, with what it was measured from and (``check``) what the planned model took."""

    plan: Plan
    problem: LatencyProblem
    target: dict[str, float]
    budget: float  # seconds
    chosen: list[float]  # seconds per site of the chosen option
    check: dict | None = None

    @property
    def predicted(self) -> float:
        return self.problem.overhead + sum(self.chosen)

    def as_dict(self) -> dict[str, Any]:
        lp, ms = self.problem, 1e3
        out = self.plan.as_dict()
        latency = {
            "target": dict(self.target), "budget_ms": self.budget * ms, "threads": getattr(lp.table.timer, "threads", None),
            "batch_size": lp.table.batch_size, "rounds": lp.table.rounds, "original_ms": lp.model_seconds * ms,
            "overhead_ms": lp.overhead * ms, "predicted_ms": self.predicted * ms,
            "predicted_speedup": lp.model_seconds / self.predicted, "best_reachable_ms": lp.best_reachable * ms,
            "timings": len(lp.table.seconds), "options": lp.estimate.options, "estimated_seconds": lp.estimate.seconds,
            "seconds": lp.seconds, "cpu": _cpu_name(), "notes": list(lp.notes),
            "layers": [{"layer": c.name, "keep_ms": k * ms, "plan_ms": s * ms}
                       for c, k, s in zip(self.plan.layers, lp.keep_seconds, self.chosen)],
        }
        if self.check is not None:
            latency["measured"] = dict(self.check)
            latency["prediction_error"] = (self.predicted * ms - self.check["planned_ms"]) / self.check["planned_ms"]
        out["latency"] = latency
        return out


def _cpu_name() -> str:
    from falcon.bench import device_name

    return device_name(torch.device("cpu"))


def solve_latency(lp: LatencyProblem, target: dict[str, float], bins: int = 4000) -> LatencyPlan:
    """The least-error plan whose predicted latency (overhead + chosen blocks) meets the target."""
    budget = budget_seconds(target, lp.model_seconds)
    room = budget - lp.overhead
    types = list(dict.fromkeys(t for ts in lp.prob.types.values() for t in ts))
    if room <= 0 or cheapest(lp.layers) > room:
        raise _unreachable(lp, target, budget, types)
    sol, g = solve(lp.layers, room, bins), greedy(lp.layers, room)
    picked = [lp.layers[i][j] for i, j in enumerate(sol.choice)]
    notes = list(lp.notes)
    if sol.gap > 1e-9:
        notes.append(f"the plan's error is within {sol.gap:.3g} of the optimum (Lagrangian bound {sol.lower_bound:.4g})")
    prob = lp.prob
    plan = Plan(prob.name, "latency", lp.proxy, budget * 1e3, prob.original, prob.fixed, [o.data for o in picked],
                sol.objective, sol.lower_bound, sol.method, lp.seconds, prob.chw, g.objective, notes)
    return LatencyPlan(plan, lp, dict(target), budget, [o.cost for o in picked])


# ----------------------------------------------------------------------------------------------
# the check: the planned model, measured
def _spread(values: Sequence[float]) -> dict[str, float]:
    ms = sorted(v * 1e3 for v in values)
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {"median": q[1], "iqr": q[2] - q[0], "min": ms[0], "max": ms[-1]}


def check_plan(module: nn.Module, plan: dict, chw, *, batch_size: int = 1, timer: Timer | None = None,
               rounds: int = CHECK_ROUNDS, threads: int | None = None, should_stop: StopFn | None = None) -> dict:
    """Build the planned model (:func:`falcon.planning.apply_plan`) and time it interleaved with the original,
    ``rounds`` visits each, alternating which goes first: medians, spreads (ms), the measured speedup and the
    1-minute load average before and after, and the CPU samples (:mod:`falcon.cpuload`) of every round."""
    planned, _ = apply_plan(module, plan)
    timer = timer or bench_timer(threads, CHECK_MIN_RUN_TIME)
    x = _model_input(chw, batch_size)
    from falcon.bench import retained_memory

    sampler, times = Sampler(), {"original": [], "planned": []}
    with retained_memory():
        for r in range(parse_int(rounds, "rounds")):
            if should_stop is not None and should_stop():
                raise Stopped(f"the check of the planned model was stopped after {r} of {rounds} rounds")
            order = (("original", module), ("planned", planned))
            for name, m in order if r % 2 == 0 else order[::-1]:
                times[name].extend(timer(m, x, 1))
            sampler.tick()
    sampler.finish()
    o, p = _spread(times["original"]), _spread(times["planned"])
    return {"original_ms": o["median"], "original_iqr_ms": o["iqr"], "planned_ms": p["median"],
            "planned_iqr_ms": p["iqr"], "planned_min_ms": p["min"], "planned_max_ms": p["max"],
            "speedup": o["median"] / p["median"], "rounds": rounds, "load_average": sampler.loads,
            "cpu_samples": sampler.cpu_samples}


def plan_latency(model, *, target_speedup: float | None = None, target_ms: float | None = None, check: bool = True,
                 check_rounds: int = CHECK_ROUNDS, bins: int = 4000, **options: Any) -> LatencyPlan:
    """The plan for a latency target (``target_speedup`` × faster than the model measured here, or at most
    ``target_ms``), and with ``check`` the planned model measured against its prediction. ``options``: those of
    :func:`latency_problem` (types, proxy, weights, include_stem, batch_size, rounds, timer, threads,
    min_run_time, max_seconds, should_stop, progress, seed, data, data_dir)."""
    target = parse_target(target_speedup, target_ms)
    lp = latency_problem(model, **options)
    result = solve_latency(lp, target, bins)
    if check:
        timer = options.get("timer") or bench_timer(options.get("threads"), CHECK_MIN_RUN_TIME)
        result.check = check_plan(lp.prob.module, result.plan.as_dict(), lp.prob.chw, batch_size=lp.table.batch_size,
                                  timer=timer, rounds=check_rounds, should_stop=options.get("should_stop"))
    return result
