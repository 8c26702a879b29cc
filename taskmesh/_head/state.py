"""The head's state: its parts behind one facade, as a sans-IO state machine.

    peer message ──handle(peer, msg, now)──▶ HeadState ──▶ [Send, Log, InternalError]
    batch ──handle_all([(peer, msg, now), ...])──▶    one scheduling round for the batch
    the shell's queues ──handle_turn(liveness, bulk, deadline, clock)──▶   (the same, bounded)
    clock ──tick(now, stalled)──▶ heartbeat deadlines, time-outs, stealing, idle workers

    HeadState ─┬─ Membership (membership.py): peers and their life cycle, nodes, workers
               ├─ TaskTable (tasks.py): unfinished tasks, retries, cancel, time-outs
               ├─ Scheduler (scheduler.py): queues, placement, leases, stealing, credits
               ├─ ObjectDirectory (directory.py): objects, refs, copies, lineage
               └─ ActorTable (actor_table.py): actors from creation to their end
                  (sharing a Context: config, clock, outbox, event stream, log)

No sockets, threads, clocks or logging here: the server (server.py) decodes a batch of
messages, hands it in, and carries out the commands it gets back (messages to send, one
batched message per peer and type; log lines). Each message goes to the part that owns what
it is about (``_handlers``); the parts call each other for the consequences. Every call
ends with a scheduling round, so no shell has to remember one. The head keeps values as
opaque bytes: it never unpickles them.
"""

from __future__ import annotations

import traceback
from collections import deque
from typing import Any, Callable, Iterable

from .. import _protocol as P
from .._resources import UNIT
from ..config import Config
from . import actors as A
from . import events as E
from .actor_table import ActorTable
from .commands import Command, InternalError
from .context import CHORE_SLICE, Context
from .directory import OBJECT_SCAN, ObjectDirectory
from .intake import DISCONNECTED
from .logrelay import HEAD_SELF, LogRelay
from .membership import Membership, PeerKind
from .records import ASSIGNED, READY, WAITING, add_to
from .runtime_envs import RuntimeEnvs
from .scheduler import Scheduler
from .tasks import TaskTable
from .views import QueryError, StateView, parse_query, select

__all__ = ["HeadState", "CHORE_SLICE"]

_CLIENT = (PeerKind.DRIVER, PeerKind.WORKER)


class HeadState:
    """Everything the head knows, in its parts, and the one way in."""

    def __init__(self, config: Config, now: float = 0.0) -> None:
        self.config = config
        self.ctx = ctx = Context(config, now, __name__)
        self.members = Membership(ctx)
        self.table = TaskTable(ctx)
        self.scheduler = Scheduler(ctx)
        self.directory = ObjectDirectory(ctx)
        self.actor_table = ActorTable(ctx)
        self.logs = LogRelay(ctx)  # taskmesh logs: queries to the nodes, their answers
        self.logs.members = self.members
        self.runtime_envs = RuntimeEnvs(ctx)
        parts = {"members": self.members, "table": self.table, "scheduler": self.scheduler,
                 "directory": self.directory, "actor_table": self.actor_table,
                 "runtime_envs": self.runtime_envs}
        for part in parts.values():  # each part knows the others (typed in its __init__)
            for name, other in parts.items():
                if other is not part:
                    setattr(part, name, other)
        self.events = ctx.events
        #: the state API's tasks, actors and jobs, fed by the event stream (views.py)
        self.view = StateView(config.state_finished_tasks)
        #: it sees the stream unless there is none, or the config turns it off (0)
        self.view_on = self.events.on and config.state_finished_tasks > 0
        if self.view_on:
            self.events.view = self.view
        self.dropped = ctx.dropped
        self.chores = ctx.chores
        #: the I/O shell's own figures for status (the sockets' counts, the loop's lag), as
        #: it last passed them to tick()
        self.shell: dict = {}
        m, t, s, d, a = self.members, self.table, self.scheduler, self.directory, self.actor_table
        #: message type -> (the part's handler, the kinds of peer that may send it)
        self._handlers: dict[type, tuple[Callable[[bytes, Any], None], tuple[PeerKind, ...]]] = {
            P.RegisterFunction: (t.on_register_function, _CLIENT),
            P.Submit: (t.on_submit, _CLIENT),
            P.Put: (d.on_put, _CLIENT),
            P.Subscribe: (d.on_subscribe, _CLIENT),
            P.Release: (d.on_release, _CLIENT),
            P.Borrow: (d.on_borrow, _CLIENT),
            P.InfoRequest: (self._on_info, (*_CLIENT, PeerKind.STATUS)),
            P.Goodbye: (m.on_goodbye, (PeerKind.DRIVER, PeerKind.STATUS, PeerKind.NODE)),
            P.CreateActor: (a.on_create_actor, _CLIENT),
            P.GetActor: (a.on_get_actor, _CLIENT),
            P.KillActor: (a.on_kill_actor, _CLIENT),
            P.Cancel: (t.on_cancel, _CLIENT),
            P.TaskResults: (t.on_results, (PeerKind.WORKER,)),
            P.Blocked: (s.on_blocked, (PeerKind.WORKER,)),
            P.Unblocked: (s.on_unblocked, (PeerKind.WORKER,)),
            P.Returned: (s.on_returned, (PeerKind.WORKER,)),
            P.Heartbeat: (m.on_heartbeat, (PeerKind.NODE,)),
            P.WorkerExited: (m.on_worker_exited, (PeerKind.NODE,)),
            P.ObjectLocations: (d.on_object_locations, (PeerKind.NODE,)),
            P.WorkerOutput: (self._on_worker_output, (PeerKind.NODE,)),
            P.LogRequest: (self.logs.on_request, (*_CLIENT, PeerKind.STATUS)),
            P.LogsRead: (self.logs.on_read, (PeerKind.NODE,)),
            P.RegisterEnv: (self.runtime_envs.on_register_env, _CLIENT),
            P.RegisterPackage: (self.runtime_envs.on_register_package, _CLIENT),
            P.EnvFailed: (self.runtime_envs.on_env_failed, (PeerKind.NODE,)),
        }

    # ------------------------------------------------------------------ the way in

    def handle(self, peer: bytes, msg: Any, now: float) -> list[Command]:
        """Apply one decoded message from ``peer`` (``DISCONNECTED``: its connection closed),
        schedule, and return what to do: messages to send, lines to log."""
        self._take(deque(((peer, msg, now),)), None, None)
        return self._round()

    def handle_all(self, messages: Iterable[tuple[bytes, Any, float]]) -> list[Command]:
        """``handle`` for a batch of (peer, message, time received): one scheduling round and
        one batched message per peer and type for all of them (batching is what keeps the
        head fast under load)."""
        self._take(deque(messages), None, None)
        return self._round()

    def handle_turn(self, liveness: deque, bulk: deque, deadline: float,
                    clock: Callable[[], float]) -> list[Command]:
        """The I/O shell's way: one turn of its loop, with one scheduling round. The queues
        hold (peer, message, time read) and are taken from: every liveness message first,
        then bulk messages in arrival order until none is left or ``clock()`` has passed
        ``deadline`` (looked at every 32). Each is handled at the time ``clock()`` gives
        when its turn comes: one may take long (a Release of a million refs, in slices),
        and a heartbeat after it must not look late."""
        if liveness:
            self._take(liveness, None, clock)
        self._take(bulk, deadline, clock)
        return self._round()

    def _take(self, queue: deque, deadline: float | None,
              clock: Callable[[], float] | None) -> None:
        """Apply messages off ``queue`` (see ``handle_turn``; no clock: each message's own
        time). This is the per-message path: kept to one function."""
        ctx, apply, members, pop = self.ctx, self._apply, self.members, queue.popleft
        n = 0
        while queue:
            peer, msg, now = pop()
            if clock is not None:
                now = clock()
            try:
                ctx.now = now
                if msg is DISCONNECTED:
                    members.disconnected(peer)
                else:
                    apply(peer, msg, now)
            except Exception:  # a bug must not take the head down: reported, counted, survived
                self._internal_error("a closed connection" if msg is DISCONNECTED
                                     else type(msg).__name__, peer)
            n += 1
            if deadline is not None and not n & 31 and clock() >= deadline:  # type: ignore[misc]
                return

    def tick(self, now: float, stalled: float = 0.0, shell: dict | None = None) -> list[Command]:
        """Time passed: heartbeat deadlines, time-outs, retries that waited, stealing, credits
        and surplus idle workers.

        ``stalled``: how long the head itself did not run since the last tick (its process
        was stopped or starved, or collected garbage), as its I/O shell measured it. A judge
        that stalled does not convict: that time does not count as silence of the nodes and
        drivers it watches, nor against the time-outs of running tasks. ``shell``: the I/O
        shell's own figures for ``status`` (``transport``, ``loop_lag``)."""
        if shell is not None:
            self.shell = shell
        self.ctx.now = now
        try:
            if stalled > 0:
                self.members.forgive(stalled)
                self.table.forgive(stalled)
                self.ctx.log.info("the head did not run for %.1f s (stopped, starved or "
                                  "collecting garbage): that time is not counted as silence "
                                  "of its nodes and drivers", stalled)
            self.members.tick(now)
            self.table.tick(now)
            self.scheduler.tick(now)
            self.logs.tick(now)
        except Exception:
            self._internal_error("tick", b"")
        return self._round()

    def own_logs_read(self, msg: P.LogsRead, now: float) -> list[Command]:
        """The shell's answer to a ``ReadLogs`` sent to ``HEAD_SELF`` (the head's own log
        directory)."""
        self.ctx.now = now
        try:
            self.logs.on_read(HEAD_SELF, msg)
        except Exception:
            self._internal_error("LogsRead", HEAD_SELF)
        return self._round()

    def run_chores(self, deadline: float, clock: Callable[[], float]) -> list[Command]:
        """Work on the chores (long scans cut in slices) until done or ``deadline``."""
        chores = self.chores
        try:
            while chores:
                if next(chores[0], StopIteration) is StopIteration:
                    chores.popleft()
                if clock() >= deadline:
                    break
        except Exception:
            chores.popleft()  # (a chore that raised is dropped, not retried forever)
            self._internal_error("a chore", b"")
        return self._round()

    def _round(self) -> list[Command]:
        """End of a batch: schedule, then everything to do, in order."""
        try:
            self.scheduler.schedule()
        except Exception:
            self._internal_error("scheduling", b"")
        return self._drain()

    def _drain(self) -> list[Command]:
        """Everything to do, in order: the messages to send, then the notes."""
        ctx = self.ctx
        commands: list[Command] = []
        ctx.out.drain_into(commands)
        if ctx.notes:
            commands += ctx.notes
            ctx.notes.clear()
        return commands

    def after_turn(self) -> list[Command]:
        """The shell calls this once a turn's commands are sent: the events the turn added
        go into the ring if ``ABSORB_AT`` or more wait, and into the state view only if it
        is ``VIEW_BEHIND_MAX`` behind (else in idle turns: ``catch_up``). Returns what a
        bug there has to report, else nothing."""
        events = self.ctx.events
        if len(events.added) >= E.ABSORB_AT:
            events.absorb()
        if events.behind < E.VIEW_BEHIND_MAX:
            return []
        return self.catch_up(None, None)

    @property
    def view_behind(self) -> bool:
        """Whether events wait for the state view (the shell then has idle work)."""
        return self.ctx.events.behind > 0

    def catch_up(self, deadline: float | None,
                 clock: Callable[[], float] | None) -> list[Command]:
        """Feed the state view what it has not seen, until ``deadline`` (None: all of it);
        the shell calls this when no message waits."""
        try:
            self.ctx.events.feed_view(deadline, clock)
        except Exception:
            self._internal_error("the state view", b"")
        return self._drain()

    def task_summary(self) -> dict[str, dict[str, int]]:
        """Tasks by function and state, from the state view (up to date)."""
        self.events.sync()
        return self.view.summary()

    def _internal_error(self, what: str, peer: bytes) -> None:
        """Called in an ``except`` block: count it with the dropped messages (status shows
        them) and hand the traceback to the shell."""
        counts = self.dropped.counts
        counts["internal error"] = counts.get("internal error", 0) + 1
        self.ctx.notes.append(InternalError(what, peer, traceback.format_exc()))

    def _apply(self, peer: bytes, msg: Any, now: float) -> None:
        """Hand one decoded message to the part that owns what it is about."""
        members = self.members
        if type(msg) is P.Hello:
            members.on_hello(peer, msg)
            return
        kind = members.peers.get(peer)
        if kind is None:
            members.stranger(peer, msg)
            return
        if members.beating:
            members.seen(peer, now)
        if type(msg) is P.Malformed:  # (counted and logged by the socket)
            self.ctx.reject(peer, msg.message or "message", f"malformed: {msg.reason}",
                            msg.request_id)
            return
        handler = self._handlers.get(type(msg))
        if handler is None or kind not in handler[1]:
            self.dropped.event("not expected from its kind of peer", "dropped %s from %r: not "
                               "expected from a %s", type(msg).__name__, peer, kind.value)
            self.ctx.reject(peer, type(msg).__name__, f"a {kind.value} may not send it",
                            getattr(msg, "request_id", 0))
            return
        handler[0](peer, msg)

    def _on_worker_output(self, peer: bytes, msg: P.WorkerOutput) -> None:
        """Lines a node's workers wrote: each entry goes on to its job's driver, with the
        node's address, if that driver is connected and wants them (else only the node's
        log files have them). Batched per driver like every message of a round."""
        m = self.members
        node = m.node_by_peer.get(peer)
        if node is None or not node.alive:
            return
        peers, quiet, add, ip = m.peers, m.quiet, self.ctx.out.add, node.address
        for job, label, pid, stream, lines in msg.entries:
            if peers.get(job) == "driver" and job not in quiet:
                add(job, P.Output, [ip, label, pid, stream, lines])

    def _on_info(self, peer: bytes, msg: P.InfoRequest) -> None:
        self.ctx.out.send(peer, P.InfoReply(msg.request_id, self.info(msg.what)))

    # ------------------------------------------------------------------ reporting

    def info(self, what: str) -> Any:
        """Cluster information for InfoRequest: nodes, resources, available, status, events,
        dashboard."""
        if what == "ping":
            return {}
        if what == "dashboard":  # where its HTTP endpoints listen: {"host", "port"}
            return self.shell.get("dashboard", {})
        if what.startswith("package:"):  # a runtime_env package the head keeps
            return self.runtime_envs.package(what[len("package:"):])
        alive = [n for n in self.members.nodes.values() if n.alive]
        if what == "nodes":
            return [self.members.node_info(n) for n in self.members.nodes.values()]
        if what in ("resources", "available"):
            total: dict[str, int] = {}
            for n in alive:
                add_to(total, n.total if what == "resources" else
                     {k: max(0, v) for k, v in n.avail.items()})
                total[f"node:{n.address}"] = total.get(f"node:{n.address}", 0) + UNIT
            return total
        if what == "status":
            queued = sum(1 for q in self.scheduler.queues.values() for t in q if t.state == READY)
            waiting = sum(1 for t in self.table.tasks.values() if t.state == WAITING)
            running = sum(1 for t in self.table.tasks.values() if t.state == ASSIGNED)
            return {
                "nodes": [self.members.node_info(n) for n in self.members.nodes.values()],
                "tasks": {"queued": queued, "waiting_for_deps": waiting, "running": running,
                          "finished": self.table.finished, "failed": self.table.failed},
                "objects": len(self.directory.objects),
                "drivers": sum(1 for k in self.members.peers.values() if k == "driver"),
                "actors": {state: sum(1 for a in self.actor_table.actors.values() if a.state == state)
                           for state in (A.PENDING, A.CREATING, A.ALIVE, A.RESTARTING, A.DEAD)},
                "dropped": dict(self.dropped.counts),  # messages dropped, by reason
                # set by the I/O shell: connections refused, malformed messages, encryption
                "transport": self.shell.get("transport", {}),
                "loop_lag": self.shell.get("loop_lag", {}),
                # the event stream: the latest event's number, the ring, the kinds kept
                "stream": self.events.summary(),
            }
        if what == "events" or what.startswith("events:"):  # events:<number seen last>
            try:
                since = int(what[7:] or 0)
            except ValueError:
                return {"error": f"bad events request {what!r}: events:<number>"}
            seq, events = self.events.since(since)
            return {"seq": seq, "events": E.as_lists(events)}
        if what.startswith("state:"):
            return self._state(what)
        return {"error": f"unknown info request {what!r}"}

    def _state(self, what: str) -> dict:
        """A state API query (``state:<kind>?key=value&key!=value&limit=N&detail=1``, see
        views.py): rows with Ray's field names, at most ``limit``, saying whether some were
        left out; ``now`` is the head's clock (the rows' times are on it)."""
        try:
            kind, filters, limit, detail = parse_query(what)
            if kind == "nodes":
                reply = select(map(self._node_row, self.members.nodes.values()), filters, limit)
            elif kind == "objects":
                reply = select(self.directory.object_rows(), filters, limit)
                reply["scanned_all"] = len(self.directory.objects) <= OBJECT_SCAN
            else:
                self.events.sync()  # (the view sees every event recorded so far)
                reply = self.view.query(kind, filters, limit, detail)
        except QueryError as exc:
            return {"error": str(exc)}
        reply["now"] = self.ctx.now
        if kind not in ("nodes", "objects") and not self.view_on:
            reply["view"] = False  # (no stream, or state_finished_tasks=0: it has seen nothing)
        return reply

    def _node_row(self, n: Any) -> dict:
        """A node as ``list_nodes`` shows it (Ray's field names; resources in units)."""
        return {"node_id": n.node_id, "node_ip": n.address, "node_name": n.hostname,
                "state": "ALIVE" if n.alive else "DEAD", "is_head_node": False,
                "resources_total": dict(n.total), "workers": len(n.workers),
                "actors": len(n.actor_workers), "tasks_finished": n.finished}

    def check_invariants(self) -> None:
        """Raise AssertionError unless the records agree with each other: each part checks
        its own (membership, leases and free resources; tasks and queues; credits; reference
        counts and copies; actors), and every event kept is of a known kind with its fields.
        O(state): for tests and the fuzz harness (tests/fuzz), which run it after every few
        messages."""
        self.members.check_invariants()
        self.table.check_invariants()
        self.scheduler.check_invariants()
        self.directory.check_invariants()
        self.actor_table.check_invariants()
        self.logs.check_invariants()
        if self.events.on:
            self.events.check_invariants()
            self.view.check_invariants()  # (an empty one when it is off)
