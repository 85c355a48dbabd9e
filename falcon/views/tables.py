"""Tables and LaTeX for display: the calculator's cost table and its formula sums."""
from __future__ import annotations

from typing import Any

import pandas as pd

from falcon.convtypes import Cost


def latex_int(n: int) -> str:
    """12345678 → ``12{,}345{,}678`` (thousands separators that LaTeX does not space out)."""
    return f"{n:,}".replace(",", "{,}")


def parts_latex(cost: Cost, what: str) -> str:
    """The parts of a cost added up in LaTeX: ``65{,}536 + 2{,}304 = 67{,}840`` (``what``: params or macs)."""
    values = [getattr(p, what) for p in cost.parts]
    total = getattr(cost, what)
    if len(values) <= 1:
        return latex_int(total)
    return " + ".join(latex_int(v) for v in values) + " = " + latex_int(total)


def layer_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The calculator's table: conv type, params, MACs, CR, CRR (rows with an error are left out)."""
    rows = [r for r in rows if "error" not in r]
    return pd.DataFrame({
        "conv type": [r["label"] for r in rows],
        "params": [r["params"] for r in rows],
        "MACs": [r["macs"] for r in rows],
        "CR (params)": [r["compression_rate"] for r in rows],
        "CRR (MACs)": [r["computation_reduction_rate"] for r in rows],
    }, index=pd.Index([r["conv"] for r in rows], name="conv"))


def with_formulas(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calculator's rows (:func:`falcon.costs.layer_rows`) with each type's LaTeX formulas and this layer's
    sums of parts (``latex_params``, ``latex_macs``, ``params_sum``, ``macs_sum``); the ``Cost`` object is dropped
    (the rows are cached as plain data)."""
    from falcon.convtypes import get_conv_type

    out = []
    for r in rows:
        r = dict(r)
        cost = r.pop("cost", None)
        if cost is not None:
            ct = get_conv_type(r["conv"])
            r.update(latex_params=ct.latex_params, latex_macs=ct.latex_macs,
                     params_sum=parts_latex(cost, "params"), macs_sum=parts_latex(cost, "macs"))
        out.append(r)
    return out
