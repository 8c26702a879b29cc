"""Messages that make no sense, or come at the wrong time, are dropped and counted, never
half-applied: one test per bug the fuzz harness (tests/fuzz) found, each ending with the
head's invariants checked."""

from __future__ import annotations

import logging
import math

import pytest

from taskmesh import _protocol as P
from taskmesh._head import actors as A
from taskmesh._head import records as H
from taskmesh._head import tasks as T
from taskmesh._head.membership import Life

from ..support.head import MB, PV, SHORT, SO, Actors, Cluster, ret, started, stored, value


@pytest.fixture
def c() -> Cluster:
    c = Cluster(idle_worker_timeout_s=1000.0, heartbeat_timeout_s=1000.0)
    c.add_node("n1", cpus=1)
    c.drain()
    return c


@pytest.fixture
def a() -> Actors:
    a = Actors(idle_worker_timeout_s=1000.0, heartbeat_timeout_s=1000.0)
    a.add_node("n1", cpus=2)
    a.drain()
    return a


def ok(c: Cluster) -> None:
    c.drain()
    c.state.check_invariants()


# =========================================================================== counting drops


def test_drops_are_counted_by_reason_and_logged_at_most_once_per_interval(c, caplog):
    fid = c.register()
    with caplog.at_level(logging.INFO, logger="taskmesh._head.state.dropped"):
        for _ in range(1000):
            c.send(b"stranger", P.Submit([c.spec(fid)]))
        assert c.state.dropped.counts == {"from a peer that never said Hello": 1000}
        assert len(caplog.records) == 1
        c.now += c.state.dropped.interval_s + 1
        c.send(b"stranger", P.Release([]))
        assert len(caplog.records) == 2 and "999 more like it" in caplog.records[1].getMessage()
    assert c.status()["dropped"] == {"from a peer that never said Hello": 1001}
    ok(c)


def test_a_second_hello_changes_nobody_s_kind(c):
    worker = c.node_workers["n1"][0]
    c.hello(worker, "driver")
    c.hello(c.driver, "worker", {"node_id": "n1", "worker_id": "w99"})
    c.send(b"node-n1", P.Hello(PV, "node", {"node_id": "other", "resources": {"CPU": 1}}))
    assert c.state.members.peers[worker] == "worker" and c.state.members.peers[c.driver] == "driver"
    assert set(c.state.members.nodes) == {"n1"} and c.node("n1").alive
    assert c.state.dropped.counts["second Hello"] == 3
    assert not c.drain().of(P.Welcome)
    ok(c)


def test_a_driver_taken_as_gone_cannot_say_hello_again(c):
    c.hello(b"remote", "driver", {"heartbeat_s": 1.0})
    c.tick(c.now + 2 * c.config.heartbeat_timeout_s)
    assert c.state.members.life(b"remote") is Life.GONE
    c.hello(b"remote", "driver")
    assert b"remote" not in c.state.members.peers
    assert [type(m) for m in c.drain().to(b"remote")] == [P.Refused]
    ok(c)


def test_a_node_hello_with_fields_of_the_wrong_type_is_read_as_far_as_it_makes_sense(c):
    c.send(b"node-n2", P.Hello(PV, "node", {"node_id": "n2", "resources": {"CPU": 10_000},
                                            "pid": "abc", "prestart": None, "gpus": 3}))
    node = c.node("n2")
    assert node.alive and node.pid == 0 and node.starting == 0
    ok(c)


def test_heartbeat_stats_keys_that_are_not_strings_are_not_kept(c):
    c.send(b"node-n1", P.Heartbeat({1: 2, None: 3, "store_used_bytes": 5}))
    assert c.info("nodes")[0]["ObjectStore"] == {"store_used_bytes": 5}
    ok(c)


# =========================================================================== tasks


def test_a_task_with_absurdly_many_returns_is_dropped_at_once(c):
    fid = c.register()
    spec = c.spec(fid)._replace(num_returns=2**40)
    c.send(c.driver, P.Submit([spec]))  # (used to build 2**40 object ids)
    assert c.state.table.tasks == {} and c.state.directory.objects == {}
    assert c.state.dropped.counts["duplicate or invalid task"] == 1
    ok(c)


def test_a_task_whose_later_return_id_exists_is_a_duplicate(c):
    fid = c.register()
    spec = c.spec(fid, num_returns=2)
    c.put(ret(spec.task_id, 1), value())
    c.send(c.driver, P.Submit([spec]))
    assert spec.task_id not in c.state.table.tasks
    assert c.state.directory.objects[ret(spec.task_id, 1)].value is not None  # the put object is intact
    ok(c)


def test_a_task_that_depends_on_its_own_result_fails_instead_of_waiting_forever(c):
    fid = c.register()
    spec = c.spec(fid)
    spec = spec._replace(deps=[ret(spec.task_id)])
    c.send(c.driver, P.Submit([spec]))
    [item] = c.drain().values(c.driver).values()
    assert item.value.read_system_error()[0] == "ObjectLostError"
    assert "its own result" in item.value.read_system_error()[1]
    ok(c)


def test_a_put_cannot_fill_in_the_result_of_a_pending_task(c):
    fid = c.register()
    [t] = c.submit(fid)
    c.put(ret(t), value(b"forged"))
    assert c.state.directory.objects[ret(t)].value is None
    assert c.state.dropped.counts["Put of an object that exists"] == 1
    ok(c)


def test_a_nan_duration_does_not_reach_placement(c):
    fid_short, fid_nan = c.register("mod.short"), c.register("mod.nan")
    c.warm(fid_short, SHORT)
    [t] = c.submit(fid_nan)
    worker = c.drain().assigned_to()[t]
    c.finish(worker, t, duration=math.nan)
    assert fid_nan not in c.state.scheduler.fn_mean_s
    c.submit(fid_short)  # busy with a short function ...
    c.submit(fid_nan, 3)  # ... while the queue head's mean is unknown: placement computes
    ok(c)


def test_duplicate_ids_in_a_hand_back_are_taken_back_once(c):
    fid = c.register()
    c.warm(fid, SHORT)
    ts = c.submit(fid, 3)  # one worker: the second is pipelined behind the first
    worker = c.node_workers["n1"][0]
    assert [a.task_id for a in c.drain().assignments(worker)] == ts[:2]
    c.send(worker, P.Blocked([ts[1], ts[1], ts[2], b"nonsense"], []))
    assert [t.spec.task_id for t in c.state.members.workers[worker].assigned] == ts[:1]
    assert c.state.table.tasks[ts[1]].state == H.READY
    ok(c)


def test_a_worker_s_own_nested_task_is_not_run_again_after_the_worker_died(c):
    fid = c.register()
    c.warm(fid, SHORT)
    [t] = c.submit(fid)
    worker = c.node_workers["n1"][0]
    c.drain()
    nested = c.submit(fid, owner=worker)  # pipelined to the same (only) worker
    assert [a.task_id for a in c.drain().assignments(worker)] == nested
    c.exited(worker)
    assert nested[0] not in c.state.table.tasks  # cancelled: its owner is gone
    assert all(x.state != H.READY for q in c.state.scheduler.queues.values() for x in q
               if x.spec.task_id == nested[0])
    ok(c)


def test_a_rerun_does_not_free_the_surviving_copy_of_its_other_result(c):
    """A task's two stored results on n1; one copy is lost, the task runs again (on n1) to
    rebuild it: the other result's copy there is the one the head counts, so it stays."""
    fid = c.register()
    [t] = c.submit(fid, num_returns=2, max_retries=2)
    worker = c.drain().assigned_to()[t]
    c.finish(worker, t, stored(ret(t, 0), 10 * MB), stored(ret(t, 1), 10 * MB))
    c.drain()
    c.send(b"node-n1", P.ObjectLocations([], [ret(t, 0)]))
    sent = c.drain()
    worker = sent.assigned_to()[t]
    c.finish(worker, t, stored(ret(t, 0), 10 * MB), stored(ret(t, 1), 10 * MB))
    freed = [oid for m in c.drain().to(b"node-n1", P.FreeObjects) for oid in m.object_ids]
    assert ret(t, 1) not in freed
    assert ret(t, 1) in c.node("n1").objects
    ok(c)


def test_a_value_made_again_replaces_the_refs_it_holds(c):
    """The refs inside a result are held once, however often the result is made."""
    fid = c.register()
    inner = c.put(b"i" * 20, value())
    [t] = c.submit(fid, max_retries=2)
    worker = c.drain().assigned_to()[t]
    c.finish(worker, t, SO(SO.STORED, stored(ret(t), MB).data, [], [inner]))
    c.drain()
    c.send(b"node-n1", P.ObjectLocations([], [ret(t)]))  # lost: rebuilt
    worker = c.drain().assigned_to()[t]
    c.finish(worker, t, SO(SO.STORED, stored(ret(t), MB).data, [], [inner]))
    assert c.state.directory.objects[inner].holds == 1
    ok(c)


# =========================================================================== actors


def test_create_actor_options_of_the_wrong_type_are_refused(a):
    fid = a.register("mod.C")
    for bad in ({"name": ["x"]}, {"max_restarts": "3"}, {"namespace": 1}):
        aid = a.create(fid, reply=7, **bad)
        [reply] = a.drain().to(a.driver, P.ActorReply)
        assert "invalid actor creation" in reply.info["error"]
        assert aid not in a.state.actor_table.actors
    ok(a)


def test_an_actor_id_whose_result_exists_is_refused(a):
    fid = a.register("mod.C")
    aid = b"actor-0000000042"
    a.put(ret(aid), value())
    spec = P.TaskSpec(aid, "mod.C.__init__", fid, value(), [], 1, {}, 0, False, aid, "__init__")
    a.send(a.driver, P.CreateActor(spec, {"class_name": "mod.C"}, 0))
    assert aid not in a.state.actor_table.actors
    ok(a)


def test_a_restart_while_constructing_lets_go_of_the_constructor_s_inputs(a):
    fid = a.register("mod.C")
    inp = a.put(b"i" * 20, value())
    aid = a.create(fid, deps=[inp], max_restarts=1)
    worker = a.drain().assigned_to()[aid]
    a.exited(worker)  # died while constructing: restarts
    assert a.actor(aid).state in (A.RESTARTING, A.CREATING)
    assert a.state.directory.objects[inp].dependents == 1  # the new constructor's, not two
    ok(a)


def test_a_constructor_whose_input_was_unreadable_runs_again_on_its_worker(a):
    fid = a.register("mod.C")
    inp = a.put(b"i" * 20, value())
    aid = a.create(fid, deps=[inp])
    worker = a.drain().assigned_to()[aid]
    lost = SO.system_error("DependencyLost", f"{inp.hex()} no holder answered")
    a.send(worker, P.TaskResults([P.TaskResult(aid, [lost], 0.0)]))
    sent = a.tick(a.now + T.DEPENDENCY_RETRY_S + 0.01)
    assert sent.assigned_to() == {aid: worker}
    a.finish(worker, aid, value(b"None"))
    assert a.actor(aid).state == A.ALIVE
    ok(a)


def test_help_never_hands_out_an_actor_s_constructor_or_calls(a):
    """A zero-CPU task waits for an actor's constructor result: the blocked worker is not
    given the constructor to run inside its get() (it is not the actor's worker)."""
    fid, g = a.register("mod.C"), a.register("mod.g")
    ts = a.submit(g, 2, cpus=0)  # both pool workers busy: the actor waits for a new one
    worker = a.drain().assigned_to()[ts[0]]
    aid = a.create(fid)
    a.drain()
    assert a.state.table.tasks[aid].state == H.READY and a.actor(aid).node is not None
    a.send(worker, P.Blocked([], [ret(aid)]))
    assert not a.drain().to(worker, P.Help)
    assert a.state.table.tasks[aid].state == H.READY
    ok(a)


def test_an_actor_call_waits_while_its_input_is_made_again(a):
    """A call ready in the queue of a restarting actor, whose input is then lost (and rebuilt):
    once the actor is back, the call waits for the input instead of being sent without it."""
    fid, g = a.register("mod.C"), a.register("mod.g")
    aid = a.create(fid, max_restarts=1)
    worker = started(a, aid)
    [t] = a.submit(g, max_retries=2)
    other = a.drain().assigned_to()[t]
    a.finish(other, t, stored(ret(t), MB))
    a.drain()
    a.exited(worker)  # the actor restarts (on `other`, the idle pool worker) ...
    call = a.call(aid, deps=[ret(t)])  # ... and this call waits in its queue, ready
    assert a.state.table.tasks[call].state == H.READY
    a.send(b"node-n1", P.ObjectLocations([], [ret(t)]))  # t's result is lost: t runs again
    a.finish(other, aid, value(b"None"))  # the actor is back
    assert call not in a.drain().assigned_to()  # not without its input
    rerun = a.add_worker("n1")
    assert a.drain().assigned_to() == {t: rerun}
    a.finish(rerun, t, stored(ret(t), MB))
    sent = a.drain()
    [assignment] = [x for x in sent.assignments(other) if x.task_id == call]
    assert assignment.dep_values[0] is not None
    ok(a)


# =========================================================================== the wire


def test_a_system_error_value_must_be_a_kind_and_a_message():
    for data in (b"", b"\xc1", P.msgpack.packb(["only one"]), P.msgpack.packb([1, 2])):
        frames = P.encode(P.Put([(b"o" * 20, SO(SO.SYSTEM_ERROR, data, []))]))
        with pytest.raises(P.ProtocolError):
            P.decode(frames)
    good = P.encode(P.Put([(b"o" * 20, SO.system_error("ObjectLostError", "gone"))]))
    assert P.decode(good).objects[0][1].read_system_error() == ("ObjectLostError", "gone")
