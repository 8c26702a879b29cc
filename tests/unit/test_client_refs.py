"""The client's object bookkeeping (taskmesh/_client/refs.py), driven directly: no sockets,
no threads, time passed in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmesh import _protocol as P
from taskmesh._client.refs import _RELEASE_BATCH, _RELEASE_EVERY_S, Credits, RefTable

OTHER = b"\x99" * 8  # another process's id prefix


@pytest.fixture
def refs() -> RefTable:
    table = RefTable(b"\x01" * 8)
    yield table
    table.check_invariants()


def value(data: bytes = b"v") -> P.SerializedObject:
    return P.SerializedObject(P.SerializedObject.VALUE, data, [])


def error() -> P.SerializedObject:
    return P.SerializedObject.system_error("TaskmeshError", "no")


def other(n: int) -> bytes:
    return OTHER + n.to_bytes(12, "big")


# --------------------------------------------------------------------------- ids


def test_ids_carry_the_prefix_and_are_owned(refs):
    a, b = refs.next_task_id(), refs.next_task_id()
    assert a != b and len(a) == 16 and a[:8] == refs.prefix
    oid = refs.new_object_id()
    assert len(oid) == 20 and oid.endswith(b"\0\0\0\0")
    assert refs.owns(a) and refs.owns(oid) and not refs.owns(other(1))


# --------------------------------------------------------------------------- counting


def test_an_owned_object_is_released_when_its_last_ref_died(refs):
    oid = refs.new_object_id()
    refs.new_refs([oid, oid])
    refs.put(oid, value())
    refs.died(oid)
    assert refs.collect_dead(0.0) is None  # one ref still lives
    assert refs.counts[oid] == 1 and oid in refs.values
    refs.died(oid)
    assert refs.collect_dead(1.0) == P.Release([oid])
    assert refs.is_empty()


def test_a_borrow_is_said_once_and_released_with_the_last_ref(refs):
    oid = other(1)
    assert refs.borrow(oid) == P.Borrow([oid])
    assert refs.borrow(oid) is None  # the head knows already
    refs.died(oid)
    refs.died(oid)
    assert refs.collect_dead(0.0) == P.Release([oid])
    assert oid not in refs.borrowed
    assert refs.borrow(oid) == P.Borrow([oid])  # borrowed again later: said again
    refs.died(oid)
    refs.collect_dead(1.0)


def test_a_ref_to_our_own_object_unpickled_after_we_released_it_borrows_it(refs):
    oid = refs.new_object_id()
    assert refs.borrow(oid) == P.Borrow([oid])
    refs.new_refs([oid])
    assert refs.borrow(oid) is None  # refs live here already: the head counts us
    for _ in range(3):
        refs.died(oid)
    assert refs.collect_dead(0.0) == P.Release([oid])


def test_an_escaped_ref_is_never_released_nor_borrowed(refs):
    mine, theirs = refs.new_object_id(), other(2)
    refs.new_refs([mine])
    refs.escape(mine)
    refs.escape(theirs)
    assert refs.borrow(theirs) is None
    refs.died(mine)
    refs.died(theirs)
    assert refs.collect_dead(0.0) is None
    assert not refs.counts  # forgotten here, but never released to the head


def test_another_owners_object_never_borrowed_is_not_released(refs):
    oid = other(3)
    refs.new_refs([oid])  # e.g. an actor handle made here for another owner's id
    refs.died(oid)
    assert refs.collect_dead(0.0) is None and not refs.counts


def test_the_last_ref_dying_forgets_the_value_and_every_wait_record(refs):
    oid = refs.new_object_id()
    refs.new_refs([oid])
    refs.submitted([oid])
    refs.apply_values([P.ObjectValue(oid, None, 0)])  # ready at the head, value not pushed
    assert oid in refs.ready_remote
    refs.died(oid)
    refs.collect_dead(0.0)
    assert refs.is_empty()


# --------------------------------------------------------------------------- release batching


def test_releases_wait_for_the_interval_unless_a_batch_piled_up(refs):
    oids = [refs.new_object_id() for _ in range(_RELEASE_BATCH)]
    refs.new_refs(oids)
    assert not refs.release_due(0.0)  # nothing dead
    refs.died(oids[0])
    assert refs.release_due(0.0)  # never collected yet: due at once
    assert refs.collect_dead(10.0) == P.Release([oids[0]])
    assert refs.next_release == 10.0 + _RELEASE_EVERY_S
    refs.died(oids[1])
    assert not refs.release_due(10.0 + _RELEASE_EVERY_S / 2)
    assert refs.release_due(10.0 + _RELEASE_EVERY_S)
    for oid in oids[2:]:  # a full batch (255 + 1 waiting) goes at once
        refs.died(oid)
    assert len(refs.dead) == _RELEASE_BATCH - 1
    assert not refs.release_due(10.0)
    args = refs.new_object_id()  # a task's stored arguments: no ref here, the owner's hold
    refs.died(args)  # (CoreClient.submit lets it go once the Submit is queued)
    assert refs.release_due(10.0)
    release = refs.collect_dead(10.0)
    assert release is not None and release.object_ids == oids[1:] + [args]


def test_release_soon_makes_the_next_collection_due(refs):
    oid = refs.new_object_id()
    refs.new_refs([oid, oid])
    refs.died(oid)
    refs.collect_dead(5.0)
    refs.died(oid)
    assert not refs.release_due(5.1)
    refs.release_soon()
    assert refs.release_due(5.1)
    assert refs.collect_dead(5.1) == P.Release([oid])


def test_drop_dead_forgets_the_queue(refs):
    oid = refs.new_object_id()
    refs.new_refs([oid])
    refs.died(oid)
    refs.drop_dead()
    assert not refs.release_due(100.0) and refs.counts[oid] == 1
    refs.died(oid)
    refs.collect_dead(100.0)


# --------------------------------------------------------------------------- values and waits


def test_values_are_kept_only_for_objects_held_or_waited_for(refs):
    held, waited, nobody = refs.new_object_id(), other(1), other(2)
    refs.new_refs([held])
    refs.submitted([held])
    assert refs.want([waited]) == P.Subscribe([waited])
    subs = refs.apply_values([P.ObjectValue(held, value(b"h"), 0), P.ObjectValue(waited, value(b"w"), 0),
                              P.ObjectValue(nobody, value(b"n"), 0)])
    assert subs == [] and set(refs.values) == {held, waited}
    assert held not in refs.pending_owned
    refs.unwant([waited])
    refs.forget_value(waited)
    refs.died(held)
    refs.collect_dead(0.0)
    assert refs.is_empty()


def test_our_pending_results_are_not_subscribed_but_others_are_once(refs):
    mine, theirs = refs.new_object_id(), other(1)
    refs.new_refs([mine])
    refs.submitted([mine])
    assert refs.want([mine]) is None  # comes by itself
    assert refs.want([theirs]) == P.Subscribe([theirs])
    assert refs.want([theirs]) is None  # a second waiter: asked already
    assert refs.wanted[theirs] == 2
    refs.unwant([theirs])
    assert refs.wanted[theirs] == 1
    refs.unwant([theirs, mine])
    assert not refs.wanted
    refs.forget_value(theirs)
    refs.died(mine)
    refs.collect_dead(0.0)


def test_a_ready_value_without_payload_is_subscribed_when_waited_for(refs):
    oid = refs.new_object_id()
    refs.new_refs([oid])
    refs.submitted([oid])
    assert refs.want([oid]) is None
    assert refs.apply_values([P.ObjectValue(oid, None, 0)]) == [P.Subscribe([oid])]
    assert refs.apply_values([P.ObjectValue(oid, None, 0)]) == []  # asked already
    assert refs.ready([oid]) == {oid}
    # a wait() needs readiness only: nothing to ask for; a get() needs the value
    refs.unwant([oid])
    refs.forget_value(oid)
    refs.ready_remote.add(oid)
    assert refs.want([oid], values_needed=False) is None
    refs.unwant([oid])
    assert refs.want([oid]) == P.Subscribe([oid])
    refs.unwant([oid])
    refs.died(oid)
    refs.collect_dead(0.0)


def test_arrived_waits_for_all_or_fails_fast_on_an_error(refs):
    a, b, c = (refs.new_object_id() for _ in range(3))
    refs.new_refs([a, b, c])
    refs.submitted([a, b, c])
    every = refs.arrived([a, b, c], fail_fast=False)
    fast = refs.arrived([a, b, c], fail_fast=True)
    assert not every() and not fast()
    refs.apply_values([P.ObjectValue(a, value(), 0)])
    assert not every() and not fast()
    refs.apply_values([P.ObjectValue(c, error(), 0)])
    assert refs.errors_in == 1
    assert not every() and fast()
    refs.apply_values([P.ObjectValue(b, value(), 0)])
    assert every()


def test_a_rejected_task_gives_its_held_results_the_error(refs):
    held, gone = refs.new_object_id(), refs.new_object_id()
    refs.new_refs([held])
    refs.submitted([held, gone])
    assert refs.rejected([held, gone], error()) == 1
    assert refs.values[held].is_error and gone not in refs.values and refs.errors_in == 1
    refs.died(held)
    assert refs.collect_dead(0.0) == P.Release([held])
    assert refs.pending_owned == {gone}  # never announced: stays until the head says
    refs.apply_values([P.ObjectValue(gone, None, 0)])
    assert refs.is_empty()


def test_invariants_catch_contradictions(refs):
    oid = other(4)
    refs.borrowed.add(oid)  # a borrow with no ref behind it
    with pytest.raises(AssertionError):
        refs.check_invariants()
    refs.borrowed.clear()
    refs.counts[oid] = 0
    with pytest.raises(AssertionError):
        refs.check_invariants()
    refs.counts.clear()


# --------------------------------------------------------------------------- credits


def test_credits_let_max_pending_tasks_through_then_wait_for_the_head():
    credits = Credits(2)
    assert credits.take() and credits.take()
    assert not credits.take() and not credits.ok  # the third waits
    credits.give(1)
    assert credits.ok
    credits.give(2)
    credits.check_invariants()
    credits.give(1)
    with pytest.raises(AssertionError):
        credits.check_invariants()


# --------------------------------------------------------------------------- random sequences

_IDS = [b"\x01" * 8 + bytes([i]) * 12 for i in range(3)] + [other(i) for i in range(3)]
_OPS = st.lists(st.tuples(st.sampled_from(["new", "borrow", "die", "collect", "escape",
                                           "value", "want", "unwant"]),
                          st.sampled_from(_IDS), st.floats(0, 1)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_any_sequence_keeps_the_invariants_and_releases_each_hold_once(ops):
    """Against a model: refs alive per object; a collection releases exactly the objects whose
    last ref died, that we own or borrowed, and that did not escape."""
    refs = RefTable(b"\x01" * 8)
    alive: dict[bytes, int] = {}
    queued: list[bytes] = []
    said_borrow: set[bytes] = set()
    escaped: set[bytes] = set()
    waits: list[bytes] = []
    now = 0.0
    for op, oid, dt in ops:
        now += dt
        if op == "new":
            refs.new_refs([oid])
            alive[oid] = alive.get(oid, 0) + 1
        elif op == "borrow":
            first = alive.get(oid, 0) == 0 and oid not in said_borrow and oid not in escaped
            assert (refs.borrow(oid) is not None) == first
            if first:
                said_borrow.add(oid)
            alive[oid] = alive.get(oid, 0) + 1
        elif op == "die" and alive.get(oid, 0) > len([q for q in queued if q == oid]):
            refs.died(oid)
            queued.append(oid)
        elif op == "collect" and refs.release_due(now):
            release = refs.collect_dead(now)
            expected = []
            for q in queued:
                alive[q] -= 1
                if alive[q] == 0:
                    del alive[q]
                    if q in escaped:
                        continue
                    if q in said_borrow:
                        said_borrow.discard(q)
                        expected.append(q)
                    elif refs.owns(q):
                        expected.append(q)
            queued.clear()
            assert (release.object_ids if release else []) == expected
            assert refs.counts == alive
        elif op == "escape":
            refs.escape(oid)
            escaped.add(oid)
        elif op == "value":
            refs.apply_values([P.ObjectValue(oid, value(), 0)])
            if oid in alive or oid in waits:
                assert oid in refs.values
        elif op == "want":
            refs.want([oid])
            waits.append(oid)
        elif op == "unwant" and oid in waits:
            waits.remove(oid)
            refs.unwant([oid])
        refs.check_invariants()
