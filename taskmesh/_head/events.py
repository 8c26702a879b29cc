"""The head's event stream: every state change a user or operator could ask about, typed and
timed, kept in a bounded ring.

    HeadState ──add(("TaskStarted", at, task_id, node_id, worker_id))──▶ EventLog
                              absorb() once ABSORB_AT are added ──▶ ring of the last N

This is what metrics, the dashboard, the timeline and the head's journal read: never the
scheduler's records. Events are small named tuples (``at`` first: the head's clock, seconds);
ids are bytes (``task_id``, ``object_id``, ``actor_id``) or str (``node_id``). The ring holds
the last ``capacity`` events (``Config.event_ring``; 0 turns the stream off) and numbers them,
so a reader that comes back asks for what came after the last one it saw (``since``).

The stream counts nothing itself: counting the events per kind as they came was a fifth of
its cost (a Python-level dict update per event). Counts since start are kept by the parts
that own the records, as plain integers bumped where the events are recorded (the task
table's tasks finished and failed, unfinished tasks are its pending ones; ``status`` shows
them); ``kept_counts`` counts the kinds among the events kept, when asked. A reader that
wants a view of its own (per function, per node) builds it from ``since``, off the head's
hot path.
"""

from __future__ import annotations

import itertools
import operator
from collections import Counter, deque
from typing import Any, Callable, NamedTuple


# ------------------------------------------------------------------ tasks


class TaskSubmitted(NamedTuple):
    """A task, or a run of it to rebuild a lost result, is in the head. With ``waiting`` 0 its
    inputs exist: it is queued (it waits for a worker or its actor); else it waits for that
    many of its inputs, and TaskQueued follows when they exist."""

    at: float
    task_id: bytes
    name: str
    actor_id: bytes  # b"": a task; else a call of (or the constructor of) that actor
    waiting: int  # inputs that do not exist yet
    job: bytes  # the driver whose job it is part of (TaskRec.job; b"": not known)
    parent: bytes  # the task that submitted it (b"": none)
    args_bytes: int  # the size of its serialized arguments


class TaskWaiting(NamedTuple):
    """A task to run again (after a retry that waited) waits for ``inputs`` of its inputs."""

    at: float
    task_id: bytes
    inputs: int


class TaskQueued(NamedTuple):
    """Its inputs came, or it is to run again after a pause: it waits for a worker (or its
    actor). (A task whose inputs exist when it is submitted has no TaskQueued: its
    TaskSubmitted says it; one event less per task on the head's busiest path.)"""

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
    message: str  # what happened, as text: for a TaskError the worker's summary with the
    #               traceback (TaskResult.error), else the head's own message; at most 8 KiB


class TaskRetried(NamedTuple):
    """It failed in a way it may be tried again for: it is queued again (or, if an input
    could not be read, after a pause: then TaskQueued or TaskWaiting says when)."""

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
    name: str  # its name if it was given one ("": none)


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
    TaskSubmitted, TaskWaiting, TaskQueued, TaskStarted, TaskFinished, TaskFailed, TaskRetried,
    TaskCancelled, ActorCreated, ActorRestarted, ActorDead, ObjectStored, ObjectLocated,
    ObjectFreed, ObjectLost, ObjectRebuilt, NodeJoined, NodeDead, NodeFenced, DriverJoined,
    DriverLeft)}

#: the head absorbs added events once this many wait (fewer, larger steps)
ABSORB_AT = 256
#: the state view is fed at once, whatever else waits, once this many events wait for it
#: (what they hold is in the ring too: the backlog costs a list of references)
VIEW_BEHIND_MAX = 30_000

_kind_of = operator.itemgetter(0)


def check_raw(raw: tuple) -> str | None:
    """What is wrong with one recorded event, or None (for the head's invariant check)."""
    cls = EVENT_TYPES.get(raw[0]) if raw else None
    if cls is None:
        return f"an event of unknown kind: {raw!r}"
    if len(raw) - 1 != len(cls._fields):
        return f"{raw[0]} needs {len(cls._fields)} fields ({', '.join(cls._fields)}): {raw!r}"
    return None


class EventLog:
    """The ring of recent events.

    ``add`` is on the head's hot path (three events for a task that runs once), so it is
    only a list append of a plain tuple, ``("TaskStarted", at, field, ...)``: the kind is the
    event type's name. A str, not the class: a tuple that holds only strings, bytes and
    numbers is dropped from the garbage collector's lists at its first collection, while one
    that holds a class is walked again and again (with the class, the stream cost a flood of
    no-op tasks 12% of its rate). Once a turn's messages are sent and ``ABSORB_AT`` events or
    more wait (``HeadState.after_turn``), the head calls ``absorb``, which moves them into
    the ring, with no Python-level step per event (every reader absorbs first, so none sees
    the difference). Readers get typed events (``since``). The state view (``view``) gets
    the absorbed batches raw, in order, when the head has nothing else to do
    (``feed_view`` with a deadline, from the I/O shell's idle turns), at once when
    ``VIEW_BEHIND_MAX`` events wait for it, and before anyone reads it (``sync``): its
    pass over the events of a flood runs in the gaps of the flood, not ahead of the
    messages. With the stream off, ``add`` drops everything at C speed."""

    __slots__ = ("ring", "on", "_seq", "added", "add", "view", "_unviewed", "behind")

    def __init__(self, capacity: int) -> None:
        self.ring: deque | None = deque(maxlen=capacity) if capacity > 0 else None
        self.on = self.ring is not None  # (an attribute, not a property: read per task)
        self._seq = 0  # events absorbed so far (the ring holds the last ones)
        #: a reader fed every batch absorbed (the state view, views.py), or None; fed when
        #: the head has time (``feed_view``), or before anyone reads it (``sync``)
        self.view: Any = None
        self._unviewed: deque[list[tuple]] = deque()  # batches absorbed, not yet fed to it
        self.behind = 0  # events in them
        #: added, not absorbed yet (the per-task sites, behind ``if events.on``, append here
        #: directly: a list's append is the interpreter's quickest call; ``add`` is not)
        self.added: list[tuple] = []
        #: add(("EventType", at, field, ...)): record one event (absorbed in batches)
        self.add: Callable[[tuple], None] = (self.added.append if capacity > 0
                                             else deque(maxlen=0).append)  # (a sink)

    def emit(self, event: Any) -> None:
        """Record one typed event (off the hot path; ``add`` is the cheap way)."""
        self.add((type(event).__name__, *event))

    def absorb(self) -> None:
        """Move the events added since the last call into the ring."""
        new = self.added
        if not new:
            return
        ring = self.ring
        assert ring is not None
        ring.extend(new)
        self._seq += len(new)
        if self.view is None:
            new.clear()
            return
        self._unviewed.append(new)  # (the view's batch: the same tuples, no copy)
        self.behind += len(new)
        self.added = []
        self.add = self.added.append

    def feed_view(self, deadline: float | None = None,
                  clock: Callable[[], float] | None = None) -> None:
        """Hand the view the batches it has not seen, in order: all of them, or until
        ``clock()`` passes ``deadline`` (checked after each batch). A bug in the view
        raises to the facade, which reports it; that batch is not fed again."""
        batches = self._unviewed
        while batches:
            batch = batches.popleft()
            self.behind -= len(batch)
            self.view.consume(batch)
            if deadline is not None and clock is not None and clock() >= deadline:
                return

    def sync(self) -> None:
        """Everything recorded so far into the ring, and into the view (for its readers)."""
        self.absorb()
        if self.behind:
            self.feed_view()

    @property
    def seq(self) -> int:
        """Events recorded so far: the number of the latest."""
        self.absorb()
        return self._seq

    def kept_counts(self) -> dict[str, int]:
        """Events per kind (type name) among those kept (the last ``capacity``)."""
        self.absorb()
        return dict(Counter(map(_kind_of, self.ring or ())))

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
        types = EVENT_TYPES
        out = [types[raw[0]](*raw[1:]) for raw in itertools.islice(ring, start, start + limit)]
        return first + start + len(out), out

    def raw_since(self, seq: int) -> tuple[int, list[tuple], int]:
        """The recorded events after number ``seq`` as they are kept (plain tuples, kind
        first: no typed event is made, for readers that fold many, such as the metrics), the
        number of the latest, and how many after ``seq`` fell out of the ring unread."""
        self.absorb()
        ring = self.ring
        if ring is None or seq >= self._seq:
            return self._seq, [], 0
        first = self._seq - len(ring)  # the number before the oldest kept
        start = max(seq, first) - first
        return self._seq, list(itertools.islice(ring, start, None)), max(0, first - seq)

    def check_invariants(self) -> None:
        """Raise AssertionError unless every event kept is of a known kind with its fields."""
        for raw in itertools.chain(self.ring or (), self.added):
            wrong = check_raw(raw)
            if wrong is not None:
                raise AssertionError(wrong)

    def summary(self) -> dict:
        """For ``status``: the latest event's number, how many are kept, and their kinds."""
        ring = self.ring.maxlen if self.ring is not None else 0
        return {"seq": self.seq, "ring": ring, "kept": self.kept_counts()}


def as_lists(events: list) -> list:
    """Events as plain lists for the wire: ``[kind, field, ...]``."""
    return [[type(e).__name__, *e] for e in events]
