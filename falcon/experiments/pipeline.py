"""Compress and fine-tune: baseline → convert → evaluate → fine-tune → evaluate, stored as one run.

:func:`run_experiment` is the whole pipeline for one :class:`ExperimentConfig`:

1. the *baseline*: a pretrained model (the bundled digits-vgg on ``digits``), a checkpoint
   (``baseline=PATH``), or the model trained from scratch by the same loop (``baseline_epochs``);
   its held-out accuracy, parameters and MACs;
2. *convert*: the model's replaceable convs (the cost engine's policy, :mod:`falcon.surgery`) become
   ``conv`` blocks. falcon and dsconv are initialised from the EHP fit of the trained kernel
   (``init="svd"`` closed form, ``"gd"`` the thesis's gradient descent, ``"random"`` none), the BN that
   follows each conv is kept; mobilev2 and shuffle have no EHP fit: their blocks start from PyTorch's
   random init (``init="random"``) and everything else keeps the pretrained weights;
3. the *training-free* accuracy of the converted model;
4. *fine-tune* E epochs (seeded; SGD with momentum or AdamW; cosine schedule over all steps);
5. the *fine-tuned* accuracy; the run goes to the results store (:mod:`falcon.experiments.store`).

It runs on CPU or CUDA, reports progress through a callback, stops when ``should_stop()`` says so,
and runs unchanged under ``torchrun --nproc_per_node N`` (DistributedDataParallel, gloo on CPU, nccl
on CUDA, a DistributedSampler for training, evaluation sharded and summed; only rank 0 reports and
writes the store).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from falcon.conversion import INITS, PLAN  # one list of inits: the conversion's; a planned run's conv
from falcon.convtypes import get_conv_type
from falcon.errors import FalconError
from falcon.limits import parse_float, parse_int

ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]

TRAIN_OPTIMIZERS = ("sgd", "adamw")  # fine-tuning; the EHP fit has its own (falcon.ehp)
#: Learning rates that fine-tune a converted digits-vgg well in 3 epochs (docs/experiments.md).
DEFAULT_LR = {"sgd": 0.05, "adamw": 5e-3}
#: Batch size per process when none is given: small data sets need more steps per epoch.
DEFAULT_BATCH_SIZE = {"digits": 32}
FALLBACK_BATCH_SIZE = 128
#: conv types whose blocks can be initialised from the EHP fit of the replaced kernel


@dataclass
class ExperimentConfig:
    """Everything that defines a run (stored in full with it)."""

    model: str = "digits-vgg"
    dataset: str = "digits"
    conv: str = "falcon"
    hparams: dict[str, Any] = field(default_factory=dict)  # the conv type's: rank, expansion, groups, ...
    # instead of conv and hparams: a per-layer plan (falcon.planning; a dict or a JSON file of `falcon plan --json`);
    # resolved, conv is "plan" and this holds what the run keeps of it (falcon.experiments.plans.compact)
    plan: dict | str | None = None
    init: str | None = None  # svd | gd | random; default svd for falcon/dsconv, random otherwise
    epochs: int = 3
    lr: float | None = None  # default DEFAULT_LR[optimizer]
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int | None = None  # per process; default DEFAULT_BATCH_SIZE by data set, else 128
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data_dir: str | None = None
    download: bool = True
    baseline: str | None = None  # checkpoint (state_dict) of the model for this dataset
    baseline_epochs: int = 0  # train the baseline from scratch first when there is no pretrained one
    include_stem: bool | None = None
    augment: bool = True
    label_smoothing: float = 0.0
    channels_last: bool | None = None  # default: on CPU (depthwise convs are far faster in NHWC there)
    gd_steps: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    num_workers: int = 0
    threads: int | None = None  # CPU intra-op threads while the run lasts (None: PyTorch's default)
    # measured latency of the baseline and the converted model at the end (falcon.experiments.latency)
    latency: bool = True
    latency_runtime: str = "eager"  # eager | compile | onnxruntime (falcon.modelbench.RUNTIMES)
    latency_batch_size: int = 1
    latency_rounds: int = 5
    latency_layout: str = "auto"  # auto (both, each model in its fastest) | contiguous | channels_last
    latency_min_run_time: float = 0.2  # seconds of timing per model, layout and round

    @property
    def rank(self) -> int | None:
        """The uniform rank (the largest of the type's ranked hyper-parameters: Tucker-2 has two), None if unranked
        or planned (each layer its own)."""
        if self.plan is not None or self.conv == PLAN:
            return None
        ranks = [self.hparams[n] for n in get_conv_type(self.conv).rank_names if n in self.hparams]
        return max(ranks) if ranks else None

    @property
    def label(self) -> str:
        """``FALCON k=2``, or a plan's ``plan (macs 4×)`` (resolved configs)."""
        from falcon.convtypes import label_of
        from falcon.experiments import plans

        return plans.label(self.plan) if isinstance(self.plan, dict) else label_of(self.conv, self.hparams)

    def resolved(self) -> "ExperimentConfig":
        """A copy with defaults filled in and every field checked (FalconError on a bad one)."""
        from falcon.experiments.data import DATASETS

        c = dataclasses.replace(self, hparams=dict(self.hparams))
        if c.dataset not in DATASETS:
            raise FalconError(f"unknown dataset {c.dataset!r}; choose one of {', '.join(DATASETS)}")
        if c.optimizer not in TRAIN_OPTIMIZERS:
            raise FalconError(f"optimizer must be one of {', '.join(TRAIN_OPTIMIZERS)}, got {c.optimizer!r}")
        if c.plan is not None:
            _resolve_plan(c)
        else:
            _resolve_conv(c)
        _resolve_training(c)
        if c.latency:
            _check_latency(c)
        return c

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _resolve_plan(c: ExperimentConfig) -> None:
    """A planned run: the plan checked as data (for this model), conv :data:`PLAN`, its layers fitted (init svd)."""
    from falcon.experiments import plans

    if c.hparams:
        raise FalconError(f"a plan sets each layer's type and ranks; leave out {', '.join(c.hparams)}")
    if c.init not in (None, "svd"):
        raise FalconError(f"a plan's layers start from their fit (init svd), not {c.init}; leave out --init")
    c.plan, c.conv, c.init = plans.compact(c.plan, c.model), PLAN, "svd"


def _resolve_conv(c: ExperimentConfig) -> None:
    """A uniform run: the type's hyper-parameters resolved, its init by default (svd if fittable)."""
    ct = get_conv_type(c.conv)
    c.hparams = ct.resolve(**{k: v for k, v in c.hparams.items() if k in {h.name for h in ct.hparams}})
    if c.init is None:
        c.init = "svd" if ct.fittable else ("none" if c.conv == "standard" else "random")
    elif c.conv == "standard":
        c.init = "none"
    elif c.init not in INITS:
        raise FalconError(f"init must be one of {', '.join(INITS)}, got {c.init!r}")
    elif not ct.fittable and c.init != "random":
        raise FalconError(f"{c.conv} cannot be fitted to trained kernels, so it has no {c.init} fit; use --init random")
    if ct.widens(**c.hparams):
        raise FalconError(f"{ct.display_name(**c.hparams)} changes the widths of the kept layers, so their "
                          "pretrained weights cannot be kept; use settings that keep the widths (ShuffleUnit: "
                          "--width-mult 1); these can be sized, not fine-tuned")


def _resolve_training(c: ExperimentConfig) -> None:
    if c.lr is None:
        c.lr = DEFAULT_LR[c.optimizer]
    if c.batch_size is None:
        c.batch_size = DEFAULT_BATCH_SIZE.get(c.dataset, FALLBACK_BATCH_SIZE)
    for bound, value, label in (("epochs", c.epochs, "epochs"), ("batch_size", c.batch_size, "batch size"),
                                ("epochs", c.baseline_epochs, "baseline epochs"), ("seed", c.seed, "seed"),
                                ("threads", c.threads, "threads"), ("steps", c.gd_steps, "gd steps"),
                                ("images", c.limit_train, "limit train"), ("images", c.limit_test, "limit test")):
        if value is not None or bound not in ("threads", "steps", "images"):  # those may be None (no limit)
            parse_int(value, bound, label)
    c.lr = parse_float(c.lr, "lr", "learning rate")
    parse_float(c.weight_decay, "weight_decay", "weight decay")


def _check_latency(c: ExperimentConfig) -> None:
    from falcon.experiments.latency import LATENCY_LAYOUTS
    from falcon.modelbench import RUNTIMES

    if c.latency_runtime not in RUNTIMES:
        raise FalconError(f"latency runtime must be one of {', '.join(RUNTIMES)}, got {c.latency_runtime!r}")
    if c.latency_layout not in LATENCY_LAYOUTS:
        raise FalconError(f"latency layout must be one of {', '.join(LATENCY_LAYOUTS)}, got {c.latency_layout!r}")
    parse_int(c.latency_batch_size, "batch_size", "latency batch size")
    parse_int(c.latency_rounds, "rounds", "latency rounds")
    parse_float(c.latency_min_run_time, "min_run_time", "latency min run time")


@dataclass
class Baseline:
    """A trained model ready to be converted, with its numbers (shared by the runs of a sweep)."""

    model: nn.Module  # on the CPU, eval mode; never modified (converted runs work on a copy)
    accuracy: float
    params: int
    macs: int
    source: str
    seconds: float
    history: list[dict] = field(default_factory=list)


class Stopped(Exception):
    """Raised inside the loop when ``should_stop()`` is true."""


# ----------------------------------------------------------------------------------------------
# processes and devices
@dataclass(frozen=True)
class Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the process group that torchrun describes in the environment (no-op for one process).

    Backend: nccl when the processes use CUDA, gloo otherwise.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_world_size(), dist.get_rank(), local, False)
    use_cuda = _wants_cuda(device)
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(world, rank, local, True)


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def training_device(device: str, d: Dist) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FalconError("--device cuda asked for, but no CUDA GPU is visible to PyTorch; use --device cpu")
        if d.enabled:
            return torch.device("cuda", d.local_rank)
    elif device != "cpu":
        raise FalconError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return torch.device(device)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"


def environment(device: torch.device, d: Dist) -> dict[str, Any]:
    from importlib import metadata

    import falcon

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    env = {
        "device": device_description(device), "world_size": d.world_size,
        "backend": ("nccl" if device.type == "cuda" else "gloo") if d.enabled else None,
        "torch": torch.__version__, "torchvision": version("torchvision"), "falcon": falcon.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "host": platform.node(),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }
    return env


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """``torch.set_num_threads(n)`` while the block runs (process-wide), then the previous value.

    One thread is much faster when other processes share the cores: OpenMP teams that wait for a
    descheduled thread stall (a 6-run digits sweep on 2 busy cores: ~60 s with 1 thread, ~280 s with 2).
    """
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# data loading and evaluation
def _shard(ds: Dataset, d: Dist) -> Dataset:
    return Subset(ds, range(d.rank, len(ds), d.world_size)) if d.enabled else ds


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset, device: torch.device, d: Dist = Dist(), batch_size: int = 256,
             channels_last: bool = False, should_stop: StopFn | None = None) -> float:
    """Top-1 accuracy on ``ds``; under DDP each process takes a shard and the counts are summed."""
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    loader = DataLoader(_shard(ds, d), batch_size=batch_size, shuffle=False)
    for x, y in loader:
        if should_stop is not None and should_stop():
            raise Stopped
        x, y = _to(x, device, channels_last), y.to(device)
        correct[0] += (model(x).argmax(1) == y).sum()
        correct[1] += len(y)
    if d.enabled:
        import torch.distributed as dist

        dist.all_reduce(correct)
    return float(correct[0] / correct[1]) if correct[1] > 0 else float("nan")


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _count(model: nn.Module, chw: tuple[int, int, int]) -> tuple[int, int]:
    from falcon.counting import count_model

    c = count_model(model, chw, "clean")
    return c.params, c.macs


# ----------------------------------------------------------------------------------------------
# training
@dataclass
class _Loop:
    """One training loop: what its epochs share."""

    net: nn.Module  # the model, or its DDP wrapper
    loader: DataLoader
    sampler: Any
    opt: torch.optim.Optimizer
    sched: Any
    loss_fn: nn.Module
    augment: Any  # the data set's batch transform, or None
    gen: torch.Generator
    device: torch.device
    d: Dist
    channels_last: bool
    epochs: int
    total: int  # steps in all
    phase: str
    span: tuple[float, float]
    progress: ProgressFn | None
    should_stop: StopFn | None
    step: int = 0

    def report(self, epoch: int, **event: Any) -> None:
        if self.progress is not None and self.d.is_main:
            self.progress({"phase": self.phase, "epoch": epoch, "epochs": self.epochs, "step": self.step,
                           "steps": self.total,
                           "fraction": self.span[0] + self.step / self.total * (self.span[1] - self.span[0]), **event})


def train(model: nn.Module, data, cfg: ExperimentConfig, epochs: int, device: torch.device, d: Dist = Dist(),
          progress: ProgressFn | None = None, should_stop: StopFn | None = None, phase: str = "finetune",
          evaluate_each_epoch: bool = True, span: tuple[float, float] = (0.0, 1.0)) -> list[dict]:
    """Train ``model`` in place for ``epochs`` (seeded; SGD momentum or AdamW; per-step cosine schedule).

    Weight decay applies to weights, not to biases or BN. Under DDP the model is wrapped in
    DistributedDataParallel and each process sees its DistributedSampler share of every epoch.
    Returns a per-epoch history (loss, train accuracy, held-out accuracy).
    """
    if epochs <= 0:
        return []
    loop = _loop(model, data, cfg, epochs, device, d, progress, should_stop, phase, span)
    history: list[dict] = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loss_sum, stats = _epoch(loop, epoch)
        rec = {"epoch": epoch, "loss": float(loss_sum / stats[1]), "train_accuracy": float(stats[0] / stats[1]),
               "samples": int(stats[1]), "steps_per_process": len(loop.loader),
               "lr": loop.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if evaluate_each_epoch and epoch < epochs:  # the last epoch is evaluated by the caller
            rec["test_accuracy"] = evaluate(model, data.test, device, d, channels_last=loop.channels_last,
                                            should_stop=should_stop)
        history.append(rec)
        acc = f", held-out {rec['test_accuracy']:.4f}" if "test_accuracy" in rec else ""
        loop.report(epoch, loss=rec["loss"], accuracy=rec.get("test_accuracy"),
                    message=f"{phase}: epoch {epoch}/{epochs} done, loss {rec['loss']:.4f}{acc}")
    return history


def _loop(model: nn.Module, data, cfg: ExperimentConfig, epochs: int, device: torch.device, d: Dist,
          progress: ProgressFn | None, should_stop: StopFn | None, phase: str, span: tuple[float, float]) -> _Loop:
    """The seeded sampler and loader, the optimizer (no decay on biases and BN) with its cosine schedule, DDP."""
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * d.rank)
    torch.manual_seed(cfg.seed)
    if d.enabled:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(data.train, d.world_size, d.rank, shuffle=True, seed=cfg.seed)
        per_process = math.ceil(len(data.train) / d.world_size)
    else:
        sampler = RandomSampler(data.train, generator=torch.Generator().manual_seed(cfg.seed))
        per_process = len(data.train)
    batch = min(cfg.batch_size, per_process)
    loader = DataLoader(data.train, batch_size=batch, sampler=sampler, drop_last=per_process > batch,  # BatchNorm
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda")  # cannot train on 1 image
    total = max(1, epochs * len(loader))
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
    net: nn.Module = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return _Loop(net, loader, sampler, opt, sched, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                 data.train_batch_transform if cfg.augment else None, gen, device, d, bool(cfg.channels_last), epochs,
                 total, phase, span, progress, should_stop)


def _epoch(loop: _Loop, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the loader; (summed loss, [correct, seen]), summed over the processes under DDP."""
    if loop.d.enabled:
        loop.sampler.set_epoch(epoch)
    loop.net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loop.device)
    stats = torch.zeros(2, dtype=torch.float64, device=loop.device)  # correct, seen
    for x, y in loop.loader:
        if loop.should_stop is not None and loop.should_stop():
            raise Stopped
        if loop.augment is not None:
            x = loop.augment(x, loop.gen)
        x, y = _to(x, loop.device, loop.channels_last), y.to(loop.device, non_blocking=True)
        out = loop.net(x)
        loss = loop.loss_fn(out, y)
        loop.opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.opt.step()
        loop.sched.step()
        loop.step += 1
        loss_sum += loss.detach() * len(y)
        stats[0] += (out.detach().argmax(1) == y).sum()
        stats[1] += len(y)
        if loop.progress is not None and loop.d.is_main and (loop.step % 5 == 0 or loop.step == loop.total):
            value = float(loss.detach())  # a sync on CUDA: only when someone listens
            loop.report(epoch, loss=value, message=f"{loop.phase}: epoch {epoch}/{loop.epochs}, step "
                                                    f"{loop.step}/{loop.total}, loss {value:.4f}")
    if loop.d.enabled:
        import torch.distributed as dist

        packed = torch.cat([loss_sum.reshape(1), stats])
        dist.all_reduce(packed)
        loss_sum, stats = packed[0], packed[1:]
    return loss_sum, stats


# ----------------------------------------------------------------------------------------------
# baseline and conversion
def _load_checkpoint(name, path: str, num_classes: int) -> nn.Module:
    """The model ``name`` with the state_dict in ``path`` (:func:`falcon.sources.load_model` checks it)."""
    from falcon.sources import load_model

    loaded = load_model(name, path, num_classes=num_classes)
    if loaded.converted is not None:
        raise FalconError(f"{path} holds a converted model; --baseline takes the original (trained) model")
    return loaded.model


def build_baseline(cfg: ExperimentConfig, data, device: torch.device, d: Dist = Dist(),
                   progress: ProgressFn | None = None, should_stop: StopFn | None = None,
                   span: tuple[float, float] = (0.0, 0.1)) -> Baseline:
    """The trained model a run starts from: pretrained, a checkpoint, or trained here."""
    from falcon.models import get_model_entry

    t0 = time.perf_counter()
    entry = get_model_entry(cfg.model)
    if entry.in_channels != data.input_size[0]:
        raise FalconError(f"{cfg.model} takes {entry.in_channels}-channel images, {cfg.dataset} has "
                          f"{data.input_size[0]}; pick a model for this data set")
    history: list[dict] = []
    if cfg.baseline:
        model = _load_checkpoint(cfg.model, cfg.baseline, data.num_classes)
        source = f"checkpoint {cfg.baseline}"
    elif cfg.model == "digits-vgg" and cfg.dataset == "digits" and cfg.baseline_epochs == 0:
        from falcon.models.digits import digits_vgg

        model = digits_vgg(pretrained=True)
        source = "bundled data/digits_vgg.pt"
    elif cfg.baseline_epochs > 0:
        torch.manual_seed(cfg.seed)
        model = entry.build(data.num_classes)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.to(device)
        bcfg = dataclasses.replace(cfg, lr=DEFAULT_LR[cfg.optimizer] if cfg.optimizer == "adamw" else 0.1)
        history = train(model, data, bcfg, cfg.baseline_epochs, device, d, progress, should_stop, phase="baseline",
                        evaluate_each_epoch=True, span=span)
        model.to("cpu")
        source = f"trained here for {cfg.baseline_epochs} epochs"
    else:
        raise FalconError(f"no pretrained {cfg.model} for {cfg.dataset}: pass --baseline PATH (a state_dict of "
                          f"{cfg.model} with {data.num_classes} classes) or --baseline-epochs N to train one first")
    model = model.to(memory_format=torch.contiguous_format).eval()
    params, macs = _count(model, data.input_size)
    work = model.to(device)
    if cfg.channels_last:
        work = work.to(memory_format=torch.channels_last)
    if progress is not None and d.is_main:
        progress({"phase": "baseline", "fraction": span[1] * 0.9, "message": "evaluating the baseline"})
    acc = evaluate(work, data.test, device, d, channels_last=bool(cfg.channels_last), should_stop=should_stop)
    model = work.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return Baseline(model, acc, params, macs, source, time.perf_counter() - t0, history)


def convert_for_run(model: nn.Module, cfg: ExperimentConfig, input_size: tuple[int, int, int]) -> tuple[nn.Module, list[dict]]:
    """Replace the convs of (a copy of) ``model`` by ``cfg.conv`` blocks; returns it and a per-layer report.

    falcon/dsconv: bare blocks loaded with the ``cfg.init`` fit of each trained kernel (the conv's
    bias moves into the block), so with the model's own BN/ReLU after them they compute what the
    model did up to the fit error (:func:`falcon.conversion.convert_model`). Other types: the paper-layout
    block, randomly initialised (seeded). A planned run (``cfg.plan``): each layer its own type and ranks, fitted
    (:func:`falcon.conversion.convert_plan`).
    """
    from falcon.models import get_model_entry
    from falcon.surgery import conv_sites, plan, replace_convs

    model = copy.deepcopy(model).cpu().eval()
    if cfg.conv == "standard":
        return model, []
    entry = get_model_entry(cfg.model)
    if cfg.plan is not None:
        from falcon.conversion import convert_plan

        converted = convert_plan(model, cfg.plan, input_size=input_size, entry=entry, seed=cfg.seed, inplace=True)
        return converted.model.eval(), converted.as_dict()
    sites = plan(entry, conv_sites(model, input_size), cfg.conv, cfg.include_stem)
    if not sites:
        raise FalconError(f"{cfg.model} has no conv that {cfg.conv} can replace")
    ct = get_conv_type(cfg.conv)
    for site in sites:
        ct.resolve(site.spec, **cfg.hparams)  # check every layer before touching any
    torch.manual_seed(cfg.seed)
    report = []
    if ct.fittable:  # fitted to the trained kernels: falcon.conversion, on the module itself
        from falcon.conversion import convert_model

        gd = {"steps": cfg.gd_steps} if cfg.init == "gd" and cfg.gd_steps else {}
        converted = convert_model(model, cfg.conv, ct.rank_hparams(cfg.hparams), cfg.init, input_size=input_size, entry=entry,
                                  include_stem=cfg.include_stem, seed=cfg.seed, inplace=True, **gd)
        model = converted.model
        report = converted.as_dict()
    else:
        made = replace_convs(model, sites, cfg.conv, cfg.hparams)
        report = [{"layer": name, "shape": site.spec.describe(), "init": "random"}
                  for (name, _), site in zip(made.items(), sites)]
    return model.eval(), report


def _measure_latency(cfg: ExperimentConfig, original: nn.Module, converted: nn.Module, layers: list[dict],
                     input_size: tuple[int, int, int], device: torch.device, d: Dist, progress: ProgressFn | None,
                     should_stop: StopFn | None, span: tuple[float, float]) -> dict[str, Any]:
    """The run's latency record (:func:`falcon.experiments.latency.measure_latency`): its baseline and its
    fine-tuned converted model, timed on copies (the models of the run are not touched)."""
    from falcon.experiments.latency import describe, measure_latency

    where = f"{cfg.latency_runtime}, batch {cfg.latency_batch_size}, {cfg.latency_rounds} rounds"
    _emit(progress, d, phase="latency", fraction=span[0], message=f"measuring latency ({where})")

    def relay(fraction: float, message: str) -> None:
        _emit(progress, d, phase="latency", fraction=span[0] + fraction * (span[1] - span[0]), detail=True,
              message=f"latency: {message}")

    record = measure_latency(original, converted, cfg.conv, cfg.hparams, [r["layer"] for r in layers if "layer" in r],
                             input_size, runtime=cfg.latency_runtime, batch_size=cfg.latency_batch_size,
                             rounds=cfg.latency_rounds, layout=cfg.latency_layout,
                             min_run_time=cfg.latency_min_run_time, device=device, weights="trained", name=cfg.model,
                             progress=relay, should_stop=should_stop)
    _emit(progress, d, phase="latency", fraction=span[1], message=describe(record))
    return record


# ----------------------------------------------------------------------------------------------
def _emit(progress: ProgressFn | None, d: Dist, **event: Any) -> None:
    if progress is not None and d.is_main:
        progress(event)


def run_experiment(config: ExperimentConfig, *, progress: ProgressFn | None = None, should_stop: StopFn | None = None,
                   db: str | os.PathLike | None = None, store: bool = True, baseline: Baseline | None = None,
                   data=None, sweep_id: str | None = None) -> dict[str, Any]:
    """Run the pipeline for ``config``; returns the run's record (what the store holds).

    ``progress(event)`` gets dicts with ``phase``, ``fraction`` (0–1 of this run), ``message`` and, while
    training, ``epoch``/``epochs``/``step``/``steps``/``loss``/``accuracy``. When ``should_stop()`` turns
    true the run ends at the next step with ``status="stopped"`` (stored as such, no fine-tuned accuracy).
    ``baseline`` and ``data`` let a sweep share one baseline and one data set between its runs.
    Only the main process (rank 0) writes the store; every process returns the record.
    """
    cfg = config.resolved()
    with cpu_threads(cfg.threads):
        return _run(cfg, progress, should_stop, db, store, baseline, data, sweep_id)


def _run(cfg: ExperimentConfig, progress, should_stop, db, store, baseline, data, sweep_id) -> dict[str, Any]:
    from falcon.experiments import store as results_store

    t_start = time.perf_counter()
    d = setup_distributed(cfg.device)
    try:
        if store and d.is_main:  # a database that cannot take the run is refused before any work
            results_store.check_writable(db)
        device = training_device(cfg.device, d)
        if cfg.channels_last is None:
            cfg.channels_last = device.type == "cpu"
        record = _new_record(cfg, device, d, sweep_id)
        try:
            _phases(cfg, record, device, d, progress, should_stop, baseline, data)
        except Stopped:
            record["status"] = "stopped"
        record["seconds"] = record["timings"]["total"] = time.perf_counter() - t_start
        if store and d.is_main:
            results_store.save_run(record, db)
        msg = "stopped" if record["status"] == "stopped" else \
            f"done: {record['finetuned_accuracy']:.4f} after {cfg.epochs} epochs"
        _emit(progress, d, phase="done", fraction=1.0, message=msg, status=record["status"], record=record)
        return record
    finally:
        if d.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _new_record(cfg: ExperimentConfig, device: torch.device, d: Dist, sweep_id: str | None) -> dict[str, Any]:
    """The run's record before any work: what defines it (a planned run: its plan's label and digest too)."""
    from falcon.experiments import plans, store as results_store

    record: dict[str, Any] = {
        "run_id": results_store.new_run_id(), "status": "running", "sweep_id": sweep_id,
        "model": cfg.model, "dataset": cfg.dataset, "conv": cfg.conv, "rank": cfg.rank, "init": cfg.init,
        "hparams": cfg.hparams, "epochs": cfg.epochs, "lr": cfg.lr, "optimizer": cfg.optimizer, "seed": cfg.seed,
        "device": device_description(device), "world_size": d.world_size,
        "config": cfg.as_dict(), "timings": {}, "environment": environment(device, d), "metrics": {},
    }
    if cfg.plan is not None:
        record["metrics"]["plan"] = {"label": plans.label(cfg.plan), "digest": plans.digest(cfg.plan)}
    if d.enabled:  # every process must agree on the run id; rank 0's wins
        import torch.distributed as dist

        box = [record["run_id"]]
        dist.broadcast_object_list(box, src=0)
        record["run_id"] = box[0]
    return record


def _timed(timings: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    t = time.perf_counter()
    try:
        return fn()
    finally:
        timings[key] = time.perf_counter() - t


def _phases(cfg: ExperimentConfig, record: dict, device: torch.device, d: Dist, progress, should_stop,
            baseline: Baseline | None, data) -> None:
    """Data, baseline, conversion, training-free accuracy, fine-tuning, fine-tuned accuracy, latency: into ``record``."""
    from falcon.experiments.data import load_dataset

    timings, metrics = record["timings"], record["metrics"]
    t = time.perf_counter()
    if data is None:
        _emit(progress, d, phase="data", fraction=0.0, message=f"loading {cfg.dataset}")
        data = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, limit_train=cfg.limit_train,
                            limit_test=cfg.limit_test)
    timings["data"] = time.perf_counter() - t
    if baseline is None:
        _emit(progress, d, phase="baseline", fraction=0.0, message=f"baseline {cfg.model}")
        baseline = build_baseline(cfg, data, device, d, progress, should_stop, span=(0.0, 0.1))
        timings["baseline"] = baseline.seconds
    else:  # shared by the runs of a sweep: prepared (and timed) once
        timings["baseline_shared"] = baseline.seconds
    record.update(baseline_accuracy=baseline.accuracy, baseline_params=baseline.params, baseline_macs=baseline.macs)
    metrics.update(baseline_source=baseline.source, baseline_history=baseline.history)
    _emit(progress, d, phase="convert", fraction=0.1, message=f"converting to {cfg.label} (init {cfg.init})")
    model, layers = _timed(timings, "convert", lambda: convert_for_run(baseline.model, cfg, data.input_size))
    record["params"], record["macs"] = _count(model, data.input_size)  # counted on the converted model
    metrics["layers"] = layers
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    def accuracy() -> float:
        return evaluate(model, data.test, device, d, channels_last=bool(cfg.channels_last), should_stop=should_stop)

    _emit(progress, d, phase="training_free", fraction=0.12, message="evaluating the converted model")
    acc = record["training_free_accuracy"] = _timed(timings, "training_free_eval", accuracy)
    _emit(progress, d, phase="training_free", fraction=0.15, accuracy=acc, message=f"training-free accuracy {acc:.4f}")
    end = 0.92 if cfg.latency else 0.97  # the latency phase takes the rest
    history = metrics["history"] = _timed(timings, "finetune", lambda: train(
        model, data, cfg, cfg.epochs, device, d, progress, should_stop, span=(0.15, end)))
    record["finetuned_accuracy"] = _timed(timings, "final_eval", accuracy)
    if history:
        history[-1]["test_accuracy"] = record["finetuned_accuracy"]
    record["status"] = "completed"
    if cfg.latency and d.is_main:
        metrics["latency"] = _timed(timings, "latency", lambda: _measure_latency(
            cfg, baseline.model, model, layers, data.input_size, device, d, progress, should_stop, span=(end, 0.99)))
