"""User-facing handles: RemoteFunction (``@remote`` functions), and ObjectRef (a future value,
defined in ``_refs.py``)."""

from __future__ import annotations

import functools
from typing import Any, Callable

from . import _protocol as P
from . import _serialize as S
from ._client.core import function_id_for
from ._protocol import return_ids
from ._context import CTX, current_core
from ._refs import ObjectRef, is_ref
from ._signature import checker, describe, no_check
from .options import TaskOptions, compile_options, validate

__all__ = ["ObjectRef", "RemoteFunction"]


class RemoteFunction:
    """A function that runs as a task: call ``f.remote(*args)`` to get ObjectRef(s)."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        if not callable(fn):
            raise TypeError(f"@taskmesh.remote needs a function, got {fn!r}")
        self._fn = fn
        self._options = validate(options)
        self._compiled = compile_options(self._options)
        self._qualname = f"{getattr(fn, '__module__', None) or '__main__'}.{getattr(fn, '__qualname__', repr(fn))}"
        self._blob: bytes | None = None
        self._fid: bytes = b""
        #: checks .remote()'s arguments against fn's signature (made on the first call)
        self._check: Any = None
        functools.update_wrapper(self, fn, updated=())

    def __reduce__(self) -> Any:
        # a task that uses this remote function gets the function and its options, not the
        # caches of this process
        return (RemoteFunction, (self._fn, self._options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = getattr(self._fn, "__name__", "f")
        raise TypeError(
            f"remote function {self._qualname} cannot be called directly; "
            f"use {name}.remote(...) to run it as a task (and taskmesh.get() for its result)")

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a task; return an ObjectRef (a list of them if num_returns > 1)."""
        return self._submit(args, kwargs, self._compiled)

    def options(self, **options: Any) -> "_BoundOptions":
        """A copy of this function with some options changed, e.g. ``f.options(num_cpus=2)``."""
        merged = {**self._options, **validate(options)}
        return _BoundOptions(self, compile_options(merged))

    def _submit(self, args: tuple, kwargs: dict, opts: TaskOptions) -> Any:
        check = self._check
        if check is None:
            short = getattr(self._fn, "__name__", "f")
            check = self._check = checker(describe(self._fn), f"{short}.remote()") or no_check
        check(args, kwargs)  # a TypeError here, as calling fn would raise, before any work
        core = current_core()
        if self._blob is None:
            self._blob = S.dump_function(self._fn, self._qualname)
            self._fid = function_id_for(self._blob)
        core.register_function(self._fid, self._qualname, self._blob)
        name = opts.name or self._qualname
        args_obj, deps = S.pack_args(args, kwargs, is_ref, name)
        if args_obj is not None and args_obj.nbytes > core.config.store_threshold_bytes:
            args_obj = core.store_args(args_obj)
        task_id = core.next_task_id()
        n = opts.num_returns
        oids = return_ids(task_id, n)
        core.new_ref_ids(oids)  # before sending: the result may come back at once
        refs = [ObjectRef(oid, core) for oid in oids]
        env = (core.env_id_for(opts.runtime_env)
               if opts.runtime_env is not None or core.runtime_env else "")
        spec = P.TaskSpec(task_id, name, self._fid, args_obj, [d._id for d in deps], n,
                          opts.resources, opts.max_retries, opts.retry_exceptions, b"", "",
                          opts.timeout_s, opts.strategy, CTX.current_task_id or b"",
                          opts.retry_filter, env)
        core.submit(spec, oids)
        if n == 1:
            return refs[0]
        if n == 0:
            return None
        return refs


class _BoundOptions:
    __slots__ = ("_rf", "_compiled")

    def __init__(self, rf: RemoteFunction, compiled: TaskOptions) -> None:
        self._rf = rf
        self._compiled = compiled

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._rf._submit(args, kwargs, self._compiled)

    def options(self, **options: Any) -> "_BoundOptions":
        raise TypeError("call .options() once with all options")
