"""Row-wise work on every core BLAS would use: the rows split among threads, one BLAS thread each.

A matrix product on all cores leaves the numpy passes around it (casts, norms, the selection of
the nearest words) to one core; splitting the rows instead keeps every core busy for the whole
of the work (1.5 times the histograms' pace on 2 cores, docs/performance.md). A function given
to :func:`by_rows` must give each row a result that does not depend on the rows beside it.

:func:`one_blas_thread` is also what keeps a product's last bits the same from one call to the
next: BLAS splits a product among its threads differently with their number.
"""

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

#: Fewest rows worth a thread of their own: fewer run in the calling thread, on one BLAS thread.
MIN_ROWS = 512

# a limit changes the whole process's BLAS: one at a time, so that one call never restores the
# limit another call has set; the threads that run under a limit are marked, so that what they
# call runs under it as it is
_lock = threading.Lock()
_local = threading.local()
_controller = []


@contextlib.contextmanager
def _limited():
    """BLAS on one thread, the lock held; yields the number of threads it had before."""
    with _lock:
        if not _controller:  # made at first use, once numpy's BLAS is loaded (making one costs
            _controller.append(ThreadpoolController())  # 0.5 ms, a limit 0.03 ms)
        with _controller[0].limit(limits=1, user_api="blas") as limits:
            yield limits.get_original_num_threads().get("blas") or 1


@contextlib.contextmanager
def _marked():
    """This thread marked as under a limit for the work inside."""
    _local.single = True
    try:
        yield
    finally:
        _local.single = False


@contextlib.contextmanager
def one_blas_thread():
    """The work inside on one BLAS thread; within :func:`by_rows` and nested calls, as it is."""
    if getattr(_local, "single", False):
        yield
        return
    with _limited(), _marked():
        yield


def _single(fn):
    def run(part):
        with _marked():
            return fn(part)

    return run


def by_rows(fn, x, min_rows=MIN_ROWS):
    """``fn`` applied to contiguous row slices of ``x``, one per core BLAS would use, each with
    one BLAS thread; the results concatenated along the first axis, in order.

    Parameters
    ----------
    fn : callable(ndarray of shape (n_i, ...)) -> ndarray of shape (n_i, ...)
    x : ndarray of shape (n, ...)
    min_rows : int
        Fewest rows a thread is given; fewer run in the calling thread, on one BLAS thread.

    Returns
    -------
    ndarray of shape (n, ...)
    """
    if getattr(_local, "single", False):
        return fn(x)
    with _limited() as cores:
        parts = min(cores, len(x) // min_rows)
        if parts <= 1:
            return _single(fn)(x)
        with ThreadPoolExecutor(parts) as pool:
            return np.concatenate(list(pool.map(_single(fn), np.array_split(x, parts))))
