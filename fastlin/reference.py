"""Slow, obviously correct twins of every fastlin op and backward.

Each computes in ``np.longdouble`` (80-bit extended on x86-64: 64-bit
mantissa and an exponent range that cannot overflow for float64 inputs) with
the textbook formula, then rounds to the input's float dtype.  They are the
judges in the tests, never used by the library itself, and never call it.

The distance, margin and Mahalanobis twins take ``dtype=``: the dtype of the
result, by default the one fastlin documents; ``np.longdouble`` keeps the
extended result, so that a test can measure an error of under one rounding.
Linear solves, which NumPy does not offer in longdouble, run in float64 and
are refined once with a longdouble residual (right to about eps relative
whatever the condition number below 1 / eps).
"""
import numpy as np

LD = np.longdouble


def _dtype(*arrays):
    """fastlin's documented result dtype: bool and integers count as float64,
    float16 as float32, then numpy's promotion; a Python int or float does
    not take part (numpy's weak scalars)."""
    dts = []
    for a in arrays:
        if isinstance(a, (int, float)) and not isinstance(a, np.generic):
            continue
        dt = np.asarray(a).dtype
        if dt.kind in "biu":
            dt = np.dtype(np.float64)
        elif dt.kind == "f" and dt.itemsize < 4:
            dt = np.dtype(np.float32)
        dts.append(dt)
    dt = np.result_type(*dts) if dts else np.dtype(np.float64)
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
    e = np.exp(xl - np.max(xl, axis=ax, keepdims=True, initial=-np.inf))
    return (e / np.sum(e, axis=ax, keepdims=True)).astype(dt)


def log_softmax(x, axis=None):
    x = np.asarray(x)
    dt = _dtype(x)
    xl = x.astype(LD)
    ax = _axis(axis, x.ndim)
    m = np.max(xl, axis=ax, keepdims=True, initial=-np.inf)
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


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    """log(sum(b * exp(a))) in longdouble.

    Without `return_sign` a negative sum gives nan (the log of a negative
    number); with it, ``(log|sum|, sign(sum))``.
    """
    a = np.atleast_1d(np.asarray(a))
    dt = _dtype(a) if b is None else _dtype(a, b)
    al = a.astype(LD)
    bl = LD(1) if b is None else np.asarray(b).astype(LD)
    al, bl = np.broadcast_arrays(al, bl)
    ax = _axis(axis, al.ndim)
    m = _shift(al, bl, ax)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # entries of weight 0 are left out (an inf or nan there included) ...
        s = np.sum(np.where(bl != 0, bl * np.exp(al - m), LD(0)), axis=ax, keepdims=True)
        r = np.log(np.abs(s) if return_sign else s) + m
        # ... except in a slice whose result is not finite: scipy's direct
        # formula there, where 0 * inf is nan
        direct = np.sum(bl * np.exp(al), axis=ax, keepdims=True)
        r = np.where(np.isfinite(r), r, np.log(np.abs(direct) if return_sign else direct))
        s = np.where(np.isfinite(r), s, direct)
    # an empty slice: scipy's sign is that of its result, -inf (-1), not 0
    sgn = np.sign(s) if al.size and all(al.shape[i] for i in np.atleast_1d(ax)) else \
        np.full(s.shape, LD(-1))
    if not keepdims:
        r = np.squeeze(r, axis=ax)
        sgn = np.squeeze(sgn, axis=ax)
    if return_sign:
        return r.astype(dt), sgn.astype(dt)
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
        # entries of weight 0 take no part, an inf or nan there included
        s = np.sum(np.where(bl != 0, bl * np.exp(al - m), LD(0)), axis=ax, keepdims=True)
        lse = np.log(np.abs(s)) + m
        g = np.asarray(grad).astype(LD)
        if not keepdims:
            g = np.expand_dims(g, ax) if g.ndim else g
        # the softmax weights, b exp(a - m) / |s|: no large cancellation in a - lse
        w = np.where(bl != 0, bl * np.exp(al - m) / np.abs(s) * np.sign(s), LD(0))
        ga = np.where(np.isneginf(lse), LD(0), g * w)
        # a slice whose logsumexp is nan (an inf met by a zero weight: 0 * inf,
        # see logsumexp) has the gradient nan, but at the entries of weight 0
        direct = np.sum(bl * np.exp(al), axis=ax, keepdims=True)
        bad = ~np.isfinite(lse) & np.isnan(np.log(np.abs(direct)))
        ga = np.where(bad & (bl != 0), LD(np.nan), ga)
    # sum over axes along which a was broadcast against b
    lead = ga.ndim - len(shape0)
    if lead:
        ga = ga.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s_ in enumerate(shape0) if s_ == 1 and ga.shape[i] != 1)
    if axes:
        ga = ga.sum(axis=axes, keepdims=True)
    return ga.reshape(shape0).astype(dt)


# ------------------------------------------------------------------ distances

def _rows(X):
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"reference: a 2-d array of points, got shape {X.shape}")
    return X


def _metric(metric):
    names = {"euclidean": "euclidean", "euclid": "euclidean", "eu": "euclidean",
             "e": "euclidean", "sqeuclidean": "sqeuclidean", "sqe": "sqeuclidean",
             "sqeuclid": "sqeuclidean", "cosine": "cosine", "cos": "cosine",
             "mahalanobis": "mahalanobis", "mahal": "mahalanobis", "mah": "mahalanobis"}
    m = names.get(str(metric).lower())
    if m is None:
        raise ValueError(f"reference: unknown metric {metric!r}")
    return m


def default_vi(X):
    """scipy's precision matrix when none is given: the inverse of the sample
    covariance of the rows of X (cdist: both sets stacked), in float64 as
    scipy computes it, symmetrised (the quadratic form only sees the
    symmetric part)."""
    X = np.asarray(X, dtype=np.float64)
    VI = np.linalg.inv(np.atleast_2d(np.cov(X.T)))
    return (VI + VI.T) / 2


def _precision(VI, XA, XB):
    """The symmetric part of VI in longdouble (scipy's default when None)."""
    if VI is None:
        VI = default_vi(np.vstack([np.asarray(XA), np.asarray(XB)]))
    P = np.asarray(VI).astype(LD)
    return (P + P.T) / 2


def sqdist(XA, XB, w=None, VI=None):
    """Squared distances between the rows of XA and XB, in longdouble.

    ``sum(w (a - b)^2)`` (w = 1 by default), or ``(a - b)^T VI (a - b)`` with
    `VI`, formed from the differences ``a - b`` themselves: no cancellation
    but the one in the data.  Rows are taken 32 at a time to bound the
    (32, mB, n) temporary.

    Returns
    -------
    ndarray of np.longdouble, shape (mA, mB)
    """
    A = _rows(XA).astype(LD)
    B = _rows(XB).astype(LD)
    out = np.empty((A.shape[0], B.shape[0]), LD)
    Ml = None if VI is None else np.asarray(VI).astype(LD)
    wl = None if w is None else np.asarray(w).astype(LD)
    with np.errstate(invalid="ignore", over="ignore"):
        for i0 in range(0, A.shape[0], 32):
            D = A[i0:i0 + 32, None, :] - B[None, :, :]
            if Ml is not None:
                out[i0:i0 + 32] = np.einsum("ijk,kl,ijl->ij", D, Ml, D)
            elif wl is not None:
                out[i0:i0 + 32] = (wl * D * D).sum(-1)
            else:
                out[i0:i0 + 32] = (D * D).sum(-1)
    return out


def _unit_rows(X):
    """Rows divided by their norm, in longdouble (a zero row gives nan: 0/0,
    scipy's cosine distance of a zero row)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return X / np.sqrt((X * X).sum(-1, keepdims=True))


def cdist(XA, XB, metric="euclidean", *, w=None, VI=None, dtype=None):
    """Distances between each pair of rows of XA and XB (scipy's definitions).

    * 'sqeuclidean': ``sum(w (a - b)^2)``; 'euclidean' its root;
    * 'mahalanobis': ``sqrt((a - b)^T VI (a - b))``, VI by default the inverse
      covariance of the stacked rows (scipy's);
    * 'cosine': ``1 - cos``, computed as ``|a^ - b^|^2 / 2`` on the unit rows
      (weighted: of ``sqrt(w) a``), equal in exact arithmetic; ``1 - a^.b^``
      would cancel for near-parallel rows even in longdouble.

    Parameters
    ----------
    XA, XB : array_like, shapes (mA, n), (mB, n)
    metric : str
    w, VI : array_like, optional
        As :func:`fastlin.cdist`.
    dtype : dtype, optional
        The result's; default fastlin's (float32 for float32 input, else
        float64); ``np.longdouble`` for the extended result.

    Returns
    -------
    D : ndarray, shape (mA, mB)
    """
    XA, XB = _rows(XA), _rows(XB)
    dt = _dtype(XA, XB) if dtype is None else np.dtype(dtype)
    metric = _metric(metric)
    if metric == "cosine":
        A, B = XA.astype(LD), XB.astype(LD)
        if w is not None:
            sw = np.sqrt(np.asarray(w).astype(LD))
            A, B = A * sw, B * sw
        r = sqdist(_unit_rows(A), _unit_rows(B)) / 2
        # a zero row (every row, without columns) has no direction: nan, as scipy
        za = ~((A * A).sum(-1) > 0) & ~np.isnan(A).any(-1)
        zb = ~((B * B).sum(-1) > 0) & ~np.isnan(B).any(-1)
        r[za, :] = np.nan
        r[:, zb] = np.nan
    elif metric == "mahalanobis":
        with np.errstate(invalid="ignore"):
            r = np.sqrt(sqdist(XA, XB, VI=_precision(VI, XA, XB)))
    else:
        r = sqdist(XA, XB, w=w)
        if metric == "euclidean":
            r = np.sqrt(r)
    return r.astype(dt)


def _condensed(D):
    """The strict upper triangle of a square matrix, row by row (scipy's order)."""
    m = D.shape[0]
    return np.array([D[i, j] for i in range(m) for j in range(i + 1, m)], dtype=D.dtype)


def pdist(X, metric="euclidean", *, w=None, VI=None, dtype=None):
    """Condensed distances between the rows of X: entry ``(i, j)``, i < j, of
    :func:`cdist` ``(X, X)`` in scipy's order (VI by default from the rows of
    X once, as scipy's pdist).

    Returns
    -------
    d : ndarray, shape (m * (m - 1) / 2,)
    """
    X = _rows(X)
    if _metric(metric) == "mahalanobis" and VI is None and X.shape[0] > 1:
        VI = default_vi(X)
    D = cdist(X, X, metric, w=w, VI=VI, dtype=LD)
    dt = _dtype(X) if dtype is None else np.dtype(dtype)
    return _condensed(D).reshape(-1).astype(dt)


def squareform(X, force="no", checks=True):
    """Condensed vector <-> square matrix, by explicit loops, keeping X's dtype.

    A vector of length ``m (m - 1) / 2`` fills the upper and lower triangles
    of an m x m zero matrix (the empty vector gives scipy's 1 x 1 matrix); a
    square matrix gives its strict upper triangle row by row, after checking
    (with `checks`) that it is symmetric with a zero diagonal.
    """
    X = np.asarray(X)
    force = force.lower()
    if force == "tomatrix" or (force == "no" and X.ndim == 1):
        s = X.shape[0]
        m = 1
        while m * (m - 1) // 2 < s:
            m += 1
        if m * (m - 1) // 2 != s:
            raise ValueError(f"reference squareform: {s} is not m (m - 1) / 2")
        M = np.zeros((m, m), X.dtype)
        q = 0
        for i in range(m):
            for j in range(i + 1, m):
                M[i, j] = M[j, i] = X[q]
                q += 1
        return M
    if X.ndim != 2 or X.shape[0] != X.shape[1]:
        raise ValueError(f"reference squareform: a square matrix, got shape {X.shape}")
    if checks and (np.any(X != X.T) or np.any(np.diag(X) != 0)):
        raise ValueError("reference squareform: not symmetric with a zero diagonal")
    return _condensed(X)


def _pair_grads(a, b, g, metric, P=None):
    """Per pair of rows (a, b), longdouble, shapes (..., n): the gradients of
    ``g d(a, b)`` with respect to a and b.

    * sqeuclidean: ``2 g (a - b)`` and its negative;
    * euclidean: ``g (a - b) / d``, 0 where d == 0 (fastlin's zero subgradient);
    * mahalanobis: ``g P (a - b) / d`` with P the symmetric part of VI, 0 at d == 0;
    * cosine (``d = 1 - a.b / (|a||b|)``): ``-g (b^ - cos a^) / |a|`` and
      ``-g (a^ - cos b^) / |b|``, 0 for a zero row.
    """
    g = g[..., None]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if metric == "cosine":
            na = np.sqrt((a * a).sum(-1, keepdims=True))
            nb = np.sqrt((b * b).sum(-1, keepdims=True))
            ah = a / np.where(na > 0, na, 1)
            bh = b / np.where(nb > 0, nb, 1)
            cos = (ah * bh).sum(-1, keepdims=True)
            ga = -g * (bh - cos * ah) / np.where(na > 0, na, 1)
            gb = -g * (ah - cos * bh) / np.where(nb > 0, nb, 1)
            ga = np.where(na == 0, LD(0), ga)      # nan rows stay nan
            gb = np.where(nb == 0, LD(0), gb)
            return ga, gb
        diff = a - b
        if metric == "sqeuclidean":
            ga = 2 * g * diff
            return ga, -ga
        q = diff if P is None else diff @ P
        d = np.sqrt((diff * q).sum(-1, keepdims=True))
        ga = np.where(d == 0, LD(0), g * q / np.where(d == 0, 1, d))   # nan stays nan
        return ga, -ga


def cdist_backward(grad, XA, XB, metric="euclidean", *, VI=None, dtype=None):
    """Gradients of ``sum(grad * cdist(XA, XB, metric))`` with respect to XA
    and XB, summed pair by pair in longdouble (see `_pair_grads`):
    ``gXA_i = sum_j dg_ij d(a_i, b_j) / da_i``, ``gXB_j = sum_i ... / db_j``;
    euclidean: ``w_ij (a_i - b_j)`` with ``w = grad / D`` (0 where D == 0),
    sqeuclidean ``w = 2 grad``.

    Returns
    -------
    gXA : ndarray, shape (mA, n)
    gXB : ndarray, shape (mB, n)
    """
    XA, XB = _rows(XA), _rows(XB)
    dt = _dtype(XA, XB) if dtype is None else np.dtype(dtype)
    metric = _metric(metric)
    P = _precision(VI, XA, XB) if metric == "mahalanobis" else None
    A, B = XA.astype(LD), XB.astype(LD)
    G = np.asarray(grad).astype(LD).reshape(A.shape[0], B.shape[0])
    ga, gb = _pair_grads(A[:, None, :], B[None, :, :], G, metric, P)
    return ga.sum(axis=1).astype(dt), gb.sum(axis=0).astype(dt)


def pdist_backward(grad, X, metric="euclidean", *, VI=None, dtype=None):
    """Gradient of ``sum(grad * pdist(X, metric))`` with respect to X: each
    condensed pair (i, j), i < j, adds its two gradients to rows i and j
    (VI by default from the rows of X, as pdist's).

    Returns
    -------
    gX : ndarray, shape (m, n)
    """
    X = _rows(X)
    dt = _dtype(X) if dtype is None else np.dtype(dtype)
    metric = _metric(metric)
    m = X.shape[0]
    gX = np.zeros(X.shape, LD)
    if m < 2:
        return gX.astype(dt)
    if metric == "mahalanobis":
        P = _precision(VI if VI is not None else default_vi(X), X, X)
    else:
        P = None
    i, j = np.triu_indices(m, 1)
    Xl = X.astype(LD)
    g = np.asarray(grad).astype(LD).reshape(-1)
    ga, gb = _pair_grads(Xl[i], Xl[j], g, metric, P)
    np.add.at(gX, i, ga)
    np.add.at(gX, j, gb)
    return gX.astype(dt)


# ------------------------------------------------------------ pairwise reductions

def _scaled_rows(XA, XB, w):
    """The rows in longdouble, scaled by sqrt(w) (a weighted metric is the
    metric of the scaled rows), and that scale (None without w)."""
    A, B = _rows(XA).astype(LD), _rows(XB).astype(LD)
    if w is None:
        return A, B, None
    sw = np.sqrt(np.asarray(w).astype(LD))
    return A * sw, B * sw, sw


def cdist_topk(XA, XB, k, metric="euclidean", *, largest=False, w=None, VI=None, D=None):
    """The k nearest (largest: farthest) rows of XB to each row of XA: the
    first k of ``np.argsort(D, axis=1, kind='stable')`` (of ``-D`` for the
    farthest; nan last, ties by index), with their distances.

    D is the distance matrix to select from: by default :func:`cdist`'s
    (longdouble, rounded to fastlin's dtype); pass fastlin's own to check
    which entries it selects, since near ties order by the last bit.

    Returns
    -------
    dist : ndarray, shape (mA, k)
    idx : ndarray of int64, shape (mA, k)
    """
    if D is None:
        D = cdist(XA, XB, metric, w=w, VI=VI)
    D = np.asarray(D)
    idx = np.argsort(-D if largest else D, axis=1, kind="stable")[:, :k].astype(np.int64)
    return np.take_along_axis(D, idx, axis=1), idx


def cdist_topk_backward(grad, XA, XB, idx, metric="euclidean", *, w=None, VI=None,
                        dtype=None):
    """Gradients of ``sum_iq grad_iq d(a_i, b_idx_iq)`` with respect to XA and
    XB: each selected pair's gradients (`_pair_grads`, on the rows scaled by
    sqrt(w), chained back by sqrt(w)) added to its rows, in longdouble.

    Returns
    -------
    gXA : ndarray, shape (mA, n)
    gXB : ndarray, shape (mB, n)
    """
    dt = _dtype(XA, XB) if dtype is None else np.dtype(dtype)
    metric = _metric(metric)
    P = _precision(VI, XA, XB) if metric == "mahalanobis" else None
    A, B, sw = _scaled_rows(XA, XB, w)
    idx = np.asarray(idx)
    rows = np.repeat(np.arange(A.shape[0]), idx.shape[1])
    cols = idx.reshape(-1)
    g = np.asarray(grad).astype(LD).reshape(-1)
    ga, gb = _pair_grads(A[rows], B[cols], g, metric, P)
    gA = np.zeros(A.shape, LD)
    gB = np.zeros(B.shape, LD)
    np.add.at(gA, rows, ga)
    np.add.at(gB, cols, gb)
    if sw is not None:
        gA, gB = gA * sw, gB * sw
    return gA.astype(dt), gB.astype(dt)


def cdist_logsumexp(XA, XB, metric="sqeuclidean", *, scale=-1.0, b=None, w=None, VI=None,
                    dtype=None):
    """``log(sum_j b_j exp(scale D_ij))`` per row of XA: :func:`cdist` in
    longdouble, then :func:`logsumexp` of ``scale D`` along the rows (terms
    with b_j == 0 left out; -inf for a row without terms).

    Returns
    -------
    lse : ndarray, shape (mA,)
    """
    dt = _dtype(XA, XB) if dtype is None else np.dtype(dtype)
    D = cdist(XA, XB, metric, w=w, VI=VI, dtype=LD)
    T = LD(scale) * D
    if D.shape[1] == 0:
        return np.full(D.shape[0], -np.inf, dt)
    if b is None:
        return logsumexp(T, axis=1).astype(dt)
    bl = np.broadcast_to(np.asarray(b).astype(LD), T.shape)
    T = np.where(bl == 0, LD(-np.inf), T)       # a zero weight drops its term
    return logsumexp(T, axis=1, b=np.where(bl == 0, LD(1), bl)).astype(dt)


def cdist_logsumexp_backward(grad, XA, XB, metric="sqeuclidean", *, scale=-1.0, b=None,
                             w=None, VI=None, dtype=None):
    """Gradients of ``sum_i grad_i lse_i`` (:func:`cdist_logsumexp`) in
    longdouble: with ``E_ij = exp(scale D_ij - lse_i)``, the pair weights
    ``grad_i scale b_j E_ij`` through `_pair_grads` (every pair), and
    ``gb_j = sum_i grad_i E_ij``.  A row of lse -inf contributes nothing.

    Returns
    -------
    gXA : ndarray, shape (mA, n)
    gXB : ndarray, shape (mB, n)
    gb : ndarray, shape (mB,)
    """
    dt = _dtype(XA, XB) if dtype is None else np.dtype(dtype)
    metric = _metric(metric)
    P = _precision(VI, XA, XB) if metric == "mahalanobis" else None
    D = cdist(XA, XB, metric, w=w, VI=VI, dtype=LD)
    lse = cdist_logsumexp(XA, XB, metric, scale=scale, b=b, w=w, VI=VI, dtype=LD)
    g = np.asarray(grad).astype(LD)
    with np.errstate(invalid="ignore", over="ignore"):
        E = np.exp(LD(scale) * D - lse[:, None])
    E[np.isneginf(lse)] = 0
    bl = np.ones(D.shape[1], LD) if b is None else np.asarray(b).astype(LD)
    gb = (g[:, None] * E).sum(axis=0)
    A, B, sw = _scaled_rows(XA, XB, w)
    Wt = g[:, None] * LD(scale) * bl[None, :] * E
    ga, gbr = _pair_grads(A[:, None, :], B[None, :, :], Wt, metric, P)
    gA, gB = ga.sum(axis=1), gbr.sum(axis=0)
    if sw is not None:
        gA, gB = gA * sw, gB * sw
    return gA.astype(dt), gB.astype(dt), gb.astype(dt)


# ------------------------------------------------------------------ margin loss

def _margin_setup(pos, neg, margin):
    pos, neg = np.asarray(pos), np.asarray(neg)
    dt = _dtype(pos, neg)
    lead = neg.shape[:-1]
    p = pos.reshape(lead) if pos.shape == lead + (1,) else pos
    if p.shape != lead:
        raise ValueError(f"reference: pos {pos.shape} does not match neg {neg.shape}")
    return p, neg, dt


def max_margin_loss(pos, neg, margin=1.0, reduction="sum", *, dtype=None):
    """``max(0, margin - pos[..., b] + neg[..., b, j])`` from the exact inputs
    in longdouble (one rounding at the end), summed ('sum'), averaged
    ('mean'; nan for no element) or returned whole ('none').  nan scores give
    nan (``np.maximum`` propagates it)."""
    p, q, dt = _margin_setup(pos, neg, margin)
    dt = dt if dtype is None else np.dtype(dtype)
    with np.errstate(invalid="ignore"):
        loss = np.maximum(LD(0), LD(margin) - p.astype(LD)[..., None] + q.astype(LD))
    if reduction == "none":
        return loss.astype(dt)
    s = loss.sum()
    if reduction == "mean":
        s = s / loss.size if loss.size else LD(np.nan)
    return dt.type(s)


def max_margin_loss_backward(grad, pos, neg, margin=1.0, reduction="sum", *, dtype=None):
    """``gneg = grad`` where ``v > 0``, 0 where not (an infinite grad
    included), nan where v is nan, and ``gpos = -sum_j gneg``,
    with ``v = (neg - pos) + margin`` rounded in the inputs' dtype as the
    documentation defines the kink (the margin rounded to that dtype first);
    'mean' divides grad by the count.  Sums in longdouble.

    Returns
    -------
    gpos : ndarray, the shape of `pos` as given
    gneg : ndarray, the shape of `neg`
    """
    pos_shape = np.shape(pos)
    p, q, dt = _margin_setup(pos, neg, margin)
    with np.errstate(invalid="ignore", over="ignore"):
        v = (q.astype(dt) - p.astype(dt)[..., None]) + dt.type(margin)
    ind = np.where(np.isnan(v), LD(np.nan), (v > 0).astype(LD))
    g = np.asarray(grad).astype(LD)
    if reduction == "mean":
        g = g / v.size if v.size else g
    if reduction != "none":
        g = g.reshape(())
    # grad where v > 0, 0 where not (whatever grad is: a selection, as
    # torch's threshold backward, not grad * 0), nan where v is nan
    gneg = np.where(np.isnan(ind), LD(np.nan), np.where(ind > 0, g, LD(0)))
    gpos = -gneg.sum(axis=-1)
    out = dt if dtype is None else np.dtype(dtype)
    return gpos.reshape(pos_shape).astype(out), gneg.astype(out)


# ------------------------------------------------------------------ Mahalanobis

def _solve(M, R):
    """M^-1 R (R: columns) in float64, refined once with a longdouble residual."""
    Md = np.asarray(M, dtype=np.float64)
    Y = np.linalg.solve(Md, np.asarray(R, dtype=np.float64))
    res = np.asarray(R).astype(LD) - Md.astype(LD) @ Y.astype(LD)
    return Y.astype(LD) + np.linalg.solve(Md, res.astype(np.float64)).astype(LD)


def _maha_setup(X, mean, cov, VI, cholesky):
    given = [(k, v) for k, v in (("cov", cov), ("VI", VI), ("cholesky", cholesky))
             if v is not None]
    if len(given) != 1:
        raise ValueError("reference: give exactly one of cov, VI, cholesky")
    kind, M = given[0]
    X = np.asarray(X)
    d = X.shape[-1]
    rows = int(np.prod(X.shape[:-1], dtype=np.int64))
    delta = X.reshape(rows, d).astype(LD) - np.asarray(mean).astype(LD)
    return X, kind, np.asarray(M), delta, d


def _maha_vectors(kind, M, delta):
    """Per row (n, d): z = L^-1 delta (VI: delta), w = cov^-1 delta (VI:
    VI_sym delta) and d^2 = delta . w, longdouble."""
    if kind == "VI":
        Ml = M.astype(LD)
        W = delta @ ((Ml + Ml.T) / 2)
        Z = delta
    elif kind == "cov":
        W = _solve(M, delta.T).T
        Z = None
    else:
        Z = _solve(M, delta.T).T
        W = _solve(M.T, Z.T).T
    d2 = np.einsum("ij,ij->i", delta, W)
    return Z, W, d2


def mahalanobis(X, mean, cov=None, *, VI=None, cholesky=None, squared=False, dtype=None):
    """``sqrt((x - mean)^T cov^-1 (x - mean))`` for each row x of X (..., d):
    explicit solves with a longdouble residual (cov: ``cov^-1 delta``;
    cholesky: ``L^-1 delta`` then ``L^-T`` of it), the quadratic form
    ``delta . w`` and its root in longdouble; VI's symmetric part directly.

    Returns
    -------
    dist : ndarray, shape (...), or a scalar for one point
    """
    X, kind, M, delta, d = _maha_setup(X, mean, cov, VI, cholesky)
    dt = _dtype(X, mean, M) if dtype is None else np.dtype(dtype)
    if d == 0:
        d2 = np.zeros(delta.shape[0], LD)
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            d2 = _maha_vectors(kind, M, delta)[2]
        # a point with an infinite coordinate is infinitely far in a positive
        # definite metric (the form grows without bound along any direction);
        # the solves would make inf - inf of it
        inf_row = np.isinf(delta).any(axis=1) & ~np.isnan(delta).any(axis=1)
        d2 = np.where(inf_row, LD(np.inf), d2)
    with np.errstate(invalid="ignore"):
        r = d2 if squared else np.sqrt(d2)
    r = r.reshape(X.shape[:-1]).astype(dt)
    return r[()] if r.ndim == 0 else r


def mahalanobis_backward(grad, X, mean, cov=None, *, VI=None, cholesky=None,
                         squared=False, dtype=None):
    """Gradients of ``sum(grad * mahalanobis(X, mean, M, squared))``, longdouble:
    with ``a_i = grad_i`` (squared) or ``grad_i / (2 d_i)`` (0 at d_i == 0, the
    zero subgradient) and ``w_i = cov^-1 delta_i``:

    * ``gX_i = 2 a_i w_i``, ``gmean = -sum_i gX_i``;
    * cov: ``-sum_i a_i w_i w_i^T``; VI: ``sum_i a_i delta_i delta_i^T``;
      cholesky: ``tril(-2 sum_i a_i w_i z_i^T)``, ``z_i = L^-1 delta_i``.

    Returns
    -------
    gX : ndarray, shape (..., d)
    gmean : ndarray, shape (d,)
    gM : ndarray, shape (d, d)
    """
    X, kind, M, delta, d = _maha_setup(X, mean, cov, VI, cholesky)
    dt = _dtype(X, mean, M) if dtype is None else np.dtype(dtype)
    if d == 0 or delta.shape[0] == 0:
        return (np.zeros(X.shape, dt), np.zeros(d, dt), np.zeros((d, d), dt))
    Z, W, d2 = _maha_vectors(kind, M, delta)
    g = np.asarray(grad).astype(LD).reshape(-1)
    if squared:
        a = g
    else:
        dist = np.sqrt(np.maximum(d2, LD(0)))
        a = np.where(dist > 0, g / (2 * np.where(dist > 0, dist, 1)), LD(0))
    gX = 2 * a[:, None] * W
    gmean = -gX.sum(axis=0)
    if kind == "VI":
        gM = (delta * a[:, None]).T @ delta
    elif kind == "cov":
        gM = -(W * a[:, None]).T @ W
    else:
        gM = np.tril(-2 * (W * a[:, None]).T @ Z)
    return gX.reshape(X.shape).astype(dt), gmean.astype(dt), gM.astype(dt)
