"""softmax, log_softmax, logsumexp and their backward passes.

Judges: scipy.special (fastlin promises to be a drop-in, edge cases included)
and fastlin.reference (longdouble twins, the judge of float32 results and of
every backward pass).

Tolerances are error bounds of the computation, not fudge factors.  With
``eps`` the machine epsilon of the result dtype and ``m`` the slice maximum:

* softmax      ``exp(x - m) / sum``.  Against scipy (float64) both round
               ``x - m`` identically, so only exp, sum and division differ:
               ``20 eps |want|``.  Against the longdouble twin the rounding of
               ``x - m`` (relative ``eps/2``) is amplified by exp into an
               ``eps |x - m|`` relative error, so ``eps (20 + |x - m|) |want|``
               (float32: ``eps32 (4 + |x - m|)``; exp is ~1 ulp, the sum is
               accumulated in float64).  Subnormal results carry an absolute
               error of a few units of the smallest subnormal: ``8 * tiny``.
* log_softmax  ``(x - m) - log(sum)``: an absolute error of
               ``8 eps (1 + max|x - m|)`` over the slice (its condition).
* logsumexp    ``m + log(sum)``: ``8 eps (1 + |want|)`` absolute; with weights
               of both signs the sum can cancel, so the bound is multiplied by
               ``sum|b exp(a - m)| / |sum b exp(a - m)|``.
* backward     per element, ``c eps`` times the magnitudes of the terms the
               formula adds (see each test).
"""
import itertools
import warnings

import numpy as np
import pytest
import scipy.special as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastlin
from conftest import axes_tuple
from fastlin import reference as ref

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
FORWARD = ("softmax", "log_softmax", "logsumexp")
HYP = settings(max_examples=75, deadline=None)


def eps(dt):
    return float(np.finfo(dt).eps)


def tiny(dt):
    return float(np.finfo(dt).smallest_subnormal)


def out_dtype(x):
    """The documented result dtype: float32 stays, everything else float64."""
    return F32 if np.asarray(x).dtype == F32 else F64


def slice_max(x, axis):
    """Finite max over each slice (0 where a slice has none), kept dims."""
    x = np.asarray(x, F64)
    ax = axes_tuple(axis, x.ndim)
    fin = np.where(np.isfinite(x), x, -np.inf)
    m = np.max(fin, axis=ax, keepdims=True, initial=-np.inf)
    return np.where(np.isfinite(m), m, 0.0)


def shift(x, axis):
    """|x - m| elementwise, 0 where not finite (there exact equality is required)."""
    x = np.asarray(x, F64)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(x - slice_max(x, axis))
    return np.where(np.isfinite(d), d, 0.0)


def slice_cond(x, axis):
    """max |x - m| over each slice, broadcast back to x's shape."""
    ax = axes_tuple(axis, np.ndim(x))
    d = shift(x, axis)
    return np.broadcast_to(np.max(d, axis=ax, keepdims=True, initial=0.0), np.shape(x))


def assert_close(got, want, tol, what=""):
    """Equal NaN/inf pattern (exactly), finite entries within `tol` (elementwise)."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want),
                                  err_msg=f"{what}: NaN positions differ")
    special = ~np.isfinite(want)
    np.testing.assert_array_equal(got[special], want[special],
                                  err_msg=f"{what}: non-finite entries differ")
    fin = ~special
    g = got.astype(F64)[fin]
    w = want.astype(F64)[fin]
    t = np.broadcast_to(np.asarray(tol, F64), want.shape)[fin]
    err = np.abs(g - w)
    bad = ~(err <= t)
    if bad.any():
        i = np.flatnonzero(bad)[np.argmax((err / np.maximum(t, 1e-300))[bad])]
        raise AssertionError(
            f"{what}: {bad.sum()} of {fin.sum()} entries outside tolerance; worst "
            f"got={g[i]!r} want={w[i]!r} err={err[i]:.3g} tol={t[i]:.3g}")


# ------------------------------------------------------------------ judges

def judge_softmax(got, x, axis):
    dt = out_dtype(x)
    xd = np.asarray(x).astype(dt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want_ld = ref.softmax(xd, axis)
        if dt == F64:
            want = sp.softmax(xd, axis)
            assert_close(got, want, 20 * eps(dt) * np.abs(want) + 8 * tiny(dt),
                         "softmax vs scipy")
    rtol = (20 if dt == F64 else 4) + shift(xd, axis)
    assert_close(got, want_ld, eps(dt) * rtol * np.abs(want_ld) + 8 * tiny(dt),
                 "softmax vs reference")


def judge_log_softmax(got, x, axis):
    dt = out_dtype(x)
    xd = np.asarray(x).astype(dt)
    tol = 8 * eps(dt) * (1 + slice_cond(xd, axis))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if dt == F64:
            assert_close(got, sp.log_softmax(xd, axis), tol, "log_softmax vs scipy")
        assert_close(got, ref.log_softmax(xd, axis), tol, "log_softmax vs reference")


def ref_logsumexp(x, axis, keepdims=False):
    """The longdouble twin (which shifts by the slice maximum, so it cannot
    overflow for any float64 input), rounded to the output dtype."""
    x = np.asarray(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ref.logsumexp(x, axis, keepdims=keepdims).astype(out_dtype(x))


def judge_logsumexp(got, x, axis, keepdims=False):
    dt = out_dtype(x)
    xd = np.asarray(x).astype(dt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want_ld = ref_logsumexp(xd, axis, keepdims=keepdims)
        tol = 8 * eps(dt) * (1 + np.abs(np.asarray(want_ld, F64)))
        if dt == F64:
            assert_close(got, sp.logsumexp(xd, axis, keepdims=keepdims), tol,
                         "logsumexp vs scipy")
        assert_close(got, want_ld, tol, "logsumexp vs reference")


JUDGES = {"softmax": judge_softmax, "log_softmax": judge_log_softmax,
          "logsumexp": judge_logsumexp}


def expected_shape(fn, shape, axis, keepdims=False):
    if fn != "logsumexp":
        return shape
    shape = shape or (1,)          # logsumexp treats 0-d input as 1-d, like scipy
    ax = axes_tuple(axis, len(shape))
    if keepdims:
        return tuple(1 if i in ax else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in ax)


# ----------------------------------------------------------- input zoo

def all_axes(ndim):
    """None, every int (positive and negative), every tuple of 2+ axes (adjacent
    or not), a tuple with negative entries, and () -- each element its own slice."""
    out = [None]
    out += list(range(ndim)) + list(range(-ndim, 0))
    for r in range(2, ndim + 1):
        out += list(itertools.combinations(range(ndim), r))
    if ndim >= 2:
        out += [(-1, 0)]                   # negative entries in a tuple
    if ndim >= 1:
        out += [()]                        # reduction over no axis
    return out


SHAPES = [(), (7,), (3, 17), (2, 3, 5), (2, 3, 4, 5)]
SHAPE_AXES = [(s, a) for s in SHAPES for a in all_axes(len(s))]


def layouts(x):
    """(name, array) pairs holding the values of x in different memory layouts."""
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    out = [("C", np.array(x, order="C"))]
    ro = x.copy()
    ro.flags.writeable = False
    out.append(("read-only", ro))
    if x.ndim == 0:
        return out
    nd = x.ndim
    out.append(("fortran", np.asfortranarray(x)))
    perm = tuple(np.roll(np.arange(nd), 1))
    out.append(("transposed", np.ascontiguousarray(x.transpose(perm)).transpose(np.argsort(perm))))
    rev = (slice(None, None, -1),) * nd
    out.append(("negative strides", np.ascontiguousarray(x[rev])[rev]))
    # every axis strided by 2 inside a NaN-filled buffer: reading padding shows
    big = np.full(tuple(2 * s for s in x.shape), np.nan, x.dtype) if x.dtype.kind == "f" \
        else np.zeros(tuple(2 * s for s in x.shape), x.dtype)
    view = big[(slice(None, None, 2),) * nd]
    view[...] = x
    out.append(("sliced", view))
    # a zero-stride (broadcast, read-only) view along the first axis
    out.append(("broadcast", np.broadcast_to(x[:1], x.shape)))
    return out


def values_for(layout_name, x):
    """The values a layout holds (broadcast layouts repeat the first row)."""
    return np.broadcast_to(x[:1], x.shape) if layout_name == "broadcast" else x


def rand(shape, dtype, scale, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale + rng.uniform(-50, 50)
    return np.asarray(x).astype(dtype)


# -------------------------------------------------------------- forward

FWD_CASES = [pytest.param(fn, s, a, id=f"{fn}-{s}-{a}".replace(" ", ""))
             for fn in FORWARD for s, a in SHAPE_AXES]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("fn,shape,axis", FWD_CASES)
def test_forward_layouts(fn, dtype, shape, axis):
    """Every rank 0-4, every axis spelling, every layout, two dtypes."""
    # scale 3: ordinary values; large scale: results down to 0 and subnormal
    for scale in (3.0, 200.0 if dtype == F64 else 30.0):
        x0 = rand(shape, dtype, scale, seed=len(shape))
        for name, x in layouts(x0):
            before = x.copy()
            got = getattr(fastlin, fn)(x, axis)
            exp_shape = expected_shape(fn, shape, axis)
            assert np.shape(got) == exp_shape, (name, np.shape(got))
            assert np.asarray(got).dtype == dtype, (name, np.asarray(got).dtype)
            JUDGES[fn](got, values_for(name, x0), axis)
            np.testing.assert_array_equal(x, before)        # input untouched


@pytest.mark.parametrize("fn", FORWARD)
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint64, np.bool_])
def test_forward_int_bool_compute_in_float64(fn, dtype):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2 if dtype is np.bool_ else 100, size=(4, 6)).astype(dtype)
    for axis in (None, 0, -1, (0, 1)):
        got = getattr(fastlin, fn)(x, axis)
        assert np.asarray(got).dtype == F64
        JUDGES[fn](got, x.astype(F64), axis)


@pytest.mark.parametrize("fn", FORWARD)
def test_forward_float16_computes_in_float32(fn):
    x = np.linspace(-3, 3, 12).astype(np.float16).reshape(3, 4)
    got = getattr(fastlin, fn)(x, 1)
    assert np.asarray(got).dtype == F32
    JUDGES[fn](got, x.astype(F32), 1)


@pytest.mark.parametrize("fn", FORWARD)
def test_forward_array_like(fn):
    got = getattr(fastlin, fn)([[1, 2, 3], [4.5, 5, 6]], 1)
    JUDGES[fn](got, np.array([[1, 2, 3], [4.5, 5, 6]]), 1)


@pytest.mark.parametrize("fn", FORWARD)
def test_large_slices_rows_and_tiles(fn):
    """Long reductions along the last axis (rows) and along an inner axis
    (column tiles): 37 columns in tiles of 16 (ragged), 1300 columns in
    several of the widest tiles (512) plus a remainder, a length-1 axis."""
    rng = np.random.default_rng(5)
    for dtype in (F32, F64):
        x = (rng.standard_normal((3, 1031, 37)) * 4).astype(dtype)
        for axis in (1, 2, (1, 2), (0, 2)):
            JUDGES[fn](getattr(fastlin, fn)(x, axis), x, axis)
        for shape in ((2, 20, 1300), (2, 1, 40)):
            x = (rng.standard_normal(shape) * 4).astype(dtype)
            JUDGES[fn](getattr(fastlin, fn)(x, 1), x, 1)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_every_tail_length(dtype):
    """Rows of every length 1..70 and column tiles of every width 1..70: each
    remainder after the vector/lane blocks of the kernels."""
    rng = np.random.default_rng(6)
    for k in range(1, 71):
        rows = (rng.standard_normal((3, k)) * 5).astype(dtype)
        cols = (rng.standard_normal((5, k)) * 5).astype(dtype)
        for fn in FORWARD:
            f = getattr(fastlin, fn)
            JUDGES[fn](f(rows, 1), rows, 1)
            JUDGES[fn](f(cols, 0), cols, 0)
        g = grads(rows.shape, dtype)
        y = fastlin.softmax(rows, 1)
        judge_softmax_bwd(fastlin.softmax_backward(g, y, 1), g, y, 1)
        y = fastlin.log_softmax(cols, 0)
        gc = grads(cols.shape, dtype)
        judge_log_softmax_bwd(fastlin.log_softmax_backward(gc, y, 0), gc, y, 0)
        judge_logsumexp_bwd(fastlin.logsumexp_backward(g[:, 0], rows, 1), g[:, 0], rows, 1)
        b = rng.uniform(0.1, 2, rows.shape)
        judge_weighted(rows.astype(F64), b, 1)


def test_logsumexp_keepdims():
    x = rand((2, 3, 4, 5), F64, 3.0)
    for axis in all_axes(4):
        got = fastlin.logsumexp(x, axis, keepdims=True)
        assert got.shape == expected_shape("logsumexp", x.shape, axis, keepdims=True)
        judge_logsumexp(got, x, axis, keepdims=True)


def test_logsumexp_return_sign_unweighted():
    x = rand((3, 4), F64, 3.0)
    x[1] = -np.inf
    x[2, 0] = np.nan
    res, sgn = fastlin.logsumexp(x, 1, return_sign=True)
    want_r, want_s = sp.logsumexp(x, 1, return_sign=True)
    assert_close(res, want_r, 8 * eps(F64) * (1 + np.abs(want_r)))
    np.testing.assert_array_equal(sgn, want_s)              # [1, 0, nan]
    res32, sgn32 = fastlin.logsumexp(x.astype(F32), 1, return_sign=True)
    assert res32.dtype == sgn32.dtype == F32
    np.testing.assert_array_equal(sgn32, want_s.astype(F32))


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
def test_0d_values(fn):
    for dtype in (F32, F64):
        for v in (3.0, -float(np.finfo(dtype).max) / 2, 0.0):
            got = getattr(fastlin, fn)(np.array(v).astype(dtype))
            assert np.asarray(got).dtype == dtype
            want = {"softmax": 1.0, "log_softmax": 0.0,
                    "logsumexp": np.float64(v).astype(dtype)}[fn]
            np.testing.assert_array_equal(np.ravel(got), [want])


def test_logsumexp_0d_is_scalar():
    assert np.isscalar(fastlin.logsumexp(3.0))
    assert np.isscalar(fastlin.logsumexp(np.float32(3.0)))
    assert fastlin.logsumexp(np.float32(3.0)).dtype == F32


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("x", [3.0, np.float32(3.0), np.array(3.0)], ids=["py", "f32", "0d"])
def test_0d_forward_is_scalar(fn, x):
    """Like scipy (and numpy): a 0-d input gives a scalar, not a shape-(1,) array."""
    got = getattr(fastlin, fn)(x)
    want = getattr(sp, fn)(x)
    assert np.shape(got) == ()
    assert np.isscalar(got) == np.isscalar(want)


@pytest.mark.parametrize("fn", ["softmax_backward", "log_softmax_backward"])
def test_0d_backward_shape(fn):
    assert np.shape(getattr(fastlin, fn)(1.0, 1.0)) == ()


def test_0d_logsumexp_backward_shape():
    assert np.shape(fastlin.logsumexp_backward(1.0, 3.0)) == ()
    assert np.shape(fastlin.logsumexp_backward(1.0, 3.0, b=2.0)) == ()


# -------------------------------------------------------------------- out=

@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2), (1, 2)])
def test_out_fresh_and_noncontiguous(fn, dtype, axis):
    f = getattr(fastlin, fn)
    x = rand((3, 4, 5), dtype, 3.0)
    want = f(x, axis)
    for out in (np.empty(x.shape, dtype),
                np.empty(x.shape, dtype, order="F"),
                np.full((6, 4, 10), np.nan, dtype)[::2, :, ::2],
                np.empty(x.shape[::-1], dtype).T):
        r = f(x, axis, out=out)
        assert r is out
        np.testing.assert_array_equal(out, want)     # same kernel, same bits
        JUDGES[fn](out, x, axis)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2)])
def test_out_in_place(fn, axis):
    f = getattr(fastlin, fn)
    x0 = rand((3, 4, 5), F64, 3.0)
    x = x0.copy()
    r = f(x, axis, out=x)
    assert r is x
    np.testing.assert_array_equal(x, f(x0, axis))
    # in place on a non-contiguous view
    big = np.zeros((3, 8, 5))
    v = big[:, ::2]
    v[...] = x0
    f(v, axis, out=v)
    np.testing.assert_array_equal(v, f(x0, axis))
    np.testing.assert_array_equal(big[:, 1::2], 0.0)      # padding untouched


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1)])
@pytest.mark.parametrize("offset", [1, -1, 5])
def test_out_shifted_overlap(fn, axis, offset):
    f = getattr(fastlin, fn)
    buf = np.random.default_rng(7).standard_normal(4 * 6 + 10)
    lo = 5
    x = buf[lo:lo + 24].reshape(4, 6)
    out = buf[lo + offset:lo + offset + 24].reshape(4, 6)
    want = f(x.copy(), axis)
    f(x, axis, out=out)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
def test_out_0d_and_empty(fn):
    f = getattr(fastlin, fn)
    out = np.empty(())
    assert f(np.array(2.0), out=out) is out
    np.testing.assert_array_equal(out, getattr(sp, fn)(2.0))
    out = np.empty((0, 3))
    assert f(np.empty((0, 3)), 1, out=out) is out


# ----------------------------------------------------------- edge cases

@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,axis", [((0,), None), ((0,), 0), ((3, 0), 1), ((3, 0), 0),
                                        ((0, 4), 0), ((0, 4), 1), ((2, 0, 3), (0, 2)),
                                        ((2, 0, 3), None)])
def test_empty_same_shape(fn, shape, axis):
    for dtype in (F32, F64, np.int64):
        got = getattr(fastlin, fn)(np.empty(shape, dtype), axis)
        assert got.shape == shape
        assert got.dtype == out_dtype(np.empty(0, dtype))


@pytest.mark.parametrize("shape,axis", [((0,), None), ((0,), 0), ((3, 0), 1), ((3, 0), 0),
                                        ((3, 0), None), ((0, 4), 0), ((0, 4), 1),
                                        ((2, 0, 3), (0, 2)), ((2, 0, 3), 1), ((2, 0, 3), ())])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_empty_matches_scipy(shape, axis, keepdims):
    """A size-0 reduction is log(0) = -inf, like scipy; an empty result stays empty.

    scipy 1.17 itself mishandles size-0 input with a tuple axis (its
    ``shape[axis] = 1`` raises IndexError for several axes, and for ``axis=()``
    returns shape (1, 1, 1) instead of the input's); there only fastlin's
    (correct) -inf and shape are checked.
    """
    for dtype in (F32, F64):
        a = np.empty(shape, dtype)
        exp_shape = expected_shape("logsumexp", shape, axis, keepdims)
        got = fastlin.logsumexp(a, axis, keepdims=keepdims)
        assert np.shape(got) == exp_shape
        assert np.asarray(got).dtype == dtype
        np.testing.assert_array_equal(got, np.full(exp_shape, -np.inf))
        r, s = fastlin.logsumexp(a, axis, keepdims=keepdims, return_sign=True)
        np.testing.assert_array_equal(r, np.full(exp_shape, -np.inf))
        got_b = fastlin.logsumexp(a, axis, b=np.ones(shape), keepdims=keepdims)
        np.testing.assert_array_equal(got_b, np.full(exp_shape, -np.inf))
        try:
            want = sp.logsumexp(a, axis, keepdims=keepdims)
            wr, ws = sp.logsumexp(a, axis, keepdims=keepdims, return_sign=True)
        except IndexError:
            continue
        if axis == ():
            continue
        assert np.shape(want) == exp_shape
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(r, wr)
        np.testing.assert_array_equal(s, ws)       # scipy's sign of an empty sum


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_single_element(dtype):
    big = np.finfo(dtype).max
    for v in (0.0, 1.0, -7.5, big, -big, np.finfo(dtype).smallest_subnormal):
        x = np.array([v], dtype)
        assert fastlin.softmax(x).tolist() == [1.0]
        assert fastlin.log_softmax(x).tolist() == [0.0]
        assert fastlin.logsumexp(x) == x[0]
        # a length-1 axis among others
        x2 = np.full((3, 1), v, dtype)
        np.testing.assert_array_equal(fastlin.softmax(x2, 1), 1.0)
        np.testing.assert_array_equal(fastlin.log_softmax(x2, 1), 0.0)
        np.testing.assert_array_equal(fastlin.logsumexp(x2, 1), x2[:, 0])


INF, NAN = np.inf, np.nan
SPECIAL_ROWS = [
    [NAN, 1.0, 2.0, 3.0],
    [NAN, NAN, NAN, NAN],
    [INF, 1.0, 2.0, 3.0],
    [INF, INF, 0.0, 0.0],
    [INF, -INF, 0.0, 1.0],
    [-INF, -INF, -INF, -INF],
    [-INF, 1.0, -INF, 2.0],
    [NAN, INF, -INF, 0.0],
    [NAN, -INF, -INF, -INF],
    [1e300, -1e300, 0.0, 1.0],
    [-1e300, -1e300, -1e300, -1e300],
    [1e308, 1e308, 1e308, 1e308],
    [-1e308, 1e308, 1.7976931348623157e308, 0.0],
    [5e-324, -5e-324, 0.0, 2.2250738585072014e-308],
    [-745.0, -746.0, -700.0, 0.0],
    [0.0, 1.0, 2.0, 3.0],
]


@pytest.mark.parametrize("fn", FORWARD)
@pytest.mark.parametrize("transpose", [False, True], ids=["rows", "columns"])
def test_special_values_match_scipy(fn, transpose):
    """NaN, +-inf, all -inf, huge and subnormal slices: scipy's NaN/inf pattern
    exactly, the finite entries within tolerance.  Along the last axis (rows
    kernel) and down columns (tile kernel)."""
    x = np.array(SPECIAL_ROWS)
    axis = 1
    if transpose:
        x, axis = np.ascontiguousarray(x.T), 0
    got = getattr(fastlin, fn)(x, axis)
    JUDGES[fn](got, x, axis)
    with np.errstate(all="ignore"):
        want = getattr(sp, fn)(x, axis)
    # where scipy is not finite, fastlin must be bitwise the same
    np.testing.assert_array_equal(np.where(np.isfinite(want), 0, got),
                                  np.where(np.isfinite(want), 0, want))


def test_special_rows_float32():
    x = np.array([[NAN, 1, 2], [INF, 1, 2], [-INF, -INF, -INF], [3e38, -3e38, 0],
                  [1e-45, -1e-45, 0], [-INF, 1, 2]], F32)
    for fn in FORWARD:
        got = getattr(fastlin, fn)(x, 1)
        assert np.asarray(got).dtype == F32
        with np.errstate(all="ignore"):
            want = getattr(sp, fn)(x.astype(F64), 1)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        fin = np.isfinite(want)
        np.testing.assert_array_equal(np.asarray(got)[~fin], want[~fin].astype(F32))
        JUDGES[fn](got, x, 1)


def test_all_neg_inf_rows_exact():
    x = np.full((3, 5), -np.inf)
    np.testing.assert_array_equal(fastlin.softmax(x, 1), np.full((3, 5), np.nan))
    np.testing.assert_array_equal(fastlin.log_softmax(x, 1), np.full((3, 5), np.nan))
    np.testing.assert_array_equal(fastlin.logsumexp(x, 1), np.full(3, -np.inf))
    np.testing.assert_array_equal(fastlin.logsumexp(x, 0), np.full(5, -np.inf))


def test_huge_magnitudes():
    x = np.array([1e300, -1e300])
    np.testing.assert_array_equal(fastlin.softmax(x), [1.0, 0.0])
    np.testing.assert_array_equal(fastlin.log_softmax(x), [0.0, -2e300])
    assert fastlin.logsumexp(x) == 1e300
    assert fastlin.logsumexp([1e300, 1e300]) == 1e300     # + log 2 is below an ulp
    x = np.array([1e300, 1e300 - 1e285])                   # a difference of ~1e285
    np.testing.assert_array_equal(fastlin.softmax(x), sp.softmax(x))
    assert fastlin.logsumexp(np.array([-1e300, -1e300])) == -1e300


def test_subnormal_inputs():
    for dtype in (F32, F64):
        s = np.finfo(dtype).smallest_subnormal
        x = np.array([s, -s, 0.0, 4 * s], dtype)
        np.testing.assert_allclose(fastlin.softmax(x), np.full(4, 0.25, dtype),
                                   rtol=4 * eps(dtype))
        np.testing.assert_allclose(fastlin.log_softmax(x), np.full(4, -np.log(4), dtype),
                                   rtol=4 * eps(dtype))
        np.testing.assert_allclose(fastlin.logsumexp(x), np.log(4).astype(dtype),
                                   rtol=4 * eps(dtype))


def test_subnormal_outputs():
    """exp(x - m) in the subnormal range, and its flush to 0 past it."""
    t = np.linspace(700, 760, 2001)
    x = np.stack([np.zeros_like(t), -t], axis=1)
    judge_softmax(fastlin.softmax(x, 1), x, 1)
    judge_softmax(fastlin.softmax(x.T.copy(), 0), x.T.copy(), 0)
    t32 = np.linspace(80, 110, 2001).astype(F32)
    x32 = np.stack([np.zeros_like(t32), -t32], axis=1)
    judge_softmax(fastlin.softmax(x32, 1), x32, 1)


# --------------------------------------------------- weighted logsumexp

def cancel_cond(a, b, axis):
    """sum|b exp(a - m)| / |sum b exp(a - m)| per slice (inf when it cancels)."""
    al, bl = np.broadcast_arrays(np.asarray(a, np.longdouble), np.asarray(b, np.longdouble))
    ax = axes_tuple(axis, al.ndim)
    live = bl != 0
    m = np.max(np.where(live, al, -np.inf), axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    t = np.where(live, bl * np.exp(al - m), 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.sum(np.abs(t), axis=ax) / np.abs(np.sum(t, axis=ax))
    return np.asarray(c, F64)


def judge_weighted(a, b, axis, keepdims=False):
    with np.errstate(all="ignore"):
        want_r, want_s = sp.logsumexp(a, axis, b=b, keepdims=keepdims, return_sign=True)
        want_nosign = sp.logsumexp(a, axis, b=b, keepdims=keepdims)
    got_r, got_s = fastlin.logsumexp(a, axis, b=b, keepdims=keepdims, return_sign=True)
    got_nosign = fastlin.logsumexp(a, axis, b=b, keepdims=keepdims)
    dt = np.asarray(want_r).dtype
    cond = cancel_cond(a, b, axis)
    if keepdims:
        cond = cond.reshape(np.shape(want_r))
    tol = 8 * eps(dt) * (cond + np.abs(np.asarray(want_r, F64)))
    assert_close(got_r, want_r, tol, "logsumexp(b, return_sign) vs scipy")
    np.testing.assert_array_equal(got_s, want_s)
    assert_close(got_nosign, want_nosign, tol, "logsumexp(b) vs scipy")
    assert np.asarray(got_r).dtype == np.asarray(got_s).dtype == dt


@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2), (1, 2), (0, 1, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_weighted_positive_and_negative(axis, keepdims):
    rng = np.random.default_rng(11)
    a = rng.standard_normal((3, 4, 5)) * 5
    judge_weighted(a, rng.uniform(0.1, 3, a.shape), axis, keepdims)
    judge_weighted(a, rng.uniform(-3, 3, a.shape), axis, keepdims)
    judge_weighted(a, -rng.uniform(0.1, 3, a.shape), axis, keepdims)
    judge_weighted(a.astype(F32), rng.uniform(0.1, 3, a.shape).astype(F32), axis, keepdims)


def test_logsumexp_negative_sum_without_sign_is_nan():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([1.0, 1.0, -2.0])
    assert np.isnan(fastlin.logsumexp(a, b=b))
    r, s = fastlin.logsumexp(a, b=b, return_sign=True)
    assert s == -1.0
    np.testing.assert_allclose(r, np.log(2 * np.exp(3) - np.exp(1) - np.exp(2)),
                               rtol=8 * eps(F64))
    # cancellation to exactly 0: -inf with sign 0
    r, s = fastlin.logsumexp([1.0, 1.0], b=[2.0, -2.0], return_sign=True)
    assert r == -np.inf and s == 0.0


@pytest.mark.parametrize("a,b", [
    ([1.0, INF, NAN, -INF], [1.0, 0.0, 0.0, 0.0]),     # b == 0 masks inf and nan
    ([NAN, 1.0], [0.0, 1.0]),
    ([INF, 2.0], [0.0, -1.0]),
    ([1.0, 2.0], [0.0, 0.0]),                          # all weights 0: -inf, sign 0
    ([-INF, -INF], [1.0, 2.0]),
    ([INF], [-1.0]),                                   # scipy gh-23548
    ([INF, INF], [1.0, -1.0]),                         # inf - inf: nan
    ([INF, INF], [-1.0, -1.0]),
    ([INF, 1.0], [1.0, -1.0]),
    ([NAN, 1.0], [1.0, 1.0]),
    ([1e308, 1e308], [1e308, 1e308]),                  # overflow of the sum: inf
    ([0.0, 0.0], [-1e308, -1e308]),
    ([3.06409428, 0.37251854, 3.87471931], [1.88190708, 2.84174795, -0.85016884]),
    ([3.06409428, 0.37251854, 3.87471931], [1.88190708, 2.84174795, -3.85016884]),
    ([1.0, 1.0, 1.0], [1.0, -1.0, -1.0]),
])
def test_logsumexp_weighted_special(a, b):
    a, b = np.array(a), np.array(b)
    for rs in (False, True):
        with np.errstate(all="ignore"):
            want = sp.logsumexp(a, b=b, return_sign=rs)
        got = fastlin.logsumexp(a, b=b, return_sign=rs)
        want, got = (want, got) if rs else ((want,), (got,))
        assert_close(got[0], want[0], 8 * eps(F64) * (1 + abs(np.nan_to_num(want[0]))))
        for g, w in zip(got[1:], want[1:]):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2), (1, 3), (0, 1, 2, 3)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_b_broadcasting(axis, keepdims):
    """a (4,1,2,1) and b (3,1,5) broadcast to (4,3,2,5), as in scipy's test."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 1, 2, 1))
    b = rng.uniform(0.1, 2, (3, 1, 5))
    got = fastlin.logsumexp(a, axis, b=b, keepdims=keepdims)
    want = sp.logsumexp(a, axis, b=b, keepdims=keepdims)
    assert np.shape(got) == np.shape(want)
    assert_close(got, want, 8 * eps(F64) * (1 + np.abs(want)))
    judge_weighted(a, b, axis, keepdims)


@pytest.mark.parametrize("da,db,dout", [(F32, F32, F32), (F32, F64, F64), (F64, F32, F64),
                                        (np.int64, np.int32, F64), (F32, np.int64, F64),
                                        (np.bool_, F32, F64), (np.int8, F32, F64)])
def test_logsumexp_weighted_dtypes(da, db, dout):
    """fastlin's documented rule: bool/int count as float64, then numpy promotion.
    (scipy gives float32 for bool/int8/int16 `a` with float32 `b`.)"""
    a = np.array([2, 1, 0]).astype(da)
    b = np.array([1, 1, 1]).astype(db)
    r, s = fastlin.logsumexp(a, b=b, return_sign=True)
    assert r.dtype == s.dtype == dout
    want = np.log(np.sum(np.exp(a.astype(np.longdouble))))
    np.testing.assert_allclose(r, want.astype(dout), rtol=8 * eps(dout))


def test_logsumexp_weighted_layouts():
    rng = np.random.default_rng(4)
    a0 = rng.standard_normal((3, 4, 5))
    b0 = rng.uniform(-1, 2, (3, 4, 5))
    for (na, a), (nb, b) in zip(layouts(a0), layouts(b0)):
        for axis in (None, 1, (0, 2)):
            judge_weighted(values_for(na, a0), values_for(nb, b0), axis)
            got = fastlin.logsumexp(a, axis, b=b, return_sign=True)
            want = fastlin.logsumexp(values_for(na, a0).copy(), axis,
                                     b=values_for(nb, b0).copy(), return_sign=True)
            np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------- backward

def grads(shape, dtype, seed=0):
    return np.random.default_rng(seed + 100).standard_normal(shape).astype(dtype)


def layout_pairs(g, y):
    """(g values, y values, g array, y array): each layout of g with a C-ordered y,
    then each layout of y with a C-ordered g.  A broadcast y is skipped (it is
    not the output of a forward pass along `axis`)."""
    for name, gl in layouts(g):
        yield values_for(name, g), y, gl, y
    for name, yl in layouts(y):
        if name != "broadcast":
            yield g, y, g, yl


def judge_softmax_bwd(got, g, y, axis):
    """gx = y (g - d), d = sum g y: error ~ eps y (|g| + sum|g y|)."""
    dt = np.asarray(got).dtype
    ax = axes_tuple(axis, y.ndim)
    g64, y64 = g.astype(F64), y.astype(F64)
    scale = np.abs(y64) * (np.abs(g64) + np.sum(np.abs(g64 * y64), axis=ax, keepdims=True))
    assert_close(got, ref.softmax_backward(g, y, axis), 8 * eps(dt) * scale + 4 * tiny(dt),
                 "softmax_backward vs reference")


def judge_log_softmax_bwd(got, g, y, axis):
    """gx = g - exp(y) sum(g): error ~ eps (|g| + exp(y) sum|g|)."""
    dt = np.asarray(got).dtype
    ax = axes_tuple(axis, y.ndim)
    g64, y64 = g.astype(F64), y.astype(F64)
    scale = np.abs(g64) + np.exp(y64) * np.sum(np.abs(g64), axis=ax, keepdims=True)
    assert_close(got, ref.log_softmax_backward(g, y, axis), 8 * eps(dt) * scale + 4 * tiny(dt),
                 "log_softmax_backward vs reference")


def judge_logsumexp_bwd(got, g, a, axis, b=None, keepdims=False):
    """gx = g b exp(a - lse): lse and a - lse are rounded, so the relative
    error is ~ eps (1 + |a - lse| + |lse|)."""
    dt = np.asarray(got).dtype
    want = ref.logsumexp_backward(g, a, axis, b=b, keepdims=keepdims)
    with np.errstate(all="ignore"):
        lse = ref.logsumexp(np.asarray(a, F64),
                            axis, b=None if b is None else np.abs(np.asarray(b, F64)),
                            keepdims=True)
        if b is not None:        # a was broadcast against b: bound with the worst slice
            lse = np.max(np.abs(lse))
        rel = 1 + np.abs(np.asarray(a, F64) - lse) + np.abs(lse)
    rel = np.where(np.isfinite(rel), rel, 1)
    if b is not None and np.shape(want) != np.broadcast_shapes(np.shape(a), np.shape(b)):
        rel = np.max(rel)       # summed over broadcast axes: bound by the worst term
        mag = ref.logsumexp_backward(np.abs(np.asarray(g, F64)), a, axis,
                                     b=np.abs(np.asarray(b, F64)), keepdims=keepdims)
    else:
        mag = np.abs(want.astype(F64))
    assert_close(got, want, 8 * eps(dt) * rel * np.abs(mag) + 4 * tiny(dt),
                 "logsumexp_backward vs reference")


BWD_CASES = [((7,), None), ((7,), 0), ((3, 17), 1), ((3, 17), 0), ((3, 17), None),
             ((2, 3, 5), -1), ((2, 3, 5), 1), ((2, 3, 5), (0, 2)), ((2, 3, 5), (1, 2)),
             ((2, 3, 4, 5), (0, 3)), ((2, 3, 4, 5), (1, 2)), ((2, 3, 4, 5), None),
             ((4, 300, 3), 1)]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape,axis", BWD_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_softmax_backward_vs_reference(dtype, shape, axis):
    for scale in (3.0, 60.0):                   # 60: many y underflow to 0
        x = rand(shape, dtype, scale)
        y = fastlin.softmax(x, axis)
        g = grads(shape, dtype)
        for gv, yv, gl, yl in layout_pairs(g, y):
            got = fastlin.softmax_backward(gl, yl, axis)
            assert got.dtype == dtype and got.shape == shape
            judge_softmax_bwd(got, gv, yv, axis)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape,axis", BWD_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_log_softmax_backward_vs_reference(dtype, shape, axis):
    for scale in (3.0, 60.0):
        x = rand(shape, dtype, scale)
        y = fastlin.log_softmax(x, axis)
        g = grads(shape, dtype)
        for gv, yv, gl, yl in layout_pairs(g, y):
            got = fastlin.log_softmax_backward(gl, yl, axis)
            assert got.dtype == dtype and got.shape == shape
            judge_log_softmax_bwd(got, gv, yv, axis)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape,axis", BWD_CASES, ids=lambda v: str(v).replace(" ", ""))
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_backward_vs_reference(dtype, shape, axis, keepdims):
    for scale in (3.0, 60.0):
        a = rand(shape, dtype, scale)
        gshape = expected_shape("logsumexp", shape, axis, keepdims)
        g = grads(gshape, dtype)
        for name, al in layouts(a):
            got = fastlin.logsumexp_backward(g, al, axis, keepdims=keepdims)
            assert got.dtype == dtype and got.shape == shape
            judge_logsumexp_bwd(got, g, values_for(name, a), axis, keepdims=keepdims)


@pytest.mark.parametrize("axis", [None, 0, -1, (0, 2), (1, 2)])
@pytest.mark.parametrize("sign", ["positive", "mixed", "negative"])
def test_logsumexp_backward_weighted(axis, sign):
    rng = np.random.default_rng(8)
    a = rng.standard_normal((3, 4, 5)) * 3
    lo = {"positive": 0.1, "mixed": -2.0, "negative": -2.0}[sign]
    hi = {"positive": 2.0, "mixed": 2.0, "negative": -0.1}[sign]
    b = rng.uniform(lo, hi, a.shape)
    b[0, 0, 0] = 0.0
    g = grads(expected_shape("logsumexp", a.shape, axis), F64)
    got = fastlin.logsumexp_backward(g, a, axis, b=b)
    assert got[0, 0, 0] == 0.0                  # b == 0 entries get 0
    if sign == "mixed":
        # lse = log|S| carries S's cancellation into every weight exp(a - lse)
        cond = np.max(cancel_cond(a, b, axis))
        lse, _ = fastlin.logsumexp(a, axis, b=b, keepdims=True, return_sign=True)
        rel = cond + 1 + np.abs(a - lse) + np.abs(lse)
        want = ref.logsumexp_backward(g, a, axis, b=b)
        assert_close(got, want, 8 * eps(F64) * rel * np.abs(want) + 4 * tiny(F64))
    else:
        judge_logsumexp_bwd(got, g, a, axis, b=b)
    # float32 weighted vs float64 weighted on the same values
    got32 = fastlin.logsumexp_backward(g.astype(F32), a.astype(F32), axis, b=b.astype(F32))
    assert got32.dtype == F32
    if sign != "mixed":
        g64, a64, b64 = (v.astype(F32).astype(F64) for v in (g, a, b))
        want64 = fastlin.logsumexp_backward(g64, a64, axis, b=b64)
        lse = fastlin.logsumexp(a64, axis, b=np.abs(b64), keepdims=True)
        rel = 1 + np.abs(a64 - lse) + np.abs(lse)
        assert_close(got32, want64, 8 * eps(F32) * rel * np.abs(want64) + 4 * tiny(F32))


def test_logsumexp_backward_broadcast_b():
    """a broadcast against b: the gradient is summed back to a's shape."""
    rng = np.random.default_rng(9)
    a = rng.standard_normal((4, 1, 2, 1))
    b = rng.uniform(0.1, 2, (3, 1, 5))
    for axis, keepdims in [(None, False), (-1, False), ((0, 2), True), (1, False)]:
        g = grads(expected_shape("logsumexp", (4, 3, 2, 5), axis, keepdims), F64)
        got = fastlin.logsumexp_backward(g, a, axis, b=b, keepdims=keepdims)
        assert got.shape == a.shape
        judge_logsumexp_bwd(got, g, a, axis, b=b, keepdims=keepdims)


def test_logsumexp_backward_scalar_grad_broadcasts():
    a = rand((3, 4), F64, 2.0)
    np.testing.assert_array_equal(fastlin.logsumexp_backward(1.0, a),
                                  fastlin.logsumexp_backward(np.ones(()), a))
    np.testing.assert_array_equal(fastlin.logsumexp_backward(2.0, a, 1),
                                  fastlin.logsumexp_backward(np.full(3, 2.0), a, 1))


@pytest.mark.parametrize("shape,axis", [((3, 17), 1), ((3, 17), 0), ((2, 3, 4, 5), (1, 3)),
                                        ((4, 300, 3), 1), ((5, 1000), -1), ((2, 3, 5), None)])
def test_backward_float32_vs_float64(shape, axis):
    """float32 backward against float64 backward on the very same values."""
    x = rand(shape, F32, 4.0)
    g = grads(shape, F32)
    e = eps(F32)
    # softmax
    y = fastlin.softmax(x, axis)
    got, want = fastlin.softmax_backward(g, y, axis), fastlin.softmax_backward(
        g.astype(F64), y.astype(F64), axis)
    ax = axes_tuple(axis, len(shape))
    scale = np.abs(y) * (np.abs(g) + np.sum(np.abs(g * y), axis=ax, keepdims=True))
    assert_close(got, want, 8 * e * scale.astype(F64) + 4 * tiny(F32))
    # log_softmax
    y = fastlin.log_softmax(x, axis)
    got, want = fastlin.log_softmax_backward(g, y, axis), fastlin.log_softmax_backward(
        g.astype(F64), y.astype(F64), axis)
    scale = np.abs(g) + np.exp(y.astype(F64)) * np.sum(np.abs(g), axis=ax, keepdims=True)
    assert_close(got, want, 8 * e * scale + 4 * tiny(F32))
    # logsumexp
    gl = grads(expected_shape("logsumexp", shape, axis), F32)
    got = fastlin.logsumexp_backward(gl, x, axis)
    want = fastlin.logsumexp_backward(gl.astype(F64), x.astype(F64), axis)
    lse = fastlin.logsumexp(x.astype(F64), axis, keepdims=True)
    rel = 1 + np.abs(x - lse) + np.abs(lse)
    assert_close(got, want, 8 * e * rel * np.abs(want) + 4 * tiny(F32))


def test_logsumexp_backward_all_neg_inf_is_exactly_zero():
    """Documented: a slice whose sum is 0 has no gradient; fastlin returns 0."""
    a = np.array([[-INF, -INF, -INF], [0.0, 1.0, 2.0]])
    for dtype in (F32, F64):
        ad = a.astype(dtype)
        g = fastlin.logsumexp_backward(np.ones(2, dtype), ad, 1)
        np.testing.assert_array_equal(g[0], 0.0)
        assert np.all(np.isfinite(g))
        g = fastlin.logsumexp_backward(np.ones(2, dtype), ad.T.copy(), 0)   # tile kernel
        np.testing.assert_array_equal(g[:, 0], 0.0)
        g = fastlin.logsumexp_backward(np.array(1, dtype), np.full(4, -INF, dtype))
        np.testing.assert_array_equal(g, 0.0)
        # weighted: all -inf, and all weights 0
        g = fastlin.logsumexp_backward(np.ones(2, dtype), ad, 1, b=np.ones((2, 3), dtype))
        np.testing.assert_array_equal(g[0], 0.0)
        g = fastlin.logsumexp_backward(np.array(1, dtype), np.zeros(3, dtype),
                                       b=np.zeros(3, dtype))
        np.testing.assert_array_equal(g, 0.0)
        # weights cancelling exactly
        g = fastlin.logsumexp_backward(np.array(1, dtype), np.ones(2, dtype),
                                       b=np.array([1, -1], dtype))
        np.testing.assert_array_equal(g, 0.0)


def test_softmax_backward_exact_zero_probabilities():
    x = np.array([[0.0, -1000.0, 5.0, -INF], [1.0, 2.0, 3.0, 4.0]])
    y = fastlin.softmax(x, 1)
    assert y[0, 1] == 0.0 and y[0, 3] == 0.0
    g = np.array([[1e3, -2.0, 3.0, 7.0], [1.0, 1.0, 1.0, 1.0]])
    gx = fastlin.softmax_backward(g, y, 1)
    assert np.all(np.isfinite(gx))
    assert gx[0, 1] == 0.0 and gx[0, 3] == 0.0
    judge_softmax_bwd(gx, g, y, 1)
    gx0 = fastlin.softmax_backward(g.T.copy(), y.T.copy(), 0)           # tile kernel
    np.testing.assert_array_equal(gx0[[1, 3], 0], 0.0)


def test_log_softmax_backward_neg_inf_output_gets_grad():
    """Documented: entries with y = -inf (probability 0) get grad itself."""
    x = np.array([0.0, -INF, 1.0, -INF])
    y = fastlin.log_softmax(x)
    assert y[1] == -INF
    g = np.array([0.5, -3.0, 2.0, 4.0])
    gx = fastlin.log_softmax_backward(g, y)
    assert gx[1] == g[1] and gx[3] == g[3]
    assert np.all(np.isfinite(gx))
    judge_log_softmax_bwd(gx, g, y, None)


def test_backward_mixed_dtypes_promote():
    y32 = fastlin.softmax(np.arange(4, dtype=F32))
    g64 = np.linspace(-1, 1, 4)
    for fn, y in (("softmax_backward", y32), ("log_softmax_backward", np.log(y32))):
        f = getattr(fastlin, fn)
        assert f(g64.astype(F32), y).dtype == F32
        assert f(g64, y).dtype == F64
        assert f(g64.astype(np.int64), y).dtype == F64
        np.testing.assert_array_equal(f(g64, y), f(g64, y.astype(F64)))
    assert fastlin.logsumexp_backward(np.float32(1), np.zeros(3, F32)).dtype == F32
    assert fastlin.logsumexp_backward(np.float64(1), np.zeros(3, F32)).dtype == F64
    assert fastlin.logsumexp_backward(np.ones(()), np.zeros(3, F32), 0).dtype == F64


REF_OVERFLOW = ("fastlin.reference.logsumexp / logsumexp_backward sum exp(a) unshifted; "
                "longdouble overflows for a > ~11356, so the twin gives inf / 0 where the "
                "answer is finite (its module docstring says it cannot overflow)")


def test_reference_logsumexp_large_inputs():
    with np.errstate(over="ignore"):
        r = ref.logsumexp(np.array([2e4, 2e4]))
    assert r == fastlin.logsumexp(np.array([2e4, 2e4])) == 2e4 + np.log(2)


def test_reference_logsumexp_backward_large_inputs():
    with np.errstate(over="ignore", invalid="ignore"):
        g = ref.logsumexp_backward(1.0, np.array([2e4, 2e4]))
    np.testing.assert_array_equal(g, [0.5, 0.5])


def test_backward_inputs_untouched():
    x = rand((3, 5), F64, 2.0)
    y = fastlin.softmax(x, 1)
    g = grads((3, 5), F64)
    keep = (x.copy(), y.copy(), g.copy())
    fastlin.softmax_backward(g, y, 1)
    fastlin.log_softmax_backward(g, np.log(y), 1)
    fastlin.logsumexp_backward(g[:, 0], x, 1)
    fastlin.logsumexp_backward(g[:, 0], x, 1, b=y)
    for before, after in zip(keep, (x, y, g)):
        np.testing.assert_array_equal(before, after)


# ------------------------------------------------------------- hypothesis

def shapes_and_axes(max_dims=3):
    @st.composite
    def strat(draw):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=6))
        nd = len(shape)
        axis = draw(st.one_of(
            st.none(),
            st.integers(-nd, nd - 1),
            st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple)))
        return shape, axis
    return strat()


@st.composite
def f64_arrays_with_specials(draw):
    shape, axis = draw(shapes_and_axes())
    x = draw(hnp.arrays(F64, shape, elements=st.floats(allow_nan=True, allow_infinity=True)))
    return x, axis


@HYP
@given(f64_arrays_with_specials(), st.sampled_from(FORWARD))
def test_hypothesis_float64_vs_scipy(case, fn):
    x, axis = case
    got = getattr(fastlin, fn)(x, axis)
    with np.errstate(all="ignore"):
        want = getattr(sp, fn)(x, axis)
    assert np.shape(got) == np.shape(want)
    dt = F64
    if fn == "softmax":
        tol = 20 * eps(dt) * np.abs(want) + 8 * tiny(dt)
    elif fn == "log_softmax":
        tol = 8 * eps(dt) * (1 + slice_cond(x, axis))
    else:
        tol = 8 * eps(dt) * (1 + np.abs(np.nan_to_num(want, posinf=0, neginf=0)))
    assert_close(got, want, tol, fn)


@st.composite
def f32_finite_arrays(draw):
    shape, axis = draw(shapes_and_axes())
    x = draw(hnp.arrays(F32, shape, elements=st.floats(-1e6, 1e6, width=32)))
    return x, axis


@HYP
@given(f32_finite_arrays(), st.sampled_from(FORWARD))
def test_hypothesis_float32_vs_reference(case, fn):
    x, axis = case
    got = getattr(fastlin, fn)(x, axis)
    assert np.asarray(got).dtype == F32
    JUDGES[fn](got, x, axis)


@st.composite
def weighted_cases(draw):
    shape, axis = draw(shapes_and_axes())
    a = draw(hnp.arrays(F64, shape, elements=st.floats(-1e3, 1e3)))
    b = draw(hnp.arrays(F64, shape, elements=st.one_of(st.just(0.0), st.floats(-10, 10))))
    return a, b, axis


@HYP
@given(weighted_cases())
def test_hypothesis_weighted_logsumexp_vs_scipy(case):
    a, b, axis = case
    cond = cancel_cond(a, b, axis)
    # near-total cancellation leaves the sign itself to rounding: skip those
    if not np.all((cond < 1e6) | np.isnan(cond)):
        return
    judge_weighted(a, b, axis)


@HYP
@given(f64_arrays_with_specials())
def test_hypothesis_logsumexp_masked_by_zero_weights(case):
    """Entries with weight 0 do not matter, whatever they hold -- wherever the
    result is finite.  A slice whose masked sum is 0 (all weights 0, or only
    -inf left) goes through scipy's direct formula, where 0 * inf = nan
    reappears: there fastlin must give scipy's answer."""
    x, axis = case
    keep = np.isfinite(x) & (np.arange(x.size).reshape(x.shape) % 2 == 0)
    b = keep.astype(F64)
    got_r, got_s = fastlin.logsumexp(x, axis, b=b, return_sign=True)
    masked_r, masked_s = fastlin.logsumexp(np.where(keep, x, -np.inf), axis, return_sign=True)
    with np.errstate(all="ignore"):
        want_r, want_s = sp.logsumexp(x, axis, b=b, return_sign=True)
    tol = 8 * eps(F64) * (1 + np.abs(np.nan_to_num(want_r, posinf=0, neginf=0)))
    assert_close(got_r, want_r, tol)
    np.testing.assert_array_equal(got_s, want_s)
    fin = np.isfinite(masked_r)
    assert_close(np.asarray(got_r)[fin], np.asarray(masked_r)[fin], np.asarray(tol)[fin])
    np.testing.assert_array_equal(np.asarray(got_s)[fin], np.asarray(masked_s)[fin])


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
def test_column_tiles_leading_minus_inf_and_nan(fn):
    """Down columns (the tile kernel's online max/sum): a column that starts
    with -inf entries while no other lane of the row rises (the cheap path),
    and a column whose first entry is nan while another lane rises."""
    x = np.array([[-INF, 5.0, NAN, 1.0],
                  [-INF, 4.0, 1.0, 1.0],
                  [1.0, 3.0, 2.0, 1.0],
                  [2.0, 2.0, 3.0, 1.0]])
    got = getattr(fastlin, fn)(x, 0)
    with np.errstate(all="ignore"):
        want = getattr(sp, fn)(x, 0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    fin = np.isfinite(want)
    np.testing.assert_array_equal(np.asarray(got)[~fin], np.asarray(want)[~fin])
    np.testing.assert_allclose(np.asarray(got)[fin], np.asarray(want)[fin], rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype,offset", [(np.float32, 1e5), (np.float32, 1e8),
                                          (np.float64, 1e12), (np.float64, 1e17)])
@pytest.mark.parametrize("weighted", [False, True])
def test_logsumexp_backward_keeps_digits_at_large_magnitude(dtype, offset, weighted):
    """The gradient is softmax(a): exp(a - lse) with lse rounded to the dtype
    lost lse - max (at most log n) against a large max (float32 [1e8, 1e8]
    gave [1, 1]; 1e5 + randn, 2.4e-3 off).  Formed as exp((a - m) - r), it
    keeps a few eps relative, on the row and the column path, against a
    longdouble twin on the same rounded values (measured 7.4e-8 float32 /
    3.3e-16 float64; bound 8 eps)."""
    rng = np.random.default_rng(44)
    x = (offset + rng.standard_normal(64)).astype(dtype)
    x[3] = x[7]                                   # a repeated value
    xl = x.astype(np.longdouble)
    want = np.exp(xl - xl.max())
    want /= want.sum()
    kw = {"b": np.ones_like(x)} if weighted else {}
    got = fastlin.logsumexp_backward(1.0, x, **kw)
    tol = 8 * np.finfo(dtype).eps
    assert float(np.max(np.abs(got - want) / want)) < tol
    X = np.repeat(x[:, None], 40, axis=1)         # reduced down the columns
    kw = {"b": np.ones_like(X)} if weighted else {}
    got = fastlin.logsumexp_backward(np.ones(40, dtype), X, axis=0, **kw)
    assert float(np.max(np.abs(got - want[:, None]) / want[:, None])) < tol
    two = np.full(2, offset, dtype)
    np.testing.assert_array_equal(fastlin.logsumexp_backward(1.0, two), [0.5, 0.5])


@pytest.mark.parametrize("b", [2.0, 2, True])
def test_logsumexp_python_scalar_b_keeps_float32(b):
    """A Python scalar b is weak (NEP 50), as for scipy: float32 stays float32."""
    a = np.float32([1.0, 2.0, 0.5])
    got = fastlin.logsumexp(a, b=b)
    want = sp.logsumexp(a, b=b)
    assert got.dtype == np.float32 == want.dtype
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(np.float32).eps)
    assert fastlin.logsumexp_backward(1.0, a, b=b).dtype == np.float32
    assert fastlin.logsumexp(a, b=np.float64(2.0)).dtype == np.float64
