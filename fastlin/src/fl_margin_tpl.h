/*
 * Max-margin (hinge ranking) loss inner loops, instantiated per dtype by
 * fl_margin.h (T, VT, VI, VL, ACC, FL(name) as for the softmax family).
 *
 *   loss[j] = max(0, v_j),   v_j = (neg[j] - pos) + margin
 *
 * in that order: the two scores are usually of a size, so their difference
 * is exact or nearly (Sterbenz), and the margin is added to it.  The usual
 * margin - pos + neg loses the margin in `margin - pos` when the scores are
 * large (pos = neg = 1e17, margin 1: loss 0 instead of 1; torch's relu(m -
 * p + n) does).  Written `v < 0 ? 0 : v` so that a nan score gives a nan
 * loss (a plain max(0, v) would return 0, as torch's multi_margin_loss does).
 */

/* sum over one row of the hinge; nothing is stored. */
static double FL(fl_margin_row_sum)(const T *FL_RESTRICT neg, ptrdiff_t n, T p, T m)
{
    const VT zero = FL(vsplat)(0);
    ACC acc = FL(acc_zero)();
    ptrdiff_t i = 0;
    for (; i + VL <= n; i += VL) {
        VT v = (FL(vld)(neg + i) - p) + m;
        FL(acc_add)(&acc, FL(vsel)(FL(vlt)(v, zero), zero, v));
    }
    if (i < n) {
        VT v = (FL(vldpad)(neg + i, n - i, 0) - p) + m;
        v = FL(vsel)(FL(vlt)(v, zero), zero, v);
        FL(acc_add)(&acc, FL(vsel)(FL(vmask)(n - i), v, zero));
    }
    return FL(acc_sum)(acc);
}

/* the row of losses */
static void FL(fl_margin_row)(const T *FL_RESTRICT neg, T *FL_RESTRICT out, ptrdiff_t n, T p,
                                 T m)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        T v = (neg[i] - p) + m;
        out[i] = v < 0 ? 0 : v;
    }
}

/*
 * Backward of one row: gneg[j] = g[j] * [v_j > 0] (g broadcast when gstride
 * is 0), returns gpos = -sum_j gneg[j].  The subgradient at the kink
 * (v == 0, the margin met exactly) is 0; a nan v gives a nan gradient.
 */
static double FL(fl_margin_row_bwd)(const T *FL_RESTRICT neg, const T *FL_RESTRICT g,
                                       ptrdiff_t gstride, T *FL_RESTRICT gneg, ptrdiff_t n, T p,
                                       T m)
{
    ACC acc = FL(acc_zero)();
    const VT zero = FL(vsplat)(0);
    ptrdiff_t i = 0;
    if (gstride == 1) {
        for (; i + VL <= n; i += VL) {
            VT v = (FL(vld)(neg + i) - p) + m;
            VT gv = FL(vld)(g + i);
            /* v > 0: g; v <= 0 (-inf included): 0; nan: nan */
            VT r = FL(vsel)(FL(vgt)(v, zero), gv, FL(vsel)(FL(vne)(v, v), v, zero));
            FL(vst)(gneg + i, r);
            FL(acc_add)(&acc, r);
        }
    } else {
        const VT gv = FL(vsplat)(g[0]);
        for (; i + VL <= n; i += VL) {
            VT v = (FL(vld)(neg + i) - p) + m;
            VT r = FL(vsel)(FL(vgt)(v, zero), gv, FL(vsel)(FL(vne)(v, v), v, zero));
            FL(vst)(gneg + i, r);
            FL(acc_add)(&acc, r);
        }
    }
    double s = FL(acc_sum)(acc);
    for (; i < n; i++) {
        T v = (neg[i] - p) + m;
        T gv = g[gstride * i];
        T r = v > 0 ? gv : (v != v ? v : 0);
        gneg[i] = r;
        s += (double)r;
    }
    return -s;
}
