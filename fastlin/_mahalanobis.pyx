"""Mahalanobis distances of many points to one distribution, one pass over X.

With the covariance factored once, cov = L L^T (or the precision VI = L L^T),

    d^2 = (x - mu)^T cov^-1 (x - mu) = |L^-1 (x - mu)|^2      (cov, cholesky)
    d^2 = (x - mu)^T VI (x - mu)     = |L^T (x - mu)|^2       (VI)

Per block of BLOCK rows: delta = X - mu into a per-thread scratch block (in
L1/L2), one BLAS triangular solve (trsm) or product (trmm) on the block, then
the row sums of squares in double.  X is read once; no explicit inverse and no
n x d temporary.  Blocks are fixed, each computed by one thread (BLAS held to
one thread), so results do not depend on the thread count.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport sqrt

from fastlin._blas cimport rows_solve_lower, rows_times_lower

DEF BLOCK = 256


def maha(const floating[:, ::1] X, const floating[::1] mu, const floating[:, ::1] L,
         bint solve, bint squared, floating[::1] out, floating[:, ::1] scratch,
         int n_threads):
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1]
    cdef Py_ssize_t nb = (n + BLOCK - 1) // BLOCK
    cdef Py_ssize_t b, i0, m, i, j
    cdef floating *z
    cdef double s
    for b in prange(nb, nogil=True, schedule='static', num_threads=n_threads):
        i0 = b * BLOCK
        m = min(BLOCK, n - i0)
        z = &scratch[threadid(), 0]
        for i in range(m):
            for j in range(d):
                z[i * d + j] = X[i0 + i, j] - mu[j]
        if solve:
            rows_solve_lower(<int>m, <int>d, &L[0, 0], z)
        else:
            rows_times_lower(<int>m, <int>d, &L[0, 0], z)
        for i in range(m):
            s = 0
            for j in range(d):
                s = s + <double>z[i * d + j] * <double>z[i * d + j]
            out[i0 + i] = <floating>(s if squared else sqrt(s))
