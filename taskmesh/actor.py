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
from ._context import CTX, current_core
from ._protocol import actor_handle_id, return_ids
from ._refs import ObjectRef, is_ref, rebuild_ref
from ._signature import checker, describe, method_signature, no_check
from ._checks import (boolean, check_options, int_at_least, name_or_none, non_negative_number,
                      resource_units, resources_dict, retry_exceptions, retry_filter,
                      runtime_env)

#: the attribute ``@taskmesh.method(...)`` sets on a method: its options
_ATTR_METHOD_OPTIONS = "__taskmesh_method_options__"


def _lifetime(v: Any) -> Any:
    if v not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be None, 'detached' or 'non_detached', got {v!r}")
    return v


#: option -> (default, validator, one-line meaning)
ACTOR_OPTIONS: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "num_cpus": (0, non_negative_number("num_cpus"), "CPUs the actor holds while it lives"),
    "num_gpus": (0, non_negative_number("num_gpus"), "GPUs the actor holds while it lives"),
    "memory": (0, non_negative_number("memory"), "bytes of the node's memory it reserves"),
    "resources": (None, resources_dict, "custom resources the actor holds, e.g. {'highmem': 1}"),
    "name": (None, name_or_none, "a name to find the actor by with taskmesh.get_actor()"),
    "namespace": (None, name_or_none, "the namespace of the name"),
    "get_if_exists": (False, boolean("get_if_exists"),
                      "with a name: return the live actor of that name instead of failing"),
    "lifetime": (None, _lifetime, "'detached': the actor outlives the process that made it"),
    "max_restarts": (0, int_at_least("max_restarts", -1),
                     "restarts after its process or node died (-1: forever)"),
    "max_task_retries": (0, int_at_least("max_task_retries", -1),
                         "re-runs of a call lost with the actor's process (-1: forever)"),
    "max_concurrency": (None, int_at_least("max_concurrency", 1),
                        "calls run at once (threads; async actors: coroutines, default 1000)"),
    "runtime_env": (None, runtime_env,
                    "what the actor's process needs: {'working_dir': ..., 'py_modules': [...], "
                    "'env_vars': {...}, 'pip': [...]} (merged over the job's, as Ray merges them)"),
}


#: options of remote functions that actors do not take (Ray raises TypeError for them)
_TASK_ONLY = ("num_returns", "max_retries", "retry_exceptions", "timeout_s")


def _validate(options: dict[str, Any]) -> dict[str, Any]:
    for key in options:
        if key in _TASK_ONLY:
            where = ("set it per method with @taskmesh.method(...) or "
                     "handle.method.options(...)" if key in METHOD_OPTIONS else
                     "it is an option of remote functions")
            raise TypeError(f"{key} is not an actor option: {where}")
    return check_options(options, ACTOR_OPTIONS, "actor")


#: option -> (default, validator, one-line meaning), for ``@taskmesh.method`` and
#: ``handle.method.options()``
METHOD_OPTIONS: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "num_returns": (1, int_at_least("num_returns", 0, P.MAX_RETURNS),
                    "how many ObjectRefs the call returns"),
    "max_task_retries": (None, int_at_least("max_task_retries", -1),
                         "re-runs of the call if the actor's process dies (default: the actor's)"),
    "retry_exceptions": (False, retry_exceptions,
                         "also retry when the method raises (True, or a list of exception "
                         "classes); counted by max_task_retries"),
    "name": (None, name_or_none, "the call's name in errors and status"),
}


def method(**options: Any) -> Callable[[Any], Any]:
    """Options of one actor method, as in Ray: ``@taskmesh.method(num_returns=2)``,
    ``max_task_retries``, ``retry_exceptions``. ``handle.method.options(...)`` overrides them
    for one call."""
    if not options or "name" in options:
        raise TypeError("use @taskmesh.method(num_returns=..., max_task_retries=..., "
                        "retry_exceptions=...) with at least one of these options")
    checked = check_options(options, METHOD_OPTIONS, "actor method")

    def mark(fn: Any) -> Any:
        target = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
        setattr(target, _ATTR_METHOD_OPTIONS, checked)
        return fn

    return mark


def _method_wire(options: dict[str, Any]) -> dict[str, Any]:
    """A method's options as they travel in handles (through the head: plain data only)."""
    out: dict[str, Any] = {}
    if options.get("num_returns", 1) != 1:
        out["num_returns"] = options["num_returns"]
    if options.get("max_task_retries") is not None:
        out["max_task_retries"] = options["max_task_retries"]
    retry = options.get("retry_exceptions")
    if retry:
        out["retry_exceptions"] = True
        if isinstance(retry, list):
            out["retry_filter"] = retry_filter(retry)
    return out


def _methods(cls: type) -> tuple[dict[str, dict], bool]:
    """Public methods (name -> their options and signature) and whether any is ``async def``."""
    out: dict[str, dict] = {}
    is_async = False
    for name, fn in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") or isinstance(inspect.getattr_static(cls, name), type):
            continue
        raw = getattr(fn, "__func__", fn)
        info = _method_wire(getattr(raw, _ATTR_METHOD_OPTIONS, {}))
        sig = method_signature(cls, name)
        if sig is not None:
            info["sig"] = sig
        out[name] = info
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            is_async = True
    return out, is_async


class ActorClass:
    """A class decorated with ``@taskmesh.remote``: ``Cls.remote(*args)`` starts an actor.

    Everything else reads through to the class, as in Ray: inside the actor's methods (where
    the class's name now means this wrapper) ``Cls.CONSTANT``, ``Cls.some_classmethod()``,
    static methods, inherited attributes and ``isinstance(self, Cls)`` keep working.
    """

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = _validate(options)
        self._qualname = f"{cls.__module__ or '__main__'}.{cls.__qualname__}"
        self._methods, self._is_async = _methods(cls)
        self._blob: bytes | None = None
        self._fid = b""
        self._check: Any = None  # the constructor's argument check, made on first use

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self._qualname} cannot be instantiated directly; use "
                        f"{self._cls.__name__}.remote(...) to start an actor")

    def __getattr__(self, name: str) -> Any:
        # only called for names the wrapper lacks; never for its own fields, which exist
        # unless the object is half built (while unpickling): then there is nothing to forward
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        cls = self.__dict__.get("_cls")
        if cls is None:
            raise AttributeError(name)
        if inspect.isfunction(inspect.getattr_static(cls, name, None)):
            # a plain method: run it on an actor. (Not forwarded on purpose: cloudpickle
            # would then ship the class's methods by reference to the module's copy of the
            # class instead of with the class itself.)
            raise AttributeError(f"{name} is a method of actor class {cls.__qualname__}: call "
                                 f"it on an actor, handle.{name}.remote(...)")
        try:
            return getattr(cls, name)
        except AttributeError:
            raise AttributeError(f"actor class {cls.__qualname__} has no attribute {name!r}") from None

    def __instancecheck__(self, instance: Any) -> bool:
        return self.__subclasscheck__(type(instance))

    def __subclasscheck__(self, subclass: type) -> bool:
        # by name too: a class shipped by value to a worker is a copy of the one in its module
        cls = self._cls
        return issubclass(subclass, cls) or any(
            c.__qualname__ == cls.__qualname__ and c.__module__ == cls.__module__
            for c in getattr(subclass, "__mro__", ()))

    def __reduce__(self) -> Any:
        # the class and its options travel, not the caches of this process
        return (ActorClass, (self._cls, self._options))

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        """Start an actor; return its handle at once (calls wait for the constructor)."""
        return self._create(args, kwargs, self._options)

    def options(self, **options: Any) -> "_BoundActorClass":
        """A copy with some options changed, e.g. ``Cls.options(name="db", lifetime="detached")``."""
        return _BoundActorClass(self, {**self._options, **_validate(options)})

    def _create(self, args: tuple, kwargs: dict, options: dict[str, Any]) -> "ActorHandle":
        check = self._check
        if check is None:
            check = self._check = checker(describe(self._cls),
                                          f"{self._cls.__name__}.remote()") or no_check
        check(args, kwargs)
        core = current_core()
        if self._blob is None:
            self._blob = S.dump_function(self._cls, self._qualname)
            self._fid = function_id_for(self._blob)
        core.register_function(self._fid, self._qualname, self._blob)
        o = {k: spec[0] for k, spec in ACTOR_OPTIONS.items()}
        o.update(options)
        resources = resource_units(o)
        name = f"{self._qualname}.__init__"
        args_obj, deps = S.pack_args(args, kwargs, is_ref, name)
        if args_obj is not None and args_obj.nbytes > core.config.store_threshold_bytes:
            args_obj = core.store_args(args_obj)
        actor_id = core.next_task_id()
        env = (core.env_id_for(o["runtime_env"])
               if o["runtime_env"] is not None or core.runtime_env else "")
        spec = P.TaskSpec(actor_id, name, self._fid, args_obj, [d._id for d in deps], 1,
                          resources, 0, False, actor_id, "__init__", 0.0, "",
                          CTX.current_task_id or b"", b"", env)
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
        if info["actor_id"] != actor_id:  # get_if_exists found another: we borrow its handle
            return ActorHandle(info, rebuild_ref(actor_handle_id(info["actor_id"])))
        # this process owns the handle object: the actor lives while it or a copy is held
        hid = actor_handle_id(actor_id)
        core.new_ref_ids((hid,))
        return ActorHandle(info, ObjectRef(hid, core))


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

    Handles can be passed to tasks and other actors, and kept in data structures. An actor
    that is neither detached nor named ends once no handle to it is left anywhere (after the
    calls already made), as in Ray; every handle holds a ref to the actor's handle object,
    which the head counts like any object.
    """

    __slots__ = ("_info", "_actor_id", "_fid", "_class_name", "_methods", "_retries", "_ref",
                 "_checks")

    def __init__(self, info: dict, ref: ObjectRef | None = None) -> None:
        self._info = info
        self._actor_id: bytes = info["actor_id"]
        self._fid: bytes = info["function_id"]
        self._class_name: str = info.get("class_name", "actor")
        self._methods: dict = info.get("methods", {})
        self._retries: int = int(info.get("max_task_retries", 0))
        self._ref = ref  # keeps the actor alive (see the class docstring)
        self._checks: dict[str, Any] = {}  # method -> its argument check

    def __getattr__(self, name: str) -> "ActorMethod":
        methods = object.__getattribute__(self, "_methods")
        if name in methods:
            return ActorMethod(self, name, methods[name])
        raise AttributeError(f"actor {self._class_name} has no method {name!r}")

    def __reduce__(self) -> Any:
        return (ActorHandle, (self._info, self._ref))

    def __copy__(self) -> "ActorHandle":
        return self  # immutable

    def __deepcopy__(self, memo: dict) -> "ActorHandle":
        return self

    def __eq__(self, other: object) -> bool:
        return type(other) is ActorHandle and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, {self._actor_id.hex()})"

    def _check(self, method_name: str, args: tuple, kwargs: dict) -> None:
        check = self._checks.get(method_name)
        if check is None:
            sig = self._methods[method_name].get("sig")
            check = self._checks[method_name] = checker(
                sig, f"{method_name}.remote()") or no_check
        check(args, kwargs)

    def _call(self, method_name: str, args: tuple, kwargs: dict, opts: dict) -> Any:
        self._check(method_name, args, kwargs)
        core = current_core()
        call = opts.get("name") or f"{self._class_name}.{method_name}"
        args_obj, deps = S.pack_args(args, kwargs, is_ref, call)
        if args_obj is not None and args_obj.nbytes > core.config.store_threshold_bytes:
            args_obj = core.store_args(args_obj)
        task_id = core.next_task_id()
        num_returns = opts.get("num_returns", 1)
        oids = return_ids(task_id, num_returns)
        core.new_ref_ids(oids)
        refs = [ObjectRef(oid, core) for oid in oids]
        retries = opts.get("max_task_retries")
        core.submit(P.TaskSpec(
            task_id, call, self._fid, args_obj, [d._id for d in deps], num_returns, {},
            self._retries if retries is None else retries, bool(opts.get("retry_exceptions")),
            self._actor_id, method_name, 0.0, "", CTX.current_task_id or b"",
            opts.get("retry_filter", b"")), oids)
        if num_returns == 1:
            return refs[0]
        return None if num_returns == 0 else refs


class ActorMethod:
    """``handle.method``: call it with ``.remote(*args)``; ``.options(num_returns=...,
    max_task_retries=..., retry_exceptions=..., name=...)`` changes them for one call."""

    __slots__ = ("_handle", "name_or_none", "_opts")

    def __init__(self, handle: ActorHandle, name: str, opts: dict) -> None:
        self._handle = handle
        self.name_or_none = name
        self._opts = opts  # the method's options in wire form (see _method_wire)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._call(self.name_or_none, args, kwargs, self._opts)

    def options(self, **options: Any) -> "ActorMethod":
        checked = check_options(options, METHOD_OPTIONS, "actor method")
        merged = dict(self._opts)
        for key, value in checked.items():
            if key == "retry_exceptions":
                merged.pop("retry_exceptions", None)
                merged.pop("retry_filter", None)
                merged.update(_method_wire({key: value}))
            else:
                merged[key] = value
        return ActorMethod(self._handle, self.name_or_none, merged)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor method {self.name_or_none} cannot be called directly; use "
                        f".{self.name_or_none}.remote(...)")


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor named ``name``; ValueError if there is none."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() needs the actor's name, a non-empty string; got {name!r}")
    if namespace is not None and not isinstance(namespace, str):
        raise ValueError(f"get_actor(): namespace must be a string or None, got {namespace!r}")
    info = current_core().request(lambda rid: P.GetActor(rid, name, namespace or ""))
    if "error" in info:
        raise ValueError(info["error"])
    return ActorHandle(info, rebuild_ref(actor_handle_id(info["actor_id"])))


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor at once: its pending and running calls fail with ActorDiedError.
    With ``no_restart=False`` it starts again if it has restarts left (``max_restarts``)."""
    if type(actor) is not ActorHandle:
        raise ValueError(f"kill() only takes an actor handle, got {type(actor).__name__}")
    if not isinstance(no_restart, bool):
        raise TypeError(f"kill(): no_restart must be True or False, got {no_restart!r}")
    current_core().send(P.KillActor(actor._actor_id, no_restart))
