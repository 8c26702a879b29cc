"""The object reader's decisions, driven with a fake store, a fake head and a fake clock.

What it must do when holders fail: ask the head again, follow new holders, wait (within its
patience) for a holder the head still names to be declared dead, and only then give up.
"""

from __future__ import annotations

import pytest

from taskmesh._client.reader import ObjectReader
from taskmesh._protocol import SerializedObject
from taskmesh.errors import ObjectLostError

OID = b"\x01" * 20
PATIENCE = 4.0


def marker(*nodes: str) -> SerializedObject:
    return SerializedObject.stored(OID, 100, [[n, f"198.18.0.1:{i + 7000}"]
                                                for i, n in enumerate(nodes)])


class World:
    """A clock, a store whose holders fail or deliver, and a head whose answers follow a script."""

    def __init__(self, answers: list, good: set[str] = frozenset(),
                 read_cost: dict[str, float] | None = None):
        self.now = 0.0
        self.answers = list(answers)  # what the head says, one per question (last one repeats)
        self.good = set(good)         # holders that deliver
        self.read_cost = read_cost or {}  # seconds a failed read of a holder takes (a time-out)
        self.reads: list[list[str]] = []
        self.questions = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s

    def read(self, obj: SerializedObject, timeout):
        holders = [n for n, _ in obj.read_stored()[2]]
        self.reads.append(holders)
        if any(h in self.good for h in holders):
            return SerializedObject(SerializedObject.VALUE, b"value")
        self.now += sum(self.read_cost.get(h, 0.0) for h in holders)
        raise ObjectLostError(f"no holder of {holders} delivered")

    def ask(self, oid: bytes, timeout):
        assert oid == OID
        self.questions += 1
        answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        return answer() if callable(answer) else answer

    def reader(self) -> ObjectReader:
        class Store:
            read = self.read
        store = Store()
        return ObjectReader(lambda: store, self.ask, security=None, patience_s=PATIENCE,
                            clock=self.clock, sleep=self.sleep)


def test_an_inline_value_is_returned_as_it_is():
    w = World([])
    value = SerializedObject(SerializedObject.VALUE, b"x")
    assert w.reader().read(value) is value
    assert w.reads == [] and w.questions == 0


def test_new_holders_named_by_the_head_are_read():
    w = World([marker("b")], good={"b"})
    got = w.reader().read(marker("a"))
    assert got.data == b"value"
    assert w.reads == [["a"], ["b"]]


def test_the_heads_verdict_is_returned_when_the_object_is_lost_for_good():
    verdict = SerializedObject.system_error("ObjectLostError", "lost with node a")
    w = World([verdict])
    assert w.reader().read(marker("a")) is verdict


def test_a_holder_the_head_still_names_is_waited_for_until_it_is_declared_dead():
    # the head names "a" for 3 s (it is dead but not declared so), then a rebuilt copy on "b"
    w = World([])
    w.answers = [lambda: marker("a") if w.now < 3.0 else marker("b")]
    w.good = {"b"}
    assert w.reader().read(marker("a")).data == b"value"
    assert w.reads[-1] == ["b"] and w.now >= 3.0


def test_a_holder_the_head_keeps_naming_past_the_patience_gives_object_lost():
    w = World([marker("a")])
    with pytest.raises(ObjectLostError):
        w.reader().read(marker("a"))
    assert PATIENCE < w.now < PATIENCE + 1.0


def test_holders_named_late_in_a_long_read_get_the_whole_patience():
    # the chaos suite's case: the first holders took most of the patience (a connect time-out
    # to a cut machine), then the head named a new holder whose agent died right after; it must
    # be waited for as long as the first one was, not given up at once
    w = World([], read_cost={"a": 3.5})  # "b" refuses at once
    rebuilt_at = None

    def head():
        nonlocal rebuilt_at
        if w.questions == 1:
            return marker("b")             # "a" was lost; rebuilt on "b"
        if w.now < 3.5 + 2.0:
            return marker("b")             # "b" dead, not declared so yet (2 s)
        rebuilt_at = rebuilt_at or w.now
        return marker("c")                 # "b" declared dead; rebuilt on "c"
    w.answers = [head]
    w.good = {"c"}
    assert w.reader().read(marker("a")).data == b"value"
    assert w.reads[-1] == ["c"] and rebuilt_at is not None


def test_without_wait_for_holders_an_unchanged_answer_fails_at_once():
    w = World([marker("a")])
    with pytest.raises(ObjectLostError):
        w.reader().read(marker("a"), wait_for_holders=False)
    assert w.now == 0.0 and w.questions == 1


def test_the_gets_timeout_bounds_the_wait():
    w = World([marker("a")])
    with pytest.raises(ObjectLostError):
        w.reader().read(marker("a"), timeout=1.0)
    assert w.now <= 1.0


def test_no_answer_from_the_head_raises_the_holders_error():
    w = World([None])
    with pytest.raises(ObjectLostError, match="no holder"):
        w.reader().read(marker("a"))
