"""The journal's claim, measured: FALCON against depthwise separable convs and tensor decompositions at matched
parameter budgets on the bundled digits model (issue 21, item 3).

The journal version of FALCON says it "provides higher accuracy than existing methods based on depthwise separable
convolution and tensor decomposition". This sweep puts that to the test on ``digits-vgg``/``digits``:

* three parameter budgets: the parameters of digits-vgg converted to FALCON at ranks 1, 2, 3 (whole model);
* for every ranked type (falcon, dsconv, tucker2 with R₃ = R₄, cp, spatial), the largest uniform rank whose
  converted model has at most the budget's parameters (closed-form per-layer costs from the registry, each layer's
  rank clamped at its full rank as the conversion does; the table reports the params actually counted);
* mobilev2 and shuffle are unranked: their paper settings (t = 0.5; g = 2 with α = 1, since α ≠ 1 changes the kept
  layers' widths), run once, with their actual params;
* every configuration at several seeds, training-free (after conversion) and fine-tuned (after ``--epochs``),
  stored as runs in ``--db`` (each run's ``metrics.claim`` names its budget).

    python benchmarks/claim_sweep.py                      # the sweep (~15 min on 2 busy cores), table on stdout
    python benchmarks/claim_sweep.py --plan               # the chosen settings and their params, no training
    python benchmarks/claim_sweep.py --from-db            # the table again from the stored runs
    python benchmarks/claim_sweep.py --from-db --csv falcon/data/claim_digits.csv   # the summary the app shows
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

RANKED_TYPES = ("falcon", "dsconv", "tucker2", "cp", "spatial")
UNRANKED = {"mobilev2": {"expansion": 0.5}, "shuffle": {"groups": 2, "width_mult": 1.0}}
BUDGET_RANKS = (1, 2, 3)  # the budgets: FALCON at these ranks
DEPTHWISE = ("dsconv", "mobilev2", "shuffle")  # the claim's "depthwise separable convolution" family
DECOMPOSITIONS = ("tucker2", "cp", "spatial")  # its "tensor decomposition" family
DEFAULT_DB = "artifacts/claim_sweep.sqlite"
CSV_COLUMNS = ["budget", "budget_params", "conv", "settings", "params", "macs", "seeds",
               "training_free_median", "training_free_min", "training_free_max",
               "finetuned_median", "finetuned_min", "finetuned_max", "baseline_accuracy"]


# ---------------------------------------------------------------------------------------------- budgets
def model_sites(model: str = "digits-vgg"):
    """The model's entry, its input (C, H, W), its untrained net and its parameter count."""
    from falcon.counting import count_model
    from falcon.models import get_model_entry
    from falcon.surgery import conv_sites

    entry = get_model_entry(model)
    chw = (entry.in_channels, entry.input_size, entry.input_size)
    net = entry.build(None).eval()
    return entry, conv_sites(net, chw), count_model(net, chw, "clean").params


def estimated_params(entry, sites, base_params: int, conv: str, hparams: dict) -> int:
    """The converted model's parameters: the baseline's, each replaced conv's swapped for the block's closed-form
    count (:meth:`ConvType.cost`), ranks clamped per layer at the layer's full rank as the conversion clamps them."""
    from falcon.convtypes import get_conv_type
    from falcon.surgery import plan

    ct, std = get_conv_type(conv), get_conv_type("standard")
    total = base_params
    for site in plan(entry, sites, conv):
        s = site.spec
        hp = dict(hparams)
        if ct.ranked:
            full = ct.full_ranks(s.N, s.M, s.D)
            hp.update({n: min(int(hp[n]), full[n]) for n in ct.rank_names})
        total += ct.cost(s, **hp).params - std.cost(s).params
    return total


def rank_for_budget(entry, sites, base_params: int, conv: str, budget: int) -> int | None:
    """The largest uniform rank whose converted model has at most ``budget`` parameters (None if rank 1 is over)."""
    from falcon.convtypes import get_conv_type

    ct = get_conv_type(conv)
    top = max(ct.full_rank(s.spec.N, s.spec.M, s.spec.D) for s in sites if s.replaceable)
    best = None
    for k in range(1, top + 1):  # params grow with the rank: stop at the first one over
        if estimated_params(entry, sites, base_params, conv, ct.rank_hparams(k)) > budget:
            break
        best = k
    return best


def sweep_plan(model: str = "digits-vgg") -> list[dict[str, Any]]:
    """One entry per (budget, conv type): ``budget`` (label), ``budget_params``, ``conv``, ``hparams``,
    ``estimated_params``; the unranked types once, with budget ``paper setting``."""
    from falcon.convtypes import get_conv_type

    entry, sites, base = model_sites(model)
    falcon = get_conv_type("falcon")
    plans = []
    for r in BUDGET_RANKS:
        budget = estimated_params(entry, sites, base, "falcon", falcon.rank_hparams(r))
        for conv in RANKED_TYPES:
            k = rank_for_budget(entry, sites, base, conv, budget)
            if k is None:
                print(f"note: {conv} at rank 1 is over the budget of FALCON k={r} ({budget:,}); skipped", file=sys.stderr)
                continue
            hp = get_conv_type(conv).rank_hparams(k)
            plans.append({"budget": f"FALCON k={r}", "budget_params": budget, "conv": conv, "hparams": hp,
                          "estimated_params": estimated_params(entry, sites, base, conv, hp)})
    for conv, hp in UNRANKED.items():
        plans.append({"budget": "paper setting", "budget_params": None, "conv": conv, "hparams": hp,
                      "estimated_params": estimated_params(entry, sites, base, conv, hp)})
    return plans


# ---------------------------------------------------------------------------------------------- the table
def _spread(values: Sequence[float]) -> tuple[float, float, float] | None:
    vals = [100.0 * v for v in values if v is not None]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def summary_rows(records: Iterable[dict]) -> list[dict[str, Any]]:
    """Completed run records (each with ``metrics.claim``: its budget) grouped by (budget, conv, settings): seeds,
    params/MACs, training-free and fine-tuned accuracy in percent (median, min, max over the seeds). In the order
    the groups first appear."""
    from falcon.convtypes import label_of

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        claim = (r.get("metrics") or {}).get("claim")
        if r.get("status") != "completed" or not claim:
            continue
        settings = label_of(r["conv"], r.get("hparams"))
        groups.setdefault((claim["budget"], claim.get("budget_params"), r["conv"], settings), []).append(r)
    rows = []
    for (budget, budget_params, conv, settings), runs in groups.items():
        tf, ft = _spread([r["training_free_accuracy"] for r in runs]), _spread([r["finetuned_accuracy"] for r in runs])
        base = _spread([r.get("baseline_accuracy") for r in runs])
        rows.append({"budget": budget, "budget_params": budget_params, "conv": conv, "settings": settings,
                     "params": runs[0]["params"], "macs": runs[0]["macs"], "seeds": len(runs),
                     "training_free_median": tf[0], "training_free_min": tf[1], "training_free_max": tf[2],
                     "finetuned_median": ft[0], "finetuned_min": ft[1], "finetuned_max": ft[2],
                     "baseline_accuracy": base[0] if base else None})
    return rows


def _cell(row: dict, what: str) -> str:
    med, lo, hi = (row[f"{what}_{s}"] for s in ("median", "min", "max"))
    return f"{med:.2f} [{lo:.2f}–{hi:.2f}]"


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table; within a budget, the best fine-tuned median in bold."""
    best = {}
    for r in rows:
        best[r["budget"]] = max(best.get(r["budget"], float("-inf")), r["finetuned_median"])
    lines = ["| budget (params) | type | settings | params | MACs | seeds | training-free % | fine-tuned % |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = r["budget"] + (f" ({r['budget_params']:,})" if r["budget_params"] else "")
        ft = _cell(r, "finetuned")
        if r["finetuned_median"] == best[r["budget"]] and r["budget_params"]:
            ft = f"**{ft}**"
        lines.append(f"| {budget} | {r['conv']} | {r['settings']} | {r['params']:,} | {r['macs']:,} | {r['seeds']} "
                     f"| {_cell(r, 'training_free')} | {ft} |")
    return "\n".join(lines)


def verdict(rows: Sequence[dict]) -> list[str]:
    """Per matched budget: FALCON's fine-tuned median against the best depthwise-separable and the best
    tensor-decomposition type at the same budget, in points (positive: FALCON ahead)."""
    out = []
    for budget in dict.fromkeys(r["budget"] for r in rows if r["budget_params"]):
        at = [r for r in rows if r["budget"] == budget]
        falcon = next((r for r in at if r["conv"] == "falcon"), None)
        if falcon is None:
            continue
        parts = []
        for family, convs in (("depthwise separable", DEPTHWISE), ("tensor decomposition", DECOMPOSITIONS)):
            rivals = [r for r in at if r["conv"] in convs]
            if rivals:
                top = max(rivals, key=lambda r: r["finetuned_median"])
                gap = falcon["finetuned_median"] - top["finetuned_median"]
                parts.append(f"{gap:+.2f} points vs the best {family} ({top['settings']})")
        out.append(f"{budget}: FALCON fine-tuned {falcon['finetuned_median']:.2f} %; " + "; ".join(parts))
    return out


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


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
            configs.append(ExperimentConfig(model=args.model, conv=p["conv"], hparams=dict(p["hparams"]),
                                            epochs=args.epochs, seed=seed, threads=args.threads, latency=False,
                                            limit_train=args.limit_train))
            tags.append({"budget": p["budget"], "budget_params": p["budget_params"]})
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


def stored(db: str) -> list[dict]:
    """The tagged runs of ``db``, the latest sweep's only."""
    from falcon.experiments.store import list_runs

    runs = [r for r in list_runs(db) if (r.get("metrics") or {}).get("claim")]
    if not runs:
        return []
    latest = max(runs, key=lambda r: r.get("created_at") or "")["sweep_id"]
    return [r for r in runs if r["sweep_id"] == latest]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits-vgg")
    ap.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--sweep-id", default=None)
    ap.add_argument("--plan", action="store_true", help="print the chosen settings and params; train nothing")
    ap.add_argument("--from-db", action="store_true", help="the table from the latest stored claim sweep")
    ap.add_argument("--csv", default=None, help="also write the summary as CSV here")
    args = ap.parse_args(argv)
    if args.plan:
        for p in sweep_plan(args.model):
            print(f"{p['budget']:>14} {p['budget_params'] or '':>8} {p['conv']:>9} {p['hparams']} "
                  f"params {p['estimated_params']:,}")
        return 0
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    if args.from_db:
        records = stored(args.db)
    else:
        records = run(sweep_plan(args.model), [int(s) for s in args.seeds.split(",")], args)
    rows = summary_rows(records)
    print(markdown_table(rows))
    print()
    print("\n".join(verdict(rows)))
    if args.csv:
        write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
