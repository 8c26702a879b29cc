"""The object store's sans-IO bookkeeping: create/seal/pin, spilling under pressure, restores, failures.

Each test plays the shell: it calls StoreState's methods and reads the commands they return.
The stateful property test at the end runs random histories (failed spills and restores
included) against a model of what the shell was told, checking after every step that nothing
pinned is spilled or freed, nothing sealed is lost unless its restore failed, an object whose
spill failed stays in memory and is not spilled again too soon, and memory use stays within the
capacity.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from taskmesh._store.state import (
    Created,
    CreateFailed,
    Freed,
    PinFailed,
    Pinned,
    Restore,
    Spill,
    StoreState,
    Waiting,
)

U = 64  # one allocation unit (the default alignment)
W, R, R2 = b"writer", b"reader", b"reader-2"


def oid(n: int) -> bytes:
    return n.to_bytes(4, "big")


def store(units: int = 8, timeout: float = 5.0) -> StoreState:
    return StoreState(units * U, create_timeout_s=timeout)


def of(cmds: list, cls: type) -> list:
    return [c for c in cmds if type(c) is cls]


def put(s: StoreState, n: int, units: int = 1, client: bytes = W, now: float = 0.0) -> int:
    """Create and seal object n of ``units`` units; return its offset."""
    cmds = s.create(oid(n), units * U, client, now)
    assert cmds == [Created(oid(n), client, cmds[0].offset, units * U)], cmds
    assert s.seal(oid(n)) == []
    s.check()
    return cmds[0].offset


# --------------------------------------------------------------------------- create, seal, pin


def test_create_seal_pin_unpin():
    s = store()
    [created] = s.create(oid(1), 100, W, now=0.0)
    assert created == Created(oid(1), W, 0, 100)
    assert s.info(oid(1)).state == "created"
    assert s.seal(oid(1)) == []
    assert s.pin(oid(1), R) == [Pinned(oid(1), R, 0, 100)]
    assert s.pin(oid(1), R) == [Pinned(oid(1), R, 0, 100)]
    info = s.info(oid(1))
    assert (info.state, info.pins, info.offset) == ("in memory", 2, 0)
    assert s.stats()["pinned_bytes"] == 2 * U and s.stats()["num_pinned"] == 1
    assert s.unpin(oid(1), R) == [] and s.unpin(oid(1), R) == []
    assert s.stats()["pinned_bytes"] == 0
    s.check()


def test_zero_size_object_gets_a_block():
    s = store()
    [created] = s.create(oid(1), 0, W, 0.0)
    assert created.size == 0
    assert s.stats()["used_bytes"] == U


def test_commands_are_frozen_dataclasses():
    c = Created(oid(1), W, 0, 1)
    assert dataclasses.is_dataclass(c)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.offset = 5  # type: ignore[misc]


def test_create_of_an_existing_id_fails():
    s = store()
    put(s, 1)
    [failed] = s.create(oid(1), 10, R, 0.0)
    assert type(failed) is CreateFailed and failed.client == R and "already exists" in failed.reason
    s.check()


def test_object_larger_than_the_capacity_fails_at_once():
    s = store(units=4)
    [failed] = s.create(oid(1), 4 * U + 1, W, 0.0)
    assert type(failed) is CreateFailed
    assert str(4 * U + 1) in failed.reason and "larger than this node's object store (256 bytes)" in failed.reason
    assert s.info(oid(1)) is None and s.stats()["num_waiting"] == 0
    s.check()


def test_pin_of_an_unsealed_object_waits_for_the_seal():
    s = store()
    s.create(oid(1), 10, W, 0.0)
    assert s.pin(oid(1), R) == [Waiting(oid(1), R)]
    s.check()
    assert s.seal(oid(1)) == [Pinned(oid(1), R, 0, 10)]
    s.check()


def test_pin_of_an_unknown_object_fails():
    [failed] = store().pin(oid(9), R)
    assert type(failed) is PinFailed and "not in this node's object store" in failed.reason


def test_misuse_raises_value_error_and_changes_nothing():
    s = store()
    put(s, 1)
    s.create(oid(2), 10, W, 0.0)
    with pytest.raises(ValueError, match="holds no pin"):
        s.unpin(oid(1), R)
    with pytest.raises(ValueError, match="only a created object can be sealed; this one is in memory"):
        s.seal(oid(1))
    with pytest.raises(ValueError, match="unknown"):
        s.seal(oid(7))
    with pytest.raises(ValueError, match="only an unsealed object can be aborted"):
        s.abort(oid(1))
    with pytest.raises(ValueError, match="no spill of this object is in flight"):
        s.spilled(oid(1))
    with pytest.raises(ValueError, match="no restore of this object is in flight"):
        s.restored(oid(1))
    with pytest.raises(ValueError, match=r"spill_failed\(00000001\): no spill of this object is in flight"):
        s.spill_failed(oid(1), "disk full")
    with pytest.raises(ValueError, match=r"restore_failed\(00000002\): no restore of this object is in flight"):
        s.restore_failed(oid(2), "I/O error")
    with pytest.raises(ValueError, match="no spill"):
        s.spill_failed(oid(9), "unknown object")
    with pytest.raises(ValueError, match="non-negative"):
        s.create(oid(3), -1, W, 0.0)
    s.check()
    assert s.stats()["num_objects"] == 2


# --------------------------------------------------------------------------- delete, abort, client_gone


def test_delete_frees_at_once_when_unpinned():
    s = store()
    off = put(s, 1)
    assert s.delete(oid(1)) == [Freed(oid(1), off, False)]
    assert s.delete(oid(1)) == [] and s.delete(oid(9)) == []
    assert s.stats()["used_bytes"] == 0
    s.check()


def test_delete_of_a_pinned_object_waits_for_the_last_pin():
    s = store()
    off = put(s, 1)
    s.pin(oid(1), R)
    s.pin(oid(1), R2)
    assert s.delete(oid(1)) == []
    [refused] = s.pin(oid(1), R)
    assert type(refused) is PinFailed and "deleted" in refused.reason
    assert s.unpin(oid(1), R) == []
    assert s.unpin(oid(1), R2) == [Freed(oid(1), off, False)]
    s.check()


def test_delete_of_an_unsealed_object_frees_it_at_the_seal():
    s = store()
    s.create(oid(1), 10, W, 0.0)
    assert s.delete(oid(1)) == []
    assert s.seal(oid(1)) == [Freed(oid(1), 0, False)]
    s.check()


def test_abort_frees_the_space_and_fails_waiting_readers():
    s = store()
    s.create(oid(1), 10, W, 0.0)
    s.pin(oid(1), R)
    cmds = s.abort(oid(1))
    assert type(cmds[0]) is PinFailed and cmds[0].client == R and "aborted" in cmds[0].reason
    assert cmds[1:] == [Freed(oid(1), 0, False)]
    assert s.info(oid(1)) is None and s.stats()["used_bytes"] == 0
    s.check()


def test_abort_with_a_reason_tells_waiting_and_later_readers_why():
    s = store()
    s.create(oid(1), 10, W, 0.0)  # e.g. the shell fetching it from another node
    s.pin(oid(1), R)
    cmds = s.abort(oid(1), "could not fetch object 00000001 from any of its 2 source(s): ...")
    assert cmds == [PinFailed(oid(1), R, "could not fetch object 00000001 from any of its 2 source(s): ..."),
                    Freed(oid(1), 0, False)]
    [later] = s.pin(oid(1), R2)
    assert type(later) is PinFailed and "could not fetch" in later.reason
    assert s.stats()["num_lost"] == 1
    s.check()
    assert s.create(oid(1), 10, W, 0.0)[0] == Created(oid(1), W, 0, 10)  # a new try forgets it
    assert s.stats()["num_lost"] == 0
    s.check()


def test_abort_with_a_reason_of_a_deleted_object_is_not_remembered():
    s = store()
    s.create(oid(1), 10, W, 0.0)
    s.delete(oid(1))
    assert s.abort(oid(1), "fetch failed") == [Freed(oid(1), 0, False)]
    assert "not in this node's object store" in s.pin(oid(1), R)[0].reason
    s.check()


def test_remember_lost_explains_later_pins_of_an_object_not_held():
    s = store()
    s.remember_lost(oid(2), "object 00000002 could not be fetched to this node: too large")
    [failed] = s.pin(oid(2), R)
    assert type(failed) is PinFailed and "too large" in failed.reason
    s.delete(oid(2))  # the cluster forgot it: so does the store
    assert "not in this node's object store" in s.pin(oid(2), R)[0].reason
    put(s, 3)
    with pytest.raises(ValueError, match="holds this object"):
        s.remember_lost(oid(3), "no")
    s.check()


def test_client_gone_drops_its_pins_and_aborts_its_creates():
    s = store()
    put(s, 1)
    s.pin(oid(1), W)
    s.pin(oid(1), W)
    s.create(oid(2), 10, W, 0.0)
    s.pin(oid(2), R)  # waits for a seal that will never come
    s.pin(oid(2), W)
    cmds = s.client_gone(W)
    assert PinFailed(oid(2), R, cmds[0].reason) == cmds[0] and "disconnected" in cmds[0].reason
    assert not [c for c in cmds if getattr(c, "client", None) == W], "nothing is said to the client that left"
    assert Freed(oid(2), U, False) in cmds
    assert s.info(oid(1)).pins == 0 and s.stats()["pinned_bytes"] == 0
    assert s.client_gone(W) == []
    s.check()


# --------------------------------------------------------------------------- spilling under pressure


def test_create_that_does_not_fit_spills_lru_objects_and_waits():
    s = store(units=4)
    offs = [put(s, n) for n in range(4)]
    cmds = s.create(oid(10), 2 * U, W, 1.0)
    # objects 0 and 1 are the least recently used and are next to each other
    assert cmds == [Spill(oid(0), offs[0], U), Spill(oid(1), offs[1], U), Waiting(oid(10), W)]
    assert s.info(oid(0)).state == "spilling"
    s.check()
    assert s.spilled(oid(0)) == []  # 64 free bytes: not yet enough
    assert s.spilled(oid(1)) == [Created(oid(10), W, 0, 2 * U)]
    assert s.info(oid(0)).state == "on disk"
    st_ = s.stats()
    assert st_["disk_bytes"] == 2 * U and st_["num_on_disk"] == 2 and st_["total_spills"] == 2
    s.check()


def test_pinning_makes_an_object_recently_used():
    s = store(units=4)
    offs = [put(s, n) for n in range(4)]
    s.pin(oid(0), R)
    s.unpin(oid(0), R)  # 0 is now the most recently used
    cmds = s.create(oid(10), U, W, 1.0)
    assert cmds == [Spill(oid(1), offs[1], U), Waiting(oid(10), W)]


def test_pinned_objects_are_never_spilled():
    s = store(units=4)
    offs = [put(s, n) for n in range(4)]
    s.pin(oid(0), R)
    s.pin(oid(1), R)
    cmds = s.create(oid(10), 2 * U, W, 1.0)
    assert of(cmds, Spill) == [Spill(oid(2), offs[2], U), Spill(oid(3), offs[3], U)]


def test_spill_choice_goes_by_the_largest_free_range_not_total_free():
    s = store(units=4)
    for n in range(4):
        put(s, n)
    s.delete(oid(0))
    s.delete(oid(2))  # 128 bytes free, but in two separate units
    s.pin(oid(1), R)  # 1 cannot move: only spilling 3 makes a 128-byte range (2..3)
    cmds = s.create(oid(10), 2 * U, W, 1.0)
    assert of(cmds, Spill) == [Spill(oid(3), 3 * U, U)]
    assert s.spilled(oid(3)) == [Created(oid(10), W, 2 * U, 2 * U)]
    s.check()


def test_spill_plan_counts_contiguous_bytes_not_total_bytes():
    s = store(units=6)
    for n in range(6):
        put(s, n)
    s.delete(oid(1))
    s.delete(oid(4))  # free: units 1 and 4; LRU: 0, 2, 3, 5
    # total free after spilling 0 would be 3 units, but the largest range only 2 (units 0-1):
    # 2 must go too, so that units 0-2 are free together
    cmds = s.create(oid(10), 3 * U, W, 1.0)
    assert of(cmds, Spill) == [Spill(oid(0), 0, U), Spill(oid(2), 2 * U, U)]
    s.spilled(oid(0))
    assert s.spilled(oid(2)) == [Created(oid(10), W, 0, 3 * U)]
    s.check()


def test_spilling_stops_once_the_hole_is_big_enough():
    s = store(units=8)
    for n in range(8):
        put(s, n)
    cmds = s.create(oid(10), U, W, 1.0)
    assert of(cmds, Spill) == [Spill(oid(0), 0, U)]
    # a second create queues behind the first and does not spill more while the first waits
    assert s.create(oid(11), U, W, 1.0) == [Waiting(oid(11), W)]
    s.check()


def test_in_flight_spills_count_and_are_not_repeated():
    s = store(units=4)
    for n in range(4):
        put(s, n)
    s.create(oid(10), U, W, 1.0)  # spills 0
    assert s.pin(oid(3), R) == [Pinned(oid(3), R, 3 * U, U)]  # no new spill for this event
    s.check()


def test_pin_during_a_spill_keeps_the_object_in_memory_and_spills_another():
    s = store(units=4)
    for n in range(4):
        put(s, n)
    s.create(oid(10), U, W, 1.0)  # Spill(0)
    cmds = s.pin(oid(0), R)  # readable while being written out
    assert cmds[0] == Pinned(oid(0), R, 0, U)
    assert of(cmds, Spill) == [Spill(oid(1), U, U)], "the hole 0 would have left will not appear"
    assert s.spilled(oid(0)) == []  # still pinned: the memory stays
    info = s.info(oid(0))
    assert (info.state, info.on_disk, info.offset) == ("in memory", True, 0)
    assert s.spilled(oid(1)) == [Created(oid(10), W, U, U)]
    s.check()
    # unpinned, 0 has a disk copy: the next squeeze evicts it without I/O
    s.unpin(oid(0), R)
    for n in (2, 3):
        s.pin(oid(n), R)
    s.pin(oid(10), R) if s.seal(oid(10)) == [] else None
    assert s.create(oid(11), U, W, 2.0) == [Created(oid(11), W, 0, U)]
    assert s.stats()["total_evicted_without_io"] == 1
    s.check()


def test_delete_during_a_spill_frees_after_it_with_the_disk_copy():
    s = store(units=2)
    put(s, 0)
    put(s, 1)
    s.create(oid(10), U, W, 1.0)
    assert s.delete(oid(0)) == []  # the shell is still reading its memory
    cmds = s.spilled(oid(0))
    assert cmds == [Freed(oid(0), 0, True), Created(oid(10), W, 0, U)]
    assert s.stats()["disk_bytes"] == 0
    s.check()


def test_nothing_to_spill_waits_then_fails_with_the_numbers():
    s = store(units=4, timeout=5.0)
    for n in range(4):
        put(s, n)
        s.pin(oid(n), R)
    assert s.create(oid(10), 100, W, now=10.0) == [Waiting(oid(10), W)]
    assert s.tick(14.9) == []
    [failed] = s.tick(15.0)
    assert type(failed) is CreateFailed and failed.client == W
    for text in ("100 bytes", "capacity 256 bytes", "256 in use", "256 pinned by readers", "within 5 s"):
        assert text in failed.reason, (text, failed.reason)
    assert s.info(oid(10)) is None and s.stats()["total_create_failed"] == 1
    s.check()


def test_unpin_while_waiting_lets_the_create_proceed():
    s = store(units=2)
    put(s, 0)
    put(s, 1)
    s.pin(oid(0), R)
    s.pin(oid(1), R)
    s.create(oid(10), U, W, 0.0)
    assert s.unpin(oid(1), R) == [Spill(oid(1), U, U)]
    assert s.spilled(oid(1)) == [Created(oid(10), W, U, U)]
    s.check()


def test_waiting_creates_are_served_in_order():
    s = store(units=2)
    put(s, 0)
    put(s, 1)
    s.pin(oid(0), R)
    s.pin(oid(1), R)
    s.create(oid(10), 2 * U, W, 0.0)
    s.create(oid(11), U, W, 0.0)
    # one unit could be spilled, but that makes no room for the head of the queue (0 is still
    # pinned), so nothing is spilled, and the one-unit create behind it does not jump the queue
    assert s.unpin(oid(1), R) == []
    assert s.unpin(oid(0), R) == [Spill(oid(1), U, U), Spill(oid(0), 0, U)]  # 1 was released first
    assert s.spilled(oid(0)) == []
    assert s.spilled(oid(1)) == [Created(oid(10), W, 0, 2 * U)]
    assert s.info(oid(11)).state == "waiting"
    s.check()


def test_abort_of_a_waiting_create_unblocks_the_queue():
    s = store(units=2)
    put(s, 0)
    s.pin(oid(0), R)
    s.create(oid(10), 2 * U, W, 0.0)
    s.create(oid(11), U, R2, 0.0)
    assert s.abort(oid(10)) == [Freed(oid(10), None, False), Created(oid(11), R2, U, U)]
    s.check()


# --------------------------------------------------------------------------- restores


def spilled_store() -> StoreState:
    """Object 0 on disk, objects 1 and 2 sealed in memory, capacity 2 units."""
    s = store(units=2)
    put(s, 0)
    put(s, 1)
    s.create(oid(2), U, W, 0.0)  # spills 0
    s.spilled(oid(0))
    s.seal(oid(2))
    assert s.info(oid(0)).state == "on disk"
    return s


def test_pin_of_a_spilled_object_restores_it_making_room():
    s = spilled_store()
    cmds = s.pin(oid(0), R)
    assert cmds == [Spill(oid(1), U, U), Waiting(oid(0), R)]
    assert s.pin(oid(0), R2) == [Waiting(oid(0), R2)]
    assert s.spilled(oid(1)) == [Restore(oid(0), U, U)]
    assert s.info(oid(0)).state == "restoring"
    assert s.pin(oid(0), R) == [Waiting(oid(0), R)]  # not readable until restored
    s.check()
    assert s.restored(oid(0)) == [Pinned(oid(0), R, U, U), Pinned(oid(0), R, U, U), Pinned(oid(0), R2, U, U)]
    info = s.info(oid(0))
    assert (info.state, info.on_disk, info.pins) == ("in memory", True, 3)
    assert s.stats()["total_restores"] == 1
    s.check()


def test_restore_that_cannot_get_space_times_out_with_pin_failed():
    s = spilled_store()
    s.pin(oid(1), R2)
    s.pin(oid(2), R2)
    s.tick(100.0)
    assert s.pin(oid(0), R) == [Waiting(oid(0), R)]
    assert s.tick(104.0) == []
    [failed] = s.tick(105.0)
    assert type(failed) is PinFailed and failed.client == R and "cannot restore object" in failed.reason
    assert s.info(oid(0)).state == "on disk" and s.stats()["num_waiting"] == 0
    s.check()


def test_reader_gone_cancels_a_queued_restore():
    s = spilled_store()
    s.pin(oid(1), R2)
    s.pin(oid(2), R2)
    s.pin(oid(0), R)
    assert s.client_gone(R) == []
    assert s.stats()["num_waiting"] == 0
    s.check()


def test_delete_of_a_spilled_object_removes_its_file():
    s = spilled_store()
    assert s.delete(oid(0)) == [Freed(oid(0), None, True)]
    s.check()


def test_stats_add_up():
    s = spilled_store()
    st_ = s.stats()
    assert st_["capacity"] == 2 * U and st_["used_bytes"] == 2 * U and st_["num_objects"] == 3
    assert st_["num_in_memory"] == 2 and st_["num_on_disk"] == 1 and st_["num_evictable"] == 2
    assert st_["total_created"] == 3 and st_["total_spills"] == 1


# --------------------------------------------------------------------------- failed spills and restores


def test_failed_spill_keeps_the_object_in_memory_and_spills_another():
    s = store(units=4)
    offs = [put(s, n) for n in range(4)]
    assert s.create(oid(10), U, W, 1.0) == [Spill(oid(0), offs[0], U), Waiting(oid(10), W)]
    cmds = s.spill_failed(oid(0), "OSError: [Errno 28] No space left on device")
    assert cmds == [Spill(oid(1), offs[1], U)], "planned again without the object that failed"
    info = s.info(oid(0))
    assert (info.state, info.offset, info.on_disk) == ("in memory", offs[0], False)
    assert s.pin(oid(0), R) == [Pinned(oid(0), R, offs[0], U)]  # still readable
    s.check()
    assert s.spilled(oid(1)) == [Created(oid(10), W, offs[1], U)]
    st_ = s.stats()
    assert st_["total_spill_failures"] == 1 and st_["num_spill_failed"] == 0, "a spill succeeded: marks cleared"
    assert st_["disk_bytes"] == U
    s.check()


def test_when_every_spill_fails_the_create_times_out_naming_the_error():
    s = store(units=2, timeout=5.0)
    put(s, 0)
    put(s, 1)
    assert of(s.create(oid(10), U, W, 10.0), Spill) == [Spill(oid(0), 0, U)]
    assert s.spill_failed(oid(0), "NotADirectoryError: not a dir") == [Spill(oid(1), U, U)]
    assert s.spill_failed(oid(1), "NotADirectoryError: not a dir") == [], "no candidate left: no loop"
    assert s.stats()["num_spill_failed"] == 2
    s.check()
    assert s.tick(14.0) == []  # still marked: no retry within the wait
    [failed] = s.tick(15.0)
    assert type(failed) is CreateFailed and failed.client == W
    assert "within 5 s" in failed.reason and "spilling to disk failed lately for 2 object(s)" in failed.reason
    assert "NotADirectoryError: not a dir" in failed.reason
    for n in (0, 1):
        assert s.info(oid(n)).state == "in memory"
    s.check()


def test_an_object_whose_spill_failed_is_tried_again_after_spill_retry_s():
    s = StoreState(2 * U, create_timeout_s=5.0, spill_retry_s=3.0)
    put(s, 0)
    put(s, 1)
    s.pin(oid(1), R)
    s.create(oid(10), U, W, 10.0)  # spills 0, the only candidate
    assert s.spill_failed(oid(0), "EIO") == []
    assert s.tick(12.9) == []
    assert s.tick(13.0) == [Spill(oid(0), 0, U)], "the mark expired: tried again (once)"
    assert s.stats()["num_spill_failed"] == 0
    s.check()
    assert s.spilled(oid(0)) == [Created(oid(10), W, 0, U)]
    s.check()


def test_a_successful_spill_clears_the_marks_of_failed_ones():
    s = store(units=3)
    for n in range(3):
        put(s, n)
    s.pin(oid(2), R)
    s.create(oid(10), U, W, 0.0)  # Spill(0)
    assert s.spill_failed(oid(0), "EIO") == [Spill(oid(1), U, U)]
    assert s.spilled(oid(1)) == [Created(oid(10), W, U, U)]
    s.seal(oid(10))
    s.pin(oid(10), R)
    # 0 may be spilled again at once: the disk works
    assert of(s.create(oid(11), U, W, 0.0), Spill) == [Spill(oid(0), 0, U)]
    s.check()


def test_failed_spill_of_a_pinned_or_deleted_object():
    s = store(units=2)
    put(s, 0)
    put(s, 1)
    s.create(oid(10), U, W, 0.0)  # Spill(0)
    s.pin(oid(0), R)  # replans: Spill(1)
    assert s.spill_failed(oid(0), "EIO") == []  # pinned: nothing to add
    assert s.info(oid(0)).pins == 1 and s.info(oid(0)).state == "in memory"
    assert s.delete(oid(1)) == []  # being spilled
    assert s.spill_failed(oid(1), "EIO") == [Freed(oid(1), U, False), Created(oid(10), W, U, U)]
    assert s.stats()["disk_bytes"] == 0
    s.check()
    s.unpin(oid(0), R)
    s.check()


def restoring_store() -> StoreState:
    """Object 0 being restored at offset 1 unit for two pins of R and one of R2."""
    s = spilled_store()
    s.pin(oid(0), R)
    s.pin(oid(0), R)
    s.pin(oid(0), R2)
    assert s.spilled(oid(1)) == [Restore(oid(0), U, U)]
    return s


def test_failed_restore_loses_the_object_and_fails_its_pins():
    s = restoring_store()
    cmds = s.restore_failed(oid(0), "EOFError: the spill file is short")
    failed = of(cmds, PinFailed)
    assert [(c.object_id, c.client) for c in failed] == [(oid(0), R), (oid(0), R), (oid(0), R2)]
    assert all("00000000 was lost" in c.reason and "EOFError: the spill file is short" in c.reason
               for c in failed)
    assert cmds[3:] == [Freed(oid(0), U, True)], "its memory is released and its file removed"
    assert s.info(oid(0)) is None
    st_ = s.stats()
    assert (st_["disk_bytes"], st_["num_on_disk"], st_["used_bytes"]) == (U, 1, U)  # 1 stays on disk
    assert st_["total_restore_failures"] == 1 and st_["num_lost"] == 1
    s.check()
    [later] = s.pin(oid(0), R)
    assert type(later) is PinFailed and "was lost" in later.reason and "EOFError" in later.reason
    # the cluster deletes it: forgotten
    assert s.delete(oid(0)) == []
    [later] = s.pin(oid(0), R)
    assert "not in this node's object store" in later.reason
    s.check()


def test_failed_restore_makes_room_for_the_next_waiter_and_the_id_can_be_reused():
    s = restoring_store()
    s.pin(oid(2), R2)
    assert s.pin(oid(1), R2) == [Waiting(oid(1), R2)]  # on disk; queued behind nothing, no room
    cmds = s.restore_failed(oid(0), "EIO")
    assert cmds[-1] == Restore(oid(1), U, U)
    assert s.restored(oid(1)) == [Pinned(oid(1), R2, U, U)]
    s.check()
    assert s.create(oid(0), 10, W, 0.0)[-1] == Waiting(oid(0), W)  # a new object, same id
    assert s.stats()["num_lost"] == 0
    s.check()


def test_failed_restore_of_a_deleted_object_is_not_remembered_as_lost():
    s = restoring_store()
    s.client_gone(R)
    s.client_gone(R2)
    s.delete(oid(0))
    assert s.restore_failed(oid(0), "EIO") == [Freed(oid(0), U, True)]
    [later] = s.pin(oid(0), R)
    assert "not in this node's object store" in later.reason
    s.check()


def test_spill_retry_s_must_be_positive():
    with pytest.raises(ValueError, match="spill_retry_s"):
        StoreState(U, spill_retry_s=0)


# --------------------------------------------------------------------------- property test

N_OBJECTS, CLIENTS = 8, (b"a", b"b", b"c")
# weighted so that histories build up memory pressure: many creates, seals and pins
KINDS = ["create"] * 3 + ["seal"] * 3 + ["pin"] * 3 + ["unpin"] * 2 + ["delete"] * 2 + \
    ["spilled"] * 2 + ["restored"] * 2 + ["spill_failed"] + ["restore_failed"] * 2 + \
    ["abort", "client_gone", "tick", "wind_down"]
SPILL_RETRY_S = 1.5
# (kind, a number to pick an object or pin with, a size in bytes, a client, seconds to tick);
# few and cheap draws per step keep generation and shrinking fast
step = st.tuples(st.sampled_from(KINDS), st.integers(0, 63), st.integers(0, 4 * U),
                 st.sampled_from(CLIENTS), st.integers(0, 6).map(lambda n: n / 2))


class Shell:
    """What a shell driving the store would know from the commands alone, with the safety checks."""

    def __init__(self, s: StoreState) -> None:
        self.s = s
        self.live: set[bytes] = set()  # accepted, not yet ended by Freed / CreateFailed
        self.writable: set[bytes] = set()  # Created received, not sealed or aborted
        self.sealed: set[bytes] = set()
        self.deleted: set[bytes] = set()
        self.pins: Counter[tuple[bytes, bytes]] = Counter()
        self.pinned_at: dict[bytes, int] = {}
        self.spills: set[bytes] = set()
        self.restores: set[bytes] = set()
        self.now = 0.0
        self.spill_marks: dict[bytes, float] = {}  # spill failed: not to be spilled before then
        self.lost: set[bytes] = set()  # restore failed, not deleted or created again

    def pinned(self, o: bytes) -> bool:
        return any(n for (x, _), n in self.pins.items() if x == o)

    def apply(self, cmds: list) -> None:
        for c in cmds:
            o = c.object_id
            if type(c) is Created:
                assert o in self.live and o not in self.writable
                self.writable.add(o)
            elif type(c) is CreateFailed:
                self.live.discard(o)
                assert o not in self.sealed
            elif type(c) is Pinned:
                assert o in self.sealed and o not in self.restores
                self.pins[(o, c.client)] += 1
                assert self.pinned_at.setdefault(o, c.offset) == c.offset
            elif type(c) is Spill:
                assert not self.pinned(o), "spilled a pinned object"
                assert o in self.sealed and o not in self.spills and o not in self.restores
                assert self.now >= self.spill_marks.pop(o, self.now), "spilled again too soon after a failure"
                self.spills.add(o)
            elif type(c) is Restore:
                assert o in self.sealed and o not in self.restores
                self.restores.add(o)
            elif type(c) is Freed:
                assert not self.pinned(o), "freed a pinned object"
                assert o in self.deleted or o in self.lost or o not in self.sealed, "freed a live sealed object"
                assert o not in self.spills and o not in self.restores, "freed during I/O"
                self.live.discard(o)
                self.writable.discard(o)
                self.sealed.discard(o)
                self.deleted.discard(o)
                self.spill_marks.pop(o, None)
            else:
                assert type(c) in (PinFailed, Waiting)

    def verify(self) -> None:
        s = self.s
        s.check()
        stats = s.stats()
        assert stats["used_bytes"] <= s.capacity
        for o in self.sealed - self.deleted:
            info = s.info(o)
            assert info is not None and (info.offset is not None or info.on_disk), f"object {o!r} lost"
        for o in {x for (x, _), n in self.pins.items() if n}:
            info = s.info(o)
            assert info is not None and info.offset == self.pinned_at[o], "a pinned object moved or left memory"
        for o in self.spill_marks:
            info = s.info(o)
            assert info is not None and info.offset is not None and not info.on_disk, "failed spill left memory"
        for o in list(self.pinned_at):
            if not self.pinned(o):
                del self.pinned_at[o]
        assert set(self.live) == {o for o in map(oid, range(N_OBJECTS)) if s.info(o) is not None}


def pick(k: int, candidates) -> bytes | None:
    """Mostly the k-th valid candidate; now and then (or if there is none) None, for a misuse."""
    candidates = sorted(candidates)
    return candidates[k % len(candidates)] if candidates and k % 8 else None


def run_step(shell: Shell, op: tuple, now: float) -> float:
    s = shell.s
    kind, k, size, client, dt = op
    shell.now = now
    if kind == "create":
        o = oid(k % N_OBJECTS)
        exists = o in shell.live
        cmds = s.create(o, size, client, now)
        if exists:
            assert [type(c) for c in cmds] == [CreateFailed]
            return now
        shell.live.add(o)
        shell.lost.discard(o)
        shell.apply(cmds)
    elif kind == "seal":
        o = pick(k, shell.writable)
        if o is None:
            o = oid(k % N_OBJECTS)
            if o not in shell.writable:
                with pytest.raises(ValueError):
                    s.seal(o)
                return now
        shell.writable.discard(o)
        shell.sealed.add(o)
        shell.apply(s.seal(o))
    elif kind == "abort":
        o = pick(k, shell.live - shell.sealed) or oid(k % N_OBJECTS)
        if o not in shell.live or o in shell.sealed:
            with pytest.raises(ValueError):
                s.abort(o)
            return now
        shell.writable.discard(o)
        cmds = s.abort(o)
        assert [c for c in cmds if type(c) is Freed and c.object_id == o and not c.on_disk]
        shell.apply(cmds)
    elif kind == "pin":
        o = pick(k, shell.live) or oid(k % N_OBJECTS)
        cmds = s.pin(o, client)
        if o in shell.lost:
            assert len(cmds) == 1 and type(cmds[0]) is PinFailed and "was lost" in cmds[0].reason
        shell.apply(cmds)
    elif kind == "unpin":
        held = pick(k, [key for key, n in shell.pins.items() if n])
        o, client = held if held is not None else (oid(k % N_OBJECTS), client)
        if not shell.pins[(o, client)]:
            with pytest.raises(ValueError):
                s.unpin(o, client)
            return now
        shell.pins[(o, client)] -= 1
        shell.apply(s.unpin(o, client))
    elif kind == "delete":
        o = oid(k % N_OBJECTS)
        if o in shell.live:
            shell.deleted.add(o)
        shell.lost.discard(o)
        shell.apply(s.delete(o))
    elif kind == "client_gone":
        for key in [key for key in shell.pins if key[1] == client]:
            del shell.pins[key]
        cmds = s.client_gone(client)
        assert not [c for c in cmds if getattr(c, "client", None) == client]
        shell.apply(cmds)
        shell.writable = {o for o in shell.writable if s.info(o) is not None}
    elif kind in ("spilled", "restored"):
        in_flight = shell.spills if kind == "spilled" else shell.restores
        o = pick(k | 1, in_flight)
        if o is not None:
            in_flight.discard(o)
            if kind == "spilled":
                shell.spill_marks.clear()
            shell.apply(getattr(s, kind)(o))
    elif kind == "spill_failed":
        o = pick(k | 1, shell.spills)
        if o is None:
            with pytest.raises(ValueError):
                s.spill_failed(oid(k % N_OBJECTS) if oid(k % N_OBJECTS) not in shell.spills else b"?", "nobody asked")
            return now
        shell.spills.discard(o)
        cmds = s.spill_failed(o, "OSError: disk full")
        if o not in shell.deleted:
            shell.spill_marks[o] = now + SPILL_RETRY_S
        shell.apply(cmds)
    elif kind == "restore_failed":
        o = pick(k | 1, shell.restores)
        if o is None:
            with pytest.raises(ValueError):
                s.restore_failed(oid(k % N_OBJECTS) if oid(k % N_OBJECTS) not in shell.restores else b"?", "nobody asked")
            return now
        shell.restores.discard(o)
        if o not in shell.deleted:
            shell.lost.add(o)
        cmds = s.restore_failed(o, "OSError: I/O error")
        assert any(type(c) is Freed and c.object_id == o and c.on_disk for c in cmds), \
            "a failed restore frees the object and its file"
        assert all(o.hex() in c.reason and "I/O error" in c.reason for c in cmds
                   if type(c) is PinFailed and c.object_id == o)
        shell.apply(cmds)
    else:
        now += dt
        shell.now = now
        shell.apply(s.tick(now))
    return now


def finish_io(shell: Shell) -> None:
    """Complete every spill and restore in flight (completions may start a few more)."""
    for _ in range(10):
        if not shell.spills and not shell.restores:
            return
        for o in sorted(shell.spills):
            shell.spills.discard(o)
            shell.spill_marks.clear()
            shell.apply(shell.s.spilled(o))
        for o in sorted(shell.restores):
            shell.restores.discard(o)
            shell.apply(shell.s.restored(o))
        shell.verify()
    raise AssertionError("spills and restores keep starting each other")


def wind_down(shell: Shell) -> None:
    """I/O finishes, every client leaves, the cluster deletes everything: nothing may be left."""
    s = shell.s
    finish_io(shell)
    for client in CLIENTS:
        for key in [key for key in shell.pins if key[1] == client]:
            del shell.pins[key]
        shell.apply(s.client_gone(client))
        shell.verify()
    shell.writable.clear()
    for o in map(oid, range(N_OBJECTS)):
        if o in shell.live:
            shell.deleted.add(o)
        shell.lost.discard(o)
        shell.apply(s.delete(o))
    finish_io(shell)
    shell.verify()
    stats = s.stats()
    assert (stats["num_objects"], stats["used_bytes"], stats["disk_bytes"], stats["pinned_bytes"]) == (0, 0, 0, 0)
    assert not shell.live and s.stats()["largest_free"] == s.capacity


class StoreHistories(RuleBasedStateMachine):
    """Random histories of requests, I/O reports and time; the model checks every step's commands."""

    def __init__(self) -> None:
        super().__init__()
        self.shell: Shell | None = None
        self.now = 0.0

    @initialize(units=st.integers(1, 8))
    def start(self, units: int) -> None:
        self.shell = Shell(StoreState(units * U, create_timeout_s=2.0, spill_retry_s=SPILL_RETRY_S))

    @rule(op=step)
    def one_step(self, op: tuple) -> None:
        assert self.shell is not None
        if op[0] == "wind_down":
            if op[1] % 4 == 0:  # rarely: let pressure build up between wind-downs
                wind_down(self.shell)
        else:
            self.now = run_step(self.shell, op, self.now)

    @invariant()
    def safe(self) -> None:
        if self.shell is not None:
            self.shell.verify()


StoreHistories.TestCase.settings = settings(
    max_examples=100, stateful_step_count=60, deadline=None, database=None, report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow])
TestStoreHistories = StoreHistories.TestCase
