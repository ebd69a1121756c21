"""max_margin_loss and max_margin_loss_backward (hinge ranking loss).

``loss[..., b, j] = max(0, margin - pos[..., b] + neg[..., b, j])``

Judges: the NumPy formula ``np.maximum(0, margin - pos[..., None] + neg)``
(in the input dtype, and in longdouble for the sums), central finite
differences and torch's ``F.margin_ranking_loss(pos_expanded, neg, ones,
margin, reduction)``.

Tolerances (error bounds)
-------------------------
* Each loss element takes at most three roundings in the result dtype
  (``margin - pos``, ``+ neg``, and for float32 NumPy's rounding of a Python
  float margin to float32 first), each at most ``eps/2`` of a value bounded
  by ``|margin| + |pos| + |neg|``: ``2 eps (|margin| + |pos| + |neg|)``.
* 'sum' accumulates in float64: the per-element bounds summed, plus
  ``n eps64 sum(loss)`` for the accumulation, plus ``eps |total|`` for the
  final rounding to the result dtype.  'mean' divides the same by the count.
* Backward: ``gneg = grad [v > 0]`` is exact wherever v is not within
  rounding of 0 (the data are built so); ``gpos = -sum_j gneg`` is summed in
  float64: ``N eps64 sum|gneg| + eps |gpos|``.
* Finite differences: the loss is piecewise linear and no v is within 1e-2
  of the kink, so a central difference with h = 1e-6 is exact up to rounding
  (``eps |L| / h``, ~1e-8 here): 1e-6 of the largest entry, as in
  test_gradients.py.
"""
import numpy as np
import pytest

import fastlin

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
EPS64 = float(np.finfo(np.float64).eps)
REDUCTIONS = ("sum", "mean", "none")
H = 1e-6
FD_TOL = 1e-6


def eps(dt):
    return float(np.finfo(dt).eps)


def formula(pos, neg, margin, reduction, dtype=None):
    """The NumPy formula, elementwise in `dtype` (default: the inputs'), the
    reductions in longdouble."""
    pos = np.asarray(pos)
    neg = np.asarray(neg)
    if dtype is not None:
        pos, neg = pos.astype(dtype), neg.astype(dtype)
    if pos.shape == neg.shape[:-1] + (1,):
        pos = pos[..., 0]
    with np.errstate(invalid="ignore"):
        loss = np.maximum(0, margin - pos[..., None] + neg)
    if reduction == "none":
        return loss
    s = np.sum(loss.astype(np.longdouble))
    if reduction == "mean":
        s = s / loss.size if loss.size else np.longdouble(np.nan)
    return s


def elem_bound(pos, neg, margin, dt):
    pos = np.asarray(pos, F64)
    neg = np.asarray(neg, F64)
    if pos.shape == neg.shape[:-1] + (1,):
        pos = pos[..., 0]
    return 2 * eps(dt) * (abs(margin) + np.abs(pos)[..., None] + np.abs(neg))


def loss_tol(pos, neg, margin, reduction, dt, want):
    e = elem_bound(pos, neg, margin, dt)
    if reduction == "none":
        return e
    n = e.size
    total = np.sum(e) + n * EPS64 * float(np.sum(np.abs(formula(pos, neg, margin, "none",
                                                                  F64))))
    if reduction == "mean":
        total = total / n
    return total + eps(dt) * abs(float(want))


def away_from_kink(rng, lead, n, margin, gap=1e-2, scale=2.0):
    """pos (lead), neg (lead + (n,)) with every v = margin - pos + neg at
    least `gap` away from 0, about half of them positive."""
    pos = rng.standard_normal(lead) * scale
    mag = rng.uniform(gap * 2, 2.0, lead + (n,))
    v = np.where(rng.random(lead + (n,)) < 0.5, mag, -mag)
    neg = v - margin + pos[..., None]
    vv = margin - pos[..., None] + neg
    assert np.all(np.abs(vv) >= gap)
    return pos, neg


def call(pos, neg, margin, reduction):
    return fastlin.max_margin_loss(pos, neg, margin=margin, reduction=reduction)


def call_bwd(g, pos, neg, margin, reduction):
    return fastlin.max_margin_loss_backward(g, pos, neg, margin=margin, reduction=reduction)


def grad_for(rng, reduction, shape):
    return 1.7 if reduction != "none" else rng.standard_normal(shape)


def assert_within(got, want, tol, what=""):
    got = np.asarray(got, F64)
    want = np.asarray(want, F64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want)
    ok = err <= tol
    assert np.all(ok), (what, float(np.max(err - tol)))


# ------------------------------------------------------------------ forward

@pytest.mark.parametrize("dt", [F64, F32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [1.0, 0.0, -0.5, 2.5, 0.1])
@pytest.mark.parametrize("B, N", [(37, 5), (1, 1), (200, 33), (3, 100)])
def test_matches_formula(rng, dt, reduction, margin, B, N):
    pos = (rng.standard_normal(B) * 2).astype(dt)
    neg = (rng.standard_normal((B, N)) * 2).astype(dt)
    got = call(pos, neg, margin, reduction)
    want = formula(pos, neg, margin, reduction)
    if reduction == "none":
        assert got.dtype == dt and got.shape == (B, N)
        # the formula in the same dtype, and exact (in float64)
        assert_within(got, want, loss_tol(pos, neg, margin, "none", dt, want), "vs formula")
    else:
        assert np.ndim(got) == 0 and type(got) is dt.type
    exact = formula(pos, neg, margin, reduction, F64)
    assert_within(got, exact, loss_tol(pos, neg, margin, reduction, dt, exact), "vs exact")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_pos_as_column(rng, reduction):
    pos = rng.standard_normal(20)
    neg = rng.standard_normal((20, 7))
    a = call(pos, neg, 1.0, reduction)
    b = call(pos[:, None], neg, 1.0, reduction)
    np.testing.assert_array_equal(a, b)
    g = grad_for(rng, reduction, neg.shape)
    gpos_a, gneg_a = call_bwd(g, pos, neg, 1.0, reduction)
    gpos_b, gneg_b = call_bwd(g, pos[:, None], neg, 1.0, reduction)
    assert gpos_a.shape == (20,) and gpos_b.shape == (20, 1)
    np.testing.assert_array_equal(gpos_b[:, 0], gpos_a)
    np.testing.assert_array_equal(gneg_b, gneg_a)


@pytest.mark.parametrize("lead", [(2, 3), (4,), (2, 1, 3), (1, 1)])
@pytest.mark.parametrize("column", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_batched_leading_shapes(rng, lead, column, reduction):
    B, N = 5, 6
    pos = rng.standard_normal(lead + (B,))
    neg = rng.standard_normal(lead + (B, N))
    p = pos[..., None] if column else pos
    got = call(p, neg, 0.5, reduction)
    exact = formula(pos, neg, 0.5, reduction, F64)
    assert_within(got, exact, loss_tol(pos, neg, 0.5, reduction, F64, exact))
    # the leading axes are rows like any other: bitwise the flattened result
    flat = call(pos.reshape(-1), neg.reshape(-1, N), 0.5, reduction)
    np.testing.assert_array_equal(np.reshape(got, np.shape(flat)), flat)
    g = grad_for(rng, reduction, neg.shape)
    gpos, gneg = call_bwd(g, p, neg, 0.5, reduction)
    assert gpos.shape == p.shape and gneg.shape == neg.shape
    gf = g if reduction != "none" else g.reshape(-1, N)
    gpos_f, gneg_f = call_bwd(gf, pos.reshape(-1), neg.reshape(-1, N), 0.5, reduction)
    np.testing.assert_array_equal(gpos.reshape(-1), gpos_f)
    np.testing.assert_array_equal(gneg.reshape(-1, N), gneg_f)


def test_integers_compute_in_float64():
    pos = np.array([3, 0, -1])
    neg = np.array([[1, 5, 2], [0, -2, 4], [7, -1, -3]])
    for red in REDUCTIONS:
        got = call(pos, neg, 1, red)
        assert np.asarray(got).dtype == F64
        np.testing.assert_array_equal(got, formula(pos, neg, 1, red, F64).astype(F64))
    gpos, gneg = call_bwd(1, pos, neg, 1, "sum")
    assert gpos.dtype == F64 and gneg.dtype == F64
    np.testing.assert_array_equal(gneg, (1 - pos[:, None] + neg > 0).astype(F64))
    np.testing.assert_array_equal(gpos, -(1 - pos[:, None] + neg > 0).sum(1))


def test_dtype_promotion(rng):
    p32 = rng.standard_normal(4).astype(F32)
    n32 = rng.standard_normal((4, 3)).astype(F32)
    assert type(call(p32, n32, 1.0, "sum")) is np.float32
    assert call(p32, n32, 1.0, "none").dtype == F32
    assert [a.dtype for a in call_bwd(1.0, p32, n32, 1.0, "sum")] == [F32, F32]
    assert type(call(p32, n32.astype(F64), 1.0, "mean")) is np.float64
    assert call(p32.astype(np.float16), n32, 1.0, "none").dtype == F32
    # a float64 margin does not promote float32 scores (NumPy's NEP 50 rule)
    assert call(p32, n32, np.float64(0.3), "none").dtype == F32


@pytest.mark.parametrize("margin", [1, True, np.float32(0.25), np.float64(0.3), np.int64(2)])
def test_margin_as_any_real_scalar(rng, margin):
    pos = rng.standard_normal(6)
    neg = rng.standard_normal((6, 4))
    m = float(margin)
    np.testing.assert_array_equal(call(pos, neg, margin, "none"), call(pos, neg, m, "none"))
    assert call(pos, neg, margin, "sum") == call(pos, neg, m, "sum")


@pytest.mark.parametrize("shape", [(0, 3), (4, 0), (0, 0), (2, 0, 3), (2, 3, 0)])
@pytest.mark.parametrize("dt", [F64, F32])
def test_empty(shape, dt):
    neg = np.zeros(shape, dt)
    pos = np.zeros(shape[:-1], dt)
    s = call(pos, neg, 1.0, "sum")
    assert s == 0 and type(s) is dt.type
    m = call(pos, neg, 1.0, "mean")
    assert np.isnan(m) and type(m) is dt.type   # like np.mean of nothing
    r = call(pos, neg, 1.0, "none")
    assert r.shape == shape and r.dtype == dt
    for red, g in (("sum", 1.0), ("mean", 1.0), ("none", np.zeros(shape))):
        gpos, gneg = call_bwd(g, pos, neg, 1.0, red)
        assert gpos.shape == pos.shape and gneg.shape == shape
        assert gpos.dtype == dt and gneg.dtype == dt
        np.testing.assert_array_equal(gpos, 0)


# ------------------------------------------------------------ non-finite scores

@pytest.mark.parametrize("dt", [F64, F32])
def test_nan_propagates(dt):
    pos = np.array([0.0, np.nan, 0.0, 0.0], dt)
    neg = np.array([[0.5, -3.0, 0.2],
                    [0.5, -3.0, 0.2],
                    [np.nan, -3.0, 0.2],
                    [-5.0, -3.0, -4.0]], dt)   # a nan negative, even where v < 0 around it
    assert np.isnan(call(pos, neg, 1.0, "sum"))
    assert np.isnan(call(pos, neg, 1.0, "mean"))
    none = call(pos, neg, 1.0, "none")
    want = np.isnan(formula(pos, neg, 1.0, "none"))
    np.testing.assert_array_equal(np.isnan(none), want)
    assert want[1].all() and want[2, 0] and want.sum() == 4
    for red, g in (("sum", 1.0), ("mean", 1.0), ("none", np.ones((4, 3)))):
        gpos, gneg = call_bwd(g, pos, neg, 1.0, red)
        np.testing.assert_array_equal(np.isnan(gneg), want)
        np.testing.assert_array_equal(np.isnan(gpos), [False, True, True, False])
        unit = dt.type(1 / 12) if red == "mean" else dt.type(1)   # grad / count, in dt
        np.testing.assert_array_equal(gpos[[0, 3]], [-2 * unit, 0])


@pytest.mark.parametrize("dt", [F64, F32])
def test_infinities(dt):
    inf = np.inf
    pos = np.array([0.0, 0.0, inf, -inf], dt)
    neg = np.array([[-inf, 0.5, -inf],    # -inf negatives: 0 loss, 0 gradient
                    [inf, 0.5, -2.0],     # +inf negative: inf loss
                    [3.0, -1.0, 0.0],     # +inf positive: every v = -inf
                    [3.0, -1.0, 0.0]], dt)  # -inf positive: every v = +inf
    none = call(pos, neg, 1.0, "none")
    want = np.array([[0, 1.5, 0], [inf, 1.5, 0], [0, 0, 0], [inf, inf, inf]], dt)
    np.testing.assert_array_equal(none, want)
    np.testing.assert_array_equal(none, formula(pos, neg, 1.0, "none"))
    assert call(pos, neg, 1.0, "sum") == inf and call(pos, neg, 1.0, "mean") == inf
    assert call(pos[:1], neg[:1], 1.0, "sum") == 1.5
    gpos, gneg = call_bwd(2.0, pos, neg, 1.0, "sum")
    np.testing.assert_array_equal(gneg, 2.0 * (want > 0))
    np.testing.assert_array_equal(gpos, [-2.0, -4.0, 0.0, -6.0])
    # only -inf negatives: exactly zero loss and gradient
    p, n = np.zeros(2, dt), np.full((2, 3), -inf, dt)
    assert call(p, n, 1.0, "sum") == 0
    for a in call_bwd(1.0, p, n, 1.0, "sum"):
        np.testing.assert_array_equal(a, 0)
    # inf - inf: nan
    assert np.isnan(call(np.array([inf], dt), np.array([[inf]], dt), 1.0, "sum"))
    assert np.isnan(call(np.array([-inf], dt), np.array([[-inf]], dt), 1.0, "sum"))


# ------------------------------------------------------------------ backward

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [1.0, 0.0, -0.7])
@pytest.mark.parametrize("lead", [(4,), (2, 3)])
def test_backward_matches_finite_differences(rng, reduction, margin, lead):
    N = 5
    pos, neg = away_from_kink(rng, lead, N, margin)
    g = rng.standard_normal(lead + (N,)) if reduction == "none" else 0.8

    def L(p, n):
        return float(np.sum(g * call(p, n, margin, reduction)))

    def fd(x, f):
        out = np.empty(x.shape)
        for j in range(x.size):
            h = H * max(1.0, abs(x.flat[j]))
            xp, xm = x.copy(), x.copy()
            xp.flat[j] += h
            xm.flat[j] -= h
            out.flat[j] = (f(xp) - f(xm)) / (xp.flat[j] - xm.flat[j])
        return out

    gpos, gneg = call_bwd(g, pos, neg, margin, reduction)
    for got, want in ((gpos, fd(pos, lambda p: L(p, neg))), (gneg, fd(neg, lambda n: L(pos, n)))):
        scale = float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=FD_TOL, atol=FD_TOL * scale)


@pytest.mark.parametrize("dt", [F64, F32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backward_matches_formula(rng, dt, reduction):
    B, N = 300, 37
    pos, neg = away_from_kink(rng, (B,), N, 1.0)
    pos, neg = pos.astype(dt), neg.astype(dt)
    g = (rng.standard_normal((B, N)) if reduction == "none" else np.float64(1.3))
    gpos, gneg = call_bwd(g, pos, neg, 1.0, reduction)
    assert gpos.dtype == dt and gneg.dtype == dt and gneg.shape == (B, N)
    mask = (1.0 - pos.astype(F64)[:, None] + neg) > 0
    gfull = np.broadcast_to(np.asarray(g, F64), (B, N))
    if reduction == "mean":
        gfull = gfull / (B * N)
    want_neg = np.where(mask, gfull, 0.0).astype(dt)      # one rounding of g to dt
    np.testing.assert_array_equal(gneg, want_neg)
    want_pos = -np.sum(want_neg.astype(np.longdouble), axis=1).astype(F64)
    tol = N * EPS64 * np.abs(want_neg.astype(F64)).sum(1) + eps(dt) * np.abs(want_pos)
    assert_within(gpos, want_pos, tol)


def test_subgradient_at_the_kink_is_zero():
    # integer-valued data: v = margin - pos + neg is exactly 0 at five pairs
    pos = np.array([2, 3, 0])
    neg = np.array([[1, 2, 1], [2, 0, 5], [-1, -1, 0]])
    v = 1 - pos[:, None] + neg
    assert (v == 0).sum() == 5
    for dt in (F64, F32):
        p, n = pos.astype(dt), neg.astype(dt)
        np.testing.assert_array_equal(call(p, n, 1.0, "none"), np.maximum(v, 0))
        gpos, gneg = call_bwd(1.0, p, n, 1.0, "sum")
        np.testing.assert_array_equal(gneg, (v > 0).astype(dt))
        np.testing.assert_array_equal(gpos, [-1, -1, -1])
        G = np.arange(1.0, 10.0).reshape(3, 3)
        gpos, gneg = call_bwd(G, p, n, 1.0, "none")
        np.testing.assert_array_equal(gneg, np.where(v > 0, G, 0))
        np.testing.assert_array_equal(gpos, -np.where(v > 0, G, 0).sum(1))
    # margin 0 with equal scores: the kink again
    gpos, gneg = call_bwd(1.0, np.ones(2), np.ones((2, 3)), 0.0, "sum")
    np.testing.assert_array_equal(gneg, 0)
    np.testing.assert_array_equal(gpos, 0)


@pytest.mark.parametrize("g", [2.0, np.float32(2.0), np.array(2.0), np.array([2.0]), 2])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_grad_scalar_forms(rng, g, reduction):
    pos = rng.standard_normal(4)
    neg = rng.standard_normal((4, 3))
    want = call_bwd(2.0, pos, neg, 1.0, reduction)
    for a, b in zip(call_bwd(g, pos, neg, 1.0, reduction), want):
        np.testing.assert_array_equal(a, b)


def test_mean_is_sum_over_count(rng):
    pos, neg = away_from_kink(rng, (40,), 8, 1.0)
    gs = call_bwd(1.0, pos, neg, 1.0, "sum")
    gm = call_bwd(1.0, pos, neg, 1.0, "mean")
    np.testing.assert_allclose(gm[1], gs[1] / 320, rtol=EPS64)
    np.testing.assert_allclose(gm[0], gs[0] / 320, rtol=8 * EPS64)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip(
        "torch", reason="torch is not installed: autograd comparisons skipped")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [1.0, 0.0, -0.3, 2.0])
@pytest.mark.parametrize("lead", [(64,), (3, 20)])
def test_matches_torch(torch, rng, reduction, margin, lead):
    F = torch.nn.functional
    N = 17
    pos, neg = away_from_kink(rng, lead, N, margin, gap=1e-3)
    G = rng.standard_normal(lead + (N,))
    tp = torch.tensor(pos, requires_grad=True)
    tn = torch.tensor(neg, requires_grad=True)
    pe = tp[..., None].expand_as(tn)
    y = F.margin_ranking_loss(pe, tn, torch.ones_like(tn), margin=margin, reduction=reduction)
    y.backward(torch.tensor(G) if reduction == "none" else torch.tensor(1.3, dtype=torch.float64))
    got = call(pos, neg, margin, reduction)
    # torch rounds -(pos - neg) + margin, we (margin - pos) + neg: both sides err
    want = y.detach().numpy()
    assert_within(got, want, 2 * loss_tol(pos, neg, margin, reduction, F64, want), "loss")
    gpos, gneg = call_bwd(G if reduction == "none" else 1.3, pos, neg, margin, reduction)
    if reduction == "mean":
        # grad / count: one correctly rounded division each side, order aside
        np.testing.assert_allclose(gneg, tn.grad.numpy(), rtol=2 * EPS64, atol=0)
    else:
        np.testing.assert_array_equal(gneg, tn.grad.numpy())   # grad times a 0/1 mask
    wp = tp.grad.numpy()
    assert_within(gpos, wp, 2 * N * EPS64 * np.abs(gneg).sum(-1), "gpos")


def test_torch_picks_one_at_the_kink(torch):
    # the documented difference: torch's subgradient at v == 0 is 1, ours 0
    F = torch.nn.functional
    tn = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    F.margin_ranking_loss(torch.tensor([[2.0]], dtype=torch.float64), tn,
                          torch.ones(1, 1, dtype=torch.float64), margin=1.0).backward()
    assert tn.grad.item() == 1.0
    assert call_bwd(1.0, np.array([2.0]), np.array([[1.0]]), 1.0, "sum")[1][0, 0] == 0.0


# ------------------------------------------------------------------ validation

def both(exc, match, *args, grad=1.0, **kw):
    with pytest.raises(exc, match=match):
        fastlin.max_margin_loss(*args, **kw)
    with pytest.raises(exc, match=match):
        fastlin.max_margin_loss_backward(grad, *args, **kw)


def test_pos_neg_shape_mismatch():
    neg = np.zeros((5, 3))
    both(ValueError, r"pos must have shape \(5,\) or \(5, 1\) to match neg of shape "
         r"\(5, 3\), got \(4,\)", np.zeros(4), neg)
    both(ValueError, r"got \(5, 3\)", np.zeros((5, 3)), neg)
    both(ValueError, r"got \(1, 5\)", np.zeros((1, 5)), neg)
    both(ValueError, r"pos must have shape \(2, 5\) or \(2, 5, 1\).*got \(5,\)",
         np.zeros(5), np.zeros((2, 5, 3)))


@pytest.mark.parametrize("neg", [np.zeros(3), np.float64(1.0)])
def test_neg_must_be_at_least_2d(neg):
    both(ValueError, r"neg must have shape \(\.\.\., B, N\), got [01]-d shape",
         np.zeros(3), neg)


@pytest.mark.parametrize("bad", ["avg", "Sum", None, "batchmean"])
def test_bad_reduction(bad):
    both(ValueError, "reduction must be one of 'sum', 'mean', 'none', got",
         np.zeros(2), np.zeros((2, 3)), reduction=bad)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, np.float32(np.nan)])
def test_non_finite_margin(bad):
    both(ValueError, "margin must be finite", np.zeros(2), np.zeros((2, 3)), margin=bad)


@pytest.mark.parametrize("bad", [1j, 1 + 0j, "1", None, np.array(1.0), [1.0]])
def test_non_real_margin(bad):
    both(TypeError, "margin must be a real number", np.zeros(2), np.zeros((2, 3)), margin=bad)


def test_complex_scores():
    both(TypeError, "pos must be real, got complex", np.zeros(2, complex), np.zeros((2, 3)))
    both(TypeError, "neg must be real, got complex", np.zeros(2), np.zeros((2, 3), complex))


def test_grad_shape():
    pos, neg = np.zeros(4), np.zeros((4, 3))
    for red in ("sum", "mean"):
        with pytest.raises(ValueError, match=rf"grad must be a scalar for reduction='{red}', "
                                             r"got shape \(4,\)"):
            call_bwd(np.ones(4), pos, neg, 1.0, red)
    with pytest.raises(ValueError, match=r"grad must have the shape of the losses \(4, 3\), "
                                         r"got \(\)"):
        call_bwd(1.0, pos, neg, 1.0, "none")
    with pytest.raises(ValueError, match=r"got \(3, 4\)"):
        call_bwd(np.ones((3, 4)), pos, neg, 1.0, "none")
    with pytest.raises(ValueError, match=r"got \(4,\)"):
        call_bwd(np.ones(4), pos, neg, 1.0, "none")


# ------------------------------------------------------------------ invariance

@pytest.mark.parametrize("dt", [F64, F32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_layouts_are_bitwise_identical(rng, layout, dt, reduction):
    pos = rng.standard_normal((3, 40)).astype(dt)
    neg = rng.standard_normal((3, 40, 9)).astype(dt)
    g = rng.standard_normal((3, 40, 9)).astype(dt) if reduction == "none" else 0.5
    want = call(pos, neg, 0.3, reduction)
    np.testing.assert_array_equal(call(layout(pos), layout(neg), 0.3, reduction), want)
    np.testing.assert_array_equal(call(layout(pos[..., None]), neg, 0.3, reduction), want)
    gl = layout(g) if reduction == "none" else g
    for a, b in zip(call_bwd(gl, layout(pos), layout(neg), 0.3, reduction),
                    call_bwd(g, pos, neg, 0.3, reduction)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_inputs_are_not_modified(rng, reduction):
    pos = rng.standard_normal(500)
    neg = rng.standard_normal((500, 70))
    g = rng.standard_normal((500, 70)) if reduction == "none" else np.array(1.0)
    copies = [a.copy() for a in (pos, neg, g)]
    call(pos, neg, 1.0, reduction)
    call_bwd(g, pos, neg, 1.0, reduction)
    call_bwd(g, pos[:, None], neg, 1.0, reduction)
    for a, c in zip((pos, neg, g), copies):
        np.testing.assert_array_equal(a, c)


@pytest.fixture(scope="module")
def big():
    r = np.random.default_rng(7)
    return r.standard_normal(65536), r.standard_normal((65536, 64))


@pytest.mark.parametrize("dt", [F64, F32])
def test_bitwise_identical_for_1_and_2_threads(big, dt):
    pos, neg = (a.astype(dt) for a in big)
    G = np.full(neg.shape, 0.5, dt)
    G[::3] = -1.25
    res = []
    for nt in (1, 2):
        with fastlin.threads(nt):
            res.append((call(pos, neg, 1.0, "sum"), call(pos, neg, 1.0, "mean"),
                        call_bwd(1.0, pos, neg, 1.0, "sum"),
                        call_bwd(G, pos, neg, 1.0, "none")))
    (s1, m1, b1, n1), (s2, m2, b2, n2) = res
    assert s1 == s2 and m1 == m2
    for a, b in zip(b1 + n1, b2 + n2):
        np.testing.assert_array_equal(a, b)


def test_threads_none_reduction(big):
    pos, neg = big
    with fastlin.threads(1):
        a = call(pos, neg, 0.5, "none")
    with fastlin.threads(2):
        b = call(pos, neg, 0.5, "none")
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------- the README layout

def test_readme_example():
    scores = np.array([[2.0, 0.5, 1.8], [0.1, 0.3, -1.0]])
    pos, neg = scores[:, 0], scores[:, 1:]
    assert float(fastlin.max_margin_loss(pos, neg)) == 2.0
    gpos, gneg = fastlin.max_margin_loss_backward(1.0, pos, neg)
    np.testing.assert_array_equal(gpos, [-1.0, -1.0])
    np.testing.assert_array_equal(gneg, [[0.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_scores_with_the_positive_first(rng, reduction):
    # scores (B, 1 + N), the positive in column 0: two strided views in, the
    # gradient reassembled into the scores' shape
    B, N, margin = 50, 9, 1.0
    p, n = away_from_kink(rng, (B,), N, margin)
    scores = np.concatenate([p[:, None], n], axis=1)
    pos, neg = scores[:, 0], scores[:, 1:]
    assert not neg.flags.c_contiguous and pos.strides == ((1 + N) * 8,)
    loss = fastlin.max_margin_loss(pos, neg, margin, reduction)
    gpos, gneg = fastlin.max_margin_loss_backward(1.0, pos, neg, margin, reduction)
    gscores = np.concatenate([gpos[:, None], gneg], axis=1)
    assert gscores.shape == scores.shape

    def L(s):
        return float(fastlin.max_margin_loss(s[:, 0], s[:, 1:], margin, reduction))

    exact = formula(p, n, margin, reduction, F64)
    assert_within(loss, exact, loss_tol(p, n, margin, reduction, F64, exact))
    fd = np.empty(scores.shape)
    for idx in np.ndindex(scores.shape):
        sp, sm = scores.copy(), scores.copy()
        h = H * max(1.0, abs(scores[idx]))
        sp[idx] += h
        sm[idx] -= h
        fd[idx] = (L(sp) - L(sm)) / (sp[idx] - sm[idx])
    np.testing.assert_allclose(gscores, fd, rtol=FD_TOL, atol=FD_TOL * np.abs(fd).max())
    # in one line: the hinge mask, the positive column minus its row sum
    mask = (margin - scores[:, :1] + scores[:, 1:]) > 0
    scale = 1.0 if reduction == "sum" else 1.0 / (B * N)
    np.testing.assert_allclose(gscores, scale * np.concatenate(
        [-mask.sum(1, keepdims=True), mask], axis=1), rtol=4 * EPS64)


@pytest.mark.parametrize("dt,big,margin", [(F64, 1e17, 1.0), (F32, 1e9, 1.0),
                                           (F32, 1000.0, 0.01)])
def test_margin_is_not_lost_against_large_scores(dt, big, margin):
    """(neg - pos) + margin: equal large scores give exactly the margin,
    and nearby ones their difference plus it, where margin - pos + neg
    (NumPy's formula, torch's) rounds the margin away first.  Judged in
    longdouble from the dtype's values (the margin rounded to the dtype)."""
    pos = np.array([big, big, big], dt)
    neg = np.array([[big, np.spacing(dt.type(big)) * 3 + dt.type(big), dt.type(big) - 0]], dt)
    neg = np.repeat(neg, 3, axis=0)
    m = dt.type(margin)
    want = np.maximum(0, (neg.astype(np.longdouble) - pos[:, None].astype(np.longdouble))
                      + np.longdouble(m))
    got = fastlin.max_margin_loss(pos, neg, margin=margin, reduction="none")
    np.testing.assert_allclose(got.astype(np.longdouble), want, rtol=eps(dt), atol=0)
    assert float(fastlin.max_margin_loss(pos, neg, margin=margin)) > 0
    gpos, gneg = fastlin.max_margin_loss_backward(1.0, pos, neg, margin=margin)
    np.testing.assert_array_equal(gneg, np.ones_like(neg))
    np.testing.assert_array_equal(gpos, -3 * np.ones_like(pos))
