"""The exceptions a taskmesh user can meet, each saying what happened, where, and what to do.

A failed task's exception travels back to ``get()`` as a :class:`TaskError`. When the
original exception class can be rebuilt on the caller's side, the raised object is an
instance of *both* ``TaskError`` and that class, so ``except ValueError:`` keeps working
around remote code exactly as it would around local code.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TaskmeshError",
    "TaskError",
    "GetTimeoutError",
    "WorkerCrashedError",
    "NodeLostError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "SerializationError",
    "HeadConnectionError",
    "ProtocolVersionError",
    "system_error",
]


class TaskmeshError(Exception):
    """Base class of every error raised by taskmesh itself."""


class TaskError(TaskmeshError):
    """A task raised an exception.

    Attributes:
        task_name: qualified name of the function that failed.
        node_id: id of the node whose worker ran it.
        pid: process id of that worker.
        remote_traceback: the formatted traceback from the worker.
        cause: the original exception object, when it could be unpickled, else ``None``.
    """

    task_name: str
    node_id: str
    pid: int
    remote_traceback: str
    cause: BaseException | None

    def __init__(
        self,
        task_name: str = "",
        node_id: str = "",
        pid: int = 0,
        remote_traceback: str = "",
        cause: BaseException | None = None,
        cause_repr: str = "",
    ) -> None:
        self.task_name = task_name
        self.node_id = node_id
        self.pid = pid
        self.remote_traceback = remote_traceback
        self.cause = cause
        self.cause_repr = cause_repr or (repr(cause) if cause is not None else "")
        Exception.__init__(self, self._message())

    def _message(self) -> str:
        head = f"task {self.task_name} failed on node {self.node_id} (worker pid {self.pid})"
        tb = self.remote_traceback.rstrip()
        if tb:
            return f"{head}:\n\n{tb}"
        return f"{head}: {self.cause_repr}"

    def __str__(self) -> str:  # the dual-class instances must not use the cause's __str__
        return self._message()

    def __reduce__(self) -> Any:
        return (
            _rebuild_task_error,
            (self.task_name, self.node_id, self.pid, self.remote_traceback, self.cause, self.cause_repr),
        )

    @classmethod
    def from_cause(
        cls,
        cause: BaseException | None,
        task_name: str,
        node_id: str,
        pid: int,
        remote_traceback: str,
        cause_repr: str = "",
    ) -> "TaskError":
        """Build the error raised by ``get()``: an instance of TaskError and of the cause's class."""
        if cause is None or isinstance(cause, TaskError):
            return TaskError(task_name, node_id, pid, remote_traceback, cause, cause_repr)
        dual = _dual_class(type(cause))
        if dual is None:
            return TaskError(task_name, node_id, pid, remote_traceback, cause, cause_repr)
        err = dual.__new__(dual)
        if isinstance(cause, OSError):  # its C-level fields are not in __dict__
            for name in ("errno", "strerror", "filename", "filename2"):
                try:
                    setattr(err, name, getattr(cause, name))
                except (AttributeError, TypeError):
                    pass
        # Copy the cause's state so attribute access (e.errno, e.args...) works as on the original.
        try:
            err.__dict__.update(getattr(cause, "__dict__", {}))
        except (AttributeError, TypeError):
            pass
        err.args = cause.args
        TaskError.__init__(err, task_name, node_id, pid, remote_traceback, cause, cause_repr)
        err.args = cause.args
        return err


_DUAL_CACHE: dict[type, type | None] = {}


def _dual_class(cause_cls: type) -> type | None:
    """A class deriving from TaskError and ``cause_cls``, or None when Python forbids it."""
    if cause_cls in _DUAL_CACHE:
        return _DUAL_CACHE[cause_cls]
    dual: type | None
    try:
        dual = type(
            f"TaskError({cause_cls.__name__})",
            (TaskError, cause_cls),
            {"__module__": "taskmesh.errors", "__init__": TaskError.__init__,
             "__str__": TaskError.__str__, "__reduce__": TaskError.__reduce__},
        )
    except TypeError:  # e.g. layout conflicts with some builtin exception types
        dual = None
    _DUAL_CACHE[cause_cls] = dual
    return dual


def _rebuild_task_error(task_name, node_id, pid, remote_traceback, cause, cause_repr):  # type: ignore[no-untyped-def]
    return TaskError.from_cause(cause, task_name, node_id, pid, remote_traceback, cause_repr)


class GetTimeoutError(TaskmeshError, TimeoutError):
    """``get(timeout=...)`` ran out of time before the objects were ready."""


class WorkerCrashedError(TaskmeshError):
    """The worker process running a task died (killed, crashed, exited) and retries ran out."""


class NodeLostError(TaskmeshError):
    """The node holding a task or object stopped answering the head."""


class TaskCancelledError(TaskmeshError):
    """The task was cancelled with ``taskmesh.cancel()`` before it finished."""


class TaskTimeoutError(TaskmeshError, TimeoutError):
    """The task ran longer than its ``timeout_s`` option and was stopped."""


class TaskUnschedulableError(TaskmeshError):
    """No node can ever run the task as asked (e.g. node affinity to a dead node)."""


class ActorDiedError(TaskmeshError):
    """An actor is dead (its constructor raised, ``kill()``, its owner exited, or its process
    or node died with no restarts left): a call to it fails with this, naming the actor and
    the cause."""


class RuntimeEnvSetupError(TaskmeshError):
    """A task's or actor's ``runtime_env`` could not be set up on the node chosen for it
    (e.g. pip could not install a requirement): the message names the node and ends with the
    cause (pip's own error)."""


class ObjectLostError(TaskmeshError):
    """An object is no longer stored anywhere and cannot be rebuilt."""


class ObjectStoreFullError(TaskmeshError):
    """A node's shared-memory object store had no room for an object.

    Raised at once when the object is larger than the store, or after
    ``store_create_timeout_s`` when objects pinned by readers leave no free range large
    enough (objects nobody reads are spilled to disk to make room). The message names the
    sizes involved. Release views of objects you no longer need, or give the store more
    memory (``object_store_memory``).
    """


class SerializationError(TaskmeshError, TypeError):
    """A value could not be pickled or unpickled (an argument, a return value, a put)."""


class HeadConnectionError(TaskmeshError, ConnectionError):
    """The head could not be reached, refused us, or went away."""


class ProtocolVersionError(HeadConnectionError):
    """The other side speaks another taskmesh protocol version."""


class AuthenticationError(HeadConnectionError):
    """The head (or a node) refused this process's handshake: it holds another cluster
    secret, or one side has encryption on and the other off."""


class SecretError(TaskmeshError):
    """No usable cluster secret: the file is missing, malformed or readable by others."""


_SYSTEM_ERRORS: dict[str, type[TaskmeshError]] = {
    cls.__name__: cls
    for cls in (WorkerCrashedError, NodeLostError, ObjectLostError, ObjectStoreFullError,
                ActorDiedError, TaskCancelledError, TaskTimeoutError, TaskUnschedulableError,
                SerializationError, HeadConnectionError, RuntimeEnvSetupError, TaskmeshError)
}


def system_error(kind: str, message: str) -> TaskmeshError:
    """Build the exception for an error the head or a node reported by name (never by pickle)."""
    return _SYSTEM_ERRORS.get(kind, TaskmeshError)(message)
