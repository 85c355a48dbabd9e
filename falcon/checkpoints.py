"""The bottom of model loading: checkpoint files (read with ``weights_only=True``, never unpickling arbitrary
objects), loading a ``state_dict`` into an architecture with named mismatches, and :class:`LoadedModel`, the one
record of a loaded model (its module, what it is, its held-out data).

Files are checked before they are used, so that no file makes this process allocate more than the model
it is for needs (:func:`checkpoint_budget`: its own bytes × 4 + 64 MiB; 4 GiB for a model not known in advance):

1. before ``torch.load``: a zip's directory (entry sizes, total, compression ratio; nothing is decompressed) or a
   plain pickle's file size (:func:`read_checkpoint`, :func:`check_zip`);
2. after it: the storages and each tensor's claimed size, stride-0 views included (:func:`check_tensors`), the
   classes of a checkpoint's classifier (:func:`_checkpoint_classes`) before anything is built from them;
3. before copying into the model: names and shapes (:func:`check_state_dict`), then finite values (the tensor and
   its NaN/inf counts named) and dtypes (other floats converted with a note; integers, bools, complex refused;
   :func:`checked_values`).

Modules given through the API are checked before they are sized or fitted (:func:`check_initialized`,
:func:`check_weights`, :func:`check_forward_reads`).

:mod:`falcon.conversion` (the converted-model file format) and :mod:`falcon.sources` (where weights come from) both
build on this module; it imports neither.
"""
from __future__ import annotations

import copy
import io
import logging
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from falcon import limits
from falcon.errors import FalconError
from falcon.limits import parse_int
from falcon.models import ModelEntry, check_initialized

log = logging.getLogger(__name__)

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


#: Limits on what a file may make this process allocate. A checkpoint of a known model may need
#: BUDGET_FACTOR × the model's own parameter and buffer bytes (float64 weights, an optimizer's state beside
#: them) + BUDGET_SLACK; a file read for a model not known in advance, at most MAX_CHECKPOINT_BYTES.
MAX_CHECKPOINT_BYTES = 4 << 30
BUDGET_FACTOR = 4
BUDGET_SLACK = 64 << 20
#: A compressed zip entry that expands more than this is a zip bomb (torch.save writes its entries uncompressed).
MAX_ZIP_RATIO = 100
MAX_ZIP_ENTRIES = 100_000
#: The most classes a classifier taken from a checkpoint (or asked for) may have.
MAX_CLASSES = int(limits.hi("num_classes"))
_ZIP_MAGIC = b"PK\x03\x04"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def tensor_bytes(tensors) -> int:
    """The bytes of ``tensors`` (each storage counted once)."""
    seen: dict[tuple, int] = {}
    for t in tensors:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        else:
            seen[(id(t),)] = t.numel() * t.element_size()
    return sum(seen.values())


def model_bytes(model: nn.Module) -> int:
    """The bytes of ``model``'s parameters and buffers (on any device, ``meta`` included)."""
    return tensor_bytes([*model.parameters(), *model.buffers()])


def budget_of(nbytes: int) -> int:
    """The most a checkpoint for a model of ``nbytes`` may make us allocate."""
    return BUDGET_FACTOR * nbytes + BUDGET_SLACK


def checkpoint_budget(entry: ModelEntry, num_classes: int | None = None) -> int:
    """The byte limit for a checkpoint of ``entry`` (built on ``meta``: nothing is allocated), or
    :data:`MAX_CHECKPOINT_BYTES` when the model cannot be built there."""
    try:
        with torch.device("meta"):
            return budget_of(model_bytes(build_model(entry, num_classes)))
    except FalconError:
        raise
    except Exception:  # noqa: BLE001 - a factory that does not build on meta: the global cap
        return MAX_CHECKPOINT_BYTES


def _opened(source: Any, label: str | None) -> tuple[Any, str, int, bytes]:
    """(what torch.load takes, label, size in bytes, the first bytes) of a path, bytes or binary file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return io.BytesIO(data), label or "the uploaded file", len(data), data[:8]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = label or str(path)
        if not path.exists():
            raise FalconError(f"checkpoint {label} does not exist")
        if not path.is_file():
            raise FalconError(f"checkpoint {label} is not a file")
        size = path.stat().st_size
        if size == 0:
            raise FalconError(f"checkpoint {label} is empty")
        with open(path, "rb") as fh:
            return str(path), label, size, fh.read(8)
    start = source.tell()
    head = source.read(8)
    size = source.seek(0, os.SEEK_END) - start
    source.seek(start)
    return source, label or "the checkpoint", size, head


def check_zip(handle: Any, label: str, limit: int) -> bool:
    """Read the directory of a zip (torch's format) without decompressing anything: refuse entries and totals
    above ``limit`` bytes and compressed entries that expand more than :data:`MAX_ZIP_RATIO` times.
    Returns whether every entry is stored uncompressed (then the file can be memory-mapped)."""
    try:
        with zipfile.ZipFile(handle) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise FalconError(f"{label} is a truncated or damaged zip archive (PyTorch's format; "
                          f"{_short(e, 60)}): download or save it again") from None
    finally:
        if hasattr(handle, "seek"):
            handle.seek(0)
    if len(entries) > MAX_ZIP_ENTRIES:
        raise FalconError(f"{label} is a zip of {len(entries):,} entries, not a checkpoint (at most {MAX_ZIP_ENTRIES:,})")
    total = 0
    for info in entries:
        total += info.file_size
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise FalconError(f"{label} is a zip bomb: its entry {_short(info.filename, 60)} expands from "
                              f"{_gib(info.compress_size)} to {_gib(info.file_size)} (torch.save does not compress)")
        if info.file_size > limit or total > limit:
            raise FalconError(f"{label} unpacks to more than {_gib(limit)} ({_short(info.filename, 60)}: "
                              f"{_gib(info.file_size)}), more than a checkpoint of this model can need")
    return all(info.compress_type == zipfile.ZIP_STORED for info in entries)


def read_checkpoint(source: str | os.PathLike | bytes | BinaryIO, label: str | None = None,
                    max_bytes: int | None = None) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU, with a clear error for what is not a checkpoint.

    Before loading, the file is bounded: a zip (torch's format) by its directory (:func:`check_zip`: nothing is
    decompressed), an older plain pickle by its size; ``max_bytes`` (:func:`checkpoint_budget` of the model it
    is for) or :data:`MAX_CHECKPOINT_BYTES`. A zip file of uncompressed entries is memory-mapped. After
    loading, its tensors are bounded the same way (:func:`check_tensors`)."""
    limit = MAX_CHECKPOINT_BYTES if max_bytes is None else int(max_bytes)
    handle, label, size, head = _opened(source, label)
    mmap = False
    if head.startswith(_ZIP_MAGIC):
        mmap = check_zip(handle, label, limit) and isinstance(handle, str)
    elif size > limit:
        raise FalconError(f"{label} is {_gib(size)}, more than the {_gib(limit)} a checkpoint of this model can need")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(handle, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch.load raises anything from KeyError to RuntimeError on foreign files
        raise _not_loaded(e, source, label, head) from None
    check_tensors(obj, label, limit)
    return obj


def _not_loaded(e: Exception, source: Any, label: str, head: bytes = b"") -> FalconError:
    message = str(e)
    first = message.strip().splitlines()[0] if message.strip() else ""
    if "Weights only load failed" in message:
        found = re.search(r"GLOBAL ([\w.]+)", message)
        names = [found.group(1)] if found else _pickle_globals(source)
        if names or "global" in message.lower():
            what = f" ({', '.join(names[:3])})" if names else ""
            return FalconError(f"{label} holds Python objects{what}, not just tensors; weights-only loading refuses "
                               "it: save model.state_dict() with torch.save instead of a pickled model or object")
    # the reason in words: torch.load's own exception ("UnpicklingError: Unsupported operand 0", "KeyError: 101")
    # names its internals, not the file; it goes to the log
    log.info("torch.load refused %s: %s: %s", label, type(e).__name__, _short(first, 200))
    if _looks_like_text(source):
        reason = "it is a text file"
    elif head.startswith(_ZIP_MAGIC):
        reason = "a zip archive, but not the one torch.save writes, or a damaged one"
    else:
        reason = "neither the zip archive nor the pickle that torch.save writes"
    return FalconError(f"{label} is not a PyTorch checkpoint ({reason}): save it with torch.save(model.state_dict(), "
                       "path)")


def _tensors_in(obj: Any, prefix: str = "", depth: int = 0):
    """(name, tensor) of every tensor in nested dicts, lists and tuples (8 levels at most)."""
    if isinstance(obj, torch.Tensor):
        yield prefix or "the tensor", obj
    elif depth < 8 and isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors_in(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
    elif depth < 8 and isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors_in(v, f"{prefix}[{i}]", depth + 1)


def check_tensors(obj: Any, label: str, limit: int) -> None:
    """Refuse a loaded checkpoint whose tensors ask for more than ``limit`` bytes: their storages together, or one
    tensor's shape (a stride-0 expanded view of a few bytes can claim gigabytes that a copy would allocate)."""
    tensors = list(_tensors_in(obj))
    stored = tensor_bytes([t for _, t in tensors])
    if stored > limit:
        raise FalconError(f"{label} holds {_gib(stored)} of tensors, more than the {_gib(limit)} a checkpoint of "
                          "this model can need")
    for name, t in tensors:
        claimed = t.numel() * t.element_size()
        if claimed > limit:
            view = f" (a stride-0 view of {_gib(t.untyped_storage().nbytes())})" if 0 in t.stride() else ""
            raise FalconError(f"{label}: {_short(name, 60)} has shape {tuple(t.shape)}{view}: {_gib(claimed)}, more "
                              f"than the {_gib(limit)} a checkpoint of this model can need")


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


def _kind_in_words(obj: Any) -> str:
    """What a loaded object is, in words rather than Python's class names (``Tensor``, ``OrderedDict``)."""
    if isinstance(obj, torch.Tensor):
        return "a single tensor"
    if isinstance(obj, dict):
        return "a dict without tensors" if obj else "an empty dict"
    words = {list: "a list", tuple: "a tuple", str: "a text", bytes: "raw bytes", int: "a number",
             float: "a number", bool: "a true/false value", type(None): "nothing (None)"}
    return words.get(type(obj), "an object that is not a dict of tensors")


def state_dict_of(obj: Any, label: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` inside a loaded checkpoint: itself, or under a usual key (``state_dict``, ``model``…)."""
    if _is_state_dict(obj):
        state = obj
    elif isinstance(obj, dict) and any(_is_state_dict(obj.get(k)) for k in _WRAPPER_KEYS):
        state = next(obj[k] for k in _WRAPPER_KEYS if _is_state_dict(obj.get(k)))
    else:
        raise FalconError(f"{label} holds {_kind_in_words(obj)}, not a state_dict (a dict of parameter names to "
                          "tensors): save it with torch.save(model.state_dict(), path)")
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


def check_classes(classes: Any, label: str = "number of classes") -> int:
    """``classes`` as an int in 1 … :data:`MAX_CLASSES` (:mod:`falcon.limits`' ``num_classes``), or a FalconError."""
    return parse_int(classes, "num_classes", label)


def _checkpoint_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The number of classes of the checkpoint's classifier, if it differs from the model's (at most
    :data:`MAX_CLASSES`, and a classifier no larger than the model's own budget)."""
    found = _classifier(model)
    if found is None:
        return None
    key = f"{found[0]}.weight"
    weight = state.get(key)
    if weight is None or weight.dim() != 2 or weight.shape[1] != found[1].in_features:
        return None
    if weight.shape[0] == found[1].out_features:
        return None
    classes = check_classes(int(weight.shape[0]), f"the class count of the checkpoint's classifier {key} "
                                                   f"{tuple(weight.shape)}")
    need, limit = classes * (weight.shape[1] + 1) * 4, budget_of(model_bytes(model))
    if need > limit:
        raise FalconError(f"the checkpoint's classifier {key} {tuple(weight.shape)} would take {_gib(need)}, more "
                          f"than the {_gib(limit)} a checkpoint of this model can need")
    return classes


def nonfinite(tensor: torch.Tensor, name: str = "the tensor") -> str | None:
    """``"NAME has 12 NaN and 3 inf values"`` when ``tensor`` holds any, else None (integers: always None)."""
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
        return None
    counts = [(int(torch.isnan(tensor).sum()), "NaN"), (int(torch.isinf(tensor).sum()), "inf")]
    shown = [(n, what) for n, what in counts if n]
    text = " and ".join(f"{n:,} {what}" for n, what in shown)
    return f"{name} has {text} value" + ("s" if sum(n for n, _ in shown) > 1 else "")


def check_finite(tensors: dict[str, torch.Tensor], label: str) -> None:
    """Refuse NaN or inf in any of ``tensors`` (name → tensor), naming the first and how many more."""
    bad = [problem for name, t in tensors.items() if (problem := nonfinite(t.detach(), name))]
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise FalconError(f"{label}: {bad[0]}{more}; a model's weights must be finite numbers")


#: dtypes a float32 model's weights may come in (converted, with a note); integers, bools and complex are refused
_CONVERTIBLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def checked_values(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                   label: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state``'s tensors for ``own``'s keys (shapes already checked), finite and in ``own``'s dtypes: (the
    tensors to load, notes on conversions). Non-finite values, integer, bool and complex weights are refused."""
    out, converted = {}, {}
    for key, mine in own.items():
        theirs = state.get(key, mine)  # an old checkpoint may lack num_batches_tracked
        if theirs.is_complex():
            raise FalconError(f"{label}: {key} is {str(theirs.dtype)[6:]}: complex numbers are not weights of a "
                              "real-valued network")
        if mine.is_floating_point() and theirs.dtype not in _CONVERTIBLE:
            kind = "booleans" if theirs.dtype == torch.bool else "integers"
            raise FalconError(f"{label}: {key} holds {kind} ({str(theirs.dtype)[6:]}) where the model has "
                              f"{str(mine.dtype)[6:]} weights; is it a quantized model? save the float model's state_dict")
        if theirs.dtype != mine.dtype and mine.is_floating_point():
            converted.setdefault(str(theirs.dtype)[6:], []).append(key)
        out[key] = theirs
    check_finite(out, label)
    target = str(next(iter(own.values())).dtype)[6:] if own else "float32"
    notes = [f"{len(keys)} {dtype} tensors converted to {target}, the model's dtype" for dtype, keys in converted.items()]
    return out, notes


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], label: str, name: str,
                    notes: list[str] | None = None) -> nn.Module:
    """Load ``state`` into ``model`` after checking names and shapes (:func:`check_state_dict`), then values
    and dtypes (:func:`checked_values`); notes on dtype conversions are appended to ``notes``."""
    check_state_dict(model, state, label, name)
    merged, found = checked_values(model.state_dict(), state, label)
    model.load_state_dict(merged)
    if notes is not None:
        notes.extend(found)
    return model


# ----------------------------------------------------------------------------------------------
# a loaded model
def _eval_data(entry: ModelEntry):
    if entry.name == "digits-vgg":
        from falcon.datasets import load_digits

        return load_digits("test", size=entry.input_size)
    return None


def build_model(entry: ModelEntry, num_classes: int | None) -> nn.Module:
    if num_classes is not None:
        check_classes(num_classes, "number of classes")
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


# ----------------------------------------------------------------------------------------------
# modules given through the API (checked before they are sized or converted)
def check_weights(model: nn.Module, label: str = "the model") -> None:
    """Before a fit: initialized, float32 and finite weights, or a FalconError naming the first that is not."""
    check_initialized(model, label)
    for name, p in model.named_parameters():
        if p.dtype == torch.float32:
            continue
        if p.is_floating_point():
            raise FalconError(f"{label} holds {str(p.dtype)[6:]} weights ({name}); FALCON fits float32 models: "
                              "pass model.float() (and cast the converted model back afterwards if you need to)")
        raise FalconError(f"{label} holds {str(p.dtype)[6:]} parameters ({name}), not floating-point weights; "
                          "is it quantized? convert the float model")
    check_finite(dict(model.state_dict(keep_vars=False)), label)


class _ReadsMissing(AttributeError):
    def __init__(self, layer: str, attribute: str):
        super().__init__(f"{layer}.{attribute}")
        self.layer, self.attribute = layer, attribute


def _reporting(block: nn.Module, layer: str) -> None:
    """Make ``block`` raise :class:`_ReadsMissing` naming ``layer`` for an attribute it does not have."""
    cls = type(block)

    def __getattr__(self, attribute: str):
        try:
            return cls.__getattr__(self, attribute)
        except AttributeError:
            raise _ReadsMissing(layer, attribute) from None

    block.__class__ = type(cls.__name__, (cls,), {"__getattr__": __getattr__})


def check_forward_reads(model: nn.Module, input_size: tuple[int, int, int], sites, conv: str) -> None:
    """Refuse converting a conv whose weight (or another attribute a block lacks) the model's own forward reads:
    a shapes-only copy with the ``conv`` blocks in place runs one forward pass on ``meta``. A forward that fails
    there for any other reason is not this check's business."""
    from falcon.convtypes import get_conv_type
    from falcon.counting import shape_only
    from falcon.surgery import set_module

    memo = {id(t): (nn.Parameter(torch.empty_like(t, device="meta"), t.requires_grad) if isinstance(t, nn.Parameter)
                    else torch.empty_like(t, device="meta")) for t in (*model.parameters(), *model.buffers())}
    shadow = copy.deepcopy(model, memo).eval()
    ct = get_conv_type(conv)
    for site in sites:
        with torch.device("meta"):
            block = ct.build(site.spec)
        _reporting(block, site.name)
        set_module(shadow, site.name, block)
    try:
        with torch.inference_mode(), shape_only(shadow):
            shadow(torch.zeros((1, *input_size), device="meta"))
    except _ReadsMissing as e:
        raise FalconError(f"the model's own forward reads {e.layer}.{e.attribute}, which a {conv} block does not "
                          f"have (it holds pointwise and depthwise factors, not one kernel); leave that layer out: "
                          f"exclude=[{e.layer!r}] (--exclude {e.layer})") from None
    except Exception:  # noqa: BLE001 - a forward that does not run on meta: nothing to conclude
        pass
