"""Shared fixtures: a seeded generator and the memory layouts every op must accept."""
import math
import os
import sys

# The tests judge the *installed* package.  `python -m pytest` run from the
# checkout puts the checkout first on sys.path, where `fastlin/` is the
# uncompiled source; drop it so that `import fastlin` finds the install (an
# editable install still resolves to the checkout through its own finder).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastlin  # noqa: E402

# Every variant holds the same values as the C-ordered original; only the
# memory layout (strides, offset, writeability) differs.
LAYOUTS = ("C", "F", "transposed", "negative", "sliced", "readonly")


def as_layout(a, name):
    """A copy of `a` with the same values in the memory layout `name`."""
    a = np.asarray(a)
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}")
    if a.ndim == 0:
        # one element has one layout (and np.ascontiguousarray would make it 1-d)
        r = a.copy()
        r.flags.writeable = name != "readonly"
        return r
    if name == "C":
        return np.array(a, order="C")
    if name == "F":
        return np.array(a, order="F")
    if name == "transposed":
        # a transposed view of a C-ordered array of the transposed shape
        return np.ascontiguousarray(a.T).T
    if name == "negative":
        # every axis walked backwards
        return np.flip(np.flip(a).copy())
    if name == "sliced":
        # every other element of a larger buffer, at a non-zero offset
        buf = np.full(tuple(2 * s + 1 for s in a.shape), -7, dtype=a.dtype)
        view = buf[(slice(1, None, 2),) * a.ndim]
        view[...] = a
        return view
    r = a.copy()  # "readonly"
    r.flags.writeable = False
    return r


def axes_tuple(axis, ndim):
    """An op's `axis` argument (None, an int or a tuple) as non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axis = axis if isinstance(axis, tuple) else (axis,)
    return tuple(a % ndim for a in axis)


def vector_len(shape, axis):
    """How many elements one slice along `axis` holds."""
    return math.prod(shape[a] for a in axes_tuple(axis, len(shape)))


def pytest_report_header(config):
    # which fastlin is under test, so that a log shows an installed wheel
    # (.ci/wheels checks this line) and how it was built
    import io
    buf = io.StringIO()
    fastlin.show_config(file=buf)
    return [f"fastlin: {fastlin.__file__}"] + buf.getvalue().rstrip("\n").splitlines()


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)


@pytest.fixture(params=LAYOUTS)
def layout(request):
    """A function turning an array into the parametrized layout."""
    return lambda a: as_layout(a, request.param)


@pytest.fixture(autouse=True)
def _thread_small_work(monkeypatch):
    """Thread the tests' inputs: the one-thread cut-off (about 100 us of work,
    _threads.SMALL_WORK) would keep most of them on one thread, and the
    thread-count invariance tests need teams.  A policy change only: the
    results are the same for every thread count."""
    from fastlin import _threads
    monkeypatch.setattr(_threads, "SMALL_WORK", 1 << 15)


@pytest.fixture(autouse=True)
def _default_threads():
    """Leave the process-wide thread setting as each test found it (the default)."""
    yield
    fastlin.set_num_threads(None)
