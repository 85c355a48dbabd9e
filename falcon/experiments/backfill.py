"""Backfill: time stored runs that have no latency yet, their models rebuilt from the run's config
(``python -m falcon experiment measure``). Apart from :mod:`falcon.experiments.latency` so that the pipeline,
which uses that module, and this one, which uses the pipeline, do not import each other."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable

import torch

from falcon.errors import FalconError
from falcon.experiments.latency import ProgressFn, _line, describe, has_latency, measure_latency


def config_of(run: dict[str, Any]):
    """The :class:`~falcon.experiments.pipeline.ExperimentConfig` a stored run was made with (fields this
    version does not know are left out; those it added since take their defaults), resolved."""
    from falcon.experiments.pipeline import ExperimentConfig

    stored = run.get("config") or {}
    if not stored:
        raise FalconError("the run has no stored config")
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    cfg = ExperimentConfig(**{k: v for k, v in stored.items() if k in names})
    return cfg.resolved()


def dataset_shape(name: str) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) and the number of classes of a data set, without loading it (digits: the bundled file)."""
    from falcon.experiments.data import TORCHVISION_SETS, load_dataset

    if name in TORCHVISION_SETS:
        spec = TORCHVISION_SETS[name]
        return (3, 32, 32), spec.num_classes  # as load_dataset gives them
    data = load_dataset(name, limit_train=1, limit_test=1)  # digits: bundled, offline
    return tuple(data.input_size), data.num_classes  # type: ignore[return-value]


def run_entry(run: dict[str, Any], cfg, model=None):
    """The architecture of a stored run: a registry model by its stored name, or, for a run made from code of the
    user's, the ``model`` entry the user gave now (the same spec). A stored run never makes this project import or
    call anything."""
    from falcon.models import names_code, registry_entry, same_model

    label = f"stored run {run.get('run_id', '?')}"
    if model is not None and names_code(cfg.model):
        if not same_model(model, cfg.model):
            raise FalconError(f"{label} was made from {cfg.model!r}, not {model.name!r}")
        return model
    return registry_entry(cfg.model, label)


def rebuild_models(run: dict[str, Any], model=None) -> dict[str, Any]:
    """The baseline and converted models of a stored run, rebuilt from its config: the same layers (checked
    against the run's stored parameter counts), not its trained weights. Returns ``cfg``, ``original``,
    ``converted``, ``replaced`` (layer names), ``input_size``, ``baseline_weights`` (what the baseline holds).
    ``model``: the entry the user named, for runs made from code of theirs (:func:`run_entry`)."""
    from falcon.experiments.pipeline import _count, _load_checkpoint, convert_for_run

    cfg = config_of(run)
    entry = run_entry(run, cfg, model)
    if cfg.conv == "standard":
        raise FalconError("a standard-conv run has no converted model to time")
    input_size, num_classes = dataset_shape(cfg.dataset)
    if cfg.baseline and os.path.exists(cfg.baseline):
        original, weights = _load_checkpoint(entry, cfg.baseline, num_classes), "checkpoint"
    elif cfg.model == "digits-vgg" and cfg.dataset == "digits" and not cfg.baseline and cfg.baseline_epochs == 0:
        from falcon.models.digits import digits_vgg

        original, weights = digits_vgg(pretrained=True), "bundled"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            original, weights = entry.build(num_classes), "random"
    original = original.to(memory_format=torch.contiguous_format).eval()
    # the same structure whatever the init: gradient descent would only take longer
    build_cfg = dataclasses.replace(cfg, init="svd") if cfg.init == "gd" else cfg
    with torch.random.fork_rng(devices=[]):
        converted, layers = convert_for_run(original, build_cfg, input_size)
    params, _ = _count(converted, input_size)
    base_params, _ = _count(original, input_size)
    for what, rebuilt, stored in (("converted", params, run.get("params")),
                                  ("baseline", base_params, run.get("baseline_params"))):
        if stored is not None and int(stored) != rebuilt:
            raise FalconError(f"the rebuilt {what} model has {rebuilt:,} parameters, the run has {int(stored):,}: "
                              "its layers cannot be rebuilt from the stored config")
    return {"cfg": cfg, "original": original, "converted": converted, "replaced": [r["layer"] for r in layers],
            "input_size": tuple(input_size), "baseline_weights": weights}


def measure_stored_runs(db=None, run_ids: Iterable[str] | None = None, *, force: bool = False,
                        runtime: str = "eager", batch_size: int = 1, rounds: int = 5, layout: str = "auto",
                        min_run_time: float = 0.2, device: str = "auto",
                        say: Callable[[str], None] | None = None,
                        progress: ProgressFn | None = None, model=None) -> list[dict[str, Any]]:
    """Measure and store the latency of stored runs: ``run_ids``, or every completed run without one (with
    ``force``, those that have one too). One result per run considered: ``run_id``, ``status``
    (``measured``, ``skipped``, ``failed``), ``line`` (what happened, one line) and ``latency`` (the record).
    ``model``: a model spec or entry the user names, for runs made from code of theirs (never read from the DB)."""
    from falcon.models import ModelEntry, get_model_entry
    from falcon.bench import resolve_device
    from falcon.experiments import store

    say = say or (lambda line: None)
    if model is not None and not isinstance(model, ModelEntry):
        model = get_model_entry(model)  # the user's own spec: runs their code, as they asked
    if run_ids:
        runs = [store.get_run(r, db) for r in dict.fromkeys(run_ids)]
    else:
        runs = store.list_runs(db, status="completed")
    dev = resolve_device(device)
    out: list[dict[str, Any]] = []
    for run in runs:
        rid = run["run_id"]
        if has_latency(run) and not force:
            out.append({"run_id": rid, "status": "skipped", "line": f"{rid}: has a latency already (--force to measure "
                        "again)", "latency": run["metrics"]["latency"]})
            continue
        try:
            built = rebuild_models(run, model)
        except FalconError as e:
            out.append({"run_id": rid, "status": "failed", "line": f"{rid}: cannot rebuild its models: {e}"})
            say(out[-1]["line"])
            continue
        except Exception as e:  # noqa: BLE001 - an old or odd record: one line, on to the next run
            out.append({"run_id": rid, "status": "failed",
                        "line": f"{rid}: cannot rebuild its models: {type(e).__name__}: {_line(e)}"})
            say(out[-1]["line"])
            continue
        cfg = built["cfg"]
        say(f"{rid}: timing {cfg.model} and its {cfg.label} conversion ({runtime}, batch {batch_size}, "
            f"{rounds} rounds, rebuilt weights)")
        record = measure_latency(built["original"], built["converted"], cfg.conv, cfg.hparams, built["replaced"],
                                 built["input_size"], runtime=runtime, batch_size=batch_size, rounds=rounds,
                                 layout=layout, min_run_time=min_run_time, device=dev, weights="rebuilt",
                                 name=cfg.model, progress=progress)
        record["baseline_weights"] = built["baseline_weights"]
        store.update_metrics(rid, {"latency": record}, db)
        ok = record["status"] == "ok"
        out.append({"run_id": rid, "status": "measured" if ok else "failed", "line": f"{rid}: {describe(record)}",
                    "latency": record})
        say(out[-1]["line"])
    return out
