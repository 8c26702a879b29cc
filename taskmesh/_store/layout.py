"""How a serialized value is laid out in a store object, so any process can read it back in place.

    SerializedObject(pickle, [buf0, buf1, ...]) ──write──▶ one store object:

    ┌ magic "TMO1" │ n buffers (u32) │ pickle length (u64) ┐ 16 bytes
    │ buffer lengths (u64 each)                          │
    │ pickle stream                                      │
    │ (pad to 64) buf0 │ (pad to 64) buf1 │ ...          ┘

The object is self-describing: the store and the transfer between nodes see opaque bytes, and a
reader needs nothing but the object to rebuild the value with ``pickle.loads(pickle, buffers=
[views])``. Buffers start on 64-byte boundaries of the object (store objects themselves start on
the arena's alignment), so numpy arrays read in place are aligned for vectorised code.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Sequence

__all__ = ["encoded_size", "read", "write"]

_MAGIC = b"TMO1"
_HEAD = struct.Struct("<4sIQ")
_LEN = struct.Struct("<Q")
_ALIGN = 64


def _nbytes(b: Any) -> int:
    return b.nbytes if isinstance(b, memoryview) else len(b)


def _pad(n: int) -> int:
    return -n % _ALIGN


def encoded_size(data: Any, buffers: Sequence[Any]) -> int:
    """Bytes the object needs for a pickle stream ``data`` and its out-of-band ``buffers``."""
    n = _HEAD.size + _LEN.size * len(buffers) + _nbytes(data)
    for b in buffers:
        n += _pad(n) + _nbytes(b)
    return n


def _copy(dest: memoryview, src: memoryview) -> None:
    dest[:] = src


def write(dest: memoryview, data: Any, buffers: Sequence[Any],
          copy: Callable[[memoryview, memoryview], None] = _copy) -> None:
    """Write the object into ``dest`` (exactly :func:`encoded_size` bytes): one copy per buffer,
    made by ``copy(dest_slice, src)`` (e.g. a copy spread over threads, for large buffers)."""
    _HEAD.pack_into(dest, 0, _MAGIC, len(buffers), _nbytes(data))
    pos = _HEAD.size
    for b in buffers:
        _LEN.pack_into(dest, pos, _nbytes(b))
        pos += _LEN.size
    n = _nbytes(data)
    dest[pos:pos + n] = data
    pos += n
    for b in buffers:
        pos += _pad(pos)
        n = _nbytes(b)
        src = b if isinstance(b, memoryview) else memoryview(b)
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")
        copy(dest[pos:pos + n], src)
        pos += n
    if pos != len(dest):
        raise ValueError(f"store object layout: wrote {pos} bytes into {len(dest)}")


def read(view: memoryview) -> tuple[memoryview, list[memoryview]]:
    """The pickle stream and buffers of an object, as views of ``view`` (no copy).
    ValueError if the bytes are not a well-formed object."""
    size = len(view)
    if size < _HEAD.size:
        raise ValueError(f"store object of {size} bytes is too short for its header")
    magic, nbuf, n = _HEAD.unpack_from(view, 0)
    if magic != _MAGIC:
        raise ValueError("store object has a bad header (not a taskmesh value)")
    pos = _HEAD.size
    if pos + _LEN.size * nbuf > size:
        raise ValueError("store object header names more buffers than it can hold")
    lengths = [_LEN.unpack_from(view, pos + i * _LEN.size)[0] for i in range(nbuf)]
    pos += _LEN.size * nbuf
    if pos + n > size:
        raise ValueError("store object is shorter than its pickle stream")
    data = view[pos:pos + n]
    pos += n
    buffers = []
    for length in lengths:
        pos += _pad(pos)
        if pos + length > size:
            raise ValueError("store object is shorter than its buffers")
        buffers.append(view[pos:pos + length])
        pos += length
    return data, buffers
