"""The budget chart of Model sizing: a rate (CRR or CR) by rank, the target, and the rank that meets it."""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from falcon.convtypes import get_conv_type
from falcon.views.figures import FRONTIER, _layout, conv_color


def budget_figure(budget: dict[str, Any]) -> go.Figure:
    """``budget``: :meth:`falcon.sizing.Budget.as_dict` with a ``curve`` (``size_for_target(..., whole_curve=True)``)."""
    metric, target, rank = budget["metric"], budget["target"], budget["rank"]
    what = "MACs" if metric == "computation_reduction_rate" else "parameters"
    short = "CRR" if metric == "computation_reduction_rate" else "CR"
    ct = get_conv_type(budget["conv"])
    ranks = [r["rank"] for r in budget["curve"]]
    rates = [r[metric] for r in budget["curve"]]
    color = conv_color(budget["conv"])
    fig = go.Figure()
    fig.add_scatter(x=ranks, y=rates, mode="lines+markers", name=f"{ct.label} ({short})", line=dict(color=color),
                    marker=dict(size=[13 if k == rank else 7 for k in ranks], color=color,
                                line=dict(width=[2 if k == rank else 0 for k in ranks], color=FRONTIER)),
                    hovertemplate=f"rank %{{x}}: %{{y:.3f}}× fewer {what}<extra></extra>")
    fig.add_hline(y=target, line=dict(color=FRONTIER, dash="dash"),
                  annotation=dict(text=f"target {target:g}×", xanchor="right", x=1))
    if budget.get("ceiling") and budget["ceiling"] != float("inf") and budget["ceiling"] < 3 * max(rates + [target]):
        fig.add_hline(y=budget["ceiling"], line=dict(color="#b0b0b0", dash="dot"),
                      annotation=dict(text=f"ceiling {budget['ceiling']:.2f}× (replaced convs free)", xanchor="left", x=0))
    annotations = []
    if rank is not None:
        y = rates[ranks.index(rank)]
        annotations.append(dict(x=rank, y=y, text=f"rank {rank}: {y:.2f}×", showarrow=True, arrowhead=2, ax=40, ay=-35))
    title = (f"{short} by rank: rank {rank} is the highest that meets {target:g}×" if rank is not None
             else f"{short} by rank: no rank meets {target:g}×")
    return _layout(fig, title, height=340, annotations=annotations,
                   xaxis=dict(title="rank (uniform)", **({"dtick": 1} if max(ranks, default=1) <= 16 else
                                                          {"type": "log"} if max(ranks, default=1) > 64 else {})),
                   yaxis=dict(title=f"{short}: × fewer {what}"),
                   showlegend=False)
