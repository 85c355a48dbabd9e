"""One place that knows what a number may be: every integer and float that enters (a CLI flag, an API argument,
a page input) is parsed and bounded here, with a limit that says why.

* :data:`BOUNDS` — the named bounds (``rank``, ``channels``, ``batch_size``, ``lr``, ...): min, max, and why.
* :func:`parse_int` / :func:`parse_float` — a value (text or number) checked against a bound; a
  :class:`~falcon.errors.FalconError` saying what is allowed otherwise. Integers are ASCII decimal digits or
  Python ints (not bools): ``int("²")`` and ``int("٣")`` are not integers here; floats must be finite.
* :func:`int_flag` / :func:`float_flag` / :func:`hparam_flag` — argparse ``type=`` functions built on them
  (argparse prints their message on one line: ``argument --rank: must be an integer in 1..256 (...)``).
* :func:`check_kwargs` — the public API's guard against misspelt keyword arguments.

Stdlib only: the CLI and the pages import it before torch.
"""
from __future__ import annotations

import argparse
import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from falcon.errors import FalconError, one_line

#: longest digit string converted to an int (longer ones are out of every bound: no 4,300-digit parse)
_MAX_DIGITS = 40
_INT_TEXT = re.compile(r"-?[0-9]+")
_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def max_threads() -> int:
    """4 × the CPU cores (256 at most): more threads than that only wait for each other, and OpenMP crashes
    long before 100,000."""
    return min(256, 4 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class Bound:
    """What a named number may be: ``kind`` (int or float) in ``lo..hi``; ``open_lo``: ``lo`` itself excluded."""

    name: str
    kind: type
    lo: float
    hi: float | Callable[[], float]
    why: str
    open_lo: bool = False

    @property
    def top(self) -> float:
        return self.hi() if callable(self.hi) else self.hi

    def describe(self) -> str:
        """``an integer in 1..256``, ``a finite number in (0, 10]``."""
        if self.kind is int:
            return f"an integer in {self.lo}..{self.top}"
        return f"a finite number in {'(' if self.open_lo else '['}{self.lo:g}, {self.top:g}]"

    def error(self, value: Any, label: str | None = None) -> FalconError:
        """``{label} must be {describe()} ({why}); got {value!r}``, on one line (``label=""``: no name)."""
        label = self.name.replace("_", " ") if label is None else label
        return FalconError(f"{label} must be {self.describe()} ({self.why}); got {one_line(repr(value), 60)}".strip())

    def inside(self, x: float) -> bool:
        return (x > self.lo if self.open_lo else x >= self.lo) and x <= self.top


def _b(name: str, kind: type, lo, hi, why: str, open_lo: bool = False) -> Bound:
    return Bound(name, kind, lo, hi, why, open_lo)


#: every named bound: the limits tie to memory and time; none allows a negative number
BOUNDS: dict[str, Bound] = {b.name: b for b in (
    _b("rank", int, 1, 65536, "no layer's full rank is higher here: min(M, D²) for FALCON, min(M, N)·D² for CP; "
                              "above a layer's own the fit is clamped"),
    _b("channels", int, 1, 16384, "a 16384→16384 3×3 conv already holds 2.4 G weights, 9.7 GB"),
    _b("kernel_size", int, 1, 64, "a 64×64 kernel has 4,096 taps per channel pair"),
    _b("input_size", int, 1, 4096, "activations grow with its square: 16.8 M pixels per channel at 4096"),
    _b("stride", int, 1, 4096, "at most the largest input size"),
    _b("padding", int, 0, 64, "at most the largest kernel; more only adds zeros"),
    _b("batch_size", int, 1, 4096, "activations grow linearly with the batch"),
    _b("export_batch_size", int, 1, 256, "the sample only checks parity; the ONNX batch stays dynamic"),
    _b("num_classes", int, 1, 100_000, "the classifier holds features × classes weights"),
    _b("steps", int, 0, 100_000, "gradient-descent steps per layer; 100,000 take minutes"),
    _b("rounds", int, 1, 1000, "each round times every entry for the min run time"),
    _b("epochs", int, 0, 1000, "each epoch is a pass over the training set"),
    _b("threads", int, 1, max_threads, "4 × this machine's CPU cores, 256 at most: more only contend"),
    _b("seed", int, 0, 2**63 - 1, "stored as a signed 64-bit integer"),
    _b("images", int, 1, 10_000_000, "more images than any data set here holds"),
    _b("runs", int, 1, 1_000_000_000, "a count of stored runs"),
    _b("lr", float, 0.0, 10.0, "a learning rate: positive, and steps above 10 diverge", open_lo=True),
    _b("weight_decay", float, 0.0, 1.0, "the fraction of each weight decayed per step"),
    _b("energy", float, 0.0, 1.0, "a fraction of every channel's singular-value energy", open_lo=True),
    _b("min_run_time", float, 0.0, 60.0, "seconds per entry and round; a run takes rounds × entries × this",
       open_lo=True),
    _b("target_rate", float, 0.0, 10_000.0, "times fewer; no rank reaches 10,000×", open_lo=True),
    _b("target_count", float, 0.0, 1e15, "a count of MACs or parameters; the largest models have about 1e12",
       open_lo=True),
    _b("target_speedup", float, 0.0, 1000.0, "times faster than the model measured here; no plan reaches 1000×",
       open_lo=True),
    _b("target_ms", float, 0.0, 3_600_000.0, "milliseconds per forward pass; an hour at most", open_lo=True),
    _b("max_seconds", float, 0.0, 86_400.0, "seconds a measurement may be estimated to take before it is refused",
       open_lo=True),
)}


def bound(name: str | Bound) -> Bound:
    """The bound called ``name`` (a :class:`Bound` is returned as it is)."""
    if isinstance(name, Bound):
        return name
    try:
        return BOUNDS[name]
    except KeyError:
        raise KeyError(f"no bound named {name!r}; known: {', '.join(BOUNDS)}") from None


def lo(name: str) -> float:
    return bound(name).lo


def hi(name: str) -> float:
    return bound(name).top


def parse_int(value: Any, name: str | Bound, label: str | None = None) -> int:
    """``value`` (ASCII decimal digits, a leading '-' only where the bound allows negatives, or an int that is
    not a bool) as an int inside the bound ``name``; a FalconError naming ``label`` (default: the bound's name)."""
    b = bound(name)
    if isinstance(value, str):
        if not _INT_TEXT.fullmatch(value) or (value.startswith("-") and b.lo >= 0):
            raise b.error(value, label)
        if len(value.lstrip("-").lstrip("0")) > _MAX_DIGITS:
            raise b.error(value, label)
        number = int(value)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    else:
        raise b.error(value, label)
    if not b.inside(number):
        raise b.error(value, label)
    return number


def parse_float(value: Any, name: str | Bound, label: str | None = None) -> float:
    """``value`` (ASCII decimal text such as ``1e-3``, or an int/float that is not a bool) as a finite float
    inside the bound ``name``: nan, inf and ``1e999`` are refused."""
    b = bound(name)
    if isinstance(value, str):
        if len(value) > 64 or not _FLOAT_TEXT.fullmatch(value):
            raise b.error(value, label)
        number = float(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise b.error(value, label)
    if not math.isfinite(number) or not b.inside(number):
        raise b.error(value, label)
    return number


def parse(value: Any, name: str | Bound, label: str | None = None) -> int | float:
    """:func:`parse_int` or :func:`parse_float`, as the bound's kind says."""
    b = bound(name)
    return (parse_int if b.kind is int else parse_float)(value, b, label)


def optional(value: Any, name: str | Bound, label: str | None = None) -> int | float | None:
    """None stays None (a default); anything else is :func:`parse`\\ d."""
    return None if value is None else parse(value, name, label)


def _flag(b: Bound) -> Callable[[str], int | float]:
    def parse_flag(text: str) -> int | float:
        try:
            return parse(text, b, "")
        except FalconError as e:
            raise argparse.ArgumentTypeError(str(e).strip()) from None

    parse_flag.__name__ = b.name  # argparse names the type by it in its own messages
    return parse_flag


def int_flag(name: str | Bound) -> Callable[[str], int]:
    """An argparse ``type=``: ``p.add_argument("--rank", type=int_flag("rank"))``."""
    b = bound(name)
    if b.kind is not int:
        raise TypeError(f"{b.name} is a {b.kind.__name__} bound")
    return _flag(b)


def float_flag(name: str | Bound) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite float inside the bound ``name``."""
    b = bound(name)
    if b.kind is not float:
        raise TypeError(f"{b.name} is an {b.kind.__name__} bound")
    return _flag(b)


def hparam_bound(h: Any) -> Bound:
    """The bound of a conv type's hyper-parameter (:class:`falcon.convtypes.HParam`): its own range and help."""
    return Bound(h.name, h.kind, h.minimum, h.maximum, h.help)


def hparam_flag(h: Any) -> Callable[[str], int | float]:
    """An argparse ``type=`` for a conv type's hyper-parameter flag (``--rank``, ``--expansion``, ...)."""
    return _flag(hparam_bound(h))


def check_kwargs(func_name: str, kwargs: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """A FalconError naming the keyword arguments of ``kwargs`` that ``func_name`` does not take, and the
    ones it does (``size(net, rnak=4)`` is a typo, not a silently ignored option)."""
    allowed = list(allowed)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        takes = ", ".join(allowed) if allowed else "none"
        raise FalconError(f"{func_name}() got {'an unexpected keyword argument' if len(unknown) == 1 else 'unexpected keyword arguments'} "
                          f"{', '.join(map(repr, unknown))}; it takes: {takes}")
