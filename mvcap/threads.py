"""Torch's intra-op thread count for a block of code.

The fits' tensors are small: one thread is about as fast as many and never spin-waits when
the cores are shared. numba's OpenMP layer (the CPU renderer) resets the process-wide
OpenMP setting torch reads, so fits re-assert the count around each solve.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch intra-op threads (0: leave as is); restored afterwards."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
