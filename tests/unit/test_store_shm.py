"""The shared-memory arena: create, attach, zero-copy views, cleanup of dead owners."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from taskmesh._store.shm import SHM_DIR, Arena, arena_name, sweep_dead
from taskmesh._transport import pid_alive

from ..support.wait import until


@pytest.fixture
def arena():
    a = Arena.create(arena_name(f"test{os.getpid()}"), 1 << 20)
    yield a
    a.close()
    assert not os.path.exists(os.path.join(SHM_DIR, a.name))


def test_views_are_shared_and_zero_copy(arena):
    w = arena.writable(4096, 5)
    w[:] = b"hello"
    other = Arena.attach(arena.name)  # as a worker would
    r = other.readonly(4096, 5)
    assert bytes(r) == b"hello" and r.readonly
    w[0:1] = b"j"  # same memory: the reader sees the write
    assert bytes(r) == b"jello"
    r.release()
    other.close()
    assert os.path.exists(os.path.join(SHM_DIR, arena.name))  # only the owner removes it


def test_out_of_range_and_bad_names(arena):
    with pytest.raises(ValueError, match="outside the arena"):
        arena.readonly(arena.capacity - 1, 2)
    with pytest.raises(ValueError):
        arena_name("../etc")
    with pytest.raises(FileExistsError):
        Arena.create(arena.name, 4096)


def test_sweep_removes_arenas_of_dead_agents():
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)
    dead_pid = int(p.stdout)
    name = arena_name("sweepme", pid=dead_pid)
    a = Arena.create(name, 4096)
    a.owner = False  # pretend its owner was SIGKILLed before cleaning up
    a.close()
    mine = Arena.create(arena_name("alive"), 4096)
    try:
        removed = sweep_dead(pid_alive)
        assert name in removed and mine.name not in removed
        assert not os.path.exists(os.path.join(SHM_DIR, name))
    finally:
        mine.close()


def test_a_zombie_counts_as_dead():
    """A killed agent that nobody reaped yet must not block a new one or keep its arena."""
    p = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(p.pid)
        p.kill()
        until(lambda: not pid_alive(p.pid), timeout=10, interval=0.01,  # dead, not reaped: a zombie
              what="pid_alive to say the killed process is dead")
        with open(f"/proc/{p.pid}/stat") as f:
            assert f.read().split(") ", 1)[1].startswith("Z")  # still there, as a zombie
    finally:
        p.kill()
        p.wait(timeout=10)
    assert pid_alive(os.getpid())
