"""The head's sans-IO state machine, driven with real protocol messages.

The driver, node agents and workers are scripted (tests/support/head.py): every message goes
through the real encode/decode both ways, so these tests also check that the head only ever
says well-formed things.
"""

from __future__ import annotations

import pytest

from taskmesh import _protocol as P
from taskmesh._head.records import READY
from taskmesh._resources import UNIT

from ..support.head import LONG, PV, SHORT, SO, Cluster, blocked, build, ret, task_error, value


@pytest.fixture
def c() -> Cluster:
    return Cluster()


# =========================================================================== handshake


def test_hello_is_welcomed_per_kind(c):
    c.hello(b"d2", "driver")
    c.hello(b"s", "status")
    c.add_node("n1", cpus=1, workers=0)
    c.add_worker("n1")
    sent = c.drain()
    for peer in (b"d2", b"s", b"node-n1", b"worker-1"):
        [welcome] = sent.to(peer, P.Welcome)
        assert welcome.version == PV
        assert welcome.info["peer"] == peer
    assert c.state.members.peers == {c.driver: "driver", b"d2": "driver", b"s": "status",
                             b"node-n1": "node", b"worker-1": "worker"}


def test_protocol_version_mismatch_is_refused_naming_both_versions(c):
    c.hello(b"old", "driver", version=PV + 41)
    [refused] = c.drain().to(b"old")
    assert type(refused) is P.Refused
    assert str(PV) in refused.reason and str(PV + 41) in refused.reason
    assert "protocol" in refused.reason
    assert b"old" not in c.state.members.peers
    c.hello(b"old-node", "node", {"node_id": "n9", "resources": {"CPU": UNIT}}, version=0)
    assert type(c.drain().to(b"old-node")[0]) is P.Refused
    assert "n9" not in c.state.members.nodes


def test_unknown_peer_kind_is_refused(c):
    c.hello(b"x", "toaster")
    [refused] = c.drain().to(b"x")
    assert type(refused) is P.Refused and "toaster" in refused.reason


def test_duplicate_node_id_is_refused(c):
    c.add_node("n1")
    c.drain()
    c.send(b"impostor", P.Hello(PV, "node", {"node_id": "n1", "resources": {"CPU": UNIT}}))
    [refused] = c.drain().to(b"impostor")
    assert type(refused) is P.Refused and "n1" in refused.reason
    assert c.node("n1").peer == b"node-n1" and c.node("n1").alive


def test_messages_from_peers_that_never_said_hello_are_dropped(c):
    stranger = b"stranger"
    c.send(stranger, P.RegisterFunction(b"fid:f", "f", b"blob"))
    c.send(stranger, P.Submit([c.spec(b"fid:f")]))
    c.send(stranger, P.Put([(b"obj", value())]))
    c.send(stranger, P.InfoRequest(1, "status"))
    c.send(stranger, P.TaskResults([P.TaskResult(b"t", [value()], 0.1)]))
    assert len(c.drain()) == 0
    c.send(stranger, P.Heartbeat({}))  # at most told it is unknown
    assert [type(m) for _, m in c.drain().pairs] in ([], [P.Refused])
    assert c.state.table.functions == {} and c.state.table.tasks == {} and c.state.directory.objects == {}


def test_messages_a_peer_kind_may_not_send_are_refused_with_a_reply(c):
    c.add_node("n1")
    c.hello(b"s", "status")
    c.drain()
    fid = c.register()
    c.send(b"s", P.Submit([c.spec(fid)]))
    c.send(b"node-n1", P.Submit([c.spec(fid)]))
    c.send(c.driver, P.TaskResults([P.TaskResult(b"t", [value()], 0.1)]))
    c.send(c.driver, P.Heartbeat({}))
    assert c.state.table.tasks == {} and c.state.directory.objects == {}
    out = c.drain()
    rejected = [(peer, m.message, m.reason) for peer, m in out.pairs if type(m) is P.Rejected]
    assert rejected == [(b"s", "Submit", "a status may not send it"),
                        (b"node-n1", "Submit", "a node may not send it"),
                        (c.driver, "TaskResults", "a driver may not send it"),
                        (c.driver, "Heartbeat", "a driver may not send it")]
    assert len(out) == 4  # and nothing else happened
    assert c.info("status", peer=b"s")["tasks"]["finished"] == 0  # status peers may ask


def test_a_peer_that_never_said_hello_gets_no_reply(c):
    c.send(b"stranger", P.Submit([]))
    # (not a wire message: the head's socket hands it on for a message it could not decode)
    c.carry_out(c.state.handle(b"stranger", P.Malformed("GetActor", 7, "GetActor: expected str"),
                               c.now))
    assert len(c.drain()) == 0


def test_a_malformed_request_gets_a_rejection_naming_it(c):
    c.carry_out(c.state.handle(c.driver, P.Malformed("GetActor", 7, "GetActor: expected str, "
                                                     "got NoneType"), c.now))
    [(peer, msg)] = c.drain().pairs
    assert peer == c.driver and msg == P.Rejected(
        "GetActor", 7, [], "malformed: GetActor: expected str, got NoneType")


def test_worker_that_says_hello_before_its_node_is_attached_when_the_node_joins(c):
    w = c.add_worker("late")
    assert c.state.members.orphan_workers["late"][0].peer == w
    c.add_node("late", cpus=1, workers=0)
    assert [x.peer for x in c.node("late").idle] == [w]
    assert c.state.members.orphan_workers == {}
    fid = c.register()
    [t] = c.submit(fid)
    assert c.drain().assigned_to() == {t: w}


def test_worker_of_a_dead_node_is_told_to_exit(c):
    c.add_node("n1")
    c.tick(c.config.heartbeat_timeout_s + 1)
    assert not c.node("n1").alive
    w = c.add_worker("n1")
    [msg] = c.drain().to(w)
    assert type(msg) is P.Exit and "n1" in msg.reason
    assert w not in c.state.members.workers


def test_a_delayed_hello_of_a_worker_of_an_earlier_incarnation_is_never_used(c):
    """A restarted head: a worker of the node's old incarnation says Hello (queued while the
    head was down) before its agent joins again as incarnation 1, having stopped it."""
    c.send(b"old-w", P.Hello(PV, "worker", {"node_id": "n1", "worker_id": "n1-1", "pid": 7,
                                            "incarnation": 0}))
    c.send(b"node-n1", P.Hello(PV, "node", {"node_id": "n1", "resources": {"CPU": UNIT},
                                            "prestart": 1, "incarnation": 1}))
    assert any(type(m) is P.Exit and "new incarnation" in m.reason for m in c.drain().to(b"old-w"))
    assert b"old-w" not in c.state.members.workers and c.node("n1").idle == []
    # a late Hello of another old worker, after the join, is refused too
    c.send(b"old-w2", P.Hello(PV, "worker", {"node_id": "n1", "worker_id": "n1-2", "pid": 8}))
    assert any(type(m) is P.Exit for m in c.drain().to(b"old-w2"))
    # while a worker of the new incarnation that overtook its node's Hello waits for it
    c.send(b"new-w", P.Hello(PV, "worker", {"node_id": "n2", "worker_id": "n2-3", "pid": 9,
                                            "incarnation": 2}))
    c.send(b"node-n2", P.Hello(PV, "node", {"node_id": "n2", "resources": {"CPU": UNIT},
                                            "prestart": 1, "incarnation": 2}))
    assert [w.peer for w in c.node("n2").idle] == [b"new-w"]
    fid = c.register()
    [t] = c.submit(fid)
    assert c.drain().assigned_to() == {t: b"new-w"}


# =========================================================================== placement


def test_task_goes_to_the_node_with_most_free_cpu(c):
    c.add_node("small", cpus=2)
    c.add_node("big", cpus=4)
    fid = c.register()
    [t] = c.submit(fid)
    sent = c.drain()
    assert sent.assigned_to()[t] in c.node_workers["big"]
    assert c.avail_cpu("big") == 3 * UNIT and c.avail_cpu("small") == 2 * UNIT
    # big has 3 free, small 2: the next goes to big again
    [t2] = c.submit(fid)
    assert c.drain().assigned_to()[t2] in c.node_workers["big"]


def test_task_goes_only_to_a_node_whose_resources_fit(c):
    c.add_node("cpu", cpus=8)
    c.add_node("gpu", cpus=1, resources={"GPU": 1})
    fid = c.register()
    [t] = c.submit(fid, resources={"GPU": 1})
    assert c.drain().assigned_to()[t] in c.node_workers["gpu"]
    assert c.node("gpu").avail["GPU"] == 0
    [t2] = c.submit(fid, resources={"GPU": 1})
    sent = c.drain()
    assert sent.assignments() == []  # the only GPU is taken: wait
    assert c.status()["tasks"]["queued"] == 1
    c.finish(c.node_workers["gpu"][0], t)
    assert c.drain().assigned_to()[t2] in c.node_workers["gpu"]


def test_assignment_carries_spec_fields_and_the_blob_only_the_first_time(c):
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register("mod.square")
    [t1] = c.submit(fid, num_returns=2)
    [a1] = c.drain().assignments(w)
    assert a1.task_id == t1 and a1.name == "mod.square" and a1.function_id == fid
    assert a1.function_blob == b"blob of mod.square"
    assert bytes(a1.args.data) == b"args" and a1.num_returns == 2 and a1.dep_values == []
    c.finish(w, t1, value(b"a"), value(b"b"))
    [t2] = c.submit(fid)
    [a2] = c.drain().assignments(w)
    assert a2.task_id == t2 and a2.function_blob is None
    # another worker has not seen the function yet
    c.add_node("n2", cpus=4)
    [t3] = c.submit(fid)
    sent = c.drain()
    [a3] = sent.assignments()
    assert sent.assigned_to()[t3] in c.node_workers["n2"]
    assert a3.function_blob == b"blob of mod.square"


def test_task_of_an_unregistered_function_fails_at_once(c):
    c.add_node("n1")
    [t] = c.submit(b"fid:never-registered")
    sent = c.drain()
    assert sent.assignments() == []
    item = sent.values(c.driver)[ret(t)]
    assert item.value.read_system_error()[0] == "TaskmeshError"
    assert "never registered" in item.value.read_system_error()[1]


# =========================================================================== dependencies


def test_dependent_task_waits_for_its_dependency_then_gets_its_value(c):
    c.add_node("n1", cpus=2)
    fid = c.register()
    [a] = c.submit(fid)
    sent = c.drain()
    wa = sent.assigned_to()[a]
    [b] = c.submit(fid, deps=[ret(a)])
    assert c.drain().assignments() == []
    assert c.status()["tasks"]["waiting_for_deps"] == 1
    c.finish(wa, a, value(b"A's result", [b"A's buffer"]))
    sent = c.drain()
    [asg] = sent.assignments()
    assert asg.task_id == b
    [dep] = asg.dep_values
    assert bytes(dep.data) == b"A's result" and [bytes(x) for x in dep.buffers] == [b"A's buffer"]
    assert c.status()["tasks"]["waiting_for_deps"] == 0


def test_task_with_several_deps_waits_for_all_of_them(c):
    c.add_node("n1", cpus=2)
    fid = c.register()
    a1, a2 = c.submit(fid, n=2)
    w = c.drain().assigned_to()
    c.put(b"put-1", value(b"P"))
    [b] = c.submit(fid, deps=[b"put-1", ret(a2), ret(a1)])
    assert c.drain().assignments() == []
    c.finish(w[a1], a1, value(b"A1"))
    assert c.drain().assignments() == []
    assert c.status()["tasks"]["waiting_for_deps"] == 1
    c.finish(w[a2], a2, value(b"A2"))
    [asg] = c.drain().assignments()
    assert asg.task_id == b
    assert [bytes(d.data) for d in asg.dep_values] == [b"P", b"A2", b"A1"]


def test_dependency_on_unknown_object_fails_with_object_lost(c):
    c.add_node("n1")
    fid = c.register()
    [t] = c.submit(fid, deps=[b"no-such-object"])
    sent = c.drain()
    assert sent.assignments() == []
    kind, message = sent.values(c.driver)[ret(t)].value.read_system_error()
    assert kind == "ObjectLostError" and b"no-such-object".hex() in message


def test_deps_are_passed_in_argument_order(c):
    c.add_node("n1", cpus=1)
    fid = c.register()
    c.put(b"x", value(b"X"))
    c.put(b"y", value(b"Y"))
    [t] = c.submit(fid, deps=[b"y", b"x", b"y"])
    [a] = c.drain().assignments()
    assert a.task_id == t and [bytes(d.data) for d in a.dep_values] == [b"Y", b"X", b"Y"]


# =========================================================================== results to the owner


def test_owner_gets_small_values_inline_and_large_ones_as_readiness_only():
    c = Cluster(inline_push_bytes=100)
    c.add_node("n1", cpus=3)
    fid = c.register()
    small, big, err = c.submit(fid, n=3)
    sent = c.drain()
    w = sent.assigned_to()
    c.finish(w[small], small, value(b"s" * 100))
    c.finish(w[big], big, value(b"b" * 50, [b"B" * 51]))  # 101 bytes counting buffers
    c.finish(w[err], err, task_error(b"E" * 1000))  # errors always travel inline
    vals = c.drain().values(c.driver)
    assert bytes(vals[ret(small)].value.data) == b"s" * 100 and vals[ret(small)].nbytes == 100
    assert vals[ret(big)].value is None and vals[ret(big)].nbytes == 101
    assert vals[ret(err)].value.flags == SO.TASK_ERROR
    assert bytes(vals[ret(err)].value.data) == b"E" * 1000
    # the head keeps the large value for whoever asks
    c.send(c.driver, P.Subscribe([ret(big)]))
    [item] = c.drain().values(c.driver).values()
    assert [bytes(b) for b in item.value.buffers] == [b"B" * 51]


def test_every_return_of_a_multi_return_task_is_pushed(c):
    c.add_node("n1")
    fid = c.register()
    [t] = c.submit(fid, num_returns=3)
    [w] = c.node_workers["n1"]
    c.drain()
    c.finish(w, t, value(b"0"), value(b"1"), value(b"2"))
    vals = c.drain().values(c.driver)
    assert {k: bytes(v.value.data) for k, v in vals.items()} == {
        ret(t, 0): b"0", ret(t, 1): b"1", ret(t, 2): b"2"}


def test_wrong_number_of_returns_is_an_error_for_every_return(c):
    c.add_node("n1")
    fid = c.register()
    [t] = c.submit(fid, num_returns=2)
    [w] = c.node_workers["n1"]
    c.drain()
    c.finish(w, t, value(b"only one"))
    vals = c.drain().values(c.driver)
    for i in range(2):
        kind, message = vals[ret(t, i)].value.read_system_error()
        assert kind == "TaskmeshError" and "returned 1 values" in message and "expected 2" in message


def test_subscribers_get_the_value_when_it_arrives_and_unknown_objects_are_lost(c):
    c.add_node("n1")
    c.hello(b"other-driver", "driver")
    fid = c.register()
    [t] = c.submit(fid)
    [w] = c.node_workers["n1"]
    c.drain()
    c.send(b"other-driver", P.Subscribe([ret(t), ret(t), b"nope"]))
    [lost] = c.drain().values(b"other-driver").values()
    assert lost.object_id == b"nope" and lost.value.read_system_error()[0] == "ObjectLostError"
    c.finish(w, t, value(b"R"))
    sent = c.drain()
    [m] = sent.to(b"other-driver", P.ObjectValues)
    assert len(m.items) == 1 and bytes(m.items[0].value.data) == b"R"  # subscribed twice, sent once
    # already available: answered at once
    c.send(b"other-driver", P.Subscribe([ret(t)]))
    assert bytes(c.drain().values(b"other-driver")[ret(t)].value.data) == b"R"


def test_results_from_the_wrong_worker_are_ignored(c):
    c.add_node("n1", cpus=2)
    fid = c.register()
    [t] = c.submit(fid)
    w = c.drain().assigned_to()[t]
    other = next(x for x in c.node_workers["n1"] if x != w)
    c.finish(other, t, value(b"forged"))
    assert c.drain().values(c.driver) == {}
    c.finish(w, t, value(b"real"))
    assert bytes(c.drain().values(c.driver)[ret(t)].value.data) == b"real"
    c.finish(w, t, value(b"again"))  # duplicate
    assert c.drain().values(c.driver) == {}


# =========================================================================== failures propagate


def test_failed_task_error_propagates_to_dependents_without_running_them(c):
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    [a] = c.submit(fid)
    [b] = c.submit(fid, deps=[ret(a)])
    [d] = c.submit(fid, deps=[ret(b)], num_returns=2)
    assert [x.task_id for x in c.drain().assignments()] == [a]
    err = task_error(b"the pickled error of a")
    c.finish(w, a, err)
    sent = c.drain()
    assert sent.assignments() == []
    vals = sent.values(c.driver)
    for oid in (ret(a), ret(b), ret(d, 0), ret(d, 1)):
        assert vals[oid].value.flags == SO.TASK_ERROR
        assert bytes(vals[oid].value.data) == b"the pickled error of a"
    assert c.state.table.tasks == {}
    # a task submitted later on the failed object fails the same way, at once
    [e] = c.submit(fid, deps=[ret(b)])
    sent = c.drain()
    assert sent.assignments() == []
    assert bytes(sent.values(c.driver)[ret(e)].value.data) == b"the pickled error of a"


def test_failed_dependency_of_a_multi_dep_task_fails_it_even_if_others_are_pending(c):
    c.add_node("n1", cpus=2)
    fid = c.register()
    a, b = c.submit(fid, n=2)
    w = c.drain().assigned_to()
    [d] = c.submit(fid, deps=[ret(a), ret(b)])
    c.finish(w[b], b, task_error(b"b failed"))
    sent = c.drain()
    assert bytes(sent.values(c.driver)[ret(d)].value.data) == b"b failed"
    c.finish(w[a], a, value(b"a ok"))  # a arrives later: d must not run
    sent = c.drain()
    assert sent.assignments() == []
    assert set(sent.values(c.driver)) == {ret(a)}


# =========================================================================== blocking in get()


def test_blocked_lends_the_cpu_returns_unstarted_tasks_and_starts_a_worker(c):
    c.add_node("n1", cpus=1)
    [w1] = c.node_workers["n1"]
    fid = c.register()
    c.warm(fid, SHORT)
    tids = c.submit(fid, n=5)
    sent = c.drain()
    mine = [a.task_id for a in sent.assignments(w1)]
    assert mine[0] == tids[0] and len(mine) >= 2  # pipelined behind the running one
    assert c.avail_cpu("n1") == 0
    c.send(w1, blocked(mine[1:]))
    assert c.avail_cpu("n1") == UNIT  # lent
    assert list(c.state.scheduler.queues.values())[0][0].spec.task_id == tids[1]  # back at the front, in order
    assert [t.spec.task_id for t in c.state.members.workers[w1].assigned] == [tids[0]]
    sent = c.later(1.0)  # (the head may wait a moment before starting a process)
    [(peer, start)] = sent.of(P.StartWorkers)
    assert peer == c.node_peer["n1"] and start.count == 1
    assert sent.assignments() == []  # nobody else to run them yet
    w2 = c.add_worker("n1")
    sent = c.drain()
    got = [a.task_id for a in sent.assignments(w2)]
    assert got[0] == tids[1] and got == tids[1:1 + len(got)]
    assert sent.assignments(w2)[0].function_blob is not None  # w2 never saw the function
    assert c.avail_cpu("n1") == 0
    c.send(w1, P.Unblocked())
    assert c.avail_cpu("n1") == -UNIT  # takes it back: briefly oversubscribed
    c.send(w1, P.Unblocked())  # duplicate: no double take
    assert c.avail_cpu("n1") == -UNIT


def test_blocked_twice_lends_once_and_finishing_while_blocked_does_not_return_the_cpu_twice(c):
    c.add_node("n1", cpus=2)
    fid = c.register()
    [t] = c.submit(fid)
    w = c.drain().assigned_to()[t]
    c.send(w, blocked([]))
    c.send(w, blocked([]))
    assert c.avail_cpu("n1") == 2 * UNIT
    c.finish(w, t)  # finished while blocked: its lease was already lent
    assert c.avail_cpu("n1") == 2 * UNIT
    assert not c.state.members.workers[w].blocked
    assert sum(1 for x in c.node("n1").idle if x.peer == w) == 1


def test_blocked_worker_gets_no_pipelined_tasks(c):
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    c.warm(fid, SHORT)
    [t] = c.submit(fid)
    c.drain()
    c.send(w, blocked([]))
    c.submit(fid, n=3)
    sent = c.drain()
    sent.pairs += c.later(1.0).pairs
    assert sent.assignments(w) == []
    assert len(sent.of(P.StartWorkers)) == 1


def test_new_workers_start_only_after_a_short_grace_when_cpu_is_lent():
    """Most blocks are short, so CPU lent a moment ago does not start a process at once."""
    from taskmesh._head import scheduler as scheduler_mod
    grace = scheduler_mod.START_GRACE_S
    c = Cluster()
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    [t, queued] = c.submit(fid, n=2)
    c.drain()
    c.send(w, blocked([]))
    if grace > 0:
        assert c.drain().of(P.StartWorkers) == []
        c.now += grace / 2
        c.send_all([])  # a scheduling round with no message
        assert c.drain().of(P.StartWorkers) == []
    sent = c.later(grace + 0.01)
    assert [(p, m.count) for p, m in sent.of(P.StartWorkers)] == [(c.node_peer["n1"], 1)]
    assert c.later(1.0).of(P.StartWorkers) == []  # already starting one


# =========================================================================== help (nested tasks)


def nested_setup(c, children=2, **child_kw):
    """A 1-CPU node whose only worker runs a parent task that submits children."""
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    parent_fn = c.register("mod.parent")
    [parent] = c.submit(parent_fn)
    assert c.drain().assigned_to() == {parent: w}
    child_fn = c.register("mod.child", owner=w)
    kids = c.submit(child_fn, n=children, owner=w, **child_kw)
    assert c.drain().assignments() == []  # no free worker
    return w, parent, kids


def test_blocked_worker_is_handed_the_tasks_it_waits_for_as_help(c):
    w, parent, kids = nested_setup(c)
    c.send(w, blocked([], [ret(k) for k in kids]))
    sent = c.drain()
    [help_msg] = sent.to(w, P.Help)
    assert [a.task_id for a in help_msg.assignments] == kids
    assert help_msg.assignments[0].function_blob == b"blob of mod.child"
    assert help_msg.assignments[1].function_blob is None
    assert c.avail_cpu("n1") == 0  # it runs them on the CPU it holds
    assert c.status()["tasks"]["queued"] == 0
    assert c.later(1.0).of(P.StartWorkers) == []  # no extra process needed
    for k in kids:
        c.finish(w, k, value(b"child " + k))
    vals = c.drain().values(w)  # the worker owns the children's results
    assert {bytes(vals[ret(k)].value.data) for k in kids} == {b"child " + k for k in kids}
    c.send(w, blocked([], []))
    c.send(w, P.Unblocked())
    c.finish(w, parent, value(b"sum"))
    assert bytes(c.drain().values(c.driver)[ret(parent)].value.data) == b"sum"
    assert c.avail_cpu("n1") == UNIT and c.state.table.tasks == {}


def test_help_only_offers_ready_tasks_of_the_same_shape(c):
    w, parent, [big] = nested_setup(c, children=1, cpus=2)  # needs 2 CPUs: not on this worker
    child_fn = c.register("mod.child", owner=w)
    [waiting] = c.submit(child_fn, owner=w, deps=[ret(big)])  # not ready yet
    c.drain()
    c.send(w, blocked([], [ret(big), ret(waiting)]))
    sent = c.drain()
    assert sent.to(w, P.Help) == []
    assert c.avail_cpu("n1") == UNIT  # lent while it waits
    assert c.state.members.workers[w].blocked


def test_status_counts_only_tasks_still_queued_after_help(c):
    w, parent, kids = nested_setup(c, children=3)
    # the worker waits only for the last two; the first stays queued ahead of them
    c.send(w, blocked([], [ret(k) for k in kids[1:]]))
    [help_msg] = c.drain().to(w, P.Help)
    assert [a.task_id for a in help_msg.assignments] == kids[1:]
    assert c.status()["tasks"]["queued"] == 1
    assert c.status()["tasks"]["running"] == 3


# =========================================================================== retry_exceptions


def test_retry_exceptions_reruns_a_raising_task_until_retries_run_out(c):
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    [t] = c.submit(fid, max_retries=1, retry_exceptions=True)
    c.drain()
    c.finish(w, t, task_error(b"first failure"))
    sent = c.drain()
    assert sent.values(c.driver) == {}  # not delivered: retried
    assert [a.task_id for a in sent.assignments(w)] == [t]
    c.finish(w, t, task_error(b"second failure"))
    sent = c.drain()
    assert bytes(sent.values(c.driver)[ret(t)].value.data) == b"second failure"
    assert sent.assignments() == [] and c.state.table.tasks == {}


def test_without_retry_exceptions_a_raising_task_fails_at_once(c):
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    [t] = c.submit(fid, max_retries=5)
    c.drain()
    c.finish(w, t, task_error(b"failure"))
    assert bytes(c.drain().values(c.driver)[ret(t)].value.data) == b"failure"


# =========================================================================== worker and node death


def test_worker_death_retries_then_fails_with_worker_crashed_error(c):
    c.add_node("n1", cpus=1)
    fid = c.register("mod.fragile")
    c.warm(fid, SHORT)  # so tasks pipeline behind the running one
    [w1] = c.node_workers["n1"]
    first, *rest = c.submit(fid, n=4, max_retries=1)
    sent = c.drain()
    on_w1 = [a.task_id for a in sent.assignments(w1)]
    assert on_w1[0] == first and len(on_w1) >= 2
    c.exited(w1, exitcode=-9)
    sent = c.drain()
    assert sent.values(c.driver) == {}  # retried, nothing failed
    tasks = c.state.table.tasks
    assert tasks[first].retries_left == 0
    assert all(tasks[t].retries_left == 1 for t in rest)  # queued ones keep their retries
    queued = [t.spec.task_id for q in c.state.scheduler.queues.values() for t in q]
    assert queued == [first, *rest]
    assert w1 not in c.state.members.workers and c.avail_cpu("n1") == UNIT
    assert [p for p, _ in sent.of(P.StartWorkers)] == [c.node_peer["n1"]]  # a replacement
    w2 = c.add_worker("n1")
    sent = c.drain()
    on_w2 = [a.task_id for a in sent.assignments(w2)]
    assert on_w2[0] == first
    node_id, worker_id, pid = c.worker_info[w2]
    c.exited(w2, exitcode=-9)
    sent = c.drain()
    item = sent.values(c.driver)[ret(first)]
    kind, message = item.value.read_system_error()
    assert kind == "WorkerCrashedError"
    assert "mod.fragile" in message and str(pid) in message and "SIGKILL" in message
    assert "n1" in message and "max_retries=1" in message
    assert first not in c.state.table.tasks
    assert all(c.state.table.tasks[t].retries_left == 1 for t in rest)


def test_worker_exit_code_is_described(c):
    c.add_node("n1", cpus=1)
    fid = c.register()
    [t] = c.submit(fid, max_retries=0)
    [w] = c.node_workers["n1"]
    c.drain()
    c.exited(w, exitcode=3)
    kind, message = c.drain().values(c.driver)[ret(t)].value.read_system_error()
    assert kind == "WorkerCrashedError" and "exited with code 3" in message


def test_infinite_retries(c):
    c.add_node("n1", cpus=1)
    fid = c.register()
    [t] = c.submit(fid, max_retries=-1)
    for _ in range(5):
        [w] = [x for x in c.node_workers["n1"] if x in c.state.members.workers]
        c.drain()
        c.exited(w)
        assert c.state.table.tasks[t].retries_left == -1
        c.add_worker("n1")
    assert c.drain().assigned_to()[t]


def test_idle_worker_death_and_unregistered_worker_death(c):
    c.add_node("n1", cpus=2)
    w1, w2 = c.node_workers["n1"]
    c.exited(w1)
    assert [x.peer for x in c.node("n1").idle] == [w2]
    assert c.drain().values(c.driver) == {}
    # a worker the node started that died before saying Hello
    c.node("n1").starting = 1
    c.worker_info[b"never-said-hello"] = ("n1", "w-nsh", 4242)
    c.exited(b"never-said-hello", exitcode=1)
    assert c.node("n1").starting == 0
    assert c.drain().values(c.driver) == {}


def test_worker_whose_exit_overtakes_its_hello_gets_no_tasks(c):
    c.add_node("n1", cpus=2, workers=1)
    [w1] = c.node_workers["n1"]
    fid = c.register()
    [t] = c.submit(fid)
    c.drain()
    # the node agent reports the exit of its new worker before that worker's Hello arrived
    c.worker_info[b"worker-late"] = ("n1", "w-late", 4343)
    c.exited(b"worker-late", exitcode=1)
    c.send(b"worker-late", P.Hello(PV, "worker", {"node_id": "n1", "worker_id": "w-late",
                                                 "pid": 4343}))
    assert all(x.peer != b"worker-late" for x in c.node("n1").idle)
    c.finish(w1, t)
    c.submit(fid, n=2)
    assert b"worker-late" not in set(c.drain().assigned_to().values())


def test_node_heartbeat_timeout_declares_it_dead_and_requeues_or_fails_its_tasks():
    c = Cluster(heartbeat_timeout_s=10.0, idle_worker_timeout_s=1000.0)
    c.add_node("n1", cpus=2)
    fid = c.register("mod.g")
    [doomed] = c.submit(fid, max_retries=0)
    [survivor] = c.submit(fid, max_retries=2)
    assert len(c.drain().assignments()) == 2
    sent = c.tick(9.0)
    assert c.node("n1").alive and len(sent) == 0
    sent = c.tick(15.0, heartbeats=["n1"])  # heartbeats keep it alive
    assert c.node("n1").alive
    assert [type(m) for m in sent.to(c.node_peer["n1"])] == [P.HeartbeatAck]
    sent = c.tick(25.5)
    assert not c.node("n1").alive
    kind, message = sent.values(c.driver)[ret(doomed)].value.read_system_error()
    assert kind == "NodeLostError" and "mod.g" in message and "n1" in message
    assert "no heartbeat" in message
    assert c.state.table.tasks[survivor].retries_left == 1
    assert c.state.members.workers == {}
    assert [n["Alive"] for n in c.info("nodes")] == [False]
    # late messages from the dead node and its workers are dropped
    c.heartbeat("n1")
    c.finish(c.node_workers["n1"][0], survivor)
    assert [type(m) for _, m in c.drain().pairs] in ([], [P.Refused])  # "you were declared dead"
    assert c.state.table.tasks[survivor].retries_left == 1
    # a new node picks the task up
    c.add_node("n2", cpus=1)
    assert c.drain().assigned_to()[survivor] in c.node_workers["n2"]
    # the dead node may come back under the same id
    c.add_node("n1", cpus=1)
    assert c.node("n1").alive


def test_a_node_that_says_goodbye_is_lost_at_once_and_its_tasks_run_elsewhere(c):
    c.add_node("n1", cpus=1)
    fid = c.register("mod.g")
    [t] = c.submit(fid)
    assert c.drain().assigned_to()[t] in c.node_workers["n1"]
    c.send(c.node_peer["n1"], P.Goodbye())  # `taskmesh stop` on its machine
    assert not c.node("n1").alive
    assert c.state.table.tasks[t].retries_left == 2  # lost with its node: one retry spent
    c.add_node("n2", cpus=1)
    assert c.drain().assigned_to()[t] in c.node_workers["n2"]


def test_node_reregistering_on_the_same_connection_replaces_the_old_record(c):
    c.add_node("n1", cpus=1)
    fid = c.register()
    [t] = c.submit(fid)
    c.drain()
    c.send(b"node-n1", P.Hello(PV, "node", {"node_id": "n1", "resources": {"CPU": 2 * UNIT}}))
    assert c.node("n1").total == {"CPU": 2 * UNIT}
    assert c.state.table.tasks[t].retries_left == 2  # its running task was retried


# =========================================================================== object lifetime


def test_release_of_an_available_object_with_no_dependents_frees_it(c):
    c.put(b"x", value())
    assert b"x" in c.state.directory.objects
    c.send(c.driver, P.Release([b"x"]))
    assert b"x" not in c.state.directory.objects


def test_release_by_someone_other_than_the_owner_is_ignored(c):
    c.hello(b"d2", "driver")
    c.put(b"x", value())
    c.send(b"d2", P.Release([b"x"]))
    assert b"x" in c.state.directory.objects


def test_released_object_stays_while_a_pending_task_depends_on_it(c):
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    c.put(b"x", value(b"X"))
    [a] = c.submit(fid)
    [b] = c.submit(fid, deps=[b"x", ret(a)])
    c.drain()
    c.send(c.driver, P.Release([b"x"]))
    assert b"x" in c.state.directory.objects  # b still needs it
    c.finish(w, a, value(b"A"))
    [asg] = c.drain().assignments()
    assert asg.task_id == b and [bytes(d.data) for d in asg.dep_values] == [b"X", b"A"]
    assert b"x" in c.state.directory.objects  # b has not finished
    c.finish(w, b)
    assert b"x" not in c.state.directory.objects
    assert ret(a) in c.state.directory.objects  # not released by the driver
    c.send(c.driver, P.Release([ret(a), ret(b)]))
    assert c.state.directory.objects == {}


def test_released_return_is_dropped_when_it_arrives_and_not_pushed(c):
    c.add_node("n1")
    [w] = c.node_workers["n1"]
    fid = c.register()
    [t] = c.submit(fid)
    c.drain()
    c.send(c.driver, P.Release([ret(t)]))
    assert ret(t) in c.state.directory.objects  # no value yet
    c.finish(w, t)
    assert ret(t) not in c.state.directory.objects
    assert c.drain().values(c.driver) == {}


def test_release_of_a_dependency_whose_producer_fails(c):
    """The owner keeps only the dependent's ref; the producer fails. Nothing may crash."""
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    [a] = c.submit(fid)
    [b] = c.submit(fid, deps=[ret(a)])
    c.drain()
    c.send(c.driver, P.Release([ret(a)]))
    c.finish(w, a, task_error(b"a failed"))
    vals = c.drain().values(c.driver)
    assert bytes(vals[ret(b)].value.data) == b"a failed"
    assert ret(a) not in c.state.directory.objects


def test_failed_task_of_unregistered_function_does_not_free_its_dependencies(c):
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    c.put(b"x", value(b"X"))
    [a] = c.submit(fid)
    [b] = c.submit(fid, deps=[b"x", ret(a)])
    c.drain()
    c.send(c.driver, P.Release([b"x"]))
    [bad] = c.submit(b"fid:unregistered", deps=[b"x"])  # fails at once
    assert ret(bad) in c.drain().values(c.driver)
    assert b"x" in c.state.directory.objects, "x was freed although task b still depends on it"
    assert c.state.directory.objects[b"x"].dependents == 1
    c.finish(w, a)
    [asg] = c.drain().assignments()
    assert asg.task_id == b and bytes(asg.dep_values[0].data) == b"X"


def test_task_with_a_missing_dependency_does_not_free_its_other_dependencies(c):
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    c.put(b"x", value(b"X"))
    [a] = c.submit(fid)
    [b] = c.submit(fid, deps=[b"x", ret(a)])
    c.drain()
    c.send(c.driver, P.Release([b"x"]))
    [bad] = c.submit(fid, deps=[b"missing", b"x"])  # fails with ObjectLostError
    assert c.drain().values(c.driver)[ret(bad)].value.read_system_error()[0] == "ObjectLostError"
    assert b"x" in c.state.directory.objects, "x was freed although task b still depends on it"
    assert c.state.directory.objects[b"x"].dependents == 1


def test_objects_owned_by_a_crashed_worker_live_exactly_as_long_as_refs_to_them(c):
    """A worker that runs nested tasks owns their results and its put()s. When it dies its own
    refs die with it; refs it handed out (here: one the driver borrowed) keep theirs alive."""
    w, parent, [kid] = nested_setup(c, children=1)
    c.put(b"shared-by-worker", value(b"P"), owner=w)
    c.put(b"private-to-worker", value(b"Q"), owner=w)
    c.send(c.driver, P.Borrow([b"shared-by-worker"]))  # the driver unpickled a ref to it
    c.exited(w)
    c.add_worker("n1")
    c.add_worker("n1")
    for _ in range(3):  # run whatever is handed out
        for tid, peer in c.drain().assigned_to().items():
            c.finish(peer, tid)
    assert parent not in c.state.table.tasks
    assert b"private-to-worker" not in c.state.directory.objects
    c.send(c.driver, P.Subscribe([b"shared-by-worker"]))
    got = [i for m in c.drain().to(c.driver) if isinstance(m, P.ObjectValues) for i in m.items]
    assert [i.object_id for i in got] == [b"shared-by-worker"] and got[0].value.data == b"P"
    c.send(c.driver, P.Release([b"shared-by-worker"]))  # the borrower let go: now it goes
    assert b"shared-by-worker" not in c.state.directory.objects


def test_goodbye_releases_what_the_driver_owned(c):
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    c.put(b"x", value())
    [t] = c.submit(fid)
    c.drain()
    c.send(c.driver, P.Goodbye())
    assert b"x" not in c.state.directory.objects and c.driver not in c.state.members.peers
    c.finish(w, t)  # its result is discarded, nothing pushed to the departed driver
    assert c.state.directory.objects == {}
    assert c.drain().to(c.driver) == []


# =========================================================================== pipelining


def test_short_function_is_pipelined_more_than_one_task_per_worker(c):
    c.add_node("n1", cpus=2)
    fid = c.register()
    c.warm(fid, SHORT)
    c.submit(fid, n=20)
    sent = c.drain()
    per_worker = {w: len(sent.assignments(w)) for w in c.node_workers["n1"]}
    assert all(n > 1 for n in per_worker.values()), per_worker
    assert sum(per_worker.values()) <= 20


def test_pipelining_respects_max_pipeline():
    c = Cluster(max_pipeline=3)
    c.add_node("n1", cpus=2)
    fid = c.register()
    c.warm(fid, SHORT)
    c.submit(fid, n=20)
    sent = c.drain()
    assert [len(sent.assignments(w)) for w in c.node_workers["n1"]] == [3, 3]
    assert c.status()["tasks"]["queued"] == 14


@pytest.mark.parametrize("mean", [None, LONG], ids=["unknown", "long"])
def test_unknown_or_long_function_gets_one_task_per_worker(c, mean):
    c.add_node("n1", cpus=2)
    fid = c.register()
    if mean is not None:
        c.warm(fid, mean)
    c.submit(fid, n=6)
    sent = c.drain()
    assert [len(sent.assignments(w)) for w in c.node_workers["n1"]] == [1, 1]
    assert c.status()["tasks"]["queued"] == 4
    assert sent.of(P.StartWorkers) == []  # the node is full


def test_queued_tasks_are_dispatched_as_workers_free_up(c):
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    tids = c.submit(fid, n=3)
    for expected in tids:
        [a] = c.drain().assignments(w)
        assert a.task_id == expected
        c.finish(w, a.task_id)
    assert c.status()["tasks"]["finished"] == 3


def test_short_tasks_are_not_pipelined_behind_a_slow_running_task(c):
    """policy.py: 'Unknown or long functions are never pipelined, so one slow task cannot hold
    short ones hostage.'"""
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    slow = c.register("mod.slow")
    short = c.register("mod.short")
    c.warm(short, SHORT)
    [s] = c.submit(slow)  # unknown duration, runs on w
    assert c.drain().assigned_to() == {s: w}
    c.submit(short, n=5)
    sent = c.drain()
    assert sent.assignments(w) == [], "short tasks were queued behind a task of unknown duration"


def test_blob_is_not_resent_after_the_worker_handed_the_task_back(c):
    """The blob goes to a worker once, even if the assignment that carried it is handed back
    unstarted (Blocked): the worker keeps the code of tasks it returns."""
    c.add_node("other", cpus=1)
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    [w_other] = c.node_workers["other"]
    f = c.register("mod.f")
    g = c.register("mod.g")
    # learn that f is short on the other node, then lose that node's worker
    [t] = c.submit(f)
    assert c.drain().assigned_to()[t] == w_other
    c.finish(w_other, t, duration=SHORT)
    c.exited(w_other)
    c.drain()
    # g is short too and known to w
    c.warm(g, SHORT)
    [running] = c.submit(g)
    assert c.drain().assigned_to() == {running: w}
    fs = c.submit(f, n=2)
    sent = c.drain()
    first_f = [a for a in sent.assignments(w) if a.function_id == f]
    assert first_f and first_f[0].function_blob == b"blob of mod.f"  # pipelined behind `running`
    c.send(w, blocked([a.task_id for a in first_f]))  # handed back unstarted
    c.send(w, P.Unblocked())
    c.finish(w, running, duration=SHORT)
    sent = c.drain()
    again = [a for a in sent.assignments(w) if a.function_id == f]
    assert again and again[0].task_id == fs[0]
    assert again[0].function_blob is None


# =========================================================================== idle workers


def test_idle_surplus_workers_exit_after_the_idle_timeout():
    c = Cluster(idle_worker_timeout_s=10.0, heartbeat_timeout_s=1000.0)
    c.add_node("n1", cpus=1, workers=3)
    c.drain()
    assert len(c.tick(9.0)) == 0
    sent = c.tick(10.5)
    exits = sent.of(P.Exit)
    assert len(exits) == 2 and all("idle" in m.reason for _, m in exits)
    gone = {p for p, _ in exits}
    assert len(c.node("n1").workers) == 1
    assert all(p not in c.state.members.workers for p in gone)
    # their exits are expected, not crashes
    for p in gone:
        c.exited(p, exitcode=0)
    assert len(c.node("n1").workers) == 1 and len(c.drain()) == 0
    assert len(c.tick(100.0)) == 0  # one worker per CPU stays forever


def test_busy_or_recently_idle_workers_are_not_retired():
    c = Cluster(idle_worker_timeout_s=10.0, heartbeat_timeout_s=1000.0)
    c.add_node("n1", cpus=1, workers=2)
    fid = c.register()
    [t] = c.submit(fid)
    w = c.drain().assigned_to()[t]
    c.now = 8.0
    c.finish(w, t)  # w idle since 8
    c.drain()
    sent = c.tick(12.0)
    [(peer, _)] = sent.of(P.Exit)
    assert peer != w  # the one idle since 0 goes
    assert len(c.tick(15.0)) == 0


# =========================================================================== notices


def test_task_no_node_can_run_warns_its_owner_once(c):
    c.add_node("n1", cpus=2)
    fid = c.register("mod.huge")
    [t] = c.submit(fid, cpus=4)
    sent = c.drain()
    [notice] = sent.to(c.driver, P.Notice)
    assert notice.level == "warning"
    assert "mod.huge" in notice.message and "CPU=4" in notice.message and "CPU=2" in notice.message
    assert sent.assignments() == []
    c.submit(fid, cpus=4)
    assert c.drain().to(c.driver, P.Notice) == []
    # it runs when a big enough node joins
    c.add_node("big", cpus=8)
    assert t in c.drain().assigned_to()


def test_task_needing_a_missing_custom_resource_warns(c):
    c.add_node("n1", cpus=2)
    fid = c.register()
    c.submit(fid, resources={"TPU": 1})
    [notice] = c.drain().to(c.driver, P.Notice)
    assert "TPU=1" in notice.message


def test_no_notice_for_a_task_that_fits_a_busy_node(c):
    c.add_node("n1", cpus=1)
    fid = c.register()
    c.submit(fid, n=3)
    assert c.drain().to(c.driver, P.Notice) == []


# =========================================================================== info


def test_info_requests(c):
    c.add_node("n1", cpus=2, address="10.1.1.1", resources={"GPU": 1})
    c.add_node("n2", cpus=4, address="10.1.1.2")
    fid = c.register()
    [t] = c.submit(fid, resources={"GPU": 0.5})
    c.submit(fid, deps=[ret(t)])
    c.drain()
    nodes = c.info("nodes")
    assert [n["NodeID"] for n in nodes] == ["n1", "n2"]
    n1 = nodes[0]
    assert n1["Alive"] is True and n1["NodeManagerAddress"] == "10.1.1.1"
    assert n1["NodeManagerHostname"] == "host-n1"
    assert n1["Resources"] == {"CPU": 2 * UNIT, "GPU": UNIT}
    assert n1["Available"] == {"CPU": UNIT, "GPU": UNIT // 2}
    assert n1["CPUsInUse"] == UNIT and n1["Workers"] == 2 and n1["TasksRunning"] == 1
    assert c.info("resources") == {"CPU": 6 * UNIT, "GPU": UNIT,
                                   "node:10.1.1.1": UNIT, "node:10.1.1.2": UNIT}
    assert c.info("available") == {"CPU": 5 * UNIT, "GPU": UNIT // 2,
                                   "node:10.1.1.1": UNIT, "node:10.1.1.2": UNIT}
    status = c.info("status")
    assert status["tasks"] == {"queued": 0, "waiting_for_deps": 1, "running": 1,
                               "finished": 0, "failed": 0}
    assert status["drivers"] == 1 and status["objects"] == 2
    assert [n["NodeID"] for n in status["nodes"]] == ["n1", "n2"]
    assert "error" in c.info("bogus")


def test_available_never_reports_negative_amounts(c):
    c.add_node("n1", cpus=1)
    fid = c.register()
    [t] = c.submit(fid)
    w = c.drain().assigned_to()[t]
    c.send(w, blocked([]))
    w2 = c.add_worker("n1")
    c.submit(fid)
    c.drain()
    c.send(w, P.Unblocked())
    assert c.avail_cpu("n1") < 0
    assert c.info("available")["CPU"] == 0
    assert c.info("nodes")[0]["Available"]["CPU"] == 0
    assert w2 in c.state.members.workers


# =========================================================================== robustness


def test_stray_results_from_an_idle_worker_do_not_duplicate_it(c):
    c.add_node("n1", cpus=2)
    fid = c.register()
    [t] = c.submit(fid)
    w = c.drain().assigned_to()[t]
    c.finish(w, t)
    c.finish(w, t)  # a late duplicate
    c.send(w, P.TaskResults([]))
    idle = [x.peer for x in c.node("n1").idle]
    assert sorted(idle) == sorted(set(idle)), f"worker listed twice as idle: {idle}"
    a, b = c.submit(fid, n=2)
    placed = c.drain().assigned_to()
    assert placed[a] != placed[b], "two tasks were given to the same idle worker"


def test_duplicate_task_ids_are_dropped(c):
    c.add_node("n1", cpus=2)
    fid = c.register()
    spec = c.spec(fid)
    c.send(c.driver, P.Submit([spec, spec]))
    assert len(c.drain().assignments()) == 1


# =========================================================================== work stealing


@pytest.mark.parametrize("unplaceable", [False, True], ids=["alone", "beside-an-unplaceable-task"])
def test_an_idle_node_gets_work_back_from_a_worker_stuck_on_a_long_task(unplaceable):
    """Mixed durations: a usually short function is pipelined (20 behind the running one),
    then the running call takes long. Once another node has run everything else, it takes
    back half of what waits behind the stuck one (also while a task no node can run waits
    at the head: it used to turn stealing off for the whole cluster)."""
    c = Cluster(idle_worker_timeout_s=1000.0)
    c.add_node("n1", cpus=1)
    if unplaceable:
        c.submit(c.register("mod.huge"), 1, cpus=64)
    fid = c.register()
    c.warm(fid, 1e-4)  # short: pipelined
    c.submit(fid, 30)
    [w1] = c.node_workers["n1"]
    worker = c.state.members.workers[w1]
    c.drain()
    waiting = [t.spec.task_id for t in list(worker.assigned)[1:]]
    assert len(waiting) >= 4 and c.state.scheduler.queues  # the rest waits at the head
    c.add_node("n2", cpus=1)
    [w2] = c.node_workers["n2"]
    while c.state.members.workers[w2].assigned:  # n2 runs what the head had, and falls idle
        assert not c.drain().of(P.Revoke)  # (no stealing while it has work)
        c.finish(w2, c.state.members.workers[w2].assigned[0].spec.task_id, duration=1e-4)
    assert not c.drain().of(P.Revoke)  # w1 reported a moment ago: it may just be busy
    sent = c.tick(1.0, heartbeats=["n1", "n2"])  # a second without a result from w1
    [revoke] = sent.to(w1, P.Revoke)
    [bell] = sent.to(c.node_peer["n1"], P.InterruptTask)
    assert bell.task_id == bytes(16) and bell.worker_id == c.worker_info[w1][1]
    k = len(waiting) // 2
    assert revoke.task_ids == waiting[-k:]  # the back half of those behind the running one
    c.send(w1, P.Returned(revoke.task_ids[:-1]))  # it had started the last one meanwhile
    sent = c.drain()
    assert sent.assigned_to() and set(sent.assigned_to().values()) == {w2}
    for tid in revoke.task_ids[:-1]:  # on n2, or queued at the head for it: never back on w1
        t = c.state.table.tasks[tid]
        assert (t.worker is not None and t.worker.peer == w2) or t.state == READY, tid
    assert len(worker.assigned) == 1 + len(waiting) - (k - 1)
    assert not worker.revoking and c.state.scheduler.stolen == k - 1


def test_no_stealing_while_tasks_wait_at_the_head_or_for_short_queues():
    c = Cluster(idle_worker_timeout_s=1000.0, max_pipeline=2)
    c.add_node("n1", cpus=1)
    fid = c.register()
    c.warm(fid, 1e-4)
    c.submit(fid, 10)  # 2 on the worker, 8 queued at the head
    c.drain()
    g = c.register("mod.big")
    c.submit(g, 1, cpus=4)  # a shape no node fits: stays queued
    c.add_node("n2", cpus=1)
    assert not c.drain().of(P.Revoke)


# =========================================================================== placement options


def test_hard_node_affinity_runs_only_there_and_fails_for_a_dead_node():
    c = Cluster(idle_worker_timeout_s=1000.0)
    c.add_node("n1", cpus=2)
    c.add_node("n2", cpus=2)
    fid = c.register()
    spec = build(P.TaskSpec, task_id=b"pinned-task-0001", name="f", function_id=fid, args=None,
                 deps=[], num_returns=1, resources={"CPU": UNIT}, max_retries=3,
                 retry_exceptions=False, strategy="node:n2")
    c.send(c.driver, P.Submit([spec]))
    assert c.drain().assigned_to()[spec.task_id] in c.node_workers["n2"]
    gone = spec._replace(task_id=b"pinned-task-0002", strategy="node:n9")
    c.send(c.driver, P.Submit([gone]))
    kind, message = c.drain().values(c.driver)[ret(gone.task_id)].value.read_system_error()
    assert kind == "TaskUnschedulableError" and "n9" in message and "soft=True" in message
    soft = spec._replace(task_id=b"pinned-task-0003", strategy="node?:n9")
    c.send(c.driver, P.Submit([soft]))
    assert soft.task_id in c.drain().assigned_to()


def test_spread_puts_each_task_on_the_least_loaded_node():
    c = Cluster(idle_worker_timeout_s=1000.0)
    c.add_node("n1", cpus=4)
    c.add_node("n2", cpus=4)
    fid = c.register()
    specs = [build(P.TaskSpec, task_id=f"spread-task-{i:04d}".encode(), name="f",
                   function_id=fid, args=None, deps=[], num_returns=1,
                   resources={"CPU": UNIT}, max_retries=3, retry_exceptions=False,
                   strategy="SPREAD") for i in range(4)]
    c.send(c.driver, P.Submit(specs))
    where = c.drain().assigned_to()
    on_n1 = sum(1 for w in where.values() if w in c.node_workers["n1"])
    assert len(where) == 4 and on_n1 == 2


def test_gpu_tasks_get_their_devices_in_cuda_visible_devices():
    c = Cluster(idle_worker_timeout_s=1000.0)
    c.add_node("g", cpus=3, resources={"GPU": 2})
    fid = c.register()
    one = c.submit(fid, 2, resources={"GPU": 1})
    none = c.submit(fid, 1)
    sent = c.drain()
    env = {a.task_id: a.env for a in sent.assignments()}
    assert sorted(env[t]["CUDA_VISIBLE_DEVICES"] for t in one) == ["0", "1"]
    assert env[none[0]] == {"CUDA_VISIBLE_DEVICES": ""}
    assert c.node("g").gpus == {"0": 0, "1": 0}
    worker = sent.assigned_to()[one[0]]
    c.finish(worker, one[0])
    c.drain()
    assert sorted(c.node("g").gpus.values()) == [0, UNIT]  # its device is free again


def test_drivers_get_credit_back_for_every_task_that_ends():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    a, b = c.submit(fid, 2)
    worker = c.drain().assigned_to()[a]
    c.send(c.driver, P.Cancel([ret(b)], False))  # ends too: cancelled
    assert [m.count for m in c.drain().to(c.driver, P.Credit)] == [1]
    c.finish(worker, a)
    assert [m.count for m in c.drain().to(c.driver, P.Credit)] == [1]
    nested = c.hello(b"worker-x", "worker")  # workers are exempt: no Credit for their tasks
    c.send(nested, P.RegisterFunction(fid, "mod.f", b"blob"))
    c.submit(fid, 1, owner=nested)
    assert not c.drain().of(P.Credit)


def test_the_window_count_of_a_driver_that_leaves_goes_with_its_tasks():
    c = Cluster()
    other = c.hello(b"driver-2", "driver")
    fid = c.register(owner=other)
    tasks = c.submit(fid, 3, owner=other)  # no node: they stay queued
    assert c.state.scheduler.in_flight[other] == 3
    c.send(other, P.Goodbye())
    assert not any(t in c.state.table.tasks for t in tasks)  # nobody needs them: dropped
    assert other not in c.state.scheduler.in_flight
    c.state.check_invariants()


def test_a_driver_ignoring_credit_gets_its_surplus_failed_not_queued():
    c = Cluster()
    greedy = c.hello(b"greedy", "driver", {"max_pending_tasks": 4})
    fid = c.register(owner=greedy)
    tasks = c.submit(fid, 8, owner=greedy)  # twice its window: still queued
    c.drain()
    assert all(t in c.state.table.tasks for t in tasks)
    extra = c.submit(fid, 2, owner=greedy)
    sent = c.drain()
    assert not any(t in c.state.table.tasks for t in extra)  # not queued: nothing kept for them
    kind, message = c.state.directory.objects[ret(extra[0])].value.read_system_error()
    assert kind == "TaskmeshError" and "twice its max_pending_tasks (4)" in message
    assert sum(m.count for m in sent.to(greedy, P.Credit)) == 2  # its count stays right
    assert c.state.dropped.counts["over its window"] == 2
    c.state.check_invariants()


def test_a_put_past_the_clients_budget_at_the_head_is_refused_with_a_clear_error():
    c = Cluster(max_head_bytes_per_client=1000)
    first = c.put(b"o" * 20, value(b"x" * 600))
    assert c.state.directory.inline_bytes[c.driver] == 600
    second = c.put(b"p" * 20, value(b"y" * 600))  # 1,200 > 1,000: refused
    kind, message = c.state.directory.objects[second].value.read_system_error()
    assert kind == "ObjectStoreFullError" and "max_head_bytes_per_client is 1,000" in message
    assert c.state.directory.inline_bytes[c.driver] < 1000
    c.send(c.driver, P.Release([first, second]))  # freed: the budget is back
    assert c.driver not in c.state.directory.inline_bytes
    third = c.put(b"q" * 20, value(b"z" * 600))
    assert c.state.directory.objects[third].value.data == b"z" * 600
    c.state.check_invariants()
