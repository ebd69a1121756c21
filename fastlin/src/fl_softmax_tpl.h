/*
 * Softmax family inner loops, instantiated once per dtype by fl_softmax.h
 * (T = element type, FL(name) = name##_d / name##_f, FL_EXP = exp of T).
 * Accumulation is always in double: for float32 this buys ~9 more digits at
 * the price of a widening convert, for float64 it is the native type.
 *
 * Every entry point processes one work item of a (outer, n, inner) C-ordered
 * block: with ld == 1 it is one contiguous row of n elements (reduction along
 * the last axis); with ld > 1 it is a tile of w columns of an n x ld slab,
 * reduced down the columns (reduction along an inner axis), so that the
 * loops still walk memory contiguously and vectorize across the w columns.
 */

/* NaN-ignoring maximum (NaNs propagate later through exp and the sum). */
FL_INLINE T FL(rowmax)(const T *FL_RESTRICT x, ptrdiff_t n)
{
    T acc[FL_L];
    for (int j = 0; j < FL_L; j++) acc[j] = -INFINITY;
    ptrdiff_t i = 0;
    for (; i + FL_L <= n; i += FL_L)
        for (int j = 0; j < FL_L; j++) {
            T v = x[i + j];
            acc[j] = v > acc[j] ? v : acc[j];
        }
    for (; i < n; i++) acc[0] = x[i] > acc[0] ? x[i] : acc[0];
    for (int w = FL_L / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++) acc[j] = acc[j + w] > acc[j] ? acc[j + w] : acc[j];
    return acc[0];
}

FL_INLINE void FL(colmax)(const T *FL_RESTRICT x, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w,
                          T *FL_RESTRICT m)
{
    for (ptrdiff_t j = 0; j < w; j++) m[j] = -INFINITY;
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) m[j] = xr[j] > m[j] ? xr[j] : m[j];
    }
}

/* sum_i exp(x_i - m), optionally storing the exponentials in y. */
FL_INLINE double FL(expsum)(const T *FL_RESTRICT x, T *FL_RESTRICT y, ptrdiff_t n, T m)
{
    double acc[FL_L] = {0};
    ptrdiff_t i = 0;
    for (; i + FL_L <= n; i += FL_L)
        for (int j = 0; j < FL_L; j++) {
            T e = FL_EXP(x[i + j] - m);
            if (y) y[i + j] = e;
            acc[j] += e;
        }
    for (; i < n; i++) {
        T e = FL_EXP(x[i] - m);
        if (y) y[i] = e;
        acc[0] += e;
    }
    return fl_hsum(acc);
}

/* log(sum(exp(x))) the direct way: only for rows whose stable value is not
   finite (inf, nan, all -inf), where it reproduces scipy's edge cases. */
static double FL(lse_direct)(const T *x, ptrdiff_t n, ptrdiff_t stride)
{
    double s = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) s += exp((double)x[i * stride]);
    return log(s);
}

/*
 * Stable log-sum-exp as scipy computes it: the maxima are taken out of the
 * sum, lse = m + log(c) + log1p(s / c), c = number of maxima, s = sum of the
 * other exp(x - m).  log1p keeps the digits when one term dominates
 * (logsumexp([0, -40]) = 4.25e-18, not 0).
 */
FL_INLINE double FL(lse_row)(const T *FL_RESTRICT x, ptrdiff_t n)
{
    T m = FL(rowmax)(x, n);
    double acc[FL_L] = {0}, cnt[FL_L] = {0};
    ptrdiff_t i = 0;
    for (; i + FL_L <= n; i += FL_L)
        for (int j = 0; j < FL_L; j++) {
            T v = x[i + j];
            T e = FL_EXP(v - m);
            acc[j] += v == m ? 0.0 : (double)e;
            cnt[j] += v == m ? 1.0 : 0.0;
        }
    for (; i < n; i++) {
        T v = x[i];
        T e = FL_EXP(v - m);
        acc[0] += v == m ? 0.0 : (double)e;
        cnt[0] += v == m ? 1.0 : 0.0;
    }
    double s = fl_hsum(acc), c = fl_hsum(cnt);
    if (s != 0.0) s /= c;
    double out = log1p(s) + log(c) + (double)m;
    if (!isfinite(out)) out = FL(lse_direct)(x, n, 1);
    return out;
}

/* The same per column of a tile; lse[j] for j < w. */
FL_INLINE void FL(lse_cols)(const T *FL_RESTRICT x, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w,
                            double *FL_RESTRICT lse)
{
    T m[FL_TILE_MAX];
    double s[FL_TILE_MAX], c[FL_TILE_MAX];
    FL(colmax)(x, n, ld, w, m);
    for (ptrdiff_t j = 0; j < w; j++) s[j] = c[j] = 0.0;
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) {
            T v = xr[j];
            T e = FL_EXP(v - m[j]);
            s[j] += v == m[j] ? 0.0 : (double)e;
            c[j] += v == m[j] ? 1.0 : 0.0;
        }
    }
    for (ptrdiff_t j = 0; j < w; j++) {
        double sj = s[j] != 0.0 ? s[j] / c[j] : s[j];
        double out = log1p(sj) + log(c[j]) + (double)m[j];
        lse[j] = isfinite(out) ? out : FL(lse_direct)(x + j, n, ld);
    }
}

/* ------------------------------------------------------------- forward */

FL_CLONES void FL(fl_softmax_fwd)(const T *FL_RESTRICT x, T *FL_RESTRICT y,
                                  ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        T m = FL(rowmax)(x, n);
        double inv = 1.0 / FL(expsum)(x, y, n, m);   /* sum >= 1 unless nan */
        for (ptrdiff_t i = 0; i < n; i++) y[i] = (T)((double)y[i] * inv);
        return;
    }
    T m[FL_TILE_MAX];
    double s[FL_TILE_MAX];
    FL(colmax)(x, n, ld, w, m);
    for (ptrdiff_t j = 0; j < w; j++) s[j] = 0.0;
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        T *yr = y + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) {
            T e = FL_EXP(xr[j] - m[j]);
            yr[j] = e;
            s[j] += e;
        }
    }
    for (ptrdiff_t j = 0; j < w; j++) s[j] = 1.0 / s[j];
    for (ptrdiff_t r = 0; r < n; r++) {
        T *yr = y + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) yr[j] = (T)((double)yr[j] * s[j]);
    }
}

/* scipy's log_softmax: a non-finite maximum is replaced by 0 before the shift. */
FL_CLONES void FL(fl_log_softmax_fwd)(const T *FL_RESTRICT x, T *FL_RESTRICT y,
                                      ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        T m = FL(rowmax)(x, n);
        if (!isfinite(m)) m = 0;
        T l = (T)log(FL(expsum)(x, NULL, n, m));
        for (ptrdiff_t i = 0; i < n; i++) y[i] = (x[i] - m) - l;
        return;
    }
    T m[FL_TILE_MAX], l[FL_TILE_MAX];
    double s[FL_TILE_MAX];
    FL(colmax)(x, n, ld, w, m);
    for (ptrdiff_t j = 0; j < w; j++) {
        if (!isfinite(m[j])) m[j] = 0;
        s[j] = 0.0;
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) s[j] += FL_EXP(xr[j] - m[j]);
    }
    for (ptrdiff_t j = 0; j < w; j++) l[j] = (T)log(s[j]);
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        T *yr = y + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) yr[j] = (xr[j] - m[j]) - l[j];
    }
}

/* out[0..w) receives the log-sum-exp of the row (w == 1) or of each column. */
FL_CLONES void FL(fl_logsumexp_fwd)(const T *FL_RESTRICT x, T *FL_RESTRICT out,
                                    ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        out[0] = (T)FL(lse_row)(x, n);
        return;
    }
    double lse[FL_TILE_MAX];
    FL(lse_cols)(x, n, ld, w, lse);
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
                               int return_sign, double *sgn)
{
    T m = -INFINITY;
    for (ptrdiff_t i = 0; i < n; i++) {
        T v = b[i] != 0 ? x[i] : (T)-INFINITY;
        m = v > m ? v : m;
    }
    double acc[FL_L] = {0}, cnt[FL_L] = {0};
    ptrdiff_t i = 0;
    for (; i + FL_L <= n; i += FL_L)
        for (int j = 0; j < FL_L; j++) {
            T v = x[i + j], bw = b[i + j];
            T e = FL_EXP(v - m);
            int live = bw != 0, top = v == m;
            acc[j] += (live & !top) ? (double)bw * (double)e : 0.0;
            cnt[j] += (live & top) ? (double)bw : 0.0;
        }
    for (; i < n; i++) {
        T v = x[i], bw = b[i];
        T e = FL_EXP(v - m);
        int live = bw != 0, top = v == m;
        acc[0] += (live & !top) ? (double)bw * (double)e : 0.0;
        cnt[0] += (live & top) ? (double)bw : 0.0;
    }
    double s = fl_hsum(acc), c = fl_hsum(cnt);
    if (s != 0.0) s /= c;
    double sg = fl_sign(s + 1.0) * fl_sign(c);
    if (s < -1.0) s = -s - 2.0;
    double out = log1p(s) + log(fabs(c)) + (double)m;
    if (!return_sign && sg < 0) out = NAN;
    if (!isfinite(out)) {
        double S = 0.0;
        for (ptrdiff_t k = 0; k < n; k++) S += (double)b[k] * exp((double)x[k]);
        sg = fl_sign(S);
        out = log(return_sign ? fabs(S) : S);
    }
    *sgn = sg;
    return out;
}

FL_CLONES void FL(fl_logsumexp_w_fwd)(const T *FL_RESTRICT x, const T *FL_RESTRICT b,
                                      T *FL_RESTRICT out, T *FL_RESTRICT sgn,
                                      ptrdiff_t n, int return_sign)
{
    double sg;
    out[0] = (T)FL(lse_w_row)(x, b, n, return_sign, &sg);
    sgn[0] = (T)sg;
}

/* ------------------------------------------------------------ backward */

/* gx = y * (g - sum(g * y)) */
FL_CLONES void FL(fl_softmax_bwd)(const T *FL_RESTRICT g, const T *FL_RESTRICT y,
                                  T *FL_RESTRICT gx, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        double acc[FL_L] = {0};
        ptrdiff_t i = 0;
        for (; i + FL_L <= n; i += FL_L)
            for (int j = 0; j < FL_L; j++) acc[j] += (double)g[i + j] * (double)y[i + j];
        for (; i < n; i++) acc[0] += (double)g[i] * (double)y[i];
        double d = fl_hsum(acc);
        for (i = 0; i < n; i++) gx[i] = (T)((double)y[i] * ((double)g[i] - d));
        return;
    }
    double d[FL_TILE_MAX];
    for (ptrdiff_t j = 0; j < w; j++) d[j] = 0.0;
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *gr = g + r * ld, *yr = y + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) d[j] += (double)gr[j] * (double)yr[j];
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *gr = g + r * ld, *yr = y + r * ld;
        T *o = gx + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) o[j] = (T)((double)yr[j] * ((double)gr[j] - d[j]));
    }
}

/* gx = g - exp(y) * sum(g) */
FL_CLONES void FL(fl_log_softmax_bwd)(const T *FL_RESTRICT g, const T *FL_RESTRICT y,
                                      T *FL_RESTRICT gx, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        double acc[FL_L] = {0};
        ptrdiff_t i = 0;
        for (; i + FL_L <= n; i += FL_L)
            for (int j = 0; j < FL_L; j++) acc[j] += (double)g[i + j];
        for (; i < n; i++) acc[0] += (double)g[i];
        double sg = fl_hsum(acc);
        for (i = 0; i < n; i++) gx[i] = (T)((double)g[i] - (double)FL_EXP(y[i]) * sg);
        return;
    }
    double sg[FL_TILE_MAX];
    for (ptrdiff_t j = 0; j < w; j++) sg[j] = 0.0;
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *gr = g + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) sg[j] += (double)gr[j];
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *gr = g + r * ld, *yr = y + r * ld;
        T *o = gx + r * ld;
        for (ptrdiff_t j = 0; j < w; j++)
            o[j] = (T)((double)gr[j] - (double)FL_EXP(yr[j]) * sg[j]);
    }
}

/*
 * gx = gout * exp(x - lse).  A slice whose lse is -inf (all entries -inf)
 * has no defined softmax weights; it gets the zero gradient.
 */
FL_CLONES void FL(fl_logsumexp_bwd)(const T *FL_RESTRICT gout, const T *FL_RESTRICT x,
                                    T *FL_RESTRICT gx, ptrdiff_t n, ptrdiff_t ld, ptrdiff_t w)
{
    if (ld == 1) {
        double lse = FL(lse_row)(x, n);
        double go = lse == -INFINITY ? 0.0 : (double)gout[0];
        T l = (T)lse;
        if (lse == -INFINITY) l = 0;
        for (ptrdiff_t i = 0; i < n; i++) gx[i] = (T)(go * (double)FL_EXP(x[i] - l));
        return;
    }
    double lse[FL_TILE_MAX], go[FL_TILE_MAX];
    T l[FL_TILE_MAX];
    FL(lse_cols)(x, n, ld, w, lse);
    for (ptrdiff_t j = 0; j < w; j++) {
        int dead = lse[j] == -INFINITY;
        go[j] = dead ? 0.0 : (double)gout[j];
        l[j] = dead ? 0 : (T)lse[j];
    }
    for (ptrdiff_t r = 0; r < n; r++) {
        const T *xr = x + r * ld;
        T *o = gx + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) o[j] = (T)(go[j] * (double)FL_EXP(xr[j] - l[j]));
    }
}

/* Weighted: gx = gout * sign * b * exp(x - log|S|); zero where b == 0 and
   for a slice whose weighted sum is 0. */
FL_CLONES void FL(fl_logsumexp_w_bwd)(const T *FL_RESTRICT gout, const T *FL_RESTRICT x,
                                      const T *FL_RESTRICT b, T *FL_RESTRICT gx, ptrdiff_t n)
{
    double sg;
    double lse = FL(lse_w_row)(x, b, n, 1, &sg);
    int dead = lse == -INFINITY;
    double go = dead ? 0.0 : (double)gout[0] * sg;
    T l = dead ? 0 : (T)lse;
    for (ptrdiff_t i = 0; i < n; i++) {
        double t = go * (double)b[i] * (double)FL_EXP(x[i] - l);
        gx[i] = (T)(b[i] != 0 ? t : 0.0);
    }
}
