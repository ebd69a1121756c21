"""fastlin.dask against single-machine fastlin on the computed arrays.

Several chunkings per op (a single chunk, even and uneven chunks, chunks
along the op's axis): bitwise equal where each element is computed the same
way (the op's axis whole in a chunk; the pairwise distances where fastlin's
own GEMM or the direct path computes them), within a few ulps where partial
results are combined across chunks.  Most tests use the synchronous
scheduler; TestCluster runs a real distributed.LocalCluster of worker
processes, one of which is killed mid-computation.
"""
import os
import signal
import tempfile
import threading
import time

import numpy as np
import pytest

import fastlin
from fastlin import reference as ref

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
fd = pytest.importorskip("fastlin.dask")

from fastlin._simd import kernels  # noqa: E402

# fastlin's own GEMM computes a pair's distance the same wherever the pair
# sits in the matrix; a BLAS may not (see fastlin.dask's notes)
OWN_GEMM = kernels("_distance").own_gemm_enabled()
RTOL = {np.float64: 1e-12, np.float32: 2e-6}


@pytest.fixture(autouse=True)
def _sync():
    with dask.config.set(scheduler="sync"):
        yield


def _rng(seed=0):
    return np.random.default_rng(seed)


def _close(got, want, dtype, rtol=None):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    rtol = RTOL[dtype] if rtol is None else rtol
    finite = np.abs(want[np.isfinite(want)])
    np.testing.assert_allclose(got, want, rtol=rtol,
                               atol=rtol * max(1.0, float(np.max(finite, initial=0.0))),
                               equal_nan=True)


def _bitwise(X, axis):
    """Where fastlin.dask's row op is bitwise fastlin's: a single chunk, or
    the last axis whole in every chunk (over another axis the kernels
    vectorise across the columns, so a chunk of columns rounds otherwise)."""
    return X.numblocks == (1,) * X.ndim or (
        axis in (-1, X.ndim - 1, (X.ndim - 1,)) and X.numblocks[-1] == 1)


ROW_CHUNKS = [(37, 29), (10, 29), (37, 7), (9, 11), (1, 29)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chunks", ROW_CHUNKS)
@pytest.mark.parametrize("axis", [-1, 0, None, (0, 1)])
def test_softmax_family(dtype, chunks, axis):
    rng = _rng()
    x = (rng.standard_normal((37, 29)) * 4).astype(dtype)
    X = da.from_array(x, chunks=chunks)
    g = rng.standard_normal(x.shape).astype(dtype)
    G = da.from_array(g, chunks=chunks)
    whole = _bitwise(X, axis)
    for fwd, bwd in ((fastlin.softmax, fastlin.softmax_backward),
                     (fastlin.log_softmax, fastlin.log_softmax_backward)):
        y = fwd(x, axis=axis)
        got = getattr(fd, fwd.__name__)(X, axis=axis).compute()
        gy = bwd(g, y, axis=axis)
        got_b = getattr(fd, bwd.__name__)(G, da.from_array(y, chunks=chunks), axis=axis).compute()
        if whole:
            np.testing.assert_array_equal(got, y)
            np.testing.assert_array_equal(got_b, gy)
        else:
            _close(got, y, dtype)
            _close(got_b, gy, dtype, rtol=10 * RTOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chunks", ROW_CHUNKS)
@pytest.mark.parametrize("axis", [-1, 0, (0, 1)])
def test_normalize(dtype, chunks, axis):
    rng = _rng(1)
    x = rng.standard_normal((37, 29)).astype(dtype)
    x[3] = 0                                    # a zero row: the eps branch
    x[5] *= 1e-30 if dtype == np.float64 else 1e-6
    g = rng.standard_normal(x.shape).astype(dtype)
    X, G = da.from_array(x, chunks=chunks), da.from_array(g, chunks=chunks)
    whole = _bitwise(X, axis)
    for eps in (1e-12, 0.0):
        y, gx = fastlin.normalize(x, axis=axis, eps=eps), fastlin.normalize_backward(
            g, x, axis=axis, eps=eps)
        got = fd.normalize(X, axis=axis, eps=eps).compute()
        got_b = fd.normalize_backward(G, X, axis=axis, eps=eps).compute()
        if whole:
            np.testing.assert_array_equal(got, y)
            np.testing.assert_array_equal(got_b, gx)
        else:
            _close(got, y, dtype)
            _close(got_b, gx, dtype, rtol=10 * RTOL[dtype])


def test_normalize_huge_and_tiny_norms_split():
    # the per-chunk scaled sums neither overflow nor underflow, forward or back
    x = np.array([[1e200, 3e200, -2e200, 1e200], [1e-200, 3e-200, -2e-200, 1e-200],
                  [1e-170, 2e-170, 0.0, -5e-171]])
    g = _rng(17).standard_normal(x.shape)
    X, G = da.from_array(x, chunks=(3, 1)), da.from_array(g, chunks=(3, 1))
    got = fd.normalize(X, axis=1, eps=0.0).compute()
    _close(got, fastlin.normalize(x, axis=1, eps=0.0), np.float64)
    got = fd.normalize_backward(G, X, axis=1, eps=0.0).compute()
    _close(got, fastlin.normalize_backward(g, x, axis=1, eps=0.0), np.float64)


@pytest.mark.parametrize("chunks", [(2, 2), (1, 1), (2, 4)])
def test_non_finite_rows_split(chunks):
    a = np.array([[np.inf, 0, 1, 2], [-np.inf, 0, 1, 2], [np.nan, 0, 1, 2],
                  [-np.inf, -np.inf, -np.inf, -np.inf]])
    A = da.from_array(a, chunks=chunks)
    with np.errstate(invalid="ignore"):
        # nan where fastlin has nan, -inf / 0 where it has them, the finite
        # rows to rounding
        for f in ("softmax", "log_softmax"):
            _close(getattr(fd, f)(A, axis=1).compute(), getattr(fastlin, f)(a, axis=1),
                   np.float64)
        _close(fd.logsumexp(A, axis=1).compute(), fastlin.logsumexp(a, axis=1), np.float64)


@pytest.mark.parametrize("chunks", ROW_CHUNKS)
@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp(chunks, axis, keepdims):
    rng = _rng(2)
    a = rng.standard_normal((37, 29)) * 30
    a[4] = -np.inf                              # a row of empty terms
    b = rng.standard_normal((37, 29))           # signs: return_sign
    A, B = da.from_array(a, chunks=chunks), da.from_array(b, chunks=chunks)
    got = fd.logsumexp(A, axis=axis, keepdims=keepdims).compute()
    _close(got, np.asarray(fastlin.logsumexp(a, axis=axis, keepdims=keepdims)), np.float64,
           rtol=1e-14)
    l, s = dask.compute(*fd.logsumexp(A, axis=axis, b=B, keepdims=keepdims, return_sign=True))
    l2, s2 = fastlin.logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=True)
    _close(l, np.asarray(l2), np.float64)
    np.testing.assert_array_equal(s, s2)
    # broadcast b, and a negative total without return_sign: nan, as fastlin
    bv = np.where(np.arange(29) % 3, 1.0, -4.0)
    with np.errstate(invalid="ignore"):
        want = np.asarray(fastlin.logsumexp(a, axis=axis, b=bv, keepdims=keepdims))
    got = fd.logsumexp(A, axis=axis, b=bv, keepdims=keepdims).compute()
    _close(got, want, np.float64)


def test_logsumexp_float32_result():
    x = _rng().standard_normal((64, 40)).astype(np.float32)
    got = fd.logsumexp(da.from_array(x, chunks=(16, 10)), axis=1).compute()
    want = fastlin.logsumexp(x, axis=1)
    _close(got, want, np.float32)


def _pairs(dtype, n, seed=3, offset=2.0):
    rng = _rng(seed)
    XA = (rng.standard_normal((150, n)) + offset).astype(dtype)
    XB = (rng.standard_normal((230, n)) + offset).astype(dtype)
    XB[17] = XB[3]              # an exact tie
    XB[40] = XA[5]              # a zero distance
    return XA, XB


# rows per chunk of XA and of XB: one chunk, even, uneven, single rows
PAIR_CHUNKS = [(150, 230), (40, 50), (64, 229), (150, (1,) * 5 + (225,))]
METRICS = ["euclidean", "sqeuclidean", "cosine"]


def _exact_here(n, XA, XB):
    """Whether fastlin.dask's distances are bitwise fastlin's: its own GEMM,
    or the direct path (few features, or a call small enough for the short
    path)."""
    return OWN_GEMM or n <= 16 or XA.shape[0] * XB.shape[0] * n <= 1 << 19


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [3, 40])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunks", PAIR_CHUNKS)
def test_cdist_and_topk(dtype, n, metric, chunks):
    XA, XB = _pairs(dtype, n)
    A = da.from_array(XA, chunks=(chunks[0], n))
    B = da.from_array(XB, chunks=(chunks[1], n))
    D = fastlin.cdist(XA, XB, metric)
    got = fd.cdist(A, B, metric).compute()
    exact = _exact_here(n, XA, XB)
    if exact:
        np.testing.assert_array_equal(got, D)
    else:
        _close(got, D, dtype, rtol=1e-6)
    for k in (1, 7, 230):
        for largest in (False, True):
            d, i = dask.compute(*fd.cdist_topk(A, B, k, metric, largest=largest))
            d2, i2 = fastlin.cdist_topk(XA, XB, k, metric, largest=largest)
            if exact:
                np.testing.assert_array_equal(d, d2)
                np.testing.assert_array_equal(i, i2)
            else:
                # a swap only between candidates within rounding of each other
                _close(d, d2, dtype, rtol=1e-6)
                _close(np.take_along_axis(D, i, 1), d2, dtype, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [3, 40])
@pytest.mark.parametrize("metric", METRICS)
def test_cdist_logsumexp(dtype, n, metric):
    XA, XB = _pairs(dtype, n, seed=4)
    b = _rng(5).random(230)
    b[:20] = 0
    for chunks in PAIR_CHUNKS:
        A = da.from_array(XA, chunks=(chunks[0], n))
        B = da.from_array(XB, chunks=(chunks[1], n))
        for scale, bw in ((-1.0, None), (0.3, b), (-25.0, da.from_array(b, chunks=60))):
            got = fd.cdist_logsumexp(A, B, metric, scale=scale, b=bw).compute()
            want = fastlin.cdist_logsumexp(XA, XB, metric, scale=scale,
                                           b=None if bw is None else b)
            _close(got, want, dtype, rtol=1e-13 if dtype == np.float64 else 1e-5)


def test_pairwise_weights_and_mahalanobis():
    XA, XB = _pairs(np.float64, 24, seed=6, offset=50.0)
    w = _rng(7).random(24) + 0.1
    VI = np.linalg.inv(np.cov(np.vstack([XA, XB]).T))
    A, B = da.from_array(XA, chunks=(50, 24)), da.from_array(XB, chunks=(70, 24))
    for metric, kw in (("euclidean", {"w": w}), ("cosine", {"w": w}),
                       ("mahalanobis", {"VI": VI}),
                       ("mahalanobis", {"VI": da.from_array(VI, chunks=5)})):
        ref_kw = {k: np.asarray(v) for k, v in kw.items()}
        D = fastlin.cdist(XA, XB, metric, **ref_kw)
        got = fd.cdist(A, B, metric, **kw).compute()
        d, i = dask.compute(*fd.cdist_topk(A, B, 5, metric, **kw))
        d2, i2 = fastlin.cdist_topk(XA, XB, 5, metric, **ref_kw)
        l = fd.cdist_logsumexp(A, B, metric, **kw).compute()
        _close(l, fastlin.cdist_logsumexp(XA, XB, metric, **ref_kw), np.float64, rtol=1e-12)
        if OWN_GEMM and metric != "mahalanobis":
            # (mahalanobis whitens the rows by a NumPy product, which may
            # round a row by the number of rows it is given)
            np.testing.assert_array_equal(got, D)
            np.testing.assert_array_equal(d, d2)
            np.testing.assert_array_equal(i, i2)
        else:
            _close(got, D, np.float64)
            _close(d, d2, np.float64)


def test_pairwise_edge_shapes():
    XA, XB = _pairs(np.float64, 20, seed=14)
    A = da.from_array(XA, chunks=(40, 20))
    B = da.from_array(XB, chunks=((3, 2, 200, 25), (20,)))   # chunks with fewer rows than k
    for k in (0, 5, 230):
        d, i = dask.compute(*fd.cdist_topk(A, B, k))
        d2, i2 = fastlin.cdist_topk(XA, XB, k)
        assert d.shape == d2.shape == (150, k) and i.dtype == np.int64
        if OWN_GEMM:
            np.testing.assert_array_equal(d, d2)
            np.testing.assert_array_equal(i, i2)
    # an empty chunk, and empty point sets
    Bz = da.concatenate([da.from_array(XB[:0], chunks=(1, 20)), da.from_array(XB, chunks=(100, 20))])
    np.testing.assert_array_equal(dask.compute(*fd.cdist_topk(A, Bz, 3))[1],
                                  fastlin.cdist_topk(XA, XB, 3)[1])
    assert fd.cdist(A[:0], B).compute().shape == (0, 230)
    l = fd.cdist_logsumexp(A, B[:0]).compute()
    np.testing.assert_array_equal(l, fastlin.cdist_logsumexp(XA, XB[:0]))


def test_metric_aliases_as_fastlin():
    # an alias runs fastlin's general path (not the short one): the chunks too
    XA, XB = _pairs(np.float64, 8, seed=15)
    for metric in ("euclid", "sqe", "euclidean"):
        got = fd.cdist(da.from_array(XA, chunks=(50, 8)), XB, metric).compute()
        np.testing.assert_array_equal(got, fastlin.cdist(XA, XB, metric))


def test_topk_backward_non_finite_rows_of_other_chunks():
    # a row of XB that is never selected, in a chunk of its own or not, gives
    # no nan (no placeholder pair multiplies it by 0)
    rng = _rng(16)
    XA, XB = rng.standard_normal((5, 3)), rng.standard_normal((8, 3))
    XB[4] = np.inf
    XB[0, 1] = np.nan
    d, i = fastlin.cdist_topk(XA, XB, 2)
    for chunks in (4, 3, 1):
        got = dask.compute(*fd.cdist_topk_backward(np.ones((5, 2)), XA,
                                                   da.from_array(XB, chunks=(chunks, 3)), i))
        for u, v in zip(got, fastlin.cdist_topk_backward(np.ones((5, 2)), XA, XB, i)):
            _close(u, v, np.float64)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_backward(metric):
    rng = _rng(8)
    XA, XB = _pairs(np.float64, 20, seed=9)
    A, B = da.from_array(XA, chunks=(40, 20)), da.from_array(XB, chunks=(70, 20))
    G = rng.standard_normal((150, 230))
    got = dask.compute(*fd.cdist_backward(da.from_array(G, chunks=(60, 100)), A, B, metric,
                                          dist=fastlin.cdist(XA, XB, metric)))
    for u, v in zip(got, fastlin.cdist_backward(G, XA, XB, metric)):
        _close(u, v, np.float64, rtol=1e-10)
    d, i = fastlin.cdist_topk(XA, XB, 6, metric)
    g = rng.standard_normal(d.shape)
    got = dask.compute(*fd.cdist_topk_backward(g, A, B, i, metric, dist=d))
    for u, v in zip(got, fastlin.cdist_topk_backward(g, XA, XB, i, metric, dist=d)):
        _close(u, v, np.float64, rtol=1e-10)
    b = rng.random(230)
    gl = rng.standard_normal(150)
    for lse in (None, fastlin.cdist_logsumexp(XA, XB, metric, b=b)):
        got = dask.compute(*fd.cdist_logsumexp_backward(gl, A, B, metric, b=b, lse=lse))
        want = fastlin.cdist_logsumexp_backward(gl, XA, XB, metric, b=b)
        for u, v in zip(got, want):
            _close(u, v, np.float64, rtol=1e-9)


def test_mahalanobis_backward_float32_sums():
    # the mean's and the matrix's gradients summed over 100 chunks in float64
    rng = _rng(18)
    X = rng.standard_normal((2000, 4)).astype(np.float32)
    mean, C = np.zeros(4, np.float32), np.eye(4, dtype=np.float32) * 2
    g = rng.standard_normal(2000).astype(np.float32)
    got = dask.compute(*fd.mahalanobis_backward(g, da.from_array(X, chunks=(20, 4)), mean, C))
    want = ref.mahalanobis_backward(g, X, mean, C)
    for u, v in zip(got[1:], want[1:]):
        _close(u, np.asarray(v, np.float32), np.float32, rtol=1e-6)


@pytest.mark.parametrize("kind", ["cov", "VI", "cholesky"])
@pytest.mark.parametrize("squared", [False, True])
def test_mahalanobis(kind, squared):
    rng = _rng(10)
    X = rng.standard_normal((3, 40, 5))
    mean = rng.standard_normal(5)
    C = np.cov(rng.standard_normal((5, 50)))
    M = {"cov": C, "VI": np.linalg.inv(C), "cholesky": np.linalg.cholesky(C)}[kind]
    g = rng.standard_normal((3, 40))
    want = fastlin.mahalanobis(X, mean, **{kind: M}, squared=squared)
    want_b = fastlin.mahalanobis_backward(g, X, mean, **{kind: M}, squared=squared)
    for chunks in ((3, 40, 5), (2, 15, 5), (1, 7, 2)):
        Xd = da.from_array(X, chunks=chunks)
        for Md in (M, da.from_array(M, chunks=2)):
            got = fd.mahalanobis(Xd, mean, **{kind: Md}, squared=squared).compute()
            np.testing.assert_array_equal(got, want)
        got = dask.compute(*fd.mahalanobis_backward(da.from_array(g, chunks=chunks[:2]), Xd,
                                                    mean, **{kind: M}, squared=squared))
        np.testing.assert_array_equal(got[0], want_b[0])
        for u, v in zip(got[1:], want_b[1:]):
            _close(u, v, np.float64, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_max_margin_loss(dtype, reduction):
    rng = _rng(11)
    pos = rng.standard_normal((4, 30)).astype(dtype)
    neg = rng.standard_normal((4, 30, 25)).astype(dtype)
    want = fastlin.max_margin_loss(pos, neg, 0.5, reduction)
    g = 0.7 if reduction != "none" else rng.standard_normal(neg.shape).astype(dtype)
    want_b = fastlin.max_margin_loss_backward(g, pos, neg, 0.5, reduction)
    for chunks in ((4, 30, 25), (2, 10, 25), (4, 30, 7), (3, 11, 9)):
        Nd = da.from_array(neg, chunks=chunks)
        Pd = da.from_array(pos[..., None], chunks=chunks[:2] + (1,))   # (..., B, 1)
        got = fd.max_margin_loss(Pd, Nd, 0.5, reduction).compute()
        gpos, gneg = dask.compute(*fd.max_margin_loss_backward(g, Pd, Nd, 0.5, reduction))
        np.testing.assert_array_equal(gneg, want_b[1])
        if reduction == "none":
            np.testing.assert_array_equal(got, want)
        else:
            _close(got, np.asarray(want), dtype, rtol=1e-12 if dtype == np.float64 else 1e-6)
        assert gpos.shape == pos[..., None].shape
        if chunks[2] == 25:             # N whole: the same sums
            np.testing.assert_array_equal(gpos[..., 0], want_b[0])
        else:
            _close(gpos[..., 0], want_b[0], dtype, rtol=1e-12 if dtype == np.float64 else 1e-6)


def test_numpy_inputs_are_wrapped():
    x = _rng().standard_normal((8, 5))
    y = fd.softmax(x, axis=1)
    assert isinstance(y, da.Array)
    np.testing.assert_array_equal(y.compute(), fastlin.softmax(x, axis=1))
    d, i = fd.cdist_topk(x, x, 2)
    assert isinstance(d, da.Array) and isinstance(i, da.Array)


def test_lazy_until_computed():
    calls = []

    def count(b):
        if b.size:              # Dask calls it on empty arrays for the meta
            calls.append(1)
        return b
    X = da.from_array(_rng().standard_normal((40, 6)), chunks=10).map_blocks(count, dtype=float)
    r = [fd.softmax(X, axis=0), fd.normalize(X), fd.cdist_topk(X, X, 3)[0],
         fd.cdist_logsumexp(X, X), fd.logsumexp(X, axis=0)]
    assert not calls
    dask.compute(*r)
    assert calls


def test_bad_arguments_raise_when_built():
    X = da.ones((10, 4), chunks=5)
    with pytest.raises(ValueError, match="VI"):
        fd.cdist(X, X, "mahalanobis")
    with pytest.raises(ValueError, match="metric"):
        fd.cdist_topk(X, X, 2, "cityblock")
    with pytest.raises(ValueError, match="k"):
        fd.cdist_topk(X, X, 11)
    with pytest.raises(ValueError, match="columns"):
        fd.cdist(X, da.ones((3, 5)))
    with pytest.raises(ValueError, match="2-d"):
        fd.cdist(da.ones(4), X)
    with pytest.raises(ValueError, match="scale"):
        fd.cdist_logsumexp(X, X, scale=np.nan)
    with pytest.raises(ValueError, match="b must"):
        fd.cdist_logsumexp(X, X, b=-np.ones(10))
    with pytest.raises(ValueError, match="axis"):
        fd.softmax(X, axis=2)
    with pytest.raises(TypeError):
        fd.softmax(da.ones(4, dtype=complex))
    with pytest.raises(ValueError, match="grad"):
        fd.softmax_backward(da.ones(3), X)
    with pytest.raises(ValueError, match="pos"):
        fd.max_margin_loss(da.ones(3), da.ones((4, 2)))
    with pytest.raises(ValueError, match="reduction"):
        fd.max_margin_loss(da.ones(4), da.ones((4, 2)), reduction="max")
    with pytest.raises(ValueError, match="idx"):
        fd.cdist_topk_backward(da.ones((9, 2)), X, X, da.zeros((9, 2), dtype=int))
    with pytest.raises(ValueError, match="chunk sizes"):
        fd.softmax(X[X[:, 0] > 0])


def test_task_threads_share_the_pool():
    """Each task of Dask's local thread pool gets its share of fastlin's
    threads, at least 1: never pool size x threads."""
    seen = []

    def probe(b):
        if b.size:
            seen.append((threading.current_thread() is threading.main_thread(),
                         fd._task_threads()))
        return b
    X = da.ones((8, 2), chunks=(1, 2)).map_blocks(probe, dtype=float)
    with fastlin.threads(4):
        with dask.config.set(scheduler="threads", num_workers=2):
            X.compute()
        pooled = [t for main, t in seen if not main]
        del seen[:]
        with dask.config.set(scheduler="sync"):
            X.compute()
    assert len(pooled) >= 7 and set(pooled) == {2}      # 4 threads, 2 tasks at once
    assert seen == [(True, 4)] * 8                      # one task at a time
    # a pool of the user's, given in Dask's configuration
    from concurrent.futures import ThreadPoolExecutor
    del seen[:]
    with ThreadPoolExecutor(4) as pool, fastlin.threads(4):
        with dask.config.set(scheduler="threads", pool=pool):
            X.compute()
    assert {t for main, t in seen if not main} == {1}
    assert fd._task_threads() == fastlin.get_num_threads()
    assert threading.current_thread() is threading.main_thread()


distributed = pytest.importorskip("distributed")


def _slow(b, delay):
    time.sleep(delay)
    return b


def _worker_view():
    import fastlin.dask as w
    return os.getpid(), w._task_threads(), w._concurrent_tasks()


@pytest.fixture(scope="module")
def client():
    # a nanny sets its workers' variables (OMP_NUM_THREADS=1, ...) in this
    # process's environment before it spawns them: put it back after, for
    # the processes later tests start
    saved = dict(os.environ)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None,
                                       local_directory=tempfile.gettempdir())
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()
        os.environ.clear()
        os.environ.update(saved)


class TestCluster:
    def test_results_and_threads(self, client):
        rng = _rng(12)
        XA = rng.standard_normal((300, 20)).astype(np.float32)
        XB = rng.standard_normal((2000, 20)).astype(np.float32)
        A, B = da.from_array(XA, chunks=(100, 20)), da.from_array(XB, chunks=(300, 20))
        d, i, l, s = client.compute([*fd.cdist_topk(A, B, 5), fd.cdist_logsumexp(A, B),
                                     fd.softmax(A, axis=0)], sync=True)
        d2, i2 = fastlin.cdist_topk(XA, XB, 5)
        if OWN_GEMM:
            np.testing.assert_array_equal(d, d2)
            np.testing.assert_array_equal(i, i2)
        else:
            _close(d, d2, np.float32, rtol=1e-6)
        _close(l, fastlin.cdist_logsumexp(XA, XB), np.float32, rtol=1e-5)
        _close(s, fastlin.softmax(XA, axis=0), np.float32)
        # one thread per task: a nanny's OMP_NUM_THREADS=1, and one task slot
        views = [client.submit(_worker_view, workers=[w], pure=False).result()
                 for w in client.scheduler_info()["workers"]]
        assert len({v[0] for v in views}) == 2
        assert all(v[1:] == (1, 1) for v in views), views

    def test_a_killed_worker_is_retried(self, client):
        rng = _rng(13)
        XA = rng.standard_normal((64, 12))
        XB = rng.standard_normal((4000, 12))
        A = da.from_array(XA, chunks=(32, 12))
        # slow chunks of XB: the kill lands while tasks are running
        B = da.from_array(XB, chunks=(250, 12)).map_blocks(_slow, 0.15, dtype=XB.dtype)
        fut = client.compute(fd.cdist_topk(A, B, 4)[1])
        pids = client.run(os.getpid)
        deadline = time.time() + 60
        while not any(v for v in client.processing().values()) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        idx = fut.result(timeout=180)
        np.testing.assert_array_equal(idx, fastlin.cdist_topk(XA, XB, 4)[1])
        assert victim not in client.run(os.getpid).values()
