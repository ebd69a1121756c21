"""The SIMD level: fastlin's one dispatch seam, chosen once, at import.

setup.py builds every kernel module (``_softmax``, ``_normalize``,
``_distance``, ``_margin``, ``_mahalanobis``) once per SIMD level, each with
that level's compiler flags, into the subpackage ``fastlin._<level>``:

=========  ================================================================
avx512     x86-64-v4 (AVX-512 F/CD/BW/DQ/VL): 64-byte vectors in zmm, the
           AVX-512 distance epilogues and streaming stores, fastlin's GEMM
avx2       x86-64-v3 (AVX2, FMA, BMI1/2, ...): ymm vectors (clang: ymm pairs), BLAS
baseline   the architecture's baseline (x86-64: SSE2; aarch64: NEON)
=========  ================================================================

At import the best level the CPU and the OS can run is picked (read with
cpuid and xgetbv, ``_cpu``), unless the environment variable
``FASTLIN_SIMD`` names one; a level this machine cannot run, or one the
build does not have, is refused with a ``RuntimeError`` saying why -- never
an illegal instruction.  Every public function goes through ``kernels()``,
so a forced level runs exactly the code a CPU of that level runs.  No ifunc
(which musl, macOS and Windows lack), no CPU test inside the kernels.

Results differ between levels only within the documented accuracy bounds
(where an FMA contracts a product differs; under gcc the vector width, and
so the lane order of the sums, is the level's own); at any one level they
are bitwise the same for every thread count.
"""
import importlib
import importlib.util
import os

from . import _cpu

#: every level fastlin knows, best first
LEVELS = ("avx512", "avx2", "baseline")
ENV = "FASTLIN_SIMD"
# every level's build holds every kernel module: one tells whether it exists
_PROBE = "_softmax"


def _why_not(level):
    """'' if this process can run `level`, else the reason it cannot."""
    try:
        spec = importlib.util.find_spec(f"fastlin._{level}.{_PROBE}")
    except ImportError:     # the level's folder itself is missing
        spec = None
    if spec is None:
        if level != "baseline" and not _cpu.is_x86():
            return "x86-64 only"
        return "not in this build (see show_config's compiler line)"
    missing = _cpu.missing(level)
    return f"the CPU or OS lacks {missing}" if missing else ""


def _choose():
    why = {level: _why_not(level) for level in LEVELS}
    usable = [level for level in LEVELS if not why[level]]
    raw = os.environ.get(ENV, "")
    forced = raw.strip().lower()
    if forced:
        if forced not in LEVELS:
            raise RuntimeError(f"{ENV} must be one of {', '.join(LEVELS)}, got {raw!r}")
        if why[forced]:
            raise RuntimeError(
                f"{ENV}={forced} cannot run on this machine: {why[forced]}; the levels it "
                f"can run are {', '.join(usable) or 'none'} (unset {ENV} to pick the best)")
        return forced, True, why
    if not usable:
        raise ImportError("fastlin's kernel modules are missing (no fastlin._<level> package "
                          "holds them); reinstall fastlin")
    return usable[0], False, why


LEVEL, FORCED, WHY = _choose()
#: the levels this machine can run, best first
AVAILABLE = tuple(level for level in LEVELS if not WHY[level])


def kernels(name):
    """The kernel module `name` (e.g. ``"_softmax"``) of the chosen level."""
    return importlib.import_module(f"fastlin._{LEVEL}.{name}")
