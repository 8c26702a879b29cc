"""The object store's arena allocator: best fit, splitting, coalescing, errors, and a property test."""

from __future__ import annotations

import copy
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmesh._store.allocator import Allocator

A = 64  # alignment used throughout


def allocator_with_holes(*sizes_and_keep: tuple[int, bool]) -> tuple[Allocator, list[int]]:
    """Allocate blocks of the given sizes back to back, then free the ones not kept."""
    a = Allocator(sum(s for s, _ in sizes_and_keep))
    offsets = [a.alloc(s) for s, _ in sizes_and_keep]
    for off, (_, keep) in zip(offsets, sizes_and_keep):
        if not keep:
            a.free(off)
    a.check()
    return a, offsets


# --------------------------------------------------------------------------- basics


def test_fresh_arena_is_one_free_range():
    a = Allocator(1024)
    assert (a.used, a.free_bytes, a.largest_free, a.num_blocks) == (0, 1024, 1024, 0)
    assert a.free_ranges() == [(0, 1024)]
    a.check()


def test_sizes_round_up_to_the_alignment_and_zero_gets_a_minimal_block():
    a = Allocator(1024)
    assert a.block_size(0) == A and a.block_size(1) == A and a.block_size(64) == 64 and a.block_size(65) == 128
    first = a.alloc(0)
    second = a.alloc(65)
    assert (first, second) == (0, 64)
    assert a.size_of(first) == 64 and a.size_of(second) == 128
    assert a.used == 192 and a.free_bytes == 1024 - 192
    a.check()


def test_every_offset_is_aligned_for_a_larger_alignment():
    a = Allocator(1 << 16, alignment=4096)
    offsets = [a.alloc(s) for s in (1, 5000, 0, 4096)]
    assert all(o is not None and o % 4096 == 0 for o in offsets)
    assert offsets == [0, 4096, 3 * 4096, 4 * 4096]
    a.check()


def test_alloc_returns_none_when_nothing_fits_and_changes_nothing():
    a = Allocator(256)
    assert a.alloc(257) is None
    assert a.alloc(200) == 0
    assert a.alloc(64) is None
    assert a.used == 256 and a.largest_free == 0
    a.check()


def test_exact_fit_leaves_no_empty_range():
    a = Allocator(256)
    assert a.alloc(256) == 0
    assert a.free_ranges() == []
    a.free(0)
    assert a.free_ranges() == [(0, 256)]
    a.check()


def test_zero_capacity_arena_fits_nothing():
    a = Allocator(0)
    assert a.alloc(0) is None and a.largest_free == 0
    a.check()


def test_capacity_that_is_not_a_multiple_of_the_alignment_keeps_a_short_tail_free():
    a = Allocator(100)
    assert a.alloc(10) == 0
    assert a.free_ranges() == [(64, 36)]
    assert a.alloc(1) is None  # a whole unit no longer fits
    assert a.used + a.free_bytes == 100
    a.check()
    a.free(0)
    assert a.free_ranges() == [(0, 100)]


# --------------------------------------------------------------------------- best fit


def test_best_fit_takes_the_smallest_range_that_fits():
    # holes of 256, 64 and 128 bytes, separated by kept blocks
    a, offs = allocator_with_holes((256, False), (64, True), (64, False), (64, True), (128, False), (64, True))
    assert a.alloc(100) == offs[4]  # the 128-byte hole, not the first or the largest
    assert a.alloc(1) == offs[2]  # the 64-byte hole
    assert a.alloc(1) == offs[0]  # only the 256-byte hole is left
    a.check()


def test_best_fit_ties_go_to_the_lowest_offset():
    a, offs = allocator_with_holes((64, True), (128, False), (64, True), (128, False), (64, True), (128, False))
    assert a.alloc(128) == offs[1]
    assert a.alloc(100) == offs[3]
    a.check()


def test_split_keeps_the_remainder_free_at_the_end_of_the_range():
    a = Allocator(1024)
    assert a.alloc(100) == 0
    assert a.free_ranges() == [(128, 896)]
    a.check()


def test_fragmentation_total_free_is_not_enough():
    a, _ = allocator_with_holes((64, False), (64, True), (64, False), (64, True))
    assert a.free_bytes == 128 and a.largest_free == 64
    assert a.alloc(128) is None


# --------------------------------------------------------------------------- coalescing


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1)])
def test_freeing_coalesces_with_both_neighbours_in_any_order(order):
    a = Allocator(3 * 64)
    offs = [a.alloc(64) for _ in range(3)]
    for i in order:
        a.free(offs[i])
        a.check()
    assert a.free_ranges() == [(0, 192)] and a.largest_free == 192


def test_freed_block_merges_with_the_free_tail():
    a = Allocator(1024)
    x = a.alloc(64)
    y = a.alloc(64)
    a.free(y)
    assert a.free_ranges() == [(64, 960)]
    a.free(x)
    assert a.free_ranges() == [(0, 1024)]


# --------------------------------------------------------------------------- errors


def test_double_free_raises_value_error_saying_so():
    a = Allocator(1024)
    x = a.alloc(64)
    a.free(x)
    with pytest.raises(ValueError, match=r"free\(0\).*already freed \(double free\?\)"):
        a.free(x)
    a.check()


def test_double_free_after_coalescing_still_raises():
    a = Allocator(1024)
    x, y = a.alloc(64), a.alloc(64)
    a.free(x)
    a.free(y)  # merged into the range at 0: 64 is no longer a range start
    with pytest.raises(ValueError, match=r"no allocated block starts at offset 64"):
        a.free(y)


def test_freeing_an_unknown_or_interior_offset_raises():
    a = Allocator(1024)
    a.alloc(256)
    for bad in (32, 1 << 20, -64):
        with pytest.raises(ValueError, match="no allocated block starts at offset"):
            a.free(bad)
    with pytest.raises(ValueError, match=r"size_of\(32\)"):
        a.size_of(32)
    a.check()


@pytest.mark.parametrize("kwargs", [{"capacity": -1}, {"capacity": 64, "alignment": 0},
                                    {"capacity": 64, "alignment": 48}, {"capacity": 1.5}])
def test_bad_construction_arguments(kwargs):
    with pytest.raises(ValueError):
        Allocator(**kwargs)


def test_negative_size_raises():
    with pytest.raises(ValueError, match="non-negative"):
        Allocator(64).alloc(-1)


def test_check_catches_corruption():
    a = Allocator(1024)
    a.alloc(64)
    a.check()
    broken = copy.deepcopy(a)
    broken._blocks[0] = 128  # a block overlapping the free range after it
    with pytest.raises(AssertionError):
        broken.check()
    broken = copy.deepcopy(a)
    broken._used += 1
    with pytest.raises(AssertionError, match="used-bytes"):
        broken.check()
    # two free ranges that touch: not coalesced
    broken = Allocator(128)
    broken._remove_free(0, 128)
    broken._add_free(0, 64)
    broken._add_free(64, 64)
    with pytest.raises(AssertionError, match="not coalesced"):
        broken.check()


# --------------------------------------------------------------------------- what-if planning


def test_what_if_predicts_the_hole_and_leaves_the_allocator_alone():
    a = Allocator(8 * 64)
    offs = [a.alloc(64) for _ in range(8)]
    before = (a.free_ranges(), a.used)
    plan = a.what_if()
    assert plan.largest_free == 0
    plan.free(offs[1])
    assert plan.largest_free == 64
    plan.free(offs[3])
    assert plan.largest_free == 64
    plan.free(offs[2])  # joins 1..3
    assert plan.largest_free == 192
    assert (a.free_ranges(), a.used) == before
    with pytest.raises(ValueError, match="already freed in this plan"):
        plan.free(offs[2])


# --------------------------------------------------------------------------- property test

ALLOC_SETTINGS = settings(max_examples=150, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])

ops = st.lists(st.one_of(st.tuples(st.just("alloc"), st.integers(0, 400)),
                         st.tuples(st.just("free"), st.integers(0, 1000)),
                         st.tuples(st.just("what_if"), st.integers(0, 1000))),
               min_size=20, max_size=80)


def expected_best_fit(a: Allocator, size: int) -> int | None:
    need = a.block_size(size)
    fits = [(s, o) for o, s in a.free_ranges() if s >= need]
    return min(fits)[1] if fits else None


@ALLOC_SETTINGS
@given(capacity=st.integers(0, 2048), alignment=st.sampled_from([1, 8, 64]), ops=ops)
def test_random_alloc_free_keeps_invariants(capacity, alignment, ops):
    a = Allocator(capacity, alignment)
    live: dict[int, int] = {}  # offset -> requested size
    for op, n in ops:
        if op == "alloc":
            want = expected_best_fit(a, n)
            got = a.alloc(n)
            assert got == want, f"best fit picks {want}, alloc gave {got}"
            if got is not None:
                assert got % alignment == 0 and a.size_of(got) >= max(n, 1)
                assert got not in live
                live[got] = n
        elif op == "free":
            if live and n % 5:
                off = sorted(live)[n % len(live)]
                a.free(off)
                del live[off]
            else:  # now and then, a free that must fail
                bad = n * alignment + 1 if alignment > 1 else capacity + n + 1
                with pytest.raises(ValueError):
                    a.free(bad)
        elif live:  # what-if agrees with really freeing the same blocks
            chosen = [off for i, off in enumerate(sorted(live)) if (n >> (i % 10)) & 1]
            plan = a.what_if()
            plan.free_all(chosen)
            real = copy.deepcopy(a)
            for off in chosen:
                real.free(off)
            assert plan.largest_free == real.largest_free
        a.check()
        assert a.used == sum(a.block_size(s) for s in live.values())
        assert a.used + a.free_bytes == capacity
        assert a.largest_free == max((s for _, s in a.free_ranges()), default=0)
        # blocks never overlap each other
        spans = sorted((o, o + a.size_of(o)) for o in live)
        assert all(e <= s for (_, e), (s, _) in itertools.pairwise(spans))
    for off in list(live):
        a.free(off)
    a.check()
    assert a.free_ranges() == ([(0, capacity)] if capacity else [])
