"""Property-based fuzzing of every subcommand's argument grammar (hypothesis), run in-process through
``falcon.cli.main(argv)``: valid and invalid numbers (unicode digits, huge ints, nan, inf, negative, empty,
out of range), unknown flags and stray words.

Every invocation: no exception escapes ``main`` but SystemExit (no traceback); an invalid one exits non-zero
with exactly one line on stderr; a valid one exits 0 (or, where the command has no cheap valid path, stops at
a known one-line error before any real work). Only cheap paths run: layer, size/fit/convert on digits-vgg;
bench, export and experiment stop before measuring, converting or training. At least 1,000 invocations in
all (``test_at_least_a_thousand_invocations``). The examples are derandomized (profile ``ci``, the default:
the same on every run); ``HYPOTHESIS_PROFILE=explore`` draws new ones.
"""
from __future__ import annotations

import collections
import contextlib
import io
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from falcon.cli import main
from falcon.limits import BOUNDS, Bound

settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
#: derandomized (the same examples on every run: CI's); HYPOTHESIS_PROFILE=explore draws new ones
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.usefixtures("one_thread")

#: invocations run per test (test_at_least_a_thousand_invocations adds them up)
CALLS: collections.Counter = collections.Counter()
VALID: collections.Counter = collections.Counter()  # of which all numbers and flags were valid
EXAMPLES = {"layer": 330, "size": 160, "fit": 90, "convert": 45, "bench": 110, "export": 90, "experiment": 110,
            "results": 70}
TMP = Path(tempfile.mkdtemp(prefix="falcon-fuzz-"))


def run(argv: list[str], key: str) -> tuple[int, str, str]:
    """``python -m falcon ARGV`` in this process: (exit code, stdout, stderr); any other exception propagates."""
    CALLS[key] += 1
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str, argv: list[str]) -> None:
    assert code != 0, f"{argv} was accepted"
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.endswith("\n"), f"{argv}: {err!r}"


# --- values --------------------------------------------------------------------------------------
NOT_NUMBERS = ["", " ", "-", "nan", "NaN", "inf", "-inf", "Infinity", "1e999", "0x10", "1_0", "3 ", " 3", "+3",
               "three", "1,5", "--", "١.٥", "3\t", "None", "True", "[3]"]
NOT_INTEGERS = ["²", "٣", "３", "१", "𝟑", "3.0", "1e3", "-0", "2.5"]


def unicode_digits() -> st.SearchStrategy[str]:
    """Digits that are not ASCII (Nd: '٣', '３'; No: '²', '½'): int() takes many of them."""
    return st.text(st.characters(categories=["Nd", "No"], exclude_characters="0123456789"), min_size=1, max_size=4)


def invalid(b: Bound) -> st.SearchStrategy[str]:
    top = int(b.top)
    outside = [st.integers(top + 1, top * 1000 + 10).map(str), st.integers(2**63, 2**200).map(str),
               st.integers(-2**70, -1).map(str)]
    if b.lo > 0:
        outside.append(st.integers(-5, int(b.lo) - 1).map(str) if b.kind is int else st.just(f"{b.lo:g}"))
    bad = NOT_NUMBERS + (NOT_INTEGERS if b.kind is int else ["0x1p3", "1e-999999" if b.open_lo else "nan"])
    return st.one_of(st.sampled_from(bad), unicode_digits(), *outside)


def floats(lo: float, hi: float) -> st.SearchStrategy[str]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).filter(lambda x: x > 0).map(repr)


def ints(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(str)


@dataclass(frozen=True)
class Flag:
    name: str
    bound: str | Bound
    valid: st.SearchStrategy[str]

    @property
    def b(self) -> Bound:
        return BOUNDS[self.bound] if isinstance(self.bound, str) else self.bound


@st.composite
def invocation(draw, flags: list[Flag], p_invalid: int = 50) -> tuple[list[str], dict[str, str], bool]:
    """(argv for some of the flags, {flag: value}, invalid?), as ``--flag value`` or ``--flag=value``. An
    invalid one (p_invalid %) has at least one bad value, unknown flag or stray word; a valid one none."""
    chosen = draw(st.lists(st.sampled_from(flags), unique_by=lambda f: f.name, max_size=len(flags)))
    bad = draw(st.integers(0, 99)) < p_invalid
    wrong = [bad and draw(st.booleans()) for _ in chosen]
    extra = draw(st.integers(0, 3)) if bad else None
    if bad and not any(wrong) and extra not in (0, 1):
        if chosen:
            wrong[0] = True
        else:
            extra = 0
    argv, values = [], {}
    for f, w in zip(chosen, wrong):
        value = draw(invalid(f.b) if w else f.valid)
        values[f.name] = value
        argv += [f"{f.name}={value}"] if draw(st.booleans()) or value.startswith("-") else [f.name, value]
    if extra == 0:
        argv += [draw(st.sampled_from(["--rnak", "--bogus", "--input_size", "--seed-", "-Z"])), "3"]
    elif extra == 1:
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(["7", "²", "nan"])))
    return argv, values, bad


def run_checked(command: str, base: list[str], drawn, key: str | None = None) -> tuple[int, str, str, dict, bool]:
    """Run it; an invalid invocation must end in exactly one stderr line, non-zero."""
    argv, values, bad = drawn
    full = [command, *base, *argv]
    code, out, err = run(full, key or command)
    assert "Traceback" not in err, err
    if bad:
        one_line_error(code, err, full)
    else:
        VALID[key or command] += 1
    return code, out, err, values, bad


def ok(code: int, out: str, err: str, argv) -> None:
    assert code == 0 and err == "" and out, f"{argv}: exit {code}, {err!r}"


# --- layer: every combination is closed-form, so valid ones run ------------------------------------
LAYER = [Flag("-M", "channels", ints(1, 16384)), Flag("-N", "channels", ints(1, 16384)),
         Flag("-D", "kernel_size", ints(1, 64)), Flag("-H", "input_size", ints(1, 4096)),
         Flag("--input-width", "input_size", ints(1, 4096)), Flag("--stride", "stride", ints(1, 4096)),
         Flag("--padding", "padding", ints(0, 64)), Flag("--rank", Bound("rank", int, 1, 256, "FALCON's"), ints(1, 256))]


@settings(max_examples=EXAMPLES["layer"])
@given(drawn=invocation(LAYER, p_invalid=35), conv=st.sampled_from(["falcon", "dsconv", "standard"]),
       json=st.booleans())
def test_layer(drawn, conv, json):
    required = {"-M": "8", "-N": "8", "-D": "3", "-H": "8"}
    argv, values, bad = drawn
    base = ["--conv", conv, *(["--json"] if json else [])]
    base += [x for flag, v in required.items() if flag not in values for x in (flag, v)]
    code, out, err, values, bad = run_checked("layer", base, drawn)
    if bad:
        return
    if conv == "standard" and "--rank" in values:  # a flag the type does not have: refused, not ignored
        one_line_error(code, err, argv)
        assert "does not apply" in err or "larger than the padded input" in err
        return
    v = {**required, **values}
    d = int(v["-D"])
    pad = int(v.get("--padding", d // 2))
    if d <= int(v["-H"]) + 2 * pad and d <= int(v.get("--input-width", v["-H"])) + 2 * pad:
        ok(code, out, err, argv)
    else:  # a kernel larger than the padded input: one line saying so
        one_line_error(code, err, argv)
        assert "larger than the padded input" in err


# --- size on digits-vgg (shapes only, on meta) ----------------------------------------------------
SIZE = [Flag("--input-size", "input_size", st.one_of(ints(8, 96), ints(8, 4096))),
        Flag("--num-classes", "num_classes", ints(1, 100_000)),
        Flag("--rank", Bound("rank", int, 1, 256, "FALCON's"), ints(1, 12))]
TARGETS = [Flag("--target-crr", "target_rate", floats(0.5, 10_000)), Flag("--target-cr", "target_rate",
                                                                        floats(0.5, 10_000))]


@settings(max_examples=EXAMPLES["size"])
@given(drawn=invocation(SIZE, p_invalid=40), target=st.one_of(st.none(), invocation(TARGETS[:1]),
                                                               invocation(TARGETS[1:])),
       conv=st.sampled_from(["falcon", "dsconv", "standard"]))
def test_size(drawn, target, conv):
    argv, values, bad = drawn
    if target is not None:
        argv, values, bad = argv + target[0], {**values, **target[1]}, bad or target[2]
    code, out, err, values, bad = run_checked("size", ["--model", "digits-vgg", "--conv", conv], (argv, values, bad))
    if bad:
        return
    targeted = any(t.name in values for t in TARGETS)
    if "--rank" in values and (conv == "standard" or targeted):  # not the type's flag, or what a target searches
        one_line_error(code, err, argv)
        assert "does not apply" in err or "not both" in err
    elif int(values.get("--input-size", 32)) < 8:
        one_line_error(code, err, argv)
    elif targeted:  # a budget: 0 when a rank meets it, 1 when none does
        if conv == "standard":
            one_line_error(code, err, argv)
            assert "has none" in err
        else:
            assert code in (0, 1) and err == "" and out
    else:
        ok(code, out, err, argv)


# --- fit and convert on digits-vgg (SVD: milliseconds per layer) ----------------------------------
FIT = [Flag("--rank", "rank", st.one_of(ints(1, 12), ints(1, 65536))), Flag("--seed", "seed", ints(0, 2**63 - 1)),
       Flag("--steps", "steps", ints(0, 100_000)), Flag("--lr", "lr", floats(1e-9, 10)),
       Flag("--num-classes", "num_classes", st.just("10"))]


@settings(max_examples=EXAMPLES["fit"])
@given(drawn=invocation(FIT, p_invalid=55), layer=st.sampled_from(["features.3", "features.14"]))
def test_fit(drawn, layer):
    code, out, err, values, bad = run_checked("fit", ["--model", "digits-vgg", "--layer", layer], drawn)
    if not bad and ("--steps" in values or "--lr" in values):  # gradient-descent flags without --method gd
        one_line_error(code, err, drawn[0])
        assert "--method gd" in err
    elif not bad:
        ok(code, out, err, drawn[0])
        assert ("clamped" in out) == (int(values.get("--rank", 1)) > 9)  # both layers' full rank is 9


CONVERT = [Flag("--rank", "rank", st.one_of(ints(1, 9), st.sampled_from(["1,2", "2-3", "full"]))),
           Flag("--seed", "seed", ints(0, 2**63 - 1)), Flag("--energy", "energy", floats(1e-6, 1.0))]


@settings(max_examples=EXAMPLES["convert"])
@given(drawn=invocation(CONVERT, p_invalid=70), conv=st.sampled_from(["falcon", "dsconv"]))
def test_convert(drawn, conv):
    code, out, err, values, bad = run_checked("convert", ["--model", "digits-vgg", "--conv", conv], drawn)
    if bad:
        return
    if "--rank" in values and "--energy" in values:
        one_line_error(code, err, drawn[0])
        assert "not both" in err
    else:
        ok(code, out, err, drawn[0])


# --- commands whose valid paths measure, export or train: they must stop at a known one-line error ---
BENCH = [Flag("-M", "channels", ints(1, 16384)), Flag("-N", "channels", ints(1, 16384)),
         Flag("-D", "kernel_size", ints(1, 64)), Flag("--input-width", "input_size", ints(1, 4096)),
         Flag("--stride", "stride", ints(1, 4096)), Flag("--padding", "padding", ints(0, 64)),
         Flag("-B", "batch_size", ints(1, 4096)), Flag("--threads", "threads", ints(1, 2)),
         Flag("--rounds", "rounds", ints(1, 1000)), Flag("--min-run-time", "min_run_time", floats(1e-6, 60)),
         Flag("--num-classes", "num_classes", ints(1, 100_000)),
         Flag("--rank", Bound("rank", int, 1, 256, "FALCON's"), ints(1, 256))]


@settings(max_examples=EXAMPLES["bench"])
@given(drawn=invocation(BENCH, p_invalid=50))
def test_bench_stops_before_measuring(drawn):
    """No -H: a valid layer benchmark is refused for what it lacks, before anything is timed."""
    code, out, err, values, bad = run_checked("bench", ["--quiet"], drawn)
    if not bad:
        one_line_error(code, err, drawn[0])
        assert err.startswith("error: a layer benchmark needs") and "--input-size" in err


EXPORT = [Flag("--num-classes", "num_classes", ints(1, 100_000)), Flag("-H", "input_size", ints(1, 4096)),
          Flag("--batch-size", "export_batch_size", ints(1, 256)),
          Flag("--rank", Bound("rank", int, 1, 256, "FALCON's"), ints(1, 256)),
          Flag("--expansion", Bound("expansion", float, 0.01, 16.0, "t"), floats(0.01, 16.0))]


@settings(max_examples=EXAMPLES["export"])
@given(drawn=invocation(EXPORT, p_invalid=50))
def test_export_stops_at_an_unknown_model(drawn):
    out_file = TMP / "never.onnx"
    code, out, err, values, bad = run_checked("export", ["--model", "no-such-model", "-o", str(out_file)], drawn)
    if not bad:
        one_line_error(code, err, drawn[0])
        # the default --conv is falcon: --expansion (mobilev2's) is refused before the model is looked up
        assert ("does not apply" if "--expansion" in values else "unknown model 'no-such-model'") in err
    assert not out_file.exists()


EXPERIMENT = [Flag("--epochs", "epochs", ints(0, 1000)), Flag("--lr", "lr", floats(1e-9, 10)),
              Flag("--weight-decay", "weight_decay", st.one_of(st.just("0"), floats(1e-9, 1))),
              Flag("--batch-size", "batch_size", ints(1, 4096)), Flag("--seed", "seed", ints(0, 2**63 - 1)),
              Flag("--threads", "threads", ints(1, 2)), Flag("--baseline-epochs", "epochs", ints(0, 1000)),
              Flag("--limit-train", "images", ints(1, 10_000_000)), Flag("--limit-test", "images", ints(1, 10_000_000)),
              Flag("--latency-batch-size", "batch_size", ints(1, 4096)), Flag("--latency-rounds", "rounds", ints(1, 1000)),
              Flag("--ranks", "rank", st.lists(ints(1, 65536), min_size=1, max_size=4).map(",".join))]


@settings(max_examples=EXAMPLES["experiment"])
@given(drawn=invocation(EXPERIMENT, p_invalid=50))
def test_experiment_stops_before_training(drawn):
    """No --conv and no --sweep: refused before any data is loaded or step is taken."""
    code, out, err, values, bad = run_checked("experiment", ["--no-store", "--quiet"], drawn)
    if not bad:
        one_line_error(code, err, drawn[0])
        assert "--conv TYPE is required (or --plan FILE, or --sweep)" in err


@settings(max_examples=EXAMPLES["results"])
@given(drawn=invocation([Flag("--limit", "runs", ints(1, 10**9))], p_invalid=50), json=st.booleans())
def test_results(drawn, json):
    db = TMP / "none.sqlite"
    code, out, err, values, bad = run_checked("results", ["--db", str(db), *(["--json"] if json else [])], drawn)
    if not bad:
        ok(code, out, err, drawn[0])
    assert not db.exists()  # reading never creates a database


def test_at_least_a_thousand_invocations():
    """Runs last (file order): the fuzz tests above ran this many invocations between them."""
    if set(CALLS) != set(EXAMPLES):
        pytest.skip(f"only {sorted(CALLS)} of the fuzz tests ran")
    assert sum(CALLS.values()) >= 1000, CALLS
    assert all(VALID[k] >= 5 and CALLS[k] - VALID[k] >= 5 for k in EXAMPLES), (CALLS, VALID)
    print(f"\n{sum(CALLS.values())} invocations, {sum(VALID.values())} valid: {dict(CALLS)} valid {dict(VALID)}")


# --- a real process: one line, no torch warning before it ------------------------------------------
@pytest.mark.parametrize("argv,words", [
    (["export", "--model", "digits-vgg", "-o", "x.onnx", "--batch-size", "100000"], "--batch-size"),
    (["bench", "--model", "digits-vgg", "--threads", "100000"], "--threads"),
    (["experiment", "--conv", "falcon", "--lr", "nan"], "--lr"),
])
def test_invalid_flag_is_one_stderr_line_in_a_real_process(argv, words, tmp_path):
    r = subprocess.run([sys.executable, "-m", "falcon", *argv], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and f"argument {words}" in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


def test_the_no_cuda_runtime_warning_is_dropped_at_the_cli_entry(tmp_path):
    """torch.utils.cpp_extension logs "No CUDA runtime is found" when it is imported (by torch.utils.benchmark,
    torch.onnx, ...) on a machine with a CUDA build of torch and no GPU; falcon.cli.quiet_torch drops it."""
    import torch

    code = "import falcon.cli as c; {} import torch.utils.cpp_extension"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    quiet, loud = (subprocess.run([sys.executable, "-c", code.format(call)], capture_output=True, text=True,
                                  timeout=300, cwd=tmp_path, env=env).stderr for call in ("c.quiet_torch();", ""))
    assert "No CUDA runtime" not in quiet, quiet
    if not torch.cuda.is_available() and torch.version.cuda:  # where torch warns at all: it does without the filter
        assert "No CUDA runtime" in loud
