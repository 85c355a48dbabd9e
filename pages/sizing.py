"""Model sizing: a whole model with a conv type in place of its replaceable convs."""
import json

import streamlit as st

import common
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
    budget_hp = json.dumps({k: v for k, v in hparams.items() if k != "rank"}, sort_keys=True)
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
st.subheader(f"Measure this model on {dev.short}")
st.caption("Times the whole model and its conversion (FALCON fused and BN folded: the form you would deploy) on a "
           "random batch: warm-up, interleaved rounds, median and IQR, each runtime's output checked against eager "
           "PyTorch; then profiles where the eager time goes. Same harness as `python -m falcon bench --model`.")


@st.cache_resource(show_spinner=False)
def model_measurement_lock():
    """One whole-model measurement at a time on this machine, across sessions (they would compete for cores)."""
    import threading

    return threading.Lock()


@st.cache_resource(show_spinner=False)
def runtime_choices() -> dict[str, str]:
    """Runtime -> '' when available here, else the one-line reason."""
    import torch

    from falcon.modelbench import RUNTIMES, runtime_info

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {rt: ("" if (i := runtime_info(rt, device)).available else i.reason) for rt in RUNTIMES}


if conv == "standard":
    st.caption("The standard conv is the original model: pick another conv type to compare against.")
else:
    from falcon.jobs import Job
    from falcon.modelbench import DEFAULT_ROUNDS

    available = runtime_choices()
    mc = st.columns([2.4, 1.4, 0.9, 0.9, 0.9])
    runtimes = mc[0].multiselect("runtimes", [rt for rt, why in available.items() if not why], default=["eager"],
                                 key="measure_runtimes", help="eager PyTorch, torch.compile (inductor), ONNX Runtime")
    layout = mc[1].selectbox("layout (eager, compile)", ["auto", "contiguous", "channels_last"], key="measure_layout",
                             help="auto measures NCHW and NHWC and compares the fastest of each")
    batch = mc[2].number_input("batch size", 1, 4096, 1, key="measure_batch")
    import torch as _torch

    threads = mc[3].number_input("threads", 1, 512, _torch.get_num_threads(), key="measure_threads")
    rounds = mc[4].number_input("rounds", 1, 50, DEFAULT_ROUNDS, key="measure_rounds",
                                help=f"interleaved rounds; {DEFAULT_ROUNDS} keep repeated runs within ±10% here")
    for rt, why in available.items():
        if why:
            st.caption(f"{rt}: {why}")
    args = dict(model=model, conv=conv, hparams=hparams_json, input_size=input_size, num_classes=num_classes,
                runtimes=tuple(runtimes), layout=layout, batch=int(batch), threads=int(threads), rounds=int(rounds))

    def start_model_measurement() -> None:
        from falcon.errors import FalconError
        from falcon.modelbench import measure_model

        lock = model_measurement_lock()

        def target(job: Job):
            if not lock.acquire(blocking=False):
                raise FalconError("another model measurement is running on this machine; wait for it to finish")
            try:
                return measure_model(model, conv=[(conv, json.loads(hparams_json))], input_size=input_size,
                                     num_classes=num_classes, runtimes=tuple(runtimes), memory_format=layout,
                                     batch_size=int(batch), threads=int(threads), rounds=int(rounds),
                                     progress=job.report, should_stop=job.should_stop).as_dict()
            finally:
                lock.release()

        common.start_job(common.Keys.MEASURE, Job(target, name="measure"), args)

    mjob = common.current_job(common.Keys.MEASURE, args)
    measuring = mjob is not None and mjob.running
    if st.button("Measure", key="measure_start", type="primary", icon=":material/timer:",
                 disabled=measuring or not runtimes):
        start_model_measurement()
        measuring = True

    @st.fragment(run_every=0.5 if measuring else None)
    def measure_panel() -> None:
        other = st.session_state.get(common.Keys.MEASURE.job) is not None
        job = common.job_panel(common.Keys.MEASURE, common.current_job(common.Keys.MEASURE, args), measuring,
                               idle=("A measurement for other settings is kept: set them back to see it, or measure "
                                     "again." if other else
                                     "Press Measure. vgg19-cifar with FALCON k=1, eager, 10 rounds takes about a "
                                     "minute on a 2-core CPU; Stop ends it early with what was measured."),
                               failed="The measurement failed: ")
        if job is not None and job.done and not job.error and job.result:
            show_measurement(job.result)

    def show_measurement(res: dict) -> None:
        from falcon.views.latency import breakdown_figure, layer_speedup_figure, result_frame

        if res.get("stopped"):
            st.warning("Stopped before the end: what was measured so far.", icon=":material/stop_circle:")
        rts = "; ".join(f"{i['name']}: {i['version']}" for i in res["runtimes"] if i["available"])
        st.caption(f"{res['model']} ({res['weights']}), input {'×'.join(map(str, res['input_size']))}, batch "
                   f"{res['batch_size']} · {res['device']} ({res['device_name']}), {res['threads']} thread(s), torch "
                   f"{res['torch_version']}; {rts} · {res['rounds']} rounds, {res['seconds']:.0f} s")
        for c in res["conversions"]:
            b = c.get("breakdown") or {}
            m = st.columns(4)
            best = c.get("best")
            m[0].metric(f"{c['label']}: measured speedup", f"{best['speedup']:.2f}×" if best else "–",
                        help=f"in {best['runtime']} ({best['layout']}), its fastest runtime: original "
                             f"{best['original_ms']:.3f} ms / converted {best['converted_ms']:.3f} ms" if best else None)
            m[1].metric("MAC ratio", f"{c['mac_ratio']:.2f}×",
                        help=f"{res['original_macs']:,} / {c['macs']:,} MACs per image (clean convention)")
            m[2].metric("Amdahl ceiling (eager)", f"{b['amdahl_ceiling']:.2f}×" if b.get("amdahl_ceiling") else "–",
                        help="the original's eager time with only the replaced convs shrunk by their MAC ratio")
            m[3].metric("of the MAC ratio", f"{best['speedup'] / c['mac_ratio']:.0%}" if best else "–")
            if b.get("explanation"):
                st.info(b["explanation"], icon=":material/lightbulb:")
            if b:
                f = st.columns(2)
                with f[0]:
                    common.plot(breakdown_figure(c), key=f"measure_breakdown_{c['label']}",
                                filename=f"{res['model']}-{c['conv']}-where-the-time-goes")
                    st.caption(f"Sum of parts / unprofiled passes: {b['original_ratio']:.2f} (original), "
                               f"{b['converted_ratio']:.2f} (converted); "
                               + ("within" if b["adds_up"] else "NOT within") + f" ±{b['tolerance']:.0%}.")
                with f[1]:
                    common.plot(layer_speedup_figure(c), key=f"measure_layers_{c['label']}",
                                filename=f"{res['model']}-{c['conv']}-layer-speedups")
        frame = result_frame(res)
        st.dataframe(frame, key="measure_table", hide_index=True, column_config={
            "median_ms": st.column_config.NumberColumn("median (ms)", format="%.3f"),
            "iqr_ms": st.column_config.NumberColumn("IQR (ms)", format="%.3f"),
            "speedup": st.column_config.NumberColumn("speedup (same runtime, layout)", format="%.2f×"),
            "rel_error": st.column_config.NumberColumn("rel. error vs eager", format="%.1e"),
        })
        for note in res.get("notes", []):
            st.caption(f"Note: {note}")
        d = st.columns([1, 1, 4])
        d[0].download_button("JSON", json.dumps(res, indent=2).encode(), file_name=f"{res['model']}-{conv}-latency.json",
                             mime="application/json", icon=":material/download:", key="measure_json", on_click="ignore")
        d[1].download_button("CSV", frame.to_csv(index=False).encode(), file_name=f"{res['model']}-{conv}-latency.csv",
                             mime="text/csv", icon=":material/download:", key="measure_csv", on_click="ignore")

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
