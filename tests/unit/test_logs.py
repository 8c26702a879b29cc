"""``taskmesh logs`` decisions without processes: one log directory's answers (list, read,
follow, find by task or actor) and the head's relay of queries to nodes (a scripted head)."""

from __future__ import annotations

import os

from taskmesh import _protocol as P
from taskmesh._head.logrelay import ANSWER_S, HEAD_SELF, MAX_PENDING
from taskmesh._logfiles import LogDirectory
from taskmesh._output_marks import Context, format_marker

from ..support.head import Cluster

JOB = b"D" + bytes(8)
T1 = Context(JOB, bytes.fromhex("aa" * 16), b"", "f")
T2 = Context(JOB, bytes.fromhex("bb" * 16), b"", "g")
ACTOR = Context(JOB, bytes.fromhex("cc" * 16), bytes.fromhex("dd" * 16), "Counter")


def _dir(tmp_path) -> LogDirectory:
    (tmp_path / "worker-n1-1-100.out").write_text(
        "startup noise\n" + format_marker(T1) + "one\ntwo\n" + format_marker(T2) + "three\n")
    (tmp_path / "worker-n1-2-200.err").write_text(format_marker(ACTOR) + "actor says\n")
    (tmp_path / "agent.log").write_text("".join(f"agent line {i}\n" for i in range(5000)))
    return LogDirectory(str(tmp_path))


def test_list_names_each_file_and_its_worker(tmp_path):
    files = _dir(tmp_path).answer({"op": "list"})["files"]
    assert [f["file"] for f in files] == ["agent.log", "worker-n1-1-100.out", "worker-n1-2-200.err"]
    assert files[1]["pid"] == 100 and files[1]["worker_id"] == "n1-1" and files[1]["stream"] == "out"
    assert "pid" not in files[0]
    assert LogDirectory(str(tmp_path / "missing")).answer({"op": "list"}) == {"files": []}


def test_read_shows_the_tail_without_markers_and_follows_from_an_offset(tmp_path):
    d = _dir(tmp_path)
    r = d.answer({"op": "read", "file": "worker-n1-1-100.out"})
    assert r["lines"] == ["startup noise", "one", "two", "three"]
    assert d.answer({"op": "read", "file": "agent.log", "tail": 2})["lines"] == [
        "agent line 4998", "agent line 4999"]
    assert len(d.answer({"op": "read", "file": "agent.log"})["lines"]) == 1000  # the default
    end = r["offset"]
    with open(tmp_path / "worker-n1-1-100.out", "a") as f:
        f.write("four\n")
    more = d.answer({"op": "read", "file": "worker-n1-1-100.out", "offset": end})
    assert more["lines"] == ["four"] and more["offset"] == more["size"] and not more["rotated"]
    # rotated meanwhile (the file is shorter than where we were): read again from its start
    (tmp_path / "worker-n1-1-100.out").write_text("new\n")
    again = d.answer({"op": "read", "file": "worker-n1-1-100.out", "offset": end})
    assert again["rotated"] and again["lines"] == ["new"]


def test_a_big_read_is_bounded_and_ends_at_a_line(tmp_path):
    d = _dir(tmp_path)
    r = d.answer({"op": "read", "file": "agent.log", "offset": 0, "max_bytes": 100})
    assert r["offset"] <= 100 and r["lines"] == ["agent line 0", "agent line 1", "agent line 2",
                                                  "agent line 3", "agent line 4", "agent line 5",
                                                  "agent line 6"]


def test_find_returns_only_the_lines_of_that_task_or_actor(tmp_path):
    d = _dir(tmp_path)
    [hit] = d.answer({"op": "find", "task": "aa" * 16})["found"]
    assert hit["file"] == "worker-n1-1-100.out" and hit["lines"] == ["one", "two"]
    [hit] = d.answer({"op": "find", "task": "bbbbbbbb"})["found"]  # a prefix will do
    assert hit["lines"] == ["three"]
    [hit] = d.answer({"op": "find", "actor": "dd" * 16})["found"]
    assert hit["pid"] == 200 and hit["lines"] == ["actor says"]
    assert d.answer({"op": "find", "task": "ee" * 16})["found"] == []


def test_bad_queries_get_an_error_never_a_file_outside(tmp_path):
    d = _dir(tmp_path)
    (tmp_path.parent / "secret.txt").write_text("no")
    for q in [{"op": "read", "file": "../secret.txt"}, {"op": "read", "file": "/etc/passwd"},
              {"op": "read", "file": ""}, {"op": "read", "file": "nope.log"},
              {"op": "read", "file": "agent.log", "tail": -1},
              {"op": "read", "file": "agent.log", "offset": "0"},
              {"op": "find", "task": "xyz"}, {"op": "find"},
              {"op": "find", "task": "aa" * 8, "actor": "dd" * 8}, {"op": "rm"}, "list"]:
        r = d.answer(q)
        assert set(r) == {"error"} and r["error"], q
    os.chmod(tmp_path / "agent.log", 0)
    if os.geteuid() != 0:  # (root reads it anyway)
        assert "error" in d.answer({"op": "read", "file": "agent.log"})


# ------------------------------------------------------------------ the head's relay


def _cluster():
    c = Cluster()
    c.add_node("n1", address="10.0.0.1")
    c.add_node("n2", address="10.0.0.2")
    c.drain()
    return c


def test_a_query_goes_to_every_node_and_the_head_and_comes_back_as_one_reply():
    c = _cluster()
    status = c.hello(b"S-cli", "status")
    c.drain()
    c.send(status, P.LogRequest(7, "", {"op": "list"}))
    sent = c.drain()
    asks = {p: m for p, m in sent.pairs if type(m) is P.ReadLogs}
    assert set(asks) == {c.node_peer["n1"], c.node_peer["n2"], HEAD_SELF}
    assert {m.query["op"] for m in asks.values()} == {"list"}
    rid = asks[HEAD_SELF].request_id
    c.send(c.node_peer["n1"], P.LogsRead(rid, {"files": [{"file": "a"}]}))
    c.carry_out(c.state.own_logs_read(P.LogsRead(rid, {"files": []}), c.now))
    assert c.drain().to(status) == []  # n2 has not answered yet
    c.send(c.node_peer["n2"], P.LogsRead(rid, {"files": []}))
    [reply] = c.drain().to(status, P.InfoReply)
    assert reply.request_id == 7 and reply.data["missing"] == {}
    assert set(reply.data["replies"]) == {"head", "n1", "n2"}
    # a late or repeated answer changes nothing
    c.send(c.node_peer["n2"], P.LogsRead(rid, {"files": []}))
    assert c.drain().to(status) == []


def test_a_node_that_does_not_answer_is_reported_missing_in_time():
    c = _cluster()
    c.send(c.driver, P.LogRequest(3, "n2", {"op": "list"}))
    [(peer, ask)] = c.drain().of(P.ReadLogs)
    assert peer == c.node_peer["n2"]
    c.later(ANSWER_S / 2)
    assert c.drain().to(c.driver, P.InfoReply) == []
    sent = c.later(ANSWER_S)
    [reply] = sent.to(c.driver, P.InfoReply)
    assert reply.data == {"replies": {}, "missing": {"n2": f"did not answer within {ANSWER_S:g} s"}}
    assert not c.state.logs.pending


def test_an_unknown_node_is_answered_at_once_and_the_queries_in_flight_are_bounded():
    c = _cluster()
    c.send(c.driver, P.LogRequest(1, "n9", {"op": "list"}))
    [reply] = c.drain().to(c.driver, P.InfoReply)
    assert "no live node n9 (unknown); live nodes: n1, n2" == reply.data["missing"]["n9"]
    for i in range(MAX_PENDING):
        c.send(c.driver, P.LogRequest(100 + i, "n1", {"op": "list"}))
    c.drain()
    c.send(c.driver, P.LogRequest(9999, "n1", {"op": "list"}))
    [reply] = c.drain().to(c.driver, P.InfoReply)
    assert "too many log queries" in reply.data["missing"]["n1"]
    c.state.check_invariants()
