"""Actors on a real embedded cluster: state, call order, errors, handles passed around, names,
lifetimes, kill, restarts, threaded and async concurrency."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

import taskmesh
from taskmesh._context import CTX

from ..support.clients import run_python

pytestmark = pytest.mark.timeout(120)


@taskmesh.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start
        self.log: list = []

    def add(self, k: int = 1) -> int:
        self.n += k
        self.log.append(k)
        return self.n

    def history(self) -> list:
        return self.log

    def pid(self) -> int:
        return os.getpid()

    def fail(self) -> None:
        raise KeyError("no such key")

    @taskmesh.method(num_returns=2)
    def pair(self):
        return self.n, -self.n


def test_state_lives_in_the_actor_and_calls_run_in_submission_order(cluster):
    c = Counter.remote(100)
    refs = [c.add.remote(i) for i in range(500)]
    assert taskmesh.get(refs) == [100 + sum(range(i + 1)) for i in range(500)]
    assert taskmesh.get(c.history.remote()) == list(range(500))
    a, b = c.pair.remote()
    assert taskmesh.get([a, b]) == [100 + sum(range(500)), -(100 + sum(range(500)))]


def test_each_actor_has_a_process_of_its_own_and_the_pool_keeps_its_size(cluster):
    actors = [Counter.remote() for _ in range(3)]
    pids = taskmesh.get([a.pid.remote() for a in actors])
    assert len(set(pids)) == 3 and os.getpid() not in pids

    @taskmesh.remote
    def where():
        return os.getpid()

    task_pids = set(taskmesh.get([where.remote() for _ in range(20)]))
    assert not task_pids & set(pids)  # tasks never run in an actor's process
    node = next(n for n in taskmesh.nodes() if n["Alive"])
    assert node["Actors"] >= 3


def test_a_method_error_re_raises_like_a_task_error_and_the_actor_lives_on(cluster):
    c = Counter.remote()
    with pytest.raises(KeyError) as info:
        taskmesh.get(c.fail.remote())
    assert isinstance(info.value, taskmesh.TaskError) and "Counter.fail" in str(info.value)
    assert taskmesh.get(c.add.remote(5)) == 5


def test_handles_can_be_passed_to_tasks_and_to_other_actors(cluster):
    c = Counter.remote()

    @taskmesh.remote
    def bump(handle, k):
        return taskmesh.get(handle.add.remote(k))

    @taskmesh.remote
    class Forwarder:
        def __init__(self, target):
            self.target = target

        def bump(self, k):
            return taskmesh.get(self.target.add.remote(k))

    f = Forwarder.remote(c)
    assert taskmesh.get(bump.remote(c, 10)) == 10
    assert taskmesh.get(f.bump.remote(5)) == 15
    assert taskmesh.get(c.add.remote(0)) == 15


def test_a_constructor_error_makes_calls_fail_with_actor_died_error_naming_the_cause(cluster):
    @taskmesh.remote
    class Broken:
        def __init__(self):
            raise ValueError("bad config")

        def f(self):
            return 1

    b = Broken.remote()
    with pytest.raises(taskmesh.ActorDiedError) as info:
        taskmesh.get(b.f.remote(), timeout=30)
    msg = str(info.value)
    assert "Broken" in msg and "ValueError: bad config" in msg and "node" in msg


def test_named_actors_get_if_exists_and_get_actor(cluster):
    a = Counter.options(name="shared-counter").remote(1)
    same = Counter.options(name="shared-counter", get_if_exists=True).remote(999)
    assert same == a
    assert taskmesh.get(taskmesh.get_actor("shared-counter").add.remote(1)) == 2
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="shared-counter").remote()
    with pytest.raises(ValueError, match="no live actor named 'nobody'"):
        taskmesh.get_actor("nobody")
    taskmesh.kill(a)
    with pytest.raises(ValueError):
        taskmesh.get_actor("shared-counter")


def test_kill_fails_pending_calls_with_actor_died_error(cluster):
    @taskmesh.remote
    class Sleeper:
        def nap(self, s):
            import time
            time.sleep(s)
            return s

    s = Sleeper.remote()
    assert taskmesh.get(s.nap.remote(0)) == 0
    running = s.nap.remote(60)
    queued = s.nap.remote(0)
    taskmesh.kill(s)
    for ref in (running, queued):
        with pytest.raises(taskmesh.ActorDiedError, match="killed by taskmesh.kill"):
            taskmesh.get(ref, timeout=30)
    with pytest.raises(taskmesh.ActorDiedError):
        taskmesh.get(s.nap.remote(0), timeout=30)


def test_a_killed_process_restarts_the_actor_and_retries_calls(cluster):
    c = Counter.options(max_restarts=1, max_task_retries=1).remote(7)
    first = taskmesh.get(c.pid.remote())
    assert taskmesh.get(c.add.remote()) == 8
    os.kill(first, signal.SIGKILL)
    assert taskmesh.get(c.add.remote(), timeout=30) == 8  # the constructor ran again
    second = taskmesh.get(c.pid.remote())
    assert second != first
    os.kill(second, signal.SIGKILL)  # no restarts left
    with pytest.raises(taskmesh.ActorDiedError) as info:
        taskmesh.get(c.add.remote(), timeout=30)
    assert "SIGKILL" in str(info.value) and "Counter" in str(info.value)


def test_a_threaded_actor_runs_calls_at_once(cluster):
    @taskmesh.remote(max_concurrency=4)
    class Gate:
        def __init__(self):
            self.barrier = threading.Barrier(4, timeout=20)

        def meet(self, i):
            self.barrier.wait()  # only returns once four calls are inside at the same time
            return i

    g = Gate.remote()
    assert taskmesh.get([g.meet.remote(i) for i in range(8)], timeout=60) == list(range(8))


def test_an_async_actor_interleaves_its_coroutines(cluster):
    @taskmesh.remote
    class Rendezvous:
        def __init__(self):
            self.event = None

        async def wait_for_other(self):
            self.event = self.event or asyncio.Event()
            await asyncio.wait_for(self.event.wait(), 20)
            return "waited"

        async def release(self):
            self.event = self.event or asyncio.Event()
            self.event.set()
            return "released"

    r = Rendezvous.remote()
    waiting = r.wait_for_other.remote()  # would block forever if calls ran one at a time
    assert taskmesh.get([r.release.remote(), waiting], timeout=60) == ["released", "waited"]


DRIVER = r'''
import sys, taskmesh
taskmesh.init(address=sys.argv[1] if len(sys.argv) > 1 else None)
@taskmesh.remote
class Box:
    def __init__(self, v):
        self.v = v
    def get(self):
        return self.v
Box.options(name="detached-box", lifetime="detached").remote("kept")
Box.options(name="mine-box").remote("gone")
assert taskmesh.get(taskmesh.get_actor("mine-box").get.remote()) == "gone"
print("made")
'''


def test_a_detached_actor_outlives_its_creator_and_others_die_with_it(cluster, tmp_path):
    address = CTX.core.address
    script = tmp_path / "creator.py"
    script.write_text(DRIVER)
    r = run_python(f"import sys; sys.argv = ['x', {address!r}]; exec(open({str(script)!r}).read())")
    assert r.returncode == 0 and "made" in r.stdout, r.stderr
    box = taskmesh.get_actor("detached-box")
    assert taskmesh.get(box.get.remote(), timeout=30) == "kept"
    with pytest.raises(ValueError):
        taskmesh.get_actor("mine-box")  # died with the driver that made it
    taskmesh.kill(box)


def test_bad_actor_options_and_direct_calls_are_clear_errors(cluster):
    with pytest.raises(TypeError, match="num_returns is not an actor option"):  # as Ray
        Counter.options(num_returns=2)
    with pytest.raises(ValueError, match="max_restarts"):
        Counter.options(max_restarts=-2)
    with pytest.raises(TypeError, match="Counter.remote"):
        Counter()
    c = Counter.remote()
    with pytest.raises(AttributeError, match="no method 'nope'"):
        c.nope
    with pytest.raises(TypeError, match=r"\.add\.remote"):
        c.add(1)
