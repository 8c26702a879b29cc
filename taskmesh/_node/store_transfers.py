"""The thread side of a node store's transfers: serving other nodes and fetching from them.

    other node ──TCP──▶ TransferServer thread ──ServePin(request)──▶ ┐
                          waits for the pin, streams a view,          │ Inbox (queue + wake pipe),
                          ──ServeUnpin(object id)───────────────────▶ │ drained by the agent's loop:
    fetch thread ◀─TCP── other nodes; fills the arena range,           │ StoreService.serve_pin,
                          ──FetchDone(object id, error)─────────────▶ ┘ serve_unpin, fetch_done

Only the loop touches ``StoreState``; these threads talk to it through :class:`Transfers`'
inbox and, for a pin, a :class:`ServeRequest` the loop answers. The store service
(``store_service.py``) decides nothing here either: it only turns these events into state calls.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import NamedTuple

from .. import _transfer as transfer
from .._secret import Security
from .._store.shm import Arena
from .._transfer import (
    Cancellation,
    FetchFailed,
    NotHere,
    TransferCancelled,
    TransferCounters,
    TransferError,
    TransferServer,
)
from .inbox import Inbox

log = logging.getLogger("taskmesh.node.store")

SHUTTING_DOWN = "the node's object store is shutting down"


class ServeRequest:
    """A serving thread's request for a pin, answered once by the loop (or given up on by the
    thread first: a pin granted after that is released by the loop)."""

    __slots__ = ("_lock", "abandoned", "done", "error", "object_id", "offset", "size")

    def __init__(self, object_id: bytes) -> None:
        self.object_id = object_id
        self.done = threading.Event()
        self.offset = 0
        self.size = 0
        self.error: str | None = None  # the pin failed: why
        self.abandoned = False  # the thread stopped waiting
        self._lock = threading.Lock()

    def grant(self, offset: int, size: int) -> bool:
        """(The loop.) The pin is held; False if the thread no longer wants it."""
        with self._lock:
            if self.abandoned or self.done.is_set():
                return False
            self.offset, self.size = offset, size
            self.done.set()
            return True

    def refuse(self, reason: str) -> bool:
        """(The loop, or close.) No pin; False if the thread no longer waits for an answer."""
        with self._lock:
            if self.abandoned or self.done.is_set():
                return False
            self.error = reason
            self.done.set()
            return True

    def give_up(self) -> bool:
        """(The thread, after waiting.) Stop waiting; False if the answer came meanwhile."""
        with self._lock:
            if self.done.is_set():
                return False
            self.abandoned = True
            return True


class ServePin(NamedTuple):
    request: ServeRequest


class ServeUnpin(NamedTuple):
    object_id: bytes


class FetchDone(NamedTuple):
    object_id: bytes
    error: str | None  # None: the bytes are all in place


TransferEvent = ServePin | ServeUnpin | FetchDone


class Transfers:
    """The transfer server and the fetch threads of one store, over its arena.

    ``host``: the address the server listens on (the port is the system's choice;
    ``address`` is ``"host:port"``). ``timeout_s``, ``connect_timeout_s``: the inactivity and
    connect time-outs of transfers, both ways; a serving thread waits ``timeout_s`` at most for
    its pin. ``security``: the cluster key peers must prove they hold, and whether the bytes
    are encrypted. Raises OSError if the server cannot listen.
    """

    def __init__(self, arena: Arena, host: str, *, security: Security,
                 timeout_s: float = transfer.DEFAULT_TIMEOUT_S,
                 connect_timeout_s: float = transfer.DEFAULT_CONNECT_TIMEOUT_S) -> None:
        self.arena = arena
        self.security = security
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.counters = TransferCounters()
        self._server = TransferServer(host, self._open, self.counters, security=security,
                                      timeout_s=timeout_s)
        self.address = self._server.address
        self._inbox = Inbox()
        self.wake_fd = self._inbox.wake_fd
        self._cancel = Cancellation()
        self._lock = threading.Lock()  # _closing, _waiting
        self._closing = False
        self._waiting: set[ServeRequest] = set()  # serving threads waiting for their pin
        self._fetches: dict[bytes, threading.Thread] = {}  # (touched by the loop only)

    @property
    def active(self) -> int:
        """Connections being served."""
        return self._server.active

    def start(self) -> None:
        self._server.start()

    def events(self) -> list[TransferEvent]:
        """(The loop.) What the threads reported since the last call."""
        return self._inbox.drain()  # type: ignore[return-value]

    def fetch(self, object_id: bytes, sources: list[tuple[str, str]], dest: memoryview) -> None:
        """(The loop.) Start a thread filling ``dest`` from ``sources`` ((node_id, "host:port"),
        in the order to try); it reports a :class:`FetchDone`."""
        self._fetches = {oid: t for oid, t in self._fetches.items() if t.is_alive()}
        thread = threading.Thread(target=self._fetch, args=(object_id, sources, dest),
                                  daemon=True, name=f"taskmesh-fetch-{object_id.hex()[:16]}")
        self._fetches[object_id] = thread
        thread.start()

    def close(self, timeout_s: float) -> None:
        """Refuse the waiting pins, stop the server and the fetches (threads joined within
        ``timeout_s`` each), close the inbox."""
        with self._lock:
            self._closing = True
            for req in self._waiting:
                req.refuse(SHUTTING_DOWN)
        self._cancel.cancel()
        self._server.close(timeout_s)
        for object_id, thread in list(self._fetches.items()):
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("the fetch of object %s did not stop within %g s",
                            object_id.hex(), timeout_s)
        self._inbox.close()

    @contextlib.contextmanager
    def _open(self, object_id: bytes) -> Iterator[memoryview]:
        """(A serving thread.) Pin the object through the loop, yield a read-only view of it,
        unpin it through the loop afterwards. NotHere if this store does not hold it."""
        req = ServeRequest(object_id)
        with self._lock:
            if self._closing:
                raise TransferError(SHUTTING_DOWN)
            self._waiting.add(req)
        self._inbox.put(ServePin(req))
        req.done.wait(self.timeout_s)
        with self._lock:
            self._waiting.discard(req)
        if req.give_up():
            raise TransferError(f"object {object_id.hex()} did not become readable within "
                                f"{self.timeout_s:g} s (being written, or restored from disk)")
        if req.error is not None:
            raise (TransferError if self._closing else NotHere)(req.error)
        try:
            yield self.arena.readonly(req.offset, req.size)
        finally:
            self._inbox.put(ServeUnpin(object_id))

    def _fetch(self, object_id: bytes, sources: list[tuple[str, str]], dest: memoryview) -> None:
        """(A fetch thread.) Fill the object's arena range from its sources; report to the loop."""
        error: str | None = None
        try:
            transfer.fetch_into(object_id, dest, sources, security=self.security,
                                counters=self.counters, connect_timeout_s=self.connect_timeout_s,
                                timeout_s=self.timeout_s, cancel=self._cancel)
        except TransferCancelled:
            return  # closing: the loop is gone
        except FetchFailed as exc:
            error = str(exc)
        except Exception as exc:  # a bug: the readers must still get an answer
            log.exception("internal error while fetching object %s", object_id.hex())
            error = f"internal error while fetching object {object_id.hex()}: {exc!r}"
        finally:
            with contextlib.suppress(BufferError):
                dest.release()  # the arena's mapping may go once no view is left
        self._inbox.put(FetchDone(object_id, error))
