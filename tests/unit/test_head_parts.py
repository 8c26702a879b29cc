"""The head's parts on their own: the peers' life-cycle table, each part's invariant check
(it must catch a broken record), strategies parsed once, and the facade's commands."""

from __future__ import annotations

import pytest

from taskmesh import _protocol as P
from taskmesh._head.commands import InternalError, Log, Send
from taskmesh._head.membership import LIFE_CYCLE, Life, PeerKind
from taskmesh._head.records import DEFAULT, WAITING, Strategy, parse_strategy

from ..support.head import Actors, Cluster, ret, started


# =========================================================================== life cycle


def test_every_move_of_the_table_is_reachable_and_ends_are_remembered():
    c = Cluster(heartbeat_timeout_s=2.0)
    m = c.state.members
    assert m.life(c.driver) is Life.JOINED
    c.hello(b"remote", "driver", {"heartbeat_s": 0.25})
    c.add_node("n1", cpus=1)
    node_peer = c.node_peer["n1"]
    [w] = c.node_workers["n1"]
    assert (m.life(b"remote"), m.life(node_peer), m.life(w)) == (Life.JOINED,) * 3
    c.tick(10.0)  # everyone silent for 10 s: the remote driver is gone, the node dead
    assert m.life(b"remote") is Life.GONE and m.life(node_peer) is Life.DEAD
    assert m.life(w) is None  # a worker of a dead node is forgotten
    assert b"remote" in m.ended and node_peer in m.ended
    c.heartbeat("n1")  # the dead node speaks: fenced, told to join anew
    assert m.life(node_peer) is Life.FENCED
    assert type(c.drain().to(node_peer)[-1]) is P.Refused
    c.add_node("n1", cpus=1)  # it joins anew, on the same connection
    assert m.life(node_peer) is Life.JOINED and node_peer not in m.ended
    c.send(b"remote", P.Submit([]))  # the gone driver is told so
    assert "took this driver as gone" in c.drain().to(b"remote")[0].reason
    c.state.check_invariants()


def test_a_worker_is_an_orphan_until_its_node_joins():
    c = Cluster()
    w = c.add_worker("n7")  # its node's Hello comes later
    assert c.state.members.life(w) is Life.ORPHAN
    c.add_node("n7", cpus=1, workers=0)
    assert c.state.members.life(w) is Life.JOINED
    c.state.check_invariants()


def test_a_move_that_is_not_in_the_table_is_a_bug():
    c = Cluster()
    with pytest.raises(AssertionError, match="no move on 'lost'"):
        c.state.members.move(c.driver, PeerKind.DRIVER, "lost")
    assert (PeerKind.DRIVER, Life.JOINED, "lost") not in LIFE_CYCLE


def test_a_bug_in_a_part_is_an_internal_error_command_and_the_head_goes_on():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()

    def broken(peer, msg):
        raise RuntimeError("a bug")

    handlers = c.state._handlers
    handlers[P.Subscribe] = (broken, handlers[P.Subscribe][1])
    commands = c.state.handle(c.driver, P.Subscribe([b"x" * 20]), c.now)
    [error] = [x for x in commands if type(x) is InternalError]
    assert error.what == "Subscribe" and "RuntimeError: a bug" in error.traceback
    assert c.status()["dropped"]["internal error"] == 1
    [t] = c.submit(fid)  # the head goes on
    assert t in c.drain().assigned_to()


def test_the_state_logs_through_commands_only():
    c = Cluster()
    c.add_node("n1", cpus=1, address="10.9.9.9")
    commands = c.state.handle(c.node_peer["n1"], P.Goodbye(), c.now)
    logs = [x for x in commands if type(x) is Log]
    assert any("declared dead" in x.msg and "10.9.9.9" in x.args for x in logs)
    assert all(type(x) in (Send, Log) for x in commands)


# =========================================================================== invariants


def _broken(c: Cluster, part: str, match: str) -> None:
    with pytest.raises(AssertionError, match=match):
        getattr(c.state, part).check_invariants()
    with pytest.raises(AssertionError, match=match):
        c.state.check_invariants()


def test_each_part_catches_a_broken_record_of_its_own():
    c = Cluster()
    c.add_node("n1", cpus=2)
    fid = c.register()
    [running, waiting] = [c.submit(fid)[0], None]
    [waiting] = c.submit(fid, deps=[ret(running)])
    c.drain()
    c.state.check_invariants()
    node = c.state.members.nodes["n1"]
    node.avail["CPU"] += 1
    _broken(c, "members", "CPU free")
    node.avail["CPU"] -= 1
    t = c.state.table.tasks[waiting]
    t.waiting += 1
    _broken(c, "table", "waits for")
    t.waiting -= 1
    c.state.scheduler.in_flight[c.driver] += 1
    _broken(c, "scheduler", "in flight")
    c.state.scheduler.in_flight[c.driver] -= 1
    c.state.directory.objects[ret(running)].dependents += 1
    _broken(c, "directory", "dependents")
    c.state.directory.objects[ret(running)].dependents -= 1
    c.state.check_invariants()
    assert c.state.table.tasks[waiting].state == WAITING


def test_the_actor_table_catches_a_name_that_points_nowhere():
    c = Actors(idle_worker_timeout_s=1000.0)
    c.add_node("n1", cpus=1)
    fid = c.register("mod.C")
    aid = c.create(fid, name="a")
    started(c, aid)
    c.state.check_invariants()
    c.state.actor_table.actor_names[("", "ghost")] = b"\x00" * 16
    _broken(c, "actor_table", "ghost")


# =========================================================================== strategies


def test_a_strategy_is_parsed_once_when_the_record_is_made():
    assert parse_strategy("") is DEFAULT and parse_strategy("bogus") is DEFAULT
    assert parse_strategy("SPREAD") == Strategy("SPREAD")
    assert parse_strategy("node:abc") == Strategy("NODE", "abc", False)
    assert parse_strategy("node?:a:b") == Strategy("NODE", "a:b", True)
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    spec = c.spec(fid)._replace(strategy="node?:n1")
    c.send(c.driver, P.Submit([spec]))
    assert c.drain().assigned_to()[spec.task_id] == c.node_workers["n1"][0]


def test_a_heartbeat_from_a_node_this_head_never_knew_asks_it_to_join_anew():
    """A restarted head knows no node: an agent that still heartbeats the old one is refused,
    and so rejoins (the way agents find a restarted head)."""
    c = Cluster()
    c.send(b"Nold-node", P.Heartbeat({}))
    [refused] = c.drain().to(b"Nold-node")
    assert type(refused) is P.Refused and "join again" in refused.reason
    assert c.state.members.life(b"Nold-node") is None  # nothing remembered of a stranger
