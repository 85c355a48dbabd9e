"""Layer calculator: every conv type's params, MACs, CR and CRR for one layer, with the formulas;
break-even rank; thop cross-check; a live latency measurement on this machine."""
import json

import pandas as pd
import streamlit as st

import common
from common import Keys
from falcon.bench import BENCH_CONVS, DEFAULT_BENCH_CONVS
from falcon.convtypes import CONV_TYPES, RANKED, parse_variant, variant_label
from falcon.views.figures import speedup_figure
from falcon.views.svgcharts import rank_sweep_svg, reductions_svg
from falcon.views.tables import layer_table

st.title("Layer calculator")
st.caption("Closed-form weights and multiply-accumulates (MACs; the thesis's FLOPs) of one convolution layer, "
           "for every conv type of the registry, next to the standard conv. Weights only: no bias, no BN.")


#: The cost tables: one row per conv type (the registry grows; rows scale, columns would not), its formulas beside
#: this layer's numbers. The columns size themselves to their content (a formula breaks only after a + or =,
#: a number never), and the table scrolls inside itself when the window is narrower than that: nothing overlaps.
TABLE_CSS = """<style>
.st-key-calc_tables [data-testid="stMarkdownContainer"] { overflow-x: auto; }
.st-key-calc_tables table { width: 100%; margin: 0; }
.st-key-calc_tables td, .st-key-calc_tables th { vertical-align: top; overflow-wrap: normal; }
.st-key-calc_tables small { color: #6b6f7b; }
</style>"""


#: chosen at first: the bench's defaults, then the other ranked types
PRESELECTED = (*DEFAULT_BENCH_CONVS, *(c for c in RANKED if c not in DEFAULT_BENCH_CONVS))


def _number_cell(parts_sum: str) -> str:
    """``65{,}536 + 2{,}304 = 67{,}840`` as the total in bold over its parts in small type."""
    text = parts_sum.replace("{,}", ",")
    parts, _, total = text.rpartition(" = ")
    return f"**{total}**" + (f"<br><small>{parts}</small>" if parts else "")


def cost_tables(good: list[dict]) -> None:
    """Formulas and this layer's numbers, one row per conv type: parameters with CR, then MACs with CRR (two
    four-column tables fit a 683 px window; see TABLE_CSS)."""
    st.html(TABLE_CSS)
    box = st.container(key="calc_tables")
    for what, key, rate, rate_key in (("parameters", "params", "CR", "compression_rate"),
                                      ("MACs", "macs", "CRR", "computation_reduction_rate")):
        head = f"| conv type | {what} | this layer | {rate} |\n|---|---|--:|--:|"
        rows = [f"| {common.color_dot(r['color'])} {r['label']} | ${r[f'latex_{key}']}$ | "
                f"{_number_cell(r[f'{key}_sum'])} | **{r[rate_key]:.3f}×** |" for r in good]
        box.markdown("\n".join([head, *rows]), unsafe_allow_html=True)


def chart(svg: str, filename: str, key: str) -> None:
    """An SVG chart (hover a bar or point for its value) and its download."""
    st.markdown(svg, unsafe_allow_html=True)
    st.download_button("SVG", svg.encode(), file_name=filename, mime="image/svg+xml", key=key, on_click="ignore",
                       icon=":material/download:", type="tertiary")


@st.fragment
def layer_view() -> None:
    """Inputs, table, charts, cross-check and the measurement's settings, estimate and button: a change of an input
    reruns only this part of the page, the estimate with it (the panel below reads the spec it leaves in the session
    state; starting a measurement reruns everything)."""
    # ---------------------------------------------------------------------------------------------- inputs
    cols = st.columns(7)
    M = common.number(cols[0], "in channels M", "channels", 256, step=1, key="M")
    N = common.number(cols[1], "out channels N", "channels", 256, step=1, key="N")
    D = common.number(cols[2], "kernel D", "kernel_size", 3, step=1, key="D")
    H = common.number(cols[3], "input height H", "input_size", 32, step=1, key="H")
    W = common.number(cols[4], "input width W", "input_size", None, step=1, key="W", placeholder="= H",
                      help="empty: the same as H")
    stride = common.number(cols[5], "stride s", "stride", 1, step=1, key="stride")
    padding = common.number(cols[6], "padding p", "padding", None, step=1, key="padding",
                            placeholder="D // 2", help="empty: D // 2 ('same' for odd D)")

    with st.container(border=True):
        st.markdown("**Hyper-parameters of each conv type**")
        hp_cols = st.columns(sum(len(ct.hparams) for ct in CONV_TYPES.values()) or 1)
        hparams, i = {}, 0
        for name, ct in CONV_TYPES.items():
            hparams[name] = {}
            for h in ct.hparams:
                col = hp_cols[i]
                i += 1
                hparams[name][h.name] = common.hparam_input(name, h.name, container=col, label=f"{ct.label}: {h.label}")

    spec_args = {"in_channels": int(M), "out_channels": int(N), "kernel_size": int(D), "height": int(H),
                 "width": None if W is None else int(W), "stride": int(stride),
                 "padding": None if padding is None else int(padding)}
    with common.guard():
        spec = common.spec_from(spec_args)
    spec_dict = spec.as_dict()
    hp_json = json.dumps(hparams, sort_keys=True)
    st.caption(f"Layer: {spec.describe()}.  Symbols: M={spec.M}, N={spec.N}, D={spec.D}, H×W={spec.height}×{spec.width}, "
               f"H'×W'={spec.out_height}×{spec.out_width}, s={spec.stride}, p={spec.padding}.")

    rows = common.cached_layer_rows(spec_dict, hp_json)
    for r in rows:
        if "error" in r:
            st.error(f"{r['label']}: {r['error']}", icon=":material/error:")
    good = [r for r in rows if "error" not in r]

    # ---------------------------------------------------------------------------------------------- table
    st.subheader("Every conv type, formulas beside the numbers")
    cost_tables(good)
    st.caption("CR = standard params / params; CRR = standard MACs / MACs. Weights only (no bias, no BN); "
               "the parts of each sum are the block's convolutions, in order. MobileConvV2: T = ⌊t·M⌋ hidden channels. "
               "ShuffleUnit: M' = α·M, N' = α·N, bottleneck B = N'/4, g groups.")
    st.download_button("Table (CSV)", lambda: layer_table(good).to_csv().encode(), file_name="falcon-layer-costs.csv",
                       mime="text/csv", icon=":material/download:", key="calc_csv", on_click="ignore")

    # The two charts are inline SVG, not plotly: they change on every input, and a plotly chart whose
    # figure changes is rebuilt from scratch in the browser (~110 ms of a change; falcon/svgcharts.py).
    left, right = st.container(key="wide_calc_charts").columns(2)  # one under the other below 2 × 30 rem
    with left:
        st.subheader("Reductions")
        chart(reductions_svg(good), "falcon-reductions.svg", "svg_reductions")

    # ---------------------------------------------------------------------------------------------- break-even
    with right:
        st.subheader("Break-even rank")
        sweeps, be = common.rank_sweeps(spec_dict)
        st.caption("Rank-k FALCON and DSConv cost k times rank 1. From the break-even rank on, they cost at least "
                   "as much as the standard conv (CR or CRR ≤ 1×).")
        st.markdown("  \n".join(f"{common.color_dot(CONV_TYPES[conv].color)} **{CONV_TYPES[conv].label}** stops saving "
                                 f"parameters at **k = {by['params']}** and MACs at **k = {by['macs']}**"
                                 for conv, by in be.items()), unsafe_allow_html=True)  # one element: fewer to redraw
        chart(rank_sweep_svg(sweeps, be), "falcon-break-even.svg", "svg_break_even")

    # ---------------------------------------------------------------------------------------------- thop
    check = common.thop_check(spec_dict, hp_json)
    agree = bool(check["agree"].all())
    t = st.columns([4, 1.2], vertical_alignment="center")
    if agree:
        t[0].success("Cross-check: thop 0.1.1, run on each type's built block (PyTorch's meta device: shapes only), "
                     "counts exactly the closed-form params and MACs of every conv type.", icon=":material/check_circle:")
    else:
        t[0].warning("thop disagrees with the closed form for: " + ", ".join(check.index[~check["agree"]]))
    if common.widget(t[1].toggle, "show thop's counts", key="show_thop"):
        st.dataframe(check, key="thop_table", column_config={
            c: st.column_config.NumberColumn(c, format="localized") for c in check.columns if c not in ("conv type", "agree")})
    st.session_state[Keys.CALC_LAYER] = (spec, hparams)
    if not st.session_state.get(Keys.CALC_FULL_RUN) and st.session_state.get(Keys.BENCH.job) is not None \
            and st.session_state.get(Keys.BENCH_SPEC) != spec.describe():
        st.rerun(scope="app")  # a measurement of another layer is shown below: let it say so
    measure_controls(spec, hparams)


def bench_convs(chosen: list, hparams: dict) -> list:
    """The chosen conv types as (name, hyper-parameters) for falcon.bench.measure (a fused variant: fused=True)."""
    out = []
    for c in chosen:
        ct, fused = parse_variant(c)
        if fused:
            out.append((ct.name, {**hparams[ct.name], "fused": True}))
        else:
            out.append((c, hparams.get(c, {})))
    return out


def measure_controls(spec, hparams: dict) -> None:
    """How to measure, the estimate of it here, and the Measure button: in the inputs' fragment, so that the
    estimate (or the refusal) is always for the layer and settings shown above it (#20)."""
    dev = common.device_info()
    st.subheader(f"Measure on {dev.short}")
    st.caption("Times the forward pass of each block on a random batch (torch.utils.benchmark: warm-up, interleaved "
               "rounds, median and IQR) and sets the measured speedup beside the theoretical MAC ratio.")
    mc = st.columns([3, 1, 1.4, 1, 1])
    chosen = mc[0].multiselect("conv types", list(BENCH_CONVS), default=list(PRESELECTED), key="bench_convs",
                               format_func=lambda c: variant_label(c) + (" (inference)" if parse_variant(c)[1] else ""))
    batch = common.number(mc[1], "batch size", "batch_size", 8, step=1, key="bench_batch", bind=False)
    layout = mc[2].selectbox("memory layout", ["auto", "contiguous", "channels_last"], key="bench_layout",
                             help="auto measures both layouts and marks the best")
    rounds = common.number(mc[3], "rounds", "rounds", 3, step=1, key="bench_rounds", bind=False)
    min_time = common.number(mc[4], "s per visit", "min_run_time", 0.1, step=0.05, key="bench_min_time",
                             format="%g", bind=False)
    convs = bench_convs(chosen, hparams)
    job = common.current_job(Keys.BENCH)
    running = job is not None and job.running
    estimate = None
    if chosen and not running:
        with common.guard(stop=False):
            estimate = common.layer_estimate(spec.as_dict(), json.dumps(convs), int(batch), layout, int(rounds),
                                             float(min_time))
    bc = st.columns([2, 5])
    if bc[0].button(f"Measure on {dev.short}", key="bench_start", type="primary", icon=":material/timer:",
                    disabled=running or not chosen or (estimate is not None and estimate.refused)):
        from falcon.bench import measure
        from falcon.worker import WorkerTask

        task = WorkerTask(measure, dict(spec=spec, convs=convs, batch_size=int(batch), memory_format=layout,
                                        rounds=int(rounds), min_run_time=float(min_time), device="auto"))
        with bc[1]:
            started = common.submit_measurement(Keys.BENCH, task, estimate, "bench")
        if started is not None:
            st.session_state[Keys.BENCH_SPEC] = spec.describe()
            st.rerun(scope="app")  # the panel below polls it
    elif estimate is not None:
        with bc[1]:
            common.estimate_line(estimate)


st.session_state[Keys.CALC_FULL_RUN] = True  # the fragment's own reruns start below this line
layer_view()
st.session_state[Keys.CALC_FULL_RUN] = False
spec, hparams = st.session_state[Keys.CALC_LAYER]
job = common.current_job(Keys.BENCH)
running = job is not None and job.running


@st.fragment(run_every=0.5 if running else None)
def bench_panel() -> None:
    job = common.measurement_panel(Keys.BENCH, common.current_job(Keys.BENCH), running, columns=None, idle=(
        "Press the button to measure: a worker process times the blocks, one measurement at a time on this machine; "
        "the Stop button ends it at once."))
    if job is not None and job.done and not job.error:
        if show_report(job) and common.rerun_measurement(Keys.BENCH, job) is not None:
            st.rerun(scope="app")


#: BenchReport.rows() as the page shows them: column -> heading
COLUMNS = {"conv": "conv type", "layout": "layout", "median_ms": "median (ms)", "iqr_ms": "IQR (ms)",
           "GMAC/s": "GMAC/s", "speedup": "measured speedup", "theory": "theoretical (MACs)",
           "best vs best": "best vs best", "of theoretical": "of theoretical", "memory": "peak memory"}


def show_report(job) -> bool:
    """The finished measurement: its table and chart, figures that cannot all be true shown as "unreliable" with
    the reasons (:func:`falcon.reliability.assess_layer`). True when its Rerun button was pressed."""
    from falcon.reliability import assess_layer

    report = job.result
    measured_for = st.session_state.get(Keys.BENCH_SPEC, "")
    if measured_for != spec.describe():
        st.warning(f"These measurements are for the layer {measured_for}, not the one above; measure again.",
                   icon=":material/history:")
    if report is None:
        st.warning("Stopped during a timing: the worker process was ended, and nothing had finished." if job.ran else
                   "Stopped before it started: nothing was measured.", icon=":material/stop_circle:")
        return False
    if report.stopped:
        st.warning("Stopped early: the numbers below cover the rounds that finished.", icon=":material/stop_circle:")
    if not report.results:
        st.info("No timing finished before the stop.")
        return False
    verdict = assess_layer(report, load_samples=job.loads or None, seconds=job.seconds or None,
                           cpu_samples=getattr(job, "cpu_samples", None) or None)
    rerun = False if verdict.reliable else common.unreliable(verdict.reasons, "bench_rerun")
    st.caption(f"{report.device_name} · {report.device} · {report.threads} threads · torch {report.torch_version} · "
               f"{report.dtype} · batch {report.batch_size} · {report.rounds} rounds · load average "
               f"{' → '.join(f'{v:g}' for v in verdict.load) or 'unknown'}")
    rows = pd.DataFrame(report.rows())
    bad = [r.conv != "standard" and not verdict.figure(f"{r.label} ({r.memory_format})").reliable
           for r in report.results]
    res = rows.assign(layout=[f"{layout} ★" if best else layout for layout, best in zip(rows["layout"], rows["best"])])
    for col in ("speedup", "best vs best", "of theoretical"):  # never a plain number that cannot be true
        res[col] = [None if b else v for v, b in zip(res[col], bad)]
    res["reliable"] = ["unreliable" if b else ("reference" if r.conv == "standard" else "yes")
                       for r, b in zip(report.results, bad)]
    res = res.rename(columns=COLUMNS)[[*COLUMNS.values(), "reliable"]]
    st.dataframe(res, key="bench_table", hide_index=True, placeholder="unreliable", column_config={
        "median (ms)": st.column_config.NumberColumn(format="%.3f"),
        "IQR (ms)": st.column_config.NumberColumn(format="%.3f"),
        "GMAC/s": st.column_config.NumberColumn(format="%.1f"),
        "measured speedup": st.column_config.NumberColumn(format="%.2f×"),
        "theoretical (MACs)": st.column_config.NumberColumn(format="%.2f×"),
        "best vs best": st.column_config.NumberColumn(format="%.2f×",
                                                      help="standard's fastest layout / this median"),
        "of theoretical": st.column_config.NumberColumn(format="percent"),
        "reliable": st.column_config.TextColumn(help="unreliable: the reasons are above; the speedups are left out"),
    })
    shown = [r for r, b in zip(report.as_dict()["results"], bad) if not b]
    if any(r["conv"] != "standard" for r in shown):
        common.plot(speedup_figure(shown), key="speedup", filename="falcon-speedup")
    for note in report.notes:
        st.caption(f"Note: {note}")
    st.markdown(
        "**Why measured and theoretical differ.** The MAC ratio assumes every multiply-add costs the same. "
        "A depthwise conv does only D² MACs per value it reads, so it is limited by memory traffic, not "
        "arithmetic (on GPUs especially); its speed depends on the memory layout: in `channels_last` the "
        "channels of a pixel sit together and oneDNN's depthwise kernel runs many times faster than in "
        "the default `contiguous` (NCHW) layout. FALCON's pointwise conv also runs at the input resolution "
        "H×W, before the stride. The fused FALCON runs the k branches as two convolutions with the BN folded in."
    )
    return rerun


bench_panel()
