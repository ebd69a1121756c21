"""fastlin.jax: every op as a jax.custom_vjp around pure_callback.

Judges: JAX's own functions (jax.nn.softmax, jax.scipy.special.logsumexp,
...) or explicit jnp formulas of the same function, differentiated by JAX,
in float64 (jax_enable_x64); jax.test_util.check_grads (finite differences)
for the smooth ops; jit, vmap and grad compositions against the same.
"""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.scipy.special import logsumexp as jlse  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import fastlin.jax as fj  # noqa: E402


def _r(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _dist(a, b, metric="euclidean"):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return jnp.sqrt(d2) if metric == "euclidean" else d2


COV = jnp.asarray([[2.0, 0.3, 0.1], [0.3, 1.5, -0.2], [0.1, -0.2, 1.0]])

# (name, fastlin.jax call, JAX formula, inputs, finite-difference check)
CASES = [
    ("softmax", lambda x: fj.softmax(x), lambda x: jax.nn.softmax(x), lambda: (_r(4, 6),), True),
    ("softmax_axis0", lambda x: fj.softmax(x, 0), lambda x: jax.nn.softmax(x, 0),
     lambda: (_r(4, 6),), True),
    ("log_softmax", lambda x: fj.log_softmax(x, 1), lambda x: jax.nn.log_softmax(x, 1),
     lambda: (_r(3, 5, 2),), True),
    ("logsumexp", lambda x: fj.logsumexp(x, 1), lambda x: jlse(x, 1), lambda: (_r(4, 6),), True),
    ("logsumexp_all", lambda x: fj.logsumexp(x), lambda x: jlse(x), lambda: (_r(4, 6),), True),
    ("logsumexp_b", lambda x, b: fj.logsumexp(x, (0, 2), b=b, keepdims=True),
     lambda x, b: jlse(x, (0, 2), b=b, keepdims=True),
     lambda: (_r(3, 4, 5), jnp.abs(_r(3, 4, 5, seed=1)) + 0.1), True),
    ("normalize", lambda x: fj.normalize(x),
     lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True), lambda: (_r(4, 6),), True),
    ("cdist", lambda a, b: fj.cdist(a, b), lambda a, b: _dist(a, b),
     lambda: (_r(5, 3), _r(7, 3, seed=1)), True),
    ("cdist_sqeuclidean_w", lambda a, b, w: fj.cdist(a, b, "sqeuclidean", w=w),
     lambda a, b, w: (w * (a[:, None] - b[None]) ** 2).sum(-1),
     lambda: (_r(5, 3), _r(7, 3, seed=1), jnp.asarray([0.5, 1.0, 2.0])), True),
    ("pdist", lambda a: fj.pdist(a),
     lambda a: jnp.sqrt(((a[jnp.triu_indices(6, 1)[0]] - a[jnp.triu_indices(6, 1)[1]]) ** 2)
                        .sum(-1)),
     lambda: (_r(6, 3),), True),
    ("mahalanobis", lambda x, m, c: fj.mahalanobis(x, m, (c + c.T) / 2),
     lambda x, m, c: jnp.sqrt(jnp.einsum("ni,ij,nj->n", x - m,
                                         jnp.linalg.inv((c + c.T) / 2), x - m)),
     lambda: (_r(6, 3), _r(3, seed=2), COV), True),
    ("max_margin_loss", lambda p, n: fj.max_margin_loss(p, n, 0.5),
     lambda p, n: jnp.maximum(0.5 - p[:, None] + n, 0).sum(),
     lambda: (_r(4), _r(4, 5, seed=3)), False),
    ("cdist_topk", lambda a, b: fj.cdist_topk(a, b, 3)[0],
     lambda a, b: -jax.lax.top_k(-_dist(a, b), 3)[0], lambda: (_r(5, 3), _r(9, 3, seed=1)),
     False),
    ("cdist_logsumexp", lambda a, b, w: fj.cdist_logsumexp(a, b, scale=-0.5, b=w),
     lambda a, b, w: jlse(-0.5 * _dist(a, b, "sqeuclidean"), axis=1, b=w),
     lambda: (_r(5, 3), _r(9, 3, seed=1), jnp.abs(_r(9, seed=4)) + 0.1), True),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name, ours, theirs, make, fd", CASES, ids=IDS)
def test_forward_and_gradient_match_jax(name, ours, theirs, make, fd):
    args = make()
    y, want = ours(*args), theirs(*args)
    assert y.dtype == want.dtype and y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    g = _r(*y.shape, seed=11)
    argn = tuple(range(len(args)))
    got = jax.grad(lambda *a: (ours(*a) * g).sum(), argnums=argn)(*args)
    ref = jax.grad(lambda *a: (theirs(*a) * g).sum(), argnums=argn)(*args)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    # the same under jit
    jgot = jax.jit(jax.grad(lambda *a: (ours(*a) * g).sum(), argnums=argn))(*args)
    for a, b in zip(jgot, got):
        np.testing.assert_allclose(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name, ours, theirs, make, fd",
                         [c for c in CASES if c[4]], ids=[c[0] for c in CASES if c[4]])
def test_finite_differences(name, ours, theirs, make, fd):
    check_grads(ours, make(), order=1, modes=["rev"])


def test_vmap_row_ops_and_distances():
    X = _r(3, 4, 6)
    np.testing.assert_allclose(jax.vmap(fj.softmax)(X), jax.nn.softmax(X, -1), atol=1e-15)
    np.testing.assert_allclose(jax.vmap(lambda r: fj.logsumexp(r, 0))(X),
                               jlse(X, 1), atol=1e-14)
    g = jax.vmap(jax.grad(lambda r: fj.log_softmax(r, 0)[0].sum()))(X)
    want = jax.vmap(jax.grad(lambda r: jax.nn.log_softmax(r, 0)[0].sum()))(X)
    np.testing.assert_allclose(g, want, atol=1e-14)
    D = jax.vmap(lambda r: fj.cdist(r, r))(X)
    np.testing.assert_allclose(D, jax.vmap(lambda r: _dist(r, r))(X), atol=1e-14)


def test_dtypes():
    x = _r(4, 6).astype(jnp.float32)
    assert fj.softmax(x).dtype == jnp.float32
    h = x.astype(jnp.bfloat16)
    y = fj.softmax(h)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(jnp.float32), jax.nn.softmax(h.astype(jnp.float32)),
                               atol=1e-2)
    d, i = fj.cdist_topk(x, x, 2)
    assert d.dtype == jnp.float32 and i.dtype == jnp.int64
    np.testing.assert_array_equal(i[:, 0], np.arange(4))


def test_second_derivative_is_refused():
    """No second derivative: JAX refuses (forward over reverse: a custom_vjp
    has no JVP; reverse over reverse: the backward's callback has none)."""
    x = _r(4, 6)
    with pytest.raises(TypeError, match="jvp"):
        jax.hessian(lambda x: (fj.softmax(x) ** 2).sum())(x)
    with pytest.raises(ValueError, match="(?i)pure callbacks do not support JVP"):
        jax.grad(lambda x: jax.grad(lambda y: (fj.softmax(y) ** 2).sum())(x).sum())(x)
