"""What must not change: results across thread counts and memory layouts,
the inputs, the GIL, memory use, the floating-point environment, and the
thread settings themselves."""
import contextvars
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest

import fastlin
from fastlin._openmp_helpers import openmp_enabled

FLOATS = (np.float32, np.float64)

OPS = ("normalize", "normalize_backward", "softmax", "softmax_backward",
       "log_softmax", "log_softmax_backward", "logsumexp", "logsumexp_weighted",
       "logsumexp_backward", "logsumexp_backward_weighted")


def make_op(name, x, axis, rng):
    """(inputs, call) for op `name` on data `x`: call(*inputs) runs it."""
    dt = x.dtype
    g = rng.standard_normal(x.shape).astype(dt)
    b = rng.uniform(-0.5, 2.0, x.shape).astype(dt)
    go = rng.standard_normal(np.shape(fastlin.logsumexp(x, axis=axis))).astype(dt)
    if name == "normalize":
        return (x,), lambda x: fastlin.normalize(x, axis=axis)
    if name == "normalize_backward":
        return (g, x), lambda g, x: fastlin.normalize_backward(g, x, axis=axis)
    if name == "softmax":
        return (x,), lambda x: fastlin.softmax(x, axis=axis)
    if name == "softmax_backward":
        return ((g, fastlin.softmax(x, axis=axis)),
                lambda g, y: fastlin.softmax_backward(g, y, axis=axis))
    if name == "log_softmax":
        return (x,), lambda x: fastlin.log_softmax(x, axis=axis)
    if name == "log_softmax_backward":
        return ((g, fastlin.log_softmax(x, axis=axis)),
                lambda g, y: fastlin.log_softmax_backward(g, y, axis=axis))
    if name == "logsumexp":
        return (x,), lambda x: fastlin.logsumexp(x, axis=axis, keepdims=True)
    if name == "logsumexp_weighted":
        return (x, b), lambda x, b: fastlin.logsumexp(x, axis=axis, b=b, return_sign=True)
    if name == "logsumexp_backward":
        return (go, x), lambda go, x: fastlin.logsumexp_backward(go, x, axis=axis)
    if name == "logsumexp_backward_weighted":
        return (go, x, b), lambda go, x, b: fastlin.logsumexp_backward(go, x, axis=axis, b=b)
    raise ValueError(name)


def assert_same_bits(a, b):
    """Equal arrays (or tuples of arrays), nan and signed zeros included."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for u, v in zip(a, b):
            assert_same_bits(u, v)
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)
    assert a.tobytes() == b.tobytes()


# ------------------------------------------------------------ (a) threads

# >= 2**16 elements each, so that _for_work hands the kernel several threads:
# rows (axis=-1), column tiles (axis=0, a middle axis) and a non-adjacent
# tuple (transposed to rows).
THREAD_CASES = [((256, 512), -1), ((256, 512), 0), ((32, 64, 64), 1),
                ((16, 32, 8, 32), (0, 2))]


def test_large_inputs_get_several_threads():
    if not openmp_enabled():
        pytest.skip("built without OpenMP: one thread only")
    from fastlin._threads import _for_work
    for shape, _ in THREAD_CASES:
        with fastlin.threads(2):
            assert _for_work(int(np.prod(shape))) == 2


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape, axis", THREAD_CASES, ids=lambda v: str(v).replace(" ", ""))
@pytest.mark.parametrize("name", OPS)
def test_bitwise_identical_for_1_and_2_threads(rng, name, shape, axis, dtype):
    # magnitudes spread over several decades make any change of summation order visible
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-3, 3, shape))).astype(dtype)
    inputs, call = make_op(name, x, axis, rng)
    with fastlin.threads(1):
        one = call(*inputs)
    with fastlin.threads(2):
        two = call(*inputs)
    assert_same_bits(one, two)


# ------------------------------------------------------------ (b) layouts


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [-1, 0, 1, (0, 2), None])
@pytest.mark.parametrize("name", OPS)
def test_layout_does_not_change_results(rng, layout, name, axis, dtype):
    x = (rng.standard_normal((6, 7, 8)) * 3).astype(dtype)
    inputs, call = make_op(name, x, axis, rng)
    expected = call(*inputs)
    assert_same_bits(call(*[layout(a) for a in inputs]), expected)


@pytest.mark.parametrize("name", ["normalize", "softmax", "log_softmax"])
def test_layout_of_out_does_not_change_results(rng, layout, name):
    x = rng.standard_normal((6, 7, 8))
    fn = getattr(fastlin, name)
    expected = fn(x, axis=1)
    out = layout(np.zeros_like(x))
    if not out.flags.writeable:
        with pytest.raises(ValueError, match="out must be writeable"):
            fn(x, axis=1, out=out)
        return
    assert fn(x, axis=1, out=out) is out
    assert_same_bits(out, expected)


# ------------------------------------------------------------ (c) inputs


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("axis", [-1, 0, (0, 2)])
@pytest.mark.parametrize("name", OPS)
def test_inputs_are_not_modified(rng, name, axis, order):
    x = rng.standard_normal((5, 6, 7)) * 3
    x[0, 0, :3] = [np.nan, np.inf, -np.inf]
    x[1, 2, 3] = -0.0
    inputs, call = make_op(name, x, axis, rng)
    inputs = [np.asarray(a, order=order) for a in inputs]
    before = [a.copy() for a in inputs]
    with np.errstate(all="ignore"):
        call(*inputs)
    for a, b in zip(inputs, before):
        assert_same_bits(a, b)


@pytest.mark.parametrize("name", ["normalize", "softmax", "log_softmax"])
@pytest.mark.parametrize("out_layout", ["C", "F"])
def test_inputs_are_not_modified_with_out(rng, name, out_layout):
    x = rng.standard_normal((5, 6, 7))
    before = x.copy()
    out = np.empty((5, 6, 7), order=out_layout)
    getattr(fastlin, name)(x, axis=1, out=out)
    assert_same_bits(x, before)


# ---------------------------------------------------------------- (d) GIL


def _spin_fraction(call, min_seconds=0.25):
    """Fraction of its free-running speed a Python counting thread keeps while
    the main thread runs `call` repeatedly: near 1 if `call` releases the GIL,
    well under 10% if it holds it (the counter then only runs in the
    switch-interval slices between calls)."""
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        while counter[0] == 0:
            time.sleep(0.001)
        # the counter's own speed while the main thread sleeps (GIL free)
        c0, t0 = counter[0], time.perf_counter()
        time.sleep(0.1)
        free_rate = (counter[0] - c0) / (time.perf_counter() - t0)

        c0, t0 = counter[0], time.perf_counter()
        while time.perf_counter() - t0 < min_seconds:
            call()
        busy_rate = (counter[0] - c0) / (time.perf_counter() - t0)
    finally:
        stop.set()
        t.join()
    return busy_rate / free_rate


@pytest.fixture(scope="module")
def big():
    return np.random.default_rng(7).standard_normal((4096, 4096))


@pytest.mark.parametrize("name", ["softmax", "normalize", "logsumexp_cols",
                                  "logsumexp_backward_weighted"])
def test_kernels_release_the_gil(big, name):
    b = np.ones(big.shape[1])
    call = {
        "softmax": lambda: fastlin.softmax(big, axis=-1),
        "normalize": lambda: fastlin.normalize(big, axis=-1),
        "logsumexp_cols": lambda: fastlin.logsumexp(big, axis=0),
        "logsumexp_backward_weighted": lambda: fastlin.logsumexp_backward(
            np.ones(big.shape[0]), big, axis=-1, b=b),
    }[name]
    # One OpenMP thread leaves the second core to the counting thread.  A
    # timing measurement on a shared machine can be unlucky: best of 3.
    fractions = []
    with fastlin.threads(1):
        call()  # warm up: first-touch page faults
        for _ in range(3):
            fractions.append(_spin_fraction(call))
            if fractions[-1] > 0.3:
                break
    assert max(fractions) > 0.3, (
        f"the counting thread kept only {max(fractions):.0%} of its speed during {name}")


# --------------------------------------------------------------- (e) leaks


def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return None


@pytest.mark.parametrize("name", OPS)
def test_repeated_calls_do_not_leak(rng, name):
    # each result is 250 kB: a leaked result per call would be 50 MB.  One
    # thread: what is measured is allocation, and a single thread keeps the
    # test quick on a busy machine.
    x = rng.standard_normal((64, 500))
    inputs, call = make_op(name, x, -1, rng)
    with fastlin.threads(1):
        for _ in range(20):
            call(*inputs)
        gc.collect()
        rss0 = _rss_bytes()
        tracemalloc.start()
        try:
            snap0, _ = tracemalloc.get_traced_memory()
            for _ in range(200):
                call(*inputs)
            gc.collect()
            snap1, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert snap1 - snap0 < 2 * 2**20, f"{(snap1 - snap0) / 2**20:.1f} MiB still traced"
    if rss0 is not None:
        grown = _rss_bytes() - rss0
        assert grown < 32 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"


# ----------------------------------------------------------- (f) FTZ / DAZ

FP_ENV_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np

    # read at run time, so that nothing below is constant-folded
    tiny = float(sys.argv[1])   # 2**-1022, the smallest normal float64

    def check(where):
        sub = tiny * 0.25
        assert sub != 0.0, "FTZ is on " + where
        assert sub * 2.0 == tiny * 0.5, "DAZ is on " + where
        assert np.all(np.float32(1e-38) * np.float32(0.01) > 0), "float32 FTZ " + where

    check("at start")
    import fastlin
    check("after import fastlin")
    n = 1 << 16
    with fastlin.threads(2):
        x = np.zeros((n, 2))
        x[:, 1] = -740.0
        y = fastlin.softmax(x, axis=1)
        x32 = np.zeros((n, 2), np.float32)
        x32[:, 1] = -100.0
        y32 = fastlin.softmax(x32, axis=1)
        fastlin.normalize(x)
        fastlin.logsumexp(x, axis=0)
    check("after running kernels")
    # the kernels themselves (on the OpenMP worker threads) keep subnormals:
    # exp(-740) ~ 4e-322 and expf(-100) ~ 3.7e-44 are subnormal
    assert np.all(y[:, 1] > 0), "float64 subnormal flushed in a kernel"
    assert np.all(y32[:, 1] > 0), "float32 subnormal flushed in a kernel"
    print("ok")
""")


def test_import_and_kernels_leave_ftz_daz_off(tmp_path):
    # cwd outside the checkout: `python -c` puts cwd first on sys.path, and the
    # checkout's fastlin/ is the uncompiled source, not the installed package
    r = subprocess.run([sys.executable, "-c", FP_ENV_SCRIPT, repr(2.0 ** -1022)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


# -------------------------------------------------------- (g) thread API


def test_get_num_threads_default_is_positive():
    n = fastlin.get_num_threads()
    assert isinstance(n, int) and n >= 1
    if not openmp_enabled():
        assert n == 1


def test_set_num_threads_roundtrip():
    default = fastlin.get_num_threads()
    fastlin.set_num_threads(3)
    assert fastlin.get_num_threads() == (3 if openmp_enabled() else 1)
    fastlin.set_num_threads(np.int64(1))
    assert fastlin.get_num_threads() == 1
    fastlin.set_num_threads(None)
    assert fastlin.get_num_threads() == default


def _usable_cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.skipif(not openmp_enabled(), reason="no OpenMP: always 1 thread")
@pytest.mark.parametrize("n", [-1, -2, -3, -1000])
def test_negative_thread_counts_follow_joblib(n):
    # joblib's n_jobs: -1 all CPUs, -2 all but one, ..., never below 1
    want = max(_usable_cpus() + 1 + n, 1)
    try:
        fastlin.set_num_threads(n)
        assert fastlin.get_num_threads() == want
        with fastlin.threads(1):
            with fastlin.threads(n):
                assert fastlin.get_num_threads() == want
    finally:
        fastlin.set_num_threads(None)


def test_threads_context_restores_previous_setting():
    default = fastlin.get_num_threads()
    expect = (lambda n: n) if openmp_enabled() else (lambda n: 1)
    with fastlin.threads(1):
        assert fastlin.get_num_threads() == 1
        with fastlin.threads(3):
            assert fastlin.get_num_threads() == expect(3)
            with fastlin.threads(None):
                assert fastlin.get_num_threads() == default
            assert fastlin.get_num_threads() == expect(3)
        assert fastlin.get_num_threads() == 1
    assert fastlin.get_num_threads() == default

    fastlin.set_num_threads(2)
    with pytest.raises(RuntimeError, match="boom"):
        with fastlin.threads(1):
            raise RuntimeError("boom")
    assert fastlin.get_num_threads() == expect(2)


def _overlap(block_a, block_b, probe):
    """Threads A and B inside the context managers block_a() and block_b(),
    overlapping without nesting: A enters, B enters, A exits, B exits.
    Returns what probe() gave each thread inside its block (A's after B
    entered, B's after A exited) and after it."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with block_a():
            a_in.set()
            b_in.wait(10)
            seen["a inside"] = probe()
        seen["a after"] = probe()
        a_out.set()

    def b():
        a_in.wait(10)
        with block_b():
            b_in.set()
            a_out.wait(10)
            seen["b inside"] = probe()
        seen["b after"] = probe()

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    return seen


def test_threads_blocks_in_overlapping_python_threads():
    """Blocks entered from two Python threads overlap without nesting (A
    enters, B enters, A exits, B exits): each thread keeps its own count,
    and nothing is left set afterwards.  (A global saved and restored gave
    A the count 3 of B's block and left 1 set for good.)"""
    default = fastlin.get_num_threads()
    expect = (lambda n: n) if openmp_enabled() else (lambda n: 1)
    seen = _overlap(lambda: fastlin.threads(1), lambda: fastlin.threads(3),
                    fastlin.get_num_threads)
    assert seen == {"a inside": 1, "b inside": expect(3), "a after": default,
                    "b after": default}
    assert fastlin.get_num_threads() == default
    # a block's count does not reach threads started inside it
    with fastlin.threads(1):
        out = []
        t = threading.Thread(target=lambda: out.append(fastlin.get_num_threads()))
        t.start()
        t.join(30)
    assert out == [default]


def test_threads_block_finished_in_another_thread():
    """A generator holding a threads() block, finished by another thread
    (a consumer thread, an executor): exiting the block there must not raise
    (ContextVar.reset refuses a token of another context).  Run in a copy
    of this context: the block stays set in the context that entered it (as
    documented), which must not leak into the other tests."""
    def gen():
        with fastlin.threads(1):
            yield fastlin.get_num_threads()
            yield fastlin.get_num_threads()

    errors = []

    def scenario():
        g = gen()
        assert next(g) == 1

        def finish():
            try:
                next(g)
                g.close()
            except Exception as e:     # pragma: no cover - the regression
                errors.append(repr(e))

        t = threading.Thread(target=finish)
        t.start()
        t.join(30)

    default = fastlin.get_num_threads()
    contextvars.copy_context().run(scenario)
    assert errors == []
    assert fastlin.get_num_threads() == default


class _FakeBlas:
    """A BLAS controller stand-in whose count is per calling thread (as MKL's
    MKL_Set_Num_Threads_Local, or an OpenMP-threaded OpenBLAS)."""
    user_api, internal_api, threading_layer = "blas", "mkl", "intel"

    def __init__(self, n):
        self.default = n
        self.local = threading.local()

    def get_num_threads(self):
        return getattr(self.local, "n", self.default)

    def set_num_threads(self, n):
        self.local.n = n


def test_blas_limit_per_thread_library(monkeypatch):
    """A BLAS whose count is per thread is limited and restored in each
    calling thread, region by region: with the shared first-in / last-out
    limit, thread A would have stayed at one thread after B restored B's
    own count, and B's region would never have been limited."""
    from fastlin import _threads
    fake = _FakeBlas(4)
    monkeypatch.setattr(_threads, "_blas_libs", ([], [fake]))
    seen = _overlap(_threads.blas_single_thread, _threads.blas_single_thread,
                    fake.get_num_threads)
    assert seen == {"a inside": 1, "b inside": 1, "a after": 4, "b after": 4}


def _blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    counts = sorted({d["num_threads"] for d in threadpoolctl.threadpool_info()
                     if d["user_api"] == "blas"})
    if not counts:
        pytest.skip("no BLAS found by threadpoolctl")
    return counts


def test_blas_limit_is_shared_by_overlapping_regions(rng):
    """fastlin limits BLAS to one thread while its kernels may call it (one
    process-wide pool): regions of several Python threads overlapping
    without nesting keep the limit until the last one exits, then restore
    what was there.  (Each region saving and restoring on its own lifted
    the limit under B's kernel when A exited, then left BLAS at 1 thread for
    the rest of the process.)"""
    from fastlin._threads import blas_single_thread
    before = _blas_threads()
    if before == [1]:
        pytest.skip("BLAS runs on one thread here: a leftover limit could not show")
    seen = _overlap(blas_single_thread, blas_single_thread, _blas_threads)
    assert seen == {"a inside": [1], "b inside": [1], "a after": [1], "b after": before}
    assert _blas_threads() == before
    # the public API from a pool of threads: BLAS is left as it was, and the
    # results are those of serial calls
    XA, XB = rng.standard_normal((600, 40)), rng.standard_normal((500, 40))
    want = fastlin.cdist(XA, XB)
    from concurrent.futures import ThreadPoolExecutor
    for _ in range(5):
        with ThreadPoolExecutor(4) as ex:
            got = list(ex.map(lambda i: fastlin.cdist(XA, XB), range(8)))
        assert all(np.array_equal(g, want) for g in got)
        assert _blas_threads() == before


def test_threads_results_inside_context(rng):
    x = rng.standard_normal((300, 300))
    with fastlin.threads(1):
        y = fastlin.softmax(x, axis=1)
    np.testing.assert_array_equal(y, fastlin.softmax(x, axis=1))


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (1.5, TypeError), (True, TypeError),
                                      ("2", TypeError), (2.0, TypeError), ([2], TypeError)])
def test_invalid_thread_counts_raise(bad, exc):
    before = fastlin.get_num_threads()
    with pytest.raises(exc, match=r"\bn must be a nonzero integer"):
        fastlin.set_num_threads(bad)
    with pytest.raises(exc, match=r"\bn must be a nonzero integer"):
        with fastlin.threads(bad):
            pass  # pragma: no cover
    assert fastlin.get_num_threads() == before


def test_omp_num_threads_is_honoured(tmp_path):
    if not openmp_enabled():
        pytest.skip("built without OpenMP: one thread only")
    code = "import fastlin; print(fastlin.get_num_threads())"
    for n in ("1", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=n)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == n
