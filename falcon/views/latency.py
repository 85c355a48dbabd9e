"""Figures and tables of a whole-model latency measurement (:func:`falcon.modelbench.measure_model`).

Pure functions of the result's plain-data form (``ModelBenchResult.as_dict()``, or a conversion in it), except
:func:`timings_frame`, which takes ``ModelBenchResult.rows()``: the headline numbers per runtime, a caption
of where it ran, the notes sorted into warnings and information, where the time goes before and after
(stacked bars), and each replaced layer's measured speedup beside its MAC ratio. No Streamlit here.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go

from falcon.modelbench import CATEGORIES, CATEGORY_LABELS
from falcon.views.figures import FRONTIER, LOG_TICKS, NEUTRAL, _layout, conv_color

#: one colour per part of the time (stacked bars); the replaced convs take the conv type's colour, the
#: unreplaced convs the standard conv's, the rest colours no conv type has
CATEGORY_COLORS = {"replaced_convs": None, "unreplaced_convs": conv_color("standard"), "bn_act_pool": "#e4b930",
                   "classifier": "#6b6b6b", "other": "#cfcfcf"}
LAYOUT_SHORT = {"contiguous": "NCHW", "channels_last": "NHWC"}
#: ``rows()`` columns that hold numbers ("-" where there is none)
NUMERIC_COLUMNS = ("median_ms", "iqr_ms", "speedup", "rel_error")


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


# ----------------------------------------------------------------------------------------------
# tables and text
def timings_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """``ModelBenchResult.rows()`` as a table: numbers as numbers, blank (NaN) where rows() has "-"."""
    frame = pd.DataFrame(list(rows), columns=["model", "runtime", "layout", *NUMERIC_COLUMNS, "status"])
    for col in NUMERIC_COLUMNS:
        frame[col] = pd.to_numeric(frame[col].map(_number), errors="coerce")
    return frame


def headline(result: dict, conversion: dict) -> list[dict]:
    """The numbers the page shows big for one conversion: the measured speedup in each runtime (its fastest
    layout against the original's fastest, as ``Conversion.speedups`` has it), the MAC ratio and the Amdahl
    ceiling. Each item: ``label``, ``value`` (a float or None), ``text`` (formatted) and ``help``."""
    out = []
    by_runtime = {s["runtime"]: s for s in conversion.get("speedups", [])
                  if s.get("layout") == "best" and s["runtime"] != "any"}
    best = conversion.get("best") or {}
    for info in result.get("runtimes", []):
        rt = info["name"]
        s = by_runtime.get(rt)
        if not info.get("available"):
            out.append({"label": f"speedup, {rt}", "value": None, "text": "–", "help": info.get("reason", "")})
            continue
        if s is None:
            out.append({"label": f"speedup, {rt}", "value": None, "text": "–",
                        "help": "not measured (stopped, or its output failed the parity check: see the table)"})
            continue
        star = " ★" if best.get("runtime") == rt and len(by_runtime) > 1 else ""
        out.append({"label": f"speedup, {rt}{star}", "value": s["speedup"], "text": f"{s['speedup']:.2f}×",
                    "help": f"original {s['original_ms']:.3f} ms / {conversion['label']} {s['converted_ms']:.3f} ms "
                            f"per batch (fastest layout of each; converted in {s['converted_layout']})"
                            + ("; ★ the runtime where the converted model is fastest" if star else "")})
    out.append({"label": "MAC ratio", "value": conversion["mac_ratio"], "text": f"{conversion['mac_ratio']:.2f}×",
                "help": f"{result['original_macs']:,} / {conversion['macs']:,} MACs per image (convention 'clean'): "
                        "the speedup if every multiply-add cost the same"})
    b = conversion.get("breakdown") or {}
    ceiling = b.get("amdahl_ceiling")
    out.append({"label": "Amdahl ceiling", "value": ceiling, "text": f"{ceiling:.2f}×" if ceiling else "–",
                "help": "the model speedup the MAC counts allow if only the replaced convs shrink, on the original's "
                        "eager profile: T / (T − T_replaced + T_replaced / MAC ratio of the replaced convs)"})
    return out


def run_caption(result: dict) -> str:
    """One line: the model and input, where it ran (device, threads, torch and each runtime's version), how long."""
    rts = ", ".join(f"{i['name']}: {i['version']}" for i in result.get("runtimes", []) if i.get("available"))
    chw = "×".join(map(str, result["input_size"]))
    threads = result["threads"]
    cpus = f" of {result['cpu_count']} CPUs" if result.get("cpu_count") and result["device"] == "cpu" else ""
    stopped = ", stopped early" if result.get("stopped") else ""
    return (f"{result['model']} ({result['weights']} weights), input {chw}, batch {result['batch_size']} · "
            f"{result['device']} ({result['device_name']}), {threads} thread{'s' if threads != 1 else ''}{cpus} · "
            f"torch {result['torch_version']} · {rts} · {result['rounds']} rounds × {result['min_run_time']:g} s per "
            f"visit · measured in {result['seconds']:.0f} s{stopped}")


#: notes that say the numbers are less trustworthy (the rest are information: random weights, what was kept)
WARNING_WORDS = ("busy", "unavailable", "add up", "failed", "differs")


def sorted_notes(notes: Sequence[str]) -> list[tuple[str, str]]:
    """``(level, note)`` per note: ``warning`` for a busy machine, an unavailable runtime, a breakdown that does
    not add up or a failure; ``info`` otherwise. Warnings first."""
    levels = [("warning" if any(w in n for w in WARNING_WORDS) else "info", n) for n in notes]
    return sorted(levels, key=lambda ln: ln[0] != "warning")


def breakdown_check(breakdown: dict) -> tuple[str, str]:
    """``(level, text)``: how the profile's sums of parts compare with the unprofiled passes run between the
    profiled ones (what ``Breakdown.adds_up`` checks) and with the timed median of the rounds. ``warning`` when a
    sum is off the timed median by more than the tolerance (the machine's speed changed between the rounds and
    the profile), ``caption`` otherwise."""
    b, tol = breakdown, breakdown.get("tolerance", 0.1)
    timed = [(b[f"{side}_total_ms"] / b[f"{side}_timed_ms"]) if b.get(f"{side}_timed_ms") else None
             for side in ("original", "converted")]
    profiled = [b.get("original_ratio"), b.get("converted_ratio")]

    def pair(ratios) -> str:
        return " and ".join("–" if r is None else f"{r:.2f}" for r in ratios)

    text = (f"{b.get('profiler', 'torch.profiler')}, {b['iterations']} passes. Sum of the parts ÷ unprofiled passes "
            f"between them: {pair(profiled)}; ÷ timed median: {pair(timed)} (original and converted; 1 ± {tol:g} "
            "expected).")
    if any(r is not None and abs(r - 1) > tol for r in timed):
        return "warning", text + (" The machine's speed changed between the timed rounds and the profile (other "
                                  "load?): the parts' shares hold, their sums do not.")
    return "caption", text


# ----------------------------------------------------------------------------------------------
# figures
def breakdown_parts(conversion: dict) -> pd.DataFrame:
    """Milliseconds per pass in each part of the eager profile, original and converted (one row per part)."""
    b = conversion.get("breakdown")
    if not b:
        return pd.DataFrame(columns=["key", "part", "original", "converted"])
    return pd.DataFrame([{"key": c, "part": CATEGORY_LABELS[c], "original": b["original_ms"][c],
                          "converted": b["converted_ms"][c]} for c in CATEGORIES])


def breakdown_figure(conversion: dict) -> go.Figure:
    """Where the time goes, before and after: two bars (the original, the conversion) stacked by part in ms
    per pass (the eager profile, in the layout where the converted model is fastest), each with its sum of
    parts written above it and the timed median of the same model and layout as a black tick."""
    b = conversion.get("breakdown") or {}
    label = conversion.get("label", "converted")
    bars = ["original", label]
    parts = breakdown_parts(conversion)
    fig = go.Figure()
    for _, p in parts.iterrows():
        color = CATEGORY_COLORS[p["key"]] or conv_color(conversion.get("conv", "standard"))
        values = [p["original"], p["converted"]]
        fig.add_bar(x=bars, y=values, name=p["part"], marker_color=color, width=0.5,
                    text=[f"{v:.2f}" if total and v / total > 0.08 else "" for v, total in
                          zip(values, (b.get("original_total_ms"), b.get("converted_total_ms")))],
                    textposition="inside", insidetextanchor="middle",
                    hovertemplate="%{x}<br>" + p["part"] + ": %{y:.3f} ms<extra></extra>")
    timed = [b.get("original_timed_ms"), b.get("converted_timed_ms")]
    fig.add_scatter(x=bars, y=timed, mode="markers", name="timed median (rounds)",
                    marker=dict(symbol="line-ew", size=70, line=dict(width=3, color=FRONTIER), color=FRONTIER),
                    hovertemplate="%{x}<br>timed median %{y:.3f} ms<extra></extra>")
    sums = [b.get("original_total_ms"), b.get("converted_total_ms")]
    top = max([v for v in sums + timed if v] or [1.0])
    annotations = [dict(x=x, y=max(s, t or 0), showarrow=False, yanchor="bottom", yshift=4,
                        text=f"sum of parts {s:.2f} ms" + (f"<br>timed median {t:.2f} ms" if t else ""))
                   for x, s, t in zip(bars, sums, timed) if s]
    layout = LAYOUT_SHORT.get(b.get("layout"), b.get("layout") or "")
    return _layout(fig, f"Where the time goes, eager {layout}", height=460, annotations=annotations,
                   barmode="stack", bargap=0.45, uniformtext=dict(minsize=10, mode="hide"),
                   legend=dict(orientation="h", yanchor="top", y=-0.08, x=0, traceorder="normal"),
                   yaxis=dict(title_text="ms per pass (one batch)", range=[0, top * 1.25]),
                   xaxis=dict(title_text=None))


def layer_speedup_figure(conversion: dict) -> go.Figure:
    """Each replaced layer in model order: its measured speedup in the eager profile (bars, the conv type's
    colour) beside its MAC ratio (outlined bars), on a log axis with 1× (as fast as the original) dashed."""
    layers = (conversion.get("breakdown") or {}).get("layers") or []
    names = [lt["name"] for lt in layers]
    color = conv_color(conversion.get("conv", "standard"))
    macs = [lt.get("mac_ratio") for lt in layers]
    measured = [lt.get("speedup") for lt in layers]
    fig = go.Figure()
    fig.add_bar(x=names, y=[v - 1 if v else None for v in macs], base=1, name="MAC ratio (× fewer MACs)",
                marker=dict(color="rgba(0,0,0,0)", line=dict(color=FRONTIER, width=1.5)),
                text=[f"{v:.1f}×" if v else "" for v in macs], textposition="outside",
                customdata=macs, hovertemplate="%{x}<br>%{customdata:.2f}× fewer MACs<extra></extra>")
    fig.add_bar(x=names, y=[v - 1 if v else None for v in measured], base=1, name="measured speedup (eager)",
                marker_color=color,
                text=[f"{v:.2f}×" if v else "" for v in measured], textposition="outside",
                customdata=[[lt["original_ms"], lt["converted_ms"], v] for lt, v in zip(layers, measured)],
                hovertemplate="%{x}<br>%{customdata[0]:.3f} ms → %{customdata[1]:.3f} ms: %{customdata[2]:.2f}× "
                              "faster<extra></extra>")
    if len(names) > 8:  # the numbers would not fit: hover shows them
        for trace in fig.data:
            trace.text = None
    values = [v for v in macs + measured if v]
    lo, hi = (min(values + [1.0]), max(values + [1.0])) if values else (0.5, 2.0)
    return _layout(fig, "Replaced layers: measured speedup vs MAC ratio", height=440, barmode="group",
                   shapes=[dict(type="line", xref="paper", x0=0, x1=1, y0=1, y1=1,
                                line=dict(color=NEUTRAL, dash="dash"))],
                   yaxis=dict(type="log", title_text="× faster · × fewer MACs (log)", tickvals=LOG_TICKS,
                              ticktext=[f"{v:g}×" for v in LOG_TICKS],
                              range=[math.log10(lo / 1.6), math.log10(hi * 1.6)]),
                   xaxis=dict(tickangle=-45 if len(names) > 8 else 0))
