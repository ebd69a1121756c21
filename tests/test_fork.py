"""fastlin in worker processes: forked after the parent ran threaded kernels
(where GNU OpenMP's pool would hang the child), and started by forkserver
and spawn.  A hung worker fails its test after a timeout instead of stalling
the run."""
import multiprocessing
import os

import numpy as np
import pytest
from scipy.spatial.distance import cdist as scipy_cdist

import fastlin
from fastlin import reference as ref
from fastlin._openmp_helpers import omp_max_threads, openmp_enabled

# seconds a worker may take (a spawned one imports numpy, scipy and fastlin)
TIMEOUT = 120


def _inputs():
    rng = np.random.default_rng(7)
    # every size above the thread policy's small-work limit: threaded runs
    return {
        "x": rng.standard_normal((300, 257)),
        "g": rng.standard_normal((300, 257)),
        "A": rng.standard_normal((400, 33)),
        "B": rng.standard_normal((350, 33)),
        "P": rng.standard_normal((2000, 8)),
        "pos": rng.standard_normal(3000),
        "neg": rng.standard_normal((3000, 40)),
    }


def _every_family():
    """One call of each kernel family (forward and backward) on _inputs()."""
    d = _inputs()
    x, g, A, B = d["x"], d["g"], d["A"], d["B"]
    y = fastlin.softmax(x, axis=1)
    D = fastlin.cdist(A, B)
    mu, cov = d["P"].mean(axis=0), np.cov(d["P"], rowvar=False)
    return {
        "normalize": fastlin.normalize(x),
        "normalize_backward": fastlin.normalize_backward(g, x),
        "softmax": y,
        "log_softmax": fastlin.log_softmax(x, axis=1),
        "logsumexp": fastlin.logsumexp(x, axis=1),
        "softmax_backward": fastlin.softmax_backward(g, y, axis=1),
        "cdist": D,
        "pdist": fastlin.pdist(A, "sqeuclidean"),
        "cdist_backward": np.concatenate(
            [t.ravel() for t in fastlin.cdist_backward(np.ones_like(D), A, B, dist=D)]),
        "mahalanobis": fastlin.mahalanobis(d["P"], mu, cov),
        "max_margin_loss": np.asarray(fastlin.max_margin_loss(d["pos"], d["neg"])),
        "max_margin_loss_backward": np.concatenate(
            [t.ravel() for t in fastlin.max_margin_loss_backward(1.0, d["pos"], d["neg"])]),
    }


def _check_against_twins(res):
    """The worker's results against independent twins (a few families; the
    rest are compared bitwise with the parent's)."""
    d = _inputs()
    np.testing.assert_allclose(res["softmax"], ref.softmax(d["x"], axis=1), rtol=1e-13, atol=0)
    np.testing.assert_allclose(res["normalize"], ref.normalize(d["x"]), rtol=1e-13, atol=0)
    np.testing.assert_allclose(res["cdist"], scipy_cdist(d["A"], d["B"]), rtol=1e-13, atol=0)


def _worker(conn, grandchild):
    """Runs in the worker: every family, then (optionally) the same in a
    process forked from it; sends back (threads, results, grandchild's)."""
    try:
        res = _every_family()
        _check_against_twins(res)
        sub = None
        if grandchild:
            ctx = multiprocessing.get_context("fork")
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker, args=(w, False))
            p.start()
            w.close()
            if not r.poll(TIMEOUT):
                p.kill()
                raise RuntimeError("the grandchild hung")
            sub = r.recv()
            p.join(TIMEOUT)
        conn.send(("ok", fastlin.get_num_threads(), res, sub))
    except BaseException as e:  # pragma: no cover - reported to the parent
        conn.send(("error", repr(e), None, None))
    finally:
        conn.close()


def _run_worker(method, grandchild=False):
    ctx = multiprocessing.get_context(method)
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_worker, args=(w, grandchild))
    p.start()
    w.close()
    try:
        if not r.poll(TIMEOUT):
            pytest.fail(f"a {method} worker gave no result within {TIMEOUT} s (hung)")
        status, threads, res, sub = r.recv()
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
    assert status == "ok", threads
    return threads, res, sub


def _assert_same(res, want):
    assert res.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(res[k], want[k], err_msg=k)


@pytest.fixture(scope="module")
def parent_results():
    """Every family run threaded in this process first: the state in which
    a forked child used to hang."""
    with fastlin.threads(2):
        return _every_family()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("grandchild", [False, True])
def test_forked_after_threaded_kernels(parent_results, grandchild):
    threads, res, sub = _run_worker("fork", grandchild)
    # one thread in a child forked after threaded kernels; results as the
    # parent's bitwise (they are the same for every thread count)
    assert threads == 1
    _assert_same(res, parent_results)
    if grandchild:
        g_status, g_threads, g_res, _ = sub
        assert g_status == "ok", g_threads
        assert g_threads == 1
        _assert_same(g_res, parent_results)


@pytest.mark.parametrize("method", [m for m in ("forkserver", "spawn")
                                    if m in multiprocessing.get_all_start_methods()])
def test_forkserver_and_spawn_workers(parent_results, method):
    threads, res, _ = _run_worker(method)
    # a fresh interpreter: OpenMP's default count again
    assert threads == (omp_max_threads() if openmp_enabled() else 1)
    _assert_same(res, parent_results)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_child_forked_before_any_threaded_kernel_keeps_its_threads():
    # a fresh interpreter that forks before running anything threaded: the
    # child keeps OpenMP's default count (no pool to lose)
    import subprocess
    import sys
    code = (
        "import os, multiprocessing as mp, fastlin\n"
        "def f(q): q.put(fastlin.get_num_threads())\n"
        "if __name__ == '__main__':\n"
        "    n = fastlin.get_num_threads()\n"
        "    ctx = mp.get_context('fork'); q = ctx.Queue()\n"
        "    p = ctx.Process(target=f, args=(q,)); p.start()\n"
        "    print(n, q.get(timeout=60)); p.join(60)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=TIMEOUT, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert r.returncode == 0, r.stderr
    parent_n, child_n = map(int, r.stdout.split())
    assert child_n == parent_n
