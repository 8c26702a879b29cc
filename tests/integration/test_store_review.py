"""A reviewer's probes of the object store on real embedded clusters: reference counting across
processes, zero-copy views, spilling, large arguments and results, joined drivers, bad input.

Many of these reproduced bugs that review found (now fixed: these tests keep them fixed); the
others check behaviour that nothing else covers.

Leak checks look at this module's own clusters only (the node agent's arena by its pid and the
processes started here), not at /dev/shm as a whole: other test runs may share the machine.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import taskmesh
from taskmesh import _protocol as P
from taskmesh import _serialize as S
from taskmesh._client.core import CoreClient
from taskmesh._context import CTX
from taskmesh._transport import connect_endpoint, free_port, split_address
from taskmesh.config import DEFAULT_PORT

from ..support.procs import descendants, kill_all, wait_gone
from ..support.store import in_arena
from ..support.wait import until

MB = 1 << 20
STORE = 128 * MB
DEFAULT = {"num_cpus": 2, "object_store_memory": STORE, "heartbeat_interval_s": 0.1}
ONE_CPU = {"num_cpus": 1, "object_store_memory": 64 * MB, "heartbeat_interval_s": 0.1}


# =========================================================================== clusters


class _Running:
    cfg: dict | None = None
    procs: set[int] = set()
    node_pid = 0


def _arenas_of(pid: int) -> set[str]:
    try:
        return {f for f in os.listdir("/dev/shm") if f.startswith(f"taskmesh-arena-{pid}-")}
    except FileNotFoundError:
        return set()


def _stop() -> None:
    """Shut down the cluster this module started; check its processes and arena are gone."""
    cfg, procs, node_pid = _Running.cfg, _Running.procs, _Running.node_pid
    _Running.cfg, _Running.procs, _Running.node_pid = None, set(), 0
    if taskmesh.is_initialized():
        taskmesh.shutdown()
    if cfg is None:
        return
    left = wait_gone(procs)
    kill_all(left)
    assert not left, f"processes left after shutdown: {left}"
    until(lambda: not _arenas_of(node_pid), timeout=10,
          what="the node agent's arena to leave /dev/shm")


def _start(cfg: dict) -> None:
    if taskmesh.is_initialized() and _Running.cfg == cfg:
        return
    _stop()
    taskmesh.init(**cfg)
    _Running.cfg = dict(cfg)
    _Running.procs = descendants()
    _Running.node_pid = CTX.cluster.node.pid


@pytest.fixture(scope="module", autouse=True)
def _module_cleanup():
    if taskmesh.is_initialized():  # someone else's cluster: not ours to keep
        taskmesh.shutdown()
    yield
    _stop()


@pytest.fixture
def cl():
    """The shared 2-CPU cluster with a 128 MB store (started on first use, kept between tests)."""
    _start(DEFAULT)
    yield taskmesh


@pytest.fixture
def cl1():
    """A 1-CPU cluster: one worker, so tasks (and Help tasks) run in one known process."""
    _start(ONE_CPU)
    yield taskmesh


@pytest.fixture
def fresh():
    """A cluster of its own for a test that may leave objects behind (a bug being shown)."""
    _stop()
    _start(dict(DEFAULT))
    try:
        yield taskmesh
    finally:
        _stop()


@pytest.fixture
def no_cluster():
    """No cluster of this module running (the test joins one started with the CLI)."""
    _stop()
    yield
    if taskmesh.is_initialized():
        taskmesh.shutdown()


# =========================================================================== helpers


def core() -> CoreClient:
    return CTX.core


def store_stat(key: str) -> int:
    [node] = [n for n in taskmesh.nodes() if n["Alive"]]
    return node["ObjectStore"].get("store_" + key, -1)


def head_objects() -> int:
    return core().info("status")["objects"]


def _flushed(pred) -> bool:
    # each round trip sends, and a send flushes the dead refs once the batching interval
    # passed (relying on the housekeeper thread alone is not enough: see
    # test_an_idle_driver_releases_a_ref_that_died_while_a_flush_was_pending)
    core().info("status")
    return pred()


def settle() -> None:
    """Every ref that died here has been released and the head has processed the Release."""
    gc.collect()
    c = core()
    until(lambda: _flushed(lambda: not c.refs.dead), timeout=15.0, what="dead refs to be flushed")
    c.info("status")  # a round trip on the same connection: the head saw what came before


def released(oid: bytes) -> None:
    """This process's last ref to ``oid`` died, its Release was sent and the head got it."""
    gc.collect()
    c = core()
    until(lambda: _flushed(lambda: oid not in c.refs.counts and oid not in c.refs.dead),
          timeout=15.0, what=f"the release of {oid.hex()}")
    c.info("status")


def baseline() -> tuple[int, int]:
    """(head objects, store objects) once nothing of earlier tests is in flight."""
    settle()
    time.sleep(0.3)  # two heartbeats: the store's figures are fresh
    return head_objects(), store_stat("num_objects")


def back_to(base: tuple[int, int], timeout: float = 15.0) -> None:
    """Nothing is left over: the head and the store hold what they held at ``base``."""
    settle()
    until(lambda: head_objects() == base[0], timeout=timeout,
          what=lambda: f"the head's object count to go back to {base[0]} (now {head_objects()})")
    time.sleep(0.3)  # the store's figures come with heartbeats (0.1 s): let them catch up
    until(lambda: store_stat("num_objects") == base[1], timeout=timeout,
          what=lambda: f"the store's object count to go back to {base[1]} "
                       f"(now {store_stat('num_objects')})")


def big(fill: float, mb: int = 1) -> np.ndarray:
    """An array larger than the store threshold (100 KiB): it lives in the node's store."""
    return np.full(mb * MB // 8, fill, dtype=np.float64)


def _worker_state() -> dict:
    """State shared by the tasks of one worker process. (Remote functions are pickled by value,
    module globals with them, so a module-level dict would be one copy per function; the sys
    module is pickled by reference.)"""
    return sys.__dict__.setdefault("_taskmesh_store_review_state", {})


@taskmesh.remote
def echo(x):
    return x


@taskmesh.remote
def first_sum(refs):
    return float(taskmesh.get(refs[0]).sum())


@taskmesh.remote
def array_sum(a):
    return float(a.sum()), bool(a.flags.writeable)


# =========================================================================== reference counting: bugs


def test_owner_getting_its_own_released_ref_back_in_a_task_result_keeps_the_object(cl):
    """driver puts x, passes [x] to a task that returns it, drops x; gets the result back and
    drops the result: the driver now holds a ref to x again (unpickled from the result), so x
    must stay readable. The driver owns x, so unpickling the ref sends no Borrow
    (CoreClient.borrow_ref skips owned ids) and the head, which saw the owner's Release, drops
    x as soon as the result that held it goes: get(x) raises ObjectLostError. Any program that
    round-trips its own refs through tasks (a very common pattern: a task returns a list of
    the refs it was given) loses data."""
    x = taskmesh.put(big(1.0))
    xid = x.binary()
    r = echo.remote([x])
    del x
    released(xid)  # the task's arguments still hold x
    [x_again] = taskmesh.get(r, timeout=30)
    assert x_again.binary() == xid
    del r
    settle()  # the result is dropped: its hold on x goes with it
    a = taskmesh.get(x_again, timeout=10)
    assert a[0] == 1.0 and a.size == MB // 8


def test_owner_getting_its_own_released_ref_back_from_a_put_container_keeps_the_object(cl):
    """x = put(big); outer = put([x]); del x (x lives on inside outer). get(outer) gives the
    owner a new ref to x; then del outer. x must stay readable through that ref, but the head
    drops it with the container (same cause as the test above: no Borrow for owned ids, and
    the head's ``_on_borrow`` ignores the owner anyway)."""
    x = taskmesh.put(big(2.0))
    xid = x.binary()
    outer = taskmesh.put([x])
    del x
    released(xid)
    [x_again] = taskmesh.get(outer)
    del outer
    settle()
    assert taskmesh.get(x_again, timeout=10)[0] == 2.0


@taskmesh.remote
def _make_nested():
    """A result that holds a ref to an object this worker owns (a put inside the task)."""
    return [taskmesh.put(big(7.0, 1))]


@taskmesh.remote
def _large_put_task():
    """Any task that makes a large put: a large put flushes this process's releases first."""
    taskmesh.put(np.zeros(MB // 8))
    return "done"


@taskmesh.remote
def _parent_of_nested_and_put():
    c1 = _make_nested.remote()
    c2 = _large_put_task.remote()
    inner, _ = taskmesh.get([c1, c2])  # on one CPU both run here, as Help tasks, in order
    return inner


def test_a_worker_owned_ref_in_a_result_held_back_survives_the_workers_release(cl1):
    """A task returns [put(big)]: the result's value holds the only counted ref to the worker's
    object once the worker's own ref dies. Results are held back (Help tasks, pipelined short
    tasks, result_batch_s) while the worker runs the next task, but the Release of the dead
    ref is not: the next flush of releases (here a large put in the next task, which flushes
    them on purpose; otherwise the housekeeper thread after 0.2 s, or the pump(0) in
    Worker.run before _flush) sends Release(x) before TaskResults. The head then frees x
    (released, no holds yet) and the result's ``contained`` hold finds nothing: the reader of
    the result gets ObjectLostError. Deterministic here with one CPU: the parent blocks and
    runs both children as Help tasks, flushing their results only after both ran."""
    for _ in range(3):
        inner = taskmesh.get(_parent_of_nested_and_put.remote(), timeout=30)
        a = taskmesh.get(inner[0], timeout=10)
        assert a[0] == 7.0


@taskmesh.remote
def _child(x):
    return x


@taskmesh.remote
def _return_ref_of_finished_child():
    b = _child.remote("payload")
    time.sleep(0.5)  # the child ends on the other worker; its value is pushed here, unread
    return [b]


def test_a_task_returning_the_ref_of_a_finished_child_keeps_it(cl):
    """The everyday form of the bug above, with no Help and no pipelining: a task submits a
    child and returns its ref in a list (``return [f.remote(i) for i in ...]``). When the task
    ends, its own ref to the child dies; Worker.run then calls ``core.pump(0)`` because input
    is waiting (the head pushed the finished child's value to this worker, its owner) before
    ``_flush()``, and pump's ``_drain_sends`` flushes the dead refs: Release(child) reaches
    the head before the TaskResults whose value holds the child's ref. The child's value is
    there and nothing else holds it, so the head drops it; the caller gets ObjectLostError
    for every such ref (10 out of 10 here)."""
    for _ in range(3):
        [b] = taskmesh.get(_return_ref_of_finished_child.remote(), timeout=30)
        assert taskmesh.get(b, timeout=10) == "payload"


def test_large_arguments_survive_a_release_flush_between_store_and_submit(cl, monkeypatch):
    """f.remote(big_array) stores the arguments as an object of their own, and
    ``CoreClient.store_args`` puts its id in the dead-refs queue at once, relying on the
    Submit being queued before the next flush. But the Submit is sent later (after
    next_task_id, new_ref_ids, building the TaskSpec), and any flush in between (the
    housekeeper thread waking up, another thread's get() or put()) sends Release(args) first:
    the head frees the arguments, the Submit's hold finds nothing, and the task fails with
    ObjectLostError (or, with dependency retries, after ~10 s of retries). Here the flush is
    made to happen at that point, as the housekeeper thread would."""
    real_submit = CoreClient.submit

    def submit_after_a_flush(self, spec, return_ids):
        self.refs.release_soon()  # the batching interval has passed ...
        self.send_pending()  # ... and the housekeeper (or another thread) flushes now
        return real_submit(self, spec, return_ids)

    monkeypatch.setattr(CoreClient, "submit", submit_after_a_flush)
    x = big(3.0)
    total, _ = taskmesh.get(array_sum.remote(x), timeout=30)
    assert total == 3.0 * x.size


def test_a_task_whose_stored_arguments_are_lost_fails_with_object_lost_error(cl, monkeypatch):
    """When the object holding a task's large by-value arguments is gone (its only node was
    lost, or the race above), the worker gets an error object where the arguments should be:
    either from the head's Assignment (``_assignment`` sends the arguments object's value,
    an ObjectLostError after a node loss) or from ``CoreClient.resolve``, which returns the
    head's verdict as a value. ``Worker._inputs`` passes it to ``unpack_args`` unchecked, so
    the task fails with ``UnpicklingError`` from unpickling msgpack bytes, instead of
    ObjectLostError naming the object. Here the arguments are made to disappear right after
    they are stored, at the head and in the store, as a node loss would."""
    real_store_args = CoreClient.store_args

    def store_args_then_lose_them(self, args):
        marker = real_store_args(self, args)
        oid = marker.contained[0]
        self.send(P.Release([oid]))  # the head forgets them ...
        self.local_store()._client.delete([oid])  # ... and the node's store frees them
        return marker

    monkeypatch.setattr(CoreClient, "store_args", store_args_then_lose_them)
    with pytest.raises(taskmesh.ObjectLostError):
        taskmesh.get(array_sum.remote(big(1.0)), timeout=60)


class _KillWorkerOnce:
    """Pickling it SIGKILLs the worker the first time (a marker file says it happened)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        if not os.path.exists(self.path):
            open(self.path, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return (str, ("second",))


@taskmesh.remote(num_returns=2, max_retries=2)
def _stores_then_dies(path):
    return big(3.0), _KillWorkerOnce(path)


def test_a_task_retried_after_its_worker_died_after_storing_a_result_succeeds(fresh, tmp_path):
    """The first attempt stores return 0 in the node's store (id = task id + index), then the
    worker is SIGKILLed before its TaskResults went out. The head retries the task (max_retries
    =2), and the retry on the same node asks the store to create the same object id: the
    store refuses ('already exists in this node's object store'), Worker._serialize_returns
    turns that into a task error, and the user gets a TaskError although the retry worked.
    The first attempt's copy is also never freed (the head never heard of it). Killing a
    worker after it stored a result is exactly what retries are for: OOM kills, preemption."""
    base = baseline()
    a, b = _stores_then_dies.remote(str(tmp_path / "killed"))
    v = taskmesh.get(a, timeout=60)
    assert (tmp_path / "killed").exists()  # the first attempt did die
    assert v[0] == 3.0 and taskmesh.get(b, timeout=60) == "second"
    del a, b, v
    back_to(base)


@taskmesh.remote(num_returns=2)
def _big_then_unpicklable():
    return big(4.0), threading.Lock()


def test_a_stored_return_is_freed_when_a_later_return_cannot_be_serialized(fresh):
    """With num_returns=2, return 0 (large) is written into the node's store before return 1
    is serialized; return 1 fails (a lock), so the task's returns become error objects and
    the head never hears of the stored copy. Nothing ever frees it: the node's store keeps the
    bytes until the node stops (Worker._serialize_returns has no clean-up of what it already
    stored). Repeat it and the store fills with garbage."""
    base = baseline()
    a, b = _big_then_unpicklable.remote()
    with pytest.raises(taskmesh.SerializationError):
        taskmesh.get(a, timeout=30)
    del a, b
    back_to(base, timeout=10)


def test_get_with_a_timeout_on_an_object_that_cannot_be_restored_yet_raises_get_timeout_error(no_cluster):
    """get() documents GetTimeoutError after ``timeout``. When the value is known but its pin
    waits (here: the object was spilled and cannot be restored while another view pins the
    store), StoreClient.pin raises a bare TimeoutError ('object store @...: pin of 1
    object(s) not answered') through CoreClient.resolve, so ``except GetTimeoutError`` misses
    it. (The pin time-out also restarts from zero after get_values used part of it, and each
    ref of a list gets the whole time-out again.)"""
    _start({"num_cpus": 1, "object_store_memory": 64 * MB, "heartbeat_interval_s": 0.1,
            "store_create_timeout_s": 5.0})
    try:
        a = taskmesh.put(big(1.0, 40))
        b = taskmesh.put(big(2.0, 40))  # a is spilled to make room
        vb = taskmesh.get(b)  # pinned: a cannot come back while this view lives
        with pytest.raises(taskmesh.GetTimeoutError):
            taskmesh.get(a, timeout=1.0)
        del vb
        assert taskmesh.get(a, timeout=30)[0] == 1.0
    finally:
        _stop()


def test_an_idle_driver_releases_a_ref_that_died_while_a_flush_was_pending(cl):
    """object-store.md: dead refs are flushed by the next message, "or, if it goes idle, by a
    small housekeeping thread _RELEASE_EVERY_S (0.2 s) later". The housekeeper is woken only
    when its event is not set (CoreClient.ref_died), and when it runs it flushes only if
    _next_release has passed (_drain_sends). So: ref A dies (housekeeper woken, due in 0.2 s);
    a send flushes A and moves _next_release 0.2 s ahead; ref B dies (event still set: no new
    wake); the housekeeper runs before _next_release, flushes nothing and clears its event.
    B stays in the queue for as long as the process is idle, and its object (here 16 MB)
    stays in the store: the notebook case the housekeeper exists for."""
    c = core()
    first = taskmesh.put(1)
    second = taskmesh.put(big(1.0, 16))
    second_id = second.binary()
    time.sleep(0.5)  # idle: nothing queued, the batching interval has passed
    del first  # wakes the housekeeper: it flushes 0.2 s from now
    time.sleep(0.05)
    third = taskmesh.put(big(2.0))  # a large put flushes the queue at once (first's release)
    del second  # dies while the housekeeper's flush is still pending
    try:
        # idle from here: no call into taskmesh (a call would flush the queue itself)
        until(lambda: second_id not in c.refs.dead and second_id not in c.refs.counts,
              timeout=3.0, what="the idle process to release the dead ref")
    finally:
        del third


# =========================================================================== results: bugs


def _shared_array() -> np.ndarray:
    state = _worker_state()
    if "array" not in state:
        state["array"] = np.zeros(1000)
    return state["array"]


@taskmesh.remote
def _return_shared_array():
    arr = _shared_array()
    arr[:] = 0.0
    return arr  # 8 KB: an inline value


@taskmesh.remote
def _overwrite_shared_array():
    _shared_array()[:] = 7.0


@taskmesh.remote
def _parent_of_return_and_overwrite():
    c1 = _return_shared_array.remote()
    c2 = _overwrite_shared_array.remote()
    value, _ = taskmesh.get([c1, c2])  # both run here, as Help tasks, in order
    return value


def test_a_small_array_result_is_the_value_at_return_time(cl1):
    """A task returns a numpy array it keeps (a cache, a global buffer). Inline results keep
    pickle-5 buffers that are views of the array (``_serialize.dumps`` does not copy, and
    Worker._serialize_returns does not snapshot as put() and pack_args() do), and the result
    waits in ``Worker.results`` while the next task runs (Help tasks, pipelined short tasks).
    When the next task writes the array, the first task's result is sent with the new data:
    here the caller gets all 7s instead of the zeros the task returned."""
    value = taskmesh.get(_parent_of_return_and_overwrite.remote(), timeout=30)
    assert np.unique(value).tolist() == [0.0]


# =========================================================================== reference counting: verified


def test_a_view_outlives_its_ref_and_the_free_at_the_head(cl):
    """A zero-copy view keeps its memory after the ref is dropped and the head freed the
    object: later puts that reuse the store's space do not touch it."""
    base = baseline()
    x = np.arange(16 * MB // 8, dtype=np.float64)
    ref = taskmesh.put(x)
    a = taskmesh.get(ref)
    assert in_arena(a)
    del ref
    settle()
    until(lambda: head_objects() == base[0], timeout=15.0, what="the head to drop the object")
    for i in range(20):  # 320 MB through a 128 MB store: freed space is reused
        r = taskmesh.put(np.full(16 * MB // 8, float(i)))
        assert taskmesh.get(r)[0] == float(i)
        del r
    keep = [taskmesh.put(np.full(16 * MB // 8, -1.0)) for _ in range(4)]
    np.testing.assert_array_equal(a, x)
    del keep, a
    back_to(base)


@taskmesh.remote
def _inner_returns(refs):
    time.sleep(0.5)  # still running when the task that submitted it returns (see below)
    return refs  # a list holding refs it got nested in its arguments


@taskmesh.remote
def _outer_submits(refs):
    return [_inner_returns.remote(refs)]  # the ref of a nested task, inside a list


def test_refs_through_driver_task_nested_task_result_driver(cl):
    """driver -> task -> nested task -> result -> driver, with refs nested at every step; the
    driver keeps its own ref. Every object is readable at the end, and all of it is freed
    once the driver lets go. (The nested task is still running when its parent returns its
    ref: when it has finished, the ref is lost, see
    test_a_task_returning_the_ref_of_a_finished_child_keeps_it.)"""
    base = baseline()
    x = taskmesh.put(big(5.0))
    [inner_ref] = taskmesh.get(_outer_submits.remote([x]), timeout=30)
    [x_again] = taskmesh.get(inner_ref, timeout=30)
    assert x_again == x
    settle()
    assert taskmesh.get(x_again, timeout=10)[0] == 5.0
    assert taskmesh.get(first_sum.remote([x_again]), timeout=30) == 5.0 * MB // 8
    del x, inner_ref, x_again
    back_to(base)


@taskmesh.remote
def _worker_owned_chain():
    y = taskmesh.put(big(6.0))
    return [_inner_returns.remote([y])]


def test_a_worker_owned_object_passed_to_a_nested_task_reaches_the_driver(cl):
    """A worker puts y, passes [y] to a nested task that returns it, and returns that task's
    ref: the driver reads y through two levels of nesting after the worker's own ref died."""
    base = baseline()
    for _ in range(3):
        [b] = taskmesh.get(_worker_owned_chain.remote(), timeout=30)
        [y] = taskmesh.get(b, timeout=30)
        del b
        settle()
        assert taskmesh.get(y, timeout=10)[0] == 6.0
        del y
    back_to(base)


@taskmesh.remote
def _stash(refs):
    _worker_state()["stash"] = refs
    return os.getpid()


@taskmesh.remote
def _use_stash():
    return float(taskmesh.get(_worker_state()["stash"][0]).sum())


def test_a_ref_kept_in_a_worker_global_lives_until_the_borrower_dies(cl1):
    """A worker keeps a borrowed ref in a global; the owner drops its own. A later task on
    that worker still reads it. When the worker is SIGKILLed, its borrow goes and the object
    is freed everywhere."""
    base = baseline()
    x = taskmesh.put(big(8.0))
    xid = x.binary()
    pid = taskmesh.get(_stash.remote([x]), timeout=30)
    del x
    released(xid)
    time.sleep(0.5)
    assert head_objects() == base[0] + 1  # only the borrower keeps it
    assert taskmesh.get(_use_stash.remote(), timeout=30) == 8.0 * MB // 8
    os.kill(pid, signal.SIGKILL)
    back_to(base)
    assert taskmesh.get(echo.remote(1), timeout=30) == 1  # a replacement worker runs tasks


def test_a_ref_deserialized_twice_counts_twice(fresh):
    """Two gets of a container unpickle two refs to the object inside; dropping one (and the
    container) leaves the other readable. The inner object belongs to a worker, so this
    process is a borrower."""
    base = baseline()
    outer = _make_nested.remote()
    v1 = taskmesh.get(outer, timeout=30)
    v2 = taskmesh.get(outer, timeout=30)
    assert v1[0] == v2[0] and v1[0] is not v2[0]
    del v1, outer
    settle()
    assert taskmesh.get(v2[0], timeout=10)[0] == 7.0
    v3 = pickle.loads(pickle.dumps(v2))  # escapes: never released by this process
    del v3
    settle()
    assert taskmesh.get(v2[0], timeout=10)[0] == 7.0
    del v2
    settle()
    time.sleep(0.3)
    assert head_objects() == base[0] + 1  # the escaped ref keeps it: a leak, never a loss
    # (a cluster of its own: the escaped object stays until the cluster stops)


@taskmesh.remote
def _read_then_fail(refs):
    total = float(taskmesh.get(refs[0]).sum())
    raise ValueError(f"failed after reading {total}")


def test_a_task_that_fails_after_borrowing_releases_its_borrow(cl):
    base = baseline()
    x = taskmesh.put(big(1.5))
    with pytest.raises(ValueError, match="failed after reading"):
        taskmesh.get(_read_then_fail.remote([x]), timeout=30)
    assert taskmesh.get(x)[0] == 1.5
    del x
    back_to(base)


@taskmesh.remote(max_retries=2)
def _borrow_and_die_once(refs, path):
    total = float(taskmesh.get(refs[0]).sum())
    if not os.path.exists(path):
        open(path, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return total, float(taskmesh.get(refs[1]).sum())


def test_a_task_retried_after_a_sigkill_while_holding_nested_refs(cl, tmp_path):
    """The first attempt borrows and reads nested refs, then its worker is SIGKILLed; the
    owner dropped its refs right after submitting. The retry reads both objects (the task's
    arguments hold them), and everything is freed afterwards."""
    base = baseline()
    x, y = taskmesh.put(big(2.0)), taskmesh.put(big(3.0))
    r = _borrow_and_die_once.remote([x, y], str(tmp_path / "died"))
    del x, y
    settle()
    assert taskmesh.get(r, timeout=60) == (2.0 * MB // 8, 3.0 * MB // 8)
    assert (tmp_path / "died").exists()
    del r
    back_to(base)


@taskmesh.remote
def _sum_of_nested(value):
    return float(taskmesh.get(value[1][0]).sum())


@taskmesh.remote
def _sum_with_big_args(pad, refs):
    return float(taskmesh.get(refs[0]).sum()) + float(pad.sum())


def test_refs_inside_large_put_values_and_large_arguments_are_held_by_them(cl):
    """A ref inside a value that is itself stored (a large put, large task arguments passed by
    value) is held by that object at the head: the owner can drop its own ref, the reader
    still gets the object, and it goes when the holding object goes."""
    base = baseline()
    x = taskmesh.put(big(2.5))
    xid = x.binary()
    container = taskmesh.put((big(0.0, 2), [x]))  # stored, the marker names what it contains
    r = _sum_with_big_args.remote(np.zeros(MB // 8), [x])  # arguments stored, holding x too
    del x
    released(xid)
    assert head_objects() >= base[0] + 3  # x, the container, r (+ the arguments, if r runs)
    assert taskmesh.get(_sum_of_nested.remote(container), timeout=30) == 2.5 * MB // 8
    assert taskmesh.get(r, timeout=30) == 2.5 * MB // 8
    del container, r
    back_to(base)


# =========================================================================== views, threads, wait


@taskmesh.remote
def _slow_big(delay):
    time.sleep(delay)
    return big(9.0, 2)


def test_get_with_timeout_threads_and_wait_on_stored_objects(cl):
    base = baseline()
    ref = _slow_big.remote(1.0)
    with pytest.raises(taskmesh.GetTimeoutError):
        taskmesh.get(ref, timeout=0.05)
    ready, not_ready = taskmesh.wait([ref], timeout=30)
    assert ready == [ref] and not not_ready
    puts = [taskmesh.put(big(float(i))) for i in range(4)]
    ready, _ = taskmesh.wait(puts, num_returns=4, timeout=5)
    assert ready == puts
    results: dict = {}
    errors: list = []

    def reader(i: int) -> None:
        try:
            results[i] = (taskmesh.get(ref, timeout=30), taskmesh.get(puts[i % 4], timeout=30))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 8
    arrays = [a for a, _ in results.values()]
    assert all(a[0] == 9.0 and in_arena(a) for a in arrays)
    assert all(np.shares_memory(arrays[0], a) for a in arrays)  # one pin, shared
    assert all(b[0] == float(i % 4) for i, (_, b) in results.items())
    del ready, not_ready, arrays, threads
    ref = puts = None  # the reader closure holds these names: rebind, do not del
    results.clear()
    back_to(base)


def test_store_backed_arrays_passed_on_as_arguments_and_puts(cl):
    """A read-only view of the store given to a task by value or put again is copied into a
    new object, and slices of it too; the original stays intact."""
    base = baseline()
    src = np.random.default_rng(0).random(4 * MB // 8)
    a = taskmesh.get(taskmesh.put(src))
    assert in_arena(a) and not a.flags.writeable
    assert taskmesh.get(array_sum.remote(a), timeout=30) == (float(src.sum()), False)
    b = taskmesh.get(taskmesh.put(a))
    np.testing.assert_array_equal(b, src)
    assert not np.shares_memory(a, b)
    small = taskmesh.get(taskmesh.put(a[:100]))
    np.testing.assert_array_equal(small, src[:100])
    assert taskmesh.get(echo.remote(a[1000:1010]), timeout=30).tolist() == src[1000:1010].tolist()
    np.testing.assert_array_equal(a, src)
    del a, b, small
    back_to(base)


# =========================================================================== spilling, sizes


def test_more_live_objects_than_the_store_holds_all_come_back_exact(cl):
    """12 x 16 MB live in a 128 MB store: objects spill and come back exact, from the driver
    and from tasks on the node; all is freed (memory and disk) afterwards."""
    base = baseline()
    spills_before = store_stat("total_spills")
    rng = np.random.default_rng(1)
    arrays = [rng.random(16 * MB // 8) for _ in range(12)]
    refs = [taskmesh.put(a) for a in arrays]
    until(lambda: store_stat("total_spills") > spills_before, timeout=15.0, what="spills")
    for a, r in zip(arrays, refs):
        np.testing.assert_array_equal(taskmesh.get(r, timeout=30), a)
    sums = taskmesh.get([first_sum.remote([r]) for r in refs], timeout=60)
    assert sums == [float(a.sum()) for a in arrays]
    for a, r in reversed(list(zip(arrays, refs))):
        np.testing.assert_array_equal(taskmesh.get(r, timeout=30), a)
    del refs, a, r
    back_to(base, timeout=30)
    if base[1] == 0:  # nothing else in the store that could have been spilled meanwhile
        until(lambda: store_stat("disk_bytes") == 0, timeout=15.0, what="spill files to go")


@taskmesh.remote(num_returns=3)
def _mixed_returns(x):
    return int(x.size), x * 2, [float(x[0])] * 3


@taskmesh.remote
def _fail_with_big_args(x):
    raise RuntimeError(f"no thanks ({x.size})")


def test_large_arguments_by_value_mixed_returns_and_errors_are_freed(cl):
    base = baseline()
    x = np.arange(2 * MB // 8, dtype=np.float64)
    n, doubled, small = _mixed_returns.remote(x)
    assert taskmesh.get(n, timeout=30) == x.size
    d = taskmesh.get(doubled, timeout=30)
    np.testing.assert_array_equal(d, x * 2)
    assert in_arena(d)
    assert taskmesh.get(small, timeout=30) == [0.0] * 3
    with pytest.raises(RuntimeError, match="no thanks"):
        taskmesh.get(_fail_with_big_args.remote(x), timeout=30)
    del n, doubled, small, d
    back_to(base)


# =========================================================================== bad input


def test_a_raw_client_with_corrupt_stored_markers_gets_errors_and_the_cluster_carries_on(cl):
    """A client sending corrupt or lying STORED markers, and Borrow/Release of unknown ids:
    readers get clear errors (no hang), the head and the store keep working."""
    host, port = split_address(core().address, DEFAULT_PORT)
    raw = CoreClient(core().config, connect_endpoint(host, port), "driver", core().address,
                     core().security)
    try:
        raw.handshake({"pid": os.getpid()})
        node_id = taskmesh.nodes()[0]["NodeID"]
        garbage, other, missing = (raw.new_object_id() for _ in range(3))
        raw.send(P.Put([(garbage, P.SerializedObject(P.SerializedObject.STORED, b"\xc1junk"))]))
        raw.send(P.Put([(other, P.SerializedObject.stored(garbage, 10, [[node_id, ""]]))]))
        raw.send(P.Put([(missing, P.SerializedObject.stored(missing, 1000, [[node_id, ""]]))]))
        raw.send(P.Borrow([os.urandom(20)]))
        raw.send(P.Release([os.urandom(20)]))
        for oid in (garbage, other):
            [value] = raw.get_values([oid], 10)
            with pytest.raises(taskmesh.TaskmeshError, match="marker"):
                S.value_or_raise(value)
        [value] = raw.get_values([missing], 10)
        with pytest.raises(taskmesh.ObjectLostError):
            S.value_or_raise(raw.reader.read(value, 10))
    finally:
        raw.close()
    ref = taskmesh.put(big(1.0))
    assert taskmesh.get(ref)[0] == 1.0
    assert taskmesh.get(array_sum.remote(ref), timeout=30)[0] == float(MB // 8)


# =========================================================================== joined drivers (CLI cluster)


def _tm(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "taskmesh._cli", *args], capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.fixture
def cli_cluster(tmp_path, no_cluster):
    """A head and node started with `taskmesh start` (64 MB store); stopped afterwards."""
    env = {**os.environ, "TASKMESH_RUN_DIR": str(tmp_path / "run"),
           "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path[1:]])}  # workers import tests
    port = free_port()
    r = _tm("start", "--head", "--port", str(port), "--num-cpus", "2", "--node-ip", "127.0.0.1",
            "--object-store-memory", str(64 * MB), env=env)
    assert r.returncode == 0, r.stderr
    from taskmesh import _rundir

    pids = {int(rec["pid"]) for rec in _rundir.live(env["TASKMESH_RUN_DIR"])}
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if taskmesh.is_initialized():
            taskmesh.shutdown()
        r = _tm("stop", env=env)
        kill_all(wait_gone(pids, 10))
        assert r.returncode == 0, r.stderr


def _joined_store_objects() -> int:
    return until(lambda: next(iter(n["ObjectStore"] for n in taskmesh.nodes()), {})
                 .get("store_num_objects", -1) + 1, timeout=15.0, what="store figures") - 1


def test_a_joined_driver_uses_its_machines_store_and_frees_what_it_owned(cli_cluster):
    """init(address=...) on the node's machine: puts go to that node's store (zero copy),
    tasks read them there, and everything is freed when refs die and at shutdown."""
    taskmesh.init(address=cli_cluster)
    try:
        x = np.arange(4 * MB // 8, dtype=np.float64)
        ref = taskmesh.put(x)
        a = taskmesh.get(ref)
        assert in_arena(a)
        np.testing.assert_array_equal(a, x)
        assert taskmesh.get(array_sum.remote(ref), timeout=60) == (float(x.sum()), False)
        until(lambda: _joined_store_objects() == 1, timeout=15.0, what="one object in the store")
        del a, ref
        settle()
        until(lambda: _joined_store_objects() == 0, timeout=15.0, what="the store to be empty")
        kept = [taskmesh.put(big(float(i))) for i in range(3)]
        assert len(kept) == 3
        until(lambda: _joined_store_objects() == 3, timeout=15.0,
              what="three objects in the store")
    finally:
        taskmesh.shutdown()
    taskmesh.init(address=cli_cluster)  # shut down and joined again, in one process
    until(lambda: _joined_store_objects() == 0, timeout=15.0,
          what="the Goodbye to free what it owned")
    assert taskmesh.get(taskmesh.put(big(1.0)))[0] == 1.0


def test_a_view_kept_across_shutdown_of_a_joined_driver_keeps_its_data(cli_cluster):
    """A joined driver gets a zero-copy array, then shutdown(): CoreClient.close closes the store
    connection (its pins go, LocalStore.close) and Goodbye frees the object, but the array
    stays mapped and the user still holds it. The node store reuses the range for the next
    puts (here from the same process after re-init; any driver does the same), and the
    read-only array silently changes under the user: 1.0 becomes 3.0. The embedded cluster
    hides this because its whole node stops at shutdown."""
    taskmesh.init(address=cli_cluster)
    a = taskmesh.get(taskmesh.put(big(1.0, 20)))
    taskmesh.shutdown()
    taskmesh.init(address=cli_cluster)
    for _ in range(3):
        taskmesh.put(big(2.0, 20))
    keep = [taskmesh.put(big(3.0, 20)) for _ in range(2)]
    assert len(keep) == 2
    assert np.unique(a).tolist() == [1.0]
