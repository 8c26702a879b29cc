"""The head's records: nodes, workers, tasks and objects as the head's parts keep them.

Plain slotted classes with no behaviour beyond what their fields mean, shared by the parts
that own them (membership: nodes and workers; the scheduler: tasks; the object directory:
objects) and read by the others. Small helpers on resource dicts live here too.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import _protocol as P
from .._resources import CPU, GPU, UNIT

if TYPE_CHECKING:
    from .actors import ActorRec

# task states
WAITING, READY, ASSIGNED, DONE, CANCELLED = range(5)


class NodeRec:
    __slots__ = ("node_id", "peer", "address", "hostname", "pid", "total", "avail", "workers",
                 "idle", "starting", "last_seen", "alive", "finished", "stats", "retiring",
                 "gone_workers", "transfer", "objects", "incarnation", "actor_workers",
                 "actor_queue", "gpus", "env_idle", "env_starting")

    def __init__(self, node_id: str, peer: bytes, info: dict, now: float) -> None:
        self.node_id = node_id
        self.peer = peer
        self.address = str(info.get("address", ""))
        self.hostname = str(info.get("hostname", ""))
        self.pid = int_field(info.get("pid"))
        self.total: dict[str, int] = dict(info.get("resources", {}))
        self.avail: dict[str, int] = dict(self.total)
        self.workers: dict[bytes, WorkerRec] = {}
        self.idle: list[WorkerRec] = []
        self.starting = max(0, int_field(info.get("prestart")))
        self.last_seen = now
        self.alive = True
        self.finished = 0
        self.stats: dict = {}
        self.retiring: set[str] = set()  # worker ids told to exit
        self.gone_workers: set[str] = set()  # exited before their Hello reached us
        self.transfer = str(info.get("transfer", ""))  # host:port other nodes pull objects from
        self.objects: set[bytes] = set()  # ids of stored objects it holds a copy of
        self.incarnation = int_field(info.get("incarnation"))  # +1 each time the agent joins again
        self.actor_workers: dict[bytes, WorkerRec] = {}  # out of the pool: one actor each
        self.actor_queue: deque[ActorRec] = deque()  # placed here, waiting for a new worker
        #: runtime environment -> its idle workers here (the default one's are ``idle``)
        self.env_idle: dict[str, list[WorkerRec]] = {}
        #: runtime environment -> its workers asked for and not joined yet (in ``starting`` too)
        self.env_starting: dict[str, int] = {}
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
                 "slow", "last_result", "gpu_alloc", "env")

    def __init__(self, peer: bytes, worker_id: str, node: NodeRec | None, pid: int, now: float,
                 incarnation: int = 0, env: str = "") -> None:
        self.peer = peer
        self.env = env  # the runtime environment it was started for ("": the default)
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


class Strategy(NamedTuple):
    """A task's scheduling strategy (``TaskSpec.strategy``, parsed)."""

    kind: str  # "DEFAULT", "SPREAD" or "NODE" (node affinity)
    node_id: str = ""  # NODE: the node
    soft: bool = False  # NODE: prefer that node, else run anywhere


DEFAULT = Strategy("DEFAULT")


def parse_strategy(text: str) -> Strategy:
    """"SPREAD", "node:ID" (must run there), "node?:ID" (prefer it); anything else: default
    (the client checked it: an unknown one from a misbehaving peer is placed as default)."""
    if text == "SPREAD":
        return Strategy("SPREAD")
    if text.startswith(("node:", "node?:")):
        return Strategy("NODE", text.split(":", 1)[1], text.startswith("node?:"))
    return DEFAULT


class TaskRec:
    __slots__ = ("spec", "owner", "state", "waiting", "worker", "retries_left", "shape", "queued",
                 "dep_failures", "started", "credit", "held", "strategy", "job")

    def __init__(self, spec: P.TaskSpec, owner: bytes, job: bytes = b"") -> None:
        self.spec = spec
        self.owner = owner
        #: the driver whose job it is part of (its own, or that of the task that submitted
        #: it): where its output is shown; b"" if unknown
        self.job = job
        self.state = WAITING
        self.waiting = 0
        self.worker: WorkerRec | None = None
        self.retries_left = spec.max_retries
        self.shape = tuple(sorted(spec.resources.items()))
        if spec.strategy:  # one queue per strategy too: a queue's tasks are placed alike
            self.shape += (("strategy", spec.strategy),)
        if spec.runtime_env:  # and per runtime environment: its workers are its own
            self.shape += (("env", spec.runtime_env),)
        #: its scheduling strategy, read once here (the scheduler reads it every round)
        self.strategy = parse_strategy(spec.strategy) if spec.strategy else DEFAULT
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


def is_lost(value: P.SerializedObject | None) -> bool:
    return (value is not None and value.flags == P.SerializedObject.SYSTEM_ERROR
            and value.read_system_error()[0] == "ObjectLostError")


def pop_front(queue: deque[TaskRec]) -> TaskRec:
    t = queue.popleft()
    t.queued = False
    return t


def require(ok: bool, message: str) -> None:
    # not `assert`: check_invariants() must keep checking under `python -O`
    if not ok:
        raise AssertionError(message)


def add_to(into: dict[str, int], amounts: dict[str, int]) -> None:
    for k, v in amounts.items():
        into[k] = into.get(k, 0) + v


def sub_from(into: dict[str, int], amounts: dict[str, int]) -> None:
    for k, v in amounts.items():
        into[k] = into.get(k, 0) - v


def exit_cause(exitcode: int) -> str:
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


def int_field(value: Any) -> int:
    """An integer field of a peer's Hello info (0 if missing or of another type)."""
    return value if type(value) is int else 0



def queued_load(n: NodeRec) -> int:
    """Tasks on a node's workers (running or queued there), for SPREAD."""
    return sum(len(w.assigned) for w in n.workers.values())


def idle_pool(node: NodeRec, env: str) -> list[WorkerRec]:
    """The list of a node's idle workers for runtime environment ``env`` (made if none)."""
    if not env:
        return node.idle
    pool = node.env_idle.get(env)
    if pool is None:
        pool = node.env_idle[env] = []
    return pool
