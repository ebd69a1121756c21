"""fastlin and torch in one process, each with its own OpenMP runtime.

A wheel carries its own copy of the OpenMP runtime its compiler links: on
Linux auditwheel vendors libgomp under a hashed name, on macOS delocate
vendors Homebrew's libomp, on Windows delvewheel vendors LLVM's libomp.
torch ships its own (on Linux a libgomp of its own; an LLVM / Intel runtime
elsewhere).  Two runtimes in one process must both work, in either import
order: an LLVM or Intel runtime aborts when it initialises while another
copy is already initialised ("OMP: Error #15"), and a clash of thread pools
or thread-local state shows as wrong results or a hang.

Each case runs in a fresh interpreter (the import order is the point, and
an abort must not take pytest down), makes both libraries run threaded
kernels, one after the other and then from two Python threads at once, and
judges fastlin by numpy / scipy and torch by numpy, never by each other.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import fastlin

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch is not installed")

SCRIPT = r"""
import sys

order = sys.argv[1]
if order == "torch-first":
    import torch
    import fastlin
else:
    import fastlin
    import torch

import json
import re
import threading

import numpy as np
from scipy.spatial.distance import cdist as sp_cdist
from scipy.special import log_softmax as sp_log_softmax
from scipy.special import softmax as sp_softmax

from fastlin._openmp_helpers import openmp_enabled

rng = np.random.default_rng(20240607)
# sizes well above fastlin's one-thread cut-off (_threads.SMALL_WORK), and
# more than 16 columns for cdist so that it takes its tiled GEMM path
X = rng.standard_normal((400, 256)) * 4
A = rng.standard_normal((300, 48))
B = rng.standard_normal((200, 48))
M = rng.standard_normal((256, 256))

want_sm = sp_softmax(X, axis=1)
want_lsm = sp_log_softmax(X, axis=1)
want_cd = sp_cdist(A, B)
want_cd32 = sp_cdist(A.astype(np.float32).astype(np.float64),
                     B.astype(np.float32).astype(np.float64))
want_mm = M @ M

torch.set_num_threads(2)


def check_fastlin():
    if openmp_enabled():
        assert fastlin.get_num_threads() == 2, fastlin.get_num_threads()
    np.testing.assert_allclose(fastlin.softmax(X, axis=1), want_sm, rtol=1e-12, atol=0)
    np.testing.assert_allclose(fastlin.log_softmax(X, axis=1), want_lsm, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(fastlin.cdist(A, B), want_cd, rtol=1e-12, atol=0)
    np.testing.assert_allclose(fastlin.cdist(A.astype(np.float32), B.astype(np.float32)),
                               want_cd32, rtol=1e-5, atol=0)
    np.testing.assert_allclose(fastlin.pdist(A), sp_cdist(A, A)[np.triu_indices(len(A), 1)],
                               rtol=1e-12, atol=0)


def check_torch():
    assert torch.get_num_threads() == 2, torch.get_num_threads()
    t = torch.from_numpy(X)
    np.testing.assert_allclose(torch.softmax(t, dim=1).numpy(), want_sm, rtol=1e-12, atol=0)
    np.testing.assert_allclose(torch.cdist(torch.from_numpy(A), torch.from_numpy(B)).numpy(),
                               want_cd, rtol=1e-9, atol=0)
    tm = torch.from_numpy(M)
    np.testing.assert_allclose((tm @ tm).numpy(), want_mm, rtol=1e-10, atol=1e-10)


# one after the other, the threads set both ways fastlin offers
fastlin.set_num_threads(2)
check_fastlin()
check_torch()
fastlin.set_num_threads(None)
with fastlin.threads(2):
    check_fastlin()
check_torch()

# both thread pools busy at the same time
errors = []


def loop(fn, threaded):
    try:
        for _ in range(5):
            if threaded:
                with fastlin.threads(2):
                    fn()
            else:
                fn()
    except BaseException as e:  # reported by the parent
        errors.append(f"{fn.__name__}: {type(e).__name__}: {e}")


workers = [threading.Thread(target=loop, args=(check_fastlin, True)),
           threading.Thread(target=loop, args=(check_torch, False))]
for w in workers:
    w.start()
for w in workers:
    w.join()
assert not errors, errors

runtimes = []
if sys.platform.startswith("linux"):
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            name = path.rsplit("/", 1)[-1]
            if re.match(r"lib(gomp|omp|iomp5)\b", name) and path not in runtimes:
                runtimes.append(path)
print("COEXIST-OK " + json.dumps({"order": order, "fastlin": fastlin.__file__,
                                  "openmp": openmp_enabled(), "runtimes": runtimes}))
"""


@pytest.mark.parametrize("order", ["torch-first", "fastlin-first"])
def test_fastlin_and_torch_threaded_in_one_process(order, tmp_path):
    # the fastlin these tests import (installed or built in place), not a
    # source tree that happens to be the working directory
    home = os.path.dirname(os.path.dirname(os.path.abspath(fastlin.__file__)))
    env = dict(os.environ, PYTHONPATH=home)
    # this would silence the very abort the test looks for
    env.pop("KMP_DUPLICATE_LIB_OK", None)
    r = subprocess.run([sys.executable, "-c", SCRIPT, order], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=600)
    report = f"exit status {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.returncode == 0, report
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("COEXIST-OK ")]
    assert line, report
    info = json.loads(line[-1].split(" ", 1)[1])
    assert os.path.samefile(os.path.dirname(info["fastlin"]),
                            os.path.dirname(fastlin.__file__)), info
    print(info)
