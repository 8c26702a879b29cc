"""Sockets for taskmesh: with _gatekeeper.py, the only module that imports zmq (and, via _uds, the only socket code).

The head listens on a ZeroMQ ROUTER (TCP, for other machines) and on a local unix socket (for
peers on its own machine, see _uds.py); drivers, node agents and workers each hold one
connection to it, picked by connect_endpoint. Messages are encoded and decoded here (via
_protocol), so every received message passes one place where it is checked before anyone acts
on it. TCP connections are authenticated (and by default encrypted) by ZeroMQ itself before any
message of theirs is delivered (_gatekeeper.py); local ones are admitted only from processes
of the same user, who can read the cluster secret anyway (_uds.py).
High-water marks are off for sending: taskmesh never silently drops a message. The head's
ROUTER has a receive high-water mark (HEAD_RCVHWM): when the head has not caught up with a
TCP peer, ZeroMQ stops reading that peer's connection until it has (backpressure through TCP;
inbound messages are never dropped), as the kernel does for local peers the head does not read.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import sys
import time
from typing import Any, Iterator

import zmq

from ._gatekeeper import Gatekeeper, HandshakeWatch, secure_client, secure_server
from ._protocol import ProtocolError, decode, encode, malformed
from ._ratelimit import RateLimitedLog
from ._secret import Security
from ._uds import LocalClient, LocalServer

log = logging.getLogger(__name__)

POLLIN = zmq.POLLIN
POLLOUT = zmq.POLLOUT


#: a local connection is read at most this many chunks (of 256 KiB) per call of the head's
#: receive: peers are read in turn, and a flood is taken in a slice at a time
LOCAL_READ_CHUNKS = 1
#: a client's DEALER queues at most this many messages for the head; beyond, they wait in
#: the client (ClientSocket) where it can count them
CLIENT_SNDHWM = 1000
#: the head's ROUTER queues at most this many unread messages per TCP peer; beyond, ZeroMQ
#: stops reading that peer's connection (TCP backpressure; inbound messages are never dropped)
HEAD_RCVHWM = 1000


def _buflen_any(frame: Any) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


def _recv_frames(sock: zmq.Socket, small: int) -> list:
    """Receive one multipart message without blocking. The first ``small`` frames (routing
    id, header) are copied into bytes; the rest are out-of-band buffers, large by
    construction, and are kept in ZeroMQ's own memory (a memoryview, no copy)."""
    frames: list = [sock.recv(zmq.NOBLOCK)]
    more = sock.getsockopt(zmq.RCVMORE)
    while more:
        if len(frames) < small:
            frames.append(sock.recv())
        else:
            frames.append(sock.recv(copy=False).buffer)
        more = sock.getsockopt(zmq.RCVMORE)
    return frames


def new_context() -> zmq.Context:
    """A fresh context for this process (never shared across fork)."""
    return zmq.Context()


def _tune(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)


def tcp_endpoint(host: str, port: int) -> str:
    return f"tcp://{host}:{port}"


def local_endpoint(port: int) -> str:
    """The head's Linux abstract unix socket (see _uds.py): no file to clean up, private to
    this network namespace, and far fewer thread wake-ups per message than ZeroMQ."""
    return f"local:taskmesh-head-{port}"


def is_local_address(host: str) -> bool:
    """True if ``host`` is an address of this machine (of this network namespace)."""
    try:
        ip = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except (socket.gaierror, IndexError):
        return False
    if ip.startswith("127."):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, 0))  # only an address of ours can be bound
            return True
        except OSError:
            return False


def connect_endpoint(host: str, port: int) -> str:
    """Where a peer should connect to reach the head at host:port: the local socket when
    the head runs on this machine, TCP otherwise."""
    if sys.platform.startswith("linux") and is_local_address(host):
        return local_endpoint(port)
    return tcp_endpoint(host, port)


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """'host:port', 'host' or 'tcp://host:port' -> (host, port); raise ValueError if malformed."""
    addr = address.strip()
    if addr.startswith("tcp://"):
        addr = addr[len("tcp://"):]
    if not addr:
        raise ValueError("empty address")
    host, sep, port_s = addr.rpartition(":")
    if not sep:
        return addr, default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"bad port in address {address!r}")
    return host.strip("[]"), int(port_s)


class LocalServerSocket:
    """A listener on a local unix socket (_uds.py) driven by a Poller: accepts, reads and
    decodes, sends without blocking (finishing a write when the socket becomes writable), and
    reports peers that joined (``report_joins``) or left. The head's local side and each node's
    object store (``taskmesh-node-<node_id>``) use it."""

    def __init__(self, name: str, frame_threshold: int, report_joins: bool = False,
                 max_message: int = 1 << 40, report_malformed: bool = False) -> None:
        self.name = name
        #: hand on a message that does not decode as a Malformed record (the head answers
        #: its sender); else it is only counted and logged
        self.report_malformed = report_malformed
        self.server = LocalServer(name, report_joins, max_message)  # OSError if the name is taken
        self.frame_threshold = frame_threshold
        self._dropped = RateLimitedLog(log)
        self._poller: Poller | None = None
        self._writing: set[int] = set()

    @property
    def listen_fd(self) -> int:
        return self.server.listen_fd

    @property
    def bad_messages(self) -> int:
        """Malformed messages dropped (bad framing is counted by the server: it closes the
        connection)."""
        return self._dropped.total

    def attach(self, poller: "Poller") -> None:
        """Register the listener; connections are registered as they are accepted."""
        self._poller = poller
        poller.register(self.server.listen_fd)

    def receive(self, ready: dict, max_chunks: int | None = None,
                only: Any = None) -> list[tuple[bytes, Any]]:
        """Every message that is ready now: accept, finish pending writes, read and decode.

        ``max_chunks``: read at most that many chunks of each connection (the rest waits in
        the kernel). ``only``: read only connections of these peers (and connections that
        have not named their peer yet); the others wait for a later call."""
        out: list[tuple[bytes, Any]] = []
        if not ready:
            return out
        server, poller = self.server, self._poller
        assert poller is not None
        if server.listen_fd in ready:
            for fd in server.accept():
                poller.register(fd)
        peer_of = server.peer_of
        for fd, events in ready.items():
            if type(fd) is not int or fd not in server.conns:
                continue
            if events & zmq.POLLOUT and fd in self._writing:
                self._flush(fd)
            if only is not None and fd in peer_of and peer_of[fd] not in only:
                continue
            if events & (zmq.POLLIN | zmq.POLLERR):
                for peer, frames in server.read(fd, max_chunks):
                    try:
                        out.append((peer, decode(frames)))
                    except ProtocolError as exc:
                        self._dropped.event("malformed", "dropped a malformed message from "
                                            "local peer %r on @%s: %s", peer[:16], self.name, exc)
                        if self.report_malformed:
                            out.append((peer, malformed(frames, exc)))
        self._unpoll_dropped()
        return out

    def _unpoll_dropped(self) -> None:
        assert self._poller is not None
        for fd in self.server.dropped_fds:
            self._writing.discard(fd)
            try:
                self._poller.unregister(fd)
            except KeyError:
                pass
        self.server.dropped_fds.clear()

    def joined_peers(self) -> list[bytes]:
        """Peers whose identity message arrived since the last call (with ``report_joins``)."""
        if not self.server.joined_peers:
            return []
        peers, self.server.joined_peers = self.server.joined_peers, []
        return peers

    def closed_peers(self) -> list[bytes]:
        """Peers whose connection ended since the last call (the process is gone)."""
        if not self.server.closed_peers:
            return []
        peers, self.server.closed_peers = self.server.closed_peers, []
        return peers

    def has_peer(self, peer: bytes) -> bool:
        return self.server.has_peer(peer)

    def send(self, peer: bytes, msg: Any) -> bool:
        """Send; return False if the peer is not connected (the message is dropped)."""
        return self.send_frames(peer, encode(msg, self.frame_threshold))

    def send_frames(self, peer: bytes, frames: list) -> bool:
        if not self.server.has_peer(peer):
            return False
        conn = self.server.send(peer, frames)
        if conn is not None and conn.fd not in self._writing:
            self._writing.add(conn.fd)  # the kernel buffer is full: finish when writable
            assert self._poller is not None
            self._poller.register(conn.fd, zmq.POLLIN | zmq.POLLOUT)
        return True

    def _flush(self, fd: int) -> None:
        assert self._poller is not None
        conn = self.server.conns.get(fd)
        if conn is None or conn.flush():
            self._writing.discard(fd)
            if conn is not None:
                self._poller.register(fd, zmq.POLLIN)

    def flush_all(self, timeout_s: float) -> None:
        """Before exiting: try to deliver what is still queued for local peers."""
        deadline = time.monotonic() + timeout_s
        while self._writing and time.monotonic() < deadline:
            writable = select.select([], list(self._writing), [], 0.05)[1]
            for fd in writable:
                self._flush(fd)

    def close(self, linger_ms: int = 0) -> None:
        if linger_ms:
            self.flush_all(linger_ms / 1000)
        self.server.close()


class ServerSocket:
    """The head's sockets: a ZeroMQ ROUTER on TCP for other machines, and a local unix socket
    for peers on this one. Receive (peer, message); send a message to a peer by id."""

    def __init__(self, ctx: zmq.Context, host: str, port: int, frame_threshold: int,
                 security: Security, max_message_bytes: int = 1 << 30) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        _tune(self.sock)
        self.sock.setsockopt(zmq.RCVHWM, HEAD_RCVHWM)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # a larger frame makes ZeroMQ drop the connection that sent it, before allocating it
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        secure_server(self.sock, security)
        self.gatekeeper = Gatekeeper(ctx, self.sock, security)
        self.frame_threshold = frame_threshold
        self.dropped = RateLimitedLog(log)  # malformed messages, by reason
        try:
            if port == 0:
                self.port = self.sock.bind_to_random_port(f"tcp://{host}")
            else:
                self.sock.bind(tcp_endpoint(host, port))
                self.port = port
        except zmq.ZMQError:
            self.gatekeeper.close()
            self.sock.close(linger=0)
            raise
        self.gatekeeper.port = self.port
        self.local: LocalServerSocket | None = None
        if sys.platform.startswith("linux"):
            # local peers (connect_endpoint) always dial this name, so it must be ours: a
            # failure here means another head owns it, and starting anyway would send our
            # local peers to that other cluster
            name = local_endpoint(self.port).split(":", 1)[1]
            try:
                self.local = LocalServerSocket(name, frame_threshold, max_message=max_message_bytes,
                                               report_malformed=True)
            except OSError as exc:
                self.gatekeeper.close()
                self.sock.close(linger=0)
                raise OSError(f"the local socket @{name} is taken ({exc}): is another taskmesh "
                              f"head using port {self.port}?") from None

    @property
    def bad_messages(self) -> int:
        """Malformed messages dropped, on both sides."""
        return self.dropped.total + (self.local.bad_messages if self.local is not None else 0)

    def attach(self, poller: "Poller") -> None:
        """Register everything this server needs to be woken for."""
        poller.register(self.sock)
        if self.local is not None:
            self.local.attach(poller)

    def receive(self, ready: dict, limit: int, bulk: bool = True,
                priority: Any = ()) -> list[tuple[bytes, Any]]:
        """Messages that are ready now: local ones (at most ``LOCAL_READ_CHUNKS`` chunks per
        connection), then up to ``limit`` from ZeroMQ.

        With ``bulk`` False the reader is busy: only local peers in ``priority`` (node agents:
        their heartbeats) are read; everyone else's messages wait in their socket buffers and
        ZeroMQ queues (whose high-water mark then stops reading their TCP connections)."""
        out: list[tuple[bytes, Any]] = []
        if self.local is not None and ready:
            out.extend(self.local.receive(ready, LOCAL_READ_CHUNKS,
                                          None if bulk else priority))
        if bulk and limit > 0 and (self.sock in ready
                                   or self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN):
            out.extend(self._recv_zmq(limit))
        return out

    def closed_peers(self) -> list[bytes]:
        """Local peers whose connection ended since the last call (the process is gone)."""
        return self.local.closed_peers() if self.local is not None else []

    def more_waiting(self) -> bool:
        return bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def _recv_zmq(self, limit: int) -> Iterator[tuple[bytes, Any]]:
        sock = self.sock
        for _ in range(limit):
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # cheaper than raising Again
                return
            try:
                frames = _recv_frames(sock, 2)
            except zmq.Again:
                return
            if len(frames) < 2:
                self.dropped.event("empty", "dropped an empty message")
                continue
            peer = frames[0]
            try:
                msg = decode(frames[1:])
            except ProtocolError as exc:
                self.dropped.event("malformed", "dropped a malformed message from peer %r: %s",
                                   peer[:16], exc)
                msg = malformed(frames[1:], exc)  # the head answers with Rejected
            yield peer, msg

    def send(self, peer: bytes, msg: Any) -> bool:
        """Send; return False if the peer is gone (the message is dropped and logged)."""
        frames = encode(msg, self.frame_threshold)
        local = self.local
        if local is not None and local.send_frames(peer, frames):
            return True
        try:
            self.sock.send_multipart([peer, *frames], copy=len(frames) == 1)
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                log.debug("peer %r is gone; dropped %s", peer, type(msg).__name__)
                return False
            raise

    def flush_all(self, timeout_s: float) -> None:
        """Before exiting: try to deliver what is still queued for local peers."""
        if self.local is not None:
            self.local.flush_all(timeout_s)

    def close(self, linger_ms: int = 0) -> None:
        if self.local is not None:
            self.local.flush_all(linger_ms / 1000)
            self.local.close()
        self.gatekeeper.close()
        self.sock.close(linger=linger_ms)


def _decode_from_head(sock: Any, frames: list) -> Any | None:
    """Decode a message from the head; count, log and drop (None) a malformed one."""
    try:
        return decode(frames)
    except ProtocolError as exc:
        sock.bad_messages += 1
        log.warning("dropped a malformed message from the head: %s", exc)
        return None


class ClientSocket:
    """A DEALER connected to the head over TCP (the head is on another machine).

    ZeroMQ queues at most CLIENT_SNDHWM messages for the head; beyond, messages wait here, in
    order, until it takes them (``flush``, when the socket polls writable), so a client can
    see how far the head is behind (``queued_bytes``), as over the local socket."""

    def __init__(self, ctx: zmq.Context, endpoint: str, identity: bytes, frame_threshold: int,
                 security: Security) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        _tune(self.sock)
        self.sock.setsockopt(zmq.SNDHWM, CLIENT_SNDHWM)
        self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        secure_client(self.sock, security)
        self._watch = HandshakeWatch(self.sock, security)
        self.frame_threshold = frame_threshold
        self.endpoint = endpoint
        self.sock.connect(endpoint)
        self.bad_messages = 0
        self.poll_target: Any = self.sock
        self.peer_closed = False  # TCP peers never tell; heartbeats do
        self._backlog: collections.deque = collections.deque()  # frames ZeroMQ did not take
        self.queued_bytes = 0

    @property
    def wants_write(self) -> bool:
        return bool(self._backlog)

    def send(self, msg: Any) -> None:
        frames = encode(msg, self.frame_threshold)
        if self._backlog or not self._send_now(frames):
            self._backlog.append(frames)
            self.queued_bytes += sum(map(_buflen_any, frames))

    def _send_now(self, frames: list) -> bool:
        try:  # (all parts of a message are taken, or none: the high-water mark is atomic)
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=len(frames) == 1)
        except zmq.Again:
            return False
        return True

    def flush(self) -> None:
        """Hand ZeroMQ what waits here, as far as it takes it now."""
        backlog = self._backlog
        while backlog and self._send_now(backlog[0]):
            self.queued_bytes -= sum(map(_buflen_any, backlog.popleft()))

    def has_input(self) -> bool:
        return bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def recv_nowait(self) -> Any | None:
        """One decoded message, or None if nothing is waiting. Malformed ones are dropped."""
        while True:
            if not self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return None
            try:
                frames = _recv_frames(self.sock, 1)
            except zmq.Again:
                return None
            msg = _decode_from_head(self, frames)
            if msg is not None:
                return msg

    def refusal(self) -> str | None:
        """Why the head refused this connection's handshake (wrong secret, ...), or None."""
        return self._watch.check()

    def close(self, linger_ms: int = 0) -> None:
        if linger_ms and self._backlog:  # what waits here gets the same grace as ZeroMQ's
            deadline = time.monotonic() + linger_ms / 1000
            while self._backlog and time.monotonic() < deadline:
                self.flush()
                if self._backlog:
                    self.sock.poll(10, zmq.POLLOUT)
        self._watch.close()
        self.sock.close(linger=linger_ms)


class LocalClientSocket:
    """The same interface as ClientSocket, over the head's local unix socket."""

    def __init__(self, endpoint: str, identity: bytes, frame_threshold: int, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.frame_threshold = frame_threshold
        self.client = LocalClient(endpoint.split(":", 1)[1], identity, timeout_s)
        self.poll_target: Any = self.client.fd
        self.bad_messages = 0

    @property
    def peer_closed(self) -> bool:
        """The head closed the connection: it exited."""
        return self.client.eof

    def send(self, msg: Any) -> None:
        try:
            self.client.send_frames(encode(msg, self.frame_threshold))
        except ConnectionError:
            pass  # the head is gone; peer_closed says so to whoever waits

    @property
    def queued_bytes(self) -> int:
        """Bytes sent but not yet taken by the kernel."""
        return self.client.queued_bytes

    def has_input(self) -> bool:
        if self.client.has_buffered():
            return True
        return bool(select.select([self.client.fd], [], [], 0)[0])

    def recv_nowait(self) -> Any | None:
        while True:
            frames = self.client.recv_frames()
            if frames is None:
                return None
            msg = _decode_from_head(self, frames)
            if msg is not None:
                return msg

    @property
    def wants_write(self) -> bool:
        return self.client.wants_write

    def refusal(self) -> str | None:
        return None  # the local socket admits processes of our user: no secret involved

    def flush(self) -> None:
        self.client.flush()

    def close(self, linger_ms: int = 0) -> None:
        if linger_ms:
            self.client.flush_blocking(linger_ms / 1000)
        self.client.close()


def open_client(ctx: zmq.Context, endpoint: str, identity: bytes, frame_threshold: int,
                timeout_s: float, security: Security) -> ClientSocket | LocalClientSocket:
    """Connect to the head at ``endpoint`` (from connect_endpoint); raise ConnectionError."""
    if endpoint.startswith("local:"):
        return LocalClientSocket(endpoint, identity, frame_threshold, timeout_s)
    return ClientSocket(ctx, endpoint, identity, frame_threshold, security)


class Poller:
    """Wait on ZeroMQ sockets, our sockets and plain file descriptors together."""

    def __init__(self) -> None:
        self._p = zmq.Poller()

    @staticmethod
    def _target(obj: Any) -> Any:
        if isinstance(obj, ServerSocket):
            return obj.sock
        return getattr(obj, "poll_target", obj)

    def register(self, obj: Any, flags: int = zmq.POLLIN) -> None:
        self._p.register(self._target(obj), flags)

    def unregister(self, obj: Any) -> None:
        self._p.unregister(self._target(obj))

    def poll(self, timeout_ms: float | None) -> dict:
        """Ready objects (ZeroMQ sockets or fds) -> their event mask."""
        return dict(self._p.poll(None if timeout_ms is None else int(timeout_ms)))


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on the port. Connections of a process that died linger in
    TIME_WAIT for a minute; they do not stop ZeroMQ (which binds with SO_REUSEADDR) from
    listening again, so they must not make the port look taken either."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the embedded cluster's head binds it at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def local_ip_towards(host: str) -> str:
    """This machine's address on the route to ``host`` (works with no default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"  # the state follows "(comm) "
