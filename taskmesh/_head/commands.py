"""What the head's state asks its I/O shell to do: send a message, write a log line, report an
internal error.

    HeadState.handle(peer, msg, now) ──▶ [Send(peer, msg), Log(...), InternalError(...)] ──▶ server.py

The state decides; the shell (``server.py``, or a test harness) carries the commands out in
order. ``Send`` is a (peer, message) pair, so a shell can unpack it as one. A log line is a
command too: the state writes nothing itself, and a test sees exactly what would be logged.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Union


class Send(NamedTuple):
    peer: bytes
    msg: Any


class Log(NamedTuple):
    """A line for ``logging.getLogger(logger).log(level, msg, *args)``."""

    logger: str
    level: int
    msg: str
    args: tuple


class InternalError(NamedTuple):
    """Handling a message raised: a bug. The shell logs it loudly; the head goes on."""

    what: str  # the message's type, or "tick", ...
    peer: bytes
    traceback: str


Command = Union[Send, Log, InternalError]


class CommandLog:
    """A logger look-alike that turns each line into a ``Log`` command, appended to ``into``
    (so ``RateLimitedLog`` and the state's own lines work unchanged, without I/O)."""

    __slots__ = ("name", "into")

    def __init__(self, name: str, into: list) -> None:
        self.name = name
        self.into = into

    def log(self, level: int, msg: str, *args: Any) -> None:
        self.into.append(Log(self.name, level, msg, args))

    def debug(self, msg: str, *args: Any) -> None:
        self.log(logging.DEBUG, msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, msg, *args)

    def getChild(self, suffix: str) -> CommandLog:  # noqa: N802 (logging's name)
        return CommandLog(f"{self.name}.{suffix}", self.into)

