"""How the node agent starts worker processes: forked by the zygote (``zygote.py``) when it
runs, else as fresh interpreters (``subprocess.Popen``). Either way the agent gets an object
with Popen's ``pid``, ``poll``, ``wait``, ``terminate`` and ``kill``, and watches the process
through a pidfd. The zygote is the parent of what it forks, so exit codes come from it (one
message per exit, read here on demand); if it dies, the agent starts a new one and, for the
workers it had forked, reports an unknown exit as 255.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time

from .. import _protocol as P
from .._runtime_env.apply import Ready, launch

log = logging.getLogger("taskmesh.node")

UNKNOWN_EXIT = P.EXIT_UNKNOWN


class Spawner:
    def __init__(self, env: dict[str, str], lifeline_fd: int, use_zygote: bool = True) -> None:
        self.env = env
        self.lifeline_fd = lifeline_fd
        self._sock: socket.socket | None = None
        self._zygote: subprocess.Popen | None = None
        self._exits: dict[int, int] = {}  # pid -> exit code, reported but not yet asked for
        self._children: dict[int, "ZygoteChild"] = {}
        if use_zygote:
            self._start_zygote()

    # ------------------------------------------------------------------ zygote

    def _start_zygote(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._zygote = subprocess.Popen(
                [sys.executable, "-m", "taskmesh._node.zygote", str(theirs.fileno())],
                pass_fds=(theirs.fileno(), self.lifeline_fd), env=self.env,
                stdin=subprocess.DEVNULL)
        except OSError as exc:
            log.warning("could not start the worker fork server (%s): workers start as new "
                        "interpreters", exc)
            ours.close()
            return
        finally:
            theirs.close()
        self._sock = ours

    def _zygote_gone(self) -> None:
        log.warning("the worker fork server exited: starting another")
        self._stop_zygote(1.0)
        for pid in list(self._children):  # their exits can no longer be told
            self._exits.setdefault(pid, UNKNOWN_EXIT)
        self._start_zygote()

    def _read(self, timeout_s: float) -> dict | None:
        """One message from the zygote (None on time-out); exit reports are recorded."""
        sock = self._sock
        if sock is None:
            return None
        if not select.select([sock], [], [], timeout_s)[0]:
            return None
        try:
            data = sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._zygote_gone()
            return None
        msg = json.loads(data)
        if "exited" in msg:
            self._exits[int(msg["exited"])] = int(msg["code"])
        return msg

    def fileno(self) -> int | None:
        """The fork server's socket (readable: exit reports, or its end), None without one."""
        return self._sock.fileno() if self._sock is not None else None

    def drain(self) -> None:
        """Take in what the zygote already said (exit reports), without waiting."""
        while self._sock is not None and self._read(0) is not None:
            pass

    # ------------------------------------------------------------------ spawning

    def spawn(self, argv: list[str], control_fd: int, stdout_fd: int, stderr_fd: int,
              ready: Ready | None = None) -> "subprocess.Popen | ZygoteChild":
        """Start ``python -m taskmesh._worker ARGV``; ``{control_fd}`` in ``argv`` stands for
        the worker's end of its control pipe (``control_fd`` here); its stdout and stderr are
        ``stdout_fd`` and ``stderr_fd`` (the write ends of the pipes the agent reads). A
        worker of a runtime environment (``ready``) is a new interpreter started in it
        (``apply.launch``), never a fork of the fork server, whose imports are the node's."""
        if self._sock is not None and ready is None:
            child = self._fork(argv, [control_fd, stdout_fd, stderr_fd])
            if child is not None:
                return child
        cmd = [sys.executable, "-m", "taskmesh._worker",
               *[a.replace("{control_fd}", str(control_fd)) for a in argv]]
        env, cwd = self.env, None
        if ready is not None:
            cmd, env, cwd = launch(ready, cmd, self.env)
        return subprocess.Popen(cmd, pass_fds=(self.lifeline_fd, control_fd), env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=stdout_fd, stderr=stderr_fd)

    def _fork(self, argv: list[str], fds: list[int]) -> "ZygoteChild | None":
        sock = self._sock
        assert sock is not None
        try:
            socket.send_fds(sock, [json.dumps({"argv": argv}).encode()], fds)
        except OSError:
            self._zygote_gone()
            return None
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            msg = self._read(deadline - time.monotonic())
            if msg is None and self._sock is None:
                return None  # it died on us: the caller starts an interpreter instead
            if msg is not None and "pid" in msg:
                child = ZygoteChild(self, int(msg["pid"]))
                self._children[child.pid] = child
                return child
        log.warning("the worker fork server did not answer: restarting it")
        self._zygote_gone()
        return None

    def exit_code(self, pid: int, timeout_s: float | None) -> int | None:
        """The exit code of a forked worker, waiting up to ``timeout_s`` for the report."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while pid not in self._exits:
            if self._sock is None:
                self._exits[pid] = UNKNOWN_EXIT
                break
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            self._read(min(left, 1.0))
        self._children.pop(pid, None)
        return self._exits.pop(pid)

    def close(self) -> None:
        self._stop_zygote(2.0)

    def _stop_zygote(self, timeout_s: float) -> None:
        """Close our end (the zygote exits on EOF) and reap it, killing it after ``timeout_s``."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._zygote is not None:
            try:
                self._zygote.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._zygote.kill()
                self._zygote.wait()
            self._zygote = None


class ZygoteChild:
    """A worker forked by the zygote, with the parts of Popen's interface the agent uses."""

    def __init__(self, spawner: Spawner, pid: int) -> None:
        self._spawner = spawner
        self.pid = pid
        self.returncode: int | None = None
        self.pidfd: int | None = None  # set by the agent: signals then cannot hit a reused pid

    def poll(self) -> int | None:
        if self.returncode is None:
            self._spawner.drain()
            code = self._spawner.exit_code(self.pid, 0)
            if code is not None:
                self.returncode = code
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            code = self._spawner.exit_code(self.pid, timeout)
            if code is None:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0)
            self.returncode = code
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                if self.pidfd is not None:
                    signal.pidfd_send_signal(self.pidfd, sig)
                else:
                    os.kill(self.pid, sig)
            except (ProcessLookupError, OSError):
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
