"""The speed-up chart of ``bench.run --plot FILE``, or of a saved run::

    python -m bench.plot bench/results.json speedups.svg

One panel per op family; one line per op, workload and dtype; a marker per
peer at peer time / fastlin time on a log axis (> 1: fastlin is faster),
filled at the largest thread count run, hollow at one thread.  Where a peer's
results are inexact (the GEMM-expanded distances) the panel says so beside
its legend.  matplotlib is an optional dependency (``fastlin[bench]``); only
this module imports it, and without pyplot (no display, no global state).
"""
import argparse
import json
import math
import os
import sys
import textwrap

from . import report as R

__all__ = ["plot", "main"]

_DTYPE = {"float64": "f64", "float32": "f32"}
# Ticks of the speed-up axis, kept where they fall inside the data's range.
_TICKS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def _label(rec):
    op, wl = R._row_label(rec)
    return f"{op}  {wl}  {_DTYPE.get(rec['dtype'], rec['dtype'])}"


def _title(facts, title_extra):
    if not facts:
        return "fastlin speed-up over each peer"
    m, v = facts["machine"], facts["versions"]
    peers = ", ".join(f"{k} {v[k]}" for k in ("numpy", "scipy", "torch", "sklearn")
                      if k in v and not str(v[k]).startswith(("not", "unav")))
    mode = f"; {title_extra}" if title_extra else ""
    return (f"fastlin {v.get('fastlin', '?')} speed-up over each peer (peer time / fastlin "
            f"time; > 1: fastlin faster)\n{m['cpu_model']}, {m['usable_cpus']} CPUs, fastlin "
            f"kernels {facts.get('fastlin_simd', '?')}{mode}; {peers}")


def run_title(meta):
    """``quick mode, 2026-12-07``: the mode and date of a run, for the title."""
    mode = "tiny mode" if meta.get("tiny") else "quick mode" if meta.get("quick") else "full mode"
    date = (meta.get("started_utc") or "")[:10]
    return f"{mode}, {date}" if date else mode


def plot(records, path, facts=None, title_extra=None):
    """Draw the speed-ups of `records` (see :mod:`bench.report`) into `path`
    (.png or .svg).  Returns the path."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fams = [f for f in list(R.FAMILIES) + sorted({r["family"] for r in records}
                                                 - set(R.FAMILIES))
            if any(r["family"] == f and r["peers"] for r in records)]
    if not fams:
        raise ValueError("no row with a peer to plot")
    threads = sorted({r["threads"] for r in records})
    t_lo, t_hi = threads[0], threads[-1]

    panels = []
    for fam in fams:
        recs = [r for r in records if r["family"] == fam and r["threads"] in (t_lo, t_hi)]
        labels = list(dict.fromkeys(_label(r) for r in recs))
        cols = [c for c in R.PEER_COLUMNS.get(fam, []) if any(c in r["peers"] for r in recs)]
        cols += sorted({c for r in recs for c in r["peers"]} - set(cols))
        panels.append((fam, recs, labels, cols))

    heights = [max(len(p[2]), 3) * 0.26 + 0.9 for p in panels]
    # one colour per peer name, the same in every panel
    names = list(dict.fromkeys(c for p in panels for c in p[3]))
    palette = matplotlib.colormaps["tab10"].colors
    colour = {c: palette[i % len(palette)] for i, c in enumerate(names)}

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fastlin-bench",
                                "font.size": 8}):
        fig = Figure(figsize=(10, sum(heights) + 1.0))
        gs = fig.add_gridspec(len(panels), 1, height_ratios=heights, hspace=0.3,
                              left=0.3, right=0.74, top=1 - 0.75 / (sum(heights) + 1.0),
                              bottom=0.45 / (sum(heights) + 1.0))
        for i, (fam, recs, labels, cols) in enumerate(panels):
            ax = fig.add_subplot(gs[i])
            inexact = R.INEXACT.get(fam, {}).get("peers", ())
            xs = []
            for j, c in enumerate(cols):
                dy = (j - (len(cols) - 1) / 2) * min(0.16, 0.7 / max(len(cols), 1))
                for lab_i, lab in enumerate(labels):
                    pts = {}
                    for r in recs:
                        if _label(r) == lab:
                            x = R.speedup(r, c)
                            if not math.isnan(x):
                                pts[r["threads"]] = x
                    y = lab_i + dy
                    if len(pts) == 2:
                        ax.plot([pts[t_lo], pts[t_hi]], [y, y], color=colour[c], lw=0.8,
                                alpha=0.6)
                    for t, x in pts.items():
                        filled = t == t_hi
                        ax.plot([x], [y], marker="o", ms=4.2, linestyle="none",
                                color=colour[c], markerfacecolor=colour[c] if filled
                                else "white", markeredgewidth=1.0)
                        xs.append(x)
            ax.axvline(1.0, color="0.35", lw=1.0, ls="--", zorder=0)
            ax.set_xscale("log")
            lo = min(min(xs, default=1.0), 1.0) / 1.4
            hi = max(max(xs, default=1.0), 1.0) * 1.4
            ax.set_xlim(lo, hi)
            ticks = [t for t in _TICKS if lo <= t <= hi]
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.grid(axis="x", color="0.88", lw=0.6)
            ax.set_yticks(range(len(labels)))
            ax.set_yticklabels(labels, fontsize=7.5)
            ax.set_ylim(len(labels) - 0.5, -0.5)
            for k in range(0, len(labels), 2):   # banded rows: which markers share a line
                ax.axhspan(k - 0.5, k + 0.5, color="0.96", zorder=-1, lw=0)
            ax.set_title(R.FAMILIES.get(fam, fam), loc="left", fontsize=9, fontweight="bold")
            handles = [Line2D([], [], marker="o", ls="none", color=colour[c],
                              label=c + (" *" if c in inexact else "")) for c in cols]
            if t_lo != t_hi:
                handles += [Line2D([], [], marker="o", ls="none", color="0.2",
                                   label=f"{t_hi} threads"),
                            Line2D([], [], marker="o", ls="none", color="0.2",
                                   markerfacecolor="white", label=f"{t_lo} thread"
                                   + ("s" if t_lo > 1 else ""))]
            leg = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                            fontsize=7.5, frameon=False, borderaxespad=0.0)
            if fam in R.INEXACT:
                note = "* " + R.INEXACT[fam]["note"]
                ax.annotate(textwrap.fill(note, 44), xy=(1.01, 0.0), xycoords="axes fraction",
                            va="bottom", ha="left", fontsize=6.5, color="0.25")
            del leg
            if i == len(panels) - 1:
                ax.set_xlabel("speed-up: peer time / fastlin time (log scale; right of the "
                              "dashed line: fastlin faster)")
        fig.suptitle(_title(facts, title_extra), fontsize=8.5, x=0.02, ha="left")
        kw = {"metadata": {"Date": None}} if path.lower().endswith(".svg") else {"dpi": 110}
        fig.savefig(path, **kw)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench.plot",
        description="Draw the speed-up chart of a saved bench.run JSON (as --plot does).")
    p.add_argument("json", help="a JSON file written by python -m bench.run")
    p.add_argument("out", help="the chart to write, .png or .svg")
    args = p.parse_args(argv)
    ext = os.path.splitext(args.out)[1].lower()
    if ext not in (".png", ".svg"):
        p.error(f"the chart's file name must end in .png or .svg, got {args.out!r}")
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        p.error("matplotlib is not installed: python -m pip install \"fastlin[bench]\" "
                "(or matplotlib)")
    try:
        with open(args.json) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        p.error(f"cannot read {args.json}: {exc}")
    if "rows" not in data:
        p.error(f"{args.json} has no 'rows': it was written by an older bench.run; "
                "run python -m bench.run again")
    recs = [R.record_from_json(d) for d in data["rows"]]
    plot(recs, args.out, data.get("header"), title_extra=run_title(data.get("meta") or {}))
    print(f"chart saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
