"""Rate-limited warnings for things a peer can make happen at will (bad messages, refused logins).

A peer that sends garbage in a loop must not fill the disk with log lines or slow the daemon
down with formatting, yet an operator must see that it happens and from where. Each kind of
event logs its first occurrence at once, then at most one line per ``interval_s`` saying how
many more were dropped in between; everything is counted (``counts``) for ``taskmesh status``.
"""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    """Count events by kind; log each kind at most once per ``interval_s``."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Any = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        #: kind -> events seen (logged or not)
        self.counts: dict[str, int] = {}
        self._next: dict[str, float] = {}
        self._quiet: dict[str, int] = {}  # kind -> events not logged since the last line

    def event(self, kind: str, msg: str, *args: Any, level: int = logging.WARNING) -> None:
        """Count one event of ``kind``; log ``msg % args`` unless this kind logged recently."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = self.clock()
        if now < self._next.get(kind, 0.0):
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        self._next[kind] = now + self.interval_s
        quiet = self._quiet.pop(kind, 0)
        if quiet:
            msg += f" ({quiet} more like it in the last {self.interval_s:g} s, not logged)"
        self.logger.log(level, msg, *args)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
