"""Mahalanobis distances of many points to one distribution, one pass over X.

With the covariance factored once, cov = L L^T (or the precision VI = L L^T),

    d^2 = (x - mu)^T cov^-1 (x - mu) = |L^-1 (x - mu)|^2      (cov, cholesky)
    d^2 = (x - mu)^T VI (x - mu)     = |L^T (x - mu)|^2       (VI)

Blocks of BLOCK rows are spread over the OpenMP threads; within a block the
C loop (src/fl_mahal_tpl.h) solves (or multiplies by) the triangular factor
for 8 or 16 rows at once, one row per vector lane (in registers for d <= 16,
else 4 such groups at a time in a per-thread d x lanes scratch).  X is read once; no explicit inverse and no n x d temporary.  Every
row's arithmetic is fixed, so results do not depend on the thread count.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid

from fastlin._blas cimport gemm_atb

cdef extern from "fl_mahal.h" nogil:
    void fl_maha_rows_d(const double *X, Py_ssize_t m, Py_ssize_t d, const double *mu,
                        const double *P, int solve, int squared, double *out, double *zs)
    void fl_maha_rows_f(const float *X, Py_ssize_t m, Py_ssize_t d, const float *mu,
                        const float *P, int solve, int squared, float *out, float *zs)
    void fl_maha_prep_d(const double *L, const double *mu, Py_ssize_t d, int solve, double *P)
    void fl_maha_prep_f(const float *L, const float *mu, Py_ssize_t d, int solve, float *P)
    Py_ssize_t fl_maha_prep_size_d(Py_ssize_t d)
    Py_ssize_t fl_maha_prep_size_f(Py_ssize_t d)
    void fl_maha_bwd_rows_d(const double *X, Py_ssize_t m, Py_ssize_t d, const double *mu,
                            const double *L, const double *g, int squared, int chol,
                            double *gX, double *gm, double *zs, double *ws, double *acc,
                            double *wout, double *zout)
    void fl_maha_bwd_rows_f(const float *X, Py_ssize_t m, Py_ssize_t d, const float *mu,
                            const float *L, const float *g, int squared, int chol,
                            float *gX, double *gm, float *zs, float *ws, float *acc,
                            float *wout, float *zout)
    Py_ssize_t fl_maha_scratch_d(Py_ssize_t d)
    Py_ssize_t fl_maha_scratch_f(Py_ssize_t d)

DEF BLOCK = 256


def scratch_len(Py_ssize_t d, bint is_double):
    """Elements of per-thread scratch that maha needs for points of dimension d."""
    return fl_maha_scratch_d(d) if is_double else fl_maha_scratch_f(d)


def maha(const floating[:, ::1] X, const floating[::1] mu, const floating[:, ::1] L,
         bint solve, bint squared, floating[::1] out, floating[:, ::1] scratch,
         int n_threads):
    """scratch: (n_threads, scratch_len(d, floating is double)).  The matrix
    is first put in the kernel's form (fl_maha_prep: reciprocal diagonal,
    scaled / padded copy), once per call."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1]
    cdef Py_ssize_t nb = (n + BLOCK - 1) // BLOCK
    cdef Py_ssize_t b, i0, m
    cdef floating[::1] P
    import numpy as np
    if floating is double:
        P = np.empty(fl_maha_prep_size_d(d), dtype=np.float64)
        fl_maha_prep_d(&L[0, 0], &mu[0], d, solve, &P[0])
    else:
        P = np.empty(fl_maha_prep_size_f(d), dtype=np.float32)
        fl_maha_prep_f(&L[0, 0], &mu[0], d, solve, &P[0])
    for b in prange(nb, nogil=True, schedule='static', num_threads=n_threads):
        i0 = b * BLOCK
        m = min(BLOCK, n - i0)
        if floating is double:
            fl_maha_rows_d(&X[i0, 0], m, d, &mu[0], &P[0], solve, squared, &out[i0],
                           &scratch[threadid(), 0])
        else:
            fl_maha_rows_f(&X[i0, 0], m, d, &mu[0], &P[0], solve, squared, &out[i0],
                           &scratch[threadid(), 0])


def maha_bwd(const floating[:, ::1] X, const floating[::1] mu, const floating[:, ::1] L,
             const floating[::1] g, bint squared, bint chol, floating[:, ::1] gX,
             double[:, :, ::1] gm, floating[:, ::1] zs, floating[:, ::1] ws,
             floating[:, ::1] acc, Py_ssize_t bs, int n_threads,
             floating[:, ::1] W=None, floating[:, ::1] Z=None):
    """Backward for cov / cholesky.  gm: (blocks, d, d), one partial per block
    of bs rows (summed by the caller in block order; bs depends on n and d
    only, never on the thread count); zs, ws: (n_threads, 16 d), acc:
    (n_threads, 16 d d) scratch."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1]
    cdef Py_ssize_t nb = (n + bs - 1) // bs
    cdef Py_ssize_t b, i0, m, tid
    cdef bint rows_out = W is not None
    cdef floating *pw = &W[0, 0] if rows_out else NULL
    cdef floating *pz = &Z[0, 0] if Z is not None else NULL
    cdef double *pgm
    for b in prange(nb, nogil=True, schedule='static', num_threads=n_threads):
        i0 = b * bs
        m = min(bs, n - i0)
        tid = threadid()
        pgm = NULL if rows_out else &gm[b, 0, 0]
        if floating is double:
            fl_maha_bwd_rows_d(&X[i0, 0], m, d, &mu[0], &L[0, 0], &g[i0], squared, chol,
                               &gX[i0, 0], pgm, &zs[tid, 0], &ws[tid, 0], &acc[tid, 0],
                               (pw + i0 * d) if rows_out else NULL,
                               (pz + i0 * d) if pz != NULL else NULL)
        else:
            fl_maha_bwd_rows_f(&X[i0, 0], m, d, &mu[0], &L[0, 0], &g[i0], squared, chol,
                               &gX[i0, 0], pgm, &zs[tid, 0], &ws[tid, 0], &acc[tid, 0],
                               (pw + i0 * d) if rows_out else NULL,
                               (pz + i0 * d) if pz != NULL else NULL)


def gram_blocks(const floating[:, ::1] P, const floating[:, ::1] R, double[:, :, ::1] out,
                Py_ssize_t bs, int n_threads):
    """out[b] = P[b*bs:(b+1)*bs]^T @ R[same rows] (d x d per block of bs rows),
    one single-threaded BLAS call per block on the OpenMP threads; the caller
    adds the blocks in order (so the sum does not depend on the threads)."""
    cdef Py_ssize_t n = P.shape[0], d = P.shape[1]
    cdef Py_ssize_t nb = out.shape[0], b, i0, m, i, j
    cdef floating[:, :, ::1] tmp
    if floating is double:
        tmp = out
    else:
        import numpy as np
        tmp = np.empty((nb, d, d), dtype=np.float32)
    for b in prange(nb, nogil=True, schedule='static', num_threads=n_threads):
        i0 = b * bs
        m = min(bs, n - i0)
        gemm_atb(<int>d, <int>d, <int>m, <floating>1.0, &P[i0, 0], <int>d, &R[i0, 0], <int>d,
                 <floating>0.0, &tmp[b, 0, 0], <int>d)
    if floating is not double:
        for b in range(nb):
            for i in range(d):
                for j in range(d):
                    out[b, i, j] = tmp[b, i, j]
