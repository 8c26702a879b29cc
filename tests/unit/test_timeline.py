"""The trace ``taskmesh.timeline()`` draws from the head's events (``_timeline.py``)."""

from __future__ import annotations

from taskmesh._timeline import trace_events

A, B = b"a" * 16, b"b" * 16


def test_a_slice_per_run_on_its_workers_row_named_by_its_function():
    events = [
        ["TaskSubmitted", 10.0, A, "mod.f", b"", 0, b"D1", b"", 120],
        ["TaskSubmitted", 10.0, B, "mod.g", b"", 1, b"D1", b"", 4096],
        ["TaskStarted", 10.1, A, "n1", "n1-1"],
        ["TaskRetried", 10.6, A, "the worker process died"],
        ["TaskStarted", 10.7, A, "n2", "n2-1"],
        ["TaskFinished", 11.0, A, 0.25],  # ran 0.25 s, as its worker measured
        ["TaskQueued", 11.0, B],
        ["TaskStarted", 11.1, B, "n2", "n2-1"],
        ["TaskFailed", 11.3, B, "TaskError"],  # no run time: from its start
        ["TaskCancelled", 11.4, b"c" * 16, "cancelled"],  # never started: no slice
    ]
    trace = trace_events(events)
    slices = [e for e in trace if e["ph"] == "X"]
    assert [(e["name"], e["args"]["state"]) for e in slices] == [
        ("mod.f", "RETRIED"), ("mod.f", "FINISHED"), ("mod.g", "FAILED")]
    retried, finished, failed = slices
    assert (retried["ts"], retried["dur"]) == (100_000.0, 500_000.0)  # 10.1 .. 10.6 s
    assert (finished["ts"], finished["dur"]) == (750_000.0, 250_000.0)  # 11.0 - 0.25 .. 11.0
    assert failed["args"]["error"] == "TaskError" and failed["dur"] == 200_000.0
    assert [e["args"]["args_bytes"] for e in slices] == [120, 120, 4096]
    assert retried["pid"] != finished["pid"] and finished["tid"] == failed["tid"]
    rows = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace if e["name"] == "thread_name"}
    assert sorted(rows.values()) == ["worker n1-1", "worker n2-1"]
    nodes = sorted(e["args"]["name"] for e in trace if e["name"] == "process_name")
    assert nodes == ["node n1", "node n2"]


def test_no_events_no_trace():
    assert trace_events([]) == []
