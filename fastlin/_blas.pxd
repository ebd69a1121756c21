# floating-typed wrappers over scipy's BLAS (scipy.linalg.cython_blas): no
# new link dependency, and the row-major bookkeeping is done once, here.
#
# The three GEMM forms first try fastlin's own packed kernel (src/fl_gemm.h,
# AVX-512 or AVX2: on Sapphire Rapids 1.2-1.7x faster than scipy's OpenBLAS
# for the single-threaded tile products these wrappers serve); where it is
# not built (the baseline level, Windows: fl_gemm_ok() is 0), when
# the testing hook turns it off, or for a beta other than 0 and 1, they call
# scipy's BLAS.  Either way the result depends only on the shapes and the
# machine, never on the thread count.
#
# The prepacked forms (pack_panels, gemm_prepacked) exist only with
# fastlin's GEMM: callers take them only when fl_gemm_ok(), and without it
# they abort (src/fl_gemm.h).  gemm_packed_b checks for itself.
from cython cimport floating
from scipy.linalg.cython_blas cimport dgemm, sgemm

cdef extern from "fl_gemm.h" nogil:
    int fl_gemm_ok()
    int fl_gemm_wanted
    int fl_gemm_d(int ta, int tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha,
                  const double *A, size_t lda, const double *B, size_t ldb, double beta,
                  double *C, size_t ldc)
    int fl_gemm_f(int ta, int tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                  const float *A, size_t lda, const float *B, size_t ldb, float beta,
                  float *C, size_t ldc)
    int FL_GEMM_MR, FL_GEMM_NR_D, FL_GEMM_NR_F, FL_GEMM_KC
    void fl_gemm_pack_panels_d(int is_b, const double *X, size_t ldx, int tx, Py_ssize_t rows,
                               Py_ssize_t k, Py_ssize_t q0, Py_ssize_t q1, double *P)
    void fl_gemm_pack_panels_f(int is_b, const float *X, size_t ldx, int tx, Py_ssize_t rows,
                               Py_ssize_t k, Py_ssize_t q0, Py_ssize_t q1, float *P)
    int fl_gemm_pb_d(int ta, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha,
                     const double *A, size_t lda, const double *Bp, Py_ssize_t npad,
                     double beta, double *C, size_t ldc)
    int fl_gemm_pb_f(int ta, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                     const float *A, size_t lda, const float *Bp, Py_ssize_t npad,
                     float beta, float *C, size_t ldc)
    void fl_gemm_prepacked_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha,
                             const double *Ap, Py_ssize_t mpad, Py_ssize_t i0,
                             const double *Bp, Py_ssize_t npad, Py_ssize_t j0, double beta,
                             double *C, size_t ldc)
    void fl_gemm_prepacked_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                             const float *Ap, Py_ssize_t mpad, Py_ssize_t i0,
                             const float *Bp, Py_ssize_t npad, Py_ssize_t j0, float beta,
                             float *C, size_t ldc)


cdef inline bint _own_gemm(int ta, int tb, int m, int n, int k, floating alpha,
                           const floating *a, int lda, const floating *b, int ldb,
                           floating beta, floating *c, int ldc) noexcept nogil:
    """True when fastlin's kernel did the product (else the caller uses BLAS)."""
    if not fl_gemm_ok() or (beta != 0 and beta != 1):
        return False
    if floating is double:
        return fl_gemm_d(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == 0
    else:
        return fl_gemm_f(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == 0


cdef inline void gemm_abt(int m, int n, int k, floating alpha,
                          const floating *a, int lda, const floating *b, int ldb,
                          floating beta, floating *c, int ldc) noexcept nogil:
    """Row-major C (m x n, row stride ldc) = alpha * A B^T + beta * C, with A
    m x k (row stride lda) and B n x k (row stride ldb).

    In BLAS's column-major terms that is C^T = B A^T: B is read transposed,
    A as is, and the operand order swaps.
    """
    cdef char tb = b'T'
    cdef char na = b'N'
    if _own_gemm(0, 1, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        return
    if floating is double:
        dgemm(&tb, &na, &n, &m, &k, &alpha, <double *>b, &ldb, <double *>a, &lda,
              &beta, c, &ldc)
    else:
        sgemm(&tb, &na, &n, &m, &k, &alpha, <float *>b, &ldb, <float *>a, &lda,
              &beta, c, &ldc)

from scipy.linalg.cython_blas cimport dtrmm, dtrsm, strmm, strsm


cdef inline void rows_times_lower(int m, int d, const floating *L, floating *Z) noexcept nogil:
    """Row-major Z (m x d) := Z L, L lower triangular (d x d, row-major):
    every row z becomes L^T z.  Column-major: Z^T := U Z^T with U = L^T upper."""
    cdef char side = b'L', uplo = b'U', tr = b'N', diag = b'N'
    cdef floating one = 1
    if floating is double:
        dtrmm(&side, &uplo, &tr, &diag, &d, &m, &one, <double *>L, &d, Z, &d)
    else:
        strmm(&side, &uplo, &tr, &diag, &d, &m, &one, <float *>L, &d, Z, &d)


cdef inline void rows_solve_lower(int m, int d, const floating *L, floating *Z) noexcept nogil:
    """Row-major Z (m x d) := Z L^{-T}: every row z becomes L^{-1} z
    (column-major: solve L Z^T = Z^T with L = U^T)."""
    cdef char side = b'L', uplo = b'U', tr = b'T', diag = b'N'
    cdef floating one = 1
    if floating is double:
        dtrsm(&side, &uplo, &tr, &diag, &d, &m, &one, <double *>L, &d, Z, &d)
    else:
        strsm(&side, &uplo, &tr, &diag, &d, &m, &one, <float *>L, &d, Z, &d)


cdef inline void gemm_atb(int m, int n, int k, floating alpha,
                          const floating *a, int lda, const floating *b, int ldb,
                          floating beta, floating *c, int ldc) noexcept nogil:
    """Row-major C (m x n) = alpha * A^T B + beta * C with A k x m (row stride
    lda) and B k x n (row stride ldb).  Column-major: C^T = B^T A, i.e. B as
    is and A transposed."""
    cdef char nt = b'N'
    cdef char tr = b'T'
    if _own_gemm(1, 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        return
    if floating is double:
        dgemm(&nt, &tr, &n, &m, &k, &alpha, <double *>b, &ldb, <double *>a, &lda,
              &beta, c, &ldc)
    else:
        sgemm(&nt, &tr, &n, &m, &k, &alpha, <float *>b, &ldb, <float *>a, &lda,
              &beta, c, &ldc)


cdef inline void gemm_ab(int m, int n, int k, floating alpha,
                         const floating *a, int lda, const floating *b, int ldb,
                         floating beta, floating *c, int ldc) noexcept nogil:
    """Row-major C (m x n) = alpha * A B + beta * C with A m x k and B k x n
    (row strides lda, ldb).  Column-major: C^T = B^T A^T, both as stored."""
    cdef char nt = b'N'
    if _own_gemm(0, 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        return
    if floating is double:
        dgemm(&nt, &nt, &n, &m, &k, &alpha, <double *>b, &ldb, <double *>a, &lda,
              &beta, c, &ldc)
    else:
        sgemm(&nt, &nt, &n, &m, &k, &alpha, <float *>b, &ldb, <float *>a, &lda,
              &beta, c, &ldc)


cdef inline void pack_panels(bint is_b, const floating *X, Py_ssize_t ldx, bint tx,
                             Py_ssize_t rows, Py_ssize_t k, Py_ssize_t q0, Py_ssize_t q1,
                             floating *P) noexcept nogil:
    """Panels [q0, q1) of a prepacked operand (src/fl_gemm.h): op(A) (is_b
    False, MR-row panels) or op(B) (NR-column panels), tx: X read transposed.
    Only when fl_gemm_ok() (else it aborts)."""
    if floating is double:
        fl_gemm_pack_panels_d(is_b, X, ldx, tx, rows, k, q0, q1, P)
    else:
        fl_gemm_pack_panels_f(is_b, X, ldx, tx, rows, k, q0, q1, P)


cdef inline void gemm_prepacked(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                                const floating *Ap, Py_ssize_t mpad, Py_ssize_t i0,
                                const floating *Bp, Py_ssize_t npad, Py_ssize_t j0,
                                floating beta, floating *C, Py_ssize_t ldc) noexcept nogil:
    """Row-major C (m x n) = alpha op(A)[i0:] op(B)[:, j0:] + beta C (beta 0 or 1)
    from prepacked operands; i0 a multiple of FL_GEMM_MR, j0 of the panel width.
    Only when fl_gemm_ok() (else it aborts)."""
    if floating is double:
        fl_gemm_prepacked_d(m, n, k, alpha, Ap, mpad, i0, Bp, npad, j0, beta, C, ldc)
    else:
        fl_gemm_prepacked_f(m, n, k, alpha, Ap, mpad, i0, Bp, npad, j0, beta, C, ldc)


cdef inline bint gemm_packed_b(bint ta, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                               floating alpha, const floating *A, Py_ssize_t lda,
                               const floating *Bp, Py_ssize_t npad, floating beta,
                               floating *C, Py_ssize_t ldc) noexcept nogil:
    """Row-major C (m x n) = alpha op(A) op(B) + beta C (beta 0 or 1) with op(B)
    prepacked whole (pack_panels, is_b: npad padded columns, k deep) and op(A)
    = A (m x k) or, ta, A^T (A k x m), packed here: fastlin's GEMM bit for bit.
    False when it could not run (fastlin's GEMM not in use, or no packing buffer):
    nothing was written and the caller uses gemm_ab / gemm_atb instead."""
    if not fl_gemm_ok():
        return False
    if floating is double:
        return fl_gemm_pb_d(ta, m, n, k, alpha, A, lda, Bp, npad, beta, C, ldc) == 0
    else:
        return fl_gemm_pb_f(ta, m, n, k, alpha, A, lda, Bp, npad, beta, C, ldc) == 0
