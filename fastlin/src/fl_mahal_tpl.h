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
FL_INLINE void FL(maha_forward_subst)(const T *FL_RESTRICT L, const T *FL_RESTRICT rinv,
                                      ptrdiff_t d, T *FL_RESTRICT zs)
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
        FL(vst)(zs + j * VL, (FL(vld)(zs + j * VL) - ((a0 + a1) + (a2 + a3))) * rinv[j]);
    }
}

/*
 * The forward.  Per row the arithmetic is fixed, whichever block, thread,
 * group or lane holds the row (so results do not depend on the thread
 * count).  With r_k = 1 / L_kk and C = L diag(r) (C_jk = L_jk r_k, unit lower
 * triangular), both rounded once, made once per call (fl_maha_prep):
 *   solve:   b_j = delta_j, then b_j = b_j - C_jk b_k for k = 0, 1, .., j-1
 *            (one rounding each, fused where the target has FMA);
 *            z_j = b_j r_j   (so that C b = delta, z = L^-1 delta);
 *   product: z_j = L_jj delta_j, then z_j + L_kj delta_k for k = j+1, .., d-1;
 *   d^2 = sum_j z_j^2 in double, j = 0, 1, .., d-1.
 * Against z_j = (delta_j - sum_k L_jk z_k) / L_jj this moves one rounding
 * from the division into C (a relative eps perturbation of L's entries, as
 * backward stable; far inside the tested bound) and has no division: a
 * vector division costs ~16 cycles of throughput, more than all the FMAs of
 * a row at d = 16.  It also leaves one FMA (4 cycles) between b_{j-1} and
 * b_j where the division form had FMA, subtraction and division.
 * Rows a block or pass gets partially (the tail) go through the same code,
 * zero padded.
 */
#ifndef FL_MAHA_G
#define FL_MAHA_G 4   /* groups of VL rows per pass of the blocked kernel */
#endif
#ifndef FL_MAHA_J
#define FL_MAHA_J 4   /* rows of C (columns of L) per register block */
#endif
/* Prefetch distance (bytes of X ahead) and level.  A pass computes with
   the memory bus idle and the hardware prefetcher stops short of the next
   pass; asking for X well ahead overlaps the two.  Into L2 (locality 1),
   32 KiB ahead: with X cold in cache (1M x 16 float64) 15% faster than 8 KiB
   into L1, which held the line-fill buffers the loads need (measured with
   the cache flushed between calls; with X in L3 the two are even).
   The register kernel (d <= 16) issues its block's prefetches one per step
   of the solve (product), spread among the FMAs: the d prefetches issued
   together at the top of each block cost as much time as reading X, as if
   the two did not overlap at all (1M x 16 float64, one thread: 12.3 ns a
   row against 8.9 spread out, interleaved A/B in a C harness; without any
   prefetch 16.5; the arithmetic alone, X in L2, 5.8; a plain read of X,
   5.0-5.4).  Distances of 8-64 KiB measured alike. */
#ifndef FL_MAHA_PF
#define FL_MAHA_PF 32768
#endif
#ifndef FL_MAHA_PFL
#define FL_MAHA_PFL 1
#endif
/* ... and, in the register kernel, the block FL_MAHA_PF_NEAR blocks ahead
   into L1 as well, line j at step j: its loads then hit L1 instead of
   waiting on L2 (1M x 16 float64, one thread, C harness: 6.4-7.9 ns a row
   against 7.7-9.7 without, in interleaved runs; 1 and 4 blocks measured no
   better) */
#ifndef FL_MAHA_PF_NEAR
#define FL_MAHA_PF_NEAR 2
#endif
#define FL_MAHA_DMAX 16   /* the register kernel's largest d */

/* z's lanes in double (fl_widen: one whole conversion, then halved) */
FL_INLINE ACC FL(maha_wide)(VT z)
{
#if FL_IS_DOUBLE
    return z;
#else
    ACC r;
    fl_widen(z, &r.lo, &r.hi);
    return r;
#endif
}

/* ss += z^2, the product and the sum in double (acc_addmul's arithmetic) */
FL_INLINE void FL(maha_sq_acc)(ACC *ss, VT z)
{
    ACC w = FL(maha_wide)(z);
#if FL_IS_DOUBLE
    *ss += w * w;
#else
    ss->lo += w.lo * w.lo;
    ss->hi += w.hi * w.hi;
#endif
}

/* p[0..VL) += z's lanes, in double */
FL_INLINE void FL(maha_add_lanes)(double *p, VT z)
{
    ACC w = FL(maha_wide)(z);
#if FL_IS_DOUBLE
    vst_d(p, vld_d(p) + w);
#else
    vst_d(p, vld_d(p) + w.lo);
    vst_d(p + FL_VL_d, vld_d(p + FL_VL_d) + w.hi);
#endif
}

/* out[0..cnt) := ss or sqrt(ss) of the lanes; sqrt on whole vectors (the
   same correctly rounded sqrt as the scalar one) */
FL_INLINE void FL(maha_out)(ACC ss, int squared, ptrdiff_t cnt, T *FL_RESTRICT out)
{
    double s[VL];
    T o[VL];
    FL(acc_lanes)(ss, s);
    if (!squared)
        for (int r = 0; r < VL; r++) s[r] = sqrt(s[r]);
    for (int r = 0; r < VL; r++) o[r] = (T)s[r];
    if (cnt == VL)
        FL(vst)(out, FL(vld)(o));
    else
        for (ptrdiff_t r = 0; r < cnt; r++) out[r] = o[r];
}

/* v[0..VL) (rows) := their transpose (columns), in registers
   (fl_transpose.h): a scalar transpose costs 2 d VL scalar loads and stores
   per VL rows. */
FL_INLINE void FL(maha_transpose)(VT *v)
{
#if VL == 2
    FL_TRANSPOSE2(VT, v);
#elif VL == 4
    FL_TRANSPOSE4(VT, v);
#elif VL == 8
    FL_TRANSPOSE8(VT, v);
#else
    FL_TRANSPOSE16(VT, v);
#endif
}

/* Rows [0, VL) of the block at X (rows d apart, cnt of them real) through
   the transpose: returns X itself when its vector loads stay inside the
   ok elements that may be read, else a zero-padded copy in tb (VL d + VL
   elements) -- so that partial and edge blocks take the same vector code. */
FL_INLINE const T *FL(maha_block_src)(const T *X, ptrdiff_t cnt, ptrdiff_t d, ptrdiff_t reach,
                                      ptrdiff_t ok, T *tb)
{
    if (cnt == VL && reach <= ok) return X;
    for (ptrdiff_t q = 0; q < VL * d + VL; q++) tb[q] = q < cnt * d ? X[q] : 0;
    return tb;
}

/* ---- blocked kernel (d > FL_MAHA_DMAX): G groups of VL rows per pass, in a
   d x (G VL) scratch, zs[j * GV + g * VL + lane]. */

/* zs[j * ld + lane] := X[lane][j] - mu[j] for the VL rows at X, by VL x VL
   register transposes (the last column block reads up to reach elements
   past X, the caller checks; the extra columns are dropped) */
FL_INLINE void FL(maha_load_tr)(const T *FL_RESTRICT X, ptrdiff_t d, const T *FL_RESTRICT mu,
                                T *FL_RESTRICT zs, ptrdiff_t ld)
{
    for (ptrdiff_t c = 0; c < d; c += VL) {
        VT v[VL];
        for (int r = 0; r < VL; r++) v[r] = FL(vld)(X + r * d + c);
        FL(maha_transpose)(v);
        ptrdiff_t w = d - c < VL ? d - c : VL;
        for (ptrdiff_t jj = 0; jj < w; jj++) FL(vst)(zs + (c + jj) * ld, v[jj] - mu[c + jj]);
    }
}

/* zs := C^-1 zs (the b of the order above), J rows of C at a time: J x G
   independent FMA chains per k (16: FMA latency 4 x 2 ports needs 8), each
   b_k loaded once per J rows, each broadcast C_jk used G times: 4 + 4 loads
   per 16 FMAs.  (G, J) = (4, 4) measured best of (4,3), (2,6), (3,4), (2,4),
   (2,5) at d = 33 and 128: 1.25x faster than (4, 3), whose loop gcc built
   with a load per FMA.) */
FL_INLINE void FL(maha_fsub_blk)(const T *FL_RESTRICT C, ptrdiff_t d, T *FL_RESTRICT zs,
                                 const int G, const int J)
{
    const ptrdiff_t GV = G * VL;
    ptrdiff_t j0 = 0;
    for (; j0 + J <= d; j0 += J) {
        VT a[FL_MAHA_J][FL_MAHA_G];
        for (int jj = 0; jj < J; jj++)
            for (int g = 0; g < G; g++) a[jj][g] = FL(vld)(zs + (j0 + jj) * GV + g * VL);
        const T *Cj = C + j0 * d;
        for (ptrdiff_t k = 0; k < j0; k++) {
            VT b[FL_MAHA_G];
            for (int g = 0; g < G; g++) b[g] = FL(vld)(zs + k * GV + g * VL);
            for (int jj = 0; jj < J; jj++) {
                T c = Cj[jj * d + k];
                for (int g = 0; g < G; g++) a[jj][g] -= c * b[g];
            }
        }
        /* the J x J diagonal block */
        for (int jj = 1; jj < J; jj++)
            for (int kk = 0; kk < jj; kk++) {
                T c = Cj[jj * d + j0 + kk];
                for (int g = 0; g < G; g++) a[jj][g] -= c * a[kk][g];
            }
        for (int jj = 0; jj < J; jj++)
            for (int g = 0; g < G; g++) FL(vst)(zs + (j0 + jj) * GV + g * VL, a[jj][g]);
    }
    for (; j0 < d; j0++) {   /* the last d % J rows, one at a time: same order */
        VT a[FL_MAHA_G];
        for (int g = 0; g < G; g++) a[g] = FL(vld)(zs + j0 * GV + g * VL);
        const T *Cj = C + j0 * d;
        for (ptrdiff_t k = 0; k < j0; k++) {
            T c = Cj[k];
            for (int g = 0; g < G; g++) a[g] -= c * FL(vld)(zs + k * GV + g * VL);
        }
        for (int g = 0; g < G; g++) FL(vst)(zs + j0 * GV + g * VL, a[g]);
    }
}

/* zs := L^T zs (the order above), J columns of L at a time, in increasing j:
   z_j overwrites delta_j, which no later column needs */
FL_INLINE void FL(maha_prod_blk)(const T *FL_RESTRICT L, ptrdiff_t d, T *FL_RESTRICT zs,
                                 const int G, const int J)
{
    const ptrdiff_t GV = G * VL;
    ptrdiff_t j0 = 0;
    for (; j0 + J <= d; j0 += J) {
        VT a[FL_MAHA_J][FL_MAHA_G];
        for (int jj = 0; jj < J; jj++) {
            T l = L[(j0 + jj) * d + j0 + jj];
            for (int g = 0; g < G; g++) a[jj][g] = l * FL(vld)(zs + (j0 + jj) * GV + g * VL);
            for (int kk = jj + 1; kk < J; kk++) {
                T lk = L[(j0 + kk) * d + j0 + jj];
                for (int g = 0; g < G; g++)
                    a[jj][g] += lk * FL(vld)(zs + (j0 + kk) * GV + g * VL);
            }
        }
        for (ptrdiff_t k = j0 + J; k < d; k++) {
            VT x[FL_MAHA_G];
            for (int g = 0; g < G; g++) x[g] = FL(vld)(zs + k * GV + g * VL);
            const T *Lk = L + k * d + j0;
            for (int jj = 0; jj < J; jj++) {
                T l = Lk[jj];
                for (int g = 0; g < G; g++) a[jj][g] += l * x[g];
            }
        }
        for (int jj = 0; jj < J; jj++)
            for (int g = 0; g < G; g++) FL(vst)(zs + (j0 + jj) * GV + g * VL, a[jj][g]);
    }
    for (; j0 < d; j0++) {
        VT a[FL_MAHA_G];
        T l = L[j0 * d + j0];
        for (int g = 0; g < G; g++) a[g] = l * FL(vld)(zs + j0 * GV + g * VL);
        for (ptrdiff_t k = j0 + 1; k < d; k++) {
            T lk = L[k * d + j0];
            for (int g = 0; g < G; g++) a[g] += lk * FL(vld)(zs + k * GV + g * VL);
        }
        for (int g = 0; g < G; g++) FL(vst)(zs + j0 * GV + g * VL, a[g]);
    }
}

FL_INLINE void FL(maha_blocked)(const T *FL_RESTRICT X, ptrdiff_t m, ptrdiff_t d,
                                const T *FL_RESTRICT mu, const T *FL_RESTRICT M,
                                const T *FL_RESTRICT rinv, int solve, int squared,
                                T *FL_RESTRICT out, T *FL_RESTRICT zs, T *FL_RESTRICT tb,
                                const int G, const int J)
{
    const ptrdiff_t GV = G * VL;
    const ptrdiff_t reach = (VL - 1) * d + (d + VL - 1) / VL * VL;
    const ptrdiff_t pass_bytes = GV * d * (ptrdiff_t)sizeof(T);
    const ptrdiff_t pf_ahead = (FL_MAHA_PF + pass_bytes - 1) / pass_bytes * pass_bytes;
    for (ptrdiff_t r0 = 0; r0 < m; r0 += GV) {
        ptrdiff_t cnt = m - r0 < GV ? m - r0 : GV;
        const char *pf = (const char *)(X + r0 * d) + pf_ahead;
        for (ptrdiff_t o = 0; o < pass_bytes; o += 64) __builtin_prefetch(pf + o, 0, FL_MAHA_PFL);
        for (ptrdiff_t g = 0; g < G; g++) {
            ptrdiff_t rg = r0 + g * VL, c = cnt - g * VL;
            c = c < 0 ? 0 : c > VL ? VL : c;
            const T *src = FL(maha_block_src)(X + rg * d, c, d, reach, (m - rg) * d, tb);
            FL(maha_load_tr)(src, d, mu, zs + g * VL, GV);
        }
        if (solve)
            FL(maha_fsub_blk)(M, d, zs, G, J);
        else
            FL(maha_prod_blk)(M, d, zs, G, J);
        for (ptrdiff_t g = 0; g * VL < cnt; g++) {
            ACC ss = FL(acc_zero)();
            for (ptrdiff_t j = 0; j < d; j++) {
                VT z = FL(vld)(zs + j * GV + g * VL);
                FL(maha_sq_acc)(&ss, solve ? z * rinv[j] : z);
            }
            ptrdiff_t c = cnt - g * VL < VL ? cnt - g * VL : VL;
            FL(maha_out)(ss, squared, c, out + r0 + g * VL);
        }
    }
}

/*
 * ---- register kernel (d <= 16): the whole block of VL rows in registers,
 * x[j] = feature j of the VL rows, D (4, 8 or 16, >= d) a compile-time
 * constant after inlining, so that the loops unroll and x[] stays in
 * registers (the blocked kernel at d = 16 spent ~1.4x the time going through
 * its scratch).  The matrix comes as Mc, D x D with column j contiguous
 * (Mc[j * D + k] = C_kj or L_kj), zero padded.  The solve runs
 * right-looking (at step j, b_k -= C_kj b_j for all k > j), which gives
 * every b_k the subtraction order above.  Features d..D-1 are zero for the
 * product; the solve stops at j = d, so that the padding can turn no
 * infinite b into a NaN.
 */
FL_INLINE void FL(maha_reg)(const T *FL_RESTRICT X, ptrdiff_t m, ptrdiff_t d,
                            const T *FL_RESTRICT Mc, const T *FL_RESTRICT rinv,
                            const T *FL_RESTRICT mup, int solve, int squared,
                            T *FL_RESTRICT out, T *FL_RESTRICT tb, const int D)
{
    const ptrdiff_t reach = (VL - 1) * d + (D + VL - 1) / VL * VL;
    const ptrdiff_t blk_bytes = VL * d * (ptrdiff_t)sizeof(T);
    const ptrdiff_t pf_ahead = (FL_MAHA_PF + blk_bytes - 1) / blk_bytes * blk_bytes;
    for (ptrdiff_t r0 = 0; r0 < m; r0 += VL) {
        ptrdiff_t cnt = m - r0 < VL ? m - r0 : VL;
        /* the block pf_ahead on holds d lines (VL d elements, VL * sizeof(T)
           = 64 bytes): line j is prefetched at step j of the loops below,
           one per step, not all d at the top (see FL_MAHA_PF) */
        const char *pf = (const char *)(X + r0 * d) + pf_ahead;
        const char *pn = (const char *)(X + r0 * d) + FL_MAHA_PF_NEAR * blk_bytes;
        const T *Xb = FL(maha_block_src)(X + r0 * d, cnt, d, reach, (m - r0) * d, tb);
        VT x[FL_MAHA_DMAX];
#pragma GCC unroll 2
        for (int c = 0; c < D; c += VL) {
            VT v[VL];
#pragma GCC unroll 16
            for (int r = 0; r < VL; r++) v[r] = FL(vld)(Xb + r * d + c);
            FL(maha_transpose)(v);
#pragma GCC unroll 16
            for (int jj = 0; jj < VL; jj++)
                if (c + jj < D) x[c + jj] = v[jj] - mup[c + jj];
        }
#pragma GCC unroll 16
        for (int j = 0; j < D; j++)
            if (j >= d) x[j] = FL(vsplat)(0);
        ACC ss = FL(acc_zero)();
        if (solve) {
#pragma GCC unroll 16
            for (int j = 0; j < D; j++) {
                if (j >= d) break;
                if (j * 64 < blk_bytes) {
                    __builtin_prefetch(pf + 64 * j, 0, FL_MAHA_PFL);
                    __builtin_prefetch(pn + 64 * j, 0, 3);
                }
                FL(maha_sq_acc)(&ss, x[j] * rinv[j]);
#pragma GCC unroll 16
                for (int k = j + 1; k < D; k++) x[k] -= Mc[j * D + k] * x[j];
            }
        } else {
#pragma GCC unroll 16
            for (int j = 0; j < D; j++) {
                if (j * 64 < blk_bytes) {
                    __builtin_prefetch(pf + 64 * j, 0, FL_MAHA_PFL);
                    __builtin_prefetch(pn + 64 * j, 0, 3);
                }
                VT z = Mc[j * D + j] * x[j];
#pragma GCC unroll 16
                for (int k = j + 1; k < D; k++) z += Mc[j * D + k] * x[k];
                FL(maha_sq_acc)(&ss, z);
            }
        }
        FL(maha_out)(ss, squared, cnt, out + r0);
    }
}

/* elements of scratch fl_maha_rows needs (64-byte alignment slack included) */
static inline ptrdiff_t FL(fl_maha_scratch)(ptrdiff_t d)
{
    return (d > FL_MAHA_DMAX ? d * FL_MAHA_G * VL : 0) + VL * (d + 1) + 64 / (ptrdiff_t)sizeof(T);
}

FL_INLINE int FL(maha_regD)(ptrdiff_t d) { return d <= 4 ? 4 : d <= 8 ? 8 : 16; }

/* elements of the prepared matrix (fl_maha_prep) */
static inline ptrdiff_t FL(fl_maha_prep_size)(ptrdiff_t d)
{
    ptrdiff_t D = FL(maha_regD)(d);
    return d > FL_MAHA_DMAX ? d * d + d : D * D + 2 * D;
}

/*
 * The matrix as the kernels read it, made once per call (not per block: at
 * d = 16 redoing it per block of 256 rows cost ~3 cycles a row).  solve:
 * r_j = 1 / L_jj and C_jk = L_jk r_k (k < j), each rounded once; product: L.
 *   d > 16:  P = [C or L (d x d, row-major), r (d)];
 *   d <= 16: P = [Mc (D x D, column j contiguous, Mc[j * D + k] = C_kj or
 *            L_kj, zero outside the triangle and for the solve's unit
 *            diagonal), r (D, 1 past d), mu (D, 0 past d)].
 */
static inline void FL(fl_maha_prep)(const T *FL_RESTRICT L, const T *FL_RESTRICT mu, ptrdiff_t d,
                                    int solve, T *FL_RESTRICT P)
{
    if (d > FL_MAHA_DMAX) {
        T *M = P, *r = P + d * d;
        for (ptrdiff_t j = 0; j < d; j++) r[j] = solve ? (T)1 / L[j * d + j] : 1;
        for (ptrdiff_t j = 0; j < d; j++)
            for (ptrdiff_t k = 0; k < d; k++)
                M[j * d + k] = !solve ? L[j * d + k] : k < j ? L[j * d + k] * r[k] : 0;
        return;
    }
    const ptrdiff_t D = FL(maha_regD)(d);
    T *Mc = P, *r = P + D * D, *mup = r + D;
    for (ptrdiff_t j = 0; j < D; j++) {
        r[j] = j < d && solve ? (T)1 / L[j * d + j] : 1;
        mup[j] = j < d ? mu[j] : 0;
    }
    for (ptrdiff_t j = 0; j < D; j++)
        for (ptrdiff_t k = 0; k < D; k++)
            Mc[j * D + k] = j >= d || k >= d || k < j ? 0
                          : !solve ? L[k * d + j] : k > j ? L[k * d + j] * r[j] : 0;
}

/*
 * Rows [0, m) of X (m x d): out = d (or d^2, squared).  P from fl_maha_prep
 * (same d, mu and solve); scratch: fl_maha_scratch(d) elements, private to
 * the calling thread.
 */
static void FL(fl_maha_rows)(const T *FL_RESTRICT X, ptrdiff_t m, ptrdiff_t d,
                                const T *FL_RESTRICT mu, const T *FL_RESTRICT P, int solve,
                                int squared, T *FL_RESTRICT out, T *FL_RESTRICT scratch)
{
    /* 64-byte aligned: every vector of a block is then one cache line */
    T *zs = (T *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    if (d > FL_MAHA_DMAX) {
        /* The register tile by the registers of the SIMD level: the 16
           accumulators fit AVX-512's 32 zmm; where a vector is 2 ymm (AVX2)
           or 4 xmm (baseline) of 16, that tile spills (2-3x slower than a
           single group), hence (G, J) = (1, 4) and (1, 2) there; where a
           vector is one register of 16 (gcc's width below AVX-512), two
           groups.  Each row's arithmetic does not depend on the tile. */
        T *tb = zs + d * FL_MAHA_G * VL;
#if FL_AVX512
        const int G = FL_MAHA_G, J = FL_MAHA_J;
#elif defined(__AVX2__)
        const int G = FL_VBYTES == FL_REG_BYTES ? 2 : 1, J = 4;
#else
        const int G = FL_VBYTES == FL_REG_BYTES ? 2 : 1, J = 2;
#endif
        FL(maha_blocked)(X, m, d, mu, P, P + d * d, solve, squared, out, zs, tb, G, J);
        return;
    }
    const int D = FL(maha_regD)(d);
    const T *Mc = P, *r = P + D * D, *mup = r + D;
    if (D == 4)
        FL(maha_reg)(X, m, d, Mc, r, mup, solve, squared, out, zs, 4);
    else if (D == 8)
        FL(maha_reg)(X, m, d, Mc, r, mup, solve, squared, out, zs, 8);
    else
        FL(maha_reg)(X, m, d, Mc, r, mup, solve, squared, out, zs, 16);
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
static void FL(fl_maha_bwd_rows)(const T *FL_RESTRICT X, ptrdiff_t m, ptrdiff_t d,
                                    const T *FL_RESTRICT mu, const T *FL_RESTRICT L,
                                    const T *FL_RESTRICT g, int squared, int chol,
                                    T *FL_RESTRICT gX, double *FL_RESTRICT gm,
                                    double *FL_RESTRICT gmv, double *FL_RESTRICT gsc,
                                    T *FL_RESTRICT zs, T *FL_RESTRICT ws, T *FL_RESTRICT acc,
                                    T *FL_RESTRICT wout, T *FL_RESTRICT zout)
{
    /* gm == NULL (large d): no d x d accumulation here; the rows of w (and
       z) go to wout / zout and the caller forms gM with one GEMM */
    /* the diagonal's reciprocals (zs has 17 d elements: d x VL for the rows,
       then these): a multiply in the substitutions instead of a division,
       which sat on their dependency chain (as in the forward's prep) */
    T *rinv = zs + 16 * d;
    for (ptrdiff_t j = 0; j < d; j++) rinv[j] = (T)1 / L[j * d + j];
    if (gm)
        for (ptrdiff_t q = 0; q < d * d * VL; q++) acc[q] = 0;
    for (ptrdiff_t q = 0; q < d * VL; q++) gsc[q] = 0;
    for (ptrdiff_t r0 = 0; r0 < m; r0 += VL) {
        ptrdiff_t cnt = m - r0 < VL ? m - r0 : VL;
        /* whole blocks of rows and columns through the register transposes
           (the same x - mu in every lane), the rest element by element */
        const int tr = cnt == VL && d % VL == 0;
        if (tr)
            FL(maha_load_tr)(X + r0 * d, d, mu, zs, VL);
        else
            FL(maha_load)(X + r0 * d, cnt, d, mu, zs);
        FL(maha_forward_subst)(L, rinv, d, zs);       /* z = L^-1 delta */
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
            FL(vst)(ws + j * VL, (FL(vld)(zs + j * VL) - ((s0 + s1) + (s2 + s3))) * rinv[j]);
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
        VT a = FL(vld)(al), two_a = a + a;
        /* gX = 2 a w, lane r = row r (the padding lanes are 0), VL features
           at a time: summed over the rows (= -gmean) in double, lane by lane,
           with no second pass over the n x d gradient (numpy's
           gX.sum(axis=0) took 25-36 ms of a 107 ms call at (1M, 16)), and
           for whole blocks transposed back into rows.  (In float64 the
           compiler may fuse the product into that sum, which then adds the
           unrounded 2 a w: a rounding apart from sum(gX), the same on every
           thread count.) */
        for (ptrdiff_t c = 0; c < d; c += VL) {
            VT v[VL];
            ptrdiff_t jn = d - c < VL ? d - c : VL;
            for (ptrdiff_t jj = 0; jj < jn; jj++) {
                v[jj] = two_a * FL(vld)(ws + (c + jj) * VL);
                FL(maha_add_lanes)(gsc + (c + jj) * VL, v[jj]);
            }
            if (tr) {
                FL(maha_transpose)(v);
                for (int r = 0; r < VL; r++) FL(vst)(gX + (r0 + r) * d + c, v[r]);
            }
        }
        if (!tr)
            for (ptrdiff_t r = 0; r < cnt; r++) {
                T *gr = gX + (r0 + r) * d;
                T two = 2 * al[r];
                for (ptrdiff_t j = 0; j < d; j++) gr[j] = two * ws[j * VL + r];
            }
        if (!gm) {
            for (ptrdiff_t r = 0; r < cnt; r++)
                for (ptrdiff_t j = 0; j < d; j++) {
                    wout[(r0 + r) * d + j] = ws[j * VL + r];
                    if (zout) zout[(r0 + r) * d + j] = zs[j * VL + r];
                }
            continue;
        }
        /* the lower triangle only (k <= j): cov's sum is symmetric (the
           caller mirrors it), cholesky's gradient is its lower triangle */
        const T *rhs = chol ? zs : ws;
        for (ptrdiff_t j = 0; j < d; j++) {
            VT aw = a * FL(vld)(ws + j * VL);
            T *aj = acc + j * d * VL;
            for (ptrdiff_t k = 0; k <= j; k++)
                FL(vst)(aj + k * VL, FL(vld)(aj + k * VL) + aw * FL(vld)(rhs + k * VL));
        }
    }
    for (ptrdiff_t j = 0; j < d; j++) gmv[j] = fl_pairsum(gsc + j * VL, VL);
    for (ptrdiff_t q = 0; gm && q < d * d; q++) {
        double t[VL];
        T v[VL];
        FL(vst)(v, FL(vld)(acc + q * VL));
        for (int r = 0; r < VL; r++) t[r] = (double)v[r];
        gm[q] = fl_pairsum(t, VL);
    }
}
