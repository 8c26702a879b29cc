"""The head's object directory: which nodes hold stored objects, freeing copies, locality."""

from __future__ import annotations

import pytest

from taskmesh import _protocol as P

from ..support.head import MB, SO, Cluster, locations, ret, stored


@pytest.fixture
def c() -> Cluster:
    c = Cluster()
    for n in ("a", "b"):
        c.add_node(n, cpus=1)
        c.state.members.nodes[n].transfer = f"10.0.0.{ord(n)}:7400"
    c.drain()
    return c


def run_on(c: Cluster, node_id: str, fid: bytes, **kw) -> tuple[bytes, bytes]:
    """Submit one task and return (task id, worker peer) once it runs on ``node_id``."""
    [t] = c.submit(fid, **kw)
    worker = c.drain().assigned_to()[t]
    assert c.worker_info[worker][0] == node_id
    return t, worker


def test_a_stored_result_is_recorded_on_the_workers_node_and_its_owner_gets_the_marker(c):
    fid = c.register()
    [t] = c.submit(fid)
    worker = c.drain().assigned_to()[t]
    node_id = c.worker_info[worker][0]
    oid = ret(t)
    c.finish(worker, t, stored(oid, 50 * MB, "somewhere-else"))
    pushed = c.drain().values(c.driver)[oid]
    assert pushed.nbytes == 50 * MB
    assert pushed.value.is_stored  # the small marker is pushed even for a large object
    # the worker's node is the holder, whatever the marker claimed, with its transfer address
    assert locations(pushed.value) == [[node_id, c.state.members.nodes[node_id].transfer]]
    assert oid in c.state.members.nodes[node_id].objects


def test_a_put_marker_names_its_node_and_an_unknown_node_makes_it_lost(c):
    oid = c.put(b"p" * 20, stored(b"p" * 20, 10 * MB, "b"))
    c.send(c.driver, P.Subscribe([oid]))
    item = c.drain().values(c.driver)[oid]
    assert locations(item.value) == [["b", c.state.members.nodes["b"].transfer]]
    bad = c.put(b"q" * 20, stored(b"q" * 20, 10 * MB, "no-such-node"))
    c.send(c.driver, P.Subscribe([bad]))
    item = c.drain().values(c.driver)[bad]
    assert item.value.flags == SO.SYSTEM_ERROR
    kind, message = item.value.read_system_error()
    assert kind == "ObjectLostError" and "no-such-node" in message


def test_a_marker_for_another_object_is_refused(c):
    oid = c.put(b"p" * 20, stored(b"x" * 20, 10, "a"))
    c.send(c.driver, P.Subscribe([oid]))
    value = c.drain().values(c.driver)[oid].value
    assert value.flags == SO.SYSTEM_ERROR and "another object" in value.read_system_error()[1]


def test_releasing_a_stored_object_frees_every_copy(c):
    oid = c.put(b"p" * 20, stored(b"p" * 20, 10 * MB, "a"))
    c.send(c.node_peer["b"], P.ObjectLocations([[oid, 10 * MB]], []))
    assert c.state.directory.objects[oid].locations == ["a", "b"]
    c.drain()
    c.send(c.driver, P.Release([oid]))
    sent = c.drain()
    for n in ("a", "b"):
        assert sent.to(c.node_peer[n], P.FreeObjects) == [P.FreeObjects([oid])]
    assert oid not in c.state.directory.objects
    assert not c.state.members.nodes["a"].objects and not c.state.members.nodes["b"].objects


def test_a_stored_object_is_kept_while_a_pending_task_needs_it(c):
    fid = c.register()
    oid = c.put(b"p" * 20, stored(b"p" * 20, 10 * MB, "a"))
    t, worker = run_on(c, "a", fid, deps=[oid])
    c.send(c.driver, P.Release([oid]))
    assert not c.drain().of(P.FreeObjects)
    c.finish(worker, t)
    assert c.drain().to(c.node_peer["a"], P.FreeObjects) == [P.FreeObjects([oid])]


def test_a_stored_result_nobody_wants_is_freed_on_its_node(c):
    fid = c.register()
    t, worker = run_on(c, "a", fid)
    c.send(c.driver, P.Release([ret(t)]))
    c.drain()
    c.finish(worker, t, stored(ret(t), 5 * MB))
    assert c.drain().to(c.node_peer["a"], P.FreeObjects) == [P.FreeObjects([ret(t)])]
    assert ret(t) not in c.state.directory.objects


def test_a_fetched_copy_of_a_dropped_object_is_freed_at_once(c):
    c.send(c.node_peer["b"], P.ObjectLocations([[b"gone" * 5, 100]], []))
    assert c.drain().to(c.node_peer["b"], P.FreeObjects) == [P.FreeObjects([b"gone" * 5])]


def test_readers_learn_about_new_copies(c):
    oid = c.put(b"p" * 20, stored(b"p" * 20, 10 * MB, "a"))
    c.send(c.node_peer["b"], P.ObjectLocations([[oid, 10 * MB]], []))
    c.send(c.driver, P.Subscribe([oid]))
    item = c.drain().values(c.driver)[oid]
    assert [n for n, _ in locations(item.value)] == ["a", "b"]


def test_losing_the_last_copy_makes_the_object_lost_naming_the_node(c):
    oid = c.put(b"p" * 20, stored(b"p" * 20, 10 * MB, "a"))
    c.send(c.node_peer["b"], P.ObjectLocations([[oid, 10 * MB]], []))
    c.send(c.node_peer["b"], P.ObjectLocations([], [oid]))  # e.g. its restore from disk failed
    assert c.state.directory.objects[oid].locations == ["a"]
    c.send(c.node_peer["a"], P.Goodbye())  # its agent stopped: lost now
    c.send(c.driver, P.Subscribe([oid]))
    value = c.drain().values(c.driver)[oid].value
    kind, message = value.read_system_error()
    assert kind == "ObjectLostError" and "node a" in message and oid.hex() in message


def test_a_task_goes_to_the_node_holding_most_of_its_argument_bytes(c):
    fid = c.register()
    small = c.put(b"s" * 20, stored(b"s" * 20, 1 * MB, "a"))
    big = c.put(b"b" * 20, stored(b"b" * 20, 50 * MB, "b"))
    for _ in range(3):
        t, worker = run_on(c, "b", fid, deps=[small, big])
        c.finish(worker, t)
        c.drain()
    t, worker = run_on(c, "a", fid, deps=[small])
    c.finish(worker, t)


def test_a_saturated_holder_is_passed_over(c):
    fid = c.register()
    big = c.put(b"b" * 20, stored(b"b" * 20, 50 * MB, "b"))
    first, _ = run_on(c, "b", fid, deps=[big])  # b's only CPU is busy now
    second, _ = run_on(c, "a", fid, deps=[big])  # so the next one goes to a
    assert first != second


def test_large_arguments_stored_by_value_are_sent_with_their_holders_and_count_for_locality(c):
    fid = c.register()
    args_id = c.put(b"a" * 20, stored(b"a" * 20, 30 * MB, "b"))
    spec = c.spec(fid)._replace(args=SO(SO.STORED, stored(args_id, 30 * MB).data, [], [args_id]))
    c.send(c.driver, P.Submit([spec]))
    c.send(c.driver, P.Release([args_id]))  # the driver keeps no ref: the task holds them
    sent = c.drain()
    [a] = sent.assignments()
    worker = sent.assigned_to()[spec.task_id]
    assert c.worker_info[worker][0] == "b"  # where the arguments are
    assert locations(a.args) == [["b", c.state.members.nodes["b"].transfer]]
    c.finish(worker, spec.task_id)
    assert c.drain().to(c.node_peer["b"], P.FreeObjects) == [P.FreeObjects([args_id])]
