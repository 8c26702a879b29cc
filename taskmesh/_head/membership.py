"""Membership: who the head's peers are (drivers, status clients, node agents, workers), each
peer's life cycle, the nodes and their worker pools, and how long each has been silent.

    Hello ──▶ JOINED (or ORPHAN: a worker before its node) ──Goodbye / closed / silent──▶ gone
    node: JOINED ──no heartbeat──▶ DEAD ──speaks again──▶ FENCED (told to join anew) ──Hello──▶ JOINED

Every move of a peer goes through one table (``LIFE_CYCLE``); a move that is not in it is a
bug, raised as such. Membership owns ``NodeRec`` and ``WorkerRec``: nodes joining and dying,
workers attaching to their node, exiting and being retired when surplus. What a peer's
departure means for tasks, objects and actors is theirs to decide: membership tells them.
"""

from __future__ import annotations

import itertools
import logging
from enum import Enum
from typing import TYPE_CHECKING, Any

from .. import _protocol as P
from .._resources import CPU, UNIT, describe, valid
from . import actors as A
from .context import Context
from .records import (ASSIGNED, NodeRec, WorkerRec, add_to, exit_cause, idle_pool, int_field,
                      require, sub_from)

if TYPE_CHECKING:
    from .actor_table import ActorTable
    from .directory import ObjectDirectory
    from .scheduler import Scheduler
    from .tasks import TaskTable


class PeerKind(str, Enum):
    """What a peer said it is in its Hello (equal to that string)."""

    DRIVER = "driver"
    STATUS = "status"
    WORKER = "worker"
    NODE = "node"


class Life(Enum):
    """Where a peer is in its life cycle."""

    ORPHAN = "orphan"  # a worker that said Hello before its node agent did
    JOINED = "joined"  # welcomed: its messages are handled
    GONE = "gone"  # a driver taken as gone for its silence: told so if it speaks again
    DEAD = "dead"  # a node declared dead: told to join anew if it speaks again
    FENCED = "fenced"  # a dead node that spoke again and was told so


_D, _S, _W, _N = PeerKind.DRIVER, PeerKind.STATUS, PeerKind.WORKER, PeerKind.NODE
#: (kind, life now (None: unknown), event) -> life after (None: forgotten). Nothing else moves.
LIFE_CYCLE: dict[tuple[PeerKind, Life | None, str], Life | None] = {
    (_D, None, "hello"): Life.JOINED,
    (_D, Life.JOINED, "left"): None,  # it said Goodbye, or its connection closed
    (_D, Life.JOINED, "silent"): Life.GONE,  # a remote driver that stopped heartbeating
    (_D, Life.GONE, "spoke"): Life.GONE,
    (_S, None, "hello"): Life.JOINED,
    (_S, Life.JOINED, "left"): None,
    (_N, None, "hello"): Life.JOINED,
    (_N, Life.DEAD, "hello"): Life.JOINED,  # joining anew, as a new incarnation
    (_N, Life.FENCED, "hello"): Life.JOINED,
    (_N, Life.JOINED, "lost"): Life.DEAD,  # silent, stopped, re-registering, or exited
    (_N, Life.DEAD, "spoke"): Life.FENCED,
    (_N, Life.FENCED, "spoke"): Life.FENCED,
    (_W, None, "hello"): Life.JOINED,
    (_W, None, "early"): Life.ORPHAN,  # its node's Hello comes next
    (_W, Life.ORPHAN, "attached"): Life.JOINED,
    (_W, Life.ORPHAN, "gone"): None,
    (_W, Life.JOINED, "gone"): None,  # exited, lost with its node, retired, or stale
}
#: peers that left are remembered (to answer them) up to this many, oldest forgotten first
REMEMBERED = 1000


#: heartbeat stats that describe the node's machine (node_info's "Machine")
_MACHINE_STATS = ("cpu_percent", "mem_used", "mem_total", "load", "rss")


class Membership:
    """The peers, the nodes and their workers."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.out = ctx.out
        self.events = ctx.events
        self.log = ctx.log
        self.dropped = ctx.dropped
        self.chores = ctx.chores
        self.table: TaskTable
        self.scheduler: Scheduler
        self.directory: ObjectDirectory
        self.actor_table: ActorTable
        #: live peers (joined, or orphan workers) -> kind: what the head handles messages from
        self.peers: dict[bytes, PeerKind] = {}
        #: every peer the head knows or remembers -> (kind, life)
        self.lives: dict[bytes, tuple[PeerKind, Life]] = {}
        #: peers that left but are remembered (gone drivers, dead nodes), oldest first ->
        #: the node's id ("" for a driver)
        self.ended: dict[bytes, str] = {}
        self.nodes: dict[str, NodeRec] = {}
        self.node_by_peer: dict[bytes, NodeRec] = {}
        self.workers: dict[bytes, WorkerRec] = {}
        self.orphan_workers: dict[str, list[WorkerRec]] = {}  # said Hello before their node
        #: drivers on other machines, which promised heartbeats: peer -> (last heard, period)
        self.beating: dict[bytes, list] = {}
        #: drivers that asked not to be sent their tasks' output (``log_to_driver=False``)
        self.quiet: set[bytes] = set()

    # ------------------------------------------------------------------ life cycle

    def move(self, peer: bytes, kind: PeerKind, event: str) -> Life | None:
        """Move ``peer`` along its life cycle (``LIFE_CYCLE``); return its new life."""
        known = self.lives.get(peer)
        if known is not None and known[0] is not kind and known[1] is not Life.JOINED:
            known = None  # an ended peer's connection, now someone else: a fresh start
        life = None if known is None else known[1]
        if known is not None:
            kind = known[0]
        try:
            new = LIFE_CYCLE[kind, life, event]
        except KeyError:
            raise AssertionError(f"peer {peer!r} ({kind.value}, {life}): no move on "
                                 f"{event!r}") from None
        if new is None:
            self.lives.pop(peer, None)
            self.peers.pop(peer, None)
        else:
            self.lives[peer] = (kind, new)
            if new is Life.JOINED or new is Life.ORPHAN:
                self.peers[peer] = kind
                self.ended.pop(peer, None)
            else:
                self.peers.pop(peer, None)
        return new

    def _remember(self, peer: bytes, node_id: str = "") -> None:
        """Keep an ended peer in mind (to answer it), forgetting the oldest past REMEMBERED."""
        self.ended[peer] = node_id
        if len(self.ended) > REMEMBERED:
            oldest = next(iter(self.ended))
            del self.ended[oldest]
            self.lives.pop(oldest, None)

    def life(self, peer: bytes) -> Life | None:
        """Where ``peer`` is in its life cycle (None: unknown or forgotten)."""
        known = self.lives.get(peer)
        return None if known is None else known[1]

    def stranger(self, peer: bytes, msg: Any) -> None:
        """A message from a peer that is not (or no longer) joined: a dead node is told to
        join anew, a driver taken as gone is told so; anything else is dropped."""
        life = self.life(peer)
        if type(msg) is P.Heartbeat:  # a node this head declared dead, or never knew (the
            # head restarted): told to join anew either way
            if life is Life.DEAD or life is Life.FENCED:
                self.move(peer, PeerKind.NODE, "spoke")
                if life is Life.DEAD:
                    self.events.add(("NodeFenced", self.ctx.now, self.ended.get(peer, "")))
            self.out.send(peer, P.Refused("this head declared the node dead (it was silent "
                                          "longer than the heartbeat time-out); join again "
                                          "as a new incarnation"))
        elif life is Life.GONE:
            self.out.send(peer, P.Refused(
                "this head took this driver as gone: it sent nothing for longer than the "
                "heartbeat time-out, so its tasks were cancelled and its objects freed. "
                "Call taskmesh.shutdown() and taskmesh.init() to connect again"))
            return
        self.dropped.event("from a peer that never said Hello", "dropped %s from %r, a peer "
                           "that never said Hello (or left)", type(msg).__name__, peer)

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Nodes and remote drivers silent past the heartbeat time-out are gone; surplus
        idle workers retire."""
        timeout = self.config.heartbeat_timeout_s
        deadline = now - timeout
        for node in list(self.nodes.values()):
            if node.alive and node.last_seen < deadline:
                self.node_lost(node, f"no heartbeat for {timeout:g} s")
        if self.beating:
            for peer, (last, period) in list(self.beating.items()):
                if now - last > max(timeout, 4 * period):
                    self.log.warning("driver %s has been silent for %.1f s: it is taken as "
                                     "gone; its tasks are cancelled and its objects freed",
                                     peer.hex(), now - last)
                    self.client_left(peer, f"silent for {now - last:.1f} s", silent=True)
        idle_deadline = now - self.config.idle_worker_timeout_s
        for node in self.nodes.values():
            for env, pool in list(node.env_idle.items()):  # a runtime environment's: all
                for w in [w for w in pool if w.idle_since < idle_deadline]:
                    self.retire(w, "idle worker of a runtime environment")
                if not pool:
                    del node.env_idle[env]
            surplus = len(node.workers) - max(node.num_cpus, 1)
            if surplus <= 0:
                continue
            for w in list(node.idle):
                if surplus <= 0:
                    break
                if w.idle_since < idle_deadline:
                    self.retire(w, "idle surplus worker")
                    surplus -= 1

    def retire(self, w: WorkerRec, why: str) -> None:
        """An idle worker leaves its node's pool and is told to exit (its exit is expected)."""
        node = w.node
        assert node is not None
        pool = idle_pool(node, w.env)
        if w in pool:
            pool.remove(w)
        node.workers.pop(w.peer, None)
        node.retiring.add(w.worker_id)
        self.forget_worker(w)
        self.out.send(w.peer, P.Exit(why))

    def forgive(self, stalled: float) -> None:
        """The head did not run for ``stalled`` seconds: move every liveness clock on by
        that much (never past now)."""
        now = self.ctx.now
        for node in self.nodes.values():
            node.last_seen = min(now, node.last_seen + stalled)
        for beat in self.beating.values():
            beat[0] = min(now, beat[0] + stalled)

    def seen(self, peer: bytes, now: float) -> None:
        """Any message from a remote driver counts as its heartbeat."""
        beat = self.beating.get(peer)
        if beat is not None:
            beat[0] = now

    # ------------------------------------------------------------------ hello

    def on_hello(self, peer: bytes, msg: P.Hello) -> None:
        """A peer says who it is: welcome it (as a driver, status client, node or worker), or
        refuse it saying why."""
        known = self.peers.get(peer)
        if known is not None and not (known == "node" and msg.kind == "node"):
            # one Hello per connection; a replayed or confused one must not change who the
            # peer is (only a node agent that restarted says Hello again: it re-registers)
            self.dropped.event("second Hello", "dropped a Hello as a %s from %r, which said "
                               "Hello as a %s already", msg.kind, peer, known)
            return
        if self.life(peer) is Life.GONE:
            self._refuse(peer, "this head took this driver as gone; call taskmesh.shutdown() "
                               "and taskmesh.init() to connect again")
            return
        if msg.version != P.PROTOCOL_VERSION:
            self._refuse(peer, f"protocol version mismatch: this head speaks taskmesh protocol "
                               f"{P.PROTOCOL_VERSION}, the {msg.kind} speaks {msg.version}; "
                               "install the same taskmesh version everywhere")
            return
        info = msg.info
        if msg.kind in ("driver", "status"):
            self.move(peer, PeerKind(msg.kind), "hello")
            if msg.kind == "driver":
                self.events.add(("DriverJoined", self.ctx.now, peer))
                beat_s = info.get("heartbeat_s")
                if isinstance(beat_s, (int, float)) and beat_s > 0:
                    self.beating[peer] = [self.ctx.now, float(beat_s)]
                window = info.get("max_pending_tasks")
                if type(window) is int and window > 0:
                    self.scheduler.driver_joined(peer, window)
                if info.get("log_to_driver") is False:
                    self.quiet.add(peer)
        elif msg.kind == "node":
            node_id = info.get("node_id")
            current = self.node_by_peer.get(peer)
            if current is not None and node_id != current.node_id:
                self.dropped.event("second Hello", "dropped a Hello as node %r from %r, which "
                                   "is node %s", node_id, peer, current.node_id)
                return
            if not isinstance(node_id, str) or not node_id or not valid(info.get("resources")):
                self._refuse(peer, "a node Hello needs a node_id and resources (name -> "
                                   "non-negative integer units)")
                return
            old = self.nodes.get(node_id)
            if old is not None and old.alive and old.peer != peer:
                self._refuse(peer, f"a node with id {node_id!r} is already registered")
                return
            if old is not None and old.alive:  # its agent restarted
                self.node_lost(old, "re-registered")
            node = NodeRec(node_id, peer, info, self.ctx.now)
            self.nodes[node_id] = node
            self.node_by_peer[peer] = node
            self.move(peer, PeerKind.NODE, "hello")
            for w in self.orphan_workers.pop(node_id, []):
                if w.incarnation == node.incarnation:
                    self._attach_worker(w, node)
                else:  # started by an earlier incarnation, which stopped it when it rejoined
                    self._stale_worker(w, node_id)
            self.log.info("node %s joined from %s with %s", node_id, node.address,
                     describe(node.total))
            self.events.add(("NodeJoined", self.ctx.now, node_id, node.address, node.incarnation))
        elif msg.kind == "worker":
            node_id = str(info.get("node_id", ""))
            env = info.get("runtime_env", "")
            w = WorkerRec(peer, str(info.get("worker_id", "")), None, int_field(info.get("pid")),
                          self.ctx.now, int_field(info.get("incarnation")),
                          env if type(env) is str else "")
            self.workers[peer] = w
            node = self.nodes.get(node_id)
            early = node is None or w.incarnation > node.incarnation  # its node's Hello next
            self.move(peer, PeerKind.WORKER, "early" if early else "hello")
            if node is not None and w.incarnation < node.incarnation:
                self._stale_worker(w, node_id)
                return
            if early:
                self.orphan_workers.setdefault(node_id, []).append(w)
            elif w.worker_id in node.gone_workers:  # its exit overtook its Hello
                node.gone_workers.discard(w.worker_id)
                self.forget_worker(w)
                return
            elif not node.alive:
                self.out.send(peer, P.Exit(f"node {node_id} was declared dead"))
                self.forget_worker(w)
                return
            else:
                self._attach_worker(w, node)
        else:
            self._refuse(peer, f"unknown peer kind {msg.kind!r}")
            return
        self.out.send(peer, P.Welcome(P.PROTOCOL_VERSION, {"peer": peer}))

    def _refuse(self, peer: bytes, reason: str) -> None:
        """Answer a Hello with Refused (counted and logged, rate-limited, with the drops)."""
        self.dropped.event("refused Hello", "refused a Hello from %r: %s", peer, reason,
                           level=logging.INFO)
        self.out.send(peer, P.Refused(reason))

    def _stale_worker(self, w: WorkerRec, node_id: str) -> None:
        """A worker of an earlier incarnation of its node (its Hello was delayed, e.g. queued
        while the head was down): its agent stopped it on joining again; never use it."""
        self.dropped.event("worker of an earlier node incarnation", "ignored worker %s of an "
                           "earlier incarnation of node %s", w.worker_id, node_id, level=logging.INFO)
        self.out.send(w.peer, P.Exit(f"node {node_id} joined again as a new incarnation"))
        self.forget_worker(w)

    def _attach_worker(self, w: WorkerRec, node: NodeRec) -> None:
        if self.life(w.peer) is Life.ORPHAN:
            self.move(w.peer, PeerKind.WORKER, "attached")
        w.node = node
        node.starting = max(0, node.starting - 1)
        env = w.env
        if env:
            left = node.env_starting.get(env, 0) - 1
            if left > 0:
                node.env_starting[env] = left
            else:
                node.env_starting.pop(env, None)
        if node.actor_queue:  # it was started for an actor placed here (of its environment)
            actor = next((a for a in node.actor_queue if a.spec.runtime_env == env), None)
            if actor is not None:
                node.actor_queue.remove(actor)
                self.actor_table.start_actor(actor, w)
                return
        node.workers[w.peer] = w
        w.idle_since = self.ctx.now
        idle_pool(node, env).append(w)

    def on_goodbye(self, peer: bytes, msg: P.Goodbye) -> None:
        """A driver left: drop what it owned and cancel its tasks nobody else needs. A node
        that says Goodbye is stopping (``taskmesh stop``): lost now, not a time-out later."""
        node = self.node_by_peer.get(peer)
        if node is not None:
            if node.alive:
                self.node_lost(node, "its node agent was stopped", logging.INFO)
            return
        self.client_left(peer, "it said goodbye")

    def client_left(self, peer: bytes, why: str, silent: bool = False) -> None:
        """A driver (or status client) is gone: drop what it owned, cancel its tasks nobody
        else needs."""
        kind = self.peers.get(peer)
        if kind is PeerKind.DRIVER:
            self.events.add(("DriverLeft", self.ctx.now, peer, why))
        self.beating.pop(peer, None)
        self.quiet.discard(peer)
        if kind is PeerKind.DRIVER or kind is PeerKind.STATUS:
            self.move(peer, kind, "silent" if silent else "left")
            if silent:
                self._remember(peer)
        self.scheduler.driver_left(peer)
        self._owner_left(peer)
        self.directory.drop_borrows(peer)

    def disconnected(self, peer: bytes) -> None:
        """A peer's connection ended, so its process is gone (local peers only: TCP peers are
        judged by heartbeats). A driver is treated as having said Goodbye; a node as lost.
        A worker's exit is reported by its node agent, with the exit code."""
        kind = self.peers.get(peer)
        if kind in ("driver", "status"):
            self.client_left(peer, "its connection closed")
        elif kind == "node":
            node = self.node_by_peer.get(peer)
            if node is not None and node.alive:
                self.node_lost(node, "its node agent exited")

    def on_heartbeat(self, peer: bytes, msg: P.Heartbeat) -> None:
        """A node is alive: note when, keep its stats for status, acknowledge."""
        node = self.node_by_peer.get(peer)
        if node is None:
            return
        node.last_seen = self.ctx.now
        stats = msg.stats
        if not all(type(k) is str for k in stats):  # (shown by `taskmesh status`)
            stats = {k: v for k, v in stats.items() if type(k) is str}
        node.stats = stats
        self.out.send(peer, P.HeartbeatAck())

    def on_worker_exited(self, peer: bytes, msg: P.WorkerExited) -> None:
        """A node reports a worker's exit: a retiring one is forgotten, a live one is lost (its
        tasks retry or fail, naming the exit)."""
        node = self.node_by_peer.get(peer)
        if node is None:
            return
        node.last_seen = self.ctx.now
        if msg.worker_id in node.retiring:
            node.retiring.discard(msg.worker_id)
            return
        w = next((w for w in node.workers.values() if w.worker_id == msg.worker_id), None)
        if w is None:
            w = next((w for w in node.actor_workers.values() if w.worker_id == msg.worker_id),
                     None)
        if w is None:
            orphans = self.orphan_workers.get(node.node_id, [])
            w = next((o for o in orphans if o.worker_id == msg.worker_id), None)
            if w is not None:
                orphans.remove(w)
                self.forget_worker(w)
            else:
                node.starting = max(0, node.starting - 1)
                node.gone_workers.add(msg.worker_id)
            return
        cause = exit_cause(msg.exitcode)
        self.worker_lost(w, "WorkerCrashedError",
                          f"the worker process (pid {msg.pid}) on node {node.node_id} {cause}")

    def worker_lost(self, w: WorkerRec, kind: str, why: str) -> None:
        """A worker is gone: its running task retries or fails, its queued ones run elsewhere."""
        if w.actor is not None:
            self.actor_table.actor_worker_lost(w, why)
            return
        node = w.node
        if node is not None:
            node.workers.pop(w.peer, None)
            pool = idle_pool(node, w.env)
            if w in pool:
                pool.remove(w)
            if w.lease is not None and not w.blocked:
                add_to(node.avail, w.lease)
            self.scheduler.free_gpus(w.gpu_alloc, node)
        w.lease = None
        w.gpu_alloc = None
        assigned = list(w.assigned)
        w.assigned.clear()
        self.forget_worker(w)
        self.table.worker_lost(w, assigned, kind, why)
        if (node is not None and node.alive and not w.env
                and len(node.workers) + node.starting < node.num_cpus):
            node.starting += 1  # keep the pool at its size: a replacement starts now
            self.out.send(node.peer, P.StartWorkers(1))

    def node_lost(self, node: NodeRec, why: str, level: int = logging.WARNING) -> None:
        """Declare a node dead: its workers are lost, the actors placed there are placed again,
        its copies are re-found or rebuilt."""
        self.log.log(level, "node %s (%s) declared dead: %s", node.node_id, node.address, why)
        node.alive = False
        self.events.add(("NodeDead", self.ctx.now, node.node_id, why))
        for w in [*node.workers.values(), *node.actor_workers.values()]:
            self.worker_lost(w, "NodeLostError", f"node {node.node_id} ({node.address}) was lost ({why})")
        while node.actor_queue:  # placed there, but no worker had started yet
            actor = node.actor_queue.popleft()
            add_to(node.avail, actor.resources)
            actor.gpu_alloc = None
            actor.node = None
            self.actor_table.place_actor(actor)
        node.idle.clear()
        node.env_idle.clear()
        node.starting = 0
        node.env_starting.clear()
        held, node.objects = node.objects, set()
        self.directory.node_lost(node, held)
        if self.node_by_peer.get(node.peer) is node:
            del self.node_by_peer[node.peer]
            self.move(node.peer, PeerKind.NODE, "lost")
            self._remember(node.peer, node.node_id)  # (to name it if it speaks again)

    def forget_worker(self, w: WorkerRec) -> None:
        # its own refs died with it; refs it handed out (in results, arguments, puts) are
        # counted as holds and borrows, so its objects live on exactly as long as needed
        """A worker is gone for good: its peer leaves, and the refs it owned and borrowed with
        it."""
        self.workers.pop(w.peer, None)
        if w.peer in self.lives:
            self.move(w.peer, PeerKind.WORKER, "gone")
        self._owner_left(w.peer)
        self.directory.drop_borrows(w.peer)

    def _owner_left(self, peer: bytes) -> None:
        """A driver or worker is gone: so are its refs. Its actors die with it (unless
        detached), its objects are released, and its pending tasks that nobody else needs are
        cancelled. Many objects and tasks make this a chore, done a slice at a time between
        messages: a driver that held a million refs must not stall the head."""
        self.actor_table.owner_left(peer)
        self.ctx.chore(itertools.chain(self.directory.release_chore(peer),
                                       self.table.cancel_chore(peer)),
                       len(self.directory.objects) + len(self.table.tasks))

    def node_info(self, n: NodeRec) -> dict:
        """One node as ``nodes()`` and ``status`` show it (Ray's field names)."""
        busy_units = sum(w.lease.get(CPU, 0) for w in n.workers.values() if w.lease is not None and not w.blocked)
        return {
            "NodeID": n.node_id,
            "Alive": n.alive,
            "NodeManagerAddress": n.address,
            "NodeManagerHostname": n.hostname,
            "Resources": dict(n.total),
            "Available": {k: max(0, v) for k, v in n.avail.items()},
            "CPUsInUse": busy_units,
            "Workers": len(n.workers),
            "Actors": len(n.actor_workers),
            "TasksRunning": sum(1 for w in n.workers.values() if w.assigned)
                            + sum(1 for w in n.actor_workers.values() if w.assigned),
            "TasksQueued": sum(max(0, len(w.assigned) - 1) for w in n.workers.values())
                           + sum(max(0, len(w.assigned) - 1) for w in n.actor_workers.values()),
            "TasksFinished": n.finished,
            "pid": n.pid,
            "ObjectStore": {k: v for k, v in n.stats.items() if k.startswith("store_")},
            # the machine's figures from the latest heartbeat (psutil), for the dashboard
            "Machine": {k: n.stats[k] for k in _MACHINE_STATS if k in n.stats},
        }

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """Raise AssertionError unless the peers, nodes, workers, leases and free resources
        agree with each other (and workers' task lists with the task table)."""
        peers = self.peers
        for peer, kind in peers.items():
            require(isinstance(kind, PeerKind), f"peer {peer!r}: kind {kind!r}")
            require((kind == "worker") == (peer in self.workers), f"peer {peer!r} ({kind}): "
                    "worker table out of step")
            require((kind == "node") == (peer in self.node_by_peer), f"peer {peer!r} ({kind}): "
                    "node table out of step")
            require(self.lives.get(peer, (None, None))[1] in (Life.JOINED, Life.ORPHAN),
                    f"peer {peer!r} is live but its life is {self.lives.get(peer)}")
            require(peer not in self.ended, f"peer {peer!r} is both live and gone")
        for peer in self.ended:
            require(self.lives.get(peer, (None, None))[1] in (Life.GONE, Life.DEAD, Life.FENCED),
                    f"peer {peer!r} is remembered as ended but its life is {self.lives.get(peer)}")
        for peer, (kind, life) in self.lives.items():
            require(peer in peers or peer in self.ended, f"peer {peer!r} ({kind.value}, "
                    f"{life.value}) is neither live nor remembered")
        for peer in (*self.workers, *self.node_by_peer, *self.beating,
                     *self.directory.borrowed):
            require(peer in peers, f"peer {peer!r} is in a table but never said Hello or left")
        for peer in self.beating:
            require(peers[peer] == "driver", f"peer {peer!r} heartbeats but is no driver")
        for peer, node in self.node_by_peer.items():
            require(node.alive and node.peer == peer and self.nodes.get(node.node_id) is node,
                    f"peer {peer!r} maps to node {node.node_id}, which is not its live record")
        # workers, leases and free resources, per node
        placed_on: dict[int, NodeRec] = {}  # id(WorkerRec) -> its node
        for node_id, node in self.nodes.items():
            _check_node(self, node_id, node, placed_on)
        for node_id, orphans in self.orphan_workers.items():
            for w in orphans:
                require(self.workers.get(w.peer) is w and w.node is None,
                        f"orphan worker {w.worker_id} of node {node_id} is not a live record")
                placed_on[id(w)] = None  # type: ignore[assignment]
        for w in self.workers.values():
            require(id(w) in placed_on, f"worker {w.worker_id} is in no pool, actor or orphan table")
            for t in w.assigned:
                require(t.worker is w and t.state == ASSIGNED
                        and self.table.tasks.get(t.spec.task_id) is t,
                        f"worker {w.worker_id} lists task {t.spec.task_id.hex()}, which is not "
                        "assigned to it")


def _check_node(members: Membership, node_id: str, node: NodeRec, placed_on: dict) -> None:
    """``Membership.check_invariants`` for one node: its workers, leases, free resources,
    GPUs and idle pools (workers found are added to ``placed_on``)."""
    name = f"node {node_id}"
    require(node.node_id == node_id, f"{name} is filed under the wrong id")
    require(node.starting >= 0, f"{name}: {node.starting} workers starting")
    if not node.alive:
        require(not node.workers and not node.actor_workers and not node.idle
                and not node.env_idle and not node.actor_queue and not node.objects,
                f"{name} is dead but still has workers, actors or objects")
        return
    require(members.node_by_peer.get(node.peer) is node, f"{name} is alive but its peer "
            "maps elsewhere")
    expected = dict(node.total)
    gpus_taken: dict[str, int] = {}
    for w in node.workers.values():
        require(members.workers.get(w.peer) is w and w.node is node and w.actor is None,
                f"{name}: pool worker {w.worker_id} is not its live record")
        placed_on[id(w)] = node
        if w.lease is not None and not w.blocked:
            sub_from(expected, w.lease)
        require(w.lease is not None or not w.assigned,
                f"{name}: worker {w.worker_id} runs tasks without a lease")
        add_to(gpus_taken, w.gpu_alloc or {})
    for w in node.actor_workers.values():
        require(members.workers.get(w.peer) is w and w.node is node and w.actor is not None
                and w.actor.worker is w, f"{name}: actor worker {w.worker_id} is not "
                "its actor's live worker")
        placed_on[id(w)] = node
        sub_from(expected, w.actor.resources)
        add_to(gpus_taken, w.actor.gpu_alloc or {})
    for actor in node.actor_queue:
        require(actor.node is node and actor.worker is None and actor.state != A.DEAD,
                f"{name}: {actor.label()} waits for a worker there but is not placed there")
        sub_from(expected, actor.resources)
        add_to(gpus_taken, actor.gpu_alloc or {})
    for k in expected.keys() | node.avail.keys():
        require(node.avail.get(k, 0) == expected.get(k, 0), f"{name}: {k} free is "
                f"{node.avail.get(k, 0)}, but its leases leave {expected.get(k, 0)}")
    for device, free in node.gpus.items():
        require(0 <= free <= UNIT and free + gpus_taken.get(device, 0) == UNIT,
                f"{name}: GPU {device} has {free} units free, {gpus_taken.get(device, 0)} taken")
    pools = [("", node.idle), *node.env_idle.items()]
    idle = [w for _, pool in pools for w in pool]
    require(len(idle) == len({id(w) for w in idle}), f"{name}: a worker is idle twice")
    for env, pool in pools:
        for w in pool:
            require(node.workers.get(w.peer) is w and not w.assigned and w.lease is None
                    and w.env == env, f"{name}: idle worker {w.worker_id} is busy, not "
                    "in the pool, or in another environment's pool")
