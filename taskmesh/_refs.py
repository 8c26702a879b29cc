"""ObjectRef, a future value, and how refs count: one module both the public handles and
actors build on.

An ObjectRef counts in its process while it lives (``core.new_ref_ids`` when made here,
``rebuild_ref`` when unpickled: a borrow), and tells the client core when it dies. Pickled
inside taskmesh's serialization, its id is collected in the value's ``contained`` list;
pickled anywhere else it "escapes" and is never released by this process.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from . import _serialize as S
from ._context import CTX

T = TypeVar("T")


class ObjectRef(Generic[T]):
    """A reference to an object that a task returns or ``put()`` stored; hashable.

    Pass it to other tasks (as a top-level argument it arrives as the value), keep it in
    lists or dicts, and fetch the value with ``taskmesh.get(ref)``.
    """

    __slots__ = ("_id", "_core", "__weakref__")

    def __init__(self, object_id: bytes, core: Any = None) -> None:
        self._id = object_id
        self._core = core  # set when this process counts the reference

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> bytes:
        return self._id[:16]

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return type(other) is ObjectRef and other._id == self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __copy__(self) -> "ObjectRef":
        return self  # immutable: a copy would only be counted twice

    def __deepcopy__(self, memo: dict) -> "ObjectRef":
        return self

    def __reduce__(self) -> Any:
        if not S.ref_pickled(self._id):  # pickled outside taskmesh: never freed by us
            core = self._core or CTX.core
            if core is not None:
                core.mark_escaped(self._id)
        return (rebuild_ref, (self._id,))

    def __del__(self) -> None:
        core = self._core
        if core is not None:
            try:
                core.ref_died(self._id)
            except Exception:
                pass


def rebuild_ref(object_id: bytes) -> ObjectRef:
    core = CTX.core
    if core is None:
        return ObjectRef(object_id)
    core.borrow_ref(object_id)
    return ObjectRef(object_id, core)


def is_ref(value: Any) -> bool:
    return type(value) is ObjectRef


ObjectRef.__module__ = "taskmesh"  # its public name (users see it in errors and reprs)
