"""Helpers shared by the commands: conv-type flags from the registry, output formatting."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterable

from falcon.convtypes import CONV_TYPES, all_hparams
from falcon.errors import FalconError
from falcon.limits import hparam_flag


def add_conv_flags(parser: argparse.ArgumentParser, choices: Iterable[str] | None = None, required: bool = True) -> None:
    """--conv and one flag per hyper-parameter of the registry (defaults come from the registry)."""
    names = list(choices or CONV_TYPES)
    parser.add_argument("--conv", required=required, choices=names, metavar="TYPE",
                        help="conv type: " + ", ".join(names))
    for h in all_hparams().values():
        users = [c.name for c in CONV_TYPES.values() if h in c.hparams and c.name in names]
        if users:
            parser.add_argument(h.flag, dest=h.name, type=hparam_flag(h), default=None,
                                help=f"{h.help} ({'/'.join(users)}; default {h.default}, range {h.minimum}–{h.maximum})")


def check_hparam_flags(args: argparse.Namespace, convs: Iterable[str]) -> None:
    """A hyper-parameter flag that none of ``convs`` has is refused in one line, never silently ignored (``--rank``
    with tucker2, whose ranks are ``--rank-in``/``--rank-out``)."""
    convs = [c for c in convs if c in CONV_TYPES]
    used = {h.name for c in convs for h in CONV_TYPES[c].hparams}
    stray = [h.flag for h in all_hparams().values() if getattr(args, h.name, None) is not None and h.name not in used]
    if stray:
        theirs = sorted({h.flag for c in convs for h in CONV_TYPES[c].hparams})
        has = f"its flags are {', '.join(theirs)}" if theirs else "it has no hyper-parameters"
        raise FalconError(f"{', '.join(stray)} does not apply to {', '.join(convs)} ({has}): drop it or choose a "
                          "--conv that has it")


def conv_hparams(args: argparse.Namespace, conv: str) -> dict[str, Any]:
    """The hyper-parameters of ``conv`` given on the command line (None = the registry default); a flag of another
    type is an error (:func:`check_hparam_flags`)."""
    check_hparam_flags(args, [conv])
    return {h.name: getattr(args, h.name, None) for h in CONV_TYPES[conv].hparams}


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def fmt_int(n: int) -> str:
    return f"{n:,}"


def print_table(rows: list[dict], columns: list[str] | None = None, out=None) -> None:
    """A plain aligned text table (numbers right-aligned, with thousands separators)."""
    out = out or sys.stdout
    if not rows:
        print("(no rows)", file=out)
        return
    columns = columns or list(rows[0])
    cells = [[(fmt_int(r[c]) if isinstance(r[c], int) and not isinstance(r[c], bool)
               else f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r[c], (int, float)) for r in rows) for c in columns]
    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()
    print(line(columns), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print(line(row), file=out)
