"""Size sweep: where small and medium calls stand, at 1 thread and at all.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.sweep            # every family
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.sweep --quick    # fewer sizes
    python -m bench.sweep --ops cdist,softmax --dtypes float32 --busy

For every op and backward, over a range of sizes (cdist, pdist and their
backward passes from 8 to 4096 points at d = 32 and 64; the softmax family,
normalize and their backward passes from 1 to 65536 rows of 256; mahalanobis
from 100 to 1e6 points at d = 16; the margin loss from 16 to 65536 rows of 64;
both dtypes), fastlin's median time at one thread and at all threads, and
torch's at the same counts where torch has the op.  Two verdicts per row:

* ``all>1``: the default (all threads) is more than 5% slower than one thread;
* ``<torch``: fastlin is slower than torch at the same thread count, from 64
  points or 16 rows up (smaller calls are per-call overhead: the first table).

The first table is that per-call overhead: tiny calls against scipy's (and
torch's) same function, at the default thread count.

``--busy`` keeps one core busy with another process meanwhile (as
``bench.run --busy``).  ``--plot FILE`` (.png or .svg, matplotlib) draws
the sweep: one panel per op against size, on log axes, torch's time over
fastlin's at one thread (thin) and at all (thick), and fastlin's one-thread
time over its all-thread time (dotted): above 1, fastlin (or its threads)
wins; ``--json FILE`` saves the rows.  Timings are medians of calls repeated for ~40 ms
each, measured in this process; nothing here is a test.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

import fastlin

from .harness import format_table

TARGET_S = 0.04
SETTLE_S = 0.02


def _median_s(fn):
    """Median of calls repeated for about TARGET_S, after one warm-up call."""
    time.sleep(SETTLE_S)
    fn()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    reps = int(min(2000, max(5, TARGET_S / max(first, 1e-7))))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _sizes(quick, full, short):
    return short if quick else full


def cases(ops, dtypes, quick):
    """(op, dtype, size label, work unit count, fastlin call, torch call or None)."""
    torch = _torch()
    rng = np.random.default_rng(0)
    tt = (lambda a: torch.from_numpy(a)) if torch is not None else None
    out = []
    for dt in dtypes:
        s = np.dtype(dt).name
        for m in _sizes(quick, [8, 32, 64, 128, 256, 512, 1024, 2048, 4096], [8, 64, 512, 4096]):
            for d in (32, 64):
                A = rng.standard_normal((m, d)).astype(dt)
                B = rng.standard_normal((m, d)).astype(dt)
                if "cdist" in ops:
                    tc = ((lambda a=tt(A), b=tt(B): torch.cdist(a, b))
                          if torch is not None else None)
                    out.append(("cdist", s, f"{m}x{d}", m, lambda A=A, B=B: fastlin.cdist(A, B), tc))
                if "cdist_backward" in ops:
                    D = fastlin.cdist(A, B)
                    G = rng.standard_normal(D.shape).astype(dt)
                    tw = None
                    if torch is not None:
                        ta, tb = tt(A).requires_grad_(), tt(B).requires_grad_()
                        td, tg = torch.cdist(ta, tb), tt(G)

                        def tw(td=td, ta=ta, tb=tb, tg=tg):
                            return torch.autograd.grad(td, (ta, tb), tg, retain_graph=True)
                    out.append(("cdist_backward(dist=)", s, f"{m}x{d}", m,
                                lambda G=G, A=A, B=B, D=D: fastlin.cdist_backward(G, A, B, dist=D),
                                tw))
                if "pdist" in ops:
                    tp = ((lambda a=tt(A): torch.pdist(a)) if torch is not None and m <= 2048
                          else None)
                    out.append(("pdist", s, f"{m}x{d}", m, lambda A=A: fastlin.pdist(A), tp))
                if "pdist_backward" in ops:
                    g = rng.standard_normal(m * (m - 1) // 2).astype(dt)
                    out.append(("pdist_backward", s, f"{m}x{d}", m,
                                lambda g=g, A=A: fastlin.pdist_backward(g, A), None))
        rows_list = _sizes(quick, [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536], [1, 16, 256, 4096, 65536])
        for r in rows_list:
            x = rng.standard_normal((r, 256)).astype(dt)
            g = rng.standard_normal(x.shape).astype(dt)
            y = fastlin.softmax(x, axis=-1)
            ly = fastlin.log_softmax(x, axis=-1)
            tx = tt(x) if torch is not None else None
            F = torch.nn.functional if torch is not None else None
            row = [
                ("softmax", lambda x=x: fastlin.softmax(x, axis=-1),
                 (lambda tx=tx: torch.softmax(tx, -1)) if torch else None),
                ("log_softmax", lambda x=x: fastlin.log_softmax(x, axis=-1),
                 (lambda tx=tx: torch.log_softmax(tx, -1)) if torch else None),
                ("logsumexp", lambda x=x: fastlin.logsumexp(x, axis=-1),
                 (lambda tx=tx: torch.logsumexp(tx, -1)) if torch else None),
                ("normalize", lambda x=x: fastlin.normalize(x, axis=-1),
                 (lambda tx=tx: F.normalize(tx, dim=-1)) if torch else None),
                ("softmax_backward", lambda g=g, y=y: fastlin.softmax_backward(g, y, axis=-1),
                 (lambda g=tt(g), y=tt(y): torch._softmax_backward_data(g, y, -1, y.dtype))
                 if torch else None),
                ("log_softmax_backward",
                 lambda g=g, y=ly: fastlin.log_softmax_backward(g, y, axis=-1),
                 (lambda g=tt(g), y=tt(ly): torch._log_softmax_backward_data(g, y, -1, y.dtype))
                 if torch else None),
                ("normalize_backward", lambda g=g, x=x: fastlin.normalize_backward(g, x, axis=-1),
                 None),
            ]
            for name, f, t in row:
                if name in ops:
                    out.append((name, s, f"{r}x256", r, f, t))
        if "mahalanobis" in ops or "mahalanobis_backward" in ops:
            for n in _sizes(quick, [100, 1000, 10_000, 100_000, 1_000_000], [100, 10_000, 1_000_000]):
                X = rng.standard_normal((n, 16)).astype(dt)
                mu = X.mean(0)
                cov = np.cov(X[:1000].T).astype(dt)
                if "mahalanobis" in ops:
                    out.append(("mahalanobis", s, f"{n}x16", n,
                                lambda X=X, mu=mu, cov=cov: fastlin.mahalanobis(X, mu, cov), None))
                if "mahalanobis_backward" in ops:
                    gm = rng.standard_normal(n).astype(dt)
                    out.append(("mahalanobis_backward", s, f"{n}x16", n,
                                lambda g=gm, X=X, mu=mu, cov=cov:
                                fastlin.mahalanobis_backward(g, X, mu, cov), None))
        for r in _sizes(quick, [16, 64, 256, 1024, 4096, 16384, 65536], [16, 1024, 65536]):
            pos = rng.standard_normal(r).astype(dt)
            neg = rng.standard_normal((r, 64)).astype(dt)
            tm = None
            if torch is not None:
                tp, tn = tt(pos)[:, None].expand(r, 64), tt(neg)
                ones = torch.ones_like(tn)

                def tm(tp=tp, tn=tn, ones=ones):
                    return torch.nn.functional.margin_ranking_loss(tp, tn, ones, margin=1.0,
                                                                   reduction="sum")
            if "max_margin_loss" in ops:
                out.append(("max_margin_loss", s, f"{r}x64", r,
                            lambda p=pos, n=neg: fastlin.max_margin_loss(p, n), tm))
            if "max_margin_loss_backward" in ops:
                out.append(("max_margin_loss_backward", s, f"{r}x64", r,
                            lambda p=pos, n=neg: fastlin.max_margin_loss_backward(1.0, p, n),
                            None))
    return out


def overhead_rows():
    """Tiny calls: fastlin, scipy and torch at the default thread count."""
    import scipy.spatial.distance as ssd
    import scipy.special as sp
    torch = _torch()
    rng = np.random.default_rng(1)
    A8, B8 = rng.standard_normal((8, 4)), rng.standard_normal((8, 4))
    A64 = rng.standard_normal((64, 16))
    M = rng.standard_normal((64, 4))
    mu, cov = M.mean(0), np.cov(M, rowvar=False)
    VI = np.linalg.inv(cov)
    X = rng.standard_normal((8, 8))
    tt = torch.from_numpy if torch is not None else None
    rows = [
        ("cdist 8x4", lambda: fastlin.cdist(A8, B8), lambda: ssd.cdist(A8, B8),
         (lambda a=tt(A8), b=tt(B8): torch.cdist(a, b)) if torch else None),
        ("pdist 8x4", lambda: fastlin.pdist(A8), lambda: ssd.pdist(A8),
         (lambda a=tt(A8): torch.pdist(a)) if torch else None),
        ("cdist 64x16", lambda: fastlin.cdist(A64, A64), lambda: ssd.cdist(A64, A64),
         (lambda a=tt(A64): torch.cdist(a, a)) if torch else None),
        ("pdist 64x16", lambda: fastlin.pdist(A64), lambda: ssd.pdist(A64),
         (lambda a=tt(A64): torch.pdist(a)) if torch else None),
        ("mahalanobis 64x4", lambda: fastlin.mahalanobis(M, mu, cov),
         lambda: ssd.cdist(M, mu[None], "mahalanobis", VI=VI), None),
        ("softmax (8, 8)", lambda: fastlin.softmax(X, axis=-1), lambda: sp.softmax(X, axis=-1),
         (lambda x=tt(X): torch.softmax(x, -1)) if torch else None),
        ("logsumexp (8, 8)", lambda: fastlin.logsumexp(X, axis=-1),
         lambda: sp.logsumexp(X, axis=-1),
         (lambda x=tt(X): torch.logsumexp(x, -1)) if torch else None),
    ]
    out = []
    for name, f, s, t in rows:
        tf, ts = _median_s(f), _median_s(s)
        tto = _median_s(t) if t is not None else None
        out.append([name, f"{tf * 1e6:.1f}", f"{ts * 1e6:.1f}", f"{tf / ts:.2f}x",
                    "-" if tto is None else f"{tto * 1e6:.1f}",
                    "-" if tto is None else f"{tf / tto:.2f}x"])
    return out


OPS = ["cdist", "cdist_backward", "pdist", "pdist_backward", "softmax", "log_softmax",
       "logsumexp", "normalize", "softmax_backward", "log_softmax_backward",
       "normalize_backward", "mahalanobis", "mahalanobis_backward", "max_margin_loss",
       "max_margin_loss_backward"]


def plot_sweep(records, path, title):
    """Draw the sweep's rows (dicts of op, dtype, units, times) into path."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter
    ops = list(dict.fromkeys(r["op"] for r in records))
    ncol = 4
    nrow = (len(ops) + ncol - 1) // ncol
    colors = {"float64": "tab:blue", "float32": "tab:orange"}
    unit_name = {"cdist": "points", "pdist": "points", "mahalanobis": "points",
                 "max_margin_loss": "rows of 64"}
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fastlin-sweep"}):
        fig = Figure(figsize=(4 * ncol, 3.1 * nrow + 0.8))
        for k, op in enumerate(ops):
            ax = fig.add_subplot(nrow, ncol, k + 1)
            for dt, color in colors.items():
                # distances: the d = 64 rows (d = 32 is in the table)
                rows = sorted((r for r in records if r["op"] == op and r["dtype"] == dt
                               and not ("dist" in op and not r["size"].endswith("x64"))),
                              key=lambda r: r["units"])
                if not rows:
                    continue
                u = [r["units"] for r in rows]
                # torch / fastlin at one and at all threads (> 1: fastlin faster)
                for t, lw in (("1", 0.9), ("all", 2.2)):
                    if all(r.get(f"torch_{t}") for r in rows):
                        ax.plot(u, [r[f"torch_{t}"] / r[f"fl_{t}"] for r in rows], "-",
                                color=color, lw=lw)
                # fastlin's one thread / all threads (> 1: the threads pay)
                ax.plot(u, [r["fl_1"] / r["fl_all"] for r in rows], ":", color=color, lw=1.6)
            ax.axhline(1.0, color="black", lw=0.6)
            ax.set_xscale("log")
            ax.set_yscale("log")
            base = next((v for key, v in unit_name.items() if op.startswith(key)), "rows of 256")
            ax.set_title(op, fontsize=10)
            ax.set_xlabel(base + (" (d = 64)" if "dist" in op else ""), fontsize=8)
            ax.set_ylabel("ratio (> 1: fastlin / threads win)", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            # minor ticks labelled at 2x and 5x only: the others crowd
            ax.yaxis.set_minor_formatter(FuncFormatter(
                lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
            ax.tick_params(which="minor", labelsize=6)
            ax.grid(True, which="major", lw=0.3, alpha=0.6)
        handles = [Line2D([], [], color=c, lw=2, label=dt) for dt, c in colors.items()]
        handles += [Line2D([], [], color="gray", lw=0.9, label="torch / fastlin, 1 thread"),
                    Line2D([], [], color="gray", lw=2.2, label="torch / fastlin, all threads"),
                    Line2D([], [], color="gray", ls=":", lw=1.6,
                           label="fastlin 1 thread / all threads")]
        fig.legend(handles=handles, loc="upper center", ncol=5, fontsize=9,
                   bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()))
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / fig.get_figheight())
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.8 / fig.get_figheight()))
        fig.savefig(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated, default all: "
                    + ",".join(OPS))
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--busy", action="store_true",
                    help="keep one core busy with another process meanwhile")
    ap.add_argument("--plot", metavar="FILE", help="draw the sweep (.png or .svg; matplotlib)")
    ap.add_argument("--json", metavar="FILE", help="save the sweep's rows")
    args = ap.parse_args(argv)
    if args.plot:
        if not args.plot.lower().endswith((".png", ".svg")):
            ap.error(f"--plot needs a .png or .svg file name, got {args.plot!r}")
        try:
            import matplotlib  # noqa: F401  (checked before the run, drawn after)
        except ImportError:
            ap.error("--plot needs matplotlib: python -m pip install 'fastlin[bench]'")
    ops = args.ops.split(",")
    bad = [o for o in ops if o not in OPS]
    if bad:
        ap.error(f"unknown ops {bad}; choose from {OPS}")
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch = _torch()
    if args.busy:
        from .run import start_busy_core
        busy = start_busy_core()
        print(f"busy: another process spins on CPU {busy.cpu} for the whole run")
    print(f"fastlin {fastlin.__version__}, {ncpu} CPUs, threads 1 and {ncpu}; torch "
          f"{torch.__version__ if torch else 'not installed (pip install torch)'}")

    print("\nPer-call overhead, default threads (us; ratio = fastlin / peer, < 1: fastlin faster)")
    print(format_table(["call", "fastlin", "scipy", "fl/scipy", "torch", "fl/torch"],
                       overhead_rows()))

    rows, flagged, records = [], [], []
    for op, s, size, units, f, t in cases(ops, args.dtypes.split(","), args.quick):
        r = [op, s, size]
        times = {}
        for n in (1, ncpu):
            with fastlin.threads(n):
                times[("fl", n)] = _median_s(f)
            if t is not None:
                torch.set_num_threads(n)
                times[("torch", n)] = _median_s(t)
        f1, fa = times[("fl", 1)], times[("fl", ncpu)]
        records.append({"op": op, "dtype": s, "size": size, "units": units, "fl_1": f1,
                        "fl_all": fa, "torch_1": times.get(("torch", 1)),
                        "torch_all": times.get(("torch", ncpu))})
        flags = []
        if fa > 1.05 * f1:
            flags.append("all>1")
        if t is not None and units >= (64 if "dist" in op else 16):
            if any(times[("fl", n)] > times[("torch", n)] for n in (1, ncpu)):
                flags.append("<torch")
        r += [f"{f1 * 1e3:.4g}", f"{fa * 1e3:.4g}", f"{fa / f1:.2f}"]
        if t is not None:
            r += [f"{times[('torch', 1)] / f1:.2f}x", f"{times[('torch', ncpu)] / fa:.2f}x"]
        else:
            r += ["-", "-"]
        r.append(" ".join(flags))
        rows.append(r)
        if flags:
            flagged.append(r)
        if sys.stderr.isatty():
            print(f"\r[{len(rows)}] {op} {s} {size}        ", end="", file=sys.stderr,
                  flush=True)
    if sys.stderr.isatty():
        print("\r", end="", file=sys.stderr)
    print(f"\nSize sweep (ms; all = {ncpu} threads; torch/fl > 1: fastlin faster)")
    print(format_table(["op", "dtype", "size", "fl t=1", f"fl t={ncpu}", "all/1",
                        "torch/fl t=1", f"torch/fl t={ncpu}", "flags"], rows))
    print(f"\n{len(flagged)} of {len(rows)} rows flagged (all>1: all threads more than 5% "
          "slower than one; <torch: slower than torch at 64 points / 16 rows or more)")
    if args.json:
        import json
        with open(args.json, "w") as fh:
            json.dump({"cpus": ncpu, "quick": args.quick, "busy": args.busy,
                       "torch": torch.__version__ if torch else None, "rows": records}, fh,
                      indent=1)
        print(f"rows saved to {args.json}")
    if args.plot:
        plot_sweep(records, args.plot,
                   f"fastlin {fastlin.__version__} size sweep ({ncpu} CPUs"
                   f"{', one busy' if args.busy else ''}; torch "
                   f"{torch.__version__ if torch else 'not installed'}; median times)")
        print(f"chart saved to {args.plot}")


if __name__ == "__main__":
    main()
