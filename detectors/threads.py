"""How many threads a detector may start for one call.

ECOD (features) and Isolation Forest (rows) share their work among ``n_jobs`` threads; ``-1`` means one per
core, which is right for a scan scoring one chunk at a time. When the scan's task runner scores many slices
at once (Dask: one slice per worker thread), each slice's detectors starting one thread per core would run
cores x cores threads; the runner then scores each slice under :func:`thread_cap` of 1.

The cap is a context variable, so it holds for the thread that set it and the calls it makes, and never for
another worker thread of the same process. BLAS is left to the runner: Dask starts its worker processes
with ``OMP_NUM_THREADS=1`` and the like, and a process-wide BLAS limit set from one thread (threadpoolctl)
would be undone by another thread's exit while still in use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_CAP: ContextVar[int | None] = ContextVar("poisonguard_detector_threads", default=None)


@contextmanager
def thread_cap(threads: int | None) -> Iterator[None]:
    """Within the block, no detector call starts more than ``threads`` threads (``None``: no cap)."""
    if threads is not None and threads < 1:
        raise ValueError(f"a thread cap is at least 1, not {threads}")
    token = _CAP.set(threads)
    try:
        yield
    finally:
        _CAP.reset(token)


def worker_threads(n_jobs: int, tasks: int) -> int:
    """Threads for ``tasks`` independent pieces of work: ``n_jobs`` as scikit-learn reads it (-1: every
    core), never more than there are pieces, nor than the caller's :func:`thread_cap`."""
    wanted = (os.cpu_count() or 1) if n_jobs < 0 else n_jobs
    cap = _CAP.get()
    if cap is not None:
        wanted = min(wanted, cap)
    return max(1, min(wanted, tasks))
