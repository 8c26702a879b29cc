"""Framework adapters: one tiny common API over taskmesh, Ray and Dask distributed.

Workloads in :mod:`benchmarks.workloads` are written once against :class:`Api`
(``remote``/``get``/``put``/``wait``) so that every framework executes exactly
the same work.  taskmesh copies Ray's public API, so a single
:class:`RayLikeApi` serves both; :class:`DaskApi` maps the same calls onto
``distributed.Client``.

Framework modules are imported lazily (inside methods), never at import time of
this module: worker processes import this module to run nested workloads, and
the side-by-side runner must be able to import it even when a framework is not
installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

#: Number of worker processes every framework gets (the spec: two).
DEFAULT_NUM_WORKERS = 2

#: A submit function: call it with the task's arguments, get back a reference
#: (or a list of references when ``num_returns > 1``).
Submit = Callable[..., Any]


class Api(Protocol):
    """The subset of Ray core's API the workloads use, framework-neutral."""

    #: Framework name ("taskmesh", "ray", "dask"); tasks that submit tasks
    #: receive it as an argument and call :func:`in_task` with it.
    name: str
    #: Worker processes the framework was started with (0 if unknown, e.g. inside a task).
    num_workers: int

    def remote(self, fn: Callable[..., Any], *, num_returns: int = 1) -> Submit:
        """Return a function that submits ``fn(*args)`` as a task and returns its ref(s)."""
        ...

    def get(self, refs: Any, *, timeout: float | None = None) -> Any:
        """Block until a ref (or each ref of a list) is ready and return the value(s)."""
        ...

    def put(self, obj: Any) -> Any:
        """Store ``obj`` in the framework's object store and return a ref to it."""
        ...

    def wait(
        self, refs: Sequence[Any], *, num_returns: int = 1, timeout: float | None = None
    ) -> tuple[list[Any], list[Any]]:
        """Return ``(ready, not_ready)`` once ``num_returns`` refs are ready or ``timeout`` passes."""
        ...

    def actor(self, cls: type, *args: Any) -> Any:
        """Start an actor of ``cls``; return its handle once it can take calls."""
        ...

    def method(self, handle: Any, name: str) -> Submit:
        """A function that calls ``handle.name(*args)`` and returns a ref to the result."""
        ...

    def get_calls(self, refs: list) -> list:
        """The results of actor calls (a framework may have special futures for them)."""
        ...

    def kill(self, handle: Any) -> None:
        """Stop an actor."""
        ...


# --------------------------------------------------------------------------- Ray-like


class RayLikeApi:
    """:class:`Api` for Ray and for taskmesh (which copies Ray's names and semantics)."""

    def __init__(self, module: Any, name: str, num_workers: int = 0) -> None:
        self._mod = module
        self.name = name
        self.num_workers = num_workers
        # One remote-function object per (function, num_returns): creating it
        # again for every call would re-export the function each time.
        self._remote_fns: dict[tuple[Callable[..., Any], int], Any] = {}

    def remote(self, fn: Callable[..., Any], *, num_returns: int = 1) -> Submit:
        key = (fn, num_returns)
        rf = self._remote_fns.get(key)
        if rf is None:
            rf = self._mod.remote(fn)
            if num_returns != 1:
                rf = rf.options(num_returns=num_returns)
            self._remote_fns[key] = rf
        return rf.remote

    def get(self, refs: Any, *, timeout: float | None = None) -> Any:
        return self._mod.get(refs, timeout=timeout)

    def put(self, obj: Any) -> Any:
        return self._mod.put(obj)

    def wait(
        self, refs: Sequence[Any], *, num_returns: int = 1, timeout: float | None = None
    ) -> tuple[list[Any], list[Any]]:
        ready, not_ready = self._mod.wait(
            list(refs), num_returns=num_returns, timeout=timeout
        )
        return list(ready), list(not_ready)

    def actor(self, cls: type, *args: Any) -> Any:
        return self._mod.remote(cls).remote(*args)

    def method(self, handle: Any, name: str) -> Submit:
        return getattr(handle, name).remote

    def get_calls(self, refs: list) -> list:
        return self._mod.get(refs)

    def kill(self, handle: Any) -> None:
        self._mod.kill(handle)


# --------------------------------------------------------------------------- Dask


class DaskApi:
    """:class:`Api` on top of a ``distributed.Client`` (futures play the role of refs)."""

    name = "dask"

    def __init__(self, client: Any, num_workers: int = 0) -> None:
        self._client = client
        self.num_workers = num_workers

    def remote(self, fn: Callable[..., Any], *, num_returns: int = 1) -> Submit:
        client = self._client
        # pure=False: every call is a distinct task, as in Ray (no key dedup).
        if num_returns == 1:
            return functools.partial(client.submit, fn, pure=False)

        def submit(*args: Any) -> list[Any]:
            whole = client.submit(fn, *args, pure=False)
            return [
                client.submit(operator.getitem, whole, k, pure=False)
                for k in range(num_returns)
            ]

        return submit

    def get(self, refs: Any, *, timeout: float | None = None) -> Any:
        if isinstance(refs, (list, tuple)):
            if timeout is not None:
                import distributed

                distributed.wait(list(refs), timeout=timeout)
            return list(self._client.gather(list(refs)))
        return refs.result(timeout=timeout)

    def put(self, obj: Any) -> Any:
        # Scatter a one-element list so that list objects stay one object;
        # hash=False: Ray's put does not hash the data either.
        return self._client.scatter([obj], hash=False)[0]

    def wait(
        self, refs: Sequence[Any], *, num_returns: int = 1, timeout: float | None = None
    ) -> tuple[list[Any], list[Any]]:
        import distributed

        refs = list(refs)
        done_keys: set[Any] = set()
        try:
            for fut in distributed.as_completed(refs, timeout=timeout):
                done_keys.add(fut.key)
                if len(done_keys) >= num_returns:
                    break
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before 3.11
            pass
        ready = [f for f in refs if f.key in done_keys][:num_returns]
        ready_keys = {f.key for f in ready}
        return ready, [f for f in refs if f.key not in ready_keys]

    def actor(self, cls: type, *args: Any) -> Any:
        return self._client.submit(cls, *args, actor=True, pure=False).result()

    def method(self, handle: Any, name: str) -> Submit:
        return getattr(handle, name)  # returns an ActorFuture

    def get_calls(self, refs: list) -> list:
        return [f.result() for f in refs]

    def kill(self, handle: Any) -> None:
        pass  # a Dask actor goes when its last proxy does


# --------------------------------------------------------------------------- lifecycle


class Framework:
    """Driver-side lifecycle of one framework: import, init, shutdown, versions."""

    #: Name used on the command line and in results.
    name: str = ""
    #: Modules that must be importable; imported (and timed) by the child.
    modules: tuple[str, ...] = ()
    #: Distributions whose versions are reported.
    distributions: tuple[str, ...] = ()
    #: Extra environment variables for the child process (set per instance).
    env: dict[str, str]

    def __init__(self) -> None:
        self.env = {}

    def is_installed(self) -> bool:
        """True if every required module can be found (without importing it)."""
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def import_modules(self) -> None:
        """Import the framework's modules (the child times this)."""
        for m in self.modules:
            importlib.import_module(m)

    def versions(self, *, imported: bool = False) -> dict[str, str]:
        """Installed versions of :attr:`distributions` (``"?"`` if unknown).

        With ``imported=True`` (only in the child, after the import) a
        framework may also ask its module, e.g. for a source-tree checkout.
        """
        out: dict[str, str] = {}
        for dist in self.distributions:
            out[dist] = installed_version(dist)
        return out

    def init(self, num_workers: int) -> Api:
        """Start the framework with ``num_workers`` worker processes; return its :class:`Api`."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Stop everything :meth:`init` started."""
        raise NotImplementedError


class RayLikeFramework(Framework):
    """Ray, or taskmesh: ``mod.init(num_cpus=N, **kwargs)`` / ``mod.shutdown()``."""

    def __init__(
        self,
        name: str,
        module: str,
        init_kwargs: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.module = module
        self.modules = (module,)
        self.distributions = (module,)
        self.init_kwargs = dict(init_kwargs or {})
        self.env = dict(env or {})

    def _mod(self) -> Any:
        return importlib.import_module(self.module)

    def init(self, num_workers: int) -> Api:
        mod = self._mod()
        mod.init(num_cpus=num_workers, **self.init_kwargs)
        return RayLikeApi(mod, self.name, num_workers)

    def shutdown(self) -> None:
        self._mod().shutdown()

    def versions(self, *, imported: bool = False) -> dict[str, str]:
        out = super().versions()
        if imported and out.get(self.module, "?") == "?":
            # Not pip-installed (e.g. taskmesh from the source tree): ask the module.
            out[self.module] = str(getattr(self._mod(), "__version__", "?"))
        return out


class DaskFramework(Framework):
    """Dask distributed: ``LocalCluster`` of single-threaded worker processes + ``Client``."""

    name = "dask"
    modules = ("dask", "distributed")
    distributions = ("dask", "distributed")

    def __init__(self) -> None:
        super().__init__()
        self._cluster: Any = None
        self._client: Any = None

    def init(self, num_workers: int) -> Api:
        import distributed

        self._cluster = distributed.LocalCluster(
            n_workers=num_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self._client = distributed.Client(self._cluster)
        return DaskApi(self._client, num_workers)

    def shutdown(self) -> None:
        try:
            if self._client is not None:
                self._client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()
            self._client = self._cluster = None


def installed_version(dist: str) -> str:
    """Version of an installed distribution, or ``"?"`` (does not import it)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


#: All frameworks the side-by-side runner knows, in default run order.
FRAMEWORKS: dict[str, Framework] = {
    "taskmesh": RayLikeFramework("taskmesh", "taskmesh"),
    "ray": RayLikeFramework(
        "ray",
        "ray",
        init_kwargs={
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
        },
        env={
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DISABLE_IMPORT_WARNING": "1",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        },
    ),
    "dask": DaskFramework(),
}


# --------------------------------------------------------------------------- inside tasks

_task_apis: dict[str, Api] = {}


@contextlib.contextmanager
def in_task(framework: str) -> Iterator[Api]:
    """The :class:`Api` to use *inside* a running task (for tasks that submit tasks).

    Ray and taskmesh allow ``f.remote()`` / ``get`` in a task directly.  Dask
    needs ``distributed.worker_client()``, which also secedes the task from the
    worker's thread pool while it blocks, so children can run on that worker.
    """
    if framework == "dask":
        import distributed

        with distributed.worker_client() as client:
            yield DaskApi(client)
        return
    api = _task_apis.get(framework)
    if api is None:
        fw = FRAMEWORKS[framework]
        assert isinstance(fw, RayLikeFramework)
        api = _task_apis[framework] = RayLikeApi(
            importlib.import_module(fw.module), framework
        )
    yield api
