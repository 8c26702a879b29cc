"""Lost objects rebuilt from lineage: the head runs the task that made them again."""

from __future__ import annotations

import pytest

from taskmesh import _protocol as P
from taskmesh._head import records as H
from taskmesh._head import tasks as T

from ..support.head import MB, SO, Cluster, locations, ret, stored


@pytest.fixture
def c() -> Cluster:
    c = Cluster(heartbeat_timeout_s=1000.0)
    for n in ("a", "b"):
        c.add_node(n, cpus=1)
        c.state.members.nodes[n].transfer = f"10.0.0.{ord(n)}:7400"
    c.drain()
    return c


def run_on(c: Cluster, node_id: str, fid: bytes, **kw) -> tuple[bytes, bytes]:
    c.state.members.nodes["a" if node_id == "b" else "b"].avail["CPU"] = 0  # only node_id has room
    [t] = c.submit(fid, **kw)
    sent = c.drain()
    for n in c.state.members.nodes.values():
        n.avail["CPU"] = n.total["CPU"] - sum(w.lease.get("CPU", 0) for w in n.workers.values()
                                              if w.lease is not None)
    worker = sent.assigned_to()[t]
    assert c.worker_info[worker][0] == node_id
    return t, worker


def lose(c: Cluster, node_id: str) -> None:
    c.send(c.node_peer[node_id], P.Goodbye())  # its agent stopped: lost now
    c.send_all([])  # a scheduling round with no message


def test_a_lost_task_result_is_rebuilt_by_running_its_task_again(c):
    fid = c.register()
    t, worker = run_on(c, "b", fid)
    c.finish(worker, t, stored(ret(t), 20 * MB))
    c.drain()
    lose(c, "b")
    sent = c.drain()
    [again] = sent.assignments()  # the same task, on the node that is left
    assert again.task_id == t and c.worker_info[sent.assigned_to()[t]][0] == "a"
    c.send(c.driver, P.Subscribe([ret(t)]))  # a reader now waits for the rebuilt value
    assert not c.drain().values(c.driver)
    c.finish(sent.assigned_to()[t], t, stored(ret(t), 20 * MB))
    item = c.drain().values(c.driver)[ret(t)]
    assert locations(item.value) == [["a", c.state.members.nodes["a"].transfer]]
    assert c.state.directory.rebuilt == 1


def test_a_lost_put_object_is_an_error_naming_it(c):
    oid = c.put(b"p" * 20, stored(b"p" * 20, 20 * MB, "b"))
    lose(c, "b")
    c.send(c.driver, P.Subscribe([oid]))
    kind, message = c.drain().values(c.driver)[oid].value.read_system_error()
    assert kind == "ObjectLostError" and oid.hex() in message and "put()" in message


def test_rebuilds_are_bounded_by_max_retries(c):
    fid = c.register()
    t, worker = run_on(c, "b", fid, max_retries=0)
    c.finish(worker, t, stored(ret(t), 20 * MB))
    lose(c, "b")
    assert not c.drain().assignments()
    c.send(c.driver, P.Subscribe([ret(t)]))
    kind, message = c.drain().values(c.driver)[ret(t)].value.read_system_error()
    assert kind == "ObjectLostError" and "max_retries" in message


def test_a_chain_of_lost_results_is_rebuilt_in_order(c):
    fid = c.register()
    t1, w1 = run_on(c, "b", fid)
    c.finish(w1, t1, stored(ret(t1), 10 * MB))
    c.drain()
    t2, w2 = run_on(c, "b", fid, deps=[ret(t1)])
    c.finish(w2, t2, stored(ret(t2), 10 * MB))
    c.drain()
    lose(c, "b")
    sent = c.drain()
    # both are lost; only t1 can run now, t2 waits for t1's new value
    assert [a.task_id for a in sent.assignments()] == [t1]
    c.finish(sent.assigned_to()[t1], t1, stored(ret(t1), 10 * MB))
    sent = c.drain()
    [a2] = sent.assignments()
    assert a2.task_id == t2 and locations(a2.dep_values[0])[0][0] == "a"
    c.finish(sent.assigned_to()[t2], t2, stored(ret(t2), 10 * MB))
    assert c.state.directory.objects[ret(t2)].locations == ["a"]


def test_a_rebuild_needing_a_freed_input_says_so(c):
    fid = c.register()
    inp = c.put(b"i" * 20, SO(SO.VALUE, b"small input", []))
    t, worker = run_on(c, "b", fid, deps=[inp])
    c.send(c.driver, P.Release([inp]))
    c.finish(worker, t, stored(ret(t), 10 * MB))
    assert inp not in c.state.directory.objects
    lose(c, "b")
    c.send(c.driver, P.Subscribe([ret(t)]))
    kind, message = c.drain().values(c.driver)[ret(t)].value.read_system_error()
    assert kind == "ObjectLostError" and inp.hex() in message and "freed" in message


def test_a_queued_task_waits_while_its_input_is_rebuilt(c):
    fid = c.register()
    t1, w1 = run_on(c, "b", fid)
    c.finish(w1, t1, stored(ret(t1), 10 * MB))
    c.drain()
    busy, _ = run_on(c, "a", fid)  # a is busy: the consumer below stays queued
    [t2] = c.submit(fid, deps=[ret(t1)])
    c.drain()
    lose(c, "b")  # t1's result is gone; t1 runs again once a has room
    assert not c.drain().assignments()
    c.finish(c.node_workers["a"][0], busy)
    sent = c.drain()
    assert [a.task_id for a in sent.assignments()] == [t1]  # not t2: its input has no value
    c.finish(sent.assigned_to()[t1], t1, stored(ret(t1), 10 * MB))
    assert [a.task_id for a in c.drain().assignments()] == [t2]


def test_a_worker_that_cannot_read_an_input_gets_the_task_again_later(c):
    fid = c.register()
    inp = c.put(b"p" * 20, stored(b"p" * 20, 10 * MB, "b"))
    t, worker = run_on(c, "a", fid, deps=[inp])
    lost = SO.system_error("DependencyLost", f"{inp.hex()} no holder answered")
    c.send(worker, P.TaskResults([P.TaskResult(t, [lost], 0.0)]))
    assert not c.drain().assignments()  # not at once: its holder may be dead but not declared
    assert c.state.table.tasks[t].state == H.WAITING
    sent = c.tick(c.now + T.DEPENDENCY_RETRY_S + 0.01)
    assert [a.task_id for a in sent.assignments()] == [t]


def test_a_task_whose_input_stays_unreadable_fails_in_the_end(c):
    fid = c.register()
    inp = c.put(b"p" * 20, stored(b"p" * 20, 10 * MB, "b"))
    t, worker = run_on(c, "a", fid, deps=[inp])
    lost = SO.system_error("DependencyLost", f"{inp.hex()} no holder answered")
    for _ in range(T.MAX_DEPENDENCY_RETRIES + 1):
        c.send(worker, P.TaskResults([P.TaskResult(t, [lost], 0.0)]))
        sent = c.tick(c.now + T.DEPENDENCY_RETRY_MAX_S + 0.01)
        worker = sent.assigned_to().get(t, worker)
    assert t not in c.state.table.tasks
    kind, message = c.state.directory.objects[ret(t)].value.read_system_error()
    assert kind == "ObjectLostError" and "could not read its inputs" in message


# ---------------------------------------------------------------- owners that leave


def test_a_leaving_driver_s_pending_tasks_are_cancelled_and_a_running_one_killed(c):
    other = c.hello(b"driver-2", "driver")
    fid = c.register(owner=other)
    t_run = c.submit(fid, owner=other)[0]
    sent = c.drain()
    worker = sent.assigned_to()[t_run]
    queued = c.submit(fid, n=3, owner=other)  # more than the two CPUs: some wait in the queue
    c.drain()
    c.disconnect(other)  # the driver process is gone
    sent = c.drain()
    node_id = c.worker_info[worker][0]
    kills = sent.to(c.node_peer[node_id], P.KillWorker)
    assert [k.worker_id for k in kills] == [c.worker_info[worker][1]]
    assert not c.state.table.tasks and not c.state.directory.objects  # nothing left of it
    assert c.state.table.cancelled == 1 + len(queued)
    c.exited(worker)  # the agent reports the kill: no retry, a replacement starts
    sent = c.drain()
    assert not sent.assignments() and sent.to(c.node_peer[node_id], P.StartWorkers)


def test_a_task_whose_result_is_borrowed_runs_on_after_its_owner_left(c):
    other = c.hello(b"driver-2", "driver")
    fid = c.register(owner=other)
    [t] = c.submit(fid, owner=other)
    worker = c.drain().assigned_to()[t]
    c.send(c.driver, P.Borrow([ret(t)]))  # someone else holds a ref to its result
    c.disconnect(other)
    assert not c.drain().of(P.KillWorker) and t in c.state.table.tasks
    c.finish(worker, t, SO(SO.VALUE, b"still wanted", []))
    c.send(c.driver, P.Subscribe([ret(t)]))
    assert c.drain().values(c.driver)[ret(t)].value.data == b"still wanted"


def test_a_remote_driver_that_falls_silent_is_taken_as_gone(c):
    remote = b"driver-remote"
    c.send(remote, P.Hello(P.PROTOCOL_VERSION, "driver", {"heartbeat_s": 0.25}))
    fid = c.register(owner=remote)
    c.submit(fid, n=3, owner=remote)
    c.drain()
    for _ in range(3):  # it pings: alive
        c.send(remote, P.InfoRequest(0, "ping"))
        c.tick(c.now + 1.0, heartbeats=list(c.state.members.nodes))
    assert len(c.state.table.tasks) == 3
    c.tick(c.now + c.config.heartbeat_timeout_s + 0.1, heartbeats=list(c.state.members.nodes))
    assert not c.state.table.tasks and remote not in c.state.members.peers
    c.send(remote, P.InfoRequest(7, "nodes"))  # it was only slow: it is told, not ignored
    [refused] = c.drain().to(remote, P.Refused)
    assert "took this driver as gone" in refused.reason
