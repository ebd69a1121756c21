/*
 * Softmax family inner loops, instantiated once per dtype by fl_softmax.h:
 * T is the element type, VT/VI/VL its vector (fl_common.h), mask type and lane
 * count, ACC its double accumulator, FL(name) the dtype-suffixed name.
 *
 * Every entry point processes one work item of a (outer, n, inner) C-ordered
 * block: with ld == 1 it is one contiguous row of n elements (reduction along
 * the last axis); with ld > 1 it is a tile of w columns of an n x ld slab,
 * reduced down the columns (an inner axis), walking each row of the tile
 * contiguously and vectorizing across columns.  A row's last partial vector
 * is masked (row kernels) or padded and never stored (column kernels: the
 * lanes are independent columns).
 *
 * Sums are accumulated in double, lane by lane, and combined in a fixed
 * pairwise order: the result depends neither on threads nor on tiling.
 */

/* NaN-ignoring row maximum, -inf for an empty or all-NaN row; NaNs
   propagate later through exp and the sums.  pw, when not NULL, is the
   row's output, prefetched for writing meanwhile. */
FL_INLINE T FL(rowmax)(const T *FL_RESTRICT x, ptrdiff_t n, T *pw)
{
    /* two running maxima: one is a chain of compare-and-select latencies
       (the max is exact, so the split changes no result) */
    VT acc = FL(vsplat)(-INFINITY), acc2 = acc;
    ptrdiff_t i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        if (pw) {
            FL_PREFETCH_W(pw + i);
            FL_PREFETCH_W(pw + i + VL);
        }
        acc = FL(vmax)(FL(vld)(x + i), acc);
        acc2 = FL(vmax)(FL(vld)(x + i + VL), acc2);
    }
    if (i + VL <= n) {
        if (pw) FL_PREFETCH_W(pw + i);
        acc = FL(vmax)(FL(vld)(x + i), acc);
        i += VL;
    }
    if (i < n) acc2 = FL(vmax)(FL(vldpad)(x + i, n - i, -INFINITY), acc2);
    return FL(vhmax)(FL(vmax)(acc, acc2));
}

/* Per-column maxima of a tile, vector k covering columns [k*VL, k*VL+VL). */
FL_INLINE void FL(colmax)(const T *FL_RESTRICT x, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w,
                          VT *FL_RESTRICT m)
{
    ptrdiff_t nv = (w + VL - 1) / VL, full = w / VL;
    const ptrdiff_t pf = fl_pf_rows(w, sizeof(T));
    for (ptrdiff_t k = 0; k < nv; k++) m[k] = FL(vsplat)(-INFINITY);
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        for (ptrdiff_t k = 0; k < full; k++) {
            __builtin_prefetch(x + (r + pf) * ld + k * VL, 0, 3);
            m[k] = FL(vmax)(FL(vld)(xr + k * VL), m[k]);
        }
        if (full < nv) m[full] = FL(vmax)(FL(vldpad)(xr + full * VL, w - full * VL, 0), m[full]);
    }
}

/*
 * Per-column maximum m and sum s = sum_r exp(x_r - m) of a tile in ONE pass
 * over it (online rescaling: when a row raises a column's maximum from m to
 * m', s becomes s * exp(m - m') + exp(x - m')).  A row that raises no lane
 * takes the cheap path s += exp(x - m); a row that raises some lane rescales
 * all of its vectors, which for a lane whose maximum did not move is exactly
 * the cheap path (the scale is 1), so the result does not depend on how
 * columns are grouped into tiles.  A -inf entry adds exactly 0 (never
 * exp(-inf - -inf) = nan), so a column that is all -inf gets s = 0; a nan
 * entry makes s nan, as it does the row kernels' sum.
 */
FL_INLINE void FL(col_maxsum)(const T *FL_RESTRICT x, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w,
                              VT *FL_RESTRICT m, ACC *FL_RESTRICT s)
{
    ptrdiff_t nv = (w + VL - 1) / VL;
    const ptrdiff_t pf = fl_pf_rows(w, sizeof(T));
    const VT zero = FL(vsplat)(0), one = FL(vsplat)(1), ninf = FL(vsplat)(-INFINITY);
    for (ptrdiff_t k = 0; k < nv; k++) {
        m[k] = ninf;
        s[k] = FL(acc_zero)();
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        VI up = FL(vgt)(FL(tld)(xr, 0, w), m[0]);
        for (ptrdiff_t k = 1; k < nv; k++) up |= FL(vgt)(FL(tld)(xr, k, w), m[k]);
        if (!FL(vany)(up)) {
            for (ptrdiff_t k = 0; k < nv; k++) {
                __builtin_prefetch(x + (r + pf) * ld + k * VL, 0, 3);
                VT v = FL(tld)(xr, k, w);
                FL(acc_add)(&s[k], FL(vsel)(FL(veq)(v, ninf), zero, FL(vexp)(v - m[k])));
            }
            continue;
        }
        for (ptrdiff_t k = 0; k < nv; k++) {
            VT v = FL(tld)(xr, k, w);
            VT mn = FL(vmax)(v, m[k]);
            VI same = FL(veq)(m[k], mn);
            VT sc = FL(vsel)(same, one, FL(vexp)(m[k] - mn));
            VT e = FL(vsel)(FL(veq)(v, ninf), zero, FL(vexp)(v - mn));
            FL(acc_muladd)(&s[k], sc, e);
            m[k] = mn;
        }
    }
}

/* sum_i exp(x_i - m), storing the exponentials in y. */
FL_INLINE double FL(expsum)(const T *FL_RESTRICT x, T *FL_RESTRICT y, ptrdiff_t n, T m)
{
    ACC acc = FL(acc_zero)();
    ptrdiff_t i = 0;
    for (; i + VL <= n; i += VL) {
        FL_PREFETCH_BLOCK(x + n + i);
        VT e = FL(vexp)(FL(vld)(x + i) - m);
        FL(vst)(y + i, e);
        FL(acc_add)(&acc, e);
    }
    if (i < n) {
        VT e = FL(vexp)(FL(vldpad)(x + i, n - i, 0) - m);
        FL(vstpart)(y + i, e, n - i);
        FL(acc_add)(&acc, FL(vsel)(FL(vmask)(n - i), e, FL(vsplat)(0)));
    }
    return FL(acc_sum)(acc);
}

/* log(sum(exp(x))) the direct way: only for slices whose stable value is
   not finite (inf, nan, all -inf), where it reproduces scipy's edge cases. */
static double FL(lse_direct)(const T *x, ptrdiff_t n, ptrdiff_t stride)
{
    double s = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) s += exp((double)x[i * stride]);
    return log(s);
}

/* m + log(c) + log1p(s / c), or the direct formula when that is not finite.
   With mo (the backward): lse = *mo + *ro, the shift m and the rest in
   double (0 and the direct value on the direct path), so that exp(x - lse)
   can be formed as exp((x - m) - r): rounding lse itself to T would lose
   r (at most log n) against a large m (|x| ~ 1e8 in float32). */
FL_INLINE double FL(lse_finish)(double s, double c, T m, const T *x, ptrdiff_t n,
                                ptrdiff_t stride, T *mo, double *ro)
{
    if (s != 0.0) s /= c;
    double r = log1p(s) + log(c);
    double out = r + (double)m;
    if (!isfinite(out)) {
        out = FL(lse_direct)(x, n, stride);
        m = 0;
        r = out;
    }
    if (mo) {
        *mo = m;
        *ro = r;
    }
    return out;
}

/*
 * Stable log-sum-exp as scipy computes it: the maxima are taken out of the
 * sum, lse = m + log(c) + log1p(s / c), c = number of maxima, s = sum of the
 * other exp(x - m).  log1p keeps the digits when one term dominates
 * (logsumexp([0, -40]) = 4.25e-18, not 0).
 */
FL_INLINE double FL(lse_row)(const T *FL_RESTRICT x, ptrdiff_t n, T *pw, T *mo, double *ro)
{
    T m = FL(rowmax)(x, n, pw);
    ACC acc = FL(acc_zero)(), cnt = FL(acc_zero)();
    const VT zero = FL(vsplat)(0), one = FL(vsplat)(1);
    ptrdiff_t i = 0;
    for (; i + VL <= n; i += VL) {
        FL_PREFETCH_BLOCK(x + n + i);
        VT v = FL(vld)(x + i);
        VT e = FL(vexp)(v - m);
        VI top = FL(veq)(v, FL(vsplat)(m));
        FL(acc_add)(&acc, FL(vsel)(top, zero, e));
        FL(acc_add)(&cnt, FL(vsel)(top, one, zero));
    }
    if (i < n) {
        VT v = FL(vldpad)(x + i, n - i, 0);
        VT e = FL(vexp)(v - m);
        VI live = FL(vmask)(n - i), top = FL(veq)(v, FL(vsplat)(m)) & live;
        FL(acc_add)(&acc, FL(vsel)(live & ~top, e, zero));
        FL(acc_add)(&cnt, FL(vsel)(top, one, zero));
    }
    return FL(lse_finish)(FL(acc_sum)(acc), FL(acc_sum)(cnt), m, x, n, 1, mo, ro);
}

/* The same per column of a tile; lse[j] for j < w. */
FL_INLINE void FL(lse_cols)(const T *FL_RESTRICT x, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w,
                            double *FL_RESTRICT lse, T *mo, double *ro)
{
    VT m[FL_TILE_MAX / VL];
    ACC s[FL_TILE_MAX / VL], c[FL_TILE_MAX / VL];
    const VT zero = FL(vsplat)(0), one = FL(vsplat)(1);
    ptrdiff_t nv = (w + VL - 1) / VL;
    const ptrdiff_t pf = fl_pf_rows(w, sizeof(T));
    FL(colmax)(x, n, ld, w, m);
    for (ptrdiff_t k = 0; k < nv; k++) s[k] = c[k] = FL(acc_zero)();
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(x + (r + pf) * ld + k * VL, 0, 3);
            VT v = FL(tld)(xr, k, w);
            VT e = FL(vexp)(v - m[k]);
            VI top = FL(veq)(v, m[k]);
            FL(acc_add)(&s[k], FL(vsel)(top, zero, e));
            FL(acc_add)(&c[k], FL(vsel)(top, one, zero));
        }
    }
    for (ptrdiff_t k = 0; k < nv; k++) {
        double sl[VL], cl[VL];
        T ml[VL];
        FL(acc_lanes)(s[k], sl);
        FL(acc_lanes)(c[k], cl);
        FL(vst)(ml, m[k]);
        for (ptrdiff_t j = 0; j < VL && k * VL + j < w; j++)
            lse[k * VL + j] = FL(lse_finish)(sl[j], cl[j], ml[j], x + k * VL + j, n, ld,
                                             mo ? mo + k * VL + j : NULL,
                                             ro ? ro + k * VL + j : NULL);
    }
}

/* ------------------------------------------------------------- forward */

static void FL(fl_softmax_fwd)(const T *FL_RESTRICT x, T *FL_RESTRICT y,
                                  ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        T m = FL(rowmax)(x, n, y);
        T inv = (T)(1.0 / FL(expsum)(x, y, n, m));   /* the sum is >= 1 unless nan */
        ptrdiff_t i = 0;
        for (; i + VL <= n; i += VL) FL(vst)(y + i, FL(vld)(y + i) * inv);
        for (; i < n; i++) y[i] *= inv;
        return;
    }
    /* two passes over the tile: running max and sum, then the output */
    VT m[FL_TILE_MAX / VL], inv[FL_TILE_MAX / VL];
    ACC s[FL_TILE_MAX / VL];
    ptrdiff_t nv = (w + VL - 1) / VL;
    const ptrdiff_t pf = fl_pf_rows(w, sizeof(T));
    FL(col_maxsum)(x, n, ld, w, m, s);
    for (ptrdiff_t k = 0; k < nv; k++) {
        double sl[VL];
        T il[VL];
        FL(acc_lanes)(s[k], sl);
        for (int j = 0; j < VL; j++) il[j] = (T)(1.0 / sl[j]);
        inv[k] = FL(vld)(il);
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        T *yr = y + r * ld;
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(x + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(y + (r + pf) * ld + k * VL, 1, 3);
            FL(tst)(yr, k, w, FL(vexp)(FL(tld)(xr, k, w) - m[k]) * inv[k]);
        }
    }
}

/* scipy's log_softmax: a non-finite maximum is replaced by 0 before the shift. */
static void FL(fl_log_softmax_fwd)(const T *FL_RESTRICT x, T *FL_RESTRICT y,
                                      ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        T m = FL(rowmax)(x, n, y);
        if (!isfinite(m)) m = 0;
        /* y = x - m is stored by the exp pass (which hides the stores), and
           the last pass updates y in cache */
        ACC acc = FL(acc_zero)();
        ptrdiff_t i = 0;
        for (; i + VL <= n; i += VL) {
            FL_PREFETCH_BLOCK(x + n + i);
            VT t = FL(vld)(x + i) - m;
            FL(vst)(y + i, t);
            FL(acc_add)(&acc, FL(vexp)(t));
        }
        if (i < n) {
            VT t = FL(vldpad)(x + i, n - i, 0) - m;
            FL(vstpart)(y + i, t, n - i);
            FL(acc_add)(&acc, FL(vsel)(FL(vmask)(n - i), FL(vexp)(t), FL(vsplat)(0)));
        }
        T l = (T)log(FL(acc_sum)(acc));
        for (i = 0; i + VL <= n; i += VL) FL(vst)(y + i, FL(vld)(y + i) - l);
        for (; i < n; i++) y[i] -= l;
        return;
    }
    /* two passes: running max and sum, then the output.  A column whose
       maximum is not finite takes scipy's rule (shift by 0) in a scalar pass. */
    VT m[FL_TILE_MAX / VL], l[FL_TILE_MAX / VL];
    ACC s[FL_TILE_MAX / VL];
    ptrdiff_t nv = (w + VL - 1) / VL;
    const ptrdiff_t pf = fl_pf_rows(w, sizeof(T));
    FL(col_maxsum)(x, n, ld, w, m, s);
    for (ptrdiff_t k = 0; k < nv; k++) {
        double sl[VL];
        T ml[VL], ll[VL];
        FL(acc_lanes)(s[k], sl);
        FL(vst)(ml, m[k]);
        for (int j = 0; j < VL; j++) {
            ptrdiff_t c = k * VL + j;
            if (!isfinite(ml[j])) {
                ml[j] = 0;
                sl[j] = 0.0;
                for (ptrdiff_t r = 0; c < w && r < n; r++) sl[j] += FL_EXP(x[r * ld + c]);
            }
            ll[j] = (T)log(sl[j]);
        }
        m[k] = FL(vld)(ml);
        l[k] = FL(vld)(ll);
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        T *yr = y + r * ld;
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(x + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(y + (r + pf) * ld + k * VL, 1, 3);
            FL(tst)(yr, k, w, (FL(tld)(xr, k, w) - m[k]) - l[k]);
        }
    }
}

/* out[0..w) receives the log-sum-exp of the row (w == 1) or of each column. */
static void FL(fl_logsumexp_fwd)(const T *FL_RESTRICT x, T *FL_RESTRICT out,
                                    ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        out[0] = (T)FL(lse_row)(x, n, NULL, NULL, NULL);
        return;
    }
    double lse[FL_TILE_MAX];
    FL(lse_cols)(x, n, ld, w, lse, NULL, NULL);
    for (ptrdiff_t j = 0; j < w; j++) out[j] = (T)lse[j];
}

/*
 * Weighted log-sum-exp of one contiguous row, log|sum b exp(x)|, with
 * scipy's rules: entries with b == 0 are ignored (even inf or nan), the
 * weighted maxima are taken out of the sum, and a non-finite stable value is
 * replaced by the direct formula.  *sgn receives the sign of the sum; when
 * return_sign is 0 a negative sum gives nan.
 */
FL_INLINE double FL(lse_w_row)(const T *FL_RESTRICT x, const T *FL_RESTRICT b, ptrdiff_t n,
                               int return_sign, double *sgn, T *mo, double *ro)
{
    const VT zero = FL(vsplat)(0), ninf = FL(vsplat)(-INFINITY);
    VT mv = ninf;
    ptrdiff_t i = 0;
    for (; i + VL <= n; i += VL) {
        VT bv = FL(vld)(b + i);
        mv = FL(vmax)(FL(vsel)(FL(vne)(bv, zero), FL(vld)(x + i), ninf), mv);
    }
    if (i < n) {
        VT bv = FL(vldpad)(b + i, n - i, 0);
        mv = FL(vmax)(FL(vsel)(FL(vne)(bv, zero), FL(vldpad)(x + i, n - i, 0), ninf), mv);
    }
    T m = FL(vhmax)(mv);
    ACC acc = FL(acc_zero)(), cnt = FL(acc_zero)();
    for (i = 0; i < n; i += VL) {
        int part = i + VL > n;
        VT v = part ? FL(vldpad)(x + i, n - i, 0) : FL(vld)(x + i);
        VT bv = part ? FL(vldpad)(b + i, n - i, 0) : FL(vld)(b + i);
        VT e = FL(vexp)(v - m);
        VI live = FL(vne)(bv, zero), top = FL(veq)(v, FL(vsplat)(m));
        VI rest = live & ~top;
        FL(acc_addmul)(&acc, FL(vsel)(rest, bv, zero), FL(vsel)(rest, e, zero));
        FL(acc_add)(&cnt, FL(vsel)(live & top, bv, zero));
    }
    double s = FL(acc_sum)(acc), c = FL(acc_sum)(cnt);
    if (s != 0.0) s /= c;
    double sg = fl_sign(s + 1.0) * fl_sign(c);
    if (s < -1.0) s = -s - 2.0;
    double r = log1p(s) + log(fabs(c));
    double out = r + (double)m;
    if (!return_sign && sg < 0) out = NAN;
    if (!isfinite(out)) {
        double S = 0.0;
        for (ptrdiff_t k = 0; k < n; k++) S += (double)b[k] * exp((double)x[k]);
        sg = fl_sign(S);
        out = log(return_sign ? fabs(S) : S);
        m = 0;      /* as lse_finish: the direct value is all of it */
        r = out;
    }
    *sgn = sg;
    if (mo) {
        *mo = m;
        *ro = r;
    }
    return out;
}

static void FL(fl_logsumexp_w_fwd)(const T *FL_RESTRICT x, const T *FL_RESTRICT b,
                                      T *FL_RESTRICT out, T *FL_RESTRICT sgn,
                                      ptrdiff_t n, int return_sign)
{
    double sg;
    out[0] = (T)FL(lse_w_row)(x, b, n, return_sign, &sg, NULL, NULL);
    sgn[0] = (T)sg;
}

/* ------------------------------------------------------------ backward */

/* gx = y * (g - sum(g * y)) */
static void FL(fl_softmax_bwd)(const T *FL_RESTRICT g, const T *FL_RESTRICT y,
                                  T *FL_RESTRICT gx, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        ACC acc = FL(acc_zero)();
        ptrdiff_t i = 0;
        for (; i + VL <= n; i += VL) {
            FL_PREFETCH_W(gx + i);
            FL(acc_addmul)(&acc, FL(vld)(g + i), FL(vld)(y + i));
        }
        if (i < n) FL(acc_addmul)(&acc, FL(vldpad)(g + i, n - i, 0), FL(vldpad)(y + i, n - i, 0));
        T d = (T)FL(acc_sum)(acc);
        for (i = 0; i + VL <= n; i += VL) {
            FL_PREFETCH_BLOCK(y + n + i);
            FL_PREFETCH_BLOCK(g + n + i);
            FL(vst)(gx + i, FL(vld)(y + i) * (FL(vld)(g + i) - d));
        }
        for (; i < n; i++) gx[i] = y[i] * (g[i] - d);
        return;
    }
    ACC a[FL_TILE_MAX / VL];
    VT d[FL_TILE_MAX / VL];
    ptrdiff_t nv = (w + VL - 1) / VL;
    const ptrdiff_t pf = fl_pf_rows(w, sizeof(T));
    for (ptrdiff_t k = 0; k < nv; k++) a[k] = FL(acc_zero)();
    for (ptrdiff_t r = 0; r < n; r++) {
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(g + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(y + (r + pf) * ld + k * VL, 0, 3);
            FL(acc_addmul)(&a[k], FL(tld)(g + r * ld, k, w), FL(tld)(y + r * ld, k, w));
        }
    }
    for (ptrdiff_t k = 0; k < nv; k++) {
        double al[VL];
        T dl[VL];
        FL(acc_lanes)(a[k], al);
        for (int j = 0; j < VL; j++) dl[j] = (T)al[j];
        d[k] = FL(vld)(dl);
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(g + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(y + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(gx + (r + pf) * ld + k * VL, 1, 3);
            FL(tst)(gx + r * ld, k, w,
                    FL(tld)(y + r * ld, k, w) * (FL(tld)(g + r * ld, k, w) - d[k]));
        }
    }
}

/* gx = g - exp(y) * sum(g) */
static void FL(fl_log_softmax_bwd)(const T *FL_RESTRICT g, const T *FL_RESTRICT y,
                                      T *FL_RESTRICT gx, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        ACC acc = FL(acc_zero)();
        ptrdiff_t i = 0;
        for (; i + VL <= n; i += VL) {
            FL_PREFETCH_BLOCK(y + i);
            FL_PREFETCH_W(gx + i);
            FL(acc_add)(&acc, FL(vld)(g + i));
        }
        if (i < n) FL(acc_add)(&acc, FL(vldpad)(g + i, n - i, 0));
        T sg = (T)FL(acc_sum)(acc);
        for (i = 0; i + VL <= n; i += VL) {
            FL_PREFETCH_BLOCK(y + n + i);
            FL_PREFETCH_BLOCK(g + n + i);
            FL(vst)(gx + i, FL(vld)(g + i) - FL(vexp)(FL(vld)(y + i)) * sg);
        }
        if (i < n)
            FL(vstpart)(gx + i, FL(vldpad)(g + i, n - i, 0)
                        - FL(vexp)(FL(vldpad)(y + i, n - i, 0)) * sg, n - i);
        return;
    }
    ACC a[FL_TILE_MAX / VL];
    VT sg[FL_TILE_MAX / VL];
    ptrdiff_t nv = (w + VL - 1) / VL;
    const ptrdiff_t pf = fl_pf_rows(w, sizeof(T));
    for (ptrdiff_t k = 0; k < nv; k++) a[k] = FL(acc_zero)();
    for (ptrdiff_t r = 0; r < n; r++) {
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(g + (r + pf) * ld + k * VL, 0, 3);
            FL(acc_add)(&a[k], FL(tld)(g + r * ld, k, w));
        }
    }
    for (ptrdiff_t k = 0; k < nv; k++) {
        double al[VL];
        T sl[VL];
        FL(acc_lanes)(a[k], al);
        for (int j = 0; j < VL; j++) sl[j] = (T)al[j];
        sg[k] = FL(vld)(sl);
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(g + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(y + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(gx + (r + pf) * ld + k * VL, 1, 3);
            FL(tst)(gx + r * ld, k, w,
                    FL(tld)(g + r * ld, k, w) - FL(vexp)(FL(tld)(y + r * ld, k, w)) * sg[k]);
        }
    }
}

/*
 * gx = gout * exp(x - lse).  A slice whose lse is -inf (all entries -inf)
 * has no defined softmax weights; it gets the zero gradient.
 */
static void FL(fl_logsumexp_bwd)(const T *FL_RESTRICT gout, const T *FL_RESTRICT x,
                                    T *FL_RESTRICT gx, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        T mo;
        double ro;
        double lse = FL(lse_row)(x, n, gx, &mo, &ro);
        int dead = lse == -INFINITY;
        T go = dead ? 0 : gout[0], m = dead ? 0 : mo, l = dead ? 0 : (T)ro;
        ptrdiff_t i = 0;
        for (; i + VL <= n; i += VL) {
            FL_PREFETCH_BLOCK(x + n + i);
            FL(vst)(gx + i, FL(vexp)((FL(vld)(x + i) - m) - l) * go);
        }
        if (i < n)
            FL(vstpart)(gx + i, FL(vexp)((FL(vldpad)(x + i, n - i, 0) - m) - l) * go, n - i);
        return;
    }
    double lse[FL_TILE_MAX], ro[FL_TILE_MAX];
    T mo[FL_TILE_MAX];
    VT go[FL_TILE_MAX / VL], ms[FL_TILE_MAX / VL], l[FL_TILE_MAX / VL];
    ptrdiff_t nv = (w + VL - 1) / VL;
    const ptrdiff_t pf = fl_pf_rows(w, sizeof(T));
    FL(lse_cols)(x, n, ld, w, lse, mo, ro);
    for (ptrdiff_t k = 0; k < nv; k++) {
        T gl[VL], ml[VL], ll[VL];
        for (int j = 0; j < VL; j++) {
            ptrdiff_t c = k * VL + j;
            int dead = c >= w || lse[c] == -INFINITY;
            gl[j] = dead ? 0 : gout[c];
            ml[j] = dead ? 0 : mo[c];
            ll[j] = dead ? 0 : (T)ro[c];
        }
        go[k] = FL(vld)(gl);
        ms[k] = FL(vld)(ml);
        l[k] = FL(vld)(ll);
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        for (ptrdiff_t k = 0; k < nv; k++) {
            __builtin_prefetch(x + (r + pf) * ld + k * VL, 0, 3);
            __builtin_prefetch(gx + (r + pf) * ld + k * VL, 1, 3);
            FL(tst)(gx + r * ld, k, w,
                    FL(vexp)((FL(tld)(x + r * ld, k, w) - ms[k]) - l[k]) * go[k]);
        }
    }
}

/* Weighted: gx = gout * sign * b * exp(x - log|S|); zero where b == 0 and
   for a slice whose weighted sum is 0. */
static void FL(fl_logsumexp_w_bwd)(const T *FL_RESTRICT gout, const T *FL_RESTRICT x,
                                      const T *FL_RESTRICT b, T *FL_RESTRICT gx, ptrdiff_t n)
{
    double sg, ro;
    T mo;
    double lse = FL(lse_w_row)(x, b, n, 1, &sg, &mo, &ro);
    int dead = lse == -INFINITY;
    T go = dead ? 0 : (T)((double)gout[0] * sg), m = dead ? 0 : mo, l = dead ? 0 : (T)ro;
    for (ptrdiff_t i = 0; i < n; i++) {
        T t = go * b[i] * FL_EXP((x[i] - m) - l);
        gx[i] = b[i] != 0 ? t : 0;
    }
}
