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
 * (the caller flags them bad).  Short passes over a row that is in L1; the
 * first and the sqrt pass vectorize (sqrt needs -fno-math-errno, set by
 * setup.py).
 */
#ifndef FL_DISTANCE_H
#define FL_DISTANCE_H
#include "fl_common.h"

/* rows of at most this many columns skip GEMM (see fl_dist_direct_row) */
#define FL_DIRECT_K 16
#define FL_DIRECT_TILE 256   /* = the tile edge of _distance.pyx */

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
/* c[0..nb): -2 a.b_j on entry, the distance on exit (sqrt'ed when take_sqrt,            \
   times `scale`).  na = |a|^2, nbv[j] = |b_j|^2 (centred); a0 and b0 + j*k are          \
   the rows the exact path reads.  Returns how many entries it recomputed. */             \
FL_CLONES ptrdiff_t fl_dist_row_##SFX(T *FL_RESTRICT c, ptrdiff_t nb, double na,          \
                                      const double *FL_RESTRICT nbv, int bad_a,           \
                                      const unsigned char *FL_RESTRICT bad_b,             \
                                      const T *a0, const T *b0, ptrdiff_t k,              \
                                      const double *w, const double *L, double tau,       \
                                      int take_sqrt, double scale)                        \
{                                                                                         \
    /* the row in double, flags as int64: uniform 8-byte lanes, so gcc        \
       vectorizes every pass (mixed float/double/byte loops stayed scalar).    \
       Exact entries stay in double until the end: a float32 tile cannot hold   \
       every squared distance of a float32 result (2e19^2 overflows). */        \
    double v[FL_DIRECT_TILE];                                                             \
    int64_t exf[FL_DIRECT_TILE];                                                          \
    int64_t nexact = 0;                                                                   \
    const int64_t ba = bad_a != 0;                                                        \
    for (ptrdiff_t j = 0; j < nb; j++) v[j] = (double)c[j];                               \
    for (ptrdiff_t j = 0; j < nb; j++) {                                                  \
        double s = na + nbv[j];                                                           \
        double d2 = s + v[j];                                                             \
        int64_t ex = (int64_t)(d2 < tau * s) | ba | (int64_t)bad_b[j];                    \
        exf[j] = ex;                                                                      \
        nexact += ex;                                                                     \
        v[j] = d2 < 0.0 ? 0.0 : d2;                                                       \
    }                                                                                     \
    if (nexact)                                                                           \
        for (ptrdiff_t j = 0; j < nb; j++)                                                \
            if (exf[j]) v[j] = fl_sqdist_exact_##SFX(a0, b0 + j * k, k, w, L);            \
    if (take_sqrt)                                                                        \
        for (ptrdiff_t j = 0; j < nb; j++) c[j] = (T)sqrt(v[j] * scale);                  \
    else                                                                                  \
        for (ptrdiff_t j = 0; j < nb; j++) c[j] = (T)(v[j] * scale);                      \
    return nexact;                                                                        \
}                                                                                         \
                                                                                          \
/* Few columns (k <= FL_DIRECT_K): GEMM cannot pay for itself, and the    \
   direct sum is exact anyway.  c[j] = dist(a, b_j) with the k x ldb       \
   transposed rows bt, vectorized across j; accumulated in double. */      \
FL_CLONES void fl_dist_direct_row_##SFX(T *FL_RESTRICT c, ptrdiff_t nb,                  \
                                        const T *FL_RESTRICT a,                            \
                                        const T *FL_RESTRICT bt, ptrdiff_t ldb,            \
                                        ptrdiff_t k, const double *w, int take_sqrt,       \
                                        double scale)                                      \
{                                                                                         \
    double acc[FL_DIRECT_TILE];                                                           \
    for (ptrdiff_t j = 0; j < nb; j++) acc[j] = 0.0;                                      \
    for (ptrdiff_t q = 0; q < k; q++) {                                                   \
        const double aq = (double)a[q], wq = w ? w[q] : 1.0;                              \
        const T *br = bt + q * ldb;                                                       \
        for (ptrdiff_t j = 0; j < nb; j++) {                                              \
            double d = aq - (double)br[j];                                                \
            acc[j] += wq * d * d;                                                         \
        }                                                                                 \
    }                                                                                     \
    if (take_sqrt)                                                                        \
        for (ptrdiff_t j = 0; j < nb; j++) c[j] = (T)sqrt(acc[j] * scale);                \
    else                                                                                  \
        for (ptrdiff_t j = 0; j < nb; j++) c[j] = (T)(acc[j] * scale);                    \
}

FL_DIST_TPL(double, d)
FL_DIST_TPL(float, f)

/*
 * The Euclidean backward's weights for one row: d[j] := g[j] / d[j] (0 where
 * d[j] == 0, the zero subgradient), returning their sum in double.  Vector
 * loop: the division runs on every lane and the select drops the d == 0 ones.
 */
#define FL_GDIV_TPL(T, SFX, VT, VL, ACC)                                                  \
FL_CLONES double fl_grad_over_dist_row_##SFX(const T *FL_RESTRICT g, T *FL_RESTRICT d,    \
                                             ptrdiff_t n)                                 \
{                                                                                         \
    const VT zero = vsplat_##SFX(0);                                                      \
    ACC acc = acc_zero_##SFX();                                                           \
    ptrdiff_t j = 0;                                                                      \
    for (; j + VL <= n; j += VL) {                                                        \
        VT dv = vld_##SFX(d + j);                                                         \
        VT w = vsel_##SFX(dv != zero, vld_##SFX(g + j) / dv, zero);                        \
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
}

FL_GDIV_TPL(double, d, fl_vd, FL_VL_d, acc_t_d)
FL_GDIV_TPL(float, f, fl_vf, FL_VL_f, acc_t_f)

#endif
