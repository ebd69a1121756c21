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

/* dst[0..n) := src[0..n) for n bytes (whole elements: dst is element-
   aligned, so every alignment boundary falls between elements).  stream:
   non-temporal stores from the first aligned address on: a large output
   then skips the read-for-ownership of each line (every line is written
   whole), up to half the memory traffic of a write-bound cdist.  64-byte
   stores where the CPU has AVX-512 (one store per line; the SSE2 16-byte
   loop costs 4x the instructions, which showed in profiles), 32-byte ones
   at avx2, else 16-byte SSE2 stores (baseline x86-64: every level has
   them), a whole line per iteration.  The caller fences (fl_stream_fence) before the output is
   handed on. */
#if FL_AVX512
static size_t
fl_stream512(char *FL_RESTRICT dst, const char *FL_RESTRICT src, size_t n)
{
    size_t j = (size_t)(-(uintptr_t)dst & 63);
    if (j > n) j = n;
    memcpy(dst, src, j);
    for (; j + 64 <= n; j += 64)
        _mm512_stream_si512((void *)(dst + j), _mm512_loadu_si512((const void *)(src + j)));
    return j;
}
#endif

static inline void fl_store_bytes(char *FL_RESTRICT dst, const char *FL_RESTRICT src,
                                  size_t n, int stream)
{
    size_t j = 0;
#if defined(__SSE2__)
    if (stream) {
#if FL_AVX512
        j = fl_stream512(dst, src, n);
#else
        /* from the first 64-byte boundary, as fl_stream512: a line written
           in pieces by non-temporal stores that start mid-line is flushed
           from the write-combining buffer half filled, and stalls the
           stores after it (a pdist row starts anywhere in a line: pdist
           of (8192, 64) float32 took 1.5x as long at avx2 with 16-byte
           alignment, 1.15x at baseline) */
        j = (size_t)(-(uintptr_t)dst & 63);
        if (j > n) j = n;
        memcpy(dst, src, j);
#if defined(__AVX__)
        for (; j + 64 <= n; j += 64)
            for (int q = 0; q < 64; q += 32)
                _mm256_stream_si256((__m256i *)(dst + j + q),
                                    _mm256_loadu_si256((const __m256i *)(src + j + q)));
#else
        for (; j + 64 <= n; j += 64)
            for (int q = 0; q < 64; q += 16)
                _mm_stream_si128((__m128i *)(dst + j + q),
                                 _mm_loadu_si128((const __m128i *)(src + j + q)));
#endif
#endif
    }
#endif
    memcpy(dst + j, src + j, n - j);
}

static inline void fl_store_row_d(double *FL_RESTRICT dst, const double *FL_RESTRICT src,
                                  ptrdiff_t n, int stream)
{
    fl_store_bytes((char *)dst, (const char *)src, (size_t)n * sizeof(double), stream);
}

static inline void fl_store_row_f(float *FL_RESTRICT dst, const float *FL_RESTRICT src,
                                  ptrdiff_t n, int stream)
{
    fl_store_bytes((char *)dst, (const char *)src, (size_t)n * sizeof(float), stream);
}

/* Orders the non-temporal stores of this thread before what follows. */
static inline void fl_stream_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

#endif
