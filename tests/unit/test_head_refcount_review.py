"""A reviewer's probes of the head's object directory and reference counts (sans-IO): bad input
from clients and nodes, and the bugs that review found (fixed; these tests keep them fixed).
"""

from __future__ import annotations

import msgpack
import pytest

from taskmesh import _protocol as P

from ..support.head import MB, SHORT, SO, Cluster, locations, ret, stored, value


@pytest.fixture
def c() -> Cluster:
    c = Cluster()
    for n in ("a", "b"):
        c.add_node(n, cpus=1)
        c.state.members.nodes[n].transfer = f"10.0.0.{ord(n)}:7400"
    c.drain()
    return c


def subscribed_value(c: Cluster, oid: bytes, peer: bytes | None = None) -> SO:
    peer = peer or c.driver
    c.send(peer, P.Subscribe([oid]))
    return c.drain().values(peer)[oid].value


# =========================================================================== bugs


def test_a_copy_reported_after_the_last_known_copy_was_lost_is_kept(c):
    """Node b fetched x from node a (the only holder the head knew) and reports the copy with
    ObjectLocations; but the head processed a's loss first (a's agent died right after serving:
    on the head's machine its closed connection is seen at once). The head has turned x into
    an ObjectLostError value with ``locations = None``, so ``_on_object_locations`` takes b's
    report for "freed meanwhile" and answers FreeObjects: the only surviving copy of x is
    deleted and every reader gets ObjectLostError although the bytes were there. The report
    should make b the holder again (the object is known: only its copies were)."""
    oid = c.put(b"x" * 20, stored(b"x" * 20, 10 * MB, "a"))
    c.drain()
    c.send(c.node_peer["a"], P.Goodbye())  # its agent stopped: lost now
    c.send(c.node_peer["b"], P.ObjectLocations([[oid, 10 * MB]], []))
    sent = c.drain()
    assert sent.to(c.node_peer["b"], P.FreeObjects) == []
    value = subscribed_value(c, oid)
    assert value.is_stored and [n for n, _ in locations(value)] == ["b"]


def test_a_put_cannot_set_the_result_of_another_owners_pending_task(c):
    """A Put names its object id, and the head takes it whenever the object has no value yet
    (``_on_put``): it does not check that the id is the sender's (ids start with their owner's
    prefix) or that the object is not a task's return. A buggy or hostile client can thus
    answer someone else's pending task: tasks waiting for it run with the forged value, and
    since a value that exists is kept (``_set_value``: "a re-run made again what still
    exists: keep the first"), the task's real result is dropped when it arrives."""
    fid = c.register()
    [t] = c.submit(fid)
    worker = c.drain().assigned_to()[t]
    stranger = c.hello(b"driver-2", "driver")
    c.send(stranger, P.Put([(ret(t), value(b"forged"))]))
    c.finish(worker, t, value(b"real"))
    assert c.state.directory.objects[ret(t)].value.data == b"real"
    assert c.drain().values(c.driver)[ret(t)].value.data == b"real"


# =========================================================================== bad input: verified


@pytest.mark.parametrize("data", [
    b"\xc1 not msgpack",
    msgpack.packb(["not bytes", 10, []]),
    msgpack.packb([b"m" * 20, -1, []]),
    msgpack.packb([b"m" * 20, 10, [["a"]]]),
    msgpack.packb([b"m" * 20, 10, [[1, 2]]]),
    msgpack.packb([b"m" * 20, 10]),
], ids=["garbage", "id-not-bytes", "negative-size", "short-location", "location-not-str",
        "two-fields"])
def test_a_corrupt_stored_marker_in_a_put_becomes_an_error_value(c, data):
    """A Put whose STORED marker is malformed: readers get a TaskmeshError naming the object
    (no hang, no crash); no node is told anything; the object goes with its owner's Release."""
    oid = b"m" * 20
    c.put(oid, SO(SO.STORED, data))
    sent = c.drain()
    assert not sent.of(P.FreeObjects)
    v = subscribed_value(c, oid)
    assert v.flags == SO.SYSTEM_ERROR
    kind, message = v.read_system_error()
    assert kind == "TaskmeshError" and oid.hex() in message and "marker" in message
    assert c.state.directory.objects[oid].locations is None
    assert not any(c.state.members.nodes[n].objects for n in ("a", "b"))
    c.send(c.driver, P.Release([oid]))
    assert c.alive(oid) == [False]
    assert not c.drain().of(P.FreeObjects)


def test_a_task_with_a_corrupt_stored_argument_fails_its_dependents(c):
    """A corrupt marker used as a dependency fails the task (no Execute with garbage)."""
    fid = c.register()
    oid = c.put(b"m" * 20, SO(SO.STORED, b"\xc1"))
    [t] = c.submit(fid, deps=[oid])
    sent = c.drain()
    assert not sent.assignments()
    item = sent.values(c.driver)[ret(t)]
    assert item.value.flags == SO.SYSTEM_ERROR


def test_borrow_and_release_of_unknown_ids_change_nothing(c):
    c.put(b"x" * 20, value(b"X"))
    other = c.hello(b"driver-2", "driver")
    before = set(c.state.directory.objects)
    c.send(other, P.Borrow([b"unknown-1" * 2, b"unknown-2" * 2]))
    c.send(other, P.Release([b"unknown-1" * 2, b"unknown-3" * 2]))
    c.send(c.driver, P.Release([b"unknown-4" * 2]))
    assert set(c.state.directory.objects) == before
    assert not c.drain().of(P.FreeObjects)


def test_a_borrowers_release_of_an_object_it_did_not_borrow_changes_nothing(c):
    """A peer that borrowed x releases y, which it never borrowed (and does not own): y stays
    (its owner holds it), x stays (the borrow was not released), and nothing breaks."""
    other = c.hello(b"driver-2", "driver")
    c.put(b"x" * 20, value(b"X"))
    c.put(b"y" * 20, value(b"Y"))
    c.send(other, P.Borrow([b"x" * 20]))
    c.send(c.driver, P.Release([b"x" * 20]))
    c.send(other, P.Release([b"y" * 20]))
    assert c.alive(b"x" * 20, b"y" * 20) == [True, True]
    c.send(other, P.Release([b"x" * 20, b"x" * 20]))  # the second one is a no-op
    assert c.alive(b"x" * 20, b"y" * 20) == [False, True]


def test_a_borrow_that_arrives_after_the_object_was_dropped_is_ignored(c):
    c.put(b"x" * 20, value(b"X"))
    c.send(c.driver, P.Release([b"x" * 20]))
    other = c.hello(b"driver-2", "driver")
    c.send(other, P.Borrow([b"x" * 20]))
    assert c.alive(b"x" * 20) == [False]
    assert b"x" * 20 not in c.state.directory.borrowed.get(other, set())
    c.send(other, P.Release([b"x" * 20]))
    assert c.alive(b"x" * 20) == [False]


def test_a_repeated_release_by_the_owner_is_harmless(c):
    """An owner's second Release (or one for an object another value still holds) frees
    nothing more than the counts say."""
    c.put(b"i" * 20, value(b"I"))
    c.put(b"o" * 20, SO(SO.VALUE, b"outer", [], [b"i" * 20]))
    c.send(c.driver, P.Release([b"i" * 20, b"i" * 20]))
    assert c.alive(b"i" * 20) == [True]
    c.send(c.driver, P.Release([b"o" * 20]))
    assert c.alive(b"i" * 20, b"o" * 20) == [False, False]


def test_object_locations_for_unknown_and_inline_objects_and_duplicates(c):
    """A node reporting copies the head does not count (unknown, or a small inline value) is
    told to free them; a removal of an unknown id is ignored; a copy reported twice is one
    holder."""
    inline = c.put(b"s" * 20, value(b"small"))
    big = c.put(b"p" * 20, stored(b"p" * 20, 10 * MB, "a"))
    c.drain()
    c.send(c.node_peer["b"], P.ObjectLocations([[b"u" * 20, 5], [inline, 5]], [b"v" * 20]))
    sent = c.drain()
    freed = [oid for m in sent.to(c.node_peer["b"], P.FreeObjects) for oid in m.object_ids]
    assert sorted(freed) == sorted([b"u" * 20, inline])
    assert c.state.directory.objects[inline].value.data == b"small"
    c.send(c.node_peer["b"], P.ObjectLocations([[big, 10 * MB]], []))
    c.send(c.node_peer["b"], P.ObjectLocations([[big, 10 * MB]], []))
    assert c.state.directory.objects[big].locations == ["a", "b"]
    c.send(c.node_peer["a"], P.ObjectLocations([], [big]))  # a lost its copy: b still has one
    v = subscribed_value(c, big)
    assert v.is_stored and [n for n, _ in locations(v)] == ["b"]


def test_a_workers_borrows_go_when_its_node_reports_its_exit(c):
    fid = c.register()
    [t] = c.submit(fid)
    worker = c.drain().assigned_to()[t]
    c.put(b"x" * 20, stored(b"x" * 20, 10 * MB, "a"))
    c.send(worker, P.Borrow([b"x" * 20]))
    c.send(c.driver, P.Release([b"x" * 20]))
    c.drain()
    assert c.alive(b"x" * 20) == [True]
    c.exited(worker)
    assert c.alive(b"x" * 20) == [False]
    assert c.drain().to(c.node_peer["a"], P.FreeObjects) == [P.FreeObjects([b"x" * 20])]


def test_refs_in_a_stored_result_of_a_retried_task_are_held_by_its_arguments(c):
    """A task whose arguments carry a nested ref, retried after its worker died: the argument's
    hold keeps the inner object through the retry, and goes when the retry ends."""
    fid = c.register()
    c.put(b"i" * 20, stored(b"i" * 20, 10 * MB, "a"))
    spec = c.spec(fid)._replace(args=SO(SO.VALUE, b"args", [], [b"i" * 20]))
    c.send(c.driver, P.Submit([spec]))
    worker = c.drain().assigned_to()[spec.task_id]
    c.send(worker, P.Borrow([b"i" * 20]))
    c.send(c.driver, P.Release([b"i" * 20]))
    c.exited(worker)  # SIGKILLed: retried
    c.add_worker(c.worker_info[worker][0])
    retry = c.drain().assigned_to()
    assert c.alive(b"i" * 20) == [True]
    [(tid, w2)] = retry.items()
    assert tid == spec.task_id
    c.finish(w2, spec.task_id)
    assert c.alive(b"i" * 20) == [False]


def test_a_task_queued_behind_a_cancelled_one_is_not_charged_with_its_workers_kill():
    """When a driver leaves, ``_cancel`` removes its running task from the worker's list and
    asks the node to SIGKILL the worker. A short task of another driver pipelined behind it is
    now first in ``w.assigned``, so the WorkerExited that follows makes ``_worker_lost`` treat
    it as "the one it was running": its retries are charged, and with max_retries=0 it fails
    with WorkerCrashedError although it never started (nor did it have anything to do with
    the driver that left)."""

    c = Cluster()
    c.add_node("a", cpus=1)
    c.drain()
    fid = c.register()
    c.warm(fid, SHORT)  # a short function: tasks pipeline behind a running one
    leaving = c.hello(b"driver-2", "driver")
    [t_leaving] = c.submit(fid, owner=leaving)
    worker = c.drain().assigned_to()[t_leaving]
    [t_mine] = c.submit(fid, max_retries=0)
    assert c.drain().assigned_to() == {t_mine: worker}  # queued behind the running one
    c.disconnect(leaving)
    assert c.drain().of(P.KillWorker)
    c.exited(worker)
    sent = c.drain()
    assert ret(t_mine) not in sent.values(c.driver)  # no WorkerCrashedError for it
    assert t_mine in c.state.table.tasks
