"""What the app's pages show, computed without Streamlit (so tests and the CLI can check it).

The pages are thin: they read widgets, call these functions (which call the cost engine, the sizing
code, the EHP fit and the benchmark), and draw what comes back. Nothing here imports streamlit.

* :func:`describe_device` — the sentence the sidebar shows about the machine.
* :func:`layer_rows`, :func:`rank_sweep`, :func:`thop_check` — the layer calculator's numbers.
* :func:`paper_rows`, :data:`PAPER_HPARAMS` — the thesis's published rows that match a sizing.
* :class:`BackgroundJob` — long work (a benchmark, a gradient-descent fit) run in a thread that a
  page polls, with progress and a stop flag.
* :func:`own_runs` — the project's own accuracy points, when the results store exists.
"""
from __future__ import annotations

import math
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from falcon.convtypes import CONV_TYPES, Cost, break_even_rank, compare, get_conv_type
from falcon.errors import FalconError
from falcon.spec import LayerSpec

# ----------------------------------------------------------------------------------------------
# device


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" or "cpu"
    name: str  # GPU name or CPU model
    threads: int  # torch's intra-op threads (CPU)
    cpu_count: int | None

    @property
    def short(self) -> str:
        """What a button says: "NVIDIA H100" or "CPU (2 threads)"."""
        return self.name if self.kind == "cuda" else f"CPU ({self.threads} thread{'s' if self.threads != 1 else ''})"

    @property
    def sentence(self) -> str:
        if self.kind == "cuda":
            return f"GPU: {self.name}. Measurements run on it; sizing and fitting need no GPU."
        return (f"CPU, {self.threads} thread{'s' if self.threads != 1 else ''} ({self.name}; "
                f"{self.cpu_count or '?'} cores visible). No GPU: measurements run on the CPU.")


def describe_device() -> DeviceInfo:
    """The device the app measures on: the first CUDA GPU when there is one, else the CPU."""
    import torch

    from falcon.bench import device_name

    if torch.cuda.is_available():
        return DeviceInfo("cuda", torch.cuda.get_device_name(0), torch.get_num_threads(), os.cpu_count())
    return DeviceInfo("cpu", device_name(torch.device("cpu")), torch.get_num_threads(), os.cpu_count())


# ----------------------------------------------------------------------------------------------
# layer calculator


def default_hparams() -> dict[str, dict[str, Any]]:
    """Every conv type's hyper-parameters at their registry defaults."""
    return {name: {h.name: h.default for h in ct.hparams} for name, ct in CONV_TYPES.items()}


def latex_int(n: int) -> str:
    """12345678 → ``12{,}345{,}678`` (thousands separators that LaTeX does not space out)."""
    return f"{n:,}".replace(",", "{,}")


def parts_latex(cost: Cost, what: str) -> str:
    """The parts of a cost added up in LaTeX: ``65{,}536 + 2{,}304 = 67{,}840`` (``what``: params or macs)."""
    values = [getattr(p, what) for p in cost.parts]
    total = getattr(cost, what)
    if len(values) <= 1:
        return latex_int(total)
    return " + ".join(latex_int(v) for v in values) + " = " + latex_int(total)


def layer_rows(spec: LayerSpec, hparams: dict[str, dict[str, Any]] | None = None,
               convs: list[str] | None = None, keep_going: bool = False) -> list[dict[str, Any]]:
    """One row per conv type: its cost next to the standard conv's (from :func:`falcon.convtypes.compare`).

    ``hparams`` maps a conv type to its hyper-parameters (missing ones: the registry defaults). When a
    type's hyper-parameters do not fit the layer this raises :class:`FalconError`, or with
    ``keep_going`` gives that type a row with only ``conv``, ``label``, ``color`` and ``error``.
    """
    hparams = hparams or {}
    rows = []
    for name in convs or list(CONV_TYPES):
        ct = get_conv_type(name)
        try:
            c = compare(spec, name, **hparams.get(name, {}))
        except FalconError as e:
            if not keep_going:
                raise
            rows.append({"conv": name, "label": ct.label, "color": ct.color, "error": str(e)})
            continue
        rows.append({
            "conv": name,
            "label": ct.display_name(**c.hparams),
            "color": ct.color,
            "hparams": dict(c.hparams),
            "params": c.cost.params,
            "macs": c.cost.macs,
            "compression_rate": c.compression_rate,
            "computation_reduction_rate": c.computation_reduction_rate,
            "latex_params": ct.latex_params,
            "latex_macs": ct.latex_macs,
            "params_sum": parts_latex(c.cost, "params"),
            "macs_sum": parts_latex(c.cost, "macs"),
            "parts": [{"part": p.name, "params": p.params, "macs": p.macs} for p in c.cost.parts],
        })
    return rows


def layer_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The calculator's table: conv type, params, MACs, CR, CRR (rows with an error are left out)."""
    rows = [r for r in rows if "error" not in r]
    return pd.DataFrame({
        "conv type": [r["label"] for r in rows],
        "params": [r["params"] for r in rows],
        "MACs": [r["macs"] for r in rows],
        "CR (params)": [r["compression_rate"] for r in rows],
        "CRR (MACs)": [r["computation_reduction_rate"] for r in rows],
    }, index=pd.Index([r["conv"] for r in rows], name="conv"))


def ranked_types() -> list[str]:
    """Conv types that have a rank k (falcon, dsconv)."""
    return [n for n, ct in CONV_TYPES.items() if any(h.name == "rank" for h in ct.hparams)]


def rank_sweep(spec: LayerSpec, conv: str = "falcon", max_rank: int | None = None) -> pd.DataFrame:
    """CR and CRR of rank-k ``conv`` for k = 1 … max_rank (default: a little past both break-even ranks)."""
    ct = get_conv_type(conv)
    top = next(h.maximum for h in ct.hparams if h.name == "rank")
    if max_rank is None:
        be = max(break_even_rank(spec, conv, "params"), break_even_rank(spec, conv, "macs"))
        max_rank = min(top, max(4, math.ceil(be * 1.25)))
    rows = []
    for k in range(1, max_rank + 1):
        c = compare(spec, conv, rank=k)
        rows.append({"rank": k, "params": c.cost.params, "macs": c.cost.macs,
                     "compression_rate": c.compression_rate,
                     "computation_reduction_rate": c.computation_reduction_rate})
    return pd.DataFrame(rows)


def thop_check(spec: LayerSpec, hparams: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """Each type's bare block built on PyTorch's ``meta`` device and profiled by thop, next to the closed form."""
    import torch

    from falcon.counting import count_thop

    hparams = hparams or {}
    rows = []
    for name, ct in CONV_TYPES.items():
        hp = hparams.get(name, {})
        try:
            cost = ct.cost(spec, **hp)
        except FalconError:
            continue  # the calculator shows that type's error already
        with torch.device("meta"):
            module = ct.build(spec, **hp)
        counted = count_thop(module, (spec.M, spec.height, spec.width))
        rows.append({"conv": name, "conv type": ct.display_name(**ct.resolve(spec, **hp)),
                     "closed-form params": cost.params, "thop params": counted.params,
                     "closed-form MACs": cost.macs, "thop MACs": counted.macs,
                     "agree": cost.params == counted.params and cost.macs == counted.macs})
    return pd.DataFrame(rows).set_index("conv")


# ----------------------------------------------------------------------------------------------
# sizing: the thesis's rows that match a sizing

#: The competitors' hyper-parameters in the thesis's tables (MobileConvV2-0.5, ShuffleUnit 2× with g=2).
PAPER_HPARAMS: dict[str, dict[str, Any]] = {
    "standard": {}, "falcon": {}, "dsconv": {"rank": 1},
    "mobilev2": {"expansion": 0.5}, "shuffle": {"groups": 2, "width_mult": 2.0},
}


def paper_rows(model: str, conv: str, hparams: dict[str, Any], num_classes: int, input_size: int) -> pd.DataFrame:
    """The thesis's rows for this sizing: same model, classes, input size, conv type and hyper-parameters.

    Empty when the thesis has no such row (another model, another width, a rank above 3 …). Several
    rows can match (CIFAR-10 and SVHN share a model shape): they carry the same params/MACs.
    """
    from falcon.paper import DATASET_CLASSES, DATASET_INPUT_SIZE, PAPER_MODELS, load_paper_results

    paper_names = [p for p, ours in PAPER_MODELS.items() if ours == model]
    if not paper_names or conv not in PAPER_HPARAMS:
        return pd.DataFrame()
    want = PAPER_HPARAMS[conv]
    if any(hparams.get(k) != v for k, v in want.items()):
        return pd.DataFrame()
    df = load_paper_results()
    datasets = [d for d in DATASET_CLASSES
                if DATASET_CLASSES[d] == num_classes and DATASET_INPUT_SIZE[d] == input_size]
    sel = df[df["model"].isin(paper_names) & df["dataset"].isin(datasets) & (df["method"] == conv)]
    if conv == "falcon":
        sel = sel[sel["rank"] == hparams.get("rank", 1)]
    return sel.reset_index(drop=True)


def paper_comparison(paper: pd.DataFrame, params: int, macs: int) -> pd.DataFrame:
    """Published params/MACs (millions, as printed) beside ours, with the differences."""
    rows = []
    for _, r in paper.iterrows():
        for what, ours, theirs in (("params", params, r["params_m"]), ("MACs (FLOPs)", macs, r["macs_m"])):
            ours_m = ours / 1e6
            rows.append({"dataset": r["dataset"], "table": r["table"], "quantity": what,
                         "paper (M)": float(theirs), "ours (M)": ours_m, "difference (M)": ours_m - theirs,
                         "difference (%)": 100 * (ours_m - theirs) / theirs if theirs else float("nan")})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# accuracy vs cost: the project's own runs (issue "Compress-and-fine-tune experiments")

OWN_RUN_COLUMNS = ["model", "dataset", "method", "rank", "top1", "params_m", "macs_m", "run_id"]


def own_runs() -> pd.DataFrame:
    """The project's stored fine-tuning runs as accuracy points, in the paper frame's columns.

    Hook for the results store: ``falcon.experiments.results_frame()`` (a DataFrame with at least
    model, dataset, conv or method, rank, finetuned_accuracy or top1, params, macs, run_id) when that
    module exists; an empty frame otherwise. Accuracy is returned in percent, params/MACs in millions.
    """
    try:
        from falcon import experiments  # noqa: PLC0415 - optional, built by another issue
    except ImportError:
        return pd.DataFrame(columns=OWN_RUN_COLUMNS)
    getter = getattr(experiments, "results_frame", None)
    if getter is None:
        return pd.DataFrame(columns=OWN_RUN_COLUMNS)
    raw = getter()
    if raw is None or len(raw) == 0:
        return pd.DataFrame(columns=OWN_RUN_COLUMNS)
    return normalize_runs(pd.DataFrame(raw))


def normalize_runs(raw: pd.DataFrame) -> pd.DataFrame:
    """Map a results-store frame onto the paper frame's columns (percent, millions)."""
    out = pd.DataFrame()
    out["model"] = raw["model"].astype(str)
    out["dataset"] = raw["dataset"].astype(str)
    out["method"] = (raw["conv"] if "conv" in raw else raw["method"]).astype(str)
    out["rank"] = raw["rank"] if "rank" in raw else pd.NA
    acc = raw["top1"] if "top1" in raw else raw["finetuned_accuracy"]
    acc = pd.to_numeric(acc, errors="coerce")
    out["top1"] = acc * 100 if acc.dropna().le(1.0).all() else acc
    out["params_m"] = raw["params_m"] if "params_m" in raw else pd.to_numeric(raw["params"]) / 1e6
    out["macs_m"] = raw["macs_m"] if "macs_m" in raw else pd.to_numeric(raw["macs"]) / 1e6
    out["run_id"] = raw["run_id"].astype(str) if "run_id" in raw else [str(i) for i in range(len(raw))]
    return out.dropna(subset=["top1"]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# background work a page can poll


@dataclass
class BackgroundJob:
    """Run ``target(job)`` in a daemon thread; the page polls it and may ask it to stop.

    ``target`` reports with :meth:`report` (progress in [0, 1], a label), appends records to
    ``job.records`` (a list only the thread appends to) and asks :meth:`should_stop` between steps.
    Its return value lands in ``result``; a :class:`FalconError` in ``error`` (its message); any other
    exception in ``error`` too, with the traceback in ``trace`` (a page shows the message, not it).
    """

    target: Callable[["BackgroundJob"], Any]
    name: str = "job"
    progress: float = 0.0
    label: str = ""
    records: list = field(default_factory=list)
    result: Any = None
    error: str | None = None
    trace: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> "BackgroundJob":
        self.started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"falcon-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self.target(self)
        except FalconError as e:
            self.error = str(e)
        except Exception as e:  # noqa: BLE001 - reported to the page, which shows the message
            self.error = f"{type(e).__name__}: {e}"
            self.trace = traceback.format_exc()
        finally:
            self.finished_at = time.perf_counter()

    def report(self, progress: float, label: str = "") -> None:
        self.progress = max(0.0, min(1.0, float(progress)))
        self.label = label

    def stop(self) -> None:
        self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    @property
    def seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.perf_counter()) - self.started_at

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (tests); True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done
