"""A driver's or worker's access to the object store of the node it runs on: large values in place.

    put(x) / a large task result ──create──▶ node store: write pickle + buffers once ──seal──▶
        the head records a STORED marker (object id, size, holders), never the bytes
    get(ref) ──pin──▶ read-only views of the arena ──pickle.loads(buffers=views)──▶ value
        (numpy arrays backed by shared memory: no copy, whatever the size)
    the last Python object using the views dies ──▶ finalizer ──▶ batched StoreUnpin

A pin lives exactly as long as the memory it protects is reachable: every view handed to
``pickle.loads`` is a slice of one read-only numpy array per pin (the "holder"), so the value's
arrays keep the holder alive, and a ``weakref.finalize`` on the holder queues the unpin when the
last of them goes. Finalizers may run in any thread, even inside garbage collection, so they only
append to a deque; the queue is flushed with the next store request or by the client core's
periodic housekeeping. Gets of an object whose holder is still alive reuse it: no round trip,
and two gets share memory.

An object held only by other nodes is first pulled into this node's store (``StoreFetch``; the
node agent does the transfer, once per object however many processes ask), then pinned. One
thread at a time talks to the store (a lock); the store connection is opened on first use.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from .._protocol import SerializedObject
from .._store import layout
from .._store.client import StoreClient

__all__ = ["LocalStore"]

log = logging.getLogger("taskmesh.client")

#: buffers at least this large are copied into the store by several threads at once: one core's
#: memcpy does not saturate memory bandwidth (measured here: 6.7 GB/s on one thread, 13.7 on two)
PARALLEL_COPY_BYTES = 8 << 20
#: a create whose id is still taken (a fetch of the same object under way) waits this long
_COLLISION_WAIT_S = 30.0
_COPY_THREADS = max(1, min(4, os.cpu_count() or 1))
_copy_pool: ThreadPoolExecutor | None = None
_copy_pool_lock = threading.Lock()


def _parallel_copy(dest: memoryview, src: memoryview) -> None:
    """``dest[:] = src``, by up to four threads for large buffers (numpy releases the GIL)."""
    global _copy_pool
    n = len(dest)
    if n < PARALLEL_COPY_BYTES or _COPY_THREADS == 1:
        dest[:] = src
        return
    if _copy_pool is None:
        with _copy_pool_lock:
            if _copy_pool is None:
                _copy_pool = ThreadPoolExecutor(_COPY_THREADS, thread_name_prefix="taskmesh-copy")
    import numpy as np  # only processes that store large values need it

    d = np.frombuffer(dest, dtype=np.uint8)
    s = np.frombuffer(src, dtype=np.uint8)
    step = -(-n // _COPY_THREADS)
    step += -step % 4096  # page-aligned pieces
    pieces = [(i, min(n, i + step)) for i in range(0, n, step)]
    futures = [_copy_pool.submit(np.copyto, d[a:b], s[a:b]) for a, b in pieces[1:]]
    np.copyto(d[pieces[0][0]:pieces[0][1]], s[pieces[0][0]:pieces[0][1]])
    for f in futures:
        f.result()


class LocalStore:
    """This process's link to its node's object store (one per process)."""

    def __init__(self, node_id: str, client: StoreClient,
                 on_unpin: Callable[[], None] | None = None) -> None:
        self.node_id = node_id
        self._client = client
        self._on_unpin = on_unpin
        self._lock = threading.Lock()
        self._unpins: collections.deque[bytes] = collections.deque()
        self._holders: weakref.WeakValueDictionary[bytes, Any] = weakref.WeakValueDictionary()
        self.closed = False
        self._client_closed = False

    @classmethod
    def connect(cls, node_id: str, store_name: str, timeout_s: float,
                on_unpin: Callable[[], None] | None = None, probe: bool = False,
                on_closed: Callable[[], None] | None = None) -> "LocalStore":
        """Connect to the store at the abstract socket ``store_name``; ConnectionError if none
        answers (the socket only exists on the node's own machine; ``probe``: try once, do not
        wait for it to appear). ``on_unpin`` is called (in any thread, maybe inside GC) when a
        view died and an unpin waits to be sent; ``on_closed`` when the store is found gone."""
        client = StoreClient(store_name, connect_timeout_s=timeout_s, probe=probe)
        client.on_closed = on_closed
        return cls(node_id, client, on_unpin)

    # ------------------------------------------------------------------ writing

    def put(self, object_id: bytes, obj: SerializedObject) -> SerializedObject:
        """Write a serialized value into the store under ``object_id`` (one copy of each
        buffer); return the STORED marker that stands for it in messages."""
        size = layout.encoded_size(obj.data, obj.buffers)
        with self._lock:
            self._flush_locked()
            client = self._client
            try:
                dest = client.create(object_id, size)
            except ValueError:
                # the id exists: left by an attempt whose worker died (never announced, so
                # nobody reads it), or a copy of a lost result still being fetched here when
                # the head had the task run again; deleted, it goes once sealed or failed
                client.delete([object_id])
                dest = self._create_when_free(object_id, size)
            try:
                layout.write(dest, obj.data, obj.buffers, _parallel_copy)
            except BaseException:
                client.abort(object_id)
                raise
            finally:
                dest.release()
            client.seal(object_id)
        marker = SerializedObject.stored(object_id, size, [[self.node_id, ""]])
        marker.contained = obj.contained
        return marker

    def _create_when_free(self, object_id: bytes, size: int) -> memoryview:
        deadline = time.monotonic() + _COLLISION_WAIT_S
        delay = 0.01
        while True:
            try:
                return self._client.create(object_id, size)
            except ValueError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    # ------------------------------------------------------------------ reading

    def read(self, marker: SerializedObject, timeout_s: float | None = None) -> SerializedObject:
        """The value behind a STORED marker, as a VALUE whose pickle stream and buffers are
        read-only views of the store (pulled to this node first if only others hold it).
        Raises ObjectLostError if no copy can be read, TimeoutError after ``timeout_s``."""
        object_id, size, locations = marker.read_stored()
        holder = self._holders.get(object_id)
        if holder is None:
            holder = self._pin(object_id, size, locations, timeout_s)
        data, buffers = layout.read(memoryview(holder))
        return SerializedObject(SerializedObject.VALUE, data, buffers)

    def _pin(self, object_id: bytes, size: int, locations: list, timeout_s: float | None) -> Any:
        import numpy as np  # the holder of a pin is a read-only uint8 array over the view

        with self._lock:
            holder = self._holders.get(object_id)  # another thread may have pinned it meanwhile
            if holder is not None:
                return holder
            self._flush_locked()
            client = self._client
            if not any(node_id == self.node_id for node_id, _ in locations):
                client.fetch(object_id, size, [loc for loc in locations if loc[1]])
            view = client.pin([object_id], timeout_s)[0]
            holder = np.frombuffer(view, dtype=np.uint8)
            weakref.finalize(holder, self._view_died, object_id)
            self._holders[object_id] = holder
            return holder

    # ------------------------------------------------------------------ housekeeping

    def _view_died(self, object_id: bytes) -> None:
        self._unpins.append(object_id)
        if self.closed:
            if not len(self._holders) and self._lock.acquire(blocking=False):
                try:  # the last value read before close() is gone: now the connection goes
                    self._close_client()
                finally:
                    self._lock.release()
            return
        if self._on_unpin is not None:
            self._on_unpin()

    @property
    def has_unpins(self) -> bool:
        return bool(self._unpins)

    def flush(self) -> None:
        """Send the unpins of views that died, unless another thread is using the store."""
        if self._unpins and self._lock.acquire(blocking=False):
            try:
                self._flush_locked()
            finally:
                self._lock.release()

    def _flush_locked(self) -> None:
        if self._unpins and not self.closed:
            batch = []
            while self._unpins:
                batch.append(self._unpins.popleft())
            self._client.unpin(batch)

    def _close_client(self) -> None:
        if not self._client_closed:
            self._client_closed = True
            self._client.close()

    def delete(self, object_ids: list[bytes]) -> None:
        """Free objects this process stored but never announced (e.g. a failed task's)."""
        with self._lock:
            if not self.closed:
                self._client.delete(object_ids)

    def close(self) -> None:
        """Stop using the store. While values read from it are alive, the connection (and so
        their pins) stays open, so the store cannot reuse their memory; it closes with the
        process, or when the last such value goes."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if not len(self._holders):
                self._close_client()
                return
        log.debug("keeping the store connection open for %d live values", len(self._holders))

    @property
    def pinned(self) -> int:
        """Objects this process holds views of (for tests and diagnostics)."""
        return len(self._holders)

    def __repr__(self) -> str:
        return f"LocalStore(node={self.node_id}, pinned={self.pinned})"

