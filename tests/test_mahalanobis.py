"""mahalanobis and mahalanobis_backward: one distribution, many points.

Judges: the NumPy twin of fastlin.reference (explicit ``np.linalg.solve`` in float64,
refined once with a longdouble residual; the quadratic form and the row sums
in longdouble), scipy's single-point ``scipy.spatial.distance.mahalanobis(u,
v, VI)``, central finite differences and torch autograd.

Tolerances (error bounds, with kappa the condition number of cov)
------------------------------------------------------------------
* Forward vs the twin: ``4 (d + 1) eps kappa |want|``.  Each row is done on
  its own.  The Cholesky factorisation is backward stable, ``L L^T = M + E``
  with ``|E| <= d eps |L||L^T|``, which moves d^2 = delta^T cov^-1 delta by
  at most ``d eps kappa d^2`` (for VI: ``d eps |VI| |delta|^2``, the same
  bound); the triangular solve / product per row adds ``d eps kappa(L)``,
  kappa(L) = sqrt(kappa).  The bound is *relative* to d^2 (|z|^2 is d^2
  itself), and the plain distance halves it.  The worst observed ratio of
  error to this bound is ~0.2 (cond 1 .. 1e4).
* float32 vs the float64 result of the same float32-representable inputs:
  ``4 (d + 1) eps32 sqrt(kappa) |want|``.  Both factor in float64; only the
  rounding of L to float32 (eps32 per entry) and the float32 solve differ, and
  both perturb z = L^-1 delta by kappa(L) = sqrt(kappa) relative.
* Backward: per entry ``c eps (d + 1) kappa`` times the normwise magnitude of
  the terms (|a_i| |w_i| for a row of gX; their sum for gmean; sum_i |a_i|
  |w_i|^2 for gM), plus ``c eps n`` of the same for gmean and gM, which sum n
  rows (``bwd_tols``); c = 4 for float32 vs float64, 8 against torch (both
  sides err).  These are worst-case bounds: observed errors are ~1e-3 of them.
* Finite differences: central, in float64, of ``<g, dist(theta)>`` with
  h = 1e-6 relative, judged to 1e-6 of the largest gradient entry as in
  test_gradients.py (truncation ~1e-12, rounding ~1e-10 relative).
"""
import json
import os
import platform
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.spatial.distance as ssd

import fastlin
from fastlin import reference

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
KINDS = ("cov", "VI", "cholesky")
RTOL_C = 4.0
H = 1e-6
FD_TOL = 1e-6


def eps(dt):
    return float(np.finfo(dt).eps)


def spd(rng, d, cond=10.0):
    """A symmetric positive definite cov of condition number `cond`, with its
    precision VI and lower Cholesky factor L, all exactly symmetric / lower."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.logspace(0, np.log10(cond), d) if d > 1 else np.array([2.0])
    cov = (q * lam) @ q.T
    cov = (cov + cov.T) / 2
    vi = np.linalg.inv(cov)
    vi = (vi + vi.T) / 2
    L = np.linalg.cholesky(cov)
    return {"cov": cov, "VI": vi, "cholesky": L}


def as_dtype(mats, dt):
    """The matrices rounded to dt (symmetry survives rounding; L stays lower)."""
    return {k: np.asarray(v, dt) for k, v in mats.items()}


def kappa(mats):
    c = np.asarray(mats["cov"], F64)
    return float(np.linalg.cond(c)) if c.size else 1.0


# ------------------------------------------------------------------ the twin

def twin(X, mean, kind, M, squared):
    """fastlin.reference's twin: explicit solves in float64 refined with a
    longdouble residual, the quadratic form and the sums in longdouble."""
    return reference.mahalanobis(X, mean, **{kind: M}, squared=squared, dtype=F64)


def assert_rel_close(got, want, rtol, what=""):
    got = np.asarray(got, F64)
    want = np.asarray(want, F64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.abs(got - want)
    tol = rtol * np.abs(want)
    bad = ~(err <= tol)
    if bad.any():
        i = np.flatnonzero(bad.ravel())[0]
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} outside rtol {rtol:.3g}; "
                             f"e.g. got={got.ravel()[i]!r} want={want.ravel()[i]!r}")


def dist_rtol(dt, d, k):
    """Relative bound on d^2 (and so on d) of the kernel against exact."""
    return RTOL_C * (d + 1) * eps(dt) * k


def dist_rtol_same_factor(dt, d, k):
    """Relative bound of the dt result against the float64 result of the same
    inputs: the Cholesky factor is computed in float64 for both, only its
    rounding to dt (relative eps per entry) and the dt solve differ, and
    both perturb z = L^-1 delta by kappa(L) = sqrt(kappa(cov)) relative."""
    return RTOL_C * (d + 1) * eps(dt) * np.sqrt(k)


def call(kind, M, X, mean, squared=False):
    return fastlin.mahalanobis(X, mean, **{kind: M}, squared=squared)


def call_bwd(kind, M, g, X, mean, squared=False):
    return fastlin.mahalanobis_backward(g, X, mean, **{kind: M}, squared=squared)


# ------------------------------------------------------------------ forward

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("n, d, cond", [(7, 5, 10.0), (1000, 8, 1e2), (257, 3, 1.0),
                                        (300, 16, 1e4), (256, 4, 30.0), (3, 1, 1.0)])
def test_float64_matches_twin(rng, kind, squared, n, d, cond):
    mats = spd(rng, d, cond)
    X = rng.standard_normal((n, d)) * 2
    mean = rng.standard_normal(d)
    got = call(kind, mats[kind], X, mean, squared)
    assert got.dtype == F64 and got.shape == (n,)
    assert_rel_close(got, twin(X, mean, kind, mats[kind], squared),
                     dist_rtol(F64, d, kappa(mats)), f"{kind} squared={squared}")


@pytest.mark.parametrize("d, cond", [(5, 10.0), (12, 1e3), (1, 1.0)])
def test_single_point_matches_scipy(rng, d, cond):
    mats = spd(rng, d, cond)
    mean = rng.standard_normal(d)
    tol = dist_rtol(F64, d, kappa(mats))
    for _ in range(5):
        u = rng.standard_normal(d) * 3
        want = ssd.mahalanobis(u, mean, mats["VI"])
        for kind in KINDS:
            got = call(kind, mats[kind], u, mean)
            assert np.ndim(got) == 0 and np.asarray(got).dtype == F64
            assert abs(got - want) <= tol * want, (kind, got, want)
        got_sq = call("VI", mats["VI"], u, mean, squared=True)
        assert abs(got_sq - want ** 2) <= 2 * tol * want ** 2


def test_batched_matches_scipy_per_point(rng):
    d = 4
    mats = spd(rng, d, 50.0)
    mean = rng.standard_normal(d)
    X = rng.standard_normal((9, d))
    want = np.array([ssd.mahalanobis(u, mean, mats["VI"]) for u in X])
    got = fastlin.mahalanobis(X, mean, VI=mats["VI"])
    assert_rel_close(got, want, dist_rtol(F64, d, kappa(mats)), "vs scipy")


@pytest.mark.parametrize("squared", [False, True])
def test_three_matrix_kinds_agree(rng, squared):
    d = 7
    mats = spd(rng, d, 1e3)
    X = rng.standard_normal((500, d))
    mean = rng.standard_normal(d)
    res = {k: call(k, mats[k], X, mean, squared) for k in KINDS}
    # each within the bound of the twin, so within twice it of each other
    tol = 2 * dist_rtol(F64, d, kappa(mats))
    assert_rel_close(res["VI"], res["cov"], tol, "VI vs cov")
    assert_rel_close(res["cholesky"], res["cov"], tol, "cholesky vs cov")


def test_squared_is_square_of_plain(rng):
    mats = spd(rng, 6, 20.0)
    X = rng.standard_normal((100, 6))
    mean = rng.standard_normal(6)
    for kind in KINDS:
        plain = call(kind, mats[kind], X, mean)
        sq = call(kind, mats[kind], X, mean, squared=True)
        # sqrt is correctly rounded: plain^2 is sq to two roundings
        np.testing.assert_allclose(plain ** 2, sq, rtol=4 * EPS64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("cond", [1.0, 1e2, 1e3])
def test_float32_stays_float32_and_is_accurate(rng, kind, squared, cond):
    d, n = 9, 600
    mats32 = as_dtype(spd(rng, d, cond), F32)
    X = rng.standard_normal((n, d)).astype(F32)
    mean = rng.standard_normal(d).astype(F32)
    got = call(kind, mats32[kind], X, mean, squared)
    assert got.dtype == F32
    # the float64 result of the very same float32-representable inputs
    want = call(kind, {k: v.astype(F64) for k, v in mats32.items()}[kind],
                X.astype(F64), mean.astype(F64), squared)
    assert_rel_close(got, want, dist_rtol_same_factor(F32, d, kappa(mats32)),
                     f"float32 {kind}")
    # and the float64 path is itself right
    assert_rel_close(want, twin(X, mean, kind, mats32[kind], squared),
                     dist_rtol(F64, d, kappa(mats32)), "float64 of float32 data")


def test_float32_single_point_is_float32_scalar(rng):
    mats = as_dtype(spd(rng, 3), F32)
    r = fastlin.mahalanobis(np.ones(3, F32), np.zeros(3, F32), mats["cov"])
    assert np.ndim(r) == 0 and np.asarray(r).dtype == F32


def test_mixed_float32_float64_promotes(rng):
    mats = spd(rng, 3)
    X = rng.standard_normal((4, 3)).astype(F32)
    assert call("cov", mats["cov"], X, np.zeros(3, F32)).dtype == F64
    assert call("cov", mats["cov"].astype(F32), X, np.zeros(3)).dtype == F64


def test_integers_compute_in_float64():
    X = np.array([[3, 4], [0, 0], [1, -2]])
    cov = np.array([[4, 0], [0, 1]])
    got = fastlin.mahalanobis(X, np.array([0, 0]), cov)
    assert got.dtype == F64
    # exact: (3/2)^2 + 4^2, 0, (1/2)^2 + 2^2
    want_sq = np.array([2.25 + 16, 0.0, 0.25 + 4])
    np.testing.assert_array_equal(fastlin.mahalanobis(X, [0, 0], cov, squared=True), want_sq)
    np.testing.assert_allclose(got, np.sqrt(want_sq), rtol=2 * EPS64)
    vi = np.array([[1, 0], [0, 2]])
    # VI = L L^T with L = diag(1, sqrt 2): sqrt 2 is rounded, so a few eps
    np.testing.assert_allclose(
        fastlin.mahalanobis(X, [0, 0], VI=vi, squared=True), [9 + 32, 0, 1 + 8],
        rtol=4 * EPS64)
    L = np.array([[2, 0], [0, 1]])
    np.testing.assert_array_equal(
        fastlin.mahalanobis(X, [0, 0], cholesky=L, squared=True), want_sq)


@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 3, 4), (0,), (2, 0, 3)])
@pytest.mark.parametrize("kind", KINDS)
def test_batched_leading_shapes(rng, lead, kind):
    d = 4
    mats = spd(rng, d, 10.0)
    X = rng.standard_normal(lead + (d,))
    mean = rng.standard_normal(d)
    got = call(kind, mats[kind], X, mean)
    assert np.shape(got) == lead
    flat = call(kind, mats[kind], X.reshape(-1, d), mean)
    # rows are independent and fixed-blocked: the reshape is bitwise the same
    np.testing.assert_array_equal(np.reshape(got, -1), flat)
    if X.size:
        assert_rel_close(got, twin(X, mean, kind, mats[kind], False),
                         dist_rtol(F64, d, kappa(mats)))
    g = rng.standard_normal(lead)
    gX, gmean, gM = call_bwd(kind, mats[kind], g, X, mean)
    gXf, gmeanf, gMf = call_bwd(kind, mats[kind], g.reshape(-1), X.reshape(-1, d), mean)
    assert gX.shape == X.shape and gmean.shape == (d,) and gM.shape == (d, d)
    np.testing.assert_array_equal(gX.reshape(-1, d), gXf)
    np.testing.assert_array_equal(gmean, gmeanf)
    np.testing.assert_array_equal(gM, gMf)


def test_dimension_one(rng):
    X = rng.standard_normal((10, 1))
    mean = np.array([0.3])
    var = 2.5
    want = np.abs(X[:, 0] - 0.3) / np.sqrt(var)
    for kind, M in (("cov", [[var]]), ("VI", [[1 / var]]), ("cholesky", [[np.sqrt(var)]])):
        np.testing.assert_allclose(call(kind, M, X, mean), want, rtol=4 * EPS64)
    # a 1-d X of dimension 1 is one point: a scalar
    r = fastlin.mahalanobis([2.0], [0.0], [[4.0]])
    assert np.ndim(r) == 0 and r == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_zero_rows(rng, kind):
    mats = spd(rng, 3)
    out = call(kind, mats[kind], np.empty((0, 3)), np.zeros(3))
    assert out.shape == (0,) and out.dtype == F64
    out32 = call(kind, mats[kind].astype(F32), np.empty((0, 3), F32), np.zeros(3, F32))
    assert out32.shape == (0,) and out32.dtype == F32
    gX, gmean, gM = call_bwd(kind, mats[kind], np.empty(0), np.empty((0, 3)), np.zeros(3))
    assert gX.shape == (0, 3)
    np.testing.assert_array_equal(gmean, 0)
    np.testing.assert_array_equal(gM, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_dimension_zero(kind):
    # points of no dimension are all at distance 0 (an empty sum)
    M = np.zeros((0, 0))
    np.testing.assert_array_equal(call(kind, M, np.zeros((3, 0)), np.zeros(0)), [0, 0, 0])
    assert call(kind, M, np.zeros(0), np.zeros(0)) == 0
    gX, gmean, gM = call_bwd(kind, M, np.ones(3), np.zeros((3, 0)), np.zeros(0))
    assert gX.shape == (3, 0) and gmean.shape == (0,) and gM.shape == (0, 0)


def test_float16_computes_in_float32(rng):
    X = rng.standard_normal((4, 3)).astype(np.float16)
    r = fastlin.mahalanobis(X, np.zeros(3, np.float16), np.eye(3, dtype=np.float16))
    assert r.dtype == F32
    np.testing.assert_allclose(r, np.linalg.norm(X.astype(F64), axis=1), rtol=8 * EPS32)


def test_point_at_the_mean_is_exactly_zero(rng):
    mats = spd(rng, 5, 100.0)
    mean = rng.standard_normal(5)
    X = np.stack([mean, mean + 1, mean])
    for kind in KINDS:
        for sq in (False, True):
            r = call(kind, mats[kind], X, mean, sq)
            assert r[0] == 0 and r[2] == 0 and r[1] > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dt", [F32, F64])
def test_layouts_are_bitwise_identical(rng, layout, kind, dt):
    d = 6
    mats = as_dtype(spd(rng, d, 20.0), dt)
    X = rng.standard_normal((300, d)).astype(dt)
    mean = rng.standard_normal(d).astype(dt)
    g = rng.standard_normal(300).astype(dt)
    M = mats[kind]
    want = call(kind, M, X, mean)
    got = call(kind, layout(M), layout(X), layout(mean))
    np.testing.assert_array_equal(got, want)
    assert got.dtype == dt
    want_b = call_bwd(kind, M, g, X, mean)
    got_b = call_bwd(kind, layout(M), layout(g), layout(X), layout(mean))
    for a, b in zip(got_b, want_b):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_layouts_are_bitwise_identical(rng, layout, kind):
    mats = spd(rng, 4, 10.0)
    X = rng.standard_normal((2, 3, 4))
    mean = rng.standard_normal(4)
    g = rng.standard_normal((2, 3))
    want = call(kind, mats[kind], X, mean)
    np.testing.assert_array_equal(call(kind, mats[kind], layout(X), mean), want)
    want_b = call_bwd(kind, mats[kind], g, X, mean)
    for a, b in zip(call_bwd(kind, mats[kind], layout(g), layout(X), mean), want_b):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_are_not_modified(rng, kind):
    mats = spd(rng, 5, 10.0)
    X = rng.standard_normal((400, 5))
    mean = rng.standard_normal(5)
    g = rng.standard_normal(400)
    M = mats[kind]
    copies = [a.copy() for a in (X, mean, M, g)]
    call(kind, M, X, mean)
    call(kind, M, X, mean, squared=True)
    call_bwd(kind, M, g, X, mean)
    call_bwd(kind, M, g, X, mean, squared=True)
    for a, c in zip((X, mean, M, g), copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("kind", KINDS)
def test_bitwise_identical_for_1_and_2_threads(rng, kind):
    d = 16
    mats = spd(rng, d, 100.0)
    X = rng.standard_normal((5000, d))
    mean = rng.standard_normal(d)
    g = rng.standard_normal(5000)
    for dt in (F64, F32):
        M, Xd, md, gd = (np.asarray(a, dt) for a in (mats[kind], X, mean, g))
        with fastlin.threads(1):
            a = call(kind, M, Xd, md)
            a_sq = call(kind, M, Xd, md, squared=True)
            ab = call_bwd(kind, M, gd, Xd, md)
        with fastlin.threads(2):
            b = call(kind, M, Xd, md)
            b_sq = call(kind, M, Xd, md, squared=True)
            bb = call_bwd(kind, M, gd, Xd, md)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a_sq, b_sq)
        for u, v in zip(ab, bb):
            np.testing.assert_array_equal(u, v)


# ------------------------------------------------------------------ validation

def _raises(exc, match, kind=None, M=None, X=None, mean=None, **kw):
    X = np.zeros((2, 3)) if X is None else X
    mean = np.zeros(3) if mean is None else mean
    args = {} if kind is None else {kind: M}
    with pytest.raises(exc, match=match):
        fastlin.mahalanobis(X, mean, **args, **kw)
    g = np.zeros(np.shape(X)[:-1]) if np.ndim(X) else np.zeros(())
    with pytest.raises(exc, match=match):
        fastlin.mahalanobis_backward(g, X, mean, **args, **kw)


def test_exactly_one_matrix():
    I3 = np.eye(3)
    with pytest.raises(ValueError, match="exactly one of cov, VI.*got 0: none"):
        fastlin.mahalanobis(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="exactly one.*got 2: cov, VI"):
        fastlin.mahalanobis(np.zeros((2, 3)), np.zeros(3), I3, VI=I3)
    with pytest.raises(ValueError, match="exactly one.*got 2: VI, cholesky"):
        fastlin.mahalanobis(np.zeros((2, 3)), np.zeros(3), VI=I3, cholesky=I3)
    with pytest.raises(ValueError, match="exactly one.*got 3"):
        fastlin.mahalanobis(np.zeros((2, 3)), np.zeros(3), I3, VI=I3, cholesky=I3)
    with pytest.raises(ValueError, match="exactly one.*got 0"):
        fastlin.mahalanobis_backward(np.zeros(2), np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="exactly one.*got 2"):
        fastlin.mahalanobis_backward(np.zeros(2), np.zeros((2, 3)), np.zeros(3), I3,
                                     cholesky=I3)


@pytest.mark.parametrize("mean, msg", [
    (np.zeros(4), r"mean must have shape \(3,\).*got \(4,\)"),
    (np.zeros((1, 3)), r"mean must have shape \(3,\).*got \(1, 3\)"),
    (np.float64(0.0), r"mean must have shape \(3,\).*got \(\)"),
])
def test_mean_shape(mean, msg):
    _raises(ValueError, msg, "cov", np.eye(3), mean=mean)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(3, 4), (4, 4), (2, 2), (3,), (1, 3, 3)])
def test_matrix_shape(kind, shape):
    M = np.ones(shape)
    _raises(ValueError, rf"{kind} must have shape \(3, 3\) for points of dimension 3, got "
            + re_shape(shape), kind, M)


def re_shape(shape):
    return str(shape).replace("(", r"\(").replace(")", r"\)")


def test_scalar_X():
    with pytest.raises(ValueError, match="X must have at least 1 dimension"):
        fastlin.mahalanobis(1.0, np.zeros(1), np.eye(1))


@pytest.mark.parametrize("kind", ["cov", "VI"])
def test_not_symmetric(kind):
    M = np.eye(3) * 2
    M[0, 2] = 0.5
    _raises(ValueError, f"{kind} must be symmetric", kind, M)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_not_positive_definite_names_the_column(k):
    diag = np.arange(1.0, 6.0)
    diag[k] = -1.0
    _raises(ValueError, rf"cov is not positive definite \(Cholesky failed at column {k}\)",
            "cov", np.diag(diag), X=np.zeros((2, 5)), mean=np.zeros(5))
    # VI need only be semidefinite: refused as indefinite, with its eigenvalue
    _raises(ValueError, r"VI is not positive semidefinite \(an eigenvalue is -1, the "
            r"largest [45]\)", "VI", np.diag(diag), X=np.zeros((2, 5)), mean=np.zeros(5))


@pytest.mark.parametrize("kind", ["cov", "VI"])
def test_far_from_definite_gets_no_ridge(kind):
    """An eigenvalue of -1 against a mean of 1 is not rounding: no small
    ridge is proposed (1e-13 I would not fix it), the message says so."""
    _raises(ValueError, r"far from it \(smallest eigenvalue -1, mean eigenvalue 1\): no "
            r"small ridge fixes that; check how " + kind, kind,
            np.array([[1.0, 2.0], [2.0, 1.0]]), X=np.zeros((1, 2)), mean=np.zeros(2))


@pytest.mark.parametrize("kind", ["cov", "VI"])
@pytest.mark.parametrize("low", [-1e-9, -3e-5])
def test_ridge_hint_lifts_the_smallest_eigenvalue(kind, low):
    """Slightly indefinite (rounding in how it was made): the proposed ridge
    is above the shortfall, and the matrix it gives is accepted."""
    rng = np.random.default_rng(3)
    Q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    M = (Q * np.array([2.0, 1.0, 0.5, low])) @ Q.T
    M = (M + M.T) / 2
    with pytest.raises(ValueError, match=r"regularise it, e.g. " + kind + r" \+ ") as info:
        fastlin.mahalanobis(np.ones(4), np.zeros(4), **{kind: M})
    lam = float(str(info.value).split(kind + " + ")[1].split(" ")[0])
    ridged = M + lam * np.trace(M) / 4 * np.eye(4)
    assert np.isfinite(fastlin.mahalanobis(np.ones(4), np.zeros(4), **{kind: ridged}))


def test_singular_and_indefinite_non_diagonal():
    # cov rank one: the second pivot is 0
    _raises(ValueError, r"not positive definite \(Cholesky failed at column 1\)", "cov",
            np.ones((2, 2)), X=np.zeros((1, 2)), mean=np.zeros(2))
    # indefinite: eigenvalues 3, -1
    _raises(ValueError, r"Cholesky failed at column 1", "cov",
            np.array([[1.0, 2.0], [2.0, 1.0]]), X=np.zeros((1, 2)), mean=np.zeros(2))
    _raises(ValueError, r"VI is not positive semidefinite \(an eigenvalue is -1, the "
            r"largest 3\)", "VI", np.array([[1.0, 2.0], [2.0, 1.0]]), X=np.zeros((1, 2)),
            mean=np.zeros(2))
    # zero diagonal entry in the middle
    _raises(ValueError, r"Cholesky failed at column 1", "cov", np.diag([1.0, 0.0, 1.0]))


SEMIDEFINITE_VI = [np.diag([1.0, 1.0, 0.0]), np.diag([2.0, 0.0, 0.5]),
                   np.outer([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), np.zeros((3, 3)),
                   np.ones((3, 3))]


@pytest.mark.parametrize("VI", SEMIDEFINITE_VI,
                         ids=["diag110", "diag205", "rank1", "zero", "ones"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_semidefinite_vi_like_scipy(VI, dtype):
    """A singular positive semidefinite VI (a pseudo-inverse, a projection)
    is a valid quadratic form, which scipy's mahalanobis computes; so does
    fastlin (Cholesky refuses it: the factor comes from VI's eigenvectors,
    as cdist's).  Against scipy within 1e-12 (float64) / 1e-6 (float32) of
    the largest distance; the backward against finite differences (X, mean)
    and the formula sum_i a_i delta_i delta_i^T (VI: perturbing a singular
    VI can leave the semidefinite cone, so no finite differences there)."""
    rng = np.random.default_rng(46)
    X, mu = rng.standard_normal((7, 3)), rng.standard_normal(3)
    want = np.array([ssd.mahalanobis(x, mu, VI) for x in X])
    scale = max(1.0, np.abs(want).max())
    tol = 1e-12 if dtype == np.float64 else 1e-6
    got = fastlin.mahalanobis(X.astype(dtype), mu.astype(dtype), VI=VI.astype(dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale)
    np.testing.assert_allclose(fastlin.mahalanobis(X, mu, VI=VI, squared=True), want ** 2,
                               rtol=0, atol=1e-12 * scale ** 2)
    if dtype == np.float32:
        return
    g = rng.standard_normal(7)
    for squared in (False, True):
        gX, gmean, gVI = fastlin.mahalanobis_backward(g, X, mu, VI=VI, squared=squared)
        if not squared and not np.all(want > 0):
            assert not np.any(gX) and not np.any(gmean) and not np.any(gVI)
            continue

        def loss(x, m):
            return float(np.sum(g * call("VI", VI, x, m, squared)))

        assert_fd(gX, fd_grad(lambda x: loss(x, mu), X), "gX")
        assert_fd(gmean, fd_grad(lambda m: loss(X, m), mu), "gmean")
        delta = X - mu
        a = g if squared else g / (2 * want)
        np.testing.assert_allclose(gVI, (delta * a[:, None]).T @ delta, rtol=1e-12,
                                   atol=1e-12 * np.abs(gVI).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", [5, 16, 33])
def test_singular_cov_that_factors_is_rejected(dtype, d):
    """Sample covariances of fewer points than dimensions are singular, yet
    rounding often lets Cholesky finish with tiny positive pivots (23 of 200
    did before the check, giving distances ~1e8 without a sound).  Each must
    be refused, and the ridge the message proposes must then be accepted."""
    rng = np.random.default_rng(d)
    for _ in range(20):
        r = int(rng.integers(1, d))
        C = np.cov(rng.standard_normal((r + 1, d)).T).astype(dtype)
        x, mu = np.ones(d, dtype), np.zeros(d, dtype)
        with pytest.raises(ValueError, match="(singular to working precision|not positive "
                           "definite).*regularise it, e.g. cov \\+ ") as info:
            fastlin.mahalanobis(x, mu, C)
        lam = float(str(info.value).split("cov + ")[1].split(" ")[0])
        ridged = (C + lam * np.trace(C) / d * np.eye(d, dtype=dtype)).astype(dtype)
        assert np.isfinite(fastlin.mahalanobis(x, mu, ridged))


@pytest.mark.parametrize("d", [1, 2, 7, 32])
@pytest.mark.parametrize("cond", [1.0, 1e4, 1e10])
def test_small_factor_matches_lapack(rng, d, cond):
    """Up to dimension 32 the matrix is checked and factored in one C call
    (small calls); its factor must be LAPACK's to the Cholesky error bound
    (|dL| <= d eps kappa(L) |L| entrywise, generously), and its singularity
    measure t = 1 / trace(R^-1) NumPy's from an explicit inverse."""
    from scipy.linalg import cholesky
    from fastlin import _mahalanobis_api as api
    C = spd(rng, d, cond)["cov"]
    for kind in ("cov", "VI"):
        L = api._factor_small(C, kind)
        assert L is not None
        want = cholesky((C + C.T) / 2, lower=True)
        tol = 8 * d * EPS64 * np.sqrt(cond) * np.abs(want).max()
        np.testing.assert_allclose(L, want, rtol=0, atol=tol)
        assert np.all(np.triu(L, 1) == 0)
    s = 1 / np.sqrt(np.diag(C))
    R = C * s[:, None] * s[None, :]
    t_want = 1 / np.trace(np.linalg.inv(R))
    M = np.ascontiguousarray(C)
    status, t = api._k.small_factor(M, np.empty_like(M), 1e-6, True)
    assert status == 0
    assert t == pytest.approx(t_want, rel=64 * d * EPS64 * cond)


def test_small_factor_sends_the_rest_to_the_general_path():
    """Non-finite, asymmetric and indefinite matrices, and d above 32, are
    left to the general path (which names the problem); the public errors
    are covered by the tests above and below for d on both sides."""
    from fastlin import _mahalanobis_api as api
    ok = np.eye(3)
    assert api._factor_small(ok, "cov") is not None
    for bad in (np.diag([1.0, np.nan, 1.0]), np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]),
                np.diag([1.0, -1.0, 1.0]), np.diag([1.0, 0.0, 1.0])):
        assert api._factor_small(bad, "cov") is None
        assert api._factor_small(bad, "VI") is None
    with pytest.raises(ValueError, match="at most 32"):
        api._k.small_factor(np.eye(33), np.empty((33, 33)), 1e-6, True)


def test_singularity_check_ignores_the_scales_of_the_variables():
    """The check compares each pivot with its own variable's variance, not
    the largest: variables in very different units are not singular."""
    for dtype in (np.float64, np.float32):
        C = np.array([[1e6, 10.0, 0.0], [10.0, 1.0, 0.0], [0.0, 0.0, 1e-6]], dtype)
        got = fastlin.mahalanobis(np.ones(3, dtype), np.zeros(3, dtype), C, squared=True)
        want = np.ones(3) @ np.linalg.solve(C.astype(np.float64), np.ones(3))
        assert abs(got - want) <= 1e-5 * want


# A rank-4 sample covariance of 5 points in 5 dimensions, bit for bit as
# np.cov rounds it under OpenBLAS's Nehalem kernels: Cholesky gets through it
# under every kernel, its smallest pivot 1.8e-13 to 2.2e-13 (800 to 1000 eps)
# of that variable's variance, while its correlation matrix's smallest
# eigenvalue is ~1 eps.
RANK4_COV = np.array([[float.fromhex(v) for v in row] for row in [
    ["0x1.37a45b18c4424p+1", "-0x1.407c6547fe11ap-1", "-0x1.9e2aba995f5d6p-1",
     "-0x1.3b06e366e1d42p+0", "-0x1.e6634a93b208ap-2"],
    ["-0x1.407c6547fe11ap-1", "0x1.10d301b7535d5p+0", "0x1.f8090ebfcddfbp-1",
     "0x1.77cd71b8e8508p-3", "0x1.2713f25c3c9b7p+0"],
    ["-0x1.9e2aba995f5d6p-1", "0x1.f8090ebfcddfbp-1", "0x1.3a0c97750f717p+0",
     "0x1.4abbc69e94feep-3", "0x1.8794765d6513ep+0"],
    ["-0x1.3b06e366e1d42p+0", "0x1.77cd71b8e8508p-3", "0x1.4abbc69e94feep-3",
     "0x1.67aa8ce9ba986p-1", "-0x1.14a4b0a4e2430p-3"],
    ["-0x1.e6634a93b208ap-2", "0x1.2713f25c3c9b7p+0", "0x1.8794765d6513ep+0",
     "-0x1.14a4b0a4e2430p-3", "0x1.0df64b22af62ep+1"]]])


def test_singular_cov_with_a_large_pivot_is_rejected():
    """A singular covariance whose Cholesky pivots are all far above eps (the
    rounding reaching the dependent column is amplified by the near
    collinearity of the earlier ones) is refused from its correlation
    matrix's smallest eigenvalue, forward and backward; the ridge the
    message proposes is accepted.  (Rounded to float32 it no longer factors:
    the float32 cases are in test_singular_cov_refused_under_every_blas_kernel.)"""
    C = RANK4_COV
    x, mu = np.ones(5), np.zeros(5)
    # what the check is for: Cholesky gets through, with no small pivot
    L = np.linalg.cholesky(C)
    assert np.min(np.diag(L) ** 2 / np.diag(C)) > 100 * EPS64
    match = (r"cov is singular to working precision \(the smallest eigenvalue of its "
             r"correlation matrix is at most [-+.e\d]+, not above 32 eps = [-+.e\d]+; "
             r"variable \d is the one most nearly a combination of the others, all but a "
             r"share [-+.e\d]+ of its variance explained by them\); regularise it, e.g. "
             r"cov \+ ")
    with pytest.raises(ValueError, match=match) as info:
        fastlin.mahalanobis(x, mu, C)
    with pytest.raises(ValueError, match=match):
        fastlin.mahalanobis_backward(np.ones(()), x, mu, C)
    lam = float(str(info.value).split("cov + ")[1].split(" ")[0])
    ridged = C + lam * np.trace(C) / 5 * np.eye(5)
    assert np.isfinite(fastlin.mahalanobis(x, mu, ridged))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_where_the_singularity_line_sits(dtype):
    """Two variables of correlation rho = 1 - k eps, the others independent,
    on scales 2^-20 .. 2^20 (exact in either dtype, so the correlation
    matrix's smallest eigenvalue is 1 - rho = k eps to the last bit):
    refused at k = 8 (a nonsingular matrix, but below the line of 32 eps),
    accepted at k = 64, whatever the scales: with one nearly null direction,
    1 / trace(R^-1) is that eigenvalue times ~(1 + rho) / 2 ~ 1."""
    e = eps(dtype)
    d = 6
    sigma = 2.0 ** np.array([20, -20, 3, 0, -7, 11])
    for k, refused in ((8, True), (64, False)):
        R = np.eye(d)
        R[1, 4] = R[4, 1] = 1 - k * e
        C = (sigma[:, None] * R * sigma[None, :]).astype(dtype)
        assert np.all(C.astype(np.float64) == sigma[:, None] * R * sigma[None, :])
        x, mu = np.ones(d, dtype), np.zeros(d, dtype)
        if refused:
            with pytest.raises(ValueError, match=r"singular to working precision.*variable "
                               r"[14] is the one most nearly"):
                fastlin.mahalanobis(x, mu, C)
        else:
            got = fastlin.mahalanobis(x, mu, C, squared=True)
            assert np.isfinite(got) and got > 0


# Covariances singular by construction, whose rounding by np.cov, the
# product and potrf differs with the BLAS kernels: each must be refused, in
# float64 and float32, and the ridge the message proposes accepted.
# singular_report() gives the BLAS kernels that ran, how many cases potrf
# refused and how many the singularity check, and the cases that went
# through or whose ridge was refused.  Run in the test's process and, as a
# script, in a child per OpenBLAS kernel type (OPENBLAS_CORETYPE is read
# once, when the library loads).
SINGULAR_BY_CONSTRUCTION = textwrap.dedent(r"""
    import json
    import numpy as np
    import threadpoolctl
    import fastlin

    def singular_cases():
        rng = np.random.default_rng(5)
        for d in (2, 3, 5, 8, 16, 33):
            for _ in range(8):
                r = int(rng.integers(1, d))       # r + 1 <= d points: rank r
                X = rng.standard_normal((r + 1, d))
                yield f"np.cov of {r + 1} points, d={d}", np.cov(X.T)
                s = 10.0 ** rng.uniform(-6, 6, d)
                yield (f"np.cov of {r + 1} points on scales 1e-6..1e6, d={d}",
                       np.cov((X * s + 10 * s).T))
                A = rng.standard_normal((d, r)) * 10.0 ** rng.uniform(-3, 3, (d, 1))
                yield f"A A^T of rank {r}, d={d}", A @ A.T
                X32 = X.astype(np.float32)
                yield f"float32 np.cov of {r + 1} points, d={d}", np.cov(X32.T, dtype=np.float32)
            X = rng.standard_normal((200, d))
            k = int(rng.integers(0, d - 1))
            for what, col in (("a duplicate column", X[:, k]),
                              ("a scaled copy of a column", -3.5 * X[:, k]),
                              ("a linear combination", X[:, :-1] @ rng.standard_normal(d - 1))):
                Y = X.copy()
                Y[:, -1] = col
                yield f"np.cov of 200 points with {what}, d={d}", np.cov(Y.T)
            yield (f"np.cov of one-hot categories, d={d}",
                   np.cov(np.eye(d)[rng.integers(0, d, 200)].T))
            yield (f"np.cov of proportions summing to 1, d={d}",
                   np.cov(rng.dirichlet(np.ones(d), 200).T))

    def singular_report():
        out = {"kernels": sorted({i["architecture"] for i in threadpoolctl.threadpool_info()
                                  if i["user_api"] == "blas"}),
               "potrf": 0, "check": 0, "accepted": [], "ridge_refused": []}
        for what, C in singular_cases():
            for dt in ((np.float64, np.float32) if C.dtype == np.float64 else (C.dtype,)):
                M = C.astype(dt)
                d = M.shape[0]
                x, mu = np.ones(d, dt), np.zeros(d, dt)
                try:
                    dist = fastlin.mahalanobis(x, mu, M)
                except ValueError as e:
                    msg = str(e)
                    out["check" if "singular to working precision" in msg else "potrf"] += 1
                    lam = float(msg.split("cov + ")[1].split(" ")[0])
                    ridged = (M + lam * np.trace(M) / d * np.eye(d)).astype(dt)
                    try:
                        fastlin.mahalanobis(x, mu, ridged)
                    except ValueError as e:
                        out["ridge_refused"].append(f"{what} ({np.dtype(dt)}): {e}")
                else:
                    out["accepted"].append(f"{what} ({np.dtype(dt)}): distance {dist:.3g}")
        return out
""")

# OpenBLAS kernel types that a DYNAMIC_ARCH build (numpy's and scipy's
# wheels) can be made to use; one this CPU cannot run dies of SIGILL
CORETYPES = {"x86_64": ("Prescott", "Nehalem", "Sandybridge", "Haswell", "SkylakeX"),
             "aarch64": ("ARMV8", "CORTEXA57", "NEOVERSEN1", "NEOVERSEV1", "NEOVERSEN2")}


def _check_singular_report(res, what):
    assert not res["accepted"], f"{what}: accepted " + "; ".join(res["accepted"][:5])
    assert not res["ridge_refused"], f"{what}: " + "; ".join(res["ridge_refused"][:3])
    assert res["check"] > 0, f"{what}: no case got through potrf to the singularity check"


def test_singular_cov_refused_under_every_blas_kernel(tmp_path):
    """Covariances singular by construction (np.cov of fewer points than
    dimensions, also on very different scales; A A^T of low rank; duplicate,
    scaled and linearly dependent columns, one-hot categories and
    proportions among many points) are refused, here and under each
    OpenBLAS kernel type this CPU runs, the rounding of np.cov and potrf
    differing between them; under each, some get through potrf and are
    refused by the singularity check."""
    pytest.importorskip("threadpoolctl")
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    procs = []
    for coretype in CORETYPES.get(machine, ()):
        env = dict(os.environ, OPENBLAS_CORETYPE=coretype,
                   OPENBLAS_NUM_THREADS="1")     # the children run side by side
        # cwd outside the checkout: `python -c` puts cwd first on sys.path,
        # and the checkout's fastlin/ is the uncompiled source
        procs.append((coretype, subprocess.Popen(
            [sys.executable, "-c", SINGULAR_BY_CONSTRUCTION
             + "\nprint(json.dumps(singular_report()))\n"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)))
    here = {}
    exec(SINGULAR_BY_CONSTRUCTION, here)
    res = here["singular_report"]()
    _check_singular_report(res, f"this process (kernels {res['kernels']})")
    for coretype, proc in procs:
        out, err = proc.communicate(timeout=300)
        if proc.returncode == -signal.SIGILL:
            continue                    # a kernel for instructions this CPU lacks
        assert proc.returncode == 0, f"OPENBLAS_CORETYPE={coretype}: {err[-3000:]}"
        res = json.loads(out.strip().splitlines()[-1])
        _check_singular_report(res, f"OPENBLAS_CORETYPE={coretype} (kernels {res['kernels']})")


def test_vi_symmetric_to_rounding_is_accepted_and_averaged():
    """A precision matrix symmetric only to rounding -- np.linalg.inv(cov)
    is off by ~cond eps, here 1e-8 relative by construction (above the 1e-10
    once allowed) -- is accepted, and computed with its symmetric part, as
    scipy's quadratic form does; 1e-4 relative is refused."""
    rng = np.random.default_rng(14)
    M = rng.standard_normal((8, 8))
    S = M @ M.T + 8 * np.eye(8)
    E = rng.standard_normal((8, 8))
    E = (E - E.T) * (1e-8 * np.abs(S).max() / np.abs(E - E.T).max())   # antisymmetric
    VI = S + E
    assert np.abs(VI - VI.T).max() > 1e-9 * np.abs(VI).max()
    X, mu = rng.standard_normal((10, 8)), rng.standard_normal(8)
    want = [ssd.mahalanobis(x, mu, VI) for x in X]
    np.testing.assert_allclose(fastlin.mahalanobis(X, mu, VI=VI), want, rtol=1e-12)
    np.testing.assert_allclose(fastlin.cdist(X, mu[None], "mahalanobis", VI=VI)[:, 0], want,
                               rtol=1e-12)
    with pytest.raises(ValueError, match="VI must be symmetric"):
        fastlin.mahalanobis(X, mu, VI=S + E * 1e4)
    # float32: rounding-level asymmetry of float32 (64 eps32) passes in both
    V32 = VI.astype(np.float32)
    V32[0, 1] *= 1 + 3e-6
    fastlin.mahalanobis(X.astype(np.float32), mu.astype(np.float32), VI=V32)
    fastlin.cdist(X.astype(np.float32), mu[None].astype(np.float32), "mahalanobis", VI=V32)


def test_nearly_singular_vi_is_accepted():
    """A precision matrix with a (numerically) null direction is a valid
    quadratic form -- that direction costs nothing -- and matches scipy."""
    v = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    VI = np.eye(3) - np.outer(v, v) + 1e-15 * np.eye(3)
    x, mu = np.array([0.5, -1.0, 2.0]), np.zeros(3)
    np.testing.assert_allclose(fastlin.mahalanobis(x, mu, VI=VI),
                               ssd.mahalanobis(x, mu, VI), rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_matrix(kind, bad):
    M = np.eye(3)
    M[1, 1] = bad
    _raises(ValueError, f"{kind} must be finite", kind, M)
    M = np.eye(3)
    M[2, 0] = bad
    if kind != "cholesky":
        M[0, 2] = bad
    _raises(ValueError, f"{kind} must be finite", kind, M)


def test_cholesky_must_be_lower_triangular(rng):
    L = spd(rng, 3)["cholesky"]
    _raises(ValueError, "cholesky must be lower triangular", "cholesky", L.T.copy())
    U = L.copy()
    U[0, 2] = 1e-300   # any non-zero strict upper entry
    _raises(ValueError, "cholesky must be lower triangular", "cholesky", U)


@pytest.mark.parametrize("v", [0.0, -1.0, -1e-300])
def test_cholesky_must_have_positive_diagonal(v):
    L = np.eye(3)
    L[1, 0] = 0.5
    L[1, 1] = v
    _raises(ValueError, r"cholesky must have a positive diagonal: L\[1, 1\] is", "cholesky", L)
    if v == 0:
        # a zero: cov = L L^T is singular, a ridge is the fix
        _raises(ValueError, r"L\[1, 1\] is 0, so cov = L L\^T is singular; regularise it",
                "cholesky", L)
    else:
        # a negative entry: L L^T may be a fine covariance; the fix is the
        # sign of that column, not a ridge (the message said "regularise")
        _raises(ValueError, r"negating the columns with a negative diagonal entry", "cholesky", L)
        if v > -1e-100:
            return          # L L^T is singular to rounding: no cov to compare with
        Lf = L * np.sign(np.diag(L))
        X, mu = np.ones((2, 3)), np.zeros(3)
        np.testing.assert_allclose(fastlin.mahalanobis(X, mu, cholesky=Lf),
                                   fastlin.mahalanobis(X, mu, cov=L @ L.T), rtol=1e-12)


@pytest.mark.parametrize("which", ["X", "mean", "matrix"])
@pytest.mark.parametrize("kind", KINDS)
def test_complex_raises_type_error(which, kind):
    X = np.zeros((2, 3))
    mean = np.zeros(3)
    M = np.eye(3)
    name = {"X": "X", "mean": "mean", "matrix": kind}[which]
    if which == "X":
        X = X.astype(complex)
    elif which == "mean":
        mean = mean.astype(complex)
    else:
        M = M.astype(complex)
    _raises(TypeError, f"{name} must be real, got complex", kind, M, X=X, mean=mean)


def test_backward_grad_shape(rng):
    with pytest.raises(ValueError, match=r"grad must have the shape of the distances \(2,\)"):
        fastlin.mahalanobis_backward(np.ones(3), np.zeros((2, 3)), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"grad must have the shape.*\(2, 4\), got \(8,\)"):
        fastlin.mahalanobis_backward(np.ones(8), np.zeros((2, 4, 3)), np.zeros(3),
                                     VI=np.eye(3))


def test_float32_cov_symmetric_to_its_rounding_is_accepted(rng):
    B = rng.standard_normal((100, 4)).astype(F32)
    w = rng.random(100).astype(F32)
    cov = (B.T * w) @ B / w.sum()          # float32 weighted covariance
    asym = np.abs(cov - cov.T).max()
    assert 0 < asym <= 2 * EPS32 * np.abs(cov).max()
    fastlin.mahalanobis(B, B.mean(0), cov)


# ------------------------------------------------------------------ backward

def fd_grad(loss, x):
    """Central-difference gradient of the scalar loss at float64 x (all entries)."""
    x = np.asarray(x, F64)
    out = np.empty(x.shape)
    for j in range(x.size):
        h = H * max(1.0, abs(x.flat[j]))
        xp, xm = x.copy(), x.copy()
        xp.flat[j] += h
        xm.flat[j] -= h
        out.flat[j] = (loss(xp) - loss(xm)) / (xp.flat[j] - xm.flat[j])
    return out


def fd_grad_matrix(loss, M, kind):
    """Directional derivatives along the perturbations a matrix kind admits:
    E_ij + E_ji (i <= j) for cov / VI, E_ij (i >= j) for cholesky."""
    d = M.shape[0]
    out = {}
    for i in range(d):
        for j in range(d):
            if (kind == "cholesky" and i < j) or (kind != "cholesky" and i > j):
                continue
            E = np.zeros((d, d))
            E[i, j] = 1.0
            if kind != "cholesky":
                E = E + E.T
            h = H * max(1.0, abs(M[i, j]))
            out[i, j] = (loss(M + h * E) - loss(M - h * E)) / (2 * h)
    return out


def assert_fd(got, want, what):
    scale = max(float(np.max(np.abs(want))), np.finfo(float).tiny)
    np.testing.assert_allclose(got, want, rtol=FD_TOL, atol=FD_TOL * scale, err_msg=what)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("lead", [(4,), (2, 3)])
def test_backward_matches_finite_differences(rng, kind, squared, lead):
    d = 3
    mats = spd(rng, d, 8.0)
    M = mats[kind]
    X = rng.standard_normal(lead + (d,)) * 1.5
    mean = rng.standard_normal(d)
    g = rng.standard_normal(lead)

    def L_X(x):
        return float(np.sum(g * call(kind, M, x, mean, squared)))

    def L_mean(m):
        return float(np.sum(g * call(kind, M, X, m, squared)))

    def L_M(m):
        return float(np.sum(g * call(kind, m, X, mean, squared)))

    gX, gmean, gM = call_bwd(kind, M, g, X, mean, squared)
    assert gX.shape == X.shape and gmean.shape == (d,) and gM.shape == (d, d)
    assert_fd(gX, fd_grad(L_X, X), "gX")
    assert_fd(gmean, fd_grad(L_mean, mean), "gmean")
    fd = fd_grad_matrix(L_M, M, kind)
    keys = sorted(fd)
    want = np.array([fd[k] for k in keys])
    if kind == "cholesky":
        got = np.array([gM[k] for k in keys])
        np.testing.assert_array_equal(np.triu(gM, 1), 0)
    else:
        # the derivative along E_ij + E_ji is gM_ij + gM_ji
        got = np.array([gM[i, j] + gM[j, i] for i, j in keys])
        np.testing.assert_array_equal(gM, gM.T)
    assert_fd(got, want, "gM")


@pytest.mark.parametrize("kind", KINDS)
def test_gmean_is_minus_the_sum_of_gX(rng, kind):
    mats = spd(rng, 5, 10.0)
    X = rng.standard_normal((50, 5))
    mean = rng.standard_normal(5)
    g = rng.standard_normal(50)
    gX, gmean, _ = call_bwd(kind, mats[kind], g, X, mean)
    np.testing.assert_allclose(gmean, -gX.sum(axis=0), rtol=0,
                               atol=50 * EPS64 * np.abs(gX).sum(axis=0).max())


@pytest.mark.parametrize("kind", ["cov", "VI"])
def test_gM_symmetric(rng, kind):
    mats = spd(rng, 8, 1e3)
    X = rng.standard_normal((200, 8))
    mean = rng.standard_normal(8)
    g = rng.standard_normal(200)
    for dt in (F64, F32):
        for sq in (False, True):
            gM = call_bwd(kind, mats[kind].astype(dt), g.astype(dt), X.astype(dt),
                          mean.astype(dt), sq)[2]
            assert gM.dtype == dt
            np.testing.assert_array_equal(gM, gM.T)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_distance_gives_zero_subgradient(rng, kind):
    d = 4
    mats = spd(rng, d, 10.0)
    mean = rng.standard_normal(d)
    X = rng.standard_normal((5, d))
    X[2] = mean
    g = rng.standard_normal(5)
    gX, gmean, gM = call_bwd(kind, mats[kind], g, X, mean, squared=False)
    assert np.all(np.isfinite(gX)) and np.all(np.isfinite(gmean)) and np.all(np.isfinite(gM))
    np.testing.assert_array_equal(gX[2], 0)
    # the row at the mean contributes nothing: drop it and nothing else changes
    keep = [0, 1, 3, 4]
    gX2, gmean2, gM2 = call_bwd(kind, mats[kind], g[keep], X[keep], mean, squared=False)
    np.testing.assert_array_equal(gX[keep], gX2)
    np.testing.assert_allclose(gmean, gmean2, rtol=8 * EPS64,
                               atol=8 * EPS64 * np.abs(gX).sum(0).max())
    np.testing.assert_allclose(gM, gM2, rtol=8 * EPS64, atol=8 * EPS64 * np.abs(gM).max())
    # all rows at the mean: all zero
    Z = np.tile(mean, (3, 1))
    for a in call_bwd(kind, mats[kind], np.ones(3), Z, mean):
        np.testing.assert_array_equal(a, 0)
    # squared: differentiable at 0, gradient exactly 0 there too
    gXs = call_bwd(kind, mats[kind], g, X, mean, squared=True)[0]
    np.testing.assert_array_equal(gXs[2], 0)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip(
        "torch", reason="torch is not installed: autograd comparisons skipped")


def torch_dist(torch, kind, X, mean, M, squared):
    delta = X - mean
    if kind == "VI":
        d2 = ((delta @ M) * delta).sum(-1)
    elif kind == "cov":
        w = torch.linalg.solve(M, delta.T).T
        d2 = (delta * w).sum(-1)
    else:
        z = torch.linalg.solve_triangular(M, delta.T, upper=False).T
        d2 = (z * z).sum(-1)
    return d2 if squared else torch.sqrt(d2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("d, cond", [(5, 10.0), (16, 1e3)])
def test_backward_matches_torch(torch, rng, kind, squared, d, cond):
    mats = spd(rng, d, cond)
    M = mats[kind]
    X = rng.standard_normal((300, d))
    mean = rng.standard_normal(d)
    g = rng.standard_normal(300)
    tX, tm, tM = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                  for a in (X, mean, M))
    y = torch_dist(torch, kind, tX, tm, tM, squared)
    y.backward(torch.tensor(g))
    k = kappa(mats)
    # both sides carry the error bound of the kernel: twice it
    np.testing.assert_allclose(call(kind, M, X, mean, squared), y.detach().numpy(),
                               rtol=2 * dist_rtol(F64, d, k))
    gX, gmean, gM = call_bwd(kind, M, g, X, mean, squared)
    want_M = tM.grad.numpy()
    if kind == "cholesky":
        np.testing.assert_array_equal(np.triu(gM, 1), 0)
        want_M = np.tril(want_M)
    tols = bwd_tols(F64, d, len(X), k, bwd_scales(kind, M, g, X, mean, squared), c=8.0)
    for got, want, tol, what in zip((gX, gmean, gM),
                                    (tX.grad.numpy(), tm.grad.numpy(), want_M),
                                    tols, ("gX", "gmean", "gM")):
        err = np.abs(got - want)
        assert np.all(err <= tol), (what, float(np.max(err / tol)))


def bwd_scales(kind, M, g, X, mean, squared):
    """Normwise magnitudes of the terms each backward output adds up (float64).

    The solved rows w_i = cov^-1 delta_i (or VI delta_i) and z_i = L^-1 delta_i
    carry errors relative to their *norm*, not to each entry, so the bounds use
    ``|a_i| |w_i|`` for the row of gX, their sum for gmean and
    ``sum_i |a_i| |w_i| |w_i|`` (|delta_i|^2 for VI, 2 |w_i| |z_i| for
    cholesky) for every entry of gM."""
    X = np.asarray(X, F64).reshape(-1, len(mean))
    g = np.asarray(g, F64).reshape(-1)
    mean = np.asarray(mean, F64)
    M = np.asarray(M, F64)
    delta = X - mean
    if kind == "VI":
        W = delta @ M
        Z = delta
        d2 = np.einsum("ij,ij->i", delta, W)
    else:
        L = M if kind == "cholesky" else np.linalg.cholesky(M)
        Z = np.linalg.solve(L, delta.T).T
        W = np.linalg.solve(L.T, Z.T).T
        d2 = np.einsum("ij,ij->i", Z, Z)
    a = np.abs(g) if squared else np.abs(g) / (2 * np.sqrt(d2))
    nw = np.linalg.norm(W, axis=1)
    nz = np.linalg.norm(Z, axis=1)
    sX = np.broadcast_to((2 * a * nw)[:, None], X.shape)
    smean = np.full(len(mean), np.sum(2 * a * nw))
    if kind == "VI":
        sM = np.sum(a * nz * nz)
    elif kind == "cov":
        sM = np.sum(a * nw * nw)
    else:
        sM = np.sum(2 * a * nw * nz)
    return sX, smean, np.full(M.shape, sM)


def bwd_tols(dt, d, n, k, scales, c=4.0):
    """Per-entry bounds for (gX, gmean, gM): the solved vectors are right to
    (d + 1) eps kappa relative (the factor and the solves); gmean and gM also
    sum n rows, adding n eps of the magnitudes summed."""
    sX, smean, sM = scales
    return (c * eps(dt) * (d + 1) * k * sX,
            c * eps(dt) * ((d + 1) * k + n) * smean,
            c * eps(dt) * ((d + 1) * k + n) * sM)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("squared", [False, True])
def test_float32_backward_matches_float64(rng, kind, squared):
    d, n = 6, 200
    mats32 = as_dtype(spd(rng, d, 30.0), F32)
    M32 = mats32[kind]
    X = rng.standard_normal((n, d)).astype(F32)
    mean = rng.standard_normal(d).astype(F32)
    g = rng.standard_normal(n).astype(F32)
    got = call_bwd(kind, M32, g, X, mean, squared)
    want = call_bwd(kind, M32.astype(F64), g.astype(F64), X.astype(F64),
                    mean.astype(F64), squared)
    # float32 solves and float32 sums of up to n terms (see bwd_tol)
    k = kappa(mats32)
    tols = bwd_tols(F32, d, n, k, bwd_scales(kind, M32, g, X, mean, squared))
    for a, b, tol, what in zip(got, want, tols, ("gX", "gmean", "gM")):
        assert a.dtype == F32, what
        err = np.abs(a.astype(F64) - b)
        assert np.all(err <= tol), (what, float(np.max(err / tol)))


@pytest.mark.parametrize("backend", ["own", "blas"])
@pytest.mark.parametrize("kind", ["cov", "cholesky"])
@pytest.mark.parametrize("d", [33, 64])
def test_backward_large_d_gemm_path(kind, d, backend):
    """Above d = 32 the backward writes the rows of w (and z) and forms the
    d x d gradient with blocked GEMMs: same gradients as the closed form, and
    bitwise the same for 1 and 2 threads, with fastlin's own GEMM and
    with scipy's BLAS (tests/test_gemm.py)."""
    from fastlin import _simd
    _mk = _simd.kernels("_mahalanobis")
    own_gemm_enabled = _simd.kernels("_distance").own_gemm_enabled
    if backend == "own" and not own_gemm_enabled():
        pytest.skip("no AVX-512 here: the GEMMs always use BLAS")
    old = _mk._use_own_gemm(backend == "own")
    try:
        _large_d_checks(kind, d)
    finally:
        _mk._use_own_gemm(old)


def _large_d_checks(kind, d):
    rng = np.random.default_rng(d)
    n = 5000
    X = rng.standard_normal((n, d))
    mu = rng.standard_normal(d)
    M = rng.standard_normal((d, d))
    cov = M @ M.T / d + np.eye(d)
    L = np.linalg.cholesky(cov)
    g = rng.standard_normal(n)
    mat = {"cov": cov, "cholesky": L}[kind]
    gX, gmu, gM = fastlin.mahalanobis_backward(g, X, mu, **{kind: mat})
    delta = X - mu
    Z = np.linalg.solve(L, delta.T).T
    W = np.linalg.solve(L.T, Z.T).T
    dist = np.sqrt(np.einsum("ij,ij->i", Z, Z))
    a = g / (2 * dist)
    want_gX = (2 * a)[:, None] * W
    want_gM = -(W * a[:, None]).T @ W if kind == "cov" else np.tril(-2 * (W * a[:, None]).T @ Z)
    scale = np.abs(want_gX).max()
    np.testing.assert_allclose(gX, want_gX, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(gmu, -want_gX.sum(axis=0), rtol=0, atol=1e-9 * n * scale)
    np.testing.assert_allclose(gM, want_gM, rtol=0, atol=1e-10 * np.abs(want_gM).max() * d)
    with fastlin.threads(1):
        one = fastlin.mahalanobis_backward(g, X, mu, **{kind: mat})
    with fastlin.threads(2):
        two = fastlin.mahalanobis_backward(g, X, mu, **{kind: mat})
    for u, v in zip(one, two):
        np.testing.assert_array_equal(u, v)


def test_vi_backward_gmean_sums_in_double():
    """float32, VI given: gmean = -sum_i gX_i over 20000 rows was summed in
    float32 (5e-6 relative off); in double as the cov / cholesky path, it is
    within a few eps32 of a float64 twin on the same float32 values (0.6
    eps32 measured; bound 8)."""
    rng = np.random.default_rng(3)
    d, n = 6, 20000
    A = rng.standard_normal((d, d))
    VI = (A @ A.T + d * np.eye(d)).astype(np.float32)
    X = rng.standard_normal((n, d)).astype(np.float32)
    mu = rng.standard_normal(d).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    _, gm, _ = fastlin.mahalanobis_backward(g, X, mu, VI=VI)
    delta = X.astype(np.float64) - mu.astype(np.float64)
    W = delta @ VI.astype(np.float64)
    a = g / (2 * np.sqrt(np.einsum("ij,ij->i", delta, W)))
    want = -(2 * a[:, None] * W).sum(axis=0)
    assert gm.dtype == np.float32
    assert float(np.max(np.abs(gm - want)) / np.max(np.abs(want))) < 8 * np.finfo(np.float32).eps


def test_semidefinite_tolerance_is_the_coarser_of_the_two_dtypes():
    """The float32 rank-deficient VI of the test below with float64 points:
    float32's rounding in VI still sets the tolerance (cdist used the
    working dtype's, float64, and refused it; mahalanobis accepted it)."""
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    VI = ((Q * np.array([3.0, 2.0, 1.0, 0.5, 0.0, 0.0])) @ Q.T).astype(np.float32)
    VI = (VI + VI.T) / 2
    X = rng.standard_normal((5, 6))
    want = [ssd.mahalanobis(x, X[0], VI.astype(np.float64)) for x in X]
    np.testing.assert_allclose(fastlin.mahalanobis(X, X[0], VI=VI), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fastlin.cdist(X, X[:1], "mahalanobis", VI=VI)[:, 0], want,
                               rtol=0, atol=1e-6)


def test_float32_semidefinite_vi_rounding_is_not_indefinite():
    """A rank-4 VI of dimension 6 stored in float32: its zero eigenvalues
    come out at ~-2e-9 (float32 rounding of the entries), below float64's
    -n eps of the largest but far inside float32's; it is semidefinite to
    the precision it is given in and is accepted, by mahalanobis and cdist,
    with distances as scipy's on the same float32 matrix."""
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    VI = ((Q * np.array([3.0, 2.0, 1.0, 0.5, 0.0, 0.0])) @ Q.T).astype(np.float32)
    VI = (VI + VI.T) / 2
    assert np.linalg.eigvalsh(VI.astype(np.float64)).min() < -6 * EPS64 * 3
    X = rng.standard_normal((5, 6)).astype(np.float32)
    want = [ssd.mahalanobis(x, X[0], VI) for x in X]
    np.testing.assert_allclose(fastlin.mahalanobis(X, X[0], VI=VI), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fastlin.cdist(X, X[:1], "mahalanobis", VI=VI)[:, 0], want,
                               rtol=0, atol=1e-5)
