"""Fuzzing a node: the object store service's request handlers, and the agent's decisions
(``AgentState``, driven directly), fed generated messages and events.

    local clients ──Store* (encode/decode)──▶ StoreService.request ──▶ StoreState
    spill thread, transfers ──(the harness plays them)──▶ spill_report, serve_pin/unpin, fetch_done
    the head ──Welcome, Refused, StartWorkers, FreeObjects, KillWorker, ...──▶ AgentState.handle
    the agent's loop ──Tick, Woke, worker ends, head closed, ...──▶ AgentState.handle

``StoreService`` is built from parts that record (no socket, arena, spill thread or transfer
server): the harness keeps what the service sends, and plays the spill thread (finishing or
failing the spills and restores it was given, in order), other nodes (pulling objects: pins
through the loop) and fetches (finished or failed), through the service's event methods.
``AgentState`` is driven directly too: the harness plays the agent's shell (``AgentShell``),
executing its commands (every message must encode, every log line must format) and answering
spawns (started, failed to start, or ended at once) and kills (the worker ends later); an agent
that exits is followed by a fresh one. A crash is an exception escaping a handler, a reply that
does not encode, or ``StoreState.check()``, ``AgentState.check_invariants()`` or the harness's
own consistency checks (``StoreService.check_invariants()``) failing.
"""

from __future__ import annotations

import random
import traceback
from collections import Counter, deque
from typing import Any

from taskmesh import _protocol as P
from taskmesh._node import state as A
from taskmesh._node import store_service as ss
from taskmesh._node.spill import DELETE
from taskmesh._node.store_transfers import ServeRequest
from taskmesh._store.state import StoreState
from taskmesh.config import Config

from .head import Crash, _damage, _line
from .values import AnyMessage, Values

CAPACITY = 4096


class _Sock:
    """The store's local socket: replies are encoded (they must be), decoded and kept."""

    def __init__(self) -> None:
        self.sent: deque[tuple[bytes, Any]] = deque(maxlen=64)

    def send(self, peer: bytes, msg: Any) -> bool:
        self.sent.append((peer, P.decode(P.encode(msg))))
        return True


class _SpillThread:
    directory = "(none)"

    def __init__(self) -> None:
        self.jobs: deque[tuple[str, bytes]] = deque()

    def submit(self, kind: str, object_id: bytes, offset: int = 0, size: int = 0) -> None:
        self.jobs.append((kind, object_id))


class _Transfers:
    """The transfer threads: fetches are recorded; the harness ends them in its own order."""

    address = "127.0.0.1:7000"

    def __init__(self) -> None:
        self.started: dict[bytes, None] = {}  # (in order: the runs repeat)

    def fetch(self, object_id: bytes, sources: list, dest: memoryview) -> None:
        _require(bool(sources), f"fetch of {object_id.hex()} with no source")
        self.started[object_id] = None


class _Arena:
    name = "taskmesh-fuzz-arena"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buf = bytearray(capacity)

    def writable(self, offset: int, size: int) -> memoryview:
        return memoryview(self.buf)[offset:offset + size]


class FuzzStore:
    """A StoreService whose I/O parts are recorders (see the module docstring)."""

    def __init__(self, rng: random.Random) -> None:
        self.fetched: list[bytes] = []
        self.freed = 0
        self.sock = _Sock()
        self.spill = _SpillThread()
        self.transfers = _Transfers()
        state = StoreState(CAPACITY, alignment=64, create_timeout_s=rng.choice((0.5, 5.0)),
                           spill_retry_s=1.0)
        self.service = ss.StoreService("fuzz", _Arena(CAPACITY), state, self.sock, self.spill,
                                       self.transfers, on_fetched=self._fetched,
                                       on_freed=self._count_freed)

    def _fetched(self, object_id: bytes, size: int) -> None:
        self.fetched.append(object_id)

    def _count_freed(self, object_id: bytes) -> None:
        self.freed += 1


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


class AgentShell:
    """Plays the node agent's I/O shell around an ``AgentState``: executes its commands (each
    message encoded and decoded, each log line formatted), starts, fails or ends the workers
    it spawns as the world's dice say, and replaces an agent that exited by a fresh one."""

    def __init__(self, rng: random.Random, store: ss.StoreService) -> None:
        self.rng = rng
        self.store = store  # DeleteObjects, DropAllObjects go to it
        self.sent: deque[Any] = deque(maxlen=64)
        self.drops: Counter = Counter()  # of the agents that exited
        self.exits = 0
        self.live: dict[str, int] = {}  # worker id -> pid, as the shell holds them
        self.dying: set[str] = set()  # killed: their end follows
        self._pid = 4000
        self.now = 0.0
        self._fresh()

    def _fresh(self) -> None:
        self.state = A.AgentState(Config(), "fuzz", "head.invalid:1", self.rng.choice((0, 1, 2)),
                                  {"node_id": "fuzz", "resources": {"CPU": 20000}})
        self.live.clear()
        self.dying.clear()
        self._run(self.state.handle(A.Start(), self.now))

    def feed(self, event: Any, now: float) -> None:
        self.now = now
        self._run(self.state.handle(event, now))
        if self.state.phase is A.Phase.EXITED:
            self.exits += 1
            self.drops.update(self.state.dropped)
            self._fresh()

    def dropped(self) -> Counter:
        return self.drops + self.state.dropped

    def _run(self, cmds: list) -> None:
        for c in cmds:
            kind = type(c)
            if kind is A.Send:
                self.sent.append(P.decode(P.encode(c.message)))
            elif kind is A.SendHeartbeat:
                self.sent.append(P.decode(P.encode(P.Heartbeat({"workers": c.workers}))))
            elif kind is A.Log or kind is A.Drop:
                _require(isinstance(c.message % c.args, str), "a log line")  # (raises if not)
            elif kind is A.SpawnWorkers:
                for worker_id in c.worker_ids:
                    self._spawn(worker_id)
            elif kind is A.Kill:
                _require(c.worker_id in self.live, f"kill of worker {c.worker_id} not running")
                self.dying.add(c.worker_id)
            elif kind is A.Interrupt:
                _require(c.worker_id in self.live and len(c.task_id) == 16, "a bad interrupt")
            elif kind is A.StopWorkers:
                self.live.clear()
                self.dying.clear()
            elif kind is A.DeleteObjects:
                self.store.delete(list(c.object_ids))
            elif kind is A.DropAllObjects:
                self.store.delete(self.store.object_ids())

    def _spawn(self, worker_id: str) -> None:
        self._pid += 1
        x = self.rng.random()
        if x < 0.85:
            self.live[worker_id] = self._pid
            self._run(self.state.handle(A.WorkerSpawned(worker_id, self._pid), self.now))
        elif x < 0.93:
            self._run(self.state.handle(A.WorkerSpawnFailed(worker_id, "[Errno 24] Too many "
                                                            "open files"), self.now))
        else:
            self._run(self.state.handle(A.WorkerEnded(worker_id, self._pid, 1), self.now))

    def worker_ends(self, now: float) -> None:
        if not self.live:
            return
        worker_id = self.rng.choice(sorted(self.live))
        code = -9 if worker_id in self.dying else self.rng.choice((0, 1, -15, -11, 1000))
        pid = self.live.pop(worker_id)
        self.dying.discard(worker_id)
        self.feed(A.WorkerEnded(worker_id, pid, code), now)

    def check(self) -> None:
        state = self.state
        state.check_invariants()
        running = {wid for wid, w in state.workers.items() if w.pid is not None}
        _require(running == set(self.live), f"the state's running workers {sorted(running)} "
                 f"are not the shell's {sorted(self.live)}")
        _require(state.phase is not A.Phase.EXITED, "an exited agent kept")


class NodeWorld:
    """One store service and agent, and the clients, threads, nodes and head around them."""

    def __init__(self, seed: int, world: int, counts: Counter) -> None:
        self.rng = rng = random.Random(f"node-{seed}-{world}")
        self.seed, self.world = seed, world
        self.v = Values(rng)
        self.counts = counts
        self.rig = FuzzStore(rng)
        self.store = self.rig.service
        self.agent = AgentShell(rng, self.store)
        self.now = 0.0
        self.step = 0
        self.last: Any = None
        self.trace: deque[tuple] = deque(maxlen=16)  # the latest inputs (for crash reports)
        self.clients = [b"c1", b"c2", b"\x00", b"x" * 255]
        self.ids: deque[bytes] = deque([rng.randbytes(20) for _ in range(6)], maxlen=40)
        self.serving: list[ServeRequest] = []
        self.any = AnyMessage(self.v, lambda: {
            "objects": self.ids, "tasks": [i[:16] for i in self.ids], "actors": [],
            "functions": [], "node_ids": ["n1"], "worker_ids": self.worker_ids()})

    def worker_ids(self) -> list[str]:
        return sorted(self.agent.state.workers)[:8] + ["fuzz-0", "nobody"]

    def crash(self, what: str) -> Crash:
        recent = "\n  ".join(_line(*entry) for entry in self.trace)
        return Crash(f"{what} (node world: seed {self.seed}, world {self.world}, step {self.step}, "
                     f"input {self.last!r:.600})\nlatest inputs:\n  {recent}\n{traceback.format_exc()}")

    def call(self, what: Any, fn: Any, *args: Any, who: Any = None) -> Any:
        self.last = what
        self.trace.append((self.step, who, what))
        try:
            return fn(*args)
        except Exception:
            raise self.crash(f"{what} raised") from None

    def run(self, messages: int, check_every: int = 8) -> int:
        sent = 0
        while sent < messages:
            self.step += 1
            sent += self.one()
            if self.step % check_every == 0:
                self.check()
        self.check()
        return sent

    def check(self) -> None:
        self.last = "check()"
        try:
            self.store.check_invariants()
            self.agent.check()
        except AssertionError:
            raise self.crash("invariant broken") from None

    # -- one step: returns the messages handed to a handler

    def one(self) -> int:
        r = self.rng.random()
        if r < 0.55:
            return self.client_says()
        if r < 0.70:
            return self.head_says()
        if r < 0.74:
            self.agent_event()
        elif r < 0.80:
            self.spill_thread_reports()
        elif r < 0.86:
            self.fetch_ends()
        elif r < 0.93:
            self.node_pulls()
        elif r < 0.96:
            self.call("client_gone", self.store.client_gone, self.rng.choice(self.clients))
        else:
            self.now += self.rng.choice((0.01, 0.3, 1.0, 6.0))
            self.call(f"expire({self.now})", self.store.expire, self.now)
            self.call(f"agent tick({self.now})", self.agent.feed, A.Tick(), self.now)
        return 0

    def deliver(self, handler: Any, who: str, msg: Any, *args: Any) -> int:
        frames = P.encode(msg, frame_threshold=48)
        if self.rng.random() < 0.05:
            frames = _damage(self.rng, frames)
        try:
            msg = P.decode(frames)
        except P.ProtocolError:
            self.counts["(rejected by decode)"] += 1
            return 1
        self.counts[type(msg).__name__] += 1
        self.call(msg, handler, *args[:1], msg, *args[1:], who=who)
        return 1

    def oid(self) -> bytes:
        v = self.v
        oid = v.pick(self.ids, v.bytes_)
        if self.rng.random() < 0.2:
            oid = self.rng.randbytes(20)
            self.ids.append(oid)
        return oid

    def client_says(self) -> int:
        r, v = self.rng, self.v
        peer = r.choice(self.clients)
        x = r.random()
        size = r.choice((0, 1, 64, 1000, 2000, CAPACITY, CAPACITY + 1)) if r.random() < 0.9 else v.int_()
        if x < 0.25:
            msg: Any = P.StoreCreate(self.oid(), size)
        elif x < 0.4:  # seal or abort what this client created (or anything)
            mine = [m.object_id for p, m in self.rig.sock.sent if p == peer and type(m) is P.StoreCreated]
            oid = r.choice(mine) if mine and r.random() < 0.8 else self.oid()
            msg = P.StoreSeal(oid) if r.random() < 0.75 else P.StoreAbort(oid)
        elif x < 0.6:
            msg = P.StorePin([self.oid() for _ in range(r.randint(1, 3))])
        elif x < 0.75:
            pinned = [m.object_id for p, m in self.rig.sock.sent if p == peer and type(m) is P.StorePinned]
            msg = P.StoreUnpin([r.choice(pinned) if pinned and r.random() < 0.8 else self.oid()
                                for _ in range(r.randint(1, 2))])
        elif x < 0.85:
            msg = P.StoreDelete([self.oid() for _ in range(r.randint(1, 3))])
        elif x < 0.95:
            sources = [r.choice((["n2", "127.0.0.1:7001"], ["n3", "[::1]:7002"], ["me", "127.0.0.1:7000"],
                                 ["n4", "host"], ["n5", "h:0"], ["n6", "h:99999"], ["n7", "h:" + "9" * 5000],
                                 [v.str_(), v.str_()])) for _ in range(r.randint(0, 2))]
            msg = P.StoreFetch(self.oid(), size, sources)
        else:
            msg = self.any()
        return self.deliver(self.store.request, peer, msg, peer, self.now)

    def head_says(self) -> int:
        r, v = self.rng, self.v
        x = r.random()
        workers = self.worker_ids()
        if x < 0.15:
            msg: Any = P.Welcome(P.PROTOCOL_VERSION, {})
        elif x < 0.25:
            msg = P.Refused(r.choice((A.DECLARED_DEAD + " (...)", "no", v.str_())))
        elif x < 0.35:
            msg = P.StartWorkers(v.int_() if r.random() < 0.3 else r.randint(0, 3))
        elif x < 0.6:
            msg = P.FreeObjects([self.oid() for _ in range(r.randint(1, 3))])
        elif x < 0.7:
            msg = P.KillWorker(r.choice(workers + [v.str_()]), v.str_())
        elif x < 0.85:
            msg = P.InterruptTask(r.choice(workers), r.choice((r.randbytes(16), r.randbytes(3), b"")))
        elif x < 0.88:
            msg = P.Shutdown(v.str_())
        elif x < 0.92:
            msg = P.HeartbeatAck()
        else:
            msg = self.any()
        return self.deliver(self.from_head, b"head", msg)

    def from_head(self, msg: Any) -> None:
        self.agent.feed(A.FromHead(msg), self.now)

    def agent_event(self) -> None:
        """What the agent's loop sees besides the head: worker ends, late polls, the head's
        connection closing, a refused handshake, a stop."""
        r, agent = self.rng, self.agent
        x = r.random()
        if x < 0.6:
            self.call("worker ends", agent.worker_ends, self.now)
            return
        if x < 0.85:
            asked = r.choice((0.0, 0.25, 1.0))
            event: Any = A.Woke(asked, asked + r.choice((0.0, 0.3, 2.0, 70.0)))
        elif x < 0.9:
            event = A.HeadClosed()
        elif x < 0.95:
            event = A.HandshakeRefused(self.v.str_())
        elif x < 0.98:
            event = A.StopRequested()
        else:
            event = A.LifelineEnded()
        self.call(event, agent.feed, event, self.now, who=b"loop")

    def spill_thread_reports(self) -> None:
        jobs = self.rig.spill.jobs
        while jobs and jobs[0][0] == DELETE:
            jobs.popleft()
        if not jobs:
            return
        kind, oid = jobs.popleft()
        error = None if self.rng.random() < 0.8 else "OSError: [Errno 28] No space left on device"
        self.call(f"spill_report({kind}, {oid.hex()}, {error})", self.store.spill_report, kind, oid,
                  error)

    def fetch_ends(self) -> None:
        started = self.rig.transfers.started
        if not started:
            return
        oid = self.rng.choice(list(started))
        error = None if self.rng.random() < 0.7 else "every source failed"
        del started[oid]
        self.call(f"fetch_done({oid.hex()}, {error})", self.store.fetch_done, oid, error)

    def node_pulls(self) -> None:
        """Another node streams an object: a serving thread asks for a pin, later unpins it
        (or gives up waiting first)."""
        r = self.rng
        done = [req for req in self.serving if req.done.is_set()]
        if done and r.random() < 0.5:
            req = r.choice(done)
            self.serving.remove(req)
            if req.error is None:
                self.call(f"serve_unpin({req.object_id.hex()})", self.store.serve_unpin,
                          req.object_id)
            return
        waiting = [req for req in self.serving if not req.done.is_set()]
        if waiting and r.random() < 0.2:  # its peer went away: it stops waiting
            req = r.choice(waiting)
            self.serving.remove(req)
            req.give_up()
            return
        req = ServeRequest(self.oid())
        self.serving.append(req)
        self.call(f"serve_pin({req.object_id.hex()})", self.store.serve_pin, req)
