"""The cache of freed result blocks (fastlin/_memory.pyx).

A large result is carved from a block that returns to a bounded cache when
the array is freed; the next result of about its size reuses it.  These tests
check that reuse never shows stale data, that a block in use (also through a
view) is never handed out, that the limits hold, and the setter's validation.
"""
import gc
import os
import threading
import time
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


# ------------------------------------------------- memory given back to the OS

def _rss_mib():
    """Resident set size of this process, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="reads the RSS from /proc")


@pytest.fixture
def short_decay(cache):
    old = _memory._set_decay(0.5)
    yield 0.5
    _memory._set_decay(old)


def _wait_for(cond, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_default_decay_is_ten_seconds():
    assert _memory.DECAY_SECONDS == 10.0


@linux_only
def test_kept_blocks_go_back_to_the_os_after_the_decay(short_decay):
    A = _points(60, 3000, 16)
    gc.collect()
    before = _rss_mib()
    for _ in range(4):
        d = fastlin.cdist(A, A)          # 72 MB each, freed at once
        del d
    limit, kept, n = fastlin.get_memory_cache()
    assert n >= 1 and kept >= 72e6
    assert _rss_mib() - before > 60      # the kept block is resident
    # no fastlin call from here on: the decay thread alone gives it back
    assert _wait_for(lambda: fastlin.get_memory_cache()[2] == 0, 10 * short_decay)
    assert _rss_mib() - before < 4


def test_a_loop_within_the_decay_keeps_reusing_its_block(cache):
    A = _points(61, 1200)
    p = _ptr(fastlin.cdist(A, A))
    for _ in range(3):
        time.sleep(0.2)                  # far below the 10 s decay
        r = fastlin.cdist(A, A)
        assert _ptr(r) == p
        del r


@linux_only
def test_a_process_that_stops_calling_gets_its_memory_back(tmp_path):
    # the real default decay, in a fresh process that never calls fastlin again
    import subprocess
    import sys
    code = (
        "import time, numpy as np, fastlin\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
        "A = np.random.default_rng(0).standard_normal((4000, 16))\n"
        "b = rss()\n"
        "for _ in range(3):\n"
        "    d = fastlin.cdist(A, A); del d\n"
        "k = rss() - b\n"
        "time.sleep(12)\n"
        "print(k, rss() - b, fastlin.get_memory_cache()[2])\n"
    )
    home = os.path.dirname(os.path.dirname(os.path.abspath(fastlin.__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=home))
    assert r.returncode == 0, r.stderr
    kept, after, n = r.stdout.split()
    assert float(kept) > 100 and float(after) < 4 and int(n) == 0, r.stdout


def test_many_threads_allocating_and_freeing_at_once(cache):
    # the bookkeeping has its own lock: many threads taking and giving back
    # blocks at once never share a block, lose one or break the limits
    A = _points(62, 800)                 # 5.1 MB results
    errors = []

    def worker(seed):
        try:
            rng = np.random.default_rng(seed)
            for _ in range(40):
                rs = [fastlin.cdist(A[: rng.integers(700, 800)], A) for _ in range(3)]
                assert len({_ptr(r) for r in rs}) == 3
                for r in rs:
                    r[...] = seed                      # a block is nobody else's
                for r in rs:
                    assert np.all(r == seed)
                del rs
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    limit, kept, n = fastlin.get_memory_cache()
    assert 0 <= n <= 16 and kept <= limit
    fastlin.set_memory_cache(0)
    assert fastlin.get_memory_cache()[1:] == (0, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_forked_child_starts_with_an_empty_cache(short_decay):
    import multiprocessing
    A = _points(63, 1200)
    held = fastlin.cdist(A, A)           # in use across the fork
    d = fastlin.cdist(A, A)
    del d                                # kept
    assert fastlin.get_memory_cache()[2] == 1

    def child(q):
        q.put((fastlin.get_memory_cache()[2], fastlin.cdist(A, A)[0, 1]))

    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    try:
        n0, d01 = q.get(timeout=60)
    finally:
        p.join(30)
    assert n0 == 0                       # nothing kept in the child
    assert d01 == held[0, 1]
    np.testing.assert_allclose(held, ssd.cdist(A, A), rtol=1e-13, atol=1e-13)
