"""Model sizing → "Where should the budget go?" for a measured speedup on this machine: the latency plan
(:mod:`falcon.latency_job`) queued as a measurement (estimate first, refused above the limits, one at a time per
machine, owned by the session, Stop), then the plan per layer with its prediction against a measurement."""
from __future__ import annotations

import json

import streamlit as st

import common

JOB = common.JobKeys("plan_latency_job", stop="plan_latency_stop", shown="plan_latency_shown", args="plan_latency_args")


@st.cache_data(show_spinner=False, max_entries=32, ttl=60)
def _estimate(model: str, types: tuple[str, ...], proxy: str, batch: int, rounds: int, threads: int, limit: float):
    """:func:`falcon.latency_job.estimate_latency_plan` (a minute: the machine's load changes)."""
    from falcon.latency_job import estimate_latency_plan

    return estimate_latency_plan(common.app_model(model).name, types, proxy, None, batch, rounds, threads, limit)


def _describe(args: dict) -> str:
    return (f"{args['model']} at {args['target_speedup']:g}× faster ({', '.join(args['types'])}; {args['proxy']} proxy; "
            f"batch {args['batch_size']}, {args['rounds']} rounds, {args['threads']} threads)")


def show(model: str, speedup: float, types: list[str], proxy: str) -> None:
    """The settings, the estimate and the button, then the panel that polls the job."""
    import torch

    from falcon import limits
    from falcon.latency_job import measure_limit
    from falcon.latency_plan import ROUNDS

    s = st.columns([1, 1, 1, 3])
    rounds = common.number(s[0], "rounds", "rounds", ROUNDS, step=1, key="plan_rounds", bind=False,
                           help="timed visits of every block (the median); more are steadier and slower")
    threads = common.number(s[1], "threads", "threads", min(torch.get_num_threads(), int(limits.hi("threads"))),
                            step=1, key="plan_threads", bind=False, help="CPU threads for every timing")
    batch = common.number(s[2], "batch size", "batch_size", 1, step=1, key="plan_batch", bind=False,
                          help="images per forward pass")
    args = dict(model=model, target_speedup=float(speedup), types=list(types), proxy=proxy, batch_size=int(batch),
                rounds=int(rounds), threads=int(threads))
    job = st.session_state.get(JOB.job)
    running = job is not None and job.running
    estimate = None
    if not running:
        with common.guard(stop=False):
            estimate = _estimate(model, tuple(types), proxy, int(batch), int(rounds), int(threads), measure_limit())
    refused = estimate is not None and estimate.refused
    with s[3]:
        st.write("")  # the button level with the inputs
        pressed = st.button("Plan on this machine", key="plan_latency_start", type="primary", icon=":material/timer:",
                            disabled=running or estimate is None or refused)
    if pressed:
        _start(args, estimate)
        job = st.session_state.get(JOB.job)
        running = job is not None and job.running
    elif estimate is not None and not running:
        common.estimate_line(estimate)
    _panel(args, running)


def _start(args: dict, estimate) -> None:
    """Queue the plan in a worker process (the model resolved there by its registry name)."""
    from falcon.latency_job import run_latency_plan
    from falcon.worker import WorkerTask

    kwargs = {k: v for k, v in args.items() if k != "model"}
    common.submit_measurement(JOB, WorkerTask(run_latency_plan, kwargs, registry_model=args["model"]), estimate,
                              "latency plan", args)


def _panel(args: dict, running: bool) -> None:
    @st.fragment(run_every=0.5 if running else None)
    def panel() -> None:
        # a running job is shown whatever is chosen above (its Stop with it)
        job, kept = common.shown_job(JOB, args, lambda earlier: f"Planning {_describe(earlier)}.")
        if kept and running:  # it ended while another choice was shown: redraw the page (its button) once
            st.rerun(scope="app")
        idle = (f"The last latency plan was for {_describe(st.session_state[JOB.args])}: choose that again to see it, "
                "or plan this one." if kept else
                "Press the button: a worker process fits every layer, times each option on this machine (keep, each "
                "type at each rank; one timing per shape), solves for the least error within the budget, then times "
                "the planned model against the original. One measurement at a time on this machine; Stop ends it at "
                "once.")
        job = common.measurement_panel(JOB, job, running, idle=idle, failed="The latency plan failed: ")
        if job is not None and job.done and not job.error:
            if job.result is None:
                st.warning("Stopped: nothing was planned." if job.ran else
                           "Stopped before it started: nothing was planned.", icon=":material/stop_circle:")
            elif show_result(job) and common.rerun_measurement(JOB, job) is not None:
                st.rerun(scope="app")

    panel()


def show_result(job) -> bool:
    """The plan: predicted and measured latency (unreliable figures marked, with the reasons), per layer, the
    totals and the JSON. True when Rerun was pressed."""
    from falcon.reliability import assess_latency_plan
    from falcon.views.latency_plan import latency_plan_figure, latency_plan_table, latency_summary

    out = job.result
    plan, args = out["plan"], st.session_state.get(JOB.args) or {}
    lat, m = plan["latency"], plan["latency"].get("measured") or {}
    for note in [*out["notes"], *lat["notes"]]:
        st.warning(note[0].upper() + note[1:], icon=":material/warning:")
    verdict = assess_latency_plan(plan, job.loads or None, job.seconds or None, getattr(job, "cpu_samples", None) or None)
    rerun = False if verdict.reliable else common.unreliable(verdict.reasons, "plan_latency_rerun")
    bad = "unreliable" if not verdict.reliable else None
    c = st.columns(4)
    c[0].metric("original", f"{lat['original_ms']:.3g} ms", help="the whole model, timed while planning")
    c[1].metric("predicted", f"{lat['predicted_ms']:.3g} ms", help=f"{lat['predicted_speedup']:.2f}× faster: what "
                "no plan changes (the model less its convs timed alone) plus the chosen blocks timed alone")
    c[2].metric("measured", bad or f"{m['planned_ms']:.3g} ms", help=f"the planned model, median of {m['rounds']} "
                f"rounds interleaved with the original (IQR {m['planned_iqr_ms']:.2g} ms)")
    figure = verdict.figure("planned model, measured speedup")
    c[3].metric("measured speedup", bad or f"{m['speedup']:.2f}×",
                help=f"against the original measured in the same rounds ({m['original_ms']:.3g} ms); spread "
                     f"{figure.spread:.0%} (IQR / median)" if figure and figure.spread is not None else None)
    met = ("the measurement is unreliable (above)" if bad else
           f"the measured planned model {'meets' if m['planned_ms'] <= lat['budget_ms'] else 'misses'} it (prediction "
           f"error {lat['prediction_error']:+.0%})")
    st.caption(f"Target {lat['target'].get('speedup', 0):g}× faster: at most {lat['budget_ms']:.3g} ms. The prediction "
               f"meets it by construction; {met}. {lat['timings']} blocks timed in {lat['seconds']:.1f} s (estimated "
               f"{job.estimate.seconds if job.estimate else lat['estimated_seconds']:.0f} s) on {lat['cpu']}, "
               f"{lat['threads']} thread{'s' if lat['threads'] != 1 else ''}, batch {lat['batch_size']}; load average "
               f"{' → '.join(f'{v:g}' for v in verdict.load) or 'unknown'}.")
    common.plot(latency_plan_figure(plan), key="plan_latency_chart", filename=f"{plan['model']}-latency-plan")
    summary = latency_summary(plan)
    if not verdict.reliable:  # not a number to quote
        summary[-1]["speedup"] = None
    st.dataframe(summary, hide_index=True, key="plan_latency_summary", placeholder="–", column_config={
        "ms": st.column_config.NumberColumn(format="%.3f"), "IQR (ms)": st.column_config.NumberColumn(format="%.3f"),
        "speedup": st.column_config.NumberColumn(format="%.2f×"), "MACs": st.column_config.NumberColumn(format="localized")})
    st.dataframe(latency_plan_table(plan), hide_index=True, key="plan_latency_table", column_config={
        "ms before": st.column_config.NumberColumn(format="%.4f"), "ms plan": st.column_config.NumberColumn(format="%.4f"),
        "MACs before": st.column_config.NumberColumn(format="localized"),
        "MACs plan": st.column_config.NumberColumn(format="localized"),
        "error": st.column_config.NumberColumn(format="%.4f")})
    st.caption(f"Predicted error {plan['objective']:.4g}; no plan within the budget can go below {plan['lower_bound']:.4g} "
               f"(Lagrangian bound); the greedy allocation reaches {plan['greedy_objective']:.4g}. Fitted to "
               f"{out['weights']} weights.")
    st.download_button("Download the plan (JSON, for convert --plan)", json.dumps(plan, indent=2),
                       file_name=f"{plan['model']}-latency-plan.json", mime="application/json",
                       icon=":material/download:", key="plan_latency_download", on_click="ignore")
    if args:
        st.caption(f"`python -m falcon plan --model {args['model']} --target-speedup {args['target_speedup']:g} --types "
                   f"{','.join(args['types'])} --proxy {args['proxy']} --rounds {args['rounds']} --threads "
                   f"{args['threads']} --batch-size {args['batch_size']}` plans the same way (timed again); "
                   "`convert --plan` applies the file.")
    return rerun
