"""The head's snapshot as Prometheus metrics: families built at scrape time, nothing kept.

    snapshot (plain dict, _head/snapshot.py) ──SnapshotCollector.collect()──▶ metric families
                                              ──render(snapshot, accept)──▶ text exposition

``prometheus_client`` writes the text format (or OpenMetrics, if the scraper asks for it);
its custom-collector interface fits a value that is built elsewhere: this module keeps no
counters of its own and reads nothing but the snapshot it is given. Every name starts with
``taskmesh_``; labels stay few (state, cause, resource shape, node); node series are those of
nodes alive when the snapshot was built. docs/monitoring.md lists them all.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["SnapshotCollector", "render", "NODE_STATS"]

#: per-node gauges and counters from the node's heartbeat stats: key, metric, kind, help
NODE_STATS: tuple[tuple[str, str, str, str], ...] = (
    ("cpu_percent", "node_cpu_percent", "gauge",
     "CPU use of the whole machine, percent of all its cores (psutil)"),
    ("mem_used", "node_memory_used_bytes", "gauge", "Memory in use on the machine (psutil)"),
    ("mem_total", "node_memory_total_bytes", "gauge", "Memory of the machine (psutil)"),
    ("rss", "node_agent_rss_bytes", "gauge", "Resident memory of the node agent process"),
    ("load", "node_load1", "gauge", "1-minute load average of the machine"),
    ("store_capacity", "node_store_capacity_bytes", "gauge", "Object store arena size"),
    ("store_used_bytes", "node_store_used_bytes", "gauge",
     "Object store bytes in shared memory"),
    ("store_pinned_bytes", "node_store_pinned_bytes", "gauge",
     "Object store bytes pinned by readers"),
    ("store_disk_bytes", "node_store_spilled_bytes", "gauge",
     "Object bytes spilled to disk"),
    ("store_num_objects", "node_store_objects", "gauge", "Objects in the node's store"),
    ("store_total_spills", "node_store_spills", "counter", "Objects spilled to disk"),
    ("store_total_restores", "node_store_restores", "counter", "Objects restored from disk"),
    ("store_transfer_bytes_sent", "node_transfer_sent_bytes", "counter",
     "Bytes the node's store sent to other nodes"),
    ("store_transfer_bytes_received", "node_transfer_received_bytes", "counter",
     "Bytes the node's store received from other nodes"),
    ("store_transfer_fetches_failed", "node_transfer_fetches_failed", "counter",
     "Fetches from other nodes for which every source failed"),
)


#: functions shown by name in taskmesh_tasks_by_function (the most tasks first); the
#: others are summed as function="other", so a program with many names stays cheap to store
MAX_FUNCTIONS = 100


def _top_functions(by_function: dict) -> list[tuple[str, dict]]:
    ranked = sorted(by_function.items(), key=lambda kv: (-sum(kv[1].values()), str(kv[0])))
    if len(ranked) <= MAX_FUNCTIONS:
        return ranked
    other: dict[str, int] = {}
    for _, states in ranked[MAX_FUNCTIONS - 1:]:
        for state, n in states.items():
            other[state] = other.get(state, 0) + n
    return [*ranked[:MAX_FUNCTIONS - 1], ("other", other)]


def _gauge(name: str, doc: str, value: float, labels: dict | None = None) -> Metric:
    g = GaugeMetricFamily(f"taskmesh_{name}", doc, labels=list(labels or ()))
    g.add_metric(list((labels or {}).values()), value)
    return g


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(f"taskmesh_{name}", doc, value=value)


def _by(kind: type, name: str, doc: str, label: str, values: dict) -> Metric:
    family = kind(f"taskmesh_{name}", doc, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([str(key)], n)
    return family


def _histogram(name: str, doc: str, h: dict) -> Metric:
    buckets, seen = [], 0
    for edge, n in zip([*map(repr, map(float, h["edges"])), "+Inf"], h["counts"]):
        seen += n
        buckets.append((edge, seen))
    return HistogramMetricFamily(f"taskmesh_{name}", doc, buckets=buckets, sum_value=h["sum"])


class SnapshotCollector(Collector):
    """A ``prometheus_client`` collector of one snapshot (a registry asks it at render)."""

    def __init__(self, snapshot: dict, extra: dict | None = None) -> None:
        self.snapshot = snapshot
        #: the HTTP server's own figures (``refused_requests``), if any
        self.extra = extra or {}

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        tasks = s["tasks"]
        yield _by(GaugeMetricFamily, "tasks", "Unfinished tasks in the head's task table, "
                  "by state", "state", {"queued": tasks["queued"],
                                        "waiting_for_inputs": tasks["waiting_for_deps"],
                                        "running": tasks["running"]})
        yield _counter("tasks_finished", "Tasks that ended since the head started, "
                       "whichever way (failed ones included)", tasks["finished"])
        yield _counter("tasks_failed", "Tasks that ended with an error since the head "
                       "started (raised, lost, cancelled)", tasks["failed"])
        by_function = s.get("tasks_by_function")
        if by_function is not None:
            family = GaugeMetricFamily("taskmesh_tasks_by_function", "Tasks by function name "
                                       "and state (the head's state view; FINISHED and FAILED "
                                       "since start)", labels=["function", "state"])
            for fn, states in _top_functions(by_function):
                for state, n in sorted(states.items()):
                    family.add_metric([str(fn), str(state)], n)
            yield family
        yield _by(GaugeMetricFamily, "queue_length", "Entries in the head's ready queues, by "
                  "resource shape", "shape", s["queues"])
        yield _histogram("task_scheduling_latency_seconds", "From when a task could run (its "
                         "inputs exist) to when a worker got it", s["latency"])
        yield _histogram("task_run_seconds", "Run time of finished tasks, as their workers "
                         "measured it", s["run_time"])
        yield _by(CounterMetricFamily, "task_retries", "Tasks run again, by cause", "cause",
                  s["retries"])
        yield _by(CounterMetricFamily, "task_failures", "Tasks that failed, by error kind",
                  "error", s["failures"])
        yield _counter("metrics_events_missed", "Task events that left the head's event ring "
                       "before the metrics read them (histograms are a sample then)",
                       s["events_missed"])
        yield _by(GaugeMetricFamily, "actors", "Actors by state", "state", s["actors"])
        yield _gauge("drivers", "Drivers connected to the head", s["drivers"])
        yield _gauge("objects", "Objects the head's directory knows", s["objects"])
        nodes = s["nodes"]
        yield _by(GaugeMetricFamily, "nodes", "Nodes the head knows, alive or dead", "state",
                  {"alive": sum(1 for n in nodes if n["alive"]),
                   "dead": sum(1 for n in nodes if not n["alive"])})
        yield from self._nodes([n for n in nodes if n["alive"]])
        lag = s["loop_lag"] or {}
        family = GaugeMetricFamily("taskmesh_head_loop_lag_seconds", "How long the oldest "
                                   "message of a turn of the head's loop waited to be handled "
                                   "(since start)", labels=["quantile"])
        top = lag.get("max_ms", 0.0)
        for q, key in (("0.5", "p50_ms"), ("0.99", "p99_ms"), ("1", "max_ms")):
            # (a percentile is its bucket's upper edge: never shown above the maximum)
            family.add_metric([q], min(lag.get(key, 0.0), top) / 1e3)
        yield family
        yield _counter("head_loop_turns", "Turns of the head's loop that handled messages",
                       lag.get("messages", 0))
        yield _by(CounterMetricFamily, "head_dropped_messages", "Messages the head dropped, by "
                  "reason", "reason", s["dropped"])
        transport = s.get("transport") or {}
        yield _counter("head_refused_connections", "Connections the head refused (wrong "
                       "secret, other user)", transport.get("refused_connections", 0))
        if "refused_requests" in self.extra:
            yield _by(CounterMetricFamily, "dashboard_refused_requests", "HTTP requests "
                      "refused (missing or wrong token, method)", "reason",
                      self.extra["refused_requests"])
        if "age_s" in self.extra:
            yield _gauge("snapshot_age_seconds", "Age of the head snapshot these metrics "
                         "come from", self.extra["age_s"])

    def _nodes(self, nodes: list[dict]) -> Iterator[Metric]:
        labels = ["node_id", "ip"]

        def family(kind: type, name: str, doc: str) -> Any:
            return kind(f"taskmesh_{name}", doc, labels=labels)

        per_node = [
            (GaugeMetricFamily, "node_cpus", "CPUs the node offers to tasks", "cpus"),
            (GaugeMetricFamily, "node_cpus_in_use", "CPUs leased to running tasks",
             "cpus_in_use"),
            (GaugeMetricFamily, "node_workers", "Worker processes of the node", "workers"),
            (GaugeMetricFamily, "node_tasks_running", "Tasks running on the node",
             "tasks_running"),
            (CounterMetricFamily, "node_tasks_finished", "Tasks that ended on the node",
             "tasks_finished"),
        ]
        for kind, name, doc, key in per_node:
            f = family(kind, name, doc)
            for n in nodes:
                f.add_metric([n["node_id"], n["ip"]], n[key])
            yield f
        for key, name, kind, doc in NODE_STATS:
            f = family(GaugeMetricFamily if kind == "gauge" else CounterMetricFamily, name, doc)
            for n in nodes:
                value = n["stats"].get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    f.add_metric([n["node_id"], n["ip"]], value)
            yield f


def render(snapshot: dict, accept: str = "", extra: dict | None = None) -> tuple[bytes, str]:
    """The exposition of one snapshot in the format ``accept`` asks for (the text format by
    default, OpenMetrics if asked): (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, extra))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
