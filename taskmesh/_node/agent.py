"""The node agent's I/O shell: one per machine; starts and watches the worker processes,
talks to the head, and runs the node's object store, doing what ``AgentState`` decides.

    head ──StartWorkers, Shutdown, HeartbeatAck──▶ NodeAgent ──Hello, Heartbeat, WorkerExited──▶ head
                                                   │ spawn / SIGTERM        ▲ @taskmesh-node-<id>
                                                   ▼                        │ Store* (store_service.py)
                                            worker processes (each talks to the head directly;
                                            local processes map the arena and ask the store)

Every decision of the agent (when it is registered, fenced, or has lost the head; when it
gives up; which workers to start; what to report and log) is ``AgentState``'s (``state.py``):
this loop turns what it sees into events (a message from the head, a worker's pidfd, a poll
that returned late, the end of a turn), hands them to the state, and executes the commands it
gets back through one table (``_COMMANDS``). Workers receive tasks from the head directly (the
agent is off the task hot path). The agent learns of a worker's death at once through a pidfd
(the process sentinel) and reports the exit code, so the head can retry or fail the task it was
running. Every worker holds the read end of a lifeline pipe whose write end only the agent
holds: if the agent dies, however it dies, its workers see EOF and exit. The object store's
decisions live in ``_store/state.py``; ``store_service.py`` executes them inside this loop; the
copies it fetches or loses are batched here into ``ObjectLocations`` once per turn.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import uuid
from typing import Any, Callable

import psutil

from .. import _protocol as P
from .._daemon import report_ready
from .._store.shm import Arena, arena_name, capacity_for, sweep_dead
from .._transport import Poller, new_context, open_client, pid_alive
from .._ratelimit import RateLimitedLog
from .._secret import Security
from ..config import Config
from .._logfiles import LogDirectory
from .inbox import Inbox
from .envs import NodeEnvs
from .output import NodeOutput
from .spawner import Spawner, ZygoteChild
from .state import (
    AgentState,
    AnswerLogs,
    Command,
    DeleteObjects,
    Drop,
    DropAllObjects,
    Event,
    Exit,
    FromHead,
    HandshakeRefused,
    HeadClosed,
    Interrupt,
    Kill,
    LifelineEnded,
    Log,
    PrepareEnv,
    ReportReady,
    Send,
    SendHeartbeat,
    SpawnWorkers,
    Start,
    StopRequested,
    StopWorkers,
    Tick,
    Woke,
    WorkerEnded,
    WorkerSpawned,
    WorkerSpawnFailed,
)
from .store_service import StoreService

log = logging.getLogger("taskmesh.node")

#: a worker's output pipe, once read, is left this long before it is watched again
OUTPUT_READ_S = 0.05


class _Worker:
    __slots__ = ("worker_id", "proc", "pidfd", "control")

    def __init__(self, worker_id: str, proc: subprocess.Popen, pidfd: int, control: int) -> None:
        self.worker_id = worker_id
        self.proc = proc
        self.pidfd = pidfd
        self.control = control  # write end of its control pipe (task ids to interrupt)


class NodeAgent:
    """Runs the worker pool of one machine."""

    def __init__(
        self,
        config: Config,
        head_endpoint: str,
        node_ip: str,
        num_cpus: int,
        resources: dict[str, int],
        node_id: str | None = None,
        gpus: list[str] | None = None,
        *,
        security: Security,
    ) -> None:
        self.config = config
        #: messages from the head this agent ignored, counted by kind (logged rate-limited)
        self.dropped = RateLimitedLog(log)
        #: the cluster key and whether traffic between machines is encrypted
        self.security = security
        self.head_endpoint = head_endpoint
        self.node_ip = node_ip
        self.num_cpus = num_cpus
        self.resources = resources
        self.gpus = list(gpus or [])  # device ids, as CUDA_VISIBLE_DEVICES names them
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.ctx = new_context()
        self.sock = open_client(self.ctx, head_endpoint, b"N" + self.node_id.encode(),
                                config.frame_threshold_bytes, config.connect_timeout_s, security)
        self.workers: dict[int, _Worker] = {}  # pidfd -> worker
        self._life_r, self._life_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._stop_w, False)
        self.exit_code = 0
        self._exit: Exit | None = None  # the state's Exit, once it came
        self._ready_fd: int | None = None
        self._goodbye_sent = False
        self.spawner: Spawner | None = None  # started with the first workers
        self._spawner_fd: int | None = None  # its socket, in the poller
        self._poller: Poller | None = None
        self._proc = psutil.Process()
        psutil.cpu_percent(interval=None)  # (the first call starts the measurement: 0.0)
        #: the workers' stdout/stderr: log files, and lines batched to the head for drivers
        self.output = NodeOutput(config.node_log_dir(self.node_id), config.log_rotate_bytes,
                                 config.log_rotate_backups, config.log_forward_rate,
                                 time.monotonic())
        #: taskmesh logs: queries about the node's log directory, answered by a thread (a
        #: find may scan large files) whose replies the loop sends (``_logs_done``)
        self.log_dir = LogDirectory(self.output.log_dir)
        self._log_answers = Inbox()
        self._log_thread: Any = None
        self._resting: dict[int, float] = {}  # output pipes not watched until then
        self._added: list[list] = []  # copies fetched / freed, for the next ObjectLocations
        self._removed: list[bytes] = []
        # the object store: the arena, and the service local clients talk to
        swept = sweep_dead(pid_alive)
        if swept:
            log.info("removed %d shared-memory arena(s) of node agents that died: %s",
                     len(swept), ", ".join(swept))
        self.arena = Arena.create(arena_name(self.node_id),
                                  capacity_for(config.object_store_memory))
        try:
            # a holder silent for twice the heartbeat time-out is given up on: by then the
            # head has declared it dead if it is, and the task reading it runs again later
            silent = max(3.0, 2 * config.heartbeat_timeout_s)
            self.store = StoreService.open(self.node_id, self.arena, config, pid_alive,
                                           security=self.security,
                                           transfer_host=node_ip, on_fetched=self._fetched,
                                           on_freed=self._freed, transfer_timeout_s=silent,
                                           transfer_connect_timeout_s=silent)
        except BaseException:
            self.arena.close()
            self.sock.close()
            self.ctx.term()
            raise
        info = {
            "node_id": self.node_id, "address": self.node_ip, "hostname": socket.gethostname(),
            "pid": os.getpid(), "resources": self.resources, "prestart": self.num_cpus,
            "arena": self.arena.name, "store_capacity": self.arena.capacity,
            "store": self.store.name, "transfer": self.store.transfer_address,
            "incarnation": 0, "gpus": self.gpus,
        }
        #: every decision: registration, fencing, head lost, the pool
        self.state = AgentState(config, self.node_id, head_endpoint, num_cpus, info)
        #: runtime environments made ready here (pip builds under way)
        self.envs = NodeEnvs(config.runtime_env_cache(), self.output.log_dir)
        self._env_fds: set[int] = set()  # the builds' pidfds in the poller

    def _fetched(self, object_id: bytes, size: int) -> None:
        """The store pulled a copy from another node: the head's directory should know."""
        self._added.append([object_id, size])

    def _freed(self, object_id: bytes) -> None:
        """The store let go of a copy (the head ignores it if it asked for that itself)."""
        self._removed.append(object_id)

    def _report_locations(self) -> None:
        if self._added or self._removed:
            self.sock.send(P.ObjectLocations(self._added, self._removed))
            self._added, self._removed = [], []

    def request_stop(self) -> None:
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    # ------------------------------------------------------------------ the state, fed and obeyed

    def _feed(self, event: Event, now: float | None = None) -> None:
        self._run(self.state.handle(event, time.monotonic() if now is None else now))

    def _run(self, cmds: list[Command]) -> None:
        for c in cmds:
            _COMMANDS[type(c)](self, c)

    def _send(self, c: Send) -> None:
        self.sock.send(c.message)

    def _send_heartbeat(self, c: SendHeartbeat) -> None:
        mem = psutil.virtual_memory()
        # the machine's CPU use since the last heartbeat (non-blocking) and its memory in use
        # (what is not available to new processes), for the head's metrics
        stats = {"workers": c.workers, "rss": self._proc.memory_info().rss,
                 "load": os.getloadavg()[0], "cpu_percent": psutil.cpu_percent(interval=None),
                 "mem_used": mem.total - mem.available, "mem_total": mem.total}
        stats.update(("store_" + k, v) for k, v in self.store.stats().items())
        self.sock.send(P.Heartbeat(stats))

    def _log(self, c: Log) -> None:
        log.log(c.level, c.message, *c.args)

    def _drop(self, c: Drop) -> None:
        self.dropped.event(c.kind, c.message, *c.args)

    def _report_ready(self, c: ReportReady) -> None:
        report_ready(self._ready_fd, c.line)
        self._ready_fd = None

    def _delete_objects(self, c: DeleteObjects) -> None:
        self.store.delete(list(c.object_ids))

    def _drop_all_objects(self, c: DropAllObjects) -> None:
        self.store.delete(self.store.object_ids())
        self._added, self._removed = [], []  # the head forgot this node: nothing to tell it

    def _on_exit(self, c: Exit) -> None:
        self._exit = c
        self.exit_code = c.code

    # ------------------------------------------------------------------ workers

    def _spawner(self) -> Spawner:
        if self.spawner is None:
            env = dict(os.environ)
            env.update(self.config.to_env())
            env.update(self.security.key.env())  # each worker takes it out of its environment
            env["TASKMESH_NODE_ID"] = self.node_id
            env["TASKMESH_NODE_IP"] = self.node_ip
            self.spawner = Spawner(env, self._life_r, self.config.worker_fork_server)
        return self.spawner

    def _watch_spawner(self) -> None:
        """Poll the fork server's socket (it changes when a new fork server starts)."""
        assert self._poller is not None
        fd = self.spawner.fileno() if self.spawner is not None else None
        if fd != self._spawner_fd:
            if self._spawner_fd is not None:
                self._poller.unregister(self._spawner_fd)
            if fd is not None:
                self._poller.register(fd)
            self._spawner_fd = fd

    def _prepare_env(self, c: PrepareEnv) -> None:
        """Make a runtime environment ready (at once if it is; else a build starts and its
        end, seen in the loop, reports back)."""
        self._env_events(self.envs.prepare(c.env, c.wire, c.count, time.monotonic()))

    def _env_events(self, events: list) -> None:
        poller = self._poller
        assert poller is not None
        for fd in self.envs.builds.keys() - self._env_fds:
            poller.register(fd)
            self._env_fds.add(fd)
        for event in events:
            self._feed(event)

    def _env_built(self, pidfd: int) -> None:
        assert self._poller is not None
        self._poller.unregister(pidfd)
        self._env_fds.discard(pidfd)
        self._env_events(self.envs.finished(pidfd))

    def _spawn_workers(self, c: SpawnWorkers) -> None:
        spawner = self._spawner()
        ready = self.envs.ready.get(c.env) if c.env else None
        if c.env and ready is None:  # (cannot happen: EnvReady comes after the env is ready)
            for worker_id in c.worker_ids:
                self._feed(WorkerSpawnFailed(worker_id, f"runtime_env {c.env} is not ready"))
            return
        for worker_id in c.worker_ids:
            control_r, control_w = os.pipe()
            os.set_blocking(control_w, False)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            argv = ["--head", self.head_endpoint, "--node-id", self.node_id,
                    "--worker-id", worker_id, "--incarnation", str(c.incarnation),
                    "--lifeline-fd", str(self._life_r), "--control-fd", "{control_fd}"]
            try:
                proc = spawner.spawn(argv, control_r, out_w, err_w, ready)
            except OSError as exc:
                for fd in (control_r, control_w, out_r, out_w, err_r, err_w):
                    os.close(fd)
                self._feed(WorkerSpawnFailed(worker_id, str(exc)))
                continue
            for fd in (control_r, out_w, err_w):
                os.close(fd)
            self.output.attach(worker_id, proc.pid, out_r, err_r)
            assert self._poller is not None
            self._poller.register(out_r)
            self._poller.register(err_r)
            try:
                pidfd = os.pidfd_open(proc.pid)
            except ProcessLookupError:  # it already ended (and its fork server reaped it)
                os.close(control_w)
                self._feed(WorkerEnded(worker_id, proc.pid, proc.wait()))
                continue
            if isinstance(proc, ZygoteChild):
                proc.pidfd = pidfd  # signals go through the pidfd: no pid-reuse race
            self.workers[pidfd] = _Worker(worker_id, proc, pidfd, control_w)
            assert self._poller is not None
            self._poller.register(pidfd)
            self._feed(WorkerSpawned(worker_id, proc.pid))

    def _worker_by_id(self, worker_id: str) -> "_Worker | None":
        return next((w for w in self.workers.values() if w.worker_id == worker_id), None)

    def _interrupt(self, c: Interrupt) -> None:
        """Pass a cancelled task's id to its worker (its control thread interrupts it)."""
        w = self._worker_by_id(c.worker_id)
        if w is None:
            return
        try:
            os.write(w.control, c.task_id)
        except OSError as exc:  # full (it stopped reading) or gone: nothing more to do
            log.warning("could not interrupt task %s on worker %s: %s", c.task_id.hex(),
                        c.worker_id, exc)

    def _kill(self, c: Kill) -> None:
        """SIGKILL one worker (the head cancelled its task); its exit is reaped as usual."""
        w = self._worker_by_id(c.worker_id)
        if w is None:
            return  # already gone
        try:
            w.proc.kill()
        except OSError:
            pass

    def _answer_logs(self, c: AnswerLogs) -> None:
        if self._log_thread is None:
            from concurrent.futures import ThreadPoolExecutor

            self._log_thread = ThreadPoolExecutor(1, "taskmesh-logs")
        put = self._log_answers.put
        self._log_thread.submit(lambda: put((c.request_id, self.log_dir.answer(c.query))))

    def _logs_done(self) -> None:
        for request_id, reply in self._log_answers.drain():
            self.sock.send(P.LogsRead(request_id, reply))

    def _read_output(self, fd: int) -> None:
        """Read a worker's pipe, then leave it for ``OUTPUT_READ_S``: a worker printing
        many short lines would otherwise wake this loop for each one (the pipe, enlarged,
        holds what comes meanwhile)."""
        assert self._poller is not None
        self._poller.unregister(fd)
        now = time.monotonic()
        if self.output.read(fd, now):
            self._resting[fd] = now + OUTPUT_READ_S
        else:  # closed: the worker (and any child it left holding the pipe) ended
            self.output.close(fd)

    def _wake_rested(self, now: float) -> float | None:
        """Read the pipes whose rest is over (rest again those that had something; watch
        the empty ones again); return when the next rest ends."""
        resting = self._resting
        for fd in [fd for fd, until in resting.items() if until <= now]:
            # read it now: a busy worker's pipe has more, and rests again without a turn
            # of the loop to find it readable; an empty one is watched again
            got = self.output.drain(fd, now)
            if got is None:  # closed
                del resting[fd]
                self.output.close(fd)
            elif got:
                resting[fd] = now + OUTPUT_READ_S
            else:
                del resting[fd]
                assert self._poller is not None
                self._poller.register(fd)
        return min(resting.values()) if resting else None

    def _send_output(self, force: bool = False) -> float | None:
        """Send the output lines that are due to the head (once registered); return when the
        next are due."""
        batcher = self.output.batcher
        if not self.state.registered:
            return None
        now = time.monotonic()
        entries = batcher.take(now, force)
        if entries:
            self.sock.send(P.WorkerOutput(entries))
        return batcher.due(now)

    def _flush_output(self) -> None:
        """The agent is ending: read what its workers wrote so far, and send it."""
        try:
            for fd in list(self.output.pipes):
                self.output.read(fd, time.monotonic())
            if not self.sock.peer_closed:
                self._send_output(force=True)
        except Exception as exc:  # noqa: BLE001 - leaving anyway
            log.debug("could not send the last worker output: %s", exc)

    def _close_output(self) -> None:
        """The workers are gone: what they left in their pipes goes to the files."""
        for fd in list(self.output.pipes):
            if self._poller is not None and self._resting.pop(fd, None) is None:
                self._poller.unregister(fd)
        self.output.close_all(time.monotonic())

    def _reap(self, pidfd: int) -> None:
        w = self.workers.pop(pidfd, None)
        assert self._poller is not None
        self._poller.unregister(pidfd)
        os.close(pidfd)
        if w is None:
            return
        os.close(w.control)
        self._feed(WorkerEnded(w.worker_id, w.proc.pid, w.proc.wait()))

    def _stop_workers(self, c: StopWorkers | None = None) -> None:
        for w in self.workers.values():
            if w.proc.poll() is None:
                try:
                    w.proc.terminate()
                except OSError:
                    pass
        deadline = time.monotonic() + 2.0
        for w in self.workers.values():
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            if self._poller is not None:
                self._poller.unregister(w.pidfd)
            os.close(w.pidfd)
            os.close(w.control)
        self.workers.clear()

    # ------------------------------------------------------------------ main loop

    def serve(self, lifeline_fd: int | None = None, ready_fd: int | None = None) -> int:
        """Run until told to stop; report registration (or failure) on ``ready_fd``."""
        self._poller = poller = Poller()
        poller.register(self.sock)
        poller.register(self._stop_r)
        poller.register(self._log_answers.wake_fd)
        if lifeline_fd is not None:
            poller.register(lifeline_fd)
        self.store.attach(poller)
        self._ready_fd = ready_fd
        reason = "an internal error (traceback follows)"
        try:
            reason = self._loop(lifeline_fd)
        finally:  # whatever happens, leave no workers, arena or spill files behind
            log.log(logging.ERROR if self.exit_code else logging.INFO,
                    "node %s shutting down: %s", self.node_id, reason)
            self._flush_output()  # (before the Goodbye: the head drops what comes after)
            self._say_goodbye()
            self._stop_workers()
            self.envs.close()
            self._close_output()  # what is left goes to the files
            if self._log_thread is not None:
                self._log_thread.shutdown(wait=False, cancel_futures=True)
            self._log_answers.close()
            if self.spawner is not None:
                self.spawner.close()
            self.store.close()
            self.arena.close()
            os.close(self._life_w)
            self.sock.close(linger_ms=500 if self._goodbye_sent else 0)
            self.ctx.term()
        return self.exit_code

    def _say_goodbye(self) -> None:
        """Tell the head we are leaving, so it runs our tasks elsewhere now rather than after
        the heartbeat time-out (best effort: the head may be gone)."""
        goodbye = self._exit.goodbye if self._exit is not None else self.state.registered
        if not goodbye or self.sock.peer_closed:
            return
        try:
            self.sock.send(P.Goodbye())  # delivered by the close's linger
            self._goodbye_sent = True
        except Exception as exc:  # noqa: BLE001 - leaving anyway
            log.debug("could not say goodbye to the head: %s", exc)

    def _loop(self, lifeline_fd: int | None) -> str:
        """Serve until the state says to exit; return why."""
        poller = self._poller
        assert poller is not None
        state, sock = self.state, self.sock
        self._feed(Start())
        while self._exit is None:
            wake_at = state.wake_at()
            store_at = self.store.wake_at(time.monotonic())
            if store_at is not None:
                wake_at = min(wake_at, store_at)
            self._report_locations()
            out_at = self._send_output()
            if out_at is not None:
                wake_at = min(wake_at, out_at)
            rest_at = self._wake_rested(time.monotonic()) if self._resting else None
            if rest_at is not None:
                wake_at = min(wake_at, rest_at)
            sock.flush()  # the agent's messages are small; anything left goes out here
            if sock.wants_write:
                wake_at = min(wake_at, time.monotonic() + 0.01)
            asked = max(0.0, wake_at - time.monotonic())
            before = time.monotonic()
            ready = poller.poll(asked * 1000)
            self._feed(Woke(asked, time.monotonic() - before))
            if self._stop_r in ready:
                self._feed(StopRequested())
                break
            self.store.handle(ready, time.monotonic())
            if self.spawner is not None:
                if self._spawner_fd in ready:
                    self.spawner.drain()  # exit reports; a dead fork server is replaced
                self._watch_spawner()
            if lifeline_fd is not None and lifeline_fd in ready and not os.read(lifeline_fd, 64):
                self._feed(LifelineEnded())
                break
            if self._log_answers.wake_fd in ready:
                self._logs_done()
            pipes = self.output.pipes
            for fd in [fd for fd in ready if fd in pipes]:
                self._read_output(fd)
            for fd in [fd for fd in ready if fd in self.workers]:
                self._reap(fd)
            if self._env_fds:
                for fd in [fd for fd in ready if fd in self._env_fds]:
                    self._env_built(fd)
            if sock.poll_target in ready:
                while self._exit is None and (msg := sock.recv_nowait()) is not None:
                    self._feed(FromHead(msg))
                if self._exit is None and sock.peer_closed:
                    self._feed(HeadClosed())
                if self._exit is not None:
                    break
            now = time.monotonic()
            self.store.tick(now)
            if self.envs.setups.envs:  # (set-up time-outs)
                self._env_events(self.envs.tick(now))
            if not state.registered and (refusal := sock.refusal()) is not None:
                self._feed(HandshakeRefused(refusal), now)
            else:
                self._feed(Tick(), now)
        assert self._exit is not None
        return self._exit.reason


#: how each of the state's commands is executed
_COMMANDS: dict[type, Callable[[NodeAgent, Any], None]] = {
    Send: NodeAgent._send,
    SendHeartbeat: NodeAgent._send_heartbeat,
    SpawnWorkers: NodeAgent._spawn_workers,
    Kill: NodeAgent._kill,
    Interrupt: NodeAgent._interrupt,
    StopWorkers: NodeAgent._stop_workers,
    DeleteObjects: NodeAgent._delete_objects,
    DropAllObjects: NodeAgent._drop_all_objects,
    ReportReady: NodeAgent._report_ready,
    Log: NodeAgent._log,
    Drop: NodeAgent._drop,
    Exit: NodeAgent._on_exit,
    AnswerLogs: NodeAgent._answer_logs,
    PrepareEnv: NodeAgent._prepare_env,
}
