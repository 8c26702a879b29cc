"""Fuzzing the head: a HeadState with nodes, workers, drivers and tasks in flight, fed a stream
of generated messages, its invariants checked as it goes.

    HeadWorld ──encode──(mutate)──decode──▶ HeadState.handle ... schedule / tick / disconnected
        ▲                                                              │
        └───── the model of the peers reacts to what the head said ◀───┘ outbox (encoded too)

A world plays the peers just well enough to reach deep states: nodes start the workers the head
asks for and report their exits, workers answer the tasks they were given (values, errors,
stored markers, lost dependencies), hand tasks back and block, drivers submit, put, release,
cancel and make actors. Around that run the adversaries: any message of any op from any peer
(strangers, peers that left, the wrong kind), messages about unknown or finished tasks and
objects, edge values in every field, replays of earlier messages, bytes flipped on the wire,
silence until the head declares a node dead, disconnections.

A *crash* is an exception escaping ``handle``, ``schedule``, ``tick`` or ``disconnected``, an
outgoing message that does not encode and decode, or ``check_invariants`` failing. The world
records it (with the seed, world and step to replay it) and the caller starts a fresh world.
"""

from __future__ import annotations

import logging
import random
import traceback
from collections import Counter, deque
from typing import Any

from taskmesh import _protocol as P
from taskmesh._head.commands import InternalError, Log, Send
from taskmesh._head.intake import DISCONNECTED
from taskmesh._head.state import HeadState
from taskmesh._protocol import return_ids
from taskmesh.config import Config

from .values import SO, AnyMessage, Values

PV = P.PROTOCOL_VERSION
#: frames above this many bytes ride out of band: small, so the fuzz exercises frame references
FRAME_THRESHOLD = 48


#: the runtime environments the fuzzed peers use
ENVS = ("env_f1", "env_f2")

class Crash(Exception):
    """What went wrong, where, and how to replay it."""


class HeadWorld:
    """One HeadState and the peers around it (see the module docstring)."""

    def __init__(self, seed: int, world: int, counts: Counter, config: Config | None = None,
                 paranoid: bool = False) -> None:
        self.paranoid = paranoid  # check the invariants after every input (to find a culprit)
        self.rng = rng = random.Random(f"head-{seed}-{world}")
        self.seed, self.world = seed, world
        self.v = Values(rng, tame=rng.random() < 0.3)
        self.any = AnyMessage(self.v, self.pools)
        self.counts = counts  # messages handled, by op; shared across worlds
        self.config = config or Config(
            heartbeat_timeout_s=rng.choice((2.0, 5.0)), idle_worker_timeout_s=rng.choice((1.0, 30.0)),
            max_pipeline=rng.choice((1, 4)), inline_push_bytes=rng.choice((64, 100_000)))
        self.now = 0.0
        self.state = HeadState(self.config, now=0.0)
        self.batch: list = []  # messages for the head's next turn (handle_all)
        self.said: list = []  # what the head said, not read yet (react)
        self.step = 0
        self.last: Any = None  # the message being handled (for crash reports)
        self.trace: deque[tuple] = deque(maxlen=16)  # the latest inputs (for crash reports)
        # the model of the peers
        self.seq = 0
        self.drivers: list[bytes] = []
        self.status: list[bytes] = []
        self.nodes: dict[str, bytes] = {}  # node id -> peer
        self.incarnation: dict[str, int] = {}
        self.silent: set[str] = set()  # nodes cut off: no heartbeats
        self.last_beat = 0.0
        self.workers: dict[bytes, tuple[str, str, int]] = {}  # peer -> node id, worker id, pid
        self.assigned: dict[bytes, list[bytes]] = {}  # worker peer -> task ids sent to it
        self.revoked: dict[bytes, list[bytes]] = {}
        self.to_start: deque[tuple[str, int]] = deque()  # (node id, incarnation) per StartWorkers
        self.exits: deque[tuple[bytes, str, int, int]] = deque()  # node peer, worker id, pid, code
        self.left: list[bytes] = []  # said Goodbye, were forgotten, or were refused
        self.strangers = [b"stranger-" + bytes([i]) for i in range(3)]
        self.functions: list[bytes] = []
        self.task_ids: deque[bytes] = deque(maxlen=200)
        self.object_ids: deque[bytes] = deque(maxlen=300)
        self.actor_ids: deque[bytes] = deque(maxlen=40)
        self.actor_names: list[str] = []
        self.history: deque[tuple[bytes, list]] = deque(maxlen=200)
        self._setup()

    # ------------------------------------------------------------------ plumbing

    def pools(self) -> dict:
        return {"objects": self.object_ids, "tasks": self.task_ids, "actors": self.actor_ids,
                "functions": self.functions, "node_ids": list(self.nodes),
                "worker_ids": [w[1] for w in self.workers.values()]}

    def _peer(self, prefix: str) -> bytes:
        self.seq += 1
        return f"{prefix}-{self.world}-{self.seq}".encode()

    def crash(self, what: str, tb: str | None = None) -> Crash:
        recent = "\n  ".join(_line(*entry) for entry in self.trace)
        return Crash(f"{what} (seed {self.seed}, world {self.world}, step {self.step}, "
                     f"message {self.last!r:.600})\nlatest inputs:\n  {recent}\n"
                     f"{tb or traceback.format_exc()}")

    def send(self, peer: bytes, msg: Any, mutate: float = 0.0) -> None:
        """Encode, maybe damage the frames, decode, and hand the result to the head."""
        frames = P.encode(msg, frame_threshold=FRAME_THRESHOLD)
        if mutate and self.rng.random() < mutate:
            frames = _damage(self.rng, frames)
        else:
            self.history.append((peer, frames))
        self.deliver(peer, frames)

    def deliver(self, peer: bytes, frames: list) -> None:
        try:
            msg = P.decode(frames)
        except P.ProtocolError:
            self.counts["(rejected by decode)"] += 1
            return
        self.counts[type(msg).__name__] += 1
        self.last = msg
        self.trace.append((self.step, peer, msg))
        self.batch.append((peer, msg, self.now))
        if self.paranoid:  # each message its own batch, checked after it
            self.schedule()

    def take(self, commands: list) -> None:
        """Keep what the head said (for react); an internal error is a crash."""
        for c in commands:
            if type(c) is Send:
                self.said.append(c)
            elif type(c) is Log:  # written, as the head's loop would (run.py counts them)
                logging.getLogger(c.logger).log(c.level, c.msg, *c.args)
            elif type(c) is InternalError:
                self.last = f"{c.what} from {c.peer!r}"
                raise self.crash(f"the head raised handling {c.what}", c.traceback)

    def schedule(self) -> None:
        """The head's loop takes in the batch (one scheduling round), then its chores (long
        scans, e.g. of a driver that held many objects: here, to the end)."""
        batch, self.batch = self.batch, []
        self.trace.append((self.step, None, f"handle_all({len(batch)} messages)"))
        self.take(self.state.handle_all(batch))
        if self.state.chores:
            self.take(self.state.run_chores(float("inf"), lambda: 0.0))
        if self.paranoid:
            self.check()
        self.react()

    def tick(self, dt: float) -> None:
        self.now += dt
        if self.now - self.last_beat >= 0.5:  # nodes that are not cut off heartbeat
            self.last_beat = self.now
            for node_id, peer in list(self.nodes.items()):
                if node_id not in self.silent:
                    self.send(peer, P.Heartbeat({"workers": 1, "store_used_bytes": 0}))
        self.last = f"tick({self.now})"
        self.trace.append((self.step, None, self.last))
        # now and then the head itself did not run for a while (stopped, starved)
        stalled = self.rng.random() * 2 if self.rng.random() < 0.05 else 0.0
        self.schedule()  # (what came before the tick is handled before it)
        self.take(self.state.tick(self.now, stalled))
        if self.paranoid:
            self.check()
        self.schedule()

    def check(self) -> None:
        self.last = "check_invariants()"
        try:
            self.state.check_invariants()
        except AssertionError:
            raise self.crash("invariant broken") from None

    def react(self) -> None:
        """Read the outbox: every message must survive the wire; the peers' model learns from it.
        Peers the head forgot (a worker of a lost node, a driver taken as gone) leave the model
        too: they talk on only as peers that left."""
        peers = self.state.members.peers
        for pool in (self.workers, self.assigned):
            for peer in [p for p in pool if p not in peers]:
                del pool[peer]
                if len(self.left) < 50:
                    self.left.append(peer)
        said, self.said = self.said, []
        for peer, msg in said:
            self.last = msg
            try:
                back = P.decode(P.encode(msg))
            except Exception:
                raise self.crash(f"the head said something that does not encode to {peer!r}") from None
            t = type(back)
            if t is P.Execute or t is P.Help:
                self.assigned.setdefault(peer, []).extend(a.task_id for a in back.assignments)
            elif t is P.Revoke:
                self.revoked[peer] = list(back.task_ids)
            elif t is P.StartWorkers:
                node_id = _node_of(self.nodes, peer)
                if node_id is not None:
                    self.to_start.extend([(node_id, self.incarnation[node_id])] * min(back.count, 8))
            elif t is P.Exit or t is P.KillWorker:
                w = self.workers.get(peer) if t is P.Exit else _worker_named(self.workers, back.worker_id)
                if w is not None and w[0] in self.nodes:
                    self.exits.append((self.nodes[w[0]], w[1], w[2], -9 if t is P.KillWorker else 0))
            elif t is P.Refused:
                node_id = _node_of(self.nodes, peer)
                if node_id is not None and self.rng.random() < 0.5:  # the node joins again
                    self.silent.discard(node_id)
                    self.incarnation[node_id] += 1
                    self.hello_node(node_id, peer)
                elif peer in self.drivers:
                    self.drivers.remove(peer)
                    self.left.append(peer)

    # ------------------------------------------------------------------ the cluster's start

    def hello_node(self, node_id: str, peer: bytes | None = None, cpus: int = 2) -> bytes:
        peer = peer or f"N{node_id}".encode()
        self.nodes[node_id] = peer
        self.incarnation.setdefault(node_id, 0)
        info = {"node_id": node_id, "address": f"10.0.0.{len(self.nodes)}", "pid": 100,
                "resources": {"CPU": cpus * 10_000, "memory": 10**9, "custom": 10_000},
                "prestart": cpus, "transfer": f"10.0.0.{len(self.nodes)}:7000",
                "incarnation": self.incarnation[node_id]}
        if node_id.endswith("g"):
            info["resources"]["GPU"] = 20_000
            info["gpus"] = ["0", "1"]
        self.send(peer, P.Hello(PV, "node", info))
        self.to_start.extend([(node_id, self.incarnation[node_id])] * cpus)
        return peer

    def hello_worker(self, node_id: str, incarnation: int) -> None:
        peer = self._peer("W")
        worker_id = f"{node_id}-{self.seq}"
        self.workers[peer] = (node_id, worker_id, 1000 + self.seq)
        info = {"node_id": node_id, "worker_id": worker_id, "pid": 1000 + self.seq,
                "incarnation": incarnation}
        if self.rng.random() < 0.2:  # a worker started for a runtime environment
            info["runtime_env"] = self.rng.choice(ENVS)
        self.send(peer, P.Hello(PV, "worker", info))

    def hello_driver(self) -> bytes:
        peer = self._peer("D")
        info: dict = {}
        if self.rng.random() < 0.5:
            info["heartbeat_s"] = self.rng.choice((0.5, 1.0, 1e9))
        if self.rng.random() < 0.5:
            info["max_pending_tasks"] = self.rng.choice((1, 10, 1000))
        self.drivers.append(peer)
        self.send(peer, P.Hello(PV, "driver", info))
        return peer

    def _setup(self) -> None:
        for node_id in ("n1", "n2g")[: self.rng.randint(1, 2)]:
            self.hello_node(node_id)
        while self.to_start:
            self.hello_worker(*self.to_start.popleft())
        self.hello_driver()
        self.status.append(self._peer("S"))
        self.send(self.status[0], P.Hello(PV, "status", {}))
        for i in range(3):
            fid = bytes([i + 1]) * 16
            self.functions.append(fid)
            self.send(self.drivers[0], P.RegisterFunction(fid, f"f{i}", b"blob"))
        for _ in range(3):
            self.submit(self.drivers[0])
        self.schedule()

    # ------------------------------------------------------------------ one step

    def run(self, messages: int, check_every: int = 8) -> int:
        """Feed about ``messages`` messages (in batches, each followed by schedule()); return
        how many went to the head. Raises Crash."""
        sent = 0
        batches = 0
        while sent < messages:
            before = sum(self.counts.values())
            for _ in range(self.rng.randint(1, 6)):
                self.step += 1
                self.one()
            self.schedule()
            sent += sum(self.counts.values()) - before
            batches += 1
            if self.rng.random() < 0.3:
                self.tick(self.rng.choice((0.01, 0.05, 0.2, 0.2, 1.0)))
            if batches % check_every == 0:
                self.check()
        self.tick(0.1)
        self.check()
        return sent

    def one(self) -> None:
        r = self.rng.random()
        if r < 0.30:
            self.worker_says()
        elif r < 0.50:
            self.driver_says()
        elif r < 0.58:
            self.node_says()
        elif r < 0.64:
            self.peer_joins()
        elif r < 0.76:  # anything, from anyone
            self.send(self.anyone(), self.any(), mutate=0.1)
        elif r < 0.84:  # a replay, maybe from another peer
            if self.history:
                peer, frames = self.rng.choice(self.history)
                self.deliver(self.anyone() if self.rng.random() < 0.3 else peer, frames)
        elif r < 0.87:
            self.peer_leaves()
        elif r < 0.89:
            if self.nodes and self.rng.random() < 0.3:  # a node goes quiet (a partition)
                self.silent.add(self.rng.choice(list(self.nodes)))
            else:
                self.silent.clear()
        elif r < 0.92:
            peer = self.anyone()
            self.last = f"disconnected({peer!r})"
            self.trace.append((self.step, None, self.last))
            self.batch.append((peer, DISCONNECTED, self.now))
            if self.paranoid:
                self.schedule()
        else:  # a client message with a damaged frame
            self.send(self.anyone(), self.any(self.rng.choice((P.Submit, P.Put, P.TaskResults,
                                                               P.CreateActor, P.Hello))), mutate=1.0)

    def anyone(self) -> bytes:
        """Any peer: mostly one that said Hello (of any kind), sometimes a stranger or one
        that left."""
        pools = [self.drivers, list(self.workers), list(self.nodes.values()), self.status]
        if self.rng.random() < 0.15:
            pools = [self.strangers, self.left]
        pool = self.rng.choice([p for p in pools if p])
        return self.rng.choice(pool)

    # -- workers

    def worker_says(self) -> None:
        r = self.rng
        busy = [p for p, ids in self.assigned.items() if ids and p in self.workers]
        if not busy or r.random() < 0.1:
            peer = r.choice(list(self.workers)) if self.workers else self.anyone()
            if r.random() < 0.5:
                self.client_says(peer)
            else:
                self.send(peer, self.any(r.choice((P.TaskResults, P.Blocked, P.Unblocked,
                                                   P.Returned))))
            return
        peer = r.choice(busy)
        ids = self.assigned[peer]
        x = r.random()
        if x < 0.65:  # results, mostly in order
            n = min(len(ids), r.randint(1, 3))
            done = ids[:n] if r.random() < 0.8 else r.sample(ids, n)
            for tid in done:
                if tid in ids and r.random() < 0.95:
                    ids.remove(tid)
            self.send(peer, P.TaskResults([self.result(peer, tid) for tid in done]))
        elif x < 0.8:
            back = [tid for tid in ids[1:] if r.random() < 0.6]
            if r.random() < 0.15:  # duplicates, or the running one
                back += r.sample(ids, min(len(ids), 2))
            for tid in back:
                if tid in ids:
                    ids.remove(tid)
            waiting = [r.choice(self.object_ids) for _ in range(r.randint(0, 3))] if self.object_ids else []
            self.send(peer, P.Blocked(back, waiting))
        elif x < 0.9:
            self.send(peer, P.Unblocked())
        else:
            asked = self.revoked.pop(peer, [])
            back = [tid for tid in asked if tid in ids[1:] and r.random() < 0.8]
            if r.random() < 0.1:
                back += asked
            for tid in back:
                if tid in ids:
                    ids.remove(tid)
            self.send(peer, P.Returned(back))

    def result(self, peer: bytes, task_id: bytes) -> P.TaskResult:
        r, v = self.rng, self.v
        t = self.state.table.tasks.get(task_id)
        n = t.spec.num_returns if t is not None and 0 <= t.spec.num_returns < 8 else r.randint(0, 2)
        if r.random() < 0.05:
            n = max(0, n + r.choice((-1, 1)))
        rids = return_ids(task_id, n)
        node = self.workers.get(peer, ("", "", 0))[0]
        here = [(node, "10.0.0.9:7000")]
        x = r.random()
        returns: list
        if x < 0.55:
            returns = [SO(SO.VALUE, r.randbytes(r.choice((4, 200))), [],
                          [r.choice(self.object_ids)] if self.object_ids and r.random() < 0.1 else ())
                       for _ in rids]
        elif x < 0.65:
            returns = [SO(SO.TASK_ERROR, b"err", [])] * n
        elif x < 0.72:
            returns = [SO.system_error("DependencyLost", "DependencyLost object x")] * n
        elif x < 0.85:
            returns = [SO.stored(oid, r.choice((100, 5000)), here) for oid in rids]
        else:
            returns = [v.serialized(self.object_ids, oid, here) for oid in rids]
        # (in a tame world, short: short functions are pipelined, which work stealing undoes)
        duration = (0.0001 if v.tame else r.choice((0.0001, 0.001, 0.5))) if r.random() < 0.95 else v.float_()
        return P.TaskResult(task_id, returns, duration, r.random() < 0.1)

    # -- drivers (and workers, which are clients too)

    def driver_says(self) -> None:
        r = self.rng
        if not self.drivers or r.random() < 0.05:
            self.hello_driver()
            return
        self.client_says(r.choice(self.drivers))

    def client_says(self, peer: bytes) -> None:
        r, v = self.rng, self.v
        x = r.random()
        if x < 0.05 and self.functions:  # a burst of one short function: queues, pipelining
            fid = self.functions[0]
            tids = [r.randbytes(16) for _ in range(r.randint(8, 30))]
            self.task_ids.extend(tids)
            self.send(peer, P.Submit([P.TaskSpec(tid, "burst", fid, None, [], 1, {"CPU": 10_000},
                                                 0, False) for tid in tids]))
        elif x < 0.35:
            self.submit(peer)
        elif x < 0.45:
            oid = v.pick(self.object_ids, lambda: r.randbytes(20)) if r.random() < 0.3 else r.randbytes(20)
            self.object_ids.append(oid)
            nodes = [(n, "") for n in self.nodes]
            self.send(peer, P.Put([(oid, v.serialized(self.object_ids, oid, nodes))]))
        elif x < 0.55:
            self.send(peer, P.Subscribe([v.pick(self.object_ids, v.bytes_) for _ in range(r.randint(1, 3))]))
        elif x < 0.67:
            self.send(peer, P.Release([v.pick(self.object_ids, v.bytes_) for _ in range(r.randint(1, 4))]))
        elif x < 0.72:
            self.send(peer, P.Borrow([v.pick(self.object_ids, v.bytes_) for _ in range(r.randint(1, 3))]))
        elif x < 0.77:
            self.send(peer, P.Cancel([v.pick(self.object_ids, v.bytes_) for _ in range(r.randint(1, 2))],
                                     r.random() < 0.5, r.random() < 0.7))
        elif x < 0.775 and self.actor_ids:  # the last handle of an actor goes (or a borrow)
            hid = P.actor_handle_id(r.choice(self.actor_ids))
            self.send(peer, (P.Release if r.random() < 0.7 else P.Borrow)([hid]))
        elif x < 0.82:
            self.send(peer, P.InfoRequest(v.int_(), r.choice(("status", "nodes", "resources",
                                                              "available", "ping", v.str_()))))
        elif x < 0.9:
            self.create_actor(peer)
        elif x < 0.93:
            name = r.choice(self.actor_names) if self.actor_names and r.random() < 0.7 else v.str_()
            self.send(peer, P.GetActor(v.int_(), name, r.choice(("", "ns", v.str_()))))
        elif x < 0.96:
            self.send(peer, P.KillActor(v.pick(self.actor_ids, v.bytes_), r.random() < 0.5))
        else:
            fid = r.randbytes(16) if r.random() < 0.5 else v.pick(self.functions, v.bytes_)
            if len(self.functions) < 12:
                self.functions.append(fid)
            self.send(peer, P.RegisterFunction(fid, v.str_(), v.bytes_()))

    def submit(self, peer: bytes) -> None:
        r, v = self.rng, self.v
        specs = []
        for _ in range(r.randint(1, 4)):
            tid = r.randbytes(16) if r.random() < 0.9 else v.pick(self.task_ids, v.bytes_)
            deps = [v.pick(self.object_ids, v.bytes_) for _ in range(r.choice((0, 0, 1, 2)))]
            if r.random() < 0.03:
                deps.append(return_ids(tid, 1)[0])  # its own result
            actor, method = b"", ""
            if self.actor_ids and r.random() < 0.25:
                actor, method = r.choice(self.actor_ids), r.choice(("m", "m", "__init__"))
            spec = v.task_spec(tid, self.functions, deps, self.object_ids, list(self.nodes),
                               actor, method, self.task_ids)
            if actor and r.random() < 0.8:
                spec = spec._replace(resources={})
            if r.random() < 0.15:  # a runtime environment (registered first, mostly)
                spec = spec._replace(runtime_env=self.some_env(peer))
            specs.append(spec)
            self.task_ids.append(tid)
            if 0 <= spec.num_returns < 8:
                self.object_ids.extend(return_ids(tid, spec.num_returns))
        self.send(peer, P.Submit(specs))

    def some_env(self, peer: bytes) -> str:
        env = self.rng.choice(ENVS)
        if self.rng.random() < 0.8:
            self.send(peer, P.RegisterEnv(env, '{"env_vars": {"A": "%s"}}' % env))
        return env

    def create_actor(self, peer: bytes) -> None:
        r, v = self.rng, self.v
        aid = r.randbytes(16) if r.random() < 0.9 else v.pick(self.actor_ids, v.bytes_)
        deps = [v.pick(self.object_ids, v.bytes_) for _ in range(r.choice((0, 0, 1)))]
        spec = v.task_spec(aid, self.functions, deps, self.object_ids, list(self.nodes), aid,
                           "__init__")
        if r.random() < 0.8:
            spec = spec._replace(resources=r.choice(({"CPU": 10_000}, {}, {"CPU": 5_000, "GPU": 10_000})))
        options: dict = {"class_name": "A", "methods": ["m"], "max_restarts": r.choice((0, 1, -1))}
        if r.random() < 0.3:
            name = r.choice(self.actor_names) if self.actor_names and r.random() < 0.5 else v.str_()
            options["name"] = name
            self.actor_names.append(name)
            options["namespace"] = r.choice(("", "ns"))
            options["get_if_exists"] = r.random() < 0.5
        if r.random() < 0.2:
            options["detached"] = True
        if r.random() < 0.2:
            options["max_task_retries"] = r.choice((0, 1, -1))
        if r.random() < 0.15:  # the wrong types
            options[r.choice(("name", "namespace", "max_restarts", "max_task_retries",
                              "max_concurrency", "methods"))] = v.any_()
        self.actor_ids.append(aid)
        self.object_ids.append(return_ids(aid, 1)[0])
        self.send(peer, P.CreateActor(spec, options, r.choice((0, v.int_()))))

    # -- nodes

    def node_says(self) -> None:
        r, v = self.rng, self.v
        if not self.nodes:
            self.hello_node(f"n{self.seq}")
            return
        node_id = r.choice(list(self.nodes))
        peer = self.nodes[node_id]
        x = r.random()
        if x < 0.4 and self.exits:
            node_peer, worker_id, pid, code = self.exits.popleft()
            self.send(node_peer, P.WorkerExited(worker_id, pid, code))
        elif x < 0.43:  # a runtime environment could not be set up there
            self.send(peer, P.EnvFailed(r.choice(ENVS), "pip install x failed (fuzz)"))
        elif x < 0.55:  # a worker dies on its own
            mine = [(p, w) for p, w in self.workers.items() if w[0] == node_id]
            if mine:
                p, w = r.choice(mine)
                code = r.choice((1, -9, -11, P.EXIT_UNKNOWN, 0))
                self.send(peer, P.WorkerExited(w[1], w[2], code))
                if r.random() < 0.9:
                    self.workers.pop(p, None)  # (react may have dropped it)
                    self.left.append(p)
        elif x < 0.75:
            added = [[oid, r.choice((100, 5000, 0))] for oid in
                     r.sample(list(self.object_ids), min(len(self.object_ids), r.randint(0, 2)))]
            removed = r.sample(list(self.object_ids), min(len(self.object_ids), r.randint(0, 2)))
            self.send(peer, P.ObjectLocations(added, removed))
        elif x < 0.85:
            self.send(peer, P.Heartbeat(v.dict_() if r.random() < 0.5 else {"store_x": 1}))
        else:
            self.send(peer, self.any(r.choice((P.WorkerExited, P.ObjectLocations, P.Heartbeat))))

    # -- joining and leaving

    def peer_joins(self) -> None:
        r, v = self.rng, self.v
        x = r.random()
        if x < 0.5 and self.to_start:
            self.hello_worker(*self.to_start.popleft())
        elif x < 0.6:
            self.hello_node(f"n{self.seq}{'g' if r.random() < 0.3 else ''}", cpus=r.randint(0, 3))
        elif x < 0.7:
            self.hello_driver()
        elif x < 0.8:  # a Hello that makes no sense, or comes twice
            info = v.dict_()
            if r.random() < 0.5:
                info.update({"node_id": r.choice(list(self.nodes) or ["n1"]),
                             "resources": r.choice(({"CPU": 10_000}, {"CPU": -1}, v.any_())),
                             "pid": v.any_(), "prestart": v.any_(), "gpus": v.any_()})
            self.send(self.anyone(), P.Hello(r.choice((PV, PV, v.int_())), r.choice((
                "driver", "worker", "node", "status", v.str_())), info))
        elif x < 0.9 and self.nodes:  # a worker of an unknown node, or an old incarnation
            node_id = r.choice(list(self.nodes) + ["nowhere"])
            self.hello_worker(node_id, self.incarnation.get(node_id, 0) + r.choice((-1, 0, 1)))
        else:
            self.send(self.anyone(), self.any(P.Hello))

    def peer_leaves(self) -> None:
        r = self.rng
        x = r.random()
        if x < 0.5 and len(self.drivers) > 1:
            peer = r.choice(self.drivers)
            self.drivers.remove(peer)
            self.left.append(peer)
            self.send(peer, P.Goodbye())
        elif x < 0.6 and len(self.nodes) > 1:
            node_id = r.choice(list(self.nodes))
            peer = self.nodes.pop(node_id)
            self.left.append(peer)
            self.send(peer, P.Goodbye())
        else:
            self.send(self.anyone(), P.Goodbye())


def _line(step: int, peer: bytes | None, what: Any) -> str:
    """One input of a crash report's trace (formatted only when there is a crash)."""
    text = what if isinstance(what, str) else f"{what!r:.300}"
    return f"{step} {text}" if peer is None else f"{step} {peer!r}: {text}"


def _node_of(nodes: dict[str, bytes], peer: bytes) -> str | None:
    return next((n for n, p in nodes.items() if p == peer), None)


def _worker_named(workers: dict, worker_id: str) -> tuple | None:
    return next((w for w in workers.values() if w[1] == worker_id), None)


def _damage(rng: random.Random, frames: list) -> list:
    """Flip, cut, insert or drop bytes of a message's frames (or drop and add frames)."""
    frames = [bytes(f) for f in frames]
    head = bytearray(frames[0])
    for _ in range(rng.randint(1, 3)):
        x = rng.random()
        if x < 0.4 and head:
            head[rng.randrange(len(head))] = rng.randrange(256)
        elif x < 0.6 and head:
            del head[rng.randrange(len(head)):]
        elif x < 0.8:
            head[rng.randrange(len(head) + 1):0] = rng.randbytes(rng.randint(1, 4))
        elif len(frames) > 1:
            frames.pop(rng.randrange(1, len(frames)))
        else:
            frames.append(rng.randbytes(rng.randint(0, 8)))
    frames[0] = bytes(head)
    return frames
