"""Models by name: the thesis's CIFAR models, the bundled digits model, and torchvision's zoo.

Every model has a *replacement policy*: which convs a compressed conv type replaces.

* Every candidate is a ``groups=1`` conv with a square kernel larger than 1×1 (dilation 1).
* The *stem* (the first conv, the one that sees the image) stays standard, except where the thesis
  replaced it: in the VGG models FALCON replaces every conv, the first one included.
* ``include_stem=True`` replaces the stem too, for any model.
* ShuffleUnit α× is the one competitor whose code was never published. Its layout here is the one
  closest to the published counts (all within 6% but ResNet-18's 8%): α widens the maps between
  VGG's replaced convs, and the whole network after the image in the ResNets; ResNet-18 loses its
  shortcuts (the thesis says it removed them for ResNet34, whose published counts, though, fit a
  model that kept them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from torch import nn

from falcon.errors import FalconError
from falcon.models.cifar import resnet34_cifar, vgg19_cifar


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[[int], nn.Module] = field(repr=False)
    input_size: int
    in_channels: int = 3
    default_classes: int = 1000
    family: str = "torchvision"
    description: str = ""
    stem_replaced_by: frozenset[str] = frozenset()  # conv types that replace the stem in the thesis
    drop_shortcuts_for: frozenset[str] = frozenset()
    shuffle_widen: str = "inner"  # how ShuffleUnit's α widens the model (falcon.surgery.widen_for_shuffle)

    def build(self, num_classes: int | None = None) -> nn.Module:
        return self.builder(self.default_classes if num_classes is None else num_classes)


def _digits_builder(num_classes: int) -> nn.Module:
    from falcon.models.digits import DigitsVGG

    return DigitsVGG(num_classes=num_classes)


def _torchvision_builder(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        kwargs: dict = {"weights": None, "num_classes": num_classes}
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


def get_model_entry(name: str) -> ModelEntry:
    if name in PAPER_MODEL_ENTRIES:
        return PAPER_MODEL_ENTRIES[name]
    if name in torchvision_classification_models():
        size = 299 if name == "inception_v3" else 224
        return ModelEntry(name, _torchvision_builder(name), size, description=f"torchvision {name}")
    close = [m for m in list_models() if name.lower().replace("-", "_") in m.replace("-", "_")][:5]
    hint = f" (did you mean {', '.join(close)}?)" if close else "; `python -m falcon models` lists them"
    raise FalconError(f"unknown model {name!r}{hint}")
