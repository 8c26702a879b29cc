"""The head's actor decisions (HeadState with _head/actors.py), driven by scripted peers: no
processes. Placement, call order, constructor failure, restarts and retries, kill, owner
exit, names."""

from __future__ import annotations

import pytest

from taskmesh import _protocol as P
from taskmesh._head import actors as A

from ..support.head import SO, Actors, ret, started, value


@pytest.fixture
def c() -> Actors:
    c = Actors(idle_worker_timeout_s=1000.0)
    c.add_node("n1", cpus=2)
    c.drain()
    return c


def test_an_actor_takes_an_idle_pool_worker_which_is_replaced(c):
    fid = c.register("mod.C")
    aid = c.create(fid)
    sent = c.drain()
    worker = sent.assigned_to()[aid]
    assert sent.to(c.node_peer["n1"], P.StartWorkers) == [P.StartWorkers(1)]  # a replacement
    node = c.node("n1")
    assert worker not in node.workers and worker in node.actor_workers
    assert c.actor(aid).state == A.CREATING
    c.finish(worker, aid, value(b"None"))
    assert c.actor(aid).state == A.ALIVE
    # the pool still runs tasks on the other worker, never on the actor's
    f = c.register("mod.g")
    c.submit(f, 2)
    assert set(c.drain().assigned_to().values()) <= set(node.workers)


def test_calls_run_in_submission_order_even_when_a_later_one_is_ready_first(c):
    fid = c.register("mod.C")
    aid = c.create(fid)
    worker = started(c, aid)
    g = c.register("mod.g")
    [slow] = c.submit(g)  # the input of the first call: not ready yet
    first = c.call(aid, deps=[ret(slow)])
    second = c.call(aid)
    third = c.call(aid)
    assert [a.task_id for a in c.drain().assignments(worker)] == []  # all wait for the first
    runner = c.state.table.tasks[slow].worker.peer
    c.finish(runner, slow)
    assert [a.task_id for a in c.drain().assignments(worker)] == [first, second, third]


def test_calls_sent_before_the_constructor_ends_wait_for_it(c):
    fid = c.register("mod.C")
    aid = c.create(fid)
    sent = c.drain()
    worker = sent.assigned_to()[aid]
    t = c.call(aid)
    assert c.drain().assignments(worker) == []
    c.finish(worker, aid, value(b"None"))
    assert [a.task_id for a in c.drain().assignments(worker)] == [t]
    c.finish(worker, t, value(b"1"))
    assert bytes(c.drain().values(c.driver)[ret(t)].value.data) == b"1"


def test_a_constructor_that_raises_kills_the_actor_and_its_calls_say_why(c):
    fid = c.register("mod.C")
    aid = c.create(fid)
    worker = c.drain().assigned_to()[aid]
    t = c.call(aid)
    why = SO.system_error("ActorDiedError", "its constructor mod.C.__init__ raised ValueError: x")
    c.finish(worker, aid, why)
    sent = c.drain()
    kind, message = sent.values(c.driver)[ret(t)].value.read_system_error()
    assert kind == "ActorDiedError" and "raised ValueError: x" in message and "mod.C" in message
    assert any(type(m) is P.KillWorker for m in sent.to(c.node_peer["n1"]))
    later = c.call(aid)
    kind, message = c.drain().values(c.driver)[ret(later)].value.read_system_error()
    assert kind == "ActorDiedError" and "raised ValueError: x" in message


def test_a_dead_process_restarts_the_actor_and_retries_calls_with_retries_left(c):
    fid = c.register("mod.C")
    aid = c.create(fid, max_restarts=1, max_task_retries=1)
    worker = started(c, aid)
    running = c.call(aid, retries=1)
    queued = c.call(aid, retries=1)
    c.drain()
    c.exited(worker, -9)
    assert c.actor(aid).state == A.CREATING  # again, on another worker
    sent = c.drain()
    new = sent.assigned_to()[aid]
    assert new != worker
    c.finish(new, aid, value(b"None"))
    assert [a.task_id for a in c.drain().assignments(new)] == [running, queued]
    assert c.actor(aid).restarts == 1 and c.actor(aid).restarts_left == 0
    c.exited(new, -9)  # no restarts left: dead, and the calls it had fail (no retry either)
    assert c.actor(aid).state == A.DEAD
    got = c.drain().values(c.driver)
    for t in (running, queued):
        kind, message = got[ret(t)].value.read_system_error()
        assert kind == "ActorDiedError" and "SIGKILL" in message, message


def test_without_task_retries_the_calls_a_dead_process_had_fail_but_later_ones_run(c):
    fid = c.register("mod.C")
    aid = c.create(fid, max_restarts=-1)
    worker = started(c, aid)
    lost = c.call(aid)
    c.drain()
    c.exited(worker, -9)
    sent = c.drain()
    kind, message = sent.values(c.driver)[ret(lost)].value.read_system_error()
    assert kind == "ActorDiedError" and "mod.C" in message and "SIGKILL" in message
    new = sent.assigned_to()[aid]
    c.finish(new, aid, value(b"None"))
    later = c.call(aid)
    assert [a.task_id for a in c.drain().assignments(new)] == [later]


def test_kill_fails_queued_calls_now_and_the_running_one_when_the_process_is_gone(c):
    fid = c.register("mod.C")
    aid = c.create(fid, max_restarts=5)
    worker = started(c, aid)
    running = c.call(aid)
    c.drain()
    c.send(c.driver, P.KillActor(aid, True))
    sent = c.drain()
    [kill] = sent.to(c.node_peer["n1"], P.KillWorker)
    assert kill.worker_id == c.worker_info[worker][1]
    after = c.call(aid)
    kind, message = c.drain().values(c.driver)[ret(after)].value.read_system_error()
    assert kind == "ActorDiedError" and "killed by taskmesh.kill()" in message
    c.exited(worker, -9)
    kind, message = c.drain().values(c.driver)[ret(running)].value.read_system_error()
    assert kind == "ActorDiedError" and "killed by taskmesh.kill()" in message
    assert c.actor(aid).state == A.DEAD and c.actor(aid).restarts == 0


def test_an_actor_dies_with_its_owner_unless_detached(c):
    fid = c.register("mod.C")
    other = c.hello(b"driver-2", "driver")
    c.send(other, P.RegisterFunction(fid, "mod.C", b"blob of mod.C"))
    mine = c.create(fid, owner=other)
    detached = c.create(fid, owner=other, detached=True, name="keep")
    c.drain()
    c.send(other, P.Goodbye())
    assert c.actor(mine).state == A.DEAD and "owner" in c.actor(mine).cause
    assert c.actor(detached).state != A.DEAD
    c.send(c.driver, P.GetActor(9, "keep", ""))
    [reply] = c.drain().to(c.driver, P.ActorReply)
    assert reply.info["actor_id"] == detached


def test_names_are_unique_while_alive_and_get_if_exists_returns_the_live_one(c):
    fid = c.register("mod.C")
    first = c.create(fid, name="db", reply=1)
    [r1] = c.drain().to(c.driver, P.ActorReply)
    assert r1.info["actor_id"] == first and r1.info["function_id"] == fid
    c.create(fid, name="db", reply=2)
    [r2] = c.drain().to(c.driver, P.ActorReply)
    assert "already exists" in r2.info["error"]
    c.create(fid, name="db", reply=3, get_if_exists=True)
    [r3] = c.drain().to(c.driver, P.ActorReply)
    assert r3.info["actor_id"] == first
    c.create(fid, name="db", namespace="other", reply=4)
    [r4] = c.drain().to(c.driver, P.ActorReply)
    assert r4.info["actor_id"] != first  # another namespace, another name
    c.send(c.driver, P.KillActor(first, True))
    c.send(c.driver, P.GetActor(5, "db", ""))
    [r5] = c.drain().to(c.driver, P.ActorReply)
    assert "no live actor named 'db'" in r5.info["error"]
    again = c.create(fid, name="db", reply=6)  # the name is free again
    [r6] = c.drain().to(c.driver, P.ActorReply)
    assert r6.info["actor_id"] == again


def test_an_actor_no_node_can_hold_waits_with_a_warning_then_starts_when_one_joins(c):
    fid = c.register("mod.C")
    spec = P.TaskSpec(b"actor-gpu-00001x", "mod.C.__init__", fid, None, [], 1, {"GPU": 10_000},
                      0, False, b"actor-gpu-00001x", "__init__")
    c.send(c.driver, P.CreateActor(spec, {"class_name": "mod.C"}, 0))
    sent = c.drain()
    [notice] = sent.to(c.driver, P.Notice)
    assert "GPU" in notice.message and "mod.C" in notice.message
    assert c.actor(b"actor-gpu-00001x").state == A.PENDING
    c.add_node("gpu", cpus=1, resources={"GPU": 1})
    assert c.drain().assigned_to()[b"actor-gpu-00001x"] in c.node("gpu").actor_workers
    assert c.node("gpu").avail.get("GPU") == 0  # held while it lives


def test_a_call_to_an_unknown_actor_fails_at_once(c):
    t = c.call(b"no-such-actor-00")
    kind, message = c.drain().values(c.driver)[ret(t)].value.read_system_error()
    assert kind == "ActorDiedError" and "no actor with id" in message


def test_node_loss_restarts_the_actor_on_another_node(c):
    fid = c.register("mod.C")
    aid = c.create(fid, max_restarts=1)
    started(c, aid)
    c.add_node("n2", cpus=1)
    c.drain()
    c.tick(c.config.heartbeat_timeout_s + 1, heartbeats=["n2"])
    assert not c.node("n1").alive
    assert c.actor(aid).state == A.CREATING and c.actor(aid).node is c.node("n2")


def test_results_of_actor_calls_are_never_rebuilt_from_lineage(c):
    fid = c.register("mod.C")
    aid = c.create(fid)
    worker = started(c, aid)
    t = c.call(aid)
    c.drain()
    stored = SO.stored(ret(t), 1 << 20, [["n1", ""]])
    c.finish(worker, t, stored)
    assert c.state.directory.objects[ret(t)].lineage is None


def test_split_in_flight_retries_while_retries_last():
    class T:
        def __init__(self, n):
            self.retries_left = n
    a, b, forever = T(1), T(0), T(-1)  # each call's own max_task_retries (method's or actor's)
    retry, fail = A.split_in_flight([a, b, forever])
    assert retry == [a, forever] and fail == [b] and a.retries_left == 0
    retry, fail = A.split_in_flight([a])  # its one retry is used up
    assert retry == [] and fail == [a]


# ---------------------------------------------------------------- lifetime by handles (issue 12)


def test_an_actor_ends_when_its_handle_object_is_freed_and_its_calls_are_done(c):
    fid = c.register("mod.C")
    aid = c.create(fid)
    hid = P.actor_handle_id(aid)
    assert c.state.directory.objects[hid].owner == c.driver  # the creator owns its handles' object
    worker = started(c, aid)
    call = c.call(aid)
    c.drain()
    c.send(c.driver, P.Release([hid]))  # the last handle went: the call made before still runs
    assert c.actor(aid).state == A.ALIVE and c.actor(aid).out_of_scope
    assert c.drain().to(worker, P.Exit) == []
    c.finish(worker, call)
    sent = c.drain()
    assert c.actor(aid).state == A.DEAD and "handles are gone" in c.actor(aid).cause
    assert sent.to(worker, P.Exit) != []  # it ends normally (atexit handlers run)
    assert not sent.values(c.driver)[ret(call)].value.is_error
    c.exited(worker, exitcode=0)
    assert c.avail_cpu("n1") == 2 * 10_000  # (an actor holds no CPU; its worker left the pool)
    c.state.check_invariants()


def test_a_borrowed_handle_keeps_the_actor_alive_until_the_borrower_releases(c):
    fid = c.register("mod.C")
    aid = c.create(fid)
    hid = P.actor_handle_id(aid)
    worker = started(c, aid)
    c.hello(b"driver-2", "driver")
    c.send(b"driver-2", P.Borrow([hid]))
    c.send(c.driver, P.Release([hid]))
    assert c.actor(aid).state == A.ALIVE
    c.send(b"driver-2", P.Release([hid]))
    assert c.actor(aid).state == A.DEAD
    assert c.drain().to(worker, P.Exit) != []
    c.state.check_invariants()


def test_named_and_detached_actors_outlive_their_handles(c):
    fid = c.register("mod.C")
    for options in ({"name": "n"}, {"detached": True}):
        aid = c.create(fid, **options)
        started(c, aid)
        c.send(c.driver, P.Release([P.actor_handle_id(aid)]))
        assert c.actor(aid).state == A.ALIVE
    c.state.check_invariants()


def test_an_actor_whose_handles_go_while_it_is_created_is_stopped(c):
    fid = c.register("mod.C")
    aid = c.create(fid)
    sent = c.drain()
    worker = sent.assigned_to()[aid]
    c.send(c.driver, P.Release([P.actor_handle_id(aid)]))
    [kill] = c.drain().to(c.node_peer["n1"], P.KillWorker)
    assert kill.worker_id == c.worker_info[worker][1]
    assert c.actor(aid).state == A.DEAD
    c.state.check_invariants()


def test_a_handle_inside_a_stored_value_holds_the_actor(c):
    fid = c.register("mod.C")
    aid = c.create(fid)
    hid = P.actor_handle_id(aid)
    started(c, aid)
    box = b"b" * 20
    c.put(box, SO(SO.VALUE, b"pickled [handle]", [], [hid]))
    c.send(c.driver, P.Release([hid]))
    assert c.actor(aid).state == A.ALIVE
    c.send(c.driver, P.Release([box]))
    assert c.actor(aid).state == A.DEAD
    c.state.check_invariants()


def test_per_call_max_task_retries_decide_retries_after_the_actor_restarts(c):
    fid = c.register("mod.C")
    aid = c.create(fid, max_restarts=1, max_task_retries=0)  # the actor's default: none
    worker = started(c, aid)
    keep = c.call(aid, retries=1)  # this method's own max_task_retries=1
    drop = c.call(aid, retries=0)
    c.drain()
    c.exited(worker)
    sent = c.drain()
    assert sent.values(c.driver)[ret(drop)].value.read_system_error()[0] == "ActorDiedError"
    assert ret(keep) not in sent.values(c.driver)
    assert c.state.table.tasks[keep].state != 3  # (not done: queued again for the restarted actor)


def test_a_detached_actor_still_being_created_when_its_creator_leaves_is_made(c):
    fid = c.register("mod.C")
    c.hello(b"creator", "driver")
    c.register("mod.C", owner=b"creator")
    detached = c.create(fid, owner=b"creator", detached=True, name="box")
    mine = c.create(fid, owner=b"creator")
    sent = c.drain()
    c.send(b"creator", P.Goodbye())  # it leaves while both constructors run
    killed = {k.worker_id for k in c.drain().to(c.node_peer["n1"], P.KillWorker)}
    assigned = sent.assigned_to()
    assert killed == {c.worker_info[assigned[mine]][1]}  # only the one that dies with it
    c.finish(assigned[detached], detached, value(b"None"))
    assert c.actor(detached).state == A.ALIVE and c.actor(mine).state == A.DEAD
    c.state.check_invariants()
