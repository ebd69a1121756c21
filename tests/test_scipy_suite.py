"""scipy's own tests of softmax, log_softmax and logsumexp, run against fastlin.

fastlin promises to be a drop-in for the scipy.special functions, so the best
outside judge is scipy's test file itself (``scipy/special/tests/
test_logsumexp.py``, shipped with scipy).  It runs in a subprocess with the
plugin ``tests/_scipy_patch_plugin.py``, which swaps fastlin's functions into
the test module just before each test runs and deselects the tests on complex
input (fastlin is real-only; the plugin's docstring lists them and why).

Every scipy test on real input must pass.
"""


import _scipy_runner as _runner
from _scipy_runner import counts, fastlin_calls

SUITE = "scipy.special.tests.test_logsumexp"


def run_suite(tmp_path, *args):
    return _runner.run_suite(tmp_path, SUITE, "_scipy_patch_plugin", *args)


def test_scipy_logsumexp_suite_on_fastlin(tmp_path):
    proc, out = run_suite(tmp_path, "-rfE")
    assert proc.returncode == 0, out
    c = counts(out)
    assert c.get("failed", 0) == 0 and c.get("error", 0) == 0 and c.get("errors", 0) == 0, out
    assert c.get("passed", 0) >= 55, out          # scipy 1.17: 59 real-input tests
    calls = fastlin_calls(out)
    assert all(calls[name] > 0 for name in ("softmax", "log_softmax", "logsumexp")), out


def test_patch_plugin_deselects_only_complex_tests(tmp_path):
    """The deselected tests are exactly the complex/private-helper ones."""
    proc, out = run_suite(tmp_path, "--collect-only")
    assert proc.returncode == 0, out
    # node ids only (newer pytest also prints indented warnings naming tests)
    kept = [line for line in out.splitlines() if "::" in line and not line[:1].isspace()]
    assert kept, out
    for node in kept:
        assert "complex" not in node and "j)" not in node and "1j" not in node, node
        assert "gh21610" not in node and "gh21709" not in node, node
        assert "wrap_radians" not in node, node
    # the real infinities of gh-22601 stay
    assert sum("test_gh22601_infinite_elements" in n for n in kept) == 4, out
