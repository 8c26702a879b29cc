"""What one process knows and holds of objects: ref counts, borrows, batched releases, values
that came in, waits, and a driver's credits. Sans-IO: no sockets, threads, locks or clock.

    ObjectRef made / unpickled ──new_refs / borrow──▶ counts (+ Borrow for the head, once)
    ObjectRef.__del__ ──died──▶ dead queue ──collect_dead(now), when release_due(now)──▶ Release
    get()/wait() ──want──▶ Subscribe for what will not come by itself ──apply_values──▶ values
    .remote() ──take──▶ credits ◀──give── the head's Credit

The client core (``core.py``) owns the socket, the locks and the threads; it calls in here and
sends the messages these methods return, in the order they return them. Time is an argument.

Counting: every ObjectRef instance counts in its process; when the last one for an object
dies, the process tells the head (Release). The owner's release (this process owns an object
whose id starts with its ``prefix``), every borrower's (a process that unpickled a ref of
another owner says Borrow first), the pending tasks that use the object and the objects whose
values contain a ref to it all keep it alive at the head. A ref pickled outside taskmesh
"escapes": its object is never released by this process, trading a leak for safety.

Release batching: dead refs wait in a queue. They are collected when ``_RELEASE_BATCH`` piled
up, or when ``_RELEASE_EVERY_S`` passed since the last collection (``release_soon`` makes the
next one due at once: the housekeeper waited the delay already, a large put needs the room);
never while the worker holds results back that may hold refs (the caller says so): a Release
may not overtake them. ``died`` only appends to a deque: it is called from ``__del__``, in any
thread, even inside garbage collection, and must never block.
"""

from __future__ import annotations

import collections
import itertools
from typing import Callable, Iterable, Sequence

from .. import _protocol as P

#: dead refs are released to the head in batches: when this many piled up, or this often
_RELEASE_BATCH = 256
_RELEASE_EVERY_S = 0.2


class RefTable:
    """One process's object bookkeeping (see the module docstring). The caller serializes
    the calls that change counts (``new_refs``, ``borrow``, ``collect_dead``) with one lock;
    ``died`` needs none."""

    def __init__(self, prefix: bytes) -> None:
        #: ids this process makes start with it: objects with it are ours to release
        self.prefix = prefix
        self._counter = itertools.count(1)
        #: values that came in (pushed for our tasks, subscribed, put here)
        self.values: dict[bytes, P.SerializedObject] = {}
        #: ready at the head, value not pushed (large, or not needed by a wait)
        self.ready_remote: set[bytes] = set()
        #: error values received so far (a get() of a list watches it)
        self.errors_in = 0
        #: our tasks' results not announced yet (they come by themselves)
        self.pending_owned: set[bytes] = set()
        #: waiting calls per object (threads may wait for the same one)
        self.wanted: collections.Counter[bytes] = collections.Counter()
        #: objects the head was asked to send (Subscribe)
        self.subscribed: set[bytes] = set()
        #: live ObjectRef instances per object
        self.counts: dict[bytes, int] = {}
        #: objects whose refs were pickled outside taskmesh: never released
        self.escaped: set[bytes] = set()
        #: others' objects the head heard we hold refs to (Borrow)
        self.borrowed: set[bytes] = set()
        #: refs that died, not counted down yet
        self.dead: collections.deque[bytes] = collections.deque()
        #: the next collection of dead refs is due then (0: at once)
        self.next_release = 0.0

    # ------------------------------------------------------------------ ids

    def next_task_id(self) -> bytes:
        return self.prefix + next(self._counter).to_bytes(8, "big")

    def new_object_id(self) -> bytes:
        return self.next_task_id() + b"\0\0\0\0"

    def owns(self, oid: bytes) -> bool:
        return oid[:8] == self.prefix

    # ------------------------------------------------------------------ counting

    def new_refs(self, oids: Iterable[bytes]) -> None:
        """ObjectRefs were made here for ``oids`` (one each)."""
        counts = self.counts
        for oid in oids:
            counts[oid] = counts.get(oid, 0) + 1

    def borrow(self, oid: bytes) -> P.Borrow | None:
        """A ref was unpickled here. The first ref of another owner's object makes us a
        borrower: return the Borrow the head must hear (in order with everything we send:
        before the result of the task whose arguments held the ref, before we release the
        value it came in). So does a ref to an object we own but already released (it came
        back inside a value)."""
        counts = self.counts
        n = counts.get(oid, 0)
        counts[oid] = n + 1
        if n == 0 and oid not in self.borrowed and oid not in self.escaped:
            self.borrowed.add(oid)
            return P.Borrow([oid])
        return None

    def escape(self, oid: bytes) -> None:
        """A ref to ``oid`` was pickled outside taskmesh: never release it."""
        self.escaped.add(oid)

    def died(self, oid: bytes) -> None:
        """An ObjectRef died (any thread, even inside GC): queued, never blocks."""
        self.dead.append(oid)

    def release_due(self, now: float) -> bool:
        """Dead refs wait and their batch is due (full, or ``_RELEASE_EVERY_S`` passed). The
        caller also holds them back while held results may hold refs."""
        dead = self.dead
        return bool(dead) and (len(dead) >= _RELEASE_BATCH or now >= self.next_release)

    def release_soon(self) -> None:
        """Make the next collection due at once."""
        self.next_release = 0.0

    def collect_dead(self, now: float) -> P.Release | None:
        """Count the dead refs down; forget objects no ref here holds any more; return the
        Release of those the head counts for us (to be sent after what is already queued: a
        queued Submit may still use them). The next batch is due ``_RELEASE_EVERY_S`` on."""
        self.next_release = now + _RELEASE_EVERY_S
        release = []
        dead = self.dead
        counts = self.counts
        while dead:
            oid = dead.popleft()
            n = counts.get(oid, 0) - 1
            if n > 0:
                counts[oid] = n
                continue
            counts.pop(oid, None)
            self.values.pop(oid, None)
            self.pending_owned.discard(oid)
            self.ready_remote.discard(oid)
            self.subscribed.discard(oid)
            if oid in self.escaped:
                continue
            if oid in self.borrowed:
                self.borrowed.discard(oid)
                release.append(oid)
            elif oid[:8] == self.prefix:
                release.append(oid)
        return P.Release(release) if release else None

    def drop_dead(self) -> None:
        """Forget the dead refs without releasing them (a Goodbye releases everything)."""
        self.dead.clear()

    # ------------------------------------------------------------------ values

    def submitted(self, return_ids: Iterable[bytes]) -> None:
        """Our task will make these objects: the head pushes their values by itself."""
        self.pending_owned.update(return_ids)

    def put(self, oid: bytes, value: P.SerializedObject) -> None:
        self.values[oid] = value

    def apply_values(self, items: Sequence[P.ObjectValue]) -> list[P.Subscribe]:
        """The head's ObjectValues: keep the values someone here holds or waits for; return
        the Subscribes to send for objects that are ready without their value, and waited for."""
        values = self.values
        counts = self.counts
        wanted = self.wanted
        out: list[P.Subscribe] = []
        for item in items:
            oid = item.object_id
            self.pending_owned.discard(oid)
            if oid not in counts and oid not in wanted:
                continue  # nobody holds a ref any more
            value = item.value
            if value is not None:
                values[oid] = value
                self.ready_remote.discard(oid)
                if value.is_error:  # a get() of a list fails as soon as one failed
                    self.errors_in += 1
            else:
                self.ready_remote.add(oid)
                if oid in wanted and oid not in self.subscribed:
                    self.subscribed.add(oid)
                    out.append(P.Subscribe([oid]))
        return out

    def rejected(self, object_ids: Iterable[bytes], error: P.SerializedObject) -> int:
        """The head refused the task making ``object_ids``: those held or waited for get
        ``error`` as their value; return how many."""
        failed = 0
        for oid in object_ids:
            if oid in self.counts or oid in self.wanted:
                self.pending_owned.discard(oid)
                self.values[oid] = error
                failed += 1
        self.errors_in += failed
        return failed

    def forget_value(self, oid: bytes) -> None:
        """Drop what we know of ``oid``'s value, to ask the head afresh."""
        self.values.pop(oid, None)
        self.subscribed.discard(oid)
        self.ready_remote.discard(oid)

    # ------------------------------------------------------------------ waits

    def want(self, missing: list[bytes], values_needed: bool = True) -> P.Subscribe | None:
        """A call waits for ``missing``; return the Subscribe for those the head will not send
        by itself: our own results come while pending; anything else (other owners' objects,
        large values, values we dropped and got back through an escaped ref) must be asked for.
        ``values_needed=False`` (a wait()): knowing that it is ready is enough."""
        self.wanted.update(missing)
        subscribed = self.subscribed
        pending_owned = self.pending_owned
        ready_remote = self.ready_remote
        sub = [o for o in missing if o not in subscribed and o not in pending_owned
               and (values_needed or o not in ready_remote)]
        if not sub:
            return None
        subscribed.update(sub)
        return P.Subscribe(sub)

    def unwant(self, missing: list[bytes]) -> None:
        """The call that wanted ``missing`` stopped waiting."""
        wanted = self.wanted
        wanted.subtract(missing)
        for oid in missing:
            if wanted.get(oid, 0) <= 0:
                wanted.pop(oid, None)

    def ready(self, oids: Iterable[bytes]) -> set[bytes]:
        """Those of ``oids`` that are ready (value here, or ready at the head)."""
        values, ready_remote = self.values, self.ready_remote
        return {o for o in oids if o in values or o in ready_remote}

    def arrived(self, missing: list[bytes], fail_fast: bool) -> Callable[[], bool]:
        """A wait predicate: every one of ``missing`` has a value (or, with ``fail_fast``, one
        of them is an error). Values stay once they arrived (the caller holds their refs), so
        it scans each id once, and looks for errors only after one came in."""
        values = self.values
        state = [0, self.errors_in]  # ids known to be present, errors seen so far

        def arrived() -> bool:
            i, n = state[0], len(missing)
            while i < n and missing[i] in values:
                i += 1
            state[0] = i
            if i == n:
                return True
            if fail_fast and self.errors_in != state[1]:
                state[1] = self.errors_in
                return any(v.is_error for v in map(values.get, missing[i:]) if v is not None)
            return False

        return arrived

    # ------------------------------------------------------------------ checks

    def is_empty(self) -> bool:
        """Nothing held, waited for or queued (the state after every ref died and was released)."""
        return not (self.counts or self.values or self.pending_owned or self.ready_remote
                    or self.wanted or self.subscribed or self.dead)

    def check_invariants(self) -> None:
        """Raise AssertionError if the records contradict each other."""
        assert all(n > 0 for n in self.counts.values()), "a count at or below zero"
        assert all(n > 0 for n in self.wanted.values()), "a wait count at or below zero"
        dead = set(self.dead)
        for oid in self.borrowed:  # a borrow lasts while a ref lives (or its death is queued)
            assert oid in self.counts or oid in dead or oid in self.escaped, \
                f"borrowed {oid.hex()} without a ref"
        assert self.errors_in >= 0, "a negative count of errors"
        assert self.next_release >= 0.0


class Credits:
    """A driver's backpressure: tasks it may still submit before it waits for the head's
    Credit (``max_pending_tasks`` in flight at most)."""

    __slots__ = ("limit", "available")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.available = limit

    def take(self) -> bool:
        """One task is submitted; False if it exceeds the limit (the caller waits for Credit)."""
        self.available -= 1
        return self.available >= 0

    def give(self, count: int) -> None:
        """The head's Credit: ``count`` of our tasks ended."""
        self.available += count

    @property
    def ok(self) -> bool:
        """No submission waits for credit."""
        return self.available >= 0

    def check_invariants(self) -> None:
        assert self.available <= self.limit, "more credit than the limit"
