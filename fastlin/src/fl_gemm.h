/*
 * fl_gemm.h -- a single-threaded, packed AVX-512 / AVX2 GEMM for the tile
 * products of the distance kernels.
 *
 * Why not only scipy's OpenBLAS: on the AVX-512 machines fastlin is tuned on
 * (Sapphire Rapids), scipy's OpenBLAS 0.3.30 picks its SkylakeX kernels and
 * reaches about 60% of the FMA peak for the k = 512 tile products (71 ms for
 * 2048 x 2048 x 512 float64 at one thread, against 42 ms for MKL, which is
 * what torch uses).  The kernel below is the classic Goto/BLIS structure:
 *
 *   for each KC slice of k:        pack op(B)[slice, :] into NR-column panels
 *     for each MC block of rows:   pack op(A)[block, slice] into MR-row panels
 *       for each NR panel:         (stays in L1 across the row panels)
 *         for each MR panel:       the micro-kernel: MR x NR accumulators
 *                                  in registers, one rank-1 update per k
 *
 * MR = 14 rows are broadcast.  At avx512, NR = two 64-byte vectors of
 * columns (16 doubles or 32 floats) are loaded: 28 accumulators + 2 operands
 * of the 32 zmm registers.  At avx2, NR = one 32-byte vector (4 doubles or
 * 8 floats): 14 accumulators, the operand and the broadcast fill the 16 ymm
 * registers (MR stays 14 so that the distance tiles are cut the same at
 * both levels).  Every C entry is the sum over k in increasing order, one
 * FMA per k within a KC slice, slices added in order: the result depends on
 * the shapes and the level only, never on the thread count or on where a
 * tile sits.
 *
 * Built into the avx512 and avx2 levels' modules, and not on Windows (its
 * per-thread packing buffers use pthread keys).  Elsewhere (the baseline
 * level, NEON) fl_gemm_ok() is 0 and the callers (_blas.pxd) use scipy's
 * BLAS; the prepacked entry points, which have no BLAS twin, then abort if
 * called.
 *
 * The blocking constants below may be overridden with -D for tuning; the
 * distance tiles are cut to them (fl_distance.h asserts the relations).
 *
 * C is row-major (m x n, row stride ldc).  op(A) is m x k: A row-major m x k
 * (ta = 0) or A row-major k x m, read transposed (ta = 1).  op(B) is k x n:
 * B row-major k x n (tb = 0) or B row-major n x k, read transposed (tb = 1).
 * C = alpha op(A) op(B) + beta C, beta 0 (C not read) or 1.
 */
#ifndef FL_GEMM_H
#define FL_GEMM_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_common.h"

/* Built at the levels with FMA and at least 16 registers of 32 bytes: the
   avx512 level (32 zmm) and the avx2 level (16 ymm, FMA3). */
#if (FL_AVX512 || (defined(__AVX2__) && defined(__FMA__))) && !defined(_WIN32)
#define FL_HAVE_GEMM 1
#include <pthread.h>
#include "fl_transpose.h"
#else
#define FL_HAVE_GEMM 0
#endif

#ifndef FL_GEMM_MR
#define FL_GEMM_MR 14    /* rows per panel of op(A) */
#endif
/* FL_GEMM_VB: the bytes of one vector register of the micro-kernel. */
#if FL_HAVE_GEMM && !FL_AVX512
#define FL_GEMM_VB 32
#else
#define FL_GEMM_VB 64
#endif
/* FL_GEMM_NV: vectors per panel row of op(B).  MR x NV accumulators, NV
   operands of B and one broadcast of A must fit the register file: 28 + 3
   of 32 zmm at avx512, 14 + 2 of 16 ymm at avx2. */
#ifndef FL_GEMM_NV
#if FL_GEMM_VB == 32
#define FL_GEMM_NV 1
#else
#define FL_GEMM_NV 2
#endif
#endif
#define FL_GEMM_NR_D (FL_GEMM_NV * FL_GEMM_VB / 8)    /* columns per panel of op(B): float64 */
#define FL_GEMM_NR_F (FL_GEMM_NV * FL_GEMM_VB / 4)    /* float32 */
#ifndef FL_GEMM_KC
#define FL_GEMM_KC 256   /* an NR panel of B (KC x 128 bytes, 32 KiB) stays in L1 */
#endif
#ifndef FL_GEMM_MC
#define FL_GEMM_MC 252   /* 18 MR panels of A (252 x KC, <= 504 KiB) stay in L2 */
#endif
/* Columns of op(B) packed per KC slice by fl_gemm: KC x NC elements of about
   1 MiB (512 float64, 1024 float32 columns), which stay in L2 while every MC
   block of A sweeps them.  2048 columns (4 MiB float64, 2 MiB float32) spilled
   to L3: 2048 x 2048 x 512 ran at 105-112 GFLOP/s float32 against 131-145
   with 1024 (float64: 78-89 ms against 55-70).  The blocking of n changes no
   sum: results are the same bit for bit. */
#ifndef FL_GEMM_NC_BYTES
#define FL_GEMM_NC_BYTES (1 << 20)
#endif
#define FL_GEMM_NC_OF(T) (FL_GEMM_NC_BYTES / (FL_GEMM_KC * (ptrdiff_t)sizeof(T)))
_Static_assert(FL_GEMM_MC % FL_GEMM_MR == 0, "FL_GEMM_MC must be a whole number of panels");

#if FL_HAVE_GEMM

/* 1: use this kernel; 0: always BLAS (the testing hook _use_own_gemm: the
   tests run both) */
static int fl_gemm_wanted = 1;

static int fl_gemm_ok(void)
{
    return fl_gemm_wanted;
}

/*
 * Packing buffers: one per thread, kept for the thread's life (the OpenMP
 * pool's threads persist; a malloc per call would fault fresh pages in every
 * tile), freed when the thread exits (a pthread key's destructor).  Grown on
 * demand, 64-byte aligned.
 */
typedef struct { void *p; size_t cap; } fl_gemm_buf_t;
static pthread_key_t fl_gemm_key;
static pthread_once_t fl_gemm_key_once = PTHREAD_ONCE_INIT;
static int fl_gemm_key_ok = 0;

static void fl_gemm_buf_free(void *v)
{
    fl_gemm_buf_t *b = (fl_gemm_buf_t *)v;
    if (b) {
        free(b->p);
        free(b);
    }
}

static void fl_gemm_make_key(void)
{
    fl_gemm_key_ok = pthread_key_create(&fl_gemm_key, fl_gemm_buf_free) == 0;
}

static void *fl_gemm_scratch(size_t bytes)
{
    fl_gemm_buf_t *b;
    pthread_once(&fl_gemm_key_once, fl_gemm_make_key);
    if (!fl_gemm_key_ok) return NULL;
    b = (fl_gemm_buf_t *)pthread_getspecific(fl_gemm_key);
    if (b == NULL) {
        b = (fl_gemm_buf_t *)calloc(1, sizeof *b);
        if (b == NULL) return NULL;
        if (pthread_setspecific(fl_gemm_key, b) != 0) {
            free(b);
            return NULL;
        }
    }
    if (bytes > b->cap) {
        void *p = NULL;
        free(b->p);
        b->p = NULL;
        b->cap = 0;
        if (posix_memalign(&p, 64, bytes) != 0)
            return NULL;
        b->p = p;
        b->cap = bytes;
    }
    return b->p;
}

/*
 * The transposing pack (op(A) = A, op(B) = B^T: a panel's lines run down X's
 * columns) with AVX-512 register transposes: per group of VL lines (8
 * float64, 16 float32), VL row pieces of VL elements are loaded (rows past
 * w, and depths past kc, as zeros), transposed in registers, and each depth
 * p's VL values stored into P[p * W + g * VL ..] (a masked store where the
 * panel's width W is not a multiple of VL: MR = 14).  In registers because
 * a scalar loop stores one element at a time, W apart: measured 1.8x slower
 * packing both operands of a (2048, 512) float32 cdist (the backward packs
 * each tile's W this way too).  The packing moves values only, so no
 * product depends on how it is done.
 */
/* The level's vectors: GCC vector types (what the transposes shuffle), and
   loads and stores of the first n lanes (0 <= n <= VL; the other lanes read
   as zeros, and are neither read nor written in memory). */
#if FL_GEMM_VB == 64
#define FL_GEMM_VL_D 8
#define FL_GEMM_VL_F 16
typedef double fl_gemm_vd __attribute__((vector_size(64)));
typedef float fl_gemm_vf __attribute__((vector_size(64)));
#define FL_GEMM_TRANSPOSE_D FL_TRANSPOSE8
#define FL_GEMM_TRANSPOSE_F FL_TRANSPOSE16
FL_INLINE fl_gemm_vd fl_gemm_ldn_d(const double *p, ptrdiff_t n)
{
    return (fl_gemm_vd)_mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1), p);
}
FL_INLINE fl_gemm_vf fl_gemm_ldn_f(const float *p, ptrdiff_t n)
{
    return (fl_gemm_vf)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}
FL_INLINE void fl_gemm_stn_d(double *p, ptrdiff_t n, fl_gemm_vd v)
{
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), (__m512d)v);
}
FL_INLINE void fl_gemm_stn_f(float *p, ptrdiff_t n, fl_gemm_vf v)
{
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
}
#elif FL_HAVE_GEMM
#define FL_GEMM_VL_D 4
#define FL_GEMM_VL_F 8
typedef double fl_gemm_vd __attribute__((vector_size(32)));
typedef float fl_gemm_vf __attribute__((vector_size(32)));
/* register transposes in AVX intrinsics (FL_TRANSPOSE4 / 8 would do, but
   without __builtin_shufflevector, gcc 11, they go lane by lane: pdist of
   (8192, 64) float64 took 1.35x as long) */
#define FL_GEMM_TRANSPOSE_D(VT, v) fl_gemm_tr4_d(v)
#define FL_GEMM_TRANSPOSE_F(VT, v) fl_gemm_tr8_f(v)
FL_INLINE void fl_gemm_tr4_d(fl_gemm_vd *v)
{
    __m256d t0 = _mm256_unpacklo_pd((__m256d)v[0], (__m256d)v[1]);
    __m256d t1 = _mm256_unpackhi_pd((__m256d)v[0], (__m256d)v[1]);
    __m256d t2 = _mm256_unpacklo_pd((__m256d)v[2], (__m256d)v[3]);
    __m256d t3 = _mm256_unpackhi_pd((__m256d)v[2], (__m256d)v[3]);
    v[0] = (fl_gemm_vd)_mm256_permute2f128_pd(t0, t2, 0x20);
    v[1] = (fl_gemm_vd)_mm256_permute2f128_pd(t1, t3, 0x20);
    v[2] = (fl_gemm_vd)_mm256_permute2f128_pd(t0, t2, 0x31);
    v[3] = (fl_gemm_vd)_mm256_permute2f128_pd(t1, t3, 0x31);
}
FL_INLINE void fl_gemm_tr8_f(fl_gemm_vf *v)
{
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps((__m256)v[i], (__m256)v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps((__m256)v[i], (__m256)v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = (fl_gemm_vf)_mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        v[i + 4] = (fl_gemm_vf)_mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}
/* partial loads in 16-, 8- and 4-byte pieces, the other lanes zero: only
   the n elements are read.  (vmaskmov loads suppress the faults of masked
   lanes on Intel's and AMD's cores, but AMD documents that behaviour as
   implementation dependent, and qemu's emulation of them faulted on a
   panel's last row, which ends at an array's end.) */
FL_INLINE __m128 fl_gemm_ld4_f(const float *p, ptrdiff_t n)
{
    __m128 x = _mm_setzero_ps();
    if (n == 4) return _mm_loadu_ps(p);
    if (n >= 2) {
        x = _mm_loadl_pi(x, (const __m64 *)p);
        if (n == 3) x = _mm_movelh_ps(x, _mm_load_ss(p + 2));
    } else if (n == 1) {
        x = _mm_load_ss(p);
    }
    return x;
}
FL_INLINE fl_gemm_vd fl_gemm_ldn_d(const double *p, ptrdiff_t n)
{
    __m128d lo = _mm_setzero_pd(), hi = _mm_setzero_pd();
    if (n == 4) return (fl_gemm_vd)_mm256_loadu_pd(p);
    if (n >= 2) {
        lo = _mm_loadu_pd(p);
        if (n == 3) hi = _mm_load_sd(p + 2);
    } else if (n == 1) {
        lo = _mm_load_sd(p);
    }
    return (fl_gemm_vd)_mm256_set_m128d(hi, lo);
}
FL_INLINE fl_gemm_vf fl_gemm_ldn_f(const float *p, ptrdiff_t n)
{
    if (n == 8) return (fl_gemm_vf)_mm256_loadu_ps(p);
    if (n >= 4) return (fl_gemm_vf)_mm256_set_m128(fl_gemm_ld4_f(p + 4, n - 4), _mm_loadu_ps(p));
    return (fl_gemm_vf)_mm256_set_m128(_mm_setzero_ps(), fl_gemm_ld4_f(p, n));
}
/* partial stores in 16-, 8- and 4-byte pieces: vmaskmovps / vmaskmovpd to
   memory are microcoded on AMD's cores, and took a third of the packing of
   a backward's W (cdist_backward(dist=) of (4096, 64) float32) */
FL_INLINE void fl_gemm_st4_f(float *p, ptrdiff_t n, __m128 x)
{
    if (n == 4) {
        _mm_storeu_ps(p, x);
        return;
    }
    if (n >= 2) {
        _mm_storel_pi((__m64 *)p, x);
        x = _mm_movehl_ps(x, x);
        p += 2;
        n -= 2;
    }
    if (n) _mm_store_ss(p, x);
}
FL_INLINE void fl_gemm_stn_d(double *p, ptrdiff_t n, fl_gemm_vd v)
{
    __m128d x = _mm256_castpd256_pd128((__m256d)v);
    if (n == 4) {
        _mm256_storeu_pd(p, (__m256d)v);
        return;
    }
    if (n >= 2) {
        _mm_storeu_pd(p, x);
        x = _mm256_extractf128_pd((__m256d)v, 1);
        p += 2;
        n -= 2;
    }
    if (n) _mm_store_sd(p, x);
}
FL_INLINE void fl_gemm_stn_f(float *p, ptrdiff_t n, fl_gemm_vf v)
{
    if (n == 8) {
        _mm256_storeu_ps(p, (__m256)v);
    } else if (n >= 4) {
        _mm_storeu_ps(p, _mm256_castps256_ps128((__m256)v));
        fl_gemm_st4_f(p + 4, n - 4, _mm256_extractf128_ps((__m256)v, 1));
    } else {
        fl_gemm_st4_f(p, n, _mm256_castps256_ps128((__m256)v));
    }
}
#endif

/*
 * The transposing pack (op(A) = A, op(B) = B^T: a panel's lines run down X's
 * columns) with register transposes: per group of VL lines, VL row pieces of
 * VL elements are loaded (rows past w, and depths past kc, as zeros),
 * transposed in registers, and each depth p's VL values stored into
 * P[p * W + g * VL ..] (the first W - g of them where the panel's width W is
 * not a multiple of VL: MR = 14).  In registers because a scalar loop stores
 * one element at a time, W apart: measured 1.8x slower packing both operands
 * of a (2048, 512) float32 cdist (the backward packs each tile's W this way
 * too).  The packing moves values only, so no product depends on how it is
 * done.
 */
#define FL_GEMM_TRPACK(SUF, T, VT, VL, TRANSPOSE)                                         \
static void fl_gemm_trpack_##SUF(const T *X, size_t ldx, ptrdiff_t r0, ptrdiff_t w,       \
                                 ptrdiff_t p0, ptrdiff_t kc, T *P, ptrdiff_t W)          \
{                                                                                         \
    for (ptrdiff_t g = 0; g < W; g += VL) {                                               \
        ptrdiff_t lanes = W - g < VL ? W - g : VL;                                        \
        for (ptrdiff_t p = 0; p < kc; p += VL) {                                          \
            ptrdiff_t left = kc - p < VL ? kc - p : VL;                                   \
            VT v[VL];                                                                     \
            for (int i = 0; i < VL; i++)                                                  \
                v[i] = g + i < w                                                          \
                    ? fl_gemm_ldn_##SUF(X + (size_t)(r0 + g + i) * ldx + p0 + p, left)    \
                    : (VT){0};                                                            \
            TRANSPOSE(VT, v);                                                             \
            for (ptrdiff_t q = 0; q < left; q++)                                          \
                fl_gemm_stn_##SUF(P + (p + q) * W + g, lanes, v[q]);                      \
        }                                                                                 \
    }                                                                                     \
}

FL_GEMM_TRPACK(d, double, fl_gemm_vd, FL_GEMM_VL_D, FL_GEMM_TRANSPOSE_D)
FL_GEMM_TRPACK(f, float, fl_gemm_vf, FL_GEMM_VL_F, FL_GEMM_TRANSPOSE_F)

/*
 * The copying pack (op(A) = A^T, op(B) = B: a panel's lines run along X's
 * rows), vectorized: per depth p, the row piece X[p0 + p, r0 .. r0 + w) goes
 * to P[p * W ..] in vectors of VL with lane counts fixed for the panel (lanes
 * past w as zeros).  Written with partial moves because a panel width of 14
 * does not vectorize by itself: copied element by element, packing the two
 * operands of a (2048, 2048) x (2048, 512) float64 product took ~4 ms.
 */
#define FL_GEMM_ALPACK(SUF, T, VL)                                                        \
static void fl_gemm_alpack_##SUF(const T *X, size_t ldx, ptrdiff_t r0, ptrdiff_t w,       \
                                 ptrdiff_t p0, ptrdiff_t kc, T *P, ptrdiff_t W)          \
{                                                                                         \
    ptrdiff_t ln[4], sn[4];                                                               \
    int ng = 0;                                                                           \
    for (ptrdiff_t g = 0; g < W && ng < 4; g += VL, ng++) {                               \
        sn[ng] = W - g < VL ? W - g : VL;                                                 \
        ln[ng] = w - g < 0 ? 0 : (w - g < VL ? w - g : VL);                               \
    }                                                                                     \
    for (ptrdiff_t p = 0; p < kc; p++) {                                                  \
        const T *src = X + (size_t)(p0 + p) * ldx + r0;                                   \
        for (int q = 0; q < ng; q++)                                                      \
            fl_gemm_stn_##SUF(P + p * W + q * VL, sn[q], fl_gemm_ldn_##SUF(src + q * VL, ln[q])); \
    }                                                                                     \
}

FL_GEMM_ALPACK(d, double, FL_GEMM_VL_D)
FL_GEMM_ALPACK(f, float, FL_GEMM_VL_F)

/* A whole block of op(A) = A^T panels (mc lines, MR per panel, panel q at
   P + q * MR * kc), copied depth by depth: each depth's row piece of mc
   elements is read once, front to back, and dealt out to the panels.  Not
   panel by panel (fl_gemm_alpack), which visits each depth row once per
   panel, 56 bytes at a time: measured at 6% of cdist_backward(dist=)'s W^T A
   product at (2048, 512) float32.  Same values in the same places. */
#define FL_GEMM_ALPACK_BLOCK(SUF, T, VL)                                                  \
static void fl_gemm_alpack_block_##SUF(const T *X, size_t ldx, ptrdiff_t r0, ptrdiff_t mc, \
                                       ptrdiff_t p0, ptrdiff_t kc, T *P)                  \
{                                                                                         \
    const ptrdiff_t MR = FL_GEMM_MR, nq = (mc + MR - 1) / MR;                             \
    for (ptrdiff_t p = 0; p < kc; p++) {                                                  \
        const T *src = X + (size_t)(p0 + p) * ldx + r0;                                   \
        for (ptrdiff_t q = 0; q < nq; q++) {                                              \
            ptrdiff_t w = mc - q * MR < MR ? mc - q * MR : MR;                            \
            T *dst = P + q * MR * kc + p * MR;                                            \
            for (ptrdiff_t g = 0; g < MR; g += VL) {                                      \
                ptrdiff_t st = MR - g < VL ? MR - g : VL;                                 \
                ptrdiff_t ld = w - g <= 0 ? 0 : (w - g < VL ? w - g : VL);                \
                /* whole vectors where they stay in bounds (partial moves     */          \
                /* cost a few percent of a backward): a load within the       */          \
                /* block's mc lines of the row, a store whose extra lanes land */         \
                /* on depth p + 1's line, written after it                    */          \
                if (q * MR + g + VL <= mc) ld = VL;                                       \
                if (p + 1 < kc) st = VL;                                                  \
                fl_gemm_stn_##SUF(dst + g, st, fl_gemm_ldn_##SUF(src + q * MR + g, ld));  \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
}

FL_GEMM_ALPACK_BLOCK(d, double, FL_GEMM_VL_D)
FL_GEMM_ALPACK_BLOCK(f, float, FL_GEMM_VL_F)

/*
 * The per-dtype pieces, written once as a macro over the element type T,
 * the vector type V, its lane count VL and the intrinsic names.
 */
#define FL_GEMM_DEFINE(SUF, T, V, VL, FMA1, LOADU, STOREU, SET1, FMADD, MUL, SETZERO)      \
                                                                                          \
/* One panel of W (MR or NR) lines, kc deep: P[p * W + r] = line r0 + r of  */          \
/* the operand at depth p0 + p, lines past w zero.  The lines run along X's  */          \
/* rows when `along` (op(A) = A^T, op(B) = B: copies of row pieces), else    */          \
/* down its columns (op(A) = A, op(B) = B^T: a transpose).                    */          \
static void fl_gemm_pack_##SUF(const T *X, size_t ldx, int along, ptrdiff_t r0,           \
                               ptrdiff_t w, ptrdiff_t p0, ptrdiff_t kc, T *P, ptrdiff_t W) \
{                                                                                         \
    ptrdiff_t p, r;                                                                       \
    if (along && W <= 4 * VL) {                                                           \
        fl_gemm_alpack_##SUF(X, ldx, r0, w, p0, kc, P, W);                                \
    } else if (along) {                                                                   \
        for (p = 0; p < kc; p++) {                                                        \
            const T *src = X + (size_t)(p0 + p) * ldx + r0;                               \
            for (r = 0; r < w; r++) P[p * W + r] = src[r];                                \
            for (; r < W; r++) P[p * W + r] = 0;                                          \
        }                                                                                 \
    } else {                                                                              \
        fl_gemm_trpack_##SUF(X, ldx, r0, w, p0, kc, P, W);                                \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* C[r, :NR] = alpha * sum_p Ap[p, r] Bp[p, :] (+ C[r, :NR] if load_c). */                \
static void fl_gemm_ukr_##SUF(ptrdiff_t kc, const T *FL_GEMM_RESTRICT ap,                 \
                              const T *FL_GEMM_RESTRICT bp, T *c, size_t ldc, T alpha,   \
                              int load_c)                                                 \
{                                                                                         \
    V acc[FL_GEMM_MR][FL_GEMM_NV];                                                        \
    V b[FL_GEMM_NV], a, va;                                                               \
    ptrdiff_t p;                                                                          \
    int r, v;                                                                             \
    _Pragma("GCC unroll 16")                                                              \
    for (r = 0; r < FL_GEMM_MR; r++) {                                                    \
        _Pragma("GCC unroll 4")                                                           \
        for (v = 0; v < FL_GEMM_NV; v++) {                                                \
            acc[r][v] = SETZERO();                                                        \
            __builtin_prefetch(c + (size_t)r * ldc + v * VL, 1, 3);                       \
        }                                                                                 \
    }                                                                                     \
    _Pragma("GCC unroll 4")                                                               \
    for (p = 0; p < kc; p++) {                                                            \
        _Pragma("GCC unroll 4")                                                           \
        for (v = 0; v < FL_GEMM_NV; v++) b[v] = LOADU(bp + v * VL);                        \
        _Pragma("GCC unroll 16")                                                          \
        for (r = 0; r < FL_GEMM_MR; r++) {                                                \
            a = SET1(ap[r]);                                                              \
            _Pragma("GCC unroll 4")                                                       \
            for (v = 0; v < FL_GEMM_NV; v++) acc[r][v] = FMADD(a, b[v], acc[r][v]);       \
        }                                                                                 \
        ap += FL_GEMM_MR;                                                                 \
        bp += FL_GEMM_NV * VL;                                                            \
    }                                                                                     \
    va = SET1(alpha);                                                                     \
    _Pragma("GCC unroll 16")                                                              \
    for (r = 0; r < FL_GEMM_MR; r++) {                                                    \
        T *cr = c + (size_t)r * ldc;                                                      \
        _Pragma("GCC unroll 4")                                                           \
        for (v = 0; v < FL_GEMM_NV; v++) {                                                \
            if (load_c)                                                                   \
                STOREU(cr + v * VL, FMADD(acc[r][v], va, LOADU(cr + v * VL)));            \
            else                                                                          \
                STOREU(cr + v * VL, MUL(acc[r][v], va));                                  \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* C (m x n) (+)= alpha * the product of packed blocks: Ap holds the MR-row   */        \
/* panels of m rows, Bp the NR-column panels of n columns, each kc deep and   */         \
/* consecutive.  Full panels go straight to C; edge panels through a buffer.  */         \
static void fl_gemm_macro_##SUF(ptrdiff_t m, ptrdiff_t n, ptrdiff_t kc, const T *Ap,      \
                                const T *Bp, T *C, size_t ldc, T alpha, int load_c)       \
{                                                                                         \
    const ptrdiff_t NR = FL_GEMM_NV * VL, MR = FL_GEMM_MR;                                \
    T edge[FL_GEMM_MR * FL_GEMM_NV * VL] __attribute__((aligned(64)));                    \
    ptrdiff_t ir, jr, i, j;                                                               \
    for (ir = 0; ir < m; ir += MR) {                                                      \
        ptrdiff_t mr = m - ir < MR ? m - ir : MR;                                         \
        for (jr = 0; jr < n; jr += NR) {                                                  \
            ptrdiff_t nr = n - jr < NR ? n - jr : NR;                                     \
            T *cij = C + (size_t)ir * ldc + jr;                                           \
            if (mr == MR && nr == NR) {                                                   \
                fl_gemm_ukr_##SUF(kc, Ap + ir * kc, Bp + jr * kc, cij, ldc, alpha, load_c); \
            } else {    /* the same roundings as the full panel's store */            \
                fl_gemm_ukr_##SUF(kc, Ap + ir * kc, Bp + jr * kc, edge, NR, (T)1, 0);     \
                for (i = 0; i < mr; i++)                                                  \
                    for (j = 0; j < nr; j++)                                              \
                        cij[(size_t)i * ldc + j] =                                        \
                            load_c ? FMA1(edge[i * NR + j], alpha, cij[(size_t)i * ldc + j]) \
                                   : edge[i * NR + j] * alpha;                            \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* C = beta C (0 or 1) for a product of depth 0. */                                      \
static void fl_gemm_beta_only_##SUF(ptrdiff_t m, ptrdiff_t n, T beta, T *C, size_t ldc)   \
{                                                                                         \
    for (ptrdiff_t i = 0; i < m; i++)                                                     \
        for (ptrdiff_t j = 0; j < n; j++)                                                 \
            C[(size_t)i * ldc + j] = beta == 0 ? (T)0 : C[(size_t)i * ldc + j];           \
}                                                                                         \
                                                                                          \
/* One KC slice (depths pc .. pc + kc) of C (m x nc) (+)= alpha op(A) op(B),  */          \
/* op(B)'s panels of the slice at Bp: op(A) packed MC rows at a time into Ap  */          \
/* (the thread's scratch), each block through the macro-kernel.               */          \
static void fl_gemm_slice_##SUF(int ta, ptrdiff_t m, ptrdiff_t nc, ptrdiff_t pc,          \
                                ptrdiff_t kc, T alpha, const T *A, size_t lda,            \
                                const T *Bp, T *C, size_t ldc, int load_c, T *Ap)         \
{                                                                                         \
    const ptrdiff_t MR = FL_GEMM_MR;                                                      \
    for (ptrdiff_t ic = 0; ic < m; ic += FL_GEMM_MC) {                                    \
        ptrdiff_t mc = m - ic < FL_GEMM_MC ? m - ic : FL_GEMM_MC;                         \
        if (ta)                                                                           \
            fl_gemm_alpack_block_##SUF(A, lda, ic, mc, pc, kc, Ap);                       \
        else                                                                              \
            for (ptrdiff_t ir = 0; ir < mc; ir += MR)                                     \
                fl_gemm_pack_##SUF(A, lda, 0, ic + ir, mc - ir < MR ? mc - ir : MR,       \
                                   pc, kc, Ap + ir * kc, MR);                             \
        fl_gemm_macro_##SUF(mc, nc, kc, Ap, Bp, C + (size_t)ic * ldc, ldc, alpha, load_c); \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* Returns 0, or -1 when the packing buffers could not be allocated (then     */         \
/* nothing was written and the caller falls back to BLAS).                     */         \
static int fl_gemm_##SUF(int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, T alpha, \
                         const T *A, size_t lda, const T *B, size_t ldb, T beta, T *C,   \
                         size_t ldc)                                                      \
{                                                                                         \
    const ptrdiff_t NR = FL_GEMM_NV * VL, NC = FL_GEMM_NC_OF(T);                          \
    ptrdiff_t jc, pc, jr, nc, kc;                                                         \
    T *Bp, *Ap;                                                                           \
    if (m <= 0 || n <= 0) return 0;                                                       \
    if (k <= 0) {                                                                         \
        fl_gemm_beta_only_##SUF(m, n, beta, C, ldc);                                      \
        return 0;                                                                         \
    }                                                                                     \
    {                                                                                     \
        ptrdiff_t ncap = n < NC ? n : NC;                                                 \
        ptrdiff_t npad = (ncap + NR - 1) / NR * NR;                                       \
        size_t bytes = ((size_t)FL_GEMM_KC * npad + (size_t)FL_GEMM_KC * FL_GEMM_MC)      \
                       * sizeof(T);                                                       \
        Bp = (T *)fl_gemm_scratch(bytes);                                                 \
        if (Bp == NULL) return -1;                                                        \
        Ap = Bp + (size_t)FL_GEMM_KC * npad;                                              \
    }                                                                                     \
    for (jc = 0; jc < n; jc += NC) {                                                      \
        nc = n - jc < NC ? n - jc : NC;                                                   \
        for (pc = 0; pc < k; pc += FL_GEMM_KC) {                                          \
            kc = k - pc < FL_GEMM_KC ? k - pc : FL_GEMM_KC;                               \
            for (jr = 0; jr < nc; jr += NR)                                               \
                fl_gemm_pack_##SUF(B, ldb, !tb, jc + jr, nc - jr < NR ? nc - jr : NR,     \
                                   pc, kc, Bp + jr * kc, NR);                             \
            fl_gemm_slice_##SUF(ta, m, nc, pc, kc, alpha, A, lda, Bp, C + jc, ldc,        \
                                pc > 0 || beta != 0, Ap);                                 \
        }                                                                                 \
    }                                                                                     \
    return 0;                                                                             \
}                                                                                         \
                                                                                          \
/* C (m x n) = alpha op(A) op(B) + beta C with op(B) prepacked, all of it    */          \
/* (fl_gemm_pack_panels: its npad padded columns, k deep), and op(A) packed   */          \
/* here block by block: fl_gemm's loops and sums without its packing of B,    */          \
/* so the result is fl_gemm's bit for bit.  For a product split into row      */          \
/* blocks on several threads: B is packed once for all of them.  Returns 0,   */          \
/* or -1 when the packing buffer could not be allocated (nothing written).    */          \
static int fl_gemm_pb_##SUF(int ta, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, T alpha,       \
                            const T *A, size_t lda, const T *Bp, ptrdiff_t npad, T beta,  \
                            T *C, size_t ldc)                                             \
{                                                                                         \
    const ptrdiff_t NC = FL_GEMM_NC_OF(T);                                                \
    ptrdiff_t jc, pc, nc, kc;                                                             \
    T *Ap;                                                                                \
    if (m <= 0 || n <= 0) return 0;                                                       \
    if (k <= 0) {                                                                         \
        fl_gemm_beta_only_##SUF(m, n, beta, C, ldc);                                      \
        return 0;                                                                         \
    }                                                                                     \
    Ap = (T *)fl_gemm_scratch((size_t)FL_GEMM_KC * FL_GEMM_MC * sizeof(T));               \
    if (Ap == NULL) return -1;                                                            \
    for (jc = 0; jc < n; jc += NC) {                                                      \
        nc = n - jc < NC ? n - jc : NC;                                                   \
        for (pc = 0; pc < k; pc += FL_GEMM_KC) {                                          \
            kc = k - pc < FL_GEMM_KC ? k - pc : FL_GEMM_KC;                               \
            fl_gemm_slice_##SUF(ta, m, nc, pc, kc, alpha, A, lda, Bp + pc * npad + jc * kc, \
                                C + jc, ldc, pc > 0 || beta != 0, Ap);                    \
        }                                                                                 \
    }                                                                                     \
    return 0;                                                                             \
}                                                                                         \
                                                                                          \
/* Prepacked operands, for products whose operands are shared by many tiles */           \
/* (cdist, pdist): op(A) (m x k) as MR-row panels, op(B) (k x n) as NR-     */           \
/* column panels, both zero-padded, for every KC slice in turn: slice s      */           \
/* starts at s * KC * pad and its panel q at q * (panel width) * kc_s.       */           \
/* fl_gemm_pack_panels packs panels [q0, q1) of one operand (is_b: as op(B), */           \
/* X is then B and tx is tb; else as op(A)).                                  */          \
static void fl_gemm_pack_panels_##SUF(int is_b, const T *X, size_t ldx, int tx,           \
                                      ptrdiff_t rows, ptrdiff_t k, ptrdiff_t q0,          \
                                      ptrdiff_t q1, T *P)                                 \
{                                                                                         \
    const ptrdiff_t W = is_b ? FL_GEMM_NV * VL : FL_GEMM_MR;                              \
    const ptrdiff_t pad = (rows + W - 1) / W * W;                                         \
    ptrdiff_t q, pc, kc;                                                                  \
    for (q = q0; q < q1; q++) {                                                           \
        ptrdiff_t w = rows - q * W < W ? rows - q * W : W;                                \
        for (pc = 0; pc < k; pc += FL_GEMM_KC) {                                          \
            kc = k - pc < FL_GEMM_KC ? k - pc : FL_GEMM_KC;                               \
            fl_gemm_pack_##SUF(X, ldx, is_b ? !tx : tx, q * W, w, pc, kc,                 \
                               P + pc * pad + q * W * kc, W);                             \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* C (m x n) = alpha op(A)[i0:i0+m] op(B)[:, j0:j0+n] + beta C from prepacked */          \
/* operands (mpad, npad: their padded row / column counts); i0 a multiple   */          \
/* of MR, j0 of NR.  Same sums in the same order as fl_gemm.                 */          \
static void fl_gemm_prepacked_##SUF(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, T alpha,       \
                                    const T *Ap, ptrdiff_t mpad, ptrdiff_t i0,            \
                                    const T *Bp, ptrdiff_t npad, ptrdiff_t j0, T beta,    \
                                    T *C, size_t ldc)                                     \
{                                                                                         \
    ptrdiff_t pc, kc;                                                                     \
    for (pc = 0; pc < k; pc += FL_GEMM_KC) {                                              \
        kc = k - pc < FL_GEMM_KC ? k - pc : FL_GEMM_KC;                                   \
        fl_gemm_macro_##SUF(m, n, kc, Ap + pc * mpad + i0 * kc, Bp + pc * npad + j0 * kc, \
                            C, ldc, alpha, pc > 0 || beta != 0);                          \
    }                                                                                     \
}

#define FL_GEMM_RESTRICT __restrict__

#if FL_GEMM_VB == 64
FL_GEMM_DEFINE(d, double, __m512d, 8, __builtin_fma, _mm512_loadu_pd, _mm512_storeu_pd,
               _mm512_set1_pd, _mm512_fmadd_pd, _mm512_mul_pd, _mm512_setzero_pd)
FL_GEMM_DEFINE(f, float, __m512, 16, __builtin_fmaf, _mm512_loadu_ps, _mm512_storeu_ps,
               _mm512_set1_ps, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_setzero_ps)
#else
FL_GEMM_DEFINE(d, double, __m256d, 4, __builtin_fma, _mm256_loadu_pd, _mm256_storeu_pd,
               _mm256_set1_pd, _mm256_fmadd_pd, _mm256_mul_pd, _mm256_setzero_pd)
FL_GEMM_DEFINE(f, float, __m256, 8, __builtin_fmaf, _mm256_loadu_ps, _mm256_storeu_ps,
               _mm256_set1_ps, _mm256_fmadd_ps, _mm256_mul_ps, _mm256_setzero_ps)
#endif

#else /* no own GEMM in this build: the callers use BLAS */

static int fl_gemm_wanted = 0;    /* the testing hook may set it; nothing reads it here */
static int fl_gemm_ok(void) { return 0; }

/* fl_gemm and fl_gemm_pb: -1, as for a failed allocation, so a caller that
   did not ask fl_gemm_ok() still falls back to its BLAS product. */
#define FL_GEMM_FALLBACK(SUF, T)                                                          \
static int fl_gemm_##SUF(int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, T alpha, \
                         const T *A, size_t lda, const T *B, size_t ldb, T beta, T *C,   \
                         size_t ldc)                                                      \
{ (void)ta; (void)tb; (void)m; (void)n; (void)k; (void)alpha; (void)A; (void)lda;        \
  (void)B; (void)ldb; (void)beta; (void)C; (void)ldc; return -1; }                        \
static int fl_gemm_pb_##SUF(int ta, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, T alpha,       \
                            const T *A, size_t lda, const T *Bp, ptrdiff_t npad, T beta,  \
                            T *C, size_t ldc)                                             \
{ (void)ta; (void)m; (void)n; (void)k; (void)alpha; (void)A; (void)lda; (void)Bp;         \
  (void)npad; (void)beta; (void)C; (void)ldc; return -1; }
FL_GEMM_FALLBACK(d, double)
FL_GEMM_FALLBACK(f, float)

/* The prepacked operands exist only with the own GEMM, and these two have no
   BLAS twin: every caller takes the prepacked path only when fl_gemm_ok().
   Reaching one is a bug; doing nothing would leave the caller's tile
   unwritten (wrong results, silently), so stop the process instead. */
static void fl_gemm_unreachable(const char *fn)
{
    fprintf(stderr, "fastlin: internal error: %s called in a build without fastlin's "
            "GEMM (its callers must check fl_gemm_ok() first)\n", fn);
    fflush(stderr);
    abort();
}

#define FL_GEMM_NO_PREPACKED(SUF, T)                                                      \
static void fl_gemm_pack_panels_##SUF(int is_b, const T *X, size_t ldx, int tx,           \
                                      ptrdiff_t rows, ptrdiff_t k, ptrdiff_t q0,          \
                                      ptrdiff_t q1, T *P)                                 \
{ (void)is_b; (void)X; (void)ldx; (void)tx; (void)rows; (void)k; (void)q0; (void)q1;     \
  (void)P; fl_gemm_unreachable("fl_gemm_pack_panels_" #SUF); }                            \
static void fl_gemm_prepacked_##SUF(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, T alpha,       \
                                    const T *Ap, ptrdiff_t mpad, ptrdiff_t i0,            \
                                    const T *Bp, ptrdiff_t npad, ptrdiff_t j0, T beta,    \
                                    T *C, size_t ldc)                                     \
{ (void)m; (void)n; (void)k; (void)alpha; (void)Ap; (void)mpad; (void)i0; (void)Bp;      \
  (void)npad; (void)j0; (void)beta; (void)C; (void)ldc;                                  \
  fl_gemm_unreachable("fl_gemm_prepacked_" #SUF); }
FL_GEMM_NO_PREPACKED(d, double)
FL_GEMM_NO_PREPACKED(f, float)

#endif

#endif /* FL_GEMM_H */
