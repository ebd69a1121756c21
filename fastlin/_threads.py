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
import os
import threading

import numpy as np

from . import _memory
from ._openmp_helpers import omp_max_threads, openmp_enabled, prefault

__all__ = ["get_num_threads", "set_num_threads", "threads"]

# Below this many elements a kernel runs on the calling thread only: about
# 100 us of a row op's work on one core, what waking a passive team (_omp_env)
# costs back.  Measured here with 2 threads: softmax of 1024 x 256 float32
# 192 us at 1 thread, 142 at 2; normalize of 2048 x 256 104 / 99, of
# 1024 x 256 60 / 79.
SMALL_WORK = 1 << 19

_lock = threading.Lock()
_num_threads = None  # None: OpenMP's default

# The count of the innermost `threads(n)` block of the calling thread (or
# asyncio task): a tuple (n,), n None for OpenMP's default; None outside any
# block.  Per context, not a global saved and restored: blocks of several
# Python threads overlap without nesting, and a global would give each
# thread the other's count and leave the last one set after both exited.
_block = contextvars.ContextVar("fastlin_threads_block", default=None)


# Set once a kernel has run on more than one thread, and in a child forked
# after that.  GNU OpenMP keeps its pool's bookkeeping across fork() but not
# its threads: the child's first parallel region waits for workers that do
# not exist, for ever.  So a child forked after the parent's kernels ran
# threaded runs its kernels on one thread, as do its own children (PyTorch
# does the same with its thread pools).  Forked workers usually come many to
# a machine, where one thread each is also what avoids oversubscription.
_pool_used = False
_forked_after_pool = False


def _cpu_count():
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _check_count(n):
    """A thread count: positive as given; negative as joblib's n_jobs (-1 all
    CPUs, -2 all but one, ..., at least 1)."""
    if isinstance(n, bool):     # an integer to operator.index, never a count
        raise TypeError(f"n must be a nonzero integer, got bool {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(
            f"n must be a nonzero integer, got {type(n).__name__} {n!r}") from None
    if n == 0:
        raise ValueError("n must be a nonzero integer (a positive count, or -1 for "
                         "all CPUs, -2 for all but one, ...), got 0")
    if n < 0:
        n = max(_cpu_count() + 1 + n, 1)
    return n


def get_num_threads():
    """Number of threads fastlin's kernels use for large inputs.

    Returns
    -------
    int
        The count of the calling thread's innermost :func:`threads` block,
        else the value set with :func:`set_num_threads`, else OpenMP's
        default (which honours ``OMP_NUM_THREADS``); 1 if fastlin was built
        without OpenMP, and 1 in a process forked (``os.fork``,
        ``multiprocessing``'s "fork" method) after its parent ran a threaded
        fastlin kernel (OpenMP's thread pool does not survive a fork).
    """
    if not openmp_enabled() or _forked_after_pool:
        return 1
    block = _block.get()
    n = _num_threads if block is None else block[0]
    return omp_max_threads() if n is None else n


def set_num_threads(n):
    """Set the number of threads fastlin's kernels use.

    Parameters
    ----------
    n : int or None
        A positive thread count; a negative one counts as joblib's
        ``n_jobs`` does: -1 for all the CPUs this process may use, -2 for all
        but one, and so on (at least 1); None returns to OpenMP's default.
        0 is refused.

    Notes
    -----
    The setting is process-wide; inside a :func:`threads` block, the block's
    count takes precedence for that thread.  Results are bitwise identical for
    every thread count.  Without OpenMP the setting is accepted and has no
    effect.
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
        A thread count as for :func:`set_num_threads` (negative: joblib's
        convention), or None for OpenMP's default.

    Notes
    -----
    The block's count applies to the fastlin calls of the Python thread (or
    asyncio task) that entered it, and takes precedence over
    :func:`set_num_threads` there (a ``set_num_threads`` made inside the
    block shows after it); blocks in several threads at once each keep their
    own count and leave nothing behind.  It lives in a
    :class:`contextvars.ContextVar`: threads started inside the block with
    :class:`threading.Thread` or a thread pool do not inherit it, asyncio
    tasks and ``asyncio.to_thread`` (which copy the context) do.
    :func:`set_num_threads` is process-wide.  As with
    :func:`decimal.localcontext`, a block held open across a generator's
    ``yield`` is seen by the code that runs the generator, and stays set in
    the context that entered it if another thread finishes the generator.

    Examples
    --------
    >>> import fastlin
    >>> with fastlin.threads(1):
    ...     y = fastlin.softmax([1.0, 2.0, 3.0])
    """
    n = None if n is None else _check_count(n)
    previous = _block.get()
    token = _block.set((n,))
    try:
        yield
    finally:
        try:
            _block.reset(token)
        except ValueError:
            # exited in another context than it was entered in (a generator
            # holding the block, closed from another thread; an async
            # generator finalised by asyncio): put back what was there
            _block.set(previous)


_blas_lock = threading.Lock()
_blas_libs = None       # (shared, local) BLAS controllers, found once
_blas_depth = 0         # open regions with a shared limit, all threads together
_blas_saved = None      # the shared libraries' counts before the first region


def _find_blas():
    """The BLAS libraries threadpoolctl finds, split by the reach of their
    thread setting: a pthreads OpenBLAS (or BLIS, FlexiBLAS) has one pool for
    the process ("shared"); MKL (threadpoolctl sets it with
    MKL_Set_Num_Threads_Local) and an OpenMP-threaded OpenBLAS
    (omp_set_num_threads) take a count per calling thread ("local")."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return [], []
    libs = [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
    local = [lc for lc in libs
             if lc.internal_api == "mkl" or getattr(lc, "threading_layer", None) == "openmp"]
    return [_raw_controller(lc) for lc in libs if lc not in local], local


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


def _set_counts(libs, counts):
    for lc, n in zip(libs, counts):
        if n is not None:
            lc.set_num_threads(n)


class _RawOpenBLAS:
    """A pthreads OpenBLAS's own openblas_{get,set}_num_threads, called
    directly: threadpoolctl's set_num_threads keeps a controlling-thread
    record per call (about 10 us for a get, a set and a restore), more than a
    small kernel's work.  fastlin's own lock and region count (below) already
    serialise the changes."""

    def __init__(self, get, set_):
        self._get, self._set = get, set_

    def get_num_threads(self):
        return self._get()

    def set_num_threads(self, n):
        self._set(int(n))


def _raw_controller(lc):
    """_RawOpenBLAS for a threadpoolctl OpenBLAS controller whose pool is the
    process's (not OpenMP-threaded), else the controller itself."""
    dl = getattr(lc, "dynlib", None)
    if dl is None or getattr(lc, "internal_api", None) != "openblas":
        return lc
    for pre in ("", "scipy_"):
        for suf in ("", "64_", "_64"):
            get = getattr(dl, f"{pre}openblas_get_num_threads{suf}", None)
            set_ = getattr(dl, f"{pre}openblas_set_num_threads{suf}", None)
            if get is not None and set_ is not None:
                return _RawOpenBLAS(get, set_)
    return lc


def blas_single_thread():
    """Limit BLAS to one thread while a fastlin kernel may call it from its
    OpenMP threads.

    A kernel that calls BLAS from several OpenMP threads would otherwise
    oversubscribe the cores (measured 60-70x slower here), and a BLAS whose
    result depended on its own thread count would break the bitwise
    thread-count invariance.  threadpoolctl finds whichever BLAS scipy
    loaded, once (scanning the loaded libraries is the slow part).

    A BLAS with one pool for the process (pthreads OpenBLAS, as scipy's
    wheels ship) is limited for all threads at once, so regions entered from
    several Python threads share the limit: the first in sets it, the last
    out restores what was there before, under a lock -- each saving and
    restoring on its own would lift the limit under another thread's kernel,
    and leave BLAS at one thread for good after overlapping calls.  A BLAS
    whose count is per thread (MKL, an OpenMP-threaded OpenBLAS) is limited
    and restored in the calling thread, region by region.

    A class, not a generator-based context manager: a region costs about
    1 us then, next to a small kernel's few.
    """
    return _BlasOneThread()


class _BlasOneThread:
    __slots__ = ("mine",)

    def __enter__(self):
        global _blas_libs, _blas_depth, _blas_saved
        with _blas_lock:
            if _blas_libs is None:
                _blas_libs = _find_blas()
            shared, local = _blas_libs
            if shared:
                if _blas_depth == 0:
                    _take_control(shared)
                    _blas_saved = [lc.get_num_threads() for lc in shared]
                    _set_counts(shared, [1] * len(shared))
                    _take_control(shared)
                _blas_depth += 1
        if local:
            self.mine = [lc.get_num_threads() for lc in local]
            _set_counts(local, [1] * len(local))
        return self

    def __exit__(self, *exc):
        global _blas_depth, _blas_saved
        shared, local = _blas_libs
        if local:
            _set_counts(local, self.mine)
        if shared:
            with _blas_lock:
                _blas_depth -= 1
                if _blas_depth == 0:
                    _take_control(shared)
                    _set_counts(shared, _blas_saved)
                    _blas_saved = None
                    _take_control(shared)
        return False


def _take_control(shared):
    """threadpoolctl's controlling-thread gate, for the controllers that go
    through threadpoolctl (none when every shared BLAS is _RawOpenBLAS)."""
    if any(not isinstance(lc, _RawOpenBLAS) for lc in shared):
        _blas_take_control()


def _after_fork_in_child():
    """A fork while another thread was inside a region (or held the lock):
    the child has only the forking thread, so no region is open there; put
    the shared libraries back and start with a fresh lock.  After threaded
    kernels, the child's own run on one thread (see _pool_used)."""
    global _blas_lock, _blas_depth, _blas_saved, _forked_after_pool
    _forked_after_pool = _forked_after_pool or _pool_used
    _blas_lock = threading.Lock()
    if _blas_depth and _blas_saved is not None and _blas_libs is not None:
        try:
            _blas_take_control()
            _set_counts(_blas_libs[0], _blas_saved)
            _blas_take_control()
        except Exception:  # pragma: no cover - best effort in a fresh child
            pass
    _blas_depth = 0
    _blas_saved = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# Outputs at least this large are pre-faulted in parallel (see empty_output).
PREFAULT_BYTES = 1 << 22


def empty_output(shape, dtype, n_threads):
    """np.empty for a result, its pages faulted in on `n_threads` threads
    when it is large and new (a large result reuses a freed one's memory when
    it can: _memory.pyx).

    Only for outputs fastlin allocates itself: a caller's ``out=`` is usually
    a reused buffer whose pages are already there.
    """
    res, fresh = _memory.empty(shape, dtype)
    if fresh and res.nbytes >= PREFAULT_BYTES:
        prefault(res.reshape(-1).view(np.uint8), 4096, n_threads)
    return res


# A multiply-add of a distance tile or a triangular solve costs about
# 1/MACS_PER_ELEMENT of an element of a row op (an exp, a division, a few
# reads and writes): kernels counted in multiply-adds thread from
# SMALL_WORK * MACS_PER_ELEMENT of them.
MACS_PER_ELEMENT = 32


def _for_macs(macs):
    """Thread count for a kernel of `macs` multiply-adds."""
    return _for_work(macs // MACS_PER_ELEMENT)


def _for_work(size):
    """Thread count for a kernel touching `size` elements."""
    global _pool_used
    if size < SMALL_WORK:
        return 1
    n = get_num_threads()
    if n > 1 and not _pool_used:
        _pool_used = True
    return n
