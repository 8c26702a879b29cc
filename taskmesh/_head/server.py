"""The head process: one ROUTER socket and a loop that feeds HeadState and flushes its outbox.

    peers ──▶ ROUTER ──decode──▶ HeadState.handle() ... schedule() ──outbox──▶ ROUTER ──▶ peers

Each wake-up drains every message already waiting (up to a cap), applies them, schedules once
and sends one batched message per peer and type: under load, batches grow by themselves;
when idle, a lone message goes out at once. Timers (heartbeat deadlines) run between batches.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from .. import _protocol as P
from .._daemon import report_ready
from .._spin import Spinner
from .._transport import Poller, ServerSocket, new_context
from .._secret import Security, load_security
from ..config import Config
from ..errors import SecretError
from .state import HeadState

log = logging.getLogger("taskmesh.head")

_DRAIN_LIMIT = 2000
_TICK_S = 0.1


class HeadServer:
    """The head's I/O shell."""

    def __init__(self, config: Config, host: str, port: int, security: Security) -> None:
        self.config = config
        self.security = security
        self.ctx = new_context()
        try:
            self.sock = ServerSocket(self.ctx, host, port, config.frame_threshold_bytes, security,
                                     config.max_message_bytes)
        except BaseException:
            self.ctx.term()
            raise
        self.host = host
        self.port = self.sock.port
        self.state = HeadState(config, time.monotonic())
        self.state.transport = self._transport_counts
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._stop_w, False)

    def request_stop(self) -> None:
        """Async-signal-safe: wake the loop and make it exit."""
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    def serve(self, lifeline_fd: int | None = None) -> None:
        poller = Poller()
        self.sock.attach(poller)
        poller.register(self._stop_r)
        if lifeline_fd is not None:
            poller.register(lifeline_fd)
        state = self.state
        sock = self.sock
        next_tick = time.monotonic() + _TICK_S
        reason = "stopped"
        spinner = Spinner(self.config.spin_s)
        while True:
            timeout = max(0.0, next_tick - time.monotonic()) * 1000
            box: list = []
            if spinner.spin(lambda: bool(box.append(poller.poll(0)) or box[-1])):
                ready = box[-1]
            else:
                ready = poller.poll(timeout)
            spinner.woke()  # a timeout counts too: a long gap stops the spinning
            if self._stop_r in ready:
                break
            if lifeline_fd is not None and lifeline_fd in ready:
                if not os.read(lifeline_fd, 64):
                    reason = "the driver that started this embedded cluster exited"
                    break
            while True:
                batch = sock.receive(ready, _DRAIN_LIMIT)
                ready = {}
                clock = time.monotonic
                for peer, msg in batch:
                    try:  # the time of each message: one may take long (a Release of a
                        # million refs), and a heartbeat after it must not look late
                        state.handle(peer, msg, clock())
                    except Exception:  # a bug must not take the head down; say so loudly
                        # (and count it with the dropped messages: `taskmesh status` shows them)
                        counts = state.dropped.counts
                        counts["internal error"] = counts.get("internal error", 0) + 1
                        log.exception("error while handling %s from %r", type(msg).__name__, peer)
                closed = sock.closed_peers()
                for peer in closed:
                    self._guarded(state.disconnected, peer)
                if not batch and not closed:
                    break
                self._guarded(state.schedule)
                self._flush()
                if len(batch) < _DRAIN_LIMIT and not sock.more_waiting():
                    break
            now = time.monotonic()
            if now >= next_tick:
                self._guarded(state.tick, now)
                self._guarded(state.schedule)
                self._flush()
                next_tick = now + _TICK_S
        self._shutdown(reason)

    def _transport_counts(self) -> dict:
        sock = self.sock
        return {"encrypted": self.security.encrypt,
                "secret": self.security.key.fingerprint,
                "refused_connections": sock.gatekeeper.refused.total
                + (sock.local.server.refused if sock.local is not None else 0),
                "malformed_messages": sock.bad_messages}

    def _guarded(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            fn(*args)
        except Exception:  # a bug must not take the whole cluster down; log it loudly
            log.exception("internal error in %s", getattr(fn, "__name__", fn))

    def _flush(self) -> None:
        send = self.sock.send
        for peer, msg in self.state.out.drain():
            send(peer, msg)

    def _shutdown(self, reason: str) -> None:
        log.info("head shutting down: %s", reason)
        for node in self.state.nodes.values():
            if node.alive:
                self.sock.send(node.peer, P.Shutdown(f"the head at {self.host}:{self.port} {reason}"))
        # give ZeroMQ a moment to put the Shutdown messages on the wire
        self.sock.close(linger_ms=500)
        self.ctx.term()


def run_head(config: Config, host: str, port: int, ready_fd: int | None, lifeline_fd: int | None) -> int:
    """Bind, report readiness on ``ready_fd``, serve until stopped. Return an exit code."""
    try:
        security = load_security(config)
    except SecretError as exc:
        report_ready(ready_fd, f"ERROR {exc}")
        log.error("%s", exc)
        return 1
    try:
        server = HeadServer(config, host, port, security)
    except Exception as exc:
        msg = _bind_error(host, port, exc)
        report_ready(ready_fd, f"ERROR {msg}")
        log.error("%s", msg)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    signal.signal(signal.SIGINT, lambda *_: server.request_stop())
    report_ready(ready_fd, f"READY {server.port}")
    log.info("taskmesh head listening on %s:%d (pid %d), cluster secret %s from %s, encryption %s",
             host, server.port, os.getpid(), security.key.fingerprint, security.key.source,
             "on" if security.encrypt else "OFF")
    if not security.encrypt:
        log.warning("encryption is off (encrypt=False): connections are still authenticated, but "
                    "anyone on the network can read the tasks, results and objects sent between "
                    "machines, and learn the token that admits a peer")
    server.serve(lifeline_fd)
    return 0


def _bind_error(host: str, port: int, exc: Exception) -> str:
    text = str(exc)
    if "local socket" in text:
        return text
    if "Address already in use" in text:
        return f"port {port} on {host} is already in use (another taskmesh head? try `taskmesh stop`, or --port)"
    if "Cannot assign requested address" in text or "No such device" in text:
        return f"cannot listen on {host}:{port}: {host} is not an address of this machine"
    return f"cannot listen on {host}:{port}: {text}"
