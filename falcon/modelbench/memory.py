"""The memory guard of a whole-model measurement: what it holds at its peak, from a forward pass on PyTorch's
``meta`` device (shapes only), before any weight is allocated."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from falcon.bench import fmt_bytes
from falcon.errors import FalconError
from falcon.modelbench.prepare import _chw, _chw_plain, _entry_of


@dataclass(frozen=True)
class MemoryPlan:
    input_bytes: int
    weight_bytes: int
    activation_bytes: int  # the largest (input + output) of one unit
    copies: int  # model instances held at once (per model, runtime and layout, plus the references)
    conv_weight_bytes: int = 0  # the 4-D (conv) weights among weight_bytes
    conv_copies: int = 0  # extra copies of the conv weights only (a second eager layout)

    @property
    def total_bytes(self) -> int:
        # the input per layout, every weight copy, the working set of a forward pass (an upper bound: 3×)
        return (3 * self.input_bytes + self.copies * self.weight_bytes + self.conv_copies * self.conv_weight_bytes
                + 3 * self.activation_bytes)


def plan_memory(model: Any, batch_size: int, input_size: Any = None, num_classes: int | None = None,
                copies: int = 1, conv_copies: int = 0) -> MemoryPlan:
    """What measuring ``model`` at ``batch_size`` holds at its peak, from a forward pass on ``meta``."""
    from falcon.checkpoints import LoadedModel
    from falcon.counting import shape_only
    from falcon.sizing import build_sized
    from falcon.surgery import FORWARD_ERRORS, does_not_run

    entry = _entry_of(model, input_size)
    if isinstance(model, nn.Module) and not isinstance(model, LoadedModel):
        chw = _chw_plain(input_size)
        meta = copy.deepcopy(model).to("meta")
    else:
        chw = _chw(entry, input_size)
        if isinstance(model, LoadedModel):
            num_classes = model.num_classes
        if chw[1] != chw[2]:
            raise FalconError(f"{entry.name} takes square inputs; got {chw[1]}×{chw[2]}")
        meta = build_sized(entry, num_classes, chw[1], "standard", device="meta")[0]
    weights = sum(p.numel() * p.element_size() for p in meta.parameters()) + \
        sum(b.numel() * b.element_size() for b in meta.buffers())
    peak = [0]

    def hook(module, inputs, output):
        ins = sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor))
        outs = output.numel() * output.element_size() if isinstance(output, torch.Tensor) else 0
        peak[0] = max(peak[0], ins + outs)

    handles = [m.register_forward_hook(hook) for m in meta.modules() if not any(m.children())]
    x = torch.empty((batch_size, *chw), device="meta")
    try:
        with torch.no_grad(), shape_only(meta):
            meta(x)
    except FORWARD_ERRORS as e:
        raise does_not_run(chw, e, entry.name) from None
    finally:
        for h in handles:
            h.remove()
    conv_weights = sum(p.numel() * p.element_size() for p in meta.parameters() if p.dim() == 4)
    return MemoryPlan(x.numel() * 4, weights, peak[0], copies, conv_weights, conv_copies)



def check_plan(plan: MemoryPlan, budget: int | None, source: str, model: Any, input_size: Any,
               batch_size: int) -> None:
    """Refuse, in one line, a plan over the budget (None: unknown, nothing refused)."""
    if budget is not None and plan.total_bytes > budget:
        raise FalconError(
            f"not enough memory: measuring {_entry_of(model, input_size).name} at batch {batch_size} needs about "
            f"{fmt_bytes(plan.total_bytes)} (largest activations {fmt_bytes(plan.activation_bytes)} per pass, weights "
            f"{fmt_bytes(plan.weight_bytes)} × {plan.copies} copies); the budget is {fmt_bytes(budget)} ({source}); "
            "use a smaller batch or input size")
