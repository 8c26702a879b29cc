"""Adversarial field values: ints at every edge, odd strings and floats, random msgpack values,
serialized objects with broken payloads, and any message of any op built field by field.

Everything here is seeded by the caller's ``random.Random``: a run is reproduced from its seed.
Values stay inside what msgpack can carry (ints in [-2**63, 2**64)), because the fuzzers send
every message through the real ``encode``/``decode`` before a handler sees it.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

import msgpack

from taskmesh import _protocol as P

SO = P.SerializedObject

EDGE_INTS = (0, 1, -1, 2, 3, 7, 16, 64, 255, 256, 10_000, 65535, 65536, 2**31 - 1, 2**31, -2**31,
             2**32, 2**53 + 1, 2**63 - 1, -2**63, 2**64 - 1)
EDGE_FLOATS = (0.0, -0.0, 1.0, -1.0, 1e-9, 0.5, 2.5, 1e300, -1e300, math.inf, -math.inf, math.nan)
EDGE_STRS = ("", "x", "driver", "worker", "node", "status", "CPU", "GPU", "memory", "SPREAD",
             "node:n1", "node?:n1", "node:", "node?:", ":", "__init__", "ping", "nodes",
             "resources", "available", "\x00", "é\u2028\U0001f600", "a" * 300, "name", "ns",
             "DependencyLost", "ObjectLostError", "ActorDiedError", "127.0.0.1:1", "[::1]:2")


class Values:
    """Random values of each wire type, biased towards edges and towards the ``pools``
    (ids the system under test knows), so that messages hit real records."""

    def __init__(self, rng: random.Random, tame: bool = False) -> None:
        self.rng = rng
        #: no resource shapes that no node can hold (they stay queued, and a queue that never
        #: empties turns work stealing off): lets a world reach the paths of a healthy cluster
        self.tame = tame

    # -- scalars

    def int_(self) -> int:
        r = self.rng
        x = r.random()
        if x < 0.5:
            return r.choice(EDGE_INTS)
        if x < 0.85:
            return r.randint(-3, 20)
        return r.randint(-2**63, 2**64 - 1)

    def small_int(self) -> int:
        return self.rng.randint(0, 4) if self.rng.random() < 0.9 else self.int_()

    def float_(self) -> float:
        r = self.rng
        return r.choice(EDGE_FLOATS) if r.random() < 0.5 else r.uniform(-10, 10)

    def str_(self) -> str:
        r = self.rng
        if r.random() < 0.7:
            return r.choice(EDGE_STRS)
        return "".join(chr(r.randint(1, 0x2FF)) for _ in range(r.randint(0, 12)))

    def bytes_(self) -> bytes:
        r = self.rng
        x = r.random()
        if x < 0.4:
            return r.randbytes(16)
        if x < 0.6:
            return r.randbytes(20)
        if x < 0.7:
            return b""
        if x < 0.75:
            return b"\0" * 16
        if x < 0.78:
            return r.randbytes(r.randint(65, 300))
        return r.randbytes(r.randint(1, 40))

    def any_(self, depth: int = 0) -> Any:
        """Any msgpack value (nested up to a few levels)."""
        r = self.rng
        kind = r.randrange(9 if depth < 3 else 7)
        if kind == 0:
            return None
        if kind == 1:
            return r.random() < 0.5
        if kind == 2:
            return self.int_()
        if kind == 3:
            return self.float_()
        if kind == 4:
            return self.str_()
        if kind == 5:
            return self.bytes_()
        if kind == 6:
            return r.choice((msgpack.ExtType(r.randint(0, 127), r.randbytes(r.randint(0, 8))),
                             msgpack.Timestamp(r.randint(0, 2**32 - 1), 0), 0))
        if kind == 7:
            return [self.any_(depth + 1) for _ in range(r.randint(0, 4))]
        return self.dict_(depth + 1)

    def key(self) -> Any:
        r = self.rng
        return r.choice((self.str_(), self.str_(), self.str_(), self.int_(), self.bytes_(), None,
                         self.float_(), True))

    def dict_(self, depth: int = 0) -> dict:
        return {self.key(): self.any_(depth + 1) for _ in range(self.rng.randint(0, 4))}

    def pick(self, pool: Sequence[Any], fallback: Callable[[], Any]) -> Any:
        """Mostly a member of ``pool`` (a known id), else a fresh adversarial value."""
        if pool and self.rng.random() < 0.8:
            return self.rng.choice(pool)
        return fallback()

    # -- records

    def serialized(self, ids: Sequence[bytes] = (), object_id: bytes | None = None,
                   nodes: Sequence[tuple[str, str]] = ()) -> SO:
        """A value as a worker or driver might send it: fine, huge, an error, a STORED marker
        (right or wrong), or flags that promise a payload the data does not hold."""
        r = self.rng
        x = r.random()
        contained = [self.pick(ids, self.bytes_) for _ in range(r.randint(0, 2))] if r.random() < 0.2 else ()
        if x < 0.45:
            data = r.randbytes(r.choice((0, 4, 16, 200)))
            bufs = [r.randbytes(r.choice((1, 40, 300)))] if r.random() < 0.15 else []
            return SO(SO.VALUE, data, bufs, contained)
        if x < 0.55:
            return SO(SO.TASK_ERROR, r.randbytes(8), [], contained)
        if x < 0.65:
            kind = r.choice(("DependencyLost", "ObjectLostError", "ActorDiedError",
                             "TaskCancelledError", self.str_()))
            return SO.system_error(kind, self.str_())
        if x < 0.72:  # a SYSTEM_ERROR whose payload is not [kind, message]
            return SO(SO.SYSTEM_ERROR, r.choice((b"", b"\xc1", msgpack.packb(self.any_()),
                                                 msgpack.packb(["a", "b", "c"]),
                                                 msgpack.packb([1, 2]))), [], contained)
        if x < 0.9:
            oid = object_id if object_id is not None and r.random() < 0.8 else self.pick(ids, self.bytes_)
            locs = [list(r.choice(nodes)) if nodes and r.random() < 0.85 else [self.str_(), self.str_()]
                    for _ in range(r.randint(0, 2))]
            size = r.choice((0, 100, 4096, 1 << 20)) if r.random() < 0.9 else self.int_()
            if r.random() < 0.95 and -2**63 <= size < 2**64:
                return SO.stored(oid, size, locs)
        return SO(SO.STORED, r.choice((b"", b"\x93\x01\x02\x03", msgpack.packb(self.any_()),
                                       msgpack.packb([b"x", -1, []]),
                                       msgpack.packb([b"x", 1, [["a"]]]))), [], contained)

    def resources(self) -> dict:
        r = self.rng
        x = r.random()
        if x < 0.5:
            return {"CPU": 10_000}
        if x < 0.6:
            return {}
        if x < 0.7:
            return {"CPU": 5_000}
        if x < 0.78:
            return {"CPU": 10_000, "GPU": r.choice((2_500, 10_000, 20_000) if self.tame else
                                                   (2_500, 10_000, 20_000, 15_000))}
        if x < 0.85 or self.tame:
            return {"CPU": 0, "custom": r.choice((1, 10_000))}
        return {self.str_(): r.choice((0, 1, 10_000, 2**40, 2**63 - 1)) for _ in range(r.randint(0, 3))}

    def strategy(self, node_ids: Sequence[str]) -> str:
        r = self.rng
        x = r.random()
        if x < 0.8 or (self.tame and x < 0.93):
            return ""
        if x < 0.87 or self.tame:
            return "SPREAD"
        target = r.choice(node_ids) if node_ids and r.random() < 0.7 else self.str_()
        return ("node:" if r.random() < 0.5 else "node?:") + target

    def task_spec(self, task_id: bytes, functions: Sequence[bytes], deps: Sequence[bytes],
                  ids: Sequence[bytes], node_ids: Sequence[str], actor_id: bytes = b"",
                  method: str = "", parents: Sequence[bytes] = ()) -> P.TaskSpec:
        r = self.rng
        x = r.random()  # (many returns are legal but slow: seldom)
        num_returns = r.choice((1, 1, 1, 0, 2, 3)) if x < 0.97 else -1 if x < 0.99 else self.int_()
        timeout = 0.0 if r.random() < 0.85 else self.float_()
        return P.TaskSpec(
            task_id, r.choice(("f", "g", "a.m", self.str_())),
            self.pick(functions, self.bytes_),
            self.serialized(ids) if r.random() < 0.9 else None,
            list(deps), num_returns, self.resources(),
            r.choice((0, 0, 1, 3, -1)) if r.random() < 0.95 else self.int_(),
            r.random() < 0.3, actor_id, method, timeout, self.strategy(node_ids),
            # submitted by a running task (cancel follows it), or a forged parent
            (self.pick(parents, self.bytes_) if r.random() < 0.3 else b""),
            r.randbytes(r.choice((0, 0, 0, 12))))


class AnyMessage:
    """Any message of any op, built field by field from its name: ids from the pools, the
    right type mostly (``decode`` would reject the rest, which the frame fuzzer covers)."""

    def __init__(self, values: Values, pools: Callable[[], dict]) -> None:
        self.v = values
        self.pools = pools  # -> {"objects": [...], "tasks": [...], "actors": [...], ...}
        self.types = list(P.message_types().values())

    def __call__(self, cls: type | None = None) -> Any:
        cls = cls or self.v.rng.choice(self.types)
        return cls(*[self.field(cls, name) for name in cls._fields])

    def field(self, cls: type, name: str) -> Any:
        v, r, pools = self.v, self.v.rng, self.pools()
        objects, tasks = pools["objects"], pools["tasks"]
        if name in ("object_id",):
            return v.pick(objects, v.bytes_)
        if name in ("task_id",):
            return v.pick(tasks, v.bytes_)
        if name in ("actor_id",):
            return v.pick(pools["actors"], v.bytes_)
        if name in ("function_id",):
            return v.pick(pools["functions"], v.bytes_)
        if name in ("object_ids", "waiting", "removed"):
            return [v.pick(objects, v.bytes_) for _ in range(r.randint(0, 4))]
        if name in ("task_ids", "returned"):
            return [v.pick(tasks, v.bytes_) for _ in range(r.randint(0, 4))]
        if name in ("worker_id",):
            return v.pick(pools["worker_ids"], v.str_)
        if name in ("version",):
            return P.PROTOCOL_VERSION if r.random() < 0.7 else v.int_()
        if name in ("kind",):
            return r.choice(("driver", "worker", "node", "status", v.str_()))
        if name in ("info", "stats", "options"):
            return v.dict_()
        if name in ("data",):
            return v.dict_() if r.random() < 0.5 else [v.any_()]
        if name in ("force", "no_restart", "full"):
            return r.random() < 0.5
        if name in ("blob",):
            return v.bytes_()
        if name in ("count", "request_id", "pid", "exitcode", "size", "offset", "capacity"):
            return v.int_()
        if name in ("tasks",):
            return [self.spec() for _ in range(r.randint(0, 3))]
        if name == "spec":
            return self.spec()
        if name == "objects":
            return [(v.pick(objects, v.bytes_), v.serialized(objects)) for _ in range(r.randint(0, 2))]
        if name == "items":
            return [P.ObjectValue(v.pick(objects, v.bytes_), v.serialized(objects), v.int_())
                    for _ in range(r.randint(0, 2))]
        if name == "assignments":
            return [P.Assignment(v.pick(tasks, v.bytes_), v.str_(), v.bytes_(), None,
                                 v.serialized(), [], v.small_int()) for _ in range(r.randint(0, 2))]
        if name == "results":
            return [P.TaskResult(v.pick(tasks, v.bytes_),
                                 [v.serialized(objects) for _ in range(r.randint(0, 2))],
                                 v.float_()) for _ in range(r.randint(0, 2))]
        if name == "added":
            return [[v.pick(objects, v.bytes_), v.int_()] for _ in range(r.randint(0, 3))]
        if name == "sources":
            return [[v.str_(), v.str_()] for _ in range(r.randint(0, 2))]
        return v.str_()  # reason, name, namespace, what, level, message, arena

    def spec(self) -> P.TaskSpec:
        v, r, pools = self.v, self.v.rng, self.pools()
        actor = b""
        method = ""
        if pools["actors"] and r.random() < 0.2:
            actor, method = r.choice(pools["actors"]), r.choice(("m", "__init__", ""))
        deps = [v.pick(pools["objects"], v.bytes_) for _ in range(r.randint(0, 2))]
        return v.task_spec(v.pick(pools["tasks"], lambda: r.randbytes(16)), pools["functions"],
                           deps, pools["objects"], pools["node_ids"], actor, method)
