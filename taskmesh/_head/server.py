"""The head process: its sockets and a loop that feeds HeadState in bounded slices.

    peers ──▶ ROUTER / local socket ──decode──▶ Intake ──liveness first──▶ HeadState.handle_turn()
                                                       └─bulk, ≤ SLICE_S per turn─┘   │
              peers ◀── ROUTER / local socket ◀── Send commands (Log: logging) ◀─────┘
              tick() every 0.1 s, run_chores() between messages: commands the same way
              after_turn() once a turn's commands are sent; catch_up() (the state view) when idle
              at a tick, if metrics were read lately: Snapshotter ──▶ SnapshotBox ──▶ HTTP threads

Each turn reads what the sockets hold (a slice of each local connection; nothing more but node
agents' heartbeats while a backlog of ``MAX_BACKLOG`` messages waits), handles heartbeats and
pings at once, handles bulk messages for at most ``SLICE_S`` (the state schedules once per
batch), and carries out the commands it returns: one batched message per peer and type, and
the log lines. Under load, batches grow by themselves; when idle, a
lone message goes out at once. So a flood of submissions slows down (it waits in its
sender's queue and socket buffer) but never keeps the head from its timers, its heartbeats
or its answers. The loop's lag, how long the oldest message of a turn waited between being
read and being handled, goes into a histogram (``taskmesh status``).

The HTTP endpoints (``/metrics``, the dashboard; ``_dashboard/server.py``) run in threads of
their own and never touch ``HeadState``: the dashboard's pages ask this head over its own
local socket, as a ``status`` client, and are answered between turns like any other; at a
tick, the loop folds new events into the metrics' histograms (every ``FOLD_S``, only while
someone read them in the last ``ACTIVE_S``) and, when a reader asks, builds a snapshot and
hands it over. Nothing of it runs per message or per task.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from .. import _protocol as P
from .._daemon import add_log_file, report_ready
from .._logfiles import LogDirectory
from .._dashboard.auth import token_for
from .._dashboard.server import ACTIVE_S, DashboardServer, SnapshotBox
from .._dashboard.source import HeadSource
from .._ratelimit import RateLimitedLog
from .._spin import Spinner
from .._transport import Poller, ServerSocket, local_endpoint, new_context, tcp_endpoint
from .._secret import Security, load_security
from ..config import Config
from ..errors import SecretError
from .collector import Collector
from .commands import InternalError, Log, Send
from .intake import Intake, LagHistogram
from .logrelay import HEAD_SELF
from .snapshot import FOLD_S, MAX_AGE_S, Snapshotter
from .state import HeadState

log = logging.getLogger("taskmesh.head")

#: most messages read from ZeroMQ in one call
_DRAIN_LIMIT = 2000
_TICK_S = 0.1
#: bulk messages are handled for at most this long per turn, then the loop reads, sends and
#: runs its timers again
SLICE_S = 0.02
#: what the state view may take of an idle turn (a message that comes meanwhile waits
#: about this long, or one batch of events, ~0.1 ms, if that is longer)
VIEW_SLICE_S = 0.0002
#: no more bulk is read while this many messages wait to be handled (about 30-60 ms of work)
MAX_BACKLOG = 2000
#: a tick this much later than due counts as a stall of the head itself (see HeadState.tick)
_STALL_S = 0.25
#: a snapshot is reused for this many times as long as it took to build (at least MAX_AGE_S)
SNAPSHOT_SHARE = 20


class HeadServer:
    """The head's I/O shell."""

    def __init__(self, config: Config, host: str, port: int, security: Security,
                 dashboard_host: str = "127.0.0.1", dashboard_port: int = 0) -> None:
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
        self.intake = Intake(MAX_BACKLOG)
        self.lag = LagHistogram()  # the loop's lag per turn (see the module docstring)
        self.collector = Collector(time.monotonic())
        #: the head's own log directory (head.log), which it answers log queries about
        self.logs = LogDirectory(config.node_log_dir(f"head-{self.port}"))
        # metrics: snapshots built by this loop, served by the dashboard's threads
        self.snapshots = Snapshotter()
        self.box = SnapshotBox(MAX_AGE_S)
        self._next_fold = 0.0
        self._snapshot_errors = RateLimitedLog(log)
        try:
            # the pages ask this head as a client would, over its own local socket
            own = (local_endpoint(self.port) if self.sock.local is not None else
                   tcp_endpoint(host if host not in ("", "0.0.0.0", "::") else "127.0.0.1",
                                self.port))
            source = HeadSource.for_head(config, own, f"{host}:{self.port}", security)
            self.dashboard = DashboardServer(dashboard_host, dashboard_port,
                                             token_for(security.key), self.box, source)
        except BaseException as exc:
            self.sock.close(linger_ms=0)
            self.ctx.term()
            if isinstance(exc, OSError):
                raise _DashboardBindError(str(exc)) from exc
            raise
        #: what InfoRequest("dashboard") answers
        self.dashboard_info = {"host": dashboard_host, "port": self.dashboard.port}
        self.state.shell = {"dashboard": self.dashboard_info}
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
        intake = self.intake
        next_tick = time.monotonic() + _TICK_S
        reason = "stopped"
        spinner = Spinner(self.config.spin_s)
        collector = self.collector
        collector.start()
        wanted = self.box  # (read at each tick: has someone asked for metrics lately?)
        self.dashboard.start()
        idle_since: float | None = None  # since when no message came (None: busy)
        last_tick = time.monotonic()
        while True:
            if intake or state.chores or state.view_behind:  # work waits: do not sleep
                ready = poller.poll(0)
            else:
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
            self._read(ready)
            if intake.liveness or intake.bulk:
                deadline = time.monotonic() + SLICE_S
                if intake.bulk:  # how long this turn's oldest message waited
                    self.lag.add(time.monotonic() - intake.bulk[0][2])
                self._carry_out(state.handle_turn(intake.liveness, intake.bulk, deadline,
                                                  time.monotonic))
                if state.chores and time.monotonic() < deadline:
                    self._carry_out(state.run_chores(deadline, time.monotonic))
                idle_since = None
            elif state.chores:
                self._carry_out(state.run_chores(time.monotonic() + SLICE_S, time.monotonic))
                idle_since = None
            elif state.view_behind:  # no message waits: the state view's turn, briefly
                self._carry_out(state.catch_up(time.monotonic() + VIEW_SLICE_S, time.monotonic))
            elif idle_since is None:
                idle_since = time.monotonic()
            self._carry_out(state.after_turn())  # (the events of what was just sent)
            now = time.monotonic()
            if now >= next_tick:
                # a tick far later than due means this process did not run (stopped, starved,
                # a long collection): that time is not the peers' silence
                stalled = now - last_tick - _TICK_S
                self._carry_out(state.tick(now, stalled if stalled > _STALL_S else 0.0,
                                           {"transport": self._transport_counts(),
                                            "loop_lag": self.lag.summary(),
                                            "dashboard": self.dashboard_info}))
                last_tick = now
                if wanted.wanted or now - wanted.last_asked < ACTIVE_S:  # metrics are being read
                    self._metrics(now)
                if collector.due(now, idle_since):
                    collector.collect()  # (the tick after it forgives the pause: state.tick)
                next_tick = time.monotonic() + _TICK_S
        self._shutdown(reason)

    def _metrics(self, now: float) -> None:
        """Fold the new events into the metrics (every FOLD_S) and build the snapshot a
        reader waits for; a bug here is logged, never raised into the loop."""
        try:
            if now >= self._next_fold:
                # the first fold after a quiet spell: what left the ring meanwhile was not missed
                self.snapshots.fold(self.state, count_missed=now - self._next_fold < ACTIVE_S)
                self._next_fold = now + FOLD_S
            if self.box.wanted:
                started = time.perf_counter()
                # the state API's view, where the head has one, counts tasks by function and
                # state ({name: {state: n}}, its summary()); the metrics show them if so
                by_function = (self.state.task_summary()
                               if getattr(self.state, "view", None) is not None else None)
                self.box.publish(self.snapshots.build(self.state, now, by_function))
                # a snapshot counts every unfinished task (25 ms per 100,000): however often
                # the head is scraped, snapshots take at most 1/SNAPSHOT_SHARE of its time
                self.box.max_age_s = max(MAX_AGE_S, (time.perf_counter() - started) * SNAPSHOT_SHARE)
        except Exception:  # noqa: BLE001 - a reader gets the last snapshot (or a 503)
            self.box.wanted = False
            self._snapshot_errors.event("snapshot", "could not build the metrics snapshot",
                                        level=logging.ERROR)
            log.debug("the snapshot's error", exc_info=True)

    def _read(self, ready: dict) -> None:
        """Take in what the sockets hold: everything while the backlog is short; only node
        agents (their heartbeats) while it is long."""
        intake = self.intake
        bulk = intake.wants_more
        limit = max(0, min(_DRAIN_LIMIT, intake.max_backlog - len(intake.bulk)))
        msgs = self.sock.receive(ready, limit, bulk, self.state.members.node_by_peer)
        now = time.monotonic()
        add = intake.add
        for peer, msg in msgs:
            add(peer, msg, now)
        for peer in self.sock.closed_peers():
            intake.closed(peer, now)  # after what it sent before

    def _transport_counts(self) -> dict:
        sock = self.sock
        return {"encrypted": self.security.encrypt,
                "secret": self.security.key.fingerprint,
                "refused_connections": sock.gatekeeper.refused.total
                + (sock.local.server.refused if sock.local is not None else 0),
                "malformed_messages": sock.bad_messages}

    def _carry_out(self, commands: list) -> None:
        """Send the state's messages; write its log lines and internal errors."""
        send = self.sock.send
        own: list = []
        for c in commands:
            kind = type(c)
            if kind is Send:
                if c.peer is HEAD_SELF:  # a log query about the head's own files
                    own.append(c.msg)
                else:
                    send(c.peer, c.msg)
            elif kind is Log:
                logging.getLogger(c.logger).log(c.level, c.msg, *c.args)
            elif kind is InternalError:  # a bug must not take the head down; say so loudly
                log.error("internal error while handling %s from %r:\n%s", c.what, c.peer,
                          c.traceback)
        for msg in own:  # (small and bounded: a listing, or at most 1 MiB of one file)
            reply = self.logs.answer(msg.query)
            self._carry_out(self.state.own_logs_read(P.LogsRead(msg.request_id, reply),
                                                     time.monotonic()))

    def _shutdown(self, reason: str) -> None:
        log.info("head shutting down: %s", reason)
        self.dashboard.close()
        for node in self.state.members.nodes.values():
            if node.alive:
                self.sock.send(node.peer, P.Shutdown(f"the head at {self.host}:{self.port} {reason}"))
        # give ZeroMQ a moment to put the Shutdown messages on the wire
        self.sock.close(linger_ms=500)
        self.ctx.term()


def run_head(config: Config, host: str, port: int, ready_fd: int | None, lifeline_fd: int | None,
             dashboard_host: str = "127.0.0.1", dashboard_port: int = 0) -> int:
    """Bind, report readiness on ``ready_fd`` (``READY <port> <dashboard host>:<port>``),
    serve until stopped. Return an exit code."""
    try:
        security = load_security(config)
    except SecretError as exc:
        report_ready(ready_fd, f"ERROR {exc}")
        log.error("%s", exc)
        return 1
    try:
        server = HeadServer(config, host, port, security, dashboard_host, dashboard_port)
    except _DashboardBindError as exc:
        msg = _bind_error(dashboard_host, dashboard_port, exc.__cause__ or exc, "--dashboard-port")
        report_ready(ready_fd, f"ERROR {msg}")
        log.error("%s", msg)
        return 1
    except Exception as exc:
        msg = _bind_error(host, port, exc)
        report_ready(ready_fd, f"ERROR {msg}")
        log.error("%s", msg)
        return 1
    add_log_file("head", os.path.join(server.logs.path, "head.log"))
    signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    signal.signal(signal.SIGINT, lambda *_: server.request_stop())
    report_ready(ready_fd, f"READY {server.port} {_address(dashboard_host, server.dashboard.port)}")
    log.info("taskmesh head listening on %s:%d (pid %d), cluster secret %s from %s, encryption %s; "
             "metrics at http://%s/metrics (token: `taskmesh dashboard`)",
             host, server.port, os.getpid(), security.key.fingerprint, security.key.source,
             "on" if security.encrypt else "OFF", _address(dashboard_host, server.dashboard.port))
    if not security.encrypt:
        log.warning("encryption is off (encrypt=False): connections are still authenticated, but "
                    "anyone on the network can read the tasks, results and objects sent between "
                    "machines, and learn the token that admits a peer")
    server.serve(lifeline_fd)
    return 0


class _DashboardBindError(Exception):
    """The dashboard's port could not be bound (its cause says why)."""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_error(host: str, port: int, exc: BaseException, flag: str = "--port") -> str:
    text = str(exc)
    if "local socket" in text:
        return text
    if "Address already in use" in text:
        return (f"port {port} on {host} is already in use (another taskmesh head? try "
                f"`taskmesh stop`, or {flag})")
    if "Cannot assign requested address" in text or "No such device" in text:
        return f"cannot listen on {host}:{port}: {host} is not an address of this machine"
    return f"cannot listen on {host}:{port}: {text}"
