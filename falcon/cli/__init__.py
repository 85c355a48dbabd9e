"""``python -m falcon``: one sub-command per module of this package.

Each command module defines ``add_parser(subparsers)`` (its flags) and ``run(args) -> int``.
User errors (:class:`~falcon.errors.FalconError`) print one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from falcon.errors import FalconError

#: command name -> (module under falcon.cli, one-line help). Only the module of the command that runs
#: is imported, so that each command starts fast and one command's imports never affect another.
COMMANDS = {
    "layer": ("layer", "closed-form params and MACs of one layer"),
    "size": ("size", "params and MACs of a whole model with a conv type"),
    "models": ("size", "list the models that can be sized"),
    "layers": ("fit", "the conv layers of a model, with shapes"),
    "fit": ("fit", "fit FALCON/DSConv sub-kernels to a trained conv (SVD or gradient descent)"),
    "convert": ("convert", "convert a model's convs to FALCON/DSConv, initialised from the fit"),
    "plan": ("plan", "per-layer conv type and rank that meet a MACs, params or measured-latency target"),
    "bench": ("bench", "measure latency: measured vs theoretical speedup"),
    "export": ("export", "write the deployable (fused) converted model as ONNX or TorchScript, parity-checked"),
    "experiment": ("experiment", "compress, fine-tune and evaluate; store the run"),
    "results": ("experiment", "list or export stored runs"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line on stderr, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; with ``command``, that command's module is imported and its flags added."""
    from falcon.models import TRUST_RULE

    parser = _Parser(prog="python -m falcon", description="FALCON Explorer: size, fit and try FALCON compression.",
                     epilog="Security: " + TRUST_RULE)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    if command in COMMANDS:
        module_name = COMMANDS[command][0]
        importlib.import_module(f"falcon.cli.{module_name}").add_parser(sub)
        for command_parser in sub.choices.values():
            command_parser.epilog = command_parser.epilog or parser.epilog
        return parser
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    return parser


def _no_cuda_runtime_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_torch() -> None:
    """Drop the warning torch.utils.cpp_extension logs when it is imported (by torch.utils.benchmark,
    torch.onnx, inductor, ...) on a machine without CUDA: it would come before every one-line error."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    if _no_cuda_runtime_warning not in logger.filters:
        logger.addFilter(_no_cuda_runtime_warning)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_torch()
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.error(f"command {command!r} is not available in this version")
    return guarded(args.func, args)


def guarded(func, args: argparse.Namespace) -> int:
    """Run a command: a FalconError is one ``error:`` line on stderr and exit 2, Ctrl-C exit 130, a closed pipe 0."""
    try:
        return int(func(args) or 0)
    except FalconError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
