"""The one table of task options: names, defaults, validation, and helpful errors.

``@remote(...)`` and ``.options(...)`` both go through :func:`validate`; the result is compiled
once into a :class:`TaskOptions` so the hot path (``.remote()``) does no option work at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ._checks import (check_options, int_at_least, name_or_none, non_negative_number,
                      resource_units, resources_dict, retry_exceptions, retry_filter,
                      runtime_env, timeout)
from ._protocol import MAX_RETURNS


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (``taskmesh.get_runtime_context().get_node_id()`` or
    ``nodes()[i]["NodeID"]``). ``soft=False``: only there (the task fails with
    TaskUnschedulableError if that node is dead); ``soft=True``: there when it has room, else
    anywhere."""

    node_id: str
    soft: bool = False


def strategy_code(v: Any) -> str:
    """The wire form of a scheduling strategy ("" = default); ValueError if it is none."""
    if v is None or v == "DEFAULT":
        return ""
    if v == "SPREAD":
        return "SPREAD"
    if isinstance(v, NodeAffinitySchedulingStrategy):
        if not isinstance(v.node_id, str) or not v.node_id:
            raise ValueError(f"NodeAffinitySchedulingStrategy needs a node id, got {v.node_id!r}")
        return ("node?:" if v.soft else "node:") + v.node_id
    raise ValueError("scheduling_strategy must be 'DEFAULT', 'SPREAD' or a "
                     f"NodeAffinitySchedulingStrategy, got {v!r}")


#: option -> (default, validator, one-line meaning)
TASK_OPTIONS: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "num_cpus": (1, non_negative_number("num_cpus"), "CPUs the task holds while it runs"),
    "num_gpus": (0, non_negative_number("num_gpus"), "GPUs the task holds while it runs"),
    "memory": (0, non_negative_number("memory"), "bytes of the node's memory the task reserves"),
    "resources": (None, resources_dict, "custom resources the task holds, e.g. {'highmem': 1}"),
    "num_returns": (1, int_at_least("num_returns", 0, MAX_RETURNS),
                    "how many ObjectRefs .remote() returns"),
    "max_retries": (3, int_at_least("max_retries", -1),
                    "re-runs after a worker or node dies (-1: forever)"),
    "retry_exceptions": (False, retry_exceptions,
                         "also retry when the task raises (True, or a list of exception classes)"),
    "name": (None, name_or_none, "task name shown in errors and status"),
    "timeout_s": (None, timeout, "stop the task once it ran this many seconds (TaskTimeoutError)"),
    "scheduling_strategy": (None, lambda v: (strategy_code(v), v)[1],
                            "'DEFAULT', 'SPREAD' or NodeAffinitySchedulingStrategy(node_id, soft)"),
    "runtime_env": (None, runtime_env,
                    "what the task needs on its worker: {'working_dir': ..., 'py_modules': [...], "
                    "'env_vars': {...}, 'pip': [...]} (merged over the job's, as Ray merges them)"),
}


def validate(options: dict[str, Any]) -> dict[str, Any]:
    """Check task option names and values; raise ValueError naming the problem."""
    return check_options(options, TASK_OPTIONS, "task")


@dataclass(frozen=True)
class TaskOptions:
    """Options compiled for the wire."""

    resources: dict  # name -> units of 1/10000
    num_returns: int
    max_retries: int
    retry_exceptions: bool
    name: str | None
    timeout_s: float = 0.0
    strategy: str = ""
    retry_filter: bytes = b""  # retry_exceptions as a list of classes, pickled
    runtime_env: dict | None = None  # its own runtime_env, checked (None: none of its own)


def compile_options(options: dict[str, Any]) -> TaskOptions:
    merged = {k: spec[0] for k, spec in TASK_OPTIONS.items()}
    merged.update(options)
    retry = merged["retry_exceptions"]
    return TaskOptions(resource_units(merged), merged["num_returns"], merged["max_retries"],
                       bool(retry), merged["name"], float(merged["timeout_s"] or 0.0),
                       strategy_code(merged["scheduling_strategy"]), retry_filter(retry),
                       merged["runtime_env"])
