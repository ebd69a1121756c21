"""The framework adapters (fastlin.torch, fastlin.jax, fastlin.tensorflow)
are optional: importing fastlin never imports a framework, and importing an
adapter whose framework is missing says which extra to install."""
import subprocess
import sys
import tempfile

import pytest

FRAMEWORKS = [("torch", "torch"), ("jax", "jax"), ("tensorflow", "tensorflow")]


def _run(code):
    # from outside the checkout: the installed fastlin, not the source tree
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tempfile.gettempdir())


def test_importing_fastlin_imports_no_framework():
    r = _run("import sys, fastlin\n"
             "print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("adapter, framework", FRAMEWORKS)
def test_adapter_without_its_framework_names_the_extra(adapter, framework):
    # a None entry in sys.modules makes `import framework` raise ImportError
    r = _run(f"import sys; sys.modules[{framework!r}] = None\n"
             f"import fastlin.{adapter}")
    assert r.returncode != 0
    assert "ImportError" in r.stderr
    assert f"pip install 'fastlin[{adapter}]'" in r.stderr
