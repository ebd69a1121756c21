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
FL_CLONES void FL(fl_maha_rows)(const T *FL_RESTRICT X, ptrdiff_t m, ptrdiff_t d,
                                const T *FL_RESTRICT mu, const T *FL_RESTRICT L, int solve,
                                int squared, T *FL_RESTRICT out, T *FL_RESTRICT zs)
{
    for (ptrdiff_t r0 = 0; r0 < m; r0 += VL) {
        ptrdiff_t cnt = m - r0 < VL ? m - r0 : VL;
        if (cnt < VL)
            for (ptrdiff_t q = 0; q < d * VL; q++) zs[q] = 0;
        for (ptrdiff_t r = 0; r < cnt; r++) {
            const T *xr = X + (r0 + r) * d;
            for (ptrdiff_t j = 0; j < d; j++) zs[j * VL + r] = xr[j] - mu[j];
        }
        /* four partial sums per dot product: one FMA chain would wait on the
           FMA latency (measured 4x slower at d = 128) */
        if (solve) {
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
                VT acc = FL(vld)(zs + j * VL) - ((a0 + a1) + (a2 + a3));
                FL(vst)(zs + j * VL, acc / Lj[j]);
            }
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
