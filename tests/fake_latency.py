"""A deterministic stand-in for the latency plan's timer, importable by a worker process (tests/ is on its sys.path):
a module "takes" 0.1 ns per MAC of its convs and linears plus 20 µs per leaf module, so that a plan made in the
worker and one made here with the same timer are the same plan."""
from __future__ import annotations

import time

import torch
from torch import nn

NS_PER_MAC = 0.1
S_PER_MODULE = 2e-5


def fake_seconds(module: nn.Module, x: torch.Tensor) -> float:
    macs = [0]

    def hook(m, args, out):
        if isinstance(m, nn.Conv2d):
            macs[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs[0] += out.numel() * m.in_features

    leaves = [m for m in module.modules() if not any(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return macs[0] * NS_PER_MAC * 1e-9 + S_PER_MODULE * len(leaves)


def fake_timer(module: nn.Module, x: torch.Tensor, visits: int) -> list[float]:
    return [fake_seconds(module, x)] * visits


def slow_timer(module: nn.Module, x: torch.Tensor, visits: int) -> list[float]:
    """The fake figures, each after 50 ms: a plan that takes a while (for Stop)."""
    time.sleep(0.05 * visits)
    return fake_timer(module, x, visits)


def latency_plan_fake_timer(**kwargs):
    """:func:`falcon.latency_job.run_latency_plan` with :func:`fake_timer`."""
    from falcon.latency_job import run_latency_plan

    return run_latency_plan(**kwargs, timer=fake_timer)


def latency_plan_slow_timer(**kwargs):
    from falcon.latency_job import run_latency_plan

    return run_latency_plan(**kwargs, timer=slow_timer)


def latency_plan_too_fast(**kwargs):
    """The fake plan with a measured check that cannot be true: the planned model 50× faster than the original for
    a MAC ratio of a few, with a 40% spread."""
    out = latency_plan_fake_timer(**kwargs)
    m = out["plan"]["latency"]["measured"]
    m.update(planned_ms=m["original_ms"] / 50, planned_iqr_ms=0.4 * m["original_ms"] / 50, speedup=50.0)
    return out
