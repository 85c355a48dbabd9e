"""Published results of the FALCON thesis (Tables 3-8), as a DataFrame.

The numbers live in ``falcon/data/paper_results.csv`` (package data); see
``falcon/data/paper_results.md`` for provenance and the meaning of each column.
This module must stay light: no torch, no streamlit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from falcon.convtypes import CONV_TYPES
from falcon.data import DATA_DIR

PAPER_RESULTS_CSV = DATA_DIR / "paper_results.csv"

#: paper model name -> this project's model name (the names alone: falcon.models.PAPER_MODELS)
MODEL_BY_PAPER_NAME = {
    "vgg19": "vgg19-cifar",
    "resnet34": "resnet34-cifar",
    "vgg16_bn": "vgg16_bn",
    "resnet18": "resnet18",
}

DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "imagenet": 1000}
DATASET_INPUT_SIZE = {"cifar10": 32, "cifar100": 32, "svhn": 32, "imagenet": 224}

COLUMNS = ["model", "dataset", "method", "rank", "top1", "top5", "params_m", "macs_m", "table"]
#: The conv types the thesis's tables report (registry entries with ``paper_hparams``).
METHODS = [n for n, c in CONV_TYPES.items() if c.paper_hparams is not None]
#: The ranked types the thesis reports at several ranks (their ``paper_hparams`` leave the rank open): FALCON,
#: ranks 1–3. The accuracy figure joins their points by rank; a sweep runs them at each of its ranks.
PAPER_RANKED: tuple[str, ...] = tuple(n for n in METHODS if CONV_TYPES[n].ranked
                                      and "rank" not in CONV_TYPES[n].paper_hparams)


def load_paper_results(path: str | Path | None = None) -> pd.DataFrame:
    """Read the transcribed thesis tables.

    Columns: model, dataset, method, table (str); rank (nullable ``Int64``,
    set only for falcon rows); top1, top5, params_m, macs_m (float; top5 is
    NaN except for ImageNet). Percentages are in percent, params and MACs in
    millions, as printed in the thesis.
    """
    csv_path = Path(path) if path is not None else PAPER_RESULTS_CSV
    df = pd.read_csv(
        csv_path,
        dtype={
            "model": str,
            "dataset": str,
            "method": str,
            "rank": "Int64",
            "top1": float,
            "top5": float,
            "params_m": float,
            "macs_m": float,
            "table": str,
        },
        keep_default_na=False,
        na_values={"rank": [""], "top1": [""], "top5": [""], "params_m": [""], "macs_m": [""]},
    )
    return df[COLUMNS]


# ----------------------------------------------------------------------------------------------
# the thesis's rows that match a sizing

def paper_rows(model: str, conv: str, hparams: dict[str, Any], num_classes: int, input_size: int) -> pd.DataFrame:
    """The thesis's rows for this sizing: same model, classes, input size, conv type and hyper-parameters.

    Empty when the thesis has no such row (another model, another width, a rank above 3 …). Several
    rows can match (CIFAR-10 and SVHN share a model shape): they carry the same params/MACs.
    """
    paper_names = [p for p, ours in MODEL_BY_PAPER_NAME.items() if ours == model]
    want = CONV_TYPES[conv].paper_hparams if conv in CONV_TYPES else None
    if not paper_names or want is None:
        return pd.DataFrame()
    if any(hparams.get(k) != v for k, v in want.items()):
        return pd.DataFrame()
    df = load_paper_results()
    datasets = [d for d in DATASET_CLASSES
                if DATASET_CLASSES[d] == num_classes and DATASET_INPUT_SIZE[d] == input_size]
    sel = df[df["model"].isin(paper_names) & df["dataset"].isin(datasets) & (df["method"] == conv)]
    if CONV_TYPES[conv].ranked and "rank" not in want:  # the thesis's rows of each rank
        sel = sel[sel["rank"] == hparams.get("rank", 1)]
    return sel.reset_index(drop=True)


def paper_comparison(paper: pd.DataFrame, params: int, macs: int) -> pd.DataFrame:
    """Published params/MACs (millions, as printed) beside ours, with the differences."""
    rows = []
    for _, r in paper.iterrows():
        for what, ours, theirs in (("params", params, r["params_m"]), ("MACs (FLOPs)", macs, r["macs_m"])):
            ours_m = ours / 1e6
            rows.append({"dataset": r["dataset"], "table": r["table"], "quantity": what,
                         "paper (M)": float(theirs), "ours (M)": ours_m, "difference (M)": ours_m - theirs,
                         "difference (%)": 100 * (ours_m - theirs) / theirs if theirs else float("nan")})
    return pd.DataFrame(rows)
