"""Cost sweeps over the registry: every conv type's cost for one layer, and a ranked type's cost by rank.

Plain data (dicts, DataFrames) for the calculator, the CLI and the charts; formatting for display is in
:mod:`falcon.views`.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from falcon.convtypes import CONV_TYPES, break_even_rank, compare, get_conv_type
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


def rank_sweep(spec: LayerSpec, conv: str = "falcon", max_rank: int | None = None) -> pd.DataFrame:
    """CR and CRR of rank-k ``conv`` for k = 1 … max_rank (default: a little past both break-even ranks)."""
    ct = get_conv_type(conv)
    top = next(h.maximum for h in ct.hparams if h.name == "rank")
    if max_rank is None:
        be = max(break_even_rank(spec, conv, "params"), break_even_rank(spec, conv, "macs"))
        max_rank = min(top, max(4, math.ceil(be * 1.25)))
    rows = []
    for k in range(1, max_rank + 1):
        c = compare(spec, conv, rank=k)
        rows.append({"rank": k, "params": c.cost.params, "macs": c.cost.macs,
                     "compression_rate": c.compression_rate,
                     "computation_reduction_rate": c.computation_reduction_rate})
    return pd.DataFrame(rows)
