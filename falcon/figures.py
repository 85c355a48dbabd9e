"""Plotly figure builders: pure functions from data to a ``go.Figure`` (no Streamlit, no torch).

Every conv type keeps the colour its registry entry gives it (:data:`falcon.convtypes.CONV_TYPES`), in
every figure. Arrays are numpy arrays (or anything ``np.asarray`` takes); tables are DataFrames or lists
of dicts with the columns each builder names.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from falcon.convtypes import CONV_TYPES

#: One diverging scale for every kernel heatmap (zero is white).
DIVERGING = "RdBu_r"
NEUTRAL = "#9aa0a6"  # layers that are not conv blocks (linear, other convs)
FRONTIER = "#444444"

#: Marker symbol per conv type in the accuracy plots (standard: a star; ours: open symbols).
SYMBOLS = {"standard": "star", "falcon": "circle", "dsconv": "diamond", "mobilev2": "triangle-up",
           "shuffle": "square"}

BASE_LAYOUT = dict(template="plotly_white", margin=dict(l=10, r=10, t=50, b=10),
                   font=dict(size=13), legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))


def conv_color(conv: str) -> str:
    """The registry colour of a conv type (``falcon-fused`` shares FALCON's); neutral grey otherwise."""
    base = "falcon" if conv == "falcon-fused" else conv
    return CONV_TYPES[base].color if base in CONV_TYPES else NEUTRAL


def conv_label(conv: str) -> str:
    if conv == "falcon-fused":
        return "FALCON fused"
    return CONV_TYPES[conv].label if conv in CONV_TYPES else conv


def _layout(fig: go.Figure, title: str | None = None, height: int | None = None, **kw: Any) -> go.Figure:
    fig.update_layout(**BASE_LAYOUT)
    if title:
        fig.update_layout(title=dict(text=title, x=0, xanchor="left"))
        fig.update_layout(margin=dict(t=80))
    if height:
        fig.update_layout(height=height)
    fig.update_layout(**kw)
    return fig


# ----------------------------------------------------------------------------------------------
# kernels as pictures


def tile(kernels: np.ndarray, gap: int = 1) -> np.ndarray:
    """A 4-d kernel ``(rows, cols, D, D)`` as one 2-d image of D×D tiles separated by NaN gaps.

    A 3-d array ``(C, D, D)`` is one column of C tiles; a 2-d array is returned as is.
    """
    k = np.asarray(kernels, dtype=float)
    if k.ndim == 2:
        return k
    if k.ndim == 3:
        k = k[:, None]
    if k.ndim != 4:
        raise ValueError(f"expected a 2-, 3- or 4-d array, got shape {k.shape}")
    r, c, dh, dw = k.shape
    out = np.full((r * (dh + gap) - gap, c * (dw + gap) - gap), np.nan)
    for i in range(r):
        for j in range(c):
            out[i * (dh + gap): i * (dh + gap) + dh, j * (dw + gap): j * (dw + gap) + dw] = k[i, j]
    return out


def symmetric_range(*arrays: np.ndarray) -> float:
    """max |x| over all finite entries (1 when there are none or all are zero): one scale for all panels."""
    vals = [np.nanmax(np.abs(np.asarray(a, dtype=float))) for a in arrays if np.size(a) and np.isfinite(np.asarray(a, dtype=float)).any()]
    top = max(vals) if vals else 0.0
    return float(top) if top > 0 else 1.0


def _heat(z: np.ndarray, zmax: float, show_scale: bool = False, name: str = "",
          hover: str = "row %{y}, col %{x}<br>value %{z:.4g}<extra></extra>") -> go.Heatmap:
    return go.Heatmap(z=z, zmin=-zmax, zmax=zmax, zmid=0, colorscale=DIVERGING, showscale=show_scale,
                      hoverongaps=False, name=name, hovertemplate=hover,
                      colorbar=dict(thickness=12, len=0.8) if show_scale else None)


def _image_axes(fig: go.Figure, rows: int, cols: int) -> None:
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, row=r, col=c)
            fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed",
                             scaleanchor=fig.get_subplot(r, c).xaxis.plotly_name.replace("axis", ""),
                             row=r, col=c)


def ehp_figure(falcon: dict[str, np.ndarray], dsconv: dict[str, np.ndarray]) -> go.Figure:
    """The EHP factorization of a small kernel, FALCON (top) and DSConv (bottom).

    Each dict holds ``P`` (N, M) pointwise, ``D`` (C, D, D) depthwise on the common axis (C = N for
    FALCON, M for DSConv) and ``K`` (N, M, D, D), the kernel they make. In ``K`` row n, column m is the
    D×D tile K[n, m]: FALCON scales output channel n's depthwise kernel by P[n, m] (rows share a
    depthwise kernel); DSConv scales input channel m's by P[n, m] (columns share one).
    """
    zmax = symmetric_range(falcon["P"], falcon["D"], falcon["K"], dsconv["P"], dsconv["D"], dsconv["K"])
    n, m = np.asarray(falcon["P"]).shape
    fig = make_subplots(
        rows=2, cols=3, column_widths=[0.3, 0.2, 0.5], horizontal_spacing=0.05, vertical_spacing=0.12,
        subplot_titles=(
            f"pointwise P ({n}×{m}: out × in)", f"depthwise D (one per output channel)",
            "kernel K[n,m] = P[n,m] · D[n]  (rows share D)",
            f"pointwise P ({n}×{m}: out × in)", f"depthwise D (one per input channel)",
            "kernel K[n,m] = P[n,m] · D[m]  (columns share D)",
        ),
    )
    hover_p = "out %{y}, in %{x}<br>P = %{z:.3f}<extra></extra>"
    fig.add_trace(_heat(np.asarray(falcon["P"]), zmax, hover=hover_p), 1, 1)
    fig.add_trace(_heat(tile(falcon["D"]), zmax), 1, 2)
    fig.add_trace(_heat(tile(falcon["K"]), zmax, show_scale=True), 1, 3)
    fig.add_trace(_heat(np.asarray(dsconv["P"]), zmax, hover=hover_p), 2, 1)
    d_ds = np.asarray(dsconv["D"])
    fig.add_trace(_heat(tile(d_ds[None]), zmax), 2, 2)  # one row of M tiles
    fig.add_trace(_heat(tile(dsconv["K"]), zmax), 2, 3)
    _image_axes(fig, 2, 3)
    fig.add_annotation(text="<b>FALCON</b>: common axis = output channel (pointwise first, then depthwise on N)",
                       xref="paper", yref="paper", x=0, y=1.10, showarrow=False, xanchor="left",
                       font=dict(color=conv_color("falcon"), size=14))
    fig.add_annotation(text="<b>DSConv</b>: common axis = input channel (depthwise on M first, then pointwise)",
                       xref="paper", yref="paper", x=0, y=0.49, showarrow=False, xanchor="left",
                       font=dict(color=conv_color("dsconv"), size=14))
    fig.update_annotations(font_size=12, selector=dict(xref="x domain"))
    return _layout(fig, height=620, margin=dict(l=10, r=10, t=90, b=10))


def kernel_figure(kernel: np.ndarray, kernel_hat: np.ndarray, max_out: int = 8, max_in: int = 8,
                  title: str | None = None) -> go.Figure:
    """Original kernel, its reconstruction and the residual, ``(N, M, D, D)`` cropped to the first
    ``max_out`` output × ``max_in`` input channels, on one diverging colour scale."""
    k = np.asarray(kernel, dtype=float)[:max_out, :max_in]
    kh = np.asarray(kernel_hat, dtype=float)[:max_out, :max_in]
    if k.shape != kh.shape:
        raise ValueError(f"kernel {k.shape} and reconstruction {kh.shape} differ in shape")
    zmax = symmetric_range(k, kh)
    n, m = k.shape[:2]
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.03,
                        subplot_titles=("original K", "reconstruction K̂ (EHP)", "residual K − K̂"))
    hover = "value %{z:.4g}<extra></extra>"
    fig.add_trace(_heat(tile(k), zmax, hover=hover), 1, 1)
    fig.add_trace(_heat(tile(kh), zmax, hover=hover), 1, 2)
    fig.add_trace(_heat(tile(k - kh), zmax, show_scale=True, hover=hover), 1, 3)
    _image_axes(fig, 1, 3)
    t = title or f"first {n} output (rows) × {m} input (columns) channels, one colour scale (±{zmax:.3g})"
    return _layout(fig, title=t, height=380)


# ----------------------------------------------------------------------------------------------
# layer calculator


def reductions_figure(rows: Sequence[dict]) -> go.Figure:
    """CR (params) and CRR (MACs) of each conv type, coloured by type; the dashed line is 1× (no saving).

    ``rows``: dicts with ``conv``, ``label``, ``compression_rate``, ``computation_reduction_rate``.
    """
    rows = [r for r in rows if r["conv"] != "standard"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("compression rate CR (params)",
                                                        "computation reduction rate CRR (MACs)"),
                        horizontal_spacing=0.08)
    for col, key in ((1, "compression_rate"), (2, "computation_reduction_rate")):
        fig.add_trace(go.Bar(
            x=[r["label"] for r in rows], y=[r[key] for r in rows],
            marker_color=[conv_color(r["conv"]) for r in rows],
            text=[f"{r[key]:.2f}×" for r in rows], textposition="outside", cliponaxis=False,
            hovertemplate="%{x}: %{y:.3f}×<extra></extra>", showlegend=False), 1, col)
        fig.add_hline(y=1, line_dash="dash", line_color=FRONTIER, row=1, col=col)
        top = max([r[key] for r in rows] + [1.0])
        fig.update_yaxes(title_text="× fewer than standard", range=[0, top * 1.18], row=1, col=col)
    return _layout(fig, height=380)


def rank_sweep_figure(sweeps: dict[str, pd.DataFrame], break_even: dict[str, dict[str, int]] | None = None) -> go.Figure:
    """CR and CRR of rank-k conv types against k; below the dashed 1× line a rank no longer saves.

    ``sweeps``: conv type → frame with ``rank``, ``compression_rate``, ``computation_reduction_rate``.
    ``break_even``: conv type → {"params": k, "macs": k} (marked with a vertical dotted line).
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("CR (params) by rank", "CRR (MACs) by rank"),
                        horizontal_spacing=0.08)
    for col, (key, by) in enumerate((("compression_rate", "params"), ("computation_reduction_rate", "macs")), 1):
        for conv, df in sweeps.items():
            fig.add_trace(go.Scatter(x=df["rank"], y=df[key], mode="lines+markers", name=conv_label(conv),
                                     line=dict(color=conv_color(conv)), legendgroup=conv, showlegend=col == 1,
                                     hovertemplate=f"{conv_label(conv)} k=%{{x}}: %{{y:.3f}}×<extra></extra>"),
                          1, col)
            if break_even and conv in break_even:
                k = break_even[conv][by]
                fig.add_vline(x=k, line_dash="dot", line_color=conv_color(conv), row=1, col=col,
                              annotation_text=f"k={k}", annotation_position="top right",
                              annotation_font_color=conv_color(conv))
        fig.add_hline(y=1, line_dash="dash", line_color=FRONTIER, row=1, col=col)
        fig.update_yaxes(type="log", title_text="× fewer than standard", row=1, col=col)
        fig.update_xaxes(title_text="rank k", row=1, col=col)
    return _layout(fig, height=360)


def speedup_figure(results: Sequence[dict]) -> go.Figure:
    """Measured speedup over the standard conv (per memory layout) beside the theoretical MAC ratio.

    ``results``: dicts with ``conv``, ``label``, ``memory_format``, ``speedup``, ``theoretical_speedup``
    (as :class:`falcon.bench.BenchResult` gives them; the standard conv's own rows are skipped).
    """
    rows = [r for r in results if r["conv"] != "standard" and r.get("speedup") is not None]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig = go.Figure()
    theo = {r["label"]: r["theoretical_speedup"] for r in rows}
    fig.add_trace(go.Bar(x=labels, y=[theo[lab] for lab in labels], name="theoretical (MAC ratio)",
                         marker=dict(color="rgba(0,0,0,0)", line=dict(color=FRONTIER, width=2)),
                         text=[f"{theo[lab]:.2f}×" for lab in labels], textposition="outside",
                         hovertemplate="%{x}<br>theoretical %{y:.2f}×<extra></extra>"))
    patterns = {"contiguous": "", "channels_last": "/"}
    for layout in dict.fromkeys(r["memory_format"] for r in rows):
        sel = {r["label"]: r for r in rows if r["memory_format"] == layout}
        fig.add_trace(go.Bar(
            x=labels, y=[sel[lab]["speedup"] if lab in sel else None for lab in labels],
            name=f"measured, {layout}",
            marker=dict(color=[conv_color(sel[lab]["conv"]) if lab in sel else NEUTRAL for lab in labels],
                        pattern=dict(shape=patterns.get(layout, "."), fillmode="overlay")),
            text=[f"{sel[lab]['speedup']:.2f}×" if lab in sel else "" for lab in labels], textposition="outside",
            hovertemplate=f"%{{x}}<br>measured ({layout}) %{{y:.2f}}×<extra></extra>"))
    fig.add_hline(y=1, line_dash="dash", line_color=FRONTIER)
    fig.update_yaxes(title_text="speedup over the standard conv (same layout)")
    return _layout(fig, height=400, barmode="group")


# ----------------------------------------------------------------------------------------------
# model sizing


def per_layer_figure(layers: pd.DataFrame | Sequence[dict], standard: pd.DataFrame | Sequence[dict] | None = None,
                     what: str = "macs") -> go.Figure:
    """``what`` (params or macs) per layer that has any, coloured by conv type; the standard model's
    value for the same layer as a grey outline when ``standard`` is given.

    ``layers``/``standard``: per-layer tables (:meth:`falcon.counting.ModelCount.table`) with ``name``,
    ``kind``, ``params``, ``macs``.
    """
    df = pd.DataFrame(layers)
    df = df[df[what] > 0]
    fig = go.Figure()
    if standard is not None:
        std = pd.DataFrame(standard).set_index("name")[what]
        fig.add_trace(go.Bar(x=df["name"], y=[std.get(n, np.nan) for n in df["name"]], name="standard model",
                             marker=dict(color="rgba(0,0,0,0)", line=dict(color=NEUTRAL, width=1.5)),
                             hovertemplate="%{x}<br>standard: %{y:,}<extra></extra>"))
    for kind in dict.fromkeys(df["kind"]):
        sel = df["kind"] == kind
        fig.add_trace(go.Bar(x=df.loc[sel, "name"], y=df.loc[sel, what], name=conv_label(kind),
                             marker_color=conv_color(kind),
                             customdata=df.loc[sel, ["shape"]].to_numpy() if "shape" in df else None,
                             hovertemplate="%{x} (%{customdata[0]})<br>%{y:,}<extra>" + conv_label(kind) + "</extra>"))
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(categoryorder="array", categoryarray=list(df["name"]), tickangle=-60)
    fig.update_yaxes(title_text="MACs per image" if what == "macs" else "parameters")
    return _layout(fig, height=420)


# ----------------------------------------------------------------------------------------------
# EHP fit


def loss_figure(steps: Sequence[int], relative_errors: Sequence[float], optimum: float | None = None,
                conv: str = "falcon", title: str | None = None) -> go.Figure:
    """Relative error ‖K − K̂‖/‖K‖ of gradient descent against the step, with the SVD optimum as a line."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(steps), y=list(relative_errors), mode="lines", name="gradient descent",
                             line=dict(color=conv_color(conv), width=2),
                             hovertemplate="step %{x}<br>relative error %{y:.5f}<extra></extra>"))
    if optimum is not None:
        fig.add_hline(y=max(optimum, 1e-12), line_dash="dash", line_color=FRONTIER,
                      annotation_text=f"SVD optimum {optimum:.4f}", annotation_position="top right")
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="relative error ‖K − K̂‖ / ‖K‖", type="log")
    return _layout(fig, title=title, height=380)


def energy_figure(energy: np.ndarray, rank: int | None = None, conv: str = "falcon") -> go.Figure:
    """Cumulative singular-value energy per channel against the rank: median, and the band from the
    worst to the best channel; a dotted line at the chosen rank. ``energy``: ``(C, q)``."""
    e = np.asarray(energy, dtype=float)
    ranks = np.arange(1, e.shape[1] + 1)
    lo, med, hi = e.min(axis=0), np.median(e, axis=0), e.max(axis=0)
    color = conv_color(conv)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ranks, y=hi, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=ranks, y=lo, mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor="rgba(120,120,120,0.25)", name="worst … best channel",
                             hovertemplate="rank %{x}: worst channel %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=ranks, y=med, mode="lines+markers", name="median channel", line=dict(color=color),
                             hovertemplate="rank %{x}: median %{y:.3f}<extra></extra>"))
    if rank is not None:
        fig.add_vline(x=rank, line_dash="dot", line_color=FRONTIER, annotation_text=f"k={rank}")
    fig.update_xaxes(title_text="rank k", dtick=1 if len(ranks) <= 16 else None)
    fig.update_yaxes(title_text="energy kept ‖K̂_c‖² / ‖K_c‖²", range=[0, 1.05])
    return _layout(fig, height=340)


def error_by_rank_figure(errors: Sequence[float], rank: int | None = None, conv: str = "falcon") -> go.Figure:
    """The optimal (SVD) relative error at each rank 1 … full rank."""
    ranks = list(range(1, len(errors) + 1))
    fig = go.Figure(go.Bar(x=ranks, y=list(errors), marker_color=[conv_color(conv) if k == rank else NEUTRAL for k in ranks],
                           hovertemplate="rank %{x}: %{y:.4f}<extra></extra>"))
    fig.update_xaxes(title_text="rank k", dtick=1 if len(ranks) <= 16 else None)
    fig.update_yaxes(title_text="optimal relative error")
    return _layout(fig, height=340)


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


def _panel_title(model: str, dataset: str) -> str:
    names = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN", "imagenet": "ImageNet", "digits": "digits"}
    return f"{model} · {names.get(dataset, dataset)}"


def accuracy_figure(paper: pd.DataFrame, own: pd.DataFrame | None = None, x: str = "params_m", log_x: bool = False,
                    y: str = "top1", panels: Sequence[tuple[str, str]] | None = None, cols: int = 4) -> go.Figure:
    """Accuracy against parameters or MACs, one panel per (model, dataset).

    ``paper``: the thesis frame (:func:`falcon.paper.load_paper_results`); ``own``: the project's runs in
    the same columns (drawn with open markers, "ours"). FALCON ranks are joined by a line; each
    competitor has its colour and symbol, the standard conv a star; the dashed line is the Pareto
    frontier (cheaper and more accurate than every point above and to its right).
    """
    frames = [paper.assign(source="paper")]
    if own is not None and len(own):
        frames.append(own.assign(source="ours"))
    data = pd.concat(frames, ignore_index=True)
    data = data[np.isfinite(pd.to_numeric(data[x], errors="coerce")) & np.isfinite(pd.to_numeric(data[y], errors="coerce"))]
    if panels is None:
        panels = list(dict.fromkeys(zip(data["model"], data["dataset"])))
    n = max(1, len(panels))
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[_panel_title(*p) for p in panels],
                        horizontal_spacing=0.06, vertical_spacing=0.16 if rows > 1 else 0.1)
    shown: set[str] = set()
    xlabel = "parameters (M)" if x == "params_m" else "FLOPs = MACs (M)"
    for i, (model, dataset) in enumerate(panels):
        r, c = i // cols + 1, i % cols + 1
        d = data[(data["model"] == model) & (data["dataset"] == dataset)]
        if d.empty:
            continue
        front = d[pareto_front(d[x], d[y])].sort_values(x)
        if len(front):
            fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines", line=dict(color=FRONTIER, dash="dash", shape="hv", width=1),
                                     name="Pareto frontier", legendgroup="frontier", showlegend="frontier" not in shown,
                                     hoverinfo="skip"), r, c)
            shown.add("frontier")
        for source in ("paper", "ours"):
            ds = d[d["source"] == source]
            for method in dict.fromkeys(ds["method"]):
                m = ds[ds["method"] == method]
                if method == "falcon":
                    m = m.sort_values("rank")
                key = f"{source}:{method}"
                name = conv_label(method) + (" (ours)" if source == "ours" else "")
                if method == "falcon" and source == "paper":
                    name = "FALCON rank 1–3"
                symbol = SYMBOLS.get(method, "circle") + ("-open" if source == "ours" else "")
                ranks = [f"k={int(k)}" if pd.notna(k) else "" for k in m["rank"]] if "rank" in m else [""] * len(m)
                fig.add_trace(go.Scatter(
                    x=m[x], y=m[y], mode="lines+markers+text" if method == "falcon" else "markers",
                    text=ranks if method == "falcon" else None, textposition="top center",
                    textfont=dict(size=10, color=conv_color(method)),
                    line=dict(color=conv_color(method), width=2, dash="dot" if source == "ours" else "solid"),
                    marker=dict(symbol=symbol, size=14 if method == "standard" else 10, color=conv_color(method),
                                line=dict(width=1.5, color=conv_color(method) if source == "ours" else "white")),
                    name=name, legendgroup=key, showlegend=key not in shown,
                    customdata=np.stack([m["method"], ranks], axis=1) if len(m) else None,
                    hovertemplate=f"{name} %{{customdata[1]}}<br>{xlabel}: %{{x:,.2f}}<br>top-1: %{{y:.2f}}%<extra>{source}</extra>",
                ), r, c)
                shown.add(key)
        fig.update_xaxes(type="log" if log_x else "linear", title_text=xlabel, row=r, col=c)
        fig.update_yaxes(title_text="top-1 accuracy (%)" if c == 1 else None, row=r, col=c)
    return _layout(fig, height=330 * rows + 90, margin=dict(l=10, r=10, t=100, b=10),
                   legend=dict(orientation="h", yanchor="bottom", y=1.0 + 0.12 / rows, x=0))
