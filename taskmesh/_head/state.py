"""The head's scheduler, membership and object directory, as a sans-IO state machine.

    message from a peer ──handle(peer, msg, now)──▶ HeadState ──outbox──▶ messages to peers
    clock ──tick(now)──▶ HeadState (heartbeat deadlines, idle workers)

No sockets, threads or clocks here: the server (server.py) decodes a batch of messages, feeds
them in, then sends whatever the outbox holds, one batched message per peer and type. Unit tests
drive this class directly.

Lifecycle of a task: submitted -> waiting for its dependencies -> ready (queued by resource
shape) -> assigned to a worker (first in that worker's list = running) -> done. Its return
objects are created at submission, owned by the submitter, and hold a value once the task ends
(an error object if it failed; dependents then fail with the same error without running). An
object is dropped when its owner released it and no pending task depends on it. The head keeps
values as opaque bytes: it never unpickles them.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from .. import _protocol as P
from ..config import Config
from ._outbox import Outbox
from .._protocol import HANDLE_INDEX, actor_handle_id, return_ids
from .._ratelimit import RateLimitedLog
from .._resources import CPU, GPU, UNIT, assign_gpus, describe, device_order, valid
from . import actors as A
from . import events as E
from .actors import ActorRec
from .policy import (
    fits,
    is_short,
    pick_node,
    pick_spread,
    steal_count,
    pipeline_window,
    workers_to_start,
)

log = logging.getLogger(__name__)

_ERR = P.SerializedObject.system_error

#: with more pending tasks than this, the head shares the name, function id and resources
#: of tasks of one function (memory over speed)
INTERN_ABOVE = 10_000
#: a task may have at most this many return values (a Submit with more is dropped)
MAX_RETURNS = P.MAX_RETURNS
#: dead actors remembered (calls to older ones fail with "no actor with id ... is known")
MAX_DEAD_ACTORS = 1000
#: a task past its timeout_s that its worker could not interrupt is killed this much later
TIMEOUT_GRACE_S = 2.0
#: work is stolen only from a worker that has reported no result for this long while tasks
#: wait behind its running one (one that reports keeps up: its queue holds milliseconds)
STEAL_AFTER_S = 0.05

# task states
WAITING, READY, ASSIGNED, DONE, CANCELLED = range(5)

#: CPU lent by a blocked worker starts new workers only after this long: most blocks are short
#: (a parent waiting for children it runs itself as Help), and a process start costs far more
START_GRACE_S = 0.05

#: a task whose inputs could not be read is tried again after this pause (doubling up to the
#: maximum: enough for the head to declare their holder dead and rebuild them), at most
#: MAX_DEPENDENCY_RETRIES times
DEPENDENCY_RETRY_S = 0.1
DEPENDENCY_RETRY_MAX_S = 1.0
MAX_DEPENDENCY_RETRIES = 12

#: a chore (see HeadState.chores) does this many steps between looks at the clock; smaller
#: jobs are done at once
CHORE_SLICE = 2000


class NodeRec:
    __slots__ = ("node_id", "peer", "address", "hostname", "pid", "total", "avail", "workers",
                 "idle", "starting", "last_seen", "alive", "finished", "stats", "retiring",
                 "gone_workers", "transfer", "objects", "incarnation", "actor_workers",
                 "actor_queue", "gpus")

    def __init__(self, node_id: str, peer: bytes, info: dict, now: float) -> None:
        self.node_id = node_id
        self.peer = peer
        self.address = str(info.get("address", ""))
        self.hostname = str(info.get("hostname", ""))
        self.pid = _int(info.get("pid"))
        self.total: dict[str, int] = dict(info.get("resources", {}))
        self.avail: dict[str, int] = dict(self.total)
        self.workers: dict[bytes, WorkerRec] = {}
        self.idle: list[WorkerRec] = []
        self.starting = max(0, _int(info.get("prestart")))
        self.last_seen = now
        self.alive = True
        self.finished = 0
        self.stats: dict = {}
        self.retiring: set[str] = set()  # worker ids told to exit
        self.gone_workers: set[str] = set()  # exited before their Hello reached us
        self.transfer = str(info.get("transfer", ""))  # host:port other nodes pull objects from
        self.objects: set[bytes] = set()  # ids of stored objects it holds a copy of
        self.incarnation = _int(info.get("incarnation"))  # +1 each time the agent joins again
        self.actor_workers: dict[bytes, WorkerRec] = {}  # out of the pool: one actor each
        self.actor_queue: deque[ActorRec] = deque()  # placed here, waiting for a new worker
        gpus = info.get("gpus")
        if not isinstance(gpus, list) or not gpus:  # no ids given: 0..n-1 for its GPU total
            gpus = [str(i) for i in range(self.total.get(GPU, 0) // UNIT)]
        #: GPU device id -> free units (UNIT: unused); tasks get CUDA_VISIBLE_DEVICES from it
        self.gpus: dict[str, int] = {str(g): UNIT for g in gpus if isinstance(g, str)}

    @property
    def num_cpus(self) -> int:
        return self.total.get(CPU, 0) // UNIT


class WorkerRec:
    __slots__ = ("peer", "worker_id", "node", "pid", "assigned", "lease", "blocked",
                 "functions", "idle_since", "blocked_since", "incarnation", "actor", "revoking",
                 "slow", "last_result", "gpu_alloc")

    def __init__(self, peer: bytes, worker_id: str, node: NodeRec | None, pid: int, now: float,
                 incarnation: int = 0) -> None:
        self.peer = peer
        self.incarnation = incarnation  # of the node agent that started it
        self.actor: ActorRec | None = None  # the actor it runs (it left the pool for it)
        self.revoking = False  # asked to give back queued tasks (Revoke), no answer yet
        self.slow = False  # work was stolen from it: nothing is pipelined to it until it
        #                    reports a result again
        self.last_result = now  # when it last reported results
        self.gpu_alloc: dict[str, int] | None = None  # GPU devices its lease holds
        self.worker_id = worker_id
        self.node = node
        self.pid = pid
        self.assigned: deque[TaskRec] = deque()
        self.lease: dict[str, int] | None = None  # resources held while it has tasks
        self.blocked = False
        self.functions: set[bytes] = set()
        self.idle_since = now
        self.blocked_since = now


class TaskRec:
    __slots__ = ("spec", "owner", "state", "waiting", "worker", "retries_left", "shape", "queued",
                 "dep_failures", "started", "credit", "held")

    def __init__(self, spec: P.TaskSpec, owner: bytes) -> None:
        self.spec = spec
        self.owner = owner
        self.state = WAITING
        self.waiting = 0
        self.worker: WorkerRec | None = None
        self.retries_left = spec.max_retries
        self.shape = tuple(sorted(spec.resources.items()))
        if spec.strategy:  # one queue per strategy too: a queue's tasks are placed alike
            self.shape += (("strategy", spec.strategy),)
        self.queued = False  # an entry for it sits in a ready queue (maybe stale)
        self.dep_failures = 0  # times a worker could not read its inputs
        self.started: float | None = None  # with timeout_s: when it became its worker's running task
        self.credit = False  # a driver's Submit: its end returns the driver one Credit
        #: ids of the refs in its arguments that it holds (those the head knew when it was
        #: admitted), released when it ends
        self.held: list[bytes] | None = None


class ObjectRec:
    __slots__ = ("value", "owner", "released", "waiters", "subscribers", "dependents", "nbytes",
                 "locations", "holds", "borrowers", "contained", "lineage", "rebuilds_left",
                 "charged")

    def __init__(self, owner: bytes) -> None:
        self.value: P.SerializedObject | None = None
        self.owner = owner
        self.released = False
        self.waiters: list[TaskRec] | None = None
        self.subscribers: list[bytes] | None = None
        self.dependents = 0
        self.nbytes = 0
        #: for a value in node stores (STORED marker): ids of the nodes holding a copy
        self.locations: list[str] | None = None
        #: values that contain a ref to it, plus pending tasks whose arguments do
        self.holds = 0
        #: peers other than the owner holding refs to it (they said Borrow)
        self.borrowers: set[bytes] | None = None
        #: ids of the refs inside its value (each holds one of ``holds`` there)
        self.contained: list[bytes] | None = None
        #: for a stored task result: the task that made it, re-run if every copy is lost
        self.lineage: TaskRec | None = None
        self.rebuilds_left = 0
        #: bytes of its value the head holds inline, counted against its owner's budget
        self.charged = 0

    def needed(self) -> bool:
        """Something still refers to it (the value may not have arrived yet)."""
        return (not self.released or self.dependents > 0 or self.holds > 0
                or bool(self.borrowers))


class HeadState:
    """Everything the head knows, and every decision it makes."""

    def __init__(self, config: Config, now: float = 0.0) -> None:
        self.config = config
        self.out = Outbox()
        self.peers: dict[bytes, str] = {}  # peer -> kind
        self.nodes: dict[str, NodeRec] = {}
        self.node_by_peer: dict[bytes, NodeRec] = {}
        self.workers: dict[bytes, WorkerRec] = {}
        self.orphan_workers: dict[str, list[WorkerRec]] = {}  # said Hello before their node
        self.tasks: dict[bytes, TaskRec] = {}
        self.objects: dict[bytes, ObjectRec] = {}
        self.functions: dict[bytes, bytes] = {}
        self.fn_mean_s: dict[bytes, float] = {}
        self.borrowed: dict[bytes, set[bytes]] = {}  # peer -> objects it said Borrow for
        #: drivers on other machines, which promised heartbeats: peer -> (last heard, period)
        self.beating: dict[bytes, list] = {}
        self.gone_drivers: dict[bytes, None] = {}  # taken as gone for silence (oldest first)
        self.queues: dict[tuple, deque[TaskRec]] = {}
        self.finished = 0
        self.failed = 0
        self.rebuilt = 0  # tasks run again to rebuild lost objects
        self.cancelled = 0  # tasks stopped because nobody needed their results
        #: tasks whose inputs could not be read, to queue again at a time: (when, task)
        self.deferred: list[tuple[float, TaskRec]] = []
        self.warned_shapes: set[tuple] = set()
        self.actors: dict[bytes, ActorRec] = {}
        self.actor_names: dict[tuple[str, str], bytes] = {}  # (namespace, name) -> live actor
        self.unplaced: list[ActorRec] = []  # constructors ready, but no node has room yet
        self.dead_actors: deque[bytes] = deque()  # oldest first
        self.timed: set[TaskRec] = set()  # assigned tasks with a timeout_s (head's backstop)
        self.stolen_asked = 0  # tasks asked back from busy workers for idle ones (Revoke)
        self.stolen = 0  # tasks given back (Returned)
        self.credits_due: dict[bytes, int] = {}  # driver -> tasks of its that ended this round
        self.interned: dict[tuple, Any] = {}
        #: driver -> Credit is sent once this many of its tasks ended (a tenth of its window;
        #: every tick sends the rest), so a stream of tasks does not cost a message per round
        self.credit_batch: dict[bytes, int] = {}
        #: driver -> tasks of its not finished yet (Credit owed), and its window (from its
        #: Hello): a driver with twice its window unfinished gets the surplus failed
        self.in_flight: dict[bytes, int] = {}
        self.windows: dict[bytes, int] = {}
        #: owner -> bytes of its objects' values the head holds inline (small puts and
        #: results); a put past max_head_bytes_per_client is refused (ObjectStoreFullError)
        self.inline_bytes: dict[bytes, int] = {}
        self.cancel_killed: set[bytes] = set()  # workers killed by cancel(force=True)
        #: task id -> tasks it submitted while it ran (TaskSpec.parent), for a recursive cancel
        self.children: dict[bytes, list[TaskRec]] = {}
        #: long scans (the objects of a driver that left, ...) done a slice at a time between
        #: messages: generators that yield every CHORE_SLICE steps (run_chores)
        self.chores: deque[Iterator[None]] = deque()
        self.now = now
        #: messages (or parts of them) dropped because they make no sense here: from a peer
        #: that never said Hello, of the wrong kind, about unknown tasks or workers, ...
        #: Counted by reason; logged rate-limited (a peer can send them at will)
        self.dropped = RateLimitedLog(log.getChild("dropped"), clock=lambda: self.now)
        #: the sockets' own counts, for status: set by the head's I/O shell, called only when
        #: a status is asked for
        self.transport: Callable[[], dict] = dict
        #: the head loop's lag (p50, p99, max), for status: set by the I/O shell
        self.loop_lag: Callable[[], dict] = dict
        #: every state change a user could ask about (events.py): what metrics, the dashboard
        #: and the journal read
        self.events = E.EventLog(config.event_ring)
        #: peers of nodes declared dead -> their ids (to name a node that speaks again)
        self.dead_node_peers: dict[bytes, str] = {}

    # ------------------------------------------------------------------ entry points

    def handle(self, peer: bytes, msg: Any, now: float) -> None:
        """Apply one decoded message from ``peer``."""
        self.now = now
        kind = self.peers.get(peer)
        if type(msg) is P.Hello:
            self._on_hello(peer, msg)
            return
        if kind is None:
            if type(msg) is P.Heartbeat:  # a node we declared dead is still talking
                node_id = self.dead_node_peers.pop(peer, None)
                if node_id is not None:
                    self.events.emit(E.NodeFenced(now, node_id))
                self.out.send(peer, P.Refused("this head declared the node dead (it was silent "
                                              "longer than the heartbeat time-out); join again "
                                              "as a new incarnation"))
            elif peer in self.gone_drivers:  # a driver we took as gone is still talking
                self.out.send(peer, P.Refused(
                    "this head took this driver as gone: it sent nothing for longer than the "
                    "heartbeat time-out, so its tasks were cancelled and its objects freed. "
                    "Call taskmesh.shutdown() and taskmesh.init() to connect again"))
                return
            self.dropped.event("from a peer that never said Hello", "dropped %s from %r, a peer "
                               "that never said Hello (or left)", type(msg).__name__, peer)
            return
        beat = self.beating.get(peer)
        if beat is not None:
            beat[0] = now
        if type(msg) is P.Malformed:  # (counted and logged by the socket)
            self._reject(peer, msg.message or "message", f"malformed: {msg.reason}",
                         msg.request_id)
            return
        handler = _HANDLERS.get(type(msg))
        if handler is None or kind not in handler[1]:
            self.dropped.event("not expected from its kind of peer", "dropped %s from %r: not "
                               "expected from a %s", type(msg).__name__, peer, kind)
            self._reject(peer, type(msg).__name__, f"a {kind} may not send it",
                         getattr(msg, "request_id", 0))
            return
        handler[0](self, peer, msg)

    def tick(self, now: float, stalled: float = 0.0) -> None:
        """Time passed: check node heartbeats and retire surplus idle workers.

        ``stalled``: how long the head itself did not run since the last tick (its process
        was stopped or starved, or collected garbage), as its I/O shell measured it. A judge
        that stalled does not convict: that time does not count as silence of the nodes and
        drivers it watches, nor against the time-outs of running tasks."""
        self.now = now
        if stalled > 0:
            self._forgive(stalled)
        deadline = now - self.config.heartbeat_timeout_s
        for node in list(self.nodes.values()):
            if node.alive and node.last_seen < deadline:
                self._node_lost(node, f"no heartbeat for {self.config.heartbeat_timeout_s:g} s")
        if self.beating:
            timeout = self.config.heartbeat_timeout_s
            for peer, (last, period) in list(self.beating.items()):
                if now - last > max(timeout, 4 * period):
                    log.warning("driver %s has been silent for %.1f s: it is taken as gone; "
                                "its tasks are cancelled and its objects freed", peer.hex(),
                                now - last)
                    self._client_left(peer, f"silent for {now - last:.1f} s")
                    self.gone_drivers[peer] = None
                    if len(self.gone_drivers) > 1000:  # remembered only to tell them so
                        del self.gone_drivers[next(iter(self.gone_drivers))]
        if self.timed:
            self._enforce_timeouts(now)
        if not self.queues or self._only_unplaceable_queued():
            self._steal()
        if self.credits_due:
            self._send_credits(all_due=True)
        if self.deferred:
            due = [t for when, t in self.deferred if when <= now]
            self.deferred = [(when, t) for when, t in self.deferred if when > now]
            for t in due:
                if self.tasks.get(t.spec.task_id) is t and t.state == WAITING:
                    self._wait_inputs(t)
        idle_deadline = now - self.config.idle_worker_timeout_s
        for node in self.nodes.values():
            surplus = len(node.workers) - max(node.num_cpus, 1)
            if surplus <= 0:
                continue
            for w in list(node.idle):
                if surplus <= 0:
                    break
                if w.idle_since < idle_deadline:
                    node.idle.remove(w)
                    node.workers.pop(w.peer, None)
                    node.retiring.add(w.worker_id)
                    self._forget_worker(w)
                    self.out.send(w.peer, P.Exit("idle surplus worker"))
                    surplus -= 1

    def _forgive(self, stalled: float) -> None:
        """Move every liveness clock on by the time the head did not run (never past now)."""
        now = self.now
        for node in self.nodes.values():
            node.last_seen = min(now, node.last_seen + stalled)
        for beat in self.beating.values():
            beat[0] = min(now, beat[0] + stalled)
        for t in self.timed:
            if t.started is not None:
                t.started = min(now, t.started + stalled)
        log.info("the head did not run for %.1f s (stopped, starved or collecting garbage): "
                 "that time is not counted as silence of its nodes and drivers", stalled)

    def schedule(self) -> None:
        """Assign ready tasks to workers (called after every input batch)."""
        if self.unplaced:
            waiting, self.unplaced = self.unplaced, []
            for actor in waiting:
                self._place_actor(actor)
        for shape, queue in list(self.queues.items()):
            if queue:
                self._schedule_shape(queue)
            if not queue:
                del self.queues[shape]
        if self.credits_due:  # backpressure: drivers may submit as many more
            self._send_credits(all_due=False)

    # ------------------------------------------------------------------ handshake

    def _on_hello(self, peer: bytes, msg: P.Hello) -> None:
        known = self.peers.get(peer)
        if known is not None and not (known == "node" and msg.kind == "node"):
            # one Hello per connection; a replayed or confused one must not change who the
            # peer is (only a node agent that restarted says Hello again: it re-registers)
            self.dropped.event("second Hello", "dropped a Hello as a %s from %r, which said "
                               "Hello as a %s already", msg.kind, peer, known)
            return
        if peer in self.gone_drivers:
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
            self.peers[peer] = msg.kind
            if msg.kind == "driver":
                self.events.emit(E.DriverJoined(self.now, peer))
            beat_s = info.get("heartbeat_s")
            if msg.kind == "driver" and isinstance(beat_s, (int, float)) and beat_s > 0:
                self.beating[peer] = [self.now, float(beat_s)]
            window = info.get("max_pending_tasks")
            if msg.kind == "driver" and type(window) is int and window > 0:
                self.credit_batch[peer] = max(1, window // 10)
                self.windows[peer] = window
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
                self._node_lost(old, "re-registered")
            node = NodeRec(node_id, peer, info, self.now)
            self.nodes[node_id] = node
            self.node_by_peer[peer] = node
            self.peers[peer] = "node"
            for w in self.orphan_workers.pop(node_id, []):
                if w.incarnation == node.incarnation:
                    self._attach_worker(w, node)
                else:  # started by an earlier incarnation, which stopped it when it rejoined
                    self._stale_worker(w, node_id)
            log.info("node %s joined from %s with %s", node_id, node.address,
                     describe(node.total))
            self.events.emit(E.NodeJoined(self.now, node_id, node.address, node.incarnation))
        elif msg.kind == "worker":
            node_id = str(info.get("node_id", ""))
            w = WorkerRec(peer, str(info.get("worker_id", "")), None, _int(info.get("pid")),
                          self.now, _int(info.get("incarnation")))
            self.peers[peer] = "worker"
            self.workers[peer] = w
            node = self.nodes.get(node_id)
            if node is not None and w.incarnation < node.incarnation:
                self._stale_worker(w, node_id)
                return
            if node is None or w.incarnation > node.incarnation:  # its node's Hello comes next
                self.orphan_workers.setdefault(node_id, []).append(w)
            elif w.worker_id in node.gone_workers:  # its exit overtook its Hello
                node.gone_workers.discard(w.worker_id)
                self._forget_worker(w)
                return
            elif not node.alive:
                self.out.send(peer, P.Exit(f"node {node_id} was declared dead"))
                self._forget_worker(w)
                return
            else:
                self._attach_worker(w, node)
        else:
            self._refuse(peer, f"unknown peer kind {msg.kind!r}")
            return
        self.out.send(peer, P.Welcome(P.PROTOCOL_VERSION, {"peer": peer}))

    def _reject(self, peer: bytes, message: str, reason: str, request_id: int = 0,
                object_ids: Iterable[bytes] = ()) -> None:
        """Tell a peer that one of its messages was refused, and why (never silence: a caller
        waiting for an answer, or for the results of a refused task, must not hang)."""
        self.out.send(peer, P.Rejected(message, request_id, list(object_ids), reason))

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
        self._forget_worker(w)

    def _attach_worker(self, w: WorkerRec, node: NodeRec) -> None:
        w.node = node
        node.starting = max(0, node.starting - 1)
        if node.actor_queue:  # it was started for an actor placed here
            self._start_actor(node.actor_queue.popleft(), w)
            return
        node.workers[w.peer] = w
        w.idle_since = self.now
        node.idle.append(w)

    # ------------------------------------------------------------------ clients

    def _on_register_function(self, peer: bytes, msg: P.RegisterFunction) -> None:
        self.functions[msg.function_id] = bytes(msg.blob)

    def _on_submit(self, peer: bytes, msg: P.Submit) -> None:
        objects = self.objects
        events = self.events
        credit = self.peers.get(peer) == "driver"
        intern = self._intern
        for spec in msg.tasks:
            rids = None
            if (0 <= spec.num_returns <= MAX_RETURNS and len(spec.task_id) == 16
                    and spec.task_id not in self.tasks and spec.task_id not in self.actors
                    and spec.method != "__init__"):
                rids = return_ids(spec.task_id, spec.num_returns)
                if not objects.keys().isdisjoint(rids):  # its results exist: a duplicate
                    rids = None
            if rids is None:
                self.dropped.event("duplicate or invalid task", "dropped task %s (%s) from %r: "
                                   "its id is taken or malformed, or it has %d returns",
                                   spec.task_id.hex(), spec.name, peer, spec.num_returns)
                if credit:
                    self.credits_due[peer] = self.credits_due.get(peer, 0) + 1
                self._reject(peer, "Submit", f"task {spec.name} ({spec.task_id.hex()}): its id "
                             "is taken or malformed, it has more than "
                             f"{MAX_RETURNS:,} returns, or it is an actor constructor",
                             object_ids=self._unclaimed_returns(spec))
                continue
            if len(self.tasks) > INTERN_ABOVE:  # many pending: tasks of one function share
                # their name, function id and resources (one copy each; costs ~1 us a task)
                spec = spec._replace(name=intern(spec.name),
                                     function_id=intern(spec.function_id),
                                     resources=intern(spec.resources))
            t = TaskRec(spec, peer)
            events.emit(E.TaskSubmitted(self.now, spec.task_id, spec.name, spec.actor_id))
            if credit:
                flying = self.in_flight.get(peer, 0)
                window = self.windows.get(peer, self.config.max_pending_tasks)
                if flying >= 2 * window:  # it ignores Credit: bound what it costs the head
                    self._over_window(t, rids, flying, window)
                    continue
                t.credit = True
                self.in_flight[peer] = flying + 1
            if spec.actor_id:
                actor = self.actors.get(spec.actor_id)
                if actor is None or actor.state == A.DEAD:
                    for oid in rids:
                        objects[oid] = ObjectRec(peer)
                    why = (A.died_message(actor, spec.name) if actor is not None else
                           f"call {spec.name} failed: no actor with id {spec.actor_id.hex()} "
                           "is known to the head")
                    self._finish(t, [_ERR("ActorDiedError", why)] * spec.num_returns,
                                 deps_counted=False)
                    continue
            for oid in rids:
                objects[oid] = ObjectRec(peer)
            if spec.function_id not in self.functions:
                self._finish(t, [_ERR("TaskmeshError", f"task {spec.name}: its function was "
                                      "never registered with the head")] * spec.num_returns,
                             deps_counted=False)
                continue
            unknown = next((d for d in spec.deps if d not in objects or d in rids), None)
            if unknown is not None:
                why = ("is its own result" if unknown in rids else
                       "the head does not know: it was freed or never existed")
                self._finish(t, [_ERR("ObjectLostError", f"task {spec.name} depends on object "
                                      f"{unknown.hex()}, which {why}")] * spec.num_returns,
                             deps_counted=False)
                continue
            if spec.actor_id:  # in submission order: it leaves the queue only in its turn
                t.state = WAITING
                t.queued = True
                self.actors[spec.actor_id].calls.append(t)
            if spec.parent:
                self._add_child(spec.parent, t)
            self._admit(t)

    def _unclaimed_returns(self, spec: P.TaskSpec) -> list[bytes]:
        """The return ids of a refused task that no live task or object uses (its submitter
        may fail their refs); none if they belong to something else."""
        if (not 0 <= spec.num_returns <= MAX_RETURNS or len(spec.task_id) != 16
                or spec.task_id in self.tasks or spec.task_id in self.actors):
            return []
        rids = return_ids(spec.task_id, spec.num_returns)
        return rids if self.objects.keys().isdisjoint(rids) else []

    def _over_window(self, t: TaskRec, rids: list[bytes], flying: int, window: int) -> None:
        """Fail a task of a driver that has twice its window of tasks unfinished: a taskmesh
        driver waits for Credit long before that, so this one ignores backpressure, and
        queueing its tasks could take all of the head's memory."""
        peer = t.owner
        self.credits_due[peer] = self.credits_due.get(peer, 0) + 1
        for oid in rids:
            self.objects[oid] = ObjectRec(peer)
        self.dropped.event("over its window", "failed task %s of driver %r: it has %d tasks "
                           "unfinished, twice its max_pending_tasks of %d", t.spec.name, peer,
                           flying, window)
        why = (f"the head refused task {t.spec.name}: this driver already has {flying:,} "
               f"unfinished tasks, twice its max_pending_tasks ({window:,}); a taskmesh driver "
               "waits for the head's Credit instead of sending more")
        self._finish(t, [_ERR("TaskmeshError", why)] * t.spec.num_returns, deps_counted=False)

    def _admit(self, t: TaskRec) -> None:
        """Count a new (or re-run) task's uses of its inputs and queue it once they exist."""
        objects = self.objects
        spec = t.spec
        failed: P.SerializedObject | None = None
        for dep in spec.deps:
            obj = objects[dep]
            obj.dependents += 1
            if obj.value is None:
                t.waiting += 1
                if obj.waiters is None:
                    obj.waiters = [t]
                else:
                    obj.waiters.append(t)
            elif obj.value.is_error and failed is None:
                failed = obj.value
        if spec.args is not None and spec.args.contained:
            t.held = self._hold(spec.args.contained)
        self.tasks[spec.task_id] = t
        if failed is not None:
            self._fail_task(t, failed)
        elif t.waiting == 0:
            self._make_ready(t)

    def _on_put(self, peer: bytes, msg: P.Put) -> None:
        for oid, value in msg.objects:
            obj = self.objects.get(oid)
            if obj is None:
                obj = self.objects[oid] = ObjectRec(peer)
            elif (obj.value is not None or obj.owner != peer or oid[:16] in self.tasks
                  or oid[:16] in self.actors):  # (exists, or a pending task's result)
                self.dropped.event("Put of an object that exists", "dropped a Put of object %s "
                                   "from %r: it exists already (owned by %s)", oid.hex(), peer,
                                   "the sender" if obj.owner == peer else "another peer")
                self._reject(peer, "Put", f"object {oid.hex()} exists already; the put was "
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
                    value = _ERR("ObjectStoreFullError", (
                        f"the head refused put() of object {oid.hex()} ({value.nbytes:,} bytes): "
                        f"it already holds {used:,} bytes of this process's objects, and "
                        f"max_head_bytes_per_client is {limit:,}. Drop refs you no longer "
                        "need, or run a node on this machine (large values then go to its "
                        "object store)"))
            self._set_value(oid, obj, value, push_owner=False)

    def _on_subscribe(self, peer: bytes, msg: P.Subscribe) -> None:
        for oid in msg.object_ids:
            obj = self.objects.get(oid)
            if obj is None:
                self.out.add(peer, P.ObjectValues, P.ObjectValue(oid, _ERR(
                    "ObjectLostError", f"object {oid.hex()} is not known to the head: it was "
                    "freed or never existed"), 0))
            elif obj.value is not None:
                self.out.add(peer, P.ObjectValues, P.ObjectValue(oid, obj.value, obj.nbytes))
            elif obj.subscribers is None:
                obj.subscribers = [peer]
            elif peer not in obj.subscribers:
                obj.subscribers.append(peer)

    def _on_release(self, peer: bytes, msg: P.Release) -> None:
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
            self._drop_if_unneeded(oid, obj)

    def _on_borrow(self, peer: bytes, msg: P.Borrow) -> None:
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

    def _drop_borrows(self, peer: bytes) -> None:
        """A peer is gone: so are the refs it borrowed (a chore if there are many)."""
        borrowed = self.borrowed.pop(peer, ())
        chore = self._unborrow_chore(peer, borrowed)
        if len(borrowed) <= CHORE_SLICE:
            for _ in chore:
                pass
        else:
            self.chores.append(chore)

    def _unborrow_chore(self, peer: bytes, borrowed: Iterable[bytes]) -> Iterator[None]:
        for i, oid in enumerate(borrowed):
            obj = self.objects.get(oid)
            if obj is not None and obj.borrowers and peer in obj.borrowers:
                obj.borrowers.discard(peer)
                self._drop_if_unneeded(oid, obj)
            if i % CHORE_SLICE == CHORE_SLICE - 1:
                yield

    def _on_goodbye(self, peer: bytes, msg: P.Goodbye) -> None:
        """A driver left: drop what it owned and cancel its tasks nobody else needs. A node
        that says Goodbye is stopping (``taskmesh stop``): lost now, not a time-out later."""
        node = self.node_by_peer.get(peer)
        if node is not None:
            if node.alive:
                self._node_lost(node, "its node agent was stopped", logging.INFO)
            return
        self._client_left(peer, "it said goodbye")

    def _client_left(self, peer: bytes, why: str) -> None:
        """A driver (or status client) is gone: drop what it owned, cancel its tasks nobody
        else needs."""
        if self.peers.get(peer) == "driver":
            self.events.emit(E.DriverLeft(self.now, peer, why))
        self.beating.pop(peer, None)
        self.credit_batch.pop(peer, None)
        self.windows.pop(peer, None)
        self._release_owned_by(peer)
        self._drop_borrows(peer)
        if self.peers.get(peer) in ("driver", "status"):
            del self.peers[peer]
        if not self.in_flight.get(peer):  # else its last running task's end removes it
            self.in_flight.pop(peer, None)

    def disconnected(self, peer: bytes) -> None:
        """A peer's connection ended, so its process is gone (local peers only: TCP peers are
        judged by heartbeats). A driver is treated as having said Goodbye; a node as lost.
        A worker's exit is reported by its node agent, with the exit code."""
        kind = self.peers.get(peer)
        if kind in ("driver", "status"):
            self._client_left(peer, "its connection closed")
        elif kind == "node":
            node = self.node_by_peer.get(peer)
            if node is not None and node.alive:
                self._node_lost(node, "its node agent exited")

    def _on_info(self, peer: bytes, msg: P.InfoRequest) -> None:
        self.out.send(peer, P.InfoReply(msg.request_id, self.info(msg.what)))

    # ------------------------------------------------------------------ cancel and time-outs

    def _on_cancel(self, peer: bytes, msg: P.Cancel) -> None:
        """``taskmesh.cancel()``: the task fails now with TaskCancelledError (its dependents
        too); a queued one never runs, one on a worker is interrupted (or, with ``force``,
        its worker killed). Finished tasks and actor constructors are left alone. With
        ``recursive`` the unfinished tasks it submitted go the same way, and theirs."""
        for oid in msg.object_ids:
            t = self.tasks.get(oid[:16])
            if t is None or t.state == DONE or t.spec.method == "__init__":
                continue
            why = f"task {t.spec.name} was cancelled by taskmesh.cancel()"
            if msg.recursive and self.children:
                for child in self._descendants(t):
                    self._stop_task(child, "TaskCancelledError",
                                    f"task {child.spec.name} was cancelled: its parent {why}",
                                    msg.force)
            self._stop_task(t, "TaskCancelledError", why, msg.force)

    def _add_child(self, parent: bytes, t: TaskRec) -> None:
        """Remember that a running task submitted ``t`` (for a recursive cancel). Entries of
        children that ended are pruned as the list doubles, so a task that submits millions
        keeps only its unfinished ones."""
        if parent not in self.tasks:
            return
        kids = self.children.get(parent)
        if kids is None:
            self.children[parent] = [t]
            return
        kids.append(t)
        n = len(kids)
        if n >= 64 and n & (n - 1) == 0:
            kids[:] = [k for k in kids if self.tasks.get(k.spec.task_id) is k]

    def _descendants(self, t: TaskRec) -> list[TaskRec]:
        """The unfinished tasks ``t`` submitted, theirs, and so on (children before their
        own children; actor constructors are not cancelled: kill the actor)."""
        out: list[TaskRec] = []
        seen = {id(t)}
        stack = [t]
        while stack:
            for k in self.children.get(stack.pop().spec.task_id, ()):
                if (id(k) in seen or self.tasks.get(k.spec.task_id) is not k
                        or k.spec.method == "__init__"):
                    continue
                seen.add(id(k))
                out.append(k)
                stack.append(k)
        return out

    def _stop_task(self, t: TaskRec, kind: str, why: str, force: bool) -> None:
        w = t.worker
        if t.state == ASSIGNED and w is not None:
            running = bool(w.assigned) and w.assigned[0] is t
            if t in w.assigned:
                w.assigned.remove(t)
            self._next_started(w)
            node = w.node
            if node is not None and node.alive:
                if force and running and w.actor is None:
                    self.cancel_killed.add(w.peer)
                    self.out.send(node.peer, P.KillWorker(w.worker_id, why))
                else:  # running: interrupted; queued on the worker: skipped when reached
                    self.out.send(node.peer, P.InterruptTask(w.worker_id, t.spec.task_id))
            if not w.assigned and w.lease is not None:
                self._release_lease(w)
        else:
            self._cancel_waiting(t)
        self.timed.discard(t)
        t.worker = None
        self._fail_task(t, _ERR(kind, why))

    def _next_started(self, w: WorkerRec) -> None:
        """The task now at the front of a worker's list starts: its time-out counts from now."""
        if w.assigned:
            t = w.assigned[0]
            if t.spec.timeout_s and t.started is None:
                t.started = self.now

    def _enforce_timeouts(self, now: float) -> None:
        """The worker stops a task whose timeout_s ran out; if it could not (stuck in code
        that does not return to the interpreter), its process is killed a grace period later."""
        for t in list(self.timed):
            if t.state != ASSIGNED or t.worker is None:
                self.timed.discard(t)
            elif t.started is not None and now - t.started > t.spec.timeout_s + TIMEOUT_GRACE_S:
                self._stop_task(t, "TaskTimeoutError", (
                    f"task {t.spec.name} ran longer than its timeout_s={t.spec.timeout_s:g} s "
                    f"and did not stop when interrupted: its worker (pid {t.worker.pid}) was "
                    "killed"), force=True)

    # ------------------------------------------------------------------ actors

    def _on_create_actor(self, peer: bytes, msg: P.CreateActor) -> None:
        spec, opts = msg.spec, msg.options
        reply = msg.request_id
        problem = A.options_problem(opts)
        if (problem is not None or len(spec.task_id) != 16 or spec.actor_id != spec.task_id
                or spec.method != "__init__" or spec.task_id in self.actors
                or spec.task_id in self.tasks or return_ids(spec.task_id, 1)[0] in self.objects
                or actor_handle_id(spec.task_id) in self.objects):
            problem = problem or "its id is taken or malformed"
            self.dropped.event("invalid actor creation", "dropped CreateActor %s from %r: %s",
                               spec.task_id.hex(), peer, problem)
            if reply:
                self.out.send(peer, P.ActorReply(reply, {"error": f"invalid actor creation: "
                                                                  f"{problem}"}))
            else:
                self._reject(peer, "CreateActor", f"actor {spec.name}: invalid actor creation: "
                             f"{problem}")
            return
        actor = ActorRec(spec._replace(num_returns=1), peer, opts)
        if actor.name_key is not None:
            existing = self.actors.get(self.actor_names.get(actor.name_key, b""))
            if existing is not None:
                if reply:
                    info = existing.handle_info() if opts.get("get_if_exists") else {
                        "error": f"an actor named {actor.name_key[1]!r} already exists "
                                 f"({existing.label()}); pass get_if_exists=True to get it"}
                    self.out.send(peer, P.ActorReply(reply, info))
                return
            self.actor_names[actor.name_key] = actor.actor_id
        self.actors[actor.actor_id] = actor
        # the object its handles refer to: owned by the creator, counted like any object;
        # when it is freed, an actor that is neither detached nor named ends (_handle_freed)
        handle = self.objects[actor_handle_id(actor.actor_id)] = ObjectRec(peer)
        handle.value = A.HANDLE_VALUE
        if reply:
            self.out.send(peer, P.ActorReply(reply, actor.handle_info()))
        self._start_constructor(actor)

    def _start_constructor(self, actor: ActorRec) -> None:
        """Run the actor's constructor (again): its inputs first, then a worker."""
        old = actor.ctor
        if old is not None and self.tasks.get(old.spec.task_id) is old:
            # a restart while the last run was pending (sent, or waiting for its inputs):
            # that run lets go of its inputs, and the new one counts them again
            del self.tasks[old.spec.task_id]
            self.events.emit(E.TaskCancelled(self.now, old.spec.task_id, "its actor restarts"))
            self._cancel_waiting(old)
            self.timed.discard(old)
            old.state = CANCELLED
            old.worker = None
            self._release_inputs(old)
        spec = actor.spec
        t = TaskRec(spec, actor.owner)
        t.retries_left = 0  # a lost constructor is a restart, counted by max_restarts
        actor.ctor = t
        oid = return_ids(spec.task_id, 1)[0]
        obj = self.objects.get(oid)
        if obj is None:  # "created" (None, or why not): nobody holds a ref, dropped once set
            obj = self.objects[oid] = ObjectRec(actor.owner)
            obj.released = True
        else:  # a restart: pending again
            self._reset_value(obj, None)
            if obj.locations:  # (a constructor's result is None: never stored, but be sure)
                self._free_copies(oid, obj.locations)
                obj.locations = None
        if spec.function_id not in self.functions:
            self._actor_dead(actor, "its class was never registered with the head")
            return
        missing = next((d for d in spec.deps if d not in self.objects), None)
        if missing is not None:
            self._actor_dead(actor, f"its constructor's argument {missing.hex()} was freed")
            return
        self.events.emit(E.TaskSubmitted(self.now, spec.task_id, spec.name, spec.actor_id))
        self._admit(t)

    def _actor_task_ready(self, t: TaskRec) -> None:
        actor = self.actors.get(t.spec.actor_id)
        if actor is None:
            return
        if t.spec.method == "__init__":
            if actor.ctor is t and actor.state in (A.PENDING, A.RESTARTING):
                t.state = READY
                self._place_actor(actor)
            elif actor.ctor is t and actor.state == A.CREATING and actor.worker is not None:
                t.state = READY  # its worker could not read its inputs: again, once they exist
                self._send_constructor(actor)
            return
        t.state = READY
        if not t.queued:  # a call sent before and coming back (its inputs were lost)
            t.queued = True
            actor.calls.appendleft(t)
        self._dispatch_actor(actor)

    def _place_actor(self, actor: ActorRec) -> None:
        """Pick a node for a ready constructor: where its resources fit, an idle worker (fast),
        then the fewest actors. No node fits: it waits in ``unplaced`` (the owner is told)."""
        if actor.state == A.DEAD or actor.node is not None:  # (dead, or placed already)
            return
        demand = actor.resources
        best = None
        for n in self.nodes.values():
            if n.alive and fits(n.avail, demand):
                key = (not n.idle, len(n.actor_workers) + len(n.actor_queue))
                if best is None or key < best[0]:
                    best = (key, n)
        if best is None:
            if actor not in self.unplaced:
                self.unplaced.append(actor)
                if not actor.warned and not any(fits(n.total, demand)
                                                for n in self.nodes.values() if n.alive):
                    actor.warned = True
                    self.out.send(actor.owner, P.Notice("warning", (
                        f"no node can start {actor.label()} now: it needs {describe(demand)}. "
                        "It waits until such a node joins.")))
            return
        node = best[1]
        if demand.get(GPU):
            alloc = assign_gpus(node.gpus, demand[GPU])
            if alloc is None:  # GPU units enough in total, not on whole devices: wait
                if actor not in self.unplaced:
                    self.unplaced.append(actor)
                return
            actor.gpu_alloc = alloc
        _sub(node.avail, demand)
        actor.node = node
        if node.idle:
            w = node.idle.pop()
            node.workers.pop(w.peer, None)
            self._start_actor(actor, w)
        else:  # the next worker that joins this node is the actor's
            node.actor_queue.append(actor)
            if node.starting < len(node.actor_queue):  # none on its way for it yet
                node.starting += 1
                self.out.send(node.peer, P.StartWorkers(1))

    def _start_actor(self, actor: ActorRec, w: WorkerRec) -> None:
        node = w.node
        node.actor_workers[w.peer] = w
        if node.alive and len(node.workers) + node.starting - len(node.actor_queue) < node.num_cpus:
            node.starting += 1  # a replacement keeps the pool at its size
            self.out.send(node.peer, P.StartWorkers(1))
        w.actor = actor
        w.lease = None
        actor.worker = w
        actor.state = A.CREATING
        self._send_constructor(actor)

    def _send_constructor(self, actor: ActorRec) -> None:
        """Hand the ready constructor to the actor's worker."""
        t = actor.ctor
        w = actor.worker
        if t is None or t.state != READY:  # (cannot happen: placed only when ready)
            return
        if t.spec.deps and not self._inputs_ready(t):  # one is being made again: wait
            self._wait_inputs(t)
            return
        t.state = ASSIGNED
        t.worker = w
        w.assigned.append(t)
        self._started(t, w)
        self.out.add(w.peer, P.Execute, self._assignment(t, w))

    def _actor_created(self, actor: ActorRec, t: TaskRec, value: P.SerializedObject | None) -> None:
        if actor.ctor is not t:
            return
        actor.ctor = None
        if value is None or value.is_error:  # the worker says why, as a system error
            why = (value.read_system_error()[1] if value is not None
                   and value.flags == P.SerializedObject.SYSTEM_ERROR else "its constructor failed")
            self._kill_actor(actor, why)
            return
        actor.state = A.ALIVE
        self.events.emit(E.ActorCreated(self.now, actor.actor_id, actor.class_name,
                                        actor.node.node_id if actor.node is not None else ""))
        self._dispatch_actor(actor)

    def _dispatch_actor(self, actor: ActorRec) -> None:
        """Send an alive actor's calls whose turn came (all before them sent) to its worker."""
        if actor.state != A.ALIVE:
            return
        calls = actor.calls
        w = actor.worker
        while calls:
            t = calls[0]
            if t.state == DONE or self.tasks.get(t.spec.task_id) is not t:
                calls.popleft().queued = False  # failed while waiting (e.g. an input failed)
                continue
            if t.state != READY:
                return
            if t.spec.deps and not self._inputs_ready(t):  # one is being made again
                self._wait_inputs(t)  # (it keeps its turn: it leaves the queue once ready)
                continue
            calls.popleft().queued = False
            self._assign(t, w)

    def _actor_worker_lost(self, w: WorkerRec, why: str) -> None:
        """The actor's process (or node) died: retry or fail the calls it had, then restart
        the actor or declare it dead."""
        actor = w.actor
        node = w.node
        if node is not None:
            node.actor_workers.pop(w.peer, None)
            _add(node.avail, actor.resources)
            self._free_gpus(actor.gpu_alloc, node)
        actor.gpu_alloc = None
        sent = list(w.assigned)
        w.assigned.clear()
        self._forget_worker(w)
        # (calls it made to itself were cancelled as it left)
        sent = [t for t in sent if t.state == ASSIGNED]
        if actor.worker is not w:
            return
        actor.worker = None
        actor.node = None
        if actor.state != A.DEAD:
            actor.cause = why
        ctor = actor.ctor if actor.ctor in sent else None
        sent = [t for t in sent if t is not ctor]
        retry, fail = A.split_in_flight(sent)
        if actor.state == A.DEAD or not A.will_restart(actor):
            retry, fail = [], sent
        for t in reversed(retry):
            t.worker = None
            t.state = READY
            t.queued = True
            actor.calls.appendleft(t)
            self.events.emit(E.TaskRetried(self.now, t.spec.task_id, why))
        for t in fail:
            t.worker = None
            self._fail_task(t, _ERR("ActorDiedError", A.died_message(actor, t.spec.name)))
        if ctor is not None and not A.will_restart(actor):  # lost while creating, for good
            actor.ctor = None
            self._fail_task(ctor, _ERR("ActorDiedError", A.died_message(actor)))
        if actor.state == A.DEAD:
            return
        if A.will_restart(actor):
            if actor.restarts_left > 0:
                actor.restarts_left -= 1
            actor.restarts += 1
            actor.state = A.RESTARTING
            self.events.emit(E.ActorRestarted(self.now, actor.actor_id, actor.restarts, why))
            log.warning("%s died (%s): restarting it (restart %d)", actor.label(), why,
                        actor.restarts)
            self._start_constructor(actor)
        else:
            self._actor_dead(actor, why)

    def _kill_actor(self, actor: ActorRec, why: str) -> None:
        """Stop an actor for good: its queued calls fail now, its process is killed (the
        calls it had fail when its exit is reported)."""
        actor.no_restart = True
        w = actor.worker
        self._actor_dead(actor, why)
        if w is not None and w.node is not None and w.node.alive:
            self.out.send(w.node.peer, P.KillWorker(w.worker_id, f"{actor.label()}: {why}"))

    def _handle_freed(self, actor_id: bytes) -> None:
        """No handle to the actor is left anywhere (its handle object was freed): one that is
        neither detached nor named ends once the calls already made are done, as in Ray."""
        actor = self.actors.get(actor_id)
        if (actor is None or actor.state == A.DEAD or actor.detached
                or actor.name_key is not None):
            return
        actor.out_of_scope = True
        self._end_if_idle(actor)

    def _end_if_idle(self, actor: ActorRec) -> None:
        """An actor whose handles are all gone ends when it has no call left: an idle live
        one is asked to exit (its process ends normally); one still starting is stopped."""
        if actor.state == A.DEAD:
            return
        tasks = self.tasks
        if any(tasks.get(t.spec.task_id) is t for t in actor.calls):
            return
        w = actor.worker
        if w is not None and any(t is not actor.ctor for t in w.assigned):
            return
        why = "all its handles are gone (an actor that is neither detached nor named ends then)"
        if actor.state == A.ALIVE and w is not None:
            actor.no_restart = True
            self._actor_dead(actor, why)
            self.out.send(w.peer, P.Exit(f"{actor.label()} ended: {why}"))
        else:
            self._kill_actor(actor, why)

    def _actor_dead(self, actor: ActorRec, why: str) -> None:
        if actor.state == A.DEAD:
            return
        actor.state = A.DEAD
        actor.cause = why
        log.info("%s is dead: %s", actor.label(), why)
        self.events.emit(E.ActorDead(self.now, actor.actor_id, why))
        self.dead_actors.append(actor.actor_id)  # kept a while, to say why calls to it fail
        if len(self.dead_actors) > MAX_DEAD_ACTORS:
            self.actors.pop(self.dead_actors.popleft(), None)
        if actor.name_key is not None and self.actor_names.get(actor.name_key) == actor.actor_id:
            del self.actor_names[actor.name_key]
        if actor in self.unplaced:
            self.unplaced.remove(actor)
        node = actor.node
        if node is not None and actor in node.actor_queue:
            node.actor_queue.remove(actor)
            _add(node.avail, actor.resources)
            self._free_gpus(actor.gpu_alloc, node)
            actor.gpu_alloc = None
            actor.node = None
        ctor = actor.ctor
        if ctor is not None and self.tasks.get(ctor.spec.task_id) is ctor and ctor.state != ASSIGNED:
            actor.ctor = None
            self._cancel_waiting(ctor)
            self._fail_task(ctor, _ERR("ActorDiedError", A.died_message(actor)))
        while actor.calls:
            t = actor.calls.popleft()
            t.queued = False
            if self.tasks.get(t.spec.task_id) is t and t.state != DONE:
                self._cancel_waiting(t)
                self._fail_task(t, _ERR("ActorDiedError", A.died_message(actor, t.spec.name)))

    def _cancel_waiting(self, t: TaskRec) -> None:
        """A waiting task is failed from outside: stop waiting for its inputs."""
        if t.state != WAITING or not t.waiting:
            return
        for d in t.spec.deps:
            obj = self.objects.get(d)
            if obj is not None and obj.waiters and t in obj.waiters:
                obj.waiters.remove(t)
        t.waiting = 0

    def _on_get_actor(self, peer: bytes, msg: P.GetActor) -> None:
        actor = self.actors.get(self.actor_names.get((msg.namespace, msg.name), b""))
        if actor is None or actor.state == A.DEAD:
            where = f" in namespace {msg.namespace!r}" if msg.namespace else ""
            info = {"error": f"no live actor named {msg.name!r}{where}"}
        else:
            info = actor.handle_info()
        self.out.send(peer, P.ActorReply(msg.request_id, info))

    def _on_kill_actor(self, peer: bytes, msg: P.KillActor) -> None:
        actor = self.actors.get(msg.actor_id)
        if actor is None or actor.state == A.DEAD:
            return
        if msg.no_restart or actor.worker is None:
            self._kill_actor(actor, "it was killed by taskmesh.kill()")
        else:  # its exit restarts it (if it has restarts left)
            w = actor.worker
            self.out.send(w.node.peer, P.KillWorker(w.worker_id, f"{actor.label()}: "
                                                    "killed by taskmesh.kill(no_restart=False)"))

    # ------------------------------------------------------------------ workers

    def _on_results(self, peer: bytes, msg: P.TaskResults) -> None:
        w = self.workers.get(peer)
        if w is None:
            return
        w.slow = False
        w.last_result = self.now
        fn_mean = self.fn_mean_s
        for r in msg.results:
            t = self.tasks.get(r.task_id)
            if t is None or t.worker is not w or t.state != ASSIGNED:
                # (normal after a cancel, a steal or a worker declared lost: debug level)
                self.dropped.event("result of a task the worker does not hold", "dropped the "
                                   "result of task %s from worker %s: not assigned to it",
                                   r.task_id.hex(), w.worker_id, level=logging.DEBUG)
                continue
            if w.assigned and w.assigned[0] is t:
                w.assigned.popleft()
                self._next_started(w)
            else:
                w.assigned.remove(t)
            if self.timed:
                self.timed.discard(t)
            d = r.duration_s
            if 0.0 <= d < 1e9:  # (not NaN, negative or infinite: placement computes with it)
                fid = t.spec.function_id
                old = fn_mean.get(fid)
                fn_mean[fid] = d if old is None else 0.8 * old + 0.2 * d
            if (t.spec.retry_exceptions and t.retries_left != 0 and r.returns
                    and not r.no_retry and r.returns[0].flags == P.SerializedObject.TASK_ERROR):
                if t.retries_left > 0:
                    t.retries_left -= 1
                t.worker = None
                self.events.emit(E.TaskRetried(self.now, t.spec.task_id, "it raised"))
                self._enqueue(t)
                continue
            if (r.returns and r.returns[0].flags == P.SerializedObject.SYSTEM_ERROR
                    and self._dependency_lost(t, r.returns[0])):
                continue
            if len(r.returns) != t.spec.num_returns:
                err = _ERR("TaskmeshError", f"worker {w.pid} returned {len(r.returns)} values for "
                           f"task {t.spec.name}, expected {t.spec.num_returns}")
                self._finish(t, [err] * t.spec.num_returns)
            else:
                self._finish(t, r.returns, node=w.node, duration=max(0.0, min(d, 1e9)))
                if t.spec.method == "__init__" and w.actor is not None:
                    self._actor_created(w.actor, t, r.returns[0] if r.returns else None)
            if w.node is not None:
                w.node.finished += 1
        if not w.assigned and w.lease is not None:
            self._release_lease(w)

    def _dependency_lost(self, t: TaskRec, err: P.SerializedObject) -> bool:
        """A worker could not read one of the task's inputs from any holder the head named.
        Run the task again once the input is back: at once if it is being rebuilt (its holder
        was declared dead), else after a pause (the holder may be dead but not yet declared
        so). True if handled; False for other system errors."""
        kind, message = err.read_system_error()
        if kind != "DependencyLost":
            return False
        t.worker = None
        t.dep_failures += 1
        if t.dep_failures > MAX_DEPENDENCY_RETRIES:
            failed = _ERR("ObjectLostError", f"task {t.spec.name} could not read its inputs "
                          f"{t.dep_failures} times: {message.split(' ', 1)[-1]}")
            self._fail_task(t, failed)
            actor = self.actors.get(t.spec.actor_id) if t.spec.method == "__init__" else None
            if actor is not None:  # its constructor cannot run: it is dead
                self._actor_created(actor, t, failed)
            return True
        delay = min(DEPENDENCY_RETRY_MAX_S, DEPENDENCY_RETRY_S * 2 ** (t.dep_failures - 1))
        self.events.emit(E.TaskRetried(self.now, t.spec.task_id, "an input could not be read"))
        t.state = WAITING
        self.deferred.append((self.now + delay, t))
        return True

    def _on_blocked(self, peer: bytes, msg: P.Blocked) -> None:
        w = self.workers.get(peer)
        if w is None:
            return
        self._take_back(w, msg.returned)
        if not w.assigned:  # nothing of ours runs there: no CPU to lend
            if w.lease is not None:
                self._release_lease(w)
            return
        if not w.blocked:
            if w.lease is not None and w.node is not None:
                _add(w.node.avail, w.lease)
            w.blocked = True
            w.blocked_since = self.now
        if msg.waiting and w.assigned:
            self._offer_help(w, msg.waiting)

    def _offer_help(self, w: WorkerRec, waiting: list) -> None:
        """Hand a blocked worker the not-yet-started tasks that make what it waits for.

        It runs them inside its blocked get(), so a parent waiting for its children needs no
        extra worker process; it holds its CPU again while it does.
        """
        help_tasks = []
        seen = set()
        for oid in waiting:
            tid = oid[:16]
            if tid in seen:
                continue
            seen.add(tid)
            t = self.tasks.get(tid)
            if (t is not None and t.state == READY and t.spec.resources == w.lease
                    and not t.spec.actor_id and self._inputs_ready(t)):  # (actors run their own)
                help_tasks.append(t)  # left in its queue; the scheduler skips non-READY ones
        if not help_tasks:
            return
        if w.lease is not None and w.node is not None:
            _sub(w.node.avail, w.lease)
        w.blocked = False
        items = []
        for t in help_tasks:
            t.state = ASSIGNED
            t.worker = w
            w.assigned.append(t)
            self._started(t, w)
            items.append(self._assignment(t, w))
        self.out.send(w.peer, P.Help(items))

    def _on_unblocked(self, peer: bytes, msg: P.Unblocked) -> None:
        w = self.workers.get(peer)
        if w is None or not w.blocked or not w.assigned:
            return
        w.blocked = False
        if w.lease is not None and w.node is not None:
            _sub(w.node.avail, w.lease)

    def _send_credits(self, all_due: bool) -> None:
        due = self.credits_due
        batch = self.credit_batch
        for peer, n in list(due.items()):
            if all_due or n >= batch.get(peer, 1):
                del due[peer]
                if self.peers.get(peer) == "driver":
                    self.out.send(peer, P.Credit(n))

    def _only_unplaceable_queued(self) -> bool:
        """True if no task queued at the head fits any idle node now (e.g. one asking for more
        GPUs than any node has): such a task must not stop stealing for the others."""
        idle = [n.avail for n in self.nodes.values() if n.alive and n.idle]
        return not any(q and fits(avail, q[0].spec.resources)
                       for q in self.queues.values() for avail in idle)

    def _steal(self) -> None:
        """Nothing is queued at the head, yet some workers are idle while others have tasks
        waiting behind their running one (pipelined): ask those back (Revoke), half of each
        such queue, so the idle workers get them (a node that joined or finished early)."""
        idle = [n for n in self.nodes.values() if n.alive and n.idle]
        if not idle:
            return
        for n in self.nodes.values():
            if not n.alive:
                continue
            for w in n.workers.values():
                if len(w.assigned) < 2 or w.revoking or w.blocked:
                    continue
                k = steal_count(len(w.assigned) - 1, self.now - w.last_result, STEAL_AFTER_S)
                if not k or not any(fits(m.avail, w.lease or {}) for m in idle):
                    continue
                take = [t.spec.task_id for t in list(w.assigned)[-k:]]
                w.revoking = True
                w.slow = True
                self.out.send(w.peer, P.Revoke(take))
                # ring its doorbell: it may be in a long task, not reading its socket
                self.out.send(n.peer, P.InterruptTask(w.worker_id, bytes(16)))
                self.stolen_asked += len(take)

    def _on_returned(self, peer: bytes, msg: P.Returned) -> None:
        w = self.workers.get(peer)
        if w is None:
            return
        w.revoking = False
        self.stolen += len(msg.task_ids)
        self._take_back(w, msg.task_ids)
        if not w.assigned and w.lease is not None:
            self._release_lease(w)

    def _take_back(self, w: WorkerRec, task_ids: Iterable[bytes]) -> None:
        """Tasks a worker hands back unstarted go to the front of their queues, in order.
        (Not an actor's constructor: the actor's worker is its own, and it runs it.)"""
        back = []
        for tid in task_ids:
            t = self.tasks.get(tid)
            if (t is None or t.worker is not w or t.state != ASSIGNED or t in back
                    or (t.spec.method == "__init__" and w.actor is not None)):
                self.dropped.event("hand-back of a task the worker does not hold", "dropped "
                                   "the hand-back of task %s by worker %s: not assigned to it",
                                   tid.hex(), w.worker_id, level=logging.DEBUG)
                continue
            w.assigned.remove(t)
            back.append(t)
        for t in reversed(back):
            t.worker = None
            self._enqueue(t, front=True)

    # ------------------------------------------------------------------ nodes

    def _on_heartbeat(self, peer: bytes, msg: P.Heartbeat) -> None:
        node = self.node_by_peer.get(peer)
        if node is None:
            return
        node.last_seen = self.now
        stats = msg.stats
        if not all(type(k) is str for k in stats):  # (shown by `taskmesh status`)
            stats = {k: v for k, v in stats.items() if type(k) is str}
        node.stats = stats
        self.out.send(peer, P.HeartbeatAck())

    def _on_worker_exited(self, peer: bytes, msg: P.WorkerExited) -> None:
        node = self.node_by_peer.get(peer)
        if node is None:
            return
        node.last_seen = self.now
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
                self._forget_worker(w)
            else:
                node.starting = max(0, node.starting - 1)
                node.gone_workers.add(msg.worker_id)
            return
        cause = _exit_cause(msg.exitcode)
        self._worker_lost(w, "WorkerCrashedError",
                          f"the worker process (pid {msg.pid}) on node {node.node_id} {cause}")

    # ------------------------------------------------------------------ failures

    def _worker_lost(self, w: WorkerRec, kind: str, why: str) -> None:
        """A worker is gone: its running task retries or fails, its queued ones run elsewhere."""
        if w.actor is not None:
            self._actor_worker_lost(w, why)
            return
        node = w.node
        if node is not None:
            node.workers.pop(w.peer, None)
            if w in node.idle:
                node.idle.remove(w)
            if w.lease is not None and not w.blocked:
                _add(node.avail, w.lease)
            self._free_gpus(w.gpu_alloc, node)
        w.lease = None
        w.gpu_alloc = None
        assigned = list(w.assigned)
        w.assigned.clear()
        self._forget_worker(w)
        requeue = []
        charged = w.peer not in self.cancel_killed
        self.cancel_killed.discard(w.peer)
        for i, t in enumerate(assigned):
            self.timed.discard(t)
            if t.state != ASSIGNED:  # one of its own nested tasks, cancelled as it left
                continue
            t.worker = None
            if i == 0 and charged:  # the one it was running
                if t.retries_left != 0:
                    if t.retries_left > 0:
                        t.retries_left -= 1
                    log.warning("task %s lost: %s; retrying", t.spec.name, why)
                    requeue.append(t)
                else:
                    self._fail_task(t, _ERR(kind, f"task {t.spec.name} failed: {why}, and it "
                                            f"has no retries left (max_retries={t.spec.max_retries})"))
            else:
                requeue.append(t)
        for t in reversed(requeue):
            self.events.emit(E.TaskRetried(self.now, t.spec.task_id, why))
            self._enqueue(t, front=True)
        if node is not None and node.alive and len(node.workers) + node.starting < node.num_cpus:
            node.starting += 1  # keep the pool at its size: a replacement starts now
            self.out.send(node.peer, P.StartWorkers(1))

    def _node_lost(self, node: NodeRec, why: str, level: int = logging.WARNING) -> None:
        log.log(level, "node %s (%s) declared dead: %s", node.node_id, node.address, why)
        node.alive = False
        self.events.emit(E.NodeDead(self.now, node.node_id, why))
        for w in [*node.workers.values(), *node.actor_workers.values()]:
            self._worker_lost(w, "NodeLostError", f"node {node.node_id} ({node.address}) was lost ({why})")
        while node.actor_queue:  # placed there, but no worker had started yet
            actor = node.actor_queue.popleft()
            _add(node.avail, actor.resources)
            actor.gpu_alloc = None
            actor.node = None
            self._place_actor(actor)
        node.idle.clear()
        node.starting = 0
        held, node.objects = node.objects, set()
        for oid in held:
            obj = self.objects.get(oid)
            if obj is not None and obj.locations and node.node_id in obj.locations:
                obj.locations.remove(node.node_id)
                self._copies_changed(oid, obj, f"node {node.node_id} ({node.address}) was lost")
        if self.node_by_peer.get(node.peer) is node:
            del self.node_by_peer[node.peer]
            self.peers.pop(node.peer, None)
            self.dead_node_peers[node.peer] = node.node_id  # (to name it if it speaks again)
            if len(self.dead_node_peers) > 1000:
                del self.dead_node_peers[next(iter(self.dead_node_peers))]

    def _forget_worker(self, w: WorkerRec) -> None:
        # its own refs died with it; refs it handed out (in results, arguments, puts) are
        # counted as holds and borrows, so its objects live on exactly as long as needed
        self.workers.pop(w.peer, None)
        self.peers.pop(w.peer, None)
        self._release_owned_by(w.peer)
        self._drop_borrows(w.peer)

    def _release_owned_by(self, peer: bytes) -> None:
        """The owner is gone: so are its refs. Its pending tasks whose results nobody else
        needs (no borrower, no pending task, no value refers to them) are cancelled; the others
        run on for those who need them. Its actors die with it, unless detached.

        With many objects and tasks this is a chore, done a slice at a time between messages
        (``run_chores``): a driver that held a million refs must not stall the head."""
        if self.actors:
            for actor in list(self.actors.values()):
                if actor.owner == peer and not actor.detached and actor.state != A.DEAD:
                    self._kill_actor(actor, "its owner (the process that created it) exited")
        chore = self._release_chore(peer)
        if len(self.objects) + len(self.tasks) <= CHORE_SLICE:
            for _ in chore:  # small: at once
                pass
        else:
            self.chores.append(chore)

    def _release_chore(self, peer: bytes) -> Iterator[None]:
        """``_release_owned_by``'s scan of objects and tasks, yielding every CHORE_SLICE."""
        objects = self.objects
        for i, oid in enumerate(list(objects)):
            obj = objects.get(oid)
            if obj is not None and obj.owner == peer and not obj.released:
                obj.released = True
                self._drop_if_unneeded(oid, obj)
            if i % CHORE_SLICE == CHORE_SLICE - 1:
                yield
        tasks = self.tasks
        for i, t in enumerate(list(tasks.values())):
            if (t.owner == peer and tasks.get(t.spec.task_id) is t
                    and t.spec.method != "__init__"):  # (an actor's fate is decided above: a
                # detached one's constructor runs on after its creator left)
                rids = return_ids(t.spec.task_id, t.spec.num_returns)
                if not any(o is not None and o.needed() for o in map(self.objects.get, rids)):
                    self._cancel(t, "its owner left")
            if i % CHORE_SLICE == CHORE_SLICE - 1:
                yield

    def run_chores(self, deadline: float, clock: Callable[[], float]) -> None:
        """Work on the chores (long scans cut in slices) until done or ``deadline``."""
        chores = self.chores
        while chores:
            if next(chores[0], StopIteration) is StopIteration:
                chores.popleft()
            if clock() >= deadline:
                return

    def _return_credit(self, t: TaskRec) -> None:
        """A driver's task ended (or was dropped): it may submit one more (backpressure)."""
        t.credit = False
        self.credits_due[t.owner] = self.credits_due.get(t.owner, 0) + 1
        left = self.in_flight.get(t.owner, 1) - 1
        if left > 0 or t.owner in self.peers:
            self.in_flight[t.owner] = left
        else:  # the last task of a driver that is gone
            self.in_flight.pop(t.owner, None)

    def _cancel(self, t: TaskRec, why: str) -> None:
        """Stop a task nobody needs: drop it from the queues, or kill the worker running it
        (via its node agent; the worker's other tasks then run elsewhere, and a replacement
        starts); free what it held."""
        state = t.state
        t.state = CANCELLED
        self.events.emit(E.TaskCancelled(self.now, t.spec.task_id, why))
        if t.credit:  # its driver left: the task leaves its window all the same
            self._return_credit(t)
        self.tasks.pop(t.spec.task_id, None)
        if self.children:
            self.children.pop(t.spec.task_id, None)
        self.cancelled += 1
        w = t.worker
        t.worker = None
        if state == ASSIGNED and w is not None and t in w.assigned:
            running = w.assigned[0] is t
            w.assigned.remove(t)  # a task queued behind on the worker: its result is dropped
            if running and w.node is not None and w.node.alive:
                log.info("task %s cancelled (%s): killing worker %s (pid %d) on node %s",
                         t.spec.name, why, w.worker_id, w.pid, w.node.node_id)
                self.out.send(w.node.peer, P.KillWorker(w.worker_id, f"task {t.spec.name} "
                                                        f"was cancelled: {why}"))
                # the tasks queued behind it never started: they run elsewhere, uncharged,
                # and the worker takes nothing more (it is in no idle list, holds no tasks)
                for rest in reversed(w.assigned):
                    rest.worker = None
                    self._enqueue(rest, front=True)
                w.assigned.clear()
        for oid in return_ids(t.spec.task_id, t.spec.num_returns):
            obj = self.objects.get(oid)
            if obj is not None and obj.value is None and not obj.needed():
                del self.objects[oid]  # (no value: nothing charged)
        self._release_inputs(t)

    def _release_inputs(self, t: TaskRec) -> None:
        """A task that was admitted will not end normally (cancelled, or replaced by a new
        run): it no longer uses its inputs nor holds the refs in its arguments."""
        if t.held:
            held, t.held = t.held, None
            self._unhold(held)
        for dep in t.spec.deps:
            obj = self.objects.get(dep)
            if obj is not None:
                obj.dependents -= 1
                self._drop_if_unneeded(dep, obj)

    # ------------------------------------------------------------------ task completion

    def _enqueue(self, t: TaskRec, front: bool = False) -> None:
        if t.spec.actor_id:
            self._actor_task_ready(t)
            return
        t.state = READY
        if t.queued:  # its old entry is still in the queue: it will be found there
            return
        t.queued = True
        q = self.queues.get(t.shape)
        if q is None:
            q = self.queues[t.shape] = deque()
        if front:
            q.appendleft(t)
        else:
            q.append(t)

    def _make_ready(self, t: TaskRec) -> None:
        self.events.emit(E.TaskQueued(self.now, t.spec.task_id))
        if t.spec.actor_id:
            self._actor_task_ready(t)
            return
        q = self.queues.get(t.shape)
        if q is None:
            q = self.queues[t.shape] = deque()
            if t.shape not in self.warned_shapes and not any(
                fits(n.total, t.spec.resources) for n in self.nodes.values() if n.alive
            ):
                self.warned_shapes.add(t.shape)
                largest = max((n.total for n in self.nodes.values() if n.alive),
                              key=lambda r: r.get(CPU, 0), default={})
                self.out.send(t.owner, P.Notice("warning", (
                    f"no node can run task {t.spec.name} now: it needs "
                    f"{describe(t.spec.resources)}; the largest node has "
                    f"{describe(largest)}. It waits until such a node joins.")))
        self._enqueue(t)

    def _fail_task(self, t: TaskRec, err: P.SerializedObject) -> None:
        self.failed += 1
        self._finish(t, [err] * t.spec.num_returns)

    def _intern(self, value: Any) -> Any:
        """One shared object per distinct name, function id or resources dict (their
        ``repr``: a dict is keyed by its items)."""
        key = (type(value), tuple(sorted(value.items())) if type(value) is dict else value)
        found = self.interned.get(key)
        if found is None:
            if len(self.interned) > 100_000:  # many distinct ones: stop sharing
                return value
            found = self.interned[key] = value
        return found

    def _finish(self, t: TaskRec, returns: list, deps_counted: bool = True,
                node: NodeRec | None = None, duration: float = 0.0) -> None:
        """Store a finished task's return values and wake whatever waited for them."""
        events = self.events
        if events.on:
            first = returns[0] if returns else None
            if first is None or not first.is_error:
                events.emit(E.TaskFinished(self.now, t.spec.task_id, duration))
            else:
                kind = (first.read_system_error()[0]
                        if first.flags == P.SerializedObject.SYSTEM_ERROR else "TaskError")
                if kind == "TaskCancelledError":
                    events.emit(E.TaskCancelled(self.now, t.spec.task_id,
                                                first.read_system_error()[1]))
                else:
                    events.emit(E.TaskFailed(self.now, t.spec.task_id, kind))
        if t.credit:
            self._return_credit(t)
        t.state = DONE
        t.worker = None
        tid = t.spec.task_id
        self.tasks.pop(tid, None)
        self.finished += 1
        if self.children:
            self.children.pop(tid, None)
        if t.spec.actor_id and t.spec.method != "__init__":
            actor = self.actors.get(t.spec.actor_id)
            if actor is not None and actor.out_of_scope:
                self._end_if_idle(actor)
        objects = self.objects
        for oid, value in zip(return_ids(t.spec.task_id, t.spec.num_returns), returns):
            obj = objects.get(oid)
            if obj is not None:
                self._set_value(oid, obj, value, push_owner=True, node=node)
                if obj.locations and obj.lineage is None and not t.spec.actor_id:
                    # stored: rebuildable from its task (not an actor call: its state is gone)
                    obj.lineage = t
                    obj.rebuilds_left = t.spec.max_retries
            elif value.is_stored and node is not None:  # nobody wants it: free the copy
                self._free_copies(oid, [node.node_id])
        if not deps_counted:
            return
        if t.held:
            held, t.held = t.held, None
            self._unhold(held)
        for dep in t.spec.deps:
            obj = objects.get(dep)
            if obj is not None:
                obj.dependents -= 1
                self._drop_if_unneeded(dep, obj)

    def _reset_value(self, obj: ObjectRec, value: P.SerializedObject | None) -> None:
        """Give ``obj`` a value the head makes itself (a marker, a lost-object error, or none
        while it is rebuilt), not one a client sent (those go through ``_set_value``)."""
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

    def _set_value(self, oid: bytes, obj: ObjectRec, value: P.SerializedObject, push_owner: bool,
                   node: NodeRec | None = None) -> None:
        """``node``: where a worker's result was made (a stored result lives in its store)."""
        nbytes = value.nbytes
        holders = None
        contained = value.contained
        if value.is_stored:
            value, nbytes, holders = self._accept_stored(oid, value, node)
        if obj.value is not None:  # a re-run made again what still exists: keep the first
            if holders:  # (not a copy the first value counts: it is the same object there)
                self._free_copies(oid, [n for n in holders if n not in (obj.locations or ())])
            return
        if not obj.needed() and not obj.subscribers:
            del self.objects[oid]
            if holders:
                self._free_copies(oid, holders)
            if obj.locations:  # copies of the value it had before it was made again
                self._free_copies(oid, obj.locations)
                obj.locations = None
            if obj.contained:  # the refs in the value it had before it was made again
                old, obj.contained = obj.contained, None
                self._unhold(old)
            return
        obj.value = value
        obj.nbytes = nbytes
        if nbytes and not value.is_stored:  # held here: counted against its owner's budget
            obj.charged = nbytes
            self.inline_bytes[obj.owner] = self.inline_bytes.get(obj.owner, 0) + nbytes
        if contained or obj.contained:  # (made again: the new value's refs replace the old)
            old = obj.contained
            obj.contained = self._hold(contained) if contained else None
            if old:
                self._unhold(old)
        if holders:
            obj.locations = holders
            for nid in holders:
                self.nodes[nid].objects.add(oid)
            self.events.emit(E.ObjectStored(self.now, oid, nbytes, holders[0]))
        out = self.out
        if push_owner and not obj.released and obj.owner in self.peers:
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
                    self._fail_task(t, value)
                else:
                    t.waiting -= 1
                    if t.waiting == 0:
                        self._make_ready(t)
        self._drop_if_unneeded(oid, obj)

    def _drop_if_unneeded(self, oid: bytes, obj: ObjectRec) -> None:
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
                self._free_copies(oid, obj.locations)
                obj.locations = None
                self.events.emit(E.ObjectFreed(self.now, oid))
            for inner_id in obj.contained or ():
                inner = objects.get(inner_id)
                if inner is not None:
                    inner.holds -= 1
                    if not inner.needed() and inner.value is not None:
                        stack.append((inner_id, inner))
        for actor_id in handles:
            self._handle_freed(actor_id)

    def _hold(self, oids: Iterable[bytes]) -> list[bytes]:
        """Count one hold on each known object; return the ids held."""
        held = []
        objects = self.objects
        for oid in oids:
            obj = objects.get(oid)
            if obj is not None:
                obj.holds += 1
                held.append(oid)
        return held

    def _unhold(self, oids: Iterable[bytes]) -> None:
        objects = self.objects
        for oid in oids:
            obj = objects.get(oid)
            if obj is not None:
                obj.holds -= 1
                self._drop_if_unneeded(oid, obj)

    # ------------------------------------------------------------------ object directory

    def _accept_stored(self, oid: bytes, marker: P.SerializedObject,
                       node: NodeRec | None) -> tuple[P.SerializedObject, int, list[str] | None]:
        """Check a STORED marker from a worker (``node``: its node) or a driver's put (the
        marker names the node); return (value to keep, size, holder node ids). A marker that
        makes no sense becomes an error value (holders None)."""
        try:
            moid, size, locs = marker.read_stored()
        except P.ProtocolError as exc:
            return _ERR("TaskmeshError", f"object {oid.hex()}: {exc}"), 0, None
        if moid != oid:
            return _ERR("TaskmeshError", f"object {oid.hex()}: its stored-object marker names "
                        f"another object ({moid.hex()})"), 0, None
        if node is not None:
            holders = [node.node_id] if node.alive else []
        else:  # (each once: a peer may name one twice)
            holders = list({nid: None for nid, _ in locs if nid in self.nodes
                            and self.nodes[nid].alive})
        if not holders:
            where = node.node_id if node is not None else ", ".join(n for n, _ in locs) or "none"
            return _ERR("ObjectLostError", f"object {oid.hex()} was stored on node {where}, "
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
                self._free_copies(oid, [nid])

    def _marker(self, oid: bytes, size: int, holders: list[str]) -> P.SerializedObject:
        nodes = self.nodes
        return P.SerializedObject.stored(oid, size, [[nid, nodes[nid].transfer] for nid in holders])

    def _free_copies(self, oid: bytes, node_ids: Iterable[str]) -> None:
        for nid in node_ids:
            n = self.nodes.get(nid)
            if n is not None and n.alive:
                n.objects.discard(oid)
                self.out.add(n.peer, P.FreeObjects, oid)

    def _on_object_locations(self, peer: bytes, msg: P.ObjectLocations) -> None:
        """A node fetched copies (``added``) or lost some (``removed``)."""
        node = self.node_by_peer.get(peer)
        if node is None:
            return
        nid = node.node_id
        for oid, size in msg.added:
            obj = self.objects.get(oid)
            if (obj is not None and obj.locations is None and obj.nbytes == size
                    and ((obj.value is None and obj.lineage is not None) or _is_lost(obj.value))):
                # a copy made before the last known one was lost: the object is back
                self._reset_value(obj, None)
                self._set_value(oid, obj, P.SerializedObject.stored(oid, size, [[nid, ""]]),
                                push_owner=True, node=node)
                continue
            if obj is None or obj.locations is None:  # freed meanwhile: the copy is not needed
                self.out.add(peer, P.FreeObjects, oid)
                continue
            if nid not in obj.locations:
                obj.locations.append(nid)
                node.objects.add(oid)
                self.events.emit(E.ObjectLocated(self.now, oid, nid))
                self._reset_value(obj, self._marker(oid, obj.nbytes, obj.locations))
        for oid in msg.removed:
            node.objects.discard(oid)
            obj = self.objects.get(oid)
            if obj is not None and obj.locations and nid in obj.locations:
                obj.locations.remove(nid)
                self._copies_changed(oid, obj, f"its copy on node {nid} was lost")

    def _copies_changed(self, oid: bytes, obj: ObjectRec, why: str) -> None:
        if obj.locations:
            self._reset_value(obj, self._marker(oid, obj.nbytes, obj.locations))
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
        self.events.emit(E.ObjectLost(self.now, oid, why))
        self._reset_value(obj, _ERR("ObjectLostError", f"object {oid.hex()} ({obj.nbytes} bytes) "
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
        self._reset_value(obj, None)  # pending again: new readers and tasks wait for the re-run
        if spec.task_id in self.tasks:  # another lost return of it already started the re-run
            return
        inputs = list(spec.deps)
        if spec.args is not None and spec.args.is_stored:
            inputs += spec.args.contained  # large arguments passed by value
        missing = next((d for d in inputs if d not in self.objects), None)
        if missing is not None:
            obj.lineage = None
            self.events.emit(E.ObjectLost(self.now, oid, f"{why}; an input of its task was freed"))
            self._reset_value(obj, _ERR("ObjectLostError", (
                f"object {oid.hex()} is lost ({why}) and cannot be rebuilt: task {spec.name}, "
                f"which made it, needs object {missing.hex()}, which was freed")))
            return
        log.warning("object %s lost (%s): running task %s again to rebuild it", oid.hex(), why,
                    spec.name)
        t = TaskRec(spec, done.owner)
        t.retries_left = spec.max_retries
        self.rebuilt += 1
        self.events.emit(E.ObjectRebuilt(self.now, oid, spec.task_id))
        self.events.emit(E.TaskSubmitted(self.now, spec.task_id, spec.name, spec.actor_id))
        self._admit(t)

    def _held_bytes(self, t: TaskRec) -> dict[str, int] | None:
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

    # ------------------------------------------------------------------ placement

    def _inputs_ready(self, t: TaskRec) -> bool:
        """All of a ready task's inputs still have values (one may be being rebuilt)."""
        objects = self.objects
        for d in t.spec.deps:
            obj = objects.get(d)
            if obj is not None and obj.value is None:
                return False
        return True

    def _wait_inputs(self, t: TaskRec) -> None:
        """(Re)queue a task, or make it wait for those of its inputs that have no value now."""
        t.state = WAITING
        t.waiting = 0
        objects = self.objects
        for d in t.spec.deps:
            obj = objects.get(d)
            if obj is not None and obj.value is not None and obj.value.is_error:
                for other in t.spec.deps:  # stop waiting for the others: it fails now
                    rec = objects.get(other)
                    if rec is not None and rec.waiters and t in rec.waiters:
                        rec.waiters.remove(t)
                self._fail_task(t, obj.value)
                return
            if obj is not None and obj.value is None:
                t.waiting += 1
                if obj.waiters is None:
                    obj.waiters = [t]
                else:
                    obj.waiters.append(t)
        if t.waiting == 0:
            self._make_ready(t)

    def _skip_unready(self, queue: deque[TaskRec]) -> None:
        """Drop queue heads taken out of turn (handed to a blocked worker as Help), and send
        back to waiting the ones whose inputs are being rebuilt."""
        while queue:
            t = queue[0]
            if t.state != READY:
                queue.popleft().queued = False
            elif t.spec.deps and not self._inputs_ready(t):
                _pop(queue)
                self._wait_inputs(t)
            else:
                return

    def _schedule_shape(self, queue: deque[TaskRec]) -> None:
        self._skip_unready(queue)
        if not queue:
            return
        demand = queue[0].spec.resources
        strategy = queue[0].spec.strategy
        nodes = [n for n in self.nodes.values() if n.alive]
        prefer = None
        if strategy.startswith(("node:", "node?:")):
            soft = strategy.startswith("node?:")
            target = strategy.split(":", 1)[1]
            there = [n for n in nodes if n.node_id == target]
            if soft:
                prefer = target
            elif not there:
                self._fail_unplaceable(queue, target)
                return
            else:
                nodes = there
        by_id = {n.node_id: n for n in nodes}
        # 1. idle workers, on the node holding most argument bytes, then most free CPU
        while queue:
            spec = queue[0].spec
            held = (self._held_bytes(queue[0]) if spec.deps or (spec.args is not None
                                                                 and spec.args.is_stored) else None)
            if strategy == "SPREAD":
                node_id = pick_spread(((n.node_id, n.avail, _load(n)) for n in nodes if n.idle),
                                      demand)
            else:
                node_id = pick_node(((n.node_id, n.avail) for n in nodes if n.idle), demand,
                                    held, prefer)
            if node_id is None:
                break
            best = by_id[node_id]
            alloc = None
            if demand.get(GPU):
                alloc = assign_gpus(best.gpus, demand[GPU])
                if alloc is None:  # enough GPU in total, but not on the devices it needs
                    break
            w = best.idle.pop()
            w.lease = dict(demand)
            w.gpu_alloc = alloc
            _sub(best.avail, demand)
            self._assign(_pop(queue), w)
            self._skip_unready(queue)
        if not queue:
            return
        # 2. nodes with room but no idle worker start more workers
        demand_cpu = demand.get(CPU, 0)
        recent = self.now - START_GRACE_S
        for n in nodes:
            if not n.idle and fits(n.avail, demand):
                blocked = [w for w in n.workers.values() if w.blocked]
                cap = max(n.num_cpus, 1) + len(blocked) + 2
                # CPU lent only a moment ago does not start a process yet
                fresh = sum(w.lease.get(CPU, 0) for w in blocked
                            if w.lease is not None and w.blocked_since > recent)
                count = workers_to_start(n.avail.get(CPU, 0) - fresh, demand_cpu, len(queue),
                                         n.starting, len(n.workers), cap)
                if count > 0:
                    n.starting += count
                    self.out.send(n.peer, P.StartWorkers(count))
        # 3. pipeline short tasks behind busy workers of the same shape
        if strategy == "SPREAD":
            return  # (one at a time, so that they spread)
        fn_mean = self.fn_mean_s
        busy = [w for n in nodes for w in n.workers.values()
                if w.lease == demand and not w.blocked and w.assigned and not w.slow
                and is_short(fn_mean.get(w.assigned[-1].spec.function_id))]
        if not busy:
            return
        busy.sort(key=lambda w: len(w.assigned))
        max_pipe = self.config.max_pipeline
        progress = True
        while queue and progress:
            progress = False
            for w in busy:
                self._skip_unready(queue)
                if not queue:
                    break
                t = queue[0]
                window = pipeline_window(fn_mean.get(t.spec.function_id), len(queue),
                                         len(busy), max_pipe)
                if len(w.assigned) < window:
                    self._assign(_pop(queue), w)
                    progress = True

    def _fail_unplaceable(self, queue: deque[TaskRec], node_id: str) -> None:
        """Tasks that must run on a node that is not alive (hard node affinity) fail now."""
        known = node_id in self.nodes
        while queue:
            t = _pop(queue)
            if t.state != READY:
                continue
            self._fail_task(t, _ERR("TaskUnschedulableError", (
                f"task {t.spec.name} must run on node {node_id} (NodeAffinitySchedulingStrategy "
                f"with soft=False), which {'is dead' if known else 'is not part of the cluster'}"
                "; use soft=True to let it run elsewhere")))

    def _assign(self, t: TaskRec, w: WorkerRec) -> None:
        t.state = ASSIGNED
        t.worker = w
        w.assigned.append(t)
        self._started(t, w)
        if t.spec.timeout_s:
            t.started = self.now if len(w.assigned) == 1 else None
            self.timed.add(t)
        self.out.add(w.peer, P.Execute, self._assignment(t, w))

    def _started(self, t: TaskRec, w: WorkerRec) -> None:
        events = self.events
        if events.on:
            node = w.node
            events.emit(E.TaskStarted(self.now, t.spec.task_id,
                                      node.node_id if node is not None else "", w.worker_id))

    def _assignment(self, t: TaskRec, w: WorkerRec) -> P.Assignment:
        spec = t.spec
        blob = None
        if spec.function_id not in w.functions:
            w.functions.add(spec.function_id)
            blob = self.functions[spec.function_id]
        dep_values = [self.objects[d].value for d in spec.deps] if spec.deps else []
        args = spec.args
        if args is not None and args.is_stored:  # large arguments: say where they are now
            rec = self.objects.get(args.contained[0]) if args.contained else None
            if rec is not None and rec.value is not None:
                args = rec.value
        env = None
        node = w.node
        if node is not None and node.gpus and spec.method in ("", "__init__"):
            alloc = w.actor.gpu_alloc if w.actor is not None else w.gpu_alloc
            env = {"CUDA_VISIBLE_DEVICES": ",".join(sorted(alloc or (), key=device_order))}
        if not spec.actor_id:
            return P.Assignment(spec.task_id, spec.name, spec.function_id, blob, args,
                                dep_values, spec.num_returns, "", None, spec.timeout_s, env,
                                spec.retry_filter)
        actor_opts = None
        if spec.method == "__init__":
            o = w.actor.options if w.actor is not None else {}
            actor_opts = {"actor_id": spec.actor_id, "class_name": str(o.get("class_name", "")),
                          "max_concurrency": _int(o.get("max_concurrency")) or 1,
                          "is_async": bool(o.get("is_async"))}
        return P.Assignment(spec.task_id, spec.name, spec.function_id, blob, args,
                            dep_values, spec.num_returns, spec.method, actor_opts, spec.timeout_s,
                            env, spec.retry_filter)

    def _free_gpus(self, gpu_alloc: dict[str, int] | None, node: NodeRec | None) -> None:
        if gpu_alloc and node is not None:
            for device, units in gpu_alloc.items():
                if device in node.gpus:
                    node.gpus[device] += units

    def _release_lease(self, w: WorkerRec) -> None:
        node = w.node
        self._free_gpus(w.gpu_alloc, node)
        w.gpu_alloc = None
        if w.lease is not None and node is not None and not w.blocked:
            _add(node.avail, w.lease)
        w.lease = None
        w.blocked = False
        w.idle_since = self.now
        if node is not None and node.alive and w.peer in node.workers and w not in node.idle:
            node.idle.append(w)

    # ------------------------------------------------------------------ reporting

    def info(self, what: str) -> Any:
        """Cluster information for InfoRequest: nodes, resources, available or status."""
        if what == "ping":
            return {}
        alive = [n for n in self.nodes.values() if n.alive]
        if what == "nodes":
            return [self._node_info(n) for n in self.nodes.values()]
        if what in ("resources", "available"):
            total: dict[str, int] = {}
            for n in alive:
                _add(total, n.total if what == "resources" else
                     {k: max(0, v) for k, v in n.avail.items()})
                total[f"node:{n.address}"] = total.get(f"node:{n.address}", 0) + UNIT
            return total
        if what == "status":
            queued = sum(1 for q in self.queues.values() for t in q if t.state == READY)
            waiting = sum(1 for t in self.tasks.values() if t.state == WAITING)
            running = sum(1 for t in self.tasks.values() if t.state == ASSIGNED)
            return {
                "nodes": [self._node_info(n) for n in self.nodes.values()],
                "tasks": {"queued": queued, "waiting_for_deps": waiting, "running": running,
                          "finished": self.finished, "failed": self.failed},
                "objects": len(self.objects),
                "drivers": sum(1 for k in self.peers.values() if k == "driver"),
                "actors": {state: sum(1 for a in self.actors.values() if a.state == state)
                           for state in (A.PENDING, A.CREATING, A.ALIVE, A.RESTARTING, A.DEAD)},
                "dropped": dict(self.dropped.counts),  # messages dropped, by reason
                # set by the I/O shell: connections refused, malformed messages, encryption
                "transport": self.transport(),
                "loop_lag": self.loop_lag(),
                # the event stream's counters: events per kind, tasks per state
                "stream": self.events.summary(),
            }
        if what == "events" or what.startswith("events:"):  # events:<number seen last>
            try:
                since = int(what[7:] or 0)
            except ValueError:
                return {"error": f"bad events request {what!r}: events:<number>"}
            seq, events = self.events.since(since)
            return {"seq": seq, "events": E.as_lists(events)}
        return {"error": f"unknown info request {what!r}"}

    def _node_info(self, n: NodeRec) -> dict:
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
        }

    def check_invariants(self) -> None:
        """Raise AssertionError unless the records agree with each other: membership, leases
        and free resources, task placement and queues, reference counts, actors. O(state):
        for tests and the fuzz harness (tests/fuzz), which run it after every few messages."""
        peers = self.peers
        for peer, kind in peers.items():
            _require(kind in ("driver", "status", "worker", "node"), f"peer {peer!r}: kind {kind!r}")
            _require((kind == "worker") == (peer in self.workers), f"peer {peer!r} ({kind}): "
                     "worker table out of step")
            _require((kind == "node") == (peer in self.node_by_peer), f"peer {peer!r} ({kind}): "
                     "node table out of step")
            _require(peer not in self.gone_drivers, f"peer {peer!r} is both live and gone")
        for peer in (*self.workers, *self.node_by_peer, *self.beating, *self.borrowed):
            _require(peer in peers, f"peer {peer!r} is in a table but never said Hello or left")
        for peer in self.beating:
            _require(peers[peer] == "driver", f"peer {peer!r} heartbeats but is no driver")
        owed: dict[bytes, int] = {}  # backpressure: each driver's unfinished tasks
        for t in self.tasks.values():
            if t.credit:
                owed[t.owner] = owed.get(t.owner, 0) + 1
        for peer, n in self.in_flight.items():
            _require(n == owed.get(peer, 0), f"driver {peer!r}: {n} tasks counted in flight, "
                     f"{owed.get(peer, 0)} unfinished")
        _require(owed.keys() <= self.in_flight.keys(), "unfinished tasks of an uncounted driver")
        charged: dict[bytes, int] = {}  # the head's memory for values, by owner
        for obj in self.objects.values():
            if obj.charged:
                _require(obj.value is not None and not obj.value.is_stored,
                         "a charged object without an inline value")
                charged[obj.owner] = charged.get(obj.owner, 0) + obj.charged
        _require(charged == self.inline_bytes, f"inline bytes by owner {self.inline_bytes} "
                 f"!= what the objects hold {charged}")
        for peer, node in self.node_by_peer.items():
            _require(node.alive and node.peer == peer and self.nodes.get(node.node_id) is node,
                     f"peer {peer!r} maps to node {node.node_id}, which is not its live record")
        # workers, leases and free resources, per node
        placed_on: dict[int, NodeRec] = {}  # id(WorkerRec) -> its node
        for node_id, node in self.nodes.items():
            name = f"node {node_id}"
            _require(node.node_id == node_id, f"{name} is filed under the wrong id")
            _require(node.starting >= 0, f"{name}: {node.starting} workers starting")
            if not node.alive:
                _require(not node.workers and not node.actor_workers and not node.idle
                         and not node.actor_queue and not node.objects,
                         f"{name} is dead but still has workers, actors or objects")
                continue
            _require(self.node_by_peer.get(node.peer) is node, f"{name} is alive but its peer "
                     "maps elsewhere")
            expected = dict(node.total)
            gpus_taken: dict[str, int] = {}
            for w in node.workers.values():
                _require(self.workers.get(w.peer) is w and w.node is node and w.actor is None,
                         f"{name}: pool worker {w.worker_id} is not its live record")
                placed_on[id(w)] = node
                if w.lease is not None and not w.blocked:
                    _sub(expected, w.lease)
                _require(w.lease is not None or not w.assigned,
                         f"{name}: worker {w.worker_id} runs tasks without a lease")
                _add(gpus_taken, w.gpu_alloc or {})
            for w in node.actor_workers.values():
                _require(self.workers.get(w.peer) is w and w.node is node and w.actor is not None
                         and w.actor.worker is w, f"{name}: actor worker {w.worker_id} is not "
                         "its actor's live worker")
                placed_on[id(w)] = node
                _sub(expected, w.actor.resources)
                _add(gpus_taken, w.actor.gpu_alloc or {})
            for actor in node.actor_queue:
                _require(actor.node is node and actor.worker is None and actor.state != A.DEAD,
                         f"{name}: {actor.label()} waits for a worker there but is not placed there")
                _sub(expected, actor.resources)
                _add(gpus_taken, actor.gpu_alloc or {})
            for k in expected.keys() | node.avail.keys():
                _require(node.avail.get(k, 0) == expected.get(k, 0), f"{name}: {k} free is "
                         f"{node.avail.get(k, 0)}, but its leases leave {expected.get(k, 0)}")
            for device, free in node.gpus.items():
                _require(0 <= free <= UNIT and free + gpus_taken.get(device, 0) == UNIT,
                         f"{name}: GPU {device} has {free} units free, {gpus_taken.get(device, 0)} taken")
            _require(len(node.idle) == len({id(w) for w in node.idle}), f"{name}: a worker is "
                     "idle twice")
            for w in node.idle:
                _require(node.workers.get(w.peer) is w and not w.assigned and w.lease is None,
                         f"{name}: idle worker {w.worker_id} is busy or not in the pool")
        for node_id, orphans in self.orphan_workers.items():
            for w in orphans:
                _require(self.workers.get(w.peer) is w and w.node is None,
                         f"orphan worker {w.worker_id} of node {node_id} is not a live record")
                placed_on[id(w)] = None  # type: ignore[assignment]
        for w in self.workers.values():
            _require(id(w) in placed_on, f"worker {w.worker_id} is in no pool, actor or orphan table")
            for t in w.assigned:
                _require(t.worker is w and t.state == ASSIGNED
                         and self.tasks.get(t.spec.task_id) is t,
                         f"worker {w.worker_id} lists task {t.spec.task_id.hex()}, which is not "
                         "assigned to it")
        # tasks and queues
        entries: dict[int, int] = {}
        for shape, queue in self.queues.items():
            for t in queue:
                _require(t.shape == shape, f"task {t.spec.task_id.hex()} queued under another shape")
                _require(t.queued, f"task {t.spec.task_id.hex()} sits in a queue unmarked")
                _require(t.state != READY or self.tasks.get(t.spec.task_id) is t,
                         f"task {t.spec.task_id.hex()} is queued ready but is not pending")
                entries[id(t)] = entries.get(id(t), 0) + 1
        waits: dict[int, int] = {}
        for oid, obj in self.objects.items():
            for t in obj.waiters or ():
                waits[id(t)] = waits.get(id(t), 0) + 1
        dependents: dict[bytes, int] = {}
        holds: dict[bytes, int] = {}
        deferred = {id(t) for _, t in self.deferred}
        for tid, t in self.tasks.items():
            name = f"task {tid.hex()} ({t.spec.name})"
            _require(t.spec.task_id == tid, f"{name} is filed under the wrong id")
            _require(t.state in (WAITING, READY, ASSIGNED), f"{name} is pending in state {t.state}")
            if t.state == ASSIGNED:
                w = t.worker
                _require(w is not None and self.workers.get(w.peer) is w
                         and sum(1 for x in w.assigned if x is t) == 1,
                         f"{name} is assigned to a worker that does not list it once")
            else:
                _require(t.worker is None, f"{name} has a worker but is not assigned")
            if not t.spec.actor_id:
                _require(entries.get(id(t), 0) == (1 if t.queued else 0),
                         f"{name}: {entries.get(id(t), 0)} queue entries, queued={t.queued}")
                _require(t.state != READY or t.queued, f"{name} is ready but in no queue")
            if t.state == WAITING:
                _require(t.waiting == waits.get(id(t), 0), f"{name} waits for {t.waiting} inputs, "
                         f"but {waits.get(id(t), 0)} objects list it")
                _require(t.waiting > 0 or id(t) in deferred or t.spec.method == "__init__",
                         f"{name} waits for nothing")
            for d in t.spec.deps:
                dependents[d] = dependents.get(d, 0) + 1
            for oid in t.held or ():
                holds[oid] = holds.get(oid, 0) + 1
        for oid, obj in self.objects.items():
            for inner in obj.contained or ():
                holds[inner] = holds.get(inner, 0) + 1
        for oid, obj in self.objects.items():
            name = f"object {oid.hex()}"
            _require(obj.dependents == dependents.get(oid, 0), f"{name}: {obj.dependents} "
                     f"dependents counted, {dependents.get(oid, 0)} pending tasks use it")
            _require(obj.holds == holds.get(oid, 0), f"{name}: {obj.holds} holds counted, "
                     f"{holds.get(oid, 0)} values and tasks refer to it")
            _require(obj.needed() or obj.value is None or bool(obj.subscribers),
                     f"{name} has a value but nothing refers to it")
            for peer in obj.borrowers or ():
                _require(oid in self.borrowed.get(peer, ()), f"{name}: borrower {peer!r} does "
                         "not list it")
            if obj.locations is not None:
                _require(bool(obj.locations) and len(set(obj.locations)) == len(obj.locations),
                         f"{name}: holders {obj.locations}")
                for nid in obj.locations:
                    n = self.nodes.get(nid)
                    _require(n is not None and n.alive and oid in n.objects,
                             f"{name}: holder {nid} is not a live node that lists it")
        for dep in dependents:
            _require(dep in self.objects, f"object {dep.hex()} was dropped while tasks use it")
        for node in self.nodes.values():
            for oid in node.objects:
                obj = self.objects.get(oid)
                _require(obj is not None and node.node_id in (obj.locations or ()),
                         f"node {node.node_id} lists object {oid.hex()}, which does not list it")
        # the event stream's task counters follow the tasks
        if self.events.on:
            counted = sum(self.events.tasks.values())
            _require(counted == len(self.tasks), f"the event stream counts {counted} unfinished "
                     f"tasks ({self.events.tasks}), the head has {len(self.tasks)}")
        # actors
        for key, aid in self.actor_names.items():
            actor = self.actors.get(aid)
            _require(actor is not None and actor.name_key == key and actor.state != A.DEAD,
                     f"actor name {key} maps to {aid.hex()}, which is not a live actor of that name")
        for aid, actor in self.actors.items():
            name = actor.label()
            _require(actor.actor_id == aid, f"{name} is filed under the wrong id")
            if actor.worker is not None:
                w = actor.worker
                _require(w.actor is actor and w.node is not None
                         and w.node.actor_workers.get(w.peer) is w, f"{name}: its worker is not "
                         "an actor worker of its node")
                _require(actor.node is w.node, f"{name}: placed on another node than its worker")
            else:
                _require(actor.state not in (A.CREATING, A.ALIVE), f"{name} is {actor.state} "
                         "without a worker")
                _require(actor.node is None or actor in actor.node.actor_queue,
                         f"{name} is placed on a node but neither runs nor waits there")
            if actor in self.unplaced:
                _require(actor.node is None and actor.state != A.DEAD, f"{name} is unplaced "
                         "but placed or dead")
            if actor.state == A.DEAD:
                _require(actor.name_key is None or self.actor_names.get(actor.name_key) != aid,
                         f"{name} is dead but still owns its name")


def _is_lost(value: P.SerializedObject | None) -> bool:
    return (value is not None and value.flags == P.SerializedObject.SYSTEM_ERROR
            and value.read_system_error()[0] == "ObjectLostError")


def _pop(queue: deque[TaskRec]) -> TaskRec:
    t = queue.popleft()
    t.queued = False
    return t


def _require(ok: bool, message: str) -> None:
    # not `assert`: check_invariants() must keep checking under `python -O`
    if not ok:
        raise AssertionError(message)


def _add(into: dict[str, int], amounts: dict[str, int]) -> None:
    for k, v in amounts.items():
        into[k] = into.get(k, 0) + v


def _sub(into: dict[str, int], amounts: dict[str, int]) -> None:
    for k, v in amounts.items():
        into[k] = into.get(k, 0) - v


def _exit_cause(exitcode: int) -> str:
    if exitcode == P.EXIT_UNKNOWN:
        return "exited (its exit status is unknown: the fork server that started it was gone)"
    if exitcode < 0:
        import signal

        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


_CLIENT = ("driver", "worker")
_HANDLERS: dict[type, tuple[Any, tuple[str, ...]]] = {
    P.RegisterFunction: (HeadState._on_register_function, _CLIENT),
    P.Submit: (HeadState._on_submit, _CLIENT),
    P.Put: (HeadState._on_put, _CLIENT),
    P.Subscribe: (HeadState._on_subscribe, _CLIENT),
    P.Release: (HeadState._on_release, _CLIENT),
    P.Borrow: (HeadState._on_borrow, _CLIENT),
    P.InfoRequest: (HeadState._on_info, ("driver", "worker", "status")),
    P.Goodbye: (HeadState._on_goodbye, ("driver", "status", "node")),
    P.CreateActor: (HeadState._on_create_actor, ("driver", "worker")),
    P.GetActor: (HeadState._on_get_actor, ("driver", "worker")),
    P.KillActor: (HeadState._on_kill_actor, ("driver", "worker")),
    P.Cancel: (HeadState._on_cancel, ("driver", "worker")),
    P.TaskResults: (HeadState._on_results, ("worker",)),
    P.Blocked: (HeadState._on_blocked, ("worker",)),
    P.Unblocked: (HeadState._on_unblocked, ("worker",)),
    P.Returned: (HeadState._on_returned, ("worker",)),
    P.Heartbeat: (HeadState._on_heartbeat, ("node",)),
    P.WorkerExited: (HeadState._on_worker_exited, ("node",)),
    P.ObjectLocations: (HeadState._on_object_locations, ("node",)),
}


def _int(value: Any) -> int:
    """An integer field of a peer's Hello info (0 if missing or of another type)."""
    return value if type(value) is int else 0



def _load(n: NodeRec) -> int:
    """Tasks on a node's workers (running or queued there), for SPREAD."""
    return sum(len(w.assigned) for w in n.workers.values())
