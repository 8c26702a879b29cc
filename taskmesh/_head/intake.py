"""The head's received messages waiting to be handled: liveness first, the rest in slices.

    sockets ──add(peer, msg, arrived)──▶ liveness lane (Heartbeat, ping)  ──▶ handled at once
                                      └▶ bulk lane, in arrival order; a message with a long
                                         list (Submit, Release, Subscribe, ...) cut in slices ──▶
                                         handled for at most a slice of time per loop turn

The head's loop (server.py) reads what its sockets hold, handles the liveness lane, then works
through the bulk lane for at most ``slice_s`` before it schedules, sends, reads again and runs
its timers. So a flood (a million Submits, a Release of a million refs) never keeps the head
from hearing a node's heartbeat or answering a driver's ping for longer than a slice, and the
head reads no more bulk while its lane holds ``max_backlog`` messages: the rest waits in the
senders' queues and socket buffers (backpressure), not in the head's memory.

Order: a peer's bulk messages are handled in the order they came, the slices of one message
one after another. Liveness messages overtake bulk ones; they change nothing the bulk ones
read (a heartbeat refreshes its node's clock, a ping is answered with an empty reply). One
exception: a peer's liveness messages never overtake its own Hello. A node sends its first
heartbeat right after its Hello; a busy head that handled the heartbeat first took the node
for a stranger and refused it (seen with the head under valgrind: a slow head refused every
node). While a peer's Hello waits in the bulk lane, its liveness messages queue behind it.

Loop lag, how long a message waited between being read and being handled, is kept in a
histogram (``LagHistogram``) for ``taskmesh status`` and the coming metrics.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any

from .. import _protocol as P

#: messages with a list longer than this are handled in slices of this many items
SLICE_ITEMS = 2000

#: the message types cut in slices, and the list field(s) that are cut (in field order)
_SPLITTABLE: dict[type, tuple[str, ...]] = {
    P.Submit: ("tasks",),
    P.Put: ("objects",),
    P.Subscribe: ("object_ids",),
    P.Release: ("object_ids",),
    P.Borrow: ("object_ids",),
    P.ObjectLocations: ("added", "removed"),
}


_HEARTBEAT, _INFO, _HELLO = P.Heartbeat, P.InfoRequest, P.Hello


def is_liveness(msg: Any) -> bool:
    """Messages that only say a peer is alive (or ask whether the head is)."""
    t = type(msg)
    return t is P.Heartbeat or (t is P.InfoRequest and msg.request_id == 0
                                and msg.what == "ping")


def slices(msg: Any, size: int = SLICE_ITEMS) -> list:
    """``msg`` as messages of the same type with at most ``size`` list items each, in order
    (itself if it is small or of a type that is not cut)."""
    fields = _SPLITTABLE.get(type(msg))
    if fields is None or sum(len(getattr(msg, f)) for f in fields) <= size:
        return [msg]
    out = []
    empty = {f: [] for f in fields}
    for f in fields:
        items = getattr(msg, f)
        for i in range(0, len(items), size):
            out.append(msg._replace(**{**empty, f: items[i:i + size]}))
    return out


#: a pseudo-message in the bulk lane: the peer's connection closed (handled in its turn,
#: after the messages it sent before)
DISCONNECTED = object()


class Intake:
    """The two lanes of received messages."""

    __slots__ = ("liveness", "bulk", "max_backlog", "_appended", "_greeting")

    def __init__(self, max_backlog: int) -> None:
        self.liveness: deque = deque()  # (peer, msg, arrived)
        self.bulk: deque = deque()  # (peer, msg, arrived); its reader pops from the left
        #: read no more bulk while this many messages (slices) wait
        self.max_backlog = max_backlog
        self._appended = 0  # entries ever put in the bulk lane (taken: this - len(bulk))
        #: peers whose Hello may still wait in the bulk lane -> that entry's number
        self._greeting: dict[bytes, int] = {}

    def add(self, peer: bytes, msg: Any, arrived: float) -> None:
        t = type(msg)
        if t is _HEARTBEAT or (t is _INFO and msg.request_id == 0 and msg.what == "ping"):
            greeting = self._greeting
            if greeting and peer in greeting:
                if greeting[peer] >= self._appended - len(self.bulk):  # its Hello waits
                    self.bulk.append((peer, msg, arrived))
                    self._appended += 1
                    return
                del greeting[peer]
            self.liveness.append((peer, msg, arrived))
        elif t not in _SPLITTABLE:  # (most messages: no list to cut)
            if t is _HELLO:
                self._greet(peer)
            self.bulk.append((peer, msg, arrived))
            self._appended += 1
        else:
            parts = slices(msg)
            self.bulk.extend((peer, part, arrived) for part in parts)
            self._appended += len(parts)

    def _greet(self, peer: bytes) -> None:
        greeting = self._greeting
        if len(greeting) >= 64:  # forget those whose Hello was taken (and never beat since)
            taken = self._appended - len(self.bulk)
            for p in [p for p, n in greeting.items() if n < taken]:
                del greeting[p]
        greeting[peer] = self._appended

    def closed(self, peer: bytes, arrived: float) -> None:
        """The peer's connection ended: say so after what it sent before."""
        self.bulk.append((peer, DISCONNECTED, arrived))
        self._appended += 1

    @property
    def wants_more(self) -> bool:
        """True while the head should read more bulk from its sockets."""
        return len(self.bulk) < self.max_backlog

    def __bool__(self) -> bool:
        return bool(self.liveness or self.bulk)


class LagHistogram:
    """How long messages waited between being read and being handled: counts in buckets
    (0.1 ms to 10 s, about four per doubling), the maximum, and percentiles read from them
    (each the upper edge of its bucket, so never below the truth)."""

    #: bucket upper edges in seconds; the last bucket takes everything above
    EDGES: tuple[float, ...] = tuple(1e-4 * 2 ** (i / 4) for i in range(67))

    __slots__ = ("counts", "total", "max")

    def __init__(self) -> None:
        self.counts = [0] * (len(self.EDGES) + 1)
        self.total = 0
        self.max = 0.0

    def add(self, lag: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.EDGES, lag)] += n
        self.total += n
        if lag > self.max:
            self.max = lag

    def percentile(self, p: float) -> float:
        """The lag ``p`` percent of messages did not exceed (0 if none was recorded)."""
        if not self.total:
            return 0.0
        want = p / 100 * self.total
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= want and c:
                return self.EDGES[i] if i < len(self.EDGES) else self.max
        return self.max

    def summary(self) -> dict:
        """For ``taskmesh status``: p50, p99 and the maximum in ms, and the count. A
        percentile is its bucket's upper bound, so never more than the maximum seen."""
        top = self.max
        return {"p50_ms": round(min(self.percentile(50), top) * 1e3, 2),
                "p99_ms": round(min(self.percentile(99), top) * 1e3, 2),
                "max_ms": round(top * 1e3, 2), "messages": self.total}
