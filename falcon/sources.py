"""Where a model's weights come from, behind one interface: :func:`load_model`.

* ``digits-vgg``: the bundled pretrained model (``falcon/data/digits_vgg.pt``), with its held-out digits;
* torchvision's pretrained weights, through torchvision's own API and cache (``$TORCH_HOME/hub/checkpoints``).
  Offline, the download fails within seconds and the message names the file to put in the cache;
* a checkpoint file: a ``state_dict`` for a known architecture, read with ``weights_only=True``.
  Files that are not checkpoints are refused; keys or shapes that do not fit the architecture are
  named (a few of them). A classifier of another size is taken as the number of classes;
* a converted model saved by :func:`falcon.conversion.save_converted` (rebuilt, then loaded).

Every failure a user can fix is a :class:`~falcon.errors.FalconError` with a one-line message.
"""
from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

import torch
from torch import nn

from falcon.checkpoints import (LoadedModel, _checkpoint_classes, _short, build_model, checkpoint_budget,  # noqa: F401
                                finish, load_state_into, read_checkpoint, state_dict_of)
from falcon.errors import FalconError
from falcon.models import ModelEntry, get_model_entry, registry_entry

#: ``weights=`` keywords of :func:`load_model` (anything else is a file path).
PRETRAINED = "pretrained"
RANDOM = "random"
DOWNLOAD_TIMEOUT = 10.0  # seconds


# ----------------------------------------------------------------------------------------------
# torchvision pretrained weights
def torchvision_weights(name: str):
    """The DEFAULT weights enum of a torchvision model (FalconError if it has none)."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise FalconError(f"torchvision has no pretrained weights for {name!r}") from None


def torchvision_cache_file(name: str) -> Path:
    """Where torchvision keeps (or would keep) the pretrained weights of ``name``: $TORCH_HOME/hub/checkpoints/…"""
    weights = torchvision_weights(name)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def download(url: str, destination: Path, timeout: float = DOWNLOAD_TIMEOUT) -> None:
    """torch.hub's download with a time limit: a socket timeout, and a watchdog for name lookups."""
    error: list[BaseException] = []
    hash_match = re.search(r"-([a-f0-9]*)\.", destination.name)

    def work() -> None:
        old = socket.getdefaulttimeout()
        try:
            socket.setdefaulttimeout(timeout)
            destination.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(destination), hash_match.group(1) if hash_match else None,
                                           progress=False)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            error.append(e)
        finally:
            socket.setdefaulttimeout(old)

    thread = threading.Thread(target=work, daemon=True, name="falcon-download")
    thread.start()
    thread.join(timeout + 2.0)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if error:
        raise error[0]


def load_torchvision_pretrained(name: str, timeout: float = DOWNLOAD_TIMEOUT) -> dict[str, torch.Tensor]:
    """torchvision's pretrained state_dict for ``name``, from the cache or downloaded into it."""
    weights = torchvision_weights(name)
    cached = torchvision_cache_file(name)
    if not cached.is_file():
        try:
            download(weights.url, cached, timeout)
        except Exception as e:  # noqa: BLE001 - any network failure reads the same to the user
            reason = _short(getattr(e, "reason", None) or e or type(e).__name__, 80)
            raise FalconError(f"could not download the pretrained {name} weights ({reason}); offline, fetch "
                              f"{weights.url} elsewhere and place it as {cached} "
                              f"(the file {cached.name} in $TORCH_HOME/hub/checkpoints)") from None
    try:  # the cached file is checked as any checkpoint is (torchvision's own loader reads it unbounded)
        state = read_checkpoint(cached, "the file", checkpoint_budget(get_model_entry(name)))
    except FalconError as e:  # a truncated or foreign file in the cache
        raise FalconError(f"the cached weights {cached} could not be read ({_short(e, 120)}); delete the file "
                          "and try again") from None
    return state_dict_of(state, str(cached))


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of ``url`` resolves and accepts a TCP connection within ``timeout`` seconds."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="falcon-probe")
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok and ok[0])


def load_timm_pretrained(entry: ModelEntry, num_classes: int | None, timeout: float = DOWNLOAD_TIMEOUT) -> nn.Module:
    """timm's pretrained model (through timm and the Hugging Face cache), or a one-line error within ``timeout``."""
    import timm

    arch = entry.name[len("timm:"):]
    result: list = []

    def work() -> None:
        try:
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
            result.append(timm.create_model(arch, pretrained=True, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result.append(e)

    import logging

    saved = {k: os.environ.get(k) for k in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_OFFLINE")}
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout)))
    offline = not _reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        from huggingface_hub import constants as hf_constants
    except ImportError:  # pragma: no cover - timm depends on it
        hf_constants = None
    was_offline = getattr(hf_constants, "HF_HUB_OFFLINE", None)
    if offline and hf_constants is not None:
        hf_constants.HF_HUB_OFFLINE = True  # no network: the Hugging Face cache only, no retries
    quiet = logging.getLogger("huggingface_hub")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        thread = threading.Thread(target=work, daemon=True, name="falcon-timm-download")
        thread.start()
        thread.join(timeout + 2.0)
    finally:
        quiet.setLevel(level)
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = was_offline
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    fix = ("online, timm downloads them into the Hugging Face cache ($HF_HOME, ~/.cache/huggingface); offline, copy "
           "that cache from a machine that has them and set HF_HUB_OFFLINE=1, or pass a checkpoint file with --weights")
    if thread.is_alive():
        raise FalconError(f"no answer within {timeout:g} s while fetching timm's pretrained {arch} weights; {fix}")
    if isinstance(result[0], BaseException):
        e = result[0]
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise e
        if offline:
            raise FalconError(f"timm's pretrained {arch} weights are not in the Hugging Face cache and huggingface.co "
                              f"cannot be reached; {fix}") from None
        raise FalconError(f"could not load timm's pretrained {arch} weights ({_short(f'{type(e).__name__}: {e}', 120)}); "
                          f"{fix}") from None
    return result[0]


# ----------------------------------------------------------------------------------------------
# one interface
def load_model(name: str | ModelEntry, weights: str | os.PathLike | None = None, num_classes: int | None = None,
               timeout: float = DOWNLOAD_TIMEOUT) -> LoadedModel:
    """Build model ``name`` and load its weights.

    ``weights``: None (``digits-vgg``: its bundled weights; any other model: random init),
    ``"pretrained"`` (torchvision's DEFAULT weights, timm's for ``timm:`` models, or digits-vgg's bundled
    ones), ``"random"`` (a factory of your own: whatever it initializes), or
    the path of a checkpoint file (a state_dict, or a converted model saved by :mod:`falcon.conversion`).
    ``num_classes`` defaults to the model's own, or to the size of the checkpoint's classifier.
    """
    entry = name if isinstance(name, ModelEntry) else get_model_entry(name)  # the user's name: code runs if it says so
    name = entry.name
    bundled = entry.name == "digits-vgg"
    if weights is None:
        weights = PRETRAINED if bundled else RANDOM
    weights = str(weights) if isinstance(weights, os.PathLike) else weights
    if weights == RANDOM:
        model = build_model(entry, num_classes)
        return finish(model, entry, f"{entry.name}, random init (no weights)", RANDOM)
    if weights == PRETRAINED:
        if bundled:
            from falcon.models.digits import DIGITS_WEIGHTS, digits_vgg

            if num_classes not in (None, entry.default_classes):
                raise FalconError(f"the bundled digits-vgg has {entry.default_classes} classes; got {num_classes}")
            return finish(digits_vgg(pretrained=True), entry, f"digits-vgg, bundled weights ({DIGITS_WEIGHTS.name})",
                           "bundled")
        from falcon.models import torchvision_classification_models

        if entry.family == "timm":
            model = load_timm_pretrained(entry, num_classes, timeout)
            return finish(model, entry, f"{entry.name}, timm pretrained weights", "pretrained")
        if entry.name not in torchvision_classification_models():
            raise FalconError(f"{entry.name} has no pretrained weights; pass a checkpoint file (a state_dict)")
        state = load_torchvision_pretrained(entry.name, timeout)
        return _from_state(entry, state, num_classes, f"torchvision pretrained weights "
                                                      f"({torchvision_weights(entry.name)})", "pretrained", name)
    obj = read_checkpoint(weights, max_bytes=checkpoint_budget(entry, num_classes))  # bounded by the model's size
    from falcon import conversion as convert

    if convert.is_converted(obj):  # rebuilt as the model the user named, never as one the file names
        return convert.rebuild_converted(obj, str(weights), entry)
    state = state_dict_of(obj, str(weights))
    return _from_state(entry, state, num_classes, f"checkpoint {weights}", str(weights), name)


def _from_state(entry: ModelEntry, state: dict, num_classes: int | None, what: str, weights: str,
                label_name: str) -> LoadedModel:
    model = build_model(entry, num_classes)
    if num_classes is None:
        classes = _checkpoint_classes(model, state)
        if classes is not None:
            model = build_model(entry, classes)
    notes: list[str] = []  # dtype conversions (float64 → float32, …)
    load_state_into(model, state, what, entry.name, notes)
    return finish(model, entry, "; ".join([f"{entry.name}, {what}", *notes]), weights)


def load_for_app(source: str, name: str, checkpoint: bytes | None = None) -> tuple[nn.Module, tuple[int, int, int]]:
    """The app's entry point: (model in eval mode, (C, H, W)) from ``"torchvision"`` pretrained weights or an
    uploaded ``"checkpoint"`` (bytes of a state_dict) for architecture ``name``, a registry model (the app never
    runs code a name points at)."""
    entry = registry_entry(name, "the app's model choice")
    if source == "torchvision":
        loaded = load_model(name, PRETRAINED)
    elif source == "checkpoint":
        if not checkpoint:
            raise FalconError("upload a checkpoint file (a state_dict saved with torch.save)")
        obj = read_checkpoint(bytes(checkpoint), "the uploaded checkpoint", checkpoint_budget(entry))
        from falcon import conversion as convert

        if convert.is_converted(obj):
            raise FalconError("the uploaded file is a converted model; fit layers of the original model instead")
        loaded = _from_state(entry, state_dict_of(obj, "the uploaded checkpoint"), None, "the uploaded checkpoint",
                             "upload", name)
    elif source == "digits-vgg":
        loaded = load_model("digits-vgg")
    else:
        raise FalconError(f"unknown model source {source!r}; choose torchvision, checkpoint or digits-vgg")
    return loaded.model, loaded.input_size
