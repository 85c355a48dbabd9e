"""Experiments: compress the bundled digits model and fine-tune it, one run or a sweep, live; the results store."""
import dataclasses
import json

import pandas as pd
import streamlit as st

import common
import plan_source
from common import Keys
from falcon.convtypes import CONV_TYPES, RANKED
from falcon.errors import FalconError
from falcon.experiments.pipeline import INITS, TRAIN_OPTIMIZERS, ExperimentConfig
from falcon.experiments.report import cli_command, runs_frame, sweep_plan
from falcon.experiments.sweep import DEFAULT_RANKS, DEFAULT_SWEEP_CONVS, SweepRunner
from falcon.paper import PAPER_RANKED
from falcon.views.figures import accuracy_figure, training_figure

st.title("Experiments")
st.caption("Compress-and-fine-tune on the bundled data: the trained `digits-vgg` (a small VGG on scikit-learn's 8×8 "
           "handwritten digits, upsampled) is converted to a conv type (FALCON and DSConv initialised from the SVD "
           "fit of each trained kernel, the pretrained BN kept), evaluated without training, fine-tuned for a few "
           "epochs and evaluated again. Every run is stored in the results database and appears on the "
           "**Accuracy vs cost** page beside the thesis's points. CIFAR and SVHN runs: the command line.")

CHOICES = [c for c in CONV_TYPES if c != "standard"]


# The machine's one experiment at a time (runs would compete for the cores), owned by the session that started it:
# another session sees "machine busy" and nothing of it, cannot stop it; it ends when its session does (#20).
slot = common.experiment_slot()
me = common.session_id()
slot.seen(me)
runner: SweepRunner | None = slot.job(me)  # (a reload is a new session: the old one's sweep is ended as gone)
running = runner is not None and not runner.done
busy = slot.busy(me)

# ---------------------------------------------------------------------------------------------- what to run
c = st.columns([2, 3])
mode = common.widget(c[0].segmented_control, "what", ["sweep", "run", "plan"], default="sweep", key="mode",
                     required=True, format_func=lambda m: {"sweep": "a sweep", "run": "one run", "plan": "a plan"}[m],
                     help="a plan: each layer its own conv type and ranks (Model sizing's “Where should the budget "
                          "go?”), fine-tuned as one run")
chosen, plan_file = None, ""
with c[1]:
    if mode == "plan":
        with common.guard():
            chosen, plan_file = plan_source.choose("digits-vgg")
    elif mode == "run":
        r = st.columns([1.3, 1, 2.5])
        conv = common.widget(r[0].selectbox, "conv type", CHOICES, key="conv",
                             format_func=lambda t: CONV_TYPES[t].label)
        init = None
        if conv in RANKED:
            init = common.widget(r[1].selectbox, "init", list(INITS), key="init",
                                 help="svd: the closed-form EHP optimum of each trained kernel; gd: gradient "
                                      "descent toward it; random: PyTorch's initialisation (no fit)")
        else:
            r[1].selectbox("init", ["random"], key="init_fixed", disabled=True,
                           help=f"{CONV_TYPES[conv].label} is not an EHP of the kernel: its blocks start random")
        with r[2]:
            hparams = common.hparam_inputs(conv, key_prefix="exp.", bind=True)
    else:
        r = st.columns([2.2, 1.3])
        convs = common.widget(r[0].multiselect, "conv types", CHOICES, default=list(DEFAULT_SWEEP_CONVS), key="convs",
                              format_func=lambda t: CONV_TYPES[t].label,
                              help="one shared baseline; FALCON at each rank, the others with the registry's "
                                   "defaults (DSConv rank 1, MobileConvV2 t=0.5, ShuffleUnit g=2, α=1)")
        ranks = common.widget(r[1].multiselect, "FALCON ranks", list(range(1, 9)), default=list(DEFAULT_RANKS),
                              key="ranks", disabled=not any(c in PAPER_RANKED for c in convs))

o = st.columns(5)
epochs = int(common.number(o[0], "epochs", "epochs", 3, step=1, key="epochs", help="fine-tuning epochs per run"))
optimizer = common.widget(o[1].selectbox, "optimizer", TRAIN_OPTIMIZERS, key="optimizer",
                          index=TRAIN_OPTIMIZERS.index(ExperimentConfig.optimizer),
                          help="adamw (lr 5e-3 by default) or SGD with Nesterov momentum 0.9 (lr 0.05)")
lr = common.number(o[2], "learning rate", "lr", None, key="lr", format="%g", placeholder="default",
                   help="empty: the optimizer's default")
seed = int(common.number(o[3], "seed", "seed", 0, step=1, key="seed"))
threads = int(common.number(o[4], "CPU threads", "threads", 1, step=1, key="threads",
                            help="intra-op threads while it runs; on a shared or busy CPU one thread is "
                                 "far faster than two competing ones, and leaves a core to the app"))

base = ExperimentConfig(model="digits-vgg", dataset="digits", epochs=epochs, optimizer=optimizer,
                        lr=None if lr is None else float(lr), seed=seed, threads=threads)
with common.guard():
    if mode == "run":
        plan = [dataclasses.replace(base, conv=conv, hparams=hparams, init=init).resolved()]
    elif mode == "plan":  # nothing to run until a plan is chosen
        plan = [plan_source.config(chosen, plan_file, base)] if chosen is not None else []
    else:
        plan = sweep_plan(convs, ranks, base)


@st.cache_data(show_spinner=False, max_entries=64)
def planned_cost(config_json: str) -> dict:
    from falcon.experiments.report import planned_cost as cost

    return cost(ExperimentConfig(**json.loads(config_json)))


def planned_costs() -> pd.DataFrame:
    """What each planned run will fine-tune, counted on the model its conversion builds."""
    rows = []
    for p in plan:
        with common.guard():
            c = planned_cost(json.dumps(p.as_dict(), sort_keys=True))
        rows.append({"conv type": p.label, "init": p.init, "params": c["params"],
                     "MACs": c["macs"], "CR": c["compression_rate"], "CRR": c["computation_reduction_rate"],
                     "rank lowered in": ", ".join(c["clamped"])})
    return pd.DataFrame(rows)


def show_plan() -> None:
    """The runs to start: what each fine-tunes (params, MACs) and the same from a shell."""
    if mode == "plan":
        from falcon.experiments.plans import summary

        st.caption(f"**{plan[0].label}**: {summary(plan[0].plan)}; every other conv is kept. Each replaced layer "
                   "starts from the SVD fit of its trained kernel, as the planner predicted it.")
    st.markdown(f"**The plan: {len(plan)} run{'s' if len(plan) > 1 else ''}, {epochs} epoch{'s' if epochs > 1 else ''} "
                "each**")
    st.dataframe(planned_costs(), key="plan", hide_index=True, column_config={
        "params": st.column_config.NumberColumn(format="localized"),
        "MACs": st.column_config.NumberColumn(format="localized"),
        "CR": st.column_config.NumberColumn(format="%.2f×", help="the baseline's parameters / the run's"),
        "CRR": st.column_config.NumberColumn(format="%.2f×", help="the baseline's MACs / the run's")})
    st.caption("Parameters and MACs of the model each run fine-tunes, counted on what its conversion builds (`clean` "
               "convention: weights, biases, BN and the classifier; the run stores the same count). FALCON and DSConv "
               "are the bare EHP blocks the fit fills, without the BN inside the thesis's DSConv layout that **Model "
               "sizing** counts; a rank above a layer's full rank is lowered to it (the 1-channel stem has full rank 1 "
               "for FALCON). The same from a shell" + (f" (the plan saved as `{plan_file}`)" if mode == "plan" else "")
               + ":")
    st.code(cli_command(plan, sweep=mode == "sweep", plan_file=plan_file), language="bash")


if plan:  # (a plan's page before a plan is chosen: nothing to start)
    show_plan()


def start() -> None:
    """Start the plan for this session (refused, with the reason, while any session's experiment runs: two sessions
    may press Start at once)."""
    try:
        st.session_state[Keys.EXPERIMENT.job] = slot.start(me, SweepRunner(plan))
    except FalconError as e:
        st.session_state[Keys.EXPERIMENT_BUSY] = str(e)


b = st.columns([1.6, 5])
b[0].button("Start the sweep" if mode == "sweep" else "Start the run", key="exp_start", type="primary",
            disabled=running or busy is not None or not plan, on_click=start, icon=":material/play_arrow:")
if refused := st.session_state.pop(Keys.EXPERIMENT_BUSY, None):
    st.error(refused[0].upper() + refused[1:] + ".", icon=":material/error:")
runner = slot.job(me)
running = runner is not None and not runner.done
busy = slot.busy(me)

# ---------------------------------------------------------------------------------------------- live progress


@st.fragment(run_every=1.0 if running or busy else None)
def live() -> None:
    slot.seen(me)
    now_busy = slot.busy(me)
    if now_busy:  # another session's experiment: that it runs and how long it has left, nothing of its data
        st.warning(f"{now_busy[0].upper()}{now_busy[1:]}: an experiment started now would compete for the cores, "
                   "so Start is off until it ends.", icon=":material/hourglass_top:")
        if slot.job(me) is None:
            return  # no "press Start" beside a Start that is off
    elif busy:
        st.rerun(scope="app")  # the other session's experiment ended: Start is free again
    runner: SweepRunner | None = common.job_panel(  # ended: the whole page redraws (buttons, stored runs)
        Keys.EXPERIMENT, slot.job(me), running, failed="The experiment failed: ", columns=(6, 1), idle=(
            "Press **Start**: the training curves are drawn live, each finished run lands in the table, and "
            "**Stop** ends the current run at its next step (it is stored as stopped)."))
    if runner is None:
        return
    snap = runner.snapshot()
    if snap["status"] == "stopped":
        st.warning(f"Stopped after {snap['elapsed']:.0f} s; {len(snap['results'])} of {snap['runs']} runs ended "
                   "(a stopped run is stored as stopped, without a fine-tuned accuracy).", icon=":material/stop_circle:")
    elif snap["status"] == "completed":
        st.success(f"{snap['runs']} run{'s' if snap['runs'] > 1 else ''} in {snap['elapsed']:.0f} s, stored "
                   f"(sweep {snap['sweep_id']}).", icon=":material/check_circle:")
    records = snap["results"]
    curves = {run: {**curve, "conv": runner.configs[run - 1].conv, "label": runner.configs[run - 1].label}
              for run, curve in snap["curves"].items()}
    baseline = next((r["baseline_accuracy"] for r in records if r.get("baseline_accuracy") is not None), None)
    if curves:
        common.plot(training_figure(curves, baseline), key="exp_curves", filename="falcon-fine-tuning")
    if records:
        show_runs(runs_frame(records), key="exp_runs")
        done = [r for r in records if r.get("status") == "completed"]
        if done and not running:
            from falcon.experiments.store import accuracy_points

            own = pd.DataFrame(accuracy_points(runs=done))
            fig = accuracy_figure(common.paper_results().iloc[0:0], own, x="params_m", log_x=True,
                                  panels=[(done[0]["model"], done[0]["dataset"])], cols=1)
            common.plot(fig, key="exp_accuracy", filename="falcon-experiment-accuracy")
            st.page_link(common.PAGE_BY_FILE["accuracy.py"].path, label="All runs beside the thesis's points",
                         icon=":material/scatter_plot:")


def show_runs(df: pd.DataFrame, key: str) -> None:
    df = df.drop(columns=["conv"]).assign(rank=df["rank"].astype("string").fillna(""))  # blank, not "None"
    st.dataframe(df, key=key, hide_index=True, column_config={
        "run_id": st.column_config.TextColumn("run"),
        "label": st.column_config.TextColumn("conv type"),
        "params": st.column_config.NumberColumn("params", format="localized"),
        "macs": st.column_config.NumberColumn("MACs", format="localized"),
        "compression_rate": st.column_config.NumberColumn("CR", format="%.2f×"),
        "computation_reduction_rate": st.column_config.NumberColumn("CRR", format="%.2f×"),
        "baseline_accuracy": st.column_config.NumberColumn("baseline", format="percent"),
        "training_free_accuracy": st.column_config.NumberColumn("training-free", format="percent"),
        "finetuned_accuracy": st.column_config.NumberColumn("fine-tuned", format="percent"),
        "delta_points": st.column_config.NumberColumn("Δ (points)", format="%+.2f"),
        "seconds": st.column_config.NumberColumn("s", format="%.1f"),
    })


live()

# ---------------------------------------------------------------------------------------------- the store
st.subheader("Stored runs")
with common.guard(stop=False):
    from falcon.experiments.store import db_path, list_runs

    hidden, count = common.hidden_sweep()  # another session's running sweep: its runs once it ends
    stored = [r for r in list_runs() if hidden is None or r.get("sweep_id") != hidden]
    common.hidden_note(count)
    path = db_path()
    if stored:
        df = runs_frame(stored)
        show_runs(df.iloc[::-1], key="stored_runs")  # newest first
        st.download_button("Runs (CSV)", df.to_csv(index=False).encode(), file_name="falcon-runs.csv",
                           mime="text/csv", icon=":material/download:", key="runs_csv", on_click="ignore")
    else:
        st.caption("No stored runs yet.")
    st.caption(f"Results database: `{path}` (set `FALCON_RESULTS_DB` to use another). "
               "`python -m falcon results` lists the same runs.")
