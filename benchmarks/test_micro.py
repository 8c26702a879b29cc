"""pytest-benchmark micro-benchmarks of taskmesh alone.

Run with ``pytest benchmarks/ --benchmark-only`` for timings, or
``pytest benchmarks/ --benchmark-disable`` to run every benchmark body once as a
quick correctness check.  One taskmesh runtime (``init(num_cpus=2)``) is shared
by the whole module; if taskmesh cannot import or init, every test is skipped.
The larger workloads reuse the definitions of :mod:`benchmarks.workloads` (at a
smaller size), so they also verify their results.  ``test_failure_small`` is not a
benchmark (it does not use the fixture, so ``--benchmark-only`` skips it): it kills a
worker and checks that every result still comes back exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("pytest_benchmark")

from benchmarks import workloads as wl
from benchmarks.adapters import RayLikeApi

NOOP_TASKS = 1000
TREE_LEAVES = 64
TREE_LEAF_SIZE = 1000
BIG_FLOATS_SMALL = 125_000  # 1 MB instead of the side-by-side's 100 MB
FANOUT_TASKS_SMALL = 4
NUM_WORKERS = 2
SMALL_OBJECT = {
    "ints": list(range(16)),
    "text": "taskmesh" * 8,
    "nested": {"a": (1, 2.5, None)},
}


@pytest.fixture(scope="module")
def tm() -> Iterator[Any]:
    """The ``taskmesh`` module, initialised with two worker processes for this module."""
    try:
        import taskmesh

        taskmesh.init(num_cpus=NUM_WORKERS)
    except Exception as exc:  # noqa: BLE001 - any failure to start means "skip", not "error"
        with contextlib.suppress(Exception):  # undo a half-done init, if any
            taskmesh.shutdown()
        pytest.skip(f"taskmesh cannot init: {type(exc).__name__}: {exc}")
    try:
        yield taskmesh
    finally:
        taskmesh.shutdown()


@pytest.fixture(scope="module")
def api(tm: Any) -> RayLikeApi:
    """The benchmark adapter over the running taskmesh (same code path as sidebyside)."""
    return RayLikeApi(tm, "taskmesh", NUM_WORKERS)


def test_noop_async_1000(benchmark: Any, api: RayLikeApi) -> None:
    """Submit 1000 no-op tasks, then get all (verified)."""
    benchmark.pedantic(
        wl.run_noop_async,
        args=(api,),
        kwargs={"n": NOOP_TASKS},
        rounds=5,
        warmup_rounds=1,
    )


def test_noop_sync_round_trip(benchmark: Any, tm: Any) -> None:
    """One submit-then-get round trip of a no-op task."""
    noop = tm.remote(wl.noop)
    tm.get(noop.remote())  # warm up: the function is exported and a worker is ready
    result = benchmark(lambda: tm.get(noop.remote()))
    assert result == wl.NOOP_RESULT


def test_put_get_small(benchmark: Any, tm: Any) -> None:
    """``get(put(obj))`` of a small nested Python object."""
    result = benchmark(lambda: tm.get(tm.put(SMALL_OBJECT)))
    assert result == SMALL_OBJECT


def test_tree_reduce_small(benchmark: Any, api: RayLikeApi) -> None:
    """64 leaves of 1000 float64 reduced pairwise by tasks (verified exactly)."""
    benchmark.pedantic(
        wl.run_tree_reduce,
        args=(api,),
        kwargs={"leaves": TREE_LEAVES, "size": TREE_LEAF_SIZE},
        rounds=5,
        warmup_rounds=1,
    )


def test_put_get_1MB(benchmark: Any, api: RayLikeApi) -> None:
    """``put_get_100MB`` at 1 MB: put, get, verified bit for bit; records zero-copy facts."""
    sample = benchmark.pedantic(
        wl.run_put_get_100MB,
        args=(api,),
        kwargs={"n": BIG_FLOATS_SMALL},
        rounds=5,
        warmup_rounds=1,
    )
    assert sample.info["bytes"] == BIG_FLOATS_SMALL * 8
    assert wl.note_put_get({"warmup": None, "timed": [sample.info]})


def test_big_arg_fanout_1MB(benchmark: Any, api: RayLikeApi) -> None:
    """``big_arg_fanout`` at 1 MB and 4 tasks (each sum verified exactly)."""
    sample = benchmark.pedantic(
        wl.run_big_arg_fanout,
        args=(api,),
        kwargs={"n": BIG_FLOATS_SMALL, "tasks": FANOUT_TASKS_SMALL},
        rounds=5,
        warmup_rounds=1,
    )
    assert sample.info["tasks"] == FANOUT_TASKS_SMALL


def test_get_100MB_is_zero_copy(benchmark: Any, tm: Any) -> None:
    """``get`` of a 100 MB array held by this machine's node: a read-only view of the store,
    so its time does not grow with the size (the issue's bar: well under 5 ms)."""
    import numpy as np

    data = np.ones(100 * 2**20 // 8)
    ref = tm.put(data)
    got = benchmark(tm.get, ref)
    assert np.shares_memory(got, tm.get(ref)) and not got.flags.writeable
    assert got.shape == data.shape and got[0] == 1.0 and got[-1] == 1.0


def test_failure_small(api: RayLikeApi) -> None:
    """``failure`` at 40 tasks of 20 ms, one worker SIGKILLed 0.15 s in: untimed, every
    result exact, the killed worker had returned results, and the pool is back to two
    workers afterwards (all checked by the runner itself)."""
    sample = wl.run_failure(api, tasks=40, task_s=0.02, kill_at_s=0.15, settle_s=0.0)
    info = sample.info
    assert info["results_from_killed"] > 0
    assert len(info["pool_after"]) == NUM_WORKERS
    assert info["killed_pid"] not in info["pool_after"]
    assert wl.note_failure({"warmup": None, "timed": [info]})


def test_head_replay_flood(benchmark: Any) -> None:
    """The head's state alone (benchmarks/head_replay.py): a small flood, every task assigned
    and finished (the replay unpacks what the head sent, so a head that stops assigning fails)."""
    from benchmarks import head_replay

    per_task = benchmark(head_replay.flood, None, 20, 50)
    trip = head_replay.round_trip(None, n=30)
    assert per_task > 0 and set(trip) == {"submit", "result", "release"}
