"""EHP fit: fit one trained layer with FALCON or DSConv; the SVD optimum and live gradient descent."""
import streamlit as st

import common
from common import Keys
from falcon.errors import FalconError
from falcon.convtypes import CONV_TYPES, FITTABLE
from falcon.fits import fitter_of
from falcon.views.figures import energy_figure, error_by_rank_figure, kernel_figure, loss_figure
from falcon.probe import FIT_SOURCES
from falcon.jobs import Job
from falcon.views.explain import fit_summary

st.title("EHP fit")
st.caption("Fit a trained convolution's kernel K with the EHP of a pointwise and a depthwise kernel. The best "
           "rank-k fit has a closed form (a truncated SVD per channel, as in Network Decoupling); the thesis "
           "used gradient descent, which you can watch converge toward it.")

# ---------------------------------------------------------------------------------------------- the model
c = st.columns([1.5, 2.5])
source = common.widget(c[0].segmented_control, "model source", list(FIT_SOURCES), default="digits-vgg",
                       key="source", required=True, format_func=lambda s: FIT_SOURCES[s])
name, checkpoint = "digits-vgg", None
with c[1]:
    if source == "torchvision":
        tv = common.torchvision_names()
        name = common.widget(st.selectbox, "torchvision model (pretrained weights)", tv,
                             index=tv.index("resnet18") if "resnet18" in tv else 0, key="tv_model",
                             help="weights come from torchvision's cache (TORCH_HOME), or are downloaded when online")
    elif source == "checkpoint":
        cc = st.columns([1, 1.4])
        name = common.widget(cc[0].selectbox, "architecture", common.model_names(), key="ckpt_model",
                             help="the model the state_dict belongs to")
        upload = cc[1].file_uploader("state_dict (.pt / .pth)", type=["pt", "pth", "bin"], key="ckpt_file")
        if upload is None:
            st.info("Upload a checkpoint (a state_dict saved with torch.save) of the architecture on the left.",
                    icon=":material/upload_file:")
            st.stop()
        checkpoint = upload.getvalue()
    else:
        st.caption("digits-vgg: a small VGG-style CNN trained by this project on the bundled 8×8 handwritten digits "
                   "(upsampled to 32×32); its held-out split measures the accuracy of a fitted layer.")

try:
    with st.spinner("loading the model…"), common.guard(falcon_errors=False):
        loaded = common.load_fit_model(source, name, checkpoint)
except FalconError as e:
    st.error(str(e), icon=":material/error:")
    st.button("Try again", key="retry_load", on_click=common.forget_load_failures, icon=":material/refresh:")
    st.stop()
layers = loaded.layers
if not layers:
    st.error("This model has no convolution that FALCON can fit (groups 1, square kernel larger than 1×1).")
    st.stop()

# ---------------------------------------------------------------------------------------------- the fit
by_name = {row["name"]: row for row in layers}
c = st.columns([2.4, 1.1, 0.8, 1.9])
biggest = max(range(len(layers)), key=lambda i: layers[i]["params"])  # default: the layer with most weights
layer = common.widget(c[0].selectbox, f"layer ({len(layers)} fittable convs)", list(by_name), index=biggest, key="layer",
                      format_func=lambda n: by_name[n]["label"])
conv = common.widget(c[1].segmented_control, "fit with", list(FITTABLE), default=FITTABLE[0], key="fit",
                     required=True, format_func=lambda t: CONV_TYPES[t].label)
conv = conv or FITTABLE[0]
fitter = fitter_of(conv)
rank = common.number(c[2], "rank", "rank", 1, step=1, key="k",
                     help="one rank for every ranked hyper-parameter of the type; above the layer's full rank it is "
                          "lowered to it")
METHOD_LABELS = {"svd": "SVD", "gd": "gradient descent", "random": "random", "hooi": "HOOI", "hosvd": "HOSVD",
                 "als": "ALS"}
method = common.widget(c[3].segmented_control, "method", list(fitter.methods), default=fitter.methods[0],
                       key=f"method_{conv}", required=True, format_func=lambda m: METHOD_LABELS.get(m, m),
                       help="SVD: the closed-form optimum; gradient descent: the thesis's fit, drawn live; HOSVD, "
                            "HOOI, ALS: Tucker-2's closed form and refinement, CP's alternating least squares; "
                            "random: a freshly initialized block (no fit)")
row = by_name[layer]
method, rank = method or fitter.methods[0], int(rank)
DEFAULT_LABEL = "SVD optimum" if fitter.methods[0] == "svd" else f"{METHOD_LABELS[fitter.methods[0]]} fit"

#: gradient descent's pace: label, and the seconds its steps are spread over at least (0: as fast as it goes)
WATCH_S = 8.0
PACES = {"watch": (f"watch (≥ {WATCH_S:.0f} s)", WATCH_S), "full": ("full speed", 0.0)}

gd, pace = {}, "watch"
if method in ("gd", "random"):
    from falcon.ehp import FIT_OPTIMIZERS, GD_DEFAULTS, GD_STEPS, LOSSES

    g = st.columns(5)
    gd["seed"] = int(common.number(g[0], "seed", "seed", 0, step=1, key="gd_seed"))
    if method == "gd":
        gd["optimizer"] = common.widget(g[1].selectbox, "optimizer", FIT_OPTIMIZERS, key="gd_optimizer",
                                        help="adam (default) reaches the optimum; sgd with the thesis's settings "
                                             "(lr 0.01 on the mean squared error) barely leaves the random start")
        gd["loss"] = common.widget(g[2].selectbox, "loss", LOSSES, key=f"gd_loss_{gd['optimizer']}",
                                   index=LOSSES.index(GD_DEFAULTS[gd["optimizer"]]["loss"]),
                                   help="relative: ‖K − K̂‖² / ‖K‖²; mse: the mean of the squared residual")
        gd["lr"] = float(common.number(g[3], "learning rate", "lr", GD_DEFAULTS[gd["optimizer"]]["lr"],
                                       key=f"gd_lr_{gd['optimizer']}", format="%g", step=1e-3))
        gd["steps"] = int(common.number(g[4], "steps", "steps", GD_STEPS, key="gd_steps", step=100))
        pace = common.widget(st.segmented_control, "pace", ["watch", "full"], default="watch", key="gd_pace",
                             required=True, format_func=lambda p: PACES[p][0],
                             help=f"watch: the steps are spread over at least {WATCH_S:.0f} s, so that the error can "
                                  "be seen falling (the fit is the same); full speed: as fast as this machine goes "
                                  "(600 steps take about a second)")

fit_key = (loaded.key, layer, conv, rank)
with common.guard():
    svd = common.svd_fit(loaded, layer, conv, rank)
    info = common.kernel_info(loaded, layer, conv)
axis = getattr(fitter, "axis", None)  # the common axis of an EHP (falcon, dsconv)
if svd.clamped:
    st.info(f"Rank {rank} is above this layer's full rank {svd.full_rank} "
            f"({CONV_TYPES[conv].fit.formula}); fitting rank {svd.rank_used}, which is exact.",
            icon=":material/info:")

# ---------------------------------------------------------------------------------------------- gradient descent
job_args = {"fit": fit_key, **gd}
job: Job | None = st.session_state.get(Keys.FIT.job)
running = job is not None and job.running  # a gradient descent of this session, for these settings or not


def start_gd() -> None:
    import time

    from falcon.ehp import run_gd

    kernel = loaded.kernel(layer)
    steps, watch = gd["steps"], PACES[pace or "watch"][1]

    def target(j: Job):
        t0 = time.perf_counter()
        j.paused = 0.0  # seconds spent waiting for the pace (the rest is the fit's own time)

        def callback(rec) -> bool:
            j.records.append((rec.step, rec.relative_error))
            j.report(rec.step / max(steps, 1), f"step {rec.step} / {steps}: relative error {rec.relative_error:.5f}")
            ahead = t0 + watch * rec.step / max(steps, 1) - time.perf_counter()
            if ahead > 0 and not j.should_stop():  # paced: step i not before i/steps of the watch time
                time.sleep(min(ahead, 0.25))
                j.paused += min(ahead, 0.25)
            return j.should_stop()

        return run_gd(kernel, rank, axis, steps=steps, lr=gd["lr"], optimizer=gd["optimizer"], seed=gd["seed"],
                      loss=gd["loss"], callback=callback)

    common.start_job(Keys.FIT, Job(target, name="gd"), args=dict(job_args))


if method == "gd":
    b = st.columns([2, 5])
    if b[0].button("Start gradient descent", key="gd_start", type="primary", disabled=running, icon=":material/play_arrow:"):
        start_gd()
        running = True


@st.fragment(run_every=0.4 if running else None)
def gd_panel() -> None:
    job = common.job_panel(Keys.FIT, common.current_job(Keys.FIT, job_args), running, seconds=False, idle=(
        "Press **Start gradient descent**: the loss curve is drawn live, with the SVD optimum as the dashed line. "
        "**Stop** ends it where it is."))
    if job is None or job.error:
        return
    records = list(job.records)
    if records:
        step = max(1, len(records) // 600)  # at most ~600 points on the curve
        pts = records[::step] + ([records[-1]] if (len(records) - 1) % step else [])
        common.plot(loss_figure([p[0] for p in pts], [p[1] for p in pts], optimum=svd.relative_error, conv=conv,
                                title=f"gradient descent ({gd['optimizer']}, lr {gd['lr']:g}, {gd['loss']} loss)"),
                    key="loss", filename="ehp-fit-loss")
    if job.done and job.result is not None:
        res = job.result
        gap = res.fit.relative_error - svd.relative_error
        paused = getattr(job, "paused", 0.0)
        verdict = (("stopped early" if res.steps < gd["steps"] else "finished") + f" after {res.steps} steps in "
                   f"{job.seconds:.1f} s" + (f" (paced to be watched; the fit itself took {job.seconds - paused:.1f} s)"
                                             if paused > 0.05 else ""))
        st.caption(f"Gradient descent {verdict}: relative error {res.fit.relative_error:.5f} vs the SVD optimum "
                   f"{svd.relative_error:.5f} ({gap / max(svd.relative_error, 1e-12):+.1%}).")


if method == "gd":
    gd_panel()

fit = svd
fit_note = DEFAULT_LABEL
if method not in (fitter.methods[0], "random", "gd"):
    with common.guard():
        fit = common.svd_fit(loaded, layer, conv, rank, method)
    fit_note = f"{METHOD_LABELS.get(method, method)} fit"
elif method == "random":
    with common.guard():
        fit = common.random_fit(loaded, layer, conv, rank, gd["seed"])
    fit_note = "random initialization (no fit)"
elif method == "gd":
    job = common.current_job(Keys.FIT, job_args)
    if job is not None and job.done and job.result is not None:
        fit = job.result.fit
        fit_note = "gradient descent"
    else:
        fit_note = "SVD optimum (gradient descent has not finished for these settings)"

# ---------------------------------------------------------------------------------------------- results
with common.guard():
    effect = common.fit_effect(loaded, layer, conv, fit, fit_key + (method, repr(gd), repr(fit.relative_error)))

spec = effect["spec"]
m = st.columns(5)
m[0].metric("relative error", f"{fit.relative_error:.4f}", help=f"‖K − K̂‖ / ‖K‖ of the {fit_note}")
m[1].metric(DEFAULT_LABEL, f"{svd.relative_error:.4f}",
            help="the relative error of the type's default fit at this rank (for an SVD: the best any fit can reach, "
                 "Eckart–Young)")
m[2].metric("full rank", f"{svd.full_rank}",
            help=f"the rank from which the fit is exact: {CONV_TYPES[conv].fit.formula}")
m[3].metric("output error", f"{effect['output_error']:.4f}",
            help=f"‖conv(x) − block(x)‖ / ‖conv(x)‖ on the layer's inputs from {effect['samples']}")
if effect.get("accuracy") is not None:
    m[4].metric("accuracy", f"{100 * effect['accuracy']:.2f}%",
                delta=f"{100 * (effect['accuracy'] - effect['baseline_accuracy']):+.2f} points",
                help=f"held-out digits, only this layer replaced, no fine-tuning; "
                     f"the original model: {100 * effect['baseline_accuracy']:.2f}%")
else:
    m[4].metric("layer weights", f"{effect['params']:,}", delta=f"{effect['params'] - effect['standard_params']:+,}",
                delta_color="inverse")

with st.container(border=True):
    st.markdown("**In one paragraph**")
    st.markdown(fit_summary(loaded, layer, conv, fit, svd, info, effect, fit_note))
    sizing_params = {"model": name, "conv": conv, "layer": layer,
                     **{h: str(v) for h, v in CONV_TYPES[conv].rank_hparams(rank).items()}}
    st.page_link(common.PAGE_BY_FILE["sizing.py"].path, label=f"{layer} in the whole {name}: Model sizing",
                 icon=":material/stacked_bar_chart:", query_params=sizing_params,
                 help="the model with this conv type in every replaceable layer, this layer chosen in its chart and "
                      "table")

c = st.container(key="wide_fit_charts").columns(2)  # one under the other below 2 × 30 rem
with c[0]:
    if info["energy"] is None:
        st.caption(f"{CONV_TYPES[conv].label} is not fitted channel by channel: no per-channel energy to show.")
    else:
        st.markdown("**Singular-value energy per channel**")
        st.caption(f"Per {axis} channel, the share of ‖K_c‖² that the best rank-k "
                   f"fit keeps. Median channel at k={fit.rank_used}: {info['median_energy'][fit.rank_used - 1]:.3f}; "
                   f"rank for 90% energy in every channel: {info['rank_90']}.")
        common.plot(energy_figure(info["energy"], rank=fit.rank_used, conv=conv), key="energy", filename="ehp-energy")
with c[1]:
    st.markdown("**Relative error by rank**")
    if info["error_by_rank"]:
        st.caption(f"The {DEFAULT_LABEL if fitter.methods[0] == 'svd' else 'closed-form fit'}'s error at every "
                   "rank; it reaches 0 at the full rank.")
        common.plot(error_by_rank_figure(info["error_by_rank"], rank=fit.rank_used, conv=conv), key="error_by_rank",
                    filename="ehp-error-by-rank")
    else:
        st.caption(f"{CONV_TYPES[conv].label} has no closed-form error by rank (its fit is iterative).")

st.markdown(f"**Kernels: original and reconstruction ({fit_note})**")
K = loaded.kernel(layer).numpy()
common.plot(kernel_figure(K, fit.kernel_hat.detach().numpy()), key="kernels", filename="ehp-kernels")
