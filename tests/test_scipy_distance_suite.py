"""scipy's own tests of cdist, pdist and squareform, run against fastlin.

fastlin's cdist/pdist/squareform promise to be drop-ins for scipy's on the
metrics euclidean, sqeuclidean, cosine and mahalanobis, so scipy's test file
(``scipy/spatial/tests/test_distance.py``, shipped with scipy) is the outside
judge.  It runs in a subprocess with the plugin
``tests/_scipy_distance_plugin.py``, which swaps fastlin's functions into the
test module just before each test runs, keeps scipy's Python reference path as
the judge, and gives every collected test a verdict: run, strict xfail (a
fastlin bug) or deselect (another metric, no fastlin function called, a
callable metric, or the documented float32 deviation).  The plugin's
docstring lists them and why.

Every selected test must pass, and every known bug must still fail.
"""

import re

import _scipy_runner as _runner
from _scipy_runner import counts, fastlin_calls

SUITE = "scipy.spatial.tests.test_distance"
SUPPORTED = ("euclidean", "sqeuclidean", "cosine", "mahalanobis")
OTHER_METRICS = ("braycurtis", "canberra", "chebyshev", "cityblock", "correlation", "dice",
                 "hamming", "jaccard", "jensenshannon", "minkowski", "rogerstanimoto",
                 "russellrao", "seuclidean", "sokalsneath", "yule")


def run_suite(tmp_path, *args):
    return _runner.run_suite(tmp_path, SUITE, "_scipy_distance_plugin", *args)


def test_scipy_distance_suite_on_fastlin(tmp_path):
    proc, out = run_suite(tmp_path, "-rfEX")
    assert proc.returncode == 0, out
    c = counts(out)
    for bad in ("failed", "error", "errors", "xpassed"):
        assert c.get(bad, 0) == 0, out
    # scipy 1.17.1: 70 passed, 1 skipped (scipy's own skip of
    # test_Xdist_non_negative_weights[mahalanobis]), 386 deselected
    assert c.get("passed", 0) >= 66, out
    # strict xfails would be known fastlin bugs (plugin BUGS): none left
    assert c.get("xfailed", 0) == len(__import__("_scipy_distance_plugin").BUGS), out
    calls = fastlin_calls(out)
    assert all(calls[name] > 0 for name in ("cdist", "pdist", "squareform")), out
    # fastlin was judged against scipy's reference path too (test_<metric> / callables)
    assert calls["scipy_reference"] > 0, out


def test_distance_plugin_keeps_only_supported_metrics(tmp_path):
    """Kept tests are of the four supported metrics (or metric-free squareform /
    checker tests); every other metric's parametrization is deselected."""
    proc, out = run_suite(tmp_path, "--collect-only")
    assert proc.returncode == 0, out
    # node ids only (newer pytest also prints indented warnings naming tests)
    kept = [line for line in out.splitlines() if "::" in line and not line[:1].isspace()]
    assert len(kept) >= 60, out
    for node in kept:
        params = re.findall(r"\[(.*)\]", node)
        if params:
            assert params[0] in SUPPORTED, node
        name = node.split("::")[-1].split("[")[0]
        assert not any(m in name for m in OTHER_METRICS), node
        assert "_nonC" not in name and "custom" not in name, node
    # each supported metric keeps its fixture-parametrized tests
    for m in SUPPORTED:
        assert sum(node.endswith(f"[{m}]") for node in kept) >= 7, (m, out)
    for name in ("test_squareform_matrix", "test_squareform_vector",
                 "test_squareform_multi_matrix", "test_pdist_cosine_bounds",
                 "test_cdist_euclidean_random_unicode"):
        assert any(node.endswith(name) for node in kept), (name, out)
