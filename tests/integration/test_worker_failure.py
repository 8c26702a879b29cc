"""A worker that dies mid-task: the task is retried, or fails with a clear error."""

from __future__ import annotations

import os

import pytest

import taskmesh

from ..support.wait import until


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


@pytest.mark.parametrize("fresh_cluster", [1], indirect=True)  # one worker: which one is known
def test_workers_keep_coming_when_the_fork_server_is_killed(fresh_cluster):
    """The node agent forks workers from a fork server; if that dies, it starts another (and
    until then starts interpreters): a crashed worker is still replaced and reported."""
    import signal

    import psutil

    def fork_servers() -> list[psutil.Process]:
        me = psutil.Process()
        return [p for p in me.children(recursive=True)
                if "taskmesh-fork-server" in " ".join(p.cmdline())]

    [zygote] = fork_servers()
    zygote.send_signal(signal.SIGKILL)
    zygote.wait(10)
    with pytest.raises(taskmesh.WorkerCrashedError, match="exit status is unknown"):
        taskmesh.get(die.remote(7), timeout=30)  # forked by the dead one: nobody can tell
    until(lambda: len(fork_servers()) == 1, timeout=30, what="a new fork server")
    assert fork_servers()[0].pid != zygote.pid
    with pytest.raises(taskmesh.WorkerCrashedError, match="exited with code 3"):
        taskmesh.get(die.remote(3), timeout=30)  # forked by the new one

    @taskmesh.remote
    def ok():
        return os.getpid()

    assert len(set(taskmesh.get([ok.remote() for _ in range(10)], timeout=30))) >= 1
