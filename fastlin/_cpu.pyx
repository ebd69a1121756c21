"""What this machine lets each SIMD level run (src/fl_cpu.h: cpuid and xgetbv).

Built for the baseline only: it runs before a level is chosen.
"""

cdef extern from "fl_cpu.h":
    void fl_cpu_missing(int level512, char *buf, size_t cap)
    int fl_cpu_is_x86()


def is_x86():
    """True on an x86-64 CPU (the levels avx2 and avx512 exist only there)."""
    return bool(fl_cpu_is_x86())


def missing(str level):
    """The features `level` needs that this CPU or OS lacks, comma-separated
    ('' when the level can run)."""
    cdef char buf[512]
    if level == "baseline":
        return ""
    fl_cpu_missing(level == "avx512", buf, sizeof(buf))
    return buf.decode("ascii")
