"""Run one of scipy's own test modules against fastlin, in a subprocess.

The plugin named by the caller swaps fastlin's functions into the scipy test
module at run time; the subprocess keeps scipy's conftest and fixtures intact.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run_suite(tmp_path, suite, plugin, *args):
    """pytest on `suite` (a module name) with `plugin`; returns (proc, output)."""
    pytest.importorskip(suite, reason="this scipy install ships without its tests")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # numpy backend only: other array-API backends would bypass fastlin's numpy path
    env.pop("SCIPY_ARRAY_API", None)
    cmd = [sys.executable, "-m", "pytest", "--pyargs", suite,
           "-p", plugin, "-p", "no:cacheprovider", "-q", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    return proc, proc.stdout + proc.stderr


def counts(output):
    """{'passed': n, 'failed': n, 'deselected': n, ...} from pytest's last line."""
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|deselected|error|"
                                              r"errors|skipped|xfailed|xpassed)", output)}


def fastlin_calls(output):
    """The call counters the plugin prints as 'FASTLIN-CALLS name=n ...'."""
    m = re.search(r"FASTLIN-CALLS (.*)", output)
    assert m, "the patch plugin did not report\n" + output
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
