"""Placement policy: pure functions, so plain table tests."""

from __future__ import annotations

import pytest

from taskmesh._head import policy
from taskmesh._head.policy import (
    pick_spread,
    PIPELINE_TARGET_S,
    fits,
    pick_node,
    pipeline_window,
    workers_to_start,
)
from taskmesh._resources import CPU, UNIT, from_units, to_units
from taskmesh._resources import describe as describe_resources


@pytest.mark.parametrize("amount,units", [(0, 0), (1, 10_000), (0.5, 5_000), (2.25, 22_500),
                                          (0.0001, 1), (0.1 + 0.2, 3_000), (1e-5, 0)])
def test_to_units_rounds_to_ten_thousandths(amount, units):
    assert to_units(amount) == units


def test_from_units_inverts_to_units():
    for amount in (0, 0.5, 1, 3.75, 64):
        assert from_units(to_units(amount)) == amount
    assert UNIT == 10_000 and CPU == "CPU"


@pytest.mark.parametrize("available,demand,ok", [
    ({"CPU": 10_000}, {"CPU": 10_000}, True),
    ({"CPU": 10_000}, {"CPU": 10_001}, False),
    ({"CPU": 20_000}, {}, True),
    ({}, {}, True),
    ({}, {"CPU": 0}, True),  # zero demand always fits
    ({"CPU": 10_000}, {"GPU": 1}, False),  # missing resource
    ({"CPU": 10_000, "GPU": 5_000}, {"CPU": 5_000, "GPU": 5_000}, True),
    ({"CPU": -10_000}, {"CPU": 1}, False),  # oversubscribed node
    ({"CPU": -10_000}, {}, True),
])
def test_fits(available, demand, ok):
    assert fits(available, demand) is ok


def test_pick_node_prefers_most_free_cpu_among_fitting_nodes():
    nodes = [("a", {"CPU": 20_000}), ("b", {"CPU": 40_000}), ("c", {"CPU": 30_000, "GPU": 10_000})]
    assert pick_node(nodes, {"CPU": 10_000}) == "b"
    assert pick_node(nodes, {"GPU": 10_000}) == "c"
    assert pick_node(nodes, {"CPU": 50_000}) is None
    assert pick_node([], {"CPU": 1}) is None
    # ties go to the first candidate
    assert pick_node([("x", {"CPU": 10_000}), ("y", {"CPU": 10_000})], {"CPU": 1}) == "x"
    # a node without any CPU can still run a zero-CPU task
    assert pick_node([("z", {"GPU": 10_000})], {}) == "z"
    # generators are fine
    assert pick_node(((n, r) for n, r in nodes), {}) == "b"


def test_pipeline_window_unknown_or_no_workers_means_no_pipelining():
    assert pipeline_window(None, 100, 4, 64) == 1
    assert pipeline_window(0.0001, 100, 0, 64) == 1
    assert pipeline_window(0.0001, 100, -1, 64) == 1


def test_pipeline_window_long_functions_are_not_pipelined():
    assert pipeline_window(PIPELINE_TARGET_S * 2, 100, 1, 64) == 1
    assert pipeline_window(10.0, 100, 1, 64) == 1
    assert pipeline_window(PIPELINE_TARGET_S, 100, 1, 64) == 1


def test_pipeline_window_short_functions_fill_the_target_time():
    mean = PIPELINE_TARGET_S / 10
    assert pipeline_window(mean, 1000, 1, 64) == 10
    # capped by the even share of the queue
    assert pipeline_window(mean, 6, 3, 64) == 3
    assert pipeline_window(mean, 0, 3, 64) == 1
    # capped by max_pipeline
    assert pipeline_window(PIPELINE_TARGET_S / 1000, 10_000, 1, 64) == 64
    assert pipeline_window(PIPELINE_TARGET_S / 1000, 10_000, 1, 1) == 1
    # a zero mean does not divide by zero
    assert pipeline_window(0.0, 10_000, 1, 64) == 64


@pytest.mark.parametrize("mean", [None, 0.0, 1e-9, 1e-4, 1e-3, 0.5, 100.0])
@pytest.mark.parametrize("queued,workers,max_pipe", [(0, 1, 64), (5, 2, 64), (1000, 3, 8), (7, 7, 1)])
def test_pipeline_window_is_always_within_bounds(mean, queued, workers, max_pipe):
    w = pipeline_window(mean, queued, workers, max_pipe)
    assert 1 <= w <= max(1, max_pipe)
    assert w <= 1 + queued // workers


def test_is_short():
    assert not policy.is_short(None)
    assert policy.is_short(0.0) and policy.is_short(PIPELINE_TARGET_S / 10)
    assert not policy.is_short(PIPELINE_TARGET_S) and not policy.is_short(10.0)


@pytest.mark.parametrize("free,demand,queued,starting,live,cap,expected", [
    (40_000, 10_000, 10, 0, 0, 6, 4),  # room for 4 tasks
    (40_000, 10_000, 2, 0, 0, 6, 2),  # only 2 queued
    (40_000, 10_000, 10, 3, 0, 6, 1),  # 3 already starting
    (40_000, 10_000, 10, 0, 5, 6, 1),  # cap reached but for one
    (40_000, 10_000, 10, 0, 6, 6, 0),  # cap reached
    (5_000, 10_000, 10, 0, 0, 6, 0),  # not enough CPU for one task
    (0, 0, 3, 0, 0, 6, 3),  # zero-CPU tasks: one worker per queued task
    (0, 0, 10, 0, 0, 6, 6),  # ... up to the cap
    (40_000, 5_000, 100, 0, 0, 100, 8),  # half-CPU tasks
    (40_000, 10_000, 0, 0, 0, 6, 0),  # nothing queued
    (40_000, 10_000, 2, 5, 0, 6, 0),  # more starting than wanted: never negative
])
def test_workers_to_start(free, demand, queued, starting, live, cap, expected):
    assert workers_to_start(free, demand, queued, starting, live, cap) == expected


@pytest.mark.parametrize("resources,text", [
    ({"CPU": 20_000}, "CPU=2"),
    ({}, "nothing"),
    ({"GPU": 10_000, "CPU": 5_000}, "CPU=0.5, GPU=1"),
    ({"custom": 1}, "custom=0.0001"),
])
def test_describe_resources(resources, text):
    assert describe_resources(resources) == text


def test_pick_node_takes_the_preferred_node_when_it_fits():
    cands = [("a", {"CPU": 40_000}), ("b", {"CPU": 10_000})]
    assert pick_node(cands, {"CPU": 10_000}, None, "b") == "b"
    assert pick_node(cands, {"CPU": 20_000}, None, "b") == "a"  # b cannot take it: anywhere
    assert pick_node(cands, {"CPU": 10_000}, None, "gone") == "a"


def test_pick_spread_takes_the_least_loaded_node():
    cands = [("a", {"CPU": 40_000}, 3), ("b", {"CPU": 10_000}, 1), ("c", {"CPU": 0}, 0)]
    assert pick_spread(cands, {"CPU": 10_000}) == "b"  # c has no room
    assert pick_spread([("a", {"CPU": 1}, 0), ("b", {"CPU": 2}, 0)], {}) == "b"


def test_gpu_devices_are_whole_for_one_or_more_and_shared_below_one():
    from taskmesh._resources import UNIT, assign_gpus

    free = {"0": UNIT, "1": UNIT, "2": UNIT}
    assert assign_gpus(free, UNIT // 2) == {"0": UNIT // 2}
    assert assign_gpus(free, UNIT // 4) == {"0": UNIT // 4}  # packs onto the fullest that fits
    assert assign_gpus(free, 2 * UNIT) == {"1": UNIT, "2": UNIT}
    assert assign_gpus(free, UNIT) is None  # none whole is left
    assert assign_gpus(free, UNIT // 4) == {"0": UNIT // 4}
    assert free == {"0": 0, "1": 0, "2": 0}
    assert assign_gpus({"0": UNIT, "1": UNIT}, 3 * UNIT // 2) is None  # 1.5: not on devices


def test_detect_gpus_reads_cuda_visible_devices():
    from taskmesh._resources import detect_gpus

    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_steal_count_takes_half_from_a_silent_worker_only():
    assert policy.steal_count(10, 1.0, 0.05) == 5
    assert policy.steal_count(1, 1.0, 0.05) == 1
    assert policy.steal_count(10, 0.01, 0.05) == 0  # it reports: it keeps up
    assert policy.steal_count(0, 9.0, 0.05) == 0
