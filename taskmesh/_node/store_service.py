"""The node's object store service: local processes ask the node agent for arena space and pins.

    local client ──StoreCreate/Seal/Abort/Pin/Unpin/Delete──▶ StoreService ──▶ StoreState (sans-IO)
         ▲           (socket @taskmesh-node-<node_id>)          │    ▲             │ commands
         └──StoreInfo, StoreCreated, StorePinned, ...───────────┘    │             ▼
                                         spilled/restored (or failed)│    Spill, Restore, Freed
                                                 (wake pipe in the   │             │
                                                  agent's poller)  ──┴── spill thread ──▶ spill dir

The node agent owns the arena and runs this service inside its own event loop: it registers the
service's fds in its poller, calls :meth:`StoreService.handle` with what is ready and
:meth:`StoreService.tick` on every turn, and :meth:`StoreService.close` at exit. Every decision
(where an object goes, what to spill, when a wait times out) is :class:`StoreState`'s; this
module only executes its commands: it answers clients, and hands spill-file work to one
background thread so the loop never blocks on disk. That thread does the jobs in order (so a
file is never deleted before it is written), and reports each finished spill or restore, or its
failure with the exception's text, through a pipe the agent polls; the loop then tells the state
(``spilled``/``restored``, ``spill_failed``/``restore_failed``) and logs one line per failure. A
failed spill leaves no partial file behind (the thread removes it); the object stays in memory.
A failed restore loses the object: its readers get an error and its spill file is removed. The arena range
of an object being spilled or restored stays allocated to it until that report, so the thread
and the loop never touch the same bytes.

A client is known by the identity it sends first on its connection; it gets ``StoreInfo``
(the arena's file name and size) at once, maps the arena, and from then on exchanges only
offsets with the store. A closed connection means the client process is gone: its pins and its
unsealed objects go with it (``client_gone``). Local clients run as the agent's user (the socket
checks), and they may write the whole arena anyway, so requests are not checked against who
created an object.

Spill files live in a per-agent directory, ``<spill_dir or tmp>/taskmesh-spill-<pid>-<node_id>``
(mode 0700), one file per object named by its id in hex; the directory is removed at exit, and a
new agent removes those of agents that died without cleaning up.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from .. import _protocol as P
from .._store.shm import Arena
from .._store.state import (
    Command,
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
from .._transport import LocalServerSocket
from ..config import Config

log = logging.getLogger("taskmesh.node.store")

#: while requests wait for room, the agent's loop wakes this often to time them out
TICK_S = 0.05
#: object ids longer than this are refused (they name spill files)
MAX_OBJECT_ID = 64

_SPILL_PREFIX = "taskmesh-spill-"
_SPILL_NAME = re.compile(rf"^{_SPILL_PREFIX}(\d+)-[0-9A-Za-z_]+$")

# spill-thread jobs
_SPILL, _RESTORE, _DELETE = "spill", "restore", "delete"


def store_socket_name(node_id: str) -> str:
    """The abstract unix socket a node's store listens on (advertised in the node's Hello)."""
    return f"taskmesh-node-{node_id}"


def make_spill_dir(base: str, node_id: str, pid_alive: Callable[[int], bool]) -> str:
    """Create this agent's spill directory (mode 0700) under ``base`` (or the temp dir), first
    removing the directories of agents that are no longer alive."""
    base = base or tempfile.gettempdir()
    os.makedirs(base, mode=0o700, exist_ok=True)
    for name in sweep_dead_spill_dirs(base, pid_alive):
        log.info("removed the spill directory %s of a node agent that died", name)
    path = os.path.join(base, f"{_SPILL_PREFIX}{os.getpid()}-{node_id}")
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


class _SpillThread:
    """One thread doing every spill-file operation in order; finished spills and restores are
    queued for the event loop and announced by a byte on a pipe."""

    def __init__(self, arena: Arena, directory: str) -> None:
        self.arena = arena
        self.directory = directory
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: collections.deque = collections.deque()  # (kind, object_id, error or None)
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="taskmesh-spill", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, kind: str, object_id: bytes, offset: int = 0, size: int = 0) -> None:
        self._jobs.put((kind, object_id, offset, size))

    def completed(self) -> list[tuple[str, bytes, str | None]]:
        """Spills and restores finished since the last call (drains the wake pipe)."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

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
            self._done.append((kind, object_id, error))
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # the pipe is full: the loop is already due to wake

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
        os.close(self.wake_fd)
        os.close(self._wake_w)


class StoreService:
    """The object store of one node: a local socket, :class:`StoreState` over the node's arena,
    and the spill thread (see the module docstring)."""

    def __init__(self, node_id: str, arena: Arena, config: Config,
                 pid_alive: Callable[[int], bool]) -> None:
        self.name = store_socket_name(node_id)
        self.arena = arena
        self.state = StoreState(arena.capacity, create_timeout_s=config.store_create_timeout_s)
        self.spill_dir = make_spill_dir(config.spill_dir, node_id, pid_alive)
        try:
            self.sock = LocalServerSocket(self.name, config.frame_threshold_bytes, report_joins=True)
        except OSError as exc:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            raise OSError(f"the object store socket @{self.name} is taken ({exc}): is another "
                          f"node agent running with node id {node_id}?") from None
        self._io = _SpillThread(arena, self.spill_dir)
        self.io_errors = 0

    # ------------------------------------------------------------------ the agent's loop

    def attach(self, poller: Any) -> None:
        """Register the service's fds in the agent's poller and start the spill thread."""
        self.sock.attach(poller)
        poller.register(self._io.wake_fd)
        self._io.start()

    def wake_at(self, now: float) -> float | None:
        """When the loop must call :meth:`tick` next, or None if only events matter."""
        return now + TICK_S if self.state.stats()["num_waiting"] else None

    def handle(self, ready: dict, now: float) -> None:
        """Serve what ``ready`` (the poller's result) says is ready."""
        msgs = self.sock.receive(ready)
        for peer in self.sock.joined_peers():  # before any answer to what they sent
            self.sock.send(peer, P.StoreInfo(self.arena.name, self.arena.capacity))
        for peer, msg in msgs:
            try:
                self._on_message(peer, msg, now)
            except Exception:  # a bug must not take the node down; say so loudly
                log.exception("error while handling %s from local client %r", type(msg).__name__, peer)
        for peer in self.sock.closed_peers():
            self._guarded(self._client_gone, peer)
        if self._io.wake_fd in ready:
            for kind, object_id, error in self._io.completed():
                self._guarded(self._io_done, kind, object_id, error)

    def tick(self, now: float) -> None:
        """Time out the creates and restores that waited too long for room."""
        self._guarded(self._tick, now)

    def close(self) -> None:
        """Stop the spill thread, close the socket, remove the spill directory."""
        self._io.stop(timeout_s=10.0)
        self.sock.close()
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    # ------------------------------------------------------------------ requests

    def _on_message(self, peer: bytes, msg: Any, now: float) -> None:
        kind = type(msg)
        state = self.state
        if kind is P.StoreCreate:
            oid = msg.object_id
            if not 0 < len(oid) <= MAX_OBJECT_ID:
                self.sock.send(peer, P.StoreCreateFailed(
                    oid, f"object ids must have 1 to {MAX_OBJECT_ID} bytes, not {len(oid)}", False))
                return
            exists = state.info(oid) is not None
            try:
                cmds = state.create(oid, msg.size, peer, now)
            except ValueError as exc:
                self.sock.send(peer, P.StoreCreateFailed(oid, str(exc), False))
                return
            self._run(cmds, refused=oid if exists else None)
        elif kind is P.StorePin:
            for oid in msg.object_ids:
                self._run(state.pin(oid, peer))
        elif kind is P.StoreUnpin:
            for oid in msg.object_ids:
                self._misuse(peer, state.unpin, oid, peer)
        elif kind is P.StoreSeal:
            self._misuse(peer, state.seal, msg.object_id)
        elif kind is P.StoreAbort:
            self._misuse(peer, state.abort, msg.object_id)
        elif kind is P.StoreDelete:
            for oid in msg.object_ids:
                self._run(state.delete(oid))
        else:
            log.warning("ignored %s from local client %r: not a request to the object store",
                        kind.__name__, peer)

    def _misuse(self, peer: bytes, method: Callable[..., list[Command]], *args: Any) -> None:
        """A request without an answer: one that makes no sense is logged (the client gets nothing)."""
        try:
            cmds = method(*args)
        except ValueError as exc:
            log.warning("ignored a request of local client %r: %s", peer, exc)
            return
        self._run(cmds)

    def _client_gone(self, peer: bytes) -> None:
        self._run(self.state.client_gone(peer))

    def _tick(self, now: float) -> None:
        self._run(self.state.tick(now), pin_full=True)

    def _io_done(self, kind: str, object_id: bytes, error: str | None) -> None:
        state = self.state
        if error is None:
            self._run(state.spilled(object_id) if kind == _SPILL else state.restored(object_id))
            return
        self.io_errors += 1
        if kind == _SPILL:
            log.error("spilling object %s to %s failed: %s; it stays in memory, and is not spilled "
                      "again for %g s unless another spill succeeds", object_id.hex(), self.spill_dir,
                      error, state.spill_retry_s)
            self._run(state.spill_failed(object_id, error))
        else:
            log.error("restoring object %s from %s failed: %s; the object is lost on this node, "
                      "its readers get ObjectLostError", object_id.hex(), self.spill_dir, error)
            self._run(state.restore_failed(object_id, error))

    # ------------------------------------------------------------------ commands

    def _run(self, cmds: list[Command], refused: bytes | None = None, pin_full: bool = False) -> None:
        """Execute StoreState commands. ``refused``: a create of that id was refused (it exists),
        not failed for room; ``pin_full``: pin failures are time-outs waiting for room."""
        send = self.sock.send
        for c in cmds:  # isinstance, not a dict of handlers: lets the type checker follow
            if isinstance(c, Created):
                send(c.client, P.StoreCreated(c.object_id, c.offset, c.size))
            elif isinstance(c, Pinned):
                send(c.client, P.StorePinned(c.object_id, c.offset, c.size))
            elif isinstance(c, Waiting):
                send(c.client, P.StoreWaiting(c.object_id))
            elif isinstance(c, CreateFailed):
                send(c.client, P.StoreCreateFailed(c.object_id, c.reason, c.object_id != refused))
            elif isinstance(c, PinFailed):
                send(c.client, P.StorePinFailed(c.object_id, c.reason, pin_full))
            elif isinstance(c, Spill):
                self._io.submit(_SPILL, c.object_id, c.offset, c.size)
            elif isinstance(c, Restore):
                self._io.submit(_RESTORE, c.object_id, c.offset, c.size)
            elif isinstance(c, Freed):
                if c.on_disk:
                    self._io.submit(_DELETE, c.object_id)
            else:
                raise AssertionError(f"unknown store command {c!r}")

    @staticmethod
    def _guarded(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a bug must not take the node down; say so loudly
            log.exception("internal error in the object store service")
