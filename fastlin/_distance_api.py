"""Public cdist, pdist, squareform and the distance backward passes."""
from typing import NamedTuple

import numpy as np

from . import _memory, _simd
from ._common import STREAM_BYTES, store_out
from ._mahalanobis_api import _factor
from ._normalize_api import normalize
from ._threads import _for_macs, _for_work, blas_single_thread, empty_output
from ._validation import as_array, check_out, real_array, result_dtype

_k = _simd.kernels("_distance")
# the kernels' tile width (FL_DIST_TILE, src/fl_distance.h): scratch and the
# backward's row blocks are sized by it
_TILE = _k.tile_width()

__all__ = ["cdist", "pdist", "squareform", "cdist_backward", "pdist_backward"]

METRICS = ("euclidean", "sqeuclidean", "cosine", "mahalanobis")
# scipy's spellings of the same metrics
_ALIASES = {"euclid": "euclidean", "eu": "euclidean", "e": "euclidean",
            "sqe": "sqeuclidean", "sqeuclid": "sqeuclidean",
            "cos": "cosine", "cosine": "cosine",
            "mahal": "mahalanobis", "mah": "mahalanobis"}

# An entry takes the exact path when its GEMM value d2 < TAU * (|a|^2 + |b|^2):
# there the rounding of |a|^2 + |b|^2 - 2 a.b (about eps sqrt(k) (|a|^2+|b|^2))
# would exceed a few eps of d2.  Rows are centred first, so for spread-out
# data almost no entry qualifies; near-duplicates always do.
TAU = {np.dtype(np.float64): 2.0 ** -3, np.dtype(np.float32): 2.0 ** -1}


def _metric(metric):
    if not isinstance(metric, str):
        raise TypeError(
            f"metric must be a string, one of {', '.join(METRICS)}; got {metric!r} "
            "(use scipy.spatial.distance for callables)")
    m = metric.lower()
    m = _ALIASES.get(m, m)
    if m not in METRICS:
        raise ValueError(
            f"metric must be one of {', '.join(METRICS)}, got {metric!r} "
            "(scipy.spatial.distance.cdist supports more)")
    return m


def _matrix(X, name):
    X = as_array(X, name)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array, got {X.ndim}-d with shape {X.shape}")
    return X


def _pair(XA, XB, metric):
    """The two point sets of cdist / cdist_backward as 2-d arrays with the same
    number of columns, the metric's canonical name and the result dtype."""
    XA = _matrix(XA, "XA")
    XB = _matrix(XB, "XB")
    if XA.shape[1] != XB.shape[1]:
        raise ValueError("XA and XB must have the same number of columns, "
                         f"got {XA.shape[1]} and {XB.shape[1]}")
    return XA, XB, _metric(metric), result_dtype((XA, "XA"), (XB, "XB"))


def _check_extra_args(metric, w, VI):
    # scipy raises TypeError for an argument the metric does not take
    if VI is not None and metric != "mahalanobis":
        raise TypeError(f"VI is only used with metric='mahalanobis', not {metric!r}")
    if w is not None and metric == "mahalanobis":
        raise TypeError("w is not used with metric='mahalanobis' (fold it into VI)")


def _check_dist_out(out, shape, dtype):
    """scipy's rules for out= (ValueError throughout, as scipy raises)."""
    if isinstance(out, np.ndarray) and out.dtype != dtype:
        raise ValueError(f"out must have dtype {dtype}, got {out.dtype}")
    check_out(out, shape, dtype)
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")


def _weights(w, n, dtype):
    if w is None:
        return None
    w = np.asarray(real_array(w, "w"), dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"w must be a 1-d array of length {n} (the number of columns), "
                         f"got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("w must be finite")
    if np.any(w < 0):
        raise ValueError("w must be non-negative (scipy: 'Input weights should be all "
                         "non-negative')")
    return np.sqrt(w).astype(dtype)


def _default_vi(X, n):
    """scipy's VI when none is given: the inverse of the sample covariance of
    the points (cdist: both sets stacked; pdist: X), symmetrised here --
    np.linalg.inv leaves ~cond eps of asymmetry, which symmetric_part would
    refuse past 1e-6 for a VI the caller never passed."""
    X = np.asarray(X, dtype=np.float64)
    if X.shape[0] <= n:
        raise ValueError(
            f"VI not given and the {X.shape[0]} points cannot estimate a {n}x{n} "
            "covariance (need more points than dimensions); pass VI")
    try:
        VI = np.linalg.inv(np.atleast_2d(np.cov(X.T)))
    except np.linalg.LinAlgError:
        raise ValueError(f"VI not given and the covariance of the {X.shape[0]} points is "
                         "singular (they lie in a lower-dimensional subspace); pass VI") from None
    return (VI + VI.T) * 0.5


def _precision_factor(VI, n, XA, XB, dtype):
    """L with VI = L L^T: Mahalanobis distances are Euclidean ones of X @ L."""
    if VI is None:
        VI = _default_vi(np.vstack([XA, XB]), n)
    VI = real_array(VI, "VI")       # its own dtype: symmetric_part's tolerance
    if VI.shape != (n, n):
        raise ValueError(f"VI must have shape ({n}, {n}) for {n}-dimensional points, "
                         f"got {VI.shape}")
    if not np.all(np.isfinite(VI)):
        raise ValueError("VI must be finite")
    # mahalanobis()'s factor: symmetric part, Cholesky, or for a singular
    # positive semidefinite VI the factor from its eigenvectors
    return _factor(VI, "VI", dtype).astype(dtype)


class _Operands:
    """The rows the kernels read, for one collection of points.

    exact: the rows of the exact (direct-difference) path -- the original
           points for (sq)euclidean, whose weights stay separate (``wv``) so
           that the difference is taken before weighting; unit rows for
           cosine; the original rows for mahalanobis too, whose factor L
           (VI = L L^T) the exact path applies to the difference, so near
           points keep their digits; an infinite coordinate gives inf, or nan
           where the factor's zeros multiply it (scipy: nan).
    gemm:  the GEMM operand, centred on `centre` (and weighted, or whitened
           by L), built lazily.
    zero:  rows of zero norm under cosine (nan distances, as scipy).
    """

    def __init__(self, X, dtype, metric, sw, L):
        X0 = np.ascontiguousarray(X, dtype=dtype)
        self.zero = None
        self.L = L
        if metric == "cosine":
            if sw is not None:
                X0 = X0 * sw
            # fastlin's own normalize: no overflow or underflow in the norm,
            # so rows of 1e-160 or 1e160 get their true direction
            self.zero = ~np.any(X0 != 0, axis=1)
            # unit rows formed in float64 (one rounding to float32 at the end:
            # float32 cosine stays within scipy's float32 tests' 1e-7)
            X0 = np.ascontiguousarray(normalize(X0.astype(np.float64), axis=1, eps=0.0),
                                      dtype=dtype)
        self.exact = X0
        self.sw = sw if metric in ("euclidean", "sqeuclidean") else None

    def gemm(self, centre):
        G = self.exact - centre
        if self.L is not None:
            with np.errstate(invalid="ignore"):     # inf rows: flagged, recomputed exactly
                return np.ascontiguousarray(G @ self.L)
        return G * self.sw if self.sw is not None else G

    def exact_factor(self):
        """L in float64 for the exact path (None unless mahalanobis)."""
        return None if self.L is None else np.ascontiguousarray(self.L, dtype=np.float64)


# Squared norms outside these bounds make |a|^2 + |b|^2 - 2 a.b overflow or
# lose its digits to underflow (float32 tiles hold -2 a.b in float32): such
# rows take the exact path, which works in float64 on the differences.
_SAFE_SQNORM = {np.dtype(np.float64): (2.0 ** -900, 2.0 ** 900),
                np.dtype(np.float32): (2.0 ** -100, 2.0 ** 100)}


def _exact_marked(sq, dtype, X):
    """The squared norms for the kernel: NaN on the rows that must take the
    exact path (non-finite, or a norm outside the safe range), which makes
    every entry of such a row fail the kernel's trust test.  A row with an
    inf or nan has an inf or nan squared norm (centring, weighting and
    whitening keep it non-finite), so the range test finds those too.  A
    squared norm of 0 is safe only for a row of zeros: rows of X (the GEMM
    operands) near 1e-300 square to 0 too, and their products are 0."""
    lo, hi = _SAFE_SQNORM[dtype]
    flag = ~((sq <= hi) & ((sq >= lo) | (sq == 0)))
    zero = np.flatnonzero(sq == 0)
    if zero.size:
        flag[zero[np.any(X[zero] != 0, axis=1)]] = True
    return np.where(flag, np.nan, sq) if flag.any() else sq


_STREAM_BYTES = STREAM_BYTES     # read at call time (the tests lower it)


def _scratch(nt, dtype, rows, cols):
    """One GEMM tile per thread: up to cdist_tile_rows x tile_width (1 MiB),
    no larger than a `rows` x `cols` output needs.  Left unset: fastlin's
    GEMM writes it with beta = 0, and the kernels zero it first where BLAS
    accumulates into it."""
    tile_rows = _k.cdist_tile_rows(np.dtype(dtype) == np.float64)
    return _memory.empty((max(nt, 1), max(1, min(rows, tile_rows) * min(cols, _TILE))),
                         dtype)[0]


def _panels(rows_a, rows_b, k, dtype):
    """Buffers for the operands packed once into fastlin's GEMM panels (the
    kernels pack them), or (None, None) where the tiles use BLAS."""
    if not _k.own_gemm_enabled():
        return None, None
    dbl = dtype == np.float64
    return (_aligned(_k.packed_len(rows_a, k, False, dbl), dtype),
            _aligned(_k.packed_len(rows_b, k, True, dbl), dtype))


def _aligned(n, dtype, align=64):
    """An empty 1-d array whose data starts on a 64-byte boundary (a panel
    row of the GEMM is one or two whole cache lines)."""
    itemsize = np.dtype(dtype).itemsize
    buf = _memory.empty(n * itemsize + align, np.uint8)[0]
    off = -buf.ctypes.data % align
    return buf[off:off + n * itemsize].view(dtype)


class _Plan(NamedTuple):
    """How a piece of a larger cdist computes its entries so that they equal,
    bit for bit, those of one call on all the points (fastlin.dask): where
    the entries come from a GEMM that does not depend on a tile's position
    (fastlin's own), only the call's choices below differ between a piece
    and the whole.

    small:  the short path's take_sqrt where the whole call takes it
            (_cdist_small_mode), else None: the general path, even for a
            piece small enough for the short one.
    centre: the common point of the GEMM operands, from all the points of
            XA (_gemm_centre); None: the rows as they are.
    """
    small: object
    centre: object


def _gemm_centre(OA, dtype, nt):
    """(centre, na): the point the GEMM operands are centred on, or None
    where the rows serve as they are; na, OA's squared norms where they were
    computed for that choice (else None).

    Centring on a common point removes the cancellation a large offset causes;
    when the offset is already small next to the spread (|c|^2 <= mean |x|^2
    / 4, so |a|^2 + |b|^2 at most 4/3 of the centred value) the rows are used
    as they are: no copies, which otherwise cost ~10% of a cdist.
    """
    c = _centre(OA.exact, dtype)
    if OA.sw is None and OA.L is None:
        na = np.empty(len(OA.exact))
        _k.sqnorms(OA.exact, na, nt)
        finite = na[np.isfinite(na)]
        # the mean as a sum of shares: squared norms near 1e308 would
        # overflow a plain sum (and warn)
        if finite.size and _offset_is_small(c, float((finite / finite.size).sum())):
            return None, na
    return c, None


def _offset_is_small(c, mean_sqnorm):
    with np.errstate(over="ignore"):      # |c| beyond 1e154: inf, and centred
        cc = float(np.dot(c.astype(np.float64), c.astype(np.float64)))
    return cc <= 0.25 * mean_sqnorm


def _gemm_operands(OA, OB, dtype, nt, plan=None):
    """GEMM operands and their squared norms (OB None: the same points),
    centred as _gemm_centre (or `plan`) says."""
    c, na = _gemm_centre(OA, dtype, nt) if plan is None else (plan.centre, None)
    if c is None:
        A = OA.exact
        if na is None:
            na = np.empty(len(A))
            _k.sqnorms(A, na, nt)
        if OB is None:
            return A, A, na, na
        nb = np.empty(len(OB.exact))
        _k.sqnorms(OB.exact, nb, nt)
        return A, OB.exact, na, nb
    A = OA.gemm(c)
    na = np.empty(len(A))
    _k.sqnorms(A, na, nt)
    if OB is None:
        return A, A, na, na
    B = OB.gemm(c)
    nb = np.empty(len(B))
    _k.sqnorms(B, nb, nt)
    return A, B, na, nb


def _plan_stats(X, metric, dtype, sw):
    """For a plan made piece by piece: (count, mean) of the finite squared
    norms of the GEMM rows of X (one piece of XA), as _gemm_centre weighs
    them; (0, 0) where the rows are always centred (weights, whitening)."""
    O = _Operands(X, dtype, metric, sw, None)
    if O.sw is not None or metric == "mahalanobis" or not len(O.exact):
        return np.zeros(2)
    na = np.empty(len(O.exact))
    _k.sqnorms(O.exact, na, 1)
    finite = na[np.isfinite(na)]
    return np.array([finite.size, float((finite / max(finite.size, 1)).sum())])


def _plan_centre(sample, metric, dtype, sw):
    """_centre of all of XA from its rows ``XA[::max(1, mA // 256)]`` alone."""
    return _centre(_Operands(sample, dtype, metric, sw, None).exact, dtype)


def _plan_sample_step(mA):
    """The stride of the rows _centre averages, for mA rows."""
    return max(1, mA // _CENTRE_SAMPLE)


def _make_plan(centre, stats, metric, w):
    """The _Plan of a whole call that takes the general path, from its
    pieces' _plan_stats (rows of (count, mean)): the centring choice is
    _gemm_centre's, the mean of the squared norms combined from the pieces'
    means (to rounding)."""
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, 2)
    total = stats[:, 0].sum()
    can_skip = metric == "cosine" or (metric != "mahalanobis" and w is None)
    if can_skip and total and _offset_is_small(centre, float(
            (stats[:, 1] * (stats[:, 0] / total)).sum())):
        return _Plan(None, None)
    return _Plan(None, centre)


_CENTRE_SAMPLE = 256


def _centre(X, dtype):
    """A common point near the rows: the mean of fewer than 2 * _CENTRE_SAMPLE
    of them, evenly strided (_plan_sample_step).  Any point serves (distances are translation invariant);
    it only has to be close to the data next to the data's offset, which a
    strided sample's mean is, without a pass over all of X.  Depends on the
    shape only (never on the thread count); non-finite means give 0."""
    X = np.asarray(X)
    if not len(X):
        return np.zeros(X.shape[1], dtype)
    c = X[::_plan_sample_step(len(X))].mean(axis=0, dtype=np.float64)
    c = np.where(np.isfinite(c), c, 0.0)
    return c.astype(dtype)


# Inputs of at most this many elements skip _direct_sqrt's scans.
_DIRECT_SCAN_MIN = 1 << 14


def _direct_sqrt(take_sqrt, dtype, k, w, *arrays):
    """take_sqrt for the direct path: 2 (float64, a root taken) when some pair
    could have a squared distance out of double's safe range -- a coordinate
    of magnitude 2^500 / sqrt(k max w) or more (an overflow), or a nonzero one
    below 2^-427 (only such values differ by less than 2^-480, whose squares
    fall into the subnormals) -- so the kernel checks its roots for those and
    recomputes them scaled; else take_sqrt as it is (that check costs ~10% at
    one thread).  float32 inputs cannot overflow or underflow double's squares
    (absurd weights aside)."""
    if not take_sqrt or dtype != np.float64:
        return int(take_sqrt)
    if sum(X.size for X in arrays) <= _DIRECT_SCAN_MIN:
        # small inputs: the kernel's check costs less than these scans
        return 2
    big = 2.0 ** 500 / np.sqrt(k * max(1.0, float(np.max(w)) if w is not None else 1.0))
    # values from here up differ by at least 2^-52 of it: their weighted squares
    # stay above 2^-960 (a weight below 1 lowers the line)
    wmin = float(np.min(w[w > 0])) if w is not None and np.any(w > 0) else 1.0
    tiny = 2.0 ** -426 / np.sqrt(min(1.0, wmin))
    for X in arrays:
        ax = np.abs(X)
        if ax.size and (np.max(ax, where=~np.isnan(ax), initial=0.0) >= big
                        or np.any((ax > 0) & (ax < tiny))):
            return 2
    return 1


def _kernel_params(metric):
    # (take_sqrt, scale): cosine = |a^ - b^|^2 / 2 on unit rows
    return {"euclidean": (True, 1.0), "mahalanobis": (True, 1.0),
            "sqeuclidean": (False, 1.0), "cosine": (False, 0.5)}[metric]


def cdist(XA, XB, metric="euclidean", *, out=None, w=None, VI=None):
    r"""Distances between each pair of rows of two collections.

    A drop-in for :func:`scipy.spatial.distance.cdist` on the metrics below,
    computed with a GEMM on tiles (fastlin's AVX-512 kernel at the avx512
    level, BLAS otherwise), and exact where GEMM is not.

    Parameters
    ----------
    XA : array_like, shape (mA, n)
    XB : array_like, shape (mB, n)
    metric : {'euclidean', 'sqeuclidean', 'cosine', 'mahalanobis'}
        scipy's definitions (cosine is ``1 - cos``).  Other names raise
        ValueError; use scipy for them.
    out : ndarray, optional
        C-contiguous array of shape (mA, mB) and the result dtype.  It may
        overlap the inputs.
    w : array_like, shape (n,), optional
        Non-negative per-feature weights (as scipy: ``sum w (a - b)^2``).
    VI : array_like, shape (n, n), optional
        For 'mahalanobis': the inverse covariance (symmetric, up to rounding,
        and positive semidefinite: a singular VI leaves some directions
        free, as scipy allows; an indefinite one is refused); by default
        estimated from the stacked points, as scipy.

    Returns
    -------
    D : ndarray, shape (mA, mB)
        float64, or float32 when both inputs are float32 (scipy always
        returns float64: this is a deliberate deviation, half the memory).

    Notes
    -----
    **Small calls.**  float arrays of one dtype under 'euclidean' or
    'sqeuclidean' with at most 256 columns and ``mA mB n <= 2**19``, and
    any call with at most 16 columns, compute every entry directly as
    ``sum((a - b)^2)`` in float64 from the rows (the exact path below), on
    the calling thread for the small ones.

    **How exactness is guaranteed.**  Rows are centred on a common point
    (distances are translation invariant; this removes the cancellation a
    large offset causes).  Each output tile is ``|a|^2 + |b|^2 - 2 a.b`` with
    the cross term from one GEMM.  Its rounding error is about
    ``eps * sqrt(n) * (|a|^2 + |b|^2)``, so every entry with
    ``d^2 < tau (|a|^2 + |b|^2)`` (tau = 1/8 in float64, 1/2 in float32) is
    recomputed directly as ``sum((a - b)^2)`` in float64 from the original
    rows.  Hence near-duplicates are exact, the diagonal of ``cdist(X, X)`` is
    exactly 0, and inf/nan rows give scipy's inf/nan.  Where that sum of
    squares leaves float64's range -- a distance beyond ~1.3e154 squares to
    inf, one below ~1e-154 into the subnormals -- the root is taken of the
    differences scaled by the largest of them (as ``hypot`` does), so such
    distances keep their digits where scipy gives inf or loses them (rows
    whose squared norms leave a safe range take the exact path for this).
    'cosine' is computed as
    ``|a/|a| - b/|b||^2 / 2``, exact for near-parallel rows (where scipy's
    ``1 - cos`` loses its digits); a zero row gives nan, as in scipy.
    'mahalanobis' whitens once (``VI = L L^T``) and reuses the Euclidean
    kernel; its exact path applies L to the difference of the original rows,
    so near-duplicates are exact too; an infinite coordinate gives inf, or
    nan where a zero of L multiplies it (scipy's quadratic form gives nan).
    """
    return _cdist(XA, XB, metric, out, w, VI)


def _cdist(XA, XB, metric, out, w, VI, plan=None):
    if plan is not None and plan.small is not None:
        # the whole call took the short path: so does this piece
        res, (XA, XB) = _small_result(out, XA.shape[:1] + XB.shape[:1], (XA, XB))
        _k.cdist_direct_small(np.ascontiguousarray(XA), np.ascontiguousarray(XB.T), res,
                              plan.small, 1.0)
        return res
    if w is None and VI is None and plan is None:
        r = _cdist_small(XA, XB, metric, out)
        if r is not None:
            return r
    XA, XB, metric, dtype = _pair(XA, XB, metric)
    mA, mB, n = XA.shape[0], XB.shape[0], XA.shape[1]
    _check_extra_args(metric, w, VI)
    sw = _weights(w, n, dtype)
    if out is not None:
        _check_dist_out(out, (mA, mB), dtype)
    res = out if out is not None else empty_output((mA, mB), dtype,
                                                   _for_macs(mA * mB * max(n, 1)))
    if mA == 0 or mB == 0:
        return res
    if not _uses_blas(metric, n):
        return _cdist_run(XA, XB, metric, dtype, sw, VI, out, res, mA, mB, n)
    with blas_single_thread():
        # BLAS held to one thread for the small preparatory products too:
        # OpenBLAS threads woken here would spin on the cores the tiles use
        return _cdist_run(XA, XB, metric, dtype, sw, VI, out, res, mA, mB, n, plan)


def _uses_blas(metric, n):
    """False where the distances come from direct differences alone (few
    columns, no whitening): nothing calls BLAS, so capping its threads
    (through threadpoolctl, microseconds a call) is skipped."""
    return n > _k.direct_k() or metric == "mahalanobis"


_SMALL_METRICS = {"euclidean": 1, "sqeuclidean": 0}    # -> take_sqrt
_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))


def _small_mode(arrays, metric, n, work):
    """take_sqrt for the small paths (_cdist_small, _pdist_small): 2-d float
    ndarrays of one dtype, a plain (sq)euclidean metric, 1 to _SMALL_MAX_K
    columns, 1 to _SMALL_CDIST multiply-adds; None otherwise (the general
    path then runs, and validates).  float64 roots are checked for squares
    out of double's range, as _direct_sqrt asks for small inputs."""
    take_sqrt = _SMALL_METRICS.get(metric) if type(metric) is str else None
    dtype = arrays[0].dtype
    if (take_sqrt is None or not 0 < n <= _SMALL_MAX_K or not 0 < work <= _SMALL_CDIST
            or dtype not in _FLOATS or arrays[-1].dtype != dtype):   # (at most two)
        return None
    return 2 if take_sqrt and dtype == np.float64 else take_sqrt


def _small_result(out, shape, arrays):
    """The small paths' result (`out`, checked, or a new array) and their
    inputs, copied where `out` overlaps them (rows are read while it is
    written)."""
    dtype = arrays[0].dtype
    if out is None:
        return np.empty(shape, dtype), arrays
    _check_dist_out(out, shape, dtype)
    return out, [X.copy() if np.may_share_memory(out, X) else X for X in arrays]


def _cdist_small_mode(XA, XB, metric):
    """_small_mode for cdist's raw arguments (w and VI not given): the
    take_sqrt of the short path when cdist takes it, else None."""
    if (type(XA) is not np.ndarray or type(XB) is not np.ndarray
            or XA.ndim != 2 or XB.ndim != 2 or XA.shape[1] != XB.shape[1]):
        return None
    (mA, n), mB = XA.shape, XB.shape[0]
    return _small_mode((XA, XB), metric, n, mA * mB * n)


def _cdist_small(XA, XB, metric, out):
    """cdist of two small float arrays of one dtype under a plain
    (sq)euclidean metric, with the least argument handling, every entry by
    direct differences (sum((a - b)^2) in double: the exact path) on the
    calling thread.  None where that is not the case: the general path then
    runs, and validates.  With few columns the general path computes the same
    entries the same way; with more, it would use a GEMM and recompute only
    the pairs the GEMM cannot get right, which costs more than the work here."""
    take_sqrt = _cdist_small_mode(XA, XB, metric)
    if take_sqrt is None:
        return None
    res, (XA, XB) = _small_result(out, XA.shape[:1] + XB.shape[:1], (XA, XB))
    _k.cdist_direct_small(np.ascontiguousarray(XA), np.ascontiguousarray(XB.T), res,
                          take_sqrt, 1.0)
    return res


def _pdist_small(X, metric, out):
    """pdist's _cdist_small: every pair by direct differences on the calling
    thread, for a small float array under (sq)euclidean; None otherwise."""
    if type(X) is not np.ndarray or X.ndim != 2:
        return None
    m, n = X.shape
    size = m * (m - 1) // 2
    take_sqrt = _small_mode((X,), metric, n, size * n)
    if take_sqrt is None:
        return None
    res, (X,) = _small_result(out, (size,), (X,))
    _k.pdist_direct_small(np.ascontiguousarray(X), np.ascontiguousarray(X.T), res,
                          take_sqrt, 1.0)
    return res


# Up to this much work (mA mB n multiply-adds, pdist's pairs times n; some
# 100 us on one core) and this many columns, cdist takes _cdist_small (pdist
# _pdist_small): measured here, 64 x 32 float64
# points against themselves 22 us there, 76 us through the GEMM path (its
# centring, packing and exact-path checks are a fixed cost), torch 36 us;
# 128 x 32: 67 against 123.  A team of threads does not pay for itself below
# ~1e6 multiply-adds either (MACS_PER_ELEMENT, _threads.py).
_SMALL_CDIST = 1 << 19
_SMALL_MAX_K = 256


def _cdist_run(XA, XB, metric, dtype, sw, VI, out, res, mA, mB, n, plan=None):
    L = _precision_factor(VI, n, XA, XB, dtype) if metric == "mahalanobis" else None
    same = XB is XA
    OA = _Operands(XA, dtype, metric, sw, L)
    OB = OA if same else _Operands(XB, dtype, metric, sw, L)
    if out is not None and (np.may_share_memory(out, OA.exact)
                            or np.may_share_memory(out, OB.exact)):
        OA.exact = OA.exact.copy()
        OB.exact = OA.exact if same else OB.exact.copy()
    wv = None if OA.sw is None else (OA.sw.astype(np.float64) ** 2)
    take_sqrt, scale = _kernel_params(metric)
    nt = _for_macs(mA * mB * max(n, 1))
    stream = res.nbytes >= _STREAM_BYTES
    if n == 0:
        res[...] = 0
    elif not _uses_blas(metric, n):
        # few columns: direct differences (exact), no GEMM, no centring
        _k.cdist_tiles(OA.exact, OB.exact, OA.exact, OB.exact, np.empty(mA), np.empty(mB),
                       res, res[:0], 0.0,
                       _direct_sqrt(take_sqrt, dtype, n, wv, OA.exact, OB.exact), scale, nt,
                       stream, wv, np.ascontiguousarray(OB.exact.T))
    else:
        A, B, na, nb = _gemm_operands(OA, None if same else OB, dtype, nt, plan)
        na, nb = _exact_marked(na, dtype, A), _exact_marked(nb, dtype, B)
        Ap, Bp = _panels(mA, mB, n, dtype)
        scratch = _scratch(nt, dtype, mA, mB)
        _k.cdist_tiles(A, B, OA.exact, OB.exact, na, nb, res, scratch, TAU[dtype],
                       take_sqrt, scale, nt, stream, wv, None, OA.exact_factor(), Ap, Bp)
    if metric == "cosine":
        res[OA.zero, :] = np.nan
        res[:, OB.zero] = np.nan
    return res


def pdist(X, metric="euclidean", *, out=None, w=None, VI=None):
    r"""Condensed pairwise distances between the rows of X, in scipy's order.

    A drop-in for :func:`scipy.spatial.distance.pdist` on the metrics of
    :func:`cdist` (same definitions, same exactness guarantee).  The condensed
    vector ``d[m*i - i*(i+1)/2 + j - i - 1] = dist(X[i], X[j])`` for i < j is
    written directly: no square intermediate.

    Parameters
    ----------
    X : array_like, shape (m, n)
    metric, w, VI
        As :func:`cdist`.
    out : ndarray, optional
        Shape (m * (m - 1) / 2,), the result dtype, C-contiguous.

    Returns
    -------
    d : ndarray, shape (m * (m - 1) / 2,)
        float64, or float32 for float32 input.
    """
    if w is None and VI is None:
        r = _pdist_small(X, metric, out)
        if r is not None:
            return r
    X = _matrix(X, "X")
    metric = _metric(metric)
    dtype = result_dtype((X, "X"))
    m, n = X.shape
    _check_extra_args(metric, w, VI)
    sw = _weights(w, n, dtype)
    size = m * (m - 1) // 2
    if out is not None:
        _check_dist_out(out, (size,), dtype)
    res = out if out is not None else empty_output(size, dtype, _for_macs(size * max(n, 1)))
    if size == 0:
        return res
    if not _uses_blas(metric, n):
        return _pdist_run(X, metric, dtype, sw, VI, out, res, m, n, size)
    with blas_single_thread():
        return _pdist_run(X, metric, dtype, sw, VI, out, res, m, n, size)


def _pdist_run(X, metric, dtype, sw, VI, out, res, m, n, size):
    L = _precision_factor(VI, n, X, X[:0], dtype) if metric == "mahalanobis" else None
    O = _Operands(X, dtype, metric, sw, L)
    if out is not None and np.may_share_memory(out, O.exact):
        O.exact = O.exact.copy()
    wv = None if O.sw is None else (O.sw.astype(np.float64) ** 2)
    take_sqrt, scale = _kernel_params(metric)
    nt = _for_macs(size * max(n, 1))
    if n == 0:
        res[...] = 0
    else:
        stream = res.nbytes >= _STREAM_BYTES
        if not _uses_blas(metric, n):
            # few columns: direct differences (exact), no GEMM, no centring
            _k.pdist_tiles(O.exact, O.exact, np.empty(m), res, np.empty((1, 0), dtype),
                           0.0, _direct_sqrt(take_sqrt, dtype, n, wv, O.exact), scale, nt,
                           stream, wv, np.ascontiguousarray(O.exact.T))
        else:
            A, _, na, _ = _gemm_operands(O, None, dtype, nt)
            Ap, Bp = _panels(m, m, n, dtype)
            _k.pdist_tiles(A, O.exact, _exact_marked(na, dtype, A), res,
                           _scratch(nt, dtype, min(m, _TILE), m), TAU[dtype], take_sqrt,
                           scale, nt, stream, wv, None, O.exact_factor(), Ap, Bp)
    if metric == "cosine" and O.zero.any():
        sq = squareform(res, checks=False)
        sq[O.zero, :] = np.nan
        sq[:, O.zero] = np.nan
        res[...] = squareform(sq, checks=False, force="tovector")
    return res


def squareform(X, force="no", checks=True):
    """Convert between condensed and square distance matrices, as scipy's.

    Parameters
    ----------
    X : array_like
        A condensed vector (1-d) or a square, symmetric, zero-diagonal matrix.
    force : {'no', 'tomatrix', 'tovector'}
    checks : bool
        With a square input, check symmetry and the zero diagonal.

    Returns
    -------
    Y : ndarray
        The other form; the dtype of `X` is kept.
    """
    X = np.asarray(X)
    if isinstance(force, str):
        force = force.lower()       # as scipy
    if force not in ("no", "tomatrix", "tovector"):
        raise ValueError(f"force must be 'no', 'tomatrix' or 'tovector', got {force!r}")
    if force == "tomatrix" or (force == "no" and X.ndim == 1):
        if X.ndim != 1:
            raise ValueError(f"a condensed distance vector must be 1-d, got shape {X.shape}")
        s = X.shape[0]
        if s == 0:
            return np.zeros((1, 1), dtype=X.dtype)   # scipy: the 1 x 1 matrix
        d = int(np.ceil(np.sqrt(s * 2)))
        if d * (d - 1) != s * 2:
            raise ValueError(f"incompatible vector size {s}: it must be a binomial "
                             "coefficient n choose 2 for some integer n >= 2")
        if X.dtype in (np.float64, np.float32):
            M = empty_output((d, d), X.dtype, _for_work(d * d))
            _k.condensed_to_square(np.ascontiguousarray(X), M, _for_work(d * d))
            return M
        M = np.zeros((d, d), dtype=X.dtype)
        iu = np.triu_indices(d, 1)
        M[iu] = X
        M[(iu[1], iu[0])] = X
        return M
    if X.ndim != 2 or X.shape[0] != X.shape[1]:
        raise ValueError(f"a square distance matrix must be 2-d and square, got shape {X.shape}")
    if checks:
        if np.any(np.diag(X) != 0):
            raise ValueError("distance matrix X must have a zero diagonal")
        if not np.array_equal(X, X.T):
            raise ValueError("distance matrix X must be symmetric")
    m = X.shape[0]
    if X.dtype in (np.float64, np.float32):
        v = empty_output(m * (m - 1) // 2, X.dtype, _for_work(m * m))
        _k.square_to_condensed(np.ascontiguousarray(X), v, _for_work(m * m))
        return v
    return np.ascontiguousarray(X[np.triu_indices(m, 1)])


def _grad_matrix(grad, shape, dtype, name="grad", what="the distances"):
    """An array argument of a backward pass (a gradient, or a forward result
    passed back) checked for its shape and a real dtype, in `dtype`."""
    g = as_array(grad, name)
    if g.shape != shape:
        raise ValueError(f"{name} must have the shape of {what} {shape}, got {g.shape}")
    result_dtype((g, name))
    return g.astype(dtype, copy=False)


def _given_dist(dist, A, B, dtype):
    """dist (cdist_backward's / pdist_backward's) as a C-contiguous array of
    the distances' dtype and shape, spot-checked: a wrong array (the other
    metric, the squared values, swapped or transposed operands) would give a
    wrong gradient without a sound.  Up to 64 entries at fixed positions are
    compared with the distance of their rows; the tolerance (1e-3 relative
    plus 1e-2 of the rows' norm scale) passes the inexact distances of a
    GEMM-identity peer such as torch.cdist and rejects another array (where
    a peer's plain sum of squares overflowed to inf and fastlin's distance is
    finite, the entry is refused too: pass fastlin's)."""
    D = as_array(dist, "dist")
    shape = (A.shape[0], B.shape[0])
    if D.shape != shape:
        raise ValueError(f"dist must have the shape of the distances {shape}, got {D.shape}")
    result_dtype((D, "dist"))
    D = np.ascontiguousarray(D, dtype=dtype)
    mA, mB = shape
    if mA and mB and A.shape[1]:
        t = np.arange(min(64, mA * mB))
        i, j = (t * 7919) % mA, (t * 104729 + t // mA) % mB
        _spot_check(D[i, j], A[i], B[j], i, j)
    return D


def _spot_check(got, a, b, i, j):
    """The sampled entries `got` of a given dist against the distances of
    their rows a, b (entry (i, j)): see _given_dist."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        # each pair divided by its largest magnitude first: distances whose
        # squares leave float64's range (1e-300, 1e200 apart) are checked too
        m = np.maximum(np.abs(a).max(axis=1, initial=0), np.abs(b).max(axis=1, initial=0))
        m = np.where((m > 0) & np.isfinite(m), m, 1.0)[:, None]
        a, b = a / m, b / m
        ref = m[:, 0] * np.sqrt(np.sum((a - b) ** 2, axis=1))
        scale = m[:, 0] * np.sqrt(np.sum(a * a, axis=1) + np.sum(b * b, axis=1))
        got = np.asarray(got, dtype=np.float64)
        bad = np.isfinite(ref) & ~(np.abs(got - ref) <= 1e-3 * ref + 1e-2 * scale)
    if bad.any():
        q = int(np.argmax(bad))
        raise ValueError(
            f"dist does not hold the distances of these points: entry ({i[q]}, {j[q]}) "
            f"is {float(got[q]):.9g}, the distance is {float(ref[q]):.9g}; pass the "
            "forward's result, "
            "cdist(XA, XB, metric) (pdist(X, metric) for pdist_backward)")


# pdist_backward uses a given dist only from this many columns on: it must
# first be expanded to the square (m, m) matrix the kernels read, which costs
# more than recomputing the distances with the GEMM at few columns -- at
# (8192, 64) float64, t=2, 287-288 ms through the given-distance path against
# 249-273 recomputing -- and the recomputed distances are the forward's to
# the bit (same sums, same epilogue), so the gradient is the same either way.
_PDIST_DIST_MIN_COLS = 256


def cdist_backward(grad, XA, XB, metric="euclidean", *, VI=None, dist=None, out=None):
    r"""Backward pass of :func:`cdist`: gradients with respect to XA and XB.

    Parameters
    ----------
    grad : array_like, shape (mA, mB)
        Gradient of the loss with respect to ``D = cdist(XA, XB, metric)``.
    XA, XB, metric, VI
        As given to :func:`cdist` (``w`` is not supported here).
    dist : array_like, shape (mA, mB), optional
        The forward's result, ``cdist(XA, XB, metric, VI=VI)``, when it was
        kept (as a custom autograd op keeps it): 'euclidean' and
        'mahalanobis' then skip recomputing it (two GEMMs instead of three;
        rows of at most 16 columns take the direct path, which forms every
        term from its difference and does not need it).
        A sample of its entries is checked against the points (ValueError
        if it does not hold their distances).  The other metrics do not need
        it and only check its shape.
    out : tuple of two ndarrays, optional
        Arrays of the shapes and dtype of ``(gA, gB)`` to write the gradients
        into (checked; they may overlap the inputs).

    Returns
    -------
    gXA : ndarray, shape (mA, n)
    gXB : ndarray, shape (mB, n)
        The gradients of ``sum(grad * D)``, computed with GEMMs:

        * euclidean: with ``W = grad / D`` (0 where ``D == 0``),
          ``gXA = rowsum(W) XA - W XB`` and ``gXB = colsum(W) XB - W^T XA``;
        * sqeuclidean: the same with ``W = 2 grad``;
        * cosine: ``gXA_i = -(P_i - (a^_i . P_i) a^_i) / |a_i|`` with unit rows
          ``a^, b^`` and ``P = grad B^`` (``sum_j grad_ij cos_ij`` is
          ``a^_i . P_i``: two products, no (mA, mB) array), symmetrically for
          XB with ``grad^T A^``;
        * mahalanobis: the Euclidean gradient of the whitened rows ``X L``
          (``VI = L L^T``), mapped back by ``L^T``.

    Notes
    -----
    At zero distance the Euclidean (and Mahalanobis) distance is not
    differentiable; fastlin returns the zero subgradient there, finite, never
    nan (torch gives nan or an arbitrary subgradient).  A zero row under
    'cosine' gets a zero gradient.  The products run on rows centred on a
    common point, so a large common offset does not cancel digits.

    Euclidean: D and ``W`` are formed tile by tile (one GEMM each, the
    forward's exact path included) and never stored whole.  With `dist`,
    ``W`` is formed from it in bands of rows of about 64 MiB (the whole of
    it when smaller; at least 128 rows) and the two products run as whole
    GEMMs.  Either way the pairs the
    forward computes exactly (near points, where ``W`` is large and
    ``rowsum(W) a - W b`` would cancel) contribute ``W_ij (a_i - b_j)`` from
    the difference instead, so near-duplicate gradients keep their digits.
    The per-row-block sums are added in block order: the result does not
    depend on the thread count.
    """
    return store_out(_cdist_backward(grad, XA, XB, metric, VI, dist), out, ("gA", "gB"))


def _cdist_backward(grad, XA, XB, metric, VI, dist):
    XA, XB, metric, dtype = _pair(XA, XB, metric)
    G = _grad_matrix(grad, (XA.shape[0], XB.shape[0]), dtype)
    n = XA.shape[1]
    _check_extra_args(metric, None, VI)
    A = np.ascontiguousarray(XA, dtype=dtype)
    B = np.ascontiguousarray(XB, dtype=dtype)
    if metric == "mahalanobis":
        L = _precision_factor(VI, n, XA, XB, dtype)
        # the Mahalanobis distances are the Euclidean ones of the whitened
        # rows; both sets are first moved to a common point near them (the
        # gradient is translation invariant), so that a large common offset
        # is not multiplied into X @ L and rounded there
        c = _centre(A if A.shape[0] else B, dtype)
        gYA, gYB = cdist_backward(G, (A - c) @ L, (B - c) @ L, "euclidean", dist=dist)
        return gYA @ L.T, gYB @ L.T
    if metric == "euclidean":
        D = None if dist is None else _given_dist(dist, A, B, dtype)
        return _euclidean_backward(G, A, B, dtype, D=D)
    if dist is not None:
        D = as_array(dist, "dist")
        if D.shape != G.shape:
            raise ValueError(f"dist must have the shape of the distances {G.shape}, "
                             f"got {D.shape}")
    if metric == "cosine":
        return _cosine_backward(G, A, B, dtype)
    # sqeuclidean: W = 2 G, the factor 2 applied to the sums (exact)
    return _weighted_backward(G, A, B, dtype, 2)


def _row_panels(rows, k, dtype):
    """A buffer for `rows` rows of k columns packed as the B operand of a
    product whose depth runs over them (weighted_sums), or None where the
    products use BLAS."""
    if not _k.own_gemm_enabled():
        return None
    return _aligned(_k.packed_len(k, rows, True, dtype == np.float64), dtype)


def _weighted_products(W, A, B, WB, WtA):
    """WB = W @ B and WtA = W^T @ A (weighted_sums), A and B packed once."""
    dtype = WB.dtype
    with blas_single_thread():
        _k.weighted_sums(W, A, B, WB, WtA, _for_macs(W.size * A.shape[1]),
                         Aq=_row_panels(A.shape[0], A.shape[1], dtype),
                         Bq=_row_panels(B.shape[0], B.shape[1], dtype))


def _weighted_backward(W, A, B, dtype, factor=1, rows=None, cols=None):
    """gA_i = f sum_j W_ij (a_i - b_j) = f (rows_i a_i - (W B)_i) and likewise
    gB, with W given whole (sqeuclidean: W = G, f = 2: no scaled copy of G).
    rows, cols: W's row and column sums in float64 when the caller has them
    (cdist_logsumexp_backward forms them with W)."""
    if rows is None:
        rows = W.sum(axis=1, dtype=np.float64)
    # on rows centred on a common point, so a large offset does not cancel
    # digits (skipped when the offset is small)
    centre = _centre(A, dtype) if A.size else np.zeros(A.shape[1], dtype)
    cc = float(np.dot(centre.astype(np.float64), centre.astype(np.float64)))
    if A.size and cc > 0.25 * float(np.mean(np.einsum("ij,ij->i", A, A, dtype=np.float64))):
        A, B = A - centre, B - centre
    A = np.ascontiguousarray(A)
    B = np.ascontiguousarray(B)
    WB = np.empty_like(A)
    WtA = np.empty_like(B)
    if A.size and B.size:
        _weighted_products(np.ascontiguousarray(W), A, B, WB, WtA)
    else:
        WB[...] = 0
        WtA[...] = 0
    gA = rows.astype(dtype)[:, None] * A - WB
    if cols is None:
        cols = W.sum(axis=0, dtype=np.float64)
    gB = cols.astype(dtype)[:, None] * B - WtA
    if factor != 1:
        gA *= dtype.type(factor)
        gB *= dtype.type(factor)
    return gA, gB


def _euclidean_backward(G, A, B, dtype, want_b=True, D=None):
    """gA_i = sum_j W_ij (a_i - b_j), gB_j = sum_i W_ij (b_j - a_i) with
    W = G / D, from one sweep over GEMM tiles (cdist_bwd_tiles): D and W are
    never stored whole; the sums run on the centred rows of the forward, so a
    large common offset does not cancel digits; and the pairs the forward
    computes exactly (near points, where W is large and the GEMM form
    rowsum(W) a_i - W b would cancel) contribute W_ij (a_i - b_j) formed from
    the difference.  With D given (the forward's distances):
    _euclidean_backward_given."""
    mA, mB, n = A.shape[0], B.shape[0], A.shape[1]
    if mA == 0 or mB == 0 or n == 0:
        return (np.zeros_like(A), np.zeros_like(B)) if want_b else np.zeros_like(A)
    if n <= _k.direct_k():
        return _euclidean_backward_direct(G, A, B, dtype, want_b)
    if D is not None:
        return _euclidean_backward_given(G, A, B, dtype, want_b, D)
    with blas_single_thread():
        OA, OB, nt, Ac, Bc, na, nb = _bwd_operands(A, B, dtype)
        # row blocks of _TILE rows, in at most 32 groups of consecutive blocks
        # (work items for the threads): the XB side keeps one share per group
        # (float64 when a group sums several blocks) -- memory bounded by 32 x
        # the gradient of XB, whatever mA -- summed in double in group order
        nblk = -(-mA // _TILE)
        per_group = -(-nblk // 32)
        ngroups = -(-nblk // per_group)
        WB = _memory.empty((mA, n), dtype)[0]
        P = _memory.empty((ngroups * mB if want_b else 0, n),
                          dtype if per_group == 1 else np.float64)[0]
        CS = np.zeros((ngroups, mB))
        rows = np.empty(mA)
        scratch = _memory.empty((max(nt, 1), 2 * _TILE * _TILE + _TILE * n), dtype)[0]
        tscratch = np.zeros((max(nt, 1), 2 * _TILE * n))
        # A and B packed once for the two products (fastlin's GEMM only)
        la, lw = _k.bwd_panels_len(mA, n, dtype == np.float64)
        lb, _ = _k.bwd_panels_len(mB, n, dtype == np.float64)
        Aq = Bq = wpan = None
        if la:
            Aq = _aligned(la, dtype) if want_b else None     # only W^T A reads it
            Bq = _aligned(lb, dtype)
            wpan = _memory.empty((max(nt, 1), lw), dtype)[0]
        Ad = Bd = None     # the distance tiles' operands, packed once too
        lad, lbd = _k.bwd_dist_panels_len(mA, mB, n, dtype == np.float64)
        if lad:
            Ad, Bd = _aligned(lad, dtype), _aligned(lbd, dtype)
        _k.cdist_bwd_tiles(Ac, Bc, OA.exact, OB.exact, na, nb, np.ascontiguousarray(G),
                           WB, P, CS, rows, scratch, tscratch, TAU[dtype], nt, per_group,
                           Aq, Bq, wpan, Ad, Bd)
        if want_b:
            # colsum(W)_j b_j - (W^T A)_j from the groups' shares, one pass
            gB = _memory.empty((mB, n), dtype)[0]
            ntb = _for_work(P.size)
            _k.grad_from_row_blocks(P, CS, Bc, gB, np.empty((max(ntb, 1), n)), ntb)
        # rows_i a_i - (W B)_i, into WB (its last use)
        none = np.empty((0, n), dtype)
        _k.grads_from_sums(rows, Ac, WB, np.empty(0), Bc, none, none, _for_work(mA * n))
    return (WB, gB) if want_b else WB


def _bwd_operands(A, B, dtype):
    """The Euclidean backward's operands, as the forward takes them: the rows'
    operands (exact: the rows as given), the thread count, the GEMM rows
    (centred on a common point where the offset is large) and their squared
    norms, NaN on the rows that must take the exact path."""
    OA = _Operands(A, dtype, "euclidean", None, None)
    OB = _Operands(B, dtype, "euclidean", None, None)
    nt = _for_macs(A.shape[0] * B.shape[0] * A.shape[1])
    Ac, Bc, na, nb = _gemm_operands(OA, OB, dtype, nt)
    return (OA, OB, nt, Ac, Bc, _exact_marked(na, dtype, Ac),
            _exact_marked(nb, dtype, Bc))


# The given-distance backward holds W = G / D in bands of rows of about this
# many bytes (the whole of W when smaller; at least 128 rows): its scratch is
# bounded whatever mA.
_BWD_BAND_BYTES = 1 << 26


def _euclidean_backward_given(G, A, B, dtype, want_b, D):
    """The Euclidean backward from the forward's distances D (dist=): W = G / D
    formed band by band (bwd_given_weights: one pass over G and D, 0 at
    D == 0 and at the near pairs), then the two products W B and W^T A as
    whole GEMMs (weighted_sums: the operands packed once, the rows split over
    the threads) instead of tile by tile, and the near pairs' terms from
    their differences (bwd_given_exact), as the forward computes them
    exactly.  On the forward's centred rows, as _euclidean_backward."""
    mA, mB, n = A.shape[0], B.shape[0], A.shape[1]
    blk = _k.bwd_weights_block()
    G = np.ascontiguousarray(G)       # the kernels read rows (grad may be any layout)
    with blas_single_thread():
        OA, OB, nt, Ac, Bc, na, nb = _bwd_operands(A, B, dtype)
        band = min(mA, max(blk, _BWD_BAND_BYTES // (mB * dtype.itemsize) // blk * blk))
        W = _memory.empty((band, mB), dtype)[0]
        rows = np.empty(mA)
        CS = np.empty((-(-band // blk), mB))     # one band's block column sums
        cols = np.zeros(mB)                      # and all of them, band by band
        nflag = np.empty(mA, np.intp)
        WB = _memory.empty((mA, n), dtype)[0]
        P = _memory.empty((mB if want_b else 0, n), dtype)[0]
        Bq = _row_panels(mB, n, dtype)
        Aq = _row_panels(band, n, dtype) if want_b else None
        TB = None          # the near pairs' XB terms, made when there are some
        for b0 in range(0, mA, band):
            b1 = min(mA, b0 + band)
            Wb = W[:b1 - b0]
            CSb = CS[:-(-(b1 - b0) // blk)]
            CSb[...] = 0
            _k.bwd_given_weights(G[b0:b1], D[b0:b1], na[b0:b1], nb, TAU[dtype], Wb,
                                 rows[b0:b1], CSb, nflag[b0:b1], nt)
            cols += CSb.sum(axis=0)
            _k.weighted_sums(Wb, Ac[b0:b1], Bc, WB[b0:b1], P, nt, accumulate=b0 > 0,
                             Aq=Aq, Bq=Bq, pack_b=b0 == 0)
            near = np.flatnonzero(nflag[b0:b1])
            if near.size:
                TA = np.zeros((near.size, n))
                if TB is None:
                    TB = np.zeros((mB if want_b else 0, n))
                _k.bwd_given_exact(G[b0:b1], D[b0:b1], Wb, OA.exact[b0:b1], OB.exact, near,
                                   TA, TB, nt)
                WB[b0 + near] = WB[b0 + near] - TA
        del W, Wb
        if TB is not None and want_b:
            np.subtract(P, TB, out=P, casting="same_kind")
        # rows_i a_i - (W B)_i into WB, and colsum(W)_j b_j - (W^T A)_j (the
        # column sums over the row blocks in order), in one parallel pass
        gB = _memory.empty((mB if want_b else 0, n), dtype)[0]
        _k.grads_from_sums(rows, Ac, WB, cols, Bc, P, gB,
                           _for_work((mA + mB) * n))
    return (WB, gB) if want_b else WB


def _euclidean_backward_direct(G, A, B, dtype, want_b):
    """Few columns (as the forward's direct path): every term W_ij (a_i - b_j)
    from its difference in float64, no GEMM.  Rows are split into at most 64
    blocks (a function of mA only), each block's share of the XB gradient
    kept apart and summed in block order."""
    mA, mB, n = A.shape[0], B.shape[0], A.shape[1]
    rows = max(256, -(-mA // 64))
    nblk = -(-mA // rows)
    GA = np.zeros((mA, n))
    PB = np.zeros((nblk * n if want_b else 0, mB))
    nt = _for_macs(mA * mB * n)
    _k.cdist_bwd_direct(A, np.ascontiguousarray(B.T), np.ascontiguousarray(G), GA, PB, rows,
                        nt)
    gA = GA.astype(dtype)
    if not want_b:
        return gA
    GB = np.empty((mB, n))
    _k.reduce_direct_blocks(PB, GB, _for_work(PB.size))
    return gA, GB.astype(dtype)


def _cosine_backward(G, A, B, dtype):
    def unit(X):
        # the unit rows from fastlin's normalize, as the forward takes them (no
        # overflow or underflow in the norm: 1e-170 and 1e155 rows), and |x|
        # as x . x^ (of the size of |x|, never its square)
        X64 = np.asarray(X, dtype=np.float64)
        U = normalize(X64, axis=1, eps=0.0)
        nrm = np.einsum("ij,ij->i", X64, U)
        zero = nrm == 0
        safe = np.where(zero, 1.0, nrm)
        return U.astype(dtype), safe.astype(dtype), zero
    Ah, na, za = unit(A)
    Bh, nb, zb = unit(B)
    # d_ij = 1 - a^_i . b^_j: gA_i = -(P_i - (a^_i . P_i) a^_i) / |a_i| with
    # P = G B^ (and likewise gB from Q = G^T A^), the sum_j G_ij cos_ij of
    # the projection being a^_i . P_i: two products, no (mA, mB) cosines
    P = np.empty_like(Ah)
    Q = np.empty_like(Bh)
    if Ah.size and Bh.size:
        _weighted_products(np.ascontiguousarray(G), Ah, Bh, P, Q)
    else:
        P[...] = 0
        Q[...] = 0
    pa = np.einsum("ij,ij->i", Ah, P, dtype=np.float64).astype(dtype)
    qb = np.einsum("ij,ij->i", Bh, Q, dtype=np.float64).astype(dtype)
    gA = -(P - pa[:, None] * Ah) / na[:, None]
    gB = -(Q - qb[:, None] * Bh) / nb[:, None]
    gA[za] = 0
    gB[zb] = 0
    return gA, gB


def pdist_backward(grad, X, metric="euclidean", *, VI=None, dist=None, out=None):
    r"""Backward pass of :func:`pdist`: the gradient with respect to X.

    Parameters
    ----------
    grad : array_like, shape (m * (m - 1) / 2,)
        Gradient of the loss with respect to the condensed distances.
    X, metric, VI
        As given to :func:`pdist`.
    dist : array_like, shape (m * (m - 1) / 2,), optional
        The forward's result, ``pdist(X, metric, VI=VI)``, as
        :func:`cdist_backward`'s `dist` (checked the same way).  'euclidean'
        with fewer than 256 columns checks it and recomputes the distances
        instead (bitwise the forward's): expanding it to the square matrix
        the kernel reads costs more than the GEMM there.
    out : ndarray, optional
        An array of the shape and dtype of the gradient to write it into
        (checked; it may overlap the inputs).

    Returns
    -------
    gX : ndarray, shape (m, n)
        The gradient of ``sum(grad * pdist(X))``: the square form of `grad`
        (symmetric, zero diagonal) through :func:`cdist_backward` with both
        arguments X, the two gradients added and halved (the square form
        counts every pair twice).  Same conventions at zero distance (the zero
        subgradient).
    """
    return store_out(_pdist_backward(grad, X, metric, VI, dist), out, ("gX",))


def _pdist_backward(grad, X, metric, VI, dist):
    X = _matrix(X, "X")
    metric = _metric(metric)
    dtype = result_dtype((X, "X"))
    m = X.shape[0]
    g = as_array(grad, "grad")
    if g.shape != (m * (m - 1) // 2,):
        raise ValueError(f"grad must have the shape of the condensed distances "
                         f"({m * (m - 1) // 2},), got {g.shape}")
    G = squareform(g.astype(dtype, copy=False), force="tomatrix", checks=False) if m > 1 \
        else np.zeros((m, m), dtype)
    Dsq = None
    if dist is not None:
        d = as_array(dist, "dist")
        if d.shape != g.shape:
            raise ValueError(f"dist must have the shape of the condensed distances "
                             f"{g.shape}, got {d.shape}")
        result_dtype((d, "dist"))
        if metric == "euclidean" and m > 1 and X.shape[1] and \
                X.shape[1] < _PDIST_DIST_MIN_COLS:
            # spot-checked as the square would be (up to 64 entries, every
            # one of a short dist), then recomputed instead; the pair (i, j)
            # of condensed entry q from the rows' first entries
            q = np.arange(d.size) if d.size <= 64 else \
                np.unique((np.arange(64) * 7919 + np.arange(64) // 7) % d.size)
            starts = np.arange(m, dtype=np.int64)
            starts = m * starts - starts * (starts + 1) // 2
            i = np.searchsorted(starts, q, side="right") - 1
            j = q - starts[i] + i + 1
            Xa = np.asarray(X)
            _spot_check(d[q], Xa[i], Xa[j], i, j)
        elif metric in ("euclidean", "mahalanobis"):     # the others do not use it
            Dsq = squareform(d.astype(dtype, copy=False), force="tomatrix", checks=False) \
                if m > 1 else np.zeros((m, m), dtype)
    if metric == "euclidean":
        # G symmetric and XA = XB = X: the XB gradient equals the XA one, so
        # only gA is formed, sum(G * cdist(X, X)) counting each pair twice
        # is the halving of gA + gB = 2 gA
        A = np.ascontiguousarray(X, dtype=dtype)
        D = None if Dsq is None else _given_dist(Dsq, A, A, dtype)
        return _euclidean_backward(G, A, A, dtype, want_b=False, D=D)
    if metric == "mahalanobis" and VI is None:
        if m < 2:       # no pairs (pdist gives []): nothing to estimate VI from
            return np.zeros(X.shape, dtype)
        # pdist's VI: from the rows of X once (cdist_backward(G, X, X) would
        # estimate it from X stacked twice, a covariance 2(m-1)/(2m-1) of it)
        VI = _default_vi(X, X.shape[1])
    # sum(G * cdist(X, X)) counts each pair twice: halve (exact in binary)
    gA, gB = cdist_backward(G, X, X, metric, VI=VI, dist=Dsq)
    return (gA + gB) * dtype.type(0.5)
