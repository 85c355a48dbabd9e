"""Model sizing: a whole model with a conv type in place of its replaceable convs."""
import json

import streamlit as st

import common
from falcon import limits
from falcon.convtypes import CONV_TYPES, FITTABLE
from falcon.counting import CONVENTIONS, KIND_LABELS, MAC_KINDS
from falcon.sizing import VERSUS_PAPER
from falcon.views.budget import budget_figure
from falcon.views.figures import per_layer_figure
from falcon.models import PAPER_MODELS
from falcon.paper import paper_comparison, paper_rows

st.title("Model sizing")
st.caption("Parameters and MACs of a whole model after replacing its convolutions with a conv type, next to the "
           "unmodified model. Models are built on PyTorch's meta device: shapes only, no download, no memory.")

names = common.model_names()
c = st.columns([2.2, 1.2, 1.2, 1.4])
model = common.widget(c[0].selectbox, "model", names, index=names.index("resnet18"), key="model",
                      format_func=lambda m: f"{m}  (thesis)" if m in PAPER_MODELS else m,
                      help="the thesis's four models, the bundled digits-vgg, any torchvision classification model, "
                           "and timm's architectures (timm:NAME) when timm is installed; type to search. Models of "
                           "your own: the Python API (falcon.size) or --model file.py:factory in the CLI")
defaults = common.model_defaults(model)
classes = common.number(c[1], "classes", "num_classes", None, step=1, key="classes",
                        placeholder=f"{defaults['classes']} (default)", help="empty: the model's own")
size = common.number(c[2], "input size H=W", "input_size", None, step=1, key="size",
                     placeholder=f"{defaults['input_size']} (default)",
                     help="empty: the model's own" + (f" ({defaults['input_size_from']})" if defaults["input_size_from"] else ""))
conv = common.widget(c[3].selectbox, "conv type", list(CONV_TYPES), index=list(CONV_TYPES).index(FITTABLE[0]), key="conv",
                     format_func=lambda t: CONV_TYPES[t].label)
st.caption(defaults["description"])

c = st.columns([2, 2.2, 1.2])
with c[0]:
    hparams = common.hparam_inputs(conv, per_conv=False)
    if not hparams:
        st.caption("The standard conv has no hyper-parameters: this is the unmodified model.")
convention = common.widget(c[1].segmented_control, "counting convention", list(CONVENTIONS), default="paper",
                           key="convention", required=True, help="; ".join(f"**{k}**: {v}" for k, v in CONVENTIONS.items()))
c[1].caption(CONVENTIONS[convention or "paper"])
stem = common.widget(c[2].checkbox, "replace the first conv too", value=False, key="stem",
                     help="the thesis keeps the first conv standard, except FALCON in the VGG models")

num_classes = int(classes) if classes is not None else defaults["classes"]
input_size = int(size) if size is not None else defaults["input_size"]
hparams_json = json.dumps(hparams, sort_keys=True)
with st.spinner("sizing…"), common.guard():
    result = common.size_result(model, conv, num_classes, input_size, convention or "paper", True if stem else None,
                                hparams_json)
r = result.as_dict()

# ---------------------------------------------------------------------------------------------- totals
label = CONV_TYPES[conv].display_name(**r["hparams"])
st.subheader(f"{model} with {label}")
m = st.columns(4)
m[0].metric("parameters", common.fmt_int(r["params"]),
            delta=f"{r['params'] - r['standard_params']:+,} vs standard" if conv != "standard" else None,
            delta_color="inverse")
m[1].metric("MACs per image", common.fmt_int(r["macs"]),
            delta=f"{r['macs'] - r['standard_macs']:+,} vs standard" if conv != "standard" else None,
            delta_color="inverse")
m[2].metric("compression rate CR", common.fmt_rate(r["compression_rate"]),
            help=f"standard {r['standard_params']:,} params / {r['params']:,}")
m[3].metric("computation reduction CRR", common.fmt_rate(r["computation_reduction_rate"]),
            help=f"standard {r['standard_macs']:,} MACs / {r['macs']:,}")
origin = f" ({defaults['input_size_from']})" if size is None and defaults["input_size_from"] else ""
st.caption(f"{r['replaced_layers']} conv layers replaced · {r['num_classes']} classes · "
           f"{r['input_size']}×{r['input_size']} input{origin} · convention '{r['convention']}' · "
           f"standard model: {r['standard_params']:,} params, {r['standard_macs']:,} MACs · sized in {result.seconds:.2f} s")
for note in r["notes"]:
    st.info(note, icon=":material/info:")
not_counted = getattr(result.count, "not_counted", None)
if not_counted:
    st.warning("Not counted under this convention: " + "; ".join(map(str, not_counted)), icon=":material/warning:")

# ---------------------------------------------------------------------------------------------- budget
if CONV_TYPES[conv].ranked:
    st.subheader("Budget: which rank meets a target?")
    b = st.columns([1.3, 1.6, 4])
    target = common.number(b[0], "target (× fewer)", "target_rate", 4.0, step=0.5, key="target",
                           help="the reduction you need: 4 = four times fewer MACs (or parameters) than the standard model")
    metric = common.widget(b[1].segmented_control, "of", ["crr", "cr"], default="crr", key="target_metric",
                           required=True, format_func=lambda m: "MACs (CRR)" if m == "crr" else "params (CR)")
    budget_hp = json.dumps({k: v for k, v in hparams.items() if k not in CONV_TYPES[conv].rank_names}, sort_keys=True)
    with st.spinner("sizing every rank…"), common.guard():
        budget = common.size_budget(model, conv, metric or "crr", float(target), num_classes, input_size,
                                    convention or "paper", True if stem else None, budget_hp)
    with b[2]:
        (st.success if budget["rank"] is not None else st.warning)(budget["summary"])
        for note in budget["notes"]:
            st.caption(note)
    common.plot(budget_figure(budget), key="budget", filename=f"{model}-{conv}-budget")

# ---------------------------------------------------------------------------------------------- measure
dev = common.device_info()
st.subheader("Measure this model on this machine")
st.caption(f"Times the whole model and its conversion on {dev.short}, each in the form you would deploy (BN folded, "
           "FALCON's branches fused), on a random batch: warm-up, interleaved rounds, median and IQR, every runtime's "
           "output checked against eager PyTorch; then profiles where the eager time goes. The same harness as "
           "`python -m falcon bench --model`.")


@st.cache_resource(show_spinner=False)
def runtime_choices() -> dict[str, str]:
    """Runtime -> '' when it runs here, else the one-line reason it cannot (falcon.modelbench.runtime_info)."""
    from falcon.bench import resolve_device
    from falcon.modelbench import RUNTIMES, runtime_info

    device = resolve_device("auto")
    return {rt: ("" if (i := runtime_info(rt, device)).available else i.reason) for rt in RUNTIMES}


def measure_choice(args: dict) -> str:
    """The model choice a measurement is for, in words."""
    hp = json.loads(args["hparams"])
    return (f"{args['model']} with {CONV_TYPES[args['conv']].display_name(**hp)}, {args['input_size']}×"
            f"{args['input_size']} input, {args['num_classes']} classes")


MEASURE = common.Keys.MEASURE
# what the measurement is for (a change of it hides the result); the settings below it only say how to measure
choice = dict(model=model, conv=conv, hparams=hparams_json, input_size=input_size, num_classes=num_classes)
session_job = st.session_state.get(MEASURE.job)
measuring = session_job is not None and session_job.running
estimate = None  # of the measurement set below (falcon.worker.estimate_model), when there is one
if conv == "standard":
    st.button("Measure", key="measure_start", type="primary", icon=":material/timer:", disabled=True)
    st.caption("The standard conv is the unmodified model: there is nothing to compare it with. Pick another conv "
               "type above to measure the model against its conversion.")
else:
    from falcon.modelbench import DEFAULT_ROUNDS, parse_conversions

    available = runtime_choices()
    mc = st.columns([2.4, 1.5, 0.9, 0.9, 0.9, 0.9])
    runtimes = common.widget(mc[0].multiselect, "runtimes", [rt for rt, why in available.items() if not why],
                             default=["eager"], key="measure_runtimes", bind=False,
                             help="eager: PyTorch as is; compile: torch.compile (inductor, frozen weights; compiling "
                                  "takes a while); onnxruntime: exported to ONNX, run by ONNX Runtime")
    layout = common.widget(mc[1].selectbox, "layout", ["auto", "contiguous", "channels_last"], key="measure_layout",
                           bind=False, help="memory layout for eager and compile (ONNX Runtime: contiguous). auto "
                                            "measures NCHW and NHWC and compares the fastest of each")
    batch = common.number(mc[2], "batch size", "batch_size", 1, step=1, key="measure_batch", bind=False)
    import torch as _torch

    most = int(limits.hi("threads"))  # 4 × the cores: more only contend, and far more crash OpenMP
    threads = common.number(mc[3], "threads", "threads", min(_torch.get_num_threads(), most), step=1,
                            key="measure_threads", bind=False, help="CPU threads for the run (default: torch's)")
    rounds = common.number(mc[4], "rounds", "rounds", DEFAULT_ROUNDS, step=1, key="measure_rounds", bind=False,
                           help=f"interleaved rounds; {DEFAULT_ROUNDS} keep repeated runs within ±10% on a shared "
                                "2-core machine, fewer are quicker and noisier")
    min_time = common.number(mc[5], "s per visit", "min_run_time", 0.2, step=0.05, format="%g",
                             key="measure_min_time", bind=False,
                             help="seconds of timing per model, runtime and layout in each round")
    for rt, why in available.items():
        if why:
            st.caption(f":material/block: **{rt}** is not offered: {why}")
    if stem:
        st.caption("The measurement keeps or replaces the first conv as the thesis does; the checkbox above changes "
                   "the sizing only.")
    measurable = False
    with common.guard(stop=False):
        parse_conversions([(conv, json.loads(hparams_json))])  # one line now (a width multiplier), not after a start
        measurable = True

    if measurable and runtimes:
        with common.guard(stop=False):
            estimate = common.model_estimate(model, json.dumps([(conv, json.loads(hparams_json))]), input_size,
                                             num_classes, tuple(runtimes), layout, int(batch), int(threads),
                                             int(rounds), float(min_time))
    refused = estimate is not None and estimate.refused

    def start_model_measurement() -> None:
        """Queue the measurement in a worker process (the model resolved there by its registry name)."""
        from falcon.modelbench import measure_model
        from falcon.worker import WorkerTask

        kwargs = dict(conv=[(conv, json.loads(hparams_json))], input_size=input_size, num_classes=num_classes,
                      runtimes=tuple(runtimes), memory_format=layout, batch_size=int(batch), threads=int(threads),
                      rounds=int(rounds), min_run_time=float(min_time))
        common.submit_measurement(MEASURE, WorkerTask(measure_model, kwargs, registry_model=model), estimate,
                                  "measure", choice)

    if st.button("Measure", key="measure_start", type="primary", icon=":material/timer:",
                 disabled=measuring or not runtimes or not measurable or refused):
        start_model_measurement()
        session_job = st.session_state.get(MEASURE.job)
        measuring = session_job is not None and session_job.running
    if refused and not measuring:
        common.estimate_line(estimate)


def show_measurement(job) -> bool:
    """A finished (or stopped) measurement: headline, why, where the time goes, the table, notes, downloads. Figures
    that cannot all be true (:func:`falcon.reliability.assess_model`) show as "unreliable" with the reasons and a
    Rerun button, their details folded away. True when Rerun was pressed."""
    from falcon.reliability import assess_model
    from falcon.views.latency import (breakdown_check, breakdown_figure, headline, layer_speedup_figure, run_caption,
                                      sorted_notes, timings_frame)

    result = job.result
    res = result.as_dict()
    verdict = assess_model(result, load_samples=job.loads or None, seconds=job.seconds or None,
                           cpu_samples=getattr(job, "cpu_samples", None) or None)
    rerun = False
    if res["stopped"]:
        st.warning("Stopped before the end: what was measured so far.", icon=":material/stop_circle:")
    st.caption(run_caption(res) + f" · load average {' → '.join(f'{v:g}' for v in verdict.load) or 'unknown'}")
    for c in res["conversions"]:
        reasons = verdict.group_reasons(c["label"])
        if reasons:
            rerun = common.unreliable(reasons, f"measure_rerun_{c['label']}") or rerun
        items = headline(res, c)
        for col, item in zip(st.columns(len(items)), items):
            figure = verdict.figure(f"{c['label']}, {item['label'].removeprefix('speedup, ').rstrip(' ★')}")
            eager = verdict.figure(f"{c['label']}, eager")
            doubtful = item["value"] is not None and (
                (figure is not None and (verdict.run_reasons or not figure.reliable))
                or (item["label"] == "Amdahl ceiling" and (verdict.run_reasons or (eager and not eager.reliable))))
            if doubtful:
                col.metric(item["label"], "unreliable", help="; ".join(figure.reasons if figure and figure.reasons
                                                                      else reasons))
            else:
                help_ = item["help"] + (f" Spread {figure.spread:.0%} (IQR / median)." if figure and figure.spread
                                        is not None else "")
                col.metric(item["label"], item["text"], help=help_ or None)
        b = c.get("breakdown")
        details = st.expander("The unreliable measurement in detail (for diagnosis, not for quoting)") if reasons \
            else st.container()
        with details:
            if b and b.get("explanation"):
                st.caption("A runtime's speedup sets the converted model's fastest layout against the original's "
                           "fastest; the line below compares both in one layout, the one the breakdown profiles.")
                st.info(b["explanation"], icon=":material/lightbulb:")
            if b:
                f = st.columns([2, 3])
                with f[0]:
                    common.plot(breakdown_figure(c), key=f"measure_breakdown_{c['label']}",
                                filename=f"{res['model']}-{c['conv']}-where-the-time-goes")
                    level, check = breakdown_check(b)
                    (st.warning if level == "warning" else st.caption)(check)
                with f[1]:
                    common.plot(layer_speedup_figure(c), key=f"measure_layers_{c['label']}",
                                filename=f"{res['model']}-{c['conv']}-layer-speedups")
            elif not res["stopped"]:
                st.caption("No breakdown: it needs eager among the runtimes.")
    frame = timings_frame(result.rows())
    for c in res["conversions"]:  # an unreliable conversion's speedups are not numbers to quote
        if verdict.group_reasons(c["label"]):
            frame.loc[frame["model"] == c["label"], "speedup"] = float("nan")
    st.dataframe(frame, key="measure_table", hide_index=True, placeholder="–", column_config={
        "median_ms": st.column_config.NumberColumn("median (ms)", format="%.3f", help="per batch"),
        "iqr_ms": st.column_config.NumberColumn("IQR (ms)", format="%.3f"),
        "speedup": st.column_config.NumberColumn("speedup", format="%.2f×",
                                                 help="the original's median / this one, same runtime and layout"),
        "rel_error": st.column_config.NumberColumn("rel. error", format="%.1e",
                                                   help="output vs eager fp32 of the same model"),
    })
    for level, note in sorted_notes(res["notes"]):
        (st.warning if level == "warning" else st.info)(note, icon=":material/warning:" if level == "warning"
                                                        else ":material/info:")
    name = f"{res['model']}-{res['conversions'][0]['conv'] if res['conversions'] else 'model'}-latency"
    d = st.columns([1, 1, 5])
    d[0].download_button("JSON", json.dumps({**res, **verdict.as_dict()}, indent=2).encode(), file_name=f"{name}.json",
                         mime="application/json", icon=":material/download:", key="measure_json", on_click="ignore")
    d[1].download_button("CSV", frame.to_csv(index=False).encode(), file_name=f"{name}.csv", mime="text/csv",
                         icon=":material/download:", key="measure_csv", on_click="ignore")
    return rerun


def measure_hint() -> str:
    """How long the measurement set above would take here: the estimate its Measure button was checked against
    (never a fixed number: resnet18 takes minutes where digits-vgg takes seconds)."""
    if estimate is None:
        return ""
    return (f"Measuring {measure_choice(choice)} ({', '.join(runtimes)}, layout {layout}, {int(rounds)} rounds) "
            f"takes {estimate.describe()} on this machine (estimated from its MACs and bytes at this machine's "
            "measured rate).")


@st.fragment(run_every=0.5 if measuring else None)
def measure_panel() -> None:
    # a running job is shown whatever is chosen above (its Stop with it)
    job, kept = common.shown_job(MEASURE, choice, lambda earlier: f"Measuring {measure_choice(earlier)}.")
    if kept and measuring:  # it ended while another choice was shown: redraw the page (its Measure button) once
        st.rerun(scope="app")
    if conv == "standard" and job is None and not kept:
        return
    idle = (f"The last measurement was for {measure_choice(st.session_state[MEASURE.args])}: choose that again "
            "to see it, or measure this one." if kept else f"Press Measure. {measure_hint()} Stop ends it early with "
            "what was measured.")
    job = common.measurement_panel(MEASURE, job, measuring, idle=idle, failed="The measurement failed: ")
    if job is not None and job.done and not job.error:
        if job.result is None:
            st.warning("Stopped during a timing: the worker process was ended, and nothing had finished." if job.ran
                       else "Stopped before it started: nothing was measured.", icon=":material/stop_circle:")
        elif show_measurement(job) and common.rerun_measurement(MEASURE, job) is not None:
            st.rerun(scope="app")


measure_panel()

# ---------------------------------------------------------------------------------------------- the paper
if model in PAPER_MODELS:
    st.subheader("The thesis's numbers beside ours")
    paper = paper_rows(model, conv, r["hparams"], r["num_classes"], r["input_size"])
    if paper.empty:
        from falcon.paper import DATASET_CLASSES, DATASET_INPUT_SIZE
        from falcon.paper import MODEL_BY_PAPER_NAME as PAPER_NAMES

        have = common.paper_results()
        have = have[have["model"].isin([p for p, ours in PAPER_NAMES.items() if ours == model])]
        where = ", ".join(f"{d} ({DATASET_CLASSES[d]} classes, {DATASET_INPUT_SIZE[d]}×{DATASET_INPUT_SIZE[d]})"
                          for d in dict.fromkeys(have["dataset"]))
        st.info(f"The thesis has no row for this choice. It reports {model} on {where} with the standard conv, "
                "FALCON rank 1–3, DSConv, MobileConvV2 (t = 0.5) and ShuffleUnit 2× (g = 2).", icon=":material/info:")
    else:
        cmp = paper_comparison(paper, r["params"], r["macs"])
        st.dataframe(cmp, key="paper_table", hide_index=True, column_config={
            "paper (M)": st.column_config.NumberColumn(format="%.2f"),
            "ours (M)": st.column_config.NumberColumn(format="%.3f"),
            "difference (M)": st.column_config.NumberColumn(format="%+.3f"),
            "difference (%)": st.column_config.NumberColumn(format="%+.2f%%"),
        })
        worst = cmp["difference (%)"].abs().max()
        why = VERSUS_PAPER.get(r["convention"], "")
        extra = f" {CONV_TYPES[conv].paper_agreement}" if CONV_TYPES[conv].paper_agreement else ""
        st.caption(f"Largest difference {worst:.2f}%. {why}{extra}")

# ---------------------------------------------------------------------------------------------- per layer
#: the chosen layer's session key: the EHP fit page's layer box has the same key, so a layer chosen in one is
#: chosen in the other (where the model has it); its URL parameter is "layer" as well
LAYER = "layer"


def chosen_layer(known: set[str]) -> str | None:
    """The layer chosen in the chart, the table, or by a link's ``layer`` (when this model has it)."""
    raw, written = st.query_params.get(LAYER), st.session_state.get(f"_url.{LAYER}")
    if raw is not None and raw != written:  # a link chose it
        if raw in known:
            st.session_state[LAYER] = raw
        else:
            st.warning(f"The link's layer={raw[:60]!r} is not a layer of {model}; no layer is chosen.",
                       icon=":material/link_off:")
    name = st.session_state.get(LAYER)
    name = name if name in known else None
    if name is not None:
        st.query_params[LAYER] = st.session_state[f"_url.{LAYER}"] = name
    elif LAYER in st.query_params:  # none chosen (or the link's is unknown, and said so above)
        del st.query_params[LAYER]
        st.session_state[f"_url.{LAYER}"] = None
    return name


def pick_from_chart() -> None:
    points = st.session_state["per_layer"].selection.points
    if points:
        st.session_state[LAYER] = points[0]["x"]


def pick_from_table(key: str, names: list[str]) -> None:
    rows = st.session_state[key].selection.rows
    st.session_state[LAYER] = names[rows[0]] if rows else None


def fit_link(name: str) -> dict[str, str] | None:
    """The EHP fit page's URL parameters for the layer ``name`` of this model (None when no weights can be had
    there without an upload: then the page opens on the checkpoint upload for this architecture)."""
    from falcon.convtypes import FITTABLE

    params = {"layer": name, "fit": conv if conv in FITTABLE else FITTABLE[0]}
    rank = hparams.get("rank")
    if rank is not None and conv in FITTABLE:
        params["k"] = str(int(rank))
    if model == "digits-vgg":
        return {"source": "digits-vgg", **params}
    if model in common.torchvision_names():
        return {"source": "torchvision", "tv_model": model, **params}
    return {"source": "checkpoint", "ckpt_model": model, **params}


def show_chosen(row) -> None:
    """The chosen layer in words, with its link to the EHP fit page."""
    import pandas as pd

    std = pd.DataFrame(result.standard.table()).set_index("name")
    was = std.loc[row.name] if row.name in std.index else None
    words = (f"**{row.name}** ({row['kind']}{', ' + row['shape'] if row['shape'] else ''}): {int(row['params']):,} "
             f"parameters and {int(row['macs']):,} MACs" +
             (f", against {int(was['params']):,} and {int(was['macs']):,} in the standard model" if was is not None
              and conv != "standard" else ""))
    box = st.container(border=True, key="chosen_layer")
    box.markdown(f"Chosen layer: {words}.")
    is_conv = row["kind"] in CONV_TYPES or row["kind"] == "standard"
    if is_conv:
        link = fit_link(row.name)
        box.page_link(common.PAGE_BY_FILE["ehp_fit.py"].path, label=f"Fit {row.name} on the EHP fit page",
                      icon=":material/tune:", query_params=link)
        if link["source"] == "checkpoint":
            box.caption(f"{model} has no bundled or torchvision weights: the EHP fit page asks for a checkpoint of "
                        "it, then opens this layer.")
    else:
        box.caption("Not a convolution: the EHP fit page fits convolutions only.")


st.subheader("Per layer")
st.caption("Click a bar or a table row to choose a layer: the chart points at it, the table selects it, and the "
           "EHP fit page opens with it (the choice is in the link).")
layers = result.frame()
chosen = chosen_layer(set(result.frame(every_module=True)["name"]))
what = common.widget(st.segmented_control, "chart", ["macs", "params"], default="macs", key="chart", required=True,
                     format_func=lambda w: "MACs" if w == "macs" else "parameters")
common.plot(per_layer_figure(layers, result.standard.table(), what=what or "macs", selected=chosen), key="per_layer",
            filename=f"{model}-{conv}-per-layer", on_select=pick_from_chart, selection_mode="points")
show_all = common.widget(st.toggle, "show every module (BN, activations, pooling)", value=False, key="all_layers")
shown = result.frame(every_module=show_all)
names = list(shown["name"])
table_key = f"layer_table.{chosen}"  # a new table when the choice came from elsewhere: it shows it selected
st.dataframe(shown, key=table_key, hide_index=True, on_select=lambda: pick_from_table(table_key, names),
             selection_mode="single-row",
             selection_default={"selection": {"rows": [names.index(chosen)]}} if chosen in names else None,
             column_config={
    "params": st.column_config.NumberColumn(format="localized"),
    "macs": st.column_config.NumberColumn("MACs", format="localized"),
    "kind": st.column_config.TextColumn("kind", help="conv type of a replaced or kept conv; module class otherwise"),
    **{f"{k}_macs": st.column_config.NumberColumn(f"{KIND_LABELS.get(k, k)} MACs", format="localized",
                                                  help=f"MACs of {KIND_LABELS.get(k, k)} operators counted in this row")
       for k in MAC_KINDS},
})
if chosen is not None:
    show_chosen(result.frame(every_module=True).set_index("name").loc[chosen])


st.download_button("Download per-layer CSV", result.csv(), file_name=f"{model}-{conv}-{r['convention']}-layers.csv",
                   mime="text/csv", icon=":material/download:", key="csv")

# ---------------------------------------------------------------------------------------------- plan
import plan_panel  # noqa: E402  (app/plan_panel.py: per-layer type and rank for a target)

plan_panel.show(model)
