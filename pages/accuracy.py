"""Accuracy vs cost: the thesis's results (and the project's own runs) against parameters or FLOPs; our runs
against their measured latency."""
import pandas as pd
import streamlit as st

import common
from falcon.experiments.store import OWN_RUN_COLUMNS, own_runs
from falcon.views.figures import points_figure
from falcon.views.tables import accuracy_table, latency_summary

st.title("Accuracy vs cost")
st.caption("Top-1 accuracy against parameters or FLOPs (multiply-accumulates), from the thesis's Tables 3–8 "
           "(`falcon/data/paper_results.csv`). FALCON's ranks 1–3 are joined by a line; each competitor has its colour "
           "and symbol, the standard conv a star. The dashed line is the Pareto frontier: no other point is both "
           "cheaper and more accurate.")

paper = common.paper_results()
ours = pd.DataFrame(columns=OWN_RUN_COLUMNS)  # a results database that cannot be read: its error, the thesis's points
hidden = 0
with common.guard(stop=False):
    sweep, hidden = common.hidden_sweep()  # another session's running sweep: its runs once it ends (#20)
    ours = own_runs(hide_sweep=sweep)

LATENCY = "latency_ms"
has_latency = bool(len(ours)) and ours[LATENCY].notna().any()
AXIS_NAMES = {"params_m": "parameters", "macs_m": "FLOPs (MACs)", LATENCY: "latency (ms, measured)"}
c = st.columns([3.1, 1.1, 2.1, 1.1])
x = common.widget(c[0].segmented_control, "x axis", ["params_m", "macs_m"] + ([LATENCY] if has_latency else []),
                  default="params_m", key="x", required=True, format_func=AXIS_NAMES.get,
                  help="latency (ms, measured): the measured latency of our runs, per batch. " + (
                      "It is stored with each run of `python -m falcon experiment`." if has_latency else
                      "No stored run has one yet: `python -m falcon experiment measure` times the stored runs "
                      "(new runs measure it themselves)."))
x = x or "params_m"
latency_axis = x == LATENCY
scale = common.widget(c[1].segmented_control, "scale", ["log", "linear"], default="log", key="scale", required=True,
                      help="cost spans 10× within a panel: log spreads the cheap models apart")
if latency_axis:  # the thesis reports no latency: the panels of our runs that have one
    all_panels = list(dict.fromkeys(zip(*(ours.loc[ours[LATENCY].notna(), k] for k in ("model", "dataset")))))
else:
    all_panels = list(dict.fromkeys(zip(paper["model"], paper["dataset"])))
    if len(ours):
        all_panels += [p for p in dict.fromkeys(zip(ours["model"], ours["dataset"])) if p not in all_panels]
labels = {f"{m} · {d}": (m, d) for m, d in all_panels}
panels_key = "panels_latency" if latency_axis else "panels"
offered = st.session_state.get(f"_offered.{panels_key}")  # a panel new since this session's last run (runs that
if offered is not None and isinstance(st.session_state.get(panels_key), list):  # ended or appeared): shown too
    st.session_state[panels_key] += [p for p in labels if p not in offered and p not in st.session_state[panels_key]]
st.session_state[f"_offered.{panels_key}"] = list(labels)
picked = common.widget(c[2].multiselect, "panels (model · data set)", list(labels), default=list(labels),
                       key=panels_key)
show_ours = common.widget(c[3].toggle, "our runs", value=True, key="show_ours", disabled=not len(ours) or latency_axis,
                          help="runs stored by `python -m falcon experiment` (the results store)" +
                               ("; the latency axis shows only them" if latency_axis else ""))

panels = [labels[p] for p in picked] or all_panels
data = accuracy_table(paper, ours if show_ours or latency_axis else None, x=x, panels=panels)  # what the figure draws
if latency_axis:
    where = latency_summary(data)
    st.caption(f"Measured latency per batch of our runs (the converted model; the star is its baseline): "
               f"{where['caption']}, each model in its fastest memory layout (median of interleaved rounds, "
               "`falcon.modelbench`). The thesis reports no latency, so its points are not shown.")
    if where["mixed"]:
        st.warning(f"Mixed measurements: these points were measured on different {' and '.join(where['mixed'])} "
                   f"({where['caption']}); their latencies are not comparable with each other. "
                   "`python -m falcon experiment measure --force` measures them all again here.")
fig = points_figure(data, x=x, log_x=scale == "log", panels=panels)
common.plot(fig, key="accuracy", filename="falcon-accuracy-vs-cost")
common.hidden_note(hidden)
if not len(ours):
    st.caption("No runs of your own yet: `python -m falcon experiment …` stores fine-tuning runs, which then appear "
               "here with open markers, marked “ours”.")

# ---------------------------------------------------------------------------------------------- data
st.subheader("The points")
cols = ["source", "model", "dataset", "method_label", "rank", "top1", "top5", "params_m", "macs_m", "pareto", "table"]
if latency_axis:  # our runs only: no top-5; where and how each latency was measured
    cols.remove("top5")
    cols[cols.index("pareto"):cols.index("pareto")] = ["latency_ms", "latency_iqr_ms", "latency_speedup",
                                                      "latency_device", "latency_runtime", "latency_batch",
                                                      "latency_weights"]
shown = data[[c for c in cols if c in data]].assign(  # blank cells, not "None", where a column does not apply
    rank=lambda d: pd.array(d["rank"], dtype="Int64").astype("string").fillna(""))
if "top5" in shown:
    shown["top5"] = [f"{v:.2f}" if pd.notna(v) else "" for v in shown["top5"]]
st.dataframe(shown, key="points", hide_index=True, column_config={
    "method_label": st.column_config.TextColumn("method"),
    "top1": st.column_config.NumberColumn("top-1 (%)", format="%.2f"),
    "top5": st.column_config.TextColumn("top-5 (%)"),
    "params_m": st.column_config.NumberColumn("params (M)", format="%.2f"),
    "macs_m": st.column_config.NumberColumn("FLOPs (M)", format="%.2f"),
    "pareto": st.column_config.CheckboxColumn("on the frontier"),
    "latency_ms": st.column_config.NumberColumn("latency (ms)", format="%.3f"),
    "latency_iqr_ms": st.column_config.NumberColumn("IQR (ms)", format="%.3f"),
    "latency_speedup": st.column_config.NumberColumn("speedup", format="%.2f×",
                                                     help="baseline latency / this latency, same run"),
    "latency_device": st.column_config.TextColumn("measured on"),
    "latency_runtime": st.column_config.TextColumn("runtime"),
    "latency_batch": st.column_config.NumberColumn("batch"),
    "latency_weights": st.column_config.TextColumn("weights", help="trained: the run's own models; rebuilt: "
                                                   "rebuilt from its config by `experiment measure`"),
})

d = st.columns([1, 1, 1, 3])
d[0].download_button("CSV", data.to_csv(index=False).encode(), file_name="falcon-accuracy-vs-cost.csv",
                     mime="text/csv", icon=":material/download:", key="csv", on_click="ignore")
d[1].download_button("Figure (HTML)", lambda: fig.to_html(include_plotlyjs=True, full_html=True).encode(),
                     file_name="falcon-accuracy-vs-cost.html", mime="text/html", icon=":material/download:", key="html",
                     on_click="ignore", help="interactive, self-contained (works offline)")
common.png_download(fig, "falcon-accuracy-vs-cost.png", d[2], key="png")
d[3].caption("The camera button in the figure's corner also saves what it shows as a PNG.")

# ---------------------------------------------------------------------------------------------- the journal's claim
st.subheader("FALCON against tensor decomposition, measured (digits)")
from falcon.experiments.claim import (  # noqa: E402
    CLAIM, METRICS, SWEEP_DBS, load_summary, markdown_table, summary_path, verdict)

st.markdown(f"The journal version of FALCON claims: *“{CLAIM}”*. Below, every type at three matched budgets, in "
            "parameters or in MACs (those of digits-vgg converted to FALCON at ranks 1, 2, 3; each ranked type at its "
            "largest uniform rank within the budget; MobileConvV2 and ShuffleUnit are unranked, at their paper "
            "settings), training-free and fine-tuned, median [min–max] over the seeds, top-1 % on the 450 held-out "
            "digits. Bold: the best fine-tuned median of its budget.")
for tab, metric in zip(st.tabs(["matched by parameters", "matched by MACs"]), METRICS):
    claim_rows, csv_path = load_summary(summary_path(metric)), f"falcon/data/{summary_path(metric).name}"
    sweep = f"python benchmarks/claim_sweep.py --match {metric} --db {SWEEP_DBS[metric]} --csv {csv_path}"
    with tab:
        if claim_rows:
            st.markdown(markdown_table(claim_rows))
            st.markdown("**FALCON's fine-tuned median against the best rival of each family** (positive: FALCON "
                        "ahead):\n\n" + "\n".join(f"- {line}" for line in verdict(claim_rows)))
        else:
            st.info(f"No claim sweep summary is bundled: `{sweep}` runs it.")
        st.caption(f"Reproduce: `{sweep}` (the runs go to that database, each tagged with its budget). To plot "
                   "every run of the sweep with the thesis's points, start the app on it: "
                   f"`FALCON_RESULTS_DB={SWEEP_DBS[metric]} streamlit run app/main.py`.")
