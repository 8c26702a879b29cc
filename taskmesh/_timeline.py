"""``taskmesh.timeline()``: the head's recent task events as a Chrome trace (also read by
Perfetto, https://ui.perfetto.dev, and chrome://tracing).

    head ring ──InfoRequest("events:<seq>"), in pages──▶ trace_events(events) ──▶ JSON

One process row per node, one thread row per worker (named by metadata events), one
complete ("X") slice per task that ran: from its end minus the run time its worker measured
to its end, named after its function or method, with its id, the size of its arguments and
how it ended. The end is
when the head heard of it, a few milliseconds after the worker's (results are batched). A
task that was retried has a slice per run that ended. Only what the head's ring still holds
(``Config.event_ring`` events) can be drawn.
"""

from __future__ import annotations

from typing import Any

__all__ = ["trace_events"]

_ENDS = {"TaskFinished": "FINISHED", "TaskFailed": "FAILED", "TaskCancelled": "CANCELLED",
         "TaskRetried": "RETRIED"}  # (a retried run ends too: the task runs again)


def trace_events(events: list[list]) -> list[dict[str, Any]]:
    """Chrome trace events for the head's events (``[kind, at, field, ...]`` lists, in order)."""
    names: dict[bytes, tuple[str, int]] = {}  # task id -> (name, arguments' bytes)
    started: dict[bytes, tuple[float, str, str]] = {}  # task id -> (at, node, worker)
    slices: list[dict[str, Any]] = []
    pids: dict[str, int] = {}
    tids: dict[tuple[str, str], int] = {}
    t0 = events[0][1] if events else 0.0
    for e in events:
        kind = e[0]
        if kind == "TaskSubmitted":
            names[e[2]] = (e[3], e[8])
        elif kind == "TaskStarted":
            started[e[2]] = (e[1], e[3], e[4])
        elif kind in _ENDS:
            at, task_id = e[1], e[2]
            run = started.pop(task_id, None)
            if run is None:  # it never reached a worker (or started before the ring's first)
                continue
            ran = e[3] if kind == "TaskFinished" and e[3] > 0 else at - run[0]
            node, worker = run[1], run[2]
            pid = pids.setdefault(node, len(pids) + 1)
            tid = tids.setdefault((node, worker), len(tids) + 1)
            name, size = names.get(task_id, ("?", None))
            args: dict[str, Any] = {"task_id": task_id.hex(), "state": _ENDS[kind]}
            if size is not None:
                args["args_bytes"] = size
            if kind != "TaskFinished":
                args["error" if kind == "TaskFailed" else "reason"] = e[3]
            slices.append({"name": name, "cat": "task", "ph": "X",
                           "pid": pid, "tid": tid, "ts": round((at - ran - t0) * 1e6, 1),
                           "dur": round(ran * 1e6, 1), "args": args})
    meta: list[dict[str, Any]] = []
    for node, pid in pids.items():
        meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                     "args": {"name": f"node {node}"}})
    for (node, worker), tid in tids.items():
        meta.append({"name": "thread_name", "ph": "M", "pid": pids[node], "tid": tid,
                     "args": {"name": f"worker {worker}"}})
    return meta + slices
