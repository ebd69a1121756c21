"""The benchmark suite's own logic, on synthetic timings: the speed-up
arithmetic, the compact tables, the targets of ``--check``, the comparison
of two runs; then a smoke run of ``python -m bench.run --quick`` on tiny
inputs (the hidden ``--tiny`` option) that checks the table, the chart and
the JSON it writes.  No assertion here depends on how fast anything ran.
"""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isfile(os.path.join(ROOT, "bench", "run.py")):
    # cibuildwheel runs a copy of tests/ without the checkout around it
    pytest.skip("bench/ is not beside tests/ here", allow_module_level=True)


def _import_bench():
    """Import bench from the checkout.  conftest.py takes the checkout off
    sys.path so that `fastlin` is the installed package; fastlin is imported
    by now, so putting the checkout back for this import cannot shadow it."""
    sys.path.insert(0, ROOT)
    try:
        from bench import compare, harness, report, run
    finally:
        sys.path[:] = [p for p in sys.path if p != ROOT]   # bench.run drops it too
    return harness, report, compare, run


H, R, C, RUN = _import_bench()
T = H.Timing


def tm(ms, spread=0.0, reps=5):
    """A Timing of median `ms` milliseconds whose quartiles lie `spread`
    (relative) apart."""
    m = ms / 1e3
    return T(m, m * (1 - spread), reps, None, m * (1 + spread), m * (1 - spread / 2),
             m * (1 + spread / 2))


def rec(family="reductions", op="softmax", key="4096x4096", dtype="float64", threads=1,
        fastlin=None, metric=None, **peers):
    return R.make_record(family, op, key + " wl", key, dtype, threads,
                         fastlin if fastlin is not None else tm(2.0), peers, metric=metric)


# --------------------------------------------------------------------------
# Timings and speed-ups
# --------------------------------------------------------------------------

def test_timing_from_times_quartiles_and_spread():
    t = T.from_times([0.004, 0.001, 0.002, 0.003, 0.005])
    assert (t.median, t.min, t.max, t.reps) == (0.003, 0.001, 0.005, 5)
    assert (t.q1, t.q3) == pytest.approx((0.002, 0.004))
    assert t.spread == pytest.approx(0.002 / 0.003)
    one = T.from_times([0.5])
    assert one.ok and math.isnan(one.spread)       # one call: spread unknown
    assert math.isnan(T(error="RuntimeError: x").spread)


def test_timing_json_round_trip(tmp_path):
    t = T.from_times([1.0, 2.0, 4.0])
    path = tmp_path / "t.json"
    H.save_json(str(path), {"t": t.as_dict(), "one": T.from_times([1.0]).as_dict()})
    data = json.loads(path.read_text())
    back = T.from_dict(data["t"])
    assert (back.median, back.min, back.max, back.q1, back.q3, back.reps) == \
        (t.median, t.min, t.max, t.q1, t.q3, t.reps)
    assert data["one"]["spread"] is None                  # nan is written as null
    assert math.isnan(T.from_dict(data["one"]).spread)


def test_speedup_is_peer_over_fastlin():
    r = rec(fastlin=tm(2.0), scipy=tm(6.0), torch=tm(1.0), numpy=T(error="ValueError: no"))
    assert R.speedup(r, "scipy") == pytest.approx(3.0)
    assert R.speedup(r, "torch") == pytest.approx(0.5)
    assert math.isnan(R.speedup(r, "numpy"))              # the peer failed
    assert math.isnan(R.speedup(r, "sklearn"))            # no such peer
    failed = rec(fastlin=T(error="RuntimeError: boom"), scipy=tm(6.0))
    assert math.isnan(R.speedup(failed, "scipy"))
    assert set(R.speedups(r)) == {"scipy", "torch", "numpy"}


def test_record_json_round_trip():
    r = rec(threads=2, fastlin=tm(2.0, 0.1), scipy=tm(5.0))
    d = json.loads(json.dumps(H._clean(R.record_json(r))))
    assert d["speedups"]["scipy"] == pytest.approx(2.5)
    assert d["id"] == "reductions|softmax|4096x4096|float64|2"
    back = R.record_from_json(d)
    assert back["fastlin"].median == r["fastlin"].median
    assert R.speedup(back, "scipy") == pytest.approx(2.5)


# --------------------------------------------------------------------------
# The compact tables
# --------------------------------------------------------------------------

def _cells(table, first):
    """The cells of the table row whose first cell is `first`."""
    for line in table.splitlines():
        cells = line.split()
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in\n{table}")


def test_family_table_columns_and_values():
    recs = [rec(op="softmax", scipy=tm(6.0), numpy=tm(3.0), torch=tm(250.0)),
            rec(op="softmax_backward", numpy=tm(1.0), torch=T(error="RuntimeError: x"))]
    table = R.family_table(recs, "reductions")
    header = table.splitlines()[0].split()
    # only the peer columns some row has, in the family's order
    assert header == ["op", "workload", "dtype", "thr", "fastlin", "ms", "vs", "scipy",
                      "vs", "numpy", "vs", "torch"]
    assert _cells(table, "softmax")[-3:] == ["3.00x", "1.50x", "125x"]
    assert _cells(table, "softmax")[3:5] == ["f64", "1"]
    # no scipy call for a backward: '-'; a peer that raised: 'error'
    assert _cells(table, "softmax_backward")[-3:] == ["-", "0.50x", "error"]


def test_family_tables_titles_legends_and_inexact_peers():
    recs = [rec("distances", "cdist", "cdist4096x64", metric="euclidean", scipy=tm(40.0),
                torch=tm(3.0)),
            rec("distances", "cdist", "cdist4096x64/cosine", metric="cosine",
                scipy=tm(40.0)),
            rec("mahalanobis_margin", "mahalanobis", "maha1000000x16", einsum=tm(20.0)),
            rec("reductions", "softmax", scipy=tm(4.0))]
    text = R.family_tables(recs)
    titles = [R.FAMILIES[f] for f in ("reductions", "distances", "mahalanobis_margin")]
    assert [text.index(t) for t in titles] == sorted(text.index(t) for t in titles)
    assert "vs torch*" in text                         # GEMM-expanded distances marked
    assert "* " + R.INEXACT["distances"]["note"] in text
    assert "cdist4096x64/cosine wl cosine" in text     # a non-euclidean metric is named
    assert "vs einsum" in text and "10.0x" in text


# --------------------------------------------------------------------------
# Targets (--check)
# --------------------------------------------------------------------------

def _red_row(op, threads, fl_ms, **peers):
    return {"workload": "4096x4096 axis=-1", "shape": [4096, 4096], "dtype": "float64",
            "threads": threads, "op": op, "fastlin": tm(fl_ms), "peers": peers,
            "reused": []}


def _targets(rows, ops, status, threads=(1, 2), bound_rows=()):
    args = SimpleNamespace(threads=list(threads), ops=list(ops))
    avail = {p for p, v in status.items() if not v.startswith("not")}
    return {t["target"]: t for t in RUN.evaluate_targets(rows, list(bound_rows), args,
                                                         status, avail)}


def test_targets_judge_the_worst_row():
    status = {"scipy": "1", "numpy": "1", "torch": "1"}
    rows = [_red_row("softmax", 1, 1.0, scipy=tm(5.0), numpy=tm(1.5), torch=tm(1.0)),
            _red_row("softmax", 1, 2.0, scipy=tm(5.0), numpy=tm(4.0), torch=tm(4.0)),
            _red_row("softmax", 2, 1.0, scipy=tm(3.0))]   # the 2-thread row: not these targets
    got = _targets(rows, ["softmax"], status)
    scipy = got["softmax @1 thread vs scipy"]
    assert scipy["status"] == "FAIL" and scipy["worst"] == pytest.approx(2.5)
    assert scipy["rows"] == 2 and "t=1" in scipy["where"]
    assert got["softmax @1 thread vs numpy"]["status"] == "PASS"       # 1.5 >= 1.5
    torch = got["softmax @1 thread vs torch"]
    assert torch["status"] == "FAIL" and torch["need"] == "> 1x"        # strict: 1.0 fails
    for t in got.values():
        assert "must be" in t["definition"] and "fastlin.softmax" in t["definition"]
    # at 2 threads, (4096, 4096), vs scipy: 3.0 < 4
    assert got["softmax @2 threads on 4096x4096 vs scipy"]["status"] == "FAIL"


def test_targets_skip_names_the_missing_peer():
    status = {"scipy": "1", "numpy": "1", "torch": "not installed"}
    rows = [_red_row("softmax", 1, 1.0, scipy=tm(5.0), numpy=tm(2.0))]
    got = _targets(rows, ["softmax"], status, threads=[1])
    assert got["softmax @1 thread vs torch"]["status"] == "SKIP"
    assert "torch not installed" in got["softmax @1 thread vs torch"]["where"]
    # one thread count only: the all-threads target has no rows
    assert got["softmax @all threads on 4096x4096 vs scipy"]["status"] == "SKIP"


def test_copy_bound_target_is_fastlin_over_copy():
    bound = [{"workload": "4096x4096 axis=-1", "dtype": "float64", "threads": 1,
              "op": "normalize", "limit": 1.3, "fastlin_out": tm(1.2), "copy": tm(1.0)},
             {"workload": "4096x4096 axis=-1", "dtype": "float32", "threads": 1,
              "op": "normalize", "limit": 1.3, "fastlin_out": tm(1.4), "copy": tm(1.0)}]
    got = _targets([], ["normalize"], {"numpy": "1", "torch": "1"}, threads=[1],
                   bound_rows=bound)
    t = got["normalize(out=) @1 thread vs np.copyto"]
    assert t["status"] == "FAIL" and t["worst"] == pytest.approx(1.4)
    assert "np.copyto" in t["definition"]


def test_distance_matmul_bound_target():
    def row(fl, mm):
        return {"workload": "4096x64 & 4096x64", "metric": "euclidean", "shape": [4096, 64],
                "dtype": "float64", "threads": 2, "op": "cdist", "fastlin": tm(fl),
                "peers": {"scipy": tm(100 * fl)}, "reused": [], "matmul": tm(mm),
                "write": None}
    args = SimpleNamespace(threads=[1, 2], ops=["cdist"])
    got = {t["target"]: t for t in RUN.evaluate_distance_targets(
        [row(1.4, 1.0)], args, {"scipy": "1"}, {"scipy"})}
    t = got["cdist d >= 64 @2 threads vs numpy matmul (cross term)"]
    assert t["status"] == "PASS" and t["worst"] == pytest.approx(1.4)
    assert got["cdist d >= 64 @2 threads vs scipy"]["status"] == "PASS"
    assert got["cdist @2 threads vs sklearn (every workload)"]["status"] == "SKIP"


def test_targets_report_counts_and_definitions():
    targets = [{"target": "a", "need": ">= 2x", "status": "PASS", "worst": 3.0,
                "where": "w", "rows": 2, "definition": "def a"},
               {"target": "b", "need": ">= 2x", "status": "FAIL", "worst": 1.0,
                "where": "w", "rows": 1, "definition": "def b"},
               {"target": "c", "need": ">= 2x", "status": "SKIP", "worst": None,
                "where": "torch not installed", "rows": 0, "definition": "def c"}]
    text, n_fail = R.targets_report(targets)
    assert n_fail == 1
    assert "1 passed, 1 failed, 1 skipped" in text
    lines = text.splitlines()
    for name in "abc":
        i = next(i for i, s in enumerate(lines) if re.match(rf"(PASS|FAIL|SKIP)\s+{name}:", s))
        assert lines[i + 1].strip() == f"def {name}"


# --------------------------------------------------------------------------
# bench.compare
# --------------------------------------------------------------------------

def test_noise_band_adds_the_spreads_with_a_floor():
    assert C.noise_band(tm(1, 0.0), tm(1, 0.0)) == C.DEFAULT_FLOOR
    assert C.noise_band(tm(1, 0.1), tm(1, 0.2)) == pytest.approx(0.3)
    assert C.noise_band(T.from_times([1.0]), tm(1, 0.08)) == pytest.approx(0.08)
    assert C.noise_band(tm(1, 0.01), tm(1, 0.01), floor=0.1) == 0.1


def test_compare_rows_flags_changes_beyond_noise():
    a = [rec(op="softmax", fastlin=tm(10.0, 0.01), scipy=tm(50.0)),
         rec(op="logsumexp", fastlin=tm(10.0, 0.15), scipy=tm(50.0)),
         rec(op="normalize", fastlin=tm(10.0, 0.01), torch=tm(20.0)),
         rec(op="softmax_backward", fastlin=tm(10.0))]
    b = [rec(op="softmax", fastlin=tm(12.0, 0.01), scipy=tm(60.0)),     # +20%, tight
         rec(op="logsumexp", fastlin=tm(12.0, 0.15), scipy=tm(50.0)),   # +20%, noisy
         rec(op="normalize", fastlin=tm(8.0, 0.01), torch=tm(20.0)),    # -20%
         rec(op="normalize_backward", fastlin=tm(1.0))]
    rows, only_a, only_b = C.compare_rows(a, b)
    by = {c["rec"]["op"]: c for c in rows}
    assert by["softmax"]["ratio"] == pytest.approx(1.2)
    assert by["softmax"]["change"] == "slower"
    assert by["softmax"]["peers"] == pytest.approx(1.2)     # the peer moved as much
    assert by["logsumexp"]["change"] == ""                 # inside its +-30% band
    assert by["logsumexp"]["noise"] == pytest.approx(0.3)
    assert by["normalize"]["change"] == "faster"
    assert only_a == ["reductions|softmax_backward|4096x4096|float64|1"]
    assert only_b == ["reductions|normalize_backward|4096x4096|float64|1"]
    text = C.format_comparison(rows, only_a, only_b)
    assert "3 rows in both runs: 1 slower beyond their noise, 1 faster, 1 within it" in text
    assert "only in A (1)" in text and "only in B (1)" in text
    assert "logsumexp" not in C.format_comparison(rows, changed_only=True)


def _write_run(path, recs):
    H.save_json(str(path), {"meta": {"command": "python -m bench.run"},
                            "header": None, "rows": [R.record_json(r) for r in recs]})


def test_compare_main(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _write_run(a, [rec(fastlin=tm(10.0, 0.01))])
    _write_run(b, [rec(fastlin=tm(13.0, 0.01))])
    assert C.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "1.300" in out and "slower" in out
    assert C.main([str(a), str(b), "--fail-on-slower"]) == 1
    assert C.main([str(a), str(a), "--fail-on-slower"]) == 0
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"results": []}))
    with pytest.raises(SystemExit) as exc:
        C.main([str(old), str(b)])
    assert exc.value.code == 2
    assert "has no 'rows'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        C.main([str(a), str(b), "--floor", "-1"])


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--plot", "chart.pdf"], "must end in .png or .svg"),
    (["--plot", "/no/such/dir/chart.png"], "does not exist"),
    (["--target-time", "0"], "--target-time must be a positive"),
    (["--tiny", "--workloads", "4096x4096"], "--tiny replaces the workloads"),
    (["--threads", "0"], "positive integers"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        RUN.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_openblas_line(monkeypatch):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    monkeypatch.delenv("FASTLIN_SIMD", raising=False)
    monkeypatch.delenv(RUN.UNSET_MARK, raising=False)
    assert RUN.openblas_line(False) is None
    monkeypatch.setenv(RUN.UNSET_MARK, "OPENBLAS_CORETYPE=Haswell")
    line = RUN.openblas_line(False)
    assert "OPENBLAS_CORETYPE=Haswell" in line and "re-executed with it unset" in line
    assert RUN.UNSET_MARK not in os.environ           # said once
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    assert "kept as --keep-openblas-env asks" in RUN.openblas_line(True)


# --------------------------------------------------------------------------
# Smoke runs of the quick mode on tiny inputs
# --------------------------------------------------------------------------

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
VERDICT = re.compile(r"^(PASS|FAIL|SKIP)\s", re.M)


def _bench_run(*argv):
    return subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--tiny", *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    js, png = str(d / "results.json"), str(d / "speedups.png")
    proc = _bench_run("--json", js, *(["--plot", png] if HAVE_MPL else []))
    return SimpleNamespace(proc=proc, json=js, png=png, dir=d)


def test_smoke_table_and_json(smoke):
    p = smoke.proc
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    for title in R.FAMILIES.values():
        assert title in out
    assert "fastlin ms" in out and "vs scipy" in out
    assert not VERDICT.search(out), "the plain run must not print verdicts"
    assert re.search(r"\[1/\d+ ", p.stderr)           # the live progress line
    data = json.load(open(smoke.json))
    assert {"meta", "header", "peers", "rows"} <= set(data)
    assert "targets" not in data
    assert data["meta"]["tiny"] and data["meta"]["quick"]
    ids = [r["id"] for r in data["rows"]]
    assert len(ids) == len(set(ids)) > 0
    assert {r["family"] for r in data["rows"]} == set(R.FAMILIES)
    for r in data["rows"]:
        assert r["fastlin"]["reps"] == 3 and "speedups" in r
    # every missing peer is listed with the command that installs it
    for peer, status in data["peers"].items():
        if status.startswith("not installed"):
            assert f"missing : {peer}" in out and "pip install" in out


def test_smoke_chart(smoke, tmp_path):
    pytest.importorskip("matplotlib")
    assert smoke.proc.returncode == 0, smoke.proc.stdout + smoke.proc.stderr
    with open(smoke.png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the same chart from the saved JSON, as SVG
    from bench import plot
    svg = str(tmp_path / "again.svg")
    assert plot.main([smoke.json, svg]) == 0
    with open(svg) as f:
        text = f.read()
    assert "<svg" in text and R.FAMILIES["distances"] in text


def test_smoke_compare_against_itself(smoke, capsys):
    assert smoke.proc.returncode == 0
    assert C.main([smoke.json, smoke.json, "--fail-on-slower"]) == 0
    out = capsys.readouterr().out
    n = len(json.load(open(smoke.json))["rows"])
    assert f"{n} rows in both runs: 0 slower beyond their noise, 0 faster, {n} within it" in out


def test_smoke_check(tmp_path):
    p = _bench_run("--check", "--json", str(tmp_path / "check.json"))
    out = p.stdout
    lines = out.splitlines()
    verdicts = [i for i, s in enumerate(lines) if VERDICT.match(s)]
    assert verdicts, out + p.stderr
    for i in verdicts:                                # each verdict explains itself
        assert "must be" in lines[i + 1]
    failed = any(lines[i].startswith("FAIL") for i in verdicts)
    assert p.returncode == (1 if failed else 0), out + p.stderr
    targets = json.load(open(tmp_path / "check.json"))["targets"]
    assert len(targets) == len(verdicts)
