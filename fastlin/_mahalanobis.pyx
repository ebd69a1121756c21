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
from libc.float cimport DBL_MAX
from libc.math cimport fabs, fmax, sqrt
from cython.parallel cimport prange, threadid

from fastlin._blas cimport fl_gemm_wanted, gemm_atb

import numpy as np



def _use_own_gemm(bint on):
    """Testing hook, as fastlin._distance._use_own_gemm, for this module's
    GEMM calls (the d > 32 backward).  Returns the previous setting."""
    global fl_gemm_wanted
    cdef bint old = fl_gemm_wanted
    fl_gemm_wanted = on
    return old

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
                            double *gX, double *gm, double *gmv, double *gsc,
                            double *zs, double *ws, double *acc,
                            double *wout, double *zout)
    void fl_maha_bwd_rows_f(const float *X, Py_ssize_t m, Py_ssize_t d, const float *mu,
                            const float *L, const float *g, int squared, int chol,
                            float *gX, double *gm, double *gmv, double *gsc,
                            float *zs, float *ws, float *acc,
                            float *wout, float *zout)
    Py_ssize_t fl_maha_scratch_d(Py_ssize_t d)
    Py_ssize_t fl_maha_scratch_f(Py_ssize_t d)

# rows of X per work item of maha
cdef enum:
    BLOCK = 256
    SMALL_FACTOR_D_C = 32


def scratch_len(Py_ssize_t d, bint is_double):
    """Elements of per-thread scratch that maha needs for points of dimension d."""
    return fl_maha_scratch_d(d) if is_double else fl_maha_scratch_f(d)


# The largest d that small_factor takes: its O(d^3) loops stay within a few
# microseconds there, below what LAPACK's calls cost from Python.
SMALL_FACTOR_D = SMALL_FACTOR_D_C


cdef int _small_factor(const double[:, ::1] M, double[:, ::1] L, double sym_tol,
                       bint want_t, double *t) noexcept nogil:
    cdef Py_ssize_t d = M.shape[0], i, j, k
    cdef double a[SMALL_FACTOR_D_C][SMALL_FACTOR_D_C]
    cdef double x[SMALL_FACTOR_D_C]
    cdef double rs[SMALL_FACTOR_D_C]
    cdef double v, s, scale = 0.0, asym = 0.0, vif = 0.0
    for i in range(d):
        for j in range(d):
            v = M[i, j]
            if not (fabs(v) <= DBL_MAX):
                return 1
            scale = fmax(scale, fabs(v))
            asym = fmax(asym, fabs(v - M[j, i]))
    if asym > sym_tol * scale:
        return 2
    for i in range(d):
        for j in range(i + 1):
            a[i][j] = (M[i, j] + M[j, i]) * 0.5
    for j in range(d):
        s = a[j][j]
        for k in range(j):
            s = s - L[j, k] * L[j, k]
        if not (s > 0.0):
            return 3
        L[j, j] = sqrt(s)
        for i in range(j + 1, d):
            s = a[i][j]
            for k in range(j):
                s = s - L[i, k] * L[j, k]
            L[i, j] = s / L[j, j]
        for i in range(j):
            L[i, j] = 0.0
    t[0] = 1.0
    if not want_t:
        return 0
    for i in range(d):
        rs[i] = 1.0 / sqrt(a[i][i])
    # column j of LR^-1 (LR: the rows of L scaled by rs) solves LR x = e_j;
    # (R^-1)_jj is its squared norm.  A pivot near underflow overflows: inf
    for j in range(d):
        x[j] = 1.0 / (L[j, j] * rs[j])
        vif = vif + x[j] * x[j]
        for i in range(j + 1, d):
            s = 0.0
            for k in range(j, i):
                s = s + L[i, k] * rs[i] * x[k]
            x[i] = -s / (L[i, i] * rs[i])
            vif = vif + x[i] * x[i]
    t[0] = 1.0 / vif if vif == vif else 0.0
    return 0


def small_factor(const double[:, ::1] M, double[:, ::1] L, double sym_tol, bint want_t):
    """Check, average and factor a small symmetric matrix in one call, for
    tiny calls whose Python and LAPACK overhead would outweigh the kernel.

    M (d, d), d <= SMALL_FACTOR_D: finite and symmetric within ``sym_tol``
    of its largest entry, is averaged with its transpose and factored
    (unblocked Cholesky into L, (d, d), its upper triangle zeroed).  With
    want_t, also ``t = 1 / trace(R^-1)`` of the correlation matrix R of
    L L^T (the singularity measure of _mahalanobis_api._refuse_singular_cov)
    by forward substitution.

    Returns (status, t): status 0 ok, 1 not finite, 2 not symmetric,
    3 Cholesky failed; anything but 0 sends the caller to the general path,
    which raises the detailed message (or factors a semidefinite VI)."""
    cdef Py_ssize_t d = M.shape[0]
    cdef double t = 0.0
    cdef int status
    if d > SMALL_FACTOR_D_C or M.shape[1] != d or L.shape[0] != d or L.shape[1] != d:
        raise ValueError(f"small_factor takes square matrices of size at most "
                         f"{SMALL_FACTOR_D}, got {M.shape[0]}x{M.shape[1]}")
    with nogil:
        status = _small_factor(M, L, sym_tol, want_t, &t)
    return status, t


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
    if floating is double:
        P = np.empty(fl_maha_prep_size_d(d), dtype=np.float64)
        fl_maha_prep_d(&L[0, 0], &mu[0], d, solve, &P[0])
    else:
        P = np.empty(fl_maha_prep_size_f(d), dtype=np.float32)
        fl_maha_prep_f(&L[0, 0], &mu[0], d, solve, &P[0])
    if n_threads <= 1:
        # no parallel region to open for a call that one thread does
        with nogil:
            for b in range(nb):
                i0 = b * BLOCK
                m = min(BLOCK, n - i0)
                if floating is double:
                    fl_maha_rows_d(&X[i0, 0], m, d, &mu[0], &P[0], solve, squared, &out[i0],
                                   &scratch[0, 0])
                else:
                    fl_maha_rows_f(&X[i0, 0], m, d, &mu[0], &P[0], solve, squared, &out[i0],
                                   &scratch[0, 0])
        return
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
             double[:, :, ::1] gm, double[:, ::1] gmv, double[:, ::1] gsc,
             floating[:, ::1] zs, floating[:, ::1] ws,
             floating[:, ::1] acc, Py_ssize_t bs, int n_threads,
             floating[:, :, ::1] parts=None, floating[:, ::1] wscr=None,
             floating[:, ::1] zscr=None):
    """Backward for cov / cholesky, per block of bs rows (bs depends on n and
    d only, never on the thread count); zs: (n_threads, 17 d), ws:
    (n_threads, 16 d), acc:
    (n_threads, 16 d d), gsc: (n_threads, 16 d) (double) scratch; gmv
    (blocks, d): each block's sum of its rows of gX, in double (gmean = minus
    their sum in block order).  The small-d partials in gm hold the lower
    triangle only (k <= j).

    Small d (parts None): the d x d sum is accumulated in the pass, one
    partial per block in gm (blocks, d, d).  Large d: the block's rows of w
    (and z, cholesky) go to per-thread scratch wscr / zscr (n_threads,
    bs d) and one single-threaded GEMM forms parts[b] = gX_b^T R_b with R = w
    (cov) or z (cholesky), while the rows are in cache: no (n, d) array of
    them.  The caller sums the partials in block order."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1]
    cdef Py_ssize_t nb = (n + bs - 1) // bs
    cdef Py_ssize_t b, i0, m, tid
    cdef bint rows_out = parts is not None
    cdef floating *pw
    cdef floating *pz
    cdef floating *pr
    cdef double *pgm
    for b in prange(nb, nogil=True, schedule='static', num_threads=n_threads):
        i0 = b * bs
        m = min(bs, n - i0)
        tid = threadid()
        pgm = NULL if rows_out else &gm[b, 0, 0]
        pw = &wscr[tid, 0] if rows_out else NULL
        pz = &zscr[tid, 0] if (rows_out and chol) else NULL
        if floating is double:
            fl_maha_bwd_rows_d(&X[i0, 0], m, d, &mu[0], &L[0, 0], &g[i0], squared, chol,
                               &gX[i0, 0], pgm, &gmv[b, 0], &gsc[tid, 0], &zs[tid, 0],
                               &ws[tid, 0], &acc[tid, 0],
                               pw, pz)
        else:
            fl_maha_bwd_rows_f(&X[i0, 0], m, d, &mu[0], &L[0, 0], &g[i0], squared, chol,
                               &gX[i0, 0], pgm, &gmv[b, 0], &gsc[tid, 0], &zs[tid, 0],
                               &ws[tid, 0], &acc[tid, 0],
                               pw, pz)
        if rows_out:
            pr = pz if chol else pw
            gemm_atb(<int>d, <int>d, <int>m, <floating>1.0, &gX[i0, 0], <int>d, pr, <int>d,
                     <floating>0.0, &parts[b, 0, 0], <int>d)
