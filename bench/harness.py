"""Timing helper, machine header, table and JSON output of the benchmark suite.

Nothing here knows about fastlin's ops: :mod:`bench.workloads` says what to
time, :mod:`bench.run` says in which order; this module times a callable and
prints what came out.
"""
import gc
import io
import json
import math
import os
import platform
import statistics
import sys
import time

__all__ = ["Timing", "time_call", "ratio", "fmt_ms", "fmt_ratio", "loadavg",
           "machine_facts", "openblas_env_warning", "header_lines", "short_header_lines",
           "install_hint", "peer_status_line", "format_table", "save_json"]

# Variables that change which OpenBLAS kernel is picked or how it blocks.
# Set for another purpose (an emulator, a misdetected CPU), they make the
# BLAS-backed peers slower than they are on this machine.
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class Timing:
    """Median, minimum, maximum and quartiles of `reps` timed calls, in seconds.

    The quartiles give the row's spread (:attr:`spread`), which
    ``bench.compare`` uses as the noise of the row when it compares two runs.
    """

    __slots__ = ("median", "min", "reps", "error", "max", "q1", "q3")

    def __init__(self, median=math.nan, min=math.nan, reps=0, error=None,
                 max=math.nan, q1=math.nan, q3=math.nan):
        self.median = median
        self.min = min
        self.reps = reps
        self.error = error
        self.max = max
        self.q1 = q1
        self.q3 = q3

    @classmethod
    def from_times(cls, times):
        times = sorted(times)
        if len(times) >= 2:
            q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        else:
            q1 = q3 = math.nan   # one call says nothing about the spread
        return cls(statistics.median(times), times[0], len(times), None, times[-1], q1, q3)

    @property
    def ok(self):
        return self.error is None and self.reps > 0

    @property
    def spread(self):
        """Interquartile range over the median (0.05: the middle half of the
        calls lies within 5% of the median's size), nan when unknown."""
        if not self.ok or not (self.median > 0) or math.isnan(self.q1):
            return math.nan
        return (self.q3 - self.q1) / self.median

    def as_dict(self):
        d = {"median_s": self.median, "min_s": self.min, "max_s": self.max,
             "q1_s": self.q1, "q3_s": self.q3, "spread": self.spread, "reps": self.reps}
        if self.error is not None:
            d["error"] = self.error
        return d

    @classmethod
    def from_dict(cls, d):
        """The inverse of :meth:`as_dict` (JSON nulls read back as nan)."""
        if d is None:
            return None
        f = lambda k: math.nan if d.get(k) is None else float(d[k])   # noqa: E731
        return cls(f("median_s"), f("min_s"), int(d.get("reps") or 0), d.get("error"),
                   f("max_s"), f("q1_s"), f("q3_s"))


SETTLE_S = 0.25   # seconds of idle before each measurement (see time_call)


def time_call(fn, setup=None, target_s=0.3, min_reps=5, max_reps=2000, settle_s=None,
              collect=True):
    """Time ``fn()``: one warm-up call, then the median of N timed calls.

    N is chosen from the first timed call (the warm-up absorbs one-time costs
    such as SIMD dispatch and first-touch page faults, so it is a poor guide)
    so that the N calls take about `target_s`, clamped to
    ``[min_reps, max_reps]``.  ``setup()``, when given, runs before every call
    outside the timed region: it is how an in-place peer gets a fresh copy of
    its input each time.

    The garbage collector is off while timing, as in :mod:`timeit`, so a
    collection triggered by one implementation is not billed to another.
    Whatever `fn` allocates (its output) is counted: nothing is preallocated
    for it unless the row says so (``out=``).

    `settle_s` (default :data:`SETTLE_S`, read at call time) is the quiet
    period before the warm-up; the collection above counts towards it.
    ``collect=False`` skips the collection (~0.1 s a call once torch is
    imported), for the tests' smoke run, whose times mean nothing.
    """
    def once():
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        r = fn()
        dt = time.perf_counter() - t0
        del r   # free the output before the next call, outside the timed region
        return dt

    gc_was_enabled = gc.isenabled()
    t_quiet = time.perf_counter()
    if collect:
        gc.collect()   # ~0.1 s once torch is imported: part of the quiet period below
    gc.disable()
    # Let the previous measurement's worker threads go to sleep first: once
    # woken, OpenBLAS threads busy-wait ~0.1 s and OpenMP teams spin briefly,
    # and on a 2-core machine whatever runs next loses a core to them (one
    # cdist after a threaded matmul: 230 ms instead of 42).  Every peer gets
    # the same quiet start.  The collection runs on this thread only, so the
    # spinning threads still run out their wait during it.
    settle = SETTLE_S if settle_s is None else settle_s
    time.sleep(max(0.0, settle - (time.perf_counter() - t_quiet)))
    try:
        once()                                    # warm-up
        times = [once()]
        reps = int(min(max_reps, max(min_reps, round(target_s / max(times[0], 1e-7)))))
        times += [once() for _ in range(reps - 1)]
    except Exception as exc:  # a peer that cannot run this case is reported, not fatal
        return Timing(error=f"{type(exc).__name__}: {exc}")
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing.from_times(times)


def ratio(num, den):
    """``num / den`` for two Timings' medians, or nan when either is missing."""
    if num is None or den is None or not num.ok or not den.ok or den.median <= 0:
        return math.nan
    return num.median / den.median


def fmt_ms(t):
    if t is None:
        return "-"
    if not t.ok:
        return ("not implemented" if (t.error or "").startswith("NotImplementedError")
                else "error")
    ms = t.median * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def fmt_ratio(r):
    return "-" if r is None or math.isnan(r) else f"{r:.2f}x"


# --------------------------------------------------------------------------
# Machine and version facts
# --------------------------------------------------------------------------

def _cpuinfo():
    """CPU model, logical/physical core counts and the SIMD flags that matter."""
    model, physical, flags = platform.processor() or "unknown", set(), set()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    phys_id = core_id = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            model = value
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            core_id = value
            physical.add((phys_id, core_id))
        elif key == "flags" and not flags:
            flags = set(value.split())
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl")
            if f in flags]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": len(physical) or None,
        "simd_flags": simd,
    }


def loadavg():
    """1-minute load average: above ~0.5 another process shares the CPUs and
    every time in the table is suspect."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None


def _version(modname):
    try:
        mod = __import__(modname)
    except ImportError:
        return "not installed"
    except Exception as exc:  # a broken install says why
        return f"unavailable ({type(exc).__name__}: {exc})"
    return getattr(mod, "__version__", "unknown")


def _blas_info():
    """threadpoolctl's view of the loaded BLAS/OpenMP libraries, if available."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    out = []
    for lib in threadpool_info():
        out.append({
            "user_api": lib.get("user_api"),
            "internal_api": lib.get("internal_api"),
            "version": lib.get("version"),
            "kernel": lib.get("architecture"),
            "threading_layer": lib.get("threading_layer"),
            "num_threads": lib.get("num_threads"),
            "library": os.path.basename(lib.get("filepath") or ""),
        })
    return out


def openblas_env_warning():
    """A warning line if OpenBLAS tuning variables are set, else None (also
    when ``bench.run --simd`` chose the kernel of the forced level)."""
    set_vars = [f"{v}={os.environ[v]}" for v in OPENBLAS_VARS if v in os.environ]
    forced = {"avx2": "Haswell", "baseline": "Nehalem"}.get(os.environ.get("FASTLIN_SIMD", ""))
    if not set_vars or (forced and set_vars == [f"OPENBLAS_CORETYPE={forced}"]):
        return None
    return ("WARNING: " + ", ".join(set_vars) + " set: BLAS-backed peers may not run "
            "their best kernel. Rerun as: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
            "python -m bench.run")


# The pip command that installs each optional peer (the package name is not
# always the import name).
INSTALL = {"sklearn": "scikit-learn", "torch": "torch", "faiss": "faiss-cpu",
           "keops": "pykeops", "threadpoolctl": "threadpoolctl", "matplotlib": "matplotlib"}


def install_hint(name):
    """``python -m pip install X`` for an optional peer, or None when unknown."""
    pkg = INSTALL.get(name)
    return None if pkg is None else f"python -m pip install {pkg}"


def _missing(status):
    return status.startswith(("not installed", "unavailable"))


def peer_status_line(status):
    """One line: the peers measured with their versions, then each missing
    peer with the command that installs it."""
    have = [f"{p} {v}" for p, v in status.items() if not _missing(v)]
    lines = ["peers   : " + (", ".join(have) or "none")]
    for p, v in status.items():
        if _missing(v):
            hint = install_hint(p)
            lines.append(f"missing : {p} ({v}){': ' + hint if hint else ''}; its columns show -")
    return lines


def _simd_level():
    try:
        from fastlin import _simd
        return _simd.LEVEL
    except Exception:   # an older build without the dispatcher module
        return "unknown"


def machine_facts(peers, threads, mode, threads_note=None):
    """Everything the header prints, as a JSON-able dict.

    `peers` maps a peer name to its version string (or "not installed").
    Call it after the peers are imported, so threadpoolctl sees their
    libraries.  `threads_note` says which peers follow the thread count (the
    header's default is the reductions' note).
    """
    import numpy
    import scipy

    import fastlin

    cfg = io.StringIO()
    fastlin.show_config(file=cfg)
    return {
        "machine": _cpuinfo(),
        "platform": platform.platform(),
        "versions": {
            "python": sys.version.split()[0],
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
            "fastlin": fastlin.__version__,
            "torch": peers.get("torch", _version("torch")),
            "sklearn": peers.get("sklearn", _version("sklearn")),
            "threadpoolctl": _version("threadpoolctl"),
        },
        "fastlin_config": cfg.getvalue().rstrip().splitlines(),
        "fastlin_simd": _simd_level(),
        "blas": _blas_info(),
        "load_average": loadavg(),
        "threads": list(threads),
        "threads_note": threads_note or (
            "fastlin.threads(t) and torch.set_num_threads(t); scipy, numpy and sklearn "
            "run these ops on one thread whatever t"),
        "mode": mode,
        "env": {v: os.environ.get(v) for v in
                OPENBLAS_VARS + ("OMP_NUM_THREADS", "THP_MEM_ALLOC_ENABLE", "FASTLIN_SIMD",
                                 "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                                 "NPY_DISABLE_CPU_FEATURES")},
        "torch_extra": _torch_extra(peers),
    }


def _torch_extra(peers):
    if "torch" not in sys.modules or peers.get("torch", "").startswith(("not", "unav")):
        return None
    import torch
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        cap = "unknown"
    return {"cpu_capability": cap, "interop_threads": torch.get_num_interop_threads()}


def header_lines(facts):
    m, v = facts["machine"], facts["versions"]
    lines = [
        "fastlin benchmark suite  (python -m bench.run)",
        f"machine : {m['cpu_model']}; {m['usable_cpus']} usable CPUs "
        f"({m['logical_cpus']} logical, {m['physical_cores'] or '?'} physical cores); "
        f"SIMD: {' '.join(m['simd_flags']) or 'none of avx2/avx512'}",
        f"platform: {facts['platform']}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]
    if facts["blas"] is None:
        lines.append("blas    : threadpoolctl not installed (no BLAS facts)")
    else:
        for lib in facts["blas"]:
            if lib["user_api"] == "blas":
                lines.append(
                    f"blas    : {lib['internal_api']} {lib['version']} "
                    f"kernel={lib['kernel']} threads={lib['num_threads']} "
                    f"({lib['threading_layer']}) {lib['library']}")
            else:
                lines.append(f"{lib['user_api']:<8}: {lib['internal_api']} "
                             f"threads={lib['num_threads']} {lib['library']}")
    # show_config() minus the versions already printed above.
    cfg = []
    for s in facts["fastlin_config"][1:]:
        key, _, value = s.partition(":")
        if key.strip() not in ("python", "numpy", "scipy"):
            cfg.append(f"{key.strip()}={' '.join(value.split())}")
    lines.append("fastlin : " + "; ".join(cfg))
    if facts["torch_extra"]:
        t = facts["torch_extra"]
        lines.append(f"torch   : cpu capability {t['cpu_capability']}, "
                     f"THP_MEM_ALLOC_ENABLE={facts['env']['THP_MEM_ALLOC_ENABLE']}")
    env = facts["env"]
    lines.append("env     : " + ", ".join(
        f"{k}={'unset' if val is None else val}" for k, val in env.items()))
    lines.append(f"threads : {', '.join(map(str, facts['threads']))} "
                 f"({facts['threads_note']})")
    lines.append(f"mode    : {facts['mode']}")
    lines.append(f"load    : 1-min load average {facts['load_average']} at start "
                 "(compare with the CPU count: a busy machine makes every time noisy)")
    warn = openblas_env_warning()
    if warn:
        lines.append(warn)
    return lines


def short_header_lines(facts, title="fastlin benchmark  (python -m bench.run)"):
    """The header of the default output: versions, CPU, SIMD level, threads,
    mode and load; :func:`header_lines` (``--verbose``) has everything."""
    m, v = facts["machine"], facts["versions"]
    simd = ("AVX-512" if "avx512f" in m["simd_flags"] else
            "AVX2" if "avx2" in m["simd_flags"] else "no AVX2")
    others = ", ".join(f"{k} {v[k]}" for k in ("numpy", "scipy", "torch", "sklearn")
                       if k in v and not str(v[k]).startswith(("not", "unav")))
    load = facts["load_average"]
    busy = (" (busy: another process is using the CPUs, times are noisy)"
            if load is not None and load > 0.5 else "")
    return [
        title,
        f"fastlin {v['fastlin']} (kernels: {facts.get('fastlin_simd', 'unknown')}), "
        f"{others}, python {v['python']}",
        f"CPU     : {m['cpu_model']}, {m['usable_cpus']} usable CPUs, {simd}",
        f"threads : {', '.join(map(str, facts['threads']))}; mode: {facts['mode']}",
        f"load    : {load} (1-min average at start){busy}",
    ]


# --------------------------------------------------------------------------
# Tables and JSON
# --------------------------------------------------------------------------

def format_table(columns, rows, right=None):
    """Aligned text table.  `columns` are titles, `rows` lists of strings;
    columns whose index is in `right` are right-aligned (default: all but the
    first four)."""
    if right is None:
        right = set(range(4, len(columns)))
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(c)
              for i, c in enumerate(columns)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _clean(obj):
    """JSON cannot hold nan: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def save_json(path, payload):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(payload), f, indent=1)
        f.write("\n")
