"""Spill files: where a node's store keeps objects that do not fit in memory, and the thread
that writes and reads them.

    StoreState ──Spill/Restore/Freed──▶ store service ──job──▶ SpillThread ──▶ <dir>/<object id hex>
                                             ▲                     │ (in order: a file is never
                                             └──(kind, id, error)──┘  deleted before it is written)
                                                wake pipe, polled by the node agent

Each agent spills into its own directory, ``<spill_dir or tmp>/taskmesh-spill-<pid>-<node_id>``
(mode 0700), removed at exit; a new agent removes the directories of agents that died without
cleaning up (their pid is gone). A spill is written to ``<name>.part`` and renamed when
complete, so a spill file only exists whole; a failed spill removes its partial file.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable

from .._store.shm import Arena
from .inbox import Inbox

log = logging.getLogger("taskmesh.node.store")

_SPILL_PREFIX = "taskmesh-spill-"
_SPILL_NAME = re.compile(rf"^{_SPILL_PREFIX}(\d+)-[0-9A-Za-z_]+$")

#: spill-thread jobs
SPILL, RESTORE, DELETE = "spill", "restore", "delete"
_SPILL, _RESTORE, _DELETE = SPILL, RESTORE, DELETE


def spill_dir_path(base: str, node_id: str, pid: int) -> str:
    """The spill directory of the agent ``pid`` of node ``node_id`` under ``base`` (or the temp dir)."""
    return os.path.join(base or tempfile.gettempdir(), f"{_SPILL_PREFIX}{pid}-{node_id}")


def make_spill_dir(base: str, node_id: str, pid_alive: Callable[[int], bool]) -> str:
    """Create this agent's spill directory (mode 0700) under ``base`` (or the temp dir), first
    removing the directories of agents that are no longer alive."""
    base = base or tempfile.gettempdir()
    os.makedirs(base, mode=0o700, exist_ok=True)
    for name in sweep_dead_spill_dirs(base, pid_alive):
        log.info("removed the spill directory %s of a node agent that died", name)
    path = spill_dir_path(base, node_id, os.getpid())
    shutil.rmtree(path, ignore_errors=True)  # left by a dead process that had our pid
    os.mkdir(path, 0o700)
    return path


def sweep_dead_spill_dirs(base: str, pid_alive: Callable[[int], bool]) -> list[str]:
    """Remove our user's spill directories in ``base`` whose agent is gone; return their names."""
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return removed
    uid = os.geteuid()
    for name in names:
        m = _SPILL_NAME.match(name)
        if not m or pid_alive(int(m.group(1))):
            continue
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if st.st_uid != uid or not stat.S_ISDIR(st.st_mode):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    return removed


class SpillThread:
    """One thread doing every spill-file operation in order; finished spills and restores are
    queued for the event loop and announced by a byte on a pipe."""

    def __init__(self, arena: Arena, directory: str) -> None:
        self.arena = arena
        self.directory = directory
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done = Inbox()  # (kind, object_id, error or None)
        self.wake_fd = self._done.wake_fd
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="taskmesh-spill", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, kind: str, object_id: bytes, offset: int = 0, size: int = 0) -> None:
        self._jobs.put((kind, object_id, offset, size))

    def completed(self) -> list[tuple[str, bytes, str | None]]:
        """Spills and restores finished since the last call (drains the wake pipe)."""
        return self._done.drain()

    def path(self, object_id: bytes) -> str:
        return os.path.join(self.directory, object_id.hex())

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping:
                return
            kind, object_id, offset, size = job
            error = None
            try:
                if kind == _SPILL:
                    self._spill(object_id, offset, size)
                elif kind == _RESTORE:
                    self._restore(object_id, offset, size)
                else:
                    try:
                        os.unlink(self.path(object_id))
                    except FileNotFoundError:
                        pass  # e.g. the file of a failed restore, gone already
            except Exception as exc:  # reported to the loop, which logs it
                error = f"{type(exc).__name__}: {exc}"
            if kind == _DELETE:
                if error is not None:
                    log.warning("could not delete the spill file of object %s: %s", object_id.hex(), error)
                continue
            self._done.put((kind, object_id, error))

    def _spill(self, object_id: bytes, offset: int, size: int) -> None:
        path = self.path(object_id)
        part = path + ".part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                view = self.arena.readonly(offset, size)
                while view.nbytes:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(part, path)  # a spill file exists only once complete
        except BaseException:
            try:  # the store assumes no file after a failed spill
                os.unlink(part)
            except OSError:
                pass
            raise

    def _restore(self, object_id: bytes, offset: int, size: int) -> None:
        fd = os.open(self.path(object_id), os.O_RDONLY)
        try:
            view = self.arena.writable(offset, size)
            while view.nbytes:
                n = os.readv(fd, [view])
                if n == 0:
                    raise EOFError(f"the spill file is shorter than the object ({size} bytes)")
                view = view[n:]
        finally:
            os.close(fd)

    def stop(self, timeout_s: float) -> None:
        """Skip queued jobs, finish the one in progress (bounded), close the pipe."""
        self._stopping = True
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the spill thread did not finish within %g s", timeout_s)
        self._done.close()
