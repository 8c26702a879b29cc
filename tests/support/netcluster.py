"""Emulated hosts for the multi-host tests, and taskmesh started on them.

netcluster (``../shared/netcluster``, next to this repository) gives each host its own network
namespace and IP; the hosts share this machine's filesystem, /dev/shm and pids. A test starts
a head and node agents with the CLI (:func:`start_head`, :func:`join_node`) and runs driver
scripts on a host (:func:`driver`, read with :func:`expect`); every command on the hosts can
import ``tests.support``. :class:`Hosts` also injects netcluster's faults (cut, heal, partition,
kill, crash; SIGSTOP a whole host with ``signal``); the chaos suite (tests/chaos) decides
which and when. Between tests :meth:`Hosts.reset` kills everything on the hosts and removes
what the node agents killed there left: their arenas in /dev/shm, their spill directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from taskmesh._launch import remove_agent_leftovers
from taskmesh._transport import pid_alive

from .clients import REPO, with_support
from .procs import alive, cmdline
from .wait import until

NETCLUSTER = os.environ.get("NETCLUSTER") or str(REPO.parent / "shared" / "netcluster")


class Hosts:
    """Emulated hosts ``<prefix>-h0`` ...: run commands on them, break and repair their network
    and machines (netcluster's faults), and kill everything on them between tests."""

    def __init__(self, prefix: str, n: int) -> None:
        self.env = with_support({**os.environ, "NETCLUSTER_PREFIX": prefix})
        self.names = [f"{prefix}-h{i}" for i in range(n)]
        self.procs: list[subprocess.Popen] = []  # from popen(); stopped by reset()
        # (pid, node id, spill base) of the node agents started, for remove_leftovers()
        self.agents: list[tuple[int, str, str]] = []

    def nc(self, *args: str) -> str:
        r = subprocess.run([NETCLUSTER, *args], env=self.env, capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"netcluster {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def addr(self, i: int) -> str:
        return self.nc("addr", self.names[i])

    # -- commands on a host ------------------------------------------------------------------

    def cmd(self, i: int, *argv: str) -> list[str]:
        """The command line that runs ``argv`` on host i (its pid is the command's pid)."""
        return [NETCLUSTER, "exec", self.names[i], *argv]

    def run(self, i: int, *cmd: str, env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(i, *cmd), capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})})

    def popen(self, i: int, *cmd: str, env: dict | None = None, **kw: Any) -> subprocess.Popen:
        """Start ``cmd`` on host i; :meth:`reset` stops it if it still runs."""
        proc = subprocess.Popen(self.cmd(i, *cmd), env={**self.env, **(env or {})}, **kw)
        self.procs.append(proc)
        return proc

    def taskmesh(self, i: int, *args: str, run_dir: str, env: dict | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        """The ``taskmesh`` command on host i, with its run directory ``run_dir``."""
        env = {**(env or {}), "TASKMESH_RUN_DIR": run_dir}
        r = self.run(i, sys.executable, "-m", "taskmesh._cli", *args, env=env, timeout=timeout)
        if r.returncode == 0 and args[:2] == ("start", "--worker"):
            self.record_agents(r.stdout, env)
        return r

    def record_agents(self, output: str, env: dict | None = None) -> list[int]:
        """Note the node agents that ``taskmesh start --worker`` printed as joined (``env``: the
        command's, for its spill directory), so that :meth:`remove_leftovers` can clean up
        after them; their pids."""
        spill = (env or {}).get("TASKMESH_SPILL_DIR", "")
        pids = []
        for node_id, pid in _JOINED.findall(output):
            self.agents.append((int(pid), node_id, spill))
            pids.append(int(pid))
        return pids

    # -- processes on a host -----------------------------------------------------------------

    def pids(self, i: int) -> list[int]:
        """Every process in host i's network namespace."""
        r = subprocess.run(["ip", "netns", "pids", self.names[i]], capture_output=True, text=True,
                           timeout=10)
        return [int(p) for p in r.stdout.split()]

    def processes(self, i: int, needle: str) -> list[int]:
        """Live processes in host i whose command line contains ``needle``, by pid."""
        return sorted(pid for pid in self.pids(i) if alive(pid) and needle in cmdline(pid))

    def agent_pids(self, i: int) -> list[int]:
        """Node agent processes in host i's network namespace."""
        return self.processes(i, "taskmesh._node")

    def signal(self, i: int, sig: int) -> None:
        """Send ``sig`` to every process on host i (SIGSTOP: a frozen machine)."""
        for pid in self.pids(i):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    # -- faults (docs: ../shared/netcluster.md, "What the other side sees") ----------------------

    def cut(self, i: int) -> None:
        """Host i's switch port down: its processes run on, its packets are dropped."""
        self.nc("cut", self.names[i])

    def heal(self, i: int) -> None:
        self.nc("heal", self.names[i])

    def partition(self, *groups: list[int]) -> None:
        """Split the network into ``groups`` of host indices (hosts named in none form one more)."""
        self.nc("partition", *(",".join(self.names[i] for i in g) for g in groups))

    def join(self) -> None:
        """Undo :meth:`partition`."""
        self.nc("join")

    def kill(self, i: int) -> None:
        """SIGKILL every process on host i (a process crash: peers see their sockets close)."""
        self.nc("kill", self.names[i])

    def crash(self, i: int) -> None:
        """A machine crash: cut, kill everything, a fresh network stack; cut until :meth:`heal`."""
        self.nc("crash", self.names[i])

    # -- between tests -----------------------------------------------------------------------

    def reset(self) -> None:
        """Stop the processes started here, heal and kill every host, and remove what the killed
        node agents left behind."""
        try:
            self.kill_everything()
        finally:
            self.remove_leftovers()

    def kill_everything(self) -> None:
        """Stop the processes started with :meth:`popen`, join the network, heal and kill every
        host (what the agents leave stays: see :meth:`remove_leftovers`)."""
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
        self.join()
        for i in range(len(self.names)):
            self.heal(i)
            self.kill(i)

    def remove_leftovers(self) -> None:
        """The arenas and spill directories of the node agents started here that are dead
        (killed ones cannot clean up; only they are touched, not other runs' agents)."""
        for pid, node_id, spill in self.agents:
            if until(lambda: not pid_alive(pid), timeout=10, check=False):
                remove_agent_leftovers(pid, node_id, spill)
        self.agents.clear()


@contextlib.contextmanager
def hosts_up(prefix: str, n: int) -> Iterator[Hosts]:
    """``n`` hosts named ``<prefix>-h<i>`` for a test session (a prefix unique per pytest
    process keeps sessions apart), reset and taken down at the end; skips the tests if this
    machine cannot run netcluster (root and network namespaces)."""
    if os.geteuid() != 0 or not os.path.exists(NETCLUSTER):
        pytest.skip("netcluster needs root and ../shared/netcluster")
    if subprocess.run([NETCLUSTER, "check"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("this machine cannot run netcluster (network namespaces)")
    hosts = Hosts(prefix, n)
    hosts.nc("up", str(n))
    try:
        yield hosts
    finally:
        try:
            hosts.reset()
        finally:
            subprocess.run([NETCLUSTER, "down"], env=hosts.env, capture_output=True, timeout=60)


#: the line of ``taskmesh start --worker`` that names the agent that joined (node id, pid)
_JOINED = re.compile(r"taskmesh node (\S+) \(.*?\bpid (\d+)\) joined")


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
    return hosts.popen(host, sys.executable, str(script), *args, stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def expect(proc: subprocess.Popen, tag: str):  # type: ignore[no-untyped-def]
    """The JSON value of the driver's next line, which must be ``<tag> <json>``."""
    line = proc.stdout.readline()
    if not line.startswith(tag + " "):
        proc.kill()
        raise AssertionError(f"expected {tag}, got {line!r}; stderr: {proc.stderr.read()[-3000:]}")
    return json.loads(line.split(" ", 1)[1])
