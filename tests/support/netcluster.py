"""Emulated hosts for the multi-host tests, and taskmesh started on them.

netcluster (``../shared/netcluster``, next to this repository) gives each host its own network
namespace and IP; the hosts share this machine's filesystem, /dev/shm and pids. A test starts
a head and node agents with the CLI (:func:`start_head`, :func:`join_node`) and runs driver
scripts on a host (:func:`driver`, read with :func:`expect`); every command on the hosts can
import ``tests.support``. Between tests :meth:`Hosts.reset` kills everything on the hosts and
removes what the node agents killed there left: their arenas in /dev/shm, their spill
directories.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from taskmesh import _rundir
from taskmesh._launch import remove_agent_leftovers
from taskmesh._transport import pid_alive

from .clients import REPO, with_support
from .wait import until

NETCLUSTER = os.environ.get("NETCLUSTER") or str(REPO.parent / "shared" / "netcluster")


class Hosts:
    """Run commands on emulated hosts; kill everything on them between tests."""

    def __init__(self, prefix: str, n: int) -> None:
        self.env = with_support({**os.environ, "NETCLUSTER_PREFIX": prefix})
        self.names = [f"{prefix}-h{i}" for i in range(n)]
        self.procs: list[subprocess.Popen] = []
        self.agents: list[tuple[int, str]] = []  # (pid, node id) of the node agents started

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

    def taskmesh(self, i: int, *args: str, run_dir: str, env: dict | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        """The ``taskmesh`` command on host i, with its run directory ``run_dir``."""
        r = self.run(i, sys.executable, "-m", "taskmesh._cli", *args,
                     env={**(env or {}), "TASKMESH_RUN_DIR": run_dir}, timeout=timeout)
        if r.returncode == 0 and args[:2] == ("start", "--worker"):
            for rec in _rundir.live(run_dir, "node"):
                if (int(rec["pid"]), rec["node_id"]) not in self.agents:
                    self.agents.append((int(rec["pid"]), rec["node_id"]))
        return r

    def agent_pids(self, i: int) -> list[int]:
        """Node agent processes in host i's network namespace."""
        r = subprocess.run(["ip", "netns", "pids", self.names[i]], capture_output=True, text=True,
                           timeout=10)
        pids = []
        for pid in r.stdout.split():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"taskmesh._node" in f.read():
                        pids.append(int(pid))
            except OSError:
                pass
        return pids

    def reset(self) -> None:
        """Stop the drivers, heal and kill every host, and remove what the killed node agents
        left behind."""
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
        try:
            self.nc("join")
            for h in self.names:
                self.nc("heal", h)
                self.nc("kill", h)
        finally:
            self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """The arenas and spill directories of the node agents started here that are dead
        (killed ones cannot clean up; only they are touched, not other runs' agents)."""
        for pid, node_id in self.agents:
            if until(lambda: not pid_alive(pid), timeout=10, check=False):
                remove_agent_leftovers(pid, node_id, "")
        self.agents.clear()


def start_head(hosts: Hosts, tmp_path: Path, port: int, env: dict | None = None) -> str:
    """A head with no workers on h0 (run directory ``tmp_path/run0``); its address."""
    head_ip = hosts.addr(0)
    r = hosts.taskmesh(0, "start", "--head", "--port", str(port), "--num-cpus", "0",
                       "--node-ip", head_ip, run_dir=str(tmp_path / "run0"), env=env)
    assert r.returncode == 0, r.stderr
    return f"{head_ip}:{port}"


def join_node(hosts: Hosts, tmp_path: Path, i: int, address: str, cpus: int = 2, *flags: str,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """A node agent on host i (run directory ``tmp_path/run<i>``) joins the head at ``address``."""
    r = hosts.taskmesh(i, "start", "--worker", "--address", address, "--num-cpus", str(cpus),
                       *flags, run_dir=str(tmp_path / f"run{i}"), env=env)
    assert r.returncode == 0, r.stderr
    return r


def driver(hosts: Hosts, tmp_path: Path, code: str, *args: str, host: int = 3,
           name: str = "driver.py") -> subprocess.Popen:
    """Run ``code`` as a script on a host (pipes for stdin, stdout and stderr); the hosts'
    reset stops it."""
    script = tmp_path / name
    script.write_text(code)
    proc = subprocess.Popen([NETCLUSTER, "exec", hosts.names[host], sys.executable, str(script),
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=hosts.env)
    hosts.procs.append(proc)
    return proc


def expect(proc: subprocess.Popen, tag: str):  # type: ignore[no-untyped-def]
    """The JSON value of the driver's next line, which must be ``<tag> <json>``."""
    line = proc.stdout.readline()
    if not line.startswith(tag + " "):
        proc.kill()
        raise AssertionError(f"expected {tag}, got {line!r}; stderr: {proc.stderr.read()}")
    return json.loads(line.split(" ", 1)[1])
