"""Figures and tables of a whole-model latency measurement (:func:`falcon.modelbench.measure_model`),
from its plain-data form (``ModelBenchResult.as_dict()``): where the time goes, before and after, and each
replaced layer's measured speedup beside its MAC ratio."""
from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from falcon.modelbench import CATEGORIES, CATEGORY_LABELS

#: one colour per part of the time (stacked bars)
CATEGORY_COLORS = {"replaced_convs": "#ef553b", "unreplaced_convs": "#636efa", "bn_act_pool": "#00cc96",
                   "classifier": "#ab63fa", "other": "#b6b6b6"}


def result_frame(result: dict[str, Any]) -> pd.DataFrame:
    """The timings table: one row per (model, runtime, layout), numbers as numbers (blank where none)."""
    rows = []
    orig = {(t["runtime"], t["layout"]): t["median_ms"] for t in result["timings"]
            if t["role"] == "original" and t.get("median_ms")}
    for t in result["timings"]:
        base = orig.get((t["runtime"], t["layout"]))
        speed = base / t["median_ms"] if base and t.get("median_ms") and t["role"] == "converted" else None
        rows.append({"model": t["model"], "runtime": t["runtime"], "layout": t["layout"],
                     "median_ms": t.get("median_ms"), "iqr_ms": t.get("iqr_ms"), "speedup": speed,
                     "rel_error": t.get("relative_error"),
                     "status": t["status"] if not t.get("message") else f"{t['status']}: {t['message']}"})
    return pd.DataFrame(rows, columns=["model", "runtime", "layout", "median_ms", "iqr_ms", "speedup", "rel_error",
                                       "status"])


def breakdown_parts(conversion: dict[str, Any]) -> pd.DataFrame:
    """Milliseconds per pass in each part, original and converted (the profile of the eager run)."""
    b = conversion.get("breakdown")
    if not b:
        return pd.DataFrame(columns=["part", "original", "converted"])
    return pd.DataFrame([{"part": CATEGORY_LABELS[c], "key": c, "original": b["original_ms"][c],
                          "converted": b["converted_ms"][c]} for c in CATEGORIES])


def breakdown_figure(conversion: dict[str, Any]) -> go.Figure:
    """Two stacked bars (original, converted): the eager profile's ms per pass by part, with each bar's sum
    of parts and the timed median (diamond) beside it."""
    b = conversion.get("breakdown") or {}
    label = conversion.get("label", "converted")
    fig = go.Figure()
    bars = ["original", label]
    for c in CATEGORIES:
        values = [b.get("original_ms", {}).get(c, 0.0), b.get("converted_ms", {}).get(c, 0.0)]
        fig.add_bar(y=bars, x=values, name=CATEGORY_LABELS[c], orientation="h", marker_color=CATEGORY_COLORS[c],
                    hovertemplate="%{y}: " + CATEGORY_LABELS[c] + " %{x:.3f} ms<extra></extra>")
    sums = [b.get("original_total_ms"), b.get("converted_total_ms")]
    timed = [b.get("original_timed_ms"), b.get("converted_timed_ms")]
    fig.add_scatter(y=bars, x=timed, mode="markers", name="timed median", marker=dict(symbol="diamond", size=12,
                    color="black"), hovertemplate="%{y}: timed median %{x:.3f} ms<extra></extra>")
    for y, total in zip(bars, sums):
        if total:
            fig.add_annotation(y=y, x=total, text=f" {total:.2f} ms", showarrow=False, xanchor="left")
    layout = {"contiguous": "NCHW", "channels_last": "NHWC"}.get(b.get("layout"), b.get("layout") or "")
    fig.update_layout(barmode="stack", height=300, margin=dict(l=10, r=60, t=50, b=40),
                      title=f"Where the time goes, eager {layout} (ms per pass)",
                      xaxis_title="ms per pass (profiled)", legend=dict(orientation="h", y=-0.3),
                      yaxis=dict(autorange="reversed"))
    return fig


def layer_speedup_figure(conversion: dict[str, Any]) -> go.Figure:
    """Each replaced layer: measured speedup (bars) beside its MAC ratio (markers), in model order."""
    layers = (conversion.get("breakdown") or {}).get("layers") or []
    names = [lt["name"] for lt in layers]
    fig = go.Figure()
    fig.add_bar(x=names, y=[lt.get("speedup") for lt in layers], name="measured speedup (eager)",
                marker_color="#ef553b", hovertemplate="%{x}: %{y:.2f}× measured<extra></extra>")
    fig.add_scatter(x=names, y=[lt.get("mac_ratio") for lt in layers], mode="markers", name="MAC ratio",
                    marker=dict(symbol="line-ew-open", size=22, line=dict(width=3), color="black"),
                    hovertemplate="%{x}: %{y:.2f}× fewer MACs<extra></extra>")
    fig.add_hline(y=1, line_dash="dot", line_color="#888")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=50, b=40), title="Replaced layers: measured vs MACs",
                      yaxis_title="× faster / × fewer MACs", legend=dict(orientation="h", y=-0.35))
    return fig
