"""Model sizing: a whole model with a conv type in place of its replaceable convs."""
import json

import pandas as pd
import streamlit as st

import common
from falcon.convtypes import CONV_TYPES
from falcon.counting import CONVENTIONS
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
                      help="the thesis's four models, the bundled digits-vgg, or any torchvision classification model")
defaults = common.model_defaults(model)
classes = common.widget(c[1].number_input, "classes", 1, 100000, None, step=1, key="classes",
                        placeholder=f"{defaults['classes']} (default)", help="empty: the model's own")
size = common.widget(c[2].number_input, "input size H=W", 8, 2048, None, step=1, key="size",
                     placeholder=f"{defaults['input_size']} (default)", help="empty: the model's own")
conv = common.widget(c[3].selectbox, "conv type", list(CONV_TYPES), index=list(CONV_TYPES).index("falcon"), key="conv",
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
with st.spinner("sizing…"), common.guard():
    r = common.size_model(model, conv, num_classes, input_size, convention or "paper", True if stem else None,
                          json.dumps(hparams, sort_keys=True))

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
st.caption(f"{r['replaced_layers']} conv layers replaced · {r['num_classes']} classes · "
           f"{r['input_size']}×{r['input_size']} input · convention '{r['convention']}' · "
           f"standard model: {r['standard_params']:,} params, {r['standard_macs']:,} MACs · sized in {r['seconds']:.2f} s")
for note in r["notes"]:
    st.info(note, icon=":material/info:")

# ---------------------------------------------------------------------------------------------- the paper
if model in PAPER_MODELS:
    st.subheader("The thesis's numbers beside ours")
    paper = paper_rows(model, conv, r["hparams"], r["num_classes"], r["input_size"])
    if paper.empty:
        from falcon.paper import DATASET_CLASSES, DATASET_INPUT_SIZE
        from falcon.paper import PAPER_MODELS as PAPER_NAMES

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
        why = {
            "paper": "Under the 'paper' convention the counts follow the thesis's rules (conv and linear MACs with "
                     "their bias, every parameter plus the BN that the reference FALCON module creates and never "
                     "uses); the thesis prints two decimals of millions, so differences under ~0.005 M are rounding.",
            "clean": "The 'clean' convention leaves out the BN that the reference FALCON module creates and never "
                     "uses (2·N parameters per replaced layer); switch to 'paper' to reproduce the published column.",
            "thop": "thop also counts BN and pooling operations and only the parameters of modules it knows, so it "
                    "differs from the thesis's column; switch to 'paper' to reproduce it.",
        }[r["convention"]]
        extra = ""
        if conv == "shuffle":
            extra = (" ShuffleUnit's reference code was never published: the layout used here is the closest found "
                     "to the published counts, which no layout tried reproduces better than ~6–8%.")
        elif conv == "mobilev2":
            extra = " MobileConvV2's published parameter counts are reproduced within 0.7% (MACs exactly)."
        st.caption(f"Largest difference {worst:.2f}%. {why}{extra}")

# ---------------------------------------------------------------------------------------------- per layer
st.subheader("Per layer")
layers = pd.DataFrame(r["layers"])
what = common.widget(st.segmented_control, "chart", ["macs", "params"], default="macs", key="chart", required=True,
                     format_func=lambda w: "MACs" if w == "macs" else "parameters", bind=False)
common.plot(per_layer_figure(layers, r["standard_layers"], what=what or "macs"), key="per_layer",
            filename=f"{model}-{conv}-per-layer")
show_all = st.toggle("show every module (BN, activations, pooling)", value=False, key="all_layers")
shown = layers if show_all else layers[(layers["params"] > 0) | (layers["macs"] > 0)]
st.dataframe(shown, key="layer_table", hide_index=True, column_config={
    "params": st.column_config.NumberColumn(format="localized"),
    "macs": st.column_config.NumberColumn("MACs", format="localized"),
    "kind": st.column_config.TextColumn("kind", help="conv type of a replaced or kept conv; module class otherwise"),
})


def csv_bytes() -> bytes:
    head = pd.DataFrame([{"name": "TOTAL", "kind": f"{conv} {json.dumps(r['hparams'])}", "shape": r["convention"],
                          "input": "", "output": "", "params": r["params"], "macs": r["macs"]},
                         {"name": "TOTAL standard", "kind": "standard", "shape": r["convention"], "input": "",
                          "output": "", "params": r["standard_params"], "macs": r["standard_macs"]}])
    return pd.concat([layers, head], ignore_index=True).to_csv(index=False).encode()


st.download_button("Download per-layer CSV", csv_bytes(), file_name=f"{model}-{conv}-{r['convention']}-layers.csv",
                   mime="text/csv", icon=":material/download:", key="csv")
