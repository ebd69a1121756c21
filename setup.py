"""Build fastlin's Cython/OpenMP extensions.

The build degrades gracefully and says so:

* OpenMP is probed by compiling and linking (never running: cross-builds
  work) a tiny program.  Without it the kernels build single-threaded
  (``prange`` becomes a plain loop) and a warning is printed.
  ``FASTLIN_NO_OPENMP=1`` skips OpenMP on purpose, ``FASTLIN_REQUIRE_OPENMP=1``
  makes its absence an error (release builds);
  ``FASTLIN_OPENMP_CFLAGS`` / ``FASTLIN_OPENMP_LDFLAGS`` replace the flags
  (macOS: ``-Xpreprocessor -fopenmp`` and ``-lomp`` with libomp's paths).
* SIMD dispatch: each kernel module is built once per SIMD level, with that
  level's flags, into ``fastlin._<level>`` (x86-64: avx512 =
  ``-march=x86-64-v4``, avx2 = ``-march=x86-64-v3``, baseline; other
  architectures: baseline only).  ``fastlin._simd`` picks one at import.  A
  level the compiler cannot target is left out, with a warning;
  ``FASTLIN_SIMD_LEVELS=avx2,baseline`` builds only those.
* Compilers: gcc >= 11 or clang >= 14 (Apple clang >= 14; clang-cl on
  Windows, selected with ``CC=clang-cl``).  MSVC's ``cl`` and older
  compilers are refused up front with a message saying so.  Below AVX-512
  gcc builds the kernels with the level's own vector width (clang with
  64-byte vectors everywhere): src/fl_common.h, the vector layer.
* Default flags are portable (``-O3``, never ``-ffast-math``, never
  ``-march=native``).  ``-fno-math-errno`` only lets ``sqrt`` vectorize
  (errno is never read); it changes no floating-point result.  No debug
  information (``-g0``) unless ``FASTLIN_DEBUG=1``.

What was decided is written to ``fastlin/_build_config.py`` and reported by
``fastlin.show_config()``.
"""
import glob
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# built once, for the baseline
BASE_EXTENSIONS = ["_openmp_helpers", "_memory", "_cpu"]
# built once per SIMD level, into fastlin._<level> (fastlin/_simd.py)
KERNEL_EXTENSIONS = ["_softmax", "_normalize", "_distance", "_margin", "_mahalanobis"]
LEVELS = ("avx512", "avx2", "baseline")   # as fastlin/_simd.py's LEVELS

OPENMP_TEST = textwrap.dedent("""
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
""")

# the compiler check of fl_common.h (gcc >= 11, clang >= 14), made once up
# front so that an old compiler gets one message, not one per file
COMPILER_TEST = '#include "fl_common.h"\nint main(void) { return 0; }\n'

# a level is built only if the compiler (and its assembler) take its flags
# and its instructions
LEVEL_TESTS = {
    "avx512": '#include <immintrin.h>\n'
              'int main(void) { __m512d v = _mm512_set1_pd(1.0); '
              'return (int)_mm512_reduce_add_pd(_mm512_mul_pd(v, v)) - 8; }\n',
    "avx2": '#include <immintrin.h>\n'
            'int main(void) { __m256d v = _mm256_set1_pd(1.0); '
            'v = _mm256_fmadd_pd(v, v, v); return (int)v[0] - 2; }\n',
}


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _try_compile(compiler, source, extra_compile, extra_link, include_dirs=(), link=True):
    """(ok, output): whether `source` compiles (and links) with the given
    flags, and what the compiler printed.  Nothing is run, so a cross-build
    probes the target's toolchain, not the build machine."""
    tmp = tempfile.mkdtemp(prefix="fastlin-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        log = os.path.join(tmp, "log")
        # capture what the compiler says through the file descriptors
        saved = os.dup(1), os.dup(2)
        with open(log, "w") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            try:
                objs = compiler.compile([src], output_dir=tmp, include_dirs=list(include_dirs),
                                        extra_postargs=extra_compile)
                if link:
                    compiler.link_executable(objs, "probe", output_dir=tmp,
                                             extra_postargs=extra_link)
                ok = True
            except Exception:
                ok = False
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
        with open(log) as f:
            return ok, f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _target_is_x86_64():
    """Whether the extensions are built for x86-64 (cross-builds and macOS's
    ARCHFLAGS included)."""
    forced = os.environ.get("FASTLIN_TARGET_ARCH", "").strip().lower()
    if forced:
        return forced in ("x86_64", "amd64", "x64")
    archflags = os.environ.get("ARCHFLAGS", "")
    if sys.platform == "darwin" and archflags:
        arches = re.findall(r"-arch\s+(\S+)", archflags)
        return arches == ["x86_64"]
    plat = sysconfig.get_platform().lower()
    return plat.endswith(("x86_64", "amd64")) or plat == "win-amd64"


def _target_machine():
    """The target's machine name (a cross-build's, not the build machine's:
    platform.machine() would say x86_64 for an aarch64 cross-build)."""
    forced = os.environ.get("FASTLIN_TARGET_ARCH", "").strip().lower()
    return forced or sysconfig.get_platform().rsplit("-", 1)[-1]


def _compiler_name(compiler):
    """'gcc', 'clang', 'clang-cl' or 'msvc' (cl.exe)."""
    if compiler.compiler_type == "msvc":
        return "clang-cl" if "clang" in os.path.basename(getattr(compiler, "cc", "") or "") else "msvc"
    cc = " ".join(getattr(compiler, "compiler_so", []) or [])
    try:
        out = subprocess.run(shlex.split(cc)[:1] + ["--version"], capture_output=True,
                             text=True).stdout.lower()
    except Exception:
        out = ""
    return "clang" if "clang" in out else "gcc"


def _openmp_candidates(msvc_like):
    """(compile flags, link flags) to try for OpenMP, in order."""
    if "FASTLIN_OPENMP_CFLAGS" in os.environ or "FASTLIN_OPENMP_LDFLAGS" in os.environ:
        return [(shlex.split(os.environ.get("FASTLIN_OPENMP_CFLAGS", "")),
                 shlex.split(os.environ.get("FASTLIN_OPENMP_LDFLAGS", "")))]
    if msvc_like:
        # clang-cl's objects ask for libomp.lib, which LLVM keeps in its lib/
        clang = shutil.which(os.environ.get("CC", "clang-cl")) or ""
        lib = os.path.join(os.path.dirname(os.path.dirname(clang)), "lib")
        return [(["/openmp"], [f"/LIBPATH:{lib}"] if os.path.isdir(lib) else [])]
    found = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        # Apple clang has no -fopenmp driver flag: the frontend's, and
        # Homebrew's libomp (arm64 and x86_64 prefixes)
        for prefix in (os.environ.get("LIBOMP_PREFIX", ""), "/opt/homebrew/opt/libomp",
                       "/usr/local/opt/libomp"):
            if prefix and os.path.isdir(prefix):
                found.append((["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"],
                              [f"-L{prefix}/lib", "-lomp", f"-Wl,-rpath,{prefix}/lib"]))
    return found


class BuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        # run() clears inplace while it builds (then copies into the checkout)
        self.fl_into_checkout = bool(self.inplace)
        # 15 extension modules (5 kernel modules x 3 levels): build them in
        # parallel unless told otherwise (pip passes no -j)
        if self.parallel is None:
            jobs = os.environ.get("FASTLIN_BUILD_JOBS", "").strip()
            self.parallel = int(jobs) if jobs else (os.cpu_count() or 1)

    def _use_clang_cl(self):
        """On Windows, CC=clang-cl swaps cl.exe for clang-cl in setuptools'
        MSVC compiler class (the flags are MSVC's, which clang-cl takes)."""
        cc = os.environ.get("CC", "")
        if self.compiler.compiler_type != "msvc" or "clang-cl" not in cc:
            return
        if not getattr(self.compiler, "initialized", False):
            self.compiler.initialize()
        self.compiler.cc = shutil.which(cc) or cc
        # MSVC's whole-program optimisation: objects clang-cl cannot emit
        # and link.exe would then expect
        for attr in ("compile_options", "compile_options_debug"):
            opts = getattr(self.compiler, attr, None)
            if isinstance(opts, list):
                opts[:] = [o for o in opts if o != "/GL"]
        for flags in (getattr(self.compiler, "_ldflags", None) or {}).values():
            if isinstance(flags, list):
                flags[:] = [f for f in flags if f.upper() != "/LTCG"]

    def build_extensions(self):
        self._use_clang_cl()
        name = _compiler_name(self.compiler)
        if name == "msvc":
            sys.exit("fastlin cannot be built with MSVC's cl: its kernels use GCC/Clang vector "
                     "extensions.  Install LLVM for Windows and build with clang-cl "
                     "(set CC=clang-cl).")
        msvc_like = name == "clang-cl"
        if msvc_like:
            # clang-cl takes clang's own flags through /clang:
            compile_args = ["/O2", "/clang:-O3", "/clang:-fno-strict-aliasing",
                            "/clang:-fno-math-errno"]
            march = "/clang:-march="
        else:
            compile_args = ["-O3", "-fno-strict-aliasing", "-fno-math-errno"]
            # 64-byte vectors passed between the always-inlined helpers below
            # AVX-512: the compilers note an ABI change that never applies
            compile_args.append("-Wno-psabi")
            if not _env_flag("FASTLIN_DEBUG"):
                compile_args.append("-g0")
            march = "-march="
            # setuptools lets a user's CFLAGS replace Python's own instead of
            # adding to them: keep the two that change what the code means
            have = set(getattr(self.compiler, "compiler_so", []) or [])
            compile_args += [f for f in ("-DNDEBUG", "-fwrapv") if f not in have]
        link_args = []
        src_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastlin", "src")

        ok, log = _try_compile(self.compiler, COMPILER_TEST, compile_args, [], [src_dir],
                               link=False)
        if not ok:
            errors = [line for line in log.splitlines() if "error" in line] or log.splitlines()
            sys.exit("fastlin: this C compiler cannot build fastlin (it needs gcc >= 11 or "
                     "clang >= 14):\n  " + "\n  ".join(errors[:5]))

        openmp = False
        if _env_flag("FASTLIN_NO_OPENMP"):
            print("fastlin: FASTLIN_NO_OPENMP set: building without OpenMP (single-threaded)")
        else:
            tried = []
            for omp_c, omp_l in _openmp_candidates(msvc_like):
                tried.append(" ".join(omp_c + omp_l))
                openmp, _ = _try_compile(self.compiler, OPENMP_TEST, compile_args + omp_c, omp_l)
                if openmp:
                    compile_args += omp_c
                    link_args += omp_l
                    break
            else:
                if _env_flag("FASTLIN_REQUIRE_OPENMP"):
                    sys.exit("fastlin: FASTLIN_REQUIRE_OPENMP is set and the C compiler "
                             f"does not support OpenMP (tried: {'; '.join(tried)})")
                self.warn(
                    "\n" + "*" * 72 + "\n"
                    "fastlin: the C compiler does not support OpenMP (tried: "
                    f"{'; '.join(tried)}).\n"
                    "Building single-threaded kernels: results are identical,\n"
                    "but set_num_threads() will have no effect.  On macOS: brew install\n"
                    "libomp, or set FASTLIN_OPENMP_CFLAGS / FASTLIN_OPENMP_LDFLAGS.\n"
                    + "*" * 72)

        wanted = os.environ.get("FASTLIN_SIMD_LEVELS", "")
        wanted = [w.strip().lower() for w in wanted.split(",") if w.strip()] or list(LEVELS)
        unknown = sorted(set(wanted) - set(LEVELS))
        if unknown:
            sys.exit(f"fastlin: FASTLIN_SIMD_LEVELS names unknown levels {unknown}; "
                     f"known: {', '.join(LEVELS)}")
        x86 = _target_is_x86_64()
        level_flags = {"baseline": []}
        if x86:
            level_flags["avx2"] = [march + "x86-64-v3"]
            level_flags["avx512"] = [march + "x86-64-v4"]
        levels = []
        for level in LEVELS:
            if level not in wanted:
                continue
            if level not in level_flags:
                print(f"fastlin: SIMD level {level} is x86-64 only: not built for this target")
                continue
            if level != "baseline":
                ok, _ = _try_compile(self.compiler, LEVEL_TESTS[level],
                                     compile_args + level_flags[level], [], link=False)
                if not ok:
                    self.warn(f"fastlin: the compiler cannot target {level} "
                              f"({' '.join(level_flags[level])}): that level is not built")
                    continue
            levels.append(level)
        if "baseline" not in levels:
            sys.exit("fastlin: the baseline level must be built (FASTLIN_SIMD_LEVELS)")
        print(f"fastlin: SIMD levels built: {', '.join(levels)}")

        kept = []
        for ext in self.extensions:
            level = getattr(ext, "fl_level", None)
            if level is not None and level not in levels:
                continue
            ext.extra_compile_args = (list(ext.extra_compile_args or []) + compile_args
                                      + level_flags.get(level or "baseline", []))
            ext.extra_link_args = list(ext.extra_link_args or []) + link_args
            kept.append(ext)
        self.extensions[:] = kept

        cflags = " ".join(filter(None, [sysconfig.get_config_var("CFLAGS") or "",
                                        os.environ.get("CFLAGS", ""), *compile_args]))
        config = textwrap.dedent(f"""\
            # Generated by setup.py at build time; not tracked by git.
            OPENMP = {openmp!r}
            SIMD_LEVELS = {tuple(levels)!r}
            LEVEL_FLAGS = {{{", ".join(f"{k!r}: {' '.join(v)!r}" for k, v in level_flags.items() if k in levels)}}}
            COMPILER = {name!r}
            COMPILER_COMMAND = {" ".join(getattr(self.compiler, "compiler_so", []) or [getattr(self.compiler, "cc", name)])!r}
            CFLAGS = {cflags!r}
            TARGET = {platform.system() + " " + ("x86_64" if x86 else _target_machine())!r}
        """)
        # build_lib feeds the wheel; the source copy serves in-place and
        # editable builds (setuptools copies only the .so files there), and
        # only those: a wheel or sdist build leaves the checkout as it was.
        targets = [os.path.join(self.build_lib, "fastlin")]
        if self.fl_into_checkout:
            targets.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastlin"))
        for d in targets:
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "_build_config.py"), "w") as f:
                f.write(config)
            # the levels' folders (namespace packages: nothing in them but
            # the extension modules), which an in-place build copies into
            for level in levels:
                os.makedirs(os.path.join(d, f"_{level}"), exist_ok=True)
        super().build_extensions()


def extensions():
    from Cython.Build import cythonize

    directives = {
        "language_level": 3,
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
        "embedsignature": True,
    }
    # the C inner loops live in headers: list them so that editing one
    # rebuilds the extensions
    headers = sorted(glob.glob("fastlin/src/*.h")) + sorted(glob.glob("fastlin/*.pxd"))

    def ext(module, name):
        return Extension(module, [f"fastlin/{name}.pyx"], include_dirs=["fastlin/src"],
                         depends=headers)

    exts = cythonize([ext(f"fastlin.{name}", name) for name in BASE_EXTENSIONS],
                     compiler_directives=directives)
    for level in LEVELS:
        # one Cython translation per level (the module's name is in its C),
        # each in its own folder under build/
        built = cythonize([ext(f"fastlin._{level}.{name}", name) for name in KERNEL_EXTENSIONS],
                          compiler_directives=directives,
                          build_dir=os.path.join("build", f"cython-{level}"))
        for e in built:
            e.fl_level = level
        exts += built
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
