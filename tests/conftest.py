"""Shared fixtures: embedded clusters that always clean up, and leak checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

from typing import Iterator

import psutil
import pytest
import zmq

import taskmesh
from taskmesh._context import CTX
from taskmesh._gatekeeper import secure_client
from taskmesh._secret import Security, write_secret_file

# tests/support asserts too: pytest explains its failures as it does the tests' own
pytest.register_assert_rewrite("tests.support")


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Wait until none of ``pids`` is alive; return the ones still alive."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if _alive(p)}
        if alive:
            time.sleep(0.05)
    return alive


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def _stop_and_check(procs: set[int], before_shm: set[str]) -> None:
    taskmesh.shutdown()
    left = wait_gone(procs)
    kill_all(left)
    assert not left, f"processes left after shutdown: {left}"
    assert shm_entries() - before_shm == set()


@pytest.fixture(scope="module")
def cluster():
    """An embedded 2-CPU cluster shared by a test module; checks nothing leaks afterwards."""
    before_shm = shm_entries()
    taskmesh.init(num_cpus=2)
    procs = descendants()
    try:
        yield taskmesh
    finally:
        _stop_and_check(procs, before_shm)


@pytest.fixture
def fresh_cluster(request):
    """A cluster just for one test; pass num_cpus with @pytest.mark.parametrize indirect or default 2."""
    if taskmesh.is_initialized():
        taskmesh.shutdown()
    before_shm = shm_entries()
    taskmesh.init(num_cpus=getattr(request, "param", 2))
    procs = descendants()
    try:
        yield taskmesh
    finally:
        _stop_and_check(procs, before_shm)


def run_python(code: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter (a separate driver process). It holds the
    secret of this process's embedded cluster, if there is one, as a user's second script on
    the same machine could (by $TASKMESH_SECRET)."""
    secret = CTX.cluster.security.key.env() if CTX.cluster is not None else {}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **secret, **(env or {})})


@contextlib.contextmanager
def raw_dealer(address: str, security: Security | None = None) -> Iterator[zmq.Socket]:
    """A bare ZeroMQ DEALER to a head's TCP port ("host:port"), as any program could open
    one; with ``security``, holding those credentials (secret, encryption on or off)."""
    with zmq.Context() as ctx:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if security is not None:
            secure_client(s, security)
        s.connect(f"tcp://{address}")
        try:
            yield s
        finally:
            s.close()


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

