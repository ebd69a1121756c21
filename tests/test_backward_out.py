"""`out=` of every backward pass: the same result as without it, written
into the caller's arrays (returned), correct when they overlap the inputs,
and refused clearly -- with nothing written -- when they do not fit."""
import numpy as np
import pytest

import fastlin


def _cases():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 7))
    g = rng.standard_normal((6, 7))
    y = fastlin.softmax(x, axis=1)
    ly = fastlin.log_softmax(x, axis=1)
    A, B = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    P = rng.standard_normal((30, 3))
    cov = np.cov(P, rowvar=False)
    pos, neg = rng.standard_normal(5), rng.standard_normal((5, 6))
    return {
        "normalize_backward": (fastlin.normalize_backward, (g, x), {"axis": 1}),
        "softmax_backward": (fastlin.softmax_backward, (g, y), {"axis": 1}),
        "log_softmax_backward": (fastlin.log_softmax_backward, (g, ly), {"axis": 1}),
        "logsumexp_backward": (fastlin.logsumexp_backward, (g[:, 0].copy(), x), {"axis": 1}),
        "cdist_backward": (fastlin.cdist_backward, (rng.standard_normal((5, 4)), A, B), {}),
        "pdist_backward": (fastlin.pdist_backward, (rng.standard_normal(10), A), {}),
        "max_margin_loss_backward": (fastlin.max_margin_loss_backward,
                                     (rng.standard_normal((5, 6)), pos, neg),
                                     {"reduction": "none"}),
        "mahalanobis_backward": (fastlin.mahalanobis_backward,
                                 (rng.standard_normal(30), P, P.mean(axis=0), cov), {}),
    }


CASES = _cases()


def _like(want):
    if isinstance(want, tuple):
        return tuple(np.full_like(w, -7.0) for w in want)
    return np.full_like(want, -7.0)


def _assert_same(got, want):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", sorted(CASES))
def test_out_gets_the_result_and_is_returned(name):
    f, args, kw = CASES[name]
    want = f(*args, **kw)
    out = _like(want)
    got = f(*args, **kw, out=out)
    assert got is out
    _assert_same(out, want)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("which", [0, 1])
def test_out_may_be_an_input(name, which):
    # the result written over grad (which=0) or the saved array (which=1),
    # where shapes and dtypes allow: as if written to a fresh array
    f, args, kw = CASES[name]
    want = f(*args, **kw)
    first = want[0] if isinstance(want, tuple) else want
    if args[which].shape != first.shape or args[which].dtype != first.dtype:
        pytest.skip("no input of the result's shape")
    args = tuple(a.copy() for a in args)
    alias = args[which]
    out = (alias,) + tuple(np.empty_like(w) for w in want[1:]) if isinstance(want, tuple) \
        else alias
    f(*args, **kw, out=out)
    _assert_same(out, want)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_out_is_refused_and_nothing_written(name):
    f, args, kw = CASES[name]
    want = f(*args, **kw)
    many = isinstance(want, tuple)
    first = want[0] if many else want
    bads = [
        (np.zeros(first.shape + (1,)), ValueError, "shape"),
        (np.zeros(first.shape, np.float32), TypeError, "dtype"),
        (first.tolist(), TypeError, "numpy.ndarray"),
    ]
    ro = np.zeros(first.shape)
    ro.flags.writeable = False
    bads.append((ro, ValueError, "writeable"))
    for bad, exc, words in bads:
        if many:
            # the other arrays are fine: none of them may be written either
            rest = tuple(np.full_like(w, -7.0) for w in want[1:])
            out = (bad,) + rest
            match = r"out\[0\] \(" + ".*" + words
        else:
            rest, out, match = (), bad, "out.*" + words
        with pytest.raises(exc, match=match):
            f(*args, **kw, out=out)
        for r in rest:
            assert np.all(r == -7.0)
    if many:
        with pytest.raises(TypeError, match=f"out must be a tuple of {len(want)} arrays"):
            f(*args, **kw, out=want[0].copy())
        with pytest.raises(TypeError, match=f"out must be a tuple of {len(want)} arrays"):
            f(*args, **kw, out=_like(want)[:-1])


def test_out_in_a_loop_allocates_no_result():
    # a training loop reusing its gradient buffers gets them back every time
    f, args, kw = CASES["softmax_backward"]
    out = np.empty_like(args[0])
    for _ in range(3):
        assert f(*args, **kw, out=out) is out
