"""A real multi-machine cluster: head on h0, worker nodes on h1 and h2 (started with the CLI),
a driver on h3. Each host has its own network stack and address, so every message and object
between them crosses a real TCP connection."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.multihost

DRIVER = r'''
import json, sys, time
import numpy as np
import taskmesh

taskmesh.init(address=sys.argv[1])

@taskmesh.remote
def where():
    time.sleep(0.01)
    return taskmesh.get_runtime_context().get_node_id()

@taskmesh.remote(num_returns=2)
def make(seed):
    time.sleep(0.3)  # long enough that the four producers spread over both nodes
    return taskmesh.get_runtime_context().get_node_id(), np.random.default_rng(seed).random(50_000)

@taskmesh.remote
def consume(a, b):
    time.sleep(0.3)
    return taskmesh.get_runtime_context().get_node_id(), float(a.sum() + b.sum())

@taskmesh.remote
def nested_ref():
    return [where.remote()]          # a ref made on one host, resolved on another

out = {}
out["nodes"] = [(n["NodeID"], n["NodeManagerAddress"], n["Alive"]) for n in taskmesh.nodes()]
out["cpus"] = taskmesh.cluster_resources()["CPU"]
out["where"] = sorted(set(taskmesh.get([where.remote() for _ in range(100)])))

made = [make.remote(s) for s in range(4)]
producers = [m[0] for m in made]
arrays = [m[1] for m in made]
consumed = [consume.remote(arrays[i], arrays[(i + 1) % 4]) for i in range(4)]
prod_nodes = taskmesh.get(producers)
cons = taskmesh.get(consumed)
expect = [float(np.random.default_rng(i).random(50_000).sum() +
                np.random.default_rng((i + 1) % 4).random(50_000).sum()) for i in range(4)]
out["sums_exact"] = [c[1] for c in cons] == expect
out["producer_nodes"] = prod_nodes
out["consumer_nodes"] = [c[0] for c in cons]
# consumer i reads arrays i and i+1: did any read cross hosts?
out["crossed"] = any(prod_nodes[j] != cons[i][0] for i in range(4) for j in (i, (i + 1) % 4))

big = np.arange(300_000, dtype=np.float64)        # from the driver's host to both workers
p = taskmesh.put(big)
res = taskmesh.get([consume.remote(p, p) for _ in range(4)])
out["put_nodes"] = sorted(set(r[0] for r in res))
out["put_sums"] = all(r[1] == 2 * float(big.sum()) for r in res)

inner = taskmesh.get(nested_ref.remote())[0]
out["nested"] = taskmesh.get(inner) in out["where"]
taskmesh.shutdown()
print("RESULT " + json.dumps(out))
'''


def test_tasks_and_objects_flow_between_hosts(hosts, tmp_path):
    head_ip = hosts.addr(0)
    runs = [str(tmp_path / f"run{i}") for i in range(4)]
    r = hosts.taskmesh(0, "start", "--head", "--port", "7300", "--num-cpus", "0",
                       "--node-ip", head_ip, run_dir=runs[0])
    assert r.returncode == 0, r.stderr
    for i in (1, 2):
        r = hosts.taskmesh(i, "start", "--worker", "--address", f"{head_ip}:7300",
                           "--num-cpus", "2", run_dir=runs[i])
        assert r.returncode == 0, r.stderr
        assert hosts.addr(i) in r.stdout  # the node found its own address on its own network

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    import sys

    r = hosts.run(3, sys.executable, str(script), f"{head_ip}:7300", timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.split("RESULT ", 1)[1])

    addrs = {n[1] for n in out["nodes"]}
    assert addrs == {hosts.addr(1), hosts.addr(2)}
    node_ids = {n[0] for n in out["nodes"]}
    assert out["cpus"] == 4.0
    assert set(out["where"]) == node_ids  # tasks ran on both worker hosts
    assert out["sums_exact"]
    assert set(out["producer_nodes"]) == node_ids
    assert out["crossed"]
    assert out["put_nodes"] == sorted(node_ids) and out["put_sums"]
    assert out["nested"]

    r = hosts.taskmesh(3, "status", "--address", f"{head_ip}:7300", run_dir=runs[3])
    assert r.returncode == 0, r.stderr
    assert hosts.addr(1) in r.stdout and hosts.addr(2) in r.stdout

    r = hosts.taskmesh(1, "stop", run_dir=runs[1])
    assert r.returncode == 0 and "stopped 1" in r.stdout


def test_worker_with_wrong_head_address_fails_fast(hosts, tmp_path):
    import time

    t = time.monotonic()
    r = hosts.taskmesh(1, "start", "--worker", "--address", f"{hosts.addr(0)}:7300",
                       run_dir=str(tmp_path / "run"))
    assert r.returncode != 0 and time.monotonic() - t < 10
    assert f"{hosts.addr(0)}:7300" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_driver_pointed_at_no_head_fails_fast_naming_the_address(hosts):
    import sys
    import time

    code = ("import taskmesh\n"
            "try:\n"
            f"    taskmesh.init(address='{hosts.addr(0)}:7301')\n"
            "except taskmesh.HeadConnectionError as e:\n"
            "    print('ERR', e)\n")
    t = time.monotonic()
    r = hosts.run(3, sys.executable, "-c", code, timeout=60)
    assert time.monotonic() - t < 10, "it must not hang"
    assert f"ERR no taskmesh head answered at {hosts.addr(0)}:7301" in r.stdout, r.stdout + r.stderr
