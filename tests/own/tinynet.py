"""A model of a user's own, outside the project: what ``--model tests/own/tinynet.py:tiny_net`` imports."""
import torch
from torch import nn
from torch.nn import functional as F


class TinyNet(nn.Module):
    """A small CNN with a residual join, a strided conv, a 1×1 conv and a functional linear head."""

    def __init__(self, num_classes: int = 7, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 1), nn.ReLU(),
        )
        self.head = nn.Parameter(torch.randn(num_classes, 2 * width) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = self.body(x + 0.5 * x)
        return F.linear(x.mean((2, 3)), self.head)


def tiny_net(num_classes: int = 7) -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet(num_classes)
    for m in model.modules():  # non-trivial BN statistics, so that eval mode is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def broken(num_classes: int = 7) -> nn.Module:
    raise ValueError("this factory is broken on purpose")


def not_a_model(num_classes: int = 7):
    return "a string"
