"""Model sizing → "Where should the budget go?": the per-layer plan (falcon.planning) beside one uniform rank."""
from __future__ import annotations

import json

import streamlit as st

import common
from falcon.errors import FalconError


@st.cache_data(show_spinner=False, max_entries=16)
def _plans(model: str, metric: str, ratio: float, types: tuple[str, ...], proxy: str) -> dict:
    from falcon.planning import plan_model, uniform_plan
    from falcon.sources import load_model

    entry = common.app_model(model)
    notes = []
    if entry.name == "digits-vgg":
        loaded = load_model(entry)
    else:
        try:
            loaded = load_model(entry, "pretrained", timeout=5.0)
        except FalconError as e:
            loaded = load_model(entry, "random")
            notes.append(f"no pretrained weights here ({e}); this plan is fitted to random weights, whose "
                         "kernels have flat spectra: use it for costs, not for which layers fit well")
    target = {"metric": metric, "target_ratio": ratio}
    plan = plan_model(loaded, types=types, proxy=proxy, **target).as_dict()
    try:
        uniform = uniform_plan(loaded, "falcon", proxy=proxy, **target).as_dict()
    except FalconError as e:
        uniform = None
        notes.append(str(e))
    return {"plan": plan, "uniform": uniform, "notes": notes, "weights": loaded.weights}


#: the target kinds: counted, or measured on this machine (app/latency_plan_panel.py)
TARGET_KINDS = {"macs": "fewer MACs", "params": "fewer parameters", "latency": "measured speedup"}


def show(model: str) -> None:
    from falcon.planning import DEFAULT_TYPES, fittable_types
    from falcon.views.plan import plan_figure, plan_summary, plan_table

    st.subheader("Where should the budget go?")
    st.caption("Per layer: keep the conv, or a fittable conv type at a rank, chosen to meet the target with the least "
               "predicted error (kernel proxy: Σ of each layer's squared relative fit error; data proxy: of its output "
               "on 64 training images, digits-vgg only). Solved exactly on costs rounded up to 1/4000 of the budget "
               "(a multiple-choice knapsack); the bound says how far from the optimum it can be.")
    c = st.columns([1.7, 1, 1.8, 1])
    metric = common.widget(c[0].selectbox, "target", ["macs", "params", "latency"], key="plan_metric",
                           format_func=TARGET_KINDS.get, help="fewer MACs or parameters: counted; measured speedup: "
                           "every option timed on this machine, the plan checked by timing the planned model")
    if metric == "latency":
        ratio = common.number(c[1], "times faster", "target_speedup", 2.0, key="plan_speedup", step=0.25,
                              help="the planned model's predicted time is at most the model's, timed here, divided by this")
    else:
        ratio = common.number(c[1], "times fewer", "target_rate", 4.0, key="plan_ratio", step=0.5,
                              help="the plan's cost is at most the model's divided by this")
    options = [*fittable_types(), "standard"]
    types = common.widget(c[2].multiselect, "allowed per layer", options,
                          default=[t for t in DEFAULT_TYPES if t in options], key="plan_types",
                          help="standard: the layer may be kept as it is")
    proxy = common.widget(c[3].selectbox, "proxy", ["kernel", "data"] if model == "digits-vgg" else ["kernel"],
                          key="plan_proxy", help="data: needs the model's own data (digits-vgg has it bundled)")
    if not types:
        st.error("Choose at least one allowed type (for example falcon and standard).")
        return
    if metric == "latency":
        import latency_plan_panel  # app/latency_plan_panel.py: timed on this machine, through the measurement queue

        latency_plan_panel.show(model, float(ratio), types, proxy or "kernel")
        return
    if not common.widget(st.toggle, "plan this model", value=False, key="plan_on",
                         help="fits every layer at every rank of its grid: seconds"):
        return
    try:
        with st.spinner("fitting every layer at every rank…"):
            out = _plans(model, metric or "macs", float(ratio), tuple(types), proxy or "kernel")
    except FalconError as e:
        st.error(str(e), icon=":material/error:")
        return
    plan, uniform = out["plan"], out["uniform"]
    for note in out["notes"]:
        st.warning(note, icon=":material/warning:")
    common.plot(plan_figure(plan, uniform), key="plan_chart", filename=f"{model}-plan")
    st.dataframe(plan_summary(plan, uniform), hide_index=True, key="plan_summary", column_config={
        "params": st.column_config.NumberColumn(format="localized"),
        "MACs": st.column_config.NumberColumn(format="localized"),
        "CR": st.column_config.NumberColumn(format="%.2fx"), "CRR": st.column_config.NumberColumn(format="%.2fx"),
        "predicted error": st.column_config.NumberColumn(format="%.4f")})
    st.caption(f"Predicted error {plan['objective']:.4g}; no plan meeting the target can go below "
               f"{plan['lower_bound']:.4g} (Lagrangian bound); the greedy allocation reaches {plan['greedy_objective']:.4g}. "
               f"Planned in {plan['seconds']:.1f} s on {out['weights']} weights.")
    table = plan_table(plan, uniform)
    st.dataframe(table, hide_index=True, key="plan_table", column_config={
        **{c: st.column_config.NumberColumn(format="localized") for c in table.columns if c.startswith(("macs", "params"))},
        **{c: st.column_config.NumberColumn(format="%.4f") for c in table.columns if c.startswith("error")}})
    st.download_button("Download the plan (JSON, for convert --plan)", json.dumps(plan, indent=2),
                       file_name=f"{model}-plan.json", mime="application/json", icon=":material/download:",
                       key="plan_download")
    st.caption(f"`python -m falcon plan --model {model} --target-{'crr' if metric == 'macs' else 'cr'} {ratio:g} "
               f"--types {','.join(types)} --proxy {proxy}` prints the same; `convert --plan` applies it.")
    st.session_state[common.Keys.SIZING_PLAN] = {"model": model, "plan": plan}  # the Experiments page's to fine-tune
    if model == "digits-vgg":  # the model the Experiments page fine-tunes
        st.page_link(common.PAGE_BY_FILE["experiments.py"].path, label="Fine-tune this plan on the Experiments page",
                     icon=":material/science:", query_params={"mode": "plan", "plan_from": "sizing"})
