"""cancel() and timeout_s on a real cluster: queued tasks never run, running ones are
interrupted (or their worker killed with force), time-outs stop tasks, dependents fail too."""

from __future__ import annotations

import os
import time

import pytest

import taskmesh

from ..support.procs import wait_gone
from ..support.wait import until

pytestmark = pytest.mark.timeout(120)


@taskmesh.remote
def nap(seconds: float, path: str | None = None):
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


@taskmesh.remote
def busy(seconds: float) -> int:
    """Pure Python loop: interruptible between bytecodes."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def _started(path) -> list[int]:
    until(lambda: path.exists() and path.read_text().strip(), timeout=30, interval=0.01,
          what="the task to start")
    return [int(x) for x in path.read_text().split()]


def test_cancel_interrupts_a_running_task_and_its_worker_lives_on(fresh_cluster, tmp_path):
    marker = tmp_path / "started"
    ref = nap.remote(600, str(marker))
    [pid] = _started(marker)
    taskmesh.cancel(ref)
    with pytest.raises(taskmesh.TaskCancelledError, match="nap was cancelled"):
        taskmesh.get(ref, timeout=30)
    # the same process runs new work at once: it was interrupted, not killed or left sleeping
    pids = set(taskmesh.get([nap.remote(0) for _ in range(20)], timeout=30))
    assert pid in pids


def test_cancel_of_queued_tasks_means_they_never_run(tmp_path):
    taskmesh.init(num_cpus=1)
    try:
        marker = tmp_path / "ran"
        first = nap.remote(0.5, str(marker))
        queued = [nap.remote(0, str(marker)) for _ in range(5)]
        for r in queued[1:]:
            taskmesh.cancel(r)
        assert taskmesh.get([first, queued[0]], timeout=30)
        for r in queued[1:]:
            with pytest.raises(taskmesh.TaskCancelledError):
                taskmesh.get(r, timeout=30)
        assert len(marker.read_text().split()) == 2  # the cancelled four never started
    finally:
        taskmesh.shutdown()


def test_force_kills_the_worker_and_a_replacement_starts(fresh_cluster, tmp_path):
    marker = tmp_path / "started"
    ref = nap.remote(600, str(marker))
    [pid] = _started(marker)
    taskmesh.cancel(ref, force=True)
    with pytest.raises(taskmesh.TaskCancelledError):
        taskmesh.get(ref, timeout=30)
    assert not wait_gone({pid}, timeout=30), "the worker was not killed"
    assert len(taskmesh.get([nap.remote(0) for _ in range(4)], timeout=30)) == 4


def test_dependents_of_a_cancelled_task_fail_with_the_same_error(cluster):
    parent = nap.remote(600)
    child = nap.remote(parent)
    taskmesh.cancel(parent)
    with pytest.raises(taskmesh.TaskCancelledError):
        taskmesh.get(child, timeout=30)


def test_timeout_s_stops_a_sleeping_and_a_busy_task(cluster):
    with pytest.raises(taskmesh.TaskTimeoutError, match="timeout_s=0.3 s") as info:
        taskmesh.get(nap.options(timeout_s=0.3).remote(600), timeout=60)
    assert "nap" in str(info.value) and "node" in str(info.value)
    with pytest.raises(taskmesh.TaskTimeoutError):
        taskmesh.get(busy.options(timeout_s=0.3).remote(600), timeout=60)
    assert isinstance(taskmesh.TaskTimeoutError("x"), TimeoutError)
    # a task within its time-out is unaffected, and the workers keep working
    assert taskmesh.get(busy.options(timeout_s=30).remote(0.05), timeout=60) > 0


def test_an_actor_call_can_be_cancelled_and_the_actor_lives_on(cluster):
    @taskmesh.remote
    class Slow:
        def nap(self, s):
            time.sleep(s)
            return s

    a = Slow.remote()
    assert taskmesh.get(a.nap.remote(0)) == 0
    running = a.nap.remote(600)
    queued = a.nap.remote(0)
    taskmesh.cancel(running)  # interrupted if it started, skipped if not: cancelled either way
    with pytest.raises(taskmesh.TaskCancelledError):
        taskmesh.get(running, timeout=30)
    assert taskmesh.get(queued, timeout=30) == 0
    assert taskmesh.get(a.nap.remote(0.01), timeout=30) == 0.01


def test_a_call_cancelled_while_its_arguments_are_read_never_runs(cluster):
    """The cancel comes while the worker is still reading the call's arguments (before the
    user's code): the interrupt then finds no user code to stop, and the call must not start
    afterwards (it did, and held the actor for its whole run)."""

    def slowly(value):
        time.sleep(1.0)  # (in the worker, as the argument is unpickled)
        return value

    class SlowToRead:
        def __reduce__(self):
            return (slowly, (None,))

    @taskmesh.remote
    class Slow:
        def nap(self, s, _arg=None):
            time.sleep(s)
            return s

    a = Slow.remote()
    assert taskmesh.get(a.nap.remote(0), timeout=30) == 0
    running = a.nap.remote(600, SlowToRead())
    queued = a.nap.remote(0)
    time.sleep(0.5)  # (the worker is reading the first call's arguments)
    taskmesh.cancel(running)
    with pytest.raises(taskmesh.TaskCancelledError):
        taskmesh.get(running, timeout=30)
    assert taskmesh.get(queued, timeout=30) == 0


def test_bad_timeout_is_a_clear_error():
    with pytest.raises(ValueError, match="timeout_s must be a number of seconds > 0"):
        nap.options(timeout_s=0)
    with pytest.raises(TypeError, match="cancel\\(\\) takes an ObjectRef"):
        taskmesh.cancel("not a ref")
