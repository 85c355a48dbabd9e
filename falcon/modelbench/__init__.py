"""Whole-model latency: the original network beside its converted form, per runtime and layout, with the reasons.

:func:`measure_model` answers "if I convert this model, how much faster does it run here, in the runtime I
deploy with?", with the rigour of the layer benchmark (:mod:`falcon.bench`):

1. **Memory guard first.** Before any weight is allocated, the model runs on PyTorch's ``meta`` device at the
   requested batch (shapes only) and the bytes of the largest (input + output) of any unit, the weights and
   their copies (one per model, runtime and layout) are compared with :func:`falcon.bench.memory_budget`;
   a plan that does not fit is refused with a one-line :class:`~falcon.errors.FalconError`.
2. **The models.** The original (``weights``: :func:`falcon.sources.load_model`), and each conversion:
   FALCON/DSConv fitted to the original's kernels with SVD (:func:`falcon.conversion.convert_model`), other
   types built with random weights (:func:`falcon.sizing.build_sized`; fine for timing). Both are timed in
   their deployable form (:func:`falcon.export.deploy_form`): BN folded into the conv before it, FALCON's k
   branches fused into two convolutions; the original's BNs are folded too, so that both sides are what a
   deployment runs.
3. **Runtimes.** ``eager`` (PyTorch, in contiguous and channels-last layouts), ``compile`` (``torch.compile``,
   inductor, with ``freezing``: weights as constants, the CPU inference setting; both layouts) and
   ``onnxruntime`` (``torch.onnx.export`` then ONNX Runtime: CPU execution provider, CUDA's when the device
   is CUDA and ORT has it). A runtime that cannot run here (no C++ compiler for inductor, no onnxruntime
   installed) is one line in the result, not a traceback. Every (model, runtime, layout)'s output is checked
   against eager fp32 of the model it came from on the same input; beyond :data:`falcon.export.PARITY_RTOL`
   (relative) it is reported failed and not timed.
4. **Timing.** ``torch.utils.benchmark.Timer`` with explicit threads (``torch.set_num_threads`` for the whole
   run, and ORT's ``intra_op_num_threads``), CUDA synchronised, under ``torch.inference_mode``; a warm-up per
   entry (compilation happens there), then ``rounds`` rounds visiting every entry once in an order rotated
   each round, a ``blocked_autorange(min_run_time)`` per visit; median and IQR over all timed blocks.
5. **Where the time goes.** ``torch.profiler`` (CPU; CUDA kernels on CUDA) on the eager deployable forms, in
   the layout where the converted model is fastest, with one profiler range per unit: time in replaced convs,
   unreplaced convs, BN/activation/pooling, the classifier (``nn.Linear``) and other (everything outside
   those units: residual additions, flatten, Python). Each replaced layer's measured speedup is put beside
   its MAC ratio; the Amdahl ceiling is the model speedup the MAC counts allow if only the replaced convs
   shrink: ``T / (T − T_replaced + T_replaced / mac_ratio_replaced)`` on the original's profile. The parts are
   checked against the timed median (they must add up to it within 10%).

Every result records device, threads, torch version, each runtime and its version. ``progress(fraction,
message)`` is called as the run advances and ``should_stop()`` asked before each step; a stopped run returns
what it has, marked ``stopped``. This module never imports streamlit.

The package, one concern a module: :mod:`~falcon.modelbench.prepare` (the models),
:mod:`~falcon.modelbench.memory` (the guard), :mod:`~falcon.modelbench.runtimes`, :mod:`~falcon.modelbench.tasks`
(deployable forms, parity, timers), :mod:`~falcon.modelbench.measure` (the steps in order; the timed rounds are
:func:`falcon.bench.run_rounds`, the layer benchmark's), :mod:`~falcon.modelbench.profile` and
:mod:`~falcon.modelbench.breakdown` (where the time goes), :mod:`~falcon.modelbench.results` (what is recorded and
concluded) and :mod:`~falcon.modelbench.cli` (``python -m falcon.modelbench``; ``python -m falcon bench --model``).
"""
from falcon.modelbench.breakdown import add_breakdowns
from falcon.modelbench.cli import add_model_args, main, main_args, print_report, run
from falcon.modelbench.measure import DEFAULT_ROUNDS, WARMUP_CALLS, measure_model
from falcon.modelbench.memory import MemoryPlan, plan_memory
from falcon.modelbench.prepare import (
    PreparedModel,
    PreparedModels,
    parse_conversions,
    prepare_models,
    prepared_from_modules,
)
from falcon.modelbench.profile import Profile, profile_model
from falcon.modelbench.results import (
    BREAKDOWN_TOLERANCE,
    CATEGORIES,
    CATEGORY_LABELS,
    Breakdown,
    Conversion,
    LayerTime,
    ModelBenchResult,
    Timing,
    _why_above,
    last_level_cache_bytes,
)
from falcon.modelbench.runtimes import (
    RUNTIMES,
    RuntimeInfo,
    _layouts,
    parse_runtimes,
    runtime_info,
)
from falcon.modelbench.tasks import ProgressFn, StopFn

__all__ = [
    "BREAKDOWN_TOLERANCE", "CATEGORIES", "CATEGORY_LABELS", "DEFAULT_ROUNDS", "RUNTIMES", "WARMUP_CALLS",
    "Breakdown", "Conversion", "LayerTime", "MemoryPlan", "ModelBenchResult", "PreparedModel", "PreparedModels",
    "Profile", "ProgressFn", "RuntimeInfo", "StopFn", "Timing", "_layouts", "_why_above", "add_breakdowns",
    "add_model_args", "last_level_cache_bytes", "main", "main_args", "measure_model", "parse_conversions",
    "parse_runtimes", "plan_memory", "prepare_models", "prepared_from_modules", "print_report", "profile_model",
    "run", "runtime_info",
]
