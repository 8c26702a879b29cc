"""The worker fork server: a process that imported everything a worker needs once, and forks a
new worker in about a millisecond instead of starting an interpreter (0.1-0.2 s of CPU).

    node agent ──{"argv": [...]} + control, stdout, stderr fds (SCM_RIGHTS)──▶ zygote ──fork──▶ worker
               ◀──{"pid": n}────────────────────────────────┘   (runs taskmesh._worker main)
               ◀──{"exited": pid, "code": c}── when a worker it forked ends (it is their parent)

It is started by :class:`taskmesh._node.spawner.Spawner` with the agent's environment and the
lifeline pipe, which every forked worker inherits. It stays single-threaded and opens no
sockets to the head, so forking it is safe; a worker builds its own connections after the fork.
It exits when the agent's end of its socket closes. ``python -m taskmesh._node.zygote FD``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys

from setproctitle import setproctitle

import taskmesh._worker.__main__ as worker_main  # noqa: F401 - the point: imported before forking

_MAX_MSG = 1 << 16


def _send(sock: socket.socket, msg: dict) -> None:
    try:
        sock.send(json.dumps(msg).encode())
    except OSError:
        pass  # the agent is gone: we exit at the next read


def serve(sock: socket.socket) -> int:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the select below
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            ready, _, _ = select.select([sock, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
        while True:  # reap every worker that ended, and say how
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            _send(sock, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})
        if sock not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MSG, 4)
        except OSError:
            return 0
        if not data:
            return 0  # the agent closed its end
        request = json.loads(data)
        pid = os.fork()
        if pid == 0:
            _child(sock, wake_r, wake_w, request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        _send(sock, {"pid": pid, "worker_id": request.get("worker_id", "")})


def _child(sock: socket.socket, wake_r: int, wake_w: int, request: dict, fds: list) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        os.close(wake_r)
        os.close(wake_w)
        argv = [str(a) for a in request["argv"]]
        if fds:  # the control pipe arrives as a new fd number here
            argv = [a.replace("{control_fd}", str(fds[0])) for a in argv]
        if len(fds) >= 3:  # the pipes the agent reads the worker's output from
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(fds[1], 1)
            os.dup2(fds[2], 2)
            os.close(fds[1])
            os.close(fds[2])
        sys.argv = ["taskmesh._worker", *argv]
        # what ps shows: the command a worker started as an interpreter would have
        setproctitle(" ".join([sys.executable, "-m", "taskmesh._worker", *argv]))
        code = worker_main.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report it, then end this process only
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code or 0)


def main() -> int:
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=fd)
    node = os.environ.get("TASKMESH_NODE_ID", "?")
    setproctitle(f"taskmesh-fork-server (node {node})")  # not "taskmesh._node": not an agent
    return serve(sock)


if __name__ == "__main__":
    sys.exit(main())
