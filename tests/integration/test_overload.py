"""Overload never looks like failure (issue 13), on the embedded cluster: a flood of tasks
is slowed down, never taken for a failure, and every result comes back. (Reduced size: the
million-task run is benchmarks' million_tasks; docs/performance.md has its figures.)"""

from __future__ import annotations

import time

import pytest

import taskmesh
from taskmesh._context import CTX

from ..support.wait import until

pytestmark = pytest.mark.timeout(300)


@taskmesh.remote
def double(i):
    return 2 * i


@pytest.mark.parametrize("fresh_cluster", [2], indirect=True)
def test_a_flood_of_submissions_is_slowed_down_not_failed(fresh_cluster):
    n = 200_000
    refs = [double.remote(i) for i in range(n)]  # as fast as one thread can submit
    assert taskmesh.get(refs, timeout=280) == [2 * i for i in range(n)]
    nodes = taskmesh.nodes()
    assert [(x["NodeID"], x["Alive"]) for x in nodes] == [(CTX.node_id, True)]  # never lost
    status = CTX.core.info("status")
    assert status["tasks"]["finished"] >= n and status["tasks"]["failed"] == 0
    assert status["loop_lag"]["messages"] > 0  # the head measured its loop's lag


@pytest.mark.parametrize("fresh_cluster", [2], indirect=True)
def test_releasing_a_large_number_of_refs_at_once_is_done_in_slices(fresh_cluster):
    refs = [taskmesh.put(i) for i in range(100_000)]  # owned by this driver, held by the head
    before = CTX.core.info("status")["objects"]
    del refs  # one Release of 100,000 ids: the head takes it in slices between other work
    assert taskmesh.get(double.remote(21)) == 42
    until(lambda: CTX.core.info("status")["objects"] <= before - 100_000, timeout=60,
          interval=0.1, what="the released objects to be freed")


WAITER = r'''
import sys, time, taskmesh
taskmesh.init(address=sys.argv[1])

@taskmesh.remote
def slow():
    time.sleep(7)
    return "done"

ref = slow.remote()
print("WAITING", flush=True)
print(taskmesh.get(ref, timeout=60), flush=True)
'''


@pytest.mark.parametrize("fresh_cluster", [1], indirect=True)
def test_a_driver_that_was_stopped_does_not_take_the_head_for_dead(fresh_cluster, tmp_path):
    """A driver stopped (SIGSTOP) for 5 s while it waits in get() is not the head's silence:
    when it runs again it goes on waiting, and gets the result."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    secret = CTX.cluster.security.key.env()
    proc = subprocess.Popen([sys.executable, str(script), CTX.core.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **secret})
    try:
        assert proc.stdout.readline().strip() == "WAITING"
        time.sleep(0.5)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(5)  # longer than head_timeout_s (3 s)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out.strip() == "done", err
