"""fastlin's ops for TensorFlow: differentiable in eager mode and inside
``tf.function``.

Each op is a ``tf.custom_gradient`` whose forward and backward run fastlin's
kernels through ``tf.numpy_function`` (on the host CPU; the graph keeps the
static shapes).  Names and defaults follow TensorFlow's (``tf.nn.softmax(x,
axis=-1)``, ``tf.reduce_logsumexp(x, axis=None, keepdims=False)``,
``tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)`` -- whose epsilon bounds
the *squared* norm; fastlin's ``eps`` bounds the norm, so ``epsilon`` is
passed on as ``sqrt(epsilon)``); the rest follow fastlin's.

Dtypes: float32 and float64 natively; float16 and bfloat16 in float32,
returned in their own dtype.  Gradients with respect to every tensor
argument (VI is a constant of the metric).  A second derivative raises
``NotImplementedError`` instead of being silently zero.

Requires ``tensorflow`` (``pip install tensorflow-cpu``); importing
``fastlin`` never imports it.
"""
import math

import numpy as np
try:
    import tensorflow as tf
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"fastlin.tensorflow needs TensorFlow ({e}); install it with "
                      "pip install 'fastlin[tensorflow]'") from e

import fastlin as _fl

__all__ = ["softmax", "log_softmax", "reduce_logsumexp", "l2_normalize", "cdist", "pdist",
           "mahalanobis", "max_margin_loss", "cdist_topk", "cdist_logsumexp"]

_VIA_FLOAT32 = (tf.float16, tf.bfloat16)


def _floats(*xs):
    """The tensors in one floating dtype (float16 / bfloat16 as float32), and
    the dtype to give back."""
    xs = [None if x is None else tf.convert_to_tensor(x) for x in xs]
    dts = [x.dtype for x in xs if x is not None]
    if any(not d.is_floating for d in dts):
        raise TypeError(f"fastlin.tensorflow: floating tensors expected, got {dts}")
    back = next((d for d in dts if d in _VIA_FLOAT32), None)
    work = tf.float64 if tf.float64 in dts else tf.float32
    return [None if x is None else tf.cast(x, work) for x in xs], back


def _back(r, back):
    if back is None:
        return r
    if isinstance(r, (tuple, list)):
        return tuple(tf.cast(x, back) if x.dtype.is_floating else x for x in r)
    return tf.cast(r, back)


def _np_call(fn, args, dtypes, shapes):
    """fn on the tensors' NumPy values; results of the given dtypes, with
    their static shapes set."""
    single = not isinstance(dtypes, (tuple, list))
    dts = [dtypes] if single else list(dtypes)

    def host(*a):
        r = fn(*a)
        r = (r,) if single else r
        return [np.asarray(x, dtype=d.as_numpy_dtype) for x, d in zip(r, dts)]

    outs = tf.numpy_function(host, list(args), dts, stateful=False)
    if not isinstance(outs, (list, tuple)):
        outs = [outs]           # one output comes back bare
    for o, s in zip(outs, [shapes] if single else shapes):
        o.set_shape(s)
    return outs[0] if single else tuple(outs)


def _no_second(grads, deps):
    """The first derivative `grads`, passed through an identity whose own
    gradient raises: an outer tape differentiating it (through `deps`, the
    forward's tensors the backward read, which connect it to the inputs)
    gets a clear error instead of a silent None."""
    n = len(grads)

    @tf.custom_gradient
    def ident(*t):
        def fail(*_):
            raise NotImplementedError("fastlin.tensorflow: second derivatives are not "
                                      "provided (the backward passes are not differentiable)")
        out = [tf.identity(x) for x in t[:n]]
        return (out if n > 1 else out[0]), fail
    out = ident(*grads, *deps)
    return tuple(out) if n > 1 else (out,)


def _neg_axes(axis, ndim):
    if axis is None:
        return tuple(range(-ndim, 0))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted((a % ndim) - ndim for a in axes)) if ndim else axes


def _reduced_shape(shape, axes, keepdims):
    nd = len(shape)
    ax = {a % nd for a in axes}
    return [1 if i in ax else s for i, s in enumerate(shape) if keepdims or i not in ax]


# ------------------------------------------------------------- row ops

def _row_op(name, fwd, bwd, x, axis, saved="y"):
    (x,), back = _floats(x)
    ax = _neg_axes(axis, x.shape.rank)

    @tf.custom_gradient
    def op(x):
        y = _np_call(lambda a: fwd(a, ax), [x], x.dtype, x.shape)

        def grad(g):
            s = y if saved == "y" else x
            gx = _np_call(lambda g, s: bwd(g, s, ax), [g, s], x.dtype, x.shape)
            return _no_second([gx], [x, y])[0]
        return y, grad
    return _back(op(x), back)


def softmax(x, axis=-1):
    """``tf.nn.softmax(x, axis)`` by fastlin's kernel."""
    return _row_op("softmax", lambda a, ax: _fl.softmax(a, axis=ax),
                   lambda g, y, ax: _fl.softmax_backward(g, y, axis=ax), x, axis)


def log_softmax(x, axis=-1):
    """``tf.nn.log_softmax(x, axis)`` by fastlin's kernel."""
    return _row_op("log_softmax", lambda a, ax: _fl.log_softmax(a, axis=ax),
                   lambda g, y, ax: _fl.log_softmax_backward(g, y, axis=ax), x, axis)


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """``tf.math.l2_normalize(x, axis, epsilon)``: ``x / sqrt(max(sum x^2,
    epsilon))``, by fastlin's overflow-free kernel (its eps = sqrt(epsilon))."""
    eps = math.sqrt(float(epsilon))
    return _row_op("l2_normalize", lambda a, ax: _fl.normalize(a, axis=ax, eps=eps),
                   lambda g, x, ax: _fl.normalize_backward(g, x, axis=ax, eps=eps), x, axis,
                   saved="x")


def reduce_logsumexp(x, axis=None, keepdims=False):
    """``tf.reduce_logsumexp(x, axis, keepdims)`` by fastlin's kernel."""
    (x,), back = _floats(x)
    ax = _neg_axes(axis, x.shape.rank)
    keepdims = bool(keepdims)
    shape = _reduced_shape(x.shape.as_list(), ax, keepdims)

    @tf.custom_gradient
    def op(x):
        y = _np_call(lambda a: _fl.logsumexp(a, axis=ax, keepdims=keepdims), [x], x.dtype,
                     shape)

        def grad(g):
            gx = _np_call(lambda g, a: _fl.logsumexp_backward(g, a, axis=ax, keepdims=keepdims),
                          [g, x], x.dtype, x.shape)
            return _no_second([gx], [x])[0]
        return y, grad
    return _back(op(x), back)


# ------------------------------------------------------------- distances

def _weighted(metric, w, *xs):
    if w is None:
        return xs
    if _fl._distance_api._metric(metric) == "mahalanobis":
        raise TypeError("fastlin.tensorflow: w is not used with metric='mahalanobis'")
    sw = tf.sqrt(w)
    return tuple(x * sw for x in xs)


def _const(VI):
    return None if VI is None else np.asarray(VI)


def cdist(XA, XB, metric="euclidean", *, w=None, VI=None):
    """:func:`fastlin.cdist` (exact distances, scipy's metrics); differentiable
    in XA, XB and w (VI a constant)."""
    (XA, XB, w), back = _floats(XA, XB, w)
    XA, XB = _weighted(metric, w, XA, XB)
    V = _const(VI)
    shape = [XA.shape[0], XB.shape[0]]

    @tf.custom_gradient
    def op(a, b):
        D = _np_call(lambda a, b: _fl.cdist(a, b, metric, VI=V), [a, b], a.dtype, shape)

        def grad(g):
            ga, gb = _np_call(lambda g, a, b, d: _fl.cdist_backward(g, a, b, metric, VI=V,
                                                                     dist=d),
                              [g, a, b, D], (a.dtype, a.dtype), (a.shape, b.shape))
            return _no_second([ga, gb], [a, b])
        return D, grad
    return _back(op(XA, XB), back)


def pdist(X, metric="euclidean", *, w=None, VI=None):
    """:func:`fastlin.pdist` (condensed, scipy's order); differentiable in X, w."""
    (X, w), back = _floats(X, w)
    X, = _weighted(metric, w, X)
    V = _const(VI)
    m = X.shape[0]
    shape = [None if m is None else m * (m - 1) // 2]

    @tf.custom_gradient
    def op(x):
        d = _np_call(lambda a: _fl.pdist(a, metric, VI=V), [x], x.dtype, shape)

        def grad(g):
            gx = _np_call(lambda g, a, d: _fl.pdist_backward(g, a, metric, VI=V, dist=d),
                          [g, x, d], x.dtype, x.shape)
            return _no_second([gx], [x])[0]
        return d, grad
    return _back(op(X), back)


def mahalanobis(X, mean, cov=None, *, VI=None, cholesky=None, squared=False):
    """:func:`fastlin.mahalanobis` (exactly one of cov, VI, cholesky);
    differentiable in X, mean and the matrix given."""
    given = [(k, v) for k, v in (("cov", cov), ("VI", VI), ("cholesky", cholesky))
             if v is not None]
    if len(given) != 1:
        raise ValueError("fastlin.tensorflow.mahalanobis: give exactly one of cov, VI or "
                         f"cholesky, got {len(given)}")
    kind, M = given[0]
    (X, mean, M), back = _floats(X, mean, M)
    squared = bool(squared)

    @tf.custom_gradient
    def op(x, m, M):
        d = _np_call(lambda x, m, M: _fl.mahalanobis(x, m, **{kind: M}, squared=squared),
                     [x, m, M], x.dtype, x.shape[:-1])

        def grad(g):
            r = _np_call(lambda g, x, m, M: _fl.mahalanobis_backward(g, x, m, **{kind: M},
                                                                     squared=squared),
                         [g, x, m, M], (x.dtype,) * 3, (x.shape, m.shape, M.shape))
            return _no_second(list(r), [x, m, M])
        return d, grad
    return _back(op(X, mean, M), back)


def max_margin_loss(pos, neg, margin=1.0, reduction="sum"):
    """:func:`fastlin.max_margin_loss`: ``max(0, margin - pos + neg)`` reduced."""
    (pos, neg), back = _floats(pos, neg)
    margin, reduction = float(margin), str(reduction)
    shape = [] if reduction != "none" else neg.shape

    @tf.custom_gradient
    def op(p, n):
        loss = _np_call(lambda p, n: _fl.max_margin_loss(p, n, margin, reduction), [p, n],
                        p.dtype, shape)

        def grad(g):
            gp, gn = _np_call(lambda g, p, n: _fl.max_margin_loss_backward(
                                  g if np.ndim(g) else float(g), p, n, margin, reduction),
                              [g, p, n], (p.dtype, p.dtype), (p.shape, n.shape))
            return _no_second([gp, gn], [p, n])
        return loss, grad
    return _back(op(pos, neg), back)


# ------------------------------------------------------------- pairwise reductions

def cdist_topk(XA, XB, k, metric="euclidean", *, largest=False, w=None, VI=None):
    """:func:`fastlin.cdist_topk`: (dist, idx int64), the k nearest (largest:
    farthest) rows of XB to each row of XA, exactly; dist differentiable in
    XA, XB and w."""
    (XA, XB, w), back = _floats(XA, XB, w)
    XA, XB = _weighted(metric, w, XA, XB)
    V, k, largest = _const(VI), int(k), bool(largest)
    shape = [XA.shape[0], k]
    d, i = _np_call(lambda a, b: _fl.cdist_topk(a, b, k, metric, largest=largest, VI=V),
                    [tf.stop_gradient(XA), tf.stop_gradient(XB)], (XA.dtype, tf.int64),
                    (shape, shape))

    @tf.custom_gradient
    def op(a, b):
        def grad(g):
            ga, gb = _np_call(lambda g, a, b, i, d: _fl.cdist_topk_backward(
                                  g, a, b, i, metric, VI=V, dist=d),
                              [g, a, b, i, d], (a.dtype, a.dtype), (a.shape, b.shape))
            return _no_second([ga, gb], [a, b])
        return tf.identity(d), grad
    return _back(op(XA, XB), back), i


def cdist_logsumexp(XA, XB, metric="sqeuclidean", *, scale=-1.0, b=None, w=None, VI=None):
    """:func:`fastlin.cdist_logsumexp`: ``log(sum_j b_j exp(scale D_ij))`` per
    row of XA without the distance matrix; differentiable in XA, XB, b, w."""
    (XA, XB, b, w), back = _floats(XA, XB, b, w)
    if b is None:
        b = tf.ones([XB.shape[0]], XA.dtype)
    XA, XB = _weighted(metric, w, XA, XB)
    V, scale = _const(VI), float(scale)

    @tf.custom_gradient
    def op(a, x, bb):
        lse = _np_call(lambda a, x, bb: _fl.cdist_logsumexp(a, x, metric, scale=scale, b=bb,
                                                            VI=V),
                       [a, x, bb], a.dtype, [a.shape[0]])

        def grad(g):
            r = _np_call(lambda g, a, x, bb, l: _fl.cdist_logsumexp_backward(
                             g, a, x, metric, scale=scale, b=bb, VI=V, lse=l),
                         [g, a, x, bb, lse], (a.dtype,) * 3, (a.shape, x.shape, bb.shape))
            return _no_second(list(r), [a, x, bb])
        return lse, grad
    return _back(op(XA, XB, b), back)
