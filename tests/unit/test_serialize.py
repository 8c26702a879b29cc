"""Values, task arguments and task errors to SerializedObjects and back."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from taskmesh import _protocol as P
from taskmesh import _serialize as S
from taskmesh._protocol import SerializedObject
from taskmesh.errors import (
    ObjectLostError,
    SerializationError,
    TaskError,
    TaskmeshError,
    WorkerCrashedError,
)


class Ref:
    """Stands in for an ObjectRef: all pack_args needs is an is_ref predicate."""

    def __init__(self, oid: bytes) -> None:
        self.oid = oid

    def __eq__(self, other):
        return type(other) is Ref and other.oid == self.oid

    def __hash__(self):
        return hash(self.oid)

    def __repr__(self):
        return f"Ref({self.oid!r})"


def is_ref(x) -> bool:
    return type(x) is Ref


def wire(obj: SerializedObject, threshold: int = 1024) -> SerializedObject:
    """Send ``obj`` through a real message, the way a worker would get it."""
    msg = P.decode(P.encode(P.Put([(b"o", obj)]), frame_threshold=threshold))
    return msg.objects[0][1]


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("v", [None, 1, "text", b"bytes", [1, {"a": (2, 3)}], {1, 2}, 3.5])
def test_dumps_loads_round_trip(v):
    obj = S.dumps(v)
    assert obj.flags == SerializedObject.VALUE and not obj.is_error
    assert S.loads(obj) == v
    assert S.value_or_raise(wire(obj)) == v


def test_dumps_functions_and_lambdas_by_value():
    def local(x):
        return x * 3

    assert S.loads(S.dumps(local))(2) == 6
    assert S.loads(S.dumps(lambda y: y + 1))(1) == 2


def test_dumps_unpicklable_value_raises_serialization_error_naming_the_type():
    with pytest.raises(SerializationError, match=r"_thread\.lock"):
        S.dumps(threading.Lock())
    assert issubclass(SerializationError, TypeError)


def test_numpy_arrays_use_out_of_band_buffers():
    arr = np.arange(100_000, dtype=np.float64)
    obj = S.dumps(arr)
    assert len(obj.buffers) == 1
    assert obj.buffers[0].nbytes == arr.nbytes
    assert len(obj.data) < 1000  # the data is not in the pickle stream
    assert obj.nbytes >= arr.nbytes
    back = S.loads(obj)
    np.testing.assert_array_equal(back, arr)
    # and over the wire the buffer is its own frame
    frames = P.encode(P.Put([(b"o", obj)]), frame_threshold=64 * 1024)
    assert len(frames) == 2 and len(frames[0]) < 1000
    np.testing.assert_array_equal(S.loads(P.decode(frames).objects[0][1]), arr)


@pytest.mark.parametrize("make", [
    lambda: np.arange(12.0).reshape(3, 4),
    lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    lambda: np.arange(20)[::3],  # not contiguous
    lambda: np.array(5),
    lambda: np.zeros((0, 3)),
    lambda: np.array([{"a": 1}, None], dtype=object),
    lambda: {"x": np.ones(10_000, dtype=np.int8), "y": [np.zeros(3)]},
], ids=["c", "fortran", "strided", "0d", "empty", "object", "nested"])
def test_numpy_round_trips_in_every_layout(make):
    v = make()
    back = S.loads(wire(S.dumps(v), threshold=100))
    if isinstance(v, dict):
        np.testing.assert_array_equal(back["x"], v["x"])
        np.testing.assert_array_equal(back["y"][0], v["y"][0])
    else:
        assert back.dtype == v.dtype and back.shape == v.shape
        assert back.tolist() == v.tolist()


# --------------------------------------------------------------------------- task arguments


def test_pack_args_without_arguments_is_none():
    assert S.pack_args((), {}, is_ref, "f") == (None, [])
    assert S.unpack_args(None, []) == ((), {})


def test_top_level_refs_become_slots_and_nested_refs_stay_refs():
    r1, r2, r3, nested = Ref(b"1"), Ref(b"2"), Ref(b"3"), Ref(b"nested")
    obj, deps = S.pack_args((10, r1, [nested], r2), {"k": r3, "plain": "p", "deep": {"r": nested}},
                            is_ref, "mod.f")
    assert deps == [r1, r2, r3]  # argument order, then keyword order
    assert b"nested" in obj.data and b"'1'" not in obj.data
    args, kwargs = S.unpack_args(wire(obj), ["V1", "V2", "V3"])
    assert args == (10, "V1", [nested], "V2")
    assert kwargs == {"k": "V3", "plain": "p", "deep": {"r": nested}}
    assert type(args[2][0]) is Ref


def test_pack_args_all_refs():
    r1, r2 = Ref(b"a"), Ref(b"b")
    obj, deps = S.pack_args((r1, r2), {}, is_ref, "f")
    assert deps == [r1, r2]
    assert S.unpack_args(obj, [1, 2]) == ((1, 2), {})
    obj, deps = S.pack_args((), {"x": r1}, is_ref, "f")
    assert deps == [r1]
    assert S.unpack_args(obj, ["X"]) == ((), {"x": "X"})


def test_same_ref_twice_is_two_deps():
    r = Ref(b"same")
    obj, deps = S.pack_args((r, r), {}, is_ref, "f")
    assert deps == [r, r]
    assert S.unpack_args(obj, ["A", "B"]) == (("A", "B"), {})


def test_pack_args_without_refs():
    obj, deps = S.pack_args((1, "two"), {"three": 3.0}, is_ref, "f")
    assert deps == []
    assert S.unpack_args(obj, []) == ((1, "two"), {"three": 3.0})


def test_dependency_values_that_are_falsy_are_put_back():
    r1, r2 = Ref(b"1"), Ref(b"2")
    obj, _ = S.pack_args((r1,), {"k": r2}, is_ref, "f")
    assert S.unpack_args(obj, [None, 0]) == ((None,), {"k": 0})


def test_numpy_arguments_use_out_of_band_buffers():
    arr = np.arange(50_000, dtype=np.int32)
    obj, deps = S.pack_args((arr, Ref(b"r")), {}, is_ref, "f")
    assert len(obj.buffers) == 1 and len(obj.data) < 1000
    args, _ = S.unpack_args(wire(obj), ["R"])
    np.testing.assert_array_equal(args[0], arr)
    assert args[1] == "R"


def test_unpicklable_positional_argument_is_named_with_the_task():
    with pytest.raises(SerializationError) as info:
        S.pack_args((1, threading.Lock()), {}, is_ref, "mod.train")
    msg = str(info.value)
    assert "argument 1" in msg and "mod.train" in msg and "lock" in msg


def test_unpicklable_keyword_argument_is_named_with_the_task():
    with pytest.raises(SerializationError) as info:
        S.pack_args((1,), {"lock": threading.Lock()}, is_ref, "mod.train")
    msg = str(info.value)
    assert "argument 'lock'" in msg and "mod.train" in msg


def test_unpicklable_argument_next_to_refs_is_named():
    with pytest.raises(SerializationError, match="argument 1 .*of task f"):
        S.pack_args((Ref(b"r"), threading.Lock()), {}, is_ref, "f")


# --------------------------------------------------------------------------- function blobs


def test_dump_function_round_trips_and_names_the_function_on_failure():
    blob = S.dump_function(lambda x: x * 2, "mod.double")
    assert pickle.loads(blob)(21) == 42
    lock = threading.Lock()

    def holds_lock():
        return lock

    with pytest.raises(SerializationError, match="mod.holds_lock"):
        S.dump_function(holds_lock, "mod.holds_lock")


# --------------------------------------------------------------------------- task errors


def failing(exc):
    raise exc


def raised(exc):
    try:
        failing(exc)
    except BaseException as e:  # noqa: BLE001
        return e


def test_task_error_round_trip_is_both_task_error_and_the_original_class():
    exc = raised(ValueError("bad input 42"))
    obj = S.dump_task_error(exc, "mod.step", "node-7", 4321)
    assert obj.flags == SerializedObject.TASK_ERROR and obj.is_error
    err = S.to_exception(wire(obj))
    assert isinstance(err, TaskError) and isinstance(err, ValueError)
    assert (err.task_name, err.node_id, err.pid) == ("mod.step", "node-7", 4321)
    assert "bad input 42" in err.remote_traceback and "in failing" in err.remote_traceback
    assert err.args == ("bad input 42",)
    assert isinstance(err.cause, ValueError)
    assert "task mod.step failed on node node-7 (worker pid 4321)" in str(err)
    with pytest.raises(ValueError):
        S.value_or_raise(obj)


class CustomError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def test_custom_exception_attributes_survive():
    err = S.to_exception(S.dump_task_error(raised(CustomError(7, "x")), "f", "n", 1))
    assert isinstance(err, CustomError) and isinstance(err, TaskError)
    assert (err.code, err.detail, err.args) == (7, "x", (7, "x"))


class Unrebuildable(Exception):
    def __init__(self, a, b):  # pickle calls Unrebuildable(a): fails
        super().__init__(a)
        self.b = b


def test_exception_whose_init_breaks_unpickling_still_comes_back():
    err = S.to_exception(S.dump_task_error(raised(Unrebuildable("a", "b")), "f", "n", 1))
    assert isinstance(err, TaskError) and err.task_name == "f"
    assert "Unrebuildable" in err.remote_traceback and "Unrebuildable" in err.cause_repr
    assert isinstance(err, Unrebuildable)  # rebuilt from class, args and __dict__
    assert err.args == ("a",) and err.b == "b"


class HoldsLock(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()
        self.code = 3


def test_exception_with_an_unpicklable_attribute_keeps_the_rest():
    err = S.to_exception(S.dump_task_error(raised(HoldsLock("m")), "f", "n", 1))
    assert isinstance(err, TaskError) and "HoldsLock" in err.remote_traceback
    assert isinstance(err, HoldsLock) and err.code == 3 and err.args == ("m",)
    assert not hasattr(err, "lock")


def test_error_details_that_cannot_be_unpickled_still_give_a_task_error():
    obj = SerializedObject(SerializedObject.TASK_ERROR, b"not a pickle")
    err = S.to_exception(obj)
    assert type(err) is TaskError and "could not be unpickled" in str(err)


def test_nested_task_error_keeps_the_original_cause():
    inner = S.to_exception(S.dump_task_error(raised(KeyError("k")), "inner", "n1", 1))
    outer = S.to_exception(S.dump_task_error(raised(inner), "outer", "n2", 2))
    assert isinstance(outer, TaskError) and isinstance(outer, KeyError)
    assert outer.task_name == "outer" and isinstance(outer.cause, KeyError)


def test_user_traceback_false_keeps_only_the_message():
    exc = raised(SerializationError("return value cannot be pickled"))
    err = S.to_exception(S.dump_task_error(exc, "f", "n", 1, user_traceback=False))
    assert err.remote_traceback == "SerializationError: return value cannot be pickled"
    assert isinstance(err, SerializationError)


@pytest.mark.parametrize("kind,cls", [("WorkerCrashedError", WorkerCrashedError),
                                      ("ObjectLostError", ObjectLostError),
                                      ("SomethingNew", TaskmeshError)])
def test_system_error_objects_become_taskmesh_errors(kind, cls):
    obj = wire(S.system_error_object(kind, "the worker died"))
    err = S.to_exception(obj)
    assert type(err) is cls and str(err) == "the worker died"
    with pytest.raises(cls):
        S.value_or_raise(obj)
