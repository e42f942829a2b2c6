"""Temporarily set torch's intra-op thread count.

On a small machine shared with other jobs, several OpenMP threads per process wait on each other far more
than they compute (small flows and CNNs run many times slower with 2 threads than with 1 under load)."""
import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (unchanged when ``n`` is None), then restore."""
    if n is None:
        yield
        return
    if int(n) < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
