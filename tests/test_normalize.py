"""fastlin.normalize and normalize_backward against their longdouble twins.

Tolerances
----------
The reference (fastlin.reference) computes in 80-bit longdouble and rounds
once, so it is the correctly rounded result to within a hair.  fastlin sums
the squares in double:

* float32: every intermediate is double, so the only float32 error is the
  final rounding -- fastlin and the reference round (nearly) the same real
  number and differ by at most 1 ulp.  We allow 2 eps, relative.
* float64: the sum of n squares carries a relative error of at most
  ~(n - 1) u (u = eps / 2, recursive summation, Higham 2002 Sec. 4.2), halved
  by the square root, plus one rounding each for sqrt, 1/d and x * (1/d):
  ``(n / 4 + 2) eps``.  We allow ``(n / 2 + 4) eps``.

The backward pass subtracts ``y (g . y)`` from ``g``; its result can cancel
to far below ``|g| / ||x||``, so its error is measured against that scale per
vector, with ``(n + 4) eps`` for float64 (the dot product adds n u) and 2 eps
for float32.
"""
import math

import numpy as np
import pytest

import fastlin
from conftest import axes_tuple, vector_len
from fastlin import reference as ref

FLOATS = (np.float32, np.float64)

# (shape, axis) pairs covering ranks 1-4, negative axes, adjacent and
# non-adjacent tuples, and None (the whole array as one vector).
CASES = [
    ((7,), -1), ((7,), 0), ((7,), None), ((7,), (0,)),
    ((5, 9), 0), ((5, 9), 1), ((5, 9), -1), ((5, 9), -2), ((5, 9), (0, 1)), ((5, 9), None),
    ((3, 4, 5), 0), ((3, 4, 5), 1), ((3, 4, 5), -1), ((3, 4, 5), (0, 1)),
    ((3, 4, 5), (1, 2)), ((3, 4, 5), (0, 2)), ((3, 4, 5), (2, 0)), ((3, 4, 5), None),
    ((2, 3, 4, 5), -1), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), (1, 3)), ((2, 3, 4, 5), (0, 2, 3)),
    ((2, 3, 4, 5), (-1, -3)), ((2, 3, 4, 5), None),
]


def _fwd_rtol(dtype, n):
    eps = np.finfo(dtype).eps
    return 2 * eps if dtype == np.float32 else (n / 2 + 4) * eps


def _bwd_atol(dtype, n):
    eps = np.finfo(dtype).eps
    return 2 * eps if dtype == np.float32 else (n + 4) * eps


def _norm(a, axis):
    """Per-vector 2-norm in longdouble, broadcastable against `a`."""
    al = np.asarray(a, dtype=np.longdouble)
    return np.sqrt(np.sum(al * al, axis=axes_tuple(axis, al.ndim), keepdims=True))


def assert_fwd_close(actual, expected, n):
    """Elementwise relative comparison (y_i = x_i * (1/d) keeps relative accuracy)."""
    assert actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, rtol=_fwd_rtol(actual.dtype, n), atol=0)


def assert_bwd_close(actual, expected, grad, x, axis):
    """|actual - expected| <= tol * ||g|| / ||x||, per vector."""
    assert actual.dtype == expected.dtype
    n = vector_len(np.shape(x), axis)
    scale = _norm(grad, axis) / _norm(x, axis)
    err = np.abs(actual.astype(np.longdouble) - expected.astype(np.longdouble))
    bound = _bwd_atol(actual.dtype, n) * scale
    bad = ~(err <= bound)
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} entries off; worst err/scale "
        f"{float(np.max(err / scale)):.3g}, allowed {_bwd_atol(actual.dtype, n):.3g}")


# ----------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape, axis", CASES)
def test_forward_matches_reference(rng, dtype, shape, axis):
    x = rng.standard_normal(shape).astype(dtype)
    y = fastlin.normalize(x, axis=axis)
    assert y.shape == x.shape and y.dtype == dtype
    assert y.flags.c_contiguous
    assert_fwd_close(y, ref.normalize(x, axis=axis), vector_len(shape, axis))


@pytest.mark.parametrize("dtype", FLOATS)
def test_forward_unit_norm(rng, dtype):
    x = rng.standard_normal((6, 33)).astype(dtype)
    y = fastlin.normalize(x)
    np.testing.assert_allclose(np.linalg.norm(y.astype(np.float64), axis=-1), 1.0,
                               rtol=4 * np.finfo(dtype).eps * 33)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint64, bool])
def test_forward_integers_and_bools_compute_in_float64(rng, dtype):
    x = rng.integers(0, 100, (4, 6)).astype(dtype)
    y = fastlin.normalize(x, axis=1)
    assert y.dtype == np.float64
    assert_fwd_close(y, ref.normalize(x.astype(np.float64), axis=1), 6)


def test_forward_float16_computes_in_float32(rng):
    x = rng.standard_normal((4, 6)).astype(np.float16)
    y = fastlin.normalize(x)
    assert y.dtype == np.float32
    assert_fwd_close(y, ref.normalize(x.astype(np.float32)), 6)


def test_forward_array_likes():
    np.testing.assert_allclose(fastlin.normalize([[3, 4], [0, 0]]), [[0.6, 0.8], [0, 0]],
                               rtol=2 * np.finfo(np.float64).eps)
    np.testing.assert_allclose(fastlin.normalize((3.0, -4.0)), [0.6, -0.8],
                               rtol=2 * np.finfo(np.float64).eps)


def test_forward_zero_dim_values():
    r = fastlin.normalize(np.float64(-2.5), axis=None)
    assert r.size == 1 and r.ravel()[0] == -1.0
    assert fastlin.normalize(np.float32(0.0), axis=None).ravel()[0] == 0.0
    out = np.empty(())
    assert fastlin.normalize(np.array(4.0), axis=None, out=out) is out and out == 1.0


def test_forward_zero_dim_input_gives_scalar():
    assert np.ndim(fastlin.normalize(np.float64(-2.5), axis=None)) == 0


@pytest.mark.parametrize("shape, axis", [((0,), -1), ((0, 3), -1), ((3, 0), -1),
                                         ((3, 0), 0), ((2, 0, 4), (0, 2))])
def test_forward_empty(shape, axis):
    y = fastlin.normalize(np.empty(shape), axis=axis)
    assert y.shape == shape and y.dtype == np.float64


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape, axis", [((6, 11), -1), ((6, 11), 0), ((3, 4, 5), (0, 2)),
                                         ((2, 3, 4, 5), (1, 2))])
def test_forward_layouts(rng, layout, dtype, shape, axis):
    x = rng.standard_normal(shape).astype(dtype)
    y = fastlin.normalize(layout(x), axis=axis)
    # inputs are copied to C order before the kernel sees them: same bits
    np.testing.assert_array_equal(y, fastlin.normalize(x, axis=axis))
    assert_fwd_close(y, ref.normalize(x, axis=axis), vector_len(shape, axis))


# -------------------------------------------------------------------- out=


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape, axis", [((6, 11), -1), ((6, 11), 0), ((3, 4, 5), (0, 2)),
                                         ((3, 4, 5), None)])
def test_out_is_filled_and_returned(rng, dtype, shape, axis):
    x = rng.standard_normal(shape).astype(dtype)
    expected = fastlin.normalize(x, axis=axis)
    strided = np.empty(tuple(2 * s for s in shape), dtype)[(slice(None, None, 2),) * len(shape)]
    for out in (np.empty(shape, dtype), np.empty(shape, dtype, order="F"), strided):
        r = fastlin.normalize(x, axis=axis, out=out)
        assert r is out
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape, axis", [((6, 11), -1), ((6, 11), 0), ((3, 4, 5), (0, 2))])
def test_out_in_place(rng, dtype, shape, axis):
    x = rng.standard_normal(shape).astype(dtype)
    expected = fastlin.normalize(x, axis=axis)
    r = fastlin.normalize(x, axis=axis, out=x)
    assert r is x
    np.testing.assert_array_equal(x, expected)
    # in place on a non-contiguous view, leaving its neighbours alone
    buf = rng.standard_normal((2 * shape[0],) + shape[1:]).astype(dtype)
    keep = buf[1::2].copy()
    view = buf[::2]
    expected = fastlin.normalize(view.copy(), axis=axis)
    fastlin.normalize(view, axis=axis, out=view)
    np.testing.assert_array_equal(view, expected)
    np.testing.assert_array_equal(buf[1::2], keep)


def test_out_overlapping_views(rng):
    buf = rng.standard_normal(41)
    x, out = buf[:-1], buf[1:]
    expected = fastlin.normalize(x.copy(), axis=None)
    fastlin.normalize(x, axis=None, out=out)
    np.testing.assert_array_equal(buf[1:], expected)

    buf = rng.standard_normal((5, 9))
    x, out = buf[:, :-1], buf[:, 1:]
    expected = fastlin.normalize(x.copy(), axis=0)
    fastlin.normalize(x, axis=0, out=out)
    np.testing.assert_array_equal(buf[:, 1:], expected)

    # out is x walked backwards: every element is read and written elsewhere
    x = rng.standard_normal((4, 7))
    expected = fastlin.normalize(x.copy(), axis=1)
    fastlin.normalize(x, axis=1, out=x[::-1, ::-1])
    np.testing.assert_array_equal(x[::-1, ::-1], expected)


def test_out_with_promoted_input(rng):
    x = rng.integers(-50, 50, (3, 8))
    out = np.empty((3, 8))
    fastlin.normalize(x, out=out)
    np.testing.assert_array_equal(out, fastlin.normalize(x.astype(np.float64)))


# ------------------------------------------------------------ the numerics

SQRT_HALF = math.sqrt(0.5)


@pytest.mark.parametrize("axis", [-1, 0])
def test_huge_float64_rows_do_not_overflow(axis):
    for v in (1e200, -1e300, 1e308):
        x = np.array([v, v])
        x = x if axis == -1 else x[:, None]
        y = fastlin.normalize(x, axis=axis).ravel()
        np.testing.assert_allclose(np.abs(y), [SQRT_HALF] * 2, rtol=2 * np.finfo(float).eps)
        assert np.all(np.sign(y) == np.sign(v))


@pytest.mark.parametrize("axis", [-1, 0])
def test_float64_rows_whose_norm_exceeds_dbl_max(axis):
    x = np.array([1.3e308, -1.3e308])
    x = x if axis == -1 else x[:, None]
    y = fastlin.normalize(x, axis=axis).ravel()
    np.testing.assert_allclose(y, [SQRT_HALF, -SQRT_HALF], rtol=2 * np.finfo(float).eps)


@pytest.mark.parametrize("axis", [-1, 0])
def test_tiny_float64_rows_do_not_underflow(axis):
    for v in (1e-200, -1e-300, 2.3e-308):
        x = np.array([v, v])
        x = x if axis == -1 else x[:, None]
        y = fastlin.normalize(x, axis=axis, eps=0).ravel()
        np.testing.assert_allclose(np.abs(y), [SQRT_HALF] * 2, rtol=2 * np.finfo(float).eps)
    # with the default eps the clamp is active instead: x / 1e-12
    np.testing.assert_allclose(fastlin.normalize(np.array([1e-200, 1e-200])), [1e-188] * 2,
                               rtol=2 * np.finfo(float).eps)


@pytest.mark.parametrize("axis", [-1, 0])
def test_subnormal_float64_rows_with_eps_0(axis):
    for v in (5e-324, 1e-310):
        x = np.array([v, v])
        x = x if axis == -1 else x[:, None]
        y = fastlin.normalize(x, axis=axis, eps=0).ravel()
        np.testing.assert_allclose(y, [SQRT_HALF] * 2, rtol=2 * np.finfo(float).eps)


@pytest.mark.parametrize("axis", [-1, 0])
def test_subnormal_float64_rows_with_default_eps(axis):
    # the clamp is active: x / 1e-12, a normal number
    for row in ([1e-310, 0.0], [5e-324, -1e-310, 2e-315]):
        x = np.array(row)
        x = x if axis == -1 else x[:, None]
        y = fastlin.normalize(x, axis=axis).ravel()
        np.testing.assert_allclose(y, np.array(row) / 1e-12, rtol=2 * np.finfo(float).eps)


@pytest.mark.parametrize("axis", [-1, 0])
def test_subnormal_float64_rows_backward(axis):
    # ||x|| < eps: the gradient is g / eps
    x = np.array([1e-310, 0.0])
    g = np.array([1.0, 2.0])
    x, g = (x, g) if axis == -1 else (x[:, None], g[:, None])
    gx = fastlin.normalize_backward(g, x, axis=axis).ravel()
    np.testing.assert_allclose(gx, [1e12, 2e12], rtol=2 * np.finfo(float).eps)


@pytest.mark.parametrize("axis", [-1, 0])
def test_subnormal_float32_rows(axis):
    tiny = np.finfo(np.float32).smallest_subnormal
    for v in (tiny, np.float32(1e-40), np.float32(-3e-39)):
        x = np.array([v, v], dtype=np.float32)
        x = x if axis == -1 else x[:, None]
        y = fastlin.normalize(x, axis=axis, eps=0).ravel()
        assert y.dtype == np.float32
        np.testing.assert_allclose(np.abs(y), [SQRT_HALF] * 2, rtol=2 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("axis", [-1, 0])
def test_huge_float32_rows(axis):
    for row in ([3e38, 3e38], [3.4e38, -3.4e38, 1.0], [3e38] * 40):
        x = np.array(row, dtype=np.float32)
        assert np.all(np.isfinite(x))
        x = x if axis == -1 else x[:, None]
        y = fastlin.normalize(x, axis=axis)
        assert np.all(np.isfinite(y))
        assert_fwd_close(y, ref.normalize(x, axis=axis), len(row))


# Magnitudes straddling the float64 rescaling thresholds (a sum of squares
# outside [2**-960, 2**960]) and, for float32, its whole normal range.
MAGNITUDES = ([(np.float64, k) for k in (-300, -200, -160, -150, -145, -100, -30, 0,
                                         30, 100, 145, 150, 160, 200, 300)]
              + [(np.float32, k) for k in (-38, -36, -30, -20, -10, 0, 10, 20, 30, 37)])


@pytest.mark.parametrize("dtype, log10_scale", MAGNITUDES)
@pytest.mark.parametrize("axis", [-1, 0])
def test_forward_across_magnitudes(rng, dtype, axis, log10_scale):
    x = (rng.standard_normal((5, 12)) * 10.0 ** log10_scale).astype(dtype)
    x = x if axis == -1 else x.T.copy()
    y = fastlin.normalize(x, axis=axis, eps=0)
    assert_fwd_close(y, ref.normalize(x, axis=axis, eps=0), 12)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("eps", [0.0, 1e-12, 1.0])
def test_zero_rows_give_zeros(dtype, axis, eps):
    x = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0], [-0.0, 0.0, -0.0]], dtype=dtype)
    x = x if axis == -1 else x.T.copy()
    y = fastlin.normalize(x, axis=axis, eps=eps)
    y = y if axis == -1 else y.T
    np.testing.assert_array_equal(y[[0, 2]], 0.0)
    d = max(5.0, eps)
    np.testing.assert_allclose(y[1], [3 / d, 0, 4 / d], rtol=2 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [-1, 0])
def test_nan_and_inf_rows(dtype, axis):
    nan, inf = np.nan, np.inf
    x = np.array([[nan, 1.0, 2.0],
                  [inf, 1.0, -2.0],
                  [-inf, inf, 3.0],
                  [1.0, nan, inf],
                  [3.0, 4.0, 0.0]], dtype=dtype)
    expected = np.array([[nan, nan, nan],
                         [nan, 0.0, -0.0],
                         [nan, nan, 0.0],
                         [nan, nan, nan],
                         [0.6, 0.8, 0.0]], dtype=dtype)
    x = x if axis == -1 else x.T.copy()
    y = fastlin.normalize(x, axis=axis)
    y = y if axis == -1 else y.T
    np.testing.assert_allclose(y, expected, rtol=2 * np.finfo(dtype).eps, atol=0)
    # x / inf keeps the sign of x
    assert np.signbit(y[1, 2])


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [-1, 0])
def test_eps_clamp_active(rng, dtype, axis):
    # rows with norms below, at and above eps
    x = np.array([[3e-13, 4e-13], [1e-30, 0.0], [3e-12, 4e-12], [0.6e-12, 0.8e-12]], dtype=dtype)
    x = x if axis == -1 else x.T.copy()
    y = fastlin.normalize(x, axis=axis, eps=1e-12)
    assert_fwd_close(y, ref.normalize(x, axis=axis, eps=1e-12), 2)
    y = y if axis == -1 else y.T
    x = x if axis == -1 else x.T
    np.testing.assert_allclose(y[:2], x[:2].astype(np.float64) / 1e-12,
                               rtol=2 * np.finfo(dtype).eps)

    x = rng.uniform(-0.3, 0.3, (4, 3)).astype(dtype)  # norms < 1 = eps
    np.testing.assert_allclose(fastlin.normalize(x, eps=1.0), x, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", FLOATS)
def test_large_eps(rng, dtype):
    x = rng.standard_normal((4, 9)).astype(dtype)
    assert_fwd_close(fastlin.normalize(x, eps=2.5), ref.normalize(x, eps=2.5), 9)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 257])
def test_every_row_length(rng, dtype, n):
    # vector bodies and remainders of every width
    x = rng.standard_normal((3, n)).astype(dtype)
    g = rng.standard_normal((3, n)).astype(dtype)
    assert_fwd_close(fastlin.normalize(x), ref.normalize(x), n)
    assert_bwd_close(fastlin.normalize_backward(g, x), ref.normalize_backward(g, x), g, x, -1)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 3, 300])
@pytest.mark.parametrize("inner", [2, 15, 16, 17, 63, 511, 512, 513, 1030])
def test_every_column_tile_width(rng, dtype, n, inner):
    # reductions over axis 0 of (n, inner): tiles of up to 512 columns and remainders
    x = rng.standard_normal((n, inner)).astype(dtype)
    g = rng.standard_normal((n, inner)).astype(dtype)
    assert_fwd_close(fastlin.normalize(x, axis=0), ref.normalize(x, axis=0), n)
    assert_bwd_close(fastlin.normalize_backward(g, x, axis=0),
                     ref.normalize_backward(g, x, axis=0), g, x, 0)


def test_long_rows_match_reference(rng):
    # long enough that the lane accumulators and several column tiles are used
    x = rng.standard_normal((3, 5000)) * 1e200
    assert_fwd_close(fastlin.normalize(x), ref.normalize(x), 5000)
    assert_fwd_close(fastlin.normalize(x.T.copy(), axis=0), ref.normalize(x.T, axis=0), 5000)


# ---------------------------------------------------------------- backward


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape, axis", CASES)
def test_backward_matches_reference(rng, dtype, shape, axis):
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    gx = fastlin.normalize_backward(g, x, axis=axis)
    assert gx.shape == x.shape and gx.dtype == dtype
    assert_bwd_close(gx, ref.normalize_backward(g, x, axis=axis), g, x, axis)


@pytest.mark.parametrize("shape, axis", [((6, 11), -1), ((6, 11), 0), ((3, 4, 5), (0, 2))])
def test_backward_layouts(rng, layout, shape, axis):
    x = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    gx = fastlin.normalize_backward(layout(g), layout(x), axis=axis)
    np.testing.assert_array_equal(gx, fastlin.normalize_backward(g, x, axis=axis))


def test_backward_mixed_dtypes_promote(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    g = rng.integers(-3, 3, (3, 5))
    gx = fastlin.normalize_backward(g, x)
    assert gx.dtype == np.float64
    assert_bwd_close(gx, ref.normalize_backward(g.astype(np.float64), x.astype(np.float64)),
                     g, x, -1)
    gx = fastlin.normalize_backward(g.astype(np.float32), x)
    assert gx.dtype == np.float32


def test_backward_docstring_example():
    gx = fastlin.normalize_backward(np.array([1.0, 0.0]), np.array([3.0, 4.0]))
    np.testing.assert_allclose(gx, [0.128, -0.096], rtol=4 * np.finfo(float).eps)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("scale", [1e-200, 1e-100, 1e100, 1e200])
def test_backward_extreme_magnitudes(rng, dtype, axis, scale):
    if dtype == np.float32 and not 1e-30 < scale < 1e30:
        scale = 1e-30 if scale < 1 else 1e30
    x = (rng.standard_normal((4, 7)) * scale).astype(dtype)
    g = rng.standard_normal((4, 7)).astype(dtype)
    x, g = (x, g) if axis == -1 else (x.T.copy(), g.T.copy())
    gx = fastlin.normalize_backward(g, x, axis=axis, eps=0)
    assert np.all(np.isfinite(gx))
    assert_bwd_close(gx, ref.normalize_backward(g, x, axis=axis, eps=0), g, x, axis)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("eps", [1e-12, 0.5, 3.0])
def test_backward_zero_row_with_eps_is_grad_over_eps(rng, dtype, axis, eps):
    x = np.zeros((3, 6), dtype)
    g = rng.standard_normal((3, 6)).astype(dtype)
    x, g = (x, g) if axis == -1 else (x.T.copy(), g.T.copy())
    gx = fastlin.normalize_backward(g, x, axis=axis, eps=eps)
    np.testing.assert_allclose(gx, g.astype(np.float64) / eps, rtol=2 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [-1, 0])
def test_backward_zero_row_with_eps_0_is_exactly_zero(rng, dtype, axis):
    x = np.zeros((3, 6), dtype)
    x[1] = rng.standard_normal(6)
    g = rng.standard_normal((3, 6)).astype(dtype)
    x, g = (x, g) if axis == -1 else (x.T.copy(), g.T.copy())
    gx = fastlin.normalize_backward(g, x, axis=axis, eps=0.0)
    assert_bwd_close(gx, ref.normalize_backward(g, x, axis=axis, eps=0.0), g,
                     np.where(x == 0, 1, x), axis)
    gx = gx if axis == -1 else gx.T
    np.testing.assert_array_equal(gx[[0, 2]], 0.0)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [-1, 0])
def test_backward_norm_equal_to_eps_takes_the_norm_branch(dtype, axis):
    # ||[3, 4]|| = 5 exactly, in any dtype
    x = np.array([[3.0, 4.0], [0.3, 0.4]], dtype=dtype)
    g = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=dtype)
    xx, gg = (x, g) if axis == -1 else (x.T.copy(), g.T.copy())
    gx = fastlin.normalize_backward(gg, xx, axis=axis, eps=5.0)
    gx = gx if axis == -1 else gx.T
    # row 0: (g - y (g . y)) / 5 with y = [0.6, 0.8]; row 1 (norm 0.5 < 5): g / 5
    # (the clamp branch would give [0.2, 0] for row 0 too)
    np.testing.assert_allclose(gx, [[0.128, -0.096], [0.2, 0.0]], rtol=4 * np.finfo(dtype).eps)
    # and just below the norm, the clamp is active
    gx = fastlin.normalize_backward(g, x, eps=np.nextafter(5.0, 6.0))
    np.testing.assert_allclose(gx[0], [1 / np.nextafter(5.0, 6.0), 0.0],
                               rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [-1, 0])
def test_backward_tiny_rows_clamp_active(rng, dtype, axis):
    x = (rng.standard_normal((3, 5)) * 1e-14).astype(dtype)
    g = rng.standard_normal((3, 5)).astype(dtype)
    x, g = (x, g) if axis == -1 else (x.T.copy(), g.T.copy())
    gx = fastlin.normalize_backward(g, x, axis=axis, eps=1e-12)
    np.testing.assert_allclose(gx, g.astype(np.float64) / 1e-12, rtol=2 * np.finfo(dtype).eps)
    np.testing.assert_allclose(gx, ref.normalize_backward(g, x, axis=axis, eps=1e-12),
                               rtol=2 * np.finfo(dtype).eps)


def test_backward_empty_and_zero_dim():
    assert fastlin.normalize_backward(np.empty((0, 3)), np.empty((0, 3))).shape == (0, 3)
    r = fastlin.normalize_backward(np.float64(2.0), np.float64(-3.0), axis=None)
    # a 1-element vector: y = sign(x) is constant, so the gradient is 0
    assert r.size == 1 and r.ravel()[0] == 0.0


def test_backward_zero_dim_input_gives_scalar():
    assert np.ndim(fastlin.normalize_backward(np.float64(2.0), np.float64(-3.0), axis=None)) == 0


def test_eps_as_0d_array_and_bool_refused():
    """eps=np.array(1e-3) (a 0-d array, what a reduction returns) is a number;
    eps=True is a mistake, not 1.0."""
    x = np.ones((2, 3))
    np.testing.assert_array_equal(fastlin.normalize(x, eps=np.array(1e-3)),
                                  fastlin.normalize(x, eps=1e-3))
    for bad in (True, np.bool_(True), np.array([1e-3]), np.array(1j)):
        with pytest.raises(TypeError, match="eps must be a real number"):
            fastlin.normalize(x, eps=bad)


def test_bool_axis_refused_like_numpy():
    x = np.ones((2, 3))
    with pytest.raises(TypeError):
        np.sum(x, axis=True)
    for fn in (fastlin.normalize, fastlin.softmax, fastlin.logsumexp):
        with pytest.raises(TypeError, match="axis must be None, an int or a tuple of ints"):
            fn(x, axis=True)
