"""The tile GEMM (src/fl_gemm.h, behind the _blas.pxd wrappers), and the
distance kernels on both of its backends.

At the avx512 and avx2 levels the tile products use fastlin's own packed
kernel (except on Windows); elsewhere they use scipy's BLAS.  The testing
hook ``_use_own_gemm(False)`` forces the BLAS path, so both are checked here on any machine that has the
kernel: the GEMM itself against a longdouble product (edge panels, strides
wider than the block, beta 0 over NaN and beta 1), and the distance results
of both backends against scipy, the longdouble backward twin and each
other, bitwise across thread counts.
"""
import numpy as np
import pytest
import scipy.spatial.distance as sd
import test_distance as td
import test_distance_backward as tdb

import fastlin
from fastlin import _simd

_k = _simd.kernels("_distance")

BACKENDS = ["own", "blas"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "own" and not _k.own_gemm_enabled():
        pytest.skip(f"no own GEMM at the {_simd.LEVEL} level: the tile products always use BLAS")
    old = _k._use_own_gemm(request.param == "own")
    yield request.param
    _k._use_own_gemm(old)


def _ref_product(ta, tb, m, n, k, alpha, A, B, beta, C0):
    a = (A.T if ta else A)[:m, :k].astype(np.longdouble)
    b = (B.T if tb else B)[:k, :n].astype(np.longdouble)
    want = alpha * (a @ b)
    if beta:
        want = want + C0[:m, :n]
    # |error| <= gamma_k |alpha| |a| |b| (+ one rounding of the sum with C)
    scale = abs(alpha) * (np.abs(a) @ np.abs(b)) + (np.abs(C0[:m, :n]) if beta else 0)
    return want, scale



def test_tile_constants_are_the_ones_the_tests_cut_at():
    """The shapes here and in test_distance*.py are chosen around the GEMM's
    blocking and the distance tiles (k across the 256-deep slices, 14-row and
    16 / 32-column edge panels, 3 x 3 tiles of 256, pdist's 224-row packed
    tiles).  The extension reports the values src/fl_gemm.h and
    src/fl_distance.h define (which assert their relations there): a changed
    constant fails here, not as tests that quietly stop crossing an edge.
    The panels are one 32-byte register wide where the avx2 level has the
    own GEMM, two 64-byte registers otherwise."""
    ymm = _simd.LEVEL == "avx2" and _k.own_gemm_enabled()
    nr64, nr32 = (4, 8) if ymm else (16, 32)
    assert _k.gemm_blocking() == {"mr": 14, "nr_float64": nr64, "nr_float32": nr32,
                                  "kc": 256, "tile": 256, "pdist_packed_tile": 224}
    assert _k.tile_width() == 256
    assert (_k.cdist_tile_rows(True), _k.cdist_tile_rows(False)) == (512, 1024)
    assert _k.direct_k() == 16


# (m, n, k): edge panels in both directions (14 rows, 16 / 32 columns per
# panel), k across the 256-deep slices, single rows and columns
GEMM_SHAPES = [(1, 1, 1), (13, 15, 5), (14, 16, 256), (15, 17, 257), (29, 33, 300),
               (300, 70, 513), (5, 40, 7), (70, 300, 64), (28, 64, 1)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("form", ["abt", "ab", "atb"])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=["x".join(map(str, s)) for s in GEMM_SHAPES])
def test_gemm_against_longdouble(backend, dtype, form, beta, shape):
    m, n, k = shape
    ta, tb = form == "atb", form == "abt"
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    pad = 3                                  # row strides wider than the block
    A = rng.standard_normal((k, m + pad) if ta else (m, k + pad)).astype(dtype)
    B = rng.standard_normal((n, k + pad) if tb else (k, n + pad)).astype(dtype)
    C = rng.standard_normal((m, n + pad)).astype(dtype)
    if beta == 0:
        C[:, :n] = np.nan                   # beta = 0: C is not read
    C0 = C.astype(np.longdouble)
    before = C[:, n:].copy()
    for alpha in (-2.0, 1.0):
        Cw = C.copy()
        _k._gemm(int(ta), int(tb), m, n, k, alpha, A, B, beta, Cw)
        want, scale = _ref_product(ta, tb, m, n, k, alpha, A, B, beta, C0)
        eps = np.finfo(dtype).eps
        err = np.abs(Cw[:, :n].astype(np.longdouble) - want)
        assert np.all(err <= (k + 1) * eps * scale + np.finfo(dtype).tiny), (alpha, err.max())
        # the columns past n (the stride's padding) are untouched
        assert Cw[:, n:].tobytes() == before.tobytes()


@pytest.mark.parametrize("alpha,beta,k", [(-2.0, 0.0, 100), (0.3, 1.0, 300)])
def test_gemm_result_does_not_depend_on_the_block_position(backend, alpha, beta, k):
    """The same rows give the same bits whether they start a product or sit
    inside one, in a full panel or an edge panel (the kernels' tiles cut the
    operands anywhere), for any alpha and over several KC slices."""
    rng = np.random.default_rng(5)
    A = rng.standard_normal((300, k))
    B = rng.standard_normal((200, k))
    C0 = rng.standard_normal((300, 200))
    full = C0.copy()
    _k._gemm(0, 1, 300, 200, k, alpha, A, B, beta, full)
    part = C0[37:, 21:].copy()
    _k._gemm(0, 1, 300 - 37, 200 - 21, k, alpha, A[37:].copy(), B[21:].copy(), beta, part)
    if backend == "own":    # fastlin's kernel: a fixed order per entry, by construction
        assert full[37:, 21:].tobytes() == part.tobytes()
    else:                   # BLAS promises no such thing; only closeness
        np.testing.assert_allclose(full[37:, 21:], part, rtol=1e-12, atol=1e-12)


# ------------------------------------------------ the distances on both backends

@pytest.mark.parametrize("dtype", [td.F64, td.F32], ids=["float64", "float32"])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine", "mahalanobis"])
def test_distances_match_scipy_on_both_backends(backend, metric, dtype):
    for shape in [(300, 513, 20), (257, 30, 40), (9, 8, 300), (1100, 700, 33)]:
        td.test_cdist_pdist_match_scipy(metric, False, dtype, shape)


@pytest.mark.parametrize("dtype", [td.F64, td.F32], ids=["float64", "float32"])
def test_accuracy_on_both_backends(backend, dtype):
    td.test_accuracy_near_duplicates(dtype, 40)
    td.test_accuracy_gemm_path_grows_with_sqrt_k(dtype, 700)
    td.test_identical_points_exactly_zero("euclidean", dtype, 40)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backward_on_both_backends(backend, dtype):
    tdb.test_backward_matches_longdouble_twin("euclidean", 24, 1e6, dtype)
    tdb.test_backward_matches_longdouble_twin("sqeuclidean", 24, 0.0, dtype)
    tdb.test_backward_bitwise_identical_for_1_2_3_threads(dtype, "euclidean", 40)
    tdb.test_backward_given_dist_matches_longdouble_twin(dtype, 1e6)
    tdb.test_backward_with_the_forwards_dist(dtype, "euclidean", 40)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(700, 530, 40), (29, 1000, 33), (300, 17, 70), (1, 5, 3)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_weighted_sums_packed_operands_change_no_bit(dtype, shape, accumulate):
    """weighted_sums with A and B packed once (its row blocks one per thread)
    against the per-block products (fastlin's GEMM, blocks of 256 rows):
    the same sums in the same order, bit for bit, on 1, 2 and 3 threads; and
    against a longdouble product."""
    if not _k.own_gemm_enabled():
        pytest.skip("fastlin's GEMM is not in use on this machine")
    mA, mB, k = shape
    rng = np.random.default_rng(mA + mB + k)
    W = rng.standard_normal((mA, mB)).astype(dtype)
    A = rng.standard_normal((mA, k)).astype(dtype)
    B = rng.standard_normal((mB, k)).astype(dtype)
    C0 = rng.standard_normal((mB, k)).astype(dtype)

    def run(nt, packed):
        WB = np.full((mA, k), np.nan, dtype)
        WtA = C0.copy() if accumulate else np.full((mB, k), np.nan, dtype)
        q = {}
        if packed:
            q = {"Aq": np.empty(_k.packed_len(k, mA, True, dtype == np.float64), dtype),
                 "Bq": np.empty(_k.packed_len(k, mB, True, dtype == np.float64), dtype)}
        _k.weighted_sums(W, A, B, WB, WtA, nt, accumulate=accumulate, **q)
        return WB, WtA

    base = run(1, False)
    for nt in (1, 2, 3):
        for got, want in zip(run(nt, True), base):
            assert got.tobytes() == want.tobytes(), nt
    wl = W.astype(np.longdouble)
    for got, want, scale in [
            (base[0], wl @ B.astype(np.longdouble), np.abs(W) @ np.abs(B)),
            (base[1], wl.T @ A.astype(np.longdouble) + (C0 if accumulate else 0),
             np.abs(W).T @ np.abs(A) + (np.abs(C0) if accumulate else 0))]:
        err = np.abs(got.astype(np.longdouble) - want)
        assert np.all(err <= 2 * max(mA, mB) * np.finfo(dtype).eps * scale)


def test_backends_agree_closely():
    """Both backends compute the same distances up to the GEMM's rounding."""
    if not _k.own_gemm_enabled():
        pytest.skip("no AVX-512 here: only the BLAS backend exists")
    rng = np.random.default_rng(8)
    X = rng.standard_normal((400, 70))
    Y = rng.standard_normal((350, 70))
    own = fastlin.cdist(X, Y)
    old = _k._use_own_gemm(False)
    try:
        blas = fastlin.cdist(X, Y)
    finally:
        _k._use_own_gemm(old)
    want = sd.cdist(X, Y)
    np.testing.assert_allclose(own, want, rtol=14 * np.finfo(float).eps)
    np.testing.assert_allclose(blas, want, rtol=14 * np.finfo(float).eps)


def test_prefault_writes_only_its_bytes():
    """The page-touching helper behind fresh large outputs writes a zero byte
    every `step` bytes (and nothing else), on any thread count."""
    from fastlin._openmp_helpers import prefault
    for nt in (1, 2, 3):
        buf = np.full(10_000, 7, np.uint8)
        prefault(buf, 4096, nt)
        want = np.full(10_000, 7, np.uint8)
        want[::4096] = 0
        assert buf.tobytes() == want.tobytes()
    prefault(np.empty(0, np.uint8), 4096, 2)      # empty: nothing to touch


def test_fresh_outputs_are_prefaulted_and_exact():
    """Outputs above the prefault size (the tests lower it) come out the same."""
    import fastlin._threads as th
    rng = np.random.default_rng(9)
    X = rng.standard_normal((300, 20))
    Y = rng.standard_normal((200, 20))
    want_c, want_p = fastlin.cdist(X, Y), fastlin.pdist(X)
    old = th.PREFAULT_BYTES
    th.PREFAULT_BYTES = 1
    try:
        got_c, got_p = fastlin.cdist(X, Y), fastlin.pdist(X)
    finally:
        th.PREFAULT_BYTES = old
    assert got_c.tobytes() == want_c.tobytes() and got_p.tobytes() == want_p.tobytes()


@pytest.mark.parametrize("dtype", [td.F64, td.F32], ids=["float64", "float32"])
def test_packed_tiles_deep_rows_match_scipy_and_threads(backend, dtype):
    """k > 256 (two slices of the packed panels) with tiles that start inside
    the operands (ragged row blocks, several column tiles, pdist's 224-row
    tiles off the diagonal): against scipy, and bitwise for 1, 2, 3 threads."""
    rng = np.random.default_rng(31)
    XA = rng.standard_normal((600, 600)).astype(dtype)
    XB = rng.standard_normal((530, 600)).astype(dtype)
    X = rng.standard_normal((500, 600)).astype(dtype)
    rtol = 14 * np.finfo(np.float64).eps if dtype == td.F64 else 5 * np.finfo(np.float32).eps
    runs = {}
    for nt in (1, 2, 3):
        with fastlin.threads(nt):
            runs[nt] = (fastlin.cdist(XA, XB), fastlin.pdist(X))
    for nt in (2, 3):
        for a, b in zip(runs[1], runs[nt]):
            assert a.tobytes() == b.tobytes(), nt
    c, p = runs[1]
    np.testing.assert_allclose(c, sd.cdist(XA.astype(np.float64), XB.astype(np.float64)),
                               rtol=rtol)
    np.testing.assert_allclose(p, sd.pdist(X.astype(np.float64)), rtol=rtol)


def test_tile_kernels_accept_empty_operands():
    """The kernels return at once on empty operands (the public functions never
    call them so, but nothing in them divides by a zero tile count)."""
    e = np.empty((0, 5))
    X = np.ones((3, 5))
    out = np.empty((0, 3))
    _k.cdist_tiles(e, X, e, X, np.empty(0), np.ones(3), out, np.zeros((1, 65536)), 0.125,
                   True, 1.0, 1, False)
    out = np.empty((3, 0))
    _k.cdist_tiles(X, e, X, e, np.ones(3), np.empty(0), out, np.zeros((1, 65536)), 0.125,
                   True, 1.0, 1, False)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_squareform_large_both_ways_like_scipy(dtype):
    """A matrix of 1500 points (24 blocks of 64, the last one partial), on the
    parallel copy kernels both ways, against scipy."""
    rng = np.random.default_rng(32)
    v = rng.standard_normal(1500 * 1499 // 2).astype(dtype)
    for nt in (1, 2):
        with fastlin.threads(nt):
            M = fastlin.squareform(v)
            assert M.tobytes() == sd.squareform(v).tobytes()
            back = fastlin.squareform(M)
            assert back.tobytes() == v.tobytes()


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(700, 530, 40), (2048, 600, 300), (257, 1000, 33)])
def test_backward_prepacked_operands_change_no_bit(monkeypatch, dt, shape):
    """cdist_backward packs its operands once (bwd_panels_len, bwd_dist_panels_len);
    without those buffers every tile product packs its own: the same sums in the
    same order, so the gradients must agree bit for bit (near pairs included)."""
    K = _k
    if not K.own_gemm_enabled():
        pytest.skip("fastlin's GEMM is not in use on this machine")
    mA, mB, n = shape
    rng = np.random.default_rng(mA + n)
    A = (rng.standard_normal((mA, n)) + 5).astype(dt)
    B = (rng.standard_normal((mB, n)) + 5).astype(dt)
    B[:20] = A[:20] + dt(1e-3)
    G = rng.standard_normal((mA, mB)).astype(dt)
    D = fastlin.cdist(A, B)
    packed = [fastlin.cdist_backward(G, A, B), fastlin.cdist_backward(G, A, B, dist=D)]
    asked = []
    monkeypatch.setattr(K, "bwd_panels_len", lambda *a: asked.append(1) or (0, 0))
    monkeypatch.setattr(K, "bwd_dist_panels_len", lambda *a: asked.append(2) or (0, 0))
    per_call = [fastlin.cdist_backward(G, A, B), fastlin.cdist_backward(G, A, B, dist=D)]
    assert 1 in asked and 2 in asked          # the per-call path was taken
    for (a1, b1), (a2, b2) in zip(packed, per_call):
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(b1, b2)
