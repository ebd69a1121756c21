/* Row L2 normalization kernels, float64 and float32. */
#ifndef FL_NORMALIZE_H
#define FL_NORMALIZE_H
#include "fl_common.h"

/*
 * The float64 slow path, for vectors whose plain sum of squares left
 * [2^-960, 2^960] (or is nan): ||x|| = ns * 2^e with ns in [0.5, sqrt(n)],
 * e the exponent of max|x|.  Both parts are representable even when ||x||
 * itself is not (above DBL_MAX, or subnormal), and every x_i * 2^-e is exact,
 * so the normalized vector is computed in the scaled domain without loss.
 * ns is nan for a vector holding a nan, inf for one holding an inf, 0 for 0.
 */
static double fl_scaled_norm(const double *x, ptrdiff_t n, ptrdiff_t stride, int *e)
{
    double amax = 0.0;
    *e = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        double a = fabs(x[i * stride]);
        if (a != a) return a;
        amax = a > amax ? a : amax;
    }
    if (amax == 0.0 || isinf(amax)) return amax;
    frexp(amax, e);
    double ss = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) {
        double v = ldexp(x[i * stride], -*e);
        ss += v * v;
    }
    return sqrt(ss);
}

/* true when a float64 sum of squares can be trusted as is */
FL_INLINE int fl_sumsq_ok(double ss) { return ss >= 0x1p-960 && ss <= 0x1p960; }

/* y = x / max(||x||, eps) for one float64 vector at stride, slow path */
static void fl_normalize_slow_d(const double *x, double *y, ptrdiff_t n, ptrdiff_t stride,
                                double eps)
{
    int e;
    double ns = fl_scaled_norm(x, n, stride, &e);
    if (ns > 0 && isfinite(ns) && ns >= ldexp(eps, -e)) {
        for (ptrdiff_t i = 0; i < n; i++) y[i * stride] = ldexp(x[i * stride], -e) / ns;
        return;
    }
    /* nan, inf, zero, or the eps clamp: the plain formula is exact */
    double d = (ns == 0.0 && eps == 0.0) ? 1.0 : (ns > 0 && isfinite(ns) ? eps : (ns < eps ? eps : ns));
    for (ptrdiff_t i = 0; i < n; i++) y[i * stride] = x[i * stride] / d;
}

/* backward of the above (branches as in fl_normalize_bwd) */
static void fl_normalize_bwd_slow_d(const double *g, const double *x, double *gx, ptrdiff_t n,
                                    ptrdiff_t stride, double eps)
{
    int e;
    double ns = fl_scaled_norm(x, n, stride, &e);
    if (ns == 0.0 && eps == 0.0) {
        for (ptrdiff_t i = 0; i < n; i++) gx[i * stride] = 0.0;
        return;
    }
    if (ns == 0.0 || (isfinite(ns) && ns < ldexp(eps, -e))) {
        for (ptrdiff_t i = 0; i < n; i++) gx[i * stride] = g[i * stride] / eps;
        return;
    }
    /* norm branch; ns nan or inf propagates through the same formula */
    double dot = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) dot += g[i * stride] * (ldexp(x[i * stride], -e) / ns);
    for (ptrdiff_t i = 0; i < n; i++) {
        double yi = ldexp(x[i * stride], -e) / ns;
        gx[i * stride] = ldexp((g[i * stride] - yi * dot) / ns, -e);
    }
}

/*
 * Divisor of a row: max(norm, eps), with nan kept (numpy.maximum semantics)
 * and a zero row divided by 1 when eps == 0 so that it stays zero.
 */
FL_INLINE double fl_divisor(double nrm, double eps)
{
    if (nrm == 0.0 && eps == 0.0) return 1.0;
    return nrm < eps ? eps : nrm;
}

enum { FL_NB_ZERO = 0, FL_NB_CLAMP = 1, FL_NB_NORM = 2 };

FL_INLINE int fl_nb_kind(double nrm, double eps)
{
    if (nrm == 0.0 && eps == 0.0) return FL_NB_ZERO;
    return nrm < eps ? FL_NB_CLAMP : FL_NB_NORM;
}

#define FL_TEMPLATE "fl_normalize_tpl.h"
#include "fl_instantiate.h"

#endif
