"""The journal's claim, measured: matched parameter budgets, and the table of a claim sweep's runs (issue 21, item 3).

The journal version of FALCON says it "provides higher accuracy than existing methods based on depthwise separable
convolution and tensor decomposition". ``benchmarks/claim_sweep.py`` runs the sweep; this module picks the settings
(:func:`sweep_plan`: for each budget, the largest uniform rank of every ranked type at or under it, from the
registry's closed-form costs) and turns run records into the summary (:func:`summary_rows`,
:func:`markdown_table`, :func:`verdict`), which ships as ``falcon/data/claim_digits.csv`` (:func:`load_summary`)
for the Accuracy page. No Streamlit, no training here.
"""
from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

CLAIM = ("FALCON provides higher accuracy than existing methods based on depthwise separable convolution and "
         "tensor decomposition")

SUBJECT = "falcon"  # the type the claim is about; its ranks set the budgets
RANKED_TYPES = ("falcon", "dsconv", "tucker2", "cp", "spatial")
UNRANKED = {"mobilev2": {"expansion": 0.5}, "shuffle": {"groups": 2, "width_mult": 1.0}}
BUDGET_RANKS = (1, 2, 3)  # the budgets: FALCON at these ranks
DEPTHWISE = ("dsconv", "mobilev2", "shuffle")  # the claim's "depthwise separable convolution" family
DECOMPOSITIONS = ("tucker2", "cp", "spatial")  # its "tensor decomposition" family
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
    falcon = get_conv_type(SUBJECT)
    plans = []
    for r in BUDGET_RANKS:
        budget = estimated_params(entry, sites, base, SUBJECT, falcon.rank_hparams(r))
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
        falcon = next((r for r in at if r["conv"] == SUBJECT), None)
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


def load_summary(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The rows :func:`write_csv` wrote (default: the bundled ``falcon/data/claim_digits.csv``), numbers as numbers;
    [] when the file does not exist."""
    from falcon.data import DATA_DIR

    path = Path(path) if path is not None else DATA_DIR / "claim_digits.csv"
    if not path.exists():
        return []
    ints, texts = ("budget_params", "params", "macs", "seeds"), ("budget", "conv", "settings")
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                if k in texts:
                    row[k] = v
                elif v in ("", None):
                    row[k] = None
                else:
                    row[k] = int(float(v)) if k in ints else float(v)
            rows.append(row)
    return rows
