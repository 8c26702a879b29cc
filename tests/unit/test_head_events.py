"""The head's event stream: which events a task, an actor, an object, a node and a driver
produce, the counters, and reading the ring from a sequence number."""

from __future__ import annotations

import pytest

from taskmesh import _protocol as P
from taskmesh._head import events as E

from ..support.head import Actors, Cluster, ret, started, stored, task_error


def events_of(c: Cluster) -> list:
    """Every event the ring holds, typed."""
    return c.state.events.since(0, limit=10**6)[1]


def kinds(c: Cluster, of: bytes | str | None = None) -> list[str]:
    """Names of the events in the ring, optionally only those about one id."""
    out = []
    for e in events_of(c):
        ids = [getattr(e, f, None) for f in ("task_id", "object_id", "actor_id", "node_id", "peer")]
        if of is None or of in ids:
            out.append(type(e).__name__)
    return out


def test_a_task_is_submitted_queued_started_and_finished_with_its_node_and_worker():
    c = Cluster()
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    c.now = 5.0
    [t] = c.submit(fid)
    c.drain()
    assert len(c.state.table.tasks) == 1
    c.now = 6.0
    c.finish(w, t, duration=0.75)
    # its inputs exist: its TaskSubmitted says it is queued (no TaskQueued of its own)
    assert kinds(c, t) == ["TaskSubmitted", "TaskStarted", "TaskFinished"]
    submitted, started, finished = [e for e in events_of(c) if getattr(e, "task_id", None) == t]
    assert submitted == E.TaskSubmitted(5.0, t, "mod.f", b"", 0, c.driver, b"",
                                        len(b"args"))
    assert (started.node_id, started.worker_id) == ("n1", c.worker_info[w][1])
    assert finished == E.TaskFinished(6.0, t, 0.75)
    assert len(c.state.table.tasks) == 0 and c.state.table.finished == 1
    assert c.state.events.kept_counts()["TaskSubmitted"] == 1
    assert c.state.events.kept_counts()["TaskFinished"] == 1


def test_the_unfinished_count_follows_tasks_waiting_for_inputs_and_for_a_worker():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    [first, second] = c.submit(fid, 2)
    [child] = c.submit(fid, deps=[ret(first)])
    c.drain()
    # one runs, one waits for a worker, one waits for its input
    status = c.state.info("status")
    assert status["tasks"] == {"running": 1, "queued": 1, "waiting_for_deps": 1,
                               "finished": 0, "failed": 0}
    assert status["stream"]["seq"] == c.state.events.seq and status["stream"]["ring"] == 10_000
    counts = c.state.events.kept_counts()
    assert counts == status["stream"]["kept"]
    assert (counts["TaskSubmitted"], counts["TaskStarted"]) == (3, 1)
    assert kinds(c, child) == ["TaskSubmitted"]
    assert [e.waiting for e in events_of(c) if type(e) is E.TaskSubmitted] == [0, 0, 1]
    c.state.check_invariants()
    # its input comes: it is queued, then runs once a worker is free
    c.finish(c.node_workers["n1"][0], first)
    c.drain()
    assert kinds(c, child)[:2] == ["TaskSubmitted", "TaskQueued"]
    c.state.check_invariants()


def test_a_raising_task_is_retried_then_fails_and_says_why():
    c = Cluster()
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    [t] = c.submit(fid, max_retries=1, retry_exceptions=True)
    c.drain()
    c.finish(w, t, task_error())
    c.drain()
    c.finish(w, t, task_error())
    assert kinds(c, t) == ["TaskSubmitted", "TaskStarted", "TaskRetried", "TaskStarted",
                           "TaskFailed"]
    failed = [e for e in events_of(c) if type(e) is E.TaskFailed]
    assert [f.error for f in failed] == ["TaskError"]
    assert c.state.events.kept_counts()["TaskFailed"] == 1 == c.state.table.failed


def test_a_task_lost_with_its_worker_is_retried_and_one_out_of_retries_fails_naming_the_error():
    c = Cluster()
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    [t] = c.submit(fid, max_retries=0)
    c.drain()
    c.exited(w, -9)
    [failed] = [e for e in events_of(c) if type(e) is E.TaskFailed]
    assert failed.task_id == t and failed.error == "WorkerCrashedError"


def test_cancel_emits_cancelled_not_failed():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    running, queued = c.submit(fid, 2)
    c.drain()
    c.send(c.driver, P.Cancel([ret(queued)], False))
    c.send(c.driver, P.Cancel([ret(running)], False))
    assert kinds(c, queued)[-1] == "TaskCancelled"
    assert kinds(c, running)[-1] == "TaskCancelled"
    assert "TaskFailed" not in c.state.events.kept_counts()
    assert len(c.state.table.tasks) == 0


def test_nodes_join_die_and_are_fenced_when_they_speak_again():
    c = Cluster(heartbeat_timeout_s=2.0)
    c.add_node("n1", cpus=1, address="10.1.2.3")
    [joined] = [e for e in events_of(c) if type(e) is E.NodeJoined]
    assert (joined.node_id, joined.address) == ("n1", "10.1.2.3")
    c.tick(10.0)  # silent for 10 s: dead
    [dead] = [e for e in events_of(c) if type(e) is E.NodeDead]
    assert dead.node_id == "n1" and dead.at == 10.0 and "heartbeat" in dead.reason
    c.heartbeat("n1")  # it speaks again: told to join anew
    assert kinds(c, "n1") == ["NodeJoined", "NodeDead", "NodeFenced"]


def test_drivers_join_and_leave_with_a_reason():
    c = Cluster()
    c.hello(b"d2", "driver")
    c.send(b"d2", P.Goodbye())
    assert kinds(c, b"d2") == ["DriverJoined", "DriverLeft"]
    [left] = [e for e in events_of(c) if type(e) is E.DriverLeft]
    assert left.reason == "it said goodbye"


def test_a_stored_object_is_located_then_freed():
    c = Cluster()
    c.add_node("n1", cpus=1)
    c.add_node("n2", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    [t] = c.submit(fid)
    c.drain()
    oid = ret(t)
    c.finish(w, t, stored(oid, 10_000_000, "n1"))
    c.send(c.node_peer["n2"], P.ObjectLocations([[oid, 10_000_000]], []))
    c.send(c.driver, P.Release([oid]))
    c.drain()
    assert kinds(c, oid) == ["ObjectStored", "ObjectLocated", "ObjectFreed"]
    [stored_event] = [e for e in events_of(c) if type(e) is E.ObjectStored]
    assert (stored_event.nbytes, stored_event.node_id) == (10_000_000, "n1")


def test_actor_created_restarted_and_dead():
    c = Actors(idle_worker_timeout_s=1000.0)
    c.add_node("n1", cpus=2)
    fid = c.register("mod.C")
    aid = c.create(fid, max_restarts=1)
    worker = started(c, aid)
    c.exited(worker, -9)
    worker = started(c, aid)
    c.exited(worker, -9)
    names = kinds(c, aid)
    assert names.count("ActorCreated") == 2
    assert names.index("ActorRestarted") > names.index("ActorCreated")
    assert names[-1] == "ActorDead"
    [restarted] = [e for e in events_of(c) if type(e) is E.ActorRestarted]
    assert restarted.restarts == 1 and "SIGKILL" in restarted.cause
    [created] = [e for e in events_of(c) if type(e) is E.ActorCreated][:1]
    assert (created.class_name, created.node_id) == ("mod.C", "n1")


def test_since_returns_what_came_after_a_number_and_skips_what_fell_out_of_the_ring():
    log = E.EventLog(3)
    for i in range(5):
        log.emit(E.DriverJoined(float(i), b"d%d" % i))
    assert log.seq == 5
    assert log.since(0) == (5, [E.DriverJoined(float(i), b"d%d" % i) for i in (2, 3, 4)])
    seq, events = log.since(3)
    assert seq == 5 and [e.at for e in events] == [3.0, 4.0]
    assert log.since(5) == (5, [])
    seq, events = log.since(0, limit=2)
    assert seq == 4 and [e.at for e in events] == [2.0, 3.0]
    assert log.kept_counts() == {"DriverJoined": 3}  # (the kinds of those kept)


def test_events_are_read_through_info_as_plain_lists():
    c = Cluster()
    c.hello(b"d2", "driver")
    seq = c.state.events.seq
    reply = c.state.info(f"events:{seq - 1}")
    assert reply == {"seq": seq, "events": [["DriverJoined", c.now, b"d2"]]}
    assert "error" in c.state.info("events:x")


def test_a_ring_of_zero_turns_the_stream_off():
    c = Cluster(event_ring=0)
    c.add_node("n1", cpus=1)
    fid = c.register()
    c.submit(fid)
    c.drain()
    assert not c.state.events.on and c.state.events.seq == 0
    assert c.state.info("events") == {"seq": 0, "events": []}
    c.state.check_invariants()


def test_added_events_count_once_absorbed_and_a_log_that_is_off_drops_them():
    log = E.EventLog(10)
    log.add(("TaskSubmitted", 1.0, b"t" * 16, "f", b"", 0, b"Dd", b"", 10))
    log.add(("TaskQueued", 2.0, b"t" * 16))
    assert log.added  # (not absorbed yet: the head absorbs once ABSORB_AT events wait)
    assert log.kept_counts() == {"TaskSubmitted": 1, "TaskQueued": 1}  # (absorbed first)
    assert not log.added
    assert log.since(0)[1] == [E.TaskSubmitted(1.0, b"t" * 16, "f", b"", 0, b"Dd", b"", 10),
                               E.TaskQueued(2.0, b"t" * 16)]
    off = E.EventLog(0)
    off.add(("TaskQueued", 2.0, b"t" * 16))
    off.emit(E.DriverJoined(1.0, b"d"))
    assert off.seq == 0 and off.kept_counts() == {} and not off.on


class _Seen:
    """A stand-in state view: the batches it was fed."""

    def __init__(self) -> None:
        self.batches: list[list] = []

    def consume(self, batch: list) -> None:
        self.batches.append(list(batch))


def test_the_view_is_fed_when_the_head_has_time_or_before_it_is_read_in_order():
    log = E.EventLog(100)
    log.view = view = _Seen()
    log.add(("TaskQueued", 1.0, b"a"))
    log.absorb()
    log.add(("TaskQueued", 2.0, b"b"))
    log.absorb()
    assert log.behind == 2 and view.batches == []  # in the ring, not in the view yet
    assert [e.at for e in log.since(0)[1]] == [1.0, 2.0]
    ticks = iter([5.0])
    log.feed_view(deadline=1.0, clock=lambda: next(ticks))  # one batch, then time is up
    assert [b[0][1] for b in view.batches] == [1.0] and log.behind == 1
    log.add(("TaskQueued", 3.0, b"c"))  # (not absorbed yet either)
    log.sync()  # what a reader does first: all of it, in order
    assert [e[1] for b in view.batches for e in b] == [1.0, 2.0, 3.0] and log.behind == 0


def test_the_head_feeds_its_view_in_idle_turns_and_at_once_when_far_behind(monkeypatch):
    c = Cluster()
    c.add_node("n1", cpus=2)
    fid = c.register()
    for _ in range(400):  # 400 TaskSubmitted (and TaskStarted for 2): absorbed, not viewed
        c.submit(fid)
    c.drain()
    events = c.state.events
    assert events.behind >= E.ABSORB_AT and c.state.view_behind
    assert not c.state.view.live  # (the view has not seen them)
    c.carry_out(c.state.catch_up(None, None))  # an idle turn with time for all of it
    assert not c.state.view_behind and len(c.state.view.live) >= E.ABSORB_AT // 2
    seen = len(c.state.view.live)
    monkeypatch.setattr(E, "VIEW_BEHIND_MAX", E.ABSORB_AT)
    for _ in range(300):
        c.submit(fid)
    c.drain()
    assert events.behind == 0 and len(c.state.view.live) > seen  # (fed at once: far behind)
    assert c.state.info("state:summary")["summary"]  # (a reader: everything, up to date)
    assert len(c.state.view.live) == 700 and not events.added


def test_every_event_the_parts_record_names_a_known_kind_with_its_fields():
    """The parts record events as plain tuples whose first item is the kind's name (see
    EventLog): a misspelt name or a missing field is caught here, for every call site."""
    import ast
    from pathlib import Path

    import taskmesh._head as head

    sites = 0
    for path in Path(head.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add" and len(node.args) == 1
                    and isinstance(node.args[0], ast.Tuple) and node.args[0].elts
                    and isinstance(node.args[0].elts[0], ast.Constant)
                    and isinstance(node.args[0].elts[0].value, str)):
                fields = node.args[0].elts
                raw = (fields[0].value, *range(len(fields) - 1))
                assert E.check_raw(raw) is None, f"{path.name}:{node.lineno}: {E.check_raw(raw)}"
                sites += 1
    assert sites >= 25  # (the scan finds the call sites)
    assert E.check_raw(("TaskQueued", 1.0)) is not None
    assert E.check_raw(("TaskQueud", 1.0, b"t")) is not None


def test_the_invariant_check_catches_a_malformed_event():
    c = Cluster()
    c.state.events.add(("TaskQueued", 1.0))  # a field short
    with pytest.raises(AssertionError, match="TaskQueued needs 2 fields"):
        c.state.check_invariants()
