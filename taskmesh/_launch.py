"""Starting head and node-agent processes: for an embedded cluster, or as CLI daemons.

Each daemon reports on a "ready pipe" one line, ``READY ...`` or ``ERROR reason``, so the
starter can wait for it with a deadline and show the reason when it fails. An embedded cluster's
processes also hold the read end of a lifeline pipe whose write end only the driver holds: when
the driver exits, however it exits, they see EOF and shut down (the node agent takes its workers
with it), so nothing outlives the notebook or script that started it.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import dataclasses
import time
from dataclasses import dataclass

import psutil

from ._context import CTX
from ._secret import ClusterKey, Security
from ._transport import free_port, is_local_address
from .config import Config
from .errors import HeadConnectionError


class StartError(RuntimeError):
    """A daemon could not start; the message is one line for a person."""


def spawn(
    module: str,
    args: list[str],
    config: Config,
    *,
    lifeline_fd: int | None = None,
    log_file: str | None = None,
    detach: bool = False,
    secret_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, int]:
    """Start ``python -m module args``; return (process, read end of its ready pipe)."""
    ready_r, ready_w = os.pipe()
    fds = [ready_w]
    cmd = [sys.executable, "-m", module, *args, "--ready-fd", str(ready_w)]
    if lifeline_fd is not None:
        cmd += ["--lifeline-fd", str(lifeline_fd)]
        fds.append(lifeline_fd)
    if log_file:
        cmd += ["--log-file", log_file]
    env = dict(os.environ)
    env.update(config.to_env())
    env.update(secret_env or {})
    if not detach:
        # an embedded cluster's workers import what the driver can import (its modules, the
        # script's directory, test modules...), as a notebook user expects of a local cluster
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([os.getcwd(), *paths]))
    out = subprocess.DEVNULL if detach else None
    try:
        proc = subprocess.Popen(
            cmd, pass_fds=fds, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=out, start_new_session=True, close_fds=True)
    finally:
        os.close(ready_w)
    return proc, ready_r


def wait_ready(proc: subprocess.Popen, ready_r: int, what: str, timeout: float) -> str:
    """Wait for the daemon's READY line; return what follows READY, or raise StartError."""
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StartError(f"{what} did not start within {timeout:g} s")
            r, _, _ = select.select([ready_r], [], [], remaining)
            if not r:
                continue
            chunk = os.read(ready_r, 4096)
            if not chunk:
                code = proc.wait(timeout=5)
                raise StartError(f"{what} exited during start-up (exit code {code})")
            buf += chunk
    finally:
        os.close(ready_r)
    line = buf.split(b"\n", 1)[0].decode(errors="replace")
    if line.startswith("READY"):
        return line[5:].strip()
    raise StartError(line[6:] if line.startswith("ERROR ") else line)


def head_dashboard(ready: str) -> str:
    """The dashboard's ``host:port`` from what follows a head's READY (``<port> <host:port>``)."""
    parts = ready.split()
    return parts[1] if len(parts) > 1 else ""


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class EmbeddedCluster:
    """A head and one node agent on loopback, owned by this driver."""

    head: subprocess.Popen
    node: subprocess.Popen
    address: str
    lifeline_w: int
    node_id: str
    #: the cluster's one-off secret (made for it; its processes got it in their environment)
    security: Security
    #: where the head's HTTP endpoints (/metrics) listen: "127.0.0.1:PORT"
    dashboard: str = ""

    def stop(self, timeout: float = 5.0) -> None:
        try:
            os.close(self.lifeline_w)  # both daemons see EOF and shut down
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        for proc in (self.node, self.head):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stop_process(proc, 2.0)


def start_embedded(config: Config, num_cpus: int, resources_json: str = "{}",
                   num_gpus: int | None = None) -> EmbeddedCluster:
    """Start a head and a node agent with ``num_cpus`` workers on 127.0.0.1, under a secret
    made for this cluster alone (nobody else on the machine can connect to its port)."""
    security = Security(ClusterKey.generate(), config.encrypt)
    secret_env = security.key.env()
    config = dataclasses.replace(config, secret_file="")  # its processes use this one secret
    last_error: Exception | None = None
    for _attempt in range(3):  # the free port may be taken between our probe and the bind
        port = free_port()
        life_r, life_w = os.pipe()
        head, head_ready = spawn("taskmesh._head", ["--host", "127.0.0.1", "--port", str(port),
                                                    "--dashboard-port", "0",  # any free one
                                                    "--log-level", "WARNING"],
                                 config, lifeline_fd=life_r, secret_env=secret_env)
        node, node_ready = spawn("taskmesh._node", ["--head", f"127.0.0.1:{port}", "--node-ip",
                                                    "127.0.0.1", "--num-cpus", str(num_cpus),
                                                    "--resources", resources_json,
                                                    *(["--num-gpus", str(num_gpus)]
                                                      if num_gpus is not None else []),
                                                    "--log-level", "WARNING"],
                                 config, lifeline_fd=life_r, secret_env=secret_env)
        os.close(life_r)
        try:
            try:
                dashboard = head_dashboard(wait_ready(head, head_ready, "the local taskmesh head", 30))
            except StartError:
                os.close(node_ready)
                raise
            node_id = wait_ready(node, node_ready, "the local taskmesh node", 30)
            return EmbeddedCluster(head, node, f"127.0.0.1:{port}", life_w, node_id, security,
                                   dashboard)
        except StartError as exc:
            last_error = exc
            os.close(life_w)
            for proc in (node, head):
                stop_process(proc, 2.0)
            if "already in use" not in str(exc):
                break
    raise HeadConnectionError(f"could not start a local taskmesh cluster: {last_error}")


# ---------------------------------------------------------------- test clusters (cluster_utils)


def node_argv(head_address: str, num_cpus: int, resources_json: str = "{}",
              num_gpus: int | None = None, *, memory: int | None = None,
              node_id: str | None = None) -> list[str]:
    """Arguments of ``python -m taskmesh._node`` for an agent on 127.0.0.1 that joins
    ``head_address`` and logs at WARNING (to the starter's stderr)."""
    argv = ["--head", head_address, "--node-ip", "127.0.0.1", "--num-cpus", str(num_cpus),
            "--resources", resources_json, "--log-level", "WARNING"]
    if num_gpus is not None:
        argv += ["--num-gpus", str(num_gpus)]
    if memory is not None:
        argv += ["--memory", str(memory)]
    if node_id is not None:
        argv += ["--node-id", node_id]
    return argv


def process_tree(proc: subprocess.Popen) -> list[psutil.Process]:
    """The descendants of a daemon right now (a node agent's fork server and workers)."""
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return []


def stop_session(proc: subprocess.Popen, grace: float | None = None,
                 tree: list[psutil.Process] | None = None, timeout: float = 5.0) -> None:
    """Stop a daemon that ``spawn`` started, and its descendants; return when they are gone.

    With ``grace``, SIGTERM first and wait that long for a clean exit (a node agent then says
    goodbye to the head and stops its workers). Whatever is left is SIGKILLed: the daemon's
    whole session (``spawn`` makes each daemon a session leader, and its workers stay in it)
    and the descendants in ``tree`` (taken before they could be orphaned; default: now).
    """
    if tree is None:
        tree = process_tree(proc)
    if grace is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:  # not reaped, so its pid, the session's id, cannot be reused yet
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    for p in tree:
        try:
            p.kill()  # psutil checks the process is the one listed, not a reused pid
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    while tree and time.monotonic() < deadline:
        tree = [p for p in tree if _running(p)]
        if tree:
            time.sleep(0.02)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def remove_agent_leftovers(pid: int, node_id: str, spill_base: str) -> None:
    """Remove what a node agent that has exited may have left (after a SIGKILL it cannot clean
    up): its shared-memory arena and its spill directory. Both names carry its pid and node id."""
    from ._node.spill import spill_dir_path
    from ._store.shm import arena_name, unlink

    unlink(arena_name(node_id, pid))
    shutil.rmtree(spill_dir_path(spill_base, node_id, pid), ignore_errors=True)


def started_cluster_security(host: str, port: int) -> Security | None:
    """The one-off secret of a test cluster (``cluster_utils.Cluster``) that this process
    started with its head at ``host:port``, or None."""
    if not CTX.test_clusters or port not in CTX.test_clusters or not is_local_address(host):
        return None
    return CTX.test_clusters[port]
