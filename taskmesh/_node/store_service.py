"""The node's object store service: local processes ask the node agent for arena space and pins,
and other nodes pull objects from it over TCP.

    local client ──StoreCreate/Seal/Abort/Pin/Unpin/Delete/Fetch──▶ StoreService ──▶ StoreState (sans-IO)
         ▲           (socket @taskmesh-node-<node_id>)                │    ▲             │ commands
         └──StoreInfo, StoreCreated, StorePinned, ...─────────────────┘    │             ▼
                                         spilled/restored (or failed)      │    Spill, Restore, Freed
                                                 (wake pipe in the         │             │
                                                  agent's poller)  ────────┴── spill thread ──▶ spill dir
                                        pin/unpin for a transfer,          │
                                        fetched (or failed)  (a second  ───┴── transfer threads ◀──TCP──▶ other nodes
                                                  wake pipe)                    (store_transfers.py)

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

Transfers (docs/object-store.md, "Transfer"; the threads are ``store_transfers.py``'s, the
stream ``_transfer.py``'s). The service listens on TCP (``transfer_address``) and serves each connection in a thread; ``StoreFetch``
starts a thread that pulls an object from other nodes straight into this arena. Both ends of
every transfer connection prove they hold the cluster secret first (``security``; encrypted
unless ``security.encrypt`` is off on both). Only the loop
thread touches ``StoreState``: a serving thread asks the loop to pin the object (queue + wake
pipe), waits for the pin (an object on disk is restored by it), streams from a read-only view
of the arena, and asks the loop to unpin when done or when the peer went away. A fetch creates
the object in the state (as an internal creator), the thread fills its range, and the loop
seals it (waiting pins are granted; ``on_fetched`` tells the agent) or, when every source
failed, aborts it with the reason, which the waiting and later pins then get. Pins and creates
of transfers belong to internal client ids that no local client can have, so ``client_gone``
never touches them. One fetch per object however many ``StoreFetch`` arrive: an object the
state knows, in any state, is not fetched again.

A client is known by the identity it sends first on its connection; it gets ``StoreInfo``
(the arena's file name and size) at once, maps the arena, and from then on exchanges only
offsets with the store. A closed connection means the client process is gone: its pins and its
unsealed objects go with it (``client_gone``). Local clients run as the agent's user (the socket
checks), and they may write the whole arena anyway, so requests are not checked against who
created an object (except that an object being fetched cannot be sealed or aborted by them).

Spill files live in a per-agent directory, ``<spill_dir or tmp>/taskmesh-spill-<pid>-<node_id>``
(mode 0700), one file per object named by its id in hex; the directory is removed at exit, and a
new agent removes those of agents that died without cleaning up.

The service is built from its parts (state, socket, spill thread, transfers); ``open()`` builds
the agent's real ones, and a harness can pass recorders instead and call the event methods
(``request``, ``client_gone``, ``spill_report``, ``serve_pin``, ...) itself.
"""

from __future__ import annotations

import collections
import logging
import shutil
from collections.abc import Callable
from typing import Any, NamedTuple

from .. import _protocol as P
from .spill import DELETE as _DELETE, RESTORE as _RESTORE, SPILL as _SPILL, SpillThread, make_spill_dir
from .._ratelimit import RateLimitedLog
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
from .._secret import Security
from .._transport import LocalServerSocket
from ..config import Config
from .. import _transfer as transfer
from .store_transfers import FetchDone, ServePin, ServeRequest, ServeUnpin, Transfers

log = logging.getLogger("taskmesh.node.store")

#: while requests wait for room, the agent's loop wakes this often to time them out
TICK_S = 0.05
#: object ids longer than this are refused (they name spill files)
MAX_OBJECT_ID = 64

# StoreState client ids of the service itself: a local client names itself with 1 to 255 bytes
# (_uds.py), so these never collide with one and client_gone never touches them
_SERVE_CLIENT = b"\0" * 256 + b"transfer-serve"  # pins held while an object streams to a node
_FETCH_CLIENT = b"\0" * 256 + b"transfer-fetch"  # creator of the objects being fetched
_INTERNAL = frozenset((_SERVE_CLIENT, _FETCH_CLIENT))


def store_socket_name(node_id: str) -> str:
    """The abstract unix socket a node's store listens on (advertised in the node's Hello)."""
    return f"taskmesh-node-{node_id}"


class _Fetch(NamedTuple):
    """An object being fetched (created in the state by the service itself)."""

    size: int
    sources: list[tuple[str, str]]  # (node_id, "host:port"), in the order to try


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


class StoreService:
    """The object store of one node (see the module docstring), built from its parts.

    Two faces. The agent's loop calls :meth:`attach`, :meth:`handle`, :meth:`tick`,
    :meth:`delete` and :meth:`close`: those read the parts' fds and never let a bug escape
    (it is logged). Under them, each thing that can happen is one public method that raises
    what goes wrong, so a harness drives the service directly, without sockets or threads:
    :meth:`request` (a local client's message), :meth:`client_gone`, :meth:`expire` (time
    passed), :meth:`spill_report`, :meth:`serve_pin`, :meth:`serve_unpin`, :meth:`fetch_done`.

    The parts: ``state`` (a :class:`StoreState` over ``arena``), ``sock`` (sends answers to
    local clients; the agent's is a :class:`LocalServerSocket`), ``spill`` (takes spill jobs;
    a :class:`SpillThread`), ``transfers`` (the server and the fetch threads; a
    :class:`Transfers`). :meth:`open` builds the real ones. ``on_fetched(object_id, size)``:
    called once a fetched object is sealed here (the agent tells the head this node holds a
    copy). ``on_freed(object_id)``: called for every object the store forgets.
    """

    def __init__(self, node_id: str, arena: Any, state: StoreState, sock: Any, spill: Any,
                 transfers: Any, *, on_fetched: Callable[[bytes, int], None] | None = None,
                 on_freed: Callable[[bytes], None] | None = None) -> None:
        self.node_id = node_id
        self.name = store_socket_name(node_id)
        self.arena = arena
        self.state = state
        self.sock = sock
        self._spill_thread = spill
        self.transfers = transfers
        self.transfer_address: str = transfers.address
        self.spill_dir: str = spill.directory
        self.on_fetched = on_fetched
        self.on_freed = on_freed
        #: requests of local clients that were ignored, counted by reason (logged
        #: rate-limited: a client in a loop must not fill the log)
        self.dropped = RateLimitedLog(log)
        self.io_errors = 0
        self._serve_waiting: dict[bytes, collections.deque[ServeRequest]] = {}  # pins asked of the state
        self._fetches: dict[bytes, _Fetch] = {}

    @classmethod
    def open(cls, node_id: str, arena: Arena, config: Config, pid_alive: Callable[[int], bool], *,
             security: Security, transfer_host: str = "127.0.0.1",
             on_fetched: Callable[[bytes, int], None] | None = None,
             on_freed: Callable[[bytes], None] | None = None,
             transfer_timeout_s: float = transfer.DEFAULT_TIMEOUT_S,
             transfer_connect_timeout_s: float = transfer.DEFAULT_CONNECT_TIMEOUT_S) -> StoreService:
        """The node agent's store over ``arena``: its spill directory (removing those of dead
        agents), the local socket ``@taskmesh-node-<node_id>``, the transfer server on
        ``transfer_host`` (``transfer_timeout_s``, ``transfer_connect_timeout_s``: the
        inactivity and connect time-outs of transfers, both ways; ``security``: the key peers
        must prove they hold, and whether transfers are encrypted) and the spill thread."""
        name = store_socket_name(node_id)
        spill_dir = make_spill_dir(config.spill_dir, node_id, pid_alive)
        try:
            sock = LocalServerSocket(name, config.frame_threshold_bytes, report_joins=True)
        except OSError as exc:
            shutil.rmtree(spill_dir, ignore_errors=True)
            raise OSError(f"the object store socket @{name} is taken ({exc}): is another "
                          f"node agent running with node id {node_id}?") from None
        try:
            transfers = Transfers(arena, transfer_host, security=security,
                                  timeout_s=transfer_timeout_s,
                                  connect_timeout_s=transfer_connect_timeout_s)
        except OSError as exc:
            sock.close()
            shutil.rmtree(spill_dir, ignore_errors=True)
            raise OSError(f"the object store of node {node_id} cannot listen for transfers on "
                          f"{transfer_host}: {exc}") from None
        state = StoreState(arena.capacity, create_timeout_s=config.store_create_timeout_s)
        return cls(node_id, arena, state, sock, SpillThread(arena, spill_dir), transfers,
                   on_fetched=on_fetched, on_freed=on_freed)

    # ------------------------------------------------------------------ the agent's loop

    def attach(self, poller: Any) -> None:
        """Register the service's fds in the agent's poller; start the spill thread and the
        transfer server."""
        self.sock.attach(poller)
        poller.register(self._spill_thread.wake_fd)
        poller.register(self.transfers.wake_fd)
        self._spill_thread.start()
        self.transfers.start()

    def wake_at(self, now: float) -> float | None:
        """When the loop must call :meth:`tick` next, or None if only events matter."""
        return now + TICK_S if self.state.num_waiting else None

    def handle(self, ready: dict, now: float) -> None:
        """Serve what ``ready`` (the poller's result) says is ready."""
        msgs = self.sock.receive(ready)
        for peer in self.sock.joined_peers():  # before any answer to what they sent
            self.sock.send(peer, P.StoreInfo(self.arena.name, self.arena.capacity))
        for peer, msg in msgs:
            try:
                self.request(peer, msg, now)
            except Exception:  # a bug must not take the node down; say so loudly
                log.exception("error while handling %s from local client %r", type(msg).__name__, peer)
        for peer in self.sock.closed_peers():
            self._guarded(self.client_gone, peer)
        if self._spill_thread.wake_fd in ready:
            for kind, object_id, error in self._spill_thread.completed():
                self._guarded(self.spill_report, kind, object_id, error)
        if self.transfers.wake_fd in ready:
            for event in self.transfers.events():
                self._guarded(_TRANSFER_EVENTS[type(event)], self, *event)

    def tick(self, now: float) -> None:
        """Time out the creates and restores that waited too long for room."""
        self._guarded(self.expire, now)

    def delete(self, object_ids: list[bytes]) -> None:
        """The cluster no longer references these objects (the head says so): free each once
        nobody pins it (as ``StoreDelete``)."""
        for oid in object_ids:
            self._guarded(lambda oid: self._run(self.state.delete(oid)), oid)

    def object_ids(self) -> list[bytes]:
        """Ids of every object this store knows, in any state."""
        return self.state.object_ids()

    def stats(self) -> dict[str, int]:
        """Flat gauges and totals for heartbeats: ``StoreState.stats()``, the transfer counters
        (``transfer_*``, see ``TransferCounters``), fetches in flight, connections being served."""
        out = dict(self.state.stats())
        for name, n in self.transfers.counters.snapshot().items():
            out[f"transfer_{name}"] = n
        out["fetches_in_flight"] = len(self._fetches)
        out["transfer_connections"] = self.transfers.active
        out["io_errors"] = self.io_errors
        return out

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the transfers (sockets shut down, threads joined within ``timeout_s``) and the
        spill thread, close the socket, remove the spill directory."""
        self.transfers.close(timeout_s)
        self._spill_thread.stop(timeout_s=10.0)
        self.sock.close()
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def check_invariants(self) -> None:
        """The service's own tables against the state (and ``StoreState.check()``): a fetch
        per unsealed object created for one, a waiting serving thread per pending pin."""
        st = self.state
        st.check()
        for oid in self._fetches:
            info = st.info(oid)
            _require(info is not None and info.creator == _FETCH_CLIENT,
                     f"fetch of {oid.hex()} without its unsealed object")
        for oid in st.object_ids():
            info = st.info(oid)
            if info is not None and info.creator == _FETCH_CLIENT:
                _require(oid in self._fetches, f"object {oid.hex()} is being fetched untracked")
        for oid, waiting in self._serve_waiting.items():
            pending = st.pins_pending(oid, _SERVE_CLIENT)
            _require(len(waiting) == pending and pending > 0,
                     f"object {oid.hex()}: {len(waiting)} serving threads wait, {pending} pins pending")

    # ------------------------------------------------------------------ requests

    def request(self, peer: bytes, msg: Any, now: float) -> None:
        """A message from the local client ``peer``: answer it (or drop it, counted)."""
        handler = _REQUESTS.get(type(msg))
        if handler is None:
            self.dropped.event("not a request to the object store", "ignored %s from local "
                               "client %r: not a request to the object store",
                               type(msg).__name__, peer)
            return
        handler(self, peer, msg, now)

    def _on_create(self, peer: bytes, msg: P.StoreCreate, now: float) -> None:
        oid = msg.object_id
        if not 0 < len(oid) <= MAX_OBJECT_ID:
            self.sock.send(peer, P.StoreCreateFailed(
                oid, f"object ids must have 1 to {MAX_OBJECT_ID} bytes, not {len(oid)}", False))
            return
        exists = self.state.info(oid) is not None
        try:
            cmds = self.state.create(oid, msg.size, peer, now)
        except ValueError as exc:
            self.sock.send(peer, P.StoreCreateFailed(oid, str(exc), False))
            return
        self._run(cmds, refused=oid if exists else None)

    def _on_pin(self, peer: bytes, msg: P.StorePin, now: float) -> None:
        for oid in msg.object_ids:
            self._run(self.state.pin(oid, peer))

    def _on_unpin(self, peer: bytes, msg: P.StoreUnpin, now: float) -> None:
        for oid in msg.object_ids:
            self._misuse(peer, self.state.unpin, oid, peer)

    def _on_seal_or_abort(self, peer: bytes, msg: P.StoreSeal | P.StoreAbort, now: float) -> None:
        if msg.object_id in self._fetches:  # its bytes are still arriving
            self.dropped.event("seal or abort of an object being fetched", "ignored %s of "
                               "object %s from local client %r: the store is fetching it "
                               "from another node", type(msg).__name__, msg.object_id.hex(), peer)
            return
        method = self.state.seal if type(msg) is P.StoreSeal else self.state.abort
        self._misuse(peer, method, msg.object_id)

    def _on_delete(self, peer: bytes, msg: P.StoreDelete, now: float) -> None:
        for oid in msg.object_ids:
            self._run(self.state.delete(oid))

    def _misuse(self, peer: bytes, method: Callable[..., list[Command]], *args: Any) -> None:
        """A request without an answer: one that makes no sense is logged (the client gets nothing)."""
        try:
            cmds = method(*args)
        except ValueError as exc:
            self.dropped.event(f"{method.__name__} that makes no sense", "ignored a request of "
                               "local client %r: %s", peer, exc)
            return
        self._run(cmds)

    def _on_fetch(self, peer: bytes, msg: P.StoreFetch, now: float) -> None:
        oid = msg.object_id
        if not 0 < len(oid) <= MAX_OBJECT_ID:
            self.dropped.event("fetch of a malformed object id", "ignored StoreFetch from local "
                               "client %r: object ids have 1 to %d bytes, not %d", peer,
                               MAX_OBJECT_ID, len(oid))
            return
        if self.state.info(oid) is not None:
            return  # held, or being created or fetched already
        sources: list[tuple[str, str]] = []
        for source in msg.sources:
            if (isinstance(source, list) and len(source) == 2 and all(isinstance(x, str) for x in source)):
                try:
                    transfer.split_address(source[1])
                except ValueError:
                    pass
                else:
                    if source[1] != self.transfer_address:  # ourselves: we do not hold it
                        sources.append((source[0], source[1]))
                    continue
            self.dropped.event("malformed fetch source", "StoreFetch of object %s from local "
                               "client %r: ignored the source %r (expected [node_id, "
                               "'host:port'])", oid.hex(), peer, source)
        problem = ("it names no other node to fetch it from" if not sources else
                   f"its size must be a non-negative int, not {msg.size!r}" if msg.size < 0 else None)
        if problem is not None:
            reason = f"object {oid.hex()} cannot be fetched: {problem}"
            self.dropped.event("fetch that cannot start", "%s (StoreFetch from local client %r)",
                               reason, peer)
            self.state.remember_lost(oid, reason)
            return
        self._fetches[oid] = _Fetch(msg.size, sources)
        self._run(self.state.create(oid, msg.size, _FETCH_CLIENT, now))

    def client_gone(self, peer: bytes) -> None:
        """The local client ``peer`` closed its connection: its pins and unsealed objects go."""
        self._run(self.state.client_gone(peer))

    def expire(self, now: float) -> None:
        """Time out the creates and restores that waited for room since before ``now``."""
        self._run(self.state.tick(now), pin_full=True)

    def spill_report(self, kind: str, object_id: bytes, error: str | None) -> None:
        """The spill thread finished (``error`` None) or failed a spill or restore."""
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

    # ------------------------------------------------------------------ transfers

    def serve_pin(self, req: ServeRequest) -> None:
        """A serving thread asks for a pin on ``req.object_id``; it is answered through ``req``."""
        self._serve_waiting.setdefault(req.object_id, collections.deque()).append(req)
        self._run(self.state.pin(req.object_id, _SERVE_CLIENT))

    def serve_unpin(self, object_id: bytes) -> None:
        """A serving thread is done with its pin."""
        self._run(self.state.unpin(object_id, _SERVE_CLIENT))

    def fetch_done(self, object_id: bytes, error: str | None) -> None:
        """A fetch thread filled the object's range (``error`` None) or every source failed."""
        fetch = self._fetches.pop(object_id)
        state = self.state
        if error is None:
            cmds = state.seal(object_id)
            if self.on_fetched is not None and state.info(object_id) is not None:  # not deleted meanwhile
                self._guarded(self.on_fetched, object_id, fetch.size)
            self._run(cmds)
        else:
            log.error("fetching object %s failed; its readers on this node get ObjectLostError: %s",
                      object_id.hex(), error)
            self._run(state.abort(object_id, error))

    def _internal(self, c: Command) -> None:
        """A StoreState answer to the service itself (a transfer's pin, a fetch's create)."""
        _INTERNAL_ANSWERS[type(c)](self, c)

    def _serve_pin_answered(self, c: Pinned | PinFailed) -> None:
        """A serving thread's pin was granted or refused: wake the thread (or unpin)."""
        waiting = self._serve_waiting.get(c.object_id)
        req = waiting.popleft() if waiting else None
        if waiting is not None and not waiting:
            del self._serve_waiting[c.object_id]
        if req is not None and (req.grant(c.offset, c.size) if type(c) is Pinned
                                else req.refuse(c.reason)):
            return
        if type(c) is Pinned:  # nobody wants it any more
            self._run(self.state.unpin(c.object_id, _SERVE_CLIENT))

    def _fetch_created(self, c: Created) -> None:
        """A fetched object has its space: start the thread that fills it."""
        self.transfers.fetch(c.object_id, self._fetches[c.object_id].sources,
                             self.arena.writable(c.offset, c.size))

    def _fetch_create_failed(self, c: CreateFailed) -> None:
        self._fetches.pop(c.object_id, None)
        reason = f"object {c.object_id.hex()} could not be fetched to this node: {c.reason}"
        log.error("%s", reason)
        self.state.remember_lost(c.object_id, reason)

    def _internal_waiting(self, c: Waiting) -> None:
        pass  # the answer follows

    # ------------------------------------------------------------------ commands

    def _run(self, cmds: list[Command], refused: bytes | None = None, pin_full: bool = False) -> None:
        """Execute StoreState commands. ``refused``: a create of that id was refused (it exists),
        not failed for room; ``pin_full``: pin failures are time-outs waiting for room."""
        how = _How(refused, pin_full)
        for c in cmds:
            kind = type(c)
            if kind in _INTERNAL_ANSWERS and c.client in _INTERNAL:  # type: ignore[union-attr]
                self._internal(c)
            else:
                _COMMANDS[kind](self, c, how)

    def _created(self, c: Created, how: _How) -> None:
        self.sock.send(c.client, P.StoreCreated(c.object_id, c.offset, c.size))

    def _pinned(self, c: Pinned, how: _How) -> None:
        self.sock.send(c.client, P.StorePinned(c.object_id, c.offset, c.size))

    def _waiting(self, c: Waiting, how: _How) -> None:
        self.sock.send(c.client, P.StoreWaiting(c.object_id))

    def _create_failed(self, c: CreateFailed, how: _How) -> None:
        self.sock.send(c.client, P.StoreCreateFailed(c.object_id, c.reason,
                                                     c.object_id != how.refused))

    def _pin_failed(self, c: PinFailed, how: _How) -> None:
        self.sock.send(c.client, P.StorePinFailed(c.object_id, c.reason, how.pin_full))

    def _spill(self, c: Spill, how: _How) -> None:
        self._spill_thread.submit(_SPILL, c.object_id, c.offset, c.size)

    def _restore(self, c: Restore, how: _How) -> None:
        self._spill_thread.submit(_RESTORE, c.object_id, c.offset, c.size)

    def _freed(self, c: Freed, how: _How) -> None:
        if c.on_disk:
            self._spill_thread.submit(_DELETE, c.object_id)
        if self.on_freed is not None:
            self._guarded(self.on_freed, c.object_id)

    @staticmethod
    def _guarded(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a bug must not take the node down; say so loudly
            log.exception("internal error in the object store service")


class _How(NamedTuple):
    """How to answer, for one list of commands (see ``StoreService._run``)."""

    refused: bytes | None  # a create of this id was refused: it exists (not failed for room)
    pin_full: bool  # pin failures are time-outs waiting for room


# The dispatch tables: a message or command type -> the method for it. Each method is typed
# for its own type, which the table's key guarantees.

#: local clients' requests
_REQUESTS: dict[type, Callable[[StoreService, bytes, Any, float], None]] = {
    P.StoreCreate: StoreService._on_create,
    P.StorePin: StoreService._on_pin,
    P.StoreUnpin: StoreService._on_unpin,
    P.StoreSeal: StoreService._on_seal_or_abort,
    P.StoreAbort: StoreService._on_seal_or_abort,
    P.StoreDelete: StoreService._on_delete,
    P.StoreFetch: StoreService._on_fetch,
}

#: StoreState commands
_COMMANDS: dict[type, Callable[[StoreService, Any, _How], None]] = {
    Created: StoreService._created,
    Pinned: StoreService._pinned,
    Waiting: StoreService._waiting,
    CreateFailed: StoreService._create_failed,
    PinFailed: StoreService._pin_failed,
    Spill: StoreService._spill,
    Restore: StoreService._restore,
    Freed: StoreService._freed,
}

#: StoreState answers to the service's own clients (transfers' pins, fetches' creates)
_INTERNAL_ANSWERS: dict[type, Callable[[StoreService, Any], None]] = {
    Pinned: StoreService._serve_pin_answered,
    PinFailed: StoreService._serve_pin_answered,
    Created: StoreService._fetch_created,
    CreateFailed: StoreService._fetch_create_failed,
    Waiting: StoreService._internal_waiting,
}

#: the transfer threads' events
_TRANSFER_EVENTS: dict[type, Callable[..., None]] = {
    ServePin: StoreService.serve_pin,
    ServeUnpin: StoreService.serve_unpin,
    FetchDone: StoreService.fetch_done,
}
