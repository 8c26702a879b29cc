"""The head's side of cancel() and timeout_s: which tasks fail, what the node agent is told,
and that the workers' other tasks are not charged a retry."""

from __future__ import annotations

from taskmesh import _protocol as P
from taskmesh._head.tasks import TIMEOUT_GRACE_S

from ..support.head import Cluster, build, ret


def _error(sent, peer, t):
    return sent.values(peer)[ret(t)].value.read_system_error()


def test_a_queued_task_is_dropped_and_never_runs():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    running, queued = c.submit(fid, 2)
    c.drain()
    c.send(c.driver, P.Cancel([ret(queued)], False))
    sent = c.drain()
    assert _error(sent, c.driver, queued) == (
        "TaskCancelledError", "task mod.f was cancelled by taskmesh.cancel()")
    worker = c.state.table.tasks[running].worker.peer
    c.finish(worker, running)
    assert queued not in c.drain().assigned_to()


def test_a_running_task_is_interrupted_through_its_node_agent():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    [t] = c.submit(fid)
    worker = c.drain().assigned_to()[t]
    c.send(c.driver, P.Cancel([ret(t)], False))
    sent = c.drain()
    [interrupt] = sent.to(c.node_peer["n1"], P.InterruptTask)
    assert interrupt.task_id == t and interrupt.worker_id == c.worker_info[worker][1]
    assert _error(sent, c.driver, t)[0] == "TaskCancelledError"
    # the worker's late error result is ignored; it is idle again and takes the next task
    c.finish(worker, t, P.SerializedObject.system_error("TaskCancelledError", "late"))
    [u] = c.submit(fid)
    assert c.drain().assigned_to() == {u: worker}


def test_force_kills_the_worker_and_its_other_tasks_run_again_without_losing_a_retry():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    c.warm(fid, 1e-4)  # short: the second task is pipelined behind the first
    first, second = c.submit(fid, 2)
    sent = c.drain()
    worker = sent.assigned_to()[first]
    assert sent.assigned_to()[second] == worker
    c.send(c.driver, P.Cancel([ret(first)], True))
    [kill] = c.drain().to(c.node_peer["n1"], P.KillWorker)
    assert kill.worker_id == c.worker_info[worker][1]
    c.exited(worker, -9)
    assert c.state.table.tasks[second].retries_left == 3  # not charged for the cancel's kill


def test_dependents_of_a_cancelled_task_fail_too():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    [parent] = c.submit(fid)
    [child] = c.submit(fid, deps=[ret(parent)])
    c.drain()
    c.send(c.driver, P.Cancel([ret(parent)], False))
    assert _error(c.drain(), c.driver, child)[0] == "TaskCancelledError"


def test_cancel_of_a_finished_or_unknown_task_does_nothing():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    [t] = c.submit(fid)
    worker = c.drain().assigned_to()[t]
    c.finish(worker, t)
    c.drain()
    c.send(c.driver, P.Cancel([ret(t), b"x" * 20], True))
    assert len(c.drain()) == 0


def test_a_task_past_its_timeout_that_its_worker_did_not_stop_is_killed():
    c = Cluster(heartbeat_timeout_s=1000.0)
    c.add_node("n1", cpus=1)
    fid = c.register()
    spec = build(P.TaskSpec, task_id=b"timed-task-00001", name="f", function_id=fid, args=None,
                 deps=[], num_returns=1, resources={"CPU": 10_000}, max_retries=3,
                 retry_exceptions=False, timeout_s=1.0)
    c.send(c.driver, P.Submit([spec]))
    worker = c.drain().assigned_to()[spec.task_id]
    assert [a.timeout_s for a in c.drain().assignments()] == []
    c.tick(1.0 + TIMEOUT_GRACE_S - 0.1)
    assert spec.task_id in c.state.table.tasks  # the worker's own timer gets the first chance
    sent = c.tick(1.0 + TIMEOUT_GRACE_S + 0.1)
    kind, message = _error(sent, c.driver, spec.task_id)
    assert kind == "TaskTimeoutError" and "timeout_s=1 s" in message and "killed" in message
    assert [m.worker_id for m in sent.to(c.node_peer["n1"], P.KillWorker)] == [
        c.worker_info[worker][1]]


def _child_spec(c, fid, parent: bytes, worker: bytes) -> P.TaskSpec:
    spec = c.spec(fid)._replace(parent=parent)
    c.send(worker, P.Submit([spec]))
    return spec


def test_a_recursive_cancel_stops_the_tree_of_tasks_the_task_submitted():
    c = Cluster()
    c.add_node("n1", cpus=3)
    fid = c.register()
    [root] = c.submit(fid)
    root_worker = c.drain().assigned_to()[root]
    child = _child_spec(c, fid, root, root_worker).task_id
    child_worker = c.drain().assigned_to()[child]
    grandchild = _child_spec(c, fid, child, child_worker).task_id
    [other] = c.submit(fid)  # not in the tree
    c.drain()
    c.send(c.driver, P.Cancel([ret(root)], False, True))
    sent = c.drain()
    for t in (root, child, grandchild):
        assert t not in c.state.table.tasks
    assert "its parent task mod.f was cancelled" in _error(sent, child_worker, grandchild)[1]
    interrupted = {m.task_id for m in sent.to(c.node_peer["n1"], P.InterruptTask)}
    assert interrupted >= {root, child}
    assert other in c.state.table.tasks and c.state.table.children == {}
    c.state.check_invariants()


def test_a_cancel_that_is_not_recursive_leaves_the_children_running():
    c = Cluster()
    c.add_node("n1", cpus=2)
    fid = c.register()
    [root] = c.submit(fid)
    root_worker = c.drain().assigned_to()[root]
    child = _child_spec(c, fid, root, root_worker).task_id
    c.drain()
    c.send(c.driver, P.Cancel([ret(root)], False, False))
    c.drain()
    assert root not in c.state.table.tasks and child in c.state.table.tasks


def test_the_children_of_a_long_running_task_are_pruned_as_they_end():
    c = Cluster(max_pipeline=1)
    c.add_node("n1", cpus=2)
    fid = c.register()
    [root] = c.submit(fid)
    root_worker = c.drain().assigned_to()[root]
    for _ in range(300):
        t = _child_spec(c, fid, root, root_worker).task_id
        worker = c.drain().assigned_to()[t]
        c.finish(worker, t)
        c.drain()
    assert len(c.state.table.children[root]) < 130  # not 300: ended ones are dropped as it grows
