"""pytest plugin: run scipy's own ``test_logsumexp.py`` against fastlin.

Loaded with ``-p _scipy_patch_plugin`` by ``tests/test_scipy_suite.py`` in a
subprocess.  Two things happen here:

* Before each test runs, the names ``softmax``, ``log_softmax`` and
  ``logsumexp`` in the test's module are replaced by (counting wrappers of)
  fastlin's.  This is done at run time, not import time, because the module's
  decorators (``make_xp_test_case(logsumexp)``) look scipy's functions up in
  scipy's capability tables while the module is imported.
* Tests on complex input are deselected: fastlin is real-only by design
  (complex dtypes raise TypeError).  The list is precise -- see
  ``complex_reason`` -- and every test on real input runs.

The terminal summary prints one line, ``FASTLIN-CALLS softmax=.. ...``, which
the outer test parses to prove that fastlin, not scipy, was exercised.
"""
import functools

import pytest

import fastlin

PATCHED = ("softmax", "log_softmax", "logsumexp")
CALLS = dict.fromkeys(PATCHED, 0)

# Tests whose whole subject is complex input or a private scipy helper.
#   test_logsumexp_complex_sign   : logsumexp of complex a (complex sign)
#   test_gh21610                  : imaginary part of complex results in (-pi, pi]
#   test_gh21709_small_imaginary  : precision of tiny imaginary parts
#   test_wrap_radians             : scipy's private _wrap_radians, no public op
WHOLE_TESTS = {
    "test_logsumexp_complex_sign",
    "test_gh21610",
    "test_gh21709_small_imaginary",
    "test_wrap_radians",
}


def complex_reason(item):
    """Why `item` is deselected, or None if it runs against fastlin.

    Besides WHOLE_TESTS, only single parametrizations go:
      test_dtypes_a[complex64|complex128]        dtype param is complex
      test_dtypes_ab[..complex..]                either dtype param is complex
      test_gh22601_infinite_elements[x, y]       x or y a complex infinity
                                                 (the 4 real (+-inf, +-inf) pairs run)
      test_device[1j]                            x_raw is complex (1.0 and [] run)
    """
    name = getattr(item, "originalname", item.name)
    if name in WHOLE_TESTS:
        return f"{name}: complex input / private helper"
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for key, value in callspec.params.items():
        if isinstance(value, complex):
            return f"{name}: complex parameter {key}={value!r}"
        if isinstance(value, str) and value.startswith("complex"):
            return f"{name}: complex dtype parameter {key}={value!r}"
    return None


def _counting(name):
    fn = getattr(fastlin, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        CALLS[name] += 1
        return fn(*args, **kwargs)
    return wrapper


WRAPPERS = {name: _counting(name) for name in PATCHED}


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        (drop if complex_reason(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    module = item.module
    for name in PATCHED:
        if name in vars(module):
            setattr(module, name, WRAPPERS[name])


def pytest_terminal_summary(terminalreporter):
    calls = " ".join(f"{k}={v}" for k, v in CALLS.items())
    terminalreporter.write_line(f"FASTLIN-CALLS {calls}")
