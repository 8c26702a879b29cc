"""A local process's connection to its node's object store: blocking create, seal, pin, unpin.

    StoreClient ──StoreCreate(id, size)──▶ node agent      (StoreWaiting while it makes room)
                ◀──StoreCreated(id, offset, size)──        write into the arena at offset
                ──StoreSeal(id)──▶                         now readable by everyone on the node
    other client ──StorePin([id])──▶ ◀──StorePinned(id, offset, size)──  read-only view, no copy
                 ──StoreUnpin([id])──▶                     the store may spill or free it again

The client maps the node's arena once (its name and size come in ``StoreInfo``, the store's first
message) and from then on exchanges only offsets: object bytes never cross the socket. Requests
that get an answer (create, pin) block until it comes; seal, abort, unpin and delete are sent
without waiting. Closing the connection (or the process ending) releases every pin and aborts
every unsealed object of this client, in the store.

Views handed out stay valid as long as they are referenced, even after :meth:`StoreClient.close`
(the mapping goes with the last view), but the bytes behind a view are only guaranteed while
the client holds its pin: ``get``/``put`` (object-store.md, next steps 2 and 3) tie pins to the
lifetime of views. One thread at a time may use a client.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any, Callable

from .. import _protocol as P
from .._transport import LocalClientSocket
from ..errors import ObjectLostError, ObjectStoreFullError
from .shm import Arena

__all__ = ["StoreClient"]

_FRAME_THRESHOLD = 64 * 1024  # store messages are tiny; no out-of-band frames


class StoreClient:
    """A blocking client of the object store listening on the abstract socket ``name``
    (``taskmesh-node-<node_id>``; a node advertises it as ``"store"`` in its Hello info)."""

    def __init__(self, name: str, connect_timeout_s: float = 5.0, probe: bool = False) -> None:
        """``probe``: one connection attempt, no retries while the store starts: for a process
        looking for the store of its own machine among all the cluster's nodes."""
        self.name = name
        identity = b"S" + os.getpid().to_bytes(4, "little") + os.urandom(8)
        try:
            self._sock = LocalClientSocket(f"local:{name}", identity, _FRAME_THRESHOLD,
                                           0.0 if probe else connect_timeout_s)
        except ConnectionError as exc:
            raise ConnectionError(f"no object store answered at @{name}: {exc}") from None
        self._late: dict[bytes, int] = {}  # answers still owed to requests we gave up on
        try:
            info = self._recv(time.monotonic() + connect_timeout_s, "the store's StoreInfo")
            if type(info) is not P.StoreInfo:
                raise ConnectionError(f"the object store at @{name} sent {type(info).__name__} "
                                      f"before StoreInfo")
            self.arena = Arena.attach(info.arena)
        except BaseException:
            self._sock.close()
            raise
        self.capacity = info.capacity
        #: called (before the ConnectionError is raised) when the store is found gone: in a
        #: worker that means its node agent died, and the worker exits at once (bug 4 of
        #: docs/chaos.md: reporting the error as the task's would defeat the retry)
        self.on_closed: Callable[[], None] | None = None

    # ------------------------------------------------------------------ requests

    def create(self, object_id: bytes, size: int) -> memoryview:
        """Space for a new object of ``size`` bytes: a writable view of the arena; fill it, then
        :meth:`seal` (or :meth:`abort`). Waits while the store makes room; raises
        :class:`ObjectStoreFullError` if it cannot (at once when ``size`` exceeds the store, or
        after ``store_create_timeout_s``), ValueError if the store refused the request."""
        self._send(P.StoreCreate(object_id, size))
        while True:
            msg = self._answer(object_id, None, "create")
            if type(msg) is P.StoreCreated:
                return self.arena.writable(msg.offset, msg.size)
            if type(msg) is P.StoreCreateFailed:
                if msg.full:
                    raise ObjectStoreFullError(f"object store @{self.name}: {msg.reason}")
                raise ValueError(f"object store @{self.name} refused the create: {msg.reason}")
            # StoreWaiting: the answer follows

    def seal(self, object_id: bytes) -> None:
        """The object is complete: it becomes immutable and readable (no answer is awaited)."""
        self._send(P.StoreSeal(object_id))

    def abort(self, object_id: bytes) -> None:
        """Give up an object created but not sealed: its space is freed."""
        self._send(P.StoreAbort(object_id))

    def pin(self, object_ids: list[bytes], timeout_s: float | None = None) -> list[memoryview]:
        """Read-only views of the objects, one pin each, in order. Waits for objects being
        restored from disk or not sealed yet. Raises :class:`ObjectLostError` if one is not in
        the store, :class:`ObjectStoreFullError` if one could not be restored for lack of room,
        TimeoutError after ``timeout_s``; the pins already granted are released first."""
        if not object_ids:
            return []
        self._send(P.StorePin(list(object_ids)))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        wanted: dict[bytes, int] = {}
        for oid in object_ids:
            wanted[oid] = wanted.get(oid, 0) + 1
        views: dict[bytes, list[memoryview]] = {}
        failure: Any = None
        try:
            while wanted:
                msg = self._answer(None, wanted, "pin", deadline)
                if type(msg) is P.StoreWaiting:
                    continue
                wanted[msg.object_id] -= 1
                if not wanted[msg.object_id]:
                    del wanted[msg.object_id]
                if type(msg) is P.StorePinned:
                    views.setdefault(msg.object_id, []).append(self.arena.readonly(msg.offset, msg.size))
                elif failure is None:
                    failure = msg
        except TimeoutError:
            for oid, n in wanted.items():  # their answers may still come: release them then
                self._late[oid] = self._late.get(oid, 0) + n
            failure = TimeoutError(f"object store @{self.name}: pin of {len(wanted)} object(s) "
                                   f"not answered within {timeout_s:g} s")
        if failure is not None:
            granted = [oid for oid, vs in views.items() for _ in vs]
            if granted:
                self._send(P.StoreUnpin(granted))
            if isinstance(failure, BaseException):
                raise failure
            cls = ObjectStoreFullError if failure.full else ObjectLostError
            raise cls(f"object store @{self.name}: {failure.reason}")
        return [views[oid].pop() for oid in object_ids]

    def fetch(self, object_id: bytes, size: int, sources: list) -> None:
        """Ask the store to pull the object from another node (``sources``: ``[node_id,
        "host:port"]`` of holders) unless it has it; a :meth:`pin` of it then waits for the
        bytes, and fails with ObjectLostError if no source could deliver them."""
        self._send(P.StoreFetch(object_id, size, list(sources)))

    def unpin(self, object_ids: list[bytes]) -> None:
        """Release one pin on each object (views of it must no longer be read)."""
        if object_ids:
            self._send(P.StoreUnpin(list(object_ids)))

    def delete(self, object_ids: list[bytes]) -> None:
        """Nobody references these objects any more: the store frees each once nobody pins it.
        (Later the head sends this; for now local clients may.)"""
        if object_ids:
            self._send(P.StoreDelete(list(object_ids)))

    def close(self) -> None:
        """Close the connection: the store drops this client's pins and unsealed objects."""
        self._sock.close(linger_ms=1000)
        self.arena.close()

    def __enter__(self) -> "StoreClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _send(self, msg: Any) -> None:
        if self._sock.peer_closed:
            raise self._closed("")
        try:
            self._sock.send(msg)
        except ConnectionError:
            raise self._closed("") from None

    def _closed(self, detail: str) -> ConnectionError:
        if self.on_closed is not None:
            self.on_closed()
        return ConnectionError(f"the object store at @{self.name} closed the connection{detail}")

    def _answer(self, object_id: bytes | None, wanted: dict[bytes, int] | None, what: str,
                deadline: float | None = None) -> Any:
        """The next answer about ``object_id`` (or an object in ``wanted``); answers owed to
        requests given up on are settled on the way (a late pin is released)."""
        while True:
            msg = self._recv(deadline, f"the answer to a {what}")
            oid = getattr(msg, "object_id", None)
            if oid is not None and (oid == object_id or (wanted is not None and oid in wanted)):
                return msg
            if type(msg) in (P.StorePinned, P.StorePinFailed) and self._late.get(msg.object_id):
                self._late[msg.object_id] -= 1
                if not self._late[msg.object_id]:
                    del self._late[msg.object_id]
                if type(msg) is P.StorePinned:
                    self._send(P.StoreUnpin([msg.object_id]))
            # anything else (e.g. StoreWaiting of a request given up on) needs nothing

    def _recv(self, deadline: float | None, what: str) -> Any:
        sock = self._sock
        while True:
            msg = sock.recv_nowait()
            if msg is not None:
                return msg
            if sock.peer_closed:
                raise self._closed(f" while this client waited for {what}")
            sock.flush()
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError(f"object store @{self.name}: no answer within the time-out "
                                   f"while waiting for {what}")
            fd = sock.poll_target
            writers = [fd] if sock.wants_write else []
            select.select([fd], writers, [], 0.1 if wait is None else min(wait, 0.1))
