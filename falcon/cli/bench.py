"""``python -m falcon bench``: measured latency of conv types next to the standard conv and the theory."""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from falcon.bench import BENCH_CONVS, DEFAULT_BENCH_CONVS, DEVICES, DTYPES, MEMORY_FORMATS, BenchReport, measure
from falcon.cli.common import check_hparam_flags, print_json, print_table
from falcon.convtypes import CONV_TYPES, all_hparams, parse_variant
from falcon.errors import FalconError
from falcon.limits import float_flag, hparam_flag, int_flag
from falcon.reliability import assess_layer
from falcon.spec import LayerSpec


#: the columns of BenchReport.rows() the text table shows
TEXT_COLUMNS = ["conv", "layout", "median_ms", "iqr_ms", "GMAC/s", "speedup", "theory", "best", "memory"]


def add_parser(sub) -> None:
    from falcon.modelbench import add_model_args

    p = sub.add_parser("bench", help="measured latency of conv types vs the standard conv (a layer, or --model)",
                       description="Time the forward pass (inference mode) of one layer's conv types with "
                                   "torch.utils.benchmark: warm-up, interleaved rounds, median and IQR; measured "
                                   "speedup over the standard conv next to the theoretical MAC ratio. With --model, "
                                   "a whole model beside its converted form, per runtime, with where the time goes "
                                   "(the layer flags -M/-N/-D are then not used; -H is the input size).")
    p.add_argument("--in-channels", "-M", type=int_flag("channels"), default=None, help="input channels M (a layer)")
    p.add_argument("--out-channels", "-N", type=int_flag("channels"), default=None, help="output channels N (a layer)")
    p.add_argument("--kernel-size", "-D", type=int_flag("kernel_size"), default=None, help="kernel size D (D×D) (a layer)")
    p.add_argument("--input-size", "-H", type=int_flag("input_size"), default=None, help="input height H (a layer; with --model: "
                                                                       "H = W, default the model's own)")
    p.add_argument("--input-width", type=int_flag("input_size"), default=None, help="input width W (default: H)")
    p.add_argument("--stride", type=int_flag("stride"), default=1, help="stride s (default 1)")
    p.add_argument("--padding", type=int_flag("padding"), default=None, help="padding p (default D//2)")
    p.add_argument("--batch-size", "-B", type=int_flag("batch_size"), default=None, help="batch size (a layer: required; --model: 1)")
    p.add_argument("--conv", default=None, metavar="TYPES",
                   help=f"comma-separated conv types: {', '.join(BENCH_CONVS)} (default: {','.join(DEFAULT_BENCH_CONVS)}; "
                        "standard is always measured)")
    for h in all_hparams().values():
        users = [c.name for c in CONV_TYPES.values() if h in c.hparams]
        users += [CONV_TYPES[u].fused_name for u in users if CONV_TYPES[u].fused_name]
        p.add_argument(h.flag, dest=h.name, type=hparam_flag(h), default=None,
                       help=f"{h.help} ({'/'.join(users)}; default {h.default}, range {h.minimum}–{h.maximum})")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--memory-format", default="auto", choices=("auto", *MEMORY_FORMATS),
                   help="auto measures both layouts and marks the best")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="float16/bfloat16 on CUDA only")
    p.add_argument("--threads", type=int_flag("threads"), default=None, help="CPU threads (default: torch.get_num_threads())")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall: wall-clock time (default); cpu: process CPU time, 1 thread only "
                        "(leaves out time spent waiting for a core on a shared machine)")
    p.add_argument("--no-retain-memory", dest="retain_memory", action="store_false",
                   help="CPU: leave glibc's malloc as it is (by default freed memory is kept in the process while "
                        "measuring, as a caching allocator would; see docs/latency.md)")
    p.add_argument("--rounds", type=int_flag("rounds"), default=None,
                   help="interleaved rounds over the conv types (default 5; 10 with --model)")
    p.add_argument("--min-run-time", type=float_flag("min_run_time"), default=0.2,
                   help="seconds of timing per conv type and round (default 0.2)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_model_args(p)
    p.set_defaults(func=run)


def parse_convs(text: str, args: argparse.Namespace) -> list[tuple[str, dict]]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise FalconError("--conv needs at least one conv type")
    convs = []
    for name in names:
        if name not in BENCH_CONVS:
            raise FalconError(f"unknown conv type {name!r}; choose from {', '.join(BENCH_CONVS)}")
        ct = parse_variant(name)[0]
        convs.append((name, {h.name: getattr(args, h.name) for h in ct.hparams if getattr(args, h.name) is not None}))
    check_hparam_flags(args, dict.fromkeys(parse_variant(n)[0].name for n in names))
    return convs


def _progress(done: int, total: int, label: str) -> None:
    sys.stderr.write(f"\r[{done}/{total}] {label:<60.60}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def summary_lines(report: BenchReport) -> list[str]:
    """One line per conv type (and hyper-parameters): best measured speedup vs the theoretical one."""
    lines = []
    for r in report.results:
        if not r.best or r.conv == "standard" or r.speedup_vs_best_standard is None:
            continue
        lines.append(f"{r.label}: {r.speedup_vs_best_standard:.2f}x measured ({r.memory_format}, best vs best) "
                     f"vs {r.theoretical_speedup:.2f}x theoretical = {r.fraction_of_theoretical:.0%} of theoretical")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.model is not None:  # a whole model: falcon.modelbench
        from falcon import modelbench

        args.conv = args.conv or "falcon"
        args.batch_size = args.batch_size or 1
        args.rounds = args.rounds or modelbench.DEFAULT_ROUNDS
        return modelbench.run(args)
    missing = [flag for flag, value in (("--in-channels", args.in_channels), ("--out-channels", args.out_channels),
                                        ("--kernel-size", args.kernel_size), ("--input-size", args.input_size),
                                        ("--batch-size", args.batch_size)) if value is None]
    if missing:
        raise FalconError(f"a layer benchmark needs {', '.join(missing)} (or --model NAME for a whole model)")
    args.conv = args.conv or ",".join(DEFAULT_BENCH_CONVS)
    spec = LayerSpec(args.in_channels, args.out_channels, args.kernel_size, args.input_size,
                     args.input_width, args.stride, args.padding)
    convs = parse_convs(args.conv, args)
    show_progress = not args.quiet and sys.stderr.isatty()
    interrupted = []

    def on_sigint(signum, frame):  # first Ctrl-C: finish the current measurement and report; second: abort
        interrupted.append(True)
        signal.signal(signal.SIGINT, previous)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        report = measure(spec, convs, batch_size=args.batch_size, device=args.device,
                         memory_format=args.memory_format, dtype=args.dtype, threads=args.threads,
                         rounds=args.rounds or 5, min_run_time=args.min_run_time, clock=args.clock,
                         retain_memory=args.retain_memory, progress=_progress if show_progress else None,
                         should_stop=lambda: bool(interrupted))
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    verdict = assess_layer(report)
    if args.json:
        print_json({**report.as_dict(), **verdict.as_dict()})
        return 0
    print(f"{spec.describe()}, batch {report.batch_size}, {report.dtype}")
    threads = f"{report.threads} thread" + ("s" if report.threads != 1 else "")
    extra = "" if report.clock == "wall" else ", clock: process CPU time"
    extra += ", freed memory retained" if report.allocator == "retain" else ""
    print(f"device {report.device} ({report.device_name}), {threads}, torch {report.torch_version}{extra}")
    print_table([{**r, "speedup": "-" if r["speedup"] is None else r["speedup"], "best": "*" if r["best"] else ""}
                 for r in report.rows()], TEXT_COLUMNS)
    for line in summary_lines(report):
        print(line)
    for note in report.notes:
        print(f"note: {note}")
    for reason in verdict.reasons:
        print(f"unreliable: {reason}")
    if report.stopped:
        print("stopped before the end: results so far")
    return 0
