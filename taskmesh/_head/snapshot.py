"""The head's published snapshot: what metrics and the dashboard read, built off the hot path.

    HeadState ──status figures, nodes' heartbeat stats──▶ Snapshotter.build(state, now) ──▶ plain dict
    EventLog ──raw_since(seq): events since the last fold──▶ Snapshotter.fold()  (histograms,
                                                            retries and failures by cause)

The head's loop calls ``fold`` every ``FOLD_S`` while somebody scraped recently, and ``build``
when a reader asks for a snapshot (at most one per ``MAX_AGE_S``, see ``_dashboard/server.py``):
nothing here runs per task. A snapshot is a new dict of plain values (str, int, float, lists
and dicts of them) that nobody changes once built, so another thread may read it while the
loop goes on; it holds no record of the head's parts.

Histograms come from the event stream rather than from counters on the task path: a task's
``TaskSubmitted`` (with no inputs to wait for) or ``TaskQueued`` says when it could run, its
``TaskStarted`` when a worker got it (scheduling latency), and its ``TaskFinished`` carries
the run time its worker measured. The ring keeps the last ``Config.event_ring`` events: events
that fell out of it before a fold are counted (``events_missed``), not guessed; under a flood
faster than the ring over ``FOLD_S`` the histograms are a sample of the tasks, while the
task totals (from the task table) stay exact.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from .._resources import CPU, UNIT, from_units
from .records import READY

if TYPE_CHECKING:
    from .state import HeadState

__all__ = ["Snapshotter", "Histogram", "retry_cause", "LATENCY_BUCKETS", "RUN_TIME_BUCKETS",
           "FOLD_S", "MAX_AGE_S"]

#: the loop folds new events this often while metrics are read
FOLD_S = 0.5
#: a snapshot younger than this is served again rather than built anew
MAX_AGE_S = 0.5
#: tasks queued and not started yet whose queue time is remembered (a flood of a million
#: queued tasks must not make a million entries here; beyond, tasks go unmeasured)
MAX_PENDING = 100_000
#: queue lengths are shown for at most this many resource shapes (the rest: "other")
MAX_SHAPES = 20

#: upper bucket edges in seconds (the last bucket, +Inf, is implied)
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                      0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RUN_TIME_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
                                       30.0, 60.0, 300.0, 1800.0)


class Histogram:
    """Counts of observations per bucket (upper edges ``edges``, then +Inf), their sum and
    number: what a Prometheus histogram needs."""

    __slots__ = ("edges", "counts", "sum", "count")

    def __init__(self, edges: tuple[float, ...]) -> None:
        self.edges = edges
        self.counts = [0] * (len(edges) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.edges, value)] += 1
        self.sum += value
        self.count += 1

    def as_dict(self) -> dict:
        """``{"edges", "counts" (per bucket, +Inf last), "sum", "count"}``, a copy."""
        return {"edges": list(self.edges), "counts": list(self.counts), "sum": self.sum,
                "count": self.count}


def retry_cause(reason: str) -> str:
    """A low-cardinality cause for a TaskRetried reason (which may name nodes, pids, exit
    codes): ``raised``, ``input_unreadable``, ``worker_died``, ``node_lost``, ``actor_died``
    or ``other``."""
    if reason == "it raised":
        return "raised"
    if reason.startswith("an input could not be read"):
        return "input_unreadable"
    if reason.startswith("the worker process"):
        return "worker_died"
    if reason.startswith("node "):
        return "node_lost"
    if "actor" in reason:
        return "actor_died"
    return "other"


def shape_label(shape: tuple) -> str:
    """A queue's resource shape as a label: ``CPU=1,GPU=0.5`` (and ``strategy=...``)."""
    parts = []
    for name, amount in shape:
        if name == "strategy":
            parts.append(f"strategy={amount}")
        else:
            parts.append(f"{name}={from_units(amount):g}" if isinstance(amount, int) else
                         f"{name}={amount}")
    return ",".join(parts) or "none"


class Snapshotter:
    """Folds the event stream into histograms and counts by cause, and builds snapshots.

    It reads the head's parts only inside ``build`` and ``fold``, which the head's loop
    calls between turns (never from another thread)."""

    def __init__(self) -> None:
        self.seq = 0  # the last event folded
        self.latency = Histogram(LATENCY_BUCKETS)
        self.run_time = Histogram(RUN_TIME_BUCKETS)
        self.retries: dict[str, int] = {}  # cause -> tasks retried
        self.failures: dict[str, int] = {}  # error kind -> tasks failed
        self.events_missed = 0  # events that left the ring before they were folded
        self.unmeasured = 0  # queued tasks not measured (MAX_PENDING reached)
        self._ready: dict[bytes, float] = {}  # task id -> when it could run, until it starts
        self.builds = 0

    def fold(self, state: "HeadState", count_missed: bool = True) -> int:
        """Take in the events recorded since the last fold; return how many. Without
        ``count_missed`` (the first fold after nobody read the metrics for a while), events
        that left the ring meanwhile are not counted as missed: nobody was watching."""
        self.seq, raws, missed = state.events.raw_since(self.seq)
        if missed:
            if count_missed:
                self.events_missed += missed
            # the starts of tasks remembered may be among the missed: forget them all, or
            # they would fill _ready for good
            self._ready.clear()
        ready, latency, run_time = self._ready, self.latency, self.run_time
        for raw in raws:
            kind = raw[0]
            if kind == "TaskStarted":
                t0 = ready.pop(raw[2], None)
                if t0 is not None:
                    latency.observe(max(0.0, raw[1] - t0))
            elif kind == "TaskFinished":
                run_time.observe(raw[3])
            elif kind == "TaskSubmitted":
                if raw[5] == 0:  # queued at once
                    self._queued(raw[2], raw[1])
            elif kind == "TaskQueued":
                self._queued(raw[2], raw[1])
            elif kind == "TaskRetried":
                cause = retry_cause(raw[3])
                self.retries[cause] = self.retries.get(cause, 0) + 1
                self._queued(raw[2], raw[1])
            elif kind == "TaskFailed":
                ready.pop(raw[2], None)
                self.failures[raw[3]] = self.failures.get(raw[3], 0) + 1
            elif kind == "TaskCancelled":
                ready.pop(raw[2], None)
                self.failures["TaskCancelledError"] = self.failures.get("TaskCancelledError", 0) + 1
        return len(raws)

    def _queued(self, task_id: bytes, at: float) -> None:
        ready = self._ready
        if len(ready) < MAX_PENDING or task_id in ready:
            ready[task_id] = at
        else:
            self.unmeasured += 1

    def build(self, state: "HeadState", now: float, by_function: dict | None = None) -> dict:
        """A snapshot of the cluster (folding the events first). ``by_function``: task counts
        by function name and state, ``{name: {state: n}}``, where the head keeps them (the
        state API's view); left out when None."""
        self.fold(state)
        self.builds += 1
        status = state.info("status")
        nodes = []
        # (status lists the nodes in the same order, each as node_info shows it)
        for n, info in zip(state.members.nodes.values(), status["nodes"]):
            nodes.append({
                "node_id": n.node_id, "ip": n.address, "hostname": n.hostname,
                "alive": n.alive, "cpus": n.total.get(CPU, 0) / UNIT,
                "cpus_in_use": info["CPUsInUse"] / UNIT, "workers": info["Workers"],
                "actors": info["Actors"], "tasks_running": info["TasksRunning"],
                "tasks_pipelined": info["TasksQueued"], "tasks_finished": n.finished,
                "stats": dict(n.stats),  # (replaced, never changed, by each heartbeat)
            })
        queues: dict[str, int] = {}
        for shape, queue in state.scheduler.queues.items():
            label = shape_label(shape) if len(queues) < MAX_SHAPES else "other"
            # (a queue may hold entries of tasks taken since: status counts the ready ones)
            queues[label] = queues.get(label, 0) + sum(1 for t in queue if t.state == READY)
        snap = {
            "at": now,
            "tasks": dict(status["tasks"], cancelled=state.table.cancelled),
            "queues": queues,
            "latency": self.latency.as_dict(),
            "run_time": self.run_time.as_dict(),
            "retries": dict(self.retries),
            "failures": dict(self.failures),
            "events_missed": self.events_missed,
            "nodes": nodes,
            "actors": status["actors"],
            "drivers": status["drivers"],
            "objects": status["objects"],
            "loop_lag": status["loop_lag"],
            "dropped": status["dropped"],
            "transport": status["transport"],
        }
        if by_function is not None:
            snap["tasks_by_function"] = by_function
        return snap


def snapshot_fields() -> tuple[str, ...]:
    """The keys every snapshot has (``tasks_by_function`` is optional)."""
    return ("at", "tasks", "queues", "latency", "run_time", "retries", "failures",
            "events_missed", "nodes", "actors", "drivers", "objects", "loop_lag", "dropped",
            "transport")
