"""Checks of option values, shared by the task, actor and actor-method option tables.

Each validator returns the value (perhaps normalized) or raises ValueError naming the option;
``check_options`` runs a table of them over what a user passed. ``resource_units`` and
``retry_filter`` turn checked values into their wire form.
"""

from __future__ import annotations

from typing import Any, Callable

from ._resources import CPU, to_units
from ._runtime_env.spec import validate as validate_runtime_env


def non_negative_number(name: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        return v

    return check


def int_at_least(name: str, low: int, high: int | None = None) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        if high is not None and v > high:
            raise ValueError(f"{name} must be at most {high:,}, got {v!r}")
        return v

    return check


def resources_dict(v: Any) -> Any:
    if not isinstance(v, dict):
        raise ValueError(f"resources must be a dict of name -> amount, got {v!r}")
    for k, amount in v.items():
        if not isinstance(k, str):
            raise ValueError(f"resource names must be strings, got {k!r}")
        if k in ("CPU", "GPU", "memory"):
            raise ValueError(f"use num_cpus/num_gpus/memory instead of resources={{{k!r}: ...}}")
        non_negative_number(f"resources[{k!r}]")(amount)
    return v


def gpus(n: float) -> float:
    if n > 1 and n != int(n):
        raise ValueError(f"num_gpus above 1 must be a whole number (GPUs are not split across "
                         f"devices), got {n!r}")
    return n


def name_or_none(v: Any) -> Any:
    if v is not None and not isinstance(v, str):
        raise ValueError(f"name must be a string, got {v!r}")
    return v


def timeout(v: Any) -> Any:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
        raise ValueError(f"timeout_s must be a number of seconds > 0 (or None), got {v!r}")
    return v


def retry_exceptions(v: Any) -> Any:
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


def boolean(name: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError(f"{name} must be True or False, got {v!r}")
        return v

    return check


def runtime_env(v: Any) -> dict | None:
    """Ray's ``runtime_env`` option, checked (``_runtime_env.spec``): None for none."""
    return validate_runtime_env(v) or None


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
        resources["GPU"] = to_units(gpus(merged["num_gpus"]))
    if merged["memory"]:
        resources["memory"] = to_units(merged["memory"])
    for k, v in (merged["resources"] or {}).items():
        resources[k] = to_units(v)
    return {k: v for k, v in resources.items() if v}
