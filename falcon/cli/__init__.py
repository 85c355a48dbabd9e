"""``python -m falcon``: one sub-command per module of this package.

Each command module defines ``add_parser(subparsers)`` (its flags) and ``run(args) -> int``.
User errors (:class:`~falcon.errors.FalconError`) print one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from falcon.errors import FalconError

#: command name -> module under falcon.cli (imported lazily so that `--help` stays fast)
COMMANDS = {
    "layer": "layer",
    "size": "size",
    "models": "size",
    "layers": "fit",
    "fit": "fit",
    "convert": "convert",
    "bench": "bench",
    "experiment": "experiment",
    "results": "experiment",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m falcon", description="FALCON Explorer: size, fit and try FALCON compression.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    seen = set()
    for module_name in COMMANDS.values():
        if module_name in seen:
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(f"falcon.cli.{module_name}")
        except ModuleNotFoundError as e:
            if e.name == f"falcon.cli.{module_name}":
                continue  # a command not written yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FalconError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
