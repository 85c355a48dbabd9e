"""Plain views of experiment runs for a page or a report: a table of runs, the CLI command that
reproduces a set of runs, and the app's presets. No Streamlit, no plotting (figures live in
:mod:`falcon.figures`).
"""
from __future__ import annotations

import shlex
from typing import Any, Sequence

import pandas as pd

from falcon.experiments.pipeline import ExperimentConfig
from falcon.convtypes import RANKED
from falcon.experiments.plans import run_label
from falcon.experiments.sweep import DEFAULT_RANKS, DEFAULT_SWEEP_CONVS
from falcon.paper import PAPER_RANKED

#: The columns of :func:`runs_frame`, in order.
RUN_COLUMNS = ["run_id", "conv", "label", "rank", "init", "epochs", "status", "params", "macs",
               "compression_rate", "computation_reduction_rate", "baseline_accuracy", "training_free_accuracy",
               "finetuned_accuracy", "delta_points", "seconds"]


FLOAT_COLUMNS = ("compression_rate", "computation_reduction_rate", "baseline_accuracy", "training_free_accuracy",
                 "finetuned_accuracy", "delta_points", "seconds")


def runs_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per run record (what :func:`falcon.experiments.pipeline.run_experiment` returns and the store
    holds): its numbers, the reductions against its baseline (CR, CRR), accuracies in [0, 1] and the
    fine-tuned accuracy's difference from the baseline in points (percent)."""
    rows = []
    for r in records:
        bp, bm = r.get("baseline_params"), r.get("baseline_macs")
        ft, base = r.get("finetuned_accuracy"), r.get("baseline_accuracy")
        rows.append({
            "run_id": r.get("run_id"), "conv": r.get("conv"), "label": run_label(r),
            "rank": r.get("rank") if r.get("conv") in RANKED else None, "init": r.get("init"),
            "epochs": r.get("epochs"), "status": r.get("status"), "params": r.get("params"), "macs": r.get("macs"),
            "compression_rate": bp / r["params"] if bp and r.get("params") else None,
            "computation_reduction_rate": bm / r["macs"] if bm and r.get("macs") else None,
            "baseline_accuracy": base, "training_free_accuracy": r.get("training_free_accuracy"),
            "finetuned_accuracy": ft,
            "delta_points": 100.0 * (ft - base) if ft is not None and base is not None else None,
            "seconds": r.get("seconds"),
        })
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    df["rank"] = pd.array(df["rank"], dtype="Int64")
    for col in FLOAT_COLUMNS:  # a missing number (a stopped run's accuracy) is NaN, not None in an object column
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def sweep_plan(convs: Sequence[str] = DEFAULT_SWEEP_CONVS, ranks: Sequence[int] = DEFAULT_RANKS,
               base: ExperimentConfig | None = None) -> list[ExperimentConfig]:
    """The configs of a sweep, each checked (:meth:`ExperimentConfig.resolved`): a bad value raises a
    FalconError before anything runs."""
    from falcon.errors import FalconError
    from falcon.experiments.sweep import sweep_configs

    if not convs:
        raise FalconError("choose at least one conv type for the sweep")
    if any(c in PAPER_RANKED for c in convs) and not ranks:
        raise FalconError("choose at least one FALCON rank for the sweep")
    configs = sweep_configs(base, convs, ranks)
    return [c.resolved() for c in configs]


def planned_cost(config: ExperimentConfig) -> dict[str, Any]:
    """Parameters and MACs of the model a run of ``config`` will fine-tune, before it runs: the run's own
    conversion (:func:`falcon.experiments.pipeline.convert_for_run`) applied to the untrained architecture, counted
    under the ``clean`` convention as the run counts it. FALCON/DSConv are the bare EHP blocks the fit
    fills (no BN inside, unlike the thesis's layout that ``falcon size`` reproduces) and a rank above a
    layer's full rank is lowered to it, so these can differ from the Model sizing page's numbers.
    Also ``baseline_params``/``baseline_macs`` and ``clamped`` (layers whose rank was lowered)."""
    import dataclasses

    import torch

    from falcon.experiments import pipeline
    from falcon.models import get_model_entry

    cfg = config.resolved()
    entry = get_model_entry(cfg.model)
    chw = (entry.in_channels, entry.input_size, entry.input_size)
    with torch.random.fork_rng(devices=[]):  # the random init below must not move the caller's RNG
        model = entry.build(None).eval()
        untrained = dataclasses.replace(cfg, init="random" if cfg.init != "none" else "none")
        converted, layers = pipeline.convert_for_run(model, untrained, chw)
    params, macs = pipeline._count(converted, chw)
    base_params, base_macs = pipeline._count(model, chw)
    clamped = [layer.get("name", layer.get("layer")) for layer in layers if layer.get("clamped")]
    return {"params": params, "macs": macs, "baseline_params": base_params, "baseline_macs": base_macs,
            "compression_rate": base_params / params, "computation_reduction_rate": base_macs / macs,
            "clamped": clamped}


def cli_command(configs: Sequence[ExperimentConfig], sweep: bool, plan_file: str = "plan.json") -> str:
    """The ``python -m falcon experiment`` command that runs the same thing from a shell (a planned run: with its
    plan saved as ``plan_file``)."""
    first = configs[0]
    args = ["python", "-m", "falcon", "experiment", "--model", first.model, "--dataset", first.dataset]
    if first.plan is not None:
        args += ["--plan", plan_file]
    elif sweep:
        convs = list(dict.fromkeys(c.conv for c in configs))
        args += ["--sweep", "--convs", ",".join(convs)]
        ranks = [str(c.hparams["rank"]) for c in configs if c.conv in PAPER_RANKED]
        if ranks:
            args += ["--ranks", ",".join(ranks)]
    else:
        args += ["--conv", first.conv]
        for name, value in sorted(first.hparams.items()):
            args += [f"--{name.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
        if first.init and first.conv in RANKED:
            args += ["--init", first.init]
    defaults = ExperimentConfig()
    args += ["--epochs", str(first.epochs)]
    if first.optimizer != defaults.optimizer:
        args += ["--optimizer", first.optimizer]
    if first.lr is not None:
        args += ["--lr", f"{first.lr:g}"]
    if first.seed != defaults.seed:
        args += ["--seed", str(first.seed)]
    if first.threads:
        args += ["--threads", str(first.threads)]
    return " ".join(shlex.quote(a) for a in args)
