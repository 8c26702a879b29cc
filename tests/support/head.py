"""The scripted head harness: a real HeadState driven with real protocol messages.

A :class:`Cluster` plays the driver, the node agents and the workers: every message it feeds in
and every message the head returns goes through the real encode/decode, so the tests also
check that the head only ever says well-formed things. It is the head's I/O shell for tests:
``Log`` commands go to ``logging`` (so ``caplog`` sees them), an ``InternalError`` fails the
test at once. :class:`Actors` adds actor
creation and calls. No processes, sockets or sleeps.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Iterable

from taskmesh import _protocol as P
from taskmesh._head import actors as A
from taskmesh._head.commands import InternalError, Log, Send
from taskmesh._head.intake import DISCONNECTED
from taskmesh._head.state import HeadState
from taskmesh._protocol import return_ids
from taskmesh._resources import UNIT
from taskmesh.config import Config

PV = P.PROTOCOL_VERSION
SO = P.SerializedObject
MB = 1 << 20

SHORT = 1e-4  # a function mean this short is pipelined
LONG = 5.0


def wire(msg):
    """What the other side of a socket would get."""
    return P.decode(P.encode(msg))


def value(data: bytes = b"value", buffers: Iterable[bytes] = ()) -> SO:
    return SO(SO.VALUE, data, list(buffers))


def task_error(data: bytes = b"pickled ValueError('boom')") -> SO:
    return SO(SO.TASK_ERROR, data, [])


def build(cls, **fields):
    """A message or record from named fields (fields with defaults may be left out). A name the
    record does not have is a TypeError: a test must not go on passing a field that is gone."""
    unknown = [name for name in fields if name not in cls._fields]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(map(repr, unknown))} "
                        f"(its fields: {', '.join(cls._fields)})")
    return cls(**fields)


def blocked(returned=(), waiting=()) -> P.Blocked:
    """A worker's Blocked message (``waiting``: the objects its task waits for)."""
    return build(P.Blocked, returned=list(returned), waiting=list(waiting))


def ret(task_id: bytes, i: int = 0) -> bytes:
    return return_ids(task_id, i + 1)[i]


def stored(oid: bytes, size: int, node_id: str = "") -> SO:
    """A STORED marker as a worker or driver sends it (its own node, no address)."""
    return SO.stored(oid, size, [[node_id, ""]])


def locations(marker: SO) -> list:
    oid, size, locs = marker.read_stored()
    return locs


class Sent:
    """One drained outbox: (peer, message) pairs, with lookups."""

    def __init__(self, pairs: list) -> None:
        self.pairs = pairs

    def to(self, peer: bytes, cls: type | None = None) -> list:
        return [m for p, m in self.pairs if p == peer and (cls is None or type(m) is cls)]

    def of(self, cls: type) -> list:
        return [(p, m) for p, m in self.pairs if type(m) is cls]

    def assignments(self, peer: bytes | None = None) -> list:
        return [a for p, m in self.pairs if type(m) is P.Execute and (peer is None or p == peer)
                for a in m.assignments]

    def assigned_to(self) -> dict:
        """task id -> worker peer, for every Execute in this batch."""
        return {a.task_id: p for p, m in self.of(P.Execute) for a in m.assignments}

    def values(self, peer: bytes) -> dict:
        return {it.object_id: it for m in self.to(peer, P.ObjectValues) for it in m.items}

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"Sent({self.pairs!r})"


class Cluster:
    """A head plus scripted peers: one driver, node agents, and workers."""

    def __init__(self, **config) -> None:
        self.config = Config(**config)
        self.state = HeadState(self.config, now=0.0)
        self.now = 0.0
        self._seq = itertools.count(1)
        self.node_peer: dict[str, bytes] = {}
        self.node_workers: dict[str, list[bytes]] = {}
        self.worker_info: dict[bytes, tuple[str, str, int]] = {}  # peer -> node id, worker id, pid
        self.sent: list[tuple[bytes, Any]] = []  # what the head said, not drained yet
        self.driver = self.hello(b"driver-1", "driver")
        self.drain()

    # -- plumbing

    def carry_out(self, commands: list) -> None:
        """Do what the head asks: keep its messages (checked on the wire), log its lines."""
        for c in commands:
            if type(c) is Send:
                wire(c.msg)  # everything the head says must be encodable and decodable
                self.sent.append((c.peer, c.msg))
            elif type(c) is Log:
                logging.getLogger(c.logger).log(c.level, c.msg, *c.args)
            else:
                assert type(c) is not InternalError, f"the head raised:\n{c.traceback}"
                raise AssertionError(f"unknown command {c!r}")

    def turn(self, commands: list) -> None:
        """Carry out a turn's commands, then the head's work after it (as its shell does)."""
        self.carry_out(commands)
        self.carry_out(self.state.after_turn())

    def send(self, peer: bytes, msg) -> None:
        self.turn(self.state.handle(peer, wire(msg), self.now))

    def send_all(self, messages: Iterable[tuple[bytes, Any]]) -> None:
        """Several messages in one batch (one scheduling round), as the head's loop does."""
        self.turn(self.state.handle_all([(p, wire(m), self.now) for p, m in messages]))

    def disconnect(self, peer: bytes) -> None:
        """The peer's connection closed (a local peer's process is gone)."""
        self.turn(self.state.handle(peer, DISCONNECTED, self.now))

    def drain(self) -> Sent:
        pairs, self.sent = self.sent, []
        return Sent(pairs)

    def later(self, dt: float = 1.0) -> Sent:
        """Let ``dt`` seconds pass with every live node heartbeating."""
        return self.tick(self.now + dt, heartbeats=[n for n, rec in self.state.members.nodes.items()
                                                    if rec.alive])

    def tick(self, now: float, heartbeats: Iterable[str] = ()) -> Sent:
        """Advance the clock to ``now``; the named nodes heartbeat just before."""
        self.now = now
        for node_id in heartbeats:
            self.heartbeat(node_id)
        self.turn(self.state.tick(now))
        return self.drain()

    # -- peers

    def hello(self, peer: bytes, kind: str, info: dict | None = None, version: int = PV) -> bytes:
        self.send(peer, P.Hello(version, kind, info or {}))
        return peer

    def add_node(self, node_id: str, cpus: float = 1, workers: int | None = None,
                 resources: dict | None = None, address: str | None = None) -> bytes:
        peer = f"node-{node_id}".encode()
        total = {"CPU": int(cpus * UNIT)}
        total.update({k: int(v * UNIT) for k, v in (resources or {}).items()})
        n = int(cpus) if workers is None else workers
        self.send(peer, P.Hello(PV, "node", {
            "node_id": node_id, "address": address or f"10.0.0.{len(self.node_peer) + 1}",
            "hostname": f"host-{node_id}", "pid": 100 + len(self.node_peer),
            "resources": total, "prestart": n}))
        self.node_peer[node_id] = peer
        self.node_workers[node_id] = []
        for _ in range(n):
            self.add_worker(node_id)
        return peer

    def add_worker(self, node_id: str) -> bytes:
        n = next(self._seq)
        peer, worker_id, pid = f"worker-{n}".encode(), f"w{n}", 5000 + n
        self.worker_info[peer] = (node_id, worker_id, pid)
        self.node_workers.setdefault(node_id, []).append(peer)
        self.send(peer, P.Hello(PV, "worker", {"node_id": node_id, "worker_id": worker_id, "pid": pid}))
        return peer

    def heartbeat(self, node_id: str) -> None:
        self.send(self.node_peer[node_id], P.Heartbeat({"cpu_percent": 1.0}))

    def exited(self, worker: bytes, exitcode: int = -9) -> None:
        node_id, worker_id, pid = self.worker_info[worker]
        self.send(self.node_peer[node_id], build(P.WorkerExited, worker_id=worker_id, pid=pid,
                                                 exitcode=exitcode))

    # -- driver

    def register(self, name: str = "mod.f", owner: bytes | None = None) -> bytes:
        fid = f"fid:{name}".encode()
        self.send(owner or self.driver, P.RegisterFunction(fid, name, f"blob of {name}".encode()))
        return fid

    def spec(self, fid: bytes, *, deps: Iterable[bytes] = (), cpus: float = 1,
             resources: dict | None = None, max_retries: int = 3, num_returns: int = 1,
             name: str | None = None, retry_exceptions: bool = False) -> P.TaskSpec:
        res = {"CPU": int(cpus * UNIT)} if cpus else {}
        res.update({k: int(v * UNIT) for k, v in (resources or {}).items()})
        return build(P.TaskSpec, task_id=f"task-{next(self._seq):011d}".encode(),  # 16 bytes
                     name=name or fid.decode().split(":", 1)[1], function_id=fid,
                     args=value(b"args"), deps=list(deps), num_returns=num_returns,
                     resources=res, max_retries=max_retries, retry_exceptions=retry_exceptions)

    def submit(self, fid: bytes, n: int = 1, owner: bytes | None = None, **kw) -> list[bytes]:
        specs = [self.spec(fid, **kw) for _ in range(n)]
        self.send(owner or self.driver, P.Submit(specs))
        return [s.task_id for s in specs]

    def put(self, oid: bytes, obj: SO, owner: bytes | None = None) -> bytes:
        self.send(owner or self.driver, P.Put([(oid, obj)]))
        return oid

    # -- workers

    def finish(self, worker: bytes, task_id: bytes, *returns: SO, duration: float = 0.5) -> None:
        if not returns:
            returns = (value(b"result of " + task_id),)
        self.send(worker, P.TaskResults([P.TaskResult(task_id, list(returns), duration)]))

    def warm(self, fid: bytes, duration: float) -> None:
        """Run one task of ``fid`` so the head learns its mean duration."""
        [t] = self.submit(fid)
        worker = self.drain().assigned_to()[t]
        self.finish(worker, t, duration=duration)
        self.drain()

    # -- inspection

    def node(self, node_id: str):
        return self.state.members.nodes[node_id]

    def alive(self, *oids: bytes) -> list[bool]:
        """For each object: does the head still keep it (in its object directory)?"""
        return [oid in self.state.directory.objects for oid in oids]

    def avail_cpu(self, node_id: str) -> int:
        return self.node(node_id).avail.get("CPU", 0)

    def status(self) -> dict:
        return self.state.info("status")

    def info(self, what: str, peer: bytes | None = None):
        rid = next(self._seq)
        peer = peer or self.driver
        self.send(peer, P.InfoRequest(rid, what))
        [reply] = self.drain().to(peer, P.InfoReply)
        assert reply.request_id == rid
        return reply.data


class Actors(Cluster):
    """Cluster plus actor helpers."""

    def create(self, fid: bytes, *, owner: bytes | None = None, deps=(), reply: int = 0,
               **options) -> bytes:
        aid = f"actor-{next(self._seq):010d}".encode()  # 16 bytes
        spec = P.TaskSpec(aid, "mod.C.__init__", fid, value(b"ctor args"), list(deps), 1, {}, 0,
                          False, aid, "__init__")
        opts = {"class_name": "mod.C", "methods": {"f": {"num_returns": 1}}, **options}
        self.send(owner or self.driver, P.CreateActor(spec, opts, reply))
        return aid

    def call(self, aid: bytes, method: str = "f", *, owner: bytes | None = None, deps=(),
             retries: int = 0) -> bytes:
        tid = f"call-{next(self._seq):011d}".encode()
        spec = P.TaskSpec(tid, f"mod.C.{method}", b"fid:mod.C", value(b"args"), list(deps), 1,
                          {}, retries, False, aid, method)
        self.send(owner or self.driver, P.Submit([spec]))
        return tid

    def actor(self, aid: bytes) -> A.ActorRec:
        return self.state.actor_table.actors[aid]


def started(c: Actors, aid: bytes) -> bytes:
    """Finish the actor's constructor on the worker it was sent to; return that worker."""
    sent = c.drain()
    [worker] = [p for t, p in sent.assigned_to().items() if t == aid]
    [a] = [a for a in sent.assignments(worker) if a.task_id == aid]
    assert a.method == "__init__" and a.actor["actor_id"] == aid
    c.finish(worker, aid, value(b"None"))
    return worker
