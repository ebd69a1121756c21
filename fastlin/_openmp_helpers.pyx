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
