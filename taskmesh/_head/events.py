"""The head's event stream: every state change a user or operator could ask about, typed and
timed, kept in a bounded ring with counters.

    HeadState ──emit(TaskStarted(at, task_id, node_id, worker_id))──▶ EventLog
                                                                      ├─ ring of the last N
                                                                      └─ counts per kind, and
                                                                         tasks per state

This is what metrics, the dashboard, the timeline and the head's journal read: never the
scheduler's records. Events are small named tuples (``at`` first: the head's clock, seconds);
ids are bytes (``task_id``, ``object_id``, ``actor_id``) or str (``node_id``). The ring holds
the last ``capacity`` events (``Config.event_ring``; 0 turns the stream off) and numbers them,
so a reader that comes back asks for what came after the last one it saw (``since``).

Per-state task counters follow the task events: a task is *pending* from TaskSubmitted until
it is queued, *queued* until TaskStarted, *running* until it ends (finished, failed,
cancelled), and goes back to queued when it is retried.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple


# ------------------------------------------------------------------ tasks


class TaskSubmitted(NamedTuple):
    at: float
    task_id: bytes
    name: str
    actor_id: bytes  # b"": a task; else a call of (or the constructor of) that actor


class TaskQueued(NamedTuple):
    """Its inputs exist: it waits for a worker (or its actor)."""

    at: float
    task_id: bytes


class TaskStarted(NamedTuple):
    """Handed to a worker (first in its list: running; behind others: pipelined)."""

    at: float
    task_id: bytes
    node_id: str
    worker_id: str


class TaskFinished(NamedTuple):
    at: float
    task_id: bytes
    duration_s: float  # as its worker measured it (0 if it did not run)


class TaskFailed(NamedTuple):
    at: float
    task_id: bytes
    error: str  # the error's kind (TaskError for an exception the task raised)


class TaskRetried(NamedTuple):
    at: float
    task_id: bytes
    reason: str


class TaskCancelled(NamedTuple):
    at: float
    task_id: bytes
    reason: str


# ------------------------------------------------------------------ actors


class ActorCreated(NamedTuple):
    """Its constructor returned: it takes calls."""

    at: float
    actor_id: bytes
    class_name: str
    node_id: str


class ActorRestarted(NamedTuple):
    at: float
    actor_id: bytes
    restarts: int
    cause: str


class ActorDead(NamedTuple):
    at: float
    actor_id: bytes
    cause: str


# ------------------------------------------------------------------ objects in node stores


class ObjectStored(NamedTuple):
    """A value larger than the inline limit was stored in a node's object store."""

    at: float
    object_id: bytes
    nbytes: int
    node_id: str


class ObjectLocated(NamedTuple):
    """Another node holds a copy now (it fetched one)."""

    at: float
    object_id: bytes
    node_id: str


class ObjectFreed(NamedTuple):
    """Nothing refers to a stored object any more: every copy is freed."""

    at: float
    object_id: bytes


class ObjectLost(NamedTuple):
    """Its last copy is gone and it cannot be made again."""

    at: float
    object_id: bytes
    reason: str


class ObjectRebuilt(NamedTuple):
    """Its last copy is gone: the task that made it runs again."""

    at: float
    object_id: bytes
    task_id: bytes


# ------------------------------------------------------------------ membership


class NodeJoined(NamedTuple):
    at: float
    node_id: str
    address: str
    incarnation: int


class NodeDead(NamedTuple):
    at: float
    node_id: str
    reason: str


class NodeFenced(NamedTuple):
    """A node declared dead spoke again: it was told to drop its state and join anew."""

    at: float
    node_id: str


class DriverJoined(NamedTuple):
    at: float
    peer: bytes


class DriverLeft(NamedTuple):
    at: float
    peer: bytes
    reason: str


#: every event type, by name (the order is the wire order of ``as_lists``)
EVENT_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    TaskSubmitted, TaskQueued, TaskStarted, TaskFinished, TaskFailed, TaskRetried,
    TaskCancelled, ActorCreated, ActorRestarted, ActorDead, ObjectStored, ObjectLocated,
    ObjectFreed, ObjectLost, ObjectRebuilt, NodeJoined, NodeDead, NodeFenced, DriverJoined,
    DriverLeft)}

# how a task event moves the per-state counters: (state it leaves, state it enters)
_MOVES: dict[type, tuple[str | None, str | None]] = {
    TaskSubmitted: (None, "pending"),
    TaskQueued: ("pending", "queued"),
    TaskStarted: ("queued", "running"),
    TaskRetried: ("running", "queued"),
}
_ENDS = (TaskFinished, TaskFailed, TaskCancelled)


class EventLog:
    """The ring of recent events and the counters. ``emit`` is on the head's hot path (four
    task events per task): a ring append and two dictionary updates."""

    __slots__ = ("ring", "seq", "counts", "tasks", "_states")

    def __init__(self, capacity: int) -> None:
        self.ring: deque | None = deque(maxlen=capacity) if capacity > 0 else None
        self.seq = 0  # events emitted so far (the ring holds the last ones)
        self.counts: dict[str, int] = {}  # events per kind, since start
        #: tasks per state: pending, queued, running (ended tasks leave the counts)
        self.tasks: dict[str, int] = {"pending": 0, "queued": 0, "running": 0}
        self._states: dict[bytes, str] = {}  # task id -> its state, while it is not ended

    @property
    def on(self) -> bool:
        return self.ring is not None

    def emit(self, event: Any) -> None:
        ring = self.ring
        if ring is None:
            return
        self.seq += 1
        ring.append(event)
        kind = type(event)
        name = kind.__name__
        counts = self.counts
        counts[name] = counts.get(name, 0) + 1
        if kind in _MOVES or kind in _ENDS:
            self._count_task(kind, event.task_id)

    def _count_task(self, kind: type, task_id: bytes) -> None:
        states = self._states
        tasks = self.tasks
        old = states.get(task_id)
        if kind in _ENDS:
            if old is not None:
                del states[task_id]
                tasks[old] -= 1
            return
        new = _MOVES[kind][1]
        if old is not None:
            tasks[old] -= 1
        elif kind is not TaskSubmitted:
            return  # (a task the log never saw submitted: it started before the log did)
        states[task_id] = new  # type: ignore[assignment]
        tasks[new] += 1  # type: ignore[index]

    def since(self, seq: int, limit: int = 1000) -> tuple[int, list]:
        """Events after number ``seq`` (0: the oldest kept), at most ``limit``; and the number
        of the last one returned. Events that fell out of the ring are not returned."""
        ring = self.ring
        if ring is None or seq >= self.seq:
            return self.seq, []
        first = self.seq - len(ring)  # the number before the oldest kept
        start = max(seq, first) - first
        out = list(ring)[start:start + limit]
        return first + start + len(out), out

    def summary(self) -> dict:
        """For ``status``: events per kind and tasks per state."""
        return {"events": dict(self.counts), "tasks": dict(self.tasks), "seq": self.seq}


def as_lists(events: list) -> list:
    """Events as plain lists for the wire: ``[kind, field, ...]``."""
    return [[type(e).__name__, *e] for e in events]
