"""Tasks that submit tasks and block in get(): no deadlock, CPU lent, bounded workers."""

from __future__ import annotations

import pytest

import taskmesh

from ..support.wait import until


@taskmesh.remote
def leaf(x):
    return x + 1


@taskmesh.remote
def fan(n):
    return sum(taskmesh.get([leaf.remote(i) for i in range(n)]))


@taskmesh.remote
def depth(d):
    if d == 0:
        return 0
    return taskmesh.get(depth.remote(d - 1)) + 1


@pytest.mark.parametrize("fresh_cluster", [1], indirect=True)
def test_nested_on_one_cpu_does_not_deadlock(fresh_cluster):
    assert taskmesh.get(fan.remote(10), timeout=60) == sum(range(1, 11))
    assert taskmesh.get([fan.remote(5) for _ in range(5)], timeout=60) == [15] * 5
    assert taskmesh.get(depth.remote(6), timeout=60) == 6
    # a blocked worker lends its CPU: one extra worker per level of blocking, not more
    workers = taskmesh.nodes()[0]["Workers"]
    assert 1 <= workers <= 1 + 6 + 2


@pytest.mark.parametrize("fresh_cluster", [2], indirect=True)
def test_many_nested_parents_bounded_workers(fresh_cluster):
    parents = [fan.remote(10) for _ in range(50)]
    assert taskmesh.get(parents, timeout=120) == [55] * 50
    workers = taskmesh.nodes()[0]["Workers"]
    # at most one blocked parent per worker plus the CPUs (and a small start-up margin)
    assert workers <= 2 + 50 + 2


@pytest.mark.parametrize("fresh_cluster", [1], indirect=True)
def test_wait_inside_task_lends_cpu(fresh_cluster):
    @taskmesh.remote
    def waiter():
        refs = [leaf.remote(i) for i in range(3)]
        ready, _ = taskmesh.wait(refs, num_returns=3, timeout=30)
        return len(ready)

    assert taskmesh.get(waiter.remote(), timeout=60) == 3


@taskmesh.remote(num_cpus=0.5)
def other_shape(x):
    return x * 2


@taskmesh.remote
def waits_for_other_shape(d):
    """Its child has another resource shape, so it cannot run it itself: it must lend its CPU."""
    if d == 0:
        return taskmesh.get(other_shape.remote(1))
    return taskmesh.get(waits_for_other_shape.options(num_cpus=0.5).remote(d - 1)) + 1


@pytest.mark.parametrize("fresh_cluster", [1], indirect=True)
def test_blocked_worker_lends_its_cpu_to_a_new_worker(fresh_cluster):
    assert taskmesh.get(waits_for_other_shape.remote(0), timeout=60) == 2
    assert taskmesh.nodes()[0]["Workers"] == 2
    assert taskmesh.get(waits_for_other_shape.remote(3), timeout=60) == 5
    assert taskmesh.nodes()[0]["Workers"] <= 1 + 4 + 2


@pytest.mark.parametrize("fresh_cluster", [1], indirect=True)
def test_parent_runs_its_own_children_without_new_workers(fresh_cluster):
    assert taskmesh.get([fan.remote(10) for _ in range(20)], timeout=60) == [55] * 20
    assert taskmesh.nodes()[0]["Workers"] == 1


def test_surplus_idle_workers_retire(tmp_path):
    taskmesh.init(num_cpus=1, idle_worker_timeout_s=0.5)
    try:
        assert taskmesh.get(waits_for_other_shape.remote(3), timeout=60) == 5
        assert taskmesh.nodes()[0]["Workers"] >= 2
        until(lambda: taskmesh.nodes()[0]["Workers"] <= 1, timeout=20, interval=0.1,
              what=lambda: f"the surplus workers to retire: {taskmesh.nodes()[0]['Workers']} left")
        assert taskmesh.nodes()[0]["Workers"] == 1
        assert taskmesh.get(leaf.remote(1)) == 2
    finally:
        taskmesh.shutdown()


@pytest.mark.parametrize("fresh_cluster", [1], indirect=True)
def test_task_id_survives_help(fresh_cluster):
    @taskmesh.remote
    def parent_ids():
        before = taskmesh.get_runtime_context().get_task_id()
        taskmesh.get([leaf.remote(i) for i in range(3)])  # runs them itself, as Help
        return before, taskmesh.get_runtime_context().get_task_id()

    before, after = taskmesh.get(parent_ids.remote(), timeout=60)
    assert before is not None and before == after
