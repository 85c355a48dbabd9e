"""``digits-vgg``: a small VGG-style CNN trained on the bundled 8x8 digits.

The pretrained weights (``falcon/data/digits_vgg.pt``, package data) ship with the project so the
FALCON fit / convert / fine-tune workflow can be tried on real trained weights
offline.  They are produced by ``python scripts/train_digits.py``, which calls
:func:`train_digits_model`; see ``falcon/data/DIGITS.md`` for the recipe and accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from falcon.data import DATA_DIR
from falcon.errors import FalconError

DIGITS_WEIGHTS = DATA_DIR / "digits_vgg.pt"

# (out_channels, followed_by_maxpool) for each conv3x3 + BN + ReLU block.
DIGITS_VGG_CFG: tuple[tuple[int, bool], ...] = (
    (16, False), (32, True),
    (64, False), (64, True),
    (128, True),
)

# Training recipe used for the shipped weights (scripts/train_digits.py).
DEFAULT_EPOCHS = 20
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 3e-3
DEFAULT_WEIGHT_DECAY = 5e-4
DEFAULT_MAX_SHIFT = 3  # random translation, in pixels of the 32x32 input
DEFAULT_LABEL_SMOOTHING = 0.05


class DigitsVGG(nn.Module):
    """VGG-style CNN for 1x32x32 digit images.

    ``features`` is an ``nn.Sequential`` of conv3x3 (``bias=False``) +
    BatchNorm2d + ReLU blocks with 2x2 max pools (conv layers are
    ``features.0``, ``features.3``, ``features.7``, ``features.10``,
    ``features.14``); then global average pooling and ``classifier``
    (``nn.Sequential`` holding one ``Linear(128, num_classes)``).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for out_c, pool in DIGITS_VGG_CFG:
            layers += [
                nn.Conv2d(c, out_c, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_c),
                nn.ReLU(inplace=True),
            ]
            if pool:
                layers.append(nn.MaxPool2d(2))
            c = out_c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(c, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def digits_vgg(pretrained: bool = True, num_classes: int = 10) -> DigitsVGG:
    """Build ``DigitsVGG``; with ``pretrained`` load the bundled weights (CPU)."""
    if pretrained and num_classes != 10:
        raise FalconError(
            f"the pretrained digits-vgg has 10 classes; got num_classes={num_classes}")
    model = DigitsVGG(num_classes=num_classes)
    if pretrained:
        if not DIGITS_WEIGHTS.is_file():
            raise FalconError(
                f"{DIGITS_WEIGHTS} is missing: reinstall falcon-explorer (in a checkout: python scripts/train_digits.py)")
        state = torch.load(DIGITS_WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
    return model


def save_weights(model: nn.Module, path: Path | str = DIGITS_WEIGHTS) -> Path:
    """Save ``model.state_dict()`` as plain, contiguous CPU tensors (floats as float32)."""
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if v.is_floating_point():
            v = v.to(torch.float32)
        state[k] = v.clone().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def random_shift(x: torch.Tensor, max_shift: int, fill: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image of ``x`` (N, C, H, W) by up to ``max_shift`` pixels."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=fill)
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (N, H)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (N, W)
    b = torch.arange(n)[:, None, None, None]
    ch = torch.arange(c)[None, :, None, None]
    return padded[b, ch, rows[:, None, :, None], cols[:, None, None, :]]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on a (images, labels) dataset."""
    model.eval()
    x, y = dataset.tensors
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / max(len(y), 1)


def train_digits_model(
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    max_shift: int = DEFAULT_MAX_SHIFT,
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING,
    train_subset: int | None = None,
    evaluate: bool = True,
    verbose: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[DigitsVGG, list[dict[str, float]]]:
    """Train ``DigitsVGG`` from scratch on the train split, reproducibly.

    AdamW with a per-step cosine schedule (one warm-up epoch), cross-entropy
    with light label smoothing, random shifts of up to ``max_shift`` pixels.
    ``train_subset`` keeps only the first N training images (for quick tests).
    Returns the model (eval mode) and a per-epoch history of dicts with
    ``epoch``, ``loss``, ``train_acc`` and (if ``evaluate``) ``test_acc``.
    """
    from falcon.datasets import DIGITS_MEAN, DIGITS_STD, load_digits

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        train = load_digits("train")
        x_train, y_train = train.tensors
        if train_subset is not None:
            x_train, y_train = x_train[:train_subset], y_train[:train_subset]
        test = load_digits("test") if evaluate else None
        fill = (0.0 - DIGITS_MEAN) / DIGITS_STD  # normalised background value

        model = DigitsVGG()
        n = len(y_train)
        opt, sched = _optimizer(model, lr, weight_decay, epochs, max(1, math.ceil(n / batch_size)))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        history: list[dict[str, float]] = []
        for epoch in range(1, epochs + 1):
            loss_sum, correct = _train_epoch(model, x_train, y_train, batch_size, lambda xb: random_shift(
                xb, max_shift, fill, gen), gen, loss_fn, opt, sched)
            rec = {"epoch": epoch, "loss": loss_sum / n, "train_acc": correct / n}
            if test is not None:
                rec["test_acc"] = evaluate_accuracy(model, test)
            history.append(rec)
            if verbose:
                log(f"epoch {epoch:3d}  loss {rec['loss']:.4f}  train acc {rec['train_acc']:.4f}"
                    + (f"  test acc {rec['test_acc']:.4f}" if "test_acc" in rec else ""))
        model.eval()
        return model, history
    finally:
        torch.use_deterministic_algorithms(prev_det)


def _optimizer(model: nn.Module, lr: float, weight_decay: float, epochs: int, steps_per_epoch: int):
    """AdamW (no weight decay on biases and norms) and its per-step schedule: a linear warm-up over the first
    epoch (at most half the steps), then a cosine decay to 0."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    total = epochs * steps_per_epoch
    warmup = min(steps_per_epoch, max(total // 2, 1))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


def _train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, augment: Callable,
                 gen: torch.Generator, loss_fn: nn.Module, opt: torch.optim.Optimizer, sched) -> tuple[float, int]:
    """One epoch in train mode over batches of a ``gen``-seeded permutation (a last batch of one is skipped:
    BatchNorm needs more than one sample), ``augment`` applied to each: the summed loss and the correct count."""
    model.train()
    n = len(y)
    perm = torch.randperm(n, generator=gen)
    loss_sum, correct = 0.0, 0
    for i in range(0, n, batch_size):
        idx = perm[i:i + batch_size]
        if len(idx) < 2:
            continue
        xb, yb = augment(x[idx]), y[idx]
        out = model(xb)
        loss = loss_fn(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.item() * len(idx)
        correct += (out.argmax(1) == yb).sum().item()
    return loss_sum, correct
