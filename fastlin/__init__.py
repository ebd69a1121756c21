"""fastlin: fast, exact CPU kernels for ML building blocks, with backward passes.

Design
------
Every public function follows one path::

    public wrapper (_*_api.py)  ->  validation (_validation.py)
        ->  Cython kernel (_<op>.pyx, OpenMP over rows / column tiles)
            ->  C inner loops (src/fl_<op>*.h)

* SIMD has one seam (``_simd.py``): every kernel module is built once per
  level (avx512, avx2, baseline) into ``fastlin._<level>``, and the level is
  chosen once, at import -- the best the CPU runs, or ``FASTLIN_SIMD``.

* Wrappers promote dtypes, normalise axes and check ``out=``; they never
  loop over elements.  Kernels never validate.
* A reduction over any axis (or axes) of an N-d array is laid out as a
  C-ordered ``(outer, n, inner)`` block reduced over ``n``: adjacent axes cost
  a free reshape, others one transposing copy.
* Threads come from one policy (``_threads.py``).  Work is split into fixed
  items reduced in a fixed order, so results are bitwise identical for any
  thread count.  The GIL is released inside every kernel.
* Results and scratch of 256 KiB and up are carved from blocks that return
  to a bounded cache when the array is freed (``_memory.pyx``): a loop that
  drops each result pays no page faults for the next one.
* ``fastlin.reference`` holds a slow, obviously correct NumPy twin of every
  op and every backward; the tests judge the kernels against it and scipy.
"""
from . import _omp_env  # noqa: F401  (first: before any module that loads OpenMP)
from ._distance_api import (cdist, cdist_backward, pdist, pdist_backward,
                            squareform)
from ._mahalanobis_api import mahalanobis, mahalanobis_backward
from ._margin_api import max_margin_loss, max_margin_loss_backward
from ._memory import get_memory_cache, set_memory_cache
from ._normalize_api import normalize, normalize_backward
from ._pairwise_api import (cdist_logsumexp, cdist_logsumexp_backward, cdist_topk,
                            cdist_topk_backward)
from ._softmax_api import (log_softmax, log_softmax_backward, logsumexp,
                           logsumexp_backward, softmax, softmax_backward)
from ._threads import get_num_threads, set_num_threads, threads

__version__ = "0.1.0"

__all__ = [
    "normalize", "normalize_backward",
    "softmax", "log_softmax", "logsumexp",
    "softmax_backward", "log_softmax_backward", "logsumexp_backward",
    "cdist", "pdist", "squareform", "cdist_backward", "pdist_backward",
    "cdist_topk", "cdist_topk_backward", "cdist_logsumexp", "cdist_logsumexp_backward",
    "max_margin_loss", "max_margin_loss_backward",
    "mahalanobis", "mahalanobis_backward",
    "get_num_threads", "set_num_threads", "threads", "show_config",
    "set_memory_cache", "get_memory_cache",
    "__version__",
]


def show_config(file=None):
    """Print how fastlin was built and how it will run.

    Shows the version, whether OpenMP is on, the thread count kernels will
    use, the SIMD level that runs and its vector width (and, for each level,
    whether this machine can run it or why not), the compiler and its flags,
    and the numpy/scipy versions.
    """
    import platform
    import sys

    import numpy
    import scipy

    from . import _simd
    from ._openmp_helpers import openmp_enabled
    try:
        from . import _build_config as bc
    except ImportError:  # pragma: no cover - built by something other than setup.py
        bc = None

    def get(name):
        return getattr(bc, name, "unknown") if bc is not None else "unknown"

    own_gemm = _simd.kernels("_distance").own_gemm_enabled()
    vbytes = _simd.kernels("_distance").vector_bytes()
    how = f"forced by {_simd.ENV}" if _simd.FORCED else "the best this CPU runs"
    lines = [
        f"fastlin {__version__}",
        f"  python        : {sys.version.split()[0]} ({platform.machine()})",
        f"  numpy         : {numpy.__version__}",
        f"  scipy         : {scipy.__version__}",
        f"  openmp        : {'on' if openmp_enabled() else 'OFF (single-threaded build)'}",
        f"  threads       : {get_num_threads()} (OpenMP wait policy: {_omp_env.WAIT_POLICY})",
        f"  simd level    : {_simd.LEVEL} ({how}; {vbytes}-byte vectors)",
    ]
    for level in _simd.LEVELS:
        lines.append(f"    {level:<9}   : {_simd.WHY[level] or 'available'}")
    lines += [
        f"  tile GEMM     : {'fastlin ' + _simd.LEVEL + ' kernel (src/fl_gemm.h)' if own_gemm else 'scipy BLAS'}",
        f"  result cache  : {get_memory_cache()[0]} bytes (set_memory_cache)",
        f"  compiler      : {get('COMPILER')} ({get('COMPILER_COMMAND')})",
        f"  cflags        : {get('CFLAGS')}",
        f"  level flags   : {get('LEVEL_FLAGS')}",
    ]
    print("\n".join(lines), file=file)
