"""OpenMP facts for fastlin's thread policy (see _threads.py).

Compiled with the same flags as the kernels, so ``_OPENMP`` here tells
whether the kernels themselves are parallel.
"""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FL_HAVE_OPENMP 1
    static int fl_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define FL_HAVE_OPENMP 0
    static int fl_omp_max_threads(void) { return 1; }
    #endif
    """
    int FL_HAVE_OPENMP
    int fl_omp_max_threads() nogil


def openmp_enabled():
    """True when the extensions were built with OpenMP."""
    return bool(FL_HAVE_OPENMP)


def omp_max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return fl_omp_max_threads()


from cython.parallel cimport prange


def prefault(unsigned char[::1] buf, Py_ssize_t step, int n_threads):
    """Write a zero byte every `step` bytes of `buf` (and its first byte), the
    pages shared out statically over the threads.

    A fresh output is backed by no memory until it is first written; written
    for the first time inside a kernel's tiles, every page faults there, and
    two threads writing tiles of the same 2 MiB huge page wait on each other's
    fault.  Touching the pages first, in parallel and in address order, is
    measured 2-3x cheaper at 2 threads than the same faults taken from inside
    the tiles (a fresh 128 MiB output: 27 ms against 62 with 4 KiB pages, 12
    against 21 with huge pages, the tiles' streaming stores included).
    """
    cdef Py_ssize_t n = buf.shape[0], npage, p
    if n == 0:
        return
    npage = (n + step - 1) // step
    for p in prange(npage, nogil=True, schedule='static', num_threads=n_threads):
        buf[p * step] = 0
