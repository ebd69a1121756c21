"""scipy's own tests of softmax, log_softmax and logsumexp, run against fastlin.

fastlin promises to be a drop-in for the scipy.special functions, so the best
outside judge is scipy's test file itself (``scipy/special/tests/
test_logsumexp.py``, shipped with scipy).  It runs in a subprocess with the
plugin ``tests/_scipy_patch_plugin.py``, which swaps fastlin's functions into
the test module just before each test runs and deselects the tests on complex
input (fastlin is real-only; the plugin's docstring lists them and why).

Every scipy test on real input must pass.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SUITE = "scipy.special.tests.test_logsumexp"


def run_suite(tmp_path, *args):
    """pytest on scipy's test module with the patch plugin, in a subprocess."""
    pytest.importorskip(SUITE, reason="this scipy install ships without its tests")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # numpy backend only: other array-API backends would bypass fastlin's numpy path
    env.pop("SCIPY_ARRAY_API", None)
    cmd = [sys.executable, "-m", "pytest", "--pyargs", SUITE,
           "-p", "_scipy_patch_plugin", "-p", "no:cacheprovider", "-q", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    return proc, proc.stdout + proc.stderr


def counts(output):
    """{'passed': n, 'failed': n, 'deselected': n, ...} from pytest's last line."""
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|deselected|error|"
                                              r"errors|skipped|xfailed|xpassed)", output)}


def fastlin_calls(output):
    m = re.search(r"FASTLIN-CALLS (.*)", output)
    assert m, "the patch plugin did not report\n" + output
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


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
