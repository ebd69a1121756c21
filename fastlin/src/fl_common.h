/*
 * fl_common.h -- shared pieces of fastlin's C inner loops.
 *
 * Why C and not Cython for the innermost loops: Cython emits no `omp simd`
 * and its scalar reductions do not vectorize.  The loops below are written
 * with explicit vectors (see the vector layer below), so that the summation
 * order is fixed by the source and the vector width, not by the compiler's
 * choices: builds of the same width (every level under clang; avx512 under
 * gcc) all add in the same order.
 *
 * SIMD levels: setup.py compiles each kernel module once per level, with
 * that level's compiler flags (x86-64: -march=x86-64-v4 for avx512,
 * -march=x86-64-v3 for avx2, nothing for baseline), into fastlin/_<level>/,
 * and fastlin/_simd.py imports one of them (the best the CPU has, or the one
 * FASTLIN_SIMD forces).  Inside a module the level is a compile-time fact:
 * FL_AVX512 selects the AVX-512 intrinsics paths (the distance epilogues,
 * 64-byte streaming stores, the own GEMM; the avx2 level has AVX2 twins of
 * the GEMM and of the distance epilogues), and the generic vectors below
 * lower to the level's registers.  No ifunc, no target attributes and
 * no CPU test inside the kernels: forcing a level on one machine runs exactly
 * the code a CPU of that level runs.
 *
 * Never -ffast-math: it would flush subnormals for the whole process and
 * break NaN/inf semantics.  The exp below is plain arithmetic, so it
 * vectorizes without it.
 */
#ifndef FL_COMMON_H
#define FL_COMMON_H

/* The kernels are written with GCC/Clang vector extensions (see the vector
   layer below); these are the oldest compilers that build them.  MSVC's cl
   has no vector extensions: on Windows, build with clang-cl. */
#if defined(__clang__)
#if __clang_major__ < 14
#error "fastlin needs clang >= 14 (Apple clang >= 14); this clang is older"
#endif
#elif defined(__GNUC__)
#if __GNUC__ < 11
#error "fastlin needs gcc >= 11; this gcc is older"
#endif
#else
#error "fastlin's kernels need gcc >= 11 or clang >= 14 (clang-cl on Windows): they use GCC/Clang vector extensions"
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define FL_AVX512 1
#else
#define FL_AVX512 0
#endif
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

/* Two-source shuffles with constant indices: FL_SHUFFLE(a, b, i0, i1, ...)
   (2, 4, 8 or 16 indices) picks lane i of (a, b) concatenated.  Clang and gcc >= 12
   have __builtin_shufflevector; for gcc 11 the lanes are picked one by one
   into a vector of a's type (constant indices: the compiler folds them into
   permutes), with no builtin of its own. */
#if defined(__clang__) || __GNUC__ >= 12
#define FL_HAVE_SHUFFLEVECTOR 1
#define FL_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define FL_HAVE_SHUFFLEVECTOR 0
#define FL_LANES_(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define FL_PICK_(a, b, i) ((i) < FL_LANES_(a) ? (a)[(i) % FL_LANES_(a)] : (b)[(i) % FL_LANES_(a)])
#define FL_SHUF_NTH_(x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15, x16, \
                     n, ...) n
#define FL_SHUF_COUNT_(...) FL_SHUF_NTH_(__VA_ARGS__, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, \
                                         6, 5, 4, 3, 2, 1, 0)
#define FL_SHUF_CAT2_(x, y) x##y
#define FL_SHUF_CAT_(x, y) FL_SHUF_CAT2_(x, y)
#define FL_SHUF_2_(a, b, i0, i1) ((__typeof__(a)){FL_PICK_(a, b, i0), FL_PICK_(a, b, i1)})
#define FL_SHUF_4_(a, b, i0, i1, i2, i3)                                                   \
    ((__typeof__(a)){FL_PICK_(a, b, i0), FL_PICK_(a, b, i1), FL_PICK_(a, b, i2),           \
                     FL_PICK_(a, b, i3)})
#define FL_SHUF_8_(a, b, i0, i1, i2, i3, i4, i5, i6, i7)                                   \
    ((__typeof__(a)){FL_PICK_(a, b, i0), FL_PICK_(a, b, i1), FL_PICK_(a, b, i2),           \
                     FL_PICK_(a, b, i3), FL_PICK_(a, b, i4), FL_PICK_(a, b, i5),           \
                     FL_PICK_(a, b, i6), FL_PICK_(a, b, i7)})
#define FL_SHUF_16_(a, b, i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12, i13, i14,  \
                    i15)                                                                   \
    ((__typeof__(a)){FL_PICK_(a, b, i0), FL_PICK_(a, b, i1), FL_PICK_(a, b, i2),           \
                     FL_PICK_(a, b, i3), FL_PICK_(a, b, i4), FL_PICK_(a, b, i5),           \
                     FL_PICK_(a, b, i6), FL_PICK_(a, b, i7), FL_PICK_(a, b, i8),           \
                     FL_PICK_(a, b, i9), FL_PICK_(a, b, i10), FL_PICK_(a, b, i11),         \
                     FL_PICK_(a, b, i12), FL_PICK_(a, b, i13), FL_PICK_(a, b, i14),        \
                     FL_PICK_(a, b, i15)})
#define FL_SHUFFLE(a, b, ...) \
    FL_SHUF_CAT_(FL_SHUF_, FL_SHUF_CAT_(FL_SHUF_COUNT_(__VA_ARGS__), _))(a, b, __VA_ARGS__)
#endif
#define FL_UNPAREN(...) __VA_ARGS__

#define FL_INLINE static inline __attribute__((always_inline))
#define FL_RESTRICT __restrict__

/*
 * Rows are processed one after another by the same thread (static schedule),
 * and the compute-heavy pass of a row (the exp) leaves the memory bus idle.
 * FL_PREFETCH_BLOCK asks for the same 64-byte block (one vector) of the *next* row
 * meanwhile, so that row's first (memory-bound) pass finds it in cache.
 * Prefetches never fault, so running past the array's end is harmless.
 */
#define FL_PREFETCH_BLOCK(p) __builtin_prefetch((const void *)(p), 0, 3)
/*
 * FL_PREFETCH_W asks for a line of the output for writing while a reduction
 * pass streams the input: the read-for-ownership then overlaps that pass
 * instead of stalling the store pass that follows (a 1.3-1.4x difference for
 * log_softmax and softmax_backward rows).
 */
#define FL_PREFETCH_W(p) __builtin_prefetch((const void *)(p), 1, 3)

#ifndef FL_PF_BYTES
#define FL_PF_BYTES 8192 /* column tiles prefetch this far ahead */
#endif
#ifndef FL_TILE_MAX
#define FL_TILE_MAX 512   /* widest column tile (elements) a kernel accepts */
#endif

/* ------------------------------------------------------------------ exp */
/*
 * exp(x) in double, vectorizable.  x = k ln2 + r with |r| <= ln2/2 (Cody-Waite
 * split of ln2, exact product for |k| < 2^21), exp(r) by its Taylor polynomial
 * of degree 13 (truncation < 4e-18 relative, far below half an ulp), and the
 * scale 2^k applied in two exact halves so that subnormal results are rounded
 * once.  Measured against a longdouble reference: max error about 1 ulp.
 * Inputs are clamped to [-746, 710], which preserves the result (0 and inf),
 * and a NaN passes through the comparisons and the polynomial.
 */
/*
 * The reduction and the polynomial, written once for the scalar functions
 * and their vector twins (so a lane and the scalar agree bit for bit): from
 * x and kd = k (as a floating value), r = x - k ln2 in two Cody-Waite steps
 * and p = exp(r) by Horner.  z is 0 of the type (0 + c is exact).
 */
#define FL_EXP_POLY_D(x, kd, z, r, p) do {                                     \
        (r) = (x) - (kd) * 0x1.62e42fee00000p-1;                               \
        (r) = (r) - (kd) * 0x1.a39ef35793c76p-33;                              \
        (p) = (z) + 1.0 / 6227020800.0;                                        \
        (p) = (p) * (r) + 1.0 / 479001600.0;                                   \
        (p) = (p) * (r) + 1.0 / 39916800.0;                                    \
        (p) = (p) * (r) + 1.0 / 3628800.0;                                     \
        (p) = (p) * (r) + 1.0 / 362880.0;                                      \
        (p) = (p) * (r) + 1.0 / 40320.0;                                       \
        (p) = (p) * (r) + 1.0 / 5040.0;                                        \
        (p) = (p) * (r) + 1.0 / 720.0;                                         \
        (p) = (p) * (r) + 1.0 / 120.0;                                         \
        (p) = (p) * (r) + 1.0 / 24.0;                                          \
        (p) = (p) * (r) + 1.0 / 6.0;                                           \
        (p) = (p) * (r) + 0.5;                                                 \
        (p) = (p) * (r) + 1.0;                                                 \
        (p) = (p) * (r) + 1.0;                                                 \
    } while (0)
#define FL_EXP_POLY_F(x, kd, z, r, p) do {                                     \
        (r) = (x) - (kd) * 0x1.62e4p-1f;                                       \
        (r) = (r) - (kd) * 0x1.7f7d1cp-20f;                                    \
        (p) = (z) + 1.0f / 5040.0f;                                            \
        (p) = (p) * (r) + 1.0f / 720.0f;                                       \
        (p) = (p) * (r) + 1.0f / 120.0f;                                       \
        (p) = (p) * (r) + 1.0f / 24.0f;                                        \
        (p) = (p) * (r) + 1.0f / 6.0f;                                         \
        (p) = (p) * (r) + 0.5f;                                                \
        (p) = (p) * (r) + 1.0f;                                                \
        (p) = (p) * (r) + 1.0f;                                                \
    } while (0)

FL_INLINE double fl_exp_d(double x)
{
    const double shift = 0x1.8p52;
    x = x < -746.0 ? -746.0 : x;
    x = x > 710.0 ? 710.0 : x;
    double kd = x * 0x1.71547652b82fep0 + shift;
    int64_t kb;
    memcpy(&kb, &kd, 8);
    int64_t k = kb - INT64_C(0x4338000000000000);
    kd -= shift;
    double r, p;
    FL_EXP_POLY_D(x, kd, 0.0, r, p);
    /* 2^k = 2^k1 * 2^k2 with k1 = floor(k/2); a logical shift of a biased,
       non-negative k keeps this within AVX2's integer instructions. */
    int64_t k1 = (int64_t)((uint64_t)(k + 2048) >> 1) - 1024;
    int64_t k2 = k - k1;
    uint64_t b1 = (uint64_t)(k1 + 1023) << 52, b2 = (uint64_t)(k2 + 1023) << 52;
    double s1, s2;
    memcpy(&s1, &b1, 8);
    memcpy(&s2, &b2, 8);
    return p * s1 * s2;
}

/*
 * exp(x) in float, same scheme: ln2 split so that k*ln2_hi is exact for
 * |k| < 256, Taylor degree 7 on |r| <= ln2/2 (truncation 5e-9 relative,
 * < 0.1 ulp), two-step scale.  Clamp [-104, 89] keeps 0 and inf.
 */
FL_INLINE float fl_exp_f(float x)
{
    const float shift = 0x1.8p23f;
    x = x < -104.0f ? -104.0f : x;
    x = x > 89.0f ? 89.0f : x;
    float kd = x * 0x1.715476p0f + shift;
    int32_t kb;
    memcpy(&kb, &kd, 4);
    int32_t k = kb - 0x4B400000;
    kd -= shift;
    float r, p;
    FL_EXP_POLY_F(x, kd, 0.0f, r, p);
    int32_t k1 = (int32_t)((uint32_t)(k + 256) >> 1) - 128;
    int32_t k2 = k - k1;
    uint32_t b1 = (uint32_t)(k1 + 127) << 23, b2 = (uint32_t)(k2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, 4);
    memcpy(&s2, &b2, 4);
    return p * s1 * s2;
}

/* ------------------------------------------------------ vector layer */
/*
 * The inner loops are written with GCC/Clang vector extensions, over one
 * vector of FL_VBYTES bytes (FL_VL_d doubles or FL_VL_f floats).  gcc's
 * auto-vectorizer alone left the mixed float/double loops and the max
 * reductions scalar (3-5x slower).
 *
 * The width: 64 bytes where AVX-512 is, and under clang at every level
 * (clang keeps a 64-byte vector in 2 ymm, 4 xmm or 4 NEON q registers, two
 * to four independent chains per loop-carried sum).  Under gcc below
 * AVX-512, the level's own register width (32 bytes at avx2, 16 at
 * baseline and on NEON): gcc has no register mode for a wider vector and
 * keeps one that lives across loop iterations (an accumulator, a running
 * maximum) on the stack, moved in 8- and 16-byte pieces every iteration
 * (a sum over 4096 doubles at -march=x86-64-v3: 5.8 us with one 64-byte
 * accumulator, 0.45 us with two 32-byte ones).
 * The width sets the lane order of the sums, so results of builds of
 * different widths differ within the documented accuracy bounds; within a
 * build every path shares it.  -DFL_VBYTES=16|32|64 overrides the choice
 * (a width below the level's registers only wastes them).
 */
#if defined(__AVX512F__)
#define FL_REG_BYTES 64
#elif defined(__AVX__)
#define FL_REG_BYTES 32
#else
#define FL_REG_BYTES 16
#endif
#ifndef FL_VBYTES
#if defined(__clang__) || FL_AVX512
#define FL_VBYTES 64
#else
#define FL_VBYTES FL_REG_BYTES
#endif
#endif
#if FL_VBYTES != 16 && FL_VBYTES != 32 && FL_VBYTES != 64
#error "FL_VBYTES must be 16, 32 or 64"
#endif
typedef double   fl_vd  __attribute__((vector_size(FL_VBYTES)));
typedef int64_t  fl_vdi __attribute__((vector_size(FL_VBYTES)));
typedef uint64_t fl_vdu __attribute__((vector_size(FL_VBYTES)));
typedef float    fl_vf  __attribute__((vector_size(FL_VBYTES)));
typedef int32_t  fl_vfi __attribute__((vector_size(FL_VBYTES)));
typedef uint32_t fl_vfu __attribute__((vector_size(FL_VBYTES)));
#define FL_VL_d (FL_VBYTES / 8)
#define FL_VL_f (FL_VBYTES / 4)

#define FL_SELECT(m, a, b, VT, VI) ((VT)(((VI)(a) & (m)) | ((VI)(b) & ~(m))))

/*
 * Lane-wise comparisons, giving all-ones or zero lanes.  Every vector
 * comparison in the kernels goes through these.  gcc lowers a comparison of
 * vectors wider than the level's registers lane by lane, a scalar compare and
 * a branch per lane (16 per float32 vector; softmax and the hinge were 3-15x
 * slower); where a vector is wider than the registers (FL_VBYTES forced
 * above them) it is compared here in register-wide pieces, which keeps
 * them vector compares.  clang splits wide comparisons itself.
 */
#if defined(__clang__) || FL_VBYTES <= FL_REG_BYTES
#define FL_CMP_PIECES 1
#else
#define FL_CMP_PIECES (FL_VBYTES / FL_REG_BYTES)
#endif
typedef double  fl_pd  __attribute__((vector_size(FL_VBYTES / FL_CMP_PIECES)));
typedef int64_t fl_pdi __attribute__((vector_size(FL_VBYTES / FL_CMP_PIECES)));
typedef float   fl_pf  __attribute__((vector_size(FL_VBYTES / FL_CMP_PIECES)));
typedef int32_t fl_pfi __attribute__((vector_size(FL_VBYTES / FL_CMP_PIECES)));

#if FL_CMP_PIECES == 1
#define FL_CMP_DEF_(name, op, VT, MT, PT, PMT)                                    \
    FL_INLINE MT name(VT a, VT b) { return a op b; }
#else
#define FL_CMP_DEF_(name, op, VT, MT, PT, PMT)                                    \
    FL_INLINE MT name(VT a, VT b)                                                 \
    {                                                                             \
        PT pa[FL_CMP_PIECES], pb[FL_CMP_PIECES];                                  \
        PMT pm[FL_CMP_PIECES];                                                    \
        MT m;                                                                     \
        memcpy(pa, &a, sizeof a);                                                 \
        memcpy(pb, &b, sizeof b);                                                 \
        for (int i = 0; i < FL_CMP_PIECES; i++) pm[i] = pa[i] op pb[i];           \
        memcpy(&m, pm, sizeof m);                                                 \
        return m;                                                                 \
    }
#endif
FL_CMP_DEF_(vlt_d, <,  fl_vd, fl_vdi, fl_pd, fl_pdi)
FL_CMP_DEF_(vgt_d, >,  fl_vd, fl_vdi, fl_pd, fl_pdi)
FL_CMP_DEF_(veq_d, ==, fl_vd, fl_vdi, fl_pd, fl_pdi)
FL_CMP_DEF_(vne_d, !=, fl_vd, fl_vdi, fl_pd, fl_pdi)
FL_CMP_DEF_(vlt_f, <,  fl_vf, fl_vfi, fl_pf, fl_pfi)
FL_CMP_DEF_(vgt_f, >,  fl_vf, fl_vfi, fl_pf, fl_pfi)
FL_CMP_DEF_(veq_f, ==, fl_vf, fl_vfi, fl_pf, fl_pfi)
FL_CMP_DEF_(vne_f, !=, fl_vf, fl_vfi, fl_pf, fl_pfi)
#undef FL_CMP_DEF_

/* Vector twins of fl_exp_d / fl_exp_f: the same operations lane by lane, so
   a vector lane and the scalar function give bitwise the same result. */
FL_INLINE fl_vd fl_vexp_d(fl_vd x)
{
    const fl_vd zero = {0};
    const fl_vd lo = zero - 746.0, hi = zero + 710.0;
    x = FL_SELECT(vlt_d(x, lo), lo, x, fl_vd, fl_vdi);
    x = FL_SELECT(vgt_d(x, hi), hi, x, fl_vd, fl_vdi);
    fl_vd kd = x * 0x1.71547652b82fep0 + 0x1.8p52;
    fl_vdi k = (fl_vdi)kd - INT64_C(0x4338000000000000);
    kd -= 0x1.8p52;
    fl_vd r, p;
    FL_EXP_POLY_D(x, kd, zero, r, p);
    fl_vdi k1 = (fl_vdi)((fl_vdu)(k + 2048) >> 1) - 1024;
    fl_vdi k2 = k - k1;
    fl_vd s1 = (fl_vd)((k1 + 1023) << 52), s2 = (fl_vd)((k2 + 1023) << 52);
    return p * s1 * s2;
}

FL_INLINE fl_vf fl_vexp_f(fl_vf x)
{
    const fl_vf zero = {0};
    const fl_vf lo = zero - 104.0f, hi = zero + 89.0f;
    x = FL_SELECT(vlt_f(x, lo), lo, x, fl_vf, fl_vfi);
    x = FL_SELECT(vgt_f(x, hi), hi, x, fl_vf, fl_vfi);
    fl_vf kd = x * 0x1.715476p0f + 0x1.8p23f;
    fl_vfi k = (fl_vfi)kd - 0x4B400000;
    kd -= 0x1.8p23f;
    fl_vf r, p;
    FL_EXP_POLY_F(x, kd, zero, r, p);
    fl_vfi k1 = (fl_vfi)((fl_vfu)(k + 256) >> 1) - 128;
    fl_vfi k2 = k - k1;
    fl_vf s1 = (fl_vf)((k1 + 127) << 23), s2 = (fl_vf)((k2 + 127) << 23);
    return p * s1 * s2;
}

/* Fixed-order (pairwise) sum of n (a power of two) doubles. */
FL_INLINE double fl_pairsum(double *a, int n)
{
    for (int w = n / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            a[j] += a[j + w];
    return a[0];
}

/*
 * Per-dtype helpers, named name_d / name_f so that the templates can call
 * FL(name).  VT is the element vector, acc_* accumulate in double (for
 * float32 the 16 lanes are widened into two 8-lane double vectors).
 */
/* the column-tile kernels hold FL_TILE_MAX / VL vectors per tile */
_Static_assert(FL_TILE_MAX % FL_VL_d == 0 && FL_TILE_MAX % FL_VL_f == 0,
               "FL_TILE_MAX must be a whole number of vectors");

FL_INLINE fl_vd vsplat_d(double s) { fl_vd z = {0}; return z + s; }
FL_INLINE fl_vf vsplat_f(float s) { fl_vf z = {0}; return z + s; }
FL_INLINE fl_vd vld_d(const double *p) { fl_vd v; memcpy(&v, p, sizeof v); return v; }
FL_INLINE fl_vf vld_f(const float *p) { fl_vf v; memcpy(&v, p, sizeof v); return v; }
FL_INLINE void vst_d(double *p, fl_vd v) { memcpy(p, &v, sizeof v); }
FL_INLINE void vst_f(float *p, fl_vf v) { memcpy(p, &v, sizeof v); }
/* the first cnt (< lanes) elements, the other lanes set to pad */
FL_INLINE fl_vd vldpad_d(const double *p, ptrdiff_t cnt, double pad)
{
    double t[FL_VL_d];
    for (int j = 0; j < FL_VL_d; j++) t[j] = j < cnt ? p[j] : pad;
    return vld_d(t);
}
FL_INLINE fl_vf vldpad_f(const float *p, ptrdiff_t cnt, float pad)
{
    float t[FL_VL_f];
    for (int j = 0; j < FL_VL_f; j++) t[j] = j < cnt ? p[j] : pad;
    return vld_f(t);
}
FL_INLINE void vstpart_d(double *p, fl_vd v, ptrdiff_t cnt) { memcpy(p, &v, cnt * sizeof(double)); }
FL_INLINE void vstpart_f(float *p, fl_vf v, ptrdiff_t cnt) { memcpy(p, &v, cnt * sizeof(float)); }
/* lanes [0, cnt) set: a window of a ramp of set then clear lanes (an
   integer comparison would be scalar at baseline: SSE2 has no 64-bit one) */
FL_INLINE fl_vdi vmask_d(ptrdiff_t cnt)
{
    static const int64_t ramp[16] = {-1, -1, -1, -1, -1, -1, -1, -1};
    fl_vdi m;
    cnt = cnt < 0 ? 0 : cnt > FL_VL_d ? FL_VL_d : cnt;
    memcpy(&m, ramp + 8 - cnt, sizeof m);
    return m;
}
FL_INLINE fl_vfi vmask_f(ptrdiff_t cnt)
{
    static const int32_t ramp[32] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                     -1, -1, -1, -1, -1, -1, -1, -1};
    fl_vfi m;
    cnt = cnt < 0 ? 0 : cnt > FL_VL_f ? FL_VL_f : cnt;
    memcpy(&m, ramp + 16 - cnt, sizeof m);
    return m;
}
FL_INLINE fl_vd vsel_d(fl_vdi m, fl_vd a, fl_vd b) { return FL_SELECT(m, a, b, fl_vd, fl_vdi); }
FL_INLINE fl_vf vsel_f(fl_vfi m, fl_vf a, fl_vf b) { return FL_SELECT(m, a, b, fl_vf, fl_vfi); }
/* NaN-ignoring lane-wise max: a > b ? a : b */
FL_INLINE fl_vd vmax_d(fl_vd a, fl_vd b) { return vsel_d(vgt_d(a, b), a, b); }
FL_INLINE fl_vf vmax_f(fl_vf a, fl_vf b) { return vsel_f(vgt_f(a, b), a, b); }
/* FL_FOLD_<lanes>(v, f): v = f(v with lane j swapped with lane j + w, v)
   for w = lanes / 2, ..., 1 (each swap exchanges the halves of every block
   of 2 w lanes), leaving the fold of all lanes in lane 0. */
#define FL_FOLD_2(v, f) v = f(FL_SHUFFLE(v, v, 1, 0), v)
#define FL_FOLD_4(v, f) do {                                                      \
        v = f(FL_SHUFFLE(v, v, 2, 3, 0, 1), v);                                   \
        v = f(FL_SHUFFLE(v, v, 1, 0, 3, 2), v);                                   \
    } while (0)
#define FL_FOLD_8(v, f) do {                                                      \
        v = f(FL_SHUFFLE(v, v, 4, 5, 6, 7, 0, 1, 2, 3), v);                       \
        v = f(FL_SHUFFLE(v, v, 2, 3, 0, 1, 6, 7, 4, 5), v);                       \
        v = f(FL_SHUFFLE(v, v, 1, 0, 3, 2, 5, 4, 7, 6), v);                       \
    } while (0)
#define FL_FOLD_16(v, f) do {                                                      \
        v = f(FL_SHUFFLE(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7), v);  \
        v = f(FL_SHUFFLE(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11), v);  \
        v = f(FL_SHUFFLE(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13), v);  \
        v = f(FL_SHUFFLE(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14), v);  \
    } while (0)
#if FL_VBYTES == 64
#define FL_FOLD_d FL_FOLD_8
#define FL_FOLD_f FL_FOLD_16
#elif FL_VBYTES == 32
#define FL_FOLD_d FL_FOLD_4
#define FL_FOLD_f FL_FOLD_8
#else
#define FL_FOLD_d FL_FOLD_2
#define FL_FOLD_f FL_FOLD_4
#endif
FL_INLINE fl_vd fl_vadd_d(fl_vd a, fl_vd b) { return a + b; }
/* the lanes' maximum, pairwise as acc_sum (a NaN lane loses every
   comparison), in registers (FL_FOLD) */
FL_INLINE double vhmax_d(fl_vd v)
{
    FL_FOLD_d(v, vmax_d);
    return v[0];
}
FL_INLINE float vhmax_f(fl_vf v)
{
    FL_FOLD_f(v, vmax_f);
    return v[0];
}

/* Load / store vector k of a tile row of w elements, padding (with 0) or
   truncating the last, partial one. */
FL_INLINE fl_vd tld_d(const double *row, ptrdiff_t k, ptrdiff_t w)
{
    ptrdiff_t c = k * FL_VL_d;
    return c + FL_VL_d <= w ? vld_d(row + c) : vldpad_d(row + c, w - c, 0);
}
FL_INLINE fl_vf tld_f(const float *row, ptrdiff_t k, ptrdiff_t w)
{
    ptrdiff_t c = k * FL_VL_f;
    return c + FL_VL_f <= w ? vld_f(row + c) : vldpad_f(row + c, w - c, 0);
}
FL_INLINE void tst_d(double *row, ptrdiff_t k, ptrdiff_t w, fl_vd v)
{
    ptrdiff_t c = k * FL_VL_d;
    if (c + FL_VL_d <= w) vst_d(row + c, v);
    else vstpart_d(row + c, v, w - c);
}
FL_INLINE void tst_f(float *row, ptrdiff_t k, ptrdiff_t w, fl_vf v)
{
    ptrdiff_t c = k * FL_VL_f;
    if (c + FL_VL_f <= w) vst_f(row + c, v);
    else vstpart_f(row + c, v, w - c);
}

/*
 * Column tiles: before working on row r of a tile, prefetch row r + pf of
 * each array the pass streams (pf = FL_PF_BYTES of tile ahead).  Rows of a
 * tile are ld elements apart, too far for the hardware prefetcher, which
 * otherwise restarts on every row segment (2x slower tiles measured).
 */
FL_INLINE ptrdiff_t fl_pf_rows(ptrdiff_t w, size_t itemsize)
{
    return FL_PF_BYTES / (ptrdiff_t)(w * itemsize + 64) + 1;
}
#define FL_TILE_PREFETCH(p, w, itemsize, write) do { \
        const char *fl_q_ = (const char *)(p); \
        for (size_t fl_o_ = 0; fl_o_ < (size_t)(w) * (itemsize); fl_o_ += 64) \
            __builtin_prefetch(fl_q_ + fl_o_, write, 3); \
    } while (0)

#define vexp_d fl_vexp_d
#define vexp_f fl_vexp_f

typedef fl_vd acc_t_d;
typedef struct { fl_vd lo, hi; } acc_t_f;

FL_INLINE acc_t_d acc_zero_d(void) { acc_t_d a = {0}; return a; }
FL_INLINE acc_t_f acc_zero_f(void) { acc_t_f a = {{0}, {0}}; return a; }
/* FL_VL_f doubles: a float vector converted whole */
typedef double fl_vd2 __attribute__((vector_size(2 * FL_VBYTES)));
/* the two fl_vd halves of an fl_vd2 (gcc 11's shuffle cannot narrow: the
   halves then go through memory) */
FL_INLINE void fl_halves(fl_vd2 w, fl_vd *lo, fl_vd *hi)
{
#if FL_HAVE_SHUFFLEVECTOR && FL_VBYTES == 64
    *lo = __builtin_shufflevector(w, w, 0, 1, 2, 3, 4, 5, 6, 7);
    *hi = __builtin_shufflevector(w, w, 8, 9, 10, 11, 12, 13, 14, 15);
#elif FL_HAVE_SHUFFLEVECTOR && FL_VBYTES == 32
    *lo = __builtin_shufflevector(w, w, 0, 1, 2, 3);
    *hi = __builtin_shufflevector(w, w, 4, 5, 6, 7);
#elif FL_HAVE_SHUFFLEVECTOR
    *lo = __builtin_shufflevector(w, w, 0, 1);
    *hi = __builtin_shufflevector(w, w, 2, 3);
#else
    memcpy(lo, &w, sizeof *lo);
    memcpy(hi, (const char *)&w + sizeof *lo, sizeof *hi);
#endif
}
FL_INLINE void fl_widen(fl_vf v, fl_vd *lo, fl_vd *hi)
{
#if !FL_HAVE_SHUFFLEVECTOR && FL_VBYTES == 32 && defined(__AVX__)
    /* gcc 11 at register width: its double vector of twice the width has no
       register and fl_halves goes through memory (float32 row ops 3-7x
       slower); the level's own conversions instead, the same values */
    __m256 f;
    memcpy(&f, &v, sizeof f);
    __m256d l = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
    __m256d h = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
    memcpy(lo, &l, sizeof l);
    memcpy(hi, &h, sizeof h);
#elif !FL_HAVE_SHUFFLEVECTOR && FL_VBYTES == 16 && defined(__SSE2__)
    __m128 f;
    memcpy(&f, &v, sizeof f);
    __m128d l = _mm_cvtps_pd(f), h = _mm_cvtps_pd(_mm_movehl_ps(f, f));
    memcpy(lo, &l, sizeof l);
    memcpy(hi, &h, sizeof h);
#elif !FL_HAVE_SHUFFLEVECTOR && FL_VBYTES == 16 && defined(__aarch64__)
    float32x4_t f;
    memcpy(&f, &v, sizeof f);
    float64x2_t l = vcvt_f64_f32(vget_low_f32(f)), h = vcvt_high_f64_f32(f);
    memcpy(lo, &l, sizeof l);
    memcpy(hi, &h, sizeof h);
#else
    /* the whole vector converted to one vector of doubles, then halved: on
       AVX-512 two vcvtps2pd ymm -> zmm and one extract.  Converting 8-float
       halves made gcc 12 split each conversion into 128-bit pieces (6 extra
       shuffles per vector), as did going through memory. */
    fl_halves(__builtin_convertvector(v, fl_vd2), lo, hi);
#endif
}
FL_INLINE void acc_add_d(acc_t_d *a, fl_vd v) { *a += v; }
FL_INLINE void acc_add_f(acc_t_f *a, fl_vf v)
{
    fl_vd lo, hi;
    fl_widen(v, &lo, &hi);
    a->lo += lo;
    a->hi += hi;
}
/* a += u * v with the product formed in double */
FL_INLINE void acc_addmul_d(acc_t_d *a, fl_vd u, fl_vd v) { *a += u * v; }
FL_INLINE void acc_addmul_f(acc_t_f *a, fl_vf u, fl_vf v)
{
    fl_vd ul, uh, vl, vh;
    fl_widen(u, &ul, &uh);
    fl_widen(v, &vl, &vh);
    a->lo += ul * vl;
    a->hi += uh * vh;
}
/* a = a * u + v, with u and v widened to double */
FL_INLINE void acc_muladd_d(acc_t_d *a, fl_vd u, fl_vd v) { *a = *a * u + v; }
FL_INLINE void acc_muladd_f(acc_t_f *a, fl_vf u, fl_vf v)
{
    fl_vd ul, uh, vl, vh;
    fl_widen(u, &ul, &uh);
    fl_widen(v, &vl, &vh);
    a->lo = a->lo * ul + vl;
    a->hi = a->hi * uh + vh;
}
/* is any lane of the mask set? */
FL_INLINE int vany_d(fl_vdi m)
{
    int64_t t[FL_VL_d], r = 0;
    memcpy(t, &m, sizeof m);
    for (int j = 0; j < FL_VL_d; j++) r |= t[j];
    return r != 0;
}
FL_INLINE int vany_f(fl_vfi m)
{
    int32_t t[FL_VL_f], r = 0;
    memcpy(t, &m, sizeof m);
    for (int j = 0; j < FL_VL_f; j++) r |= t[j];
    return r != 0;
}

/* the lanes' values, lane j = element j of a block */
FL_INLINE void acc_lanes_d(acc_t_d a, double *out) { memcpy(out, &a, sizeof a); }
FL_INLINE void acc_lanes_f(acc_t_f a, double *out)
{
    memcpy(out, &a.lo, sizeof a.lo);
    memcpy(out + FL_VL_d, &a.hi, sizeof a.hi);
}
/* The lanes' pairwise sum, fl_pairsum's order (lane j + lane j + w, w =
   FL_VL_d / 2, ..., 1; float32's lanes first fold hi onto lo) in registers.  Through a
   stack array, as fl_pairsum, gcc 11 at -O3 -march=x86-64-v3 gave some rows
   of cdist_backward a stale array's sum (its post-reload load elimination:
   right with -fno-gcse-after-reload or -O2). */
FL_INLINE double acc_sum_d(acc_t_d a)
{
    FL_FOLD_d(a, fl_vadd_d);
    return a[0];
}
FL_INLINE double acc_sum_f(acc_t_f a)
{
    return acc_sum_d(a.lo + a.hi);
}

/* numpy's sign: -1, 0, +1, and nan for nan. */
FL_INLINE double fl_sign(double v) { return v != v ? v : (double)((v > 0) - (v < 0)); }

#endif /* FL_COMMON_H */
