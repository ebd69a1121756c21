"""cdist_backward / pdist_backward: finite differences, torch autograd, and the
documented zero-distance subgradient."""
import numpy as np
import pytest

import fastlin

METRICS = ["euclidean", "sqeuclidean", "cosine", "mahalanobis"]


def _vi(n, rng):
    M = rng.standard_normal((n, n))
    return M @ M.T + n * np.eye(n)


def _loss_cdist(G, metric, VI):
    return lambda A, B: float(np.sum(G * fastlin.cdist(A, B, metric, VI=VI)))


@pytest.mark.parametrize("metric", METRICS)
def test_cdist_backward_matches_central_differences(metric):
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((6, 4)), rng.standard_normal((5, 4))
    G = rng.standard_normal((6, 5))
    VI = _vi(4, rng) if metric == "mahalanobis" else None
    gA, gB = fastlin.cdist_backward(G, A, B, metric, VI=VI)
    f = _loss_cdist(G, metric, VI)
    h = 1e-6
    for X, gX, which in ((A, gA, 0), (B, gB, 1)):
        fd = np.zeros_like(X)
        for idx in np.ndindex(X.shape):
            Xp, Xm = X.copy(), X.copy()
            Xp[idx] += h
            Xm[idx] -= h
            args_p = (Xp, B) if which == 0 else (A, Xp)
            args_m = (Xm, B) if which == 0 else (A, Xm)
            fd[idx] = (f(*args_p) - f(*args_m)) / (2 * h)
        # truncation O(h^2 * f''') and rounding O(eps * |f| / h): both < 1e-8 here
        np.testing.assert_allclose(gX, fd, rtol=0, atol=1e-6 * max(1.0, np.abs(fd).max()))


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_pdist_backward_matches_central_differences(metric):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((7, 3))
    g = rng.standard_normal(21)
    gX = fastlin.pdist_backward(g, X, metric)
    h = 1e-6
    fd = np.zeros_like(X)
    for idx in np.ndindex(X.shape):
        Xp, Xm = X.copy(), X.copy()
        Xp[idx] += h
        Xm[idx] -= h
        fd[idx] = (np.sum(g * fastlin.pdist(Xp, metric))
                   - np.sum(g * fastlin.pdist(Xm, metric))) / (2 * h)
    np.testing.assert_allclose(gX, fd, rtol=0, atol=1e-6 * max(1.0, np.abs(fd).max()))


def test_against_torch_autograd():
    torch = pytest.importorskip("torch", reason="torch is not installed: autograd comparison skipped")
    rng = np.random.default_rng(5)
    A, B = rng.standard_normal((40, 9)) + 3.0, rng.standard_normal((30, 9)) + 3.0
    G = rng.standard_normal((40, 30))
    defs = {
        "euclidean": lambda a, b: torch.cdist(a, b),
        "sqeuclidean": lambda a, b: torch.cdist(a, b) ** 2,
        "cosine": lambda a, b: 1 - (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T,
    }
    for metric, fn in defs.items():
        ta = torch.tensor(A, requires_grad=True)
        tb = torch.tensor(B, requires_grad=True)
        (fn(ta, tb) * torch.tensor(G)).sum().backward()
        gA, gB = fastlin.cdist_backward(G, A, B, metric)
        scale = max(np.abs(ta.grad.numpy()).max(), 1.0)
        np.testing.assert_allclose(gA, ta.grad.numpy(), rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(gB, tb.grad.numpy(), rtol=0, atol=1e-12 * scale)
    X = rng.standard_normal((25, 4))
    g = rng.standard_normal(25 * 24 // 2)
    tx = torch.tensor(X, requires_grad=True)
    (torch.pdist(tx) * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(fastlin.pdist_backward(g, X), tx.grad.numpy(), rtol=0,
                               atol=1e-12 * max(1.0, np.abs(tx.grad.numpy()).max()))


def test_zero_distance_gives_the_finite_zero_subgradient():
    X = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, -1.0]])
    gA, gB = fastlin.cdist_backward(np.ones((3, 3)), X, X)
    assert np.all(np.isfinite(gA)) and np.all(np.isfinite(gB))
    # rows 0 and 1 coincide: that pair contributes nothing; only row 2 pulls
    d = np.linalg.norm(X[0] - X[2])
    np.testing.assert_allclose(gA[0], (X[0] - X[2]) / d, rtol=1e-15)
    gX = fastlin.pdist_backward(np.ones(3), X)
    assert np.all(np.isfinite(gX))
    # a zero row under cosine: zero gradient, not nan
    Z = np.array([[0.0, 0.0], [1.0, 1.0]])
    gA, gB = fastlin.cdist_backward(np.ones((2, 2)), Z, Z, "cosine")
    np.testing.assert_array_equal(gA[0], 0.0)


def test_float32_backward_follows_float64():
    rng = np.random.default_rng(6)
    A, B = rng.standard_normal((50, 16)), rng.standard_normal((40, 16))
    G = rng.standard_normal((50, 40))
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        g64 = fastlin.cdist_backward(G, A, B, metric)
        g32 = fastlin.cdist_backward(G.astype(np.float32), A.astype(np.float32),
                                     B.astype(np.float32), metric)
        for a, b in zip(g32, g64):
            assert a.dtype == np.float32
            # ~50 terms of size |G| |X| summed in float32
            np.testing.assert_allclose(a, b, rtol=0,
                                       atol=64 * np.finfo(np.float32).eps * np.abs(b).max())


def test_backward_validation():
    X = np.ones((3, 2))
    with pytest.raises(ValueError, match="grad must have the shape of the distances"):
        fastlin.cdist_backward(np.ones((2, 3)), X, X)
    with pytest.raises(ValueError, match="grad must have the shape of the condensed"):
        fastlin.pdist_backward(np.ones(2), X)
    with pytest.raises(ValueError, match="same number of columns, got 2 and 3"):
        fastlin.cdist_backward(np.ones((3, 3)), X, np.ones((3, 3)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("metric,k", [("euclidean", 40), ("euclidean", 5),
                                      ("sqeuclidean", 40), ("mahalanobis", 40)])
def test_backward_bitwise_identical_for_1_2_3_threads(dtype, metric, k):
    """700 x 600: 3 row blocks x 3 column tiles of 256 (3 threads: an
    uneven split); the per-row-block shares are summed in block order.  k = 5
    takes the direct path (few columns)."""
    rng = np.random.default_rng(21)
    A = rng.standard_normal((700, k)).astype(dtype)
    B = rng.standard_normal((600, k)).astype(dtype)
    B[3] = A[5]                                   # a zero distance
    G = rng.standard_normal((700, 600)).astype(dtype)
    kw = {"VI": _vi(k, rng)} if metric == "mahalanobis" else {}
    res = {}
    for nt in (1, 2, 3):
        with fastlin.threads(nt):
            res[nt] = fastlin.cdist_backward(G, A, B, metric, **kw)
    for nt in (2, 3):
        for a, b in zip(res[1], res[nt]):
            assert a.tobytes() == b.tobytes(), nt


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("offset", [0.0, 1e6])
@pytest.mark.parametrize("metric,k", [("euclidean", 24), ("euclidean", 3),
                                      ("sqeuclidean", 24)])
def test_backward_matches_longdouble_twin(metric, k, offset, dtype):
    """Against fastlin.reference (direct differences in longdouble), with a
    large common offset (the sums run on centred rows) and near-duplicate
    pairs 1e-7 apart and an exact duplicate.  For those W = g / d is huge and
    the GEMM form rowsum(W) a_i - W b cancels (5e-10 of max |g| before the
    exact terms were taken out of it); measured now: 5e-16 and 1e-15 of max
    |g| for (gA, gB) in float64, 3e-7 in float32 -> bounds 1e-14 and 4e-6.
    k = 3 takes the direct path (every term from its difference)."""
    from fastlin import reference as ref
    rng = np.random.default_rng(22)
    A = rng.standard_normal((300, k)) + offset
    B = rng.standard_normal((280, k)) + offset
    B[:10] = A[:10] + 1e-7 * rng.standard_normal((10, k))
    B[10] = A[10]
    G = rng.standard_normal((300, 280))
    A, B, G = A.astype(dtype), B.astype(dtype), G.astype(dtype)
    got = fastlin.cdist_backward(G, A, B, metric)
    want = ref.cdist_backward(G, A, B, metric)
    bound = 1e-14 if dtype == np.float64 else 4e-6
    for g, w in zip(got, want):
        assert g.dtype == dtype
        assert np.abs(g.astype(np.float64) - w).max() <= bound * np.abs(w).max()


def test_wide_rows_backward_matches_twin():
    """512 columns (long GEMM panels in the tiled sweep), with a near-duplicate
    pair 1e-7 apart and an exact duplicate: against the longdouble twin;
    measured 5e-16 of max |g| -> bound 1e-14."""
    from fastlin import reference as ref
    rng = np.random.default_rng(23)
    A = rng.standard_normal((40, 512)) + 3.0
    B = rng.standard_normal((30, 512)) + 3.0
    B[4] = A[7]                                   # a zero distance: zero subgradient
    B[9] = A[8] + 1e-7 * rng.standard_normal(512)
    G = rng.standard_normal((40, 30))
    got = fastlin.cdist_backward(G, A, B)
    want = ref.cdist_backward(G, A, B)
    for g, w in zip(got, want):
        assert np.all(np.isfinite(g))
        assert np.abs(g - w).max() <= 1e-14 * np.abs(w).max()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backward_many_row_blocks_in_groups(dtype):
    """8500 rows: 34 row blocks of 256, taken in 17 groups of 2 (the XB side
    keeps one float64 share per group, at most 32 groups): against the
    longdouble twin, and bitwise the same for 1, 2 and 3 threads.  Bounds as
    test_backward_matches_longdouble_twin."""
    from fastlin import reference as ref
    rng = np.random.default_rng(23)
    A = rng.standard_normal((8500, 17)).astype(dtype)
    B = rng.standard_normal((40, 17)).astype(dtype)
    B[:5] = A[100:105] + dtype(1e-3) * rng.standard_normal((5, 17)).astype(dtype)
    G = rng.standard_normal((8500, 40)).astype(dtype)
    res = {}
    for nt in (1, 2, 3):
        with fastlin.threads(nt):
            res[nt] = fastlin.cdist_backward(G, A, B)
    for nt in (2, 3):
        for a, b in zip(res[1], res[nt]):
            assert a.tobytes() == b.tobytes(), nt
    want = ref.cdist_backward(G, A, B, "euclidean")
    bound = 1e-14 if dtype == np.float64 else 4e-6
    for g, w in zip(res[1], want):
        assert np.abs(g.astype(np.float64) - w).max() <= bound * np.abs(w).max()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("metric,k", [("euclidean", 40), ("euclidean", 5), ("mahalanobis", 24),
                                      ("sqeuclidean", 24), ("cosine", 24)])
def test_backward_with_the_forwards_dist(dtype, metric, k):
    """dist= (the forward's result) gives the gradient of recomputing it: the
    same bits here (the backward's tiles recompute the forward's values), near
    duplicates and an exact duplicate included; bitwise across threads."""
    rng = np.random.default_rng(24)
    A = rng.standard_normal((700, k)).astype(dtype)
    B = rng.standard_normal((600, k)).astype(dtype)
    B[3] = A[5]
    B[4:8] = A[6:10] + dtype(1e-4) * rng.standard_normal((4, k)).astype(dtype)
    G = rng.standard_normal((700, 600)).astype(dtype)
    kw = {"VI": _vi(k, rng)} if metric == "mahalanobis" else {}
    D = fastlin.cdist(A, B, metric, **kw)
    want = fastlin.cdist_backward(G, A, B, metric, **kw)
    runs = {}
    for nt in (1, 2, 3):
        with fastlin.threads(nt):
            runs[nt] = fastlin.cdist_backward(G, A, B, metric, dist=D, **kw)
    for nt in (2, 3):
        for a, b in zip(runs[1], runs[nt]):
            assert a.tobytes() == b.tobytes(), nt
    for g, w in zip(runs[1], want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-12 * np.abs(w).max() if
                                   dtype == np.float64 else 1e-5 * np.abs(w).max())


def test_backward_dist_near_duplicates_match_twin():
    """With dist given, the near pairs are found from it and the norms: their
    terms still come from differences (the longdouble twin's bound)."""
    from fastlin import reference as ref
    rng = np.random.default_rng(25)
    A = rng.standard_normal((300, 24)) + 1e6
    B = rng.standard_normal((280, 24)) + 1e6
    B[:10] = A[:10] + 1e-7 * rng.standard_normal((10, 24))
    B[10] = A[10]
    G = rng.standard_normal((300, 280))
    got = fastlin.cdist_backward(G, A, B, dist=fastlin.cdist(A, B))
    want = ref.cdist_backward(G, A, B, "euclidean")
    for g, w in zip(got, want):
        assert np.abs(g - w).max() <= 1e-14 * np.abs(w).max()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_backward_given_dist_matches_longdouble_twin(dtype, offset):
    """dist= takes its own path (W = G / D formed whole, then two GEMMs):
    against the longdouble twin with a common offset, near pairs 1e-7 apart
    (1e-3 in float32, where 1e-7 is below the offset's rounding) and an exact
    duplicate, under test_backward_matches_longdouble_twin's bounds; wide
    enough rows (300 columns) for the GEMM path."""
    from fastlin import reference as ref
    rng = np.random.default_rng(29)
    sep = 1e-7 if dtype == np.float64 else 1e-3
    A = rng.standard_normal((300, 300)) + offset
    B = rng.standard_normal((280, 300)) + offset
    B[:10] = A[:10] + sep * rng.standard_normal((10, 300))
    B[10] = A[10]
    G = rng.standard_normal((300, 280))
    A, B, G = A.astype(dtype), B.astype(dtype), G.astype(dtype)
    got = fastlin.cdist_backward(G, A, B, dist=fastlin.cdist(A, B))
    want = ref.cdist_backward(G, A, B, "euclidean")
    bound = 1e-14 if dtype == np.float64 else 4e-6
    for g, w in zip(got, want):
        assert g.dtype == dtype
        assert np.all(np.isfinite(g))
        assert np.abs(g.astype(np.float64) - w).max() <= bound * np.abs(w).max()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backward_given_dist_in_bands(monkeypatch, dtype):
    """W = G / D is held in bands of rows (_BWD_BAND_BYTES); with a limit that
    makes 4 bands (W^T A accumulated band by band), near pairs in several of
    them: the twin's bounds, bitwise the same on 1, 2 and 3 threads, and
    close to the one-band result (the bands only change where W^T A's sum
    over the rows is rounded)."""
    from fastlin import _distance_api as api
    from fastlin import reference as ref
    rng = np.random.default_rng(30)
    A = rng.standard_normal((1000, 40)).astype(dtype)
    B = rng.standard_normal((300, 40)).astype(dtype)
    for i, j in [(3, 0), (290, 1), (600, 2), (999, 3)]:
        B[j] = A[i] + dtype(1e-3) * rng.standard_normal(40).astype(dtype)
    B[4] = A[500]
    G = rng.standard_normal((1000, 300)).astype(dtype)
    D = fastlin.cdist(A, B)
    whole = fastlin.cdist_backward(G, A, B, dist=D)
    monkeypatch.setattr(api, "_BWD_BAND_BYTES", 256 * 300 * np.dtype(dtype).itemsize)
    res = {}
    for nt in (1, 2, 3):
        with fastlin.threads(nt):
            res[nt] = fastlin.cdist_backward(G, A, B, dist=D)
    for nt in (2, 3):
        for a, b in zip(res[1], res[nt]):
            assert a.tobytes() == b.tobytes(), nt
    want = ref.cdist_backward(G, A, B, "euclidean")
    bound = 1e-14 if dtype == np.float64 else 4e-6
    for g, w, h in zip(res[1], want, whole):
        assert np.abs(g.astype(np.float64) - w).max() <= bound * np.abs(w).max()
        assert np.abs(h.astype(np.float64) - w).max() <= bound * np.abs(w).max()


@pytest.mark.parametrize("k", [3, 40])
@pytest.mark.parametrize("scale", [1e-300, 1e-160, 1e200, 1e300])
def test_backward_beyond_the_squares_range(k, scale):
    """Distances whose squares leave float64's normal range (as
    test_distance's test_distances_beyond_the_squares_range): the weights
    g / d come from the scaled distances, so the gradients match the
    longdouble twin (1e-13 of max |g|), with dist= and without; a plain sum
    of squares gives w = 0 (inf distance) or digits lost."""
    from fastlin import reference as ref
    rng = np.random.default_rng(35)
    A = rng.standard_normal((30, k)) * scale
    B = rng.standard_normal((20, k)) * scale
    B[0] = A[0]
    G = rng.standard_normal((30, 20))
    want = ref.cdist_backward(G, A, B, "euclidean")
    for dist in (None, fastlin.cdist(A, B)):
        got = fastlin.cdist_backward(G, A, B, dist=dist)
        for g, w in zip(got, want):
            w = np.asarray(w, dtype=np.float64)
            assert np.abs(g - w).max() <= 1e-13 * np.abs(w).max()


@pytest.mark.parametrize("k", [2, 17, 40])
@pytest.mark.parametrize("s", [1e-310, 1e-320])
def test_backward_direction_at_subnormal_distances(k, s):
    """At subnormal distances the terms are formed from the scaled
    differences, never from the rounded subnormal d: the unit directions to
    1e-15 (dividing by the rounded d leaves 1.6e-4 of error at 1e-320),
    with dist= and without; float32 at 1e-44 likewise, with dist= as
    without."""
    from fastlin import reference as ref
    A = np.zeros((2, k))
    A[0, :2] = s
    A[1, :2] = [3 * s, s]
    B = np.zeros((1, k))
    G = np.ones((2, 1))
    want = np.asarray(ref.cdist_backward(G, A, B)[0], np.float64)
    for dist in (None, fastlin.cdist(A, B)):
        np.testing.assert_allclose(fastlin.cdist_backward(G, A, B, dist=dist)[0], want,
                                   rtol=0, atol=1e-15)
    A32 = np.zeros((1, k), np.float32)
    A32[0, :2] = [3e-44, 1e-44]
    B32 = np.zeros((1, k), np.float32)
    G32 = np.ones((1, 1), np.float32)
    want32 = np.zeros(k)
    want32[:2] = np.array([3.0, 1.0]) / np.sqrt(10.0)
    for dist in (None, fastlin.cdist(A32, B32)):
        got = fastlin.cdist_backward(G32, A32, B32, dist=dist)[0][0]
        np.testing.assert_allclose(got, want32, rtol=0, atol=4e-7)


@pytest.mark.parametrize("k", [2, 40])
def test_backward_at_subnormal_distances(k):
    """A distance of 3e-310 (subnormal) with grad 1: g / d overflows, so the
    terms are g ((a - b) / d) from the scaled distance -- the gradient is the
    unit direction, finite (not inf or nan), with dist= and without, cdist
    and pdist; against the longdouble twin."""
    from fastlin import reference as ref
    A = np.zeros((3, k))
    A[0, 0] = 3e-310
    A[2, :2] = 1.0
    B = np.zeros((2, k))
    B[1, :2] = -1.0
    G = np.ones((3, 2))
    want = ref.cdist_backward(G, A, B, "euclidean")
    for dist in (None, fastlin.cdist(A, B)):
        got = fastlin.cdist_backward(G, A, B, dist=dist)
        for g, w in zip(got, want):
            assert np.all(np.isfinite(g))
            np.testing.assert_allclose(g, np.asarray(w, np.float64), rtol=0, atol=1e-15)
    gp = fastlin.pdist_backward(np.ones(3), A)
    wp = ref.cdist_backward(np.ones((3, 3)) - np.eye(3), A, A, "euclidean")[0]
    np.testing.assert_allclose(gp, np.asarray(wp, np.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_direct_backward_weights_at_edge_values(dtype):
    """The few-columns backward's weights g / |a - b| (a reciprocal square
    root with Newton steps under AVX-512, the square root and division
    elsewhere) against a float64 NumPy twin of the same formula: a duplicate
    (the zero subgradient), a pair whose squared distance is subnormal in
    float64 (the vectors holding it take the exact division) and a NaN in
    grad; within 8 ulp of each gradient entry's magnitude
    sum_j |w_ij| |a_i - b_j|."""
    rng = np.random.default_rng(33)
    scale = 1e-150 if dtype == np.float64 else 1.0
    A = rng.standard_normal((40, 3)) * scale
    B = rng.standard_normal((35, 3)) * scale
    u = np.array([0.6, 0.8, 0.0])
    B[0] = A[0]                                           # zero distance
    if dtype == np.float64:
        B[1] = A[1] + 1e-154 * u                          # squared: 1e-308, subnormal
        B[2] = A[2] + 1e-153 * u
    G = rng.standard_normal((40, 35))
    G[5, 6] = np.nan
    A, B, G = A.astype(dtype), B.astype(dtype), G.astype(dtype)
    got = fastlin.cdist_backward(G, A, B)
    a, b, g = A.astype(np.float64), B.astype(np.float64), G.astype(np.float64)
    diff = a[:, None, :] - b[None, :, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        sq = np.einsum("ijk,ijk->ij", diff, diff)
        w = np.where(sq == 0, 0.0, g / np.sqrt(sq))
        want = (np.einsum("ij,ijk->ik", w, diff), -np.einsum("ij,ijk->jk", w, diff))
        mag = (np.einsum("ij,ijk->ik", np.abs(w), np.abs(diff)),
               np.einsum("ij,ijk->jk", np.abs(w), np.abs(diff)))
    eps = np.finfo(dtype).eps
    for gv, wv, m in zip(got, want, mag):
        assert gv.dtype == dtype
        np.testing.assert_array_equal(np.isnan(gv), np.isnan(wv))
        ok = ~np.isnan(wv)
        assert np.all(np.abs(gv[ok] - wv[ok]) <= 8 * eps * m[ok] + np.finfo(dtype).tiny)


@pytest.mark.parametrize("layout", ["fortran", "strided", "broadcast"])
@pytest.mark.parametrize("metric", ["euclidean", "mahalanobis"])
def test_backward_given_dist_takes_any_grad_layout(layout, metric):
    """grad in any memory layout (Fortran order, a strided view, the
    broadcast ones of D.sum()) gives the gradient of its C-contiguous copy,
    with dist= as without it (the given-distance kernels read rows: a
    Fortran grad must be copied, not refused)."""
    rng = np.random.default_rng(32)
    A = rng.standard_normal((40, 20))
    B = rng.standard_normal((30, 20))
    kw = {"VI": _vi(20, rng)} if metric == "mahalanobis" else {}
    D = fastlin.cdist(A, B, metric, **kw)
    G = {"fortran": np.asfortranarray(rng.standard_normal((40, 30))),
         "strided": rng.standard_normal((80, 60))[::2, ::2],
         "broadcast": np.broadcast_to(np.ones(30), (40, 30))}[layout]
    want = fastlin.cdist_backward(np.ascontiguousarray(G), A, B, metric, dist=D, **kw)
    for dist in (D, None):
        got = fastlin.cdist_backward(G, A, B, metric, dist=dist, **kw)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-12 * np.abs(w).max())


@pytest.mark.parametrize("case", ["grad", "inf_row", "nan_row"])
def test_backward_given_dist_non_finite_as_without(case):
    """A nan in grad, an inf row of XA or a nan row of XB gives the same
    pattern of nan and the same finite values with dist= as without it."""
    rng = np.random.default_rng(31)
    A = rng.standard_normal((60, 40))
    B = rng.standard_normal((50, 40))
    G = rng.standard_normal((60, 50))
    if case == "grad":
        G[10, 11] = np.nan
    elif case == "inf_row":
        A[3, 5] = np.inf
    else:
        B[2, 1] = np.nan
    with np.errstate(invalid="ignore"):
        want = fastlin.cdist_backward(G, A, B)
        got = fastlin.cdist_backward(G, A, B, dist=fastlin.cdist(A, B))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        ok = np.isfinite(w)
        if ok.any():
            np.testing.assert_allclose(g[ok], w[ok], rtol=0,
                                       atol=1e-12 * np.abs(w[ok]).max())


def test_pdist_backward_with_the_forwards_dist():
    rng = np.random.default_rng(26)
    X = rng.standard_normal((400, 30))
    X[7] = X[3]
    g = rng.standard_normal(400 * 399 // 2)
    for metric in ("euclidean", "sqeuclidean"):
        d = fastlin.pdist(X, metric)
        np.testing.assert_allclose(fastlin.pdist_backward(g, X, metric, dist=d),
                                   fastlin.pdist_backward(g, X, metric), rtol=0,
                                   atol=1e-12 * 400)


def test_backward_dist_is_checked():
    """A dist that does not hold these points' distances is refused, naming
    an entry; an inexact one (float32 rounding, as a GEMM-identity peer's)
    is accepted."""
    rng = np.random.default_rng(27)
    A = rng.standard_normal((50, 20))
    B = rng.standard_normal((40, 20))
    G = rng.standard_normal((50, 40))
    D = fastlin.cdist(A, B)
    for bad in (D ** 2, fastlin.cdist(A, B, "sqeuclidean"),
                fastlin.cdist(A[::-1], B), D + 1.0):
        with pytest.raises(ValueError, match="dist does not hold the distances"):
            fastlin.cdist_backward(G, A, B, dist=bad)
    with pytest.raises(ValueError, match=r"dist must have the shape of the distances \(50, 40\)"):
        fastlin.cdist_backward(G, A, B, dist=D.T)
    with pytest.raises(ValueError, match="dist must have the shape of the condensed"):
        fastlin.pdist_backward(rng.standard_normal(50 * 49 // 2), A, dist=D)
    with pytest.raises(TypeError):
        fastlin.cdist_backward(G, A, B, dist=D.astype(complex))
    got = fastlin.cdist_backward(G, A, B, dist=D.astype(np.float32))
    want = fastlin.cdist_backward(G, A, B)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * np.abs(w).max())


@pytest.mark.parametrize("metric", ["euclidean", "mahalanobis"])
def test_backward_uses_the_given_dist(metric):
    """The gradient is sum_j g_ij / d_ij (a_i - b_j): with every given
    distance scaled by 1 + 1e-5 (inside the spot check's tolerance) it scales
    by 1 / (1 + 1e-5), so the given values, not recomputed ones, were used --
    the near pairs' exact terms included.  (pdist_backward likewise.)  The
    comparison allows 1e-10 of max |g| (the scaled distances are rounded
    once more, and mahalanobis maps back through L^T), five orders below the
    1e-5 the scaling moves the gradient by."""
    rng = np.random.default_rng(28)
    A = rng.standard_normal((300, 24))
    B = rng.standard_normal((280, 24))
    B[:4] = A[:4] + 1e-6 * rng.standard_normal((4, 24))
    G = rng.standard_normal((300, 280))
    kw = {"VI": _vi(24, rng)} if metric == "mahalanobis" else {}
    s = 1 + 1e-5
    D = fastlin.cdist(A, B, metric, **kw)
    plain = fastlin.cdist_backward(G, A, B, metric, **kw)
    scaled = fastlin.cdist_backward(G, A, B, metric, dist=D * s, **kw)
    for p_, q_ in zip(plain, scaled):
        assert not np.allclose(q_, p_, rtol=1e-7, atol=0)
        np.testing.assert_allclose(q_ * s, p_, rtol=1e-10, atol=1e-10 * np.abs(p_).max())
    # pdist_backward: euclidean uses a given dist from 256 columns on (below,
    # test_pdist_backward_recomputes_at_few_columns)
    X = A if metric == "mahalanobis" else rng.standard_normal((120, 256))
    g = rng.standard_normal(len(X) * (len(X) - 1) // 2)
    d = fastlin.pdist(X, metric, **kw)
    p_ = fastlin.pdist_backward(g, X, metric, **kw)
    q_ = fastlin.pdist_backward(g, X, metric, dist=d * s, **kw)
    assert not np.allclose(q_, p_, rtol=1e-7, atol=0)
    np.testing.assert_allclose(q_ * s, p_, rtol=1e-10, atol=1e-10 * np.abs(p_).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pdist_backward_recomputes_at_few_columns(dtype):
    """Below 256 columns pdist_backward checks a given euclidean dist and
    recomputes the distances instead of expanding it to the square matrix
    (slower than the GEMM there: see _PDIST_DIST_MIN_COLS).  The
    recomputed distances are the forward's bit for bit, so the gradient is
    the one without dist, bitwise; a dist that is not these points' is still
    refused, naming a condensed entry's pair."""
    rng = np.random.default_rng(29)
    X = rng.standard_normal((200, 64)).astype(dtype)
    X[5] = X[9]
    g = rng.standard_normal(200 * 199 // 2).astype(dtype)
    d = fastlin.pdist(X)
    np.testing.assert_array_equal(fastlin.pdist_backward(g, X, dist=d),
                                  fastlin.pdist_backward(g, X))
    for bad in (d ** 2, d + 1, d[::-1].copy()):
        with pytest.raises(ValueError, match=r"dist does not hold the distances of these "
                                             r"points: entry \(\d+, \d+\)"):
            fastlin.pdist_backward(g, X, dist=bad)
    # a short dist (up to 64 entries) is checked at every entry, each one
    # mapped to its pair of scipy's condensed order: one wrong entry, wherever
    # it is, is refused (sampling pairs missed (0, 2) at m = 3)
    for m in (2, 3, 4, 7, 11):
        Xs = rng.standard_normal((m, 4)).astype(dtype)
        ds = fastlin.pdist(Xs)
        gs = np.ones_like(ds)
        fastlin.pdist_backward(gs, Xs, dist=ds)
        for q in range(ds.size):
            bad = ds.copy()
            bad[q] = 1e6
            with pytest.raises(ValueError, match="dist does not hold the distances"):
                fastlin.pdist_backward(gs, Xs, dist=bad)


@pytest.mark.parametrize("dtype,offset", [(np.float64, 1e8), (np.float32, 1e4)])
def test_mahalanobis_backward_keeps_digits_under_a_common_offset(dtype, offset):
    """Points sharing a large offset: the gradient is translation invariant,
    so it must keep the digits it has near the origin.  Against a longdouble
    twin of sum_j g_ij VI (a_i - b_j) / d_ij on the same (rounded) points.
    Whitening the raw rows (X @ L before any centring) multiplied the offset
    into them and lost 1e-3 relative in float32 (1.7e-8 in float64); moved
    to a common point first, 1.0 eps32 / 2.3 eps measured -> bound 8 eps."""
    rng = np.random.default_rng(41)
    k = 20
    A = (rng.standard_normal((30, k)) + offset).astype(dtype)
    B = (rng.standard_normal((25, k)) + offset).astype(dtype)
    VI = _vi(k, rng) / k
    G = rng.standard_normal((30, 25)).astype(dtype)
    a, b, V = (x.astype(np.longdouble) for x in (A, B, VI))
    diff = a[:, None, :] - b[None, :, :]
    dv = diff @ V
    W = G.astype(np.longdouble) / np.sqrt(np.einsum("ijk,ijk->ij", dv, diff))
    want_a = np.einsum("ij,ijk->ik", W, dv)
    want_b = -np.einsum("ij,ijk->jk", W, dv)
    tol = 8 * np.finfo(dtype).eps
    gA, gB = fastlin.cdist_backward(G, A, B, "mahalanobis", VI=VI)
    for got, want in ((gA, want_a), (gB, want_b)):
        assert float(np.max(np.abs(got - want)) / np.max(np.abs(want))) < tol
    # pdist_backward goes through cdist_backward (both sides X)
    g = rng.standard_normal(30 * 29 // 2).astype(dtype)
    Gs = np.zeros((30, 30), np.longdouble)
    Gs[np.triu_indices(30, 1)] = g
    Gs = Gs + Gs.T
    diff = a[:, None, :] - a[None, :, :]
    dv = diff @ V
    D = np.sqrt(np.einsum("ijk,ijk->ij", dv, diff))
    np.fill_diagonal(D, 1)
    want = np.einsum("ij,ijk->ik", Gs / D, dv)
    got = fastlin.pdist_backward(g, A, "mahalanobis", VI=VI)
    assert float(np.max(np.abs(got - want)) / np.max(np.abs(want))) < tol


@pytest.mark.parametrize("scale", [1e-170, 1e154])
def test_cosine_backward_at_extreme_magnitudes(scale):
    """Cosine distance is scale invariant, so its gradient is homogeneous of
    degree -1: g(s A, s B) = g(A, B) / s.  The forward is right at 1e-170
    and 1e154 (normalize scales before squaring); the backward squared the
    raw rows and returned zeros (underflow) or lost the rows (overflow)."""
    rng = np.random.default_rng(42)
    A, B = rng.standard_normal((5, 4)), rng.standard_normal((3, 4))
    G = rng.standard_normal((5, 3))
    want = fastlin.cdist_backward(G, A, B, "cosine")
    got = fastlin.cdist_backward(G, A * scale, B * scale, "cosine")
    for g, w in zip(got, want):
        np.testing.assert_allclose(g * scale, w, rtol=1e-14, atol=1e-15 * np.abs(w).max())
    np.testing.assert_allclose(fastlin.cdist(A * scale, B * scale, "cosine"),
                               fastlin.cdist(A, B, "cosine"), rtol=0, atol=1e-15)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # np.matrix
@pytest.mark.parametrize("metric", METRICS)
def test_matrix_subclass_grad_is_taken_as_an_array(metric):
    """np.matrix would make the `*` of G * C a matrix product: taken as the
    plain array it holds, as scipy takes its inputs."""
    rng = np.random.default_rng(43)
    A, B = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    G = rng.standard_normal((5, 4))
    kw = {"VI": _vi(3, rng)} if metric == "mahalanobis" else {}
    want = fastlin.cdist_backward(G, A, B, metric, **kw)
    got = fastlin.cdist_backward(np.matrix(G), np.matrix(A), np.matrix(B), metric, **kw)
    for g, w in zip(got, want):
        assert type(g) is np.ndarray
        np.testing.assert_array_equal(g, w)


def test_tensor_requiring_grad_raises_type_error():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="XA must be array_like.*detach"):
        fastlin.cdist(torch.ones(2, 3, requires_grad=True), np.ones((2, 3)))
