"""Accuracy vs cost: the thesis's results (and the project's own runs) against parameters or FLOPs."""
import pandas as pd
import streamlit as st

import common
from falcon.experiments.store import own_runs
from falcon.views.figures import points_figure
from falcon.views.tables import accuracy_table

st.title("Accuracy vs cost")
st.caption("Top-1 accuracy against parameters or FLOPs (multiply-accumulates), from the thesis's Tables 3–8 "
           "(`data/paper_results.csv`). FALCON's ranks 1–3 are joined by a line; each competitor has its colour "
           "and symbol, the standard conv a star. The dashed line is the Pareto frontier: no other point is both "
           "cheaper and more accurate.")

paper = common.paper_results()
with common.guard(stop=False):
    ours = own_runs()

c = st.columns([1.7, 1.1, 3.2, 1])
x = common.widget(c[0].segmented_control, "x axis", ["params_m", "macs_m"], default="params_m", key="x", required=True,
                  format_func=lambda v: "parameters" if v == "params_m" else "FLOPs (MACs)")
scale = common.widget(c[1].segmented_control, "scale", ["log", "linear"], default="log", key="scale", required=True,
                      help="cost spans 10× within a panel: log spreads the cheap models apart")
all_panels = list(dict.fromkeys(zip(paper["model"], paper["dataset"])))
if len(ours):
    all_panels += [p for p in dict.fromkeys(zip(ours["model"], ours["dataset"])) if p not in all_panels]
labels = {f"{m} · {d}": (m, d) for m, d in all_panels}
picked = common.widget(c[2].multiselect, "panels (model · data set)", list(labels), default=list(labels), key="panels",
                       bind=False)
show_ours = c[3].toggle("our runs", value=True, key="show_ours", disabled=not len(ours),
                        help="runs stored by `python -m falcon experiment` (the results store)")

panels = [labels[p] for p in picked] or all_panels
data = accuracy_table(paper, ours if show_ours else None, x=x or "params_m", panels=panels)  # what the figure draws
fig = points_figure(data, x=x or "params_m", log_x=scale == "log", panels=panels)
common.plot(fig, key="accuracy", filename="falcon-accuracy-vs-cost")
if not len(ours):
    st.caption("No runs of your own yet: `python -m falcon experiment …` stores fine-tuning runs, which then appear "
               "here with open markers, marked “ours”.")

# ---------------------------------------------------------------------------------------------- data
st.subheader("The points")
cols = ["source", "model", "dataset", "method_label", "rank", "top1", "top5", "params_m", "macs_m", "pareto", "table"]
shown = data[[c for c in cols if c in data]].assign(  # blank cells, not "None", where a column does not apply
    rank=lambda d: pd.array(d["rank"], dtype="Int64").astype("string").fillna(""),
    top5=lambda d: [f"{v:.2f}" if pd.notna(v) else "" for v in d["top5"]])
st.dataframe(shown, key="points", hide_index=True, column_config={
    "method_label": st.column_config.TextColumn("method"),
    "top1": st.column_config.NumberColumn("top-1 (%)", format="%.2f"),
    "top5": st.column_config.TextColumn("top-5 (%)"),
    "params_m": st.column_config.NumberColumn("params (M)", format="%.2f"),
    "macs_m": st.column_config.NumberColumn("FLOPs (M)", format="%.2f"),
    "pareto": st.column_config.CheckboxColumn("on the frontier"),
})

d = st.columns([1, 1, 1, 3])
d[0].download_button("CSV", data.to_csv(index=False).encode(), file_name="falcon-accuracy-vs-cost.csv",
                     mime="text/csv", icon=":material/download:", key="csv", on_click="ignore")
d[1].download_button("Figure (HTML)", lambda: fig.to_html(include_plotlyjs=True, full_html=True).encode(),
                     file_name="falcon-accuracy-vs-cost.html", mime="text/html", icon=":material/download:", key="html",
                     on_click="ignore", help="interactive, self-contained (works offline)")
common.png_download(fig, "falcon-accuracy-vs-cost.png", d[2], key="png")
d[3].caption("The camera button in the figure's corner also saves what it shows as a PNG.")
