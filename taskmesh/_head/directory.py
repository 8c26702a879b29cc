"""The object directory: every object the head knows, who owns and who borrows it, what refers
to it, which nodes hold copies, and how to make it again (lineage).

    put / task result ──set_value──▶ ObjectRec ──▶ owner, subscribers, waiting tasks
    release / borrow / holds / dependents ──drop_if_unneeded──▶ freed (FreeObjects to holders)
    a holder lost ──copies_changed──▶ another copy, a re-run of its task (rebuild), or lost

An object's value is opaque bytes to the head (it never unpickles): small values inline, large
ones as a STORED marker naming the nodes that hold a copy. An object goes once nothing refers
to it: its owner released it, no borrower, no pending task uses it, no other value contains
it. The directory owns ``ObjectRec`` (and ``NodeRec.objects``, the copies a node holds);
tasks waiting for a value are the task table's, told through ``fail_task``/``make_ready``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Iterable, Iterator

from .. import _protocol as P
from .._protocol import HANDLE_INDEX
from . import actors as A
from .context import CHORE_SLICE, ERR, Context
from .records import WAITING, NodeRec, ObjectRec, TaskRec, is_lost, require

if TYPE_CHECKING:
    from .runtime_envs import RuntimeEnvs
    from .actor_table import ActorTable
    from .membership import Membership
    from .scheduler import Scheduler
    from .tasks import TaskTable


#: a state query (list_objects) looks at this many objects at most
OBJECT_SCAN = 100_000


class ObjectDirectory:
    """Objects, their references and their copies."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.out = ctx.out
        self.events = ctx.events
        self.log = ctx.log
        self.dropped = ctx.dropped
        self.chores = ctx.chores
        self.members: Membership
        self.table: TaskTable
        self.scheduler: Scheduler
        self.actor_table: ActorTable
        self.runtime_envs: RuntimeEnvs
        self.objects: dict[bytes, ObjectRec] = {}
        self.borrowed: dict[bytes, set[bytes]] = {}  # peer -> objects it said Borrow for
        #: owner -> bytes of its objects' values the head holds inline (small puts and
        #: results); a put past max_head_bytes_per_client is refused (ObjectStoreFullError)
        self.inline_bytes: dict[bytes, int] = {}
        self.rebuilt = 0  # tasks run again to rebuild lost objects

    def expect(self, owner: bytes, oids: Iterable[bytes]) -> None:
        """Records for the return values of a new task (their values come when it ends)."""
        objects = self.objects
        for oid in oids:
            objects[oid] = ObjectRec(owner)

    def add_handle(self, oid: bytes, owner: bytes) -> None:
        """The object an actor's handles refer to: owned by the creator, counted like any
        object; when it is freed, an actor that is neither detached nor named ends."""
        handle = self.objects[oid] = ObjectRec(owner)
        handle.value = A.HANDLE_VALUE

    def constructor_pending(self, oid: bytes, owner: bytes) -> None:
        """An actor's constructor is about to run (again): its result, "created" (None, or
        why not), is pending. Nobody holds a ref to it: it is dropped once set."""
        obj = self.objects.get(oid)
        if obj is None:
            obj = self.objects[oid] = ObjectRec(owner)
            obj.released = True
        else:  # a restart: pending again
            self.reset_value(obj, None)
            if obj.locations:  # (a constructor's result is None: never stored, but be sure)
                self.free_copies(oid, obj.locations)
                obj.locations = None

    def on_put(self, peer: bytes, msg: P.Put) -> None:
        """A client's put(): keep the value (inline, within its owner's budget) or where it is
        stored."""
        for oid, value in msg.objects:
            obj = self.objects.get(oid)
            if obj is None:
                obj = self.objects[oid] = ObjectRec(peer)
            elif (obj.value is not None or obj.owner != peer or oid[:16] in self.table.tasks
                  or oid[:16] in self.actor_table.actors):  # (exists, or a pending task's result)
                self.dropped.event("Put of an object that exists", "dropped a Put of object %s "
                                   "from %r: it exists already (owned by %s)", oid.hex(), peer,
                                   "the sender" if obj.owner == peer else "another peer")
                self.ctx.reject(peer, "Put", f"object {oid.hex()} exists already; the put was "
                             "ignored")
                if value.is_stored:
                    self._free_put_copy(peer, oid, value)
                continue
            if not value.is_stored:
                used = self.inline_bytes.get(peer, 0)
                limit = self.config.max_head_bytes_per_client
                if used + value.nbytes > limit:
                    self.dropped.event("put over its budget", "refused a put of %d bytes from "
                                       "%r: it has %d bytes of objects at the head", value.nbytes,
                                       peer, used)
                    value = ERR("ObjectStoreFullError", (
                        f"the head refused put() of object {oid.hex()} ({value.nbytes:,} bytes): "
                        f"it already holds {used:,} bytes of this process's objects, and "
                        f"max_head_bytes_per_client is {limit:,}. Drop refs you no longer "
                        "need, or run a node on this machine (large values then go to its "
                        "object store)"))
            self.set_value(oid, obj, value, push_owner=False)

    def on_subscribe(self, peer: bytes, msg: P.Subscribe) -> None:
        """A client wants values: send the ones that exist, remember it for the others."""
        for oid in msg.object_ids:
            obj = self.objects.get(oid)
            if obj is None:
                self.out.add(peer, P.ObjectValues, P.ObjectValue(oid, ERR(
                    "ObjectLostError", f"object {oid.hex()} is not known to the head: it was "
                    "freed or never existed"), 0))
            elif obj.value is not None:
                self.out.add(peer, P.ObjectValues, P.ObjectValue(oid, obj.value, obj.nbytes))
            elif obj.subscribers is None:
                obj.subscribers = [peer]
            elif peer not in obj.subscribers:
                obj.subscribers.append(peer)

    def on_release(self, peer: bytes, msg: P.Release) -> None:
        """A client let go of refs: as owner (released) or borrower; objects nothing needs go."""
        for oid in msg.object_ids:
            obj = self.objects.get(oid)
            if obj is None:
                continue
            if obj.borrowers and peer in obj.borrowers:  # (an owner may borrow back its own)
                obj.borrowers.discard(peer)
                self.borrowed[peer].discard(oid)
            elif obj.owner == peer:
                obj.released = True
            else:
                continue
            self.drop_if_unneeded(oid, obj)

    def on_borrow(self, peer: bytes, msg: P.Borrow) -> None:
        """A client holds refs to objects it does not own: they stay while it does."""
        mine = self.borrowed.setdefault(peer, set())
        for oid in msg.object_ids:
            obj = self.objects.get(oid)
            if obj is None:
                continue
            if obj.borrowers is None:
                obj.borrowers = {peer}
            else:
                obj.borrowers.add(peer)
            mine.add(oid)

    def drop_borrows(self, peer: bytes) -> None:
        """A peer is gone: so are the refs it borrowed (a chore if there are many)."""
        borrowed = self.borrowed.pop(peer, ())
        self.ctx.chore(self._unborrow_chore(peer, borrowed), len(borrowed))

    def release_chore(self, peer: bytes) -> Iterator[None]:
        """An owner is gone: release each of its objects (a scan of every object, yielding
        every CHORE_SLICE: a chore)."""
        objects = self.objects
        for i, oid in enumerate(list(objects)):
            obj = objects.get(oid)
            if obj is not None and obj.owner == peer and not obj.released:
                obj.released = True
                self.drop_if_unneeded(oid, obj)
            if i % CHORE_SLICE == CHORE_SLICE - 1:
                yield

    def node_lost(self, node: NodeRec, held: Iterable[bytes]) -> None:
        """A node died with copies of ``held``: each object falls back on another copy, is
        rebuilt, or is lost."""
        for oid in held:
            obj = self.objects.get(oid)
            if obj is not None and obj.locations and node.node_id in obj.locations:
                obj.locations.remove(node.node_id)
                self.copies_changed(oid, obj, f"node {node.node_id} ({node.address}) was lost")

    def _unborrow_chore(self, peer: bytes, borrowed: Iterable[bytes]) -> Iterator[None]:
        for i, oid in enumerate(borrowed):
            obj = self.objects.get(oid)
            if obj is not None and obj.borrowers and peer in obj.borrowers:
                obj.borrowers.discard(peer)
                self.drop_if_unneeded(oid, obj)
            if i % CHORE_SLICE == CHORE_SLICE - 1:
                yield

    def reset_value(self, obj: ObjectRec, value: P.SerializedObject | None) -> None:
        """Give ``obj`` a value the head makes itself (a marker, a lost-object error, or none
        while it is rebuilt), not one a client sent (those go through ``set_value``)."""
        self._uncharge(obj)
        obj.value = value

    def _uncharge(self, obj: ObjectRec) -> None:
        """The head no longer holds ``obj``'s inline value: its owner's budget gets it back."""
        if obj.charged:
            left = self.inline_bytes.get(obj.owner, 0) - obj.charged
            if left > 0:
                self.inline_bytes[obj.owner] = left
            else:
                self.inline_bytes.pop(obj.owner, None)
            obj.charged = 0

    def set_value(self, oid: bytes, obj: ObjectRec, value: P.SerializedObject, push_owner: bool,
                   node: NodeRec | None = None) -> None:
        """``node``: where a worker's result was made (a stored result lives in its store)."""
        nbytes = value.nbytes
        holders = None
        contained = value.contained
        if value.is_stored:
            value, nbytes, holders = self._accept_stored(oid, value, node)
        if obj.value is not None:  # a re-run made again what still exists: keep the first
            if holders:  # (not a copy the first value counts: it is the same object there)
                self.free_copies(oid, [n for n in holders if n not in (obj.locations or ())])
            return
        if not obj.needed() and not obj.subscribers:
            del self.objects[oid]
            if holders:
                self.free_copies(oid, holders)
            if obj.locations:  # copies of the value it had before it was made again
                self.free_copies(oid, obj.locations)
                obj.locations = None
            if obj.contained:  # the refs in the value it had before it was made again
                old, obj.contained = obj.contained, None
                self.unhold(old)
            return
        obj.value = value
        obj.nbytes = nbytes
        if nbytes and not value.is_stored:  # held here: counted against its owner's budget
            obj.charged = nbytes
            self.inline_bytes[obj.owner] = self.inline_bytes.get(obj.owner, 0) + nbytes
        if contained or obj.contained:  # (made again: the new value's refs replace the old)
            old = obj.contained
            obj.contained = self.hold(contained) if contained else None
            if old:
                self.unhold(old)
        if holders:
            obj.locations = holders
            for nid in holders:
                self.members.nodes[nid].objects.add(oid)
            self.events.add(("ObjectStored", self.ctx.now, oid, nbytes, holders[0]))
        out = self.out
        if push_owner and not obj.released and obj.owner in self.members.peers:
            pushed = (value if nbytes <= self.config.inline_push_bytes or value.is_error
                      or holders else None)
            out.add(obj.owner, P.ObjectValues, P.ObjectValue(oid, pushed, nbytes))
        if obj.subscribers:
            item = P.ObjectValue(oid, value, nbytes)
            for peer in obj.subscribers:
                out.add(peer, P.ObjectValues, item)
            obj.subscribers = None
        waiters = obj.waiters
        if waiters:
            obj.waiters = None
            is_error = value.is_error
            for t in waiters:
                if t.state != WAITING:
                    continue
                if is_error:
                    self.table.fail_task(t, value)
                else:
                    t.waiting -= 1
                    if t.waiting == 0:
                        self.scheduler.make_ready(t)
        self.drop_if_unneeded(oid, obj)

    def drop_if_unneeded(self, oid: bytes, obj: ObjectRec) -> None:
        """An object goes once nothing refers to it (its owner released it, no borrower, no
        pending task and no other value uses it) and its value has arrived (until then its
        record is where the coming result is discarded). Nodes holding copies are told to free
        them, and the objects its value refers to lose that hold (iteratively: a long chain of
        nested refs must not recurse)."""
        if obj.needed() or obj.value is None:
            return
        objects = self.objects
        stack = [(oid, obj)]
        handles: list[bytes] = []
        while stack:
            oid, obj = stack.pop()
            if objects.get(oid) is not obj:
                continue
            del objects[oid]
            if oid.endswith(HANDLE_INDEX):  # an actor's last handle is gone
                handles.append(oid[:16])
            if obj.charged:
                self._uncharge(obj)
            if obj.locations:
                self.free_copies(oid, obj.locations)
                obj.locations = None
                self.events.add(("ObjectFreed", self.ctx.now, oid))
            for inner_id in obj.contained or ():
                inner = objects.get(inner_id)
                if inner is not None:
                    inner.holds -= 1
                    if not inner.needed() and inner.value is not None:
                        stack.append((inner_id, inner))
        for actor_id in handles:
            self.actor_table.handle_freed(actor_id)

    def hold(self, oids: Iterable[bytes]) -> list[bytes]:
        """Count one hold on each known object; return the ids held."""
        held = []
        objects = self.objects
        for oid in oids:
            obj = objects.get(oid)
            if obj is not None:
                obj.holds += 1
                held.append(oid)
        return held

    def unhold(self, oids: Iterable[bytes]) -> None:
        """Drop one hold on each object (a value or task that referred to it is gone)."""
        objects = self.objects
        for oid in oids:
            obj = objects.get(oid)
            if obj is not None:
                obj.holds -= 1
                self.drop_if_unneeded(oid, obj)

    def _accept_stored(self, oid: bytes, marker: P.SerializedObject,
                       node: NodeRec | None) -> tuple[P.SerializedObject, int, list[str] | None]:
        """Check a STORED marker from a worker (``node``: its node) or a driver's put (the
        marker names the node); return (value to keep, size, holder node ids). A marker that
        makes no sense becomes an error value (holders None)."""
        try:
            moid, size, locs = marker.read_stored()
        except P.ProtocolError as exc:
            return ERR("TaskmeshError", f"object {oid.hex()}: {exc}"), 0, None
        if moid != oid:
            return ERR("TaskmeshError", f"object {oid.hex()}: its stored-object marker names "
                        f"another object ({moid.hex()})"), 0, None
        if node is not None:
            holders = [node.node_id] if node.alive else []
        else:  # (each once: a peer may name one twice)
            holders = list({nid: None for nid, _ in locs if nid in self.members.nodes
                            and self.members.nodes[nid].alive})
        if not holders:
            where = node.node_id if node is not None else ", ".join(n for n, _ in locs) or "none"
            return ERR("ObjectLostError", f"object {oid.hex()} was stored on node {where}, "
                        "which is no longer part of the cluster"), size, None
        return self._marker(oid, size, holders), size, holders

    def _free_put_copy(self, peer: bytes, oid: bytes, marker: P.SerializedObject) -> None:
        """A refused Put left a copy in a node store: free it, unless it is the real object's."""
        obj = self.objects.get(oid)
        try:
            _, _, locs = marker.read_stored()
        except P.ProtocolError:
            return
        for nid, _ in locs:
            if obj is None or not obj.locations or nid not in obj.locations:
                self.free_copies(oid, [nid])

    def _marker(self, oid: bytes, size: int, holders: list[str]) -> P.SerializedObject:
        nodes = self.members.nodes
        return P.SerializedObject.stored(oid, size, [[nid, nodes[nid].transfer] for nid in holders])

    def free_copies(self, oid: bytes, node_ids: Iterable[str]) -> None:
        """Tell these nodes to free their copies of ``oid``."""
        for nid in node_ids:
            n = self.members.nodes.get(nid)
            if n is not None and n.alive:
                n.objects.discard(oid)
                self.out.add(n.peer, P.FreeObjects, oid)

    def on_object_locations(self, peer: bytes, msg: P.ObjectLocations) -> None:
        """A node fetched copies (``added``) or lost some (``removed``)."""
        node = self.members.node_by_peer.get(peer)
        if node is None:
            return
        nid = node.node_id
        for oid, size in msg.added:
            obj = self.objects.get(oid)
            if (obj is not None and obj.locations is None and obj.nbytes == size
                    and ((obj.value is None and obj.lineage is not None) or is_lost(obj.value))):
                # a copy made before the last known one was lost: the object is back
                self.reset_value(obj, None)
                self.set_value(oid, obj, P.SerializedObject.stored(oid, size, [[nid, ""]]),
                                push_owner=True, node=node)
                continue
            if obj is None or obj.locations is None:  # freed meanwhile: the copy is not needed
                self.out.add(peer, P.FreeObjects, oid)
                continue
            if nid not in obj.locations:
                obj.locations.append(nid)
                node.objects.add(oid)
                self.events.add(("ObjectLocated", self.ctx.now, oid, nid))
                self.reset_value(obj, self._marker(oid, obj.nbytes, obj.locations))
        for oid in msg.removed:
            node.objects.discard(oid)
            obj = self.objects.get(oid)
            if obj is not None and obj.locations and nid in obj.locations:
                obj.locations.remove(nid)
                self.copies_changed(oid, obj, f"its copy on node {nid} was lost")

    def copies_changed(self, oid: bytes, obj: ObjectRec, why: str) -> None:
        """An object lost a copy: the others are its holders now; with none left it is rebuilt
        from its task, or lost."""
        if obj.locations:
            self.reset_value(obj, self._marker(oid, obj.nbytes, obj.locations))
            return
        obj.locations = None
        if obj.lineage is not None and obj.rebuilds_left != 0:
            self._rebuild(oid, obj, why)
            return
        if obj.lineage is not None:
            why += (f"; it was already rebuilt {obj.lineage.spec.max_retries} time(s) "
                    f"(max_retries of task {obj.lineage.spec.name})")
        else:
            why += "; a put() object cannot be rebuilt"
        obj.lineage = None
        self.events.add(("ObjectLost", self.ctx.now, oid, why))
        self.reset_value(obj, ERR("ObjectLostError", f"object {oid.hex()} ({obj.nbytes} bytes) "
                                    f"is lost: {why}, and no other node held a copy"))

    def _rebuild(self, oid: bytes, obj: ObjectRec, why: str) -> None:
        """Every copy of a task's stored result is gone: run the task again (lineage). Its
        inputs must still be known to the head; lost stored inputs are rebuilt the same way
        (recursively, as their own copies are found missing). Readers wait meanwhile."""
        done = obj.lineage
        assert done is not None
        spec = done.spec
        if obj.rebuilds_left > 0:
            obj.rebuilds_left -= 1
        self.reset_value(obj, None)  # pending again: new readers and tasks wait for the re-run
        if spec.task_id in self.table.tasks:  # another lost return of it already started the re-run
            return
        inputs = list(spec.deps)
        if spec.args is not None and spec.args.is_stored:
            inputs += spec.args.contained  # large arguments passed by value
        missing = next((d for d in inputs if d not in self.objects), None)
        if missing is not None:
            obj.lineage = None
            self.events.add(("ObjectLost", self.ctx.now, oid, f"{why}; an input of its task was freed"))
            self.reset_value(obj, ERR("ObjectLostError", (
                f"object {oid.hex()} is lost ({why}) and cannot be rebuilt: task {spec.name}, "
                f"which made it, needs object {missing.hex()}, which was freed")))
            return
        self.log.warning("object %s lost (%s): running task %s again to rebuild it", oid.hex(), why,
                    spec.name)
        t = TaskRec(spec, done.owner, self.table.job_of(done.owner, spec.parent))
        t.retries_left = spec.max_retries
        self.rebuilt += 1
        self.events.add(("ObjectRebuilt", self.ctx.now, oid, spec.task_id))
        self.table.admit(t)  # (TaskSubmitted)

    def object_rows(self, scan: int = OBJECT_SCAN) -> Iterator[dict]:
        """The objects as ``list_objects`` shows them (Ray's field names where Ray has
        them), the first ``scan`` at most: a query does not stop the head for long."""
        for oid, obj in itertools.islice(self.objects.items(), scan):
            value = obj.value
            owner = obj.owner
            yield {"object_id": oid.hex(), "object_size": obj.nbytes,
                   "state": ("PENDING" if value is None else
                             "ERROR" if value.is_error else "READY"),
                   "location": ",".join(obj.locations) if obj.locations else "head",
                   "owner": owner.hex(),
                   "job_id": owner[1:].hex() if owner[:1] == b"D" else "",
                   "borrowers": len(obj.borrowers or ()), "dependents": obj.dependents}

    def held_bytes(self, t: TaskRec) -> dict[str, int] | None:
        """Node id -> bytes of the task's stored arguments held there (None if none)."""
        held: dict[str, int] | None = None
        objects = self.objects
        deps = t.spec.deps
        args = t.spec.args
        if args is not None and args.is_stored and args.contained:
            deps = [*deps, args.contained[0]]
        for dep in deps:
            obj = objects.get(dep)
            if obj is not None and obj.locations:
                if held is None:
                    held = {}
                for nid in obj.locations:
                    held[nid] = held.get(nid, 0) + obj.nbytes
        return held

    def inputs_ready(self, t: TaskRec) -> bool:
        """All of a ready task's inputs still have values (one may be being rebuilt)."""
        objects = self.objects
        for d in t.spec.deps:
            obj = objects.get(d)
            if obj is not None and obj.value is None:
                return False
        return True

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """Raise AssertionError unless the reference counts match what refers to each object
        (pending tasks, values, borrowers), the inline bytes match their owners' budgets and
        the copies match the nodes' lists."""
        dependents: dict[bytes, int] = {}
        holds: dict[bytes, int] = {}
        for t in self.table.tasks.values():
            for d in t.spec.deps:
                dependents[d] = dependents.get(d, 0) + 1
            for oid in t.held or ():
                holds[oid] = holds.get(oid, 0) + 1
        charged: dict[bytes, int] = {}  # the head's memory for values, by owner
        for obj in self.objects.values():
            if obj.charged:
                require(obj.value is not None and not obj.value.is_stored,
                        "a charged object without an inline value")
                charged[obj.owner] = charged.get(obj.owner, 0) + obj.charged
        require(charged == self.inline_bytes, f"inline bytes by owner {self.inline_bytes} "
                f"!= what the objects hold {charged}")
        for oid, obj in self.objects.items():
            for inner in obj.contained or ():
                holds[inner] = holds.get(inner, 0) + 1
        for oid in self.runtime_envs.packages.values():  # (runtime_env packages the head keeps)
            holds[oid] = holds.get(oid, 0) + 1
        for oid, obj in self.objects.items():
            name = f"object {oid.hex()}"
            require(obj.dependents == dependents.get(oid, 0), f"{name}: {obj.dependents} "
                    f"dependents counted, {dependents.get(oid, 0)} pending tasks use it")
            require(obj.holds == holds.get(oid, 0), f"{name}: {obj.holds} holds counted, "
                    f"{holds.get(oid, 0)} values, tasks and packages refer to it")
            require(obj.needed() or obj.value is None or bool(obj.subscribers),
                    f"{name} has a value but nothing refers to it")
            for peer in obj.borrowers or ():
                require(oid in self.borrowed.get(peer, ()), f"{name}: borrower {peer!r} does "
                        "not list it")
            if obj.locations is not None:
                require(bool(obj.locations) and len(set(obj.locations)) == len(obj.locations),
                        f"{name}: holders {obj.locations}")
                for nid in obj.locations:
                    n = self.members.nodes.get(nid)
                    require(n is not None and n.alive and oid in n.objects,
                            f"{name}: holder {nid} is not a live node that lists it")
        for dep in dependents:
            require(dep in self.objects, f"object {dep.hex()} was dropped while tasks use it")
        for node in self.members.nodes.values():
            for oid in node.objects:
                obj = self.objects.get(oid)
                require(obj is not None and node.node_id in (obj.locations or ()),
                        f"node {node.node_id} lists object {oid.hex()}, which does not list it")
