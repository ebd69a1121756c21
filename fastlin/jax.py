"""fastlin's ops for JAX: differentiable under ``jax.grad``, ``jax.jit`` and
``jax.vmap``.

Each op is a ``jax.custom_vjp`` whose forward and backward call fastlin's
kernels through ``jax.pure_callback`` (on the host CPU).  Names and defaults
follow JAX's own (``jax.nn.softmax(x, axis=-1)``,
``jax.scipy.special.logsumexp(a, axis=None, b=None, keepdims=False)``); the
rest follow fastlin's.

* ``vmap``: the row ops (softmax, log_softmax, logsumexp, normalize) address
  their axes from the end, so a batched call is one kernel call on the
  stacked array (``vmap_method='broadcast_all'``); the others run once per
  batch element (``'sequential'``).
* Dtypes: float32 (JAX's default) and float64 (under ``jax_enable_x64``)
  natively; float16 and bfloat16 in float32, returned in their own dtype.
* Gradients: with respect to every array argument (``b`` of logsumexp is
  treated as a constant, and so is ``VI`` of the distances); second
  derivatives are not provided (differentiating a backward raises JAX's
  error for a custom_vjp's fwd/bwd, not a wrong value).

Requires ``jax`` (``pip install jax``); importing ``fastlin`` never imports it.
"""
from functools import partial

try:
    import jax
    import jax.numpy as jnp
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"fastlin.jax needs JAX ({e}); install it with "
                      "pip install 'fastlin[jax]'") from e
import numpy as np

import fastlin as _fl

__all__ = ["softmax", "log_softmax", "logsumexp", "normalize", "cdist", "pdist",
           "mahalanobis", "max_margin_loss", "cdist_topk", "cdist_logsumexp"]

_VIA_FLOAT32 = (jnp.float16, jnp.bfloat16)


def _sds(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _call(fn, out, *args, batched=False):
    """fn(*numpy arrays) on the host; `out` the ShapeDtypeStruct(s) it returns."""
    def host(*a):
        r = fn(*[np.asarray(x) for x in a])
        if isinstance(r, tuple):
            return tuple(np.asarray(x, dtype=o.dtype) for x, o in zip(r, out))
        return np.asarray(r, dtype=out.dtype)
    return jax.pure_callback(host, out, *args,
                             vmap_method="broadcast_all" if batched else "sequential")


def _floats(*xs):
    """The arrays as one floating dtype JAX computes in (float16 / bfloat16
    as float32), and the dtype to give back."""
    xs = [None if x is None else jnp.asarray(x) for x in xs]
    dts = [x.dtype for x in xs if x is not None]
    dt = jnp.result_type(*dts) if dts else jnp.float32
    if not jnp.issubdtype(dt, jnp.floating):
        dt = jnp.result_type(float)
    back = dt if dt in _VIA_FLOAT32 else None
    work = jnp.float32 if back is not None else dt
    return [None if x is None else x.astype(work) for x in xs], back


def _back(r, back):
    if back is None:
        return r
    if isinstance(r, tuple):
        return tuple(x.astype(back) if jnp.issubdtype(x.dtype, jnp.floating) else x
                     for x in r)
    return r.astype(back)


def _neg_axes(axis, ndim):
    """Axes counted from the end (a vmapped call adds leading dimensions)."""
    if axis is None:
        return tuple(range(-ndim, 0))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(((a % ndim) - ndim if ndim else a) for a in axes))


# ------------------------------------------------------------- softmax family

@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _softmax(x, axis):
    return _call(lambda a: _fl.softmax(a, axis=axis), _sds(x.shape, x.dtype), x, batched=True)


def _softmax_fwd(x, axis):
    y = _softmax(x, axis)
    return y, y


def _softmax_bwd(axis, y, g):
    return (_call(lambda g, y: _fl.softmax_backward(g, y, axis=axis), _sds(y.shape, y.dtype),
                  g, y, batched=True),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _log_softmax(x, axis):
    return _call(lambda a: _fl.log_softmax(a, axis=axis), _sds(x.shape, x.dtype), x,
                 batched=True)


def _log_softmax_fwd(x, axis):
    y = _log_softmax(x, axis)
    return y, y


def _log_softmax_bwd(axis, y, g):
    return (_call(lambda g, y: _fl.log_softmax_backward(g, y, axis=axis),
                  _sds(y.shape, y.dtype), g, y, batched=True),)


_log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)


def softmax(x, axis=-1):
    """``jax.nn.softmax(x, axis)`` by fastlin's kernel (axis an int or tuple)."""
    (x,), back = _floats(x)
    return _back(_softmax(x, _neg_axes(axis, x.ndim)), back)


def log_softmax(x, axis=-1):
    """``jax.nn.log_softmax(x, axis)`` by fastlin's kernel."""
    (x,), back = _floats(x)
    return _back(_log_softmax(x, _neg_axes(axis, x.ndim)), back)


def _reduced(shape, axes, keepdims):
    nd = len(shape)
    ax = {a % nd for a in axes}
    return tuple(1 if i in ax else s for i, s in enumerate(shape) if keepdims or i not in ax)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _lse(a, b, axis, keepdims):
    shape = _reduced(a.shape, axis, keepdims)
    if b is None:
        return _call(lambda a: _fl.logsumexp(a, axis=axis, keepdims=keepdims),
                     _sds(shape, a.dtype), a, batched=True)
    return _call(lambda a, b: _fl.logsumexp(a, axis=axis, b=b, keepdims=keepdims),
                 _sds(shape, a.dtype), a, b, batched=True)


def _lse_fwd(a, b, axis, keepdims):
    out = _lse(a, b, axis, keepdims)
    return out, (a, b, out)


def _lse_bwd(axis, keepdims, res, g):
    a, b, out = res
    sds = _sds(a.shape, a.dtype)
    if b is None:
        ga = _call(lambda g, a: _fl.logsumexp_backward(g, a, axis=axis, keepdims=keepdims),
                   sds, g, a, batched=True)
        return ga, None
    ga = _call(lambda g, a, b: _fl.logsumexp_backward(g, a, axis=axis, b=b, keepdims=keepdims),
               sds, g, a, b, batched=True)
    # d lse / d b = exp(a - lse), taken with the reduced axes kept
    outk, gk = (out, g) if keepdims else (jnp.expand_dims(out, axis), jnp.expand_dims(g, axis))
    return ga, gk * jnp.exp(a - outk)


_lse.defvjp(_lse_fwd, _lse_bwd)


def logsumexp(a, axis=None, b=None, keepdims=False):
    """``jax.scipy.special.logsumexp(a, axis, b, keepdims)`` by fastlin's
    kernel (without return_sign); differentiable in a and b."""
    (a, b), back = _floats(a, b)
    if b is not None:
        b = jnp.broadcast_to(b, a.shape)
    return _back(_lse(a, b, _neg_axes(axis, a.ndim), bool(keepdims)), back)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _normalize(x, axis, eps):
    return _call(lambda a: _fl.normalize(a, axis=axis, eps=eps), _sds(x.shape, x.dtype), x,
                 batched=True)


def _normalize_fwd(x, axis, eps):
    return _normalize(x, axis, eps), x


def _normalize_bwd(axis, eps, x, g):
    return (_call(lambda g, x: _fl.normalize_backward(g, x, axis=axis, eps=eps),
                  _sds(x.shape, x.dtype), g, x, batched=True),)


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def normalize(x, axis=-1, eps=1e-12):
    """``x / max(||x||, eps)`` along axis, by fastlin's overflow-free kernel."""
    (x,), back = _floats(x)
    return _back(_normalize(x, _neg_axes(axis, x.ndim), float(eps)), back)


# ------------------------------------------------------------- distances

@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _cdist(XA, XB, metric, VI):
    return _call(lambda a, b: _fl.cdist(a, b, metric, VI=VI),
                 _sds((XA.shape[0], XB.shape[0]), XA.dtype), XA, XB)


def _cdist_fwd(XA, XB, metric, VI):
    D = _cdist(XA, XB, metric, VI)
    return D, (XA, XB, D)


def _cdist_bwd(metric, VI, res, g):
    XA, XB, D = res
    return _call(lambda g, a, b, d: _fl.cdist_backward(g, a, b, metric, VI=VI, dist=d),
                 (_sds(XA.shape, XA.dtype), _sds(XB.shape, XB.dtype)), g, XA, XB, D)


_cdist.defvjp(_cdist_fwd, _cdist_bwd)


def _const(VI):
    """VI, a constant of the metric: a concrete array (not traced)."""
    return None if VI is None else np.asarray(VI)


def _weighted(metric, w, *xs):
    """A weighted metric is the metric of the rows scaled by sqrt(w) (JAX
    differentiates the scaling, w included)."""
    if w is None:
        return xs
    if _fl._distance_api._metric(metric) == "mahalanobis":
        raise TypeError("fastlin.jax: w is not used with metric='mahalanobis'")
    sw = jnp.sqrt(w)
    return tuple(x * sw for x in xs)


def cdist(XA, XB, metric="euclidean", *, w=None, VI=None):
    """:func:`fastlin.cdist` (exact distances, scipy's metrics); differentiable
    in XA, XB and w (VI is a constant, given as a concrete array)."""
    (XA, XB, w), back = _floats(XA, XB, w)
    XA, XB = _weighted(metric, w, XA, XB)
    return _back(_cdist(XA, XB, metric, _const(VI)), back)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _pdist(X, metric, VI):
    m = X.shape[0]
    return _call(lambda a: _fl.pdist(a, metric, VI=VI), _sds((m * (m - 1) // 2,), X.dtype), X)


def _pdist_fwd(X, metric, VI):
    d = _pdist(X, metric, VI)
    return d, (X, d)


def _pdist_bwd(metric, VI, res, g):
    X, d = res
    return (_call(lambda g, x, d: _fl.pdist_backward(g, x, metric, VI=VI, dist=d),
                  _sds(X.shape, X.dtype), g, X, d),)


_pdist.defvjp(_pdist_fwd, _pdist_bwd)


def pdist(X, metric="euclidean", *, w=None, VI=None):
    """:func:`fastlin.pdist` (condensed, scipy's order); differentiable in X and w."""
    (X, w), back = _floats(X, w)
    X, = _weighted(metric, w, X)
    return _back(_pdist(X, metric, _const(VI)), back)


# ------------------------------------------------------------- Mahalanobis, margin

@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _maha(X, mean, M, kind, squared):
    return _call(lambda x, m, M: _fl.mahalanobis(x, m, **{kind: M}, squared=squared),
                 _sds(X.shape[:-1], X.dtype), X, mean, M)


def _maha_fwd(X, mean, M, kind, squared):
    return _maha(X, mean, M, kind, squared), (X, mean, M)


def _maha_bwd(kind, squared, res, g):
    X, mean, M = res
    return _call(lambda g, x, m, M: _fl.mahalanobis_backward(g, x, m, **{kind: M},
                                                             squared=squared),
                 (_sds(X.shape, X.dtype), _sds(mean.shape, X.dtype), _sds(M.shape, X.dtype)),
                 g, X, mean, M)


_maha.defvjp(_maha_fwd, _maha_bwd)


def mahalanobis(X, mean, cov=None, *, VI=None, cholesky=None, squared=False):
    """:func:`fastlin.mahalanobis` (exactly one of cov, VI, cholesky);
    differentiable in X, mean and the matrix given."""
    given = [(k, v) for k, v in (("cov", cov), ("VI", VI), ("cholesky", cholesky))
             if v is not None]
    if len(given) != 1:
        raise ValueError("fastlin.jax.mahalanobis: give exactly one of cov, VI or cholesky, "
                         f"got {len(given)}")
    kind, M = given[0]
    (X, mean, M), back = _floats(X, mean, M)
    return _back(_maha(X, mean, M, kind, bool(squared)), back)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _margin(pos, neg, margin, reduction):
    shape = () if reduction != "none" else jnp.broadcast_shapes(pos.shape + (1,), neg.shape)
    return _call(lambda p, n: _fl.max_margin_loss(p, n, margin, reduction),
                 _sds(shape, neg.dtype), pos, neg)


def _margin_fwd(pos, neg, margin, reduction):
    return _margin(pos, neg, margin, reduction), (pos, neg)


def _margin_bwd(margin, reduction, res, g):
    pos, neg = res
    return _call(lambda g, p, n: _fl.max_margin_loss_backward(g if g.ndim else float(g), p, n,
                                                              margin, reduction),
                 (_sds(pos.shape, pos.dtype), _sds(neg.shape, neg.dtype)), g, pos, neg)


_margin.defvjp(_margin_fwd, _margin_bwd)


def max_margin_loss(pos, neg, margin=1.0, reduction="sum"):
    """:func:`fastlin.max_margin_loss`: ``max(0, margin - pos + neg)`` reduced."""
    (pos, neg), back = _floats(pos, neg)
    return _back(_margin(pos, neg, float(margin), str(reduction)), back)


# ------------------------------------------------------------- pairwise reductions

@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _topk(XA, XB, k, metric, largest, VI):
    m = XA.shape[0]
    itype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    return _call(lambda a, b: _fl.cdist_topk(a, b, k, metric, largest=largest, VI=VI),
                 (_sds((m, k), XA.dtype), _sds((m, k), itype)), XA, XB)


def _topk_fwd(XA, XB, k, metric, largest, VI):
    d, i = _topk(XA, XB, k, metric, largest, VI)
    return (d, i), (XA, XB, d, i)


def _topk_bwd(k, metric, largest, VI, res, gs):
    XA, XB, d, i = res
    return _call(lambda g, a, b, i, d: _fl.cdist_topk_backward(g, a, b, i, metric, VI=VI,
                                                               dist=d),
                 (_sds(XA.shape, XA.dtype), _sds(XB.shape, XB.dtype)), gs[0], XA, XB, i, d)


_topk.defvjp(_topk_fwd, _topk_bwd)


def cdist_topk(XA, XB, k, metric="euclidean", *, largest=False, w=None, VI=None):
    """:func:`fastlin.cdist_topk`: (dist, idx), the k nearest (largest:
    farthest) rows of XB to each row of XA, exactly; dist differentiable in
    XA, XB and w (idx is int32, or int64 under jax_enable_x64)."""
    (XA, XB, w), back = _floats(XA, XB, w)
    XA, XB = _weighted(metric, w, XA, XB)
    return _back(_topk(XA, XB, int(k), metric, bool(largest), _const(VI)), back)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _softmin(XA, XB, b, metric, scale, VI):
    return _call(lambda a, x, bb: _fl.cdist_logsumexp(a, x, metric, scale=scale, b=bb, VI=VI),
                 _sds((XA.shape[0],), XA.dtype), XA, XB, b)


def _softmin_fwd(XA, XB, b, metric, scale, VI):
    lse = _softmin(XA, XB, b, metric, scale, VI)
    return lse, (XA, XB, b, lse)


def _softmin_bwd(metric, scale, VI, res, g):
    XA, XB, b, lse = res
    return _call(lambda g, a, x, bb, l: _fl.cdist_logsumexp_backward(
                     g, a, x, metric, scale=scale, b=bb, VI=VI, lse=l),
                 (_sds(XA.shape, XA.dtype), _sds(XB.shape, XB.dtype), _sds(b.shape, b.dtype)),
                 g, XA, XB, b, lse)


_softmin.defvjp(_softmin_fwd, _softmin_bwd)


def cdist_logsumexp(XA, XB, metric="sqeuclidean", *, scale=-1.0, b=None, w=None, VI=None):
    """:func:`fastlin.cdist_logsumexp`: ``log(sum_j b_j exp(scale D_ij))``
    per row of XA without the distance matrix; differentiable in XA, XB, b
    and w."""
    (XA, XB, b, w), back = _floats(XA, XB, b, w)
    if b is None:
        b = jnp.ones((XB.shape[0],), XA.dtype)
    XA, XB = _weighted(metric, w, XA, XB)
    return _back(_softmin(XA, XB, b, metric, float(scale),
                          _const(VI)), back)
