"""Checks on the transcribed thesis tables (falcon/data/paper_results.csv) and their loader."""

import csv
import math

import pandas as pd
import pytest

from falcon.paper import (
    DATASET_CLASSES,
    DATASET_INPUT_SIZE,
    MODEL_BY_PAPER_NAME,
    PAPER_RESULTS_CSV,
    load_paper_results,
)

HEADER = ["model", "dataset", "method", "rank", "top1", "top5", "params_m", "macs_m", "table"]
MODELS = {"vgg19", "resnet34", "vgg16_bn", "resnet18"}
DATASETS = {"cifar10", "cifar100", "svhn", "imagenet"}
METHODS = {"standard", "falcon", "dsconv", "mobilev2", "shuffle"}
PAIRS = {
    ("vgg19", "cifar10"), ("resnet34", "cifar10"),
    ("vgg19", "cifar100"), ("resnet34", "cifar100"),
    ("vgg19", "svhn"), ("resnet34", "svhn"),
    ("vgg16_bn", "imagenet"), ("resnet18", "imagenet"),
}
KEY = ["model", "dataset", "method", "rank"]


@pytest.fixture(scope="module")
def df():
    return load_paper_results()


def _row(df, model, dataset, method, rank=None):
    sel = (df.model == model) & (df.dataset == dataset) & (df.method == method)
    sel &= df["rank"].isna() if rank is None else (df["rank"] == rank).fillna(False)
    out = df[sel]
    assert len(out) == 1, (model, dataset, method, rank)
    return out.iloc[0]


def test_raw_header_and_row_count():
    with open(PAPER_RESULTS_CSV, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == HEADER
    assert len(rows) == 57
    assert all(len(r) == len(HEADER) for r in rows)


def test_loader_shape_and_dtypes(df):
    assert list(df.columns) == HEADER
    assert len(df) == 56
    assert str(df["rank"].dtype) == "Int64"
    for col in ["top1", "top5", "params_m", "macs_m"]:
        assert df[col].dtype == float, col
    for col in ["model", "dataset", "method", "table"]:
        assert df[col].map(lambda v: isinstance(v, str) and v != "").all(), col


def test_unique_keys(df):
    assert not df.duplicated(subset=KEY).any()


def test_allowed_values(df):
    assert set(df.model) == MODELS
    assert set(df.dataset) == DATASETS
    assert set(df.method) == METHODS
    assert set(df["rank"].dropna()) == {1, 2, 3}
    assert set(zip(df.model, df.dataset)) == PAIRS
    assert set(MODEL_BY_PAPER_NAME) == MODELS
    assert set(DATASET_CLASSES) == DATASETS
    assert set(DATASET_INPUT_SIZE) == DATASETS


def test_seven_rows_per_pair(df):
    expected = {("standard", None), ("falcon", 1), ("falcon", 2), ("falcon", 3),
                ("dsconv", None), ("mobilev2", None), ("shuffle", None)}
    for (model, dataset), g in df.groupby(["model", "dataset"]):
        got = {(m, None if pd.isna(r) else int(r)) for m, r in zip(g.method, g["rank"])}
        assert got == expected, (model, dataset)


def test_top5_iff_imagenet(df):
    assert (df.top5.notna() == (df.dataset == "imagenet")).all()


def test_rank_iff_falcon(df):
    assert (df["rank"].notna() == (df.method == "falcon")).all()


def test_numeric_ranges(df):
    assert df.top1.notna().all() and df.params_m.notna().all() and df.macs_m.notna().all()
    assert df.top1.between(50, 100).all()
    imnet = df[df.dataset == "imagenet"]
    assert imnet.top5.between(50, 100).all()
    assert (imnet.top5 > imnet.top1).all()
    assert df.params_m.between(1, 200).all()
    assert df.macs_m.between(10, 20000).all()
    # every compressed row is smaller than its pair's standard convolution
    for _, g in df.groupby(["model", "dataset"]):
        std = g[g.method == "standard"].iloc[0]
        rest = g[g.method != "standard"]
        assert (rest.params_m < std.params_m).all()
        assert (rest.macs_m < std.macs_m).all()


def test_falcon_costs_increase_with_rank(df):
    fal = df[df.method == "falcon"]
    for _, g in fal.groupby(["model", "dataset"]):
        g = g.sort_values("rank")
        assert list(g["rank"]) == [1, 2, 3]
        assert g.params_m.is_monotonic_increasing and g.params_m.is_unique
        assert g.macs_m.is_monotonic_increasing and g.macs_m.is_unique


def test_table_column(df):
    for r in df.itertuples():
        parts = r.table.split(";")
        if r.method == "standard" or (r.method == "falcon" and r.rank == 1):
            assert len(parts) == 2
            first, second = parts
            assert first[0] in "345" and second[0] == str(int(first[0]) + 3)
            assert first[1:] == second[1:]
        elif r.method == "falcon":
            assert len(parts) == 1 and parts[0][0] in "678"
        else:
            assert len(parts) == 1 and parts[0][0] in "345"


@pytest.mark.parametrize(
    "model,dataset,method,rank,top1,top5,params_m,macs_m",
    [
        ("vgg19", "cifar10", "standard", None, 93.28, None, 20.30, 398.70),
        ("vgg19", "cifar10", "falcon", 1, 93.23, None, 2.56, 47.23),
        ("resnet34", "cifar100", "falcon", 3, 70.36, None, 7.49, 130.13),
        ("resnet34", "svhn", "dsconv", None, 88.62, None, 2.62, 38.41),
        ("vgg19", "cifar100", "mobilev2", None, 68.31, None, 2.71, 51.85),
        ("resnet34", "cifar10", "shuffle", None, 90.28, None, 3.08, 49.78),
        ("vgg16_bn", "imagenet", "standard", None, 73.37, 91.50, 138.37, 15484.82),
        ("vgg16_bn", "imagenet", "falcon", 2, 72.88, 91.19, 127.00, 3777.86),
        ("resnet18", "imagenet", "falcon", 3, 69.07, 88.56, 4.48, 910.61),
        ("resnet18", "imagenet", "mobilev2", None, 58.99, 81.55, 1.90, 340.06),
    ],
)
def test_spot_values(df, model, dataset, method, rank, top1, top5, params_m, macs_m):
    r = _row(df, model, dataset, method, rank)
    assert r.top1 == pytest.approx(top1)
    if top5 is None:
        assert math.isnan(r.top5)
    else:
        assert r.top5 == pytest.approx(top5)
    assert r.params_m == pytest.approx(params_m)
    assert r.macs_m == pytest.approx(macs_m)


def test_printed_decimals_kept():
    with open(PAPER_RESULTS_CSV, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            for col in ["top1", "top5", "params_m", "macs_m"]:
                v = row[col]
                if v:
                    assert len(v.split(".")[1]) == 2, (col, v)


@pytest.mark.parametrize("model, dataset", sorted(PAIRS))
def test_project_mappings(df, model, dataset):
    """The mappings say which of our models, at how many classes and what input size, is the thesis's
    (model, dataset): sized that way, our standard model reproduces the published standard row, and
    the sizing page's lookup (paper_rows) finds that row again from our side."""
    from falcon.paper import paper_rows
    from falcon.sizing import size_model

    ours, classes, size = MODEL_BY_PAPER_NAME[model], DATASET_CLASSES[dataset], DATASET_INPUT_SIZE[dataset]
    published = _row(df, model, dataset, "standard")
    r = size_model(ours, "standard", num_classes=classes, input_size=size, convention="paper")
    assert r.params / 1e6 == pytest.approx(published.params_m, rel=1e-3, abs=0.005)
    assert r.macs / 1e6 == pytest.approx(published.macs_m, rel=1e-3, abs=0.005)
    found = paper_rows(ours, "standard", {}, classes, size)
    assert ((found.model == model) & (found.dataset == dataset)).sum() == 1
    assert set(found.model) == {model}


def test_paper_module_is_light():
    import ast

    import falcon.paper as paper

    tree = ast.parse(open(paper.__file__, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "torchvision", "streamlit"}
