"""The head's event stream: every state change a user or operator could ask about, typed and
timed, kept in a bounded ring with counters.

    HeadState ──add((TaskStarted, at, task_id, node_id, worker_id))──▶ EventLog
                                          absorb() once per round ──▶ ├─ ring of the last N
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

import itertools
import operator
from collections import Counter, deque
from typing import Any, Callable, NamedTuple


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

# the state a task event puts its task in (_ENDED: it left the counts)
_ENDED = "ended"
_TASK_MOVES: dict[type, str] = {
    TaskSubmitted: "pending", TaskQueued: "queued", TaskStarted: "running",
    TaskRetried: "queued", TaskFinished: _ENDED, TaskFailed: _ENDED, TaskCancelled: _ENDED,
}
_kind_of = operator.itemgetter(0)


class EventLog:
    """The ring of recent events and the counters.

    ``add`` is on the head's hot path (four task events per task), so it is only a list
    append of a plain tuple, ``(EventType, at, field, ...)``; once per round the head calls
    ``absorb``, which moves the new events into the ring, counts them by kind (at C speed)
    and notes each unfinished task's state (one dictionary store). Readers get typed events
    (``since``). With the stream off, ``add`` drops everything at C speed."""

    __slots__ = ("ring", "_seq", "_counts", "_states", "_new", "add")

    def __init__(self, capacity: int) -> None:
        self.ring: deque | None = deque(maxlen=capacity) if capacity > 0 else None
        self._seq = 0  # events absorbed so far (the ring holds the last ones)
        self._counts: Counter[type] = Counter()  # events per type, since start
        self._states: dict[bytes, str] = {}  # task id -> its state, while it is not ended
        self._new: list[tuple] = []  # added, not absorbed yet
        #: add((EventType, at, field, ...)): record one event (absorbed at the round's end)
        self.add: Callable[[tuple], None] = (self._new.append if capacity > 0
                                             else deque(maxlen=0).append)  # (a sink)

    @property
    def on(self) -> bool:
        return self.ring is not None

    def emit(self, event: Any) -> None:
        """Record one typed event (off the hot path; ``add`` is the cheap way)."""
        self.add((type(event), *event))

    def absorb(self) -> None:
        """Move the events added since the last call into the ring and the counters."""
        new = self._new
        if not new:
            return
        ring = self.ring
        assert ring is not None
        self._counts.update(map(_kind_of, new))
        states = self._states
        moves = _TASK_MOVES
        for raw in new:
            to = moves.get(raw[0])
            if to is None:
                continue
            if to is _ENDED:
                states.pop(raw[2], None)
            else:
                states[raw[2]] = to
        ring.extend(new)
        self._seq += len(new)
        new.clear()

    @property
    def seq(self) -> int:
        """Events recorded so far: the number of the latest."""
        self.absorb()
        return self._seq

    @property
    def tasks(self) -> dict[str, int]:
        """Unfinished tasks per state: pending (waiting for inputs), queued (for a worker or
        its actor), running (on a worker, maybe behind others there). Counted when asked
        (O(unfinished tasks), at C speed): only status and metrics ask."""
        self.absorb()
        counted = Counter(self._states.values())
        return {state: counted.get(state, 0) for state in ("pending", "queued", "running")}

    @property
    def counts(self) -> dict[str, int]:
        """Events per kind (type name), since start."""
        self.absorb()
        return {kind.__name__: n for kind, n in self._counts.items()}

    def since(self, seq: int, limit: int = 1000) -> tuple[int, list]:
        """Events after number ``seq`` (0: the oldest kept), at most ``limit``, as typed
        events; and the number of the last one returned. Events that fell out of the ring
        are not returned."""
        self.absorb()
        ring = self.ring
        if ring is None or seq >= self._seq:
            return self._seq, []
        first = self._seq - len(ring)  # the number before the oldest kept
        start = max(seq, first) - first
        out = [raw[0](*raw[1:]) for raw in itertools.islice(ring, start, start + limit)]
        return first + start + len(out), out

    def summary(self) -> dict:
        """For ``status``: events per kind and tasks per state."""
        return {"events": self.counts, "tasks": dict(self.tasks), "seq": self.seq}


def as_lists(events: list) -> list:
    """Events as plain lists for the wire: ``[kind, field, ...]``."""
    return [[type(e).__name__, *e] for e in events]
