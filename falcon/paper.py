"""Published results of the FALCON thesis (Tables 3-8), as a DataFrame.

The numbers live in ``data/paper_results.csv`` at the repository root; see
``data/paper_results.md`` for provenance and the meaning of each column.
This module must stay light: no torch, no streamlit.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PAPER_RESULTS_CSV = Path(__file__).resolve().parent.parent / "data" / "paper_results.csv"

#: paper model name -> this project's model name
PAPER_MODELS = {
    "vgg19": "vgg19-cifar",
    "resnet34": "resnet34-cifar",
    "vgg16_bn": "vgg16_bn",
    "resnet18": "resnet18",
}

DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "imagenet": 1000}
DATASET_INPUT_SIZE = {"cifar10": 32, "cifar100": 32, "svhn": 32, "imagenet": 224}

COLUMNS = ["model", "dataset", "method", "rank", "top1", "top5", "params_m", "macs_m", "table"]
METHODS = ["standard", "falcon", "dsconv", "mobilev2", "shuffle"]


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
