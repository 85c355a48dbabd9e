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
classes = common.widget(c[1].number_input, "classes", 1, 100000, None, step=1, key="classes",
                        placeholder=f"{defaults['classes']} (default)", help="empty: the model's own")
size = common.widget(c[2].number_input, "input size H=W", 8, 2048, None, step=1, key="size",
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
    target = common.widget(b[0].number_input, "target (× fewer)", 1.01, 1000.0, 4.0, step=0.5, key="target",
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
def model_measurement_lock():
    """One whole-model measurement at a time on this machine, across sessions (they would compete for cores)."""
    import threading

    return threading.Lock()


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
    batch = common.widget(mc[2].number_input, "batch size", 1, int(limits.hi("batch_size")), 1, key="measure_batch",
                          bind=False)
    import torch as _torch

    most = int(limits.hi("threads"))  # 4 × the cores: more only contend, and far more crash OpenMP
    threads = common.widget(mc[3].number_input, "threads", 1, most, min(_torch.get_num_threads(), most), key="measure_threads",
                            bind=False, help="CPU threads for the run (default: torch's)")
    rounds = common.widget(mc[4].number_input, "rounds", 1, 50, DEFAULT_ROUNDS, key="measure_rounds", bind=False,
                           help=f"interleaved rounds; {DEFAULT_ROUNDS} keep repeated runs within ±10% on a shared "
                                "2-core machine, fewer are quicker and noisier")
    min_time = common.widget(mc[5].number_input, "s per visit", 0.01, 2.0, 0.2, step=0.05, format="%g",
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

    def start_model_measurement() -> None:
        from falcon.errors import FalconError
        from falcon.jobs import Job
        from falcon.modelbench import measure_model

        lock = model_measurement_lock()
        kwargs = dict(conv=[(conv, json.loads(hparams_json))], input_size=input_size, num_classes=num_classes,
                      runtimes=tuple(runtimes), memory_format=layout, batch_size=int(batch), threads=int(threads),
                      rounds=int(rounds), min_run_time=float(min_time))

        def target(job: Job):
            if not lock.acquire(blocking=False):
                raise FalconError("another model measurement is running on this machine; wait for it to finish")
            try:
                return measure_model(common.app_model(model), progress=job.report, should_stop=job.should_stop, **kwargs)
            finally:
                lock.release()

        common.start_job(MEASURE, Job(target, name="measure"), choice)

    if st.button("Measure", key="measure_start", type="primary", icon=":material/timer:",
                 disabled=measuring or not runtimes or not measurable):
        start_model_measurement()
        session_job, measuring = st.session_state[MEASURE.job], True


def show_measurement(result) -> None:
    """A finished (or stopped) measurement: headline, why, where the time goes, the table, notes, downloads."""
    from falcon.views.latency import (breakdown_check, breakdown_figure, headline, layer_speedup_figure, run_caption,
                                      sorted_notes, timings_frame)

    res = result.as_dict()
    if res["stopped"]:
        st.warning("Stopped before the end: what was measured so far.", icon=":material/stop_circle:")
    st.caption(run_caption(res))
    for c in res["conversions"]:
        items = headline(res, c)
        for col, item in zip(st.columns(len(items)), items):
            col.metric(item["label"], item["text"], help=item["help"] or None)
        b = c.get("breakdown")
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
    d[0].download_button("JSON", json.dumps(res, indent=2).encode(), file_name=f"{name}.json",
                         mime="application/json", icon=":material/download:", key="measure_json", on_click="ignore")
    d[1].download_button("CSV", frame.to_csv(index=False).encode(), file_name=f"{name}.csv", mime="text/csv",
                         icon=":material/download:", key="measure_csv", on_click="ignore")


@st.fragment(run_every=0.5 if measuring else None)
def measure_panel() -> None:
    job = st.session_state.get(MEASURE.job)
    if job is not None and job.running:  # shown while it runs, whatever is chosen above (its Stop with it)
        earlier = st.session_state.get(MEASURE.args)
        if earlier and earlier != choice:
            st.caption(f"Measuring {measure_choice(earlier)}.")
    else:
        job = common.current_job(MEASURE, choice)
    kept = st.session_state.get(MEASURE.job) is not None and job is None
    if kept and measuring:  # it ended while another choice was shown: redraw the page (its Measure button) once
        st.rerun(scope="app")
    idle = (f"The last measurement was for {measure_choice(st.session_state[MEASURE.args])}: choose that again "
            "to see it, or measure this one." if kept else
            "Press Measure. vgg19-cifar with FALCON k=1 (eager, both layouts, 10 rounds) takes about 30 s on a "
            "2-core CPU, digits-vgg a little less; Stop ends it early with what was measured.")
    if conv == "standard" and job is None and not kept:
        return
    job = common.job_panel(MEASURE, job, measuring, idle=idle, failed="The measurement failed: ")
    if job is not None and job.done and not job.error and job.result is not None:
        show_measurement(job.result)


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
st.subheader("Per layer")
layers = result.frame()
what = common.widget(st.segmented_control, "chart", ["macs", "params"], default="macs", key="chart", required=True,
                     format_func=lambda w: "MACs" if w == "macs" else "parameters", bind=False)
common.plot(per_layer_figure(layers, result.standard.table(), what=what or "macs"), key="per_layer",
            filename=f"{model}-{conv}-per-layer")
show_all = st.toggle("show every module (BN, activations, pooling)", value=False, key="all_layers")
shown = result.frame(every_module=show_all)
st.dataframe(shown, key="layer_table", hide_index=True, column_config={
    "params": st.column_config.NumberColumn(format="localized"),
    "macs": st.column_config.NumberColumn("MACs", format="localized"),
    "kind": st.column_config.TextColumn("kind", help="conv type of a replaced or kept conv; module class otherwise"),
    **{f"{k}_macs": st.column_config.NumberColumn(f"{KIND_LABELS.get(k, k)} MACs", format="localized",
                                                  help=f"MACs of {KIND_LABELS.get(k, k)} operators counted in this row")
       for k in MAC_KINDS},
})


st.download_button("Download per-layer CSV", result.csv(), file_name=f"{model}-{conv}-{r['convention']}-layers.csv",
                   mime="text/csv", icon=":material/download:", key="csv")

# ---------------------------------------------------------------------------------------------- plan
import plan_panel  # noqa: E402  (app/plan_panel.py: per-layer type and rank for a target)

plan_panel.show(model)
