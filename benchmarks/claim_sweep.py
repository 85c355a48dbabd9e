"""The journal's claim, measured: FALCON against depthwise separable convs and tensor decompositions at matched
parameter (or, with ``--match macs``, MAC) budgets on the bundled digits model (issue 21, item 3).

The journal version of FALCON says it "provides higher accuracy than existing methods based on depthwise separable
convolution and tensor decomposition". This sweep puts that to the test on ``digits-vgg``/``digits``:

* three budgets: the parameters (``--match macs``: the MACs) of digits-vgg converted to FALCON at ranks 1, 2, 3
  (whole model);
* for every ranked type (falcon, dsconv, tucker2 with R₃ = R₄, cp, spatial), the largest uniform rank whose
  converted model has at most the budget's parameters (MACs) (closed-form per-layer costs from the registry, each
  layer's rank clamped at its full rank as the conversion does; the table reports the params/MACs actually counted);
* mobilev2 and shuffle are unranked: their paper settings (t = 0.5; g = 2 with α = 1, since α ≠ 1 changes the kept
  layers' widths), run once, with their actual params;
* every configuration at several seeds, training-free (after conversion) and fine-tuned (after ``--epochs``),
  stored as runs in ``--db`` (each run's ``metrics.claim`` names its budget).

    python benchmarks/claim_sweep.py                      # the sweep (~15 min on 2 busy cores), table on stdout
    python benchmarks/claim_sweep.py --plan               # the chosen settings and their params, no training
    python benchmarks/claim_sweep.py --from-db            # the table again from the stored runs
    python benchmarks/claim_sweep.py --from-db --csv falcon/data/claim_digits.csv   # the summary the app shows
    python benchmarks/claim_sweep.py --match macs --db artifacts/claim_sweep_macs.sqlite \
        --csv falcon/data/claim_digits_macs.csv                                    # the same at matched MACs
    python benchmarks/claim_sweep.py --model vgg19-cifar --dataset cifar10 --data-dir ~/data \
        --baseline vgg19_cifar10.pt --epochs 30 --db artifacts/claim_cifar.sqlite     # CIFAR-10, for who has it
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from falcon.errors import FalconError
from falcon.experiments.claim import (
    METRICS,
    SWEEP_DBS,
    budget_key,
    markdown_table,
    summary_rows,
    sweep_plan,
    verdict,
    write_csv,
)


# ---------------------------------------------------------------------------------------------- running
def run(plans: Sequence[dict], seeds: Sequence[int], args) -> list[dict]:
    """Every plan at every seed through the experiment pipeline (one shared baseline); each run stored, then
    tagged with its budget (``metrics.claim``)."""
    from falcon.experiments.pipeline import ExperimentConfig
    from falcon.experiments.store import update_metrics
    from falcon.experiments.sweep import run_sweep

    configs, tags = [], []
    for seed in seeds:
        for p in plans:
            configs.append(ExperimentConfig(model=args.model, dataset=args.dataset, data_dir=args.data_dir,
                                            baseline=args.baseline, conv=p["conv"], hparams=dict(p["hparams"]),
                                            epochs=args.epochs, seed=seed, threads=args.threads, latency=False,
                                            limit_train=args.limit_train))
            key = budget_key(args.match)
            tags.append({"budget": p["budget"], key: p[key]})
    t0 = time.perf_counter()

    def progress(e: dict) -> None:  # a run is stored before its "done" event: tagged at once
        if e.get("phase") == "done" and e.get("record"):
            rec, tag = e["record"], tags[e["run"] - 1]
            rec.setdefault("metrics", {})["claim"] = tag
            update_metrics(rec["run_id"], {"claim": tag}, db=args.db)
            print(f"[{time.perf_counter() - t0:6.0f} s] {e['message']}: tf {rec.get('training_free_accuracy')}, "
                  f"ft {rec.get('finetuned_accuracy')}", file=sys.stderr, flush=True)

    result = run_sweep(configs, progress=progress, db=args.db, sweep_id=args.sweep_id)
    print(f"sweep {result['sweep_id']}: {len(result['runs'])} runs in {result['seconds']:.0f} s", file=sys.stderr)
    return result["runs"]


def stored(db: str, metric: str = "params") -> list[dict]:
    """The runs of ``db`` tagged with a ``metric`` budget, the latest such sweep's only."""
    from falcon.experiments.store import list_runs

    key = budget_key(metric)
    runs = [r for r in list_runs(db) if key in ((r.get("metrics") or {}).get("claim") or {})]
    if not runs:
        return []
    latest = max(runs, key=lambda r: r.get("created_at") or "")["sweep_id"]
    return [r for r in runs if r["sweep_id"] == latest]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--model", default="digits-vgg")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-dir", default=None, help="where CIFAR/SVHN are (see docs/experiments.md)")
    ap.add_argument("--baseline", default=None, help="a trained checkpoint of --model (needed off digits)")
    ap.add_argument("--match", choices=list(METRICS), default="params",
                    help="what the budgets match: parameters (default) or MACs")
    ap.add_argument("--db", default=None, help="results database (default: "
                    + ", ".join(f"{db} with --match {m}" for m, db in SWEEP_DBS.items()) + ")")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--sweep-id", default=None)
    ap.add_argument("--plan", action="store_true", help="print the chosen settings and params; train nothing")
    ap.add_argument("--from-db", action="store_true", help="the table from the latest stored claim sweep")
    ap.add_argument("--csv", default=None, help="also write the summary as CSV here")
    args = ap.parse_args(argv)
    args.db = args.db or SWEEP_DBS[args.match]
    if args.plan:
        for p in sweep_plan(args.model, args.match):
            print(f"{p['budget']:>14} {p[budget_key(args.match)] or '':>10} {p['conv']:>9} {p['hparams']} "
                  f"params {p['estimated_params']:,} MACs {p['estimated_macs']:,}")
        return 0
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    if args.from_db:
        records = stored(args.db, args.match)
        if not records:
            raise FalconError(f"{args.db} holds no claim sweep matched by {args.match}; run it without --from-db")
    else:
        records = run(sweep_plan(args.model, args.match), [int(s) for s in args.seeds.split(",")], args)
    rows = summary_rows(records)
    print(markdown_table(rows))
    print()
    print("\n".join(verdict(rows)))
    if args.csv:
        write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FalconError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
