"""Values laid out in a store object: read back in place, aligned, and damage detected."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, strategies as st

from taskmesh import _serialize as S
from taskmesh._store import layout


def store_and_read(value):
    obj = S.dumps(value)
    buf = bytearray(layout.encoded_size(obj.data, obj.buffers))
    layout.write(memoryview(buf), obj.data, obj.buffers)
    data, buffers = layout.read(memoryview(buf))
    return buf, pickle.loads(data, buffers=buffers), buffers


@given(st.lists(st.binary(max_size=300), max_size=5), st.binary(max_size=200))
def test_any_buffers_round_trip(buffers, data):
    size = layout.encoded_size(data, buffers)
    buf = bytearray(size)
    layout.write(memoryview(buf), data, buffers)
    got_data, got = layout.read(memoryview(buf))
    assert bytes(got_data) == data
    assert [bytes(b) for b in got] == buffers


def test_numpy_arrays_are_read_in_place_and_aligned():
    arrays = {"a": np.arange(1000, dtype=np.float64), "b": np.ones((7, 3), dtype=np.int8)}
    buf, value, buffers = store_and_read(arrays)
    np.testing.assert_array_equal(value["a"], arrays["a"])
    np.testing.assert_array_equal(value["b"], arrays["b"])
    base = np.frombuffer(buf, dtype=np.uint8)
    assert np.shares_memory(value["a"], base)  # no copy: a view of the object's bytes
    for b in buffers:
        offset = np.frombuffer(b, dtype=np.uint8).ctypes.data - base.ctypes.data
        assert offset % 64 == 0


@pytest.mark.parametrize("damage", ["magic", "short", "lengths"])
def test_damaged_objects_are_refused(damage):
    obj = S.dumps(np.arange(100))
    buf = bytearray(layout.encoded_size(obj.data, obj.buffers))
    layout.write(memoryview(buf), obj.data, obj.buffers)
    if damage == "magic":
        buf[0:4] = b"XXXX"
    elif damage == "short":
        buf = buf[:len(buf) // 2]
    else:
        buf[16:24] = (1 << 40).to_bytes(8, "little")  # the first buffer's length
    with pytest.raises(ValueError):
        layout.read(memoryview(buf))


def test_a_wrong_destination_size_is_an_error():
    with pytest.raises(ValueError):
        layout.write(memoryview(bytearray(1000)), b"data", [b"x" * 10])
