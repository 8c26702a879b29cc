"""ZeroMQ sockets for taskmesh: the only module that imports zmq.

The head binds one ROUTER socket; drivers, node agents and workers each connect one DEALER to
it. Messages are encoded and decoded here (via _protocol), so every received message passes one
place where it is checked (and, with the security issue, authenticated) before anyone acts on it.
High-water marks are off: taskmesh never silently drops a message; backpressure is the
scheduler's job.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, Iterator

import zmq

from ._protocol import ProtocolError, decode, encode

log = logging.getLogger(__name__)

Again = zmq.Again
ZMQError = zmq.ZMQError
POLLIN = zmq.POLLIN


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
    """The head's Linux abstract unix socket: no file to clean up, private to this network
    namespace, and several times faster than TCP loopback for small messages."""
    return f"ipc://@taskmesh-head-{port}"


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


class ServerSocket:
    """The head's ROUTER socket: receive (peer, message), send message to peer."""

    def __init__(self, ctx: zmq.Context, host: str, port: int, frame_threshold: int) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        _tune(self.sock)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.frame_threshold = frame_threshold
        if port == 0:
            self.port = self.sock.bind_to_random_port(f"tcp://{host}")
        else:
            self.sock.bind(tcp_endpoint(host, port))
            self.port = port
        self.local_endpoint = None
        if sys.platform.startswith("linux"):
            # local peers (connect_endpoint) always dial this name, so it must be ours: a
            # failure here means another head owns it, and starting anyway would send our
            # local peers to that other cluster
            try:
                self.sock.bind(local_endpoint(self.port))
            except zmq.ZMQError as exc:
                self.sock.close(linger=0)
                raise OSError(f"the local socket {local_endpoint(self.port)} is taken ({exc}): "
                              f"is another taskmesh head using port {self.port}?") from None
            self.local_endpoint = local_endpoint(self.port)
        self.bad_messages = 0

    def recv_batch(self, limit: int) -> Iterator[tuple[bytes, Any]]:
        """Yield up to ``limit`` decoded (peer, message) pairs that are ready now."""
        sock = self.sock
        for _ in range(limit):
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # cheaper than raising Again
                return
            try:
                frames = _recv_frames(sock, 2)
            except zmq.Again:
                return
            if len(frames) < 2:
                self.bad_messages += 1
                continue
            peer = frames[0]
            try:
                msg = decode(frames[1:])
            except ProtocolError as exc:
                self.bad_messages += 1
                log.warning("dropped a malformed message from peer %r: %s", peer[:16], exc)
                continue
            yield peer, msg

    def send(self, peer: bytes, msg: Any) -> bool:
        """Send; return False if the peer is gone (the message is dropped and logged)."""
        frames = encode(msg, self.frame_threshold)
        try:
            self.sock.send_multipart([peer, *frames], copy=len(frames) == 1)
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                log.debug("peer %r is gone; dropped %s", peer, type(msg).__name__)
                return False
            raise

    def close(self, linger_ms: int = 0) -> None:
        self.sock.close(linger=linger_ms)


class ClientSocket:
    """A DEALER connected to the head."""

    def __init__(self, ctx: zmq.Context, endpoint: str, identity: bytes, frame_threshold: int) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        _tune(self.sock)
        self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.frame_threshold = frame_threshold
        self.endpoint = endpoint
        self.sock.connect(endpoint)
        self.bad_messages = 0

    def send(self, msg: Any) -> None:
        frames = encode(msg, self.frame_threshold)
        self.sock.send_multipart(frames, copy=len(frames) == 1)

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
            try:
                return decode(frames)
            except ProtocolError as exc:
                self.bad_messages += 1
                log.warning("dropped a malformed message from the head: %s", exc)

    def poll(self, timeout_ms: int | None) -> bool:
        return bool(self.sock.poll(timeout_ms, zmq.POLLIN))

    def close(self, linger_ms: int = 0) -> None:
        self.sock.close(linger=linger_ms)


class Poller:
    """Wait on sockets and plain file descriptors together."""

    def __init__(self) -> None:
        self._p = zmq.Poller()

    def register(self, obj: Any) -> None:
        target = obj.sock if isinstance(obj, (ServerSocket, ClientSocket)) else obj
        self._p.register(target, zmq.POLLIN)

    def unregister(self, obj: Any) -> None:
        target = obj.sock if isinstance(obj, (ServerSocket, ClientSocket)) else obj
        self._p.unregister(target)

    def poll(self, timeout_ms: float | None) -> set:
        """Return the set of ready objects: sockets (as zmq sockets) or fds."""
        return {s for s, _ in self._p.poll(None if timeout_ms is None else int(timeout_ms))}


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
