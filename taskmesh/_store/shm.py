"""The node's shared-memory arena: one file in /dev/shm, mapped once by every local process.

The node agent creates it (``Arena.create``) and owns its lifetime; workers and local drivers
attach to it by name (``Arena.attach``) and read objects through zero-copy views. The file name
carries the creating agent's pid, so a later agent can sweep arenas whose owner died without
cleaning up (``sweep_dead``), even after a SIGKILL.
"""

from __future__ import annotations

import mmap
import os
import re

SHM_DIR = "/dev/shm"
_PREFIX = "taskmesh-arena-"
_NAME = re.compile(rf"^{_PREFIX}(\d+)-([0-9A-Za-z_]+)$")


def arena_name(node_id: str, pid: int | None = None) -> str:
    """The file name of a node's arena: owner pid and node id, nothing secret."""
    if not re.fullmatch(r"[0-9A-Za-z_]+", node_id):
        raise ValueError(f"bad node id for an arena name: {node_id!r}")
    return f"{_PREFIX}{os.getpid() if pid is None else pid}-{node_id}"


class Arena:
    """A mapped shared-memory file of ``capacity`` bytes."""

    def __init__(self, name: str, capacity: int, mm: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.capacity = capacity
        self._mm = mm
        self._view = memoryview(mm)
        self.owner = owner

    @classmethod
    def create(cls, name: str, capacity: int) -> "Arena":
        """Create the file (it must not exist) and map it; only the node agent does this."""
        if capacity <= 0:
            raise ValueError("arena capacity must be positive")
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, capacity)  # sparse: pages are allocated when first written
            mm = mmap.mmap(fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return cls(name, capacity, mm, owner=True)

    @classmethod
    def attach(cls, name: str) -> "Arena":
        """Map an existing arena (workers, local drivers)."""
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR)
        try:
            capacity = os.fstat(fd).st_size
            mm = mmap.mmap(fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(name, capacity, mm, owner=False)

    def writable(self, offset: int, size: int) -> memoryview:
        """A view to fill a new object (the creator, before it seals)."""
        self._check(offset, size)
        return self._view[offset:offset + size]

    def readonly(self, offset: int, size: int) -> memoryview:
        """A read-only zero-copy view of a sealed object."""
        self._check(offset, size)
        return self._view[offset:offset + size].toreadonly()

    def _check(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.capacity:
            raise ValueError(f"range [{offset}, {offset + size}) is outside the arena "
                             f"of {self.capacity} bytes")

    def close(self) -> None:
        """Unmap; the owner also removes the file. Views still alive keep the mapping."""
        self._view.release()
        try:
            self._mm.close()
        except BufferError:  # a zero-copy view is still in use; the mapping goes with it
            pass
        if self.owner:
            unlink(self.name)


def capacity_for(requested: int | None, fraction_of_ram: float = 0.3) -> int:
    """The arena size to use: ``requested`` bytes, or a fraction of RAM, never more than
    /dev/shm can hold (writing past a full tmpfs would kill the writer with SIGBUS)."""
    import psutil

    want = requested if requested else int(psutil.virtual_memory().total * fraction_of_ram)
    st = os.statvfs(SHM_DIR)
    room = int(st.f_bavail * st.f_frsize * 0.9)
    return max(1 << 20, min(want, room))


def unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def sweep_dead(pid_alive) -> list[str]:  # type: ignore[no-untyped-def]
    """Remove arenas whose creating agent is no longer alive; return their names."""
    removed = []
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return removed
    for name in names:
        m = _NAME.match(name)
        if m and not pid_alive(int(m.group(1))):
            unlink(name)
            removed.append(name)
    return removed
