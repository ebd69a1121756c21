"""Pairwise reductions: ``python -m bench.pairwise [--quick] [...]``.

Times fastlin's reductions over the distance matrix that never build it --
the k nearest neighbours (``cdist_topk``), the point-cloud Chamfer distance
(``cdist_topk`` both ways, with ``cdist_topk_backward``) and the soft-min
(``cdist_logsumexp``, with ``cdist_logsumexp_backward``) -- against
scikit-learn, faiss, torch and pykeops in their best configurations, in the
table style of ``bench.run``; measures fastlin's peak memory per call in a
fresh subprocess; prints PASS/FAIL for the targets and saves JSON::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.pairwise --quick

torch reads ``THP_MEM_ALLOC_ENABLE`` when it is imported (huge pages for its
large CPU buffers: its best configuration), so this script re-executes itself
with the variable set, as ``bench.run`` does.
"""
import os
import sys


def _reexec():
    """Re-run this process with THP_MEM_ALLOC_ENABLE=1 unless it is set."""
    if "THP_MEM_ALLOC_ENABLE" in os.environ or "--mem-child" in sys.argv:
        return
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1")
    argv = list(getattr(sys, "orig_argv", None) or
                [sys.executable, "-m", "bench.pairwise", *sys.argv[1:]])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    _reexec()   # before torch is imported

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

# Benchmark the installed fastlin, not the checkout's source tree (as bench.run).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]

import fastlin  # noqa: E402

from . import harness as H  # noqa: E402

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "results_pairwise.json")

SCALE = -10.0                 # soft-min temperature 0.1: scale = -1 / 0.1
CHUNK_BYTES = 256 << 20       # torch: rows per chunk so a chunk matrix is ~256 MB
MEM_SLACK = 64 << 20          # target: peak growth <= outputs + 64 MiB
KEOPS_MAX_WORK = 1e10         # keops: time a slice of the queries above mA*mB*n of this
KEOPS_SLICE_PAIRS = 1e8       # ... the slice: about this many pairs, time scaled by mA/rows

NORMAL_TIMING = (0.3, 3, 2000)   # (target seconds of timed calls, min reps, max reps)
QUICK_TIMING = (0.0, 3, 3)

OPS = ("topk", "chamfer", "chamfer+bwd", "lse", "lse+bwd")
PEERS = ("sklearn", "faiss", "torch", "keops")
INSTALL = {"sklearn": "scikit-learn", "faiss": "faiss-cpu", "torch": "torch",
           "keops": "pykeops"}


class Workload:
    def __init__(self, key, kind, mA, mB, n, ops):
        self.key, self.kind, self.mA, self.mB, self.n = key, kind, mA, mB, n
        self.ops = ops      # [(op name, k or None)]

    @property
    def shape(self):
        return f"{self.mA}x{self.n} vs {self.mB}x{self.n}"


def _workloads(quick):
    if quick:
        return [Workload("knn20000x64", "knn", 2000, 20000, 64,
                         [("topk", 1), ("topk", 10), ("topk", 100)]),
                Workload("chamfer5000x3", "chamfer", 5000, 5000, 3,
                         [("chamfer", 1), ("chamfer+bwd", 1)]),
                Workload("softmin5000x3", "softmin", 5000, 5000, 3,
                         [("lse", None), ("lse+bwd", None)]),
                Workload("softmin2500x64", "softmin", 2500, 2500, 64,
                         [("lse", None), ("lse+bwd", None)])]
    return [Workload("knn100000x64", "knn", 10000, 100000, 64,
                     [("topk", 1), ("topk", 10), ("topk", 100)]),
            Workload("chamfer20000x3", "chamfer", 20000, 20000, 3,
                     [("chamfer", 1), ("chamfer+bwd", 1)]),
            Workload("softmin20000x3", "softmin", 20000, 20000, 3,
                     [("lse", None), ("lse+bwd", None)]),
            Workload("softmin10000x64", "softmin", 10000, 10000, 64,
                     [("lse", None), ("lse+bwd", None)])]


def make_inputs(wl, dtype):
    """XA (queries), XB (references), standard normal, fixed seed per workload;
    the all-ones gradients of the backward rows."""
    seed = sum(map(ord, wl.key))
    rng = np.random.default_rng(seed)
    XA = rng.standard_normal((wl.mA, wl.n)).astype(dtype)
    XB = rng.standard_normal((wl.mB, wl.n)).astype(dtype)
    return XA, XB


# --------------------------------------------------------------------------
# fastlin's calls
# --------------------------------------------------------------------------

def fastlin_call(op, k, XA, XB):
    """The fastlin callable of a row; it returns everything it computes."""
    dt = XA.dtype
    if op == "topk":
        return lambda: fastlin.cdist_topk(XA, XB, k)
    if op == "chamfer":
        return lambda: (fastlin.cdist_topk(XA, XB, 1), fastlin.cdist_topk(XB, XA, 1))
    if op == "chamfer+bwd":
        gA1, gB1 = np.ones((XA.shape[0], 1), dt), np.ones((XB.shape[0], 1), dt)

        def chamfer_bwd():
            dAB, iAB = fastlin.cdist_topk(XA, XB, 1)
            dBA, iBA = fastlin.cdist_topk(XB, XA, 1)
            gA, gB = fastlin.cdist_topk_backward(gA1, XA, XB, iAB, "euclidean", dist=dAB)
            gB2, gA2 = fastlin.cdist_topk_backward(gB1, XB, XA, iBA, "euclidean", dist=dBA)
            gA += gA2
            gB += gB2
            return dAB, iAB, dBA, iBA, gA, gB
        return chamfer_bwd
    if op == "lse":
        return lambda: fastlin.cdist_logsumexp(XA, XB, "sqeuclidean", scale=SCALE)
    if op == "lse+bwd":
        g = np.ones(XA.shape[0], dt)

        def lse_bwd():
            lse = fastlin.cdist_logsumexp(XA, XB, "sqeuclidean", scale=SCALE)
            return (lse,) + tuple(fastlin.cdist_logsumexp_backward(
                g, XA, XB, "sqeuclidean", scale=SCALE, lse=lse))
        return lse_bwd
    raise ValueError(op)


# --------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------

def load_peers(wanted):
    mods, status = {}, {}
    for name in wanted:
        try:
            if name == "sklearn":
                import sklearn
                from sklearn.neighbors import NearestNeighbors
                mods[name] = NearestNeighbors
                status[name] = sklearn.__version__
            elif name == "faiss":
                import faiss
                mods[name] = faiss
                status[name] = getattr(faiss, "__version__", "unknown")
            elif name == "torch":
                import torch
                mods[name] = torch
                status[name] = torch.__version__
            elif name == "keops":
                import pykeops
                from pykeops.numpy import LazyTensor
                mods[name] = LazyTensor
                status[name] = pykeops.__version__
        except ImportError:
            status[name] = f"not installed (pip install {INSTALL[name]})"
        except Exception as exc:   # a broken install says why
            status[name] = f"unavailable ({type(exc).__name__}: {exc})"
    return mods, status


def _chunk_rows(mB, itemsize):
    return max(1, CHUNK_BYTES // (mB * itemsize))


def _torch_topk(torch, a, b, k):
    rows = _chunk_rows(b.shape[0], a.element_size())
    vs, ids = [], []
    for s in range(0, a.shape[0], rows):
        v, i = torch.topk(torch.cdist(a[s:s + rows], b), k, dim=1, largest=False)
        vs.append(v)
        ids.append(i)
    return torch.cat(vs), torch.cat(ids)


def _torch_chamfer_nn(torch, a, b):
    """Both directions' nearest neighbours from one chunked sweep: the row
    minima of each chunk of cdist(a, b) and a running column minimum."""
    rows = _chunk_rows(b.shape[0], a.element_size())
    vr, ir = [], []
    vc = ic = None
    for s in range(0, a.shape[0], rows):
        d = torch.cdist(a[s:s + rows], b)
        v, i = d.min(dim=1)
        vr.append(v)
        ir.append(i)
        cv, ci = d.min(dim=0)
        if vc is None:
            vc, ic = cv, ci + s
        else:
            better = cv < vc
            vc = torch.where(better, cv, vc)
            ic = torch.where(better, ci + s, ic)
    return torch.cat(vr), torch.cat(ir), vc, ic


def _torch_lse(torch, a, b):
    rows = _chunk_rows(b.shape[0], a.element_size())
    return torch.cat([torch.logsumexp(SCALE * torch.cdist(a[s:s + rows], b) ** 2, dim=1)
                      for s in range(0, a.shape[0], rows)])


def _torch_lse_bwd(torch, a, b):
    """Forward and autograd backward chunk by chunk (the rows' terms are
    independent, so the chunks' gradients add up): memory stays one chunk's
    graph, torch's best configuration."""
    rows = _chunk_rows(b.shape[0], a.element_size())
    bb = b.detach().requires_grad_()
    lses, gas, gb = [], [], None
    for s in range(0, a.shape[0], rows):
        ac = a[s:s + rows].detach().requires_grad_()
        lse = torch.logsumexp(SCALE * torch.cdist(ac, bb) ** 2, dim=1)
        ga, gbc = torch.autograd.grad(lse, (ac, bb), torch.ones_like(lse))
        lses.append(lse.detach())
        gas.append(ga)
        gb = gbc if gb is None else gb.add_(gbc)
    return torch.cat(lses), torch.cat(gas), gb


def peer_calls(name, mod, op, k, XA, XB):
    """``(callable, scale)`` of a peer for a row, or None when it has no such
    call (scale != 1: the callable does a slice of the rows, its time is
    multiplied by scale)."""
    f32 = XA.dtype == np.float32
    if name == "sklearn":
        NN = mod
        if op == "topk":
            nn = NN(n_neighbors=k, algorithm="brute").fit(XB)
            return (lambda: nn.kneighbors(XA, k)), 1.0
        if op == "chamfer":
            nnB = NN(n_neighbors=1, algorithm="brute").fit(XB)
            nnA = NN(n_neighbors=1, algorithm="brute").fit(XA)
            return (lambda: (nnB.kneighbors(XA, 1), nnA.kneighbors(XB, 1))), 1.0
        return None
    if name == "faiss":
        if not f32 or op not in ("topk", "chamfer"):
            return None
        faiss = mod
        iB = faiss.IndexFlatL2(XB.shape[1])
        iB.add(XB)
        if op == "topk":
            return (lambda: iB.search(XA, k)), 1.0
        iA = faiss.IndexFlatL2(XA.shape[1])
        iA.add(XA)
        return (lambda: (iB.search(XA, 1), iA.search(XB, 1))), 1.0
    if name == "torch":
        torch = mod
        a, b = torch.from_numpy(XA), torch.from_numpy(XB)
        if op == "topk":
            return (lambda: _torch_topk(torch, a, b, k)), 1.0
        if op == "chamfer":
            def chamfer():
                with torch.no_grad():
                    return _torch_chamfer_nn(torch, a, b)
            return chamfer, 1.0
        if op == "chamfer+bwd":
            def chamfer_bwd():
                with torch.no_grad():
                    _, iAB, _, iBA = _torch_chamfer_nn(torch, a, b)
                ag, bg = a.detach().requires_grad_(), b.detach().requires_grad_()
                loss = ((ag - bg[iAB]).norm(dim=1).sum()
                        + (bg - ag[iBA]).norm(dim=1).sum())
                return torch.autograd.grad(loss, (ag, bg))
            return chamfer_bwd, 1.0
        if op == "lse":
            def lse():
                with torch.no_grad():
                    return _torch_lse(torch, a, b)
            return lse, 1.0
        if op == "lse+bwd":
            return (lambda: _torch_lse_bwd(torch, a, b)), 1.0
        return None
    if name == "keops":
        LT = mod
        if op not in ("topk", "chamfer", "lse"):
            return None
        mA, mB, n = XA.shape[0], XB.shape[0], XA.shape[1]
        scale, A = 1.0, XA
        if op == "topk" and mA * mB * n > KEOPS_MAX_WORK:
            rows = max(1, int(KEOPS_SLICE_PAIRS // mB))
            A = np.ascontiguousarray(XA[:rows])
            scale = mA / rows

        def sq(P, Q):
            return ((LT(P[:, None, :]) - LT(Q[None, :, :])) ** 2).sum(-1)
        if op == "topk":
            return (lambda: sq(A, XB).Kmin_argKmin(k, dim=1)), scale
        if op == "chamfer":
            return (lambda: (sq(XA, XB).Kmin_argKmin(1, dim=1),
                             sq(XB, XA).Kmin_argKmin(1, dim=1))), 1.0
        return (lambda: (SCALE * sq(XA, XB)).logsumexp(dim=1)), 1.0
    raise ValueError(name)


@contextlib.contextmanager
def thread_count(t, mods):
    """fastlin, torch, faiss on t threads; every BLAS and OpenMP library
    threadpoolctl finds (scikit-learn's, faiss's, keops's) capped at t."""
    torch = mods.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(limits=t)
    except ImportError:
        limits = contextlib.nullcontext()
    try:
        with limits:
            if torch is not None:
                torch.set_num_threads(t)
            if "faiss" in mods:
                mods["faiss"].omp_set_num_threads(t)
            with fastlin.threads(t):
                yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


# --------------------------------------------------------------------------
# Peak memory: one fresh subprocess per row
# --------------------------------------------------------------------------

def _proc_status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) * 1024
    return out


def _nbytes(r):
    if isinstance(r, np.ndarray):
        return r.nbytes
    if isinstance(r, (tuple, list)):
        return sum(_nbytes(x) for x in r)
    return 0


def mem_child(spec):
    """Run in a fresh process: make the row's inputs, warm the op up on a
    slice (libraries, SIMD dispatch, thread pool), reset the peak RSS
    (/proc/self/clear_refs, 5), make one call, report the peak RSS growth."""
    spec = json.loads(spec)
    wl = next(w for w in _workloads(spec["quick"]) if w.key == spec["key"])
    XA, XB = make_inputs(wl, np.dtype(spec["dtype"]))
    op, k, t = spec["op"], spec["k"], spec["threads"]
    sA, sB = XA[:min(wl.mA, 1024)].copy(), XB[:min(wl.mB, 4096)].copy()
    with fastlin.threads(t):
        fastlin_call(op, k, sA, sB)()
    del sA, sB
    gc.collect()
    fn = fastlin_call(op, k, XA, XB)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as exc:
        print(json.dumps({"error": f"cannot reset the peak RSS ({exc})"}))
        return 0
    before = _proc_status()["VmRSS"]
    with fastlin.threads(t):
        r = fn()
    peak = _proc_status()["VmHWM"]
    print(json.dumps({"rss_before": before, "peak_rss": peak,
                      "peak_growth": peak - before, "out_bytes": _nbytes(r)}))
    return 0


def measure_memory(wl, dtype, t, op, k, quick):
    spec = json.dumps({"key": wl.key, "quick": quick, "dtype": dtype, "threads": t,
                       "op": op, "k": k})
    try:
        p = subprocess.run([sys.executable, "-m", "bench.pairwise", "--mem-child", spec],
                           cwd=_ROOT, capture_output=True, text=True, timeout=600)
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if "error" not in res:
        res["ok"] = res["peak_growth"] <= res["out_bytes"] + MEM_SLACK
    return res


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------

def _scaled(tm, scale):
    if scale == 1.0 or not tm.ok:
        return tm
    return H.Timing(tm.median * scale, tm.min * scale, tm.reps, tm.error)


def _mib(b):
    return "-" if b is None else f"{b / 2**20:.1f}"


def run(args, mods, timing):
    target, lo, hi = timing
    rows = []
    wls = [w for w in _workloads(args.quick)
           if not args.workloads or w.key in args.workloads]
    for w in wls:
        w.ops = [(o, k) for o, k in w.ops if (args.ops is None or o in args.ops)
                 and (o != "topk" or args.k is None or k in args.k)]
    total = sum(len(w.ops) for w in wls) * len(args.dtypes) * len(args.threads)
    done, t0 = 0, time.perf_counter()
    for wl in wls:
        for dtype in args.dtypes:
            XA, XB = make_inputs(wl, np.dtype(dtype))
            for t in args.threads:
                for op, k in wl.ops:
                    done += 1
                    sys.stderr.write(f"[{done}/{total} {time.perf_counter() - t0:6.1f}s] "
                                     f"{wl.key} {dtype} t={t} {op}"
                                     f"{'' if k is None or op != 'topk' else f' k={k}'}\n")
                    sys.stderr.flush()
                    row = {"workload": wl.key, "kind": wl.kind, "shape": wl.shape,
                           "mA": wl.mA, "mB": wl.mB, "n": wl.n, "dtype": dtype,
                           "threads": t, "op": op, "k": k if op == "topk" else None,
                           "peers": {}, "scaled": {}}
                    with thread_count(t, mods):
                        row["fastlin"] = H.time_call(fastlin_call(op, k, XA, XB), None,
                                                     target, lo, hi)
                        for name in args.peers:
                            if name not in mods:
                                continue
                            call = peer_calls(name, mods[name], op, k, XA, XB)
                            if call is None:
                                row["peers"][name] = None
                                continue
                            fn, scale = call
                            row["peers"][name] = _scaled(
                                H.time_call(fn, None, target, 1, hi), scale)
                            if scale != 1.0:
                                row["scaled"][name] = scale
                            del fn, call
                            gc.collect()
                    if args.memory and (not args.quick or t == max(args.threads)):
                        row["memory"] = measure_memory(wl, dtype, t, op, k, args.quick)
                    else:
                        row["memory"] = None
                    rows.append(row)
            del XA, XB
    return rows


def _opname(r):
    return r["op"] if r["op"] != "topk" else f"topk k={r['k']}"


def results_table(rows, peers):
    cols = ["workload", "dtype", "thr", "op", "fastlin ms", "(min)", "peak MiB",
            "out MiB", "mem"]
    for p in peers:
        cols += [f"{p} ms", f"{p}/fl"]
    out = []
    for r in rows:
        fl, m = r["fastlin"], r["memory"] or {}
        cells = [r["workload"], r["dtype"], str(r["threads"]), _opname(r), H.fmt_ms(fl),
                 H.fmt_ms(H.Timing(fl.min, fl.min, fl.reps, fl.error)),
                 _mib(m.get("peak_growth")), _mib(m.get("out_bytes")),
                 "-" if "ok" not in m else ("ok" if m["ok"] else "OVER")]
        for p in peers:
            tm = r["peers"].get(p)
            mark = "~" if p in r["scaled"] else ""
            cells += [H.fmt_ms(tm) + (mark if tm is not None and tm.ok else ""),
                      H.fmt_ratio(H.ratio(tm, fl))]
        out.append(cells)
    return H.format_table(cols, out)


def evaluate_targets(rows, status, available):
    res = []

    def ratio_target(name, need, peer, match):
        sel = [r for r in rows if match(r)]
        t = {"target": name, "need": f">= {need:g}x", "rows": len(sel), "worst": None,
             "where": ""}
        if peer not in available:
            t.update(status="SKIP", where=f"{peer} {status.get(peer, 'not run')}")
        elif not sel:
            t.update(status="SKIP", where="no rows measured (workload/dtype not run)")
        else:
            rs = [(H.ratio(r["peers"].get(peer), r["fastlin"]), r) for r in sel]
            rs = [(math.nan if not r["fastlin"].ok else x, r) for x, r in rs]
            worst, wr = min(rs, key=lambda p: -1 if math.isnan(p[0]) else p[0])
            t["worst"] = None if math.isnan(worst) else f"{worst:.2f}x"
            t["where"] = f"{wr['workload']} {wr['dtype']} t={wr['threads']} {_opname(wr)}"
            t["status"] = "PASS" if not math.isnan(worst) and worst >= need else "FAIL"
        res.append(t)

    ratio_target("cdist_topk >= 2x sklearn brute kneighbors (every kNN row: k = 1, 10, "
                 "100, both dtypes, every thread count)", 2.0, "sklearn",
                 lambda r: r["op"] == "topk")
    ratio_target("cdist_topk >= 1x faiss IndexFlatL2.search (kNN k = 10, float32, every "
                 "thread count)", 1.0, "faiss",
                 lambda r: r["op"] == "topk" and r["k"] == 10 and r["dtype"] == "float32")
    ratio_target("cdist_logsumexp >= 3x torch logsumexp(scale*cdist**2) (every soft-min "
                 "row)", 3.0, "torch", lambda r: r["op"] == "lse")
    ratio_target("cdist_logsumexp + backward >= 3x torch's formula + autograd (every "
                 "soft-min row)", 3.0, "torch", lambda r: r["op"] == "lse+bwd")
    mem = [r for r in rows if r["memory"] is not None]
    t = {"target": "fastlin peak RSS growth of the call <= its outputs + 64 MiB (every row "
                   "measured)", "need": "<= out+64MiB", "rows": len(mem), "worst": None,
         "where": ""}
    bad = [r for r in mem if "ok" not in r["memory"]]
    good = [r for r in mem if "ok" in r["memory"]]
    if not good:
        t.update(status="SKIP", where=("not measured (--no-memory)" if not mem else
                                       bad[0]["memory"].get("error", "error")))
    else:
        wr = max(good, key=lambda r: r["memory"]["peak_growth"] - r["memory"]["out_bytes"])
        excess = wr["memory"]["peak_growth"] - wr["memory"]["out_bytes"]
        t["worst"] = f"out{'+' if excess >= 0 else '-'}{abs(excess) / 2**20:.1f}MiB"
        t["where"] = f"{wr['workload']} {wr['dtype']} t={wr['threads']} {_opname(wr)}"
        t["status"] = "PASS" if all(r["memory"]["ok"] for r in good) and not bad else "FAIL"
        if bad:
            t["where"] += f"; {len(bad)} row(s) not measured"
    res.append(t)
    return res


def targets_table(results):
    cols = ["", "target", "need", "worst", "at", "rows"]
    out = [[t["status"], t["target"], t["need"], t["worst"] or "-", t["where"],
            str(t["rows"])] for t in results]
    return H.format_table(cols, out, right={5})


def _row_json(r):
    d = {k: v for k, v in r.items() if k not in ("fastlin", "peers")}
    d["fastlin"] = r["fastlin"].as_dict()
    d["peers"] = {p: None if tm is None else tm.as_dict() for p, tm in r["peers"].items()}
    d["ratios"] = {p: H.ratio(tm, r["fastlin"]) for p, tm in r["peers"].items()}
    return d


def parse_args(argv=None):
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        ncpu = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        prog="python -m bench.pairwise",
        description="Benchmark fastlin.cdist_topk / cdist_logsumexp (and their backward "
                    "passes) against scikit-learn, faiss, torch and pykeops. Ratios are "
                    "peer/fastlin: >1 means fastlin is faster.")
    p.add_argument("--quick", action="store_true",
                   help="smaller workloads (kNN 2000 queries x 20000 references, Chamfer "
                        "5000x3, soft-min 5000x3 and 2500x64), warm-up + 3 calls, no keops "
                        "unless named in --peers, memory at the largest thread count only")
    p.add_argument("--threads", default=None,
                   help=f"comma-separated thread counts (default 1,{ncpu} = 1 and all)")
    p.add_argument("--dtypes", default="float32,float64", help="default float32,float64")
    p.add_argument("--peers", default=None,
                   help="comma-separated of sklearn,faiss,torch,keops (default: all "
                        "installed; --quick: all but keops)")
    p.add_argument("--workloads", default=None,
                   help="comma-separated workload keys (default all; full: knn100000x64, "
                        "chamfer20000x3, softmin20000x3, softmin10000x64; quick: "
                        "knn20000x64, chamfer5000x3, softmin5000x3, softmin2500x64)")
    p.add_argument("--ops", default=None,
                   help="comma-separated ops to run (default all): topk, chamfer, "
                        "chamfer+bwd, lse, lse+bwd")
    p.add_argument("--k", default=None,
                   help="comma-separated k of the kNN rows to run (default 1,10,100)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory subprocesses")
    p.add_argument("--json", default=DEFAULT_JSON,
                   help="where to save results (default bench/results_pairwise.json, "
                        "git-ignored; - skips)")
    args = p.parse_args(argv)
    args.threads = ([int(s) for s in args.threads.split(",")] if args.threads
                    else sorted({1, ncpu}))
    args.dtypes = [s.strip() for s in args.dtypes.split(",") if s.strip()]
    bad = [d for d in args.dtypes if d not in ("float32", "float64")]
    if bad:
        p.error(f"unknown dtype {bad}")
    if args.peers is None:
        args.peers = [q for q in PEERS if not (args.quick and q == "keops")]
    else:
        args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
        bad = [q for q in args.peers if q not in PEERS]
        if bad:
            p.error(f"unknown peer {bad}; known: {', '.join(PEERS)}")
    args.ops = None if args.ops is None else [s.strip() for s in args.ops.split(",")]
    bad = [o for o in args.ops or () if o not in OPS]
    if bad:
        p.error(f"unknown op {bad}; known: {', '.join(OPS)}")
    args.k = None if args.k is None else [int(s) for s in args.k.split(",")]
    if args.workloads:
        args.workloads = [s.strip() for s in args.workloads.split(",")]
        known = [w.key for w in _workloads(args.quick)]
        bad = [w for w in args.workloads if w not in known]
        if bad:
            p.error(f"unknown workload {bad}; known{' (--quick)' if args.quick else ''}: "
                    f"{', '.join(known)}")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--mem-child"]:
        return mem_child(argv[1])
    args = parse_args(argv)
    timing = QUICK_TIMING if args.quick else NORMAL_TIMING
    warn = H.openblas_env_warning()
    if warn:
        print(warn, file=sys.stderr)
    mods, status = load_peers(args.peers)
    if "keops" not in args.peers:
        status["keops"] = "not run (--quick; name it in --peers to time it)"
    peers = [q for q in args.peers if q in mods]
    target, lo, hi = timing
    mode = (("quick" if args.quick else "full") + ": warm-up call, then "
            + (f"{lo} calls" if lo == hi else
               f"N calls, N in [{lo}, {hi}] (peers [1, {hi}]) for ~{target:g}s of timing")
            + "; median (and fastlin's min) reported; fastlin's peak memory in a fresh "
              "subprocess per row" + (" at the largest thread count" if args.quick else ""))
    threads_note = ("fastlin.threads(t), torch.set_num_threads(t), faiss.omp_set_num_threads(t),"
                    " every BLAS/OpenMP library threadpoolctl finds capped at t (scikit-learn, "
                    "faiss, keops)")
    facts = H.machine_facts({"torch": status.get("torch", "not run"),
                             "sklearn": status.get("sklearn", "not run")},
                            args.threads, mode, threads_note)
    lines = H.header_lines(facts)
    lines[0] = "fastlin pairwise reductions benchmark  (python -m bench.pairwise)"
    print("\n".join(lines))
    print("peers   : " + "; ".join(f"{q} {status.get(q, 'not run')}" for q in PEERS))
    print("          sklearn = NearestNeighbors(algorithm='brute').fit(XB) outside timing, "
          "kneighbors(XA, k) timed (Chamfer: both directions, both fits outside)")
    print("          faiss = IndexFlatL2 add outside timing, search(XA, k) timed; float32 only."
          " Its distances are squared L2 from a GEMM expansion (|a|^2 + |b|^2 - 2 a.b), NOT "
          "exact (near ties can swap neighbours); fastlin's are exact (bitwise cdist's)")
    print("          torch = torch.cdist + torch.topk(largest=False) in row chunks of ~256 MB "
          "(Chamfer: one chunked sweep, row min and running column min; +bwd: the pairs' "
          "distances re-gathered and autograd); soft-min = torch.logsumexp(scale * "
          "torch.cdist(A, B)**2, dim=1) chunked, +bwd: forward and autograd chunk by chunk")
    print("          keops = pykeops.numpy LazyTensor squared distances, Kmin_argKmin / "
          "logsumexp, forward only; '~' = timed on the first "
          f"{KEOPS_SLICE_PAIRS:.0e} / mB queries and scaled to all (kNN full size)")
    print(f"          soft-min: sqeuclidean, scale = {SCALE:g} (temperature 0.1); Chamfer: "
          "euclidean, k = 1 both ways; +bwd rows: forward and backward with all-ones "
          "gradients, fastlin passes dist= / lse= from its forward")
    print(flush=True)

    t0 = time.perf_counter()
    rows = run(args, mods, timing)
    elapsed = time.perf_counter() - t0

    print("Median times; ratio = peer / fastlin (>1: fastlin faster); '-' = peer has no such "
          "call (faiss: float32 kNN/Chamfer only; sklearn, keops: no backward)")
    print("  peak MiB = fastlin's peak RSS growth during one call (fresh subprocess: inputs "
          "made, op warmed up on a slice, /proc/self/clear_refs reset, VmHWM after the call "
          "- VmRSS before); out MiB = the bytes of the arrays the call returns; mem = ok "
          "when peak <= out + 64 MiB")
    print(results_table(rows, peers))
    targets = evaluate_targets(rows, status, set(peers))
    print()
    print("Targets (worst matching row)" + (": --quick runs smaller workloads than the "
                                            "targets are set for, indicative only"
                                            if args.quick else ":"))
    print(targets_table(targets))
    n_fail = sum(t["status"] == "FAIL" for t in targets)
    n_pass = sum(t["status"] == "PASS" for t in targets)
    load_end = H.loadavg()
    print(f"\n{n_pass} passed, {n_fail} failed, "
          f"{sum(t['status'] == 'SKIP' for t in targets)} skipped; took {elapsed:.1f}s; "
          f"1-min load average {load_end} at the end")
    if args.json != "-":
        H.save_json(args.json, {"header": facts, "peers": status,
                                "scale": SCALE, "results": [_row_json(r) for r in rows],
                                "targets": targets, "elapsed_s": elapsed,
                                "load_average_end": load_end})
        print(f"results saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
