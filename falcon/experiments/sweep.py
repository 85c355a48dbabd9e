"""A sweep over conv types and ranks, sharing one baseline; and a background runner for the app.

:func:`sweep_configs` makes the runs (falcon ranks 1–3, dsconv, mobilev2 and shuffle by default),
:func:`run_sweep` runs them one after another in this process (the data set and the baseline are
loaded and evaluated once), and :class:`SweepRunner` does the same in a background thread with a
thread-safe :meth:`SweepRunner.snapshot` and :meth:`SweepRunner.stop`: what a Streamlit page polls
from an ``st.fragment(run_every=...)``.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any, Iterable, Sequence

from falcon.convtypes import CONV_TYPES, RANKED
from falcon.errors import FalconError
from falcon.jobs import Job
from falcon.experiments.pipeline import ExperimentConfig, ProgressFn, StopFn
from falcon.paper import PAPER_RANKED

#: The done-when sweep of issue 6: FALCON ranks 1–3 and the three competitors (every type of the thesis but the
#: standard conv, which is the baseline every sweep has).
DEFAULT_SWEEP_CONVS = tuple(n for n, c in CONV_TYPES.items() if c.paper_hparams is not None and n != "standard")
#: The ranks of the types the thesis reports at several ranks (:data:`falcon.paper.PAPER_RANKED`: FALCON).
DEFAULT_RANKS = (1, 2, 3)


def sweep_configs(base: ExperimentConfig | None = None, convs: Iterable[str] = DEFAULT_SWEEP_CONVS,
                  ranks: Iterable[int] = DEFAULT_RANKS, competitor_ranks: Iterable[int] = (1,)) -> list[ExperimentConfig]:
    """One config per (conv type, rank): ``ranks`` for falcon (:data:`falcon.paper.PAPER_RANKED`),
    ``competitor_ranks`` for the other ranked types (dsconv), the registry defaults for the others. Everything else comes from ``base``; the init is left to the
    default (svd for falcon/dsconv, random for mobilev2/shuffle) unless ``base.init`` is ``gd``/``random``
    (applied to falcon/dsconv only)."""
    base = base or ExperimentConfig()
    configs = []
    for conv in convs:
        if conv not in CONV_TYPES:
            raise FalconError(f"unknown conv type {conv!r}; choose from {', '.join(CONV_TYPES)}")
        init = base.init if conv in RANKED else None
        if conv in RANKED:
            for k in (ranks if conv in PAPER_RANKED else competitor_ranks):
                hparams = {**base.hparams, **CONV_TYPES[conv].rank_hparams(int(k))}
                configs.append(dataclasses.replace(base, conv=conv, hparams=hparams, init=init))
        else:
            configs.append(dataclasses.replace(base, conv=conv, hparams={}, init=init))
    return configs


def run_sweep(configs: Sequence[ExperimentConfig], *, progress: ProgressFn | None = None,
              should_stop: StopFn | None = None, db=None, store: bool = True,
              sweep_id: str | None = None) -> dict[str, Any]:
    """Run ``configs`` one after another; each run is stored as soon as it ends.

    Runs that share (model, dataset, baseline, data options) share one loaded data set and one
    evaluated baseline. ``progress`` events are those of :func:`run_experiment` plus ``run`` (1-based),
    ``runs`` and ``sweep_fraction``. Returns ``sweep_id``, ``runs`` (the records), ``seconds``, ``stopped``.
    """
    from falcon.experiments import pipeline
    from falcon.experiments.store import check_writable, new_run_id

    if store and configs and int(os.environ.get("RANK", "0")) == 0:  # refused before the baseline is trained
        check_writable(db)
    sweep_id = sweep_id or "sweep-" + new_run_id()
    if configs:  # under torchrun: join the process group once for the whole sweep
        dist_state = pipeline.setup_distributed(configs[0].device)
        if dist_state.enabled:
            import torch.distributed as dist

            box = [sweep_id]
            dist.broadcast_object_list(box, src=0)
            sweep_id = box[0]
    else:
        dist_state = None
    try:
        with pipeline.cpu_threads(configs[0].threads if configs else None):
            return _run_sweep(configs, progress, should_stop, db, store, sweep_id)
    finally:
        if dist_state is not None and dist_state.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run_sweep(configs, progress, should_stop, db, store, sweep_id) -> dict[str, Any]:
    from falcon.experiments import pipeline
    from falcon.experiments.data import load_dataset

    t0 = time.perf_counter()
    records: list[dict] = []
    shared: dict[tuple, tuple] = {}
    stopped = False
    n = len(configs)
    for i, config in enumerate(configs):
        if should_stop is not None and should_stop():
            stopped = True
            break
        cfg = config.resolved()

        def relay(event: dict, i=i) -> None:
            if progress is not None:
                frac = event.get("fraction") or 0.0
                progress({**event, "run": i + 1, "runs": n, "sweep_fraction": (i + frac) / n,
                          "message": f"run {i + 1}/{n} ({cfg.label}): {event.get('message', '')}"})

        key = (cfg.model, cfg.dataset, cfg.data_dir, cfg.baseline, cfg.baseline_epochs, cfg.limit_train,
               cfg.limit_test, cfg.device, cfg.seed if cfg.baseline_epochs else None)
        if key not in shared:
            d = pipeline.setup_distributed(cfg.device)
            device = pipeline.training_device(cfg.device, d)
            if cfg.channels_last is None:
                cfg = dataclasses.replace(cfg, channels_last=device.type == "cpu")
            relay({"phase": "data", "fraction": 0.0, "message": f"loading {cfg.dataset}"})
            data = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download,
                                limit_train=cfg.limit_train, limit_test=cfg.limit_test)
            try:
                base = pipeline.build_baseline(cfg, data, device, d, relay, should_stop)
            except pipeline.Stopped:
                stopped = True
                break
            shared[key] = (data, base)
        data, base = shared[key]
        rec = pipeline.run_experiment(cfg, progress=relay, should_stop=should_stop, db=db, store=store,
                                      baseline=base, data=data, sweep_id=sweep_id)
        records.append(rec)
        if rec["status"] == "stopped":
            stopped = True
            break
    return {"sweep_id": sweep_id, "runs": records, "seconds": time.perf_counter() - t0, "stopped": stopped}


class SweepRunner(Job):
    """Run a sweep (or a single run: one config) in a background thread: a :class:`falcon.jobs.Job`
    whose target is :func:`run_sweep`.

    >>> runner = SweepRunner(sweep_configs(ExperimentConfig(epochs=3)), db=None).start()
    >>> runner.snapshot()["status"]        # "running" … then "completed", "stopped" or "failed"
    >>> runner.stop()                      # the current run ends at its next step

    :meth:`snapshot` is safe to call from any thread at any time (a page's fragment polls it).
    """

    def __init__(self, configs: Sequence[ExperimentConfig], *, db=None, store: bool = True,
                 sweep_id: str | None = None, max_events: int = 500):
        if not configs:
            raise FalconError("a sweep needs at least one run")
        super().__init__(SweepRunner._sweep, name="sweep")
        self.configs = list(configs)
        self.db, self.store, self.sweep_id = db, store, sweep_id
        self._lock = threading.Lock()
        self._events: list[dict] = []
        self._max_events = max_events
        self._latest: dict = {}
        self._runs: list[dict] = []
        self._curves: dict[int, dict[str, list]] = {}  # run (1-based) -> fine-tuning curve, never truncated

    def _sweep(self) -> dict[str, Any]:
        from falcon.experiments.store import new_run_id

        self.sweep_id = self.sweep_id or "sweep-" + new_run_id()
        result = run_sweep(self.configs, progress=self._on_progress, should_stop=self.should_stop,
                           db=self.db, store=self.store, sweep_id=self.sweep_id)
        with self._lock:
            self._runs = list(result["runs"])
        return result

    @property
    def status(self) -> str:
        status = super().status
        if status in ("completed", "stopped"):  # what the sweep itself says: it may have ended before a stop
            return "stopped" if (self.result or {}).get("stopped") else "completed"
        return status

    # -- state ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """``status``, ``fraction`` (0–1 of the sweep), ``message``, ``run``/``runs``, ``latest`` (the
        last progress event), ``events`` (recent ones), ``results`` (records of finished runs),
        ``error`` (a one-line message if it failed), ``elapsed`` (s), ``sweep_id``, and ``curves``: per run
        (1-based), its fine-tuning curve: ``step``/``loss`` (every few steps), ``epoch_step``/``accuracy``
        (held-out accuracy after each epoch, the last one the fine-tuned accuracy), ``label``."""
        status = self.status
        with self._lock:
            latest = dict(self._latest)
            return {
                "status": status, "sweep_id": self.sweep_id,
                "fraction": 1.0 if status == "completed" else float(latest.get("sweep_fraction", 0.0)),
                "message": latest.get("message", ""), "run": latest.get("run", 0), "runs": len(self.configs),
                "latest": latest, "events": list(self._events), "results": list(self._runs),
                "error": self.error, "elapsed": self.seconds,
                "curves": {run: {k: list(v) if isinstance(v, list) else v for k, v in c.items()}
                           for run, c in self._curves.items()},
            }

    def _on_progress(self, event: dict) -> None:
        self.report(event.get("sweep_fraction", 0.0), event.get("message", ""))  # the Job's progress and label
        with self._lock:
            self._latest = event
            self._events.append(event)
            if len(self._events) > self._max_events:
                del self._events[: len(self._events) - self._max_events]
            if event.get("phase") == "done" and event.get("record") is not None:
                self._runs.append(event["record"])
            self._track_curve(event)

    def _track_curve(self, event: dict) -> None:
        run = event.get("run")
        if run is None:
            return
        curve = self._curves.setdefault(run, {"label": self.configs[run - 1].label, "step": [], "loss": [],
                                              "epoch_step": [], "accuracy": []})
        if event.get("phase") == "finetune" and event.get("loss") is not None and "accuracy" not in event:
            curve["step"].append(int(event["step"]))
            curve["loss"].append(float(event["loss"]))
        elif event.get("phase") == "finetune" and event.get("accuracy") is not None:
            curve["epoch_step"].append(int(event["step"]))
            curve["accuracy"].append(float(event["accuracy"]))
        elif event.get("phase") == "done" and (event.get("record") or {}).get("finetuned_accuracy") is not None:
            curve["epoch_step"].append(curve["step"][-1] if curve["step"] else 0)
            curve["accuracy"].append(float(event["record"]["finetuned_accuracy"]))
