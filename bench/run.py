"""Run the benchmark suite: ``python -m bench.run [--quick] [...]``.

For each workload, dtype and thread count, times fastlin and every installed
peer in this one process and prints one compact table per op family:
fastlin's median time and the speed-up against each peer (peer time /
fastlin time, >1: fastlin is faster), under a short header.  ``--verbose``
adds the full header (BLAS libraries, build flags, environment) and the
detailed tables (every peer's time, fastlin's minimum, the bounds: the copy
for ``out=``, the GEMM of the cross term and the output write for the
distances, the input read for Mahalanobis and max-margin).  ``--check``
judges the targets, prints each with its definition and exits 1 when one
fails.  ``--plot FILE`` draws the speed-ups (:mod:`bench.plot`).  The results
are saved as JSON; ``python -m bench.compare A.json B.json`` compares two runs.

torch reads ``THP_MEM_ALLOC_ENABLE`` when it is imported (its CPU allocator
then asks for transparent huge pages for large buffers: its best
configuration), so this script re-executes itself with the variable set
before anything imports torch.  The same re-execution unsets
``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` (they override OpenBLAS's kernel
choice and blocking, which slows the BLAS-backed peers) and says so in one
line; ``--keep-openblas-env`` keeps them.

``--simd avx2`` (or ``baseline``) runs fastlin at that SIMD level and its
peers as on a CPU of that level (torch, MKL, NumPy and OpenBLAS are told
through their environment variables, set by the same re-execution).
"""
import os
import sys


SIMD_LEVELS = ("avx512", "avx2", "baseline")   # fastlin._simd.LEVELS


def _simd_arg(argv):
    """The value of --simd in argv, or None."""
    for i, a in enumerate(argv):
        if a == "--simd" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--simd="):
            return a.split("=", 1)[1]
    return None


def _numpy_features_above(level):
    """NumPy's dispatched CPU features beyond `level` (for
    NPY_DISABLE_CPU_FEATURES), asked of a child so that this process has not
    imported NumPy yet; and NumPy's baseline (it cannot be disabled)."""
    import json
    import subprocess
    code = ("import json\n"
            "try:\n from numpy._core._multiarray_umath import __cpu_dispatch__ as d, "
            "__cpu_baseline__ as b\n"
            "except ImportError:\n from numpy.core._multiarray_umath import "
            "__cpu_dispatch__ as d, __cpu_baseline__ as b\n"
            "print(json.dumps([list(d), list(b)]))")
    env = {k: v for k, v in os.environ.items() if k != "NPY_DISABLE_CPU_FEATURES"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    dispatch, baseline = json.loads(out)
    if level == "avx2":
        above = [f for f in dispatch if f.startswith("AVX512")]
    else:
        above = [f for f in dispatch if f not in baseline]
    return above, baseline


def _level_env(level):
    """Environment that runs fastlin and its peers as on a CPU of `level`:
    fastlin (FASTLIN_SIMD), torch's ATen kernels (ATEN_CPU_CAPABILITY) and
    MKL (MKL_ENABLE_INSTRUCTIONS), NumPy (NPY_DISABLE_CPU_FEATURES, down to
    its own baseline) and OpenBLAS (the kernel of that CPU class)."""
    env = {"FASTLIN_SIMD": level}
    if level == "avx512":
        env["ATEN_CPU_CAPABILITY"] = "avx512"
        return env
    above, _ = _numpy_features_above(level)
    env.update({
        "ATEN_CPU_CAPABILITY": "avx2" if level == "avx2" else "default",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2" if level == "avx2" else "SSE4_2",
        "NPY_DISABLE_CPU_FEATURES": " ".join(above),
        "OPENBLAS_CORETYPE": "Haswell" if level == "avx2" else "Nehalem",
    })
    return env


OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")   # harness.OPENBLAS_VARS
# Set by _reexec for the re-executed process: the OpenBLAS variables it
# unset, so that the run reports them once.
UNSET_MARK = "FASTLIN_BENCH_UNSET_OPENBLAS"


def _reexec():
    """Replace this process by itself with THP_MEM_ALLOC_ENABLE=1 (if unset),
    the OpenBLAS tuning variables unset (unless --keep-openblas-env, or
    --simd avx2/baseline, which sets OpenBLAS's kernel itself) and, under
    --simd LEVEL, the environment of _level_env (these are read when the
    libraries load, so they must be set before any is imported).

    An explicit THP_MEM_ALLOC_ENABLE (0 to see torch without huge pages) is
    respected; the header reports the environment either way.
    """
    argv_in = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv_in):
        return
    want = {}
    if "THP_MEM_ALLOC_ENABLE" not in os.environ:
        want["THP_MEM_ALLOC_ENABLE"] = "1"
    level = _simd_arg(argv_in)
    forced_level = level in SIMD_LEVELS and level != "avx512"
    if level in SIMD_LEVELS:
        want.update(_level_env(level))
    drop = []
    if "--keep-openblas-env" not in argv_in:
        drop = [v for v in OPENBLAS_VARS if v in os.environ
                and not (forced_level and v == "OPENBLAS_CORETYPE")]
    if not drop and all(os.environ.get(k) == v for k, v in want.items()):
        return
    env = dict(os.environ, **want)
    if forced_level:
        env.pop("OPENBLAS_L2_SIZE", None)
    for v in drop:
        env.pop(v, None)
    if drop:
        env[UNSET_MARK] = " ".join(f"{v}={os.environ[v]}" for v in drop)
    argv = list(getattr(sys, "orig_argv", None) or
                [sys.executable, "-m", "bench.run", *argv_in])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def openblas_line(keep):
    """The one line about the OpenBLAS tuning variables, or None when none
    was set: what was done about them."""
    unset = os.environ.pop(UNSET_MARK, None)
    if unset:
        one = len(unset.split()) == 1
        return (f"note    : {unset} {'was' if one else 'were'} set: re-executed with "
                f"{'it' if one else 'them'} unset so that the BLAS-backed peers run "
                "OpenBLAS's own kernel choice for this CPU (--keep-openblas-env keeps "
                f"{'it' if one else 'them'})")
    kept = [f"{v}={os.environ[v]}" for v in OPENBLAS_VARS if v in os.environ]
    if not kept or os.environ.get("FASTLIN_SIMD") in ("avx2", "baseline"):
        return None
    why = ("kept as --keep-openblas-env asks" if keep else
           "set (this process was not started through python -m bench.run, so it "
           "could not re-execute without it)")
    return (f"note    : {', '.join(kept)} {why}: BLAS-backed peers may not run their "
            "best kernel")


if __name__ == "__main__":
    _reexec()   # before numpy, scipy or torch are imported

import argparse  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

# Benchmark the *installed* fastlin: `python -m bench.run` from the checkout
# puts the checkout first on sys.path, where fastlin/ is the uncompiled source
# (an editable install still resolves to the checkout through its finder).
# bench itself is already imported, so its submodules still resolve.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]

import fastlin  # noqa: E402

from . import harness as H  # noqa: E402
from . import report as R  # noqa: E402
from . import workloads as W  # noqa: E402

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")

# Timing budget per measurement: (target seconds for the timed calls, min reps, max reps)
NORMAL_TIMING = (0.3, 5, 2000)
QUICK_TIMING = (0.0, 3, 3)   # warm-up + 3 calls: the median shrugs off one outlier
# --quick times a peer call of more than ~0.2 s once after its warm-up (scipy's
# pdist of 8192 points takes 0.8 s a call, its mahalanobis cdist 1 s): the
# slow peers cost most of the run, and their speed-up is large enough that a
# single call's noise does not change what the table says.
QUICK_PEER_TIMING = (0.3, 1, 3)
# --quick's idle period before each measurement, instead of harness.SETTLE_S
# (0.25 s): still longer than the ~0.1 s that woken OpenBLAS threads
# busy-wait, and it saves ~20 s over the ~190 measurements of the run.
QUICK_SETTLE_S = 0.15

# The hidden --tiny option (the tests' smoke run): the quick mode's structure
# on inputs small enough that the whole run takes seconds, without the idle
# period before each measurement.  Its times mean nothing.
TINY_WORKLOADS = [W.Workload((64, 64), -1)]
TINY_DIST_WORKLOADS = [W.DistWorkload("cdist", 64, 8), W.DistWorkload("pdist", 64, 8)]
TINY_STAT_WORKLOADS = [W.StatWorkload("maha", 256, 4), W.StatWorkload("cdist", 32, 4),
                       W.StatWorkload("margin", 64, 8)]


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _csv(kind, known=None, convert=str):
    def parse(text):
        items = [s.strip() for s in text.split(",") if s.strip()]
        try:
            items = [convert(s) for s in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{kind} must be a comma-separated list"
                f"{' of positive integers' if convert is not str else ''}, got {text!r}"
            ) from None
        if known is not None:
            bad = [s for s in items if s not in known]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {', '.join(map(str, bad))}; known: {', '.join(known)}")
        if not items:
            raise argparse.ArgumentTypeError(f"{kind} must not be empty")
        return items
    return parse


def _positive_int(s):
    n = int(s)
    if n < 1:
        raise ValueError(s)
    return n


def plot_path_error(path):
    """Why `path` cannot take the chart, or None: a .png or .svg file in an
    existing directory, with matplotlib installed (checked before the run,
    not after minutes of timing)."""
    import importlib.util
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".svg"):
        return f"--plot {path!r}: the file name must end in .png or .svg"
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        return f"--plot {path!r}: directory {d} does not exist"
    if os.path.isdir(path):
        return f"--plot {path!r} is a directory"
    if importlib.util.find_spec("matplotlib") is None:
        return ("--plot needs matplotlib, which is not installed: "
                "python -m pip install \"fastlin[bench]\" (or matplotlib)")
    return None


# Group names accepted by --ops.
OP_GROUPS = {"reduction": list(W.OPS), "distance": list(W.DIST_OPS),
             "issue4": list(W.STAT_OPS)}


def parse_args(argv=None):
    ncpu = _usable_cpus()
    all_ops = list(W.OPS) + list(W.DIST_OPS) + list(W.STAT_OPS)
    wl_names = ([w.key for w in W.WORKLOADS] + [w.key for w in W.DIST_WORKLOADS]
                + [w.key for w in W.STAT_WORKLOADS])
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark fastlin against scipy, the NumPy formula, scikit-learn and "
                    "torch, all timed in this process. Ratios are peer/fastlin: >1 means "
                    "fastlin is faster.")
    p.add_argument("--quick", action="store_true",
                   help="about two minutes on 2 cores: only the 4096x4096 axis=-1 workload, "
                        "cdist4096x64, pdist8192x64 (no pdist_backward unless named), "
                        "maha1000000x16, cdist2000x32/mahalanobis and margin65536x64; "
                        "warm-up + 3 calls for fastlin, 1-3 calls (~0.3 s) for a peer, "
                        f"{QUICK_SETTLE_S:g} s idle before each measurement; single-threaded "
                        "peers timed once and reused across thread counts")
    p.add_argument("--threads", type=_csv("thread counts", convert=_positive_int),
                   default=sorted({1, ncpu}),
                   help=f"comma-separated thread counts (default: 1,{ncpu} = 1 and all)")
    p.add_argument("--ops", type=_csv("op", all_ops + list(OP_GROUPS)), default=None,
                   help="comma-separated ops or groups (default: all): " + ",".join(all_ops)
                        + "; groups: reduction (softmax..normalize_backward), distance "
                          "(cdist..pdist_backward), issue4 (mahalanobis.."
                          "max_margin_loss_backward)")
    p.add_argument("--dtypes", type=_csv("dtype", ["float64", "float32"]),
                   default=["float64", "float32"], help="default: float64,float32")
    p.add_argument("--workloads", type=_csv("workload", wl_names), default=None,
                   help="comma-separated, default all (quick: 4096x4096, cdist4096x64, "
                        "pdist8192x64, maha1000000x16, cdist2000x32/mahalanobis, "
                        "margin65536x64); each op runs on the workloads of its family: "
                        + ",".join(wl_names))
    p.add_argument("--peers", type=_csv("peer", W.PEERS), default=list(W.PEERS),
                   help="default: " + ",".join(W.PEERS))
    p.add_argument("--target-time", type=float, default=None, metavar="S",
                   help=f"seconds of timed calls per measurement (default {NORMAL_TIMING[0]}; "
                        "reps are chosen from the warm-up call)")
    p.add_argument("--no-cache", action="store_true",
                   help="turn fastlin's result-buffer cache off (fastlin.set_memory_cache(0)): "
                        "every large result then comes fresh from the OS and pays its page "
                        "faults, as for a caller that keeps every result")
    p.add_argument("--simd", choices=SIMD_LEVELS, default=None,
                   help="run fastlin at this SIMD level (FASTLIN_SIMD) and force the peers to "
                        "it where they allow: torch ATEN_CPU_CAPABILITY and "
                        "MKL_ENABLE_INSTRUCTIONS, NumPy NPY_DISABLE_CPU_FEATURES (down to its "
                        "own baseline), OpenBLAS's Haswell / Nehalem kernel for avx2 / "
                        "baseline; the header shows the environment")
    p.add_argument("--busy", action="store_true",
                   help="keep one core busy with another process for the whole run (a "
                        "spinning Python process pinned to the last CPU this one may use, "
                        "stopped at the end): how the thread counts behave on a machine "
                        "shared with other work")
    p.add_argument("--json", default=DEFAULT_JSON, metavar="PATH",
                   help="where to save the results (default bench/results.json); "
                        "'-' to skip. python -m bench.compare A.json B.json compares two")
    p.add_argument("--verbose", action="store_true",
                   help="the full header (BLAS libraries, build flags, environment), what "
                        "each peer calls, and the detailed tables: every peer's time, "
                        "fastlin's minimum, and the bounds (out= vs the copy, the GEMM and "
                        "the output write of the distances, the input read)")
    p.add_argument("--check", action="store_true",
                   help="also judge the targets: PASS / FAIL / SKIP per target with its "
                        "definition; exit status 1 when one fails (the bounds are timed "
                        "for this, as with --verbose)")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="draw the speed-ups per workload against each peer (log axis, one "
                        "panel per op family) into FILE, .png or .svg; needs matplotlib "
                        "(pip install \"fastlin[bench]\"). python -m bench.plot draws it "
                        "from a saved JSON")
    p.add_argument("--keep-openblas-env", action="store_true",
                   help="keep OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE if set (by default the "
                        "run re-executes itself without them and says so)")
    # the tests' smoke run: tiny inputs, no idle period (see TINY_WORKLOADS)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.target_time is not None and not (args.target_time > 0
                                             and math.isfinite(args.target_time)):
        p.error(f"--target-time must be a positive number of seconds, got {args.target_time}")
    if args.plot is not None:
        err = plot_path_error(args.plot)
        if err:
            p.error(err)
    if args.json != "-" and os.path.isdir(args.json):
        p.error(f"--json {args.json!r} is a directory; give a file name (or '-' to skip)")
    args.bounds = args.check or args.verbose
    if args.ops is None:
        ops = [o for o in all_ops if not (args.quick and o in W.QUICK_SKIP_OPS)]
    else:
        ops = []
        for o in args.ops:   # a group is expanded; --quick leaves out what it skips
            ops += ([g for g in OP_GROUPS[o] if not (args.quick and g in W.QUICK_SKIP_OPS)]
                    if o in OP_GROUPS else [o])
    args.ops = list(dict.fromkeys(ops))
    args.red_ops = [o for o in args.ops if o in W.OPS]
    args.dist_ops = [o for o in args.ops if o in W.DIST_OPS]
    args.stat_ops = [o for o in args.ops if o in W.STAT_OPS]
    if args.tiny:
        if args.workloads is not None:
            p.error("--tiny replaces the workloads; do not combine it with --workloads")
        red_wl, dist_wl, stat_wl = TINY_WORKLOADS, TINY_DIST_WORKLOADS, TINY_STAT_WORKLOADS
    elif args.workloads is None:
        red_wl = W.QUICK_WORKLOADS if args.quick else W.WORKLOADS
        dist_wl = W.QUICK_DIST_WORKLOADS if args.quick else W.DIST_WORKLOADS
        stat_wl = W.QUICK_STAT_WORKLOADS if args.quick else W.STAT_WORKLOADS
    else:
        red_wl = [w for w in W.WORKLOADS if w.key in args.workloads]
        dist_wl = [w for w in W.DIST_WORKLOADS if w.key in args.workloads]
        stat_wl = [w for w in W.STAT_WORKLOADS if w.key in args.workloads]
    args.workloads = red_wl if args.red_ops else []
    args.dist_workloads = [w for w in dist_wl if set(w.ops) & set(args.dist_ops)]
    # Keep only the ops that run on some selected workload: the targets of
    # the others are not listed.
    args.red_ops = args.red_ops if args.workloads else []
    args.dist_ops = [o for o in args.dist_ops if any(o in w.ops for w in args.dist_workloads)]
    args.stat_workloads = [w for w in stat_wl if set(w.ops) & set(args.stat_ops)]
    args.stat_ops = [o for o in args.stat_ops if any(o in w.ops for w in args.stat_workloads)]
    args.ops = args.red_ops + args.dist_ops + args.stat_ops
    if not args.ops:
        p.error("nothing to run: no selected workload belongs to a selected op "
                "(softmax..normalize_backward run on 4096x4096-style workloads, "
                "cdist/cdist_backward on cdist*, pdist/pdist_backward on pdist*; "
                "backward passes on euclidean workloads only; mahalanobis and "
                "mahalanobis_backward on maha*, cdist_mahalanobis on "
                "cdist2000x32/mahalanobis, max_margin_loss and its backward on margin*)")
    args.threads = list(dict.fromkeys(args.threads))   # drop repeats, keep order
    return args


@contextlib.contextmanager
def thread_count(t, mods):
    """Run fastlin and torch on `t` threads; cap BLAS at `t` too (no reduction
    calls BLAS, but a peer must not get more threads than fastlin; for the
    distances it sets the threads of scikit-learn and the matmul bound)."""
    torch = mods["torch"].torch if "torch" in mods else None
    before = torch.get_num_threads() if torch is not None else None
    try:
        from threadpoolctl import threadpool_limits
        blas = threadpool_limits(limits=t, user_api="blas")
    except ImportError:
        blas = contextlib.nullcontext()
    try:
        if torch is not None:
            torch.set_num_threads(t)
        with fastlin.threads(t), blas:
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


class Progress:
    """One status line on stderr (rewritten in place on a terminal)."""

    def __init__(self, total):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def step(self, text):
        self.done += 1
        msg = f"[{self.done}/{self.total} {time.perf_counter() - self.t0:5.1f}s] {text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + msg)
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    def close(self):
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def time_peers(row, op, case, peers, mods, measure, single, reuse):
    """Time each peer of `op` on `case` into ``row["peers"]``.

    A peer in `reuse` (quick mode's single-threaded peers) is timed once per
    case, at the first thread count, and its Timing reused after that
    (``single`` holds them; the row lists it under ``reused``).
    """
    for peer in peers:
        make = op.peers.get(peer)
        if make is None:
            continue
        key = (op.name, peer)
        if peer in reuse and key in single:
            row["peers"][peer] = single[key]
            row["reused"].append(peer)
            continue
        try:
            bench = make(case, mods[peer])
        except Exception as exc:
            row["peers"][peer] = H.Timing(error=f"{type(exc).__name__}: {exc}")
            continue
        if bench is None:
            continue
        row["peers"][peer] = tm = measure(bench)
        del bench   # frees a torch graph before the next measurement
        single[key] = tm


def _measurer(timing, who="fastlin"):
    """A function timing a Bench with the budget `timing[who]` (who: fastlin,
    also the bounds, or peer)."""
    target, min_reps, max_reps = timing[who]
    settle, collect = timing.get("settle"), not timing.get("tiny", False)

    def measure(bench):
        return H.time_call(bench.fn, bench.setup, target, min_reps, max_reps, settle,
                           collect)
    return measure


def make_timing(args):
    """The timing budgets of this run: ``{"fastlin": (target s, min reps, max
    reps), "peer": ..., "settle": idle seconds or None (the harness's)}``."""
    if args.target_time is not None:
        t = (args.target_time, QUICK_TIMING[1] if args.quick else NORMAL_TIMING[1],
             NORMAL_TIMING[2])
        timing = {"fastlin": t, "peer": t}
    elif args.quick or args.tiny:
        timing = {"fastlin": QUICK_TIMING, "peer": QUICK_PEER_TIMING}
    else:
        timing = {"fastlin": NORMAL_TIMING, "peer": NORMAL_TIMING}
    timing["settle"] = 0.0 if args.tiny else QUICK_SETTLE_S if args.quick else None
    timing["tiny"] = args.tiny
    return timing


def count_steps(args):
    """Progress steps of all sections: one per measured row (the copy-bound
    rows only when the bounds are timed)."""
    copy_rows = len([o for o in args.red_ops if o in W.COPY_BOUND]) if args.bounds else 0
    red = (len(args.workloads) * len(args.dtypes) * len(args.threads)
           * (len(args.red_ops) + copy_rows))
    dist = sum(len([o for o in args.dist_ops if o in w.ops]) for w in args.dist_workloads)
    stat = sum(len([o for o in args.stat_ops if o in w.ops]) for w in args.stat_workloads)
    return red + (dist + stat) * len(args.dtypes) * len(args.threads)


def run_suite(args, mods, timing, progress):
    measure, measure_peer = _measurer(timing), _measurer(timing, "peer")
    peers = [p for p in args.peers if p in mods]
    rows, bound_rows = [], []
    for wl in args.workloads:
        for dtype in args.dtypes:
            case = W.Case(wl, dtype)
            single = {}   # quick mode: (op, peer) -> Timing of a single-threaded peer
            for t in args.threads:
                with thread_count(t, mods):
                    for name in args.red_ops:
                        op = W.OPS[name]
                        progress.step(f"{wl.name} {dtype} threads={t} {name}")
                        row = {"workload": wl.name, "key": wl.key, "shape": list(wl.shape),
                               "axis": wl.axis, "dtype": dtype, "threads": t, "op": name,
                               "fastlin": measure(W.Bench(op.fastlin(case))),
                               "peers": {}, "reused": []}
                        time_peers(row, op, case, peers, mods, measure_peer, single,
                                   W.SINGLE_THREADED_PEERS if args.quick else ())
                        rows.append(row)
                        if name in W.COPY_BOUND and args.bounds:
                            progress.step(f"{wl.name} {dtype} threads={t} {name}(out=) vs copy")
                            limit, make_fl = W.COPY_BOUND[name]
                            out = case.scratch
                            bound_rows.append({
                                "workload": wl.name, "dtype": dtype, "threads": t, "op": name,
                                "limit": limit,
                                "fastlin_out": measure(W.Bench(make_fl(case, out))),
                                "copy": measure(W.Bench(W.copy_bench(case, out))),
                            })
            del case
    return rows, bound_rows


def run_distances(args, mods, timing, progress):
    """Time cdist/pdist (and their backward passes) against their peers, and
    each forward row against the bounds: the GEMM of the cross term (every
    row) and the write of the output (workloads with ``write_bound``)."""
    measure, measure_peer = _measurer(timing), _measurer(timing, "peer")
    # numpy has no distance function: its matmul is the bound (with --check
    # or --verbose).
    peers = [p for p in args.peers if p in mods]
    rows = []
    matmul = {}   # (kind, shape, dtype, threads) -> Timing, shared by the metric rows
    for wl in args.dist_workloads:
        ops = [o for o in args.dist_ops if o in wl.ops]
        for dtype in args.dtypes:
            case = W.DistCase(wl, dtype)
            single = {}
            for t in args.threads:
                with thread_count(t, mods):
                    for name in ops:
                        op = W.DIST_OPS[name]
                        progress.step(f"{wl.key} {dtype} threads={t} {name}")
                        row = {"workload": wl.name, "key": wl.key, "kind": wl.kind,
                               "shape": list(wl.shape), "metric": wl.metric,
                               "dtype": dtype, "threads": t, "op": name,
                               "fastlin": measure(W.Bench(op.fastlin(case))),
                               "peers": {}, "reused": [], "matmul": None, "write": None}
                        time_peers(row, op, case, peers, mods, measure_peer, single,
                                   W.DIST_SINGLE_THREADED_PEERS if args.quick else ())
                        if not op.backward and args.bounds:
                            mk = (wl.kind, wl.shape, dtype, t)
                            if mk not in matmul:
                                matmul[mk] = measure(W.matmul_bench(case))
                            row["matmul"] = matmul[mk]
                            if wl.write_bound:
                                row["write"] = measure(W.write_bench(case))
                        rows.append(row)
            del case
    return rows


def run_stats(args, mods, timing, progress):
    """Time the Mahalanobis distance (forward, backward, cdist) and the
    max-margin loss (forward, backward) against their peer columns, and each
    forward row with a bound against reading its input once (with --check or
    --verbose)."""
    measure, measure_peer = _measurer(timing), _measurer(timing, "peer")
    rows = []
    for wl in args.stat_workloads:
        ops = [o for o in args.stat_ops if o in wl.ops]
        for dtype in args.dtypes:
            case = W.StatCase(wl, dtype)
            single = {}   # quick mode: (op, column) -> Timing of a single-threaded column
            for t in args.threads:
                with thread_count(t, mods):
                    for name in ops:
                        op = W.STAT_OPS[name]
                        progress.step(f"{wl.key} {dtype} threads={t} {name}")
                        row = {"workload": wl.name, "key": wl.key, "kind": wl.kind,
                               "shape": list(wl.shape), "dtype": dtype, "threads": t,
                               "op": name, "fastlin": measure(W.Bench(op.fastlin(case))),
                               "peers": {}, "reused": [], "read": None}
                        reuse = W.STAT_SINGLE_THREADED if args.quick else ()
                        for col, (peer, make) in op.columns.items():
                            if peer not in args.peers or peer not in mods:
                                continue   # not requested, or not installed
                            key = (name, col)
                            if col in reuse and key in single:
                                row["peers"][col] = single[key]
                                row["reused"].append(col)
                                continue
                            try:
                                bench = make(case, mods[peer])
                            except Exception as exc:
                                row["peers"][col] = H.Timing(
                                    error=f"{type(exc).__name__}: {exc}")
                                continue
                            row["peers"][col] = single[key] = measure_peer(bench)
                            del bench   # frees a torch graph before the next measurement
                        if op.bound is not None and args.bounds:
                            key = (name, "read")
                            if args.quick and key in single:
                                row["read"] = single[key]
                            else:
                                row["read"] = single[key] = measure(op.bound(case))
                        rows.append(row)
            del case
    return rows


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

def results_table(rows, peers):
    cols = (["workload", "dtype", "thr", "op", "fastlin ms", "(min)"]
            + [f"{p} ms" for p in peers] + [f"{p}/fl" for p in peers])
    out = []
    for r in rows:
        fl = r["fastlin"]
        cells = [r["workload"], r["dtype"], str(r["threads"]), r["op"], H.fmt_ms(fl),
                 "-" if not fl.ok else H.fmt_ms(H.Timing(fl.min, fl.min, 1))]
        cells += [H.fmt_ms(r["peers"].get(p)) + ("*" if p in r["reused"] else "")
                  for p in peers]
        cells += [H.fmt_ratio(H.ratio(r["peers"].get(p), fl)) for p in peers]
        out.append(cells)
    return H.format_table(cols, out)


def bound_table(bound_rows):
    cols = ["workload", "dtype", "thr", "op", "fastlin out= ms", "np.copyto ms",
            "fl_out/copy", "target"]
    out = []
    for b in bound_rows:
        r = H.ratio(b["fastlin_out"], b["copy"])
        out.append([b["workload"], b["dtype"], str(b["threads"]), b["op"],
                    H.fmt_ms(b["fastlin_out"]), H.fmt_ms(b["copy"]), H.fmt_ratio(r),
                    f"<= {b['limit']}x"])
    return H.format_table(cols, out)


def distance_table(rows, peers):
    """One row per distance workload, metric, dtype, thread count and op:
    fastlin, the peers and ratios peer/fastlin, then the bounds and the ratios
    fastlin/bound (lower is better)."""
    peers = [p for p in peers if any(p in r["peers"] for r in rows)]
    has_mm = any(r["matmul"] is not None for r in rows)
    has_wr = any(r["write"] is not None for r in rows)
    cols = (["workload", "metric", "dtype", "thr", "op", "fastlin ms", "(min)"]
            + [f"{p} ms" for p in peers] + [f"{p}/fl" for p in peers]
            + (["matmul ms", "fl/mm"] if has_mm else [])
            + (["write ms", "fl/write"] if has_wr else []))
    out = []
    for r in rows:
        fl = r["fastlin"]
        cells = [r["workload"], r["metric"], r["dtype"], str(r["threads"]), r["op"],
                 H.fmt_ms(fl), "-" if not fl.ok else H.fmt_ms(H.Timing(fl.min, fl.min, 1))]
        cells += [H.fmt_ms(r["peers"].get(p)) + ("*" if p in r["reused"] else "")
                  for p in peers]
        cells += [H.fmt_ratio(H.ratio(r["peers"].get(p), fl)) for p in peers]
        for bound, present in (("matmul", has_mm), ("write", has_wr)):
            if present:
                cells += [H.fmt_ms(r[bound]), H.fmt_ratio(H.ratio(fl, r[bound]))]
        out.append(cells)
    return H.format_table(cols, out, right=set(range(5, len(cols))))


def _where(r):
    return f"{r['workload']} {r['dtype']} t={r['threads']}"


# How the definitions of the targets name each side of a ratio.
PEER_WORDS = {"scipy": "scipy's", "numpy": "the NumPy formula's", "sklearn": "scikit-learn's",
              "torch": "torch's", "einsum": "the einsum formula's",
              "best": "the fastest NumPy/torch formula's (einsum, rowdot, chol, torch)"}


def _definition(op, peer, need, scope):
    """A target's definition: which ratio, on which rows, must reach what."""
    return (f"{PEER_WORDS.get(peer, peer)} median time / fastlin.{op}'s, on {scope}, "
            f"must be {need}")


def evaluate_targets(rows, bound_rows, args, status, available):
    """The issue's targets, each judged on its worst matching row.

    A target whose op was not run is left out; one whose peer is missing, or
    whose rows were not measured (e.g. no thread count above 1), is SKIP.
    """
    threads = args.threads
    all_t = max(threads)
    fwd = ["softmax", "log_softmax", "logsumexp"]
    bwd = [o for o in W.OPS if o.endswith("_backward")]
    one = lambda r: r["threads"] == 1                                  # noqa: E731
    s_one = "every 1-thread row (each workload and dtype run)"
    # (label, op, peer, row filter, threshold, strict, scope)
    specs = []
    for op in fwd:
        specs += [(f"{op} @1 thread vs scipy", op, "scipy", one, 3.0, False, s_one),
                  (f"{op} @1 thread vs numpy", op, "numpy", one, 1.5, False, s_one),
                  (f"{op} @1 thread vs torch", op, "torch", one, 1.0, True, s_one)]
    specs += [("normalize @1 thread vs numpy", "normalize", "numpy", one, 2.0, False, s_one),
              ("normalize @1 thread vs torch", "normalize", "torch", one, 1.0, True, s_one)]
    label_all = f"@{all_t} threads" if all_t > 1 else "@all threads"
    for op in fwd:
        specs.append((f"{op} {label_all} on 4096x4096 vs scipy", op, "scipy",
                      lambda r: (all_t > 1 and r["threads"] == all_t
                                 and tuple(r["shape"]) == (4096, 4096)), 4.0, False,
                      f"the {all_t}-thread rows of the 4096x4096 axis=-1 workload "
                      "(both dtypes; scipy runs on one thread)"))
    for op in bwd:
        specs.append((f"{op} vs torch autograd (every row)", op, "torch",
                      lambda r: True, 1.0, False,
                      "every row (each workload, dtype and thread count run; torch times "
                      "its autograd backward only)"))

    results = []
    for label, op, peer, keep, thr, strict, scope in specs:
        if op not in args.ops:
            continue
        need = f"{'>' if strict else '>='} {thr:g}x"
        got = [(H.ratio(r["peers"].get(peer), r["fastlin"]), r) for r in rows
               if r["op"] == op and keep(r)]
        got = [(x, r) for x, r in got if not math.isnan(x)]
        if not got:
            if peer not in status:
                why = f"{peer} not requested"
            elif peer not in available:
                why = f"{peer} {status[peer]}"
            else:
                why = "no rows measured (workload or thread count not run)"
            results.append({"target": label, "need": need, "status": "SKIP",
                            "worst": None, "where": why, "rows": 0,
                            "definition": _definition(op, peer, need, scope)})
            continue
        worst, wr = min(got, key=lambda p: p[0])
        ok = worst > thr if strict else worst >= thr
        results.append({"target": label, "need": need, "status": "PASS" if ok else "FAIL",
                        "worst": worst, "where": _where(wr), "rows": len(got),
                        "definition": _definition(op, peer, need, scope)})

    for op, (limit, _) in W.COPY_BOUND.items():
        if op not in args.ops:
            continue
        for t in threads:
            got = [(H.ratio(b["fastlin_out"], b["copy"]), b) for b in bound_rows
                   if b["op"] == op and b["threads"] == t]
            got = [(x, b) for x, b in got if not math.isnan(x)]
            if not got:
                continue
            worst, wb = max(got, key=lambda p: p[0])
            results.append({"target": f"{op}(out=) @{t} thread{'s' * (t > 1)} vs np.copyto",
                            "need": f"<= {limit:g}x copy", "worst": worst,
                            "status": "PASS" if worst <= limit else "FAIL",
                            "where": _where(wb), "rows": len(got),
                            "definition": f"fastlin.{op}(x, out=out)'s median time / "
                                          f"np.copyto(out, x)'s (the least any op with an "
                                          f"output of x's shape moves), on every "
                                          f"{t}-thread row, must be <= {limit:g}x"})
    return results


def evaluate_distance_targets(rows, args, status, available):
    """The distance targets, judged at the largest thread count run (all
    CPUs by default) on the worst matching row.

    While fastlin raises NotImplementedError for an op (its backward being
    written), that op's targets are SKIP, not FAIL; any other exception from
    fastlin is a FAIL.
    """
    all_t = max(args.threads)
    at = f"@{all_t} thread{'s' * (all_t > 1)}"
    fwd = [o for o in W.DIST_OPS if not W.DIST_OPS[o].backward]
    bwd = [o for o in W.DIST_OPS if W.DIST_OPS[o].backward]
    top = lambda r: r["threads"] == all_t                                  # noqa: E731
    wide = lambda r: top(r) and r["shape"][1] >= 64                         # noqa: E731
    narrow = lambda r: top(r) and r["shape"][1] < 64                        # noqa: E731
    # (label, op, peer or bound, row filter, threshold, scope); a bound is judged
    # on fastlin / bound (at most the threshold), a peer on peer / fastlin.
    s_top = f"every {all_t}-thread row (each workload, metric and dtype run)"
    s_wide = f"the {all_t}-thread rows of workloads with d >= 64 columns"
    specs = []
    for op in fwd:
        kinds = [w for w in W.DIST_WORKLOADS if w.kind == op]
        specs.append((f"{op} d >= 64 {at} vs scipy", op, "scipy", wide, 10.0, s_wide))
        if any(w.n < 64 for w in kinds):
            specs.append((f"{op} d < 64 {at} vs scipy", op, "scipy", narrow, 3.0,
                          f"the {all_t}-thread rows of workloads with d < 64 columns"))
        specs += [(f"{op} {at} vs sklearn (every workload)", op, "sklearn", top, 1.0, s_top),
                  (f"{op} {at} vs torch (every workload)", op, "torch", top, 1.0, s_top)]
    for op in fwd:
        specs.append((f"{op} d >= 64 {at} vs numpy matmul (cross term)", op, "matmul",
                      wide, 1.5, s_wide))
    for op in bwd:
        specs.append((f"{op} {at} vs torch autograd (every workload)", op, "torch", top,
                      1.0, s_top))

    results = []
    for label, op, other, keep, thr, scope in specs:
        if op not in args.ops:
            continue
        bound = other == "matmul"
        need = f"<= {thr:g}x matmul" if bound else f">= {thr:g}x"
        definition = (f"fastlin.{op}'s median time / NumPy's XA @ XB.T (the GEMM of its "
                      f"cross term, same threads), on {scope}, must be <= {thr:g}x"
                      if bound else _definition(op, other, need, scope))
        mine = [r for r in rows if r["op"] == op and keep(r)]
        if bound:
            got = [(H.ratio(r["fastlin"], r["matmul"]), r) for r in mine]
        else:
            got = [(H.ratio(r["peers"].get(other), r["fastlin"]), r) for r in mine]
        got = [(x, r) for x, r in got if not math.isnan(x)]
        # fastlin raised (not NotImplementedError) on a row the target compares:
        # the target is missed, whatever the other side did.
        failed = [r for r in mine if not r["fastlin"].ok
                  and not W.not_implemented(r["fastlin"])
                  and (bound or other in r["peers"])]
        if failed:
            results.append({"target": label, "need": need, "status": "FAIL", "worst": None,
                            "where": f"fastlin raised {failed[0]['fastlin'].error} at "
                                     f"{failed[0]['workload']} {failed[0]['dtype']} "
                                     f"t={failed[0]['threads']}",
                            "rows": len(mine), "definition": definition})
            continue
        if not got:
            if any(W.not_implemented(r["fastlin"]) for r in mine):
                why = f"fastlin.{op} not implemented yet"
            elif bound:
                why = "no rows measured (workload or thread count not run)"
            elif other not in status:
                why = f"{other} not requested"
            elif other not in available:
                why = f"{other} {status[other]}"
            elif mine:
                why = f"{other} has no such function for these rows"
            else:
                why = "no rows measured (workload or thread count not run)"
            results.append({"target": label, "need": need, "status": "SKIP",
                            "worst": None, "where": why, "rows": 0,
                            "definition": definition})
            continue
        if bound:
            worst, wr = max(got, key=lambda p: p[0])
            ok = worst <= thr
        else:
            worst, wr = min(got, key=lambda p: p[0])
            ok = worst >= thr
        where = f"{wr['workload']} {wr['metric']} {wr['dtype']} t={wr['threads']}"
        results.append({"target": label, "need": need, "status": "PASS" if ok else "FAIL",
                         "worst": worst, "where": where, "rows": len(got),
                         "definition": definition})
    return results


def best_formula(r):
    """The fastest of the Mahalanobis formulas (einsum, rowdot, chol, torch)
    timed on row `r`: ``(column, Timing)``, or ``(None, None)``."""
    got = [(c, r["peers"][c]) for c in W.MAHA_FORMULAS
           if c in r["peers"] and r["peers"][c].ok]
    return min(got, key=lambda p: p[1].median) if got else (None, None)


STAT_COLUMNS = ["scipy", "einsum", "rowdot", "chol", "numpy", "torch"]


def stat_table(rows):
    """One row per workload, dtype, thread count and op: fastlin, the peer
    columns present in `rows` and their ratios peer / fastlin, the best
    Mahalanobis formula, and the read bound (fastlin / read, lower is better)."""
    cols_p = [c for c in STAT_COLUMNS if any(c in r["peers"] for r in rows)]
    has_best = any(r["op"] == "mahalanobis" for r in rows)
    has_read = any(r["read"] is not None for r in rows)
    cols = (["workload", "dtype", "thr", "op", "fastlin ms", "(min)"]
            + [f"{c} ms" for c in cols_p] + [f"{c}/fl" for c in cols_p]
            + (["best/fl"] if has_best else [])
            + (["read ms", "fl/read"] if has_read else []))
    out = []
    for r in rows:
        fl = r["fastlin"]
        cells = [r["workload"], r["dtype"], str(r["threads"]), r["op"], H.fmt_ms(fl),
                 "-" if not fl.ok else H.fmt_ms(H.Timing(fl.min, fl.min, 1))]
        cells += [H.fmt_ms(r["peers"].get(c)) + ("*" if c in r["reused"] else "")
                  for c in cols_p]
        cells += [H.fmt_ratio(H.ratio(r["peers"].get(c), fl)) for c in cols_p]
        if has_best:
            col, tm = best_formula(r) if r["op"] == "mahalanobis" else (None, None)
            cells.append("-" if col is None else
                         f"{H.fmt_ratio(H.ratio(tm, fl))} {col}")
        if has_read:
            cells += [H.fmt_ms(r["read"]), H.fmt_ratio(H.ratio(fl, r["read"]))]
        out.append(cells)
    return H.format_table(cols, out)


def evaluate_stat_targets(rows, args, status, available):
    """The Mahalanobis and max-margin targets, judged on every row: each
    workload, dtype and thread count (1 thread and all threads both count),
    on the worst row.  ``best`` compares with the fastest of the formulas
    (einsum, rowdot, chol, torch) on that row."""
    every = lambda r: True                                                  # noqa: E731
    # (label, op, column, peer module, threshold, strict)
    specs = [
        ("mahalanobis vs scipy cdist (every row)", "mahalanobis", "scipy", "scipy",
         5.0, False),
        ("mahalanobis vs best of einsum/rowdot/chol/torch (every row)", "mahalanobis",
         "best", None, 2.0, False),
        ("cdist_mahalanobis (2000,32) vs scipy cdist (every row)", "cdist_mahalanobis",
         "scipy", "scipy", 20.0, False),
    ]
    for op in ("max_margin_loss", "max_margin_loss_backward"):
        specs += [(f"{op} vs numpy formula (every row)", op, "numpy", "numpy", 3.0, False),
                  (f"{op} vs torch (every row)", op, "torch", "torch", 1.0, True)]
    results = []
    scope = "every row (each workload, dtype and thread count run)"
    for label, op, col, peer, thr, strict in specs:
        if op not in args.ops:
            continue
        need = f"{'>' if strict else '>='} {thr:g}x"
        definition = _definition(op, col, need, scope)
        mine = [r for r in rows if r["op"] == op and every(r)]
        if col == "best":
            got = [(H.ratio(best_formula(r)[1], r["fastlin"]), r) for r in mine]
        else:
            got = [(H.ratio(r["peers"].get(col), r["fastlin"]), r) for r in mine]
        got = [(x, r) for x, r in got if not math.isnan(x)]
        failed = [r for r in mine if not r["fastlin"].ok]
        if failed:
            results.append({"target": label, "need": need, "status": "FAIL", "worst": None,
                            "where": f"fastlin raised {failed[0]['fastlin'].error} at "
                                     f"{_where(failed[0])}", "rows": len(mine),
                            "definition": definition})
            continue
        if not got:
            if not mine:
                why = "no rows measured (workload or thread count not run)"
            elif peer is not None and peer not in status:
                why = f"{peer} not requested"
            elif peer is not None and peer not in available:
                why = f"{peer} {status[peer]}"
            else:
                why = "no peer timed on these rows"
            results.append({"target": label, "need": need, "status": "SKIP",
                            "worst": None, "where": why, "rows": 0,
                            "definition": definition})
            continue
        worst, wr = min(got, key=lambda p: p[0])
        ok = worst > thr if strict else worst >= thr
        where = _where(wr) + (f" (best: {best_formula(wr)[0]})" if col == "best" else "")
        results.append({"target": label, "need": need, "status": "PASS" if ok else "FAIL",
                        "worst": worst, "where": where, "rows": len(got),
                        "definition": definition})
    return results


def stat_json(r):
    fl = r["fastlin"]
    d = {k: v for k, v in r.items() if k not in ("fastlin", "peers", "read")}
    d.update({
        "fastlin": fl.as_dict(),
        "peers": {c: t.as_dict() for c, t in r["peers"].items()},
        "ratios": {c: H.ratio(t, fl) for c, t in r["peers"].items()},
        "read": None if r["read"] is None else r["read"].as_dict(),
        "fastlin_over_read": None if r["read"] is None else H.ratio(fl, r["read"]),
    })
    if r["op"] == "mahalanobis":
        col, tm = best_formula(r)
        d["best_formula"] = None if col is None else {"column": col,
                                                      "ratio": H.ratio(tm, fl)}
    return d


def targets_table(results):
    cols = ["", "target", "need", "worst", "at", "rows"]
    out = [[t["status"], t["target"], t["need"],
            "-" if t["worst"] is None else f"{t['worst']:.2f}x", t["where"], str(t["rows"])]
           for t in results]
    return H.format_table(cols, out, right={5})


def dist_json(r):
    fl = r["fastlin"]
    d = {k: v for k, v in r.items() if k not in ("fastlin", "peers", "matmul", "write")}
    d.update({
        "fastlin": fl.as_dict(),
        "fastlin_not_implemented": W.not_implemented(fl),
        "peers": {p: t.as_dict() for p, t in r["peers"].items()},
        "ratios": {p: H.ratio(t, fl) for p, t in r["peers"].items()},
    })
    for bound in ("matmul", "write"):
        d[bound] = None if r[bound] is None else r[bound].as_dict()
        d[f"fastlin_over_{bound}"] = (None if r[bound] is None
                                      else H.ratio(fl, r[bound]))
    return d


# The spinning process stops by itself when its parent is gone, so a
# benchmark killed mid-run leaves no load behind.
_SPIN = ("import os, sys\n"
         "parent = int(sys.argv[1])\n"
         "while os.getppid() == parent:\n"
         "    for _ in range(1000000):\n"
         "        pass\n")


def start_busy_core():
    """Start a process that keeps one CPU busy (the last of this process's
    affinity mask where the OS has one); it is killed at exit."""
    import atexit
    import subprocess
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # macOS, Windows: no pinning
        cpus = [None]
    cpu = cpus[-1]
    proc = subprocess.Popen([sys.executable, "-c", _SPIN, str(os.getpid())])
    if cpu is not None:
        try:
            os.sched_setaffinity(proc.pid, {cpu})
        except OSError:
            cpu = None
    proc.cpu = "any" if cpu is None else cpu
    atexit.register(proc.kill)
    return proc


def records(rows, dist_rows, stat_rows):
    """The measured rows of the three families as :mod:`bench.report` records."""
    recs = [R.make_record("reductions", r["op"], r["workload"], r["key"], r["dtype"],
                          r["threads"], r["fastlin"], r["peers"], r["reused"])
            for r in rows]
    recs += [R.make_record("distances", r["op"], r["workload"], r["key"], r["dtype"],
                           r["threads"], r["fastlin"], r["peers"], r["reused"],
                           metric=r["metric"])
             for r in dist_rows]
    recs += [R.make_record("mahalanobis_margin", r["op"], r["workload"], r["key"],
                           r["dtype"], r["threads"], r["fastlin"], r["peers"], r["reused"])
             for r in stat_rows]
    return recs


def _git_state():
    """The checkout's commit and whether tracked files differ from it, or None
    outside a git checkout (an sdist)."""
    import subprocess
    try:
        run = lambda *a: subprocess.run(["git", "-C", _ROOT, *a], capture_output=True,  # noqa: E731
                                        text=True, timeout=10, check=True).stdout.strip()
        return {"commit": run("rev-parse", "HEAD"),
                "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def run_meta(args, timing, argv):
    """What bench.compare needs besides the rows to say whether two runs are
    comparable: the command, when, the checkout, the timing budgets."""
    import datetime
    return {
        "format": 2,
        "command": "python -m bench.run " + " ".join(argv),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "git": _git_state(),
        "quick": args.quick, "tiny": args.tiny, "check": args.check,
        "timing": {"fastlin": list(timing["fastlin"]), "peer": list(timing["peer"]),
                   "settle_s": H.SETTLE_S if timing["settle"] is None else timing["settle"]},
        "threads": args.threads, "dtypes": args.dtypes, "peers": args.peers,
        "no_cache": args.no_cache, "busy": args.busy,
    }


def _mode_text(args, timing):
    fl, peer = timing["fastlin"], timing["peer"]

    def reps(t):
        target, lo, hi = t
        return (f"{lo} calls" if lo == hi else
                f"{lo}-{hi} calls for ~{target:g}s" if lo < 5 else
                f"N calls, N in [{lo}, {hi}] chosen for ~{target:g}s of timing")
    name = "tiny (smoke test)" if args.tiny else "quick" if args.quick else "full"
    calls = (f"warm-up, then {reps(fl)}" if fl == peer else
             f"warm-up, then fastlin {reps(fl)}, peers {reps(peer)}")
    return f"{name}: {calls}; medians"


def print_verbose_peers(red, dist, stat):
    if red:
        print("          scipy = scipy.special; numpy = the NumPy formula (backward: given "
              "the saved forward output); sklearn = extmath.softmax / preprocessing.normalize "
              "in place on a copy made outside timing, rows only; torch = CPU ops on "
              "torch.from_numpy tensors, backward = torch.autograd.grad only")
    if dist:
        print("          distances: scipy = scipy.spatial.distance.cdist / pdist; sklearn = "
              "metrics.pairwise.euclidean_distances (squared=True for sqeuclidean; "
              "cosine_distances); torch = torch.cdist / torch.pdist (default compute mode), "
              "backward = torch.autograd.grad w.r.t. every input only")
    if stat:
        print("          mahalanobis: fastlin gets cov (its factorization is timed); scipy = "
              "spatial.distance.cdist(X, mean[None], 'mahalanobis', VI=VI) (VI made "
              "outside timing); einsum = sqrt(einsum('ij,jk,ik->i', D, VI, D)), D = X - mean "
              "inside; rowdot = sqrt(((X-mu) @ VI * (X-mu)).sum(1)); chol = "
              "np.linalg.cholesky(cov) + scipy.linalg.solve_triangular inside; torch = "
              "the rowdot formula, backward = autograd w.r.t. X, mean, cov (VI = inv(cov) "
              "in the graph); max-margin: numpy = np.maximum(0, 1 - pos[:, None] + "
              "neg).sum() (backward: the mask formula), torch = F.margin_ranking_loss, "
              "backward = autograd w.r.t. pos, neg")


def print_verbose_tables(args, peers, rows, bound_rows, dist_rows, stat_rows):
    """The detailed tables: every time, fastlin's minimum, the bounds."""
    if rows:
        print("Median times; ratio = peer / fastlin (>1: fastlin faster); '-' = peer has no "
              "such function for this case" + ("; * = single-threaded peer timed at "
                                               f"{args.threads[0]} thread(s), reused"
                                               if any(r["reused"] for r in rows) else ""))
        print(results_table(rows, peers))
    if bound_rows:
        print()
        print("out= preallocated vs the copy bound (np.copyto(out, x), same arrays); "
              "ratio = fastlin / copy, lower is better")
        print(bound_table(bound_rows))
    if dist_rows:
        if rows:
            print()
        print("Pairwise distances, median times; peer/fl = peer / fastlin (>1: fastlin "
              "faster); '-' = peer has no such function (torch: euclidean only; no backward "
              "in scipy or sklearn)"
              + ("; * = scipy timed at "f"{args.threads[0]} thread(s), reused"
                 if any(r["reused"] for r in dist_rows) else ""))
        print("  cdist: XA and XB both of the shape shown; pdist: sklearn computes the "
              "square (m, m) matrix, euclidean_distances(X), twice the entries of the "
              "condensed vector; scipy returns float64 for float32 input")
        print("  bounds (forward rows): matmul = numpy XA @ XB.T at the input dtype and t BLAS "
              "threads (pdist: the full X @ copy(X).T GEMM, which pdist needs half of); "
              "write = np.empty + fill of the output, one thread; fl/mm and fl/write = "
              "fastlin / bound, lower is better")
        print(distance_table(dist_rows, peers))
    maha_rows = [r for r in stat_rows if r["kind"] in ("maha", "cdist")]
    margin_rows = [r for r in stat_rows if r["kind"] == "margin"]
    if stat_rows:
        if rows or dist_rows:
            print()
        print("Mahalanobis distance and max-margin loss, median times; c/fl = column / "
              "fastlin (>1: fastlin faster); '-' = no such peer for this op"
              + ("; * = single-threaded column timed at "f"{args.threads[0]} thread(s), "
                 "reused" if any(r["reused"] for r in stat_rows) else ""))
        print("  best/fl = the fastest of einsum/rowdot/chol/torch on the row / fastlin, "
              "and which; read = X.max() (max-margin: neg.max()), one thread: reading the "
              "input once; fl/read = fastlin / read, lower is better; scipy computes in "
              "float64 whatever the input dtype")
    if maha_rows:
        print(stat_table(maha_rows))
    if margin_rows:
        if maha_rows:
            print()
        print(stat_table(margin_rows))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    timing = make_timing(args)

    if args.no_cache:
        fastlin.set_memory_cache(0)
    busy = start_busy_core() if args.busy else None

    mods, status = W.load_peers(args.peers)
    peers = [p for p in args.peers if p in mods]
    red, dist = bool(args.workloads), bool(args.dist_workloads)
    stat = bool(args.stat_workloads)
    reused = "/".join((["scipy/numpy/sklearn (reductions)"] if red else [])
                      + (["scipy (distances)"] if dist else [])
                      + (["scipy/einsum/numpy/read (mahalanobis, max-margin)"]
                         if stat else []))
    mode = (_mode_text(args, timing)
            + (f"; {reused} timed at the first thread count only and reused"
               if (args.quick or args.tiny) and len(args.threads) > 1 and args.verbose
               else ""))
    threads_note = "; ".join(
        ["fastlin.threads(t), torch.set_num_threads(t), BLAS capped at t (threadpoolctl)"]
        + (["reductions: scipy, numpy and sklearn run on one thread whatever t"]
           if red else [])
        + ([("distances: sklearn and the numpy matmul bound run BLAS on t threads, "
             "scipy's cdist/pdist and the write bound on one thread")] if dist else [])
        + ([("mahalanobis/max-margin: rowdot and chol run BLAS on t threads, scipy, "
             "einsum, the numpy loss formula and the read bound on one thread")]
           if stat else []))
    facts = H.machine_facts(status, args.threads, mode, threads_note)
    blas_line = openblas_line(args.keep_openblas_env)
    if args.verbose:
        lines = [s for s in H.header_lines(facts) if not s.startswith("WARNING")]
    else:
        lines = H.short_header_lines(facts)
    print("\n".join(lines))
    if busy is not None:
        print(f"busy    : another process spins on CPU {busy.cpu} for the whole run (--busy)")
    if blas_line:
        print(blas_line)
    print("\n".join(H.peer_status_line({p: status[p] for p in args.peers})))
    if args.verbose:
        print_verbose_peers(red, dist, stat)
    print(flush=True)

    t0 = time.perf_counter()
    progress = Progress(count_steps(args))
    rows, bound_rows = run_suite(args, mods, timing, progress)
    dist_rows = run_distances(args, mods, timing, progress)
    stat_rows = run_stats(args, mods, timing, progress)
    progress.close()
    elapsed = time.perf_counter() - t0
    recs = records(rows, dist_rows, stat_rows)

    print(R.family_tables(recs))
    if args.verbose:
        print("\nDetails (--verbose): every median, fastlin's minimum, the bounds\n")
        print_verbose_tables(args, peers, rows, bound_rows, dist_rows, stat_rows)

    targets, n_fail = None, 0
    if args.check:
        targets = evaluate_targets(rows, bound_rows, args, status, set(peers))
        if dist_rows:
            targets += evaluate_distance_targets(dist_rows, args, status, set(peers))
        if stat_rows:
            targets += evaluate_stat_targets(stat_rows, args, status, set(peers))
        text, n_fail = R.targets_report(targets, quick=args.quick or args.tiny)
        print()
        print(text)
    load_end = H.loadavg()
    print(f"\nsuite took {elapsed:.1f}s; 1-min load average {load_end} at the end")

    meta = run_meta(args, timing, argv)
    if args.json != "-":
        payload = {
            "meta": meta,
            "header": facts,
            "peers": status,
            "rows": [R.record_json(r) for r in recs],
            "results": [{**{k: v for k, v in r.items() if k not in ("fastlin", "peers")},
                         "fastlin": r["fastlin"].as_dict(),
                         "peers": {p: t.as_dict() for p, t in r["peers"].items()},
                         "ratios": {p: H.ratio(t, r["fastlin"]) for p, t in r["peers"].items()}}
                        for r in rows],
            "copy_bound": [{**{k: v for k, v in b.items() if k not in ("fastlin_out", "copy")},
                            "fastlin_out": b["fastlin_out"].as_dict(),
                            "copy": b["copy"].as_dict(),
                            "ratio": H.ratio(b["fastlin_out"], b["copy"])}
                           for b in bound_rows],
            "distances": [dist_json(r) for r in dist_rows],
            "mahalanobis_margin": [stat_json(r) for r in stat_rows],
            "elapsed_s": elapsed,
            "load_average_end": load_end,
        }
        if targets is not None:
            payload["targets"] = targets
        H.save_json(args.json, payload)
        print(f"results saved to {args.json} (compare two runs: python -m bench.compare "
              "A.json B.json)")
    if args.plot is not None:
        from . import plot
        plot.plot(recs, args.plot, facts, title_extra=plot.run_title(meta))
        print(f"chart saved to {args.plot}")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
