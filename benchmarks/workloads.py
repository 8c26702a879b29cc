"""Workload definitions and registry for the side-by-side benchmark.

Each workload is one Python function written against :class:`benchmarks.adapters.Api`
that runs a single timed iteration, verifies its results (raising
:class:`VerificationError` on any wrong value) and returns the elapsed wall-clock
seconds of the timed region.  A :class:`Workload` record adds the unit the result
is reported in, whether lower or higher is better, and optional per-framework
overrides for work that cannot be expressed through the common API.

Adding a workload (e.g. ``put_get_100MB``, ``big_arg_fanout``,
``actor_calls_async``, ``failure``) means: write a ``run_<name>(api) -> float``
function (plus any module-level task functions it submits) and call
:func:`register`.  Task functions must live at module level in this module so
worker processes can import them by reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from benchmarks.adapters import Api, in_task

#: One timed iteration on an initialised framework -> elapsed seconds.
Runner = Callable[[Api], float]


class VerificationError(AssertionError):
    """A workload produced a wrong result: the benchmark must fail, not report a time."""


def verify(condition: bool, message: str) -> None:
    """Raise :class:`VerificationError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise VerificationError(message)


@dataclass(frozen=True)
class Workload:
    """A named benchmark workload and how to report it."""

    name: str
    description: str
    #: Unit of the reported metric, e.g. ``"tasks/s"``, ``"ms/round trip"``, ``"s"``.
    unit: str
    #: Which direction of the *metric* is better.
    better: Literal["lower", "higher"]
    #: Converts elapsed seconds of one iteration into the reported metric.
    metric: Callable[[float], float]
    #: Generic implementation (via the adapter); ``None`` for special workloads.
    run: Runner | None = None
    #: Framework name -> implementation replacing :attr:`run` for that framework.
    overrides: Mapping[str, Runner] = field(default_factory=dict)
    #: Run one untimed iteration before the timed ones.
    warmup: bool = True
    #: Per-iteration budget; the runner kills a child exceeding it.
    timeout_s: float = 300.0
    #: ``"cold_start"`` is measured by the child around framework init, not by a runner.
    special: str | None = None

    def runner(self, framework: str) -> Runner:
        """The implementation to use for ``framework``."""
        fn = self.overrides.get(framework, self.run)
        if fn is None:
            raise ValueError(f"workload {self.name!r} has no runner for {framework!r}")
        return fn


#: Registry, in default run (and table) order.
WORKLOADS: dict[str, Workload] = {}


def register(workload: Workload) -> Workload:
    """Add ``workload`` to :data:`WORKLOADS` (names must be unique)."""
    if workload.name in WORKLOADS:
        raise ValueError(f"duplicate workload {workload.name!r}")
    WORKLOADS[workload.name] = workload
    return workload


def _seconds(s: float) -> float:
    return s


# =========================================================================== task functions
# Executed in worker processes; keep them at module level and side-effect free.

NOOP_RESULT = 42


def noop() -> int:
    """A task doing nothing; returns a constant so results can still be checked."""
    return NOOP_RESULT


def trivial() -> int:
    """The first task of a cold start."""
    return 1


def make_leaf(i: int, size: int) -> np.ndarray:
    """Leaf of the tree reduction: ``arange(size) + i`` as float64."""
    return np.arange(size, dtype=np.float64) + i


def add_arrays(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inner node of the tree reduction (arguments arrive resolved)."""
    return a + b


def nested_child(i: int, j: int) -> int:
    """Child task of the nested workload."""
    return i * 1000 + j


def nested_parent(i: int, children: int, framework: str) -> int:
    """Submit ``children`` child tasks from inside a task, get them, return their sum."""
    with in_task(framework) as api:
        submit = api.remote(nested_child)
        refs = [submit(i, j) for j in range(children)]
        values = api.get(refs)
    return int(sum(values))


# =========================================================================== expected values


def expected_tree_result(leaves: int, size: int) -> np.ndarray:
    """Exact sum of ``make_leaf(i, size)`` for ``i < leaves`` (all values are small integers)."""
    return np.arange(size, dtype=np.float64) * leaves + leaves * (leaves - 1) // 2


def expected_nested(i: int, children: int) -> int:
    """Exact result of ``nested_parent(i, children, ...)``."""
    return children * i * 1000 + children * (children - 1) // 2


# =========================================================================== workloads

NOOP_ASYNC_TASKS = 5000
NOOP_SYNC_ROUND_TRIPS = 500
TREE_LEAVES = 1024
TREE_LEAF_SIZE = 10_000
NESTED_PARENTS = 50
NESTED_CHILDREN = 10


def run_noop_async(api: Api, n: int = NOOP_ASYNC_TASKS) -> float:
    """Submit ``n`` no-op tasks, then get all of them."""
    submit = api.remote(noop)
    t0 = time.perf_counter()
    refs = [submit() for _ in range(n)]
    results = api.get(refs)
    elapsed = time.perf_counter() - t0
    verify(len(results) == n, f"noop_async: got {len(results)} results, expected {n}")
    bad = sum(1 for r in results if r != NOOP_RESULT)
    verify(bad == 0, f"noop_async: {bad} of {n} results differ from {NOOP_RESULT}")
    return elapsed


def run_noop_sync(api: Api, n: int = NOOP_SYNC_ROUND_TRIPS) -> float:
    """``n`` sequential submit-then-get round trips of a no-op task."""
    submit = api.remote(noop)
    get = api.get
    results = []
    t0 = time.perf_counter()
    for _ in range(n):
        results.append(get(submit()))
    elapsed = time.perf_counter() - t0
    bad = sum(1 for r in results if r != NOOP_RESULT)
    verify(len(results) == n and bad == 0, f"noop_sync: {bad} of {n} results wrong")
    return elapsed


def run_tree_reduce(
    api: Api, leaves: int = TREE_LEAVES, size: int = TREE_LEAF_SIZE
) -> float:
    """``leaves`` array-producing tasks reduced pairwise by tasks taking two refs."""
    leaf = api.remote(make_leaf)
    add = api.remote(add_arrays)
    t0 = time.perf_counter()
    level: list[Any] = [leaf(i, size) for i in range(leaves)]
    while len(level) > 1:
        nxt = [add(level[k], level[k + 1]) for k in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    result = api.get(level[0])
    elapsed = time.perf_counter() - t0
    verify(
        isinstance(result, np.ndarray) and result.shape == (size,),
        f"tree_reduce: got {type(result).__name__} {getattr(result, 'shape', '')}",
    )
    expected = expected_tree_result(leaves, size)
    if not np.array_equal(result, expected):
        k = int(np.flatnonzero(result != expected)[0])
        raise VerificationError(
            f"tree_reduce: result[{k}]={result[k]!r}, expected {expected[k]!r}"
        )
    return elapsed


def run_nested(
    api: Api, parents: int = NESTED_PARENTS, children: int = NESTED_CHILDREN
) -> float:
    """``parents`` tasks that each submit and get ``children`` tasks."""
    parent = api.remote(nested_parent)
    t0 = time.perf_counter()
    refs = [parent(i, children, api.name) for i in range(parents)]
    results = api.get(refs)
    elapsed = time.perf_counter() - t0
    expected = [expected_nested(i, children) for i in range(parents)]
    verify(
        list(results) == expected,
        f"nested: results {list(results)[:5]}... != {expected[:5]}...",
    )
    return elapsed


register(
    Workload(
        name="noop_async",
        description=f"submit {NOOP_ASYNC_TASKS} no-op tasks, then get all",
        unit="tasks/s",
        better="higher",
        metric=lambda s: NOOP_ASYNC_TASKS / s,
        run=run_noop_async,
    )
)
register(
    Workload(
        name="noop_sync",
        description=f"{NOOP_SYNC_ROUND_TRIPS} sequential submit-then-get round trips",
        unit="ms/round trip",
        better="lower",
        metric=lambda s: s * 1000.0 / NOOP_SYNC_ROUND_TRIPS,
        run=run_noop_sync,
    )
)
register(
    Workload(
        name="tree_reduce",
        description=f"{TREE_LEAVES} leaves of {TREE_LEAF_SIZE} float64, pairwise sum by tasks",
        unit="s",
        better="lower",
        metric=_seconds,
        run=run_tree_reduce,
    )
)
register(
    Workload(
        name="nested",
        description=f"{NESTED_PARENTS} tasks each submitting and getting {NESTED_CHILDREN} children",
        unit="s",
        better="lower",
        metric=_seconds,
        run=run_nested,
    )
)
register(
    Workload(
        name="cold_start",
        description="fresh process: init + first result of a trivial task (import timed apart)",
        unit="s",
        better="lower",
        metric=_seconds,
        warmup=False,
        timeout_s=180.0,
        special="cold_start",
    )
)
