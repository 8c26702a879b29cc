"""Tasks on a real embedded cluster: results, arguments, refs, errors, num_returns, wait."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

import taskmesh
from taskmesh import TaskError


@taskmesh.remote
def add(a, b=0):
    return a + b


@taskmesh.remote
def identity(x):
    return x


@taskmesh.remote
def where():
    ctx = taskmesh.get_runtime_context()
    import os

    return ctx.get_node_id(), os.getpid()


class CustomError(ValueError):
    def __init__(self, msg, code):
        super().__init__(msg)
        self.code = code


@taskmesh.remote
def fails(code):
    raise CustomError("it went wrong", code)


def test_results_and_many_tasks(cluster):
    assert taskmesh.get(add.remote(1, 2)) == 3
    refs = [add.remote(i, b=i) for i in range(2000)]
    assert taskmesh.get(refs) == [2 * i for i in range(2000)]


def test_refs_as_top_level_args_are_resolved(cluster):
    a = add.remote(1, 1)
    b = add.remote(a, b=a)  # positional and keyword refs
    assert taskmesh.get(b) == 4
    p = taskmesh.put(np.arange(5))
    assert taskmesh.get(identity.remote(p)).tolist() == [0, 1, 2, 3, 4]


def test_nested_refs_arrive_as_refs(cluster):
    a = add.remote(20, 22)
    out = taskmesh.get(identity.remote([a, {"k": a}]))
    assert isinstance(out[0], taskmesh.ObjectRef) and isinstance(out[1]["k"], taskmesh.ObjectRef)
    assert out[0] == a and hash(out[0]) == hash(a)
    assert taskmesh.get(out[0]) == 42

    @taskmesh.remote
    def get_inside(refs):
        return sum(taskmesh.get(refs))

    assert taskmesh.get(get_inside.remote([add.remote(1), add.remote(2)])) == 3


def test_objectref_is_hashable_and_usable_in_containers(cluster):
    r1, r2 = add.remote(1), add.remote(2)
    d = {r1: "one", r2: "two"}
    assert d[r1] == "one" and len({r1, r2, r1}) == 2
    assert repr(r1).startswith("ObjectRef(")


def test_num_returns(cluster):
    @taskmesh.remote(num_returns=3)
    def three():
        return 1, "two", [3]

    refs = three.remote()
    assert len(refs) == 3
    assert taskmesh.get(refs) == [1, "two", [3]]
    r1, r2 = identity.options(num_returns=2).remote((5, 6))
    assert taskmesh.get([r1, r2]) == [5, 6]


def test_wrong_number_of_returns_is_a_clear_error(cluster):
    @taskmesh.remote(num_returns=2)
    def one_value():
        return 1

    with pytest.raises(TaskError, match="num_returns=2"):
        taskmesh.get(one_value.remote()[0])


def test_exception_is_task_error_and_original_class(cluster):
    ref = fails.remote(7)
    with pytest.raises(CustomError) as info:
        taskmesh.get(ref)
    err = info.value
    assert isinstance(err, TaskError) and isinstance(err, ValueError)
    assert err.code == 7
    assert "fails" in err.task_name
    assert err.node_id and err.pid > 0
    assert "it went wrong" in err.remote_traceback and "Traceback" in err.remote_traceback
    assert "fails" in str(err)


def test_dependents_fail_with_the_root_cause(cluster):
    bad = fails.remote(1)
    downstream = add.remote(add.remote(bad, 1), 1)
    with pytest.raises(CustomError) as info:
        taskmesh.get(downstream)
    assert "fails" in info.value.task_name


def test_get_timeout(cluster):
    @taskmesh.remote
    def slow():
        time.sleep(3)
        return 1

    ref = slow.remote()
    t = time.monotonic()
    with pytest.raises(taskmesh.GetTimeoutError):
        taskmesh.get(ref, timeout=0.3)
    assert time.monotonic() - t < 2.5
    assert isinstance(taskmesh.GetTimeoutError("x"), TimeoutError)
    assert taskmesh.get(ref) == 1


def test_wait(cluster):
    @taskmesh.remote
    def sleepy(s):
        time.sleep(s)
        return s

    fast, slow = sleepy.remote(0), sleepy.remote(5)
    ready, not_ready = taskmesh.wait([slow, fast], num_returns=1, timeout=4)
    assert ready == [fast] and not_ready == [slow]
    ready, not_ready = taskmesh.wait([slow, fast], num_returns=2, timeout=0.2)
    assert ready == [fast] and not_ready == [slow]
    with pytest.raises(ValueError):
        taskmesh.wait([fast, fast])
    with pytest.raises(TypeError):
        taskmesh.wait(fast)


def test_put_get(cluster):
    arr = np.random.default_rng(0).random(200_000)
    ref = taskmesh.put(arr)
    assert np.array_equal(taskmesh.get(ref), arr)
    assert float(taskmesh.get(identity.remote(ref)).sum()) == pytest.approx(arr.sum())
    with pytest.raises(TypeError):
        taskmesh.put(ref)


def test_large_result_not_pushed_is_fetched(cluster):
    @taskmesh.remote
    def big(n):
        return np.ones(n)

    ref = big.remote(1_000_000)  # 8 MB: above the push threshold, fetched on get
    assert taskmesh.get(ref).sum() == 1_000_000
    ready, _ = taskmesh.wait([big.remote(100_000)], timeout=10)
    assert len(ready) == 1


def test_calling_remote_function_directly_is_a_type_error(cluster):
    with pytest.raises(TypeError, match=r"add\.remote\("):
        add(1, 2)


def test_unpicklable_argument_fails_at_remote_naming_it(cluster):
    with pytest.raises(TypeError, match=r"argument 0 \(a _thread.lock\).*identity"):
        identity.remote(threading.Lock())
    with pytest.raises(taskmesh.SerializationError, match="argument 'b'"):
        with socket.socket() as s:
            add.remote(1, b=s)


def test_unpicklable_return_fails_in_get_naming_the_task(cluster):
    @taskmesh.remote
    def returns_lock():
        return threading.Lock()

    with pytest.raises(taskmesh.SerializationError) as info:
        taskmesh.get(returns_lock.remote())
    assert "returns_lock" in str(info.value) and "could not be serialized" in str(info.value)
    assert isinstance(info.value, TaskError)


def test_bad_options_are_clear(cluster):
    with pytest.raises(ValueError, match="num_cpus"):
        taskmesh.remote(num_cpus=-1)(lambda: 1)
    with pytest.raises(ValueError, match="valid options are"):
        add.options(num_cpu=1)
    with pytest.raises(ValueError):  # as in Ray: a ref or a list of refs
        taskmesh.get("not a ref")
    with pytest.raises(TypeError):
        taskmesh.get(["not a ref"])


def test_cluster_introspection(cluster):
    nodes = taskmesh.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"]
    assert nodes[0]["Resources"]["CPU"] == 2.0
    res = taskmesh.cluster_resources()
    assert res["CPU"] == 2.0
    assert taskmesh.available_resources()["CPU"] <= 2.0
    node_id, pid = taskmesh.get(where.remote())
    assert node_id == nodes[0]["NodeID"]


def test_fractional_and_zero_cpu_tasks(cluster):
    @taskmesh.remote(num_cpus=0.5)
    def half():
        time.sleep(0.2)
        return taskmesh.get_runtime_context().get_node_id()

    @taskmesh.remote(num_cpus=0)
    def free():
        return 1

    assert len(set(taskmesh.get([half.remote() for _ in range(4)]))) == 1
    assert sum(taskmesh.get([free.remote() for _ in range(10)])) == 10


def test_tasks_from_threads(cluster):
    results = {}

    def run(i):
        results[i] = taskmesh.get([add.remote(i, j) for j in range(50)])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: [i + j for j in range(50)] for i in range(4)}

