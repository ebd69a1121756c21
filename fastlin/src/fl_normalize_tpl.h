/*
 * Row L2 normalization inner loops, instantiated per dtype by fl_normalize.h.
 * Same work-item convention as the softmax family: ld == 1 is one
 * contiguous row, ld > 1 a tile of w columns of an n x ld slab.
 *
 * The norm: one pass of sum(x^2) accumulated in double.  For float32 inputs
 * that cannot overflow or underflow (|x|^2 <= 1.2e77 and >= 2e-90).  For
 * float64 a sum outside [2^-960, 2^960] (or nan) takes a second, scaled
 * pass: max|x| gives a power-of-two scale that makes every square
 * representable, so [1e200, 1e200] and [1e-200, 1e-200] normalize exactly
 * like [1, 1].  Only such rows pay for it.
 */

FL_INLINE double FL(sumsq_row)(const T *FL_RESTRICT x, ptrdiff_t n)
{
    double acc[FL_L] = {0};
    ptrdiff_t i = 0;
    for (; i + FL_L <= n; i += FL_L)
        for (int j = 0; j < FL_L; j++) {
            double v = (double)x[i + j];
            acc[j] += v * v;
        }
    for (; i < n; i++) {
        double v = (double)x[i];
        acc[0] += v * v;
    }
    return fl_hsum(acc);
}

/* ||x||_2 from a plain sum of squares, rescaled if that sum is unreliable. */
FL_INLINE double FL(finish_norm)(double ss, const T *x, ptrdiff_t n, ptrdiff_t stride)
{
#if FL_IS_DOUBLE
    if (!(ss >= 0x1p-960 && ss <= 0x1p960)) return fl_scaled_norm(x, n, stride);
#else
    (void)x; (void)n; (void)stride;
#endif
    return sqrt(ss);
}

/* y = x / d.  Multiplying by 1/d is exact to ~1 ulp only while 1/d is a
   normal number; float64 divisors outside [2^-1000, 2^1000] divide. */
FL_INLINE void FL(scale_row)(const T *FL_RESTRICT x, T *FL_RESTRICT y, ptrdiff_t n, double d)
{
#if FL_IS_DOUBLE
    if (!(d >= 0x1p-1000 && d <= 0x1p1000)) {
        for (ptrdiff_t i = 0; i < n; i++) y[i] = x[i] / d;
        return;
    }
#endif
    double inv = 1.0 / d;
    for (ptrdiff_t i = 0; i < n; i++) y[i] = (T)((double)x[i] * inv);
}

FL_CLONES void FL(fl_normalize_fwd)(const T *FL_RESTRICT x, T *FL_RESTRICT y,
                                    ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w, double eps)
{
    if (ld == 1) {
        double nrm = FL(finish_norm)(FL(sumsq_row)(x, n), x, n, 1);
        FL(scale_row)(x, y, n, fl_divisor(nrm, eps));
        return;
    }
    double ss[FL_TILE_MAX];
    for (ptrdiff_t j = 0; j < w; j++) ss[j] = 0.0;
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) {
            double v = (double)xr[j];
            ss[j] += v * v;
        }
    }
    int all_mul = 1;
    for (ptrdiff_t j = 0; j < w; j++) {
        double d = fl_divisor(FL(finish_norm)(ss[j], x + j, n, ld), eps);
#if FL_IS_DOUBLE
        if (!(d >= 0x1p-1000 && d <= 0x1p1000)) all_mul = 0;
#endif
        ss[j] = d;
    }
    if (all_mul) {
        for (ptrdiff_t j = 0; j < w; j++) ss[j] = 1.0 / ss[j];
        for (ptrdiff_t r = 0; r < n; r++) {
            const T *xr = x + r * ld;
            T *yr = y + r * ld;
            for (ptrdiff_t j = 0; j < w; j++) yr[j] = (T)((double)xr[j] * ss[j]);
        }
    } else {
        for (ptrdiff_t r = 0; r < n; r++) {
            const T *xr = x + r * ld;
            T *yr = y + r * ld;
            for (ptrdiff_t j = 0; j < w; j++) yr[j] = (T)((double)xr[j] / ss[j]);
        }
    }
}

/*
 * Backward of y = x / max(||x||, eps).
 *   ||x|| >= eps > 0 or ||x|| > 0 = eps:  gx = (g - y (g . y)) / ||x||
 *   ||x|| <  eps (the clamp is active):   gx = g / eps
 *   ||x|| == 0 == eps:                    gx = 0 (zero subgradient)
 * At ||x|| == eps the norm branch is taken, as torch's clamp_min does.
 */
FL_CLONES void FL(fl_normalize_bwd)(const T *FL_RESTRICT g, const T *FL_RESTRICT x,
                                    T *FL_RESTRICT gx, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w,
                                    double eps)
{
    if (ld == 1) {
        double nrm = FL(finish_norm)(FL(sumsq_row)(x, n), x, n, 1);
        if (nrm == 0.0 && eps == 0.0) {
            for (ptrdiff_t i = 0; i < n; i++) gx[i] = 0;
            return;
        }
        if (nrm < eps) {
            FL(scale_row)(g, gx, n, eps);
            return;
        }
        /* y_i = x_i / nrm, formed on the fly exactly as the forward does */
        int mul = 1;
#if FL_IS_DOUBLE
        mul = nrm >= 0x1p-1000 && nrm <= 0x1p1000;
#endif
        double inv = 1.0 / nrm;
        double acc[FL_L] = {0};
        ptrdiff_t i = 0;
        if (mul) {
            for (; i + FL_L <= n; i += FL_L)
                for (int j = 0; j < FL_L; j++)
                    acc[j] += (double)g[i + j] * ((double)x[i + j] * inv);
            for (; i < n; i++) acc[0] += (double)g[i] * ((double)x[i] * inv);
            double dot = fl_hsum(acc);
            for (i = 0; i < n; i++)
                gx[i] = (T)(((double)g[i] - ((double)x[i] * inv) * dot) * inv);
        } else {
            for (; i < n; i++) acc[0] += (double)g[i] * ((double)x[i] / nrm);
            double dot = fl_hsum(acc);
            for (i = 0; i < n; i++)
                gx[i] = (T)(((double)g[i] - ((double)x[i] / nrm) * dot) / nrm);
        }
        return;
    }
    /* column tile: per column norm, branch and dot product */
    double d[FL_TILE_MAX], dot[FL_TILE_MAX];
    int kind[FL_TILE_MAX];   /* 0: zero gradient, 1: g/eps, 2: norm branch */
    for (ptrdiff_t j = 0; j < w; j++) d[j] = 0.0;
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) {
            double v = (double)xr[j];
            d[j] += v * v;
        }
    }
    for (ptrdiff_t j = 0; j < w; j++) {
        double nrm = FL(finish_norm)(d[j], x + j, n, ld);
        kind[j] = (nrm == 0.0 && eps == 0.0) ? 0 : (nrm < eps ? 1 : 2);
        d[j] = kind[j] == 1 ? eps : (kind[j] == 0 ? 1.0 : nrm);
        dot[j] = 0.0;
    }
    /* Division here (not 1/d): column tiles are the rarer layout and this
       keeps every magnitude exact without a second code path. */
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld, *gr = g + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) dot[j] += (double)gr[j] * ((double)xr[j] / d[j]);
    }
    for (ptrdiff_t j = 0; j < w; j++) if (kind[j] != 2) dot[j] = 0.0;
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld, *gr = g + r * ld;
        T *o = gx + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) {
            double t = ((double)gr[j] - ((double)xr[j] / d[j]) * dot[j]) / d[j];
            o[j] = (T)(kind[j] == 0 ? 0.0 : t);
        }
    }
}
