"""Turning Python values into SerializedObjects and back: cloudpickle, pickle protocol 5 buffers.

    value ──cloudpickle(protocol 5)──▶ pickle stream + out-of-band buffers (numpy data, bytes)
          ──SerializedObject──▶ frame 0 header + one ZeroMQ frame per large buffer (no copy)

Task arguments are packed as one pickle of ``(args, kwargs)`` in which every *top-level*
ObjectRef is replaced by a ``_DepSlot(i)`` marker; the refs' ids travel beside it (``deps``) so
the head can wait for them without unpickling anything, and the worker puts the values back in.
Refs nested deeper stay refs, as in Ray.
"""

from __future__ import annotations

import os
import pickle
import threading
import traceback
from typing import Any, Callable, Sequence

import cloudpickle

from ._protocol import SerializedObject
from .errors import SerializationError, TaskError, system_error

_EMPTY_ARGS: tuple = ((), {})


_collecting = threading.local()


def ref_pickled(object_id: bytes) -> bool:
    """Called when an ObjectRef is pickled: note its id in the value being serialized. False
    if taskmesh is not serializing anything in this thread (someone pickles the ref for their
    own use: it escapes reference counting)."""
    ids = getattr(_collecting, "ids", None)
    if ids is None:
        return False
    ids.append(object_id)
    return True


def _pickle(value: Any, buffer_callback: Callable[[Any], None]) -> tuple[bytes, list]:
    """cloudpickle ``value``; also return the ids of the ObjectRefs pickled inside it."""
    outer = getattr(_collecting, "ids", None)
    _collecting.ids = ids = []
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffer_callback)
    finally:
        _collecting.ids = outer
    return data, list(dict.fromkeys(ids)) if len(ids) > 1 else ids


def dumps(value: Any) -> SerializedObject:
    """Serialize a value; raise SerializationError naming the offending type.

    Out-of-band buffers are views of the value's own memory: a caller that keeps the object
    while the value may change (put, task arguments) copies them, into the node store or with
    :func:`snapshot`, so the object keeps the value as it was at the call, as Ray's put and
    .remote() do.
    """
    buffers: list = []
    try:
        data, contained = _pickle(value, buffers.append)
    except Exception as exc:
        raise SerializationError(f"could not serialize {_describe(value)}: {exc}") from exc
    return SerializedObject(SerializedObject.VALUE, data, [b.raw() for b in buffers], contained)


def snapshot(obj: SerializedObject) -> SerializedObject:
    """The object with copies of its buffers (they may be views of memory the caller changes)."""
    if not obj.buffers:
        return obj
    return SerializedObject(obj.flags, obj.data, [memoryview(b).tobytes() for b in obj.buffers],
                            obj.contained)


def loads(obj: SerializedObject) -> Any:
    """Deserialize a VALUE object (errors are turned into exceptions by :func:`raise_if_error`)."""
    return pickle.loads(obj.data, buffers=obj.buffers)


def to_exception(obj: SerializedObject) -> BaseException:
    """The exception an error object stands for."""
    if obj.flags == SerializedObject.SYSTEM_ERROR:
        kind, message = obj.read_system_error()
        return system_error(kind, message)
    try:
        info = pickle.loads(obj.data)
    except Exception as exc:  # the cause class may not exist here
        return TaskError(remote_traceback=f"(error details could not be unpickled: {exc})")
    cause = info.get("cause")
    if cause is None and "cause_state" in info:
        cause = _rebuild_cause(info["cause_state"])
    return TaskError.from_cause(
        cause, info["task_name"], info["node_id"], info["pid"],
        info["traceback"], info.get("cause_repr", ""),
    )


def value_or_raise(obj: SerializedObject) -> Any:
    if obj.flags != SerializedObject.VALUE:
        raise to_exception(obj)
    return loads(obj)


def dump_task_error(
    exc: BaseException, task_name: str, node_id: str, pid: int, user_traceback: bool = True
) -> SerializedObject:
    """Serialize an exception raised by a task, with its traceback and where it happened.

    ``user_traceback=False`` is for errors taskmesh raised around the task (e.g. a return value
    that cannot be pickled): the traceback of taskmesh internals would only hide the message.
    """
    if user_traceback:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        tb = f"{type(exc).__name__}: {exc}"
    info = {"task_name": task_name, "node_id": node_id, "pid": pid, "traceback": tb,
            "cause_repr": repr(exc)}
    cause: BaseException | None = exc.cause if isinstance(exc, TaskError) else exc
    try:
        data = cloudpickle.dumps({**info, "cause": cause}, protocol=5)
        pickle.loads(data)  # the cause must also come back out; some exceptions don't
    except Exception:
        data = _dump_cause_state(info, cause)
    return SerializedObject(SerializedObject.TASK_ERROR, data, [])


#: a failed task's error text for the head (TaskResult.error) is cut to this many characters
ERROR_TEXT_CHARS = 8192


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def error_text(exc: BaseException, user_traceback: bool = True) -> str:
    """A task's exception as plain text for the head, which never unpickles (the state API
    shows it): ``Type: message`` after the traceback, as Python prints it, from the user's
    code on (taskmesh's own frames above it left out). At most ``ERROR_TEXT_CHARS``: a
    longer one keeps its end (the innermost frames and the message)."""
    if user_traceback:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    else:
        text = f"{type(exc).__name__}: {exc}"
    if len(text) > ERROR_TEXT_CHARS:
        cut = len(text) - ERROR_TEXT_CHARS + 40
        text = f"[... {cut} characters cut ...]\n" + text[cut:]
    return text


def _dump_cause_state(info: dict, cause: BaseException | None) -> bytes:
    """For exceptions whose __init__ breaks unpickling: send class, args and __dict__ apart."""
    if cause is not None:
        state = {k: v for k, v in getattr(cause, "__dict__", {}).items() if _picklable(v)}
        try:
            data = cloudpickle.dumps({**info, "cause": None,
                                      "cause_state": (type(cause), cause.args, state)}, protocol=5)
            pickle.loads(data)
            return data
        except Exception:
            pass
    return cloudpickle.dumps({**info, "cause": None}, protocol=5)


def _picklable(value: Any) -> bool:
    try:
        cloudpickle.dumps(value, protocol=5)
        return True
    except Exception:
        return False


def _rebuild_cause(state: Any) -> BaseException | None:
    try:
        cls, args, attrs = state
        exc = cls.__new__(cls)
        exc.args = args
        exc.__dict__.update(attrs)
        return exc
    except Exception:
        return None


def system_error_object(kind: str, message: str) -> SerializedObject:
    return SerializedObject.system_error(kind, message)


# --------------------------------------------------------------------------- task arguments


class _DepSlot:
    """Stands for the i-th top-level ObjectRef argument inside a packed argument pickle."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> Any:
        return (_DepSlot, (self.index,))


def pack_args(
    args: Sequence[Any], kwargs: dict, is_ref: Callable[[Any], bool], task_name: str
) -> tuple[SerializedObject | None, list]:
    """Pack call arguments; return (serialized args or None if there are none, dep refs)."""
    if not args and not kwargs:
        return None, []
    deps: list = []
    new_args = list(args)
    for i, a in enumerate(new_args):
        if is_ref(a):
            new_args[i] = _DepSlot(len(deps))
            deps.append(a)
    new_kwargs = dict(kwargs)
    for k, a in new_kwargs.items():
        if is_ref(a):
            new_kwargs[k] = _DepSlot(len(deps))
            deps.append(a)
    if deps and len(deps) == len(new_args) + len(new_kwargs) and not kwargs:
        # all arguments are refs: a tiny fixed pickle, cached
        payload = (tuple(new_args), {})
    else:
        payload = (tuple(new_args), new_kwargs)
    buffers: list = []
    try:
        data, contained = _pickle(payload, buffers.append)
    except Exception as exc:
        raise _argument_error(args, kwargs, task_name, exc) from exc
    return SerializedObject(SerializedObject.VALUE, data, [b.raw().tobytes() for b in buffers],
                            contained), deps


def _argument_error(args: Sequence[Any], kwargs: dict, task_name: str, exc: Exception) -> SerializationError:
    """Find which argument failed to pickle and say so."""
    for i, a in enumerate(args):
        try:
            cloudpickle.dumps(a, protocol=5)
        except Exception as inner:
            return SerializationError(
                f"could not serialize argument {i} ({_describe(a)}) of task {task_name}: {inner}. "
                "Pass something picklable, or create it inside the task."
            )
    for k, a in kwargs.items():
        try:
            cloudpickle.dumps(a, protocol=5)
        except Exception as inner:
            return SerializationError(
                f"could not serialize argument {k!r} ({_describe(a)}) of task {task_name}: {inner}. "
                "Pass something picklable, or create it inside the task."
            )
    return SerializationError(f"could not serialize the arguments of task {task_name}: {exc}")


def unpack_args(obj: SerializedObject | None, dep_values: Sequence[Any]) -> tuple[tuple, dict]:
    """Rebuild (args, kwargs), putting resolved dependency values in place of the slots."""
    if obj is None:
        return _EMPTY_ARGS
    args, kwargs = pickle.loads(obj.data, buffers=obj.buffers)
    if dep_values:
        args = tuple(dep_values[a.index] if type(a) is _DepSlot else a for a in args)
        if kwargs:
            kwargs = {k: dep_values[v.index] if type(v) is _DepSlot else v for k, v in kwargs.items()}
    return args, kwargs


def dump_function(fn: Any, name: str) -> bytes:
    try:
        return cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        raise SerializationError(
            f"could not serialize remote function {name}: {exc}. It may capture an unpicklable "
            "object (a lock, a socket, an open file) from its enclosing scope."
        ) from exc


def _describe(value: Any) -> str:
    t = type(value)
    return f"a {t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else f"a {t.__qualname__}"
