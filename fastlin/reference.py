"""Slow, obviously correct twins of every fastlin op and backward.

Each computes in ``np.longdouble`` (80-bit extended on x86-64: 64-bit
mantissa and an exponent range that cannot overflow for float64 inputs) with
the textbook formula, then rounds to the input's float dtype.  They are the
judges in the tests, never used by the library itself.
"""
import numpy as np

LD = np.longdouble


def _dtype(*arrays):
    dt = np.result_type(*[np.asarray(a).dtype for a in arrays])
    return dt if dt.kind == "f" and dt.itemsize in (4, 8) else np.dtype(np.float64)


def _axis(axis, ndim):
    return tuple(range(ndim)) if axis is None else axis


def normalize(x, axis=-1, eps=1e-12):
    x = np.asarray(x)
    dt = _dtype(x)
    xl = x.astype(LD)
    ax = _axis(axis, x.ndim)
    nrm = np.sqrt(np.sum(xl * xl, axis=ax, keepdims=True))
    d = np.maximum(nrm, LD(eps))
    d = np.where(nrm == 0, LD(1), d) if eps == 0 else d
    return (xl / d).astype(dt)


def normalize_backward(grad, x, axis=-1, eps=1e-12):
    x = np.asarray(x)
    dt = _dtype(grad, x)
    xl, gl = x.astype(LD), np.asarray(grad).astype(LD)
    ax = _axis(axis, x.ndim)
    nrm = np.sqrt(np.sum(xl * xl, axis=ax, keepdims=True))
    safe = np.where(nrm == 0, LD(1), nrm)
    y = xl / safe
    norm_branch = (gl - y * np.sum(gl * y, axis=ax, keepdims=True)) / safe
    clamp_branch = gl / (LD(eps) if eps > 0 else LD(1))
    g = np.where(nrm < eps, clamp_branch, norm_branch)
    g = np.where((nrm == 0) & (eps == 0), LD(0), g)
    return g.astype(dt)


def softmax(x, axis=None):
    x = np.asarray(x)
    dt = _dtype(x)
    xl = x.astype(LD)
    ax = _axis(axis, x.ndim)
    e = np.exp(xl - np.max(xl, axis=ax, keepdims=True))
    return (e / np.sum(e, axis=ax, keepdims=True)).astype(dt)


def log_softmax(x, axis=None):
    x = np.asarray(x)
    dt = _dtype(x)
    xl = x.astype(LD)
    ax = _axis(axis, x.ndim)
    m = np.max(xl, axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, LD(0))
    t = xl - m
    return (t - np.log(np.sum(np.exp(t), axis=ax, keepdims=True))).astype(dt)


def _shift(al, bl, ax):
    """Max of `al` over `ax` (entries with zero weight and non-finite maxima
    excluded), so that exp(al - shift) cannot overflow even in longdouble."""
    live = np.where(np.broadcast_to(bl, al.shape) != 0, al, -np.inf)
    m = np.max(live, axis=ax, keepdims=True) if live.size else np.zeros(
        np.sum(live, axis=ax, keepdims=True).shape, LD)
    return np.where(np.isfinite(m), m, LD(0))


def logsumexp(a, axis=None, b=None, keepdims=False):
    """log(sum(b * exp(a))) in longdouble (no sign handling: sums must be > 0)."""
    a = np.atleast_1d(np.asarray(a))
    dt = _dtype(a) if b is None else _dtype(a, b)
    al = a.astype(LD)
    bl = LD(1) if b is None else np.asarray(b).astype(LD)
    al, bl = np.broadcast_arrays(al, bl)
    ax = _axis(axis, al.ndim)
    m = _shift(al, bl, ax)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(np.sum(bl * np.exp(al - m), axis=ax, keepdims=True)) + m
    if not keepdims:
        r = np.squeeze(r, axis=ax)
    return r.astype(dt)


def softmax_backward(grad, y, axis=None):
    y = np.asarray(y)
    dt = _dtype(grad, y)
    yl, gl = y.astype(LD), np.asarray(grad).astype(LD)
    ax = _axis(axis, y.ndim)
    return (yl * (gl - np.sum(gl * yl, axis=ax, keepdims=True))).astype(dt)


def log_softmax_backward(grad, y, axis=None):
    y = np.asarray(y)
    dt = _dtype(grad, y)
    yl, gl = y.astype(LD), np.asarray(grad).astype(LD)
    ax = _axis(axis, y.ndim)
    return (gl - np.exp(yl) * np.sum(gl, axis=ax, keepdims=True)).astype(dt)


def logsumexp_backward(grad, a, axis=None, b=None, keepdims=False):
    """grad * b * exp(a - lse) broadcast over the reduced axes; 0 where lse = -inf."""
    a = np.asarray(a)
    shape0 = a.shape
    a = np.atleast_1d(a)
    dt = _dtype(a, grad) if b is None else _dtype(a, b, grad)
    al = a.astype(LD)
    bl = np.ones_like(al) if b is None else np.asarray(b).astype(LD)
    al, bl = np.broadcast_arrays(al, bl)
    ax = _axis(axis, al.ndim)
    ax = (ax,) if np.isscalar(ax) else tuple(ax)
    ax = tuple(i % al.ndim for i in ax)
    m = _shift(al, bl, ax)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = np.sum(bl * np.exp(al - m), axis=ax, keepdims=True)
        lse = np.log(np.abs(s)) + m
        g = np.asarray(grad).astype(LD)
        if not keepdims:
            g = np.expand_dims(g, ax) if g.ndim else g
        # the softmax weights, b exp(a - m) / |s|: no large cancellation in a - lse
        w = np.where(bl != 0, bl * np.exp(al - m) / np.abs(s) * np.sign(s), LD(0))
        ga = np.where(np.isneginf(lse), LD(0), g * w)
    # sum over axes along which a was broadcast against b
    lead = ga.ndim - len(shape0)
    if lead:
        ga = ga.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s_ in enumerate(shape0) if s_ == 1 and ga.shape[i] != 1)
    if axes:
        ga = ga.sum(axis=axes, keepdims=True)
    return ga.reshape(shape0).astype(dt)


def cdist_backward(grad, XA, XB, metric="euclidean"):
    """gXA_i = sum_j g_ij (a_i - b_j) w_ij, gXB_j = -sum_i g_ij (a_i - b_j) w_ij,
    with w = 1 / D (0 where D == 0: fastlin's zero subgradient) for
    'euclidean' and w = 2 for 'sqeuclidean'; longdouble throughout."""
    XA, XB = np.asarray(XA), np.asarray(XB)
    dt = _dtype(XA, XB)
    diff = XA.astype(LD)[:, None, :] - XB.astype(LD)[None, :, :]
    g = np.asarray(grad).astype(LD)
    if metric == "sqeuclidean":
        w = 2 * g
    elif metric == "euclidean":
        d = np.sqrt(np.sum(diff * diff, axis=-1))
        w = np.where(d > 0, g / np.where(d > 0, d, LD(1)), LD(0))
    else:
        raise ValueError(f"reference cdist_backward: euclidean or sqeuclidean, got {metric!r}")
    wd = w[:, :, None] * diff
    return wd.sum(axis=1).astype(dt), (-wd.sum(axis=0)).astype(dt)
