"""The thesis's models for 32×32 inputs (docs/method.md §4), written to match its counts exactly."""
from __future__ import annotations

import torch
from torch import nn

VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                    512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGGCifar(nn.Module):
    """VGG19 for CIFAR: 16 3×3 convs (pad 1, bias) each with BN and ReLU, five 2×2 max-pools,
    then Linear(512, 512), ReLU, Linear(512, classes)."""

    def __init__(self, num_classes: int = 10, cfg: tuple[int | str, ...] = VGG19_CFG, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=True), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(c, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """ResNet basic block, convs with bias as in the reference code; 1×1 conv + BN shortcut when
    the stride or the channel count changes."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(channels))
        self.use_shortcut = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.use_shortcut:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu(out)


class ResNetCifar(nn.Module):
    """ResNet34 for CIFAR: 3×3 stem (bias) + BN + ReLU, no 7×7 conv, no max-pool; BasicBlocks
    (3, 4, 6, 3) with 64/128/256/512 channels; the first block of EVERY stage has stride 2
    (32→16→8→4→2); 2×2 average pool and Linear(512, classes)."""

    def __init__(self, num_classes: int = 10, blocks: tuple[int, ...] = (3, 4, 6, 3), in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        c = 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(c, width, stride=2 if j == 0 else 1))
                c = width
            setattr(self, f"layer{i}", nn.Sequential(*stage))
        self.avgpool = nn.AvgPool2d(2)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def vgg19_cifar(num_classes: int = 10) -> VGGCifar:
    return VGGCifar(num_classes)


def resnet34_cifar(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(num_classes)
