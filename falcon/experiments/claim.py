"""The journal's claim, measured: matched parameter or MAC budgets, and the table of a claim sweep's runs (issue 21,
item 3).

The journal version of FALCON says it "provides higher accuracy than existing methods based on depthwise separable
convolution and tensor decomposition". ``benchmarks/claim_sweep.py`` runs the sweep; this module picks the settings
(:func:`sweep_plan`: for each budget, in parameters or in MACs, the largest uniform rank of every ranked type at or
under it, from the registry's closed-form costs) and turns run records into the summary (:func:`summary_rows`,
:func:`markdown_table`, :func:`verdict`), which ships as ``falcon/data/claim_digits.csv`` and
``claim_digits_macs.csv`` (:func:`load_summary`)
for the Accuracy page. No Streamlit, no training here.
"""
from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from falcon.errors import FalconError

CLAIM = ("FALCON provides higher accuracy than existing methods based on depthwise separable convolution and "
         "tensor decomposition")

SUBJECT = "falcon"  # the type the claim is about; its ranks set the budgets
RANKED_TYPES = ("falcon", "dsconv", "tucker2", "cp", "spatial")
UNRANKED = {"mobilev2": {"expansion": 0.5}, "shuffle": {"groups": 2, "width_mult": 1.0}}
BUDGET_RANKS = (1, 2, 3)  # the budgets: FALCON at these ranks
DEPTHWISE = ("dsconv", "mobilev2", "shuffle")  # the claim's "depthwise separable convolution" family
DECOMPOSITIONS = ("tucker2", "cp", "spatial")  # its "tensor decomposition" family
METRICS = {"params": "params", "macs": "MACs"}  # what a budget matches: field -> its name in the table
CSV_NAMES = {"params": "claim_digits.csv", "macs": "claim_digits_macs.csv"}  # the bundled summaries, in falcon/data
SWEEP_DBS = {"params": "artifacts/claim_sweep.sqlite", "macs": "artifacts/claim_sweep_macs.sqlite"}  # runs
CSV_COLUMNS = ["budget", "budget_params", "conv", "settings", "params", "macs", "seeds",
               "training_free_median", "training_free_min", "training_free_max",
               "finetuned_median", "finetuned_min", "finetuned_max", "baseline_accuracy"]


# ---------------------------------------------------------------------------------------------- budgets
def budget_key(metric: str) -> str:
    """The budget field of a plan, a run's tag and a summary row for ``metric``: ``budget_params``/``budget_macs``."""
    if metric not in METRICS:
        raise FalconError(f"unknown budget metric {metric!r}; choose one of {', '.join(METRICS)}")
    return f"budget_{metric}"


def model_sites(model: str = "digits-vgg"):
    """The model's entry, its input (C, H, W), its untrained net and its counted ``{"params", "macs"}``."""
    from falcon.counting import count_model
    from falcon.models import get_model_entry
    from falcon.surgery import conv_sites

    entry = get_model_entry(model)
    chw = (entry.in_channels, entry.input_size, entry.input_size)
    net = entry.build(None).eval()
    count = count_model(net, chw, "clean")
    return entry, conv_sites(net, chw), {"params": count.params, "macs": count.macs}


def estimated_cost(entry, sites, base: dict, conv: str, hparams: dict, metric: str = "params") -> int:
    """The converted model's ``metric`` (params or MACs): the baseline's, each replaced conv's swapped for the
    block's closed-form cost (:meth:`ConvType.cost`), ranks clamped per layer at the layer's full rank as the
    conversion clamps them."""
    from falcon.convtypes import get_conv_type
    from falcon.surgery import plan

    ct, std = get_conv_type(conv), get_conv_type("standard")
    total = base[metric]
    for site in plan(entry, sites, conv):
        s = site.spec
        hp = dict(hparams)
        if ct.ranked:
            full = ct.full_ranks(s.N, s.M, s.D)
            hp.update({n: min(int(hp[n]), full[n]) for n in ct.rank_names})
        total += getattr(ct.cost(s, **hp), metric) - getattr(std.cost(s), metric)
    return total


def rank_for_budget(entry, sites, base: dict, conv: str, budget: int, metric: str = "params") -> int | None:
    """The largest uniform rank whose converted model has at most ``budget`` of ``metric`` (None if rank 1 is over)."""
    from falcon.convtypes import get_conv_type

    ct = get_conv_type(conv)
    top = max(ct.full_rank(s.spec.N, s.spec.M, s.spec.D) for s in sites if s.replaceable)
    best = None
    for k in range(1, top + 1):  # the cost grows with the rank: stop at the first one over
        if estimated_cost(entry, sites, base, conv, ct.rank_hparams(k), metric) > budget:
            break
        best = k
    return best


def _plan(entry, sites, base: dict, budget: str, key: str, value: int | None, conv: str, hp: dict) -> dict[str, Any]:
    return {"budget": budget, key: value, "conv": conv, "hparams": hp,
            **{f"estimated_{m}": estimated_cost(entry, sites, base, conv, hp, m) for m in METRICS}}


def sweep_plan(model: str = "digits-vgg", metric: str = "params") -> list[dict[str, Any]]:
    """One entry per (budget, conv type): ``budget`` (label), ``budget_<metric>`` (its value), ``conv``,
    ``hparams``, ``estimated_params``, ``estimated_macs``; the unranked types once, with budget ``paper setting``."""
    from falcon.convtypes import get_conv_type

    key = budget_key(metric)
    entry, sites, base = model_sites(model)
    falcon = get_conv_type(SUBJECT)
    plans = []
    for r in BUDGET_RANKS:
        budget = estimated_cost(entry, sites, base, SUBJECT, falcon.rank_hparams(r), metric)
        for conv in RANKED_TYPES:
            k = rank_for_budget(entry, sites, base, conv, budget, metric)
            if k is None:
                print(f"note: {conv} at rank 1 is over the {metric} budget of FALCON k={r} ({budget:,}); skipped",
                      file=sys.stderr)
                continue
            hp = get_conv_type(conv).rank_hparams(k)
            plans.append(_plan(entry, sites, base, f"FALCON k={r}", key, budget, conv, hp))
    plans += [_plan(entry, sites, base, "paper setting", key, None, conv, hp) for conv, hp in UNRANKED.items()]
    return plans


# ---------------------------------------------------------------------------------------------- the table
def _spread(values: Sequence[float]) -> tuple[float, float, float] | None:
    vals = [100.0 * v for v in values if v is not None]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def _tag_key(claim: dict) -> str:
    """The budget field of a run's ``metrics.claim`` (``budget_params`` in sweeps from before ``--match``)."""
    return next((k for k in claim if k in {budget_key(m) for m in METRICS}), "budget_params")


def metric_of(rows: Sequence[dict]) -> str:
    """What the summary's budgets match: ``macs`` when its rows carry ``budget_macs``, else ``params``."""
    return "macs" if any(budget_key("macs") in r for r in rows) else "params"


def summary_rows(records: Iterable[dict]) -> list[dict[str, Any]]:
    """Completed run records (each with ``metrics.claim``: its budget) grouped by (budget, conv, settings): seeds,
    params/MACs, training-free and fine-tuned accuracy in percent (median, min, max over the seeds). In the order
    the groups first appear; each row's budget value under the tag's key (``budget_params`` or ``budget_macs``)."""
    from falcon.convtypes import label_of

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        claim = (r.get("metrics") or {}).get("claim")
        if r.get("status") != "completed" or not claim:
            continue
        settings, key = label_of(r["conv"], r.get("hparams")), _tag_key(claim)
        groups.setdefault((claim["budget"], key, claim.get(key), r["conv"], settings), []).append(r)
    rows = []
    for (budget, key, value, conv, settings), runs in groups.items():
        tf, ft = _spread([r["training_free_accuracy"] for r in runs]), _spread([r["finetuned_accuracy"] for r in runs])
        base = _spread([r.get("baseline_accuracy") for r in runs])
        rows.append({"budget": budget, key: value, "conv": conv, "settings": settings,
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
    metric = metric_of(rows)
    key, best = budget_key(metric), {}
    for r in rows:
        best[r["budget"]] = max(best.get(r["budget"], float("-inf")), r["finetuned_median"])
    head = f"| budget ({METRICS[metric]}) | type | settings | params | MACs | seeds | training-free % | fine-tuned % |"
    lines = [head,
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = r["budget"] + (f" ({r[key]:,})" if r[key] else "")
        ft = _cell(r, "finetuned")
        if r["finetuned_median"] == best[r["budget"]] and r[key]:
            ft = f"**{ft}**"
        lines.append(f"| {budget} | {r['conv']} | {r['settings']} | {r['params']:,} | {r['macs']:,} | {r['seeds']} "
                     f"| {_cell(r, 'training_free')} | {ft} |")
    return "\n".join(lines)


def verdict(rows: Sequence[dict]) -> list[str]:
    """Per matched budget: FALCON's fine-tuned median against the best depthwise-separable and the best
    tensor-decomposition type at the same budget, in points (positive: FALCON ahead)."""
    out, key = [], budget_key(metric_of(rows))
    for budget in dict.fromkeys(r["budget"] for r in rows if r[key]):
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


def summary_path(metric: str = "params") -> Path:
    """The bundled summary of the sweep matched by ``metric``: ``falcon/data/claim_digits.csv`` or ``…_macs.csv``."""
    from falcon.data import DATA_DIR

    return DATA_DIR / CSV_NAMES[metric]


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    columns = [budget_key(metric_of(rows)) if c == "budget_params" else c for c in CSV_COLUMNS]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def load_summary(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The rows :func:`write_csv` wrote (default: the bundled params-matched summary), numbers as numbers;
    [] when the file does not exist."""
    path = Path(path) if path is not None else summary_path("params")
    if not path.exists():
        return []
    ints, texts = ("budget_params", "budget_macs", "params", "macs", "seeds"), ("budget", "conv", "settings")
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
