"""Distributed reference counting at the head: owners, borrowers, pending tasks, nested refs."""

from __future__ import annotations

from taskmesh import _protocol as P

from ..support.head import MB, SO, Cluster, ret, stored, value

import pytest


@pytest.fixture
def c() -> Cluster:
    c = Cluster()
    c.add_node("a", cpus=1)
    c.drain()
    return c


def with_refs(*inner: bytes, data: bytes = b"outer") -> SO:
    """A value whose pickle contains refs to ``inner``."""
    return SO(SO.VALUE, data, [], list(inner))


def test_a_ref_inside_a_put_value_keeps_its_object_until_the_container_goes(c):
    c.put(b"inner", value(b"I"))
    c.put(b"outer", with_refs(b"inner"))
    c.send(c.driver, P.Release([b"inner"]))
    assert c.alive(b"inner", b"outer") == [True, True]
    c.send(c.driver, P.Release([b"outer"]))
    assert c.alive(b"inner", b"outer") == [False, False]


def test_a_stored_inner_object_is_freed_on_its_node_with_its_container(c):
    c.put(b"inner", stored(b"inner", 10 * MB, "a"))
    c.put(b"outer", with_refs(b"inner"))
    c.send(c.driver, P.Release([b"inner"]))
    assert not c.drain().of(P.FreeObjects)
    c.send(c.driver, P.Release([b"outer"]))
    assert c.drain().to(c.node_peer["a"], P.FreeObjects) == [P.FreeObjects([b"inner"])]


def test_refs_nested_in_task_arguments_live_until_the_task_ends(c):
    fid = c.register()
    c.put(b"inner", value(b"I"))
    spec = c.spec(fid)._replace(args=with_refs(b"inner", data=b"args"))
    c.send(c.driver, P.Submit([spec]))
    worker = c.drain().assigned_to()[spec.task_id]
    c.send(c.driver, P.Release([b"inner"]))
    assert c.alive(b"inner") == [True]
    c.finish(worker, spec.task_id)
    assert c.alive(b"inner") == [False]


def test_a_borrower_keeps_an_object_until_it_releases_or_leaves(c):
    other = c.hello(b"driver-2", "driver")
    for oid in (b"x", b"y"):
        c.put(oid, value(oid))
    c.send(other, P.Borrow([b"x", b"y"]))
    c.send(c.driver, P.Release([b"x", b"y"]))
    assert c.alive(b"x", b"y") == [True, True]
    c.send(other, P.Release([b"x"]))
    assert c.alive(b"x", b"y") == [False, True]
    c.send(other, P.Goodbye())
    assert c.alive(b"y") == [False]


def test_a_release_from_a_stranger_changes_nothing(c):
    stranger = c.hello(b"driver-2", "driver")
    c.put(b"x", value(b"X"))
    c.send(stranger, P.Release([b"x"]))
    assert c.alive(b"x") == [True]


def test_refs_inside_a_task_result_are_held_by_the_result(c):
    fid = c.register()
    c.put(b"inner", value(b"I"))
    [t] = c.submit(fid)
    worker = c.drain().assigned_to()[t]
    c.finish(worker, t, with_refs(b"inner", data=b"result"))
    c.send(c.driver, P.Release([b"inner"]))
    assert c.alive(b"inner") == [True]
    c.send(c.driver, P.Release([ret(t)]))
    assert c.alive(b"inner", ret(t)) == [False, False]


def test_a_long_chain_of_nested_refs_is_freed_without_recursion(c):
    n = 5000
    c.put(b"0", value(b"leaf"))
    for i in range(1, n):
        c.put(str(i).encode(), with_refs(str(i - 1).encode()))
    c.send(c.driver, P.Release([str(i).encode() for i in range(n - 1)]))
    assert len(c.state.directory.objects) == n
    c.send(c.driver, P.Release([str(n - 1).encode()]))
    assert len(c.state.directory.objects) == 0


def test_an_object_owned_by_a_driver_that_left_lives_on_while_borrowed(c):
    leaving = c.hello(b"driver-2", "driver")
    c.put(b"x", value(b"X"), owner=leaving)
    c.send(c.driver, P.Borrow([b"x"]))
    c.disconnect(leaving)
    assert c.alive(b"x") == [True]
    c.send(c.driver, P.Release([b"x"]))
    assert c.alive(b"x") == [False]
