"""The node agent: one per machine; starts and watches the worker processes, heartbeats the head,
and runs the node's object store.

    head ──StartWorkers, Shutdown, HeartbeatAck──▶ NodeAgent ──Hello, Heartbeat, WorkerExited──▶ head
                                                   │ spawn / SIGTERM        ▲ @taskmesh-node-<id>
                                                   ▼                        │ Store* (store_service.py)
                                            worker processes (each talks to the head directly;
                                            local processes map the arena and ask the store)

Workers receive tasks from the head directly (the agent is off the task hot path). The agent
learns of a worker's death at once through a pidfd (the process sentinel) and reports the exit
code, so the head can retry or fail the task it was running. Every worker holds the read end
of a lifeline pipe whose write end only the agent holds: if the agent dies, however it dies,
its workers see EOF and exit. The decisions here are few (spawn what the head asks, report
what exits); the scheduling ones live in the head's state machine. The object store's decisions
live in ``_store/state.py``; ``store_service.py`` executes them inside this agent's loop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from typing import Any

import psutil

from .. import _protocol as P
from .._daemon import report_ready
from .._store.shm import Arena, arena_name, capacity_for, sweep_dead
from .._transport import Poller, new_context, open_client, pid_alive
from .._ratelimit import RateLimitedLog
from .._secret import Security
from ..config import Config
from .spawner import Spawner, ZygoteChild
from .store_service import StoreService

log = logging.getLogger("taskmesh.node")


#: how the head's Refused to a node it declared dead begins (protocol.md, Refused)
_DECLARED_DEAD = "this head declared the node dead"
#: a poll that returned this much later than asked means the agent did not run (stopped or
#: starved): that time does not count as the head's silence
_STALL_S = 0.25


class _Worker:
    __slots__ = ("worker_id", "proc", "pidfd", "killed", "control")

    def __init__(self, worker_id: str, proc: subprocess.Popen, pidfd: int, control: int) -> None:
        self.worker_id = worker_id
        self.proc = proc
        self.pidfd = pidfd
        self.control = control  # write end of its control pipe (task ids to interrupt)
        self.killed = False  # by the head's KillWorker: its SIGKILL is no surprise


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
        self._seq = 0
        self._life_r, self._life_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._stop_w, False)
        self.registered = False
        self.exit_code = 0
        self._incarnation = 0  # joins again after the head declared it dead
        self._goodbye_sent = False
        self.spawner: Spawner | None = None  # started with the first workers
        self._spawner_fd: int | None = None  # its socket, in the poller
        self._rejoining = False
        self._info: dict = {}
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
            self.store = StoreService(self.node_id, self.arena, config, pid_alive,
                                      security=self.security,
                                      transfer_host=node_ip, on_fetched=self._fetched,
                                      on_freed=self._freed, transfer_timeout_s=silent,
                                      transfer_connect_timeout_s=silent)
        except BaseException:
            self.arena.close()
            self.sock.close()
            self.ctx.term()
            raise

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

    def _rejoin(self, why: str) -> None:
        """Fencing after a partition: the head forgot this node and ran its tasks elsewhere.
        Stop the old workers (their results would be dropped anyway), drop every object of
        the store (the head no longer counts them), and join again as a new incarnation."""
        log.warning("the head at %s declared node %s dead (%s): stopping its %d workers, "
                    "dropping its objects and joining again", self.head_endpoint, self.node_id,
                    why, len(self.workers))
        self._stop_workers()
        self.store.delete(self.store.object_ids())
        self._added, self._removed = [], []
        self.registered = False
        self._rejoining = True
        self._incarnation += 1
        self._info["incarnation"] = self._incarnation
        self.sock.send(P.Hello(P.PROTOCOL_VERSION, "node", self._info))
        self.spawn_workers(self.num_cpus)

    def request_stop(self) -> None:
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

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
        fd = self.spawner.fileno() if self.spawner is not None else None
        if fd != self._spawner_fd:
            if self._spawner_fd is not None:
                self._poller.unregister(self._spawner_fd)
            if fd is not None:
                self._poller.register(fd)
            self._spawner_fd = fd

    def spawn_workers(self, count: int) -> None:
        spawner = self._spawner()
        for _ in range(count):
            self._seq += 1
            worker_id = f"{self.node_id}-{self._seq}"
            control_r, control_w = os.pipe()
            os.set_blocking(control_w, False)
            argv = ["--head", self.head_endpoint, "--node-id", self.node_id,
                    "--worker-id", worker_id, "--incarnation", str(self._incarnation),
                    "--lifeline-fd", str(self._life_r), "--control-fd", "{control_fd}"]
            try:
                proc = spawner.spawn(argv, control_r)
            except OSError as exc:
                log.error("could not start a worker process: %s", exc)
                os.close(control_r)
                os.close(control_w)
                self.sock.send(P.WorkerExited(worker_id, 0, 127))
                continue
            os.close(control_r)
            try:
                pidfd = os.pidfd_open(proc.pid)
            except ProcessLookupError:  # it already ended (and its fork server reaped it)
                os.close(control_w)
                code = proc.wait()
                log.warning("worker %s (pid %d) exited at once with %s", worker_id, proc.pid, code)
                self.sock.send(P.WorkerExited(worker_id, proc.pid, code))
                continue
            if isinstance(proc, ZygoteChild):
                proc.pidfd = pidfd  # signals go through the pidfd: no pid-reuse race
            self.workers[pidfd] = _Worker(worker_id, proc, pidfd, control_w)
            self._poller.register(pidfd)

    def _worker_by_id(self, worker_id: str) -> "_Worker | None":
        return next((w for w in self.workers.values() if w.worker_id == worker_id), None)

    def _interrupt(self, worker_id: str, task_id: bytes) -> None:
        """Pass a cancelled task's id to its worker (its control thread interrupts it)."""
        w = self._worker_by_id(worker_id)
        if w is None or len(task_id) != 16:
            return
        try:
            os.write(w.control, task_id)
        except OSError as exc:  # full (it stopped reading) or gone: nothing more to do
            log.warning("could not interrupt task %s on worker %s: %s", task_id.hex(),
                        worker_id, exc)

    def _kill_worker(self, worker_id: str, reason: str) -> None:
        """SIGKILL one worker (the head cancelled its task); its exit is reaped as usual."""
        w = self._worker_by_id(worker_id)
        if w is None:
            return  # already gone
        log.info("killing worker %s (pid %d): %s", worker_id, w.proc.pid, reason)
        w.killed = True
        try:
            w.proc.kill()
        except OSError:
            pass

    def _reap(self, pidfd: int) -> None:
        w = self.workers.pop(pidfd, None)
        self._poller.unregister(pidfd)
        os.close(pidfd)
        if w is None:
            return
        os.close(w.control)
        code = w.proc.wait()
        level = (logging.INFO if code in (0, -signal.SIGTERM) or (w.killed and code == -signal.SIGKILL)
                 else logging.WARNING)
        log.log(level, "worker %s (pid %d) exited with %s", w.worker_id, w.proc.pid, code)
        self.sock.send(P.WorkerExited(w.worker_id, w.proc.pid, code))

    def _stop_workers(self) -> None:
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
            poller = getattr(self, "_poller", None)
            if poller is not None:
                poller.unregister(w.pidfd)
            os.close(w.pidfd)
            os.close(w.control)
        self.workers.clear()

    # ------------------------------------------------------------------ main loop

    def serve(self, lifeline_fd: int | None = None, ready_fd: int | None = None) -> int:
        """Run until told to stop; report registration (or failure) on ``ready_fd``."""
        self._poller = poller = Poller()
        poller.register(self.sock)
        poller.register(self._stop_r)
        if lifeline_fd is not None:
            poller.register(lifeline_fd)
        self.store.attach(poller)
        info = {
            "node_id": self.node_id, "address": self.node_ip, "hostname": socket.gethostname(),
            "pid": os.getpid(), "resources": self.resources, "prestart": self.num_cpus,
            "arena": self.arena.name, "store_capacity": self.arena.capacity,
            "store": self.store.name, "transfer": self.store.transfer_address,
            "incarnation": self._incarnation, "gpus": self.gpus,
        }
        self._info = info
        self.sock.send(P.Hello(P.PROTOCOL_VERSION, "node", info))
        # start the pool at once: workers connect to the head while it welcomes us
        self.spawn_workers(self.num_cpus)
        reason = "an internal error (traceback follows)"
        try:
            reason = self._loop(lifeline_fd, ready_fd)
        finally:  # whatever happens, leave no workers, arena or spill files behind
            log.log(logging.ERROR if self.exit_code else logging.INFO,
                    "node %s shutting down: %s", self.node_id, reason)
            self._say_goodbye()
            self._stop_workers()
            if self.spawner is not None:
                self.spawner.close()
            self.store.close()
            self.arena.close()
            os.close(self._life_w)
            self.sock.close(linger_ms=500 if self._goodbye_sent else 0)
            self.ctx.term()
        return self.exit_code

    def _on_head_message(self, msg: Any) -> str | None:
        """Act on one message from the head; return why to stop, or None to go on."""
        kind = type(msg)
        if kind is P.StartWorkers:
            self.spawn_workers(max(0, min(msg.count, 64)))
        elif kind is P.Welcome:
            self.registered = True
            self._rejoining = False
            log.info("node %s registered with the head at %s", self.node_id, self.head_endpoint)
        elif kind is P.Refused and self.registered:
            # the head declared us dead (cut off longer than its heartbeat time-out):
            # whatever it rescheduled must not be answered twice
            self._rejoin(msg.reason)
        elif kind is P.Refused and self._rejoining and _DECLARED_DEAD in msg.reason:
            pass  # answers to heartbeats sent before we joined again
        elif kind is P.Refused:
            log.error("the head at %s refused this node: %s", self.head_endpoint, msg.reason)
            self.exit_code = 1
            return f"the head refused this node: {msg.reason}"
        elif kind is P.FreeObjects:
            self.store.delete(msg.object_ids)
        elif kind is P.KillWorker:
            self._kill_worker(msg.worker_id, msg.reason)
        elif kind is P.InterruptTask:
            self._interrupt(msg.worker_id, msg.task_id)
        elif kind is P.Shutdown:
            return msg.reason
        elif kind is not P.HeartbeatAck:
            self.dropped.event("not a message for a node agent", "ignored unexpected %s from "
                               "the head", kind.__name__)
        return None

    def _say_goodbye(self) -> None:
        """Tell the head we are leaving, so it runs our tasks elsewhere now rather than after
        the heartbeat time-out (best effort: the head may be gone)."""
        if not self.registered or self.sock.peer_closed:
            return
        try:
            self.sock.send(P.Goodbye())  # delivered by the close's linger
            self._goodbye_sent = True
        except Exception as exc:  # noqa: BLE001 - leaving anyway
            log.debug("could not say goodbye to the head: %s", exc)

    def _loop(self, lifeline_fd: int | None, ready_fd: int | None) -> str:
        """Serve until told to stop; return why it stopped."""
        poller = self._poller
        interval = self.config.heartbeat_interval_s
        last_contact = time.monotonic()
        next_beat = last_contact + interval
        reason = "stopped"
        proc = psutil.Process()
        register_by = last_contact + self.config.connect_timeout_s
        rejoin_after = self.config.connect_timeout_s
        head_lost = False  # silent for head_timeout_s: said so in the log, still trying
        while True:
            wake_at = next_beat if self.registered else min(next_beat, register_by)
            store_at = self.store.wake_at(time.monotonic())
            if store_at is not None:
                wake_at = min(wake_at, store_at)
            self._report_locations()
            self.sock.flush()  # the agent's messages are small; anything left goes out here
            if self.sock.wants_write:
                wake_at = min(wake_at, time.monotonic() + 0.01)
            asked = max(0.0, wake_at - time.monotonic())
            before = time.monotonic()
            ready = poller.poll(asked * 1000)
            overrun = time.monotonic() - before - asked - _STALL_S
            if overrun > 0:  # this process did not run (stopped, starved): not the head's silence
                last_contact += overrun
            if self._stop_r in ready:
                break
            self.store.handle(ready, time.monotonic())
            if self.spawner is not None:
                if self._spawner_fd in ready:
                    self.spawner.drain()  # exit reports; a dead fork server is replaced
                self._watch_spawner()
            if lifeline_fd is not None and lifeline_fd in ready and not os.read(lifeline_fd, 64):
                reason = "the driver that started this embedded cluster exited"
                break
            for fd in [fd for fd in ready if fd in self.workers]:
                self._reap(fd)
            if self.sock.poll_target in ready:
                stop = False
                while (msg := self.sock.recv_nowait()) is not None:
                    last_contact = time.monotonic()
                    if head_lost:
                        head_lost = False
                        log.warning("the head at %s answers again", self.head_endpoint)
                    incarnation = self._incarnation
                    why = self._on_head_message(msg)
                    if self._incarnation != incarnation:  # joining again: as long to be welcomed
                        register_by = time.monotonic() + rejoin_after
                    if why is not None:
                        reason, stop = why, True
                    if ready_fd is not None and (self.registered or self.exit_code):
                        report_ready(ready_fd, f"READY {self.node_id}" if self.registered
                                     else f"ERROR {why}")
                        ready_fd = None
                if stop:
                    break
                if self.sock.peer_closed:
                    reason, self.exit_code = f"the head at {self.head_endpoint} closed the connection", 1
                    if ready_fd is not None:
                        report_ready(ready_fd, f"ERROR {reason}")
                        ready_fd = None
                    break
            now = time.monotonic()
            self.store.tick(now)
            refusal = None if self.registered else self.sock.refusal()
            if refusal is not None:
                reason = f"the head at {self.head_endpoint} refused this node: {refusal}"
                self.exit_code = 1
                log.error("%s", reason)
                if ready_fd is not None:
                    report_ready(ready_fd, f"ERROR {reason}")
                    ready_fd = None
                break
            if not self.registered and now > register_by:
                reason = (f"no taskmesh head answered at {self.head_endpoint} within "
                          f"{self.config.connect_timeout_s:g} s")
                self.exit_code = 1
                if ready_fd is not None:
                    report_ready(ready_fd, f"ERROR {reason}")
                    ready_fd = None
                break
            if now >= next_beat:
                silent = now - last_contact
                if silent > self.config.head_lost_exit_s:
                    reason, self.exit_code = (f"the head at {self.head_endpoint} has not answered "
                                              f"for {self.config.head_lost_exit_s:g} s"), 1
                    break
                if silent > self.config.head_timeout_s and self.registered and not head_lost:
                    head_lost = True
                    log.warning("the head at %s has not answered for %.1f s: it stopped, or the "
                                "network to it is down; still trying to reach it for up to "
                                "%g s (head_lost_exit_s), then this node exits",
                                self.head_endpoint, silent, self.config.head_lost_exit_s)
                stats = {"workers": len(self.workers), "rss": proc.memory_info().rss,
                         "load": os.getloadavg()[0]}
                stats.update(("store_" + k, v) for k, v in self.store.stats().items())
                self.sock.send(P.Heartbeat(stats))
                next_beat = now + interval
        return reason
