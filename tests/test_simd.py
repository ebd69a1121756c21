"""The SIMD dispatch seam (fastlin/_simd.py): which level runs, forcing one,
refusing one this machine cannot run, and levels agreeing with each other.

Every level's kernels are run here in child processes (FASTLIN_SIMD is read
once, at import), on the same inputs, at 1 and 2 threads.  CI also runs the
whole suite at each level (.ci/run).
"""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastlin
from fastlin import _simd


def _child(code, level=None, timeout=120):
    env = dict(os.environ)
    env.pop("FASTLIN_SIMD", None)
    if level is not None:
        env["FASTLIN_SIMD"] = level
    # run from a folder without a fastlin/ source tree, as the tests do
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout,
                          cwd=os.path.dirname(os.path.abspath(__file__)))


def test_the_chosen_level_is_the_best_available():
    assert _simd.AVAILABLE, "no level can run"
    assert _simd.AVAILABLE[-1] == "baseline"
    assert set(_simd.AVAILABLE) <= set(_simd.LEVELS)
    if not _simd.FORCED:
        assert _simd.LEVEL == _simd.AVAILABLE[0]
    assert _simd.kernels("_softmax").__name__ == f"fastlin._{_simd.LEVEL}._softmax"


def test_cpu_detection_agrees_with_numpy():
    """fastlin reads cpuid itself; NumPy's own detection is an independent
    judge of the same CPU (unless its features were disabled by hand)."""
    if os.environ.get("NPY_DISABLE_CPU_FEATURES") or os.environ.get("NPY_ENABLE_CPU_FEATURES"):
        pytest.skip("NumPy's CPU features are overridden in this environment")
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # pragma: no cover - NumPy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as feats
    from fastlin import _cpu
    if not _cpu.is_x86():
        assert _cpu.missing("avx2") and _cpu.missing("avx512")
        return
    v3 = all(feats.get(f, False) for f in ("AVX", "AVX2", "FMA3", "F16C", "POPCNT", "SSE42"))
    v4 = v3 and feats.get("AVX512_SKX", False)
    assert (_cpu.missing("avx2") == "") == v3, _cpu.missing("avx2")
    assert (_cpu.missing("avx512") == "") == v4, _cpu.missing("avx512")
    assert _cpu.missing("baseline") == ""


class _FakeCpu:
    """A CPU with AVX2 but without AVX-512."""

    @staticmethod
    def is_x86():
        return True

    @staticmethod
    def missing(level):
        return "avx512f, avx512dq, avx512cd, avx512bw, avx512vl" if level == "avx512" else ""


def _built(level):
    """Whether this build has `level`'s kernel modules (as _simd probes)."""
    try:
        return importlib.util.find_spec(f"fastlin._{level}.{_simd._PROBE}") is not None
    except ImportError:     # no fastlin._<level> at all
        return False


def test_a_level_the_cpu_lacks_is_refused_with_the_reason(monkeypatch):
    if not _built("avx512"):
        # a level that was not built is refused as such, before any CPU test
        pytest.skip("no avx512 level in this build (a non-x86 target or FASTLIN_SIMD_LEVELS)")
    monkeypatch.setattr(_simd, "_cpu", _FakeCpu)
    monkeypatch.delenv(_simd.ENV, raising=False)
    level, forced, why = _simd._choose()
    if "avx2" in _simd.AVAILABLE:
        assert (level, forced) == ("avx2", False)
    assert "avx512f" in why["avx512"]
    monkeypatch.setenv(_simd.ENV, "avx512")
    with pytest.raises(RuntimeError, match=r"FASTLIN_SIMD=avx512 cannot run on this machine: "
                                           r"the CPU or OS lacks avx512f.*the levels it can run"):
        _simd._choose()


def test_an_unknown_level_is_refused():
    r = _child("import fastlin", level="avx1024")
    assert r.returncode != 0
    assert "FASTLIN_SIMD must be one of avx512, avx2, baseline, got 'avx1024'" in r.stderr


def test_a_level_name_is_case_and_space_tolerant():
    r = _child("import fastlin._simd as s; print(s.LEVEL, s.FORCED)", level=" Baseline ")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["baseline", "True"]


@pytest.mark.parametrize("level", _simd.AVAILABLE)
def test_a_forced_level_runs_only_that_levels_code(level):
    r = _child("""
        import sys
        import numpy as np
        import fastlin, fastlin._simd as s
        fastlin.softmax(np.ones((4, 4)), axis=1)
        fastlin.cdist(np.ones((4, 3)), np.zeros((5, 3)))
        loaded = sorted(m for m in sys.modules if m.startswith("fastlin._")
                        and m.count(".") == 2)
        print(s.LEVEL, *loaded)
    """, level=level)
    assert r.returncode == 0, r.stderr
    got = r.stdout.split()
    assert got[0] == level
    assert got[1:] and all(m.startswith(f"fastlin._{level}.") for m in got[1:]), got


@pytest.mark.parametrize("level", _simd.AVAILABLE)
def test_each_levels_vector_width_follows_the_compiler(level):
    # 64-byte vectors at avx512 and under clang; under gcc below AVX-512 the
    # level's registers: ymm at avx2, xmm or NEON q at baseline
    from fastlin import _build_config as bc
    if "FL_VBYTES" in bc.CFLAGS:
        pytest.skip("the build sets FL_VBYTES itself")
    r = _child("""
        import io, fastlin, fastlin._simd as s
        buf = io.StringIO()
        fastlin.show_config(file=buf)
        print(s.kernels("_distance").vector_bytes(), "64-byte" in buf.getvalue(),
              "32-byte" in buf.getvalue(), "16-byte" in buf.getvalue())
    """, level=level)
    assert r.returncode == 0, r.stderr
    width, *shown = r.stdout.split()
    if level == "avx512" or bc.COMPILER in ("clang", "clang-cl"):
        want = 64
    else:
        want = {"avx2": 32, "baseline": 16}[level]
    assert int(width) == want
    assert shown == [str(want == w) for w in (64, 32, 16)]


# Every op and backward on the same inputs, in each level's own process, at
# 1 and 2 threads; the results come back as JSON (lossless: repr of floats).
_ALL_OPS = """
    import json, sys
    import numpy as np
    import fastlin

    def run():
        out = {}
        for dt in (np.float64, np.float32):
            rng = np.random.default_rng(7)
            x = (rng.standard_normal((37, 70)) * 3).astype(dt)
            g = rng.standard_normal((37, 70)).astype(dt)
            A = rng.standard_normal((45, 20)).astype(dt)
            B = rng.standard_normal((33, 20)).astype(dt)
            A3 = rng.standard_normal((300, 3)).astype(dt)
            B3 = rng.standard_normal((200, 3)).astype(dt)
            GD = rng.standard_normal((45, 33)).astype(dt)
            GD3 = rng.standard_normal((300, 200)).astype(dt)
            gp = rng.standard_normal(45 * 44 // 2).astype(dt)
            X = rng.standard_normal((500, 6)).astype(dt)
            mu = rng.standard_normal(6).astype(dt)
            C = np.cov(rng.standard_normal((50, 6)).T).astype(dt)
            gm = rng.standard_normal(500).astype(dt)
            pos = rng.standard_normal(40).astype(dt)
            neg = rng.standard_normal((40, 50)).astype(dt)
            y = fastlin.softmax(x, axis=1)
            ly = fastlin.log_softmax(x, axis=1)
            res = {
                "normalize": fastlin.normalize(x),
                "normalize_backward": fastlin.normalize_backward(g, x),
                "softmax": y,
                "softmax_axis0": fastlin.softmax(x, axis=0),
                "log_softmax": ly,
                "logsumexp": fastlin.logsumexp(x, axis=1),
                "logsumexp_b": fastlin.logsumexp(x, axis=1, b=np.abs(g)),
                "softmax_backward": fastlin.softmax_backward(g, y, axis=1),
                "log_softmax_backward": fastlin.log_softmax_backward(g, ly, axis=1),
                "logsumexp_backward": fastlin.logsumexp_backward(g[:, 0], x, axis=1),
                "cdist": fastlin.cdist(A, B),
                "cdist_sq": fastlin.cdist(A, B, "sqeuclidean"),
                "cdist_cos": fastlin.cdist(A, B, "cosine"),
                "cdist_k3": fastlin.cdist(A3, B3),
                "pdist": fastlin.pdist(A),
                "cdist_backward": fastlin.cdist_backward(GD, A, B)[0],
                "cdist_backward_k3": fastlin.cdist_backward(GD3, A3, B3)[1],
                "pdist_backward": fastlin.pdist_backward(gp, A),
                "mahalanobis": fastlin.mahalanobis(X, mu, C),
                "mahalanobis_backward": fastlin.mahalanobis_backward(gm, X, mu, C)[0],
                "max_margin_loss": fastlin.max_margin_loss(pos, neg, reduction="none"),
                "max_margin_loss_sum": fastlin.max_margin_loss(pos, neg),
                "max_margin_loss_backward": fastlin.max_margin_loss_backward(1.0, pos, neg)[1],
            }
            for k, v in res.items():
                out[f"{k}/{np.dtype(dt).name}"] = np.asarray(v).astype(np.float64).ravel().tolist()
        return out

    res = {}
    for t in (1, 2):
        with fastlin.threads(t):
            res[t] = run()
    json.dump(res, sys.stdout)
"""


@pytest.fixture(scope="module")
def per_level():
    got = {}
    for level in _simd.AVAILABLE:
        r = _child(_ALL_OPS, level=level, timeout=300)
        assert r.returncode == 0, r.stderr
        got[level] = json.loads(r.stdout)
    return got


@pytest.mark.parametrize("level", _simd.AVAILABLE)
def test_each_level_is_bitwise_the_same_at_1_and_2_threads(per_level, level):
    one, two = per_level[level]["1"], per_level[level]["2"]
    for k in one:
        assert np.array_equal(np.array(one[k]), np.array(two[k]), equal_nan=True), k


# Levels may differ where the compiler contracts a product and a sum into
# one FMA (avx2, avx512, and aarch64's baseline) or not (x86-64's baseline),
# a rounding or two per operation, and in a gcc build in the lane order of
# the sums (its vectors have the level's width, fastlin/src/fl_common.h).
# Each level is held to the accuracy each op documents against its reference
# (README, Numerics; the loosest, cdist's, is 14 eps of the largest entry),
# which the whole suite checks at every level; two levels can then differ by
# at most twice that.
@pytest.mark.parametrize("level", [lv for lv in _simd.AVAILABLE if lv != _simd.AVAILABLE[0]])
def test_levels_agree_within_the_accuracy_bounds(per_level, level):
    best = per_level[_simd.AVAILABLE[0]]["1"]
    other = per_level[level]["1"]
    for k in best:
        a, b = np.array(best[k]), np.array(other[k])
        eps = np.finfo(np.float32 if k.endswith("float32") else np.float64).eps
        scale = max(1.0, float(np.max(np.abs(a))))
        assert np.max(np.abs(a - b)) <= 28 * eps * scale, (k, np.max(np.abs(a - b)) / eps / scale)
