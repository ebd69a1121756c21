"""Public mahalanobis and mahalanobis_backward (one distribution, many points)."""
import math

import numpy as np
from scipy.linalg import lapack, solve_triangular

from . import _memory, _simd
from ._common import store_out
from ._threads import _for_macs, blas_single_thread
from ._validation import SYMMETRY_RTOL, as_array, dtype_eps, result_dtype, symmetric_part
from ._validation import regularise_hint as _regularise

_k = _simd.kernels("_mahalanobis")

__all__ = ["mahalanobis", "mahalanobis_backward"]

# Up to this dimension the backward accumulates its d x d sums in the pass;
# above it writes the rows and uses one GEMM (measured crossover ~32).
_FUSED_MAX_D = 32


def _semidefinite_factor(VI, n, dtype, vi_dtype):
    """A lower triangular L with VI = L L^T for a positive *semi*definite VI
    that Cholesky refuses (a zero eigenvalue: a direction that costs nothing,
    as scipy's quadratic form allows): from VI's eigenvectors scaled by the
    roots of its eigenvalues, B = Q sqrt(lam) (B B^T = VI), made triangular
    by a QR of B^T (B B^T = R^T R, L = R^T).  An eigenvalue below -n eps of
    the largest makes VI indefinite: refused (scipy returns nan there); eps
    is the larger of the working `dtype`'s and VI's own (`vi_dtype`): float32
    rounding on either side moves a zero eigenvalue by ~n eps32."""
    lam, Q = np.linalg.eigh(VI)
    top = max(float(np.abs(lam).max(initial=0.0)), np.finfo(np.float64).tiny)
    eps = max(dtype_eps(dtype), dtype_eps(vi_dtype))
    if lam.min(initial=0.0) < -n * eps * top:
        raise ValueError(f"VI is not positive semidefinite (an eigenvalue is "
                         f"{lam.min():.3g}, the largest {top:.3g}); "
                         + _regularise("VI", n, dtype, VI))
    B = Q * np.sqrt(np.clip(lam, 0.0, None))
    return np.linalg.qr(B.T, mode="r").T


# A covariance is refused as singular to working precision when the sum of
# its variables' variance inflation factors, trace(R^-1) for its correlation
# matrix R, reaches 1 / (SINGULAR_COV_EPS eps) of the matrix's dtype.
SINGULAR_COV_EPS = 32.0


def _refuse_singular_cov(Md, c, name, dtype):
    """Raise if the covariance Md, whose lower Cholesky factor is c, is
    singular to working precision.

    Parameters
    ----------
    Md : ndarray, shape (d, d)
        The covariance in float64 (symmetric), d >= 1.
    c : ndarray, shape (d, d)
        Its lower Cholesky factor (LAPACK potrf succeeded).
    name : str
        The argument's name, for the message.
    dtype : numpy.dtype
        The dtype the covariance was given in: its eps sets the line.

    Raises
    ------
    ValueError
        If ``1 / trace(R^-1) <= SINGULAR_COV_EPS * eps``, R the correlation
        matrix of ``c c^T``.

    Notes
    -----
    Rounding makes a singular covariance factor now and then (np.cov's sums
    and potrf move its zero eigenvalue by a few eps, and the sign decides),
    and the solve then inflates the distances by ~1e8.  Cholesky's own pivots
    do not reveal that: the pivot of a dependent column is its variance left
    unexplained by the *earlier* columns, and when those are themselves
    nearly collinear the rounding reaching it is amplified by their
    conditioning (a rank-4 5 x 5 np.cov left a pivot of 800 eps of its
    variable's variance under one OpenBLAS kernel, with R's smallest
    eigenvalue at 1.1 eps, and a non-positive pivot under another).  The
    smallest eigenvalue of the correlation matrix R = D^-1/2 C D^-1/2 (D =
    diag C) is not amplified: rounding moves it by |v^T E v| for the null
    vector v and the perturbation E, a few eps of R whatever the
    conditioning (measured: at most 18 eps for the sample covariances of up
    to 1e6 points, d 2..1024, exact duplicates, linear combinations, one-hot
    and compositional columns, under OpenBLAS's Prescott, Nehalem,
    Sandybridge, Haswell and SkylakeX kernels; at most 4 eps32 for these
    rounded to float32 or made by a float32 np.cov.  A line at the
    worst-case bound instead, d^2 eps for potrf alone, would refuse d = 1000
    covariances of condition 4e9).  R
    ignores the variables' scales, which Cholesky's rounding does too (van
    der Sluis), so variables in different units are not singular.  Beyond
    any test of the matrix alone: rounding that makes a singular covariance
    nonsingular at the scale of its own variables, as np.cov's centring does
    for a constant variable (its variance comes out as ~(eps mean)^2 > 0,
    uncorrelated with the rest) or for d points whose mean exceeds their
    spread ~1e9 times (the rounded deviations are of full rank).

    ``t = 1 / trace(R^-1)`` lies within ``[lambda_min / d, lambda_min]`` of
    R's smallest eigenvalue and equals it to a few digits when one direction
    is nearly null.  It costs one triangular inverse, as much as potrf, and,
    unlike a condition estimate (pocon), never overstates ``lambda_min``: a
    singular covariance whose rounding left ``lambda_min <= 32 eps`` is
    refused without exception.  Where the line sits: a covariance is refused
    at ``trace(R^-1) >= 1 / (32 eps)`` (1.4e14 in float64, 2.6e5 in float32),
    so always if ``lambda_min(R) <= 32 eps`` and never if ``lambda_min(R) >
    32 d eps`` (as where ``cond(R) < 1 / (32 d eps)``); the distances' error
    bound, ``d eps cond(R)``, is 1/32 to d/32 there.

    The ridge the message proposes passes: ``C' = C + mu I`` with ``mu = lam
    trace(C) / d`` and ``lam >= 100 d eps`` has ``R' >= mu D'^-1`` (D' =
    diag C'), so ``trace(R'^-1) <= trace(D') / mu = d / lam + d`` and ``t >=
    lam / (d (1 + lam)) >= 50 eps`` for ``lam <= 1``.

    R^-1's diagonal, ``1 / (1 - R_k^2)`` of each variable k regressed on the
    others, also names the variable most nearly a combination of the others.
    """
    eps = dtype_eps(dtype)
    d = c.shape[0]
    # the factor of R itself: rows of L scaled by 1 / sqrt(C_kk), entries <= 1
    LR = c / np.sqrt(np.diag(Md))[:, None]
    inv, info = lapack.dtrtri(LR, lower=1)      # under _factor's one BLAS thread
    if info != 0:  # pragma: no cover - potrf's factor has a positive diagonal
        inv = np.full_like(LR, np.inf)
    # (R^-1)_kk is the squared norm of column k of LR^-1 (R^-1 = LR^-T LR^-1);
    # a pivot near underflow overflows it: inf, refused
    with np.errstate(over="ignore", invalid="ignore"):
        vif = np.einsum("ij,ij->j", inv, inv)
        t = 1.0 / vif.sum()
    if t > SINGULAR_COV_EPS * eps:
        return
    k = int(np.argmax(np.where(np.isnan(vif), np.inf, vif)))
    raise ValueError(
        f"{name} is singular to working precision (the smallest eigenvalue of its "
        f"correlation matrix is at most {t:.3g}, not above {SINGULAR_COV_EPS:g} eps = "
        f"{SINGULAR_COV_EPS * eps:.3g}; variable {k} is the one most nearly a combination "
        f"of the others, all but a share {1.0 / vif[k]:.3g} of its variance explained by "
        f"them); " + _regularise(name, d, dtype))


def _factor(M, name, dtype=None):
    """Lower Cholesky factor of a symmetric positive definite matrix, with the
    failing column named (LAPACK potrf's info); for VI, a lower triangular
    L with VI = L L^T also when VI is only positive semidefinite."""
    # symmetric up to rounding (a float32 covariance is symmetric only to ~1
    # ulp of float32; np.linalg.inv's VI to ~cond eps), then averaged
    Md = symmetric_part(M, name)
    # one BLAS thread: a d x d factorization (and the singularity check's
    # triangular inverse) gains nothing from more, and OpenBLAS's woken
    # threads then spin for a while, stealing the cores from the kernel that
    # follows (half of its time, measured on 2 cores)
    with blas_single_thread():
        c, info = lapack.dpotrf(Md, lower=1, clean=1)
        if info == 0 and name == "cov" and c.shape[0]:
            # rounding often lets a singular covariance factor; a singular VI
            # is not refused: it only makes some directions cost nothing
            _refuse_singular_cov(Md, c, name, M.dtype)
    if info > 0 and name == "VI":
        # a singular positive semidefinite VI is a valid quadratic form (a
        # direction that costs nothing; scipy computes it): a triangular
        # factor from its eigenvectors, as cdist's; indefinite is refused
        return _semidefinite_factor(Md, Md.shape[0], M.dtype if dtype is None else dtype, M.dtype)
    if info > 0:
        raise ValueError(f"{name} is not positive definite (Cholesky failed at column "
                         f"{info - 1}); " + _regularise(name, Md.shape[0], M.dtype, Md))
    if info < 0:  # pragma: no cover - argument error inside LAPACK
        raise ValueError(f"LAPACK potrf rejected {name} (info={info})")
    return c


_SMALL_FACTOR_D = _k.SMALL_FACTOR_D
_EPS = {np.dtype(t): dtype_eps(t) for t in (np.float16, np.float32, np.float64)}


def _factor_small(M, kind):
    """_factor's result for a small, finite, symmetric cov or VI that is
    positive definite (and, for cov, not singular to working precision),
    checked and factored in one C call (_mahalanobis.small_factor): a tiny
    call's Python and LAPACK overhead would outweigh its kernel.  None for
    anything else, which the general path then handles or refuses with its
    detailed message."""
    eps = _EPS.get(M.dtype, _EPS[np.dtype(np.float64)])
    L = np.empty(M.shape)
    status, t = _k.small_factor(np.ascontiguousarray(M, dtype=np.float64), L,
                                max(SYMMETRY_RTOL, 64 * eps), kind == "cov")
    if status or (kind == "cov" and not t > SINGULAR_COV_EPS * eps):
        return None
    return L


def _setup(X, mean, cov, VI, cholesky):
    X = as_array(X, "X")
    mean = as_array(mean, "mean")
    if X.ndim < 1:
        raise ValueError("X must have at least 1 dimension (..., d), got a scalar")
    d = X.shape[-1]
    if mean.shape != (d,):
        raise ValueError(f"mean must have shape ({d},) for points of dimension {d}, "
                         f"got {mean.shape}")
    given = [(k, v) for k, v in (("cov", cov), ("VI", VI), ("cholesky", cholesky))
             if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of cov, VI (the precision matrix) or cholesky "
                         f"(a lower factor of cov); got {len(given)}: "
                         f"{', '.join(k for k, _ in given) or 'none'}")
    kind, M = given[0]
    M = as_array(M, kind)
    dtype = result_dtype((X, "X"), (mean, "mean"), (M, kind))
    if M.shape != (d, d):
        raise ValueError(f"{kind} must have shape ({d}, {d}) for points of dimension {d}, "
                         f"got {M.shape}")
    if kind != "cholesky" and 0 < d <= _SMALL_FACTOR_D:
        L = _factor_small(M, kind)
        if L is not None:
            return X, mean, kind, np.ascontiguousarray(L, dtype=dtype), dtype, d
    if not np.all(np.isfinite(M)):
        raise ValueError(f"{kind} must be finite (it holds nan or inf)")
    if kind == "cholesky":
        Md = np.asarray(M, dtype=np.float64)
        if np.any(np.triu(Md, 1) != 0):
            raise ValueError("cholesky must be lower triangular (its strict upper part "
                             "is not zero)")
        diag = np.diag(Md)
        if np.any(diag == 0):
            k = int(np.flatnonzero(diag == 0)[0])
            raise ValueError(f"cholesky must have a positive diagonal: L[{k}, {k}] is 0, so "
                             "cov = L L^T is singular; " + _regularise("cov", d, M.dtype))
        if np.any(diag < 0):
            k = int(np.flatnonzero(diag < 0)[0])
            raise ValueError(f"cholesky must have a positive diagonal: L[{k}, {k}] is "
                             f"{diag[k]:.3g}; negating the columns with a negative diagonal "
                             "entry (L * np.sign(np.diag(L))) gives the Cholesky factor of "
                             "the same cov = L L^T")
        L = Md
    else:
        L = _factor(M, kind, dtype)
    return X, mean, kind, np.ascontiguousarray(L, dtype=dtype), dtype, d


def mahalanobis(X, mean, cov=None, *, VI=None, cholesky=None, squared=False):
    r"""Mahalanobis distance of each point of X to one distribution.

    ``d(x) = sqrt((x - mean)^T cov^-1 (x - mean))``

    Parameters
    ----------
    X : array_like, shape (..., d)
        Points; a single point (d,) gives a scalar.
    mean : array_like, shape (d,)
    cov : array_like, shape (d, d), optional
        The covariance (symmetric positive definite).
    VI : array_like, shape (d, d), optional
        The precision matrix, scipy's convention: ``mahalanobis(u, mean,
        VI=VI)`` equals ``scipy.spatial.distance.mahalanobis(u, mean, VI)``.
        Positive semidefinite: a singular VI (rank deficient, as a
        pseudo-inverse is) is accepted as scipy accepts it, its null
        directions costing nothing; an indefinite one is refused.
    cholesky : array_like, shape (d, d), optional
        A lower Cholesky factor L of the covariance (``cov = L L^T``).
    squared : bool, optional
        Return the squared distance (what most pipelines use).

    Give exactly one of `cov`, `VI`, `cholesky`.

    Returns
    -------
    dist : ndarray, shape (...)

    Raises
    ------
    ValueError
        For a matrix of the wrong shape, not symmetric, holding nan/inf, or
        not positive definite (naming the column where Cholesky failed; VI:
        not positive semidefinite, naming its most negative eigenvalue); also
        for a covariance singular to working precision, which often factors
        anyway: one whose correlation matrix R has ``trace(R^-1)`` (the sum
        of the variables' variance inflation factors) at or above ``1 / (32
        eps)`` of its dtype, as it is where R's smallest eigenvalue is at
        most 32 eps; never where that eigenvalue is above ``32 d eps``.
        The variables' scales play no part.  A singular covariance must be regularised:
        add a small multiple of the identity (``cov + lam * trace(cov) / d *
        I``; the message gives a lam, 100 d eps of the dtype rounded up to a
        power of 10: 1e-12 in float64 and 1e-3 in float32 for d = 16) or use
        a shrinkage estimator.

    Notes
    -----
    The matrix is factored once (Cholesky); the rows of ``X - mean`` then go
    through a triangular solve (cov, cholesky) or triangular product (VI),
    8 or 16 rows at a time in vector lanes, and their squared norms are
    summed in float64.  No explicit inverse is formed; X is read once.
    """
    X, mean, kind, L, dtype, d = _setup(X, mean, cov, VI, cholesky)
    lead = X.shape[:-1]
    n = math.prod(lead)
    Xr = np.ascontiguousarray(X, dtype=dtype).reshape(n, d)
    # a recycled block when large (_memory): no page faults on a fresh 8 MB
    # result, 3-5% of a memory-bound call at one thread
    out = _memory.empty((n,), dtype)[0]
    if n and d:
        nt = _for_macs(n * d * d)
        scratch = np.empty((max(nt, 1), _k.scratch_len(d, dtype == np.float64)), dtype)
        _k.maha(Xr, np.ascontiguousarray(mean, dtype=dtype), L, kind != "VI",
                bool(squared), out, scratch, nt)
    elif n:
        out[...] = 0
    out = out.reshape(lead)
    return out[()] if out.ndim == 0 else out


def mahalanobis_backward(grad, X, mean, cov=None, *, VI=None, cholesky=None, squared=False,
                         out=None):
    r"""Backward pass of :func:`mahalanobis`.

    Parameters
    ----------
    grad : array_like, shape (...)
        Gradient of the loss with respect to the distances.
    X, mean, cov, VI, cholesky, squared
        As given to :func:`mahalanobis`.
    out : tuple of three ndarrays, optional
        Arrays of the shapes and dtype of ``(gX, gmean, gM)`` to write the
        gradients into (checked; they may overlap the inputs).

    Returns
    -------
    gX : ndarray, shape (..., d)
    gmean : ndarray, shape (d,)
    gM : ndarray, shape (d, d)
        The gradient with respect to whichever matrix was given:

        * cov: ``-cov^-1 (sum_i a_i delta_i delta_i^T) cov^-1`` (symmetric),
          formed from ``w_i = cov^-1 delta_i`` by two triangular solves;
        * VI: ``sum_i a_i delta_i delta_i^T`` (symmetric);
        * cholesky: ``tril(-2 sum_i a_i w_i z_i^T)`` with ``z_i = L^-1 delta_i``
          (only the lower triangle is a free parameter);

        where ``a_i = grad_i`` (squared) or ``grad_i / (2 d_i)``.

    Notes
    -----
    At zero distance the plain (non-squared) distance is not differentiable;
    the zero subgradient is returned there (finite).
    """
    return store_out(_mahalanobis_backward(grad, X, mean, cov, VI, cholesky, squared), out,
                     ("gX", "gmean", "gM"))


def _mahalanobis_backward(grad, X, mean, cov, VI, cholesky, squared):
    X, mean, kind, L, dtype, d = _setup(X, mean, cov, VI, cholesky)
    lead = X.shape[:-1]
    n = math.prod(lead)
    g = as_array(grad, "grad")
    if g.shape != lead:
        raise ValueError(f"grad must have the shape of the distances {lead}, got {g.shape}")
    if kind != "VI":
        return _backward_factor(g, X, mean, kind, L, dtype, d, n, lead, squared)
    delta = np.ascontiguousarray(X, dtype=dtype).reshape(n, d) - np.asarray(mean, dtype)
    g = np.asarray(g, dtype=dtype).reshape(n)
    if kind == "VI":
        # VI's symmetric part, as the forward (symmetric_part) computes with:
        # the gradient of delta^T VI delta is (VI + VI^T) delta
        P = symmetric_part(as_array(VI, "VI"), "VI").astype(dtype)
        W = delta @ P                               # rows: VI delta_i
        d2 = np.einsum("ij,ij->i", delta, W, dtype=np.float64)
    else:
        Z = solve_triangular(L, delta.T, lower=True).T          # rows z_i = L^-1 delta_i
        W = solve_triangular(L, Z.T, lower=True, trans="T").T   # rows w_i = cov^-1 delta_i
        d2 = np.einsum("ij,ij->i", Z, Z, dtype=np.float64)
    if squared:
        a = g.astype(np.float64)
    else:
        dist = np.sqrt(np.maximum(d2, 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(dist > 0, g / (2 * dist), 0.0)
    a = a.astype(dtype)
    gX = (2 * a)[:, None] * W
    gmean = -gX.sum(axis=0, dtype=np.float64)     # in double, as the fused path
    if kind == "VI":
        gM = (delta * a[:, None]).T @ delta
    elif kind == "cov":
        gM = -(W * a[:, None]).T @ W
    else:
        gM = np.tril(-2 * (W * a[:, None]).T @ Z)
    if kind != "cholesky":
        gM = (gM + gM.T) / 2          # symmetric to the last bit
    return gX.reshape(lead + (d,)), gmean.astype(dtype), gM.astype(dtype)


def _backward_factor(g, X, mean, kind, L, dtype, d, n, lead, squared):
    """cov / cholesky: one fused pass (src/fl_mahal_tpl.h, fl_maha_bwd_rows)."""
    Xr = np.ascontiguousarray(X, dtype=dtype).reshape(n, d)
    gr = np.ascontiguousarray(g, dtype=dtype).reshape(n)
    gX = _memory.empty((n, d), dtype)[0]
    # blocks of bs rows, each leaving a d x d partial: at least 256 rows (for
    # large d, about 1 MiB of rows of w, kept in cache for the block's GEMM),
    # and few enough blocks that the partials stay under 2^24 doubles (128 MiB)
    fused = d <= _FUSED_MAX_D
    bs = 256 if fused else max(256, (1 << 20) // max(d * dtype.itemsize, 1))
    bs = max(bs, -(-n * d * d // (1 << 24)))
    bs = -(-bs // 256) * 256
    nblocks = max(-(-n // bs), 1)
    # small d: the d x d sums are accumulated in the pass; large d: each
    # block's rows of w (z) go to per-thread scratch and one GEMM per block
    # forms its partial sum_i a_i w_i r_i^T = (gX_b^T @ R_b) / 2 (gX_i = 2 a_i w_i)
    gm = np.zeros((nblocks, d, d) if fused else (1, 1, 1))
    gmv = np.zeros((nblocks, d))     # per block: sum of its rows of gX, in double
    parts = None if fused else np.zeros((nblocks, d, d), dtype)
    if n and d:
        nt = _for_macs(n * d * d)
        k = max(nt, 1)
        wscr = None if fused else np.empty((k, bs * d), dtype)
        zscr = None if fused or kind != "cholesky" else np.empty((k, bs * d), dtype)
        with blas_single_thread():
            _k.maha_bwd(Xr, np.ascontiguousarray(mean, dtype=dtype), L, gr, bool(squared),
                        kind == "cholesky", gX, gm, gmv, np.empty((k, 16 * d)),
                        np.empty((k, 17 * d), dtype),
                        np.empty((k, 16 * d), dtype),
                        np.empty((k, 16 * d * d if fused else 1), dtype), bs, nt, parts,
                        wscr, zscr)
    # block partials, added in block order
    if fused:
        G = gm.sum(axis=0)             # the lower triangle (the kernel's k <= j)
        if kind == "cov":
            G = G + np.tril(G, -1).T   # w w^T is symmetric: mirrored
    else:
        G = parts.sum(axis=0, dtype=np.float64) / 2
    if kind == "cov":
        gM = -G
        gM = (gM + gM.T) / 2    # symmetric to the last bit
    else:
        gM = np.tril(-2 * G)
    gmean = -gmv.sum(axis=0)
    return gX.reshape(lead + (d,)), gmean.astype(dtype), gM.astype(dtype)
