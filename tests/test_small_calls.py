"""Small calls take short paths (cdist's _cdist_small): their results must
be bitwise those of the general path, and everything the short path does not
take must still reach the general path's validation."""
import numpy as np
import pytest

import fastlin


def _general(A, B, metric):
    # out= sends every call down the general path
    dt = np.result_type(A, B)
    return fastlin.cdist(A, B, metric, out=np.empty((A.shape[0], B.shape[0]), dt))


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
