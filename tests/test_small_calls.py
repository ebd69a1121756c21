"""Small calls take short paths (cdist's _cdist_small): with few columns
their results must be bitwise those of the general path, with more those of
its exact path (within its bound of a longdouble twin), and everything the
short path does not take must still reach the general path's validation."""
import numpy as np
import pytest

import fastlin


def _general_path(f, *args):
    """f(*args) (cdist or pdist) through the general path: the short one
    switched off."""
    from fastlin import _distance_api
    keep = _distance_api._SMALL_CDIST
    _distance_api._SMALL_CDIST = -1
    try:
        return f(*args)
    finally:
        _distance_api._SMALL_CDIST = keep


def _general(A, B, metric):
    return _general_path(fastlin.cdist, A, B, metric)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_small_cdist_is_bitwise_the_general_path(dtype, metric):
    rng = np.random.default_rng(9)
    big = 200 if dtype == np.float64 else 20
    for trial in range(400):
        mA, mB, n = rng.integers(1, 40), rng.integers(1, 40), rng.integers(1, 17)
        scale = 10.0 ** rng.integers(-big, big)
        A = (rng.standard_normal((mA, n)) * scale).astype(dtype)
        B = (rng.standard_normal((mB, n)) * scale).astype(dtype)
        if trial % 7 == 0:
            A[0, 0] = np.nan
        if trial % 11 == 0:
            B[-1, -1] = np.inf
        if trial % 5 == 0:
            B = B[::-1]                       # negative strides
        if trial % 13 == 0:
            A = np.asfortranarray(A)
        if trial % 17 == 0:
            B = B.copy()
            B[0] = A[0]                       # a duplicate: exactly 0
        got = fastlin.cdist(A, B, metric)
        want = _general(A, B, metric)
        assert got.dtype == want.dtype == dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(300, 300, 1), (2, 700, 3), (511, 257, 1)])
def test_small_work_wide_outputs_in_column_tiles(dtype, shape):
    # little work, but rows wider than one column tile (256)
    mA, mB, n = shape
    rng = np.random.default_rng(mA + mB)
    A = rng.standard_normal((mA, n)).astype(dtype)
    B = rng.standard_normal((mB, n)).astype(dtype)
    for metric in ("euclidean", "sqeuclidean"):
        np.testing.assert_array_equal(fastlin.cdist(A, B, metric), _general(A, B, metric))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_small_cdist_of_more_columns_is_the_exact_path(dtype, metric):
    # beyond 16 columns the general path takes a GEMM; the short path
    # computes every entry as the general path's exact one does: within the
    # exact path's bound of a longdouble twin, and near-duplicates exact
    from fastlin import reference as ref
    rng = np.random.default_rng(21)
    eps = np.finfo(dtype).eps
    for m, k in [(8, 17), (64, 32), (32, 64), (7, 256), (128, 32)]:
        A = rng.standard_normal((m, k)).astype(dtype)
        B = rng.standard_normal((m + 3, k)).astype(dtype)
        B[0] = A[0]
        B[1] = A[1] * (1 + 1e-6 * rng.standard_normal(k)).astype(dtype)
        got = fastlin.cdist(A, B, metric)
        want = ref.cdist(A, B, metric, dtype=np.longdouble)
        # cdist's bound (README, Numerics; test_registry): sqeuclidean
        # (8 + 4 sqrt(k)) eps and at least 16 eps, euclidean half of it plus
        # one rounding and at least 8 (float32: 2 + 0.5 sqrt(k), at least 4;
        # 3 for euclidean)
        if dtype == np.float64:
            sq = max(16.0, 8 + 4 * np.sqrt(k))
            bound = (sq if metric == "sqeuclidean" else max(8.0, sq / 2 + 1)) * eps
        else:
            sq = max(4.0, 2 + 0.5 * np.sqrt(k))
            bound = (sq if metric == "sqeuclidean" else max(3.0, sq / 2 + 1)) * eps
        rel = np.abs(got.astype(np.longdouble) - want) / np.maximum(want, np.finfo(dtype).tiny)
        assert float(rel.max()) <= bound, (m, k, float(rel.max()) / eps)
        assert got[0, 0] == 0
        out = np.full((m, m + 3), -1.0, dtype)
        assert fastlin.cdist(A, B, metric, out=out) is out
        np.testing.assert_array_equal(out, got)


def test_small_cdist_out_overlapping_an_input():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((6, 6))
    want = fastlin.cdist(A, A)
    B = A.copy()
    fastlin.cdist(B, B, out=B)            # out is both inputs
    np.testing.assert_array_equal(B, want)
    with pytest.raises(ValueError, match="out must have dtype"):
        fastlin.cdist(A, A, out=np.empty((6, 6), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        fastlin.cdist(A, A, out=np.empty((6, 6)).T)


def test_small_cdist_leaves_inputs_alone_and_matches_scipy():
    from scipy.spatial.distance import cdist as scipy_cdist
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((8, 4)), rng.standard_normal((6, 4))
    A.flags.writeable = False
    a0, b0 = A.copy(), B.copy()
    np.testing.assert_allclose(fastlin.cdist(A, B), scipy_cdist(A, B), rtol=1e-14, atol=0)
    np.testing.assert_array_equal(A, a0)
    np.testing.assert_array_equal(B, b0)


@pytest.mark.parametrize("args, exc, words", [
    ((np.zeros((3, 4)), np.zeros((2, 5))), ValueError, "same number of columns"),
    ((np.zeros((3, 4)), np.zeros((2, 4)), "chebyshev"), ValueError, "metric must be one of"),
    ((np.zeros((3, 4)), np.zeros((2, 4)), 3), TypeError, "metric must be a string"),
    ((np.zeros(4), np.zeros((2, 4))), ValueError, "XA must be a 2-d array"),
    ((np.zeros((3, 4), complex), np.zeros((2, 4), complex)), TypeError, "XA"),
])
def test_small_inputs_the_short_path_refuses_get_the_general_errors(args, exc, words):
    with pytest.raises(exc, match=words):
        fastlin.cdist(*args)


def test_mixed_and_integer_inputs_take_the_general_rules():
    A = np.arange(12, dtype=np.int32).reshape(3, 4)
    B = np.ones((2, 4), np.float32)
    r = fastlin.cdist(A, B)                   # int with float32: float64 (the documented rule)
    assert r.dtype == np.float64
    np.testing.assert_array_equal(r, _general(A.astype(np.float64), B.astype(np.float64),
                                              "euclidean"))
    assert fastlin.cdist(B, B).dtype == np.float32


def _general_pdist(X, metric):
    return _general_path(fastlin.pdist, X, metric)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_small_pdist_is_bitwise_the_general_path(dtype, metric):
    rng = np.random.default_rng(12)
    big = 200 if dtype == np.float64 else 20
    for trial in range(300):
        m, n = rng.integers(2, 60), rng.integers(1, 17)
        X = (rng.standard_normal((m, n)) * 10.0 ** rng.integers(-big, big)).astype(dtype)
        if trial % 7 == 0:
            X[0, 0] = np.nan
        if trial % 11 == 0:
            X[-1, -1] = -np.inf
        if trial % 5 == 0:
            X = X[::-1]
        if trial % 13 == 0:
            X[1] = X[0]
        got = fastlin.pdist(X, metric)
        want = _general_pdist(X, metric)
        assert got.dtype == want.dtype == dtype
        np.testing.assert_array_equal(got, want)
    X = rng.standard_normal((300, 1)).astype(dtype)         # rows wider than a tile
    np.testing.assert_array_equal(fastlin.pdist(X, metric), _general_pdist(X, metric))


def test_small_pdist_more_columns_out_and_overlap():
    from scipy.spatial.distance import pdist as scipy_pdist
    rng = np.random.default_rng(13)
    X = rng.standard_normal((40, 64))
    got = fastlin.pdist(X)
    np.testing.assert_allclose(got, scipy_pdist(X), rtol=1e-14, atol=0)
    out = np.empty_like(got)
    assert fastlin.pdist(X, out=out) is out
    np.testing.assert_array_equal(out, got)
    buf = np.zeros(max(X.size, got.size))
    Xv = buf[:X.size].reshape(X.shape)
    Xv[...] = X
    fastlin.pdist(Xv, out=buf[:got.size])                  # out overlaps X
    np.testing.assert_array_equal(buf[:got.size], got)
    with pytest.raises(ValueError, match="out must have shape"):
        fastlin.pdist(X, out=np.empty(got.size + 1))


_ROW_OPS = [
    ("softmax", lambda x, ax, **k: fastlin.softmax(x, axis=ax, **k)),
    ("log_softmax", lambda x, ax, **k: fastlin.log_softmax(x, axis=ax, **k)),
    ("normalize", lambda x, ax, **k: fastlin.normalize(x, axis=ax, **k)),
    ("softmax_backward", lambda x, ax, **k: fastlin.softmax_backward(
        x[::-1].copy(), fastlin.softmax(x, axis=ax), axis=ax, **k)),
    ("log_softmax_backward", lambda x, ax, **k: fastlin.log_softmax_backward(
        x[::-1].copy(), fastlin.log_softmax(x, axis=ax), axis=ax, **k)),
    ("normalize_backward", lambda x, ax, **k: fastlin.normalize_backward(
        x[::-1].copy(), x, axis=ax, **k)),
]


@pytest.mark.parametrize("name, op", _ROW_OPS, ids=[n for n, _ in _ROW_OPS])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, axis", [((7,), None), ((7,), -1), ((3, 5), -1), ((3, 5), 1),
                                         ((2, 3, 4), -1), ((2, 3, 4), None), ((1, 1), -1)])
def test_row_ops_short_path_is_bitwise_the_general_path(name, op, dtype, shape, axis):
    """C-contiguous float arrays reduced over their last axis (or all of it)
    skip the general axis handling (_common._rows); `out=` always takes the
    general path: both must give the same bits (the twins judge the values,
    in test_softmax / test_normalize / test_registry, through the short path)."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    x[(0,) * x.ndim] = 40          # one large entry: exp's range matters
    fast = op(x, axis)
    general = op(x, axis, out=np.empty(shape, dtype))
    assert fast.dtype == dtype and fast.shape == shape
    np.testing.assert_array_equal(fast.view(np.uint8), general.view(np.uint8))
    # and another layout (a Fortran copy: the general path) agrees bitwise too
    if x.ndim == 2:
        np.testing.assert_array_equal(op(np.asfortranarray(x), axis), fast)
