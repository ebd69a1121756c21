"""fastlin.dask on a distributed cluster: ``python -m bench.cluster [--quick]``.

Two workloads of the issue that asked for ``fastlin.dask``, each on a
``distributed.LocalCluster`` of 1 and of 2 worker processes with one thread
each, against single-process fastlin at 1 and 2 threads on the same data:

* ``topk``: :func:`fastlin.dask.cdist_topk` of 10,000 float32 queries
  against 1,000,000 x 64 float32 reference points, k = 10.  The reference
  points are generated chunk by chunk on the workers
  (``dask.array.random``) and persisted there: no process ever holds all of
  them except the single-process run, which needs them whole.
* ``softmin``: :func:`fastlin.dask.cdist_logsumexp` between two clouds of
  200,000 x 3 float32 points (scale -1).

Each time is the median of ``--repeats`` runs of the op alone (the inputs
already persisted on the workers; the cluster started and warmed up
before, its chunks spread evenly over the workers).  The workers run
with Dask's profiler off and its monitors every 2 s (QUIET_WORKERS, as a
compute cluster would be configured; ``--dask-defaults``: Dask's own
settings).  Targets: 2 workers at least 1.6x faster than 1 worker; the
cluster's time at most 25% over single-process fastlin at the same core
count.  Each worker's peak resident memory is reported next to the bytes of
the chunks it holds.  ``--quick``: 200,000 reference points and 2,000
queries, clouds of 50,000, 3 repeats.

Peers are not involved: BLAS is not called (the GEMM is fastlin's own at
avx512; below it, OpenBLAS's sgemm, whose variables this script leaves as
they are).  Run it on a quiet machine::

    python -m bench.cluster            # about 15 minutes here (--quick: 1)
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np

# Benchmark the installed fastlin, not the checkout's source tree (as
# bench.run): the checkout goes last on the path, where the workers' spawned
# processes still find this module (they import it) after the installed fastlin.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT] + [_ROOT]

import fastlin  # noqa: E402

# The workers of a compute cluster: Dask's statistical profiler off (it
# samples every worker's stack every 10 ms) and its system and memory
# monitors every 2 s instead of every 0.1-0.5 s.  With every core busy
# computing, each wake-up of a worker's event loop preempts a kernel: with
# Dask's defaults here the event loop took 5% of a core and the tasks ran
# ~20% slower than the same calls in plain processes.  --dask-defaults
# measures with Dask's defaults.
QUIET_WORKERS = {"distributed.worker.profile.enabled": False,
                 "distributed.admin.system-monitor.interval": "2s",
                 "distributed.worker.memory.monitor-interval": "2s",
                 "distributed.admin.tick.interval": "200ms"}

TARGET_SCALING = 1.6        # 2 workers against 1
TARGET_OVERHEAD = 0.25      # cluster against single-process, same core count

FULL = {"topk": dict(m_ref=1_000_000, m_query=10_000, n=64, k=10, ref_chunk=62_500),
        "softmin": dict(m=200_000, n=3, a_chunk=25_000, b_chunk=50_000)}
QUICK = {"topk": dict(m_ref=200_000, m_query=2_000, n=64, k=10, ref_chunk=25_000),
         "softmin": dict(m=50_000, n=3, a_chunk=12_500, b_chunk=25_000)}


def _rss(reset=False):
    """(resident, peak resident) memory of this process, bytes.

    Linux: VmRSS and VmHWM of /proc/self/status, the peak first reset to the
    current value when asked (``clear_refs`` 5).  getrusage's ru_maxrss is
    no use here: it survives exec, so a spawned worker would report its
    parent's peak.  Elsewhere: ru_maxrss for both, unreset.
    """
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            v = dict(line.split(":", 1) for line in f if ":" in line)
        return (int(v["VmRSS"].split()[0]) * 1024, int(v["VmHWM"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        m = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return m, m


def _inputs(name, p, da):
    """The workload's Dask inputs (generated chunk by chunk) and the call."""
    import fastlin.dask as fd
    rng = da.random.default_rng(7)
    if name == "topk":
        R = rng.standard_normal((p["m_ref"], p["n"]), chunks=(p["ref_chunk"], p["n"]),
                                dtype=np.float32)
        Q = rng.standard_normal((p["m_query"], p["n"]), chunks=(p["m_query"], p["n"]),
                                dtype=np.float32)
        return (Q, R), lambda A, B: fd.cdist_topk(A, B, p["k"])[1], \
            lambda A, B: fastlin.cdist_topk(A, B, p["k"])[1]
    A = rng.standard_normal((p["m"], p["n"]), chunks=(p["a_chunk"], p["n"]), dtype=np.float32)
    B = rng.standard_normal((p["m"], p["n"]), chunks=(p["b_chunk"], p["n"]), dtype=np.float32)
    return (A, B), lambda X, Y: fd.cdist_logsumexp(X, Y, scale=-1.0), \
        lambda X, Y: fastlin.cdist_logsumexp(X, Y, scale=-1.0)


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def _single(arrays, call, repeats):
    """Single-process fastlin at 1 and 2 threads on the computed arrays."""
    A, B = (a.compute(scheduler="sync") for a in arrays)
    res = {}
    ref = None
    for t in (1, 2):
        with fastlin.threads(t):
            call(A[:256], B)                    # warm-up: pages, code
            med, times, out = _median_time(lambda: call(A, B), repeats)
        res[t] = dict(median=med, times=times)
        ref = out
    return res, ref


def _on_cluster(workers, arrays, dcall, repeats, Client, LocalCluster, config):
    saved = dict(os.environ)        # a nanny leaves its workers' variables here
    try:
        return _cluster_run(workers, arrays, dcall, repeats, Client, LocalCluster, config)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _cluster_run(workers, arrays, dcall, repeats, Client, LocalCluster, config):
    import tempfile

    import dask
    from distributed import wait
    with dask.config.set(config), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, local_directory=tempfile.gettempdir()) as cl, \
            Client(cl) as client:
        A, B = client.persist(list(arrays))
        wait([A, B])
        # the chunks spread evenly (by bytes) over the workers: where the
        # scheduler first put them is not the cluster's cost
        client.rebalance([A, B])
        held = {}
        nbytes = client.nbytes(summary=False)
        for key, ws in client.who_has([A, B]).items():
            for w in ws:
                held[w] = held.get(w, 0) + nbytes.get(key, 0)
        graph = dcall(A, B)
        client.compute(dcall(A[:256], B)).result()      # warm-up: imports, pages
        before = client.run(_rss, True)
        med, times, out = _median_time(lambda: client.compute(graph).result(), repeats)
        after = client.run(_rss)
    return dict(median=med, times=times,
                memory={w: dict(held=held.get(w, 0), rss_before=before[w][0],
                                rss_peak=after[w][1]) for w in after}), out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller workloads, 3 repeats")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs per configuration (median); default 3")
    ap.add_argument("--dask-defaults", action="store_true",
                    help="workers with Dask's default profiler and monitors (see QUIET_WORKERS)")
    ap.add_argument("--workloads", default="topk,softmin",
                    help="comma-separated: topk, softmin (default both)")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "results_cluster.json"),
                    help="where to save the results (default bench/results_cluster.json)")
    args = ap.parse_args(argv)
    try:
        import dask.array as da
        from distributed import Client, LocalCluster
    except ImportError as e:
        sys.exit(f"bench.cluster needs Dask ({e}): pip install 'fastlin[dask]'")
    repeats = args.repeats if args.repeats is not None else 3
    if repeats < 1:
        ap.error(f"--repeats must be at least 1, got {repeats}")
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    sizes = QUICK if args.quick else FULL
    bad = [w for w in names if w not in sizes]
    if bad or not names:
        ap.error(f"--workloads takes topk and/or softmin, got {args.workloads!r}")
    import dask
    import distributed
    print(f"fastlin {fastlin.__version__}, dask {dask.__version__}, distributed "
          f"{distributed.__version__}, {os.cpu_count()} CPUs, SIMD {fastlin._simd.LEVEL}; "
          f"median of {repeats}; workers: "
          f"{'Dask defaults' if args.dask_defaults else 'profiler off, monitors every 2 s'}")
    results = {"quick": args.quick, "repeats": repeats, "cpus": os.cpu_count(),
               "worker_config": {} if args.dask_defaults else QUIET_WORKERS,
               "simd": fastlin._simd.LEVEL, "workloads": {}}
    rows = []
    for name in names:
        p = sizes[name]
        arrays, dcall, call = _inputs(name, p, da)
        single, ref = _single(arrays, call, repeats)
        cluster = {}
        for w in (1, 2):
            cluster[w], out = _on_cluster(w, arrays, dcall, repeats, Client, LocalCluster,
                                          {} if args.dask_defaults else QUIET_WORKERS)
            if name == "topk":
                same = bool(np.array_equal(out, ref))
            else:
                same = bool(np.allclose(out, ref, rtol=1e-5))
            cluster[w]["agrees"] = same
        results["workloads"][name] = dict(sizes=p, single=single, cluster=cluster)
        for c in (1, 2):
            t1, t = single[c]["median"], cluster[c]["median"]
            mem = cluster[c]["memory"]
            worst = max(mem.values(), key=lambda m: m["rss_peak"] - m["rss_before"])
            rows.append((name, c, t1, t, t / t1 - 1, worst["held"], worst["rss_before"],
                         worst["rss_peak"], cluster[c]["agrees"]))
        results["workloads"][name]["scaling"] = cluster[1]["median"] / cluster[2]["median"]
    print()
    # per worker (the one whose memory grew most): the bytes of the chunks it
    # holds, its resident memory before the timed runs (those chunks, the
    # interpreter, numpy, dask, fastlin) and its peak during them
    print(f"{'workload':9} {'cores':>5} {'fastlin':>9} {'cluster':>9} {'overhead':>9} "
          f"{'chunks held':>12} {'RSS before':>11} {'RSS peak':>10}  result")
    for name, c, t1, t, ov, held, before, peak, same in rows:
        print(f"{name:9} {c:5d} {t1:8.2f}s {t:8.2f}s {100 * ov:8.1f}% {held / 2**20:8.0f} MiB "
              f"{before / 2**20:7.0f} MiB {peak / 2**20:6.0f} MiB  "
              f"{'same' if same else 'differs'}")
    print()
    failed = 0
    for name in names:
        r = results["workloads"][name]
        s = r["scaling"]
        ov = max(r["cluster"][c]["median"] / r["single"][c]["median"] - 1 for c in (1, 2))
        ok_s, ok_o = s >= TARGET_SCALING, ov <= TARGET_OVERHEAD
        failed += (not ok_s) + (not ok_o)
        print(f"{name}: 2 workers / 1 worker {s:.2f}x (target >= {TARGET_SCALING}x: "
              f"{'PASS' if ok_s else 'FAIL'}); largest overhead over single-process "
              f"fastlin {100 * ov:.1f}% (target <= {100 * TARGET_OVERHEAD:.0f}%: "
              f"{'PASS' if ok_o else 'FAIL'})")
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"\nsaved {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
