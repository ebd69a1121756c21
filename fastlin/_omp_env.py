"""How fastlin's OpenMP threads wait: passively, unless the user says.

OpenMP runtimes keep their idle threads spinning after a parallel region
(GNU OpenMP ~300000 iterations, LLVM's 200 ms).  On a machine where another
process keeps a core busy, a spinning worker is runnable, so the scheduler
lets the other process finish its time slice before the worker runs again,
and the next region waits for it at its barrier: measured here with one core
busy, softmax of 256 x 256 float32 took 8.0 ms at 2 threads against 0.055 at
one.  A passive worker sleeps at once; woken, it preempts the busy process at
once (the scheduler favours tasks that slept): the same call 0.067 ms.  What
passive waiting costs -- the wake-up of a sleeping worker, 20-50 us a region
-- is why small problems run on one thread (_threads.SMALL_WORK).

This module runs first in ``import fastlin``: it sets OMP_WAIT_POLICY=PASSIVE
while fastlin's OpenMP runtime loads and initialises (GNU OpenMP reads it
when it loads, LLVM's at its first call, made here) and then puts the
environment back as it was, so other libraries and child processes see what
they would have.  A user's own OMP_WAIT_POLICY, GOMP_SPINCOUNT or KMP_BLOCKTIME
is left alone.  A runtime that another library loaded first keeps its own
settings (fastlin's wheels carry their own copy of the runtime).
"""
import os

_USER_SET = [k for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
             if k in os.environ]
WAIT_POLICY = "user's" if _USER_SET else "passive"

if not _USER_SET:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        from ._openmp_helpers import omp_max_threads
        omp_max_threads()           # LLVM's runtime reads its settings now
    finally:
        del os.environ["OMP_WAIT_POLICY"]
