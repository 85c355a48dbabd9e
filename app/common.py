"""What every page shares: the page registry, the sidebar, error display and cached library calls.

The library (``falcon``) never imports streamlit; this module is the only Streamlit-side glue besides
the pages themselves. Cached functions take plain, hashable arguments (dicts of numbers and strings)
and return plain data, so ``st.cache_data`` can hash and copy them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts app/ on sys.path, not the repo root
    sys.path.insert(0, str(ROOT))

from falcon.errors import FalconError  # noqa: E402

log = logging.getLogger("falcon.app")


# ----------------------------------------------------------------------------------------------
# the page registry: navigation, tests and the browser test all read this list
@dataclass(frozen=True)
class PageDef:
    file: str  # under the top-level pages/ folder
    title: str
    icon: str
    url_path: str
    summary: str
    default: bool = False

    @property
    def path(self) -> str:
        """The page's path relative to app/main.py (what st.Page and AppTest.switch_page take)."""
        return f"../pages/{self.file}"


PAGES: list[PageDef] = [
    PageDef("overview.py", "Overview", ":material/home:", "overview",
            "what FALCON is, the EHP picture, where to go next", default=True),
    PageDef("calculator.py", "Layer calculator", ":material/calculate:", "calculator",
            "params, MACs, CR and CRR of every conv type for one layer; break-even rank; measured latency"),
    PageDef("sizing.py", "Model sizing", ":material/stacked_bar_chart:", "sizing",
            "a whole model with a conv type: totals, the paper's numbers, per layer"),
    PageDef("ehp_fit.py", "EHP fit", ":material/tune:", "ehp-fit",
            "fit a trained layer with FALCON or DSConv: SVD optimum, live gradient descent"),
    PageDef("experiments.py", "Experiments", ":material/science:", "experiments",
            "compress and fine-tune the bundled digits model: one run or a sweep, live, stored"),
    PageDef("accuracy.py", "Accuracy vs cost", ":material/scatter_plot:", "accuracy",
            "the thesis's accuracy against parameters or FLOPs, Pareto frontier, our runs"),
]
PAGE_BY_FILE: dict[str, PageDef] = {p.file: p for p in PAGES}


# ----------------------------------------------------------------------------------------------
# session state: the keys that more than one place reads, in one place
@dataclass(frozen=True)
class JobKeys:
    """The session-state keys of one page's background job (:class:`falcon.jobs.Job`; :func:`job_panel`)."""

    job: str  # where the page keeps its job
    stop: str  # the Stop button's widget key
    shown: str  # the finished job the page last redrew itself for
    args: str | None = None  # what the job was started for: the page shows it only for the same settings


class Keys:
    """Session-state keys of the pages and of this module."""

    BENCH = JobKeys("bench_job", stop="bench_stop", shown="bench_shown")  # the calculator's measurement
    BENCH_SPEC = "bench_spec"  # the layer (its describe()) the measurement is for
    CALC_LAYER = "calc_layer"  # (spec, hparams) that the calculator's inputs leave for the measurement below them
    CALC_FULL_RUN = "calc_full_run"  # True while the calculator runs in full, not only its inputs' fragment
    FIT = JobKeys("fit_job", stop="gd_stop", shown="fit_shown", args="fit_job_args")  # the EHP fit's gradient descent
    FIT_LOAD_FAILURES = "_fit_load_failures"  # (source, name, checkpoint hash) -> (time, message)
    MEASURE = JobKeys("measure_job", stop="measure_stop", shown="measure_shown", args="measure_args")  # sizing's model bench
    EXPERIMENT = JobKeys("exp_runner", stop="exp_stop", shown="exp_shown")  # the experiments page's sweep runner
    EXPERIMENT_BUSY = "exp_busy"  # why Start was refused (another session's experiment ran)
    SIZING_PLAN = "sizing_plan"  # the last plan Model sizing made in this session: {"model", "plan"} (Experiments)
    PRESENTER = "presenter"  # the sidebar's presenter mode (larger type, fewer columns; app/main.py)


# ----------------------------------------------------------------------------------------------
# background jobs: started from a button, drawn by a fragment that polls them
def start_job(keys: JobKeys, job, args: Any = None):
    """Start ``job`` (a :class:`falcon.jobs.Job`) as the page's job, for the settings ``args``; returns it."""
    st.session_state[keys.job] = job.start()
    if keys.args is not None:
        st.session_state[keys.args] = args
    return job


def current_job(keys: JobKeys, args: Any = None):
    """The page's job (None when there is none, or when it was started for settings other than ``args``)."""
    job = st.session_state.get(keys.job)
    if job is None or (keys.args is not None and st.session_state.get(keys.args) != args):
        return None
    return job


def shown_job(keys: JobKeys, args: Any, running_for) -> tuple[Any, bool]:
    """(the job a panel shows, whether a finished one is kept for other settings). A running job is shown
    whatever is chosen now, with the caption ``running_for(its settings)`` when they differ; otherwise the job of
    the settings ``args`` (:func:`current_job`)."""
    job = st.session_state.get(keys.job)
    if job is not None and job.running:
        earlier = st.session_state.get(keys.args)
        if earlier and earlier != args:
            st.caption(running_for(earlier))
    else:
        job = current_job(keys, args)
    return job, st.session_state.get(keys.job) is not None and job is None


def job_panel(keys: JobKeys, job, was_running: bool, idle: str, *, failed: str = "", seconds: bool = True,
              columns: tuple[float, float] | None = (5, 1)):
    """A background job as a page shows it, inside the fragment that polls it (``st.fragment(run_every=...)``
    while ``was_running``: the job ran when the page last ran in full).

    * no job: ``idle`` as an info box; returns None.
    * running: a progress bar (the job's label, with the seconds so far when ``seconds``) and a Stop button
      beside it (under it when ``columns`` is None).
    * ended since the page last ran in full: the whole page runs again, once (its buttons, and whatever
      reads the result outside the fragment, redraw); a failed job's message shows as an error (after ``failed``).

    Returns the job (running or ended) for the page to draw what it has.
    """
    if job is None:
        st.info(idle, icon=":material/info:")
        return None
    if job.running:
        bar, stop = st.columns(list(columns)) if columns else (st.container(), st.container())
        bar.progress(job.progress, text=(job.label or "starting…") + (f"  ({job.seconds:.0f} s)" if seconds else ""))
        stop.button("Stop", key=keys.stop, on_click=job.stop, icon=":material/stop_circle:", disabled=job.should_stop())
        return job
    if st.session_state.get(keys.shown) is not job:
        st.session_state[keys.shown] = job
        if was_running:
            st.rerun(scope="app")
    if job.error:
        st.error(failed + job.error, icon=":material/error:")
    return job


# ----------------------------------------------------------------------------------------------
# measurements: one worker process at a time for the whole server, each owned by its session (falcon.worker)
def session_id() -> str:
    """This browser session's id (the owner of its measurements)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "local"


def _session_alive(owner: str) -> bool | None:
    """Whether the session ``owner`` is still connected (None when no Streamlit server runs: AppTest)."""
    from streamlit.runtime import Runtime

    if not Runtime.exists():
        return None
    return Runtime.instance().is_active_session(owner)


@st.cache_resource(show_spinner=False)
def measurement_queue():
    """The server's one :class:`falcon.worker.MeasurementQueue`, shared by the calculator and Model sizing."""
    from falcon.worker import MeasurementQueue

    return MeasurementQueue(alive=_session_alive)


@st.cache_resource(show_spinner=False)
def experiment_slot():
    """The server's one experiment at a time (:class:`falcon.ownership.OwnedSlot`), owned by the session that
    started it: others see "machine busy", cannot read or stop it; it is stopped when its session ends."""
    from falcon.machinelock import MachineLock
    from falcon.ownership import OwnedSlot

    return OwnedSlot("an experiment", alive=_session_alive, machine=MachineLock(kind="experiment"))


def hidden_sweep() -> tuple[str | None, int]:
    """The sweep id of the experiment another session runs now and how many completed runs it has stored so far:
    they are its own until it ends (#20), so pages leave them out and say so with :func:`hidden_note`."""
    from falcon.experiments.store import list_runs

    sweep = getattr(experiment_slot().foreign(session_id()), "sweep_id", None)
    return sweep, len(list_runs(sweep_id=sweep, status="completed")) if sweep else 0


def hidden_note(count: int) -> None:
    if count:
        st.caption(f"{count} run{'s' if count != 1 else ''} of a sweep still running elsewhere "
                   f"{'are' if count != 1 else 'is'} hidden until it ends.")


def submit_measurement(keys: JobKeys, task, estimate, name: str, args: Any = None):
    """Queue ``task`` (a :class:`falcon.worker.WorkerTask`) for this session as the page's job; a refusal (over the
    estimate's limits, or a measurement of this session already running) shows as ``st.error``. Returns the job
    or None."""
    try:
        job = measurement_queue().submit(session_id(), task, estimate, name)
    except FalconError as e:
        st.error(str(e), icon=":material/block:")
        return None
    st.session_state[keys.job] = job
    if keys.args is not None:
        st.session_state[keys.args] = args
    return job


def rerun_measurement(keys: JobKeys, job):
    """The same measurement as ``job`` again (its task and estimate), for the same settings; returns the job or None."""
    return submit_measurement(keys, job.task, job.estimate, job.name, st.session_state.get(keys.args) if keys.args
                              else None)


@st.cache_data(show_spinner=False, max_entries=64, ttl=60)
def layer_estimate(spec: dict, convs_json: str, batch_size: int, memory_format: str, rounds: int,
                   min_run_time: float):
    """:func:`falcon.worker.estimate_layer` for the calculator's settings (a minute: free memory changes)."""
    from falcon.worker import estimate_layer

    return estimate_layer(spec_from(spec), json.loads(convs_json), batch_size, memory_format, rounds, min_run_time)


@st.cache_data(show_spinner=False, max_entries=64, ttl=60)
def model_estimate(model: str, conv_json: str, input_size: int, num_classes: int, runtimes: tuple, memory_format: str,
                   batch_size: int, threads: int, rounds: int, min_run_time: float):
    """:func:`falcon.worker.estimate_model` for Model sizing's settings."""
    from falcon.worker import estimate_model

    return estimate_model(app_model(model), json.loads(conv_json), input_size, num_classes, runtimes, memory_format,
                          batch_size, threads, rounds, min_run_time)


def measurement_panel(keys: JobKeys, job, was_running: bool, idle: str, *, failed: str = "",
                      columns: tuple[float, float] | None = (5, 1)):
    """:func:`job_panel` for a measurement: says this session is still here (:meth:`MeasurementQueue.seen`), and
    when another session's measurement holds the machine, says so (never what it measures)."""
    queue, me = measurement_queue(), session_id()
    queue.seen(me)
    busy = queue.busy(me)
    if busy and (job is None or not job.running or job.queued):
        st.warning(busy[0].upper() + busy[1:] + ": yours waits in line for it." if job is not None and job.queued
                   else busy[0].upper() + busy[1:] + ": a measurement started now waits in line.",
                   icon=":material/hourglass_top:")
    return job_panel(keys, job, was_running, idle, failed=failed, columns=columns,
                     seconds=not (job is not None and job.queued))


def estimate_line(estimate) -> None:
    """The estimate of a measurement before it starts: a caption, or the refusal as an error."""
    from falcon.bench import fmt_bytes

    refusal = estimate.refusal()
    if refusal:
        st.error(refusal[0].upper() + refusal[1:], icon=":material/block:")
        return
    limit = f", memory {fmt_bytes(estimate.memory_limit)}" if estimate.memory_limit else ""
    st.caption(f"Estimate on this machine: {estimate.what} takes {estimate.describe()} (limits: "
               f"{estimate.max_seconds:.0f} s{limit}; Stop ends it at once).")


def unreliable(reasons: list[str], rerun_key: str) -> bool:
    """A measurement whose figures cannot all be true: "unreliable" with the reasons, and a Rerun button (True when
    it was pressed)."""
    st.warning("**Unreliable**: these measured figures cannot all be true, so they are not shown as numbers.\n\n"
               + "\n".join(f"- {r}" for r in reasons), icon=":material/report:")
    return st.button("Rerun", key=rerun_key, icon=":material/replay:")

# ----------------------------------------------------------------------------------------------
# errors
@contextlib.contextmanager
def guard(stop: bool = True, falcon_errors: bool = True) -> Iterator[None]:
    """Show a FalconError as ``st.error`` (its message says what to change); any other exception as a
    short ``st.error`` naming it as a bug (the traceback goes to the server log, not the page).
    ``falcon_errors=False`` lets FalconError through, for a caller that handles it itself."""
    try:
        yield
    except FalconError as e:
        if not falcon_errors:
            raise
        st.error(str(e), icon=":material/error:")
        if stop:
            st.stop()
    except Exception as e:  # noqa: BLE001 - never show users a traceback
        log.exception("unexpected error in a page")
        st.error(f"Unexpected error ({type(e).__name__}: {e}). This is a bug in FALCON Explorer; the server log "
                 "has the details.", icon=":material/bug_report:")
        if stop:
            st.stop()


@st.cache_resource(show_spinner=False)
def favicon():
    """A 64×64 favicon drawn here (FALCON's colour, an EHP-like 2×2 grid), so nothing is fetched from the web."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((2, 2, 62, 62), radius=12, fill="#ef553b")
    for x, y in ((12, 12), (36, 12), (12, 36), (36, 36)):
        d.rectangle((x, y, x + 16, y + 16), fill="white" if (x + y) % 48 else "#ffd4cc")
    return img


# ----------------------------------------------------------------------------------------------
# sidebar
@st.cache_resource(show_spinner=False)
def device_info():
    from falcon.bench import describe_device

    return describe_device()


def sidebar(container=None) -> None:
    dev = device_info()
    with container or st.sidebar:
        st.markdown("**Device**")
        st.caption(dev.sentence)
        st.caption("Links reproduce the view: the model, layer and layer spec live in the page's URL.")


# ----------------------------------------------------------------------------------------------
# formatting
def fmt_int(n: int | float) -> str:
    return f"{int(n):,}"


def fmt_rate(x: float) -> str:
    return f"{x:.3f}×"


def color_dot(color: str) -> str:
    return f'<span style="color:{color};font-size:1.2em">&#9679;</span>'


PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


#: chart text in presenter mode: this many times larger
PRESENTER_FONT_SCALE = 1.3


def presenter() -> bool:
    """Whether the sidebar's presenter mode is on."""
    return bool(st.session_state.get(Keys.PRESENTER))


def plot(fig, key: str | None = None, filename: str = "falcon-figure", **kwargs):
    """A plotly figure with the camera button saving a PNG named ``filename`` (its text larger in presenter
    mode); ``kwargs`` go to ``st.plotly_chart`` (``on_select``, ``selection_mode``)."""
    if presenter():
        from falcon.views.figures import scale_fonts

        fig = scale_fonts(fig, PRESENTER_FONT_SCALE)
    config = {**PLOTLY_CONFIG, "toImageButtonOptions": {**PLOTLY_CONFIG["toImageButtonOptions"], "filename": filename}}
    return st.plotly_chart(fig, key=key, config=config, theme=None, **kwargs)


# ----------------------------------------------------------------------------------------------
# cached library calls (plain arguments in, plain data out)
def spec_from(d: dict):
    from falcon.spec import LayerSpec

    return LayerSpec(**d)


@st.cache_data(show_spinner=False, max_entries=512)
def cached_layer_rows(spec: dict, hparams_json: str) -> list[dict]:
    """:func:`falcon.costs.layer_rows` with the formulas (:func:`falcon.views.tables.with_formulas`), cached."""
    from falcon.costs import layer_rows
    from falcon.views.tables import with_formulas

    return with_formulas(layer_rows(spec_from(spec), json.loads(hparams_json), keep_going=True))


@st.cache_data(show_spinner=False, max_entries=256)
def rank_sweeps(spec: dict) -> tuple[dict, dict]:
    from falcon.costs import rank_chart

    return rank_chart(spec_from(spec))


@st.cache_data(show_spinner=False, max_entries=128)
def thop_check(spec: dict, hparams_json: str):
    from falcon.counting import thop_check as check

    return check(spec_from(spec), json.loads(hparams_json))


@st.cache_data(show_spinner=False, max_entries=128)
def size_result(model: str, conv: str, num_classes: int | None, input_size: int | None, convention: str,
                include_stem: bool | None, hparams_json: str):
    """:func:`falcon.sizing.size_model` (a :class:`~falcon.sizing.SizeResult`), cached per choice."""
    from falcon.sizing import size_model as size

    return size(app_model(model), conv, num_classes, input_size, convention, include_stem, **json.loads(hparams_json))


@st.cache_data(show_spinner=False, max_entries=64)
def size_budget(model: str, conv: str, metric: str, target: float, num_classes: int | None, input_size: int | None,
                convention: str, include_stem: bool | None, hparams_json: str) -> dict:
    """:func:`falcon.sizing.size_for_target` with the whole rank curve, as plain data."""
    from falcon.sizing import size_for_target

    rates = {"crr": target} if metric == "crr" else {"cr": target}
    return size_for_target(app_model(model), conv, whole_curve=True, num_classes=num_classes, input_size=input_size,
                           convention=convention, include_stem=include_stem, **rates,
                           **json.loads(hparams_json)).as_dict()


@st.cache_data(show_spinner=False)
def model_names() -> list[str]:
    """The thesis's models, digits-vgg, torchvision's zoo, then timm's architectures (``timm:NAME``) when installed."""
    from falcon.models import list_models, timm_available, timm_models

    return list_models() + ([f"timm:{n}" for n in timm_models()] if timm_available() else [])


def app_model(name: str):
    """The registry entry of a model chosen in the app (from a widget or the URL): the app never imports or runs
    code a name points at (``package.module:factory``); models of your own go through the CLI or Python API."""
    from falcon.models import registry_entry

    return registry_entry(name, "the app's model choice")


@st.cache_data(show_spinner=False)
def model_defaults(model: str) -> dict:
    e = app_model(model)
    return {"input_size": e.input_size, "classes": e.default_classes, "description": e.description,
            "in_channels": e.in_channels, "input_size_from": e.input_size_from}


@st.cache_data(show_spinner=False)
def paper_results():
    from falcon.paper import load_paper_results

    return load_paper_results()


def hparam_input(conv: str, name: str, key_prefix: str = "", container=None, bind: bool = True,
                label: str | None = None, per_conv: bool = True) -> Any:
    """A number input for one hyper-parameter of ``conv`` (range, default and help from the registry).

    The widget key (and URL parameter with ``bind``) is ``{key_prefix}{conv}.{name}``, or
    ``{key_prefix}{name}`` when not ``per_conv`` (a page that shows one conv type at a time).
    """
    from falcon.convtypes import CONV_TYPES

    from falcon.limits import hparam_bound

    h = next(h for h in CONV_TYPES[conv].hparams if h.name == name)
    return number(container or st, label or h.label, hparam_bound(h), h.default if h.kind is int else float(h.default),
                  key=f"{key_prefix}{conv}.{h.name}" if per_conv else f"{key_prefix}{h.name}", help=h.help,
                  step=h.widget_step, bind=bind, format=None if h.kind is int else "%g")


def number(container, label: str, bound, value: int | float | None, *, key: str, help: str | None = None,
           bind: bool = True, **kwargs) -> int | float | None:
    """A number input that says what it does with a bad value: the allowed range (``bound``: a
    :mod:`falcon.limits` bound or its name) is in its help, and a value outside it, typed or from the link, is
    refused with an ``st.error`` under the input naming the range and the value used instead (the last good
    one, else the default). Streamlit's own min/max would instead keep the old value without a word.

    Empty stays None (an input with ``value=None`` means "the default")."""
    from falcon import limits

    b = limits.bound(bound)
    good_key = f"_last_good.{key}"
    fallback = st.session_state.get(good_key, value)
    rule = f"Allowed: {b.describe()} ({b.why}); another value is refused with a message."
    got = widget(container.number_input, label, value=value, key=key, bind=bind,
                 help=f"{help}  \n{rule}" if help else rule, **kwargs)
    if got is None:
        return None
    try:
        good = limits.parse(int(got) if b.kind is int and float(got).is_integer() else got, b, label)
    except FalconError as e:
        container.error(f"{e}. Using {label} = {fallback:g} instead." if fallback is not None
                        else f"{e}. Using the default instead.", icon=":material/error:")
        return fallback
    st.session_state[good_key] = good
    return good


def hparam_inputs(conv: str, key_prefix: str = "", container=None, bind: bool = True,
                  per_conv: bool = True) -> dict[str, Any]:
    """Inputs for every hyper-parameter of ``conv``, side by side in ``container``."""
    from falcon.convtypes import CONV_TYPES

    hps = CONV_TYPES[conv].hparams
    if not hps:
        return {}
    cols = (container or st).columns(len(hps))
    return {h.name: hparam_input(conv, h.name, key_prefix, col, bind, per_conv=per_conv) for h, col in zip(hps, cols)}


def widget(fn, label: str, *args, bind: bool = True, **kwargs):
    """A widget whose value persists across page switches and (with ``bind``) lives in the URL, under
    the widget's key, so that a shared link reproduces the view.

    Inputs without a ``format_func`` use Streamlit's ``bind="query-params"``. Choices shown through a
    ``format_func`` would put the *formatted* label in the URL (e.g. a layer's whole description), and lists
    (multiselects) have no single value, so for them the raw option (comma-separated for a list) goes in the URL
    here: a value the URL brings that this session did not write (a link, another page's link with
    ``query_params``) is taken; the widget's value is written back after every run (left out when it is the
    default). A link's value the widget cannot take is not dropped silently: a warning under the widget names it
    and what is shown instead.
    """
    kwargs.setdefault("persist_state", "session")
    if not bind:
        return fn(label, *args, **kwargs)
    key = kwargs["key"]
    where = getattr(fn, "__self__", st)  # the container the widget is drawn in (for the warning)
    multi = getattr(fn, "__name__", "") == "multiselect"
    if "format_func" not in kwargs and not multi:
        raw = st.query_params.get(key) if key not in st.session_state else None  # the link, on first show
        value = fn(label, *args, bind="query-params", **kwargs)
        if raw is not None and not _same(raw, value):
            _unusable_link(where, key, raw, label, value)
        return value
    options = list(args[0] if args else kwargs["options"])
    names = [str(o) for o in options]
    if "index" in kwargs:
        default = options[kwargs.pop("index")] if options else None
    else:
        default = kwargs.pop("default", [] if multi else (options[0] if options else None))
    if multi:
        default = list(default or [])

    def encode(v) -> str:
        return ",".join(str(o) for o in v) if multi else str(v)

    def allowed(v) -> bool:
        return all(o in options for o in v) if multi else v in options

    raw, written = st.query_params.get(key), st.session_state.get(f"_url.{key}")
    if raw is not None and raw != written:  # the URL says something this session did not write: a link
        parts = [p for p in raw.split(",") if p] if multi else [raw]
        if all(p in names for p in parts):
            picked = [options[names.index(p)] for p in parts]
            st.session_state[key] = picked if multi else picked[0]
        else:
            _unusable_link(where, key, raw, label, encode(st.session_state.get(key, default)))
    if key not in st.session_state or not allowed(st.session_state[key]):
        st.session_state[key] = default
    value = fn(label, *args, **kwargs)
    text = encode(value) if value is not None else None
    if text is not None and text != encode(default):
        st.query_params[key] = st.session_state[f"_url.{key}"] = text
    else:
        st.session_state[f"_url.{key}"] = None
        if key in st.query_params:
            del st.query_params[key]
    return value


def _same(raw: str, value: Any) -> bool:
    """Whether a widget shows the value ``raw`` of its URL parameter (as text, number or true/false)."""
    if value is None:
        return raw == ""
    if isinstance(value, bool):
        return raw.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(raw) == float(value)
        except ValueError:
            return False
    return raw == str(value)


def _unusable_link(where, key: str, raw: str, label: str, shown: Any) -> None:
    where.warning(f"The link's {key}={raw[:60]!r} is not a choice of “{label}” here; showing {shown!s:.60} instead.",
                  icon=":material/link_off:")


def kaleido_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("kaleido") is not None


def png_download(fig, filename: str, container=None, key: str | None = None) -> bool:
    """A "Figure (PNG)" download rendered by kaleido when the user clicks (a few seconds: kaleido drives
    a headless Chromium). Returns False (and shows nothing) when kaleido is not installed."""
    if not kaleido_available():
        return False

    def render() -> bytes:
        return fig.to_image(format="png", width=1400, height=fig.layout.height or 600, scale=2)

    (container or st).download_button("Figure (PNG)", render, file_name=filename, mime="image/png",
                                      icon=":material/image:", key=key, on_click="ignore")
    return True


# ----------------------------------------------------------------------------------------------
# EHP fit: the loaded model is shared (cache_resource) and never modified; fits are keyed by name
@st.cache_data(show_spinner=False)
def torchvision_names() -> list[str]:
    from falcon.models import torchvision_classification_models

    return list(torchvision_classification_models())


@st.cache_resource(show_spinner=False, max_entries=4)
def _load_fit_model(source: str, name: str, checkpoint: bytes | None):
    from falcon.probe import load_for_fit

    return load_for_fit(source, name, checkpoint)


RETRY_AFTER_S = 60


def load_fit_model(source: str, name: str, checkpoint: bytes | None):
    """The model to fit (shared across sessions, never modified). A failure (offline download, a bad
    checkpoint) is remembered for this session for a minute, so reruns do not try again each time."""
    import hashlib
    import time

    key = (source, name, hashlib.sha1(checkpoint).hexdigest() if checkpoint else "")
    failures = st.session_state.setdefault(Keys.FIT_LOAD_FAILURES, {})
    if key in failures and time.monotonic() - failures[key][0] < RETRY_AFTER_S:
        raise FalconError(failures[key][1])
    try:
        return _load_fit_model(source, name, checkpoint)
    except FalconError as e:
        failures[key] = (time.monotonic(), str(e))
        raise


def forget_load_failures() -> None:
    st.session_state.pop(Keys.FIT_LOAD_FAILURES, None)


@st.cache_resource(show_spinner=False, max_entries=64)
def _svd_fit(key: str, layer: str, conv: str, rank: int, _loaded, method: str = "svd"):
    from falcon.fits import fit_kernel

    return fit_kernel(_loaded.kernel(layer), conv, rank, method)


def svd_fit(loaded, layer: str, conv: str, rank: int, method: str = "svd"):
    """The fit of ``conv`` by ``method`` (``svd``: the type's default fit), cached per layer and rank."""
    return _svd_fit(loaded.key, layer, conv, rank, loaded, method)


@st.cache_resource(show_spinner=False, max_entries=32)
def _random_fit(key: str, layer: str, conv: str, rank: int, seed: int, _loaded):
    from falcon.fits import fit_kernel

    return fit_kernel(_loaded.kernel(layer), conv, rank, "random", seed=seed)


def random_fit(loaded, layer: str, conv: str, rank: int, seed: int):
    return _random_fit(loaded.key, layer, conv, rank, seed, loaded)


@st.cache_resource(show_spinner=False, max_entries=64)
def _kernel_info(key: str, layer: str, conv: str, _loaded):
    from falcon.probe import kernel_info as info

    return info(_loaded.kernel(layer), conv)


def kernel_info(loaded, layer: str, conv: str):
    return _kernel_info(loaded.key, layer, conv, loaded)


@st.cache_resource(show_spinner=False, max_entries=8)
def _probe(key: str, layer: str, _loaded):
    from falcon.probe import LayerProbe

    return LayerProbe(_loaded.model, layer, _loaded.samples)


@st.cache_resource(show_spinner=False, max_entries=64)
def _fit_effect(key: tuple, layer: str, conv: str, _loaded, _fit):
    from falcon.probe import fit_effect as effect

    return effect(_loaded, layer, conv, _fit, _probe(_loaded.key, layer, _loaded))


def fit_effect(loaded, layer: str, conv: str, fit, key: tuple):
    return _fit_effect(key, layer, conv, loaded, fit)
