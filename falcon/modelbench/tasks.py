"""The (model, runtime, layout) entries a whole-model measurement times: each model's deployable form
(:func:`falcon.export.deploy_form`), and per runtime and layout a call checked against eager fp32 (parity) and,
when it passes, a ``torch.utils.benchmark.Timer`` for :func:`falcon.bench.run_rounds`."""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# falcon.bench imports torch.utils.benchmark with cpp_extension's "No CUDA runtime is found" warning silenced
from falcon.bench import MEMORY_FORMATS, benchmark
from falcon.errors import FalconError
from falcon.export import deploy_form, make_portable, parity
from falcon.modelbench.prepare import PreparedModel, PreparedModels
from falcon.modelbench.profile import _sync
from falcon.modelbench.results import ModelBenchResult, Timing
from falcon.modelbench.runtimes import _line, _ort_call

ProgressFn = Callable[[float, str], None]
StopFn = Callable[[], bool]


@dataclass(eq=False)
class Run:
    """One :func:`~falcon.modelbench.measure_model` call as its steps see it: the settings, the result so far,
    progress (``tick``) and stopping (``halt``)."""

    dev: torch.device
    threads: int
    rounds: int
    min_run_time: float
    runtime_layouts: dict[str, list[str]]  # runtime -> the layouts it is timed in
    available: list[str]  # the runtimes that run here
    progress: ProgressFn | None = None
    should_stop: StopFn | None = None
    total_steps: int = 1
    done: int = 0
    result: ModelBenchResult | None = None

    def tick(self, message: str, steps: int = 1) -> None:
        self.done += steps
        if self.progress is not None:
            self.progress(min(self.done / max(self.total_steps, 1), 1.0), message)

    def halt(self) -> bool:
        """Whether the run is stopped: already, or ``should_stop()`` says so now (then it is marked stopped)."""
        if not self.result.stopped and self.should_stop is not None and self.should_stop():
            self.result.stopped = True
        return self.result.stopped


@dataclass(eq=False)
class _Task:
    model: PreparedModel
    runtime: str
    layout: str
    call: Callable[[], Any]
    timing: Timing
    times: list[float] = field(default_factory=list)
    timer: benchmark.Timer | None = None
    module: nn.Module | None = None  # eager: the deployable module (profiled)
    x: torch.Tensor | None = None
    number: int = 1  # calls per timed block (the last round's)

    @property
    def name(self) -> str:
        return f"{self.model.label}, {self.runtime} ({self.layout})"


@dataclass
class _Forms:
    """One model's forms to time: deployable (eager), portable (compile, ONNX), and its eager fp32 output."""

    deployed: nn.Module
    portable: nn.Module | None
    reference: torch.Tensor


def _shared_copy(module: nn.Module, keep_4d: bool = True) -> nn.Module:
    """A copy of ``module``'s structure sharing its tensors (``keep_4d=False``: all but the 4-D ones, which a
    change of memory layout re-lays out), so that several runtimes and layouts do not each hold the weights."""
    memo = {id(t): t for t in (*module.parameters(), *module.buffers()) if keep_4d or t.dim() != 4}
    return copy.deepcopy(module, memo)


def _weight_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers a forward pass reads (the deployable form's weights)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() in seen or t.is_meta:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def build_tasks(run: Run, prepared: PreparedModels, inputs: dict[str, torch.Tensor]) -> list[_Task]:
    """Every model's deployable form, then its (runtime, layout) tasks; the ones whose output passed parity are
    returned (every task's :class:`Timing` is in the result). A model that cannot be deployed is a note."""
    tasks: list[_Task] = []
    for pm in (prepared.original, *prepared.converted):
        if run.halt():
            break
        forms = _deployable(run, pm, inputs["contiguous"])
        if forms is None:
            continue
        for runtime in run.available:
            for layout in run.runtime_layouts[runtime]:
                if run.halt():
                    return tasks
                task = _task(run, pm, runtime, layout, forms, inputs, prepared.name)
                if task.timer is not None:
                    tasks.append(task)
                run.tick(f"prepared {task.name}")
    return tasks


def _deployable(run: Run, pm: PreparedModel, reference_input: torch.Tensor) -> _Forms | None:
    """``pm``'s deployable (and, for compile or ONNX, portable) form on the run's device, its deploy info in the
    result; ``pm``'s training form is let go (memory: big models)."""
    module = (pm.module if run.dev.type == "cpu" else copy.deepcopy(pm.module).to(run.dev)).eval()  # the caller's stays
    with torch.inference_mode():
        reference = module(reference_input).detach().float().cpu()
    try:
        deployed, dinfo = deploy_form(module, reference_input)
        portable = None
        if any(r in run.available for r in ("compile", "onnxruntime")):
            portable = make_portable(_shared_copy(deployed))
    except FalconError as e:
        run.result.notes.append(f"{pm.label}: {e}")
        return None
    finally:
        pm.module = module = None  # the training form is not needed any more (memory: big models)
    dinfo_dict = {**dinfo.as_dict(), "weight_bytes": _weight_bytes(deployed)}
    if pm.role == "original":
        run.result.original_deploy = dinfo_dict
    else:
        next(c for c in run.result.conversions if c.label == pm.label).deploy = dinfo_dict
    run.tick(f"{pm.label}: deployable form ({dinfo.describe()})")
    return _Forms(deployed, portable, reference)


def _task(run: Run, pm: PreparedModel, runtime: str, layout: str, forms: _Forms, inputs: dict[str, torch.Tensor],
          label: str) -> _Task:
    """One (model, runtime, layout): prepared, called once (compile: compiled there), its output checked against
    eager fp32; with a timer when it passed. A runtime failing on this model is a one-line message."""
    timing = Timing(pm.label, pm.role, runtime, layout)
    x = inputs[layout]
    t0 = time.perf_counter()
    call, task_module, check = None, None, None
    try:
        call, task_module = _runtime_call(run, pm, runtime, layout, forms, x, inputs["contiguous"])
        with torch.inference_mode():
            out = call()  # compile: the compilation happens here
            _sync(run.dev)
        check = parity(forms.reference, out)
    except Exception as e:  # noqa: BLE001 - a runtime failing on this model: one line
        timing.status, timing.message = "failed", _line(f"{type(e).__name__}: {e}")
    timing.prepare_seconds = time.perf_counter() - t0
    if check is not None:
        timing.max_abs_error, timing.relative_error = check.max_abs_error, check.relative_error
        if not check.ok:
            timing.status = "failed"
            timing.message = f"output differs from eager fp32 ({check.describe()}); not timed"
    run.result.timings.append(timing)
    ok = timing.status == "ok"
    task = _Task(pm, runtime, layout, call if ok else (lambda: None), timing, module=task_module, x=x)
    if ok:
        task.timer = benchmark.Timer(stmt="call()", globals={"call": task.call}, num_threads=run.threads,
                                     label=label, sub_label=f"{runtime} {layout}", description=pm.label)
    return task


def _runtime_call(run: Run, pm: PreparedModel, runtime: str, layout: str, forms: _Forms, x: torch.Tensor,
                  reference_input: torch.Tensor) -> tuple[Callable[[], Any], nn.Module | None]:
    """The call that runs ``pm`` in ``runtime`` on ``x``, and the eager module it runs (None for the others)."""
    if runtime == "eager":  # the last eager layout re-lays out the deployable form itself; the others a copy
        module = (forms.deployed if layout == run.runtime_layouts["eager"][-1] else
                  _shared_copy(forms.deployed, keep_4d=False))
        module = module.to(memory_format=MEMORY_FORMATS[layout])
        return (lambda: module(x)), module
    if runtime == "compile":
        run.tick(f"compiling {pm.label} ({layout})", 0)
        compiled = torch.compile(copy.deepcopy(forms.portable).to(memory_format=MEMORY_FORMATS[layout]),
                                 backend="inductor")
        return (lambda: compiled(x)), None
    from falcon.export import export_onnx, onnx_session

    run.tick(f"exporting {pm.label} to ONNX", 0)
    data = export_onnx(_shared_copy(forms.portable).cpu(), reference_input.cpu(), dynamic_batch=False)
    session = onnx_session(data, run.threads, run.dev)
    del data
    return _ort_call(session, x, run.dev), None
