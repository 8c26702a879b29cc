"""How this process obtains an object's value, whatever its form: the one object reader.

    SerializedObject from the head
      ├─ VALUE or an error ───────────────────────────────────────────▶ itself (inline)
      └─ STORED marker (id, size, holders)
           ├─ a node runs on this machine ──LocalStore.read──▶ pinned views of its store
           │     (a node's store pulls the object from a holder first if it has no copy)
           └─ no node here ──fetch_remote──▶ the bytes pulled from a holder into this process
           no holder delivers ──ask the head again──▶ new holders: read again
                                                   ▶ the same holders: wait, read again, give up
                                                   ▶ an error value (lost for good): returned

The client core hands the reader its store (connected on first use) and a way to ask the head
what it knows of an object now; ``SerializedObject`` stays plain data, and nothing else decides
where a value's bytes come from.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from .._protocol import SerializedObject
from .._store import layout
from ..errors import GetTimeoutError, ObjectLostError

if TYPE_CHECKING:
    from .._secret import Security
    from .local_store import LocalStore

__all__ = ["ObjectReader", "fetch_remote"]

#: a holder silent this long in the middle of a transfer is taken as gone
_SILENT_HOLDER_S = 3.0


class ObjectReader:
    """Turns what the head sent for an object into a readable value (see the module docstring).

    ``store()`` is this machine's node store or None (no node here); ``ask_head(oid, timeout)``
    what the head says about ``oid`` now, or None if it did not answer in time;
    ``patience_s`` how long holders the head keeps naming may be dead but not declared so."""

    def __init__(self, store: Callable[[], LocalStore | None],
                 ask_head: Callable[[bytes, float | None], SerializedObject | None],
                 security: Security, patience_s: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._store = store
        self._ask_head = ask_head
        self._security = security
        self._patience_s = patience_s
        self._clock = clock
        self._sleep = sleep

    def read(self, obj: SerializedObject, timeout: float | None = None,
             wait_for_holders: bool = True) -> SerializedObject:
        """A readable object for ``obj``: itself, or for a STORED marker the value read from the
        node store (zero-copy views; pulled from another node first if needed).

        If no holder it names can deliver, the head is asked again: it may know of new copies,
        be rebuilding the object (the answer then waits for the re-run), or say it is lost (an
        error object, returned as such). If the head still names the same holders, they may be
        dead but not yet declared so: with ``wait_for_holders`` it asks again, for up to
        ``patience_s`` after the head last named new holders, before ObjectLostError (holders
        named late in a long read get the same patience as the first ones). An unchanged
        answer after that is read once more before giving up: a holder that was declared dead
        and joined again under the same id and address makes a marker equal to the lost one
        for a copy rebuilt there."""
        if obj.flags != SerializedObject.STORED:
            return obj
        clock = self._clock
        start = named = clock()  # named: when the head last named these holders
        delay = 0.05
        last_chance = False
        while True:
            remaining = None if timeout is None else max(0.0, timeout - (clock() - start))
            try:
                return self._read_stored(obj, remaining)
            except TimeoutError:  # a pin waiting for room to restore the object from disk
                raise GetTimeoutError(
                    f"get() timed out after {timeout:g} s: object {obj.read_stored()[0].hex()} "
                    "is in the store but could not be read in time (it waits for room to come "
                    "back from disk)") from None
            except ObjectLostError:
                oid = obj.read_stored()[0]
                fresh = self._ask_head(oid, remaining)
                if fresh is None:
                    raise
                if not fresh.is_stored:
                    return fresh  # the head's verdict (e.g. lost for good, naming the node)
                now = clock()
                if fresh.data != obj.data:  # other holders: they get the whole patience
                    named, delay, last_chance = now, 0.05, False
                else:
                    if not wait_for_holders or (timeout is not None
                                                and now - start + delay > timeout):
                        raise
                    if now - named > self._patience_s:
                        if last_chance:
                            raise
                        last_chance = True
                    else:
                        self._sleep(delay)
                        delay = min(delay * 2, 0.5)
                obj = fresh

    def _read_stored(self, marker: SerializedObject, timeout: float | None) -> SerializedObject:
        store = self._store()
        if store is None:  # no node on this machine: pull the bytes into our own memory
            return fetch_remote(marker, timeout, security=self._security)
        return store.read(marker, timeout)


def fetch_remote(marker: SerializedObject, timeout_s: float | None = None, *,
                 security: Security) -> SerializedObject:
    """The value behind a STORED marker for a process whose machine runs no node (so no
    store): its bytes pulled straight from a holder into this process's memory (read-only,
    like a get from a store), from a holder that proves it holds ``security``'s cluster key.
    Raises ObjectLostError naming the object and each holder's failure."""
    from .. import _transfer as transfer  # the transfer stream's client side

    object_id, size, locations = marker.read_stored()
    sources = [(node_id, address) for node_id, address in locations if address]
    # a holder that accepts but never answers (a frozen machine) is given up after a few
    # seconds of silence: the caller then asks the head, which may have rebuilt the object
    wait = _SILENT_HOLDER_S if timeout_s is None else max(1.0, min(timeout_s, _SILENT_HOLDER_S))
    kwargs = {"timeout_s": wait, "connect_timeout_s": wait}
    try:
        buf = transfer.fetch(object_id, sources, security=security, size=size, **kwargs)
    except transfer.TransferError as exc:
        raise ObjectLostError(f"object {object_id.hex()} ({size} bytes) could not be read from "
                              f"any node holding it: {exc}") from None
    data, buffers = layout.read(buf.toreadonly())
    return SerializedObject(SerializedObject.VALUE, data, buffers)
