"""runtime_env across real hosts: head on h0, worker nodes on h1 and h2 (each with its own
run directory, so its own runtime_env cache), the driver on h3 (no node there: the project's
package travels from it through the head). A working_dir with the project's own module,
env_vars and a pip requirement reach tasks on both nodes; each node installs the requirement once, however many
tasks need it; a requirement that cannot be installed fails its task with pip's error and
the node named."""

from __future__ import annotations

import glob
import json
import os

import pytest

from ..integration.test_pip_env import _wheel
from ..support.netcluster import driver, join_node, start_head

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(240)]

DRIVER = r'''
import json, os, sys, taskmesh
taskmesh.init(address=sys.argv[1], runtime_env={"env_vars": {"TM_JOB": "job"}})
wheels = sys.argv[2]
pip = ["tmdemo==0.1", "--no-index", f"--find-links {wheels}"]

@taskmesh.remote
def where():
    import tmdemo
    import mylib  # (the project's own module: its working_dir)
    return (taskmesh.get_runtime_context().get_node_id(), tmdemo.VALUE,
            os.environ.get("TM_JOB"), os.environ.get("TM_TASK"), mylib.NAME)

project = os.path.join(os.path.dirname(os.path.abspath(__file__)), "project")
env = {"pip": pip, "env_vars": {"TM_TASK": "task"}, "working_dir": project}
nodes = [n["NodeID"] for n in taskmesh.nodes() if n["Alive"] and n["Resources"].get("CPU")]
on = lambda node: taskmesh.NodeAffinitySchedulingStrategy(node)
rows = taskmesh.get([where.options(runtime_env=env, scheduling_strategy=on(n)).remote()
                     for n in nodes for _ in range(6)], timeout=180)
try:
    bad = where.options(runtime_env={"pip": ["tm-missing==1.0", "--no-index",
                                             f"--find-links {wheels}"]}).remote()
    taskmesh.get(bad, timeout=180)
    error = ""
except taskmesh.RuntimeEnvSetupError as exc:
    error = str(exc)
taskmesh.shutdown()
print("RESULT " + json.dumps({"rows": rows, "error": error}), flush=True)
'''


def test_env_vars_and_pip_reach_tasks_on_other_hosts_installed_once_per_node(hosts, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(str(wheels), value=7)
    project = tmp_path / "project"
    project.mkdir()
    (project / "mylib.py").write_text("NAME = 'mylib from the project'\n")
    address = start_head(hosts, tmp_path, 7330)
    join_node(hosts, tmp_path, 1, address, 2)
    join_node(hosts, tmp_path, 2, address, 2)
    proc = driver(hosts, tmp_path, DRIVER, address, str(wheels), host=3)
    out, err = proc.communicate(timeout=220)
    assert proc.returncode == 0, err
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    rows = result["rows"]
    assert {tuple(r[1:]) for r in rows} == {(7, "job", "task", "mylib from the project")}
    nodes = {r[0] for r in rows}
    assert len(nodes) == 2, rows  # (six tasks pinned to each node)
    for i in (1, 2):  # one pip install per node, in that node's own log directory
        logs = glob.glob(os.path.join(str(tmp_path / f"run{i}"), "logs", "*",
                                      "runtime_env-pip_*.log"))
        text = "".join(open(f, encoding="utf-8").read() for f in logs)
        assert text.count("install --disable-pip-version-check") >= 1
        installs = [line for line in text.splitlines()
                    if line.startswith("$ ") and " install " in line and "tmdemo" in line]
        assert len(installs) == 1, text
    assert "could not be set up on node" in result["error"]
    assert "No matching distribution found for tm-missing==1.0" in result["error"]
