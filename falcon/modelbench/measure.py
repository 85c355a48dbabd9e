""":func:`measure_model`: the steps of a whole-model measurement in order (memory guard, models, tasks, timed
rounds, breakdowns), each in its own module of :mod:`falcon.modelbench`."""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from falcon.bench import (
    MEMORY_FORMATS,
    _quartiles,
    busy_notes,
    device_name,
    fmt_bytes,
    memory_budget,
    resolve_device,
    run_rounds,
    timing_settings,
)
from falcon.cpuload import Sampler
from falcon.limits import parse_float, parse_int
from falcon.modelbench.breakdown import add_breakdowns
from falcon.modelbench.memory import MemoryPlan, check_plan, plan_memory
from falcon.modelbench.prepare import PreparedModels, parse_conversions, prepare_models
from falcon.modelbench.results import (
    Conversion,
    ModelBenchResult,
    _speedups,
    last_level_cache_bytes,
)
from falcon.modelbench.runtimes import (
    RuntimeInfo,
    _layouts,
    parse_runtimes,
    runtime_info,
)
from falcon.modelbench.tasks import ProgressFn, Run, StopFn, _Task, build_tasks

#: interleaved rounds of the whole-model benchmark: 10 keep five separate runs within ±10% on a shared 2-core
#: machine (5 rounds gave ±12–19%; docs/latency.md)
DEFAULT_ROUNDS = 10
WARMUP_CALLS = 3


def measure_model(
    model: Any = "vgg19-cifar",
    weights: str | None = None,
    conv: str | Sequence = "falcon",
    rank: int | None = 1,
    batch_size: int = 1,
    input_size: Any = None,
    runtimes: str | Sequence[str] = ("eager",),
    memory_format: str = "auto",
    threads: int | None = None,
    device: str = "auto",
    rounds: int = DEFAULT_ROUNDS,
    min_run_time: float = 0.2,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    breakdown: bool = True,
    num_classes: int | None = None,
    seed: int = 0,
    memory_budget_bytes: int | None = None,
    retain_memory: bool = True,
    compile_memory_format: str | None = None,
    prepared: PreparedModels | None = None,
    **hp: Any,
) -> ModelBenchResult:
    """Time ``model`` and its conversion(s) to ``conv`` (rank ``rank``; other hyper-parameters in ``hp``)
    in each of ``runtimes`` (see :mod:`falcon.modelbench`). ``conv`` may be a list (names or (name, hparams)
    pairs): every conversion is measured against the same original, in the same interleaved rounds.

    ``threads``: CPU threads (default ``torch.get_num_threads()``), set for the run and restored after.
    ``memory_format``: ``auto``/``both`` (contiguous and channels_last for eager and compile), or one of them.
    ``compile_memory_format``: the layouts for ``compile`` if not those of ``memory_format`` (compiling is the
    slow part of a run). ``breakdown``: profile where the time goes (eager). ``memory_budget_bytes`` overrides
    the memory budget. ``prepared``: models already built (:func:`prepared_from_modules`, e.g. a fine-tuned
    conversion) instead of converting ``model`` here; ``conv``/``rank``/``hp`` are then ignored.
    """
    t_start = time.perf_counter()
    run, infos = _new_run(batch_size, rounds, min_run_time, threads, device, memory_format, compile_memory_format,
                          runtimes, progress, should_stop)
    if prepared is not None:
        model, input_size = prepared.original.module, prepared.input_size
        conversions = [(c.conv, dict(c.hparams)) for c in prepared.converted]
    else:
        conversions = parse_conversions(conv, rank, **hp)
    n_models = 1 + len(conversions)
    plan, budget, source = _memory_guard(run, model, batch_size, input_size, num_classes, n_models, memory_budget_bytes)
    # load, a deployable form per model, per task: prepare + warm-up + rounds; the breakdowns
    per_model = sum(len(run.runtime_layouts[r]) for r in run.available)
    run.total_steps = 1 + n_models + n_models * per_model * (rounds + 2) + (2 * len(conversions) if breakdown else 0)
    with _run_settings(run, n_models, retain_memory) as retained:
        if prepared is None:
            prepared = prepare_models(model, weights, conversions, None, input_size, num_classes, seed,
                                      progress=lambda m: run.tick(m, 0))
        run.tick(f"{prepared.name} loaded and converted")
        run.result = _new_result(run, prepared, batch_size, infos, plan, budget, source, retained)
        _measure(run, prepared, batch_size, seed, breakdown)
    run.result.seconds = time.perf_counter() - t_start
    if progress is not None:
        progress(1.0, "stopped" if run.result.stopped else "done")
    return run.result


def _new_run(batch_size: int, rounds: int, min_run_time: float, threads: int | None, device: str, memory_format: str,
             compile_memory_format: str | None, runtimes: str | Sequence[str], progress: ProgressFn | None,
             should_stop: StopFn | None) -> tuple[Run, list[RuntimeInfo]]:
    """The arguments checked (one-line errors), the device, layouts and runtimes resolved."""
    parse_int(batch_size, "batch_size", "batch size")
    parse_int(rounds, "rounds")
    parse_float(min_run_time, "min_run_time", "min run time")
    threads = torch.get_num_threads() if threads is None else parse_int(threads, "threads")
    dev = resolve_device(device)
    layouts = _layouts(memory_format)
    runtime_layouts = {"eager": layouts, "onnxruntime": ["contiguous"],
                       "compile": _layouts(compile_memory_format) if compile_memory_format else layouts}
    wanted = parse_runtimes(runtimes)
    infos = [runtime_info(r, dev) for r in wanted]
    available = [i.name for i in infos if i.available]
    return Run(dev, threads, rounds, min_run_time, runtime_layouts, available, progress, should_stop), infos


def _memory_guard(run: Run, model: Any, batch_size: int, input_size: Any, num_classes: int | None, n_models: int,
                  budget: int | None) -> tuple[MemoryPlan, int | None, str]:
    """Before anything is allocated: the plan (:func:`plan_memory`), the budget (``budget`` or
    :func:`falcon.bench.memory_budget`'s) and its source; a plan over the budget is refused in one line.

    Per model the plan holds its training form and deployable form, one per compiled layout (frozen weights),
    one in ONNX Runtime, and the conv weights once more per further eager layout (the other tensors are shared);
    an upper bound: converted models are smaller."""
    available = run.available
    per_instance = 2 + (len(run.runtime_layouts["compile"]) if "compile" in available else 0) + \
        ("onnxruntime" in available)
    further_layouts = len(run.runtime_layouts["eager"]) - 1 if "eager" in available else 0
    plan = plan_memory(model, batch_size, input_size, num_classes, n_models * per_instance,
                       n_models * further_layouts)
    budget, source = (budget, "given budget") if budget is not None else memory_budget(run.dev)
    check_plan(plan, budget, source, model, input_size, batch_size)
    return plan, budget, source


@contextmanager
def _run_settings(run: Run, n_models: int, retain_memory: bool):
    """The run's threads, cuDNN's benchmark mode and retained memory (:func:`falcon.bench.timing_settings`) and,
    for ``compile``, inductor's freezing and room in dynamo's caches for every compiled model; all put back
    after, the compiled graphs let go. Yields whether freed memory is retained."""
    saved_threads = torch.get_num_threads()
    with ExitStack() as stack:
        torch.set_num_threads(run.threads)
        stack.callback(torch.set_num_threads, saved_threads)
        retained = stack.enter_context(timing_settings(run.dev, retain_memory))
        if "compile" in run.available:
            from torch import _dynamo as dynamo
            from torch._inductor import config as inductor_config

            stack.callback(_release_compiled)
            stack.enter_context(inductor_config.patch(freezing=True))
            limit = 8 * n_models * len(run.runtime_layouts["compile"]) + 8
            key = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
            stack.enter_context(dynamo.config.patch(**{key: max(limit, 8)},
                                                    accumulated_cache_size_limit=max(256, 4 * limit)))
        yield retained


def _release_compiled() -> None:
    """The compiled graphs hold frozen copies of every model's weights: let them go."""
    import gc

    from torch import _dynamo as dynamo

    dynamo.reset()
    try:  # inductor keeps the compiled modules (and their frozen constants) in its code cache
        from torch._inductor.utils import clear_inductor_caches

        clear_inductor_caches()
    except ImportError:  # pragma: no cover - older torch
        pass
    gc.collect()


def _new_result(run: Run, prepared: PreparedModels, batch_size: int, infos: list[RuntimeInfo], plan: MemoryPlan,
                budget: int | None, source: str, retained: bool) -> ModelBenchResult:
    dev, original = run.dev, prepared.original
    result = ModelBenchResult(
        model=prepared.name, weights=prepared.weights, input_size=list(prepared.input_size), batch_size=batch_size,
        device=dev.type if dev.type == "cpu" else str(dev), device_name=device_name(dev), threads=run.threads,
        torch_version=torch.__version__, cpu_count=os.cpu_count(), rounds=run.rounds, min_run_time=run.min_run_time,
        memory_formats=run.runtime_layouts["eager"], runtimes=infos, original_macs=original.macs,
        memory_estimate_bytes=plan.total_bytes, memory_budget=f"{fmt_bytes(budget)} ({source})" if budget else source,
        allocator="retain" if retained else "default", notes=list(prepared.notes),
        cache_bytes=last_level_cache_bytes(dev))
    result.notes.extend(info.reason for info in infos if not info.available)
    for c in prepared.converted:
        result.conversions.append(Conversion(c.label, c.conv, c.hparams, c.macs,
                                             original.macs / c.macs if c.macs else float("nan"),
                                             len(c.replaced), c.init, c.fit_error))
    return result


def _measure(run: Run, prepared: PreparedModels, batch_size: int, seed: int, breakdown: bool) -> None:
    """The tasks, their timed rounds, the speedups and the breakdowns, into ``run.result``."""
    result = run.result
    sampler = Sampler()
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn((batch_size, *prepared.input_size), generator=gen)
    inputs = {lay: base.to(run.dev).contiguous(memory_format=MEMORY_FORMATS[lay]) for lay in MEMORY_FORMATS}
    tasks = build_tasks(run, prepared, inputs)
    _time(run, tasks, sampler)
    _speedups(result)
    if breakdown and not result.stopped:
        add_breakdowns(run, prepared, tasks)
    result.load_average, result.cpu_samples = sampler.finish()
    result.notes.extend(busy_notes(run.dev, run.threads, sampler.first_load, result.cpu_samples))


def _time(run: Run, tasks: list[_Task], sampler: Sampler | None = None) -> None:
    """Warm-up, then the interleaved rounds (:func:`falcon.bench.run_rounds`); median and IQR per task; a CPU
    sample (``sampler``) after each visit."""

    def tick(message: str) -> None:
        if sampler is not None:
            sampler.tick()
        run.tick(message)

    run_rounds(tasks, run.rounds, run.min_run_time, lambda task: task.timer.timeit(WARMUP_CALLS), run.halt, tick)
    for task in tasks:
        if task.times:
            q1, med, q3 = _quartiles(task.times)
            task.timing.median_ms, task.timing.iqr_ms = med * 1e3, (q3 - q1) * 1e3
            task.timing.min_ms, task.timing.samples = min(task.times) * 1e3, len(task.times)
            task.timing.calls_per_sample = task.number
        elif run.result.stopped:
            task.timing.status = "stopped"
