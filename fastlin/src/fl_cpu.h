/*
 * fl_cpu.h -- what the CPU and the operating system let fastlin run, read
 * with cpuid and xgetbv (no compiler runtime: __builtin_cpu_supports needs
 * libgcc's or compiler-rt's model, which clang-cl and musl builds may lack).
 *
 * A level is usable when the CPU has every instruction set its build may
 * use (the compiler emits any of -march=x86-64-v3's or -v4's extensions,
 * not only the vector ones) and the OS saves the wide registers across
 * context switches (XCR0's YMM bits for avx2, its opmask/ZMM bits too for
 * avx512).  Compiled for the baseline only: this runs before any level is
 * chosen.
 */
#ifndef FL_CPU_H
#define FL_CPU_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)

/* cpuid and xgetbv as inline assembly, which gcc, clang and clang-cl all
   take: <cpuid.h> and <intrin.h> each declare a __cpuid of their own, and
   clang-cl may see both. */
static void fl_cpuid_raw(unsigned leaf, unsigned sub, unsigned r[4])
{
    unsigned a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
    r[0] = a;
    r[1] = b;
    r[2] = c;
    r[3] = d;
}

/* leaf `leaf` (zeros when the CPU does not have it) */
static void fl_cpuid(unsigned leaf, unsigned sub, unsigned r[4])
{
    unsigned top[4];
    fl_cpuid_raw(leaf & 0x80000000u, 0, top);   /* the highest leaf of its range */
    if (top[0] < leaf) {
        r[0] = r[1] = r[2] = r[3] = 0;
        return;
    }
    fl_cpuid_raw(leaf, sub, r);
}

static uint64_t fl_xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0)); /* xgetbv */
    return ((uint64_t)hi << 32) | lo;
}

#define FL_BIT(r, b) (((r) >> (b)) & 1u)

/* The features a level needs that this CPU / OS lacks, as a comma-separated
   list written into buf (empty when the level is usable). */
static void fl_cpu_missing(int level512, char *buf, size_t cap)
{
    unsigned l1[4], l7[4], e1[4];
    const char *miss[24];
    int n = 0;
    fl_cpuid(1, 0, l1);
    fl_cpuid(7, 0, l7);
    fl_cpuid(0x80000001u, 0, e1);
    unsigned ecx = l1[2], ebx7 = l7[1], ecx_e = e1[2];
    uint64_t xcr0 = FL_BIT(ecx, 27) ? fl_xgetbv0() : 0;   /* OSXSAVE */
    /* x86-64-v2 */
    if (!FL_BIT(ecx, 0)) miss[n++] = "sse3";
    if (!FL_BIT(ecx, 9)) miss[n++] = "ssse3";
    if (!FL_BIT(ecx, 13)) miss[n++] = "cx16";
    if (!FL_BIT(ecx, 19)) miss[n++] = "sse4.1";
    if (!FL_BIT(ecx, 20)) miss[n++] = "sse4.2";
    if (!FL_BIT(ecx, 23)) miss[n++] = "popcnt";
    if (!FL_BIT(ecx_e, 0)) miss[n++] = "lahf_lm";
    /* x86-64-v3 */
    if (!FL_BIT(ecx, 12)) miss[n++] = "fma";
    if (!FL_BIT(ecx, 22)) miss[n++] = "movbe";
    if (!FL_BIT(ecx, 28)) miss[n++] = "avx";
    if (!FL_BIT(ecx, 29)) miss[n++] = "f16c";
    if (!FL_BIT(ebx7, 3)) miss[n++] = "bmi1";
    if (!FL_BIT(ebx7, 5)) miss[n++] = "avx2";
    if (!FL_BIT(ebx7, 8)) miss[n++] = "bmi2";
    if (!FL_BIT(ecx_e, 5)) miss[n++] = "lzcnt";
    if ((xcr0 & 0x6) != 0x6) miss[n++] = "OS support of the AVX (YMM) state";
    if (level512) {
        if (!FL_BIT(ebx7, 16)) miss[n++] = "avx512f";
        if (!FL_BIT(ebx7, 17)) miss[n++] = "avx512dq";
        if (!FL_BIT(ebx7, 28)) miss[n++] = "avx512cd";
        if (!FL_BIT(ebx7, 30)) miss[n++] = "avx512bw";
        if (!FL_BIT(ebx7, 31)) miss[n++] = "avx512vl";
        if ((xcr0 & 0xe6) != 0xe6) miss[n++] = "OS support of the AVX-512 (ZMM) state";
    }
    buf[0] = '\0';
    for (int i = 0; i < n; i++) {
        size_t used = strlen(buf), add = strlen(miss[i]) + (i ? 2 : 0);
        if (used + add + 1 > cap) break;
        if (i) strcat(buf, ", ");
        strcat(buf, miss[i]);
    }
}

static int fl_cpu_is_x86(void) { return 1; }

#else  /* not x86-64: the baseline (on aarch64, NEON) is all there is */

static void fl_cpu_missing(int level512, char *buf, size_t cap)
{
    const char *need = "an x86-64 CPU";
    (void)level512;
    if (cap > strlen(need)) strcpy(buf, need);
    else if (cap) buf[0] = '\0';
}

static int fl_cpu_is_x86(void) { return 0; }

#endif

#endif /* FL_CPU_H */
