"""The bottom of model loading: checkpoint files (read with ``weights_only=True``, never unpickling arbitrary
objects), loading a ``state_dict`` into an architecture with named mismatches, and :class:`LoadedModel`, the one
record of a loaded model (its module, what it is, its held-out data).

:mod:`falcon.conversion` (the converted-model file format) and :mod:`falcon.sources` (where weights come from) both
build on this module; it imports neither.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from falcon.errors import FalconError
from falcon.models import ModelEntry

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


@dataclass
class LoadedModel:
    """A model with its weights loaded (eval mode), and what it is."""

    model: nn.Module
    entry: ModelEntry
    eval_data: Any  # a TensorDataset of the held-out split, or None
    description: str
    weights: str  # "bundled", "pretrained", "random" or the checkpoint's path
    num_classes: int
    converted: dict | None = field(default=None)  # metadata of a converted model (falcon.conversion)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return (self.entry.in_channels, self.entry.input_size, self.entry.input_size)



# ----------------------------------------------------------------------------------------------
# checkpoint files
def _short(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def read_checkpoint(source: str | os.PathLike | bytes | BinaryIO, label: str | None = None) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU, with a clear error for what is not a checkpoint."""
    if isinstance(source, (bytes, bytearray)):
        label = label or "the uploaded file"
        handle: Any = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = label or str(path)
        if not path.exists():
            raise FalconError(f"checkpoint {label} does not exist")
        if not path.is_file():
            raise FalconError(f"checkpoint {label} is not a file")
        if path.stat().st_size == 0:
            raise FalconError(f"checkpoint {label} is empty")
        handle = str(path)
    else:
        handle, label = source, label or "the checkpoint"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises anything from KeyError to RuntimeError on foreign files
        message = str(e)
        if "Weights only load failed" in message:
            found = re.search(r"GLOBAL ([\w.]+)", message)
            names = [found.group(1)] if found else _pickle_globals(source)
            what = f" ({', '.join(names[:3])})" if names else ""
            raise FalconError(f"{label} holds Python objects{what}, not just tensors; weights-only loading refuses "
                              "it: save model.state_dict() with torch.save instead of a pickled model or object") from None
        first = message.strip().splitlines()[0] if message.strip() else ""
        reason = _short(f"{type(e).__name__}: {first}" if first else type(e).__name__, 100)
        if _looks_like_text(source):
            reason = "it is a text file; " + reason
        raise FalconError(f"{label} is not a PyTorch checkpoint ({reason})") from None


def _looks_like_text(source: Any) -> bool:
    try:
        if isinstance(source, (bytes, bytearray)):
            head = bytes(source[:512])
        elif isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as fh:
                head = fh.read(512)
        else:
            return False
        text = head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _pickle_globals(source: Any) -> list[str]:
    """The classes and functions a plain pickle refers to, read from its opcodes (nothing is executed)."""
    import pickletools

    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)) and Path(source).stat().st_size < 64 << 20:
            data = Path(source).read_bytes()
        else:
            return []
        names, strings = [], []
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
        return list(dict.fromkeys(names))
    except Exception:  # noqa: BLE001 - best effort, only for the message
        return []


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def state_dict_of(obj: Any, label: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` inside a loaded checkpoint: itself, or under a usual key (``state_dict``, ``model``…)."""
    if _is_state_dict(obj):
        state = obj
    elif isinstance(obj, dict) and any(_is_state_dict(obj.get(k)) for k in _WRAPPER_KEYS):
        state = next(obj[k] for k in _WRAPPER_KEYS if _is_state_dict(obj.get(k)))
    else:
        kind = type(obj).__name__
        if isinstance(obj, dict):
            kind = "a dict without tensors" if obj else "an empty dict"
        raise FalconError(f"{label} holds {kind}, not a state_dict (a dict of parameter names to tensors)")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _few(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], label: str, name: str) -> None:
    """Raise a FalconError naming a few missing, unexpected and mis-shaped keys, if there are any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if shapes:
        problems.append(f"shapes (checkpoint vs model) {_few(shapes)}")
    if problems:
        raise FalconError(f"{label} does not fit {name}: " + "; ".join(problems))


def _classifier(model: nn.Module) -> tuple[str, nn.Linear] | None:
    last = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (module_name, module)
    return last


def _checkpoint_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The number of classes of the checkpoint's classifier, if it differs from the model's."""
    found = _classifier(model)
    if found is None:
        return None
    weight = state.get(f"{found[0]}.weight")
    if weight is None or weight.dim() != 2 or weight.shape[1] != found[1].in_features:
        return None
    return int(weight.shape[0]) if weight.shape[0] != found[1].out_features else None


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], label: str, name: str) -> nn.Module:
    check_state_dict(model, state, label, name)
    own = model.state_dict()
    merged = {k: state.get(k, own[k]) for k in own}  # an old checkpoint may lack num_batches_tracked
    model.load_state_dict(merged)
    return model


# ----------------------------------------------------------------------------------------------
# a loaded model
def _eval_data(entry: ModelEntry):
    if entry.name == "digits-vgg":
        from falcon.datasets import load_digits

        return load_digits("test", size=entry.input_size)
    return None


def build_model(entry: ModelEntry, num_classes: int | None) -> nn.Module:
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise FalconError(f"number of classes must be a positive integer, got {num_classes!r}")
    return entry.build(num_classes)


def finish(model: nn.Module, entry: ModelEntry, description: str, weights: str,
            converted: dict | None = None) -> LoadedModel:
    model.eval()
    classifier = _classifier(model)
    classes = classifier[1].out_features if classifier else entry.default_classes
    data = _eval_data(entry) if classes == entry.default_classes else None
    if data is not None:
        description += f"; held-out set: {len(data)} images"
    return LoadedModel(model, entry, data, description, weights, classes, converted)
