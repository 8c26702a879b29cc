"""What a task on another machine prints reaches its driver: head on h0, a worker node on h1,
the driver on h2; the lines cross two real TCP connections (h1 -> head -> h2)."""

from __future__ import annotations

import glob
import json
import os
import re

import pytest

from ..support.netcluster import driver, expect, join_node, start_head

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(120)]

DRIVER = r'''
import json, os, sys, taskmesh
os.environ["TASKMESH_DEDUP_LOGS"] = "0"  # every line as it came (no folding of repeats)
taskmesh.init(address=sys.argv[1])

@taskmesh.remote
def shout(i):
    print(f"line {i} from", taskmesh.get_runtime_context().get_node_id())
    print(f"problem {i}", file=sys.stderr)
    return os.getpid()

@taskmesh.remote
class Greeter:
    def hi(self):
        print("hi from an actor")
        return os.getpid()

pids = taskmesh.get([shout.remote(i) for i in range(3)])
actor_pid = taskmesh.get(Greeter.remote().hi.remote())
taskmesh.shutdown()
print("RESULT " + json.dumps({"pids": pids, "actor_pid": actor_pid}), flush=True)
'''


def test_a_task_on_another_host_prints_on_the_driver(hosts, tmp_path):
    address = start_head(hosts, tmp_path, 7310)
    join_node(hosts, tmp_path, 1, address, 2)
    worker_ip = hosts.addr(1)
    proc = driver(hosts, tmp_path, DRIVER, address, host=2)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    result = next(line for line in out.splitlines() if line.startswith("RESULT "))
    pids = json.loads(result[7:])
    shown = re.findall(rf"^\(shout pid=(\d+), ip={re.escape(worker_ip)}\) line (\d) from (\w+)$",
                       out, re.M)
    assert sorted(int(i) for _, i, _ in shown) == [0, 1, 2], out
    assert {int(pid) for pid, _, _ in shown} == set(pids["pids"])
    node_id = shown[0][2]
    problems = re.findall(rf"^\(shout pid=\d+, ip={re.escape(worker_ip)}\) problem (\d)$", err,
                          re.M)
    assert sorted(problems) == ["0", "1", "2"], err
    assert f"(Greeter pid={pids['actor_pid']}, ip={worker_ip}) hi from an actor" in out
    # and the worker's host kept it in its log directory
    files = glob.glob(os.path.join(str(tmp_path / "run1"), "logs", node_id, "worker-*.out"))
    assert any("line 0 from" in open(f, encoding="utf-8").read() for f in files), files
    # `taskmesh logs` on a host that is neither the head's nor the worker's: the files come
    # from the worker's node, through the head
    listed = hosts.taskmesh(3, "logs", "--address", address, run_dir=str(tmp_path / "run3"))
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith(node_id) and "agent.log" in line
               for line in listed.stdout.splitlines()), listed.stdout
    pid = pids["pids"][0]
    shown = hosts.taskmesh(3, "logs", "--address", address, "--node", node_id,
                           "--worker", str(pid), run_dir=str(tmp_path / "run3"))
    assert shown.returncode == 0, shown.stderr
    assert "line 0 from " + node_id in shown.stdout.splitlines()
