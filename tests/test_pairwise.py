"""cdist_topk, cdist_logsumexp and their backward passes.

Judges, all independent of the code under test:

* fastlin.cdist itself for cdist_topk: the documented guarantee is that every
  returned distance is *bitwise* the entry cdist holds at ``(i, idx[i, q])``
  and that ``idx`` is ``np.argsort(D, axis=1, kind='stable')[:, :k]`` of that
  matrix (of ``-D`` for ``largest``), nan last and ties by index -- so the
  check is exact equality, never a tolerance (``reference.cdist_topk`` with
  ``D=`` given is that argsort).
* ``fastlin.reference`` (longdouble) for cdist_logsumexp and both backward
  passes, with the error bounds derived beside each test;
* central finite differences (float64) and torch autograd of the unfused
  formula (torch.cdist / explicit distances, gather, torch.logsumexp) where
  torch imports.

Shapes are chosen to cross cdist's tiling: more than 256 columns of XB
(several column tiles), more than 2048 (several groups of column tiles per
row block), more than 512 rows of XA (several row blocks), few columns (the
direct path, n <= 16) and more (the GEMM path with its exact recomputation
of near pairs), and the BLAS tile products (``_use_own_gemm(False)``).
"""
import math
import tracemalloc

import numpy as np
import pytest

import fastlin
from conftest import LAYOUTS, as_layout
from fastlin import _simd
from fastlin import reference
from fastlin._distance_api import _cdist_small_mode

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
LD = np.longdouble
EPS64 = float(np.finfo(F64).eps)
METRICS = ("euclidean", "sqeuclidean", "cosine", "mahalanobis")
DTYPES = pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
_k = _simd.kernels("_distance")
TILE = _k.tile_width()

needs_longdouble = pytest.mark.skipif(
    np.finfo(LD).eps > 1e-18, reason="the twins need an extended longdouble")


def eps(dt):
    return float(np.finfo(dt).eps)


def spd(n, rng, cond=10.0):
    """A symmetric positive definite n x n matrix of condition number `cond`."""
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    M = (Q * np.geomspace(1.0, cond, n)) @ Q.T
    return (M + M.T) / 2


def weights(n, rng):
    """Per-feature weights with zeros among them (a zero weight drops a column)."""
    w = rng.uniform(0.0, 3.0, n)
    w[::3] = 0.0
    return w


def metric_kwargs(metric, n, rng, estimate=False):
    """The keyword variants a metric takes: none and w, or a given VI (and the
    estimated one where asked: with one column cdist cannot estimate it)."""
    if metric == "mahalanobis":
        return [{"VI": spd(n, rng)}] + ([{}] if estimate else [])
    return [{}, {"w": weights(n, rng)}]


def points(rng, m, n, dtype):
    return rng.standard_normal((m, n)).astype(dtype)


def same_bits(got, want, what=""):
    """Equal dtype, shape and bits; nan sits at the same places (its payload
    is not part of the contract)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    gn, wn = np.isnan(got), np.isnan(want)
    assert np.array_equal(gn, wn), f"{what}: nan at other places"
    u = {4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    bad = got[~gn].view(u) != want[~wn].view(u)
    assert not bad.any(), (f"{what}: {bad.sum()} entries differ, e.g. "
                           f"{got[~gn][bad][:3]!r} vs {want[~wn][bad][:3]!r}")


def check_topk(XA, XB, ks, metric, largest, D=None, **kw):
    """cdist_topk for each k of `ks` against the stable argsort of fastlin's
    own distance matrix, bitwise."""
    if D is None:
        D = fastlin.cdist(XA, XB, metric, **kw)
    order = np.argsort(-D if largest else D, axis=1, kind="stable")
    for k in ks:
        dist, idx = fastlin.cdist_topk(XA, XB, k, metric, largest=largest, **kw)
        what = f"{metric} k={k} largest={largest} {sorted(kw)} {D.shape} {D.dtype}"
        assert idx.dtype == np.int64 and idx.shape == (D.shape[0], k), what
        np.testing.assert_array_equal(idx, order[:, :k], err_msg=what)
        same_bits(dist, np.take_along_axis(D, order[:, :k], axis=1), what)
    return D


# ------------------------------------------------------------ topk: exactness

# (mA, mB, n): one column; several column tiles; more than 2048 columns
# (several groups of tiles); more than 512 rows (several row blocks); n at
# and across the direct / GEMM boundary (16 / 17), long GEMM panels (300)
SHAPES = [(9, 5, 1), (530, 300, 1), (120, 2100, 3), (600, 2300, 16), (70, 2600, 17),
          (40, 700, 64), (30, 400, 300)]
# k = mB on the large shapes runs on their first 64 rows (a full heap costs
# k log k per row; the tiles and groups are the same)
FULL_K_ENTRIES = 400_000


def _ks(mA, mB):
    return [1, min(mB, 13)] + ([mB] if mA * mB <= FULL_K_ENTRIES else [])


def _topk_cases(shape, dtype, metric, seed, estimate=True):
    """Points with ties (duplicated rows of XB), zero distances (rows of XA
    copied into XB) and their keyword variants."""
    mA, mB, n = shape
    rng = np.random.default_rng(seed)
    XA, XB = points(rng, mA, n, dtype), points(rng, mB, n, dtype)
    if mB > 8:
        XB[7] = XB[3]
        XB[mB - 1] = XB[3]
        XB[5] = XA[0]
    return XA, XB, metric_kwargs(metric, n, rng, estimate=estimate and n in (16, 64))


@DTYPES
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_topk_is_cdist_exactly(shape, metric, dtype):
    """Every returned distance is bitwise fastlin.cdist's entry, every index
    the stable argsort's, for k = 1, a middle k and k = mB, nearest and
    farthest, with and without weights (mahalanobis: a given VI, and the
    estimated one)."""
    mA, mB, n = shape
    XA, XB, kws = _topk_cases(shape, dtype, metric, seed=mA * 7 + mB + n)
    for kw in kws:
        D = fastlin.cdist(XA, XB, metric, **kw)
        assert D.dtype == dtype
        for largest in (False, True):
            check_topk(XA, XB, _ks(mA, mB), metric, largest, D=D, **kw)
            if mA * mB > FULL_K_ENTRIES:
                check_topk(XA[:64], XB, [mB], metric, largest, **kw)


@pytest.fixture
def blas_tiles():
    """The tile products through scipy's BLAS (the path of machines without
    AVX-512), restored afterwards."""
    old = _k._use_own_gemm(False)
    try:
        yield
    finally:
        _k._use_own_gemm(old)


@DTYPES
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", [(600, 2300, 17), (40, 700, 64), (30, 400, 300)],
                         ids=lambda s: "x".join(map(str, s)))
def test_topk_is_cdist_exactly_with_blas_tiles(blas_tiles, shape, metric, dtype):
    """The same guarantee when cdist's GEMM tiles are BLAS products."""
    mA, mB, n = shape
    XA, XB, kws = _topk_cases(shape, dtype, metric, seed=mB + n)
    for kw in kws:
        for largest in (False, True):
            check_topk(XA, XB, [1, 13], metric, largest, **kw)
    check_topk(XA[:50], XB, [mB], metric, False, **kws[0])


def _special_points(dtype, n, rng):
    """Ties, zero distances, nan coordinates, zero rows (cosine: nan
    distances) and infinite coordinates, in XA and XB (600 rows: 3 tiles)."""
    XA, XB = rng.standard_normal((40, n)), rng.standard_normal((600, n))
    XB[10:20] = XB[0]               # ties: the lower index first
    XB[300] = XA[1]                 # a zero distance
    XA[2] = XB[5]
    XB[400] = XA[6] + 1e-9          # a near pair (GEMM path: recomputed exactly)
    XA[3, 0] = np.nan               # a row of nan distances
    XB[30, n - 1] = np.nan          # a column of nan distances
    XA[4] = 0.0
    XB[40] = 0.0
    XB[290] = 0.0                   # zero rows: cosine nan, others ordinary
    XA[5, 0] = np.inf
    XB[50, 0] = -np.inf
    XB[51, 0] = np.inf
    XB[52, 1 % n] = np.inf
    return XA.astype(dtype), XB.astype(dtype)


@DTYPES
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n", [3, 20])
def test_topk_ties_nan_zero_rows_and_inf(n, metric, dtype):
    """nan distances (nan input, cosine's zero rows) sort last by index,
    nearest and farthest; ties by the lower index; infinite coordinates give
    what cdist gives, bitwise.  VI given (the estimate of such points is not
    defined)."""
    rng = np.random.default_rng(n)
    XA, XB = _special_points(dtype, n, rng)
    kws = [{"VI": spd(n, rng)}] if metric == "mahalanobis" else [{}, {"w": weights(n, rng)}]
    with np.errstate(all="ignore"):
        for kw in kws:
            for largest in (False, True):
                D = check_topk(XA, XB, [1, 25, 600], metric, largest, **kw)
                assert np.isnan(D[3]).all()
    if metric == "cosine":
        d, i = fastlin.cdist_topk(XA, XB, 600, "cosine")
        # XA[4] is a zero row: every distance nan, indices in order
        assert np.isnan(d[4]).all() and np.array_equal(i[4], np.arange(600))
        # the nan columns (XB[30] nan, zero rows 40 and 290, infinite rows
        # 50 - 52: inf / inf) come last, by index
        with np.errstate(all="ignore"):
            nan_cols = np.flatnonzero(np.isnan(fastlin.cdist(XA[:1], XB, "cosine")[0]))
        assert {30, 40, 290} <= set(nan_cols)
        np.testing.assert_array_equal(i[0, -len(nan_cols):], nan_cols)


@DTYPES
@pytest.mark.parametrize("metric", METRICS)
def test_topk_xb_is_xa(metric, dtype):
    """XB the very object XA (cdist's shared operands): every point is its own
    nearest at distance 0 (cosine: about 0), as cdist(X, X) says bitwise."""
    rng = np.random.default_rng(31)
    X = points(rng, 700, 20, dtype)
    X[9] = X[2]
    kw = {"VI": spd(20, rng)} if metric == "mahalanobis" else {}
    D = fastlin.cdist(X, X, metric, **kw)
    for largest in (False, True):
        check_topk(X, X, [1, 5, 700], metric, largest, D=D, **kw)
    _, idx = fastlin.cdist_topk(X, X, 2, metric, **kw)
    if metric != "cosine":
        np.testing.assert_array_equal(idx[[2, 9], :2], [[2, 9], [2, 9]])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n", [5, 20])
def test_topk_layouts_give_identical_bits(metric, n):
    """Fortran-ordered, transposed, negatively strided, sliced and read-only
    inputs: the C-ordered call's bits, and cdist's."""
    rng = np.random.default_rng(n)
    A, B = points(rng, 60, n, F64), points(rng, 300, n, F64)
    kw = {"VI": spd(n, rng)} if metric == "mahalanobis" else {"w": weights(n, rng)}
    want = fastlin.cdist_topk(A, B, 7, metric, **kw)
    lse = fastlin.cdist_logsumexp(A, B, metric, scale=-0.5, **kw)
    for lay in LAYOUTS:
        a, b = as_layout(A, lay), as_layout(B, lay)
        got = fastlin.cdist_topk(a, b, 7, metric, **kw)
        check_topk(a, b, [7], metric, False, **kw)
        same_bits(got[0], want[0], lay)
        np.testing.assert_array_equal(got[1], want[1])
        same_bits(fastlin.cdist_logsumexp(a, b, metric, scale=-0.5, **kw), lse, lay)


@pytest.mark.parametrize("metric", METRICS)
def test_topk_integer_input(metric):
    """Integers compute in float64 (cdist's rule); small integers give many
    exact ties, ordered by index."""
    rng = np.random.default_rng(8)
    A = rng.integers(-3, 4, (50, 4))
    B = rng.integers(-3, 4, (400, 4))
    kw = {"VI": spd(4, rng)} if metric == "mahalanobis" else {}
    D = check_topk(A, B, [1, 30, 400], metric, False, **kw)
    assert D.dtype == F64
    check_topk(A, B, [30], metric, True, **kw)
    same_bits(fastlin.cdist_topk(A, B, 30, metric, **kw)[0],
              fastlin.cdist_topk(A.astype(F64), B.astype(F64), 30, metric, **kw)[0])


@DTYPES
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@pytest.mark.parametrize("shapes", [((8, 40), (12, 40)), ((3, 5), (4, 5)),
                                    ((64, 32), (64, 32)), ((1, 1), (6, 1))])
def test_topk_small_calls_match_cdists_short_path(shapes, metric, dtype):
    """Inputs cdist serves by its short path (small float arrays, plain
    (sq)euclidean: every entry by direct differences): still its bits."""
    rng = np.random.default_rng(2)
    A, B = points(rng, *shapes[0], dtype), points(rng, *shapes[1], dtype)
    B[-1] = A[0]
    assert _cdist_small_mode(A, B, metric) is not None
    for largest in (False, True):
        check_topk(A, B, [1, B.shape[0]], metric, largest)
    check_topk(A, A, [1, A.shape[0]], metric, False)


# ------------------------------------------------------------------ edge cases

@pytest.mark.parametrize("metric", METRICS)
def test_topk_empty_and_degenerate(metric):
    """k = 0 and mA = 0 give empty outputs of the right dtypes; mB = 0 takes
    only k = 0; no columns: every distance 0 (cosine 0 / 0: nan), the first
    k indices."""
    A, B = np.ones((3, 2)), np.arange(8.0).reshape(4, 2)
    kw = {"VI": np.eye(2)} if metric == "mahalanobis" else {}
    for XA, XB, k in ((A, B, 0), (A[:0], B, 2), (A, B[:0], 0), (A[:0], B[:0], 0)):
        d, i = fastlin.cdist_topk(XA, XB, k, metric, **kw)
        assert d.shape == i.shape == (XA.shape[0], k)
        assert d.dtype == F64 and i.dtype == np.int64
    d, i = fastlin.cdist_topk(A.astype(F32), B.astype(F32), 0, metric, **kw)
    assert d.dtype == F32 and d.shape == (3, 0)
    with pytest.raises(ValueError, match="k must satisfy"):
        fastlin.cdist_topk(A, B[:0], 1, metric, **kw)
    if metric != "mahalanobis":
        Z, Y = np.zeros((3, 0)), np.zeros((5, 0))
        for k in (0, 2, 5):
            check_topk(Z, Y, [k], metric, False)
            d, i = fastlin.cdist_topk(Z, Y, k, metric)
            np.testing.assert_array_equal(i, np.broadcast_to(np.arange(k), (3, k)))
            assert (np.isnan(d) if metric == "cosine" else d == 0).all()
        lse = fastlin.cdist_logsumexp(Z, Y, metric, b=np.array([0, 1, 2, 0, 3.0]))
        want = np.nan if metric == "cosine" else np.log(6.0)
        np.testing.assert_allclose(lse, want, rtol=2 * EPS64)


def test_logsumexp_empty():
    """mA = 0: an empty result; mB = 0: every row an empty sum, -inf (also
    with b of shape (0,))."""
    A, B = np.ones((3, 2)), np.ones((4, 2))
    for metric in METRICS:
        kw = {"VI": np.eye(2)} if metric == "mahalanobis" else {}
        assert fastlin.cdist_logsumexp(A[:0], B, metric, **kw).shape == (0,)
        np.testing.assert_array_equal(fastlin.cdist_logsumexp(A, B[:0], metric, **kw), -np.inf)
        np.testing.assert_array_equal(
            fastlin.cdist_logsumexp(A, B[:0], metric, b=np.zeros(0), **kw), -np.inf)
    assert fastlin.cdist_logsumexp(A.astype(F32), B[:0].astype(F32)).dtype == F32


def test_backward_empty():
    """No pairs (mA = 0, mB = 0, k = 0): zero gradients of the right shapes."""
    A, B = np.ones((3, 2)), np.arange(8.0).reshape(4, 2)
    gA, gB = fastlin.cdist_topk_backward(np.zeros((3, 0)), A, B, np.zeros((3, 0), np.int64))
    assert gA.shape == (3, 2) and gB.shape == (4, 2) and not gA.any() and not gB.any()
    gA, gB = fastlin.cdist_topk_backward(np.zeros((0, 2)), A[:0], B, np.zeros((0, 2), np.int64))
    assert gA.shape == (0, 2) and gB.shape == (4, 2) and not gB.any()
    gA, gB, gb = fastlin.cdist_logsumexp_backward(np.ones(3), A, B[:0])
    assert gA.shape == (3, 2) and gB.shape == (0, 2) and gb.shape == (0,) and not gA.any()
    gA, gB, gb = fastlin.cdist_logsumexp_backward(np.ones(0), A[:0], B)
    assert gA.shape == (0, 2) and gb.shape == (4,) and not gB.any() and not gb.any()


A3, B4 = np.ones((3, 2)), np.ones((4, 2))


@pytest.mark.parametrize("k,exc,match", [
    (1.5, TypeError, "k must be an integer"), (True, TypeError, "k must be an integer"),
    (np.bool_(False), TypeError, "k must be an integer"), ("2", TypeError, "k must be an integer"),
    (None, TypeError, "k must be an integer"), (np.float64(2.0), TypeError, "k must be an integer"),
    (-1, ValueError, "k must satisfy 0 <= k <= 4"), (5, ValueError, "k must satisfy 0 <= k <= 4"),
])
def test_topk_bad_k(k, exc, match):
    with pytest.raises(exc, match=match):
        fastlin.cdist_topk(A3, B4, k)


def test_topk_k_integer_like():
    """Any integer type is a k (operator.index)."""
    for k in (np.int64(2), np.uint8(2), np.int32(2)):
        d, i = fastlin.cdist_topk(A3, B4, k)
        assert i.shape == (3, 2)


@pytest.mark.parametrize("kw,exc,match", [
    ({"b": np.ones(3)}, ValueError, "b must have shape"),
    ({"b": np.ones((4, 1))}, ValueError, "b must have shape"),
    ({"b": np.array([1.0, -1.0, 1.0, 1.0])}, ValueError, "b must be non-negative"),
    ({"b": np.array([1.0, np.nan, 1.0, 1.0])}, ValueError, "b must be finite"),
    ({"b": np.array([1.0, np.inf, 1.0, 1.0])}, ValueError, "b must be finite"),
    ({"b": np.array(["a", "b", "c", "d"])}, TypeError, "b"),
    ({"b": np.ones(4, complex)}, TypeError, "b"),
    ({"scale": np.inf}, ValueError, "scale must be finite"),
    ({"scale": -np.inf}, ValueError, "scale must be finite"),
    ({"scale": np.nan}, ValueError, "scale must be finite"),
    ({"scale": "1"}, TypeError, "scale must be a real number"),
    ({"scale": True}, TypeError, "scale must be a real number"),
    ({"scale": None}, TypeError, "scale must be a real number"),
    ({"scale": 1j}, TypeError, "scale must be a real number"),
])
def test_logsumexp_bad_b_and_scale(kw, exc, match):
    """Refused by the forward and the backward alike, naming the argument."""
    with pytest.raises(exc, match=match):
        fastlin.cdist_logsumexp(A3, B4, **kw)
    with pytest.raises(exc, match=match):
        fastlin.cdist_logsumexp_backward(np.ones(3), A3, B4, **kw)


def test_logsumexp_scale_any_real():
    """Integers, numpy scalars, zero and negative zero are scales."""
    want = fastlin.cdist_logsumexp(A3, B4, scale=2.0)
    for s in (2, np.float32(2.0), np.int8(2), np.float64(2)):
        same_bits(fastlin.cdist_logsumexp(A3, B4, scale=s), want)
    np.testing.assert_allclose(fastlin.cdist_logsumexp(A3, B4, scale=-0.0), np.log(4),
                               rtol=EPS64)


def _all_calls(XA, XB, **kw):
    """One call of each of the four functions (validation comes first)."""
    metric = kw.pop("metric", "euclidean")
    return [lambda: fastlin.cdist_topk(XA, XB, 1, metric, **kw),
            lambda: fastlin.cdist_logsumexp(XA, XB, metric, **kw),
            lambda: fastlin.cdist_topk_backward(np.ones((len(XA), 1)), XA, XB,
                                                np.zeros((len(XA), 1), np.int64), metric, **kw),
            lambda: fastlin.cdist_logsumexp_backward(np.ones(len(XA)), XA, XB, metric, **kw)]


@pytest.mark.parametrize("args,kw,exc,match", [
    ((A3, np.ones((4, 3))), {}, ValueError, "same number of columns, got 2 and 3"),
    ((A3, B4), {"VI": np.eye(2)}, TypeError, "VI is only used with metric='mahalanobis'"),
    ((A3, B4), {"metric": "cosine", "VI": np.eye(2)}, TypeError, "VI"),
    ((A3, B4), {"metric": "mahalanobis", "w": np.ones(2)}, TypeError, "w is not used"),
    ((A3, B4), {"w": np.ones(3)}, ValueError, "w must be a 1-d array of length 2"),
    ((A3, B4), {"metric": "minkowski"}, ValueError, "minkowski"),
    ((A3.ravel(), B4), {}, ValueError, "2-d"),
    ((A3, B4.astype(complex)), {}, TypeError, "complex"),
])
def test_validation_is_cdists(args, kw, exc, match):
    """cdist's validation, by every entry point: the same error class and
    message as cdist itself."""
    with pytest.raises(exc, match=match):
        fastlin.cdist(*args, **kw)
    for call in _all_calls(*args, **kw):
        with pytest.raises(exc, match=match):
            call()


@pytest.mark.parametrize("grad,idx,exc,match", [
    (np.ones((3, 2)), np.zeros((3, 1), np.int64), ValueError, "grad must have the shape of"),
    (np.ones((3, 1)), np.zeros((2, 1), np.int64), ValueError, "idx must have shape"),
    (np.ones((3, 1)), np.zeros(3, np.int64), ValueError, "idx must have shape"),
    (np.ones((3, 1)), np.zeros((3, 1)), TypeError, "idx must hold integers"),
    (np.ones((3, 1)), np.full((3, 1), 4), ValueError, "idx must index the rows of XB"),
    (np.ones((3, 1)), np.full((3, 1), -1), ValueError, "idx must index the rows of XB"),
    (np.ones((3, 1), complex), np.zeros((3, 1), np.int64), TypeError, "grad"),
])
def test_topk_backward_bad_grad_and_idx(grad, idx, exc, match):
    with pytest.raises(exc, match=match):
        fastlin.cdist_topk_backward(grad, A3, B4, idx)


def test_backward_bad_dist_lse_grad():
    idx = np.zeros((3, 1), np.int64)
    with pytest.raises(ValueError, match="dist must have the shape of"):
        fastlin.cdist_topk_backward(np.ones((3, 1)), A3, B4, idx, dist=np.ones((3, 2)))
    with pytest.raises(ValueError, match="lse must have the shape of"):
        fastlin.cdist_logsumexp_backward(np.ones(3), A3, B4, lse=np.ones(4))
    with pytest.raises(ValueError, match="grad must have the shape of"):
        fastlin.cdist_logsumexp_backward(np.ones(4), A3, B4)


def test_inputs_never_modified():
    """Every array argument keeps its bytes and writeability (read-only and
    strided inputs included)."""
    rng = np.random.default_rng(4)
    for metric in METRICS:
        A = as_layout(points(rng, 30, 20, F64), "readonly")
        B = as_layout(points(rng, 300, 20, F64), "sliced")
        kw = {"VI": spd(20, rng)} if metric == "mahalanobis" else {"w": weights(20, rng)}
        b = rng.uniform(0, 1, 300)
        b[::4] = 0
        d, i = fastlin.cdist_topk(A, B, 3, metric, **kw)
        lse = fastlin.cdist_logsumexp(A, B, metric, b=b, **kw)
        g2, g1 = rng.standard_normal((30, 3)), rng.standard_normal(30)
        arrays = [A, B, b, d, i, lse, g1, g2, *kw.values()]
        snap = [(a, a.tobytes(), a.flags.writeable) for a in arrays]
        fastlin.cdist_topk(A, B, 3, metric, largest=True, **kw)
        fastlin.cdist_logsumexp(A, B, metric, b=b, **kw)
        fastlin.cdist_topk_backward(g2, A, B, i, metric, dist=d, **kw)
        fastlin.cdist_logsumexp_backward(g1, A, B, metric, b=b, lse=lse, **kw)
        for a, data, wr in snap:
            assert a.tobytes() == data and a.flags.writeable == wr, metric


# ------------------------------------------------------- logsumexp: accuracy

def dist_rel(metric, dt, n, VI=None):
    """cdist's relative error bound in units of eps against the longdouble
    distance (test_distance's bounds, as test_registry.dist_rel states them):
    sqeuclidean (8 + 4 sqrt(n)), at least 16 (float32 2 + 0.5 sqrt(n), at
    least 4); euclidean half of it plus one rounding; mahalanobis that plus
    4 (n + 1) kappa(VI) for the factorisation."""
    r = math.sqrt(n)
    sq = max(16, 8 + 4 * r) if dt == F64 else max(4, 2 + 0.5 * r)
    eu = max(8 if dt == F64 else 3, sq / 2 + 1)
    if metric == "sqeuclidean":
        return sq
    if metric == "mahalanobis":
        return eu + 4 * (n + 1) * float(np.linalg.cond(VI))
    return eu


def dist_error(XA, XB, metric, dtype, w=None, VI=None):
    """(D, dD): the longdouble distances (as float64) and cdist's bound on
    the error of each: relative for the (sq)euclidean and Mahalanobis
    distances, (4 n + 8) eps absolute for cosine (test_distance)."""
    n = XA.shape[1]
    with np.errstate(all="ignore"):
        D = reference.cdist(XA, XB, metric, w=w, VI=VI, dtype=LD).astype(F64)
    e = eps(dtype)
    if metric == "cosine":
        dD = np.full(D.shape, (4 * n + 8) * e)
    else:
        if metric == "mahalanobis" and VI is None:
            VI = reference.default_vi(np.vstack([XA, XB]))
        dD = dist_rel(metric, dtype, n, VI) * e * np.abs(D)
    return D, dD + float(np.finfo(dtype).smallest_subnormal)


def lse_bound(XA, XB, metric, dtype, scale, b, want, w=None, VI=None, De=None):
    """The error bound of cdist_logsumexp against the longdouble twin, per row.

    With t_j = scale D_ij the exact exponents and p_j their softmax weights
    (b included), lse is 1-Lipschitz in the max-norm of t: an error dt_j in
    each exponent moves lse by sum_j p_j dt_j <= max_j |dt_j| over the live
    terms (b_j != 0).  The exponents fastlin forms carry

    * |scale| times cdist's error in D_ij (dist_error), and
    * the rounding of scale * D_ij in the result dtype: eps |scale D_ij|;

    then the shifted terms exp(t_j - m) are formed in the dtype: the
    rounding of t_j - m and of the exp, weighted by p_j, add
    eps (c + sum_j p_j |t_j - m|) <= eps (c + log mB) (the weighted mean of
    m - t_j is at most the entropy of p); the final m + log(S), rounded to
    the dtype, eps |lse|: together covered by the softmax family's
    logsumexp bound 8 eps (1 + |lse|) plus eps log mB.  The sum S of
    positive terms is accumulated in double: whatever the order, a relative
    error of at most eps64 per addition on the path of a term -- at most TILE
    terms of a tile row, then one addition and one rescaling exp(m_old -
    m_new) per tile and per group of tiles (at most 64) -- so
    eps64 (TILE + 2 ntiles + 2 * 64) relative in S, as much absolute in lse.
    De: dist_error's result, when already at hand.
    """
    D, dD = dist_error(XA, XB, metric, dtype, w=w, VI=VI) if De is None else De
    e = eps(dtype)
    mB = D.shape[1]
    live = np.ones(D.shape, bool) if b is None else np.broadcast_to(np.asarray(b) != 0, D.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        term = np.where(live & np.isfinite(D), dD + e * np.abs(D), 0.0)
    dt = abs(scale) * term.max(axis=1, initial=0.0)
    ntiles = -(-mB // TILE)
    wv = np.nan_to_num(np.abs(np.asarray(want, F64)), nan=0.0, posinf=0.0, neginf=0.0)
    return (dt + e * (8 * (1 + wv) + math.log(max(mB, 1)))
            + EPS64 * (TILE + 2 * ntiles + 128))


def check_lse(got, want, tol, what):
    """nan and +-inf where the twin (rounded to got's dtype) has them;
    elsewhere within tol."""
    wr = want.astype(got.dtype)
    for f in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(f(got), f(wr), err_msg=f"{what}: {f.__name__}")
    fin = np.isfinite(wr)
    err = np.abs(got[fin].astype(LD) - want[fin]).astype(F64)
    tol = np.broadcast_to(tol, got.shape)[fin]
    bad = ~(err <= tol)
    assert not bad.any(), (f"{what}: {bad.sum()} rows outside the bound, worst err "
                           f"{err[bad].max():.3g} tol {tol[bad][np.argmax(err[bad])]:.3g}")
    return float(np.max(err / tol, initial=0.0))


SCALES = [-1.0, -0.05, 0.0, 0.3, -1e4]


@needs_longdouble
@DTYPES
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", [(50, 700, 17), (30, 300, 3), (520, 40, 24)],
                         ids=lambda s: "x".join(map(str, s)))
def test_logsumexp_against_longdouble_twin(shape, metric, dtype):
    """Against reference.cdist_logsumexp (longdouble) within lse_bound, for
    scales of either sign, zero and huge (-1e4: every term but the nearest
    underflows), b absent, with zeros, and weights of very different sizes
    (e^-30 to e^30); with and without w (mahalanobis: given and estimated
    VI).  Zero weights under scale -1e4 are test_zero_weight_terms_are_dropped's
    (the twin's exp(-1e4) underflows even in longdouble).  Measured: at
    most 0.14 of the bound (float32 sqeuclidean, scale 0.3); the bound is a
    worst case, its |scale| cdist term dominant."""
    mA, mB, n = shape
    rng = np.random.default_rng(mB + n)
    XA, XB = points(rng, mA, n, dtype), points(rng, mB, n, dtype)
    XB[5] = XA[0]
    b0 = rng.uniform(0.0, 2.0, mB)
    b0[::5] = 0.0
    bs = [None, b0, np.exp(rng.uniform(-30, 30, mB))]
    scales = SCALES if metric != "mahalanobis" else [-1.0, 0.3, -1e4]
    for kw in metric_kwargs(metric, n, rng, estimate=True):
        De = dist_error(XA, XB, metric, dtype, **kw)
        for scale in scales:
            for b in bs:
                if scale == -1e4 and b is b0:
                    continue
                bb = None if b is None else b.astype(dtype)
                got = fastlin.cdist_logsumexp(XA, XB, metric, scale=scale, b=bb, **kw)
                assert got.dtype == dtype and got.shape == (mA,)
                want = reference.cdist_logsumexp(XA, XB, metric, scale=scale, b=bb,
                                                 dtype=LD, **kw)
                tol = lse_bound(XA, XB, metric, dtype, scale, bb, want, De=De, **kw)
                check_lse(got, want, tol, f"{metric} scale={scale} {sorted(kw)}")


def test_logsumexp_special_values():
    """The documented values: a row without terms (all-zero b) is -inf; a nan
    distance with a nonzero weight gives nan; an infinite term (scale > 0,
    infinite distance) +inf, an infinite distance under scale < 0 adds
    nothing; an underflowing row keeps its nearest term.  (A zero weight on
    a nan, infinite or overflowing term: test_zero_weight_terms_are_dropped.)"""
    A = np.array([[0.0, 0.0], [1.0, 2.0], [np.nan, 0.0]])
    Bn = np.array([[1.0, 0.0], [np.nan, 1.0], [3.0, -1.0]])
    B = np.array([[1.0, 0.0], [np.inf, 0.0], [3.0, -1.0]])
    lse = lambda XB, **kw: fastlin.cdist_logsumexp(A, XB, "sqeuclidean", **kw)  # noqa: E731
    # a nan distance of weight 1: every row nan
    assert np.isnan(lse(Bn)).all()
    assert np.isnan(lse(Bn, b=np.array([1.0, 2.0, 0.0]))).all()
    # the nan row of XA: nan; the others finite
    got = lse(B[[0, 2]])
    assert np.isnan(got[2]) and np.isfinite(got[:2]).all()
    np.testing.assert_allclose(got[0], np.log(np.exp(-1.0) + np.exp(-10.0)), rtol=4 * EPS64)
    # the infinite row: +inf for scale > 0 (weight 1), nothing for scale < 0
    got = lse(B, scale=0.5)
    assert got[0] == np.inf and got[1] == np.inf and np.isnan(got[2])
    want = [np.log(np.exp(-1.0) + np.exp(-10.0)), np.log(np.exp(-4.0) + np.exp(-13.0))]
    np.testing.assert_allclose(lse(B)[:2], want, rtol=4 * EPS64)
    # only the infinite term, under scale < 0: exp(-inf) = 0, an empty sum
    np.testing.assert_array_equal(lse(B, b=np.array([0.0, 3.0, 0.0]))[:2], -np.inf)
    # all-zero b: -inf for every row, the nan ones included
    np.testing.assert_array_equal(lse(Bn, b=np.zeros(3)), -np.inf)
    np.testing.assert_array_equal(lse(B, b=np.zeros(3)), -np.inf)
    # huge |scale|: all but the nearest term underflow, lse = scale d_min + log b
    got = lse(B[[0, 2]], b=np.array([3.0, 1.0]), scale=-1e300)
    np.testing.assert_array_equal(got[:2], [-1e300, -1e300 * 4])
    got = lse(B[[0, 2]], scale=-1e4, b=np.array([3.0, 1.0]))
    np.testing.assert_allclose(got[:2], [-1e4 + np.log(3.0), -1e4 * 4 + np.log(3.0)],
                               rtol=4 * EPS64)
    for XB in (B, Bn):
        for s in (-1.0, 0.5, 0.0):
            for b in (None, np.array([1.0, 2.0, 0.5]), np.array([1.0, 1.0, 0.0])):
                with np.errstate(all="ignore"):
                    want = reference.cdist_logsumexp(A, XB, scale=s, b=b)
                    got = lse(XB, scale=s, b=b)
                for f in (np.isnan, np.isposinf, np.isneginf):
                    np.testing.assert_array_equal(f(got), f(want), err_msg=f"{s} {b}")


@DTYPES
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_logsumexp_nan_distances(metric, dtype):
    """Cosine's zero rows and nan coordinates give nan distances: a row
    meeting one with a nonzero weight is nan (600 columns: the nan in another
    tile than the row's other terms); the others are the twin's."""
    rng = np.random.default_rng(6)
    XA, XB = points(rng, 20, 24, dtype), points(rng, 600, 24, dtype)
    XA[3] = 0.0 if metric == "cosine" else np.nan
    got = fastlin.cdist_logsumexp(XA, XB, metric)
    assert np.isnan(got[3]) and np.isfinite(np.delete(got, 3)).all()
    with np.errstate(all="ignore"):
        want = reference.cdist_logsumexp(XA, XB, metric, dtype=LD)
    check_lse(got, want, lse_bound(XA, XB, metric, dtype, -1.0, None, want), metric)
    XB[500] = 0.0 if metric == "cosine" else np.nan
    assert np.isnan(fastlin.cdist_logsumexp(XA, XB, metric)).all()


def _zero_weight_nan_term():
    """A nan distance of weight 0 (XB's row 1) should be left out: -1
    (log exp(-1)), not nan."""
    A, B = np.array([[0.0]]), np.array([[np.nan], [1.0]])
    got = fastlin.cdist_logsumexp(A, B, b=np.array([0.0, 1.0]))
    np.testing.assert_array_equal(got, [-1.0])


def _zero_weight_infinite_term():
    """An infinite term (scale 1, infinite distance) of weight 0 should be
    left out: 1 (log exp(1 * 1)), not nan."""
    A, B = np.array([[0.0]]), np.array([[np.inf], [1.0]])
    got = fastlin.cdist_logsumexp(A, B, scale=1.0, b=np.array([0.0, 1.0]))
    np.testing.assert_array_equal(got, [1.0])


def _zero_weight_overflowing_term():
    """A term of weight 0 whose exponent exceeds the largest live one by more
    than exp's range (709 in float64: scale -1000, distances 0 and 1) should
    be left out: -1000, not nan (its shifted exponential is inf, times the
    zero weight).  As a self-match masked out by b = 0 under a sharp scale
    would do."""
    A, B = np.array([[0.0]]), np.array([[0.0], [1.0]])
    got = fastlin.cdist_logsumexp(A, B, scale=-1000.0, b=np.array([0.0, 1.0]))
    np.testing.assert_array_equal(got, [-1000.0])


def _zero_weight_overflowing_term_float32():
    """The same in float32 (exp's range ends at 88): scale -100 gives -100."""
    A, B = np.array([[0.0]], F32), np.array([[0.0], [1.0]], F32)
    got = fastlin.cdist_logsumexp(A, B, scale=-100.0, b=np.array([0.0, 1.0]))
    np.testing.assert_array_equal(got, np.array([-100.0], F32))


def _zero_weight_overflowing_term_backward():
    """cdist_logsumexp_backward of the same: gXA = sum_j g scale b_j E_j
    dD_j = -1000 * 1 * 1 * (-2) = 2000 (only the live term has weight), not
    nan (E = inf for the dead term, times b_j = 0), also when given lse."""
    A, B = np.array([[0.0]]), np.array([[0.0], [1.0]])
    b = np.array([0.0, 1.0])
    with np.errstate(all="ignore"):
        for kw in ({}, {"lse": np.array([-1000.0])}):
            gA, gB, gb = fastlin.cdist_logsumexp_backward(np.ones(1), A, B, scale=-1000.0,
                                                          b=b, **kw)
            np.testing.assert_array_equal(gA, [[2000.0]])
            np.testing.assert_array_equal(gB, [[0.0], [-2000.0]])


def _zero_weight_terms_in_a_sweep():
    """In a 30 x 300 x 3 sweep under scale -1e4 with every fifth weight 0:
    the rows whose nearest point has weight 0 (rows 0, 1, 14, 15, 17 here)
    are finite, as the twin's."""
    rng = np.random.default_rng(303)
    XA, XB = rng.standard_normal((30, 3)), rng.standard_normal((300, 3))
    XB[5] = XA[0]
    b = rng.uniform(0.0, 2.0, 300)
    b[::5] = 0.0
    got = fastlin.cdist_logsumexp(XA, XB, "euclidean", scale=-1e4, b=b)
    assert np.isfinite(got).all(), np.flatnonzero(~np.isfinite(got))


ZERO_WEIGHT_CASES = [_zero_weight_nan_term, _zero_weight_infinite_term,
                     _zero_weight_overflowing_term, _zero_weight_overflowing_term_float32,
                     _zero_weight_overflowing_term_backward, _zero_weight_terms_in_a_sweep]


@pytest.mark.parametrize("case", ZERO_WEIGHT_CASES, ids=lambda f: f.__name__[1:])
def test_zero_weight_terms_are_dropped(case):
    """Documented: "Terms whose weight is 0 are left out, whatever their
    distance" -- also where the exponent is nan, +inf, or above the shift by
    more than exp's range (0 * inf would be nan): lse_fold
    (src/fl_pairwise_tpl.h) masks them in its sum as in its maximum, and the
    backward's weights b E are 0 there."""
    with np.errstate(all="ignore"):
        case()


# ------------------------------------------------------------ thread counts

@DTYPES
@pytest.mark.parametrize("metric", METRICS)
def test_bitwise_identical_for_1_and_2_threads(metric, dtype):
    """700 x 2300 x 20 (3 row blocks, 9 column tiles in groups): the topk, the
    log-sum-exp (groups combined in a fixed order) and both backward passes
    give the same bits on 1 and 2 threads."""
    rng = np.random.default_rng(12)
    A, B = points(rng, 700, 20, dtype), points(rng, 2300, 20, dtype)
    B[7] = B[3]
    kw = {"VI": spd(20, rng)} if metric == "mahalanobis" else {"w": weights(20, rng)}
    b = rng.uniform(0, 1, 2300).astype(dtype)
    g2, g1 = rng.standard_normal((700, 5)).astype(dtype), rng.standard_normal(700)
    res = {}
    for nt in (1, 2):
        with fastlin.threads(nt):
            d, i = fastlin.cdist_topk(A, B, 5, metric, **kw)
            d2, i2 = fastlin.cdist_topk(A, B, 5, metric, largest=True, **kw)
            lse = fastlin.cdist_logsumexp(A, B, metric, scale=-0.3, b=b, **kw)
            res[nt] = (d, i, d2, i2, lse,
                       *fastlin.cdist_topk_backward(g2, A, B, i, metric, **kw),
                       *fastlin.cdist_logsumexp_backward(g1, A, B, metric, scale=-0.3, b=b,
                                                         **kw))
    for x, y in zip(res[1], res[2]):
        assert x.tobytes() == y.tobytes()


# ------------------------------------------------------------------- memory

@pytest.mark.parametrize("fn", ["topk", "logsumexp"])
def test_peak_memory_far_below_the_distance_matrix(fn):
    """2000 x 20000 x 8 float64: the matrix would be 320 MB.  The sweep keeps
    one cdist tile per thread (1 MiB), cdist's operand copies (a few MB),
    per-group heaps of the k best (k = 10: 2000 x 10 x 16 bytes per group)
    or O(mA) log-sum-exp state, and the outputs: all numpy arrays, which
    numpy reports to tracemalloc.  Bound: a quarter of the matrix (the
    measured peak is a few MB)."""
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((2000, 8)), rng.standard_normal((20000, 8))
    matrix = A.shape[0] * B.shape[0] * 8
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        if fn == "topk":
            d, i = fastlin.cdist_topk(A, B, 10)
        else:
            lse = fastlin.cdist_logsumexp(A, B, scale=-0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < matrix / 4, f"peak {peak / 1e6:.1f} MB"
    # the results themselves are right (spot check of a few rows)
    D = fastlin.cdist(A[:5], B)
    if fn == "topk":
        check_topk(A[:5], B, [10], "euclidean", False, D=D)
        same_bits(d[:5], np.sort(D, axis=1)[:, :10])
    else:
        assert np.all(np.isfinite(lse))


# ------------------------------------------------------------------ backward

def _abs_pair_terms(W, A, B, metric, VI, w):
    """sum_j |term_ij| and sum_i |term_ij| in longdouble: the magnitudes the
    two gradient sums add, for pair weights W (>= 0).  Cosine's terms
    -(b^ - cos a^) / |a| are bounded by 2 / |a| (|a^| = |b^| = 1); with w the
    terms are the scaled rows' times sqrt(w)."""
    sw = None if w is None else np.sqrt(np.asarray(w, F64))
    Al, Bl = np.asarray(A).astype(LD), np.asarray(B).astype(LD)
    if sw is not None:
        Al, Bl = Al * sw, Bl * sw
    Wl = np.abs(np.asarray(W).astype(LD))
    with np.errstate(all="ignore"):
        if metric == "cosine":
            ia = 2 / np.sqrt((Al * Al).sum(-1))
            ib = 2 / np.sqrt((Bl * Bl).sum(-1))
            ma = Wl.sum(axis=1) * np.where(np.isfinite(ia), ia, 0)
            mb = Wl.sum(axis=0) * np.where(np.isfinite(ib), ib, 0)
        else:
            P = None if VI is None else reference._precision(VI, A, B)
            ga, gb = reference._pair_grads(Al[:, None, :], Bl[None, :, :], Wl, metric, P)
            ma, mb = np.abs(ga).sum(axis=(1, 2)), np.abs(gb).sum(axis=(0, 2))
    s = 1.0 if sw is None else float(sw.max(initial=0.0))
    return ma.astype(F64) * s, mb.astype(F64) * s


def bwd_factor(dtype, metric, VI):
    """cdist_backward's bound (test_distance_backward): 1e-14 (float64) / 4e-6
    (float32) of the largest magnitude of the pair terms summed (about 45
    eps / 34 eps), times kappa(VI) for mahalanobis."""
    f = 1e-14 if dtype == F64 else 4e-6
    return f * (float(np.linalg.cond(VI)) if metric == "mahalanobis" else 1.0)


def assert_within(got, want, tol, what):
    assert got.shape == want.shape, what
    err = np.abs(got.astype(LD) - want).astype(F64)
    assert np.all(np.isfinite(got)), what
    assert np.all(err <= tol), f"{what}: max err {err.max():.3g}, tol {np.min(tol):.3g}"


def _bwd_data(dtype, n, rng, mA=40, mB=300):
    A, B = points(rng, mA, n, dtype) + 1, points(rng, mB, n, dtype) + 1
    B[4] = A[7]                                     # a zero distance
    B[9] = A[8] + dtype.type(1e-3)                  # a near pair
    return A, B


@needs_longdouble
@DTYPES
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n", [3, 17])
def test_topk_backward_against_twin(n, metric, dtype):
    """Against reference.cdist_topk_backward (pair by pair in longdouble):
    each term is formed from its float64 difference and rounded once, then
    summed over k (gXA) or the queries picking a row (gXB): cdist_backward's
    bound (bwd_factor) of the largest magnitude summed."""
    rng = np.random.default_rng(n)
    A, B = _bwd_data(dtype, n, rng)
    for kw in metric_kwargs(metric, n, rng):
        for largest in (False, True):
            d, idx = fastlin.cdist_topk(A, B, 6, metric, largest=largest, **kw)
            G = rng.standard_normal(idx.shape).astype(dtype)
            got = fastlin.cdist_topk_backward(G, A, B, idx, metric, **kw)
            want = reference.cdist_topk_backward(G, A, B, idx, metric, dtype=LD, **kw)
            Gfull = np.zeros((A.shape[0], B.shape[0]))
            np.add.at(Gfull, (np.arange(A.shape[0])[:, None], idx), np.abs(G))
            VI = kw.get("VI")
            ma, mb = _abs_pair_terms(Gfull, A, B, metric, VI, kw.get("w"))
            f = bwd_factor(dtype, metric, VI)
            for g, wnt, m, name in zip(got, want, (ma, mb), ("gXA", "gXB")):
                assert g.dtype == dtype
                assert_within(g, wnt, f * m.max(), f"{metric} {name} {sorted(kw)}")
            # dist= reuse: the same up to the rounding of the distances
            got2 = fastlin.cdist_topk_backward(G, A, B, idx, metric, dist=d, **kw)
            for g, wnt, m in zip(got2, want, (ma, mb)):
                assert_within(g, wnt, f * m.max(), f"{metric} dist= {sorted(kw)}")


def lse_bwd_tols(A, B, g, metric, dtype, scale, b, want_lse, w=None, VI=None):
    """Bounds of (gXA, gXB, gb) against the twin.  The weights E_ij =
    exp(scale D_ij - lse_i) carry a relative error of at most the error of
    scale D_ij (|scale| dD + eps |scale D|) plus that of lse_i (lse_bound)
    plus the rounding of their difference and exp in the dtype (eps (2 +
    |scale D_ij| + |lse_i|)); e is its largest value.  The point gradients
    are cdist_backward of W = g scale b E: its bound (bwd_factor) plus e, of
    the largest magnitude summed; gb_j = sum_i g_i E_ij is summed in float64
    (mA eps64) and rounded once: (e + mA eps64 + eps) sum_i |g_i| E_ij."""
    D, dD = dist_error(A, B, metric, dtype, w=w, VI=VI)
    ep = eps(dtype)
    lse = np.asarray(want_lse, F64)
    ltol = lse_bound(A, B, metric, dtype, scale, b, want_lse, w=w, VI=VI)
    bl = np.ones(B.shape[0]) if b is None else np.asarray(b, F64)
    with np.errstate(all="ignore"):
        E = np.exp(scale * D - lse[:, None])
        E[np.isneginf(lse)] = 0
        rel = (abs(scale) * (dD + ep * np.abs(D)) + ltol[:, None]
               + ep * (2 + np.abs(scale * D) + np.abs(lse)[:, None]))
    e = float(np.max(np.where(E > 0, rel, 0.0), initial=0.0))
    W = np.abs(g)[:, None] * abs(scale) * bl * E
    ma, mb = _abs_pair_terms(W, A, B, metric, VI, w)
    f = bwd_factor(dtype, metric, VI) + e
    gbm = (np.abs(g)[:, None] * E).sum(axis=0)
    return (f * ma.max(initial=0.0), f * mb.max(initial=0.0),
            (e + A.shape[0] * EPS64 + ep) * gbm + float(np.finfo(dtype).smallest_subnormal))


@needs_longdouble
@DTYPES
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n", [3, 17])
def test_logsumexp_backward_against_twin(n, metric, dtype):
    """Against reference.cdist_logsumexp_backward (longdouble), within
    lse_bwd_tols; b absent and with zeros (gb there too), scales of both
    signs; lse= reuse within the same bounds."""
    rng = np.random.default_rng(100 + n)
    A, B = _bwd_data(dtype, n, rng)
    b0 = rng.uniform(0.0, 2.0, B.shape[0]).astype(dtype)
    b0[::4] = 0
    for kw in metric_kwargs(metric, n, rng):
        for scale, b in ((-1.0, None), (-0.2, b0), (0.1, b0)):
            g = rng.standard_normal(A.shape[0]).astype(dtype)
            got = fastlin.cdist_logsumexp_backward(g, A, B, metric, scale=scale, b=b, **kw)
            want = reference.cdist_logsumexp_backward(g, A, B, metric, scale=scale, b=b,
                                                      dtype=LD, **kw)
            wl = reference.cdist_logsumexp(A, B, metric, scale=scale, b=b, dtype=LD, **kw)
            tols = lse_bwd_tols(A, B, g, metric, dtype, scale, b, wl, **kw)
            what = f"{metric} scale={scale} b={b is not None} {sorted(kw)}"
            for x, y, t, name in zip(got, want, tols, ("gXA", "gXB", "gb")):
                assert x.dtype == dtype, name
                assert_within(x, y, t, f"{what} {name}")
            lse = fastlin.cdist_logsumexp(A, B, metric, scale=scale, b=b, **kw)
            got2 = fastlin.cdist_logsumexp_backward(g, A, B, metric, scale=scale, b=b,
                                                    lse=lse, **kw)
            for x, y, t, name in zip(got2, want, tols, ("gXA", "gXB", "gb")):
                assert_within(x, y, t, f"{what} lse= {name}")


def _central_differences(f, X, h=1e-6):
    fd = np.zeros_like(X)
    for i in np.ndindex(X.shape):
        Xp, Xm = X.copy(), X.copy()
        Xp[i] += h
        Xm[i] -= h
        fd[i] = (f(Xp) - f(Xm)) / (2 * h)
    return fd


def _fd_close(got, fd):
    # truncation O(h^2 f''') and rounding O(eps |f| / h): both < 1e-8 here
    np.testing.assert_allclose(got, fd, rtol=0, atol=1e-6 * max(1.0, np.abs(fd).max()))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("weighted", [False, True])
def test_backward_central_differences(metric, weighted):
    """float64, 6 x 4 against 7 x 4: the topk backward (the indices held
    fixed: the loss is sum(G * D[i, idx])) and the log-sum-exp backward
    (points and b) against central differences of the forwards."""
    if weighted and metric == "mahalanobis":
        pytest.skip("mahalanobis takes no w")
    rng = np.random.default_rng(9)
    A, B = rng.standard_normal((6, 4)), rng.standard_normal((7, 4))
    kw = {"VI": spd(4, rng)} if metric == "mahalanobis" else {}
    if weighted:
        kw["w"] = rng.uniform(0.5, 2.0, 4)
    d, idx = fastlin.cdist_topk(A, B, 3, metric, **kw)
    G = rng.standard_normal(idx.shape)
    gA, gB = fastlin.cdist_topk_backward(G, A, B, idx, metric, **kw)

    def topk_loss(XA, XB):
        D = fastlin.cdist(XA, XB, metric, **kw)
        return float(np.sum(G * np.take_along_axis(D, idx, axis=1)))

    _fd_close(gA, _central_differences(lambda X: topk_loss(X, B), A))
    _fd_close(gB, _central_differences(lambda X: topk_loss(A, X), B))
    b = rng.uniform(0.5, 2.0, 7)
    g = rng.standard_normal(6)
    for scale in (-0.7, 0.4):
        def lse_loss(XA, XB, bb):
            return float(np.sum(g * fastlin.cdist_logsumexp(XA, XB, metric, scale=scale,
                                                            b=bb, **kw)))
        gA, gB, gb = fastlin.cdist_logsumexp_backward(g, A, B, metric, scale=scale, b=b, **kw)
        _fd_close(gA, _central_differences(lambda X: lse_loss(X, B, b), A))
        _fd_close(gB, _central_differences(lambda X: lse_loss(A, X, b), B))
        _fd_close(gb, _central_differences(lambda X: lse_loss(A, B, X), b))


def test_against_torch_autograd():
    """float64 autograd of the unfused formulas: the distance matrix
    (torch.cdist, or explicit (weighted) differences, the cosine of unit
    rows, the Mahalanobis form with VI constant), gathered at the indices /
    reduced by torch.logsumexp with log(b) added (the b gradient from
    m + log(sum b exp(t - m)), which has it at b_j = 0 too).  Both sides
    are float64 formulas of O(n) terms: 1e-12 of the largest gradient."""
    torch = pytest.importorskip("torch",
                                reason="torch is not installed: autograd comparison skipped")
    rng = np.random.default_rng(5)
    A, B = rng.standard_normal((40, 9)) + 3.0, rng.standard_normal((300, 9)) + 3.0
    VI = spd(9, rng)
    w = rng.uniform(0.5, 2.0, 9)

    def dist(metric, a, b, kw):
        if metric == "cosine":
            if "w" in kw:
                s = torch.tensor(np.sqrt(kw["w"]))
                a, b = a * s, b * s
            return 1 - (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T
        diff = a[:, None, :] - b[None, :, :]
        if metric == "mahalanobis":
            q = torch.einsum("ijk,kl,ijl->ij", diff, torch.tensor(kw["VI"]), diff)
        elif "w" in kw:
            q = (diff * diff * torch.tensor(kw["w"])).sum(-1)
        elif metric == "euclidean":
            return torch.cdist(a, b)
        else:
            q = (diff * diff).sum(-1)
        return q if metric == "sqeuclidean" else torch.sqrt(q)

    b = rng.uniform(0.0, 2.0, 300)
    b[::5] = 0.0
    for metric in METRICS:
        for kw in ([{"VI": VI}] if metric == "mahalanobis" else [{}, {"w": w}]):
            ta = torch.tensor(A, requires_grad=True)
            tb = torch.tensor(B, requires_grad=True)
            d, idx = fastlin.cdist_topk(A, B, 4, metric, **kw)
            G = rng.standard_normal(idx.shape)
            sel = torch.gather(dist(metric, ta, tb, kw), 1, torch.tensor(idx))
            (sel * torch.tensor(G)).sum().backward()
            got = fastlin.cdist_topk_backward(G, A, B, idx, metric, **kw)
            for x, t in zip(got, (ta.grad, tb.grad)):
                t = t.numpy()
                np.testing.assert_allclose(x, t, rtol=0, atol=1e-12 * max(1.0, np.abs(t).max()))
            np.testing.assert_allclose(d, sel.detach().numpy(), rtol=1e-13)
            for scale in (-0.7, 0.05):
                ta = torch.tensor(A, requires_grad=True)
                tb = torch.tensor(B, requires_grad=True)
                tbw = torch.tensor(b, requires_grad=True)
                T = scale * dist(metric, ta, tb, kw)
                lse_t = torch.logsumexp(T + torch.log(torch.tensor(b)), dim=1)
                m = T.max(dim=1, keepdim=True).values.detach()
                lse_b = m[:, 0] + torch.log((tbw * torch.exp(T - m)).sum(1))
                g = rng.standard_normal(40)
                (torch.tensor(g) * lse_t).sum().backward(inputs=[ta, tb])
                (torch.tensor(g) * lse_b).sum().backward(inputs=[tbw])
                got = fastlin.cdist_logsumexp_backward(g, A, B, metric, scale=scale, b=b, **kw)
                for x, t in zip(got, (ta.grad, tb.grad, tbw.grad)):
                    t = t.numpy()
                    np.testing.assert_allclose(x, t, rtol=0,
                                               atol=1e-12 * max(1.0, np.abs(t).max()))
                np.testing.assert_allclose(
                    fastlin.cdist_logsumexp(A, B, metric, scale=scale, b=b, **kw),
                    lse_t.detach().numpy(), rtol=1e-13)


def test_backward_zero_distance_and_zero_rows():
    """A zero euclidean distance has the zero subgradient (finite, the pair
    adds nothing); cosine's zero rows get zero gradients; b=None gives gb
    as for b of ones."""
    X = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, -1.0]])
    d, idx = fastlin.cdist_topk(X, X, 2)
    gA, gB = fastlin.cdist_topk_backward(np.ones((3, 2)), X, X, idx)
    assert np.isfinite(gA).all() and np.isfinite(gB).all()
    u = (X[2] - X[0]) / np.linalg.norm(X[2] - X[0])
    # rows 0, 1 pick {0, 1} (distance 0: nothing); row 2 picks itself and row 0
    np.testing.assert_allclose(gA, [[0, 0], [0, 0], u], rtol=1e-15)
    np.testing.assert_allclose(gB, [-u, [0, 0], [0, 0]], rtol=1e-15)
    gA, gB, gb = fastlin.cdist_logsumexp_backward(np.ones(3), X, X, "euclidean")
    assert np.isfinite(gA).all() and np.isfinite(gB).all()
    Z = np.array([[0.0, 0.0], [1.0, 1.0]])
    gA, gB = fastlin.cdist_topk_backward(np.ones((2, 2)), Z, Z, np.array([[0, 1], [1, 0]]),
                                         "cosine")
    # the zero row's pairs: exactly 0; 1 - cos(x, x): 0 up to rounding
    np.testing.assert_array_equal(gA[0], 0.0)
    np.testing.assert_array_equal(gB[0], 0.0)
    np.testing.assert_allclose(gA[1], 0.0, atol=4 * EPS64)
    np.testing.assert_allclose(gB[1], 0.0, atol=4 * EPS64)
    b1 = fastlin.cdist_logsumexp_backward(np.ones(3), X, X, b=None)
    b2 = fastlin.cdist_logsumexp_backward(np.ones(3), X, X, b=np.ones(3))
    for x, y in zip(b1, b2):
        same_bits(x, y)
    # gb at a zero weight: sum_i g_i exp(scale D_ij - lse_i), the term left out of lse
    b = np.array([1.0, 0.0, 2.0])
    _, _, gb = fastlin.cdist_logsumexp_backward(np.ones(3), X, X, b=b)
    D = fastlin.cdist(X, X, "sqeuclidean")
    lse = fastlin.cdist_logsumexp(X, X, b=b)
    np.testing.assert_allclose(gb, np.exp(-D - lse[:, None]).sum(0), rtol=4 * EPS64)


@DTYPES
def test_backward_out(dtype):
    """out= is filled and returned as the tuple given, the values those
    without it; a wrong out is refused naming it, leaving it as it was."""
    rng = np.random.default_rng(3)
    A, B = points(rng, 30, 20, dtype), points(rng, 300, 20, dtype)
    d, idx = fastlin.cdist_topk(A, B, 3)
    G = rng.standard_normal((30, 3)).astype(dtype)
    want = fastlin.cdist_topk_backward(G, A, B, idx)
    out = (np.full((30, 20), np.nan, dtype), np.full((300, 20), np.nan, dtype))
    r = fastlin.cdist_topk_backward(G, A, B, idx, out=out)
    assert r is out or (r[0] is out[0] and r[1] is out[1])
    for x, y in zip(out, want):
        same_bits(x, y)
    g = rng.standard_normal(30).astype(dtype)
    b = rng.uniform(0, 1, 300).astype(dtype)
    want = fastlin.cdist_logsumexp_backward(g, A, B, scale=-0.5, b=b)
    out = tuple(np.full(x.shape, np.nan, dtype) for x in want)
    r = fastlin.cdist_logsumexp_backward(g, A, B, scale=-0.5, b=b, out=out)
    assert all(x is y for x, y in zip(r, out))
    for x, y in zip(out, want):
        same_bits(x, y)
    other = F64 if dtype == F32 else F32
    bads = [(out[0], out[1]), (np.empty((30, 20), other), out[1], out[2]),
            (out[0], np.empty((299, 20), dtype), out[2]), [*out]]
    for bad in bads:
        snap = [x.tobytes() for x in out]
        with pytest.raises((ValueError, TypeError), match="out"):
            fastlin.cdist_logsumexp_backward(g, A, B, scale=-0.5, b=b, out=bad)
        assert [x.tobytes() for x in out] == snap
