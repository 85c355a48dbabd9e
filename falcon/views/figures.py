"""Plotly figure builders: pure functions from data to a ``go.Figure`` (no Streamlit, no torch).

Every conv type keeps the colour its registry entry gives it (:data:`falcon.convtypes.CONV_TYPES`), in
every figure. Arrays are numpy arrays (or anything ``np.asarray`` takes); tables are DataFrames or lists
of dicts with the columns each builder names.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from falcon.convtypes import FITTABLE
from falcon.paper import PAPER_RANKED
from falcon.views.tables import COST_AXES, accuracy_table, pareto_front  # noqa: F401 (pareto_front: re-exported)


#: One diverging scale for every kernel heatmap (zero is white).
DIVERGING = "RdBu_r"
NEUTRAL = "#9aa0a6"  # layers that are not conv blocks (linear, other convs)
FRONTIER = "#444444"


LOG_TICKS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
#: 1-2-5 ticks for log axes of millions of params/MACs (0.001 M … 500,000 M)
LOG_TICKS_WIDE = [m * 10.0 ** e for e in range(-3, 6) for m in (1, 2, 5)]


def _tick_text(v: float) -> str:
    return f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"


def _white_template() -> go.layout.Template:
    """plotly_white's look, trimmed to what these figures draw: its layout without the geo, polar,
    ternary and 3-D scene defaults, and its defaults for bar, scatter and heatmap traces only.

    Every figure validates (copies) its template when it is built and sends it to the browser: the
    whole plotly_white (24 trace types) is ~7 kB of JSON and ~25 ms of validation per figure; this
    one draws the same and costs about half."""
    white = pio.templates["plotly_white"]
    layout = white.layout.to_plotly_json()
    for key in ("geo", "polar", "ternary", "scene", "mapbox", "map"):
        layout.pop(key, None)
    return go.layout.Template(layout=layout, data={t: white.data[t] for t in ("bar", "scatter", "heatmap")})


TEMPLATE = _white_template()
BASE_LAYOUT = dict(template=TEMPLATE, margin=dict(l=10, r=10, t=50, b=10),
                   font=dict(size=13), legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))


def conv_color(conv: str) -> str:
    """The registry colour of a conv type (an inference form shares its type's); neutral grey otherwise."""
    from falcon.convtypes import parse_variant  # here: the overview draws before torch is imported
    from falcon.errors import FalconError

    try:
        return parse_variant(conv)[0].color
    except FalconError:
        return NEUTRAL


def conv_symbol(conv: str) -> str:
    """The registry's plot marker of a conv type (a circle for anything else)."""
    from falcon.convtypes import CONV_TYPES

    return CONV_TYPES[conv].symbol if conv in CONV_TYPES else "circle"


def conv_label(conv: str) -> str:
    from falcon.convtypes import variant_label
    from falcon.errors import FalconError

    try:
        return variant_label(conv)
    except FalconError:
        return conv


def _layout(fig: go.Figure, title: str | None = None, height: int | None = None,
            shapes: Sequence[dict] = (), annotations: Sequence[dict] = (), **kw: Any) -> go.Figure:
    """Apply the common layout in one update (each plotly layout update re-validates the figure)."""
    layout: dict[str, Any] = dict(BASE_LAYOUT)
    if title:
        layout["title"] = dict(text=title, x=0, xanchor="left")
        layout["margin"] = dict(BASE_LAYOUT["margin"], t=80)
    if height:
        layout["height"] = height
    if shapes:
        layout["shapes"] = list(fig.layout.shapes or ()) + list(shapes)
    if annotations:
        layout["annotations"] = list(fig.layout.annotations or ()) + list(annotations)
    layout.update(kw)
    fig.update_layout(**layout)
    return fig


#: the font dicts of a figure (layout, axes, legend, annotations, traces)
_FONT_KEYS = {"font", "textfont", "tickfont", "titlefont", "insidetextfont", "outsidetextfont"}
#: plotly's base font size when a figure sets none
PLOTLY_FONT_SIZE = 12


def _scale_font_sizes(node: Any, factor: float) -> Any:
    if isinstance(node, list):
        return [_scale_font_sizes(v, factor) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in _FONT_KEYS and isinstance(v, dict) and isinstance(v.get("size"), (int, float)):
            v = {**v, "size": v["size"] * factor}
        out[k] = v if k == "template" else _scale_font_sizes(v, factor)
    return out


def scale_fonts(fig: go.Figure, factor: float) -> go.Figure:
    """A copy of ``fig`` with every font size (the base font, titles, axes, legend, annotations, trace text) times
    ``factor``: the presenter mode's larger chart text. The figure itself is not changed."""
    d = fig.to_plotly_json()
    layout = _scale_font_sizes(d["layout"], factor)
    font = layout.setdefault("font", {})
    if "size" not in font:
        font["size"] = PLOTLY_FONT_SIZE * factor
    return go.Figure(data=_scale_font_sizes(d["data"], factor), layout=layout)


def _axis_ref(fig: go.Figure, row: int, col: int) -> tuple[str, str]:
    """("x2", "y2")-style references of a subplot (("x", "y") for a plain figure)."""
    if not getattr(fig, "_grid_ref", None):
        return "x", "y"
    sub = fig.get_subplot(row, col)
    return sub.xaxis.plotly_name.replace("axis", ""), sub.yaxis.plotly_name.replace("axis", "")


def grid(rows: int, cols: int, titles: Sequence[str] = (), hspace: float = 0.06, vspace: float = 0.12) -> dict:
    """The layout of a rows × cols grid of panels (what ``make_subplots`` builds, without its cost):
    axes ``x``/``y``, ``x2``/``y2``, … row by row, and the titles above the panels."""
    layout: dict[str, Any] = {"annotations": []}
    w = (1 - hspace * (cols - 1)) / cols
    h = (1 - vspace * (rows - 1)) / rows
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        n = "" if i == 0 else str(i + 1)
        x0, y1 = c * (w + hspace), 1 - r * (h + vspace)
        layout[f"xaxis{n}"] = dict(domain=[max(x0, 0.0), min(x0 + w, 1.0)], anchor=f"y{n}")
        layout[f"yaxis{n}"] = dict(domain=[max(y1 - h, 0.0), min(y1, 1.0)], anchor=f"x{n}")
        if i < len(titles):
            layout["annotations"].append(dict(text=titles[i], x=x0 + w / 2, y=y1, xref="paper", yref="paper",
                                              xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=14)))
    return layout


def hline(fig: go.Figure, y: float, row: int = 1, col: int = 1, color: str = FRONTIER, dash: str = "dash",
          text: str | None = None) -> tuple[list[dict], list[dict]]:
    """A horizontal line across one subplot (and an optional label), as layout dicts to add in one go."""
    x, yy = _axis_ref(fig, row, col)
    shape = dict(type="line", xref=f"{x} domain", yref=yy, x0=0, x1=1, y0=y, y1=y,
                 line=dict(color=color, dash=dash, width=1.5))
    notes = [dict(text=text, xref=f"{x} domain", yref=yy, x=1, y=y, xanchor="right", yanchor="bottom",
                  showarrow=False, font=dict(color=color, size=12))] if text else []
    return [shape], notes


def vline(fig: go.Figure, x: float, row: int = 1, col: int = 1, color: str = FRONTIER, dash: str = "dot",
          text: str | None = None) -> tuple[list[dict], list[dict]]:
    """A vertical line across one subplot (and an optional label at its top)."""
    xx, y = _axis_ref(fig, row, col)
    shape = dict(type="line", xref=xx, yref=f"{y} domain", x0=x, x1=x, y0=0, y1=1,
                 line=dict(color=color, dash=dash, width=1.5))
    notes = [dict(text=text, xref=xx, yref=f"{y} domain", x=x, y=1, xanchor="left", yanchor="top",
                  showarrow=False, font=dict(color=color, size=12))] if text else []
    return [shape], notes


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


def _image_axes(fig: go.Figure, rows: int, cols: int) -> dict[str, dict]:
    """Layout entries that make every subplot an image: no ticks or grid, square cells, row 0 on top."""
    axes = {}
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            x, y = _axis_ref(fig, r, c)
            plain = dict(showticklabels=False, showgrid=False, zeroline=False)
            axes[x.replace("x", "xaxis")] = plain
            axes[y.replace("y", "yaxis")] = dict(plain, autorange="reversed", scaleanchor=x)
    return axes


def ehp_figure(falcon: dict[str, np.ndarray], dsconv: dict[str, np.ndarray]) -> go.Figure:
    """The EHP factorization of a small kernel, FALCON (top) and DSConv (bottom).

    Each dict holds ``P`` (N, M) pointwise, ``D`` (C, D, D) depthwise on the common axis (C = N for
    FALCON, M for DSConv) and ``K`` (N, M, D, D), the kernel they make. Right panels: K as an N × M grid
    of D×D tiles (row n = output channel, column m = input channel), with the depthwise kernels beside
    it: FALCON's D[n] at the left of row n (every tile of the row is D[n] scaled by P[n, m]), DSConv's
    D[m] above column m (every tile of the column is D[m] scaled by P[n, m]).
    """
    zmax = symmetric_range(falcon["P"], falcon["D"], falcon["K"], dsconv["P"], dsconv["D"], dsconv["K"])
    n, m = np.asarray(falcon["P"]).shape
    d = np.asarray(falcon["K"]).shape[-1]
    k_f, k_d = tile(falcon["K"]), tile(dsconv["K"])
    left = np.hstack([tile(falcon["D"]), np.full((k_f.shape[0], 2), np.nan), k_f])  # D[n] | K row n
    top = np.vstack([tile(np.asarray(dsconv["D"])[None]), np.full((2, k_d.shape[1]), np.nan), k_d])  # D[m] over column m
    fig = make_subplots(
        rows=2, cols=2, column_widths=[0.3, 0.7], horizontal_spacing=0.06, vertical_spacing=0.16,
        subplot_titles=(
            f"pointwise P ({n}×{m}: output × input)", "D[n] │ kernel K[n, m] = P[n, m] · D[n]",
            f"pointwise P ({n}×{m}: output × input)", "D[m] above │ kernel K[n, m] = P[n, m] · D[m]",
        ),
    )
    hover_p = "output %{y}, input %{x}<br>P = %{z:.3f}<extra></extra>"
    hover = "%{z:.3f}<extra></extra>"
    fig.add_trace(_heat(np.asarray(falcon["P"]), zmax, hover=hover_p), 1, 1)
    fig.add_trace(_heat(left, zmax, show_scale=True, hover=hover), 1, 2)
    fig.add_trace(_heat(np.asarray(dsconv["P"]), zmax, hover=hover_p), 2, 1)
    fig.add_trace(_heat(top, zmax, hover=hover), 2, 2)
    for a in fig.layout.annotations:  # subplot titles
        a.font = dict(size=12)
    notes = [
        dict(text="<b>FALCON</b>: common axis = output channel (pointwise M→N first, then depthwise on N);<br>"
                  "each row of K is one depthwise kernel D[n], scaled",
             xref="paper", yref="paper", x=0, y=1.12, showarrow=False, xanchor="left", align="left",
             font=dict(color=conv_color("falcon"), size=14)),
        dict(text="<b>DSConv</b>: common axis = input channel (depthwise on M first, then pointwise M→N);<br>"
                  "each column of K is one depthwise kernel D[m], scaled",
             xref="paper", yref="paper", x=0, y=0.5, showarrow=False, xanchor="left", align="left",
             font=dict(color=conv_color("dsconv"), size=14)),
    ]
    cells = n * (d + 1) + d + 2  # rows of the taller right panel (the DSConv one)
    return _layout(fig, height=200 + 2 * 18 * cells, annotations=notes,
                   margin=dict(l=10, r=10, t=90, b=10), **_image_axes(fig, 2, 2))


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
    t = title or f"first {n} output (rows) × {m} input (columns) channels, one colour scale (±{zmax:.3g})"
    return _layout(fig, title=t, height=380, **_image_axes(fig, 1, 3))


# ----------------------------------------------------------------------------------------------
# layer calculator (its reductions and break-even charts are SVG: falcon/svgcharts.py)


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
    opacity = {"contiguous": 0.5, "channels_last": 1.0}
    for layout in dict.fromkeys(r["memory_format"] for r in rows):
        sel = {r["label"]: r for r in rows if r["memory_format"] == layout}
        colors = [conv_color(sel[lab]["conv"]) if lab in sel else NEUTRAL for lab in labels]
        fig.add_trace(go.Bar(
            x=labels, y=[sel[lab]["speedup"] if lab in sel else None for lab in labels],
            name=f"measured, {layout}" + (" (light)" if opacity.get(layout, 1.0) < 1 else ""),
            marker=dict(color=colors, opacity=opacity.get(layout, 1.0), line=dict(color=colors, width=1.5)),
            text=[f"{sel[lab]['speedup']:.2f}×" if lab in sel else "" for lab in labels], textposition="outside",
            hovertemplate=f"%{{x}}<br>measured ({layout}) %{{y:.2f}}×<extra></extra>"))
    return _layout(fig, height=400, barmode="group", shapes=hline(fig, 1)[0],
                   yaxis=dict(title_text="speedup over the standard conv (same layout)"))


# ----------------------------------------------------------------------------------------------
# model sizing


def per_layer_figure(layers: pd.DataFrame | Sequence[dict], standard: pd.DataFrame | Sequence[dict] | None = None,
                     what: str = "macs", selected: str | None = None) -> go.Figure:
    """``what`` (params or macs) per layer that has any, coloured by conv type; the standard model's
    value for the same layer as a grey outline when ``standard`` is given.

    ``layers``/``standard``: per-layer tables (:meth:`falcon.counting.ModelCount.table`) with ``name``,
    ``kind``, ``params``, ``macs``. ``selected``: the name of a layer to point at (the one chosen in the table
    or on the EHP fit page).
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
    notes = []
    if selected is not None and selected in set(df["name"]):
        top = float(df.loc[df["name"] == selected, what].max())
        if standard is not None:
            top = max(top, float(np.nan_to_num(std.get(selected, 0.0))))
        notes.append(dict(x=selected, y=top, text=f"<b>{selected}</b>", showarrow=True, arrowhead=2, ax=0, ay=-28,
                          font=dict(size=13, color=FRONTIER), arrowcolor=FRONTIER, bgcolor="rgba(255,255,255,0.85)"))
    return _layout(fig, height=420, barmode="overlay", annotations=notes,
                   xaxis=dict(categoryorder="array", categoryarray=list(df["name"]), tickangle=-60),
                   yaxis=dict(title_text="MACs per image" if what == "macs" else "parameters"))


# ----------------------------------------------------------------------------------------------
# EHP fit


def loss_figure(steps: Sequence[int], relative_errors: Sequence[float], optimum: float | None = None,
                conv: str = FITTABLE[0], title: str | None = None) -> go.Figure:
    """Relative error ‖K − K̂‖/‖K‖ of gradient descent against the step, with the SVD optimum as a line."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(steps), y=list(relative_errors), mode="lines", name="gradient descent",
                             line=dict(color=conv_color(conv), width=2),
                             hovertemplate="step %{x}<br>relative error %{y:.5f}<extra></extra>"))
    shapes, notes = hline(fig, max(optimum, 1e-12), text=f"SVD optimum {optimum:.4f}") if optimum is not None else ([], [])
    values = [v for v in list(relative_errors) + ([optimum] if optimum is not None else []) if v and v > 0 and np.isfinite(v)]
    y_range = [np.log10(min(values)) - 0.05, np.log10(max(values)) + 0.05] if values else None
    return _layout(fig, title=title, height=380, shapes=shapes, annotations=notes, xaxis=dict(title_text="step"),
                   yaxis=dict(title_text="relative error ‖K − K̂‖ / ‖K‖", type="log", range=y_range, tickvals=LOG_TICKS,
                              ticktext=[f"{v:g}" for v in LOG_TICKS]))


def energy_rank(energy: np.ndarray, share: float = 0.95) -> dict[str, int | None]:
    """The smallest rank at which the median channel (``median``) and every channel (``worst``) keep at least
    ``share`` of their singular-value energy (None where no rank does). ``energy``: ``(C, q)`` cumulative."""
    e = np.asarray(energy, dtype=float)

    def first(curve: np.ndarray) -> int | None:
        hit = np.flatnonzero(curve >= share - 1e-12)
        return int(hit[0]) + 1 if len(hit) else None

    return {"median": first(np.median(e, axis=0)), "worst": first(e.min(axis=0))}


def _share_notes(at: dict[str, int | None], curves: dict[str, np.ndarray], share: float, q: int) -> list[dict]:
    """Arrows to the first rank where the median channel and where every channel keep ``share`` of the energy
    (one arrow when it is the same rank), the text low in the plot (the curves rise: the lower part is empty),
    on the side of the point away from the nearer edge."""
    ranks: dict[int, list[str]] = {}
    for which, words in (("median", "median"), ("worst", "every channel")):
        if at[which] is not None:
            ranks.setdefault(at[which], []).append(words)
    notes = []
    for i, (k, who) in enumerate(sorted(ranks.items())):
        left = k > (q + 1) / 2
        notes.append(dict(x=k, y=float(curves["median" if "median" in who else "worst"][k - 1]),
                          text=f"{share:.0%}: {' and '.join(who)} from k={k}",
                          showarrow=True, arrowhead=2, arrowcolor=FRONTIER, axref="x", ayref="y",
                          ax=k - 0.15 if left else k + 0.15, ay=0.3 - 0.14 * i,  # the empty lower part
                          xanchor="right" if left else "left", font=dict(size=12, color=FRONTIER),
                          bgcolor="rgba(255,255,255,0.85)"))
    return notes


def energy_figure(energy: np.ndarray, rank: int | None = None, conv: str = FITTABLE[0],
                  share: float | None = 0.95) -> go.Figure:
    """Cumulative singular-value energy per channel against the rank: median, and the band from the
    worst to the best channel; a dotted line at the chosen rank. ``energy``: ``(C, q)``. With ``share``, the
    ranks where the median channel and every channel first keep that share are pointed at
    (:func:`energy_rank`), with a dashed line at the share."""
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
    shapes, notes = vline(fig, rank, text=f" k={rank}") if rank is not None else ([], [])
    if share is not None:
        shapes = shapes + hline(fig, share, color="#b0b0b0", dash="dash")[0]
        notes = notes + _share_notes(energy_rank(e, share), {"median": med, "worst": lo}, share, len(ranks))
    return _layout(fig, height=340, shapes=shapes, annotations=notes,
                   xaxis=dict(title_text="rank k", dtick=1 if len(ranks) <= 16 else None),
                   yaxis=dict(title_text="energy kept ‖K̂_c‖² / ‖K_c‖²", range=[0, 1.08]))


def error_by_rank_figure(errors: Sequence[float], rank: int | None = None, conv: str = FITTABLE[0]) -> go.Figure:
    """The optimal (SVD) relative error at each rank 1 … full rank."""
    ranks = list(range(1, len(errors) + 1))
    fig = go.Figure(go.Bar(x=ranks, y=list(errors), marker_color=[conv_color(conv) if k == rank else NEUTRAL for k in ranks],
                           hovertemplate="rank %{x}: %{y:.4f}<extra></extra>"))
    return _layout(fig, height=340, xaxis=dict(title_text="rank k", dtick=1 if len(ranks) <= 16 else None),
                   yaxis=dict(title_text="optimal relative error"))


# ----------------------------------------------------------------------------------------------
# accuracy vs cost


def _panel_title(model: str, dataset: str) -> str:
    """Two short lines (model, data set): four panels side by side fit a 683 px wide window."""
    names = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN", "imagenet": "ImageNet", "digits": "digits"}
    return f"{model}<br>{names.get(dataset, dataset)}"


def log_tickvals(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over [lo, hi] (lo, hi > 0): the 1-2-5 series when it puts at least two ticks
    inside, else 1…9 × 10^e, else three evenly spaced round numbers (a range within one decade, such as
    vgg16_bn's 125–138 M parameters, has no 1-2-5 tick at all)."""
    lo, hi = min(lo, hi), max(lo, hi)
    decades = range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
    for mantissas in ((1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** e for e in decades for m in mantissas if lo <= m * 10.0 ** e <= hi]
        if len(ticks) >= 2:
            return [float(t) for t in ticks]
    mag = 10.0 ** np.floor(np.log10(max(hi - lo, 1e-12)))
    for step in (mag, mag / 2, mag / 5, mag / 10):  # the coarsest that puts two ticks inside
        ticks = np.arange(np.ceil(lo / step) * step, hi + step * 1e-9, step)
        if len(ticks) >= 2:
            return [float(t) for t in ticks]
    return [lo, hi]


def _padded_range(values: Sequence[float], log: bool, low: float = 0.08, high: float = 0.08) -> list[float]:
    """An axis range around ``values`` with a margin on each side (a fraction of the span; in log10 units on a
    log axis), so markers and their labels at the extremes are not cut at the panel's edge."""
    v = np.asarray([x for x in values if np.isfinite(x) and (x > 0 or not log)], dtype=float)
    if not len(v):
        return [0, 1]
    a, b = (np.log10(v.min()), np.log10(v.max())) if log else (v.min(), v.max())
    span = (b - a) or (abs(a) * 0.1 if a else 1.0)
    return [float(a - low * span), float(b + high * span)]


def accuracy_figure(paper: pd.DataFrame, own: pd.DataFrame | None = None, x: str = "params_m", log_x: bool = False,
                    y: str = "top1", panels: Sequence[tuple[str, str]] | None = None, cols: int = 4) -> go.Figure:
    """Accuracy against parameters or MACs, one panel per (model, dataset).

    ``paper``: the thesis frame (:func:`falcon.paper.load_paper_results`); ``own``: the project's runs in
    the same columns (drawn with open markers, "ours"). FALCON ranks are joined by a line; each
    competitor has its colour and symbol, the standard conv a star; the dashed line is the Pareto
    frontier (cheaper and more accurate than every point above and to its right). The points drawn are
    :func:`falcon.views.tables.accuracy_table`'s (:func:`points_figure` draws a table of them).
    """
    return points_figure(accuracy_table(paper, own, x, y, panels), x, log_x, y, panels, cols)


def points_figure(data: pd.DataFrame, x: str = "params_m", log_x: bool = False, y: str = "top1",
                  panels: Sequence[tuple[str, str]] | None = None, cols: int = 4) -> go.Figure:
    """:func:`accuracy_figure` of the points :func:`falcon.views.tables.accuracy_table` gives (``pareto`` marks the
    frontier); ``panels``: the (model, dataset) panels in order (default: those of the points)."""
    if panels is None:
        panels = list(dict.fromkeys(zip(data["model"], data["dataset"])))
    n = max(1, len(panels))
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    by_panel = {key: g for key, g in data.groupby(["model", "dataset"], sort=False)}
    ranked = data[(data["source"] == "paper") & data["method"].isin(PAPER_RANKED)].dropna(subset=["rank"]) \
        if "rank" in data else data.iloc[0:0]
    paper_ranks = {meth: (int(g.min()), int(g.max())) for meth, g in ranked.groupby("method")["rank"]}
    # between two rows of panels: the x tick labels, the axis title and the two-line panel title (~110 px)
    layout = grid(rows, cols, [_panel_title(*p) for p in panels], hspace=0.07,
                  vspace=110 / (350 * rows) if rows > 1 else 0.1)
    shown: set[str] = set()  # the legend entries already shown
    axes: dict[str, dict] = {}
    traces: list[dict] = []  # built as dicts and validated once (add_trace per panel is slow)
    for i, (model, dataset) in enumerate(panels):
        xr, yr = ("x", "y") if i == 0 else (f"x{i + 1}", f"y{i + 1}")
        d = by_panel.get((model, dataset))
        if d is None:
            continue
        traces.extend(_frontier_trace(d, x, y, xr, yr, shown))
        traces.extend(_method_traces(d, x, y, xr, yr, shown, paper_ranks))
        axes.update(_panel_axes(d, x, y, xr, yr, log_x, first_column=i % cols == 0))
    for name, ax in axes.items():
        layout[name] = {**layout.get(name, {}), **ax}
    layout.update(BASE_LAYOUT, height=350 * rows + 110, margin=dict(l=10, r=10, t=120, b=10),
                  legend=dict(orientation="h", yanchor="bottom", y=1.0 + 0.16 / rows, x=0))
    return go.Figure(data=traces, layout=layout)


def _frontier_trace(d: pd.DataFrame, x: str, y: str, xr: str, yr: str, shown: set[str]) -> list[dict]:
    """The panel's Pareto frontier (the points marked ``pareto``) as a dashed step line, if it has one."""
    front = d[d["pareto"]].sort_values(x)
    if not len(front):
        return []
    trace = dict(type="scatter", x=list(front[x]), y=list(front[y]), mode="lines", xaxis=xr, yaxis=yr,
                 line=dict(color=FRONTIER, dash="dash", shape="hv", width=1),
                 name="Pareto frontier", legendgroup="frontier", showlegend="frontier" not in shown, hoverinfo="skip")
    shown.add("frontier")
    return [trace]


def _method_traces(d: pd.DataFrame, x: str, y: str, xr: str, yr: str, shown: set[str],
                   paper_ranks: dict[str, tuple[int, int]]) -> list[dict]:
    """One trace per (source, method) of the panel: a ranked type is a line through its ranks (labelled k=…),
    the others markers; ours open markers and dotted lines."""
    xlabel = COST_AXES.get(x, x)
    xfmt = ".3g" if x == "latency_ms" else ",.2f"  # a millisecond or two: significant digits
    traces = []
    for (source, method), m in d.groupby(["source", "method"], sort=False):
        curve = method in PAPER_RANKED  # one line through the ranks
        if curve:
            m = m.sort_values("rank")
        key = f"{source}:{method}"
        name = conv_label(method) + (" (ours)" if source == "ours" else "")
        if curve and source == "paper" and method in paper_ranks:
            name = f"{conv_label(method)} rank {paper_ranks[method][0]}–{paper_ranks[method][1]}"
        symbol = conv_symbol(method) + ("-open" if source == "ours" else "")
        ranks = [f"k={int(k)}" if pd.notna(k) else "" for k in m["rank"]] if "rank" in m else [""] * len(m)
        traces.append(dict(
            type="scatter", xaxis=xr, yaxis=yr,
            x=list(m[x]), y=list(m[y]), mode="lines+markers+text" if curve else "markers",
            text=ranks if curve else None, textposition="top center", cliponaxis=False,
            textfont=dict(size=12, color=conv_color(method)),
            line=dict(color=conv_color(method), width=2, dash="dot" if source == "ours" else "solid"),
            marker=dict(symbol=symbol, size=15 if method == "standard" else 12 if not curve else 10,
                        color=conv_color(method),
                        line=dict(width=1.5, color=conv_color(method) if source == "ours" else "white")),
            name=name, legendgroup=key, showlegend=key not in shown,
            customdata=[[str(a), b] for a, b in zip(m["method"], ranks)],
            hovertemplate=f"{name} %{{customdata[1]}}<br>{xlabel}: %{{x:{xfmt}}}<br>top-1: %{{y:.2f}}%<extra>{source}</extra>",
        ))
        shown.add(key)
    return traces


def _panel_axes(d: pd.DataFrame, x: str, y: str, xr: str, yr: str, log_x: bool, first_column: bool) -> dict[str, dict]:
    """The panel's x and y axes, ranged to its points (only the first column titles its y axis)."""
    xlabel = COST_AXES.get(x, x)
    xs, ys = [float(v) for v in d[x]], [float(v) for v in d[y]]
    x_range = _padded_range(xs, log_x)
    if log_x:
        ticks = log_tickvals(*(10 ** v for v in x_range))
        x_axis = dict(type="log", title_text=xlabel, range=x_range, tickvals=ticks,
                      ticktext=[_tick_text(v) if x != "latency_ms" else f"{v:.3g}" for v in ticks])
    else:
        x_axis = dict(type="linear", title_text=xlabel, range=x_range)
    y_axis = dict(title_text="top-1 accuracy (%)" if first_column else None,
                  range=_padded_range(ys, False, 0.08, 0.16))  # room for the k= labels
    return {xr.replace("x", "xaxis"): x_axis, yr.replace("y", "yaxis"): y_axis}


# ----------------------------------------------------------------------------------------------
# fine-tuning runs

#: Line styles that tell apart runs of one conv type (FALCON ranks 1, 2, 3, ...).
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]


def training_figure(curves: dict[Any, dict], baseline_accuracy: float | None = None) -> go.Figure:
    """Fine-tuning of each run, side by side: the training loss against the step (left) and the held-out
    accuracy after each epoch (right, percent; the baseline as a dashed line).

    ``curves``: run → ``{"conv", "label", "step", "loss", "epoch_step", "accuracy"}`` (accuracy in [0, 1];
    what :meth:`falcon.experiments.sweep.SweepRunner.snapshot` gives under ``curves``, with ``conv`` added).
    Runs of one conv type share its colour and differ by dash.
    """
    layout = grid(1, 2, ["training loss", "held-out accuracy after each epoch"], hspace=0.08)
    traces: list[dict] = []
    seen: dict[str, int] = {}
    for run, c in curves.items():
        conv = c.get("conv", "")
        dash = DASHES[seen.get(conv, 0) % len(DASHES)]
        seen[conv] = seen.get(conv, 0) + 1
        color = conv_color(conv)
        name = c.get("label") or str(run)
        traces.append(dict(type="scatter", x=list(c.get("step", [])), y=list(c.get("loss", [])), mode="lines",
                           name=name, legendgroup=str(run), line=dict(color=color, dash=dash, width=2),
                           hovertemplate=f"{name}<br>step %{{x}}<br>loss %{{y:.4f}}<extra></extra>"))
        acc = [100.0 * a for a in c.get("accuracy", [])]
        traces.append(dict(type="scatter", x=list(c.get("epoch_step", [])), y=acc, mode="lines+markers",
                           xaxis="x2", yaxis="y2", name=name, legendgroup=str(run), showlegend=False,
                           line=dict(color=color, dash=dash, width=2), marker=dict(size=8, color=color),
                           hovertemplate=f"{name}<br>step %{{x}}<br>held-out %{{y:.2f}}%<extra></extra>"))
    shapes, notes = [], []
    if baseline_accuracy is not None:
        y = 100.0 * baseline_accuracy
        shapes.append(dict(type="line", xref="x2 domain", yref="y2", x0=0, x1=1, y0=y, y1=y,
                           line=dict(color=FRONTIER, dash="dash", width=1.5)))
        notes.append(dict(text=f"baseline {y:.2f}%", xref="x2 domain", yref="y2", x=1, y=y, xanchor="right",
                          yanchor="bottom", showarrow=False, font=dict(color=FRONTIER, size=12)))
    layout.update(BASE_LAYOUT, height=440, margin=dict(l=10, r=10, t=40, b=10),
                  legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))  # below: the panel titles sit on top
    layout["annotations"] = layout["annotations"] + notes
    layout["shapes"] = shapes
    layout["xaxis"].update(title_text="step")
    layout["yaxis"].update(title_text="loss", type="log", tickvals=LOG_TICKS_WIDE,
                           ticktext=[f"{v:g}" for v in LOG_TICKS_WIDE])
    layout["xaxis2"].update(title_text="step")
    layout["yaxis2"].update(title_text="accuracy (%)")
    return go.Figure(data=traces, layout=layout)
