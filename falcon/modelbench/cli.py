"""The command line of the whole-model benchmark: ``python -m falcon.modelbench`` (:func:`main`) and the flags and
runner ``python -m falcon bench --model`` shares (:func:`add_model_args`, :func:`run`); :func:`print_report`."""
from __future__ import annotations

import argparse
import json
import sys

from falcon.bench import MEMORY_FORMATS
from falcon.convtypes import CONV_TYPES
from falcon.errors import FalconError
from falcon.limits import float_flag, hparam_flag, int_flag
from falcon.modelbench.measure import DEFAULT_ROUNDS, measure_model
from falcon.modelbench.prepare import parse_conversions
from falcon.modelbench.results import (
    BREAKDOWN_TOLERANCE,
    CATEGORIES,
    CATEGORY_LABELS,
    ModelBenchResult,
)
from falcon.modelbench.runtimes import RUNTIMES, parse_runtimes


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The flags only the whole-model benchmark has (``--model``, ``--weights``, ``--runtime``, ...)."""
    from falcon.models import MODEL_HELP

    parser.add_argument("--model", default=None, help="measure a whole model: " + MODEL_HELP)
    parser.add_argument("--weights", default=None,
                        help="pretrained, random, or a checkpoint file (default: digits-vgg's bundled weights, "
                             "random init for the others: fine for timing)")
    parser.add_argument("--num-classes", type=int_flag("num_classes"), default=None, help="classes of the model (default: its own)")
    parser.add_argument("--runtime", default="eager", metavar="LIST",
                        help=f"comma-separated runtimes: {', '.join(RUNTIMES)} or all (default eager)")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the profile of where the time goes")


def main_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every flag of ``python -m falcon.modelbench`` on ``parser``."""
    from falcon.convtypes import all_hparams

    add_model_args(parser)
    parser.set_defaults(model="vgg19-cifar")
    parser.add_argument("--conv", default="falcon", metavar="TYPES",
                        help=f"conv type(s) to convert to, comma-separated: {', '.join(CONV_TYPES)} (default falcon)")
    for h in all_hparams().values():
        parser.add_argument(h.flag, dest=h.name, type=hparam_flag(h), default=None,
                            help=f"{h.help} (default {h.default})")
    parser.add_argument("--batch-size", "-B", type=int_flag("batch_size"), default=1, help="batch size (default 1)")
    parser.add_argument("--input-size", "-H", type=int_flag("input_size"), default=None, help="input height = width (default: the model's)")
    parser.add_argument("--memory-format", default="auto", choices=("auto", "both", *MEMORY_FORMATS),
                        help="eager/compile layouts: auto = both (default)")
    parser.add_argument("--threads", type=int_flag("threads"), default=None, help="CPU threads (default: torch.get_num_threads())")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto = CUDA if available")
    parser.add_argument("--rounds", type=int_flag("rounds"), default=DEFAULT_ROUNDS, help=f"interleaved rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--min-run-time", type=float_flag("min_run_time"), default=0.2, help="seconds per entry and round (default 0.2)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return parser


def _conv_from_args(args: argparse.Namespace) -> list[tuple[str, dict]]:
    from falcon.convtypes import all_hparams

    text = getattr(args, "conv", None) or "falcon"
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    given = {h.name: getattr(args, h.name, None) for h in all_hparams().values()}
    hp = {k: v for k, v in given.items() if v is not None}
    rank = hp.pop("rank", None)
    out = parse_conversions(names, rank if rank is not None else 1, **hp)
    if not out:
        raise FalconError("--conv needs a conv type to convert to (standard is the original, always measured)")
    return out


def _progress_line(fraction: float, message: str) -> None:
    sys.stderr.write(f"\r[{fraction:4.0%}] {message:<70.70}")
    if fraction >= 1.0:
        sys.stderr.write("\n")
    sys.stderr.flush()


def print_report(result: ModelBenchResult, out=None) -> None:
    from falcon.cli.common import print_table

    out = out or sys.stdout
    c, h, w = result.input_size
    print(f"{result.model} ({result.weights}), input {c}×{h}×{w}, batch {result.batch_size}", file=out)
    threads = f"{result.threads} thread" + ("s" if result.threads != 1 else "")
    rts = "; ".join(f"{i.name}: {i.version}" for i in result.runtimes if i.available)
    print(f"device {result.device} ({result.device_name}), {threads}, torch {result.torch_version}; {rts}", file=out)
    print_table(result.rows(), ["model", "runtime", "layout", "median_ms", "iqr_ms", "speedup", "rel_error", "status"],
                out=out)
    for conv in result.conversions:
        b = conv.breakdown
        if b is None:
            continue
        overhead = ", ".join(f"{v:.2f} ms" for v in b.overhead_ms.values())
        print(f"\nwhere the time goes, eager {b.layout}, ms per pass ({b.profiler}, {b.iterations} passes; profiler "
              f"overhead {overhead or '-'} calibrated and removed):", file=out)
        rows = [{"part": CATEGORY_LABELS[k], "original": b.original_ms[k], conv.label: b.converted_ms[k]}
                for k in CATEGORIES]
        rows.append({"part": "sum of the parts", "original": b.original_total_ms, conv.label: b.converted_total_ms})
        rows.append({"part": "unprofiled passes", "original": b.original_measured_ms or float("nan"),
                     conv.label: b.converted_measured_ms or float("nan")})
        rows.append({"part": "timed rounds, median", "original": b.original_timed_ms or float("nan"),
                     conv.label: b.converted_timed_ms or float("nan")})
        print_table(rows, ["part", "original", conv.label], out=out)
        verdict = "within" if b.adds_up else "NOT within"
        print(f"parts / unprofiled passes: {b.original_ratio:.2f} (original), {b.converted_ratio:.2f} (converted): "
              f"{verdict} ±{BREAKDOWN_TOLERANCE:.0%}", file=out)
        if b.layers:
            print_table([{"layer": lt.name, "original_ms": lt.original_ms, "converted_ms": lt.converted_ms,
                          "speedup": lt.speedup if lt.speedup is not None else "-",
                          "mac_ratio": lt.mac_ratio if lt.mac_ratio is not None else "-"} for lt in b.layers],
                        out=out)
        if b.explanation:
            print(f"why: {b.explanation}", file=out)
    print(file=out)
    for line in result.summary_lines():
        print(line, file=out)
    for note in result.notes:
        print(f"note: {note}", file=out)
    from falcon.reliability import assess_model

    for reason in assess_model(result).reasons:
        print(f"unreliable: {reason}", file=out)
    if result.stopped:
        print("stopped before the end: results so far", file=out)


def run(args: argparse.Namespace) -> int:
    """Run the whole-model benchmark from parsed flags (:func:`main_args`, or ``bench``'s with ``--model``)."""
    import signal
    import threading

    runtimes = getattr(args, "runtime", "eager") or "eager"
    runtimes = list(RUNTIMES) if runtimes == "all" else parse_runtimes(runtimes)
    show = not getattr(args, "quiet", False) and sys.stderr.isatty()
    interrupted: list[bool] = []

    def on_sigint(signum, frame):  # first Ctrl-C: stop after the current step and report; second: abort
        interrupted.append(True)
        signal.signal(signal.SIGINT, previous)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    memory_format = getattr(args, "memory_format", "auto")
    try:
        result = measure_model(
            model=args.model, weights=getattr(args, "weights", None), conv=_conv_from_args(args),
            batch_size=getattr(args, "batch_size", 1) or 1, input_size=getattr(args, "input_size", None),
            runtimes=runtimes, memory_format=memory_format, threads=getattr(args, "threads", None),
            device=getattr(args, "device", "auto"), rounds=getattr(args, "rounds", None) or DEFAULT_ROUNDS,
            min_run_time=getattr(args, "min_run_time", 0.2), breakdown=getattr(args, "breakdown", True),
            num_classes=getattr(args, "num_classes", None), progress=_progress_line if show else None,
            should_stop=lambda: bool(interrupted))
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if getattr(args, "json", False):
        from falcon.reliability import assess_model

        json.dump({**result.as_dict(), **assess_model(result).as_dict()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    from falcon.cli import _Parser, guarded  # argparse's errors in one line, as python -m falcon's

    parser = _Parser(prog="python -m falcon.modelbench",
                     description="Whole-model latency: the original vs its converted form, per runtime, with where "
                                 "the time goes.")
    main_args(parser)
    return guarded(run, parser.parse_args(argv))

