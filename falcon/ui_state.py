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

    from falcon.counting import count_thop, no_init_on_meta

    hparams = hparams or {}
    rows = []
    for name, ct in CONV_TYPES.items():
        hp = hparams.get(name, {})
        try:
            cost = ct.cost(spec, **hp)
        except FalconError:
            continue  # the calculator shows that type's error already
        with torch.device("meta"), no_init_on_meta():  # shapes only: nothing to initialize
            module = ct.build(spec, **hp)
        # the block's own input width: ShuffleUnit α× reads α·M channels
        first = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
        counted = count_thop(module, (first.in_channels, spec.height, spec.width), copy_model=False)
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

OWN_RUN_COLUMNS = ["model", "dataset", "method", "rank", "top1", "top5", "params_m", "macs_m", "table", "run_id"]


def own_runs(db: str | None = None) -> pd.DataFrame:
    """The project's completed fine-tuning runs as accuracy points, in the paper frame's columns
    (percent, millions; :func:`falcon.experiments.store.accuracy_points`). Empty when there are none
    or the results store is not installed."""
    try:
        from falcon.experiments.store import accuracy_points
    except ImportError:
        return pd.DataFrame(columns=OWN_RUN_COLUMNS)
    try:
        points = accuracy_points(db, latest=True)  # the latest run of each configuration
    except TypeError:  # an older store without ``latest``
        points = accuracy_points(db)
    if not points:
        return pd.DataFrame(columns=OWN_RUN_COLUMNS)
    df = pd.DataFrame(points)
    df["rank"] = pd.array(df["rank"], dtype="Int64")
    return df


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


# ----------------------------------------------------------------------------------------------
# EHP fit of one layer of a real model


def fittable_layers(model, input_size: tuple[int, int, int]) -> list[dict[str, Any]]:
    """The convs of ``model`` that FALCON/DSConv can fit (groups 1, square kernel > 1×1), in forward
    order, with their shapes and the spatial size of their input."""
    import torch

    from falcon.surgery import conv_sites

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type != "meta":  # shapes only: run the walk on a meta copy, not on the trained weights
        import copy

        with torch.device("meta"):
            shadow = copy.deepcopy(model).to("meta")
    else:
        shadow = model
    rows = []
    for site in conv_sites(shadow, input_size):
        if not site.replaceable:
            continue
        s = site.spec
        rows.append({"name": site.name, "in_channels": s.M, "out_channels": s.N, "kernel_size": s.D,
                     "stride": s.stride, "padding": s.padding, "height": s.height, "width": s.width,
                     "params": s.D * s.D * s.M * s.N, "bias": site.bias,
                     "label": f"{site.name} · {s.M}→{s.N} {s.D}×{s.D}/{s.stride} · input {s.height}×{s.width}"})
    return rows


def layer_input(model, layer: str, x):
    """The tensor that reaches ``layer`` when ``model`` (eval mode) runs on ``x``."""
    import torch

    seen = {}
    module = model.get_submodule(layer)

    def grab(_m, inputs):
        seen["x"] = inputs[0].detach()
        raise _Captured

    handle = module.register_forward_pre_hook(grab)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
        model.train(was_training)
    if "x" not in seen:
        raise FalconError(f"layer {layer!r} is not reached by the model's forward pass")
    return seen["x"]


class _Captured(Exception):
    """Stops the forward pass once the layer's input is captured."""


class LayerProbe:
    """``model`` run once up to ``layer`` on fixed inputs, so that trying a replacement block only runs the
    layer and what comes after it.

    The model is traced with ``torch.fx``; the values computed before the layer that later nodes still
    need (the layer's input, skip connections) are kept. Models fx cannot trace fall back to running
    the whole network each time. Inputs run in ``channels_last`` (on CPU the depthwise convs of the
    FALCON/DSConv blocks are many times faster in it), under ``torch.inference_mode``.
    """

    def __init__(self, model, layer: str, x):
        import torch
        import torch.fx

        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self.model, self.layer, self.x = model, layer, x
        self._graph = None
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception:  # noqa: BLE001 - control flow fx cannot trace: run the whole model instead
            gm = None
        nodes = list(gm.graph.nodes) if gm is not None else []
        at = next((i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer), None)
        if gm is None or at is None or len(nodes[at].args) != 1:
            self.input = layer_input(model, layer, x)
            return
        interp = torch.fx.Interpreter(gm)
        interp.env, interp.args_iter = {}, iter([x])
        with torch.inference_mode():
            for node in nodes[:at]:
                interp.env[node] = interp.run_node(node)
        later = nodes[at:]
        self.input = interp.env[nodes[at].args[0]]
        self._kept = {n: interp.env[n] for n in nodes[:at] if any(u in later for u in n.users)}
        self._graph, self._node, self._later = gm, nodes[at], later[1:]

    def output(self, module):
        import torch

        with torch.inference_mode():
            return module(self.input)

    def logits(self, module):
        """The network's output with ``module`` in place of the layer."""
        import torch

        if self._graph is None:  # no trace: a copy of the model with the module swapped in
            import copy

            from falcon.surgery import set_module

            clone = copy.deepcopy(self.model)
            set_module(clone, self.layer, module)
            with torch.inference_mode():
                return clone(self.x)
        interp = torch.fx.Interpreter(self._graph)
        # clones: an in-place op after the layer must not change the kept values
        interp.env = {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in self._kept.items()}
        with torch.inference_mode():
            interp.env[self._node] = module(self.input)
            for node in self._later:
                value = interp.run_node(node)
                if node.op == "output":
                    return value
                interp.env[node] = value
        raise FalconError("the traced model has no output")


def output_error(conv, block, x) -> float:
    """‖conv(x) − block(x)‖ / ‖conv(x)‖ on the sample inputs ``x``: what the fit changes in the layer's output."""
    import torch

    with torch.inference_mode():
        y, y_hat = conv(x).double(), block(x).double()
    den = torch.linalg.vector_norm(y).item()
    num = torch.linalg.vector_norm(y - y_hat).item()
    return num / den if den else (0.0 if num == 0 else math.inf)


def accuracy_with_layer(model, layer: str, block, dataset) -> float:
    """Top-1 accuracy of ``model`` with only ``layer`` replaced by ``block`` (a copy; ``model`` is untouched)."""
    import copy

    from falcon.models.digits import evaluate_accuracy
    from falcon.surgery import set_module

    clone = copy.deepcopy(model)
    set_module(clone, layer, copy.deepcopy(block))
    return evaluate_accuracy(clone, dataset)


def block_from_fit(conv, conv_type: str, fit, spec: LayerSpec):
    """A bare FALCON/DSConv block that computes ``conv`` up to the fit: the fit's factors loaded, the
    conv's bias (if any) carried over (:func:`falcon.ehp.load_fit_into`, :func:`falcon.ehp.attach_bias`)."""
    from falcon.ehp import attach_bias, load_fit_into

    block = get_conv_type(conv_type).build(spec, rank=fit.rank_used).to(device=conv.weight.device, dtype=conv.weight.dtype)
    load_fit_into(block, fit)
    if conv.bias is not None:
        attach_bias(block, conv.bias.detach())
    return block.eval()


#: Where the EHP-fit page takes a model from.
FIT_SOURCES = {"digits-vgg": "digits-vgg (bundled)", "torchvision": "torchvision", "checkpoint": "checkpoint"}


@dataclass
class LoadedModel:
    """A trained model ready for fitting: its fittable layers, sample inputs and (digits) held-out set."""

    key: str  # identifies source, name and weights (cache key)
    name: str
    model: Any  # nn.Module in eval mode; shared, never modified
    input_size: tuple[int, int, int]
    layers: list[dict[str, Any]]
    samples: Any  # a batch of inputs to measure a layer's output error on
    samples_label: str  # what the samples are
    dataset: Any = None  # TensorDataset to evaluate accuracy on, when the model has one
    baseline_accuracy: float | None = None

    def conv(self, layer: str):
        return self.model.get_submodule(layer)

    def kernel(self, layer: str):
        return self.conv(layer).weight.detach()

    def spec(self, layer: str) -> LayerSpec:
        row = next(r for r in self.layers if r["name"] == layer)
        return LayerSpec(row["in_channels"], row["out_channels"], row["kernel_size"], row["height"], row["width"],
                         stride=row["stride"], padding=row["padding"])


def load_for_fit(source: str, name: str = "digits-vgg", checkpoint: bytes | None = None,
                 samples: int = 256, seed: int = 0) -> LoadedModel:
    """Load a trained model from ``source`` (see :data:`FIT_SOURCES`) for the EHP-fit page.

    digits-vgg comes with its held-out digits (sample inputs and accuracy); other models get ``samples``
    seeded random-normal images (at most 8) as sample inputs.
    """
    import hashlib

    import torch

    if source not in FIT_SOURCES:
        raise FalconError(f"unknown model source {source!r}; choose one of {', '.join(FIT_SOURCES)}")
    dataset = baseline = None
    if source == "digits-vgg":
        from falcon.datasets import load_digits
        from falcon.models.digits import digits_vgg, evaluate_accuracy

        model, name = digits_vgg(pretrained=True), "digits-vgg"
        dataset = load_digits("test")
        baseline = evaluate_accuracy(model, dataset)
        input_size = (1, 32, 32)
        x, label = dataset.tensors[0], f"the {len(dataset)} held-out digits"  # accuracy needs them all
        key = "digits-vgg"
    else:
        model, input_size = _load_external(source, name, checkpoint)
        gen = torch.Generator().manual_seed(seed)
        n = min(samples, 8)
        x, label = torch.randn((n, *input_size), generator=gen), f"{n} random N(0,1) images"
        key = f"{source}:{name}:" + (hashlib.sha1(checkpoint).hexdigest()[:12] if checkpoint else "pretrained")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(key, name, model, input_size, fittable_layers(model, input_size), x, label, dataset, baseline)


def _load_external(source: str, name: str, checkpoint: bytes | None):
    """torchvision pretrained weights or a checkpoint, through :mod:`falcon.sources` (issue "EHP fit")."""
    try:
        from falcon import sources
    except ImportError:
        raise FalconError("loading torchvision weights and checkpoints needs falcon.sources, which is not in this "
                          "version yet; use the bundled digits-vgg") from None
    return sources.load_for_app(source, name, checkpoint)


def kernel_info(kernel, conv_type: str) -> dict[str, Any]:
    """Singular-value energy per channel (:func:`falcon.ehp.singular_energy`), the optimal error at every rank
    and the rank that keeps 90% of every channel's energy."""
    import numpy as np

    from falcon.ehp import conv_type_axis, error_by_rank, rank_for_energy, singular_energy

    axis = conv_type_axis(conv_type)
    energy = singular_energy(kernel, axis).numpy()
    return {"energy": energy, "median_energy": [float(v) for v in np.median(energy, axis=0)],
            "rank_90": int(rank_for_energy(kernel, axis, 0.9).max()), "error_by_rank": error_by_rank(kernel, axis)}


def fit_effect(loaded: LoadedModel, layer: str, conv_type: str, fit, probe: LayerProbe | None = None) -> dict[str, Any]:
    """What a fit does to the layer: its output error on the sample inputs, the layer's params, and (with a
    held-out set, which the samples then are) the model's accuracy with only this layer replaced.
    ``probe``: a :class:`LayerProbe` of this layer on ``loaded.samples`` (made here when not given)."""
    import torch

    spec = loaded.spec(layer)
    conv = loaded.conv(layer)
    block = block_from_fit(conv, conv_type, fit, spec)
    probe = probe or LayerProbe(loaded.model, layer, loaded.samples)
    out = {"spec": spec, "samples": loaded.samples_label, "output_error": output_error(conv, block, probe.input),
           "params": sum(p.numel() for p in block.parameters()),
           "standard_params": sum(p.numel() for p in conv.parameters())}
    if loaded.dataset is not None:
        labels = loaded.dataset.tensors[1][: len(probe.input)]
        out["accuracy"] = float((probe.logits(block).argmax(1) == labels).to(torch.float64).mean())
        out["baseline_accuracy"] = loaded.baseline_accuracy
    return out


def fit_summary(loaded: LoadedModel, layer: str, conv_type: str, fit, optimum, info: dict, effect: dict,
                how: str) -> str:
    """A paragraph a teacher can point at: what was fitted, how well, what it saves and what it changes."""
    ct = get_conv_type(conv_type)
    spec = effect["spec"]
    k = fit.rank_used
    cmp = compare(spec, conv_type, rank=k)
    axis = "output" if ct.fit_axis == "output" else "input"
    energy = info["median_energy"][k - 1]
    text = (f"Layer **{layer}** of {loaded.name} is a {spec.D}×{spec.D} convolution from {spec.M} to {spec.N} "
            f"channels. **Rank-{k} {ct.label}** writes its kernel as {k} pointwise × depthwise product"
            f"{'s' if k > 1 else ''} sharing the {axis} channel; the median channel keeps {energy:.1%} of its energy at "
            f"this rank, so the best possible relative error is **{optimum.relative_error:.3f}** "
            f"(exact from rank {fit.full_rank} on). The {how} reaches **{fit.relative_error:.3f}**. The layer "
            f"then holds {cmp.cost.params:,} instead of {cmp.standard.params:,} weights "
            f"(**{cmp.compression_rate:.1f}× fewer**) and needs {cmp.computation_reduction_rate:.1f}× fewer MACs. "
            f"On {effect['samples']} its output changes by {effect['output_error']:.1%}")
    if effect.get("accuracy") is not None:
        text += (f", and the network, with only this layer replaced and no fine-tuning, classifies "
                 f"**{effect['accuracy']:.1%}** of the held-out digits correctly (original: {effect['baseline_accuracy']:.1%}).")
    else:
        text += "."
    return text
