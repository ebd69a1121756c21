"""Pairwise distance kernels: cdist and pdist at GEMM speed, exact where it matters.

For rows a of XA and b of XB (centred on a common point, which changes no
distance and removes the cancellation a large common offset would cause):

1. squared norms |a|^2, |b|^2 in double;
2. per output tile (rows x TILE columns), one GEMM writes -2 a.b into a
   per-thread scratch tile that stays in L2: fastlin's own AVX-512 kernel
   (src/fl_gemm.h) at the avx512 level, scipy's BLAS at the others (limited
   to one thread: the OpenMP threads own the tiles);
3. the epilogue (src/fl_distance.h) adds the norms, detects the entries
   whose GEMM value cannot be trusted (d2 < tau (|a|^2 + |b|^2), or a
   non-finite row) and recomputes those exactly from the original rows,
   takes the square root and writes each output entry once (cdist: its
   row of the output; pdist: the pair's run of the condensed vector).

Every tile is computed whole by one thread, and the tiling depends on the
shapes only, so results do not depend on the thread count.  The backward
passes (cdist_bwd_tiles, cdist_bwd_direct) sweep the same tiles; given the
forward's distances, the backward forms W = G / D in bands instead
(bwd_given_weights) and runs its two products as whole GEMMs split into
row blocks (weighted_sums, whose blocks change no sum).
"""
from cython cimport floating

# the XB-side shares of the backward: the input dtype when each share is one
# row block's product, float64 when a share sums several blocks
ctypedef fused share_t:
    float
    double
from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY, NAN, exp, log
from libc.stdint cimport int64_t
from libc.string cimport memset

from fastlin._blas cimport (FL_GEMM_KC, FL_GEMM_MR, FL_GEMM_NR_D, FL_GEMM_NR_F, fl_gemm_ok,
                            fl_gemm_wanted, gemm_ab, gemm_abt, gemm_atb, gemm_packed_b,
                            gemm_prepacked, pack_panels)

cdef extern from "fl_distance.h" nogil:
    double fl_sqnorm_d(const double *x, Py_ssize_t k)
    double fl_sqnorm_f(const float *x, Py_ssize_t k)
    Py_ssize_t fl_dist_row_d(double *dst, const double *c, Py_ssize_t nb, double na,
                             const double *nbv, const double *a0, const double *b0,
                             Py_ssize_t k, const double *w, const double *L, double tau,
                             int take_sqrt, double scale, int stream)
    Py_ssize_t fl_dist_row_f(float *dst, const float *c, Py_ssize_t nb, double na,
                             const double *nbv, const float *a0, const float *b0,
                             Py_ssize_t k, const double *w, const double *L, double tau,
                             int take_sqrt, double scale, int stream)
    void fl_dist_direct_row_d(double *c, Py_ssize_t nb, const double *a, const double *bt,
                              Py_ssize_t ldb, Py_ssize_t k, const double *w, int take_sqrt,
                              double scale, int stream)
    void fl_dist_direct_row_f(float *c, Py_ssize_t nb, const float *a, const float *bt,
                              Py_ssize_t ldb, Py_ssize_t k, const double *w, int take_sqrt,
                              double scale, int stream)
    void fl_stream_fence()
    void fl_bwd_direct_row_d(const double *a, const double *bt, Py_ssize_t ldb,
                             Py_ssize_t nb, Py_ssize_t k, const double *g, double *ga,
                             double *pb, Py_ssize_t ldp)
    void fl_bwd_direct_row_f(const float *a, const float *bt, Py_ssize_t ldb,
                             Py_ssize_t nb, Py_ssize_t k, const float *g, double *ga,
                             double *pb, Py_ssize_t ldp)
    int FL_DIRECT_K
    # the tiles, defined and cross-checked in fl_distance.h (why these sizes).
    # TILE: the columns of every tile, and the rows of pdist's (BLAS path)
    # and the backward's.
    enum:
        TILE "FL_DIST_TILE"
        FL_DIST_TILE_BYTES
        FL_PDIST_PACKED_TILE
    double fl_grad_over_dist_row_d(const double *g, double *d, Py_ssize_t n)
    double fl_grad_over_dist_row_f(const float *g, float *d, Py_ssize_t n)
    double fl_gdiv_colsum_row_d(const double *g, double *d, Py_ssize_t n, double *cs)
    double fl_gdiv_colsum_row_f(const float *g, float *d, Py_ssize_t n, double *cs)
    void fl_add_row_d(double *acc, const double *w, Py_ssize_t n)
    double fl_row_sum_d(const double *w, Py_ssize_t n)
    double fl_row_sum_f(const float *w, Py_ssize_t n)
    void fl_bwd_exact_row_d(double *W, const double *c, const double *g, Py_ssize_t nb, double na,
                            const double *nbv, double tau, const double *a0,
                            const double *b0, Py_ssize_t k, double *ta, double *tb)
    void fl_bwd_exact_row_f(float *W, const float *c, const float *g, Py_ssize_t nb, double na,
                            const double *nbv, double tau, const float *a0,
                            const float *b0, Py_ssize_t k, double *ta, double *tb)
    void fl_add_row_f(double *acc, const float *w, Py_ssize_t n)
    Py_ssize_t fl_bwd_weights_row_d(const double *g, const double *d, double *w, Py_ssize_t n,
                                    double na, const double *nbv, double tau, double *cs,
                                    double *rs)
    Py_ssize_t fl_bwd_weights_row_f(const float *g, const float *d, float *w, Py_ssize_t n,
                                    double na, const double *nbv, double tau, double *cs,
                                    double *rs)
    void fl_grad_a_row_d(double *out, double r, const double *a, const double *w, Py_ssize_t n)
    void fl_grad_a_row_f(float *out, float r, const float *a, const float *w, Py_ssize_t n)
    void fl_grad_b_row_d(double *out, double c, const double *b, const double *p, Py_ssize_t n)
    void fl_grad_b_row_f(float *out, double c, const float *b, const float *p, Py_ssize_t n)
    void fl_bwd_given_exact_row_d(const double *g, const double *d, const double *w,
                                  Py_ssize_t j0, Py_ssize_t j1, const double *a0,
                                  const double *b0, Py_ssize_t k, double *ta, double *tb)
    void fl_bwd_given_exact_row_f(const float *g, const float *d, const float *w,
                                  Py_ssize_t j0, Py_ssize_t j1, const float *a0,
                                  const float *b0, Py_ssize_t k, double *ta, double *tb)


cdef extern from "fl_pairwise.h" nogil:
    void lse_fold_d(const double *d, Py_ssize_t n, const double *b, double scale,
                    double *m, double *s)
    void lse_fold_f(const float *d, Py_ssize_t n, const float *b, float scale,
                    double *m, double *s)
    double lse_weights_row_d(const double *d, Py_ssize_t n, const double *b, double scale,
                             double shift, double gsc, double g, double *w, double *cs,
                             double *ws)
    double lse_weights_row_f(const float *d, Py_ssize_t n, const float *b, float scale,
                             float shift, float gsc, double g, float *w, double *cs,
                             double *ws)
    Py_ssize_t topk_next_d(const double *d, Py_ssize_t j, Py_ssize_t n, double top, int neg)
    Py_ssize_t topk_next_f(const float *d, Py_ssize_t j, Py_ssize_t n, float top, int neg)


cdef inline Py_ssize_t _epilogue_row(floating *dst, const floating *c, Py_ssize_t tn,
                                     double na, const double *nb, const floating *a0,
                                     const floating *b0, Py_ssize_t k, const double *w,
                                     const double *L, double tau, bint take_sqrt,
                                     double scale, bint stream) noexcept nogil:
    """Returns how many entries took the exact path."""
    if floating is double:
        return fl_dist_row_d(dst, c, tn, na, nb, a0, b0, k, w, L, tau, take_sqrt, scale,
                             stream)
    else:
        return fl_dist_row_f(dst, c, tn, na, nb, a0, b0, k, w, L, tau, take_sqrt, scale,
                             stream)


cdef inline void _direct_row(floating *dst, Py_ssize_t tn, const floating *a,
                             const floating *bt, Py_ssize_t ldb, Py_ssize_t k,
                             const double *w, int take_sqrt, double scale,
                             bint stream) noexcept nogil:
    if floating is double:
        fl_dist_direct_row_d(dst, tn, a, bt, ldb, k, w, take_sqrt, scale, stream)
    else:
        fl_dist_direct_row_f(dst, tn, a, bt, ldb, k, w, take_sqrt, scale, stream)


cdef extern from "fl_common.h":
    int FL_VBYTES


def vector_bytes():
    """The width in bytes of the kernels' vectors in this level's build
    (src/fl_common.h, the vector layer): 64 at avx512 and under clang, the
    level's register width under gcc below AVX-512."""
    return FL_VBYTES


def own_gemm_enabled():
    """True when the tile products use fastlin's own GEMM (src/fl_gemm.h, at
    the avx512 and avx2 levels), False when they use scipy's BLAS."""
    return bool(fl_gemm_ok())


def tile_width():
    """Columns of every distance tile, and rows of pdist's (BLAS path) and
    the backward's (FL_DIST_TILE): the callers size scratch by it."""
    return TILE


def cdist_tile_rows(bint is_double):
    """Most rows of a cdist tile (FL_DIST_TILE_BYTES of scratch)."""
    return FL_DIST_TILE_BYTES // (TILE * (8 if is_double else 4))


def gemm_blocking():
    """fastlin's GEMM blocking and the tiles cut to it (src/fl_gemm.h,
    src/fl_distance.h), for the tests that place operands across their
    edges."""
    return {"mr": FL_GEMM_MR, "nr_float64": FL_GEMM_NR_D, "nr_float32": FL_GEMM_NR_F,
            "kc": FL_GEMM_KC, "tile": TILE, "pdist_packed_tile": FL_PDIST_PACKED_TILE}


def packed_len(Py_ssize_t rows, Py_ssize_t k, bint is_b, bint is_double):
    """Elements of a prepacked GEMM operand of `rows` rows (is_b: the column
    operand, else the row operand) and k columns: rows padded to whole panels."""
    cdef Py_ssize_t w = FL_GEMM_MR
    if is_b:
        w = FL_GEMM_NR_D if is_double else FL_GEMM_NR_F
    return (rows + w - 1) // w * w * k


def _use_panels(Ap, Bp, Py_ssize_t mA, Py_ssize_t mB, Py_ssize_t k, bint is_double):
    """Whether the tile kernels take the prepacked path: buffers given,
    fastlin's GEMM in use (without it there are no panels: the prepacked
    entry points abort), something to multiply, and buffers of the size the
    packing writes."""
    if Ap is None or Bp is None or not fl_gemm_ok() or mA == 0 or mB == 0 or k == 0:
        return False
    if (len(Ap) < packed_len(mA, k, False, is_double)
            or len(Bp) < packed_len(mB, k, True, is_double)):
        raise ValueError("packed operand buffers are too small for these operands")
    return True


cdef inline void _tile_cross(bint packed, Py_ssize_t tm, Py_ssize_t tn, Py_ssize_t k,
                             Py_ssize_t i0, Py_ssize_t j0, const floating *pa,
                             const floating *pb, const floating *pAp, Py_ssize_t mpad,
                             const floating *pBp, Py_ssize_t npad,
                             floating *c) noexcept nogil:
    """The tile's cross term, c (tm x tn) = -2 A[i0:] B[j0:]^T, into the
    thread's scratch: from the prepacked panels (beta 0: fastlin's GEMM never
    reads C then), or by BLAS with beta 1 on a scratch kept all zero (zeroed
    by the kernel before its tiles, then each row again right after the epilogue read it,
    while it is in L1), which spares OpenBLAS its beta = 0 memset of the whole
    tile through L2; 0 + (-2 a.b) is the beta = 0 result, bit for bit."""
    if packed:
        gemm_prepacked(tm, tn, k, <floating>-2.0, pAp, mpad, i0, pBp, npad, j0,
                       <floating>0.0, c, tn)
    else:
        gemm_abt(<int>tm, <int>tn, <int>k, <floating>-2.0, pa + i0 * k, <int>k,
                 pb + j0 * k, <int>k, <floating>1.0, c, <int>tn)


cdef void _pack_operands(const floating *pa, Py_ssize_t mA, const floating *pb,
                         Py_ssize_t mB, Py_ssize_t k, floating *Ap, floating *Bp,
                         int n_threads) noexcept nogil:
    """Pack the rows of A as op(A) panels and the rows of B as op(B) = B^T
    panels (src/fl_gemm.h), one panel per iteration, on the OpenMP threads."""
    cdef Py_ssize_t NR = FL_GEMM_NR_D if floating is double else FL_GEMM_NR_F
    cdef Py_ssize_t nqa = (mA + FL_GEMM_MR - 1) // FL_GEMM_MR, nqb = (mB + NR - 1) // NR
    cdef Py_ssize_t q
    for q in prange(nqa + nqb, schedule='static', num_threads=n_threads):
        if q < nqa:
            pack_panels(False, pa, k, False, mA, k, q, q + 1, Ap)
        else:
            pack_panels(True, pb, k, True, mB, k, q - nqa, q - nqa + 1, Bp)


cdef void _tiles_prologue(bint packed, const floating *pa, Py_ssize_t mA,
                          const floating *pb, Py_ssize_t mB, Py_ssize_t k, floating *Ap,
                          floating *Bp, floating *scratch, Py_ssize_t scratch_len,
                          int n_threads) noexcept nogil:
    """Before a sweep of GEMM tiles: pack both operands once (fastlin's GEMM),
    or zero the scratch the BLAS path accumulates into (with beta = 1; the
    epilogue zeroes each row again as it reads it)."""
    if packed:
        _pack_operands(pa, mA, pb, mB, k, Ap, Bp, n_threads)
    else:
        memset(scratch, 0, scratch_len * sizeof(floating))


def _use_own_gemm(bint on):
    """Testing hook: False sends this module's tile products to scipy's BLAS
    (the path of machines without AVX-512).  Not thread-safe: call it
    between kernels.  Returns the previous setting."""
    global fl_gemm_wanted
    cdef bint old = fl_gemm_wanted
    fl_gemm_wanted = on
    return old


def _gemm(int ta, int tb, int m, int n, int k, double alpha_, const floating[:, ::1] A,
          const floating[:, ::1] B, double beta_, floating[:, ::1] C):
    """Testing hook: the top-left m x n of C := alpha op(A) op(B) + beta C
    through the wrappers the kernels use.  op(A) (m x k) is the top-left of
    A, or of A.T when ta; op(B) (k x n) likewise with tb.  The row strides
    are the arrays' widths, so a wider array tests a stride larger than the
    block."""
    if ta and tb:
        raise ValueError("op(A) and op(B) cannot both be transposed")
    cdef int lda = A.shape[1], ldb = B.shape[1], ldc = C.shape[1]
    cdef floating alpha = <floating>alpha_, beta = <floating>beta_
    with nogil:
        if ta:
            gemm_atb(m, n, k, alpha, &A[0, 0], lda, &B[0, 0], ldb, beta, &C[0, 0], ldc)
        elif tb:
            gemm_abt(m, n, k, alpha, &A[0, 0], lda, &B[0, 0], ldb, beta, &C[0, 0], ldc)
        else:
            gemm_ab(m, n, k, alpha, &A[0, 0], lda, &B[0, 0], ldb, beta, &C[0, 0], ldc)


def direct_k():
    """Rows with at most this many columns are computed directly, without GEMM."""
    return FL_DIRECT_K


def sqnorms(const floating[:, ::1] X, double[::1] out, int n_threads):
    """out[i] = sum_k X[i, k]^2, accumulated in double (fl_sqnorm: a fixed
    order that depends on k only)."""
    cdef Py_ssize_t m = X.shape[0], k = X.shape[1], i
    if k == 0:
        out[:] = 0
        return
    for i in prange(m, nogil=True, schedule='static', num_threads=n_threads):
        if floating is double:
            out[i] = fl_sqnorm_d(&X[i, 0], k)
        else:
            out[i] = fl_sqnorm_f(&X[i, 0], k)


cdef Py_ssize_t _cdist_tile_m(Py_ssize_t mA, Py_ssize_t mB, bint packed,
                              Py_ssize_t itemsize) noexcept nogil:
    """The rows of cdist's tiles (each TILE columns wide) for an mA x mB
    output: a function of the shapes only, never of the thread count, and
    shared by every sweep that must reproduce cdist's entries bit for bit
    (cdist_reduce: a GEMM under BLAS may round an entry by the shape of its
    call).

    Row blocks of up to FL_DIST_TILE_BYTES tiles (512 x 256 float64,
    1024 x 256 float32): fewer GEMM calls and packings of B, measured 3-5%
    faster than 256 x 256 at 4096 x 64; up to TILE rows when that would
    leave fewer than 32 tiles to share out."""
    cdef Py_ssize_t TM = FL_DIST_TILE_BYTES // (TILE * itemsize)
    cdef Py_ssize_t step = FL_GEMM_MR if packed else 8
    cdef Py_ssize_t ntn = (mB + TILE - 1) // TILE
    cdef Py_ssize_t ntm
    if ((mA + TM - 1) // TM) * ntn < 32:
        TM = TILE
    # then the rows are split evenly (in whole panels): a last row block of a
    # few rows would leave one thread short of work
    TM = TM // step * step
    ntm = (mA + TM - 1) // TM
    return ((mA + ntm - 1) // ntm + step - 1) // step * step     # <= the TM above


def cdist_tiles(const floating[:, ::1] A, const floating[:, ::1] B,
                const floating[:, ::1] A0, const floating[:, ::1] B0,
                const double[::1] na, const double[::1] nb,
                floating[:, ::1] out, floating[:, ::1] scratch, double tau, int take_sqrt,
                double scale, int n_threads, bint stream, const double[::1] wv=None,
                const floating[:, ::1] BT=None, const double[:, ::1] Lm=None,
                floating[::1] Ap=None, floating[::1] Bp=None):
    """out (mA, mB) = distances between rows of A and B (centred, for the
    GEMM) / A0 and B0 (original, for the exact path).  na, nb: squared norms
    of the GEMM rows, NaN for rows that must take the exact path.  scratch:
    (n_threads, >= min(TM, mA) * min(TILE, mB)), the GEMM's tile per thread
    (checked; need not be zero: the BLAS path zeroes it).  stream: write out
    with non-temporal stores.  With BT (B0 transposed, k x mB) every entry is
    computed directly instead (few columns); take_sqrt 2 there (float64):
    the roots also checked for squares out of double's safe range
    (fl_sq_unsafe), those recomputed scaled -- asked for only when the data
    can have such pairs (it costs ~10% at one thread).  With Ap and Bp (packed_len
    elements each), A and B are packed once into fastlin's GEMM panels here
    and every tile's product reads them (no packing per tile)."""
    cdef Py_ssize_t mA = A.shape[0], mB = B.shape[0], k = A.shape[1]
    if mA == 0 or mB == 0:
        return
    cdef bint packed = _use_panels(Ap, Bp, mA, mB, k, floating is double)
    cdef Py_ssize_t NR = FL_GEMM_NR_D if floating is double else FL_GEMM_NR_F
    cdef Py_ssize_t mpad = (mA + FL_GEMM_MR - 1) // FL_GEMM_MR * FL_GEMM_MR
    cdef Py_ssize_t npad = (mB + NR - 1) // NR * NR
    cdef Py_ssize_t TM = _cdist_tile_m(mA, mB, packed, sizeof(floating))
    cdef Py_ssize_t ntn = (mB + TILE - 1) // TILE
    cdef Py_ssize_t ntm = (mA + TM - 1) // TM
    if BT is None and scratch.shape[1] < min(TM, mA) * min(TILE, mB):
        raise ValueError("scratch too small for the tiles")
    cdef Py_ssize_t t, i0, j0, tm, tn, i
    cdef floating *c
    cdef const floating *pa = &A[0, 0]
    cdef const floating *pb = &B[0, 0]
    cdef const floating *pa0 = &A0[0, 0]
    cdef const floating *pb0 = &B0[0, 0]
    cdef floating *pc = &out[0, 0]
    cdef bint direct = BT is not None
    cdef const floating *pbt = &BT[0, 0] if direct else NULL
    cdef const double *pw = &wv[0] if wv is not None else NULL
    cdef const double *pL = &Lm[0, 0] if Lm is not None else NULL
    cdef floating *pAp = &Ap[0] if packed else NULL
    cdef floating *pBp = &Bp[0] if packed else NULL
    if not direct:
        with nogil:
            _tiles_prologue(packed, pa, mA, pb, mB, k, pAp, pBp, &scratch[0, 0],
                            scratch.shape[0] * scratch.shape[1], n_threads)
    # dynamic: the last row block and column tile may be smaller; which thread
    # computes a tile changes nothing in it
    for t in prange(ntm * ntn, nogil=True, schedule='dynamic', num_threads=n_threads):
        i0 = (t // ntn) * TM
        j0 = (t % ntn) * TILE
        tm = min(TM, mA - i0)
        tn = min(TILE, mB - j0)
        if direct:
            for i in range(tm):
                _direct_row(pc + (i0 + i) * mB + j0, tn, pa0 + (i0 + i) * k, pbt + j0, mB,
                            k, pw, take_sqrt, scale, stream)
        else:
            c = &scratch[threadid(), 0]
            _tile_cross(packed, tm, tn, k, i0, j0, pa, pb, pAp, mpad, pBp, npad, c)
            for i in range(tm):
                _epilogue_row(pc + (i0 + i) * mB + j0, c + i * tn, tn, na[i0 + i], &nb[j0],
                              pa0 + (i0 + i) * k, pb0 + j0 * k, k, pw, pL, tau, take_sqrt,
                              scale, stream)
                if not packed:
                    memset(c + i * tn, 0, tn * sizeof(floating))
        if stream:
            fl_stream_fence()


def cdist_direct_small(const floating[:, ::1] A, const floating[:, ::1] BT,
                       floating[:, ::1] out, int take_sqrt, double scale):
    """out (mA, mB) = the direct distances of cdist_tiles' BT path, unweighted,
    on the calling thread: the same row function, so bitwise the same entries,
    for calls whose argument handling would otherwise cost more than the
    work.  A (mA, k) and BT (k, mB), k >= 1, mA and mB >= 1 (checked by the
    caller)."""
    cdef Py_ssize_t mA = A.shape[0], mB = BT.shape[1], k = A.shape[1], i, j0
    with nogil:
        for i in range(mA):
            # in column tiles, as cdist_tiles: the row function holds at most
            # TILE entries
            j0 = 0
            while j0 < mB:
                _direct_row(&out[i, j0], min(<Py_ssize_t>TILE, mB - j0), &A[i, 0],
                            &BT[0, j0], mB, k, NULL, take_sqrt, scale, False)
                j0 += TILE


def pdist_direct_small(const floating[:, ::1] A, const floating[:, ::1] AT,
                       floating[::1] out, int take_sqrt, double scale):
    """out (m (m - 1) / 2,) = the pairs of rows of A by direct differences, as
    pdist_tiles' AT path (the same row function: bitwise the same entries),
    unweighted, on the calling thread.  AT = A transposed (k, m), k >= 1,
    m >= 2 (checked by the caller)."""
    cdef Py_ssize_t m = A.shape[0], k = A.shape[1], i, j0, base
    with nogil:
        for i in range(m - 1):
            base = m * i - (i * (i + 1)) // 2       # the pair (i, i + 1)
            j0 = i + 1
            while j0 < m:
                _direct_row(&out[base + j0 - i - 1], min(<Py_ssize_t>TILE, m - j0),
                            &A[i, 0], &AT[0, j0], m, k, NULL, take_sqrt, scale, False)
                j0 += TILE


def pdist_tiles(const floating[:, ::1] A, const floating[:, ::1] A0,
                const double[::1] na, floating[::1] out, floating[:, ::1] scratch,
                double tau, int take_sqrt, double scale, int n_threads, bint stream,
                const double[::1] wv=None, const floating[:, ::1] AT=None,
                const double[:, ::1] Lm=None, floating[::1] Ap=None,
                floating[::1] Bp=None):
    """Condensed distances (scipy's order) between the rows of A / A0, each
    row of a tile written straight into its run of the condensed vector.
    na: squared norms (NaN: exact path).  scratch: (n_threads, TILE * TILE),
    one GEMM tile per thread.  Ap, Bp: as cdist_tiles (the tiles are then
    FL_PDIST_PACKED_TILE = 224 square, whole panels both ways)."""
    cdef Py_ssize_t m = A.shape[0], k = A.shape[1]
    cdef bint packed = _use_panels(Ap, Bp, m, m, k, floating is double)
    cdef Py_ssize_t NR = FL_GEMM_NR_D if floating is double else FL_GEMM_NR_F
    cdef Py_ssize_t mpad = (m + FL_GEMM_MR - 1) // FL_GEMM_MR * FL_GEMM_MR
    cdef Py_ssize_t npad = (m + NR - 1) // NR * NR
    cdef Py_ssize_t T = FL_PDIST_PACKED_TILE if packed else TILE
    cdef Py_ssize_t nt = (m + T - 1) // T
    if AT is None and scratch.shape[1] < min(T, m) * min(T, m):
        raise ValueError("scratch too small for the tiles")
    cdef Py_ssize_t t, bi, bj, i0, j0, tm, tn, i, js, base
    cdef floating *c
    cdef const floating *pa = &A[0, 0]
    cdef const floating *pa0 = &A0[0, 0]
    cdef floating *po = &out[0]
    cdef bint direct = AT is not None
    cdef const floating *pat = &AT[0, 0] if direct else NULL
    cdef const double *pw = &wv[0] if wv is not None else NULL
    cdef const double *pL = &Lm[0, 0] if Lm is not None else NULL
    cdef floating *pAp = &Ap[0] if packed else NULL
    cdef floating *pBp = &Bp[0] if packed else NULL
    if not direct:
        with nogil:
            _tiles_prologue(packed, pa, m, pa, m, k, pAp, pBp, &scratch[0, 0],
                            scratch.shape[0] * scratch.shape[1], n_threads)
    # dynamic: half of the (bi, bj) pairs are below the diagonal and empty;
    # which thread computes a tile changes nothing in it.
    for t in prange(nt * nt, nogil=True, schedule='dynamic', num_threads=n_threads):
        bi = t // nt
        bj = t % nt
        if bj < bi:
            continue
        i0 = bi * T
        j0 = bj * T
        tm = min(T, m - i0)
        tn = min(T, m - j0)
        c = NULL
        if not direct:
            c = &scratch[threadid(), 0]
            _tile_cross(packed, tm, tn, k, i0, j0, pa, pa, pAp, mpad, pBp, npad, c)
        for i in range(tm):
            # pairs (i0 + i, j0 + j) with j0 + j > i0 + i, j >= js
            js = 0
            if bi == bj:
                js = i + 1
            if js >= tn:
                if not direct and not packed:
                    memset(c + i * tn, 0, tn * sizeof(floating))
                continue
            base = m * (i0 + i) - ((i0 + i) * (i0 + i + 1)) // 2 - (i0 + i) - 1 + j0
            if direct:
                _direct_row(po + base + js, tn - js, pa0 + (i0 + i) * k, pat + j0 + js, m,
                            k, pw, take_sqrt, scale, stream)
            else:
                _epilogue_row(po + base + js, c + i * tn + js, tn - js, na[i0 + i],
                              &na[j0 + js], pa0 + (i0 + i) * k, pa0 + (j0 + js) * k, k, pw,
                              pL, tau, take_sqrt, scale, stream)
                if not packed:
                    memset(c + i * tn, 0, tn * sizeof(floating))
        if stream:
            fl_stream_fence()


cdef inline Py_ssize_t _bwd_row(floating *w, floating *c, const floating *g,
                                Py_ssize_t tn, double na, const double *nb, double tau,
                                const floating *a0, const floating *b0, Py_ssize_t k,
                                double *ta, double *tb, double *cs,
                                double *rs) noexcept nogil:
    """One tile row of the backward: D (the forward's epilogue on the GEMM's
    c), W = G / D, the
    exact-path entries taken out of W into ta / tb, the row's sum into rs,
    its entries added to the column sums cs.  Returns the number of
    exact-path entries."""
    cdef Py_ssize_t nex = _epilogue_row(w, c, tn, na, nb, a0, b0, k, NULL, NULL, tau, True,
                                        1.0, False)
    if nex == 0:        # the usual row: W, its sum and the column sums in one pass
        if floating is double:
            rs[0] = fl_gdiv_colsum_row_d(g, w, tn, cs)
        else:
            rs[0] = fl_gdiv_colsum_row_f(g, w, tn, cs)
    elif floating is double:
        fl_grad_over_dist_row_d(g, w, tn)
        fl_bwd_exact_row_d(w, c, g, tn, na, nb, tau, a0, b0, k, ta, tb)
        rs[0] = fl_row_sum_d(w, tn)
        fl_add_row_d(cs, w, tn)
    else:
        fl_grad_over_dist_row_f(g, w, tn)
        fl_bwd_exact_row_f(w, c, g, tn, na, nb, tau, a0, b0, k, ta, tb)
        rs[0] = fl_row_sum_f(w, tn)
        fl_add_row_f(cs, w, tn)
    return nex


def bwd_panels_len(Py_ssize_t m, Py_ssize_t k, bint is_double):
    """Elements of one operand prepacked for the backward's products (the m
    rows of A or B as op(B) of W @ B / W^T @ A: k columns in panels, m deep),
    and of one thread's W panels (two tiles, W and W^T as op(A)); 0 where
    fastlin's GEMM is not in use.  A tile's W is one depth slice of the GEMM
    (FL_GEMM_KC == TILE, asserted in fl_distance.h)."""
    if not fl_gemm_ok():
        return 0, 0
    cdef Py_ssize_t NR = FL_GEMM_NR_D if is_double else FL_GEMM_NR_F
    cdef Py_ssize_t tpad = (TILE + FL_GEMM_MR - 1) // FL_GEMM_MR * FL_GEMM_MR
    return (k + NR - 1) // NR * NR * m, 2 * tpad * TILE


def bwd_dist_panels_len(Py_ssize_t mA, Py_ssize_t mB, Py_ssize_t k, bint is_double):
    """Elements of A and of B prepacked for the backward's distance tiles
    (D = -2 A B^T): A's row blocks of TILE rows each
    as its own op(A) panels, B as op(B) = B^T panels; (0, 0) where fastlin's
    GEMM is not in use."""
    if not fl_gemm_ok():
        return 0, 0
    cdef Py_ssize_t NR = FL_GEMM_NR_D if is_double else FL_GEMM_NR_F
    cdef Py_ssize_t tpad = (TILE + FL_GEMM_MR - 1) // FL_GEMM_MR * FL_GEMM_MR
    return (mA + TILE - 1) // TILE * tpad * k, (mB + NR - 1) // NR * NR * k


cdef void _pack_nn(const floating *X, Py_ssize_t m, Py_ssize_t k, floating *P,
                   int n_threads) noexcept nogil:
    """X (m x k, row-major) as op(B) of a product whose depth runs over its
    rows: k columns in panels, depth slices of FL_GEMM_KC rows."""
    cdef Py_ssize_t NR = FL_GEMM_NR_D if floating is double else FL_GEMM_NR_F
    cdef Py_ssize_t q, nq = (k + NR - 1) // NR
    for q in prange(nq, schedule='static', num_threads=n_threads):
        pack_panels(True, X, k, False, k, m, q, q + 1, P)


def cdist_bwd_tiles(const floating[:, ::1] A, const floating[:, ::1] B,
                    const floating[:, ::1] A0, const floating[:, ::1] B0,
                    const double[::1] na, const double[::1] nb, const floating[:, ::1] G,
                    floating[:, ::1] WB, share_t[:, ::1] P, double[:, ::1] CS,
                    double[::1] rows, floating[:, ::1] scratch, double[:, ::1] tscratch,
                    double tau, int n_threads, Py_ssize_t blocks_per_group=1,
                    floating[::1] Aq=None, floating[::1] Bq=None, floating[:, ::1] wpan=None,
                    floating[::1] Ad=None, floating[::1] Bd=None):
    """The Euclidean backward's sums in one sweep over the tiles, without
    ever storing D or W = G / D whole.

    The row blocks of TILE rows are taken in groups of blocks_per_group
    consecutive blocks (a function of the shapes only); each thread owns
    groups, and walks each group's blocks in order and each block's column
    tiles in order.  Per tile: D from one GEMM and the forward's epilogue (so the exact
    path and its guarantees are the forward's), W = G / D in place (0 where
    D == 0), the exact-path entries' terms formed from differences instead
    (fl_bwd_exact_row), then
      WB[i-block]  (+)= W B[j-block]                    (GEMM, beta 1 after the first)
      P[g, j-block] (+)= W^T A[i-block]     (GEMM: the group's share, beta 1 after
                                            the group's first block)
      rows[i] += sum_j W_ij,  CS[g, j] += sum_i W_ij   (in double)
    and the exact terms (ta = sum t, tb = -sum t): WB[i] -= ta[i], P[g, j] -= tb[j].  The caller sums
    P and CS over the groups in order (grad_from_row_blocks), so no result
    depends on the thread count; P holds one share per group, not per block
    (bounded memory for many rows).
    scratch: (n_threads, 2 * TILE * TILE + TILE * k), a GEMM tile, a W tile
    and (float32) the tile's W^T A per thread; tscratch: (n_threads,
    2 * TILE * k) doubles for ta and tb.  P: the input dtype when every group
    is one block (blocks_per_group 1), else float64, a float32 tile's W^T A
    then added into it in double (a float32 sum over blocks would lose
    digits).
    P with no rows: the XB side (P, CS) is skipped.  (With the forward's
    distances given, the backward takes bwd_given_weights and weighted_sums
    instead.)
    Aq, Bq, wpan (bwd_panels_len elements; wpan one row per thread): A and B
    are packed once here as the B operand of the two products, and each
    tile's W (and W^T) into the thread's wpan, so the products pack only W
    (the same sums in the same order as the per-call GEMM).
    Ad, Bd (bwd_dist_panels_len): likewise for the distance tiles, A packed
    block by block (a block's rows start a panel).
    """
    cdef Py_ssize_t mA = A.shape[0], mB = B.shape[0], k = A.shape[1]
    cdef Py_ssize_t ntm = (mA + TILE - 1) // TILE, ntn = (mB + TILE - 1) // TILE
    # sizeof, not a fused-type test: Cython would flag the rest of the
    # (float64, float32) specialisation as unreachable code
    if sizeof(share_t) < sizeof(floating):
        raise TypeError("P must be float64 for float64 operands")
    cdef Py_ssize_t bpg = blocks_per_group
    cdef Py_ssize_t ngroups = (ntm + bpg - 1) // bpg
    cdef Py_ssize_t g, bi, bj, i0, j0, tm, tn, i, q, nex
    cdef bint want_b = P.shape[0] > 0     # else only the XA side (pdist_backward)
    # the caller sizes these by tile_width(): a mismatch would write past them
    if (scratch.shape[0] < n_threads or tscratch.shape[0] < n_threads
            or scratch.shape[1] < 2 * TILE * TILE + TILE * k
            or tscratch.shape[1] < 2 * TILE * k
            or CS.shape[0] < ngroups or CS.shape[1] < mB
            or (want_b and P.shape[0] < ngroups * mB)):
        raise ValueError("scratch, tscratch, CS or P too small for the tiles")
    cdef floating *c
    cdef floating *w
    cdef floating *wta
    cdef double *ta
    cdef double *tb
    cdef double rs
    cdef Py_ssize_t NR = FL_GEMM_NR_D if floating is double else FL_GEMM_NR_F
    cdef Py_ssize_t kpad = (k + NR - 1) // NR * NR
    cdef Py_ssize_t tpad = (TILE + FL_GEMM_MR - 1) // FL_GEMM_MR * FL_GEMM_MR
    cdef Py_ssize_t mpw, mpt
    cdef floating *wp
    cdef floating *wtp
    cdef bint pq = False
    # Aq serves only the XB side (W^T A): not needed without it
    if (Bq is not None and wpan is not None and k > 0
            and (Aq is not None or not want_b)):
        la, lw = bwd_panels_len(mA, k, floating is double)
        lb, _ = bwd_panels_len(mB, k, floating is double)
        if la > 0:
            if ((want_b and Aq.shape[0] < la) or Bq.shape[0] < lb
                    or wpan.shape[0] < n_threads or wpan.shape[1] < lw):
                raise ValueError("backward panel buffers are too small")
            pq = True
    if pq:
        with nogil:
            if want_b:
                _pack_nn(&A[0, 0], mA, k, &Aq[0], n_threads)
            _pack_nn(&B[0, 0], mB, k, &Bq[0], n_threads)
    cdef bint pd = False
    cdef Py_ssize_t npb = (mB + NR - 1) // NR * NR, nqb = npb // NR, q2
    if Ad is not None and Bd is not None and k > 0:
        lad, lbd = bwd_dist_panels_len(mA, mB, k, floating is double)
        if lad > 0:
            if Ad.shape[0] < lad or Bd.shape[0] < lbd:
                raise ValueError("backward distance panel buffers are too small")
            pd = True
    if pd:
        for q2 in prange(ntm + nqb, schedule='static', num_threads=n_threads, nogil=True):
            if q2 < ntm:
                pack_panels(False, &A[q2 * TILE, 0], k, False, min(TILE, mA - q2 * TILE), k,
                            0, (min(TILE, mA - q2 * TILE) + FL_GEMM_MR - 1) // FL_GEMM_MR,
                            &Ad[0] + q2 * tpad * k)
            else:
                pack_panels(True, &B[0, 0], k, True, mB, k, q2 - ntm, q2 - ntm + 1, &Bd[0])
    for g in prange(ngroups, nogil=True, schedule='dynamic', num_threads=n_threads):
        for bi in range(g * bpg, min(ntm, (g + 1) * bpg)):
            i0 = bi * TILE
            tm = min(TILE, mA - i0)
            c = &scratch[threadid(), 0]
            w = c + TILE * TILE
            ta = &tscratch[threadid(), 0]
            tb = ta + TILE * k
            for bj in range(ntn):
                j0 = bj * TILE
                tn = min(TILE, mB - j0)
                if pd:
                    gemm_prepacked(tm, tn, k, <floating>-2.0, &Ad[0] + bi * tpad * k,
                                   (tm + FL_GEMM_MR - 1) // FL_GEMM_MR * FL_GEMM_MR, 0,
                                   &Bd[0], npb, j0, <floating>0.0, c, tn)
                else:
                    gemm_abt(<int>tm, <int>tn, <int>k, <floating>-2.0, &A[i0, 0], <int>k,
                             &B[j0, 0], <int>k, <floating>0.0, c, <int>tn)
                nex = 0
                for i in range(tm):
                    rs = 0      # assigned in the loop body: thread-private (its address is taken)
                    nex = nex + _bwd_row(w + i * tn, c + i * tn, &G[i0 + i, j0], tn,
                                         na[i0 + i], &nb[j0], tau, &A0[i0 + i, 0], &B0[j0, 0],
                                         k, ta + i * k, tb, &CS[g, j0], &rs)
                    if bj == 0:
                        rows[i0 + i] = rs
                    else:
                        rows[i0 + i] = rows[i0 + i] + rs
                if pq:
                    # W (op(A), one depth slice: tn <= KC) against B's slice
                    # j0 / KC, packed once
                    wp = &wpan[threadid(), 0]
                    wtp = wp + tpad * TILE
                    mpw = (tm + FL_GEMM_MR - 1) // FL_GEMM_MR * FL_GEMM_MR
                    mpt = (tn + FL_GEMM_MR - 1) // FL_GEMM_MR * FL_GEMM_MR
                    pack_panels(False, w, tn, False, tm, tn, 0, mpw // FL_GEMM_MR, wp)
                    gemm_prepacked(tm, k, tn, <floating>1.0, wp, mpw, 0,
                                   &Bq[0] + j0 * kpad, kpad, 0,
                                   <floating>(0.0 if bj == 0 else 1.0), &WB[i0, 0], k)
                    if want_b:
                        pack_panels(False, w, tn, True, tn, tm, 0, mpt // FL_GEMM_MR, wtp)
                else:
                    gemm_ab(<int>tm, <int>k, <int>tn, <floating>1.0, w, <int>tn, &B[j0, 0],
                            <int>k, <floating>(0.0 if bj == 0 else 1.0), &WB[i0, 0], <int>k)
                if want_b:
                    if share_t is floating:
                        if pq:
                            gemm_prepacked(tn, k, tm, <floating>1.0, wtp, mpt, 0,
                                           &Aq[0] + i0 * kpad, kpad, 0,
                                           <floating>(0.0 if bi == g * bpg else 1.0),
                                           &P[g * mB + j0, 0], k)
                        else:
                            gemm_atb(<int>tn, <int>k, <int>tm, <floating>1.0, w, <int>tn,
                                     &A[i0, 0], <int>k,
                                     <floating>(0.0 if bi == g * bpg else 1.0),
                                     &P[g * mB + j0, 0], <int>k)
                    elif floating is float and share_t is double:
                        wta = w + TILE * TILE
                        if pq:
                            gemm_prepacked(tn, k, tm, <floating>1.0, wtp, mpt, 0,
                                           &Aq[0] + i0 * kpad, kpad, 0, <floating>0.0, wta, k)
                        else:
                            gemm_atb(<int>tn, <int>k, <int>tm, <floating>1.0, w, <int>tn,
                                     &A[i0, 0], <int>k, <floating>0.0, wta, <int>k)
                        for i in range(tn):
                            if bi == g * bpg:
                                for q in range(k):
                                    P[g * mB + j0 + i, q] = wta[i * k + q]
                            else:
                                fl_add_row_f(&P[g * mB + j0 + i, 0], wta + i * k, k)
                if nex:
                    for i in range(tm * k):
                        WB[i0 + i // k, i % k] = WB[i0 + i // k, i % k] - <floating>ta[i]
                        ta[i] = 0
                    for i in range(tn * k):
                        if want_b:
                            P[g * mB + j0 + i // k, i % k] = <share_t>(
                                P[g * mB + j0 + i // k, i % k] - tb[i])
                        tb[i] = 0


def cdist_bwd_direct(const floating[:, ::1] A, const floating[:, ::1] BT,
                     const floating[:, ::1] G, double[:, ::1] GA, double[:, ::1] PB,
                     Py_ssize_t rows_per_block, int n_threads):
    """The Euclidean backward for few columns, every term from its difference
    (fl_bwd_direct_row): GA (mA x k) = the XA gradient; PB (nblk * k, mB):
    each row block's share of the XB gradient, q-major (PB[b * k + q, j]),
    to be summed over the blocks in order (reduce_direct_blocks); PB with no
    rows: skipped.  GA must come zeroed."""
    cdef Py_ssize_t mA = A.shape[0], k = A.shape[1], mB = BT.shape[1]
    cdef Py_ssize_t nblk = (mA + rows_per_block - 1) // rows_per_block
    cdef Py_ssize_t ntn = (mB + TILE - 1) // TILE
    cdef Py_ssize_t b, bj, i, j0, tn
    cdef bint want_b = PB.shape[0] > 0
    cdef double *pb
    for b in prange(nblk, nogil=True, schedule='dynamic', num_threads=n_threads):
        for i in range(b * rows_per_block, min(mA, (b + 1) * rows_per_block)):
            for bj in range(ntn):
                j0 = bj * TILE
                tn = min(TILE, mB - j0)
                pb = &PB[b * k, j0] if want_b else NULL
                if floating is double:
                    fl_bwd_direct_row_d(&A[i, 0], &BT[0, j0], mB, tn, k, &G[i, j0], &GA[i, 0],
                                        pb, mB)
                else:
                    fl_bwd_direct_row_f(&A[i, 0], &BT[0, j0], mB, tn, k, &G[i, j0], &GA[i, 0],
                                        pb, mB)


def reduce_direct_blocks(const double[:, ::1] PB, double[:, ::1] GB, int n_threads):
    """GB[j, q] = sum_b PB[b * k + q, j], over the blocks b in order."""
    cdef Py_ssize_t mB = GB.shape[0], k = GB.shape[1], nblk = PB.shape[0] // GB.shape[1]
    cdef Py_ssize_t j, q, b
    cdef double s
    for j in prange(mB, nogil=True, schedule='static', num_threads=n_threads):
        for q in range(k):
            s = 0
            for b in range(nblk):
                s = s + PB[b * k + q, j]
            GB[j, q] = s


def grad_from_row_blocks(const share_t[:, ::1] P, const double[:, ::1] CS,
                         const floating[:, ::1] Bc, floating[:, ::1] gB,
                         double[:, ::1] acc, int n_threads):
    """The XB gradient from the groups' shares, in one pass:
    gB[j] = cols_j Bc[j] - sum_g P[g * mB + j], cols_j = sum_g CS[g, j], both
    sums over the groups in order, in double (acc: one k-row per thread),
    rounded once to gB's dtype."""
    cdef Py_ssize_t mB = gB.shape[0], k = gB.shape[1], ng = CS.shape[0]
    cdef Py_ssize_t j, q, g
    cdef double c
    cdef double *a
    if mB == 0 or k == 0 or ng == 0:
        return
    for j in prange(mB, nogil=True, schedule='static', num_threads=n_threads):
        a = &acc[threadid(), 0]
        c = 0
        for g in range(ng):
            c = c + CS[g, j]
        memset(a, 0, k * sizeof(double))
        # the shares in group order, each row added by a vector loop in C (a
        # memoryview loop here took a sixth of the backward)
        for g in range(ng):
            if share_t is double:
                fl_add_row_d(a, &P[g * mB + j, 0], k)
            else:
                fl_add_row_f(a, &P[g * mB + j, 0], k)
        for q in range(k):
            gB[j, q] = <floating>(c * Bc[j, q] - a[q])


def grads_from_sums(const double[::1] rows, const floating[:, ::1] Ac, floating[:, ::1] WB,
                    const double[::1] cols, const floating[:, ::1] Bc,
                    const floating[:, ::1] P, floating[:, ::1] gB, int n_threads):
    """The Euclidean gradients from the products' sums, one parallel pass:
    WB[i] := (T)rows_i Ac[i] - WB[i] (in place: gA), and, when P has rows,
    gB[j] = (T)(cols_j Bc[j] - P[j]) (P the whole W^T A, one share)."""
    cdef Py_ssize_t mA = WB.shape[0], mB = P.shape[0], k = WB.shape[1], t
    if k == 0:
        return
    for t in prange(mA + mB, nogil=True, schedule='static', num_threads=n_threads):
        if t < mA:
            if floating is double:
                fl_grad_a_row_d(&WB[t, 0], rows[t], &Ac[t, 0], &WB[t, 0], k)
            else:
                fl_grad_a_row_f(&WB[t, 0], <float>rows[t], &Ac[t, 0], &WB[t, 0], k)
        else:
            if floating is double:
                fl_grad_b_row_d(&gB[t - mA, 0], cols[t - mA], &Bc[t - mA, 0], &P[t - mA, 0], k)
            else:
                fl_grad_b_row_f(&gB[t - mA, 0], cols[t - mA], &Bc[t - mA, 0], &P[t - mA, 0], k)


def weighted_sums(const floating[:, ::1] W, const floating[:, ::1] A,
                  const floating[:, ::1] B, floating[:, ::1] WB, floating[:, ::1] WtA,
                  int n_threads, bint accumulate=False, floating[::1] Aq=None,
                  floating[::1] Bq=None, bint pack_b=True):
    """WB = W @ B (mA x k) and WtA = W^T @ A (mB x k; accumulate: WtA +=),
    split into row blocks of WB and of WtA on the OpenMP threads, each block
    one single-threaded product (BLAS's own threads stay asleep: once woken,
    OpenBLAS threads spin for ~0.1 s and slow whatever runs next on these
    cores).  WtA with no rows: only WB.

    With Aq and Bq (packed_len(k, mA or mB, True) elements; Aq unused without
    WtA), fastlin's GEMM takes B and A packed once here (B only when pack_b:
    a caller that calls again with the same B keeps its panels) and shared by
    every block, the blocks one per thread (its sums do not depend on how
    the rows are split: bit for bit the same on any thread count); else
    (BLAS) blocks of TILE rows, a function of the shapes only."""
    cdef Py_ssize_t mA = W.shape[0], mB = W.shape[1], k = A.shape[1]
    cdef bint want_t = WtA.shape[0] > 0
    cdef floating beta_t = 1.0 if accumulate else 0.0
    cdef Py_ssize_t NR = FL_GEMM_NR_D if floating is double else FL_GEMM_NR_F
    cdef Py_ssize_t kpad = (k + NR - 1) // NR * NR
    cdef Py_ssize_t ra = TILE, rb = TILE, nba, nbb, t, r0, rn
    cdef bint packed = False
    cdef bint is_dbl = floating is double
    cdef floating *pAq = NULL
    cdef floating *pBq = NULL
    if mA == 0 or mB == 0 or k == 0:
        if not accumulate:
            WtA[...] = 0
        WB[...] = 0
        return
    if fl_gemm_ok() and Bq is not None and (Aq is not None or not want_t):
        if (Bq.shape[0] < packed_len(k, mB, True, is_dbl)
                or (want_t and Aq.shape[0] < packed_len(k, mA, True, is_dbl))):
            raise ValueError("packed operand buffers are too small")
        packed = True
        pBq = &Bq[0]
        pAq = &Aq[0] if want_t else NULL
        with nogil:
            if pack_b:
                _pack_nn(&B[0, 0], mB, k, pBq, n_threads)
            if want_t:
                _pack_nn(&A[0, 0], mA, k, pAq, n_threads)
        # one block per thread and product, in whole micro-panels
        ra = ((mA + n_threads - 1) // n_threads + FL_GEMM_MR - 1) // FL_GEMM_MR * FL_GEMM_MR
        rb = ((mB + n_threads - 1) // n_threads + FL_GEMM_MR - 1) // FL_GEMM_MR * FL_GEMM_MR
    nba = (mA + ra - 1) // ra
    nbb = (mB + rb - 1) // rb if want_t else 0
    for t in prange(nba + nbb, nogil=True, schedule='dynamic', num_threads=n_threads):
        if t < nba:
            r0 = t * ra
            rn = min(ra, mA - r0)
            # WB[r0:r0+rn] = W[r0:r0+rn] @ B
            if not (packed and gemm_packed_b(False, rn, k, mB, <floating>1.0, &W[r0, 0], mB,
                                             pBq, kpad, <floating>0.0, &WB[r0, 0], k)):
                gemm_ab(<int>rn, <int>k, <int>mB, <floating>1.0, &W[r0, 0], <int>mB,
                        &B[0, 0], <int>k, <floating>0.0, &WB[r0, 0], <int>k)
        else:
            r0 = (t - nba) * rb
            rn = min(rb, mB - r0)
            # WtA[r0:r0+rn] (+)= W[:, r0:r0+rn]^T @ A
            if not (packed and gemm_packed_b(True, rn, k, mA, <floating>1.0, &W[0, r0], mB,
                                             pAq, kpad, beta_t, &WtA[r0, 0], k)):
                gemm_atb(<int>rn, <int>k, <int>mA, <floating>1.0, &W[0, r0], <int>mB,
                         &A[0, 0], <int>k, beta_t, &WtA[r0, 0], <int>k)


# Row blocks of the given-distance backward's column sums: a function of the
# shapes only, so the sums' order never depends on the thread count.
cdef enum:
    WBLK = 128


def bwd_weights_block():
    """Rows per block of bwd_given_weights's column sums (CS rows)."""
    return WBLK


def bwd_given_weights(const floating[:, ::1] G, const floating[:, ::1] D,
                      const double[::1] na, const double[::1] nb, double tau,
                      floating[:, ::1] W, double[::1] rows, double[:, ::1] CS,
                      Py_ssize_t[::1] nflag, int n_threads):
    """W = G / D row by row (fl_bwd_weights_row: 0 where D == 0 and at the
    near pairs), rows[i] = sum_j W_ij and, per block b of WBLK rows, CS[b, j]
    += sum over the block's rows of W_ij (CS must come zeroed), all in
    double; nflag[i]: row i's near pairs (their terms: bwd_given_exact)."""
    cdef Py_ssize_t m = G.shape[0], n = G.shape[1], nblk = (m + WBLK - 1) // WBLK
    cdef Py_ssize_t b, i
    cdef double rs
    if m == 0 or n == 0:
        return
    for b in prange(nblk, nogil=True, schedule='dynamic', num_threads=n_threads):
        for i in range(b * WBLK, min(m, (b + 1) * WBLK)):
            rs = 0      # assigned in the loop body: thread-private (its address is taken)
            if floating is double:
                nflag[i] = fl_bwd_weights_row_d(&G[i, 0], &D[i, 0], &W[i, 0], n, na[i], &nb[0],
                                                tau, &CS[b, 0], &rs)
            else:
                nflag[i] = fl_bwd_weights_row_f(&G[i, 0], &D[i, 0], &W[i, 0], n, na[i], &nb[0],
                                                tau, &CS[b, 0], &rs)
            rows[i] = rs


def bwd_given_exact(const floating[:, ::1] G, const floating[:, ::1] D,
                    const floating[:, ::1] W, const floating[:, ::1] A0,
                    const floating[:, ::1] B0, const Py_ssize_t[::1] frows,
                    double[:, ::1] TA, double[:, ::1] TB, int n_threads):
    """The near pairs' terms t = W_ij (a_i - b_j), from the differences in
    double, of the rows frows (those bwd_given_weights counted near pairs
    in, in increasing order): TA[r] += sum_j t over row frows[r] (one row per
    work item), TB[j] -= sum_i t over the rows in order (blocks of TILE
    columns per work item: no sum depends on the thread count).  TB with no
    rows: skipped."""
    cdef Py_ssize_t nfr = frows.shape[0], mB = G.shape[1], k = A0.shape[1]
    cdef Py_ssize_t ncb = (mB + TILE - 1) // TILE, r, i, cb, j0
    if nfr == 0 or mB == 0 or k == 0:
        return
    for r in prange(nfr, nogil=True, schedule='dynamic', num_threads=n_threads):
        i = frows[r]
        if floating is double:
            fl_bwd_given_exact_row_d(&G[i, 0], &D[i, 0], &W[i, 0], 0, mB, &A0[i, 0], &B0[0, 0],
                                     k, &TA[r, 0], NULL)
        else:
            fl_bwd_given_exact_row_f(&G[i, 0], &D[i, 0], &W[i, 0], 0, mB, &A0[i, 0], &B0[0, 0],
                                     k, &TA[r, 0], NULL)
    if TB.shape[0] == 0:
        return
    for cb in prange(ncb, nogil=True, schedule='dynamic', num_threads=n_threads):
        j0 = cb * TILE
        for r in range(nfr):
            i = frows[r]
            if floating is double:
                fl_bwd_given_exact_row_d(&G[i, 0], &D[i, 0], &W[i, 0], j0, min(mB, j0 + TILE),
                                         &A0[i, 0], &B0[0, 0], k, NULL, &TB[0, 0])
            else:
                fl_bwd_given_exact_row_f(&G[i, 0], &D[i, 0], &W[i, 0], j0, min(mB, j0 + TILE),
                                         &A0[i, 0], &B0[0, 0], k, NULL, &TB[0, 0])


def condensed_to_square(const floating[::1] v, floating[:, ::1] M, int n_threads):
    """M (m x m) := the symmetric matrix of the condensed vector v (scipy's
    order), zero diagonal.  Two passes: each row's upper run is one copy of
    its run of v; then each 64 x 64 block below the diagonal is the transpose
    of its mirror above (blocked, so both sides stay in cache)."""
    cdef Py_ssize_t m = M.shape[0], i, j, r, c, base, t, bi, bj, nb
    nb = (m + 63) // 64
    for i in prange(m, nogil=True, schedule='dynamic', chunksize=16, num_threads=n_threads):
        base = m * i - (i * (i + 1)) // 2     # the run of row i starts at pair (i, i + 1)
        M[i, i] = 0
        for j in range(i + 1, m):
            M[i, j] = v[base + j - i - 1]
    for t in prange(nb * nb, nogil=True, schedule='dynamic', num_threads=n_threads):
        bi = t // nb
        bj = t % nb
        if bj > bi:
            continue
        for r in range(bi * 64, min(m, bi * 64 + 64)):
            for c in range(bj * 64, min(r, bj * 64 + 64)):
                M[r, c] = M[c, r]


def square_to_condensed(const floating[:, ::1] M, floating[::1] v, int n_threads):
    """v := the strict upper triangle of M, row by row (scipy's order)."""
    cdef Py_ssize_t m = M.shape[0], i, j, base
    for i in prange(m, nogil=True, schedule='dynamic', chunksize=16, num_threads=n_threads):
        base = m * i - (i * (i + 1)) // 2
        for j in range(i + 1, m):
            v[base + j - i - 1] = M[i, j]


# ---------------------------------------------------------------------------
# Pairwise reductions: cdist's tiles folded row by row into the k nearest
# (cdist_topk) or a log-sum-exp (cdist_logsumexp), never stored whole.

cdef inline bint _after(floating va, int64_t ia, floating vb, int64_t ib) noexcept nogil:
    """Whether (va, ia) sorts after (vb, ib): by value, NaN last (as
    np.sort), ties and NaNs by index."""
    if va != va:
        return vb == vb or ia > ib
    if vb != vb:
        return False
    return va > vb or (va == vb and ia > ib)


cdef inline void _sift_down(floating *hv, int64_t *hi, Py_ssize_t q,
                            Py_ssize_t n) noexcept nogil:
    """Restore the heap below q (the root sorts after its children: the
    worst entry kept is at 0)."""
    cdef floating v = hv[q]
    cdef int64_t j = hi[q]
    cdef Py_ssize_t c
    while True:
        c = 2 * q + 1
        if c >= n:
            break
        if c + 1 < n and _after(hv[c + 1], hi[c + 1], hv[c], hi[c]):
            c += 1
        if not _after(hv[c], hi[c], v, j):
            break
        hv[q] = hv[c]
        hi[q] = hi[c]
        q = c
    hv[q] = v
    hi[q] = j


cdef inline void _offer(floating *hv, int64_t *hi, Py_ssize_t k, floating v,
                        int64_t j) noexcept nogil:
    """Keep (v, j) among the k best if it sorts before the worst kept."""
    if _after(hv[0], hi[0], v, j):
        hv[0] = v
        hi[0] = j
        _sift_down(hv, hi, 0, k)


cdef inline void _topk_row(const floating *row, Py_ssize_t tn, Py_ssize_t j0,
                           floating *hv, int64_t *hi, Py_ssize_t k,
                           bint largest) noexcept nogil:
    """Offer the tile row's entries (columns j0, j0 + 1, ...) to the row's
    heap; keys are the distances, negated for the largest.  Within a sweep
    the columns come in increasing order, so an entry equal to the worst kept
    never enters: only those whose key is below it (or all, while the worst
    is NaN) are offered, found by the vector scan topk_next."""
    cdef Py_ssize_t j = 0
    while True:
        if floating is double:
            j = topk_next_d(row, j, tn, hv[0], largest)
        else:
            j = topk_next_f(row, j, tn, hv[0], largest)
        if j >= tn:
            break
        _offer(hv, hi, k, -row[j] if largest else row[j], j0 + j)
        j += 1


cdef inline void _heap_sort(floating *hv, int64_t *hi, Py_ssize_t k) noexcept nogil:
    """A heap of k entries into ascending order (best first)."""
    cdef Py_ssize_t end
    cdef floating v
    cdef int64_t j
    for end in range(k - 1, 0, -1):
        v = hv[0]
        hv[0] = hv[end]
        hv[end] = v
        j = hi[0]
        hi[0] = hi[end]
        hi[end] = j
        _sift_down(hv, hi, 0, end)


cdef enum:
    REDUCE_STATE = 1 << 21


def reduce_groups(Py_ssize_t mA, Py_ssize_t mB, Py_ssize_t per_row, bint packed,
                  bint is_double, Py_ssize_t items=64):
    """How many groups of column tiles cdist_reduce splits each row block's
    sweep into: enough work items (row blocks x groups) for `items`, at most
    one group per tile, and at most REDUCE_STATE (2^21) entries of per-group
    state beyond one group's (per_row entries a row: k for the k nearest, 32
    MiB with their indices; 1 for the log-sum-exp).

    The log-sum-exp's groups are combined in their order, so its `items`
    must be fixed (the default, enough for 64 threads): its result may not
    depend on the thread count.  The k nearest are the same whatever the
    grouping (a total order: distance, then index), so they can ask for a
    few items per thread: every extra group is k more entries a row to
    merge."""
    cdef Py_ssize_t TM = _cdist_tile_m(mA, mB, packed, 8 if is_double else 4)
    cdef Py_ssize_t ntm = (mA + TM - 1) // TM, ntn = (mB + TILE - 1) // TILE
    cdef Py_ssize_t g = (items + ntm - 1) // ntm
    g = min(g, ntn, max(1, REDUCE_STATE // max(1, mA * per_row)))
    return max(g, 1)


def cdist_reduce(const floating[:, ::1] A, const floating[:, ::1] B,
                 const floating[:, ::1] A0, const floating[:, ::1] B0,
                 const double[::1] na, const double[::1] nb,
                 floating[:, ::1] scratch, floating[:, ::1] rowbuf, double tau,
                 int take_sqrt, double scale, int n_threads, Py_ssize_t ngroups,
                 floating[:, :, ::1] kv=None, int64_t[:, :, ::1] ki=None,
                 bint largest=False, floating[:, ::1] dist_out=None,
                 int64_t[:, ::1] idx_out=None,
                 double[:, ::1] lm=None, double[:, ::1] ls=None,
                 const floating[::1] bw=None, double lscale=0.0,
                 floating[::1] lse_out=None,
                 const double[::1] wv=None, const floating[:, ::1] BT=None,
                 const double[:, ::1] Lm=None, floating[::1] Ap=None,
                 floating[::1] Bp=None):
    """cdist_tiles' sweep (the same tiles, operands and epilogue: the same
    entries, bit for bit), each tile row reduced as it is made instead of
    stored.  Work items are (row block, group of column tiles), ngroups
    (reduce_groups) groups per row block; each keeps its own state per row,
    combined once the sweep is done.  rowbuf: (n_threads, >= min(TILE, mB)).

    k nearest (kv given): kv, ki (ngroups, mA, k) hold each group's heap per
    row, filled by the caller with (NaN, INT64_MAX), which every entry beats;
    the merged, sorted result goes to dist_out, idx_out (mA, k).  largest:
    the k farthest (keys negated; NaN still last).

    log-sum-exp (lm given): lm, ls (ngroups, mA) each group's shift and sum
    (fl_pairwise_tpl.h lse_fold), filled by the caller with -inf and 0; bw
    the weights b (or None), lscale the factor of the distances; the result
    log(sum_j b_j exp(lscale D_ij)) goes to lse_out (mA,)."""
    cdef Py_ssize_t mA = A.shape[0], mB = B.shape[0], k = A.shape[1]
    if mA == 0 or mB == 0:
        return
    cdef bint topk = kv is not None
    cdef Py_ssize_t kk = kv.shape[2] if topk else 0
    if topk and (ki is None or dist_out is None or idx_out is None
                 or kv.shape[0] < ngroups or kv.shape[1] < mA or kk < 1
                 or ki.shape[0] != kv.shape[0] or ki.shape[1] != kv.shape[1]
                 or ki.shape[2] != kk or dist_out.shape[0] < mA or dist_out.shape[1] != kk
                 or idx_out.shape[0] < mA or idx_out.shape[1] != kk):
        raise ValueError("cdist_reduce: inconsistent k-nearest state or outputs")
    if not topk and (lm is None or ls is None or lse_out is None or lm.shape[0] < ngroups
                     or ls.shape[0] < ngroups or lm.shape[1] < mA or ls.shape[1] < mA
                     or lse_out.shape[0] < mA or (bw is not None and bw.shape[0] < mB)):
        raise ValueError("cdist_reduce: inconsistent log-sum-exp state or outputs")
    if ngroups < 1 or rowbuf.shape[1] < min(<Py_ssize_t>TILE, mB):
        raise ValueError("cdist_reduce: bad groups or row buffer")
    cdef bint packed = _use_panels(Ap, Bp, mA, mB, k, floating is double)
    cdef Py_ssize_t NR = FL_GEMM_NR_D if floating is double else FL_GEMM_NR_F
    cdef Py_ssize_t mpad = (mA + FL_GEMM_MR - 1) // FL_GEMM_MR * FL_GEMM_MR
    cdef Py_ssize_t npad = (mB + NR - 1) // NR * NR
    cdef Py_ssize_t TM = _cdist_tile_m(mA, mB, packed, sizeof(floating))
    cdef Py_ssize_t ntn = (mB + TILE - 1) // TILE
    cdef Py_ssize_t ntm = (mA + TM - 1) // TM
    cdef bint direct = BT is not None
    if not direct and scratch.shape[1] < min(TM, mA) * min(TILE, mB):
        raise ValueError("scratch too small for the tiles")
    cdef Py_ssize_t it, r, g, i0, j0, tm, tn, i, tj, ta, tb, tid, q
    cdef floating *c
    cdef floating *buf
    cdef const floating *pa = &A[0, 0]
    cdef const floating *pb = &B[0, 0]
    cdef const floating *pa0 = &A0[0, 0]
    cdef const floating *pb0 = &B0[0, 0]
    cdef const floating *pbt = &BT[0, 0] if direct else NULL
    cdef const double *pw = &wv[0] if wv is not None else NULL
    cdef const double *pL = &Lm[0, 0] if Lm is not None else NULL
    cdef const floating *pbw = &bw[0] if bw is not None else NULL
    cdef floating *pAp = &Ap[0] if packed else NULL
    cdef floating *pBp = &Bp[0] if packed else NULL
    cdef floating *hv
    cdef int64_t *hi
    cdef double M, S, mg
    if not direct:
        with nogil:
            _tiles_prologue(packed, pa, mA, pb, mB, k, pAp, pBp, &scratch[0, 0],
                            scratch.shape[0] * scratch.shape[1], n_threads)
    for it in prange(ntm * ngroups, nogil=True, schedule='dynamic', num_threads=n_threads):
        r = it // ngroups
        g = it % ngroups
        i0 = r * TM
        tm = min(TM, mA - i0)
        ta = g * ntn // ngroups
        tb = (g + 1) * ntn // ngroups
        tid = threadid()
        buf = &rowbuf[tid, 0]
        c = &scratch[tid, 0] if not direct else NULL
        for tj in range(ta, tb):
            j0 = tj * TILE
            tn = min(TILE, mB - j0)
            if not direct:
                _tile_cross(packed, tm, tn, k, i0, j0, pa, pb, pAp, mpad, pBp, npad, c)
            for i in range(tm):
                if direct:
                    _direct_row(buf, tn, pa0 + (i0 + i) * k, pbt + j0, mB, k, pw,
                                take_sqrt, scale, False)
                else:
                    _epilogue_row(buf, c + i * tn, tn, na[i0 + i], &nb[j0],
                                  pa0 + (i0 + i) * k, pb0 + j0 * k, k, pw, pL, tau,
                                  take_sqrt, scale, False)
                    if not packed:
                        memset(c + i * tn, 0, tn * sizeof(floating))
                if topk:
                    _topk_row(buf, tn, j0, &kv[g, i0 + i, 0], &ki[g, i0 + i, 0], kk, largest)
                elif floating is double:
                    lse_fold_d(buf, tn, (pbw + j0) if pbw != NULL else NULL, lscale,
                               &lm[g, i0 + i], &ls[g, i0 + i])
                else:
                    lse_fold_f(buf, tn, (pbw + j0) if pbw != NULL else NULL, <float>lscale,
                               &lm[g, i0 + i], &ls[g, i0 + i])
    # combine the groups, row by row, in group order
    for i in prange(mA, nogil=True, schedule='static', num_threads=n_threads):
        if topk:
            hv = &kv[0, i, 0]
            hi = &ki[0, i, 0]
            for g in range(1, ngroups):
                for q in range(kk):
                    _offer(hv, hi, kk, kv[g, i, q], ki[g, i, q])
            _heap_sort(hv, hi, kk)
            for q in range(kk):
                dist_out[i, q] = -hv[q] if largest else hv[q]
                idx_out[i, q] = hi[q]
        else:
            M = -INFINITY
            for g in range(ngroups):
                mg = lm[g, i]
                if mg != mg or M != M:
                    M = NAN
                elif mg > M:
                    M = mg
            if M != M or M == INFINITY or M == -INFINITY:
                lse_out[i] = <floating>M
            else:
                S = 0.0
                for g in range(ngroups):
                    S = S + ls[g, i] * exp(lm[g, i] - M)
                lse_out[i] = <floating>(M + log(S))


cdef enum:
    # rows of a band of lse_weights per partial of the weights' gradient
    LSE_WEIGHT_ROWS = 16


def lse_weights_blocks(Py_ssize_t rows):
    """How many partials (rows of `cs`) lse_weights needs for a band."""
    return (rows + LSE_WEIGHT_ROWS - 1) // LSE_WEIGHT_ROWS


def lse_weights(const floating[:, ::1] D, const floating[::1] lse, const floating[::1] g,
                const floating[::1] b, double scale, floating[:, ::1] W,
                double[:, ::1] cs, double[:, ::1] ws, double[::1] rs, int n_threads):
    """A band of cdist_logsumexp_backward (src/fl_pairwise_tpl.h
    lse_weights_row): W_ij = g_i scale b_j exp(scale D_ij - lse_i) (b None:
    1; 0 where b_j == 0); the weights' gradient sum_i g_i exp(...) per
    column and W's column sums, in double, one partial per LSE_WEIGHT_ROWS
    rows in cs and ws (lse_weights_blocks(rows), mB), zeroed here (the
    caller adds them in order); W's row sums in rs (rows,), double.  Blocks
    of rows on the threads: nothing depends on their count."""
    cdef Py_ssize_t R = D.shape[0], n = D.shape[1]
    cdef Py_ssize_t nb = (R + LSE_WEIGHT_ROWS - 1) // LSE_WEIGHT_ROWS
    cdef Py_ssize_t blk, i, i1
    cdef const floating *pb = &b[0] if b is not None else NULL
    if (W.shape[0] != R or W.shape[1] != n or lse.shape[0] != R or g.shape[0] != R
            or cs.shape[0] < nb or cs.shape[1] != n or ws.shape[0] < nb or ws.shape[1] != n
            or rs.shape[0] != R or (b is not None and b.shape[0] != n)):
        raise ValueError("lse_weights: inconsistent shapes")
    if R == 0 or n == 0:
        return
    for blk in prange(nb, nogil=True, schedule='static', num_threads=n_threads):
        memset(&cs[blk, 0], 0, n * sizeof(double))
        memset(&ws[blk, 0], 0, n * sizeof(double))
        i1 = min(R, (blk + 1) * LSE_WEIGHT_ROWS)
        for i in range(blk * LSE_WEIGHT_ROWS, i1):
            if floating is double:
                rs[i] = lse_weights_row_d(&D[i, 0], n, pb, scale, lse[i], g[i] * scale, g[i],
                                          &W[i, 0], &cs[blk, 0], &ws[blk, 0])
            else:
                rs[i] = lse_weights_row_f(&D[i, 0], n, pb, <float>scale, lse[i],
                                          <float>(g[i] * <float>scale), g[i], &W[i, 0],
                                          &cs[blk, 0], &ws[blk, 0])
