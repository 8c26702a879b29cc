"""The state API on a real embedded cluster: ``taskmesh.util.state`` in this driver, and the
``taskmesh list|summary|get|status`` commands run as other processes (holding the cluster's
secret, as a user's shell on the same machine would by $TASKMESH_SECRET)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import taskmesh
from taskmesh._context import CTX
from taskmesh.util import state

from ..support.wait import until

pytestmark = pytest.mark.timeout(120)


@taskmesh.remote
def square(x):
    return x * x


@taskmesh.remote
def explode(why):
    raise ValueError(f"boom: {why}")


@taskmesh.remote
def nap(s):
    time.sleep(s)
    return s


@taskmesh.remote
def parent_of_squares(n):
    return sum(taskmesh.get([square.remote(i) for i in range(n)]))


@taskmesh.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return self.n


@pytest.fixture(scope="module")
def ran(cluster):
    """Work done once for the module: 6 squares, a failure, an actor with two calls."""
    assert taskmesh.get([square.remote(i) for i in range(6)]) == [0, 1, 4, 9, 16, 25]
    failing = explode.remote("on purpose")
    with pytest.raises(taskmesh.TaskError):
        taskmesh.get(failing)
    counter = Counter.remote()
    assert taskmesh.get([counter.add.remote(), counter.add.remote()]) == [1, 2]
    return {"failed": failing, "counter": counter}


def tm(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The taskmesh command, against this module's cluster."""
    env = {**os.environ, **CTX.cluster.security.key.env()}
    return subprocess.run([sys.executable, "-m", "taskmesh._cli", *args,
                           "--address", CTX.core.address],
                          capture_output=True, text=True, timeout=timeout, env=env)


def named(rows: list[dict], suffix: str) -> list[dict]:
    return [r for r in rows if r["name"].endswith(suffix)]


# ---------------------------------------------------------------------- Python


def test_list_tasks_with_filters_limit_and_detail(ran):
    rows = state.list_tasks(limit=1000)
    assert len(named(rows, ".square")) == 6
    assert all(r["state"] == "FINISHED" and r["type"] == "NORMAL_TASK" for r in named(rows, ".square"))
    assert {r["job_id"] for r in rows} == {CTX.core.peer_id[1:].hex()}  # (this driver's)
    [failed] = state.list_tasks(filters=[("state", "=", "FAILED"), ("error_type", "=", "TaskError")],
                                detail=True)
    assert failed["name"].endswith(".explode") and failed["error_type"] == "TaskError"
    assert failed["task_id"] == ran["failed"].hex()[:32]
    assert "ValueError: boom: on purpose" in failed["error_message"]
    assert failed["end_time_ms"] >= failed["start_time_ms"] > time.time() * 1000 - 120_000
    others = state.list_tasks(filters=[("state", "!=", "FAILED"), ("name", "!=", "x")],
                              limit=1000)
    assert len(others) == len(rows) - len([r for r in rows if r["state"] == "FAILED"])
    with pytest.warns(UserWarning, match="only the first 2 are returned"):
        assert len(state.list_tasks(limit=2)) == 2
    types = {r["name"].rsplit(".", 1)[-1]: r["type"] for r in rows}
    assert types["__init__"] == "ACTOR_CREATION_TASK" and types["add"] == "ACTOR_TASK"


def test_get_task_has_the_whole_traceback(ran):
    task = state.get_task(ran["failed"].hex()[:32])
    assert task["state"] == "FAILED"
    assert task["error_message"].startswith("Traceback (most recent call last):")
    assert 'raise ValueError(f"boom: {why}")' in task["error_message"]
    assert state.get_task("ffffffffffffffff") is None


def test_summary_counts_by_function_and_state(ran):
    summary = state.summarize_tasks()["cluster"]["summary"]
    counts = {name.rsplit(".", 1)[-1]: s["state_counts"] for name, s in summary.items()}
    assert counts["square"] == {"FINISHED": 6}
    assert counts["explode"] == {"FAILED": 1}
    assert counts["add"] == {"FINISHED": 2} and counts["__init__"] == {"FINISHED": 1}


def test_actors_jobs_nodes_and_objects(ran):
    [actor] = state.list_actors(filters=[("state", "=", "ALIVE")])
    assert actor["class_name"].endswith("Counter") and actor["node_id"] == CTX.node_id
    got = state.get_actor(actor["actor_id"][:8])
    # (times are the head's clock plus this machine's offset, taken at each reply: +-1 ms)
    assert abs(got.pop("creation_time_ms") - actor.pop("creation_time_ms")) <= 5
    assert got == actor
    [job] = state.list_jobs(filters=[("status", "=", "RUNNING")])
    assert job["job_id"] == actor["job_id"] and job["start_time_ms"] > 0
    [node] = state.list_nodes()
    assert node["node_id"] == CTX.node_id and node["state"] == "ALIVE"
    # (with an address: over a connection of its own, closed after)
    assert [n["node_id"] for n in state.list_nodes(address=CTX.core.address)] == [CTX.node_id]
    assert node["resources_total"]["CPU"] == 2.0
    objects = state.list_objects(filters=[("state", "=", "ERROR")])
    assert ran["failed"].hex() in {o["object_id"] for o in objects}


def test_a_running_task_then_cancelled_shows_so(ran):
    ref = nap.remote(60)
    until(lambda: named(state.list_tasks(filters=[("state", "=", "RUNNING")]), ".nap"),
          timeout=30, what="the nap to run")
    taskmesh.cancel(ref, force=True)
    [row] = until(lambda: named(state.list_tasks(filters=[("state", "=", "FAILED")],
                                                 detail=True), ".nap"),
                  timeout=30, what="the nap to be cancelled")
    assert row["error_type"] == "TaskCancelledError"


def test_bad_filters_say_what_is_valid(ran):
    with pytest.raises(ValueError, match="unknown filter key 'colour' for tasks: one of task_id"):
        state.list_tasks(filters=[("colour", "=", "red")])
    with pytest.raises(ValueError, match="unknown state 'DONE'.*PENDING_ARGS_AVAIL"):
        state.list_tasks(filters=[("state", "=", "done")])
    with pytest.raises(ValueError, match="unknown filter predicate '>'"):
        state.list_tasks(filters=[("state", ">", "FAILED")])


# ---------------------------------------------------------------------- the command


def test_cli_list_tables_fit_80_columns_and_json_has_full_rows(ran):
    r = tm("list", "tasks", "--limit", "1000")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["TASK", "ID", "NAME", "STATE", "NODE", "ERROR"]
    assert all(len(line) <= 80 for line in lines), lines
    assert sum(".square" in line and "FINISHED" in line for line in lines) == 6
    r = tm("list", "tasks", "--filter", "state=FAILED", "--filter", "error_type=TaskError",
           "--format", "json", "--detail")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert row["task_id"] == ran["failed"].hex()[:32] and "boom" in row["error_message"]
    for kind in ("actors", "jobs", "nodes", "objects"):
        r = tm("list", kind)
        assert r.returncode == 0 and r.stdout.strip(), (kind, r.stderr)
        assert all(len(line) <= 80 for line in r.stdout.splitlines()), r.stdout
    r = tm("list", "tasks", "--limit", "2")
    assert "(showing 2 of " in r.stdout


def test_cli_get_task_by_its_short_id_shows_the_traceback(ran):
    r = tm("list", "tasks", "--filter", "state=FAILED", "--filter", "error_type=TaskError")
    short = r.stdout.splitlines()[1].split()[0]  # as the table shows it: 53a1cc…000006
    assert "…" in short
    r = tm("get", "task", short)
    assert r.returncode == 0, r.stderr
    assert "state" in r.stdout and "FAILED" in r.stdout
    assert "Traceback (most recent call last):" in r.stdout
    assert "ValueError: boom: on purpose" in r.stdout


def test_cli_summary_and_errors(ran):
    r = tm("summary", "tasks")
    assert r.returncode == 0, r.stderr
    [line] = [x for x in r.stdout.splitlines() if x.split()[0].endswith(".square")]
    assert line.split()[1:] == ["0", "0", "0", "6", "0"]
    r = tm("list", "tasks", "--filter", "colour=red")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("taskmesh: error: unknown filter key 'colour'")
    assert "task_id" in r.stderr and len(r.stderr.splitlines()) == 1
    r = tm("get", "task", "ffffffff")
    assert r.returncode == 1 and "no task" in r.stderr


def test_status_fits_80_columns_and_json_parses(ran):
    r = tm("status")
    assert r.returncode == 0, r.stderr
    assert all(len(line) <= 80 for line in r.stdout.splitlines()), r.stdout
    assert CTX.node_id in r.stdout and " finished (" in r.stdout
    r = tm("status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["nodes"][0]["NodeID"] == CTX.node_id and st["tasks"]["failed"] >= 1


def test_status_watch_refreshes_until_ctrl_c(ran):
    env = {**os.environ, **CTX.cluster.security.key.env()}
    proc = subprocess.Popen([sys.executable, "-m", "taskmesh._cli", "status", "--watch", "0.2",
                             "--address", CTX.core.address], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        seen = b""
        while seen.count(b"taskmesh cluster at") < 2:  # (two screens: it refreshes)
            chunk = proc.stdout.read1(4096)  # type: ignore[union-attr]
            assert chunk, proc.stderr.read()  # type: ignore[union-attr]
            seen += chunk
        assert b"\x1b[2J" in seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# (last: it adds squares, which the tests above count)
def test_nested_tasks_belong_to_the_drivers_job_and_name_their_parent(ran):
    assert taskmesh.get(parent_of_squares.remote(3)) == 5
    [parent] = named(state.list_tasks(limit=1000), ".parent_of_squares")
    children = [r for r in state.list_tasks(limit=1000)
                if r["parent_task_id"] == parent["task_id"]]
    assert len(children) == 3 and all(r["name"].endswith(".square") for r in children)
    assert {r["job_id"] for r in children} == {parent["job_id"]} == {CTX.core.peer_id[1:].hex()}
