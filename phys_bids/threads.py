"""Thread counts, set for the duration of one step and restored after it.

The command line sets the process-wide defaults once (``--omp-nthreads``); a step
that needs its own count (a task, a fixture that must not depend on the machine)
uses :func:`thread_limit`, which restores what was there before, so that no layer
leaves global state behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["thread_limit", "ITK_THREADS"]

#: the variable ITK (ANTs: N4, registration, Atropos) reads when a filter is created
ITK_THREADS = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


@contextmanager
def thread_limit(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads and ``n`` ITK threads (``None`` or
    0: leave the counts as they are).

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with thread_limit(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if not n:
        yield
        return
    import torch

    old_torch, old_itk = torch.get_num_threads(), os.environ.get(ITK_THREADS)
    torch.set_num_threads(int(n))
    os.environ[ITK_THREADS] = str(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old_torch)
        if old_itk is None:
            os.environ.pop(ITK_THREADS, None)
        else:
            os.environ[ITK_THREADS] = old_itk
