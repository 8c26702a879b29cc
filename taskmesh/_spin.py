"""Adaptive spin-then-block waiting for the processes on a task's critical path.

A process that goes idle normally blocks in poll(); waking it costs a context switch and, on a
VM whose idle vCPUs halt, an inter-processor interrupt: tens of microseconds per hop, several
hops per task. When work arrives in quick succession (a driver calling get() in a loop, a
stream of short tasks), a short busy-wait catches the next message without sleeping.

The spinner learns the typical gap between going idle and the next message (an exponential
moving average) and spins only while that gap fits the spin window, so an idle or slow-paced
process does not burn CPU. While spinning it yields the CPU to any other runnable process
(sched_yield), so it never delays real work on a busy machine. ``spin_s=0`` turns it off.
"""

from __future__ import annotations

import os
import time
from typing import Callable

_ALPHA = 0.3


class Spinner:
    __slots__ = ("spin_s", "gap_s", "_idle_since")

    def __init__(self, spin_s: float) -> None:
        self.spin_s = spin_s
        self.gap_s = 0.0  # typical time from going idle to the next message
        self._idle_since = 0.0

    def spin(self, ready: Callable[[], bool]) -> bool:
        """Going idle: busy-wait up to spin_s for ``ready()``; True if it became ready."""
        now = time.perf_counter()
        self._idle_since = now
        if self.spin_s <= 0 or self.gap_s > self.spin_s:
            return False
        end = now + self.spin_s
        yield_ = os.sched_yield
        while True:
            if ready():
                return True
            if time.perf_counter() >= end:
                return False
            yield_()

    def woke(self) -> None:
        """The wait ended (a message, or a timeout): learn how long the gap was."""
        if self._idle_since:
            gap = time.perf_counter() - self._idle_since
            self.gap_s += _ALPHA * (gap - self.gap_s)
            self._idle_since = 0.0
