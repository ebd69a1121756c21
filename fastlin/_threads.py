"""fastlin's one thread policy.

Every kernel call asks :func:`_for_work` how many OpenMP threads to use:

* the count set by :func:`set_num_threads` / :func:`threads`, else
* OpenMP's default (``omp_get_max_threads()``, which honours
  ``OMP_NUM_THREADS``), and
* 1 for small problems, where starting a team costs more than it saves,
  and always 1 when the extensions were built without OpenMP.

Results never depend on the count: work is split into fixed items (rows or
column tiles) and each item is reduced by one thread in a fixed order.
"""
import contextlib
import operator
import threading

from ._openmp_helpers import omp_max_threads, openmp_enabled

__all__ = ["get_num_threads", "set_num_threads", "threads"]

# Below this many elements a kernel runs on the calling thread only.
SMALL_WORK = 1 << 15

_lock = threading.Lock()
_num_threads = None  # None: OpenMP's default


def _check_count(n):
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(
            f"n must be a positive integer, got {type(n).__name__} {n!r}") from None
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    return n


def get_num_threads():
    """Number of threads fastlin's kernels use for large inputs.

    Returns
    -------
    int
        The value set with :func:`set_num_threads`, else OpenMP's default
        (which honours ``OMP_NUM_THREADS``); 1 if fastlin was built without
        OpenMP.
    """
    if not openmp_enabled():
        return 1
    n = _num_threads
    return omp_max_threads() if n is None else n


def set_num_threads(n):
    """Set the number of threads fastlin's kernels use.

    Parameters
    ----------
    n : int or None
        A positive thread count, or None to return to OpenMP's default.

    Notes
    -----
    The setting is process-wide.  Results are bitwise identical for every
    thread count.  Without OpenMP the setting is accepted and has no effect.
    """
    global _num_threads
    with _lock:
        _num_threads = None if n is None else _check_count(n)


@contextlib.contextmanager
def threads(n):
    """Context manager: run fastlin's kernels with `n` threads inside the block.

    Examples
    --------
    >>> import fastlin
    >>> with fastlin.threads(1):
    ...     y = fastlin.softmax([1.0, 2.0, 3.0])
    """
    global _num_threads
    n = None if n is None else _check_count(n)
    with _lock:
        previous = _num_threads
        _num_threads = n
    try:
        yield
    finally:
        with _lock:
            _num_threads = previous


_blas_controller = None


@contextlib.contextmanager
def blas_single_thread():
    """Limit BLAS to one thread inside fastlin's own OpenMP regions.

    A kernel that calls BLAS from several OpenMP threads would otherwise
    oversubscribe the cores (measured 60-70x slower here), and a BLAS whose
    result depended on its own thread count would break the bitwise
    thread-count invariance.  threadpoolctl finds whichever BLAS scipy
    loaded; the controller is built once (scanning the loaded libraries is
    the slow part).
    """
    global _blas_controller
    try:
        if _blas_controller is None:
            from threadpoolctl import ThreadpoolController
            _blas_controller = ThreadpoolController()
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with _blas_controller.limit(limits=1, user_api="blas"):
        yield


# Outputs at least this large are pre-faulted in parallel (see empty_output).
PREFAULT_BYTES = 1 << 22


def empty_output(shape, dtype, n_threads):
    """np.empty for a result, its pages faulted in on `n_threads` threads
    when it is large and new (a large result reuses a freed one's memory when
    it can: _memory.pyx).

    Only for outputs fastlin allocates itself: a caller's ``out=`` is usually
    a reused buffer whose pages are already there.
    """
    import numpy as np

    from ._memory import empty
    from ._openmp_helpers import prefault
    res, fresh = empty(shape, dtype)
    if fresh and res.nbytes >= PREFAULT_BYTES:
        prefault(res.reshape(-1).view(np.uint8), 4096, n_threads)
    return res


def _for_work(size):
    """Thread count for a kernel touching `size` elements."""
    if size < SMALL_WORK:
        return 1
    return get_num_threads()
