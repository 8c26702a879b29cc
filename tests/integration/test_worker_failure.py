"""A worker that dies mid-task: the task is retried, or fails with a clear error."""

from __future__ import annotations

import os

import pytest

import taskmesh


@taskmesh.remote(max_retries=0)
def die(code):
    os._exit(code)


def test_worker_death_without_retries_names_task_pid_and_cause(cluster):
    with pytest.raises(taskmesh.WorkerCrashedError) as info:
        taskmesh.get(die.remote(7), timeout=30)
    msg = str(info.value)
    assert "die" in msg and "exited with code 7" in msg and "pid" in msg
    # the pool was refilled and keeps working
    assert taskmesh.get(taskmesh.put(1)) == 1

    @taskmesh.remote
    def ok():
        return os.getpid()

    assert taskmesh.get(ok.remote(), timeout=30) > 0


def test_worker_death_is_retried(cluster, tmp_path):
    marker = tmp_path / "attempts"

    @taskmesh.remote(max_retries=2)
    def flaky(path):
        with open(path, "a") as f:
            f.write("x")
        if len(open(path).read()) < 2:
            os.kill(os.getpid(), 9)
        return "survived"

    assert taskmesh.get(flaky.remote(str(marker)), timeout=30) == "survived"
    assert marker.read_text() == "xx"


def test_signal_is_named(cluster):
    @taskmesh.remote(max_retries=0)
    def killed():
        os.kill(os.getpid(), 9)

    with pytest.raises(taskmesh.WorkerCrashedError, match="SIGKILL"):
        taskmesh.get(killed.remote(), timeout=30)
