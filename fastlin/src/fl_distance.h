/*
 * Pairwise distance epilogue: turn one row of a GEMM tile of cross terms
 * into distances, and recompute exactly the entries where the GEMM identity
 * cannot be trusted.
 *
 *   d2 = |a|^2 + |b|^2 - 2 a.b      (a, b centred rows; the tile holds -2 a.b)
 *
 * The rounding error of that expression is about eps * sqrt(k) * s with
 * s = |a|^2 + |b|^2: relative to d2 it stays small while d2 is not much
 * smaller than s.  Entries with d2 < tau * s, and every pair involving a row
 * flagged non-finite, are recomputed as sum((a - b)^2) in double from the
 * original rows: near points, exact duplicates (0) and inf/nan rows (scipy's
 * inf/nan) are all exact; so are rows whose squared norm leaves the safe range
 * (the caller marks such rows by a NaN squared norm).  The GEMM writes a
 * per-thread scratch tile (in L2); the epilogue reads it and writes each
 * output entry once.  Short passes over a row that is in L1; each vectorizes
 * (sqrt needs -fno-math-errno, set by setup.py).
 */
#ifndef FL_DISTANCE_H
#define FL_DISTANCE_H
#include "fl_common.h"
#include "fl_gemm.h"
#include <float.h>

/* rows of at most this many columns skip GEMM (see fl_dist_direct_row) */
#define FL_DIRECT_K 16

/*
 * The tiles of _distance.pyx, defined here only: the kernels there read
 * them through cdef extern, the Python side through _distance.tile_width()
 * and cdist_tile_rows(), and the row functions below size their buffers by
 * FL_DIST_TILE.
 *
 * FL_DIST_TILE: the columns of every tile, and the rows of pdist's (BLAS
 * path) and the backward's.  A 256 x 256 float64 scratch tile (512 KiB)
 * stays in L2 between the GEMM that writes it and the epilogue that reads
 * it.  The backward packs each tile's W as one depth slice of the GEMM, so
 * the slice depth must be the tile width.
 */
#define FL_DIST_TILE 256
/* cdist's row blocks grow to scratch tiles of this many bytes (512 x 256
   float64, 1024 x 256 float32): fewer GEMM calls and packings of B. */
#define FL_DIST_TILE_BYTES (1 << 20)
/* pdist's tiles on fastlin's GEMM: square, and whole panels both ways (a
   tile's first row starts an MR-row panel, its first column an NR-column
   panel of either dtype), so every tile reads the operands packed once;
   224 = lcm(14, 32), the largest such size up to FL_DIST_TILE. */
#define FL_PDIST_PACKED_TILE 224

_Static_assert(FL_DIST_TILE % FL_GEMM_NR_D == 0 && FL_DIST_TILE % FL_GEMM_NR_F == 0,
               "FL_DIST_TILE: cdist's column tiles must start on whole GEMM panels");
_Static_assert(FL_GEMM_KC == FL_DIST_TILE,
               "FL_GEMM_KC must equal FL_DIST_TILE: the backward packs a tile's W as "
               "one depth slice and reads B's slices at tile offsets");
_Static_assert(FL_PDIST_PACKED_TILE % FL_GEMM_MR == 0
               && FL_PDIST_PACKED_TILE % FL_GEMM_NR_D == 0
               && FL_PDIST_PACKED_TILE % FL_GEMM_NR_F == 0,
               "FL_PDIST_PACKED_TILE must be a multiple of FL_GEMM_MR and of both NR");
_Static_assert(FL_PDIST_PACKED_TILE <= FL_DIST_TILE,
               "FL_PDIST_PACKED_TILE: the row functions hold at most FL_DIST_TILE entries");
_Static_assert(FL_DIST_TILE_BYTES % (FL_DIST_TILE * 8) == 0,
               "FL_DIST_TILE_BYTES must hold whole rows of FL_DIST_TILE float64s");

#include "fl_stream.h"

/* A sum of squares (double) whose square root would be wrong: inf (a
   distance beyond ~1.3e154 squares past DBL_MAX), below 2^-960 (squares of
   differences under ~1e-154 fall into the subnormals and lose their digits;
   above 2^-960 what they lose is below the sum's rounding) or 0 (every
   square underflowed, or a duplicate).  Such a distance is recomputed by
   fl_dist_scaled.  nan: not (the plain value stands). */
/* A square (double) whose root a float32 result must take from the double
   (fl_sqrt16_pd tests the square's float32 rounding instead, with v ==
   FLT_MAX included: the same roots); never for float64 results. */
static inline int fl_sq_beyond(double e, size_t tsize)
{
    return tsize == sizeof(float) && ((e > 0.0 && e < FLT_MIN) || e > FLT_MAX);
}

/* The float32 distance of a square e >= 0 held in double: the root of its
   float32 rounding (vsqrtps where vectorized), the double's own root where
   that rounding is beyond float32's normal range (fl_sq_beyond).  The
   scalar twin of fl_sqrt16_pd / fl_sqrt8_pd, for a row's tail. */
static inline float fl_root_f(double e)
{
    return fl_sq_beyond(e, sizeof(float)) ? (float)sqrt(e) : sqrtf((float)e);
}

static inline int fl_sq_unsafe(double e)
{
    return e == INFINITY || e < 0x1p-960;
}

/* The distance sqrt(scale sum_q w_q (a_q - b_q)^2) (w NULL: all ones), or
   with L (k x k lower triangular, VI = L L^T) sqrt(scale |L^T (a - b)|^2),
   for a pair whose plain sum of squares is unsafe, as hypot does: the
   differences divided by the largest one (zero weights left out), then the
   terms (weighted, or whitened by L) by the largest of them, the root taken,
   then both multiplied back.  Distances from ~1e-308 to ~1e308 keep their
   digits where scipy's and torch's give 0 or inf.  b's elements bs apart.
   An infinite difference gives inf, all-zero differences 0. */
#define FL_SCALED_TPL(T, SFX)                                                             \
/* u_j of the scaled pair: L^T (d / m) or sqrt(w) d / m (d = a - b) */          \
static inline double fl_scaled_u_##SFX(const T *a, const T *b, ptrdiff_t bs, ptrdiff_t k, \
                                       const double *w, const double *L, double m,        \
                                       ptrdiff_t j)                                       \
{                                                                                         \
    if (L) {                                                                              \
        double z = 0.0;                                                                   \
        for (ptrdiff_t i = j; i < k; i++)                                                 \
            z += L[i * k + j] * (((double)a[i] - (double)b[i * bs]) / m);                 \
        return z;                                                                         \
    }                                                                                     \
    if (w && !(w[j] > 0)) return 0.0;     /* (d_j / m may overflow: m skips it) */ \
    return (w ? sqrt(w[j]) : 1.0) * (((double)a[j] - (double)b[j * bs]) / m);              \
}                                                                                         \
                                                                                          \
/* The distance as m * dn, returning dn and setting *pm = m (the largest    \
   weighted difference; dn of order 1 up to the weights): a caller that needs \
   (a - b) / d forms ((a - b) / m) / dn, never the subnormal d itself.  m 0:  \
   a zero distance; m inf: an infinite one (dn 1). */                          \
static double fl_dist_parts_##SFX(const T *a, const T *b, ptrdiff_t bs, ptrdiff_t k,      \
                                  const double *w, const double *L, double scale,         \
                                  double *pm)                                             \
{                                                                                         \
    double m = 0.0, m2 = 0.0, s = 0.0;                                                    \
    for (ptrdiff_t q = 0; q < k; q++) {       /* zero weights do not count */        \
        double d = fabs((double)a[q] - (double)b[q * bs]);                                \
        if (d > m && (!w || w[q] > 0)) m = d;                                             \
    }                                                                                     \
    *pm = m;                                                                              \
    if (m == 0.0 || m == INFINITY) return 1.0;                                            \
    /* then by the largest weighted / whitened term: where a zero weight or a \
       null direction of VI meets the largest difference, the terms over m  \
       alone can underflow (a 1e100 difference there left a 1e-146 distance \
       at 0) */                                                               \
    for (ptrdiff_t j = 0; j < k; j++) {                                                   \
        double u = fabs(fl_scaled_u_##SFX(a, b, bs, k, w, L, m, j));                      \
        if (u > m2) m2 = u;                                                               \
    }                                                                                     \
    if (m2 == 0.0) {                                                                      \
        *pm = 0.0;                                                                        \
        return 1.0;                                                                       \
    }                                                                                     \
    for (ptrdiff_t j = 0; j < k; j++) {                                                   \
        double u = fl_scaled_u_##SFX(a, b, bs, k, w, L, m, j) / m2;                       \
        s += u * u;                                                                       \
    }                                                                                     \
    return m2 * sqrt(s * scale);                                                          \
}                                                                                         \
                                                                                          \
static double fl_dist_scaled_##SFX(const T *a, const T *b, ptrdiff_t bs, ptrdiff_t k,     \
                                   const double *w, const double *L, double scale)        \
{                                                                                         \
    double m, dn = fl_dist_parts_##SFX(a, b, bs, k, w, L, scale, &m);                     \
    return m * dn;                                                                        \
}                                                                                         \
                                                                                          \
/* ta[q] += t_q, tb[q * tbs] -= t_q (either may be NULL) for the term        \
   t = g (a - b) / d of a pair whose g / d may overflow or whose d is         \
   subnormal: formed as g ((a - b) / m) / dn from fl_dist_parts. */           \
static void fl_term_scaled_##SFX(double g, const T *a, const T *b, ptrdiff_t bs,           \
                                 ptrdiff_t k, double *ta, double *tb, ptrdiff_t tbs)      \
{                                                                                         \
    double m, dn = fl_dist_parts_##SFX(a, b, bs, k, NULL, NULL, 1.0, &m);                 \
    if (m == 0.0) return;                     /* a zero distance: the zero subgradient */ \
    for (ptrdiff_t q = 0; q < k; q++) {                                                   \
        double t = m == INFINITY ? g * ((double)a[q] - (double)b[q * bs]) / m             \
                                 : g * ((((double)a[q] - (double)b[q * bs]) / m) / dn);   \
        if (ta) ta[q] += t;                                                               \
        if (tb) tb[q * tbs] -= t;                                                         \
    }                                                                                     \
}                                                                                         \

FL_SCALED_TPL(double, d)
FL_SCALED_TPL(float, f)

/* the entries of a direct-path row whose squares are unsafe (fl_sq_unsafe:
   their roots, faithfully rounded, below 2^-480 or inf) recomputed scaled */
static __attribute__((noinline, cold, unused)) void fl_direct_fix_d(double *r, ptrdiff_t nb,
                                                            const double *a, const double *bt,
                                                            ptrdiff_t ldb, ptrdiff_t k,
                                                            const double *w, double scale)
{
    for (ptrdiff_t j = 0; j < nb; j++)
        if (r[j] < 0x1p-480 || r[j] == INFINITY)
            r[j] = fl_dist_scaled_d(a, bt + j, ldb, k, w, NULL, scale);
}

/* r[0..n) := sqrt(r[0..n)), r >= 0 or NaN.  The square root pass was the
   largest part of the epilogue (vsqrtpd: ~2 cycles an element; the divider
   is the bottleneck).  With AVX-512: the 14-bit reciprocal square root
   estimate, two Newton steps e <- e (3/2 - (x/2) e^2) to full precision
   (2^-14 -> 2^-27 -> 2^-53), then y = x e and one
   correction y + (e/2)(x - y^2): faithfully rounded (within 1 ulp; 1 in
   12000 random doubles differs from the correctly rounded value), on the FMA ports instead of the
   divider.  x e e is formed as (x e) e so no intermediate overflows, and
   lanes with x == 0, inf or NaN keep x (= their square root); a vector with
   a subnormal lane (whose x/2 would round) takes vsqrtpd.  Elsewhere, and
   for the tail of a row, libm's sqrt. */
#if FL_AVX512
/* the square root of 8 doubles, as described above */
static inline __attribute__((always_inline)) __m512d fl_vsqrt8_d(__m512d x)
{
    const __m512d half = _mm512_set1_pd(0.5), three_half = _mm512_set1_pd(1.5);
    const __m512d zero = _mm512_setzero_pd(), inf = _mm512_set1_pd(INFINITY);
    const __m512d tiny = _mm512_set1_pd(0x1p-1022);
    if (_mm512_cmp_pd_mask(x, tiny, _CMP_LT_OQ) & _mm512_cmp_pd_mask(x, zero, _CMP_GT_OQ))
        return _mm512_sqrt_pd(x);                         /* subnormal: x / 2 inexact */
    __m512d hx = _mm512_mul_pd(half, x);
    __m512d e = _mm512_rsqrt14_pd(x);
    e = _mm512_mul_pd(e, _mm512_fnmadd_pd(_mm512_mul_pd(hx, e), e, three_half));
    e = _mm512_mul_pd(e, _mm512_fnmadd_pd(_mm512_mul_pd(hx, e), e, three_half));
    __m512d y = _mm512_mul_pd(x, e);
    y = _mm512_fmadd_pd(_mm512_mul_pd(half, e), _mm512_fnmadd_pd(y, y, x), y);
    __mmask8 ok = _mm512_cmp_pd_mask(x, zero, _CMP_GT_OQ) & _mm512_cmp_pd_mask(x, inf, _CMP_LT_OQ);
    return _mm512_mask_blend_pd(ok, x, y);
}

static ptrdiff_t fl_sqrt512_d(double *r, ptrdiff_t n)
{
    ptrdiff_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm512_storeu_pd(r + j, fl_vsqrt8_d(_mm512_loadu_pd(r + j)));
    return j;
}

/* 16 floats <-> two vectors of 8 doubles */
#define FL_LO8(v) _mm512_cvtps_pd(_mm512_castps512_ps256(v))
#define FL_HI8(v) _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1))
#define FL_JOIN16(a, b) _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(a)), \
                                           _mm512_cvtpd_ps(b), 1)

/* The square roots of 16 squared distances s0 (lanes 0-7) and s1 (8-15),
   held in double, as float32: from their float32 rounding v (vsqrtps, 4x
   cheaper than two vsqrtpd), except in the lanes where v is beyond float32's
   normal range while the root need not be (a distance of 2e19 squares to inf
   in float32, one of 1e-25 to 0): those take the root of the double, then
   round.  The test is on v (two float compares, not six double ones: a third
   of the epilogue's compares): v below FLT_MIN or at least FLT_MAX (a square
   just past FLT_MAX rounds down to it, and its root rounds up to 2^64); a
   lane whose square is exactly 0 takes the double root too, which is also
   0.  Lane by lane, so an entry's value never depends on its neighbours;
   the double roots only when a lane needs one. */
static inline __m512 fl_sqrt16_pd(__m512 v, __m512d s0, __m512d s1)
{
    const __m512 lo = _mm512_set1_ps(FLT_MIN), hi = _mm512_set1_ps(FLT_MAX);
    __m512 r = _mm512_sqrt_ps(v);
    __mmask16 o = (__mmask16)(_mm512_cmp_ps_mask(v, lo, _CMP_LT_OQ)
                              | _mm512_cmp_ps_mask(v, hi, _CMP_GE_OQ));
    if (o)
        r = _mm512_mask_blend_ps(o, r, FL_JOIN16(_mm512_sqrt_pd(s0), _mm512_sqrt_pd(s1)));
    return r;
}

/*
 * The epilogue's main pass in one sweep, AVX-512: r[j] = the distance of
 * entry j, or a value the exact path will overwrite (the return value
 * counts those).  Same arithmetic as the portable passes of fl_dist_row
 * (d2 and its test in double, max(d2, 0) * scale, the square root at the
 * output's precision), fused so that r is written once; the row's tail
 * runs through the same vector code under a mask, so every entry of a row
 * gets the same treatment wherever the row starts.
 */
static int64_t fl_dist512_d(double *r, const double *c, ptrdiff_t nb, double na,
                                   const double *nbv, double tau, int take_sqrt, double scale)
{
    const __m512d vna = _mm512_set1_pd(na), vtau = _mm512_set1_pd(tau);
    const __m512d vsc = _mm512_set1_pd(scale), zero = _mm512_setzero_pd();
    int64_t nflag = 0;
    for (ptrdiff_t j = 0; j < nb; j += 8) {
        __mmask8 m = nb - j >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (nb - j)) - 1);
        __m512d s = _mm512_add_pd(vna, _mm512_maskz_loadu_pd(m, nbv + j));
        __m512d d2 = _mm512_add_pd(s, _mm512_maskz_loadu_pd(m, c + j));
        nflag += __builtin_popcount(
            (unsigned)(m & ~_mm512_cmp_pd_mask(d2, _mm512_mul_pd(vtau, s), _CMP_GE_OQ)));
        __m512d v = _mm512_max_pd(d2, zero);                     /* NaN -> 0, as ?: */
        if (scale != 1.0) v = _mm512_mul_pd(v, vsc);
        if (take_sqrt) v = fl_vsqrt8_d(v);
        _mm512_mask_storeu_pd(r + j, m, v);
    }
    return nflag;
}

static int64_t fl_dist512_f(float *r, const float *c, ptrdiff_t nb, double na,
                                   const double *nbv, double tau, int take_sqrt, double scale)
{
    const __m512d vna = _mm512_set1_pd(na), vtau = _mm512_set1_pd(tau);
    const __m512d vsc = _mm512_set1_pd(scale), zero = _mm512_setzero_pd();
    int64_t nflag = 0;
    for (ptrdiff_t j = 0; j < nb; j += 16) {
        ptrdiff_t left = nb - j;
        __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __mmask8 m0 = (__mmask8)(m & 0xff), m1 = (__mmask8)(m >> 8);
        __m512 cv = _mm512_maskz_loadu_ps(m, c + j);
        __m512d s0 = _mm512_add_pd(vna, _mm512_maskz_loadu_pd(m0, nbv + j));
        __m512d s1 = _mm512_add_pd(vna, _mm512_maskz_loadu_pd(m1, nbv + j + 8));
        __m512d d0 = _mm512_add_pd(s0, FL_LO8(cv)), d1 = _mm512_add_pd(s1, FL_HI8(cv));
        unsigned bad = (unsigned)(m0 & ~_mm512_cmp_pd_mask(d0, _mm512_mul_pd(vtau, s0), _CMP_GE_OQ))
                     | ((unsigned)(m1 & ~_mm512_cmp_pd_mask(d1, _mm512_mul_pd(vtau, s1), _CMP_GE_OQ)) << 8);
        nflag += __builtin_popcount(bad);
        __m512d e0 = _mm512_max_pd(d0, zero), e1 = _mm512_max_pd(d1, zero);
        if (scale != 1.0) {
            e0 = _mm512_mul_pd(e0, vsc);
            e1 = _mm512_mul_pd(e1, vsc);
        }
        __m512 v = FL_JOIN16(e0, e1);
        if (take_sqrt) v = fl_sqrt16_pd(v, e0, e1);
        _mm512_mask_storeu_ps(r + j, m, v);
    }
    return nflag;
}

/*
 * The direct path (few columns) in one sweep, AVX-512: per vector of
 * entries, the sum over the k columns in registers (the portable loop keeps
 * it in an array and makes k + 2 passes over it), then scale and square
 * root.  Same arithmetic and order per entry as fl_dist_direct_row's loops.
 */
/* The loop of fl_direct512_d, compiled twice (check a constant): with and
   without the running min and max of the squares that take_sqrt 2 asks for
   (even these two operations a vector cost ~10% at (10000, 3), one thread,
   so only data that can have such pairs asks for them). */
static inline __attribute__((always_inline)) void
fl_direct512_loop_d(double *r, ptrdiff_t nb, const double *a, const double *bt, ptrdiff_t ldb,
                    ptrdiff_t k, const double *w, int take_sqrt, double scale, const int check,
                    __m512d *pmn, __m512d *pmx)
{
    const __m512d vsc = _mm512_set1_pd(scale);
    __m512d vmn = _mm512_set1_pd(INFINITY), vmx = _mm512_setzero_pd();
    for (ptrdiff_t j = 0; j < nb; j += 8) {
        __mmask8 m = nb - j >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (nb - j)) - 1);
        __m512d acc = _mm512_setzero_pd();
        for (ptrdiff_t q = 0; q < k; q++) {
            __m512d d = _mm512_sub_pd(_mm512_set1_pd(a[q]),
                                      _mm512_maskz_loadu_pd(m, bt + q * ldb + j));
            __m512d wd = w ? _mm512_mul_pd(_mm512_set1_pd(w[q]), d) : d;
            acc = _mm512_fmadd_pd(wd, d, acc);
        }
        __m512d v = _mm512_mul_pd(acc, vsc);
        if (check) {
            vmn = _mm512_mask_min_pd(vmn, m, v, vmn);
            vmx = _mm512_mask_max_pd(vmx, m, v, vmx);
        }
        if (take_sqrt) v = fl_vsqrt8_d(v);
        _mm512_mask_storeu_pd(r + j, m, v);
    }
    *pmn = vmn;
    *pmx = vmx;
}

static void fl_direct512_d(double *r, ptrdiff_t nb, const double *a, const double *bt,
                                   ptrdiff_t ldb, ptrdiff_t k, const double *w, int take_sqrt,
                                   double scale)
{
    __m512d vmn, vmx;
    if (take_sqrt != 2) {
        fl_direct512_loop_d(r, nb, a, bt, ldb, k, w, take_sqrt, scale, 0, &vmn, &vmx);
        return;
    }
    fl_direct512_loop_d(r, nb, a, bt, ldb, k, w, 1, scale, 1, &vmn, &vmx);
    /* a square out of fl_sq_unsafe's range somewhere in the row: its
       distances recomputed scaled */
    if (_mm512_reduce_min_pd(vmn) < 0x1p-960 || _mm512_reduce_max_pd(vmx) == INFINITY)
        fl_direct_fix_d(r, nb, a, bt, ldb, k, w, scale);
}

/* float32: every lane's arithmetic is its own (no shared sqrt path), so the
   vectors may start where the output's cache lines do: a masked head up to
   the first 64-byte boundary of dst, then whole lines -- written with
   non-temporal stores when streaming -- and a masked tail, all straight into
   dst (no row buffer, no copy pass). */
static void fl_direct512_f(float *dst, ptrdiff_t nb, const float *a, const float *bt,
                                   ptrdiff_t ldb, ptrdiff_t k, const double *w, int take_sqrt,
                                   double scale, int stream)
{
    const __m512d vsc = _mm512_set1_pd(scale);
    ptrdiff_t head = stream ? (ptrdiff_t)((-(uintptr_t)dst & 63) / sizeof(float)) : 0;
    if (head > nb) head = nb;
    for (ptrdiff_t j = 0; j < nb;) {
        ptrdiff_t len = j == 0 && head ? head : (nb - j >= 16 ? 16 : nb - j);
        __mmask16 m = len == 16 ? (__mmask16)0xffff : (__mmask16)((1u << len) - 1);
        __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
        for (ptrdiff_t q = 0; q < k; q++) {
            __m512d aq = _mm512_set1_pd((double)a[q]);
            __m512 b = _mm512_maskz_loadu_ps(m, bt + q * ldb + j);
            __m512d d0 = _mm512_sub_pd(aq, FL_LO8(b)), d1 = _mm512_sub_pd(aq, FL_HI8(b));
            __m512d wd0 = d0, wd1 = d1;
            if (w) {
                __m512d wq = _mm512_set1_pd(w[q]);
                wd0 = _mm512_mul_pd(wq, d0);
                wd1 = _mm512_mul_pd(wq, d1);
            }
            acc0 = _mm512_fmadd_pd(wd0, d0, acc0);
            acc1 = _mm512_fmadd_pd(wd1, d1, acc1);
        }
        acc0 = _mm512_mul_pd(acc0, vsc);
        acc1 = _mm512_mul_pd(acc1, vsc);
        __m512 v = FL_JOIN16(acc0, acc1);
        if (take_sqrt) v = fl_sqrt16_pd(v, acc0, acc1);
        if (stream && len == 16 && !((uintptr_t)(dst + j) & 63))
            _mm512_stream_ps(dst + j, v);
        else
            _mm512_mask_storeu_ps(dst + j, m, v);
        j += len;
    }
}

/* Store a vector of weights, add it to the column sums cs and to the row's
   accumulators (float32: the two halves in double), under the tail mask. */
static inline __attribute__((always_inline)) void
fl_wsum8(double *w, double *cs, __mmask8 m, __m512d wv, __m512d *acc)
{
    _mm512_mask_storeu_pd(w, m, wv);
    _mm512_mask_storeu_pd(cs, m, _mm512_add_pd(_mm512_maskz_loadu_pd(m, cs), wv));
    *acc = _mm512_add_pd(*acc, wv);
}

static inline __attribute__((always_inline)) void
fl_wsum16(float *w, double *cs, __mmask16 m, __m512 wv, __m512d *acc0, __m512d *acc1)
{
    __mmask8 m0 = (__mmask8)(m & 0xff), m1 = (__mmask8)(m >> 8);
    __m512d w0 = FL_LO8(wv), w1 = FL_HI8(wv);
    _mm512_mask_storeu_ps(w, m, wv);
    _mm512_mask_storeu_pd(cs, m0, _mm512_add_pd(_mm512_maskz_loadu_pd(m0, cs), w0));
    _mm512_mask_storeu_pd(cs + 8, m1, _mm512_add_pd(_mm512_maskz_loadu_pd(m1, cs + 8), w1));
    *acc0 = _mm512_add_pd(*acc0, w0);
    *acc1 = _mm512_add_pd(*acc1, w1);
}

/*
 * The weights W = G / D of the Euclidean backward given the forward's
 * distances, one row, AVX-512 (fl_bwd_weights_row's fast path, same
 * arithmetic): w = g / d (0 where d == 0), the near pairs' w set to 0, the
 * column sums cs += w and the row's sum in double.  float32: w in float32
 * (as the GEMMs read it), the trust test and the sums in double.
 */
static ptrdiff_t fl_bwdw512_d(const double *g, const double *d, double *w, ptrdiff_t n,
                                     double na, const double *nbv, double tau, double *cs,
                                     double *rs)
{
    const __m512d vna = _mm512_set1_pd(na), vtau = _mm512_set1_pd(tau);
    const __m512d zero = _mm512_setzero_pd();
    __m512d acc = zero;
    ptrdiff_t nflag = 0;
    for (ptrdiff_t j = 0; j < n; j += 8) {
        __mmask8 m = n - j >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (n - j)) - 1);
        __m512d dv = _mm512_maskz_loadu_pd(m, d + j), gv = _mm512_maskz_loadu_pd(m, g + j);
        __m512d s = _mm512_add_pd(vna, _mm512_maskz_loadu_pd(m, nbv + j));
        __m512d c = _mm512_sub_pd(_mm512_mul_pd(dv, dv), s);
        __mmask8 ok = _mm512_cmp_pd_mask(_mm512_add_pd(s, c), _mm512_mul_pd(vtau, s), _CMP_GE_OQ);
        __m512d wv = _mm512_maskz_div_pd(m & _mm512_cmp_pd_mask(dv, zero, _CMP_NEQ_UQ), gv, dv);
        __mmask8 near = m & ~ok & _mm512_cmp_pd_mask(wv, zero, _CMP_NEQ_UQ);
        wv = _mm512_mask_mov_pd(wv, near, zero);
        nflag += __builtin_popcount((unsigned)near);
        fl_wsum8(w + j, cs + j, m, wv, &acc);
    }
    *rs = _mm512_reduce_add_pd(acc);
    return nflag;
}

static ptrdiff_t fl_bwdw512_f(const float *g, const float *d, float *w, ptrdiff_t n,
                                     double na, const double *nbv, double tau, double *cs,
                                     double *rs)
{
    const __m512d vna = _mm512_set1_pd(na), vtau = _mm512_set1_pd(tau);
    const __m512 zf = _mm512_setzero_ps();
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    ptrdiff_t nflag = 0;
    for (ptrdiff_t j = 0; j < n; j += 16) {
        ptrdiff_t left = n - j;
        __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __mmask8 m0 = (__mmask8)(m & 0xff), m1 = (__mmask8)(m >> 8);
        __m512 dv = _mm512_maskz_loadu_ps(m, d + j), gv = _mm512_maskz_loadu_ps(m, g + j);
        __m512d s0 = _mm512_add_pd(vna, _mm512_maskz_loadu_pd(m0, nbv + j));
        __m512d s1 = _mm512_add_pd(vna, _mm512_maskz_loadu_pd(m1, nbv + j + 8));
        __m512d d0 = FL_LO8(dv), d1 = FL_HI8(dv);
        /* c = d^2 - s rounded to float32, as the float32 tile holds it */
        __m512d c0 = _mm512_cvtps_pd(_mm512_cvtpd_ps(_mm512_sub_pd(_mm512_mul_pd(d0, d0), s0)));
        __m512d c1 = _mm512_cvtps_pd(_mm512_cvtpd_ps(_mm512_sub_pd(_mm512_mul_pd(d1, d1), s1)));
        unsigned ok = (unsigned)_mm512_cmp_pd_mask(_mm512_add_pd(s0, c0), _mm512_mul_pd(vtau, s0), _CMP_GE_OQ)
                    | ((unsigned)_mm512_cmp_pd_mask(_mm512_add_pd(s1, c1), _mm512_mul_pd(vtau, s1), _CMP_GE_OQ) << 8);
        __m512 wv = _mm512_maskz_div_ps(m & _mm512_cmp_ps_mask(dv, zf, _CMP_NEQ_UQ), gv, dv);
        __mmask16 near = (__mmask16)(m & ~ok & _mm512_cmp_ps_mask(wv, zf, _CMP_NEQ_UQ));
        wv = _mm512_mask_mov_ps(wv, near, zf);
        nflag += __builtin_popcount((unsigned)near);
        fl_wsum16(w + j, cs + j, m, wv, &acc0, &acc1);
    }
    *rs = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
    return nflag;
}

/* One tile row of the no-dist backward without near pairs, in one pass:
   d := g / d (0 where d == 0; fl_grad_over_dist_row's values), cs += d in
   double, *rs = the row's sum.  Two passes (the division, then the column
   sums) took 10% of a (2048, 512) float32 backward at t=2. */
static void fl_gdivcs512_d(const double *g, double *d, ptrdiff_t n, double *cs,
                                   double *rs)
{
    const __m512d zero = _mm512_setzero_pd();
    __m512d acc = zero;
    for (ptrdiff_t j = 0; j < n; j += 8) {
        __mmask8 m = n - j >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (n - j)) - 1);
        __m512d dv = _mm512_maskz_loadu_pd(m, d + j);
        __m512d wv = _mm512_maskz_div_pd(m & _mm512_cmp_pd_mask(dv, zero, _CMP_NEQ_UQ),
                                         _mm512_maskz_loadu_pd(m, g + j), dv);
        fl_wsum8(d + j, cs + j, m, wv, &acc);
    }
    *rs = _mm512_reduce_add_pd(acc);
}

static void fl_gdivcs512_f(const float *g, float *d, ptrdiff_t n, double *cs,
                                   double *rs)
{
    const __m512 zf = _mm512_setzero_ps();
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    for (ptrdiff_t j = 0; j < n; j += 16) {
        ptrdiff_t left = n - j;
        __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __m512 dv = _mm512_maskz_loadu_ps(m, d + j);
        __m512 wv = _mm512_maskz_div_ps(m & _mm512_cmp_ps_mask(dv, zf, _CMP_NEQ_UQ),
                                        _mm512_maskz_loadu_ps(m, g + j), dv);
        fl_wsum16(d + j, cs + j, m, wv, &acc0, &acc1);
    }
    *rs = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
}

/* w[j] = g[j] / sqrt(s[j]) (0 where s[j] == 0), the few-columns backward's
   weights: g times the reciprocal square root, from the 14-bit estimate and
   two Newton steps on the FMA ports (as fl_vsqrt8_d) instead of a square root
   and a division, which both queue on the divider: measured 1.4x faster for
   a (10000, 3) float32 backward at one thread (float64 1.08x: bound by
   reading its grad).  Within 2 ulp of g / sqrt(s).  A vector with a lane
   outside [2^-960, inf) -- 0, tiny (fl_sq_unsafe), inf, nan -- takes
   g / sqrt(s) itself (0 at s == 0); returns whether one did (the caller then
   recomputes the unsafe lanes' distances). */
static int fl_rsqrtdiv512(double *w, const double *s, const double *g, ptrdiff_t n)
{
    const __m512d half = _mm512_set1_pd(0.5), three_half = _mm512_set1_pd(1.5);
    const __m512d zero = _mm512_setzero_pd(), tiny = _mm512_set1_pd(0x1p-960);
    const __m512d inf = _mm512_set1_pd(INFINITY);
    int slow = 0;
    for (ptrdiff_t j = 0; j < n; j += 8) {
        __mmask8 m = n - j >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (n - j)) - 1);
        __m512d x = _mm512_mask_loadu_pd(_mm512_set1_pd(1.0), m, s + j);
        __m512d gv = _mm512_maskz_loadu_pd(m, g + j), r;
        __mmask8 ok = _mm512_cmp_pd_mask(x, tiny, _CMP_GE_OQ) & _mm512_cmp_pd_mask(x, inf, _CMP_LT_OQ);
        if (ok == 0xff) {
            __m512d hx = _mm512_mul_pd(half, x), e = _mm512_rsqrt14_pd(x);
            e = _mm512_mul_pd(e, _mm512_fnmadd_pd(_mm512_mul_pd(hx, e), e, three_half));
            e = _mm512_mul_pd(e, _mm512_fnmadd_pd(_mm512_mul_pd(hx, e), e, three_half));
            r = _mm512_mul_pd(gv, e);
        } else {
            r = _mm512_maskz_div_pd(_mm512_cmp_pd_mask(x, zero, _CMP_NEQ_UQ), gv,
                                    _mm512_sqrt_pd(x));
            slow = 1;
        }
        _mm512_mask_storeu_pd(w + j, m, r);
    }
    return slow;
}
#endif

#if !FL_AVX512 && defined(__AVX2__) && defined(__FMA__)
#define FL_USE_256 1
#define FL_256_CALL(x) (x)
/*
 * The epilogue's main pass at the avx2 level, in one sweep as fl_dist512:
 * left to the portable passes below, gcc and clang vectorize the first but
 * not the float32 range test and its conditional double roots, and the row
 * took 1.6x as long as its tile's GEMM (cdist of (4096, 64) float32, one
 * thread).  Whole vectors here, the row's tail in the portable arithmetic;
 * every operation is the portable one lane by lane (the square roots
 * correctly rounded, vsqrtpd / vsqrtps), so each entry's value is the
 * portable pass's, wherever it sits.
 */
/* fl_sqrt16_pd on 8 lanes: the roots of v, the float32 rounding of the
   squares e0 (lanes 0-3) and e1 (4-7), except in the lanes where v is beyond
   float32's normal range, which take the double's root */
FL_INLINE __m256 fl_sqrt8_pd(__m256 v, __m256d e0, __m256d e1)
{
    const __m256 lo = _mm256_set1_ps(FLT_MIN), hi = _mm256_set1_ps(FLT_MAX);
    __m256 o = _mm256_or_ps(_mm256_cmp_ps(v, lo, _CMP_LT_OQ), _mm256_cmp_ps(v, hi, _CMP_GE_OQ));
    __m256 r = _mm256_sqrt_ps(v);
    if (_mm256_movemask_ps(o))
        r = _mm256_blendv_ps(r, _mm256_set_m128(_mm256_cvtpd_ps(_mm256_sqrt_pd(e1)),
                                                _mm256_cvtpd_ps(_mm256_sqrt_pd(e0))), o);
    return r;
}

static int64_t fl_dist256_d(double *r, const double *c, ptrdiff_t nb, double na,
                            const double *nbv, double tau, int take_sqrt, double scale)
{
    const __m256d vna = _mm256_set1_pd(na), vtau = _mm256_set1_pd(tau);
    const __m256d vsc = _mm256_set1_pd(scale), zero = _mm256_setzero_pd();
    int64_t nflag = 0;
    ptrdiff_t j = 0;
    for (; j + 4 <= nb; j += 4) {
        __m256d s = _mm256_add_pd(vna, _mm256_loadu_pd(nbv + j));
        __m256d d2 = _mm256_add_pd(s, _mm256_loadu_pd(c + j));
        nflag += __builtin_popcount(
            0xfu & ~(unsigned)_mm256_movemask_pd(_mm256_cmp_pd(d2, _mm256_mul_pd(vtau, s),
                                                               _CMP_GE_OQ)));
        __m256d v = _mm256_max_pd(d2, zero);                     /* NaN -> 0, as ?: */
        v = _mm256_mul_pd(v, vsc);
        if (take_sqrt) v = _mm256_sqrt_pd(v);
        _mm256_storeu_pd(r + j, v);
    }
    for (; j < nb; j++) {
        double s = na + nbv[j];
        double d2 = s + c[j];
        nflag += (int64_t)!(d2 >= tau * s);
        double e = (d2 > 0.0 ? d2 : 0.0) * scale;
        r[j] = take_sqrt ? sqrt(e) : e;
    }
    return nflag;
}

/* float32: d2 in double (two vectors of 4), the roots as fl_sqrt8_pd */
static int64_t fl_dist256_f(float *r, const float *c, ptrdiff_t nb, double na,
                            const double *nbv, double tau, int take_sqrt, double scale)
{
    const __m256d vna = _mm256_set1_pd(na), vtau = _mm256_set1_pd(tau);
    const __m256d vsc = _mm256_set1_pd(scale), zero = _mm256_setzero_pd();
    int64_t nflag = 0;
    ptrdiff_t j = 0;
    for (; j + 8 <= nb; j += 8) {
        __m256 cv = _mm256_loadu_ps(c + j);
        __m256d s0 = _mm256_add_pd(vna, _mm256_loadu_pd(nbv + j));
        __m256d s1 = _mm256_add_pd(vna, _mm256_loadu_pd(nbv + j + 4));
        __m256d d0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(cv)));
        __m256d d1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(cv, 1)));
        unsigned ok = (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(d0, _mm256_mul_pd(vtau, s0), _CMP_GE_OQ))
                    | (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(d1, _mm256_mul_pd(vtau, s1), _CMP_GE_OQ)) << 4;
        nflag += __builtin_popcount(0xffu & ~ok);
        __m256d e0 = _mm256_mul_pd(_mm256_max_pd(d0, zero), vsc);
        __m256d e1 = _mm256_mul_pd(_mm256_max_pd(d1, zero), vsc);
        __m256 v = _mm256_set_m128(_mm256_cvtpd_ps(e1), _mm256_cvtpd_ps(e0));
        if (take_sqrt) v = fl_sqrt8_pd(v, e0, e1);
        _mm256_storeu_ps(r + j, v);
    }
    for (; j < nb; j++) {
        double s = na + nbv[j];
        double d2 = s + (double)c[j];
        nflag += (int64_t)!(d2 >= tau * s);
        double e = (d2 > 0.0 ? d2 : 0.0) * scale;
        r[j] = take_sqrt ? fl_root_f(e) : (float)e;
    }
    return nflag;
}

/* The backward's weight passes at the avx2 level (fl_bwdw512, fl_gdivcs512
   on 4 / 8 lanes): the portable loops sum the row in one scalar chain, which
   keeps gcc and clang from vectorizing them, and took twice the avx512
   level's time in cdist_backward(dist=).  Entries the portable
   arithmetic's; the row's sum over whole vectors in 4 double lanes, added
   in a fixed order, then the tail in order (the same for any thread). */
FL_INLINE double fl_hsum256(__m256d a)
{
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

FL_INLINE void fl_wsum4(double *w, double *cs, __m256d wv, __m256d *acc)
{
    _mm256_storeu_pd(w, wv);
    _mm256_storeu_pd(cs, _mm256_add_pd(_mm256_loadu_pd(cs), wv));
    *acc = _mm256_add_pd(*acc, wv);
}

FL_INLINE void fl_wsum8f(float *w, double *cs, __m256 wv, __m256d *acc)
{
    __m256d w0 = _mm256_cvtps_pd(_mm256_castps256_ps128(wv));
    __m256d w1 = _mm256_cvtps_pd(_mm256_extractf128_ps(wv, 1));
    _mm256_storeu_ps(w, wv);
    _mm256_storeu_pd(cs, _mm256_add_pd(_mm256_loadu_pd(cs), w0));
    _mm256_storeu_pd(cs + 4, _mm256_add_pd(_mm256_loadu_pd(cs + 4), w1));
    *acc = _mm256_add_pd(*acc, _mm256_add_pd(w0, w1));
}

static ptrdiff_t fl_bwdw256_d(const double *g, const double *d, double *w, ptrdiff_t n,
                              double na, const double *nbv, double tau, double *cs,
                              double *rs)
{
    const __m256d vna = _mm256_set1_pd(na), vtau = _mm256_set1_pd(tau);
    const __m256d zero = _mm256_setzero_pd();
    __m256d acc = zero;
    ptrdiff_t nflag = 0, j = 0;
    for (; j + 4 <= n; j += 4) {
        __m256d dv = _mm256_loadu_pd(d + j), gv = _mm256_loadu_pd(g + j);
        __m256d s = _mm256_add_pd(vna, _mm256_loadu_pd(nbv + j));
        __m256d c = _mm256_sub_pd(_mm256_mul_pd(dv, dv), s);
        __m256d ok = _mm256_cmp_pd(_mm256_add_pd(s, c), _mm256_mul_pd(vtau, s), _CMP_GE_OQ);
        __m256d wv = _mm256_and_pd(_mm256_div_pd(gv, dv), _mm256_cmp_pd(dv, zero, _CMP_NEQ_UQ));
        __m256d near = _mm256_andnot_pd(ok, _mm256_cmp_pd(wv, zero, _CMP_NEQ_UQ));
        wv = _mm256_andnot_pd(near, wv);
        nflag += __builtin_popcount((unsigned)_mm256_movemask_pd(near));
        fl_wsum4(w + j, cs + j, wv, &acc);
    }
    double sum = fl_hsum256(acc);
    for (; j < n; j++) {
        double s = na + nbv[j], dj = d[j];
        double cj = dj * dj - s;
        double wj = d[j] != 0 ? g[j] / d[j] : 0.0;
        if (!(s + cj >= tau * s) && wj != 0) {
            wj = 0;
            nflag++;
        }
        w[j] = wj;
        cs[j] += wj;
        sum += wj;
    }
    *rs = sum;
    return nflag;
}

static ptrdiff_t fl_bwdw256_f(const float *g, const float *d, float *w, ptrdiff_t n,
                              double na, const double *nbv, double tau, double *cs,
                              double *rs)
{
    const __m256d vna = _mm256_set1_pd(na), vtau = _mm256_set1_pd(tau);
    const __m256 zf = _mm256_setzero_ps();
    __m256d acc = _mm256_setzero_pd();
    ptrdiff_t nflag = 0, j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 dv = _mm256_loadu_ps(d + j), gv = _mm256_loadu_ps(g + j);
        __m256d s0 = _mm256_add_pd(vna, _mm256_loadu_pd(nbv + j));
        __m256d s1 = _mm256_add_pd(vna, _mm256_loadu_pd(nbv + j + 4));
        __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(dv));
        __m256d d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(dv, 1));
        /* c = d^2 - s rounded to float32, as the float32 tile holds it */
        __m256d c0 = _mm256_cvtps_pd(_mm256_cvtpd_ps(_mm256_sub_pd(_mm256_mul_pd(d0, d0), s0)));
        __m256d c1 = _mm256_cvtps_pd(_mm256_cvtpd_ps(_mm256_sub_pd(_mm256_mul_pd(d1, d1), s1)));
        __m256 ok = _mm256_set_m128(
            _mm256_cvtpd_ps(_mm256_cmp_pd(_mm256_add_pd(s1, c1), _mm256_mul_pd(vtau, s1), _CMP_GE_OQ)),
            _mm256_cvtpd_ps(_mm256_cmp_pd(_mm256_add_pd(s0, c0), _mm256_mul_pd(vtau, s0), _CMP_GE_OQ)));
        __m256 wv = _mm256_and_ps(_mm256_div_ps(gv, dv), _mm256_cmp_ps(dv, zf, _CMP_NEQ_UQ));
        __m256 near = _mm256_andnot_ps(ok, _mm256_cmp_ps(wv, zf, _CMP_NEQ_UQ));
        wv = _mm256_andnot_ps(near, wv);
        nflag += __builtin_popcount((unsigned)_mm256_movemask_ps(near));
        fl_wsum8f(w + j, cs + j, wv, &acc);
    }
    double sum = fl_hsum256(acc);
    for (; j < n; j++) {
        double s = na + nbv[j], dj = (double)d[j];
        float cj = (float)(dj * dj - s);
        float wj = d[j] != 0 ? g[j] / d[j] : 0.0f;
        if (!(s + (double)cj >= tau * s) && wj != 0) {
            wj = 0;
            nflag++;
        }
        w[j] = wj;
        cs[j] += (double)wj;
        sum += (double)wj;
    }
    *rs = sum;
    return nflag;
}

static void fl_gdivcs256_d(const double *g, double *d, ptrdiff_t n, double *cs, double *rs)
{
    const __m256d zero = _mm256_setzero_pd();
    __m256d acc = zero;
    ptrdiff_t j = 0;
    for (; j + 4 <= n; j += 4) {
        __m256d dv = _mm256_loadu_pd(d + j);
        __m256d wv = _mm256_and_pd(_mm256_div_pd(_mm256_loadu_pd(g + j), dv),
                                   _mm256_cmp_pd(dv, zero, _CMP_NEQ_UQ));
        fl_wsum4(d + j, cs + j, wv, &acc);
    }
    double sum = fl_hsum256(acc);
    for (; j < n; j++) {
        double wj = d[j] != 0 ? g[j] / d[j] : 0.0;
        d[j] = wj;
        cs[j] += wj;
        sum += wj;
    }
    *rs = sum;
}

static void fl_gdivcs256_f(const float *g, float *d, ptrdiff_t n, double *cs, double *rs)
{
    const __m256 zf = _mm256_setzero_ps();
    __m256d acc = _mm256_setzero_pd();
    ptrdiff_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 dv = _mm256_loadu_ps(d + j);
        __m256 wv = _mm256_and_ps(_mm256_div_ps(_mm256_loadu_ps(g + j), dv),
                                  _mm256_cmp_ps(dv, zf, _CMP_NEQ_UQ));
        fl_wsum8f(d + j, cs + j, wv, &acc);
    }
    double sum = fl_hsum256(acc);
    for (; j < n; j++) {
        float wj = d[j] != 0 ? g[j] / d[j] : 0.0f;
        d[j] = wj;
        cs[j] += (double)wj;
        sum += (double)wj;
    }
    *rs = sum;
}

/* The direct path (few columns) at the avx2 level, as fl_direct512: the sum
   over the k columns in registers, then scale and square root, 4 (float64)
   or 8 (float32) entries a vector, into the row buffer r.  The portable
   loops' float32 range test and unsafe-square test are scalar and took
   two thirds of a (4096, 3) float32 cdist.  Vector lanes and the scalar
   tail do the same operations (fma, correctly rounded roots), so an entry's
   value does not depend on where the row starts. */
static void fl_direct256_d(double *r, ptrdiff_t nb, const double *a, const double *bt,
                           ptrdiff_t ldb, ptrdiff_t k, const double *w, int take_sqrt,
                           double scale)
{
    const __m256d vsc = _mm256_set1_pd(scale);
    __m256d vmn = _mm256_set1_pd(INFINITY), vmx = _mm256_setzero_pd();
    double mn = INFINITY, mx = 0.0;
    ptrdiff_t j = 0;
    for (; j + 4 <= nb; j += 4) {
        __m256d acc = _mm256_setzero_pd();
        for (ptrdiff_t q = 0; q < k; q++) {
            __m256d d = _mm256_sub_pd(_mm256_set1_pd(a[q]), _mm256_loadu_pd(bt + q * ldb + j));
            __m256d wd = w ? _mm256_mul_pd(_mm256_set1_pd(w[q]), d) : d;
            acc = _mm256_fmadd_pd(wd, d, acc);
        }
        __m256d v = _mm256_mul_pd(acc, vsc);
        vmn = _mm256_min_pd(vmn, v);
        vmx = _mm256_max_pd(vmx, v);
        if (take_sqrt) v = _mm256_sqrt_pd(v);
        _mm256_storeu_pd(r + j, v);
    }
    for (; j < nb; j++) {
        double acc = 0.0;
        for (ptrdiff_t q = 0; q < k; q++) {
            double d = a[q] - bt[q * ldb + j];
            acc = fma(w ? w[q] * d : d, d, acc);
        }
        double v = acc * scale;
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
        r[j] = take_sqrt ? sqrt(v) : v;
    }
    if (take_sqrt != 2)
        return;
    {
        double l[4], h[4];
        _mm256_storeu_pd(l, vmn);
        _mm256_storeu_pd(h, vmx);
        for (int i = 0; i < 4; i++) {
            mn = l[i] < mn ? l[i] : mn;
            mx = h[i] > mx ? h[i] : mx;
        }
    }
    /* a square out of fl_sq_unsafe's range somewhere in the row: its
       distances recomputed scaled */
    if (mn < 0x1p-960 || mx == INFINITY)
        fl_direct_fix_d(r, nb, a, bt, ldb, k, w, scale);
}

/* float32: the sums in double (two vectors of 4), the roots as
   fl_sqrt8_pd.  A float32 result needs no unsafe-square pass: a root
   below 2^-480 is 0 in float32 either way, and float32 inputs cannot
   square to inf in double. */
static void fl_direct256_f(float *r, ptrdiff_t nb, const float *a, const float *bt,
                           ptrdiff_t ldb, ptrdiff_t k, const double *w, int take_sqrt,
                           double scale)
{
    const __m256d vsc = _mm256_set1_pd(scale);
    ptrdiff_t j = 0;
    for (; j + 8 <= nb; j += 8) {
        __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
        for (ptrdiff_t q = 0; q < k; q++) {
            __m256d aq = _mm256_set1_pd((double)a[q]);
            __m256 b = _mm256_loadu_ps(bt + q * ldb + j);
            __m256d d0 = _mm256_sub_pd(aq, _mm256_cvtps_pd(_mm256_castps256_ps128(b)));
            __m256d d1 = _mm256_sub_pd(aq, _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1)));
            __m256d wd0 = d0, wd1 = d1;
            if (w) {
                __m256d wq = _mm256_set1_pd(w[q]);
                wd0 = _mm256_mul_pd(wq, d0);
                wd1 = _mm256_mul_pd(wq, d1);
            }
            acc0 = _mm256_fmadd_pd(wd0, d0, acc0);
            acc1 = _mm256_fmadd_pd(wd1, d1, acc1);
        }
        acc0 = _mm256_mul_pd(acc0, vsc);
        acc1 = _mm256_mul_pd(acc1, vsc);
        __m256 v = _mm256_set_m128(_mm256_cvtpd_ps(acc1), _mm256_cvtpd_ps(acc0));
        if (take_sqrt) v = fl_sqrt8_pd(v, acc0, acc1);
        _mm256_storeu_ps(r + j, v);
    }
    for (; j < nb; j++) {
        double acc = 0.0;
        for (ptrdiff_t q = 0; q < k; q++) {
            double d = (double)a[q] - (double)bt[q * ldb + j];
            acc = fma(w ? w[q] * d : d, d, acc);
        }
        double e = acc * scale;
        r[j] = take_sqrt ? fl_root_f(e) : (float)e;
    }
}
/* w[j] = g[j] / sqrt(s[j]) (0 where s[j] == 0), as fl_rsqrtdiv512 at the
   avx2 level: AVX2 has no double reciprocal square root, so the estimate is
   float32's (12 bits, for s within float32's normal range) and three
   Newton steps in double (2^-12 -> 2^-23 -> 2^-45 -> rounding), on the FMA
   ports instead of a square root and a division that both queue on the
   divider.  Within 2 ulp of g / sqrt(s).  A vector with a lane outside
   [2^-120, 2^120] takes g / sqrt(s) itself and the return is 1 (the caller
   then checks every entry for unsafe squares).  The row's tail goes through
   the same vector code on a padded copy, so every entry gets the same
   arithmetic wherever it sits.  (s and g are not const: gcc's
   -Wmaybe-uninitialized reads a const pointer to the caller's row buffers
   as a read of them before their first write.) */
FL_INLINE __m256d fl_rsqrtdiv4(__m256d x, __m256d gv, int *slow)
{
    const __m256d half = _mm256_set1_pd(0.5), three_half = _mm256_set1_pd(1.5);
    const __m256d zero = _mm256_setzero_pd();
    const __m256d lo = _mm256_set1_pd(0x1p-120), hi = _mm256_set1_pd(0x1p120);
    __m256d ok = _mm256_and_pd(_mm256_cmp_pd(x, lo, _CMP_GE_OQ), _mm256_cmp_pd(x, hi, _CMP_LE_OQ));
    if (_mm256_movemask_pd(ok) != 0xf) {
        *slow = 1;
        return _mm256_and_pd(_mm256_div_pd(gv, _mm256_sqrt_pd(x)),
                             _mm256_cmp_pd(x, zero, _CMP_NEQ_UQ));
    }
    __m256d hx = _mm256_mul_pd(half, x);
    __m256d e = _mm256_cvtps_pd(_mm_rsqrt_ps(_mm256_cvtpd_ps(x)));
    e = _mm256_mul_pd(e, _mm256_fnmadd_pd(_mm256_mul_pd(hx, e), e, three_half));
    e = _mm256_mul_pd(e, _mm256_fnmadd_pd(_mm256_mul_pd(hx, e), e, three_half));
    e = _mm256_mul_pd(e, _mm256_fnmadd_pd(_mm256_mul_pd(hx, e), e, three_half));
    return _mm256_mul_pd(gv, e);
}

static int fl_rsqrtdiv256(double *w, double *s, double *g, ptrdiff_t n)
{
    int slow = 0;
    ptrdiff_t j = 0;
    for (; j + 4 <= n; j += 4)
        _mm256_storeu_pd(w + j, fl_rsqrtdiv4(_mm256_loadu_pd(s + j), _mm256_loadu_pd(g + j), &slow));
    if (j < n) {
        double xs[4] = {1.0, 1.0, 1.0, 1.0}, gs[4] = {0.0, 0.0, 0.0, 0.0}, ws[4];
        for (ptrdiff_t i = 0; i < n - j; i++) {
            xs[i] = s[j + i];
            gs[i] = g[j + i];
        }
        _mm256_storeu_pd(ws, fl_rsqrtdiv4(_mm256_loadu_pd(xs), _mm256_loadu_pd(gs), &slow));
        for (ptrdiff_t i = 0; i < n - j; i++) w[j + i] = ws[i];
    }
    return slow;
}
#define FL_DIRECT256_d(c, r, nb, a, bt, ldb, k, w, take_sqrt, scale, stream)              \
    do {                                                                                  \
        fl_direct256_d(r, nb, a, bt, ldb, k, w, take_sqrt, scale);                        \
        fl_store_row_d(c, r, nb, stream);                                                 \
    } while (0)
#define FL_DIRECT256_f(c, r, nb, a, bt, ldb, k, w, take_sqrt, scale, stream)              \
    do {                                                                                  \
        fl_direct256_f(r, nb, a, bt, ldb, k, w, take_sqrt, scale);                        \
        fl_store_row_f(c, r, nb, stream);                                                 \
    } while (0)
#else
#define FL_USE_256 0
#define FL_256_CALL(x) 0
#define FL_DIRECT256_d(c, r, nb, a, bt, ldb, k, w, take_sqrt, scale, stream) ((void)0)
#define FL_DIRECT256_f(c, r, nb, a, bt, ldb, k, w, take_sqrt, scale, stream) ((void)0)
#endif

static inline void fl_sqrt_row_d(double *r, ptrdiff_t n)
{
    ptrdiff_t j = 0;
#if FL_AVX512
    j = fl_sqrt512_d(r, n);
#endif
    for (; j < n; j++) r[j] = sqrt(r[j]);
}

/* float32: vsqrtps is cheap enough (the same trick measured no faster) */
static inline void fl_sqrt_row_f(float *r, ptrdiff_t n)
{
    for (ptrdiff_t j = 0; j < n; j++) r[j] = sqrtf(r[j]);
}

#if FL_AVX512
#define FL_USE_512 1
#define FL_512_CALL(x) (x)
/* float64 goes through the row buffer (its vectors start at the row's first
   entry: the square root's vector path is shared by 8 lanes), float32
   straight into dst */
#define FL_DIRECT512_d(c, r, nb, a, bt, ldb, k, w, take_sqrt, scale, stream)              \
    do {                                                                                  \
        fl_direct512_d(r, nb, a, bt, ldb, k, w, take_sqrt, scale);                        \
        fl_store_row_d(c, r, nb, stream);                                                 \
    } while (0)
#define FL_DIRECT512_f(c, r, nb, a, bt, ldb, k, w, take_sqrt, scale, stream)              \
    fl_direct512_f(c, nb, a, bt, ldb, k, w, take_sqrt, scale, stream)
#else
#define FL_USE_512 0
#define FL_512_CALL(x) 0
#define FL_DIRECT512_d(c, r, nb, a, bt, ldb, k, w, take_sqrt, scale, stream) ((void)0)
#define FL_DIRECT512_f(c, r, nb, a, bt, ldb, k, w, take_sqrt, scale, stream) ((void)0)
#endif

#define FL_DIST_TPL(T, SFX)                                                               \
/* sum_i w_i (a_i - b_i)^2 in double (w NULL: all ones): the difference is      \
   taken before any weighting, so near points keep their digits.  With L        \
   (k x k lower triangular, row-major: VI = L L^T), |L^T (a - b)|^2 instead,    \
   over L's lower triangle only (an infinite difference never meets its zeros). \
*/                                                                                        \
static double fl_sqdist_exact_##SFX(const T *a, const T *b, ptrdiff_t k, const double *w, \
                                    const double *L)                                      \
{                                                                                         \
    double s = 0.0;                                                                       \
    if (L) {                                                                              \
        for (ptrdiff_t j = 0; j < k; j++) {                                               \
            double z = 0.0;                                                               \
            for (ptrdiff_t i = j; i < k; i++)                                             \
                z += L[i * k + j] * ((double)a[i] - (double)b[i]);                        \
            s += z * z;                                                                   \
        }                                                                                 \
        return s;                                                                         \
    }                                                                                     \
    for (ptrdiff_t i = 0; i < k; i++) {                                                   \
        double d = (double)a[i] - (double)b[i];                                           \
        s += (w ? w[i] : 1.0) * d * d;                                                    \
    }                                                                                     \
    return s;                                                                             \
}                                                                                         \
                                                                                          \
/* One row of a tile.  c[0..nb): -2 a.b_j from the GEMM (scratch, left as it   \
   is); dst[0..nb): the distances (sqrt'ed when take_sqrt, times `scale`).      \
   na = |a|^2, nbv[j] = |b_j|^2 (centred), NaN for a row flagged non-finite or \
   out of range, which fails `d2 >= tau s` and so takes the exact path; a0 and  \
   b0 + j*k are the rows the exact path reads.  stream: write dst with          \
   non-temporal stores (a large output that will not be read back soon).       \
   Returns how many entries it recomputed. */                                   \
static ptrdiff_t fl_dist_row_##SFX(T *FL_RESTRICT dst, const T *FL_RESTRICT c,         \
                                      ptrdiff_t nb, double na,                            \
                                      const double *FL_RESTRICT nbv,                      \
                                      const T *a0, const T *b0, ptrdiff_t k,              \
                                      const double *w, const double *L, double tau,       \
                                      int take_sqrt, double scale, int stream)            \
{                                                                                         \
    /* d2 in double (a float32 tile cannot hold every squared distance of a   \
       float32 result: 2e19^2 overflows; the exact ones stay double too), the   \
       square root at the output's precision: a float32 sqrt is 4x cheaper than \
       a double one and the sqrt pass dominated the epilogue (ties within 1     \
       ulp of the double-sqrt result).  Uniform lanes per loop so each          \
       vectorizes. */                                                           \
    T r[FL_DIST_TILE];                                                                  \
    int64_t nflag = 0;      /* int64: the lane width of d2, so the loop vectorizes */      \
    if (FL_USE_512) {                                                                     \
        nflag = FL_512_CALL(fl_dist512_##SFX(r, c, nb, na, nbv, tau, take_sqrt, scale));  \
    } else if (FL_USE_256) {                                                              \
        nflag = FL_256_CALL(fl_dist256_##SFX(r, c, nb, na, nbv, tau, take_sqrt, scale));  \
    } else {                                                                              \
        for (ptrdiff_t j = 0; j < nb; j++) {                                              \
            double s = na + nbv[j];                                                       \
            double d2 = s + (double)c[j];                                                 \
            nflag += (int64_t)!(d2 >= tau * s);                                           \
            r[j] = (T)((d2 > 0.0 ? d2 : 0.0) * scale);                                    \
        }                                                                                 \
        if (take_sqrt) {                                                                  \
            fl_sqrt_row_##SFX(r, nb);                                                     \
            for (ptrdiff_t j = 0; j < nb; j++) {   /* as fl_sqrt16_pd */                 \
                double d2 = na + nbv[j] + (double)c[j];                                   \
                double e = (d2 > 0.0 ? d2 : 0.0) * scale;                                 \
                if (fl_sq_beyond(e, sizeof(T))) r[j] = (T)sqrt(e);                        \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
    ptrdiff_t nexact = 0;                                                                 \
    if (nflag)                                                                            \
        for (ptrdiff_t j = 0; j < nb; j++) {                                              \
            double s = na + nbv[j];                                                       \
            double d2 = s + (double)c[j];                                                 \
            if (d2 >= tau * s) continue;                                                  \
            double e = fl_sqdist_exact_##SFX(a0, b0 + j * k, k, w, L) * scale;            \
            if (take_sqrt)                                                                \
                e = fl_sq_unsafe(e) ? fl_dist_scaled_##SFX(a0, b0 + j * k, 1, k, w, L, scale) \
                                    : sqrt(e);                                            \
            r[j] = (T)e;                                                                  \
            nexact++;                                                                     \
        }                                                                                 \
    fl_store_row_##SFX(dst, r, nb, stream);                                               \
    return nexact;                                                                        \
}                                                                                         \
                                                                                          \
/* Few columns (k <= FL_DIRECT_K): GEMM cannot pay for itself, and the    \
   direct sum is exact anyway.  c[j] = dist(a, b_j) with the k x ldb       \
   transposed rows bt, vectorized across j; accumulated in double. */      \
static void fl_dist_direct_row_##SFX(T *FL_RESTRICT c, ptrdiff_t nb,                  \
                                        const T *FL_RESTRICT a,                            \
                                        const T *FL_RESTRICT bt, ptrdiff_t ldb,            \
                                        ptrdiff_t k, const double *w, int take_sqrt,       \
                                        double scale, int stream)                          \
{                                                                                         \
    double acc[FL_DIST_TILE];                                                           \
    T r[FL_DIST_TILE];                                                                  \
    if (FL_USE_512) {                                                                     \
        FL_DIRECT512_##SFX(c, r, nb, a, bt, ldb, k, w, take_sqrt, scale, stream);         \
        return;                                                                           \
    }                                                                                     \
    if (FL_USE_256) {                                                                     \
        FL_DIRECT256_##SFX(c, r, nb, a, bt, ldb, k, w, take_sqrt, scale, stream);         \
        return;                                                                           \
    }                                                                                     \
    for (ptrdiff_t j = 0; j < nb; j++) acc[j] = 0.0;                                      \
    for (ptrdiff_t q = 0; q < k; q++) {                                                   \
        const double aq = (double)a[q], wq = w ? w[q] : 1.0;                              \
        const T *br = bt + q * ldb;                                                       \
        for (ptrdiff_t j = 0; j < nb; j++) {                                              \
            double d = aq - (double)br[j];                                                \
            acc[j] += wq * d * d;                                                         \
        }                                                                                 \
    }                                                                                     \
    for (ptrdiff_t j = 0; j < nb; j++) r[j] = (T)(acc[j] * scale);                        \
    if (take_sqrt) {                                                                      \
        fl_sqrt_row_##SFX(r, nb);                                                         \
        for (ptrdiff_t j = 0; j < nb; j++) {    /* as fl_sqrt16_pd */                    \
            if (fl_sq_beyond(acc[j] * scale, sizeof(T))) r[j] = (T)sqrt(acc[j] * scale);  \
            if (take_sqrt == 2 && fl_sq_unsafe(acc[j] * scale))                           \
                r[j] = (T)fl_dist_scaled_##SFX(a, bt + j, ldb, k, w, NULL, scale);        \
        }                                                                                 \
    }                                                                                     \
    fl_store_row_##SFX(c, r, nb, stream);                                                 \
}

/* sum of t[0..n) in a fixed order: 16 lanes (lane i sums the t[j] with j = i
   mod 16 over whole blocks of 16), then adjacent lanes pairwise, then the
   tail in order.  The lanes are 16 / FL_VL_d independent vectors: with one
   (4 lanes at gcc's avx2) the adds form one chain, and its latency took a
   third of a (4096, 3) float32 cdist_backward.  The same order at every
   level and with every compiler. */
#define FL_LANESUM_N 16
static inline double fl_lanesum(const double *t, ptrdiff_t n)
{
    enum { NACC = FL_LANESUM_N / FL_VL_d };
    fl_vd acc[NACC];
    ptrdiff_t j = 0;
    _Pragma("GCC unroll 8")
    for (int i = 0; i < NACC; i++) acc[i] = vsplat_d(0);
    for (; j + FL_LANESUM_N <= n; j += FL_LANESUM_N) {
        _Pragma("GCC unroll 8")
        for (int i = 0; i < NACC; i++) acc[i] += vld_d(t + j + i * FL_VL_d);
    }
    double s[FL_LANESUM_N];
    memcpy(s, acc, sizeof s);
    for (int w = 1; w < FL_LANESUM_N; w *= 2)
        for (int i = 0; i < FL_LANESUM_N; i += 2 * w) s[i] += s[i + w];
    double tot = s[0];
    for (; j < n; j++) tot += t[j];
    return tot;
}

/*
 * The Euclidean backward for few columns (k <= FL_DIRECT_K), one row a
 * against nb rows given transposed (bt: k x ldb): d_j = |a - b_j| directly
 * in double, w_j = g_j / d_j (0 at d_j = 0, the zero subgradient; nan for a
 * nan distance, as the tiled path), and every
 * term w_j (a - b_j) from the difference -- no GEMM form, so nothing
 * cancels, near points included:
 *   ga[q] += sum_j w_j (a_q - b_jq)          (fixed order: fl_lanesum)
 *   pb[q * ldp + j] -= w_j (a_q - b_jq)      (pb NULL: skipped)
 */
#define FL_BWD_DIRECT_TPL(T, SFX)                                                         \
static void fl_bwd_direct_row_##SFX(const T *FL_RESTRICT a, const T *FL_RESTRICT bt,   \
                                       ptrdiff_t ldb, ptrdiff_t nb, ptrdiff_t k,          \
                                       const T *FL_RESTRICT g, double *FL_RESTRICT ga,    \
                                       double *FL_RESTRICT pb, ptrdiff_t ldp)             \
{                                                                                         \
    double acc[FL_DIST_TILE], w[FL_DIST_TILE], t[FL_DIST_TILE];                     \
    for (ptrdiff_t j = 0; j < nb; j++) acc[j] = 0.0;                                      \
    for (ptrdiff_t q = 0; q < k; q++) {                                                   \
        const double aq = (double)a[q];                                                   \
        const T *br = bt + q * ldb;                                                       \
        for (ptrdiff_t j = 0; j < nb; j++) {                                              \
            double dd = aq - (double)br[j];                                               \
            acc[j] += dd * dd;                                                            \
        }                                                                                 \
    }                                                                                     \
    /* w = g / dist, 0 at dist == 0 (as fl_grad_over_dist: nan stays nan):     \
       fl_rsqrtdiv512 / 256 where AVX-512 / AVX2 is, else the division on     \
       whole vectors,                                                          \
       the zero lanes selected away (written as a conditional, the division    \
       stayed scalar -- gcc sinks it into the branch -- and took half the time \
       of a (10000, 3) float32 backward). */                                    \
    ptrdiff_t jv = 0;                                                                     \
    int unsafe = 1;                                                                       \
    if (FL_USE_512) {                                                                     \
        for (ptrdiff_t j = 0; j < nb; j++) t[j] = (double)g[j];                           \
        unsafe = FL_512_CALL(fl_rsqrtdiv512(w, acc, t, nb));                              \
        jv = nb;                                                                          \
    } else if (FL_USE_256) {                                                              \
        for (ptrdiff_t j = 0; j < nb; j++) t[j] = (double)g[j];                           \
        unsafe = FL_256_CALL(fl_rsqrtdiv256(w, acc, t, nb));                              \
        jv = nb;                                                                          \
    } else {                                                                              \
        for (ptrdiff_t j = 0; j < nb; j++) {                                              \
            w[j] = sqrt(acc[j]);                                                          \
            t[j] = (double)g[j];                                                          \
        }                                                                                 \
    }                                                                                     \
    for (; jv + FL_VL_d <= nb; jv += FL_VL_d) {                                           \
        fl_vd dv = vld_d(w + jv);                                                         \
        vst_d(w + jv, vsel_d(vne_d(dv, vsplat_d(0)), vld_d(t + jv) / dv, vsplat_d(0)));       \
    }                                                                                     \
    for (; jv < nb; jv++) w[jv] = w[jv] != 0.0 ? t[jv] / w[jv] : 0.0;                    \
    /* distances whose squares overflowed or underflowed: out of w (g / d     \
       itself may overflow for a subnormal d), their terms                    \
       g ((a - b) / d) from the scaled distance after the others */            \
    ptrdiff_t nu = 0;                                                                     \
    if (unsafe)                                                                           \
        for (ptrdiff_t j = 0; j < nb; j++) {                                              \
            acc[j] = fl_sq_unsafe(acc[j]) ? 1.0 : 0.0;     /* now: a flag */             \
            if (acc[j] != 0.0) {                                                          \
                w[j] = 0.0;                                                               \
                nu++;                                                                     \
            }                                                                             \
        }                                                                                 \
    for (ptrdiff_t q = 0; q < k; q++) {                                                   \
        const double aq = (double)a[q];                                                   \
        const T *br = bt + q * ldb;                                                       \
        for (ptrdiff_t j = 0; j < nb; j++) t[j] = w[j] * (aq - (double)br[j]);            \
        ga[q] += fl_lanesum(t, nb);                                                       \
        if (pb) {                                                                         \
            double *pq = pb + q * ldp;                                                    \
            for (ptrdiff_t j = 0; j < nb; j++) pq[j] -= t[j];                             \
        }                                                                                 \
    }                                                                                     \
    for (ptrdiff_t j = 0; nu && j < nb; j++)                                              \
        if (acc[j] != 0.0)                                                                \
            fl_term_scaled_##SFX((double)g[j], a, bt + j, ldb, k, ga, pb ? pb + j : NULL, ldp); \
}

FL_BWD_DIRECT_TPL(double, d)
FL_BWD_DIRECT_TPL(float, f)

FL_DIST_TPL(double, d)
FL_DIST_TPL(float, f)

/*
 * The Euclidean backward's weights for one row: d[j] := g[j] / d[j] (0 where
 * d[j] == 0, the zero subgradient), returning their sum in double.  Vector
 * loop: the division runs on every lane and the select drops the d == 0 ones.
 */
#define FL_GDIV_TPL(T, SFX, VT, VL, ACC)                                                  \
static double fl_grad_over_dist_row_##SFX(const T *FL_RESTRICT g, T *FL_RESTRICT d,    \
                                             ptrdiff_t n)                                 \
{                                                                                         \
    const VT zero = vsplat_##SFX(0);                                                      \
    ACC acc = acc_zero_##SFX();                                                           \
    ptrdiff_t j = 0;                                                                      \
    for (; j + VL <= n; j += VL) {                                                        \
        VT dv = vld_##SFX(d + j);                                                         \
        VT w = vsel_##SFX(vne_##SFX(dv, zero), vld_##SFX(g + j) / dv, zero);                        \
        vst_##SFX(d + j, w);                                                              \
        acc_add_##SFX(&acc, w);                                                           \
    }                                                                                     \
    double s = acc_sum_##SFX(acc);                                                        \
    for (; j < n; j++) {                                                                  \
        T w = d[j] != 0 ? g[j] / d[j] : 0;                                                \
        d[j] = w;                                                                         \
        s += (double)w;                                                                   \
    }                                                                                     \
    return s;                                                                             \
}                                                                                         \
                                                                                          \
/* The backward's exact path, for one tile row.  The GEMM form of the        \
   gradient, rowsum(W) a_i - sum_j W_ij b_j, cancels digits when W_ij = g/d   \
   is large (near points: an error of eps |a| / d).  So every entry the       \
   forward recomputed exactly (the same trust test on the same values) with  \
   W_ij != 0 is taken out of W (set to 0 before the GEMMs and the sums) and   \
   its term t = W_ij (a_i - b_j) formed from the difference in double:        \
   ta[0..k) += t (row i's share), tb[j*k..] -= t (column j's). */             \
static void fl_bwd_exact_row_##SFX(T *FL_RESTRICT W, const T *FL_RESTRICT c,          \
                                      const T *g, ptrdiff_t nb, double na,                \
                                      const double *FL_RESTRICT nbv, double tau,          \
                                      const T *a0, const T *b0, ptrdiff_t k,              \
                                      double *FL_RESTRICT ta, double *FL_RESTRICT tb)     \
{                                                                                         \
    for (ptrdiff_t j = 0; j < nb; j++) {                                                  \
        double s = na + nbv[j];                                                           \
        double d2 = s + (double)c[j];                                                     \
        if (d2 >= tau * s || W[j] == 0) continue;                                         \
        double wj = (double)W[j], gj = (double)g[j];                                      \
        W[j] = 0;                                                                         \
        const T *bj = b0 + j * k;                                                         \
        double *tbj = tb + j * k;                                                         \
        /* g / d overflowed, or d's square left double's range (subnormal     \
           distances): the term from the scaled differences */                \
        if (isfinite(gj) && (isinf(wj)                                                    \
                             || fl_sq_unsafe(fl_sqdist_exact_##SFX(a0, bj, k, NULL, NULL)))) { \
            fl_term_scaled_##SFX(gj, a0, bj, 1, k, ta, tbj, 1);                           \
            continue;                                                                     \
        }                                                                                 \
        for (ptrdiff_t q = 0; q < k; q++) {                                               \
            double t = wj * ((double)a0[q] - (double)bj[q]);                              \
            ta[q] += t;                                                                   \
            tbj[q] -= t;                                                                  \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* sum of w[0..n) in double (rows with exact-path entries only: scalar) */     \
static double fl_row_sum_##SFX(const T *w, ptrdiff_t n)                                \
{                                                                                         \
    double s = 0.0;                                                                       \
    for (ptrdiff_t j = 0; j < n; j++) s += (double)w[j];                                  \
    return s;                                                                             \
}                                                                                         \
                                                                                          \
/* sum_j x[j]^2 in double, the GEMM rows' squared norms: the vector layer's  */          \
/* accumulator (as normalize's sum of squares), the tail zero padded.  The    */          \
/* order depends on k only, never on the thread or the row's place.          */          \
static double fl_sqnorm_##SFX(const T *FL_RESTRICT x, ptrdiff_t k)                     \
{                                                                                         \
    ACC acc = acc_zero_##SFX();                                                           \
    ptrdiff_t j = 0;                                                                      \
    for (; j + VL <= k; j += VL) {                                                        \
        VT v = vld_##SFX(x + j);                                                          \
        acc_addmul_##SFX(&acc, v, v);                                                     \
    }                                                                                     \
    if (j < k) {                                                                          \
        VT v = vldpad_##SFX(x + j, k - j, 0);                                             \
        acc_addmul_##SFX(&acc, v, v);                                                     \
    }                                                                                     \
    return acc_sum_##SFX(acc);                                                            \
}                                                                                         \
                                                                                          \
/* The Euclidean backward given the forward's distances (cdist_backward's   \
   dist=), one row of W = G / D: w[j] = g[j] / d[j] (0 where d[j] == 0, the   \
   zero subgradient), except at the near pairs -- the forward's trust test    \
   s + c >= tau s fails, on c = d^2 - s, the cross term its GEMM would have   \
   given -- with w != 0: those get 0 here, their terms formed from the        \
   difference instead (fl_bwd_given_exact_row finds them as w == 0 while      \
   g / d != 0).  cs[j] += w[j] (the row block's column sums) and *rs = the    \
   row's sum, in double.  Returns the number of near pairs. */                \
static ptrdiff_t fl_bwd_weights_row_##SFX(const T *FL_RESTRICT g,                      \
                                             const T *FL_RESTRICT d, T *FL_RESTRICT w,    \
                                             ptrdiff_t n, double na,                      \
                                             const double *FL_RESTRICT nbv, double tau,   \
                                             double *FL_RESTRICT cs, double *rs)          \
{                                                                                         \
    double sum = 0.0;                                                                     \
    ptrdiff_t nflag = 0;                                                                  \
    if (FL_USE_512)                                                                       \
        return FL_512_CALL(fl_bwdw512_##SFX(g, d, w, n, na, nbv, tau, cs, rs));           \
    if (FL_USE_256)                                                                       \
        return FL_256_CALL(fl_bwdw256_##SFX(g, d, w, n, na, nbv, tau, cs, rs));           \
    for (ptrdiff_t j = 0; j < n; j++) {                                                   \
        double s = na + nbv[j], dj = (double)d[j];                                        \
        T cj = (T)(dj * dj - s);                                                          \
        T wj = d[j] != 0 ? g[j] / d[j] : (T)0;                                            \
        if (!(s + (double)cj >= tau * s) && wj != 0) {                                    \
            wj = 0;                                                                       \
            nflag++;                                                                      \
        }                                                                                 \
        w[j] = wj;                                                                        \
        cs[j] += (double)wj;                                                              \
        sum += (double)wj;                                                                \
    }                                                                                     \
    *rs = sum;                                                                            \
    return nflag;                                                                         \
}                                                                                         \
                                                                                          \
/* The near pairs of one row of fl_bwd_weights_row's W, among columns         \
   [j0, j1): entries with w == 0 whose g / d is not 0 (an ordinary zero       \
   weight has g / d == 0 too; a nan one is not 0 and stays in W).  Their      \
   terms t = (g / d) (a_i - b_j), from the difference in double, go to        \
   ta[0..k) += t (ta not NULL) and tb[j * k..] -= t (tb not NULL). */          \
static void fl_bwd_given_exact_row_##SFX(const T *g, const T *d, const T *w,           \
                                            ptrdiff_t j0, ptrdiff_t j1, const T *a0,      \
                                            const T *b0, ptrdiff_t k, double *ta,         \
                                            double *tb)                                   \
{                                                                                         \
    for (ptrdiff_t j = j0; j < j1; j++) {                                                 \
        if (w[j] != 0 || d[j] == 0) continue;                                             \
        T wj = g[j] / d[j];                                                               \
        if (wj == 0) continue;                                                            \
        const T *bj = b0 + j * k;                                                         \
        /* g / d overflowed, or the given d is subnormal (its digits are      \
           gone): the term from the rows' scaled differences instead */      \
        if (isfinite((double)g[j]) && isfinite((double)d[j])                              \
            && (isinf((double)wj) || fabs((double)d[j]) < (sizeof(T) == 4 ? FLT_MIN : DBL_MIN))) { \
            fl_term_scaled_##SFX((double)g[j], a0, bj, 1, k, ta, tb ? tb + j * k : NULL, 1); \
            continue;                                                                     \
        }                                                                                 \
        for (ptrdiff_t q = 0; q < k; q++) {                                               \
            double diff = (double)a0[q] - (double)bj[q];                                  \
            double t = (double)wj * diff;                                                 \
            if (ta) ta[q] += t;                                                           \
            if (tb) tb[j * k + q] -= t;                                                   \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* The gradients' rows from the products' sums: gA's row                      \
   out[q] = r a[q] - w[q] in T (r = rowsum(W)_i rounded to T, w = (W B)_i;    \
   one rounding where the compiler fuses it, on FMA machines: the bits may    \
   differ between CPUs, never between thread counts),                         \
   and gB's from one share p = (W^T A)_j: out[q] = c b[q] - p[q] in double,    \
   rounded once (c = colsum(W)_j). */                                          \
static void fl_grad_a_row_##SFX(T *out, T r, const T *FL_RESTRICT a, const T *w,      \
                                   ptrdiff_t n)    /* out may be w (in place) */          \
{                                                                                         \
    for (ptrdiff_t q = 0; q < n; q++) out[q] = r * a[q] - w[q];                           \
}                                                                                         \
                                                                                          \
static void fl_grad_b_row_##SFX(T *FL_RESTRICT out, double c, const T *FL_RESTRICT b,  \
                                   const T *FL_RESTRICT p, ptrdiff_t n)                   \
{                                                                                         \
    for (ptrdiff_t q = 0; q < n; q++) out[q] = (T)(c * (double)b[q] - (double)p[q]);      \
}                                                                                         \
                                                                                          \
/* acc[0..n) += w[0..n) in double: the column sums of one tile row. */                   \
static void fl_add_row_##SFX(double *FL_RESTRICT acc, const T *FL_RESTRICT w,          \
                                ptrdiff_t n)                                              \
{                                                                                         \
    for (ptrdiff_t j = 0; j < n; j++) acc[j] += (double)w[j];                             \
}                                                                                         \
                                                                                          \
/* d := g / d (0 where d == 0), cs += d, returning the row's sum: the two     \
   passes above in one (fl_gdivcs512) where AVX-512 is. */                     \
static double fl_gdiv_colsum_row_##SFX(const T *FL_RESTRICT g, T *FL_RESTRICT d,       \
                                          ptrdiff_t n, double *FL_RESTRICT cs)           \
{                                                                                         \
    double s;                                                                             \
    if (FL_USE_512) {                                                                     \
        s = 0.0;                                                                          \
        (void)FL_512_CALL((fl_gdivcs512_##SFX(g, d, n, cs, &s), 0));                      \
        return s;                                                                         \
    }                                                                                     \
    if (FL_USE_256) {                                                                     \
        s = 0.0;                                                                          \
        (void)FL_256_CALL((fl_gdivcs256_##SFX(g, d, n, cs, &s), 0));                      \
        return s;                                                                         \
    }                                                                                     \
    s = fl_grad_over_dist_row_##SFX(g, d, n);                                             \
    fl_add_row_##SFX(cs, d, n);                                                           \
    return s;                                                                             \
}

FL_GDIV_TPL(double, d, fl_vd, FL_VL_d, acc_t_d)
FL_GDIV_TPL(float, f, fl_vf, FL_VL_f, acc_t_f)

#endif
