"""The public functions: init, shutdown, remote, get, put, wait and cluster introspection.

Names and semantics follow Ray core's API, so Ray code ports by changing the import.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import time
from typing import Any, Callable, Sequence, TypeVar, overload

from . import _protocol as P
from . import _serialize as S
from ._checks import runtime_env as runtime_env_option
from ._client.core import CoreClient
from ._context import CTX, current_core
from ._dashboard.auth import dashboard_url, token_for
from ._resources import from_units
from ._rundir import find_head
from ._secret import Security, find_secret
from ._transport import connect_endpoint, split_address
from .config import DEFAULT_PORT, Config
from .errors import HeadConnectionError
from .actor import ActorClass
from .handles import ObjectRef, RemoteFunction

T = TypeVar("T")

_atexit_registered = False


def init(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    resources: dict[str, float] | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool = True,
    runtime_env: dict[str, Any] | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Connect this process to a taskmesh cluster, starting a local one if needed.

    Args:
        address: ``None`` joins the cluster started with ``taskmesh start`` on this machine if
            there is one (or ``$TASKMESH_ADDRESS``), else starts an embedded local cluster;
            ``"auto"`` joins the cluster started on this machine and fails if there is none;
            ``"HOST:PORT"`` joins the head at that address.
        num_cpus: worker processes of the embedded cluster (default: this machine's CPU count).
        num_gpus: GPUs of the embedded cluster (default: CUDA_VISIBLE_DEVICES, else nvidia-smi).
        resources: custom resources of the embedded cluster's node, e.g. ``{"highmem": 1}``.
        ignore_reinit_error: return quietly if taskmesh is already initialized.
        log_to_driver: show what tasks and actors print here, each line prefixed with
            ``(name pid=..., ip=...)`` (the nodes' log files keep it either way).
        runtime_env: the job's runtime environment (Ray's ``runtime_env``: ``working_dir``,
            ``py_modules``, ``excludes``, ``env_vars``, ``pip``, ``config``): every task and
            actor of this driver runs in it, their own ``runtime_env`` option merged over it.
        **config: overrides of :class:`taskmesh.config.Config` fields (e.g. connect_timeout_s,
            or ``secret_file`` when the cluster secret is not at ~/.taskmesh/cluster-secret).

    Returns:
        A dict with the head ``address``, this process's ``node_id`` when embedded, and
        ``dashboard_url``: the head's HTTP endpoints (``/metrics``) with the token that
        admits a browser or a scraper (see docs/monitoring.md); "" if the head has none.
    """
    global _atexit_registered
    with CTX.lock:
        if CTX.core is not None:
            if ignore_reinit_error:
                return {"address": CTX.core.address}
            raise RuntimeError("taskmesh.init() was already called in this process; call "
                               "taskmesh.shutdown() first, or pass ignore_reinit_error=True")
        job_env = runtime_env_option(runtime_env) or {}  # (checked before anything starts)
        cfg = Config.from_env(**config)
        if address is None:
            address = os.environ.get("TASKMESH_ADDRESS") or None
        head_secret = ""  # the secret file of a head started here, found by its run record
        if address is None or address == "auto":
            local = find_head(cfg.run_dir)
            if local is not None:
                address, head_secret = local
            elif address == "auto":
                raise HeadConnectionError(
                    f"init(address='auto') found no taskmesh cluster started on this machine "
                    f"(looked in {cfg.run_dir}). Start one with `taskmesh start --head`, or call "
                    "taskmesh.init() with no address for a local cluster.")
        cluster = None
        if address is None:
            from ._launch import start_embedded

            n = (os.cpu_count() or 1) if num_cpus is None else num_cpus
            if not isinstance(n, int) or n < 0:
                raise ValueError(f"num_cpus must be a non-negative integer, got {num_cpus!r}")
            cluster = start_embedded(cfg, n, json.dumps(resources or {}), num_gpus)
            address = cluster.address
        elif num_cpus is not None or resources is not None or num_gpus is not None:
            raise ValueError("num_cpus and resources describe a local cluster; when joining an "
                             "existing cluster, give them to `taskmesh start` instead")
        try:
            host, port = split_address(address, DEFAULT_PORT)
        except ValueError as exc:
            raise ValueError(f"bad taskmesh address {address!r}: {exc}") from None
        if cluster is not None:
            security = cluster.security
        else:
            # a test cluster this process started (cluster_utils.Cluster): its one-off secret
            from ._launch import started_cluster_security

            security = started_cluster_security(host, port) or Security(
                find_secret(cfg.secret_file or head_secret), cfg.encrypt)
        node_id = cluster.node_id if cluster is not None else ""
        core = CoreClient(cfg, connect_endpoint(host, port), "driver", f"{host}:{port}", security,
                          node_id=node_id)
        try:
            core.handshake({"pid": os.getpid(), "log_to_driver": bool(log_to_driver)})
        except BaseException:
            core.close()
            if cluster is not None:
                cluster.stop()
            raise
        core.runtime_env = job_env
        CTX.core = core
        CTX.cluster = cluster
        CTX.node_id = node_id
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        return {"address": f"{host}:{port}", "node_id": CTX.node_id,
                "dashboard_url": _dashboard_url(core, cluster, host, security)}


def _dashboard_url(core: CoreClient, cluster: Any, head_host: str, security: Security) -> str:
    """The head's dashboard (``/metrics``) URL with its token, or "" (an older head)."""
    if cluster is not None and cluster.dashboard:
        host, _, port = cluster.dashboard.rpartition(":")
        info: Any = {"host": host, "port": port}
    else:
        try:
            info = core.info("dashboard")
        except HeadConnectionError:
            return ""
    if not isinstance(info, dict) or "port" not in info:
        return ""
    return dashboard_url(str(info.get("host", "")).strip("[]"), int(info["port"]),
                         token_for(security.key), "/", head_host)


def shutdown() -> None:
    """Disconnect; stop the embedded cluster if this process started one. Safe to call twice."""
    with CTX.lock:
        core, cluster = CTX.core, CTX.cluster
        CTX.core = None
        CTX.cluster = None
        if core is not None:
            core.close()
        if cluster is not None:
            cluster.stop()


def is_initialized() -> bool:
    """True if ``init()`` has connected this process to a cluster."""
    return CTX.core is not None


F = TypeVar("F", bound=Callable[..., Any])


@overload
def remote(__fn: Callable[..., Any]) -> RemoteFunction: ...
@overload
def remote(**options: Any) -> Callable[[Callable[..., Any]], RemoteFunction]: ...


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote function: ``@remote`` or ``@remote(num_cpus=2, num_returns=2)``.

    Call ``f.remote(*args)`` to run it as a task; it returns an :class:`ObjectRef` at once.
    """
    if args:
        if len(args) != 1 or options or not callable(args[0]):
            raise TypeError("use @taskmesh.remote or @taskmesh.remote(option=value, ...)")
        return _make_remote(args[0], {})
    return lambda fn: _make_remote(fn, options)


def _make_remote(fn: Any, options: dict[str, Any]) -> Any:
    if inspect.isclass(fn):
        return ActorClass(fn, options)
    return RemoteFunction(fn, options)


def _ref_ids(refs: list, fn: str) -> list[bytes]:
    ids = []
    for r in refs:
        if type(r) is not ObjectRef:
            raise TypeError(f"{fn}() expected a list of ObjectRefs, got a list containing "
                            f"{_kind(r)}")
        ids.append(r._id)
    return ids


def _kind(value: Any) -> str:
    t = type(value)
    return f"a {t.__qualname__}" if t.__module__ == "builtins" else f"a {t.__module__}.{t.__qualname__}"


def _check_timeout(timeout: Any) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
        raise TypeError(f"timeout must be a number of seconds or None, got {_kind(timeout)}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")


def get(refs: Any, *, timeout: float | None = None) -> Any:
    """Wait for and return the value(s) behind an ObjectRef or a list of ObjectRefs.

    Raises the task's error (a :class:`TaskError` that is also an instance of the original
    exception class) if a task failed, and :class:`GetTimeoutError` after ``timeout`` seconds.
    For a list, the first failure (a task error, a dead actor, a lost object) is raised as
    soon as it is known, even while other objects are still being made, as in Ray.
    """
    single = type(refs) is ObjectRef
    if single:
        ids = [refs._id]
    elif isinstance(refs, list):
        ids = _ref_ids(refs, "get")
    else:
        raise ValueError(f"get() takes an ObjectRef or a list of ObjectRefs, got {_kind(refs)}")
    _check_timeout(timeout)
    core = current_core()
    deadline = None if timeout is None else time.monotonic() + timeout
    values = core.get_values(ids, timeout, fail_fast=True)
    for v in values:  # the first error in the list, as soon as one arrived (as Ray does)
        if v is not None and v.is_error:
            S.value_or_raise(v)
    if single:
        return S.value_or_raise(core.reader.read(values[0], _left(deadline)))
    read = core.reader.read
    return [S.value_or_raise(read(v, _left(deadline))) for v in values]


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def put(value: Any) -> ObjectRef:
    """Store a value in the cluster; return an ObjectRef to pass to tasks instead of the value."""
    if type(value) is ObjectRef:
        raise TypeError("put() of an ObjectRef is not allowed; pass the ref itself instead")
    core = current_core()
    return ObjectRef(core.put_value(value), core)


def wait(
    refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Wait until ``num_returns`` of ``refs`` are ready or ``timeout`` passes.

    Returns ``(ready, not_ready)``, each in the order of ``refs``; ``ready`` holds at most
    ``num_returns`` refs. A failed object counts as ready. ``refs`` must be a list of unique
    ObjectRefs and ``num_returns`` between 1 and its length (TypeError, ValueError).
    """
    if type(refs) is ObjectRef:
        raise TypeError("wait() expected a list of ObjectRefs, got a single ObjectRef; "
                        "use wait([ref])")
    if not isinstance(refs, list):
        raise TypeError(f"wait() expected a list of ObjectRefs, got {_kind(refs)}")
    _check_timeout(timeout)
    ids = _ref_ids(refs, "wait")
    if not ids:
        return [], []
    if len(set(ids)) != len(ids):
        raise ValueError("wait() requires a list of unique ObjectRefs; the list holds one "
                         "ObjectRef twice")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        raise TypeError(f"num_returns must be an integer, got {_kind(num_returns)}")
    if not 1 <= num_returns <= len(ids):
        raise ValueError(f"num_returns must be between 1 and the number of refs ({len(ids)}), "
                         f"got {num_returns}")
    ready_ids = current_core().wait_ready(ids, num_returns, timeout)
    ready, not_ready = [], []
    for r in refs:
        if r._id in ready_ids and len(ready) < num_returns:
            ready.append(r)
        else:
            not_ready.append(r)
    return ready, not_ready


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes ``ref``: ``get(ref)`` then raises TaskCancelledError.

    A task still queued or waiting for its inputs never runs. A running one gets
    TaskCancelledError raised inside it (a blocking sleep or read is cut short; code that does
    not return to the interpreter is not); with ``force=True`` its worker process is killed
    instead (a replacement starts). Tasks that depend on it fail the same way. With
    ``recursive`` (the default, as in Ray) the unfinished tasks it submitted are cancelled too,
    and theirs. A finished task is left as it is. An actor call can be cancelled like a task
    (``force`` is ignored there: killing the process would kill the actor; use
    ``taskmesh.kill``).
    """
    if type(ref) is not ObjectRef:
        raise TypeError(f"cancel() takes an ObjectRef, got {_kind(ref)}")
    if not isinstance(force, bool) or not isinstance(recursive, bool):
        raise TypeError(f"cancel(): force and recursive must be True or False, got "
                        f"force={force!r}, recursive={recursive!r}")
    current_core().send(P.Cancel([ref._id], force, recursive))


def _resources_from_units(units: dict[str, int]) -> dict[str, float]:
    return {k: from_units(v) for k, v in units.items()}


def nodes() -> list[dict[str, Any]]:
    """One dict per node: NodeID, Alive, NodeManagerAddress, Resources, ... (as in Ray)."""
    out = []
    for n in current_core().info("nodes"):
        n = dict(n)
        n["Resources"] = _resources_from_units(n["Resources"])
        n["Available"] = _resources_from_units(n["Available"])
        n["CPUsInUse"] = from_units(n["CPUsInUse"])
        out.append(n)
    return out


def cluster_resources() -> dict[str, float]:
    """Total resources of the live nodes, e.g. ``{'CPU': 8.0, 'node:10.0.0.5': 1.0}``."""
    return _resources_from_units(current_core().info("resources"))


def available_resources() -> dict[str, float]:
    """Resources not held by running tasks right now."""
    return _resources_from_units(current_core().info("available"))


def timeline(filename: str | None = None) -> list[dict[str, Any]] | None:
    """The recent task events of the cluster as a Chrome trace (as Ray's ``timeline``): one
    row per worker, a slice per task run. With ``filename`` it is written there as JSON (open
    it in https://ui.perfetto.dev or chrome://tracing) and None is returned; else the list of
    trace events. Only what the head still keeps (``Config.event_ring`` events) is drawn."""
    from ._timeline import trace_events

    core = current_core()
    events: list[list] = []
    seq = 0
    for _ in range(1000):  # pages of at most 1,000 (a flood still adding: stop somewhere)
        page = core.info(f"events:{seq}")
        if not page.get("events"):
            break
        events.extend(page["events"])
        seq = page["seq"]
    trace = trace_events(events)
    if filename is None:
        return trace
    with open(filename, "w") as f:
        json.dump(trace, f)
    return None


class RuntimeContext:
    """Where the calling code runs: ``get_runtime_context().get_node_id()`` etc."""

    def get_node_id(self) -> str:
        return CTX.node_id

    def get_worker_id(self) -> str:
        return CTX.worker_id

    def get_task_id(self) -> str | None:
        return CTX.current_task_id.hex() if CTX.current_task_id else None

    @property
    def node_id(self) -> str:
        return CTX.node_id

    @property
    def gcs_address(self) -> str:
        return current_core().address

    @property
    def runtime_env(self) -> dict[str, Any]:
        """The runtime environment this process runs in (a driver: the job's, as given to
        ``init``; a worker: its own, in wire form); ``{}`` for the default."""
        return dict(current_core().runtime_env)

    def get_runtime_env_string(self) -> str:
        """``runtime_env`` as JSON (Ray's name)."""
        return json.dumps(current_core().runtime_env, sort_keys=True)


def get_runtime_context() -> RuntimeContext:
    """Information about the current driver or worker process."""
    return RuntimeContext()
