"""netcluster hosts for multi-machine tests: one network namespace (own IP) per host.

Needs root and ../shared/netcluster (next to this repository); skipped otherwise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NETCLUSTER = os.environ.get("NETCLUSTER") or str(REPO.parent / "shared" / "netcluster")
N_HOSTS = 4


class Hosts:
    """Run commands on emulated hosts; kill everything on them between tests."""

    def __init__(self, prefix: str, n: int) -> None:
        self.env = {**os.environ, "NETCLUSTER_PREFIX": prefix}
        self.names = [f"{prefix}-h{i}" for i in range(n)]
        self.procs: list[subprocess.Popen] = []

    def nc(self, *args: str) -> str:
        r = subprocess.run([NETCLUSTER, *args], env=self.env, capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"netcluster {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def addr(self, i: int) -> str:
        return self.nc("addr", self.names[i])

    def run(self, i: int, *cmd: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([NETCLUSTER, "exec", self.names[i], *cmd], capture_output=True,
                              text=True, timeout=timeout, env={**self.env, **(env or {})})

    def taskmesh(self, i: int, *args: str, run_dir: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run(i, sys.executable, "-m", "taskmesh._cli", *args,
                        env={"TASKMESH_RUN_DIR": run_dir}, timeout=timeout)

    def reset(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        self.nc("join")
        for h in self.names:
            self.nc("heal", h)
            self.nc("kill", h)


@pytest.fixture(scope="session")
def netcluster_hosts():
    if os.geteuid() != 0 or not os.path.exists(NETCLUSTER):
        pytest.skip("netcluster needs root and ../shared/netcluster")
    if subprocess.run([NETCLUSTER, "check"], capture_output=True).returncode != 0:
        pytest.skip("this machine cannot run netcluster (network namespaces)")
    hosts = Hosts(prefix=f"t{os.getpid() % 100000}", n=N_HOSTS)
    hosts.nc("up", str(N_HOSTS))
    try:
        yield hosts
    finally:
        try:
            hosts.reset()
        finally:
            subprocess.run([NETCLUSTER, "down"], env=hosts.env, capture_output=True, timeout=60)


@pytest.fixture
def hosts(netcluster_hosts):
    yield netcluster_hosts
    netcluster_hosts.reset()
