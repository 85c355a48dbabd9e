"""A convolution layer's shape: the one input every cost formula and module builder takes."""
from __future__ import annotations

from dataclasses import dataclass

from falcon.errors import FalconError
from falcon.limits import parse_int


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """H' = floor((H + 2p - D) / s) + 1, the output size of a convolution along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class LayerSpec:
    """A D×D convolution from M to N channels on an H×W input, with stride s and padding p.

    ``width`` defaults to ``height`` and ``padding`` to ``kernel_size // 2`` ("same" for odd D).
    The constructor validates: a spec that exists is one that can be built.
    """

    in_channels: int
    out_channels: int
    kernel_size: int
    height: int
    width: int | None = None
    stride: int = 1
    padding: int | None = None

    def __post_init__(self) -> None:
        if self.width is None:
            object.__setattr__(self, "width", self.height)
        if self.padding is None:
            object.__setattr__(self, "padding", self.kernel_size // 2)
        for name, bound in (("in_channels", "channels"), ("out_channels", "channels"), ("kernel_size", "kernel_size"),
                            ("height", "input_size"), ("width", "input_size"), ("stride", "stride"), ("padding", "padding")):
            value = getattr(self, name)
            if isinstance(value, str):  # a number, not text: "3" is the caller's parsing to do (limits.parse_int)
                raise FalconError(f"{name.replace('_', ' ')} must be an integer, got {value!r}")
            object.__setattr__(self, name, parse_int(value, bound, name.replace("_", " ")))
        for axis, size in (("height", self.height), ("width", self.width)):
            if self.kernel_size > size + 2 * self.padding:
                raise FalconError(
                    f"kernel {self.kernel_size}x{self.kernel_size} is larger than the padded input "
                    f"{axis} {size}+2*{self.padding}; use a smaller kernel, more padding or a larger input"
                )

    # Symbols of the thesis (Table 1): M, N, D, H, W, H', W'.
    @property
    def M(self) -> int:  # noqa: N802 - the paper's symbol
        return self.in_channels

    @property
    def N(self) -> int:  # noqa: N802
        return self.out_channels

    @property
    def D(self) -> int:  # noqa: N802
        return self.kernel_size

    @property
    def out_height(self) -> int:
        return conv_output_size(self.height, self.kernel_size, self.stride, self.padding)

    @property
    def out_width(self) -> int:
        return conv_output_size(self.width, self.kernel_size, self.stride, self.padding)

    @property
    def output_size(self) -> tuple[int, int]:
        return (self.out_height, self.out_width)

    def describe(self) -> str:
        return (
            f"{self.in_channels}→{self.out_channels}, {self.kernel_size}×{self.kernel_size}, "
            f"stride {self.stride}, pad {self.padding}, {self.height}×{self.width}→"
            f"{self.out_height}×{self.out_width}"
        )

    def as_dict(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "height": self.height,
            "width": self.width,
            "stride": self.stride,
            "padding": self.padding,
        }


def expanded_channels(in_channels: int, expansion: float) -> int:
    """T = int(t·M), the hidden width of MobileConvV2-t."""
    return int(expansion * in_channels)


def shuffle_widths(spec: LayerSpec, width_mult: float) -> tuple[int, int, int]:
    """(M', N', B) of ShuffleUnit α×: M' = int(α·M), N' = int(α·N), bottleneck B = N' // 4."""
    m = int(width_mult * spec.M)
    n = int(width_mult * spec.N)
    return m, n, n // 4
