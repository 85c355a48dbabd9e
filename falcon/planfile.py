"""A plan file as data: ``python -m falcon plan --json`` writes it; ``convert --plan``, ``experiment --plan`` and the
app read it here. Nothing in it is ever run: its names are checked against the registry, its numbers by
:mod:`falcon.limits`. (The planner itself is :mod:`falcon.planning`; this module imports neither it nor the
conversion, so both can use it.)"""
from __future__ import annotations

import json

from falcon.errors import FalconError

FORMAT = "falcon-explorer/plan-v1"
KEEP = "standard"  # a layer the plan keeps as it is


def fittable_types() -> list[str]:
    """The conv types a plan may choose (the registry's fittable ones)."""
    from falcon.convtypes import CONV_TYPES

    return [c.name for c in CONV_TYPES.values() if c.fittable]


def parse_types(text: str) -> list[str]:
    """``--types`` text (``falcon,tucker2,standard``): the conv types a plan may choose, each fittable or the keep
    choice; anything else is one line naming what is allowed."""
    from falcon.convtypes import CONV_TYPES

    types = [t.strip() for t in str(text).split(",") if t.strip()]
    known = set(fittable_types()) | {KEEP}
    bad = [t for t in types if t not in known]
    if bad or not types:
        unfit = [t for t in bad if t in CONV_TYPES]
        why = f" ({', '.join(unfit)} cannot be fitted to trained weights)" if unfit else ""
        raise FalconError(f"--types takes {', '.join(sorted(known))}; got {', '.join(bad) or 'nothing'}{why}")
    return types


def read_plan(obj_or_path) -> dict:
    """A plan as plain data, from a dict or a JSON file (data only: names are checked against the registry)."""
    if isinstance(obj_or_path, dict):
        obj = obj_or_path
    else:
        try:
            with open(obj_or_path, encoding="utf-8") as fh:
                obj = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FalconError(f"cannot read the plan {obj_or_path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("layers"), list):
        raise FalconError(f"{obj_or_path if not isinstance(obj_or_path, dict) else 'the plan'} is not a plan made by "
                          "`python -m falcon plan --json`")
    return obj


def plan_layers(plan) -> list[tuple[str, str, dict[str, int]]]:
    """(layer, conv type, ranks) of each layer a plan replaces (those it keeps left out), each entry checked as data:
    a fittable type of the registry, the ranked hyper-parameters it takes, integers in range, no layer twice."""
    from falcon.convtypes import get_conv_type
    from falcon.limits import parse_int

    out: dict[str, tuple[str, str, dict[str, int]]] = {}
    for layer in read_plan(plan)["layers"]:
        if not isinstance(layer, dict) or not isinstance(layer.get("hparams") or {}, dict):
            raise FalconError("each layer of a plan is an object with layer, conv and hparams; got "
                              f"{str(layer)[:80]!r}")
        name, conv = str(layer.get("layer", "")), str(layer.get("conv", ""))
        if conv == KEEP:
            continue
        ct = get_conv_type(conv)
        if not ct.fittable:
            raise FalconError(f"{name}: {conv} cannot be fitted to trained weights; a plan chooses among "
                              f"{', '.join(fittable_types())}")
        hp = {k: parse_int(v, "rank", f"{name}: {k}") for k, v in dict(layer.get("hparams") or {}).items()}
        if set(hp) != set(ct.rank_names):
            raise FalconError(f"{name}: {conv} takes {', '.join(ct.rank_names)}; the plan gives {', '.join(hp) or 'none'}")
        if name in out:
            raise FalconError(f"the plan names {name!r} twice")
        out[name] = (name, conv, hp)
    return list(out.values())


def plan_input_size(plan) -> tuple[int, int, int] | None:
    """The (C, H, W) a plan was made at (limits' bounds), None if it does not say."""
    from falcon.limits import parse_int

    size = read_plan(plan).get("input_size")
    if size is None:
        return None
    if not isinstance(size, list) or len(size) != 3:
        raise FalconError(f"the plan's input_size is [C, H, W]; got {str(size)[:40]!r}")
    return (parse_int(size[0], "channels", "the plan's input channels"),
            parse_int(size[1], "input_size", "the plan's input size"), parse_int(size[2], "input_size", "the plan's input size"))
