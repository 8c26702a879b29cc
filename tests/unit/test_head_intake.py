"""The head's intake (_head/intake.py): liveness first, bulk in arrival order and in slices,
backlog gating, the lag histogram; and HeadState's side of overload: chores done in slices,
a judge that stalled does not convict (tick(stalled=...)), the collector's timing."""

from __future__ import annotations

import pytest

from taskmesh import _protocol as P
from taskmesh._head import collector as C
from taskmesh._head.intake import DISCONNECTED, Intake, LagHistogram, is_liveness, slices
from taskmesh._head.context import CHORE_SLICE

from ..support.head import Cluster, value


def test_heartbeats_and_pings_take_the_liveness_lane():
    intake = Intake(max_backlog=10)
    intake.add(b"d", P.Release([b"x" * 20]), 1.0)
    intake.add(b"n", P.Heartbeat({}), 2.0)
    intake.add(b"d", P.InfoRequest(0, "ping"), 3.0)
    intake.add(b"d", P.InfoRequest(5, "status"), 4.0)  # an answer the peer waits for: in order
    assert [type(m).__name__ for _, m, _ in intake.liveness] == ["Heartbeat", "InfoRequest"]
    assert [type(m).__name__ for _, m, _ in intake.bulk] == ["Release", "InfoRequest"]
    assert is_liveness(P.InfoRequest(0, "ping")) and not is_liveness(P.InfoRequest(0, "nodes"))


def test_a_turn_takes_liveness_first_then_bulk_until_its_deadline_at_the_clocks_times():
    c = Cluster(heartbeat_timeout_s=2.0)
    c.add_node("n1", cpus=1)
    intake = Intake(max_backlog=1000)
    for i in range(100):  # info requests: each gets its own answer, so each is seen handled
        intake.add(c.driver, P.InfoRequest(i + 1, "nodes"), 1.0)
    intake.add(c.node_peer["n1"], P.Heartbeat({}), 2.0)
    times = iter(range(10, 1000))
    clock = lambda: float(next(times))  # noqa: E731 (one tick per look)
    c.carry_out(c.state.handle_turn(intake.liveness, intake.bulk, 45.0, clock))
    answered = [m.request_id for m in c.drain().to(c.driver, P.InfoReply)]
    # the heartbeat came first, at the clock's first reading (10), not when it was read (2.0)
    assert c.node("n1").last_seen == 10.0
    # 32 messages, then the deadline was looked at: 11 + 32 readings = 43 < 45, so 32 more;
    # 11 + 64 + 1 = 76 >= 45: stop. The rest waits in the queue, in order.
    assert answered == list(range(1, 65))
    assert [m.request_id for _, m, _ in intake.bulk] == list(range(65, 101))
    c.carry_out(c.state.handle_turn(intake.liveness, intake.bulk, 10_000.0, clock))
    assert [m.request_id for m in c.drain().to(c.driver, P.InfoReply)] == list(range(65, 101))
    assert not intake


def test_a_long_message_is_cut_in_slices_that_keep_its_order():
    ids = [i.to_bytes(20, "big") for i in range(2 * 2000 + 7)]
    parts = slices(P.Release(ids), 2000)
    assert [len(p.object_ids) for p in parts] == [2000, 2000, 7]
    assert [oid for p in parts for oid in p.object_ids] == ids
    added = [[oid, 1] for oid in ids[:3000]]
    loc = slices(P.ObjectLocations(added, ids[:10]), 2000)
    assert [(len(p.added), len(p.removed)) for p in loc] == [(2000, 0), (1000, 0), (0, 10)]
    small = P.Release(ids[:5])
    assert slices(small, 2000) == [small]
    cancel = P.Cancel(ids, False, True)  # not a type that is cut
    assert slices(cancel, 2000) == [cancel]


def test_bulk_is_read_only_while_the_backlog_is_short():
    intake = Intake(max_backlog=3)
    for i in range(3):
        assert intake.wants_more
        intake.add(b"d", P.Release([bytes([i]) * 20]), float(i))
    assert not intake.wants_more
    intake.closed(b"d", 9.0)  # after what it sent before
    assert intake.bulk[-1][1] is DISCONNECTED


def test_the_lag_histogram_reads_percentiles_from_its_buckets():
    h = LagHistogram()
    assert h.percentile(99) == 0.0
    for _ in range(98):
        h.add(0.001)
    h.add(0.05)
    h.add(0.4)
    assert 0.001 <= h.percentile(50) < 0.0013
    assert 0.05 <= h.percentile(99) < 0.06
    assert h.max == 0.4 and h.total == 100
    assert h.summary()["max_ms"] == 400.0


def test_the_lag_percentiles_never_exceed_the_maximum_seen():
    h = LagHistogram()
    for _ in range(10):
        h.add(0.00001)  # 0.01 ms: its bucket's bound is higher
    s = h.summary()
    assert s["p50_ms"] <= s["max_ms"] and s["p99_ms"] <= s["max_ms"] == 0.01


def test_a_driver_with_many_objects_is_released_in_slices():
    c = Cluster()
    fid = c.register()
    c.hello(b"big", "driver")
    n = CHORE_SLICE * 2 + 10
    for i in range(n):
        c.put(b"%020d" % i, value(b"v"), owner=b"big")
    c.send(b"big", P.Goodbye())
    assert len(c.state.chores) == 1 and len(c.state.directory.objects) == n  # not done in the handler
    steps = iter(range(1_000_000))
    c.carry_out(c.state.run_chores(1, lambda: next(steps)))  # the deadline passes after two slices
    assert 0 < len(c.state.directory.objects) < n
    c.carry_out(c.state.run_chores(float("inf"), lambda: 0.0))
    assert not c.state.chores and not c.state.directory.objects
    c.state.check_invariants()
    assert fid  # (the cluster still works)
    [t] = c.submit(fid)
    assert t in c.state.table.tasks


def test_a_head_that_stalled_does_not_take_its_nodes_for_dead():
    c = Cluster()
    c.add_node("n1", cpus=1)
    c.drain()
    timeout = c.config.heartbeat_timeout_s
    # the head did not run for 3 s: the node's heartbeats of that time were not heard
    c.tick(c.now + timeout + 1.5)  # (no stall reported: a silent node is dead)
    assert not c.node("n1").alive
    c2 = Cluster()
    c2.add_node("n1", cpus=1)
    c2.drain()
    c2.now += timeout + 1.5
    c2.carry_out(c2.state.tick(c2.now, stalled=timeout + 1.4))
    assert c2.node("n1").alive  # the stall is not the node's silence
    c2.now += timeout + 0.1
    c2.carry_out(c2.state.tick(c2.now))  # a node silent longer than the time-out after it is dead
    assert not c2.node("n1").alive


def test_a_stalled_head_forgives_remote_drivers_too():
    c = Cluster()
    c.hello(b"remote", "driver", {"heartbeat_s": 0.25})
    c.drain()
    c.now += 5.0
    c.carry_out(c.state.tick(c.now, stalled=4.9))
    assert b"remote" in c.state.members.peers
    c.now += 5.0
    c.carry_out(c.state.tick(c.now))
    assert b"remote" not in c.state.members.peers


def test_the_collector_runs_full_collections_only_when_idle_or_rarely():
    col = C.Collector(now=0.0)
    assert not col.due(10.0, None)  # busy
    assert not col.due(10.0, 9.5)  # idle, but not for long
    assert not col.due(10.0, 5.0)  # idle long enough, but the last one is recent
    assert col.due(C.EVERY_S + 1, C.EVERY_S - 1)
    assert col.due(C.FORCED_S + 1, None)  # load that never ends: now and then anyway


def test_the_collector_leaves_young_collections_automatic_but_rarer_and_full_ones_to_the_head():
    import gc

    before = gc.get_threshold()
    try:
        C.Collector(now=0.0).start()
        young, middle, full = gc.get_threshold()
        assert young == C.YOUNG > before[0]  # rarer than CPython's default
        assert middle == before[1] and full >= 2**31 - 1  # never started by CPython
        assert gc.isenabled()
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_a_new_peers_heartbeat_never_overtakes_its_hello():
    # a busy head: a node's Hello and first heartbeat reach it in one turn, behind other
    # bulk messages. The heartbeat must wait for the Hello (handled first, it made the head
    # take the node for a stranger and refuse it)
    c = Cluster()
    c.add_node("n1", cpus=1)
    intake = Intake(max_backlog=1000)
    for i in range(5):
        intake.add(c.driver, P.InfoRequest(i + 1, "nodes"), 1.0)
    hello = P.Hello(P.PROTOCOL_VERSION, "node", {"node_id": "n2", "resources": {"CPU": 10_000},
                                                  "address": "127.0.0.2"})
    intake.add(b"N-n2", hello, 1.0)
    intake.add(b"N-n2", P.Heartbeat({}), 1.1)
    intake.add(c.node_peer["n1"], P.Heartbeat({}), 1.2)  # another peer's: at once
    assert [p for p, _, _ in intake.liveness] == [c.node_peer["n1"]]
    assert [type(m).__name__ for _, m, _ in intake.bulk][-2:] == ["Hello", "Heartbeat"]
    c.carry_out(c.state.handle_turn(intake.liveness, intake.bulk, 1e9, lambda: 2.0))
    sent = c.drain()
    assert sent.to(b"N-n2", P.Welcome) and not sent.to(b"N-n2", P.Refused)
    assert c.state.members.nodes["n2"].alive
    # once its Hello was handled, its heartbeats take the liveness lane again
    intake.add(c.driver, P.InfoRequest(9, "nodes"), 3.0)
    intake.add(b"N-n2", P.Heartbeat({}), 3.0)
    assert [p for p, _, _ in intake.liveness] == [b"N-n2"]
    c.state.check_invariants()


def test_peers_greeted_long_ago_are_forgotten():
    intake = Intake(max_backlog=10_000)
    for i in range(200):
        intake.add(b"W%d" % i, P.Hello(P.PROTOCOL_VERSION, "worker", {}), 1.0)
        intake.bulk.popleft()  # (handled)
    assert len(intake._greeting) <= 64
