/*
 * Row L2 normalization inner loops, instantiated per dtype by fl_normalize.h
 * (T, VT, VI, VL, ACC, FL(name) as for the softmax family).  Same work-item
 * convention: ld == 1 is one contiguous row, ld > 1 a tile of w columns of an
 * n x ld slab.
 *
 * The norm: one pass of sum(x^2) accumulated in double.  For float32 inputs
 * that cannot overflow or underflow (|x|^2 <= 1.2e77 and >= 2e-90).  For
 * float64 a sum outside [2^-960, 2^960] (or nan) sends the vector to the
 * scaled slow path of fl_normalize.h, which works in units of 2^e (e the
 * exponent of max|x|), so [1e200, 1e200], [1e-200, 1e-200], [1e-310, 0] and
 * [1.3e308, -1.3e308] all normalize like [1, 1].  Only such rows pay for it.
 *
 * The scaling multiplies by 1/d rounded to T, which is within ~1.5 ulp of a
 * division while 1/d is a normal number of T; a divisor outside that range
 * (FL(mul_ok)) is applied by a scalar division in double instead.
 */

/* sum of squares of a row; pr / pw (when not NULL) are rows the next pass
   reads / writes, prefetched meanwhile */
FL_INLINE double FL(sumsq_row)(const T *FL_RESTRICT x, ptrdiff_t n, const T *pr, T *pw)
{
    ACC acc = FL(acc_zero)();
    ptrdiff_t i = 0;
    for (; i + VL <= n; i += VL) {
        if (pr) FL_PREFETCH_BLOCK(pr + i);
        if (pw) FL_PREFETCH_W(pw + i);
        VT v = FL(vld)(x + i);
        FL(acc_addmul)(&acc, v, v);
    }
    if (i < n) {
        VT v = FL(vldpad)(x + i, n - i, 0);
        FL(acc_addmul)(&acc, v, v);
    }
    return FL(acc_sum)(acc);
}

/* Does this sum of squares need the scaled slow path?  (float64 only) */
FL_INLINE int FL(needs_slow)(double ss)
{
#if FL_IS_DOUBLE
    return !fl_sumsq_ok(ss);
#else
    (void)ss;
    return 0;
#endif
}

#if FL_IS_DOUBLE
#define FL_SLOW_FWD fl_normalize_slow_d
#define FL_SLOW_BWD fl_normalize_bwd_slow_d
#else
/* never called: float32 squares cannot leave double's range */
#define FL_SLOW_FWD(x, y, n, stride, eps) ((void)0)
#define FL_SLOW_BWD(g, x, gx, n, stride, eps) ((void)0)
#endif

FL_INLINE int FL(mul_ok)(double d)
{
#if FL_IS_DOUBLE
    return d >= 0x1p-1000 && d <= 0x1p1000;
#else
    return d >= 0x1p-120 && d <= 0x1p120;
#endif
}

/* y = x / d along a strided vector, in double: the rare extreme divisors */
static void FL(divide_strided)(const T *x, T *y, ptrdiff_t n, ptrdiff_t stride, double d)
{
    for (ptrdiff_t i = 0; i < n; i++) y[i * stride] = (T)((double)x[i * stride] / d);
}

/* y = x / d for a contiguous row */
FL_INLINE void FL(scale_row)(const T *FL_RESTRICT x, T *FL_RESTRICT y, ptrdiff_t n, double d)
{
    if (!FL(mul_ok)(d)) {
        FL(divide_strided)(x, y, n, 1, d);
        return;
    }
    T s = (T)(1.0 / d);
    ptrdiff_t i = 0;
    for (; i + VL <= n; i += VL) {
        FL_PREFETCH_BLOCK(x + n + i);
        FL(vst)(y + i, FL(vld)(x + i) * s);
    }
    for (; i < n; i++) y[i] = x[i] * s;
}

static void FL(fl_normalize_fwd)(const T *FL_RESTRICT x, T *FL_RESTRICT y,
                                    ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w, double eps)
{
    if (ld == 1) {
        double ss = FL(sumsq_row)(x, n, NULL, y);
        if (FL(needs_slow)(ss)) {
            FL_SLOW_FWD(x, y, n, 1, eps);
            return;
        }
        FL(scale_row)(x, y, n, fl_divisor(sqrt(ss), eps));
        return;
    }
    ACC ss[FL_TILE_MAX / VL];
    VT inv[FL_TILE_MAX / VL];
    double d[FL_TILE_MAX];
    int slow[FL_TILE_MAX];
    ptrdiff_t nv = (w + VL - 1) / VL;
    const ptrdiff_t pf = fl_pf_rows(w, sizeof(T));
    for (ptrdiff_t k = 0; k < nv; k++) ss[k] = FL(acc_zero)();
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(x + (r + pf) * ld + k * VL, 0, 3);
            VT v = FL(tld)(xr, k, w);
            FL(acc_addmul)(&ss[k], v, v);
        }
    }
    for (ptrdiff_t k = 0; k < nv; k++) {
        double sl[VL];
        T il[VL];
        FL(acc_lanes)(ss[k], sl);
        for (int j = 0; j < VL; j++) {
            ptrdiff_t c = k * VL + j;
            if (c < w) {
                slow[c] = FL(needs_slow)(sl[j]);
                d[c] = slow[c] ? 1.0 : fl_divisor(sqrt(sl[j]), eps);
            }
            il[j] = c < w && FL(mul_ok)(d[c]) ? (T)(1.0 / d[c]) : 0;
        }
        inv[k] = FL(vld)(il);
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        T *yr = y + r * ld;
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(x + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(y + (r + pf) * ld + k * VL, 1, 3);
            FL(tst)(yr, k, w, FL(tld)(xr, k, w) * inv[k]);
        }
    }
    /* the rare columns that the vector pass could not scale exactly */
    for (ptrdiff_t c = 0; c < w; c++) {
        if (slow[c]) FL_SLOW_FWD(x + c, y + c, n, ld, eps);
        else if (!FL(mul_ok)(d[c])) FL(divide_strided)(x + c, y + c, n, ld, d[c]);
    }
}

/*
 * Backward of y = x / max(||x||, eps).
 *   ||x|| >= eps and ||x|| > 0:   gx = (g - y (g . y)) / ||x||
 *   ||x|| <  eps (clamp active):  gx = g / eps
 *   ||x|| == 0 == eps:            gx = 0 (zero subgradient)
 * At ||x|| == eps the norm branch is taken, as torch's clamp_min does.
 */
/* the norm branch along a strided vector, in double (extreme norms) */
static void FL(nb_strided)(const T *g, const T *x, T *gx, ptrdiff_t n, ptrdiff_t stride,
                           double nrm)
{
    double dot = 0.0;
    for (ptrdiff_t i = 0; i < n; i++)
        dot += (double)g[i * stride] * ((double)x[i * stride] / nrm);
    for (ptrdiff_t i = 0; i < n; i++)
        gx[i * stride] = (T)(((double)g[i * stride] - ((double)x[i * stride] / nrm) * dot) / nrm);
}

static void FL(fl_normalize_bwd)(const T *FL_RESTRICT g, const T *FL_RESTRICT x,
                                    T *FL_RESTRICT gx, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w,
                                    double eps)
{
    if (ld == 1) {
        double ss = FL(sumsq_row)(x, n, g, gx);
        if (FL(needs_slow)(ss)) {
            FL_SLOW_BWD(g, x, gx, n, 1, eps);
            return;
        }
        double nrm = sqrt(ss);
        int kind = fl_nb_kind(nrm, eps);
        if (kind == FL_NB_ZERO) {
            for (ptrdiff_t i = 0; i < n; i++) gx[i] = 0;
            return;
        }
        if (kind == FL_NB_CLAMP) {
            FL(scale_row)(g, gx, n, eps);
            return;
        }
        if (!FL(mul_ok)(nrm)) {
            FL(nb_strided)(g, x, gx, n, 1, nrm);
            return;
        }
        T s = (T)(1.0 / nrm);
        ACC acc = FL(acc_zero)();
        ptrdiff_t i = 0;
        for (; i + VL <= n; i += VL) FL(acc_addmul)(&acc, FL(vld)(g + i), FL(vld)(x + i) * s);
        if (i < n) FL(acc_addmul)(&acc, FL(vldpad)(g + i, n - i, 0), FL(vldpad)(x + i, n - i, 0) * s);
        T dot = (T)FL(acc_sum)(acc);
        for (i = 0; i + VL <= n; i += VL) {
            FL_PREFETCH_BLOCK(x + n + i);
            FL_PREFETCH_BLOCK(g + n + i);
            FL(vst)(gx + i, (FL(vld)(g + i) - (FL(vld)(x + i) * s) * dot) * s);
        }
        for (; i < n; i++) gx[i] = (g[i] - (x[i] * s) * dot) * s;
        return;
    }
    /* column tile: per column norm, branch, and dot product */
    ACC a[FL_TILE_MAX / VL];
    VT inv[FL_TILE_MAX / VL], dot[FL_TILE_MAX / VL];
    VI keep[FL_TILE_MAX / VL];
    double nrm[FL_TILE_MAX];
    int kind[FL_TILE_MAX], slow[FL_TILE_MAX];
    ptrdiff_t nv = (w + VL - 1) / VL;
    const ptrdiff_t pf = fl_pf_rows(w, sizeof(T));
    for (ptrdiff_t k = 0; k < nv; k++) a[k] = FL(acc_zero)();
    for (ptrdiff_t r = 0; r < n; r++) {
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(x + (r + pf) * ld + k * VL, 0, 3);
            VT v = FL(tld)(x + r * ld, k, w);
            FL(acc_addmul)(&a[k], v, v);
        }
    }
    for (ptrdiff_t k = 0; k < nv; k++) {
        double sl[VL];
        T il[VL];
        FL(acc_lanes)(a[k], sl);
        for (int j = 0; j < VL; j++) {
            ptrdiff_t c = k * VL + j;
            il[j] = 0;
            if (c >= w) continue;
            slow[c] = FL(needs_slow)(sl[j]);
            nrm[c] = slow[c] ? 1.0 : sqrt(sl[j]);
            kind[c] = fl_nb_kind(nrm[c], eps);
            double d = kind[c] == FL_NB_CLAMP ? eps : nrm[c];
            if (kind[c] != FL_NB_ZERO && FL(mul_ok)(d)) il[j] = (T)(1.0 / d);
        }
        inv[k] = FL(vld)(il);
        a[k] = FL(acc_zero)();
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(g + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(x + (r + pf) * ld + k * VL, 0, 3);
            FL(acc_addmul)(&a[k], FL(tld)(g + r * ld, k, w), FL(tld)(x + r * ld, k, w) * inv[k]);
        }
    }
    for (ptrdiff_t k = 0; k < nv; k++) {
        double dl[VL];
        T tl[VL], kl[VL];
        FL(acc_lanes)(a[k], dl);
        for (int j = 0; j < VL; j++) {
            ptrdiff_t c = k * VL + j;
            int kd = c < w ? kind[c] : FL_NB_ZERO;
            tl[j] = kd == FL_NB_NORM ? (T)dl[j] : 0;   /* the clamp branch has no y term */
            kl[j] = kd == FL_NB_ZERO ? 0 : 1;
        }
        dot[k] = FL(vld)(tl);
        keep[k] = FL(vne)(FL(vld)(kl), FL(vsplat)(0));
    }
    const VT zero = FL(vsplat)(0);
    for (ptrdiff_t r = 0; r < n; r++) {
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(g + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(x + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(gx + (r + pf) * ld + k * VL, 1, 3);
            VT xs = FL(tld)(x + r * ld, k, w) * inv[k];
            VT o = (FL(tld)(g + r * ld, k, w) - xs * dot[k]) * inv[k];
            FL(tst)(gx + r * ld, k, w, FL(vsel)(keep[k], o, zero));
        }
    }
    for (ptrdiff_t c = 0; c < w; c++) {
        if (slow[c]) {
            FL_SLOW_BWD(g + c, x + c, gx + c, n, ld, eps);
            continue;
        }
        if (kind[c] == FL_NB_ZERO) continue;
        double d = kind[c] == FL_NB_CLAMP ? eps : nrm[c];
        if (FL(mul_ok)(d)) continue;
        if (kind[c] == FL_NB_CLAMP) FL(divide_strided)(g + c, gx + c, n, ld, d);
        else FL(nb_strided)(g + c, x + c, gx + c, n, ld, d);
    }
}

#undef FL_SLOW_FWD
#undef FL_SLOW_BWD
