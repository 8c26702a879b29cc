"""The node agent's decisions, as a sans-IO state machine: when the node counts as joined,
when it is fenced and joins again, when the head is taken as lost and when the agent gives up,
which workers it starts, and what it tells the head about them.

    the head   ──FromHead(Welcome, Refused, StartWorkers, KillWorker, ...)──┐
    its pool   ──WorkerSpawned, WorkerSpawnFailed, WorkerEnded──────────────┼─▶ AgentState.handle(event, now)
    the loop   ──Start, Woke, Tick, HeadClosed, HandshakeRefused,           │          │
                 StopRequested, LifelineEnded───────────────────────────────┘          ▼
                                                                                  [commands]
    Send, SendHeartbeat ─▶ the head        SpawnWorkers, Kill, Interrupt, StopWorkers ─▶ the pool
    DeleteObjects, DropAllObjects ─▶ the store     ReportReady ─▶ the ready pipe
    Log, Drop ─▶ the log (Drop: rate-limited)      Exit ─▶ the loop ends

``AgentState.handle`` takes one typed event and the time, and returns the commands for the I/O
shell (``agent.py``) to execute, in order. No sockets, processes, threads, clock or logging
here; unit tests (tests/unit/test_node_state.py) and the fuzz harness drive it directly.

Phases, as a transition table (``_TRANSITIONS``; any other move is a bug and raises)::

    STARTING ─Start─▶ REGISTERING ─Welcome─▶ JOINED ◀─any message─ HEAD_LOST
                                              │  └──silent for head_timeout_s──▶┘
                                              └─Refused (fenced: stop workers, drop objects,
                                                Hello as the next incarnation)─▶ REJOINING
                                                                     └─Welcome─▶ JOINED
    REGISTERING, JOINED, HEAD_LOST, REJOINING ─Shutdown, Refused before a Welcome, no Welcome
        within connect_timeout_s, silent for head_lost_exit_s, head closed, stop, lifeline ended─▶ EXITED

A head that restarts looks to the agent like a fence: the new head does not know the node, so
it answers the next ``Heartbeat`` with ``Refused`` ("this head declared the node dead ..."),
and the agent joins it as a new incarnation. While rejoining, the ``Refused`` answers to the
heartbeats sent before the new ``Hello`` are ignored; any other ``Refused`` before a
``Welcome`` ends the agent (exit code 1). The head's silence is measured from the last message
of any kind; time the agent itself did not run (``Woke``: a poll that returned more than
``STALL_S`` late) does not count.

The pool: worker ids (``<node_id>-<n>``, ``n`` counting up for the agent's life) are chosen
here; the shell starts each and reports it started, failed to start or ended, and the state
reports every exit to the head (``WorkerExited``) and picks its log level (a SIGKILL it asked
for is no surprise). Workers stopped by a fence or at exit are not reported: the head forgot
them, or the agent is leaving.
"""

from __future__ import annotations

import enum
import signal
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from .. import _protocol as P
from ..config import Config

__all__ = [
    "AgentState", "AnswerLogs", "Command", "DeleteObjects", "Drop", "DropAllObjects", "EnvReady",
    "EnvSetupFailed", "Event", "Exit",
    "FromHead", "HandshakeRefused", "HeadClosed", "Interrupt", "Kill", "LifelineEnded", "Log",
    "Phase", "PrepareEnv", "ReportReady", "Send", "SendHeartbeat", "SpawnWorkers", "Start",
    "StopRequested",
    "StopWorkers", "Tick", "Woke", "WorkerEnded", "WorkerSpawnFailed", "WorkerSpawned",
]

#: how the head's Refused to a node it declared dead begins (protocol.md, Refused)
DECLARED_DEAD = "this head declared the node dead"
#: a poll that returned this much later than asked means the agent did not run (stopped or
#: starved): that time does not count as the head's silence
STALL_S = 0.25
#: at most this many workers per StartWorkers
MAX_START = 64
#: log levels (the logging module's numbers; the shell logs with them)
INFO, WARNING, ERROR = 20, 30, 40


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Start:
    """The shell is ready: say Hello and start the pool."""


@dataclass(frozen=True, slots=True)
class FromHead:
    """A decoded message from the head."""

    message: Any


@dataclass(frozen=True, slots=True)
class Woke:
    """The loop's poll returned after ``slept_s``, asked to wait ``asked_s``."""

    asked_s: float
    slept_s: float


@dataclass(frozen=True, slots=True)
class Tick:
    """A turn of the loop ended: time-outs and heartbeats fall due here."""


@dataclass(frozen=True, slots=True)
class WorkerSpawned:
    """A worker of a ``SpawnWorkers`` runs, as process ``pid``."""

    worker_id: str
    pid: int


@dataclass(frozen=True, slots=True)
class WorkerSpawnFailed:
    """A worker of a ``SpawnWorkers`` could not be started; ``error`` says why."""

    worker_id: str
    error: str


@dataclass(frozen=True, slots=True)
class EnvReady:
    """A ``PrepareEnv``'s environment is ready: start ``count`` workers of it."""

    env: str
    count: int


@dataclass(frozen=True, slots=True)
class EnvSetupFailed:
    """A ``PrepareEnv``'s environment could not be made ready; ``message`` says why."""

    env: str
    message: str


@dataclass(frozen=True, slots=True)
class WorkerEnded:
    """A worker process ended (``exitcode`` < 0: killed by that signal), maybe before its
    ``WorkerSpawned``."""

    worker_id: str
    pid: int
    exitcode: int


@dataclass(frozen=True, slots=True)
class HeadClosed:
    """The head closed the connection (the local socket: the head process is gone)."""


@dataclass(frozen=True, slots=True)
class HandshakeRefused:
    """The head refused the connection's handshake (a wrong secret, ...)."""

    reason: str


@dataclass(frozen=True, slots=True)
class StopRequested:
    """SIGTERM, SIGINT: leave."""


@dataclass(frozen=True, slots=True)
class LifelineEnded:
    """The driver that started this embedded cluster exited."""


Event = (Start | FromHead | Woke | Tick | WorkerSpawned | WorkerSpawnFailed | WorkerEnded
         | HeadClosed | HandshakeRefused | StopRequested | LifelineEnded | EnvReady
         | EnvSetupFailed)


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to the head."""

    message: Any


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    """Send a ``Heartbeat`` with ``workers`` and the shell's own figures (memory, load, store)."""

    workers: int


@dataclass(frozen=True, slots=True)
class SpawnWorkers:
    """Start a worker process for each id, of node incarnation ``incarnation``, and report
    each with ``WorkerSpawned``, ``WorkerSpawnFailed`` or ``WorkerEnded`` (also starts the fork
    server, if none runs, even for no ids)."""

    worker_ids: tuple[str, ...]
    incarnation: int
    env: str = ""  # the runtime environment they are for (made ready by a PrepareEnv)


@dataclass(frozen=True, slots=True)
class PrepareEnv:
    """Make runtime environment ``env`` (wire form ``wire``) ready here, then report
    ``EnvReady`` (``count`` workers of it to start) or ``EnvSetupFailed``."""

    env: str
    wire: str
    count: int


@dataclass(frozen=True, slots=True)
class Kill:
    """SIGKILL this worker; its end is reported as any other (``WorkerEnded``)."""

    worker_id: str


@dataclass(frozen=True, slots=True)
class AnswerLogs:
    """Answer a log query about this node's log directory (``taskmesh logs``) with LogsRead."""

    request_id: int
    query: dict


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Write ``task_id`` to this worker's control pipe (it stops that task)."""

    worker_id: str
    task_id: bytes


@dataclass(frozen=True, slots=True)
class StopWorkers:
    """Stop every worker (SIGTERM, then SIGKILL after 2 s); their ends are not reported."""


@dataclass(frozen=True, slots=True)
class DeleteObjects:
    """Delete these objects from the store (freed once nobody pins them)."""

    object_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class DropAllObjects:
    """Delete every object of the store, and tell the head nothing of them (it forgot them)."""


@dataclass(frozen=True, slots=True)
class ReportReady:
    """Write this line (``READY <node_id>`` or ``ERROR <why>``) to the ready pipe, once."""

    line: str


@dataclass(frozen=True, slots=True)
class Log:
    """Log ``message % args`` at ``level``."""

    level: int
    message: str
    args: tuple = ()


@dataclass(frozen=True, slots=True)
class Drop:
    """A message from the head was ignored: count it under ``kind``; log rate-limited."""

    kind: str
    message: str
    args: tuple = ()


@dataclass(frozen=True, slots=True)
class Exit:
    """Leave with ``code``, for ``reason``; say ``Goodbye`` first if ``goodbye`` (and the
    connection is still open)."""

    code: int
    reason: str
    goodbye: bool


Command = (Send | SendHeartbeat | SpawnWorkers | Kill | Interrupt | StopWorkers | DeleteObjects
           | DropAllObjects | ReportReady | Log | Drop | Exit | AnswerLogs | PrepareEnv)


# --------------------------------------------------------------------------- phases


class Phase(enum.Enum):
    STARTING = "starting"  # built, Start not handled yet
    REGISTERING = "registering"  # Hello sent, no Welcome yet
    JOINED = "joined"
    HEAD_LOST = "head lost"  # joined, but silent for head_timeout_s: said so, still trying
    REJOINING = "rejoining"  # fenced: Hello sent again as a new incarnation
    EXITED = "exited"


class Move(enum.Enum):
    """What makes the agent change phase."""

    START = "start"
    WELCOMED = "welcomed"
    FENCED = "fenced"
    HEAD_SILENT = "head silent"
    HEAD_HEARD = "head heard"
    EXIT = "exit"


_TRANSITIONS: dict[Phase, dict[Move, Phase]] = {
    Phase.STARTING: {Move.START: Phase.REGISTERING},
    Phase.REGISTERING: {Move.WELCOMED: Phase.JOINED, Move.EXIT: Phase.EXITED},
    Phase.JOINED: {Move.WELCOMED: Phase.JOINED, Move.FENCED: Phase.REJOINING,
                   Move.HEAD_SILENT: Phase.HEAD_LOST, Move.EXIT: Phase.EXITED},
    Phase.HEAD_LOST: {Move.HEAD_HEARD: Phase.JOINED, Move.EXIT: Phase.EXITED},
    Phase.REJOINING: {Move.WELCOMED: Phase.JOINED, Move.EXIT: Phase.EXITED},
    Phase.EXITED: {},
}
_JOINED = (Phase.JOINED, Phase.HEAD_LOST)


class _Worker:
    __slots__ = ("worker_id", "pid", "killed")

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.pid: int | None = None  # until WorkerSpawned
        self.killed = False  # by the head's KillWorker: its SIGKILL is no surprise


# --------------------------------------------------------------------------- the state


class AgentState:
    """The decisions of one node agent (see the module docstring).

    ``info``: the node's ``Hello`` info (its ``incarnation`` is kept here); ``head``: the head's
    endpoint, for log lines and reasons; ``config``: the time-outs (``heartbeat_interval_s``,
    ``connect_timeout_s``, ``head_timeout_s``, ``head_lost_exit_s``).
    """

    def __init__(self, config: Config, node_id: str, head: str, num_cpus: int,
                 info: dict) -> None:
        self.config = config
        self.node_id = node_id
        self.head = head
        self.num_cpus = num_cpus
        self.incarnation = 0  # +1 each time the node joins again after a fence
        self.info = dict(info, incarnation=self.incarnation)
        self.phase = Phase.STARTING
        self.exit_code = 0
        self.exit_reason: str | None = None  # once EXITED
        self.reported = False  # the ready line was written
        self.last_contact = 0.0  # last message from the head (moved on by the agent's stalls)
        self.next_beat = 0.0
        self.register_by = 0.0  # leave if not welcomed by then (REGISTERING, REJOINING)
        self.workers: dict[str, _Worker] = {}
        self._seq = 0  # the last worker number
        #: messages from the head that were ignored, by kind
        self.dropped: Counter[str] = Counter()

    @property
    def registered(self) -> bool:
        """Welcomed by the head, and not fenced since."""
        return self.phase in _JOINED

    def wake_at(self) -> float:
        """When the shell must send the next ``Tick`` at the latest."""
        if self.phase in _JOINED:
            return self.next_beat
        return min(self.next_beat, self.register_by)

    def handle(self, event: Event, now: float) -> list[Command]:
        """Apply one event at time ``now``; return the commands to execute, in order. The
        first event is ``Start``; after ``Exit`` every event is ignored."""
        handler = _EVENTS.get(type(event))
        if handler is None:
            raise TypeError(f"not a node agent event: {event!r}")
        if self.phase is Phase.STARTING and type(event) is not Start:
            raise RuntimeError(f"node agent: {type(event).__name__} before Start")
        out: list[Command] = []
        if self.phase is not Phase.EXITED:
            handler(self, event, now, out)
        return out

    def check_invariants(self) -> None:
        """Raise AssertionError if the state is inconsistent."""
        _require(self.phase in _TRANSITIONS, f"unknown phase {self.phase!r}")
        exited = self.phase is Phase.EXITED
        _require(exited == (self.exit_reason is not None), "an exit reason without an exit")
        _require(self.exit_code in (0, 1) and (exited or self.exit_code == 0),
                 f"exit code {self.exit_code} in phase {self.phase.value}")
        _require(self.info.get("incarnation") == self.incarnation, "incarnation out of step")
        _require(not self.registered or self.reported, "joined without a READY line")
        _require(self.phase is not Phase.STARTING or (not self.workers and self._seq == 0),
                 "workers before Start")
        for worker_id, w in self.workers.items():
            _require(w.worker_id == worker_id, f"worker {worker_id} filed under another id")
            prefix, _, n = worker_id.rpartition("-")
            _require(prefix == self.node_id and n.isdigit() and 0 < int(n) <= self._seq,
                     f"worker id {worker_id} not chosen here")
            _require(not w.killed or w.pid is not None, f"worker {worker_id} killed unstarted")
        _require(all(n > 0 for n in self.dropped.values()), "a drop count not positive")

    # ------------------------------------------------------------------ phases

    def _move(self, move: Move) -> None:
        to = _TRANSITIONS[self.phase].get(move)
        if to is None:
            raise RuntimeError(f"node agent: {move.value} is not a move from {self.phase.value}")
        self.phase = to

    def _exit(self, code: int, reason: str, out: list[Command], goodbye: bool | None = None) -> None:
        if goodbye is None:
            goodbye = self.registered
        self._move(Move.EXIT)
        self.exit_code, self.exit_reason = code, reason
        if code and not self.reported:
            self.reported = True
            out.append(ReportReady(f"ERROR {reason}"))
        out.append(Exit(code, reason, goodbye))

    def _hello(self, now: float, out: list[Command]) -> None:
        self.register_by = now + self.config.connect_timeout_s
        out.append(Send(P.Hello(P.PROTOCOL_VERSION, "node", dict(self.info))))
        # start the pool at once: workers connect to the head while it welcomes us
        out.append(self._spawn(self.num_cpus))

    def _spawn(self, count: int, env: str = "") -> SpawnWorkers:
        ids = []
        for _ in range(count):
            self._seq += 1
            worker_id = f"{self.node_id}-{self._seq}"
            self.workers[worker_id] = _Worker(worker_id)
            ids.append(worker_id)
        return SpawnWorkers(tuple(ids), self.incarnation, env)

    def _fence(self, why: str, now: float, out: list[Command]) -> None:
        """The head forgot this node and ran its tasks elsewhere (it declared it dead, or it
        is a new head). Stop the old workers (their results would be dropped anyway), drop
        every object of the store (the head no longer counts them), join as a new incarnation."""
        out.append(Log(WARNING, "the head at %s declared node %s dead (%s): stopping its %d "
                       "workers, dropping its objects and joining again",
                       (self.head, self.node_id, why, len(self.workers))))
        self._move(Move.FENCED)
        self.workers.clear()
        out += [StopWorkers(), DropAllObjects()]
        self.incarnation += 1
        self.info["incarnation"] = self.incarnation
        self._hello(now, out)

    # ------------------------------------------------------------------ events

    def _on_start(self, event: Start, now: float, out: list[Command]) -> None:
        self._move(Move.START)
        self.last_contact = now
        self.next_beat = now + self.config.heartbeat_interval_s
        self._hello(now, out)

    def _on_woke(self, event: Woke, now: float, out: list[Command]) -> None:
        overrun = event.slept_s - event.asked_s - STALL_S
        if overrun > 0:  # this process did not run (stopped, starved): not the head's silence
            self.last_contact += overrun

    def _on_tick(self, event: Tick, now: float, out: list[Command]) -> None:
        cfg = self.config
        if self.phase in (Phase.REGISTERING, Phase.REJOINING) and now > self.register_by:
            self._exit(1, f"no taskmesh head answered at {self.head} within "
                          f"{cfg.connect_timeout_s:g} s", out)
            return
        if now < self.next_beat:
            return
        silent = now - self.last_contact
        if silent > cfg.head_lost_exit_s:
            self._exit(1, f"the head at {self.head} has not answered for "
                          f"{cfg.head_lost_exit_s:g} s", out)
            return
        if silent > cfg.head_timeout_s and self.phase is Phase.JOINED:
            self._move(Move.HEAD_SILENT)
            out.append(Log(WARNING, "the head at %s has not answered for %.1f s: it stopped, or "
                           "the network to it is down; still trying to reach it for up to %g s "
                           "(head_lost_exit_s), then this node exits",
                           (self.head, silent, cfg.head_lost_exit_s)))
        out.append(SendHeartbeat(len(self.workers)))
        self.next_beat = now + cfg.heartbeat_interval_s

    def _on_head_closed(self, event: HeadClosed, now: float, out: list[Command]) -> None:
        self._exit(1, f"the head at {self.head} closed the connection", out, goodbye=False)

    def _on_handshake_refused(self, event: HandshakeRefused, now: float,
                              out: list[Command]) -> None:
        if self.registered:
            return  # (the shell asks only before a Welcome: a handshake that worked then)
        reason = f"the head at {self.head} refused this node: {event.reason}"
        out.append(Log(ERROR, "%s", (reason,)))
        self._exit(1, reason, out)

    def _on_stop(self, event: StopRequested, now: float, out: list[Command]) -> None:
        self._exit(0, "stopped", out)

    def _on_lifeline(self, event: LifelineEnded, now: float, out: list[Command]) -> None:
        self._exit(0, "the driver that started this embedded cluster exited", out)

    def _on_spawned(self, event: WorkerSpawned, now: float, out: list[Command]) -> None:
        w = self.workers.get(event.worker_id)
        if w is not None and w.pid is None:
            w.pid = event.pid

    def _on_spawn_failed(self, event: WorkerSpawnFailed, now: float, out: list[Command]) -> None:
        if self.workers.pop(event.worker_id, None) is None:
            return
        out.append(Log(ERROR, "could not start a worker process: %s", (event.error,)))
        out.append(Send(P.WorkerExited(event.worker_id, 0, 127)))

    def _on_ended(self, event: WorkerEnded, now: float, out: list[Command]) -> None:
        w = self.workers.pop(event.worker_id, None)
        if w is None:
            return  # stopped by a fence: the head forgot it
        code = event.exitcode
        if w.pid is None:  # it ended before the shell could watch it (its fork server reaped it)
            out.append(Log(WARNING, "worker %s (pid %d) exited at once with %s",
                           (w.worker_id, event.pid, code)))
        else:
            expected = code in (0, -signal.SIGTERM) or (w.killed and code == -signal.SIGKILL)
            out.append(Log(INFO if expected else WARNING, "worker %s (pid %d) exited with %s",
                           (w.worker_id, event.pid, code)))
        out.append(Send(P.WorkerExited(w.worker_id, event.pid, code)))

    def _on_head(self, event: FromHead, now: float, out: list[Command]) -> None:
        msg = event.message
        self.last_contact = now
        if self.phase is Phase.HEAD_LOST:
            self._move(Move.HEAD_HEARD)
            out.append(Log(WARNING, "the head at %s answers again", (self.head,)))
        handler = _HEAD_MESSAGES.get(type(msg))
        if handler is None:
            name = type(msg).__name__
            self.dropped["not a message for a node agent"] += 1
            out.append(Drop("not a message for a node agent",
                            "ignored unexpected %s from the head", (name,)))
            return
        handler(self, msg, now, out)

    # ------------------------------------------------------------------ messages from the head

    def _on_welcome(self, msg: P.Welcome, now: float, out: list[Command]) -> None:
        self._move(Move.WELCOMED)
        out.append(Log(INFO, "node %s registered with the head at %s", (self.node_id, self.head)))
        if not self.reported:
            self.reported = True
            out.append(ReportReady(f"READY {self.node_id}"))

    def _on_refused(self, msg: P.Refused, now: float, out: list[Command]) -> None:
        if self.registered:
            # the head declared us dead (cut off longer than its heartbeat time-out), or it is
            # a new head: whatever it rescheduled must not be answered twice
            self._fence(msg.reason, now, out)
        elif self.phase is Phase.REJOINING and DECLARED_DEAD in msg.reason:
            pass  # answers to heartbeats sent before we joined again
        else:
            out.append(Log(ERROR, "the head at %s refused this node: %s", (self.head, msg.reason)))
            self._exit(1, f"the head refused this node: {msg.reason}", out)

    def _on_start_workers(self, msg: P.StartWorkers, now: float, out: list[Command]) -> None:
        count = max(0, min(msg.count, MAX_START))
        if msg.env:  # its environment first (packages, pip): EnvReady or EnvSetupFailed
            out.append(PrepareEnv(msg.env, msg.wire, count))
        else:
            out.append(self._spawn(count))

    def _on_env_ready(self, event: EnvReady, now: float, out: list[Command]) -> None:
        if self.phase in (Phase.JOINED, Phase.HEAD_LOST) and event.count > 0:
            out.append(self._spawn(event.count, event.env))

    def _on_env_failed(self, event: EnvSetupFailed, now: float, out: list[Command]) -> None:
        out.append(Log(WARNING, "runtime_env %s could not be set up: %s",
                       (event.env, event.message)))
        out.append(Send(P.EnvFailed(event.env, event.message)))

    def _on_free_objects(self, msg: P.FreeObjects, now: float, out: list[Command]) -> None:
        out.append(DeleteObjects(tuple(msg.object_ids)))

    def _on_kill_worker(self, msg: P.KillWorker, now: float, out: list[Command]) -> None:
        w = self.workers.get(msg.worker_id)
        if w is None or w.pid is None:
            return  # already gone
        out.append(Log(INFO, "killing worker %s (pid %d): %s", (w.worker_id, w.pid, msg.reason)))
        w.killed = True
        out.append(Kill(w.worker_id))

    def _on_interrupt(self, msg: P.InterruptTask, now: float, out: list[Command]) -> None:
        w = self.workers.get(msg.worker_id)
        if w is not None and w.pid is not None and len(msg.task_id) == 16:
            out.append(Interrupt(w.worker_id, msg.task_id))

    def _on_read_logs(self, msg: P.ReadLogs, now: float, out: list[Command]) -> None:
        out.append(AnswerLogs(msg.request_id, msg.query))

    def _on_shutdown(self, msg: P.Shutdown, now: float, out: list[Command]) -> None:
        self._exit(0, msg.reason, out)

    def _on_heartbeat_ack(self, msg: P.HeartbeatAck, now: float, out: list[Command]) -> None:
        pass  # contact, counted above


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


_Handler = Callable[[AgentState, Any, float, list], None]

_EVENTS: dict[type, _Handler] = {
    Start: AgentState._on_start,
    FromHead: AgentState._on_head,
    Woke: AgentState._on_woke,
    Tick: AgentState._on_tick,
    WorkerSpawned: AgentState._on_spawned,
    WorkerSpawnFailed: AgentState._on_spawn_failed,
    WorkerEnded: AgentState._on_ended,
    EnvReady: AgentState._on_env_ready,
    EnvSetupFailed: AgentState._on_env_failed,
    HeadClosed: AgentState._on_head_closed,
    HandshakeRefused: AgentState._on_handshake_refused,
    StopRequested: AgentState._on_stop,
    LifelineEnded: AgentState._on_lifeline,
}

_HEAD_MESSAGES: dict[type, _Handler] = {
    P.Welcome: AgentState._on_welcome,
    P.Refused: AgentState._on_refused,
    P.StartWorkers: AgentState._on_start_workers,
    P.FreeObjects: AgentState._on_free_objects,
    P.KillWorker: AgentState._on_kill_worker,
    P.InterruptTask: AgentState._on_interrupt,
    P.ReadLogs: AgentState._on_read_logs,
    P.Shutdown: AgentState._on_shutdown,
    P.HeartbeatAck: AgentState._on_heartbeat_ack,
}
