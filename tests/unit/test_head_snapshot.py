"""The head's snapshot and what it folds from the event stream (_head/snapshot.py), driven
through the scripted head harness: no processes, sockets or clock."""

from __future__ import annotations

import json

from taskmesh import _protocol as P
from taskmesh._head import snapshot as S
from taskmesh._head.events import EventLog
from taskmesh._head.snapshot import Histogram, Snapshotter, retry_cause, shape_label
from taskmesh._resources import UNIT

from ..support.head import Cluster, task_error


def _run(c: Cluster, fid: bytes, n: int, *, duration: float = 0.5, fail: int = 0) -> None:
    """Run ``n`` tasks one after the other; the first ``fail`` raise."""
    for i in range(n):
        [t] = c.submit(fid)
        w = c.drain().assigned_to()[t]
        c.finish(w, t, *([task_error()] if i < fail else []), duration=duration)
        c.drain()


def test_snapshot_counts_tasks_nodes_and_drivers():
    c = Cluster()
    c.add_node("n1", cpus=2, address="10.0.0.7")
    c.heartbeat("n1")
    fid = c.register()
    _run(c, fid, 2, fail=1)
    c.submit(fid, 3)  # two run, one waits in the queue
    c.drain()
    snap = Snapshotter().build(c.state, c.now)
    assert set(S.snapshot_fields()) <= set(snap)
    assert snap["tasks"]["finished"] == 2 and snap["tasks"]["failed"] == 1
    assert snap["tasks"]["running"] + snap["tasks"]["queued"] == 3
    assert snap["drivers"] == 1
    [node] = snap["nodes"]
    assert node["node_id"] == "n1" and node["ip"] == "10.0.0.7" and node["alive"]
    assert node["cpus"] == 2.0 and node["stats"] == {"cpu_percent": 1.0}
    assert "tasks_by_function" not in snap
    json.dumps(snap)  # plain values only: it crosses to another thread as it is


def test_snapshot_is_a_copy_that_later_heartbeats_do_not_change():
    c = Cluster()
    c.add_node("n1")
    c.heartbeat("n1")
    snap = Snapshotter().build(c.state, c.now)
    c.send(c.node_peer["n1"], P.Heartbeat({"cpu_percent": 99.0}))
    assert snap["nodes"][0]["stats"] == {"cpu_percent": 1.0}


def test_counts_by_function_are_passed_through_when_given():
    c = Cluster()
    counts = {"mod.f": {"RUNNING": 2, "FINISHED": 5}}
    snap = Snapshotter().build(c.state, c.now, by_function=counts)
    assert snap["tasks_by_function"] == counts


def test_scheduling_latency_is_from_queued_to_started_and_run_time_from_the_worker():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    snapshotter = Snapshotter()
    c.submit(fid, 2)  # one starts at once, the other waits for the worker
    first = c.drain().assigned_to()
    c.now += 2.0
    [(t1, w)] = first.items()
    c.finish(w, t1, duration=0.3)
    second = c.drain().assigned_to()
    [(t2, w2)] = second.items()
    c.finish(w2, t2, duration=7.0)
    c.drain()
    assert snapshotter.fold(c.state) > 0
    lat = snapshotter.latency
    assert lat.count == 2 and abs(lat.sum - 2.0) < 1e-9  # 0 s, then 2 s in the queue
    run = snapshotter.run_time
    assert run.count == 2 and abs(run.sum - 7.3) < 1e-9
    assert run.counts[S.RUN_TIME_BUCKETS.index(0.5)] == 1  # 0.3 s: the (0.1, 0.5] bucket
    assert run.counts[S.RUN_TIME_BUCKETS.index(10.0)] == 1  # 7 s: the (5, 10] bucket
    assert snapshotter.fold(c.state) == 0  # nothing new: nothing counted twice


def test_failures_by_error_kind_and_retries_by_cause():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    snapshotter = Snapshotter()
    _run(c, fid, 2, fail=2)
    [t] = c.submit(fid)
    w = c.drain().assigned_to()[t]
    c.exited(w)  # the worker died: the task runs again
    c.drain()
    snapshotter.fold(c.state)
    assert snapshotter.failures == {"TaskError": 2}
    assert snapshotter.retries == {"worker_died": 1}


def test_events_that_left_the_ring_are_counted_as_missed_not_guessed():
    c = Cluster(event_ring=10)
    c.add_node("n1", cpus=1)
    fid = c.register()
    snapshotter = Snapshotter()
    snapshotter.fold(c.state)
    for _ in range(10):
        _run(c, fid, 1)
    snapshotter.fold(c.state)
    assert snapshotter.events_missed > 0
    assert snapshotter.run_time.count < 10


def test_a_first_fold_after_a_quiet_spell_counts_nothing_as_missed():
    c = Cluster(event_ring=10)
    c.add_node("n1", cpus=1)
    fid = c.register()
    for _ in range(10):
        _run(c, fid, 1)
    snapshotter = Snapshotter()
    snapshotter.fold(c.state, count_missed=False)
    assert snapshotter.events_missed == 0


def test_queued_tasks_remembered_are_bounded(monkeypatch):
    monkeypatch.setattr(S, "MAX_PENDING", 3)
    c = Cluster()
    fid = c.register()
    snapshotter = Snapshotter()
    c.submit(fid, 5)  # no node: all wait in the queue
    c.drain()
    snapshotter.fold(c.state)
    assert len(snapshotter._ready) == 3 and snapshotter.unmeasured == 2


def test_queue_lengths_by_resource_shape():
    c = Cluster()
    fid = c.register()
    c.submit(fid, 2)
    c.submit(fid, 1, cpus=2)
    c.drain()
    snap = Snapshotter().build(c.state, c.now)
    assert snap["queues"] == {"CPU=1": 2, "CPU=2": 1}
    assert snap["tasks"]["queued"] == 3


def test_shape_labels():
    assert shape_label((("CPU", UNIT), ("GPU", UNIT // 2))) == "CPU=1,GPU=0.5"
    assert shape_label((("CPU", UNIT), ("strategy", "SPREAD"))) == "CPU=1,strategy=SPREAD"
    assert shape_label(()) == "none"


def test_retry_causes_have_few_values_whatever_the_reason_says():
    assert retry_cause("it raised") == "raised"
    assert retry_cause("an input could not be read") == "input_unreadable"
    assert retry_cause("the worker process (pid 4242) on node ab12 was killed by "
                       "signal 9") == "worker_died"
    assert retry_cause("node ab12 (10.0.0.3) was lost (no heartbeat for 1.5 s)") == "node_lost"
    assert retry_cause("its actor's worker exited") == "actor_died"
    assert retry_cause("something new") == "other"


def test_histogram_buckets_take_their_upper_edge():
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 3.0):
        h.observe(v)
    assert h.as_dict() == {"edges": [1.0, 2.0], "counts": [2, 1, 1], "sum": 6.0, "count": 4}


def test_info_dashboard_answers_what_the_shell_set():
    c = Cluster()
    assert c.info("dashboard") == {}
    c.state.shell = {"dashboard": {"host": "127.0.0.1", "port": 8265}}
    assert c.info("dashboard") == {"host": "127.0.0.1", "port": 8265}


def test_raw_since_gives_the_kept_events_and_what_was_missed():
    events = EventLog(4)
    for i in range(6):
        events.add(("TaskQueued", float(i), b"t%d" % i))
    seq, raws, missed = events.raw_since(0)
    assert seq == 6 and missed == 2 and [r[1] for r in raws] == [2.0, 3.0, 4.0, 5.0]
    assert events.raw_since(6) == (6, [], 0)


def test_missed_events_forget_the_queued_tasks_so_measuring_goes_on(monkeypatch):
    monkeypatch.setattr(S, "MAX_PENDING", 3)
    c = Cluster(event_ring=4)
    fid = c.register()
    snapshotter = Snapshotter()
    c.submit(fid, 3)  # no node: they wait, remembered
    c.drain()
    snapshotter.fold(c.state)
    assert len(snapshotter._ready) == 3
    c.add_node("n1", cpus=1)  # their starts and more leave the ring unread
    assigned = c.drain().assigned_to()
    while assigned:
        [(t, w)] = assigned.items()
        c.finish(w, t)
        assigned = c.drain().assigned_to()
    snapshotter.fold(c.state)
    assert snapshotter.events_missed > 0 and len(snapshotter._ready) < 3
