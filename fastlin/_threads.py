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
import contextvars
import operator
import threading

from ._openmp_helpers import omp_max_threads, openmp_enabled

__all__ = ["get_num_threads", "set_num_threads", "threads"]

# Below this many elements a kernel runs on the calling thread only.
SMALL_WORK = 1 << 15

_lock = threading.Lock()
_num_threads = None  # None: OpenMP's default

# The count of the innermost `threads(n)` block of the calling thread (or
# asyncio task): a tuple (n,), n None for OpenMP's default; None outside any
# block.  Per context, not a global saved and restored: blocks of several
# Python threads overlap without nesting, and a global would give each
# thread the other's count and leave the last one set after both exited.
_block = contextvars.ContextVar("fastlin_threads_block", default=None)


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
        The count of the calling thread's innermost :func:`threads` block,
        else the value set with :func:`set_num_threads`, else OpenMP's
        default (which honours ``OMP_NUM_THREADS``); 1 if fastlin was built
        without OpenMP.
    """
    if not openmp_enabled():
        return 1
    block = _block.get()
    n = _num_threads if block is None else block[0]
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

    Parameters
    ----------
    n : int or None
        A positive thread count, or None for OpenMP's default.

    Notes
    -----
    The block's count applies to the fastlin calls of the Python thread (or
    asyncio task) that entered it, and takes precedence over
    :func:`set_num_threads` there; blocks in several threads at once each
    keep their own count and leave nothing behind.  Threads started inside
    the block do not inherit it (:func:`set_num_threads` is process-wide).

    Examples
    --------
    >>> import fastlin
    >>> with fastlin.threads(1):
    ...     y = fastlin.softmax([1.0, 2.0, 3.0])
    """
    n = None if n is None else _check_count(n)
    token = _block.set((n,))
    try:
        yield
    finally:
        _block.reset(token)


_blas_controller = None
_blas_lock = threading.Lock()
_blas_depth = 0         # fastlin regions inside blas_single_thread, all threads
_blas_limiter = None    # threadpoolctl's limiter of the outermost one


def _blas_take_control():
    """threadpoolctl lets only one Python thread (its "controlling thread")
    change a pthreads OpenBLAS, silently ignoring the others; whichever
    thread opens or closes fastlin's region must be able to."""
    try:
        from threadpoolctl import OpenBLASController
    except ImportError:  # pragma: no cover - older threadpoolctl
        return
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


@contextlib.contextmanager
def blas_single_thread():
    """Limit BLAS to one thread while a fastlin kernel may call it from its
    OpenMP threads.

    A kernel that calls BLAS from several OpenMP threads would otherwise
    oversubscribe the cores (measured 60-70x slower here), and a BLAS whose
    result depended on its own thread count would break the bitwise
    thread-count invariance.  threadpoolctl finds whichever BLAS scipy
    loaded; the controller is built once (scanning the loaded libraries is
    the slow part).

    The limit is process-wide (OpenBLAS has one pool), so regions entered
    from several Python threads at once share it: the first in sets it, the
    last out restores what was there before, under a lock.  Each saving and
    restoring on its own would let one thread lift the limit under another's
    kernel, and leave BLAS at one thread for good after overlapping calls.
    """
    global _blas_controller, _blas_depth, _blas_limiter
    with _blas_lock:
        try:
            if _blas_controller is None:
                from threadpoolctl import ThreadpoolController
                _blas_controller = ThreadpoolController()
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            _blas_controller = False
        if _blas_controller is not False:
            if _blas_depth == 0:
                _blas_take_control()
                _blas_limiter = _blas_controller.limit(limits=1, user_api="blas")
                _blas_take_control()
            _blas_depth += 1
    try:
        yield
    finally:
        if _blas_controller is not False:
            with _blas_lock:
                _blas_depth -= 1
                if _blas_depth == 0:
                    _blas_take_control()
                    _blas_limiter.restore_original_limits()
                    _blas_limiter = None
                    _blas_take_control()


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
