"""Public normalize and normalize_backward."""
from . import _simd
from ._common import backward_same_shape, forward_same_shape
from ._validation import check_eps

_k = _simd.kernels("_normalize")

__all__ = ["normalize", "normalize_backward"]


def normalize(x, axis=-1, eps=1e-12, *, out=None):
    r"""L2-normalize `x` along `axis`: ``x / max(||x||_2, eps)``.

    The semantics of ``torch.nn.functional.normalize(x, p=2, dim=axis, eps=eps)``
    and of ``sklearn.preprocessing.normalize`` for rows, without their
    failure modes: the norm never overflows or underflows.

    Parameters
    ----------
    x : array_like
        Input array of any rank (dtype rules as :func:`fastlin.softmax`).
    axis : int or tuple of ints or None, optional
        Axis or axes holding each vector; default the last.  None normalizes
        the whole array as one vector.
    eps : float, optional
        Lower bound of the divisor, default 1e-12; must be >= 0.
    out : ndarray, optional
        Where to write the result (shape of `x`, result dtype); may overlap `x`.

    Returns
    -------
    y : ndarray
        Same shape as `x`.

    Notes
    -----
    * ``[1e200, 1e200]`` and (with ``eps=0``) ``[1e-200, 1e-200]`` both give
      ``[0.7071, 0.7071]``: float64 rows whose sum of squares leaves
      ``[2**-960, 2**960]`` are rescaled by a power of two before summing.
      float32 sums its squares in float64, where they cannot overflow.
    * A zero vector gives zeros whatever `eps`, ``eps=0`` included.
    * A vector containing nan gives nan; one containing inf gives nan at the
      inf entries and 0 elsewhere (``x / inf``).

    Examples
    --------
    >>> import fastlin
    >>> fastlin.normalize([[3.0, 4.0], [0.0, 0.0]])
    array([[0.6, 0.8],
           [0. , 0. ]])
    """
    return forward_same_shape(_k.normalize_fwd, x, axis, out, check_eps(eps))


def normalize_backward(grad, x, axis=-1, eps=1e-12, *, out=None):
    r"""Backward pass of :func:`normalize`: the gradient with respect to `x`.

    Parameters
    ----------
    grad : array_like
        Gradient of the loss with respect to ``normalize(x, axis, eps)``; shape of `x`.
    x : array_like
        The forward input.
    axis, eps
        As given to :func:`normalize`.
    out : ndarray, optional
        An array of the shape and dtype of the result to write it into
        (checked; it may overlap `grad` or the saved array, as the forwards'
        `out`).

    Returns
    -------
    gx : ndarray
        The vector-Jacobian product, per vector:

        * ``||x|| >= eps`` and ``||x|| > 0``: ``(grad - y (grad . y)) / ||x||``
          with ``y = x / ||x||``;
        * ``||x|| < eps`` (the clamp is active): ``grad / eps``;
        * ``||x|| == 0`` with ``eps == 0``: 0 (the zero subgradient; the
          function is not differentiable there).

        At ``||x|| == eps`` the first branch is taken, as torch does.  The
        result is finite wherever `grad` and `x` are.

    Examples
    --------
    >>> import numpy as np, fastlin
    >>> fastlin.normalize_backward(np.array([1.0, 0.0]), np.array([3.0, 4.0]))
    array([ 0.128, -0.096])
    """
    return backward_same_shape(_k.normalize_bwd, grad, x, "x", axis, check_eps(eps),
                               out=out)
