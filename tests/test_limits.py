"""falcon.limits: the one set of rules for every number that enters (CLI flag, API argument, page input)."""
from __future__ import annotations

import argparse
import importlib
import time

import numpy as np
import pytest
import torch
from torch import nn

import falcon
from falcon import limits
from falcon.errors import FalconError
from falcon.limits import BOUNDS, check_kwargs, float_flag, int_flag, parse_float, parse_int


# --- integers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [("1", 1), ("256", 256), ("0007", 7), ("65536", 65536)])
def test_ascii_digits_are_integers(text, value):
    assert parse_int(text, "rank") == value


@pytest.mark.parametrize("text", [
    "²", "٣", "３", "१", "𝟑",  # superscript, Arabic-Indic, fullwidth, Devanagari, math bold: int() takes most
    " 3", "3 ", "+3", "3.0", "3e0", "0x3", "3_0", "", "-", "three", "3\n",
])
def test_anything_else_is_not_an_integer(text):
    with pytest.raises(FalconError, match=r"rank must be an integer in 1\.\.65536 \(") as e:
        parse_int(text, "rank")
    assert str(e.value).endswith(f"got {text!r}") and "\n" not in str(e.value)


def test_python_ints_are_integers_but_bools_and_floats_are_not():
    assert parse_int(3, "rank") == 3 and type(parse_int(np.int64(3), "rank")) is int
    for value in (True, False, 3.0, np.float64(3.0), None, [3], "3.5"):
        with pytest.raises(FalconError, match="rank must be an integer"):
            parse_int(value, "rank")


def test_bounds_are_inclusive_and_named():
    b = BOUNDS["channels"]
    assert parse_int(str(b.lo), b) == 1 and parse_int(b.top, "channels") == 16384
    for bad in (0, 16385, "16385", "-1", -1):
        with pytest.raises(FalconError, match=r"channels must be an integer in 1\.\.16384 \(.*GB\); got"):
            parse_int(bad, "channels")
    with pytest.raises(FalconError, match=r"^--in-channels must be"):
        parse_int("0", "channels", "--in-channels")


def test_seeds_fit_a_signed_64_bit_integer():
    top = 2**63 - 1
    assert parse_int(top, "seed") == top and parse_int(str(top), "seed") == top and parse_int("0", "seed") == 0
    for bad in (2**63, str(2**63), 2**64, -1, "-1"):
        with pytest.raises(FalconError, match=r"seed must be an integer in 0\.\.9223372036854775807 \(stored as"):
            parse_int(bad, "seed")


def test_huge_digit_strings_are_refused_at_once():
    """Longer than Python's 4,300-digit int() limit (a ValueError there) and than any bound: refused unparsed,
    with the value cut in the message."""
    text = "9" * 100_000
    t0 = time.perf_counter()
    with pytest.raises(FalconError) as e:
        parse_int(text, "steps")
    assert time.perf_counter() - t0 < 0.05
    assert len(str(e.value)) < 300 and "…" in str(e.value)
    with pytest.raises(FalconError, match="rank must be"):
        parse_int(10**100, "rank")


def test_no_bound_lets_a_negative_number_in():
    for b in BOUNDS.values():
        assert b.lo >= 0 and b.top > b.lo and b.why and "\n" not in b.why
        if b.kind is int:
            with pytest.raises(FalconError):
                parse_int("-1", b)


# --- floats --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), (".5", 0.5), ("5.", 5.0), ("10", 10.0), ("2E-1", 0.2),
                                        ("+0.1", 0.1)])
def test_decimal_text_is_a_float(text, value):
    assert parse_float(text, "lr") == value


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", float("nan"), float("inf"),
                                   np.float32("nan"), "١.٥", "0.5 ", "1_0", "0x1p-3", "", True])
def test_nan_inf_and_non_ascii_are_not_floats(value):
    with pytest.raises(FalconError, match=r"learning rate must be a finite number in \(0, 10\] \(") as e:
        parse_float(value, "lr", "learning rate")
    assert "\n" not in str(e.value)


def test_float_bounds_open_and_closed():
    assert parse_float(0, "weight_decay") == 0.0 and parse_float(1, "weight_decay") == 1.0
    with pytest.raises(FalconError, match=r"\(0, 1\]"):
        parse_float(0.0, "energy")  # open at 0: an energy of 0 keeps nothing
    assert parse_float(1.0, "energy") == 1.0
    with pytest.raises(FalconError, match=r"lr must be a finite number in \(0, 10\]"):
        parse_float("10.0001", "lr")


def test_threads_are_bounded_by_the_cores(monkeypatch):
    monkeypatch.setattr(limits.os, "cpu_count", lambda: 2)
    assert limits.hi("threads") == 8 and parse_int("8", "threads") == 8
    with pytest.raises(FalconError, match=r"threads must be an integer in 1\.\.8 \(4 × this machine's CPU cores"):
        parse_int("100000", "threads")
    monkeypatch.setattr(limits.os, "cpu_count", lambda: 512)
    assert limits.hi("threads") == 256
    monkeypatch.setattr(limits.os, "cpu_count", lambda: None)
    assert limits.hi("threads") == 4


# --- argparse types ------------------------------------------------------------------------------
def _parser():
    from falcon.cli import _Parser

    p = _Parser(prog="t")
    p.add_argument("--rank", type=int_flag("rank"))
    p.add_argument("--lr", type=float_flag("lr"))
    return p


def test_flag_types_parse_and_refuse_in_one_line(capsys):
    assert _parser().parse_args(["--rank", "3", "--lr", "1e-2"]) == argparse.Namespace(rank=3, lr=0.01)
    for argv, message in ((["--rank", "²"], "argument --rank: must be an integer in 1..65536"),
                          (["--rank=-4"], "argument --rank: must be an integer in 1..65536"),
                          (["--lr", "nan"], "argument --lr: must be a finite number in (0, 10]")):
        with pytest.raises(SystemExit) as e:
            _parser().parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and message in err, err
    with pytest.raises(TypeError):
        int_flag("lr")
    with pytest.raises(KeyError, match="no bound named 'rnak'"):
        int_flag("rnak")


def test_every_numeric_flag_of_every_command_goes_through_limits():
    """No flag of any subcommand is a bare int or float (int('²') == 2 there, float('nan') is a float)."""
    from falcon.cli import COMMANDS, build_parser

    seen = 0
    for command in COMMANDS:
        sub = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction))
        for action in sub.choices[command]._actions:
            assert action.type not in (int, float), f"{command} {action.option_strings}: bare {action.type.__name__}"
            seen += action.type is not None and getattr(action.type, "__module__", "") == "falcon.limits"
    assert seen >= 40


def test_conv_type_hyper_parameters_keep_their_own_range():
    from falcon.convtypes import all_hparams

    for h in all_hparams().values():
        parse = limits.hparam_flag(h)
        assert parse(str(h.maximum)) == h.maximum
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be .* in .*{h.minimum:g}"):
            parse(str(h.maximum * 2))
        with pytest.raises(argparse.ArgumentTypeError):
            parse("nan" if h.kind is float else "²")


# --- the API -------------------------------------------------------------------------------------
def test_check_kwargs_names_the_bad_key_and_the_allowed_ones():
    check_kwargs("f", {"rank": 1}, ["rank"])
    with pytest.raises(FalconError, match=r"^f\(\) got an unexpected keyword argument 'rnak'; it takes: rank, lr$"):
        check_kwargs("f", {"rnak": 1}, ["rank", "lr"])
    with pytest.raises(FalconError, match=r"unexpected keyword arguments 'a', 'b'; it takes: none"):
        check_kwargs("f", {"a": 1, "b": 2}, [])


def _net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))


def test_size_rejects_a_misspelt_keyword():
    assert falcon.size(_net(), (3, 8, 8), rank=2).params > 0
    with pytest.raises(FalconError, match=r"falcon\.size\(\) got an unexpected keyword argument 'rnak'; it takes: "
                                          r"input_size, conv, .*num_classes, rank$"):
        falcon.size(_net(), (3, 8, 8), rnak=4)
    with pytest.raises(FalconError, match="'steps'"):  # a gd setting is not a sizing option
        falcon.size(_net(), (3, 8, 8), steps=4)
    with pytest.raises(FalconError, match=r"input size must be an integer in 1\.\.4096"):
        falcon.size("digits-vgg", 10**6)
    with pytest.raises(FalconError, match=r"number of classes must be an integer in 1\.\.100000"):
        falcon.size("digits-vgg", num_classes=True)


def test_convert_rejects_a_misspelt_keyword_and_gd_settings_without_gd():
    with pytest.raises(FalconError, match=r"falcon\.convert\(\) got an unexpected keyword argument 'stpes'; .*steps"):
        falcon.convert(_net(), input_size=(3, 8, 8), stpes=3)
    with pytest.raises(FalconError, match="steps: gradient-descent settings, for init 'gd' only"):
        falcon.convert(_net(), input_size=(3, 8, 8), steps=3)
    with pytest.raises(FalconError, match=r"learning rate must be a finite number"):
        falcon.convert(_net(), input_size=(3, 8, 8), init="gd", steps=1, lr=float("nan"))
    with pytest.raises(FalconError, match=r"seed must be an integer in 0\.\.9223372036854775807"):
        falcon.convert(_net(), input_size=(3, 8, 8), seed=2**63)
    from falcon.conversion import convert_model

    with pytest.raises(FalconError, match=r"convert_model\(\) got an unexpected keyword argument 'sepd'"):
        convert_model(_net(), input_size=(3, 8, 8), sepd=1)


def test_gd_options_are_gd_fits_settings():
    import inspect

    from falcon.ehp import GD_OPTIONS, gd_fit

    assert set(GD_OPTIONS) == set(inspect.signature(gd_fit).parameters) - {"kernel", "rank", "axis", "seed"}


def test_library_checks_use_the_same_rules():
    from falcon.bench import measure
    from falcon.conversion import parse_ranks
    from falcon.experiments.pipeline import ExperimentConfig
    from falcon.spec import LayerSpec

    with pytest.raises(FalconError, match=r"threads must be an integer in 1\.\."):
        measure(LayerSpec(4, 4, 3, 8), ["falcon"], batch_size=1, device="cpu", threads=100_000)
    with pytest.raises(FalconError, match=r"seed must be an integer in 0\.\.9223372036854775807"):
        ExperimentConfig(seed=2**63).resolved()
    with pytest.raises(FalconError, match=r"weight decay must be a finite number in \[0, 1\]"):
        ExperimentConfig(weight_decay=float("nan")).resolved()
    with pytest.raises(FalconError, match=r"rank must be an integer in 1\.\.65536"):
        parse_ranks("1-1000000000000", 9)
    with pytest.raises(FalconError, match="rank must be an integer, a list"):
        parse_ranks("²", 9)
    assert parse_ranks("1, 3-4", 9) == [1, 3, 4]


def test_limits_imports_no_torch():
    """The CLI and the pages import it before deciding what to load: stdlib only."""
    import subprocess
    import sys

    code = "import sys, falcon.limits; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert importlib.import_module("falcon.limits") is limits and torch  # (torch imported here by the tests)


# --- export: a sample batch and input size the model takes ----------------------------------------
@pytest.mark.parametrize("argv,words", [
    (["export", "--model", "vgg19-cifar", "-H", "9"], "vgg19-cifar does not run on a 9×9 input of 3 channels"),
    (["export", "--model", "digits-vgg", "-H", "4"], "digits-vgg does not run on a 4×4 input of 1 channels"),
    (["export", "--model", "digits-vgg", "--batch-size", "0"], "--batch-size/-B: must be an integer in 1..256"),
    (["bench", "--model", "vgg19-cifar", "-H", "9", "--rounds", "1"], "vgg19-cifar does not run on a 9×9 input"),
])
def test_export_and_bench_refuse_sizes_the_model_does_not_take(argv, words, tmp_path, capsys):
    from falcon.cli import main

    out = tmp_path / "m.onnx"
    code = None
    try:
        code = main([*argv, *(["-o", str(out)] if argv[0] == "export" else [])])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()


def test_export_model_checks_its_batch_size(tmp_path):
    from falcon.deploy import export_model

    for bad in (0, -1, 100_000, True):
        with pytest.raises(FalconError, match=r"batch size must be an integer in 1\.\.256"):
            export_model("digits-vgg", tmp_path / "m.onnx", batch_size=bad)
    assert not list(tmp_path.iterdir())


def test_a_hyper_parameter_no_conv_type_given_takes_is_refused():
    """measure_model / export_model / prepare_models pass their keywords to parse_conversions: a misspelt or
    misplaced one (rnak, an expansion for falcon) is an error, not silently dropped."""
    from falcon.modelbench import parse_conversions

    assert parse_conversions(["falcon", "mobilev2"], 2, expansion=1.0) == [("falcon", {"rank": 2}),
                                                                          ("mobilev2", {"expansion": 1.0})]
    with pytest.raises(FalconError, match=r"no conv type given has a hyper-parameter 'rnak'; they take rank$"):
        parse_conversions("falcon", 1, rnak=2)
    with pytest.raises(FalconError, match=r"'expansion'; they take rank$"):
        parse_conversions(["falcon"], 1, expansion=0.5)
