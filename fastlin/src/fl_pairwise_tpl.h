/*
 * cdist_logsumexp's inner loop, instantiated once per dtype by
 * fl_pairwise.h (T, VT, VI, VL, ACC, FL(name) as in fl_softmax_tpl.h).
 *
 * A row of the soft-min, log(sum_j b_j exp(scale d_j)), is folded tile row
 * by tile row into a running state (m, s): the shift m, the largest term
 * exponent scale d_j (with b_j != 0) seen so far, and s = sum_j b_j
 * exp(scale d_j - m) in double.  A larger shift in a later tile rescales s
 * by exp(m_old - m_new) (the online maximum), so no exponent is ever taken
 * of a positive number and the row is never held whole.  The fold order
 * (tiles left to right, lanes in fl_pairsum's order) is fixed by the shapes:
 * the result does not depend on the thread count.
 */

/*
 * Fold the terms b_j exp(scale d_j), j < n, into the state (*m, *s).
 * Terms with b_j == 0 are dropped whatever d_j is (b NULL: every b_j is 1).
 * A NaN term makes *m NaN for good, a +inf one makes it +inf (the sum is not
 * needed after either); -inf terms add nothing.  scale d_j and its shifted
 * exponential are formed in T, as the softmax family forms x - max.
 */
FL_INLINE void FL(lse_fold)(const T *FL_RESTRICT d, ptrdiff_t n, const T *FL_RESTRICT b,
                            T scale, double *FL_RESTRICT m, double *FL_RESTRICT s)
{
    if (*m != *m || *m == INFINITY || n <= 0) return;
    const VT zero = FL(vsplat)(0), ninf = FL(vsplat)(-INFINITY), sc = FL(vsplat)(scale);
    VI bad = FL(vmask)(0);
    VT mv = ninf;
    for (ptrdiff_t i = 0; i < n; i += VL) {
        int part = i + VL > n;
        VT v = sc * (part ? FL(vldpad)(d + i, n - i, 0) : FL(vld)(d + i));
        VI live = part ? FL(vmask)(n - i) : ~FL(vmask)(0);
        if (b) live &= FL(vne)(part ? FL(vldpad)(b + i, n - i, 0) : FL(vld)(b + i), zero);
        bad |= FL(vne)(v, v) & live;
        mv = FL(vmax)(FL(vsel)(live, v, ninf), mv);
    }
    if (FL(vany)(bad)) {
        *m = NAN;
        return;
    }
    T mt = FL(vhmax)(mv);
    if (mt == -INFINITY) return;            /* nothing but zeros to add */
    if (mt == INFINITY) {
        *m = INFINITY;
        return;
    }
    if ((double)mt > *m) {
        *s *= exp(*m - (double)mt);         /* exp(-inf) = 0 before any term */
        *m = (double)mt;
    }
    const VT shift = FL(vsplat)((T)*m);     /* a value of T: exact */
    ACC acc = FL(acc_zero)();
    for (ptrdiff_t i = 0; i < n; i += VL) {
        int part = i + VL > n;
        VT v = sc * (part ? FL(vldpad)(d + i, n - i, 0) : FL(vld)(d + i));
        VI live = part ? FL(vmask)(n - i) : ~FL(vmask)(0);
        VT e = FL(vexp)(v - shift);
        if (b) {
            /* a zero weight drops its term before the product: its exponent
               may be nan or beyond exp's range (0 * inf is nan) */
            VT bv = part ? FL(vldpad)(b + i, n - i, 0) : FL(vld)(b + i);
            live &= FL(vne)(bv, zero);
            FL(acc_addmul)(&acc, FL(vsel)(live, bv, zero), FL(vsel)(live, e, zero));
        } else {
            FL(acc_add)(&acc, FL(vsel)(live, e, zero));
        }
    }
    *s += FL(acc_sum)(acc);
}

/*
 * cdist_topk's scan: the first j in [j, n) whose key (d_j, or -d_j when
 * neg: the farthest) is below top, the worst key a row's heap keeps -- or
 * every j when top is NaN (a heap not yet full holds NaN placeholders, and a
 * NaN distance only beats a NaN) -- else n.  From the start of a tile row
 * its best key is found with whole vectors first: once the heap is full
 * almost no tile row holds an entry that can enter, and those are skipped
 * at the speed of the loads.
 */
FL_INLINE ptrdiff_t FL(topk_next)(const T *FL_RESTRICT d, ptrdiff_t j, ptrdiff_t n, T top,
                                  int neg)
{
    if (top != top) return j;
    if (j == 0) {
        /* the largest -key of the row (NaN-ignoring): below -top, none enters */
        VT best = FL(vsplat)(-INFINITY);
        ptrdiff_t i = 0;
        for (; i + VL <= n; i += VL) {
            VT v = FL(vld)(d + i);
            best = FL(vmax)(neg ? v : -v, best);
        }
        if (i < n) {
            VT v = FL(vldpad)(d + i, n - i, neg ? -INFINITY : INFINITY);
            best = FL(vmax)(neg ? v : -v, best);
        }
        if (!(FL(vhmax)(best) > -top)) return n;
    }
    /* then vector by vector: a row with a few entries that enter (a large k
       fills many rows with some) is still compared VL lanes at a time */
    const VT t = FL(vsplat)(neg ? -top : top), one = FL(vsplat)(1), zero = FL(vsplat)(0);
    for (; j + VL <= n; j += VL) {
        VT v = FL(vld)(d + j);
        if (FL(vhmax)(FL(vsel)(neg ? FL(vgt)(v, t) : FL(vlt)(v, t), one, zero)) > 0) break;
    }
    for (; j < n; j++) {
        T v = neg ? -d[j] : d[j];
        if (v < top) return j;
    }
    return n;
}

/*
 * One row of cdist_logsumexp_backward's band: e_j = exp(scale d_j - shift)
 * (shift = the row's log-sum-exp, in T, as the exponent is formed in T),
 * w_j = gsc b_j e_j (gsc = grad_i scale; 0 where b_j == 0: an absent term,
 * whose e_j may be inf), cs_j += g e_j in double (the weights' gradient,
 * kept for every j) and ws_j += w_j in double (the column sums of W the
 * squared-distance gradient needs); returns the row's sum of w in double.
 * A row without terms (shift -inf) has no gradient: w = 0, cs and ws
 * unchanged.
 */
FL_INLINE double FL(lse_weights_row)(const T *FL_RESTRICT d, ptrdiff_t n,
                                     const T *FL_RESTRICT b, T scale, T shift, T gsc,
                                     double g, T *FL_RESTRICT w, double *FL_RESTRICT cs,
                                     double *FL_RESTRICT ws)
{
    if (shift == -INFINITY) {
        for (ptrdiff_t j = 0; j < n; j++) w[j] = 0;
        return 0.0;
    }
    const VT sc = FL(vsplat)(scale), sh = FL(vsplat)(shift), gv = FL(vsplat)(gsc),
             zero = FL(vsplat)(0);
    ACC acc = FL(acc_zero)();
    T el[VL], wl[VL];
    for (ptrdiff_t i = 0; i < n; i += VL) {
        ptrdiff_t m = n - i < VL ? n - i : VL;
        VT dv = m < VL ? FL(vldpad)(d + i, m, 0) : FL(vld)(d + i);
        VT e = FL(vexp)(sc * dv - sh);
        VT wv;
        if (b) {
            VT bv = m < VL ? FL(vldpad)(b + i, m, 0) : FL(vld)(b + i);
            wv = FL(vsel)(FL(vne)(bv, zero), gv * bv * e, zero);
        } else {
            wv = gv * e;
        }
        if (m < VL) {
            wv = FL(vsel)(FL(vmask)(m), wv, zero);
            FL(vstpart)(w + i, wv, m);
        } else {
            FL(vst)(w + i, wv);
        }
        FL(acc_add)(&acc, wv);
        FL(vst)(el, e);
        FL(vst)(wl, wv);
        for (ptrdiff_t q = 0; q < m; q++) {
            cs[i + q] += g * (double)el[q];
            ws[i + q] += (double)wl[q];
        }
    }
    return FL(acc_sum)(acc);
}
