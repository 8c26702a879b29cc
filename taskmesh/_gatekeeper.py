"""Who may talk to the head over TCP: ZeroMQ security options from the cluster key, and the
head's gatekeeper thread that admits or refuses each connection.

    peer ──TCP──▶ head ROUTER ──CurveZMQ handshake──▶ ZAP request ──▶ Gatekeeper thread
                      │  (head key pair from the secret;        client key == the one derived
                      │   a peer without it fails here)         from the secret? 200 : 400
                      └──socket monitor: accepted fd, handshake failed, disconnected──▶ Gatekeeper:
                                                     logs "refused a connection from ADDR: why"

With encryption on (the default) the head's ROUTER is a CurveZMQ server whose key pair is
derived from the cluster secret, so a peer must know the secret to even build the handshake
(peers pin the head's public key: a fake head cannot talk to them either), and the one client
key pair derived from the secret is the only one the gatekeeper admits. With ``encrypt=False``
the PLAIN mechanism carries a token derived from the secret (not the secret itself), checked
the same way; nothing is encrypted, so a listener on the network could learn the token.

ZeroMQ finishes a refused handshake without handing a single message to the application, so
a peer that does not hold the secret never has a byte of its decoded, let alone unpickled.
This module and ``_transport.py`` are the only ones that import zmq.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import threading
from typing import Any

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from ._ratelimit import RateLimitedLog
from ._secret import Security

log = logging.getLogger("taskmesh.security")

ZAP_DOMAIN = b"taskmesh"
_PLAIN_USER = b"taskmesh"
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"


def _curve_pair(seed: bytes) -> tuple[bytes, bytes]:
    """(public, secret) z85 CurveZMQ keys from 32 secret bytes."""
    secret = z85.encode(seed)
    return zmq.curve_public(secret), secret


def head_keys(security: Security) -> tuple[bytes, bytes]:
    return _curve_pair(security.key.derive("curve head"))


def peer_keys(security: Security) -> tuple[bytes, bytes]:
    return _curve_pair(security.key.derive("curve peer"))


def plain_token(security: Security) -> bytes:
    return security.key.derive("plain token").hex().encode()


def secure_server(sock: zmq.Socket, security: Security) -> None:
    """Make a listening socket demand the cluster's credentials (see the module docstring)."""
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    if security.encrypt:
        public, secret = head_keys(security)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    else:
        sock.setsockopt(zmq.PLAIN_SERVER, 1)


def secure_client(sock: zmq.Socket, security: Security) -> None:
    """Give a connecting socket the cluster's credentials (before connect)."""
    if security.encrypt:
        head_public, _ = head_keys(security)
        public, secret = peer_keys(security)
        sock.setsockopt(zmq.CURVE_SERVERKEY, head_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    else:
        sock.setsockopt(zmq.PLAIN_USERNAME, _PLAIN_USER)
        sock.setsockopt(zmq.PLAIN_PASSWORD, plain_token(security))


_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)


def _protocol_failure(value: int, server: bool) -> str:
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return ("encryption is on at one end and off at the other (or it is not a taskmesh "
                "peer); set encrypt the same everywhere")
    if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return ("it does not hold this cluster's secret" if server else
                "this process and the head hold different cluster secrets")
    return f"the handshake broke the ZeroMQ protocol (error {value:#x})"


class Gatekeeper:
    """The head's ZAP handler and handshake monitor, in a thread of its own (a long batch in
    the head's loop must not stall handshakes). ``refused`` counts refusals by reason."""

    def __init__(self, ctx: zmq.Context, server: zmq.Socket, security: Security) -> None:
        self.security = security
        self.refused = RateLimitedLog(log)
        self._expected_key = z85.decode(peer_keys(security)[0])
        self._token = plain_token(security)
        self._zap = ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(_ZAP_ENDPOINT)
        events = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | _HANDSHAKE_EVENTS
        self._server = server
        self._monitor = server.get_monitor_socket(events, addr=f"inproc://taskmesh-gate-{id(self)}")
        self._accepted: dict[int, str] = {}  # fd -> peer address, until it disconnects
        self._failed: str | None = None  # why the handshake just failed (its fd closes next)
        #: the listening port (set by the owner after binding), to find refused peers' addresses
        self.port = 0
        self._closed_seen: set[str] = set()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="taskmesh-gatekeeper", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._zap, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(self._stop_r, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._stop_r in ready:
                    return
                if self._zap in ready:
                    self._answer(self._zap.recv_multipart())
                if self._monitor in ready:
                    event = recv_monitor_message(self._monitor)
                    try:
                        self._watch(event)
                    except Exception:  # a monitor event only names peers in log lines
                        log.exception("the gatekeeper could not read a connection event %r", event)
        except zmq.ContextTerminated:
            return
        except Exception:  # never let a bug stop admitting peers silently
            log.exception("the gatekeeper thread failed; new connections to the head will hang")
        finally:
            self._zap.close(linger=0)
            self._monitor.close(linger=0)

    def _answer(self, frames: list[bytes]) -> None:
        """One ZAP request (RFC 27): version, request id, domain, address, identity,
        mechanism, credentials..."""
        if len(frames) < 6:
            return  # not from libzmq; there is no one to answer
        request_id, domain, address, mechanism = frames[1], frames[2], frames[3], frames[5]
        creds = frames[6:]
        ok = False
        if domain == ZAP_DOMAIN:
            if mechanism == b"CURVE" and len(creds) == 1:
                ok = hmac.compare_digest(creds[0], self._expected_key)
            elif mechanism == b"PLAIN" and len(creds) == 2:
                ok = creds[0] == _PLAIN_USER and hmac.compare_digest(creds[1], self._token)
        if ok:
            self._zap.send_multipart([b"1.0", request_id, b"200", b"OK", b"peer", b""])
            return
        why = "it does not hold this cluster's secret"
        self.refused.event("wrong secret", "refused a connection from %s: %s (%s)",
                           address.decode(errors="replace"), why, mechanism.decode(errors="replace"))
        self._zap.send_multipart([b"1.0", request_id, b"400", why.encode(), b"", b""])

    def _watch(self, event: dict[str, Any]) -> None:
        kind, value = event["event"], event["value"]
        if kind == zmq.EVENT_ACCEPTED:
            address = _peer_address(value)
            if address is not None:
                self._accepted[value] = address
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self._failed = _protocol_failure(value, server=True)
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._failed = "the handshake failed"
        elif kind == zmq.EVENT_DISCONNECTED:
            address = self._accepted.pop(value, None)
            if self._failed is not None:  # the connection whose handshake just failed
                why, self._failed = self._failed, None
                if address is None:  # it closed before we could look: ask the kernel
                    address = self._recently_closed()
                self.refused.event(why, "refused a connection from %s: %s", address, why)

    def _recently_closed(self) -> str:
        """The peers of connections to our port that the head closed since the last look.
        ZeroMQ tells a monitor which fd it accepted, not from where, and a refused handshake
        can be over before this thread sees the fd; the kernel keeps the closed connection
        (TIME_WAIT, as the head closed it) with its peer's address for a minute."""
        now = _closing_connections(self.port)
        new = sorted(now - self._closed_seen)
        self._closed_seen = now
        if not new:
            return "an unknown address"
        hosts = sorted({a.rsplit(":", 1)[0] for a in new})
        return new[0] if len(new) == 1 else "one of " + ", ".join(hosts)

    # ------------------------------------------------------------------ the owner's side

    def close(self) -> None:
        """Stop the thread (before the context is terminated)."""
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        self._thread.join(5.0)
        try:
            self._server.disable_monitor()
        except zmq.ZMQError:
            pass
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)


def _peer_address(fd: int) -> str | None:
    """host:port of the peer on an accepted connection's fd (libzmq's: only looked at)."""
    try:
        dup = os.dup(fd)
    except OSError:  # libzmq closed it already
        return None
    try:
        s = socket.socket(fileno=dup)  # the family is read off the fd
    except OSError:  # no longer a socket
        os.close(dup)
        return None
    with s:
        # By now libzmq may have closed the fd and the number been reused by another kind
        # of socket (a Unix socket): then there is no host and port to report.
        if s.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        try:
            host, port = s.getpeername()[:2]
        except OSError:
            return None
    return f"{host}:{port}"


#: TCP states of a connection this side closed first: FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSING
_CLOSED_BY_US = {"04", "05", "06", "0B"}


def _closing_connections(port: int) -> set[str]:
    """"ip:port" of peers of IPv4 connections to local ``port`` that this side closed
    (Linux's /proc/net/tcp of our network namespace; empty elsewhere)."""
    out: set[str] = set()
    if not port:
        return out
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                local, remote, state = parts[1], parts[2], parts[3]
                if state not in _CLOSED_BY_US or int(local.split(":")[1], 16) != port:
                    continue
                ip_hex, port_hex = remote.split(":")
                ip = socket.inet_ntoa(int(ip_hex, 16).to_bytes(4, "little"))
                out.add(f"{ip}:{int(port_hex, 16)}")
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return out


class HandshakeWatch:
    """A connecting socket's handshake outcome, for a clear error when the head refuses us."""

    def __init__(self, sock: zmq.Socket, security: Security) -> None:
        self.security = security
        self._sock = sock
        self._monitor: zmq.Socket | None = sock.get_monitor_socket(
            _HANDSHAKE_EVENTS, addr=f"inproc://taskmesh-handshake-{id(self)}")
        self.failure: str | None = None
        self.succeeded = False

    def check(self) -> str | None:
        """Read what happened so far; the reason the head refused us, or None."""
        mon = self._monitor
        while mon is not None and mon.poll(0):
            event = recv_monitor_message(mon)
            kind, value = event["event"], event["value"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.failure, self.succeeded = None, True
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.failure = "the head does not accept this process's cluster secret"
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self.failure = _protocol_failure(value, server=False)
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # a CurveZMQ head cannot read a handshake made with another secret's keys, or
                # a PLAIN one (encryption off here): it just hangs up
                self.failure = ("the head broke off the handshake: this process and the head "
                                "hold different cluster secrets" if self.security.encrypt else
                                "the head broke off the handshake: encryption is on at one end "
                                "and off at the other; set encrypt the same everywhere")
        if self.failure is None:
            return None
        key = self.security.key
        return (f"{self.failure} (this process uses the secret {key.fingerprint} from "
                f"{key.source}, encryption {'on' if self.security.encrypt else 'off'})")

    def close(self) -> None:
        if self._monitor is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)
            self._monitor = None
