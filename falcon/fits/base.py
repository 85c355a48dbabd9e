"""What every fitter shares: ranks resolved and clamped to the full ranks, the fit's record, a seeded random
"fit" (a freshly initialized block), and factors moved into and out of a block.

A fitter for a new conv type writes four things: ``decompose`` (the fit: factors of the kernel), ``compose``
(the kernel that factors make), ``factors_of`` and ``write`` (the factors in its block's weights).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from falcon.errors import FalconError


@dataclass
class KernelFit:
    """A fit of a kernel ``(N, M, D, D)`` by a conv type's factors.

    ``hparams``: the ranks used (each requested rank clamped to its full rank), the block's hyper-parameters;
    ``requested``: the ranks asked for; ``full_ranks``: where each rank makes the fit exact.
    """

    conv_type: str
    factors: dict[str, torch.Tensor]
    kernel_hat: torch.Tensor
    relative_error: float
    hparams: dict[str, int]
    requested: dict[str, int]
    full_ranks: dict[str, int]
    method: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rank_used(self) -> int:
        """One number for the ranks used (the largest): what a table of uniform ranks shows."""
        return max(self.hparams.values())

    @property
    def rank_requested(self) -> int:
        return max(self.requested.values())

    @property
    def clamped(self) -> bool:
        return any(self.requested[k] > self.full_ranks[k] for k in self.requested)

    @property
    def full_rank(self) -> int:
        return max(self.full_ranks.values())

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "conv": self.conv_type, "ranks": dict(self.hparams),
                "ranks_requested": dict(self.requested), "full_ranks": dict(self.full_ranks),
                "rank_used": self.rank_used, "rank_requested": self.rank_requested, "clamped": self.clamped,
                "full_rank": self.full_rank, "relative_error": self.relative_error, "seconds": self.seconds,
                "notes": list(self.notes)}


def relative_error(kernel: torch.Tensor, kernel_hat: torch.Tensor) -> float:
    """‖K − K̂‖_F / ‖K‖_F in float64 (0 when both are zero)."""
    k = kernel.detach().double()
    num = torch.linalg.vector_norm(k - kernel_hat.detach().double()).item()
    den = torch.linalg.vector_norm(k).item()
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def check_kernel(kernel: torch.Tensor, fit: str = "a fit") -> None:
    """A FalconError unless ``kernel`` is a finite, floating-point, square ``(N, M, D, D)`` tensor; ``fit`` names
    the fit in the messages ("an EHP fit": :func:`falcon.ehp._check_kernel`)."""
    if not isinstance(kernel, torch.Tensor) or kernel.dim() != 4:
        shape = tuple(kernel.shape) if isinstance(kernel, torch.Tensor) else type(kernel).__name__
        raise FalconError(f"a conv kernel must be a 4-d tensor (N, M, D, D), got {shape}")
    if kernel.shape[2] != kernel.shape[3]:
        raise FalconError(f"{fit} takes square D×D kernels, got {kernel.shape[2]}×{kernel.shape[3]}")
    if not kernel.is_floating_point():
        raise FalconError(f"a conv kernel must be floating point, got {kernel.dtype}")
    if not bool(torch.isfinite(kernel).all()):  # an SVD of NaN fails, of inf reports an error of 0
        nan, inf = int(torch.isnan(kernel).sum()), int(torch.isinf(kernel).sum())
        raise FalconError(f"the conv kernel has {nan:,} NaN and {inf:,} inf values; {fit} needs finite weights "
                          "(fit a trained, finite checkpoint)")


@contextmanager
def fit_threads():
    """One thread for torch and for numpy's BLAS while a fit runs (:data:`falcon.threads.FIT_THREADS`): on a shared
    2-core machine an SVD of a 128×2304 matrix took 0.07 s on one thread and 0.5–2.4 s on two, and tensorly's
    HOOI and ALS call many small ones."""
    from falcon.threads import FIT_THREADS
    from falcon.threads import torch_threads as _threads

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn's dependency; without it numpy keeps its threads
        threadpool_limits = None
    with _threads(FIT_THREADS):
        if threadpool_limits is None or FIT_THREADS is None:
            yield
        else:
            with threadpool_limits(FIT_THREADS):
                yield


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FalconError(f"{name} must be a positive integer, got {value!r}")
    return value


class Fitter:
    """The fit of one conv type. Subclasses write :meth:`decompose`, :meth:`compose`, :meth:`factors_of`,
    :meth:`write`; ``methods`` lists the fits it has, the first being its default (``svd`` names the default
    for every type); ``bias_on`` names the block's convolution that ends at the N outputs."""

    methods: tuple[str, ...] = ("svd", "random")
    bias_on: str = "last"

    def __init__(self, conv_type: str):
        self.conv_type = conv_type

    # ------------------------------------------------------------------ facts of the registry
    @property
    def rule(self):
        from falcon.convtypes import get_conv_type

        return get_conv_type(self.conv_type).fit

    def full_ranks(self, shape) -> dict[str, int]:
        """Full rank per ranked hyper-parameter for a kernel of ``shape`` (N, M, D, …)."""
        return self.rule.full_ranks(int(shape[0]), int(shape[1]), int(shape[2]))

    def method_of(self, method: str) -> str:
        if method == "svd":
            return self.methods[0]
        if method not in self.methods:
            raise FalconError(f"method must be one of svd, {', '.join(m for m in self.methods if m != 'svd')} for "
                              f"{self.conv_type}, got {method!r}")
        return method

    def resolve_ranks(self, kernel: torch.Tensor, ranks: int | dict | None) -> tuple[dict, dict]:
        """(used, requested): ``ranks`` as one rank per ranked hyper-parameter, each clamped to its full rank."""
        names = self.rule.ranks
        if ranks is None:
            ranks = self.auto_ranks(kernel)
        if isinstance(ranks, dict):
            unknown = set(ranks) - set(names)
            if unknown or set(ranks) != set(names):
                raise FalconError(f"{self.conv_type} takes the ranks {', '.join(names)}; got {', '.join(map(str, ranks))}")
            requested = {n: _positive_int(n, ranks[n]) for n in names}
        else:
            requested = {n: _positive_int("rank", ranks) for n in names}
        full = self.full_ranks(kernel.shape)
        return {n: min(requested[n], full[n]) for n in names}, requested

    def auto_ranks(self, kernel: torch.Tensor) -> dict[str, int]:
        raise FalconError(f"{self.conv_type} has no rank rule of its own; give a rank")

    # ------------------------------------------------------------------ the fit
    def fit(self, kernel: torch.Tensor, ranks: int | dict | None = 1, method: str = "svd", seed: int = 0,
            **options: Any) -> KernelFit:
        check_kernel(kernel)
        kernel = kernel.detach()
        used, requested = self.resolve_ranks(kernel, ranks)
        method = self.method_of(method)
        t0 = time.perf_counter()
        with fit_threads():
            if method == "random":
                factors, notes = self.random_factors(kernel, used, seed), []
            else:
                factors, notes = self.decompose(kernel, used, method, seed=seed, **options)
        factors = {k: v.to(kernel.dtype).contiguous() for k, v in factors.items()}
        kernel_hat = self.compose(factors)
        if not bool(torch.isfinite(kernel_hat).all()):
            raise FalconError(f"the {method} fit of {self.conv_type} diverged (NaN or infinite factors); "
                              "lower the rank or use another method")
        return KernelFit(self.conv_type, factors, kernel_hat, relative_error(kernel, kernel_hat), used, requested,
                         self.full_ranks(kernel.shape), method, time.perf_counter() - t0, list(notes))

    def decompose(self, kernel: torch.Tensor, ranks: dict, method: str, **options: Any) -> tuple[dict, list[str]]:
        raise NotImplementedError

    def compose(self, factors: dict) -> torch.Tensor:
        raise NotImplementedError

    def random_factors(self, kernel: torch.Tensor, ranks: dict, seed: int = 0) -> dict:
        """The factors of a freshly initialized block (PyTorch's default init, seeded; global RNG untouched)."""
        from falcon.convtypes import get_conv_type
        from falcon.spec import LayerSpec

        n, m, d = kernel.shape[:3]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            block = get_conv_type(self.conv_type).build(LayerSpec(m, n, d, d, padding=0), **ranks)
        return {k: v.detach().to(kernel.dtype) for k, v in self.factors_of(block).items()}

    # ------------------------------------------------------------------ blocks
    def factors_of(self, block: nn.Module) -> dict:
        raise NotImplementedError

    def write(self, block: nn.Module, factors: dict) -> None:
        raise NotImplementedError

    def kernel_of(self, block: nn.Module) -> torch.Tensor:
        return self.compose(self.factors_of(block))

    @torch.no_grad()
    def load(self, block: nn.Module, fit: KernelFit) -> nn.Module:
        """Copy the fit's factors into ``block`` (built with ``fit.hparams``); it then computes ``fit.kernel_hat``."""
        if getattr(block, "conv_type", None) != self.conv_type:
            raise FalconError(f"a {self.conv_type} fit loads into a {self.conv_type} block, not {type(block).__name__}")
        have = {k: tuple(v.shape) for k, v in self.factors_of(block).items()}
        want = {k: tuple(v.shape) for k, v in fit.factors.items()}
        if have != want:
            raise FalconError(f"the fit's factors {want} do not match the block's {have}")
        self.write(block, fit.factors)
        return block

    def attach_bias(self, block: nn.Module, bias: torch.Tensor) -> None:
        target = block.get_submodule(self.bias_on)
        target.bias = nn.Parameter(bias.detach().clone().to(target.weight))

    def structure(self, ranks: dict) -> str:
        """How the block writes the kernel, as the rest of a sentence ("writes its kernel as …")."""
        return "writes its kernel as a product of smaller convolutions"

    def error_by_rank(self, kernel: torch.Tensor) -> list[float] | None:
        """The default fit's relative error at uniform ranks 1 … full rank, where it is cheap to know (else None)."""
        return None

    def error_curve(self, kernel: torch.Tensor, options: list[dict]) -> list[float]:
        """The default fit's relative error at each of ``options`` (dicts of ranks): from :meth:`error_by_rank` for a
        type with one rank, else one fit per option (a fitter with a faster way overrides this)."""
        names = self.rule.ranks
        curve = self.error_by_rank(kernel) if len(names) == 1 else None
        if curve:
            return [curve[min(int(o[names[0]]), len(curve)) - 1] for o in options]
        return [self.fit(kernel, dict(o)).relative_error for o in options]
