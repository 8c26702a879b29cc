"""``taskmesh logs`` against a real embedded cluster: the files of the node and the head, a
worker's output, one task's lines found by its id, following a file, and its errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import taskmesh
from taskmesh._context import CTX

from ..support.wait import until

pytestmark = pytest.mark.timeout(120)


@taskmesh.remote
def say(word, n=1):
    for i in range(n):
        print(f"{word} {i}")
    print(f"{word} on stderr", file=sys.stderr)
    return os.getpid()


@taskmesh.remote
class Ticker:
    def pid(self):
        return os.getpid()

    def tick(self, n):
        for i in range(n):
            print(f"tick {i}", flush=True)
            time.sleep(0.2)


def _logs(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, **CTX.cluster.security.key.env()}
    return subprocess.run([sys.executable, "-m", "taskmesh._cli", "logs", "--address",
                           CTX.core.address, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_list_show_and_find_across_the_cluster(fresh_cluster):
    pid = taskmesh.get(say.remote("alpha", 3))
    ref = say.options(num_cpus=1).remote("beta")
    pid_b = taskmesh.get(ref)
    node_id = CTX.node_id

    def listed() -> str | None:
        r = _logs()
        return r.stdout if f"worker-" in r.stdout and f"-{pid}.out" in r.stdout else None

    table = until(listed, timeout=10, what="the worker's files in the list")
    assert table.splitlines()[0].split() == ["NODE", "FILE", "SIZE", "MODIFIED"]
    assert any(line.startswith("head ") and "head.log" in line for line in table.splitlines())
    assert any(line.startswith(node_id) and "agent.log" in line for line in table.splitlines())

    r = _logs("--worker", str(pid))
    assert r.returncode == 0, r.stderr
    assert "alpha 0\nalpha 1\nalpha 2\n" in r.stdout and "\x1e" not in r.stdout
    r = _logs("--worker", str(pid), "--err", "--tail", "1")
    assert r.returncode == 0 and r.stdout.splitlines()[-1:] == [
        "beta on stderr" if pid == pid_b else "alpha on stderr"]

    # one task's lines, found by its id (or an ObjectRef's hex), even on a shared worker
    r = _logs("--task", ref.hex())
    assert r.returncode == 0, r.stderr
    shown = [line for line in r.stdout.splitlines() if not line.startswith("==")]
    assert sorted(shown) == ["beta 0", "beta on stderr"]

    r = _logs("head.log", "--node", "head")
    assert r.returncode == 0 and "taskmesh head listening" in r.stdout, r


def test_follow_prints_new_lines_as_they_are_written(fresh_cluster):
    ticker = Ticker.remote()
    pid = taskmesh.get(ticker.pid.remote())
    done = ticker.tick.remote(25)
    env = {**os.environ, **CTX.cluster.security.key.env()}
    follow = subprocess.Popen([sys.executable, "-m", "taskmesh._cli", "logs", "--address",
                               CTX.core.address, "--worker", str(pid), "-f", "--tail", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = [follow.stdout.readline().strip() for _ in range(3)]
    finally:
        follow.kill()
        follow.communicate(timeout=10)
    numbers = [int(line.split()[1]) for line in seen if line.startswith("tick ")]
    assert len(numbers) == 3 and numbers == sorted(numbers), seen
    taskmesh.get(done)


def test_bad_requests_get_one_line_errors(fresh_cluster):
    for args, needle in [
        (("../../etc/passwd", "--node", "head"), "no node has ../../etc/passwd"),
        (("agent.log", "--node", "nope"), "no live node nope"),
        (("--task", "12"), "not an id"),
        (("--task", "ffffffffffffffffffffffffffffffff"), "no output of task"),
        (("--worker", "1", "--task", "abcdefabcdef"), "give one of"),
    ]:
        r = _logs(*args)
        assert r.returncode != 0, args
        assert needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
