"""Processes and shared memory a test leaves behind: who is still alive (and what it runs),
waiting for them to go, killing what is left, and the entries of /dev/shm."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import psutil

import taskmesh

from .wait import until


def descendants() -> set[int]:
    """Pids of every process this one started, and theirs."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def alive(pid: int) -> bool:
    """The process runs (a zombie, dead but not reaped yet, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cmdline(pid: int) -> str:
    """The command line of ``pid``, or "?" if it is gone."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return "?"


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Wait until none of ``pids`` is alive; return the ones still alive."""
    left = set(pids)

    def none_left() -> bool:
        left.difference_update([p for p in left if not alive(p)])
        return not left

    until(none_left, timeout, check=False)
    return left


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def embedded_cluster(**init_kwargs: Any) -> Iterator[dict]:
    """An embedded cluster of the caller's own (one still running is shut down first):
    what ``taskmesh.init(**init_kwargs)`` returned; at the end ``stop_and_check``."""
    if taskmesh.is_initialized():
        taskmesh.shutdown()
    before_shm = shm_entries()
    info = taskmesh.init(**init_kwargs)
    procs = descendants()
    try:
        yield info
    finally:
        stop_and_check(procs, before_shm)


def stop_and_check(procs: set[int], before_shm: set[str]) -> None:
    """Shut the embedded cluster down; check that none of ``procs`` and no /dev/shm entry
    beyond ``before_shm`` is left (what is left is killed first, then reported)."""
    taskmesh.shutdown()
    left = wait_gone(procs)
    kill_all(left)
    assert not left, f"processes left after shutdown: {left}"
    assert ours(shm_entries() - before_shm, procs) == set()


def ours(entries: set[str], procs: set[int]) -> set[str]:
    """The /dev/shm entries that this test's processes made: an arena's name holds its node
    agent's pid (``taskmesh-arena-<pid>-<node>``); the arenas of another test run on this
    machine at the same time are not ours to judge."""
    mine = set()
    for name in entries:
        parts = name.split("-")
        if name.startswith("taskmesh-arena-") and len(parts) >= 4 and parts[2].isdigit():
            if int(parts[2]) not in procs:
                continue
        mine.add(name)
    return mine
