"""The state API, under Ray's names (``ray.util.state``): what runs where, what failed and why.

    from taskmesh.util.state import list_tasks, get_task, summarize_tasks
    list_tasks(filters=[("state", "=", "FAILED")], detail=True)
    get_task("3f2a9c01")            # a task by its id, or a unique start of it
    summarize_tasks()                # tasks by function and state

Each call asks the head once. It answers from its state view, fed by its event stream: every
task in flight, the last ``Config.state_finished_tasks`` (10,000) that ended, actors, jobs
(one per driver), and counts of ended tasks by function since it started; nodes and objects
from its records. Rows are plain dicts with Ray's field names; times are epoch milliseconds
(``*_time_ms``, None when it did not happen yet). Filters are ``(key, "=" or "!=", value)``;
an unknown key or state gets a ValueError that lists the valid ones.

``address``: the head to ask (``"HOST:PORT"``). By default the cluster this process joined
with ``taskmesh.init()``, else the one ``taskmesh status`` would ask (``$TASKMESH_ADDRESS``, or
the head started on this machine).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from .._state_client import query, query_string, session

__all__ = ["list_nodes", "list_tasks", "list_actors", "list_objects", "list_jobs",
           "get_task", "get_actor", "summarize_tasks"]

Filters = Sequence[tuple[str, str, Any]]


def _list(kind: str, address: str | None, filters: Filters | None, limit: int, timeout: float,
          detail: bool, raise_on_missing_output: bool) -> list[dict]:
    what = query_string(kind, filters, limit, detail)
    with session(address) as core:
        reply = query(core, what, timeout)
    if reply.get("truncated"):
        warnings.warn(f"{reply['total']:,} {kind} match; only the first {len(reply['rows']):,} "
                      f"are returned: raise limit= (at most 10,000) or filter more",
                      stacklevel=3)
    if reply.get("view") is False and raise_on_missing_output:
        raise RuntimeError(f"the head's state view is off (its config has event_ring=0 or "
                           f"state_finished_tasks=0): it cannot list {kind}")
    if reply.get("scanned_all") is False:
        warnings.warn("the head holds more objects than one query looks at (100,000): some "
                      "are not listed", stacklevel=3)
    return reply["rows"]


def list_tasks(address: str | None = None, filters: Filters | None = None, limit: int = 100,
               timeout: float = 30, detail: bool = False,
               raise_on_missing_output: bool = True) -> list[dict]:
    """Tasks in flight and the last ones that ended (in flight first, then the most recent).

    Fields: ``task_id``, ``attempt_number``, ``name``, ``state`` (PENDING_ARGS_AVAIL,
    PENDING_NODE_ASSIGNMENT, RUNNING, FINISHED, FAILED), ``job_id``, ``actor_id``, ``type``
    (NORMAL_TASK, ACTOR_CREATION_TASK, ACTOR_TASK), ``func_or_class_name``,
    ``parent_task_id``, ``node_id``, ``worker_id``, ``error_type``; with ``detail`` also
    ``creation_time_ms``, ``start_time_ms``, ``end_time_ms``, ``duration_s`` and
    ``error_message`` (the traceback of a task that raised; cut at 1 KiB here, whole in
    ``get_task``)."""
    return _list("tasks", address, filters, limit, timeout, detail, raise_on_missing_output)


def list_actors(address: str | None = None, filters: Filters | None = None, limit: int = 100,
                timeout: float = 30, detail: bool = False,
                raise_on_missing_output: bool = True) -> list[dict]:
    """Actors alive or starting, and the last 1,000 that died: ``actor_id``, ``class_name``,
    ``name`` (a named actor's, once created), ``state`` (DEPENDENCIES_UNREADY,
    PENDING_CREATION, ALIVE, RESTARTING, DEAD), ``job_id``, ``node_id``, ``num_restarts``,
    ``death_cause``, ``creation_time_ms``, ``end_time_ms``."""
    return _list("actors", address, filters, limit, timeout, detail, raise_on_missing_output)


def list_jobs(address: str | None = None, filters: Filters | None = None, limit: int = 100,
              timeout: float = 30, detail: bool = False,
              raise_on_missing_output: bool = True) -> list[dict]:
    """Jobs: one per driver that joined (those connected, and the last 1,000 that left).
    ``job_id``, ``status`` (RUNNING, SUCCEEDED: it said goodbye, FAILED: it vanished),
    ``message``, ``start_time_ms``, ``end_time_ms``."""
    return _list("jobs", address, filters, limit, timeout, detail, raise_on_missing_output)


def list_nodes(address: str | None = None, filters: Filters | None = None, limit: int = 100,
               timeout: float = 30, detail: bool = False,
               raise_on_missing_output: bool = True) -> list[dict]:
    """Nodes, alive and dead: ``node_id``, ``node_ip``, ``node_name`` (host name), ``state``
    (ALIVE, DEAD), ``is_head_node``, ``resources_total``, ``workers``, ``actors``,
    ``tasks_finished``."""
    return _list("nodes", address, filters, limit, timeout, detail, raise_on_missing_output)


def list_objects(address: str | None = None, filters: Filters | None = None, limit: int = 100,
                 timeout: float = 30, detail: bool = False,
                 raise_on_missing_output: bool = True) -> list[dict]:
    """Objects the head knows: ``object_id``, ``object_size`` (bytes), ``state`` (PENDING:
    no value yet, READY, ERROR), ``location`` (``head`` for a small value held inline, else
    the ids of the nodes whose stores hold a copy), ``owner``, ``job_id``, ``borrowers``,
    ``dependents`` (pending tasks that take it)."""
    return _list("objects", address, filters, limit, timeout, detail, raise_on_missing_output)


def _get(kind: str, id: str, address: str | None, timeout: float) -> dict | None:
    what = query_string(kind, [("id", "=", id)])
    with session(address) as core:
        rows = query(core, what, timeout)["rows"]
    return rows[0] if rows else None


def get_task(id: str, address: str | None = None, timeout: float = 30) -> dict | None:
    """One task, in detail (its whole error message and traceback if it failed), by its id
    or a unique start of it (at least 4 characters); None if the head keeps no such task."""
    return _get("task", id, address, timeout)


def get_actor(id: str, address: str | None = None, timeout: float = 30) -> dict | None:
    """One actor by its id or a unique start of it; None if the head keeps no such actor."""
    return _get("actor", id, address, timeout)


def summarize_tasks(address: str | None = None, timeout: float = 30) -> dict:
    """Tasks by function and state, as Ray's ``summarize_tasks``: FINISHED and FAILED count
    every task that ended since the head started, the other states the tasks in them now::

        {"cluster": {"summary": {"mod.f": {"func_or_class_name": "mod.f",
                                           "state_counts": {"FINISHED": 12, "RUNNING": 2}}},
                     "total_tasks": 14, "summary_by": "func_name"}}
    """
    with session(address) as core:
        summary = query(core, "state:summary", timeout)["summary"]
    rows = {name: {"func_or_class_name": name, "state_counts": counts}
            for name, counts in sorted(summary.items())}
    total = sum(sum(counts.values()) for counts in summary.values())
    return {"cluster": {"summary": rows, "total_tasks": total, "summary_by": "func_name"}}
