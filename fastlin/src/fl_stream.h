/*
 * fl_stream.h -- writing large outputs with non-temporal stores.
 *
 * A kernel whose output is far larger than the caches and will not be read
 * back soon (a 134 MB cdist) pays for each output line twice with ordinary
 * stores: the read-for-ownership, then the write-back.  Non-temporal stores
 * write whole lines without reading them.  Not a rule for every output: an
 * array written row after row right after the kernel cleared its fresh pages
 * (max_margin_loss_backward's gneg) finds those lines in cache, and there
 * streaming stores measured slower (1.35x), so that kernel does not use them.
 */
#ifndef FL_STREAM_H
#define FL_STREAM_H
#include "fl_common.h"
#if defined(__SSE2__)
#include <emmintrin.h>   /* SSE2 (baseline x86-64): non-temporal stores */
#endif

/* dst[0..n) := src[0..n).  stream: non-temporal stores from the first
   aligned address on: a large output then skips the read-for-ownership of
   each line (every line is written whole), up to half the memory traffic of
   a write-bound cdist.  64-byte stores where the CPU has AVX-512 (one store
   per line; the SSE2 16-byte loop costs 4x the instructions, which showed in
   profiles), else 16-byte SSE2 stores (baseline x86-64: every clone has
   them), unrolled to a line per iteration.  The caller fences
   (fl_stream_fence) before the output is handed on. */
#if defined(__x86_64__) && defined(__SSE2__) && defined(__GNUC__) && !defined(FL_NO_CLONES)
#include <immintrin.h>
#define FL_HAVE_AVX512_TARGET 1
__attribute__((target("avx512f"))) static void
fl_stream512_d(double *FL_RESTRICT dst, const double *FL_RESTRICT src, ptrdiff_t n)
{
    ptrdiff_t j = 0;
    for (; j < n && ((uintptr_t)(dst + j) & 63); j++) dst[j] = src[j];
    for (; j + 8 <= n; j += 8) _mm512_stream_pd(dst + j, _mm512_loadu_pd(src + j));
    for (; j < n; j++) dst[j] = src[j];
}
__attribute__((target("avx512f"))) static void
fl_stream512_f(float *FL_RESTRICT dst, const float *FL_RESTRICT src, ptrdiff_t n)
{
    ptrdiff_t j = 0;
    for (; j < n && ((uintptr_t)(dst + j) & 63); j++) dst[j] = src[j];
    for (; j + 16 <= n; j += 16) _mm512_stream_ps(dst + j, _mm512_loadu_ps(src + j));
    for (; j < n; j++) dst[j] = src[j];
}
#endif

static inline void fl_store_row_d(double *FL_RESTRICT dst, const double *FL_RESTRICT src,
                                  ptrdiff_t n, int stream)
{
    ptrdiff_t j = 0;
#if defined(__SSE2__)
    if (stream) {
#ifdef FL_HAVE_AVX512_TARGET
        if (__builtin_cpu_supports("avx512f")) {
            fl_stream512_d(dst, src, n);
            return;
        }
#endif
        for (; j < n && ((uintptr_t)(dst + j) & 15); j++) dst[j] = src[j];
        for (; j + 8 <= n; j += 8) {
            _mm_stream_pd(dst + j, _mm_loadu_pd(src + j));
            _mm_stream_pd(dst + j + 2, _mm_loadu_pd(src + j + 2));
            _mm_stream_pd(dst + j + 4, _mm_loadu_pd(src + j + 4));
            _mm_stream_pd(dst + j + 6, _mm_loadu_pd(src + j + 6));
        }
    }
#endif
    memcpy(dst + j, src + j, (size_t)(n - j) * sizeof(double));
}

static inline void fl_store_row_f(float *FL_RESTRICT dst, const float *FL_RESTRICT src,
                                  ptrdiff_t n, int stream)
{
    ptrdiff_t j = 0;
#if defined(__SSE2__)
    if (stream) {
#ifdef FL_HAVE_AVX512_TARGET
        if (__builtin_cpu_supports("avx512f")) {
            fl_stream512_f(dst, src, n);
            return;
        }
#endif
        for (; j < n && ((uintptr_t)(dst + j) & 15); j++) dst[j] = src[j];
        for (; j + 16 <= n; j += 16) {
            _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
            _mm_stream_ps(dst + j + 4, _mm_loadu_ps(src + j + 4));
            _mm_stream_ps(dst + j + 8, _mm_loadu_ps(src + j + 8));
            _mm_stream_ps(dst + j + 12, _mm_loadu_ps(src + j + 12));
        }
    }
#endif
    memcpy(dst + j, src + j, (size_t)(n - j) * sizeof(float));
}

/* Orders the non-temporal stores of this thread before what follows. */
static inline void fl_stream_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

#endif
