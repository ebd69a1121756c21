/*
 * fl_common.h -- shared pieces of fastlin's C inner loops.
 *
 * Why C and not Cython for the innermost loops: Cython emits no `omp simd`
 * and its scalar reductions do not vectorize.  The loops below are written
 * with fixed-width lane accumulators (FL_L lanes) so that gcc's SLP vectorizer
 * turns them into SIMD code *and* so that the summation order is fixed by the
 * source, not by the vector width: the avx512, avx2 and baseline clones all
 * add in the same order.
 *
 * Runtime dispatch: the per-row / per-tile entry points carry FL_CLONES, which
 * expands to gcc's target_clones (x86-64-v4 = AVX-512, x86-64-v3 = AVX2+FMA,
 * baseline).  A default build therefore runs on any x86-64 machine and still
 * uses the wide units where they exist.  setup.py defines FL_NO_CLONES when
 * the compiler cannot do this.
 *
 * Never -ffast-math: it would flush subnormals for the whole process and
 * break NaN/inf semantics.  The exp below is plain arithmetic, so it
 * vectorizes without it.
 */
#ifndef FL_COMMON_H
#define FL_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>

#if !defined(FL_NO_CLONES) && defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define FL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FL_CLONES
#endif

#if defined(__GNUC__)
#define FL_INLINE static inline __attribute__((always_inline))
#define FL_RESTRICT __restrict__
#else
#define FL_INLINE static inline
#define FL_RESTRICT
#endif

#define FL_L 16           /* lanes of every reduction: fixes the summation order */
#define FL_TILE_MAX 512   /* widest column tile (elements) a kernel accepts */

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
    double r = x - kd * 0x1.62e42fee00000p-1;
    r = r - kd * 0x1.a39ef35793c76p-33;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
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
    float r = x - kd * 0x1.62e4p-1f;
    r = r - kd * 0x1.7f7d1cp-20f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t k1 = (int32_t)((uint32_t)(k + 256) >> 1) - 128;
    int32_t k2 = k - k1;
    uint32_t b1 = (uint32_t)(k1 + 127) << 23, b2 = (uint32_t)(k2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, 4);
    memcpy(&s2, &b2, 4);
    return p * s1 * s2;
}

/* Fixed-order (pairwise) combination of the FL_L lane accumulators. */
FL_INLINE double fl_hsum(double *acc)
{
    for (int w = FL_L / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            acc[j] += acc[j + w];
    return acc[0];
}

/* numpy's sign: -1, 0, +1, and nan for nan. */
FL_INLINE double fl_sign(double v) { return v != v ? v : (double)((v > 0) - (v < 0)); }

#endif /* FL_COMMON_H */
