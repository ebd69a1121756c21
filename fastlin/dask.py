"""fastlin's ops on Dask arrays: the kernels on each chunk, Dask's scheduler
across threads, processes and machines.

Every function takes and returns ``dask.array`` arrays, lazily, with
fastlin's names, arguments and semantics; nothing is computed until the
result is (``.compute()``, ``dask.compute``, or a ``distributed.Client``'s
``compute`` / ``persist``).  Array arguments that are not Dask arrays
(NumPy arrays, lists) are wrapped as one-chunk Dask arrays
(``dask.array.asarray``), so a NumPy array works as fastlin's own function
would take it, lazily.  Small arguments (``w``, ``VI``, ``mean``, ``cov``,
``cholesky``) may be NumPy or Dask arrays; a Dask one is computed whole,
once, by the tasks that need it.  Arguments are validated when the graph is
built, by the same checks fastlin runs, so a bad argument raises there, not
in a worker -- except the values of a small Dask argument (a Dask ``VI``'s
definiteness, a Dask ``b``'s signs), which only the tasks see.

How each op is split
--------------------
* **Row ops** (``normalize``, ``softmax``, ``log_softmax``, their backward
  passes): where the op's axis (or axes) is whole in every chunk, fastlin's
  own function runs on each chunk (``map_blocks``): over the last axis the
  result is bitwise that of fastlin on the whole array; over another axis
  within an ulp or so (the kernels vectorise across a chunk's columns, so a
  narrower chunk rounds some columns otherwise).  Where the axis is split across
  chunks, the per-row quantities -- the norm (as a scaled sum of squares),
  the log-sum-exp, the sums of the backward passes -- are reduced per chunk
  and combined across chunks in a tree (Dask's reductions), then applied
  chunk by chunk in float64: no chunk ever holds a whole row.  The result is
  then within a few ulps of fastlin's (the sums are grouped differently).
* **logsumexp**: a tree reduction over chunks of fastlin's per-chunk
  ``(logsumexp, sign)``; the log-sum-exp of log-sum-exps is exact to
  rounding (a few ulps of fastlin's result).
* **cdist**: one fastlin call per pair of row chunks of XA and XB (the
  feature axis is made whole in one chunk: it is the axis every distance
  reads all of).  **pdist** is not offered: its condensed output has no
  chunked form that does not cost a cdist; use ``cdist(X, X)``.
* **cdist_topk**: the k best of each pair of row chunks, merged across the
  chunks of XB by distance, ties by the lower index, nan last -- fastlin's
  rule -- in a tree.  **cdist_logsumexp**: one soft-min per pair, combined by
  log-sum-exp across the chunks of XB.
* **mahalanobis**: chunk by chunk over the points (features whole); its
  backward sums the mean's and the matrix's gradients over chunks.
* **max_margin_loss**: ``'none'`` chunk by chunk; ``'sum'`` and ``'mean'``
  as float64 per-chunk sums added in a tree.

Exactness of the pairwise ops
-----------------------------
fastlin's distances depend on a few choices a call makes from all of its
points (the common point the GEMM operands are centred on, whether the short
path runs).  Here those choices are made once from all the points and every
chunk follows them, so each distance is computed as one fastlin call on all
the points computes it -- bit for bit where the GEMM's result for a pair of
rows does not depend on where the pair sits in the matrix: fastlin's own
GEMM (the avx512 level) and the direct path (at most 16 features, or a call
small enough for the short path).  There, ``cdist`` and ``cdist_topk``
equal fastlin's on the computed arrays exactly -- except under
'mahalanobis', whose points are whitened by a NumPy matrix product that may
round a row by the number of rows it is given.  Where a BLAS computes the
tiles (the avx2 and baseline levels), a distance can differ from fastlin's
by the rounding of a GEMM summed in another order (within cdist's error
bound), so two candidates within that of each other may swap.  The
soft-min and every backward pass combine partial results across chunks (in
float64, rounded to the dtype once): within a few ulps of fastlin's.

Threads
-------
Each task runs fastlin with the threads its worker can give it: the threads
fastlin would use in that process (:func:`fastlin.get_num_threads`, which
honours ``OMP_NUM_THREADS``, :func:`fastlin.set_num_threads` and
:func:`fastlin.threads`) divided among the tasks the scheduler runs there at
once -- a ``distributed`` worker's ``nthreads``, the size of Dask's local
thread pool (its own or one given as ``dask.config.set(pool=...)``), the
CPUs for a worker process of Dask's processes scheduler (one per CPU by
default) -- and at least 1.  A ``distributed`` worker started by a nanny
has ``OMP_NUM_THREADS=1`` (Dask's default), so each of its tasks runs on one
thread; several worker processes on one machine never oversubscribe it.
Tasks run by anything else (another executor, a thread of your own) count
as one task at a time: wrap such a call in :func:`fastlin.threads`.

Requires ``dask[array]`` (``pip install 'fastlin[dask]'``, which also
installs ``distributed``); importing ``fastlin`` itself never imports it.
"""
import functools
import multiprocessing
import operator
import sys
import threading

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"fastlin.dask needs Dask ({e}); install it with "
                      "pip install 'fastlin[dask]'") from e

import fastlin as _fl

from . import _distance_api as _dist
from . import _pairwise_api as _pw

__all__ = ["normalize", "normalize_backward", "softmax", "log_softmax", "softmax_backward",
           "log_softmax_backward", "logsumexp", "cdist", "cdist_backward", "cdist_topk",
           "cdist_topk_backward", "cdist_logsumexp", "cdist_logsumexp_backward",
           "mahalanobis", "mahalanobis_backward", "max_margin_loss",
           "max_margin_loss_backward"]

# Partial results combined at most this many at a time (the tree's fan-in).
_SPLIT_EVERY = 8


# ---------------------------------------------------------------- threads

@functools.lru_cache(maxsize=None)
def _distributed_get_worker():
    """distributed.get_worker, or None without distributed (looked up once:
    a failed import searches the path again on every call)."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    return get_worker


def _concurrent_tasks():
    """How many tasks the scheduler running the calling thread runs at once
    in this process (1 when it is not a Dask worker thread)."""
    get_worker = _distributed_get_worker()
    if get_worker is not None:
        try:
            return max(1, int(get_worker().state.nthreads))
        except (ValueError, AttributeError):
            pass
    try:
        from dask import threaded
    except ImportError:  # pragma: no cover
        return 1
    # the pool's threads are named after it (a thread can run its first task
    # before the pool lists it among its threads); a pool given in Dask's
    # configuration (``dask.config.set(pool=...)``) counts too
    prefix = threading.current_thread().name.rpartition("_")[0]
    pools = [threaded.default_pool, dask.config.get("pool", None)] + [
        p for d in list(threaded.pools.values()) for p in list(d.values())]
    for pool in pools:
        if pool is not None and prefix and getattr(pool, "_thread_name_prefix", None) == prefix:
            return max(1, int(getattr(pool, "_max_workers", 1)))
    if ("dask.multiprocessing" in sys.modules and multiprocessing.parent_process() is not None
            and multiprocessing.current_process().name.startswith(_POOL_PROCESS_NAMES)):
        # a worker process of Dask's processes scheduler (a process pool's,
        # unnamed), one of (by default) as many as the machine has CPUs
        return _fl._threads._cpu_count()
    return 1


# The names multiprocessing gives the processes of a pool (named by neither
# the pool nor Dask); a distributed nanny names its worker processes.
_POOL_PROCESS_NAMES = ("SpawnProcess", "ForkProcess", "ForkServerProcess")


def _task_threads():
    return max(1, _fl.get_num_threads() // _concurrent_tasks())


def _in_task(fn, *args, **kwargs):
    with _fl.threads(_task_threads()):
        return fn(*args, **kwargs)


def _task(fn):
    """fn, run with the task's share of the threads."""
    return functools.partial(_in_task, fn)


# ---------------------------------------------------------------- arguments

def _dask(x, name):
    if isinstance(x, da.Array):
        a = x
    elif x is None:
        raise TypeError(f"{name} must be an array, got None")
    else:
        a = da.asarray(x)
    if any(np.isnan(c) for c in a.shape):
        raise ValueError(f"{name} must have known chunk sizes (call "
                         f"{name}.compute_chunk_sizes() first), got shape {a.shape}")
    return a


def _meta(x):
    """An empty ndarray of x's dtype and ndim, for fastlin's checks."""
    return np.empty((0,) * x.ndim, x.dtype)


def _small(p, like=None):
    """A small argument for the eager checks: an ndarray as given; a Dask
    array by a stand-in of its shape and dtype (its values are checked by
    the tasks)."""
    if p is None or not isinstance(p, da.Array):
        return p
    return like(p) if like is not None else np.zeros(p.shape, p.dtype)


def _eye(p):
    return np.eye(p.shape[0], dtype=p.dtype) if p.ndim == 2 and p.shape[0] == p.shape[1] \
        else np.zeros(p.shape, p.dtype)


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    return tuple(sorted(np.lib.array_utils.normalize_axis_tuple(axis, ndim)))


def _whole(x, axes):
    return all(x.numblocks[a] == 1 for a in axes)


def _same_chunks(a, b, name_a, name_b):
    if a.shape != b.shape:
        raise ValueError(f"{name_a} must have the shape of {name_b} {b.shape}, got {a.shape}")
    return a.rechunk(b.chunks) if a.chunks != b.chunks else a


# ---------------------------------------------------------------- row ops

# Partial results of the split-axis reductions, one record per output
# element: structured arrays (Dask's reductions need array-like parts).
_SUMSQ = np.dtype([("m", np.float64), ("s", np.float64)])
_LSE = np.dtype([("l", np.float64), ("s", np.float64)])


def _record(dtype, **fields):
    v = [np.asarray(f, np.float64) for f in fields.values()]
    out = np.empty(np.broadcast_shapes(*(a.shape for a in v)), dtype)
    for name, a in zip(fields, v):
        out[name] = a
    return out


def _sumsq_chunk(x, axis, keepdims):
    """(scale, sum of (x / scale)^2) over axis: no overflow or underflow."""
    xa = np.abs(x.astype(np.float64))
    m = np.max(xa, axis=axis, keepdims=True, initial=0.0)
    safe = np.where((m > 0) & np.isfinite(m), m, 1.0)
    s = np.sum((xa / safe) ** 2, axis=axis, keepdims=True)
    s = np.where(np.isinf(m), np.inf, s)
    return _record(_SUMSQ, m=safe * (m > 0), s=s)


def _sumsq_combine(parts, axis, keepdims):
    parts = parts if isinstance(parts, list) else [parts]
    flat = _flatten(parts)
    m = functools.reduce(np.maximum, [p["m"] for p in flat])
    safe = np.where((m > 0) & np.isfinite(m), m, 1.0)
    s = sum(p["s"] * (p["m"] / safe) ** 2 for p in flat)
    s = np.where(np.isinf(m), np.inf, s)
    return _record(_SUMSQ, m=safe * (m > 0), s=s)


def _sumsq_norm(parts, axis, keepdims):
    p = _sumsq_combine(parts, axis, keepdims)
    with np.errstate(invalid="ignore"):
        return p["m"] * np.sqrt(p["s"])


def _flatten(parts):
    out = []
    for p in parts:
        out.extend(_flatten(p) if isinstance(p, list) else [p])
    return out


def _norms(x, axes):
    """The L2 norms over axes (keepdims), float64, combined in a tree."""
    return da.reduction(x, _sumsq_chunk, _sumsq_norm, combine=_sumsq_combine, axis=axes,
                        keepdims=True, dtype=_SUMSQ, concatenate=False,
                        meta=np.empty((0,) * x.ndim, np.float64),
                        split_every=_SPLIT_EVERY)


def _lse_chunk(x, axis, keepdims, b=None):
    kw = {} if b is None else {"b": b}
    l, s = _fl.logsumexp(x, axis=axis, keepdims=True, return_sign=True, **kw)
    return _record(_LSE, l=l, s=s)


def _lse_combine(parts, axis, keepdims):
    flat = _flatten(parts if isinstance(parts, list) else [parts])
    m = functools.reduce(np.maximum, [p["l"] for p in flat])
    shift = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        total = sum(p["s"] * np.exp(p["l"] - shift) for p in flat)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _record(_LSE, l=shift + np.log(np.abs(total)), s=np.sign(total))


def _lse_tree(x, axes, b=None):
    """{'l': log|sum|, 's': sign} over axes (keepdims), as a Dask reduction
    of fastlin's per-chunk (logsumexp, sign) pairs."""
    if b is None:
        chunk = _task(_lse_chunk)
        src = x
    else:
        # x and b in one structured array: a reduction reads one array
        src = da.map_blocks(_pack_xb, x, b, dtype=[("x", x.dtype), ("b", b.dtype)])

        def chunk(xb, axis, keepdims):
            return _in_task(_lse_chunk, xb["x"], axis, keepdims, b=xb["b"])
    return _lse_reduce(src, chunk, axes)


def _lse_reduce(src, chunk, axes):
    def agg_l(p, axis, keepdims):
        return _lse_combine(p, axis, keepdims)["l"]

    def agg_s(p, axis, keepdims):
        return _lse_combine(p, axis, keepdims)["s"]
    # two reductions of the same per-chunk graph: Dask merges the shared
    # chunk tasks (same names), so each chunk is reduced once
    # dtype: the parts' (Dask checks it against them); meta: the result's
    kw = dict(axis=axes, keepdims=True, dtype=_LSE, concatenate=False,
              meta=np.empty((0,) * src.ndim, np.float64),
              split_every=_SPLIT_EVERY, combine=_lse_combine, name="fastlin-lse-" +
              tokenize(src, axes))
    return (da.reduction(src, chunk, agg_l, **kw),
            da.reduction(src, chunk, agg_s, **{**kw, "name": kw["name"] + "-sign"}))


def _pack_xb(x, b):
    out = np.empty(np.broadcast_shapes(x.shape, b.shape),
                   dtype=[("x", x.dtype), ("b", b.dtype)])
    out["x"], out["b"] = x, b
    return out


def _apply(fn, dtype, *arrays):
    return da.map_blocks(fn, *arrays, dtype=dtype)


def _exp_minus(x, l, dtype):
    # a row holding +inf: every entry nan, as fastlin's (and scipy's) softmax
    with np.errstate(invalid="ignore"):
        return np.where(l == np.inf, np.nan, np.exp(x.astype(np.float64) - l)).astype(dtype)


def _minus(x, l, dtype):
    return (x.astype(np.float64) - l).astype(dtype)


def _divide(x, d, dtype):
    return (x.astype(np.float64) / d).astype(dtype)


def normalize(x, axis=-1, eps=1e-12):
    """:func:`fastlin.normalize` on a Dask array: ``x / max(||x||, eps)``
    over `axis` (see the module's notes on split axes)."""
    x = _dask(x, "x")
    dtype = _fl.normalize(_meta(x), axis=axis, eps=eps).dtype
    axes = _axes(axis, x.ndim)
    if _whole(x, axes):
        return x.map_blocks(_task(_fl.normalize), axis=axis, eps=eps, dtype=dtype)
    n = _norms(x, axes)
    # eps = 0: a zero vector stays zero (fastlin's rule)
    d = da.where(n == 0, 1.0, n) if eps == 0 else da.maximum(n, eps)
    return _apply(functools.partial(_divide, dtype=dtype), dtype, x, d)


def _unit_dot(g, x, n):
    """sum over the chunk's part of the axis of g * (x / n) (n: the whole
    norm): each factor in range where ``g . x`` or ``n^2`` would overflow or
    underflow."""
    safe = np.where(n == 0, 1.0, n)
    return g.astype(np.float64) * (x.astype(np.float64) / safe)


def _normalize_bwd_apply(g, x, n, s, eps, dtype):
    """fastlin's normalize_backward from the whole norm n and s = g . (x/n):
    (g - (x/n) s) / n, or g / eps where the norm is below eps."""
    g64, x64 = g.astype(np.float64), x.astype(np.float64)
    safe = np.where(n == 0, 1.0, n)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        norm_branch = (g64 - (x64 / safe) * s) / safe
    clamp = g64 / (eps if eps > 0 else 1.0)
    r = np.where(n < eps, clamp, norm_branch)
    r = np.where((n == 0) & (eps == 0), 0.0, r)
    return r.astype(dtype)


def normalize_backward(grad, x, axis=-1, eps=1e-12):
    """:func:`fastlin.normalize_backward` on Dask arrays."""
    x = _dask(x, "x")
    g = _same_chunks(_dask(grad, "grad"), x, "grad", "x")
    dtype = _fl.normalize_backward(_meta(g), _meta(x), axis=axis, eps=eps).dtype
    axes = _axes(axis, x.ndim)
    if _whole(x, axes):
        return da.map_blocks(_task(_fl.normalize_backward), g, x, axis=axis, eps=eps,
                             dtype=dtype)
    n = _norms(x, axes)
    s = da.map_blocks(_unit_dot, g, x, n, dtype=np.float64).sum(
        axis=axes, keepdims=True, split_every=_SPLIT_EVERY)
    return da.map_blocks(functools.partial(_normalize_bwd_apply, eps=float(eps), dtype=dtype),
                         g, x, n, s, dtype=dtype)


def softmax(x, axis=None):
    """:func:`fastlin.softmax` on a Dask array (scipy's default ``axis=None``:
    over all elements)."""
    x = _dask(x, "x")
    dtype = _fl.softmax(_meta(x), axis=axis).dtype
    axes = _axes(axis, x.ndim)
    if _whole(x, axes):
        return x.map_blocks(_task(_fl.softmax), axis=axis, dtype=dtype)
    l, _ = _lse_tree(x, axes)
    return _apply(functools.partial(_exp_minus, dtype=dtype), dtype, x, l)


def log_softmax(x, axis=None):
    """:func:`fastlin.log_softmax` on a Dask array."""
    x = _dask(x, "x")
    dtype = _fl.log_softmax(_meta(x), axis=axis).dtype
    axes = _axes(axis, x.ndim)
    if _whole(x, axes):
        return x.map_blocks(_task(_fl.log_softmax), axis=axis, dtype=dtype)
    l, _ = _lse_tree(x, axes)
    return _apply(functools.partial(_minus, dtype=dtype), dtype, x, l)


def _softmax_bwd_apply(g, y, s, dtype):
    return (y.astype(np.float64) * (g.astype(np.float64) - s)).astype(dtype)


def _log_softmax_bwd_apply(g, y, s, dtype):
    return (g.astype(np.float64) - np.exp(y.astype(np.float64)) * s).astype(dtype)


def softmax_backward(grad, y, axis=None):
    """:func:`fastlin.softmax_backward` on Dask arrays (y: softmax's result)."""
    y = _dask(y, "y")
    g = _same_chunks(_dask(grad, "grad"), y, "grad", "y")
    dtype = _fl.softmax_backward(_meta(g), _meta(y), axis=axis).dtype
    axes = _axes(axis, y.ndim)
    if _whole(y, axes):
        return da.map_blocks(_task(_fl.softmax_backward), g, y, axis=axis, dtype=dtype)
    s = (g.astype(np.float64) * y.astype(np.float64)).sum(axis=axes, keepdims=True,
                                                          split_every=_SPLIT_EVERY)
    return da.map_blocks(functools.partial(_softmax_bwd_apply, dtype=dtype), g, y, s,
                         dtype=dtype)


def log_softmax_backward(grad, y, axis=None):
    """:func:`fastlin.log_softmax_backward` on Dask arrays (y: log_softmax's
    result)."""
    y = _dask(y, "y")
    g = _same_chunks(_dask(grad, "grad"), y, "grad", "y")
    dtype = _fl.log_softmax_backward(_meta(g), _meta(y), axis=axis).dtype
    axes = _axes(axis, y.ndim)
    if _whole(y, axes):
        return da.map_blocks(_task(_fl.log_softmax_backward), g, y, axis=axis, dtype=dtype)
    s = g.astype(np.float64).sum(axis=axes, keepdims=True, split_every=_SPLIT_EVERY)
    return da.map_blocks(functools.partial(_log_softmax_bwd_apply, dtype=dtype), g, y, s,
                         dtype=dtype)


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    """:func:`fastlin.logsumexp` on Dask arrays, a tree reduction over chunks.

    `b` (broadcastable to `a`) may be a Dask array; a negative total gives
    nan unless ``return_sign`` (then ``(lse, sign)``), as fastlin's.
    """
    a = _dask(a, "a")
    bm = None if b is None else _meta(_dask(b, "b"))
    ref = _fl.logsumexp(np.empty((1,) * a.ndim, a.dtype), axis=axis,
                        b=None if bm is None else np.ones((1,) * bm.ndim, bm.dtype),
                        keepdims=keepdims, return_sign=True)
    dtype = np.asarray(ref[0]).dtype
    axes = _axes(axis, a.ndim)
    if b is not None:
        bd = _dask(b, "b")
        shape = np.broadcast_shapes(a.shape, bd.shape)
        if shape != a.shape:
            a = da.broadcast_to(a, shape)
        bd = da.broadcast_to(bd, shape).rechunk(a.chunks)
        l, s = _lse_tree(a, axes, bd)
    else:
        l, s = _lse_tree(a, axes)
    if not keepdims:
        l, s = l.squeeze(axis=axes), s.squeeze(axis=axes)
    if return_sign:
        return l.astype(dtype), s.astype(dtype)
    with np.errstate(invalid="ignore"):
        return da.where(s < 0, np.nan, l).astype(dtype)


# ---------------------------------------------------------------- pairwise

class _Graph:
    """A hand-built graph over the blocks of some Dask arrays."""

    def __init__(self, prefix, *deps):
        self.token = tokenize(prefix, *deps)
        self.prefix = prefix
        self.layer = {}
        self.deps = [d for d in deps if isinstance(d, da.Array)]
        self.n = 0

    def key(self, part, *index):
        return (f"{self.prefix}-{part}-{self.token}",) + index

    def add(self, key, task):
        self.layer[key] = task
        return key

    def tree(self, part, keys, combine, *extra):
        """Combine keys in a fixed tree of fan-in _SPLIT_EVERY; the root's key."""
        level = 0
        while len(keys) > 1:
            level += 1
            nxt = []
            for g in range(0, len(keys), _SPLIT_EVERY):
                k = self.key(part, level, g, self.n)
                self.n += 1
                nxt.append(self.add(k, (combine, list(keys[g:g + _SPLIT_EVERY])) + extra))
            keys = nxt
        return keys[0]

    def array(self, part, blocks, chunks, dtype):
        """A Dask array whose block i (of a 2-d or 1-d grid) is blocks[i]."""
        name = self.key(part)[0]
        for idx, task in blocks.items():
            self.layer[(name,) + idx] = task
        g = HighLevelGraph.from_collections(name, dict(self.layer), dependencies=self.deps)
        return da.Array(g, name, chunks=chunks, dtype=dtype)

    def const(self, p):
        """A small argument: itself, or the key of a Dask array made one block."""
        if not isinstance(p, da.Array):
            return p
        p = p.rechunk(-1)
        self.deps.append(p)
        return (p.name,) + (0,) * p.ndim


def _points(X, name):
    X = _dask(X, name)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-d (points x features), got shape {X.shape}")
    return X.rechunk({1: -1}) if X.numblocks[1] != 1 else X


def _offsets(chunks):
    return np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)


def _pair_setup(XA, XB, metric, w, VI, what):
    XA, XB = _points(XA, "XA"), _points(XB, "XB")
    if XA.shape[1] != XB.shape[1]:
        raise ValueError(f"XA and XB must have the same number of columns, got "
                         f"{XA.shape[1]} and {XB.shape[1]}")
    if _dist._metric(metric) == "mahalanobis" and VI is None:
        raise ValueError(f"fastlin.dask.{what} with metric='mahalanobis' needs VI: the "
                         "default estimates it from all the points at once (compute "
                         "it, e.g. the inverse of dask.array.cov, and pass it)")
    # fastlin's own checks of metric, dtypes, w and VI, on empty points
    n = XA.shape[1]
    meta = _fl.cdist(np.empty((0, n), XA.dtype), np.empty((0, n), XB.dtype), metric,
                     w=_small(w, lambda p: np.ones(p.shape, p.dtype)), VI=_small(VI, _eye))
    # the metric as given: fastlin's short path takes the plain names only
    # (an alias such as 'euclid' runs the general path), and so do the chunks
    return XA, XB, metric, meta.dtype


def _plan(G, XA, XB, given_metric, w, dtype):
    """The key (or value) of the _Plan every pair of chunks follows."""
    mA, n = XA.shape
    mB = XB.shape[0]
    metric = _dist._metric(given_metric)
    small = (_dist._small_mode((XA, XB), given_metric, n, mA * mB * n)
             if w is None else None)
    if small is not None or not _dist._uses_blas(metric, n) or not mA:
        return _dist._Plan(small, None)
    wv = G.const(w)
    stats = [G.add(G.key("stats", i), (_plan_stats, k, metric, dtype, wv, n))
             for i, k in enumerate(_col(XA))]
    sample = XA[::_dist._plan_sample_step(mA)].rechunk(-1)
    G.deps.append(sample)
    return G.add(G.key("plan"), (_plan_of, (sample.name, 0, 0), stats, metric, dtype, wv, n))


def _weights_of(w, n, dtype):
    return None if w is None else _dist._weights(np.asarray(w), n, dtype)


def _plan_stats(X, metric, dtype, w, n):
    return _dist._plan_stats(X, metric, dtype, _weights_of(w, n, dtype))


def _plan_of(sample, stats, metric, dtype, w, n):
    sw = _weights_of(w, n, dtype)
    c = _dist._plan_centre(sample, metric, dtype, sw)
    return _dist._make_plan(c, stats, metric, w)


def _col(X):
    """The keys of a 2-d array's row blocks (one block of columns)."""
    return [row[0] for row in X.__dask_keys__()]


def _cdist_block(XA, XB, metric, w, VI, plan):
    return _in_task(_dist._cdist, XA, XB, metric, None, w, VI, plan)


def cdist(XA, XB, metric="euclidean", *, w=None, VI=None):
    """:func:`fastlin.cdist` between two chunked point sets.

    Parameters
    ----------
    XA, XB : dask.array.Array or array_like, shapes (mA, n) and (mB, n)
        Chunked along the rows (the features are made one chunk).
    metric, w
        As :func:`fastlin.cdist`.
    VI : array_like, shape (n, n)
        Required for 'mahalanobis'.

    Returns
    -------
    D : dask.array.Array, shape (mA, mB)
        Chunked as (XA's rows, XB's rows): one fastlin call per block,
        bitwise fastlin's entries where its GEMM allows (module notes).
    """
    XA, XB, metric, dtype = _pair_setup(XA, XB, metric, w, VI, "cdist")
    G = _Graph("fastlin-cdist", XA, XB, metric, w, VI)
    plan = _plan(G, XA, XB, metric, w, dtype)
    wv, vv = G.const(w), G.const(VI)
    blocks = {(i, j): (_cdist_block, a, b, metric, wv, vv, plan)
              for i, a in enumerate(_col(XA)) for j, b in enumerate(_col(XB))}
    return G.array("out", blocks, (XA.chunks[0], XB.chunks[0]), dtype)


def _sum_parts(parts):
    """A sum of partial gradients, in float64 (float32 pieces added in
    float32 would round at every level of the tree)."""
    return functools.reduce(operator.add, [np.asarray(p, np.float64) for p in parts])


def _item(t, i):
    return t[i]


def _cdist_bwd_block(g, a, b, metric, VI, dist):
    return _in_task(_fl.cdist_backward, g, a, b, metric, VI=VI, dist=dist)


def cdist_backward(grad, XA, XB, metric="euclidean", *, VI=None, dist=None):
    """:func:`fastlin.cdist_backward` on chunked arrays: ``(gXA, gXB)``, each
    summed over the pairs of chunks in a tree."""
    XA, XB, metric, dtype = _pair_setup(XA, XB, metric, None, VI, "cdist_backward")
    chunks = (XA.chunks[0], XB.chunks[0])
    g = _dask(grad, "grad")
    if g.shape != (XA.shape[0], XB.shape[0]):
        raise ValueError(f"grad must have the shape of the distances "
                         f"{(XA.shape[0], XB.shape[0])}, got {g.shape}")
    g = g.rechunk(chunks)
    d = None if dist is None else _same_chunks(_dask(dist, "dist").rechunk(chunks), g,
                                                "dist", "grad")
    G = _Graph("fastlin-cdist-bwd", g, XA, XB, metric, VI, d)
    vv = G.const(VI)
    if d is not None:
        G.deps.append(d)
    G.deps.append(g)
    A, B = _col(XA), _col(XB)
    gk, dk = g.__dask_keys__(), None if d is None else d.__dask_keys__()
    pair = {}
    for i, a in enumerate(A):
        for j, b in enumerate(B):
            pair[i, j] = G.add(G.key("pair", i, j),
                               (_cdist_bwd_block, gk[i][j], a, b, metric, vv,
                                None if dk is None else dk[i][j]))
    return _gather(G, pair, len(A), len(B), XA, XB, dtype)


def _gather(G, pair, nA, nB, XA, XB, dtype, third=None):
    """gXA (sum over j of item 0), gXB (sum over i of item 1) and, with
    `third` (a dtype), the sum over i of item 2 per XB block; each summed in
    float64 in a tree, then rounded to its dtype once."""
    def total(part, keys, out_dtype):
        return (_cast, G.tree(part, keys, _sum_parts), out_dtype)

    def items(q, pairs, tag):
        return [G.add(G.key(tag, *ij), (_item, pair[ij], q)) for ij in pairs]
    ga = {(i, 0): total(f"a{i}", items(0, [(i, j) for j in range(nB)], "ga"), dtype)
          for i in range(nA)}
    gb = {(j, 0): total(f"b{j}", items(1, [(i, j) for i in range(nA)], "gb"), dtype)
          for j in range(nB)}
    outs = [G.array("gXA", ga, XA.chunks, dtype), G.array("gXB", gb, XB.chunks, dtype)]
    if third is not None:
        gw = {(j,): total(f"w{j}", items(2, [(i, j) for i in range(nA)], "gw"), third)
              for j in range(nB)}
        outs.append(G.array("gb", gw, (XB.chunks[0],), third))
    return tuple(outs)


def _topk_block(a, b, k, metric, largest, w, VI, plan, offset):
    d, i = _in_task(_pw._topk, a, b, min(k, len(b)), metric, largest, w, VI, plan)
    return d, i + offset


def _topk_merge(parts, k, largest):
    d = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    key = -d if largest else d
    # lexsort: the last key first; nan sorts last, ties by the lower index
    order = np.lexsort((i, key), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def cdist_topk(XA, XB, k, metric="euclidean", *, largest=False, w=None, VI=None):
    """:func:`fastlin.cdist_topk` on chunked points.

    Parameters
    ----------
    XA : dask.array.Array or array_like, shape (mA, n)
        Query points, chunked along the rows (the features are made one
        chunk).
    XB : dask.array.Array or array_like, shape (mB, n)
        Reference points, chunked along the rows.
    k, metric, largest, w
        As :func:`fastlin.cdist_topk`.
    VI : array_like, shape (n, n)
        Required for 'mahalanobis' (its default estimate needs all the
        points at once).

    Returns
    -------
    dist : dask.array.Array, shape (mA, k)
    idx : dask.array.Array of int64, shape (mA, k)
        Chunked as XA's rows.

    Notes
    -----
    The k best of each pair of row chunks (fastlin's ``cdist_topk``), merged
    across XB's chunks by distance, ties by the lower index, nan last, in a
    tree of fan-in 8: equal to fastlin's result on the computed arrays
    wherever the distances are (module notes, *Exactness*).  Memory per
    task: its two chunks, fastlin's tiles and (rows, k) candidates.
    """
    XA, XB, metric, dtype = _pair_setup(XA, XB, metric, w, VI, "cdist_topk")
    k = _pw._check_k(k, XB.shape[0])
    largest = bool(largest)
    G = _Graph("fastlin-topk", XA, XB, k, metric, largest, w, VI)
    plan = _plan(G, XA, XB, metric, w, dtype)
    wv, vv = G.const(w), G.const(VI)
    offs = _offsets(XB.chunks[0])
    roots = []
    for i, a in enumerate(_col(XA)):
        parts = [G.add(G.key("part", i, j), (_topk_block, a, b, k, metric, largest, wv, vv,
                                             plan, int(offs[j])))
                 for j, b in enumerate(_col(XB))]
        roots.append(G.tree(f"merge{i}", parts, _topk_merge, k, largest))
    chunks = (XA.chunks[0], (k,))
    dist = G.array("dist", {(i, 0): (_item, r, 0) for i, r in enumerate(roots)}, chunks, dtype)
    idx = G.array("idx", {(i, 0): (_item, r, 1) for i, r in enumerate(roots)}, chunks,
                  np.int64)
    return dist, idx


def _topk_bwd_block(g, a, b, idx, dist, lo, metric, w, VI):
    """The gradients of the selected pairs whose XB row is in this chunk:
    each such pair as a row of its own (its XA row repeated, k = 1), so that
    no entry of another chunk is touched (a placeholder pair would turn an
    inf row into nan through 0 * inf).  (gA, gB) of the chunks, float64."""
    mine = (idx >= lo) & (idx < lo + len(b))
    gA = np.zeros(a.shape)
    if not mine.any():
        return gA, np.zeros(b.shape)
    r, q = np.nonzero(mine)
    d = None if dist is None else dist[r, q][:, None]
    ga, gb = _in_task(_fl.cdist_topk_backward, g[r, q][:, None], a[r], b,
                      (idx[r, q] - lo)[:, None], metric, w=w, VI=VI, dist=d)
    np.add.at(gA, r, ga)
    return gA, np.asarray(gb, np.float64)


def cdist_topk_backward(grad, XA, XB, idx, metric="euclidean", *, w=None, VI=None,
                        dist=None):
    """:func:`fastlin.cdist_topk_backward` on chunked arrays: ``(gXA, gXB)``;
    each pair of chunks scatters the gradients of the pairs it holds, and
    the pieces are summed in a tree."""
    XA, XB, metric, dtype = _pair_setup(XA, XB, metric, w, VI, "cdist_topk_backward")
    idx = _dask(idx, "idx")
    if idx.ndim != 2 or idx.shape[0] != XA.shape[0]:
        raise ValueError(f"idx must have shape ({XA.shape[0]}, k) (cdist_topk's indices), "
                         f"got {idx.shape}")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"idx must hold integers (cdist_topk's int64 indices), got dtype "
                        f"{idx.dtype}")
    chunks = (XA.chunks[0], (idx.shape[1],))
    idx = idx.rechunk(chunks)
    g = _same_chunks(_dask(grad, "grad").rechunk(chunks), idx, "grad", "idx")
    d = None if dist is None else _same_chunks(_dask(dist, "dist").rechunk(chunks), idx,
                                                "dist", "idx")
    G = _Graph("fastlin-topk-bwd", g, XA, XB, idx, metric, w, VI, d)
    G.deps += [g, idx] + ([d] if d is not None else [])
    wv, vv = G.const(w), G.const(VI)
    offs = _offsets(XB.chunks[0])
    A, B = _col(XA), _col(XB)
    gk, ik = _col(g), _col(idx)
    dk = None if d is None else _col(d)
    pair = {(i, j): G.add(G.key("pair", i, j),
                          (_topk_bwd_block, gk[i], a, b, ik[i], None if dk is None else dk[i],
                           int(offs[j]), metric, wv, vv))
            for i, a in enumerate(A) for j, b in enumerate(B)}
    return _gather(G, pair, len(A), len(B), XA, XB, dtype)


def _lse_block(a, b, metric, scale, bw, w, VI, plan):
    return _in_task(_pw._logsumexp_pairs, a, b, metric, scale, bw, w, VI, plan)


def _lse_merge(parts):
    l = _fl.logsumexp(np.stack([np.asarray(p, np.float64) for p in parts]), axis=0)
    return np.asarray(l)


def _cast(x, dtype):
    return np.asarray(x).astype(dtype, copy=False)


def _b_blocks(b, XB, G):
    if b is None:
        return [None] * XB.numblocks[0]
    bd = _dask(b, "b")
    if bd.shape != (XB.shape[0],):
        raise ValueError(f"b must have shape ({XB.shape[0]},) (one weight per row of XB), "
                         f"got {bd.shape}")
    bd = bd.rechunk((XB.chunks[0],))
    G.deps.append(bd)
    return [k for k in bd.__dask_keys__()]


def cdist_logsumexp(XA, XB, metric="sqeuclidean", *, scale=-1.0, b=None, w=None, VI=None):
    """:func:`fastlin.cdist_logsumexp` on chunked points.

    Parameters
    ----------
    XA, XB : dask.array.Array or array_like, shapes (mA, n) and (mB, n)
        Chunked along the rows (the features are made one chunk).
    metric, scale, w
        As :func:`fastlin.cdist_logsumexp`.
    b : dask.array.Array or array_like, shape (mB,), optional
        Non-negative weights, chunked as XB's rows.
    VI : array_like, shape (n, n)
        Required for 'mahalanobis'.

    Returns
    -------
    lse : dask.array.Array, shape (mA,)
        Chunked as XA's rows, in cdist's dtype.

    Notes
    -----
    One soft-min per pair of row chunks, combined by log-sum-exp across
    XB's chunks in a tree, in float64: within a few ulps of fastlin's result
    (the partial results are rounded to the dtype once each).
    """
    XA, XB, metric, dtype = _pair_setup(XA, XB, metric, w, VI, "cdist_logsumexp")
    scale = _pw._check_scale(scale)
    G = _Graph("fastlin-softmin", XA, XB, metric, scale, b, w, VI)
    bk = _b_blocks(b, XB, G)
    if b is not None and not isinstance(b, da.Array):
        _pw._check_b(b, XB.shape[0], dtype)
    plan = _plan(G, XA, XB, metric, w, dtype)
    wv, vv = G.const(w), G.const(VI)
    blocks = {}
    for i, a in enumerate(_col(XA)):
        parts = [G.add(G.key("part", i, j), (_lse_block, a, bb, metric, scale, bk[j], wv, vv,
                                             plan))
                 for j, bb in enumerate(_col(XB))]
        root = parts[0] if len(parts) == 1 else G.tree(f"merge{i}", parts, _lse_merge)
        blocks[(i,)] = (_cast, root, dtype)
    if not XB.shape[0]:
        return da.full(XA.shape[0], -np.inf, dtype=dtype, chunks=(XA.chunks[0],))
    return G.array("out", blocks, (XA.chunks[0],), dtype)


def _lse_bwd_block(g, a, b, metric, scale, bw, w, VI, lse):
    return _in_task(_fl.cdist_logsumexp_backward, g, a, b, metric, scale=scale, b=bw, w=w,
                    VI=VI, lse=lse)


def cdist_logsumexp_backward(grad, XA, XB, metric="sqeuclidean", *, scale=-1.0, b=None,
                             w=None, VI=None, lse=None):
    """:func:`fastlin.cdist_logsumexp_backward` on chunked arrays:
    ``(gXA, gXB, gb)``.  Every pair of chunks needs the whole row's
    log-sum-exp: `lse` (the forward's result) when given, else it is
    computed first (:func:`cdist_logsumexp`)."""
    XA, XB, metric, dtype = _pair_setup(XA, XB, metric, w, VI, "cdist_logsumexp_backward")
    scale = _pw._check_scale(scale)
    if lse is None:
        lse = cdist_logsumexp(XA, XB, metric, scale=scale, b=b, w=w, VI=VI)
    rows = (XA.chunks[0],)
    lv = _dask(lse, "lse")
    g = _dask(grad, "grad")
    for v, name in ((g, "grad"), (lv, "lse")):
        if v.shape != (XA.shape[0],):
            raise ValueError(f"{name} must have shape ({XA.shape[0]},) (one per row of XA), "
                             f"got {v.shape}")
    g, lv = g.rechunk(rows), lv.rechunk(rows)
    G = _Graph("fastlin-softmin-bwd", g, XA, XB, metric, scale, b, w, VI, lv)
    G.deps += [g, lv]
    bk = _b_blocks(b, XB, G)
    wv, vv = G.const(w), G.const(VI)
    gk, lk = g.__dask_keys__(), lv.__dask_keys__()
    A, B = _col(XA), _col(XB)
    pair = {(i, j): G.add(G.key("pair", i, j),
                          (_lse_bwd_block, gk[i], a, bb, metric, scale, bk[j], wv, vv, lk[i]))
            for i, a in enumerate(A) for j, bb in enumerate(B)}
    return _gather(G, pair, len(A), len(B), XA, XB, dtype, third=dtype)


# ---------------------------------------------------------------- mahalanobis, margin

def _maha_args(X, mean, cov, VI, cholesky):
    X = _dask(X, "X")
    if X.ndim < 1:
        raise ValueError("X must have shape (..., d), got a 0-d array")
    X = X.rechunk({X.ndim - 1: -1}) if X.numblocks[-1] != 1 else X
    return X, {"mean": mean, "cov": cov, "VI": VI, "cholesky": cholesky}


def _maha_meta(X, params, squared):
    sm = {k: _small(v, _eye if k != "mean" else None) for k, v in params.items()}
    return _fl.mahalanobis(np.empty((0, X.shape[-1]), X.dtype), sm["mean"], sm["cov"],
                           VI=sm["VI"], cholesky=sm["cholesky"], squared=squared).dtype


def _maha_block(X, mean=None, cov=None, VI=None, cholesky=None, squared=False):
    return _in_task(_fl.mahalanobis, X, mean, cov, VI=VI, cholesky=cholesky, squared=squared)


def mahalanobis(X, mean, cov=None, *, VI=None, cholesky=None, squared=False):
    """:func:`fastlin.mahalanobis` on a Dask array of points (..., d): chunk
    by chunk (the d features whole), bitwise fastlin's result."""
    X, params = _maha_args(X, mean, cov, VI, cholesky)
    dtype = _maha_meta(X, params, squared)
    return da.map_blocks(_maha_block, X, drop_axis=X.ndim - 1, dtype=dtype, squared=squared,
                         **params)


def _maha_bwd_block(g, X, mean=None, cov=None, VI=None, cholesky=None, squared=False):
    return _in_task(_fl.mahalanobis_backward, g, X, mean, cov, VI=VI, cholesky=cholesky,
                    squared=squared)


def mahalanobis_backward(grad, X, mean, cov=None, *, VI=None, cholesky=None, squared=False):
    """:func:`fastlin.mahalanobis_backward` on Dask arrays: ``(gX, gmean,
    gM)``; gX chunk by chunk, gmean and gM summed over chunks in a tree."""
    X, params = _maha_args(X, mean, cov, VI, cholesky)
    dtype = _maha_meta(X, params, squared)
    g = _dask(grad, "grad")
    if g.shape != X.shape[:-1]:
        raise ValueError(f"grad must have the shape of the distances {X.shape[:-1]}, "
                         f"got {g.shape}")
    g = g.rechunk(X.chunks[:-1])
    d = X.shape[-1]
    lead = "".join(chr(ord("a") + i) for i in range(X.ndim - 1))
    parts = da.blockwise(_maha_bwd_block, lead + "z", g, lead, X, lead + "z", dtype=object,
                         meta=np.empty((0,) * X.ndim, object), squared=squared, **params,
                         concatenate=True)
    keys = _flat_keys(parts.__dask_keys__())
    G = _Graph("fastlin-maha-bwd", parts)
    G.deps.append(parts)
    gX = G.array("gX", {k[1:]: (_item, k, 0) for k in keys}, X.chunks, dtype)
    gm = G.tree("mean", [G.add(G.key("m", *k[1:]), (_item, k, 1)) for k in keys], _sum_parts)
    gM = G.tree("M", [G.add(G.key("M", *k[1:]), (_item, k, 2)) for k in keys], _sum_parts)
    gmean = G.array("gmean", {(0,): (_cast, gm, dtype)}, ((d,),), dtype)
    gMat = G.array("gM", {(0, 0): (_cast, gM, dtype)}, ((d,), (d,)), dtype)
    return gX, gmean, gMat


def _flat_keys(keys):
    return _flatten(keys) if isinstance(keys, list) else [keys]


def _margin_args(pos, neg, margin, reduction):
    neg = _dask(neg, "neg")
    pos = _dask(pos, "pos")
    # fastlin's checks, on empty stand-ins of the same shapes
    lead = neg.shape[:-1]
    if pos.shape == lead + (1,):
        pos = pos.reshape(lead)
    if neg.ndim < 2:
        raise ValueError(f"neg must have shape (..., B, N), got {neg.ndim}-d shape {neg.shape}")
    _fl.max_margin_loss(np.zeros((1,) * pos.ndim, pos.dtype),
                        np.zeros((1,) * neg.ndim, neg.dtype), margin, reduction)
    if pos.shape != lead:
        raise ValueError(f"pos must have shape {lead} or {lead + (1,)} to match neg of shape "
                         f"{neg.shape}, got {pos.shape}")
    pos = pos.rechunk(neg.chunks[:-1])
    dtype = np.asarray(_fl.max_margin_loss(np.zeros(1, pos.dtype), np.zeros((1, 1), neg.dtype),
                                           margin, "none")).dtype
    return pos, neg, dtype


def _margin_sum_block(p, q, margin):
    """The block's float64 sum, as a one-element block of the grid of sums
    (float32 losses summed in float64, as fastlin accumulates them)."""
    if q.dtype == np.float64:
        t = np.float64(_in_task(_fl.max_margin_loss, p, q, margin, "sum"))
    else:
        t = np.sum(_in_task(_fl.max_margin_loss, p, q, margin, "none"), dtype=np.float64)
    return np.full((1,) * q.ndim, t)


def max_margin_loss(pos, neg, margin=1.0, reduction="sum"):
    """:func:`fastlin.max_margin_loss` on Dask arrays.  'none' is chunk by
    chunk (bitwise fastlin's); 'sum' and 'mean' add float64 per-chunk sums in
    a tree (within a few ulps of fastlin's float64 accumulation)."""
    pos, neg, dtype = _margin_args(pos, neg, margin, reduction)
    lead = "".join(chr(ord("a") + i) for i in range(neg.ndim - 1))
    if reduction == "none":
        return da.blockwise(_task(_fl.max_margin_loss), lead + "z", pos, lead, neg,
                            lead + "z", dtype=dtype, margin=margin, reduction="none")
    parts = da.blockwise(_margin_sum_block, lead + "z", pos, lead, neg, lead + "z",
                         dtype=np.float64, margin=float(margin),
                         adjust_chunks={c: 1 for c in lead + "z"})
    total = parts.sum(split_every=_SPLIT_EVERY)
    if reduction == "mean":
        size = int(np.prod(neg.shape))
        total = total / size if size else total * np.nan
    return total.astype(dtype)


def _margin_bwd_block(g, p, q, margin, reduction):
    gp, gq = _in_task(_fl.max_margin_loss_backward, g, p, q, margin, reduction)
    return gq, gp[..., None]


def max_margin_loss_backward(grad, pos, neg, margin=1.0, reduction="sum"):
    """:func:`fastlin.max_margin_loss_backward` on Dask arrays: ``(gpos,
    gneg)``, gneg chunk by chunk, gpos summed over the chunks of N."""
    pos_shape = _dask(pos, "pos").shape
    pos, neg, dtype = _margin_args(pos, neg, margin, reduction)
    lead = "".join(chr(ord("a") + i) for i in range(neg.ndim - 1))
    g = _dask(grad, "grad")
    if reduction == "none":
        g = _same_chunks(g, neg, "grad", "neg")
        fn, garg = functools.partial(_margin_bwd_block, reduction="none"), (g, lead + "z")
    else:
        if g.size != 1:
            raise ValueError(f"grad must be a scalar for reduction={reduction!r}, "
                             f"got shape {g.shape}")
        gv = g.reshape(()).astype(np.float64)
        if reduction == "mean" and neg.size:
            gv = gv / neg.size
        fn, garg = functools.partial(_margin_bwd_block, reduction="sum"), (gv, "")
    both = da.blockwise(fn, lead + "z", *garg, pos, lead, neg, lead + "z", dtype=object,
                        meta=np.empty((0,) * neg.ndim, object), margin=float(margin))
    keys = _flat_keys(both.__dask_keys__())
    G = _Graph("fastlin-margin-bwd", both)
    G.deps.append(both)
    gneg = G.array("gneg", {k[1:]: (_item, k, 0) for k in keys}, neg.chunks, dtype)
    gp_parts = G.array("gp", {k[1:]: (_item, k, 1) for k in keys},
                       neg.chunks[:-1] + ((1,) * neg.numblocks[-1],), dtype)
    gpos = gp_parts.astype(np.float64).sum(axis=-1, split_every=_SPLIT_EVERY).astype(dtype)
    return gpos.reshape(pos_shape), gneg
