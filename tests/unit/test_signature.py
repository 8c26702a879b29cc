"""Argument checks at .remote() against a function's or method's signature (_signature.py)."""

from __future__ import annotations

import pytest

from taskmesh._signature import checker, describe, method_signature


def f(a, b=1, *args, c, d=2, **kw):
    pass


def test_calls_that_fit_pass_and_others_raise_what_python_would():
    check = checker(describe(f), "f.remote()")
    check((1,), {"c": 3})
    check((1, 2, 3, 4), {"c": 3, "zz": 1})
    with pytest.raises(TypeError, match=r"f\.remote\(\): missing a required argument: 'c'"):
        check((1,), {})
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        check((), {"c": 1})
    with pytest.raises(TypeError, match=r"the signature is f\(a, b=\.\.\., \*args, c"):
        check((), {"c": 1})


def test_positional_calls_are_checked_by_counting():
    def g(x, y=0):
        pass

    check = checker(describe(g), "g.remote()")
    check((1,), {})
    check((1, 2), {})
    with pytest.raises(TypeError, match="too many positional arguments"):
        check((1, 2, 3), {})
    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        check((), {})


class C:
    def m(self, x):
        pass

    @staticmethod
    def s(x, y):
        pass

    @classmethod
    def k(cls, z=0):
        pass

    def star(*args):
        pass


def test_methods_lose_self_static_and_class_methods_keep_their_own():
    assert method_signature(C, "m") == [["x", 1, False]]
    assert method_signature(C, "s") == [["x", 1, False], ["y", 1, False]]
    assert method_signature(C, "k") == [["z", 1, True]]
    assert method_signature(C, "star") == [["args", 2, False]]


def test_a_forged_signature_is_not_checked_rather_than_crashing():
    assert checker([["x", 99, False]], "m.remote()") is None
    assert checker(None, "m.remote()") is None
    assert describe(print) is None or isinstance(describe(print), list)
