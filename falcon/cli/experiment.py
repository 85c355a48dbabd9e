"""``python -m falcon experiment`` and ``results``: compress, fine-tune, evaluate, store; list stored runs.

``experiment`` runs :func:`falcon.experiments.pipeline.run_experiment` (or, with ``--sweep``, a sweep
over conv types and ranks) and stores each run; it runs unchanged under
``torchrun --nproc_per_node N -m falcon experiment ...`` (only rank 0 prints and stores).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from falcon.cli.common import add_conv_flags, conv_hparams, print_json, print_table
from falcon.errors import FalconError
from falcon.experiments.plans import method_of
from falcon.limits import float_flag, int_flag, parse_int

DB_HELP = "results database (default: $FALCON_RESULTS_DB or ~/.local/share/falcon-explorer/results.sqlite)"


def _rank_list(text: str) -> list[int]:
    """``--ranks 1,2,3``: ranks (limits' rank bound), comma-separated."""
    try:
        ranks = [parse_int(t.strip(), "rank", "each rank") for t in text.split(",") if t.strip()]
    except FalconError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not ranks:
        raise argparse.ArgumentTypeError(f"expected ranks separated by commas, got {text!r}")
    return ranks


def _str_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser("experiment", help="compress, fine-tune and evaluate; store the run",
                       description="Baseline → convert (conv type, rank, init) → training-free accuracy → fine-tune "
                                   "→ fine-tuned accuracy → measured latency of the baseline and the converted "
                                   "model; the run is stored in the results database. "
                                   "Runs unchanged under `torchrun --nproc_per_node N -m falcon experiment ...`. "
                                   "`experiment measure` times stored runs that have no latency yet.")
    p.add_argument("action", nargs="?", choices=("run", "measure"), default="run",
                   help="run (default): one run or a sweep; measure: time the stored runs that have no latency "
                        "(their models rebuilt from the stored config; --run-id, --force, --db, --latency-*)")
    _add_run_flags(p)
    _add_latency_flags(p)
    m = p.add_argument_group("experiment measure")
    m.add_argument("--run-id", action="append", default=None, metavar="ID",
                   help="measure this stored run (repeat, or commas; default: every completed run without latency)")
    m.add_argument("--force", action="store_true", help="measure runs that have a latency again")
    p.add_argument("--db", default=None, help=DB_HELP)
    p.add_argument("--no-store", action="store_true", help="do not store the run")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)
    _add_results_parser(sub)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    from falcon.experiments.data import DATASETS
    from falcon.experiments.pipeline import DEFAULT_LR, INITS, TRAIN_OPTIMIZERS

    p.add_argument("--model", default="digits-vgg", help="digits-vgg (default), vgg19-cifar, resnet34-cifar, or a "
                                                         "torchvision model; needs --baseline PATH or --baseline-epochs "
                                                         "N unless it is digits-vgg on digits")
    p.add_argument("--dataset", default="digits", choices=list(DATASETS), help="data set (default digits, bundled)")
    add_conv_flags(p, required=False)
    p.add_argument("--plan", default=None, metavar="PLAN.json",
                   help="instead of --conv and its settings: the per-layer types and ranks of `python -m falcon plan "
                        "--json` (each layer fitted to its trained kernel, then fine-tuned; stored as conv 'plan')")
    p.add_argument("--init", choices=list(INITS), default=None,
                   help="falcon/dsconv: svd (closed-form EHP fit, default), gd (gradient descent) or random; "
                        "mobilev2/shuffle: random only")
    p.add_argument("--epochs", type=int_flag("epochs"), default=3, help="fine-tuning epochs (default 3)")
    p.add_argument("--lr", type=float_flag("lr"), default=None,
                   help="peak learning rate, cosine-annealed (default " +
                        ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--optimizer", choices=list(TRAIN_OPTIMIZERS), default="adamw", help="adamw (default) or sgd (momentum 0.9, Nesterov)")
    p.add_argument("--weight-decay", type=float_flag("weight_decay"), default=5e-4, help="weight decay on weights (default 5e-4)")
    p.add_argument("--batch-size", type=int_flag("batch_size"), default=None,
                   help="batch size per process (default 32 on digits, 128 otherwise)")
    p.add_argument("--seed", type=int_flag("seed"), default=0, help="seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int_flag("threads"), default=None, metavar="N",
                   help="CPU threads (default: PyTorch's); 1 is much faster when other jobs share the cores")
    p.add_argument("--data-dir", default=None, help="where CIFAR/SVHN are (or are downloaded to); "
                                                    "default $FALCON_DATA_DIR or ~/.cache/falcon-explorer/datasets")
    p.add_argument("--no-download", action="store_true", help="never download a data set")
    p.add_argument("--baseline", default=None, metavar="PATH", help="state_dict of the model trained on the data set")
    p.add_argument("--baseline-epochs", type=int_flag("epochs"), default=0, metavar="N",
                   help="train the baseline from scratch for N epochs first (when there is no --baseline)")
    p.add_argument("--include-stem", action="store_true", default=None, help="also replace the first conv")
    p.add_argument("--limit-train", type=int_flag("images"), default=None, metavar="N", help="use only the first N training images")
    p.add_argument("--limit-test", type=int_flag("images"), default=None, metavar="N", help="use only the first N held-out images")
    p.add_argument("--sweep", action="store_true",
                   help="run a sweep instead of one run: --convs types (falcon at each of --ranks)")
    p.add_argument("--convs", type=_str_list, default=None, metavar="LIST",
                   help="with --sweep: conv types (default falcon,dsconv,mobilev2,shuffle)")
    p.add_argument("--ranks", type=_rank_list, default=None, metavar="LIST", help="with --sweep: falcon ranks (default 1,2,3)")


def _add_latency_flags(p: argparse.ArgumentParser) -> None:
    from falcon.experiments.latency import LATENCY_LAYOUTS
    from falcon.modelbench import RUNTIMES

    lat = p.add_argument_group("measured latency (at the end of each run, and for `experiment measure`)")
    lat.add_argument("--no-latency", action="store_true", help="do not measure latency at the end of the run")
    lat.add_argument("--latency-runtime", choices=list(RUNTIMES), default="eager",
                     help="eager (default), compile (torch.compile, inductor) or onnxruntime")
    lat.add_argument("--latency-batch-size", type=int_flag("batch_size"), default=1, metavar="N", help="batch size timed (default 1)")
    lat.add_argument("--latency-rounds", type=int_flag("rounds"), default=5, metavar="N",
                     help="interleaved timing rounds (default 5; falcon.modelbench)")
    lat.add_argument("--latency-layout", choices=list(LATENCY_LAYOUTS), default="auto",
                     help="memory layout: auto (default) times both, each model in its fastest")


def _add_results_parser(sub) -> None:
    r = sub.add_parser("results", help="list or export stored runs",
                       description="The runs in the results database, oldest first.")
    r.add_argument("--db", default=None, help=DB_HELP)
    r.add_argument("--model", default=None, help="only this model")
    r.add_argument("--dataset", default=None, help="only this data set")
    r.add_argument("--sweep-id", default=None, help="only the runs of this sweep")
    r.add_argument("--limit", type=int_flag("runs"), default=None, metavar="N", help="only the N most recent runs")
    r.add_argument("--csv", default=None, metavar="PATH", help="write the runs to a CSV file")
    r.add_argument("--json", action="store_true", help="a JSON list of runs (each with run_id) on stdout")
    r.set_defaults(func=run_results)


def _config(args: argparse.Namespace, conv: str | None):
    """The run's config: ``conv`` with its flags, or (None) the ``--plan`` file's per-layer choices."""
    from falcon.experiments.pipeline import ExperimentConfig

    return ExperimentConfig(
        model=args.model, dataset=args.dataset, conv=conv or "falcon", plan=args.plan if conv is None else None,
        hparams={k: v for k, v in conv_hparams(args, conv).items() if v is not None} if conv else {},
        init=args.init, epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        batch_size=args.batch_size, seed=args.seed, device=args.device, data_dir=args.data_dir,
        download=not args.no_download, baseline=args.baseline, baseline_epochs=args.baseline_epochs,
        include_stem=args.include_stem, limit_train=args.limit_train, limit_test=args.limit_test,
        threads=args.threads, latency=not args.no_latency, latency_runtime=args.latency_runtime,
        latency_batch_size=args.latency_batch_size, latency_rounds=args.latency_rounds,
        latency_layout=args.latency_layout,
    )


def _progress(quiet: bool):
    if quiet:
        return None
    last = [""]

    def show(event: dict) -> None:
        msg = event.get("message", "")
        # epoch summaries and phase changes; not every training step, nor every timing round
        if event.get("detail"):
            return
        if msg and msg != last[0] and (event.get("phase") != "finetune" and event.get("phase") != "baseline"
                                       or "done" in msg or "evaluating" in msg):
            print(msg, file=sys.stderr, flush=True)
            last[0] = msg

    return show


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _row(r: dict) -> dict:
    return {
        "run_id": r["run_id"], "status": r.get("status", ""), "model": r["model"], "dataset": r["dataset"],
        "conv": method_of(r), "rank": "" if r.get("rank") is None else str(r["rank"]), "init": r.get("init") or "",
        "epochs": r.get("epochs") if r.get("epochs") is not None else "",
        "baseline %": _pct(r.get("baseline_accuracy")), "training-free %": _pct(r.get("training_free_accuracy")),
        "fine-tuned %": _pct(r.get("finetuned_accuracy")),
        "params": r.get("params") if r.get("params") is not None else "",
        "macs": r.get("macs") if r.get("macs") is not None else "",
        "latency ms": _latency_ms(r),
        "seconds": round(r["seconds"], 1) if r.get("seconds") is not None else "",
    }


def _latency_ms(r: dict) -> str:
    """The converted model's measured latency (``baseline → converted``), blank when it has none."""
    lat = (r.get("metrics") or {}).get("latency") if isinstance(r.get("metrics"), dict) else None
    if not isinstance(lat, dict) or lat.get("status") != "ok":
        return ""
    conv = f"{lat['converted_ms']:.3g}"
    return f"{lat['original_ms']:.3g} → {conv}" if lat.get("original_ms") else conv


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run(args: argparse.Namespace) -> int:
    from falcon.experiments.pipeline import run_experiment

    if args.action == "measure":
        return run_measure(args)
    conv = _conversion(args)
    main = _is_main()
    if main and not args.no_store:  # a database that cannot take the run is refused before any training
        from falcon.experiments.store import check_writable

        check_writable(args.db)
    progress = _progress(args.quiet or not main)
    if args.sweep:
        return _run_sweep(args, progress, main)
    record = run_experiment(_config(args, conv), progress=progress, db=args.db, store=not args.no_store)
    if not main:
        return 0
    if args.json:
        print_json(record)
        return 0
    print_table([_row(record)])
    if record.get("finetuned_accuracy") is not None and record.get("baseline_accuracy") is not None:
        print(f"fine-tuned − baseline: {100 * (record['finetuned_accuracy'] - record['baseline_accuracy']):+.2f} points; "
              f"params {record['params']:,} vs {record['baseline_params']:,} "
              f"({record['baseline_params'] / max(record['params'], 1):.2f}× fewer)")
    if "latency" in record.get("metrics", {}) and progress is None:  # the progress lines said it already
        from falcon.experiments.latency import describe

        print(describe(record["metrics"]["latency"]))
    return 0


def _conversion(args: argparse.Namespace) -> str | None:
    """The one run's conv type, or None for ``--plan`` (which takes no conv flags and no sweep)."""
    from falcon.convtypes import all_hparams

    if args.plan is None:
        if not args.conv and not args.sweep:
            raise FalconError("--conv TYPE is required (or --plan FILE, or --sweep)")
        return args.conv
    given = [f"--{n}" for n in ("conv", "sweep", "convs", "ranks", "init") if getattr(args, n) not in (None, False)]
    given += [h.flag for h in all_hparams().values() if getattr(args, h.name, None) is not None]
    if given:
        raise FalconError(f"--plan sets each layer's type and ranks and makes one run; leave out {', '.join(given)}")
    return None


def _run_sweep(args: argparse.Namespace, progress, main: bool) -> int:
    from falcon.experiments.sweep import DEFAULT_RANKS, DEFAULT_SWEEP_CONVS, run_sweep, sweep_configs
    from falcon.paper import PAPER_RANKED

    base = _config(args, PAPER_RANKED[0])  # the conv and its rank are the sweep's, per config
    configs = sweep_configs(base, args.convs or ([args.conv] if args.conv else DEFAULT_SWEEP_CONVS),
                            args.ranks or DEFAULT_RANKS, competitor_ranks=[args.rank] if args.rank else (1,))
    t0 = time.perf_counter()
    result = run_sweep(configs, progress=progress, db=args.db, store=not args.no_store)
    wall = time.perf_counter() - t0
    if not main:
        return 0
    if args.json:
        print_json({"sweep_id": result["sweep_id"], "seconds": wall, "stopped": result["stopped"],
                    "runs": result["runs"]})
    else:
        print_table([_row(r) for r in result["runs"]])
        print(f"sweep {result['sweep_id']}: {len(result['runs'])} runs in {wall:.1f} s")
    return 0


def run_measure(args: argparse.Namespace) -> int:
    """``experiment measure``: the latency of stored runs, their models rebuilt from the stored config."""
    from falcon.experiments import store
    from falcon.experiments.backfill import measure_stored_runs
    from falcon.models import names_code

    if args.no_latency:
        raise FalconError("experiment measure measures latency: leave out --no-latency")
    ids = [i for given in (args.run_id or []) for i in _str_list(given)]
    if store.db_path(args.db).exists():  # ours and writable before anything is timed; none yet: nothing to do
        store.check_writable(args.db)
    say = None if args.quiet or args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    results = measure_stored_runs(args.db, ids or None, force=args.force, runtime=args.latency_runtime,
                                  batch_size=args.latency_batch_size, rounds=args.latency_rounds,
                                  layout=args.latency_layout, device=args.device, say=say,
                                  model=args.model if names_code(args.model) else None)
    measured = [r for r in results if r["status"] == "measured"]
    if args.json:
        print_json(results)
    else:
        for r in results:
            if r["status"] == "skipped" or say is None:
                print(r["line"])
        if not results:
            print(f"no completed runs in {store.db_path(args.db)}")
        print(f"{len(measured)} of {len(results)} runs measured, "
              f"{sum(r['status'] == 'skipped' for r in results)} already had a latency, "
              f"{sum(r['status'] == 'failed' for r in results)} could not be measured")
    if measured or all(r["status"] == "skipped" for r in results):  # nothing to do is not a failure
        return 0
    return 1


def run_results(args: argparse.Namespace) -> int:
    from falcon.experiments import store

    if args.csv:  # never the database itself, nor a file that is not ours: refused before anything is read
        store.check_csv_target(args.csv, args.db)
    runs = store.list_runs(args.db, model=args.model, dataset=args.dataset, sweep_id=args.sweep_id, limit=args.limit)
    if args.csv:
        n = store.export_csv(args.csv, args.db, runs=runs)
        print(f"wrote {n} runs to {args.csv}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print_json(runs)
        return 0
    if not args.csv:
        if not runs:
            path = store.db_path(args.db)
            print(f"no runs in {path}" if store.exists(path) else f"no runs stored yet in {path}")
        else:
            print_table([_row(r) for r in runs])
    return 0
