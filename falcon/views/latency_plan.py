"""A measured-latency plan (:mod:`falcon.latency_plan`, its ``as_dict()``) as a per-layer table and figure, and its
totals: the original model, the plan's prediction and the planned model as measured."""
from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from falcon.views.figures import BASE_LAYOUT, conv_color, conv_label
from falcon.views.plan import _ranks


def latency_rows(plan: dict) -> list[tuple[dict, dict]]:
    """(layer choice, its latency row) per planned layer."""
    return list(zip(plan["layers"], plan["latency"]["layers"]))


def latency_plan_table(plan: dict) -> pd.DataFrame:
    """One row per planned layer: the type and ranks chosen, the original conv's and the chosen block's time alone
    (ms, this machine), their MACs and the predicted error."""
    rows = []
    for c, t in latency_rows(plan):
        rows.append({"layer": c["layer"], "type": "kept" if c["conv"] == "standard" else conv_label(c["conv"]),
                     "ranks": _ranks(c["hparams"]), "ms before": t["keep_ms"], "ms plan": t["plan_ms"],
                     "MACs before": c["original_macs"], "MACs plan": c["macs"], "error": c["error"]})
    return pd.DataFrame(rows)


def latency_plan_figure(plan: dict) -> go.Figure:
    """Grouped bars per layer: the original conv's time alone and the chosen block's (coloured by its type, its
    ranks written over the bar), in ms on this machine."""
    rows = latency_rows(plan)
    fig = go.Figure()
    fig.add_bar(x=[c["layer"] for c, _ in rows], y=[t["keep_ms"] for _, t in rows], name="original conv",
                marker_color="#c8ccd2", offsetgroup="original", hovertemplate="%{x}<br>%{y:.4g} ms<extra>original</extra>")
    for conv in dict.fromkeys(c["conv"] for c, _ in rows):
        mine = [(c, t) for c, t in rows if c["conv"] == conv]
        kept = conv == "standard"
        fig.add_bar(x=[c["layer"] for c, _ in mine], y=[t["plan_ms"] for _, t in mine], offsetgroup="plan",
                    name="plan: kept" if kept else f"plan: {conv_label(conv)}",
                    marker_color="#7a8088" if kept else conv_color(conv),
                    text=["" if kept else "/".join(str(v) for v in c["hparams"].values()) for c, _ in mine],
                    textposition="outside", cliponaxis=False, textfont=dict(size=12),
                    customdata=[_ranks(c["hparams"]) for c, _ in mine],
                    hovertemplate="%{x}<br>%{customdata}<br>%{y:.4g} ms<extra>%{fullData.name}</extra>")
    fig.update_layout(**BASE_LAYOUT, barmode="group", height=400, uniformtext=dict(minsize=12, mode="show"),
                      yaxis=dict(title="ms per call, timed alone", rangemode="tozero"),
                      xaxis=dict(title=None, tickangle=-30))
    fig.update_layout(margin=dict(l=10, r=10, t=80, b=10))
    return fig


def latency_summary(plan: dict) -> list[dict[str, Any]]:
    """The original model, the plan's prediction and (when checked) the planned model measured: ms, IQR, speedup
    over the original, MACs."""
    lat = plan["latency"]
    rows = [{"": "original (timed while planning)", "ms": lat["original_ms"], "IQR (ms)": None, "speedup": 1.0,
             "MACs": plan["original"]["macs"]},
            {"": "plan, predicted", "ms": lat["predicted_ms"], "IQR (ms)": None, "speedup": lat["predicted_speedup"],
             "MACs": plan["after"]["macs"]}]
    m = lat.get("measured")
    if m:
        rows += [{"": "original, measured", "ms": m["original_ms"], "IQR (ms)": m["original_iqr_ms"], "speedup": 1.0,
                  "MACs": plan["original"]["macs"]},
                 {"": "plan, measured", "ms": m["planned_ms"], "IQR (ms)": m["planned_iqr_ms"], "speedup": m["speedup"],
                  "MACs": plan["after"]["macs"]}]
    return rows
