"""Actors: ``@taskmesh.remote`` on a class. ``Cls.remote(...)`` starts an instance in a worker
process of its own and returns an :class:`ActorHandle` at once; ``handle.method.remote(...)``
returns ObjectRefs. Calls from one caller run in the order they were made.

The head does the bookkeeping (placement, call queues, restarts: ``_head/actors.py``); this
module only builds the messages. Handles pickle, so they can be passed to tasks and actors.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from . import _protocol as P
from . import _serialize as S
from ._client.core import function_id_for
from ._context import current_core
from ._protocol import return_ids
from .handles import ObjectRef, _is_ref
from .options import (
    _bool,
    _int_at_least,
    _name,
    _non_negative_number,
    _resources,
    check_options,
    resource_units,
)

_ATTR_NUM_RETURNS = "__taskmesh_num_returns__"


def _lifetime(v: Any) -> Any:
    if v not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be None, 'detached' or 'non_detached', got {v!r}")
    return v


#: option -> (default, validator, one-line meaning)
ACTOR_OPTIONS: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "num_cpus": (0, _non_negative_number("num_cpus"), "CPUs the actor holds while it lives"),
    "num_gpus": (0, _non_negative_number("num_gpus"), "GPUs the actor holds while it lives"),
    "memory": (0, _non_negative_number("memory"), "bytes of the node's memory it reserves"),
    "resources": (None, _resources, "custom resources the actor holds, e.g. {'highmem': 1}"),
    "name": (None, _name, "a name to find the actor by with taskmesh.get_actor()"),
    "namespace": (None, _name, "the namespace of the name"),
    "get_if_exists": (False, _bool("get_if_exists"),
                      "with a name: return the live actor of that name instead of failing"),
    "lifetime": (None, _lifetime, "'detached': the actor outlives the process that made it"),
    "max_restarts": (0, _int_at_least("max_restarts", -1),
                     "restarts after its process or node died (-1: forever)"),
    "max_task_retries": (0, _int_at_least("max_task_retries", -1),
                         "re-runs of a call lost with the actor's process (-1: forever)"),
    "max_concurrency": (None, _int_at_least("max_concurrency", 1),
                        "calls run at once (threads; async actors: coroutines, default 1000)"),
}


def _validate(options: dict[str, Any]) -> dict[str, Any]:
    return check_options(options, ACTOR_OPTIONS, "actor")


def method(*, num_returns: int) -> Callable[[Any], Any]:
    """Declare how many ObjectRefs a method's ``.remote()`` returns: ``@taskmesh.method(num_returns=2)``."""
    _int_at_least("num_returns", 0)(num_returns)

    def mark(fn: Any) -> Any:
        setattr(fn, _ATTR_NUM_RETURNS, num_returns)
        return fn

    return mark


def _methods(cls: type) -> tuple[dict[str, dict], bool]:
    """Public methods (name -> {"num_returns": n}) and whether any is ``async def``."""
    out: dict[str, dict] = {}
    is_async = False
    for name, fn in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") or isinstance(inspect.getattr_static(cls, name), type):
            continue
        out[name] = {"num_returns": getattr(fn, _ATTR_NUM_RETURNS, 1)}
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            is_async = True
    return out, is_async


class ActorClass:
    """A class decorated with ``@taskmesh.remote``: ``Cls.remote(*args)`` starts an actor."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = _validate(options)
        self._qualname = f"{cls.__module__ or '__main__'}.{cls.__qualname__}"
        self._methods, self._is_async = _methods(cls)
        self._blob: bytes | None = None
        self._fid = b""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self._qualname} cannot be instantiated directly; use "
                        f"{self._cls.__name__}.remote(...) to start an actor")

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        """Start an actor; return its handle at once (calls wait for the constructor)."""
        return self._create(args, kwargs, self._options)

    def options(self, **options: Any) -> "_BoundActorClass":
        """A copy with some options changed, e.g. ``Cls.options(name="db", lifetime="detached")``."""
        return _BoundActorClass(self, {**self._options, **_validate(options)})

    def _create(self, args: tuple, kwargs: dict, options: dict[str, Any]) -> "ActorHandle":
        core = current_core()
        if self._blob is None:
            self._blob = S.dump_function(self._cls, self._qualname)
            self._fid = function_id_for(self._blob)
        core.register_function(self._fid, self._qualname, self._blob)
        o = {k: spec[0] for k, spec in ACTOR_OPTIONS.items()}
        o.update(options)
        resources = resource_units(o)
        name = f"{self._qualname}.__init__"
        args_obj, deps = S.pack_args(args, kwargs, _is_ref, name)
        if args_obj is not None and args_obj.nbytes > core.config.store_threshold_bytes:
            args_obj = core.store_args(args_obj)
        actor_id = core.next_task_id()
        spec = P.TaskSpec(actor_id, name, self._fid, args_obj, [d._id for d in deps], 1,
                          resources, 0, False, actor_id, "__init__")
        concurrency = o["max_concurrency"] or (1000 if self._is_async else 1)
        wire = {"class_name": self._qualname, "methods": self._methods, "is_async": self._is_async,
                "name": o["name"] or "", "namespace": o["namespace"] or "",
                "get_if_exists": o["get_if_exists"], "detached": o["lifetime"] == "detached",
                "max_restarts": o["max_restarts"], "max_task_retries": o["max_task_retries"],
                "max_concurrency": concurrency}
        info = core.create_actor(spec, wire, wait=bool(o["name"]))
        if info is None:
            info = {"actor_id": actor_id, "function_id": self._fid, **{
                k: wire[k] for k in ("class_name", "methods", "is_async", "max_task_retries")}}
        elif "error" in info:
            raise ValueError(info["error"])
        return ActorHandle(info)


class _BoundActorClass:
    __slots__ = ("_ac", "_options")

    def __init__(self, ac: ActorClass, options: dict[str, Any]) -> None:
        self._ac = ac
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        return self._ac._create(args, kwargs, self._options)

    def options(self, **options: Any) -> "_BoundActorClass":
        return _BoundActorClass(self._ac, {**self._options, **_validate(options)})


class ActorHandle:
    """A running actor: ``handle.method.remote(*args)`` calls a method and returns ObjectRef(s).

    Handles can be passed to tasks and other actors, and kept in data structures.
    """

    __slots__ = ("_info", "_actor_id", "_fid", "_class_name", "_methods", "_retries")

    def __init__(self, info: dict) -> None:
        self._info = info
        self._actor_id: bytes = info["actor_id"]
        self._fid: bytes = info["function_id"]
        self._class_name: str = info.get("class_name", "actor")
        self._methods: dict = info.get("methods", {})
        self._retries: int = int(info.get("max_task_retries", 0))

    def __getattr__(self, name: str) -> "ActorMethod":
        methods = object.__getattribute__(self, "_methods")
        if name in methods:
            return ActorMethod(self, name, methods[name].get("num_returns", 1))
        raise AttributeError(f"actor {self._class_name} has no method {name!r}")

    def __reduce__(self) -> Any:
        return (ActorHandle, (self._info,))

    def __eq__(self, other: object) -> bool:
        return type(other) is ActorHandle and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, {self._actor_id.hex()})"

    def _call(self, method_name: str, args: tuple, kwargs: dict, num_returns: int,
              name: str | None) -> Any:
        core = current_core()
        call = name or f"{self._class_name}.{method_name}"
        args_obj, deps = S.pack_args(args, kwargs, _is_ref, call)
        if args_obj is not None and args_obj.nbytes > core.config.store_threshold_bytes:
            args_obj = core.store_args(args_obj)
        task_id = core.next_task_id()
        oids = return_ids(task_id, num_returns)
        core.new_ref_ids(oids)
        refs = [ObjectRef(oid, core) for oid in oids]
        core.submit(P.TaskSpec(task_id, call, self._fid, args_obj, [d._id for d in deps],
                               num_returns, {}, self._retries, False, self._actor_id,
                               method_name), oids)
        if num_returns == 1:
            return refs[0]
        return None if num_returns == 0 else refs


class ActorMethod:
    """``handle.method``: call it with ``.remote(*args)``; ``.options(num_returns=...)``."""

    __slots__ = ("_handle", "_name", "_num_returns", "_task_name")

    def __init__(self, handle: ActorHandle, name: str, num_returns: int,
                 task_name: str | None = None) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._task_name = task_name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._call(self._name, args, kwargs, self._num_returns, self._task_name)

    def options(self, *, num_returns: int | None = None, name: str | None = None) -> "ActorMethod":
        n = self._num_returns if num_returns is None else _int_at_least("num_returns", 0)(num_returns)
        return ActorMethod(self._handle, self._name, n, _name(name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor method {self._name} cannot be called directly; use "
                        f".{self._name}.remote(...)")


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor named ``name``; ValueError if there is none."""
    _name(name)
    info = current_core().request(lambda rid: P.GetActor(rid, name, namespace or ""))
    if "error" in info:
        raise ValueError(info["error"])
    return ActorHandle(info)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor at once: its pending and running calls fail with ActorDiedError.
    With ``no_restart=False`` it starts again if it has restarts left (``max_restarts``)."""
    if type(actor) is not ActorHandle:
        raise TypeError(f"kill() takes an ActorHandle, got {type(actor).__name__}")
    current_core().send(P.KillActor(actor._actor_id, bool(no_restart)))
