"""Row-wise work on every core BLAS would use: the rows split among threads, one BLAS thread each.

A matrix product on all cores leaves the numpy passes around it (casts, norms, the selection of
the nearest words) to one core; splitting the rows instead keeps every core busy for the whole
of the work (1.5 times the histograms' pace on 2 cores, docs/performance.md). A function given
to :func:`by_rows` must give each row a result that does not depend on the rows beside it.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

#: Fewest rows worth a thread of their own: fewer run in the calling thread, as they are.
MIN_ROWS = 512

# threadpool_limits changes the whole process's BLAS: one split at a time, so that one
# call never restores the limit another call has set
_lock = threading.Lock()


def by_rows(fn, x, min_rows=MIN_ROWS):
    """``fn`` applied to contiguous row slices of ``x``, one per core BLAS would use, each with
    one BLAS thread; the results concatenated along the first axis, in order.

    Parameters
    ----------
    fn : callable(ndarray of shape (n_i, ...)) -> ndarray of shape (n_i, ...)
    x : ndarray of shape (n, ...)
    min_rows : int
        Fewest rows a thread is given.

    Returns
    -------
    ndarray of shape (n, ...)
    """
    if len(x) < 2 * min_rows:
        return fn(x)
    with _lock, threadpool_limits(1, user_api="blas") as limits:
        cores = limits.get_original_num_threads().get("blas") or 1
        parts = min(cores, len(x) // min_rows)
        if parts <= 1:
            return fn(x)
        with ThreadPoolExecutor(parts) as pool:
            return np.concatenate(list(pool.map(fn, np.array_split(x, parts))))
