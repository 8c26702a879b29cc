"""The one table of task options: names, defaults, validation, and helpful errors.

``@remote(...)`` and ``.options(...)`` both go through :func:`validate`; the result is compiled
once into a :class:`TaskOptions` so the hot path (``.remote()``) does no option work at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ._protocol import MAX_RETURNS
from ._resources import CPU, to_units


def _non_negative_number(name: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        return v

    return check


def _int_at_least(name: str, low: int, high: int | None = None) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        if high is not None and v > high:
            raise ValueError(f"{name} must be at most {high:,}, got {v!r}")
        return v

    return check


def _resources(v: Any) -> Any:
    if not isinstance(v, dict):
        raise ValueError(f"resources must be a dict of name -> amount, got {v!r}")
    for k, amount in v.items():
        if not isinstance(k, str):
            raise ValueError(f"resource names must be strings, got {k!r}")
        if k in ("CPU", "GPU", "memory"):
            raise ValueError(f"use num_cpus/num_gpus/memory instead of resources={{{k!r}: ...}}")
        _non_negative_number(f"resources[{k!r}]")(amount)
    return v


def _gpus(n: float) -> float:
    if n > 1 and n != int(n):
        raise ValueError(f"num_gpus above 1 must be a whole number (GPUs are not split across "
                         f"devices), got {n!r}")
    return n


def _name(v: Any) -> Any:
    if v is not None and not isinstance(v, str):
        raise ValueError(f"name must be a string, got {v!r}")
    return v


def _timeout(v: Any) -> Any:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
        raise ValueError(f"timeout_s must be a number of seconds > 0 (or None), got {v!r}")
    return v


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


def _retry_exceptions(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if (isinstance(v, (list, tuple)) and v
            and all(isinstance(c, type) and issubclass(c, BaseException) for c in v)):
        return list(v)
    raise ValueError(f"retry_exceptions must be True, False or a list of exception classes, "
                     f"got {v!r}")


def retry_filter(v: Any) -> bytes:
    """The wire form of a retry_exceptions list (b"": True or False): the classes pickled,
    for the worker to check a raised exception against (the head never unpickles)."""
    if not isinstance(v, list):
        return b""
    import cloudpickle

    try:
        return cloudpickle.dumps(tuple(v), protocol=5)
    except Exception as exc:
        raise ValueError(f"retry_exceptions: the exception classes could not be pickled: "
                         f"{exc}") from None


def _bool(name: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError(f"{name} must be True or False, got {v!r}")
        return v

    return check


#: option -> (default, validator, one-line meaning)
TASK_OPTIONS: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "num_cpus": (1, _non_negative_number("num_cpus"), "CPUs the task holds while it runs"),
    "num_gpus": (0, _non_negative_number("num_gpus"), "GPUs the task holds while it runs"),
    "memory": (0, _non_negative_number("memory"), "bytes of the node's memory the task reserves"),
    "resources": (None, _resources, "custom resources the task holds, e.g. {'highmem': 1}"),
    "num_returns": (1, _int_at_least("num_returns", 0, MAX_RETURNS),
                    "how many ObjectRefs .remote() returns"),
    "max_retries": (3, _int_at_least("max_retries", -1),
                    "re-runs after a worker or node dies (-1: forever)"),
    "retry_exceptions": (False, _retry_exceptions,
                         "also retry when the task raises (True, or a list of exception classes)"),
    "name": (None, _name, "task name shown in errors and status"),
    "timeout_s": (None, _timeout, "stop the task once it ran this many seconds (TaskTimeoutError)"),
    "scheduling_strategy": (None, lambda v: (strategy_code(v), v)[1],
                            "'DEFAULT', 'SPREAD' or NodeAffinitySchedulingStrategy(node_id, soft)"),
}


def validate(options: dict[str, Any]) -> dict[str, Any]:
    """Check task option names and values; raise ValueError naming the problem."""
    return check_options(options, TASK_OPTIONS, "task")


#: options that belong to actors, not to remote functions (a clearer error than "unknown")
ACTOR_ONLY = ("max_restarts", "max_task_retries", "max_concurrency", "lifetime", "namespace",
              "get_if_exists")


def check_options(options: dict[str, Any], table: dict[str, tuple], what: str) -> dict[str, Any]:
    """Check ``options`` against an option ``table`` (tasks', actors' or actor methods')."""
    out = {}
    for key, value in options.items():
        spec = table.get(key)
        if spec is None:
            if what == "task" and key in ACTOR_ONLY:
                hint = " (a task's is max_retries)" if key == "max_task_retries" else ""
                raise ValueError(f"{key} is an actor option; remote functions do not take it{hint}")
            known = ", ".join(sorted(table))
            raise ValueError(f"unknown {what} option {key!r}; valid options are: {known}")
        out[key] = spec[1](value)
    return out


def resource_units(merged: dict[str, Any]) -> dict[str, int]:
    """The resource demand on the wire (1/10000 units, zeros left out) from merged options
    (``num_cpus``, ``num_gpus``, ``memory``, ``resources``)."""
    resources = {CPU: to_units(merged["num_cpus"])}
    if merged["num_gpus"]:
        resources["GPU"] = to_units(_gpus(merged["num_gpus"]))
    if merged["memory"]:
        resources["memory"] = to_units(merged["memory"])
    for k, v in (merged["resources"] or {}).items():
        resources[k] = to_units(v)
    return {k: v for k, v in resources.items() if v}


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


def compile_options(options: dict[str, Any]) -> TaskOptions:
    merged = {k: spec[0] for k, spec in TASK_OPTIONS.items()}
    merged.update(options)
    retry = merged["retry_exceptions"]
    return TaskOptions(resource_units(merged), merged["num_returns"], merged["max_retries"],
                       bool(retry), merged["name"], float(merged["timeout_s"] or 0.0),
                       strategy_code(merged["scheduling_strategy"]), retry_filter(retry))
