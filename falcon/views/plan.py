"""A per-layer plan (:mod:`falcon.planning`) as a table and a figure: each layer's cost before and after, the type
and ranks chosen, beside the uniform FALCON answer at the same budget."""
from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from falcon.views.figures import BASE_LAYOUT, conv_color, conv_label


def _ranks(hparams: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in hparams.items()) or "–"


def plan_table(plan: dict, uniform: dict | None) -> pd.DataFrame:
    """One row per planned layer: its cost before, the plan's choice and cost, the uniform answer's (when there is
    one), and the predicted errors."""
    by_uniform = {c["layer"]: c for c in (uniform or {}).get("layers", [])}
    rows = []
    for c in plan["layers"]:
        u = by_uniform.get(c["layer"])
        kept = c["conv"] == "standard"
        rows.append({"layer": c["layer"], "type": "kept" if kept else conv_label(c["conv"]), "ranks": _ranks(c["hparams"]),
                     f"{plan['metric']} before": c[f"original_{plan['metric']}"],
                     f"{plan['metric']} plan": c[plan["metric"]], "error plan": c["error"],
                     **({f"{plan['metric']} uniform": u[plan["metric"]], "error uniform": u["error"]} if u else {})})
    return pd.DataFrame(rows)


def plan_figure(plan: dict, uniform: dict | None) -> go.Figure:
    """Grouped bars per layer (log axis): the original conv's cost, the plan's (coloured by the chosen type, its
    ranks written over the bar: k, or R₃/R₄) and the uniform answer's."""
    metric = plan["metric"]
    names = [c["layer"] for c in plan["layers"]]
    fig = go.Figure()
    fig.add_bar(x=names, y=[c[f"original_{metric}"] for c in plan["layers"]], name="original conv",
                marker_color="#c8ccd2", offsetgroup="original")
    for conv in dict.fromkeys(c["conv"] for c in plan["layers"]):  # one legend entry per chosen type
        mine = [c for c in plan["layers"] if c["conv"] == conv]
        kept = conv == "standard"
        fig.add_bar(x=[c["layer"] for c in mine], y=[c[metric] for c in mine], offsetgroup="plan",
                    name="plan: kept" if kept else f"plan: {conv_label(conv)}",
                    marker_color="#7a8088" if kept else conv_color(conv),
                    text=["" if kept else "/".join(str(v) for v in c["hparams"].values()) for c in mine],
                    textposition="outside", cliponaxis=False, textfont=dict(size=12),
                    customdata=[_ranks(c["hparams"]) for c in mine],
                    hovertemplate="%{x}<br>%{customdata}<br>%{y:,} " + metric + "<extra>%{fullData.name}</extra>")
    if uniform:
        by = {c["layer"]: c for c in uniform["layers"]}
        fig.add_bar(x=names, y=[by[n][metric] if n in by else None for n in names], name="uniform FALCON",
                    marker_color="rgba(0,0,0,0)", marker_line=dict(color="#444", width=1.5), offsetgroup="uniform")
    fig.update_layout(**BASE_LAYOUT, barmode="group", height=440, uniformtext=dict(minsize=12, mode="show"),
                      yaxis=dict(type="log", title=("MACs" if metric == "macs" else "parameters") + " per layer"),
                      xaxis=dict(title=None, tickangle=-30))
    fig.update_layout(margin=dict(l=10, r=10, t=100, b=10))  # room for a legend of two or three rows
    return fig


def plan_summary(plan: dict, uniform: dict | None) -> list[dict[str, Any]]:
    """The totals of the plan and of the uniform answer, as rows."""
    rows = [{"": "original", "params": plan["original"]["params"], "MACs": plan["original"]["macs"],
             "CR": 1.0, "CRR": 1.0, "predicted error": 0.0}]
    for name, p in (("plan", plan), ("uniform FALCON", uniform)):
        if p:
            rows.append({"": name, "params": p["after"]["params"], "MACs": p["after"]["macs"],
                         "CR": p["compression_rate"], "CRR": p["computation_reduction_rate"],
                         "predicted error": p["objective"]})
    return rows
