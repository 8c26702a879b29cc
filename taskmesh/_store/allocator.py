"""Byte ranges of one contiguous arena: a best-fit allocator with splitting and coalescing.

    alloc(size) ──▶ smallest free range that fits ──split──▶ [ block | remainder stays free ]
    free(offset) ──▶ block + free neighbours ──coalesce──▶ one free range

Policy: every request is rounded up to a multiple of ``alignment`` (a zero-byte request still
gets one ``alignment``-sized block), so every block and every free range starts on an aligned
offset. ``alloc`` takes the *smallest* free range that fits the rounded size (ties: the lowest
offset), hands out its front and keeps the remainder free; ``free`` merges the block with the
free ranges on either side, so no two free ranges ever touch. Best fit keeps large ranges whole
for large objects, and reusing freed ranges (rather than growing) matters because the arena is a
shared-memory file that stays mapped: a reused range is already paged in. The arena's last
``capacity % alignment`` bytes, if any, are counted as free but can only be handed out as part
of a block that fits before the end.

Look-ups are O(log n) in the number of free ranges: a list of ``(size, offset)`` kept sorted with
:mod:`bisect` answers "smallest range of at least N bytes", and dicts keyed by start and end
offset find a block's free neighbours in O(1). Inserting into or deleting from the sorted list
moves its tail (a ``memmove``), which is fast for the thousands of free ranges an arena holds.
This module does no I/O and knows nothing about objects: ``_store/state.py`` decides what lives
where.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable

__all__ = ["Allocator", "WhatIf"]


class Allocator:
    """Hands out aligned byte ranges of an arena of ``capacity`` bytes (see the module docstring)."""

    __slots__ = ("capacity", "alignment", "_by_size", "_free", "_free_end", "_blocks", "_used")

    def __init__(self, capacity: int, alignment: int = 64) -> None:
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be a non-negative number of bytes, not {capacity!r}")
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two (e.g. 64), not {alignment!r}")
        self.capacity = capacity
        self.alignment = alignment
        self._by_size: list[tuple[int, int]] = []  # (size, offset) of every free range, sorted
        self._free: dict[int, int] = {}  # free range: start offset -> size
        self._free_end: dict[int, int] = {}  # free range: end offset -> start offset
        self._blocks: dict[int, int] = {}  # allocated block: offset -> size
        self._used = 0
        if capacity:
            self._add_free(0, capacity)

    # ------------------------------------------------------------------ queries

    @property
    def used(self) -> int:
        """Bytes in allocated blocks (sizes rounded up to the alignment)."""
        return self._used

    @property
    def free_bytes(self) -> int:
        """Bytes not in any block, fragmented or not."""
        return self.capacity - self._used

    @property
    def largest_free(self) -> int:
        """Size of the largest free range: no block larger than this can be allocated now."""
        return self._by_size[-1][0] if self._by_size else 0

    @property
    def num_blocks(self) -> int:
        """Number of allocated blocks."""
        return len(self._blocks)

    def block_size(self, size: int) -> int:
        """The bytes a request of ``size`` bytes occupies: rounded up to the alignment, at least one unit."""
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative number of bytes, not {size!r}")
        a = self.alignment
        return max(a, -(-size // a) * a)

    def size_of(self, offset: int) -> int:
        """Size of the allocated block starting at ``offset`` (its rounded size)."""
        try:
            return self._blocks[offset]
        except KeyError:
            raise ValueError(self._no_block("size_of", offset)) from None

    def free_ranges(self) -> list[tuple[int, int]]:
        """Every free range as ``(offset, size)``, by offset. O(n log n): for tests and debugging."""
        return sorted(self._free.items())

    # ------------------------------------------------------------------ changes

    def alloc(self, size: int) -> int | None:
        """Offset of a new aligned block of at least ``size`` bytes, or None if no free range fits."""
        need = self.block_size(size)
        i = bisect_left(self._by_size, (need, -1))
        if i == len(self._by_size):
            return None
        have, offset = self._by_size.pop(i)
        del self._free[offset]
        del self._free_end[offset + have]
        if have > need:
            self._add_free(offset + need, have - need)
        self._blocks[offset] = need
        self._used += need
        return offset

    def free(self, offset: int) -> None:
        """Give back the block at ``offset``, merging it with the free ranges on either side."""
        size = self._blocks.pop(offset, None)
        if size is None:
            raise ValueError(self._no_block("free", offset))
        self._used -= size
        start, end = offset, offset + size
        left = self._free_end.get(start)
        if left is not None:
            self._remove_free(left, start - left)
            start = left
        right = self._free.get(end)
        if right is not None:
            self._remove_free(end, right)
            end += right
        self._add_free(start, end - start)

    def what_if(self) -> WhatIf:
        """A scratch view for planning: how large a hole would freeing some blocks make?"""
        return WhatIf(self)

    # ------------------------------------------------------------------ invariants

    def check(self) -> None:
        """Raise AssertionError unless blocks and free ranges tile the arena exactly.

        Checked: the three free-range indexes agree; free ranges are sorted, non-overlapping and
        coalesced (no two touch); every block and range is non-empty and aligned, blocks are whole
        alignment units; used + free == capacity. O(n log n): for tests.
        """
        free = sorted(self._free.items())
        _require(self._by_size == sorted((s, o) for o, s in free),
                 "the by-size index of free ranges is out of step with the by-offset one")
        _require(self._free_end == {o + s: o for o, s in free},
                 "the by-end index of free ranges is out of step with the by-offset one")
        _require(self._used == sum(self._blocks.values()), "the used-bytes count is wrong")
        pos = 0
        prev_free = False
        for offset, size, is_free in sorted([(o, s, True) for o, s in free]
                                            + [(o, s, False) for o, s in self._blocks.items()]):
            what = "free range" if is_free else "block"
            _require(offset == pos, f"{what} at {offset} should start at {pos} (gap or overlap)")
            _require(size > 0, f"empty {what} at {offset}")
            _require(offset % self.alignment == 0, f"{what} at {offset} is not aligned")
            if is_free:
                _require(not prev_free, f"free range at {offset} touches the previous one: not coalesced")
            else:
                _require(size % self.alignment == 0, f"block at {offset} is not a whole number of units")
            prev_free = is_free
            pos = offset + size
        _require(pos == self.capacity, f"blocks and free ranges cover {pos} bytes, not {self.capacity}")

    # ------------------------------------------------------------------ internals

    def _add_free(self, offset: int, size: int) -> None:
        self._free[offset] = size
        self._free_end[offset + size] = offset
        insort(self._by_size, (size, offset))

    def _remove_free(self, offset: int, size: int) -> None:
        del self._free[offset]
        del self._free_end[offset + size]
        i = bisect_left(self._by_size, (size, offset))
        del self._by_size[i]

    def _no_block(self, op: str, offset: int) -> str:
        why = ("that range is free: the block was already freed (double free?)" if offset in self._free
               else "pass exactly an offset that alloc() returned and that was not freed since")
        return f"{op}({offset!r}): no allocated block starts at offset {offset!r}; {why}"


class WhatIf:
    """How large a hole freeing some blocks would make, without changing the allocator.

    The store uses it to choose objects to spill: free candidates here one by one until
    :attr:`largest_free` is large enough. Each :meth:`free` is O(1): merged ranges live in an
    overlay over the allocator's own free-range dicts. The view is only valid while the
    allocator does not change.
    """

    __slots__ = ("_alloc", "_free", "_free_end", "_freed", "largest_free")

    def __init__(self, alloc: Allocator) -> None:
        self._alloc = alloc
        self._free: dict[int, int | None] = {}  # overlay over alloc._free (None: merged away)
        self._free_end: dict[int, int | None] = {}  # overlay over alloc._free_end
        self._freed: set[int] = set()
        #: the largest free range there would be after the frees made so far
        self.largest_free = alloc.largest_free

    def free(self, offset: int) -> None:
        """Pretend the block at ``offset`` was freed."""
        if offset in self._freed:
            raise ValueError(f"what-if free({offset!r}): this block was already freed in this plan")
        size = self._alloc.size_of(offset)
        self._freed.add(offset)
        start, end = offset, offset + size
        left = self._lookup(self._free_end, self._alloc._free_end, start)
        if left is not None:
            self._free[left] = self._free_end[start] = None
            start = left
        right = self._lookup(self._free, self._alloc._free, end)
        if right is not None:
            self._free[end] = self._free_end[end + right] = None
            end += right
        self._free[start] = end - start
        self._free_end[end] = start
        self.largest_free = max(self.largest_free, end - start)

    def free_all(self, offsets: Iterable[int]) -> None:
        """Pretend every block in ``offsets`` was freed."""
        for offset in offsets:
            self.free(offset)

    @staticmethod
    def _lookup(overlay: dict[int, int | None], base: dict[int, int], key: int) -> int | None:
        return overlay[key] if key in overlay else base.get(key)


def _require(ok: bool, message: str) -> None:
    # not `assert`: check() must keep checking under `python -O`
    if not ok:
        raise AssertionError(message)
