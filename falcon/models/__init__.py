"""Models by name or spec: the thesis's CIFAR models, the bundled digits model, torchvision's zoo, timm, and your own.

Every model has a *replacement policy*: which convs a compressed conv type replaces.

* Every candidate is a ``groups=1`` conv with a square kernel larger than 1×1 (dilation 1).
* The *stem* (the first conv, the one that sees the image) stays standard, except where the thesis
  replaced it: in the VGG models FALCON replaces every conv, the first one included.
* ``include_stem=True`` replaces the stem too, for any model.
* Models of your own: ``package.module:factory``, ``path/to/file.py:factory`` (your code, imported and run
  as Python: only ever on your own machine), ``timm:NAME`` (when timm is installed), or an ``nn.Module``
  given to the Python API (:func:`module_entry`). They follow the same policy.
* ShuffleUnit α× is the one competitor whose code was never published. Its layout here is the one
  closest to the published counts (all within 6% but ResNet-18's 8%): α widens the maps between
  VGG's replaced convs, and the whole network after the image in the ResNets; ResNet-18 loses its
  shortcuts (the thesis says it removed them for ResNet34, whose published counts, though, fit a
  model that kept them).
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from falcon.errors import FalconError
from falcon.models.cifar import resnet34_cifar, vgg19_cifar


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[[int], nn.Module] = field(repr=False)
    input_size: int
    in_channels: int = 3
    default_classes: int | None = 1000  # None: the model's own (a factory or module of the user's)
    family: str = "torchvision"
    description: str = ""
    input_size_from: str = ""  # where the default input size comes from, for the user
    stem_replaced_by: frozenset[str] = frozenset()  # conv types that replace the stem in the thesis
    drop_shortcuts_for: frozenset[str] = frozenset()
    shuffle_widen: str = "inner"  # how ShuffleUnit's α widens the model (falcon.surgery.widen_for_shuffle)

    def build(self, num_classes: int | None = None) -> nn.Module:
        return self.builder(self.default_classes if num_classes is None else num_classes)

    @property
    def rebuildable(self) -> bool:
        """Whether :func:`get_model_entry` finds this entry again by its name (a saved conversion names it)."""
        return self.family != "module"


def _digits_builder(num_classes: int) -> nn.Module:
    from falcon.models.digits import DigitsVGG

    return DigitsVGG(num_classes=num_classes)


def _torchvision_builder(name: str, image_size: int | None = None) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        kwargs: dict = {"weights": None, "num_classes": num_classes}
        if image_size is not None:  # a ViT's position embedding is sized for its weights' crop (SWAG: 384-518)
            kwargs["image_size"] = image_size
        if name in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=False)
        return torchvision.models.get_model(name, **kwargs)

    return build


PAPER_MODEL_ENTRIES = {
    e.name: e
    for e in (
        ModelEntry("vgg19-cifar", vgg19_cifar, 32, default_classes=10, family="vgg",
                   description="VGG19 for 32×32 inputs (thesis §4.1): 16 convs with BN, 2 small FC layers",
                   stem_replaced_by=frozenset({"falcon"})),
        ModelEntry("resnet34-cifar", resnet34_cifar, 32, default_classes=10, family="resnet",
                   description="ResNet34 for 32×32 inputs (thesis §4.1): 3×3 stem, no max-pool, stride 2 in every stage",
                   shuffle_widen="network"),
        ModelEntry("vgg16_bn", _torchvision_builder("vgg16_bn"), 224, family="vgg",
                   description="torchvision VGG16 with BN (thesis's ImageNet model)",
                   stem_replaced_by=frozenset({"falcon"})),
        ModelEntry("resnet18", _torchvision_builder("resnet18"), 224, family="resnet",
                   description="torchvision ResNet-18 (thesis's ImageNet model)",
                   drop_shortcuts_for=frozenset({"shuffle"}), shuffle_widen="network"),
        ModelEntry("digits-vgg", _digits_builder, 32, in_channels=1, default_classes=10, family="vgg",
                   description="small VGG-style CNN trained on the bundled 8×8 digits (upsampled to 32×32)",
                   stem_replaced_by=frozenset({"falcon"})),
    )
}

#: The four models of the thesis's tables, by the project's names.
PAPER_MODELS = ("vgg19-cifar", "resnet34-cifar", "vgg16_bn", "resnet18")


@lru_cache(maxsize=1)
def torchvision_classification_models() -> tuple[str, ...]:
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def list_models() -> list[str]:
    return list(PAPER_MODEL_ENTRIES) + [m for m in torchvision_classification_models() if m not in PAPER_MODEL_ENTRIES]


#: What ``--model`` accepts, for help texts.
MODEL_HELP = ("a name (python -m falcon models: the thesis's models, digits-vgg, torchvision's zoo), timm:NAME "
              "(needs timm), or your own code: package.module:factory or path/to/file.py:factory (imported and "
              "run as Python, so only on your own machine; factory(num_classes=N) when --num-classes is given). "
              "Code runs only when you name it here: a file (--weights, --baseline, a results DB) never names code "
              "to run, so a converted model made from your code needs the same --model SPEC again")

#: The trust rule, for ``--help`` and the README.
TRUST_RULE = ("Code runs only when you name it (--model file.py:factory or package.module:factory, a Python API "
              "call). Nothing read from a file (checkpoints, converted models, uploads, stored runs) is ever "
              "imported or called: files are read with torch.load(weights_only=True) and checked (shapes, sizes, "
              "finite values) before use.")


@lru_cache(maxsize=None)
def torchvision_crop_size(name: str) -> tuple[int, str]:
    """The eval crop of the DEFAULT weights of a torchvision model, and where it comes from."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        crop = weights.transforms.keywords.get("crop_size")
        crop = int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    except (ValueError, KeyError, AttributeError, TypeError, IndexError):
        return 224, "the ImageNet default (no weights metadata)"
    return crop, f"the eval crop of torchvision's {weights}"


def names_code(name: object) -> bool:
    """Whether a model spec names Python code (``package.module:factory`` or ``file.py:factory``): resolving it
    imports and runs that code. ``timm:NAME`` and plain names do not."""
    return isinstance(name, str) and ":" in name and not name.strip().startswith("timm:")


def registry_entry(name: object, source: str = "the file") -> ModelEntry:
    """The entry of a model the registry knows (the thesis's models, digits-vgg, torchvision's zoo, timm), for a
    name read from a file, an upload or a stored run. Never imports or runs anything: a name that points at code
    is refused, since code runs only when the user names it (``--model SPEC``, an API argument)."""
    if not isinstance(name, str) or not name.strip():
        raise FalconError(f"{source} names no model (its model field is {type(name).__name__}, not a model name)")
    if names_code(name):
        raise FalconError(f"{source} was made from code ({name.strip()!r}), which a file never makes this tool run; "
                          f"if that is your own code, name it yourself: --model {name.strip()} (model=... in Python)")
    return get_model_entry(name)


def same_model(given: ModelEntry, stored: str) -> bool:
    """Whether the entry the user gave is the model a file or run records (file specs compared by resolved path)."""
    stored = stored.strip()
    if given.name == stored:
        return True
    if given.family != "factory" or not names_code(stored):
        return False
    (a, _, fa), (b, _, fb) = given.name.rpartition(":"), stored.rpartition(":")
    return fa == fb and a.endswith(".py") and b.endswith(".py") and \
        Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def get_model_entry(name: str) -> ModelEntry:
    """The entry of a model name or spec (see :data:`MODEL_HELP`). A spec that names code imports and runs it:
    call this only with what the user typed or passed; names read from files go through :func:`registry_entry`."""
    if not isinstance(name, str) or not name.strip():
        raise FalconError(f"a model is a name or a spec such as package.module:factory, got {name!r}")
    name = name.strip()
    if name in PAPER_MODEL_ENTRIES:
        return PAPER_MODEL_ENTRIES[name]
    if name.startswith("timm:"):
        return timm_entry(name[len("timm:"):])
    if ":" in name:
        return factory_entry(name)
    if name in torchvision_classification_models():
        return _torchvision_entry(name)
    close = [m for m in list_models() if name.lower().replace("-", "_") in m.replace("-", "_")][:5]
    hint = f" (did you mean {', '.join(close)}?)" if close else "; `python -m falcon models` lists them"
    raise FalconError(f"unknown model {name!r}{hint}")


@lru_cache(maxsize=None)
def _torchvision_entry(name: str) -> ModelEntry:
    """One entry per name (the sizing caches key on entries)."""
    size, source = torchvision_crop_size(name)
    fixed = name.startswith("vit_") and size != 224  # a ViT runs only at the size it was built for
    return ModelEntry(name, _torchvision_builder(name, size if fixed else None), size, description=f"torchvision {name}",
                      input_size_from=source + (f" (built for {size}×{size})" if fixed else ""))


# ----------------------------------------------------------------------------------------------
# timm
def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def _timm():
    try:
        import timm
    except ImportError:
        raise FalconError("timm is not installed: pip install timm (or pip install -e .[timm])") from None
    return timm


def timm_models(pattern: str = "") -> list[str]:
    """timm's architectures (``timm.list_models``), optionally filtered by a wildcard pattern."""
    return list(_timm().list_models(pattern or ""))


@lru_cache(maxsize=None)
def timm_entry(arch: str) -> ModelEntry:
    timm = _timm()
    arch = arch.strip()
    if not arch or not timm.is_model(arch):
        close = timm.list_models(f"*{arch}*")[:5] if arch else []
        hint = f" (did you mean {', '.join(close)}?)" if close else "; `python -m falcon models --source timm` lists them"
        raise FalconError(f"timm has no model {arch!r}{hint}")
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
        chw = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
        classes = int(getattr(cfg, "num_classes", None) or 1000)
        source = f"timm's pretrained config of {arch}"
    except Exception:  # noqa: BLE001 - older timm or a config-less model: the ImageNet default
        chw, classes, source = (3, 224, 224), 1000, "the ImageNet default (no timm config)"

    def build(num_classes: int) -> nn.Module:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)

    return ModelEntry(f"timm:{arch}", build, int(chw[-1]), in_channels=int(chw[0]), default_classes=classes,
                      family="timm", description=f"timm {arch}", input_size_from=source)


# ----------------------------------------------------------------------------------------------
# the user's own code and modules
def _load_factory(spec: str) -> Callable:
    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise FalconError(f"a model spec is package.module:factory or path/to/file.py:factory, got {spec!r}")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser()
        if not path.is_file():
            raise FalconError(f"{where} does not exist" if not path.exists() else f"{where} is not a file")
        mod_name = f"_falcon_user_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            folder = str(path.resolve().parent)  # the file's own imports of its neighbours work
            sys.path.insert(0, folder)
            try:
                loader_spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(loader_spec)
                loader_spec.loader.exec_module(module)
            except Exception as e:  # noqa: BLE001 - the user's code: any error is theirs, in one line
                raise FalconError(f"importing {where} failed: {type(e).__name__}: {_first_line(e)}") from None
            finally:
                sys.path.remove(folder)
            sys.modules[mod_name] = module
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:  # noqa: BLE001
            raise FalconError(f"cannot import {where}: {type(e).__name__}: {_first_line(e)}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")][:6]
        raise FalconError(f"{where} has no {attr!r}" + (f" (it has {', '.join(found)})" if found else ""))
    if not callable(factory):
        raise FalconError(f"{spec} is a {type(factory).__name__}, not a function or class that builds a model")
    return factory


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _takes_num_classes(factory: Callable) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def factory_entry(spec: str, input_size: int = 224, in_channels: int = 3) -> ModelEntry:
    """A model built by the user's factory (``package.module:factory`` or ``file.py:factory``)."""
    factory = _load_factory(spec)

    def build(num_classes: int | None) -> nn.Module:
        fixed = num_classes is not None and not _takes_num_classes(factory)
        try:
            model = factory() if num_classes is None or fixed else factory(num_classes=num_classes)
        except FalconError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's factory: its error, in one line
            raise FalconError(f"{spec} raised {type(e).__name__}: {_first_line(e)}") from None
        if not isinstance(model, nn.Module):
            raise FalconError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
        if fixed:  # the factory decides the classes: they must be the ones asked for
            own = next((m.out_features for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
            if own != num_classes:
                raise FalconError(f"{spec} takes no num_classes argument and builds {own} classes, not {num_classes}")
        return model

    return ModelEntry(spec, build, input_size, in_channels=in_channels, default_classes=None, family="factory",
                      description=f"built by {spec}", input_size_from="the default for a model of your own "
                                                                         "(--input-size changes it)")


def module_entry(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), name: str | None = None) -> ModelEntry:
    """An entry for a module the caller holds: each build is a copy of it, on the device the caller builds on
    (``torch.device("meta")`` copies shapes only, never the weights)."""
    if not isinstance(model, nn.Module):
        raise FalconError(f"expected a torch.nn.Module, got a {type(model).__name__}")
    c, h, w = _chw(input_size)
    if h != w:
        raise FalconError(f"input size must be square (H = W), got {h}×{w}")
    check_initialized(model, f"your {type(model).__name__}")

    def build(num_classes: int | None) -> nn.Module:
        if num_classes is not None:
            raise FalconError("a model given as a module keeps its own classifier; leave num_classes out")
        target = torch.empty(0).device  # the device of the caller's torch.device(...) context, if any
        if target.type == "meta":
            memo = {id(t): (nn.Parameter(_meta_like(t), t.requires_grad) if isinstance(t, nn.Parameter)
                            else _meta_like(t)) for t in (*model.parameters(), *model.buffers())}
            return copy.deepcopy(model, memo)
        return copy.deepcopy(model).to(target)

    return ModelEntry(name or type(model).__name__, build, h, in_channels=c, default_classes=None, family="module",
                      description=f"your {type(model).__name__}", input_size_from="the input_size you gave")


def check_initialized(model: nn.Module, label: str = "the model") -> None:
    """Refuse a model with uninitialized (lazy) parameters: their shapes are not known before a forward pass."""
    lazy = [name for name, t in (*model.named_parameters(), *model.named_buffers())
            if isinstance(t, (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer))]
    if lazy:
        shown = ", ".join(lazy[:3]) + (f", … ({len(lazy)} in all)" if len(lazy) > 3 else "")
        raise FalconError(f"{label} has uninitialized lazy parameters ({shown}): their shapes are not known "
                          "yet; run one forward pass first, e.g. model(torch.zeros(1, 3, 224, 224))")


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    """A shapes-only copy of ``t``; float16/bfloat16/float64 ones as float32 (sizes do not depend on the dtype, and
    the forward pass that finds the convs feeds float32)."""
    return torch.empty_like(t, device="meta", dtype=torch.float32 if t.is_floating_point() else t.dtype)


def _chw(input_size) -> tuple[int, int, int]:
    try:
        size = tuple(int(v) for v in ((input_size,) if isinstance(input_size, int) else input_size))
    except (TypeError, ValueError):
        raise FalconError(f"input_size is (C, H, W), got {input_size!r}") from None
    if len(size) == 1:
        size = (3, size[0], size[0])
    if len(size) != 3 or min(size) < 1:
        raise FalconError(f"input_size is (C, H, W) with positive sizes, got {input_size!r}")
    return size  # type: ignore[return-value]
