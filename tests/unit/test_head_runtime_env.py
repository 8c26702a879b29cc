"""The head's runtime environment decisions (HeadState with _head/runtime_envs.py), driven by
scripted peers: tasks of an environment run only on its workers, which are started for it
(with its wire form) and pooled; a node at its cap retires idle workers of other
environments; a failed set-up fails the environment's queued tasks; an unregistered
environment is refused."""

from __future__ import annotations

from taskmesh import _protocol as P

from ..support.head import PV, Cluster, ret

WIRE = '{"env_vars": {"A": "1"}}'


def env_worker(c: Cluster, node_id: str, env: str) -> bytes:
    n = next(c._seq)
    peer, worker_id, pid = f"worker-{n}".encode(), f"w{n}", 5000 + n
    c.worker_info[peer] = (node_id, worker_id, pid)
    c.send(peer, P.Hello(PV, "worker", {"node_id": node_id, "worker_id": worker_id,
                                        "pid": pid, "runtime_env": env}))
    return peer


def submit_env(c: Cluster, fid: bytes, env: str, n: int = 1) -> list[bytes]:
    specs = [c.spec(fid)._replace(runtime_env=env) for _ in range(n)]
    c.send(c.driver, P.Submit(specs))
    return [s.task_id for s in specs]


def test_tasks_of_an_environment_wait_for_its_own_workers_which_are_then_pooled():
    c = Cluster(idle_worker_timeout_s=1000.0)
    c.add_node("n1", cpus=2)
    fid = c.register()
    c.send(c.driver, P.RegisterEnv("env_a", WIRE))
    tids = submit_env(c, fid, "env_a", 2)
    sent = c.drain()
    assert sent.assigned_to() == {}  # never on the idle default workers
    assert sent.to(c.node_peer["n1"], P.StartWorkers) == [P.StartWorkers(2, "env_a", WIRE)]
    assert c.node("n1").env_starting == {"env_a": 2}
    w, w2 = env_worker(c, "n1", "env_a"), env_worker(c, "n1", "env_a")
    assigned = c.drain().assigned_to()
    assert set(assigned) == set(tids) and set(assigned.values()) == {w, w2}
    assert c.node("n1").env_starting == {}
    for tid, worker in assigned.items():
        c.finish(worker, tid)
    c.drain()
    assert {x.peer for x in c.node("n1").env_idle["env_a"]} == {w, w2}
    # default tasks never go to it; the environment's next one does, starting nothing
    [d] = c.submit(fid)
    assert c.drain().assigned_to()[d] in c.node_workers["n1"]
    [e] = submit_env(c, fid, "env_a")
    sent = c.drain()
    assert sent.assigned_to()[e] in (w, w2) and sent.to(c.node_peer["n1"], P.StartWorkers) == []
    c.state.check_invariants()


def test_a_node_at_its_cap_retires_idle_workers_of_other_environments_first():
    c = Cluster(idle_worker_timeout_s=1000.0)
    c.add_node("n1", cpus=1, workers=3)  # (cap: 1 CPU + 2 = 3 processes)
    fid = c.register()
    c.send(c.driver, P.RegisterEnv("env_a", WIRE))
    submit_env(c, fid, "env_a")
    sent = c.drain()
    exits = [p for p, m in sent.pairs if type(m) is P.Exit]
    assert len(exits) == 1 and exits[0] in c.node_workers["n1"]
    assert sent.to(c.node_peer["n1"], P.StartWorkers) == [P.StartWorkers(1, "env_a", WIRE)]
    assert len(c.node("n1").workers) == 2
    c.state.check_invariants()


def test_a_failed_set_up_fails_the_queued_tasks_with_its_cause_and_a_later_task_tries_again():
    c = Cluster(idle_worker_timeout_s=1000.0)
    c.add_node("n1", cpus=2)
    fid = c.register()
    c.send(c.driver, P.RegisterEnv("env_b", '{"pip": {"packages": ["nope"]}}'))
    tids = submit_env(c, fid, "env_b", 3)
    c.drain()
    c.send(c.node_peer["n1"], P.EnvFailed("env_b", "pip install nope failed (exit code 1)"))
    values = c.drain().values(c.driver)
    for tid in tids:
        kind, message = values[ret(tid)].value.read_system_error()
        assert kind == "RuntimeEnvSetupError"
        assert "could not be set up on node n1" in message and "pip install nope" in message
    assert c.node("n1").env_starting == {}
    submit_env(c, fid, "env_b")
    assert c.drain().to(c.node_peer["n1"], P.StartWorkers) == [
        P.StartWorkers(1, "env_b", '{"pip": {"packages": ["nope"]}}')]
    c.state.check_invariants()


def test_a_task_or_actor_naming_an_unregistered_environment_is_refused():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    [t] = submit_env(c, fid, "env_never")
    kind, message = c.drain().values(c.driver)[ret(t)].value.read_system_error()
    assert kind == "RuntimeEnvSetupError" and "never registered" in message
    c.send(c.driver, P.RegisterEnv("", WIRE))  # (no id: refused, nothing kept)
    assert c.drain().to(c.driver, P.Rejected) and "" not in c.state.runtime_envs.envs
