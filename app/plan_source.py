"""Experiments → "a plan" (#22): the per-layer plan to fine-tune, either the one Model sizing made in this session
(``st.session_state[Keys.SIZING_PLAN]``, set by app/plan_panel.py) or an uploaded JSON file. A file is data only:
parsed (:func:`falcon.experiments.plans.from_bytes`), checked for the page's model and its layers before anything
runs, never executed."""
from __future__ import annotations

import dataclasses

import streamlit as st

import common
from common import Keys
from falcon.errors import FalconError
from falcon.experiments.pipeline import ExperimentConfig

SOURCES = {"sizing": "from Model sizing", "upload": "a JSON file"}
HINT = "make a plan of {model} on Model sizing (“Where should the budget go?”) or with `python -m falcon plan --model {model} --json`"


def choose(model: str) -> tuple[dict | None, str]:
    """Draw where the plan comes from. Returns the plan as data and the file name a shell command would read it
    from; (None, "") while there is none yet (an info says how to get one). A file that is not a plan raises a
    FalconError that says what to upload (for the page's ``common.guard``)."""
    made = st.session_state.get(Keys.SIZING_PLAN)
    source = common.widget(st.segmented_control, "plan", list(SOURCES), key="plan_from", required=True,
                           default="sizing" if made else "upload", format_func=SOURCES.get,
                           help="a plan chooses each layer's conv type and ranks for a target (Model sizing → "
                                "“Where should the budget go?”, or `python -m falcon plan --json`); a file is read "
                                "as data and checked against the model before anything runs")
    if source == "sizing":
        if made is None:
            st.info("No plan made in this session yet: make one on **Model sizing** (“Where should the budget "
                    f"go?”, model {model}) or upload a plan file.", icon=":material/info:")
            st.page_link(common.PAGE_BY_FILE["sizing.py"].path, label="Model sizing", icon=":material/stacked_bar_chart:",
                         query_params={"model": model})
            return None, ""
        if made["model"] != model:
            raise FalconError(f"the plan from Model sizing is for {made['model']}, and this page fine-tunes {model}: "
                              + HINT.format(model=model))
        return made["plan"], f"{model}-plan.json"
    file = st.file_uploader("plan (JSON)", type=["json"], key="plan_file", max_upload_size=1,
                            label_visibility="collapsed")  # (read as data, checked before anything runs)
    if file is None:
        st.info(f"Upload a plan of {model}: Model sizing's “Download the plan (JSON)” or `python -m falcon plan "
                f"--model {model} --json > plan.json`.", icon=":material/info:")
        return None, ""
    from falcon.experiments.plans import from_bytes

    return from_bytes(file.getvalue(), file.name), file.name


def config(plan: dict, name: str, base: ExperimentConfig) -> ExperimentConfig:
    """The run of ``plan`` with ``base``'s training settings, resolved and its layers checked against the model
    (nothing fitted yet); a FalconError naming the plan's file and what to change otherwise."""
    from falcon.experiments.plans import check_layers

    try:
        cfg = dataclasses.replace(base, plan=plan).resolved()
        check_layers(cfg.plan, cfg.model)
    except FalconError as e:
        raise FalconError(f"{name}: {e}; {HINT.format(model=base.model)}") from None
    return cfg
