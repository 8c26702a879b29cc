"""Ray's documented semantics that ported programs rely on (issue 12), on a real embedded cluster:
a result is never held behind the next task, get() of a list fails as soon as one object
failed, argument and option errors are raised at the call, actors end when their last handle
is gone, actor classes read through to the class, per-method options, recursive cancel, and a
refused request gets an answer instead of silence."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest

import taskmesh
from taskmesh import _protocol as P
from taskmesh._context import CTX
from taskmesh.errors import TaskmeshError

from ..support.clients import run_python
from ..support.procs import wait_gone
from ..support.wait import until

pytestmark = pytest.mark.timeout(120)


@taskmesh.remote
def sleeper(s: float) -> float:
    time.sleep(s)
    return s


@taskmesh.remote
def fails(message: str) -> None:
    raise ValueError(message)


def _cpus_free() -> float:
    return taskmesh.available_resources().get("CPU", 0.0)


# ---------------------------------------------------------------- 1. results are not held back


@pytest.mark.parametrize("fresh_cluster", [1], indirect=True)
def test_a_finished_result_is_not_held_behind_the_next_task_on_its_worker(fresh_cluster):
    taskmesh.get([sleeper.remote(0) for _ in range(20)])  # the head learns they are short...
    first, long = sleeper.remote(0), sleeper.remote(6)  # ...and queues both on the one worker
    ready, _ = taskmesh.wait([first, long], num_returns=1, timeout=4)
    assert ready == [first]  # (before the fix it came only once the 6 s task ended)
    assert taskmesh.wait([long], timeout=0)[0] == []  # the long one still runs meanwhile
    assert taskmesh.get(first, timeout=1) == 0
    taskmesh.cancel(long)


# ---------------------------------------------------------------- 2. get() fails fast; arguments


def test_get_of_a_list_raises_the_first_failure_while_others_still_run(cluster):
    hung = sleeper.remote(60)
    bad = fails.remote("boom")
    with pytest.raises(ValueError, match="boom"):  # not GetTimeoutError after 30 s
        taskmesh.get([hung, bad], timeout=30)
    taskmesh.cancel(hung)


def test_get_raises_an_error_that_arrived_before_the_call_at_once(cluster):
    bad = fails.remote("early")
    taskmesh.wait([bad])  # the error is here now
    hung = sleeper.remote(60)
    with pytest.raises(ValueError, match="early"):
        taskmesh.get([hung, bad], timeout=30)
    taskmesh.cancel(hung)


def test_get_of_a_list_raises_for_a_dead_actor_while_another_call_hangs(cluster):
    @taskmesh.remote
    class Doomed:
        def ping(self) -> int:
            return 1

    hung = sleeper.remote(60)
    d = Doomed.remote()
    assert taskmesh.get(d.ping.remote()) == 1
    taskmesh.kill(d)
    with pytest.raises(taskmesh.ActorDiedError):
        taskmesh.get([hung, d.ping.remote()], timeout=30)
    taskmesh.cancel(hung)


def test_wait_and_get_check_their_arguments_as_ray_does(cluster):
    ref = sleeper.remote(0)
    with pytest.raises(TypeError, match="single ObjectRef"):
        taskmesh.wait(ref)
    with pytest.raises(TypeError, match="list"):
        taskmesh.wait((ref,))
    with pytest.raises(TypeError, match="int"):
        taskmesh.wait([ref, 1])
    with pytest.raises(ValueError, match="unique"):
        taskmesh.wait([ref, ref])
    with pytest.raises(ValueError, match="num_returns"):
        taskmesh.wait([ref], num_returns=0)
    with pytest.raises(ValueError, match="num_returns"):
        taskmesh.wait([ref], num_returns=2)
    with pytest.raises(ValueError, match="timeout"):
        taskmesh.wait([ref], timeout=-1)
    assert taskmesh.wait([]) == ([], [])
    with pytest.raises(ValueError, match="ObjectRef or a list"):
        taskmesh.get((ref,))
    with pytest.raises(TypeError, match="str"):
        taskmesh.get([ref, "x"])
    with pytest.raises(ValueError, match="timeout"):
        taskmesh.get(ref, timeout=-1)
    assert taskmesh.get([ref]) == [0]


# ---------------------------------------------------------------- 3. errors at the call


@taskmesh.remote
def two(x, y=1, *, z=2):
    return x + y + z


@taskmesh.remote
def anything(*args, **kwargs):
    return len(args), sorted(kwargs)


@taskmesh.remote
class Shaped:
    def __init__(self, a, b=0):
        self.a = a + b

    def m(self, x, *, k=1):
        return self.a + x * k

    @staticmethod
    def s(x, y):
        return x * y

    @classmethod
    def c(cls, z):
        return cls.__name__, z


def test_arguments_are_checked_against_the_signature_at_the_call(cluster):
    with pytest.raises(TypeError, match=r"two\.remote\(\): missing a required argument: 'x'"):
        two.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        two.remote(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'w'"):
        two.remote(1, w=3)
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        two.remote(1, x=1)
    assert taskmesh.get(two.remote(1, z=5)) == 7
    assert taskmesh.get(two.options(name="renamed").remote(x=1)) == 4
    assert taskmesh.get(anything.remote(1, 2, a=3)) == (2, ["a"])
    with pytest.raises(TypeError, match=r"Shaped\.remote\(\): missing a required argument: 'a'"):
        Shaped.remote()
    with pytest.raises(TypeError, match="unexpected keyword argument 'bb'"):
        Shaped.options(max_restarts=1).remote(1, bb=2)
    h = Shaped.remote(1, b=1)
    with pytest.raises(TypeError, match=r"m\.remote\(\): missing a required argument: 'x'"):
        h.m.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        h.m.remote(1, 2)
    with pytest.raises(TypeError, match="missing a required argument: 'y'"):
        h.s.remote(1)
    with pytest.raises(TypeError, match="too many positional"):
        h.c.remote(1, 2)
    with pytest.raises(AttributeError, match="no method 'nope'"):
        h.nope.remote()
    assert taskmesh.get([h.m.remote(3, k=2), h.s.remote(2, 5), h.c.remote(9)]) == [
        8, 10, ("Shaped", 9)]

    @taskmesh.remote
    def uses_handle(handle):  # a handle that travelled checks the same way
        try:
            handle.m.remote()
        except TypeError as exc:
            return str(exc)
        return "no error"

    assert "missing a required argument: 'x'" in taskmesh.get(uses_handle.remote(h))


def test_bad_decorator_arguments_fail_at_decoration():
    with pytest.raises(ValueError, match="num_cpus"):
        taskmesh.remote(num_cpus=-1)(lambda: 1)
    with pytest.raises(ValueError, match="unknown task option 'bogus'"):
        taskmesh.remote(bogus=1)(lambda: 1)
    with pytest.raises(ValueError, match="max_restarts is an actor option"):
        taskmesh.remote(max_restarts=1)(lambda: 1)
    with pytest.raises(TypeError, match="num_returns is not an actor option"):
        taskmesh.remote(num_returns=2)(type("C", (), {}))
    with pytest.raises(ValueError, match="retry_exceptions"):
        taskmesh.remote(retry_exceptions=["not a class"])(lambda: 1)
    with pytest.raises(TypeError, match="at least one"):
        taskmesh.method()
    with pytest.raises(ValueError, match="unknown actor method option 'num_cpus'"):
        taskmesh.method(num_cpus=1)


# ---------------------------------------------------------------- 4. actor lifetimes


@taskmesh.remote(num_cpus=1)
class Holder:
    def __init__(self, value=None):
        self.value = value

    def pid(self) -> int:
        return os.getpid()

    def get(self):
        return self.value


@taskmesh.remote
def call_later(handle, delay):
    time.sleep(delay)
    return taskmesh.get(handle.pid.remote())


def test_an_actor_ends_once_its_last_handle_is_gone_and_its_resources_return(cluster):
    until(lambda: _cpus_free() == 2.0, timeout=20.0, what="both CPUs to be free")
    a = Holder.remote()
    pid = taskmesh.get(a.pid.remote())
    assert _cpus_free() == 1.0
    del a
    assert not wait_gone({pid}, timeout=20), "the actor's process outlived its last handle"
    until(lambda: _cpus_free() == 2.0, timeout=20.0, what="the actor's CPU to return")


def test_a_handle_held_by_a_task_keeps_the_actor_alive(cluster):
    a = Holder.remote()
    pid = taskmesh.get(a.pid.remote())
    ref = call_later.remote(a, 1.5)
    del a  # the task still holds a copy: the actor must answer it
    assert taskmesh.get(ref, timeout=30) == pid
    assert not wait_gone({pid}, timeout=20)


def test_a_handle_inside_a_stored_object_keeps_the_actor_alive(cluster):
    a = Holder.remote("kept")
    pid = taskmesh.get(a.pid.remote())
    box = taskmesh.put([a])
    del a
    time.sleep(0.5)  # what would end it (the Release of its last ref) has been sent by now
    [again] = taskmesh.get(box)
    assert taskmesh.get(again.get.remote()) == "kept"
    del box, again
    assert not wait_gone({pid}, timeout=20)


def test_calls_made_before_the_last_handle_went_still_run(cluster):
    assert taskmesh.get(Holder.remote("v").get.remote(), timeout=30) == "v"
    refs = [Holder.remote(i).get.remote() for i in range(3)]
    assert taskmesh.get(refs, timeout=30) == [0, 1, 2]


def test_named_and_detached_actors_live_on_without_handles(cluster):
    Holder.options(name="kept-by-name").remote("named")
    Holder.options(name="kept-detached", lifetime="detached").remote("detached")
    time.sleep(0.5)  # their handles were released
    named = taskmesh.get_actor("kept-by-name")
    detached = taskmesh.get_actor("kept-detached")
    assert taskmesh.get([named.get.remote(), detached.get.remote()]) == ["named", "detached"]
    taskmesh.kill(named)
    taskmesh.kill(detached)


SLOW_CREATOR = r'''
import os, sys, time, taskmesh
taskmesh.init(address=sys.argv[1])
@taskmesh.remote(num_cpus=0)
class Slow:
    def __init__(self, path):
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        time.sleep(120)
a = Slow.remote(sys.argv[2])
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
print("constructing")
os._exit(0)  # the owner dies while its actor is being created
'''


def test_an_actor_being_created_when_its_owner_dies_is_removed(cluster, tmp_path):
    script, mark = tmp_path / "creator.py", tmp_path / "pid"
    script.write_text(SLOW_CREATOR)
    r = run_python(f"import sys; sys.argv = ['x', {CTX.core.address!r}, {str(mark)!r}]; "
                   f"exec(open({str(script)!r}).read())")
    assert "constructing" in r.stdout, r.stderr
    pid = int(mark.read_text())
    assert not wait_gone({pid}, timeout=20), "the half-made actor outlived its owner"


# ---------------------------------------------------------------- 5. class attributes


class Base:
    PARENT_ATTR = "from the parent"


@taskmesh.remote
class Classy(Base):
    X = 41

    @classmethod
    def make(cls, v):
        return v + 1

    @staticmethod
    def helper(v):
        return v * 2

    def read(self):
        return (Classy.X, Classy.PARENT_ATTR, Classy.make(1), Classy.helper(3),
                isinstance(self, Classy))


def test_class_attributes_read_through_the_actor_class(cluster):
    c = Classy.remote()
    assert taskmesh.get(c.read.remote()) == (41, "from the parent", 2, 6, True)
    assert Classy.X == 41 and Classy.helper(2) == 4 and Classy.PARENT_ATTR == "from the parent"
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        Classy.missing


# ---------------------------------------------------------------- 6. per-method options


@taskmesh.remote
class Flaky:
    def __init__(self):
        self.calls = 0

    @taskmesh.method(max_task_retries=3, retry_exceptions=[ValueError])
    def until_third(self, exc_name):
        self.calls += 1
        if self.calls < 3:
            raise {"ValueError": ValueError, "KeyError": KeyError}[exc_name](self.calls)
        return self.calls

    @taskmesh.method(num_returns=2)
    def pair(self):
        return "a", "b"

    def always(self):
        self.calls += 1
        raise ValueError(self.calls)

    def count(self):
        return self.calls


def test_method_options_retry_exceptions_by_class_and_num_returns(cluster):
    f = Flaky.remote()
    assert taskmesh.get(f.until_third.remote("ValueError")) == 3  # retried twice on this actor
    g = Flaky.remote()
    with pytest.raises(KeyError):  # not in its retry_exceptions: not retried
        taskmesh.get(g.until_third.remote("KeyError"))
    assert taskmesh.get(g.count.remote()) == 1
    a, b = f.pair.remote()
    assert taskmesh.get([a, b]) == ["a", "b"]
    whole = f.pair.options(num_returns=1).remote()  # one ref holding the tuple
    assert taskmesh.get(whole) == ("a", "b")
    refs = f.always.options(retry_exceptions=True, max_task_retries=2, name="custom").remote()
    with pytest.raises(ValueError) as info:
        taskmesh.get(refs)
    assert "custom" in str(info.value)
    assert taskmesh.get(f.count.remote()) == 3 + 3  # 3 before, then 1 run + 2 retries
    with pytest.raises(ValueError, match="unknown actor method option"):
        f.always.options(num_cpus=2)


@taskmesh.remote(max_retries=2, retry_exceptions=[KeyError])
def flaky_task(path: str, exc_name: str):
    with open(path, "a") as f:
        f.write("x")
    raise {"KeyError": KeyError, "ValueError": ValueError}[exc_name]("failed")


def test_task_retry_exceptions_takes_a_list_of_classes(cluster, tmp_path):
    listed, other = tmp_path / "listed", tmp_path / "other"
    with pytest.raises(KeyError):
        taskmesh.get(flaky_task.remote(str(listed), "KeyError"))
    assert listed.read_text() == "xxx"  # 1 run + max_retries=2
    with pytest.raises(ValueError):
        taskmesh.get(flaky_task.remote(str(other), "ValueError"))
    assert other.read_text() == "x"


# ---------------------------------------------------------------- 7. recursive cancel


@taskmesh.remote
class Mailbox:
    def __init__(self):
        self.items: list = []

    def put(self, item):
        self.items.append(item)

    def take(self):
        return self.items


@taskmesh.remote
def parent_of(box, child_s):
    child = sleeper.remote(child_s)
    taskmesh.get(box.put.remote([child]))  # (nested in a list: it stays a ref)
    return taskmesh.get(child)


def _child_of(box):
    until(lambda: taskmesh.get(box.take.remote()) != [], timeout=20.0,
          what="the parent task to post its child's ref")
    [[child]] = taskmesh.get(box.take.remote())
    return child


def test_cancel_is_recursive_by_default(cluster):
    box = Mailbox.remote()
    parent = parent_of.remote(box, 60)
    child = _child_of(box)
    taskmesh.cancel(parent)
    with pytest.raises(taskmesh.TaskCancelledError):
        taskmesh.get(parent, timeout=20)
    with pytest.raises(taskmesh.TaskCancelledError, match="its parent"):
        taskmesh.get(child, timeout=20)  # (before: it ran on for its full 60 s)


def test_cancel_not_recursive_leaves_the_children_running(cluster):
    box = Mailbox.remote()
    parent = parent_of.remote(box, 1)
    child = _child_of(box)
    taskmesh.cancel(parent, recursive=False)
    with pytest.raises(taskmesh.TaskCancelledError):
        taskmesh.get(parent, timeout=20)
    assert taskmesh.get(child, timeout=20) == 1


# ---------------------------------------------------------------- 8. bad requests get answers


def test_public_calls_check_their_arguments_in_the_caller(cluster):
    start = time.monotonic()
    with pytest.raises(ValueError, match="non-empty string"):
        taskmesh.get_actor(None)
    with pytest.raises(ValueError, match="non-empty string"):
        taskmesh.get_actor("")
    with pytest.raises(ValueError, match="namespace"):
        taskmesh.get_actor("x", namespace=3)
    with pytest.raises(ValueError, match="actor handle"):
        taskmesh.kill("not a handle")
    with pytest.raises(TypeError, match="ObjectRef"):
        taskmesh.cancel("not a ref")
    with pytest.raises(TypeError, match="force"):
        taskmesh.cancel(sleeper.remote(0), force="yes")
    assert time.monotonic() - start < 5  # (before: get_actor(None) waited 30 s for the head)


def test_a_malformed_request_gets_an_error_reply_not_silence(cluster):
    core = CTX.core
    start = time.monotonic()
    # what an older or buggy client could send: the head cannot decode it
    refused = r"refused a message of this process \({}\): malformed"
    with pytest.raises(TaskmeshError, match=refused.format("GetActor")):
        core.request(lambda rid: P.GetActor(rid, None, ""), timeout=20)  # type: ignore[arg-type]
    with pytest.raises(TaskmeshError, match=refused.format("InfoRequest")):
        core.request(lambda rid: P.InfoRequest(rid, 7), timeout=20)  # type: ignore[arg-type]
    assert time.monotonic() - start < 10
    assert taskmesh.get(sleeper.remote(0)) == 0  # and the connection works on


def test_a_refused_task_fails_its_refs_instead_of_hanging(cluster):
    core = CTX.core
    # a constructor sent as a plain task: the head refuses it, and its refs get the reason
    tid = core.next_task_id()
    spec = P.TaskSpec(tid, "odd", b"f" * 16, None, [], 1, {}, 0, False, tid, "__init__")
    [oid] = P.return_ids(tid, 1)
    core.new_ref_ids([oid])
    odd = taskmesh.ObjectRef(oid, core)
    core.submit(spec, [oid])
    with pytest.raises(TaskmeshError, match=r"refused a message of this process \(Submit\): "
                                            "task odd"):
        taskmesh.get(odd, timeout=20)
