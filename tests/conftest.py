"""Shared fixtures: embedded clusters that always clean up, and leak checks."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

import taskmesh
from taskmesh._secret import write_secret_file

# tests/support asserts too: pytest explains its failures as it does the tests' own
pytest.register_assert_rewrite("tests.support")

from .support.procs import embedded_cluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """An embedded 2-CPU cluster shared by a test module; checks nothing leaks afterwards."""
    with embedded_cluster(num_cpus=2):
        yield taskmesh


@pytest.fixture
def fresh_cluster(request):
    """A cluster just for one test; pass num_cpus with @pytest.mark.parametrize indirect or default 2."""
    with embedded_cluster(num_cpus=getattr(request, "param", 2)):
        yield taskmesh


def pytest_configure(config):
    """Every test process finds a cluster secret without touching the real home directory:
    one made for this test session ($TASKMESH_SECRET_FILE; children inherit it)."""
    if "TASKMESH_SECRET_FILE" in os.environ or "TASKMESH_SECRET" in os.environ:
        return
    path = os.path.join(tempfile.mkdtemp(prefix="taskmesh-test-secret-"), "cluster-secret")
    write_secret_file(path)
    os.environ["TASKMESH_SECRET_FILE"] = path
    config._taskmesh_secret_dir = os.path.dirname(path)


def pytest_unconfigure(config):
    directory = getattr(config, "_taskmesh_secret_dir", None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)



@pytest.fixture
def run_env(tmp_path):
    """The environment of a `taskmesh start` on this machine with a run directory of its own;
    afterwards `taskmesh stop` must succeed and leave none of its processes."""
    from taskmesh import _rundir

    from .support.cli import tm
    from .support.clients import with_support
    from .support.procs import kill_all, wait_gone

    env = with_support({**os.environ, "TASKMESH_RUN_DIR": str(tmp_path / "run")})
    yield env
    r = tm("stop", env=env)
    pids = {int(rec["pid"]) for rec in _rundir.live(env["TASKMESH_RUN_DIR"])}
    kill_all(wait_gone(pids, 5))
    assert r.returncode == 0
