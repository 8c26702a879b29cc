"""Runtime environments at the head: their wire forms, and the placement of their tasks.

    RegisterEnv(env_id, wire) ──▶ envs (kept as sent: the head never reads a wire form)
    a queue of env tasks ──Scheduler._schedule_shape──▶ its own idle workers, and short tasks
                                         pipelined behind its busy workers, as any queue's;
                           ──start_workers()──▶ nodes with room start workers of it
                                         (StartWorkers(count, env, wire)), retiring idle
                                         workers of other environments first if the node
                                         has as many processes as it may
    EnvFailed(env, message) ──▶ its queued tasks fail with RuntimeEnvSetupError, and so do the
                                actors waiting for a worker of it on that node

The default environment never comes here: its tasks start workers on the scheduler's own
path. Sans-IO, like every part of the head.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from .. import _protocol as P
from .._resources import CPU
from .context import ERR, Context
from .policy import fits, workers_to_start
from .records import READY, NodeRec, TaskRec

if TYPE_CHECKING:
    from .actor_table import ActorTable
    from .directory import ObjectDirectory
    from .membership import Membership
    from .scheduler import Scheduler
    from .tasks import TaskTable

#: a runtime environment's wire form (RegisterEnv) may be this long at most
MAX_ENV_WIRE = 1 << 20
#: packages kept (their objects held); beyond it the one used least recently is let go
MAX_PACKAGES = 256


class RuntimeEnvs:
    """The runtime environments the head knows, and where their tasks run."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.out = ctx.out
        self.members: Membership
        self.table: TaskTable
        self.scheduler: Scheduler
        self.directory: ObjectDirectory
        self.actor_table: ActorTable
        #: runtime environment id -> its wire form (JSON, not read here), from RegisterEnv
        self.envs: dict[str, str] = {}
        #: package name (``pkg_<sha256>``) -> the object holding its zip, held by the head
        #: (the last used last): a second run with the same files uploads nothing
        self.packages: dict[str, bytes] = {}

    def on_register_package(self, peer: bytes, msg: P.RegisterPackage) -> None:
        """A client put a package's zip: hold the object for every later run."""
        name, oid = msg.name, bytes(msg.object_id)
        if not name.startswith("pkg_") or len(name) > 100:
            self.ctx.reject(peer, "RegisterPackage", f"{name!r} is not a package name")
            return
        old = self.packages.pop(name, None)
        if old is not None:  # (known already: kept, as the one used last)
            self.packages[name] = old
            return
        if not self.directory.hold([oid]):
            self.ctx.reject(peer, "RegisterPackage", f"package {name}: object {oid.hex()} is "
                            "not known to the head")
            return
        self.packages[name] = oid
        while len(self.packages) > MAX_PACKAGES:
            gone = next(iter(self.packages))
            self.directory.unhold([self.packages.pop(gone)])

    def package(self, name: str) -> dict:
        """``InfoRequest("package:<name>")``: ``{"object": hex}`` if the head keeps it (and
        its object is there), else ``{}``."""
        oid = self.packages.get(name)
        obj = self.directory.objects.get(oid) if oid is not None else None
        if obj is None or (obj.value is not None and obj.value.is_error):
            return {}
        self.packages[name] = self.packages.pop(name)  # (used last)
        return {"object": oid.hex()}

    def on_register_env(self, peer: bytes, msg: P.RegisterEnv) -> None:
        """A runtime environment's wire form, kept for the nodes that start its workers."""
        if not msg.env_id or len(msg.wire) > MAX_ENV_WIRE:
            self.ctx.reject(peer, "RegisterEnv", f"runtime_env {msg.env_id!r}: no id, or its "
                            f"wire form is over {MAX_ENV_WIRE:,} characters")
            return
        self.envs.setdefault(msg.env_id, msg.wire)

    def on_env_failed(self, peer: bytes, msg: P.EnvFailed) -> None:
        """A node could not set up a runtime environment: the tasks queued for it fail (the
        node's error says why: pip's own, a time-out), and so do actors waiting on that node
        for a worker of it."""
        node = self.members.node_by_peer.get(peer)
        if node is None:
            return
        env = msg.env_id
        node.env_starting.pop(env, None)
        why = (f"the runtime_env could not be set up on node {node.node_id} "
               f"({node.address}): {msg.message}")
        for shape, queue in list(self.scheduler.queues.items()):
            if ("env", env) not in shape:
                continue
            for t in list(queue):
                if t.state == READY:
                    t.queued = False
                    self.table.fail_task(t, ERR("RuntimeEnvSetupError", f"task {t.spec.name}: {why}"))
            queue.clear()
        self.actor_table.env_failed(node, env, why)

    def start_workers(self, queue: deque[TaskRec], env: str, nodes: list[NodeRec],
                      demand: dict) -> None:
        """Step 2 of ``Scheduler._schedule_shape`` for the tasks of a runtime environment:
        nodes with room but no idle worker of it start workers of it, retiring idle workers
        of other environments (the longest idle first) if the node has as many processes as
        it may."""
        wire = self.envs.get(env, "")
        demand_cpu = demand.get(CPU, 0)
        for n in nodes:
            if n.env_idle.get(env) or not fits(n.avail, demand):
                continue
            blocked = sum(1 for w in n.workers.values() if w.blocked)
            cap = max(n.num_cpus, 1) + blocked + 2
            starting = n.env_starting.get(env, 0)
            want = workers_to_start(n.avail.get(CPU, 0), demand_cpu, len(queue), starting,
                                    0, len(queue))
            room = cap - len(n.workers) - n.starting
            if want > room:  # make room: idle workers of other environments go first
                others = [w for e, pool in [("", n.idle), *n.env_idle.items()] if e != env
                          for w in pool]
                others.sort(key=lambda w: w.idle_since)
                for w in others[:want - room]:
                    self.members.retire(w, "making room for workers of another runtime_env")
                room = cap - len(n.workers) - n.starting
            count = min(want, room)
            if count > 0:
                n.starting += count
                n.env_starting[env] = starting + count
                self.out.send(n.peer, P.StartWorkers(count, env, wire))
