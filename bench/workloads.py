"""What the suite times: workloads, ops, and each op's peers.

Three families share the machinery: the same-shape reductions (softmax,
log_softmax, logsumexp, normalize and their backward passes) on
:class:`Workload` s, the pairwise distances (cdist, pdist and their
backward passes) on :class:`DistWorkload` s, and the Mahalanobis distance
and max-margin loss (and their backward passes, and the mahalanobis cdist)
on :class:`StatWorkload` s, at the end of this module.

A *case* is one workload in one dtype: its inputs are made once and shared
by fastlin and every peer.  An op maps a case to the callable fastlin is
timed on and, per peer, to a :class:`Bench` (the callable, and an optional
untimed ``setup`` run before each call) or ``None`` when the peer has no
such function for this case.

Peers of the reductions, and what they stand for (the distance peers are
described with :data:`DIST_OPS`):

* ``scipy``   -- ``scipy.special`` (forward only; scipy has no backward).
* ``numpy``   -- the stable textbook formula in plain NumPy, forward and
  backward.  A backward formula gets what a framework would have saved
  from the forward (``y``, or the logsumexp result).
* ``sklearn`` -- ``sklearn.utils.extmath.softmax`` and
  ``sklearn.preprocessing.normalize``, both in place (``copy=False``) on a
  fresh copy of the input made outside the timed region; rows only
  (``axis=-1``), as that is all they compute.
* ``torch``   -- torch CPU on tensors made with ``torch.from_numpy`` outside
  the timed region (no copy).  A backward times only the backward:
  ``torch.autograd.grad(y, x, g, retain_graph=True)`` on a graph built once.
"""
from dataclasses import dataclass, field
from functools import cached_property
import time

import numpy as np

import fastlin

__all__ = ["Workload", "WORKLOADS", "QUICK_WORKLOADS", "OPS", "PEERS", "COPY_BOUND",
           "Bench", "Case", "load_peers", "DistWorkload", "DIST_WORKLOADS",
           "QUICK_DIST_WORKLOADS", "QUICK_SKIP_OPS", "DIST_OPS", "DIST_SINGLE_THREADED_PEERS",
           "DistCase", "matmul_bench", "write_bench", "not_implemented",
           "StatWorkload", "STAT_WORKLOADS", "QUICK_STAT_WORKLOADS", "STAT_SINGLE_THREADED",
           "MAHA_FORMULAS", "StatCase", "StatOp", "STAT_OPS"]

EPS = 1e-12  # normalize's default, given to every implementation


@dataclass(frozen=True)
class Workload:
    shape: tuple
    axis: int

    @property
    def name(self):
        return f"{'x'.join(map(str, self.shape))} axis={self.axis}"

    @property
    def key(self):
        """The name on the command line: ``4096x4096``, ``4096x4096/axis0``."""
        base = "x".join(map(str, self.shape))
        return base if self.axis == -1 else f"{base}/axis{self.axis}"

    @property
    def rows_axis(self):
        """True when the reduction runs along the last axis (rows)."""
        return self.axis in (-1, len(self.shape) - 1)


WORKLOADS = [
    Workload((4096, 4096), -1),
    Workload((65536, 256), -1),   # many short rows
    Workload((256, 65536), -1),   # few long rows
    Workload((4096, 4096), 0),    # strided reduction (columns)
]
QUICK_WORKLOADS = WORKLOADS[:1]

PEERS = ["scipy", "numpy", "sklearn", "torch"]

# Peers that run these ops on one thread whatever the thread count under test
# (NumPy ufuncs and reductions are single-threaded; none of these ops calls BLAS).
SINGLE_THREADED_PEERS = {"scipy", "numpy", "sklearn"}


@dataclass
class Bench:
    fn: object
    setup: object = None


def settle(*arrays, passes=40, budget_s=0.5):
    """Read each freshly made input array up to `passes` times (at most about
    `budget_s` seconds per array) before anything is timed on it.

    On this VM fresh memory is slow to read at first and speeds up with use
    (a (1000000, 16) float64 X: the first mahalanobis calls take 13-15 ms,
    settling to 8-9 ms after ~30 passes; reading X 40 times first removes
    the ramp, waiting does not).  Without this, whichever implementation is
    timed first on a new case pays the ramp and the later peers do not.
    """
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.size == 0:
            continue
        t0 = time.perf_counter()
        a.sum()
        once = time.perf_counter() - t0
        for _ in range(min(passes, int(budget_s / max(once, 1e-6))) - 1):
            a.sum()
    return arrays[0] if len(arrays) == 1 else arrays


class Case:
    """Inputs of one workload in one dtype, made once (fixed seed)."""

    def __init__(self, workload, dtype, seed=0):
        self.workload = workload
        self.axis = workload.axis
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        shape = workload.shape
        self.x = rng.standard_normal(shape, dtype=self.dtype)
        self.g = rng.standard_normal(shape, dtype=self.dtype)
        red = tuple(s for i, s in enumerate(shape) if i != self.axis % len(shape))
        self.g_red = rng.standard_normal(red, dtype=self.dtype)   # logsumexp's grad
        settle(self.x, self.g, self.g_red)

    # Forward outputs the backward passes take (computed once, outside timing).
    @cached_property
    def y_softmax(self):
        return settle(fastlin.softmax(self.x, axis=self.axis))

    @cached_property
    def y_log_softmax(self):
        return settle(fastlin.log_softmax(self.x, axis=self.axis))

    @cached_property
    def lse_keepdims(self):
        return settle(fastlin.logsumexp(self.x, axis=self.axis, keepdims=True))

    @cached_property
    def scratch(self):
        """Preallocated buffer: in-place peers' input copy, and ``out=``."""
        return np.empty_like(self.x)

    def inplace(self, fn):
        """A Bench running ``fn(buf)`` on a fresh copy of x made before each call."""
        buf = self.scratch
        return Bench(lambda: fn(buf), setup=lambda: np.copyto(buf, self.x))

    # torch tensors sharing memory with the NumPy inputs.
    def t(self, name):
        import torch
        cache = self.__dict__.setdefault("_torch", {})
        if name not in cache:
            cache[name] = torch.from_numpy(getattr(self, name))
        return cache[name]

    def torch_grad(self, forward, grad_name):
        """A Bench timing only the backward of ``forward(x)`` (graph built once)."""
        import torch
        x = torch.from_numpy(self.x).requires_grad_(True)
        y = forward(x)
        g = self.t(grad_name)
        return Bench(lambda: torch.autograd.grad(y, x, g, retain_graph=True))


def load_peers(wanted):
    """Import the wanted peers.  Returns ``(modules, status)``: modules maps a
    peer to a namespace of the functions used; status maps every wanted peer to
    its version or why it is missing ("not installed")."""
    mods, status = {}, {}
    for name in wanted:
        try:
            if name == "scipy":
                import scipy
                import scipy.spatial.distance as ssd
                import scipy.special as sps
                m = _Namespace(softmax=sps.softmax, log_softmax=sps.log_softmax,
                               logsumexp=sps.logsumexp, cdist=ssd.cdist, pdist=ssd.pdist)
                status[name] = scipy.__version__
            elif name == "numpy":
                m = np
                status[name] = np.__version__
            elif name == "sklearn":
                import sklearn
                from sklearn.metrics.pairwise import cosine_distances, euclidean_distances
                from sklearn.preprocessing import normalize as sk_normalize
                from sklearn.utils.extmath import softmax as sk_softmax
                m = _Namespace(softmax=sk_softmax, normalize=sk_normalize,
                               euclidean_distances=euclidean_distances,
                               cosine_distances=cosine_distances)
                status[name] = sklearn.__version__
            elif name == "torch":
                import torch
                import torch.nn.functional as F
                m = _Namespace(torch=torch, F=F)
                status[name] = torch.__version__
            else:
                raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
        except ImportError:
            status[name] = "not installed"
            continue
        except ValueError:
            raise
        except Exception as exc:  # e.g. a torch wheel that fails to load
            status[name] = f"unavailable ({type(exc).__name__}: {exc})"
            continue
        mods[name] = m
    return mods, status


class _Namespace:
    def __init__(self, **kw):
        self.__dict__.update(kw)


# --------------------------------------------------------------------------
# NumPy formulas (the "numpy" peer)
# --------------------------------------------------------------------------

def np_softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_log_softmax(x, axis):
    s = x - x.max(axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis, keepdims=True))


def np_logsumexp(x, axis):
    m = x.max(axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis, keepdims=True))).squeeze(axis)


def np_normalize(x, axis):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def np_softmax_backward(g, y, axis):
    return y * (g - (g * y).sum(axis, keepdims=True))


def np_log_softmax_backward(g, y, axis):
    return g - np.exp(y) * g.sum(axis, keepdims=True)


def np_logsumexp_backward(g_red, x, lse_keepdims, axis):
    return np.exp(x - lse_keepdims) * np.expand_dims(g_red, axis)


def np_normalize_backward(g, x, axis, eps=EPS):
    n = np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)
    y = x / n
    return (g - y * (g * y).sum(axis, keepdims=True)) / n


# --------------------------------------------------------------------------
# Ops
# --------------------------------------------------------------------------

@dataclass
class Op:
    name: str
    fastlin: object       # case -> the callable to time
    peers: dict = field(default_factory=dict)   # peer -> (case, module) -> Bench or None

    @property
    def backward(self):
        return "_backward" in self.name


def _softmax_backward(c):
    y = c.y_softmax
    return lambda: fastlin.softmax_backward(c.g, y, axis=c.axis)


def _np_softmax_backward(c, m):
    y = c.y_softmax
    return Bench(lambda: np_softmax_backward(c.g, y, c.axis))


def _log_softmax_backward(c):
    y = c.y_log_softmax
    return lambda: fastlin.log_softmax_backward(c.g, y, axis=c.axis)


def _np_log_softmax_backward(c, m):
    y = c.y_log_softmax
    return Bench(lambda: np_log_softmax_backward(c.g, y, c.axis))


def _np_logsumexp_backward(c, m):
    lse = c.lse_keepdims
    return Bench(lambda: np_logsumexp_backward(c.g_red, c.x, lse, c.axis))


def _rows_only(make):
    """sklearn computes along rows only: no entry for other axes."""
    return lambda c, m: make(c, m) if c.workload.rows_axis else None


OPS = {op.name: op for op in [
    Op("softmax",
       lambda c: lambda: fastlin.softmax(c.x, axis=c.axis),
       {"scipy": lambda c, m: Bench(lambda: m.softmax(c.x, axis=c.axis)),
        "numpy": lambda c, m: Bench(lambda: np_softmax(c.x, c.axis)),
        "sklearn": _rows_only(lambda c, m: c.inplace(lambda b: m.softmax(b, copy=False))),
        "torch": lambda c, m: Bench(lambda: m.torch.softmax(c.t("x"), dim=c.axis))}),
    Op("log_softmax",
       lambda c: lambda: fastlin.log_softmax(c.x, axis=c.axis),
       {"scipy": lambda c, m: Bench(lambda: m.log_softmax(c.x, axis=c.axis)),
        "numpy": lambda c, m: Bench(lambda: np_log_softmax(c.x, c.axis)),
        "torch": lambda c, m: Bench(lambda: m.torch.log_softmax(c.t("x"), dim=c.axis))}),
    Op("logsumexp",
       lambda c: lambda: fastlin.logsumexp(c.x, axis=c.axis),
       {"scipy": lambda c, m: Bench(lambda: m.logsumexp(c.x, axis=c.axis)),
        "numpy": lambda c, m: Bench(lambda: np_logsumexp(c.x, c.axis)),
        "torch": lambda c, m: Bench(lambda: m.torch.logsumexp(c.t("x"), dim=c.axis))}),
    Op("normalize",
       lambda c: lambda: fastlin.normalize(c.x, axis=c.axis, eps=EPS),
       {"numpy": lambda c, m: Bench(lambda: np_normalize(c.x, c.axis)),
        "sklearn": _rows_only(lambda c, m: c.inplace(lambda b: m.normalize(b, copy=False))),
        "torch": lambda c, m: Bench(
            lambda: m.F.normalize(c.t("x"), p=2.0, dim=c.axis, eps=EPS))}),
    Op("softmax_backward", _softmax_backward,
       {"numpy": _np_softmax_backward,
        "torch": lambda c, m: c.torch_grad(lambda x: m.torch.softmax(x, dim=c.axis), "g")}),
    Op("log_softmax_backward", _log_softmax_backward,
       {"numpy": _np_log_softmax_backward,
        "torch": lambda c, m: c.torch_grad(
            lambda x: m.torch.log_softmax(x, dim=c.axis), "g")}),
    Op("logsumexp_backward",
       lambda c: lambda: fastlin.logsumexp_backward(c.g_red, c.x, axis=c.axis),
       {"numpy": _np_logsumexp_backward,
        "torch": lambda c, m: c.torch_grad(
            lambda x: m.torch.logsumexp(x, dim=c.axis), "g_red")}),
    Op("normalize_backward",
       lambda c: lambda: fastlin.normalize_backward(c.g, c.x, axis=c.axis, eps=EPS),
       {"numpy": lambda c, m: Bench(lambda: np_normalize_backward(c.g, c.x, c.axis)),
        "torch": lambda c, m: c.torch_grad(
            lambda x: m.F.normalize(x, p=2.0, dim=c.axis, eps=EPS), "g")}),
]}


# The copy bound: fastlin writing into a preallocated `out=` against
# np.copyto of the same input into the same array -- the least any
# same-shape op must move.  Target: fastlin_out / copy at most this.
COPY_BOUND = {
    "normalize": (1.3, lambda c, out: lambda: fastlin.normalize(c.x, axis=c.axis, eps=EPS,
                                                                out=out)),
    "softmax": (2.5, lambda c, out: lambda: fastlin.softmax(c.x, axis=c.axis, out=out)),
}


def copy_bench(case, out):
    return lambda: np.copyto(out, case.x)


# --------------------------------------------------------------------------
# Pairwise distances
# --------------------------------------------------------------------------
#
# Peers of cdist / pdist, and what they stand for:
#
# * ``scipy``   -- ``scipy.spatial.distance.cdist / pdist`` (C loops, one
#   thread, float64 output whatever the input dtype; no backward).
# * ``sklearn`` -- ``sklearn.metrics.pairwise.euclidean_distances`` (GEMM,
#   BLAS threads; ``squared=True`` for sqeuclidean, ``cosine_distances`` for
#   cosine).  It has no condensed form: the pdist rows time
#   ``euclidean_distances(X)``, the square (m, m) matrix.  No backward.
# * ``torch``   -- ``torch.cdist`` / ``torch.pdist`` in the default compute
#   mode (cdist uses a matmul when either side has more than 25 rows), euclidean
#   only (torch has no sqeuclidean or cosine cdist); the backward rows time
#   ``torch.autograd.grad(y, inputs, g, retain_graph=True)`` on a graph built once.
#
# Not peers but bounds, timed on the same arrays at the same thread count:
# the GEMM of the cross term (``XA @ XB.T`` in NumPy at the input dtype; for
# pdist ``X @ Xc.T`` with ``Xc`` a copy of X: NumPy sends ``X @ X.T`` to syrk,
# which measured 3-6x slower than the GEMM here, and single-threaded), and for
# the low-dimensional workload the write of the output (``np.empty`` + ``fill``).

@dataclass(frozen=True)
class DistWorkload:
    """cdist of two (m, n) collections, or pdist of one, under `metric`.

    `write_bound`: also time writing the output, the bound that matters when
    n is so small that the GEMM is not the cost.
    """
    kind: str                 # "cdist" or "pdist"
    m: int
    n: int
    metric: str = "euclidean"
    write_bound: bool = False

    @property
    def shape(self):
        return (self.m, self.n)

    @property
    def name(self):
        """Table name: the input shapes (cdist: XA and XB)."""
        s = f"{self.m}x{self.n}"
        return f"{s} & {s}" if self.kind == "cdist" else s

    @property
    def key(self):
        """The name on the command line: ``cdist4096x64``, ``cdist4096x64/cosine``."""
        base = f"{self.kind}{self.m}x{self.n}"
        return base if self.metric == "euclidean" else f"{base}/{self.metric}"

    @property
    def ops(self):
        """The ops timed on this workload (backward: euclidean only)."""
        if self.metric != "euclidean":
            return (self.kind,)
        return (self.kind, f"{self.kind}_backward", f"{self.kind}_backward_dist")

    @property
    def out_shape(self):
        return (self.m, self.m) if self.kind == "cdist" else (self.m * (self.m - 1) // 2,)


DIST_WORKLOADS = [
    DistWorkload("cdist", 4096, 64),
    DistWorkload("cdist", 4096, 64, "sqeuclidean"),
    DistWorkload("cdist", 4096, 64, "cosine"),
    DistWorkload("cdist", 2048, 512),                      # GEMM-bound
    DistWorkload("cdist", 10000, 3, write_bound=True),     # output-bound
    DistWorkload("pdist", 8192, 64),
]
QUICK_DIST_WORKLOADS = [DIST_WORKLOADS[0], DIST_WORKLOADS[-1]]
# Left out of --quick unless named: torch's pdist backward on (8192, 64) takes
# about 5 s a call in float64 on one thread.
QUICK_SKIP_OPS = ("pdist_backward", "pdist_backward_dist")

# scipy's cdist/pdist are C loops on one thread; sklearn and the matmul bound
# use BLAS, which is capped at the thread count under test.
DIST_SINGLE_THREADED_PEERS = {"scipy"}


class DistCase:
    """Inputs of one distance workload in one dtype, made once (fixed seed).

    Standard-normal rows; the grad of a backward has the output's shape and
    is made on first use (for (10000, 3) it is as large as the output).
    """

    def __init__(self, workload, dtype, seed=0):
        self.workload = workload
        self.metric = workload.metric
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.xa = rng.standard_normal(workload.shape, dtype=self.dtype)
        self.xb = (rng.standard_normal(workload.shape, dtype=self.dtype)
                   if workload.kind == "cdist" else None)
        settle(self.xa, self.xb)
        self._seed = seed

    @cached_property
    def g(self):
        rng = np.random.default_rng(self._seed + 1)
        return settle(rng.standard_normal(self.workload.out_shape, dtype=self.dtype))

    @cached_property
    def dist(self):
        """fastlin's forward result, made outside the timing: the *_backward_dist
        rows hand it back as a custom autograd op would (torch's backward,
        their peer, also uses its forward's saved result)."""
        if self.xb is None:
            return settle(fastlin.pdist(self.xa, metric=self.metric))
        return settle(fastlin.cdist(self.xa, self.xb, metric=self.metric))

    def t(self, name):
        import torch
        cache = self.__dict__.setdefault("_torch", {})
        if name not in cache:
            cache[name] = torch.from_numpy(getattr(self, name))
        return cache[name]

    def torch_grad(self, forward, names):
        """A Bench timing only the backward of ``forward(*inputs)`` with respect
        to every input (the graph is built once)."""
        import torch
        xs = tuple(torch.from_numpy(getattr(self, n)).requires_grad_(True) for n in names)
        y = forward(*xs)
        g = self.t("g")
        return Bench(lambda: torch.autograd.grad(y, xs, g, retain_graph=True))


def not_implemented(timing):
    """True when the timed call raised NotImplementedError."""
    return timing is not None and (timing.error or "").startswith("NotImplementedError")


def _sk_cdist(c, m):
    f = {"euclidean": lambda: m.euclidean_distances(c.xa, c.xb),
         "sqeuclidean": lambda: m.euclidean_distances(c.xa, c.xb, squared=True),
         "cosine": lambda: m.cosine_distances(c.xa, c.xb)}.get(c.metric)
    return None if f is None else Bench(f)


def _sk_pdist(c, m):
    f = {"euclidean": lambda: m.euclidean_distances(c.xa),
         "sqeuclidean": lambda: m.euclidean_distances(c.xa, squared=True),
         "cosine": lambda: m.cosine_distances(c.xa)}.get(c.metric)
    return None if f is None else Bench(f)


def _euclid_only(make):
    """torch has cdist/pdist for p-norms only: euclidean rows."""
    return lambda c, m: make(c, m) if c.metric == "euclidean" else None


DIST_OPS = {op.name: op for op in [
    Op("cdist",
       lambda c: lambda: fastlin.cdist(c.xa, c.xb, metric=c.metric),
       {"scipy": lambda c, m: Bench(lambda: m.cdist(c.xa, c.xb, metric=c.metric)),
        "sklearn": _sk_cdist,
        "torch": _euclid_only(lambda c, m: Bench(lambda: m.torch.cdist(c.t("xa"), c.t("xb"))))}),
    Op("pdist",
       lambda c: lambda: fastlin.pdist(c.xa, metric=c.metric),
       {"scipy": lambda c, m: Bench(lambda: m.pdist(c.xa, metric=c.metric)),
        "sklearn": _sk_pdist,
        "torch": _euclid_only(lambda c, m: Bench(lambda: m.torch.pdist(c.t("xa"))))}),
    # The backward rows call the public functions as documented: the grad of
    # the output, the inputs and the metric.  While they raise
    # NotImplementedError the rows say so and the peers are still timed.
    Op("cdist_backward",
       lambda c: lambda: fastlin.cdist_backward(c.g, c.xa, c.xb, metric=c.metric),
       {"torch": _euclid_only(lambda c, m: c.torch_grad(m.torch.cdist, ("xa", "xb")))}),
    Op("pdist_backward",
       lambda c: lambda: fastlin.pdist_backward(c.g, c.xa, metric=c.metric),
       {"torch": _euclid_only(lambda c, m: c.torch_grad(m.torch.pdist, ("xa",)))}),
    # the same, given the forward's result (dist=), as torch's backward has it
    Op("cdist_backward_dist",
       lambda c: (lambda d: lambda: fastlin.cdist_backward(c.g, c.xa, c.xb, metric=c.metric,
                                                          dist=d))(c.dist),
       {"torch": _euclid_only(lambda c, m: c.torch_grad(m.torch.cdist, ("xa", "xb")))}),
    Op("pdist_backward_dist",
       lambda c: (lambda d: lambda: fastlin.pdist_backward(c.g, c.xa, metric=c.metric,
                                                          dist=d))(c.dist),
       {"torch": _euclid_only(lambda c, m: c.torch_grad(m.torch.pdist, ("xa",)))}),
]}


def matmul_bench(case):
    """The GEMM of the cross term at the input dtype: the roofline of a
    GEMM-based distance for n large enough.

    For pdist, the full ``X @ X.T`` as a GEMM on a copy (not NumPy's syrk
    path, slower here); pdist needs only half of its entries.
    """
    xa = case.xa
    xb = case.xb if case.xb is not None else xa.copy()
    return Bench(lambda: xa @ xb.T)


def write_bench(case):
    """Allocate the output and write every entry once (one thread): what any
    implementation returning a fresh output must at least do."""
    shape, dtype = case.workload.out_shape, case.dtype

    def write():
        out = np.empty(shape, dtype)
        out.fill(1.0)
        return out
    return Bench(write)


# --------------------------------------------------------------------------
# Mahalanobis distance and the max-margin loss (the `issue4` group)
# --------------------------------------------------------------------------
#
# Three kinds of workload, each in float64 and float32 (fixed seed):
#
# * ``maha<n>x<d>`` -- ``fastlin.mahalanobis(X, mean, cov)`` of n points to one
#   distribution, and ``mahalanobis_backward(g, X, mean, cov)``.  The covariance
#   is ``M M^T / d + I`` (M standard normal, made in float64, symmetrized, then
#   cast), well conditioned; VI is its inverse, computed in float64 outside
#   timing and cast.  fastlin gets ``cov``: its factorization is part of the
#   timed work, as it is for the Cholesky peer.
# * ``cdist<m>x<d>/mahalanobis`` -- ``fastlin.cdist(XA, XB, 'mahalanobis', VI=VI)``.
# * ``margin<B>x<N>`` -- ``fastlin.max_margin_loss(pos, neg, 1.0, 'sum')`` and its
#   backward with grad 1.0, pos of shape (B,), neg (B, N), standard normal.
#
# The peers are table columns; each needs one of the --peers modules:
#
# * ``scipy``  (scipy)  -- ``scipy.spatial.distance.cdist(X, mean[None],
#   'mahalanobis', VI=VI)`` (VI made outside timing); the cdist workload:
#   ``cdist(XA, XB, 'mahalanobis', VI=VI)``.  One thread, float64 inside.
# * ``einsum`` (numpy)  -- ``D = X - mean; np.sqrt(np.einsum('ij,jk,ik->i', D, VI, D))``
#   (einsum's default ``optimize=False``: a C loop on one thread).
# * ``rowdot`` (numpy)  -- ``np.sqrt(((X - mean) @ VI * (X - mean)).sum(1))`` (a GEMM:
#   BLAS threads, capped at t).
# * ``chol``   (scipy)  -- ``L = np.linalg.cholesky(cov)`` inside the timed call, then
#   ``Z = scipy.linalg.solve_triangular(L, (X - mean).T, lower=True,
#   check_finite=False)``, ``np.sqrt(np.einsum('ij,ij->i', Z.T, Z.T))`` (BLAS trsm).
# * ``torch``  (torch)  -- ``((X - mu) @ VI * (X - mu)).sum(1).sqrt()`` on
#   torch.from_numpy tensors made outside timing; the backward times only
#   ``torch.autograd.grad(y, (X, mu, cov), g, retain_graph=True)`` on that formula
#   with ``VI = torch.linalg.inv(cov)`` inside the graph (built once), so its
#   gradients are fastlin's three: X, mean and cov.  max-margin:
#   ``F.margin_ranking_loss(pos[:, None].expand(B, N), neg, ones, margin=1.0,
#   reduction='sum')`` (ones made outside timing), backward w.r.t. (pos, neg).
# * ``numpy``  (numpy)  -- max-margin formula ``np.maximum(0, 1 - pos[:, None] +
#   neg).sum()``; backward ``m = (1 - pos[:, None] + neg) > 0; gneg =
#   m.astype(dtype); gpos = -gneg.sum(1)``.  One thread.
#
# Not a peer but a bound: ``read`` -- ``X.max()`` (``neg.max()`` for the loss),
# one thread: the time to read the input once.  Not ``X.sum()``: numpy's
# pairwise summation took 8-12 ms for the (1000000, 16) float64 X here, where
# ``max`` (SIMD, no dependency chain) and a plain AVX-512 read loop in C with
# prefetch both took 5-6 ms.

@dataclass(frozen=True)
class StatWorkload:
    """A Mahalanobis or max-margin workload: `kind` is ``maha`` (n points of
    dimension d to one distribution), ``cdist`` (mahalanobis cdist of two (m, d)
    collections) or ``margin`` (B rows of N negatives)."""
    kind: str
    m: int
    n: int

    @property
    def shape(self):
        return (self.m, self.n)

    @property
    def name(self):
        if self.kind == "cdist":
            return f"{self.m}x{self.n} & {self.m}x{self.n}"
        if self.kind == "margin":
            return f"B={self.m} N={self.n}"
        return f"{self.m}x{self.n}"

    @property
    def key(self):
        """The name on the command line: ``maha1000000x16``,
        ``cdist2000x32/mahalanobis``, ``margin65536x64``."""
        base = f"{self.kind}{self.m}x{self.n}"
        return f"{base}/mahalanobis" if self.kind == "cdist" else base

    @property
    def ops(self):
        return {"maha": ("mahalanobis", "mahalanobis_backward"),
                "cdist": ("cdist_mahalanobis",),
                "margin": ("max_margin_loss", "max_margin_loss_backward")}[self.kind]


STAT_WORKLOADS = [
    StatWorkload("maha", 1_000_000, 16),
    StatWorkload("maha", 100_000, 128),
    StatWorkload("cdist", 2000, 32),
    StatWorkload("margin", 65536, 64),
]
QUICK_STAT_WORKLOADS = [STAT_WORKLOADS[0], STAT_WORKLOADS[2], STAT_WORKLOADS[3]]

# Columns that run on one thread whatever t (timed once and reused in --quick).
STAT_SINGLE_THREADED = {"scipy", "einsum", "numpy"}
# The formulas the mahalanobis "best formula" target compares with.
MAHA_FORMULAS = ("einsum", "rowdot", "chol", "torch")


class StatCase:
    """Inputs of one Mahalanobis / max-margin workload in one dtype (fixed seed)."""

    def __init__(self, workload, dtype, seed=0):
        self.workload = workload
        self.dtype = dt = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        m, n = workload.shape
        if workload.kind == "margin":
            self.pos = rng.standard_normal(m, dtype=dt)
            self.neg = rng.standard_normal((m, n), dtype=dt)
            self.B, self.N = m, n
            settle(self.pos, self.neg)
            return
        d = n
        M = rng.standard_normal((d, d))
        cov = M @ M.T / d + np.eye(d)
        cov = (cov + cov.T) / 2
        VI = np.linalg.inv(cov)
        VI = (VI + VI.T) / 2
        self.cov, self.VI = cov.astype(dt), VI.astype(dt)
        if workload.kind == "cdist":
            self.xa = rng.standard_normal((m, d), dtype=dt)
            self.xb = rng.standard_normal((m, d), dtype=dt)
        else:
            self.x = rng.standard_normal((m, d), dtype=dt)
            self.mean = rng.standard_normal(d).astype(dt)
            self.mean_row = self.mean[None, :]
            self.g = rng.standard_normal(m, dtype=dt)
        settle(*(getattr(self, k) for k in ("xa", "xb", "x", "g") if hasattr(self, k)))

    def t(self, name):
        import torch
        cache = self.__dict__.setdefault("_torch", {})
        if name not in cache:
            cache[name] = torch.from_numpy(getattr(self, name))
        return cache[name]

    def torch_grad(self, forward, names, grad):
        """A Bench timing only the backward of ``forward(*inputs)`` with respect
        to every input named (the graph is built once)."""
        import torch
        xs = tuple(torch.from_numpy(getattr(self, k)).requires_grad_(True) for k in names)
        y = forward(*xs)
        g = grad if isinstance(grad, torch.Tensor) else torch.tensor(grad, dtype=y.dtype)
        return Bench(lambda: torch.autograd.grad(y, xs, g, retain_graph=True))


@dataclass
class StatOp:
    name: str
    fastlin: object                                  # case -> callable
    columns: dict = field(default_factory=dict)      # column -> (peer module, make)
    bound: object = None                             # case -> Bench (the read bound)

    @property
    def backward(self):
        return "_backward" in self.name


def _maha_chol(c, m):
    from scipy.linalg import solve_triangular
    x, mean, cov = c.x, c.mean, c.cov

    def f():
        L = np.linalg.cholesky(cov)
        Z = solve_triangular(L, (x - mean).T, lower=True, check_finite=False)
        return np.sqrt(np.einsum("ij,ij->i", Z.T, Z.T))
    return Bench(f)


def _maha_einsum(c, m):
    x, mean, VI = c.x, c.mean, c.VI

    def f():
        D = x - mean
        return np.sqrt(np.einsum("ij,jk,ik->i", D, VI, D))
    return Bench(f)


def _maha_torch(c, m):
    X, mu, VI = c.t("x"), c.t("mean"), c.t("VI")
    return Bench(lambda: ((X - mu) @ VI * (X - mu)).sum(1).sqrt())


def _maha_torch_backward(c, m):
    torch = m.torch

    def forward(X, mu, cov):
        VI = torch.linalg.inv(cov)
        return ((X - mu) @ VI * (X - mu)).sum(1).sqrt()
    return c.torch_grad(forward, ("x", "mean", "cov"), c.t("g"))


def _np_margin_backward(c, m):
    pos, neg, dt = c.pos, c.neg, c.dtype

    def f():
        mask = (1 - pos[:, None] + neg) > 0
        gneg = mask.astype(dt)
        gpos = -gneg.sum(1)
        return gpos, gneg
    return Bench(f)


def _torch_margin(c, m):
    F, torch = m.F, m.torch
    pos, neg, B, N = c.t("pos"), c.t("neg"), c.B, c.N
    ones = torch.ones(B, N, dtype=neg.dtype)
    return Bench(lambda: F.margin_ranking_loss(pos[:, None].expand(B, N), neg, ones,
                                               margin=1.0, reduction="sum"))


def _torch_margin_backward(c, m):
    F, torch = m.F, m.torch
    B, N = c.B, c.N
    ones = torch.ones(B, N, dtype=c.t("neg").dtype)

    def forward(pos, neg):
        return F.margin_ranking_loss(pos[:, None].expand(B, N), neg, ones, margin=1.0,
                                     reduction="sum")
    return c.torch_grad(forward, ("pos", "neg"), 1.0)


STAT_OPS = {op.name: op for op in [
    StatOp("mahalanobis",
           lambda c: lambda: fastlin.mahalanobis(c.x, c.mean, c.cov),
           {"scipy": ("scipy", lambda c, m: Bench(
                lambda: m.cdist(c.x, c.mean_row, "mahalanobis", VI=c.VI))),
            "einsum": ("numpy", _maha_einsum),
            "rowdot": ("numpy", lambda c, m: Bench(
                lambda: np.sqrt(((c.x - c.mean) @ c.VI * (c.x - c.mean)).sum(1)))),
            "chol": ("scipy", _maha_chol),
            "torch": ("torch", _maha_torch)},
           bound=lambda c: Bench(c.x.max)),
    StatOp("mahalanobis_backward",
           lambda c: lambda: fastlin.mahalanobis_backward(c.g, c.x, c.mean, c.cov),
           {"torch": ("torch", _maha_torch_backward)}),
    StatOp("cdist_mahalanobis",
           lambda c: lambda: fastlin.cdist(c.xa, c.xb, "mahalanobis", VI=c.VI),
           {"scipy": ("scipy", lambda c, m: Bench(
                lambda: m.cdist(c.xa, c.xb, "mahalanobis", VI=c.VI)))}),
    StatOp("max_margin_loss",
           lambda c: lambda: fastlin.max_margin_loss(c.pos, c.neg, 1.0, "sum"),
           {"numpy": ("numpy", lambda c, m: Bench(
                lambda: np.maximum(0, 1 - c.pos[:, None] + c.neg).sum())),
            "torch": ("torch", _torch_margin)},
           bound=lambda c: Bench(c.neg.max)),
    StatOp("max_margin_loss_backward",
           lambda c: lambda: fastlin.max_margin_loss_backward(1.0, c.pos, c.neg, 1.0, "sum"),
           {"numpy": ("numpy", _np_margin_backward),
            "torch": ("torch", _torch_margin_backward)}),
]}
