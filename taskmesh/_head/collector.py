"""The head's garbage collection: full collections only while the head is idle.

The head holds a record per pending task and per live object: a million tasks in flight are
several million Python objects. CPython runs a full (generation 2) collection whenever that
generation grew by a quarter, and a full collection walks every object: under a
million-task flood it took 0.1 s, then 0.5 s, then 1.4 s, and during that pause nothing
else runs, not even the handling of heartbeats (the head then took its own node for dead).

So the head never lets CPython start a full collection by itself. Young objects are still
collected automatically (those collections are cheap: they walk only young objects), which
frees most cyclic garbage; the head's records are freed by reference counting when tasks end.
They run after ``YOUNG`` allocations rather than CPython's 700: a task's records, messages and
events live across a few rounds, and at 700 each young collection walked them again and
again (10,000: 5,500 fewer instructions per task of a no-op flood in ``head_replay`` under
callgrind, about 3.5%, for young collections of a few tenths of a millisecond). 30,000 since
the event stream keeps three tuples per task alive a while (the ring): each survivor brings
the next young collection nearer, and each collection walks every task in flight again; at
10,000, collections cost the head 2,400 instructions per call of an actor flood with the
stream on, ~900 with it off (``benchmarks.head_instructions --actor``: 196,089 and 187,440
instructions per call; at 30,000, 191,047 and 184,959). A
full collection runs from the head's loop, when it has been idle for ``IDLE_S`` and the last
one is ``EVERY_S`` old, or under load that never ends, once ``FORCED_S`` passed (a bounded
pause, rarely). Each one that takes longer than 0.1 s is logged.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

#: the head must have been idle this long for a full collection
IDLE_S = 1.0
#: at most one full collection this often while idle
EVERY_S = 30.0
#: under load that never ends, a full collection anyway this often
FORCED_S = 600.0

_NEVER = 2**31 - 1
#: allocations (less deallocations) between two young collections
YOUNG = 30_000


class Collector:
    """When to run full collections (``gc`` is process-wide: one per process)."""

    def __init__(self, now: float) -> None:
        self.last_full = now
        self.pauses = 0  # full collections run
        self.longest_s = 0.0

    def start(self) -> None:
        """Take full collections out of CPython's hands (young ones stay automatic)."""
        _gen0, gen1, _gen2 = gc.get_threshold()
        gc.set_threshold(YOUNG, gen1, _NEVER)
        gc.collect()  # what start-up left behind
        gc.freeze()  # (imports and start-up state: never garbage, never walked again)

    def due(self, now: float, idle_since: float | None) -> bool:
        if now - self.last_full >= FORCED_S:
            return True
        return (idle_since is not None and now - idle_since >= IDLE_S
                and now - self.last_full >= EVERY_S)

    def collect(self) -> float:
        """Run a full collection now; return how long it took."""
        start = time.perf_counter()
        found = gc.collect()
        took = time.perf_counter() - start
        self.last_full = time.monotonic()
        self.pauses += 1
        self.longest_s = max(self.longest_s, took)
        if took > 0.1:
            log.info("full garbage collection: %.2f s, %d objects freed", took, found)
        return took
