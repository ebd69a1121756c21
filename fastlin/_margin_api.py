"""Public max_margin_loss and max_margin_loss_backward."""
import math
import numbers

import numpy as np

from . import _memory, _simd
from ._common import store_out
from ._threads import _for_work
from ._validation import as_array, result_dtype

_k = _simd.kernels("_margin")

__all__ = ["max_margin_loss", "max_margin_loss_backward"]

_REDUCTIONS = ("sum", "mean", "none")


def _setup(pos, neg, margin, reduction):
    pos = as_array(pos, "pos")
    neg = as_array(neg, "neg")
    if neg.ndim < 2:
        raise ValueError(f"neg must have shape (..., B, N), got {neg.ndim}-d shape {neg.shape}")
    lead = neg.shape[:-1]
    if pos.shape == lead + (1,):
        pos = pos.reshape(lead)
    if pos.shape != lead:
        raise ValueError(f"pos must have shape {lead} or {lead + (1,)} to match neg of shape "
                         f"{neg.shape}, got {pos.shape}")
    if not isinstance(margin, numbers.Real):
        raise TypeError(f"margin must be a real number, got {type(margin).__name__} {margin!r}")
    margin = float(margin)
    if not np.isfinite(margin):
        raise ValueError(f"margin must be finite, got {margin!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of 'sum', 'mean', 'none', got {reduction!r}")
    dtype = result_dtype((pos, "pos"), (neg, "neg"))
    rows = math.prod(lead)
    n = neg.shape[-1]
    p = np.ascontiguousarray(pos, dtype=dtype).reshape(rows)
    q = np.ascontiguousarray(neg, dtype=dtype).reshape(rows, n)
    return p, q, margin, dtype, neg.shape, rows, n


def max_margin_loss(pos, neg, margin=1.0, reduction="sum"):
    r"""Max-margin (hinge ranking) loss of positive against negative scores.

    ``loss[..., b, j] = max(0, margin - pos[..., b] + neg[..., b, j])``

    Parameters
    ----------
    pos : array_like, shape (..., B) or (..., B, 1)
        Score of the positive item of each row.
    neg : array_like, shape (..., B, N)
        Scores of the N negatives of each row.
    margin : float, optional
        The margin, default 1.0.
    reduction : {'sum', 'mean', 'none'}, optional
        'sum' (default) and 'mean' over all elements, fused in one pass with
        no (B, N) temporary; 'none' returns the (..., B, N) losses.

    Returns
    -------
    loss : scalar or ndarray
        The dtype of the inputs (float32 stays float32; sums accumulate in
        float64).

    Notes
    -----
    Each element is computed as ``(neg - pos) + margin`` in the inputs'
    dtype (the margin rounded to it): the two scores are usually of a size,
    so their difference loses nothing, and the margin is added to it.  The
    textbook order ``margin - pos + neg`` (torch's) loses the margin against
    large scores: pos = neg = 1e17 with margin 1 gives a loss of 0 there,
    1 here.

    A nan score gives a nan loss (torch's multi_margin_loss returns 0.0 for a
    nan score; a silent 0 hides a diverged model).

    Examples
    --------
    The common layout, scores (B, 1 + N) with the positive first:

    >>> import numpy as np, fastlin
    >>> scores = np.array([[2.0, 0.5, 1.8], [0.1, 0.3, -1.0]])
    >>> pos, neg = scores[:, 0], scores[:, 1:]
    >>> float(fastlin.max_margin_loss(pos, neg))
    2.0
    >>> gpos, gneg = fastlin.max_margin_loss_backward(1.0, pos, neg)
    >>> gpos, gneg
    (array([-1., -1.]), array([[0., 1.],
           [1., 0.]]))
    """
    p, q, margin, dtype, shape, rows, n = _setup(pos, neg, margin, reduction)
    nt = _for_work(rows * n)
    if reduction == "none":
        out = _memory.empty((rows, n), dtype)[0]
        if rows and n:
            _k.margin_none(p, q, margin, out, nt)
        return out.reshape(shape)
    total = 0.0
    if rows and n:
        total = _k.margin_sum(p, q, margin, np.empty(rows), nt)
    if reduction == "mean":
        total = total / (rows * n) if rows * n else np.nan
    return dtype.type(total)


def max_margin_loss_backward(grad, pos, neg, margin=1.0, reduction="sum", *, out=None):
    r"""Backward pass of :func:`max_margin_loss`.

    Parameters
    ----------
    grad : scalar or array_like
        Gradient of the loss with respect to the output of
        :func:`max_margin_loss` (a scalar for 'sum' / 'mean', shape (..., B, N)
        for 'none').
    pos, neg, margin, reduction
        As given to the forward call.
    out : tuple of two ndarrays, optional
        Arrays of the shapes and dtype of ``(gpos, gneg)`` to write the
        gradients into (checked; they may overlap the inputs).

    Returns
    -------
    gpos : ndarray
        The shape of `pos` as given: ``-sum_j grad[..., b, j] [v > 0]``.
    gneg : ndarray, shape (..., B, N)
        ``grad[..., b, j] [v > 0]`` with ``v = (neg - pos) + margin`` (the
        forward's order).

    Notes
    -----
    At the kink ``v == 0`` (the margin met exactly) the subgradient chosen is
    0: a pair that exactly meets its margin contributes no gradient (torch's
    margin_ranking_loss picks 1 there).  A nan ``v`` gives a nan gradient.
    """
    return store_out(_max_margin_loss_backward(grad, pos, neg, margin, reduction), out,
                     ("gpos", "gneg"))


def _max_margin_loss_backward(grad, pos, neg, margin, reduction):
    pos_shape = np.shape(pos)
    p, q, margin, dtype, shape, rows, n = _setup(pos, neg, margin, reduction)
    g = as_array(grad, "grad")
    if reduction == "none":
        if g.shape != shape:
            raise ValueError(f"grad must have the shape of the losses {shape}, got {g.shape}")
        g = np.ascontiguousarray(g, dtype=dtype).reshape(rows, n)
    else:
        if g.size != 1:
            raise ValueError(f"grad must be a scalar for reduction={reduction!r}, "
                             f"got shape {g.shape}")
        gv = g.reshape(()).astype(np.float64)
        if reduction == "mean":
            gv = gv / (rows * n) if rows * n else gv
        g = np.full((1, 1), gv, dtype)
    gpos = np.empty(rows, dtype)
    gneg = _memory.empty((rows, n), dtype)[0]
    if rows and n:
        _k.margin_bwd(p, q, margin, g, gpos, gneg, _for_work(rows * n))
    else:
        gpos[...] = 0
    return gpos.reshape(pos_shape), gneg.reshape(shape)
