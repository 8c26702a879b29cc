"""Checking a call's arguments against the remote function's signature, in the caller.

``f.remote(1, 2, z=3)``, ``Cls.remote(...)`` and ``handle.method.remote(...)`` raise TypeError
at once when the arguments do not fit the signature (missing or extra arguments, unknown
keywords), as Ray does, instead of sending a task that can only fail on a worker.

A method's signature also travels inside actor handles (through the head, which never
unpickles), so it is kept as plain data: ``[[name, kind, has_default], ...]``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

_P = inspect.Parameter
_KINDS = (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD, _P.VAR_POSITIONAL, _P.KEYWORD_ONLY,
          _P.VAR_KEYWORD)


class _Default:
    def __repr__(self) -> str:
        return "<default>"


_DEFAULT = _Default()


def describe(fn: Any, skip_first: bool = False) -> list | None:
    """The signature of ``fn`` as plain data (without its first parameter with
    ``skip_first``: ``self`` of a method); None if it has none Python can tell."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if skip_first:
        first = params[0].kind if params else None
        if first in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
            params = params[1:]
        elif first != _P.VAR_POSITIONAL:  # (``def m(*args)`` takes self in args)
            return None  # no parameter for self: calling it fails on the worker, as in Python
    return [[p.name, int(p.kind), p.default is not _P.empty] for p in params]


def method_signature(cls: type, name: str) -> list | None:
    """The signature a caller must follow for method ``name`` of ``cls``: without ``self``
    (or ``cls`` of a class method), as is for a static method."""
    raw = inspect.getattr_static(cls, name, None)
    if isinstance(raw, staticmethod):
        return describe(raw.__func__)
    if isinstance(raw, classmethod):
        return describe(raw.__func__, skip_first=True)
    if inspect.isfunction(raw):
        return describe(raw, skip_first=True)
    return None  # another kind of callable attribute: not checked


class ArgumentCheck:
    """Checks ``(args, kwargs)`` against one signature; made once, used on every call."""

    __slots__ = ("_signature", "_min", "_max", "_fast", "_what")

    def __init__(self, params: list, what: str) -> None:
        self._what = what
        self._signature = inspect.Signature([
            _P(name, _KINDS[kind], default=_DEFAULT if has_default else _P.empty)
            for name, kind, has_default in params])
        positional = [p for p in params if p[1] in (0, 1)]
        self._min = sum(1 for p in positional if not p[2])
        self._max = float("inf") if any(p[1] == 2 for p in params) else len(positional)
        # positional arguments alone can be checked by counting (the common case), unless a
        # keyword-only parameter is required
        self._fast = not any(p[1] == 3 and not p[2] for p in params)

    def __call__(self, args: tuple, kwargs: dict) -> None:
        if not kwargs and self._fast and self._min <= len(args) <= self._max:
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self._what}: {exc} (the signature is "
                            f"{self._what.split('.remote', 1)[0]}{_show(self._signature)})") from None


def _show(signature: inspect.Signature) -> str:
    return str(signature).replace("=<default>", "=...")


def no_check(args: tuple, kwargs: dict) -> None:
    """For a callable whose signature Python cannot tell: its worker will say."""


def checker(params: list | None, what: str) -> Callable[[tuple, dict], None] | None:
    """An ArgumentCheck for ``params`` (from :func:`describe`), or None if unknown."""
    if params is None:
        return None
    try:
        return ArgumentCheck(params, what)
    except (ValueError, TypeError, IndexError):  # not a valid signature (a forged handle)
        return None
