"""Cost sweeps over the registry: every conv type's cost for one layer, and a ranked type's cost by rank.

Plain data (dicts, DataFrames) for the calculator, the CLI and the charts; formatting for display is in
:mod:`falcon.views`.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from falcon.convtypes import CONV_TYPES, RANKED, break_even_rank, compare, get_conv_type
from falcon.errors import FalconError
from falcon.spec import LayerSpec


def layer_rows(spec: LayerSpec, hparams: dict[str, dict[str, Any]] | None = None,
               convs: list[str] | None = None, keep_going: bool = False) -> list[dict[str, Any]]:
    """One row per conv type: its cost next to the standard conv's (from :func:`falcon.convtypes.compare`).

    ``hparams`` maps a conv type to its hyper-parameters (missing ones: the registry defaults). When a
    type's hyper-parameters do not fit the layer this raises :class:`FalconError`, or with
    ``keep_going`` gives that type a row with only ``conv``, ``label``, ``color`` and ``error``.
    """
    hparams = hparams or {}
    rows = []
    for name in convs or list(CONV_TYPES):
        ct = get_conv_type(name)
        try:
            c = compare(spec, name, **hparams.get(name, {}))
        except FalconError as e:
            if not keep_going:
                raise
            rows.append({"conv": name, "label": ct.label, "color": ct.color, "error": str(e)})
            continue
        rows.append({
            "conv": name,
            "label": ct.display_name(**c.hparams),
            "color": ct.color,
            "hparams": dict(c.hparams),
            "params": c.cost.params,
            "macs": c.cost.macs,
            "compression_rate": c.compression_rate,
            "computation_reduction_rate": c.computation_reduction_rate,
            "parts": [{"part": p.name, "params": p.params, "macs": p.macs} for p in c.cost.parts],
            "cost": c.cost,
        })
    return rows


#: The rank chart draws the ranked types that stop saving by this rank, or within 4× of the type that stops
#: first (one axis for all of them; a type whose break-even rank is in the hundreds, such as CP or spatial
#: low-rank on a wide layer, is only listed).
RANK_CHART_MAX = 64


def rank_sweep(spec: LayerSpec, conv: str = "falcon", max_rank: int | None = None) -> pd.DataFrame:
    """CR and CRR of ``conv`` at uniform rank k (every ranked hyper-parameter k) for k = 1 … max_rank (default: a
    little past both break-even ranks)."""
    ct = get_conv_type(conv)
    top = min(h.maximum for h in ct.hparams if h.name in ct.rank_names)
    if max_rank is None:
        be = max(break_even_rank(spec, conv, "params"), break_even_rank(spec, conv, "macs"))
        max_rank = min(top, max(4, math.ceil(be * 1.25)))
    rows = []
    for k in range(1, max_rank + 1):
        c = compare(spec, conv, **ct.rank_hparams(k))
        rows.append({"rank": k, "params": c.cost.params, "macs": c.cost.macs,
                     "compression_rate": c.compression_rate,
                     "computation_reduction_rate": c.computation_reduction_rate})
    return pd.DataFrame(rows)


def rank_chart(spec: LayerSpec) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, int]]]:
    """(sweeps, break-even ranks) for the rank chart: the break-even ranks (params and MACs) of every ranked type,
    and the sweeps of those that stop saving by :data:`RANK_CHART_MAX`."""
    be = {c: {"params": break_even_rank(spec, c, "params"), "macs": break_even_rank(spec, c, "macs")} for c in RANKED}
    limit = max(RANK_CHART_MAX, 4 * min((max(by.values()) for by in be.values()), default=1))
    sweeps = {c: rank_sweep(spec, c) for c, by in be.items() if max(by.values()) <= limit}
    return sweeps, be
