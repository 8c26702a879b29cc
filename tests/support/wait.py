"""Polling: wait, with a time limit, for what another process or thread brings about."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
          what: str | Callable[[], str] = "condition", *, check: bool = True) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy, and
    return that. After ``timeout`` seconds raise AssertionError naming ``what`` and the time
    waited; ``what`` may be a function, called only then (to show the state last seen).
    With ``check=False`` return the last (falsy) result instead, for a caller that judges it
    (cleanup that must go on, a helper that reports what is left)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            if not check:
                return result
            raise AssertionError(f"timed out after {timeout:g} s waiting for "
                                 f"{what() if callable(what) else what}")
        time.sleep(interval)
