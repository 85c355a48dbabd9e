"""Tables and LaTeX for display: the calculator's cost table and its formula sums; the points of the
accuracy-vs-cost figure."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from falcon.convtypes import Cost


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


def with_formulas(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calculator's rows (:func:`falcon.costs.layer_rows`) with each type's LaTeX formulas and this layer's
    sums of parts (``latex_params``, ``latex_macs``, ``params_sum``, ``macs_sum``); the ``Cost`` object is dropped
    (the rows are cached as plain data)."""
    from falcon.convtypes import get_conv_type

    out = []
    for r in rows:
        r = dict(r)
        cost = r.pop("cost", None)
        if cost is not None:
            ct = get_conv_type(r["conv"])
            r.update(latex_params=ct.latex_params, latex_macs=ct.latex_macs,
                     params_sum=parts_latex(cost, "params"), macs_sum=parts_latex(cost, "macs"))
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------------
# accuracy vs cost


def pareto_front(x: Iterable[float], y: Iterable[float]) -> np.ndarray:
    """Boolean mask of the points no other point beats: lower-or-equal cost ``x`` and higher-or-equal
    accuracy ``y``, one of them strictly. NaNs are never on the front."""
    xs, ys = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    front = np.zeros(len(xs), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok & (xs <= xs[i]) & (ys >= ys[i]) & ((xs < xs[i]) | (ys > ys[i]))
        front[i] = not others.any()
    return front


def accuracy_table(paper: pd.DataFrame, own: pd.DataFrame | None = None, x: str = "params_m", y: str = "top1",
                   panels: Sequence[tuple[str, str]] | None = None) -> pd.DataFrame:
    """The points of :func:`falcon.views.figures.accuracy_figure`, one row each: the thesis's (``source`` "paper")
    and the project's runs (``own``, "ours"), those with a finite cost ``x`` and accuracy ``y`` in the
    ``panels`` (model, dataset) given (all when None), with ``pareto`` (on its panel's Pareto frontier of
    ``x`` against ``y``) and ``method_label`` (the registry's label of the conv type). ``x="latency_ms"``
    (measured, :func:`falcon.experiments.store.accuracy_points`) keeps only our runs that have one: the
    thesis reports no latency."""
    from falcon.convtypes import CONV_TYPES

    frames = [paper.assign(source="paper")]
    if own is not None and len(own):
        frames.append(own.assign(source="ours"))
    data = pd.concat(frames, ignore_index=True)
    if x not in data:  # latency_ms: the thesis reports none, so without our runs there is no point
        data = data.assign(**{x: np.nan})
    data = data[np.isfinite(pd.to_numeric(data[x], errors="coerce")) & np.isfinite(pd.to_numeric(data[y], errors="coerce"))]
    if panels is not None:
        wanted = set(map(tuple, panels))
        data = data[[(m, d) in wanted for m, d in zip(data["model"], data["dataset"])]]
    front = pd.Series(False, index=data.index)
    for _key, g in data.groupby(["model", "dataset"], sort=False):
        front.loc[g.index] = pareto_front(g[x], g[y])
    return data.assign(pareto=front.astype(bool),
                       method_label=[CONV_TYPES[m].label if m in CONV_TYPES else m for m in data["method"]])


#: The x axes of the accuracy-vs-cost figure: column -> axis title.
COST_AXES = {"params_m": "parameters (M)", "macs_m": "FLOPs = MACs (M)", "latency_ms": "latency per batch (ms, measured)"}


def latency_summary(data: pd.DataFrame) -> dict[str, Any]:
    """Where the latencies of ``data``'s points (:func:`accuracy_table`, ``x="latency_ms"``) were measured:
    ``devices``, ``runtimes``, ``batches``, ``weights`` (distinct values, in order), ``mixed`` (the names of
    those that differ between points: such points are not comparable with each other), ``points`` (how many
    have a latency) and ``caption`` (one line naming them)."""
    has = data[pd.to_numeric(data["latency_ms"], errors="coerce").notna()] if "latency_ms" in data else data.iloc[0:0]

    def distinct(col: str) -> list:
        return [v for v in dict.fromkeys(has[col]) if v is not None and not (isinstance(v, float) and np.isnan(v))] \
            if col in has else []

    out = {"devices": distinct("latency_device"), "runtimes": distinct("latency_runtime"),
           "batches": [int(b) for b in distinct("latency_batch")], "weights": distinct("latency_weights"),
           "points": len(has)}
    out["mixed"] = [name for name, key in (("devices", "devices"), ("runtimes", "runtimes"), ("batch sizes", "batches"))
                    if len(out[key]) > 1]

    def one(values: list, fmt=str) -> str:
        return " / ".join(fmt(v) for v in values) or "?"

    out["caption"] = (f"{out['points']} point{'s' if out['points'] != 1 else ''} measured on {one(out['devices'])}, "
                      f"runtime {one(out['runtimes'])}, batch {one(out['batches'])}")
    return out
