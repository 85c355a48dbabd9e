"""Small static SVG charts for views that are redrawn on every input change (no Streamlit, no torch).

The layer calculator redraws its two charts whenever a number changes. As plotly figures they took
~110 ms of the browser's time per change on a 2-core machine (Streamlit remounts a plotly chart whose
figure changed, and plotly.js builds it from scratch), a third of the whole change; as inline SVG
they take a few milliseconds (``benchmarks/bench_app.py`` measures both the change and the first
load). The price is interactivity: no zoom, and hover text comes from SVG ``<title>`` tooltips.

Every builder is a pure function from data to an SVG string with ``role="img"`` and an
``aria-label``; each conv type keeps its registry colour (:func:`falcon.figures.conv_color`). Every
mark carries ``data-*`` attributes with the value it draws (tested in tests/test_svgcharts.py).
"""
from __future__ import annotations

import math
from html import escape
from typing import Iterable, Sequence

from falcon.views.figures import FRONTIER, conv_color, conv_label

FONT = "font-family='Source Sans Pro, Source Sans 3, sans-serif'"
GRID = "#e5e5e5"
TEXT = "#31333f"
#: Width of one character of the 13 px font, averaged (to lay out labels without measuring them).
CHAR_PX = 6.8


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v - round(v)) > 1e-9 else str(int(round(v)))


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and multiples of 1, 2 or 5 × 10^e up to at least ``top`` (about ``count`` intervals)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks covering [lo, hi] on a log axis (lo, hi > 0)."""
    out = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo / 1.0001 <= v <= hi * 1.0001:
                out.append(v)
    return out


def _svg(width: int, height: int, label: str, body: Iterable[str]) -> str:
    """Drawn at its own size, never shrunk (its 12-13 px text stays 12-13 px); a narrower page scrolls it."""
    return (f"<svg xmlns='http://www.w3.org/2000/svg' class='falcon-chart' role='img' aria-label='{escape(label, True)}' "
            f"viewBox='0 0 {width} {height}' width='{width}' height='{height}' style='max-width:none' {FONT} font-size='13' "
            f"fill='{TEXT}'><title>{escape(label)}</title>" + "".join(body) + "</svg>")


def reductions_svg(rows: Sequence[dict], width: int = 480) -> str:
    """CR (× fewer parameters, solid) and CRR (× fewer MACs, light) of each conv type as horizontal bars
    in its registry colour, with the value at the end of each bar; the dashed line is 1× (no saving).

    ``rows``: dicts with ``conv``, ``label``, ``compression_rate``, ``computation_reduction_rate`` (the
    standard conv's own row, if given, is left out)."""
    rows = [r for r in rows if r["conv"] != "standard"]
    left = 16 + CHAR_PX * max([len(r["label"]) for r in rows] + [4])
    right, top_pad, bar, gap, group = 56, 30, 16, 3, 14
    plot_w = width - left - right
    height = int(top_pad + len(rows) * (2 * bar + gap + group) + 46)
    top = max([r[k] for r in rows for k in ("compression_rate", "computation_reduction_rate")] + [1.0])
    ticks = nice_ticks(top)
    xmax = ticks[-1]  # the first tick at or above the longest bar

    def x(v: float) -> float:
        return left + plot_w * v / xmax

    body = ["<text x='0' y='16' font-size='12'>solid: × fewer parameters (CR) · light: × fewer MACs (CRR)</text>"]
    axis_y = top_pad + len(rows) * (2 * bar + gap + group)
    for t in ticks:
        body.append(f"<line x1='{x(t):.1f}' x2='{x(t):.1f}' y1='{top_pad - 4}' y2='{axis_y}' stroke='{GRID}'/>"
                    f"<text x='{x(t):.1f}' y='{axis_y + 16}' text-anchor='middle' font-size='12'>{_num(t)}</text>")
    body.append(f"<text x='{left + plot_w / 2:.1f}' y='{axis_y + 36}' text-anchor='middle'>× fewer than the standard conv</text>")
    for i, r in enumerate(rows):
        y0 = top_pad + i * (2 * bar + gap + group)
        color = conv_color(r["conv"])
        body.append(f"<text x='{left - 8:.1f}' y='{y0 + bar + gap / 2 + 4:.1f}' text-anchor='end'>{escape(r['label'])}</text>")
        for j, (key, what, opacity) in enumerate((("compression_rate", "CR", 1.0), ("computation_reduction_rate", "CRR", 0.45))):
            v, y = float(r[key]), y0 + j * (bar + gap)
            fewer = "parameters" if what == "CR" else "MACs"
            body.append(
                f"<rect class='bar' data-conv='{escape(r['conv'], True)}' data-rate='{what}' data-value='{v!r}' "
                f"x='{left}' y='{y:.1f}' width='{max(x(v) - left, 0.5):.1f}' height='{bar}' fill='{color}' "
                f"fill-opacity='{opacity}' stroke='{color}' stroke-width='1'>"
                f"<title>{escape(r['label'])}: {v:.3f}× fewer {fewer} ({what})</title></rect>"
                f"<text x='{x(v) + 4:.1f}' y='{y + bar - 4:.1f}' font-size='12'>{v:.2f}×</text>")
    body.append(f"<line class='one' x1='{x(1):.1f}' x2='{x(1):.1f}' y1='{top_pad - 6}' y2='{axis_y}' stroke='{FRONTIER}' "
                f"stroke-dasharray='5 4' stroke-width='1.5'/>")
    return _svg(width, height, "Reductions of each conv type against the standard conv", body)


def rank_sweep_svg(sweeps: dict, break_even: dict[str, dict[str, int]] | None = None, width: int = 480,
                   height: int = 330) -> str:
    """CR (solid) and CRR (dotted) of rank-k conv types against k on a log axis, one colour per type;
    below the dashed 1× line a rank no longer saves. The vertical dotted lines are the break-even ranks
    of the parameters (``break_even``: conv type → {"params": k, "macs": k}).

    ``sweeps``: conv type → frame (or dict of lists) with ``rank``, ``compression_rate``,
    ``computation_reduction_rate``."""
    series = {c: {k: [float(v) for v in df[k]] for k in ("rank", "compression_rate", "computation_reduction_rate")}
              for c, df in sweeps.items()}
    values = [v for s in series.values() for k in ("compression_rate", "computation_reduction_rate") for v in s[k]] + [1.0]
    ranks = [k for s in series.values() for k in s["rank"]] or [1.0]
    lo, hi = min(values), max(values)
    ticks = log_ticks(lo, hi)
    ylo, yhi = min([lo] + ticks[:1]) / 1.15, max([hi] + ticks[-1:]) * 1.15
    kmin, kmax = min(ranks), max(ranks)
    left, right, top_pad, bottom = 54, 16, 30, 48
    pw, ph = width - left - right, height - top_pad - bottom

    def x(k: float) -> float:
        return left + (pw * (k - kmin) / (kmax - kmin) if kmax > kmin else pw / 2)

    def y(v: float) -> float:
        return top_pad + ph * (1 - (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)))

    body = ["<text x='0' y='16' font-size='12'>solid: × fewer parameters · dotted: × fewer MACs · "
            "vertical: break-even k (params)</text>"]
    for t in ticks:
        body.append(f"<line x1='{left}' x2='{left + pw}' y1='{y(t):.1f}' y2='{y(t):.1f}' stroke='{GRID}'/>"
                    f"<text x='{left - 6}' y='{y(t) + 4:.1f}' text-anchor='end' font-size='12'>{_num(t)}</text>")
    step = max(1, math.ceil((kmax - kmin + 1) / 12))
    for k in range(int(kmin), int(kmax) + 1, step):
        body.append(f"<text x='{x(k):.1f}' y='{top_pad + ph + 16}' text-anchor='middle' font-size='12'>{k}</text>")
    body.append(f"<line x1='{left}' x2='{left + pw}' y1='{top_pad + ph}' y2='{top_pad + ph}' stroke='{TEXT}' stroke-width='0.8'/>"
                f"<text x='{left + pw / 2:.1f}' y='{height - 8}' text-anchor='middle'>rank k</text>"
                f"<text transform='translate(14 {top_pad + ph / 2:.1f}) rotate(-90)' text-anchor='middle'>× fewer than standard</text>"
                f"<line class='one' x1='{left}' x2='{left + pw}' y1='{y(1):.1f}' y2='{y(1):.1f}' stroke='{FRONTIER}' "
                f"stroke-dasharray='5 4' stroke-width='1.5'/>")
    for conv, s in reversed(list(series.items())):  # the first type drawn last, on top, where lines coincide
        color, label = conv_color(conv), conv_label(conv)
        for key, what, dash in (("compression_rate", "params", ""), ("computation_reduction_rate", "MACs", "2 3")):
            pts = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in zip(s["rank"], s[key]))
            body.append(f"<polyline class='line' data-conv='{escape(conv, True)}' data-what='{what}' points='{pts}' fill='none' "
                        f"stroke='{color}' stroke-width='2'" + (f" stroke-dasharray='{dash}'" if dash else "") + "/>")
            for k, v in zip(s["rank"], s[key]):
                body.append(f"<circle cx='{x(k):.1f}' cy='{y(v):.1f}' r='3.5' fill='{color}'>"
                            f"<title>{escape(label)} k={int(k)}: {v:.3f}× fewer {what}</title></circle>")
        if break_even and conv in break_even:
            k = break_even[conv]["params"]
            body.append(f"<line class='break-even' data-conv='{escape(conv, True)}' data-k='{k}' x1='{x(k):.1f}' x2='{x(k):.1f}' "
                        f"y1='{top_pad}' y2='{top_pad + ph}' stroke='{color}' stroke-dasharray='2 3' stroke-width='1.5'>"
                        f"<title>{escape(label)}: rank {k} and above save no parameters</title></line>")
    return _svg(width, height, "CR and CRR of rank-k FALCON and DSConv against the rank k", body)
