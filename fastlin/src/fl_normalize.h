/* Row L2 normalization kernels, float64 and float32. */
#ifndef FL_NORMALIZE_H
#define FL_NORMALIZE_H
#include "fl_common.h"

/*
 * Overflow- and underflow-free 2-norm of n float64 values at stride:
 * scale by the power of two nearest max|x| (exact), sum, unscale.
 * nan if any element is nan, inf if any is inf, 0 for a zero row.
 */
static double fl_scaled_norm(const double *x, ptrdiff_t n, ptrdiff_t stride)
{
    double amax = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) {
        double a = fabs(x[i * stride]);
        if (a != a) return a;
        amax = a > amax ? a : amax;
    }
    if (amax == 0.0 || isinf(amax)) return amax;
    int e;
    frexp(amax, &e);
    double s = ldexp(1.0, -e);
    double ss = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) {
        double v = x[i * stride] * s;
        ss += v * v;
    }
    return ldexp(sqrt(ss), e);
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

#define T double
#define VT fl_vd
#define VI fl_vdi
#define VL FL_VL_d
#define ACC acc_t_d
#define FL(name) name##_d
#define FL_IS_DOUBLE 1
#include "fl_normalize_tpl.h"
#undef T
#undef VT
#undef VI
#undef VL
#undef ACC
#undef FL
#undef FL_IS_DOUBLE

#define T float
#define VT fl_vf
#define VI fl_vfi
#define VL FL_VL_f
#define ACC acc_t_f
#define FL(name) name##_f
#define FL_IS_DOUBLE 0
#include "fl_normalize_tpl.h"
#undef T
#undef VT
#undef VI
#undef VL
#undef ACC
#undef FL
#undef FL_IS_DOUBLE

#endif
