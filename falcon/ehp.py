"""The extended Hadamard product (EHP) and fitting a trained kernel with it.

Kernels are in PyTorch's layout ``K[n, m, i, j]`` (N output channels, M input channels, D×D).
A rank-k factorization is a pair of stacked factors

* ``P`` of shape ``(k, N, M)``: the pointwise kernels, ``P[r, n, m]``;
* ``Dw`` of shape ``(k, C, D, D)``: the depthwise kernels, on the *common axis* of C channels.

Two conv types share the math and differ only in the common axis (docs/method.md §1):

* falcon, ``axis="output"`` (C = N): pointwise M→N, then depthwise on N.
  ``K[n, m, i, j] = Σ_r P[r, n, m] · Dw[r, n, i, j]``
* dsconv, ``axis="input"`` (C = M): depthwise on M, then pointwise M→N.
  ``K[n, m, i, j] = Σ_r Dw[r, m, i, j] · P[r, n, m]``

For each channel c of the common axis the kernel is a matrix (M × D² for falcon, N × D² for dsconv)
and a rank-k EHP is a rank-k product of it, so the best fit is its truncated SVD (Eckart–Young):
:func:`svd_fit`. :func:`gd_fit` is the thesis's gradient descent, written as a generator of steps.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import torch
from torch import nn

from falcon.errors import FalconError
from falcon.limits import parse_float, parse_int

Axis = Literal["output", "input"]
AXES = ("output", "input")
#: The optimizers of the gradient-descent fit (not the fine-tuning's: falcon.experiments.pipeline).
FIT_OPTIMIZERS = ("adam", "sgd")
LOSSES = ("relative", "mse")

#: Defaults of the gradient-descent fit, per optimizer. ``scale``: the RMS the kernel is rescaled to
#: before fitting (the factors are scaled back afterwards); None fits the raw kernel.
#: Adam is not invariant to the scale of its parameters: with lr 1e-3 it moves every entry by about
#: 1e-3 per step, so a fixed working scale makes one default serve every layer. On Gaussian
#: kernels of 64…512 channels it is within 2% of the SVD optimum after ~150–250 steps (rank 1–4).
#: ``sgd`` is the thesis's reference fit: lr 0.01 on the *mean* squared error of the raw kernel.
GD_DEFAULTS = {
    "adam": {"lr": 1e-3, "loss": "relative", "scale": 2e-3},
    "sgd": {"lr": 1e-2, "loss": "mse", "scale": None},
}
GD_STEPS = 600
#: the settings of gd_fit that convert(..., **gd) passes on (falcon.convert rejects any other keyword)
GD_OPTIONS = ("steps", "lr", "optimizer", "loss", "scale", "threads")

#: torch intra-op threads while fitting (None: torch's own setting). The fits are many small
#: problems (one per channel, or one small step); on a shared 2-core CPU a second thread mostly
#: waits at barriers: a batched SVD of 512 matrices 512×9 took 26 ms on one thread and 250 ms on
#: two while other jobs ran, and a gradient-descent step was 5–40× faster on one thread.
from falcon.threads import FIT_THREADS  # noqa: E402,F401 (re-exported)
from falcon.threads import torch_threads as _threads  # noqa: E402


def _check_axis(axis: str) -> None:
    if axis not in AXES:
        raise FalconError(f"axis must be 'output' (falcon) or 'input' (dsconv), got {axis!r}")


def _check_kernel(kernel: torch.Tensor) -> None:
    """:func:`falcon.fits.base.check_kernel`, its messages naming the EHP fit."""
    from falcon.fits.base import check_kernel  # not at the top: falcon.fits imports this module

    check_kernel(kernel, "an EHP fit")


#: The full rank along each common axis, as a formula (N output, M input channels, D×D kernel).
FULL_RANK_FORMULA = {"output": "min(M, D²)", "input": "min(N, D²)"}


def full_rank(kernel_shape: torch.Size | tuple[int, ...], axis: Axis) -> int:
    """The rank at which the EHP fit is exact: min(M, D²) for falcon, min(N, D²) for dsconv."""
    _check_axis(axis)
    n, m, d = kernel_shape[0], kernel_shape[1], kernel_shape[2]
    return min(m if axis == "output" else n, d * d)


def conv_type_axis(conv_type: str) -> Axis:
    """The common axis of a conv type of the registry (``falcon`` → output, ``dsconv`` → input)."""
    from falcon.fits import fitter_of

    axis = getattr(fitter_of(conv_type), "axis", None)
    if axis is None:
        raise FalconError(f"{conv_type} is not an EHP of the kernel; fit falcon or dsconv")
    return axis


# ----------------------------------------------------------------------------------------------
# the EHP itself
def _stacked(pointwise: torch.Tensor, depthwise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pointwise.dim() == 2:
        pointwise = pointwise.unsqueeze(0)
    if depthwise.dim() == 3:
        depthwise = depthwise.unsqueeze(0)
    if pointwise.dim() != 3 or depthwise.dim() != 4 or pointwise.shape[0] != depthwise.shape[0]:
        raise FalconError(f"EHP factors must be P (k, N, M) and D (k, C, D, D) with the same k; "
                          f"got {tuple(pointwise.shape)} and {tuple(depthwise.shape)}")
    return pointwise, depthwise


def ehp_kernel(pointwise: torch.Tensor, depthwise: torch.Tensor, axis: Axis) -> torch.Tensor:
    """The standard-conv kernel ``(N, M, D, D)`` that a rank-k EHP computes.

    ``pointwise`` is ``(k, N, M)`` (or ``(N, M)`` for k = 1); ``depthwise`` is ``(k, C, D, D)``
    (or ``(C, D, D)``) with C = N for ``axis="output"`` (falcon) and C = M for ``"input"`` (dsconv).
    """
    _check_axis(axis)
    p, dw = _stacked(pointwise, depthwise)
    k, n, m = p.shape
    c, d = dw.shape[1], dw.shape[2]
    if c != (n if axis == "output" else m):
        raise FalconError(f"depthwise factor has {c} channels; the {axis} axis of P {tuple(p.shape[1:])} "
                          f"has {n if axis == 'output' else m}")
    flat = dw.reshape(k, c, d * d)
    if axis == "output":  # K[n, m, :] = Σ_r P[r, n, m] · D[r, n, :]
        kernel = torch.bmm(p.permute(1, 2, 0), flat.permute(1, 0, 2))  # (N, M, D²)
    else:  # K[n, m, :] = Σ_r P[r, n, m] · D[r, m, :]
        kernel = torch.bmm(p.permute(2, 1, 0), flat.permute(1, 0, 2)).transpose(0, 1)  # (N, M, D²)
    return kernel.reshape(n, m, d, d)


def channel_matrices(kernel: torch.Tensor, axis: Axis) -> torch.Tensor:
    """The kernel as one matrix per channel of the common axis: ``(N, M, D²)`` or ``(M, N, D²)``."""
    _check_axis(axis)
    n, m, d, _ = kernel.shape
    flat = kernel.reshape(n, m, d * d)
    return flat if axis == "output" else flat.transpose(0, 1)


# ----------------------------------------------------------------------------------------------
# the closed-form optimum
@dataclass
class Fit:
    """A rank-k EHP fit of a kernel.

    ``P`` is ``(k, N, M)``, ``D`` is ``(k, C, D, D)``; ``kernel_hat`` = ``ehp_kernel(P, D, axis)``.
    ``rank_used`` is the rank after clamping to the full rank (``clamped`` says whether it was).
    """

    P: torch.Tensor
    D: torch.Tensor
    kernel_hat: torch.Tensor
    relative_error: float
    rank_used: int
    clamped: bool
    axis: Axis = "output"
    rank_requested: int = 0
    method: str = "svd"

    @property
    def full_rank(self) -> int:
        return full_rank(self.kernel_hat.shape, self.axis)

    @property
    def hparams(self) -> dict[str, int]:
        """The block's ranked hyper-parameters (as :class:`falcon.fits.base.KernelFit` has them)."""
        return {"rank": self.rank_used}

    @property
    def full_ranks(self) -> dict[str, int]:
        return {"rank": self.full_rank}

    def as_dict(self) -> dict:
        return {"method": self.method, "axis": self.axis, "rank_requested": self.rank_requested,
                "rank_used": self.rank_used, "clamped": self.clamped, "full_rank": self.full_rank,
                "relative_error": self.relative_error}


def relative_error(kernel: torch.Tensor, kernel_hat: torch.Tensor) -> float:
    """‖K − K̂‖_F / ‖K‖_F (0 when both are zero)."""
    k = kernel.detach().double()
    num = torch.linalg.vector_norm(k - kernel_hat.detach().double()).item()
    den = torch.linalg.vector_norm(k).item()
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def clamp_rank(kernel_shape: torch.Size | tuple[int, ...], rank: int, axis: Axis) -> tuple[int, bool]:
    """(rank used, clamped?): a rank above the full rank is lowered to it."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise FalconError(f"rank must be a positive integer, got {rank!r}")
    top = full_rank(kernel_shape, axis)
    return (top, True) if rank > top else (rank, False)


def _svd(kernel: torch.Tensor, axis: Axis, threads: int | None = FIT_THREADS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched thin SVD of every channel matrix: U (C, A, q), S (C, q), Vh (C, q, D²)."""
    with _threads(threads):
        return torch.linalg.svd(channel_matrices(kernel.detach(), axis), full_matrices=False)


def svd_fit(kernel: torch.Tensor, rank: int, axis: Axis, threads: int | None = FIT_THREADS) -> Fit:
    """The best rank-k EHP of ``kernel`` in Frobenius norm: a truncated SVD per channel.

    Each singular value is split evenly between the factors (``P = U√S``, ``D = √S Vᵀ``), so the
    pointwise and depthwise kernels have the same scale, which suits later fine-tuning.
    ``threads``: see :data:`FIT_THREADS`.
    """
    _check_kernel(kernel)
    _check_axis(axis)
    k, clamped = clamp_rank(kernel.shape, rank, axis)
    n, m, d, _ = kernel.shape
    u, s, vh = _svd(kernel, axis, threads)  # u: (C, A, q), A = M (output) or N (input)
    root = s[:, :k].sqrt()  # (C, k)
    left = (u[:, :, :k] * root[:, None, :]).permute(2, 0, 1)  # (k, C, A)
    dw = (vh[:, :k, :] * root[:, :, None]).permute(1, 0, 2).reshape(k, -1, d, d)  # (k, C, D, D)
    p = left if axis == "output" else left.transpose(1, 2)  # (k, N, M)
    p, dw = p.contiguous(), dw.contiguous()
    with _threads(threads):
        kernel_hat = ehp_kernel(p, dw, axis)
    # Eckart–Young: the error of the truncation is the energy of the dropped singular values
    # (equal to ‖K − K̂‖/‖K‖ up to rounding, and cheaper than forming the difference).
    s2 = s.double() ** 2
    total = s2.sum().item()
    error = math.sqrt(s2[:, k:].sum().item() / total) if total > 0 else 0.0
    return Fit(p, dw, kernel_hat, error, k, clamped, axis, rank, "svd")


def singular_values(kernel: torch.Tensor, axis: Axis) -> torch.Tensor:
    """Singular values of each channel matrix, ``(C, q)``, largest first (q = full rank)."""
    _check_kernel(kernel)
    with _threads(FIT_THREADS):
        return torch.linalg.svdvals(channel_matrices(kernel.detach(), axis))


def singular_energy(kernel: torch.Tensor, axis: Axis) -> torch.Tensor:
    """Cumulative singular-value energy per channel, ``(C, q)``: entry ``[c, k-1]`` is the fraction of
    ‖K_c‖² that the best rank-k fit of channel c keeps (1 for an all-zero channel)."""
    s2 = singular_values(kernel, axis).double() ** 2
    total = s2.sum(dim=1, keepdim=True)
    cum = s2.cumsum(dim=1)
    return torch.where(total > 0, cum / total.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(cum))


def rank_for_energy(kernel: torch.Tensor, axis: Axis, energy: float = 0.9) -> torch.Tensor:
    """The smallest rank per channel whose fit keeps at least ``energy`` of the channel's ‖·‖², ``(C,)``."""
    if not (0.0 < energy <= 1.0):
        raise FalconError(f"energy must be in (0, 1], got {energy}")
    cum = singular_energy(kernel, axis)
    # tolerance: a fit that keeps all the energy up to rounding counts as keeping it
    return (cum < energy - 1e-12).sum(dim=1) + 1


def error_by_rank(kernel: torch.Tensor, axis: Axis) -> list[float]:
    """The optimal relative error at every rank 1 … full rank (Eckart–Young: the dropped energy)."""
    s2 = singular_values(kernel, axis).double() ** 2
    total = s2.sum()
    if total == 0:
        return [0.0] * s2.shape[1]
    kept = s2.sum(dim=0).cumsum(0)
    return [math.sqrt(max(0.0, 1.0 - v)) for v in (kept / total).tolist()]


# ----------------------------------------------------------------------------------------------
# the thesis's gradient descent, as a generator of steps
@dataclass
class GDStep:
    """One step of the gradient-descent fit: the loss and relative error *before* update ``step``.

    The last record (``step == steps``) is the state after the last update. ``snapshot()`` returns a
    :class:`Fit` of the parameters as they are when it is called: call it on the latest record (the
    generator does not move until it is asked for the next one).
    """

    step: int
    loss: float
    relative_error: float
    seconds: float
    snapshot: Callable[[], Fit] = field(repr=False, compare=False, default=None)


def _gd_options(optimizer: str, lr: float | None, loss: str | None, scale: float | None | str,
                steps: int) -> tuple[float, str, float | None]:
    if optimizer not in FIT_OPTIMIZERS:
        raise FalconError(f"optimizer must be one of {', '.join(FIT_OPTIMIZERS)}, got {optimizer!r}")
    defaults = GD_DEFAULTS[optimizer]
    loss = defaults["loss"] if loss is None else loss
    if loss not in LOSSES:
        raise FalconError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    lr = parse_float(defaults["lr"] if lr is None else lr, "lr", "learning rate")
    scale = defaults["scale"] if scale == "default" else scale
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
        raise FalconError(f"scale must be a positive number or None, got {scale!r}")
    parse_int(steps, "steps")
    return lr, loss, scale


def _factors(a: torch.Tensor, b: torch.Tensor, axis: Axis, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, D) from per-channel factors a (C, A, k) and b (C, D², k): K_c ≈ a_c b_cᵀ."""
    k, c = a.shape[2], a.shape[0]
    p = a.permute(2, 0, 1) if axis == "output" else a.permute(2, 1, 0)
    return p.contiguous(), b.permute(2, 0, 1).reshape(k, c, d, d).contiguous()


def gd_fit(kernel: torch.Tensor, rank: int, axis: Axis, steps: int = GD_STEPS, lr: float | None = None,
           optimizer: str = "adam", seed: int = 0, loss: str | None = None,
           scale: float | None | str = "default", threads: int | None = FIT_THREADS) -> Iterator[GDStep]:
    """Fit a rank-k EHP by gradient descent from a seeded random start, one step per ``next()``.

    Minimizes ‖K − EHP(P, D)‖² over P and D, as the thesis does.

    * ``optimizer="adam"`` (default): lr 1e-3 on the relative loss ‖K − K̂‖²/‖K‖², the kernel
      rescaled to RMS ``scale`` = 0.002 (see :data:`GD_DEFAULTS`). Reaches the SVD optimum within 2%
      in a few hundred steps.
    * ``optimizer="sgd"``: the thesis's reference fit, lr 0.01 on the *mean* squared error of the
      raw kernel. Its gradients are tiny, so it barely leaves the random start.

    ``lr``, ``loss`` (``"relative"`` or ``"mse"``) and ``scale`` (a number, or None for the raw
    kernel) override the optimizer's defaults. The start: P and D entries N(0, σ²) with
    σ = (rms/√k)^½, so that K̂ starts on the scale of K.

    ``threads``: torch's intra-op threads while a step computes (restored before each yield). One
    step is small work, and on a busy 2-core machine a second thread mostly waits: one thread was
    5–40× faster there (64…512 channels). None leaves torch's setting alone.

    Yields ``steps + 1`` :class:`GDStep` records: the state before each update, then the final state.
    ``loss`` is the optimized quantity, ``relative_error`` is ‖K − K̂‖/‖K‖. The generator's return
    value (``StopIteration.value``) is the final :class:`Fit`; closing it early (a stop button) is
    fine: ``record.snapshot()`` gives the fit reached so far.
    """
    _check_kernel(kernel)
    _check_axis(axis)
    k, clamped = clamp_rank(kernel.shape, rank, axis)
    lr, loss_name, scale = _gd_options(optimizer, lr, loss, scale, steps)
    target = kernel.detach()
    g = _GDProblem.of(target, axis, k, scale, loss_name, seed)
    opt = torch.optim.Adam([g.a, g.b], lr=lr) if optimizer == "adam" else torch.optim.SGD([g.a, g.b], lr=lr)
    root = math.sqrt(g.c)

    def snapshot(method: str = "gd") -> Fit:
        with torch.no_grad():
            p, dw = _factors(g.a.detach() * root, g.b.detach() * root, axis, target.shape[2])
            kh = ehp_kernel(p, dw, axis)
        return Fit(p, dw, kh, relative_error(target, kh), k, clamped, axis, rank, method)

    t0 = time.perf_counter()
    for step in range(steps + 1):
        if step == steps:  # the final state, measured exactly
            fit = snapshot()
            yield GDStep(step, fit.relative_error**2 * g.norm2 / g.c**2 * g.unit if g.norm2 > 0 else 0.0,
                         fit.relative_error, time.perf_counter() - t0, snapshot)
            return fit
        with _threads(threads):
            current = g.loss_backward(opt)
            if not math.isfinite(current):
                raise FalconError(f"gradient descent diverged at step {step}; lower the learning rate (now {lr:g})")
        sq = max(current / g.unit, 0.0)  # ‖W − Ŵ‖² (rounding can make it a hair negative near 0)
        rel = math.sqrt(sq / g.w2) if g.w2 > 0 else 0.0
        yield GDStep(step, current, rel, time.perf_counter() - t0, snapshot)
        with _threads(threads):
            opt.step()


@dataclass
class _GDProblem:
    """:func:`gd_fit`'s problem: the channel matrices W of K/c (a fit (a, b) of K/c is the fit (√c·a, √c·b) of K)
    and the factors A, B being fitted, from a seeded random start."""

    work: torch.Tensor  # (C, A, D²)
    c: float
    norm2: float  # ‖K‖²
    w2: float  # ‖W‖² = ‖K‖² / c²
    unit: float  # the loss's unit: 1/‖W‖² (relative) or 1/numel (mse)
    a: torch.Tensor
    b: torch.Tensor

    @classmethod
    def of(cls, target: torch.Tensor, axis: Axis, k: int, scale: float | None, loss_name: str,
           seed: int) -> "_GDProblem":
        norm2 = target.double().pow(2).sum().item()
        rms = math.sqrt(norm2 / target.numel())
        c = rms / scale if (scale is not None and rms > 0) else 1.0
        work = (channel_matrices(target, axis) / c).contiguous()
        w2 = norm2 / c**2
        channels, width, q = work.shape
        unit = (1.0 / w2 if w2 > 0 else 1.0) if loss_name == "relative" else 1.0 / target.numel()
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        sigma = math.sqrt((rms / c if rms > 0 else 1.0) / math.sqrt(k))
        a = (torch.randn((channels, width, k), generator=gen, dtype=work.dtype) * sigma).to(work.device)
        b = (torch.randn((channels, q, k), generator=gen, dtype=work.dtype) * sigma).to(work.device)
        return cls(work, c, norm2, w2, unit, a.requires_grad_(), b.requires_grad_())

    def loss_backward(self, opt: torch.optim.Optimizer) -> float:
        """The loss ‖W − A Bᵀ‖² (summed over channels, times ``unit``) and its gradients, without forming the
        residual: ‖W‖² − 2 Σ⟨W B, A⟩ + Σ ⟨AᵀA, BᵀB⟩ (two passes over W per step instead of eight). A value that
        is not finite is returned before any gradient."""
        a, b = self.a, self.b
        cross = (a * torch.bmm(self.work, b)).sum()
        gram = (torch.bmm(a.transpose(1, 2), a) * torch.bmm(b.transpose(1, 2), b)).sum()
        value = (self.w2 - 2 * cross + gram) * self.unit
        current = value.item()
        if math.isfinite(current):
            opt.zero_grad(set_to_none=True)
            value.backward()
        return current


@dataclass
class GDResult:
    fit: Fit
    history: list[GDStep]
    seconds: float

    @property
    def steps(self) -> int:
        return self.history[-1].step if self.history else 0


def run_gd(kernel: torch.Tensor, rank: int, axis: Axis, steps: int = GD_STEPS, lr: float | None = None,
           optimizer: str = "adam", seed: int = 0, loss: str | None = None, scale: float | None | str = "default",
           threads: int | None = FIT_THREADS, callback: Callable[[GDStep], bool | None] | None = None) -> GDResult:
    """Run :func:`gd_fit` to the end (or until ``callback(record)`` returns True) and keep every record."""
    history: list[GDStep] = []
    t0 = time.perf_counter()
    gen = gd_fit(kernel, rank, axis, steps, lr, optimizer, seed, loss, scale, threads)
    fit = None
    try:
        while True:
            record = next(gen)
            history.append(record)
            if callback is not None and callback(record):
                fit = record.snapshot()
                gen.close()
                break
    except StopIteration as stop:
        fit = stop.value
    return GDResult(fit, history, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# from and into the blocks
def block_factors(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor, Axis]:
    """(P, D, axis) of a FalconConv or DSConv block, stacked over its branches."""
    from falcon.fits import fitter_of

    try:
        axis: Axis | None = getattr(fitter_of(getattr(block, "conv_type", "")), "axis", None)
    except FalconError:
        axis = None
    if axis is None or not hasattr(block, "branches"):
        raise FalconError(f"{type(block).__name__} is not a block of a fittable conv type (an EHP of the kernel)")
    p = torch.stack([b.pointwise.weight[:, :, 0, 0] for b in block.branches])
    dw = torch.stack([b.depthwise.weight[:, 0] for b in block.branches])
    return p, dw, axis


def block_kernel(block: nn.Module) -> torch.Tensor:
    """The standard-conv kernel that a bare FalconConv/DSConv block computes (Theorems 1 and 2)."""
    p, dw, axis = block_factors(block)
    return ehp_kernel(p, dw, axis)


@torch.no_grad()
def load_fit_into(block: nn.Module, fit: Fit) -> nn.Module:
    """Copy a fit's factors into a FalconConv/DSConv block of at least ``fit.rank_used`` branches.

    Branches beyond the fit's rank are zeroed (they add nothing). The block then computes the
    standard conv with ``fit.kernel_hat``. DSConv with an inner BN/ReLU (the paper layout) is refused:
    the fit is exact only for the bare block.
    """
    _, _, axis = block_factors(block)
    if axis != fit.axis:
        raise FalconError(f"the fit is along the {fit.axis} channels but {type(block).__name__} needs {axis}")
    if any(not isinstance(getattr(b, "inner", nn.Identity()), nn.Identity) for b in block.branches):
        raise FalconError("a DSConv with BN and ReLU between its convs does not compute an EHP; use the bare block")
    if len(block.branches) < fit.rank_used:
        raise FalconError(f"the block has {len(block.branches)} branches, the fit needs {fit.rank_used}")
    for r, branch in enumerate(block.branches):
        pw, dwc = branch.pointwise.weight, branch.depthwise.weight
        if r < fit.rank_used:
            if pw.shape[:2] != fit.P.shape[1:] or dwc.shape[0] != fit.D.shape[1] or dwc.shape[2:] != fit.D.shape[2:]:
                raise FalconError(f"fit of shape P{tuple(fit.P.shape[1:])}, D{tuple(fit.D.shape[1:])} does not "
                                  f"match the block's {tuple(pw.shape[:2])}, {tuple(dwc.shape)}")
            pw.copy_(fit.P[r][:, :, None, None])
            dwc.copy_(fit.D[r][:, None])
        else:
            pw.zero_()
            dwc.zero_()
    return block


def fit_kernel(kernel: torch.Tensor, conv_type: str, rank: int, method: str = "svd", **gd_kwargs) -> Fit:
    """Fit ``kernel`` with ``conv_type`` (falcon or dsconv) by ``svd``, ``gd`` or ``random`` (no fit: the factors of
    a freshly initialized block, seeded by ``seed``); :func:`falcon.fits.fit_kernel` for every fittable type."""
    from falcon.fits import fit_kernel as fit_any

    conv_type_axis(conv_type)  # an EHP type, or the one-line error
    return fit_any(kernel, conv_type, rank, method, **gd_kwargs)


def fit_module(conv: nn.Conv2d, conv_type: str, rank: int, method: str = "svd", spec=None,
               **gd_kwargs) -> tuple[nn.Module, Fit]:
    """A bare FalconConv/DSConv block that stands in for ``conv``, initialized from the fit, with the conv's bias on
    the depthwise conv of the first falcon branch or the pointwise conv of the first dsconv branch
    (:func:`falcon.fits.fit_module`, for every fittable type)."""
    from falcon.fits import fit_module as fit_any

    return fit_any(conv, conv_type, rank, method, spec, **gd_kwargs)


def attach_bias(block: nn.Module, bias: torch.Tensor) -> None:
    """Give a FalconConv/DSConv block the replaced conv's bias (on a conv that ends at the N outputs)."""
    _, _, axis = block_factors(block)
    target = block.branches[0].depthwise if axis == "output" else block.branches[0].pointwise
    target.bias = nn.Parameter(bias.detach().clone().to(target.weight))
