"""fastlin's OpenMP runtime waits passively (fastlin/_omp_env.py) without
leaving anything in the environment, and a user's own setting wins."""
import os
import subprocess
import sys

import fastlin

CODE = ("import os, fastlin\n"
        "print(fastlin._omp_env.WAIT_POLICY)\n"
        "print(os.environ.get('OMP_WAIT_POLICY', '-'))\n")


def _run(env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env.update(env_extra)
    home = os.path.dirname(os.path.dirname(os.path.abspath(fastlin.__file__)))
    env["PYTHONPATH"] = home
    r = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_passive_by_default_and_the_environment_left_as_it_was(tmp_path):
    assert _run({}, tmp_path) == ["passive", "-"]


def test_a_users_setting_wins(tmp_path):
    assert _run({"OMP_WAIT_POLICY": "ACTIVE"}, tmp_path) == ["user's", "ACTIVE"]
    assert _run({"GOMP_SPINCOUNT": "1000"}, tmp_path)[:2] == ["user's", "-"]
