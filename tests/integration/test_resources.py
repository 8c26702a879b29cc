"""Resources on a real cluster: GPUs (fake devices via num_gpus) reach tasks and actors as
CUDA_VISIBLE_DEVICES, fractional GPUs share a device, memory is a resource, node affinity
pins or fails clearly, and impossible requests warn instead of hanging silently."""

from __future__ import annotations

import os

import pytest

import taskmesh
from taskmesh.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def gpu_cluster():
    if taskmesh.is_initialized():
        taskmesh.shutdown()
    taskmesh.init(num_cpus=4, num_gpus=2)
    try:
        yield taskmesh
    finally:
        taskmesh.shutdown()


@taskmesh.remote(num_gpus=1)
def whole():
    return os.environ["CUDA_VISIBLE_DEVICES"]


@taskmesh.remote(num_gpus=0.5)
def half():
    return os.environ["CUDA_VISIBLE_DEVICES"]


@taskmesh.remote
def no_gpu():
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_gpu_tasks_see_their_devices(gpu_cluster):
    assert taskmesh.cluster_resources()["GPU"] == 2
    seen = taskmesh.get([whole.remote() for _ in range(6)])
    assert set(seen) <= {"0", "1"} and all(len(s.split(",")) == 1 for s in seen)
    assert set(taskmesh.get([half.remote() for _ in range(6)])) <= {"0", "1"}
    assert taskmesh.get(no_gpu.remote()) == ""  # asked for none: sees none


def test_two_tasks_holding_a_gpu_each_at_once_get_different_devices(gpu_cluster):
    @taskmesh.remote(num_gpus=1)
    class Holder:
        def device(self):
            return os.environ["CUDA_VISIBLE_DEVICES"]

    a, b = Holder.remote(), Holder.remote()  # both hold their GPU while they live
    assert sorted(taskmesh.get([a.device.remote(), b.device.remote()])) == ["0", "1"]
    assert taskmesh.available_resources().get("GPU", 0) == 0
    taskmesh.kill(a)
    taskmesh.kill(b)


def test_memory_is_a_resource_tasks_reserve(gpu_cluster):
    total = taskmesh.cluster_resources()["memory"]

    @taskmesh.remote(memory=1 << 20)
    def small():
        return 1

    assert total > 0 and taskmesh.get(small.remote()) == 1
    with pytest.raises(ValueError, match="use num_cpus/num_gpus/memory"):
        small.options(resources={"memory": 1})


def test_node_affinity_pins_a_task_or_fails_it_clearly(gpu_cluster):
    node = taskmesh.nodes()[0]["NodeID"]

    @taskmesh.remote
    def where():
        return taskmesh.get_runtime_context().get_node_id()

    assert taskmesh.get(where.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node)).remote()) == node
    with pytest.raises(taskmesh.TaskUnschedulableError, match="must run on node nowhere"):
        taskmesh.get(where.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy("nowhere")).remote(), timeout=30)
    assert taskmesh.get(where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        "nowhere", soft=True)).remote(), timeout=30) == node
    assert taskmesh.get(where.options(scheduling_strategy="SPREAD").remote()) == node
    with pytest.raises(ValueError, match="scheduling_strategy must be"):
        where.options(scheduling_strategy="EVERYWHERE")


def test_a_request_no_node_can_meet_warns_naming_it(gpu_cluster, caplog):
    @taskmesh.remote(num_gpus=8)
    def greedy():
        return 1

    ref = greedy.remote()
    with pytest.raises(taskmesh.GetTimeoutError):
        taskmesh.get(ref, timeout=1.0)  # it waits for such a node; the owner was warned
    assert any("GPU=8" in r.getMessage() and "greedy" in r.getMessage() for r in caplog.records)
    taskmesh.cancel(ref)
