"""Every backward pass against finite differences of its forward, and against torch.

Finite differences
------------------
Central differences in float64, ``(f(x + h e_j) - f(x - h e_j)) / 2h`` with
``h = 1e-6 * max(1, |x_j|)``, build the full Jacobian of the forward on small
arrays; the backward applied to each unit cotangent builds its transpose.
The difference quotient errs by the truncation ``h**2 |f'''| / 6 ~ 1e-13`` and
the rounding ``~eps |f| / h ~ 2e-10 |f|`` (|f| is O(1)-O(10) here: the
inputs are O(1)).  A tolerance of 1e-6, relative to the largest Jacobian
entry, leaves three orders of magnitude over both, and still fails any formula
that is wrong by one part in a million.  Larger arrays are checked along a
random direction: ``<backward(g), v>`` against the difference quotient of
``<g, f(x + t v)>``.

torch
-----
torch's autograd (float64) computes the same vector-Jacobian products by a
different route; agreement to ~1e-13 relative to the largest entry (a few
hundred eps: rounding in differently ordered sums) is expected.

float32
-------
A float32 backward is compared to the float64 backward of the very same
(float32-representable) inputs.  The kernels may compute elementwise in
float32 (sums in double), so the tolerance is a few float32 eps of the terms
that are rounded, scaled as explained at each test.
"""
import numpy as np
import pytest

import fastlin
from fastlin import reference as ref

H = 1e-6
FD_TOL = 1e-6
EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def fd_jacobian(f, x):
    """Central-difference Jacobian (f(x).size, x.size) of f at float64 x."""
    x = np.asarray(x, dtype=np.float64)
    cols = []
    for j in range(x.size):
        h = H * max(1.0, abs(x.flat[j]))
        xp, xm = x.copy(), x.copy()
        xp.flat[j] += h
        xm.flat[j] -= h
        h = xp.flat[j] - xm.flat[j]  # the step actually taken
        cols.append((np.ravel(f(xp)) - np.ravel(f(xm))) / h)
    return np.stack(cols, axis=1)


def bwd_jacobian(bwd, x, out_shape):
    """The Jacobian (out.size, x.size) from the backward's rows bwd(e_i)."""
    size = int(np.prod(out_shape))
    rows = []
    for i in range(size):
        g = np.zeros(size)
        g[i] = 1.0
        gx = bwd(g.reshape(out_shape), x)
        assert np.shape(gx) == np.shape(x)
        rows.append(np.ravel(gx))
    return np.stack(rows, axis=0)


def assert_jacobians_close(f, bwd, x):
    out_shape = np.shape(f(x))
    j_fd = fd_jacobian(f, x)
    j_bwd = bwd_jacobian(bwd, x, out_shape)
    scale = max(np.max(np.abs(j_fd)), np.finfo(float).tiny)
    np.testing.assert_allclose(j_bwd, j_fd, rtol=FD_TOL, atol=FD_TOL * scale)


def assert_directional_close(f, bwd, x, rng):
    """<bwd(g), v> vs d/dt <g, f(x + t v)> for random g and v."""
    y = f(x)
    g = rng.standard_normal(np.shape(y))
    v = rng.standard_normal(np.shape(x))
    h = H * max(1.0, float(np.max(np.abs(x))))

    def loss(t):
        return float(np.sum(g * f(x + t * v)))

    fd = (loss(h) - loss(-h)) / (2 * h)
    gx = bwd(g, x)
    an = float(np.sum(gx * v))
    # scale: |<g, J v>| <= ||J^T g|| ||v||
    scale = float(np.linalg.norm(gx) * np.linalg.norm(v))
    assert abs(an - fd) <= FD_TOL * scale, (an, fd, scale)


# --------------------------------------------------- the ops as (f, bwd) pairs


def normalize_pair(axis, eps=1e-12):
    return (lambda x: fastlin.normalize(x, axis=axis, eps=eps),
            lambda g, x: fastlin.normalize_backward(g, x, axis=axis, eps=eps))


def softmax_pair(axis):
    return (lambda x: fastlin.softmax(x, axis=axis),
            lambda g, x: fastlin.softmax_backward(g, fastlin.softmax(x, axis=axis), axis=axis))


def log_softmax_pair(axis):
    return (lambda x: fastlin.log_softmax(x, axis=axis),
            lambda g, x: fastlin.log_softmax_backward(
                g, fastlin.log_softmax(x, axis=axis), axis=axis))


def logsumexp_pair(axis, b=None, keepdims=False):
    def f(a):
        r = fastlin.logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=b is not None)
        return r[0] if b is not None else r
    return f, lambda g, a: fastlin.logsumexp_backward(g, a, axis=axis, b=b, keepdims=keepdims)


SHAPES_AXES = [((6,), -1), ((6,), None), ((3, 4), -1), ((3, 4), 0), ((3, 4), (0, 1)),
               ((3, 4), None), ((2, 3, 4), 1), ((2, 3, 4), (0, 2)), ((2, 3, 4), (-1, -2))]


def _pairs():
    for shape, axis in SHAPES_AXES:
        yield f"normalize-{shape}-{axis}", shape, normalize_pair(axis)
        yield f"normalize_eps0-{shape}-{axis}", shape, normalize_pair(axis, eps=0.0)
        yield f"softmax-{shape}-{axis}", shape, softmax_pair(axis)
        yield f"log_softmax-{shape}-{axis}", shape, log_softmax_pair(axis)
        yield f"logsumexp-{shape}-{axis}", shape, logsumexp_pair(axis)
        yield f"logsumexp_keepdims-{shape}-{axis}", shape, logsumexp_pair(axis, keepdims=True)


PAIRS = list(_pairs())


@pytest.mark.parametrize("name, shape, pair", PAIRS, ids=[p[0] for p in PAIRS])
def test_jacobian_matches_finite_differences(rng, name, shape, pair):
    f, bwd = pair
    x = rng.standard_normal(shape)
    assert_jacobians_close(f, bwd, x)


LARGE_PAIRS = {
    "normalize": normalize_pair(-1), "normalize_cols": normalize_pair(0),
    "softmax": softmax_pair(-1), "softmax_cols": softmax_pair(0),
    "log_softmax": log_softmax_pair(-1), "log_softmax_cols": log_softmax_pair(0),
    "logsumexp": logsumexp_pair(-1), "logsumexp_cols": logsumexp_pair(0),
    "logsumexp_all": logsumexp_pair((0, 1), keepdims=True),
}


@pytest.mark.parametrize("name", list(LARGE_PAIRS))
def test_directional_derivative_on_larger_arrays(rng, name):
    pair = LARGE_PAIRS[name]
    f, bwd = pair
    x = rng.standard_normal((40, 300))
    assert_directional_close(f, bwd, x, rng)


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_normalize_jacobian_in_and_out_of_the_clamp(rng, scale):
    # eps = 1: rows of scale 1e-3 sit in the clamp (J = I / eps), 1e3 outside
    f, bwd = normalize_pair(-1, eps=1.0)
    assert_jacobians_close(f, bwd, rng.standard_normal((2, 4)) * scale)


# ------------------------------------------------------------ logsumexp, b


@pytest.mark.parametrize("shape, axis, keepdims", [
    ((5,), None, False), ((3, 4), 1, False), ((3, 4), 0, True), ((3, 4), None, True),
    ((2, 3, 4), (0, 2), False), ((2, 3, 4), (0, 2), True), ((2, 3, 4), -2, False),
])
def test_logsumexp_weighted_jacobian(rng, shape, axis, keepdims):
    a = rng.standard_normal(shape)
    b = rng.uniform(0.1, 2.0, shape)
    assert_jacobians_close(*logsumexp_pair(axis, b=b, keepdims=keepdims), a)


def test_logsumexp_negative_weights_jacobian(rng):
    # the gradient is that of log|sum b exp(a)|; keep every sum well away from 0
    a = rng.standard_normal((3, 5))
    b = rng.uniform(0.2, 1.0, (3, 5))
    b[:, 0] = -8.0  # rows with a negative sum ...
    b[0, 0] = 0.5   # ... and one with a positive sum and a negative weight
    b[0, 1] = -0.1
    _, sgn = fastlin.logsumexp(a, axis=1, b=b, return_sign=True)
    assert set(np.unique(sgn)) == {-1.0, 1.0}
    assert_jacobians_close(*logsumexp_pair(1, b=b), a)


@pytest.mark.parametrize("a_shape, b_shape, axis", [
    ((3, 1), (1, 4), 1), ((3, 1), (1, 4), None), ((4,), (3, 4), 0), ((4,), (3, 4), None),
    ((1, 4), (3, 4), (0, 1)), ((3, 4), (4,), 1),
])
def test_logsumexp_broadcast_weights_jacobian(rng, a_shape, b_shape, axis):
    # the gradient with respect to a is summed over the axes a was broadcast along
    a = rng.standard_normal(a_shape)
    b = rng.uniform(0.1, 2.0, b_shape)
    assert_jacobians_close(*logsumexp_pair(axis, b=b), a)


def test_logsumexp_backward_broadcastable_grad(rng):
    a = rng.standard_normal((3, 4))
    full = fastlin.logsumexp_backward(np.full(3, 2.5), a, axis=1)
    np.testing.assert_array_equal(fastlin.logsumexp_backward(2.5, a, axis=1), full)
    np.testing.assert_allclose(full, 2.5 * fastlin.softmax(a, axis=1), rtol=8 * EPS64)


# ------------------------------------------------------------------ torch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip(
        "torch", reason="torch is not installed: autograd comparisons skipped")


def torch_vjp(torch, fn, x, g):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = fn(xt)
    (gx,) = torch.autograd.grad(yt, xt, torch.as_tensor(np.asarray(g), dtype=torch.float64))
    return yt.detach().numpy(), gx.numpy()


def assert_close_to_torch(ours, theirs):
    # differently ordered float64 sums: a few hundred eps of the largest entry
    scale = max(float(np.max(np.abs(theirs))), np.finfo(float).tiny)
    np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-13 * scale)


TORCH_INT_AXES = [((50,), 0), ((20, 33), -1), ((20, 33), 0), ((4, 5, 6), 1), ((4, 5, 6), -1)]


@pytest.mark.parametrize("shape, axis", TORCH_INT_AXES)
def test_softmax_family_vs_torch(torch, rng, shape, axis):
    x = rng.standard_normal(shape) * 3
    g = rng.standard_normal(shape)
    y_t, gx_t = torch_vjp(torch, lambda t: torch.softmax(t, dim=axis), x, g)
    y = fastlin.softmax(x, axis=axis)
    assert_close_to_torch(y, y_t)
    assert_close_to_torch(fastlin.softmax_backward(g, y, axis=axis), gx_t)

    y_t, gx_t = torch_vjp(torch, lambda t: torch.log_softmax(t, dim=axis), x, g)
    y = fastlin.log_softmax(x, axis=axis)
    assert_close_to_torch(y, y_t)
    assert_close_to_torch(fastlin.log_softmax_backward(g, y, axis=axis), gx_t)


@pytest.mark.parametrize("shape, axis", TORCH_INT_AXES + [((4, 5, 6), (0, 2)),
                                                          ((4, 5, 6), None)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_vs_torch(torch, rng, shape, axis, keepdims):
    a = rng.standard_normal(shape) * 3
    dim = tuple(range(len(shape))) if axis is None else axis
    out_shape = np.shape(fastlin.logsumexp(a, axis=axis, keepdims=keepdims))
    g = rng.standard_normal(out_shape)
    r_t, ga_t = torch_vjp(torch, lambda t: torch.logsumexp(t, dim=dim, keepdim=keepdims), a, g)
    assert_close_to_torch(fastlin.logsumexp(a, axis=axis, keepdims=keepdims), r_t)
    assert_close_to_torch(fastlin.logsumexp_backward(g, a, axis=axis, keepdims=keepdims), ga_t)


def test_weighted_logsumexp_vs_torch(torch, rng):
    a = rng.standard_normal((6, 7))
    b = rng.uniform(0.1, 3.0, (6, 7))
    g = rng.standard_normal(6)
    bt = torch.tensor(b)
    r_t, ga_t = torch_vjp(torch, lambda t: torch.logsumexp(t + torch.log(bt), dim=1), a, g)
    assert_close_to_torch(fastlin.logsumexp(a, axis=1, b=b), r_t)
    assert_close_to_torch(fastlin.logsumexp_backward(g, a, axis=1, b=b), ga_t)


@pytest.mark.parametrize("shape, axis", TORCH_INT_AXES + [((4, 5, 6), (0, 2))])
@pytest.mark.parametrize("eps", [1e-12, 0.5])
def test_normalize_vs_torch(torch, rng, shape, axis, eps):
    x = rng.standard_normal(shape)
    # make some vectors short enough for the clamp (eps = 0.5) to be active
    x.reshape(-1)[: x.size // 3] *= 1e-2
    g = rng.standard_normal(shape)
    F = torch.nn.functional
    y_t, gx_t = torch_vjp(torch, lambda t: F.normalize(t, p=2, dim=axis, eps=eps), x, g)
    assert_close_to_torch(fastlin.normalize(x, axis=axis, eps=eps), y_t)
    assert_close_to_torch(fastlin.normalize_backward(g, x, axis=axis, eps=eps), gx_t)


@pytest.mark.parametrize("axis", [-1, 0])
def test_normalize_singular_points_vs_torch(torch, rng, axis):
    # zero vectors with eps > 0 (clamp: g / eps) and ||x|| == eps exactly
    # (torch's clamp_min passes the gradient at equality: the norm branch)
    x = np.array([[0.0, 0.0], [3.0, 4.0], [0.3, 0.4], [-6.0, 8.0]])
    g = rng.standard_normal(x.shape)
    x, g = (x, g) if axis == -1 else (x.T.copy(), g.T.copy())
    F = torch.nn.functional
    y_t, gx_t = torch_vjp(torch, lambda t: F.normalize(t, p=2, dim=axis, eps=5.0), x, g)
    assert_close_to_torch(fastlin.normalize(x, axis=axis, eps=5.0), y_t)
    assert_close_to_torch(fastlin.normalize_backward(g, x, axis=axis, eps=5.0), gx_t)


def test_softmax_exact_zeros_vs_torch(torch, rng):
    x = np.array([[0.0, -800.0, 1.0, -1000.0], [2.0, 1.0, -2000.0, 0.0]])
    g = rng.standard_normal(x.shape)
    _, gx_t = torch_vjp(torch, lambda t: torch.softmax(t, dim=1), x, g)
    gx = fastlin.softmax_backward(g, fastlin.softmax(x, axis=1), axis=1)
    assert_close_to_torch(gx, gx_t)


# ------------------------------------------------------- float32 vs float64


def _f32_inputs(rng, shape):
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    return x, g, x.astype(np.float64), g.astype(np.float64)


F32_CASES = [((64, 37), -1), ((64, 37), 0), ((5, 6, 7), (0, 2)), ((300,), None)]


def _axes(axis, ndim):
    return tuple(range(ndim)) if axis is None else axis


@pytest.mark.parametrize("shape, axis", F32_CASES)
def test_float32_backward_normalize(rng, shape, axis):
    # gx = (g - y (g . y)) / ||x|| may cancel, so the error is measured against
    # the per-vector scale ||g|| / ||x|| (every |gx_i| <= 2 ||g|| / ||x||): a
    # few float32 roundings of terms of that size, the sums in double.
    x32, g32, x64, g64 = _f32_inputs(rng, shape)
    gx = fastlin.normalize_backward(g32, x32, axis=axis)
    assert gx.dtype == np.float32
    expected = fastlin.normalize_backward(g64, x64, axis=axis)
    axes = _axes(axis, len(shape))
    scale = (np.sqrt(np.sum(g64 ** 2, axis=axes, keepdims=True))
             / np.sqrt(np.sum(x64 ** 2, axis=axes, keepdims=True)))
    assert np.all(np.abs(gx - expected) <= 4 * EPS32 * scale)


@pytest.mark.parametrize("shape, axis", F32_CASES)
def test_float32_backward_softmax(rng, shape, axis):
    # gx = y (g - d), d = sum(g y): a few float32 roundings of y (|g| + |d|)
    x32, g32, x64, g64 = _f32_inputs(rng, shape)
    y32 = fastlin.softmax(x32, axis=axis)
    y64 = y32.astype(np.float64)
    gx = fastlin.softmax_backward(g32, y32, axis=axis)
    assert gx.dtype == np.float32
    expected = fastlin.softmax_backward(g64, y64, axis=axis)
    d = np.sum(g64 * y64, axis=_axes(axis, len(shape)), keepdims=True)
    assert np.all(np.abs(gx - expected) <= 4 * EPS32 * y64 * (np.abs(g64) + np.abs(d)))


@pytest.mark.parametrize("shape, axis", F32_CASES)
def test_float32_backward_log_softmax(rng, shape, axis):
    # gx = g - exp(y) sum(g): float32 takes exp(y) in float32 (error ~1 ulp),
    # so the error is a few eps32 of |g| + |exp(y) sum(g)|.
    x32, g32, x64, g64 = _f32_inputs(rng, shape)
    y32 = fastlin.log_softmax(x32, axis=axis)
    y64 = y32.astype(np.float64)
    gx = fastlin.log_softmax_backward(g32, y32, axis=axis)
    assert gx.dtype == np.float32
    expected = fastlin.log_softmax_backward(g64, y64, axis=axis)
    scale = np.abs(g64) + np.exp(y64) * np.abs(np.sum(g64, axis=_axes(axis, len(shape)),
                                                      keepdims=True))
    assert np.all(np.abs(gx - expected) <= 4 * EPS32 * scale)


@pytest.mark.parametrize("shape, axis", F32_CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_float32_backward_logsumexp(rng, shape, axis, weighted):
    # gx = g b exp(a - lse): float32 rounds lse to float32 and forms a - lse
    # and the exp in float32, so the relative error of each weight is a few
    # eps32 times (1 + |lse| + |a - lse|).
    x32, _, x64, _ = _f32_inputs(rng, shape)
    b32 = rng.uniform(0.5, 2.0, shape).astype(np.float32) if weighted else None
    b64 = None if b32 is None else b32.astype(np.float64)
    out_shape = np.shape(fastlin.logsumexp(x64, axis=axis))
    g32 = rng.standard_normal(out_shape).astype(np.float32)
    g64 = g32.astype(np.float64)
    gx = fastlin.logsumexp_backward(g32, x32, axis=axis, b=b32)
    assert gx.dtype == np.float32
    expected = fastlin.logsumexp_backward(g64, x64, axis=axis, b=b64)
    lse = fastlin.logsumexp(x64, axis=axis, b=b64, keepdims=True)
    rel = 4 * EPS32 * (1 + np.abs(lse) + np.abs(x64 - lse))
    assert np.all(np.abs(gx - expected) <= rel * np.abs(expected))


# ------------------------------------------------------- singular points


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-3])
def test_normalize_backward_finite_at_zero_rows(rng, axis, eps):
    x = rng.standard_normal((4, 5))
    x[1] = 0.0
    g = rng.standard_normal((4, 5))
    x, g = (x, g) if axis == -1 else (x.T.copy(), g.T.copy())
    gx = fastlin.normalize_backward(g, x, axis=axis, eps=eps)
    assert np.all(np.isfinite(gx))
    zero = gx[1] if axis == -1 else gx[:, 1]
    gz = g[1] if axis == -1 else g[:, 1]
    if eps == 0:
        np.testing.assert_array_equal(zero, 0.0)
    else:
        np.testing.assert_allclose(zero, gz / eps, rtol=2 * EPS64)


def test_normalize_jacobian_at_zero_row_with_eps():
    # around 0 (|h| << eps) normalize is x / eps: the Jacobian is I / eps
    f, bwd = normalize_pair(-1, eps=1e-3)
    x = np.zeros((2, 3))
    assert_jacobians_close(f, bwd, x)


@pytest.mark.parametrize("axis", [-1, 0, (0, 2)])
def test_logsumexp_backward_zero_at_all_neg_inf_slices(rng, axis):
    a = rng.standard_normal((3, 4, 5))
    idx = (slice(None), 1, slice(None)) if axis == (0, 2) else 1
    if axis == -1:
        a[1, 2, :] = -np.inf
    elif axis == 0:
        a[:, 2, 3] = -np.inf
    else:
        a[idx] = -np.inf
    g = rng.standard_normal(np.shape(fastlin.logsumexp(a, axis=axis)))
    ga = fastlin.logsumexp_backward(g, a, axis=axis)
    assert np.all(np.isfinite(ga))
    np.testing.assert_array_equal(ga[np.isneginf(a)], 0.0)
    expected = ref.logsumexp_backward(g, a, axis=axis)
    np.testing.assert_allclose(ga, expected, rtol=8 * EPS64, atol=8 * EPS64 * np.max(np.abs(g)))


def test_logsumexp_backward_zero_at_dead_weighted_slices(rng):
    a = rng.standard_normal((3, 4))
    b = rng.uniform(0.5, 1.5, (3, 4))
    a[0] = -np.inf        # all -inf
    b[1] = 0.0            # all weights 0
    a[2, 1] = np.inf      # inf under a zero weight is ignored
    b[2, 1] = 0.0
    g = np.array([1.0, 2.0, 3.0])
    ga = fastlin.logsumexp_backward(g, a, axis=1, b=b)
    assert np.all(np.isfinite(ga))
    np.testing.assert_array_equal(ga[:2], 0.0)
    assert ga[2, 1] == 0.0
    live = [0, 2, 3]
    w = b[2, live] * np.exp(a[2, live])
    np.testing.assert_allclose(ga[2, live], 3.0 * w / w.sum(), rtol=8 * EPS64)


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_backward_at_exact_zeros(rng, axis):
    x = np.array([[0.0, -800.0, 1.0, -1000.0, -np.inf], [2.0, 1.0, -2000.0, 0.0, 3.0]])
    x = x if axis == -1 else x.T.copy()
    y = fastlin.softmax(x, axis=axis)
    assert np.count_nonzero(y == 0) == 4
    g = rng.standard_normal(x.shape) * 1e3
    gx = fastlin.softmax_backward(g, y, axis=axis)
    assert np.all(np.isfinite(gx))
    np.testing.assert_array_equal(gx[y == 0], 0.0)
    np.testing.assert_allclose(gx, ref.softmax_backward(g, y, axis=axis),
                               rtol=8 * EPS64, atol=8 * EPS64 * np.max(np.abs(g)))


@pytest.mark.parametrize("axis", [-1, 0])
def test_log_softmax_backward_at_neg_inf_outputs(rng, axis):
    x = np.array([[0.0, -np.inf, 1.0, -1e4], [2.0, 1.0, -np.inf, 0.0]])
    x = x if axis == -1 else x.T.copy()
    y = fastlin.log_softmax(x, axis=axis)
    assert np.count_nonzero(np.isneginf(y)) == 2
    g = rng.standard_normal(x.shape)
    gx = fastlin.log_softmax_backward(g, y, axis=axis)
    assert np.all(np.isfinite(gx))
    # probability exactly 0 there: the gradient is grad itself
    np.testing.assert_array_equal(gx[np.isneginf(y)], g[np.isneginf(y)])
    np.testing.assert_allclose(gx, ref.log_softmax_backward(g, y, axis=axis),
                               rtol=8 * EPS64, atol=8 * EPS64 * np.max(np.abs(g)))
