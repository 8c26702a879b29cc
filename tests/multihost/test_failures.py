"""Machines that fail: a host killed while it holds the only copy of a result (rebuilt from
lineage), and a host cut off from the network (declared dead, its tasks run elsewhere; after
the network heals it is fenced and joins again). Default time-outs: a dead node is declared
within 2 s."""

from __future__ import annotations

import json
import sys

import pytest

from ..support.netcluster import driver, expect, join_node, start_head
from ..support.wait import until

pytestmark = pytest.mark.multihost

COMMON = r'''
import json, sys, time
import numpy as np
import taskmesh
from tests.support.wait import until

MB = 1 << 20
taskmesh.init(address=sys.argv[1])
until(lambda: sum(n["Workers"] for n in taskmesh.nodes() if n["Alive"]) >= 4, timeout=30,
      what=lambda: f"4 workers (they are still starting): {taskmesh.nodes()}")

def say(tag, value):
    print(tag, json.dumps(value), flush=True)

def addr_of(node_id):
    return next(n["NodeManagerAddress"] for n in taskmesh.nodes() if n["NodeID"] == node_id)
'''

LINEAGE = COMMON + r'''
@taskmesh.remote(num_returns=2, resources={"r": 1})
def make(seed):
    time.sleep(0.5)  # long enough that the two land on both nodes
    return taskmesh.get_runtime_context().get_node_id(), np.random.default_rng(seed).random(5 * MB // 8)

made = [make.remote(s) for s in range(2)]
makers = taskmesh.get([m[0] for m in made])
say("MADE", [addr_of(n) for n in makers])
victim = sys.stdin.readline().strip()        # the test kills that host now
t0 = time.monotonic()
until(lambda: not any(n["Alive"] for n in taskmesh.nodes() if n["NodeManagerAddress"] == victim),
      timeout=30, interval=0.02, what="the killed host's node to be declared dead")
detected = time.monotonic() - t0
values = taskmesh.get([m[1] for m in made], timeout=60)
exact = all(float(v.sum()) == float(np.random.default_rng(s).random(5 * MB // 8).sum())
            for s, v in enumerate(values))
say("RESULT", {"detected_s": detected, "exact": exact})
'''

PARTITION = COMMON + r'''
@taskmesh.remote
def work(i):
    time.sleep(0.2)
    return i, taskmesh.get_runtime_context().get_node_id()

refs = [work.remote(i) for i in range(40)]
say("STARTED", 1)
out = taskmesh.get(refs, timeout=120)
ok = [i for i, _ in out] == list(range(40))
victim = sys.argv[2]
until(lambda: any(n["Alive"] and n["Workers"] >= 2 and n["NodeManagerAddress"] == victim
                  for n in taskmesh.nodes()), timeout=30,
      what=lambda: f"the healed host to join again with its workers: {taskmesh.nodes()}")
again = taskmesh.get([work.remote(i) for i in range(20)], timeout=60)
say("RESULT", {"exact": ok, "nodes_after": sorted({addr_of(n) for _, n in again}),
               "dead_seen": sum(1 for n in taskmesh.nodes() if not n["Alive"])})
'''


def start_cluster(hosts, tmp_path, port: int) -> str:
    address = start_head(hosts, tmp_path, port)
    for i in (1, 2):
        join_node(hosts, tmp_path, i, address, 2, "--resources", '{"r": 1}')
    return address


def test_a_result_lost_with_its_host_is_rebuilt_on_another(hosts, tmp_path):
    address = start_cluster(hosts, tmp_path, 7320)
    proc = driver(hosts, tmp_path, LINEAGE, address)
    try:
        makers = expect(proc, "MADE")
        assert sorted(makers) == sorted([hosts.addr(1), hosts.addr(2)])
        victim = makers[0]
        hosts.kill([hosts.addr(i) for i in range(4)].index(victim))
        proc.stdin.write(victim + "\n")
        proc.stdin.flush()
        result = expect(proc, "RESULT")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert result["exact"]
    assert result["detected_s"] < 2.0, result


def test_a_cut_off_host_is_declared_dead_then_fenced_and_joins_again(hosts, tmp_path):
    import time

    address = start_cluster(hosts, tmp_path, 7321)
    proc = driver(hosts, tmp_path, PARTITION, address, hosts.addr(2))
    try:
        expect(proc, "STARTED")
        time.sleep(0.5)  # tasks are running on both hosts
        hosts.cut(2)
        time.sleep(3.0)  # well past the heartbeat time-out
        hosts.heal(2)
        result = expect(proc, "RESULT")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert result["exact"]  # every task once, in order: nothing lost, nothing doubled
    assert hosts.addr(2) in result["nodes_after"], result  # it joined again and runs tasks


STUCK = COMMON + r'''
@taskmesh.remote
def stuck(i):
    time.sleep(600)

refs = [stuck.remote(i) for i in range(10)]
until(lambda: sum(n["TasksRunning"] for n in taskmesh.nodes()) >= 4, timeout=30,
      what="4 running tasks")
say("RUNNING", 1)
time.sleep(600)
'''

WATCH = r'''
import json, sys, time
import taskmesh
from tests.support.wait import until
taskmesh.init(address=sys.argv[1])

def status():
    return taskmesh._context.CTX.core.info("status")

def cleared():
    st = status()
    return st["tasks"]["running"] == st["tasks"]["queued"] == st["objects"] == 0

t0 = time.monotonic()
until(cleared, timeout=20, what=lambda: f"no task or object of the dead driver left: {status()}")
gone = time.monotonic() - t0

@taskmesh.remote
def one():
    return 1

print("RESULT", json.dumps({"cleared_s": gone, "ran": sum(taskmesh.get([one.remote() for _ in range(8)], timeout=30))}))
'''


def test_a_remote_driver_that_dies_has_its_tasks_cancelled(hosts, tmp_path):
    import time

    address = start_cluster(hosts, tmp_path, 7322)
    proc = driver(hosts, tmp_path, STUCK, address)
    try:
        expect(proc, "RUNNING")
        hosts.kill(3)  # the driver's machine: no FIN, no Goodbye
        t0 = time.monotonic()
        watch = tmp_path / "watch.py"
        watch.write_text(WATCH)
        r = hosts.run(0, sys.executable, str(watch), address, timeout=60)
        assert r.returncode == 0, r.stderr
        result = json.loads(r.stdout.split("RESULT ", 1)[1])
    finally:
        if proc.poll() is None:
            proc.kill()
    # the head heard nothing from it for the heartbeat time-out, then cancelled its 4 running
    # and 6 queued tasks and freed the workers (killed and replaced)
    assert time.monotonic() - t0 < 15
    assert result["ran"] == 8


def test_node_agents_join_a_head_that_was_restarted(hosts, tmp_path):
    """The head's machine dies right after the nodes joined, while their workers may still be
    starting: a worker's Hello queued during the outage reaches the new head, maybe before its
    agent joins again (and stops it); the head must never count such a worker (it once did,
    and the driver below hung with tasks assigned to a dead worker)."""
    address = start_cluster(hosts, tmp_path, 7323)
    head_ip = hosts.addr(0)
    hosts.kill(0)  # the head's machine: every process there dies
    tries: list = []

    def head_started() -> bool:  # SIGKILL is not instant: the port is free once the old head is reaped
        tries.append(hosts.taskmesh(0, "start", "--head", "--port", "7323", "--num-cpus", "0",
                                    "--node-ip", head_ip, run_dir=str(tmp_path / "run0-again")))
        return tries[-1].returncode == 0 or "already in use" not in tries[-1].stderr

    until(head_started, timeout=15, interval=0.2,
          what=lambda: f"port 7323 to be free: {tries[-1].stderr}")
    assert tries[-1].returncode == 0, tries[-1].stderr
    code = COMMON + r'''
@taskmesh.remote
def where():
    time.sleep(0.05)
    return taskmesh.get_runtime_context().get_node_id()
refs = [where.remote() for _ in range(40)]
try:
    print("RESULT", json.dumps(sorted({addr_of(n) for n in taskmesh.get(refs, timeout=45)})))
except taskmesh.GetTimeoutError:
    print(taskmesh._context.CTX.core.info("status"), file=sys.stderr)
    raise
'''
    script = tmp_path / "again.py"
    script.write_text(code)
    r = hosts.run(3, sys.executable, str(script), address, timeout=90)
    if r.returncode != 0:  # the agents' logs say how they found the new head
        logs = "".join(f"\n--- {p}\n{p.read_text(errors='replace')[-4000:]}"
                       for p in sorted(tmp_path.rglob("*.log")))
        raise AssertionError(f"{r.stderr[-4000:]}{logs}")
    # both nodes found the new head by themselves and run its tasks
    assert json.loads(r.stdout.split("RESULT ", 1)[1]) == sorted([hosts.addr(1), hosts.addr(2)])


HEAD_LOST = COMMON + r'''
@taskmesh.remote
def slow():
    time.sleep(60)

ref = slow.remote()
until(lambda: sum(n["TasksRunning"] for n in taskmesh.nodes()) >= 1, timeout=30, interval=0.02,
      what="the task to run")
say("RUNNING", 1)
sys.stdin.readline()                       # the test crashes the head's machine now
t0 = time.monotonic()
try:
    taskmesh.get(ref)                       # no time-out: it must not hang
    out = {"error": None}
except Exception as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
out["took_s"] = time.monotonic() - t0
say("RESULT", out)
'''


def test_a_dead_head_is_detected_by_drivers_and_node_agents(hosts, tmp_path):
    """The head's machine crashes silently (no FIN, no RST): a driver blocked in get() with no
    time-out raises HeadConnectionError naming the head within head_timeout_s (3 s); the node
    agents keep trying for head_lost_exit_s (4 s on h1 here, 60 s by default on h2), then exit."""
    import time

    head_ip, port = hosts.addr(0), 7324
    address = start_head(hosts, tmp_path, port)
    for i, exit_s in ((1, "4"), (2, "60")):
        join_node(hosts, tmp_path, i, address, env={"TASKMESH_HEAD_LOST_EXIT_S": exit_s})
    proc = driver(hosts, tmp_path, HEAD_LOST, address)
    try:
        expect(proc, "RUNNING")
        assert hosts.agent_pids(1) and hosts.agent_pids(2)
        hosts.crash(0)
        t0 = time.monotonic()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        result = expect(proc, "RESULT")
        until(lambda: not hosts.agent_pids(1), timeout=20 - (time.monotonic() - t0), interval=0.1,
              check=False)  # (the time it took is what is checked below)
        h1_exited_s = time.monotonic() - t0
        h2_alive = bool(hosts.agent_pids(2))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert result["error"] == "HeadConnectionError", result
    assert f"{head_ip}:{port}" in result["message"], result
    assert result["took_s"] < 3.0 + 1.5, result  # head_timeout_s, and a ping interval of slack
    assert 3.5 <= h1_exited_s < 10.0, h1_exited_s  # counted from its last answer
    assert h2_alive  # still trying to reach the head
    log = (tmp_path / "run1").rglob("*.log")
    text = "".join(p.read_text(errors="replace") for p in log)
    assert f"the head at tcp://{head_ip}:{port} has not answered" in text, text[-2000:]
