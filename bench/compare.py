"""Compare two runs of ``bench.run``: ``python -m bench.compare A.json B.json``.

For every row both runs measured (same family, op, workload, dtype and
thread count) it prints fastlin's median time in A and in B, the ratio B / A
(< 1: B is faster) and the noise band of the row, and flags the rows whose
ratio lies outside the band.  The band comes from the spread each run
recorded for the row (interquartile range / median of its timed calls):
``noise = max(floor, spread_A + spread_B)``, and a row changed when
``B/A > 1 + noise`` or ``B/A < 1 / (1 + noise)``.  A row timed with a single
call has no spread; the floor alone is its band.

The last column is the median B / A over the row's peers: when the peers
moved as much as fastlin did, the machine changed rather than fastlin (a
busy core, another memory speed).  The runs' differences in versions, CPU,
SIMD level, mode and thread counts are listed first: ratios between runs on
different machines or modes say little.
"""
import argparse
import json
import math
import statistics
import sys

from . import harness as H
from . import report as R

__all__ = ["load_run", "compare_rows", "noise_band", "format_comparison", "main"]

DEFAULT_FLOOR = 0.05   # 5%: below this, two medians on a shared machine are the same


def load_run(path):
    """``(data, records)`` of a bench.run JSON; ValueError with a reason
    when the file cannot be used."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or "rows" not in data:
        raise ValueError(f"{path} has no 'rows': it was not written by this version of "
                         "python -m bench.run (run it again to get a comparable file)")
    return data, [R.record_from_json(d) for d in data["rows"]]


def noise_band(ta, tb, floor=DEFAULT_FLOOR):
    """The relative change below which B's median is taken as A's."""
    spreads = [t.spread for t in (ta, tb) if t is not None]
    known = [s for s in spreads if not math.isnan(s)]
    return max(floor, sum(known))


def _peer_drift(ra, rb):
    """Median over the peers timed in both runs of B / A, nan if none."""
    got = [H.ratio(rb["peers"][p], ra["peers"][p]) for p in ra["peers"]
           if p in rb["peers"] and p not in list(ra.get("reused", [])) + list(rb.get("reused", []))]
    got = [x for x in got if not math.isnan(x)]
    return statistics.median(got) if got else math.nan


def compare_rows(recs_a, recs_b, floor=DEFAULT_FLOOR):
    """One entry per row measured in both runs, in A's order::

        {"id", "rec" (A's record), "a", "b" (Timings), "ratio" (B/A median),
         "noise", "change" ("slower" | "faster" | "" | "error"), "peers" (drift)}

    and the ids only in A and only in B."""
    by_b = {r["id"]: r for r in recs_b}
    ids_a = {r["id"] for r in recs_a}
    out = []
    for ra in recs_a:
        rb = by_b.get(ra["id"])
        if rb is None:
            continue
        a, b = ra["fastlin"], rb["fastlin"]
        ratio = H.ratio(b, a)
        noise = noise_band(a, b, floor)
        if math.isnan(ratio):
            change = "error"
        elif ratio > 1 + noise:
            change = "slower"
        elif ratio < 1 / (1 + noise):
            change = "faster"
        else:
            change = ""
        out.append({"id": ra["id"], "rec": ra, "a": a, "b": b, "ratio": ratio,
                    "noise": noise, "change": change, "peers": _peer_drift(ra, rb)})
    only_a = [r["id"] for r in recs_a if r["id"] not in by_b]
    only_b = [r["id"] for r in recs_b if r["id"] not in ids_a]
    return out, only_a, only_b


def _facts(data):
    h, m = data.get("header") or {}, data.get("meta") or {}
    mach, v = h.get("machine") or {}, h.get("versions") or {}
    git = m.get("git") or {}
    return {
        "command": m.get("command"),
        "started": m.get("started_utc"),
        "commit": (git.get("commit", "")[:10] + (" (modified)" if git.get("dirty") else "")
                   if git else None),
        "cpu": f"{mach.get('cpu_model')} ({mach.get('usable_cpus')} CPUs)",
        "fastlin kernels": h.get("fastlin_simd"),
        "versions": ", ".join(f"{k} {val}" for k, val in v.items()),
        "threads": h.get("threads"),
        "timing": m.get("timing"),
        "load at start": h.get("load_average"),
    }


def header_diff(data_a, data_b):
    """Lines describing both runs, the facts that differ marked."""
    fa, fb = _facts(data_a), _facts(data_b)
    lines = []
    for k in fa:
        if fa[k] == fb[k]:
            lines.append(f"  {k:<15}: {fa[k]}")
        else:
            lines.append(f"! {k:<15}: A {fa[k]}")
            lines.append(f"  {'':<15}  B {fb[k]}")
    return lines


def format_comparison(rows, only_a=(), only_b=(), changed_only=False):
    """The comparison table (only the flagged rows with `changed_only`) and
    its summary lines."""
    cols = ["op", "workload", "dtype", "thr", "A ms", "B ms", "B/A", "noise", "change",
            "peers B/A"]
    out = []
    for c in rows:
        if changed_only and not c["change"]:
            continue
        r = c["rec"]
        op, wl = R._row_label(r)
        out.append([op, wl, R._DTYPE.get(r["dtype"], r["dtype"]), str(r["threads"]),
                    H.fmt_ms(c["a"]),
                    H.fmt_ms(c["b"]),
                    "-" if math.isnan(c["ratio"]) else f"{c['ratio']:.3f}",
                    f"+-{100 * c['noise']:.0f}%", c["change"],
                    "-" if math.isnan(c["peers"]) else f"{c['peers']:.3f}"])
    lines = [H.format_table(cols, out, right={3, 4, 5, 6, 7, 9})]
    n = {k: sum(c["change"] == k for c in rows) for k in ("slower", "faster", "error")}
    lines.append(f"{len(rows)} rows in both runs: {n['slower']} slower beyond their noise, "
                 f"{n['faster']} faster, {len(rows) - n['slower'] - n['faster'] - n['error']} "
                 "within it" + (f", {n['error']} failed in a run" if n["error"] else ""))
    if only_a:
        lines.append(f"only in A ({len(only_a)}): " + ", ".join(only_a[:8])
                     + (" ..." if len(only_a) > 8 else ""))
    if only_b:
        lines.append(f"only in B ({len(only_b)}): " + ", ".join(only_b[:8])
                     + (" ..." if len(only_b) > 8 else ""))
    return "\n".join(lines)


def _floor(text):
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (0 <= x < 10):
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 10), got {text!r}")
    return x


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="Compare fastlin's times in two bench.run JSON files row by row: B/A < 1 "
                    "means B is faster; rows outside the noise of the two runs are flagged.")
    p.add_argument("a", metavar="A.json", help="the reference run")
    p.add_argument("b", metavar="B.json", help="the run compared with it")
    p.add_argument("--floor", type=_floor, default=DEFAULT_FLOOR, metavar="F",
                   help=f"the smallest noise band, a fraction (default {DEFAULT_FLOOR}: "
                        "changes under 5%% are never flagged)")
    p.add_argument("--changed", action="store_true",
                   help="list only the rows flagged slower or faster")
    p.add_argument("--fail-on-slower", action="store_true",
                   help="exit status 1 when a row of B is slower beyond the noise")
    args = p.parse_args(argv)
    try:
        data_a, recs_a = load_run(args.a)
        data_b, recs_b = load_run(args.b)
    except ValueError as exc:
        p.error(str(exc))
    rows, only_a, only_b = compare_rows(recs_a, recs_b, args.floor)
    print(f"A = {args.a}\nB = {args.b}")
    print("\n".join(header_diff(data_a, data_b)))
    print()
    if not rows:
        print("no row was measured in both runs (different workloads, dtypes or thread "
              "counts)")
        return 1 if args.fail_on_slower else 0
    print(f"fastlin's median per row; B/A < 1: B faster; noise = max({args.floor:g}, spread "
          "A + spread B), spread = interquartile range / median of the row's calls; "
          "peers B/A = the peers' median change (the machine's drift)")
    print(format_comparison(rows, only_a, only_b, changed_only=args.changed))
    slower = sum(c["change"] == "slower" for c in rows)
    return 1 if (args.fail_on_slower and slower) else 0


if __name__ == "__main__":
    sys.exit(main())
