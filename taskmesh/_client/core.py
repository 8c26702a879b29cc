"""The client core: one process's connection to the head, used by drivers and by workers.

    .remote() ──Submit──▶ head        put() ──Put──▶ head        ObjectRef GC ──Release──▶ head
    get()/wait() ◀──ObjectValues── head (pushed for objects we own; on Subscribe for others)

The socket has no I/O thread of its own: whichever thread needs to wait (get, wait) becomes
the I/O leader for a while and polls the socket itself, so a synchronous round trip costs no
thread hand-off. Sends from other threads queue up and wake the leader through a pipe. Values
of small objects this process owns are pushed by the head as soon as their task ends, so a
later ``get`` is a dictionary look-up.

What this process knows and holds of objects (ref counts, borrows, batched releases, values,
waits, credits) is decided in ``refs.py``, a sans-IO part this module drives under its locks;
how a value is read (inline, local store, remote fetch, another holder) in ``reader.py``. A
worker hooks into the client through one ``hooks.ClientHooks`` object.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from .. import _protocol as P
from .. import _serialize as S
from .._runtime_env import package
from .._runtime_env.apply import env_id, wire_form
from .._runtime_env.spec import merge
from .._secret import Security
from .._transport import POLLIN, POLLOUT, LocalClientSocket, Poller, new_context, open_client
from ..config import Config
from ..errors import (AuthenticationError, GetTimeoutError, HeadConnectionError,
                      ProtocolVersionError, TaskmeshError)
from .hooks import ClientHooks
from .local_store import LocalStore
from .reader import ObjectReader
from .output import DriverOutput
from .refs import _RELEASE_EVERY_S, Credits, RefTable

log = logging.getLogger("taskmesh.client")


_POLLIN = POLLIN
_POLLIN_OUT = POLLIN | POLLOUT

#: a waiting client pings a silent head this often
_PING_AFTER_S = 2.0
#: a wait step that overran its time-out by more than this means this process did not run
_STALL_S = 0.25

#: a driver's .remote() waits while more than this many bytes of its messages wait for the
#: head to take them (until half is taken): the head reads a flood at its own pace, so the
#: flood waits here, bounded, and a ping sent meanwhile is never far behind
_SEND_QUEUE_BYTES = 512 * 1024
#: "why .remote() waits" is logged at most this often
_BACKPRESSURE_LOG_S = 10.0
#: an idle driver reads what its tasks print this often (its housekeeper thread does)
OUTPUT_POLL_S = 0.1
#: a driver leaving right after results came waits this long for their tasks' output
OUTPUT_LINGER_S = 0.3


class CoreClient:
    """Submits tasks, stores and fetches objects, for one process (driver or worker).

    Why one class of ~600 lines: what is left here is the I/O shell, and its parts share one
    locking discipline (``_io_lock`` for the socket and the send queue, taken by whichever
    thread leads; ``_ref_lock`` around count changes; ``_credit_lock``; the condition that
    hands leadership over). Splitting the operations from the leadership would spread those
    rules over several classes; the decisions already live apart (``refs.py``, ``reader.py``).
    """

    def __init__(
        self,
        config: Config,
        endpoint: str,
        kind: str,
        address: str,
        security: Security,
        identity: bytes | None = None,
        ctx: Any = None,
        hooks: ClientHooks | None = None,
        node_id: str = "",
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
        #: the object bookkeeping (sans-IO): counts and values under _ref_lock where they change
        self.refs = RefTable(os.urandom(8))
        #: backpressure (drivers only): tasks we may still submit before waiting for Credit
        self._credits = Credits(config.max_pending_tasks) if kind == "driver" else None
        self._credit_lock = threading.Lock()
        self._next_backpressure_log = 0.0
        # dead refs and dropped views are flushed by whoever talks to the head next, or by a
        # small thread after _RELEASE_EVERY_S when this process is idle (a notebook that just
        # dropped a large object must not keep it in the store until its next call)
        self._housekeeping = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self._beat_s: float | None = None  # a TCP driver pings the head this often
        self._last_sent = 0.0
        self._registered_fns: set[bytes] = set()
        #: the runtime_env tasks submitted here inherit (the job's; a worker's own), checked
        self.runtime_env: dict = {}
        self._env_ids: dict[str, str] = {}  # a merged runtime_env (JSON) -> its id
        self._registered_envs: set[str] = set()
        self._packages: dict[str, bytes] = {}  # package name -> its object (put or found)
        #: id(a task's runtime_env) -> (it, the parent env it was merged over, the env id)
        self._env_by_obj: dict[int, tuple] = {}
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
        #: how the process that runs tasks (a worker) hooks in; None for a driver
        self.hooks = hooks
        #: the node this process runs on, if known ("" for a driver that joined a cluster: the
        #: node whose store answers on this machine is looked up on first need)
        self.node_id = node_id
        self._store: LocalStore | None = None
        self._store_looked = False
        self._store_lock = threading.Lock()
        #: how values are read (inline, node store, remote fetch, another holder)
        self.reader = ObjectReader(self.local_store, self._fresh_value, security,
                                   2 * config.heartbeat_timeout_s + 1.0)
        #: a driver's sink for what its tasks print (None: not shown here)
        self.output: DriverOutput | None = None
        self._values_at = 0.0  # when values last came (output may follow for a moment)

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
        if self.kind == "driver":
            info.setdefault("log_to_driver", True)
            if info["log_to_driver"]:
                self.output = DriverOutput()
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
        if self._beat_s is not None or self.output is not None:
            self.wake_housekeeper()  # starts the thread that keeps the head informed
        return self.welcome

    def close(self) -> None:
        if self.closed:
            return
        # another thread may be the I/O leader for up to one poll step; never wait forever
        locked = self._io_lock.acquire(timeout=2.0)
        try:
            if self.output is not None and self.welcome is not None:
                self._linger_for_output(locked)
            if self.kind != "worker" and self.welcome is not None:
                self.refs.drop_dead()  # Goodbye releases everything we own
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

    def _linger_for_output(self, locked: bool) -> None:
        """Before leaving, give the output of the tasks that just finished a moment to
        arrive (a node sends what its workers print every 0.1 s): a script that prints in a
        task, gets the result and exits shows the line. Nothing to wait for if no result
        came in the last ``OUTPUT_LINGER_S``."""
        assert self.output is not None
        deadline = self._values_at + OUTPUT_LINGER_S
        if locked:
            while (left := deadline - time.monotonic()) > 0 and not self.sock.peer_closed:
                self._pump_locked(left)
        self.output.flush(time.monotonic(), everything=True)

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
        refs = self.refs
        if refs.dead:
            now = time.monotonic()
            if refs.release_due(now) and not (self.hooks is not None
                                              and self.hooks.holding_values()):
                with self._ref_lock:
                    release = refs.collect_dead(now)
                if release is not None:  # after what is queued: a queued Submit may use them
                    self._pending.append(release)
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
            self._values_at = time.monotonic()
            subscribes = self.refs.apply_values(msg.items)
            if subscribes:
                self._pending.extend(subscribes)
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
                    self._credits.give(msg.count)
        elif t is P.Output:
            if self.output is not None:
                self.output.feed(msg.entries, time.monotonic())
        elif t is P.Notice:
            log.warning("%s", msg.message)
        elif t is P.Rejected:
            self._rejected(msg)
        elif t is P.Welcome:
            self.welcome = msg.info
        elif t is P.Refused:
            self._refused = msg.reason
        elif self.hooks is not None:
            self.hooks.on_message(msg)
        else:
            log.warning("ignored unexpected %s from the head", t.__name__)

    def _rejected(self, msg: P.Rejected) -> None:
        """The head refused one of our messages: the request waiting for it raises, the refs
        of a refused task get the reason as their error, and anything else is logged."""
        what = (f"the taskmesh head at {self.address} refused a message of this process "
                f"({msg.message}): {msg.reason}")
        if msg.request_id:
            self._info[msg.request_id] = _Refusal(what)
        failed = self.refs.rejected(msg.object_ids,
                                    P.SerializedObject.system_error("TaskmeshError", what))
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
            if self.hooks is not None and self.hooks.wait_step():
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
            self.refs.new_refs(oids)

    def ref_died(self, oid: bytes) -> None:
        """Called from ObjectRef.__del__ (any thread, even inside GC): never blocks."""
        self.refs.died(oid)
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
        output = self.output
        step = beat if output is None else min(beat or OUTPUT_POLL_S, OUTPUT_POLL_S)
        while not self.closed:
            if ev.wait(step):
                time.sleep(_RELEASE_EVERY_S)
                ev.clear()
            if self.closed:
                return
            if output is not None:  # show what tasks print while this driver does other things
                if not self._reading:
                    self.pump(0)
                output.flush(time.monotonic())
            try:
                self.refs.release_soon()  # we waited the batching delay already
                if beat is not None and time.monotonic() - self._last_sent >= beat:
                    self.send(P.InfoRequest(0, "ping"))  # we are alive (answered, ignored)
                else:
                    self.send_pending()
            except Exception:  # closing under our feet
                return
            if self.refs.dead or (self._store is not None and self._store.has_unpins):
                ev.set()  # the I/O lock was busy, or more died meanwhile: again soon

    def borrow_ref(self, oid: bytes) -> None:
        """A ref was unpickled here (see RefTable.borrow): the head may have to hear it."""
        with self._ref_lock:
            borrow = self.refs.borrow(oid)
            if borrow is not None:
                self._pending.append(borrow)

    def mark_escaped(self, oid: bytes) -> None:
        self.refs.escape(oid)

    def owns(self, oid: bytes) -> bool:
        return self.refs.owns(oid)

    # ------------------------------------------------------------------ operations

    def next_task_id(self) -> bytes:
        return self.refs.next_task_id()

    def register_function(self, function_id: bytes, name: str, blob: bytes) -> None:
        if function_id not in self._registered_fns:
            self._registered_fns.add(function_id)
            self.send(P.RegisterFunction(function_id, name, blob))

    def env_id_for(self, task_env: dict | None) -> str:
        """The id of the runtime environment a task with ``task_env`` (checked; None: none
        of its own) runs in: its own merged over this process's, as Ray merges them; "" for
        the default. Registered with the head the first time it is used here."""
        mine = self._env_by_obj.get(id(task_env))
        if mine is not None and mine[0] is task_env and mine[1] is self.runtime_env:
            return mine[2]  # (a task's options are one object: worked out once per process)
        env = merge(self.runtime_env, task_env or {})
        if not env:
            return ""
        if len(self._env_by_obj) > 1000:
            self._env_by_obj.clear()
        self._env_by_obj[id(task_env)] = (task_env, self.runtime_env, self._env_id(env))
        return self._env_by_obj[id(task_env)][2]

    def _env_id(self, env: dict) -> str:
        key = json.dumps(env, sort_keys=True)
        ident = self._env_ids.get(key)
        if ident is None:
            wire = wire_form(env, self._pack)
            ident = self._env_ids[key] = env_id(wire)
            if ident and ident not in self._registered_envs:
                self._registered_envs.add(ident)
                self.send(P.RegisterEnv(ident, json.dumps(wire, sort_keys=True)))
        return ident

    def _pack(self, path: str, excludes: list[str], keep_name: bool) -> dict:
        """A working_dir or py_module in wire form: its package, uploaded unless the head
        keeps one of that name already (a second run with the same files uploads nothing)."""
        tree = package.scan(path, excludes, what="py_modules" if keep_name else "working_dir",
                            keep_name=keep_name)
        name = package.digest(tree)
        oid = self._packages.get(name)
        if oid is None:
            known = self.info(f"package:{name}")
            if isinstance(known, dict) and known.get("object"):
                oid = bytes.fromhex(known["object"])
            else:
                oid = self.put_value(package.zip_bytes(tree))  # (this process keeps its
                self.send(P.RegisterPackage(name, oid))          # ref until it ends)
            self._packages[name] = oid
        return {"pkg": name, "archive": tree.archive, "object": oid.hex()}

    def put_value(self, value: Any) -> bytes:
        """``put()``: store ``value`` as a new object of this process (large ones into this
        machine's node store, one copy); return its id, counted as one ref held here."""
        obj = S.dumps(value)
        oid = self.new_object_id()
        stored = None
        if obj.nbytes > self.config.store_threshold_bytes:
            stored = self.store_large(oid, obj)  # one copy, into shared memory
        self.put_serialized(oid, stored if stored is not None else S.snapshot(obj))
        self.new_ref_ids((oid,))
        return oid

    def submit(self, spec: P.TaskSpec, return_ids: list[bytes]) -> None:
        credits = self._credits
        if credits is not None:  # a driver: at most max_pending_tasks in flight
            with self._credit_lock:
                ok = credits.take()
            if not ok:
                self._backpressure(
                    f"{self.config.max_pending_tasks:,} of this driver's tasks are unfinished "
                    "(max_pending_tasks); it waits until some end")
                self._wait_for(lambda: credits.ok, None)
            if self.sock.queued_bytes > _SEND_QUEUE_BYTES:
                self._backpressure(
                    f"the head is busy: {self.sock.queued_bytes // 1024:,} KiB of this "
                    "driver's messages wait for it to take them in; it waits until the head "
                    "catches up")
                self._wait_for(lambda: self.sock.queued_bytes <= _SEND_QUEUE_BYTES // 2, None)
        self.refs.submitted(return_ids)
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
        return self.refs.new_object_id()

    def put_serialized(self, oid: bytes, value: P.SerializedObject) -> None:
        self.refs.put(oid, value)
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
                hooks = self.hooks
                return LocalStore.connect(node_id, f"taskmesh-node-{node_id}", timeout,
                                          self.wake_housekeeper, probe=not self.node_id,
                                          on_closed=hooks.store_closed if hooks else None)
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
        if self.refs.dead:  # free what died first: in a put/del loop, its room is needed now
            self.refs.release_soon()
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

    def _fresh_value(self, oid: bytes, timeout: float | None) -> P.SerializedObject | None:
        """What the head says about ``oid`` now (a STORED marker lists the current holders)."""
        self.refs.forget_value(oid)
        try:
            return self.get_values([oid], timeout)[0]
        except GetTimeoutError:
            return None

    def get_values(self, oids: Sequence[bytes], timeout: float | None,
                   fail_fast: bool = False) -> list[P.SerializedObject | None]:
        """The serialized values of ``oids``, waiting up to ``timeout`` seconds (STORED markers
        are left as they are: ``self.reader`` reads them).

        With ``fail_fast`` the wait ends as soon as any of them holds an error (a failed task,
        a dead actor, a lost object), as Ray's get does: values that have not arrived are None
        in the list then, and the caller raises the error."""
        refs = self.refs
        values = refs.values
        if fail_fast and any(v.is_error for v in map(values.get, oids) if v is not None):
            return [values.get(oid) for oid in oids]
        missing = [oid for oid in oids if oid not in values]
        if missing:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._request(missing)
            hooks = self.hooks
            if hooks is not None:
                hooks.block(missing)
            try:
                ok = self._wait_for(refs.arrived(missing, fail_fast), deadline)
            finally:
                if hooks is not None:
                    hooks.unblock()
                refs.unwant(missing)
            if not ok:
                n = sum(1 for o in missing if o not in values)
                raise GetTimeoutError(
                    f"get() timed out after {timeout:g} s: {n} of {len(oids)} objects not ready "
                    f"(first: {next(o for o in missing if o not in values).hex()})")
        return [values.get(oid) for oid in oids]

    def wait_ready(self, oids: Sequence[bytes], num_returns: int, timeout: float | None) -> set[bytes]:
        """Return the set of ready ids once ``num_returns`` are ready or ``timeout`` passes."""

        refs = self.refs
        ready = refs.ready(oids)
        if len(ready) >= num_returns:
            return ready
        missing = [o for o in oids if o not in ready]
        self._request(missing, values_needed=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        if timeout == 0:
            self.pump(0)
            refs.unwant(missing)
            return refs.ready(oids)
        hooks = self.hooks
        if hooks is not None:
            hooks.block(missing)
        try:
            self._wait_for(lambda: len(refs.ready(oids)) >= num_returns, deadline)
        finally:
            if hooks is not None:
                hooks.unblock()
            refs.unwant(missing)
        return refs.ready(oids)

    def _request(self, missing: list[bytes], values_needed: bool = True) -> None:
        """Make sure the head will send us these objects (owned ones come by themselves)."""
        subscribe = self.refs.want(missing, values_needed)
        if subscribe is not None:
            self.send(subscribe)
        else:
            self.send_pending()

    def send_pending(self) -> None:
        if ((self._pending or self.refs.dead or (self._store is not None and self._store.has_unpins))
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

