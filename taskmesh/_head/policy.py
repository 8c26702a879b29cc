"""Placement policy as pure functions: which node, which worker, how many tasks in flight.

Policy in one paragraph: a ready task goes to an *idle* worker on the node that holds the most
bytes of its arguments in its object store (locality: no transfer), then with the most free CPU,
among the nodes whose free resources fit the task and that have an idle worker (a saturated holder
is passed over: moving the arguments costs less than waiting). When no idle worker fits, nodes that have
room but no idle worker are asked to start workers, and meanwhile short tasks may be *pipelined*:
queued behind a running task of the same resource shape on a busy worker, up to a window that
keeps about ``PIPELINE_TARGET_S`` of queued work per worker (known from the function's measured
mean duration) and never more than an even share of the queue. Unknown or long functions are
never pipelined, so one slow task cannot hold short ones hostage.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from .._resources import CPU

PIPELINE_TARGET_S = 0.002


def fits(available: Mapping[str, int], demand: Mapping[str, int]) -> bool:
    """True if ``available`` covers every resource in ``demand``."""
    for name, amount in demand.items():
        if amount and available.get(name, 0) < amount:
            return False
    return True


def pick_node(
    candidates: Iterable[tuple[str, Mapping[str, int]]],
    demand: Mapping[str, int],
    held_bytes: Mapping[str, int] | None = None,
    prefer: str | None = None,
) -> str | None:
    """The candidate (node id, available resources) that fits ``demand``: ``prefer`` (soft node
    affinity) if it is among them, else the one that holds the most of the task's argument
    bytes (``held_bytes``: node id -> bytes of its stored arguments there), then has the most
    free CPU. Candidates are the nodes that can start the task now, so a
    saturated holder is simply not among them and the task goes elsewhere (its arguments are
    then pulled over the network)."""
    best: str | None = None
    best_key = (-1, -1, -1)
    for node_id, available in candidates:
        if not fits(available, demand):
            continue
        key = (int(node_id == prefer), held_bytes.get(node_id, 0) if held_bytes else 0,
               available.get(CPU, 0))
        if key > best_key:
            best, best_key = node_id, key
    return best


def pick_spread(
    candidates: Iterable[tuple[str, Mapping[str, int], int]],
    demand: Mapping[str, int],
) -> str | None:
    """SPREAD: among the candidates (node id, available, tasks on it) that fit ``demand``,
    the one with the fewest tasks (then the most free CPU)."""
    best: str | None = None
    best_key: tuple | None = None
    for node_id, available, load in candidates:
        if not fits(available, demand):
            continue
        key = (load, -available.get(CPU, 0), node_id)
        if best_key is None or key < best_key:
            best, best_key = node_id, key
    return best


def is_short(mean_duration_s: float | None) -> bool:
    """A function known to finish well within the pipelining target."""
    return mean_duration_s is not None and mean_duration_s < PIPELINE_TARGET_S / 2


def pipeline_window(mean_duration_s: float | None, queued: int, workers: int, max_pipeline: int) -> int:
    """How many tasks of one function a busy worker may hold (1 = no pipelining)."""
    if mean_duration_s is None or workers <= 0:
        return 1
    by_time = int(PIPELINE_TARGET_S / max(mean_duration_s, 1e-6))
    fair_share = 1 + queued // workers
    return max(1, min(by_time, fair_share, max_pipeline))


def workers_to_start(
    free_cpu_units: int, demand_cpu_units: int, queued: int, starting: int, live: int, cap: int
) -> int:
    """How many new workers a node with free CPU but no idle worker should start now."""
    if demand_cpu_units > 0:
        could_run = free_cpu_units // demand_cpu_units
    else:
        could_run = queued
    want = min(could_run, queued) - starting
    room = cap - live - starting
    return max(0, min(want, room))


def steal_count(waiting: int, silent_s: float, quiet_s: float) -> int:
    """Work stealing: how many of the ``waiting`` tasks queued behind a worker's running one to
    take back for an idle node, given that the worker reported nothing for ``silent_s``. None
    while it reports within ``quiet_s`` (it keeps up: its queue holds milliseconds of work);
    else the back half, at least one."""
    if waiting <= 0 or silent_s <= quiet_s:
        return 0
    return max(1, waiting // 2)
