"""Large values in the node's shared-memory store, on a real embedded cluster.

Zero copy is checked where it matters: the array's memory lies inside the node's arena mapping
(/proc/self/maps), two gets share it, and it is read-only. Leak-freedom is checked with the
store's own figures, which the node agent reports in its heartbeats.
"""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

import taskmesh
from taskmesh._context import CTX

from ..support.procs import descendants, shm_entries, stop_and_check
from ..support.store import in_arena
from ..support.wait import until

MB = 1 << 20
STORE = 256 * MB


@pytest.fixture(scope="module")
def store_cluster():
    if taskmesh.is_initialized():
        taskmesh.shutdown()
    before = shm_entries()
    taskmesh.init(num_cpus=2, object_store_memory=STORE, heartbeat_interval_s=0.1)
    procs = descendants()
    try:
        yield taskmesh
    finally:
        stop_and_check(procs, before)


def store_stats(key: str) -> int:
    [node] = taskmesh.nodes()
    return node["ObjectStore"].get("store_" + key, -1)


@taskmesh.remote
def make_array(n: int, fill: float):
    return np.full(n, fill)


@taskmesh.remote
def array_sum(a):
    return float(a.sum()), bool(a.flags.writeable)


@taskmesh.remote
def nested_sum(refs):
    return float(sum(taskmesh.get(r).sum() for r in refs))


def test_put_get_of_a_large_array_is_zero_copy_and_read_only(store_cluster):
    x = np.random.rand(100 * MB // 8)
    ref = taskmesh.put(x)
    a = taskmesh.get(ref)
    b = taskmesh.get(ref)
    np.testing.assert_array_equal(a, x)
    assert in_arena(a), "the array is not backed by the node's shared-memory store"
    assert np.shares_memory(a, b)  # two gets, one copy in the store
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 1.0
    x[0] = -1.0  # put took a snapshot: later changes do not reach the stored value
    assert taskmesh.get(ref)[0] != -1.0


def test_small_values_stay_inline(store_cluster):
    x = np.arange(100)
    a = taskmesh.get(taskmesh.put(x))
    np.testing.assert_array_equal(a, x)
    assert not in_arena(a)


def test_large_task_results_are_stored_once_and_read_in_place(store_cluster):
    ref = make_array.remote(4 * MB, 2.5)
    a = taskmesh.get(ref)
    assert a.shape == (4 * MB,) and a[0] == 2.5 and a[-1] == 2.5
    assert in_arena(a)
    total, writeable = taskmesh.get(array_sum.remote(ref))  # a worker reads it in place too
    assert total == 2.5 * 4 * MB and writeable is False


def test_large_put_passed_to_many_tasks(store_cluster):
    x = np.arange(10 * MB // 8, dtype=np.float64)
    ref = taskmesh.put(x)
    sums = taskmesh.get([array_sum.remote(ref) for _ in range(16)])
    assert {s for s, _ in sums} == {float(x.sum())}


def test_refs_to_stored_objects_inside_a_list(store_cluster):
    refs = [taskmesh.put(np.full(MB, float(i))) for i in range(4)]
    assert taskmesh.get(nested_sum.remote(refs)) == float(sum(i * MB for i in range(4)))


def test_views_keep_their_object_and_dropping_them_unpins_it(store_cluster):
    ref = taskmesh.put(np.ones(20 * MB // 8))
    a = taskmesh.get(ref)
    store = CTX.core.local_store()
    assert store.pinned >= 1
    del ref  # the value stays readable while the view lives
    gc.collect()
    time.sleep(0.5)
    assert a.sum() == 20 * MB // 8
    del a
    gc.collect()
    until(lambda: store.pinned == 0, what="the pin to go with the last view")


def test_put_del_loop_keeps_the_store_flat(store_cluster):
    gc.collect()
    until(lambda: store_stats("used_bytes") == 0, what="an empty store before the loop")
    spilled_before = store_stats("total_spills")
    block = np.random.rand(10 * MB // 8)
    for i in range(1000):
        ref = taskmesh.put(block)
        if i % 100 == 0:
            assert taskmesh.get(ref)[0] == block[0]
        del ref
    # 10 GB went through a 256 MB store without spilling a byte, and all of it is freed
    used = until(lambda: store_stats("used_bytes") == 0 or None, timeout=15,
                 what="the store to be empty after the loop")
    assert used
    assert store_stats("total_spills") == spilled_before
    assert store_stats("num_objects") == 0


def test_an_object_larger_than_the_store_fails_clearly(store_cluster):
    with pytest.raises(taskmesh.ObjectStoreFullError, match="larger than this node's object store"):
        taskmesh.put(np.zeros(STORE // 8 + MB))


def test_large_arguments_passed_by_value_go_through_the_store_and_are_freed(store_cluster):
    x = np.arange(20 * MB // 8, dtype=np.float64)
    assert taskmesh.get(array_sum.remote(x)) == (float(x.sum()), False)  # read in place: read-only
    gc.collect()
    until(lambda: store_stats("num_objects") == 0, what="the arguments' object to be freed")
