"""The node agent's decisions (``AgentState``), driven directly: registration, heartbeats, a
head that restarts or fences the node, a head that goes silent, the worker pool, bad input.

Each test plays the agent's I/O shell: it feeds events with a time of its choosing and reads
the commands that come back. No processes, sockets or sleeps.
"""

from __future__ import annotations

import signal

import pytest

from taskmesh import _protocol as P
from taskmesh._node.state import (
    DECLARED_DEAD,
    ERROR,
    INFO,
    STALL_S,
    WARNING,
    AgentState,
    DeleteObjects,
    Drop,
    DropAllObjects,
    EnvReady,
    EnvSetupFailed,
    Exit,
    FromHead,
    HandshakeRefused,
    HeadClosed,
    Interrupt,
    Kill,
    LifelineEnded,
    Log,
    Phase,
    PrepareEnv,
    ReportReady,
    Send,
    SendHeartbeat,
    SpawnWorkers,
    Start,
    StopRequested,
    StopWorkers,
    Tick,
    Woke,
    WorkerEnded,
    WorkerSpawned,
    WorkerSpawnFailed,
)
from taskmesh.config import Config

HEAD = "tcp://10.0.0.1:7300"
CFG = Config()  # heartbeat 0.25 s, connect 5 s, head time-out 3 s, head lost exit 60 s
INFO_ = {"node_id": "n1", "address": "10.0.0.2", "resources": {"CPU": 20000}, "prestart": 2}


def of(cmds: list, cls: type) -> list:
    return [c for c in cmds if type(c) is cls]


def sent(cmds: list) -> list:
    return [c.message for c in of(cmds, Send)]


def logged(cmds: list, level: int | None = None) -> list[str]:
    return [c.message % c.args for c in of(cmds, Log) if level is None or c.level == level]


class Agent:
    """An AgentState and a shell that starts every worker it is asked for (pid = 1000 + n)."""

    def __init__(self, num_cpus: int = 2, **config: float) -> None:
        self.state = AgentState(Config(**config) if config else CFG, "n1", HEAD, num_cpus, INFO_)
        self.now = 100.0
        self.pids: dict[str, int] = {}

    def feed(self, event: object, dt: float = 0.0) -> list:
        self.now += dt
        cmds = self.state.handle(event, self.now)  # type: ignore[arg-type]
        self.state.check_invariants()
        out = list(cmds)
        for c in cmds:  # play the pool: every spawn works
            if type(c) is SpawnWorkers:
                for wid in c.worker_ids:
                    self.pids[wid] = 1000 + int(wid.rsplit("-", 1)[1])
                    out += self.feed(WorkerSpawned(wid, self.pids[wid]))
        return out

    def head(self, msg: object, dt: float = 0.0) -> list:
        return self.feed(FromHead(msg), dt)

    def joined(self) -> "Agent":
        self.feed(Start())
        self.head(P.Welcome(P.PROTOCOL_VERSION, {}))
        return self

    def beat(self, until: float) -> list:
        """Ticks every heartbeat interval until ``until`` seconds from now; all commands."""
        out = []
        end = self.now + until
        while self.now < end and self.state.phase is not Phase.EXITED:
            out += self.feed(Tick(), CFG.heartbeat_interval_s)
        return out


# --------------------------------------------------------------------------- registration


def test_start_says_hello_and_starts_the_pool_at_once():
    a = Agent(num_cpus=3)
    cmds = a.feed(Start())
    assert sent(cmds) == [P.Hello(P.PROTOCOL_VERSION, "node", {**INFO_, "incarnation": 0})]
    assert of(cmds, SpawnWorkers) == [SpawnWorkers(("n1-1", "n1-2", "n1-3"), 0)]
    assert a.state.phase is Phase.REGISTERING and not a.state.registered
    assert set(a.state.workers) == {"n1-1", "n1-2", "n1-3"}


def test_welcome_registers_and_reports_ready_once():
    a = Agent()
    a.feed(Start())
    cmds = a.head(P.Welcome(P.PROTOCOL_VERSION, {}))
    assert of(cmds, ReportReady) == [ReportReady("READY n1")]
    assert logged(cmds, INFO) == [f"node n1 registered with the head at {HEAD}"]
    assert a.state.phase is Phase.JOINED and a.state.registered
    assert of(a.head(P.Welcome(P.PROTOCOL_VERSION, {})), ReportReady) == []  # a second: no line


def test_no_welcome_within_connect_timeout_exits_with_an_error_line():
    a = Agent()
    a.feed(Start())
    assert a.state.wake_at() == pytest.approx(a.now + CFG.heartbeat_interval_s)
    assert of(a.feed(Tick(), CFG.connect_timeout_s), Exit) == []  # not past it yet
    cmds = a.feed(Tick(), 0.01)
    reason = f"no taskmesh head answered at {HEAD} within 5 s"
    assert cmds[-2:] == [ReportReady(f"ERROR {reason}"), Exit(1, reason, False)]
    assert a.state.phase is Phase.EXITED and a.state.exit_code == 1
    assert a.feed(Tick(), 1.0) == []  # after Exit, nothing


def test_a_refused_hello_exits_with_the_heads_reason():
    a = Agent()
    a.feed(Start())
    cmds = a.head(P.Refused("protocol version 2, this head speaks 3"))
    assert logged(cmds, ERROR) == [f"the head at {HEAD} refused this node: protocol version 2, "
                                   "this head speaks 3"]
    reason = "the head refused this node: protocol version 2, this head speaks 3"
    assert cmds[-2:] == [ReportReady(f"ERROR {reason}"), Exit(1, reason, False)]


def test_a_refused_handshake_exits_before_registration_and_is_ignored_after():
    a = Agent()
    a.feed(Start())
    cmds = a.feed(HandshakeRefused("wrong secret"))
    reason = f"the head at {HEAD} refused this node: wrong secret"
    assert logged(cmds, ERROR) == [reason]
    assert cmds[-1] == Exit(1, reason, False)
    b = Agent().joined()
    assert b.feed(HandshakeRefused("late")) == [] and b.state.phase is Phase.JOINED


# --------------------------------------------------------------------------- heartbeats, head lost


def test_heartbeats_every_interval_with_the_worker_count():
    a = Agent(num_cpus=2).joined()
    assert a.feed(Tick(), 0.1) == []  # not due yet
    cmds = a.feed(Tick(), 0.2)
    assert cmds == [SendHeartbeat(2)]
    assert a.state.wake_at() == pytest.approx(a.now + CFG.heartbeat_interval_s)


def test_a_silent_head_is_said_lost_then_heard_again():
    a = Agent().joined()
    cmds = a.beat(3.3)
    lost = logged(cmds, WARNING)
    assert len(lost) == 1 and lost[0].startswith(f"the head at {HEAD} has not answered for 3.")
    assert "(head_lost_exit_s), then this node exits" in lost[0]
    assert a.state.phase is Phase.HEAD_LOST and a.state.registered
    assert len(of(cmds, SendHeartbeat)) >= 13  # one every 0.25 s, lost or not
    cmds = a.head(P.HeartbeatAck())
    assert logged(cmds, WARNING) == [f"the head at {HEAD} answers again"]
    assert a.state.phase is Phase.JOINED


def test_a_head_silent_for_head_lost_exit_s_ends_the_agent_with_goodbye():
    a = Agent(head_lost_exit_s=4.0).joined()
    cmds = a.beat(10)
    reason = f"the head at {HEAD} has not answered for 4 s"
    assert cmds[-1] == Exit(1, reason, True)  # registered: tell the head, should it hear
    assert of(cmds, ReportReady) == []  # READY was written long ago
    assert a.state.phase is Phase.EXITED and 4.0 < a.now - 100.0 <= 4.5


def test_time_the_agent_did_not_run_is_not_the_heads_silence():
    a = Agent().joined()
    a.now += 2.9
    a.feed(Woke(asked_s=0.01, slept_s=2.9))  # stopped (SIGSTOP) for almost all of it
    assert logged(a.feed(Tick(), 0.3), WARNING) == []
    assert a.state.phase is Phase.JOINED
    a.feed(Woke(asked_s=0.25, slept_s=0.25 + STALL_S))  # late by the margin: no discount
    assert a.state.last_contact == pytest.approx(100.0 + 2.9 - 0.01 - STALL_S)


def test_the_head_closing_the_connection_exits_without_goodbye():
    a = Agent().joined()
    cmds = a.feed(HeadClosed())
    assert cmds == [Exit(1, f"the head at {HEAD} closed the connection", False)]


# --------------------------------------------------------------------------- fenced, head restart


def _rejoin(a: Agent, reason: str) -> list:
    cmds = a.head(P.Refused(reason))
    assert a.state.phase is Phase.REJOINING and not a.state.registered
    return cmds


def test_a_restarted_head_makes_the_node_join_again_as_a_new_incarnation():
    a = Agent(num_cpus=2).joined()
    a.beat(1.0)  # the old head's machine died: nothing answers
    why = DECLARED_DEAD + " (it was silent longer than the heartbeat time-out)"
    cmds = _rejoin(a, why)  # the new head does not know us
    assert logged(cmds, WARNING) == [f"the head at {HEAD} declared node n1 dead ({why}): "
                                     "stopping its 2 workers, dropping its objects and joining again"]
    kinds = [type(c) for c in cmds if type(c) is not Log and type(c) is not Send]
    assert kinds[:3] == [StopWorkers, DropAllObjects, SpawnWorkers]
    assert sent(cmds)[0] == P.Hello(P.PROTOCOL_VERSION, "node", {**INFO_, "incarnation": 1})
    assert of(cmds, SpawnWorkers) == [SpawnWorkers(("n1-3", "n1-4"), 1)]  # ids never reused
    assert set(a.state.workers) == {"n1-3", "n1-4"}
    # answers to heartbeats sent before the new Hello: ignored
    assert a.head(P.Refused(DECLARED_DEAD + " ...")) == []
    assert a.state.phase is Phase.REJOINING
    cmds = a.head(P.Welcome(P.PROTOCOL_VERSION, {}))
    assert a.state.phase is Phase.JOINED and of(cmds, ReportReady) == []
    # a worker of the old incarnation, reaped later: not reported (the head forgot it)
    assert a.feed(WorkerEnded("n1-1", 1001, -signal.SIGTERM)) == []


def test_fenced_while_the_head_was_lost():
    a = Agent().joined()
    a.beat(3.5)
    assert a.state.phase is Phase.HEAD_LOST
    cmds = _rejoin(a, DECLARED_DEAD)
    assert logged(cmds, WARNING)[0] == f"the head at {HEAD} answers again"
    assert a.state.incarnation == 1


def test_rejoining_needs_a_welcome_within_connect_timeout():
    a = Agent().joined()
    _rejoin(a, DECLARED_DEAD)
    cmds = a.beat(CFG.connect_timeout_s + 0.5)
    assert cmds[-1] == Exit(1, f"no taskmesh head answered at {HEAD} within 5 s", False)
    assert of(cmds, ReportReady) == []  # READY went out the first time


def test_another_refusal_while_rejoining_ends_the_agent():
    a = Agent().joined()
    _rejoin(a, DECLARED_DEAD)
    cmds = a.head(P.Refused("node n1 is alive on another connection"))
    assert cmds[-1] == Exit(1, "the head refused this node: node n1 is alive on another connection",
                            False)


def test_a_refused_heartbeat_from_a_registering_node_is_not_ignored():
    a = Agent()
    a.feed(Start())
    assert type(a.head(P.Refused(DECLARED_DEAD))[-1]) is Exit


# --------------------------------------------------------------------------- the pool


def test_start_workers_is_bounded_and_ids_count_up():
    a = Agent(num_cpus=1).joined()
    assert of(a.head(P.StartWorkers(2)), SpawnWorkers) == [SpawnWorkers(("n1-2", "n1-3"), 0)]
    big = of(a.head(P.StartWorkers(10_000)), SpawnWorkers)[0]
    assert len(big.worker_ids) == 64 and big.worker_ids[0] == "n1-4"
    assert of(a.head(P.StartWorkers(-5)), SpawnWorkers) == [SpawnWorkers((), 0)]
    assert len(a.state.workers) == 67
    assert a.feed(Tick(), 0.3) == [SendHeartbeat(67)]


def test_workers_of_a_runtime_env_start_once_it_is_ready_and_a_failure_is_told():
    a = Agent(num_cpus=2).joined()
    cmds = a.head(P.StartWorkers(3, "env_1", '{"env_vars": {"A": "1"}}'))
    assert of(cmds, SpawnWorkers) == []  # (its environment first)
    assert of(cmds, PrepareEnv) == [PrepareEnv("env_1", '{"env_vars": {"A": "1"}}', 3)]
    assert of(a.feed(EnvReady("env_1", 3)), SpawnWorkers) == [
        SpawnWorkers(("n1-3", "n1-4", "n1-5"), 0, "env_1")]
    cmds = a.feed(EnvSetupFailed("env_2", "pip install nope failed"))
    assert sent(cmds) == [P.EnvFailed("env_2", "pip install nope failed")]
    assert logged(cmds, WARNING) == ["runtime_env env_2 could not be set up: pip install nope failed"]
    assert of(a.head(P.StartWorkers(100, "env_3", "{}")), PrepareEnv)[0].count == 64


def test_worker_exits_are_reported_with_a_level_that_fits():
    a = Agent(num_cpus=3).joined()
    cmds = a.feed(WorkerEnded("n1-1", 1001, -signal.SIGTERM))
    assert sent(cmds) == [P.WorkerExited("n1-1", 1001, -signal.SIGTERM)]
    assert logged(cmds, INFO) == [f"worker n1-1 (pid 1001) exited with {-signal.SIGTERM}"]
    cmds = a.feed(WorkerEnded("n1-2", 1002, 3))
    assert logged(cmds, WARNING) == ["worker n1-2 (pid 1002) exited with 3"]
    assert sent(cmds) == [P.WorkerExited("n1-2", 1002, 3)]
    # killed at the head's request: its SIGKILL is no surprise
    cmds = a.head(P.KillWorker("n1-3", "task f was cancelled: its owner left"))
    assert of(cmds, Kill) == [Kill("n1-3")]
    assert logged(cmds, INFO) == ["killing worker n1-3 (pid 1003): task f was cancelled: its owner left"]
    cmds = a.feed(WorkerEnded("n1-3", 1003, -signal.SIGKILL))
    assert of(cmds, Log)[0].level == INFO and sent(cmds) == [P.WorkerExited("n1-3", 1003, -9)]
    assert a.state.workers == {}
    assert a.feed(WorkerEnded("n1-3", 1003, -9)) == []  # twice: nothing


def test_a_worker_that_could_not_start_or_ended_at_once_is_reported():
    a = Agent(num_cpus=0).joined()
    spawn = of(a.state.handle(FromHead(P.StartWorkers(2)), a.now), SpawnWorkers)[0]
    w1, w2 = spawn.worker_ids
    cmds = a.feed(WorkerSpawnFailed(w1, "[Errno 24] Too many open files"))
    assert logged(cmds, ERROR) == ["could not start a worker process: [Errno 24] Too many open files"]
    assert sent(cmds) == [P.WorkerExited(w1, 0, 127)]
    cmds = a.feed(WorkerEnded(w2, 4242, 1))  # before WorkerSpawned: its fork server reaped it
    assert logged(cmds, WARNING) == [f"worker {w2} (pid 4242) exited at once with 1"]
    assert sent(cmds) == [P.WorkerExited(w2, 4242, 1)]
    assert a.state.workers == {}


def test_interrupts_go_to_known_workers_with_a_task_id():
    a = Agent(num_cpus=1).joined()
    tid = bytes(range(16))
    assert a.head(P.InterruptTask("n1-1", tid)) == [Interrupt("n1-1", tid)]
    assert a.head(P.InterruptTask("n1-1", b"short")) == []
    assert a.head(P.InterruptTask("nobody", tid)) == []
    assert a.head(P.KillWorker("nobody", "why")) == []


def test_free_objects_deletes_from_the_store():
    a = Agent().joined()
    assert a.head(P.FreeObjects([b"a" * 20, b"b" * 20])) == [DeleteObjects((b"a" * 20, b"b" * 20))]


# --------------------------------------------------------------------------- leaving


@pytest.mark.parametrize("event, reason", [
    (StopRequested(), "stopped"),
    (LifelineEnded(), "the driver that started this embedded cluster exited"),
    (FromHead(P.Shutdown("the head is stopping")), "the head is stopping"),
])
def test_clean_exits_say_goodbye_when_registered(event, reason):
    a = Agent().joined()
    assert a.feed(event) == [Exit(0, reason, True)]
    b = Agent()
    b.feed(Start())
    assert b.feed(event) == [Exit(0, reason, False)]  # not registered: no Goodbye, no ready line


# --------------------------------------------------------------------------- bad input


def test_unexpected_messages_are_dropped_and_counted():
    a = Agent().joined()
    for msg in (P.Goodbye(), P.Rejected("x", 0, [], "why"), P.Execute([]), object()):
        cmds = a.head(msg)
        assert [type(c) for c in cmds] == [Drop]
    assert a.state.dropped["not a message for a node agent"] == 4
    assert cmds[0].message % cmds[0].args == "ignored unexpected object from the head"
    assert a.state.phase is Phase.JOINED


def test_events_out_of_order_are_bugs_of_the_shell():
    a = Agent()
    with pytest.raises(RuntimeError):
        a.state.handle(Tick(), 0.0)  # before Start
    a.feed(Start())
    with pytest.raises(RuntimeError):
        a.state.handle(Start(), 0.0)  # twice
    with pytest.raises(TypeError):
        a.state.handle("Welcome", 0.0)  # type: ignore[arg-type]
    assert a.feed(WorkerSpawned("n1-99", 5)) == []  # a worker it never asked for: ignored
    assert a.feed(WorkerSpawnFailed("nobody", "x")) == []


def test_the_invariant_check_can_fail():
    a = Agent().joined()
    a.state.info["incarnation"] = 7
    with pytest.raises(AssertionError, match="incarnation"):
        a.state.check_invariants()
