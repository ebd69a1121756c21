"""Thread scaling and thread-count invariance, one op at a time.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.scaling            # 1, 2, 4, ... up to the CPUs
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.scaling --threads 1,2,16 --quick

For each op the result at one thread is the reference; at every other thread
count the result must be bitwise the same (NaN in the same places) -- the
promise every fastlin kernel makes -- and its median time gives the speedup
over one thread.  torch's CPU op, where it has one and is installed, is timed
at the same thread counts (``torch.set_num_threads``), as the ratio
``torch / fastlin``.  The bench suite (``python -m bench.run``) is the place
for the full peer comparison; this script is short enough for a lent many-core
machine.
"""
import argparse
import os
import sys
import time

import numpy as np

import fastlin


def _median_ms(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def _same(a, b):
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def cases(quick):
    """(name, fastlin call, torch call or None), inputs made once."""
    rng = np.random.default_rng(0)
    out = []
    try:
        import torch
    except ImportError:
        torch = None

    def tt(a):
        return torch.from_numpy(a) if torch is not None else None

    for dt in (np.float64, np.float32):
        s = dt.__name__
        x = rng.standard_normal((4096, 4096)).astype(dt)
        g = rng.standard_normal(x.shape).astype(dt)
        y = fastlin.softmax(x, axis=-1)
        tx = tt(x)
        out.append((f"softmax 4096x4096 {s}", lambda x=x: fastlin.softmax(x, axis=-1),
                    (lambda tx=tx: torch.softmax(tx, -1)) if torch else None))
        out.append((f"softmax_backward 4096x4096 {s}",
                    lambda g=g, y=y: fastlin.softmax_backward(g, y, axis=-1), None))
        out.append((f"normalize 4096x4096 {s}", lambda x=x: fastlin.normalize(x, axis=-1),
                    (lambda tx=tx: torch.nn.functional.normalize(tx, dim=-1)) if torch else None))
        A = rng.standard_normal((4096, 64)).astype(dt)
        B = rng.standard_normal((4096, 64)).astype(dt)
        tA, tB = tt(A), tt(B)
        out.append((f"cdist 4096x64 {s}", lambda A=A, B=B: fastlin.cdist(A, B),
                    (lambda tA=tA, tB=tB: torch.cdist(tA, tB)) if torch else None))
        A5 = rng.standard_normal((2048, 512)).astype(dt)
        B5 = rng.standard_normal((2048, 512)).astype(dt)
        tA5, tB5 = tt(A5), tt(B5)
        out.append((f"cdist 2048x512 {s}", lambda A=A5, B=B5: fastlin.cdist(A, B),
                    (lambda tA=tA5, tB=tB5: torch.cdist(tA, tB)) if torch else None))
        if not quick:
            D5 = fastlin.cdist(A5, B5)
            G5 = rng.standard_normal(D5.shape).astype(dt)
            tw = None
            if torch is not None:
                ta = torch.from_numpy(A5).requires_grad_()
                tb = torch.from_numpy(B5).requires_grad_()
                td = torch.cdist(ta, tb)
                tg = torch.from_numpy(G5)

                def tw(td=td, ta=ta, tb=tb, tg=tg):
                    return torch.autograd.grad(td, (ta, tb), tg, retain_graph=True)
            out.append((f"cdist_backward(dist=) 2048x512 {s}",
                        lambda G=G5, A=A5, B=B5, D=D5: fastlin.cdist_backward(G, A, B, dist=D),
                        tw))
            P = rng.standard_normal((8192, 64)).astype(dt)
            # (no torch peer: torch.pdist takes ~5 s a call here)
            out.append((f"pdist 8192x64 {s}", lambda P=P: fastlin.pdist(P), None))
        X = rng.standard_normal((1_000_000, 16)).astype(dt)
        mu = X[:1000].mean(0)
        cov = np.cov(X[:10000].T).astype(dt)
        out.append((f"mahalanobis 1000000x16 {s}", lambda X=X, mu=mu, cov=cov:
                    fastlin.mahalanobis(X, mu, cov), None))
        if not quick:
            gm = rng.standard_normal(X.shape[0]).astype(dt)
            out.append((f"mahalanobis_backward 1000000x16 {s}",
                        lambda g=gm, X=X, mu=mu, cov=cov: fastlin.mahalanobis_backward(g, X, mu, cov),
                        None))
        pos = rng.standard_normal(65536).astype(dt)
        neg = rng.standard_normal((65536, 64)).astype(dt)
        out.append((f"max_margin_loss 65536x64 {s}",
                    lambda p=pos, n=neg: fastlin.max_margin_loss(p, n), None))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts (default 1, 2, 4, ... up to the CPUs)")
    ap.add_argument("--reps", type=int, default=7, help="timed calls per measurement")
    ap.add_argument("--quick", action="store_true", help="fewer ops (no backward passes, no pdist)")
    args = ap.parse_args(argv)
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.threads:
        threads = [int(t) for t in args.threads.split(",")]
    else:
        threads, t = [], 1
        while t < ncpu:
            threads.append(t)
            t *= 2
        threads.append(ncpu)
    try:
        import torch
    except ImportError:
        torch = None
    print(f"fastlin {fastlin.__version__}; {ncpu} usable CPUs; threads {threads}; "
          f"torch {'not installed' if torch is None else torch.__version__}; "
          f"median of {args.reps} calls", flush=True)
    cols = "".join(f"{'t=' + str(t):>24}" for t in threads)
    print(f"{'op':40}{cols}   bitwise")
    print(f"{'':40}" + "".join(f"{'ms (x t=1, torch/fl)':>24}" for _ in threads))
    failures = 0
    for name, fl, tch in cases(args.quick):
        with fastlin.threads(1):
            ref = fl()
        cells, same = [], True
        base = None
        for t in threads:
            with fastlin.threads(t):
                got = fl()
                same = same and _same(ref, got)
                ms = _median_ms(fl, args.reps)
            base = base or ms
            cell = f"{ms:.1f} ({base / ms:.1f}x"
            if tch is not None:
                torch.set_num_threads(t)
                cell += f", {_median_ms(tch, args.reps) / ms:.2f}"
            cells.append(cell + ")")
        failures += not same
        print(f"{name:40}" + "".join(f"{c:>24}" for c in cells)
              + ("   same" if same else "   DIFFERENT"), flush=True)
    if failures:
        print(f"{failures} op(s) gave results that depend on the thread count")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
