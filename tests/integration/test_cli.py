"""The taskmesh command: start/status/stop and its one-line errors."""

from __future__ import annotations

import subprocess
import sys
import time

from taskmesh import _rundir
from taskmesh._transport import free_port

from ..support.cli import tm
from ..support.clients import run_python
from ..support.procs import wait_gone
from ..support.wait import until


def test_head_status_join_stop(run_env):
    port = free_port()
    r = tm("start", "--head", "--port", str(port), "--num-cpus", "1", "--node-ip", "127.0.0.1",
           env=run_env)
    assert r.returncode == 0, r.stderr
    assert f"127.0.0.1:{port}" in r.stdout and "taskmesh start --worker --address" in r.stdout

    r = tm("start", "--worker", "--address", f"127.0.0.1:{port}", "--num-cpus", "2",
           "--node-ip", "127.0.0.2", env=run_env)
    assert r.returncode == 0, r.stderr
    assert "joined" in r.stdout

    code = (
        "import time, taskmesh\n"
        "from tests.support.wait import until\n"
        "taskmesh.init(address='auto')\n"
        "until(lambda: sum(n['Workers'] for n in taskmesh.nodes()) >= 3, timeout=30,\n"
        "      what=lambda: f'3 workers (they are still starting): {taskmesh.nodes()}')\n"
        "@taskmesh.remote\n"
        "def where():\n"
        "    time.sleep(0.01)\n"
        "    return taskmesh.get_runtime_context().get_node_id()\n"
        "ids = set(taskmesh.get([where.remote() for _ in range(200)]))\n"
        "print(len(taskmesh.nodes()), taskmesh.cluster_resources()['CPU'], len(ids))\n"
        # a large put goes to the store of this machine's node; status shows it there
        "import numpy, subprocess, sys\n"
        "ref = taskmesh.put(numpy.ones(20 * 2**20, dtype=numpy.uint8))\n"
        "until(lambda: max(n['ObjectStore'].get('store_used_bytes', 0) for n in taskmesh.nodes())\n"
        "      >= 20 * 2**20, timeout=30, what='a heartbeat to report the object')\n"
        "r = subprocess.run([sys.executable, '-m', 'taskmesh._cli', 'status'], capture_output=True,\n"
        "                   text=True, timeout=30)\n"
        "print(r.stdout, r.stderr, file=sys.stderr)\n"
    )
    r = run_python(code, env=run_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "3.0", "2"]
    assert "store 20.0 MiB/" in r.stderr, r.stderr

    r = tm("status", env=run_env)
    assert r.returncode == 0, r.stderr
    assert "127.0.0.1" in r.stdout and "127.0.0.2" in r.stdout
    assert "200 finished" in r.stdout and "0/1" in r.stdout and "0/2" in r.stdout
    assert "head loop lag: p50 " in r.stdout and " turns)" in r.stdout  # issue 13

    pids = {int(rec["pid"]) for rec in _rundir.live(run_env["TASKMESH_RUN_DIR"])}
    assert len(pids) == 3
    r = tm("stop", env=run_env)
    assert r.returncode == 0 and "stopped 3" in r.stdout
    assert not wait_gone(pids, 10)
    r = tm("stop", env=run_env)
    assert "no taskmesh processes" in r.stdout


def test_a_stopped_node_leaves_at_once_and_status_hides_it(run_env, tmp_path):
    """`taskmesh stop` on a worker machine tells the head (Goodbye): with a heartbeat time-out
    of 60 s, only that can make the head see the node gone within the wait below."""
    env = {**run_env, "TASKMESH_HEARTBEAT_TIMEOUT_S": "60"}
    port = free_port()
    r = tm("start", "--head", "--port", str(port), "--num-cpus", "1", "--node-ip", "127.0.0.1",
           env=env)
    assert r.returncode == 0, r.stderr
    other = {**env, "TASKMESH_RUN_DIR": str(tmp_path / "other")}  # "another machine"
    r = tm("start", "--worker", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
           "--node-ip", "127.0.0.2", env=other)
    assert r.returncode == 0, r.stderr
    try:
        assert "127.0.0.2" in tm("status", env=env).stdout
        r = tm("stop", env=other)
        assert r.returncode == 0 and "stopped 1" in r.stdout
        seen = [""]

        def counts_it_dead() -> str | None:
            seen[0] = tm("status", env=env).stdout
            return seen[0] if "(and 1 dead node: --all lists them)" in seen[0] else None

        out = until(counts_it_dead, timeout=20, interval=0.1,
                    what=lambda: f"status to count the stopped node as dead: {seen[0]}")
        assert "127.0.0.2" not in out
        full = tm("status", "--all", env=env).stdout
        assert any("127.0.0.2" in line and " dead " in line for line in full.splitlines()), full
    finally:
        tm("stop", env=other)


def _one_line_error(r: subprocess.CompletedProcess, elapsed: float, *needles: str) -> None:
    assert r.returncode != 0
    assert elapsed < 10
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskmesh: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_errors_are_one_line_and_fast(run_env):
    port = free_port()
    assert tm("start", "--head", "--port", str(port), "--num-cpus", "0", env=run_env).returncode == 0

    t = time.monotonic()
    r = tm("start", "--head", "--port", str(free_port()), env=run_env)
    _one_line_error(r, time.monotonic() - t, "already running")

    other_env = {**run_env, "TASKMESH_RUN_DIR": run_env["TASKMESH_RUN_DIR"] + "-other"}
    t = time.monotonic()
    r = tm("start", "--head", "--port", str(port), env=other_env)
    _one_line_error(r, time.monotonic() - t, "already in use", str(port))

    dead_port = free_port()
    t = time.monotonic()
    r = tm("start", "--worker", "--address", f"127.0.0.1:{dead_port}", env=other_env)
    _one_line_error(r, time.monotonic() - t, f"127.0.0.1:{dead_port}")

    t = time.monotonic()
    r = tm("start", "--worker", "--address", "no-such-host.invalid:7300", env=other_env)
    _one_line_error(r, time.monotonic() - t, "no-such-host.invalid")

    t = time.monotonic()
    r = tm("status", "--address", f"127.0.0.1:{dead_port}", env=other_env)
    _one_line_error(r, time.monotonic() - t, f"127.0.0.1:{dead_port}")

    r = tm("start", "--worker", env=other_env)
    assert r.returncode != 0


def test_a_driver_that_dies_has_its_tasks_cancelled_and_the_worker_killed(run_env):
    port = free_port()
    r = tm("start", "--head", "--port", str(port), "--num-cpus", "2", "--node-ip", "127.0.0.1",
           env=run_env)
    assert r.returncode == 0, r.stderr
    code = (
        "import os, sys, time, taskmesh\n"
        "from tests.support.wait import until\n"
        "taskmesh.init(address='auto')\n"
        "@taskmesh.remote\n"
        "def stuck():\n"
        "    time.sleep(600)\n"
        "refs = [stuck.remote() for _ in range(6)]\n"
        "until(lambda: taskmesh.nodes()[0]['TasksRunning'] >= 2, timeout=30, what='2 running')\n"
        "print('RUNNING', flush=True)\n"
        "time.sleep(600)\n"
    )
    victim = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=run_env)
    try:
        assert victim.stdout.readline().strip() == "RUNNING"
        victim.kill()  # the driver dies with 2 tasks running and 4 queued
        victim.wait(10)
        probe = (
            "import time, taskmesh\n"
            "from tests.support.wait import until\n"
            "taskmesh.init(address='auto')\n"
            "def status():\n"
            "    return taskmesh._context.CTX.core.info('status')\n"
            "def clean():\n"
            "    st = status()\n"
            "    return st['tasks']['queued'] == st['tasks']['running'] == st['objects'] == 0\n"
            "until(clean, timeout=10, what=lambda: f'no task or object left: {status()}')\n"
            "@taskmesh.remote\n"
            "def one():\n"
            "    return 1\n"
            "print('CLEAN', sum(taskmesh.get([one.remote() for _ in range(10)])))\n"
        )
        r = run_python(probe, env=run_env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["CLEAN", "10"]  # and the pool works again
    finally:
        if victim.poll() is None:
            victim.kill()
