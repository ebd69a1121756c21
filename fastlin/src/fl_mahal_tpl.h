/*
 * Mahalanobis inner loop, instantiated per dtype by fl_mahal.h (T, VT, VL,
 * ACC, FL(name) as for the softmax family).
 *
 * VL rows at a time, one row per vector lane: delta = x - mu is transposed
 * into a d x VL scratch block (column j = feature j of the VL rows), then
 *   solve (cov / cholesky):  forward substitution z = L^-1 delta,
 *                            z_j = (delta_j - sum_{k<j} L_jk z_k) / L_jj
 *   product (VI = L L^T):    z = L^T delta, z_j = sum_{k>=j} L_kj delta_k
 * both in place (z_j overwrites delta_j once nothing later needs it), and
 * d^2 = sum_j z_j^2 accumulated in double.  d^2 / 2 vector FMAs per VL rows
 * and no call into BLAS: for small d a BLAS trsm per block costs more than
 * the arithmetic (4x slower at d = 16).
 */
/* zs (d x VL, lane r = row r) := X[r] - mu for the cnt rows at X; the other
   lanes 0 */
FL_INLINE void FL(maha_load)(const T *FL_RESTRICT X, ptrdiff_t cnt, ptrdiff_t d,
                             const T *FL_RESTRICT mu, T *FL_RESTRICT zs)
{
    if (cnt < VL)
        for (ptrdiff_t q = 0; q < d * VL; q++) zs[q] = 0;
    for (ptrdiff_t r = 0; r < cnt; r++) {
        const T *xr = X + r * d;
        for (ptrdiff_t j = 0; j < d; j++) zs[j * VL + r] = xr[j] - mu[j];
    }
}

/* zs := L^-1 zs by forward substitution, lane by lane.  Four partial sums
   per dot product: one FMA chain would wait on the FMA latency (measured 4x
   slower at d = 128). */
FL_INLINE void FL(maha_forward_subst)(const T *FL_RESTRICT L, ptrdiff_t d, T *FL_RESTRICT zs)
{
    for (ptrdiff_t j = 0; j < d; j++) {
        const T *Lj = L + j * d;
        VT a0 = FL(vsplat)(0), a1 = a0, a2 = a0, a3 = a0;
        ptrdiff_t k = 0;
        for (; k + 4 <= j; k += 4) {
            a0 += Lj[k] * FL(vld)(zs + k * VL);
            a1 += Lj[k + 1] * FL(vld)(zs + (k + 1) * VL);
            a2 += Lj[k + 2] * FL(vld)(zs + (k + 2) * VL);
            a3 += Lj[k + 3] * FL(vld)(zs + (k + 3) * VL);
        }
        for (; k < j; k++) a0 += Lj[k] * FL(vld)(zs + k * VL);
        FL(vst)(zs + j * VL, (FL(vld)(zs + j * VL) - ((a0 + a1) + (a2 + a3))) / Lj[j]);
    }
}

FL_CLONES void FL(fl_maha_rows)(const T *FL_RESTRICT X, ptrdiff_t m, ptrdiff_t d,
                                const T *FL_RESTRICT mu, const T *FL_RESTRICT L, int solve,
                                int squared, T *FL_RESTRICT out, T *FL_RESTRICT zs)
{
    for (ptrdiff_t r0 = 0; r0 < m; r0 += VL) {
        ptrdiff_t cnt = m - r0 < VL ? m - r0 : VL;
        FL(maha_load)(X + r0 * d, cnt, d, mu, zs);
        if (solve) {
            FL(maha_forward_subst)(L, d, zs);
        } else {
            for (ptrdiff_t j = 0; j < d; j++) {
                VT a0 = FL(vsplat)(0), a1 = a0, a2 = a0, a3 = a0;
                ptrdiff_t k = j;
                for (; k + 4 <= d; k += 4) {
                    a0 += L[k * d + j] * FL(vld)(zs + k * VL);
                    a1 += L[(k + 1) * d + j] * FL(vld)(zs + (k + 1) * VL);
                    a2 += L[(k + 2) * d + j] * FL(vld)(zs + (k + 2) * VL);
                    a3 += L[(k + 3) * d + j] * FL(vld)(zs + (k + 3) * VL);
                }
                for (; k < d; k++) a0 += L[k * d + j] * FL(vld)(zs + k * VL);
                FL(vst)(zs + j * VL, (a0 + a1) + (a2 + a3));
            }
        }
        ACC ss = FL(acc_zero)();
        for (ptrdiff_t j = 0; j < d; j++) {
            VT z = FL(vld)(zs + j * VL);
            FL(acc_addmul)(&ss, z, z);
        }
        double s[VL];
        FL(acc_lanes)(ss, s);
        for (ptrdiff_t r = 0; r < cnt; r++) out[r0 + r] = (T)(squared ? s[r] : sqrt(s[r]));
    }
}

/*
 * Backward for cov / cholesky, one pass over X as the forward: per VL rows,
 * z = L^-1 delta (forward substitution), w = L^-T z = cov^-1 delta (back
 * substitution), d^2 = |z|^2, and with a = g (squared) or g / (2 d) (0 at
 * d = 0, the zero subgradient):
 *   gX = 2 a w                                  (written row by row)
 *   gM += sum_rows a w w^T (cov) or a w z^T (cholesky), per lane in T, then
 *         summed over the lanes in double into gm (d x d) at the end --
 *         small d only; for large d the w (z) rows are written out instead
 *         and the caller forms gM with one GEMM (d^2 per row of accumulator
 *         traffic would dominate).
 * The caller applies the sign / factor 2 / tril and sums the per-block gm.
 */
FL_CLONES void FL(fl_maha_bwd_rows)(const T *FL_RESTRICT X, ptrdiff_t m, ptrdiff_t d,
                                    const T *FL_RESTRICT mu, const T *FL_RESTRICT L,
                                    const T *FL_RESTRICT g, int squared, int chol,
                                    T *FL_RESTRICT gX, double *FL_RESTRICT gm,
                                    T *FL_RESTRICT zs, T *FL_RESTRICT ws, T *FL_RESTRICT acc,
                                    T *FL_RESTRICT wout, T *FL_RESTRICT zout)
{
    /* gm == NULL (large d): no d x d accumulation here; the rows of w (and
       z) go to wout / zout and the caller forms gM with one GEMM */
    if (gm)
        for (ptrdiff_t q = 0; q < d * d * VL; q++) acc[q] = 0;
    for (ptrdiff_t r0 = 0; r0 < m; r0 += VL) {
        ptrdiff_t cnt = m - r0 < VL ? m - r0 : VL;
        FL(maha_load)(X + r0 * d, cnt, d, mu, zs);
        FL(maha_forward_subst)(L, d, zs);             /* z = L^-1 delta */
        for (ptrdiff_t j = d - 1; j >= 0; j--) {     /* w = L^-T z */
            VT s0 = FL(vsplat)(0), s1 = s0, s2 = s0, s3 = s0;
            ptrdiff_t k = j + 1;
            for (; k + 4 <= d; k += 4) {
                s0 += L[k * d + j] * FL(vld)(ws + k * VL);
                s1 += L[(k + 1) * d + j] * FL(vld)(ws + (k + 1) * VL);
                s2 += L[(k + 2) * d + j] * FL(vld)(ws + (k + 2) * VL);
                s3 += L[(k + 3) * d + j] * FL(vld)(ws + (k + 3) * VL);
            }
            for (; k < d; k++) s0 += L[k * d + j] * FL(vld)(ws + k * VL);
            FL(vst)(ws + j * VL, (FL(vld)(zs + j * VL) - ((s0 + s1) + (s2 + s3))) / L[j * d + j]);
        }
        ACC ss = FL(acc_zero)();
        for (ptrdiff_t j = 0; j < d; j++) {
            VT z = FL(vld)(zs + j * VL);
            FL(acc_addmul)(&ss, z, z);
        }
        double d2[VL];
        T al[VL];
        FL(acc_lanes)(ss, d2);
        for (ptrdiff_t r = 0; r < VL; r++) {
            double gi = r < cnt ? (double)g[r0 + r] : 0.0;
            double dist = sqrt(d2[r]);
            al[r] = (T)(squared ? gi : (dist > 0 ? gi / (2.0 * dist) : 0.0));
        }
        VT a = FL(vld)(al);
        for (ptrdiff_t r = 0; r < cnt; r++) {
            T *gr = gX + (r0 + r) * d;
            T two_a = 2 * al[r];
            for (ptrdiff_t j = 0; j < d; j++) gr[j] = two_a * ws[j * VL + r];
        }
        if (!gm) {
            for (ptrdiff_t r = 0; r < cnt; r++)
                for (ptrdiff_t j = 0; j < d; j++) {
                    wout[(r0 + r) * d + j] = ws[j * VL + r];
                    if (zout) zout[(r0 + r) * d + j] = zs[j * VL + r];
                }
            continue;
        }
        const T *rhs = chol ? zs : ws;
        for (ptrdiff_t j = 0; j < d; j++) {
            VT aw = a * FL(vld)(ws + j * VL);
            T *aj = acc + j * d * VL;
            for (ptrdiff_t k = 0; k < d; k++)
                FL(vst)(aj + k * VL, FL(vld)(aj + k * VL) + aw * FL(vld)(rhs + k * VL));
        }
    }
    for (ptrdiff_t q = 0; gm && q < d * d; q++) {
        double t[VL];
        T v[VL];
        FL(vst)(v, FL(vld)(acc + q * VL));
        for (int r = 0; r < VL; r++) t[r] = (double)v[r];
        gm[q] = fl_pairsum(t, VL);
    }
}
