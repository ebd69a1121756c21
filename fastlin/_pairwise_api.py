"""Pairwise reductions that never build the distance matrix: the k nearest
(cdist_topk) and the soft-min (cdist_logsumexp), with their backward passes.

The forwards sweep cdist's own tiles (the same operands, GEMM calls and
epilogue, _distance.cdist_reduce) and fold each tile row into per-row state
as it is made: a heap of the k best, or a running (shift, sum) of the
log-sum-exp.  The backward passes work on bands of rows of bounded size.
"""
import math
import numbers
import operator

import numpy as np

from . import _simd
from ._common import store_out
from ._distance_api import (TAU, _cdist_small_mode, _centre, _check_extra_args, _default_vi,
                            _direct_sqrt, _exact_marked, _gemm_operands, _grad_matrix,
                            _kernel_params, _Operands, _pair, _panels, _precision_factor,
                            _scratch,
                            _uses_blas, _weighted_backward, _weights, cdist,
                            cdist_backward)
from ._softmax_api import logsumexp
from ._threads import _for_macs, blas_single_thread
from ._validation import as_array, real_array

_k = _simd.kernels("_distance")

__all__ = ["cdist_topk", "cdist_topk_backward", "cdist_logsumexp",
           "cdist_logsumexp_backward"]

_NO_INDEX = np.iinfo(np.int64).max
# The backward passes hold bands of rows of the (rows, mB) weights: about
# this many entries each (8 MiB of float64).
_BAND_ENTRIES = 1 << 20


def _check_k(k, mB):
    if isinstance(k, (bool, np.bool_)):
        raise TypeError(f"k must be an integer, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an integer, got {type(k).__name__} {k!r}") from None
    if not 0 <= k <= mB:
        raise ValueError(f"k must satisfy 0 <= k <= {mB} (the number of rows of XB), "
                         f"got {k}")
    return k


def _check_scale(scale):
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {scale!r}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return scale


def _check_b(b, mB, dtype):
    """b as a contiguous (mB,) array of dtype, finite and non-negative; None
    stays None (every weight 1)."""
    if b is None:
        return None
    b = real_array(b, "b")
    if b.shape != (mB,):
        raise ValueError(f"b must have shape ({mB},) (one weight per row of XB), "
                         f"got {b.shape}")
    bd = np.asarray(b, dtype=np.float64)
    if not np.all(np.isfinite(bd)):
        raise ValueError("b must be finite")
    if np.any(bd < 0):
        raise ValueError(f"b must be non-negative, got a minimum of {bd.min():.6g}")
    return np.ascontiguousarray(b, dtype=dtype)


class _Pairs:
    """cdist's validation of (XA, XB, metric, w, VI), kept for the sweep."""

    def __init__(self, XA0, XB0, metric, w, VI, plan=None):
        # plan: a piece of a larger call (_distance_api._Plan)
        self.plan = plan
        if plan is not None:
            self.small = plan.small
        else:
            self.small = (_cdist_small_mode(XA0, XB0, metric)
                          if w is None and VI is None else None)
        XA, XB, self.metric, self.dtype = _pair(XA0, XB0, metric)
        self.XA, self.XB = XA, XB
        self.mA, self.mB, self.n = XA.shape[0], XB.shape[0], XA.shape[1]
        _check_extra_args(self.metric, w, VI)
        self.sw = _weights(w, self.n, self.dtype)
        self.VI = VI

    def sweep(self, per_row, state, any_grouping=False):
        """Run _distance.cdist_reduce over cdist's own tiles (mA, mB, n > 0):
        ``state(ngroups)`` gives the mode's state and output arguments.
        any_grouping: the result does not depend on how the column tiles are
        grouped (the k nearest), so the groups may follow the thread count."""
        if self.small is None and _uses_blas(self.metric, self.n):
            # BLAS on one thread for the preparatory products too, as cdist
            with blas_single_thread():
                return self._sweep(per_row, state, any_grouping)
        return self._sweep(per_row, state, any_grouping)

    def _sweep(self, per_row, state, any_grouping):
        """cdist's _cdist_run, the sweep reducing instead of storing."""
        XA, XB, metric, dtype = self.XA, self.XB, self.metric, self.dtype
        mA, mB, n = self.mA, self.mB, self.n
        L = (_precision_factor(self.VI, n, XA, XB, dtype) if metric == "mahalanobis"
             else None)
        same = XB is XA
        OA = _Operands(XA, dtype, metric, self.sw, L)
        OB = OA if same else _Operands(XB, dtype, metric, self.sw, L)
        wv = None if OA.sw is None else (OA.sw.astype(np.float64) ** 2)
        take_sqrt, scale = _kernel_params(metric)
        nt = _for_macs(mA * mB * n)
        rowbuf = np.empty((max(nt, 1), min(_k.tile_width(), mB)), dtype)
        # four work items per thread where the grouping is free, else the
        # fixed default
        items = {"items": 4 * max(nt, 1)} if any_grouping else {}
        dbl = dtype == np.float64
        A0, B0 = _nan_zero_rows(OA, OB, same)
        if self.small is not None or not _uses_blas(metric, n):
            # few columns, or a call cdist takes its short path for: every
            # entry by direct differences (the short path's row function)
            if self.small is not None:
                ts, wv = self.small, None
            else:
                ts = _direct_sqrt(take_sqrt, dtype, n, wv, A0, B0)
            ng = _k.reduce_groups(mA, mB, per_row, False, dbl, **items)
            _k.cdist_reduce(A0, B0, A0, B0, np.empty(mA), np.empty(mB), rowbuf[:, :0],
                            rowbuf, 0.0, ts, scale, nt, ng, wv=wv,
                            BT=np.ascontiguousarray(B0.T), **state(ng))
            return
        A, B, na, nb = _gemm_operands(OA, None if same else OB, dtype, nt, self.plan)
        na, nb = _exact_marked(na, dtype, A), _exact_marked(nb, dtype, B)
        if OA.zero is not None:
            # cosine: a zero row's distances are nan (cdist sets them after
            # its sweep); a nan norm sends them to the exact path, which
            # makes them nan from the nan row of A0 / B0
            na = np.where(OA.zero, np.nan, na)
            nb = np.where(OB.zero, np.nan, nb)
        Ap, Bp = _panels(mA, mB, n, dtype)
        scratch = _scratch(nt, dtype, mA, mB)
        ng = _k.reduce_groups(mA, mB, per_row, Ap is not None, dbl, **items)
        _k.cdist_reduce(A, B, A0, B0, na, nb, scratch, rowbuf, TAU[dtype], take_sqrt, scale,
                        nt, ng, wv=wv, Lm=OA.exact_factor(), Ap=Ap, Bp=Bp, **state(ng))


def _nan_zero_rows(OA, OB, same):
    """The exact rows, with nan for cosine's zero rows (whose distances are
    nan, as scipy's): copies where that changes them."""
    A0, B0 = OA.exact, OB.exact
    if OA.zero is not None and OA.zero.any():
        A0 = A0.copy()
        A0[OA.zero] = np.nan
    if same:
        return A0, A0
    if OB.zero is not None and OB.zero.any():
        B0 = B0.copy()
        B0[OB.zero] = np.nan
    return A0, B0


def cdist_topk(XA, XB, k, metric="euclidean", *, largest=False, w=None, VI=None):
    r"""The k nearest (or farthest) rows of XB to each row of XA, exactly,
    without forming the distance matrix.

    Parameters
    ----------
    XA : array_like, shape (mA, n)
        Query points.
    XB : array_like, shape (mB, n)
        Reference points.
    k : int
        How many neighbours per query, ``0 <= k <= mB``.
    metric : {'euclidean', 'sqeuclidean', 'cosine', 'mahalanobis'}
        As :func:`cdist`.
    largest : bool, optional
        The k farthest instead of the k nearest.
    w, VI : array_like, optional
        As :func:`cdist` (per-feature weights; the Mahalanobis precision
        matrix, estimated from the stacked points when not given).

    Returns
    -------
    dist : ndarray, shape (mA, k)
        The distances, in cdist's dtype (float32 when both inputs are).
    idx : ndarray of int64, shape (mA, k)
        Their rows of XB.

    Notes
    -----
    **Exact.**  Every distance is bitwise the entry ``cdist(XA, XB, metric,
    w=w, VI=VI)`` holds at ``(i, idx[i, q])``: the sweep computes cdist's own
    tiles (the same operands, GEMM calls and exact recomputation of near
    pairs) and keeps the best entries of each row as they are made.  The
    indices are the true k nearest (farthest) of those distances, sorted,
    ties broken by the lower index; nan distances (cosine's zero rows, nan
    input) sort last, by index, as ``np.argsort(D, kind='stable')`` orders
    them.  Hence ``idx`` equals ``np.argsort(D, axis=1, kind='stable')[:,
    :k]`` (``largest``: the same of ``-D``).

    **Memory.**  The outputs, one tile of cdist per thread (at most 1 MiB
    each), the operands cdist prepares (centred or weighted copies of XA and
    XB, as cdist's), and per-group heaps: the sweep of each block of rows is
    split into a few groups of column tiles for the threads, each keeping
    its own k best per row, at most 2^21 entries (32 MiB) in all beyond one
    group.  Nothing of size mA x mB.  Threads share rows and column groups;
    the result does not depend on their number.
    """
    return _topk(XA, XB, k, metric, largest, w, VI)


def _topk(XA, XB, k, metric, largest, w, VI, plan=None):
    P = _Pairs(XA, XB, metric, w, VI, plan)
    k = _check_k(k, P.mB)
    largest = bool(largest)
    dist = np.empty((P.mA, k), P.dtype)
    idx = np.empty((P.mA, k), np.int64)
    if not P.mA or not k:
        return dist, idx
    if not P.n:
        # no columns: every distance is 0 (cosine: 0 / 0, nan); the first k
        dist[...] = np.nan if P.metric == "cosine" else 0
        idx[...] = np.arange(k)
        return dist, idx

    def state(ng):
        return dict(kv=np.full((ng, P.mA, k), np.nan, P.dtype),
                    ki=np.full((ng, P.mA, k), _NO_INDEX, np.int64),
                    largest=largest, dist_out=dist, idx_out=idx)

    P.sweep(k, state, any_grouping=True)
    return dist, idx


def cdist_logsumexp(XA, XB, metric="sqeuclidean", *, scale=-1.0, b=None, w=None, VI=None):
    r"""The soft-min of the distances from each row of XA to the rows of XB,
    ``log(sum_j b_j exp(scale D_ij))``, without forming D.

    Parameters
    ----------
    XA : array_like, shape (mA, n)
    XB : array_like, shape (mB, n)
    metric : {'sqeuclidean', 'euclidean', 'cosine', 'mahalanobis'}
        As :func:`cdist`; the default is the squared Euclidean distance (the
        Gaussian kernel's).
    scale : float, optional
        Factor of the distances, of either sign (default -1: the soft-min;
        ``-1 / (2 sigma^2)`` gives a Gaussian kernel density; positive: a
        soft-max).  Finite.
    b : array_like, shape (mB,), optional
        Non-negative weights of the terms (default all 1).  Terms whose
        weight is 0 are left out, whatever their distance.
    w, VI : array_like, optional
        As :func:`cdist`.

    Returns
    -------
    lse : ndarray, shape (mA,)
        In cdist's dtype.  A row without terms (every weight 0, or mB = 0)
        or whose every term is ``exp(-inf)`` gives -inf; a nan distance
        with a nonzero weight gives nan; an infinite term gives +inf.

    Notes
    -----
    The distances are cdist's (its tiles and exactness guarantee).  Each row
    is shifted by its largest term exponent, found tile by tile (an online
    maximum: a larger one rescales the running sum), and summed in double:
    the error is that of :func:`logsumexp` on ``scale * D`` (the exponent
    formed in the input dtype, as there), plus ``|scale|`` times cdist's
    error in D.  Memory: the output, one tile of cdist per thread, cdist's
    operand copies and O(mA) state per group of column tiles; nothing of
    size mA x mB.  The groups are combined in a fixed order: the result does
    not depend on the thread count.
    """
    return _logsumexp_pairs(XA, XB, metric, scale, b, w, VI)


def _logsumexp_pairs(XA, XB, metric, scale, b, w, VI, plan=None):
    scale = _check_scale(scale)
    P = _Pairs(XA, XB, metric, w, VI, plan)
    bb = _check_b(b, P.mB, P.dtype)
    out = np.empty(P.mA, P.dtype)
    if not P.mA:
        return out
    if not P.mB:
        out[...] = -np.inf          # an empty sum
        return out
    if not P.n:
        # no columns: every distance is 0 (cosine: 0 / 0, nan)
        terms = np.full(P.mB, np.nan if P.metric == "cosine" else 0.0, P.dtype) * scale
        out[...] = logsumexp(terms) if bb is None else logsumexp(terms, b=bb)
        return out

    def state(ng):
        return dict(lm=np.full((ng, P.mA), -np.inf), ls=np.zeros((ng, P.mA)), bw=bb,
                    lscale=scale, lse_out=out)

    P.sweep(1, state)
    return out


def _check_idx(idx, mA, mB):
    idx = as_array(idx, "idx")
    if idx.ndim != 2 or idx.shape[0] != mA:
        raise ValueError(f"idx must have shape ({mA}, k) (cdist_topk's indices), "
                         f"got {idx.shape}")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"idx must hold integers (cdist_topk's int64 indices), "
                        f"got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= mB):
        raise ValueError(f"idx must index the rows of XB, 0 <= idx < {mB}, got values "
                         f"from {idx.min()} to {idx.max()}")
    return np.asarray(idx, dtype=np.intp)


def cdist_topk_backward(grad, XA, XB, idx, metric="euclidean", *, w=None, VI=None,
                        dist=None, out=None):
    r"""Backward pass of :func:`cdist_topk`.

    Parameters
    ----------
    grad : array_like, shape (mA, k)
        Gradient of the loss with respect to the returned distances.
    XA, XB, metric, w, VI
        As given to :func:`cdist_topk` (VI, given or estimated, is a constant:
        as :func:`cdist_backward`).
    idx : array_like of int, shape (mA, k)
        The indices :func:`cdist_topk` returned.
    dist : array_like, shape (mA, k), optional
        The distances it returned; 'euclidean' and 'mahalanobis' divide by
        them instead of recomputing them from the differences.
    out : tuple of two ndarrays, optional
        Arrays of the shapes and dtype of ``(gXA, gXB)`` to write into.

    Returns
    -------
    gXA : ndarray, shape (mA, n)
    gXB : ndarray, shape (mB, n)
        The gradients of ``sum(grad * D[i, idx[i, q]])``: ``grad`` scattered
        through the selected pairs only (a row of XB picked by several
        queries sums their contributions, in query order).

    Notes
    -----
    Each pair's term is formed from its difference ``a_i - b_j`` in float64
    (no cancellation for near neighbours) and rounded to the result dtype
    once: ``2 w (a - b)`` (sqeuclidean), ``w (a - b) / D`` (euclidean; the
    zero subgradient at ``D == 0``, finite, as :func:`cdist_backward`), the
    derivative of ``1 - cos`` of the weighted rows (cosine; zero for a zero
    row), ``VI (a - b) / D`` (mahalanobis).  O(mA k n) work in bands of
    rows; no (mA, mB) array.  Single-threaded NumPy, independent of the
    thread count.
    """
    return store_out(_topk_backward(grad, XA, XB, idx, metric, w, VI, dist), out,
                     ("gXA", "gXB"))


def _topk_backward(grad, XA, XB, idx, metric, w, VI, dist):
    P = _Pairs(XA, XB, metric, w, VI)
    mA, mB, n, dtype = P.mA, P.mB, P.n, P.dtype
    idx = _check_idx(idx, mA, mB)
    k = idx.shape[1]
    g = _grad_matrix(grad, (mA, k), np.float64, "grad", "the selected distances")
    D = (None if dist is None
         else _grad_matrix(dist, (mA, k), np.float64, "dist", "the selected distances"))
    A = np.asarray(P.XA, dtype=np.float64)
    B = np.asarray(P.XB, dtype=np.float64)
    gA = np.zeros((mA, n))
    gB = np.zeros((mB, n))
    if not (mA and k and n):
        return gA.astype(dtype), gB.astype(dtype)
    metric = P.metric
    wv = None if P.sw is None else np.asarray(P.sw, np.float64) ** 2
    L = None
    if metric == "mahalanobis":
        L = np.asarray(_precision_factor(VI, n, P.XA, P.XB, np.float64), np.float64)
    sw = np.ones(n) if wv is None else np.sqrt(wv)
    if metric == "cosine":
        nA, nB = _row_norms(A * sw), _row_norms(B * sw)
    rows = max(1, _BAND_ENTRIES // max(k * n, 1))
    for i0 in range(0, mA, rows):
        i1 = min(mA, i0 + rows)
        j = idx[i0:i1]                                   # (r, k)
        gi = g[i0:i1][:, :, None]                        # (r, k, 1)
        a = A[i0:i1][:, None, :]                         # (r, 1, n)
        bj = B[j]                                        # (r, k, n)
        if metric == "cosine":
            sa, sb = a * sw, bj * sw
            na_, nb_ = nA[i0:i1][:, None, None], nB[j][:, :, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                ua, ub = sa / na_, sb / nb_
                cos = np.einsum("rkn,rkn->rk", np.broadcast_to(ua, ub.shape), ub)[:, :, None]
                ta = -(ub - cos * ua) / na_ * sw
                tb = -(ua - cos * ub) / nb_ * sw
            zero = (na_ == 0) | (nb_ == 0)
            ta = np.where(zero, 0.0, ta) * gi
            tb = np.where(zero, 0.0, tb) * gi
        else:
            diff = a - bj                                 # (r, k, n), exact differences
            if metric == "sqeuclidean":
                ta = 2 * diff * (wv if wv is not None else 1.0) * gi
            elif metric == "euclidean":
                # w (a - b) / D = sqrt(w) u / |u| with u = sqrt(w) (a - b):
                # the unit vector, formed scaled (no square under- or overflows,
                # no subnormal difference rounded by the weight)
                ta = sw * _unit(diff, None if D is None else D[i0:i1], sw) * gi
            else:                                         # mahalanobis: VI = L L^T
                z = diff @ L
                ta = _unit(z, None if D is None else D[i0:i1]) @ L.T * gi
            tb = -ta
        gA[i0:i1] = ta.sum(axis=1)
        np.add.at(gB, j.ravel(), tb.reshape(-1, n))
    return gA.astype(dtype), gB.astype(dtype)


def _row_norms(X):
    """Euclidean norms of the last axis, scaled by the largest entry first
    (as hypot): no square under- or overflows."""
    s = np.max(np.abs(X), axis=-1, initial=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = X / np.where(s > 0, s, 1.0)[..., None]
    return s * np.sqrt(np.einsum("...i,...i->...", u, u))


def _unit(V, d=None, sw=None):
    """U / |U| along the last axis for U = V sw (sw None: 1): 0 where V is 0
    (the zero subgradient), nan where V holds a nan.  V is scaled by its
    largest entry before sw multiplies it (a subnormal V keeps its digits)
    and before the squares are summed (none under- or overflows).  With d
    (the norms |U|, the forward's distances), U / d instead, with the same
    rule at d == 0."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if d is not None:
            d = d[..., None]
            return np.where(d == 0, 0.0, (V if sw is None else V * sw) / d)
        s = np.max(np.abs(V), axis=-1, initial=0.0)[..., None]
        s = np.where(np.isnan(V).any(axis=-1, keepdims=True), np.nan, s)
        U = V / np.where(s > 0, s, 1.0)
        if sw is not None:
            U = U * sw
        n = np.sqrt(np.einsum("...i,...i->...", U, U))[..., None]
        return np.where((s == 0) | (n == 0), 0.0, U / n)


def cdist_logsumexp_backward(grad, XA, XB, metric="sqeuclidean", *, scale=-1.0, b=None,
                             w=None, VI=None, lse=None, out=None):
    r"""Backward pass of :func:`cdist_logsumexp`.

    Parameters
    ----------
    grad : array_like, shape (mA,)
        Gradient of the loss with respect to the returned log-sum-exps.
    XA, XB, metric, scale, b, w, VI
        As given to :func:`cdist_logsumexp` (VI, given or estimated, is a
        constant, as in :func:`cdist_backward`).
    lse : array_like, shape (mA,), optional
        The forward's result, reused instead of recomputed.
    out : tuple of three ndarrays, optional
        Arrays of the shapes and dtype of ``(gXA, gXB, gb)`` to write into.

    Returns
    -------
    gXA : ndarray, shape (mA, n)
    gXB : ndarray, shape (mB, n)
    gb : ndarray, shape (mB,)
        With the softmax weights ``E_ij = exp(scale D_ij - lse_i)``:
        ``sum_j grad_i scale b_j E_ij dD_ij`` through :func:`cdist_backward`
        for the points, and ``gb_j = sum_i grad_i E_ij`` (also for a weight
        of 0, and for the implicit weights of 1 when b is not given).  A row
        without terms (lse -inf) contributes nothing.

    Notes
    -----
    Computed in bands of rows of XA of about 2^20 distances: each band's
    distances (cdist), weights and gradients (:func:`cdist_backward`, its
    GEMMs, given the distances), then the next; the XB sums are added band
    by band in order.  No (mA, mB) array; the result does not depend on the
    thread count.
    """
    return store_out(_lse_backward(grad, XA, XB, metric, scale, b, w, VI, lse), out,
                     ("gXA", "gXB", "gb"))


def _lse_backward(grad, XA, XB, metric, scale, b, w, VI, lse):
    scale = _check_scale(scale)
    P = _Pairs(XA, XB, metric, w, VI)
    mA, mB, n, dtype, metric = P.mA, P.mB, P.n, P.dtype, P.metric
    bb = _check_b(b, mB, dtype)
    g = _grad_matrix(grad, (mA,), dtype, "grad", "the log-sum-exps")
    lv = None if lse is None else _grad_matrix(lse, (mA,), dtype, "lse", "the log-sum-exps")
    gA = np.zeros((mA, n), dtype)
    gB = np.zeros((mB, n))
    gb = np.zeros(mB)
    if not (mA and mB):
        return gA, gB.astype(dtype), gb.astype(dtype)
    A = np.ascontiguousarray(P.XA, dtype=dtype)
    B = np.ascontiguousarray(P.XB, dtype=dtype)
    if P.sw is not None:
        # a weighted metric is the metric of the rows scaled by sqrt(w); for
        # the (translation invariant) Euclidean ones both sets are first moved
        # to a common point near them, so that a large common offset is not
        # scaled and rounded into the differences
        if metric != "cosine":
            c = _centre(A if mA else B, dtype)
            A, B = A - c, B - c
        A, B = A * P.sw, B * P.sw
    Vm = None
    if metric == "mahalanobis":
        Vm = _default_vi(np.vstack([P.XA, P.XB]), n) if VI is None else VI
    rows = max(1, _BAND_ENTRIES // mB)
    for i0 in range(0, mA, rows):
        i1 = min(mA, i0 + rows)
        D = cdist(A[i0:i1], B, metric, VI=Vm)
        if lv is None:
            T = scale * D
            lb = logsumexp(T, axis=1) if bb is None else logsumexp(T, axis=1, b=bb)
        else:
            lb = lv[i0:i1]
        # the weights W = g scale b E, E = exp(scale D - lse), and the
        # gradient of b, sum_i g_i E_ij, in one threaded pass over the band
        W = np.empty_like(D)
        nblk = _k.lse_weights_blocks(i1 - i0)
        cs, ws, rs = np.empty((nblk, mB)), np.empty((nblk, mB)), np.empty(i1 - i0)
        _k.lse_weights(D, np.ascontiguousarray(lb, dtype), np.ascontiguousarray(g[i0:i1]),
                       bb, scale, W, cs, ws, rs, _for_macs(D.size * 16))
        gb += cs.sum(axis=0)
        if not n:
            continue
        if metric == "sqeuclidean":
            # cdist_backward's own path (W = G), given W's sums
            ga, gbp = _weighted_backward(W, A[i0:i1], B, dtype, 2, rows=rs,
                                         cols=ws.sum(axis=0))
        else:
            ga, gbp = cdist_backward(W, A[i0:i1], B, metric, VI=Vm, dist=D)
        gA[i0:i1] = ga
        gB += gbp
    if P.sw is not None:
        gA *= P.sw
        gB *= P.sw
    return gA, gB.astype(dtype), gb.astype(dtype)
