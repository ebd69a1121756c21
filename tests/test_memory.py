"""The cache of freed result blocks (fastlin/_memory.pyx).

A large result is carved from a block that returns to a bounded cache when
the array is freed; the next result of about its size reuses it.  These tests
check that reuse never shows stale data, that a block in use (also through a
view) is never handed out, that the limits hold, and the setter's validation.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.spatial.distance as ssd

import fastlin
from fastlin import _memory


@pytest.fixture
def cache():
    """A known limit for the test, the user's restored after it."""
    old = fastlin.set_memory_cache(1 << 30)
    fastlin.set_memory_cache(0)            # start empty
    fastlin.set_memory_cache(1 << 30)
    yield
    fastlin.set_memory_cache(old)


def _ptr(a):
    return a.__array_interface__["data"][0]


def _points(seed, m, n=8):
    return np.random.default_rng(seed).standard_normal((m, n))


def test_freed_result_is_reused_without_stale_data(cache):
    A, B = _points(0, 1200), _points(1, 1100)        # 10.6 MB result
    first = fastlin.cdist(A, B)
    p = _ptr(first)
    del first
    assert fastlin.get_memory_cache()[2] == 1
    C, D = _points(2, 1200), _points(3, 1100)
    second = fastlin.cdist(C, D)
    assert _ptr(second) == p                          # the same block again
    assert fastlin.get_memory_cache()[2] == 0
    np.testing.assert_allclose(second, ssd.cdist(C, D), rtol=1e-13, atol=0)


def test_block_in_use_through_a_view_is_not_reused(cache):
    A, B = _points(4, 1200), _points(5, 1100)
    full = fastlin.cdist(A, B)
    view = full[100:110]
    expected = view.copy()
    del full                                          # the view keeps the block
    assert fastlin.get_memory_cache()[2] == 0
    other = fastlin.cdist(_points(6, 1200), _points(7, 1100))
    assert not np.shares_memory(other, view)
    np.testing.assert_array_equal(view, expected)
    del view
    assert fastlin.get_memory_cache()[2] == 1


def test_small_request_does_not_take_a_much_larger_block(cache):
    big = fastlin.cdist(_points(8, 2000), _points(9, 2000))      # 32 MB
    del big
    small = fastlin.cdist(_points(10, 1000), _points(11, 600))   # 4.8 MB
    assert fastlin.get_memory_cache()[2] == 1                     # big one still kept
    assert small.shape == (1000, 600)


def test_limit_bounds_what_is_kept(cache):
    a = fastlin.cdist(_points(12, 1200), _points(13, 1100))
    b = fastlin.cdist(_points(14, 1200), _points(15, 1100))
    del a
    block = fastlin.get_memory_cache()[1]               # one block's bytes
    assert block >= 1200 * 1100 * 8
    fastlin.set_memory_cache(block + (1 << 20))        # room for one block only
    del b
    limit, kept, n = fastlin.get_memory_cache()
    assert n == 1 and kept <= limit
    fastlin.set_memory_cache(0)                         # frees all, turns it off
    assert fastlin.get_memory_cache() == (0, 0, 0)
    c = fastlin.cdist(_points(16, 1200), _points(17, 1100))
    del c
    assert fastlin.get_memory_cache() == (0, 0, 0)


def test_repeated_calls_do_not_grow_the_cache(cache):
    A, B = _points(18, 1200), _points(19, 1100)
    for _ in range(20):
        fastlin.cdist(A, B)
    assert fastlin.get_memory_cache()[2] == 1


def test_margin_backward_on_a_reused_block(cache):
    rng = np.random.default_rng(20)
    pos, neg = rng.standard_normal(40000), rng.standard_normal((40000, 32))
    stale = fastlin.cdist(_points(21, 1200), _points(22, 1000))   # fill a block
    stale.fill(np.nan)
    del stale
    assert fastlin.get_memory_cache()[2] == 1
    gp, gn = fastlin.max_margin_loss_backward(1.0, pos, neg)
    assert fastlin.get_memory_cache()[2] == 0                  # gn took the NaN block
    rn = ((1.0 - pos[:, None] + neg) > 0).astype(np.float64)   # d sum(loss) / d neg
    np.testing.assert_array_equal(gn, rn)
    np.testing.assert_array_equal(gp, -rn.sum(axis=1))          # integer sums: exact


def test_concurrent_calls_get_distinct_blocks(cache):
    inputs = [(_points(30 + i, 1100), _points(40 + i, 1000)) for i in range(6)]

    def run(ab):
        return fastlin.cdist(*ab)

    with ThreadPoolExecutor(3) as ex:
        for _ in range(3):
            results = list(ex.map(run, inputs))
            assert len({_ptr(r) for r in results}) == len(results)   # six live blocks
            for (a, b), r in zip(inputs, results):
                np.testing.assert_allclose(r, ssd.cdist(a, b), rtol=1e-13, atol=0)
            del results


def test_results_are_ordinary_writable_arrays(cache):
    r = fastlin.cdist(_points(50, 1200), _points(51, 1100))
    assert r.flags.c_contiguous and r.flags.writeable and r.dtype == np.float64
    assert r.ctypes.data % 64 == 0
    r[0, 0] = -1.0
    assert r[0, 0] == -1.0


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1.5, TypeError), ("1", TypeError),
                                      (True, TypeError)])
def test_set_memory_cache_validation(bad, exc):
    with pytest.raises(exc, match="nbytes"):
        fastlin.set_memory_cache(bad)


def test_small_results_bypass_the_cache(cache):
    r, fresh = _memory.empty((10, 10), np.float64)
    assert fresh and r.base is None


MiB = 1 << 20


def test_oldest_block_goes_first(cache):
    fastlin.set_memory_cache(100 * MiB)
    arrays = [_memory.empty(s * MiB, np.uint8)[0] for s in (12, 14, 16, 18, 20)]
    while arrays:                                 # freed in this order: 80 MiB kept
        arrays.pop(0)
    assert fastlin.get_memory_cache()[1:] == (80 * MiB, 5)
    big = _memory.empty(30 * MiB, np.uint8)[0]
    del big                                       # 110 > 100: the 12 MiB block goes
    assert fastlin.get_memory_cache()[1:] == (98 * MiB, 5)


def test_at_most_sixteen_blocks(cache):
    arrays = [_memory.empty(5 * MiB, np.uint8)[0] for _ in range(17)]
    del arrays
    assert fastlin.get_memory_cache()[2] == 16


@pytest.mark.parametrize("request_mib, reused", [(30, True), (21, True), (20, False)])
def test_size_window_of_reuse(cache, request_mib, reused):
    a = _memory.empty(30 * MiB, np.uint8)[0]
    del a
    b, fresh = _memory.empty(request_mib * MiB, np.uint8)
    assert fresh is not reused and b.nbytes == request_mib * MiB


def test_same_shape_ops_reuse_their_results(cache):
    x = np.random.default_rng(60).standard_normal((1024, 1024))      # 8 MB
    first = fastlin.softmax(x, axis=-1)
    p = _ptr(first)
    del first
    second = fastlin.softmax(x, axis=-1)
    assert _ptr(second) == p
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(second, e / e.sum(axis=-1, keepdims=True), rtol=1e-13)


def test_results_do_not_own_their_memory(cache):
    r = fastlin.cdist(_points(61, 1200), _points(62, 1100))
    assert not r.flags.owndata
    with pytest.raises(ValueError, match="does not own its data"):
        r.resize((10, 10))
    np.resize(r, (10, 10))                        # the copying resize still works


def test_absurd_sizes_are_numpys_errors(cache):
    before = fastlin.get_memory_cache()
    with pytest.raises((ValueError, MemoryError)):
        _memory.empty((2 ** 61 - 1,), np.float64)
    assert fastlin.get_memory_cache() == before


def test_limit_from_the_environment(tmp_path):
    import os
    import subprocess
    import sys
    code = "import fastlin; print(fastlin.get_memory_cache()[0])"
    # the fastlin these tests import (installed or built in place), not a
    # source tree that happens to be the working directory
    home = os.path.dirname(os.path.dirname(os.path.abspath(fastlin.__file__)))
    env = dict(os.environ, FASTLIN_MEMORY_CACHE="12345", PYTHONPATH=home)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "12345"
    env["FASTLIN_MEMORY_CACHE"] = "lots"
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env,
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == str(1 << 30) and "FASTLIN_MEMORY_CACHE" in out.stderr
