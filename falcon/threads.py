"""The thread count of the fits: one place that :mod:`falcon.ehp` and :mod:`falcon.fits` both read (apart from
both, so that neither imports the other for it)."""
from __future__ import annotations

from contextlib import contextmanager

import torch

#: torch threads while a kernel is fitted (None: leave torch's setting). One: on a shared 2-core machine an SVD
#: of a 128×2304 matrix took 0.07 s on one thread and 0.5–2.4 s on two.
FIT_THREADS: int | None = 1


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op thread count set to ``n`` inside the block (nothing when None)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)
