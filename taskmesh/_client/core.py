"""The client core: one process's connection to the head, used by drivers and by workers.

    .remote() ──Submit──▶ head        put() ──Put──▶ head        ObjectRef GC ──Release──▶ head
    get()/wait() ◀──ObjectValues── head (pushed for objects we own; on Subscribe for others)

The socket has no I/O thread of its own: whichever thread needs to wait (get, wait) becomes
the I/O leader for a while and polls the socket itself, so a synchronous round trip costs no
thread hand-off. Sends from other threads queue up and wake the leader through a pipe. Values
of small objects this process owns are pushed by the head as soon as their task ends, so a
later ``get`` is a dictionary look-up.

Reference counting: every ObjectRef instance counts in its process; when the last one for an
object dies, the process tells the head (Release, batched). The owner's release, every
borrower's (a process that unpickled a ref of another owner says Borrow first), the pending
tasks that use the object, and the objects whose values contain a ref to it (``contained``,
collected while pickling) all keep it alive at the head; it is freed when none remains. A ref
pickled outside taskmesh (``pickle.dumps(ref)`` by user code) "escapes": its object is never
released by this process, trading a leak for safety.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from .. import _protocol as P
from .._secret import Security
from .._transport import POLLIN, POLLOUT, LocalClientSocket, Poller, new_context, open_client
from ..config import Config
from ..errors import (AuthenticationError, GetTimeoutError, HeadConnectionError, ObjectLostError,
                      ProtocolVersionError, TaskmeshError)
from .local_store import LocalStore, fetch_remote

log = logging.getLogger("taskmesh.client")


_POLLIN = POLLIN
_POLLIN_OUT = POLLIN | POLLOUT

#: a waiting client pings a silent head this often
_PING_AFTER_S = 2.0
#: a wait step that overran its time-out by more than this means this process did not run
_STALL_S = 0.25

#: dead refs are released to the head in batches: when this many piled up, or this often
_RELEASE_BATCH = 256
_RELEASE_EVERY_S = 0.2

#: a driver's .remote() waits while more than this many bytes of its messages wait for the
#: head to take them (until half is taken): the head reads a flood at its own pace, so the
#: flood waits here, bounded, and a ping sent meanwhile is never far behind
_SEND_QUEUE_BYTES = 512 * 1024
#: "why .remote() waits" is logged at most this often
_BACKPRESSURE_LOG_S = 10.0


class CoreClient:
    """Submits tasks, stores and fetches objects, for one process (driver or worker)."""

    def __init__(
        self,
        config: Config,
        endpoint: str,
        kind: str,
        address: str,
        security: Security,
        identity: bytes | None = None,
        ctx: Any = None,
    ) -> None:
        self.config = config
        #: the cluster key (for the head and for object transfers) and whether to encrypt
        self.security = security
        self.kind = kind
        self.address = address  # "host:port" for messages
        self.peer_id = identity or (b"D" + os.urandom(8))
        self._own_ctx = ctx is None
        self.ctx = ctx or new_context()
        try:
            self.sock = open_client(self.ctx, endpoint, self.peer_id, config.frame_threshold_bytes,
                                    config.connect_timeout_s, security)
        except ConnectionError as exc:
            if self._own_ctx:
                self.ctx.term()
            raise HeadConnectionError(f"no taskmesh head is listening at {address} ({exc})") from None
        self._prefix = os.urandom(8)
        self._counter = itertools.count(1)
        self._values: dict[bytes, P.SerializedObject] = {}
        self._ready_remote: set[bytes] = set()  # ready at the head, value not pushed
        self._errors_in = 0  # error values received so far (get() of a list watches it)
        self._pending_owned: set[bytes] = set()  # our tasks' results not yet announced
        #: backpressure (drivers only): tasks we may still submit before waiting for Credit
        self._credits: int | None = config.max_pending_tasks if kind == "driver" else None
        self._credit_lock = threading.Lock()
        self._next_backpressure_log = 0.0
        self._wanted: collections.Counter[bytes] = collections.Counter()  # waiters per object
        self._subscribed: set[bytes] = set()
        self._refcounts: dict[bytes, int] = {}
        self._escaped: set[bytes] = set()
        self._borrowed: set[bytes] = set()  # others' objects we told the head we hold refs to
        self._dead: collections.deque[bytes] = collections.deque()
        self._next_release = 0.0  # releases are batched: at most every _RELEASE_EVERY_S
        # dead refs and dropped views are flushed by whoever talks to the head next, or by a
        # small thread after _RELEASE_EVERY_S when this process is idle (a notebook that just
        # dropped a large object must not keep it in the store until its next call)
        self._housekeeping = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self._beat_s: float | None = None  # a TCP driver pings the head this often
        self._last_sent = 0.0
        self._registered_fns: set[bytes] = set()
        self._pending: collections.deque = collections.deque()
        self._info: dict[int, Any] = {}
        self._info_ids = itertools.count(1)
        self._io_lock = threading.Lock()
        self._reading = False  # a thread holds _io_lock to read (not just to send)
        self._waiting = 0  # threads waiting on _cond for the reader
        self._ref_lock = threading.Lock()
        self._cond = threading.Condition()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = Poller()
        self._poller.register(self.sock)
        self._poller.register(self._wake_r)
        self.welcome: dict | None = None
        self._last_heard = time.monotonic()
        self._last_ping = 0.0
        self._refused: str | None = None
        self.closed = False
        #: messages that are not for the client (a worker's Execute/Exit) go here
        self.on_foreign: Callable[[Any], None] | None = None
        #: a worker lends its CPU while blocked in get/wait
        self.on_block: Callable[[list], None] | None = None
        self.on_unblock: Callable[[], None] | None = None
        #: called on every step of a blocking wait (a worker runs Help tasks there)
        self.on_wait_step: Callable[[], bool] | None = None
        #: true while values not sent yet may hold refs (a worker's held-back results): no
        #: Release may overtake them, or an object they keep alive could be freed first
        self.holding_values: Callable[[], bool] | None = None
        #: called when the local object store is found gone (a worker exits: its node died)
        self.on_store_closed: Callable[[], None] | None = None
        #: the node this process runs on, if known ("" for a driver that joined a cluster: the
        #: node whose store answers on this machine is looked up on first need)
        self.node_id = ""
        self._store: LocalStore | None = None
        self._store_looked = False
        self._store_lock = threading.Lock()

    # ------------------------------------------------------------------ connection

    def handshake(self, info: dict | None = None) -> dict:
        """Say Hello and wait for Welcome; raise HeadConnectionError with a clear reason.

        A driver on another machine than the head promises heartbeats (``heartbeat_s`` in its
        Hello): over TCP the head cannot see a process die, so silence is how it learns that
        this driver is gone (its tasks are then cancelled and its objects freed)."""
        info = dict(info or {})
        if self.kind == "driver" and not isinstance(self.sock, LocalClientSocket):
            self._beat_s = self.config.heartbeat_interval_s
            info["heartbeat_s"] = self._beat_s
        if self._credits is not None:  # the head batches Credit by a tenth of it
            info["max_pending_tasks"] = self.config.max_pending_tasks
        self.send(P.Hello(P.PROTOCOL_VERSION, self.kind, info))
        deadline = time.monotonic() + self.config.connect_timeout_s
        refusal: str | None = None
        while True:  # in short steps: a refused handshake shows only on the socket's monitor
            ok = self._wait_for(lambda: self.welcome is not None or self._refused is not None,
                                min(deadline, time.monotonic() + 0.05))
            refusal = None if ok else self.sock.refusal()
            if ok or refusal is not None or time.monotonic() >= deadline:
                break
        if refusal is not None:
            raise AuthenticationError(f"the taskmesh head at {self.address} refused this "
                                      f"{self.kind}: {refusal}")
        if self._refused is not None:
            cls = ProtocolVersionError if "protocol version" in self._refused else HeadConnectionError
            raise cls(f"the taskmesh head at {self.address} refused this {self.kind}: {self._refused}")
        if not ok:
            raise HeadConnectionError(
                f"no taskmesh head answered at {self.address} within "
                f"{self.config.connect_timeout_s:g} s. Is `taskmesh start --head` running there, "
                "and is the port reachable from this machine?")
        assert self.welcome is not None
        if self._beat_s is not None:
            self.wake_housekeeper()  # starts the thread that keeps the head informed
        return self.welcome

    def close(self) -> None:
        if self.closed:
            return
        # another thread may be the I/O leader for up to one poll step; never wait forever
        locked = self._io_lock.acquire(timeout=2.0)
        try:
            if self.kind != "worker" and self.welcome is not None:
                self._dead.clear()  # Goodbye releases everything we own
                self._pending.append(P.Goodbye())
            self._drain_sends()
            self.closed = True
            self.sock.close(linger_ms=200)
        except Exception:  # closing must never raise at interpreter exit
            pass
        finally:
            if locked:
                self._io_lock.release()
        self.closed = True
        self._housekeeping.set()  # let the housekeeper see it and end
        if self._store is not None:
            self._store.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._own_ctx:
            self.ctx.term()

    # ------------------------------------------------------------------ sending

    def send(self, msg: Any) -> None:
        """Send now if we can take the socket, else hand the message to the I/O leader."""
        self._pending.append(msg)
        if self._io_lock.acquire(blocking=False):
            try:
                self._drain_sends()
            finally:
                self._io_lock.release()
            if self._pending:
                self._retry_drain()
        else:
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def _retry_drain(self) -> None:
        if self._io_lock.acquire(blocking=False):
            try:
                self._drain_sends()
            finally:
                self._io_lock.release()

    def _drain_sends(self) -> None:
        if self.closed:
            return
        if (self._dead and (len(self._dead) >= _RELEASE_BATCH or time.monotonic() >= self._next_release)
                and not (self.holding_values is not None and self.holding_values())):
            self._collect_dead()
            self._next_release = time.monotonic() + _RELEASE_EVERY_S
        store = self._store
        if store is not None and store.has_unpins:
            store.flush()
        pending = self._pending
        send = self.sock.send
        if pending:
            self._last_sent = time.monotonic()
        # only what is queued now: a thread submitting in a loop must not keep us here
        for _ in range(len(pending)):
            send(pending.popleft())

    # ------------------------------------------------------------------ receiving

    def pump(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for messages and apply them (caller holds no lock).

        Returns True if this thread read the socket. A thread that finds another one reading
        waits to be notified instead; one that finds the lock held by a mere sender waits for
        the lock, so a thread submitting in a loop cannot starve a get().
        """
        got = self._io_lock.acquire(blocking=False)
        if not got and not self._reading:
            got = self._io_lock.acquire(timeout=min(timeout_s, 0.05))
        if not got:
            with self._cond:
                self._waiting += 1
                try:
                    self._cond.wait(timeout_s)
                finally:
                    self._waiting -= 1
            return False
        try:
            self._reading = True
            self._drain_sends()
            self._pump_locked(timeout_s)
        finally:
            self._reading = False
            self._io_lock.release()
        if self._waiting:  # let a waiting thread take over reading at once
            with self._cond:
                self._cond.notify_all()
        if self._pending:
            self._retry_drain()
        return True

    def _pump_locked(self, timeout_s: float) -> None:
        sock = self.sock
        if sock.wants_write:  # output the kernel could not take yet: wake when it can
            queued = sock.queued_bytes
            self._poller.register(sock, _POLLIN_OUT)
            ready = self._poller.poll(timeout_s * 1000)
            sock.flush()
            if sock.queued_bytes < queued:  # the head took some in: it is alive, just busy
                self._last_heard = time.monotonic()
            if not sock.wants_write:
                self._poller.register(sock, _POLLIN)
        else:
            ready = self._poller.poll(timeout_s * 1000)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
            self._drain_sends()
        got = False
        recv = self.sock.recv_nowait
        while (msg := recv()) is not None:
            got = True
            self._apply(msg)
        if got:
            self._last_heard = time.monotonic()
            with self._cond:
                self._cond.notify_all()

    def _apply(self, msg: Any) -> None:
        t = type(msg)
        if t is P.ObjectValues:
            values = self._values
            for item in msg.items:
                oid = item.object_id
                self._pending_owned.discard(oid)
                if oid not in self._refcounts and oid not in self._wanted:
                    continue  # nobody holds a ref any more
                if item.value is not None:
                    values[oid] = item.value
                    self._ready_remote.discard(oid)
                    if item.value.is_error:  # a get() of a list fails as soon as one failed
                        self._errors_in += 1
                else:
                    self._ready_remote.add(oid)
                    if oid in self._wanted and oid not in self._subscribed:
                        self._subscribed.add(oid)
                        self._pending.append(P.Subscribe([oid]))
            if self._pending:
                self._drain_sends()
        elif t is P.InfoReply:
            if msg.request_id:  # 0 answers a liveness ping
                self._info[msg.request_id] = msg.data
        elif t is P.ActorReply:
            self._info[msg.request_id] = msg.info
        elif t is P.Credit:
            if self._credits is not None:
                with self._credit_lock:
                    self._credits += msg.count
        elif t is P.Notice:
            log.warning("%s", msg.message)
        elif t is P.Rejected:
            self._rejected(msg)
        elif t is P.Welcome:
            self.welcome = msg.info
        elif t is P.Refused:
            self._refused = msg.reason
        elif self.on_foreign is not None:
            self.on_foreign(msg)
        else:
            log.warning("ignored unexpected %s from the head", t.__name__)

    def _rejected(self, msg: P.Rejected) -> None:
        """The head refused one of our messages: the request waiting for it raises, the refs
        of a refused task get the reason as their error, and anything else is logged."""
        what = (f"the taskmesh head at {self.address} refused a message of this process "
                f"({msg.message}): {msg.reason}")
        if msg.request_id:
            self._info[msg.request_id] = _Refusal(what)
        failed = 0
        for oid in msg.object_ids:
            if oid in self._refcounts or oid in self._wanted:
                self._pending_owned.discard(oid)
                self._values[oid] = P.SerializedObject.system_error("TaskmeshError", what)
                failed += 1
        self._errors_in += failed
        if not msg.request_id and not failed:
            log.warning("%s", what)

    def _wait_for(self, pred: Callable[[], bool], deadline: float | None) -> bool:
        """Pump until ``pred()`` holds or ``deadline`` passes; return pred()."""
        # silence before this wait says nothing about the head: count from now
        self._last_heard = max(self._last_heard, time.monotonic())
        while not pred():
            if self.closed:
                raise HeadConnectionError("taskmesh was shut down while waiting")
            if deadline is None:
                step = 0.5
            else:
                step = deadline - time.monotonic()
                if step <= 0:
                    self.pump(0)  # whatever already arrived still counts
                    return pred()
                step = min(step, 0.5)
            if self.on_wait_step is not None and self.on_wait_step():
                continue  # it ran something; look again before sleeping
            before = time.monotonic()
            read = self.pump(step)
            overrun = time.monotonic() - before - step - _STALL_S
            if overrun > 0:  # this process did not run (stopped, starved): not the head's silence
                self._last_heard += overrun
            if read:
                self._check_head_alive()  # only a thread that read may judge the head
        return True

    @property
    def head_gone(self) -> bool:
        return self.sock.peer_closed

    def _check_head_alive(self) -> None:
        """While we wait, make sure the head still answers: ping it after a silence, and give
        up with a clear error once it stayed silent for ``head_timeout_s``."""
        if self._refused is not None and self.welcome is not None:
            raise HeadConnectionError(f"the taskmesh head at {self.address} refused this "
                                      f"{self.kind}: {self._refused}")
        if self.sock.peer_closed and self.welcome is None:
            raise HeadConnectionError(f"the taskmesh head at {self.address} closed the "
                                      "connection during the handshake")
        if self.sock.peer_closed:
            raise HeadConnectionError(
                f"the taskmesh head at {self.address} closed the connection: it stopped. "
                "Objects and tasks it held are lost; start it again and call taskmesh.init() again.")
        silent = time.monotonic() - self._last_heard
        ping_after = min(_PING_AFTER_S, self.config.head_timeout_s / 4)
        if silent < ping_after:
            return
        if silent > self.config.head_timeout_s and self.welcome is not None:
            raise HeadConnectionError(
                f"the taskmesh head at {self.address} has not answered for {silent:.0f} s: it "
                "stopped, or the network to it is down. Objects and tasks it held are lost; "
                "start it again and call taskmesh.init() again.")
        now = time.monotonic()
        if now - self._last_ping >= ping_after:
            self._last_ping = now
            self.send(P.InfoRequest(0, "ping"))

    # ------------------------------------------------------------------ references

    def new_ref_ids(self, oids: Iterable[bytes]) -> None:
        with self._ref_lock:
            rc = self._refcounts
            for oid in oids:
                rc[oid] = rc.get(oid, 0) + 1

    def ref_died(self, oid: bytes) -> None:
        """Called from ObjectRef.__del__ (any thread, even inside GC): never blocks."""
        self._dead.append(oid)
        if not self._housekeeping.is_set():
            self.wake_housekeeper()

    def wake_housekeeper(self) -> None:
        """Make sure dead refs and unpins are flushed soon even if this process goes idle
        (any thread, even inside GC: starting the thread is the only non-trivial step)."""
        self._housekeeping.set()
        if self._housekeeper is None and not self.closed:
            t = threading.Thread(target=self._housekeep, name="taskmesh-housekeeper", daemon=True)
            self._housekeeper = t
            t.start()

    def _housekeep(self) -> None:
        ev = self._housekeeping
        beat = self._beat_s
        while not self.closed:
            if ev.wait(beat):
                time.sleep(_RELEASE_EVERY_S)
                ev.clear()
            if self.closed:
                return
            try:
                self._next_release = 0.0  # we waited the batching delay already
                if beat is not None and time.monotonic() - self._last_sent >= beat:
                    self.send(P.InfoRequest(0, "ping"))  # we are alive (answered, ignored)
                else:
                    self.send_pending()
            except Exception:  # closing under our feet
                return
            if self._dead or (self._store is not None and self._store.has_unpins):
                ev.set()  # the I/O lock was busy, or more died meanwhile: again soon

    def borrow_ref(self, oid: bytes) -> None:
        """A ref was unpickled here. The first ref of another owner's object makes us a
        borrower: the head hears it (in order with everything we send: before the result of
        the task whose arguments held the ref, before we release the value it came in). So
        does a ref to an object we own but already released (it came back inside a value)."""
        with self._ref_lock:
            rc = self._refcounts
            n = rc.get(oid, 0)
            rc[oid] = n + 1
            if n == 0 and oid not in self._borrowed and oid not in self._escaped:
                self._borrowed.add(oid)
                self._pending.append(P.Borrow([oid]))

    def mark_escaped(self, oid: bytes) -> None:
        self._escaped.add(oid)

    def _collect_dead(self) -> None:
        release = []
        dead = self._dead
        with self._ref_lock:
            rc = self._refcounts
            while dead:
                oid = dead.popleft()
                n = rc.get(oid, 0) - 1
                if n > 0:
                    rc[oid] = n
                    continue
                rc.pop(oid, None)
                self._values.pop(oid, None)
                self._pending_owned.discard(oid)
                self._ready_remote.discard(oid)
                self._subscribed.discard(oid)
                if oid in self._escaped:
                    continue
                if oid in self._borrowed:
                    self._borrowed.discard(oid)
                    release.append(oid)
                elif self.owns(oid):
                    release.append(oid)
        if release:  # after what is already queued: a queued Submit may still use them
            self._pending.append(P.Release(release))

    def owns(self, oid: bytes) -> bool:
        return oid[:8] == self._prefix

    # ------------------------------------------------------------------ operations

    def next_task_id(self) -> bytes:
        return self._prefix + next(self._counter).to_bytes(8, "big")

    def register_function(self, function_id: bytes, name: str, blob: bytes) -> None:
        if function_id not in self._registered_fns:
            self._registered_fns.add(function_id)
            self.send(P.RegisterFunction(function_id, name, blob))

    def submit(self, spec: P.TaskSpec, return_ids: list[bytes]) -> None:
        if self._credits is not None:  # a driver: at most max_pending_tasks in flight
            with self._credit_lock:
                self._credits -= 1
                short = self._credits < 0
            if short:
                self._backpressure(
                    f"{self.config.max_pending_tasks:,} of this driver's tasks are unfinished "
                    "(max_pending_tasks); it waits until some end")
                self._wait_for(lambda: self._credits >= 0, None)
            if self.sock.queued_bytes > _SEND_QUEUE_BYTES:
                self._backpressure(
                    f"the head is busy: {self.sock.queued_bytes // 1024:,} KiB of this "
                    "driver's messages wait for it to take them in; it waits until the head "
                    "catches up")
                self._wait_for(lambda: self.sock.queued_bytes <= _SEND_QUEUE_BYTES // 2, None)
        self._pending_owned.update(return_ids)
        self.send(P.Submit([spec]))
        args = spec.args
        if args is not None and args.is_stored and args.contained:
            self.ref_died(args.contained[0])  # large arguments: the task holds them now

    def _backpressure(self, why: str) -> None:
        """.remote() is about to wait for the head: say why, at most every 10 s."""
        now = time.monotonic()
        if now >= self._next_backpressure_log:
            self._next_backpressure_log = now + _BACKPRESSURE_LOG_S
            log.warning(".remote() waits: %s (said at most every %g s)", why, _BACKPRESSURE_LOG_S)

    def create_actor(self, spec: P.TaskSpec, options: dict, wait: bool) -> dict | None:
        """Send CreateActor; with ``wait`` (a named actor: it may exist already) return the
        head's ActorReply info."""
        args = spec.args
        if not wait:
            self.send(P.CreateActor(spec, options, 0))
            info = None
        else:
            info = self.request(lambda rid: P.CreateActor(spec, options, rid))
        if args is not None and args.is_stored and args.contained:
            self.ref_died(args.contained[0])  # large arguments: the constructor holds them now
        return info

    def request(self, make: Callable[[int], Any], timeout: float = 30.0) -> Any:
        """Send ``make(request_id)`` and wait for the head's answer to it (an InfoReply or
        ActorReply carrying that id)."""
        rid = next(self._info_ids)
        self.send(make(rid))
        if not self._wait_for(lambda: rid in self._info, time.monotonic() + timeout):
            raise HeadConnectionError(f"the head at {self.address} did not answer within {timeout:g} s")
        answer = self._info.pop(rid)
        if type(answer) is _Refusal:
            raise TaskmeshError(answer.reason)
        return answer

    def new_object_id(self) -> bytes:
        return self.next_task_id() + b"\0\0\0\0"

    def put_serialized(self, oid: bytes, value: P.SerializedObject) -> None:
        self._values[oid] = value
        self.send(P.Put([(oid, value)]))

    # ------------------------------------------------------------------ the node's object store

    def local_store(self) -> LocalStore | None:
        """The object store of this machine's node, connected on first use; None if no node
        of the cluster runs on this machine."""
        if self._store is not None or self._store_looked:
            return self._store
        with self._store_lock:
            if not self._store_looked:
                self._store = self._connect_store()
                self._store_looked = True
        return self._store

    def _connect_store(self) -> LocalStore | None:
        timeout = self.config.connect_timeout_s
        if self.node_id:
            candidates = [self.node_id]
        else:  # a driver that joined a cluster: a node on this machine answers on its socket
            candidates = [n["NodeID"] for n in self.info("nodes") if n.get("Alive")]
        for node_id in candidates:
            try:
                return LocalStore.connect(node_id, f"taskmesh-node-{node_id}", timeout,
                                          self.wake_housekeeper, probe=not self.node_id,
                                          on_closed=self.on_store_closed)
            except (ConnectionError, OSError) as exc:
                if self.node_id:
                    log.warning("could not reach the object store of node %s: %s", node_id, exc)
        return None

    def store_large(self, object_id: bytes, obj: P.SerializedObject) -> P.SerializedObject | None:
        """Write a large value into this machine's node store; return its STORED marker, or
        None if this process has no store (the value then travels inline)."""
        store = self.local_store()
        if store is None:
            return None
        if self._dead:  # free what died first: in a put/del loop, its room is needed now
            self._next_release = 0.0
            self.send_pending()
        return store.put(object_id, obj)

    def store_args(self, args: P.SerializedObject) -> P.SerializedObject:
        """Large task arguments go to the node store as an object of their own, which the
        task holds until it ends (as Ray does); return what the TaskSpec carries instead."""
        oid = self.new_object_id()
        marker = self.store_large(oid, args)
        if marker is None:
            return args
        self.send(P.Put([(oid, marker)]))
        return P.SerializedObject(P.SerializedObject.STORED, marker.data, (), [oid])

    def resolve(self, obj: P.SerializedObject, timeout: float | None = None,
                wait_for_holders: bool = True) -> P.SerializedObject:
        """A readable object for ``obj``: itself, or for a STORED marker the value read from the
        node store (zero-copy views; pulled from another node first if needed).

        If no holder it names can deliver, the head is asked again: it may know of new copies,
        be rebuilding the object (the answer then waits for the re-run), or say it is lost (an
        error object, returned as such). If the head still names the same holders, they may be
        dead but not yet declared so: with ``wait_for_holders`` it asks again, for up to twice
        the heartbeat time-out, before ObjectLostError. An unchanged answer after that is read
        once more before giving up: a holder that was declared dead and joined again under the
        same id and address makes a marker equal to the lost one for a copy rebuilt there."""
        if obj.flags != P.SerializedObject.STORED:
            return obj
        start = time.monotonic()
        patience = 2 * self.config.heartbeat_timeout_s + 1.0
        delay = 0.05
        last_chance = False
        while True:
            remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            try:
                return self._read_stored(obj, remaining)
            except TimeoutError:  # a pin waiting for room to restore the object from disk
                raise GetTimeoutError(
                    f"get() timed out after {timeout:g} s: object {obj.read_stored()[0].hex()} "
                    "is in the store but could not be read in time (it waits for room to come "
                    "back from disk)") from None
            except ObjectLostError:
                oid = obj.read_stored()[0]
                fresh = self._fresh_value(oid, remaining)
                if fresh is None:
                    raise
                if not fresh.is_stored:
                    return fresh  # the head's verdict (e.g. lost for good, naming the node)
                if fresh.data == obj.data:
                    waited = time.monotonic() - start
                    if not wait_for_holders or (timeout is not None and waited + delay > timeout):
                        raise
                    if waited > patience:
                        if last_chance:
                            raise
                        last_chance = True
                    else:
                        time.sleep(delay)
                        delay = min(delay * 2, 0.5)
                obj = fresh

    def _read_stored(self, obj: P.SerializedObject, timeout: float | None) -> P.SerializedObject:
        store = self.local_store()
        if store is None:  # no node on this machine: pull the bytes into our own memory
            return fetch_remote(obj, timeout, security=self.security)
        return store.read(obj, timeout)

    def _fresh_value(self, oid: bytes, timeout: float | None) -> P.SerializedObject | None:
        """What the head says about ``oid`` now (a STORED marker lists the current holders)."""
        self._values.pop(oid, None)
        self._subscribed.discard(oid)
        self._ready_remote.discard(oid)
        try:
            return self.get_values([oid], timeout)[0]
        except GetTimeoutError:
            return None

    def get_values(self, oids: Sequence[bytes], timeout: float | None,
                   fail_fast: bool = False) -> list[P.SerializedObject | None]:
        """The serialized values of ``oids``, waiting up to ``timeout`` seconds (STORED markers
        are left as they are: see :meth:`resolve`).

        With ``fail_fast`` the wait ends as soon as any of them holds an error (a failed task,
        a dead actor, a lost object), as Ray's get does: values that have not arrived are None
        in the list then, and the caller raises the error."""
        values = self._values
        if fail_fast and any(v.is_error for v in map(values.get, oids) if v is not None):
            return [values.get(oid) for oid in oids]
        missing = [oid for oid in oids if oid not in values]
        if missing:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._request(missing)
            blocked = False
            if self.on_block is not None:
                self.on_block(missing)
                blocked = True
            try:
                ok = self._wait_for(self._arrived(missing, fail_fast), deadline)
            finally:
                if blocked and self.on_unblock is not None:
                    self.on_unblock()
                self._wanted.subtract(missing)
                self._drop_unwanted(missing)
            if not ok:
                n = sum(1 for o in missing if o not in values)
                raise GetTimeoutError(
                    f"get() timed out after {timeout:g} s: {n} of {len(oids)} objects not ready "
                    f"(first: {next(o for o in missing if o not in values).hex()})")
        return [values.get(oid) for oid in oids]

    def _arrived(self, missing: list[bytes], fail_fast: bool) -> Callable[[], bool]:
        """A wait predicate: every one of ``missing`` has a value (or, with ``fail_fast``, one
        of them is an error). Values stay once they arrived (the caller holds their refs), so
        it scans each id once, and looks for errors only after one came in."""
        values = self._values
        state = [0, self._errors_in]  # ids known to be present, errors seen so far

        def arrived() -> bool:
            i, n = state[0], len(missing)
            while i < n and missing[i] in values:
                i += 1
            state[0] = i
            if i == n:
                return True
            if fail_fast and self._errors_in != state[1]:
                state[1] = self._errors_in
                return any(v.is_error for v in map(values.get, missing[i:]) if v is not None)
            return False

        return arrived

    def wait_ready(self, oids: Sequence[bytes], num_returns: int, timeout: float | None) -> set[bytes]:
        """Return the set of ready ids once ``num_returns`` are ready or ``timeout`` passes."""

        def ready_set() -> set[bytes]:
            return {o for o in oids if o in self._values or o in self._ready_remote}

        if len(ready_set()) >= num_returns:
            return ready_set()
        missing = [o for o in oids if o not in self._values and o not in self._ready_remote]
        self._request(missing, values_needed=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        if timeout == 0:
            self.pump(0)
            self._wanted.subtract(missing)
            self._drop_unwanted(missing)
            return ready_set()
        if self.on_block is not None:
            self.on_block(missing)
        try:
            self._wait_for(lambda: len(ready_set()) >= num_returns, deadline)
        finally:
            if self.on_unblock is not None:
                self.on_unblock()
            self._wanted.subtract(missing)
            self._drop_unwanted(missing)
        return ready_set()

    def _drop_unwanted(self, oids: list[bytes]) -> None:
        wanted = self._wanted
        for oid in oids:
            if wanted.get(oid, 0) <= 0:
                wanted.pop(oid, None)

    def _request(self, missing: list[bytes], values_needed: bool = True) -> None:
        """Make sure the head will send us these objects (owned ones come by themselves)."""
        self._wanted.update(missing)  # a count per waiting call: threads may wait for the same
        # our own results come by themselves while pending; anything else (other owners'
        # objects, large values, values we dropped and got back through an escaped ref)
        # must be asked for
        sub = [o for o in missing if o not in self._subscribed and o not in self._pending_owned
               and (values_needed or o not in self._ready_remote)]
        if sub:
            self._subscribed.update(sub)
            self.send(P.Subscribe(sub))
        else:
            self.send_pending()

    def send_pending(self) -> None:
        if ((self._pending or self._dead or (self._store is not None and self._store.has_unpins))
                and self._io_lock.acquire(blocking=False)):
            try:
                self._drain_sends()
            finally:
                self._io_lock.release()

    def info(self, what: str, timeout: float = 10.0) -> Any:
        return self.request(lambda rid: P.InfoRequest(rid, what), timeout)


class _Refusal:
    """The head's Rejected answer to a request, in place of its reply."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def function_id_for(blob: bytes) -> bytes:
    return hashlib.blake2b(blob, digest_size=16).digest()
