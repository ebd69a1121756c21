"""Public softmax, log_softmax, logsumexp and their backward passes."""
import numpy as np

from . import _simd
from ._common import backward_same_shape, forward_same_shape, scalar_if_0d, store_out
from ._threads import _for_work
from ._validation import (Plan, as_array, is_weak_scalar, normalize_axes,
                          result_dtype)

_k = _simd.kernels("_softmax")

__all__ = ["softmax", "log_softmax", "logsumexp", "softmax_backward",
           "log_softmax_backward", "logsumexp_backward"]


def softmax(x, axis=None, *, out=None):
    r"""Softmax function, ``exp(x) / sum(exp(x))`` along `axis`.

    A drop-in for :func:`scipy.special.softmax` (same defaults and results),
    computed in one fused, multithreaded pass per slice.

    Parameters
    ----------
    x : array_like
        Input array.  float32 is computed in float32 (sums in float64) and
        returned as float32; integer and bool input is computed in float64.
    axis : None or int or tuple of ints, optional
        Axis or axes to compute values along.  Default None: the whole array.
    out : ndarray, optional
        Where to write the result: the shape of `x` and the result dtype.  It
        may be `x` itself or overlap it.

    Returns
    -------
    s : ndarray
        Same shape as `x`; sums to 1 along `axis`.  A scalar for 0-d input.

    Notes
    -----
    Computed as ``exp(x - max) / sum(exp(x - max))`` like scipy, so a slice
    holding +inf or only -inf gives nan, as in scipy.  The exponential is a
    vectorized polynomial with error below 1.25 ulp.

    Examples
    --------
    >>> import fastlin
    >>> fastlin.softmax([1.0, 2.0, 3.0])
    array([0.09003057, 0.24472847, 0.66524096])
    """
    return forward_same_shape(_k.softmax_fwd, x, axis, out)


def log_softmax(x, axis=None, *, out=None):
    r"""Logarithm of the softmax function, ``x - logsumexp(x)`` along `axis`.

    A drop-in for :func:`scipy.special.log_softmax`.

    Parameters
    ----------
    x : array_like
        Input array (dtype rules as :func:`softmax`).
    axis : None or int or tuple of ints, optional
        Axis or axes to compute values along.  Default None: the whole array.
    out : ndarray, optional
        Where to write the result (shape of `x`, result dtype); may overlap `x`.

    Returns
    -------
    s : ndarray
        Same shape as `x`.  A scalar for 0-d input.

    Notes
    -----
    ``(x - m) - log(sum(exp(x - m)))`` with ``m`` the slice maximum, or 0 when
    that maximum is not finite (scipy's rule): exact where ``log(softmax(x))``
    would underflow to -inf.

    Examples
    --------
    >>> import fastlin
    >>> fastlin.log_softmax([1000.0, 1.0])
    array([   0., -999.])
    """
    return forward_same_shape(_k.log_softmax_fwd, x, axis, out)


def _lse_setup(a, axis, b):
    """Shared argument handling of logsumexp and its backward."""
    a = as_array(a, "a")
    a0_shape = a.shape
    if b is not None:
        weak = is_weak_scalar(b)       # a Python scalar b keeps a's dtype (NEP 50)
        b = as_array(b, "b")
        dtype = result_dtype((a, "a")) if weak else result_dtype((a, "a"), (b, "b"))
        try:
            a, b = np.broadcast_arrays(a, b)
        except ValueError:
            raise ValueError(
                f"a and b must be broadcastable to one shape, got {a.shape} and {b.shape}"
            ) from None
        b = np.atleast_1d(b)
    else:
        dtype = result_dtype((a, "a"))
    a = np.atleast_1d(a)
    axes = normalize_axes(axis, a.ndim)
    plan = Plan(a.shape, axes, rows=b is not None)
    return a, b, dtype, plan, a0_shape


def _reduced_shape(plan, keepdims):
    if keepdims:
        return plan.reduced_shape
    return tuple(s for i, s in enumerate(plan.shape) if i not in plan.axes)


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    r"""Log of the sum of exponentials, ``log(sum(b * exp(a)))``, computed stably.

    A drop-in for :func:`scipy.special.logsumexp` (same signature, defaults
    and edge cases), on real input.

    Parameters
    ----------
    a : array_like
        Input array.
    axis : None or int or tuple of ints, optional
        Axis or axes over which the sum is taken.  Default None: all elements.
    b : array_like, optional
        Weights for ``exp(a)``, broadcastable with `a`; may be negative.
        Entries of `a` whose weight is 0 are ignored, even if inf or nan --
        except, as in scipy, in a slice whose result is not finite, which is
        recomputed as ``log(sum(b * exp(a)))`` (where ``0 * inf`` is nan).
    keepdims : bool, optional
        Keep the reduced axes as dimensions of size one.
    return_sign : bool, optional
        Also return the sign of the sum; the result is then ``log|sum|``.
        Without it, a negative sum gives nan.

    Returns
    -------
    res : ndarray or scalar
        The log-sum-exp; ``-inf`` for an empty or all ``-inf`` slice.
    sgn : ndarray or scalar
        Only with ``return_sign``: +1, 0 or -1 (nan for a nan slice).

    Notes
    -----
    As scipy computes it: with ``m`` the slice maximum and ``c`` the (weighted)
    count of entries equal to it, ``m + log(c) + log1p(s / c)`` where ``s``
    sums ``b exp(a - m)`` over the other entries -- ``log1p`` keeps the digits
    when one term dominates.  A non-finite result is recomputed by the direct
    formula, which gives scipy's answers for inf and nan input.

    Examples
    --------
    >>> import fastlin
    >>> float(fastlin.logsumexp([1000.0, 1000.0]))
    1000.6931471805599
    >>> fastlin.logsumexp([1.0, 2.0], b=[1.0, -1.0], return_sign=True)
    (np.float64(1.5413248546129181), np.float64(-1.0))
    """
    a, b, dtype, plan, _ = _lse_setup(a, axis, b)
    rshape = _reduced_shape(plan, keepdims)
    if plan.n == 0 or plan.size == 0:
        res = np.full(rshape, -np.inf, dtype)
        sgn = np.sign(res)
    elif b is None:
        res = np.empty((plan.outer, plan.inner), dtype)
        _k.logsumexp_fwd(plan.blocks(a, dtype), res, _for_work(plan.size))
        res = res.reshape(rshape)
        if return_sign:
            sgn = np.where(res == -np.inf, 0.0, 1.0).astype(dtype)
            sgn[np.isnan(res)] = np.nan
    else:
        res = np.empty(plan.outer, dtype)
        sgn = np.empty(plan.outer, dtype)
        _k.logsumexp_w_fwd(plan.blocks(a, dtype).reshape(plan.outer, plan.n),
                           plan.blocks(b, dtype).reshape(plan.outer, plan.n),
                           res, sgn, bool(return_sign), _for_work(plan.size))
        res = res.reshape(rshape)
        sgn = sgn.reshape(rshape)
    if return_sign:
        return scalar_if_0d(res), scalar_if_0d(sgn)
    return scalar_if_0d(res)


def softmax_backward(grad, y, axis=None, *, out=None):
    r"""Backward pass of :func:`softmax`: the gradient with respect to `x`.

    Parameters
    ----------
    grad : array_like
        Gradient of the loss with respect to the softmax output; shape of `y`.
    y : array_like
        The forward output, ``y = softmax(x, axis)``.
    axis : None or int or tuple of ints, optional
        The `axis` given to the forward call.
    out : ndarray, optional
        An array of the shape and dtype of the result to write it into
        (checked; it may overlap `grad` or the saved array, as the forwards'
        `out`).

    Returns
    -------
    gx : ndarray
        ``y * (grad - sum(grad * y, axis))``: the vector-Jacobian product, the
        gradient of ``sum(grad * softmax(x))`` with respect to `x`.

    Notes
    -----
    Where the forward output has exact zeros (underflowed probabilities) the
    gradient is exactly 0 there, and finite elsewhere, for finite `grad`.

    Examples
    --------
    >>> import numpy as np, fastlin
    >>> y = fastlin.softmax(np.array([1.0, 2.0, 3.0]))
    >>> fastlin.softmax_backward(np.array([1.0, 0.0, 0.0]), y)
    array([ 0.08192507, -0.02203304, -0.05989202])
    """
    return backward_same_shape(_k.softmax_bwd, grad, y, "y", axis, out=out)


def log_softmax_backward(grad, y, axis=None, *, out=None):
    r"""Backward pass of :func:`log_softmax`: the gradient with respect to `x`.

    Parameters
    ----------
    grad : array_like
        Gradient of the loss with respect to the output; shape of `y`.
    y : array_like
        The forward output, ``y = log_softmax(x, axis)``.
    axis : None or int or tuple of ints, optional
        The `axis` given to the forward call.
    out : ndarray, optional
        An array of the shape and dtype of the result to write it into
        (checked; it may overlap `grad` or the saved array, as the forwards'
        `out`).

    Returns
    -------
    gx : ndarray
        ``grad - exp(y) * sum(grad, axis)``.

    Notes
    -----
    Entries with ``y = -inf`` (probability exactly 0) get ``grad`` itself:
    finite wherever `grad` is.

    Examples
    --------
    >>> import numpy as np, fastlin
    >>> y = fastlin.log_softmax(np.array([0.0, 0.0]))
    >>> fastlin.log_softmax_backward(np.array([1.0, 0.0]), y)
    array([ 0.5, -0.5])
    """
    return backward_same_shape(_k.log_softmax_bwd, grad, y, "y", axis, out=out)


def _unbroadcast(g, shape):
    """Sum `g` down to `shape` (the inverse of numpy broadcasting)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead > 0 else g
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


def logsumexp_backward(grad, a, axis=None, b=None, keepdims=False, *, out=None):
    r"""Backward pass of :func:`logsumexp`: the gradient with respect to `a`.

    Parameters
    ----------
    grad : array_like
        Gradient of the loss with respect to ``logsumexp(a, axis, b, keepdims)``:
        that output's shape, or anything broadcastable to it (a scalar for the
        default ``axis=None``).
    a, axis, b, keepdims
        As given to :func:`logsumexp`.
    out : ndarray, optional
        An array of the shape and dtype of `ga` to write the gradient into
        (checked; it may overlap the inputs).

    Returns
    -------
    ga : ndarray
        ``grad * b * exp(a - lse)`` broadcast over the reduced axes (the
        softmax weights), with the shape of `a` (summed over any axes along
        which `a` was broadcast against `b`).

    Notes
    -----
    * A slice whose sum is 0 (all entries -inf, or all weights 0) has no
      defined gradient; fastlin returns 0 there (torch returns nan).
    * Entries with weight ``b == 0`` get 0.
    * With weights whose sum is negative, the gradient is that of
      ``log|sum(b exp(a))|`` (the magnitude returned with ``return_sign``).

    Examples
    --------
    >>> import numpy as np, fastlin
    >>> fastlin.logsumexp_backward(1.0, np.log([1.0, 3.0]))
    array([0.25, 0.75])
    """
    return store_out(_logsumexp_backward(grad, a, axis, b, keepdims), out, ("ga",))


def _logsumexp_backward(grad, a, axis, b, keepdims):
    a, b, dtype, plan, a0_shape = _lse_setup(a, axis, b)
    weak = is_weak_scalar(grad)
    grad = as_array(grad, "grad")
    rshape = _reduced_shape(plan, keepdims)
    try:
        grad = np.broadcast_to(grad, rshape)
    except ValueError:
        raise ValueError(
            f"grad must have the shape of logsumexp's output {rshape}, got {grad.shape}"
        ) from None
    if not weak:
        dtype = np.result_type(dtype, result_dtype((grad, "grad")))
    ga = np.zeros((plan.outer, plan.n, plan.inner), dtype)
    if plan.size:
        if b is None:
            gout = np.ascontiguousarray(grad, dtype).reshape(plan.outer, plan.inner)
            _k.logsumexp_bwd(gout, plan.blocks(a, dtype), ga, _for_work(plan.size))
        else:
            gout = np.ascontiguousarray(grad, dtype).reshape(plan.outer)
            _k.logsumexp_w_bwd(gout, plan.blocks(a, dtype).reshape(plan.outer, plan.n),
                               plan.blocks(b, dtype).reshape(plan.outer, plan.n),
                               ga.reshape(plan.outer, plan.n), _for_work(plan.size))
    ga = np.ascontiguousarray(plan.unblock(ga))
    return _unbroadcast(ga, a0_shape)
