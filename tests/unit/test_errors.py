"""The user-facing exception classes."""

from __future__ import annotations

import pickle

import pytest

from taskmesh import errors as E
from taskmesh.errors import TaskError


def test_hierarchy():
    for name in E.__all__:
        obj = getattr(E, name)
        if isinstance(obj, type):
            assert issubclass(obj, E.TaskmeshError), name
    assert issubclass(E.GetTimeoutError, TimeoutError)
    assert issubclass(E.SerializationError, TypeError)
    assert issubclass(E.HeadConnectionError, ConnectionError)
    assert issubclass(E.ProtocolVersionError, E.HeadConnectionError)
    assert issubclass(TaskError, E.TaskmeshError)


@pytest.mark.parametrize("kind", ["WorkerCrashedError", "NodeLostError", "ObjectLostError",
                                  "ObjectStoreFullError", "SerializationError", "HeadConnectionError",
                                  "TaskmeshError"])
def test_system_error_by_name(kind):
    err = E.system_error(kind, "what happened")
    assert type(err).__name__ == kind and str(err) == "what happened"


def test_system_error_unknown_kind_is_a_plain_taskmesh_error():
    err = E.system_error("ValueError", "x")  # never builds arbitrary classes by name
    assert type(err) is E.TaskmeshError
    assert type(E.system_error("TaskError", "x")) is E.TaskmeshError


def test_task_error_message():
    err = TaskError("mod.f", "node-1", 99, "Traceback...\nValueError: boom\n")
    assert str(err) == "task mod.f failed on node node-1 (worker pid 99):\n\nTraceback...\nValueError: boom"
    no_tb = TaskError("mod.f", "node-1", 99, cause=ValueError("boom"))
    assert str(no_tb) == "task mod.f failed on node node-1 (worker pid 99): ValueError('boom')"
    assert no_tb.cause_repr == "ValueError('boom')"


def test_from_cause_builds_a_dual_class_instance():
    cause = ValueError("bad", 3)
    err = TaskError.from_cause(cause, "mod.f", "n1", 7, "tb")
    assert isinstance(err, TaskError) and isinstance(err, ValueError)
    assert err.args == ("bad", 3) and err.cause is cause
    assert str(err).startswith("task mod.f failed on node n1 (worker pid 7)")
    # the dual class is cached
    assert type(TaskError.from_cause(ValueError(), "g", "n", 1, "")) is type(err)
    with pytest.raises(ValueError):
        raise err


def test_from_cause_without_cause_or_with_a_task_error():
    assert type(TaskError.from_cause(None, "f", "n", 1, "tb")) is TaskError
    inner = TaskError("g", "n", 1, "tb")
    err = TaskError.from_cause(inner, "f", "n", 1, "tb")
    assert type(err) is TaskError and err.cause is inner


class WithState(Exception):
    def __init__(self, msg, code=0):
        super().__init__(msg)
        self.code = code

    def __str__(self):
        return "custom str must not be used"


def test_dual_class_copies_state_and_uses_task_error_str():
    err = TaskError.from_cause(WithState("m", code=5), "f", "n", 1, "the traceback")
    assert isinstance(err, WithState) and err.code == 5 and err.args == ("m",)
    assert "the traceback" in str(err) and "custom str" not in str(err)


def test_dual_class_of_os_error_keeps_errno():
    """errors.py: 'Copy the cause's state so attribute access (e.errno, e.args...) works as on
    the original.'"""
    cause = FileNotFoundError(2, "No such file or directory", "/data/x.csv")
    err = TaskError.from_cause(cause, "f", "n", 1, "tb")
    assert isinstance(err, FileNotFoundError)
    assert err.errno == 2
    assert err.strerror == "No such file or directory"
    assert err.filename == "/data/x.csv"


@pytest.mark.parametrize("cause", [ValueError("v"), KeyError("k"), WithState("s", 3), None])
def test_task_error_pickles_to_an_equivalent_error(cause):
    err = TaskError.from_cause(cause, "mod.f", "n1", 7, "tb text")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert (back.task_name, back.node_id, back.pid, back.remote_traceback) == ("mod.f", "n1", 7, "tb text")
    assert back.args == err.args
    assert str(back) == str(err)


def test_system_errors_pickle():
    for cls in (E.WorkerCrashedError, E.NodeLostError, E.ObjectLostError, E.GetTimeoutError):
        back = pickle.loads(pickle.dumps(cls("msg")))
        assert type(back) is cls and str(back) == "msg"
