"""The bookkeeping of one node's object store, as a sans-IO state machine.

(Why one class of ~560 lines: every transition below moves an object between memory, the
spill queue and the wait queue, which share one free-range accounting; split, each half
would have to keep the other's counts.)

    client request ──create/seal/abort/pin/unpin/delete/client_gone──▶ StoreState ──▶ [commands]
    finished I/O   ──spilled/restored, spill_failed/restore_failed─────▶ StoreState ──▶ [commands]
    clock          ──tick(now)─────────────────────────────────────────▶ StoreState ──▶ [commands]

Every method returns a list of commands (small frozen dataclasses below) for the I/O shell,
which owns the shared memory and the spill files and talks to the clients: answer a client
(``Created``, ``CreateFailed``, ``Pinned``, ``PinFailed``, ``Waiting``), write or read a spill
file (``Spill``, ``Restore``; the shell reports back with ``spilled``/``restored``, or with
``spill_failed``/``restore_failed`` when the file I/O failed), or forget an object (``Freed``). No shared memory, files, sockets, threads or clocks here: time comes in as an
argument, and unit tests drive this class directly.

Life of an object::

    create ─▶ waiting ─(space)─▶ created ─seal─▶ in memory ─(Spill)─▶ spilling ─spilled─▶ on disk
                │                  │              ▲    │                                    ▲  │
                │                  │              │    └──── evicted: has a disk copy ────────┘  │
                │                  │              └─── restored ── restoring ◀─(space)─ pin ───┘
                └──────────────────┴─ abort, creator gone, time-out ─▶ forgotten

A deleted object is forgotten (``Freed``) once nobody pins it and no I/O on it is in flight.

Policy: a ``create`` or a restore (``pin`` of an object on disk) that does not fit waits in one
FIFO queue; while the queue is not empty only its head may allocate, so a large request is not
starved by small ones. To make room for the head, the store picks sealed, unpinned, in-memory
objects in least-recently-used order (an object's use is its seal, and the release of its last
pin: a pinned object is never a candidate) and stops as soon as freeing them would leave a free
*range* large enough: the arena is contiguous, so total free bytes mean nothing under
fragmentation. Candidates with a disk copy are dropped from memory at once; the others get
``Spill`` and the request waits for the ``spilled`` reports. If even every candidate would not
make room, nothing is spilled: the request waits for pins to be released, and fails after
``create_timeout_s`` with a message naming the sizes involved. Spill files are kept until the
object is deleted, so an object restored once is evicted again without I/O. An object is freed
(``Freed``) once the cluster deleted it, it is sealed (or aborted), nobody pins it or waits to pin
it, and no spill or restore of it is in flight. Every object the store accepted ends with exactly
one ``Freed`` or ``CreateFailed``.

Failed I/O: a spill that fails (disk full, permissions, I/O error) leaves the object in memory,
as if it had never been chosen; the shell removes any partial file itself before it reports, so
no spill file is assumed to exist. The waiting requests are planned again without that object:
other candidates are spilled if they can make room, else the requests wait and time out as
above (their message then names the spill failure). So that a broken disk does not cause a
tight loop of failing spills, an object whose spill failed is not chosen again until some spill
succeeds (the disk works again: every such mark is cleared) or ``spill_retry_s`` passed on the
store's clock (the ``create``/``tick`` times), whichever comes first. A restore that fails loses
the object: its waiting pins get ``PinFailed`` naming the object and the error, it is freed
(``Freed`` with ``on_disk``, so the shell removes the file), and later pins of its id get
``PinFailed`` saying it was lost (until the id is deleted or created again). An ``abort`` with a
reason (the shell's fetch of the object from other nodes failed) and ``remember_lost`` (a fetch
that could not even start) are remembered the same way, so a reader learns why.

Methods raise ValueError, changing nothing, for requests that cannot make sense (sealing an
object that is not being created, unpinning without a pin, an I/O report nobody asked for): the
shell turns that into an error reply or a log line.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .allocator import Allocator

__all__ = [
    "ClientId", "Command", "Created", "CreateFailed", "Freed", "ObjectInfo", "PinFailed",
    "Pinned", "Restore", "Spill", "StoreState", "Waiting",
]

#: The shell's name for a connected client (e.g. its peer identity).
ClientId = bytes

DEFAULT_CREATE_TIMEOUT_S = 10.0
DEFAULT_SPILL_RETRY_S = 10.0
#: ids of lost objects remembered for their ``PinFailed`` (oldest forgotten first)
MAX_LOST = 10_000

# I/O in flight for an object
_SPILL, _RESTORE = "spill", "restore"


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Created:
    """Tell ``client``: write the object's ``size`` bytes at ``offset``, then seal it."""

    object_id: bytes
    client: ClientId
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class CreateFailed:
    """Tell ``client`` its create failed; ``reason`` is meant for the user. The object is forgotten."""

    object_id: bytes
    client: ClientId
    reason: str


@dataclass(frozen=True, slots=True)
class Pinned:
    """Tell ``client`` it may read the object at ``offset`` until it unpins it (one per ``pin``)."""

    object_id: bytes
    client: ClientId
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class PinFailed:
    """Tell ``client`` its pin was refused: the object is not here (any more) or could not be restored."""

    object_id: bytes
    client: ClientId
    reason: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """Tell ``client`` its create or pin waits (for space, for a restore or for the seal); the answer follows."""

    object_id: bytes
    client: ClientId


@dataclass(frozen=True, slots=True)
class Spill:
    """Write ``size`` bytes at ``offset`` to the object's spill file, then call ``spilled``.

    The range stays allocated until then; readers may pin the object meanwhile. If the write
    fails, remove any partial file and call ``spill_failed`` instead.
    """

    object_id: bytes
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Restore:
    """Read the object's spill file into ``size`` bytes at ``offset``, then call ``restored``.

    Keep the spill file: the object may be evicted again, and that then costs no I/O. If the
    read fails, call ``restore_failed`` instead (a ``Freed`` then tells to remove the file).
    """

    object_id: bytes
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Freed:
    """The object is gone from the store: delete its spill file if ``on_disk``.

    ``offset`` is the memory range it held until now, or None; the store may already have
    handed that range out again in the same list of commands.
    """

    object_id: bytes
    offset: int | None
    on_disk: bool


Command = Created | CreateFailed | Pinned | PinFailed | Waiting | Spill | Restore | Freed


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A snapshot of one object, for the shell and tests (see :meth:`StoreState.info`).

    ``state`` is one of "waiting" (for space to be created), "created" (being written),
    "in memory", "spilling", "on disk" or "restoring". ``creator``: the client writing it,
    None once sealed.
    """

    object_id: bytes
    size: int
    state: str
    offset: int | None
    on_disk: bool
    pins: int
    deleted: bool
    creator: ClientId | None = None


# --------------------------------------------------------------------------- records


class _Object:
    __slots__ = ("object_id", "size", "block", "creator", "sealed", "offset", "on_disk", "io",
                 "pins", "pending", "deleted")

    def __init__(self, object_id: bytes, size: int, block: int, creator: ClientId) -> None:
        self.object_id = object_id
        self.size = size  # bytes the creator asked for
        self.block = block  # bytes it occupies in the arena (rounded up)
        self.creator: ClientId | None = creator  # None once sealed
        self.sealed = False
        self.offset: int | None = None  # in memory (or being restored) at this offset
        self.on_disk = False  # a complete spill file exists
        self.io: str | None = None  # _SPILL or _RESTORE while the shell works on it
        self.pins: dict[ClientId, int] = {}  # granted pins per client
        self.pending: dict[ClientId, int] = {}  # pins waiting for the seal or a restore
        self.deleted = False  # the cluster no longer references it

    @property
    def readable(self) -> bool:
        """A pin can be granted now."""
        return self.sealed and self.offset is not None and self.io != _RESTORE

    @property
    def evictable(self) -> bool:
        """May leave memory to make room (see the module docstring)."""
        return (self.sealed and self.offset is not None and self.io is None and not self.pins
                and not self.pending and not self.deleted)

    @property
    def freeable(self) -> bool:
        return (self.deleted and self.sealed and self.io is None and not self.pins
                and not self.pending)

    @property
    def state(self) -> str:
        if not self.sealed:
            return "created" if self.offset is not None else "waiting"
        if self.io == _SPILL:
            return "spilling"
        if self.io == _RESTORE:
            return "restoring"
        return "in memory" if self.offset is not None else "on disk"


# --------------------------------------------------------------------------- the state machine


class StoreState:
    """One node store's objects, pins, waiting requests and spill decisions (see the module docstring).

    ``capacity``: bytes of the shared-memory arena. ``alignment``: every object starts on a
    multiple of it. ``create_timeout_s``: how long a create or restore may wait for space.
    ``spill_retry_s``: how long an object whose spill failed is not chosen for spilling again,
    unless another spill succeeds first.
    """

    def __init__(self, capacity: int, *, alignment: int = 64,
                 create_timeout_s: float = DEFAULT_CREATE_TIMEOUT_S,
                 spill_retry_s: float = DEFAULT_SPILL_RETRY_S) -> None:
        if create_timeout_s < 0:
            raise ValueError(f"create_timeout_s must be >= 0, not {create_timeout_s!r}")
        if not spill_retry_s > 0:
            raise ValueError(f"spill_retry_s must be > 0, not {spill_retry_s!r}")
        self.capacity = capacity
        self.create_timeout_s = create_timeout_s
        self.spill_retry_s = spill_retry_s
        self._alloc = Allocator(capacity, alignment)
        self._objects: dict[bytes, _Object] = {}
        self._by_client: dict[ClientId, set[bytes]] = {}  # objects a client pins, awaits or creates
        # creates and restores waiting for space, FIFO: object id -> deadline
        self._waiting: dict[bytes, float] = {}
        # evictable objects, least recently used first
        self._lru: OrderedDict[bytes, None] = OrderedDict()
        self._spilling: set[bytes] = set()
        self._restoring: set[bytes] = set()
        # objects whose spill failed -> until when they are not chosen again (see the docstring)
        self._spill_failed: dict[bytes, float] = {}
        self._last_spill_error = ""  # of the latest failed spill, while any mark is set
        # ids of objects whose restore failed -> why (for later pins), oldest first
        self._lost: OrderedDict[bytes, str] = OrderedDict()
        self._pinned_bytes = 0  # arena bytes of objects with at least one granted pin
        self._num_pinned = 0  # objects with at least one granted pin
        self._disk_bytes = 0  # bytes in spill files
        self._num_on_disk = 0  # objects with a spill file
        self._now = 0.0  # latest time seen (create, tick): restores start their wait then
        self._totals = {"created": 0, "create_failed": 0, "spills": 0, "restores": 0,
                        "evicted_without_io": 0, "freed": 0, "spill_failures": 0,
                        "restore_failures": 0}

    # ------------------------------------------------------------------ client requests

    def create(self, object_id: bytes, size: int, client: ClientId, now: float) -> list[Command]:
        """``client`` wants to write a new object of ``size`` bytes.

        Answers ``Created`` now, or ``Waiting`` (perhaps with ``Spill``s) and ``Created`` or
        ``CreateFailed`` later, or ``CreateFailed`` now if the id exists or the object could
        never fit.
        """
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"create({object_id.hex()}): size must be a non-negative int, not {size!r}")
        self._now = max(self._now, now)
        if object_id in self._objects:
            self._totals["create_failed"] += 1
            return [CreateFailed(object_id, client,
                                 f"object {object_id.hex()} already exists in this node's object store")]
        block = self._alloc.block_size(size)
        if block > self.capacity:
            self._totals["create_failed"] += 1
            return [CreateFailed(object_id, client, (
                f"cannot create object {object_id.hex()} of {size} bytes: it is larger than this "
                f"node's object store ({self.capacity} bytes). Give the store more memory, or "
                f"split the value into smaller objects."))]
        self._lost.pop(object_id, None)  # a new object under a lost one's id
        obj = _Object(object_id, size, block, client)
        self._objects[object_id] = obj
        self._index(client, object_id)
        self._waiting[object_id] = now + self.create_timeout_s
        out: list[Command] = []
        self._serve(out)
        if obj.offset is None:
            out.append(Waiting(object_id, client))
        return out

    def seal(self, object_id: bytes) -> list[Command]:
        """The creator finished writing: the object becomes immutable and readable."""
        obj = self._objects.get(object_id)
        if obj is None or obj.sealed or obj.offset is None:
            state = "unknown" if obj is None else obj.state
            raise ValueError(f"seal({object_id.hex()}): only a created object can be sealed; "
                             f"this one is {state}")
        creator = obj.creator
        assert creator is not None
        obj.sealed = True
        obj.creator = None
        self._unindex(creator, obj)
        out: list[Command] = []
        self._totals["created"] += 1
        self._grant_pending(obj, out)
        self._settle(obj, out)
        self._serve(out)
        return out

    def abort(self, object_id: bytes, reason: str | None = None) -> list[Command]:
        """The creator gave up (or died) before sealing: forget the object and its space.

        With ``reason`` (e.g. a fetch from other nodes failed), the pins waiting for it fail
        with that reason, and later pins of its id too, as for a lost object (see
        :meth:`remember_lost`), unless it was deleted.
        """
        obj = self._objects.get(object_id)
        if obj is None or obj.sealed:
            state = "unknown" if obj is None else obj.state
            raise ValueError(f"abort({object_id.hex()}): only an unsealed object can be aborted; "
                             f"this one is {state}")
        out: list[Command] = []
        self._forget(obj, out, reason if reason is not None else
                     f"object {object_id.hex()} was aborted by its creator before it was sealed")
        if reason is not None and not obj.deleted:
            self._remember_lost(object_id, reason)
        self._serve(out)
        return out

    def remember_lost(self, object_id: bytes, reason: str) -> None:
        """Pins of ``object_id``, which this store does not hold, fail with ``reason`` from now
        on, until the id is deleted or created again (e.g. a fetch that could not even start).
        ValueError if the store holds the object."""
        if object_id in self._objects:
            raise ValueError(f"remember_lost({object_id.hex()}): the store holds this object")
        self._remember_lost(object_id, reason)

    def pin(self, object_id: bytes, client: ClientId) -> list[Command]:
        """``client`` wants a zero-copy view of the object: ``Pinned`` now or later, or ``PinFailed``.

        An object that is not sealed yet is pinned when it is sealed. An object on disk is
        restored first (making room as for a create); that wait times out like a create's,
        counted from the latest ``create`` or ``tick`` time.
        """
        obj = self._objects.get(object_id)
        if obj is None:
            lost = self._lost.get(object_id)
            if lost is not None:
                return [PinFailed(object_id, client, lost)]
            return [PinFailed(object_id, client, f"object {object_id.hex()} is not in this node's object store")]
        if obj.deleted:
            return [PinFailed(object_id, client,
                              f"object {object_id.hex()} was deleted: the cluster no longer references it")]
        out: list[Command] = []
        self._index(client, object_id)
        if obj.readable:
            self._add_pins(obj, client, 1, out)
        else:
            obj.pending[client] = obj.pending.get(client, 0) + 1
            if obj.sealed and obj.offset is None and object_id not in self._waiting:
                self._waiting[object_id] = self._now + self.create_timeout_s
        # pinning an object that was being spilled may mean a planned hole will not appear
        self._settle(obj, out)
        self._serve(out)
        if obj.pending.get(client):
            out.append(Waiting(object_id, client))
        return out

    def unpin(self, object_id: bytes, client: ClientId) -> list[Command]:
        """``client`` dropped one view of the object."""
        obj = self._objects.get(object_id)
        if obj is None or not obj.pins.get(client):
            raise ValueError(f"unpin({object_id.hex()}): client {client!r} holds no pin on this object")
        out: list[Command] = []
        self._drop_pins(obj, client, 1)
        self._settle(obj, out)
        self._serve(out)
        return out

    def delete(self, object_id: bytes) -> list[Command]:
        """The cluster no longer references the object: free it now, or once pins and I/O are done.

        An object that is still being created is freed when it is sealed or aborted. Deleting an
        unknown or already deleted object does nothing (a lost one is forgotten: later pins say
        it is not here).
        """
        obj = self._objects.get(object_id)
        if obj is None:
            self._lost.pop(object_id, None)
            return []
        if obj.deleted:
            return []
        obj.deleted = True
        out: list[Command] = []
        self._settle(obj, out)
        self._serve(out)
        return out

    def client_gone(self, client: ClientId) -> list[Command]:
        """``client`` disconnected: drop its pins and pending pins, abort what it was creating."""
        out: list[Command] = []
        for object_id in sorted(self._by_client.pop(client, ())):
            obj = self._objects.get(object_id)
            if obj is None:  # forgotten by an earlier abort in this loop
                continue
            if not obj.sealed and obj.creator == client:
                obj.pending.pop(client, None)  # no PinFailed to the client that left
                self._forget(obj, out, f"the creator of object {object_id.hex()} disconnected "
                                       f"before sealing it")
                continue
            self._drop_pins(obj, client, obj.pins.get(client, 0))
            obj.pending.pop(client, None)
            self._settle(obj, out)
        self._serve(out)
        return out

    # ------------------------------------------------------------------ I/O reports and time

    def spilled(self, object_id: bytes) -> list[Command]:
        """The shell finished a ``Spill``: the object's memory is released unless someone pinned it meanwhile."""
        obj = self._objects.get(object_id)
        if obj is None or obj.io != _SPILL:
            raise ValueError(f"spilled({object_id.hex()}): no spill of this object is in flight")
        obj.io = None
        obj.on_disk = True
        self._spilling.discard(object_id)
        self._disk_bytes += obj.size
        self._num_on_disk += 1
        self._totals["spills"] += 1
        self._spill_failed.clear()  # the disk works (again): objects whose spill failed may go
        self._last_spill_error = ""
        if not obj.pins and not obj.deleted:  # a deleted one is freed, offset and all, just below
            self._release_memory(obj)
        out: list[Command] = []
        self._settle(obj, out)
        self._serve(out)
        return out

    def restored(self, object_id: bytes) -> list[Command]:
        """The shell finished a ``Restore``: waiting pins are granted."""
        obj = self._objects.get(object_id)
        if obj is None or obj.io != _RESTORE:
            raise ValueError(f"restored({object_id.hex()}): no restore of this object is in flight")
        obj.io = None
        self._restoring.discard(object_id)
        self._totals["restores"] += 1
        out: list[Command] = []
        self._grant_pending(obj, out)
        self._settle(obj, out)
        self._serve(out)
        return out

    def spill_failed(self, object_id: bytes, reason: str) -> list[Command]:
        """The shell could not write a ``Spill`` (and removed any partial file): the object stays
        in memory and is not chosen for spilling again for a while (see the module docstring);
        waiting requests are planned again without it. ``reason``: the error, for messages."""
        obj = self._objects.get(object_id)
        if obj is None or obj.io != _SPILL:
            raise ValueError(f"spill_failed({object_id.hex()}): no spill of this object is in flight")
        obj.io = None
        self._spilling.discard(object_id)
        self._totals["spill_failures"] += 1
        self._spill_failed[object_id] = self._now + self.spill_retry_s
        self._last_spill_error = f"object {object_id.hex()}: {reason}"
        out: list[Command] = []
        self._settle(obj, out)  # back in the LRU, or freed if deleted meanwhile
        self._serve(out)
        return out

    def restore_failed(self, object_id: bytes, reason: str) -> list[Command]:
        """The shell could not read a ``Restore``: the object is lost. Its waiting pins fail,
        it is freed (``Freed`` with ``on_disk``: remove the file), later pins of it fail."""
        obj = self._objects.get(object_id)
        if obj is None or obj.io != _RESTORE:
            raise ValueError(f"restore_failed({object_id.hex()}): no restore of this object is in flight")
        obj.io = None
        self._restoring.discard(object_id)
        self._totals["restore_failures"] += 1
        message = (f"object {object_id.hex()} was lost: restoring it from its spill file on this "
                   f"node failed: {reason}")
        out: list[Command] = []
        self._forget(obj, out, message)
        if not obj.deleted:
            self._remember_lost(object_id, message)
        self._serve(out)
        return out

    def tick(self, now: float) -> list[Command]:
        """Time passed: fail the creates and restores that waited ``create_timeout_s`` for space."""
        self._now = max(self._now, now)
        out: list[Command] = []
        expired = [oid for oid, deadline in self._waiting.items() if deadline <= now]
        for object_id in expired:
            obj = self._objects[object_id]
            reason = self._no_room(obj)
            if not obj.sealed:
                assert obj.creator is not None
                self._totals["create_failed"] += 1
                out.append(CreateFailed(object_id, obj.creator, reason))
                self._forget(obj, out, f"object {object_id.hex()} could not be created: {reason}",
                             freed=False)
            else:
                del self._waiting[object_id]
                for client, n in obj.pending.items():
                    out.extend([PinFailed(object_id, client, reason)] * n)
                clients = list(obj.pending)
                obj.pending.clear()
                for client in clients:
                    self._unindex(client, obj)
                self._settle(obj, out)
        self._serve(out)
        return out

    # ------------------------------------------------------------------ queries

    def object_ids(self) -> list[bytes]:
        """Ids of every object the store knows, in any state (e.g. to delete them all)."""
        return list(self._objects)

    def info(self, object_id: bytes) -> ObjectInfo | None:
        """A snapshot of one object, or None if the store does not hold it."""
        obj = self._objects.get(object_id)
        if obj is None:
            return None
        return ObjectInfo(object_id, obj.size, obj.state, obj.offset, obj.on_disk,
                          sum(obj.pins.values()), obj.deleted, obj.creator)

    def pins_pending(self, object_id: bytes, client: ClientId) -> int:
        """Pins ``client`` asked for on the object that wait for its seal or restore."""
        obj = self._objects.get(object_id)
        return obj.pending.get(client, 0) if obj is not None else 0

    @property
    def num_waiting(self) -> int:
        """Creates and pins waiting for room (the loop ticks while there are any)."""
        return len(self._waiting)

    def stats(self) -> dict[str, int]:
        """Gauges and running totals, O(1).

        Memory figures are arena bytes (object sizes rounded up to the alignment); ``disk_bytes``
        counts object bytes in spill files (an object restored from disk keeps its file).
        """
        return {
            "capacity": self.capacity,
            "used_bytes": self._alloc.used,
            "pinned_bytes": self._pinned_bytes,
            "largest_free": self._alloc.largest_free,
            "disk_bytes": self._disk_bytes,
            "num_objects": len(self._objects),
            "num_in_memory": self._alloc.num_blocks,
            "num_pinned": self._num_pinned,
            "num_on_disk": self._num_on_disk,
            "num_evictable": len(self._lru),
            "num_waiting": len(self._waiting),
            "num_spilling": len(self._spilling),
            "num_restoring": len(self._restoring),
            "num_spill_failed": len(self._spill_failed),  # marks, some perhaps expired
            "num_lost": len(self._lost),
            **{f"total_{name}": n for name, n in self._totals.items()},
        }

    def check(self) -> None:
        """Raise AssertionError unless every record, index and counter agrees. O(n): for tests."""
        self._alloc.check()
        in_memory = 0
        pinned = disk = num_pinned = num_on_disk = 0
        index: dict[ClientId, set[bytes]] = {}
        for oid, obj in self._objects.items():
            name = f"object {oid.hex()} ({obj.state})"
            _require(obj.object_id == oid, f"{name} is filed under the wrong id")
            if obj.offset is not None:
                in_memory += 1
                _require(self._alloc.size_of(obj.offset) == obj.block,
                         f"{name} does not own the block at its offset")
            if obj.sealed:
                _require(obj.creator is None, f"{name} is sealed but still has a creator")
                _require(obj.offset is not None or obj.on_disk, f"{name} is neither in memory nor on disk: lost")
            else:
                _require(obj.creator is not None and not obj.on_disk and obj.io is None and not obj.pins,
                         f"{name} is unsealed but has a disk copy, I/O or pins")
            _require(all(n > 0 for n in obj.pins.values()), f"{name} has a zero pin count")
            _require(all(n > 0 for n in obj.pending.values()), f"{name} has a zero pending count")
            _require(not obj.pins or obj.readable, f"{name} is pinned but not readable")
            _require(not obj.pending or not obj.readable, f"{name} has pins waiting although readable")
            _require((obj.io == _SPILL) == (oid in self._spilling), f"{name}: spilling set out of step")
            _require((obj.io == _RESTORE) == (oid in self._restoring), f"{name}: restoring set out of step")
            if obj.io == _SPILL:
                _require(obj.offset is not None and not obj.on_disk, f"{name} spills but is not in memory")
            if obj.io == _RESTORE:
                _require(obj.offset is not None and obj.on_disk, f"{name} restores without space or file")
            queued = obj.offset is None and (not obj.sealed or bool(obj.pending))
            _require(queued == (oid in self._waiting), f"{name}: waiting queue out of step")
            _require(obj.evictable == (oid in self._lru), f"{name}: LRU out of step")
            _require(not obj.freeable, f"{name} should have been freed")
            if obj.pins:
                pinned += obj.block
                num_pinned += 1
            if obj.on_disk:
                disk += obj.size
                num_on_disk += 1
            for client in (*obj.pins, *obj.pending, *([obj.creator] if obj.creator is not None else [])):
                index.setdefault(client, set()).add(oid)
        for oid in self._spill_failed:
            obj = self._objects.get(oid)  # type: ignore[assignment]
            _require(obj is not None and obj.sealed and obj.offset is not None and not obj.on_disk
                     and obj.io is None, f"object {oid.hex()}: marked as failed to spill, but not in memory only")
        _require(not self._lost.keys() & self._objects.keys(), "a lost object is still in the store")
        _require(bool(self._spill_failed) == bool(self._last_spill_error), "spill error out of step")
        _require(in_memory == self._alloc.num_blocks, "the arena holds blocks that no object owns")
        _require(index == self._by_client, "the per-client index is out of step")
        _require(self._pinned_bytes == pinned, f"pinned bytes: counted {self._pinned_bytes}, actual {pinned}")
        _require(self._disk_bytes == disk, f"disk bytes: counted {self._disk_bytes}, actual {disk}")
        _require(self._num_pinned == num_pinned, f"pinned objects: counted {self._num_pinned}, actual {num_pinned}")
        _require(self._num_on_disk == num_on_disk,
                 f"objects on disk: counted {self._num_on_disk}, actual {num_on_disk}")
        _require(self._alloc.used <= self.capacity, "more bytes in use than the capacity")

    # ------------------------------------------------------------------ internals

    def _serve(self, out: list[Command]) -> None:
        """Give space to waiting requests in FIFO order; make room for the first that does not fit."""
        while self._waiting:
            object_id = next(iter(self._waiting))
            obj = self._objects[object_id]
            offset = self._alloc.alloc(obj.size)
            if offset is None:
                self._make_room(obj.block, out)  # may drop objects with a disk copy at once
                offset = self._alloc.alloc(obj.size)
                if offset is None:
                    return
            del self._waiting[object_id]
            obj.offset = offset
            if obj.sealed:
                obj.io = _RESTORE
                self._restoring.add(object_id)
                out.append(Restore(object_id, offset, obj.size))
            else:
                assert obj.creator is not None
                out.append(Created(object_id, obj.creator, offset, obj.size))

    def _make_room(self, need: int, out: list[Command]) -> None:
        """Spill (or drop) least recently used objects until a free range of ``need`` bytes will appear.

        Costs O(spills in flight + victims). When even every candidate would not make room, it
        looks at every candidate, again after each event, while the request waits.
        """
        plan = self._alloc.what_if()
        for object_id in self._spilling:  # in flight: these free their memory when done
            obj = self._objects[object_id]
            if not obj.pins:
                plan.free(obj.offset)  # type: ignore[arg-type]
        if plan.largest_free >= need:
            return
        victims: list[_Object] = []
        expired: list[bytes] = []
        for object_id in self._lru:
            until = self._spill_failed.get(object_id)
            if until is not None:
                if self._now < until:
                    continue  # its spill failed lately: not again yet
                expired.append(object_id)
            obj = self._objects[object_id]
            plan.free(obj.offset)  # type: ignore[arg-type]
            victims.append(obj)
            if plan.largest_free >= need:
                break
        else:
            return  # spilling every candidate would not make room: wait for pins to go
        for object_id in expired:
            del self._spill_failed[object_id]
        if not self._spill_failed:
            self._last_spill_error = ""
        for obj in victims:
            del self._lru[obj.object_id]
            if obj.on_disk:
                self._release_memory(obj)
                self._totals["evicted_without_io"] += 1
            else:
                obj.io = _SPILL
                self._spilling.add(obj.object_id)
                out.append(Spill(obj.object_id, obj.offset, obj.size))  # type: ignore[arg-type]

    def _settle(self, obj: _Object, out: list[Command]) -> None:
        """After any change to ``obj``: free it if it may go, keep the LRU in step."""
        if obj.sealed and not obj.pending:
            self._waiting.pop(obj.object_id, None)  # nobody waits for its restore any more
        if obj.freeable:
            self._forget(obj, out, "")
        elif obj.evictable:
            if obj.object_id not in self._lru:
                self._lru[obj.object_id] = None  # most recently used
        else:
            self._lru.pop(obj.object_id, None)

    def _forget(self, obj: _Object, out: list[Command], pin_reason: str, freed: bool = True) -> None:
        """Remove ``obj`` entirely: fail its waiting pins, release its memory, emit ``Freed``."""
        object_id = obj.object_id
        for client, n in obj.pending.items():
            out.extend([PinFailed(object_id, client, pin_reason)] * n)
        for client in {*obj.pins, *obj.pending, *([obj.creator] if obj.creator is not None else [])}:
            self._unindex_all(client, object_id)
        self._drop_all_pins(obj)
        obj.pending.clear()
        offset = obj.offset
        if offset is not None:
            self._release_memory(obj)
        if obj.on_disk:
            self._disk_bytes -= obj.size
            self._num_on_disk -= 1
        self._waiting.pop(object_id, None)
        self._lru.pop(object_id, None)
        if self._spill_failed.pop(object_id, None) is not None and not self._spill_failed:
            self._last_spill_error = ""
        del self._objects[object_id]
        if freed:
            self._totals["freed"] += 1
            out.append(Freed(object_id, offset, obj.on_disk))

    def _remember_lost(self, object_id: bytes, reason: str) -> None:
        self._lost[object_id] = reason
        self._lost.move_to_end(object_id)
        if len(self._lost) > MAX_LOST:
            self._lost.popitem(last=False)

    def _grant_pending(self, obj: _Object, out: list[Command]) -> None:
        for client, n in obj.pending.items():
            self._add_pins(obj, client, n, out)
        obj.pending.clear()

    def _add_pins(self, obj: _Object, client: ClientId, n: int, out: list[Command]) -> None:
        if not obj.pins:
            self._pinned_bytes += obj.block
            self._num_pinned += 1
        obj.pins[client] = obj.pins.get(client, 0) + n
        out.extend([Pinned(obj.object_id, client, obj.offset, obj.size)] * n)  # type: ignore[arg-type]

    def _drop_pins(self, obj: _Object, client: ClientId, n: int) -> None:
        if not n:
            return
        left = obj.pins[client] - n
        if left:
            obj.pins[client] = left
            return
        del obj.pins[client]
        if not obj.pins:
            self._pinned_bytes -= obj.block
            self._num_pinned -= 1
        self._unindex(client, obj)

    def _drop_all_pins(self, obj: _Object) -> None:
        if obj.pins:
            self._pinned_bytes -= obj.block
            self._num_pinned -= 1
            obj.pins.clear()

    def _release_memory(self, obj: _Object) -> None:
        assert obj.offset is not None
        self._alloc.free(obj.offset)
        obj.offset = None

    def _index(self, client: ClientId, object_id: bytes) -> None:
        self._by_client.setdefault(client, set()).add(object_id)

    def _unindex(self, client: ClientId, obj: _Object) -> None:
        """Drop ``client``'s index entry for ``obj`` if it no longer pins, awaits or creates it."""
        if client not in obj.pins and client not in obj.pending and client != obj.creator:
            self._unindex_all(client, obj.object_id)

    def _unindex_all(self, client: ClientId, object_id: bytes) -> None:
        ids = self._by_client.get(client)
        if ids is not None:
            ids.discard(object_id)
            if not ids:
                del self._by_client[client]

    def _no_room(self, obj: _Object) -> str:
        what = "create object" if not obj.sealed else "restore object"
        spilling = sum(self._objects[oid].block for oid in self._spilling)
        failed = ""
        if self._spill_failed:
            failed = (f"; spilling to disk failed lately for {len(self._spill_failed)} object(s), "
                      f"last error: {self._last_spill_error}")
        return (f"cannot {what} {obj.object_id.hex()} of {obj.size} bytes: no free range of "
                f"{obj.block} bytes appeared in this node's object store within "
                f"{self.create_timeout_s:g} s (capacity {self.capacity} bytes, {self._alloc.used} "
                f"in use, {self._pinned_bytes} pinned by readers, {spilling} being spilled, "
                f"largest free range {self._alloc.largest_free}){failed}. Release views of objects you no "
                f"longer need (delete zero-copy arrays and ObjectRefs), or give the store more memory.")


def _require(ok: bool, message: str) -> None:
    # not `assert`: check() must keep checking under `python -O`
    if not ok:
        raise AssertionError(message)
