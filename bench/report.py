"""The default report of ``bench.run``: one compact table per op family, and
the targets of ``--check`` with their definitions.

Everything here works on plain *records*, one per measured row, so that the
tables, the chart (:mod:`bench.plot`) and ``bench.compare`` read the same
thing whether the row was just measured or loaded back from a JSON file::

    {"id": "reductions|softmax|4096x4096|float64|1",   # stable across runs
     "family": "reductions", "op": "softmax", "workload": "4096x4096 axis=-1",
     "key": "4096x4096", "dtype": "float64", "threads": 1,
     "fastlin": Timing, "peers": {"scipy": Timing, ...}, "reused": ["scipy"]}

A speed-up is peer time / fastlin time (medians): 2.0 means fastlin takes
half the peer's time.
"""
import math

from . import harness as H

__all__ = ["FAMILIES", "PEER_COLUMNS", "make_record", "record_json", "record_from_json",
           "speedup", "speedups", "family_tables", "targets_report", "INEXACT"]

# Op families, in the order they are printed, with their table titles.
FAMILIES = {
    "reductions": "Softmax family and normalize",
    "distances": "Pairwise distances",
    "mahalanobis_margin": "Mahalanobis distance and max-margin loss",
}

# Peer columns per family, in table order.  The Mahalanobis formulas are
# columns of their own: each is a way a NumPy user writes the distance.
PEER_COLUMNS = {
    "reductions": ["scipy", "numpy", "sklearn", "torch"],
    "distances": ["scipy", "sklearn", "torch"],
    "mahalanobis_margin": ["scipy", "einsum", "rowdot", "chol", "numpy", "torch"],
}

# What each column stands for, one line per family under its table.
LEGENDS = {
    "reductions": "scipy = scipy.special; numpy = the NumPy formula; sklearn = "
                  "extmath.softmax / preprocessing.normalize (rows only); torch = CPU ops, "
                  "backward = autograd",
    "distances": "scipy = scipy.spatial.distance; sklearn = euclidean_distances / "
                 "cosine_distances (pdist: the square matrix); torch = torch.cdist / "
                 "pdist, backward = autograd; _dist rows pass the forward's result",
    "mahalanobis_margin": "scipy = spatial.distance.cdist; einsum, rowdot (X-mu) @ VI, "
                          "chol (cholesky + solve_triangular) = NumPy/SciPy formulas; "
                          "numpy = the NumPy loss formula; torch = the formula in torch, "
                          "backward = autograd",
}

# Peers whose results are not exact where fastlin's are: the chart and the
# distance table say so next to their speed-ups.
INEXACT = {
    "distances": {
        "peers": ("sklearn", "torch"),
        "note": "sklearn and torch form distances as |a|^2 + |b|^2 - 2a.b from a GEMM: "
                "near points lose their digits (float32 points 109 apart: torch.cdist "
                "says 0); fastlin uses the GEMM too but recomputes every entry the "
                "expansion cannot be trusted for from direct differences",
    },
}


def make_record(family, op, workload, key, dtype, threads, fastlin, peers, reused=(),
                metric=None):
    """A record of one measured row (see the module docstring)."""
    ident = "|".join([family, op, key, dtype, str(threads)])
    return {"id": ident, "family": family, "op": op, "workload": workload, "key": key,
            "metric": metric, "dtype": dtype, "threads": threads, "fastlin": fastlin,
            "peers": dict(peers), "reused": list(reused)}


def speedup(rec, peer):
    """Peer time / fastlin time on `rec`, nan when either is missing or failed."""
    return H.ratio(rec["peers"].get(peer), rec["fastlin"])


def speedups(rec):
    return {p: speedup(rec, p) for p in rec["peers"]}


def record_json(rec):
    """A record as JSON-able data: Timings as dicts, speed-ups added."""
    d = {k: v for k, v in rec.items() if k not in ("fastlin", "peers")}
    d["fastlin"] = rec["fastlin"].as_dict()
    d["peers"] = {p: t.as_dict() for p, t in rec["peers"].items()}
    d["speedups"] = speedups(rec)
    return d


def record_from_json(d):
    """The inverse of :func:`record_json`."""
    rec = {k: v for k, v in d.items() if k not in ("fastlin", "peers", "speedups")}
    rec["fastlin"] = H.Timing.from_dict(d["fastlin"])
    rec["peers"] = {p: H.Timing.from_dict(t) for p, t in (d.get("peers") or {}).items()}
    rec.setdefault("reused", [])
    return rec


_DTYPE = {"float64": "f64", "float32": "f32"}


def _row_label(rec):
    """``op workload``, with the metric where it is not euclidean."""
    metric = rec.get("metric")
    extra = f" {metric}" if metric and metric != "euclidean" else ""
    return rec["op"], rec["workload"] + extra


def fmt_speedup(x):
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.0f}x" if x >= 100 else f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def family_table(recs, family):
    """The compact table of one family: op, workload, dtype, threads,
    fastlin's median and the speed-up against each peer column present."""
    cols_p = [c for c in PEER_COLUMNS.get(family, [])
              if any(c in r["peers"] for r in recs)]
    cols_p += sorted({c for r in recs for c in r["peers"]} - set(cols_p))
    inexact = INEXACT.get(family, {}).get("peers", ())
    cols = (["op", "workload", "dtype", "thr", "fastlin ms"]
            + [f"vs {c}" + ("*" if c in inexact else "") for c in cols_p])
    out = []
    for r in recs:
        op, wl = _row_label(r)
        fl = r["fastlin"]
        cells = [op, wl, _DTYPE.get(r["dtype"], r["dtype"]), str(r["threads"]), H.fmt_ms(fl)]
        for c in cols_p:
            x = speedup(r, c)
            t = r["peers"].get(c)
            if t is not None and not t.ok:
                cells.append("error")
            else:
                cells.append(fmt_speedup(x))
        out.append(cells)
    return H.format_table(cols, out, right=set(range(3, len(cols))))


def family_tables(records):
    """Every family's title, table and legend, in :data:`FAMILIES` order."""
    blocks = []
    fams = list(FAMILIES) + sorted({r["family"] for r in records} - set(FAMILIES))
    for fam in fams:
        recs = [r for r in records if r["family"] == fam]
        if not recs:
            continue
        lines = [f"{FAMILIES.get(fam, fam)} (median ms; vs X = X's time / fastlin's, "
                 ">1: fastlin faster; - = no such call)",
                 family_table(recs, fam), "  " + LEGENDS.get(fam, "")]
        if fam in INEXACT:
            lines.append("  * " + INEXACT[fam]["note"])
        if any(r["reused"] for r in recs):
            lines.append("  single-threaded peers are timed at the first thread count "
                         "and reused at the others")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def targets_report(targets, quick=False):
    """PASS / FAIL / SKIP per target with its definition, and a summary line.
    Returns ``(text, number of failures)``."""
    lines = ["Targets (--check): each judged on its worst matching row"
             + ("; --quick runs fewer workloads and calls than the targets were set for, "
                "so these verdicts are indicative" if quick else "")]
    for t in targets:
        worst = "-" if t.get("worst") is None else f"{t['worst']:.2f}x"
        lines.append(f"{t['status']:<4}  {t['target']}: {worst} (need {t['need']}; "
                     f"{'worst row ' if t['status'] != 'SKIP' else ''}{t['where']}"
                     f"{', %d rows' % t['rows'] if t.get('rows') else ''})")
        if t.get("definition"):
            lines.append(f"      {t['definition']}")
    n = {s: sum(t["status"] == s for t in targets) for s in ("PASS", "FAIL", "SKIP")}
    lines.append(f"{n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped "
                 "(SKIP: the peer is not installed, or its rows were not run)")
    return "\n".join(lines), n["FAIL"]
